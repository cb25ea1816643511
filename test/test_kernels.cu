// Every op launcher the trainer uses (kernels/*.cuh), run on the device backend and compared with the op's CPU
// reference (the *_ref templates, in double unless a template needs matching types).
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -I. -Xcompiler -fopenmp test/test_kernels.cu -o build/test_kernels -lcublasLt -lgomp
//   (add -DENABLE_FP32 for build/test_kernels_fp32)
//
// Compiled by nvcc it tests the GPU launchers in the build's precision (BF16 by default, FP32 with
// -DENABLE_FP32); compiled as host C++ (g++ -fopenmp -x c++ test/test_kernels.cu) the same code tests the CPU
// launchers (float) against the double references, and the checks are named "cpu ..." instead of "gpu ...".
//
// Method, for every op: fresh random inputs from common/rand.h (a new seed per draw), rounded through floatX /
// floatS so that the reference sees exactly the device's inputs; every output buffer poisoned with 0xff bytes
// (NaN, or -1 for integers) before the launch, except those the op adds into or updates in place, which start
// from known random values on both sides; the launch on stream 0; the result downloaded and compared.
// Regions an op must not write (rows outside [offset, offset + S), elements before/after a sub-range) are
// checked too: they must still hold their poison (or initial values) afterwards.
//
// Without a CUDA device the nvcc build prints one SKIP line per op group and exits 0, or, with
// ARC_REQUIRE_GPU=1 in the environment, prints a FAIL line and exits 1.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <chrono>
#include <string>
#include <type_traits>
#include <vector>

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
#include "../kernels/kv_cache.cuh"
#include "../kernels/lm_head_loss.cuh"
#include "../kernels/lora.cuh"
#include "../kernels/masked_mean.cuh"
#include "../kernels/matmul.cuh"
#include "../kernels/mse.cuh"
#include "../kernels/muon.cuh"
#include "../kernels/puzzle_embedding.cuh"
#include "../kernels/q_halt_loss.cuh"
#include "../kernels/rmsnorm.cuh"
#include "../kernels/rope.cuh"
#include "../kernels/rows.cuh"
#include "../kernels/sigreg.cuh"
#include "../kernels/softmax_xent.cuh"
#include "../kernels/stablemax.cuh"
#include "../kernels/swiglu.cuh"
#include "../kernels/variational.cuh"
#include "test.h"

#if defined(ENABLE_FP64)
#error "test_kernels compares a float/bf16 backend with double references; build it without ENABLE_FP64"
#endif

#ifdef __CUDACC__
#define BK "gpu"
#else
#define BK "cpu"
#endif

typedef std::vector<double> vecd;
typedef std::vector<int> veci;
typedef std::vector<uint8_t> vecu8;

static const double NaN = nan("");
static const Stream st = Stream();      // stream 0

// ---------------------------------------------------------------------------------------------------------
// Tolerances. A check passes when |got - ref| <= rtol * |ref| + atol * scale for every element, where scale is
// the RMS of the reference's finite elements (1 if they are all zero); implemented with max_rel_error.

struct Tol { double rtol, atol; };
#if defined(__CUDACC__) && !defined(ENABLE_FP32)
static const bool BF16 = true;
#else
static const bool BF16 = false;
#endif
// elementwise results stored in floatX
static const Tol TOL_EW = BF16 ? Tol{1e-2, 1e-2} : Tol{1e-5, 1e-6};
// results of a reduction (matmul, attention, norms, means) stored in floatX
static const Tol TOL_RED = BF16 ? Tol{1e-2, 1e-2} : Tol{1e-5, 1e-5};
// attention backward in bf16 (probabilities and dS are rounded to bf16 for the tensor-core products)
static const Tol TOL_ATT_BWD = BF16 ? Tol{2e-2, 2e-2} : Tol{1e-5, 1e-5};
// fp32 (floatS) results computed from floatX inputs: parameter gradients, statistics, losses
static const Tol TOL_S = BF16 ? Tol{5e-3, 5e-3} : Tol{1e-5, 1e-5};
// fp32 results of fp32 inputs (optimizer state, EMA, norms, sign-SGD): the same in both builds
static const Tol TOL_F32 = {1e-5, 1e-6};
// SIGReg's per-slice values T_m = N sum_j w_j [(c_j - phi_j)^2 + s_j^2]: the factor N turns fp32 rounding of the
// means c_j, s_j (~1e-7) into ~N |c_j - phi_j| 1e-7 ~ sqrt(N) 1e-7 of T_m ~ 1 (no bf16 rounding of the outputs)
static const Tol TOL_SIGREG = BF16 ? Tol{5e-3, 5e-3} : Tol{1e-4, 1e-4};

// ---------------------------------------------------------------------------------------------------------
// Helpers

static uint64_t g_draw = 0;
static uint64_t fresh_seed() { return hash_u64(0x6b65726e656c73ull, ++g_draw); }
// Uniform in [lo, hi), a fresh seed per call.
static vecd rnd(size_t n, double lo, double hi) {
    const uint64_t seed = fresh_seed();
    vecd v(n);
    for (size_t i = 0; i < n; i++) v[i] = lo + (hi - lo) * (double)hash_uniform(seed, i);
    return v;
}
static veci rnd_int(size_t n, int below) {
    const uint64_t seed = fresh_seed();
    veci v(n);
    for (size_t i = 0; i < n; i++) v[i] = (int)hash_below((uint32_t)below, seed, i);
    return v;
}
static double rx1(double x) { return (double)to_float(from_float<floatX>(x)); }
static double rs1(double x) { return (double)to_float(from_float<floatS>(x)); }
static vecd rx(vecd v) { for (auto& x : v) x = rx1(x); return v; }     // as floatX holds it
static vecd rs(vecd v) { for (auto& x : v) x = rs1(x); return v; }     // as floatS holds it

// A device buffer of n elements of T.
template <typename T>
struct Dev {
    T* p = nullptr;
    size_t n = 0;
    explicit Dev(size_t n_) : n(n_) { p = (T*)device_malloc(std::max<size_t>(n, 1) * sizeof(T), "test_kernels buffer"); }
    explicit Dev(const vecd& v) : Dev(v.size()) { set(v); }
    explicit Dev(const std::vector<T>& v) : Dev(v.size()) { set_raw(v); }
    ~Dev() { device_free(p); }
    Dev(const Dev&) = delete;
    Dev& operator=(const Dev&) = delete;
    size_t bytes() const { return n * sizeof(T); }
    void poison() { device_memset(p, 0xff, bytes()); }
    void set(const vecd& v) {
        std::vector<T> tmp(n);
        for (size_t i = 0; i < n; i++) tmp[i] = from_float<T>(v[i]);
        copy_to_device(p, tmp.data(), bytes());
    }
    void set_raw(const std::vector<T>& v) { copy_to_device(p, v.data(), bytes()); }
    vecd get() const {
        std::vector<T> tmp(n);
        copy_to_host(tmp.data(), p, bytes());
        vecd r(n);
        for (size_t i = 0; i < n; i++) r[i] = (double)to_float(tmp[i]);
        return r;
    }
    std::vector<T> raw() const {
        std::vector<T> tmp(n);
        copy_to_host(tmp.data(), p, bytes());
        return tmp;
    }
};

// After every launch: surface asynchronous errors under the check's name (a faulted context cannot go on).
static void launched(const std::string& name) {
#ifdef __CUDACC__
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
        check(false, name.c_str(), "CUDA error after the launch: %s (no further check can run)", cudaGetErrorString(err));
        test_summary();
        exit(1);
    }
#else
    (void)name;
#endif
}

// got vs ref within tol. A NaN in ref marks an element the op must not write: got must still hold the poison
// (NaN); an infinite ref (lse of a query without keys) must be matched exactly.
static bool expect_close(const std::string& name, const vecd& got, const vecd& ref, Tol tol) {
    if (got.size() != ref.size()) return check(false, name.c_str(), "size %zu vs reference %zu", got.size(), ref.size());
    double ss = 0;
    size_t n_fin = 0;
    for (double r : ref) if (isfinite(r)) { ss += r * r; n_fin++; }
    const double scale = ss > 0 ? sqrt(ss / n_fin) : 1.0;
    vecd g, r;
    std::vector<size_t> idx;
    size_t n_special_bad = 0, special_where = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        if (isfinite(ref[i])) { g.push_back(got[i]); r.push_back(ref[i]); idx.push_back(i); continue; }
        const bool ok = isnan(ref[i]) ? (bool)isnan(got[i]) : got[i] == ref[i];
        if (!ok && n_special_bad++ == 0) special_where = i;
    }
    size_t where = 0;
    const double err = max_rel_error(g.data(), r.data(), g.size(), tol.atol * scale / tol.rtol, &where);
    const bool ok = err <= tol.rtol && n_special_bad == 0;
    if (ok) return check(true, name.c_str());
    if (n_special_bad)
        return check(false, name.c_str(), "%zu elements should be %s but are not: first at %zu (got %.9g, want %.9g); "
                     "max rel err elsewhere %.3g (tol %.1g)", n_special_bad, "untouched poison or +-inf", special_where,
                     got[special_where], ref[special_where], err, tol.rtol);
    return check(false, name.c_str(), "max rel err %.3g (tol %.1g, atol %.3g = %.1g x RMS %.3g) at element %zu of %zu: got %.9g want %.9g",
                 err, tol.rtol, tol.atol * scale, tol.atol, scale, idx[where], ref.size(), g[where], r[where]);
}

// Exact equality (NaN equals NaN: untouched poison).
static bool expect_exact(const std::string& name, const vecd& got, const vecd& ref) {
    if (got.size() != ref.size()) return check(false, name.c_str(), "size %zu vs reference %zu", got.size(), ref.size());
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        const bool ok = isnan(ref[i]) ? (bool)isnan(got[i]) : got[i] == ref[i];
        if (!ok && bad++ == 0) first = i;
    }
    if (!bad) return check(true, name.c_str());
    return check(false, name.c_str(), "%zu of %zu elements differ; first at %zu: got %.9g want %.9g", bad, ref.size(), first,
                 got[first], ref[first]);
}

template <typename I>
static bool expect_equal(const std::string& name, const std::vector<I>& got, const std::vector<I>& ref) {
    if (got.size() != ref.size()) return check(false, name.c_str(), "size %zu vs reference %zu", got.size(), ref.size());
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < ref.size(); i++)
        if (got[i] != ref[i] && bad++ == 0) first = i;
    if (!bad) return check(true, name.c_str());
    return check(false, name.c_str(), "%zu of %zu differ; first at %zu: got %lld want %lld", bad, ref.size(), first,
                 (long long)got[first], (long long)ref[first]);
}

template <typename T>
static bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}
template <typename T>
static bool expect_bitwise(const std::string& name, const std::vector<T>& a, const std::vector<T>& b) {
    size_t first = 0;
    if (a.size() == b.size())
        while (first < a.size() && !memcmp(&a[first], &b[first], sizeof(T))) first++;
    return check(same_bits(a, b), name.c_str(), "two runs on the same inputs differ (first at element %zu of %zu)", first, a.size());
}

// =========================================================================================================
// matmul

static void test_matmul_forward(int N, int C, int OC, bool bias) {
    const std::string name = fmt(BK " matmul_forward N=%d C=%d OC=%d%s", N, C, OC, bias ? " bias" : "");
    const vecd inp = rx(rnd((size_t)N * C, -1, 1)), w = rx(rnd((size_t)OC * C, -1, 1)), b = rx(rnd(OC, -1, 1));
    vecd ref((size_t)N * OC);
    matmul_forward_ref<double>(ref.data(), inp.data(), w.data(), bias ? b.data() : nullptr, N, C, OC);
    Dev<floatX> d_inp(inp), d_w(w), d_b(b), d_out(ref.size());
    d_out.poison();
    matmul_forward(d_out.p, d_inp.p, d_w.p, bias ? d_b.p : nullptr, N, C, OC, st);
    launched(name);
    expect_close(name, d_out.get(), ref, TOL_RED);
}

// dinp: accumulate_dinp (dinp starts from random values) or overwritten (poisoned); dweight / dbias always add
// onto random initial values; with_dweight = false passes null dweight and dbias (test-time latent optimisation).
static void test_matmul_backward(int N, int C, int OC, bool bias, bool acc_dinp, bool with_dweight = true) {
    const std::string tag = fmt("N=%d C=%d OC=%d%s%s%s", N, C, OC, bias ? " bias" : "", acc_dinp ? " accumulate_dinp" : "",
                                with_dweight ? "" : " dweight=null");
    const std::string name = BK " matmul_backward " + tag;
    const vecd dout = rx(rnd((size_t)N * OC, -1, 1)), inp = rx(rnd((size_t)N * C, -1, 1)), w = rx(rnd((size_t)OC * C, -1, 1));
    const vecd dinp0 = rx(rnd((size_t)N * C, -1, 1)), dw0 = rs(rnd((size_t)OC * C, -1, 1)), db0 = rs(rnd(OC, -1, 1));
    vecd dinp = acc_dinp ? dinp0 : vecd((size_t)N * C), dw = dw0, db = db0;
    const bool with_db = bias && with_dweight;
    matmul_backward_ref<double>(dinp.data(), with_dweight ? dw.data() : nullptr, with_db ? db.data() : nullptr, dout.data(),
                                inp.data(), w.data(), N, C, OC, acc_dinp);
    Dev<floatX> d_dout(dout), d_inp(inp), d_w(w), d_dinp(dinp0);
    Dev<floatS> d_dw(dw0), d_db(db0);
    if (!acc_dinp) d_dinp.poison();
    matmul_backward(d_dinp.p, with_dweight ? d_dw.p : nullptr, with_db ? d_db.p : nullptr, d_dout.p, d_inp.p, d_w.p, N, C, OC,
                    acc_dinp, st);
    launched(name);
    expect_close(name + " dinp", d_dinp.get(), dinp, TOL_RED);
    if (with_dweight) expect_close(name + " dweight (+=)", d_dw.get(), dw, TOL_S);
    if (with_db) expect_close(name + " dbias (+=)", d_db.get(), db, TOL_S);
}

