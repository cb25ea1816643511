// The VQ codebook (jepa_reference.md section 6; VQ-VAE EMA form of section 10): nearest code, the straight-through
// forward value, the per-code batch statistics, the EMA codebook update, dead-code re-seeding and the commitment loss.
//
//   x (R, D) floatX: the encoder's object embeddings, one row per object slot
//   E (K, D), N (K), m (K, D) floatS: the codebook, its EMA count and its EMA sum (fp32 statistics)
//   valid (R) uint8 or null (= every row counts, the reference): padded object slots are excluded (DESIGN JEPA 2)
//
//   vq_nearest         idx[r] = argmin_k ||x_r - e_k||^2 (ties: the smallest k), dist[r] = that minimum (dist may be
//                      null). The distance is summed directly, dist = sum_d (x_rd - e_kd)^2 over d = 0..D-1 in order,
//                      with diff = x - e rounded to float and acc = fma(diff, diff, acc) in float: never
//                      negative, and the float CPU reference and the GPU compute bitwise the same numbers, so the
//                      CPU and GPU backends pick the same code (exact ties, e.g. duplicated codes after a refresh,
//                      go to the smallest k on both). NaN distances are never selected; a row with no finite
//                      distance (a non-finite x) gets idx = -1: it is not quantised and counts for no code.
//   vq_quantize        out[r] = e_{idx[r]} where valid (or valid == null) and idx[r] >= 0, else out[r] = x[r]  (=)
//                      The straight-through value q = x + sg(e - x); its backward (identity) is the trainer's.
//   vq_code_stats      counts[k] = #{r valid : idx[r] = k},  sums[k, :] = sum of those x_r, r ascending    (=)
//                      (rows with idx outside [0, K) are ignored)
//   vq_ema_update      N_k <- g N_k + (1-g) counts_k ;  m_k <- g m_k + (1-g) sums_k ;  n = sum_k N_k
//                      Ntilde_k = (N_k + eps) / (n + K eps) * n ;  e_k = m_k / Ntilde_k       (in place; eps = 1e-5)
//                      (if n = 0, i.e. no row has ever counted, E is left unchanged instead of becoming m / 0)
//   vq_refresh_codes   for i < n: c = codes[i] (distinct): e_c = v_i ; N_c = new_count ; m_c = sum_scale * v_i
//                      reference mode: sum_scale 1, new_count = max(mean N, 1); lucidrains mode: new_count =
//                      sum_scale = the dead-code threshold. vectors (n, D) floatS.
//   vq_commitment_forward   loss = scale * sum_{r valid} sum_d (x_rd - q_rd)^2                      (scalar, =)
//                      (the trainer passes scale = beta / (global valid rows * D); q is detached)
//   vq_commitment_backward  dx_r += dloss * scale * 2 (x_r - q_r) for valid rows                         (+=)
//
// Deterministic everywhere: no atomics; every sum runs in a fixed order (code stats: ascending r per code;
// n: one block reduction every block repeats identically; the commitment loss: fixed per-block partial sums,
// then one block adds them in order).
//
// This header also holds vq_tile_product (CUDA only), a small SIMT tiled product C(m, n) = sum_k A(m, k) B(k, n)
// (or sum_k (A - B)^2) with loader/store functors and one thread per output summing k in ascending order; the
// Gumbel VQ (vq_gumbel.cuh) and InfoNCE (infonce.cuh) kernels use it.
#pragma once
#include <math.h>
#include <stdint.h>
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

// The accumulation type of the distance: float when both inputs are float (what the GPU does), else double.
template <typename TX, typename TS>
using vq_acc_t = typename std::conditional<std::is_same<TX, float>::value && std::is_same<TS, float>::value, float, double>::type;

