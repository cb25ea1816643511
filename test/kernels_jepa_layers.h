// GPU-vs-CPU checks of the JEPA layers ops (included by test_kernels.cu after its helpers; see its header for the
// method): kernels/layernorm.cuh, activation.cuh, l2norm.cuh, dropout.cuh. Every launcher against its double
// reference on random inputs (rounded through floatX / floatS first), at the trainer's shapes (N = 4096 rows,
// C = 384, 768, 256) and odd ones (C not a multiple of 4 / 8, N = 1, C = 1, C > 32 x pack, misaligned pointers);
// outputs poisoned, with PAD poisoned elements after each that must stay untouched; += outputs starting from known
// random values; in-place calls bitwise equal to the out-of-place ones; the layernorm backward's column sums
// (and dinp) bitwise repeatable run to run. The sigreg variants are tested in test_kernels.cu (test_sigreg_all).
#pragma once
#include "../kernels/activation.cuh"
#include "../kernels/dropout.cuh"
#include "../kernels/l2norm.cuh"
#include "../kernels/layernorm.cuh"

static const size_t LAYERS_PAD = 8;   // poisoned elements after every output: the op must not write them

static vecd layers_pad_nan(vecd v, size_t k = LAYERS_PAD) {
    v.insert(v.end(), k, NaN);
    return v;
}
// v followed by k copies of NaN, as a device buffer of T
template <typename T>
static void layers_set_padded(Dev<T>& d, const vecd& v) { d.set(layers_pad_nan(v, d.n - v.size())); }
// rows [r0, r1) of a (rows, C) array
static vecd layers_rows_of(const vecd& v, int C, int r0, int r1) {
    return vecd(v.begin() + (size_t)r0 * C, v.begin() + (size_t)r1 * C);
}

// =========================================================================================================
// layernorm

static void test_layernorm(int N, int C, double offset, bool with_stats = true) {
    const std::string tag = fmt("N=%d C=%d offset=%g%s", N, C, offset, with_stats ? "" : " mean=rstd=null");
    vecd x = rnd((size_t)N * C, -2, 2);
    for (auto& v : x) v += offset;
    x = rx(x);
    const vecd w = rx(rnd(C, 0.5, 1.5)), b = rx(rnd(C, -0.5, 0.5));
    vecd out((size_t)N * C), mean(N), rstd(N);
    layernorm_forward_ref<double, double>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    Dev<floatX> d_x(x), d_w(w), d_b(b), d_out(out.size() + LAYERS_PAD);
    Dev<floatS> d_mean(N + LAYERS_PAD), d_rstd(N + LAYERS_PAD);
    d_out.poison();
    d_mean.poison();
    d_rstd.poison();
    const std::string fname = BK " layernorm_forward " + tag;
    layernorm_forward(d_out.p, with_stats ? d_mean.p : nullptr, with_stats ? d_rstd.p : nullptr, d_x.p, d_w.p, d_b.p, N, C, st);
    launched(fname);
    expect_close(fname + " out", d_out.get(), layers_pad_nan(out), TOL_RED);
    if (with_stats) {
        expect_close(fname + " mean", d_mean.get(), layers_pad_nan(mean), TOL_S);
        expect_close(fname + " rstd", d_rstd.get(), layers_pad_nan(rstd), TOL_S);
    } else {
        expect_exact(fname + " mean untouched", d_mean.get(), vecd(N + LAYERS_PAD, NaN));
        expect_exact(fname + " rstd untouched", d_rstd.get(), vecd(N + LAYERS_PAD, NaN));
    }
    if (!with_stats) return;

    // backward: both sides from the reference's mean and rstd (rounded to floatS); every output adds onto random
    // initial values
    const vecd mean_s = rs(mean), rstd_s = rs(rstd), dout = rx(rnd((size_t)N * C, -1, 1));
    const vecd dx0 = rx(rnd((size_t)N * C, -1, 1)), dw0 = rs(rnd(C, -1, 1)), db0 = rs(rnd(C, -1, 1));
    vecd dx = dx0, dw = dw0, db = db0;
    layernorm_backward_ref<double, double>(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean_s.data(),
                                           rstd_s.data(), N, C);
    Dev<floatX> d_dout(dout), d_dx(dx.size() + LAYERS_PAD);
    Dev<floatS> d_ms(mean_s), d_rs(rstd_s), d_dw(C + LAYERS_PAD), d_db(C + LAYERS_PAD);
    layers_set_padded(d_dx, dx0);
    layers_set_padded(d_dw, dw0);
    layers_set_padded(d_db, db0);
    const std::string bname = BK " layernorm_backward " + tag;
    layernorm_backward(d_dx.p, d_dw.p, d_db.p, d_dout.p, d_x.p, d_w.p, d_ms.p, d_rs.p, N, C, st);
    launched(bname);
    expect_close(bname + " dinp (+=)", d_dx.get(), layers_pad_nan(dx), TOL_RED);
    expect_close(bname + " dweight (+=)", d_dw.get(), layers_pad_nan(dw), TOL_S);
    expect_close(bname + " dbias (+=)", d_db.get(), layers_pad_nan(db), TOL_S);
    // run to run: the same initial values give the same bits
    const auto dx_1 = d_dx.raw();
    const auto dw_1 = d_dw.raw(), db_1 = d_db.raw();
    layers_set_padded(d_dx, dx0);
    layers_set_padded(d_dw, dw0);
    layers_set_padded(d_db, db0);
    layernorm_backward(d_dx.p, d_dw.p, d_db.p, d_dout.p, d_x.p, d_w.p, d_ms.p, d_rs.p, N, C, st);
    launched(bname + " again");
    expect_bitwise(bname + " dweight bitwise repeatable", dw_1, d_dw.raw());
    expect_bitwise(bname + " dbias bitwise repeatable", db_1, d_db.raw());
    expect_bitwise(bname + " dinp bitwise repeatable", dx_1, d_dx.raw());
}

