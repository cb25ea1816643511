// Tests of every op's CPU reference (kernels/*.cuh): forward passes against direct formulas, backward passes
// against central differences in double, and the gradient conventions (parameter gradients +=, activation
// gradients = unless an accumulate flag says otherwise).
//
//   g++ -O2 -std=c++17 -fopenmp test/test_ops.cpp -o build/test_ops && build/test_ops
//
// Gradient checks: random inputs from a fixed seed, a random upstream gradient G, the scalar
// L = sum(G * out) (plus the op's other loss terms where it has some), and for EVERY input element
// (L(x + h) - L(x - h)) / 2h with h = 1e-6, compared with the analytic gradient at a relative tolerance of 1e-6.
#include <functional>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../common/device.h"
#include "../common/rand.h"
#include "../kernels/act.cuh"
#include "../kernels/adam.cuh"
#include "../kernels/add.cuh"
#include "../kernels/attention.cuh"
#include "../kernels/convert.cuh"
#include "../kernels/ema.cuh"
#include "../kernels/embedding.cuh"
#include "../kernels/global_norm.cuh"
#include "../kernels/masked_mean.cuh"
#include "../kernels/matmul.cuh"
#include "../kernels/puzzle_embedding.cuh"
#include "../kernels/q_halt_loss.cuh"
#include "../kernels/rmsnorm.cuh"
#include "../kernels/rope.cuh"
#include "../kernels/rows.cuh"
#include "../kernels/stablemax.cuh"
#include "../kernels/swiglu.cuh"
#include "../kernels/variational.cuh"
#include "test.h"
#include "op_test.h"

static const double NaN = nan("");


// Checks "a == base + delta" up to the rounding of one addition:
// max over i of |a[i] - (base[i] + delta[i])| / (|base[i]| + |delta[i]|).
static double added_err(const vecd& a, const vecd& base, const vecd& delta) {
    double worst = 0;
    for (size_t i = 0; i < base.size(); i++) {
        double err = fabs(a[i] - (base[i] + delta[i])) / (1e-300 + fabs(base[i]) + fabs(delta[i]));
        if (!(err <= worst)) worst = isnan(err) ? INFINITY : err;
    }
    return worst;
}

#ifdef _OPENMP
static void set_threads(int n) { omp_set_num_threads(n); }
#endif

// =========================================================================================================
// matmul

template <typename T>
static vecd naive_linear(const std::vector<T>& inp, const std::vector<T>& w, const T* bias, int N, int C, int OC) {
    vecd out((size_t)N * OC);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            long double s = bias ? (long double)bias[o] : 0.0L;
            for (int c = 0; c < C; c++) s += (long double)inp[(size_t)n * C + c] * (long double)w[(size_t)o * C + c];
            out[(size_t)n * OC + o] = (double)s;
        }
    return out;
}

template <typename T>
static void test_matmul_forward(int N, int C, int OC, bool with_bias, double tol) {
    auto inp = cast_vec<T>(rand_vec((size_t)N * C)), w = cast_vec<T>(rand_vec((size_t)OC * C)), b = cast_vec<T>(rand_vec(OC));
    std::vector<T> out((size_t)N * OC, (T)NaN);
    const T* bias = with_bias ? b.data() : nullptr;
    matmul_forward_ref(out.data(), inp.data(), w.data(), bias, N, C, OC);
    vecd ref = naive_linear(inp, w, bias, N, C, OC);
    size_t where = 0;
    double err = max_rel_error(out.data(), ref.data(), out.size(), 1.0, &where);
    check(err <= tol, fmt("matmul forward %s N=%d C=%d OC=%d %s vs naive loop", sizeof(T) == 4 ? "float" : "double", N, C, OC,
                          with_bias ? "bias" : "no bias").c_str(),
          "max err %.3g (tol %.1g) at %zu: %.9g vs %.9g", err, tol, where, (double)out[where], ref[where]);
}

static void test_matmul_backward(int N, int C, int OC, bool with_bias) {
    std::string tag = fmt("N=%d C=%d OC=%d %s", N, C, OC, with_bias ? "bias" : "no bias");
    vecd inp = rand_vec((size_t)N * C), w = rand_vec((size_t)OC * C), b = rand_vec(OC), G = rand_vec((size_t)N * OC);
    auto loss = [&]() {
        vecd out((size_t)N * OC);
        matmul_forward_ref(out.data(), inp.data(), w.data(), with_bias ? b.data() : nullptr, N, C, OC);
        return dotl(G, out);
    };
    vecd dinp((size_t)N * C, NaN), dw((size_t)OC * C, 0.0), db(OC, 0.0);
    matmul_backward_ref(dinp.data(), dw.data(), with_bias ? db.data() : nullptr, G.data(), inp.data(), w.data(), N, C, OC, false);
    gradcheck("matmul gradcheck dinp " + tag, inp, dinp, loss);
    gradcheck("matmul gradcheck dweight " + tag, w, dw, loss);
    if (with_bias) gradcheck("matmul gradcheck dbias " + tag, b, db, loss);

    // accumulate_dinp = true adds to dinp; dweight and dbias always add
    vecd Ri = rand_vec(dinp.size()), Rw = rand_vec(dw.size()), Rb = rand_vec(db.size());
    vecd dinp2 = Ri, dw2 = Rw, db2 = Rb;
    matmul_backward_ref(dinp2.data(), dw2.data(), db2.data(), G.data(), inp.data(), w.data(), N, C, OC, true);
    double e1 = added_err(dinp2, Ri, dinp), e2 = added_err(dw2, Rw, dw);
    vecd db_fresh(OC, 0.0);
    matmul_backward_ref((double*)nullptr, (double*)nullptr, db_fresh.data(), G.data(), inp.data(), w.data(), N, C, OC, false);
    double e3 = added_err(db2, Rb, db_fresh);
    check(e1 < 1e-12, ("matmul accumulate_dinp=true adds to dinp " + tag).c_str(), "err %.3g", e1);
    check(e2 < 1e-12, ("matmul dweight accumulates (+=) " + tag).c_str(), "err %.3g", e2);
    check(e3 < 1e-12, ("matmul dbias accumulates (+=) " + tag).c_str(), "err %.3g", e3);

    // accumulate_dinp = false overwrites whatever was there (NaN pre-fill above, random here)
    vecd dinp3 = rand_vec(dinp.size());
    matmul_backward_ref(dinp3.data(), (double*)nullptr, (double*)nullptr, G.data(), inp.data(), w.data(), N, C, OC, false);
    check(bitwise_equal(dinp3, dinp), ("matmul accumulate_dinp=false overwrites dinp; null dweight/dbias " + tag).c_str(),
          "dinp differs from the NaN-prefilled run");
    vecd dw4((size_t)OC * C, 0.0);
    matmul_backward_ref((double*)nullptr, dw4.data(), (double*)nullptr, G.data(), inp.data(), w.data(), N, C, OC, false);
    check(bitwise_equal(dw4, dw), ("matmul null dinp still gives dweight " + tag).c_str(), "dweight differs");
}

static void test_matmul_threads() {
#ifdef _OPENMP
    const int N = 67, C = 50, OC = 70;
    auto inp = cast_vec<float>(rand_vec((size_t)N * C)), w = cast_vec<float>(rand_vec((size_t)OC * C));
    auto b = cast_vec<float>(rand_vec(OC)), G = cast_vec<float>(rand_vec((size_t)N * OC));
    auto R = cast_vec<float>(rand_vec((size_t)OC * C));
    vecf out[2], dinp[2], dw[2], db[2];
    const int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        set_threads(k + 1);
        out[k].assign((size_t)N * OC, 0.f);
        dinp[k].assign((size_t)N * C, 0.f);
        dw[k] = R;
        db[k].assign(OC, 0.5f);
        matmul_forward_ref(out[k].data(), inp.data(), w.data(), b.data(), N, C, OC);
        matmul_backward_ref(dinp[k].data(), dw[k].data(), db[k].data(), G.data(), inp.data(), w.data(), N, C, OC, false);
    }
    set_threads(saved);
    check(bitwise_equal(out[0], out[1]) && bitwise_equal(dinp[0], dinp[1]) && bitwise_equal(dw[0], dw[1]) &&
              bitwise_equal(db[0], db[1]),
          "matmul forward/backward bitwise identical with 1 and 2 OpenMP threads", "results differ");
#else
    skip("matmul forward/backward bitwise identical with 1 and 2 OpenMP threads", "built without OpenMP");
#endif
}

static void test_matmul() {
    const int shapes[][3] = {{7, 10, 13}, {8, 12, 64}, {37, 19, 70}, {5, 33, 31}, {1, 3, 1}, {66, 41, 97}};
    for (auto& s : shapes)
        for (int bias = 0; bias < 2; bias++) {
            test_matmul_forward<float>(s[0], s[1], s[2], bias, 2e-6);
            test_matmul_forward<double>(s[0], s[1], s[2], bias, 1e-14);
        }
    test_matmul_backward(7, 10, 13, true);
    test_matmul_backward(7, 10, 13, false);
    test_matmul_backward(9, 45, 35, true);
    test_matmul_threads();
}

// =========================================================================================================
// rmsnorm

static void test_rmsnorm(int N, int C, bool with_res) {
    std::string tag = fmt("N=%d C=%d %s", N, C, with_res ? "with residual" : "no residual");
    const float eps = 1e-5f;
    vecd x = rand_vec((size_t)N * C, -2, 2), r = rand_vec((size_t)N * C, -1, 1), G = rand_vec((size_t)N * C);
    const double* res = with_res ? r.data() : nullptr;
    vecd out((size_t)N * C, NaN), rstd(N, NaN);
    rmsnorm_forward_ref(out.data(), rstd.data(), x.data(), res, N, C, eps);
    vecd out_ref(out.size()), rstd_ref(N);
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) {
            double s = x[(size_t)n * C + c] + (with_res ? r[(size_t)n * C + c] : 0.0);
            ss += s * s;
        }
        rstd_ref[n] = 1.0 / sqrt(ss / C + (double)eps);
        for (int c = 0; c < C; c++)
            out_ref[(size_t)n * C + c] = (x[(size_t)n * C + c] + (with_res ? r[(size_t)n * C + c] : 0.0)) * rstd_ref[n];
    }
    double e1 = max_rel_error(out.data(), out_ref.data(), out.size(), 1e-12), e2 = max_rel_error(rstd.data(), rstd_ref.data(), N, 1e-12);
    check(e1 < 1e-13 && e2 < 1e-13, ("rmsnorm forward vs formula " + tag).c_str(), "out err %.3g, rstd err %.3g", e1, e2);

    vecd y = x, rstd2(N);   // in place: out aliases inp
    rmsnorm_forward_ref(y.data(), rstd2.data(), y.data(), res, N, C, eps);
    check(bitwise_equal(y, out) && bitwise_equal(rstd2, rstd), ("rmsnorm forward in place (out == inp) " + tag).c_str(), "differs");

    auto loss = [&]() {
        vecd o((size_t)N * C), rs(N);
        rmsnorm_forward_ref(o.data(), rs.data(), x.data(), with_res ? r.data() : nullptr, N, C, eps);
        return dotl(G, o);
    };
    vecd dx((size_t)N * C, NaN);
    rmsnorm_backward_ref(dx.data(), G.data(), out.data(), rstd.data(), N, C, false);
    gradcheck("rmsnorm gradcheck dinp " + tag, x, dx, loss);
    if (with_res) gradcheck("rmsnorm gradcheck dresidual " + tag, r, dx, loss);

    vecd R = rand_vec(dx.size()), dx2 = R;
    rmsnorm_backward_ref(dx2.data(), G.data(), out.data(), rstd.data(), N, C, true);
    double e3 = added_err(dx2, R, dx);
    check(e3 < 1e-12, ("rmsnorm backward accumulate=true adds " + tag).c_str(), "err %.3g", e3);
    vecd g2 = G;   // dinp aliases dout
    rmsnorm_backward_ref(g2.data(), g2.data(), out.data(), rstd.data(), N, C, false);
    check(bitwise_equal(g2, dx), ("rmsnorm backward overwrites (NaN pre-fill), in place dinp == dout " + tag).c_str(), "differs");
}

