// The relational consistency loss of the JEPA (jepa_reference.md section 5, "Relational"), on the post-VQ
// object embeddings.
//
//   one grid, e (N, D):   c_ij = adj_ij && m_i && m_j ,   R_ij(e) = ||e_i - e_j||^2 * c_ij          (N, N)
//   context grids e_ctx (B*L, N, D) (grid b*L + l), adj_ctx (B*L, N, N), mask_ctx (B*L, N) uint8
//   target grids  e_tgt (B, N, D), adj_tgt (B, N, N), mask_tgt (B, N) uint8
//   mu_b    = (1/L) sum_l R(ctx b, l)
//   dev_blij = (1/L) sum_l' (R(ctx b, l)_ij - R(ctx b, l')_ij)      (= R(ctx b, l)_ij - mu_b,ij; exactly 0 when
//                                                                     the L context grids are identical)
//   loss[0] = w_rel  * scale_t * sum_{b,i,j} (mu_b,ij - R(tgt b)_ij)^2
//   loss[1] = w_self * scale_s * sum_{b,l,i,j} dev_blij^2                                   loss: 2 floatS (=)
//   (the trainer passes scale_t = 1 / (global B * N * N), scale_s = 1 / (global B * L * N * N): the reference's
//   MSE means; L = 0 gives mu = 0 and no self term)
//
//   backward, with gR the gradient of the loss with respect to one R:
//     gR(ctx b, l)_ij = dloss * (2 w_rel scale_t (mu - R_tgt)_ij / L + 2 w_self scale_s dev_blij)
//     gR(tgt b)_ij    = -dloss * 2 w_rel scale_t (mu - R_tgt)_ij
//     (the self term's -mu part drops out: sum_l dev_l = 0)
//     per grid:  de_i = 2 sum_j (gR_ij c_ij + gR_ji c_ji) (e_i - e_j)
//   de_ctx (B*L, N, D) += ,  de_tgt (B, N, D) += ; de_tgt may be null (a detached target branch).
//
// Deterministic: per-sample sums over (i, j) in a fixed order, then a fixed-order sum over the samples.
#pragma once
#include <math.h>
#include <stdint.h>
#include <algorithm>
#include <vector>
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference (one sample b per OpenMP iteration; sums in double)

// R of one grid, e (N, D) -> R (N, N)
template <typename T>
void relational_matrix_ref(double* R, const T* e, const uint8_t* adj, const uint8_t* mask, int N, int D) {
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double r = 0;
            if (adj[i * N + j] && mask[i] && mask[j])
                for (int d = 0; d < D; d++) {
                    const double diff = (double)e[(size_t)i * D + d] - (double)e[(size_t)j * D + d];
                    r += diff * diff;
                }
            R[i * N + j] = r;
        }
}

// The L + 1 matrices of sample b: R[l] of context grid b*L + l for l < L, R[L] of the target.
template <typename T>
void relational_sample_ref(double* R, const T* e_ctx, const uint8_t* adj_ctx, const uint8_t* mask_ctx, const T* e_tgt,
                           const uint8_t* adj_tgt, const uint8_t* mask_tgt, int b, int L, int N, int D) {
    const size_t NN = (size_t)N * N;
    for (int l = 0; l < L; l++) {
        const size_t grid = (size_t)b * L + l;
        relational_matrix_ref(R + l * NN, e_ctx + grid * N * D, adj_ctx + grid * NN, mask_ctx + grid * N, N, D);
    }
    relational_matrix_ref(R + L * NN, e_tgt + (size_t)b * N * D, adj_tgt + (size_t)b * NN, mask_tgt + (size_t)b * N, N, D);
}