static void test_matmul() {
    // the trainer's shapes (D=512, T=916, B=2: N = 1832; I = 1536; V = 12; q head OC = 2; latent_proj P*D = 8192)
    test_matmul_forward(37, 64, 2, true);
    test_matmul_forward(1000, 64, 192, false);
    test_matmul_forward(1832, 512, 1536, false);
    test_matmul_forward(1832, 512, 12, false);
    test_matmul_forward(8, 512, 8192, false);
    test_matmul_forward(20, 64, 64, true);
    test_matmul_forward(1, 64, 2, true);

    test_matmul_backward(37, 64, 2, true, false);
    test_matmul_backward(1, 64, 2, true, false);
    test_matmul_backward(1000, 64, 192, false, true);
    test_matmul_backward(20, 64, 64, true, false);
    test_matmul_backward(20, 64, 64, true, true);
    test_matmul_backward(1832, 512, 1536, false, true);
    test_matmul_backward(1832, 1536, 512, false, false);
    test_matmul_backward(1832, 512, 12, false, true);
    test_matmul_backward(8, 512, 8192, false, false);
    test_matmul_backward(8, 512, 8192, false, false, false);
}

// Odd sizes (rows of 37 or 1 elements: unaligned leading dimensions for cuBLASLt). Run last: a launcher that
// cannot handle them exits through fatal(), which must not hide the other groups' results.
static void test_matmul_odd() {
    test_matmul_forward(1, 37, 37, true);
    test_matmul_forward(1000, 37, 1, false);
    test_matmul_forward(333, 96, 130, true);
    test_matmul_forward(7, 33, 5, true);
    test_matmul_backward(1, 37, 37, true, true);
    test_matmul_backward(1000, 37, 1, false, false);
    test_matmul_backward(333, 96, 130, true, true);
    test_matmul_backward(7, 33, 5, true, false);
    test_matmul_backward(5, 37, 70, false, false, false);
}

// =========================================================================================================
// rmsnorm

static const float RMS_EPS = 1e-5f;

// Rows where eps matters: row 0 scaled by 1e-3, and (N > 2) the last row all zero (rstd = 1/sqrt(eps)), as the
// zero-padded prefix rows of TRM's puzzle embedding.
static void small_rows(vecd& x, int N, int C) {
    if (N < 2) return;
    for (int c = 0; c < C; c++) x[c] *= 1e-3;
    if (N > 2) std::fill(x.end() - C, x.end(), 0.0);
}

static void test_rmsnorm_forward(int N, int C, bool residual, bool alias) {
    const std::string name = fmt(BK " rmsnorm_forward N=%d C=%d%s%s", N, C, residual ? " residual" : "", alias ? " out==inp" : "");
    vecd inp = rnd((size_t)N * C, -2, 2), res = rnd((size_t)N * C, -2, 2);
    small_rows(inp, N, C);
    small_rows(res, N, C);
    inp = rx(inp);
    res = rx(res);
    vecd out((size_t)N * C), rstd(N);
    rmsnorm_forward_ref<double>(out.data(), rstd.data(), inp.data(), residual ? res.data() : nullptr, N, C, RMS_EPS);
    Dev<floatX> d_inp(inp), d_res(res), d_out(out.size());
    Dev<floatS> d_rstd(N);
    d_out.poison();
    d_rstd.poison();
    rmsnorm_forward(alias ? d_inp.p : d_out.p, d_rstd.p, d_inp.p, residual ? d_res.p : nullptr, N, C, RMS_EPS, st);
    launched(name);
    expect_close(name + " out", alias ? d_inp.get() : d_out.get(), out, TOL_RED);
    expect_close(name + " rstd", d_rstd.get(), rstd, TOL_S);
}

// mode 0: dinp separate, overwritten; 1: dinp separate, accumulate; 2: dinp == dout, overwritten (post-norm blocks)
static void test_rmsnorm_backward(int N, int C, int mode) {
    static const char* modes[] = {"", " accumulate", " dinp==dout"};
    const std::string name = fmt(BK " rmsnorm_backward N=%d C=%d%s", N, C, modes[mode]);
    vecd x = rnd((size_t)N * C, -2, 2), y((size_t)N * C), r(N);
    small_rows(x, N, C);
    rmsnorm_forward_ref<double>(y.data(), r.data(), x.data(), nullptr, N, C, RMS_EPS);
    y = rx(y);
    r = rs(r);
    const vecd dout = rx(rnd((size_t)N * C, -1, 1)), dinp0 = rx(rnd((size_t)N * C, -1, 1));
    vecd ref = mode == 1 ? dinp0 : vecd((size_t)N * C);
    rmsnorm_backward_ref<double>(ref.data(), dout.data(), y.data(), r.data(), N, C, mode == 1);
    Dev<floatX> d_dout(dout), d_y(y), d_dinp(dinp0);
    Dev<floatS> d_r(r);
    if (mode == 0) d_dinp.poison();
    floatX* dinp = mode == 2 ? d_dout.p : d_dinp.p;
    rmsnorm_backward(dinp, d_dout.p, d_y.p, d_r.p, N, C, mode == 1, st);
    launched(name);
    expect_close(name, mode == 2 ? d_dout.get() : d_dinp.get(), ref, TOL_RED);
}

// RMSNorm with a weight (Qwen2's). out against the double reference; and exactly the Qwen2RMSNorm rounding from
// the kernel's own rstd: floatX(floatX(inp * rstd) * weight), in fp32 (in the fp32 build: inp * rstd * weight).
static void test_rmsnorm_weighted_forward(int N, int C, bool alias) {
    const std::string name = fmt(BK " rmsnorm_weighted_forward N=%d C=%d%s", N, C, alias ? " out==inp" : "");
    vecd inp = rnd((size_t)N * C, -2, 2);
    small_rows(inp, N, C);
    inp = rx(inp);
    const vecd w = rx(rnd(C, 0.5, 1.5));
    vecd out((size_t)N * C), rstd(N);
    rmsnorm_weighted_forward_ref<double>(out.data(), rstd.data(), inp.data(), w.data(), N, C, RMS_EPS);
    Dev<floatX> d_inp(inp), d_w(w), d_out(out.size());
    Dev<floatS> d_rstd(N);
    d_out.poison();
    d_rstd.poison();
    rmsnorm_weighted_forward(alias ? d_inp.p : d_out.p, d_rstd.p, d_inp.p, d_w.p, N, C, RMS_EPS, st);
    launched(name);
    const vecd got = alias ? d_inp.get() : d_out.get(), got_rstd = d_rstd.get();
    expect_close(name + " out", got, out, TOL_RED);
    expect_close(name + " rstd", got_rstd, rstd, TOL_S);
    vecd rounded(out.size());
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            const float xhat = (float)inp[(size_t)n * C + c] * (float)got_rstd[n];
            rounded[(size_t)n * C + c] = rx1((float)rx1(xhat) * (float)w[c]);
        }
    expect_exact(name + " out rounds as Qwen2RMSNorm (xhat to floatX, then times weight)", got, rounded);
}

// dweight always adds onto random values (or is null: a frozen weight); dinp as test_rmsnorm_backward's modes.
// Then the same launch again on the same inputs: dinp and dweight must repeat bit for bit.
static void test_rmsnorm_weighted_backward(int N, int C, int mode, bool with_dweight = true) {
    static const char* modes[] = {"", " accumulate", " dinp==dout"};
    const std::string name = fmt(BK " rmsnorm_weighted_backward N=%d C=%d%s%s", N, C, modes[mode],
                                 with_dweight ? "" : " dweight=null");
    vecd x = rnd((size_t)N * C, -2, 2), y((size_t)N * C), r(N);
    small_rows(x, N, C);
    x = rx(x);
    const vecd w = rx(rnd(C, 0.5, 1.5));
    rmsnorm_weighted_forward_ref<double>(y.data(), r.data(), x.data(), w.data(), N, C, RMS_EPS);
    r = rs(r);
    const vecd dout = rx(rnd((size_t)N * C, -1, 1)), dinp0 = rx(rnd((size_t)N * C, -1, 1)), dw0 = rs(rnd(C, -1, 1));
    vecd ref = mode == 1 ? dinp0 : vecd((size_t)N * C), dw = dw0;
    rmsnorm_weighted_backward_ref<double>(ref.data(), with_dweight ? dw.data() : nullptr, dout.data(), x.data(), w.data(),
                                          r.data(), N, C, mode == 1);
    Dev<floatX> d_dout(dout), d_x(x), d_w(w), d_dinp(dinp0);
    Dev<floatS> d_r(r), d_dw(dw0);
    std::vector<floatX> dinp_first;
    std::vector<floatS> dw_first;
    for (int run = 0; run < 2; run++) {
        d_dinp.set(dinp0);
        d_dout.set(dout);
        d_dw.set(dw0);
        if (mode == 0) d_dinp.poison();
        floatX* dinp = mode == 2 ? d_dout.p : d_dinp.p;
        rmsnorm_weighted_backward(dinp, with_dweight ? d_dw.p : nullptr, d_dout.p, d_x.p, d_w.p, d_r.p, N, C, mode == 1, st);
        launched(name);
        const Dev<floatX>& result = mode == 2 ? d_dout : d_dinp;
        if (run == 0) {
            expect_close(name + " dinp", result.get(), ref, TOL_RED);
            if (with_dweight) expect_close(name + " dweight (+=)", d_dw.get(), dw, TOL_S);
            else expect_exact(name + " dweight untouched", d_dw.get(), dw0);
            dinp_first = result.raw();
            dw_first = d_dw.raw();
        } else {
            expect_bitwise(name + " dinp repeatable", result.raw(), dinp_first);
            expect_bitwise(name + " dweight repeatable", d_dw.raw(), dw_first);
        }
    }
}

static void test_rmsnorm() {
    const int shapes[][2] = {{1, 37}, {1000, 64}, {37, 384}, {1832, 512}, {5, 1000}};
    for (auto& s : shapes) {
        test_rmsnorm_forward(s[0], s[1], false, false);
        test_rmsnorm_forward(s[0], s[1], true, false);
        test_rmsnorm_forward(s[0], s[1], false, true);
        test_rmsnorm_forward(s[0], s[1], true, true);
        for (int mode = 0; mode < 3; mode++) test_rmsnorm_backward(s[0], s[1], mode);
    }
    // Qwen2.5-0.5B's width 896 (2 x 1024 tokens; and ragged N), C = 64, an odd C (the scalar path); N from 1 row to
    // many rows per dweight chunk (16 rows per chunk at N = 2048, a short last chunk at N = 4099)
    const int wshapes[][2] = {{1, 896}, {2048, 896}, {4099, 64}, {37, 64}, {300, 37}, {7, 896}};
    for (auto& s : wshapes) {
        test_rmsnorm_weighted_forward(s[0], s[1], false);
        test_rmsnorm_weighted_forward(s[0], s[1], true);
        for (int mode = 0; mode < 3; mode++) test_rmsnorm_weighted_backward(s[0], s[1], mode);
    }
    test_rmsnorm_weighted_backward(4099, 64, 1, false);
    test_rmsnorm_weighted_backward(7, 896, 0, false);
    test_rmsnorm_weighted_backward(300, 37, 2, false);     // frozen norm, in place (dinp == dout), the scalar path
}

// =========================================================================================================
// rope: in place on fused qkv rows (q and k heads rotated, v heads and rows t < skip untouched)

static void test_rope(int B, int T, int NH, int HD, int skip, bool backward) {
    const std::string name = fmt(BK " %s B=%d T=%d NH=%d HD=%d skip=%d (fused qkv rows)", backward ? "rope_backward" : "rope_forward",
                                 B, T, NH, HD, skip);
    const int row_stride = 3 * NH * HD, n_heads = 2 * NH, n_pos = T - skip;
    std::vector<float> cs((size_t)n_pos * HD), sn((size_t)n_pos * HD);
    rope_tables(cs.data(), sn.data(), n_pos, HD, 10000.0f);
    const vecd csd(cs.begin(), cs.end()), snd(sn.begin(), sn.end());
    const vecd x = rx(rnd((size_t)B * T * row_stride, -1, 1));
    vecd ref = x;
    rope_rotate_ref<double>(ref.data(), csd.data(), snd.data(), B, T, n_heads, HD, row_stride, skip, backward ? -1 : 1);
    Dev<floatS> d_cs(csd), d_sn(snd);
    Dev<floatX> d_x(x);
    if (backward) rope_backward(d_x.p, d_cs.p, d_sn.p, B, T, n_heads, HD, row_stride, skip, st);
    else rope_forward(d_x.p, d_cs.p, d_sn.p, B, T, n_heads, HD, row_stride, skip, st);
    launched(name);
    expect_close(name, d_x.get(), ref, TOL_EW);
}

static void test_rope_all() {
    for (int bwd = 0; bwd < 2; bwd++) {
        test_rope(2, 916, 8, 64, 0, bwd);
        test_rope(3, 33, 2, 16, 1, bwd);
        test_rope(1, 7, 1, 16, 1, bwd);
        test_rope(2, 101, 4, 64, 1, bwd);
        test_rope(5, 1, 1, 64, 0, bwd);
        test_rope(2, 17, 2, 24, 1, bwd);          // half-head 12: not a whole number of bf16 packs
        test_rope(2, 9, 3, 4, 1, bwd);
    }
}