// null outputs of the backward: dinp alone, then dweight and dbias alone (the other buffers stay as they were)
static void test_layernorm_null_outputs(int N, int C) {
    const std::string tag = fmt("N=%d C=%d", N, C);
    const vecd x = rx(rnd((size_t)N * C, -2, 2)), w = rx(rnd(C, 0.5, 1.5)), b = rx(rnd(C, -0.5, 0.5));
    vecd out((size_t)N * C), mean(N), rstd(N);
    layernorm_forward_ref<double, double>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    mean = rs(mean);
    rstd = rs(rstd);
    const vecd dout = rx(rnd((size_t)N * C, -1, 1)), dx0 = rx(rnd((size_t)N * C, -1, 1)), dw0 = rs(rnd(C, -1, 1)),
               db0 = rs(rnd(C, -1, 1));
    vecd dx = dx0, dw = dw0, db = db0;
    layernorm_backward_ref<double, double>(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                                           rstd.data(), N, C);
    Dev<floatX> d_x(x), d_w(w), d_dout(dout), d_dx(dx0);
    Dev<floatS> d_m(mean), d_r(rstd), d_dw(dw0), d_db(db0);
    layernorm_backward(d_dx.p, nullptr, nullptr, d_dout.p, d_x.p, d_w.p, d_m.p, d_r.p, N, C, st);
    launched(BK " layernorm_backward dweight=dbias=null " + tag);
    expect_close(BK " layernorm_backward dweight=dbias=null " + tag + " dinp (+=)", d_dx.get(), dx, TOL_RED);
    d_dx.set(dx0);
    layernorm_backward(nullptr, d_dw.p, d_db.p, d_dout.p, d_x.p, d_w.p, d_m.p, d_r.p, N, C, st);
    launched(BK " layernorm_backward dinp=null " + tag);
    expect_close(BK " layernorm_backward dinp=null " + tag + " dweight (+=)", d_dw.get(), dw, TOL_S);
    expect_close(BK " layernorm_backward dinp=null " + tag + " dbias (+=)", d_db.get(), db, TOL_S);
    expect_exact(BK " layernorm_backward dinp=null " + tag + " dinp buffer untouched", d_dx.get(), dx0);
}

// =========================================================================================================
// activation

