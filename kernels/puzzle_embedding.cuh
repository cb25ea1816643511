// TRM's per-puzzle embedding: a table of puzzle_emb_ndim-vectors, one per puzzle identifier (a task under one
// augmentation), trained by sparse sign-SGD instead of Adam. Like every trained parameter group (common/
// parameters.h) it has fp32 values (`master`, or the table itself when floatX is fp32) and a floatX compute copy
// (`table`), which the forward pass gathers from and the update rewrites from the fp32 values.
//
//   gather     rows[b, :] = table[ids[b], :]                                     ids (B), rows (B, ndim)
//   update     for every distinct id i in the batch, g_i = sum of grads[b, :] over the rows b with ids[b] == i:
//              w[i, :] = w[i, :] * (1 - lr * weight_decay) - lr * sign(g_i)      (w: the fp32 values)
//              (rows with the same id are summed first, in batch order: deterministic)
#pragma once
#include <algorithm>
#include <vector>
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename TX>
void puzzle_emb_gather_ref(TX* rows, const TX* table, const int* ids, int B, int ndim) {
    for (int b = 0; b < B; b++)
        for (int d = 0; d < ndim; d++) rows[(size_t)b * ndim + d] = table[(size_t)ids[b] * ndim + d];
}

// master may be null: then the table holds the fp32 values itself.
template <typename TX, typename TS>
void sign_sgd_update_ref(TX* table, TS* master, const int* ids, const TX* grads, int B, int ndim, float lr,
                         float weight_decay) {
    std::vector<int> order(B);
    for (int b = 0; b < B; b++) order[b] = b;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return ids[a] < ids[b]; });
    std::vector<double> g(ndim);
    for (int start = 0; start < B;) {
        int end = start;
        std::fill(g.begin(), g.end(), 0.0);
        while (end < B && ids[order[end]] == ids[order[start]]) {
            for (int d = 0; d < ndim; d++) g[d] += (double)grads[(size_t)order[end] * ndim + d];
            end++;
        }
        const size_t row = (size_t)ids[order[start]] * ndim;
        for (int d = 0; d < ndim; d++) {
            const double sign = (g[d] > 0) - (g[d] < 0), w = master ? (double)master[row + d] : (double)table[row + d];
            const TS updated = (TS)(w * (1.0 - (double)lr * weight_decay) - (double)lr * sign);
            if (master) master[row + d] = updated;
            table[row + d] = (TX)updated;
        }
        start = end;
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void puzzle_emb_gather(floatX* rows, const floatX* table, const int* ids, int B, int ndim, Stream) {
    puzzle_emb_gather_ref(rows, table, ids, B, ndim);
}
inline void sign_sgd_update(floatX* table, floatS* master, const int* ids, const floatX* grads, int B, int ndim, float lr,
                            float weight_decay, Stream) {
    sign_sgd_update_ref(table, master, ids, grads, B, ndim, lr, weight_decay);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA

#ifdef __CUDACC__
// rows[b, d] = table[ids[b], d]; one thread per element.
template <typename TX>
__global__ void puzzle_emb_gather_kernel(TX* rows, const TX* table, const int* ids, int B, int ndim) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * ndim) return;
    rows[i] = table[(size_t)ids[i / ndim] * ndim + i % ndim];
}

// One block per batch entry b. The first entry of each id updates the row; a later one (some b' < b has the
// same id) does nothing, so every row is written by one block. The threads split the row's ndim columns and
// each sums the column's gradients of all entries with that id in batch order, in double: deterministic,
// with the same sums as the reference. O(B^2) id comparisons: B is a micro-batch (<= 768).
template <typename TX, typename TS>
__global__ void sign_sgd_update_kernel(TX* table, TS* master, const int* ids, const TX* grads, int B, int ndim, float lr,
                                       float weight_decay) {
    const int b = blockIdx.x, id = ids[b];
    int seen_before = 0;
    for (int e = threadIdx.x; e < b; e += blockDim.x) seen_before |= ids[e] == id;
    if (__syncthreads_or(seen_before)) return;
    const size_t row = (size_t)id * ndim;
    for (int d = threadIdx.x; d < ndim; d += blockDim.x) {
        double g = 0.0;
        for (int e = b; e < B; e++)
            if (ids[e] == id) g += (double)to_float(grads[(size_t)e * ndim + d]);
        const double sign = (g > 0) - (g < 0), w = master ? (double)master[row + d] : (double)to_float(table[row + d]);
        const float updated = (float)(w * (1.0 - (double)lr * weight_decay) - (double)lr * sign);
        if (master) master[row + d] = updated;
        table[row + d] = from_float<TX>(updated);
    }
}

inline void puzzle_emb_gather(floatX* rows, const floatX* table, const int* ids, int B, int ndim, Stream stream) {
    const size_t n = (size_t)B * ndim;
    if (n == 0) return;
    const int block_size = 256;
    puzzle_emb_gather_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(rows, table, ids, B, ndim);
    cudaCheckLaunch("puzzle_emb_gather_kernel");
}

inline void sign_sgd_update(floatX* table, floatS* master, const int* ids, const floatX* grads, int B, int ndim, float lr,
                            float weight_decay, Stream stream) {
    if (B == 0 || ndim == 0) return;
    const int block_size = 256;
    sign_sgd_update_kernel<<<B, block_size, 0, stream>>>(table, master, ids, grads, B, ndim, lr, weight_decay);
    cudaCheckLaunch("sign_sgd_update_kernel");
}
#endif
