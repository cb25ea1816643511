// Row-wise L2 normalisation, as torch F.normalize(x, dim=-1) (p = 2, eps = 1e-12).
//
//   forward   norm[n] = max(||x[n, :]||, eps)                       x, out: (N, C); norm: (N) floatS (written)
//             out = x / norm
//   backward  ||x|| > eps (norm > eps):  dinp = (dout - x (x . dout) / norm^2) / norm  = (dout - out (out . dout)) / norm
//             ||x|| <= eps (norm = eps): the map is x / eps, linear:  dinp = dout / eps                          (=)
//   (torch: the clamp passes no gradient to the norm when ||x|| < eps.) The backward reads the forward's norm to
//   choose the branch, so the two always agree. out may alias inp; dinp may alias dout.
//
// The sums are fp32 on the GPU (double accumulators in the CPU reference).
#pragma once
#include <math.h>
#include "../common/device.h"

#define L2NORM_EPS 1e-12

// ----------------------------------------------------------------------------------------------------------
// CPU reference (T: activations; S: the norm)

template <typename T, typename S>
void l2norm_forward_ref(T* out, S* norm, const T* inp, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* x = inp + (size_t)n * C;
        T* y = out + (size_t)n * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * (double)x[c];
        const double nrm = fmax(sqrt(ss), (double)(S)L2NORM_EPS);
        for (int c = 0; c < C; c++) y[c] = (T)((double)x[c] / nrm);
        norm[n] = (S)nrm;
    }
}

template <typename T, typename S>
void l2norm_backward_ref(T* dinp, const T* dout, const T* inp, const S* norm, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* x = inp + (size_t)n * C;
        const T* dy = dout + (size_t)n * C;
        T* dx = dinp + (size_t)n * C;
        const double nrm = (double)norm[n];
        double dot = 0;
        if (norm[n] > (S)L2NORM_EPS)
            for (int c = 0; c < C; c++) dot += (double)x[c] * (double)dy[c];
        const double k = dot / (nrm * nrm);      // 0 on the linear branch
        for (int c = 0; c < C; c++) dx[c] = (T)(((double)dy[c] - (double)x[c] * k) / nrm);
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void l2norm_forward(floatX* out, floatS* norm, const floatX* inp, int N, int C, Stream) {
    l2norm_forward_ref(out, norm, inp, N, C);
}
inline void l2norm_backward(floatX* dinp, const floatX* dout, const floatX* inp, const floatS* norm, int N, int C, Stream) {
    l2norm_backward_ref(dinp, dout, inp, norm, N, C);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA: a warp per row (8 rows per 256-thread block), the rmsnorm pattern: pass 1 reduces sum x^2 (forward) or
// x . dout (backward) over the warp in fp32, pass 2 reads the row again (from L1/L2) and writes. Each lane moves
// P elements per step: a 128-bit pack when C is a multiple of the pack size and every pointer is 16-byte
// aligned, else P = 1. A lane reads and then writes only its own elements (in-place calls are safe).

#ifdef __CUDACC__
template <int P>
__global__ void l2norm_forward_kernel(floatX* out, floatS* norm, const floatX* inp, int N, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;                     // the whole warp leaves: the shuffles below always see 32 lanes
    const size_t base = (size_t)row * C;
    float ss = 0.0f;
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float x[P];
        load_floats(x, inp + base + c);
        for (int k = 0; k < P; k++) ss += x[k] * x[k];
    }
    const float nrm = fmaxf(sqrtf(warp_reduce_sum(ss)), (float)L2NORM_EPS);
    const float inv = 1.0f / nrm;
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float x[P];
        load_floats(x, inp + base + c);
        for (int k = 0; k < P; k++) x[k] *= inv;
        store_floats(out + base + c, x);
    }
    if (lane == 0) norm[row] = nrm;
}

template <int P>
__global__ void l2norm_backward_kernel(floatX* dinp, const floatX* dout, const floatX* inp, const floatS* norm, int N,
                                       int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    const size_t base = (size_t)row * C;
    const float nrm = (float)norm[row], inv = 1.0f / nrm;
    float k = 0.0f;                            // (x . dout) / norm^2 on the nonlinear branch, 0 on the linear one
    if (nrm > (float)L2NORM_EPS) {             // uniform over the warp
        float dot = 0.0f;
        for (int c = lane * P; c < C; c += WARP_SIZE * P) {
            float x[P], dy[P];
            load_floats(x, inp + base + c);
            load_floats(dy, dout + base + c);
            for (int j = 0; j < P; j++) dot += x[j] * dy[j];
        }
        k = warp_reduce_sum(dot) * inv * inv;
    }
    for (int c = lane * P; c < C; c += WARP_SIZE * P) {
        float x[P], dy[P];
        load_floats(x, inp + base + c);
        load_floats(dy, dout + base + c);
        for (int j = 0; j < P; j++) dy[j] = (dy[j] - x[j] * k) * inv;
        store_floats(dinp + base + c, dy);
    }
}

inline void l2norm_forward(floatX* out, floatS* norm, const floatX* inp, int N, int C, Stream stream) {
    if (N == 0) return;
    constexpr int P = Packed128<floatX>::size;
    const int block_size = 256, grid = CEIL_DIV(N, block_size / WARP_SIZE);
    const bool packed = C % P == 0 && ((uintptr_t)out | (uintptr_t)inp) % 16 == 0;
    if (packed) l2norm_forward_kernel<P><<<grid, block_size, 0, stream>>>(out, norm, inp, N, C);
    else l2norm_forward_kernel<1><<<grid, block_size, 0, stream>>>(out, norm, inp, N, C);
    cudaCheckLaunch("l2norm_forward_kernel");
}

inline void l2norm_backward(floatX* dinp, const floatX* dout, const floatX* inp, const floatS* norm, int N, int C,
                            Stream stream) {
    if (N == 0 || C == 0) return;
    constexpr int P = Packed128<floatX>::size;
    const int block_size = 256, grid = CEIL_DIV(N, block_size / WARP_SIZE);
    const bool packed = C % P == 0 && ((uintptr_t)dinp | (uintptr_t)dout | (uintptr_t)inp) % 16 == 0;
    if (packed) l2norm_backward_kernel<P><<<grid, block_size, 0, stream>>>(dinp, dout, inp, norm, N, C);
    else l2norm_backward_kernel<1><<<grid, block_size, 0, stream>>>(dinp, dout, inp, norm, N, C);
    cudaCheckLaunch("l2norm_backward_kernel");
}
#endif
