// Tests of the language-model ops (the Qwen2 / CVAE trainer's), through their launchers in double precision
// (-DENABLE_FP64): the softmax cross-entropy over a vocabulary with its in-place backward, the chunked lm head
// (kernels/lm_head_loss.cuh) and LoRA (kernels/lora.cuh). Forward passes against direct formulas, backward passes
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
    return test_summary();
}
