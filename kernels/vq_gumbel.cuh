// The Gumbel-softmax vector quantizer (jepa_reference.md section 6 "Gumbel"; GumbelVectorQuantizer of
// training/modules/vq.py at the reference HEAD, straight_through = true). The codebook learns by gradient here
// (no EMA, no refresh).
//
//   x (R, D) floatX, E (K, D) floatS, valid (R) uint8 or null (= every row), y_soft (R, K) floatS
//   logits_rk = -||x_r - e_k||^2        (summed directly as in vq_nearest: the same bits as its distance)
//   g_rk      = -log(-log u),  u = hash_uniform(seed, r, k) clamped to >= 2^-25 (hash_uniform is < 1): in (0, 1)
//               (the caller folds the step and the row offset of this micro-batch / rank into the seed)
//   z_rk      = (logits_rk + g_rk) / tau
//   training: y_soft_r = softmax_k(z_r) ; idx[r] = argmax_k z_rk (= argmax y_soft, ties: the smallest k) ;
//             out[r] = e_{idx[r]}  (torch's hard gumbel_softmax: y = onehot + y_soft - sg(y_soft), q = y @ E)
//   eval (training = false): idx[r] = argmin_k ||x_r - e_k||^2 (no noise, vq_nearest), out[r] = e_{idx[r]};
//             y_soft is not touched (may be null)
//   rows with valid[r] = 0: out[r] = x[r], idx[r] = -1, y_soft row = 0 (training); no gradient to the codebook
//   Training needs y_soft (the GPU forward also uses it for the logits); K >= 1 when R > 0.
//
//   backward (training forward only; dx +=, dcodebook +=), per valid row r, with dy_k = dout_r . e_k:
//     dcodebook_{idx[r]} += dout_r                                  (the one-hot's value in q = y @ E)
//     dlogit_k = y_soft_k (dy_k - sum_j y_soft_j dy_j) / tau        (through y_soft; the noise is a constant)
//     dx_r += sum_k dlogit_k (-2)(x_r - e_k)
//     dcodebook_k += sum_r dlogit_rk 2 (x_r - e_k)
//   rows with valid[r] = 0: dx_r += dout_r (out = x there), nothing else.
//
//   Host helpers: vq_usage_entropy_loss(counts, K) = 1 - H(p) / log K, p = counts / sum (p = 0 when the sum is 0),
//   H = -sum_k p_k log(p_k + 1e-10) as the reference (no gradient; the trainer multiplies by entropy_weight 0.01);
//   gumbel_tau(step, init, min, anneal_steps) = init - step / anneal_steps * (init - min), min from anneal_steps
//   on. The reference increments its step counter before reading tau: its first training forward uses step 1.
//
// Note: the reference's returned indices (its metrics and its entropy term) are the noise-free argmax of the
// logits, while its forward value uses the noisy sample; idx here is the sample's index (the one out uses). For
// the reference's usage statistics run vq_nearest on the same rows.
//
// Deterministic: the softmax sums and the argmax run in a fixed order; the codebook gradient sums over r in
// ascending order per output (vq_tile_product), no atomics.
#pragma once
#include <math.h>
#include <stdint.h>
#include <type_traits>
#include <vector>
#include "../common/device.h"
#include "../common/rand.h"
#include "vq.cuh"

// Gumbel noise of (row r, code k) in precision A (float on the GPU and the float CPU backend).
template <typename A>
HOST_DEVICE inline A vq_gumbel_noise(uint64_t seed, int r, int k) {
    A u = (A)hash_uniform(seed, (uint64_t)r, (uint64_t)k);
    if (u < (A)2.9802322387695312e-08) u = (A)2.9802322387695312e-08;     // 2^-25
    if constexpr (std::is_same<A, float>::value) return -logf(-logf(u));
    else return -log(-log(u));
}

// ----------------------------------------------------------------------------------------------------------
// Host helpers

template <typename T>
inline double vq_usage_entropy_loss(const T* counts, int K) {
    if (K <= 1) return 0.0;
    double total = 0;
    for (int k = 0; k < K; k++) total += (double)counts[k];
    double h = 0;
    if (total > 0)
        for (int k = 0; k < K; k++) {
            const double p = (double)counts[k] / total;
            h -= p * log(p + 1e-10);
        }
    return 1.0 - h / log((double)K);
}

inline float gumbel_tau(int step, float tau_init, float tau_min, int anneal_steps) {
    if (anneal_steps <= 0 || step >= anneal_steps) return tau_min;
    const double progress = (double)step / anneal_steps;
    return (float)((double)tau_init - progress * ((double)tau_init - (double)tau_min));
}

