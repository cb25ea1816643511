// Tests of the host-side latent math of the CVAE trainer (seed report 004):
//
//   make build/test_cvae_objective && ./build/test_cvae_objective
//
// common/cvae_objective.h
//  - every gradient against central differences in double (h = 1e-6, relative error < 1e-7): gaussian_kl w.r.t.
//    mu_q, lv_q, mu_p, lv_p (with a scale); posterior_variance w.r.t. lv_q; the router marginal KL w.r.t. every
//    mu_p and lv_p of the batch, its moment sums accumulated over two micro-batches and its backward run on each
//    (equal to the whole-batch gradient); reparameterize_backward; and a combined J = z-term + a KL_mean +
//    b V_mean + c K with every gradient added into the same buffers, as the trainer does. Gradients are added (+=):
//    the buffers start nonzero.
//  - values: KL(q || q) = 0; KL(N(mu, I) || N(0, I)) = |mu|^2 / 2; KL against numerical integration of
//    q log(q / p) in 1-D (and its sum over dimensions); posterior_variance = sum exp(lv_q); the router marginal KL
//    is 0 (with zero gradient) when the moment-matched Gaussian is N(0, I), positive otherwise, and equals the
//    per-dimension 0.5 (v + m^2 - 1 - log v) with m, v computed directly (two-pass).
//  - the float instantiations agree with the double ones to ~1e-5.
// common/latent_probes.h
//  - probe_accuracy: separable 3-class clusters -> 1.0 (also with a constant feature and a feature scaled x1000);
//    random labels -> near chance; empty train or test side -> -1; deterministic.
//  - kmeans: three separated blobs -> their means (up to order); the result is a Lloyd fixed point (every centroid
//    the mean of the points nearest to it) on a hand example and on random small problems; K above the number of
//    distinct points; n = 0 -> zeros; deterministic.
//  - alignment_one_to_one: identity, permuted diagonal, uniform, zero counts, a 3x3 example where the greedy
//    matching is wrong, K = 4 (a 4-cycle), rectangular counts, and random cases against a recursive brute force.
#include <math.h>
#include <algorithm>
#include <string>
#include <vector>
#include "../common/cvae_objective.h"
#include "../common/latent_probes.h"
#include "test.h"
#include "op_test.h"

static const double GRAD_TOL = 1e-7;

// sum of a vector in long double (the objectives of the gradient checks)
template <typename T> static long double suml(const std::vector<T>& v) {
    long double s = 0;
    for (T x : v) s += x;
    return s;
}
// a vector of n copies of `value` (gradient buffers that start nonzero, so that += is checked)
static vecd filled(size_t n, double value) { return vecd(n, value); }
static vecd minus(const vecd& a, double value) {
    vecd r(a);
    for (double& x : r) x -= value;
    return r;
}

// The random inputs of the gradient checks: B examples of d_z dimensions.
struct Latents {
    int B, dz;
    vecd mu_q, lv_q, mu_p, lv_p, eps;
};
static Latents random_latents(int B, int dz) {
    Latents L{B, dz, {}, {}, {}, {}, {}};
    const size_t n = (size_t)B * dz;
    L.mu_q = rand_vec(n, -1.5, 1.5);
    L.lv_q = rand_vec(n, -2.0, 1.0);
    L.mu_p = rand_vec(n, -1.5, 1.5);
    L.lv_p = rand_vec(n, -1.5, 1.5);
    L.eps = normal_vec(n);
    return L;
}

// =========================================================================================================
// gradients (double, central differences)
// =========================================================================================================

static void test_gaussian_kl_gradients() {
    const int B = 5, dz = 4;
    const size_t n = (size_t)B * dz;
    Latents L = random_latents(B, dz);
    const double scale = 0.37, start = 0.25;
    vecd kl(B), dmu_q = filled(n, start), dlv_q = filled(n, start), dmu_p = filled(n, start), dlv_p = filled(n, start);
    gaussian_kl(kl.data(), L.mu_q.data(), L.lv_q.data(), L.mu_p.data(), L.lv_p.data(), B, dz, scale, dmu_q.data(),
                dlv_q.data(), dmu_p.data(), dlv_p.data());
    auto loss = [&]() {
        vecd k(B);
        gaussian_kl<double>(k.data(), L.mu_q.data(), L.lv_q.data(), L.mu_p.data(), L.lv_p.data(), B, dz, 0.0, nullptr,
                            nullptr, nullptr, nullptr);
        return (long double)scale * suml(k);
    };
    gradcheck("gaussian_kl: d/dmu_q (B=5, d_z=4, scale 0.37, added to the buffer)", L.mu_q, minus(dmu_q, start), loss, GRAD_TOL);
    gradcheck("gaussian_kl: d/dlv_q", L.lv_q, minus(dlv_q, start), loss, GRAD_TOL);
    gradcheck("gaussian_kl: d/dmu_p", L.mu_p, minus(dmu_p, start), loss, GRAD_TOL);
    gradcheck("gaussian_kl: d/dlv_p", L.lv_p, minus(dlv_p, start), loss, GRAD_TOL);
    // the values without gradients are the same as with them
    vecd kl2(B);
    gaussian_kl<double>(kl2.data(), L.mu_q.data(), L.lv_q.data(), L.mu_p.data(), L.lv_p.data(), B, dz, 1.0, nullptr,
                        nullptr, nullptr, nullptr);
    check(bitwise_equal(kl, kl2), "gaussian_kl: the same values with and without gradients");
}

