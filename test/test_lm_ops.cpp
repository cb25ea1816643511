// Tests of the language-model ops (the Qwen2 / CVAE trainer's), through their launchers in double precision
// (-DENABLE_FP64): the softmax cross-entropy over a vocabulary with its in-place backward, the chunked lm head
// (kernels/lm_head_loss.cuh), LoRA (kernels/lora.cuh) and the Muon optimizer step (kernels/muon.cuh). Forward passes against direct formulas, backward passes
// against central differences of the scalar objective, and the conventions (=, +=, null gradients, chunking).
//
//   g++ -O2 -std=c++17 -fopenmp -DENABLE_FP64 test/test_lm_ops.cpp -o build/test_lm_ops && build/test_lm_ops
#include <math.h>
#include <functional>
#include <string>
#include <vector>

#include "../common/device.h"
#include "../kernels/lm_head_loss.cuh"
#include "../kernels/lora.cuh"
#include "../kernels/muon.cuh"
#include "../kernels/softmax_xent.cuh"
#include "test.h"
#include "op_test.h"

static_assert(sizeof(floatX) == sizeof(double) && sizeof(floatS) == sizeof(double), "build with -DENABLE_FP64");
static const double NaN = nan("");
static const Stream st = Stream();

// sum_n dscale * loss_n, the objective whose gradient the ops return
static long double objective(const vecd& loss, double dscale) {
    long double sum = 0;
    for (double l : loss) sum += (long double)dscale * l;
    return sum;
}

// labels: every third row ignored, the others uniform in [0, V)
static std::vector<int> make_labels(int N, int V) {
    std::vector<int> labels(N);
    for (int n = 0; n < N; n++) labels[n] = n % 3 == 2 ? IGNORE_LABEL_ID : (int)uni(0, V - 1e-9);
    return labels;
}

// =========================================================================================================
// softmax cross-entropy

