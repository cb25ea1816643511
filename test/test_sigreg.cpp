// Tests of kernels/sigreg.cuh, the SIGReg regulariser of LeJEPA (jepa_reference.md section 9), on the double CPU
// references:
//
//   make build/test_sigreg && ./build/test_sigreg
//
//  - the backward against central differences of the forward, in double;
//  - z ~ N(0, I): the value is near its expectation sum_j w_j (1 - exp(-t_j^2)) (~1.05, computed here from the knots);
//  - collapsed samples (all rows equal; one dimension scaled x10) give far larger values;
//  - permuting the rows of z leaves the value unchanged (and permutes dz);
//  - sigreg_directions_ref gives unit columns and depends only on the seed.
#include <math.h>
#include <algorithm>
#include <string>
#include <vector>
#include "../common/device.h"
#include "../common/rand.h"
#include "../kernels/sigreg.cuh"
#include "test.h"

typedef std::vector<double> vecd;
static Rng g_rng = rng_make(20251205);

static vecd normal_vec(size_t n, double std = 1.0) {
    vecd v(n);
    for (auto& x : v) x = std * rng_normal(&g_rng);
    return v;
}
static vecd directions(int K, int M, uint64_t seed) {
    vecd A((size_t)K * M);
    sigreg_directions_ref(A.data(), K, M, seed);
    return A;
}
static double sigreg_value(const vecd& z, const vecd& A, int N, int K, int M, vecd* per_slice = nullptr, vecd* cs = nullptr) {
    double loss = 0;
    vecd ps(M), c((size_t)M * 2 * SIGREG_POINTS);
    sigreg_forward_ref(&loss, ps.data(), c.data(), z.data(), A.data(), N, K, M);
    if (per_slice) *per_slice = ps;
    if (cs) *cs = c;
    return loss;
}
// E[SIGReg] for z ~ N(0, I): sum_j w_j (1 - exp(-t_j^2)), the same knots and weights as the op.
static double gaussian_expectation() {
    double e = 0;
    for (int j = 0; j < SIGREG_POINTS; j++) {
        double t, phi, w;
        sigreg_knot(j, &t, &phi, &w);
        e += w * (1.0 - exp(-t * t));
    }
    return e;
}

// ---------------------------------------------------------------------------------------------------------

static void test_knots() {
    double t0, p0, w0, t1, p1, w1, tl, pl, wl;
    sigreg_knot(0, &t0, &p0, &w0);
    sigreg_knot(1, &t1, &p1, &w1);
    sigreg_knot(SIGREG_POINTS - 1, &tl, &pl, &wl);
    const double dt = 3.0 / 16;
    const bool ok = t0 == 0 && p0 == 1 && w0 == dt && t1 == dt && fabs(w1 - 2 * dt * exp(-dt * dt / 2)) < 1e-15 &&
                    tl == 3.0 && fabs(wl - dt * exp(-4.5)) < 1e-15;
    check(ok, "sigreg knots: t = linspace(0, 3, 17), w = 2 dt phi inside, dt phi at the ends",
          "t0 %g w0 %g t1 %g w1 %g t16 %g w16 %g", t0, w0, t1, w1, tl, wl);
    // sum_j w_j approximates 2 * int_0^3 exp(-t^2/2) dt = sqrt(2 pi) erf(3 / sqrt 2)
    double sw = 0;
    for (int j = 0; j < SIGREG_POINTS; j++) {
        double t, p, w;
        sigreg_knot(j, &t, &p, &w);
        sw += w;
    }
    const double exact = sqrt(2 * M_PI) * erf(3 / sqrt(2.0));
    check(fabs(sw - exact) < 1e-2 * exact, "sigreg weights integrate 2 exp(-t^2/2) over [0, 3]", "sum w %.6f vs %.6f", sw, exact);
}

