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

// ----------------------------------------------------------------------------------------------------------
// CPU reference: one (batch, head) pair per OpenMP iteration, so every output element has a single writer.

template <typename T>
void attention_forward_ref(T* out, T* lse, const T* q, const T* k, const T* v, const uint8_t* key_mask,
                           int B, int Tq, int Tk, int NH, int HD, int q_stride, int kv_stride) {
    const T scale = T(1) / sqrt((T)HD);
    const int C = NH * HD;
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        std::vector<T> s(Tk);
        for (int i = 0; i < Tq; i++) {
            const T* qi = q + (size_t)(b * Tq + i) * q_stride + h * HD;
            T* oi = out + (size_t)(b * Tq + i) * C + h * HD;
            T maxval = -INFINITY;
            for (int j = 0; j < Tk; j++) {
                if (key_mask && !key_mask[(size_t)b * Tk + j]) { s[j] = -INFINITY; continue; }
                const T* kj = k + (size_t)(b * Tk + j) * kv_stride + h * HD;
                T dot = 0;
                for (int d = 0; d < HD; d++) dot += qi[d] * kj[d];
                s[j] = dot * scale;
                if (s[j] > maxval) maxval = s[j];
            }
            for (int d = 0; d < HD; d++) oi[d] = 0;
            T* lse_i = lse + (size_t)bh * Tq + i;
            if (maxval == -INFINITY) { *lse_i = -INFINITY; continue; }   // no valid key
            T sum = 0;
            for (int j = 0; j < Tk; j++) {
                s[j] = (s[j] == -INFINITY) ? T(0) : exp(s[j] - maxval);
                sum += s[j];
            }
            for (int j = 0; j < Tk; j++) {
                if (s[j] == 0) continue;
                const T p = s[j] / sum;
                const T* vj = v + (size_t)(b * Tk + j) * kv_stride + h * HD;
                for (int d = 0; d < HD; d++) oi[d] += p * vj[d];
            }
            *lse_i = maxval + log(sum);
        }
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
        for (int j = 0; j < Tk; j++) {
            T* dkj = dk + (size_t)(b * Tk + j) * kv_stride + h * HD;
            T* dvj = dv + (size_t)(b * Tk + j) * kv_stride + h * HD;
            for (int d = 0; d < HD; d++) dkj[d] = dvj[d] = 0;
        }
        for (int i = 0; i < Tq; i++) {
            const T* qi = q + (size_t)(b * Tq + i) * q_stride + h * HD;
            const T* oi = out + (size_t)(b * Tq + i) * C + h * HD;
            const T* doi = dout + (size_t)(b * Tq + i) * C + h * HD;
            T* dqi = dq + (size_t)(b * Tq + i) * q_stride + h * HD;
            for (int d = 0; d < HD; d++) dqi[d] = 0;
            const T lse_i = lse[(size_t)bh * Tq + i];
            if (lse_i == -INFINITY) continue;
            T D = 0;
            for (int d = 0; d < HD; d++) D += doi[d] * oi[d];
            for (int j = 0; j < Tk; j++) {
                if (key_mask && !key_mask[(size_t)b * Tk + j]) continue;
                const T* kj = k + (size_t)(b * Tk + j) * kv_stride + h * HD;
                const T* vj = v + (size_t)(b * Tk + j) * kv_stride + h * HD;
                T dot = 0, dp = 0;
                for (int d = 0; d < HD; d++) { dot += qi[d] * kj[d]; dp += doi[d] * vj[d]; }
                const T p = exp(dot * scale - lse_i);
                const T ds = p * (dp - D) * scale;
                T* dkj = dk + (size_t)(b * Tk + j) * kv_stride + h * HD;
                T* dvj = dv + (size_t)(b * Tk + j) * kv_stride + h * HD;
                for (int d = 0; d < HD; d++) {
                    dqi[d] += ds * kj[d];
                    dkj[d] += ds * qi[d];
                    dvj[d] += p * doi[d];
                }
            }
        }
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