static void test_softmax_xent(int N, int V, int ld) {
    const std::string tag = fmt("N=%d V=%d ld=%d", N, V, ld);
    vecd x = rand_vec((size_t)N * ld, -3, 3);
    std::vector<int> labels = make_labels(N, V);
    for (int v = 0; v < V; v++) x[v] = -1.0;          // row 0: a tie for the maximum, the first one wins
    x[2] = x[V - 1] = 2.5;
    for (int v = 0; v < V; v++) x[(size_t)ld + v] = 700.0 + 0.001 * v;   // row 1: exp() would overflow unshifted
    const double dscale = 0.37;

    vecd loss(N, NaN), g = x;
    std::vector<int> argmax(N, -1);
    softmax_xent(loss.data(), argmax.data(), g.data(), labels.data(), N, V, ld, dscale, true, st);
    double lerr = 0;
    bool args = true, zero_ignored = true, zero_pad = true;
    for (int n = 0; n < N; n++) {
        const double* r = x.data() + (size_t)n * ld;
        long double m = r[0], sum = 0;
        int am = 0;
        for (int v = 1; v < V; v++) if (r[v] > r[am]) am = v;
        m = r[am];
        for (int v = 0; v < V; v++) sum += expl((long double)r[v] - m);
        const long double lse = m + logl(sum);
        const double want = labels[n] == IGNORE_LABEL_ID ? 0.0 : (double)(lse - r[labels[n]]);
        lerr = fmax(lerr, fabs(loss[n] - want) / (1e-12 + fabs(want)));
        args &= argmax[n] == am;
        const double* gr = g.data() + (size_t)n * ld;
        if (labels[n] == IGNORE_LABEL_ID) zero_ignored &= all_equal(gr, (size_t)V, 0.0);
        zero_pad &= all_equal(gr + V, (size_t)(ld - V), 0.0);
    }
    check(lerr < 1e-12 && std::isfinite(loss[1]), ("softmax_xent loss vs log-sum-exp in long double (logits ~700 included) " + tag).c_str(),
          "max rel err %.3g, loss[1] %g", lerr, loss[1]);
    check(args && argmax[0] == 2, ("softmax_xent argmax, the first maximum on ties " + tag).c_str(), "argmax[0] = %d", argmax[0]);
    check(zero_ignored && zero_pad, ("softmax_xent backward: ignored rows and padding columns get exactly 0 " + tag).c_str(), "nonzero");

    vecd loss2(N, NaN), x2 = x;
    softmax_xent(loss2.data(), nullptr, x2.data(), labels.data(), N, V, ld, dscale, false, st);
    check(bitwise_equal(loss2, loss) && bitwise_equal(x2, x), ("softmax_xent without grad: same loss, logits untouched " + tag).c_str(), "");

    auto L = [&]() {
        vecd l(N), xc = x;
        softmax_xent(l.data(), nullptr, xc.data(), labels.data(), N, V, ld, dscale, false, st);
        return objective(l, dscale);
    };
    vecd grad_v;                                        // the gradient at the logit columns, compared with FD there
    for (int n = 0; n < N; n++)
        for (int v = 0; v < ld; v++) grad_v.push_back(v < V ? g[(size_t)n * ld + v] : 0.0);
    // row 1's logits near 700: a finite-difference step of 1e-6 is lost to rounding there; check the other rows
    gradcheck("softmax_xent gradcheck dlogits " + tag, x, grad_v, L, FD_TOL,
              [&](size_t i) { return i / ld == 1 ? 1e-3 : FD_H; });

    // per-row weights r_n (row_scale): the gradient of sum_n dscale r_n loss[n]
    const vecd r = rand_vec(N, 0.1, 2.0);
    vecd lw(N), gw = x;
    softmax_xent(lw.data(), nullptr, gw.data(), labels.data(), N, V, ld, dscale, true, st, r.data());
    auto Lw = [&]() {
        vecd l(N), xc = x;
        softmax_xent(l.data(), nullptr, xc.data(), labels.data(), N, V, ld, dscale, false, st);
        double sum = 0;
        for (int n = 0; n < N; n++) sum += dscale * r[n] * l[n];
        return sum;
    };
    vecd grad_w;
    for (int n = 0; n < N; n++)
        for (int v = 0; v < ld; v++) grad_w.push_back(v < V ? gw[(size_t)n * ld + v] : 0.0);
    gradcheck("softmax_xent gradcheck dlogits with row_scale " + tag, x, grad_w, Lw, FD_TOL,
              [&](size_t i) { return i / ld == 1 ? 1e-3 : FD_H; });
}

// =========================================================================================================
// the chunked lm head

static void test_lm_head_loss(int N, int C, int V) {
    const std::string tag = fmt("N=%d C=%d V=%d", N, C, V);
    vecd h = rand_vec((size_t)N * C), W = rand_vec((size_t)V * C, -0.5, 0.5);
    std::vector<int> labels = make_labels(N, V);
    int n_labelled = 0;
    for (int y : labels) n_labelled += y != IGNORE_LABEL_ID;
    const double dscale = 1.0 / n_labelled;                  // the mean over labelled tokens

    // reference: the whole (N, V) logits at once
    vecd logits((size_t)N * V), loss_ref(N);
    std::vector<int> am_ref(N);
    matmul_forward(logits.data(), h.data(), W.data(), nullptr, N, C, V, st);
    softmax_xent(loss_ref.data(), am_ref.data(), logits.data(), labels.data(), N, V, V, dscale, true, st);
    vecd dh_ref((size_t)N * C, NaN), dW_ref((size_t)V * C, 0.0);
    matmul_backward(dh_ref.data(), dW_ref.data(), nullptr, logits.data(), h.data(), W.data(), N, C, V, false, st);

    for (int chunk : {1, 3, N, N + 5}) {
        const std::string ct = tag + fmt(" chunk=%d", chunk);
        vecd loss(N, NaN), dh((size_t)N * C, NaN), dW((size_t)V * C, 0.0), scratch((size_t)std::min(chunk, N) * V, NaN);
        std::vector<int> am(N, -1);
        lm_head_loss(loss.data(), am.data(), dh.data(), dW.data(), h.data(), W.data(), labels.data(), N, C, V, dscale, true,
                     scratch.data(), chunk, st);
        check(bitwise_equal(loss, loss_ref) && am == am_ref && bitwise_equal(dh, dh_ref),
              ("lm_head_loss: loss, argmax and dh of every row do not depend on the chunking " + ct).c_str(), "");
        check(max_abs_diff(dW, dW_ref) < 1e-13, ("lm_head_loss: dW summed over the chunks " + ct).c_str(), "err %.3g",
              max_abs_diff(dW, dW_ref));
    }
    auto L = [&]() {
        vecd l(N), scratch((size_t)3 * V);
        lm_head_loss(l.data(), nullptr, nullptr, nullptr, h.data(), W.data(), labels.data(), N, C, V, dscale, false,
                     scratch.data(), 3, st);
        return objective(l, dscale);
    };
    gradcheck("lm_head_loss gradcheck dh " + tag, h, dh_ref, L);
    gradcheck("lm_head_loss gradcheck dW " + tag, W, dW_ref, L);

    // dW accumulates (+=); null dh / dW are skipped
    vecd R = rand_vec(dW_ref.size()), dW2 = R, scratch((size_t)4 * V), loss(N);
    lm_head_loss(loss.data(), nullptr, nullptr, dW2.data(), h.data(), W.data(), labels.data(), N, C, V, dscale, true,
                 scratch.data(), 4, st);
    double err = 0;
    for (size_t i = 0; i < R.size(); i++) err = fmax(err, fabs(dW2[i] - R[i] - dW_ref[i]));
    check(err < 1e-12, ("lm_head_loss: dW accumulates (+=), a null dh is skipped " + tag).c_str(), "err %.3g", err);
}

