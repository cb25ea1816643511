// Multi-head attention with an optional key mask, optional causal masking and grouped-query attention
// (flash-attention semantics: the Tq x Tk matrix of probabilities is never stored; the backward pass recomputes
// it from the saved log-sum-exp).
//
//   for batch b, query head h, query i: kv head g = h / (NH / NKV) (GQA, as Hugging Face's repeat_kv: the NH / NKV
//   query heads h = g (NH / NKV) .. (g + 1)(NH / NKV) - 1 share key/value head g; NKV = NH is plain multi-head
//   attention). Query i sees key j iff key_mask[b, j] != 0 (every key when key_mask is null) and, when causal,
//   j <= i + (Tk - Tq) (bottom-right aligned, as flash-attn: with Tq = Tk, j <= i). Over the keys it sees:
//     s_ij  = q_i . k_j / sqrt(HD)                     (q of head h, k and v of head g)
//     lse_i = log sum_j exp(s_ij) ,  p_ij = exp(s_ij - lse_i) ,  out_i = sum_j p_ij v_j
//   A query that sees no key gets out_i = 0 and lse_i = -inf; it passes no gradient (upstream: NaN there).
//
//   backward  D_i = dout_i . out_i ,  dp_ij = dout_i . v_j ,  ds_ij = p_ij (dp_ij - D_i)
//             dq_i = sum_j ds_ij k_j / sqrt(HD) ,  dk_j = sum_i ds_ij q_i / sqrt(HD) ,  dv_j = sum_i p_ij dout_i
//             where dk, dv of kv head g also sum over its NH / NKV query heads (in head order).
//
// Layout: query i of head h of batch b is q + (b*Tq + i)*q_stride + h*HD; key j of kv head g is
// k + (b*Tk + j)*kv_stride + g*HD (likewise v). Self-attention reads straight from fused rows
// [q: NH*HD | k: NKV*HD | v: NKV*HD] (q_stride = kv_stride = (NH + 2 NKV)*HD, k = q + NH*HD, v = k + NKV*HD);
// cross-attention (the demo-set encoder: 16 queries over <= 10 demo encodings) passes separate tensors.
// out, dout: (B, Tq, NH*HD). lse: (B, NH, Tq), fp32. NH must be a multiple of NKV. dq, dk, dv have the layouts of
// q, k, v (dk, dv: NKV heads) and are overwritten (=); in self-attention they are the three column blocks of one
// dqkv tensor. Every output element has a single writer that sums in a fixed order: deterministic, no atomics.
#pragma once
#include <math.h>
#include <vector>
#include "../common/device.h"
#include "matmul.cuh"

// ----------------------------------------------------------------------------------------------------------
// CPU reference: per (batch, head) pair, the textbook matrix form with small GEMMs (gemm_ref):
//   forward   S = Q K^T ; P = softmax(S / sqrt(HD)) ; O = P V
//   backward  dP = dO V^T ; dS = P o (dP - D) / sqrt(HD) ; dQ = dS K ; dK = dS^T Q ; dV = P^T dO
// The forward takes one (batch, query head) pair per OpenMP iteration, the backward one (batch, kv head) pair,
// which runs its NH / NKV query heads in order and sums their dK, dV (its Tq x Tk scores live in a buffer of
// that iteration): every output element has a single writer.

// NH query heads share NKV key/value heads: NKV >= 1 must divide NH.
inline void attention_check_heads(int NH, int NKV) {
    if (NKV < 1 || NH < 0 || NH % NKV != 0)
        fatal("attention: NH = %d query heads must be a multiple of NKV = %d key/value heads (NKV >= 1)", NH, NKV);
}
// Whether query i may see key j: the key mask (this sample's (Tk) row, or null) and the causal cut.
inline bool attention_visible(const uint8_t* mask, bool causal, int i, int j, int Tq, int Tk) {
    return (!mask || mask[j]) && (!causal || j <= i + (Tk - Tq));
}

// Copies head h's (T, HD) slice between rows of width `stride` and a contiguous (T, HD) matrix.
template <typename T>
void head_gather(T* dst, const T* rows, int T_len, int HD, int stride) {
    for (int t = 0; t < T_len; t++)
        for (int d = 0; d < HD; d++) dst[(size_t)t * HD + d] = rows[(size_t)t * stride + d];
}
template <typename T>
void head_scatter(T* rows, const T* src, int T_len, int HD, int stride) {
    for (int t = 0; t < T_len; t++)
        for (int d = 0; d < HD; d++) rows[(size_t)t * stride + d] = src[(size_t)t * HD + d];
}
template <typename T>
void transpose_ref(T* dst, const T* src, int rows, int cols) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
}

// K (Tk, HD), K^T (HD, Tk) and V (Tk, HD) of one (batch, kv head) pair.
template <typename T>
struct KVHead {
    std::vector<T> k, kt, v;
    KVHead(const T* k_rows, const T* v_rows, int Tk, int HD, int kv_stride)
        : k((size_t)Tk * HD), kt((size_t)HD * Tk), v((size_t)Tk * HD) {
        head_gather(k.data(), k_rows, Tk, HD, kv_stride);
        head_gather(v.data(), v_rows, Tk, HD, kv_stride);
        transpose_ref(kt.data(), k.data(), Tk, HD);
    }
};

template <typename T>
void attention_forward_ref(T* out, T* lse, const T* q, const T* k, const T* v, const uint8_t* key_mask, int B, int Tq,
                           int Tk, int NH, int NKV, int HD, int q_stride, int kv_stride, bool causal) {
    attention_check_heads(NH, NKV);
    const T scale = T(1) / sqrt((T)HD);
    const int C = NH * HD, group = NH / NKV;
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH, g = h / group;
        const uint8_t* mask = key_mask ? key_mask + (size_t)b * Tk : nullptr;
        KVHead<T> kv(k + (size_t)b * Tk * kv_stride + g * HD, v + (size_t)b * Tk * kv_stride + g * HD, Tk, HD, kv_stride);
        std::vector<T> qh((size_t)Tq * HD), p((size_t)Tq * Tk), o((size_t)Tq * HD);
        head_gather(qh.data(), q + (size_t)b * Tq * q_stride + h * HD, Tq, HD, q_stride);
        gemm_ref<T, false>(p.data(), qh.data(), kv.kt.data(), Tq, Tk, HD, false);        // S = Q K^T
        for (int i = 0; i < Tq; i++) {                                                   // P = softmax(S * scale)
            T* row = &p[(size_t)i * Tk];
            T maxval = -INFINITY;
            for (int j = 0; j < Tk; j++) {
                row[j] = attention_visible(mask, causal, i, j, Tq, Tk) ? row[j] * scale : -INFINITY;
                maxval = row[j] > maxval ? row[j] : maxval;
            }
            T sum = 0;
            for (int j = 0; j < Tk; j++) {
                row[j] = row[j] == -INFINITY ? T(0) : exp(row[j] - maxval);
                sum += row[j];
            }
            for (int j = 0; j < Tk; j++) row[j] = sum > 0 ? row[j] / sum : T(0);      // no visible key: P = 0
            lse[(size_t)bh * Tq + i] = sum > 0 ? maxval + log(sum) : -INFINITY;
        }
        gemm_ref<T, false>(o.data(), p.data(), kv.v.data(), Tq, HD, Tk, false);         // O = P V
        head_scatter(out + (size_t)b * Tq * C + h * HD, o.data(), Tq, HD, C);
    }
}

