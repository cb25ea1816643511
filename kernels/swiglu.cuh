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
