// Non-causal multi-head attention with an optional key mask (flash-attention semantics: the T x T matrix of
// probabilities is never stored; the backward pass recomputes it from the saved log-sum-exp).
//
//   for batch b, head h, query i, over the keys j with key_mask[b, j] != 0 (every key when key_mask is null):
//     s_ij  = q_i . k_j / sqrt(HD)
//     lse_i = log sum_j exp(s_ij) ,  p_ij = exp(s_ij - lse_i) ,  out_i = sum_j p_ij v_j
//   A query with no valid key gets out_i = 0 and lse_i = -inf; it passes no gradient (upstream: NaN there).
//
//   backward  D_i = dout_i . out_i ,  dp_ij = dout_i . v_j ,  ds_ij = p_ij (dp_ij - D_i)
//             dq_i = sum_j ds_ij k_j / sqrt(HD) ,  dk_j = sum_i ds_ij q_i / sqrt(HD) ,  dv_j = sum_i p_ij dout_i
//
// Layout: query i of head h of batch b is q + (b*Tq + i)*q_stride + h*HD; keys/values likewise with Tk and
// kv_stride. Self-attention reads straight from fused qkv rows (q_stride = kv_stride = 3*NH*HD, k = q + NH*HD,
// v = q + 2*NH*HD); cross-attention (the demo-set encoder: 16 queries over <= 10 demo encodings) passes
// separate tensors. out, dout: (B, Tq, NH*HD). lse: (B, NH, Tq), fp32. dq, dk, dv have the layouts of q, k, v
// and are overwritten (=); in self-attention they are the three column blocks of one dqkv tensor.
#pragma once
#include <math.h>
#include <vector>
#include "../common/device.h"
#include "matmul.cuh"

// ----------------------------------------------------------------------------------------------------------
// CPU reference: per (batch, head) pair, the textbook matrix form with small GEMMs (gemm_ref):
//   forward   S = Q K^T ; P = softmax(S / sqrt(HD)) ; O = P V
//   backward  dP = dO V^T ; dS = P o (dP - D) / sqrt(HD) ; dQ = dS K ; dK = dS^T Q ; dV = P^T dO
// One (batch, head) pair per OpenMP iteration (its Tq x Tk scores live in a buffer of that iteration), so
// every output element has a single writer.

// Copies head h's (T, HD) slice between rows of width `stride` and a contiguous (T, HD) matrix.
template <typename T>
void head_gather(T* dst, const T* rows, int T_len, int HD, int stride) {
    for (int t = 0; t < T_len; t++)
        for (int d = 0; d < HD; d++) dst[(size_t)t * HD + d] = rows[(size_t)t * stride + d];
}
template <typename T>
void head_scatter(T* rows, const T* src, int T_len, int HD, int stride) {
    for (int t = 0; t < T_len; t++)
        for (int d = 0; d < HD; d++) rows[(size_t)t * stride + d] = src[(size_t)t * HD + d];
}
template <typename T>
void transpose_ref(T* dst, const T* src, int rows, int cols) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
}

// Q (Tq, HD), K^T (HD, Tk) and V (Tk, HD) of one (batch, head) pair.
template <typename T>
struct HeadMatrices {
    std::vector<T> q, k, kt, v;
    HeadMatrices(const T* q_rows, const T* k_rows, const T* v_rows, int Tq, int Tk, int HD, int q_stride, int kv_stride)
        : q((size_t)Tq * HD), k((size_t)Tk * HD), kt((size_t)HD * Tk), v((size_t)Tk * HD) {
        head_gather(q.data(), q_rows, Tq, HD, q_stride);
        head_gather(k.data(), k_rows, Tk, HD, kv_stride);
        head_gather(v.data(), v_rows, Tk, HD, kv_stride);
        transpose_ref(kt.data(), k.data(), Tk, HD);
    }
};

template <typename T>
void attention_forward_ref(T* out, T* lse, const T* q, const T* k, const T* v, const uint8_t* key_mask,
                           int B, int Tq, int Tk, int NH, int HD, int q_stride, int kv_stride) {
    const T scale = T(1) / sqrt((T)HD);
    const int C = NH * HD;
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const uint8_t* mask = key_mask ? key_mask + (size_t)b * Tk : nullptr;
        HeadMatrices<T> m(q + (size_t)b * Tq * q_stride + h * HD, k + (size_t)b * Tk * kv_stride + h * HD,
                          v + (size_t)b * Tk * kv_stride + h * HD, Tq, Tk, HD, q_stride, kv_stride);
        std::vector<T> p((size_t)Tq * Tk), o((size_t)Tq * HD);
        gemm_ref<T, false>(p.data(), m.q.data(), m.kt.data(), Tq, Tk, HD, false);        // S = Q K^T
        for (int i = 0; i < Tq; i++) {                                                   // P = softmax(S * scale)
            T* row = &p[(size_t)i * Tk];
            T maxval = -INFINITY;
            for (int j = 0; j < Tk; j++) {
                row[j] = (mask && !mask[j]) ? -INFINITY : row[j] * scale;
                maxval = row[j] > maxval ? row[j] : maxval;
            }
            T sum = 0;
            for (int j = 0; j < Tk; j++) {
                row[j] = row[j] == -INFINITY ? T(0) : exp(row[j] - maxval);
                sum += row[j];
            }
            for (int j = 0; j < Tk; j++) row[j] = sum > 0 ? row[j] / sum : T(0);      // no valid key: P = 0
            lse[(size_t)bh * Tq + i] = sum > 0 ? maxval + log(sum) : -INFINITY;
        }
        gemm_ref<T, false>(o.data(), p.data(), m.v.data(), Tq, HD, Tk, false);          // O = P V
        head_scatter(out + (size_t)b * Tq * C + h * HD, o.data(), Tq, HD, C);
    }
}