template <typename T>
void attention_backward_ref(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q, const T* k,
                            const T* v, const uint8_t* key_mask, int B, int Tq, int Tk, int NH, int NKV, int HD,
                            int q_stride, int kv_stride, bool causal) {
    attention_check_heads(NH, NKV);
    const T scale = T(1) / sqrt((T)HD);
    const int C = NH * HD, group = NH / NKV;
#pragma omp parallel for schedule(static)
    for (int bg = 0; bg < B * NKV; bg++) {
        const int b = bg / NKV, g = bg % NKV;
        const uint8_t* mask = key_mask ? key_mask + (size_t)b * Tk : nullptr;
        KVHead<T> kv(k + (size_t)b * Tk * kv_stride + g * HD, v + (size_t)b * Tk * kv_stride + g * HD, Tk, HD, kv_stride);
        std::vector<T> qh((size_t)Tq * HD), p((size_t)Tq * Tk), dp((size_t)Tq * Tk), vt((size_t)HD * Tk),
            d_o((size_t)Tq * HD), o((size_t)Tq * HD), gq((size_t)Tq * HD), gk((size_t)Tk * HD), gv((size_t)Tk * HD);
        transpose_ref(vt.data(), kv.v.data(), Tk, HD);
        for (int r = 0; r < group; r++) {                        // the query heads of kv head g, in order
            const int h = g * group + r;
            const size_t bh = (size_t)b * NH + h;
            head_gather(qh.data(), q + (size_t)b * Tq * q_stride + h * HD, Tq, HD, q_stride);
            head_gather(d_o.data(), dout + (size_t)b * Tq * C + h * HD, Tq, HD, C);
            head_gather(o.data(), out + (size_t)b * Tq * C + h * HD, Tq, HD, C);
            gemm_ref<T, false>(p.data(), qh.data(), kv.kt.data(), Tq, Tk, HD, false);    // S, then P from lse
            gemm_ref<T, false>(dp.data(), d_o.data(), vt.data(), Tq, Tk, HD, false);    // dP = dO V^T
            for (int i = 0; i < Tq; i++) {
                const T lse_i = lse[bh * Tq + i];
                T D = 0;
                for (int d = 0; d < HD; d++) D += d_o[(size_t)i * HD + d] * o[(size_t)i * HD + d];
                for (int j = 0; j < Tk; j++) {
                    T& pij = p[(size_t)i * Tk + j];
                    pij = (lse_i == -INFINITY || !attention_visible(mask, causal, i, j, Tq, Tk)) ? T(0)
                                                                                                 : exp(pij * scale - lse_i);
                    dp[(size_t)i * Tk + j] = pij * (dp[(size_t)i * Tk + j] - D) * scale;     // dS (scaled)
                }
            }
            gemm_ref<T, false>(gq.data(), dp.data(), kv.k.data(), Tq, HD, Tk, false);    // dQ = dS K
            head_scatter(dq + (size_t)b * Tq * q_stride + h * HD, gq.data(), Tq, HD, q_stride);
            gemm_ref<T, true>(gk.data(), dp.data(), qh.data(), Tk, HD, Tq, r > 0);       // dK (+)= dS^T Q
            gemm_ref<T, true>(gv.data(), p.data(), d_o.data(), Tk, HD, Tq, r > 0);       // dV (+)= P^T dO
        }
        head_scatter(dk + (size_t)b * Tk * kv_stride + g * HD, gk.data(), Tk, HD, kv_stride);
        head_scatter(dv + (size_t)b * Tk * kv_stride + g * HD, gv.data(), Tk, HD, kv_stride);
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void attention_forward(floatX* out, floatS* lse, const floatX* q, const floatX* k, const floatX* v,
                              const uint8_t* key_mask, int B, int Tq, int Tk, int NH, int NKV, int HD, int q_stride,
                              int kv_stride, bool causal, Stream) {
    attention_forward_ref(out, lse, q, k, v, key_mask, B, Tq, Tk, NH, NKV, HD, q_stride, kv_stride, causal);
}
inline void attention_backward(floatX* dq, floatX* dk, floatX* dv, const floatX* dout, const floatX* out,
                               const floatS* lse, const floatX* q, const floatX* k, const floatX* v,
                               const uint8_t* key_mask, int B, int Tq, int Tk, int NH, int NKV, int HD, int q_stride,
                               int kv_stride, bool causal, Stream) {
    attention_backward_ref(dq, dk, dv, dout, out, lse, q, k, v, key_mask, B, Tq, Tk, NH, NKV, HD, q_stride, kv_stride,
                           causal);
}
#endif

// ==========================================================================================================
// GPU: flash attention (FlashAttention-2 style), deterministic.
//
// Math. Scores are kept in log2 units, s2 = (q . k) * scale * log2(e), so the exponentials are exp2. A key
// masked out (key_mask 0, past Tk in a ragged last tile, or in the query's future when causal) gets the bias
// -inf added to its score.
//   forward (per query row, streaming over tiles of keys, the online softmax):
//     m' = max(m, max_j s2_j) ;  alpha = exp2(m - m') ;  p_j = exp2(s2_j - m')
//     l' = alpha l + sum_j p_j ;  o' = alpha o + sum_j p_j v_j          (m = -inf, l = 0, o = 0 at the start)
//     out = o / l ,  lse = (m + log2 l) ln 2 ;  no valid key: l = 0, out = 0, lse = -inf
//     While all keys seen so far are masked, m = -inf: exponents are taken against 0 instead (softmax_pivot),
//     so that exp2(-inf - m) is 0 and never exp2(-inf + inf) = NaN.
//   backward:  D_i = dout_i . out_i  (a small kernel, fp32, (B, NH, Tq)), then P is recomputed from lse:
//     p_ij = exp2(s2_ij - lse_i log2 e) ,  ds_ij = p_ij (dout_i . v_j - D_i)
//     dv_j = sum_i p_ij dout_i ,  dk_j = scale sum_i ds_ij q_i   (kernel 1: parallel over key tiles)
//     dq_i = scale sum_j ds_ij k_j                               (kernel 2: parallel over query tiles)
//     A query without a valid key (lse = -inf) takes lse = +inf here, which makes its p (and gradient) 0.
//
// Determinism: every output element is written by exactly one thread, which sums its terms in a fixed order
// (tiles in order, fixed mma and shuffle trees); no atomics. dq is recomputed in its own kernel (S and dP
// a second time, 7 matmuls in all against FlashAttention-2's 5) instead of being accumulated atomically.
//
// GQA. The kernels over queries (forward, dq) run per query head h and read kv head h / (NH / NKV). The dk, dv
// kernel runs per kv head g and streams the query tiles of its NH / NKV query heads one head after another
// through the same accumulators: the sum over the group has one writer and a fixed order.
// Causal. With off = Tk - Tq, query i sees keys j <= i + off. A block over queries stops after the key tile
// that holds its last query's last visible key; the dk, dv kernel starts at the first query that sees its first
// key (j0 - off). Those skipped tiles would contribute exactly 0: about half of the work at Tq = Tk. In the
// tiles that straddle the diagonal the scores with j > i + off take -inf (p = 0), as a masked key does.
//
// Tensor-core kernels (bf16, HD in {16, 32, 64, 128}, templated on HD). One warp owns 16*RM rows (queries, or
// keys in the dk/dv kernel) and computes with mma.sync.m16n8k16 (bf16 in, fp32 accumulate); a block is W
// warps (<= 8) and streams tiles of the other side through double-buffered shared memory (cp.async, the load
// of tile t+1 in flight while tile t is used). Shared tiles are rows of HD bf16 padded by 8 (16 bytes), so the
// 8 row addresses of an ldmatrix fall in 8 different bank groups.
//   forward   block: 16*RM*W queries (Q tile, loaded once); streams key tiles of BC = 64 (32 for HD = 128):
//             S = Q K^T and O += P V per warp, P never leaves registers (the accumulator layout of S is the
//             A-operand layout of P V). smem: (16 RM W + 4 BC)(HD + 8) bf16 + 2 BC floats (HD 64, RM 2, W 4:
//             55 KB).
//   dk, dv    block: 16*W keys of a kv head (K, V tiles loaded once); streams query tiles of BQ = 64 (32 for
//             HD = 128) of each of its query heads with their dout rows, lse and D: S^T = K Q^T, dP^T = V dO^T,
//             dV += P^T dO, dK += dS^T Q.
//   dq        block: 16*W queries (Q, dO tiles loaded once); streams key tiles of BC = 64 (32 for HD = 128):
//             S = Q K^T, dP = dO V^T, dQ += dS K.
// Rows past Tq or Tk in a ragged tile are loaded as zeros (cp.async zero-fill), take no part (bias -inf,
// lse +inf) and are not stored.
//
// SIMT kernels (any floatX, any HD <= 128 that is a multiple of 8; exact fp32 math: the FP32 build's kernels
// and the fallback): one warp per row (a query, or a key in the dk/dv kernel), W warps per block share tiles
// of 32 rows of the other side, converted to fp32 in shared memory. Lane j computes the dot products with row
// j of the tile; the weighted sums over the tile then run with lane d owning columns d, d+32, d+64, d+96,
// the tile's weights broadcast by shuffles in order j = 0..31.

#ifdef __CUDACC__
#include <initializer_list>
#include <type_traits>

static constexpr float ATT_LOG2E = 1.4426950408889634f;
static constexpr float ATT_LN2 = 0.6931471805599453f;

// 0 for a key that takes part, -inf for one masked out or past Tk. `mask` is this sample's (Tk) row or null.
__device__ inline float attention_key_bias(const uint8_t* mask, int j, int Tk) {
    return j < Tk && (!mask || mask[j]) ? 0.0f : -INFINITY;
}
// Causal, off = Tk - Tq: key j is in the future of query i (masked) iff j > i + off.
__device__ inline bool attention_future(bool causal, int i, int j, int off) { return causal && j > i + off; }
// The keys [0, end) that queries [0, i_end) may see: min(Tk, i_end + off) when causal (at least 0), else Tk.
__device__ inline int attention_key_end(bool causal, int i_end, int Tq, int Tk) {
    const int end = i_end + (Tk - Tq);
    return !causal ? Tk : end < 0 ? 0 : end < Tk ? end : Tk;
}
// The first query that may see key j0: j0 - off when causal (clamped to [0, Tq]), else 0.
__device__ inline int attention_query_begin(bool causal, int j0, int Tq, int Tk) {
    const int begin = j0 - (Tk - Tq);
    return !causal ? 0 : begin < 0 ? 0 : begin < Tq ? begin : Tq;
}
// The value exponents are taken against: the running max m, or 0 while it is -inf (all keys masked so far).
__device__ inline float softmax_pivot(float m) { return m == -INFINITY ? 0.0f : m; }
// lse as the backward uses it (times `unit`): +inf for a query without valid key, so that its p = exp(s - lse)
// is 0 (with a key bias of -inf too: -inf - inf = -inf, never NaN).
__device__ inline float lse_for_backward(float lse, float unit) { return lse == -INFINITY ? INFINITY : lse * unit; }

// The dynamic shared memory of every kernel below (one declaration: its type must agree across kernels).
__device__ inline unsigned char* attention_smem() {
    extern __shared__ __align__(16) unsigned char attention_smem_bytes[];
    return attention_smem_bytes;
}

// D[b, h, i] = dout_i . out_i over head h (fp32, in column order). One thread per (b, i, h), h fastest; V
// columns per load (16 bytes when the rows are 16-byte aligned, else 1).
template <typename T, int V>
__global__ void attention_backward_dot_kernel(float* D, const T* dout, const T* out, int B, int Tq, int NH, int HD) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * Tq * NH) return;
    const int h = (int)(idx % NH);
    const size_t bi = idx / NH;                                     // row b*Tq + i of dout, out (B, Tq, NH*HD)
    const T* a = dout + bi * NH * HD + h * HD;
    const T* o = out + bi * NH * HD + h * HD;
    float sum = 0.0f;
    for (int d = 0; d < HD; d += V) {
        if constexpr (V == 1) {
            sum += to_float(a[d]) * to_float(o[d]);
        } else {
            const Packed128<T> pa = load128(a + d), po = load128(o + d);
            for (int x = 0; x < V; x++) sum += to_float(pa[x]) * to_float(po[x]);
        }
    }
    D[(bi / Tq * NH + h) * Tq + bi % Tq] = sum;
}