// RMSNorm with a weight (Qwen2's): the forward against its formula, dinp and dweight against central differences
// of sum G * out, accumulate on and off, dweight added onto random values, null dweight, in place dinp == dout.
static void test_rmsnorm_weighted(int N, int C) {
    const std::string tag = fmt("N=%d C=%d", N, C);
    const float eps = 1e-5f;
    vecd x = rand_vec((size_t)N * C, -2, 2), w = rand_vec(C, 0.5, 1.5), G = rand_vec((size_t)N * C);
    vecd out((size_t)N * C, NaN), rstd(N, NaN);
    rmsnorm_weighted_forward_ref(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    vecd out_ref(out.size()), rstd_ref(N);
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += x[(size_t)n * C + c] * x[(size_t)n * C + c];
        rstd_ref[n] = 1.0 / sqrt(ss / C + (double)eps);
        for (int c = 0; c < C; c++) out_ref[(size_t)n * C + c] = w[c] * x[(size_t)n * C + c] * rstd_ref[n];
    }
    const double e1 = max_rel_error(out.data(), out_ref.data(), out.size(), 1e-12);
    const double e2 = max_rel_error(rstd.data(), rstd_ref.data(), N, 1e-12);
    check(e1 < 1e-13 && e2 < 1e-13, ("rmsnorm_weighted forward vs formula " + tag).c_str(), "out err %.3g, rstd err %.3g", e1, e2);

    auto loss = [&]() {
        vecd o((size_t)N * C), rs(N);
        rmsnorm_weighted_forward_ref(o.data(), rs.data(), x.data(), w.data(), N, C, eps);
        return dotl(G, o);
    };
    vecd dx((size_t)N * C, NaN), dw(C, 0.0);
    rmsnorm_weighted_backward_ref(dx.data(), dw.data(), G.data(), x.data(), w.data(), rstd.data(), N, C, false);
    gradcheck("rmsnorm_weighted gradcheck dinp " + tag, x, dx, loss);
    gradcheck("rmsnorm_weighted gradcheck dweight " + tag, w, dw, loss);

    const vecd Rx = rand_vec(dx.size()), Rw = rand_vec(C);
    vecd dx2 = Rx, dw2 = Rw;
    rmsnorm_weighted_backward_ref(dx2.data(), dw2.data(), G.data(), x.data(), w.data(), rstd.data(), N, C, true);
    const double e3 = added_err(dx2, Rx, dx), e4 = added_err(dw2, Rw, dw);
    check(e3 < 1e-12 && e4 < 1e-12, ("rmsnorm_weighted backward accumulate=true adds to dinp, dweight adds " + tag).c_str(),
          "dinp err %.3g, dweight err %.3g", e3, e4);
    vecd dx3((size_t)N * C, NaN), dw3 = Rw;
    rmsnorm_weighted_backward_ref(dx3.data(), dw3.data(), G.data(), x.data(), w.data(), rstd.data(), N, C, false);
    const double e5 = added_err(dw3, Rw, dw);
    check(bitwise_equal(dx3, dx) && e5 < 1e-12, ("rmsnorm_weighted backward accumulate=false overwrites dinp (NaN pre-fill), dweight still adds " + tag).c_str(),
          "dinp differs or dweight err %.3g", e5);
    vecd g2 = G, dw4 = Rw;   // dinp aliases dout; dweight is computed before dinp overwrites dout
    rmsnorm_weighted_backward_ref(g2.data(), dw4.data(), g2.data(), x.data(), w.data(), rstd.data(), N, C, false);
    check(bitwise_equal(g2, dx) && bitwise_equal(dw4, dw3), ("rmsnorm_weighted backward in place dinp == dout " + tag).c_str(), "differs");
    vecd dx5((size_t)N * C, NaN);
    rmsnorm_weighted_backward_ref(dx5.data(), (double*)nullptr, G.data(), x.data(), w.data(), rstd.data(), N, C, false);
    check(bitwise_equal(dx5, dx), ("rmsnorm_weighted backward dweight = null (frozen weight) " + tag).c_str(), "dinp differs");
}

// =========================================================================================================
// rope

static void test_rope(int B, int T, int NH, int HD, int skip_rows, float theta) {
    std::string tag = fmt("B=%d T=%d NH=%d HD=%d skip=%d theta=%g", B, T, NH, HD, skip_rows, theta);
    const int row_stride = 3 * NH * HD, n_heads = 2 * NH, half = HD / 2, n_pos = T - skip_rows;
    vecd cs((size_t)n_pos * HD, NaN), sn((size_t)n_pos * HD, NaN);
    rope_tables(cs.data(), sn.data(), n_pos, HD, theta);
    bool cols = true, row0 = true;
    double tab_err = 0;
    for (int p = 0; p < n_pos; p++)
        for (int i = 0; i < half; i++) {
            const size_t a = (size_t)p * HD + i;
            cols &= cs[a] == cs[a + half] && sn[a] == sn[a + half];
            const double ang = p * pow((double)theta, -2.0 * i / HD);
            tab_err = fmax(tab_err, fmax(fabs(cs[a] - cos(ang)), fabs(sn[a] - sin(ang))));
        }
    for (int i = 0; i < HD; i++) row0 &= cs[i] == 1.0 && sn[i] == 0.0;
    check(cols, ("rope_tables columns i and i+HD/2 equal " + tag).c_str(), "they differ");
    check(row0 && tab_err < 1e-5, ("rope_tables vs cos/sin, position 0 = (1, 0) " + tag).c_str(), "row0 ok %d, max err %.3g", row0, tab_err);

    const size_t n = (size_t)B * T * row_stride;
    vecd x = rand_vec(n), y = x;
    rope_rotate_ref(y.data(), cs.data(), sn.data(), B, T, n_heads, HD, row_stride, skip_rows, +1);
    double ferr = 0;
    bool untouched = true, pos0 = true;
    for (int bt = 0; bt < B * T; bt++) {
        const int t = bt % T;
        const double* xr = x.data() + (size_t)bt * row_stride;
        const double* yr = y.data() + (size_t)bt * row_stride;
        for (int c = 0; c < row_stride; c++) {
            if (t < skip_rows || c >= n_heads * HD) untouched &= xr[c] == yr[c];
            if (t == skip_rows) pos0 &= xr[c] == yr[c];
        }
        if (t < skip_rows) continue;
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < half; i++) {
                const double ang = (t - skip_rows) * pow((double)theta, -2.0 * i / HD);
                const double x1 = xr[h * HD + i], x2 = xr[h * HD + i + half];
                ferr = fmax(ferr, fabs(yr[h * HD + i] - (x1 * cos(ang) - x2 * sin(ang))));
                ferr = fmax(ferr, fabs(yr[h * HD + i + half] - (x2 * cos(ang) + x1 * sin(ang))));
            }
    }
    check(ferr < 1e-5, ("rope forward vs direct cos/sin formula " + tag).c_str(), "max abs err %.3g", ferr);
    check(untouched, ("rope leaves skip rows and the v heads untouched " + tag).c_str(), "something changed");
    check(pos0, ("rope leaves the position-0 row unchanged " + tag).c_str(), "it changed");

    vecd z = y;
    rope_rotate_ref(z.data(), cs.data(), sn.data(), B, T, n_heads, HD, row_stride, skip_rows, -1);
    double rt = max_rel_error(z.data(), x.data(), n, 1e-3);
    check(rt < 1e-6, ("rope backward(forward(x)) == x " + tag).c_str(), "max err %.3g", rt);

    auto xf = cast_vec<float>(x), csf = cast_vec<float>(cs), snf = cast_vec<float>(sn), zf = xf;
    rope_rotate_ref(zf.data(), csf.data(), snf.data(), B, T, n_heads, HD, row_stride, skip_rows, +1);
    rope_rotate_ref(zf.data(), csf.data(), snf.data(), B, T, n_heads, HD, row_stride, skip_rows, -1);
    double rtf = max_rel_error(zf.data(), xf.data(), n, 1.0);   // |x| <= 1: an absolute error
    check(rtf < 1e-6, ("rope float backward(forward(x)) == x " + tag).c_str(), "max err %.3g", rtf);

    vecd G = rand_vec(n), dx = G;
    rope_rotate_ref(dx.data(), cs.data(), sn.data(), B, T, n_heads, HD, row_stride, skip_rows, -1);
    auto loss = [&]() {
        vecd o = x;
        rope_rotate_ref(o.data(), cs.data(), sn.data(), B, T, n_heads, HD, row_stride, skip_rows, +1);
        return dotl(G, o);
    };
    gradcheck("rope gradcheck " + tag, x, dx, loss);
}

// =========================================================================================================
// attention

// Direct formula, one query at a time: query head h reads kv head h / (NH / NKV); query i sees key j iff the key
// mask allows it and, when causal, j <= i + Tk - Tq.
static void naive_attention(vecd& out, vecd& lse, const double* q, const double* k, const double* v, const uint8_t* mask,
                            int B, int Tq, int Tk, int NH, int NKV, int HD, int qs, int kvs, bool causal) {
    const int C = NH * HD;
    out.assign((size_t)B * Tq * C, 0.0);
    lse.assign((size_t)B * NH * Tq, 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < Tq; i++) {
                const int g = h / (NH / NKV);
                auto sees = [&](int j) { return (!mask || mask[b * Tk + j]) && (!causal || j <= i + Tk - Tq); };
                vecd s(Tk, 0.0);
                double mx = -INFINITY;
                for (int j = 0; j < Tk; j++) {
                    if (!sees(j)) continue;
                    double d = 0;
                    for (int e = 0; e < HD; e++) d += q[(size_t)(b * Tq + i) * qs + h * HD + e] * k[(size_t)(b * Tk + j) * kvs + g * HD + e];
                    s[j] = d / sqrt((double)HD);
                    mx = fmax(mx, s[j]);
                }
                double Z = 0;
                for (int j = 0; j < Tk; j++) if (sees(j)) Z += exp(s[j] - mx);
                lse[(size_t)(b * NH + h) * Tq + i] = mx == -INFINITY ? -INFINITY : mx + log(Z);
                for (int j = 0; j < Tk; j++) {
                    if (!sees(j)) continue;
                    const double p = exp(s[j] - mx) / Z;
                    for (int e = 0; e < HD; e++)
                        out[(size_t)(b * Tq + i) * C + h * HD + e] += p * v[(size_t)(b * Tk + j) * kvs + g * HD + e];
                }
            }
}