template <typename T>
void relational_loss_forward_ref(T* loss, const T* e_ctx, const uint8_t* adj_ctx, const uint8_t* mask_ctx, const T* e_tgt,
                                 const uint8_t* adj_tgt, const uint8_t* mask_tgt, int B, int L, int N, int D, float w_rel,
                                 float w_self, float scale_t, float scale_s) {
    const size_t NN = (size_t)N * N;
    std::vector<double> part_t(B), part_s(B);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        std::vector<double> R((L + 1) * NN);
        relational_sample_ref(R.data(), e_ctx, adj_ctx, mask_ctx, e_tgt, adj_tgt, mask_tgt, b, L, N, D);
        double t = 0, s = 0;
        for (size_t p = 0; p < NN; p++) {
            double sum = 0;
            for (int l = 0; l < L; l++) sum += R[l * NN + p];
            const double mu = L > 0 ? sum / L : 0.0, dt = mu - R[L * NN + p];
            t += dt * dt;
            for (int l = 0; l < L; l++) {
                double dev = 0;
                for (int l2 = 0; l2 < L; l2++) dev += R[l * NN + p] - R[l2 * NN + p];
                dev /= L;
                s += dev * dev;
            }
        }
        part_t[b] = t;
        part_s[b] = s;
    }
    double t = 0, s = 0;
    for (int b = 0; b < B; b++) {
        t += part_t[b];
        s += part_s[b];
    }
    loss[0] = (T)((double)w_rel * (double)scale_t * t);
    loss[1] = (T)((double)w_self * (double)scale_s * s);
}

// de (N, D) += 2 sum_j (G_ij + G_ji) (e_i - e_j) for one grid, G = gR * c (N, N)
template <typename T>
void relational_grid_backward_ref(T* de, const T* e, const double* Gm, int N, int D) {
    for (int i = 0; i < N; i++)
        for (int d = 0; d < D; d++) {
            double acc = 0;
            for (int j = 0; j < N; j++)
                acc += (Gm[i * N + j] + Gm[j * N + i]) * ((double)e[(size_t)i * D + d] - (double)e[(size_t)j * D + d]);
            de[(size_t)i * D + d] = (T)((double)de[(size_t)i * D + d] + 2.0 * acc);
        }
}

