// Tests of the VQ codebook ops (kernels/vq.cuh), the Gumbel VQ (kernels/vq_gumbel.cuh) and InfoNCE
// (kernels/infonce.cuh) on their CPU references, in double (and float where the CPU backend's numbers matter):
//
//   make build/test_vq && ./build/test_vq
//
//  - vq_nearest against a brute-force argmin written here, exact ties (duplicated codes, equidistant codes) going
//    to the smallest k, the distance summed directly (exactly 0 for x = e_k, never negative);
//  - vq_quantize, vq_code_stats (valid mask, idx = -1 ignored);
//  - the EMA update on an example computed by hand (K = 3, D = 2, decay 0.9), the valid mask's effect on it;
//  - vq_refresh_codes in both modes; the commitment loss and its backward against central differences;
//  - Gumbel: the hard value is the argmax code, y_soft rows sum to 1, determinism in the seed, the noise's moments
//    and the Gumbel-max sampling frequencies, eval mode = vq_nearest, the backward against central differences of
//    the soft surrogate; the entropy term and the temperature schedule;
//  - InfoNCE against a log-softmax written here (with / without queue, positives in various columns), the chance
//    value ln(Bt + Q), gradients (dc, dt, dlog_tau) against central differences including the clamped case.
#include <math.h>
#include <algorithm>
#include <string>
#include <vector>
#include "../common/device.h"
#include "../common/rand.h"
#include "../kernels/infonce.cuh"
#include "../kernels/vq.cuh"
#include "../kernels/vq_gumbel.cuh"
#include "test.h"
#include "op_test.h"

typedef std::vector<int> veci;
typedef std::vector<uint8_t> vecu8;

static void normalize_rows(vecd& v, int n, int P) {
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int p = 0; p < P; p++) ss += v[(size_t)i * P + p] * v[(size_t)i * P + p];
        for (int p = 0; p < P; p++) v[(size_t)i * P + p] /= sqrt(ss);
    }
}

// Central differences of f over every element of v against the analytic gradient g; relative to max |g|.
template <typename F>
static double fd_error(vecd& v, const vecd& g, F f, double h = 1e-6, size_t* where = nullptr, double* fd_at = nullptr) {
    const double scale = max_abs(g) + 1e-300;
    double worst = 0;
    for (size_t i = 0; i < v.size(); i++) {
        const double v0 = v[i];
        v[i] = v0 + h;
        const double fp = f();
        v[i] = v0 - h;
        const double fm = f();
        v[i] = v0;
        const double fd = (fp - fm) / (2 * h);
        const double err = fabs(fd - g[i]) / (fabs(g[i]) + 1e-3 * scale);
        if (!(err <= worst)) {
            worst = isnan(err) ? INFINITY : err;
            if (where) *where = i;
            if (fd_at) *fd_at = fd;
        }
    }
    return worst;
}

// =========================================================================================================
// vq_nearest

static void brute_nearest(veci& idx, vecd& dist, const vecd& x, const vecd& E, int R, int K, int D) {
    idx.assign(R, -1);
    dist.assign(R, 0);
    for (int r = 0; r < R; r++) {
        double best = 0;
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int d = 0; d < D; d++) s += (x[(size_t)r * D + d] - E[(size_t)k * D + d]) * (x[(size_t)r * D + d] - E[(size_t)k * D + d]);
            if (k == 0 || s < best) { best = s; idx[r] = k; }
        }
        dist[r] = best;
    }
}

static void test_nearest_random(int R, int K, int D) {
    const vecd x = rand_vec((size_t)R * D, -1, 1), E = rand_vec((size_t)K * D, -1, 1);
    veci idx(R, -7), bidx;
    vecd dist(R, NAN), bdist;
    vq_nearest_ref(idx.data(), dist.data(), x.data(), E.data(), R, K, D);
    brute_nearest(bidx, bdist, x, E, R, K, D);
    double derr = 0;
    for (int r = 0; r < R; r++) derr = fmax(derr, fabs(dist[r] - bdist[r]) / bdist[r]);
    check(idx == bidx && derr < 1e-13, fmt("vq_nearest = brute-force argmin R=%d K=%d D=%d", R, K, D).c_str(),
          "idx equal %d, max dist rel err %.3g", (int)(idx == bidx), derr);
}

// A row with a non-finite embedding (a step that will be skipped) has no finite distance: it gets idx = -1, is not
// quantised (passes through) and counts for no code; the other rows are unaffected.
static void test_nearest_non_finite() {
    const int R = 4, K = 5, D = 3;
    vecd x = rand_vec((size_t)R * D, -1, 1);
    const vecd E = rand_vec((size_t)K * D, -1, 1);
    x[1 * D + 2] = NAN;
    x[3 * D + 0] = INFINITY;
    veci idx(R, 7), bidx;
    vecd dist(R), bdist;
    vq_nearest_ref(idx.data(), dist.data(), x.data(), E.data(), R, K, D);
    brute_nearest(bidx, bdist, x, E, R, K, D);
    check(idx[1] == -1 && idx[3] == -1 && idx[0] == bidx[0] && idx[2] == bidx[2], "vq_nearest: rows without a finite distance get -1",
          "idx = %d %d %d %d", idx[0], idx[1], idx[2], idx[3]);
    vecd out((size_t)R * D), counts(K), sums((size_t)K * D);
    vq_quantize_ref(out.data(), idx.data(), E.data(), x.data(), (const uint8_t*)nullptr, R, D);
    vq_code_stats_ref(counts.data(), sums.data(), idx.data(), x.data(), (const uint8_t*)nullptr, R, K, D);
    double total = 0;
    bool finite = true;
    for (int k = 0; k < K; k++) total += counts[k];
    for (double v : sums) finite = finite && std::isfinite(v);
    check(std::isnan(out[1 * D + 2]) && out[0] == E[(size_t)idx[0] * D] && total == 2 && finite,
          "vq_quantize passes unquantised rows through, vq_code_stats counts only the finite rows",
          "counts total %g, sums finite %d", total, (int)finite);
}

