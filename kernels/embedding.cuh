// Scaled token embedding, and the prefix positions that carry the puzzle embedding / encoder context.
//
//   embedding_forward   out[b, offset + s, :] = scale * table[ids[b, s], :]        ids (B, S) in [0, V); out rows (B, T, C)
//   embedding_backward  dtable[v, :] += scale * sum over (b, s) with ids[b, s] == v of dout[b, offset + s, :]   (+=)
//
//   prefix_forward      out[b, 0 : P*C] (the first P rows, flattened) = scale * [src[b, 0:K], 0, ..., 0],  K <= P*C
//                       TRM: src = the sample's puzzle-embedding row (K = puzzle_emb_ndim, zero-padded);
//                       ETRM: src = the encoder's context (K = P*C).
//   prefix_backward     dsrc[b, k] = scale * dout[b, k]                                                       (=)
//
// The decoder input is x = sqrt(D) * concat(prefix, E_tok[inputs]): one prefix_forward plus one
// embedding_forward at offset P. The demo encoders build [E_in(x); E_out(y)] with two embedding_forward calls.
#pragma once
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void embedding_forward_ref(T* out, const int* ids, const T* table, int B, int S, int C, int T_out, int offset, float scale) {
#pragma omp parallel for schedule(static)
    for (int bs = 0; bs < B * S; bs++) {
        const int b = bs / S, s = bs % S;
        const T* row = table + (size_t)ids[bs] * C;
        T* o = out + ((size_t)b * T_out + offset + s) * C;
        for (int c = 0; c < C; c++) o[c] = (T)scale * row[c];
    }
}

template <typename T>
void embedding_backward_ref(T* dtable, const T* dout, const int* ids, int B, int S, int C, int T_out, int offset, float scale) {
    // Parallel over channels; within a channel the (b, s) order is fixed: deterministic.
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        for (int bs = 0; bs < B * S; bs++) {
            const int b = bs / S, s = bs % S;
            dtable[(size_t)ids[bs] * C + c] += (T)scale * dout[((size_t)b * T_out + offset + s) * C + c];
        }
    }
}

template <typename T>
void prefix_forward_ref(T* out, const T* src, int B, int K, int prefix_size, size_t out_batch_stride, float scale) {
    for (int b = 0; b < B; b++) {
        T* o = out + b * out_batch_stride;
        for (int k = 0; k < prefix_size; k++) o[k] = k < K ? (T)scale * src[(size_t)b * K + k] : T(0);
    }
}

template <typename T>
void prefix_backward_ref(T* dsrc, const T* dout, int B, int K, size_t out_batch_stride, float scale) {
    for (int b = 0; b < B; b++)
        for (int k = 0; k < K; k++) dsrc[(size_t)b * K + k] = (T)scale * dout[b * out_batch_stride + k];
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void embedding_forward(floatX* out, const int* ids, const floatX* table, int B, int S, int C, int T_out,
                              int offset, float scale, Stream) {
    embedding_forward_ref(out, ids, table, B, S, C, T_out, offset, scale);
}
inline void embedding_backward(floatS* dtable, const floatX* dout, const int* ids, int B, int S, int C, int T_out,
                               int offset, float scale, Stream) {
    embedding_backward_ref(dtable, dout, ids, B, S, C, T_out, offset, scale);
}
inline void prefix_forward(floatX* out, const floatX* src, int B, int K, int prefix_size, size_t out_batch_stride,
                           float scale, Stream) {
    prefix_forward_ref(out, src, B, K, prefix_size, out_batch_stride, scale);
}
inline void prefix_backward(floatX* dsrc, const floatX* dout, int B, int K, size_t out_batch_stride, float scale, Stream) {
    prefix_backward_ref(dsrc, dout, B, K, out_batch_stride, scale);
}
#endif
