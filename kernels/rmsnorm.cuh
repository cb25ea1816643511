// RMSNorm over the last axis: scale-free (TRM), optionally fused with the residual add before it; or with a
// learned weight (Qwen2's RMSNorm).
//
// Scale-free:
//   forward   s = inp (+ residual)                                   inp, residual, out: (N, C)
//             rstd[n] = 1 / sqrt(mean_c s[n, c]^2 + eps)             fp32 statistics, (N)
//             out = s * rstd
//   backward  ds = rstd * (dout - out * mean_c(dout * out))
//             (out = s * rstd, so d out / d s = rstd * (I - out out^T / C): only out and rstd are needed.)
//
// ds is overwritten (=), or added to (+=) when `accumulate` is set: in a pre-norm block the normalised tensor
// also travels on the residual path, whose gradient is already in ds. A post-norm block feeds ds to both
// summands of the residual add (the caller uses the same gradient for inp and residual).
//
// Weighted (Hugging Face Qwen2RMSNorm):
//   forward   rstd[n] = 1 / sqrt(mean_c inp[n, c]^2 + eps)           inp, out: (N, C); weight: (C); rstd: (N)
//             xhat = inp * rstd,   out = xhat * weight
//   backward  xhat = inp * rstd,   g = dout * weight
//             dinp (= or +=) = rstd * (g - xhat * mean_c(g * xhat))
//             dweight += sum_n dout * xhat                           (C) floatS, += (parameter gradients accumulate)
// Precision as Qwen2RMSNorm (`weight * hidden.to(input_dtype)`): the statistics in fp32, xhat rounded to floatX
// before the multiply by the floatX weight, the product rounded to floatX; in the bf16 build xhat and out are
// thus rounded to bf16 in turn (the fp32 build and the CPU reference round nothing). The backward recomputes
// xhat = inp * rstd in fp32 and does not round it. dweight may be null (a frozen weight: not computed); dinp
// may alias dout (dweight is computed first); out may alias inp. dweight's column sums run in a fixed order
// (kernels/norm_param_grad.cuh), so the backward is bitwise repeatable.
#pragma once
#include "../common/device.h"
#include "norm_param_grad.cuh"

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

template <typename T>
void rmsnorm_weighted_forward_ref(T* out, T* rstd, const T* inp, const T* weight, int N, int C, float eps) {
    rmsnorm_forward_ref(out, rstd, inp, (const T*)nullptr, N, C, eps);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] *= weight[c];
}

template <typename T>
void rmsnorm_weighted_backward_ref(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight, const T* rstd,
                                   int N, int C, bool accumulate) {
    if (dweight) {       // first: dinp may alias dout
#pragma omp parallel for schedule(static)
        for (int c = 0; c < C; c++) {
            double dw = 0;
            for (int n = 0; n < N; n++) dw += (double)dout[(size_t)n * C + c] * (double)inp[(size_t)n * C + c] * (double)rstd[n];
            dweight[c] = (T)((double)dweight[c] + dw);
        }
    }
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* dy = dout + (size_t)n * C;
        const T* x = inp + (size_t)n * C;
        T* dx = dinp + (size_t)n * C;
        const T rs = rstd[n];
        T dot = 0;
        for (int c = 0; c < C; c++) dot += dy[c] * weight[c] * x[c] * rs;
        const T mean_dot = dot / C;
        for (int c = 0; c < C; c++) {
            const T g = rs * (dy[c] * weight[c] - x[c] * rs * mean_dot);
            dx[c] = accumulate ? dx[c] + g : g;
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
inline void rmsnorm_weighted_forward(floatX* out, floatS* rstd, const floatX* inp, const floatX* weight, int N, int C,
                                     float eps, Stream) {
    rmsnorm_weighted_forward_ref(out, rstd, inp, weight, N, C, eps);
}
inline void rmsnorm_weighted_backward(floatX* dinp, floatS* dweight, const floatX* dout, const floatX* inp,
                                      const floatX* weight, const floatS* rstd, int N, int C, bool accumulate, Stream) {
    rmsnorm_weighted_backward_ref(dinp, dweight, dout, inp, weight, rstd, N, C, accumulate);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA: a warp per row. Pass 1 reads the row and reduces sum(s^2) (forward) or sum(g * xhat) (backward) across
// the warp in fp32; pass 2 reads the row again, now from L1/L2 (the warp has just touched it, so device memory
// sees each input once), and writes the result. Each lane moves P elements per step: one 128-bit pack when C is a
// multiple of the pack size and every pointer is 16-byte aligned (then every row is too), else P = 1. In place
// (out == inp, dinp == dout) is safe: every element is read and then written by the same lane. The weighted and
// the scale-free op share the kernels: a null weight is the scale-free op (with the same arithmetic as before
// the weight existed). The weighted backward's dweight: kernels/norm_param_grad.cuh.

#ifdef __CUDACC__
template <int P>
__global__ void rmsnorm_forward_kernel(floatX* out, floatS* rstd, const floatX* inp, const floatX* residual,
                                       const floatX* weight, int N, int C, float eps) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;                     // the whole warp leaves: the shuffles below always see 32 lanes
    const size_t base = (size_t)row * C;
    auto load_s = [&](float (&s)[P], int c) { // s = inp (+ residual) at row, c .. c + P
        load_floats(s, inp + base + c);
        if (residual) {
            float r[P];
            load_floats(r, residual + base + c);
            for (int k = 0; k < P; k++) s[k] += r[k];
        }
    };
    float sum_sq = 0;
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float s[P];
        load_s(s, c);
        for (int k = 0; k < P; k++) sum_sq += s[k] * s[k];
    }
    sum_sq = warp_reduce_sum(sum_sq);
    const float rs = 1.0f / sqrtf(sum_sq / C + eps);
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float s[P];
        load_s(s, c);
        for (int k = 0; k < P; k++) s[k] *= rs;
        if (weight) {                         // xhat rounded to floatX, times the weight (Qwen2RMSNorm)
            float w[P];
            load_floats(w, weight + c);
            for (int k = 0; k < P; k++) s[k] = to_float(from_float<floatX>(s[k])) * w[k];
        }
        store_floats(out + base + c, s);
    }
    if (lane == 0) rstd[row] = rs;
}

