// SwiGLU activation on the fused gate_up projection.
//
//   gate_up (N, 2I) = [gate | up] ;  out = silu(gate) * up,  silu(g) = g * sigmoid(g)          out (N, I)
//   backward  dgate = dout * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))) ,  dup = dout * silu(g)   (=)
#pragma once
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void swiglu_forward_ref(T* out, const T* gate_up, int N, int I) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* g = gate_up + (size_t)n * 2 * I;
        const T* u = g + I;
        T* y = out + (size_t)n * I;
        for (int i = 0; i < I; i++) y[i] = g[i] / (T(1) + exp(-g[i])) * u[i];
    }
}

template <typename T>
void swiglu_backward_ref(T* dgate_up, const T* dout, const T* gate_up, int N, int I) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* g = gate_up + (size_t)n * 2 * I;
        const T* u = g + I;
        const T* dy = dout + (size_t)n * I;
        T* dg = dgate_up + (size_t)n * 2 * I;
        T* du = dg + I;
        for (int i = 0; i < I; i++) {
            T sig = T(1) / (T(1) + exp(-g[i]));
            dg[i] = dy[i] * u[i] * sig * (T(1) + g[i] * (T(1) - sig));
            du[i] = dy[i] * g[i] * sig;
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void swiglu_forward(floatX* out, const floatX* gate_up, int N, int I, Stream) { swiglu_forward_ref(out, gate_up, N, I); }
inline void swiglu_backward(floatX* dgate_up, const floatX* dout, const floatX* gate_up, int N, int I, Stream) {
    swiglu_backward_ref(dgate_up, dout, gate_up, N, I);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA: a thread per P consecutive outputs of a row: P = the 128-bit pack size when I is a multiple of it and
// the pointers are 16-byte aligned (then gate, up and every row are too), else P = 1. Every input is read once,
// so the loads are streaming; the math is fp32.

#ifdef __CUDACC__
template <int P>
__global__ void swiglu_forward_kernel(floatX* out, const floatX* gate_up, int N, int I) {
    const int packs = I / P;                                              // per row
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;    // this thread's pack of P outputs
    if (idx >= (size_t)N * packs) return;
    const size_t n = idx / packs;
    const int i = (int)(idx % packs) * P;
    const floatX* gate = gate_up + n * 2 * I + i;
    float g[P], u[P], y[P];
    load_floats(g, gate);
    load_floats(u, gate + I);
    for (int k = 0; k < P; k++) y[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
    store_floats(out + n * I + i, y);
}

template <int P>
__global__ void swiglu_backward_kernel(floatX* dgate_up, const floatX* dout, const floatX* gate_up, int N, int I) {
    const int packs = I / P;                                              // per row
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;    // this thread's pack of P outputs
    if (idx >= (size_t)N * packs) return;
    const size_t n = idx / packs;
    const int i = (int)(idx % packs) * P;
    const size_t gi = n * 2 * I + i;                                      // gate's index; up's is gi + I
    float g[P], u[P], dy[P], dg[P], du[P];
    load_floats(g, gate_up + gi);
    load_floats(u, gate_up + gi + I);
    load_floats(dy, dout + n * I + i);
    for (int k = 0; k < P; k++) {
        const float sig = 1.0f / (1.0f + expf(-g[k]));
        dg[k] = dy[k] * u[k] * sig * (1.0f + g[k] * (1.0f - sig));
        du[k] = dy[k] * g[k] * sig;
    }
    store_floats(dgate_up + gi, dg);
    store_floats(dgate_up + gi + I, du);
}

// The launchers with the block size as a parameter; the lab sweeps it.
inline void swiglu_forward_launch(floatX* out, const floatX* gate_up, int N, int I, int block_size, Stream stream) {
    constexpr int P = Packed128<floatX>::size;
    const bool packed = I % P == 0 && ((uintptr_t)out | (uintptr_t)gate_up) % 16 == 0;
    const size_t threads = (size_t)N * (packed ? I / P : I);
    if (threads == 0) return;
    const unsigned grid = (unsigned)CEIL_DIV(threads, (size_t)block_size);
    if (packed) swiglu_forward_kernel<P><<<grid, block_size, 0, stream>>>(out, gate_up, N, I);
    else swiglu_forward_kernel<1><<<grid, block_size, 0, stream>>>(out, gate_up, N, I);
    cudaCheckLaunch("swiglu_forward_kernel");
}
inline void swiglu_backward_launch(floatX* dgate_up, const floatX* dout, const floatX* gate_up, int N, int I,
                                   int block_size, Stream stream) {
    constexpr int P = Packed128<floatX>::size;
    const bool packed = I % P == 0 && ((uintptr_t)dgate_up | (uintptr_t)dout | (uintptr_t)gate_up) % 16 == 0;
    const size_t threads = (size_t)N * (packed ? I / P : I);
    if (threads == 0) return;
    const unsigned grid = (unsigned)CEIL_DIV(threads, (size_t)block_size);
    if (packed) swiglu_backward_kernel<P><<<grid, block_size, 0, stream>>>(dgate_up, dout, gate_up, N, I);
    else swiglu_backward_kernel<1><<<grid, block_size, 0, stream>>>(dgate_up, dout, gate_up, N, I);
    cudaCheckLaunch("swiglu_backward_kernel");
}

inline void swiglu_forward(floatX* out, const floatX* gate_up, int N, int I, Stream stream) {
    swiglu_forward_launch(out, gate_up, N, I, 256, stream);
}
inline void swiglu_backward(floatX* dgate_up, const floatX* dout, const floatX* gate_up, int N, int I, Stream stream) {
    swiglu_backward_launch(dgate_up, dout, gate_up, N, I, 256, stream);
}
#endif
