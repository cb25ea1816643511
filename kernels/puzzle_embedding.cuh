// TRM's per-puzzle embedding: a table of puzzle_emb_ndim-vectors, one per puzzle identifier (a task under one
// augmentation), trained by sparse sign-SGD instead of Adam. The table stays fp32; rows are read at use.
//
//   gather     rows[b, :] = table[ids[b], :]                                     ids (B), rows (B, ndim)
//   update     for every distinct id i in the batch, g_i = sum of grads[b, :] over the rows b with ids[b] == i:
//              table[i, :] = table[i, :] * (1 - lr * weight_decay) - lr * sign(g_i)
//              (rows with the same id are summed first, in batch order: deterministic)
#pragma once
#include <algorithm>
#include <vector>
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename TX, typename TS>
void puzzle_emb_gather_ref(TX* rows, const TS* table, const int* ids, int B, int ndim) {
    for (int b = 0; b < B; b++)
        for (int d = 0; d < ndim; d++) rows[(size_t)b * ndim + d] = (TX)table[(size_t)ids[b] * ndim + d];
}

template <typename TX, typename TS>
void sign_sgd_update_ref(TS* table, const int* ids, const TX* grads, int B, int ndim, float lr, float weight_decay) {
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
        TS* row = table + (size_t)ids[order[start]] * ndim;
        for (int d = 0; d < ndim; d++) {
            const double sign = (g[d] > 0) - (g[d] < 0);
            row[d] = (TS)((double)row[d] * (1.0 - (double)lr * weight_decay) - (double)lr * sign);
        }
        start = end;
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void puzzle_emb_gather(floatX* rows, const floatS* table, const int* ids, int B, int ndim, Stream) {
    puzzle_emb_gather_ref(rows, table, ids, B, ndim);
}
inline void sign_sgd_update(floatS* table, const int* ids, const floatX* grads, int B, int ndim, float lr,
                            float weight_decay, Stream) {
    sign_sgd_update_ref(table, ids, grads, B, ndim, lr, weight_decay);
}
#endif
