// Squared L2 norm of a gradient vector, summed in a fixed order (deterministic for any thread count):
//   out[0] = sum_i x[i]^2        accumulated in double per fixed chunk of 4096 elements, chunks added in order.
// The trainer takes sqrt on the host for logging and clipping (scale = min(1, clip / (norm + 1e-6)), as
// torch.nn.utils.clip_grad_norm_).
#pragma once
#include <algorithm>
#include <vector>
#include "../common/device.h"

template <typename T>
void global_norm_squared_ref(T* out, const T* x, size_t n) {
    const size_t chunk = 4096, n_chunks = CEIL_DIV(n, chunk);
    std::vector<double> partial(n_chunks);
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < n_chunks; c++) {
        double s = 0;
        for (size_t i = c * chunk; i < n && i < (c + 1) * chunk; i++) s += (double)x[i] * (double)x[i];
        partial[c] = s;
    }
    double total = 0;
    for (size_t c = 0; c < n_chunks; c++) total += partial[c];
    out[0] = (T)total;
}

#ifndef __CUDACC__
inline void global_norm_squared(floatS* out, const floatS* x, size_t n, Stream) { global_norm_squared_ref(out, x, n); }
#endif

#ifdef __CUDACC__
// Two stages of one kernel, in double: out[blockIdx.x] = sum of x[i] (squared with SQUARE) over the block's
// elements i = blockIdx.x * blockDim.x + threadIdx.x + k * gridDim.x * blockDim.x, k = 0, 1, ...
//   stage 1: a grid of at most GLOBAL_NORM_BLOCKS blocks writes one partial sum per block
//   stage 2: one block sums those partial sums into out[0]
// Each thread's elements and their order depend only on n and the launch shape, and block_reduce_sum adds in
// a fixed order: the result is deterministic.
constexpr int GLOBAL_NORM_BLOCKS = 1024;
constexpr int GLOBAL_NORM_BLOCK_SIZE = 512;

template <bool SQUARE, typename TOut, typename TIn>
__global__ void global_norm_sum_kernel(TOut* out, const TIn* x, size_t n) {
    __shared__ double scratch[32];
    double sum = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const double v = (double)x[i];
        sum += SQUARE ? v * v : v;
    }
    sum = block_reduce_sum(sum, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = (TOut)sum;
}

inline void global_norm_squared(floatS* out, const floatS* x, size_t n, Stream stream) {
    if (n == 0) {                                            // the empty sum
        cudaCheck(cudaMemsetAsync(out, 0, sizeof(floatS), stream));
        return;
    }
    // the per-block partial sums, allocated at the first call and reused (the calls are ordered on one stream)
    static double* partial = (double*)device_malloc(GLOBAL_NORM_BLOCKS * sizeof(double), "global_norm partial sums");
    const int n_blocks = (int)std::min((size_t)GLOBAL_NORM_BLOCKS, CEIL_DIV(n, (size_t)GLOBAL_NORM_BLOCK_SIZE));
    global_norm_sum_kernel<true><<<n_blocks, GLOBAL_NORM_BLOCK_SIZE, 0, stream>>>(partial, x, n);
    cudaCheckLaunch("global_norm_sum_kernel (partial sums)");
    global_norm_sum_kernel<false><<<1, GLOBAL_NORM_BLOCK_SIZE, 0, stream>>>(out, partial, (size_t)n_blocks);
    cudaCheckLaunch("global_norm_sum_kernel (total)");
}
#endif