template <typename T>
float* attention_backward_dot(const T* dout, const T* out, int B, int Tq, int NH, int HD, Stream stream) {
    float* D = device_scratch<struct AttentionD>((size_t)B * NH * Tq, stream, "attention backward D");   // (B, NH, Tq)
    if ((size_t)B * NH * Tq == 0) return D;                         // no query: nothing to compute (no 0-block grid)
    constexpr int V = Packed128<T>::size;
    const unsigned grid = (unsigned)CEIL_DIV((size_t)B * Tq * NH, (size_t)256);
    if (HD % V == 0 && (uintptr_t)dout % 16 == 0 && (uintptr_t)out % 16 == 0)
        attention_backward_dot_kernel<T, V><<<grid, 256, 0, stream>>>(D, dout, out, B, Tq, NH, HD);
    else
        attention_backward_dot_kernel<T, 1><<<grid, 256, 0, stream>>>(D, dout, out, B, Tq, NH, HD);
    cudaCheckLaunch("attention_backward_dot_kernel");
    return D;
}

inline void attention_check(int NH, int NKV, int HD, int warps) {
    attention_check_heads(NH, NKV);
    if (HD <= 0 || HD > 128 || HD % 8 != 0)
        fatal("attention: head size HD = %d is not supported (a multiple of 8 up to 128)", HD);
    if (warps < 1 || warps > 8) fatal("attention: %d warps per block (1 to 8)", warps);
}

// ----------------------------------------------------------------------------------------------------------
// SIMT kernels

#define SIMT_TILE 32          // rows per tile of the streamed side: one per lane
#define SIMT_DIMS 4           // columns per lane: d = lane + 32c, c < 4 (HD <= 128)

// Rows [r0, r0 + 32) of one head (row pitch `stride`) into fp32 shared memory of pitch HD + 1 (lane r reading
// row r hits bank (r (HD + 1) + d) % 32: conflict-free); rows at or past n_rows are zero.
template <typename T>
__device__ void simt_load_tile(float* tile, const T* head, int stride, int r0, int n_rows, int HD) {
    for (int e = threadIdx.x; e < SIMT_TILE * HD; e += blockDim.x) {
        const int r = e / HD, d = e % HD;
        tile[r * (HD + 1) + d] = r0 + r < n_rows ? to_float(head[(size_t)(r0 + r) * stride + d]) : 0.0f;
    }
}
// Row r of one head into a warp's fp32 row (zeros when r >= n_rows).
template <typename T>
__device__ void simt_load_row(float* row, const T* head, int stride, int r, int n_rows, int HD) {
    for (int d = threadIdx.x % 32; d < HD; d += 32) row[d] = r < n_rows ? to_float(head[(size_t)r * stride + d]) : 0.0f;
}
__device__ inline float simt_dot(const float* a, const float* b, int HD) {
    float s = 0.0f;
    for (int d = 0; d < HD; d++) s += a[d] * b[d];
    return s;
}
// acc[c] += sum_j w_j tile[j][lane + 32c], w_j held by lane j, in order j = 0..31.
__device__ inline void simt_accumulate(float (&acc)[SIMT_DIMS], float w, const float* tile, int HD) {
    const int lane = threadIdx.x % 32;
    for (int j = 0; j < SIMT_TILE; j++) {
        const float wj = __shfl_sync(0xffffffff, w, j);
#pragma unroll
        for (int c = 0; c < SIMT_DIMS; c++)
            if (lane + 32 * c < HD) acc[c] += wj * tile[j * (HD + 1) + lane + 32 * c];
    }
}
template <typename T>
__device__ void simt_store_row(T* row, const float (&acc)[SIMT_DIMS], float mult, int HD) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int c = 0; c < SIMT_DIMS; c++)
        if (lane + 32 * c < HD) row[lane + 32 * c] = (T)(acc[c] * mult);
}

// grid (ceil(Tq / W), NH, B), W warps: warp w handles query blockIdx.x * W + w of head blockIdx.y.
// smem: K, V tiles (32, HD + 1), the warps' query rows (W, HD), the tile's key bias (32): floats.
template <typename T>
__global__ void attention_forward_simt_kernel(T* out, float* lse, const T* q, const T* k, const T* v,
                                              const uint8_t* key_mask, int Tq, int Tk, int NH, int NKV, int HD,
                                              int q_stride, int kv_stride, bool causal, float scale) {
    const int W = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV), i = blockIdx.x * W + warp;
    float* Ks = (float*)attention_smem();
    float* Vs = Ks + SIMT_TILE * (HD + 1);
    float* q_row = Vs + SIMT_TILE * (HD + 1) + warp * HD;
    float* bias = Vs + SIMT_TILE * (HD + 1) + W * HD;
    const T* k_head = k + (size_t)b * Tk * kv_stride + g * HD;
    const T* v_head = v + (size_t)b * Tk * kv_stride + g * HD;
    const uint8_t* mask = key_mask ? key_mask + (size_t)b * Tk : nullptr;
    simt_load_row(q_row, q + (size_t)b * Tq * q_stride + h * HD, q_stride, i, Tq, HD);

    float m = -INFINITY, l = 0.0f, o[SIMT_DIMS] = {};
    const int j_end = attention_key_end(causal, min(((int)blockIdx.x + 1) * W, Tq), Tq, Tk);
    for (int j0 = 0; j0 < j_end; j0 += SIMT_TILE) {
        __syncthreads();                                            // the previous tile is used up
        simt_load_tile(Ks, k_head, kv_stride, j0, Tk, HD);
        simt_load_tile(Vs, v_head, kv_stride, j0, Tk, HD);
        if (threadIdx.x < SIMT_TILE) bias[threadIdx.x] = attention_key_bias(mask, j0 + threadIdx.x, Tk);
        __syncthreads();
        float s = simt_dot(q_row, Ks + lane * (HD + 1), HD) * scale + bias[lane];         // key j0 + lane
        if (attention_future(causal, i, j0 + lane, Tk - Tq)) s = -INFINITY;
        const float m_new = fmaxf(m, warp_reduce_max(s)), pivot = softmax_pivot(m_new);
        const float alpha = expf(m - pivot), p = expf(s - pivot);
        l = l * alpha + warp_reduce_sum(p);
        for (int c = 0; c < SIMT_DIMS; c++) o[c] *= alpha;
        simt_accumulate(o, p, Vs, HD);
        m = m_new;
    }
    if (i < Tq) {
        simt_store_row(out + ((size_t)b * Tq + i) * NH * HD + h * HD, o, l > 0.0f ? 1.0f / l : 0.0f, HD);
        if (lane == 0) lse[((size_t)b * NH + h) * Tq + i] = l > 0.0f ? m + logf(l) : -INFINITY;
    }
}

