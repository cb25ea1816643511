// InfoNCE with a queue of negatives and a learnable, clamped temperature (jepa_reference.md sections 5 and 11).
//
//   c (Bc, P) floatX: the context projections (rows i); the candidates j = 0 .. Bt + Q - 1 are
//   t (Bt, P) floatX (the targets, j < Bt), then queue (Q, P) floatS (fp32, detached; j = Bt + q)
//   pos (Bc) int on the device, pos[i] in [0, Bt): the positive of row i (the reference: pos[i] = i)
//   tau = clamp(exp(*log_tau), tau_min, tau_max)      (read on the device: no host synchronisation)
//   logits_ij = (c_i . cand_j) / tau
//   CE_i = logsumexp_j logits_ij - logits_{i, pos(i)} ;  loss = scale * sum_i CE_i               (scalar, =)
//   probs (Bc, Bt + Q) floatS = softmax_j(logits_i): written by the forward, read by the backward.
//   The reference is cross_entropy(logits, label 0) with the positive in column 0 (a permutation of these
//   columns: the same value), scale = 1 / Bc (its mean), times 1/grad_accum.
//
//   backward, G_ij = dloss * scale * (probs_ij - [j == pos(i)]):
//     dc_i = (1/tau) sum_j G_ij cand_j                                                  (=)
//     dt_j = (1/tau) sum_i G_ij c_i for j < Bt (dt may be null: no gradient to the targets) (=)
//     dlog_tau += -(1/tau) sum_ij G_ij (c_i . cand_j) = -sum_i c_i . dc_i, or += 0 when exp(log_tau) lies outside
//                [tau_min, tau_max] (torch.clamp's gradient; the bounds themselves count as inside)
//     (dtau / dlog_tau = tau and dlogits_ij / dtau = -logits_ij / tau give -(1/tau) sum G_ij (c_i . cand_j).)
//
// Deterministic: every dot product and every gradient element is summed by one thread in a fixed order
// (vq_tile_product of vq.cuh); the softmax sums and the loss / dlog_tau sums use fixed-order block reductions.
// Bc = 0 gives loss = 0; Bc > 0 needs Bt >= 1.
#pragma once
#include <math.h>
#include <stdint.h>
#include <algorithm>
#include <cmath>
#include <vector>
#include "../common/device.h"
#include "vq.cuh"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

inline void infonce_check_sizes(int Bc, int Bt, int Q, int P) {
    if (Bc < 0 || Bt < 0 || Q < 0 || P < 0) fatal("infonce: negative size (Bc %d, Bt %d, Q %d, P %d)", Bc, Bt, Q, P);
    if (Bc > 0 && Bt <= 0) fatal("infonce: %d context rows but no targets (the positives are targets: Bt >= 1)", Bc);
}

template <typename TS>
inline double infonce_tau_ref(const TS* log_tau, float tau_min, float tau_max, bool* clamped = nullptr) {
    const double e = std::exp((double)*log_tau);
    if (clamped) *clamped = e < (double)tau_min || e > (double)tau_max;
    return std::min(std::max(e, (double)tau_min), (double)tau_max);
}

template <typename TX, typename TS>
inline double infonce_dot_ref(const TX* ci, const TX* t, const TS* queue, int j, int Bt, int P) {
    double s = 0;
    if (j < Bt)
        for (int p = 0; p < P; p++) s += (double)ci[p] * (double)t[(size_t)j * P + p];
    else
        for (int p = 0; p < P; p++) s += (double)ci[p] * (double)queue[(size_t)(j - Bt) * P + p];
    return s;
}

template <typename TS, typename TX>
void infonce_forward_ref(TS* loss, TS* probs, const TX* c, const TX* t, const TS* queue, const int* pos, const TS* log_tau,
                         int Bc, int Bt, int Q, int P, float tau_min, float tau_max, float scale) {
    infonce_check_sizes(Bc, Bt, Q, P);
    const double tau = infonce_tau_ref(log_tau, tau_min, tau_max);
    const int Nc = Bt + Q;
    std::vector<double> ce(Bc);
#pragma omp parallel
    {
        std::vector<double> l(Nc);
#pragma omp for schedule(static)
        for (int i = 0; i < Bc; i++) {
            const TX* ci = c + (size_t)i * P;
            double mx = -INFINITY;
            for (int j = 0; j < Nc; j++) {
                l[j] = infonce_dot_ref(ci, t, queue, j, Bt, P) / tau;
                mx = std::max(mx, l[j]);
            }
            double s = 0;
            for (int j = 0; j < Nc; j++) s += std::exp(l[j] - mx);
            ce[i] = mx + std::log(s) - l[pos[i]];
            for (int j = 0; j < Nc; j++) probs[(size_t)i * Nc + j] = (TS)(std::exp(l[j] - mx) / s);
        }
    }
    double sum = 0;
    for (int i = 0; i < Bc; i++) sum += ce[i];
    *loss = (TS)((double)scale * sum);
}

