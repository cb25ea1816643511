// LoRA, a low-rank update beside a frozen linear layer (Hu et al. 2021; the form of PEFT's lora.Linear):
//
//   out (N, OC) += scale * (x A^T) B^T        x (N, C) the layer's input after LoRA's dropout, A (r, C) "lora_A",
//                                             B (OC, r) "lora_B", scale = alpha / r (alpha / sqrt(r) with rsLoRA)
//   forward   t (N, r) = scale * x A^T ;  out += t B^T
//   backward  dB (OC, r) += dout^T t                       (t already carries the scale)
//             dt (N, r) = scale * dout B
//             dA (r, C) += dt^T x
//             dx (N, C) += dt A                            (+=: the frozen layer's own dx is already there)
//
// The base layer runs first (kernels/matmul.cuh) and LoRA adds into its output and into its input gradient, so
// an adapter costs two thin matmuls (rank r << C) each way and keeps t (N, r) for the backward. Dropout on x (PEFT's
// lora_dropout) is the caller's: it passes the dropped-out x here and takes dx back through the same mask. With B = 0
// (PEFT's initialisation) the adapted layer starts as the base layer exactly.
#pragma once
#include "../common/device.h"
#include "matmul.cuh"

// x *= s over n elements (the (N, r) LoRA activations: small, so a plain loop / grid-stride kernel)
#ifdef __CUDACC__
__global__ void lora_scale_kernel(floatX* x, size_t n, float s) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = from_float<floatX>(s * to_float(x[i]));
}
inline void lora_scale(floatX* x, size_t n, float s, Stream st) {
    if (n == 0) return;
    lora_scale_kernel<<<(unsigned)std::min<size_t>(CEIL_DIV(n, 256), 4096), 256, 0, st>>>(x, n, s);
    cudaCheckLaunch("lora_scale_kernel");
}
#else
inline void lora_scale(floatX* x, size_t n, float s, Stream) {
    for (size_t i = 0; i < n; i++) x[i] = (floatX)(s * x[i]);
}
#endif

// out += scale * (x A^T) B^T; t (N, r) receives scale * x A^T (kept for the backward). out's rows are ld apart
// (0: OC), so it may be one projection's columns of a fused q|k|v (or gate|up) output.
inline void lora_forward(floatX* out, floatX* t, const floatX* x, const floatX* A, const floatX* B, int N, int C, int OC,
                         int r, float scale, Stream st, int ld = 0) {
    matmul_forward(t, x, A, nullptr, N, C, r, st);
    lora_scale(t, (size_t)N * r, scale, st);
    matmul_forward(out, t, B, nullptr, N, r, OC, st, true, ld);
}

// dA += dt^T x, dB += dout^T t, dx += dt A (dx = dt A without accumulate_dx), with dt = scale * dout B in the
// scratch dt (N, r). dA, dB and dx may be null (a frozen adapter, or an input that needs no gradient). dout's rows are
// ld apart (0: OC).
inline void lora_backward(floatX* dx, floatS* dA, floatS* dB, floatX* dt, const floatX* dout, const floatX* x,
                          const floatX* t, const floatX* A, const floatX* B, int N, int C, int OC, int r, float scale,
                          Stream st, int ld = 0, bool accumulate_dx = true) {
    matmul_backward(dt, dB, nullptr, dout, t, B, N, r, OC, false, st, ld);  // dt = dout B, dB += dout^T t
    lora_scale(dt, (size_t)N * r, scale, st);
    matmul_backward(dx, dA, nullptr, dt, x, A, N, C, r, accumulate_dx, st); // dx (+)= dt A, dA += dt^T x
}
