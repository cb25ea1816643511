// LayerNorm over the last axis, as torch nn.LayerNorm(C) (eps 1e-5, biased variance, affine weight and bias).
//
//   forward   mean[n] = (1/C) sum_c x[n, c]                                  x, out: (N, C); weight, bias: (C)
//             var[n]  = (1/C) sum_c (x[n, c] - mean[n])^2                     (biased)
//             rstd[n] = 1 / sqrt(var[n] + eps)                                mean, rstd: (N) floatS (written)
//             xhat    = (x - mean) * rstd,   out = xhat * weight + bias
//   backward  g = weight * dout (per element),  a[n] = (1/C) sum_c g,  b[n] = (1/C) sum_c g * xhat
//             dinp    += rstd * (g - a - xhat * b)                            (+=: dinp is a residual stream)
//             dweight += sum_n dout * xhat,   dbias += sum_n dout             (+=, floatS, sums over the N rows)
//
// The statistics are fp32 on the GPU (double accumulators in the CPU reference). The backward recomputes xhat
// from inp and the forward's mean and rstd. mean / rstd may be null in the forward (not stored: an inference-
// only call); dinp, dweight, dbias may each be null in the backward (not computed). out may alias inp.
// Deterministic: every sum runs in a fixed order (warp butterflies for the rows; for the columns, fixed chunks of
// rows summed in order, then the chunks summed in order), no atomics.
#pragma once
#include <math.h>
#include "../common/device.h"
#include "norm_param_grad.cuh"

#define LAYERNORM_EPS 1e-5

// ----------------------------------------------------------------------------------------------------------
// CPU reference (T: activations and weights; S: statistics and parameter gradients)

template <typename T, typename S>
void layernorm_forward_ref(T* out, S* mean, S* rstd, const T* inp, const T* weight, const T* bias, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* x = inp + (size_t)n * C;
        T* y = out + (size_t)n * C;
        double sum = 0;
        for (int c = 0; c < C; c++) sum += (double)x[c];
        const double m = C > 0 ? sum / C : 0.0;
        double sq = 0;
        for (int c = 0; c < C; c++) {
            const double d = (double)x[c] - m;
            sq += d * d;
        }
        const double rs = 1.0 / sqrt((C > 0 ? sq / C : 0.0) + LAYERNORM_EPS);
        for (int c = 0; c < C; c++) y[c] = (T)(((double)x[c] - m) * rs * (double)weight[c] + (double)bias[c]);
        if (mean) mean[n] = (S)m;
        if (rstd) rstd[n] = (S)rs;
    }
}

template <typename T, typename S>
void layernorm_backward_ref(T* dinp, S* dweight, S* dbias, const T* dout, const T* inp, const T* weight, const S* mean,
                            const S* rstd, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < (dinp ? N : 0); n++) {
        const T* dy = dout + (size_t)n * C;
        const T* x = inp + (size_t)n * C;
        T* dx = dinp + (size_t)n * C;
        const double m = (double)mean[n], rs = (double)rstd[n];
        double a = 0, b = 0;
        for (int c = 0; c < C; c++) {
            const double g = (double)weight[c] * (double)dy[c];
            a += g;
            b += g * ((double)x[c] - m) * rs;
        }
        a /= C;
        b /= C;
        for (int c = 0; c < C; c++) {
            const double g = (double)weight[c] * (double)dy[c], xhat = ((double)x[c] - m) * rs;
            dx[c] = (T)((double)dx[c] + rs * (g - a - xhat * b));
        }
    }
    if (!dweight && !dbias) return;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        double dw = 0, db = 0;
        for (int n = 0; n < N; n++) {
            const double dy = (double)dout[(size_t)n * C + c];
            dw += dy * ((double)inp[(size_t)n * C + c] - (double)mean[n]) * (double)rstd[n];
            db += dy;
        }
        if (dweight) dweight[c] = (S)((double)dweight[c] + dw);
        if (dbias) dbias[c] = (S)((double)dbias[c] + db);
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void layernorm_forward(floatX* out, floatS* mean, floatS* rstd, const floatX* inp, const floatX* weight,
                              const floatX* bias, int N, int C, Stream) {
    layernorm_forward_ref(out, mean, rstd, inp, weight, bias, N, C);
}
inline void layernorm_backward(floatX* dinp, floatS* dweight, floatS* dbias, const floatX* dout, const floatX* inp,
                               const floatX* weight, const floatS* mean, const floatS* rstd, int N, int C, Stream) {
    layernorm_backward_ref(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA.
//  forward, backward dinp: a warp per row (8 rows per 256-thread block), the rmsnorm pattern. The forward makes
//    three passes over the row (sum -> mean; sum of squared deviations -> rstd, the two-pass variance; write),
//    the backward two (the sums a and b; write dinp); the second and third passes find the row in L1/L2. Each lane
//    moves P elements per step: a 128-bit pack when C is a multiple of the pack size and every pointer is 16-byte
//    aligned, else P = 1. A lane reads and then writes only its own elements, so out may alias inp.
//  backward dweight, dbias: fixed chunks of rows, then the chunks in order (kernels/norm_param_grad.cuh).

#ifdef __CUDACC__
template <int P>
__global__ void layernorm_forward_kernel(floatX* out, floatS* mean, floatS* rstd, const floatX* inp,
                                         const floatX* weight, const floatX* bias, int N, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;                     // the whole warp leaves: the shuffles below always see 32 lanes
    const floatX* x = inp + (size_t)row * C;
    float sum = 0.0f;
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float v[P];
        load_floats(v, x + c);
        for (int k = 0; k < P; k++) sum += v[k];
    }
    const float m = warp_reduce_sum(sum) / (float)C;
    float sq = 0.0f;
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float v[P];
        load_floats(v, x + c);
        for (int k = 0; k < P; k++) sq += (v[k] - m) * (v[k] - m);
    }
    const float rs = 1.0f / sqrtf(warp_reduce_sum(sq) / (float)C + (float)LAYERNORM_EPS);
    floatX* y = out + (size_t)row * C;
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float v[P], w[P], b[P];
        load_floats(v, x + c);
        load_floats(w, weight + c);
        load_floats(b, bias + c);
        for (int k = 0; k < P; k++) v[k] = (v[k] - m) * rs * w[k] + b[k];
        store_floats(y + c, v);
    }
    if (lane == 0) {
        if (mean) mean[row] = m;
        if (rstd) rstd[row] = rs;
    }
}