// =========================================================================================================
// attention

// Random key mask (about 70% on); batch row `all_off` (if >= 0) fully masked; every other row has a valid key.
static vecu8 make_mask(int B, int Tk, int all_off) {
    const uint64_t seed = fresh_seed();
    vecu8 m((size_t)B * Tk);
    for (int b = 0; b < B; b++) {
        for (int j = 0; j < Tk; j++) m[(size_t)b * Tk + j] = b == all_off ? 0 : hash_uniform(seed, (uint64_t)b * Tk + j) < 0.7f;
        if (b != all_off) m[(size_t)b * Tk + hash_below((uint32_t)Tk, seed, b, 1)] = 1;
    }
    return m;
}

// q, k, v given as device pointers with strides; the host copies are the full tensors they point into.
struct AttnCase {
    int B, Tq, Tk, NH, NKV, HD, q_stride, kv_stride;
    const uint8_t* mask;
    bool causal;
};

// Returns the forward's out as the device wrote it.
static vecd run_attention(const std::string& name, const AttnCase& a, const vecd& qh, const vecd& kh, const vecd& vh,
                          size_t q_off, size_t k_off, size_t v_off, bool fused) {
    const int C = a.NH * a.HD;
    // ---- forward
    vecd out((size_t)a.B * a.Tq * C), lse((size_t)a.B * a.NH * a.Tq);
    attention_forward_ref<double>(out.data(), lse.data(), qh.data() + q_off, kh.data() + k_off, vh.data() + v_off, a.mask, a.B,
                                  a.Tq, a.Tk, a.NH, a.NKV, a.HD, a.q_stride, a.kv_stride, a.causal);
    Dev<floatX> d_q(qh), d_k(fused ? vecd() : kh), d_v(fused ? vecd() : vh);
    const floatX* dq_base = d_q.p;
    const floatX* dk_base = fused ? d_q.p : d_k.p;
    const floatX* dv_base = fused ? d_q.p : d_v.p;
    Dev<uint8_t> d_mask(a.mask ? (size_t)a.B * a.Tk : 0);
    if (a.mask) copy_to_device(d_mask.p, a.mask, (size_t)a.B * a.Tk);
    const uint8_t* mask = a.mask ? d_mask.p : nullptr;
    Dev<floatX> d_out(out.size());
    Dev<floatS> d_lse(lse.size());
    d_out.poison();
    d_lse.poison();
    attention_forward(d_out.p, d_lse.p, dq_base + q_off, dk_base + k_off, dv_base + v_off, mask, a.B, a.Tq, a.Tk, a.NH, a.NKV,
                      a.HD, a.q_stride, a.kv_stride, a.causal, st);
    launched(BK " attention_forward " + name);
    const vecd got_out = d_out.get();
    expect_close(BK " attention_forward " + name + " out", got_out, out, TOL_RED);
    expect_close(BK " attention_forward " + name + " lse", d_lse.get(), lse, TOL_S);

    // ---- backward from the reference forward's out / lse (rounded as the device stores them)
    const vecd out_in = rx(out), lse_in = rs(lse), dout = rx(rnd(out.size(), -1, 1));
    // gradients have the layouts of q, k, v: one dqkv tensor when fused, else three
    vecd gq(qh.size(), NaN), gk(fused ? 0 : kh.size(), NaN), gv(fused ? 0 : vh.size(), NaN);
    double* gk_base = fused ? gq.data() : gk.data();
    double* gv_base = fused ? gq.data() : gv.data();
    attention_backward_ref<double>(gq.data() + q_off, gk_base + k_off, gv_base + v_off, dout.data(), out_in.data(), lse_in.data(),
                                   qh.data() + q_off, kh.data() + k_off, vh.data() + v_off, a.mask, a.B, a.Tq, a.Tk, a.NH, a.NKV,
                                   a.HD, a.q_stride, a.kv_stride, a.causal);
    Dev<floatX> d_dout(dout), d_out_in(out_in);
    Dev<floatS> d_lse_in(lse_in);
    Dev<floatX> d_gq(gq.size()), d_gk(gk.size()), d_gv(gv.size());
    floatX* gkp = fused ? d_gq.p : d_gk.p;
    floatX* gvp = fused ? d_gq.p : d_gv.p;
    std::vector<floatX> first[3];
    const std::string bname = BK " attention_backward " + name;
    // dk, dv of a kv head sum NH / NKV heads' terms (7 x 1024 at Qwen2.5-0.5B): the fp32 rounding of the sums
    // grows with them (bf16: dominated by the rounding of P and dS, relative, which does not)
    const double group = BF16 ? 1.0 : (double)(a.NH / a.NKV);
    const Tol tol{TOL_ATT_BWD.rtol * group, TOL_ATT_BWD.atol * group};
    for (int run = 0; run < 2; run++) {
        d_gq.poison();
        d_gk.poison();
        d_gv.poison();
        attention_backward(d_gq.p + q_off, gkp + k_off, gvp + v_off, d_dout.p, d_out_in.p, d_lse_in.p, dq_base + q_off,
                           dk_base + k_off, dv_base + v_off, mask, a.B, a.Tq, a.Tk, a.NH, a.NKV, a.HD, a.q_stride, a.kv_stride,
                           a.causal, st);
        launched(bname);
        if (run == 0) {
            if (fused) {
                expect_close(bname + " dqkv", d_gq.get(), gq, tol);
            } else {
                expect_close(bname + " dq", d_gq.get(), gq, tol);
                expect_close(bname + " dk", d_gk.get(), gk, tol);
                expect_close(bname + " dv", d_gv.get(), gv, tol);
            }
            first[0] = d_gq.raw();
            first[1] = d_gk.raw();
            first[2] = d_gv.raw();
        } else {
            check(same_bits(first[0], d_gq.raw()) && same_bits(first[1], d_gk.raw()) && same_bits(first[2], d_gv.raw()),
                  (bname + " deterministic (two runs bitwise identical)").c_str(), "two runs on the same inputs differ");
        }
    }
    return got_out;
}

// " NKV=.. causal" for the options that are on (nothing for plain multi-head attention).
static std::string attention_options(int NH, int NKV, bool causal) {
    return (NKV != NH ? fmt(" NKV=%d", NKV) : std::string()) + (causal ? " causal" : "");
}

// Self-attention reading q, k, v from fused rows [q: NH*HD | k: NKV*HD | v: NKV*HD] (q_stride = kv_stride =
// (NH + 2 NKV)*HD), as the trainers' blocks.
static void test_attention_self(int B, int T, int NH, int HD, bool masked, int NKV = 0, bool causal = false) {
    NKV = NKV ? NKV : NH;
    const int C = NH * HD, S = (NH + 2 * NKV) * HD;
    const vecd qkv = rx(rnd((size_t)B * T * S, -2, 2));
    const vecu8 mask = masked ? make_mask(B, T, B > 1 ? B - 1 : -1) : vecu8();
    const std::string name = fmt("self B=%d T=%d NH=%d HD=%d fused qkv%s", B, T, NH, HD,
                                 masked ? (B > 1 ? " key mask (last batch row fully masked)" : " key mask") : "") +
                             attention_options(NH, NKV, causal);
    AttnCase a{B, T, T, NH, NKV, HD, S, S, masked ? mask.data() : nullptr, causal};
    run_attention(name, a, qkv, qkv, qkv, 0, C, C + NKV * HD, true);
}

// Cross-attention with separate q (B, Tq, NH*HD) and k, v (B, Tk, NKV*HD) tensors, as the set encoder.
static void test_attention_cross(int B, int Tq, int Tk, int NH, int HD, int all_off, int NKV = 0, bool causal = false) {
    NKV = NKV ? NKV : NH;
    const int C = NH * HD, CK = NKV * HD;
    const vecd q = rx(rnd((size_t)B * Tq * C, -2, 2)), k = rx(rnd((size_t)B * Tk * CK, -2, 2)), v = rx(rnd((size_t)B * Tk * CK, -1, 1));
    const bool masked = all_off != -2;
    const vecu8 mask = masked ? make_mask(B, Tk, all_off) : vecu8();
    const std::string name = fmt("cross B=%d Tq=%d Tk=%d NH=%d HD=%d%s", B, Tq, Tk, NH, HD,
                                 !masked ? "" : all_off >= 0 ? fmt(" key mask (batch row %d fully masked)", all_off).c_str() : " key mask") +
                             attention_options(NH, NKV, causal);
    AttnCase a{B, Tq, Tk, NH, NKV, HD, C, CK, masked ? mask.data() : nullptr, causal};
    run_attention(name, a, q, k, v, 0, 0, 0, false);
}

// Left-padded rows (right-aligned prompts, as generation's prompt pass) under causal masking, fused qkv rows: row b's
// first pad[b] keys off, the rest on (row 0: half of them; the last row: all). A query i < pad[b] sees no key: its
// out must be exactly 0 and its lse -inf (run_attention's lse check matches -inf exactly), its gradients 0.
static void test_attention_left_padded(int B, int T, int NH, int NKV, int HD) {
    const int C = NH * HD, S = (NH + 2 * NKV) * HD;
    const vecd qkv = rx(rnd((size_t)B * T * S, -2, 2));
    const uint64_t seed = fresh_seed();
    std::vector<int> pad(B);
    vecu8 mask((size_t)B * T);
    for (int b = 0; b < B; b++) {
        pad[b] = b == B - 1 ? T : b == 0 ? T / 2 : (int)hash_below((uint32_t)T, seed, b);
        for (int j = 0; j < T; j++) mask[(size_t)b * T + j] = j >= pad[b];
    }
    const std::string name = fmt("self B=%d T=%d NH=%d HD=%d fused qkv, left-padded key mask", B, T, NH, HD) +
                             attention_options(NH, NKV, true);
    AttnCase a{B, T, T, NH, NKV, HD, S, S, mask.data(), true};
    const vecd out = run_attention(name, a, qkv, qkv, qkv, 0, C, C + NKV * HD, true);
    vecd got;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < pad[b]; i++) got.insert(got.end(), out.begin() + ((size_t)b * T + i) * C, out.begin() + ((size_t)b * T + i + 1) * C);
    expect_exact(BK " attention_forward " + name + " out of the queries without a key is 0", got, vecd(got.size(), 0.0));
}

// The KV cache's decoding step (common/transformer.h, pos > 0): one new query per sample, read from its fused qkv
// row (q_stride = (NH + 2 NKV) HD), over all Tmax cached keys and values (B, Tmax, NKV HD): kv_stride = NKV HD, under
// the cache's (B, Tmax) key mask (a left padding of row b > 0, then every position up to pos), not causal. The cache
// rows after pos (not written yet) hold values 50x larger that the mask must hide.
static void test_attention_decode(int B, int Tmax, int pos, int NH, int NKV, int HD) {
    const int S = (NH + 2 * NKV) * HD, KD = NKV * HD;
    const vecd qkv = rx(rnd((size_t)B * S, -2, 2));
    vecd k = rnd((size_t)B * Tmax * KD, -2, 2), v = rnd((size_t)B * Tmax * KD, -1, 1);
    const uint64_t seed = fresh_seed();
    vecu8 mask((size_t)B * Tmax);
    for (int b = 0; b < B; b++) {
        const int pad = b == 0 ? 0 : (int)hash_below((uint32_t)pos + 1, seed, b);      // <= pos: the new token is seen
        for (int j = 0; j < Tmax; j++) {
            mask[(size_t)b * Tmax + j] = j >= pad && j <= pos;
            if (j > pos)
                for (int c = 0; c < KD; c++) {
                    k[((size_t)b * Tmax + j) * KD + c] *= 50;
                    v[((size_t)b * Tmax + j) * KD + c] *= 50;
                }
        }
    }
    const std::string name = fmt("decode B=%d Tq=1 Tk=Tmax=%d pos=%d NH=%d HD=%d q from fused qkv rows, (B, Tmax) key/value "
                                 "cache and key mask", B, Tmax, pos, NH, HD) + attention_options(NH, NKV, false);
    AttnCase a{B, 1, Tmax, NH, NKV, HD, S, KD, mask.data(), false};
    run_attention(name, a, qkv, rx(k), rx(v), 0, 0, 0, false);
}