template <typename T>
void relational_loss_backward_ref(T* de_ctx, T* de_tgt, const T* e_ctx, const uint8_t* adj_ctx, const uint8_t* mask_ctx,
                                  const T* e_tgt, const uint8_t* adj_tgt, const uint8_t* mask_tgt, int B, int L, int N,
                                  int D, float w_rel, float w_self, float scale_t, float scale_s, float dloss) {
    const size_t NN = (size_t)N * N;
    const double ct = 2.0 * (double)dloss * (double)w_rel * (double)scale_t;
    const double cs = 2.0 * (double)dloss * (double)w_self * (double)scale_s;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        std::vector<double> R((L + 1) * NN), Gm((L + 1) * NN);
        relational_sample_ref(R.data(), e_ctx, adj_ctx, mask_ctx, e_tgt, adj_tgt, mask_tgt, b, L, N, D);
        for (size_t p = 0; p < NN; p++) {
            const int i = (int)(p / N), j = (int)(p % N);
            double sum = 0;
            for (int l = 0; l < L; l++) sum += R[l * NN + p];
            const double dt = (L > 0 ? sum / L : 0.0) - R[L * NN + p];
            for (int l = 0; l < L; l++) {
                const size_t grid = (size_t)b * L + l;
                double dev = 0;
                for (int l2 = 0; l2 < L; l2++) dev += R[l * NN + p] - R[l2 * NN + p];
                dev /= L;
                const bool c = adj_ctx[grid * NN + p] && mask_ctx[grid * N + i] && mask_ctx[grid * N + j];
                Gm[l * NN + p] = c ? ct * dt / L + cs * dev : 0.0;
            }
            const bool c = adj_tgt[(size_t)b * NN + p] && mask_tgt[(size_t)b * N + i] && mask_tgt[(size_t)b * N + j];
            Gm[L * NN + p] = c ? -ct * dt : 0.0;
        }
        for (int l = 0; l < L; l++) {
            const size_t grid = (size_t)b * L + l;
            relational_grid_backward_ref(de_ctx + grid * N * D, e_ctx + grid * N * D, Gm.data() + l * NN, N, D);
        }
        if (de_tgt) relational_grid_backward_ref(de_tgt + (size_t)b * N * D, e_tgt + (size_t)b * N * D, Gm.data() + L * NN, N, D);
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void relational_loss_forward(floatS* loss, const floatX* e_ctx, const uint8_t* adj_ctx, const uint8_t* mask_ctx,
                                    const floatX* e_tgt, const uint8_t* adj_tgt, const uint8_t* mask_tgt, int B, int L,
                                    int N, int D, float w_rel, float w_self, float scale_t, float scale_s, Stream) {
    relational_loss_forward_ref(loss, e_ctx, adj_ctx, mask_ctx, e_tgt, adj_tgt, mask_tgt, B, L, N, D, w_rel, w_self,
                                scale_t, scale_s);
}
inline void relational_loss_backward(floatX* de_ctx, floatX* de_tgt, const floatX* e_ctx, const uint8_t* adj_ctx,
                                     const uint8_t* mask_ctx, const floatX* e_tgt, const uint8_t* adj_tgt,
                                     const uint8_t* mask_tgt, int B, int L, int N, int D, float w_rel, float w_self,
                                     float scale_t, float scale_s, float dloss, Stream) {
    relational_loss_backward_ref(de_ctx, de_tgt, e_ctx, adj_ctx, mask_ctx, e_tgt, adj_tgt, mask_tgt, B, L, N, D, w_rel,
                                 w_self, scale_t, scale_s, dloss);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA. One block of 256 threads per sample b; its L + 1 matrices R (fp32) live in shared memory.
//   R:        one warp per unordered pair (i < j) of one of the L + 1 grids (pairs with c_ij = c_ji = 0 are
//             skipped); the lanes stride over d, then a warp sum (fixed order); lane 0 writes R_ij and R_ji.
//   forward:  threads over (i, j) add (mu - R_tgt)^2 and sum_l dev_l^2; two block sums give the sample's
//             partial sums (a (B, 2) fp32 scratch buffer); a second kernel, one block, sums them over b in a
//             fixed order and writes the two losses.
//   backward: threads over (i, j) form G = gR * c of the L + 1 grids in shared memory; then, grid by grid,
//             threads over (i, d) sum (G_ij + G_ji)(e_i[d] - e_j[d]) over j in order and add 2x that to de
//             (consecutive d: coalesced).
// Shared memory: 2 (L + 1) N^2 floats (8 KB at L = 3, N = 16).

#ifdef __CUDACC__
constexpr int RELATIONAL_BLOCK = 256;

// R (L + 1, N, N) of sample b into shared memory (ends with a barrier).
__device__ inline void relational_matrices(float* R, const floatX* e_ctx, const uint8_t* adj_ctx, const uint8_t* mask_ctx,
                                           const floatX* e_tgt, const uint8_t* adj_tgt, const uint8_t* mask_tgt, int b,
                                           int L, int N, int D) {
    const int NN = N * N;
    for (int p = threadIdx.x; p < (L + 1) * NN; p += blockDim.x) R[p] = 0.0f;
    __syncthreads();
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, n_warps = blockDim.x / WARP_SIZE;
    for (int w = warp; w < (L + 1) * NN; w += n_warps) {     // warp-uniform: w, and so (c, i, j), is per warp
        const int c = w / NN, i = (w % NN) / N, j = w % N;
        if (j <= i) continue;
        const size_t grid = c < L ? (size_t)b * L + c : (size_t)b;
        const floatX* e = (c < L ? e_ctx : e_tgt) + grid * N * D;
        const uint8_t* adj = (c < L ? adj_ctx : adj_tgt) + grid * NN;
        const uint8_t* mask = (c < L ? mask_ctx : mask_tgt) + grid * N;
        const bool valid = mask[i] && mask[j], cij = valid && adj[i * N + j], cji = valid && adj[j * N + i];
        if (!cij && !cji) continue;
        float acc = 0.0f;
        for (int d = lane; d < D; d += WARP_SIZE) {
            const float diff = to_float(e[(size_t)i * D + d]) - to_float(e[(size_t)j * D + d]);
            acc += diff * diff;
        }
        acc = warp_reduce_sum(acc);
        if (lane == 0) {
            R[c * NN + i * N + j] = cij ? acc : 0.0f;
            R[c * NN + j * N + i] = cji ? acc : 0.0f;
        }
    }
    __syncthreads();
}

// mu - R_tgt at entry p, and dev_l = (1/L) sum_l' (R_l - R_l') for context grid l
__device__ inline float relational_dt(const float* R, int p, int L, int NN) {
    float sum = 0.0f;
    for (int l = 0; l < L; l++) sum += R[l * NN + p];
    return (L > 0 ? sum / (float)L : 0.0f) - R[L * NN + p];
}
__device__ inline float relational_dev(const float* R, int p, int l, int L, int NN) {
    float dev = 0.0f;
    for (int l2 = 0; l2 < L; l2++) dev += R[l * NN + p] - R[l2 * NN + p];
    return dev / (float)L;
}

__global__ void relational_loss_partial_kernel(float* partial, const floatX* e_ctx, const uint8_t* adj_ctx,
                                               const uint8_t* mask_ctx, const floatX* e_tgt, const uint8_t* adj_tgt,
                                               const uint8_t* mask_tgt, int L, int N, int D) {
    extern __shared__ float R[];
    __shared__ float scratch[WARP_SIZE];
    const int b = blockIdx.x, NN = N * N;
    relational_matrices(R, e_ctx, adj_ctx, mask_ctx, e_tgt, adj_tgt, mask_tgt, b, L, N, D);
    float t = 0.0f, s = 0.0f;
    for (int p = threadIdx.x; p < NN; p += blockDim.x) {
        const float dt = relational_dt(R, p, L, NN);
        t += dt * dt;
        for (int l = 0; l < L; l++) {
            const float dev = relational_dev(R, p, l, L, NN);
            s += dev * dev;
        }
    }
    t = block_reduce_sum(t, scratch);
    s = block_reduce_sum(s, scratch);
    if (threadIdx.x == 0) {
        partial[2 * (size_t)b] = t;
        partial[2 * (size_t)b + 1] = s;
    }
}

__global__ void relational_loss_total_kernel(floatS* loss, const float* partial, int B, float w_rel, float w_self,
                                             float scale_t, float scale_s) {
    __shared__ float scratch[WARP_SIZE];
    float t = 0.0f, s = 0.0f;
    for (int b = threadIdx.x; b < B; b += blockDim.x) {
        t += partial[2 * (size_t)b];
        s += partial[2 * (size_t)b + 1];
    }
    t = block_reduce_sum(t, scratch);
    s = block_reduce_sum(s, scratch);
    if (threadIdx.x == 0) {
        loss[0] = w_rel * scale_t * t;
        loss[1] = w_self * scale_s * s;
    }
}

__global__ void relational_loss_backward_kernel(floatX* de_ctx, floatX* de_tgt, const floatX* e_ctx, const uint8_t* adj_ctx,
                                                const uint8_t* mask_ctx, const floatX* e_tgt, const uint8_t* adj_tgt,
                                                const uint8_t* mask_tgt, int L, int N, int D, float ct, float cs) {
    extern __shared__ float smem[];
    const int b = blockIdx.x, NN = N * N;
    float* R = smem;                   // (L + 1, N, N)
    float* Gm = smem + (L + 1) * NN;   // (L + 1, N, N)
    relational_matrices(R, e_ctx, adj_ctx, mask_ctx, e_tgt, adj_tgt, mask_tgt, b, L, N, D);
    for (int p = threadIdx.x; p < NN; p += blockDim.x) {
        const int i = p / N, j = p % N;
        const float dt = relational_dt(R, p, L, NN);
        for (int l = 0; l < L; l++) {
            const size_t grid = (size_t)b * L + l;
            const bool c = adj_ctx[grid * NN + p] && mask_ctx[grid * N + i] && mask_ctx[grid * N + j];
            Gm[l * NN + p] = c ? ct * dt / (float)L + cs * relational_dev(R, p, l, L, NN) : 0.0f;
        }
        const bool c = adj_tgt[(size_t)b * NN + p] && mask_tgt[(size_t)b * N + i] && mask_tgt[(size_t)b * N + j];
        Gm[L * NN + p] = c ? -ct * dt : 0.0f;
    }
    __syncthreads();
    for (int c = 0; c <= L; c++) {
        if (c == L && !de_tgt) break;
        const size_t grid = c < L ? (size_t)b * L + c : (size_t)b;
        const floatX* e = (c < L ? e_ctx : e_tgt) + grid * N * D;
        floatX* de = (c < L ? de_ctx : de_tgt) + grid * N * D;
        const float* G = Gm + c * NN;
        for (int idx = threadIdx.x; idx < N * D; idx += blockDim.x) {
            const int i = idx / D, d = idx % D;
            const float ei = to_float(e[idx]);
            float acc = 0.0f;
            for (int j = 0; j < N; j++) {
                const float g = G[i * N + j] + G[j * N + i];
                if (g != 0.0f) acc += g * (ei - to_float(e[(size_t)j * D + d]));
            }
            de[idx] = from_float<floatX>(to_float(de[idx]) + 2.0f * acc);
        }
    }
}

// The dynamic shared memory of a block: n_mats (L + 1, N, N) fp32 matrices (R; and the backward's G). Beyond 48 KB
// (with the partial kernel's static scratch) the launchers opt in up to the device's limit (smem_opt_in).
inline size_t relational_smem(int L, int N, int n_mats) { return (size_t)n_mats * (L + 1) * N * N * sizeof(float); }

inline void relational_loss_forward(floatS* loss, const floatX* e_ctx, const uint8_t* adj_ctx, const uint8_t* mask_ctx,
                                    const floatX* e_tgt, const uint8_t* adj_tgt, const uint8_t* mask_tgt, int B, int L,
                                    int N, int D, float w_rel, float w_self, float scale_t, float scale_s, Stream stream) {
    float* partial = device_scratch<struct RelationalPartials>(2 * (size_t)std::max(B, 1), stream, "relational_loss partial sums");   // (B, 2)
    if (B > 0 && N > 0) {
        const size_t smem = relational_smem(L, N, 1);
        smem_opt_in(relational_loss_partial_kernel, smem, "relational_loss_forward", "B = %d, L = %d, N = %d, D = %d", B, L, N, D);
        relational_loss_partial_kernel<<<B, RELATIONAL_BLOCK, smem, stream>>>(
            partial, e_ctx, adj_ctx, mask_ctx, e_tgt, adj_tgt, mask_tgt, L, N, D);
        cudaCheckLaunch("relational_loss_partial_kernel");
    }
    // always: writes the two losses (0 for an empty batch)
    relational_loss_total_kernel<<<1, 512, 0, stream>>>(loss, partial, N > 0 ? B : 0, w_rel, w_self, scale_t, scale_s);
    cudaCheckLaunch("relational_loss_total_kernel");
}

inline void relational_loss_backward(floatX* de_ctx, floatX* de_tgt, const floatX* e_ctx, const uint8_t* adj_ctx,
                                     const uint8_t* mask_ctx, const floatX* e_tgt, const uint8_t* adj_tgt,
                                     const uint8_t* mask_tgt, int B, int L, int N, int D, float w_rel, float w_self,
                                     float scale_t, float scale_s, float dloss, Stream stream) {
    if ((size_t)B * N * D == 0) return;
    const float ct = 2.0f * dloss * w_rel * scale_t, cs = 2.0f * dloss * w_self * scale_s;
    const size_t smem = relational_smem(L, N, 2);
    smem_opt_in(relational_loss_backward_kernel, smem, "relational_loss_backward", "B = %d, L = %d, N = %d, D = %d", B, L, N, D);
    relational_loss_backward_kernel<<<B, RELATIONAL_BLOCK, smem, stream>>>(
        de_ctx, de_tgt, e_ctx, adj_ctx, mask_ctx, e_tgt, adj_tgt, mask_tgt, L, N, D, ct, cs);
    cudaCheckLaunch("relational_loss_backward_kernel");
}
#endif
