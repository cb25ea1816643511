// The language-model head and its cross-entropy, chunked over the rows so that the logits never exist whole:
//
//   logits (N, V) = h (N, C) W^T           W (V, C): lm_head.weight, or the token embedding when tied
//   loss[n], argmax[n]                     softmax cross-entropy of row n (kernels/softmax_xent.cuh)
//   with grad:  dlogits = dscale * r_n * (softmax - onehot)   (ignored rows: 0; r_n = row_scale[n], or 1 when null)
//               dh (N, C) = dlogits W  (=)        dW (V, C) += dlogits^T h   (dh, dW may be null)
//
// Each chunk of `chunk` rows goes through one (chunk, V) buffer `scratch`: the matmul writes its logits, the loss
// overwrites them with their gradient, and the two backward matmuls consume it before the next chunk. Memory is
// chunk * V instead of N * V: Qwen2's V = 151936 at N = 8 x 512 tokens would take 1.2 GB of bf16 logits for the
// whole batch, 156 MB for a chunk of 512 rows. Each row's loss and dh do not depend on the chunking (every row
// is computed alone); dW sums its chunks in order.
#pragma once
#include <algorithm>
#include "../common/device.h"
#include "matmul.cuh"
#include "softmax_xent.cuh"

inline void lm_head_loss(floatS* loss, int* argmax, floatX* dh, floatS* dW, const floatX* h, const floatX* W,
                         const int* labels, int N, int C, int V, float dscale, bool grad, floatX* scratch, int chunk,
                         Stream st, const floatS* row_scale = nullptr) {
    for (int r0 = 0; r0 < N; r0 += chunk) {
        const int R = std::min(chunk, N - r0);
        matmul_forward(scratch, h + (size_t)r0 * C, W, nullptr, R, C, V, st);
        softmax_xent(loss + r0, argmax ? argmax + r0 : nullptr, scratch, labels + r0, R, V, V, dscale, grad, st,
                     row_scale ? row_scale + r0 : nullptr);
        if (grad) matmul_backward(dh ? dh + (size_t)r0 * C : nullptr, dW, nullptr, scratch, h + (size_t)r0 * C, W, R, C, V, false, st);
    }
}
