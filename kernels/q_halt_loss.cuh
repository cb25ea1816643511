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