// dk, dv: grid (ceil(Tk / W), NKV, B), warp w handles key blockIdx.x * W + w of kv head blockIdx.y, streaming
// tiles of 32 queries of each of its query heads in turn.
// smem: Q, dO tiles (32, HD + 1), the warps' k and v rows (W, HD) each, the tile's lse and D (32) each.
template <typename T>
__global__ void attention_backward_dkdv_simt_kernel(T* dk, T* dv, const T* dout, const float* lse, const float* D,
                                                    const T* q, const T* k, const T* v, const uint8_t* key_mask, int Tq,
                                                    int Tk, int NH, int NKV, int HD, int q_stride, int kv_stride,
                                                    bool causal, float scale) {
    const int W = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.z, g = blockIdx.y, group = NH / NKV, j = blockIdx.x * W + warp;
    float* Qs = (float*)attention_smem();
    float* dOs = Qs + SIMT_TILE * (HD + 1);
    float* k_row = dOs + SIMT_TILE * (HD + 1) + warp * HD;
    float* v_row = dOs + SIMT_TILE * (HD + 1) + (W + warp) * HD;
    float* lse_t = dOs + SIMT_TILE * (HD + 1) + 2 * W * HD;
    float* D_t = lse_t + SIMT_TILE;
    simt_load_row(k_row, k + (size_t)b * Tk * kv_stride + g * HD, kv_stride, j, Tk, HD);
    simt_load_row(v_row, v + (size_t)b * Tk * kv_stride + g * HD, kv_stride, j, Tk, HD);
    const float kbias = attention_key_bias(key_mask ? key_mask + (size_t)b * Tk : nullptr, j, Tk);

    float dk_acc[SIMT_DIMS] = {}, dv_acc[SIMT_DIMS] = {};
    const int i_begin = attention_query_begin(causal, (int)blockIdx.x * W, Tq, Tk);
    for (int h = g * group; h < (g + 1) * group; h++) {            // the query heads of kv head g, in order
        const T* q_head = q + (size_t)b * Tq * q_stride + h * HD;
        const T* do_head = dout + (size_t)b * Tq * NH * HD + h * HD;
        const float* lse_bh = lse + ((size_t)b * NH + h) * Tq;
        const float* D_bh = D + ((size_t)b * NH + h) * Tq;
        for (int i0 = i_begin; i0 < Tq; i0 += SIMT_TILE) {
            __syncthreads();
            simt_load_tile(Qs, q_head, q_stride, i0, Tq, HD);
            simt_load_tile(dOs, do_head, NH * HD, i0, Tq, HD);
            if (threadIdx.x < SIMT_TILE) {
                const int i = i0 + threadIdx.x;
                lse_t[threadIdx.x] = i < Tq ? lse_for_backward(lse_bh[i], 1.0f) : INFINITY;
                D_t[threadIdx.x] = i < Tq ? D_bh[i] : 0.0f;
            }
            __syncthreads();
            const float s = simt_dot(k_row, Qs + lane * (HD + 1), HD) * scale;             // query i0 + lane
            const float dp = simt_dot(v_row, dOs + lane * (HD + 1), HD);
            const float p = attention_future(causal, i0 + lane, j, Tk - Tq) ? 0.0f : expf(s + (kbias - lse_t[lane]));
            const float ds = p * (dp - D_t[lane]);
            simt_accumulate(dv_acc, p, dOs, HD);
            simt_accumulate(dk_acc, ds, Qs, HD);
        }
    }
    if (j < Tk) {
        const size_t row = ((size_t)b * Tk + j) * kv_stride + g * HD;
        simt_store_row(dk + row, dk_acc, scale, HD);
        simt_store_row(dv + row, dv_acc, 1.0f, HD);
    }
}

// dq: grid (ceil(Tq / W), NH, B), warp w handles query blockIdx.x * W + w of head blockIdx.y, streaming tiles of
// 32 keys. smem: K, V tiles (32, HD + 1), the warps' q and dout rows (W, HD) each, the tile's key bias (32).
template <typename T>
__global__ void attention_backward_dq_simt_kernel(T* dq, const T* dout, const float* lse, const float* D, const T* q,
                                                  const T* k, const T* v, const uint8_t* key_mask, int Tq, int Tk, int NH,
                                                  int NKV, int HD, int q_stride, int kv_stride, bool causal, float scale) {
    const int W = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV), i = blockIdx.x * W + warp;
    float* Ks = (float*)attention_smem();
    float* Vs = Ks + SIMT_TILE * (HD + 1);
    float* q_row = Vs + SIMT_TILE * (HD + 1) + warp * HD;
    float* do_row = Vs + SIMT_TILE * (HD + 1) + (W + warp) * HD;
    float* bias = Vs + SIMT_TILE * (HD + 1) + 2 * W * HD;
    const T* k_head = k + (size_t)b * Tk * kv_stride + g * HD;
    const T* v_head = v + (size_t)b * Tk * kv_stride + g * HD;
    const uint8_t* mask = key_mask ? key_mask + (size_t)b * Tk : nullptr;
    simt_load_row(q_row, q + (size_t)b * Tq * q_stride + h * HD, q_stride, i, Tq, HD);
    simt_load_row(do_row, dout + (size_t)b * Tq * NH * HD + h * HD, NH * HD, i, Tq, HD);
    const size_t bhi = ((size_t)b * NH + h) * Tq + i;
    const float lse_i = i < Tq ? lse_for_backward(lse[bhi], 1.0f) : INFINITY, D_i = i < Tq ? D[bhi] : 0.0f;

    float dq_acc[SIMT_DIMS] = {};
    const int j_end = attention_key_end(causal, min(((int)blockIdx.x + 1) * W, Tq), Tq, Tk);
    for (int j0 = 0; j0 < j_end; j0 += SIMT_TILE) {
        __syncthreads();
        simt_load_tile(Ks, k_head, kv_stride, j0, Tk, HD);
        simt_load_tile(Vs, v_head, kv_stride, j0, Tk, HD);
        if (threadIdx.x < SIMT_TILE) bias[threadIdx.x] = attention_key_bias(mask, j0 + threadIdx.x, Tk);
        __syncthreads();
        const float s = simt_dot(q_row, Ks + lane * (HD + 1), HD) * scale;                 // key j0 + lane
        const float dp = simt_dot(do_row, Vs + lane * (HD + 1), HD);
        const float p = attention_future(causal, i, j0 + lane, Tk - Tq) ? 0.0f : expf(s + (bias[lane] - lse_i));
        simt_accumulate(dq_acc, p * (dp - D_i), Ks, HD);
    }
    if (i < Tq) simt_store_row(dq + ((size_t)b * Tq + i) * q_stride + h * HD, dq_acc, scale, HD);
}

// Launchers of the SIMT version; `warps` (1..8) warps per block.
template <typename T>
void attention_forward_simt(T* out, float* lse, const T* q, const T* k, const T* v, const uint8_t* key_mask, int B,
                            int Tq, int Tk, int NH, int NKV, int HD, int q_stride, int kv_stride, int warps, bool causal,
                            Stream stream) {
    attention_check(NH, NKV, HD, warps);
    const size_t smem = (2 * SIMT_TILE * (HD + 1) + warps * HD + SIMT_TILE) * sizeof(float);
    attention_forward_simt_kernel<T><<<dim3(CEIL_DIV(Tq, warps), NH, B), warps * 32, smem, stream>>>(
        out, lse, q, k, v, key_mask, Tq, Tk, NH, NKV, HD, q_stride, kv_stride, causal, 1.0f / sqrtf((float)HD));
    cudaCheckLaunch("attention_forward_simt_kernel");
}

template <typename T>
void attention_backward_simt(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse, const T* q, const T* k,
                             const T* v, const uint8_t* key_mask, int B, int Tq, int Tk, int NH, int NKV, int HD,
                             int q_stride, int kv_stride, int warps, bool causal, Stream stream) {
    attention_check(NH, NKV, HD, warps);
    const float scale = 1.0f / sqrtf((float)HD);
    const float* D = attention_backward_dot(dout, out, B, Tq, NH, HD, stream);
    const size_t smem = (2 * SIMT_TILE * (HD + 1) + 2 * warps * HD + 2 * SIMT_TILE) * sizeof(float);
    if ((size_t)B * NH == 0) return;
    if (Tk > 0) {                 // (Tq = 0: the kernel writes dk = dv = 0, as the reference)
        attention_backward_dkdv_simt_kernel<T><<<dim3(CEIL_DIV(Tk, warps), NKV, B), warps * 32, smem, stream>>>(
            dk, dv, dout, lse, D, q, k, v, key_mask, Tq, Tk, NH, NKV, HD, q_stride, kv_stride, causal, scale);
        cudaCheckLaunch("attention_backward_dkdv_simt_kernel");
    }
    if (Tq > 0) {                 // (Tk = 0: the kernel writes dq = 0)
        attention_backward_dq_simt_kernel<T><<<dim3(CEIL_DIV(Tq, warps), NH, B), warps * 32, smem, stream>>>(
            dq, dout, lse, D, q, k, v, key_mask, Tq, Tk, NH, NKV, HD, q_stride, kv_stride, causal, scale);
        cudaCheckLaunch("attention_backward_dq_simt_kernel");
    }
}