// =========================================================================================================
// LoRA

static void test_lora(int N, int C, int OC, int r, double scale) {
    const std::string tag = fmt("N=%d C=%d OC=%d r=%d scale=%g", N, C, OC, r, scale);
    vecd x = rand_vec((size_t)N * C), A = rand_vec((size_t)r * C), B = rand_vec((size_t)OC * r), base = rand_vec((size_t)N * OC);
    vecd G = rand_vec((size_t)N * OC);
    auto forward = [&](vecd* out, vecd* t) {
        *out = base;
        t->assign((size_t)N * r, NaN);
        lora_forward(out->data(), t->data(), x.data(), A.data(), B.data(), N, C, OC, r, scale, st);
    };
    vecd out, t;
    forward(&out, &t);
    double err = 0;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            long double want = base[(size_t)n * OC + o];
            for (int k = 0; k < r; k++) {
                long double xa = 0;
                for (int c = 0; c < C; c++) xa += (long double)x[(size_t)n * C + c] * A[(size_t)k * C + c];
                want += scale * xa * B[(size_t)o * r + k];
            }
            err = fmax(err, fabs(out[(size_t)n * OC + o] - (double)want));
        }
    check(err < 1e-12, ("lora forward: out += scale x A^T B^T " + tag).c_str(), "err %.3g", err);
    vecd zeros(B.size(), 0.0), out0 = base, t0((size_t)N * r);
    lora_forward(out0.data(), t0.data(), x.data(), A.data(), zeros.data(), N, C, OC, r, scale, st);
    check(bitwise_equal(out0, base), ("lora with B = 0 (PEFT's initialisation) leaves the base output exactly " + tag).c_str(), "");

    vecd D = rand_vec(x.size()), dx = D, dA(A.size(), 0.0), dB(B.size(), 0.0), dt((size_t)N * r, NaN);
    lora_backward(dx.data(), dA.data(), dB.data(), dt.data(), G.data(), x.data(), t.data(), A.data(), B.data(), N, C, OC, r,
                  scale, st);
    auto L = [&]() -> long double {
        vecd o, tt;
        forward(&o, &tt);
        return dotl(G, o);
    };
    vecd dx_only(x.size());
    for (size_t i = 0; i < x.size(); i++) dx_only[i] = dx[i] - D[i];
    gradcheck("lora gradcheck dx (accumulated onto the base layer's) " + tag, x, dx_only, L);
    gradcheck("lora gradcheck dA " + tag, A, dA, L);
    gradcheck("lora gradcheck dB " + tag, B, dB, L);
    vecd dx2 = D;
    lora_backward(dx2.data(), nullptr, nullptr, dt.data(), G.data(), x.data(), t.data(), A.data(), B.data(), N, C, OC, r,
                  scale, st);
    check(bitwise_equal(dx2, dx), ("lora backward with frozen A and B (null dA, dB): the same dx " + tag).c_str(), "");
}