// acc + diff^2: with one rounding (fma) in float, the GPU kernels' arithmetic bit for bit whatever the host
// compiler contracts; in double (the tests' references) plain arithmetic (fma is a slow library call on hosts built
// without -mfma).
inline float vq_fma_sq(float diff, float acc) { return std::fma(diff, diff, acc); }
inline double vq_fma_sq(double diff, double acc) { return acc + diff * diff; }

// ||x - e||^2 summed over d in order.
template <typename A, typename TX, typename TS>
inline A vq_distance_ref(const TX* x, const TS* e, int D) {
    A acc = 0;
    for (int d = 0; d < D; d++) acc = vq_fma_sq((A)x[d] - (A)e[d], acc);
    return acc;
}

template <typename TX, typename TS>
void vq_nearest_ref(int* idx, TS* dist, const TX* x, const TS* codebook, int R, int K, int D) {
    typedef vq_acc_t<TX, TS> A;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const TX* xr = x + (size_t)r * D;
        A best = (A)INFINITY;
        int bk = -1;
        // eight independent accumulation chains at a time (the same per-code order: the same numbers)
        int k = 0;
        for (; k + 8 <= K; k += 8) {
            A acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int d = 0; d < D; d++) {
                const A xv = (A)xr[d];
                for (int j = 0; j < 8; j++) acc[j] = vq_fma_sq(xv - (A)codebook[(size_t)(k + j) * D + d], acc[j]);
            }
            for (int j = 0; j < 8; j++)
                if (acc[j] < best) { best = acc[j]; bk = k + j; }
        }
        for (; k < K; k++) {
            const A acc = vq_distance_ref<A>(xr, codebook + (size_t)k * D, D);
            if (acc < best) { best = acc; bk = k; }
        }
        idx[r] = bk;
        if (dist) dist[r] = (TS)best;
    }
}

template <typename TX, typename TS>
void vq_quantize_ref(TX* out, const int* idx, const TS* codebook, const TX* x, const uint8_t* valid, int R, int D) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const bool on = (!valid || valid[r]) && idx[r] >= 0;
        for (int d = 0; d < D; d++)
            out[(size_t)r * D + d] = on ? (TX)codebook[(size_t)idx[r] * D + d] : x[(size_t)r * D + d];
    }
}

template <typename TS, typename TX>
void vq_code_stats_ref(TS* counts, TS* sums, const int* idx, const TX* x, const uint8_t* valid, int R, int K, int D) {
    std::vector<double> c(K, 0.0), s((size_t)K * D, 0.0);
    for (int r = 0; r < R; r++) {
        const int k = idx[r];
        if ((valid && !valid[r]) || k < 0 || k >= K) continue;
        c[k] += 1;
        for (int d = 0; d < D; d++) s[(size_t)k * D + d] += (double)x[(size_t)r * D + d];
    }
    for (int k = 0; k < K; k++) counts[k] = (TS)c[k];
    for (size_t i = 0; i < s.size(); i++) sums[i] = (TS)s[i];
}

template <typename T>
void vq_ema_update_ref(T* codebook, T* ema_count, T* ema_sum, const T* counts, const T* sums, int K, int D, float decay,
                       float eps) {
    const double g = decay, h = 1.0 - (double)decay;
    for (int k = 0; k < K; k++) ema_count[k] = (T)(g * (double)ema_count[k] + h * (double)counts[k]);
    double n = 0;
    for (int k = 0; k < K; k++) n += (double)ema_count[k];
#pragma omp parallel for schedule(static)
    for (int k = 0; k < K; k++) {
        const double nt = ((double)ema_count[k] + eps) / (n + K * (double)eps) * n;
        for (int d = 0; d < D; d++) {
            const size_t i = (size_t)k * D + d;
            const double m = g * (double)ema_sum[i] + h * (double)sums[i];
            ema_sum[i] = (T)m;
            if (n > 0) codebook[i] = (T)(m / nt);
        }
    }
}