static void test_posterior_variance_gradient() {
    const int B = 5, dz = 4;
    const size_t n = (size_t)B * dz;
    vecd lv_q = rand_vec(n, -2.0, 1.0), v(B), dlv_q = filled(n, -0.5);
    const double scale = 1.7;
    posterior_variance(v.data(), lv_q.data(), B, dz, scale, dlv_q.data());
    auto loss = [&]() {
        vecd w(B);
        posterior_variance<double>(w.data(), lv_q.data(), B, dz, 0.0, nullptr);
        return (long double)scale * suml(w);
    };
    gradcheck("posterior_variance: d/dlv_q (scale 1.7, added to the buffer)", lv_q, minus(dlv_q, -0.5), loss, GRAD_TOL);
}

// The router marginal KL of the whole batch from its parameters.
static long double router_kl_of(const vecd& mu_p, const vecd& lv_p, int B, int dz) {
    std::vector<double> sums(2 * dz, 0.0);
    marginal_moments(sums.data(), mu_p.data(), lv_p.data(), B, dz);
    return router_marginal_kl(sums.data(), B, dz);
}

static void test_router_marginal_kl_gradients() {
    const int B = 7, dz = 4, B1 = 3;            // two micro-batches: 3 + 4 examples
    const size_t n = (size_t)B * dz, n1 = (size_t)B1 * dz;
    vecd mu_p = rand_vec(n, -1.5, 1.5), lv_p = rand_vec(n, -1.5, 1.5);
    const double scale = 0.7, start = 0.125;
    // moments accumulated micro-batch by micro-batch
    std::vector<double> sums(2 * dz, 0.0), whole(2 * dz, 0.0);
    marginal_moments(sums.data(), mu_p.data(), lv_p.data(), B1, dz);
    marginal_moments(sums.data(), mu_p.data() + n1, lv_p.data() + n1, B - B1, dz);
    marginal_moments(whole.data(), mu_p.data(), lv_p.data(), B, dz);
    check(max_abs_diff(sums, whole) <= 1e-14 * max_abs(whole), "router marginal KL: moment sums over two micro-batches = over the batch",
          "max diff %.3g", max_abs_diff(sums, whole));
    vecd dmu = filled(n, start), dlv = filled(n, start);
    router_marginal_kl_backward(dmu.data(), dlv.data(), sums.data(), (double)B, mu_p.data(), lv_p.data(), B1, dz, scale);
    router_marginal_kl_backward(dmu.data() + n1, dlv.data() + n1, sums.data(), (double)B, mu_p.data() + n1,
                                lv_p.data() + n1, B - B1, dz, scale);
    auto loss = [&]() { return (long double)scale * router_kl_of(mu_p, lv_p, B, dz); };
    gradcheck("router marginal KL: d/dmu_p of every example (two micro-batches, scale 0.7)", mu_p, minus(dmu, start), loss, GRAD_TOL);
    gradcheck("router marginal KL: d/dlv_p of every example", lv_p, minus(dlv, start), loss, GRAD_TOL);
    // the same gradient from one backward call over the whole batch
    vecd dmu_w = filled(n, start), dlv_w = filled(n, start);
    router_marginal_kl_backward(dmu_w.data(), dlv_w.data(), whole.data(), (double)B, mu_p.data(), lv_p.data(), B, dz, scale);
    const double e = fmax(max_abs_diff(dmu, dmu_w), max_abs_diff(dlv, dlv_w));
    check(e <= 1e-15, "router marginal KL: the micro-batched gradient equals the whole-batch gradient", "max diff %.3g", e);
}

static void test_reparameterize_gradients() {
    const int B = 5, dz = 4;
    const size_t n = (size_t)B * dz;
    Latents L = random_latents(B, dz);
    const vecd g = rand_vec(n, -1, 1);           // dz: the gradient of sum g . z
    vecd dmu = filled(n, 0.5), dlv = filled(n, 0.5);
    reparameterize_backward(dmu.data(), dlv.data(), g.data(), L.lv_q.data(), L.eps.data(), B, dz);
    auto loss = [&]() {
        vecd z(n);
        reparameterize(z.data(), L.mu_q.data(), L.lv_q.data(), L.eps.data(), B, dz);
        return dotl(g, z);
    };
    gradcheck("reparameterize_backward: d/dmu (added to the buffer)", L.mu_q, minus(dmu, 0.5), loss, GRAD_TOL);
    gradcheck("reparameterize_backward: d/dlv", L.lv_q, minus(dlv, 0.5), loss, GRAD_TOL);
    // the value: z = mu + exp(lv / 2) eps
    vecd z(n);
    reparameterize(z.data(), L.mu_q.data(), L.lv_q.data(), L.eps.data(), B, dz);
    double e = 0;
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs(z[i] - (L.mu_q[i] + sqrt(exp(L.lv_q[i])) * L.eps[i])));
    check(e <= 1e-15, "reparameterize: z = mu + sqrt(exp(lv)) eps", "max diff %.3g", e);
}