static void test_nearest_ties() {
    const int K = 12, D = 5;
    vecd E = rand_vec((size_t)K * D, -1, 1);
    // codes 3 and 9 equal; codes 4 and 7 mirror images (+v and -v): equidistant from x = 0
    for (int d = 0; d < D; d++) {
        E[9 * D + d] = E[3 * D + d];
        E[7 * D + d] = -E[4 * D + d];
    }
    // code 10 the nearest to nothing but a huge-magnitude copy row (expanded form would lose all precision)
    for (int d = 0; d < D; d++) E[10 * D + d] = 1000.0 + 0.123456789 * d;
    const int R = 4;
    vecd x((size_t)R * D);
    for (int d = 0; d < D; d++) {
        x[0 * D + d] = E[3 * D + d];          // exactly code 3 = code 9
        x[1 * D + d] = 0.0;                   // equidistant from 4 and 7 (and maybe nearer to others)
        x[2 * D + d] = E[10 * D + d];         // exactly code 10, large magnitude
        x[3 * D + d] = 0.5 * (E[3 * D + d] + E[9 * D + d]);
    }
    // make 4 and 7 the nearest to x = 0: shrink them
    for (int d = 0; d < D; d++) { E[4 * D + d] *= 1e-3; E[7 * D + d] = -E[4 * D + d]; }
    veci idx(R);
    vecd dist(R);
    vq_nearest_ref(idx.data(), dist.data(), x.data(), E.data(), R, K, D);
    check(idx[0] == 3 && dist[0] == 0, "vq_nearest exact tie (duplicated code 3 = 9) -> the smaller k, distance 0",
          "idx %d dist %g", idx[0], dist[0]);
    check(idx[1] == 4, "vq_nearest exact tie (x = 0 equidistant from +v and -v, codes 4 and 7) -> 4", "idx %d", idx[1]);
    check(idx[2] == 10 && dist[2] == 0, "vq_nearest x = e_k of magnitude 1000: distance exactly 0 (direct form)",
          "idx %d dist %.17g", idx[2], dist[2]);
    check(idx[3] == 3, "vq_nearest tie between duplicated codes at nonzero distance -> the smaller k", "idx %d", idx[3]);
    // the float reference (the CPU backend's numbers) agrees on every tie
    std::vector<float> xf(x.begin(), x.end()), Ef(E.begin(), E.end()), df(R);
    veci idf(R);
    vq_nearest_ref(idf.data(), df.data(), xf.data(), Ef.data(), R, K, D);
    check(idf == idx && df[0] == 0 && df[2] == 0, "vq_nearest float reference: the same ties, distances exactly 0",
          "idx %d %d %d %d", idf[0], idf[1], idf[2], idf[3]);
    // never negative
    const vecd xr = rand_vec(200 * D, -3, 3);
    veci i2(200);
    vecd d2(200);
    vq_nearest_ref(i2.data(), d2.data(), xr.data(), E.data(), 200, K, D);
    bool nonneg = true;
    for (double v : d2) nonneg = nonneg && v >= 0;
    check(nonneg, "vq_nearest distances >= 0");
}

// =========================================================================================================
// vq_quantize, vq_code_stats

static void test_quantize_and_stats() {
    const int R = 40, K = 7, D = 6;
    const vecd x = rand_vec((size_t)R * D, -1, 1), E = rand_vec((size_t)K * D, -1, 1);
    veci idx(R);
    for (int r = 0; r < R; r++) idx[r] = (int)(rng_uniform(&g_rng) * K);
    vecu8 valid(R);
    for (int r = 0; r < R; r++) valid[r] = (r % 3) != 1;
    vecd out((size_t)R * D, NAN), out_all((size_t)R * D, NAN);
    vq_quantize_ref(out.data(), idx.data(), E.data(), x.data(), valid.data(), R, D);
    vq_quantize_ref(out_all.data(), idx.data(), E.data(), x.data(), (const uint8_t*)nullptr, R, D);
    bool ok = true, ok_all = true;
    for (int r = 0; r < R; r++)
        for (int d = 0; d < D; d++) {
            ok = ok && out[(size_t)r * D + d] == (valid[r] ? E[(size_t)idx[r] * D + d] : x[(size_t)r * D + d]);
            ok_all = ok_all && out_all[(size_t)r * D + d] == E[(size_t)idx[r] * D + d];
        }
    check(ok, "vq_quantize: e_idx on valid rows, x on padded rows");
    check(ok_all, "vq_quantize valid = null: e_idx on every row");

    veci idx2 = idx;
    idx2[5] = -1;                         // a Gumbel padded row: ignored
    vecd counts(K, NAN), sums((size_t)K * D, NAN);
    vq_code_stats_ref(counts.data(), sums.data(), idx2.data(), x.data(), valid.data(), R, K, D);
    vecd c2(K, 0), s2((size_t)K * D, 0);
    for (int r = 0; r < R; r++) {
        if (!valid[r] || idx2[r] < 0) continue;
        c2[idx2[r]] += 1;
        for (int d = 0; d < D; d++) s2[(size_t)idx2[r] * D + d] += x[(size_t)r * D + d];
    }
    double serr = 0, total = 0;
    for (size_t i = 0; i < sums.size(); i++) serr = fmax(serr, fabs(sums[i] - s2[i]));
    for (double c : counts) total += c;
    int n_valid = 0;
    for (int r = 0; r < R; r++) n_valid += valid[r] && idx2[r] >= 0;
    check(counts == c2 && serr < 1e-14 && total == n_valid, "vq_code_stats: counts and sums over valid rows (idx -1 ignored)",
          "max sum err %.3g, total count %g vs %d valid rows", serr, total, n_valid);
    vq_code_stats_ref(counts.data(), sums.data(), idx.data(), x.data(), (const uint8_t*)nullptr, R, K, D);
    total = 0;
    for (double c : counts) total += c;
    check(total == R, "vq_code_stats valid = null: every row counted", "total %g", total);
}

