// Mean squared error between two tensors of the same shape, as a loss term:
//
//   forward   loss += scale * sum_i (a_i - b_i)^2          (scale = weight / number of elements of the global batch)
//   backward  da_i += dloss * scale * 2 (a_i - b_i) ,  db_i -= the same      (db may be null: b detached)
//
// Uses: the invariance losses (perturbed vs clean representations), the L-JEPA prediction loss. The loss
// accumulates (+=) so one scalar can hold a sum of terms (the trainer zeroes it per micro-batch). The sum runs in a
// fixed order (double on the CPU; one block, fixed per-thread strides and a block reduction on the GPU).
#pragma once
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename TS, typename TX>
void mse_forward_ref(TS* loss, const TX* a, const TX* b, size_t n, float scale) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)to_float(a[i]) - (double)to_float(b[i]);
        sum += d * d;
    }
    *loss += (TS)(scale * sum);
}

template <typename TX>
void mse_backward_ref(TX* da, TX* db, const TX* a, const TX* b, size_t n, float scale, float dloss) {
    for (size_t i = 0; i < n; i++) {
        const double g = (double)dloss * scale * 2.0 * ((double)to_float(a[i]) - (double)to_float(b[i]));
        da[i] = from_float<TX>((double)to_float(da[i]) + g);
        if (db) db[i] = from_float<TX>((double)to_float(db[i]) - g);
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void mse_forward(floatS* loss, const floatX* a, const floatX* b, size_t n, float scale, Stream) {
    mse_forward_ref(loss, a, b, n, scale);
}
inline void mse_backward(floatX* da, floatX* db, const floatX* a, const floatX* b, size_t n, float scale, float dloss, Stream) {
    mse_backward_ref(da, db, a, b, n, scale, dloss);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA

#ifdef __CUDACC__
// One block of 1024 threads: thread t sums elements t, t + 1024, ... (the terms are a few hundred thousand).
__global__ void mse_forward_kernel(floatS* loss, const floatX* a, const floatX* b, size_t n, float scale) {
    __shared__ float scratch[32];
    float sum = 0.0f;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float d = to_float(a[i]) - to_float(b[i]);
        sum += d * d;
    }
    sum = block_reduce_sum(sum, scratch);
    if (threadIdx.x == 0) *loss += scale * sum;
}

__global__ void mse_backward_kernel(floatX* da, floatX* db, const floatX* a, const floatX* b, size_t n, float coef) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = coef * (to_float(a[i]) - to_float(b[i]));
    da[i] = from_float<floatX>(to_float(da[i]) + g);
    if (db) db[i] = from_float<floatX>(to_float(db[i]) - g);
}

inline void mse_forward(floatS* loss, const floatX* a, const floatX* b, size_t n, float scale, Stream stream) {
    mse_forward_kernel<<<1, 1024, 0, stream>>>(loss, a, b, n, scale);
    cudaCheckLaunch("mse_forward_kernel");
}
inline void mse_backward(floatX* da, floatX* db, const floatX* a, const floatX* b, size_t n, float scale, float dloss, Stream stream) {
    if (n == 0) return;
    const int block_size = 256;
    mse_backward_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(da, db, a, b, n, 2.0f * scale * dloss);
    cudaCheckLaunch("mse_backward_kernel");
}
#endif
