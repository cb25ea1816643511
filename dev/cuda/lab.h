// Shared by the kernel labs in dev/cuda/ (llm.c's dev/cuda style): random inputs, validation against the CPU
// reference, timing with the L2 cache flushed, and the device's measured ceilings to compare against.
//
// A lab is one .cu file: it builds inputs, computes the CPU reference (the *_ref function of kernels/<op>.cuh),
// then for every kernel version and block size validates the GPU result and times it, printing one line
//   RESULT op=<op> version=<v> block=<b> ms=<t> gbps=<GB/s> tflops=<TFLOP/s> pct=<% of the ceiling> of=copy|matmul
// per configuration (dev/bench.py collects them into the markdown table of `make bench`).
#pragma once
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>
#include "../../common/device.h"
#include "../../common/rand.h"

// Uniform random floats in [lo, hi) from a counter-based hash (fresh for every seed).
inline std::vector<float> lab_random(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) v[i] = lo + (hi - lo) * (float)hash_uniform(seed, i, 0x1ab);
    return v;
}

// Rounds host floats to what floatX holds (so the CPU reference sees exactly the GPU's inputs).
inline std::vector<float> lab_round(const std::vector<float>& v) {
    std::vector<float> r(v.size());
    for (size_t i = 0; i < v.size(); i++) r[i] = to_float(from_float<floatX>(v[i]));
    return r;
}

template <typename T> T* lab_upload(const std::vector<float>& v) {
    std::vector<T> tmp(v.size());
    for (size_t i = 0; i < v.size(); i++) tmp[i] = from_float<T>(v[i]);
    T* d = (T*)device_malloc(std::max<size_t>(1, v.size()) * sizeof(T), "lab input");
    copy_to_device(d, tmp.data(), v.size() * sizeof(T));
    return d;
}
template <typename T> std::vector<float> lab_download(const T* d, size_t n) {
    std::vector<T> tmp(n);
    copy_to_host(tmp.data(), d, n * sizeof(T));
    std::vector<float> r(n);
    for (size_t i = 0; i < n; i++) r[i] = to_float(tmp[i]);
    return r;
}
// Fills a device buffer with NaN bytes so that an element the kernel forgets to write fails validation.
inline void lab_poison(void* d, size_t bytes) { cudaCheck(cudaMemset(d, 0xff, bytes)); }

// Tolerances: FP32 builds compare tightly; BF16 builds within a few bf16 ulps of the larger magnitude.
#if defined(ENABLE_FP32)
#define LAB_RTOL 1e-5
#define LAB_ATOL 1e-5
#else
#define LAB_RTOL 2e-2
#define LAB_ATOL 2e-2
#endif

// |gpu - ref| <= atol + rtol * |ref| everywhere (NaN fails); prints the worst element; exits 1 on failure.
inline bool lab_validate(const char* what, const std::vector<float>& gpu, const std::vector<float>& ref,
                         double rtol = LAB_RTOL, double atol = LAB_ATOL) {
    size_t worst = 0;
    double worst_excess = 0;
    bool ok = gpu.size() == ref.size();
    for (size_t i = 0; ok && i < ref.size(); i++) {
        const double err = fabs((double)gpu[i] - (double)ref[i]), allowed = atol + rtol * fabs((double)ref[i]);
        if (!(err <= allowed)) ok = false;
        if (!(err / allowed <= worst_excess)) { worst_excess = err / allowed; worst = i; }
    }
    if (!ok) {
        printf("FAIL %s: element %zu gpu %.7g ref %.7g (%.2fx the tolerance)\n", what, worst, gpu[worst], ref[worst], worst_excess);
        exit(1);
    }
    return true;
}

// Mean time of `launch` in ms over `repeats` runs, each preceded by a write of twice the L2 size (so the
// inputs come from device memory, not the cache); device events around every launch alone.
template <typename F>
float lab_time_ms(int repeats, F&& launch) {
    static char* flush = nullptr;
    static size_t flush_bytes = 0;
    if (!flush) {
        int dev = 0, l2 = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
        flush_bytes = (size_t)2 * l2;
        cudaCheck(cudaMalloc(&flush, flush_bytes));
    }
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    launch();                                            // warm-up (module load, cuBLASLt heuristics)
    cudaCheck(cudaDeviceSynchronize());
    std::vector<float> times;
    for (int r = 0; r < repeats; r++) {
        cudaCheck(cudaMemset(flush, r & 0xff, flush_bytes));
        cudaCheck(cudaEventRecord(start));
        launch();
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        float ms = 0;
        cudaCheck(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
    }
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];                      // median
}