// ----------------------------------------------------------------------------------------------------------
// Tensor-core kernels (bf16)

typedef __nv_bfloat16 bf16;
#define TC_PAD 8              // bf16 of padding per shared row
#define TC_MAX_WARPS 8

// The streamed tile: 64 rows, 32 for HD = 128 (keeps the per-warp score and gradient tiles in registers).
HOST_DEVICE constexpr int tc_tile(int HD) { return HD <= 64 ? 64 : 32; }

// Fragments of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), g = lane / 4, t = lane % 4:
//   accumulator c[e] (16 x 8 fp32) is element (row g + 8 (e / 2), col 2t + e % 2)
//   A a[r] (16 x 16 bf16, two per register) is (row g + 8 (r % 2), cols 2t + 8 (r / 2) + {0, 1})
//   B b[r] (16 x 8, k x n) is (k = 2t + 8r + {0, 1}, n = g)
HOST_DEVICE inline int frag_row(int lane, int e) { return lane / 4 + 8 * (e / 2); }
HOST_DEVICE inline int frag_col(int lane, int e) { return 2 * (lane % 4) + e % 2; }
// ldmatrix.x4 takes one row address per lane (lanes 8m .. 8m+7: the 8 rows of matrix m, which lands in register
// m; lane L gets row L / 4, cols 2 (L % 4) + {0, 1} of each, or that of the transpose with .trans). Two lane
// patterns over a 16 x 16 block of a row-major shared tile:
//   ldsm_a: matrices (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15): an A fragment; with .trans,
//           b0 b1 of n-tile 0 then of n-tile 1 of a B operand stored as (k, n) rows
//   ldsm_b: matrices (0-7, 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15): b0 b1 of n-tile 0 then of n-tile 1 of
//           a B operand stored as (n, k) rows, i.e. B = M^T for the row-major tile M
HOST_DEVICE inline int ldsm_a_row(int lane) { return lane % 8 + 8 * (lane / 8 % 2); }
HOST_DEVICE inline int ldsm_a_col(int lane) { return 8 * (lane / 16); }
HOST_DEVICE inline int ldsm_b_row(int lane) { return lane % 8 + 8 * (lane / 16); }
HOST_DEVICE inline int ldsm_b_col(int lane) { return 8 * (lane / 8 % 2); }

__device__ inline uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
// 16 bytes global -> shared, asynchronously; src_bytes = 0 writes 16 zero bytes and reads nothing.
__device__ inline void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
__device__ inline void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
// d (16 x 8 fp32) += a (16 x 16 bf16) b (16 x 8 bf16)
__device__ inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ inline uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);               // lo in the low half: the lower column
    return *reinterpret_cast<uint32_t*>(&v);
}

// acc (16RM x N, the warp's rows) += A B^T. A: (16RM, K) bf16 rows of pitch lda in shared memory;
// B: (N, K) bf16 rows of pitch ldb in shared memory. K and N multiples of 16.
template <int RM, int K, int N>
__device__ inline void warp_mma_abt(float (&acc)[RM][N / 8][4], const bf16* A, int lda, const bf16* B, int ldb) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int ks = 0; ks < K / 16; ks++) {
        uint32_t a[RM][4];
#pragma unroll
        for (int m = 0; m < RM; m++)
            ldmatrix_x4(a[m], A + (m * 16 + ldsm_a_row(lane)) * lda + ks * 16 + ldsm_a_col(lane));
#pragma unroll
        for (int n = 0; n < N / 16; n++) {
            uint32_t b[4];
            ldmatrix_x4(b, B + (n * 16 + ldsm_b_row(lane)) * ldb + ks * 16 + ldsm_b_col(lane));
#pragma unroll
            for (int m = 0; m < RM; m++) {
                mma_bf16_16816(acc[m][2 * n], a[m], b[0], b[1]);
                mma_bf16_16816(acc[m][2 * n + 1], a[m], b[2], b[3]);
            }
        }
    }
}

// acc (16RM x N) += C B. C: (16RM, K) fp32 accumulators of an earlier product of this warp, rounded to bf16
// (the accumulators of n-tiles 2k, 2k+1 are the A fragment of k-step k); B: (K, N) bf16 rows of pitch ldb.
template <int RM, int K, int N>
__device__ inline void warp_mma_cb(float (&acc)[RM][N / 8][4], const float (&c)[RM][K / 8][4], const bf16* B, int ldb) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int ks = 0; ks < K / 16; ks++) {
        uint32_t a[RM][4];
#pragma unroll
        for (int m = 0; m < RM; m++) {
            a[m][0] = pack_bf16x2(c[m][2 * ks][0], c[m][2 * ks][1]);
            a[m][1] = pack_bf16x2(c[m][2 * ks][2], c[m][2 * ks][3]);
            a[m][2] = pack_bf16x2(c[m][2 * ks + 1][0], c[m][2 * ks + 1][1]);
            a[m][3] = pack_bf16x2(c[m][2 * ks + 1][2], c[m][2 * ks + 1][3]);
        }
#pragma unroll
        for (int n = 0; n < N / 16; n++) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, B + (ks * 16 + ldsm_a_row(lane)) * ldb + n * 16 + ldsm_a_col(lane));
#pragma unroll
            for (int m = 0; m < RM; m++) {
                mma_bf16_16816(acc[m][2 * n], a[m], b[0], b[1]);
                mma_bf16_16816(acc[m][2 * n + 1], a[m], b[2], b[3]);
            }
        }
    }
}

// Rows [r0, r0 + R) of one head (row pitch `stride`) into a shared tile of pitch HD + TC_PAD, by cp.async;
// rows at or past n_rows are zero-filled. Not committed: the caller groups the copies.
template <int HD>
__device__ inline void tc_load_rows(bf16* tile, const bf16* head, int stride, int r0, int R, int n_rows) {
    constexpr int CHUNKS = HD / 8;                                  // 16-byte chunks per row
    for (int c = threadIdx.x; c < R * CHUNKS; c += blockDim.x) {
        const int r = c / CHUNKS, col = c % CHUNKS * 8, row = r0 + r;
        const bool in = row < n_rows;
        cp_async16(tile + r * (HD + TC_PAD) + col, head + (size_t)(in ? row : 0) * stride + col, in ? 16 : 0);
    }
}
// Keys [j0, j0 + BC): K and V rows, and their bias (0 or -inf) with plain stores.
template <int HD, int BC>
__device__ inline void tc_load_keys(bf16* Ks, bf16* Vs, float* bias, const bf16* k_head, const bf16* v_head,
                                    int kv_stride, int j0, int Tk, const uint8_t* mask) {
    tc_load_rows<HD>(Ks, k_head, kv_stride, j0, BC, Tk);
    tc_load_rows<HD>(Vs, v_head, kv_stride, j0, BC, Tk);
    for (int j = threadIdx.x; j < BC; j += blockDim.x) bias[j] = attention_key_bias(mask, j0 + j, Tk);
}
// Stores the warp's accumulator rows r0 + (0 .. 16RM), each times mult[m][e / 2], as bf16 into rows of one head
// (pitch `stride`); rows at or past n_rows are skipped.
template <int RM, int HD>
__device__ inline void tc_store_rows(bf16* head, int stride, int r0, int n_rows, const float (&acc)[RM][HD / 8][4],
                                     const float (&mult)[RM][2]) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int m = 0; m < RM; m++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = r0 + m * 16 + frag_row(lane, 2 * r);
            if (row >= n_rows) continue;
            bf16* dst = head + (size_t)row * stride + frag_col(lane, 0);
#pragma unroll
            for (int n = 0; n < HD / 8; n++)
                *reinterpret_cast<__nv_bfloat162*>(dst + n * 8) =
                    __floats2bfloat162_rn(acc[m][n][2 * r] * mult[m][r], acc[m][n][2 * r + 1] * mult[m][r]);
        }
}