template <typename T>
void vq_refresh_codes_ref(T* codebook, T* ema_count, T* ema_sum, const int* codes, const T* vectors, int n, int D,
                          float new_count, float sum_scale) {
    for (int i = 0; i < n; i++) {
        const int c = codes[i];
        if (ema_count) ema_count[c] = (T)new_count;
        for (int d = 0; d < D; d++) {
            const T v = vectors[(size_t)i * D + d];
            codebook[(size_t)c * D + d] = v;
            if (ema_sum) ema_sum[(size_t)c * D + d] = (T)((double)sum_scale * (double)v);
        }
    }
}

template <typename TS, typename TX>
void vq_commitment_forward_ref(TS* loss, const TX* x, const TX* q, const uint8_t* valid, int R, int D, float scale) {
    double sum = 0;
    for (int r = 0; r < R; r++) {
        if (valid && !valid[r]) continue;
        for (int d = 0; d < D; d++) {
            const double diff = (double)x[(size_t)r * D + d] - (double)q[(size_t)r * D + d];
            sum += diff * diff;
        }
    }
    *loss = (TS)((double)scale * sum);
}

template <typename TX>
void vq_commitment_backward_ref(TX* dx, const TX* x, const TX* q, const uint8_t* valid, int R, int D, float scale,
                                float dloss) {
    const double g = 2.0 * (double)dloss * (double)scale;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        if (valid && !valid[r]) continue;
        for (int d = 0; d < D; d++) {
            const size_t i = (size_t)r * D + d;
            dx[i] = (TX)((double)dx[i] + g * ((double)x[i] - (double)q[i]));
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void vq_nearest(int* idx, floatS* dist, const floatX* x, const floatS* codebook, int R, int K, int D, Stream) {
    vq_nearest_ref(idx, dist, x, codebook, R, K, D);
}
inline void vq_quantize(floatX* out, const int* idx, const floatS* codebook, const floatX* x, const uint8_t* valid, int R,
                        int D, Stream) {
    vq_quantize_ref(out, idx, codebook, x, valid, R, D);
}
inline void vq_code_stats(floatS* counts, floatS* sums, const int* idx, const floatX* x, const uint8_t* valid, int R, int K,
                          int D, Stream) {
    vq_code_stats_ref(counts, sums, idx, x, valid, R, K, D);
}
inline void vq_ema_update(floatS* codebook, floatS* ema_count, floatS* ema_sum, const floatS* counts, const floatS* sums,
                          int K, int D, float decay, float eps, Stream) {
    vq_ema_update_ref(codebook, ema_count, ema_sum, counts, sums, K, D, decay, eps);
}
inline void vq_refresh_codes(floatS* codebook, floatS* ema_count, floatS* ema_sum, const int* codes, const floatS* vectors,
                             int n, int D, float new_count, float sum_scale, Stream) {
    vq_refresh_codes_ref(codebook, ema_count, ema_sum, codes, vectors, n, D, new_count, sum_scale);
}
inline void vq_commitment_forward(floatS* loss, const floatX* x, const floatX* q, const uint8_t* valid, int R, int D,
                                  float scale, Stream) {
    vq_commitment_forward_ref(loss, x, q, valid, R, D, scale);
}
inline void vq_commitment_backward(floatX* dx, const floatX* x, const floatX* q, const uint8_t* valid, int R, int D,
                                   float scale, float dloss, Stream) {
    vq_commitment_backward_ref(dx, x, q, valid, R, D, scale, dloss);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA

#ifdef __CUDACC__
// ---- the SIMT tile product ------------------------------------------------------------------------------
// A block computes a 64 x 64 tile of outputs with 256 threads: thread (ty, tx) = (tid / 16, tid % 16) owns rows
// m0 + 4 ty .. + 3 and columns n0 + 4 tx .. + 3. The reduction dimension goes through shared memory 16 at a time
// (As[k][m], Bs[k][n], zero outside the ranges: adding fma(0, 0, acc) changes nothing), and every output is summed
// by its one thread in ascending k. An Op supplies M, N, K, `float a(m, k)`, `float b(k, n)`, `store(m, n, acc)`,
// `prepare()` (once per thread, e.g. reading tau), and A_KFAST / B_KFAST: whether consecutive threads of a tile
// load should walk k (the operand is contiguous in k) or m / n.
#define VQ_TILE 64
#define VQ_TILE_K 16
#define VQ_TILE_THREADS 256

template <bool DIST, class Op>
__device__ inline void vq_tile_accumulate(float (&acc)[4][4], const Op& op, int m0, int n0,
                                          float (*As)[VQ_TILE + 4], float (*Bs)[VQ_TILE + 4]) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    for (int k0 = 0; k0 < op.K; k0 += VQ_TILE_K) {
        for (int e = threadIdx.x; e < VQ_TILE_K * VQ_TILE; e += VQ_TILE_THREADS) {
            const int ka = Op::A_KFAST ? e % VQ_TILE_K : e / VQ_TILE, ma = Op::A_KFAST ? e / VQ_TILE_K : e % VQ_TILE;
            const int kb = Op::B_KFAST ? e % VQ_TILE_K : e / VQ_TILE, nb = Op::B_KFAST ? e / VQ_TILE_K : e % VQ_TILE;
            As[ka][ma] = (m0 + ma < op.M && k0 + ka < op.K) ? op.a(m0 + ma, k0 + ka) : 0.0f;
            Bs[kb][nb] = (n0 + nb < op.N && k0 + kb < op.K) ? op.b(k0 + kb, n0 + nb) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < VQ_TILE_K; kk++) {
            const float4 a4 = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
            const float4 b4 = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
            const float av[4] = {a4.x, a4.y, a4.z, a4.w}, bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    if (DIST) {
                        const float diff = av[i] - bv[j];
                        acc[i][j] = fmaf(diff, diff, acc[i][j]);
                    } else {
                        acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
                    }
                }
        }
        __syncthreads();
    }
}

template <bool DIST, class Op>
__global__ void __launch_bounds__(VQ_TILE_THREADS) vq_tile_product_kernel(Op op_in) {
    __shared__ __align__(16) float As[VQ_TILE_K][VQ_TILE + 4];
    __shared__ __align__(16) float Bs[VQ_TILE_K][VQ_TILE + 4];
    Op op = op_in;
    op.prepare();
    const int m0 = blockIdx.y * VQ_TILE, n0 = blockIdx.x * VQ_TILE;
    float acc[4][4] = {};
    vq_tile_accumulate<DIST>(acc, op, m0, n0, As, Bs);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
            if (m < op.M && n < op.N) op.store(m, n, acc[i][j]);
        }
}