// J = sum_i g_i z_i + a mean_b KL_b + bw mean_b V_b + c K, every term's gradient added into the same buffers (the
// trainer's pattern), K's moments and backward split over two micro-batches.
static void test_combined_objective() {
    const int B = 6, dz = 4, B1 = 2;
    const size_t n = (size_t)B * dz, n1 = (size_t)B1 * dz;
    Latents L = random_latents(B, dz);
    const vecd g = rand_vec(n, -1, 1);
    const double a = 0.3, bw = 0.05, c = 0.8;
    auto J = [&]() {
        vecd z(n), kl(B), v(B);
        reparameterize(z.data(), L.mu_q.data(), L.lv_q.data(), L.eps.data(), B, dz);
        gaussian_kl<double>(kl.data(), L.mu_q.data(), L.lv_q.data(), L.mu_p.data(), L.lv_p.data(), B, dz, 0.0, nullptr,
                            nullptr, nullptr, nullptr);
        posterior_variance<double>(v.data(), L.lv_q.data(), B, dz, 0.0, nullptr);
        return dotl(g, z) + (long double)a * suml(kl) / B + (long double)bw * suml(v) / B +
               (long double)c * router_kl_of(L.mu_p, L.lv_p, B, dz);
    };
    vecd dmu_q(n, 0.0), dlv_q(n, 0.0), dmu_p(n, 0.0), dlv_p(n, 0.0), kl(B), v(B);
    reparameterize_backward(dmu_q.data(), dlv_q.data(), g.data(), L.lv_q.data(), L.eps.data(), B, dz);
    gaussian_kl(kl.data(), L.mu_q.data(), L.lv_q.data(), L.mu_p.data(), L.lv_p.data(), B, dz, a / B, dmu_q.data(),
                dlv_q.data(), dmu_p.data(), dlv_p.data());
    posterior_variance(v.data(), L.lv_q.data(), B, dz, bw / B, dlv_q.data());
    std::vector<double> sums(2 * dz, 0.0);
    marginal_moments(sums.data(), L.mu_p.data(), L.lv_p.data(), B1, dz);
    marginal_moments(sums.data(), L.mu_p.data() + n1, L.lv_p.data() + n1, B - B1, dz);
    router_marginal_kl_backward(dmu_p.data(), dlv_p.data(), sums.data(), (double)B, L.mu_p.data(), L.lv_p.data(), B1, dz, c);
    router_marginal_kl_backward(dmu_p.data() + n1, dlv_p.data() + n1, sums.data(), (double)B, L.mu_p.data() + n1,
                                L.lv_p.data() + n1, B - B1, dz, c);
    gradcheck("combined J = g.z + 0.3 KL_mean + 0.05 V_mean + 0.8 K: d/dmu_q", L.mu_q, dmu_q, J, GRAD_TOL);
    gradcheck("combined J: d/dlv_q", L.lv_q, dlv_q, J, GRAD_TOL);
    gradcheck("combined J: d/dmu_p", L.mu_p, dmu_p, J, GRAD_TOL);
    gradcheck("combined J: d/dlv_p", L.lv_p, dlv_p, J, GRAD_TOL);
}

// =========================================================================================================
// values
// =========================================================================================================

// KL(N(mq, vq) || N(mp, vp)) in 1-D by composite Simpson integration of q log(q / p) over mq +- 14 sd_q.
static double kl_1d_numeric(double mq, double vq, double mp, double vp) {
    const double sq = sqrt(vq), lo = mq - 14 * sq, hi = mq + 14 * sq;
    const int steps = 20000;                       // even
    const double h = (hi - lo) / steps;
    auto f = [&](double x) {
        const double lq = -0.5 * log(2 * M_PI * vq) - (x - mq) * (x - mq) / (2 * vq);
        const double lp = -0.5 * log(2 * M_PI * vp) - (x - mp) * (x - mp) / (2 * vp);
        return exp(lq) * (lq - lp);
    };
    double s = f(lo) + f(hi);
    for (int i = 1; i < steps; i++) s += (i % 2 ? 4 : 2) * f(lo + i * h);
    return s * h / 3;
}

static void test_gaussian_kl_values() {
    const int B = 3, dz = 4;
    const size_t n = (size_t)B * dz;
    // KL(q || q) = 0
    {
        const vecd mu = rand_vec(n, -2, 2), lv = rand_vec(n, -2, 2);
        vecd kl(B);
        gaussian_kl<double>(kl.data(), mu.data(), lv.data(), mu.data(), lv.data(), B, dz, 1.0, nullptr, nullptr, nullptr, nullptr);
        check(max_abs(kl) <= 1e-15, "gaussian_kl: KL(q || q) = 0", "max |KL| %.3g", max_abs(kl));
    }
    // KL(N(mu, I) || N(0, I)) = |mu|^2 / 2
    {
        const vecd mu = rand_vec(n, -2, 2), zero(n, 0.0);
        vecd kl(B);
        gaussian_kl<double>(kl.data(), mu.data(), zero.data(), zero.data(), zero.data(), B, dz, 1.0, nullptr, nullptr,
                            nullptr, nullptr);
        double e = 0;
        for (int b = 0; b < B; b++) {
            double sq = 0;
            for (int d = 0; d < dz; d++) sq += mu[b * dz + d] * mu[b * dz + d];
            e = fmax(e, fabs(kl[b] - sq / 2));
        }
        check(e <= 1e-14, "gaussian_kl: KL(N(mu, I) || N(0, I)) = |mu|^2 / 2", "max diff %.3g", e);
    }
    // 1-D pairs against numerical integration; then the same pairs as the dimensions of one example (KL adds up)
    {
        const double pairs[][4] = {{1.0, 4.0, -1.0, 9.0}, {0.0, 0.25, 0.5, 1.0}, {-2.0, 1.0, 1.0, 0.5}, {0.3, 2.0, 0.3, 0.1}};
        const int P = 4;
        vecd mq(P), lq(P), mp(P), lp(P), kl1(P), numeric(P);
        double worst = 0, total = 0;
        for (int i = 0; i < P; i++) {
            mq[i] = pairs[i][0], lq[i] = log(pairs[i][1]), mp[i] = pairs[i][2], lp[i] = log(pairs[i][3]);
            numeric[i] = kl_1d_numeric(pairs[i][0], pairs[i][1], pairs[i][2], pairs[i][3]);
            total += numeric[i];
        }
        gaussian_kl<double>(kl1.data(), mq.data(), lq.data(), mp.data(), lp.data(), P, 1, 1.0, nullptr, nullptr, nullptr, nullptr);
        for (int i = 0; i < P; i++) worst = fmax(worst, fabs(kl1[i] - numeric[i]) / numeric[i]);
        check(worst <= 1e-8, "gaussian_kl: 1-D values against numerical integration of q log(q/p)",
              "max rel err %.3g (e.g. KL(N(1,4)||N(-1,9)) = %.10f vs %.10f)", worst, kl1[0], numeric[0]);
        vecd kl4(1);
        gaussian_kl<double>(kl4.data(), mq.data(), lq.data(), mp.data(), lp.data(), 1, P, 1.0, nullptr, nullptr, nullptr, nullptr);
        check(fabs(kl4[0] - total) <= 1e-8 * total, "gaussian_kl: a 4-dimensional example = the sum of its dimensions' KLs",
              "%.12f vs %.12f", kl4[0], total);
    }
}