// lse may hold -inf (a query that sees no key): equal there, else within tol relatively.
static bool lse_close(const vecd& got, const vecd& ref, double tol) {
    bool ok = got.size() == ref.size();
    for (size_t i = 0; ok && i < ref.size(); i++)
        ok = isinf(ref[i]) ? got[i] == ref[i] : fabs(got[i] - ref[i]) < tol * (1 + fabs(ref[i]));
    return ok;
}
static std::string attention_options(int NH, int NKV, bool causal) {
    return (NKV != NH ? fmt(" NKV=%d", NKV) : std::string()) + (causal ? " causal" : "");
}

// Self-attention from fused rows [q: NH*HD | k: NKV*HD | v: NKV*HD].
static void test_attention_self(int B, int T, int NH, int NKV, int HD, bool with_mask, bool causal) {
    std::string tag = fmt("self fused qkv B=%d T=%d NH=%d HD=%d %s", B, T, NH, HD, with_mask ? "partial mask" : "no mask") +
                      attention_options(NH, NKV, causal);
    const int C = NH * HD, S = (NH + 2 * NKV) * HD, KO = C, VO = C + NKV * HD;
    vecd qkv = rand_vec((size_t)B * T * S, -1.5, 1.5), G = rand_vec((size_t)B * T * C);
    std::vector<uint8_t> mask((size_t)B * T, 1);
    if (with_mask)
        for (int b = 0; b < B; b++) { mask[b * T + (b % T)] = 0; mask[b * T + (b + 2) % T] = 0; }
    const uint8_t* m = with_mask ? mask.data() : nullptr;
    vecd out((size_t)B * T * C, NaN), lse((size_t)B * NH * T, NaN), out_ref, lse_ref;
    attention_forward_ref(out.data(), lse.data(), qkv.data(), qkv.data() + KO, qkv.data() + VO, m, B, T, T, NH, NKV, HD, S, S, causal);
    naive_attention(out_ref, lse_ref, qkv.data(), qkv.data() + KO, qkv.data() + VO, m, B, T, T, NH, NKV, HD, S, S, causal);
    double e1 = max_rel_error(out.data(), out_ref.data(), out.size(), 1e-6);
    check(e1 < 1e-12 && lse_close(lse, lse_ref, 1e-12), ("attention forward vs naive softmax(QK^T/sqrt(HD))V " + tag).c_str(),
          "out err %.3g, lse differs", e1);

    vecd dqkv(qkv.size(), NaN);
    attention_backward_ref(dqkv.data(), dqkv.data() + KO, dqkv.data() + VO, G.data(), out.data(), lse.data(), qkv.data(),
                           qkv.data() + KO, qkv.data() + VO, m, B, T, T, NH, NKV, HD, S, S, causal);
    check(all_finite(dqkv.data(), dqkv.size()), ("attention backward overwrites all of dqkv (NaN pre-fill) " + tag).c_str(), "NaN left");
    auto loss = [&]() {
        vecd o((size_t)B * T * C), l((size_t)B * NH * T);
        attention_forward_ref(o.data(), l.data(), qkv.data(), qkv.data() + KO, qkv.data() + VO, m, B, T, T, NH, NKV, HD, S, S, causal);
        return dotl(G, o);
    };
    gradcheck("attention gradcheck dq,dk,dv " + tag, qkv, dqkv, loss);
}

// Separate q (B, Tq, NH*HD) and k, v (B, Tk, kv_stride = NKV*HD + kv_pad); batch 0: some keys masked; batch 1:
// every key masked; the rest: all keys valid.
static void test_attention_cross(int B, int Tq, int Tk, int NH, int NKV, int HD, int kv_pad, bool causal) {
    std::string tag = fmt("cross B=%d Tq=%d Tk=%d NH=%d HD=%d kv_stride=C+%d", B, Tq, Tk, NH, HD, kv_pad) +
                      attention_options(NH, NKV, causal);
    const int C = NH * HD, CK = NKV * HD, kvs = CK + kv_pad;
    vecd q = rand_vec((size_t)B * Tq * C, -1.5, 1.5), k = rand_vec((size_t)B * Tk * kvs, -1.5, 1.5);
    vecd v = rand_vec((size_t)B * Tk * kvs, -1.5, 1.5), G = rand_vec((size_t)B * Tq * C);
    std::vector<uint8_t> mask((size_t)B * Tk, 1);
    for (int j = 0; j < Tk; j++) { mask[j] = (j % 3 != 1); mask[Tk + j] = 0; }
    vecd out((size_t)B * Tq * C, NaN), lse((size_t)B * NH * Tq, NaN), out_ref, lse_ref;
    attention_forward_ref(out.data(), lse.data(), q.data(), k.data(), v.data(), mask.data(), B, Tq, Tk, NH, NKV, HD, C, kvs, causal);
    naive_attention(out_ref, lse_ref, q.data(), k.data(), v.data(), mask.data(), B, Tq, Tk, NH, NKV, HD, C, kvs, causal);
    double e1 = max_rel_error(out.data(), out_ref.data(), out.size(), 1e-6);
    const bool lse_ok = lse_close(lse, lse_ref, 1e-12);
    check(e1 < 1e-12 && lse_ok, ("attention forward vs naive, key mask " + tag).c_str(), "out err %.3g, lse ok %d", e1, lse_ok);
    bool b1_zero = all_equal(out.data() + (size_t)Tq * C, (size_t)Tq * C, 0.0) && all_equal(lse.data() + (size_t)NH * Tq, (size_t)NH * Tq, -(double)INFINITY);
    check(b1_zero, ("attention all keys masked: out exactly 0, lse -inf " + tag).c_str(), "not so");
    if (causal && Tq > Tk) {       // queries i < Tq - Tk see no key (in any batch row)
        bool none_zero = true;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < Tq - Tk; i++) {
                none_zero &= all_equal(out.data() + (size_t)(b * Tq + i) * C, (size_t)C, 0.0);
                for (int h = 0; h < NH; h++) none_zero &= lse[(size_t)(b * NH + h) * Tq + i] == -(double)INFINITY;
            }
        check(none_zero, ("attention causal queries before the first key: out exactly 0, lse -inf " + tag).c_str(), "not so");
    }

    const double SENT = 5.0;
    vecd dq(q.size(), NaN), dk(k.size(), NaN), dv(v.size(), NaN);
    for (size_t r = 0; r < (size_t)B * Tk; r++)
        for (int c = CK; c < kvs; c++) dk[r * kvs + c] = dv[r * kvs + c] = SENT;
    attention_backward_ref(dq.data(), dk.data(), dv.data(), G.data(), out.data(), lse.data(), q.data(), k.data(), v.data(),
                           mask.data(), B, Tq, Tk, NH, NKV, HD, C, kvs, causal);
    bool pad_ok = true, finite = all_finite(dq.data(), dq.size()), zero_b1 = all_equal(dq.data() + (size_t)Tq * C, (size_t)Tq * C, 0.0);
    bool masked_zero = true;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < Tk; j++) {
            const size_t r = (size_t)(b * Tk + j) * kvs;
            for (int c = 0; c < kvs; c++) {
                if (c >= CK) { pad_ok &= dk[r + c] == SENT && dv[r + c] == SENT; continue; }
                finite &= isfinite(dk[r + c]) && isfinite(dv[r + c]);
                if (!mask[b * Tk + j]) masked_zero &= dk[r + c] == 0.0 && dv[r + c] == 0.0;
                if (b == 1) zero_b1 &= dk[r + c] == 0.0 && dv[r + c] == 0.0;
            }
        }
    check(finite, ("attention backward overwrites dq, dk, dv (NaN pre-fill), all finite " + tag).c_str(), "NaN/inf left");
    check(zero_b1, ("attention all-masked batch row: dq, dk, dv exactly 0 " + tag).c_str(), "nonzero gradient");
    check(masked_zero, ("attention masked keys get zero dk, dv " + tag).c_str(), "nonzero gradient");
    if (kv_pad) check(pad_ok, ("attention backward leaves kv_stride padding untouched " + tag).c_str(), "padding written");
    for (size_t r = 0; r < (size_t)B * Tk; r++)
        for (int c = CK; c < kvs; c++) dk[r * kvs + c] = dv[r * kvs + c] = 0.0;   // padding does not affect L

    auto loss = [&]() {
        vecd o((size_t)B * Tq * C), l((size_t)B * NH * Tq);
        attention_forward_ref(o.data(), l.data(), q.data(), k.data(), v.data(), mask.data(), B, Tq, Tk, NH, NKV, HD, C, kvs, causal);
        return dotl(G, o);
    };
    gradcheck("attention gradcheck dq " + tag, q, dq, loss);
    gradcheck("attention gradcheck dk " + tag, k, dk, loss);
    gradcheck("attention gradcheck dv " + tag, v, dv, loss);
}

// GQA is attention over kv heads repeated NH / NKV times (Hugging Face's repeat_kv): the same out and lse (bitwise:
// the same arithmetic), the same dq, and dk, dv of kv head g the sum of those of its repeated copies.
static void test_attention_gqa_repeat(int B, int Tq, int Tk, int NH, int NKV, int HD, bool causal) {
    std::string tag = fmt("B=%d Tq=%d Tk=%d NH=%d NKV=%d HD=%d%s", B, Tq, Tk, NH, NKV, HD, causal ? " causal" : "");
    const int C = NH * HD, CK = NKV * HD, group = NH / NKV;
    vecd q = rand_vec((size_t)B * Tq * C, -1.5, 1.5), k = rand_vec((size_t)B * Tk * CK, -1.5, 1.5);
    vecd v = rand_vec((size_t)B * Tk * CK, -1.5, 1.5), G = rand_vec((size_t)B * Tq * C);
    std::vector<uint8_t> mask((size_t)B * Tk, 1);
    for (int j = 0; j < Tk; j += 3) mask[j] = 0;
    vecd k_rep((size_t)B * Tk * C), v_rep((size_t)B * Tk * C);                  // (B, Tk, NH*HD)
    for (size_t r = 0; r < (size_t)B * Tk; r++)
        for (int h = 0; h < NH; h++)
            for (int d = 0; d < HD; d++) {
                k_rep[r * C + h * HD + d] = k[r * CK + h / group * HD + d];
                v_rep[r * C + h * HD + d] = v[r * CK + h / group * HD + d];
            }
    vecd out((size_t)B * Tq * C), lse((size_t)B * NH * Tq), out_r(out.size()), lse_r(lse.size());
    attention_forward_ref(out.data(), lse.data(), q.data(), k.data(), v.data(), mask.data(), B, Tq, Tk, NH, NKV, HD, C, CK, causal);
    attention_forward_ref(out_r.data(), lse_r.data(), q.data(), k_rep.data(), v_rep.data(), mask.data(), B, Tq, Tk, NH, NH, HD,
                          C, C, causal);
    check(bitwise_equal(out, out_r) && bitwise_equal(lse, lse_r), ("attention GQA forward == repeated kv heads " + tag).c_str(),
          "out or lse differ");

    vecd dq(q.size()), dk(k.size()), dv(v.size()), dq_r(q.size()), dk_r(k_rep.size()), dv_r(v_rep.size());
    attention_backward_ref(dq.data(), dk.data(), dv.data(), G.data(), out.data(), lse.data(), q.data(), k.data(), v.data(),
                           mask.data(), B, Tq, Tk, NH, NKV, HD, C, CK, causal);
    attention_backward_ref(dq_r.data(), dk_r.data(), dv_r.data(), G.data(), out.data(), lse.data(), q.data(), k_rep.data(),
                           v_rep.data(), mask.data(), B, Tq, Tk, NH, NH, HD, C, C, causal);
    vecd dk_sum(k.size(), 0.0), dv_sum(v.size(), 0.0);
    for (size_t r = 0; r < (size_t)B * Tk; r++)
        for (int h = 0; h < NH; h++)
            for (int d = 0; d < HD; d++) {
                dk_sum[r * CK + h / group * HD + d] += dk_r[r * C + h * HD + d];
                dv_sum[r * CK + h / group * HD + d] += dv_r[r * C + h * HD + d];
            }
    const double e_k = max_rel_error(dk.data(), dk_sum.data(), dk.size(), 1e-6), e_v = max_rel_error(dv.data(), dv_sum.data(), dv.size(), 1e-6);
    check(bitwise_equal(dq, dq_r) && e_k < 1e-12 && e_v < 1e-12 && max_abs(dk) > 0,
          ("attention GQA backward: dq == repeated, dk, dv == sums over the repeated heads " + tag).c_str(),
          "dq equal %d, dk err %.3g, dv err %.3g", (int)bitwise_equal(dq, dq_r), e_k, e_v);
}

