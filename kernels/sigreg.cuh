// SIGReg, the sketched isotropic-Gaussian regulariser of LeJEPA (jepa_reference.md section 9), in the package's
// fast form: the Epps-Pulley statistic of M random 1-d projections, integrated on [0, t_max] by the trapezoid rule.
// Two variants (SigregVariant, the last argument before the stream):
//   SIGREG_LEJEPA       the formulas below (section 9);
//   SIGREG_DEPRECATED   the reference repository's accidental variant (section 5, "SIGReg as implemented in the repo":
//                       the vendored deprecated EppsPulley that won): see the end of this comment.
//
//   z (N, K) floatX (not normalised), A (K, M) floatS with unit-norm columns (sigreg_directions_ref draws them)
//   knots     t_j = j dt, j = 0..P-1, P = 17, dt = t_max / (P - 1), t_max = 3;  phi_j = exp(-t_j^2 / 2)
//   weights   w_j = 2 dt phi_j inside, dt phi_j at the two ends (the factor 2 folds in the mirror half [-t_max, 0])
//   per slice m:   x_mn = sum_k z_nk A_km
//                  c_mj = (1/N) sum_n cos(t_j x_mn),   s_mj = (1/N) sum_n sin(t_j x_mn)        (cs, (M, 2P): c then s)
//                  T_m  = N sum_j w_j [(c_mj - phi_j)^2 + s_mj^2]                                (per_slice, (M), optional)
//   loss     = (1/M) sum_m T_m                                                                    (floatS scalar)
//
//   For z ~ N(0, I): E[N (c_j - phi_j)^2 + N s_j^2] = Var cos + Var sin = 1 - exp(-t_j^2) exactly, so
//   E[loss] = sum_j w_j (1 - exp(-t_j^2)) ~ 1.05, for every N.
//
//   backward, with dc_mj/dx_mn = -t_j sin(t_j x_mn) / N and ds_mj/dx_mn = t_j cos(t_j x_mn) / N:
//     g_mn  = dT_m/dx_mn = N sum_j w_j [2 (c_mj - phi_j)(-t_j sin(t_j x_mn) / N) + 2 s_mj (t_j cos(t_j x_mn) / N)]
//           = sum_j 2 w_j t_j [s_mj cos(t_j x_mn) - (c_mj - phi_j) sin(t_j x_mn)]
//     dz_nk = dloss (1/M) sum_m g_mn A_km                                                         (=)
//   The backward reads the forward's cs (c and s of every slice) and recomputes x = z A.
//
// SIGREG_DEPRECATED (lejepa/univariate/epps_pulley.py, the second `class EppsPulley`, n_points = 17):
//   knots     t_j = -t_max + j dt, j = 0..P-1, dt = 2 t_max / (P - 1) = 0.375   (torch.linspace(-3, 3, 17))
//   weights   w_j = dt phi_j inside, dt/2 phi_j at the two ends                  (torch.trapz times exp(-t^2/2))
//   T_m  = sum_j w_j [(c_mj - phi_j)^2 + s_mj^2]          = int_{-3}^{3} |phi_hat(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt
//   i.e. the same formulas with these 17 knots and NO factor N, so g_mn above gets a factor 1/N. cs keeps its
//   layout (c then s at the 17 knots t_j; s is odd in t, c even). Applied to L2-normalised 256-d rows (the repo
//   does; the op does not normalise) every slice has variance ~1/256, and the value is ~0.40 whether the rows are
//   isotropic or fully collapsed: the documented defect (almost no anti-collapse signal).
//
// The per-slice statistics are computed in fp32 on the GPU (double in the CPU reference). Deterministic: the sums
// over n and over m run in a fixed order (block_reduce_sum), no atomics.
// Multi-GPU (not done here): all-reduce(AVG) cs between the statistics and the loss, N = the global batch.
#pragma once
#include <math.h>
#include <stdint.h>
#include <algorithm>
#include <vector>
#include "../common/device.h"
#include "../common/rand.h"

#define SIGREG_POINTS 17
#define SIGREG_TMAX 3.0

