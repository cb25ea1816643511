// Tests of the JEPA's relational ops and context aggregators, on the double CPU references:
//
//   make build/test_relational && ./build/test_relational
//
//  kernels/object_attention.cuh   forward against a direct computation written here (the reference's recipe: the
//                                 allowed set (adj + I) * m m^T + I (1 - m), logits masked with -inf, softmax,
//                                 masked weights zeroed), padded slots attending only to themselves, a grid whose
//                                 valid objects have no neighbours, N = 1; backward against central differences
//                                 with and without dropout; the dropout keep fraction and scale.
//  kernels/relational_loss.cuh    forward against the reference's MSE formulas; backward (de_ctx and de_tgt, +=)
//                                 against central differences; the self term exactly 0 for identical context
//                                 grids; padded slots contributing nothing; de_tgt = null.
//  kernels/context_attention.cuh  forward against torch's recipe (Linear(L, L) on x^T, softmax over L, weighted
//                                 sum); backward (dx, dW, dbias) against central differences; identical copies
//                                 along L give out = x[:, 0].
//  kernels/gru.cuh                the cell against the formulas; its backward against central differences (with
//                                 and without h, strided gi); a whole 3-step sequence built with the matmul
//                                 reference, against central differences through all steps and against torch's
//                                 documented nn.GRU equations.
#include <math.h>
#include <algorithm>
#include <functional>
#include <string>
#include <vector>
#include "../common/device.h"
#include "../common/rand.h"
#include "../kernels/context_attention.cuh"
#include "../kernels/gru.cuh"
#include "../kernels/matmul.cuh"
#include "../kernels/object_attention.cuh"
#include "../kernels/relational_loss.cuh"
#include "test.h"
#include "op_test.h"

typedef std::vector<uint8_t> vecu8;

static double dot(const vecd& a, const vecd& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}


// =========================================================================================================
// object attention

struct OaCase {
    int G, N, H, HD;
    vecd qkv;
    vecu8 adj, mask;
};

// Random grids: adjacency symmetric with density 0.4 (diagonal random too: it must not matter), a few padded
// slots (never slot 0); grid 1 (if any) has valid objects but no edges, the last grid is fully valid and connected.
static OaCase oa_case(int G, int N, int H, int HD, double qkv_std = 1.0) {
    OaCase c{G, N, H, HD, normal_vec((size_t)G * N * 3 * H * HD, qkv_std), vecu8((size_t)G * N * N), vecu8((size_t)G * N)};
    for (int g = 0; g < G; g++) {
        for (int i = 0; i < N; i++) c.mask[(size_t)g * N + i] = i == 0 || rng_uniform(&g_rng) < 0.7;
        for (int i = 0; i < N; i++)
            for (int j = i; j < N; j++) {
                const uint8_t a = rng_uniform(&g_rng) < 0.4;
                c.adj[((size_t)g * N + i) * N + j] = c.adj[((size_t)g * N + j) * N + i] = a;
            }
        if (g == 1) std::fill(c.adj.begin() + (size_t)g * N * N, c.adj.begin() + (size_t)(g + 1) * N * N, 0);
        if (g == G - 1 && G > 2) {
            std::fill(c.adj.begin() + (size_t)g * N * N, c.adj.begin() + (size_t)(g + 1) * N * N, 1);
            std::fill(c.mask.begin() + (size_t)g * N, c.mask.begin() + (size_t)(g + 1) * N, 1);
        }
    }
    return c;
}

// The reference's recipe, written independently of the op: allowed = clamp((adj + I) * m m^T + I * (1 - m), 1);
// logits masked with -inf, softmax, masked weights set to 0, dropout (keep = hash >= p, scale 1 / (1 - p)).
static void oa_direct(vecd& out, vecd& att, const OaCase& c, float p, uint64_t seed) {
    const int G = c.G, N = c.N, H = c.H, HD = c.HD, D = H * HD;
    out.assign((size_t)G * N * D, 0.0);
    att.assign((size_t)G * H * N * N, 0.0);
    for (int g = 0; g < G; g++) {
        std::vector<double> A((size_t)N * N);
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                const double mi = c.mask[(size_t)g * N + i] ? 1 : 0, mj = c.mask[(size_t)g * N + j] ? 1 : 0;
                double a = ((c.adj[((size_t)g * N + i) * N + j] ? 1.0 : 0.0) + (i == j ? 1.0 : 0.0)) * mi * mj;
                if (i == j) a += 1.0 - mi;
                A[(size_t)i * N + j] = fmin(a, 1.0);
            }
        for (int h = 0; h < H; h++)
            for (int i = 0; i < N; i++) {
                auto q = [&](int n, int part, int d) { return c.qkv[((size_t)g * N + n) * 3 * D + (size_t)part * D + h * HD + d]; };
                std::vector<double> logit(N), w(N);
                double mx = -INFINITY;
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int d = 0; d < HD; d++) s += q(i, 0, d) * q(j, 1, d);
                    logit[j] = A[(size_t)i * N + j] > 0 ? s / sqrt((double)HD) : -INFINITY;
                    mx = fmax(mx, logit[j]);
                }
                double sum = 0;
                for (int j = 0; j < N; j++) sum += (w[j] = exp(logit[j] - mx));
                for (int j = 0; j < N; j++) {
                    w[j] = A[(size_t)i * N + j] > 0 ? w[j] / sum : 0.0;
                    att[(((size_t)g * H + h) * N + i) * N + j] = w[j];
                    if (p > 0) {
                        const bool keep = hash_uniform(seed, (((uint64_t)g * H + h) * N + i) * N + j) >= p;
                        w[j] = keep ? w[j] / (1.0 - p) : 0.0;
                    }
                }
                for (int d = 0; d < HD; d++) {
                    double o = 0;
                    for (int j = 0; j < N; j++) o += w[j] * q(j, 2, d);
                    out[((size_t)g * N + i) * D + h * HD + d] = o;
                }
            }
    }
}