// Causal attention is, query by query, non-causal attention of that one query under the key mask that also drops
// its future keys (j > i + Tk - Tq): out, lse and dq of each query, and dk, dv summed over the queries.
static void test_attention_causal_mask(int B, int Tq, int Tk, int NH, int NKV, int HD, bool with_mask) {
    std::string tag = fmt("B=%d Tq=%d Tk=%d NH=%d NKV=%d HD=%d %s", B, Tq, Tk, NH, NKV, HD, with_mask ? "key mask" : "no key mask");
    const int C = NH * HD, CK = NKV * HD;
    vecd q = rand_vec((size_t)B * Tq * C, -1.5, 1.5), k = rand_vec((size_t)B * Tk * CK, -1.5, 1.5);
    vecd v = rand_vec((size_t)B * Tk * CK, -1.5, 1.5), G = rand_vec((size_t)B * Tq * C);
    std::vector<uint8_t> mask((size_t)B * Tk, 1);
    if (with_mask)
        for (int b = 0; b < B; b++) mask[b * Tk + (b + 1) % Tk] = mask[b * Tk + (b + 4) % Tk] = 0;
    const uint8_t* m = with_mask ? mask.data() : nullptr;
    vecd out((size_t)B * Tq * C), lse((size_t)B * NH * Tq), dq(q.size()), dk(k.size()), dv(v.size());
    attention_forward_ref(out.data(), lse.data(), q.data(), k.data(), v.data(), m, B, Tq, Tk, NH, NKV, HD, C, CK, true);
    attention_backward_ref(dq.data(), dk.data(), dv.data(), G.data(), out.data(), lse.data(), q.data(), k.data(), v.data(), m,
                           B, Tq, Tk, NH, NKV, HD, C, CK, true);

    vecd out_m(out.size()), lse_m(lse.size()), dq_m(dq.size()), dk_m(dk.size(), 0.0), dv_m(dv.size(), 0.0);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < Tq; i++) {
            std::vector<uint8_t> mi(Tk);
            for (int j = 0; j < Tk; j++) mi[j] = (!m || m[b * Tk + j]) && j <= i + Tk - Tq;
            const double* qi = q.data() + (size_t)(b * Tq + i) * C;
            const double* kb = k.data() + (size_t)b * Tk * CK;
            const double* vb = v.data() + (size_t)b * Tk * CK;
            vecd o(C), l(NH), gq(C), gk((size_t)Tk * CK), gv((size_t)Tk * CK);
            attention_forward_ref(o.data(), l.data(), qi, kb, vb, mi.data(), 1, 1, Tk, NH, NKV, HD, C, CK, false);
            attention_backward_ref(gq.data(), gk.data(), gv.data(), G.data() + (size_t)(b * Tq + i) * C, o.data(), l.data(), qi,
                                   kb, vb, mi.data(), 1, 1, Tk, NH, NKV, HD, C, CK, false);
            for (int c = 0; c < C; c++) {
                out_m[(size_t)(b * Tq + i) * C + c] = o[c];
                dq_m[(size_t)(b * Tq + i) * C + c] = gq[c];
            }
            for (int h = 0; h < NH; h++) lse_m[(size_t)(b * NH + h) * Tq + i] = l[h];
            for (size_t e = 0; e < gk.size(); e++) {
                dk_m[(size_t)b * Tk * CK + e] += gk[e];
                dv_m[(size_t)b * Tk * CK + e] += gv[e];
            }
        }
    const double e_o = max_rel_error(out.data(), out_m.data(), out.size(), 1e-6);
    check(e_o < 1e-12 && lse_close(lse, lse_m, 1e-12), ("attention causal forward == per-query explicit mask " + tag).c_str(),
          "out err %.3g, or lse differs", e_o);
    const double e_q = max_rel_error(dq.data(), dq_m.data(), dq.size(), 1e-6), e_k = max_rel_error(dk.data(), dk_m.data(), dk.size(), 1e-6),
                 e_v = max_rel_error(dv.data(), dv_m.data(), dv.size(), 1e-6);
    check(e_q < 1e-12 && e_k < 1e-12 && e_v < 1e-12, ("attention causal backward == per-query explicit mask " + tag).c_str(),
          "dq err %.3g, dk err %.3g, dv err %.3g", e_q, e_k, e_v);
}

// =========================================================================================================
// swiglu, add

static void test_swiglu(int N, int I) {
    std::string tag = fmt("N=%d I=%d", N, I);
    vecd gu = rand_vec((size_t)N * 2 * I, -3, 3), G = rand_vec((size_t)N * I);
    vecd out((size_t)N * I, NaN);
    swiglu_forward_ref(out.data(), gu.data(), N, I);
    double err = 0;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < I; i++) {
            const double g = gu[(size_t)n * 2 * I + i], u = gu[(size_t)n * 2 * I + I + i];
            const double e = g / (1 + exp(-g)) * u;
            err = fmax(err, fabs(out[(size_t)n * I + i] - e) / (1e-12 + fabs(e)));
        }
    check(err < 1e-13, ("swiglu forward vs silu(gate)*up " + tag).c_str(), "max err %.3g", err);
    vecd d(gu.size(), NaN);
    swiglu_backward_ref(d.data(), G.data(), gu.data(), N, I);
    check(all_finite(d.data(), d.size()), ("swiglu backward overwrites (NaN pre-fill) " + tag).c_str(), "NaN left");
    auto loss = [&]() {
        vecd o((size_t)N * I);
        swiglu_forward_ref(o.data(), gu.data(), N, I);
        return dotl(G, o);
    };
    gradcheck("swiglu gradcheck dgate_up " + tag, gu, d, loss);
}

static void test_add() {
    const size_t n = 37;
    auto a = cast_vec<float>(rand_vec(n)), b = cast_vec<float>(rand_vec(n)), c = cast_vec<float>(rand_vec(n));
    vecf out(n, NAN), out3(n, NAN), e2(n), e3(n);
    for (size_t i = 0; i < n; i++) { e2[i] = a[i] + b[i]; e3[i] = a[i] + b[i] + c[i]; }
    add_forward_ref(out.data(), a.data(), b.data(), (const float*)nullptr, n);
    add_forward_ref(out3.data(), a.data(), b.data(), c.data(), n);
    vecf alias = a;
    add_forward_ref(alias.data(), alias.data(), b.data(), c.data(), n);
    check(bitwise_equal(out, e2), "add a + b (c null)", "differs");
    check(bitwise_equal(out3, e3), "add a + b + c", "differs");
    check(bitwise_equal(alias, e3), "add in place (out == a)", "differs");
}

// =========================================================================================================
// masked_mean

static void test_masked_mean(int B, int N, int C, bool with_mask) {
    std::string tag = fmt("B=%d N=%d C=%d %s", B, N, C, with_mask ? "mask with an all-zero row" : "mask null");
    vecd x = rand_vec((size_t)B * N * C), G = rand_vec((size_t)B * C);
    std::vector<uint8_t> mask((size_t)B * N, 1);
    if (with_mask) {
        for (int n = 0; n < N; n++) { mask[n] = (n % 2 == 0); mask[N + n] = 0; }   // row 0 partial, row 1 all zero
        if (B > 2) { for (int n = 0; n < N; n++) mask[2 * N + n] = 0; mask[2 * N + N - 1] = 1; }   // row 2: one valid
    }
    const uint8_t* m = with_mask ? mask.data() : nullptr;
    vecd out((size_t)B * C, NaN);
    masked_mean_forward_ref(out.data(), x.data(), m, B, N, C);
    vecd ref((size_t)B * C, 0.0);
    for (int b = 0; b < B; b++) {
        int cnt = 0;
        for (int n = 0; n < N; n++) {
            if (!mask[b * N + n]) continue;
            cnt++;
            for (int c = 0; c < C; c++) ref[(size_t)b * C + c] += x[((size_t)b * N + n) * C + c];
        }
        for (int c = 0; c < C; c++) ref[(size_t)b * C + c] /= cnt > 0 ? cnt : 1;
    }
    double err = max_rel_error(out.data(), ref.data(), out.size(), 1e-9);
    check(err < 1e-13, ("masked_mean forward vs direct mean " + tag).c_str(), "max err %.3g", err);
    if (with_mask) check(all_equal(out.data() + C, (size_t)C, 0.0), ("masked_mean all-zero mask row gives 0 " + tag).c_str(), "nonzero");
    vecd dx(x.size(), NaN);
    masked_mean_backward_ref(dx.data(), G.data(), m, B, N, C);
    check(all_finite(dx.data(), dx.size()), ("masked_mean backward overwrites (NaN pre-fill) " + tag).c_str(), "NaN left");
    auto loss = [&]() {
        vecd o((size_t)B * C);
        masked_mean_forward_ref(o.data(), x.data(), m, B, N, C);
        return dotl(G, o);
    };
    gradcheck("masked_mean gradcheck dinp " + tag, x, dx, loss);
}

// =========================================================================================================
// gather_rows / scatter_rows / broadcast_rows