template <typename T>
void attention_backward_ref(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q, const T* k,
                            const T* v, const uint8_t* key_mask, int B, int Tq, int Tk, int NH, int HD,
                            int q_stride, int kv_stride) {
    const T scale = T(1) / sqrt((T)HD);
    const int C = NH * HD;
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const uint8_t* mask = key_mask ? key_mask + (size_t)b * Tk : nullptr;
        HeadMatrices<T> m(q + (size_t)b * Tq * q_stride + h * HD, k + (size_t)b * Tk * kv_stride + h * HD,
                          v + (size_t)b * Tk * kv_stride + h * HD, Tq, Tk, HD, q_stride, kv_stride);
        std::vector<T> p((size_t)Tq * Tk), dp((size_t)Tq * Tk), vt((size_t)HD * Tk), d_o((size_t)Tq * HD),
            o((size_t)Tq * HD), g((size_t)std::max(Tq, Tk) * HD);
        head_gather(d_o.data(), dout + (size_t)b * Tq * C + h * HD, Tq, HD, C);
        head_gather(o.data(), out + (size_t)b * Tq * C + h * HD, Tq, HD, C);
        transpose_ref(vt.data(), m.v.data(), Tk, HD);
        gemm_ref<T, false>(p.data(), m.q.data(), m.kt.data(), Tq, Tk, HD, false);        // S, then P from lse
        gemm_ref<T, false>(dp.data(), d_o.data(), vt.data(), Tq, Tk, HD, false);        // dP = dO V^T
        for (int i = 0; i < Tq; i++) {
            const T lse_i = lse[(size_t)bh * Tq + i];
            T D = 0;
            for (int d = 0; d < HD; d++) D += d_o[(size_t)i * HD + d] * o[(size_t)i * HD + d];
            for (int j = 0; j < Tk; j++) {
                T& pij = p[(size_t)i * Tk + j];
                pij = (lse_i == -INFINITY || (mask && !mask[j])) ? T(0) : exp(pij * scale - lse_i);
                dp[(size_t)i * Tk + j] = pij * (dp[(size_t)i * Tk + j] - D) * scale;     // dS (scaled)
            }
        }
        gemm_ref<T, false>(g.data(), dp.data(), m.k.data(), Tq, HD, Tk, false);          // dQ = dS K
        head_scatter(dq + (size_t)b * Tq * q_stride + h * HD, g.data(), Tq, HD, q_stride);
        gemm_ref<T, true>(g.data(), dp.data(), m.q.data(), Tk, HD, Tq, false);           // dK = dS^T Q
        head_scatter(dk + (size_t)b * Tk * kv_stride + h * HD, g.data(), Tk, HD, kv_stride);
        gemm_ref<T, true>(g.data(), p.data(), d_o.data(), Tk, HD, Tq, false);            // dV = P^T dO
        head_scatter(dv + (size_t)b * Tk * kv_stride + h * HD, g.data(), Tk, HD, kv_stride);
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void attention_forward(floatX* out, floatS* lse, const floatX* q, const floatX* k, const floatX* v,
                              const uint8_t* key_mask, int B, int Tq, int Tk, int NH, int HD, int q_stride,
                              int kv_stride, Stream) {
    attention_forward_ref(out, lse, q, k, v, key_mask, B, Tq, Tk, NH, HD, q_stride, kv_stride);
}
inline void attention_backward(floatX* dq, floatX* dk, floatX* dv, const floatX* dout, const floatX* out,
                               const floatS* lse, const floatX* q, const floatX* k, const floatX* v,
                               const uint8_t* key_mask, int B, int Tq, int Tk, int NH, int HD, int q_stride,
                               int kv_stride, Stream) {
    attention_backward_ref(dq, dk, dv, dout, out, lse, q, k, v, key_mask, B, Tq, Tk, NH, HD, q_stride, kv_stride);
}
#endif