static void oa_ref(vecd& out, vecd& att, const OaCase& c, float p, uint64_t seed) {
    out.assign((size_t)c.G * c.N * c.H * c.HD, NAN);
    att.assign((size_t)c.G * c.H * c.N * c.N, NAN);
    object_attention_forward_ref(out.data(), att.data(), c.qkv.data(), c.adj.data(), c.mask.data(), c.G, c.N, c.H, c.HD, p, seed);
}

static void test_oa_forward(int G, int N, int H, int HD, float p) {
    const std::string tag = fmt("G=%d N=%d H=%d HD=%d p=%g", G, N, H, HD, p);
    const uint64_t seed = 1234 + G;
    const OaCase c = oa_case(G, N, H, HD);
    vecd out, att, out_d, att_d;
    oa_ref(out, att, c, p, seed);
    oa_direct(out_d, att_d, c, p, seed);
    const double e_out = max_abs_diff(out, out_d), e_att = max_abs_diff(att, att_d);
    check(e_out < 1e-12 * fmax(1, max_abs(out_d)) && e_att < 1e-13, ("object_attention forward = direct computation " + tag).c_str(),
          "max |out - direct| %.3g, max |att - direct| %.3g", e_out, e_att);

    // structure of att: rows sum to 1, zero off the allowed set, padded slots and neighbour-less objects one-hot
    const int D = H * HD;
    double worst_sum = 0;
    size_t off_allowed = 0, bad_onehot = 0, bad_copy = 0, n_padded = 0, n_isolated = 0;
    for (int g = 0; g < G; g++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < N; i++) {
                const double* row = &att[(((size_t)g * H + h) * N + i) * N];
                double s = 0;
                bool isolated = true;
                for (int j = 0; j < N; j++) {
                    s += row[j];
                    const bool allowed = i == j || (c.adj[((size_t)g * N + i) * N + j] && c.mask[(size_t)g * N + i] && c.mask[(size_t)g * N + j]);
                    if (!allowed && row[j] != 0) off_allowed++;
                    if (allowed && i != j) isolated = false;
                }
                worst_sum = fmax(worst_sum, fabs(s - 1));
                if (!isolated) continue;
                (c.mask[(size_t)g * N + i] ? n_isolated : n_padded)++;
                for (int j = 0; j < N; j++) bad_onehot += row[j] != (j == i ? 1.0 : 0.0);
                if (p == 0)      // out_i = v_i (head h)
                    for (int d = 0; d < HD; d++)
                        bad_copy += out[((size_t)g * N + i) * D + h * HD + d] != c.qkv[((size_t)g * N + i) * 3 * D + 2 * D + h * HD + d];
            }
    check(worst_sum < 1e-14 && off_allowed == 0, ("object_attention att rows sum to 1, 0 outside adj + I " + tag).c_str(),
          "max |row sum - 1| %.3g, %zu nonzero weights outside the allowed set", worst_sum, off_allowed);
    const bool expect_isolated = G >= 2 || N == 1;
    check(bad_onehot == 0 && bad_copy == 0 && (n_padded + n_isolated > 0) && (!expect_isolated || n_isolated > 0),
          ("object_attention padded slots and objects without neighbours attend only to themselves " + tag).c_str(),
          "%zu padded and %zu isolated rows: %zu weights not one-hot, %zu outputs not equal to v_i", n_padded, n_isolated,
          bad_onehot, bad_copy);
}

static void test_oa_backward(int G, int N, int H, int HD, float p) {
    const std::string name = fmt("object_attention backward vs central differences G=%d N=%d H=%d HD=%d p=%g", G, N, H, HD, p);
    const uint64_t seed = 99;
    OaCase c = oa_case(G, N, H, HD);
    const int D = H * HD;
    const vecd R = normal_vec((size_t)G * N * D);        // loss = sum out * R, so dout = R
    vecd out, att;
    oa_ref(out, att, c, p, seed);
    vecd dqkv(c.qkv.size(), NAN);
    object_attention_backward_ref(dqkv.data(), R.data(), att.data(), c.qkv.data(), c.adj.data(), c.mask.data(), G, N, H, HD, p, seed);
    gradcheck(name, c.qkv, dqkv, [&]() {
        vecd o, a;
        oa_ref(o, a, c, p, seed);
        return dot(o, R);
    });
}

