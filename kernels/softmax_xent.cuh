// Softmax cross-entropy over a large vocabulary, one row per token, with the backward fused in place.
//
//   lse_n     = log sum_v exp(x[n, v])                      (max-subtracted; fp32 on the GPU, double on the CPU)
//   loss[n]   = lse_n - x[n, y_n]                           for a labelled row (y_n in [0, V)), 0 for y_n == -100
//   argmax[n] = the first v with the largest x[n, v]        (optional: greedy decoding, token accuracy)
//   backward  x[n, v] <- dscale * r_n * (exp(x[n, v] - lse_n) - [v == y_n])   labelled rows; 0 for ignored rows (=)
//
// Rows are ld >= V apart; with `grad` the columns V..ld-1 are zeroed too. dscale * r_n is d(objective)/d(loss[n]):
// dscale the same for every row (e.g. 1 / number of labelled tokens for a mean), r_n = row_scale[n] a per-row
// weight (the CVAE's token-weighted reconstruction), 1 when row_scale is null. Overwriting the logits with their gradient
// is what lets a language-model head process a chunk of rows with one (rows, V) buffer (kernels/lm_head_loss.cuh):
// at V = 151936 the logits of a whole batch would not fit. Labels must be in [0, V) or -100 (the caller validates
// its data).
#pragma once
#include <math.h>
#include "../common/device.h"

#ifndef IGNORE_LABEL_ID
#define IGNORE_LABEL_ID (-100)
#endif

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void softmax_xent_ref(T* loss, int* argmax, T* logits, const int* labels, int N, int V, int ld, double dscale, bool grad,
                      const T* row_scale = nullptr) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        T* x = logits + (size_t)n * ld;
        int best = 0;
        for (int v = 1; v < V; v++) if (x[v] > x[best]) best = v;
        const double m = (double)x[best];
        double sum = 0;
        for (int v = 0; v < V; v++) sum += exp((double)x[v] - m);
        const double lse = m + log(sum);
        const int y = labels[n];
        loss[n] = y == IGNORE_LABEL_ID ? T(0) : (T)(lse - (double)x[y]);
        if (argmax) argmax[n] = best;
        if (!grad) continue;
        const double scale = row_scale ? dscale * (double)row_scale[n] : dscale;
        for (int v = 0; v < V; v++)
            x[v] = y == IGNORE_LABEL_ID ? T(0) : (T)(scale * (exp((double)x[v] - lse) - (v == y ? 1.0 : 0.0)));
        for (int v = V; v < ld; v++) x[v] = T(0);
    }
}

#ifndef __CUDACC__
inline void softmax_xent(floatS* loss, int* argmax, floatX* logits, const int* labels, int N, int V, int ld, float dscale,
                         bool grad, Stream, const floatS* row_scale = nullptr) {
    softmax_xent_ref(loss, argmax, logits, labels, N, V, ld, dscale, grad, row_scale);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA: a block per row. Each thread runs an online softmax over its columns v = tid, tid + blockDim, ... (a
// running max m_t and sum s_t of exp(x - m_t)), then the block combines them in a fixed order: M = max m_t,
// S = sum s_t exp(m_t - M); the argmax is reduced the same way (larger value, then smaller index). A second pass
// writes the gradient. Two reads and one write of the row: the kernel is bound by memory bandwidth.

#ifdef __CUDACC__
// (value, index) of the larger value, the smaller index on ties: the first maximum, as torch.argmax.
__device__ inline void argmax_combine(float* v, int* i, float v2, int i2) {
    if (v2 > *v || (v2 == *v && i2 < *i)) { *v = v2; *i = i2; }
}

__global__ void softmax_xent_kernel(floatS* loss, int* argmax, floatX* logits, const int* labels, int V, int ld,
                                    float dscale, bool grad, const floatS* row_scale) {
    __shared__ float s_max[WARP_SIZE], s_best[WARP_SIZE], s_sum[WARP_SIZE];
    __shared__ int s_idx[WARP_SIZE];
    const int n = blockIdx.x, lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int n_warps = blockDim.x / WARP_SIZE;
    floatX* x = logits + (size_t)n * ld;
    float m = -INFINITY, s = 0, best = -INFINITY;
    int best_i = V;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float xv = to_float(x[v]);
        if (xv > m) { s *= expf(m - xv); m = xv; }
        s += expf(xv - m);
        if (xv > best) { best = xv; best_i = v; }           // strict: the first maximum of this thread's columns
    }
    // the block's max (and argmax), then the sum rescaled to it
    float M = m;
    for (int offset = 16; offset > 0; offset >>= 1) {
        argmax_combine(&best, &best_i, __shfl_xor_sync(0xffffffff, best, offset), __shfl_xor_sync(0xffffffff, best_i, offset));
        M = fmaxf(M, __shfl_xor_sync(0xffffffff, M, offset));
    }
    if (lane == 0) { s_max[warp] = M; s_best[warp] = best; s_idx[warp] = best_i; }
    __syncthreads();
    M = -INFINITY;
    best = -INFINITY;
    best_i = V;
    for (int w = 0; w < n_warps; w++) {                       // every thread, the same fixed order
        M = fmaxf(M, s_max[w]);
        argmax_combine(&best, &best_i, s_best[w], s_idx[w]);
    }
    const float S = block_reduce_sum(m == -INFINITY ? 0.0f : s * expf(m - M), s_sum);
    const float lse = M + logf(S);
    const int y = labels[n];
    if (threadIdx.x == 0) {
        loss[n] = y == IGNORE_LABEL_ID ? 0.0f : lse - to_float(x[y]);
        if (argmax) argmax[n] = best_i;
    }
    if (!grad) return;
    if (row_scale) dscale *= row_scale[n];
    __syncthreads();                                          // x[y] is read above before it is overwritten
    for (int v = threadIdx.x; v < ld; v += blockDim.x) {
        float g = 0;
        if (v < V && y != IGNORE_LABEL_ID) g = dscale * (expf(to_float(x[v]) - lse) - (v == y ? 1.0f : 0.0f));
        x[v] = from_float<floatX>(g);
    }
}

// The launcher with the block size as a parameter (a multiple of 32, <= 1024); the lab sweeps it.
inline void softmax_xent_launch(floatS* loss, int* argmax, floatX* logits, const int* labels, int N, int V, int ld,
                                float dscale, bool grad, int block_size, Stream st, const floatS* row_scale = nullptr) {
    if (N == 0) return;
    softmax_xent_kernel<<<N, block_size, 0, st>>>(loss, argmax, logits, labels, V, ld, dscale, grad, row_scale);
    cudaCheckLaunch("softmax_xent_kernel");
}
inline void softmax_xent(floatS* loss, int* argmax, floatX* logits, const int* labels, int N, int V, int ld, float dscale,
                         bool grad, Stream st, const floatS* row_scale = nullptr) {
    softmax_xent_launch(loss, argmax, logits, labels, N, V, ld, dscale, grad, 1024, st, row_scale);
}
#endif