static void test_activation_kernels(size_t n, ActivationKind kind, bool misaligned = false) {
    const std::string tag = fmt("%s n=%zu%s", kind == ACT_GELU ? "GELU" : "ReLU", n, misaligned ? " misaligned" : "");
    const size_t o = misaligned ? 1 : 0;      // element offset of every pointer
    const vecd x = rx(rnd(n, -5, 5)), dout = rx(rnd(n, -1, 1));
    vecd y(n), dx(n);
    activation_forward_ref<double>(y.data(), x.data(), n, kind);
    activation_backward_ref<double>(dx.data(), dout.data(), x.data(), n, kind);
    auto shifted = [&](const vecd& v) { vecd s(o, 0.0); s.insert(s.end(), v.begin(), v.end()); return s; };
    Dev<floatX> d_x(shifted(x)), d_dout(shifted(dout)), d_y(n + o + LAYERS_PAD), d_dx(n + o + LAYERS_PAD);
    d_y.poison();
    d_dx.poison();
    const std::string fname = BK " activation_forward " + tag, bname = BK " activation_backward " + tag;
    activation_forward(d_y.p + o, d_x.p + o, n, kind, st);
    launched(fname);
    activation_backward(d_dx.p + o, d_dout.p + o, d_x.p + o, n, kind, st);
    launched(bname);
    vecd yref = layers_pad_nan(y), dxref = layers_pad_nan(dx);
    yref.insert(yref.begin(), o, NaN);
    dxref.insert(dxref.begin(), o, NaN);
    if (kind == ACT_RELU) {   // exact: max(x, 0) and dout or 0 are representable
        expect_exact(fname, d_y.get(), yref);
        expect_exact(bname + " (=)", d_dx.get(), dxref);
    } else {
        expect_close(fname, d_y.get(), yref, TOL_EW);
        expect_close(bname + " (=)", d_dx.get(), dxref, TOL_EW);
    }
    // in place: out = inp, dinp = dout, bitwise equal to the out-of-place results
    if (o == 0) {
        Dev<floatX> d_xi(x), d_gi(dout);
        activation_forward(d_xi.p, d_xi.p, n, kind, st);
        launched(fname + " in place");
        activation_backward(d_gi.p, d_gi.p, d_x.p, n, kind, st);
        launched(bname + " in place");
        auto y_raw = d_y.raw(), dx_raw = d_dx.raw();
        y_raw.resize(n);
        dx_raw.resize(n);
        expect_bitwise(fname + " in place (out = inp) = out of place", y_raw, d_xi.raw());
        expect_bitwise(bname + " in place (dinp = dout) = out of place", dx_raw, d_gi.raw());
    }
}

// =========================================================================================================
// l2norm

// Rows: random in [-2, 2]; every 5th row scaled by 1e-14 (||x|| < eps = 1e-12: the linear branch), row 2 zero.
static void test_l2norm_kernels(int N, int C) {
    const std::string tag = fmt("N=%d C=%d", N, C);
    vecd x = rnd((size_t)N * C, -2, 2);
    std::vector<bool> tiny(N, false);
    for (int n = 0; n < N; n++) {
        tiny[n] = n % 5 == 4 || n == 2;
        for (int c = 0; c < C; c++) x[(size_t)n * C + c] *= n == 2 ? 0.0 : n % 5 == 4 ? 1e-14 : 1.0;
    }
    x = rx(x);
    vecd out((size_t)N * C), norm(N);
    l2norm_forward_ref<double, double>(out.data(), norm.data(), x.data(), N, C);
    Dev<floatX> d_x(x), d_out(out.size() + LAYERS_PAD);
    Dev<floatS> d_norm(N + LAYERS_PAD);
    d_out.poison();
    d_norm.poison();
    const std::string fname = BK " l2norm_forward " + tag;
    l2norm_forward(d_out.p, d_norm.p, d_x.p, N, C, st);
    launched(fname);
    expect_close(fname + " out", d_out.get(), layers_pad_nan(out), TOL_RED);
    expect_close(fname + " norm", d_norm.get(), layers_pad_nan(norm), TOL_S);

    // backward from the reference's norm (rounded to floatS). The rows with ||x|| <= eps have gradients ~1e12 x the
    // others, so the two kinds of rows are compared separately (the tolerance's atol scales with the RMS).
    const vecd norm_s = rs(norm), dout = rx(rnd((size_t)N * C, -1, 1));
    vecd dx((size_t)N * C);
    l2norm_backward_ref<double, double>(dx.data(), dout.data(), x.data(), norm_s.data(), N, C);
    Dev<floatX> d_dout(dout), d_dx(dx.size() + LAYERS_PAD);
    Dev<floatS> d_ns(norm_s);
    d_dx.poison();
    const std::string bname = BK " l2norm_backward " + tag;
    l2norm_backward(d_dx.p, d_dout.p, d_x.p, d_ns.p, N, C, st);
    launched(bname);
    const vecd got = d_dx.get();
    vecd got_o, ref_o, got_t, ref_t;
    for (int n = 0; n < N; n++) {
        const vecd g = layers_rows_of(got, C, n, n + 1), r = layers_rows_of(dx, C, n, n + 1);
        (tiny[n] ? got_t : got_o).insert((tiny[n] ? got_t : got_o).end(), g.begin(), g.end());
        (tiny[n] ? ref_t : ref_o).insert((tiny[n] ? ref_t : ref_o).end(), r.begin(), r.end());
    }
    if (!ref_o.empty()) expect_close(bname + " dinp (=), ordinary rows", got_o, ref_o, TOL_RED);
    if (!ref_t.empty()) expect_close(bname + " dinp (=), rows with ||x|| <= eps (dout / eps)", got_t, ref_t, TOL_EW);
    expect_exact(bname + " after the end untouched", vecd(got.end() - LAYERS_PAD, got.end()), vecd(LAYERS_PAD, NaN));
}

