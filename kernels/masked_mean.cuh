// Masked mean over the middle axis.
//
//   out[b, :] = sum_n m[b, n] * inp[b, n, :] / max(1, sum_n m[b, n])      inp (B, N, C), mask (B, N) or null (= all 1)
//   backward  dinp[b, n, :] = m[b, n] * dout[b, :] / max(1, sum_n m[b, n])                                       (=)
//
// Uses: the standard grid encoder pools each demo over its non-PAD tokens; LPN encoders average the demo
// encodings of a sample; hybrid_variational averages the 16 context tokens before its posterior.
#pragma once
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void masked_mean_forward_ref(T* out, const T* inp, const uint8_t* mask, int B, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        T* o = out + (size_t)b * C;
        for (int c = 0; c < C; c++) o[c] = 0;
        int count = 0;
        for (int n = 0; n < N; n++) {
            if (mask && !mask[(size_t)b * N + n]) continue;
            count++;
            const T* x = inp + ((size_t)b * N + n) * C;
            for (int c = 0; c < C; c++) o[c] += x[c];
        }
        const T inv = T(1) / (T)(count > 1 ? count : 1);
        for (int c = 0; c < C; c++) o[c] *= inv;
    }
}

template <typename T>
void masked_mean_backward_ref(T* dinp, const T* dout, const uint8_t* mask, int B, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        int count = 0;
        for (int n = 0; n < N; n++) count += mask ? (mask[(size_t)b * N + n] != 0) : 1;
        const T inv = T(1) / (T)(count > 1 ? count : 1);
        for (int n = 0; n < N; n++) {
            const bool on = !mask || mask[(size_t)b * N + n];
            T* dx = dinp + ((size_t)b * N + n) * C;
            for (int c = 0; c < C; c++) dx[c] = on ? dout[(size_t)b * C + c] * inv : T(0);
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void masked_mean_forward(floatX* out, const floatX* inp, const uint8_t* mask, int B, int N, int C, Stream) {
    masked_mean_forward_ref(out, inp, mask, B, N, C);
}
inline void masked_mean_backward(floatX* dinp, const floatX* dout, const uint8_t* mask, int B, int N, int C, Stream) {
    masked_mean_backward_ref(dinp, dout, mask, B, N, C);
}
#endif
