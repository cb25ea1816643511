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