static void test_rows() {
    const int n_in = 11, C = 6, n_rows = 5;
    const int index[n_rows] = {7, 2, 9, 0, 5};   // distinct; the last row (10) is not among them
    vecd inp = rand_vec((size_t)n_in * C), out((size_t)n_rows * C, NaN);
    gather_rows_ref(out.data(), inp.data(), index, n_rows, C);
    bool ok = true;
    for (int r = 0; r < n_rows; r++)
        for (int c = 0; c < C; c++) ok &= out[(size_t)r * C + c] == inp[(size_t)index[r] * C + c];
    check(ok, "gather_rows out[r] = inp[index[r]]", "differs");

    vecd x = rand_vec((size_t)n_rows * C), sc((size_t)n_in * C, NaN);
    scatter_rows_ref(sc.data(), x.data(), index, n_rows, n_in, C);
    bool placed = true, zero = true;
    for (int i = 0; i < n_in; i++) {
        int r = -1;
        for (int k = 0; k < n_rows; k++) if (index[k] == i) r = k;
        for (int c = 0; c < C; c++) {
            if (r >= 0) placed &= sc[(size_t)i * C + c] == x[(size_t)r * C + c];
            else zero &= sc[(size_t)i * C + c] == 0.0;
        }
    }
    check(placed, "scatter_rows out[index[r]] = inp[r]", "differs");
    check(zero, "scatter_rows zero-fills the other rows (NaN pre-fill)", "not zero");

    vecd y = rand_vec((size_t)n_in * C), gy((size_t)n_rows * C);
    gather_rows_ref(gy.data(), y.data(), index, n_rows, C);
    const double lhs = dotl(sc, y), rhs = dotl(x, gy);
    check(fabs(lhs - rhs) <= 1e-13 * (1 + fabs(lhs)), "scatter_rows/gather_rows adjoint: <scatter(x), y> == <x, gather(y)>",
          "%.17g vs %.17g", lhs, rhs);

    // put_rows: the indexed rows set (=) or added to (+=), every other row untouched
    for (bool accumulate : {false, true}) {
        vecd o = y;
        put_rows_ref(o.data(), x.data(), index, n_rows, C, accumulate);
        bool right = true;
        for (int i = 0; i < n_in; i++) {
            int r = -1;
            for (int k = 0; k < n_rows; k++) if (index[k] == i) r = k;
            for (int c = 0; c < C; c++) {
                const size_t e = (size_t)i * C + c;
                right &= o[e] == (r < 0 ? y[e] : (accumulate ? y[e] : 0.0) + x[(size_t)r * C + c]);
            }
        }
        check(right, accumulate ? "put_rows +=: out[index[r]] += inp[r], the other rows untouched"
                                : "put_rows =: out[index[r]] = inp[r], the other rows untouched", "differs");
    }
}

static void test_broadcast_rows(int B, int R, int C, int T_out, int offset) {
    std::string tag = fmt("B=%d R=%d C=%d T=%d offset=%d", B, R, C, T_out, offset);
    vecd src = rand_vec((size_t)R * C), G = rand_vec((size_t)B * T_out * C);
    const double SENT = 3.25;
    vecd out((size_t)B * T_out * C, SENT);
    broadcast_rows_ref(out.data(), src.data(), B, R, C, T_out, offset);
    bool ok = true;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T_out; t++)
            for (int c = 0; c < C; c++) {
                const double o = out[((size_t)b * T_out + t) * C + c];
                ok &= (t >= offset && t < offset + R) ? o == src[(size_t)(t - offset) * C + c] : o == SENT;
            }
    check(ok, ("broadcast_rows forward, other rows untouched " + tag).c_str(), "differs");
    vecd ds(src.size(), 0.0);
    broadcast_rows_backward_ref(ds.data(), G.data(), B, R, C, T_out, offset);
    auto loss = [&]() {
        vecd o((size_t)B * T_out * C, 0.0);
        broadcast_rows_ref(o.data(), src.data(), B, R, C, T_out, offset);
        return dotl(G, o);
    };
    gradcheck("broadcast_rows gradcheck dsrc " + tag, src, ds, loss);
    vecd Rr = rand_vec(src.size()), ds2 = Rr;
    broadcast_rows_backward_ref(ds2.data(), G.data(), B, R, C, T_out, offset);
    double e = added_err(ds2, Rr, ds);
    check(e < 1e-12, ("broadcast_rows backward accumulates (+=) " + tag).c_str(), "err %.3g", e);
}

// =========================================================================================================
// embedding, prefix

static void test_embedding(int V, int C, int B, int S, int T_out, int offset, float scale) {
    std::string tag = fmt("V=%d C=%d B=%d S=%d T=%d offset=%d scale=%g", V, C, B, S, T_out, offset, scale);
    vecd table = rand_vec((size_t)V * C), G = rand_vec((size_t)B * T_out * C);
    std::vector<int> ids((size_t)B * S);
    for (int i = 0; i < B * S; i++) ids[i] = (i * 5 + 1) % (V - 1);   // repeats; id V-1 never used
    ids[0] = ids[B * S - 1] = 2;
    const double SENT = -7.5;
    vecd out((size_t)B * T_out * C, SENT);
    embedding_forward_ref(out.data(), ids.data(), table.data(), B, S, C, T_out, offset, scale);
    bool ok = true;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T_out; t++)
            for (int c = 0; c < C; c++) {
                const double o = out[((size_t)b * T_out + t) * C + c];
                if (t >= offset && t < offset + S)
                    ok &= fabs(o - (double)scale * table[(size_t)ids[b * S + t - offset] * C + c]) <= 1e-15 * (1 + fabs(o));
                else ok &= o == SENT;
            }
    check(ok, ("embedding forward = scale * table[ids], other rows untouched " + tag).c_str(), "differs");
    vecd dt(table.size(), 0.0);
    embedding_backward_ref(dt.data(), G.data(), ids.data(), B, S, C, T_out, offset, scale);
    auto loss = [&]() {
        vecd o((size_t)B * T_out * C, 0.0);
        embedding_forward_ref(o.data(), ids.data(), table.data(), B, S, C, T_out, offset, scale);
        return dotl(G, o);
    };
    gradcheck("embedding gradcheck dtable (repeated ids) " + tag, table, dt, loss);
    check(all_equal(dt.data() + (size_t)(V - 1) * C, (size_t)C, 0.0), ("embedding unused id gets zero gradient " + tag).c_str(), "nonzero");
    vecd Rr = rand_vec(table.size()), dt2 = Rr;
    embedding_backward_ref(dt2.data(), G.data(), ids.data(), B, S, C, T_out, offset, scale);
    double e = added_err(dt2, Rr, dt);
    check(e < 1e-12, ("embedding backward accumulates (+=) " + tag).c_str(), "err %.3g", e);
}

static void test_prefix(int B, int K, int prefix_size, int stride, float scale) {
    std::string tag = fmt("B=%d K=%d prefix=%d stride=%d scale=%g", B, K, prefix_size, stride, scale);
    vecd src = rand_vec((size_t)B * K), G = rand_vec((size_t)B * stride);
    const double SENT = 9.5;
    vecd out((size_t)B * stride, SENT);
    prefix_forward_ref(out.data(), src.data(), B, K, prefix_size, (size_t)stride, scale);
    bool ok = true, pad = true;
    for (int b = 0; b < B; b++)
        for (int k = 0; k < stride; k++) {
            const double o = out[(size_t)b * stride + k];
            if (k < K) ok &= fabs(o - (double)scale * src[(size_t)b * K + k]) <= 1e-15 * (1 + fabs(o));
            else if (k < prefix_size) pad &= o == 0.0;
            else ok &= o == SENT;
        }
    check(ok, ("prefix forward = scale * src, rows after the prefix untouched " + tag).c_str(), "differs");
    check(pad, ("prefix forward zero-pads K..prefix_size " + tag).c_str(), "not zero");
    vecd ds(src.size(), NaN);
    prefix_backward_ref(ds.data(), G.data(), B, K, (size_t)stride, scale);
    auto loss = [&]() {
        vecd o((size_t)B * stride, 0.0);
        prefix_forward_ref(o.data(), src.data(), B, K, prefix_size, (size_t)stride, scale);
        return dotl(G, o);
    };
    gradcheck("prefix gradcheck dsrc (NaN pre-fill overwritten) " + tag, src, ds, loss);
}

// =========================================================================================================
// variational

static void test_gaussian_noise() {
    const int N = 400, C = 64;
    std::vector<int> keys(N);
    for (int n = 0; n < N; n++) keys[n] = 1000 + 7 * n;
    vecf e1((size_t)N * C), e2((size_t)N * C), e3((size_t)N * C);
    gaussian_noise_ref(e1.data(), keys.data(), N, C, 42);
    gaussian_noise_ref(e2.data(), keys.data(), N, C, 42);
    gaussian_noise_ref(e3.data(), keys.data(), N, C, 43);
    double s = 0, s2 = 0, inside = 0;
    for (float x : e1) { s += x; s2 += (double)x * x; inside += fabs(x) < 1; }
    const double mean = s / e1.size(), var = s2 / e1.size() - mean * mean, frac = inside / e1.size();
    check(fabs(mean) < 0.03, "gaussian_noise mean ~ 0", "mean %.4f", mean);
    check(fabs(var - 1) < 0.05, "gaussian_noise variance ~ 1", "variance %.4f", var);
    check(fabs(frac - 0.6827) < 0.02, "gaussian_noise P(|x| < 1) ~ 0.683", "fraction %.4f", frac);
    check(bitwise_equal(e1, e2), "gaussian_noise deterministic for the same seed and keys", "differs");
    size_t same = 0;
    for (size_t i = 0; i < e1.size(); i++) same += e1[i] == e3[i];
    check(same < e1.size() / 100, "gaussian_noise differs for another seed", "%zu of %zu equal", same, e1.size());
    // the noise of a row depends on its key only: the same key in another row, another key differs
    std::vector<int> k2 = {keys[5], keys[3], 99999};
    vecf f((size_t)3 * C);
    gaussian_noise_ref(f.data(), k2.data(), 3, C, 42);
    bool key_ok = memcmp(f.data(), e1.data() + (size_t)5 * C, C * sizeof(float)) == 0 &&
                  memcmp(f.data() + C, e1.data() + (size_t)3 * C, C * sizeof(float)) == 0;
    size_t same_row = 0;
    for (int c = 0; c < C; c++) same_row += f[2 * C + c] == f[c];
    check(key_ok && same_row < 2, "gaussian_noise is a function of (seed, row key, column)", "key_ok %d, same %zu", key_ok, same_row);
}