// =========================================================================================================
// EMA update, by hand
//
// K = 3 codes, D = 2, decay g = 0.9, eps = 1e-5. State before: N0 = [2, 1, 0.5], m0 = [[2, 4], [1, -1], [0.5, 0.5]].
// Batch (x, idx, valid): (1, 2) -> 0; (3, 0) -> 0; (-1, 1) -> 1; (5, 5) -> 1 but padded (valid 0).
//   counts = [2, 1, 0]                 sums = [[4, 2], [-1, 1], [0, 0]]     (the padded row excluded)
//   N = 0.9 N0 + 0.1 counts = [1.8 + 0.2, 0.9 + 0.1, 0.45 + 0] = [2, 1, 0.45];   n = 3.45
//   m = 0.9 m0 + 0.1 sums: m_0 = (1.8 + 0.4, 3.6 + 0.2) = (2.2, 3.8); m_1 = (0.9 - 0.1, -0.9 + 0.1) = (0.8, -0.8);
//       m_2 = (0.45, 0.45)
//   Ntilde_k = (N_k + 1e-5) / (3.45 + 3e-5) * 3.45 = (N_k + 1e-5) (1 - 3e-5 / 3.45003) = (N_k + 1e-5)(1 - 8.6955765e-6)
//     Ntilde_0 = 2.00001 - 2.00001 * 8.6955765e-6 = 2.00001 - 1.73912e-5 = 1.99999260876
//     Ntilde_1 = 1.00001 - 8.69566e-6 = 1.00000130434
//     Ntilde_2 = 0.45001 - 3.91310e-6 = 0.45000608690
//   e_0 = (2.2, 3.8) / 1.99999260876 = (1.10000406520, 1.90000702170)
//   e_1 = (0.8, -0.8) / 1.00000130434 = (0.79999895653, -0.79999895653)
//   e_2 = (0.45, 0.45) / 0.45000608690 = (0.99998647373, 0.99998647373)
// Without the mask the padded row counts for code 1: counts_1 = 2, sums_1 = (4, 6), N_1 = 1.1, m_1 = (1.3, -0.3).

template <typename T>
static void run_ema_example(bool masked, std::vector<T>& E, std::vector<T>& N, std::vector<T>& m) {
    const int K = 3, D = 2, R = 4;
    const std::vector<T> x = {1, 2, 3, 0, -1, 1, 5, 5};
    const veci idx = {0, 0, 1, 1};
    const vecu8 valid = {1, 1, 1, 0};
    E = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6};
    N = {2, 1, 0.5};
    m = {2, 4, 1, -1, 0.5, 0.5};
    std::vector<T> counts(K), sums((size_t)K * D);
    vq_code_stats_ref(counts.data(), sums.data(), idx.data(), x.data(), masked ? valid.data() : nullptr, R, K, D);
    vq_ema_update_ref(E.data(), N.data(), m.data(), counts.data(), sums.data(), K, D, 0.9f, 1e-5f);
}

static void test_ema_by_hand() {
    const double N_want[3] = {2.0, 1.0, 0.45};
    const double m_want[6] = {2.2, 3.8, 0.8, -0.8, 0.45, 0.45};
    const double e_want[6] = {1.10000406520, 1.90000702170, 0.79999895653, -0.79999895653, 0.99998647373, 0.99998647373};
    // decay 0.9f is 0.89999997615814...: the double reference uses that float exactly, which moves the numbers
    // by ~3e-8 relative; the hand values carry 11-12 digits, so the check allows 1e-7.
    vecd E, N, m;
    run_ema_example<double>(true, E, N, m);
    double err = 0;
    for (int k = 0; k < 3; k++) err = fmax(err, fabs(N[k] - N_want[k]) / N_want[k]);
    for (int i = 0; i < 6; i++) {
        err = fmax(err, fabs(m[i] - m_want[i]) / fabs(m_want[i]));
        err = fmax(err, fabs(E[i] - e_want[i]) / fabs(e_want[i]));
    }
    check(err < 1e-7, "vq_ema_update = the hand-computed example (K=3, D=2, decay 0.9, eps 1e-5, one padded row)",
          "max rel err %.3g: N %.12g %.12g %.12g, e0 %.12g %.12g, e2 %.12g", err, N[0], N[1], N[2], E[0], E[1], E[4]);
    // the Laplace smoothing really is applied: e differs from m / N by the factor above
    check(fabs(E[0] - 1.1) > 3e-6 && fabs(E[0] - 1.1) < 5e-6, "vq_ema_update: e = m / Ntilde (not m / N)", "e0 %.12g", E[0]);
    // the float version (the CPU backend) agrees to float precision
    std::vector<float> Ef, Nf, mf;
    run_ema_example<float>(true, Ef, Nf, mf);
    double ferr = 0;
    for (int i = 0; i < 6; i++) ferr = fmax(ferr, fabs(Ef[i] - e_want[i]) / fabs(e_want[i]));
    check(ferr < 1e-6, "vq_ema_update<float> = the hand example to float precision", "max rel err %.3g", ferr);
    // without the mask the padded row (5, 5) counts for code 1
    vecd E2, N2, m2;
    run_ema_example<double>(false, E2, N2, m2);
    check(fabs(N2[1] - 1.1) < 1e-6 && fabs(m2[2] - 1.3) < 1e-6 && fabs(m2[3] + 0.3) < 1e-6 && fabs(N2[0] - 2) < 1e-6,
          "vq_ema_update valid = null: the padded row counts (N_1 = 1.1, m_1 = (1.3, -0.3))", "N1 %.9g m1 %.9g %.9g", N2[1],
          m2[2], m2[3]);
    // nothing ever counted (N = 0, no rows): E is left as it was (the reference would divide by 0)
    vecd Ez = {1, 2, 3, 4}, Nz = {0, 0}, mz = {5, 6, 7, 8}, cz = {0, 0}, sz = {0, 0, 0, 0};
    vq_ema_update_ref(Ez.data(), Nz.data(), mz.data(), cz.data(), sz.data(), 2, 2, 0.9f, 1e-5f);
    check(Ez == vecd({1, 2, 3, 4}) && fabs(mz[0] - 4.5) < 1e-6, "vq_ema_update with n = 0 leaves E unchanged (m still decays)",
          "E %g %g, m0 %g", Ez[0], Ez[1], mz[0]);
}