template <bool DIST, class Op>
inline void vq_tile_product(const Op& op, Stream stream, const char* name) {
    if (op.M <= 0 || op.N <= 0) return;
    const dim3 grid(CEIL_DIV(op.N, VQ_TILE), CEIL_DIV(op.M, VQ_TILE));
    vq_tile_product_kernel<DIST><<<grid, VQ_TILE_THREADS, 0, stream>>>(op);
    cudaCheckLaunch(name);
}

// ---- vq_nearest ---------------------------------------------------------------------------------------------
// Distance operands: a(r, d) = x[r, d], b(d, k) = E[k, d].
struct VqDistOp {
    static constexpr bool A_KFAST = true, B_KFAST = true;
    const floatX* x;
    const floatS* E;
    int M, N, K;     // R, codes, D
    __device__ void prepare() {}
    __device__ float a(int m, int k) const { return to_float(x[(size_t)m * K + k]); }
    __device__ float b(int k, int n) const { return (float)E[(size_t)n * K + k]; }
    __device__ void store(int, int, float) const {}
};

// One block per 64 rows, all codes: the block walks the code tiles n0 = 0, 64, ... (each a 64 x 64 distance tile
// of vq_tile_accumulate); every thread keeps, for its 4 rows, the smallest distance over its codes (visited in
// ascending k, strict <: the smallest k of a tie); then, per row, one thread merges the 16 threads' candidates
// (smaller distance, or equal distance and smaller k). The result does not depend on the merge order.
__global__ void __launch_bounds__(VQ_TILE_THREADS) vq_nearest_kernel(int* idx, floatS* dist, const floatX* x,
                                                                     const floatS* E, int R, int K, int D) {
    __shared__ __align__(16) float As[VQ_TILE_K][VQ_TILE + 4];
    __shared__ __align__(16) float Bs[VQ_TILE_K][VQ_TILE + 4];
    __shared__ float cand_d[VQ_TILE][17];
    __shared__ int cand_k[VQ_TILE][17];
    const VqDistOp op{x, E, R, K, D};
    const int m0 = blockIdx.x * VQ_TILE, tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float bd[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
    int bk[4] = {-1, -1, -1, -1};
    for (int n0 = 0; n0 < K; n0 += VQ_TILE) {
        float acc[4][4] = {};
        vq_tile_accumulate<true>(acc, op, m0, n0, As, Bs);
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int n = n0 + tx * 4 + j;
                if (n < K && acc[i][j] < bd[i]) { bd[i] = acc[i][j]; bk[i] = n; }
            }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        cand_d[ty * 4 + i][tx] = bd[i];
        cand_k[ty * 4 + i][tx] = bk[i];
    }
    __syncthreads();
    if (threadIdx.x < VQ_TILE && m0 + (int)threadIdx.x < R) {
        const int row = threadIdx.x;
        float best = INFINITY;
        int best_k = -1;
        for (int t = 0; t < 16; t++) {
            const float d = cand_d[row][t];
            const int k = cand_k[row][t];
            if (k >= 0 && (best_k < 0 || d < best || (d == best && k < best_k))) { best = d; best_k = k; }
        }
        idx[m0 + row] = best_k;
        if (dist) dist[m0 + row] = best;
    }
}