enum SigregVariant { SIGREG_LEJEPA, SIGREG_DEPRECATED };

// Knot j of the variant: t_j, phi_j = exp(-t_j^2 / 2) and the trapezoid weight w_j (phi included).
HOST_DEVICE inline void sigreg_knot(int j, double* t, double* phi, double* w, SigregVariant variant) {
    const bool end = j == 0 || j == SIGREG_POINTS - 1;
    if (variant == SIGREG_DEPRECATED) {
        const double dt = 2.0 * SIGREG_TMAX / (SIGREG_POINTS - 1);       // 0.375: every t_j is exact
        *t = -SIGREG_TMAX + j * dt;
        *phi = exp(-0.5 * (*t) * (*t));
        *w = (end ? 0.5 * dt : dt) * (*phi);
    } else {
        const double dt = SIGREG_TMAX / (SIGREG_POINTS - 1);             // 3/16
        *t = j * dt;
        *phi = exp(-0.5 * (*t) * (*t));
        *w = (end ? dt : 2.0 * dt) * (*phi);
    }
}

// The factor in front of the integral: N (LeJEPA) or 1 (the deprecated variant).
HOST_DEVICE inline double sigreg_factor(int N, SigregVariant variant) {
    return variant == SIGREG_DEPRECATED ? 1.0 : (double)N;
}

// ----------------------------------------------------------------------------------------------------------
// CPU reference

// The M slice directions, the same on every backend and rank for a given seed (the caller passes the step):
// A[k, m] = hash_normal(seed, k, m), each column then scaled to unit norm (in double).
template <typename T>
void sigreg_directions_ref(T* A, int K, int M, uint64_t seed) {
    for (int m = 0; m < M; m++) {
        double ss = 0;
        for (int k = 0; k < K; k++) {
            const double a = (double)hash_normal(seed, (uint64_t)k, (uint64_t)m);
            A[(size_t)k * M + m] = (T)a;
            ss += a * a;
        }
        const double inv = ss > 0 ? 1.0 / sqrt(ss) : 0.0;
        for (int k = 0; k < K; k++) A[(size_t)k * M + m] = (T)((double)hash_normal(seed, (uint64_t)k, (uint64_t)m) * inv);
    }
}

// T_m of one slice from its c, s (2P values).
template <typename T>
double sigreg_slice_value(const T* cs, int N, SigregVariant variant) {
    double sum = 0;
    for (int j = 0; j < SIGREG_POINTS; j++) {
        double t, phi, w;
        sigreg_knot(j, &t, &phi, &w, variant);
        const double dc = (double)cs[j] - phi, s = (double)cs[SIGREG_POINTS + j];
        sum += w * (dc * dc + s * s);
    }
    return sigreg_factor(N, variant) * sum;
}

template <typename T>
void sigreg_forward_ref(T* loss, T* per_slice, T* cs, const T* z, const T* A, int N, int K, int M,
                        SigregVariant variant) {
    std::vector<double> Tm(M);
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++) {
        double c[SIGREG_POINTS] = {0}, s[SIGREG_POINTS] = {0}, t[SIGREG_POINTS], phi, w;
        for (int j = 0; j < SIGREG_POINTS; j++) sigreg_knot(j, &t[j], &phi, &w, variant);
        for (int n = 0; n < N; n++) {
            double x = 0;
            for (int k = 0; k < K; k++) x += (double)z[(size_t)n * K + k] * (double)A[(size_t)k * M + m];
            for (int j = 0; j < SIGREG_POINTS; j++) {
                c[j] += cos(t[j] * x);
                s[j] += sin(t[j] * x);
            }
        }
        double csd[2 * SIGREG_POINTS];
        for (int j = 0; j < SIGREG_POINTS; j++) {
            csd[j] = c[j] / (N > 0 ? N : 1);
            csd[SIGREG_POINTS + j] = s[j] / (N > 0 ? N : 1);
            cs[(size_t)m * 2 * SIGREG_POINTS + j] = (T)csd[j];
            cs[(size_t)m * 2 * SIGREG_POINTS + SIGREG_POINTS + j] = (T)csd[SIGREG_POINTS + j];
        }
        Tm[m] = sigreg_slice_value(csd, N, variant);
        if (per_slice) per_slice[m] = (T)Tm[m];
    }
    double sum = 0;
    for (int m = 0; m < M; m++) sum += Tm[m];
    *loss = (T)(M > 0 ? sum / M : 0.0);
}