// Central differences of the loss (dloss != 1 so that the scaling is checked too).
static void test_gradcheck(int N, int K, int M, double std) {
    const std::string name = fmt("sigreg backward vs central differences N=%d K=%d M=%d std=%g", N, K, M, std);
    vecd z = normal_vec((size_t)N * K, std);
    const vecd A = directions(K, M, 77 + N);
    const double dloss = 0.7;
    vecd cs, dz((size_t)N * K);
    sigreg_value(z, A, N, K, M, nullptr, &cs);
    sigreg_backward_ref(dz.data(), z.data(), A.data(), cs.data(), &dloss, N, K, M);
    const double h = 1e-6;
    double worst = 0, maxabs = 0, fd_w = 0, an_w = 0;
    size_t where = 0;
    for (double g : dz) maxabs = fmax(maxabs, fabs(g));
    for (size_t i = 0; i < z.size(); i++) {
        const double z0 = z[i], zp = z0 + h, zm = z0 - h;
        z[i] = zp;
        const double lp = dloss * sigreg_value(z, A, N, K, M);
        z[i] = zm;
        const double lm = dloss * sigreg_value(z, A, N, K, M);
        z[i] = z0;
        const double fd = (lp - lm) / (zp - zm);
        const double err = fabs(fd - dz[i]) / (fabs(dz[i]) + 1e-3 * maxabs + 1e-300);
        if (!(err <= worst)) { worst = isnan(err) ? INFINITY : err; where = i; fd_w = fd; an_w = dz[i]; }
    }
    check(worst < 1e-6 && maxabs > 0, name.c_str(), "max rel err %.3g at %zu: fd %.12g vs analytic %.12g (max |dz| %.3g)",
          worst, where, fd_w, an_w, maxabs);
}

// The value is the mean of the per-slice values, and those agree with T_m recomputed from cs.
static void test_consistency() {
    const int N = 50, K = 8, M = 12;
    const vecd z = normal_vec((size_t)N * K), A = directions(K, M, 5);
    vecd ps, cs;
    const double loss = sigreg_value(z, A, N, K, M, &ps, &cs);
    double mean = 0, worst = 0;
    for (int m = 0; m < M; m++) {
        mean += ps[m] / M;
        worst = fmax(worst, fabs(ps[m] - sigreg_slice_value(cs.data() + (size_t)m * 2 * SIGREG_POINTS, N)) / ps[m]);
    }
    check(fabs(mean - loss) < 1e-12 * loss && worst < 1e-12, "sigreg loss = mean of per_slice, per_slice = T_m(cs)",
          "loss %.15g mean %.15g, per-slice err %.3g", loss, mean, worst);
    // c_0 = 1, s_0 = 0 (t = 0) for every slice
    bool ok = true;
    for (int m = 0; m < M; m++) ok = ok && fabs(cs[(size_t)m * 2 * SIGREG_POINTS] - 1) < 1e-15 && cs[(size_t)m * 2 * SIGREG_POINTS + SIGREG_POINTS] == 0;
    check(ok, "sigreg c(t=0) = 1, s(t=0) = 0");
}