// =========================================================================================================
// refresh

static void test_refresh() {
    const int K = 6, D = 3;
    const vecd E0 = rand_vec((size_t)K * D, -1, 1), N0 = {5, 0.001, 3, 0.002, 7, 1}, m0 = rand_vec((size_t)K * D, -1, 1);
    const veci codes = {3, 1};
    const vecd v = rand_vec(2 * D, -2, 2);
    for (int mode = 0; mode < 2; mode++) {
        const float new_count = mode == 0 ? (float)std::max(1.0, (5 + 0.001 + 3 + 0.002 + 7 + 1) / 6) : 2.0f;
        const float sum_scale = mode == 0 ? 1.0f : 2.0f;
        vecd E = E0, N = N0, m = m0;
        vq_refresh_codes_ref(E.data(), N.data(), m.data(), codes.data(), v.data(), 2, D, new_count, sum_scale);
        bool ok = true;
        for (int k = 0; k < K; k++) {
            const int i = k == 3 ? 0 : k == 1 ? 1 : -1;
            ok = ok && N[k] == (i < 0 ? N0[k] : (double)new_count);
            for (int d = 0; d < D; d++) {
                const size_t e = (size_t)k * D + d;
                ok = ok && E[e] == (i < 0 ? E0[e] : v[(size_t)i * D + d]);
                ok = ok && fabs(m[e] - (i < 0 ? m0[e] : sum_scale * v[(size_t)i * D + d])) < 1e-15;
            }
        }
        check(ok, mode == 0 ? "vq_refresh_codes reference mode: E = m = x, N = max(mean N, 1); other codes untouched"
                            : "vq_refresh_codes lucidrains mode: E = x, N = threshold, m = threshold x; others untouched");
    }
}

// =========================================================================================================
// commitment loss

static void test_commitment(int R, int D, bool masked) {
    vecd x = rand_vec((size_t)R * D, -1, 1);
    const vecd q = rand_vec((size_t)R * D, -1, 1), dx0 = rand_vec((size_t)R * D, -1, 1);
    vecu8 valid(R, 1);
    if (masked)
        for (int r = 0; r < R; r += 3) valid[r] = 0;
    const uint8_t* vp = masked ? valid.data() : nullptr;
    const float scale = 0.25f / (float)(R * D), dloss = 0.7f;
    double loss = 0;
    vq_commitment_forward_ref(&loss, x.data(), q.data(), vp, R, D, scale);
    double direct = 0;
    for (int r = 0; r < R; r++)
        if (valid[r])
            for (int d = 0; d < D; d++) direct += (x[(size_t)r * D + d] - q[(size_t)r * D + d]) * (x[(size_t)r * D + d] - q[(size_t)r * D + d]);
    direct *= (double)scale;
    const std::string tag = fmt("R=%d D=%d%s", R, D, masked ? " masked" : "");
    check(fabs(loss - direct) < 1e-14 * direct, ("vq_commitment_forward = scale * sum (x - q)^2 over valid rows " + tag).c_str(),
          "%.15g vs %.15g", loss, direct);
    vecd dx = dx0;
    vq_commitment_backward_ref(dx.data(), x.data(), q.data(), vp, R, D, scale, dloss);
    vecd g(dx.size());
    for (size_t i = 0; i < g.size(); i++) g[i] = dx[i] - dx0[i];
    size_t where = 0;
    const double err = fd_error(x, g, [&] {
        double l = 0;
        vq_commitment_forward_ref(&l, x.data(), q.data(), vp, R, D, scale);
        return (double)dloss * l;
    }, 1e-5, &where);
    check(err < 1e-7, ("vq_commitment_backward (+=) vs central differences " + tag).c_str(), "max rel err %.3g at %zu", err, where);
}

// =========================================================================================================
// Gumbel

