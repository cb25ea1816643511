// Tests of kernels/sigreg.cuh, the SIGReg regulariser of LeJEPA (jepa_reference.md section 9), on the double CPU
// references:
//
//   make build/test_sigreg && ./build/test_sigreg
//
//  - the backward against central differences of the forward, in double;
//  - z ~ N(0, I): the value is near its expectation sum_j w_j (1 - exp(-t_j^2)) (~1.05, computed here from the knots);
//  - collapsed samples (all rows equal; one dimension scaled x10) give far larger values;
//  - permuting the rows of z leaves the value unchanged (and permutes dz);
//  - sigreg_directions_ref gives unit columns and depends only on the seed;
//  - SIGREG_DEPRECATED (the reference repository's accidental variant): its knots and weights, its backward
//    against central differences, T_m consistency, N x value near its Gaussian expectation, and the documented
//    defect: on L2-normalised 256-d rows, isotropic and fully collapsed samples both give ~0.40.
#include <math.h>
#include <algorithm>
#include <string>
#include <vector>
#include "../common/device.h"
#include "../common/rand.h"
#include "../kernels/sigreg.cuh"
#include "test.h"
#include "op_test.h"


static vecd directions(int K, int M, uint64_t seed) {
    vecd A((size_t)K * M);
    sigreg_directions_ref(A.data(), K, M, seed);
    return A;
}
static double sigreg_value(const vecd& z, const vecd& A, int N, int K, int M, vecd* per_slice = nullptr, vecd* cs = nullptr,
                           SigregVariant variant = SIGREG_LEJEPA) {
    double loss = 0;
    vecd ps(M), c((size_t)M * 2 * SIGREG_POINTS);
    sigreg_forward_ref(&loss, ps.data(), c.data(), z.data(), A.data(), N, K, M, variant);
    if (per_slice) *per_slice = ps;
    if (cs) *cs = c;
    return loss;
}
// E[SIGReg] for z ~ N(0, I): sum_j w_j (1 - exp(-t_j^2)), the same knots and weights as the op (for the
// deprecated variant this is N times its expectation: it has no factor N).
static double gaussian_expectation(SigregVariant variant = SIGREG_LEJEPA) {
    double e = 0;
    for (int j = 0; j < SIGREG_POINTS; j++) {
        double t, phi, w;
        sigreg_knot(j, &t, &phi, &w, variant);
        e += w * (1.0 - exp(-t * t));
    }
    return e;
}
// Rows scaled to unit L2 norm (F.normalize; zero rows stay zero).
static vecd l2_rows(vecd z, int N, int K) {
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int k = 0; k < K; k++) ss += z[(size_t)n * K + k] * z[(size_t)n * K + k];
        const double inv = 1.0 / fmax(sqrt(ss), 1e-12);
        for (int k = 0; k < K; k++) z[(size_t)n * K + k] *= inv;
    }
    return z;
}
static const char* variant_name(SigregVariant v) { return v == SIGREG_DEPRECATED ? "deprecated" : "lejepa"; }

// ---------------------------------------------------------------------------------------------------------

