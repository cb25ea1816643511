// Linear layer: out = inp @ weight^T (+ bias), weights stored (out_features, in_features) as in PyTorch.
//
//   forward   out[n, o]      = sum_c inp[n, c] * weight[o, c] + bias[o]     inp (N, C), weight (OC, C), out (N, OC)
//                            (+= with accumulate: a second branch into the same output, e.g. LoRA's)
// out (and dout) may be a block of OC columns of a wider matrix whose rows are ldo (ld_dout) apart: one projection
// of a fused q|k|v output, which LoRA adapts alone.
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
inline void gemm_tile(T* C, const T* A, const T* B, int N, int K, int lda, int ldc, int m0, int n0, bool accumulate) {
    T acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = accumulate ? C[(size_t)(m0 + i) * ldc + n0 + j] : T(0);
    for (int k = 0; k < K; k++) {
        const T* b = B + (size_t)k * N + n0;
        for (int i = 0; i < MR; i++) {
            const T a = A_TRANS ? A[(size_t)k * lda + m0 + i] : A[(size_t)(m0 + i) * lda + k];
            for (int j = 0; j < NR; j++) acc[i][j] += a * b[j];
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) C[(size_t)(m0 + i) * ldc + n0 + j] = acc[i][j];
}

// C[m, n] (+)= sum_k A(m, k) * B[k, n], with A(m, k) = A[m*lda + k], or A[k*lda + m] when A_TRANS (lda 0: K, or
// M), and C's rows ldc apart (0: N), so that A or C may be a block of columns of a wider matrix.
// Columns in full blocks of 32 and 16 take the register-tiled path (4 rows at a time, the last rows one at a
// time through the same code), the last columns a plain loop. Every element of a column is computed by the
// same arithmetic whatever its row: a sample's results do not depend on where it sits in the batch (so a
// data-parallel run matches a single-process one).
template <typename T, bool A_TRANS>
void gemm_ref(T* C, const T* A, const T* B, int M, int N, int K, bool accumulate, int lda = 0, int ldc = 0) {
    constexpr int MR = 4;
    if (lda == 0) lda = A_TRANS ? M : K;
    if (ldc == 0) ldc = N;
    const int m_tiles = CEIL_DIV(M, MR);
#pragma omp parallel for schedule(static)
    for (int mt = 0; mt < m_tiles; mt++) {
        const int m0 = mt * MR, mb = std::min(MR, M - m0);
        int n0 = 0;
        if (mb == MR) {
            for (; n0 + 32 <= N; n0 += 32) gemm_tile<T, A_TRANS, MR, 32>(C, A, B, N, K, lda, ldc, m0, n0, accumulate);
            for (; n0 + 16 <= N; n0 += 16) gemm_tile<T, A_TRANS, MR, 16>(C, A, B, N, K, lda, ldc, m0, n0, accumulate);
        } else {
            for (int i = 0; i < mb; i++) {
                n0 = 0;
                for (; n0 + 32 <= N; n0 += 32) gemm_tile<T, A_TRANS, 1, 32>(C, A, B, N, K, lda, ldc, m0 + i, n0, accumulate);
                for (; n0 + 16 <= N; n0 += 16) gemm_tile<T, A_TRANS, 1, 16>(C, A, B, N, K, lda, ldc, m0 + i, n0, accumulate);
            }
        }
        for (int i = 0; i < mb; i++)                      // what is left: the last columns
            for (int j = n0; j < N; j++) {
                T sum = accumulate ? C[(size_t)(m0 + i) * ldc + j] : T(0);
                for (int k = 0; k < K; k++)
                    sum += (A_TRANS ? A[(size_t)k * lda + m0 + i] : A[(size_t)(m0 + i) * lda + k]) * B[(size_t)k * N + j];
                C[(size_t)(m0 + i) * ldc + j] = sum;
            }
    }
}

template <typename T>
void matmul_forward_ref(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC, bool accumulate = false,
                        int ldo = 0) {
    if (ldo == 0) ldo = OC;
    // out = inp @ weight^T: transpose the (small) weight once so the GEMM streams contiguous rows of it.
    std::vector<T> weight_t((size_t)C * OC);
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++) weight_t[(size_t)c * OC + o] = weight[(size_t)o * C + c];
    gemm_ref<T, false>(out, inp, weight_t.data(), N, OC, C, accumulate, C, ldo);
    if (bias) {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * ldo + o] += bias[o];
    }
}