static void test_gumbel_noise() {
    const int n = 400000;
    double mean = 0, m2 = 0;
    for (int i = 0; i < n; i++) {
        const double g = vq_gumbel_noise<double>(99, i / 1000, i % 1000);
        mean += g;
        m2 += g * g;
    }
    mean /= n;
    const double var = m2 / n - mean * mean;
    const double euler = 0.5772156649015329, var_want = M_PI * M_PI / 6;
    check(fabs(mean - euler) < 0.01 && fabs(var - var_want) < 0.02, "gumbel noise: mean = Euler's gamma, variance = pi^2/6",
          "mean %.4f (want %.4f), var %.4f (want %.4f)", mean, euler, var, var_want);
    const float lo = vq_gumbel_noise<float>(0, 0, 0);
    bool finite = isfinite(lo);
    for (int i = 0; i < 100000; i++) finite = finite && isfinite(vq_gumbel_noise<float>(1234, i, 7));
    check(finite, "gumbel noise (float) finite for every draw (u clamped into (0, 1))");
}

static void gumbel_forward(vecd& out, veci& idx, vecd& ys, const vecd& x, const vecd& E, const vecu8* valid, int R, int K,
                           int D, float tau, uint64_t seed, bool training) {
    out.assign((size_t)R * D, NAN);
    idx.assign(R, -7);
    ys.assign((size_t)R * K, NAN);
    vq_gumbel_forward_ref(out.data(), idx.data(), ys.data(), x.data(), E.data(), valid ? valid->data() : nullptr, R, K, D,
                          tau, seed, training);
}

static void test_gumbel_forward() {
    const int R = 50, K = 9, D = 4;
    const float tau = 0.6f;
    const uint64_t seed = 4242;
    const vecd x = rand_vec((size_t)R * D, -1, 1), E = rand_vec((size_t)K * D, -1, 1);
    vecu8 valid(R, 1);
    valid[3] = valid[17] = 0;
    vecd out, ys;
    veci idx;
    gumbel_forward(out, idx, ys, x, E, &valid, R, K, D, tau, seed, true);
    bool hard = true, sums = true, arg = true, pad = true;
    double worst_sum = 0;
    for (int r = 0; r < R; r++) {
        if (!valid[r]) {
            for (int d = 0; d < D; d++) pad = pad && out[(size_t)r * D + d] == x[(size_t)r * D + d];
            for (int k = 0; k < K; k++) pad = pad && ys[(size_t)r * K + k] == 0;
            pad = pad && idx[r] == -1;
            continue;
        }
        // the argmax of (-dist + g) / tau, computed here
        int best = 0;
        double bz = -INFINITY, s = 0;
        for (int k = 0; k < K; k++) {
            double dist = 0;
            for (int d = 0; d < D; d++) dist += (x[(size_t)r * D + d] - E[(size_t)k * D + d]) * (x[(size_t)r * D + d] - E[(size_t)k * D + d]);
            const double u = std::max((double)hash_uniform(seed, r, k), 2.9802322387695312e-08);
            const double z = (-dist - log(-log(u))) / tau;
            if (z > bz) { bz = z; best = k; }
            s += ys[(size_t)r * K + k];
        }
        worst_sum = fmax(worst_sum, fabs(s - 1));
        sums = sums && fabs(s - 1) < 1e-12;
        arg = arg && idx[r] == best && std::max_element(ys.begin() + (size_t)r * K, ys.begin() + (size_t)(r + 1) * K) - (ys.begin() + (size_t)r * K) == best;
        for (int d = 0; d < D; d++) hard = hard && out[(size_t)r * D + d] == E[(size_t)idx[r] * D + d];
    }
    check(arg, "vq_gumbel_forward idx = argmax of (-||x - e||^2 + gumbel) / tau = argmax y_soft");
    check(hard, "vq_gumbel_forward hard value out = e_idx");
    check(sums, "vq_gumbel_forward y_soft rows sum to 1", "worst |sum - 1| %.3g", worst_sum);
    check(pad, "vq_gumbel_forward padded rows: out = x, idx = -1, y_soft = 0");
    vecd out2, ys2, out3, ys3;
    veci idx2, idx3;
    gumbel_forward(out2, idx2, ys2, x, E, &valid, R, K, D, tau, seed, true);
    gumbel_forward(out3, idx3, ys3, x, E, &valid, R, K, D, tau, seed + 1, true);
    check(out2 == out && idx2 == idx && ys2 == ys, "vq_gumbel_forward deterministic in the seed");
    int differ = 0;
    for (int r = 0; r < R; r++) differ += idx3[r] != idx[r];
    check(differ > 0, "vq_gumbel_forward: another seed draws other codes", "%d of %d rows differ", differ, R);
    // at a large tau-independent noise scale relative to the logits, sampling frequencies follow softmax(logits)
    // (the Gumbel-max trick): one row, many seeds
    {
        const int K2 = 4, D2 = 1, n = 40000;
        const vecd x1 = {0.0}, E1 = {0.0, 0.5, 0.8, 1.1};      // logits -0, -0.25, -0.64, -1.21
        double p[4], zsum = 0;
        for (int k = 0; k < K2; k++) zsum += exp(-E1[k] * E1[k]);
        for (int k = 0; k < K2; k++) p[k] = exp(-E1[k] * E1[k]) / zsum;
        int hist[4] = {0, 0, 0, 0};
        for (int s = 0; s < n; s++) {
            vecd o, y;
            veci id;
            gumbel_forward(o, id, y, x1, E1, nullptr, 1, K2, D2, 1.0f, 1000 + s, true);
            hist[id[0]]++;
        }
        double worst = 0;
        for (int k = 0; k < K2; k++) worst = fmax(worst, fabs(hist[k] / (double)n - p[k]));
        check(worst < 0.012, "vq_gumbel_forward sampling frequencies = softmax(logits) (Gumbel-max, 40000 seeds)",
              "max |freq - p| %.4f (p = %.3f %.3f %.3f %.3f)", worst, p[0], p[1], p[2], p[3]);
    }
    // eval: nearest code, no noise, y_soft untouched
    vecd oute, yse;
    veci idxe;
    gumbel_forward(oute, idxe, yse, x, E, &valid, R, K, D, tau, seed, false);
    veci nidx(R);
    vq_nearest_ref(nidx.data(), (double*)nullptr, x.data(), E.data(), R, K, D);
    bool ok = true;
    for (int r = 0; r < R; r++) {
        ok = ok && idxe[r] == (valid[r] ? nidx[r] : -1);
        for (int d = 0; d < D; d++) ok = ok && oute[(size_t)r * D + d] == (valid[r] ? E[(size_t)nidx[r] * D + d] : x[(size_t)r * D + d]);
    }
    bool untouched = true;
    for (double v : yse) untouched = untouched && isnan(v);
    check(ok && untouched, "vq_gumbel_forward eval: idx = vq_nearest, out = e_idx (x on padded rows), y_soft untouched");
}

