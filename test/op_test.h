// What the CPU op tests (test_ops, test_layers, test_relational, test_vq, test_sigreg) share: random inputs, array
// comparisons and the central-difference gradient check. Each test program is one translation unit with one
// generator, seeded in main() with test_seed(), so a run draws the same inputs every time. Include after test.h.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <functional>
#include <string>
#include <vector>
#include "../common/rand.h"

typedef std::vector<double> vecd;
typedef std::vector<float> vecf;

static Rng g_rng = rng_make(0);
static inline void test_seed(uint64_t seed) { g_rng = rng_make(seed); }

static inline double uni(double lo, double hi) { return lo + (hi - lo) * rng_uniform(&g_rng); }
// n values uniform in [lo, hi)
static inline vecd rand_vec(size_t n, double lo = -1, double hi = 1) {
    vecd v(n);
    for (auto& x : v) x = uni(lo, hi);
    return v;
}
// n values with |x| uniform in [a, b] and a random sign (keeps inputs away from kinks at 0, e.g. ReLU's)
static inline vecd rand_away0(size_t n, double a, double b) {
    vecd v(n);
    for (auto& x : v) x = (rng_uniform(&g_rng) < 0.5 ? -1 : 1) * uni(a, b);
    return v;
}
// n values from N(0, std^2)
static inline vecd normal_vec(size_t n, double std = 1.0) {
    vecd v(n);
    for (auto& x : v) x = std * rng_normal(&g_rng);
    return v;
}
template <typename T> static inline std::vector<T> cast_vec(const vecd& v) { return std::vector<T>(v.begin(), v.end()); }

static inline double max_abs(const vecd& v) {
    double m = 0;
    for (double x : v) m = fmax(m, fabs(x));
    return m;
}
// max_i |a_i - b_i|: infinite for different sizes or any NaN
static inline double max_abs_diff(const vecd& a, const vecd& b) {
    if (a.size() != b.size()) return INFINITY;
    double m = 0;
    for (size_t i = 0; i < a.size(); i++) {
        const double d = fabs(a[i] - b[i]);
        if (!(d <= m)) m = isnan(d) ? INFINITY : d;
    }
    return m;
}

// sum a[i] * b[i] in long double, returned as such: the losses of the gradient checks keep the extra bits, so that
// their rounding stays far below the finite-difference signal
template <typename A, typename B> static inline long double dotl(const A& a, const B& b, size_t n) {
    long double s = 0;
    for (size_t i = 0; i < n; i++) s += (long double)a[i] * (long double)b[i];
    return s;
}
static inline long double dotl(const vecd& a, const vecd& b) { return dotl(a.data(), b.data(), a.size()); }

static inline bool all_finite(const double* x, size_t n) {
    for (size_t i = 0; i < n; i++) if (!isfinite(x[i])) return false;
    return true;
}
template <typename T> static inline bool all_equal(const T* x, size_t n, T value) {
    for (size_t i = 0; i < n; i++) if (!(x[i] == value)) return false;
    return true;
}
template <typename T> static inline bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}
// Central-difference check of d loss / d x against `analytic`, over every element of x (perturbed in place and
// restored; h_of(i) may set the step of element i, FD_H otherwise). The error of element i is
// |fd_i - an_i| / (|an_i| + FD_FLOOR max_j |an_j|): the floor keeps the finite-difference noise (~1e-9 absolute:
// rounding of the loss divided by 2h) from dominating gradient elements a thousand times smaller than the largest;
// everything else is checked relatively. The loss may return long double to keep its rounding far below the
// finite-difference signal. Fails on a non-finite or all-zero analytic gradient.
static const double FD_H = 1e-6, FD_TOL = 1e-6, FD_FLOOR = 1e-3;
static inline bool gradcheck(const std::string& name, vecd& x, const vecd& analytic, const std::function<long double()>& loss,
                             double tol = FD_TOL, const std::function<double(size_t)>& h_of = nullptr) {
    if (analytic.size() != x.size()) return check(false, name.c_str(), "size mismatch %zu vs %zu", analytic.size(), x.size());
    double worst = 0, fd_w = 0, an_w = 0;
    size_t where = 0;
    bool finite = true;
    const double maxabs = max_abs(analytic);
    for (size_t i = 0; i < x.size(); i++) {
        const double h = h_of ? h_of(i) : FD_H;
        const double x0 = x[i], xp = x0 + h, xm = x0 - h;
        x[i] = xp;
        const long double lp = loss();
        x[i] = xm;
        const long double lm = loss();
        x[i] = x0;
        const double fd = (double)((lp - lm) / (xp - xm)), an = analytic[i];
        if (!isfinite(an)) { finite = false; where = i; an_w = an; fd_w = fd; break; }
        const double err = fabs(fd - an) / (fabs(an) + FD_FLOOR * maxabs + 1e-300);
        if (!(err <= worst)) { worst = isnan(err) ? INFINITY : err; where = i; fd_w = fd; an_w = an; }
    }
    return check(finite && worst <= tol && maxabs > 0, name.c_str(),
                 "%s max rel err %.3g (tol %.1g) at element %zu: finite difference %.12g vs analytic %.12g; max |grad| %.3g",
                 finite ? "" : "non-finite gradient;", worst, tol, where, fd_w, an_w, maxabs);
}