// LoRA on one projection of a fused output: columns [off, off + OC) of rows W wide, the other columns untouched
static void test_lora_block(int N, int C, int OC, int r, int W, int off) {
    const std::string tag = fmt("N=%d C=%d OC=%d r=%d in rows of %d at column %d", N, C, OC, r, W, off);
    const double scale = 1.5;
    vecd x = rand_vec((size_t)N * C), A = rand_vec((size_t)r * C), B = rand_vec((size_t)OC * r);
    vecd wide = rand_vec((size_t)N * W), Gw = rand_vec((size_t)N * W);
    vecd packed((size_t)N * OC), G((size_t)N * OC);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            packed[(size_t)n * OC + o] = wide[(size_t)n * W + off + o];
            G[(size_t)n * OC + o] = Gw[(size_t)n * W + off + o];
        }
    vecd t1((size_t)N * r), t2((size_t)N * r), out_w = wide;
    lora_forward(packed.data(), t1.data(), x.data(), A.data(), B.data(), N, C, OC, r, scale, st);
    lora_forward(out_w.data() + off, t2.data(), x.data(), A.data(), B.data(), N, C, OC, r, scale, st, W);
    bool same = true;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < W; c++) {
            const bool inside = c >= off && c < off + OC;
            const double want = inside ? packed[(size_t)n * OC + c - off] : wide[(size_t)n * W + c];
            same &= out_w[(size_t)n * W + c] == want;
        }
    check(same, ("lora forward into a block of columns: the packed result there, the rest untouched " + tag).c_str(), "");
    vecd dx1((size_t)N * C, 0.0), dA1(A.size(), 0.0), dB1(B.size(), 0.0), dt((size_t)N * r);
    vecd dx2 = dx1, dA2 = dA1, dB2 = dB1;
    lora_backward(dx1.data(), dA1.data(), dB1.data(), dt.data(), G.data(), x.data(), t1.data(), A.data(), B.data(), N, C, OC,
                  r, scale, st);
    lora_backward(dx2.data(), dA2.data(), dB2.data(), dt.data(), Gw.data() + off, x.data(), t1.data(), A.data(), B.data(), N, C,
                  OC, r, scale, st, W);
    check(bitwise_equal(dx1, dx2) && bitwise_equal(dA1, dA2) && bitwise_equal(dB1, dB2),
          ("lora backward from a block of columns of the output gradient == from the packed block " + tag).c_str(), "");
}

// =========================================================================================================
// Muon

// One-sided Jacobi SVD (Hestenes) of M (m, n), m >= n: pairs of columns of W = M are rotated until all are
// orthogonal (to 1e-15 of their norms); then s_j = ||W_j||, U_j = W_j / s_j, V the product of the rotations:
// M = U diag(s) V^T with U (m, n), V (n, n). Accurate to ~1e-16 of s_max / s_j in the singular vectors.
static void svd_tall(const vecd& M, int m, int n, vecd* U, vecd* s, vecd* V) {
    vecd W = M;
    V->assign((size_t)n * n, 0.0);
    for (int j = 0; j < n; j++) (*V)[(size_t)j * n + j] = 1.0;
    for (int sweep = 0; sweep < 100; sweep++) {
        bool rotated = false;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double alpha = 0, beta = 0, gamma = 0;
                for (int k = 0; k < m; k++) {
                    const double wp = W[(size_t)k * n + p], wq = W[(size_t)k * n + q];
                    alpha += wp * wp;
                    beta += wq * wq;
                    gamma += wp * wq;
                }
                if (fabs(gamma) <= 1e-15 * sqrt(alpha * beta)) continue;
                rotated = true;
                const double zeta = (beta - alpha) / (2 * gamma);
                const double t = (zeta >= 0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1 + zeta * zeta));
                const double cs = 1 / sqrt(1 + t * t), sn = cs * t;
                auto rotate = [&](vecd& X, int rows) {
                    for (int k = 0; k < rows; k++) {
                        const double xp = X[(size_t)k * n + p], xq = X[(size_t)k * n + q];
                        X[(size_t)k * n + p] = cs * xp - sn * xq;
                        X[(size_t)k * n + q] = sn * xp + cs * xq;
                    }
                };
                rotate(W, m);
                rotate(*V, n);
            }
        if (!rotated) break;
    }
    s->assign(n, 0.0);
    U->assign((size_t)m * n, 0.0);
    for (int j = 0; j < n; j++) {
        double ss = 0;
        for (int k = 0; k < m; k++) ss += W[(size_t)k * n + j] * W[(size_t)k * n + j];
        (*s)[j] = sqrt(ss);
        for (int k = 0; k < m; k++) (*U)[(size_t)k * n + j] = W[(size_t)k * n + j] / (*s)[j];
    }
}