static void test_attention() {
    test_attention_self(2, 916, 8, 64, false);     // the decoder at D=512
    test_attention_self(3, 33, 2, 16, false);
    test_attention_self(1, 7, 1, 64, false);
    test_attention_self(2, 100, 4, 16, true);
    test_attention_self(3, 1, 2, 64, false);
    test_attention_cross(3, 16, 10, 4, 16, 1);     // the set encoder: 16 queries over <= 10 demos
    test_attention_cross(2, 7, 33, 2, 64, 0);
    test_attention_cross(2, 100, 7, 1, 64, -2);
    test_attention_cross(2, 33, 100, 8, 64, -1);
    test_attention_cross(4, 16, 10, 8, 64, 3);
    test_attention_cross(2, 200, 33, 2, 64, 1);    // Tq >= 128: the forward's two-row-block tiles
    test_attention_self(2, 33, 2, 24, true);       // HD = 24: no tensor-core kernel, the SIMT path in both builds
    test_attention_cross(3, 16, 10, 2, 24, 2);
    // causal (bottom-right aligned), GQA (NKV < NH), both: ragged tiles, HD 32 / 64 / 128, Tq != Tk
    test_attention_self(2, 1024, 14, 64, false, 2, true);   // Qwen2.5-0.5B: NH 14, NKV 2, HD 64
    test_attention_self(2, 300, 4, 64, false, 4, true);
    test_attention_self(2, 100, 4, 32, true, 4, true);
    test_attention_self(3, 77, 4, 128, false, 4, true);
    test_attention_self(2, 130, 4, 64, false, 2, false);
    test_attention_self(2, 45, 6, 32, true, 2, false);
    test_attention_self(2, 70, 4, 128, false, 1, false);
    test_attention_self(2, 95, 8, 32, true, 2, true);
    test_attention_self(2, 66, 4, 128, true, 2, true);
    test_attention_self(2, 9, 4, 16, false, 1, true);
    test_attention_self(2, 37, 4, 24, true, 2, true);       // HD = 24: the SIMT path with both options
    test_attention_cross(2, 70, 200, 4, 64, -2, 4, true);    // Tq < Tk: queries see Tk - Tq + 1 keys and more
    test_attention_cross(2, 200, 70, 4, 64, -1, 2, true);    // Tq > Tk: the first 130 queries see no key
    test_attention_cross(3, 33, 100, 6, 32, 1, 3, true);
    test_attention_cross(2, 150, 61, 2, 128, -2, 1, true);
    test_attention_cross(3, 16, 10, 4, 64, 1, 2, false);
    test_attention_cross(2, 40, 25, 4, 24, -1, 1, true);     // SIMT
    // train_cvae's generation: the left-padded prompt pass (causal with a key mask) and the cached decoding step
    test_attention_left_padded(3, 37, 4, 2, 16);
    test_attention_left_padded(4, 130, 14, 2, 64);           // Qwen2.5-0.5B's heads, two query tiles
    test_attention_left_padded(2, 29, 4, 1, 24);             // SIMT
    test_attention_decode(3, 40, 17, 4, 2, 16);
    test_attention_decode(4, 512, 300, 14, 2, 64);           // Qwen2.5-0.5B, a 512-token cache
    test_attention_decode(2, 33, 1, 4, 4, 64);               // the first decoding step: 2 cached positions
    test_attention_decode(2, 70, 69, 2, 1, 128);             // the last position of the cache
    test_attention_decode(3, 21, 9, 4, 2, 24);               // SIMT
}

// =========================================================================================================
// kv_cache_write: the keys and values of T new positions, from fused qkv rows of width row = QD + 2 KD + extra, into
// the (B, Tmax, KD) caches at positions pos..pos+T-1; every other cache row must keep its poison. A copy: exact.

static void test_kv_cache_write(int B, int T, int pos, int Tmax, int NH, int NKV, int HD, int extra) {
    const int QD = NH * HD, KD = NKV * HD, row = QD + 2 * KD + extra;
    const std::string name = fmt(BK " kv_cache_write B=%d T=%d pos=%d Tmax=%d QD=%d KD=%d row=%d", B, T, pos, Tmax, QD, KD, row);
    const vecd qkv = rx(rnd((size_t)B * T * row, -2, 2));
    vecd kref((size_t)B * Tmax * KD, NaN), vref((size_t)B * Tmax * KD, NaN);
    kv_cache_write_ref<double>(kref.data(), vref.data(), qkv.data(), B, T, pos, Tmax, QD, KD, row);
    Dev<floatX> d_qkv(qkv), d_k(kref.size()), d_v(vref.size());
    d_k.poison();
    d_v.poison();
    kv_cache_write(d_k.p, d_v.p, d_qkv.p, B, T, pos, Tmax, QD, KD, row, st);
    launched(name);
    expect_exact(name + " keys", d_k.get(), kref);
    expect_exact(name + " values", d_v.get(), vref);
}

static void test_kv_cache() {
    test_kv_cache_write(3, 1, 5, 9, 4, 2, 16, 0);       // one decoding step in the middle of the cache
    test_kv_cache_write(2, 7, 0, 7, 14, 2, 64, 0);      // a prompt pass filling the whole cache (Qwen2.5-0.5B's heads)
    test_kv_cache_write(4, 33, 17, 64, 14, 2, 64, 0);   // T > 1 rows at pos > 0
    test_kv_cache_write(2, 5, 3, 11, 3, 1, 5, 3);       // odd: KD = 5, rows 3 elements wider than q|k|v
    test_kv_cache_write(1, 1, 12, 13, 2, 2, 8, 1);      // the last position
    test_kv_cache_write(2, 0, 4, 6, 2, 1, 16, 0);       // T = 0 writes nothing
}

// =========================================================================================================
// swiglu, add

static void test_swiglu(int N, int I) {
    const std::string tag = fmt("N=%d I=%d", N, I);
    const vecd gu = rx(rnd((size_t)N * 2 * I, -4, 4)), dout = rx(rnd((size_t)N * I, -1, 1));
    vecd out((size_t)N * I), dgu((size_t)N * 2 * I);
    swiglu_forward_ref<double>(out.data(), gu.data(), N, I);
    swiglu_backward_ref<double>(dgu.data(), dout.data(), gu.data(), N, I);
    Dev<floatX> d_gu(gu), d_dout(dout), d_out(out.size()), d_dgu(dgu.size());
    d_out.poison();
    d_dgu.poison();
    swiglu_forward(d_out.p, d_gu.p, N, I, st);
    launched(BK " swiglu_forward " + tag);
    expect_close(BK " swiglu_forward " + tag, d_out.get(), out, TOL_EW);
    swiglu_backward(d_dgu.p, d_dout.p, d_gu.p, N, I, st);
    launched(BK " swiglu_backward " + tag);
    expect_close(BK " swiglu_backward " + tag, d_dgu.get(), dgu, TOL_EW);
}

// The buffers hold offset + n + 9 elements; the op runs on [offset, offset + n) (offset 1: misaligned pointers).
static void test_add(size_t n, bool three, bool alias, size_t offset) {
    const std::string name = fmt(BK " add_forward n=%zu %s%s%s", n, three ? "a+b+c" : "a+b", alias ? " out==a" : "",
                                 offset ? fmt(" at element offset %zu", offset).c_str() : "");
    const size_t total = offset + n + 9;
    const vecd a = rx(rnd(total, -1, 1)), b = rx(rnd(total, -1, 1)), c = rx(rnd(total, -1, 1));
    vecd ref = alias ? a : vecd(total, NaN), sum(n);
    add_forward_ref<double>(sum.data(), a.data() + offset, b.data() + offset, three ? c.data() + offset : nullptr, n);
    std::copy(sum.begin(), sum.end(), ref.begin() + offset);
    Dev<floatX> d_a(a), d_b(b), d_c(c), d_out(total);
    d_out.poison();
    floatX* out = alias ? d_a.p : d_out.p;
    add_forward(out + offset, d_a.p + offset, d_b.p + offset, three ? d_c.p + offset : nullptr, n, st);
    launched(name);
    expect_close(name, alias ? d_a.get() : d_out.get(), ref, TOL_EW);
}

static void test_swiglu_add() {
    test_swiglu(1, 37);
    test_swiglu(1000, 64);
    test_swiglu(37, 171);
    test_swiglu(1832, 1536);
    for (size_t n : {(size_t)1, (size_t)37, (size_t)1000, (size_t)1832 * 512, (size_t)1000003})
        for (int three = 0; three < 2; three++)
            for (int alias = 0; alias < 2; alias++) test_add(n, three, alias, 0);
    test_add(1000, true, false, 1);
    test_add(1001, false, true, 3);
    test_add(37, true, true, 5);
}

// =========================================================================================================
// embedding, prefix

static void test_embedding(int V, int C, int B, int S, int T_out, int offset, float scale) {
    const std::string tag = fmt("V=%d C=%d B=%d S=%d T_out=%d offset=%d scale=%.4g", V, C, B, S, T_out, offset, scale);
    const veci ids = rnd_int((size_t)B * S, V);      // (B*S >> V: every id repeated)
    const vecd table = rx(rnd((size_t)V * C, -1, 1));
    vecd out((size_t)B * T_out * C, NaN);            // rows outside [offset, offset + S) must stay untouched
    embedding_forward_ref<double>(out.data(), ids.data(), table.data(), B, S, C, T_out, offset, scale);
    Dev<int> d_ids(ids);
    Dev<floatX> d_table(table), d_out(out.size());
    d_out.poison();
    embedding_forward(d_out.p, d_ids.p, d_table.p, B, S, C, T_out, offset, scale, st);
    launched(BK " embedding_forward " + tag);
    expect_close(BK " embedding_forward " + tag, d_out.get(), out, TOL_EW);

    const vecd dout = rx(rnd((size_t)B * T_out * C, -1, 1)), dt0 = rs(rnd((size_t)V * C, -1, 1));
    vecd dt = dt0;
    embedding_backward_ref<double>(dt.data(), dout.data(), ids.data(), B, S, C, T_out, offset, scale);
    Dev<floatX> d_dout(dout);
    Dev<floatS> d_dt(dt0);
    const std::string bname = BK " embedding_backward " + tag;
    embedding_backward(d_dt.p, d_dout.p, d_ids.p, B, S, C, T_out, offset, scale, st);
    launched(bname);
    expect_close(bname + " dtable (+=)", d_dt.get(), dt, TOL_S);
    const auto first = d_dt.raw();
    d_dt.set(dt0);
    embedding_backward(d_dt.p, d_dout.p, d_ids.p, B, S, C, T_out, offset, scale, st);
    launched(bname);
    expect_bitwise(bname + " deterministic", first, d_dt.raw());
}

static void test_prefix(int B, int K, int prefix_size, size_t stride, float scale) {
    const std::string tag = fmt("B=%d K=%d prefix_size=%d stride=%zu scale=%.4g", B, K, prefix_size, stride, scale);
    const vecd src = rx(rnd((size_t)B * K, -1, 1));
    vecd out((size_t)B * stride, NaN);                 // beyond the prefix: untouched
    prefix_forward_ref<double>(out.data(), src.data(), B, K, prefix_size, stride, scale);
    Dev<floatX> d_src(src), d_out(out.size());
    d_out.poison();
    prefix_forward(d_out.p, d_src.p, B, K, prefix_size, stride, scale, st);
    launched(BK " prefix_forward " + tag);
    expect_close(BK " prefix_forward " + tag, d_out.get(), out, TOL_EW);

    const vecd dout = rx(rnd((size_t)B * stride, -1, 1));
    vecd dsrc((size_t)B * K);
    prefix_backward_ref<double>(dsrc.data(), dout.data(), B, K, stride, scale);
    Dev<floatX> d_dout(dout), d_dsrc(dsrc.size());
    d_dsrc.poison();
    prefix_backward(d_dsrc.p, d_dout.p, B, K, stride, scale, st);
    launched(BK " prefix_backward " + tag);
    expect_close(BK " prefix_backward " + tag, d_dsrc.get(), dsrc, TOL_EW);
}

static void test_embedding_all() {
    test_embedding(12, 512, 2, 900, 916, 16, sqrtf(512.f));     // decoder tokens after the 16 prefix rows
    test_embedding(12, 64, 20, 900, 1800, 0, 8.0f);             // demo encoder: inputs, then outputs
    test_embedding(12, 64, 20, 900, 1801, 901, 8.0f);           // lpn grid (CLS row first)
    test_embedding(12, 37, 3, 5, 9, 2, 1.5f);
    test_embedding(1000, 37, 1, 1, 1, 0, 0.5f);
    test_embedding(5, 128, 4, 300, 301, 1, 11.3f);
    test_embedding(20, 64, 4, 300, 301, 1, 8.0f);              // ids above and below 16 (two device paths)
    test_prefix(2, 16 * 512, 16 * 512, (size_t)916 * 512, 1.0f);  // ETRM: the encoder's context
    test_prefix(3, 37, 64, 64 * 10, sqrtf(64.f));                 // TRM: puzzle embedding, zero-padded
    test_prefix(4, 300, 5 * 64, (size_t)905 * 64, 8.0f);
    test_prefix(1, 1, 1, 1, 2.0f);
}

// =========================================================================================================
// rows: gather, scatter, broadcast (+ backward)

static void test_gather_rows(int n_rows, int n_in, int C) {
    const std::string name = fmt(BK " gather_rows n_rows=%d n_in=%d C=%d", n_rows, n_in, C);
    const vecd inp = rx(rnd((size_t)n_in * C, -1, 1));
    const veci index = rnd_int(n_rows, n_in);
    vecd out((size_t)n_rows * C);
    gather_rows_ref<double>(out.data(), inp.data(), index.data(), n_rows, C);
    Dev<floatX> d_inp(inp), d_out(out.size());
    Dev<int> d_index(index);
    d_out.poison();
    gather_rows(d_out.p, d_inp.p, d_index.p, n_rows, C, st);
    launched(name);
    expect_exact(name, d_out.get(), out);
}

static void test_scatter_rows(int n_rows, int n_out, int C) {
    const std::string name = fmt(BK " scatter_rows n_rows=%d n_out=%d C=%d", n_rows, n_out, C);
    const vecd inp = rx(rnd((size_t)n_rows * C, -1, 1));
    veci perm(n_out);                                  // distinct indices: a random permutation's first n_rows
    for (int i = 0; i < n_out; i++) perm[i] = i;
    const uint64_t seed = fresh_seed();
    for (int i = n_out - 1; i > 0; i--) std::swap(perm[i], perm[hash_below((uint32_t)(i + 1), seed, i)]);
    const veci index(perm.begin(), perm.begin() + n_rows);
    vecd out((size_t)n_out * C);
    scatter_rows_ref<double>(out.data(), inp.data(), index.data(), n_rows, n_out, C);
    Dev<floatX> d_inp(inp), d_out(out.size());
    Dev<int> d_index(index);
    d_out.poison();
    scatter_rows(d_out.p, d_inp.p, d_index.p, n_rows, n_out, C, st);
    launched(name);
    expect_exact(name, d_out.get(), out);
}