// Forward: grid (ceil(Tq / (16 RM W)), NH, B), W warps; warp w owns queries q0 + 16 RM w + (0 .. 16 RM) of head
// blockIdx.y. smem: Q (16 RM W, P), K and V (2, BC, P) each, bias (2, BC) floats; P = HD + TC_PAD.
template <int HD, int RM>
__global__ void __launch_bounds__(TC_MAX_WARPS * 32)
attention_forward_tc_kernel(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const uint8_t* key_mask,
                            int Tq, int Tk, int NH, int NKV, int q_stride, int kv_stride, bool causal, float scale_log2) {
    constexpr int P = HD + TC_PAD, BC = tc_tile(HD);
    const int W = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV), BR = 16 * RM * W, q0 = blockIdx.x * BR;
    const int qw = q0 + warp * 16 * RM, off = Tk - Tq;
    bf16* Qs = (bf16*)attention_smem();
    bf16* Ks = Qs + BR * P;
    bf16* Vs = Ks + 2 * BC * P;
    float* bias = (float*)(Vs + 2 * BC * P);
    const bf16* k_head = k + (size_t)b * Tk * kv_stride + g * HD;
    const bf16* v_head = v + (size_t)b * Tk * kv_stride + g * HD;
    const uint8_t* mask = key_mask ? key_mask + (size_t)b * Tk : nullptr;
    const int n_tiles = CEIL_DIV(attention_key_end(causal, min(q0 + BR, Tq), Tq, Tk), BC);
    if (n_tiles > 0) {                                              // (else no query here sees a key)
        tc_load_rows<HD>(Qs, q + (size_t)b * Tq * q_stride + h * HD, q_stride, q0, BR, Tq);
        tc_load_keys<HD, BC>(Ks, Vs, bias, k_head, v_head, kv_stride, 0, Tk, mask);
        cp_async_commit();
    }

    const bf16* Qw = Qs + warp * 16 * RM * P;
    float o[RM][HD / 8][4] = {}, m_run[RM][2], l_run[RM][2];       // this thread's rows: (m, r) = row 16m + g + 8r
#pragma unroll
    for (int m = 0; m < RM; m++)
        for (int r = 0; r < 2; r++) { m_run[m][r] = -INFINITY; l_run[m][r] = 0.0f; }
    for (int t = 0; t < n_tiles; t++) {
        cp_async_wait_all();
        __syncthreads();                                            // tile t is in; all warps are done with t-1
        if (t + 1 < n_tiles) {                                      // so its buffer takes tile t+1
            const int nb = (t + 1) % 2;
            tc_load_keys<HD, BC>(Ks + nb * BC * P, Vs + nb * BC * P, bias + nb * BC, k_head, v_head, kv_stride,
                                 (t + 1) * BC, Tk, mask);
            cp_async_commit();
        }
        const int cb = t % 2;
        const float* bias_t = bias + cb * BC;
        // causal: the tile's last key is in the future of the warp's first query (warp-uniform)
        const bool diagonal = causal && (t + 1) * BC - 1 > qw + off;
        float s[RM][BC / 8][4] = {};
        warp_mma_abt<RM, HD, BC>(s, Qw, P, Ks + cb * BC * P, P);              // S = Q K^T
#pragma unroll
        for (int m = 0; m < RM; m++) {
            float mx[2] = {m_run[m][0], m_run[m][1]};
#pragma unroll
            for (int n = 0; n < BC / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = n * 8 + frag_col(lane, e);
                    s[m][n][e] = fmaf(s[m][n][e], scale_log2, bias_t[j]);
                    if (diagonal && t * BC + j > qw + m * 16 + frag_row(lane, e) + off) s[m][n][e] = -INFINITY;
                    mx[e / 2] = fmaxf(mx[e / 2], s[m][n][e]);
                }
            float pivot[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {                           // a row lives in the 4 lanes of a quad
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 2));
                pivot[r] = softmax_pivot(mx[r]);
                const float alpha = exp2f(m_run[m][r] - pivot[r]);
                m_run[m][r] = mx[r];
                l_run[m][r] *= alpha;
#pragma unroll
                for (int n = 0; n < HD / 8; n++) { o[m][n][2 * r] *= alpha; o[m][n][2 * r + 1] *= alpha; }
            }
#pragma unroll
            for (int n = 0; n < BC / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    s[m][n][e] = exp2f(s[m][n][e] - pivot[e / 2]);
                    l_run[m][e / 2] += s[m][n][e];                  // this lane's part of the row sum
                }
        }
        warp_mma_cb<RM, BC, HD>(o, s, Vs + cb * BC * P, P);                   // O += P V
    }

    float inv_l[RM][2];
#pragma unroll
    for (int m = 0; m < RM; m++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float l = l_run[m][r];
            l += __shfl_xor_sync(0xffffffff, l, 1);
            l += __shfl_xor_sync(0xffffffff, l, 2);
            inv_l[m][r] = l > 0.0f ? 1.0f / l : 0.0f;
            const int row = qw + m * 16 + frag_row(lane, 2 * r);
            if (lane % 4 == 0 && row < Tq)
                lse[((size_t)b * NH + h) * Tq + row] = l > 0.0f ? (m_run[m][r] + log2f(l)) * ATT_LN2 : -INFINITY;
        }
    tc_store_rows<RM, HD>(out + (size_t)b * Tq * NH * HD + h * HD, NH * HD, qw, Tq, o, inv_l);
}

// Queries [i0, i0 + BQ): Q and dout rows (cp.async), lse (log2 units, +inf for none) and D (plain stores).
template <int HD, int BQ>
__device__ inline void tc_load_queries(bf16* Qs, bf16* dOs, float* lse_t, float* D_t, const bf16* q_head,
                                       const bf16* do_head, int q_stride, int do_stride, const float* lse_bh,
                                       const float* D_bh, int i0, int Tq) {
    tc_load_rows<HD>(Qs, q_head, q_stride, i0, BQ, Tq);
    tc_load_rows<HD>(dOs, do_head, do_stride, i0, BQ, Tq);
    for (int i = threadIdx.x; i < BQ; i += blockDim.x) {
        lse_t[i] = i0 + i < Tq ? lse_for_backward(lse_bh[i0 + i], ATT_LOG2E) : INFINITY;
        D_t[i] = i0 + i < Tq ? D_bh[i0 + i] : 0.0f;
    }
}

// The backward's streamed tile: tc_tile(HD) rows, halved for 32 rows per warp (the registers of S and dP).
HOST_DEVICE constexpr int tc_backward_tile(int HD, int RM) { return tc_tile(HD) / RM; }