template <typename T>
void matmul_backward_ref(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                         int N, int C, int OC, bool accumulate_dinp, int ld_dout = 0) {
    if (ld_dout == 0) ld_dout = OC;
    if (dinp) gemm_ref<T, false>(dinp, dout, weight, N, C, OC, accumulate_dinp, ld_dout);   // (N, OC) @ (OC, C)
    if (dweight) gemm_ref<T, true>(dweight, dout, inp, OC, C, N, true, ld_dout);              // (N, OC)^T @ (N, C)
    if (dbias) {
        for (int o = 0; o < OC; o++) {
            T sum = 0;
            for (int n = 0; n < N; n++) sum += dout[(size_t)n * ld_dout + o];
            dbias[o] += sum;
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// GPU: cuBLASLt, bf16 (or fp32) operands with fp32 accumulation.
//
// cuBLASLt is column-major; a row-major (R, C) matrix is the column-major (C, R) matrix, its transpose. So
//   forward   out^T (OC, N)    = W (OC, C) . inp^T (C, N)      A = weight (op T), B = inp,        m=OC n=N  k=C
//   dinp      dinp^T (C, N)    = W^T (C, OC) . dout^T (OC, N)  A = weight,        B = dout,       m=C  n=N  k=OC
//   dweight   dweight^T (C,OC) = inp^T (C, N) . dout (N, OC)   A = inp,           B = dout (op T), m=C  n=OC k=N
// The bias is cuBLASLt's BIAS epilogue (a vector over m, added to every column); dweight accumulates in fp32
// (beta = 1) straight from the bf16 operands; dbias is a small fixed-order column sum (no atomics).
// The plan of every distinct call (descriptors, layouts, chosen algorithm) is made once and cached.

#ifdef __CUDACC__
#include <map>
#include <tuple>

template <typename T> constexpr cudaDataType_t cuda_data_type();
template <> constexpr cudaDataType_t cuda_data_type<float>() { return CUDA_R_32F; }
template <> constexpr cudaDataType_t cuda_data_type<__nv_bfloat16>() { return CUDA_R_16BF; }

// Largest power of two (<= 256) dividing x: the alignment cuBLASLt may assume of an address or a row pitch.
inline int alignment_of(uintptr_t x) {
    int align = 256;
    while (align > 1 && x % align) align /= 2;
    return align;
}

struct MatmulPlan {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

// D (m, n) = alpha * op(A) (m, k) . op(B) (k, n) + beta * D (+ bias over m), column-major, D also the C input.
// ldb, ldd: B's and D's leading dimensions when they are blocks of wider matrices (0: packed).
template <typename TAB, typename TD>
void matmul_cublaslt(TD* d, const TAB* a, const TAB* b, const TD* bias, int m, int n, int k, bool trans_a, bool trans_b,
                     float beta, Stream st, int ldb = 0, int ldd = 0) {
    CublasLtState& s = cublaslt_state();
    if (!s.handle) fatal("matmul before device_init(): the cuBLASLt handle does not exist yet");
    const int lda = trans_a ? k : m;
    if (ldb == 0) ldb = trans_b ? n : k;
    if (ldd == 0) ldd = m;
    // what the algorithm may assume: each pointer's alignment, capped by the alignment of its leading dimension
    const int align_a = std::min(alignment_of((uintptr_t)a), alignment_of((size_t)lda * sizeof(TAB)));
    const int align_b = std::min(alignment_of((uintptr_t)b), alignment_of((size_t)ldb * sizeof(TAB)));
    const int align_d = std::min(alignment_of((uintptr_t)d), alignment_of((size_t)ldd * sizeof(TD)));
    const int align_bias = bias ? alignment_of((uintptr_t)bias) : 256;
    typedef std::tuple<int, int, int, bool, bool, bool, bool, int, int, int, int, int, int, int> Key;
    const Key key(m, n, k, trans_a, trans_b, bias != nullptr, beta != 0.0f, align_a, align_b, align_d, align_bias,
                  (int)cuda_data_type<TAB>() * 100 + (int)cuda_data_type<TD>(), ldb, ldd);
    static std::map<Key, MatmulPlan> plans;
    auto it = plans.find(key);
    if (it == plans.end()) {
        MatmulPlan p;
        cublasCheck(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
        cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
        if (bias) {
            const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
            cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
            const cudaDataType_t bias_type = cuda_data_type<TD>();
            cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
        }
        cublasCheck(cublasLtMatrixLayoutCreate(&p.a, cuda_data_type<TAB>(), trans_a ? k : m, trans_a ? m : k, lda));
        cublasCheck(cublasLtMatrixLayoutCreate(&p.b, cuda_data_type<TAB>(), trans_b ? n : k, trans_b ? k : n, ldb));
        cublasCheck(cublasLtMatrixLayoutCreate(&p.c, cuda_data_type<TD>(), m, n, ldd));
        cublasLtMatmulPreference_t pref;
        cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &s.workspace_bytes, sizeof(size_t)));
        const uint32_t aa = align_a, ab = align_b, ad = align_d;
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ad, sizeof(ad)));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ad, sizeof(ad)));
        cublasLtMatmulHeuristicResult_t heuristic;
        int found = 0;
        cublasCheck(cublasLtMatmulAlgoGetHeuristic(s.handle, p.op, p.a, p.b, p.c, p.c, pref, 1, &heuristic, &found));
        cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
        if (!found)
            fatal("cuBLASLt has no algorithm for m=%d n=%d k=%d transA=%d transB=%d bias=%d (alignments %d/%d/%d bytes)",
                  m, n, k, trans_a, trans_b, bias != nullptr, align_a, align_b, align_d);
        p.algo = heuristic.algo;
        it = plans.emplace(key, p).first;
    }
    const MatmulPlan& p = it->second;
    if (bias) cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    const float alpha = 1.0f;
    cublasCheck(cublasLtMatmul(s.handle, p.op, &alpha, a, p.a, b, p.b, &beta, d, p.c, d, p.c, &p.algo, s.workspace,
                               s.workspace_bytes, st));
}

