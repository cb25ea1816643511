// Masked mean over the middle axis.
//
//   out[b, :] = sum_n m[b, n] * inp[b, n, :] / max(1, sum_n m[b, n])      inp (B, N, C), mask (B, N) or null (= all 1)
//   backward  dinp[b, n, :] = m[b, n] * dout[b, :] / max(1, sum_n m[b, n])                                       (=)
//
// Uses: the standard grid encoder pools each demo over its non-PAD tokens; LPN encoders average the demo
// encodings of a sample; hybrid_variational averages the 16 context tokens before its posterior.
#pragma once
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void masked_mean_forward_ref(T* out, const T* inp, const uint8_t* mask, int B, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        T* o = out + (size_t)b * C;
        for (int c = 0; c < C; c++) o[c] = 0;
        int count = 0;
        for (int n = 0; n < N; n++) {
            if (mask && !mask[(size_t)b * N + n]) continue;
            count++;
            const T* x = inp + ((size_t)b * N + n) * C;
            for (int c = 0; c < C; c++) o[c] += x[c];
        }
        const T inv = T(1) / (T)(count > 1 ? count : 1);
        for (int c = 0; c < C; c++) o[c] *= inv;
    }
}

template <typename T>
void masked_mean_backward_ref(T* dinp, const T* dout, const uint8_t* mask, int B, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        int count = 0;
        for (int n = 0; n < N; n++) count += mask ? (mask[(size_t)b * N + n] != 0) : 1;
        const T inv = T(1) / (T)(count > 1 ? count : 1);
        for (int n = 0; n < N; n++) {
            const bool on = !mask || mask[(size_t)b * N + n];
            T* dx = dinp + ((size_t)b * N + n) * C;
            for (int c = 0; c < C; c++) dx[c] = on ? dout[(size_t)b * C + c] * inv : T(0);
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void masked_mean_forward(floatX* out, const floatX* inp, const uint8_t* mask, int B, int N, int C, Stream) {
    masked_mean_forward_ref(out, inp, mask, B, N, C);
}
inline void masked_mean_backward(floatX* dinp, const floatX* dout, const uint8_t* mask, int B, int N, int C, Stream) {
    masked_mean_backward_ref(dinp, dout, mask, B, N, C);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA

#ifdef __CUDACC__
// Forward: block (b, channel tile), one thread per channel; the sum over n runs in order, in fp32, and every
// thread counts the mask itself (the mask row is read by all threads at once: one broadcast load).
template <typename T>
__global__ void masked_mean_forward_kernel(T* out, const T* inp, const uint8_t* mask, int N, int C) {
    const int b = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum = 0.0f;
    int count = 0;
    for (int n = 0; n < N; n++) {
        if (mask && !mask[(size_t)b * N + n]) continue;
        count++;
        sum += to_float(inp[((size_t)b * N + n) * C + c]);
    }
    out[(size_t)b * C + c] = from_float<T>(sum * (1.0f / (float)max(count, 1)));
}

// Backward: one block per b; the block counts the mask row (an exact integer sum), then writes the N rows
// dinp[b, n, :], the threads across the channels.
template <typename T>
__global__ void masked_mean_backward_kernel(T* dinp, const T* dout, const uint8_t* mask, int N, int C) {
    __shared__ float scratch[32];
    const int b = blockIdx.x;
    const uint8_t* m = mask ? mask + (size_t)b * N : nullptr;
    float count = 0.0f;       // integer-valued: exact in fp32 below 2^24
    for (int n = threadIdx.x; n < N; n += blockDim.x) count += (!m || m[n]) ? 1.0f : 0.0f;
    count = block_reduce_sum(count, scratch);
    const float inv = 1.0f / fmaxf(count, 1.0f);
    for (int n = 0; n < N; n++) {
        const bool on = !m || m[n];
        T* dx = dinp + ((size_t)b * N + n) * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            dx[c] = from_float<T>(on ? to_float(dout[(size_t)b * C + c]) * inv : 0.0f);
    }
}

inline void masked_mean_forward(floatX* out, const floatX* inp, const uint8_t* mask, int B, int N, int C, Stream stream) {
    if (B == 0 || C == 0) return;
    const int block_size = 128;
    masked_mean_forward_kernel<<<dim3(B, CEIL_DIV(C, block_size)), block_size, 0, stream>>>(out, inp, mask, N, C);
    cudaCheckLaunch("masked_mean_forward_kernel");
}

inline void masked_mean_backward(floatX* dinp, const floatX* dout, const uint8_t* mask, int B, int N, int C, Stream stream) {
    if ((size_t)B * N * C == 0) return;
    const int block_size = 256;
    masked_mean_backward_kernel<<<B, block_size, 0, stream>>>(dinp, dout, mask, N, C);
    cudaCheckLaunch("masked_mean_backward_kernel");
}
#endif