// Dropout: with HD = N and v_j = the unit vector e_j in every head, out_i[h*HD + j] = ad_ij, so out / att reveals
// keep / (1 - p) for every allowed weight: it must be 0 or 1 / (1 - p), kept with frequency 1 - p.
static void test_oa_dropout(float p) {
    const int G = 64, N = 16, H = 4, HD = N, D = H * HD;
    OaCase c = oa_case(G, N, H, HD);
    for (int g = 0; g < G; g++)
        for (int n = 0; n < N; n++)
            for (int h = 0; h < H; h++)
                for (int d = 0; d < HD; d++) c.qkv[((size_t)g * N + n) * 3 * D + 2 * D + h * HD + d] = d == n ? 1.0 : 0.0;
    vecd out, att;
    oa_ref(out, att, c, p, 4242);
    size_t allowed = 0, kept = 0, bad = 0;
    const double scale = 1.0 / (1.0 - p);
    for (int g = 0; g < G; g++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < N; i++)
                for (int j = 0; j < N; j++) {
                    const double a = att[(((size_t)g * H + h) * N + i) * N + j], ad = out[((size_t)g * N + i) * D + h * HD + j];
                    if (a == 0) {
                        bad += ad != 0;
                        continue;
                    }
                    allowed++;
                    const double ratio = ad / a;
                    if (ratio == 0) continue;
                    kept++;
                    bad += fabs(ratio - scale) > 1e-6 * scale;
                }
    const double frac = (double)kept / allowed, sigma = sqrt(p * (1 - p) / allowed);
    check(bad == 0 && fabs(frac - (1 - p)) < 5 * sigma + 1e-12,
          fmt("object_attention dropout p=%g: kept weights scaled by 1/(1-p), keep fraction 1-p", p).c_str(),
          "%zu weights neither 0 nor a/(1-p); kept %zu of %zu = %.4f (expected %.4f +- %.4f)", bad, kept, allowed, frac,
          1 - p, 5 * sigma);
}

static void test_oa_dropout_seed() {
    const OaCase c = oa_case(8, 16, 8, 8);
    vecd o1, a1, o2, a2, o3, a3;
    oa_ref(o1, a1, c, 0.1f, 7);
    oa_ref(o2, a2, c, 0.1f, 7);
    oa_ref(o3, a3, c, 0.1f, 8);
    check(o1 == o2 && a1 == a2 && a1 == a3 && o1 != o3, "object_attention dropout: same seed same output, new seed new mask, att unchanged");
}

// =========================================================================================================
// relational loss

struct RelCase {
    int B, L, N, D;
    vecd e_ctx, e_tgt;
    vecu8 adj_ctx, mask_ctx, adj_tgt, mask_tgt;
};

static void rel_graph(uint8_t* adj, uint8_t* mask, int N) {
    for (int i = 0; i < N; i++) mask[i] = i < 2 || rng_uniform(&g_rng) < 0.7;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) adj[i * N + j] = i != j && rng_uniform(&g_rng) < 0.5;   // not symmetric on purpose
    adj[1] = 1;      // objects 0 and 1 (valid) are adjacent
    adj[N] = 1;
}
static RelCase rel_case(int B, int L, int N, int D) {
    RelCase c{B, L, N, D, normal_vec((size_t)B * L * N * D), normal_vec((size_t)B * N * D), vecu8((size_t)B * L * N * N),
              vecu8((size_t)B * L * N), vecu8((size_t)B * N * N), vecu8((size_t)B * N)};
    for (int g = 0; g < B * L; g++) rel_graph(&c.adj_ctx[(size_t)g * N * N], &c.mask_ctx[(size_t)g * N], N);
    for (int b = 0; b < B; b++) rel_graph(&c.adj_tgt[(size_t)b * N * N], &c.mask_tgt[(size_t)b * N], N);
    return c;
}

struct RelW { float w_rel, w_self, scale_t, scale_s; };
static RelW rel_weights(const RelCase& c) {
    return {0.05f, 0.025f, 1.0f / ((float)c.B * c.N * c.N), 1.0f / ((float)c.B * c.L * c.N * c.N)};
}
static void rel_forward(double loss[2], const RelCase& c, RelW w) {
    relational_loss_forward_ref(loss, c.e_ctx.data(), c.adj_ctx.data(), c.mask_ctx.data(), c.e_tgt.data(), c.adj_tgt.data(),
                                c.mask_tgt.data(), c.B, c.L, c.N, c.D, w.w_rel, w.w_self, w.scale_t, w.scale_s);
}
static void rel_backward(vecd& de_ctx, vecd* de_tgt, const RelCase& c, RelW w, float dloss) {
    relational_loss_backward_ref(de_ctx.data(), de_tgt ? de_tgt->data() : nullptr, c.e_ctx.data(), c.adj_ctx.data(),
                                 c.mask_ctx.data(), c.e_tgt.data(), c.adj_tgt.data(), c.mask_tgt.data(), c.B, c.L, c.N, c.D,
                                 w.w_rel, w.w_self, w.scale_t, w.scale_s, dloss);
}

