// Rotary position embedding (RoPE), rotate-half form, applied in place.
//
//   x' = x * cos + rotate_half(x) * sin,   rotate_half([x1, x2]) = [-x2, x1]     (x1, x2: the halves of a head)
//   i.e. per pair (x1_i, x2_i) at angle a = pos * theta^(-2i/HD):  x1' = x1 cos a - x2 sin a, x2' = x2 cos a + x1 sin a
//   backward is the transposed rotation:  dx1 = dy1 cos a + dy2 sin a,  dx2 = dy2 cos a - dy1 sin a
//
// x is (B, T, row_stride); the first n_heads heads of HD values of every row are rotated (q and k are the first
// 2*NH heads of a fused qkv row). Row t uses table row t - skip; rows t < skip are left alone (the LPN
// encoder's CLS token). Tables cos/sin are (n_pos, HD) with columns i and i + HD/2 equal, built in fp32 like
// upstream (angles are fp32 products, so they carry ~1e-4 rad error near position 1800, as upstream does).
#pragma once
#include "../common/device.h"

// cos/sin tables for positions 0..n_pos-1 (host).
template <typename T>
void rope_tables(T* cos_table, T* sin_table, int n_pos, int HD, float theta) {
    for (int p = 0; p < n_pos; p++) {
        for (int i = 0; i < HD / 2; i++) {
            float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)HD);
            float angle = (float)p * inv_freq;
            cos_table[(size_t)p * HD + i] = cos_table[(size_t)p * HD + i + HD / 2] = (T)cosf(angle);
            sin_table[(size_t)p * HD + i] = sin_table[(size_t)p * HD + i + HD / 2] = (T)sinf(angle);
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// CPU reference: direction +1 rotates (forward), -1 rotates back (backward on the gradient).

template <typename T>
void rope_rotate_ref(T* x, const T* cos_table, const T* sin_table, int B, int T_len, int n_heads, int HD,
                     int row_stride, int skip, int direction) {
    const int half = HD / 2;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T_len; bt++) {
        const int t = bt % T_len;
        if (t < skip) continue;
        const T* cs = cos_table + (size_t)(t - skip) * HD;
        const T* sn = sin_table + (size_t)(t - skip) * HD;
        T* row = x + (size_t)bt * row_stride;
        for (int h = 0; h < n_heads; h++) {
            T* v = row + h * HD;
            for (int i = 0; i < half; i++) {
                T x1 = v[i], x2 = v[i + half], c = cs[i], s = direction * sn[i];
                v[i] = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void rope_forward(floatX* x, const floatS* cos_table, const floatS* sin_table, int B, int T, int n_heads,
                         int HD, int row_stride, int skip, Stream) {
    rope_rotate_ref(x, cos_table, sin_table, B, T, n_heads, HD, row_stride, skip, +1);
}
inline void rope_backward(floatX* dx, const floatS* cos_table, const floatS* sin_table, int B, int T, int n_heads,
                          int HD, int row_stride, int skip, Stream) {
    rope_rotate_ref(dx, cos_table, sin_table, B, T, n_heads, HD, row_stride, skip, -1);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// GPU: one thread per V consecutive pairs (x1_i, x2_i) of one head of one row, both directions in one kernel
// (direction = +1 or -1 flips the sign of sin). fp32 math, floatX storage. V = 16 bytes of floatX (8 bf16 or
// 4 floats, one 128-bit load per half) when the halves and rows allow it, else V = 1.

#ifdef __CUDACC__
template <int V>
__global__ void rope_kernel(floatX* x, const floatS* cos_table, const floatS* sin_table, int B, int T, int n_heads,
                            int HD, int row_stride, int skip, float direction) {
    const int half = HD / 2, groups = half / V;                     // groups of V pairs per head
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * T * n_heads * groups) return;
    const int i = (int)(idx % groups) * V;
    const int h = (int)(idx / groups % n_heads);
    const size_t bt = idx / groups / n_heads;                       // row b*T + t of x (B, T, row_stride)
    const int t = (int)(bt % T);
    if (t < skip) return;
    floatX* x1 = x + bt * row_stride + h * HD + i;
    floatX* x2 = x1 + half;
    const floatS* c = cos_table + (size_t)(t - skip) * HD + i;
    const floatS* s = sin_table + (size_t)(t - skip) * HD + i;
    float a[V], b[V];
    if constexpr (V == 1) {
        a[0] = to_float(x1[0]);
        b[0] = to_float(x2[0]);
    } else {
        const Packed128<floatX> pa = load128(x1), pb = load128(x2);
        for (int k = 0; k < V; k++) { a[k] = to_float(pa[k]); b[k] = to_float(pb[k]); }
    }
    for (int k = 0; k < V; k++) {
        const float ck = c[k], sk = direction * s[k], x1k = a[k], x2k = b[k];
        a[k] = x1k * ck - x2k * sk;
        b[k] = x2k * ck + x1k * sk;
    }
    if constexpr (V == 1) {
        x1[0] = (floatX)a[0];
        x2[0] = (floatX)b[0];
    } else {
        Packed128<floatX> pa, pb;
        for (int k = 0; k < V; k++) { pa[k] = (floatX)a[k]; pb[k] = (floatX)b[k]; }
        store128(x1, pa);
        store128(x2, pb);
    }
}

inline void rope_rotate(floatX* x, const floatS* cos_table, const floatS* sin_table, int B, int T, int n_heads, int HD,
                        int row_stride, int skip, int direction, Stream stream) {
    constexpr int V = Packed128<floatX>::size;
    const bool vec = (HD / 2) % V == 0 && row_stride % V == 0 && (uintptr_t)x % 16 == 0;
    const size_t n = (size_t)B * T * n_heads * (HD / 2) / (vec ? V : 1);
    if (n == 0) return;
    const int block = 256;
    const unsigned grid = (unsigned)CEIL_DIV(n, (size_t)block);
    const float dir = (float)direction;
    if (vec) rope_kernel<V><<<grid, block, 0, stream>>>(x, cos_table, sin_table, B, T, n_heads, HD, row_stride, skip, dir);
    else rope_kernel<1><<<grid, block, 0, stream>>>(x, cos_table, sin_table, B, T, n_heads, HD, row_stride, skip, dir);
    cudaCheckLaunch("rope_kernel");
}
inline void rope_forward(floatX* x, const floatS* cos_table, const floatS* sin_table, int B, int T, int n_heads,
                         int HD, int row_stride, int skip, Stream stream) {
    rope_rotate(x, cos_table, sin_table, B, T, n_heads, HD, row_stride, skip, +1, stream);
}
inline void rope_backward(floatX* dx, const floatS* cos_table, const floatS* sin_table, int B, int T, int n_heads,
                          int HD, int row_stride, int skip, Stream stream) {
    rope_rotate(dx, cos_table, sin_table, B, T, n_heads, HD, row_stride, skip, -1, stream);
}
#endif