template <int P>
__global__ void layernorm_backward_dinp_kernel(floatX* dinp, const floatX* dout, const floatX* inp, const floatX* weight,
                                               const floatS* mean, const floatS* rstd, int N, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    const size_t base = (size_t)row * C;
    const float m = (float)mean[row], rs = (float)rstd[row];
    float a = 0.0f, b = 0.0f;
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float dy[P], x[P], w[P];
        load_floats(dy, dout + base + c);
        load_floats(x, inp + base + c);
        load_floats(w, weight + c);
        for (int k = 0; k < P; k++) {
            const float g = w[k] * dy[k];
            a += g;
            b += g * (x[k] - m) * rs;
        }
    }
    a = warp_reduce_sum(a) / (float)C;
    b = warp_reduce_sum(b) / (float)C;
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float dy[P], x[P], w[P], dx[P];
        load_floats(dy, dout + base + c);
        load_floats(x, inp + base + c);
        load_floats(w, weight + c);
        load_floats(dx, dinp + base + c);
        for (int k = 0; k < P; k++) dx[k] += rs * (w[k] * dy[k] - a - (x[k] - m) * rs * b);
        store_floats(dinp + base + c, dx);
    }
}

inline void layernorm_forward(floatX* out, floatS* mean, floatS* rstd, const floatX* inp, const floatX* weight,
                              const floatX* bias, int N, int C, Stream stream) {
    if (N == 0 || C == 0) return;
    constexpr int P = Packed128<floatX>::size;
    const int block_size = 256, grid = CEIL_DIV(N, block_size / WARP_SIZE);
    const bool packed = C % P == 0 && ((uintptr_t)out | (uintptr_t)inp | (uintptr_t)weight | (uintptr_t)bias) % 16 == 0;
    if (packed) layernorm_forward_kernel<P><<<grid, block_size, 0, stream>>>(out, mean, rstd, inp, weight, bias, N, C);
    else layernorm_forward_kernel<1><<<grid, block_size, 0, stream>>>(out, mean, rstd, inp, weight, bias, N, C);
    cudaCheckLaunch("layernorm_forward_kernel");
}

struct LayernormPartials;   // the tag of the dweight, dbias scratch (device_scratch)
inline void layernorm_backward(floatX* dinp, floatS* dweight, floatS* dbias, const floatX* dout, const floatX* inp,
                               const floatX* weight, const floatS* mean, const floatS* rstd, int N, int C,
                               Stream stream) {
    if (N == 0 || C == 0) return;
    constexpr int P = Packed128<floatX>::size;
    if (dinp) {
        const int block_size = 256, grid = CEIL_DIV(N, block_size / WARP_SIZE);
        const bool packed = C % P == 0 && ((uintptr_t)dinp | (uintptr_t)dout | (uintptr_t)inp | (uintptr_t)weight) % 16 == 0;
        if (packed) layernorm_backward_dinp_kernel<P><<<grid, block_size, 0, stream>>>(dinp, dout, inp, weight, mean, rstd, N, C);
        else layernorm_backward_dinp_kernel<1><<<grid, block_size, 0, stream>>>(dinp, dout, inp, weight, mean, rstd, N, C);
        cudaCheckLaunch("layernorm_backward_dinp_kernel");
    }
    norm_param_grad<LayernormPartials>(dweight, dbias, dout, inp, mean, rstd, N, C, stream, "layernorm_backward partial sums");
}
#endif