// The reference's formulas: R = ||e_i - e_j||^2 adj m_i m_j; weight * MSE(mean_L R_ctx, R_tgt) and
// self_weight * mean((R_ctx - mean_L R_ctx)^2), with the MSE means over B N N and B L N N elements.
static void rel_direct(double loss[2], const RelCase& c, float w_rel, float w_self) {
    const int B = c.B, L = c.L, N = c.N, D = c.D;
    auto R = [&](const vecd& e, const vecu8& adj, const vecu8& mask, size_t grid, int i, int j) {
        double s = 0;
        for (int d = 0; d < D; d++) s += pow(e[(grid * N + i) * D + d] - e[(grid * N + j) * D + d], 2);
        return s * (adj[(grid * N + i) * N + j] ? 1 : 0) * (mask[grid * N + i] ? 1 : 0) * (mask[grid * N + j] ? 1 : 0);
    };
    double mse = 0, var = 0;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                std::vector<double> r(L);
                double mu = 0;
                for (int l = 0; l < L; l++) mu += (r[l] = R(c.e_ctx, c.adj_ctx, c.mask_ctx, (size_t)b * L + l, i, j)) / L;
                mse += pow(mu - R(c.e_tgt, c.adj_tgt, c.mask_tgt, b, i, j), 2);
                for (int l = 0; l < L; l++) var += pow(r[l] - mu, 2);
            }
    loss[0] = w_rel * mse / ((double)B * N * N);
    loss[1] = w_self * var / ((double)B * L * N * N);
}

static void test_rel_forward(int B, int L, int N, int D) {
    const RelCase c = rel_case(B, L, N, D);
    const RelW w = rel_weights(c);
    double loss[2], direct[2];
    rel_forward(loss, c, w);
    rel_direct(direct, c, w.w_rel, w.w_self);
    // scale_t, scale_s are floats: 1 / (B N N) rounded (relative 6e-8)
    // (L = 1: the self term is 0 on both sides)
    const double e0 = fabs(loss[0] - direct[0]) / direct[0];
    const double e1 = L > 1 ? fabs(loss[1] - direct[1]) / direct[1] : fabs(loss[1]) + fabs(direct[1]);
    check(e0 < 1e-7 && e1 < 1e-7 && direct[0] > 0 && (L == 1 || direct[1] > 0),
          fmt("relational_loss forward = the reference's MSE formulas B=%d L=%d N=%d D=%d", B, L, N, D).c_str(),
          "loss %.12g %.12g vs direct %.12g %.12g", loss[0], loss[1], direct[0], direct[1]);
}

static void test_rel_backward(int B, int L, int N, int D, bool with_tgt) {
    const std::string tag = fmt("B=%d L=%d N=%d D=%d%s", B, L, N, D, with_tgt ? "" : " de_tgt=null");
    RelCase c = rel_case(B, L, N, D);
    const RelW w = rel_weights(c);
    const float dloss = 0.7f;
    // += : start from known values, compare the increments
    const vecd init_ctx = normal_vec(c.e_ctx.size()), init_tgt = normal_vec(c.e_tgt.size());
    vecd de_ctx = init_ctx, de_tgt = init_tgt;
    rel_backward(de_ctx, with_tgt ? &de_tgt : nullptr, c, w, dloss);
    vecd g_ctx(de_ctx.size()), g_tgt(de_tgt.size());
    for (size_t i = 0; i < g_ctx.size(); i++) g_ctx[i] = de_ctx[i] - init_ctx[i];
    for (size_t i = 0; i < g_tgt.size(); i++) g_tgt[i] = de_tgt[i] - init_tgt[i];
    auto f = [&]() {
        double l[2];
        rel_forward(l, c, w);
        return (double)dloss * (l[0] + l[1]);
    };
    gradcheck("relational_loss backward de_ctx (+=) vs central differences " + tag, c.e_ctx, g_ctx, f);
    if (with_tgt) {
        gradcheck("relational_loss backward de_tgt (+=) vs central differences " + tag, c.e_tgt, g_tgt, f);
    } else {
        check(de_tgt == init_tgt, ("relational_loss backward de_tgt = null leaves the target alone " + tag).c_str());
        vecd ctx2 = init_ctx, tgt2 = init_tgt;
        rel_backward(ctx2, &tgt2, c, w, dloss);
        check(ctx2 == de_ctx, ("relational_loss backward de_ctx does not depend on de_tgt being null " + tag).c_str());
    }
}