// put_rows into an out of n_out rows holding values (the untouched rows must keep them), = and +=.
static void test_put_rows(int n_rows, int n_out, int C, bool accumulate) {
    const std::string name = fmt(BK " put_rows n_rows=%d n_out=%d C=%d accumulate=%d", n_rows, n_out, C, accumulate);
    const vecd inp = rx(rnd((size_t)n_rows * C, -1, 1)), out0 = rx(rnd((size_t)n_out * C, -1, 1));
    veci perm(n_out);
    for (int i = 0; i < n_out; i++) perm[i] = i;
    const uint64_t seed = fresh_seed();
    for (int i = n_out - 1; i > 0; i--) std::swap(perm[i], perm[hash_below((uint32_t)(i + 1), seed, i)]);
    const veci index(perm.begin(), perm.begin() + n_rows);
    vecd out = out0;
    put_rows_ref<double>(out.data(), inp.data(), index.data(), n_rows, C, accumulate);
    Dev<floatX> d_inp(inp), d_out(out0);
    Dev<int> d_index(index);
    put_rows(d_out.p, d_inp.p, d_index.p, n_rows, C, accumulate, st);
    launched(name);
    if (accumulate) expect_close(name, d_out.get(), rx(out), TOL_RED);
    else expect_exact(name, d_out.get(), out);
}

static void test_broadcast_rows(int B, int R, int C, int T_out, int offset) {
    const std::string tag = fmt("B=%d R=%d C=%d T_out=%d offset=%d", B, R, C, T_out, offset);
    const vecd src = rx(rnd((size_t)R * C, -1, 1));
    vecd out((size_t)B * T_out * C, NaN);
    broadcast_rows_ref<double>(out.data(), src.data(), B, R, C, T_out, offset);
    Dev<floatX> d_src(src), d_out(out.size());
    d_out.poison();
    broadcast_rows(d_out.p, d_src.p, B, R, C, T_out, offset, st);
    launched(BK " broadcast_rows " + tag);
    expect_exact(BK " broadcast_rows " + tag, d_out.get(), out);

    const vecd dout = rx(rnd((size_t)B * T_out * C, -1, 1)), ds0 = rs(rnd((size_t)R * C, -1, 1));
    vecd ds = ds0;
    broadcast_rows_backward_ref<double>(ds.data(), dout.data(), B, R, C, T_out, offset);
    Dev<floatX> d_dout(dout);
    Dev<floatS> d_ds(ds0);
    broadcast_rows_backward(d_ds.p, d_dout.p, B, R, C, T_out, offset, st);
    launched(BK " broadcast_rows_backward " + tag);
    expect_close(BK " broadcast_rows_backward " + tag + " dsrc (+=)", d_ds.get(), ds, TOL_S);
}

static void test_rows() {
    test_gather_rows(37, 100, 64);
    test_gather_rows(1, 1, 37);
    test_gather_rows(2, 1832, 512);           // the q head reads position 0 of every sample
    test_gather_rows(5, 8, 16 * 512);         // latent optimisation: contexts of the samples with a k-th demo
    test_gather_rows(1000, 37, 3);
    test_scatter_rows(37, 100, 64);
    test_scatter_rows(1, 1, 37);
    test_scatter_rows(2, 1832, 512);
    test_scatter_rows(5, 8, 16 * 512);
    test_scatter_rows(20, 20 * 1801, 64);     // lpn grid: CLS rows of every demo
    test_put_rows(8, 8 * 512, 896, false);    // the CVAE's latent into the z slot of 8 sequences (Qwen2.5 width)
    test_put_rows(8, 8 * 512, 896, true);     // the router head's gradient added at the <z> rows
    test_put_rows(3, 7, 5, true);
    test_broadcast_rows(8, 16, 512, 16, 0);   // set encoder's learned queries
    test_broadcast_rows(20, 1, 64, 1801, 0);  // lpn CLS token
    test_broadcast_rows(3, 5, 37, 9, 2);
    test_broadcast_rows(1, 1, 1, 1, 0);
}

// =========================================================================================================
// masked_mean

static void test_masked_mean(int B, int N, int C, bool masked) {
    const std::string tag = fmt("B=%d N=%d C=%d %s", B, N, C, masked ? (B > 1 ? "mask (row 1 all zero)" : "mask") : "mask=null");
    const vecd inp = rx(rnd((size_t)B * N * C, -1, 1)), dout = rx(rnd((size_t)B * C, -1, 1));
    vecu8 mask((size_t)B * N, 1);
    if (masked) {
        const uint64_t seed = fresh_seed();
        for (size_t i = 0; i < mask.size(); i++) mask[i] = hash_uniform(seed, i) < 0.6f;
        if (B > 1) std::fill(mask.begin() + N, mask.begin() + 2 * N, 0);
        mask[0] = 1;
    }
    const uint8_t* hm = masked ? mask.data() : nullptr;
    vecd out((size_t)B * C), dinp((size_t)B * N * C);
    masked_mean_forward_ref<double>(out.data(), inp.data(), hm, B, N, C);
    masked_mean_backward_ref<double>(dinp.data(), dout.data(), hm, B, N, C);
    Dev<floatX> d_inp(inp), d_dout(dout), d_out(out.size()), d_dinp(dinp.size());
    Dev<uint8_t> d_mask(mask);
    d_out.poison();
    d_dinp.poison();
    masked_mean_forward(d_out.p, d_inp.p, masked ? d_mask.p : nullptr, B, N, C, st);
    launched(BK " masked_mean_forward " + tag);
    expect_close(BK " masked_mean_forward " + tag, d_out.get(), out, TOL_RED);
    masked_mean_backward(d_dinp.p, d_dout.p, masked ? d_mask.p : nullptr, B, N, C, st);
    launched(BK " masked_mean_backward " + tag);
    expect_close(BK " masked_mean_backward " + tag, d_dinp.get(), dinp, TOL_EW);
}

static void test_masked_mean_all() {
    const int shapes[][3] = {{3, 16, 64}, {5, 10, 37}, {1, 1, 1}, {20, 1800, 64}, {8, 16, 512}, {2, 7, 1000}};
    for (auto& s : shapes) {
        test_masked_mean(s[0], s[1], s[2], false);
        test_masked_mean(s[0], s[1], s[2], true);
    }
}

// =========================================================================================================
// sigreg (the forward's statistics cs, per-slice values and loss; the backward from the reference's cs)

// long_sums: fp32 sums over K = 16384 (x) or M = 70000 (dz) terms; in the fp32 build every tolerance is 1e-4 then.
static void test_sigreg(int N, int K, int M, double std, bool with_per_slice, SigregVariant variant = SIGREG_LEJEPA,
                        bool long_sums = false) {
    const Tol wide = {1e-4, 1e-4};
    const Tol tol_sigreg = long_sums && !BF16 ? wide : TOL_SIGREG, tol_s = long_sums && !BF16 ? wide : TOL_S,
              tol_red = long_sums && !BF16 ? wide : TOL_RED;
    const std::string tag = fmt("%sN=%d K=%d M=%d std=%g%s", variant == SIGREG_DEPRECATED ? "deprecated " : "", N, K, M,
                                std, with_per_slice ? "" : " per_slice=null");
    vecd z((size_t)N * K);
    const uint64_t zseed = fresh_seed();
    for (size_t i = 0; i < z.size(); i++) z[i] = std * hash_normal(zseed, i);
    z = rx(z);
    vecd A((size_t)K * M);
    sigreg_directions_ref(A.data(), K, M, fresh_seed());
    A = rs(A);
    const int CS = 2 * SIGREG_POINTS;
    vecd loss(1), ps(M), cs((size_t)M * CS);
    sigreg_forward_ref<double>(loss.data(), ps.data(), cs.data(), z.data(), A.data(), N, K, M, variant);
    Dev<floatX> d_z(z);
    Dev<floatS> d_A(A), d_loss(1), d_ps(M), d_cs(cs.size());
    d_loss.poison();
    d_ps.poison();
    d_cs.poison();
    sigreg_forward(d_loss.p, with_per_slice ? d_ps.p : nullptr, d_cs.p, d_z.p, d_A.p, N, K, M, variant, st);
    const std::string fname = BK " sigreg_forward " + tag;
    launched(fname);
    expect_close(fname + " loss", d_loss.get(), loss, tol_sigreg);
    expect_close(fname + " cs", d_cs.get(), cs, tol_s);
    if (with_per_slice) expect_close(fname + " per_slice", d_ps.get(), ps, tol_sigreg);
    else expect_exact(fname + " per_slice untouched", d_ps.get(), vecd(M, NaN));

    // backward: both sides from the same cs (the reference's, rounded to floatS) and a fresh dloss
    const vecd cs_in = rs(cs), dloss = rs(rnd(1, 0.5, 2));
    vecd dz((size_t)N * K);
    sigreg_backward_ref<double>(dz.data(), z.data(), A.data(), cs_in.data(), dloss.data(), N, K, M, variant);
    Dev<floatS> d_cs_in(cs_in), d_dloss(dloss);
    Dev<floatX> d_dz(dz.size());
    d_dz.poison();
    sigreg_backward(d_dz.p, d_z.p, d_A.p, d_cs_in.p, d_dloss.p, N, K, M, variant, st);
    launched(BK " sigreg_backward " + tag);
    expect_close(BK " sigreg_backward " + tag + " dz (=)", d_dz.get(), dz, tol_red);
}

static void test_sigreg_all() {
    test_sigreg(2048, 16, 64, 1.0, true);
    test_sigreg(4096, 256, 512, 1.0 / 16, true);   // projection variance 1/256 (like L2-normalised 256-d rows)
    test_sigreg(1024, 512, 1024, 0.05, false);     // the largest K, M
    test_sigreg(37, 5, 3, 0.1, true);              // near-collapsed, odd shapes
    test_sigreg(1, 1, 1, 1.0, true);
    test_sigreg(300, 7, 33, 3.0, true);            // wide: the high-t knots oscillate
    // the reference repo's deprecated variant (17 knots on [-3, 3], no factor N), as the JEPA trainer can run it:
    // rows of norm ~1 in 256-d (the L2-normalised projection), 1024 slices
    test_sigreg(512, 256, 1024, 1.0 / 16, true, SIGREG_DEPRECATED);
    test_sigreg(2048, 16, 64, 1.0, true, SIGREG_DEPRECATED);
    test_sigreg(37, 5, 3, 0.1, false, SIGREG_DEPRECATED);
    test_sigreg(1, 1, 1, 1.0, true, SIGREG_DEPRECATED);
    test_sigreg(300, 7, 33, 3.0, true, SIGREG_DEPRECATED);
    // Shared memory beyond 48 KB (smem_opt_in): the statistics' column of A (K = 16384: 64 KB) and the backward's
    // z_n, dz_n (128 KB); many slices: the backward's g for M = 16384 slices (66 KB, one tile), and M = 70000 (280 KB:
    // more than any GPU gives a block, so several tiles).
    test_sigreg(16, 16384, 8, 1.0, true, SIGREG_LEJEPA, true);
    test_sigreg(32, 64, 16384, 1.0, true, SIGREG_LEJEPA, true);
    test_sigreg(16, 32, 70000, 1.0, false, SIGREG_LEJEPA, true);
}

// =========================================================================================================
// variational: gaussian_noise, reparameterize

static void test_gaussian_noise(int N, int C, uint64_t seed) {
    const std::string name = fmt(BK " gaussian_noise N=%d C=%d seed=%llx (bitwise equal to the CPU numbers)", N, C,
                                 (unsigned long long)seed);
    veci keys = rnd_int(N, 1 << 30);
    if (N > 1) keys[1] = 0x7fffffff;
    std::vector<float> ref((size_t)N * C);
    gaussian_noise_ref<float>(ref.data(), keys.data(), N, C, seed);
    Dev<int> d_keys(keys);
    Dev<floatS> d_eps(ref.size());
    d_eps.poison();
    gaussian_noise(d_eps.p, d_keys.p, N, C, seed, st);
    launched(name);
    expect_exact(name, d_eps.get(), vecd(ref.begin(), ref.end()));
}

static void test_reparameterize(int N, int C, float lo, float hi, float dkl) {
    const bool bounded = isfinite(lo) && isfinite(hi);
    const std::string tag = fmt("N=%d C=%d logvar clamp [%g, %g]%s dkl=%g", N, C, lo, hi, bounded ? " (bounds hit)" : "", dkl);
    const vecd mu = rx(rnd((size_t)N * C, -2, 2)), dz = rx(rnd((size_t)N * C, -1, 1));
    vecd lv = rx(bounded ? rnd((size_t)N * C, lo - 5, hi + 5) : rnd((size_t)N * C, -3, 3));
    if (bounded && lv.size() >= 4) { lv[1] = lo; lv[2] = hi; }          // exactly on a bound: inside
    vecd eps((size_t)N * C);
    const uint64_t seed = fresh_seed();
    for (size_t i = 0; i < eps.size(); i++) eps[i] = rs1(hash_normal(seed, i));
    vecd z(eps.size()), kl(N), dmu(eps.size()), dlv(eps.size());
    reparameterize_forward_ref<double>(z.data(), kl.data(), mu.data(), lv.data(), eps.data(), N, C, lo, hi);
    reparameterize_backward_ref<double>(dmu.data(), dlv.data(), dz.data(), mu.data(), lv.data(), eps.data(), dkl, N, C, lo, hi);
    Dev<floatX> d_mu(mu), d_lv(lv), d_dz(dz), d_z(z.size()), d_dmu(z.size()), d_dlv(z.size());
    Dev<floatS> d_eps(eps), d_kl(N);
    d_z.poison();
    d_kl.poison();
    d_dmu.poison();
    d_dlv.poison();
    reparameterize_forward(d_z.p, d_kl.p, d_mu.p, d_lv.p, d_eps.p, N, C, lo, hi, st);
    launched(BK " reparameterize_forward " + tag);
    expect_close(BK " reparameterize_forward " + tag + " z", d_z.get(), z, TOL_EW);
    expect_close(BK " reparameterize_forward " + tag + " kl", d_kl.get(), kl, TOL_S);
    reparameterize_backward(d_dmu.p, d_dlv.p, d_dz.p, d_mu.p, d_lv.p, d_eps.p, dkl, N, C, lo, hi, st);
    launched(BK " reparameterize_backward " + tag);
    expect_close(BK " reparameterize_backward " + tag + " dmu", d_dmu.get(), dmu, TOL_EW);
    expect_close(BK " reparameterize_backward " + tag + " dlogvar", d_dlv.get(), dlv, TOL_EW);
}

