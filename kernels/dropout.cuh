// Dropout fused with a residual add and a row mask (the relational blocks: x = mask * (x + Drop(f(x)))).
//
//   out[r, c] = m_r * (residual[r, c] + keep(r C + c) * inp[r, c] / (1 - p))        out, residual, inp: (rows, C)
//   keep(i)   = hash_uniform(seed, i) >= p   (common/rand.h: the same mask on every backend and rank)
//   p == 0: keep = 1 and no hash is evaluated; p >= 1: keep = 0 (out = m_r residual).
//   residual == nullptr: residual = 0.   row_mask (rows) uint8 == nullptr: m_r = 1.
//   A row with m_r = 0 is written as exactly 0 (a select, so a NaN or inf in a masked row does not propagate).
//   out may alias residual or inp.
//
// The backward is the same op (the map is linear in inp and residual, with the diagonal factors m_r keep / (1-p)
// and m_r):
//   d_inp      = dropout_add(d_inp, nullptr, dout, row_mask, rows, C, p, seed)        (the forward's p and seed)
//   d_residual = dropout_add(d_res, nullptr, dout, row_mask, rows, C, 0, 0)
// both (=); d_inp or d_res may alias dout. To accumulate into d_res instead, pass it as the residual argument:
//   dropout_add(d_res, d_res, dout, row_mask, rows, C, 0, 0) is d_res += m_r dout (for unmasked rows).
//
// The math is fp32 on the GPU: residual + inp * (1 / (1 - p)), rounded once to floatX.
#pragma once
#include <stdint.h>
#include "../common/device.h"
#include "../common/rand.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void dropout_add_ref(T* out, const T* residual, const T* inp, const uint8_t* row_mask, int rows, int C, float p,
                     uint64_t seed) {
    const bool drop = p > 0.0f;
    const T scale = p < 1.0f ? T(1) / (T(1) - (T)p) : T(0);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const bool on = !row_mask || row_mask[r];
        for (int c = 0; c < C; c++) {
            const size_t i = (size_t)r * C + c;
            const bool keep = !drop || hash_uniform(seed, (uint64_t)i) >= p;
            const T v = (residual ? residual[i] : T(0)) + (keep ? inp[i] * scale : T(0));
            out[i] = on ? v : T(0);
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void dropout_add(floatX* out, const floatX* residual, const floatX* inp, const uint8_t* row_mask, int rows, int C,
                        float p, uint64_t seed, Stream) {
    dropout_add_ref(out, residual, inp, row_mask, rows, C, p, seed);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA: a thread per P consecutive elements of a row, P = the 128-bit pack size when C is a multiple of it and
// every pointer is 16-byte aligned (then a pack never straddles two rows), else P = 1. Each thread hashes its
// elements' flat indices itself (counter-based: no state). A thread reads its elements and then writes the same
// elements, so out may alias residual or inp.

#ifdef __CUDACC__
template <int P>
__global__ void dropout_add_kernel(floatX* out, const floatX* residual, const floatX* inp, const uint8_t* row_mask,
                                   size_t n_packs, int C, float p, float scale, uint64_t seed) {
    const size_t pack = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (pack >= n_packs) return;
    const size_t i0 = pack * P, r = i0 / C;
    float y[P];
    if (row_mask && !row_mask[r]) {
        for (int k = 0; k < P; k++) y[k] = 0.0f;
    } else {
        float x[P];
        load_floats(x, inp + i0);
        if (residual) load_floats(y, residual + i0);
        else for (int k = 0; k < P; k++) y[k] = 0.0f;
        for (int k = 0; k < P; k++) {
            const bool keep = p <= 0.0f || hash_uniform(seed, (uint64_t)(i0 + k)) >= p;
            y[k] += keep ? x[k] * scale : 0.0f;
        }
    }
    store_floats(out + i0, y);
}

inline void dropout_add(floatX* out, const floatX* residual, const floatX* inp, const uint8_t* row_mask, int rows, int C,
                        float p, uint64_t seed, Stream stream) {
    const size_t n = (size_t)rows * C;
    if (n == 0) return;
    constexpr int P = Packed128<floatX>::size;
    const bool packed = C % P == 0 && ((uintptr_t)out | (uintptr_t)residual | (uintptr_t)inp) % 16 == 0;
    const size_t n_packs = packed ? n / P : n;
    const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const int block_size = 256;
    const unsigned grid = (unsigned)CEIL_DIV(n_packs, (size_t)block_size);
    if (packed) dropout_add_kernel<P><<<grid, block_size, 0, stream>>>(out, residual, inp, row_mask, n_packs, C, p, scale, seed);
    else dropout_add_kernel<1><<<grid, block_size, 0, stream>>>(out, residual, inp, row_mask, n_packs, C, p, scale, seed);
    cudaCheckLaunch("dropout_add_kernel");
}
#endif