static vecd transpose(const vecd& M, int R, int C) {
    vecd T((size_t)C * R);
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) T[(size_t)j * R + i] = M[(size_t)i * C + j];
    return T;
}

// M (R, C) = U diag(s) V^T, U (R, k), V (C, k), k = min(R, C)
static void svd_small(const vecd& M, int R, int C, vecd* U, vecd* s, vecd* V) {
    if (R >= C) svd_tall(M, R, C, U, s, V);
    else svd_tall(transpose(M, R, C), C, R, V, s, U);
}

// U diag(d) V^T (R, C) from U (R, k), V (C, k)
static vecd usvt(const vecd& U, const vecd& d, const vecd& V, int R, int C) {
    const int k = (int)d.size();
    vecd M((size_t)R * C, 0.0);
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) {
            long double sum = 0;
            for (int l = 0; l < k; l++) sum += (long double)U[(size_t)i * k + l] * d[l] * V[(size_t)j * k + l];
            M[(size_t)i * C + j] = (double)sum;
        }
    return M;
}

static double frobenius(const vecd& a) { return sqrt((double)dotl(a, a)); }
static double rel_frobenius(const vecd& got, const vecd& want) {
    vecd d(got.size());
    for (size_t i = 0; i < d.size(); i++) d[i] = got[i] - want[i];
    return frobenius(d) / frobenius(want);
}

// The step written out from the formulas of kernels/muon.cuh, with plain loops (no shared code with the header).
static void muon_direct(vecd& W, vecd* master, const vecd& G, vecd& m, int R, int C, double lr, double mu, bool nesterov,
                        int ns_steps, double wd, double grad_scale) {
    const size_t n = (size_t)R * C;
    vecd u(n);
    for (size_t i = 0; i < n; i++) {
        const double g = G[i] * grad_scale;
        m[i] = mu * m[i] + g;
        u[i] = nesterov ? g + mu * m[i] : m[i];
    }
    const double norm = frobenius(u);
    const bool tr = R > C;
    const int r = tr ? C : R, c = tr ? R : C;
    vecd X = tr ? transpose(u, R, C) : u;
    for (double& x : X) x /= norm + 1e-7;
    const double a = 3.4445, b = -4.7750, cc = 2.0315;
    for (int s = 0; s < ns_steps; s++) {
        vecd A((size_t)r * r), B((size_t)r * r), Xn((size_t)r * c);
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++) {
                double sum = 0;
                for (int k = 0; k < c; k++) sum += X[(size_t)i * c + k] * X[(size_t)j * c + k];
                A[(size_t)i * r + j] = sum;
            }
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++) {
                double sum = 0;
                for (int k = 0; k < r; k++) sum += A[(size_t)i * r + k] * A[(size_t)k * r + j];
                B[(size_t)i * r + j] = b * A[(size_t)i * r + j] + cc * sum;
            }
        for (int i = 0; i < r; i++)
            for (int j = 0; j < c; j++) {
                double sum = 0;
                for (int k = 0; k < r; k++) sum += B[(size_t)i * r + k] * X[(size_t)k * c + j];
                Xn[(size_t)i * c + j] = a * X[(size_t)i * c + j] + sum;
            }
        X = Xn;
    }
    const vecd O = tr ? transpose(X, C, R) : X;
    const double decay = 1 - lr * wd, step = lr * sqrt(std::max(1.0, (double)R / C));
    for (size_t i = 0; i < n; i++) {
        double& w = master ? (*master)[i] : W[i];
        w = w * decay - step * O[i];
        W[i] = w;
    }
}