// =========================================================================================================
// dropout_add

static void test_dropout_kernels(int rows, int C, float p, bool with_res, bool with_mask, bool misaligned = false) {
    const uint64_t seed = fresh_seed();
    const std::string tag = fmt("rows=%d C=%d p=%g%s%s%s", rows, C, p, with_res ? "" : " residual=null",
                                with_mask ? " row_mask" : "", misaligned ? " misaligned" : "");
    const size_t n = (size_t)rows * C, o = misaligned ? 1 : 0;
    const vecd inp = rx(rnd(n, -1, 1)), res = rx(rnd(n, -1, 1));
    std::vector<uint8_t> mask(rows);
    const veci m = rnd_int(rows, 4);
    for (int r = 0; r < rows; r++) mask[r] = (uint8_t)(m[r] != 0);
    vecd out(n);
    dropout_add_ref<double>(out.data(), with_res ? res.data() : nullptr, inp.data(), with_mask ? mask.data() : nullptr,
                            rows, C, p, seed);
    auto shifted = [&](const vecd& v) { vecd s(o, 0.0); s.insert(s.end(), v.begin(), v.end()); return s; };
    Dev<floatX> d_inp(shifted(inp)), d_res(shifted(res)), d_out(n + o + LAYERS_PAD);
    Dev<uint8_t> d_mask(mask);
    d_out.poison();
    const std::string name = BK " dropout_add " + tag;
    dropout_add(d_out.p + o, with_res ? d_res.p + o : nullptr, d_inp.p + o, with_mask ? d_mask.p : nullptr, rows, C, p,
                seed, st);
    launched(name);
    vecd ref = layers_pad_nan(out);
    ref.insert(ref.begin(), o, NaN);
    if (p == 0.0f && !with_res) expect_exact(name + " (= mask * inp exactly)", d_out.get(), ref);
    else expect_close(name, d_out.get(), ref, TOL_EW);
    if (o) return;
    // in place: out = residual, and out = inp, bitwise equal to the out-of-place result
    auto want = d_out.raw();
    want.resize(n);
    if (with_res) {
        Dev<floatX> d_a(res);
        dropout_add(d_a.p, d_a.p, d_inp.p, with_mask ? d_mask.p : nullptr, rows, C, p, seed, st);
        launched(name + " out = residual");
        expect_bitwise(name + " in place (out = residual) = out of place", want, d_a.raw());
    }
    Dev<floatX> d_b(inp);
    dropout_add(d_b.p, with_res ? d_res.p : nullptr, d_b.p, with_mask ? d_mask.p : nullptr, rows, C, p, seed, st);
    launched(name + " out = inp");
    expect_bitwise(name + " in place (out = inp) = out of place", want, d_b.raw());
}