static void test_variational() {
    test_gaussian_noise(8, 512, 0xDEADBEEFCAFEF00Dull);
    test_gaussian_noise(37, 37, 1);
    test_gaussian_noise(1, 1, 0);
    test_gaussian_noise(200, 64, hash_u64(7, 3, 11));
    test_reparameterize(8, 512, -10.f, 10.f, 0.01f);
    test_reparameterize(37, 64, -10.f, 10.f, 0.3f);
    test_reparameterize(20, 64, -INFINITY, INFINITY, 0.05f);
    test_reparameterize(1, 37, -INFINITY, INFINITY, 0.f);
}

// =========================================================================================================
// stablemax loss, q_halt loss

// Rows of logits ld >= V apart (the trainer's padded lm head); the padding columns hold values the loss must
// not read, and the backward writes 0 there.
static void test_stablemax(int B, int T, int P, int V, int ld, bool with_preds) {
    const std::string tag = fmt("B=%d T=%d P=%d V=%d ld=%d preds=%s", B, T, P, V, ld, with_preds ? "yes" : "null");
    const int S = T - P;
    vecd logits = rx(rnd((size_t)B * T * ld, -4, 4));
    for (size_t row = 0; row < (size_t)B * T; row++)
        for (int v = V; v < ld; v++) logits[row * ld + v] = 8.0;
    veci labels((size_t)B * S);
    const uint64_t seed = fresh_seed();
    for (int b = 0; b < B; b++)
        for (int s = 0; s < S; s++) {
            double* x = &logits[((size_t)b * T + P + s) * ld];
            const size_t i = (size_t)b * S + s;
            labels[i] = hash_uniform(seed, i, 0) < 0.2f ? IGNORE_LABEL_ID : (int)hash_below((uint32_t)V, seed, i, 1);
            if (V >= 2 && s % 5 == 0) {        // a tie for the maximum: the first one is the prediction
                int i1 = (int)hash_below((uint32_t)V, seed, i, 2), i2 = (int)hash_below((uint32_t)V, seed, i, 3);
                if (i1 == i2) i2 = (i1 + 1) % V;
                double mx = x[0];
                for (int v = 1; v < V; v++) mx = std::max(mx, x[v]);
                x[i1] = x[i2] = rx1(mx + 0.25);
                if (labels[i] != IGNORE_LABEL_ID) labels[i] = (s / 5) % 2 ? std::min(i1, i2) : std::max(i1, i2);
            }
        }
    if (B >= 2) std::fill(labels.begin() + S, labels.begin() + 2 * S, IGNORE_LABEL_ID);   // sample 1: nothing valid
    vecd loss(B);
    veci nv(B), nc(B), preds((size_t)B * S);
    stablemax_loss_forward_ref<double>(loss.data(), nv.data(), nc.data(), preds.data(), logits.data(), labels.data(), B, T, P, V, ld);
    Dev<floatX> d_logits(logits);
    Dev<int> d_labels(labels), d_nv(B), d_nc(B), d_preds(preds.size());
    Dev<floatS> d_loss(B);
    const std::string fname = BK " stablemax_loss_forward " + tag;
    std::vector<floatS> first_loss;
    veci first_nv, first_nc, first_preds;
    for (int run = 0; run < 2; run++) {
        d_loss.poison();
        d_nv.poison();
        d_nc.poison();
        d_preds.poison();
        stablemax_loss_forward(d_loss.p, d_nv.p, d_nc.p, with_preds ? d_preds.p : nullptr, d_logits.p, d_labels.p, B, T, P, V, ld, st);
        launched(fname);
        if (run == 0) {
            expect_close(fname + " loss", d_loss.get(), loss, TOL_S);
            expect_equal(fname + " n_valid", d_nv.raw(), nv);
            expect_equal(fname + " n_correct", d_nc.raw(), nc);
            if (with_preds) expect_equal(fname + " preds (first maximum on ties)", d_preds.raw(), preds);
            first_loss = d_loss.raw(), first_nv = d_nv.raw(), first_nc = d_nc.raw(), first_preds = d_preds.raw();
        } else {
            check(same_bits(first_loss, d_loss.raw()) && first_nv == d_nv.raw() && first_nc == d_nc.raw() &&
                      (!with_preds || first_preds == d_preds.raw()),
                  (fname + " deterministic (two runs bitwise identical)").c_str(), "two runs on the same inputs differ");
        }
    }

    const vecd dloss = rs(rnd(B, 0.1, 2));
    vecd dl((size_t)B * T * ld);
    stablemax_loss_backward_ref<double>(dl.data(), logits.data(), labels.data(), nv.data(), dloss.data(), B, T, P, V, ld);
    Dev<int> d_nv_in(nv);
    Dev<floatS> d_dloss(dloss);
    Dev<floatX> d_dl(dl.size());
    d_dl.poison();
    stablemax_loss_backward(d_dl.p, d_logits.p, d_labels.p, d_nv_in.p, d_dloss.p, B, T, P, V, ld, st);
    launched(BK " stablemax_loss_backward " + tag);
    expect_close(BK " stablemax_loss_backward " + tag, d_dl.get(), dl, TOL_RED);
}

// q rows ld >= 2 apart (the trainer's padded q head).
static void test_q_halt(int B, int ld) {
    const std::string tag = fmt("B=%d ld=%d", B, ld);
    const vecd q = rx(rnd((size_t)B * ld, -6, 6)), dloss = rs(rnd(B, 0.1, 2));
    veci nv = rnd_int(B, 6), nc(B);
    const uint64_t seed = fresh_seed();
    for (int b = 0; b < B; b++) nc[b] = hash_uniform(seed, b) < 0.5f ? nv[b] : (int)hash_below((uint32_t)nv[b] + 1, seed, b, 1);
    if (B >= 2) nv[1] = nc[1] = 0;            // no valid token: counts as right
    vecd loss(B), dq((size_t)B * ld);
    q_halt_loss_forward_ref<double>(loss.data(), q.data(), nv.data(), nc.data(), B, ld);
    q_halt_loss_backward_ref<double>(dq.data(), q.data(), nv.data(), nc.data(), dloss.data(), B, ld);
    Dev<floatX> d_q(q), d_dq(dq.size());
    Dev<int> d_nv(nv), d_nc(nc);
    Dev<floatS> d_dloss(dloss), d_loss(B);
    d_loss.poison();
    d_dq.poison();
    q_halt_loss_forward(d_loss.p, d_q.p, d_nv.p, d_nc.p, B, ld, st);
    launched(BK " q_halt_loss_forward " + tag);
    expect_close(BK " q_halt_loss_forward " + tag, d_loss.get(), loss, TOL_S);
    q_halt_loss_backward(d_dq.p, d_q.p, d_nv.p, d_nc.p, d_dloss.p, B, ld, st);
    launched(BK " q_halt_loss_backward " + tag);
    expect_close(BK " q_halt_loss_backward " + tag, d_dq.get(), dq, TOL_EW);
}

static void test_losses() {
    test_stablemax(4, 916, 16, 12, 16, true);      // decoder: 16 prefix rows, 30x30 canvas, 12 tokens, padded to 16
    test_stablemax(4, 916, 16, 12, 16, false);
    test_stablemax(4, 916, 16, 12, 12, true);
    test_stablemax(3, 37, 0, 37, 37, false);
    test_stablemax(1, 5, 1, 1000, 1003, true);
    test_stablemax(7, 33, 3, 2, 8, true);
    test_q_halt(1, 8);
    test_q_halt(37, 2);
    test_q_halt(1000, 8);
}

// =========================================================================================================
// The language-model ops: softmax cross-entropy over a vocabulary, the chunked lm head, LoRA

static veci lm_labels(int N, int V) {
    veci labels = rnd_int(N, V);
    for (int n = 2; n < N; n += 3) labels[n] = IGNORE_LABEL_ID;
    return labels;
}

// every row's loss, argmax (exact) and in-place gradient, twice (bitwise the same)
// (row_scaled: per-row weights r_n on the gradient, the CVAE's token-weighted reconstruction)
static void test_softmax_xent(int N, int V, int ld, bool row_scaled = false) {
    const std::string name = fmt(BK " softmax_xent N=%d V=%d ld=%d%s", N, V, ld, row_scaled ? " row_scale" : "");
    vecd logits = rx(rnd((size_t)N * ld, -6, 6));
    const veci labels = lm_labels(N, V);
    const double dscale = 1.0 / 3;
    const vecd scale = rs(rnd(N, 0.1, 3));
    vecd loss(N), grad = logits;
    veci argmax(N);
    softmax_xent_ref<double>(loss.data(), argmax.data(), grad.data(), labels.data(), N, V, ld, dscale, true,
                             row_scaled ? scale.data() : nullptr);
    Dev<int> d_labels(labels), d_argmax(N);
    Dev<floatS> d_loss(N), d_scale(scale);
    std::vector<floatX> first;
    for (int run = 0; run < 2; run++) {
        Dev<floatX> d_logits(logits);
        d_loss.poison();
        d_argmax.poison();
        softmax_xent(d_loss.p, d_argmax.p, d_logits.p, d_labels.p, N, V, ld, dscale, true, st, row_scaled ? d_scale.p : nullptr);
        launched(name);
        if (run == 0) {
            expect_close(name + " loss", d_loss.get(), loss, TOL_S);
            expect_equal(name + " argmax (first maximum)", d_argmax.raw(), argmax);
            expect_close(name + " dlogits (in place)", d_logits.get(), grad, TOL_EW);
            first = d_logits.raw();
        } else {
            expect_bitwise(name + " repeatable", d_logits.raw(), first);
        }
    }
}

// the chunked head against the whole-batch composition of the double references
static void test_lm_head_loss(int N, int C, int V, int chunk) {
    const std::string name = fmt(BK " lm_head_loss N=%d C=%d V=%d chunk=%d", N, C, V, chunk);
    const vecd h = rx(rnd((size_t)N * C, -1, 1)), W = rx(rnd((size_t)V * C, -0.2, 0.2)), dW0 = rs(rnd((size_t)V * C, -1, 1));
    const veci labels = lm_labels(N, V);
    const double dscale = 1.0 / N;
    vecd logits((size_t)N * V), loss(N), dh((size_t)N * C), dW = dW0;
    veci argmax(N);
    matmul_forward_ref<double>(logits.data(), h.data(), W.data(), nullptr, N, C, V);
    softmax_xent_ref<double>(loss.data(), argmax.data(), logits.data(), labels.data(), N, V, V, dscale, true);
    matmul_backward_ref<double>(dh.data(), dW.data(), nullptr, logits.data(), h.data(), W.data(), N, C, V, false);
    Dev<floatX> d_h(h), d_W(W), d_dh(dh.size()), d_scratch((size_t)std::min(chunk, N) * V);
    Dev<floatS> d_loss(N), d_dW(dW0);
    Dev<int> d_labels(labels), d_argmax(N);
    d_dh.poison();
    lm_head_loss(d_loss.p, d_argmax.p, d_dh.p, d_dW.p, d_h.p, d_W.p, d_labels.p, N, C, V, dscale, true, d_scratch.p, chunk, st);
    launched(name);
    expect_close(name + " loss", d_loss.get(), loss, TOL_S);
    // (the bf16 logits may reorder near-ties: compare the argmax only in the fp32 build)
    if (!BF16) expect_equal(name + " argmax", d_argmax.raw(), argmax);
    expect_close(name + " dh", d_dh.get(), dh, TOL_RED);
    expect_close(name + " dW (+=)", d_dW.get(), dW, TOL_S);
}

