// Elementwise sum of two or three tensors: out = a + b (+ c), c may be null; out may alias a.
//
// The decoder's input injection (f(h, inj) = blocks(h + inj) with inj = z_H + x), the pre-norm residual adds,
// and gradient accumulation (dx = dx + g) are all this op. Its backward is the identity: each summand
// receives the output gradient unchanged, so there is no backward kernel.
#pragma once
#include "../common/device.h"

template <typename T>
void add_forward_ref(T* out, const T* a, const T* b, const T* c, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = c ? a[i] + b[i] + c[i] : a[i] + b[i];
}

#ifndef __CUDACC__
inline void add_forward(floatX* out, const floatX* a, const floatX* b, const floatX* c, size_t n, Stream) {
    add_forward_ref(out, a, b, c, n);
}
#endif

#ifdef __CUDACC__
// One thread per 16-byte pack of P elements (8 bf16 or 4 floats), summed in fp32. With `vec` (every pointer
// 16-byte aligned) a full pack moves with 128-bit loads and stores; the last, partial pack (and every pack of a
// misaligned call) goes element by element. Each thread reads its elements before writing them: out may alias a.
template <typename T>
__device__ inline T add_element(T a, T b, const T* c) {     // c: the third summand, or null
    float s = to_float(a) + to_float(b);
    if (c) s += to_float(*c);
    return from_float<T>(s);
}

template <typename T>
__global__ void add_forward_kernel(T* out, const T* a, const T* b, const T* c, size_t n, bool vec) {
    constexpr int P = Packed128<T>::size;
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;
    if (i >= n) return;
    if (vec && i + P <= n) {
        const Packed128<T> pa = load128(a + i), pb = load128(b + i), pc = c ? load128(c + i) : Packed128<T>{};
        Packed128<T> po;
#pragma unroll
        for (int k = 0; k < P; k++) po[k] = add_element(pa[k], pb[k], c ? &pc[k] : nullptr);
        store128(out + i, po);
    } else {
        for (size_t j = i; j < n && j < i + P; j++) out[j] = add_element(a[j], b[j], c ? c + j : nullptr);
    }
}

inline void add_forward(floatX* out, const floatX* a, const floatX* b, const floatX* c, size_t n, Stream stream) {
    if (n == 0) return;
    auto aligned = [](const floatX* p) { return (uintptr_t)p % 16 == 0; };
    const bool vec = aligned(out) && aligned(a) && aligned(b) && (!c || aligned(c));
    const int block_size = 256;
    const size_t n_packs = CEIL_DIV(n, (size_t)Packed128<floatX>::size);
    add_forward_kernel<<<(unsigned)CEIL_DIV(n_packs, (size_t)block_size), block_size, 0, stream>>>(out, a, b, c, n, vec);
    cudaCheckLaunch("add_forward_kernel");
}
#endif