static void test_gaussian_and_collapse() {
    const int N = 2048, K = 16, M = 64;
    const double expected = gaussian_expectation();
    check(fabs(expected - 1.05) < 0.02, "sigreg Gaussian expectation sum_j w_j (1 - exp(-t_j^2)) ~ 1.05 (spec)", "%.6f", expected);
    // One draw of z fluctuates by ~22% (the M = 64 slices of a K = 16 space are far from independent), so the
    // check averages R = 32 independent draws of z and of the slices (std of the average ~4%).
    const int R = 32;
    const vecd A = directions(K, M, 2024);
    const vecd z = normal_vec((size_t)N * K);
    double gauss = sigreg_value(z, A, N, K, M), lo = gauss, hi = gauss;
    for (int r = 1; r < R; r++) {
        const double v = sigreg_value(normal_vec((size_t)N * K), directions(K, M, 2024 + r), N, K, M);
        gauss += v;
        lo = fmin(lo, v);
        hi = fmax(hi, v);
    }
    gauss /= R;
    printf("     z ~ N(0, I), N=%d K=%d M=%d: SIGReg %.4f (mean of %d draws, range %.3f..%.3f), expectation %.4f\n", N, K, M,
           gauss, R, lo, hi, expected);
    check(fabs(gauss - expected) < 0.15 * expected, "sigreg z ~ N(0, I) within 15% of the expectation",
          "SIGReg %.4f vs expectation %.4f", gauss, expected);

    vecd same((size_t)N * K);
    const vecd row = normal_vec(K);
    for (int n = 0; n < N; n++) std::copy(row.begin(), row.end(), same.begin() + (size_t)n * K);
    const double collapsed = sigreg_value(same, A, N, K, M);
    printf("     all rows equal: SIGReg %.4f\n", collapsed);
    check(collapsed > 10 * expected, "sigreg collapsed (all rows equal) > 10x the Gaussian value", "%.4f vs %.4f", collapsed, expected);

    vecd zero((size_t)N * K, 0.0);
    const double at_zero = sigreg_value(zero, A, N, K, M);
    printf("     all rows zero: SIGReg %.4f\n", at_zero);
    check(at_zero > 10 * expected, "sigreg collapsed (all rows zero) > 10x the Gaussian value", "%.4f vs %.4f", at_zero, expected);

    vecd stretched = z;
    for (int n = 0; n < N; n++) stretched[(size_t)n * K] *= 10;
    const double st = sigreg_value(stretched, A, N, K, M);
    printf("     dimension 0 scaled x10: SIGReg %.4f\n", st);
    check(st > 10 * expected, "sigreg one dimension scaled x10 > 10x the Gaussian value", "%.4f vs %.4f", st, expected);

    // permuting the rows: same value, same per-slice values, permuted dz
    std::vector<int> perm(N);
    for (int n = 0; n < N; n++) perm[n] = n;
    for (int n = N - 1; n > 0; n--) std::swap(perm[n], perm[(int)(rng_uniform(&g_rng) * (n + 1))]);
    vecd zp((size_t)N * K);
    for (int n = 0; n < N; n++) std::copy(z.begin() + (size_t)perm[n] * K, z.begin() + (size_t)(perm[n] + 1) * K, zp.begin() + (size_t)n * K);
    vecd ps, psp, cs, csp;
    const double l1 = sigreg_value(z, A, N, K, M, &ps, &cs), l2 = sigreg_value(zp, A, N, K, M, &psp, &csp);
    double worst = 0;
    for (int m = 0; m < M; m++) worst = fmax(worst, fabs(ps[m] - psp[m]) / ps[m]);
    check(fabs(l1 - l2) <= 1e-6 * l1 && worst <= 1e-6, "sigreg invariant to permuting the rows of z",
          "%.15g vs %.15g, per-slice rel diff %.3g", l1, l2, worst);
    const double one = 1.0;
    vecd dz((size_t)N * K), dzp((size_t)N * K);
    sigreg_backward_ref(dz.data(), z.data(), A.data(), cs.data(), &one, N, K, M);
    sigreg_backward_ref(dzp.data(), zp.data(), A.data(), csp.data(), &one, N, K, M);
    double maxabs = 0, derr = 0;
    for (double g : dz) maxabs = fmax(maxabs, fabs(g));
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            derr = fmax(derr, fabs(dzp[(size_t)n * K + k] - dz[(size_t)perm[n] * K + k]));
    check(derr <= 1e-6 * maxabs, "sigreg backward permutes with the rows of z", "max diff %.3g (max |dz| %.3g)", derr, maxabs);
}

static void test_directions() {
    const int K = 37, M = 100;
    const vecd A = directions(K, M, 12345), B = directions(K, M, 12345), C = directions(K, M, 12346);
    double worst = 0;
    for (int m = 0; m < M; m++) {
        double ss = 0;
        for (int k = 0; k < K; k++) ss += A[(size_t)k * M + m] * A[(size_t)k * M + m];
        worst = fmax(worst, fabs(sqrt(ss) - 1));
    }
    check(worst < 1e-12, "sigreg_directions_ref columns have unit norm", "max | |a_m| - 1 | = %.3g", worst);
    check(A == B, "sigreg_directions_ref is deterministic in the seed");
    size_t same = 0;
    for (size_t i = 0; i < A.size(); i++) same += A[i] == C[i];
    check(same == 0, "sigreg_directions_ref differs for another seed", "%zu of %zu elements equal", same, A.size());
    // the float version is the double one rounded (every backend draws the same slices)
    std::vector<float> Af((size_t)K * M);
    sigreg_directions_ref(Af.data(), K, M, 12345);
    bool ok = true;
    for (size_t i = 0; i < A.size(); i++) ok = ok && Af[i] == (float)A[i];
    check(ok, "sigreg_directions_ref<float> = the double directions rounded to float");
    // roughly isotropic: the mean of a_km^2 over all entries is 1/K
    double ms = 0;
    for (double a : A) ms += a * a;
    ms /= A.size();
    check(fabs(ms * K - 1) < 1e-12, "sigreg directions: mean a^2 = 1/K", "%.6g", ms * K);
}

int main() {
    test_knots();
    test_gradcheck(7, 5, 6, 1.0);
    test_gradcheck(16, 3, 4, 0.3);     // near-collapsed: c close to 1
    test_gradcheck(5, 4, 9, 2.5);      // wide: the high-t knots oscillate
    test_consistency();
    test_gaussian_and_collapse();
    test_directions();
    return test_summary();
}