// dk, dv: grid (ceil(Tk / (16 RM W)), NKV, B), W warps; warp w owns keys k0 + 16 RM w + (0 .. 16 RM) of kv head
// g = blockIdx.y. The streamed tiles u = 0, 1, .. run over the query tiles of query head g * group + u / nt, nt
// tiles per head from the first query that sees key k0 (0 unless causal).
// smem: K, V (16 RM W, P) each, Q and dout (2, BQ, P) each, lse and D (2, BQ) floats each.
template <int HD, int RM>
__global__ void __launch_bounds__(TC_MAX_WARPS * 32)
attention_backward_dkdv_tc_kernel(bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* D, const bf16* q,
                                  const bf16* k, const bf16* v, const uint8_t* key_mask, int Tq, int Tk, int NH, int NKV,
                                  int q_stride, int kv_stride, bool causal, float scale, float scale_log2) {
    constexpr int P = HD + TC_PAD, BQ = tc_backward_tile(HD, RM);
    const int W = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.z, g = blockIdx.y, group = NH / NKV, BK = 16 * RM * W, k0 = blockIdx.x * BK;
    const int kw = k0 + warp * 16 * RM, off = Tk - Tq;
    bf16* Ks = (bf16*)attention_smem();
    bf16* Vs = Ks + BK * P;
    bf16* Qs = Vs + BK * P;
    bf16* dOs = Qs + 2 * BQ * P;
    float* lse_s = (float*)(dOs + 2 * BQ * P);
    float* D_s = lse_s + 2 * BQ;
    const int i_begin = attention_query_begin(causal, k0, Tq, Tk), nt = CEIL_DIV(Tq - i_begin, BQ), n_tiles = group * nt;
    auto tile_start = [&](int u) { return i_begin + u % nt * BQ; };
    auto load_tile = [&](int u, int buf) {                          // tile u into buffer buf (not committed)
        const int h = g * group + u / nt;
        tc_load_queries<HD, BQ>(Qs + buf * BQ * P, dOs + buf * BQ * P, lse_s + buf * BQ, D_s + buf * BQ,
                                q + (size_t)b * Tq * q_stride + h * HD, dout + (size_t)b * Tq * NH * HD + h * HD,
                                q_stride, NH * HD, lse + ((size_t)b * NH + h) * Tq, D + ((size_t)b * NH + h) * Tq,
                                tile_start(u), Tq);
    };
    if (n_tiles > 0) {                                              // (else no query sees these keys)
        tc_load_rows<HD>(Ks, k + (size_t)b * Tk * kv_stride + g * HD, kv_stride, k0, BK, Tk);
        tc_load_rows<HD>(Vs, v + (size_t)b * Tk * kv_stride + g * HD, kv_stride, k0, BK, Tk);
        load_tile(0, 0);
        cp_async_commit();
    }

    const uint8_t* mask = key_mask ? key_mask + (size_t)b * Tk : nullptr;
    float kbias[RM][2], dk_mult[RM][2], dv_mult[RM][2];             // this thread's keys: (m, r) = row 16m + g + 8r
#pragma unroll
    for (int m = 0; m < RM; m++)
        for (int r = 0; r < 2; r++) {
            kbias[m][r] = attention_key_bias(mask, kw + m * 16 + frag_row(lane, 2 * r), Tk);
            dk_mult[m][r] = scale;
            dv_mult[m][r] = 1.0f;
        }
    const bf16* Kw = Ks + warp * 16 * RM * P;
    const bf16* Vw = Vs + warp * 16 * RM * P;
    float dk_acc[RM][HD / 8][4] = {}, dv_acc[RM][HD / 8][4] = {};
    for (int t = 0; t < n_tiles; t++) {
        cp_async_wait_all();
        __syncthreads();                                            // tile t is in; all warps are done with t-1
        if (t + 1 < n_tiles) {
            load_tile(t + 1, (t + 1) % 2);
            cp_async_commit();
        }
        const int cb = t % 2, i0 = tile_start(t);
        // causal: the warp's last key is in the future of the tile's first query (warp-uniform)
        const bool diagonal = causal && kw + 16 * RM - 1 > i0 + off;
        const bf16* Qt = Qs + cb * BQ * P;
        const bf16* dOt = dOs + cb * BQ * P;
        float st[RM][BQ / 8][4] = {}, dpt[RM][BQ / 8][4] = {};
        warp_mma_abt<RM, HD, BQ>(st, Kw, P, Qt, P);                           // S^T = K Q^T
        warp_mma_abt<RM, HD, BQ>(dpt, Vw, P, dOt, P);                         // dP^T = V dO^T
#pragma unroll
        for (int m = 0; m < RM; m++)
#pragma unroll
            for (int n = 0; n < BQ / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = n * 8 + frag_col(lane, e);            // the query (column)
                    const bool future = diagonal && kw + m * 16 + frag_row(lane, e) > i0 + i + off;
                    const float p =
                        future ? 0.0f : exp2f(fmaf(st[m][n][e], scale_log2, kbias[m][e / 2] - lse_s[cb * BQ + i]));
                    st[m][n][e] = p;                                    // P^T
                    dpt[m][n][e] = p * (dpt[m][n][e] - D_s[cb * BQ + i]);   // dS^T (unscaled)
                }
        warp_mma_cb<RM, BQ, HD>(dv_acc, st, dOt, P);                          // dV += P^T dO
        warp_mma_cb<RM, BQ, HD>(dk_acc, dpt, Qt, P);                          // dK += dS^T Q
    }
    tc_store_rows<RM, HD>(dk + (size_t)b * Tk * kv_stride + g * HD, kv_stride, kw, Tk, dk_acc, dk_mult);
    tc_store_rows<RM, HD>(dv + (size_t)b * Tk * kv_stride + g * HD, kv_stride, kw, Tk, dv_acc, dv_mult);
}

// dq: grid (ceil(Tq / (16 RM W)), NH, B), W warps; warp w owns queries q0 + 16 RM w + (0 .. 16 RM) of head
// blockIdx.y. smem: Q, dout (16 RM W, P) each, K and V (2, BC, P) each, bias (2, BC) floats.
template <int HD, int RM>
__global__ void __launch_bounds__(TC_MAX_WARPS * 32)
attention_backward_dq_tc_kernel(bf16* dq, const bf16* dout, const float* lse, const float* D, const bf16* q,
                                const bf16* k, const bf16* v, const uint8_t* key_mask, int Tq, int Tk, int NH, int NKV,
                                int q_stride, int kv_stride, bool causal, float scale, float scale_log2) {
    constexpr int P = HD + TC_PAD, BC = tc_backward_tile(HD, RM);
    const int W = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV), BR = 16 * RM * W, q0 = blockIdx.x * BR;
    const int qw = q0 + warp * 16 * RM, off = Tk - Tq;
    bf16* Qs = (bf16*)attention_smem();
    bf16* dOs = Qs + BR * P;
    bf16* Ks = dOs + BR * P;
    bf16* Vs = Ks + 2 * BC * P;
    float* bias = (float*)(Vs + 2 * BC * P);
    const bf16* k_head = k + (size_t)b * Tk * kv_stride + g * HD;
    const bf16* v_head = v + (size_t)b * Tk * kv_stride + g * HD;
    const uint8_t* mask = key_mask ? key_mask + (size_t)b * Tk : nullptr;
    const int n_tiles = CEIL_DIV(attention_key_end(causal, min(q0 + BR, Tq), Tq, Tk), BC);
    if (n_tiles > 0) {                                              // (else no query here sees a key: dq = 0)
        tc_load_rows<HD>(Qs, q + (size_t)b * Tq * q_stride + h * HD, q_stride, q0, BR, Tq);
        tc_load_rows<HD>(dOs, dout + (size_t)b * Tq * NH * HD + h * HD, NH * HD, q0, BR, Tq);
        tc_load_keys<HD, BC>(Ks, Vs, bias, k_head, v_head, kv_stride, 0, Tk, mask);
        cp_async_commit();
    }

    float lse_r[RM][2], D_r[RM][2], dq_mult[RM][2];                 // this thread's queries: (m, r) = row 16m + g + 8r
#pragma unroll
    for (int m = 0; m < RM; m++)
        for (int r = 0; r < 2; r++) {
            const int i = qw + m * 16 + frag_row(lane, 2 * r);
            const size_t bhi = ((size_t)b * NH + h) * Tq + i;
            lse_r[m][r] = i < Tq ? lse_for_backward(lse[bhi], ATT_LOG2E) : INFINITY;
            D_r[m][r] = i < Tq ? D[bhi] : 0.0f;
            dq_mult[m][r] = scale;
        }
    const bf16* Qw = Qs + warp * 16 * RM * P;
    const bf16* dOw = dOs + warp * 16 * RM * P;
    float dq_acc[RM][HD / 8][4] = {};
    for (int t = 0; t < n_tiles; t++) {
        cp_async_wait_all();
        __syncthreads();                                            // tile t is in; all warps are done with t-1
        if (t + 1 < n_tiles) {
            const int nb = (t + 1) % 2;
            tc_load_keys<HD, BC>(Ks + nb * BC * P, Vs + nb * BC * P, bias + nb * BC, k_head, v_head, kv_stride,
                                 (t + 1) * BC, Tk, mask);
            cp_async_commit();
        }
        const int cb = t % 2;
        const bool diagonal = causal && (t + 1) * BC - 1 > qw + off;     // as in the forward
        const bf16* Kt = Ks + cb * BC * P;
        float s[RM][BC / 8][4] = {}, dp[RM][BC / 8][4] = {};
        warp_mma_abt<RM, HD, BC>(s, Qw, P, Kt, P);                            // S = Q K^T
        warp_mma_abt<RM, HD, BC>(dp, dOw, P, Vs + cb * BC * P, P);            // dP = dO V^T
#pragma unroll
        for (int m = 0; m < RM; m++)
#pragma unroll
            for (int n = 0; n < BC / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = n * 8 + frag_col(lane, e);            // the key (column)
                    const bool future = diagonal && t * BC + j > qw + m * 16 + frag_row(lane, e) + off;
                    const float p =
                        future ? 0.0f : exp2f(fmaf(s[m][n][e], scale_log2, bias[cb * BC + j] - lse_r[m][e / 2]));
                    dp[m][n][e] = p * (dp[m][n][e] - D_r[m][e / 2]);    // dS (unscaled)
                }
        warp_mma_cb<RM, BC, HD>(dq_acc, dp, Kt, P);                           // dQ += dS K
    }
    tc_store_rows<RM, HD>(dq + (size_t)b * Tq * q_stride + h * HD, q_stride, qw, Tq, dq_acc, dq_mult);
}