// The backward against central differences of the soft surrogate L = sum_r w_r . (y_soft_r @ E) (x_r on padded
// rows), the noise fixed by the seed. Its gradient is the backward's except for the one-hot term of the codebook
// gradient: dE_backward = dE_surrogate - sum_r y_soft_rk w_r + sum_r onehot_rk w_r.
static void test_gumbel_backward(int R, int K, int D, float tau) {
    const uint64_t seed = 777 + R;
    vecd x = rand_vec((size_t)R * D, -1, 1), E = rand_vec((size_t)K * D, -1, 1);
    const vecd w = rand_vec((size_t)R * D, -1, 1), dx0 = rand_vec((size_t)R * D, -1, 1), dE0 = rand_vec((size_t)K * D, -1, 1);
    vecu8 valid(R, 1);
    valid[R / 2] = 0;
    vecd out, ys;
    veci idx;
    gumbel_forward(out, idx, ys, x, E, &valid, R, K, D, tau, seed, true);
    vecd dx = dx0, dE = dE0;
    vq_gumbel_backward_ref(dx.data(), dE.data(), w.data(), ys.data(), idx.data(), x.data(), E.data(), valid.data(), R, K, D, tau);
    auto surrogate = [&] {
        vecd o, y;
        veci id;
        gumbel_forward(o, id, y, x, E, &valid, R, K, D, tau, seed, true);
        double L = 0;
        for (int r = 0; r < R; r++)
            for (int d = 0; d < D; d++) {
                double q = 0;
                if (valid[r])
                    for (int k = 0; k < K; k++) q += y[(size_t)r * K + k] * E[(size_t)k * D + d];
                else
                    q = x[(size_t)r * D + d];
                L += w[(size_t)r * D + d] * q;
            }
        return L;
    };
    vecd gx(dx.size()), gE(dE.size());
    for (size_t i = 0; i < gx.size(); i++) gx[i] = dx[i] - dx0[i];
    double hard_mass = 0;
    for (int k = 0; k < K; k++)
        for (int d = 0; d < D; d++) {
            double corr = 0;
            for (int r = 0; r < R; r++)
                if (valid[r]) corr += (ys[(size_t)r * K + k] - (idx[r] == k ? 1.0 : 0.0)) * w[(size_t)r * D + d];
            gE[(size_t)k * D + d] = dE[(size_t)k * D + d] - dE0[(size_t)k * D + d] + corr;
            hard_mass = fmax(hard_mass, fabs(corr));
        }
    const std::string tag = fmt("R=%d K=%d D=%d tau=%g", R, K, D, tau);
    size_t where = 0;
    double fd = 0;
    const double ex = fd_error(x, gx, surrogate, 1e-6, &where, &fd);
    check(ex < 1e-6 && max_abs(gx) > 0, ("vq_gumbel_backward dx (+=) vs central differences of the soft surrogate " + tag).c_str(),
          "max rel err %.3g at %zu: fd %.10g vs %.10g", ex, where, fd, gx[where]);
    const double ee = fd_error(E, gE, surrogate, 1e-6, &where, &fd);
    check(ee < 1e-6 && hard_mass > 1e-3, ("vq_gumbel_backward dcodebook (+=) vs central differences (+ the one-hot term) " + tag).c_str(),
          "max rel err %.3g at %zu: fd %.10g vs %.10g (one-hot correction up to %.3g)", ee, where, fd, gE[where], hard_mass);
}

static void test_gumbel_helpers() {
    const float uni[4] = {3, 3, 3, 3}, one[4] = {0, 7, 0, 0}, zero[4] = {0, 0, 0, 0}, mix[4] = {1, 1, 2, 0};
    const double lu = vq_usage_entropy_loss(uni, 4), lo = vq_usage_entropy_loss(one, 4), lz = vq_usage_entropy_loss(zero, 4),
                 lm = vq_usage_entropy_loss(mix, 4);
    // mix: p = (1/4, 1/4, 1/2, 0): H = 1.5 ln 2, log K = 2 ln 2: loss = 1 - 0.75 = 0.25
    check(fabs(lu) < 1e-8 && fabs(lo - 1) < 1e-8 && fabs(lz - 1) < 1e-12 && fabs(lm - 0.25) < 1e-8,
          "vq_usage_entropy_loss: uniform 0, one code 1, no counts 1, (1, 1, 2, 0) 0.25",
          "%.10g %.10g %.10g %.10g", lu, lo, lz, lm);
    const float t0 = gumbel_tau(0, 1.0f, 0.1f, 10000), t1 = gumbel_tau(5000, 1.0f, 0.1f, 10000),
                t2 = gumbel_tau(10000, 1.0f, 0.1f, 10000), t3 = gumbel_tau(25000, 1.0f, 0.1f, 10000),
                t4 = gumbel_tau(1, 1.0f, 0.1f, 10000);
    check(t0 == 1.0f && fabs(t1 - 0.55f) < 1e-7 && t2 == 0.1f && t3 == 0.1f && fabs(t4 - 0.99991f) < 1e-7,
          "gumbel_tau: linear 1.0 -> 0.1 over 10000 steps, then 0.1", "%.7g %.7g %.7g %.7g %.7g", t0, t1, t2, t3, t4);
}