// Identical context grids: the self term is exactly 0, and so is its gradient.
static void test_rel_identical() {
    RelCase c = rel_case(5, 3, 9, 17);
    const int L = c.L, N = c.N, D = c.D;
    for (int b = 0; b < c.B; b++)
        for (int l = 1; l < L; l++) {
            const size_t g0 = (size_t)b * L, g = g0 + l;
            std::copy(c.e_ctx.begin() + g0 * N * D, c.e_ctx.begin() + (g0 + 1) * N * D, c.e_ctx.begin() + g * N * D);
            std::copy(c.adj_ctx.begin() + g0 * N * N, c.adj_ctx.begin() + (g0 + 1) * N * N, c.adj_ctx.begin() + g * N * N);
            std::copy(c.mask_ctx.begin() + g0 * N, c.mask_ctx.begin() + (g0 + 1) * N, c.mask_ctx.begin() + g * N);
        }
    RelW w = rel_weights(c);
    double loss[2];
    rel_forward(loss, c, w);
    check(loss[1] == 0.0 && loss[0] > 0, "relational_loss self term exactly 0 for identical context grids",
          "self %.3g, target term %.3g", loss[1], loss[0]);
    w.w_rel = 0;
    const vecd init = normal_vec(c.e_ctx.size());
    vecd de = init, dt(c.e_tgt.size(), 0.0);
    rel_backward(de, &dt, c, w, 1.0f);
    check(de == init && max_abs(dt) == 0, "relational_loss self-term gradient exactly 0 for identical context grids");
}

// Padded slots: their embeddings and their adjacency rows do not change the loss, and get no gradient.
static void test_rel_padded() {
    RelCase c = rel_case(4, 3, 10, 12);
    const RelW w = rel_weights(c);
    double l1[2], l2[2];
    rel_forward(l1, c, w);
    size_t n_padded = 0;
    auto scramble = [&](vecd& e, vecu8& adj, const vecu8& mask, int n_grids) {
        for (int g = 0; g < n_grids; g++)
            for (int i = 0; i < c.N; i++) {
                if (mask[(size_t)g * c.N + i]) continue;
                n_padded++;
                for (int d = 0; d < c.D; d++) e[((size_t)g * c.N + i) * c.D + d] = 100.0 * rng_normal(&g_rng);
                for (int j = 0; j < c.N; j++) adj[((size_t)g * c.N + i) * c.N + j] = adj[((size_t)g * c.N + j) * c.N + i] = 1;
            }
    };
    scramble(c.e_ctx, c.adj_ctx, c.mask_ctx, c.B * c.L);
    scramble(c.e_tgt, c.adj_tgt, c.mask_tgt, c.B);
    rel_forward(l2, c, w);
    check(n_padded > 0 && l1[0] == l2[0] && l1[1] == l2[1], "relational_loss padded slots (embeddings, adjacency) change nothing",
          "%zu padded slots; loss %.17g %.17g -> %.17g %.17g", n_padded, l1[0], l1[1], l2[0], l2[1]);
    vecd de_ctx(c.e_ctx.size(), 0.0), de_tgt(c.e_tgt.size(), 0.0);
    rel_backward(de_ctx, &de_tgt, c, w, 1.0f);
    size_t nonzero = 0;
    for (int g = 0; g < c.B * c.L; g++)
        for (int i = 0; i < c.N; i++)
            if (!c.mask_ctx[(size_t)g * c.N + i])
                for (int d = 0; d < c.D; d++) nonzero += de_ctx[((size_t)g * c.N + i) * c.D + d] != 0;
    for (int b = 0; b < c.B; b++)
        for (int i = 0; i < c.N; i++)
            if (!c.mask_tgt[(size_t)b * c.N + i])
                for (int d = 0; d < c.D; d++) nonzero += de_tgt[((size_t)b * c.N + i) * c.D + d] != 0;
    check(nonzero == 0 && max_abs(de_ctx) > 0, "relational_loss padded slots get exactly zero gradient", "%zu nonzero", nonzero);
}

// =========================================================================================================
// context attention

// torch's recipe: Linear(L, L) on x^T (B, D, L), softmax over the last axis, transposed back, (x * a).sum(1).
static void ca_direct(vecd& out, vecd& att, const vecd& x, const vecd& W, const vecd& bias, int B, int L, int D) {
    out.assign((size_t)B * D, 0.0);
    att.assign((size_t)B * L * D, 0.0);
    for (int b = 0; b < B; b++)
        for (int d = 0; d < D; d++) {
            std::vector<double> xt(L), y(L);
            for (int l = 0; l < L; l++) xt[l] = x[((size_t)b * L + l) * D + d];
            double mx = -INFINITY, sum = 0;
            for (int o = 0; o < L; o++) {
                y[o] = bias[o];
                for (int l = 0; l < L; l++) y[o] += xt[l] * W[(size_t)o * L + l];
                mx = fmax(mx, y[o]);
            }
            for (int o = 0; o < L; o++) sum += (y[o] = exp(y[o] - mx));
            for (int o = 0; o < L; o++) {
                att[((size_t)b * L + o) * D + d] = y[o] / sum;
                out[(size_t)b * D + d] += xt[o] * y[o] / sum;
            }
        }
}
static void ca_ref(vecd& out, vecd& att, const vecd& x, const vecd& W, const vecd& bias, int B, int L, int D) {
    out.assign((size_t)B * D, NAN);
    att.assign((size_t)B * L * D, NAN);
    context_attention_forward_ref(out.data(), att.data(), x.data(), W.data(), bias.data(), B, L, D);
}