// ----------------------------------------------------------------------------------------------------------
// CPU reference

inline void vq_gumbel_check(int R, int K, bool training, const void* y_soft) {
    if (R > 0 && K < 1) fatal("vq_gumbel_forward: %d rows but an empty codebook (K = %d)", R, K);
    if (R > 0 && training && !y_soft) fatal("vq_gumbel_forward: training needs the y_soft buffer (R x K)");
}

template <typename TX, typename TS>
void vq_gumbel_forward_ref(TX* out, int* idx, TS* y_soft, const TX* x, const TS* codebook, const uint8_t* valid, int R,
                           int K, int D, float tau, uint64_t seed, bool training) {
    typedef vq_acc_t<TX, TS> A;
    vq_gumbel_check(R, K, training, y_soft);
    if (!training) {
        vq_nearest_ref(idx, (TS*)nullptr, x, codebook, R, K, D);
        for (int r = 0; r < R; r++)
            if (valid && !valid[r]) idx[r] = -1;
    }
#pragma omp parallel
    {
        std::vector<A> z(K);
#pragma omp for schedule(static)
        for (int r = 0; r < R; r++) {
            const TX* xr = x + (size_t)r * D;
            TX* o = out + (size_t)r * D;
            if (valid && !valid[r]) {
                for (int d = 0; d < D; d++) o[d] = xr[d];
                idx[r] = -1;
                if (training)
                    for (int k = 0; k < K; k++) y_soft[(size_t)r * K + k] = 0;
                continue;
            }
            if (training) {
                int best = 0;
                for (int k = 0; k < K; k++) {
                    const A dist = vq_distance_ref<A>(xr, codebook + (size_t)k * D, D);
                    z[k] = (-dist + vq_gumbel_noise<A>(seed, r, k)) / (A)tau;
                    if (z[k] > z[best]) best = k;
                }
                A sum = 0;
                for (int k = 0; k < K; k++) sum += std::exp(z[k] - z[best]);
                for (int k = 0; k < K; k++) y_soft[(size_t)r * K + k] = (TS)(std::exp(z[k] - z[best]) / sum);
                idx[r] = best;
            }
            const TS* e = codebook + (size_t)idx[r] * D;
            for (int d = 0; d < D; d++) o[d] = (TX)e[d];
        }
    }
}