static void test_reparameterize(int N, int C, float lo, float hi, float dkl, bool fd = true) {
    std::string tag = fmt("N=%d C=%d clamp [%g, %g] dkl=%g", N, C, lo, hi, dkl);
    const bool clamped = isfinite(lo);
    vecd mu = rand_vec((size_t)N * C, -1.5, 1.5), lv = rand_vec((size_t)N * C, -2, 2), G = rand_vec((size_t)N * C);
    if (clamped) {   // values outside [lo, hi] (and one on each edge) in row 0
        lv[0] = hi + 2.0; lv[1] = lo - 3.0; lv[2] = hi; lv[3] = lo;
    }
    vecd eps((size_t)N * C);
    std::vector<int> keys(N);
    for (int n = 0; n < N; n++) keys[n] = 3 * n + 1;
    gaussian_noise_ref(eps.data(), keys.data(), N, C, 7);
    vecd z((size_t)N * C, NaN), kl(N, NaN);
    reparameterize_forward_ref(z.data(), kl.data(), mu.data(), lv.data(), eps.data(), N, C, lo, hi);
    double zerr = 0, klerr = 0;
    for (int n = 0; n < N; n++) {
        double k = 0;
        for (int c = 0; c < C; c++) {
            const size_t i = (size_t)n * C + c;
            const double l = fmin(fmax(lv[i], (double)lo), (double)hi), sigma2 = exp(l);
            zerr = fmax(zerr, fabs(z[i] - (mu[i] + sqrt(sigma2) * eps[i])) / (1 + fabs(z[i])));
            k += 0.5 * (sigma2 + mu[i] * mu[i] - 1 - log(sigma2));   // KL(N(mu, sigma^2) || N(0, 1))
        }
        klerr = fmax(klerr, fabs(kl[n] - k) / (1 + fabs(k)));
    }
    check(zerr < 1e-13, ("reparameterize z = mu + exp(clamp(logvar)/2) * eps " + tag).c_str(), "max err %.3g", zerr);
    check(klerr < 1e-12, ("reparameterize kl vs closed-form KL(N(mu, sigma^2) || N(0, 1)) " + tag).c_str(), "max err %.3g", klerr);
    vecd zero_eps(eps.size(), 0.0), z0(z.size());
    reparameterize_forward_ref(z0.data(), kl.data(), mu.data(), lv.data(), zero_eps.data(), N, C, lo, hi);
    check(bitwise_equal(z0, mu), ("reparameterize eps = 0 gives z = mu " + tag).c_str(), "differs");

    vecd dmu(mu.size(), NaN), dlv(lv.size(), NaN);
    reparameterize_backward_ref(dmu.data(), dlv.data(), G.data(), mu.data(), lv.data(), eps.data(), dkl, N, C, lo, hi);
    check(all_finite(dmu.data(), dmu.size()) && all_finite(dlv.data(), dlv.size()),
          ("reparameterize backward overwrites dmu, dlogvar (NaN pre-fill) " + tag).c_str(), "NaN left");
    auto loss = [&]() {
        vecd zz((size_t)N * C), kk(N);
        reparameterize_forward_ref(zz.data(), kk.data(), mu.data(), lv.data(), eps.data(), N, C, lo, hi);
        double kl_sum = 0;
        for (double v : kk) kl_sum += v;
        return dotl(G, zz) + (double)dkl * kl_sum;
    };
    if (clamped) {
        check(dlv[0] == 0.0 && dlv[1] == 0.0, ("reparameterize logvar outside [lo, hi] gets zero gradient " + tag).c_str(),
              "dlogvar %.3g, %.3g", dlv[0], dlv[1]);
        check(dlv[2] != 0.0 && dlv[3] != 0.0, ("reparameterize logvar on the clamp edges keeps its gradient " + tag).c_str(),
              "dlogvar %.3g, %.3g", dlv[2], dlv[3]);
        // the finite-difference check excludes the edge values (the clamp is not differentiable there)
        lv[2] = 1.25;
        lv[3] = -1.25;
        reparameterize_backward_ref(dmu.data(), dlv.data(), G.data(), mu.data(), lv.data(), eps.data(), dkl, N, C, lo, hi);
    }
    if (!fd) return;   // wide clamp bounds: exp(hi) in L would drown the finite differences in rounding noise
    gradcheck("reparameterize gradcheck dmu " + tag, mu, dmu, loss);
    gradcheck("reparameterize gradcheck dlogvar (clamped values included) " + tag, lv, dlv, loss);
}

// =========================================================================================================
// stablemax loss

static double s_direct(double x) { return x >= 0 ? x + 1 : 1 / (1 - x); }

// Rows of logits ld >= V apart; the padding columns hold large values the loss must not read.
static void test_stablemax(int B, int T, int P, int V, int ld, bool logits_at_zero) {
    std::string tag = fmt("B=%d T=%d P=%d V=%d ld=%d%s", B, T, P, V, ld, logits_at_zero ? " some logits exactly 0" : "");
    const int S = T - P;
    vecd logits = rand_away0((size_t)B * T * ld, 0.2, 3.0);
    for (size_t row = 0; row < (size_t)B * T; row++)
        for (int v = V; v < ld; v++) logits[row * ld + v] = 50.0 + v;
    std::vector<int> labels((size_t)B * S);
    for (int i = 0; i < B * S; i++) labels[i] = (i * 3 + 1) % V;
    // sample 0: a tie for the maximum (first one wins) and a token labelled with its argmax
    double* r = logits.data() + (size_t)P * ld;
    for (int v = 0; v < V; v++) r[v] = -1.0 - 0.1 * v;
    r[2] = r[V - 2] = 3.5;
    labels[0] = V - 2;   // ties: the argmax is 2, so this token counts as wrong
    double* r2 = logits.data() + (size_t)(P + 1) * ld;
    r2[4] = 4.0;
    labels[1] = 4;       // right
    // sample 1: some ignored labels; sample 2 (when present): all ignored
    for (int s = 0; s < S; s += 2) labels[(size_t)S + s] = IGNORE_LABEL_ID;
    if (B > 2) for (int s = 0; s < S; s++) labels[(size_t)2 * S + s] = IGNORE_LABEL_ID;
    if (logits_at_zero) for (size_t i = 3; i < logits.size(); i += 7) if ((int)(i % ld) < V) logits[i] = 0.0;

    vecd loss(B, NaN);
    std::vector<int> n_valid(B, -1), n_correct(B, -1), preds((size_t)B * S, -1);
    stablemax_loss_forward_ref(loss.data(), n_valid.data(), n_correct.data(), preds.data(), logits.data(), labels.data(), B, T, P, V, ld);
    double lerr = 0;
    bool counts = true, pred_ok = true;
    for (int b = 0; b < B; b++) {
        double sum = 0;
        int cnt = 0, cor = 0;
        for (int s = 0; s < S; s++) {
            const double* x = logits.data() + ((size_t)b * T + P + s) * ld;
            int am = 0;
            for (int v = 0; v < V; v++) if (x[v] > x[am]) am = v;
            pred_ok &= preds[(size_t)b * S + s] == am;
            const int y = labels[(size_t)b * S + s];
            if (y == IGNORE_LABEL_ID) continue;
            double tot = 0;
            for (int v = 0; v < V; v++) tot += s_direct(x[v]);
            sum += -log(s_direct(x[y]) / tot);
            cnt++;
            cor += am == y;
        }
        const double expect = cnt ? sum / cnt : 0.0;
        lerr = fmax(lerr, fabs(loss[b] - expect) / (1e-12 + fabs(expect)));
        counts &= n_valid[b] == cnt && n_correct[b] == cor;
    }
    check(lerr < 1e-13, ("stablemax loss forward vs formula " + tag).c_str(), "max err %.3g", lerr);
    check(counts, ("stablemax n_valid / n_correct " + tag).c_str(), "counts differ");
    check(pred_ok && preds[0] == 2 && preds[1] == 4 && n_correct[0] >= 1, ("stablemax argmax predictions, first max on ties " + tag).c_str(),
          "preds[0] = %d (want 2), preds[1] = %d (want 4)", preds[0], preds[1]);
    if (B > 2)
        check(loss[2] == 0.0 && n_valid[2] == 0 && n_correct[2] == 0, ("stablemax all labels ignored: loss 0, n_valid 0 " + tag).c_str(),
              "loss %g, n_valid %d", loss[2], n_valid[2]);

    vecd dloss = rand_vec(B, 0.5, 1.5), dl(logits.size(), NaN);
    stablemax_loss_backward_ref(dl.data(), logits.data(), labels.data(), n_valid.data(), dloss.data(), B, T, P, V, ld);
    bool zero_rows = true, zero_pad = true;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const bool ignored = t < P || labels[(size_t)b * S + t - P] == IGNORE_LABEL_ID;
            const double* row = dl.data() + ((size_t)b * T + t) * ld;
            if (ignored) zero_rows &= all_equal(row, (size_t)V, 0.0);
            zero_pad &= all_equal(row + V, (size_t)(ld - V), 0.0);
        }
    check(zero_rows, ("stablemax backward: prefix rows < P and ignored tokens get exactly 0 (NaN pre-fill) " + tag).c_str(), "nonzero");
    check(zero_pad, ("stablemax backward: padding columns V..ld-1 get exactly 0 (NaN pre-fill) " + tag).c_str(), "nonzero");
    check(all_finite(dl.data(), dl.size()), ("stablemax backward overwrites dlogits " + tag).c_str(), "NaN left");
    auto L = [&]() {
        vecd l(B);
        std::vector<int> nv(B), nc(B);
        stablemax_loss_forward_ref(l.data(), nv.data(), nc.data(), (int*)nullptr, logits.data(), labels.data(), B, T, P, V, ld);
        return dotl(dloss, l);
    };
    // s is only C1 at 0: there the central difference is off by ~h/2 relative, hence the looser tolerance
    gradcheck("stablemax gradcheck dlogits " + tag, logits, dl, L, logits_at_zero ? 2e-6 : FD_TOL);
}

// =========================================================================================================
// q_halt loss

// q rows 8 apart, as the trainer's padded q head: (q_halt, q_continue, 6 unread columns).
static void test_q_halt() {
    const int B = 7, ld = 8;
    vecd q = rand_vec((size_t)B * ld, -3, 3);
    const int n_valid[B] = {5, 5, 0, 3, 9, 9, 1}, n_correct[B] = {5, 4, 0, 0, 9, 2, 1};   // targets 1 0 1 0 1 0 1
    vecd loss(B, NaN);
    q_halt_loss_forward_ref(loss.data(), q.data(), n_valid, n_correct, B, ld);
    double err = 0;
    for (int b = 0; b < B; b++) {
        const double x = q[(size_t)b * ld], t = n_correct[b] == n_valid[b], p = 1 / (1 + exp(-x));
        const double bce = -(t * log(p) + (1 - t) * log(1 - p));
        err = fmax(err, fabs(loss[b] - bce) / (1e-12 + bce));
    }
    check(err < 1e-12, "q_halt loss forward vs BCE formula, targets 0 and 1", "max err %.3g", err);
    vecd qx = {40, 0, -40, 0};
    const int nv2[2] = {2, 2}, nc2[2] = {1, 2};   // q = +40 with target 0, q = -40 with target 1: loss ~ 40
    vecd l2(2);
    q_halt_loss_forward_ref(l2.data(), qx.data(), nv2, nc2, 2, 2);
    check(fabs(l2[0] - 40) < 1e-9 && fabs(l2[1] - 40) < 1e-9, "q_halt loss stable for large |q|", "%g %g", l2[0], l2[1]);

    vecd dloss = rand_vec(B, 0.5, 1.5), dq(q.size(), NaN);
    q_halt_loss_backward_ref(dq.data(), q.data(), n_valid, n_correct, dloss.data(), B, ld);
    bool col1 = true;
    for (int b = 0; b < B; b++) col1 &= all_equal(dq.data() + (size_t)b * ld + 1, (size_t)(ld - 1), 0.0);
    check(col1, "q_halt backward dq[:, 1..ld-1] == 0 (NaN pre-fill)", "nonzero");
    auto L = [&]() {
        vecd l(B);
        q_halt_loss_forward_ref(l.data(), q.data(), n_valid, n_correct, B, ld);
        return dotl(dloss, l);
    };
    gradcheck("q_halt loss gradcheck dq", q, dq, L);
}