template <typename TX, typename TS>
void infonce_backward_ref(TX* dc, TX* dt, TS* dlog_tau, const TS* probs, const TX* c, const TX* t, const TS* queue,
                          const int* pos, const TS* log_tau, int Bc, int Bt, int Q, int P, float tau_min, float tau_max,
                          float scale, float dloss) {
    infonce_check_sizes(Bc, Bt, Q, P);
    bool clamped = false;
    const double tau = infonce_tau_ref(log_tau, tau_min, tau_max, &clamped);
    const double gs = (double)dloss * (double)scale;
    const int Nc = Bt + Q;
    std::vector<double> part(Bc);      // -c_i . dc_i
#pragma omp parallel
    {
        std::vector<double> acc(P);
#pragma omp for schedule(static)
        for (int i = 0; i < Bc; i++) {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int j = 0; j < Nc; j++) {
                const double g = gs * ((double)probs[(size_t)i * Nc + j] - (j == pos[i] ? 1.0 : 0.0));
                if (j < Bt)
                    for (int p = 0; p < P; p++) acc[p] += g * (double)t[(size_t)j * P + p];
                else
                    for (int p = 0; p < P; p++) acc[p] += g * (double)queue[(size_t)(j - Bt) * P + p];
            }
            double dot = 0;
            for (int p = 0; p < P; p++) {
                const double v = acc[p] / tau;
                dc[(size_t)i * P + p] = (TX)v;
                dot += (double)c[(size_t)i * P + p] * v;
            }
            part[i] = -dot;
        }
        if (dt) {
#pragma omp for schedule(static)
            for (int j = 0; j < Bt; j++) {
                std::fill(acc.begin(), acc.end(), 0.0);
                for (int i = 0; i < Bc; i++) {
                    const double g = gs * ((double)probs[(size_t)i * Nc + j] - (j == pos[i] ? 1.0 : 0.0));
                    for (int p = 0; p < P; p++) acc[p] += g * (double)c[(size_t)i * P + p];
                }
                for (int p = 0; p < P; p++) dt[(size_t)j * P + p] = (TX)(acc[p] / tau);
            }
        }
    }
    double sum = 0;
    for (int i = 0; i < Bc; i++) sum += part[i];
    if (!clamped) *dlog_tau = (TS)((double)*dlog_tau + sum);
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void infonce_forward(floatS* loss, floatS* probs, const floatX* c, const floatX* t, const floatS* queue,
                            const int* pos, const floatS* log_tau, int Bc, int Bt, int Q, int P, float tau_min,
                            float tau_max, float scale, Stream) {
    infonce_forward_ref(loss, probs, c, t, queue, pos, log_tau, Bc, Bt, Q, P, tau_min, tau_max, scale);
}
inline void infonce_backward(floatX* dc, floatX* dt, floatS* dlog_tau, const floatS* probs, const floatX* c,
                             const floatX* t, const floatS* queue, const int* pos, const floatS* log_tau, int Bc, int Bt,
                             int Q, int P, float tau_min, float tau_max, float scale, float dloss, Stream) {
    infonce_backward_ref(dc, dt, dlog_tau, probs, c, t, queue, pos, log_tau, Bc, Bt, Q, P, tau_min, tau_max, scale, dloss);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA. Forward: (1) vq_tile_product writes the dot products c_i . cand_j into probs (64 x 64 tiles, one thread
// per output summing p in order); (2) one block per row i (256 threads over j): logits = dot / tau, the row max
// (block max), sum_j exp(l_j - max) (each thread in order, then block_reduce_sum), CE_i into a scratch and probs
// in place; (3) one block adds the CE_i in a fixed order, times scale.
// Backward: (1) vq_tile_product dc = (1/tau) G cand (one thread per (i, p) summing j in order), also kept in fp32
// in a scratch; (2) vq_tile_product dt = (1/tau) G^T c over i in order; (3) one block sums c_i . dc_i over all
// (i, p) in a fixed order into dlog_tau (skipped when tau is clamped).

#ifdef __CUDACC__
__device__ inline float infonce_tau_device(const floatS* log_tau, float tau_min, float tau_max, bool* clamped = nullptr) {
    const float e = expf(*log_tau);
    if (clamped) *clamped = e < tau_min || e > tau_max;
    return fminf(fmaxf(e, tau_min), tau_max);
}

// dot[i, j] = c_i . cand_j
struct InfonceDotOp {
    static constexpr bool A_KFAST = true, B_KFAST = true;
    floatS* probs;
    const floatX* c;
    const floatX* t;
    const floatS* queue;
    int Bt;
    int M, N, K;     // Bc, Bt + Q, P
    __device__ void prepare() {}
    __device__ float a(int m, int k) const { return to_float(c[(size_t)m * K + k]); }
    __device__ float b(int k, int n) const {
        return n < Bt ? to_float(t[(size_t)n * K + k]) : (float)queue[(size_t)(n - Bt) * K + k];
    }
    __device__ void store(int m, int n, float acc) const { probs[(size_t)m * N + n] = acc; }
};

__global__ void infonce_softmax_kernel(floatS* probs, float* ce, const int* pos, const floatS* log_tau, int Nc,
                                       float tau_min, float tau_max) {
    __shared__ float scratch[WARP_SIZE];
    const int i = blockIdx.x;
    floatS* row = probs + (size_t)i * Nc;
    const float inv_tau = 1.0f / infonce_tau_device(log_tau, tau_min, tau_max);
    const float l_pos = row[pos[i]] * inv_tau;          // read before the row is overwritten (barriers below)
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < Nc; j += blockDim.x) mx = fmaxf(mx, row[j] * inv_tau);
    mx = warp_reduce_max(mx);
    __syncthreads();
    if (threadIdx.x % WARP_SIZE == 0) scratch[threadIdx.x / WARP_SIZE] = mx;
    __syncthreads();
    mx = scratch[0];
    for (int w = 1; w < (int)(blockDim.x / WARP_SIZE); w++) mx = fmaxf(mx, scratch[w]);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < Nc; j += blockDim.x) sum += expf(row[j] * inv_tau - mx);
    sum = block_reduce_sum(sum, scratch);
    const float inv_sum = 1.0f / sum;
    for (int j = threadIdx.x; j < Nc; j += blockDim.x) row[j] = expf(row[j] * inv_tau - mx) * inv_sum;
    if (threadIdx.x == 0) ce[i] = mx + logf(sum) - l_pos;
}

