// Stablemax cross-entropy, TRM's replacement for softmax cross-entropy on the output grid tokens.
//
//   s(x) = x + 1 (x >= 0) ,  1 / (1 - x) (x < 0)        (positive, monotone, grows linearly instead of exp)
//   logp_y = log s(x_y) - log sum_j s(x_j)               computed in double, as upstream does
//   loss[b] = sum over the valid tokens t of sample b (label != -100) of -logp_y(t) / max(1, count_b)
//   backward  d(-logp_y)/dx_i = s'(x_i) / sum_j s(x_j) - [i == y] * s'(x_y) / s(x_y),
//             s'(x) = 1 (x >= 0), 1 / (1 - x)^2 (x < 0); each token scaled by dloss[b] / max(1, count_b)      (=)
//
// logits (B, T, V) cover all T = P + S decoder positions (the lm head runs on every row); the S grid tokens
// start at row P and the P prefix rows get zero gradient. Rows are ld >= V apart (the trainer pads the lm head
// to a 16-byte output width); the backward writes 0 into the padding columns V..ld-1. labels (B, S). Besides the loss, the forward pass
// returns per sample the number of valid tokens, how many the argmax predicts right, and (optionally) the
// argmax predictions themselves (B, S) (first maximum on ties, like torch.argmax).
#pragma once
#include <math.h>
#include "../common/device.h"

#define IGNORE_LABEL_ID (-100)

HOST_DEVICE inline double stablemax_s(double x) { return x >= 0 ? x + 1.0 : 1.0 / (1.0 - x); }
HOST_DEVICE inline double stablemax_ds(double x) { return x >= 0 ? 1.0 : 1.0 / ((1.0 - x) * (1.0 - x)); }

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void stablemax_loss_forward_ref(T* loss, int* n_valid, int* n_correct, int* preds, const T* logits, const int* labels,
                                int B, int T_len, int P, int V, int ld) {
    const int S = T_len - P;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        double sum = 0;
        int count = 0, correct = 0;
        for (int s = 0; s < S; s++) {
            const T* x = logits + ((size_t)b * T_len + P + s) * ld;
            int argmax = 0;
            for (int v = 1; v < V; v++) if (x[v] > x[argmax]) argmax = v;
            if (preds) preds[(size_t)b * S + s] = argmax;
            const int y = labels[(size_t)b * S + s];
            if (y == IGNORE_LABEL_ID) continue;
            double total = 0;
            for (int v = 0; v < V; v++) total += stablemax_s((double)x[v]);
            sum += -(log(stablemax_s((double)x[y])) - log(total));
            count++;
            correct += argmax == y;
        }
        loss[b] = (T)(sum / (count > 1 ? count : 1));
        n_valid[b] = count;
        n_correct[b] = correct;
    }
}