// Calls f(std::integral_constant<int, HD>()) for the head sizes that have tensor-core kernels.
inline bool tc_has_hd(int HD) { return HD == 16 || HD == 32 || HD == 64 || HD == 128; }
template <typename F>
void tc_dispatch_hd(int HD, F&& f) {
    switch (HD) {
        case 16: f(std::integral_constant<int, 16>()); break;
        case 32: f(std::integral_constant<int, 32>()); break;
        case 64: f(std::integral_constant<int, 64>()); break;
        case 128: f(std::integral_constant<int, 128>()); break;
        default: fatal("attention: the tensor-core kernels take HD = 16, 32, 64 or 128, not %d", HD);
    }
}
// Warps per block: at most `warps`, and no more than the rows need (16 rows_per_warp rows each).
inline int tc_warps(int warps, int rows, int rows_per_warp) {
    if (warps < 1 || warps > TC_MAX_WARPS) fatal("attention: %d warps per block (1 to %d)", warps, TC_MAX_WARPS);
    return std::max(1, std::min(warps, CEIL_DIV(rows, rows_per_warp)));
}
template <typename K>
void tc_set_smem(K kernel, size_t bytes) {
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

// Launchers of the tensor-core version: blocks of up to `warps` warps, each owning 16*rm rows (rm = 1 or 2; the
// rows: queries, or keys in the dk/dv kernel; the backward keeps rm = 1 for HD = 128). Rows must be 16-byte
// aligned (see attention_tc_ok).
inline void attention_forward_tc(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                 const uint8_t* key_mask, int B, int Tq, int Tk, int NH, int NKV, int HD, int q_stride,
                                 int kv_stride, int warps, int rm, bool causal, Stream stream) {
    attention_check_heads(NH, NKV);
    const float scale_log2 = ATT_LOG2E / sqrtf((float)HD);
    tc_dispatch_hd(HD, [&](auto hd) {
        constexpr int HDc = decltype(hd)::value, P = HDc + TC_PAD, BC = tc_tile(HDc);
        auto launch = [&](auto kernel, int RM) {
            const int W = tc_warps(warps, Tq, 16 * RM), BR = 16 * RM * W;
            const size_t smem = (size_t)(BR + 4 * BC) * P * sizeof(bf16) + 2 * BC * sizeof(float);
            tc_set_smem(kernel, smem);
            kernel<<<dim3(CEIL_DIV(Tq, BR), NH, B), W * 32, smem, stream>>>(out, lse, q, k, v, key_mask, Tq, Tk, NH,
                                                                           NKV, q_stride, kv_stride, causal, scale_log2);
            cudaCheckLaunch("attention_forward_tc_kernel");
        };
        if (rm == 2) launch(attention_forward_tc_kernel<HDc, 2>, 2);
        else launch(attention_forward_tc_kernel<HDc, 1>, 1);
    });
}

inline void attention_backward_tc(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out, const float* lse,
                                  const bf16* q, const bf16* k, const bf16* v, const uint8_t* key_mask, int B, int Tq,
                                  int Tk, int NH, int NKV, int HD, int q_stride, int kv_stride, int warps, int rm,
                                  bool causal, Stream stream) {
    attention_check_heads(NH, NKV);
    const float scale = 1.0f / sqrtf((float)HD), scale_log2 = scale * ATT_LOG2E;
    const float* D = attention_backward_dot(dout, out, B, Tq, NH, HD, stream);
    tc_dispatch_hd(HD, [&](auto hd) {
        constexpr int HDc = decltype(hd)::value, P = HDc + TC_PAD;
        auto launch = [&](auto dkdv_kernel, auto dq_kernel, int RM) {
            const int BT = tc_backward_tile(HDc, RM), Wk = tc_warps(warps, Tk, 16 * RM), Wq = tc_warps(warps, Tq, 16 * RM);
            const size_t smem_kv = (size_t)(2 * 16 * RM * Wk + 4 * BT) * P * sizeof(bf16) + 4 * BT * sizeof(float);
            tc_set_smem(dkdv_kernel, smem_kv);
            dkdv_kernel<<<dim3(CEIL_DIV(Tk, 16 * RM * Wk), NKV, B), Wk * 32, smem_kv, stream>>>(
                dk, dv, dout, lse, D, q, k, v, key_mask, Tq, Tk, NH, NKV, q_stride, kv_stride, causal, scale, scale_log2);
            cudaCheckLaunch("attention_backward_dkdv_tc_kernel");
            const size_t smem_q = (size_t)(2 * 16 * RM * Wq + 4 * BT) * P * sizeof(bf16) + 2 * BT * sizeof(float);
            tc_set_smem(dq_kernel, smem_q);
            dq_kernel<<<dim3(CEIL_DIV(Tq, 16 * RM * Wq), NH, B), Wq * 32, smem_q, stream>>>(
                dq, dout, lse, D, q, k, v, key_mask, Tq, Tk, NH, NKV, q_stride, kv_stride, causal, scale, scale_log2);
            cudaCheckLaunch("attention_backward_dq_tc_kernel");
        };
        // 32 rows per warp hold dK and dV of 32 x HD in registers: HD = 128 would spill, it keeps 16 rows
        if constexpr (HDc <= 64) {
            if (rm == 2) {
                launch(attention_backward_dkdv_tc_kernel<HDc, 2>, attention_backward_dq_tc_kernel<HDc, 2>, 2);
                return;
            }
        }
        launch(attention_backward_dkdv_tc_kernel<HDc, 1>, attention_backward_dq_tc_kernel<HDc, 1>, 1);
    });
}

// The tensor-core kernels need bf16, an HD they are built for, and rows that start 16-byte aligned (cp.async
// moves 16-byte chunks; the stores write bf16 pairs).
inline bool attention_tc_ok(int HD, int q_stride, int kv_stride, std::initializer_list<const void*> ptrs) {
    bool ok = tc_has_hd(HD) && q_stride % 8 == 0 && kv_stride % 8 == 0;
    for (const void* p : ptrs) ok = ok && (uintptr_t)p % 16 == 0;
    return ok;
}

// The mainline: tensor cores for bf16 where they apply, else (FP32 build, other HD, unaligned rows) SIMT. Block
// shapes (the labs time the others): 4 warps; 32 query rows per warp in the forward once Tq >= 128, 16 rows
// per warp in the backward; SIMT 8 warps.
template <typename T>
void attention_forward_any(T* out, float* lse, const T* q, const T* k, const T* v, const uint8_t* key_mask, int B,
                           int Tq, int Tk, int NH, int NKV, int HD, int q_stride, int kv_stride, bool causal,
                           Stream stream) {
    attention_check_heads(NH, NKV);
    if ((size_t)B * NH * Tq == 0) return;                           // nothing to write (a 0-block grid is an error)
    if constexpr (std::is_same<T, bf16>::value) {
        if (Tk > 0 && attention_tc_ok(HD, q_stride, kv_stride, {out, q, k, v})) {   // Tk = 0: SIMT writes 0 / -inf
            const int rm = Tq >= 128 ? 2 : 1;
            attention_forward_tc(out, lse, q, k, v, key_mask, B, Tq, Tk, NH, NKV, HD, q_stride, kv_stride, 4, rm, causal,
                                 stream);
            return;
        }
    }
    attention_forward_simt(out, lse, q, k, v, key_mask, B, Tq, Tk, NH, NKV, HD, q_stride, kv_stride, 8, causal, stream);
}
template <typename T>
void attention_backward_any(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse, const T* q, const T* k,
                            const T* v, const uint8_t* key_mask, int B, int Tq, int Tk, int NH, int NKV, int HD,
                            int q_stride, int kv_stride, bool causal, Stream stream) {
    attention_check_heads(NH, NKV);
    if ((size_t)B * NH == 0 || (Tq == 0 && Tk == 0)) return;
    if constexpr (std::is_same<T, bf16>::value) {
        if (Tq > 0 && Tk > 0 && attention_tc_ok(HD, q_stride, kv_stride, {dq, dk, dv, dout, q, k, v})) {
            attention_backward_tc(dq, dk, dv, dout, out, lse, q, k, v, key_mask, B, Tq, Tk, NH, NKV, HD, q_stride,
                                  kv_stride, 4, 1, causal, stream);
            return;
        }
    }
    attention_backward_simt(dq, dk, dv, dout, out, lse, q, k, v, key_mask, B, Tq, Tk, NH, NKV, HD, q_stride, kv_stride, 8,
                            causal, stream);
}

inline void attention_forward(floatX* out, floatS* lse, const floatX* q, const floatX* k, const floatX* v,
                              const uint8_t* key_mask, int B, int Tq, int Tk, int NH, int NKV, int HD, int q_stride,
                              int kv_stride, bool causal, Stream stream) {
    attention_forward_any(out, lse, q, k, v, key_mask, B, Tq, Tk, NH, NKV, HD, q_stride, kv_stride, causal, stream);
}
inline void attention_backward(floatX* dq, floatX* dk, floatX* dv, const floatX* dout, const floatX* out,
                               const floatS* lse, const floatX* q, const floatX* k, const floatX* v,
                               const uint8_t* key_mask, int B, int Tq, int Tk, int NH, int NKV, int HD, int q_stride,
                               int kv_stride, bool causal, Stream stream) {
    attention_backward_any(dq, dk, dv, dout, out, lse, q, k, v, key_mask, B, Tq, Tk, NH, NKV, HD, q_stride, kv_stride,
                           causal, stream);
}
#endif