template <typename TX, typename TS>
void vq_gumbel_backward_ref(TX* dx, TS* dcodebook, const TX* dout, const TS* y_soft, const int* idx, const TX* x,
                            const TS* codebook, const uint8_t* valid, int R, int K, int D, float tau) {
    std::vector<double> dl((size_t)R * K, 0.0);
#pragma omp parallel
    {
        std::vector<double> g(D);
#pragma omp for schedule(static)
        for (int r = 0; r < R; r++) {
            const TX* dr = dout + (size_t)r * D;
            TX* dxr = dx + (size_t)r * D;
            if (valid && !valid[r]) {
                for (int d = 0; d < D; d++) dxr[d] = (TX)((double)dxr[d] + (double)dr[d]);
                continue;
            }
            const TS* y = y_soft + (size_t)r * K;
            double* l = dl.data() + (size_t)r * K;
            double ybar = 0;
            for (int k = 0; k < K; k++) {
                double dy = 0;
                for (int d = 0; d < D; d++) dy += (double)dr[d] * (double)codebook[(size_t)k * D + d];
                l[k] = dy;
                ybar += (double)y[k] * dy;
            }
            for (int k = 0; k < K; k++) l[k] = (double)y[k] * (l[k] - ybar) / (double)tau;
            for (int d = 0; d < D; d++) g[d] = 0;
            for (int k = 0; k < K; k++)
                for (int d = 0; d < D; d++)
                    g[d] += l[k] * -2.0 * ((double)x[(size_t)r * D + d] - (double)codebook[(size_t)k * D + d]);
            for (int d = 0; d < D; d++) dxr[d] = (TX)((double)dxr[d] + g[d]);
        }
#pragma omp for schedule(static)
        for (int k = 0; k < K; k++) {
            for (int d = 0; d < D; d++) g[d] = 0;
            for (int r = 0; r < R; r++) {
                if (valid && !valid[r]) continue;
                const double l = dl[(size_t)r * K + k];
                const bool hard = idx[r] == k;
                for (int d = 0; d < D; d++) {
                    const size_t i = (size_t)r * D + d;
                    g[d] += l * 2.0 * ((double)x[i] - (double)codebook[(size_t)k * D + d]) + (hard ? (double)dout[i] : 0.0);
                }
            }
            for (int d = 0; d < D; d++) dcodebook[(size_t)k * D + d] = (TS)((double)dcodebook[(size_t)k * D + d] + g[d]);
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void vq_gumbel_forward(floatX* out, int* idx, floatS* y_soft, const floatX* x, const floatS* codebook,
                              const uint8_t* valid, int R, int K, int D, float tau, uint64_t seed, bool training, Stream) {
    vq_gumbel_forward_ref(out, idx, y_soft, x, codebook, valid, R, K, D, tau, seed, training);
}
inline void vq_gumbel_backward(floatX* dx, floatS* dcodebook, const floatX* dout, const floatS* y_soft, const int* idx,
                               const floatX* x, const floatS* codebook, const uint8_t* valid, int R, int K, int D, float tau,
                               Stream) {
    vq_gumbel_backward_ref(dx, dcodebook, dout, y_soft, idx, x, codebook, valid, R, K, D, tau);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA. Forward (training): vq_tile_product writes the logits -dist into y_soft (the distance tile of vq_nearest:
// the same numbers); then one block per row (256 threads over k) adds the noise, divides by tau, finds the argmax
// (per-thread candidates, then a warp / block merge by (larger z, smaller k)), sums exp(z - z_max) (each thread
// in order, then block_reduce_sum), writes y_soft and copies e_idx (threads over d). Eval: vq_nearest, then one
// block per row writes out and idx.
// Backward: (1) vq_tile_product dy = dout E^T into a scratch (R, K); (2) one block per row turns it into dlogit in
// place and writes s_r = sum_k dlogit_rk; (3) column sums c_k = sum_r dlogit_rk (one thread per (k, row group),
// the groups added in order); (4) vq_tile_product dx_r += 2 sum_k dlogit_rk e_k - 2 s_r x_r (+ dout_r where
// invalid); (5) vq_tile_product over a reduction of length 2R: sum_r 2 dlogit_rk x_r, then sum_r onehot_rk dout_r,
// and dcodebook_k += that - 2 c_k e_k.

#ifdef __CUDACC__
struct VqLogitOp {
    static constexpr bool A_KFAST = true, B_KFAST = true;
    const floatX* x;
    const floatS* E;
    floatS* y;
    int M, N, K;     // R, codes, D
    __device__ void prepare() {}
    __device__ float a(int m, int k) const { return to_float(x[(size_t)m * K + k]); }
    __device__ float b(int k, int n) const { return (float)E[(size_t)n * K + k]; }
    __device__ void store(int m, int n, float acc) const { y[(size_t)m * N + n] = -acc; }
};

// Warp then block merge of (z, k) candidates: larger z wins, equal z -> smaller k; k < 0 = no candidate.
__device__ inline void vq_argmax_merge(float& z, int& k, float oz, int ok) {
    if (ok >= 0 && (k < 0 || oz > z || (oz == z && ok < k))) { z = oz; k = ok; }
}
__device__ inline int vq_block_argmax(float z, int k, float* sz, int* sk) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float oz = __shfl_xor_sync(0xffffffffu, z, offset);
        const int ok = __shfl_xor_sync(0xffffffffu, k, offset);
        vq_argmax_merge(z, k, oz, ok);
    }
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    __syncthreads();
    if (lane == 0) { sz[warp] = z; sk[warp] = k; }
    __syncthreads();
    float bz = sz[0];
    int bk = sk[0];
    for (int w = 1; w < (int)(blockDim.x / WARP_SIZE); w++) vq_argmax_merge(bz, bk, sz[w], sk[w]);
    return bk;
}

__global__ void vq_gumbel_softmax_kernel(floatX* out, int* idx, floatS* y_soft, const floatX* x, const floatS* E,
                                         const uint8_t* valid, int K, int D, float tau, uint64_t seed) {
    __shared__ float scratch[WARP_SIZE], sz[WARP_SIZE];
    __shared__ int sk[WARP_SIZE];
    const int r = blockIdx.x;
    floatS* y = y_soft + (size_t)r * K;
    floatX* o = out + (size_t)r * D;
    if (valid && !valid[r]) {
        for (int k = threadIdx.x; k < K; k += blockDim.x) y[k] = 0.0f;
        for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = x[(size_t)r * D + d];
        if (threadIdx.x == 0) idx[r] = -1;
        return;
    }
    const float inv_tau = 1.0f / tau;
    float bz = 0.0f;
    int bk = -1;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const float z = (y[k] + vq_gumbel_noise<float>(seed, r, k)) * inv_tau;
        y[k] = z;
        vq_argmax_merge(bz, bk, z, k);
    }
    const int best = max(vq_block_argmax(bz, bk, sz, sk), 0);
    const float zmax = y[best];        // written by another thread: visible after the block_argmax barriers
    float sum = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) sum += expf(y[k] - zmax);
    sum = block_reduce_sum(sum, scratch);
    const float inv_sum = 1.0f / sum;
    for (int k = threadIdx.x; k < K; k += blockDim.x) y[k] = expf(y[k] - zmax) * inv_sum;
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = from_float<floatX>(E[(size_t)best * D + d]);
    if (threadIdx.x == 0) idx[r] = best;
}

__global__ void vq_gumbel_eval_kernel(floatX* out, int* idx, const floatX* x, const floatS* E, const uint8_t* valid, int D) {
    const int r = blockIdx.x;
    const bool on = !valid || valid[r];
    const int k = idx[r];
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        out[(size_t)r * D + d] = on ? from_float<floatX>(E[(size_t)k * D + d]) : x[(size_t)r * D + d];
    __syncthreads();                   // every thread has read idx[r] before it is overwritten
    if (!on && threadIdx.x == 0) idx[r] = -1;
}

inline void vq_gumbel_forward(floatX* out, int* idx, floatS* y_soft, const floatX* x, const floatS* codebook,
                              const uint8_t* valid, int R, int K, int D, float tau, uint64_t seed, bool training,
                              Stream stream) {
    vq_gumbel_check(R, K, training, y_soft);
    if (R <= 0) return;
    if (!training) {
        vq_nearest(idx, nullptr, x, codebook, R, K, D, stream);
        vq_gumbel_eval_kernel<<<R, 128, 0, stream>>>(out, idx, x, codebook, valid, D);
        cudaCheckLaunch("vq_gumbel_eval_kernel");
        return;
    }
    vq_tile_product<true>(VqLogitOp{x, codebook, y_soft, R, K, D}, stream, "vq_tile_product_kernel (gumbel logits)");
    vq_gumbel_softmax_kernel<<<R, 256, 0, stream>>>(out, idx, y_soft, x, codebook, valid, K, D, tau, seed);
    cudaCheckLaunch("vq_gumbel_softmax_kernel");
}

// dy[r, k] = dout_r . e_k
struct VqGumbelDyOp {
    static constexpr bool A_KFAST = true, B_KFAST = true;
    const floatX* dout;
    const floatS* E;
    float* dl;
    int M, N, K;     // R, codes, D
    __device__ void prepare() {}
    __device__ float a(int m, int k) const { return to_float(dout[(size_t)m * K + k]); }
    __device__ float b(int k, int n) const { return (float)E[(size_t)n * K + k]; }
    __device__ void store(int m, int n, float acc) const { dl[(size_t)m * N + n] = acc; }
};

// dlogit in place; s_r = sum_k dlogit_rk. Invalid rows: dlogit = 0, s = 0.
__global__ void vq_gumbel_dlogit_kernel(float* dl, float* row_sum, const floatS* y_soft, const uint8_t* valid, int K,
                                        float tau) {
    __shared__ float scratch[WARP_SIZE];
    const int r = blockIdx.x;
    float* l = dl + (size_t)r * K;
    const floatS* y = y_soft + (size_t)r * K;
    if (valid && !valid[r]) {
        for (int k = threadIdx.x; k < K; k += blockDim.x) l[k] = 0.0f;
        if (threadIdx.x == 0) row_sum[r] = 0.0f;
        return;
    }
    float ybar = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) ybar = fmaf(y[k], l[k], ybar);
    ybar = block_reduce_sum(ybar, scratch);
    const float inv_tau = 1.0f / tau;
    float s = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const float v = y[k] * (l[k] - ybar) * inv_tau;
        l[k] = v;
        s += v;
    }
    s = block_reduce_sum(s, scratch);
    if (threadIdx.x == 0) row_sum[r] = s;
}