static void test_posterior_variance_values() {
    const int B = 4, dz = 3;
    const vecd lv = rand_vec((size_t)B * dz, -3, 2);
    vecd v(B);
    posterior_variance<double>(v.data(), lv.data(), B, dz, 1.0, nullptr);
    double e = 0;
    for (int b = 0; b < B; b++) {
        double s = 0;
        for (int d = 0; d < dz; d++) s += exp(lv[b * dz + d]);
        e = fmax(e, fabs(v[b] - s) / s);
    }
    check(e <= 1e-15, "posterior_variance: V_b = sum_d exp(lv_q)", "max rel err %.3g", e);
}

// K by the direct per-dimension formula: m = mean mu_p, v = mean exp(lv_p) + mean (mu_p - m)^2 (two passes),
// K = sum_d 0.5 (v + m^2 - 1 - log v).
static double router_kl_direct(const vecd& mu, const vecd& lv, int B, int dz) {
    double K = 0;
    for (int d = 0; d < dz; d++) {
        double m = 0, v = 0;
        for (int b = 0; b < B; b++) m += mu[b * dz + d] / B;
        for (int b = 0; b < B; b++) v += (exp(lv[b * dz + d]) + (mu[b * dz + d] - m) * (mu[b * dz + d] - m)) / B;
        K += 0.5 * (v + m * m - 1 - log(v));
    }
    return K;
}

static void test_router_marginal_kl_values() {
    // two examples per dimension, mu = +a and -a with variance 1 - a^2: the mixture's m = 0, v = 1, so K = 0 and
    // (a minimum) the gradient is 0
    {
        const int B = 2, dz = 4;
        const double a[dz] = {0.0, 0.3, 0.6, 0.9};
        vecd mu(B * dz), lv(B * dz);
        for (int d = 0; d < dz; d++) {
            mu[d] = a[d], mu[dz + d] = -a[d];
            lv[d] = lv[dz + d] = log(1 - a[d] * a[d]);
        }
        std::vector<double> sums(2 * dz, 0.0);
        marginal_moments(sums.data(), mu.data(), lv.data(), B, dz);
        const double K = router_marginal_kl(sums.data(), B, dz);
        check(fabs(K) <= 1e-15, "router marginal KL: 0 when the moment-matched Gaussian is N(0, I) (mu = +-a, var 1 - a^2)",
              "K = %.3g", K);
        vecd dmu(B * dz, 0.0), dlv(B * dz, 0.0);
        router_marginal_kl_backward(dmu.data(), dlv.data(), sums.data(), (double)B, mu.data(), lv.data(), B, dz, 1.0);
        const double gmax = fmax(max_abs(dmu), max_abs(dlv));
        check(gmax <= 1e-15, "router marginal KL: zero gradient there", "max |grad| %.3g", gmax);
    }
    // random batches: K > 0 and equal to the direct formula; a batch of N(0, I) routers gives 0
    {
        const int B = 9, dz = 5;
        bool positive = true;
        double worst = 0;
        for (int trial = 0; trial < 5; trial++) {
            const vecd mu = rand_vec((size_t)B * dz, -1.5, 1.5), lv = rand_vec((size_t)B * dz, -1.5, 1.5);
            const double K = (double)router_kl_of(mu, lv, B, dz), D = router_kl_direct(mu, lv, B, dz);
            positive = positive && K > 1e-3;
            worst = fmax(worst, fabs(K - D) / D);
        }
        check(positive, "router marginal KL: positive on random batches");
        check(worst <= 1e-12, "router marginal KL: equals sum_d 0.5 (v + m^2 - 1 - log v) with m, v computed directly",
              "max rel err %.3g", worst);
        const vecd zero((size_t)B * dz, 0.0);
        const double K0 = (double)router_kl_of(zero, zero, B, dz);
        check(fabs(K0) <= 1e-15, "router marginal KL: 0 for a batch of N(0, I) routers", "K = %.3g", K0);
        // one dimension off: shifted mean m = 0.5 only -> K = m^2 / 2 = 0.125 (v = 1)
        vecd shifted = zero;
        for (int b = 0; b < B; b++) shifted[b * dz + 2] = 0.5;
        const double K1 = (double)router_kl_of(shifted, zero, B, dz);
        check(fabs(K1 - 0.125) <= 1e-14, "router marginal KL: N(0.5 e_2, I) routers give 0.125", "K = %.15g", K1);
    }
}

