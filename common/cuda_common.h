// Helpers shared by the CUDA kernels (included by device.h in the nvcc build only).
//
//   warp_reduce_sum / warp_reduce_max     butterfly reductions over the 32 lanes of a warp (every lane gets
//                                         the result); the order of the additions is fixed, so they are
//                                         deterministic
//   block_reduce_sum                      the same over a whole block (warps reduce, then warp 0 reduces the
//                                         per-warp sums): fixed order, no atomics
//   Packed128<T>                          16 bytes of T (8 bf16 or 4 floats) loaded or stored in one instruction
//   load_floats / store_floats            P elements of a tensor to / from floats (128-bit or scalar)
//   cublaslt_handle() / cublaslt_workspace()   the one cuBLASLt handle and workspace of the process
//   smem_dynamic_max / smem_opt_in        dynamic shared memory beyond the default 48 KB per block
//   device_init()                         picks the GPU, prints what it is, creates the cuBLASLt handle
#pragma once
#ifdef __CUDACC__
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>
#include "utils.h"

#define WARP_SIZE 32

// A launch's configuration errors surface at the next call; check right away so the message names the kernel.
#define cudaCheckLaunch(name) cuda_check_launch((name), __FILE__, __LINE__)
inline void cuda_check_launch(const char* name, const char* file, int line) {
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) fatal("CUDA error launching %s at %s:%d: %s", name, file, line, cudaGetErrorString(err));
}

__device__ inline float warp_reduce_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}
__device__ inline double warp_reduce_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}
__device__ inline float warp_reduce_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, offset));
    return v;
}

// Sum of v over the block; every thread gets the result. blockDim.x must be a multiple of 32 (<= 1024).
// `shared` needs 32 elements. Calls in a row are safe (the barrier at the start protects the scratch).
template <typename T>
__device__ inline T block_reduce_sum(T v, T* shared) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, n_warps = blockDim.x / WARP_SIZE;
    v = warp_reduce_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    T total = lane < n_warps ? shared[lane] : T(0);
    return warp_reduce_sum(total);
}

// 16 bytes of T, moved with one 128-bit load/store. The address must be 16-byte aligned.
template <typename T>
struct alignas(16) Packed128 {
    static constexpr int size = 16 / sizeof(T);
    T payload[size];
    __device__ T& operator[](int i) { return payload[i]; }
    __device__ const T& operator[](int i) const { return payload[i]; }
};
template <typename T> __device__ inline Packed128<T> load128(const T* p) { return *reinterpret_cast<const Packed128<T>*>(p); }
// streaming load: read once, keep it out of the caches' way
template <typename T> __device__ inline Packed128<T> load128cs(const T* p) {
    Packed128<T> r;
    *reinterpret_cast<int4*>(&r) = __ldcs(reinterpret_cast<const int4*>(p));
    return r;
}
template <typename T> __device__ inline void store128(T* p, const Packed128<T>& v) { *reinterpret_cast<Packed128<T>*>(p) = v; }

// P consecutive elements of a floatX tensor as floats: one 128-bit access when P is the pack size, a scalar one
// when P = 1 (ragged sizes, unaligned pointers). Cached loads (a second pass over a row may find it in L1).
template <int P, typename T> __device__ inline void load_floats(float (&x)[P], const T* p) {
    if constexpr (P == 1) {
        x[0] = to_float(*p);
    } else {
        static_assert(P == Packed128<T>::size, "P is 1 or the 128-bit pack size");
        const Packed128<T> v = load128(p);
        for (int k = 0; k < P; k++) x[k] = to_float(v[k]);
    }
}
template <int P, typename T> __device__ inline void store_floats(T* p, const float (&x)[P]) {
    if constexpr (P == 1) {
        *p = from_float<T>(x[0]);
    } else {
        static_assert(P == Packed128<T>::size, "P is 1 or the 128-bit pack size");
        Packed128<T> v;
        for (int k = 0; k < P; k++) v[k] = from_float<T>(x[k]);
        store128(p, v);
    }
}

// ----------------------------------------------------------------------------------------------------------
// Dynamic shared memory. By default a block may use 48 KB of shared memory, static and dynamic together; beyond
// that a kernel must opt in (cudaFuncAttributeMaxDynamicSharedMemorySize), up to the device's per-block opt-in
// limit (sharedMemPerBlockOptin: 227 KB on H100, 163 KB on A100) less the kernel's static shared memory.

// The device's opt-in limit in bytes, read once (a process drives one device).
inline size_t smem_optin_limit() {
    static const size_t bytes = [] {
        int dev = 0, v = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        return (size_t)v;
    }();
    return bytes;
}

// The most dynamic shared memory `kernel` can get per block on this device (the opt-in limit less its static part).
template <typename Kernel>
size_t smem_dynamic_max(Kernel kernel) {
    cudaFuncAttributes attr;
    cudaCheck(cudaFuncGetAttributes(&attr, (const void*)kernel));
    const size_t limit = smem_optin_limit();
    return limit > attr.sharedSizeBytes ? limit - attr.sharedSizeBytes : 0;
}

// Makes `kernel` launchable with `bytes` of dynamic shared memory: opts it in when its current maximum is lower;
// when the device cannot give that much, ends in fatal naming the op and its sizes (`sizes`, printf-style).
template <typename Kernel>
void smem_opt_in(Kernel kernel, size_t bytes, const char* op, const char* sizes, ...) {
    cudaFuncAttributes attr;
    cudaCheck(cudaFuncGetAttributes(&attr, (const void*)kernel));
    if (bytes <= (size_t)attr.maxDynamicSharedSizeBytes) return;
    const size_t limit = smem_optin_limit();
    if (attr.sharedSizeBytes + bytes > limit) {
        char what[256];
        va_list ap;
        va_start(ap, sizes);
        vsnprintf(what, sizeof what, sizes, ap);
        va_end(ap);
        fatal("%s (%s) needs %zu bytes of shared memory per block (%zu dynamic + %zu static); this GPU allows %zu "
              "(its opt-in limit per block)", op, what, bytes + attr.sharedSizeBytes, bytes, (size_t)attr.sharedSizeBytes,
              limit);
    }
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

// ----------------------------------------------------------------------------------------------------------
// cuBLASLt: one handle and one workspace for the process (created by device_init).

#define cublasCheck(status) cublas_check((status), __FILE__, __LINE__)
inline void cublas_check(cublasStatus_t status, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) fatal("cuBLAS error %d at %s:%d", (int)status, file, line);
}

struct CublasLtState {
    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 32u << 20;      // Hopper's kernels like 32 MiB
};
inline CublasLtState& cublaslt_state() { static CublasLtState s; return s; }

// Selects GPU `device` (the node-local rank later), creates the cuBLASLt handle; returns the device's name.
inline std::string device_init(int device = 0) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0)
        fatal("no CUDA GPU found (%s): this is the GPU build; on a machine without one use the CPU build (train_etrm_cpu, train_jepa_cpu)",
              err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    if (device >= count) fatal("GPU %d requested but only %d present", device, count);
    cudaCheck(cudaSetDevice(device));
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, device));
    CublasLtState& s = cublaslt_state();
    if (!s.handle) {
        cublasCheck(cublasLtCreate(&s.handle));
        cudaCheck(cudaMalloc(&s.workspace, s.workspace_bytes));
    }
    return prop.name;
}
#endif