// =========================================================================================================
// ACT

static void test_act() {
    {   // act_reset
        const int B = 5, T = 3, D = 4;
        auto zH = cast_vec<float>(rand_vec((size_t)B * T * D)), zL = cast_vec<float>(rand_vec((size_t)B * T * D));
        auto Hi = cast_vec<float>(rand_vec(D)), Li = cast_vec<float>(rand_vec(D));
        std::vector<int> steps = {3, 1, 4, 1, 5};
        std::vector<uint8_t> halted = {1, 0, 1, 0, 1};
        auto zH0 = zH, zL0 = zL;
        auto steps0 = steps;
        act_reset_ref(zH.data(), zL.data(), Hi.data(), Li.data(), steps.data(), halted.data(), B, T, D);
        bool ok = true;
        for (int b = 0; b < B; b++) {
            ok &= steps[b] == (halted[b] ? 0 : steps0[b]);
            for (int t = 0; t < T; t++)
                for (int d = 0; d < D; d++) {
                    const size_t i = ((size_t)b * T + t) * D + d;
                    ok &= zH[i] == (halted[b] ? Hi[d] : zH0[i]) && zL[i] == (halted[b] ? Li[d] : zL0[i]);
                }
        }
        check(ok, "act_reset resets z_H, z_L, steps of halted slots only", "differs");
    }
    const uint64_t seed = 1234;
    {   // evaluation: halts exactly at max_steps, whatever q says
        const int B = 6, max_steps = 4;
        vecf q = {5, 0, -5, 0, 0.5f, 0, -0.5f, 0, 100, 0, -100, 0};
        std::vector<int> steps(B, 0);
        std::vector<uint8_t> halted(B, 7);
        bool ok = true;
        for (int k = 1; k <= max_steps; k++) {
            act_halt_ref(halted.data(), steps.data(), q.data(), 2, B, max_steps, 0.5f, false, seed, 0, 1);
            for (int b = 0; b < B; b++) ok &= steps[b] == k && halted[b] == (k == max_steps);
        }
        check(ok, "act_halt eval mode halts only at max_steps", "differs");
    }
    {   // training, explore_prob = 0: exactly halted = steps >= max_steps || q > 0; q rows 3 apart (padded)
        const int B = 40, max_steps = 5, ld = 3;
        vecd qd = rand_vec((size_t)B * ld, -1, 1);
        qd[0] = 0.0;   // q == 0 does not halt
        auto q = cast_vec<float>(qd);
        std::vector<int> steps(B), steps0;
        for (int b = 0; b < B; b++) steps[b] = b % max_steps;
        steps0 = steps;
        std::vector<uint8_t> halted(B, 7);
        act_halt_ref(halted.data(), steps.data(), q.data(), ld, B, max_steps, 0.0f, true, seed, 0, 1);
        bool ok = true;
        for (int b = 0; b < B; b++) ok &= steps[b] == steps0[b] + 1 && halted[b] == (steps[b] >= max_steps || q[(size_t)b * ld] > 0);
        check(ok, "act_halt training explore_prob=0: halted = steps >= max_steps || q_halt > 0 (q rows 3 apart)", "differs");
        std::vector<int> st1(B, 0);
        act_halt_ref(halted.data(), st1.data(), q.data(), ld, B, 1, 1.0f, true, seed, 0, 1);
        check(all_equal(halted.data(), (size_t)B, (uint8_t)1), "act_halt max_steps=1 always halts", "a slot did not halt");
    }
    {   // explore_prob = 1: no slot halts before step 2; everyone halts at max_steps
        const int B = 500, max_steps = 6;
        vecf q((size_t)B * 2, 1.0f);
        std::vector<int> steps(B, 0);
        std::vector<uint8_t> halted(B);
        act_halt_ref(halted.data(), steps.data(), q.data(), 2, B, max_steps, 1.0f, true, seed, 0, 1);
        bool none = all_equal(halted.data(), (size_t)B, (uint8_t)0);
        for (int k = 2; k <= max_steps; k++) act_halt_ref(halted.data(), steps.data(), q.data(), 2, B, max_steps, 1.0f, true, seed, 0, 1);
        check(none, "act_halt explore_prob=1: no slot halts at step 1 even with q_halt > 0", "some halted");
        check(all_equal(halted.data(), (size_t)B, (uint8_t)1), "act_halt explore_prob=1: every slot halted at max_steps", "some running");
    }
    {   // frequency of exploration and the distribution of the minimum step count
        const int B = 20000, max_steps = 5;
        const float p = 0.3f;
        vecf q((size_t)B * 2, 1.0f);
        std::vector<int> steps(B, 0), first(B, 0);
        std::vector<uint8_t> halted(B);
        for (int k = 1; k <= max_steps; k++) {
            act_halt_ref(halted.data(), steps.data(), q.data(), 2, B, max_steps, p, true, seed, 0, 1);
            for (int b = 0; b < B; b++) if (halted[b] && !first[b]) first[b] = k;
        }
        int explored = 0, hist[8] = {0};
        for (int b = 0; b < B; b++) { explored += first[b] > 1; hist[first[b]]++; }
        const double frac = (double)explored / B;
        check(fabs(frac - p) < 0.02, "act_halt exploration frequency ~ explore_prob", "fraction %.4f vs %.2f", frac, p);
        bool uni_ok = hist[0] == 0;
        for (int k = 2; k <= max_steps; k++) uni_ok &= fabs((double)hist[k] / explored - 1.0 / (max_steps - 1)) < 0.03;
        check(uni_ok, "act_halt exploring slots run U{2..max_steps} steps", "histogram %d %d %d %d %d", hist[1], hist[2], hist[3], hist[4], hist[5]);

        std::vector<int> s1(B, 0), s2(B, 0), s3(B, 0);
        std::vector<uint8_t> h1(B), h2(B), h3(B);
        act_halt_ref(h1.data(), s1.data(), q.data(), 2, B, max_steps, p, true, seed, 0, 1);
        act_halt_ref(h2.data(), s2.data(), q.data(), 2, B, max_steps, p, true, seed, 0, 1);
        act_halt_ref(h3.data(), s3.data(), q.data(), 2, B, max_steps, p, true, seed + 1, 0, 1);
        check(bitwise_equal(h1, h2), "act_halt deterministic for the same seed", "differs");
        check(!bitwise_equal(h1, h3), "act_halt different for another seed", "identical");
    }
    {   // slot_offset / slot_stride: B slots at once == two interleaved halves
        const int B = 10, max_steps = 4, off = 3;
        auto q = cast_vec<float>(rand_vec((size_t)B * 2, -1, 1));
        std::vector<int> steps(B);
        for (int b = 0; b < B; b++) steps[b] = b % 3;
        std::vector<int> st_all = steps;
        std::vector<uint8_t> h_all(B);
        act_halt_ref(h_all.data(), st_all.data(), q.data(), 2, B, max_steps, 0.5f, true, seed, off, 1);
        bool ok = true;
        for (int half = 0; half < 2; half++) {
            vecf qh;
            std::vector<int> sh;
            for (int b = half; b < B; b += 2) { qh.push_back(q[(size_t)b * 2]); qh.push_back(q[(size_t)b * 2 + 1]); sh.push_back(steps[b]); }
            std::vector<uint8_t> hh(sh.size());
            act_halt_ref(hh.data(), sh.data(), qh.data(), 2, (int)sh.size(), max_steps, 0.5f, true, seed, off + half, 2);
            for (size_t i = 0; i < sh.size(); i++) ok &= hh[i] == h_all[half + 2 * i] && sh[i] == st_all[half + 2 * i];
        }
        int n_halt = 0;
        for (auto h : h_all) n_halt += h;
        check(ok && n_halt > 0 && n_halt < B, "act_halt slot_offset/slot_stride: two interleaved halves == all slots at once",
              "ok %d, %d of %d halted", ok, n_halt, B);
    }
}

// =========================================================================================================
// Adam, EMA, global norm

template <typename T>
static void test_adam(bool use_atan2) {
    const char* name = use_atan2 ? "AdamATan2" : "AdamW";
    const char* tname = sizeof(T) == 4 ? "float" : "double";
    const size_t n = 37;
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    vecd w0 = rand_vec(n);
    auto params = cast_vec<T>(w0);
    std::vector<T> m(n, 0), v(n, 0);
    vecd wr = w0, mr(n, 0.0), vr(n, 0.0);
    std::vector<std::vector<T>> grads;
    double werr = 0, merr = 0, verr = 0;
    for (int t = 1; t <= 3; t++) {
        vecd g = rand_vec(n, -2, 2);
        g[0] = 0.0;   // a parameter that never gets a gradient only decays
        grads.push_back(cast_vec<T>(g));
        adam_update_ref(params.data(), (T*)nullptr, grads.back().data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, gs, t, use_atan2);
        for (size_t i = 0; i < n; i++) {
            const double gi = (double)grads.back()[i] * gs;
            mr[i] = (double)b1 * mr[i] + (1 - (double)b1) * gi;
            vr[i] = (double)b2 * vr[i] + (1 - (double)b2) * gi * gi;
            const double mh = mr[i] / (1 - pow((double)b1, t)), vh = vr[i] / (1 - pow((double)b2, t));
            const double u = use_atan2 ? atan2(mh, sqrt(vh)) : mh / (sqrt(vh) + eps);
            wr[i] = wr[i] * (1 - (double)lr * wd) - (double)lr * u;
        }
        // absolute errors (weights, m and v are O(1)): float rounding, and in double the fp32 constant 1 - lr * wd
        werr = fmax(werr, max_rel_error(params.data(), wr.data(), n, 1.0));
        merr = fmax(merr, max_rel_error(m.data(), mr.data(), n, 1.0));
        verr = fmax(verr, max_rel_error(v.data(), vr.data(), n, 1.0));
    }
    const double tol = sizeof(T) == 4 ? 1e-6 : 3e-7;
    check(werr < tol && merr < tol && verr < tol, fmt("adam %s %s vs per-element formula, steps 1-3, grad_scale and weight decay", name, tname).c_str(),
          "weights err %.3g, m err %.3g, v err %.3g (tol %.1g)", werr, merr, verr, tol);
    const double decayed = w0[0] * pow(1 - (double)lr * wd, 3);
    check(fabs((double)params[0] - decayed) < 1e-6, fmt("adam %s %s zero gradient: weight decay only", name, tname).c_str(),
          "%.9g vs %.9g", (double)params[0], decayed);

    // master weights: the same numbers whether params are the master copy or a separate one
    auto p2 = std::vector<T>(n, (T)NaN), master = cast_vec<T>(w0);
    std::vector<T> m2(n, 0), v2(n, 0);
    for (int t = 1; t <= 3; t++)
        adam_update_ref(p2.data(), master.data(), grads[t - 1].data(), m2.data(), v2.data(), n, lr, b1, b2, eps, wd, gs, t, use_atan2);
    check(bitwise_equal(p2, params) && bitwise_equal(master, params) && bitwise_equal(m2, m) && bitwise_equal(v2, v),
          fmt("adam %s %s master != nullptr gives the same weights as master == nullptr", name, tname).c_str(), "differs");
}