// =========================================================================================================
// float against double
// =========================================================================================================

static double rel_diff(const vecf& a, const vecd& b) {
    double m = 0, scale = 0;
    for (size_t i = 0; i < b.size(); i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < b.size(); i++) {
        const double d = fabs((double)a[i] - b[i]) / (fabs(b[i]) + 1e-3 * scale + 1e-30);
        if (!(d <= m)) m = isnan(d) ? INFINITY : d;
    }
    return m;
}

static void test_float_matches_double() {
    const int B = 6, dz = 4, B1 = 2;
    const size_t n = (size_t)B * dz, n1 = (size_t)B1 * dz;
    const Latents L = random_latents(B, dz);
    const vecd g = rand_vec(n, -1, 1);
    const double a = 0.3, bw = 0.05, c = 0.8;
    double worst = 0;
    const char* worst_what = "";
    auto note = [&](double e, const char* what) { if (!(e <= worst)) { worst = isnan(e) ? INFINITY : e; worst_what = what; } };
    // double
    vecd z(n), kl(B), v(B), dmu_q(n, 0.0), dlv_q(n, 0.0), dmu_p(n, 0.0), dlv_p(n, 0.0);
    std::vector<double> sums(2 * dz, 0.0);
    reparameterize(z.data(), L.mu_q.data(), L.lv_q.data(), L.eps.data(), B, dz);
    reparameterize_backward(dmu_q.data(), dlv_q.data(), g.data(), L.lv_q.data(), L.eps.data(), B, dz);
    gaussian_kl(kl.data(), L.mu_q.data(), L.lv_q.data(), L.mu_p.data(), L.lv_p.data(), B, dz, a / B, dmu_q.data(),
                dlv_q.data(), dmu_p.data(), dlv_p.data());
    posterior_variance(v.data(), L.lv_q.data(), B, dz, bw / B, dlv_q.data());
    marginal_moments(sums.data(), L.mu_p.data(), L.lv_p.data(), B, dz);
    router_marginal_kl_backward(dmu_p.data(), dlv_p.data(), sums.data(), (double)B, L.mu_p.data(), L.lv_p.data(), B, dz, c);
    const double K = router_marginal_kl(sums.data(), B, dz);
    // float (moments over two micro-batches)
    const vecf mq = cast_vec<float>(L.mu_q), lq = cast_vec<float>(L.lv_q), mp = cast_vec<float>(L.mu_p),
               lp = cast_vec<float>(L.lv_p), ef = cast_vec<float>(L.eps), gf = cast_vec<float>(g);
    vecf zf(n), klf(B), vf(B), dmu_qf(n, 0.0f), dlv_qf(n, 0.0f), dmu_pf(n, 0.0f), dlv_pf(n, 0.0f);
    std::vector<double> sums_f(2 * dz, 0.0);
    reparameterize(zf.data(), mq.data(), lq.data(), ef.data(), B, dz);
    reparameterize_backward(dmu_qf.data(), dlv_qf.data(), gf.data(), lq.data(), ef.data(), B, dz);
    gaussian_kl(klf.data(), mq.data(), lq.data(), mp.data(), lp.data(), B, dz, (float)(a / B), dmu_qf.data(),
                dlv_qf.data(), dmu_pf.data(), dlv_pf.data());
    posterior_variance(vf.data(), lq.data(), B, dz, (float)(bw / B), dlv_qf.data());
    marginal_moments(sums_f.data(), mp.data(), lp.data(), B1, dz);
    marginal_moments(sums_f.data(), mp.data() + n1, lp.data() + n1, B - B1, dz);
    router_marginal_kl_backward(dmu_pf.data(), dlv_pf.data(), sums_f.data(), (double)B, mp.data(), lp.data(), B1, dz, (float)c);
    router_marginal_kl_backward(dmu_pf.data() + n1, dlv_pf.data() + n1, sums_f.data(), (double)B, mp.data() + n1,
                                lp.data() + n1, B - B1, dz, (float)c);
    const double Kf = router_marginal_kl(sums_f.data(), B, dz);
    note(rel_diff(zf, z), "z");
    note(rel_diff(klf, kl), "KL");
    note(rel_diff(vf, v), "V");
    note(fabs(Kf - K) / K, "K");
    note(rel_diff(dmu_qf, dmu_q), "dmu_q");
    note(rel_diff(dlv_qf, dlv_q), "dlv_q");
    note(rel_diff(dmu_pf, dmu_p), "dmu_p");
    note(rel_diff(dlv_pf, dlv_p), "dlv_p");
    check(worst <= 1e-5, "float instantiations agree with double (z, KL, V, K and every gradient) to 1e-5",
          "max rel diff %.3g in %s", worst, worst_what);
}

// =========================================================================================================
// probe_accuracy
// =========================================================================================================

// n points of d features in K clusters: point i has label i % K and features center_k + noise (center_k: `sep` in
// coordinate k).
static void clusters(int n, int d, int K, double sep, double noise, vecd* x, std::vector<int>* labels) {
    x->assign((size_t)n * d, 0.0);
    labels->assign(n, 0);
    for (int i = 0; i < n; i++) {
        const int k = i % K;
        (*labels)[i] = k;
        for (int j = 0; j < d; j++) (*x)[(size_t)i * d + j] = (j == k ? sep : 0.0) + noise * rng_normal(&g_rng);
    }
}
static std::vector<int> split_even_odd(int n) {
    std::vector<int> train(n);
    for (int i = 0; i < n; i++) train[i] = i % 2 == 0;
    return train;
}