// c_k = sum_r dlogit_rk: block of 32 codes x 32 row groups; group g sums rows g, g + 32, ... in order, then one
// thread per code adds the 32 group sums in order.
__global__ void vq_gumbel_colsum_kernel(float* col_sum, const float* dl, int R, int K) {
    __shared__ float part[32][33];
    const int lane = threadIdx.x % 32, g = threadIdx.x / 32, k = blockIdx.x * 32 + lane;
    float s = 0.0f;
    if (k < K)
        for (int r = g; r < R; r += 32) s += dl[(size_t)r * K + k];
    part[g][lane] = s;
    __syncthreads();
    if (g == 0 && k < K) {
        float t = 0.0f;
        for (int j = 0; j < 32; j++) t += part[j][lane];
        col_sum[k] = t;
    }
}

// dx_r += 2 sum_k dlogit_rk e_k - 2 s_r x_r  (+ dout_r on invalid rows)
struct VqGumbelDxOp {
    static constexpr bool A_KFAST = true, B_KFAST = false;
    floatX* dx;
    const float* dl;
    const float* row_sum;
    const floatS* E;
    const floatX* x;
    const floatX* dout;
    const uint8_t* valid;
    int M, N, K;     // R, D, codes
    __device__ void prepare() {}
    __device__ float a(int m, int k) const { return dl[(size_t)m * K + k]; }
    __device__ float b(int k, int n) const { return (float)E[(size_t)k * N + n]; }
    __device__ void store(int m, int n, float acc) const {
        const size_t i = (size_t)m * N + n;
        float g = 2.0f * acc - 2.0f * row_sum[m] * to_float(x[i]);
        if (valid && !valid[m]) g += to_float(dout[i]);
        dx[i] = from_float<floatX>(to_float(dx[i]) + g);
    }
};