// =========================================================================================================
// InfoNCE

struct NceCase {
    int Bc, Bt, Q, P;
    vecd c, t, queue;
    veci pos;
};

static NceCase nce_case(int Bc, int Bt, int Q, int P, bool unit) {
    NceCase n{Bc, Bt, Q, P, normal_vec((size_t)Bc * P), normal_vec((size_t)Bt * P), normal_vec((size_t)Q * P), veci(Bc)};
    if (unit) {
        normalize_rows(n.c, Bc, P);
        normalize_rows(n.t, Bt, P);
        normalize_rows(n.queue, Q, P);
    } else {
        for (auto& v : n.c) v *= 0.3;
        for (auto& v : n.t) v *= 0.3;
        for (auto& v : n.queue) v *= 0.3;
    }
    for (int i = 0; i < Bc; i++) n.pos[i] = (i * 7 + 3) % Bt;     // positives at various columns (repeats if Bc > Bt)
    return n;
}

static double nce_forward(const NceCase& n, double log_tau, float tmin, float tmax, float scale, vecd* probs = nullptr) {
    vecd pr((size_t)n.Bc * (n.Bt + n.Q));
    double loss = 0;
    infonce_forward_ref(&loss, pr.data(), n.c.data(), n.t.data(), n.queue.data(), n.pos.data(), &log_tau, n.Bc, n.Bt, n.Q,
                        n.P, tmin, tmax, scale);
    if (probs) *probs = pr;
    return loss;
}

// The reference's layout, written independently: column 0 the positive, then the other targets, then the queue;
// CE by log-sum-exp with the max subtracted.
static double nce_direct(const NceCase& n, double tau, double scale, vecd* probs = nullptr) {
    double total = 0;
    if (probs) probs->assign((size_t)n.Bc * (n.Bt + n.Q), 0);
    for (int i = 0; i < n.Bc; i++) {
        auto dot = [&](const vecd& m, int j) {
            double s = 0;
            for (int p = 0; p < n.P; p++) s += n.c[(size_t)i * n.P + p] * m[(size_t)j * n.P + p];
            return s;
        };
        vecd logits;
        logits.push_back(dot(n.t, n.pos[i]) / tau);
        for (int j = 0; j < n.Bt; j++)
            if (j != n.pos[i]) logits.push_back(dot(n.t, j) / tau);
        for (int q = 0; q < n.Q; q++) logits.push_back(dot(n.queue, q) / tau);
        const double mx = *std::max_element(logits.begin(), logits.end());
        double s = 0;
        for (double l : logits) s += exp(l - mx);
        const double lse = mx + log(s);
        total += lse - logits[0];
        if (probs) {
            const size_t row = (size_t)i * (n.Bt + n.Q);
            (*probs)[row + n.pos[i]] = exp(logits[0] - lse);
            int col = 1;
            for (int j = 0; j < n.Bt; j++)
                if (j != n.pos[i]) (*probs)[row + j] = exp(logits[col++] - lse);
            for (int q = 0; q < n.Q; q++) (*probs)[row + n.Bt + q] = exp(logits[col++] - lse);
        }
    }
    return scale * total;
}

static void test_infonce_value(int Bc, int Bt, int Q, int P, double tau, bool unit) {
    const NceCase n = nce_case(Bc, Bt, Q, P, unit);
    const float scale = 1.0f / Bc;
    vecd probs, pd;
    const double loss = nce_forward(n, log(tau), 0.01f, 1.0f, scale, &probs);
    const double direct = nce_direct(n, tau, scale, &pd);
    double perr = 0, rowerr = 0;
    for (size_t i = 0; i < probs.size(); i++) perr = fmax(perr, fabs(probs[i] - pd[i]));
    for (int i = 0; i < Bc; i++) {
        double s = 0;
        for (int j = 0; j < Bt + Q; j++) s += probs[(size_t)i * (Bt + Q) + j];
        rowerr = fmax(rowerr, fabs(s - 1));
    }
    check(fabs(loss - direct) < 1e-12 * fabs(direct) && perr < 1e-14 && rowerr < 1e-12,
          fmt("infonce_forward = direct log-softmax (positive first) Bc=%d Bt=%d Q=%d P=%d tau=%g", Bc, Bt, Q, P, tau).c_str(),
          "loss %.15g vs %.15g, probs max diff %.3g, row sums %.3g", loss, direct, perr, rowerr);
}