inline void vq_nearest(int* idx, floatS* dist, const floatX* x, const floatS* codebook, int R, int K, int D, Stream stream) {
    if (R <= 0) return;
    vq_nearest_kernel<<<CEIL_DIV(R, VQ_TILE), VQ_TILE_THREADS, 0, stream>>>(idx, dist, x, codebook, R, K, D);
    cudaCheckLaunch("vq_nearest_kernel");
}

// ---- vq_quantize: one thread per element ----------------------------------------------------------------------
__global__ void vq_quantize_kernel(floatX* out, const int* idx, const floatS* E, const floatX* x, const uint8_t* valid,
                                   int R, int D) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)R * D) return;
    const int r = (int)(i / D), d = (int)(i % D);
    out[i] = (!valid || valid[r]) && idx[r] >= 0 ? from_float<floatX>(E[(size_t)idx[r] * D + d]) : x[i];
}

inline void vq_quantize(floatX* out, const int* idx, const floatS* codebook, const floatX* x, const uint8_t* valid, int R,
                        int D, Stream stream) {
    const size_t n = (size_t)R * D;
    if (n == 0) return;
    vq_quantize_kernel<<<(unsigned)CEIL_DIV(n, (size_t)256), 256, 0, stream>>>(out, idx, codebook, x, valid, R, D);
    cudaCheckLaunch("vq_quantize_kernel");
}