// out and dout are columns [off, off + OC) of rows W wide (W = OC, off = 0: packed); the other columns stay
static void test_lora(int N, int C, int OC, int r, double scale, int W = 0, int off = 0) {
    if (W == 0) W = OC;
    const std::string name = fmt(BK " lora N=%d C=%d OC=%d r=%d rows of %d at column %d", N, C, OC, r, W, off);
    const vecd x = rx(rnd((size_t)N * C, -1, 1)), A = rx(rnd((size_t)r * C, -1, 1)), B = rx(rnd((size_t)OC * r, -1, 1));
    const vecd base = rx(rnd((size_t)N * W, -1, 1)), dout = rx(rnd((size_t)N * W, -1, 1)), dx0 = rx(rnd((size_t)N * C, -1, 1));
    const vecd dA0 = rs(rnd(A.size(), -1, 1)), dB0 = rs(rnd(B.size(), -1, 1));
    // reference: t = scale x A^T, out = base + t B^T; dt = scale dout B, dB += dout^T t, dA += dt^T x, dx += dt A
    vecd t((size_t)N * r), out = base, dt((size_t)N * r), dx = dx0, dA = dA0, dB = dB0;
    matmul_forward_ref<double>(t.data(), x.data(), A.data(), nullptr, N, C, r);
    for (double& v : t) v *= scale;
    matmul_forward_ref<double>(out.data() + off, t.data(), B.data(), nullptr, N, r, OC, true, W);
    matmul_backward_ref<double>(dt.data(), dB.data(), nullptr, dout.data() + off, t.data(), B.data(), N, r, OC, false, W);
    for (double& v : dt) v *= scale;
    matmul_backward_ref<double>(dx.data(), dA.data(), nullptr, dt.data(), x.data(), A.data(), N, C, r, true);
    Dev<floatX> d_x(x), d_A(A), d_B(B), d_out(base), d_t(t.size()), d_dout(dout), d_dx(dx0), d_dt(dt.size());
    Dev<floatS> d_dA(dA0), d_dB(dB0);
    d_t.poison();
    d_dt.poison();
    lora_forward(d_out.p + off, d_t.p, d_x.p, d_A.p, d_B.p, N, C, OC, r, scale, st, W);
    lora_backward(d_dx.p, d_dA.p, d_dB.p, d_dt.p, d_dout.p + off, d_x.p, d_t.p, d_A.p, d_B.p, N, C, OC, r, scale, st, W);
    launched(name);
    expect_close(name + " out (+=, other columns untouched)", d_out.get(), out, TOL_RED);
    expect_close(name + " dx (+=)", d_dx.get(), dx, TOL_RED);
    expect_close(name + " dA (+=)", d_dA.get(), dA, TOL_S);
    expect_close(name + " dB (+=)", d_dB.get(), dB, TOL_S);
}

static void test_lm_ops() {
    test_softmax_xent(5, 151936, 151936);        // Qwen2's vocabulary
    test_softmax_xent(33, 1000, 1008);
    test_softmax_xent(7, 13, 16);                // fewer columns than threads
    test_softmax_xent(33, 1000, 1008, true);
    test_lm_head_loss(37, 64, 1000, 16);
    test_lm_head_loss(64, 128, 4096, 64);
    test_lora(37, 64, 96, 8, 2.0);               // alpha 16, r 8
    test_lora(512, 896, 128, 16, 0.25);          // Qwen2.5-0.5B's k/v projection, r 16, rsLoRA alpha 1
    test_lora(256, 896, 128, 8, 2.0, 1152, 1024);  // its v projection inside the fused q | k | v row (896 + 2 x 128)
    test_lora(256, 896, 896, 8, 2.0, 1152, 0);     // and its q projection
}

// =========================================================================================================
// ACT

static void test_act_reset(int B, int T, int D) {
    const std::string name = fmt(BK " act_reset B=%d T=%d D=%d", B, T, D);
    const vecd zH0 = rx(rnd((size_t)B * T * D, -1, 1)), zL0 = rx(rnd((size_t)B * T * D, -1, 1));
    const vecd Hi = rx(rnd(D, -1, 1)), Li = rx(rnd(D, -1, 1));
    veci steps0 = rnd_int(B, 16);
    vecu8 halted(B);
    const uint64_t seed = fresh_seed();
    for (int b = 0; b < B; b++) { halted[b] = hash_uniform(seed, b) < 0.5f; steps0[b] += 1; }
    halted[0] = 1;
    if (B > 1) halted[B - 1] = 0;
    vecd zH = zH0, zL = zL0;
    veci steps = steps0;
    act_reset_ref<double>(zH.data(), zL.data(), Hi.data(), Li.data(), steps.data(), halted.data(), B, T, D);
    Dev<floatX> d_zH(zH0), d_zL(zL0), d_Hi(Hi), d_Li(Li);
    Dev<int> d_steps(steps0);
    Dev<uint8_t> d_halted(halted);
    act_reset(d_zH.p, d_zL.p, d_Hi.p, d_Li.p, d_steps.p, d_halted.p, B, T, D, st);
    launched(name);
    expect_exact(name + " z_H", d_zH.get(), zH);
    expect_exact(name + " z_L", d_zL.get(), zL);
    expect_equal(name + " steps", d_steps.raw(), steps);
}

// q rows ld >= 2 apart (the trainer's padded q head).
static void test_act_halt(int B, int ld, int max_steps, float explore, bool training, int slot_offset, int slot_stride) {
    const uint64_t seed = fresh_seed();
    const std::string name = fmt(BK " act_halt B=%d ld=%d max_steps=%d explore=%g training=%d slot_offset=%d slot_stride=%d", B,
                                 ld, max_steps, explore, training, slot_offset, slot_stride);
    vecd q = rx(rnd((size_t)B * ld, -1, 1));
    for (int b = 3; b < B; b += 17) q[(size_t)b * ld] = 0.0;     // q == 0 does not halt
    const veci steps0 = rnd_int(B, max_steps);
    veci steps = steps0;
    vecu8 halted(B);
    act_halt_ref<double>(halted.data(), steps.data(), q.data(), ld, B, max_steps, explore, training, seed, slot_offset, slot_stride);
    Dev<floatX> d_q(q);
    Dev<int> d_steps(steps0);
    Dev<uint8_t> d_halted(B);
    d_halted.poison();
    act_halt(d_halted.p, d_steps.p, d_q.p, ld, B, max_steps, explore, training, seed, slot_offset, slot_stride, st);
    launched(name);
    expect_equal(name + " halted", d_halted.raw(), halted);
    expect_equal(name + " steps", d_steps.raw(), steps);
}

static void test_act() {
    test_act_reset(5, 916, 64);
    test_act_reset(1, 7, 37);
    test_act_reset(64, 916, 512);
    test_act_halt(1000, 8, 16, 0.5f, true, 0, 1);
    test_act_halt(1000, 2, 16, 0.5f, false, 0, 1);
    test_act_halt(37, 8, 4, 0.5f, true, 1000, 3);
    test_act_halt(1, 2, 16, 0.5f, true, 7, 1);
    test_act_halt(500, 8, 1, 0.5f, true, 0, 1);
    test_act_halt(500, 8, 6, 0.0f, true, 64, 2);
    test_act_halt(500, 2, 6, 1.0f, true, 0, 1);
}

// =========================================================================================================
// optimizer: adam, ema, global norm, puzzle embedding (gather, sign-SGD), convert

// Buffers of offset + n + 7 elements; the update runs on [offset, offset + n) (offset: the encoder group's
// parameters start at n_decoder, not a multiple of the vector width); the rest must stay as it was.
// p_shift moves the params slice by that many more elements than the fp32 arrays (not co-aligned with them).
static void test_adam(size_t n, bool use_atan2, bool with_master, int t, size_t offset, size_t p_shift = 0) {
    const std::string name = fmt(BK " adam_update n=%zu %s master=%s t=%d offset=%zu%s", n, use_atan2 ? "atan2" : "AdamW",
                                 with_master ? "yes" : "null", t, offset,
                                 p_shift ? fmt(" params offset=%zu", offset + p_shift).c_str() : "");
    const size_t total = offset + p_shift + n + 7;
    const size_t po = offset + p_shift;
    const float lr = 0.05f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, grad_scale = 0.7f;
    const vecd p0 = rx(rnd(total, -1, 1)), ms0 = rs(rnd(total, -1, 1)), g = rs(rnd(total, -1, 1));
    const vecd m0 = rs(rnd(total, -0.1, 0.1)), v0 = rs(rnd(total, 0, 0.05));
    vecd p = p0, ms = ms0, m = m0, v = v0;
    adam_update_ref<double>(p.data() + po, with_master ? ms.data() + offset : nullptr, g.data() + offset, m.data() + offset,
                            v.data() + offset, n, lr, beta1, beta2, eps, wd, grad_scale, t, use_atan2);
    Dev<floatX> d_p(p0);
    Dev<floatS> d_ms(ms0), d_g(g), d_m(m0), d_v(v0);
    adam_update(d_p.p + po, with_master ? d_ms.p + offset : nullptr, d_g.p + offset, d_m.p + offset, d_v.p + offset, n, lr,
                beta1, beta2, eps, wd, grad_scale, t, use_atan2, st);
    launched(name);
    const vecd got_p = d_p.get();
    expect_close(name + " m", d_m.get(), m, TOL_F32);
    expect_close(name + " v", d_v.get(), v, TOL_F32);
    if (with_master) {
        const vecd got_ms = d_ms.get();
        expect_close(name + " master", got_ms, ms, TOL_F32);
        expect_close(name + " params", got_p, p, TOL_EW);
        vecd want = got_p;                     // params must be exactly floatX(the new master)
        for (size_t i = 0; i < n; i++) want[po + i] = rx1(got_ms[offset + i]);
        expect_exact(name + " params == floatX(master)", got_p, want);
    } else {
        expect_close(name + " params", got_p, p, TOL_F32);
    }
}

static void test_ema(size_t n, float rate, size_t offset) {
    const std::string name = fmt(BK " ema_update n=%zu rate=%g offset=%zu", n, rate, offset);
    const size_t total = offset + n + 7;
    const vecd e0 = rs(rnd(total, -1, 1)), w = rs(rnd(total, -1, 1));
    vecd e = e0;
    ema_update_ref<double>(e.data() + offset, w.data() + offset, n, rate);
    Dev<floatS> d_e(e0), d_w(w);
    ema_update(d_e.p + offset, d_w.p + offset, n, rate, st);
    launched(name);
    expect_close(name, d_e.get(), e, TOL_F32);
}

static void test_global_norm(size_t n, size_t offset) {
    const std::string name = fmt(BK " global_norm_squared n=%zu offset=%zu", n, offset);
    const vecd x = rs(rnd(offset + n, -1, 1));
    double ref = 0;
    global_norm_squared_ref<double>(&ref, x.data() + offset, n);
    Dev<floatS> d_x(x), d_out(1);
    std::vector<floatS> first;
    for (int run = 0; run < 2; run++) {
        d_out.poison();
        global_norm_squared(d_out.p, d_x.p + offset, n, st);
        launched(name);
        if (run == 0) {
            expect_close(name, d_out.get(), vecd{ref}, Tol{2e-6, 1e-7});     // accumulated in double (header)
            first = d_out.raw();
        } else {
            expect_bitwise(name + " deterministic", first, d_out.raw());
        }
    }
}

static void test_puzzle_emb_gather(int n_table, int B, int ndim) {
    const std::string name = fmt(BK " puzzle_emb_gather n_table=%d B=%d ndim=%d", n_table, B, ndim);
    const vecd table = rs(rnd((size_t)n_table * ndim, -1, 1));
    const veci ids = rnd_int(B, n_table);
    vecd rows((size_t)B * ndim);
    puzzle_emb_gather_ref<double>(rows.data(), table.data(), ids.data(), B, ndim);
    Dev<floatX> d_table(table);
    Dev<int> d_ids(ids);
    Dev<floatX> d_rows(rows.size());
    d_rows.poison();
    puzzle_emb_gather(d_rows.p, d_table.p, d_ids.p, B, ndim, st);
    launched(name);
    expect_exact(name, d_rows.get(), rx(rows));
}

// ids repeat; samples 0 and 1 share an id no other sample has and opposite gradients on the first half of the
// dimensions (sum exactly 0: sign 0, only the decay applies). The fp32 values are the master copy (BF16 build) or
// the table itself (FP32 build); the table must end as the values rounded to floatX.
static void test_sign_sgd(int n_table, int B, int ndim, float lr, float wd) {
    const std::string name = fmt(BK " sign_sgd_update n_table=%d B=%d ndim=%d lr=%g wd=%g (repeated ids)", n_table, B, ndim, lr, wd);
    const vecd t0 = rs(rnd((size_t)n_table * ndim, -1, 1));
    vecd grads = rx(rnd((size_t)B * ndim, -1, 1));
    veci ids = rnd_int(B, n_table - 1);
    for (auto& id : ids) id += 1;
    if (B >= 2) {
        ids[0] = ids[1] = 0;
        for (int d = 0; d < ndim / 2; d++) grads[(size_t)ndim + d] = -grads[d];
    }
    vecd t = t0;
    sign_sgd_update_ref<double, double>(t.data(), (double*)nullptr, ids.data(), grads.data(), B, ndim, lr, wd);
    const bool split = !std::is_same<floatX, floatS>::value;
    Dev<floatX> d_table(t0);
    Dev<floatS> d_master(t0);
    Dev<int> d_ids(ids);
    Dev<floatX> d_g(grads);
    sign_sgd_update(d_table.p, split ? d_master.p : nullptr, d_ids.p, d_g.p, B, ndim, lr, wd, st);
    launched(name);
    if (split) {
        expect_close(name + " (fp32 master)", d_master.get(), t, TOL_F32);
        expect_exact(name + " (table = rounded master)", d_table.get(), rx(d_master.get()));
    } else {
        expect_close(name, d_table.get(), t, TOL_F32);
    }
    const auto first = d_table.raw();
    d_table.set(t0);
    d_master.set(t0);
    sign_sgd_update(d_table.p, split ? d_master.p : nullptr, d_ids.p, d_g.p, B, ndim, lr, wd, st);
    launched(name);
    expect_bitwise(name + " deterministic", first, d_table.raw());
}

// Both conversions: the source as its type holds it, the destination exactly that value rounded to its type.
template <typename TSrc, typename TDst>
static void test_convert(size_t n, void (*convert)(TDst*, const TSrc*, size_t, Stream), const char* op) {
    const std::string name = fmt(BK " %s n=%zu", op, n);
    vecd src = rnd(n, -3, 3);
    for (double& x : src) x = (double)to_float(from_float<TSrc>(x));
    Dev<TSrc> d_src(src);
    Dev<TDst> d_dst(n);
    d_dst.poison();
    convert(d_dst.p, d_src.p, n, st);
    launched(name);
    vecd want = src;
    for (double& x : want) x = (double)to_float(from_float<TDst>(x));
    expect_exact(name, d_dst.get(), want);
}