static void test_probe_accuracy() {
    const int n = 60, d = 8, K = 3;
    vecd x;
    std::vector<int> labels;
    clusters(n, d, K, 4.0, 0.5, &x, &labels);
    std::vector<int> train(n);                   // a fixed split: 2 of every 3 points train (every class on both sides)
    for (int i = 0; i < n; i++) train[i] = (i / K) % 3 != 2;
    const double acc = probe_accuracy(x, labels, train, n, d, K);
    check(acc == 1.0, "probe_accuracy: separable 3-class clusters (d=8, 60 points) -> 1.0", "accuracy %.4f", acc);
    // a constant feature: no NaN from the standardisation, still 1.0; a feature scaled x1000: still 1.0
    {
        vecd xc = x, xs = x;
        for (int i = 0; i < n; i++) xc[(size_t)i * d + 5] = 3.25, xs[(size_t)i * d + 1] *= 1000;
        const double ac = probe_accuracy(xc, labels, train, n, d, K), as = probe_accuracy(xs, labels, train, n, d, K);
        check(ac == 1.0, "probe_accuracy: a constant feature gives no NaN (still 1.0)", "accuracy %.4f", ac);
        check(as == 1.0, "probe_accuracy: a feature scaled x1000 (standardised) -> still 1.0", "accuracy %.4f", as);
        // every feature constant: only the biases learn, so every test point gets the training majority class (2
        // here: 10 of the 12 training labels); half the test labels are 2
        const int nc = 24;
        vecd all_const((size_t)nc * d, 1.0);
        std::vector<int> lc(nc);
        for (int i = 0; i < nc; i++) lc[i] = i % 2 == 0 ? (i < 4 ? 0 : 2) : (i % 4 == 1 ? 2 : 1);
        const double a0 = probe_accuracy(all_const, lc, split_even_odd(nc), nc, d, K);
        check(a0 == 0.5, "probe_accuracy: every feature constant -> the training majority class (accuracy 0.5, no NaN)",
              "accuracy %g", a0);
    }
    // labels independent of the features -> near chance 1/3 (300 test points: sd ~0.027)
    {
        const int nr = 600;
        vecd xr = normal_vec((size_t)nr * d);
        std::vector<int> lr(nr);
        for (int& l : lr) l = (int)(rng_uniform(&g_rng) * K);
        const double ar = probe_accuracy(xr, lr, split_even_odd(nr), nr, d, K);
        check(ar >= 0.22 && ar <= 0.45, "probe_accuracy: random labels -> near chance (1/3)", "accuracy %.4f", ar);
        // deterministic: the same calls again (also a short fit, where the path matters)
        const double ar2 = probe_accuracy(xr, lr, split_even_odd(nr), nr, d, K);
        const double s1 = probe_accuracy(xr, lr, split_even_odd(nr), nr, d, K, 3), s2 = probe_accuracy(xr, lr, split_even_odd(nr), nr, d, K, 3);
        check(ar2 == ar && s1 == s2, "probe_accuracy: deterministic (the same calls twice)", "%.6f %.6f, 3 steps: %.6f %.6f", ar, ar2, s1, s2);
    }
    // a label from one feature's sign among noise features: learned well above chance
    {
        const int nr = 200;
        vecd xr = normal_vec((size_t)nr * d);
        std::vector<int> lr(nr);
        for (int i = 0; i < nr; i++) lr[i] = xr[(size_t)i * d + 6] > 0;
        const double a1 = probe_accuracy(xr, lr, split_even_odd(nr), nr, d, 2);
        check(a1 >= 0.9, "probe_accuracy: label = sign of one feature -> >= 0.9", "accuracy %.4f", a1);
    }
    // an empty side -> -1
    {
        const std::vector<int> all_train(n, 1), none_train(n, 0);
        const double a_tr = probe_accuracy(x, labels, all_train, n, d, K), a_te = probe_accuracy(x, labels, none_train, n, d, K);
        const double a_n0 = probe_accuracy({}, {}, {}, 0, d, K);
        check(a_tr == -1.0 && a_te == -1.0 && a_n0 == -1.0, "probe_accuracy: empty test side, empty train side, n=0 -> -1",
              "%g %g %g", a_tr, a_te, a_n0);
    }
}

// =========================================================================================================
// kmeans
// =========================================================================================================

// the centroids c as a Lloyd fixed point: every point's nearest centroid (strictly: ties make it undecided and are
// reported in *tie) has the mean of its points at itself
static double lloyd_residual(const vecd& x, int n, int d, int K, const vecd& c, bool* tie) {
    vecd sum((size_t)K * d, 0.0);
    std::vector<int> count(K, 0);
    *tie = false;
    for (int i = 0; i < n; i++) {
        int best = 0;
        double bd = INFINITY, second = INFINITY;
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int j = 0; j < d; j++) s += pow(x[(size_t)i * d + j] - c[(size_t)k * d + j], 2);
            if (s < bd) second = bd, bd = s, best = k;
            else if (s < second) second = s;
        }
        if (second - bd < 1e-9) *tie = true;
        count[best]++;
        for (int j = 0; j < d; j++) sum[(size_t)best * d + j] += x[(size_t)i * d + j];
    }
    double r = 0;
    for (int k = 0; k < K; k++)
        if (count[k]) for (int j = 0; j < d; j++) r = fmax(r, fabs(sum[(size_t)k * d + j] / count[k] - c[(size_t)k * d + j]));
    return r;
}

