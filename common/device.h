// The two backends behind one source (see README "One source, two backends").
//
// A trainer is compiled twice from the same file: by nvcc into the GPU binary, and by the host C++
// compiler (`-x c++`) into the CPU reference binary. This header gives both builds the same vocabulary:
//
//   floatX   activations and the compute copy of the weights: bf16 on the GPU (PRECISION=BF16, default),
//            float on the GPU with PRECISION=FP32 and on the CPU; double in the CPU gradient-check build.
//   floatS   "statistics" precision: master weights, gradients, optimizer state, norm statistics, losses:
//            float, or double in the CPU gradient-check build (ENABLE_FP64).
//   Stream   the stream argument every op launcher takes (cudaStream_t, or a placeholder on the CPU).
//   device_malloc / device_free / copy_to_device / copy_to_host / device_memset: memory the ops work on.
//
// The CPU backend's "device" is host memory, so the copies are plain memcpy.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <vector>
#include "utils.h"

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define HOST_DEVICE __host__ __device__
#define BACKEND_NAME "CUDA"
typedef cudaStream_t Stream;
#else
#define HOST_DEVICE
#define BACKEND_NAME "CPU"
typedef struct CpuStream* Stream;   // never dereferenced: CPU ops run synchronously on the calling thread
#endif

#if defined(ENABLE_FP64)
#if defined(__CUDACC__)
#error "ENABLE_FP64 is the CPU gradient-check build; it is not a GPU precision"
#endif
typedef double floatX;
typedef double floatS;
#define PRECISION_NAME "FP64"
#elif defined(__CUDACC__) && !defined(ENABLE_FP32)
typedef __nv_bfloat16 floatX;
typedef float floatS;
#define PRECISION_NAME "BF16"
#else
typedef float floatX;
typedef float floatS;
#define PRECISION_NAME "FP32"
#endif

// Conversions between the storage types and float/double, usable in kernels and on the host.
HOST_DEVICE inline float to_float(float x) { return x; }
HOST_DEVICE inline double to_float(double x) { return x; }
#ifdef __CUDACC__
HOST_DEVICE inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
#endif
template <typename T> HOST_DEVICE inline T from_float(double x) { return (T)x; }
#ifdef __CUDACC__
template <> HOST_DEVICE inline __nv_bfloat16 from_float<__nv_bfloat16>(double x) { return __float2bfloat16((float)x); }
#endif

// Bytes allocated with device_malloc so far (the trainer prints it as the device memory it needs).
inline size_t& device_bytes_allocated() { static size_t bytes = 0; return bytes; }

#ifdef __CUDACC__
#define cudaCheck(err) cuda_check((err), __FILE__, __LINE__)
inline void cuda_check(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) fatal("CUDA error at %s:%d: %s", file, line, cudaGetErrorString(err));
}
#include "cuda_common.h"
inline void* device_malloc(size_t bytes, const char* what) {
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        fatal("out of GPU memory allocating %.1f MiB for %s (%.1f MiB free of %.1f MiB; %.1f MiB allocated so far): %s; "
              "try a smaller micro_batch_size", bytes / 1048576.0, what, free_b / 1048576.0, total_b / 1048576.0,
              device_bytes_allocated() / 1048576.0, cudaGetErrorString(err));
    }
    device_bytes_allocated() += bytes;
    return p;
}
inline void device_free(void* p) { cudaCheck(cudaFree(p)); }
inline void copy_to_device(void* dst, const void* src, size_t bytes) { cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice)); }
inline void copy_to_host(void* dst, const void* src, size_t bytes) { cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost)); }
inline void copy_on_device(void* dst, const void* src, size_t bytes) { cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice)); }
inline void device_memset(void* p, int value, size_t bytes) { cudaCheck(cudaMemset(p, value, bytes)); }
inline void device_synchronize() { cudaCheck(cudaDeviceSynchronize()); }
// A launcher's fp32 scratch buffer (partial sums and the like), one per Owner (a tag type naming the use): kept
// across calls and grown when a call needs more. The calls are ordered on one stream, so a call never overwrites
// numbers an earlier one still reads; before a buffer is replaced, the stream is drained.
template <typename Owner>
float* device_scratch(size_t n, Stream stream, const char* what) {
    static float* buf = nullptr;
    static size_t capacity = 0;
    if (n > capacity) {
        if (buf) {
            cudaCheck(cudaStreamSynchronize(stream));
            device_free(buf);
        }
        buf = (float*)device_malloc(n * sizeof(float), what);
        capacity = n;
    }
    return buf;
}
inline size_t device_free_memory() {
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    return free_b;
}
// What the whole device has in use right now (ours, the CUDA context, the libraries' workspaces).
inline size_t device_memory_in_use() {
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    return total_b - free_b;
}
#else
inline void* device_malloc(size_t bytes, const char* what) {
    device_bytes_allocated() += bytes;
    return malloc_check(bytes, what);
}
inline std::string device_init(int = 0) { return "the host"; }
inline size_t device_free_memory() { return SIZE_MAX; }     // host memory: the batch is never split automatically
inline size_t device_memory_in_use() { return device_bytes_allocated(); }
inline void device_free(void* p) { free(p); }
inline void copy_to_device(void* dst, const void* src, size_t bytes) { if (bytes) memcpy(dst, src, bytes); }
inline void copy_to_host(void* dst, const void* src, size_t bytes) { if (bytes) memcpy(dst, src, bytes); }
inline void copy_on_device(void* dst, const void* src, size_t bytes) { if (bytes && dst != src) memcpy(dst, src, bytes); }
inline void device_memset(void* p, int value, size_t bytes) { if (bytes) memset(p, value, bytes); }
inline void device_synchronize() {}
#endif

// Host fp32 values <-> device floatX, converted element by element on the host.
inline void upload_floatX(floatX* dst, const floatS* src, size_t n) {
    std::vector<floatX> tmp(n);
    for (size_t i = 0; i < n; i++) tmp[i] = from_float<floatX>((double)src[i]);
    copy_to_device(dst, tmp.data(), n * sizeof(floatX));
}
inline void download_floatX(floatS* dst, const floatX* src, size_t n) {
    std::vector<floatX> tmp(n);
    copy_to_host(tmp.data(), src, n * sizeof(floatX));
    for (size_t i = 0; i < n; i++) dst[i] = (floatS)to_float(tmp[i]);
}

// Dense peak TFLOP/s of the precision the trainer runs (bf16 tensor cores, or fp32 without TF32), from the
// vendor data sheets (SXM parts), for MFU. 0 when unknown (the CPU backend, other GPUs): MFU is not printed.
inline double device_peak_tflops(const std::string& name) {
    const bool bf16 = std::string(PRECISION_NAME) == "BF16";
    if (name.find("H200") != std::string::npos) return bf16 ? 989.0 : 67.0;
    if (name.find("H100") != std::string::npos)
        return name.find("PCIe") != std::string::npos ? (bf16 ? 756.0 : 51.0) : (bf16 ? 989.0 : 67.0);
    if (name.find("A100") != std::string::npos) return bf16 ? 312.0 : 19.5;
    return 0.0;
}