template <typename T>
void sigreg_backward_ref(T* dz, const T* z, const T* A, const T* cs, const T* dloss, int N, int K, int M,
                         SigregVariant variant) {
    // dloss / M, and the variant's factor / N (1, or 1/N for the deprecated variant)
    const double scale = M > 0 ? (double)*dloss / M * sigreg_factor(N, variant) / (N > 0 ? N : 1) : 0.0;
#pragma omp parallel
    {
        std::vector<double> g(M);
        double t[SIGREG_POINTS], phi[SIGREG_POINTS], w[SIGREG_POINTS];
        for (int j = 0; j < SIGREG_POINTS; j++) sigreg_knot(j, &t[j], &phi[j], &w[j], variant);
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            for (int m = 0; m < M; m++) {
                double x = 0;
                for (int k = 0; k < K; k++) x += (double)z[(size_t)n * K + k] * (double)A[(size_t)k * M + m];
                const T* c = cs + (size_t)m * 2 * SIGREG_POINTS;
                double gm = 0;
                for (int j = 0; j < SIGREG_POINTS; j++)
                    gm += 2.0 * w[j] * t[j] * ((double)c[SIGREG_POINTS + j] * cos(t[j] * x) - ((double)c[j] - phi[j]) * sin(t[j] * x));
                g[m] = gm;
            }
            for (int k = 0; k < K; k++) {
                double acc = 0;
                for (int m = 0; m < M; m++) acc += g[m] * (double)A[(size_t)k * M + m];
                dz[(size_t)n * K + k] = (T)(scale * acc);
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers. cs (M, 2P) floatS is written by the forward and read by the backward; per_slice may be null.

#ifndef __CUDACC__
inline void sigreg_forward(floatS* loss, floatS* per_slice, floatS* cs, const floatX* z, const floatS* A, int N, int K,
                           int M, SigregVariant variant, Stream) {
    sigreg_forward_ref(loss, per_slice, cs, z, A, N, K, M, variant);
}
inline void sigreg_backward(floatX* dz, const floatX* z, const floatS* A, const floatS* cs, const floatS* dloss, int N,
                            int K, int M, SigregVariant variant, Stream) {
    sigreg_backward_ref(dz, z, A, cs, dloss, N, K, M, variant);
}
#endif

// The GPU backward's slice tile: its block keeps z_n (K floats), the running sums of dz_n (K) and g_mn for Mt
// slices in shared memory; Mt = M when that fits in `budget` bytes, else as many slices as fit; 0 when not even
// one does (K too large). Host arithmetic, tested on the CPU (test_sigreg).
inline int sigreg_backward_tile(int K, int M, size_t budget) {
    const size_t fixed = 2 * (size_t)K * sizeof(float), slices = budget > fixed ? (budget - fixed) / sizeof(float) : 0;
    return (int)std::min(slices, (size_t)std::max(M, 1));
}
inline size_t sigreg_backward_smem(int K, int tile) { return (2 * (size_t)K + (size_t)tile) * sizeof(float); }

// ----------------------------------------------------------------------------------------------------------
// CUDA. Statistics: one block per slice m; the column A[:, m] goes to shared memory, each thread projects the
// samples n = threadIdx.x, + blockDim.x, ... and sums their cos / sin at the 17 knots in order, then 34
// block_reduce_sum calls add the threads' sums in a fixed order. Loss: one block; thread i takes slices
// i, i + blockDim.x, ... (T_m from cs), block_reduce_sum, / M. Backward: one block per sample n; z_n goes to
// shared memory; then tile by tile of Mt slices (sigreg_backward_tile: all M at once when they fit), threads over
// m compute x_mn and g_mn into shared memory, and threads over k add g_mn A_km to their running sums (shared
// memory) over m in order: the same additions in the same order for every tile size. Shared memory beyond 48 KB
// (large K, many slices) is opted in up to the device's limit (smem_opt_in). The variant is a kernel argument:
// every thread computes the 17 knots (t_j, phi_j, w_j) of its variant with sigreg_knot (in double, once per
// thread, then rounded to float).

#ifdef __CUDACC__
__global__ void sigreg_stats_kernel(floatS* per_slice, floatS* cs, const floatX* z, const floatS* A, int N, int K, int M,
                                    SigregVariant variant) {
    extern __shared__ float a_col[];   // K
    __shared__ float scratch[WARP_SIZE];
    const int m = blockIdx.x;
    for (int k = threadIdx.x; k < K; k += blockDim.x) a_col[k] = (float)A[(size_t)k * M + m];
    __syncthreads();
    float t[SIGREG_POINTS], c[SIGREG_POINTS], s[SIGREG_POINTS];
    for (int j = 0; j < SIGREG_POINTS; j++) {
        double tj, phi, w;
        sigreg_knot(j, &tj, &phi, &w, variant);
        t[j] = (float)tj;                                           // exact (3/16 j, or -3 + 3/8 j)
        c[j] = 0.0f;
        s[j] = 0.0f;
    }
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        const floatX* zn = z + (size_t)n * K;
        float x = 0.0f;
        for (int k = 0; k < K; k++) x += to_float(zn[k]) * a_col[k];
        for (int j = 0; j < SIGREG_POINTS; j++) {
            float sv, cv;
            sincosf(t[j] * x, &sv, &cv);
            c[j] += cv;
            s[j] += sv;
        }
    }
    const float inv_n = 1.0f / (float)max(N, 1);
    float value = 0.0f;
    for (int j = 0; j < SIGREG_POINTS; j++) {
        const float cj = block_reduce_sum(c[j], scratch) * inv_n;
        const float sj = block_reduce_sum(s[j], scratch) * inv_n;
        double tj, phi, w;
        sigreg_knot(j, &tj, &phi, &w, variant);
        const float dc = cj - (float)phi;
        value += (float)w * (dc * dc + sj * sj);
        if (threadIdx.x == 0) {
            cs[(size_t)m * 2 * SIGREG_POINTS + j] = cj;
            cs[(size_t)m * 2 * SIGREG_POINTS + SIGREG_POINTS + j] = sj;
        }
    }
    if (threadIdx.x == 0 && per_slice) per_slice[m] = value * (float)sigreg_factor(N, variant);
}

__global__ void sigreg_loss_kernel(floatS* loss, const floatS* cs, int N, int M, SigregVariant variant) {
    __shared__ float scratch[WARP_SIZE];
    float w[SIGREG_POINTS], phi[SIGREG_POINTS];
    for (int j = 0; j < SIGREG_POINTS; j++) {
        double t, p, ww;
        sigreg_knot(j, &t, &p, &ww, variant);
        w[j] = (float)ww;
        phi[j] = (float)p;
    }
    const float factor = (float)sigreg_factor(N, variant);
    float sum = 0.0f;
    for (int m = threadIdx.x; m < M; m += blockDim.x) {
        const floatS* c = cs + (size_t)m * 2 * SIGREG_POINTS;
        float v = 0.0f;
        for (int j = 0; j < SIGREG_POINTS; j++) {
            const float dc = c[j] - phi[j], sj = c[SIGREG_POINTS + j];
            v += w[j] * (dc * dc + sj * sj);
        }
        sum += v * factor;
    }
    sum = block_reduce_sum(sum, scratch);
    if (threadIdx.x == 0) *loss = M > 0 ? sum / (float)M : 0.0f;
}

__global__ void sigreg_backward_kernel(floatX* dz, const floatX* z, const floatS* A, const floatS* cs, const floatS* dloss,
                                       int N, int K, int M, int tile, SigregVariant variant) {
    extern __shared__ float smem[];
    float* zn = smem;            // K
    float* acc = smem + K;       // K: sum_m g_mn A_km so far
    float* g = smem + 2 * K;     // tile
    const int n = blockIdx.x;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        zn[k] = to_float(z[(size_t)n * K + k]);
        acc[k] = 0.0f;
    }
    float tw2[SIGREG_POINTS], t[SIGREG_POINTS], phi[SIGREG_POINTS];   // tw2 = 2 w_j t_j
    for (int j = 0; j < SIGREG_POINTS; j++) {
        double tj, p, w;
        sigreg_knot(j, &tj, &p, &w, variant);
        t[j] = (float)tj;
        phi[j] = (float)p;
        tw2[j] = (float)(2.0 * w * tj);
    }
    for (int m0 = 0; m0 < M; m0 += tile) {
        const int mt = min(tile, M - m0);
        __syncthreads();         // zn written; the previous tile's g read
        for (int i = threadIdx.x; i < mt; i += blockDim.x) {
            const int m = m0 + i;
            float x = 0.0f;
            for (int k = 0; k < K; k++) x += zn[k] * (float)A[(size_t)k * M + m];
            const floatS* c = cs + (size_t)m * 2 * SIGREG_POINTS;
            float gm = 0.0f;
            for (int j = 0; j < SIGREG_POINTS; j++) {
                float sv, cv;
                sincosf(t[j] * x, &sv, &cv);
                gm += tw2[j] * ((float)c[SIGREG_POINTS + j] * cv - ((float)c[j] - phi[j]) * sv);
            }
            g[i] = gm;
        }
        __syncthreads();
        for (int k = threadIdx.x; k < K; k += blockDim.x) {   // thread k alone owns acc[k]
            const floatS* a = A + (size_t)k * M + m0;
            float sum = acc[k];
            for (int i = 0; i < mt; i++) sum += g[i] * (float)a[i];
            acc[k] = sum;
        }
    }
    // dloss / M, and the variant's factor / N (1, or 1/N for the deprecated variant)
    const float scale = M > 0 ? (float)*dloss / (float)M * (float)(sigreg_factor(N, variant) / max(N, 1)) : 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) dz[(size_t)n * K + k] = from_float<floatX>(scale * acc[k]);
}

