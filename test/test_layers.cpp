// Tests of the JEPA "layers" ops' CPU references, in double:
//   kernels/layernorm.cuh, kernels/activation.cuh, kernels/l2norm.cuh, kernels/dropout.cuh, kernels/mse.cuh
//
//   make build/test_layers && ./build/test_layers
//
// Gradient checks: random inputs from a fixed seed, a random upstream gradient G, the scalar L = sum(G * out), and
// for EVERY input element (L(x + h) - L(x - h)) / 2h compared with the analytic gradient at a relative tolerance
// of 1e-6 (with a floor of 1e-3 x the largest gradient element, for the finite-difference noise).
//  - layernorm: forward against a direct long-double formula; unit weight, zero bias -> row mean 0, variance
//    var/(var + eps) ~ 1; backward dinp, dweight, dbias vs central differences, all three (+=), checked from
//    nonzero initial buffers; null outputs.
//  - activation: GELU against Phi(x) from a table and from an independent Simpson integration of the normal pdf;
//    ReLU values and its derivative 0 at 0; both kinds' backward vs central differences (ReLU away from 0);
//    the float launchers in place.
//  - l2norm: forward (unit rows, norm = max(||x||, eps), the tiny-norm row = x / eps, a zero row); backward vs
//    central differences including a row with ||x|| << eps (the linear branch) and a zero row.
//  - dropout_add: keep fraction over 1e5 elements ~ 1 - p; kept = residual + inp / (1 - p), dropped = residual,
//    masked rows 0; p = 0 and p = 1; null residual / mask; determinism in the seed; aliasing (float launcher);
//    the backward identities vs central differences and as adjoints: <dropout_add(g), x> = <g, dropout_add(x)>.
//  - mse: the loss against a direct sum, its accumulation (+=), da and db (+=, db null) vs central differences.
#include <math.h>
#include <string.h>
#include <functional>
#include <string>
#include <vector>
#include "../common/device.h"
#include "../common/rand.h"
#include "../kernels/activation.cuh"
#include "../kernels/dropout.cuh"
#include "../kernels/l2norm.cuh"
#include "../kernels/layernorm.cuh"
#include "../kernels/mse.cuh"
#include "test.h"
#include "op_test.h"


static vecd sub(const vecd& a, const vecd& b) {
    vecd r(a.size());
    for (size_t i = 0; i < a.size(); i++) r[i] = a[i] - b[i];
    return r;
}
// max_i |a_i - b_i| / (|b_i| + floor)
static double rel_err(const vecd& a, const vecd& b, double floor = 1e-300) {
    double worst = a.size() == b.size() ? 0 : INFINITY;
    for (size_t i = 0; i < a.size() && i < b.size(); i++) {
        const double e = fabs(a[i] - b[i]) / (fabs(b[i]) + floor);
        if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
    }
    return worst;
}


// =========================================================================================================
// layernorm