static void test_knots() {
    double t0, p0, w0, t1, p1, w1, tl, pl, wl;
    sigreg_knot(0, &t0, &p0, &w0, SIGREG_LEJEPA);
    sigreg_knot(1, &t1, &p1, &w1, SIGREG_LEJEPA);
    sigreg_knot(SIGREG_POINTS - 1, &tl, &pl, &wl, SIGREG_LEJEPA);
    const double dt = 3.0 / 16;
    const bool ok = t0 == 0 && p0 == 1 && w0 == dt && t1 == dt && fabs(w1 - 2 * dt * exp(-dt * dt / 2)) < 1e-15 &&
                    tl == 3.0 && fabs(wl - dt * exp(-4.5)) < 1e-15;
    check(ok, "sigreg knots: t = linspace(0, 3, 17), w = 2 dt phi inside, dt phi at the ends",
          "t0 %g w0 %g t1 %g w1 %g t16 %g w16 %g", t0, w0, t1, w1, tl, wl);
    // sum_j w_j approximates 2 * int_0^3 exp(-t^2/2) dt = sqrt(2 pi) erf(3 / sqrt 2)
    double sw = 0;
    for (int j = 0; j < SIGREG_POINTS; j++) {
        double t, p, w;
        sigreg_knot(j, &t, &p, &w, SIGREG_LEJEPA);
        sw += w;
    }
    const double exact = sqrt(2 * M_PI) * erf(3 / sqrt(2.0));
    check(fabs(sw - exact) < 1e-2 * exact, "sigreg weights integrate 2 exp(-t^2/2) over [0, 3]", "sum w %.6f vs %.6f", sw, exact);

    // the deprecated variant: torch.linspace(-3, 3, 17) (dt = 0.375), torch.trapz weights times exp(-t^2/2)
    bool ok_d = true;
    double swd = 0;
    std::string bad;
    for (int j = 0; j < SIGREG_POINTS; j++) {
        double t, p, w;
        sigreg_knot(j, &t, &p, &w, SIGREG_DEPRECATED);
        const double t_want = -3.0 + 6.0 * j / 16, w_want = (j == 0 || j == 16 ? 0.1875 : 0.375) * exp(-t_want * t_want / 2);
        const bool ok = t == t_want && p == exp(-t_want * t_want / 2) && fabs(w - w_want) <= 1e-15;
        if (!ok && bad.empty()) bad = fmt("knot %d: t %.17g (want %.17g) w %.17g (want %.17g)", j, t, t_want, w, w_want);
        ok_d = ok_d && ok;
        swd += w;
    }
    check(ok_d, "sigreg deprecated knots: t = linspace(-3, 3, 17), w = trapz weights (dt/2 ends, dt inside) x phi", "%s",
          bad.c_str());
    check(fabs(swd - exact) < 1e-2 * exact, "sigreg deprecated weights integrate exp(-t^2/2) over [-3, 3]",
          "sum w %.6f vs %.6f", swd, exact);
}

// Central differences of the loss (dloss != 1 so that the scaling is checked too).
static void test_gradcheck(int N, int K, int M, double std, SigregVariant variant = SIGREG_LEJEPA) {
    const std::string name = fmt("sigreg %s backward vs central differences N=%d K=%d M=%d std=%g", variant_name(variant),
                                 N, K, M, std);
    vecd z = normal_vec((size_t)N * K, std);
    const vecd A = directions(K, M, 77 + N);
    const double dloss = 0.7;
    vecd cs, dz((size_t)N * K);
    sigreg_value(z, A, N, K, M, nullptr, &cs, variant);
    sigreg_backward_ref(dz.data(), z.data(), A.data(), cs.data(), &dloss, N, K, M, variant);
    const double h = 1e-6;
    double worst = 0, maxabs = 0, fd_w = 0, an_w = 0;
    size_t where = 0;
    for (double g : dz) maxabs = fmax(maxabs, fabs(g));
    for (size_t i = 0; i < z.size(); i++) {
        const double z0 = z[i], zp = z0 + h, zm = z0 - h;
        z[i] = zp;
        const double lp = dloss * sigreg_value(z, A, N, K, M, nullptr, nullptr, variant);
        z[i] = zm;
        const double lm = dloss * sigreg_value(z, A, N, K, M, nullptr, nullptr, variant);
        z[i] = z0;
        const double fd = (lp - lm) / (zp - zm);
        const double err = fabs(fd - dz[i]) / (fabs(dz[i]) + 1e-3 * maxabs + 1e-300);
        if (!(err <= worst)) { worst = isnan(err) ? INFINITY : err; where = i; fd_w = fd; an_w = dz[i]; }
    }
    check(worst < 1e-6 && maxabs > 0, name.c_str(), "max rel err %.3g at %zu: fd %.12g vs analytic %.12g (max |dz| %.3g)",
          worst, where, fd_w, an_w, maxabs);
}