static void test_kmeans() {
    // three blobs in d=2, far apart: the centroids are the blobs' means, in some order
    {
        const int per = 60, K = 3, d = 2, n = per * K;
        const double means[K][d] = {{0.0, 0.0}, {10.0, 0.0}, {0.0, 10.0}};
        vecd x((size_t)n * d), sample((size_t)K * d, 0.0);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) {
                x[(size_t)i * d + j] = means[i % K][j] + 0.2 * rng_normal(&g_rng);
                sample[(size_t)(i % K) * d + j] += x[(size_t)i * d + j] / per;
            }
        const vecd c = kmeans(x, n, d, K);
        double worst_true = 0, worst_sample = 0;
        std::vector<int> used(K, 0);
        bool matched = true;
        for (int t = 0; t < K; t++) {            // each true blob: its nearest centroid
            int best = 0;
            double bd = INFINITY;
            for (int k = 0; k < K; k++) {
                const double dd = hypot(c[(size_t)k * d] - means[t][0], c[(size_t)k * d + 1] - means[t][1]);
                if (dd < bd) bd = dd, best = k;
            }
            matched = matched && !used[best];
            used[best] = 1;
            for (int j = 0; j < d; j++) {
                worst_true = fmax(worst_true, fabs(c[(size_t)best * d + j] - means[t][j]));
                worst_sample = fmax(worst_sample, fabs(c[(size_t)best * d + j] - sample[(size_t)t * d + j]));
            }
        }
        check(matched && worst_true <= 0.1, "kmeans: three separated blobs -> centroids within 0.1 of the true means (up to order)",
              "one-to-one %d, max coordinate error %.3g", (int)matched, worst_true);
        check(matched && worst_sample <= 1e-12, "kmeans: ... and equal to the blobs' sample means", "max diff %.3g", worst_sample);
        check(bitwise_equal(kmeans(x, n, d, K), c), "kmeans: deterministic (the same call twice)");
    }
    // a hand example in 1-D, K=3: x = 0 2 8 13 13 13 14 19. Initialisation 8 (nearest the mean 10.25), 19, 0;
    // Lloyd: {8 13 13 13} {14 19} {0 2} -> 11.75, 16.5, 1; then 14 is nearer 11.75 (2.25) than 16.5 (2.5) and moves:
    // {8 13 13 13 14} {19} {0 2} -> 12.2, 19, 1, a fixed point.
    {
        const vecd x = {0, 2, 8, 13, 13, 13, 14, 19};
        const vecd c = kmeans(x, 8, 1, 3);
        vecd sorted = c;
        std::sort(sorted.begin(), sorted.end());
        const vecd want = {1.0, 12.2, 19.0};
        bool tie = false;
        const double r = lloyd_residual(x, 8, 1, 3, c, &tie);
        check(max_abs_diff(sorted, want) <= 1e-12 && r <= 1e-12,
              "kmeans: 1-D hand example (0 2 8 13 13 13 14 19, K=3) -> 1, 12.2, 19 (a point moves back to cluster 0)",
              "centroids %g %g %g (Lloyd residual %.3g: not a fixed point)", c[0], c[1], c[2], r);
    }
    // random small problems: every result is a Lloyd fixed point (problems with near-ties left out)
    {
        int tested = 0, bad = 0, first_bad = -1;
        double worst = 0;
        for (int trial = 0; trial < 300; trial++) {
            const int d = 1 + trial % 3, K = 2 + trial % 4, n = 6 + trial % 11;
            const vecd x = rand_vec((size_t)n * d, 0, 20);
            const vecd c = kmeans(x, n, d, K);
            bool tie = false;
            const double r = lloyd_residual(x, n, d, K, c, &tie);
            if (tie) continue;
            tested++;
            if (r > 1e-9) { bad++; if (first_bad < 0) first_bad = trial; }
            worst = fmax(worst, r);
        }
        check(bad == 0 && tested >= 200, "kmeans: a Lloyd fixed point on random small problems",
              "%d of %d not fixed points (first: trial %d), max residual %.3g", bad, tested, first_bad, worst);
    }
    // K above the number of distinct points: no crash, every centroid one of the points
    {
        const vecd x = {1, 1, 5, 5, 1, 5};                   // n=3 points of d=2: (1,1), (5,5), (1,5); K=5 > n
        const vecd c = kmeans(x, 3, 2, 5);
        bool ok = c.size() == 10 && all_finite(c.data(), c.size());
        for (int k = 0; ok && k < 5; k++) {
            bool is_point = false;
            for (int i = 0; i < 3; i++) is_point = is_point || (c[2 * k] == x[2 * i] && c[2 * k + 1] == x[2 * i + 1]);
            ok = is_point;
        }
        const vecd dup = {2, 2, 2, 7, 7};                     // 5 points in 1-D, 2 distinct values, K=4
        const vecd c2 = kmeans(dup, 5, 1, 4);
        bool ok2 = c2.size() == 4;
        for (double v : c2) ok2 = ok2 && (v == 2 || v == 7);
        check(ok && ok2, "kmeans: K above the number of (distinct) points -> finite centroids, each one of the points");
    }
    // n = 0 -> zeros
    {
        const vecd c = kmeans({}, 0, 3, 4);
        check(c.size() == 12 && all_equal(c.data(), c.size(), 0.0), "kmeans: n=0 -> K x d zeros", "size %zu", c.size());
    }
}

// =========================================================================================================
// alignment_one_to_one
// =========================================================================================================

