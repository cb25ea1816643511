// Pointwise activation, one of two kinds (the JEPA encoder's MLPs and projection head).
//
//   ACT_GELU   out = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))          exact erf GELU, as torch nn.GELU()
//              d out / dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//   ACT_RELU   out = max(x, 0),  d out / dx = 1 if x > 0 else 0       (0 at x = 0, as torch)
//
//   inp, out, dout, dinp: n elements (any shape, flattened)
//   backward  dinp = dout * act'(inp)                                                                  (=)
//             inp is the forward's input. out may alias inp; dinp may alias dout.
//
// Phi(x) is computed as erfc(-x / sqrt 2) / 2 (= (1 + erf(x / sqrt 2)) / 2, without the cancellation of 1 + erf for
// negative x). The math is fp32 on the GPU (double in the CPU reference when T = double).
#pragma once
#include <math.h>
#include <stddef.h>
#include "../common/device.h"

enum ActivationKind { ACT_GELU, ACT_RELU };

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
T activation_value_ref(T x, ActivationKind kind) {
    if (kind == ACT_RELU) return x > T(0) ? x : T(0);
    return T(0.5) * x * erfc(-x * T(0.70710678118654752440));
}
template <typename T>
T activation_grad_ref(T x, ActivationKind kind) {
    if (kind == ACT_RELU) return x > T(0) ? T(1) : T(0);
    const T cdf = T(0.5) * erfc(-x * T(0.70710678118654752440));
    const T pdf = exp(T(-0.5) * x * x) * T(0.39894228040143267794);
    return cdf + x * pdf;
}

template <typename T>
void activation_forward_ref(T* out, const T* inp, size_t n, ActivationKind kind) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = activation_value_ref(inp[i], kind);
}

template <typename T>
void activation_backward_ref(T* dinp, const T* dout, const T* inp, size_t n, ActivationKind kind) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dinp[i] = dout[i] * activation_grad_ref(inp[i], kind);
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void activation_forward(floatX* out, const floatX* inp, size_t n, ActivationKind kind, Stream) {
    activation_forward_ref(out, inp, n, kind);
}
inline void activation_backward(floatX* dinp, const floatX* dout, const floatX* inp, size_t n, ActivationKind kind, Stream) {
    activation_backward_ref(dinp, dout, inp, n, kind);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA: a thread per P consecutive elements, P = the 128-bit pack size when n is a multiple of it and every
// pointer is 16-byte aligned, else P = 1. A thread reads its elements and then writes the same elements, so the
// in-place calls (out == inp, dinp == dout) are safe. The kind is a kernel argument (a uniform branch).

#ifdef __CUDACC__
__device__ inline float activation_value(float x, ActivationKind kind) {
    if (kind == ACT_RELU) return x > 0.0f ? x : 0.0f;
    return 0.5f * x * erfcf(-x * 0.70710678118654752f);
}
__device__ inline float activation_grad(float x, ActivationKind kind) {
    if (kind == ACT_RELU) return x > 0.0f ? 1.0f : 0.0f;
    return 0.5f * erfcf(-x * 0.70710678118654752f) + x * expf(-0.5f * x * x) * 0.39894228040143268f;
}

template <int P>
__global__ void activation_forward_kernel(floatX* out, const floatX* inp, size_t n_packs, ActivationKind kind) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_packs) return;
    float x[P];
    load_floats(x, inp + i * P);
    for (int k = 0; k < P; k++) x[k] = activation_value(x[k], kind);
    store_floats(out + i * P, x);
}

template <int P>
__global__ void activation_backward_kernel(floatX* dinp, const floatX* dout, const floatX* inp, size_t n_packs,
                                           ActivationKind kind) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_packs) return;
    float x[P], dy[P];
    load_floats(x, inp + i * P);
    load_floats(dy, dout + i * P);
    for (int k = 0; k < P; k++) dy[k] *= activation_grad(x[k], kind);
    store_floats(dinp + i * P, dy);
}

inline void activation_forward(floatX* out, const floatX* inp, size_t n, ActivationKind kind, Stream stream) {
    if (n == 0) return;
    constexpr int P = Packed128<floatX>::size;
    const bool packed = n % P == 0 && ((uintptr_t)out | (uintptr_t)inp) % 16 == 0;
    const size_t n_packs = packed ? n / P : n;
    const int block_size = 256;
    const unsigned grid = (unsigned)CEIL_DIV(n_packs, (size_t)block_size);
    if (packed) activation_forward_kernel<P><<<grid, block_size, 0, stream>>>(out, inp, n_packs, kind);
    else activation_forward_kernel<1><<<grid, block_size, 0, stream>>>(out, inp, n_packs, kind);
    cudaCheckLaunch("activation_forward_kernel");
}

inline void activation_backward(floatX* dinp, const floatX* dout, const floatX* inp, size_t n, ActivationKind kind,
                                Stream stream) {
    if (n == 0) return;
    constexpr int P = Packed128<floatX>::size;
    const bool packed = n % P == 0 && ((uintptr_t)dinp | (uintptr_t)dout | (uintptr_t)inp) % 16 == 0;
    const size_t n_packs = packed ? n / P : n;
    const int block_size = 256;
    const unsigned grid = (unsigned)CEIL_DIV(n_packs, (size_t)block_size);
    if (packed) activation_backward_kernel<P><<<grid, block_size, 0, stream>>>(dinp, dout, inp, n_packs, kind);
    else activation_backward_kernel<1><<<grid, block_size, 0, stream>>>(dinp, dout, inp, n_packs, kind);
    cudaCheckLaunch("activation_backward_kernel");
}
#endif