static void test_ca_forward(int B, int L, int D) {
    const vecd x = normal_vec((size_t)B * L * D), W = normal_vec((size_t)L * L, 0.8), bias = normal_vec(L, 0.5);
    vecd out, att, out_d, att_d;
    ca_ref(out, att, x, W, bias, B, L, D);
    ca_direct(out_d, att_d, x, W, bias, B, L, D);
    const double e_out = max_abs_diff(out, out_d), e_att = max_abs_diff(att, att_d);
    check(e_out < 1e-13 && e_att < 1e-14, fmt("context_attention forward = torch's recipe B=%d L=%d D=%d", B, L, D).c_str(),
          "max |out - direct| %.3g, max |att - direct| %.3g", e_out, e_att);
}

static void test_ca_backward(int B, int L, int D) {
    const std::string tag = fmt("B=%d L=%d D=%d", B, L, D);
    vecd x = normal_vec((size_t)B * L * D), W = normal_vec((size_t)L * L, 0.8), bias = normal_vec(L, 0.5);
    const vecd R = normal_vec((size_t)B * D);     // loss = sum out * R
    vecd out, att;
    ca_ref(out, att, x, W, bias, B, L, D);
    const vecd dW0 = normal_vec(W.size()), db0 = normal_vec(L);
    vecd dx(x.size(), NAN), dW = dW0, db = db0;
    context_attention_backward_ref(dx.data(), dW.data(), db.data(), R.data(), att.data(), x.data(), W.data(), B, L, D);
    for (size_t i = 0; i < dW.size(); i++) dW[i] -= dW0[i];
    for (int i = 0; i < L; i++) db[i] -= db0[i];
    auto f = [&]() {
        vecd o, a;
        ca_ref(o, a, x, W, bias, B, L, D);
        return dot(o, R);
    };
    gradcheck("context_attention backward dx (=) vs central differences " + tag, x, dx, f);
    gradcheck("context_attention backward dW (+=) vs central differences " + tag, W, dW, f);
    gradcheck("context_attention backward dbias (+=) vs central differences " + tag, bias, db, f);
}

static void test_ca_identical() {
    const int B = 7, L = 3, D = 33;
    vecd x = normal_vec((size_t)B * L * D);
    for (int b = 0; b < B; b++)
        for (int l = 1; l < L; l++)
            for (int d = 0; d < D; d++) x[((size_t)b * L + l) * D + d] = x[(size_t)b * L * D + d];
    const vecd W = normal_vec((size_t)L * L, 2.0), bias = normal_vec(L, 2.0);
    vecd out, att;
    ca_ref(out, att, x, W, bias, B, L, D);
    double worst = 0;
    for (int b = 0; b < B; b++)
        for (int d = 0; d < D; d++) {
            const double x0 = x[(size_t)b * L * D + d];
            worst = fmax(worst, fabs(out[(size_t)b * D + d] - x0) / fmax(fabs(x0), 1e-300));
        }
    check(worst < 1e-14, "context_attention identical copies along L: out = x[:, 0] (whatever W, bias)", "max rel diff %.3g", worst);
}

// =========================================================================================================
// GRU

static double sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }

