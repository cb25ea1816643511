// Random inputs and array comparisons shared by the CPU op tests (test_ops, test_layers, test_relational, test_vq,
// test_sigreg). Each test program is one translation unit with one generator, seeded in main() with test_seed(),
// so a run draws the same inputs every time.
#pragma once
#include <math.h>
#include <stdint.h>
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