inline void sigreg_forward(floatS* loss, floatS* per_slice, floatS* cs, const floatX* z, const floatS* A, int N, int K,
                           int M, SigregVariant variant, Stream stream) {
    if (M > 0) {
        const size_t smem = (size_t)K * sizeof(float);
        smem_opt_in(sigreg_stats_kernel, smem, "sigreg_forward", "N = %d, K = %d, M = %d", N, K, M);
        sigreg_stats_kernel<<<M, 256, smem, stream>>>(per_slice, cs, z, A, N, K, M, variant);
        cudaCheckLaunch("sigreg_stats_kernel");
    }
    sigreg_loss_kernel<<<1, 256, 0, stream>>>(loss, cs, N, M, variant);
    cudaCheckLaunch("sigreg_loss_kernel");
}

inline void sigreg_backward(floatX* dz, const floatX* z, const floatS* A, const floatS* cs, const floatS* dloss, int N,
                            int K, int M, SigregVariant variant, Stream stream) {
    if ((size_t)N * K == 0) return;
    const size_t budget = smem_dynamic_max(sigreg_backward_kernel);
    const int tile = sigreg_backward_tile(K, M, budget);
    if (tile == 0)
        fatal("sigreg_backward (N = %d, K = %d, M = %d): z_n and dz_n alone need %zu bytes of shared memory per block; "
              "this GPU gives the kernel at most %zu", N, K, M, sigreg_backward_smem(K, 0), budget);
    const size_t smem = sigreg_backward_smem(K, tile);
    smem_opt_in(sigreg_backward_kernel, smem, "sigreg_backward", "N = %d, K = %d, M = %d, %d slices per tile", N, K, M, tile);
    sigreg_backward_kernel<<<N, 256, smem, stream>>>(dz, z, A, cs, dloss, N, K, M, tile, variant);
    cudaCheckLaunch("sigreg_backward_kernel");
}
#endif