// x: the scale-free forward's out (= xhat), or with a weight the forward's inp (xhat = inp * rstd).
template <int P>
__global__ void rmsnorm_backward_kernel(floatX* dinp, const floatX* dout, const floatX* x, const floatX* weight,
                                        const floatS* rstd, int N, int C, bool accumulate) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    const size_t base = (size_t)row * C;
    const float rs = rstd[row];
    auto load_g_xhat = [&](float (&g)[P], float (&xh)[P], int c) {   // g = dout (* weight), xhat at row, c .. c + P
        load_floats(g, dout + base + c);
        load_floats(xh, x + base + c);
        if (weight) {
            float w[P];
            load_floats(w, weight + c);
            for (int k = 0; k < P; k++) {
                g[k] *= w[k];
                xh[k] *= rs;
            }
        }
    };
    float dot = 0;
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float g[P], xh[P];
        load_g_xhat(g, xh, c);
        for (int k = 0; k < P; k++) dot += g[k] * xh[k];
    }
    dot = warp_reduce_sum(dot);
    const float mean_dot = dot / C;
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float g[P], xh[P], dx[P];
        load_g_xhat(g, xh, c);
        if (accumulate) load_floats(dx, dinp + base + c);
        for (int k = 0; k < P; k++) {
            const float d = rs * (g[k] - xh[k] * mean_dot);
            dx[k] = accumulate ? dx[k] + d : d;
        }
        store_floats(dinp + base + c, dx);
    }
}

// The launchers with the block size as a parameter (block_size / 32 rows per block); the labs sweep it. A null
// weight is the scale-free op; the weighted one takes no residual.
inline void rmsnorm_forward_launch(floatX* out, floatS* rstd, const floatX* inp, const floatX* residual,
                                   const floatX* weight, int N, int C, float eps, int block_size, Stream stream) {
    if (N == 0) return;
    constexpr int P = Packed128<floatX>::size;
    const int grid = CEIL_DIV(N, block_size / WARP_SIZE);
    // a null residual or weight adds no bits to the OR
    const bool packed = C % P == 0 && ((uintptr_t)out | (uintptr_t)inp | (uintptr_t)residual | (uintptr_t)weight) % 16 == 0;
    if (packed) rmsnorm_forward_kernel<P><<<grid, block_size, 0, stream>>>(out, rstd, inp, residual, weight, N, C, eps);
    else rmsnorm_forward_kernel<1><<<grid, block_size, 0, stream>>>(out, rstd, inp, residual, weight, N, C, eps);
    cudaCheckLaunch("rmsnorm_forward_kernel");
}
// With a weight, dweight (null: not computed) gets its column sums first (dinp may alias dout).
struct RmsnormPartials;   // the tag of the dweight scratch (device_scratch)
inline void rmsnorm_backward_launch(floatX* dinp, floatS* dweight, const floatX* dout, const floatX* x,
                                    const floatX* weight, const floatS* rstd, int N, int C, bool accumulate,
                                    int block_size, Stream stream) {
    if (N == 0) return;
    if (weight && dweight)
        norm_param_grad<RmsnormPartials>(dweight, nullptr, dout, x, nullptr, rstd, N, C, stream,
                                         "rmsnorm_weighted_backward partial sums");
    constexpr int P = Packed128<floatX>::size;
    const int grid = CEIL_DIV(N, block_size / WARP_SIZE);
    const bool packed = C % P == 0 && ((uintptr_t)dinp | (uintptr_t)dout | (uintptr_t)x | (uintptr_t)weight) % 16 == 0;
    if (packed) rmsnorm_backward_kernel<P><<<grid, block_size, 0, stream>>>(dinp, dout, x, weight, rstd, N, C, accumulate);
    else rmsnorm_backward_kernel<1><<<grid, block_size, 0, stream>>>(dinp, dout, x, weight, rstd, N, C, accumulate);
    cudaCheckLaunch("rmsnorm_backward_kernel");
}

inline void rmsnorm_forward(floatX* out, floatS* rstd, const floatX* inp, const floatX* residual, int N, int C,
                            float eps, Stream stream) {
    rmsnorm_forward_launch(out, rstd, inp, residual, nullptr, N, C, eps, 256, stream);
}
inline void rmsnorm_backward(floatX* dinp, const floatX* dout, const floatX* out, const floatS* rstd, int N, int C,
                             bool accumulate, Stream stream) {
    rmsnorm_backward_launch(dinp, nullptr, dout, out, nullptr, rstd, N, C, accumulate, 256, stream);
}
inline void rmsnorm_weighted_forward(floatX* out, floatS* rstd, const floatX* inp, const floatX* weight, int N, int C,
                                     float eps, Stream stream) {
    rmsnorm_forward_launch(out, rstd, inp, nullptr, weight, N, C, eps, 256, stream);
}
inline void rmsnorm_weighted_backward(floatX* dinp, floatS* dweight, const floatX* dout, const floatX* inp,
                                      const floatX* weight, const floatS* rstd, int N, int C, bool accumulate,
                                      Stream stream) {
    rmsnorm_backward_launch(dinp, dweight, dout, inp, weight, rstd, N, C, accumulate, 256, stream);
}
#endif