// p applied ns_steps times, p(x) = a x + b x^3 + c x^5: what the iteration does to each singular value
static double ns_poly(double x, int ns_steps) {
    for (int s = 0; s < ns_steps; s++) x = 3.4445 * x + -4.7750 * x * x * x + 2.0315 * x * x * x * x * x;
    return x;
}

// O = NS(G) through the launcher: W = 0, no momentum (mu = 0), lr = 1, no decay: W becomes -sqrt(max(1, R/C)) O.
static vecd muon_orthogonalized(const vecd& G, int R, int C, int ns_steps) {
    vecd W((size_t)R * C, 0.0), m((size_t)R * C, 0.0), scratch(muon_scratch_size(R, C), NaN);
    muon_update(W.data(), nullptr, G.data(), m.data(), R, C, 1.0f, 0.0f, false, ns_steps, 0.0f, 1.0f, scratch.data(), st);
    const double step = sqrt(std::max(1.0, (double)R / C));
    for (double& w : W) w = -w / step;
    return W;
}

// (1) the iteration's output: O = U diag(p^5(s / ||G||)) V^T with G's singular vectors, singular values in the
// quintic's band, and the same polar factor as G (row and column spaces and their pairing).
static void test_muon_ns(int R, int C) {
    const std::string tag = fmt("R=%d C=%d", R, C);
    const int k = std::min(R, C), ns_steps = 5;
    const vecd G = normal_vec((size_t)R * C);
    const vecd O = muon_orthogonalized(G, R, C, ns_steps);
    vecd U, s, V;
    svd_small(G, R, C, &U, &s, &V);
    const double norm = frobenius(G);
    vecd d(k), ones(k, 1.0);
    for (int l = 0; l < k; l++) d[l] = ns_poly(s[l] / (norm + 1e-7), ns_steps);
    const vecd want = usvt(U, d, V, R, C);
    const double err = max_abs_diff(O, want) / max_abs(want);
    check(err < 1e-12, ("muon NS: O == U diag(p^5(s / ||G||_F)) V^T, G's singular vectors " + tag).c_str(),
          "max err %.3g of max |O|", err);
    vecd Uo, so, Vo;
    svd_small(O, R, C, &Uo, &so, &Vo);
    const double lo = *std::min_element(so.begin(), so.end()), hi = *std::max_element(so.begin(), so.end());
    const double smin = *std::min_element(s.begin(), s.end()) / norm;
    check(lo >= 0.6 && hi <= 1.25, ("muon NS: singular values of O in [0.6, 1.25] " + tag).c_str(),
          "[%.4f, %.4f] (smallest singular value of G %.3g of ||G||_F)", lo, hi, smin);
    const double perr = rel_frobenius(usvt(Uo, ones, Vo, R, C), usvt(U, ones, V, R, C));
    check(perr < 1e-10, ("muon NS: polar factor of O == polar factor of G (U V^T) " + tag).c_str(), "rel err %.3g", perr);
    printf("      (singular values of O in [%.4f, %.4f]; of G / ||G||_F down to %.3g)\n", lo, hi, smin);
}