static void test_gru_cell(int B, int D, bool with_h) {
    const std::string tag = fmt("B=%d D=%d%s", B, D, with_h ? "" : " h=null");
    const int stride = 2 * 3 * D + 5;      // gi rows inside a wider buffer, at column 3D + 5
    vecd gi_buf = normal_vec((size_t)B * stride), gh = normal_vec((size_t)B * 3 * D), h = normal_vec((size_t)B * D);
    const size_t off = 3 * (size_t)D + 5;
    vecd h_out((size_t)B * D, NAN), gates((size_t)B * 3 * D, NAN);
    auto forward = [&]() {
        gru_cell_forward_ref(h_out.data(), gates.data(), gi_buf.data() + off, stride, gh.data(), with_h ? h.data() : nullptr, B, D);
    };
    forward();
    double worst = 0;
    for (int b = 0; b < B; b++)
        for (int d = 0; d < D; d++) {
            const double* g = &gi_buf[(size_t)b * stride + off];
            const double* q = &gh[(size_t)b * 3 * D];
            const double r = sigmoid(g[d] + q[d]), z = sigmoid(g[D + d] + q[D + d]);
            const double n = tanh(g[2 * D + d] + r * q[2 * D + d]);
            const double hp = with_h ? h[(size_t)b * D + d] : 0.0;
            const double want = (1 - z) * n + z * hp;
            worst = fmax(worst, fabs(h_out[(size_t)b * D + d] - want));
            worst = fmax(worst, fabs(gates[(size_t)b * 3 * D + d] - r));
            worst = fmax(worst, fabs(gates[(size_t)b * 3 * D + D + d] - z));
            worst = fmax(worst, fabs(gates[(size_t)b * 3 * D + 2 * D + d] - n));
        }
    check(worst < 1e-15, ("gru_cell forward = the nn.GRU formulas (strided gi) " + tag).c_str(), "max diff %.3g", worst);

    const vecd R = normal_vec((size_t)B * D);       // loss = sum h_out * R
    const int dstride = 3 * D + 2;
    vecd dgi_buf((size_t)B * dstride, -7.0), dgh((size_t)B * 3 * D, NAN), dh((size_t)B * D, NAN);
    gru_cell_backward_ref(dgi_buf.data(), dstride, dgh.data(), with_h ? dh.data() : nullptr, R.data(), gates.data(), gh.data(),
                          with_h ? h.data() : nullptr, B, D);
    // the analytic gradient of gi, laid out like gi_buf (0 outside the rows' 3D columns)
    vecd dgi_full(gi_buf.size(), 0.0);
    bool pad_ok = true;
    for (int b = 0; b < B; b++) {
        for (int k = 0; k < 3 * D; k++) dgi_full[(size_t)b * stride + off + k] = dgi_buf[(size_t)b * dstride + k];
        for (int k = 3 * D; k < dstride; k++) pad_ok = pad_ok && dgi_buf[(size_t)b * dstride + k] == -7.0;
    }
    check(pad_ok, ("gru_cell backward writes only the 3D columns of each strided dgi row " + tag).c_str());
    auto f = [&]() {
        forward();
        return dot(h_out, R);
    };
    gradcheck("gru_cell backward dgi vs central differences " + tag, gi_buf, dgi_full, f);
    gradcheck("gru_cell backward dgh vs central differences " + tag, gh, dgh, f);
    if (with_h) gradcheck("gru_cell backward dh (pointwise path) vs central differences " + tag, h, dh, f);
    else {
        bool untouched = true;
        for (double v : dh) untouched = untouched && isnan(v);
        check(untouched, ("gru_cell backward with h = null leaves dh alone " + tag).c_str());
    }
}

// A whole nn.GRU(Din -> D) over L steps from h0 = 0: gi = x W_ih^T + b_ih for all steps at once, (B, L, 3D),
// then per step gh = h W_hh^T + b_hh and the cell. Returns the hidden states (L, B, D).
struct GruParams {
    int B, L, Din, D;
    vecd x, W_ih, b_ih, W_hh, b_hh;
};
struct GruTape {
    vecd gi;                        // (B, L, 3D)
    std::vector<vecd> h, gh, gates; // per step: h[l] (B, D) = output of step l; gh[l], gates[l] (B, 3D)
};
static GruTape gru_sequence(const GruParams& p) {
    const int B = p.B, L = p.L, D = p.D;
    GruTape t;
    t.gi.assign((size_t)B * L * 3 * D, 0.0);
    matmul_forward_ref(t.gi.data(), p.x.data(), p.W_ih.data(), p.b_ih.data(), B * L, p.Din, 3 * D);
    for (int l = 0; l < L; l++) {
        vecd gh((size_t)B * 3 * D), gates((size_t)B * 3 * D), h((size_t)B * D);
        const vecd h_prev = l > 0 ? t.h[l - 1] : vecd((size_t)B * D, 0.0);
        matmul_forward_ref(gh.data(), h_prev.data(), p.W_hh.data(), p.b_hh.data(), B, D, 3 * D);
        gru_cell_forward_ref(h.data(), gates.data(), t.gi.data() + (size_t)l * 3 * D, L * 3 * D, gh.data(),
                             l > 0 ? t.h[l - 1].data() : nullptr, B, D);
        t.h.push_back(h);
        t.gh.push_back(gh);
        t.gates.push_back(gates);
    }
    return t;
}

