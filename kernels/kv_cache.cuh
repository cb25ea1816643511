// The key/value cache of autoregressive decoding: the keys and values of the positions already processed, so that
// each new token runs the model on its own row and attends over the cache instead of recomputing the prefix.
//
//   kv_cache_write   k_cache[b, pos + t, :] = qkv[b, t, QD : QD + KD]            (the keys, after RoPE)
//                    v_cache[b, pos + t, :] = qkv[b, t, QD + KD : QD + 2 KD]     (the values)
//
// qkv: (B, T, row) the fused self-attention projection [q | k | v] (common/transformer.h), T new positions of every
// sample starting at position pos; caches (B, Tmax, KD) with KD = NKV * HD. A copy: there is no backward (decoding
// computes no gradient).
#pragma once
#include "../common/device.h"

template <typename T>
void kv_cache_write_ref(T* k_cache, T* v_cache, const T* qkv, int B, int T_len, int pos, int Tmax, int QD, int KD, int row) {
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T_len; bt++) {
        const int b = bt / T_len, t = bt % T_len;
        const T* src = qkv + (size_t)bt * row + QD;
        const size_t dst = ((size_t)b * Tmax + pos + t) * KD;
        for (int c = 0; c < KD; c++) {
            k_cache[dst + c] = src[c];
            v_cache[dst + c] = src[KD + c];
        }
    }
}

#ifndef __CUDACC__
inline void kv_cache_write(floatX* k_cache, floatX* v_cache, const floatX* qkv, int B, int T, int pos, int Tmax, int QD,
                           int KD, int row, Stream) {
    kv_cache_write_ref(k_cache, v_cache, qkv, B, T, pos, Tmax, QD, KD, row);
}
#else
// One thread per element of the (B*T, KD) keys (and the value beside it).
__global__ void kv_cache_write_kernel(floatX* k_cache, floatX* v_cache, const floatX* qkv, int T, int pos, int Tmax,
                                      int QD, int KD, int row, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const size_t bt = i / KD;
    const int c = (int)(i % KD), b = (int)(bt / T), t = (int)(bt % T);
    const floatX* src = qkv + bt * row + QD;
    const size_t dst = ((size_t)b * Tmax + pos + t) * KD + c;
    k_cache[dst] = src[c];
    v_cache[dst] = src[KD + c];
}

inline void kv_cache_write(floatX* k_cache, floatX* v_cache, const floatX* qkv, int B, int T, int pos, int Tmax, int QD,
                           int KD, int row, Stream st) {
    const size_t n = (size_t)B * T * KD;
    if (n == 0) return;
    kv_cache_write_kernel<<<(unsigned)CEIL_DIV(n, (size_t)256), 256, 0, st>>>(k_cache, v_cache, qkv, T, pos, Tmax, QD, KD, row, n);
    cudaCheckLaunch("kv_cache_write_kernel");
}
#endif