// (2) the whole step against muon_direct, master null or not (with a master, param is overwritten by it)
static void test_muon_update(int R, int C, bool nesterov, bool with_master, float wd, float grad_scale, int ns_steps) {
    const std::string tag = fmt("R=%d C=%d nesterov=%d master=%s wd=%g grad_scale=%g ns_steps=%d", R, C, nesterov,
                                with_master ? "yes" : "null", wd, grad_scale, ns_steps);
    const size_t n = (size_t)R * C;
    const float lr = 0.02f, mu = 0.95f;
    const vecd W0 = rand_vec(n), M0 = rand_vec(n), G = normal_vec(n), m0 = rand_vec(n, -0.1, 0.1);
    vecd W = W0, master = M0, m = m0, scratch(muon_scratch_size(R, C), NaN);
    muon_update(W.data(), with_master ? master.data() : nullptr, G.data(), m.data(), R, C, lr, mu, nesterov, ns_steps, wd,
                grad_scale, scratch.data(), st);
    vecd Wd = W0, Md = M0, md = m0;
    muon_direct(Wd, with_master ? &Md : nullptr, G, md, R, C, lr, mu, nesterov, ns_steps, wd, grad_scale);
    const double err = std::max(max_abs_diff(W, Wd), max_abs_diff(master, Md)), merr = max_abs_diff(m, md);
    check(err < 1e-12 && merr < 1e-15 && (!with_master || bitwise_equal(W, master)),
          ("muon_update vs the formulas written out (weights, master, momentum) " + tag).c_str(),
          "weights err %.3g, momentum err %.3g, param == master: %d", err, merr, (int)bitwise_equal(W, master));
    // the update itself, relative: lr sqrt(max(1, R/C)) O is ~1e-2 of the weights
    vecd upd(n), upd_d(n);
    const double decay = 1 - (double)lr * wd;
    const vecd& w0 = with_master ? M0 : W0;
    for (size_t i = 0; i < n; i++) {
        upd[i] = w0[i] * decay - W[i];
        upd_d[i] = w0[i] * decay - Wd[i];
    }
    const double uerr = max_abs_diff(upd, upd_d) / max_abs(upd_d);
    check(uerr < 1e-11, ("muon_update: the update lr sqrt(max(1, R/C)) O vs the formulas " + tag).c_str(), "rel err %.3g", uerr);
}

// (3) two steps: m2 = mu (mu m0 + s1 g1) + s2 g2, and the second step's weights from the first step's state
static void test_muon_two_steps(int R, int C, bool nesterov) {
    const std::string tag = fmt("R=%d C=%d nesterov=%d", R, C, nesterov);
    const size_t n = (size_t)R * C;
    const float lr = 0.05f, mu = 0.9f, wd = 0.1f, s1 = 0.8f, s2 = 0.6f;
    const vecd W0 = rand_vec(n), G1 = normal_vec(n), G2 = normal_vec(n), m0 = rand_vec(n, -0.1, 0.1);
    vecd W = W0, m = m0, scratch(muon_scratch_size(R, C), NaN);
    muon_update(W.data(), nullptr, G1.data(), m.data(), R, C, lr, mu, nesterov, 5, wd, s1, scratch.data(), st);
    const vecd W1 = W, m1 = m;
    muon_update(W.data(), nullptr, G2.data(), m.data(), R, C, lr, mu, nesterov, 5, wd, s2, scratch.data(), st);
    double merr = 0;
    for (size_t i = 0; i < n; i++) {
        const double want = (double)mu * ((double)mu * m0[i] + (double)s1 * G1[i]) + (double)s2 * G2[i];
        merr = fmax(merr, fabs(m[i] - want));
    }
    check(merr < 1e-15, ("muon_update: momentum after two steps == mu (mu m0 + s1 g1) + s2 g2 " + tag).c_str(), "err %.3g", merr);
    vecd Wd = W0, md = m0;
    muon_direct(Wd, nullptr, G1, md, R, C, lr, mu, nesterov, 5, wd, s1);
    const double err1 = max_abs_diff(W1, Wd);
    muon_direct(Wd, nullptr, G2, md, R, C, lr, mu, nesterov, 5, wd, s2);
    const double err2 = max_abs_diff(W, Wd);
    check(err1 < 1e-12 && err2 < 1e-12, ("muon_update: two steps vs the formulas written out " + tag).c_str(),
          "err after step 1 %.3g, step 2 %.3g", err1, err2);
    // the second step differs from a first step with G2 from zero momentum: the state is used
    vecd W_fresh = W1, m_zero(n, 0.0);
    muon_update(W_fresh.data(), nullptr, G2.data(), m_zero.data(), R, C, lr, mu, nesterov, 5, wd, s2, scratch.data(), st);
    check(max_abs_diff(W_fresh, W) > 1e-6, ("muon_update: the second step depends on the first step's momentum " + tag).c_str(), "");
}