static void test_gru_sequence() {
    const int B = 3, L = 3, Din = 5, D = 4;
    GruParams p{B, L, Din, D, normal_vec((size_t)B * L * Din), normal_vec((size_t)3 * D * Din, 0.5), normal_vec(3 * D, 0.3),
                normal_vec((size_t)3 * D * D, 0.5), normal_vec(3 * D, 0.3)};
    GruTape t = gru_sequence(p);

    // torch's documented equations (nn.GRU): r = s(W_ir x + b_ir + W_hr h + b_hr), z = s(W_iz x + b_iz + W_hz h + b_hz),
    // n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h; weight_ih_l0 = [W_ir | W_iz | W_in].
    double worst = 0;
    for (int b = 0; b < B; b++) {
        std::vector<double> h(D, 0.0);
        for (int l = 0; l < L; l++) {
            const double* x = &p.x[((size_t)b * L + l) * Din];
            auto lin = [&](const vecd& W, const vecd& bias, int gate, int k, const double* v, int n) {
                double s = bias[gate * D + k];
                for (int c = 0; c < n; c++) s += W[(size_t)(gate * D + k) * n + c] * v[c];
                return s;
            };
            std::vector<double> hn(D);
            for (int k = 0; k < D; k++) {
                const double r = sigmoid(lin(p.W_ih, p.b_ih, 0, k, x, Din) + lin(p.W_hh, p.b_hh, 0, k, h.data(), D));
                const double z = sigmoid(lin(p.W_ih, p.b_ih, 1, k, x, Din) + lin(p.W_hh, p.b_hh, 1, k, h.data(), D));
                const double n = tanh(lin(p.W_ih, p.b_ih, 2, k, x, Din) + r * lin(p.W_hh, p.b_hh, 2, k, h.data(), D));
                hn[k] = (1 - z) * n + z * h[k];
            }
            h = hn;
            for (int k = 0; k < D; k++) worst = fmax(worst, fabs(t.h[l][(size_t)b * D + k] - h[k]));
        }
    }
    check(worst < 1e-14, "gru sequence (matmul + gru_cell, 3 steps) = torch's nn.GRU equations", "max diff %.3g", worst);

    // backpropagation through time; loss = sum_l sum h_l * R_l
    std::vector<vecd> R;
    for (int l = 0; l < L; l++) R.push_back(normal_vec((size_t)B * D));
    vecd dx(p.x.size(), 0.0), dW_ih(p.W_ih.size(), 0.0), db_ih(3 * D, 0.0), dW_hh(p.W_hh.size(), 0.0), db_hh(3 * D, 0.0);
    vecd dgi((size_t)B * L * 3 * D, NAN), dh = R[L - 1];
    for (int l = L - 1; l >= 0; l--) {
        vecd dgh((size_t)B * 3 * D), dh_prev((size_t)B * D, 0.0);
        const double* h_prev = l > 0 ? t.h[l - 1].data() : nullptr;
        gru_cell_backward_ref(dgi.data() + (size_t)l * 3 * D, L * 3 * D, dgh.data(), l > 0 ? dh_prev.data() : nullptr, dh.data(),
                              t.gates[l].data(), t.gh[l].data(), h_prev, B, D);
        if (l > 0) {
            matmul_backward_ref(dh_prev.data(), dW_hh.data(), db_hh.data(), dgh.data(), h_prev, p.W_hh.data(), B, D, 3 * D, true);
            for (size_t i = 0; i < dh_prev.size(); i++) dh_prev[i] += R[l - 1][i];
            dh = dh_prev;
        } else {
            matmul_backward_ref<double>(nullptr, nullptr, db_hh.data(), dgh.data(), nullptr, p.W_hh.data(), B, D, 3 * D, false);
        }
    }
    matmul_backward_ref(dx.data(), dW_ih.data(), db_ih.data(), dgi.data(), p.x.data(), p.W_ih.data(), B * L, Din, 3 * D, false);
    auto f = [&]() {
        const GruTape tt = gru_sequence(p);
        double s = 0;
        for (int l = 0; l < L; l++) s += dot(tt.h[l], R[l]);
        return s;
    };
    gradcheck("gru sequence backward (3 steps) dx vs central differences", p.x, dx, f);
    gradcheck("gru sequence backward (3 steps) dW_ih vs central differences", p.W_ih, dW_ih, f);
    gradcheck("gru sequence backward (3 steps) db_ih vs central differences", p.b_ih, db_ih, f);
    gradcheck("gru sequence backward (3 steps) dW_hh vs central differences", p.W_hh, dW_hh, f);
    gradcheck("gru sequence backward (3 steps) db_hh vs central differences", p.b_hh, db_hh, f);
}

// =========================================================================================================

int main() {
    test_seed(20251206);
    test_oa_forward(6, 7, 3, 5, 0.0f);
    test_oa_forward(5, 16, 8, 6, 0.0f);
    test_oa_forward(4, 5, 2, 4, 0.5f);        // dropout 0.5: the scale 2 is exact in float and double
    test_oa_forward(3, 1, 2, 3, 0.0f);        // N = 1: every object alone
    test_oa_forward(3, 32, 2, 4, 0.0f);       // N = 32: a full warp per row
    test_oa_backward(3, 5, 2, 4, 0.0f);
    test_oa_backward(3, 6, 2, 3, 0.3f);
    test_oa_backward(2, 1, 2, 3, 0.0f);
    test_oa_dropout(0.1f);
    test_oa_dropout(0.3f);
    test_oa_dropout_seed();

    test_rel_forward(4, 3, 6, 5);
    test_rel_forward(2, 1, 16, 24);           // L = 1: mu = R_ctx, no self term
    test_rel_backward(3, 3, 5, 4, true);
    test_rel_backward(2, 2, 4, 3, false);
    test_rel_backward(2, 1, 6, 3, true);
    test_rel_identical();
    test_rel_padded();

    test_ca_forward(5, 3, 7);
    test_ca_forward(2, 1, 4);
    test_ca_forward(3, 6, 11);
    test_ca_backward(3, 3, 5);
    test_ca_backward(2, 4, 3);
    test_ca_identical();

    test_gru_cell(3, 5, true);
    test_gru_cell(2, 4, false);
    test_gru_sequence();
    return test_summary();
}
