// Linear layer: out = inp @ weight^T (+ bias), weights stored (out_features, in_features) as in PyTorch.
//
//   forward   out[n, o]      = sum_c inp[n, c] * weight[o, c] + bias[o]     inp (N, C), weight (OC, C), out (N, OC)
//   backward  dinp[n, c]     = sum_o dout[n, o] * weight[o, c]             (+= when accumulate_dinp)
//             dweight[o, c] += sum_n dout[n, o] * inp[n, c]
//             dbias[o]      += sum_n dout[n, o]
//
// Conventions (as everywhere in kernels/): parameter gradients accumulate (+=) so micro-batches add up;
// activation gradients are overwritten (=) unless the caller asks to accumulate, which it does where the
// input also feeds a residual branch whose gradient is already in dinp. bias and dbias may be null.
//
// CPU reference: every product goes through one register-tiled GEMM, C (M, N) (+)= A (M, K) @ B (K, N),
// parallel over blocks of rows with OpenMP (the attention reference uses it too). Each output element is
// summed by one thread in a fixed k order, so results do not depend on the number of threads.
#pragma once
#include <algorithm>
#include <vector>
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

// One MR x NR tile of C at (m0, n0), accumulated in registers over all k (fixed sizes: vectorised).
template <typename T, bool A_TRANS, int MR, int NR>
inline void gemm_tile(T* C, const T* A, const T* B, int M, int N, int K, int m0, int n0, bool accumulate) {
    T acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = accumulate ? C[(size_t)(m0 + i) * N + n0 + j] : T(0);
    for (int k = 0; k < K; k++) {
        const T* b = B + (size_t)k * N + n0;
        for (int i = 0; i < MR; i++) {
            const T a = A_TRANS ? A[(size_t)k * M + m0 + i] : A[(size_t)(m0 + i) * K + k];
            for (int j = 0; j < NR; j++) acc[i][j] += a * b[j];
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) C[(size_t)(m0 + i) * N + n0 + j] = acc[i][j];
}

// C[m, n] (+)= sum_k A(m, k) * B[k, n], with A(m, k) = A[m*K + k], or A[k*M + m] when A_TRANS.
// Full 4 x 32 and 4 x 16 tiles take the register-tiled path; the ragged edges a plain loop.
template <typename T, bool A_TRANS>
void gemm_ref(T* C, const T* A, const T* B, int M, int N, int K, bool accumulate) {
    constexpr int MR = 4;
    const int m_tiles = CEIL_DIV(M, MR);
#pragma omp parallel for schedule(static)
    for (int mt = 0; mt < m_tiles; mt++) {
        const int m0 = mt * MR, mb = std::min(MR, M - m0);
        int n0 = 0;
        if (mb == MR) {
            for (; n0 + 32 <= N; n0 += 32) gemm_tile<T, A_TRANS, MR, 32>(C, A, B, M, N, K, m0, n0, accumulate);
            for (; n0 + 16 <= N; n0 += 16) gemm_tile<T, A_TRANS, MR, 16>(C, A, B, M, N, K, m0, n0, accumulate);
        }
        for (int i = 0; i < mb; i++)                      // what is left: rows of the last tile, last columns
            for (int j = n0; j < N; j++) {
                T sum = accumulate ? C[(size_t)(m0 + i) * N + j] : T(0);
                for (int k = 0; k < K; k++)
                    sum += (A_TRANS ? A[(size_t)k * M + m0 + i] : A[(size_t)(m0 + i) * K + k]) * B[(size_t)k * N + j];
                C[(size_t)(m0 + i) * N + j] = sum;
            }
    }
}

template <typename T>
void matmul_forward_ref(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC) {
    // out = inp @ weight^T: transpose the (small) weight once so the GEMM streams contiguous rows of it.
    std::vector<T> weight_t((size_t)C * OC);
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++) weight_t[(size_t)c * OC + o] = weight[(size_t)o * C + c];
    gemm_ref<T, false>(out, inp, weight_t.data(), N, OC, C, false);
    if (bias) {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] += bias[o];
    }
}

template <typename T>
void matmul_backward_ref(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                         int N, int C, int OC, bool accumulate_dinp) {
    if (dinp) gemm_ref<T, false>(dinp, dout, weight, N, C, OC, accumulate_dinp);   // (N, OC) @ (OC, C)
    if (dweight) gemm_ref<T, true>(dweight, dout, inp, OC, C, N, true);              // (N, OC)^T @ (N, C)
    if (dbias) {
        for (int o = 0; o < OC; o++) {
            T sum = 0;
            for (int n = 0; n < N; n++) sum += dout[(size_t)n * OC + o];
            dbias[o] += sum;
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers (the GPU versions, through cuBLASLt, arrive with the CUDA backend)

#ifndef __CUDACC__
inline void matmul_forward(floatX* out, const floatX* inp, const floatX* weight, const floatX* bias,
                           int N, int C, int OC, Stream) {
    matmul_forward_ref(out, inp, weight, bias, N, C, OC);
}
inline void matmul_backward(floatX* dinp, floatS* dweight, floatS* dbias, const floatX* dout, const floatX* inp,
                            const floatX* weight, int N, int C, int OC, bool accumulate_dinp, Stream) {
    matmul_backward_ref(dinp, dweight, dbias, dout, inp, weight, N, C, OC, accumulate_dinp);
}
#endif