// dcodebook_k += sum_{j < R} 2 dlogit_jk x_j + sum_{j >= R} onehot_{j-R, k} dout_{j-R} - 2 c_k e_k
struct VqGumbelDeOp {
    static constexpr bool A_KFAST = false, B_KFAST = false;
    floatS* dE;
    const float* dl;
    const float* col_sum;
    const floatS* E;
    const floatX* x;
    const floatX* dout;
    const int* idx;
    const uint8_t* valid;
    int R;
    int M, N, K;     // codes, D, 2R
    __device__ void prepare() {}
    __device__ float a(int m, int k) const {
        if (k < R) return 2.0f * dl[(size_t)k * M + m];
        const int r = k - R;
        return (idx[r] == m && (!valid || valid[r])) ? 1.0f : 0.0f;
    }
    __device__ float b(int k, int n) const {
        return k < R ? to_float(x[(size_t)k * N + n]) : to_float(dout[(size_t)(k - R) * N + n]);
    }
    __device__ void store(int m, int n, float acc) const {
        const size_t i = (size_t)m * N + n;
        dE[i] += acc - 2.0f * col_sum[m] * E[i];
    }
};

inline void vq_gumbel_backward(floatX* dx, floatS* dcodebook, const floatX* dout, const floatS* y_soft, const int* idx,
                               const floatX* x, const floatS* codebook, const uint8_t* valid, int R, int K, int D, float tau,
                               Stream stream) {
    if (R <= 0 || D <= 0) return;
    float* dl = device_scratch<struct GumbelDLogits>((size_t)R * std::max(K, 1), stream, "vq_gumbel d logits");
    float* row_sum = device_scratch<struct GumbelRowSums>((size_t)R, stream, "vq_gumbel row sums");
    float* col_sum = device_scratch<struct GumbelColSums>((size_t)std::max(K, 1), stream, "vq_gumbel column sums");
    vq_tile_product<false>(VqGumbelDyOp{dout, codebook, dl, R, K, D}, stream, "vq_tile_product_kernel (gumbel dy)");
    vq_gumbel_dlogit_kernel<<<R, 256, 0, stream>>>(dl, row_sum, y_soft, valid, K, tau);
    cudaCheckLaunch("vq_gumbel_dlogit_kernel");
    if (K > 0) {
        vq_gumbel_colsum_kernel<<<CEIL_DIV(K, 32), 1024, 0, stream>>>(col_sum, dl, R, K);
        cudaCheckLaunch("vq_gumbel_colsum_kernel");
    }
    vq_tile_product<false>(VqGumbelDxOp{dx, dl, row_sum, codebook, x, dout, valid, R, D, K}, stream,
                           "vq_tile_product_kernel (gumbel dx)");
    vq_tile_product<false>(VqGumbelDeOp{dcodebook, dl, col_sum, codebook, x, dout, idx, valid, R, K, D, 2 * R}, stream,
                           "vq_tile_product_kernel (gumbel dcodebook)");
}
#endif
