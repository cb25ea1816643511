// The halting head's loss: binary cross-entropy with logits of q_halt against "this sample is exactly right".
//
//   target[b] = 1 if every valid token of sample b is predicted right (n_correct == n_valid; a sample with no
//               valid token counts as right, as upstream), else 0
//   loss[b]   = max(q, 0) - q * target + log(1 + exp(-|q|))          q = q_halt[b] = q[b, 0]; q (B, 2)
//   backward  dq[b, 0] = (sigmoid(q) - target) * dloss[b] ,  dq[b, 1] = 0 (q_continue is unused)        (=)
// Rows of q and dq are ld >= 2 apart (the trainer pads the q head to a 16-byte output width); the backward
// writes 0 into dq[b, 1..ld-1].
#pragma once
#include <math.h>
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void q_halt_loss_forward_ref(T* loss, const T* q, const int* n_valid, const int* n_correct, int B, int ld) {
    for (int b = 0; b < B; b++) {
        const double x = (double)q[(size_t)b * ld], target = n_correct[b] == n_valid[b] ? 1.0 : 0.0;
        loss[b] = (T)(fmax(x, 0.0) - x * target + log1p(exp(-fabs(x))));
    }
}

template <typename T>
void q_halt_loss_backward_ref(T* dq, const T* q, const int* n_valid, const int* n_correct, const T* dloss, int B, int ld) {
    for (int b = 0; b < B; b++) {
        const double x = (double)q[(size_t)b * ld], target = n_correct[b] == n_valid[b] ? 1.0 : 0.0;
        dq[(size_t)b * ld] = (T)((1.0 / (1.0 + exp(-x)) - target) * (double)dloss[b]);
        for (int j = 1; j < ld; j++) dq[(size_t)b * ld + j] = 0;
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void q_halt_loss_forward(floatS* loss, const floatX* q, const int* n_valid, const int* n_correct, int B, int ld,
                                Stream) {
    q_halt_loss_forward_ref(loss, q, n_valid, n_correct, B, ld);
}
inline void q_halt_loss_backward(floatX* dq, const floatX* q, const int* n_valid, const int* n_correct,
                                 const floatS* dloss, int B, int ld, Stream) {
    q_halt_loss_backward_ref(dq, q, n_valid, n_correct, dloss, B, ld);
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
__global__ void q_halt_loss_forward_kernel(TS* loss, const TX* q, const int* n_valid, const int* n_correct, int B, int ld) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const double x = (double)to_float(q[(size_t)b * ld]), target = q_halt_target(n_valid, n_correct, b);
    loss[b] = (TS)(fmax(x, 0.0) - x * target + log1p(exp(-fabs(x))));
}

template <typename TX, typename TS>
__global__ void q_halt_loss_backward_kernel(TX* dq, const TX* q, const int* n_valid, const int* n_correct,
                                            const TS* dloss, int B, int ld) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const double x = (double)to_float(q[(size_t)b * ld]), target = q_halt_target(n_valid, n_correct, b);
    dq[(size_t)b * ld] = from_float<TX>((1.0 / (1.0 + exp(-x)) - target) * (double)dloss[b]);
    for (int j = 1; j < ld; j++) dq[(size_t)b * ld + j] = from_float<TX>(0.0);
}

inline void q_halt_loss_forward(floatS* loss, const floatX* q, const int* n_valid, const int* n_correct, int B, int ld,
                                Stream stream) {
    if (B == 0) return;
    const int block_size = 256;
    q_halt_loss_forward_kernel<<<CEIL_DIV(B, block_size), block_size, 0, stream>>>(loss, q, n_valid, n_correct, B, ld);
    cudaCheckLaunch("q_halt_loss_forward_kernel");
}

inline void q_halt_loss_backward(floatX* dq, const floatX* q, const int* n_valid, const int* n_correct,
                                 const floatS* dloss, int B, int ld, Stream stream) {
    if (B == 0) return;
    const int block_size = 256;
    q_halt_loss_backward_kernel<<<CEIL_DIV(B, block_size), block_size, 0, stream>>>(dq, q, n_valid, n_correct, dloss, B, ld);
    cudaCheckLaunch("q_halt_loss_backward_kernel");
}
#endif