static void test_layernorm_forward(int N, int C) {
    const std::string tag = fmt("N=%d C=%d", N, C);
    const vecd x = rand_vec((size_t)N * C, -2, 3), w = rand_vec(C, 0.5, 1.5), b = rand_vec(C, -0.5, 0.5);
    vecd out((size_t)N * C), mean(N), rstd(N);
    layernorm_forward_ref(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    // direct: torch's formula in long double, the variance as E[(x - m)^2]
    double err_out = 0, err_stats = 0;
    for (int n = 0; n < N; n++) {
        long double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += x[(size_t)n * C + c];
        m /= C;
        for (int c = 0; c < C; c++) v += (x[(size_t)n * C + c] - m) * (x[(size_t)n * C + c] - m);
        v /= C;
        const long double rs = 1.0L / sqrtl(v + 1e-5L);
        err_stats = fmax(err_stats, fabs(mean[n] - (double)m) / fabs((double)m) + fabs(rstd[n] - (double)rs) / (double)rs);
        for (int c = 0; c < C; c++) {
            const double want = (double)((x[(size_t)n * C + c] - m) * rs * w[c] + b[c]);
            err_out = fmax(err_out, fabs(out[(size_t)n * C + c] - want) / (fabs(want) + 1e-12));
        }
    }
    check(err_out < 1e-12 && err_stats < 1e-12, ("layernorm forward = (x - mean) rstd w + b, mean, rstd (biased var, eps 1e-5) " + tag).c_str(),
          "out err %.3g, stats err %.3g", err_out, err_stats);

    // unit weight, zero bias: row mean 0 and variance var / (var + eps) (~1)
    const vecd ones(C, 1.0), zeros(C, 0.0);
    layernorm_forward_ref(out.data(), mean.data(), rstd.data(), x.data(), ones.data(), zeros.data(), N, C);
    double worst_m = 0, worst_v = 0, worst_1 = 0;
    for (int n = 0; n < N; n++) {
        double m = 0, v = 0, vx = 0;
        for (int c = 0; c < C; c++) m += out[(size_t)n * C + c] / C;
        for (int c = 0; c < C; c++) v += (out[(size_t)n * C + c] - m) * (out[(size_t)n * C + c] - m) / C;
        for (int c = 0; c < C; c++) vx += (x[(size_t)n * C + c] - mean[n]) * (x[(size_t)n * C + c] - mean[n]) / C;
        worst_m = fmax(worst_m, fabs(m));
        worst_v = fmax(worst_v, fabs(v - vx / (vx + 1e-5)));
        worst_1 = fmax(worst_1, fabs(v - 1));
    }
    check(worst_m < 1e-13 && worst_v < 1e-13 && worst_1 < 1e-4,
          ("layernorm unit weight: row mean 0, variance var/(var+eps) ~ 1 " + tag).c_str(),
          "max |mean| %.3g, max |var - var/(var+eps)| %.3g, max |var - 1| %.3g", worst_m, worst_v, worst_1);
}

static void test_layernorm_backward(int N, int C) {
    const std::string tag = fmt("N=%d C=%d", N, C);
    vecd x = rand_vec((size_t)N * C, -2, 2), w = rand_vec(C, -1.5, 1.5), b = rand_vec(C, -0.5, 0.5);
    const vecd G = rand_vec((size_t)N * C);
    vecd out((size_t)N * C), mean(N), rstd(N);
    auto loss = [&]() {
        layernorm_forward_ref(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
        return dotl(G, out);
    };
    loss();
    // from zero buffers: the gradients themselves
    vecd dx((size_t)N * C, 0.0), dw(C, 0.0), db(C, 0.0);
    layernorm_backward_ref(dx.data(), dw.data(), db.data(), G.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
    // from nonzero buffers: every output adds (+=)
    const vecd dx0 = rand_vec(dx.size()), dw0 = rand_vec(C), db0 = rand_vec(C);
    vecd dx1 = dx0, dw1 = dw0, db1 = db0;
    layernorm_backward_ref(dx1.data(), dw1.data(), db1.data(), G.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
    const double acc = fmax(rel_err(sub(dx1, dx0), dx, 1e-12), fmax(rel_err(sub(dw1, dw0), dw, 1e-12), rel_err(sub(db1, db0), db, 1e-12)));
    check(acc < 1e-9, ("layernorm backward dinp, dweight, dbias all add (+=) " + tag).c_str(), "max err %.3g", acc);
    // null dweight / dbias: dinp unchanged; null dinp: the parameter gradients unchanged
    vecd dx2((size_t)N * C, 0.0), dw2(C, 0.0), db2(C, 0.0);
    layernorm_backward_ref(dx2.data(), (double*)nullptr, (double*)nullptr, G.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
    layernorm_backward_ref((double*)nullptr, dw2.data(), db2.data(), G.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
    check(dx2 == dx && dw2 == dw && db2 == db, ("layernorm backward with null outputs computes the others unchanged " + tag).c_str());
    gradcheck("layernorm backward dinp vs central differences " + tag, x, dx, loss);
    gradcheck("layernorm backward dweight vs central differences " + tag, w, dw, loss);
    gradcheck("layernorm backward dbias vs central differences " + tag, b, db, loss);
}

// =========================================================================================================
// activation

// Phi(x) = 0.5 + int_0^x pdf by composite Simpson (independent of erf)
static double phi_simpson(double x) {
    const int n = 20000;
    const double h = x / n;
    double s = 0;
    for (int i = 0; i <= n; i++) {
        const double t = i * h, f = exp(-0.5 * t * t) / sqrt(2 * M_PI);
        s += f * (i == 0 || i == n ? 1 : (i % 2 ? 4 : 2));
    }
    return 0.5 + s * h / 3;
}

static void test_activation() {
    // GELU = x Phi(x): Phi from a table (standard normal CDF to 16 digits) and from Simpson integration
    const double table[][2] = {{0.5, 0.69146246127401310}, {1.0, 0.84134474606854293}, {-1.0, 0.15865525393145707},
                               {2.0, 0.97724986805182079}, {-2.5, 0.0062096653257761354}, {3.0, 0.99865010196837001}};
    double err_t = 0;
    for (auto& e : table) err_t = fmax(err_t, fabs(activation_value_ref(e[0], ACT_GELU) - e[0] * e[1]));
    check(err_t < 1e-15, "activation GELU = x Phi(x) at tabulated Phi values", "max err %.3g", err_t);
    double err_s = 0;
    for (double x = -6; x <= 6; x += 0.37) err_s = fmax(err_s, fabs(activation_value_ref(x, ACT_GELU) - x * phi_simpson(x)));
    check(err_s < 1e-12, "activation GELU = x Phi(x), Phi by Simpson integration of the pdf, x in [-6, 6]", "max err %.3g", err_s);
    check(activation_value_ref(0.0, ACT_GELU) == 0 && activation_grad_ref(0.0, ACT_GELU) == 0.5,
          "activation GELU(0) = 0, GELU'(0) = 1/2");

    check(activation_value_ref(-0.3, ACT_RELU) == 0 && activation_value_ref(0.0, ACT_RELU) == 0 &&
              activation_value_ref(1.7, ACT_RELU) == 1.7 && activation_grad_ref(0.0, ACT_RELU) == 0 &&
              activation_grad_ref(-1e-300, ACT_RELU) == 0 && activation_grad_ref(1e-300, ACT_RELU) == 1,
          "activation ReLU values, derivative 0 at 0 and below, 1 above");

    const ActivationKind kinds[] = {ACT_GELU, ACT_RELU};
    for (ActivationKind kind : kinds) {
        const char* kn = kind == ACT_GELU ? "GELU" : "ReLU";
        const size_t n = 301;
        vecd x = kind == ACT_RELU ? rand_away0(n, 0.01, 3) : rand_vec(n, -5, 5);
        const vecd G = rand_vec(n);
        vecd out(n), dx(n);
        auto loss = [&]() {
            activation_forward_ref(out.data(), x.data(), n, kind);
            return dotl(G, out);
        };
        activation_backward_ref(dx.data(), G.data(), x.data(), n, kind);
        gradcheck(fmt("activation %s backward vs central differences", kn), x, dx, loss);

        // the float launchers in place (out == inp, dinp == dout) equal the out-of-place calls
        vecf xf(x.begin(), x.end()), gf(G.begin(), G.end()), yf(n), dxf(n);
        activation_forward(yf.data(), xf.data(), n, kind, Stream());
        activation_backward(dxf.data(), gf.data(), xf.data(), n, kind, Stream());
        vecf xi = xf, gi = gf;
        activation_forward(xi.data(), xi.data(), n, kind, Stream());
        activation_backward(gi.data(), gi.data(), xf.data(), n, kind, Stream());
        check(xi == yf && gi == dxf, fmt("activation %s launchers in place (out = inp, dinp = dout)", kn).c_str());
    }
}

// =========================================================================================================
// l2norm

static void test_l2norm() {
    const int N = 6, C = 13;
    // rows: 0-2 ordinary, 3 tiny (||x|| ~ 1e-14 << eps = 1e-12: the linear branch), 4 zero, 5 just above eps (~1e-11)
    vecd x = rand_vec((size_t)N * C, -2, 2);
    for (int c = 0; c < C; c++) {
        x[3 * C + c] *= 1e-14;
        x[4 * C + c] = 0;
        x[5 * C + c] *= 1e-11;
    }
    const double row_scale[N] = {1, 1, 1, 1e-14, 0, 1e-11};
    vecd out((size_t)N * C), norm(N);
    l2norm_forward_ref(out.data(), norm.data(), x.data(), N, C);
    double err = 0;
    for (int n = 0; n < N; n++) {
        long double ss = 0;
        for (int c = 0; c < C; c++) ss += (long double)x[(size_t)n * C + c] * x[(size_t)n * C + c];
        const double want_norm = fmax((double)sqrtl(ss), 1e-12);
        err = fmax(err, fabs(norm[n] - want_norm) / want_norm);
        for (int c = 0; c < C; c++) err = fmax(err, fabs(out[(size_t)n * C + c] - x[(size_t)n * C + c] / want_norm) / (1e-300 + fabs(x[(size_t)n * C + c] / want_norm)) * (x[(size_t)n * C + c] != 0));
    }
    check(err < 1e-14, "l2norm forward: norm = max(||x||, 1e-12), out = x / norm (ordinary, tiny, zero rows)", "max rel err %.3g", err);
    check(norm[3] == 1e-12 && norm[4] == 1e-12 && norm[5] > 1e-12, "l2norm norm = eps exactly for the tiny and zero rows",
          "%.17g %.17g %.17g", norm[3], norm[4], norm[5]);
    double unit = 0;
    for (int n = 0; n < 3; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += out[(size_t)n * C + c] * out[(size_t)n * C + c];
        unit = fmax(unit, fabs(sqrt(ss) - 1));
    }
    check(unit < 1e-15, "l2norm ordinary rows have unit norm", "max | |out| - 1 | = %.3g", unit);

    const vecd G = rand_vec((size_t)N * C);
    vecd dx((size_t)N * C);
    l2norm_backward_ref(dx.data(), G.data(), x.data(), norm.data(), N, C);
    auto loss = [&]() {
        l2norm_forward_ref(out.data(), norm.data(), x.data(), N, C);
        return dotl(G, out);
    };
    // per row: h relative to the row's scale (the tiny row stays far below eps, the zero row's h = 1e-20 too)
    auto h_of = [&](size_t i) { return 1e-6 * fmax(row_scale[i / C], 1e-14); };
    // the rows differ in gradient scale by 1e12, so check them separately (the floor is per check)
    for (int n = 0; n < N; n++) {
        vecd xr(x.begin() + (size_t)n * C, x.begin() + (size_t)(n + 1) * C);
        vecd dr(dx.begin() + (size_t)n * C, dx.begin() + (size_t)(n + 1) * C);
        auto loss_r = [&]() {
            std::copy(xr.begin(), xr.end(), x.begin() + (size_t)n * C);
            return loss();
        };
        const char* kind = n < 3 ? "ordinary" : n == 3 ? "||x|| = 1e-14 < eps (linear)" : n == 4 ? "zero (linear)" : "||x|| ~ 1e-11 > eps";
        gradcheck(fmt("l2norm backward vs central differences, row %d %s", n, kind), xr, dr, loss_r,
                  FD_TOL, [&](size_t) { return h_of((size_t)n * C); });
        std::copy(xr.begin(), xr.end(), x.begin() + (size_t)n * C);
    }
    // the linear branch is dout / eps exactly
    double lin = 0;
    for (int n = 3; n <= 4; n++)
        for (int c = 0; c < C; c++) lin = fmax(lin, fabs(dx[(size_t)n * C + c] - G[(size_t)n * C + c] / 1e-12) / fabs(G[(size_t)n * C + c] / 1e-12));
    check(lin < 1e-15, "l2norm backward: rows with ||x|| <= eps get dout / eps", "max rel err %.3g", lin);
}

// =========================================================================================================
// dropout_add

static void test_dropout() {
    // keep fraction and the forward formula, elementwise, on 1e5 elements
    {
        const int rows = 400, C = 250;
        const float p = 0.1f;
        const uint64_t seed = 0x1234abcdull;
        const vecd inp = rand_vec((size_t)rows * C), res = rand_vec((size_t)rows * C);
        std::vector<uint8_t> mask(rows);
        for (int r = 0; r < rows; r++) mask[r] = (uint8_t)(r % 7 != 3);
        vecd out((size_t)rows * C);
        dropout_add_ref(out.data(), res.data(), inp.data(), mask.data(), rows, C, p, seed);
        size_t kept = 0, total = 0, bad = 0, masked_bad = 0;
        const double scale = 1.0 / (1.0 - (double)p);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < C; c++) {
                const size_t i = (size_t)r * C + c;
                if (!mask[r]) { masked_bad += out[i] != 0; continue; }
                const bool keep = hash_uniform(seed, i) >= p;
                total++;
                kept += keep;
                const double want = res[i] + (keep ? inp[i] * scale : 0.0);
                bad += fabs(out[i] - want) > 1e-15 * (fabs(want) + 1);
            }
        const double frac = (double)kept / total, sigma = sqrt(p * (1 - p) / total);
        check(fabs(frac - (1 - p)) < 5 * sigma, "dropout keep fraction ~ 1 - p (p = 0.1, ~8.6e4 unmasked elements)",
              "kept %.5f vs %.5f (sigma %.5f)", frac, 1 - p, sigma);
        check(bad == 0, "dropout_add kept = residual + inp / (1 - p), dropped = residual", "%zu of %zu differ", bad, total);
        check(masked_bad == 0, "dropout_add masked rows are 0", "%zu nonzero", masked_bad);
        // the same seed gives the same mask, another seed another mask
        vecd again((size_t)rows * C), other((size_t)rows * C);
        dropout_add_ref(again.data(), res.data(), inp.data(), mask.data(), rows, C, p, seed);
        dropout_add_ref(other.data(), res.data(), inp.data(), mask.data(), rows, C, p, seed + 1);
        size_t diff = 0;
        for (size_t i = 0; i < out.size(); i++) diff += other[i] != out[i];
        check(again == out && diff > out.size() / 20, "dropout_add mask is a function of the seed",
              "same seed equal: %d, other seed: %zu of %zu differ", again == out, diff, out.size());
        // p = 0.5: fraction too
        dropout_add_ref(other.data(), (const double*)nullptr, inp.data(), (const uint8_t*)nullptr, rows, C, 0.5f, seed);
        size_t nz = 0;
        for (size_t i = 0; i < out.size(); i++) nz += other[i] != 0;
        const double f5 = (double)nz / out.size(), s5 = sqrt(0.25 / out.size());
        check(fabs(f5 - 0.5) < 5 * s5, "dropout keep fraction ~ 0.5 at p = 0.5 (1e5 elements, null residual and mask)",
              "%.5f", f5);
    }
    // p = 0: out = residual + inp exactly, mask applied; p = 1: out = residual (no NaN from 0 * inf)
    {
        const int rows = 5, C = 9;
        const vecd inp = rand_vec((size_t)rows * C), res = rand_vec((size_t)rows * C);
        const std::vector<uint8_t> mask = {1, 0, 1, 1, 0};
        vecd out((size_t)rows * C), out1((size_t)rows * C);
        dropout_add_ref(out.data(), res.data(), inp.data(), mask.data(), rows, C, 0.0f, 99);
        dropout_add_ref(out1.data(), res.data(), inp.data(), (const uint8_t*)nullptr, rows, C, 1.0f, 99);
        bool ok0 = true, ok1 = true;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < C; c++) {
                const size_t i = (size_t)r * C + c;
                ok0 = ok0 && out[i] == (mask[r] ? res[i] + inp[i] : 0.0);
                ok1 = ok1 && out1[i] == res[i];
            }
        check(ok0, "dropout_add p = 0: out = mask * (residual + inp) exactly");
        check(ok1, "dropout_add p = 1: out = residual (every element dropped, no NaN)");
    }
    // aliasing with the float launcher: out == residual and out == inp give the out-of-place result
    {
        const int rows = 33, C = 50;
        const float p = 0.25f;
        vecf inp(rows * C), res(rows * C);
        for (int i = 0; i < rows * C; i++) { inp[i] = (float)uni(-1, 1); res[i] = (float)uni(-1, 1); }
        std::vector<uint8_t> mask(rows);
        for (int r = 0; r < rows; r++) mask[r] = (uint8_t)(r % 4 != 0);
        vecf out(rows * C), a = res, b = inp;
        dropout_add(out.data(), res.data(), inp.data(), mask.data(), rows, C, p, 7, Stream());
        dropout_add(a.data(), a.data(), inp.data(), mask.data(), rows, C, p, 7, Stream());
        dropout_add(b.data(), res.data(), b.data(), mask.data(), rows, C, p, 7, Stream());
        check(a == out && b == out, "dropout_add launcher in place (out = residual, out = inp)");
    }
    // backward: d_inp = dropout_add(nullptr, dout, mask, p, seed), d_res = dropout_add(nullptr, dout, mask, 0, 0)
    {
        const int rows = 7, C = 11;
        const float p = 0.3f;
        const uint64_t seed = 31337;
        vecd inp = rand_vec((size_t)rows * C), res = rand_vec((size_t)rows * C);
        const vecd G = rand_vec((size_t)rows * C);
        const std::vector<uint8_t> mask = {1, 1, 0, 1, 1, 1, 0};
        vecd out((size_t)rows * C), d_inp((size_t)rows * C), d_res((size_t)rows * C);
        auto loss = [&]() {
            dropout_add_ref(out.data(), res.data(), inp.data(), mask.data(), rows, C, p, seed);
            return dotl(G, out);
        };
        dropout_add_ref(d_inp.data(), (const double*)nullptr, G.data(), mask.data(), rows, C, p, seed);
        dropout_add_ref(d_res.data(), (const double*)nullptr, G.data(), mask.data(), rows, C, 0.0f, 0);
        gradcheck("dropout_add d_inp = dropout_add(dout, p, seed) vs central differences", inp, d_inp, loss);
        gradcheck("dropout_add d_residual = dropout_add(dout, p = 0) vs central differences", res, d_res, loss);
    }
    // adjoint: <dropout_add(g), x> = <g, dropout_add(x)> for the inp path (and the residual path)
    {
        const int rows = 300, C = 77;
        const float p = 0.15f;
        const uint64_t seed = 2718;
        const vecd g = rand_vec((size_t)rows * C), x = rand_vec((size_t)rows * C);
        std::vector<uint8_t> mask(rows);
        for (int r = 0; r < rows; r++) mask[r] = (uint8_t)(hash_below(5, 77, r) != 0);
        vecd Ag((size_t)rows * C), Ax((size_t)rows * C), Rg((size_t)rows * C), Rx((size_t)rows * C), zero((size_t)rows * C, 0.0);
        dropout_add_ref(Ag.data(), (const double*)nullptr, g.data(), mask.data(), rows, C, p, seed);
        dropout_add_ref(Ax.data(), (const double*)nullptr, x.data(), mask.data(), rows, C, p, seed);
        // the residual path of the forward: out(res = x, inp = 0) = m x; its backward dropout_add(g, p = 0)
        dropout_add_ref(Rx.data(), x.data(), zero.data(), mask.data(), rows, C, p, seed);
        dropout_add_ref(Rg.data(), (const double*)nullptr, g.data(), mask.data(), rows, C, 0.0f, 0);
        const double l = (double)dotl(Ag, x), r = (double)dotl(g, Ax), l2 = (double)dotl(Rg, x), r2 = (double)dotl(g, Rx);
        check(fabs(l - r) < 1e-12 * (fabs(l) + 1) && fabs(l2 - r2) < 1e-12 * (fabs(l2) + 1),
              "dropout_add backward is the adjoint: <A g, x> = <g, A x> (inp and residual paths)",
              "inp %.15g vs %.15g, residual %.15g vs %.15g", l, r, l2, r2);
    }
}

// =========================================================================================================
// mse

static void test_mse() {
    const size_t n = 37;
    const float scale = 0.3f, dloss = 1.7f;
    vecd a = rand_vec(n), b = rand_vec(n);
    double direct = 0;
    for (size_t i = 0; i < n; i++) direct += (a[i] - b[i]) * (a[i] - b[i]);
    double loss = 0.25;                                   // the op accumulates
    mse_forward_ref(&loss, a.data(), b.data(), n, scale);
    check(fabs(loss - (0.25 + scale * direct)) < 1e-12, "mse_forward = scale * sum (a - b)^2, added to the loss",
          "%.15g vs %.15g", loss, 0.25 + scale * direct);
    const vecd da0 = rand_vec(n), db0 = rand_vec(n);
    vecd da = da0, db = db0;
    mse_backward_ref(da.data(), db.data(), a.data(), b.data(), n, scale, dloss);
    auto value = [&]() -> long double { double l = 0; mse_forward_ref(&l, a.data(), b.data(), n, scale); return (long double)dloss * l; };
    gradcheck("mse_backward da (+=) vs central differences", a, sub(da, da0), value);
    gradcheck("mse_backward db (+=) vs central differences", b, sub(db, db0), value);
    vecd da2 = da0;
    mse_backward_ref(da2.data(), (double*)nullptr, a.data(), b.data(), n, scale, dloss);
    check(da2 == da, "mse_backward with db null gives the same da");
}

int main() {
    test_seed(20251206);
    test_mse();
    test_layernorm_forward(5, 37);
    test_layernorm_forward(1, 384);
    test_layernorm_forward(3, 2);
    test_layernorm_backward(4, 13);
    test_layernorm_backward(1, 8);
    test_layernorm_backward(6, 33);
    test_activation();
    test_l2norm();
    test_dropout();
    return test_summary();
}