inline void infonce_forward(floatS* loss, floatS* probs, const floatX* c, const floatX* t, const floatS* queue,
                            const int* pos, const floatS* log_tau, int Bc, int Bt, int Q, int P, float tau_min,
                            float tau_max, float scale, Stream stream) {
    infonce_check_sizes(Bc, Bt, Q, P);
    if (Bc == 0) {                                            // the empty sum
        cudaCheck(cudaMemsetAsync(loss, 0, sizeof(floatS), stream));
        return;
    }
    const int Nc = Bt + Q;
    float* ce = device_scratch<struct InfonceRowLosses>((size_t)Bc, stream, "infonce row losses");
    vq_tile_product<false>(InfonceDotOp{probs, c, t, queue, Bt, Bc, Nc, P}, stream, "vq_tile_product_kernel (infonce dots)");
    infonce_softmax_kernel<<<Bc, 256, 0, stream>>>(probs, ce, pos, log_tau, Nc, tau_min, tau_max);
    cudaCheckLaunch("infonce_softmax_kernel");
    vq_sum_scaled_kernel<<<1, 1024, 0, stream>>>(loss, ce, Bc, scale);
    cudaCheckLaunch("vq_sum_scaled_kernel (infonce)");
}

// dc[i, p] = (1/tau) sum_j G_ij cand_j[p]; also into dcf (fp32) for dlog_tau
struct InfonceDcOp {
    static constexpr bool A_KFAST = true, B_KFAST = false;
    floatX* dc;
    float* dcf;
    const floatS* probs;
    const int* pos;
    const floatX* t;
    const floatS* queue;
    const floatS* log_tau;
    float tau_min, tau_max, gs;
    int Bt;
    int M, N, K;     // Bc, P, Bt + Q
    float inv_tau;
    __device__ void prepare() { inv_tau = 1.0f / infonce_tau_device(log_tau, tau_min, tau_max); }
    __device__ float a(int m, int k) const { return gs * ((float)probs[(size_t)m * K + k] - (k == pos[m] ? 1.0f : 0.0f)); }
    __device__ float b(int k, int n) const {
        return k < Bt ? to_float(t[(size_t)k * N + n]) : (float)queue[(size_t)(k - Bt) * N + n];
    }
    __device__ void store(int m, int n, float acc) const {
        const float v = acc * inv_tau;
        dcf[(size_t)m * N + n] = v;
        dc[(size_t)m * N + n] = from_float<floatX>(v);
    }
};