// The value is the mean of the per-slice values, and those agree with T_m recomputed from cs.
static void test_consistency(SigregVariant variant = SIGREG_LEJEPA) {
    const int N = 50, K = 8, M = 12;
    const vecd z = normal_vec((size_t)N * K), A = directions(K, M, 5);
    vecd ps, cs;
    const double loss = sigreg_value(z, A, N, K, M, &ps, &cs, variant);
    double mean = 0, worst = 0;
    for (int m = 0; m < M; m++) {
        mean += ps[m] / M;
        worst = fmax(worst, fabs(ps[m] - sigreg_slice_value(cs.data() + (size_t)m * 2 * SIGREG_POINTS, N, variant)) / ps[m]);
    }
    check(fabs(mean - loss) < 1e-12 * loss && worst < 1e-12,
          fmt("sigreg %s loss = mean of per_slice, per_slice = T_m(cs)", variant_name(variant)).c_str(),
          "loss %.15g mean %.15g, per-slice err %.3g", loss, mean, worst);
    // c = 1, s = 0 at the knot t = 0 (j = 0, or the middle knot j = 8 of the deprecated variant) for every slice
    const int j0 = variant == SIGREG_DEPRECATED ? SIGREG_POINTS / 2 : 0;
    bool ok = true;
    for (int m = 0; m < M; m++)
        ok = ok && fabs(cs[(size_t)m * 2 * SIGREG_POINTS + j0] - 1) < 1e-15 && cs[(size_t)m * 2 * SIGREG_POINTS + SIGREG_POINTS + j0] == 0;
    check(ok, fmt("sigreg %s c(t=0) = 1, s(t=0) = 0", variant_name(variant)).c_str());
    if (variant == SIGREG_DEPRECATED) {
        // the knots are symmetric: c(-t) = c(t), s(-t) = -s(t) (to rounding: cos/sin of negated arguments)
        double err = 0;
        for (int m = 0; m < M; m++)
            for (int j = 0; j < SIGREG_POINTS; j++) {
                const double* c = cs.data() + (size_t)m * 2 * SIGREG_POINTS;
                err = fmax(err, fabs(c[j] - c[SIGREG_POINTS - 1 - j]));
                err = fmax(err, fabs(c[SIGREG_POINTS + j] + c[2 * SIGREG_POINTS - 1 - j]));
            }
        check(err < 1e-14, "sigreg deprecated cs symmetric in t (c even, s odd)", "max asymmetry %.3g", err);
    }
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

    // the deprecated variant has no factor N: N x its value is near its own sum_j w_j (1 - exp(-t_j^2)) (the same
    // R draws of z and slices)
    const double expected_d = gaussian_expectation(SIGREG_DEPRECATED);
    double gauss_d = 0;
    for (int r = 0; r < R; r++) {
        const vecd zr = r == 0 ? z : normal_vec((size_t)N * K);
        gauss_d += N * sigreg_value(zr, directions(K, M, 2024 + r), N, K, M, nullptr, nullptr, SIGREG_DEPRECATED) / R;
    }
    printf("     deprecated, z ~ N(0, I): N x SIGReg %.4f (mean of %d draws), N x expectation %.4f\n", gauss_d, R, expected_d);
    check(fabs(gauss_d - expected_d) < 0.15 * expected_d, "sigreg deprecated z ~ N(0, I): N x value within 15% of N x expectation",
          "%.4f vs %.4f", gauss_d, expected_d);

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
    sigreg_backward_ref(dz.data(), z.data(), A.data(), cs.data(), &one, N, K, M, SIGREG_LEJEPA);
    sigreg_backward_ref(dzp.data(), zp.data(), A.data(), csp.data(), &one, N, K, M, SIGREG_LEJEPA);
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

// The documented defect of the repo's SIGReg (jepa_reference.md section 5): the deprecated statistic of
// F.normalize(z) with z 256-d is ~0.40 for isotropic and for fully collapsed samples alike (the repo's micro-batch
// N = 512 rows; M = 256 slices). The LeJEPA variant on the same normalised rows is ~N times as large.
static void test_deprecated_defect() {
    const int N = 512, K = 256, M = 256;
    const vecd A = directions(K, M, 4242);
    const vecd iso = l2_rows(normal_vec((size_t)N * K), N, K);
    vecd same((size_t)N * K);
    const vecd row = l2_rows(normal_vec(K), 1, K);
    for (int n = 0; n < N; n++) std::copy(row.begin(), row.end(), same.begin() + (size_t)n * K);
    const vecd zero((size_t)N * K, 0.0);
    const double v_iso = sigreg_value(iso, A, N, K, M, nullptr, nullptr, SIGREG_DEPRECATED);
    const double v_same = sigreg_value(same, A, N, K, M, nullptr, nullptr, SIGREG_DEPRECATED);
    const double v_zero = sigreg_value(zero, A, N, K, M, nullptr, nullptr, SIGREG_DEPRECATED);
    const double l_iso = sigreg_value(iso, A, N, K, M, nullptr, nullptr, SIGREG_LEJEPA);
    const double l_same = sigreg_value(same, A, N, K, M, nullptr, nullptr, SIGREG_LEJEPA);
    // the t-integral without sampling noise for a collapsed batch at x = 0: int_{-3}^{3} (1 - phi)^2 phi dt
    // (the trapezoid rule on the op's knots)
    double at0 = 0;
    for (int j = 0; j < SIGREG_POINTS; j++) {
        double t, phi, w;
        sigreg_knot(j, &t, &phi, &w, SIGREG_DEPRECATED);
        at0 += w * (1 - phi) * (1 - phi);
    }
    printf("     deprecated on L2-normalised 256-d rows, N=%d M=%d: isotropic %.4f, all rows equal %.4f, all rows zero %.4f "
           "(trapezoid of (1-phi)^2 phi: %.4f)\n", N, M, v_iso, v_same, v_zero, at0);
    printf("     LeJEPA variant on the same rows: isotropic %.2f, all rows equal %.2f (/N: %.4f, %.4f)\n", l_iso, l_same,
           l_iso / N, l_same / N);
    check(fabs(v_zero - at0) < 1e-12, "sigreg deprecated, all rows zero = the trapezoid of (1 - phi)^2 phi over [-3, 3]",
          "%.15g vs %.15g", v_zero, at0);
    check(v_iso > 0.37 && v_iso < 0.43, "sigreg deprecated, isotropic L2-normalised 256-d rows ~0.40 (spec 0.396)", "%.4f", v_iso);
    check(v_same > 0.37 && v_same < 0.43, "sigreg deprecated, collapsed L2-normalised 256-d rows ~0.40 (spec 0.401)", "%.4f", v_same);
    check(fabs(v_iso - v_same) < 0.05 * v_same,
          "sigreg deprecated: isotropic and collapsed within 5% of each other (the documented defect)", "%.4f vs %.4f", v_iso, v_same);
    // for contrast: the LeJEPA variant is the same integral (on a finer grid of [0, 3]) times N, so on normalised rows
    // it is ~N x 0.40 for both batches, far above its Gaussian value ~1.05 (why LeJEPA says never normalise)
    check(l_iso > 0.8 * N * v_iso && l_same > 0.8 * N * v_same, "sigreg LeJEPA on the same normalised rows ~N x the deprecated value",
          "%.2f, %.2f vs N x %.4f, %.4f", l_iso, l_same, v_iso, v_same);
}

// The GPU backward's slice tile (host arithmetic): all M slices when z_n, dz_n (2K floats) and g (M floats) fit the
// block's shared memory budget, else as many as fit, at least 1; 0 only when 2K floats plus one do not fit.
static void test_backward_tile() {
    struct Case { int K, M; size_t budget; int want; };
    const size_t h100 = 232448;     // sharedMemPerBlockOptin of an H100 (227 KB)
    const Case cases[] = {
        {64, 1024, 48 * 1024, 1024},                        // fits the default 48 KB
        {64, 16384, h100, 16384},                           // 66 KB: fits after the opt-in, one tile
        {32, 70000, h100, (int)((h100 - 2 * 32 * 4) / 4)},  // 280 KB: tiles of 58048 slices
        {5, 3, (2 * 5 + 3) * 4, 3},                         // exactly fits
        {5, 3, (2 * 5 + 3) * 4 - 1, 2},                     // one byte short: one slice fewer
        {5, 3, 2 * 5 * 4 + 4, 1},                           // room for one slice
        {5, 3, 2 * 5 * 4 + 3, 0},                           // not even one slice
        {30000, 8, h100, 0},                                // z_n and dz_n alone exceed the budget
        {16, 0, 48 * 1024, 1},                              // no slices: a tile of 1 (the kernel's loop never runs)
    };
    for (const Case& c : cases) {
        const int got = sigreg_backward_tile(c.K, c.M, c.budget);
        const bool fits = got == 0 || sigreg_backward_smem(c.K, got) <= c.budget;
        check(got == c.want && fits, fmt("sigreg_backward_tile K=%d M=%d budget=%zu -> %d", c.K, c.M, c.budget, c.want).c_str(),
              "got %d (%zu bytes)", got, sigreg_backward_smem(c.K, got));
    }
}

int main() {
    test_seed(20251205);
    test_knots();
    test_gradcheck(7, 5, 6, 1.0);
    test_gradcheck(16, 3, 4, 0.3);     // near-collapsed: c close to 1
    test_gradcheck(5, 4, 9, 2.5);      // wide: the high-t knots oscillate
    test_gradcheck(7, 5, 6, 1.0, SIGREG_DEPRECATED);
    test_gradcheck(16, 3, 4, 0.3, SIGREG_DEPRECATED);
    test_gradcheck(5, 4, 9, 2.5, SIGREG_DEPRECATED);
    test_gradcheck(9, 16, 8, 0.25, SIGREG_DEPRECATED);   // unit-norm-sized rows, as the repo feeds it
    test_consistency();
    test_consistency(SIGREG_DEPRECATED);
    test_gaussian_and_collapse();
    test_deprecated_defect();
    test_directions();
    test_backward_tile();
    return test_summary();
}