template <typename T>
void stablemax_loss_backward_ref(T* dlogits, const T* logits, const int* labels, const int* n_valid, const T* dloss,
                                 int B, int T_len, int P, int V, int ld) {
    const int S = T_len - P;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const double scale = (double)dloss[b] / (n_valid[b] > 1 ? n_valid[b] : 1);
        for (int t = 0; t < T_len; t++) {
            const T* x = logits + ((size_t)b * T_len + t) * ld;
            T* dx = dlogits + ((size_t)b * T_len + t) * ld;
            for (int v = V; v < ld; v++) dx[v] = 0;
            const int y = t < P ? IGNORE_LABEL_ID : labels[(size_t)b * S + t - P];
            if (y == IGNORE_LABEL_ID) { for (int v = 0; v < V; v++) dx[v] = 0; continue; }
            double total = 0;
            for (int v = 0; v < V; v++) total += stablemax_s((double)x[v]);
            for (int v = 0; v < V; v++) {
                double g = stablemax_ds((double)x[v]) / total;
                if (v == y) g -= stablemax_ds((double)x[v]) / stablemax_s((double)x[v]);
                dx[v] = (T)(g * scale);
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void stablemax_loss_forward(floatS* loss, int* n_valid, int* n_correct, int* preds, const floatX* logits,
                                   const int* labels, int B, int T, int P, int V, int ld, Stream) {
    stablemax_loss_forward_ref(loss, n_valid, n_correct, preds, logits, labels, B, T, P, V, ld);
}
inline void stablemax_loss_backward(floatX* dlogits, const floatX* logits, const int* labels, const int* n_valid,
                                    const floatS* dloss, int B, int T, int P, int V, int ld, Stream) {
    stablemax_loss_backward_ref(dlogits, logits, labels, n_valid, dloss, B, T, P, V, ld);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA. Forward: a block per sample; each thread takes the sample's tokens threadIdx.x, + blockDim.x, ... and
// sums its -logp_y in a fixed order, then block_reduce_sum adds the threads' sums in a fixed order: the loss is
// deterministic (no atomics) for a given block size. Backward: a thread per (b, t) row of ld logits.
// s(x) and the sums are in double like the reference (V = 12 logits per row: the math is cheap, the rows tiny).

#ifdef __CUDACC__
__global__ void stablemax_loss_forward_kernel(floatS* loss, int* n_valid, int* n_correct, int* preds, const floatX* logits,
                                              const int* labels, int T, int P, int V, int ld) {
    __shared__ double scratch[WARP_SIZE];
    const int b = blockIdx.x, S = T - P;
    double sum = 0, count = 0, correct = 0;        // counts in double: one block_reduce_sum for all three
    for (int s = threadIdx.x; s < S; s += blockDim.x) {
        const floatX* x = logits + ((size_t)b * T + P + s) * ld;
        int argmax = 0;
        float best = to_float(x[0]);
        double total = stablemax_s(best);
        for (int v = 1; v < V; v++) {
            const float xv = to_float(x[v]);
            if (xv > best) { best = xv; argmax = v; }          // strict: the first maximum wins ties
            total += stablemax_s(xv);
        }
        if (preds) preds[(size_t)b * S + s] = argmax;
        const int y = labels[(size_t)b * S + s];
        if (y == IGNORE_LABEL_ID) continue;
        sum += log(total) - log(stablemax_s(to_float(x[y])));
        count += 1;
        correct += argmax == y;
    }
    sum = block_reduce_sum(sum, scratch);
    count = block_reduce_sum(count, scratch);
    correct = block_reduce_sum(correct, scratch);
    if (threadIdx.x == 0) {
        loss[b] = (floatS)(sum / (count > 1 ? count : 1));
        n_valid[b] = (int)count;
        n_correct[b] = (int)correct;
    }
}

__global__ void stablemax_loss_backward_kernel(floatX* dlogits, const floatX* logits, const int* labels, const int* n_valid,
                                               const floatS* dloss, int B, int T, int P, int V, int ld) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;   // (b, t)
    if (row >= B * T) return;
    const int b = row / T, t = row % T;
    const floatX* x = logits + (size_t)row * ld;
    floatX* dx = dlogits + (size_t)row * ld;
    for (int v = V; v < ld; v++) dx[v] = from_float<floatX>(0.0);
    const int y = t < P ? IGNORE_LABEL_ID : labels[(size_t)b * (T - P) + t - P];
    if (y == IGNORE_LABEL_ID) {
        for (int v = 0; v < V; v++) dx[v] = from_float<floatX>(0.0);
        return;
    }
    const double scale = (double)dloss[b] / (n_valid[b] > 1 ? n_valid[b] : 1);
    double total = 0;
    for (int v = 0; v < V; v++) total += stablemax_s(to_float(x[v]));
    for (int v = 0; v < V; v++) {
        const double xv = to_float(x[v]);
        double g = stablemax_ds(xv) / total;
        if (v == y) g -= stablemax_ds(xv) / stablemax_s(xv);
        dx[v] = from_float<floatX>(g * scale);
    }
}

// The launchers with the block size as a parameter; the lab sweeps it (a multiple of 32 for the forward).
inline void stablemax_loss_forward_launch(floatS* loss, int* n_valid, int* n_correct, int* preds, const floatX* logits,
                                          const int* labels, int B, int T, int P, int V, int ld, int block_size, Stream stream) {
    if (B == 0) return;
    stablemax_loss_forward_kernel<<<B, block_size, 0, stream>>>(loss, n_valid, n_correct, preds, logits, labels, T, P, V, ld);
    cudaCheckLaunch("stablemax_loss_forward_kernel");
}
inline void stablemax_loss_backward_launch(floatX* dlogits, const floatX* logits, const int* labels, const int* n_valid,
                                           const floatS* dloss, int B, int T, int P, int V, int ld, int block_size, Stream stream) {
    if (B * T == 0) return;
    stablemax_loss_backward_kernel<<<CEIL_DIV(B * T, block_size), block_size, 0, stream>>>(dlogits, logits, labels, n_valid,
                                                                                           dloss, B, T, P, V, ld);
    cudaCheckLaunch("stablemax_loss_backward_kernel");
}

inline void stablemax_loss_forward(floatS* loss, int* n_valid, int* n_correct, int* preds, const floatX* logits,
                                   const int* labels, int B, int T, int P, int V, int ld, Stream stream) {
    stablemax_loss_forward_launch(loss, n_valid, n_correct, preds, logits, labels, B, T, P, V, ld, 512, stream);
}
inline void stablemax_loss_backward(floatX* dlogits, const floatX* logits, const int* labels, const int* n_valid,
                                    const floatS* dloss, int B, int T, int P, int V, int ld, Stream stream) {
    stablemax_loss_backward_launch(dlogits, logits, labels, n_valid, dloss, B, T, P, V, ld, 256, stream);
}
#endif