// dt[j, p] = (1/tau) sum_i G_ij c_i[p]
struct InfonceDtOp {
    static constexpr bool A_KFAST = false, B_KFAST = false;
    floatX* dt;
    const floatS* probs;
    const int* pos;
    const floatX* c;
    const floatS* log_tau;
    float tau_min, tau_max, gs;
    int Nc;
    int M, N, K;     // Bt, P, Bc
    float inv_tau;
    __device__ void prepare() { inv_tau = 1.0f / infonce_tau_device(log_tau, tau_min, tau_max); }
    __device__ float a(int m, int k) const { return gs * ((float)probs[(size_t)k * Nc + m] - (m == pos[k] ? 1.0f : 0.0f)); }
    __device__ float b(int k, int n) const { return to_float(c[(size_t)k * N + n]); }
    __device__ void store(int m, int n, float acc) const { dt[(size_t)m * N + n] = from_float<floatX>(acc * inv_tau); }
};

// dlog_tau += -sum_{i,p} c_ip dc_ip: one block, thread e takes elements e, e + blockDim, ... in order.
__global__ void infonce_dlog_tau_kernel(floatS* dlog_tau, const floatX* c, const float* dcf, size_t n, const floatS* log_tau,
                                        float tau_min, float tau_max) {
    __shared__ float scratch[WARP_SIZE];
    bool clamped = false;
    infonce_tau_device(log_tau, tau_min, tau_max, &clamped);
    if (clamped) return;               // uniform over the block
    float sum = 0.0f;
    for (size_t e = threadIdx.x; e < n; e += blockDim.x) sum = fmaf(to_float(c[e]), dcf[e], sum);
    sum = block_reduce_sum(sum, scratch);
    if (threadIdx.x == 0) *dlog_tau -= sum;
}

inline void infonce_backward(floatX* dc, floatX* dt, floatS* dlog_tau, const floatS* probs, const floatX* c,
                             const floatX* t, const floatS* queue, const int* pos, const floatS* log_tau, int Bc, int Bt,
                             int Q, int P, float tau_min, float tau_max, float scale, float dloss, Stream stream) {
    infonce_check_sizes(Bc, Bt, Q, P);
    const int Nc = Bt + Q;
    const float gs = dloss * scale;
    if (Bc > 0 && P > 0) {
        float* dcf = device_scratch<struct InfonceDc>((size_t)Bc * P, stream, "infonce fp32 dc");
        InfonceDcOp op_dc{dc, dcf, probs, pos, t, queue, log_tau, tau_min, tau_max, gs, Bt, Bc, P, Nc, 0.0f};
        vq_tile_product<false>(op_dc, stream, "vq_tile_product_kernel (infonce dc)");
        infonce_dlog_tau_kernel<<<1, 1024, 0, stream>>>(dlog_tau, c, dcf, (size_t)Bc * P, log_tau, tau_min, tau_max);
        cudaCheckLaunch("infonce_dlog_tau_kernel");
    }
    if (dt) {
        InfonceDtOp op_dt{dt, probs, pos, c, log_tau, tau_min, tau_max, gs, Nc, Bt, P, Bc, 0.0f};
        vq_tile_product<false>(op_dt, stream, "vq_tile_product_kernel (infonce dt)");
    }
}
#endif