// dbias[o] += sum_n dout[n, o]: one block per column, a fixed-order block reduction (deterministic).
__global__ void matmul_bias_backward_kernel(floatS* dbias, const floatX* dout, int N, int ld_dout) {
    __shared__ float scratch[32];
    const int o = blockIdx.x;
    float sum = 0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) sum += to_float(dout[(size_t)n * ld_dout + o]);
    sum = block_reduce_sum(sum, scratch);
    if (threadIdx.x == 0) dbias[o] += sum;
}

inline void matmul_forward(floatX* out, const floatX* inp, const floatX* weight, const floatX* bias,
                           int N, int C, int OC, Stream st, bool accumulate = false, int ldo = 0) {
    if (N == 0) return;
    matmul_cublaslt(out, weight, inp, bias, OC, N, C, true, false, accumulate ? 1.0f : 0.0f, st, 0, ldo);
}
inline void matmul_backward(floatX* dinp, floatS* dweight, floatS* dbias, const floatX* dout, const floatX* inp,
                            const floatX* weight, int N, int C, int OC, bool accumulate_dinp, Stream st, int ld_dout = 0) {
    if (N == 0) return;
    if (ld_dout == 0) ld_dout = OC;
    if (dinp) matmul_cublaslt(dinp, weight, dout, (const floatX*)nullptr, C, N, OC, false, false, accumulate_dinp ? 1.0f : 0.0f, st, ld_dout);
    if (dweight) matmul_cublaslt(dweight, inp, dout, (const floatS*)nullptr, C, OC, N, false, true, 1.0f, st, ld_dout);
    if (dbias) {
        matmul_bias_backward_kernel<<<OC, 256, 0, st>>>(dbias, dout, N, ld_dout);
        cudaCheckLaunch("matmul_bias_backward_kernel");
    }
}
#else  // CPU launchers
inline void matmul_forward(floatX* out, const floatX* inp, const floatX* weight, const floatX* bias,
                           int N, int C, int OC, Stream, bool accumulate = false, int ldo = 0) {
    matmul_forward_ref(out, inp, weight, bias, N, C, OC, accumulate, ldo);
}
inline void matmul_backward(floatX* dinp, floatS* dweight, floatS* dbias, const floatX* dout, const floatX* inp,
                            const floatX* weight, int N, int C, int OC, bool accumulate_dinp, Stream, int ld_dout = 0) {
    matmul_backward_ref(dinp, dweight, dbias, dout, inp, weight, N, C, OC, accumulate_dinp, ld_dout);
}
#endif