// mse: the loss added to a known value; da and db accumulate; db null
static void test_mse(size_t n) {
    const std::string name = fmt(BK " mse n=%zu", n);
    const vecd a = rx(rnd(n, -1, 1)), b = rx(rnd(n, -1, 1)), da0 = rx(rnd(n, -1, 1)), db0 = rx(rnd(n, -1, 1));
    const float scale = 1.0f / (float)n, dloss = 0.7f;
    Dev<floatX> d_a(a), d_b(b), d_da(da0), d_db(db0);
    Dev<floatS> d_loss(vecd{0.5});
    mse_forward(d_loss.p, d_a.p, d_b.p, n, scale, st);
    mse_backward(d_da.p, d_db.p, d_a.p, d_b.p, n, scale, dloss, st);
    launched(name);
    vecd loss = {0.5}, da = da0, db = db0;
    mse_forward_ref(loss.data(), a.data(), b.data(), n, scale);
    mse_backward_ref(da.data(), db.data(), a.data(), b.data(), n, scale, dloss);
    expect_close(name + " loss", d_loss.get(), loss, TOL_S);
    expect_close(name + " da", d_da.get(), da, TOL_EW);
    expect_close(name + " db", d_db.get(), db, TOL_EW);
    Dev<floatX> d_da2(da0);
    mse_backward(d_da2.p, nullptr, d_a.p, d_b.p, n, scale, dloss, st);
    launched(name);
    expect_exact(name + " db null", d_da2.get(), d_da.get());
}

static void test_optimizer() {
    const bool master_null_ok = std::is_same<floatX, floatS>::value;   // the trainer's FP32 build: params are the master
    for (int atan2_mode = 1; atan2_mode >= 0; atan2_mode--)
        for (size_t n : {(size_t)1, (size_t)1000, (size_t)1000003}) {
            test_adam(n, atan2_mode, true, 1, 0);
            test_adam(n, atan2_mode, true, 37, 3);
            if (master_null_ok) {
                test_adam(n, atan2_mode, false, 1, 0);
                test_adam(n, atan2_mode, false, 37, 5);
            }
        }
    test_adam(1000, true, true, 3, 2, 1);
    if (master_null_ok) test_adam(1001, false, false, 3, 0, 3);
    for (size_t n : {(size_t)1, (size_t)1000, (size_t)1000003}) {
        test_ema(n, 0.999f, 0);
        test_ema(n, 0.95f, 3);
    }
    for (size_t n : {(size_t)0, (size_t)1, (size_t)4095, (size_t)4096, (size_t)4097, (size_t)1000003, (size_t)12345678}) test_global_norm(n, 0);
    test_global_norm(1000003, 5);
    test_global_norm(4097, 1);
    test_puzzle_emb_gather(1000, 64, 512);
    test_puzzle_emb_gather(7, 37, 37);
    test_puzzle_emb_gather(1, 1, 1);
    test_sign_sgd(1000, 64, 512, 0.01f, 0.1f);
    test_sign_sgd(5, 37, 37, 0.1f, 0.0f);
    test_sign_sgd(3, 200, 64, 0.01f, 0.1f);
    test_sign_sgd(2, 2, 3, 0.5f, 0.2f);
    for (size_t n : {(size_t)1, (size_t)1000, (size_t)1000003}) {
        test_convert(n, convert_to_floatS, "convert_to_floatS");
        test_convert(n, convert_to_floatX, "convert_to_floatX");
    }
    for (size_t n : {(size_t)1, (size_t)37, (size_t)196608}) test_mse(n);
}

// Muon: muon_update on an (R, C) matrix against muon_update_ref<double>. The weights are rounded values of ~1 and
// the update lr sqrt(max(1, R/C)) O is ~1e-2 of them, so the weights alone say little about O: O is recovered from
// each side's weights, O = (w0 * decay - w) / step (each side with its own rounding of decay and step), and
// compared on its own. lr = 0.25 keeps the fp32 rounding of w (~6e-8) at ~5e-6 of O's RMS in that recovery.
// Tolerances of O: FP32, the iteration in fp32 (cuBLASLt without TF32) vs double: a CPU emulation of these shapes
// measured a relative Frobenius error of ~3e-6 and elementwise errors up to ~7e-6 of max |O| (the quintic
// amplifies rounding along small singular directions, up to p'(0)^5 = 3.4445^5 ~ 485): relative Frobenius < 1e-4,
// elementwise Tol{2e-4, 2e-4}. BF16: X, A, B stored in bf16 (unit roundoff 2^-9 ~ 2e-3, three rounded matmuls per
// step, five steps): the emulation (bf16 rounding of every stored matrix, fp32 accumulation) measured 1.4e-2 ..
// 1.9e-2 relative Frobenius, elementwise up to ~4.5e-2 of max |O|; relative Frobenius < 5e-2 (the NS output of the
// author's bf16 implementation is equally far from the exact one), no elementwise check. Momentum is fp32
// arithmetic on fp32 inputs in both builds (TOL_F32). Every array has 7 more elements that must stay as they were;
// the scratch starts poisoned. Two launches from the same state must agree bitwise (no atomics anywhere).
static void test_muon(int R, int C, bool nesterov, bool with_master, float wd, int ns_steps = 5) {
    const std::string name = fmt(BK " muon_update R=%d C=%d nesterov=%d master=%s wd=%g ns_steps=%d", R, C, nesterov,
                                 with_master ? "yes" : "null", wd, ns_steps);
    const size_t n = (size_t)R * C, total = n + 7;
    const float lr = 0.25f, mu = 0.95f, grad_scale = 0.7f;
    const vecd p0 = rx(rnd(total, -1, 1)), ms0 = rs(rnd(total, -1, 1)), g = rs(rnd(total, -1, 1));
    const vecd m0 = rs(rnd(total, -0.1, 0.1));
    vecd p = p0, ms = ms0, m = m0, scratch(muon_scratch_size(R, C), NaN);
    muon_update_ref<double>(p.data(), with_master ? ms.data() : nullptr, g.data(), m.data(), R, C, lr, mu, nesterov, ns_steps,
                            wd, grad_scale, scratch.data());
    Dev<floatX> d_p(p0), d_scratch(muon_scratch_size(R, C));
    Dev<floatS> d_ms(ms0), d_g(g), d_m(m0);
    d_scratch.poison();
    muon_update(d_p.p, with_master ? d_ms.p : nullptr, d_g.p, d_m.p, R, C, lr, mu, nesterov, ns_steps, wd, grad_scale,
                d_scratch.p, st);
    launched(name);
    const vecd got_p = d_p.get(), got_ms = d_ms.get();
    expect_close(name + " momentum", d_m.get(), m, TOL_F32);
    // O from both sides
    const vecd& w0 = with_master ? ms0 : p0;
    const vecd& w_ref = with_master ? ms : p;
    const vecd& w_got = with_master ? got_ms : got_p;
    const double decay = muon_decay(lr, wd), step = muon_step(lr, R, C);
    const double decay_dev = rs1(decay), step_dev = rs1(step);       // as the launcher rounds them (fp32)
    vecd O_ref(n), O_got(n);
    double ss_ref = 0, ss_err = 0;
    for (size_t i = 0; i < n; i++) {
        O_ref[i] = (w0[i] * decay - w_ref[i]) / step;
        O_got[i] = (w0[i] * decay_dev - w_got[i]) / step_dev;
        ss_ref += O_ref[i] * O_ref[i];
        ss_err += (O_got[i] - O_ref[i]) * (O_got[i] - O_ref[i]);
    }
    const double rel = isfinite(ss_err) ? sqrt(ss_err / ss_ref) : INFINITY, rel_tol = BF16 ? 5e-2 : 1e-4;
    check(rel < rel_tol, (name + " O = NS(u): relative Frobenius error").c_str(), "%.3g (tol %.0e)", rel, rel_tol);
    if (!BF16) expect_close(name + " O elementwise", O_got, O_ref, Tol{2e-4, 2e-4});
    // the weights: the update is lr sqrt(max(1, R/C)) O with O's error above (~1e-2 x 5e-2 of the weights in bf16)
    const Tol tol_w = BF16 ? TOL_EW : Tol{1e-5, 1e-5};
    if (with_master) {
        expect_close(name + " master", got_ms, ms, tol_w);
        vecd want = got_p;                     // params must be exactly floatX(the new master)
        for (size_t i = 0; i < n; i++) want[i] = rx1(got_ms[i]);
        expect_exact(name + " params == floatX(master)", got_p, want);
    } else {
        expect_close(name + " params", got_p, p, tol_w);
        expect_exact(name + " master (null) untouched", got_ms, ms0);
    }
    // deterministic: the same launch from the same state, the scratch poisoned again
    Dev<floatX> d_p2(p0);
    Dev<floatS> d_ms2(ms0), d_m2(m0);
    d_scratch.poison();
    muon_update(d_p2.p, with_master ? d_ms2.p : nullptr, d_g.p, d_m2.p, R, C, lr, mu, nesterov, ns_steps, wd, grad_scale,
                d_scratch.p, st);
    launched(name + " (second run)");
    expect_bitwise(name + " deterministic (two runs bitwise identical)", d_p.raw(), d_p2.raw());
    if (with_master) expect_bitwise(name + " deterministic master", d_ms.raw(), d_ms2.raw());
}

static void test_muon_all() {
    const bool master_null_ok = std::is_same<floatX, floatS>::value;   // FP32: params are the master
    test_muon(256, 512, true, true, 0.1f);         // wide: the iteration on X as it is
    test_muon(768, 256, true, true, 0.0f);         // tall: on X^T, sqrt(R/C) = sqrt(3)
    test_muon(333, 129, false, true, 0.1f);        // odd shapes, unaligned rows, partial tiles
    test_muon(129, 333, true, true, 0.01f, 3);
    test_muon(896, 896, true, true, 0.1f);         // square (Qwen2.5-0.5B's q projection)
    test_muon(4864, 64, false, true, 0.1f, 1);     // many row tiles, a small Gram matrix
    if (master_null_ok) {
        test_muon(256, 512, false, false, 0.1f);
        test_muon(333, 129, true, false, 0.0f);
    }
}

// =========================================================================================================

#ifdef __CUDACC__
// What the SKIP lines name when there is no device.
static const char* OP_GROUPS[] = {
    "matmul_forward, matmul_backward (trainer shapes, then odd shapes last)",
    "rmsnorm_forward, rmsnorm_backward, rmsnorm_weighted_forward, rmsnorm_weighted_backward",
    "rope_forward, rope_backward",
    "attention_forward, attention_backward",
    "kv_cache_write",
    "swiglu_forward, swiglu_backward, add_forward",
    "embedding_forward, embedding_backward, prefix_forward, prefix_backward",
    "gather_rows, scatter_rows, broadcast_rows, broadcast_rows_backward",
    "masked_mean_forward, masked_mean_backward",
    "sigreg_forward, sigreg_backward",
    "gaussian_noise, reparameterize_forward, reparameterize_backward",
    "stablemax_loss_forward, stablemax_loss_backward, q_halt_loss_forward, q_halt_loss_backward",
    "softmax_xent, lm_head_loss, lora_forward, lora_backward (language models)",
    "act_reset, act_halt",
    "adam_update, ema_update, global_norm_squared, puzzle_emb_gather, sign_sgd_update, convert_to_floatS, convert_to_floatX, mse",
    "muon_update (Newton-Schulz through the matmuls)",
    "layernorm, activation, l2norm, dropout, sigreg variants (JEPA)",
    "vq_nearest, vq_quantize, vq_code_stats, vq_ema_update, vq_refresh_codes, vq_commitment, vq_gumbel, infonce (JEPA)",
    "object_attention, relational_loss, context_attention, gru_cell (JEPA)",
};
#endif

// The JEPA ops, one file per op family (they use the helpers above).
#include "kernels_jepa_layers.h"
#include "kernels_jepa_vq.h"
#include "kernels_jepa_relational.h"

int main() {
#ifdef __CUDACC__
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        const std::string reason = err != cudaSuccess ? cudaGetErrorString(err) : "cudaGetDeviceCount found 0 devices";
        const char* require = getenv("ARC_REQUIRE_GPU");
        if (require && !strcmp(require, "1")) {
            check(false, "gpu kernels", "no CUDA device (%s), and ARC_REQUIRE_GPU=1", reason.c_str());
            return test_summary();
        }
        for (const char* group : OP_GROUPS)
            printf("SKIP gpu kernels (%s): no CUDA device (%s) [%s]\n", PRECISION_NAME, reason.c_str(), group);
        return 0;
    }
#endif
    const std::string device = device_init(0);
    printf("test_kernels: %s launchers (%s, %s) against the double CPU references\n", BK, device.c_str(), PRECISION_NAME);
    fflush(stdout);
    const auto start = std::chrono::steady_clock::now();
    test_matmul();
    test_rmsnorm();
    test_rope_all();
    test_attention();
    test_kv_cache();
    test_swiglu_add();
    test_embedding_all();
    test_rows();
    test_masked_mean_all();
    test_sigreg_all();
    test_variational();
    test_losses();
    test_lm_ops();
    test_act();
    test_optimizer();
    test_muon_all();
    test_jepa_layers();
    test_jepa_vq();
    test_jepa_relational();
    test_matmul_odd();
    printf("test_kernels: %.1f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return test_summary();
}