typedef std::vector<std::vector<int>> Counts;

// the best injective matching of rows into columns by recursion (a latent may stay unmatched when K > S)
static double best_matching(const Counts& C, size_t k, std::vector<int>& used) {
    if (k == C.size()) return 0;
    double best = best_matching(C, k + 1, used);         // row k unmatched
    for (size_t s = 0; s < C[k].size(); s++) {
        if (used[s]) continue;
        used[s] = 1;
        best = std::max(best, C[k][s] + best_matching(C, k + 1, used));
        used[s] = 0;
    }
    return best;
}
static double brute_alignment(const Counts& C) {
    double total = 0;
    for (const auto& r : C) for (int v : r) total += v;
    if (total == 0) return 0;
    std::vector<int> used(C.empty() ? 0 : C[0].size(), 0);
    return best_matching(C, 0, used) / total;
}

static void test_alignment() {
    auto near = [](double a, double b) { return fabs(a - b) <= 1e-12; };
    const Counts identity = {{5, 0, 0}, {0, 7, 0}, {0, 0, 3}};
    const Counts permuted = {{0, 0, 4}, {6, 0, 0}, {0, 2, 0}};
    const Counts uniform = {{2, 2, 2}, {2, 2, 2}, {2, 2, 2}};
    const Counts zeros = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};
    double a;
    a = alignment_one_to_one(identity);
    check(near(a, 1.0), "alignment_one_to_one: diagonal counts -> 1", "%g", a);
    a = alignment_one_to_one(permuted);
    check(near(a, 1.0), "alignment_one_to_one: a permuted diagonal -> 1", "%g", a);
    a = alignment_one_to_one(uniform);
    check(near(a, 1.0 / 3), "alignment_one_to_one: uniform counts (K=3) -> 1/3", "%g", a);
    a = alignment_one_to_one(zeros);
    check(a == 0.0, "alignment_one_to_one: all-zero counts -> 0", "%g", a);
    a = alignment_one_to_one({});
    check(a == 0.0, "alignment_one_to_one: no latents -> 0", "%g", a);
    // greedy takes the 10 and ends with 10 + 0 + 1 = 11; the best matching is 9 + 9 + 1 = 19 of 29
    const Counts hand = {{10, 9, 0}, {9, 0, 0}, {0, 0, 1}};
    a = alignment_one_to_one(hand);
    check(near(a, 19.0 / 29), "alignment_one_to_one: 3x3 hand example (greedy would give 11/29) -> 19/29", "%g", a);
    // K=4: a 4-cycle (latent k -> strategy k+1) over a weak diagonal: 28 of 32
    const Counts cycle = {{1, 7, 0, 0}, {0, 1, 7, 0}, {0, 0, 1, 7}, {7, 0, 0, 1}};
    a = alignment_one_to_one(cycle);
    check(near(a, 28.0 / 32), "alignment_one_to_one: K=4, a 4-cycle -> 28/32", "%g", a);
    // rectangular: 2 latents over 3 strategies; 3 latents over 2 strategies (one latent unmatched)
    const Counts wide = {{1, 0, 5}, {0, 4, 3}}, tall = {{3, 1}, {4, 0}, {0, 2}};
    a = alignment_one_to_one(wide);
    check(near(a, 9.0 / 13), "alignment_one_to_one: 2 latents x 3 strategies -> 9/13", "%g", a);
    a = alignment_one_to_one(tall);
    check(near(a, 6.0 / 10), "alignment_one_to_one: 3 latents x 2 strategies -> 6/10", "%g", a);
    // random count tables (K, S in 1..5) against the recursive brute force
    int bad = 0;
    double got_bad = 0, want_bad = 0;
    for (int trial = 0; trial < 60; trial++) {
        const int K = 1 + trial % 5, S = 1 + (trial / 5) % 5;
        Counts C(K, std::vector<int>(S));
        for (auto& r : C) for (int& v : r) v = (int)(rng_uniform(&g_rng) * 10);
        const double got = alignment_one_to_one(C), want = brute_alignment(C);
        if (!near(got, want)) { if (!bad) got_bad = got, want_bad = want; bad++; }
    }
    check(bad == 0, "alignment_one_to_one: 60 random tables (K, S <= 5) = recursive brute force",
          "%d differ (first %g vs %g)", bad, got_bad, want_bad);
}

// majority_accuracy: the test rows' share of the training rows' most common label.
static void test_majority() {
    const std::vector<int> labels = {0, 1, 1, 2, 1, 0, 1, 2}, train = {1, 0, 1, 0, 1, 0, 1, 0};
    // training labels 0, 1, 1, 1: the majority is 1; test labels 1, 2, 0, 2: one of four
    const double a = majority_accuracy(labels, train, 3);
    check(a == 0.25, "majority_accuracy: the training majority's share of the test rows", "got %g, want 0.25", a);
    check(majority_accuracy(labels, std::vector<int>(8, 1), 3) == -1.0 && majority_accuracy(labels, std::vector<int>(8, 0), 3) == -1.0,
          "majority_accuracy: -1 when a side is empty", "");
}

int main() {
    test_seed(4004);
    test_gaussian_kl_gradients();
    test_posterior_variance_gradient();
    test_router_marginal_kl_gradients();
    test_reparameterize_gradients();
    test_combined_objective();
    test_gaussian_kl_values();
    test_posterior_variance_values();
    test_router_marginal_kl_values();
    test_float_matches_double();
    test_probe_accuracy();
    test_kmeans();
    test_alignment();
    test_majority();
    return test_summary();
}