// A zero gradient and zero momentum: O = 0 (0 / (0 + 1e-7) through the iteration), only the decay is applied;
// and the scratch's previous contents do not matter.
static void test_muon_edges() {
    const int R = 6, C = 10;
    const size_t n = (size_t)R * C;
    const vecd W0 = rand_vec(n), zero(n, 0.0);
    vecd W = W0, m = zero, scratch(muon_scratch_size(R, C), NaN);
    muon_update(W.data(), nullptr, zero.data(), m.data(), R, C, 0.1f, 0.95f, true, 5, 0.5f, 1.0f, scratch.data(), st);
    vecd want = W0;
    for (double& w : want) w *= 1 - (double)0.1f * 0.5f;
    check(bitwise_equal(W, want) && bitwise_equal(m, zero), "muon_update with a zero gradient: only the weight decay", "err %.3g",
          max_abs_diff(W, want));
    const vecd G = normal_vec(n), m0 = rand_vec(n);
    vecd W1 = W0, m1 = m0, W2 = W0, m2 = m0, s1(scratch.size(), NaN), s2 = rand_vec(scratch.size(), -1e6, 1e6);
    muon_update(W1.data(), nullptr, G.data(), m1.data(), R, C, 0.1f, 0.95f, true, 5, 0.1f, 1.0f, s1.data(), st);
    muon_update(W2.data(), nullptr, G.data(), m2.data(), R, C, 0.1f, 0.95f, true, 5, 0.1f, 1.0f, s2.data(), st);
    check(bitwise_equal(W1, W2) && bitwise_equal(m1, m2), "muon_update does not read the scratch's previous contents", "");
    check(muon_scratch_size(R, C) == 2 * 64 + 2 * 64 && muon_scratch_size(100, 30) == 2 * 3008 + 2 * 960 &&
          muon_scratch_size(0, 5) == 0, "muon_scratch_size: X, X', A, B, each padded to 64 elements", "%zu %zu",
          muon_scratch_size(R, C), muon_scratch_size(100, 30));
}

int main() {
    test_seed(20261202);
    test_softmax_xent(7, 11, 11);
    test_softmax_xent(5, 13, 16);
    test_softmax_xent(4, 40, 48);
    test_lm_head_loss(7, 5, 13);
    test_lm_head_loss(10, 8, 21);
    test_lora(7, 9, 6, 3, 2.0);
    test_lora(5, 12, 10, 4, 0.5);     // rsLoRA-like scale alpha / sqrt(r)
    test_lora_block(7, 9, 6, 3, 20, 4);      // the q part of a fused (q | k | v) row
    test_lora_block(5, 8, 40, 2, 72, 32);    // the tiled path (blocks of 32 and 16 columns) at an offset
    test_muon_ns(12, 7);                     // tall: the iteration runs on the transpose
    test_muon_ns(7, 12);
    test_muon_ns(9, 9);
    test_muon_ns(40, 24);                    // the GEMM's tiled path (blocks of 16 columns)
    for (int nesterov = 0; nesterov < 2; nesterov++)
        for (int with_master = 0; with_master < 2; with_master++) {
            test_muon_update(12, 7, nesterov, with_master, 0.1f, 0.7f, 5);
            test_muon_update(7, 12, nesterov, with_master, 0.0f, 1.0f, 5);
        }
    test_muon_update(9, 9, true, false, 0.1f, 0.25f, 5);
    test_muon_update(40, 24, true, true, 0.01f, 0.5f, 5);
    test_muon_update(24, 40, false, false, 0.01f, 2.0f, 3);
    test_muon_update(12, 7, true, false, 0.1f, 0.7f, 0);   // no iteration: O = u / ||u||
    test_muon_two_steps(12, 7, true);
    test_muon_two_steps(7, 12, false);
    test_muon_edges();
    return test_summary();
}