static void test_infonce_chance() {
    // c in the span of e_0..e_3, candidates in the span of e_4..e_7: every logit is 0, CE_i = ln(Bt + Q)
    const int Bc = 6, Bt = 6, Q = 11, P = 8;
    NceCase n = nce_case(Bc, Bt, Q, P, true);
    for (int i = 0; i < Bc; i++)
        for (int p = 4; p < P; p++) n.c[(size_t)i * P + p] = 0;
    for (int j = 0; j < Bt; j++)
        for (int p = 0; p < 4; p++) n.t[(size_t)j * P + p] = 0;
    for (int j = 0; j < Q; j++)
        for (int p = 0; p < 4; p++) n.queue[(size_t)j * P + p] = 0;
    const double loss = nce_forward(n, log(0.07), 0.05f, 0.2f, 1.0f / Bc);
    const double per_row = (double)(1.0f / Bc) * Bc;     // the float scale 1/Bc times Bc (1 up to float rounding)
    check(fabs(loss / per_row - log((double)(Bt + Q))) < 1e-12, "infonce chance value ln(Bt + Q) when c is orthogonal to every candidate",
          "%.15g vs ln(%d) = %.15g", loss / per_row, Bt + Q, log((double)(Bt + Q)));
    NceCase n0 = n;
    n0.Q = 0;
    n0.queue.clear();
    const double loss0 = nce_forward(n0, log(0.07), 0.05f, 0.2f, 1.0f / Bc);
    check(fabs(loss0 / per_row - log((double)Bt)) < 1e-12, "infonce chance value ln(Bt) without a queue", "%.15g vs %.15g",
          loss0 / per_row, log((double)Bt));
}

static void test_infonce_grad(int Bc, int Bt, int Q, int P, double log_tau, float tmin, float tmax, bool with_dt) {
    NceCase n = nce_case(Bc, Bt, Q, P, false);
    const float scale = 0.5f / Bc, dloss = 1.3f;
    const double e = exp(log_tau);
    const bool clamped = e < tmin || e > tmax;
    const std::string tag = fmt("Bc=%d Bt=%d Q=%d P=%d tau=%.3g in [%g, %g]%s%s", Bc, Bt, Q, P, e, tmin, tmax,
                                clamped ? " (clamped)" : "", with_dt ? "" : " dt=null");
    vecd probs;
    nce_forward(n, log_tau, tmin, tmax, scale, &probs);
    vecd dc((size_t)Bc * P, NAN), dt((size_t)Bt * P, NAN);
    const double dlt0 = 0.25;
    double dlt = dlt0;
    infonce_backward_ref(dc.data(), with_dt ? dt.data() : (double*)nullptr, &dlt, probs.data(), n.c.data(), n.t.data(),
                         n.queue.data(), n.pos.data(), &log_tau, Bc, Bt, Q, P, tmin, tmax, scale, dloss);
    auto L = [&] { return (double)dloss * nce_forward(n, log_tau, tmin, tmax, scale); };
    size_t where = 0;
    double fd = 0;
    const double ec = fd_error(n.c, dc, L, 1e-6, &where, &fd);
    check(ec < 1e-6 && max_abs(dc) > 0, ("infonce_backward dc vs central differences " + tag).c_str(),
          "max rel err %.3g at %zu: fd %.10g vs %.10g", ec, where, fd, dc[where]);
    if (with_dt) {
        const double et = fd_error(n.t, dt, L, 1e-6, &where, &fd);
        check(et < 1e-6 && max_abs(dt) > 0, ("infonce_backward dt vs central differences " + tag).c_str(),
              "max rel err %.3g at %zu: fd %.10g vs %.10g", et, where, fd, dt[where]);
    } else {
        bool untouched = true;
        for (double v : dt) untouched = untouched && isnan(v);
        check(untouched, ("infonce_backward dt = null writes no target gradient " + tag).c_str());
    }
    // (the loss values are differenced before the multiplication by dloss: a contracted dloss * lp - dloss * lm
    // would leave a rounding residue where the two are equal)
    const double g = dlt - dlt0, h = 1e-6;
    const double lp = nce_forward(n, log_tau + h, tmin, tmax, scale), lm = nce_forward(n, log_tau - h, tmin, tmax, scale);
    const double fdt = (double)dloss * ((lp - lm) / (2 * h));
    if (clamped)
        check(g == 0 && lp == lm, ("infonce_backward dlog_tau = 0 while tau is clamped " + tag).c_str(),
              "dlog_tau increment %.6g, loss at log_tau +- h: %.17g %.17g", g, lp, lm);
    else
        check(fabs(fdt - g) < 1e-6 * fabs(g) && g != 0, ("infonce_backward dlog_tau (+=) vs central differences " + tag).c_str(),
              "fd %.12g vs %.12g", fdt, g);
}

int main() {
    test_seed(20251207);
    test_nearest_random(100, 37, 9);
    test_nearest_random(33, 8, 1);
    test_nearest_random(5, 1, 4);
    test_nearest_ties();
    test_nearest_non_finite();
    test_quantize_and_stats();
    test_ema_by_hand();
    test_refresh();
    test_commitment(13, 7, false);
    test_commitment(16, 5, true);
    test_gumbel_noise();
    test_gumbel_forward();
    test_gumbel_backward(6, 5, 3, 0.7f);
    test_gumbel_backward(9, 7, 4, 1.5f);
    test_gumbel_backward(4, 3, 2, 0.3f);
    test_gumbel_helpers();
    test_infonce_value(8, 8, 0, 16, 0.07, true);
    test_infonce_value(8, 8, 20, 16, 0.07, true);
    test_infonce_value(5, 3, 7, 6, 0.5, false);      // more rows than targets: repeated positives
    test_infonce_value(4, 9, 13, 5, 0.15, true);
    test_infonce_chance();
    test_infonce_grad(5, 5, 7, 6, log(0.8), 0.05f, 2.0f, true);
    test_infonce_grad(4, 6, 0, 5, log(1.2), 0.05f, 2.0f, true);       // no queue
    test_infonce_grad(6, 3, 4, 4, log(0.5), 0.05f, 2.0f, false);      // dt = null, repeated positives
    test_infonce_grad(5, 5, 7, 6, log(0.03), 0.05f, 2.0f, true);      // below tau_min: clamped
    test_infonce_grad(5, 5, 7, 6, log(3.0), 0.05f, 2.0f, true);       // above tau_max: clamped
    return test_summary();
}