static void test_ema() {
    const size_t n = 29;
    for (float rate : {0.999f, 0.9f}) {
        auto ema = cast_vec<float>(rand_vec(n));
        vecd er(ema.begin(), ema.end());
        double err = 0;
        for (int step = 0; step < 3; step++) {
            auto w = cast_vec<float>(rand_vec(n));
            ema_update_ref(ema.data(), w.data(), n, rate);
            for (size_t i = 0; i < n; i++) er[i] = (1 - (double)rate) * w[i] + (double)rate * er[i];
            // error relative to the terms' scale (values in [-1, 1]): (1 - rate) * w + rate * ema may cancel
            err = fmax(err, max_rel_error(ema.data(), er.data(), n, 1.0));
        }
        check(err < 1e-6, fmt("ema (1 - rate) * w + rate * ema, rate %g, 3 steps", rate).c_str(), "max err %.3g", err);
    }
}

static void test_convert() {
    const size_t n = 37;
    auto x = rand_vec(n);
    std::vector<float> xf = cast_vec<float>(x), yf(n, NAN);
    std::vector<double> yd(n, NAN);
    convert_to_floatS_ref(yf.data(), x.data(), n);         // double -> float rounds, float -> double is exact
    convert_to_floatS_ref(yd.data(), xf.data(), n);
    bool ok = true;
    for (size_t i = 0; i < n; i++) ok = ok && yf[i] == (float)x[i] && yd[i] == (double)xf[i];
    check(ok, "convert_to_floatS: every element converted (double->float, float->double)");
}

static void test_global_norm() {
    for (size_t n : {(size_t)0, (size_t)1, (size_t)4096, (size_t)3 * 4096 + 123}) {
        vecd x = rand_vec(n, -2, 2);
        auto xf = cast_vec<float>(x);
        long double s = 0, sf = 0;
        for (size_t i = 0; i < n; i++) { s += (long double)x[i] * x[i]; sf += (long double)xf[i] * xf[i]; }
        double out = NaN;
        float outf = NAN;
        global_norm_squared_ref(&out, x.data(), n);
        global_norm_squared_ref(&outf, xf.data(), n);
        const double e = fabs(out - (double)s) / (1e-300 + (double)s), ef = fabs((double)outf - (double)sf) / (1e-300 + (double)sf);
        check(n ? e < 1e-13 && ef < 1e-7 : out == 0 && outf == 0, fmt("global_norm_squared vs direct sum, n=%zu", n).c_str(),
              "double err %.3g, float err %.3g", e, ef);
    }
#ifdef _OPENMP
    const size_t n = 5 * 4096 + 77;
    auto x = cast_vec<float>(rand_vec(n));
    float r1, r2;
    const int saved = omp_get_max_threads();
    set_threads(1);
    global_norm_squared_ref(&r1, x.data(), n);
    set_threads(2);
    global_norm_squared_ref(&r2, x.data(), n);
    set_threads(saved);
    check(memcmp(&r1, &r2, sizeof r1) == 0, "global_norm_squared identical with 1 and 2 OpenMP threads", "%.9g vs %.9g", r1, r2);
#else
    skip("global_norm_squared identical with 1 and 2 OpenMP threads", "built without OpenMP");
#endif
}

// =========================================================================================================
// puzzle embedding

// TS = float: the table holds the fp32 values itself (the CPU and FP32 builds); TS = double: a float compute
// table beside TS master values (the shape of the BF16 build: the update writes both).
template <typename TS>
static void test_puzzle_emb() {
    const bool with_master = sizeof(TS) != sizeof(float);
    const char* tname = with_master ? "float table, double master" : "float table";
    const int V = 6, ndim = 3, B = 5;
    std::vector<TS> values((size_t)V * ndim);
    for (int i = 0; i < V * ndim; i++) values[i] = (TS)(1.0 + 0.5 * i);
    vecf table(values.begin(), values.end());
    const int ids[B] = {2, 4, 2, 0, 4};
    vecf rows((size_t)B * ndim, NAN);
    puzzle_emb_gather_ref(rows.data(), table.data(), ids, B, ndim);
    bool g_ok = true;
    for (int b = 0; b < B; b++)
        for (int d = 0; d < ndim; d++) g_ok &= rows[(size_t)b * ndim + d] == table[(size_t)ids[b] * ndim + d];
    check(g_ok, fmt("puzzle_emb gather rows[b] = table[ids[b]] (%s)", tname).c_str(), "differs");

    const vecf grads = {
        1.0f, 0.5f, 0.5f,      // id 2
        1.0f, -1.0f, 0.5f,     // id 4
        -3.0f, 0.5f, 0.5f,     // id 2: summed with row 0 first -> (-2, 1, 1): signs (-1, +1, +1)
        0.25f, -0.25f, 2.0f,   // id 0: signs (+1, -1, +1)
        -1.0f, 1.0f, 0.5f,     // id 4: summed with row 1 -> (0, 0, 1): signs (0, 0, +1)
    };
    const float lr = 0.01f, wd = 0.1f;
    const std::vector<TS> before = values;
    sign_sgd_update_ref(table.data(), with_master ? values.data() : (TS*)nullptr, ids, grads.data(), B, ndim, lr, wd);
    const double decay = 1.0 - (double)lr * wd;   // applied once per distinct id
    const double sign[V][3] = {{+1, -1, +1}, {0, 0, 0}, {-1, +1, +1}, {0, 0, 0}, {0, 0, +1}, {0, 0, 0}};
    double err = 0;
    bool untouched = true, copy_ok = true;
    for (int i = 0; i < V; i++)
        for (int d = 0; d < ndim; d++) {
            const size_t k = (size_t)i * ndim + d;
            const double value = with_master ? (double)values[k] : (double)table[k];
            copy_ok &= table[k] == (float)value;                                     // the compute copy follows
            if (i == 1 || i == 3 || i == 5) { untouched &= value == (double)before[k]; continue; }
            const double expect = (double)before[k] * decay - (double)lr * sign[i][d];
            err = fmax(err, fabs(value - expect) / fabs(expect));
        }
    // e.g. table[2][0] = 7 * 0.999 + 0.01 (grads +1 and -3 sum to -2 before the sign), table[2][2] = 8 * 0.999 - 0.01 (not -0.02)
    const double tol = with_master ? 1e-15 : 1e-7;
    check(err < tol, fmt("sign_sgd_update: duplicate ids summed before the sign, decay once per id (%s)", tname).c_str(),
          "max err %.3g; row 2 = %.9g %.9g %.9g", err, (double)table[6], (double)table[7], (double)table[8]);
    check(untouched, fmt("sign_sgd_update leaves rows not in the batch unchanged (%s)", tname).c_str(), "changed");
    check(copy_ok, fmt("sign_sgd_update writes the compute table from the updated values (%s)", tname).c_str(), "differs");
}

// =========================================================================================================

int main() {
    test_seed(20240611);
    test_matmul();

    test_rmsnorm(7, 10, false);
    test_rmsnorm(7, 10, true);
    test_rmsnorm(3, 33, true);
    test_rmsnorm_weighted(7, 10);
    test_rmsnorm_weighted(3, 33);
    test_rmsnorm_weighted(4, 64);

    test_rope(2, 7, 3, 10, 0, 10000.0f);
    test_rope(3, 5, 1, 6, 1, 100.0f);

    test_attention_self(2, 7, 2, 2, 6, false, false);
    test_attention_self(3, 5, 3, 3, 4, true, false);
    test_attention_cross(3, 4, 6, 2, 2, 5, 2, false);
    test_attention_cross(3, 3, 7, 1, 1, 8, 0, false);
    // causal, GQA (NKV < NH), both; with and without key masks; causal with Tq < Tk and Tq > Tk
    test_attention_self(2, 7, 2, 2, 6, false, true);
    test_attention_self(3, 6, 3, 3, 4, true, true);
    test_attention_self(2, 5, 4, 2, 4, false, false);
    test_attention_self(2, 6, 4, 1, 4, true, false);
    test_attention_self(2, 6, 4, 2, 4, true, true);
    test_attention_self(2, 5, 4, 1, 6, false, true);
    test_attention_cross(3, 4, 6, 4, 2, 4, 2, false);
    test_attention_cross(3, 3, 7, 4, 1, 4, 0, false);
    test_attention_cross(3, 4, 7, 2, 2, 5, 2, true);     // Tq < Tk: every query sees the first Tk - Tq + 1 keys
    test_attention_cross(3, 7, 4, 2, 2, 5, 0, true);     // Tq > Tk: the first Tq - Tk queries see no key
    test_attention_cross(3, 4, 7, 4, 2, 4, 1, true);
    test_attention_cross(3, 6, 5, 4, 1, 4, 0, true);
    test_attention_gqa_repeat(2, 5, 7, 4, 2, 4, false);
    test_attention_gqa_repeat(2, 6, 6, 4, 1, 4, true);
    test_attention_gqa_repeat(2, 7, 4, 6, 2, 4, true);
    test_attention_causal_mask(2, 6, 6, 2, 2, 4, false);
    test_attention_causal_mask(2, 5, 8, 4, 2, 4, true);
    test_attention_causal_mask(2, 8, 5, 4, 1, 4, true);

    test_swiglu(7, 10);
    test_swiglu(3, 5);
    test_add();

    test_masked_mean(3, 5, 7, false);
    test_masked_mean(3, 5, 7, true);
    test_masked_mean(2, 9, 4, true);

    test_rows();
    test_broadcast_rows(3, 2, 5, 6, 3);
    test_broadcast_rows(2, 4, 3, 4, 0);

    test_embedding(7, 5, 2, 6, 9, 2, 1.7f);
    test_embedding(5, 3, 3, 4, 4, 0, 1.0f);
    test_prefix(3, 5, 8, 20, 2.5f);
    test_prefix(2, 8, 8, 12, 1.0f);

    test_gaussian_noise();
    test_reparameterize(3, 7, -10.0f, 10.0f, 0.7f, false);
    test_reparameterize(3, 7, -4.0f, 3.0f, 0.7f);
    test_reparameterize(4, 5, -INFINITY, INFINITY, 0.0f);
    test_reparameterize(2, 9, -INFINITY, INFINITY, 1.3f);

    test_stablemax(3, 6, 2, 7, 7, false);
    test_stablemax(2, 5, 0, 10, 10, false);
    test_stablemax(3, 5, 1, 9, 9, true);
    test_stablemax(3, 6, 2, 12, 16, false);   // the trainer's padded lm head
    test_stablemax(3, 5, 1, 9, 16, true);

    test_q_halt();
    test_act();

    test_adam<float>(true);
    test_adam<float>(false);
    test_adam<double>(true);
    test_adam<double>(false);
    test_ema();
    test_convert();
    test_global_norm();
    test_puzzle_emb<float>();
    test_puzzle_emb<double>();

    return test_summary();
}
