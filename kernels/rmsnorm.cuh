// Scale-free RMSNorm (no learned weight, as in TRM), optionally fused with the residual add before it.
//
//   forward   s = inp (+ residual)                                   inp, residual, out: (N, C)
//             rstd[n] = 1 / sqrt(mean_c s[n, c]^2 + eps)             fp32 statistics, (N)
//             out = s * rstd
//   backward  ds = rstd * (dout - out * mean_c(dout * out))
//             (out = s * rstd, so d out / d s = rstd * (I - out out^T / C): only out and rstd are needed.)
//
// ds is overwritten (=), or added to (+=) when `accumulate` is set: in a pre-norm block the normalised tensor
// also travels on the residual path, whose gradient is already in ds. A post-norm block feeds ds to both
// summands of the residual add (the caller uses the same gradient for inp and residual).
#pragma once
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void rmsnorm_forward_ref(T* out, T* rstd, const T* inp, const T* residual, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* x = inp + (size_t)n * C;
        const T* r = residual ? residual + (size_t)n * C : nullptr;
        T* y = out + (size_t)n * C;
        T sum_sq = 0;
        for (int c = 0; c < C; c++) {
            T s = r ? x[c] + r[c] : x[c];
            y[c] = s;                       // out may alias inp: each element is read before it is written
            sum_sq += s * s;
        }
        T rs = T(1) / sqrt(sum_sq / C + (T)eps);
        for (int c = 0; c < C; c++) y[c] *= rs;
        rstd[n] = rs;
    }
}

template <typename T>
void rmsnorm_backward_ref(T* dinp, const T* dout, const T* out, const T* rstd, int N, int C, bool accumulate) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* dy = dout + (size_t)n * C;
        const T* y = out + (size_t)n * C;
        T* dx = dinp + (size_t)n * C;
        T dot = 0;
        for (int c = 0; c < C; c++) dot += dy[c] * y[c];
        const T mean_dot = dot / C, rs = rstd[n];
        for (int c = 0; c < C; c++) {
            T g = rs * (dy[c] - y[c] * mean_dot);
            dx[c] = accumulate ? dx[c] + g : g;    // dinp may alias dout
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void rmsnorm_forward(floatX* out, floatS* rstd, const floatX* inp, const floatX* residual, int N, int C,
                            float eps, Stream) {
    rmsnorm_forward_ref(out, rstd, inp, residual, N, C, eps);
}
inline void rmsnorm_backward(floatX* dinp, const floatX* dout, const floatX* out, const floatS* rstd, int N, int C,
                             bool accumulate, Stream) {
    rmsnorm_backward_ref(dinp, dout, out, rstd, N, C, accumulate);
}
#endif
