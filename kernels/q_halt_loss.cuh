// The halting head's loss: binary cross-entropy with logits of q_halt against "this sample is exactly right".
//
//   target[b] = 1 if every valid token of sample b is predicted right (n_correct == n_valid; a sample with no
//               valid token counts as right, as upstream), else 0
//   loss[b]   = max(q, 0) - q * target + log(1 + exp(-|q|))          q = q_halt[b] = q[b, 0]; q (B, 2)
//   backward  dq[b, 0] = (sigmoid(q) - target) * dloss[b] ,  dq[b, 1] = 0 (q_continue is unused)        (=)
#pragma once
#include <math.h>
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void q_halt_loss_forward_ref(T* loss, const T* q, const int* n_valid, const int* n_correct, int B) {
    for (int b = 0; b < B; b++) {
        const double x = (double)q[(size_t)b * 2], target = n_correct[b] == n_valid[b] ? 1.0 : 0.0;
        loss[b] = (T)(fmax(x, 0.0) - x * target + log1p(exp(-fabs(x))));
    }
}

template <typename T>
void q_halt_loss_backward_ref(T* dq, const T* q, const int* n_valid, const int* n_correct, const T* dloss, int B) {
    for (int b = 0; b < B; b++) {
        const double x = (double)q[(size_t)b * 2], target = n_correct[b] == n_valid[b] ? 1.0 : 0.0;
        dq[(size_t)b * 2] = (T)((1.0 / (1.0 + exp(-x)) - target) * (double)dloss[b]);
        dq[(size_t)b * 2 + 1] = 0;
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void q_halt_loss_forward(floatS* loss, const floatX* q, const int* n_valid, const int* n_correct, int B, Stream) {
    q_halt_loss_forward_ref(loss, q, n_valid, n_correct, B);
}
inline void q_halt_loss_backward(floatX* dq, const floatX* q, const int* n_valid, const int* n_correct,
                                 const floatS* dloss, int B, Stream) {
    q_halt_loss_backward_ref(dq, q, n_valid, n_correct, dloss, B);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA

#ifdef __CUDACC__
// One thread per sample, in double as the reference.
__device__ inline double q_halt_target(const int* n_valid, const int* n_correct, int b) {
    return n_correct[b] == n_valid[b] ? 1.0 : 0.0;
}

template <typename TS, typename TX>
__global__ void q_halt_loss_forward_kernel(TS* loss, const TX* q, const int* n_valid, const int* n_correct, int B) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const double x = (double)to_float(q[(size_t)b * 2]), target = q_halt_target(n_valid, n_correct, b);
    loss[b] = (TS)(fmax(x, 0.0) - x * target + log1p(exp(-fabs(x))));
}

template <typename TX, typename TS>
__global__ void q_halt_loss_backward_kernel(TX* dq, const TX* q, const int* n_valid, const int* n_correct,
                                            const TS* dloss, int B) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const double x = (double)to_float(q[(size_t)b * 2]), target = q_halt_target(n_valid, n_correct, b);
    dq[(size_t)b * 2] = from_float<TX>((1.0 / (1.0 + exp(-x)) - target) * (double)dloss[b]);
    dq[(size_t)b * 2 + 1] = from_float<TX>(0.0);
}

inline void q_halt_loss_forward(floatS* loss, const floatX* q, const int* n_valid, const int* n_correct, int B,
                                Stream stream) {
    if (B == 0) return;
    const int block_size = 256;
    q_halt_loss_forward_kernel<<<CEIL_DIV(B, block_size), block_size, 0, stream>>>(loss, q, n_valid, n_correct, B);
    cudaCheckLaunch("q_halt_loss_forward_kernel");
}

inline void q_halt_loss_backward(floatX* dq, const floatX* q, const int* n_valid, const int* n_correct,
                                 const floatS* dloss, int B, Stream stream) {
    if (B == 0) return;
    const int block_size = 256;
    q_halt_loss_backward_kernel<<<CEIL_DIV(B, block_size), block_size, 0, stream>>>(dq, q, n_valid, n_correct, dloss, B);
    cudaCheckLaunch("q_halt_loss_backward_kernel");
}
#endif