// The backward identity on the device: d_inp = dropout_add(dout, p, seed) keeps exactly the elements the forward
// kept (a forward of all-ones inp with null residual shows the forward's mask), scaled by 1 / (1 - p).
static void test_dropout_backward_mask(int rows, int C, float p) {
    const uint64_t seed = fresh_seed();
    const std::string name = fmt(BK " dropout_add backward keeps the forward's elements rows=%d C=%d p=%g", rows, C, p);
    const size_t n = (size_t)rows * C;
    const vecd dout = rx(rnd(n, 0.5, 1.5));
    Dev<floatX> d_ones(vecd(n, 1.0)), d_dout(dout), d_fwd(n), d_bwd(n);
    dropout_add(d_fwd.p, nullptr, d_ones.p, nullptr, rows, C, p, seed, st);
    dropout_add(d_bwd.p, nullptr, d_dout.p, nullptr, rows, C, p, seed, st);
    launched(name);
    const vecd f = d_fwd.get(), g = d_bwd.get();
    size_t bad = 0, kept = 0;
    for (size_t i = 0; i < n; i++) {
        kept += f[i] != 0;
        bad += (f[i] != 0) != (g[i] != 0);
    }
    const double frac = (double)kept / n, sigma = sqrt(p * (1 - p) / n);
    check(bad == 0 && fabs(frac - (1 - p)) < 6 * sigma, name.c_str(), "%zu elements differ in keep; kept fraction %.5f vs %.5f",
          bad, frac, 1 - p);
}

// =========================================================================================================

static void test_jepa_layers() {
    // layernorm: the trainer's shapes, then odd ones (C % 4 != 0, C % 8 != 0, N = 1, C = 1, C > 256 per lane
    // step), a large mean offset (the two-pass variance), null statistics
    const int ln_shapes[][2] = {{4096, 384}, {4096, 768}, {4096, 256}, {1, 384}, {7, 37}, {33, 100}, {5, 1},
                                {3, 1000}, {2, 2056}, {300, 12}, {129, 388}};
    for (auto& s : ln_shapes) test_layernorm(s[0], s[1], 0.0);
    test_layernorm(64, 384, 10.0);
    test_layernorm(16, 37, -3.0);
    test_layernorm(10, 384, 0.0, false);
    test_layernorm_null_outputs(100, 384);
    test_layernorm_null_outputs(9, 37);

    // activation: the trainer's sizes (4096 x 768 FFN hidden, 4096 x 384, 4096 x 256 projection), odd ones
    const size_t act_sizes[] = {(size_t)4096 * 768, (size_t)4096 * 384, (size_t)4096 * 256, 1, 7, 40, 1001, 100003};
    for (ActivationKind kind : {ACT_GELU, ACT_RELU}) {
        for (size_t n : act_sizes) test_activation_kernels(n, kind);
        test_activation_kernels((size_t)4096 * 256, kind, true);
        test_activation_kernels(1003, kind, true);
    }

    // l2norm
    const int l2_shapes[][2] = {{4096, 256}, {4096, 384}, {1, 256}, {7, 37}, {10, 1}, {3, 1000}, {33, 100}};
    for (auto& s : l2_shapes) test_l2norm_kernels(s[0], s[1]);

    // dropout_add
    const int do_shapes[][2] = {{4096, 384}, {4096, 768}, {4096, 256}, {7, 37}, {1, 1}, {33, 100}};
    for (auto& s : do_shapes) {
        test_dropout_kernels(s[0], s[1], 0.1f, true, true);
        test_dropout_kernels(s[0], s[1], 0.1f, false, false);
    }
    test_dropout_kernels(4096, 384, 0.0f, true, true);
    test_dropout_kernels(4096, 384, 0.0f, false, false);
    test_dropout_kernels(4096, 384, 0.0f, false, true);
    test_dropout_kernels(512, 384, 0.5f, true, false);
    test_dropout_kernels(100, 37, 1.0f, true, true);
    test_dropout_kernels(4096, 384, 0.1f, true, true, true);
    test_dropout_kernels(99, 37, 0.1f, true, false, true);
    test_dropout_backward_mask(4096, 384, 0.1f);
    test_dropout_backward_mask(33, 37, 0.3f);
}