// ---- vq_code_stats ------------------------------------------------------------------------------------------
// Block (code k, 128 channels), one thread per channel d. The rows are scanned in chunks of 512: each thread tests
// 4 rows (idx == k and valid), the warps' ballots go to shared memory as 16 masks of 32 rows, then every thread
// walks the set bits in ascending r and adds x[r, d]: each sum runs over r in ascending order.
__global__ void vq_code_stats_kernel(floatS* counts, floatS* sums, const int* idx, const floatX* x, const uint8_t* valid,
                                     int R, int K, int D) {
    __shared__ unsigned masks[16];
    const int k = blockIdx.x, d = blockIdx.y * 128 + threadIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float acc = 0.0f;
    int count = 0;
    for (int r0 = 0; r0 < R; r0 += 512) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int r = r0 + q * 128 + threadIdx.x;
            const bool hit = r < R && idx[r] == k && (!valid || valid[r]);
            const unsigned bits = __ballot_sync(0xffffffffu, hit);
            if (lane == 0) masks[q * 4 + warp] = bits;
        }
        __syncthreads();
        for (int w = 0; w < 16; w++) {
            unsigned bits = masks[w];
            while (bits) {
                const int r = r0 + w * 32 + __ffs(bits) - 1;
                bits &= bits - 1;
                count++;
                if (d < D) acc += to_float(x[(size_t)r * D + d]);
            }
        }
        __syncthreads();
    }
    if (d < D) sums[(size_t)k * D + d] = acc;
    if (blockIdx.y == 0 && threadIdx.x == 0) counts[k] = (float)count;
}

inline void vq_code_stats(floatS* counts, floatS* sums, const int* idx, const floatX* x, const uint8_t* valid, int R, int K,
                          int D, Stream stream) {
    if (K <= 0) return;
    const dim3 grid(K, std::max(1, CEIL_DIV(D, 128)));
    vq_code_stats_kernel<<<grid, 128, 0, stream>>>(counts, sums, idx, x, valid, R, K, D);
    cudaCheckLaunch("vq_code_stats_kernel");
}

// ---- vq_ema_update --------------------------------------------------------------------------------------------
// Kernel 1: one thread per code updates N. Kernel 2: one block per code k; every block first sums N over all K
// codes with the same block reduction (the same n, bit for bit, in every block), then threads over d update m_k
// and e_k.
__global__ void vq_ema_count_kernel(floatS* ema_count, const floatS* counts, int K, float decay) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < K) ema_count[k] = decay * ema_count[k] + (1.0f - decay) * counts[k];
}

__global__ void vq_ema_codes_kernel(floatS* E, const floatS* ema_count, floatS* ema_sum, const floatS* sums, int K, int D,
                                    float decay, float eps) {
    __shared__ float scratch[WARP_SIZE];
    const int k = blockIdx.x;
    float n = 0.0f;
    for (int j = threadIdx.x; j < K; j += blockDim.x) n += ema_count[j];
    n = block_reduce_sum(n, scratch);
    const float nt = (ema_count[k] + eps) / (n + (float)K * eps) * n;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        const size_t i = (size_t)k * D + d;
        const float m = decay * ema_sum[i] + (1.0f - decay) * sums[i];
        ema_sum[i] = m;
        if (n > 0.0f) E[i] = m / nt;
    }
}

inline void vq_ema_update(floatS* codebook, floatS* ema_count, floatS* ema_sum, const floatS* counts, const floatS* sums,
                          int K, int D, float decay, float eps, Stream stream) {
    if (K <= 0) return;
    vq_ema_count_kernel<<<CEIL_DIV(K, 256), 256, 0, stream>>>(ema_count, counts, K, decay);
    cudaCheckLaunch("vq_ema_count_kernel");
    vq_ema_codes_kernel<<<K, 128, 0, stream>>>(codebook, ema_count, ema_sum, sums, K, D, decay, eps);
    cudaCheckLaunch("vq_ema_codes_kernel");
}

// ---- vq_refresh_codes: one block per re-seeded code, threads over d --------------------------------------------
__global__ void vq_refresh_codes_kernel(floatS* E, floatS* ema_count, floatS* ema_sum, const int* codes,
                                        const floatS* vectors, int D, float new_count, float sum_scale) {
    const int i = blockIdx.x, c = codes[i];
    if (threadIdx.x == 0 && ema_count) ema_count[c] = new_count;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        const float v = vectors[(size_t)i * D + d];
        E[(size_t)c * D + d] = v;
        if (ema_sum) ema_sum[(size_t)c * D + d] = sum_scale * v;
    }
}