// The device's measured ceilings: a large device-to-device copy (bytes read + written per second) and a
// large bf16 matmul through cuBLASLt (TFLOP/s), measured in the same run as the kernels they judge.
struct Ceilings {
    double copy_gbps, matmul_tflops;
};

inline Ceilings lab_measure_ceilings() {
    Ceilings c;
    const size_t bytes = (size_t)1 << 30;
    char *a, *b;
    cudaCheck(cudaMalloc(&a, bytes));
    cudaCheck(cudaMalloc(&b, bytes));
    cudaCheck(cudaMemset(a, 1, bytes));
    const float copy_ms = lab_time_ms(20, [&] { cudaCheck(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); });
    c.copy_gbps = 2.0 * bytes / (copy_ms * 1e-3) / 1e9;
    cudaCheck(cudaFree(a));
    cudaCheck(cudaFree(b));

    // C (n x n, bf16) = A (n x n) B (n x n), fp32 accumulation, random inputs (never zeros)
    const int n = 8192;
    std::vector<float> host = lab_random((size_t)n * n, 7);
    __nv_bfloat16* A = lab_upload<__nv_bfloat16>(host);
    __nv_bfloat16* B = lab_upload<__nv_bfloat16>(host);
    __nv_bfloat16* C = (__nv_bfloat16*)device_malloc((size_t)n * n * sizeof(__nv_bfloat16), "lab C");
    CublasLtState& s = cublaslt_state();
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t layout;
    cublasCheck(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasCheck(cublasLtMatrixLayoutCreate(&layout, CUDA_R_16BF, n, n, n));
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &s.workspace_bytes, sizeof(size_t)));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(s.handle, op, layout, layout, layout, layout, pref, 1, &heur, &found));
    if (!found) fatal("lab: cuBLASLt found no bf16 algorithm for the ceiling matmul");
    const float one = 1, zero = 0;
    const float mm_ms = lab_time_ms(20, [&] {
        cublasCheck(cublasLtMatmul(s.handle, op, &one, A, layout, B, layout, &zero, C, layout, C, layout, &heur.algo,
                                   s.workspace, s.workspace_bytes, 0));
    });
    c.matmul_tflops = 2.0 * n * n * (double)n / (mm_ms * 1e-3) / 1e12;
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    cublasCheck(cublasLtMatrixLayoutDestroy(layout));
    cublasCheck(cublasLtMatmulDescDestroy(op));
    device_free(A); device_free(B); device_free(C);
    return c;
}

// Sets up the GPU and measures the ceilings; prints them as CEILING lines.
inline Ceilings lab_begin(const char* lab_name) {
    const std::string name = device_init(0);
    Ceilings c = lab_measure_ceilings();
    printf("lab %s on %s (%s build)\n", lab_name, name.c_str(), PRECISION_NAME);
    printf("CEILING device=\"%s\" copy_gbps=%.1f bf16_matmul_tflops=%.1f\n", name.c_str(), c.copy_gbps, c.matmul_tflops);
    return c;
}

// One RESULT line: time, and the achieved rate against the ceiling that bounds the op (bytes for memory-bound
// ops, flops for the others; pass 0 for what does not apply).
inline void lab_report(const Ceilings& c, const char* op, const char* version, int block, float ms, double bytes, double flops) {
    const double gbps = bytes / (ms * 1e-3) / 1e9, tflops = flops / (ms * 1e-3) / 1e12;
    const double pct = flops > 0 ? 100.0 * tflops / c.matmul_tflops : 100.0 * gbps / c.copy_gbps;
    printf("RESULT op=%s version=%s block=%d ms=%.4f gbps=%.1f tflops=%.2f pct=%.1f of=%s\n", op, version, block, ms, gbps,
           tflops, pct, flops > 0 ? "matmul" : "copy");
    fflush(stdout);
}