inline void vq_refresh_codes(floatS* codebook, floatS* ema_count, floatS* ema_sum, const int* codes, const floatS* vectors,
                             int n, int D, float new_count, float sum_scale, Stream stream) {
    if (n <= 0) return;
    vq_refresh_codes_kernel<<<n, 128, 0, stream>>>(codebook, ema_count, ema_sum, codes, vectors, D, new_count, sum_scale);
    cudaCheckLaunch("vq_refresh_codes_kernel");
}

// ---- the commitment loss ------------------------------------------------------------------------------------
// Forward: stage 1, a grid of min(R, 1024) blocks; block b takes rows b, b + grid, ... (valid ones), its threads
// the channels, and writes one partial sum; stage 2, one block adds the partial sums in a fixed order. The
// partition depends only on R: deterministic. Backward: one thread per element.
constexpr int VQ_COMMIT_BLOCKS = 1024;

__global__ void vq_commitment_partial_kernel(float* partial, const floatX* x, const floatX* q, const uint8_t* valid, int R,
                                             int D) {
    __shared__ float scratch[WARP_SIZE];
    float sum = 0.0f;
    for (int r = blockIdx.x; r < R; r += gridDim.x) {
        if (valid && !valid[r]) continue;
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            const float diff = to_float(x[(size_t)r * D + d]) - to_float(q[(size_t)r * D + d]);
            sum = fmaf(diff, diff, sum);
        }
    }
    sum = block_reduce_sum(sum, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void vq_sum_scaled_kernel(floatS* out, const float* partial, int n, float scale) {
    __shared__ float scratch[WARP_SIZE];
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += partial[i];
    sum = block_reduce_sum(sum, scratch);
    if (threadIdx.x == 0) *out = scale * sum;
}

inline void vq_commitment_forward(floatS* loss, const floatX* x, const floatX* q, const uint8_t* valid, int R, int D,
                                  float scale, Stream stream) {
    if ((size_t)R * D == 0) {                                 // the empty sum
        cudaCheck(cudaMemsetAsync(loss, 0, sizeof(floatS), stream));
        return;
    }
    float* partial = device_scratch<struct VqCommitPartials>(VQ_COMMIT_BLOCKS, stream, "vq_commitment partial sums");
    const int n_blocks = std::min(R, VQ_COMMIT_BLOCKS);
    vq_commitment_partial_kernel<<<n_blocks, 128, 0, stream>>>(partial, x, q, valid, R, D);
    cudaCheckLaunch("vq_commitment_partial_kernel");
    vq_sum_scaled_kernel<<<1, 1024, 0, stream>>>(loss, partial, n_blocks, scale);
    cudaCheckLaunch("vq_sum_scaled_kernel");
}

__global__ void vq_commitment_backward_kernel(floatX* dx, const floatX* x, const floatX* q, const uint8_t* valid, int R,
                                              int D, float g) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)R * D) return;
    if (valid && !valid[i / D]) return;
    dx[i] = from_float<floatX>(to_float(dx[i]) + g * (to_float(x[i]) - to_float(q[i])));
}

inline void vq_commitment_backward(floatX* dx, const floatX* x, const floatX* q, const uint8_t* valid, int R, int D,
                                   float scale, float dloss, Stream stream) {
    const size_t n = (size_t)R * D;
    if (n == 0) return;
    vq_commitment_backward_kernel<<<(unsigned)CEIL_DIV(n, (size_t)256), 256, 0, stream>>>(dx, x, q, valid, R, D,
                                                                                           2.0f * dloss * scale);
    cudaCheckLaunch("vq_commitment_backward_kernel");
}
#endif
