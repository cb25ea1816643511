// The attention core of one relational block of the object encoder (jepa_reference.md section 3): multi-head
// scaled dot-product attention among the N objects of a grid, restricted to the grid's adjacency graph plus
// self-loops, with dropout on the attention weights. The q/k/v/out projections are matmuls done by the trainer.
//
//   qkv (G*N, 3D) floatX, rows [q | k | v]; head h uses columns h*HD .. h*HD+HD-1 of each part; D = H * HD
//   adj (G, N, N) uint8, mask (G, N) uint8 (nonzero = set), N <= 32
//   allowed(g, i, j) = (i == j) || (adj[g,i,j] && mask[g,i] && mask[g,j])
//     (the reference's adj + I restricted to valid objects; a padded slot attends only to itself)
//   s_ij  = q_i . k_j / sqrt(HD)                       over the allowed j
//   a_ij  = softmax_j(s_ij) over the allowed j, 0 elsewhere        att (G, H, N, N) floatS keeps a (=)
//   ad_ij = a_ij * keep_ij / (1 - p),  keep_ij = hash_uniform(seed, ((g*H + h)*N + i)*N + j) >= p
//           (p = 0: ad = a, no hash is drawn; p >= 1: ad = 0)
//   out_i = sum_j ad_ij v_j                            out (G*N, D) floatX, heads concatenated (=)
//
//   backward (att is the forward's a; the dropout mask is redrawn from the same seed):
//     dad_ij = dout_i . v_j ,  da_ij = dad_ij * keep_ij / (1 - p)
//     ds_ij  = a_ij (da_ij - sum_k a_ik da_ik)            (0 where not allowed, since a = 0 there)
//     dq_i = sum_j ds_ij k_j / sqrt(HD) ,  dk_j = sum_i ds_ij q_i / sqrt(HD) ,  dv_j = sum_i ad_ij dout_i
//   dqkv (G*N, 3D) floatX: all three parts written (=).
//
// Every row has at least one allowed key (itself), so the softmax is always defined. Deterministic: every
// output element is computed by one thread with its sums in a fixed order.
#pragma once
#include <math.h>
#include <stdint.h>
#include <vector>
#include "../common/device.h"
#include "../common/rand.h"

#define OBJECT_ATTENTION_MAX_N 32

HOST_DEVICE inline bool object_attention_allowed(const uint8_t* adj_g, const uint8_t* mask_g, int N, int i, int j) {
    return i == j || (adj_g[i * N + j] && mask_g[i] && mask_g[j]);
}

// The dropout multiplier of weight (gh = g*H + h, i, j): keep / (1 - p), with scale = 1 / (1 - p) passed in.
HOST_DEVICE inline float object_attention_drop(float dropout, float scale, uint64_t seed, int gh, int N, int i, int j) {
    if (dropout <= 0.0f) return 1.0f;
    const uint64_t idx = ((uint64_t)gh * N + i) * N + j;
    return hash_uniform(seed, idx) >= dropout ? scale : 0.0f;
}
HOST_DEVICE inline float object_attention_drop_scale(float dropout) { return dropout < 1.0f ? 1.0f / (1.0f - dropout) : 0.0f; }

// ----------------------------------------------------------------------------------------------------------
// CPU reference: one (grid, head) pair per OpenMP iteration, plain loops.

template <typename T>
void object_attention_forward_ref(T* out, T* att, const T* qkv, const uint8_t* adj, const uint8_t* mask, int G, int N,
                                  int H, int HD, float dropout, uint64_t seed) {
    const int D = H * HD;
    const size_t row = 3 * (size_t)D;
    const T inv_sqrt = HD > 0 ? T(1) / sqrt((T)HD) : T(0);
    const float scale = object_attention_drop_scale(dropout);
#pragma omp parallel for schedule(static)
    for (int gh = 0; gh < G * H; gh++) {
        const int g = gh / H, h = gh % H;
        const uint8_t* adj_g = adj + (size_t)g * N * N;
        const uint8_t* mask_g = mask + (size_t)g * N;
        const T* base = qkv + (size_t)g * N * row + (size_t)h * HD;
        std::vector<T> s(N);
        for (int i = 0; i < N; i++) {
            const T* qi = base + (size_t)i * row;
            T maxval = -INFINITY;
            for (int j = 0; j < N; j++) {
                if (!object_attention_allowed(adj_g, mask_g, N, i, j)) continue;
                const T* kj = base + (size_t)j * row + D;
                T dot = 0;
                for (int d = 0; d < HD; d++) dot += qi[d] * kj[d];
                s[j] = dot * inv_sqrt;
                maxval = s[j] > maxval ? s[j] : maxval;
            }
            T sum = 0;
            for (int j = 0; j < N; j++) {
                s[j] = object_attention_allowed(adj_g, mask_g, N, i, j) ? exp(s[j] - maxval) : T(0);
                sum += s[j];
            }
            T* att_row = att + ((size_t)gh * N + i) * N;
            for (int j = 0; j < N; j++) {
                const T a = s[j] / sum;
                att_row[j] = a;
                s[j] = a * (T)object_attention_drop(dropout, scale, seed, gh, N, i, j);
            }
            T* o = out + ((size_t)g * N + i) * D + (size_t)h * HD;
            for (int d = 0; d < HD; d++) {
                T acc = 0;
                for (int j = 0; j < N; j++) acc += s[j] * base[(size_t)j * row + 2 * D + d];
                o[d] = acc;
            }
        }
    }
}

template <typename T>
void object_attention_backward_ref(T* dqkv, const T* dout, const T* att, const T* qkv, const uint8_t* adj,
                                   const uint8_t* mask, int G, int N, int H, int HD, float dropout, uint64_t seed) {
    const int D = H * HD;
    const size_t row = 3 * (size_t)D;
    const T inv_sqrt = HD > 0 ? T(1) / sqrt((T)HD) : T(0);
    const float scale = object_attention_drop_scale(dropout);
    (void)adj;
    (void)mask;      // a = 0 wherever a weight is not allowed: the mask is already in att
#pragma omp parallel for schedule(static)
    for (int gh = 0; gh < G * H; gh++) {
        const int g = gh / H, h = gh % H;
        const T* base = qkv + (size_t)g * N * row + (size_t)h * HD;
        T* dbase = dqkv + (size_t)g * N * row + (size_t)h * HD;
        const T* dbase_out = dout + (size_t)g * N * D + (size_t)h * HD;
        const T* a = att + (size_t)gh * N * N;
        std::vector<T> ad((size_t)N * N), ds((size_t)N * N);
        for (int i = 0; i < N; i++) {
            T rowdot = 0;
            for (int j = 0; j < N; j++) {
                const T m = (T)object_attention_drop(dropout, scale, seed, gh, N, i, j);
                T dad = 0;
                for (int d = 0; d < HD; d++) dad += dbase_out[(size_t)i * D + d] * base[(size_t)j * row + 2 * D + d];
                ad[(size_t)i * N + j] = a[(size_t)i * N + j] * m;
                ds[(size_t)i * N + j] = dad * m;      // da for now
                rowdot += a[(size_t)i * N + j] * ds[(size_t)i * N + j];
            }
            for (int j = 0; j < N; j++) ds[(size_t)i * N + j] = a[(size_t)i * N + j] * (ds[(size_t)i * N + j] - rowdot);
        }
        for (int i = 0; i < N; i++)
            for (int d = 0; d < HD; d++) {
                T dq = 0, dk = 0, dv = 0;
                for (int j = 0; j < N; j++) {
                    dq += ds[(size_t)i * N + j] * base[(size_t)j * row + D + d];      // row i of dS times K
                    dk += ds[(size_t)j * N + i] * base[(size_t)j * row + d];          // column i of dS times Q
                    dv += ad[(size_t)j * N + i] * dbase_out[(size_t)j * D + d];       // column i of P times dO
                }
                dbase[(size_t)i * row + d] = dq * inv_sqrt;
                dbase[(size_t)i * row + D + d] = dk * inv_sqrt;
                dbase[(size_t)i * row + 2 * D + d] = dv;
            }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

inline void object_attention_check(int N) {
    if (N > OBJECT_ATTENTION_MAX_N) fatal("object_attention: N = %d objects per grid, at most %d supported", N, OBJECT_ATTENTION_MAX_N);
}

#ifndef __CUDACC__
inline void object_attention_forward(floatX* out, floatS* att, const floatX* qkv, const uint8_t* adj, const uint8_t* mask,
                                     int G, int N, int H, int HD, float dropout, uint64_t seed, Stream) {
    object_attention_check(N);
    object_attention_forward_ref(out, att, qkv, adj, mask, G, N, H, HD, dropout, seed);
}
inline void object_attention_backward(floatX* dqkv, const floatX* dout, const floatS* att, const floatX* qkv,
                                      const uint8_t* adj, const uint8_t* mask, int G, int N, int H, int HD, float dropout,
                                      uint64_t seed, Stream) {
    object_attention_check(N);
    object_attention_backward_ref(dqkv, dout, att, qkv, adj, mask, G, N, H, HD, dropout, seed);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA. One block of 128 threads per (grid g, head h) pair: the head's q, k, v rows (N x HD each) are staged in
// shared memory as fp32 with an odd row pitch HDP (rows j of k and v fall in different banks when threads of a
// warp take different j), the N x N weights next to them.
//   forward:  threads over the (i, j) pairs compute s_ij (HD-long dot in order); one warp per row i does the
//             masked softmax (lane j; warp max and warp sum), writes att and the dropped-out weights; then threads
//             over (i, d) sum ad_ij v_j[d] over j in order and write out (consecutive d: coalesced).
//   backward: q, k, v and the head's dout rows in shared memory, att from global; threads over (i, j) compute
//             dad = dout_i . v_j and da; one warp per row i forms rowdot = sum_j a_ij da_ij and ds; then threads
//             over (i, d) write dq_i[d], dk_i[d], dv_i[d] (each an N-term sum in order).
// At the trainer's shapes (N = 16, HD = 48) the forward uses 9.6 KB of shared memory and the backward 15 KB.

#ifdef __CUDACC__
constexpr int OBJECT_ATTENTION_BLOCK = 128;

__device__ inline void object_attention_load_rows(float* dst, const floatX* src, int N, int HD, int HDP, size_t row) {
    for (int e = threadIdx.x; e < N * HD; e += blockDim.x) {
        const int i = e / HD, d = e % HD;
        dst[i * HDP + d] = to_float(src[(size_t)i * row + d]);
    }
}

__global__ void object_attention_forward_kernel(floatX* out, floatS* att, const floatX* qkv, const uint8_t* adj,
                                                const uint8_t* mask, int N, int H, int HD, float dropout, float drop_scale,
                                                uint64_t seed, float inv_sqrt) {
    extern __shared__ float smem[];
    const int HDP = HD | 1;
    float* qs = smem;
    float* ks = qs + N * HDP;
    float* vs = ks + N * HDP;
    float* ps = vs + N * HDP;     // (N, N): scores, then the dropped-out weights
    const int gh = blockIdx.x, g = gh / H, h = gh % H, D = H * HD;
    const size_t row = 3 * (size_t)D;
    const floatX* base = qkv + (size_t)g * N * row + (size_t)h * HD;
    const uint8_t* adj_g = adj + (size_t)g * N * N;
    const uint8_t* mask_g = mask + (size_t)g * N;
    object_attention_load_rows(qs, base, N, HD, HDP, row);
    object_attention_load_rows(ks, base + D, N, HD, HDP, row);
    object_attention_load_rows(vs, base + 2 * D, N, HD, HDP, row);
    __syncthreads();
    for (int p = threadIdx.x; p < N * N; p += blockDim.x) {
        const int i = p / N, j = p % N;
        float s = -INFINITY;
        if (object_attention_allowed(adj_g, mask_g, N, i, j)) {
            float dot = 0.0f;
            for (int d = 0; d < HD; d++) dot += qs[i * HDP + d] * ks[j * HDP + d];
            s = dot * inv_sqrt;
        }
        ps[p] = s;
    }
    __syncthreads();
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, n_warps = blockDim.x / WARP_SIZE;
    for (int i = warp; i < N; i += n_warps) {          // warp-uniform loop: every lane takes part in the shuffles
        const float s = lane < N ? ps[i * N + lane] : -INFINITY;
        const float maxval = warp_reduce_max(s);        // finite: the diagonal is always allowed
        const float e = lane < N ? expf(s - maxval) : 0.0f;   // expf(-inf) = 0 for the masked keys
        const float sum = warp_reduce_sum(e);
        if (lane < N) {
            const float a = e / sum;
            att[((size_t)gh * N + i) * N + lane] = a;
            ps[i * N + lane] = a * object_attention_drop(dropout, drop_scale, seed, gh, N, i, lane);
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < N * HD; e += blockDim.x) {
        const int i = e / HD, d = e % HD;
        float acc = 0.0f;
        for (int j = 0; j < N; j++) acc += ps[i * N + j] * vs[j * HDP + d];
        out[((size_t)g * N + i) * D + (size_t)h * HD + d] = from_float<floatX>(acc);
    }
}

__global__ void object_attention_backward_kernel(floatX* dqkv, const floatX* dout, const floatS* att, const floatX* qkv,
                                                 int N, int H, int HD, float dropout, float drop_scale, uint64_t seed,
                                                 float inv_sqrt) {
    extern __shared__ float smem[];
    const int HDP = HD | 1;
    float* qs = smem;
    float* ks = qs + N * HDP;
    float* vs = ks + N * HDP;
    float* dos = vs + N * HDP;
    float* as = dos + N * HDP;    // (N, N) a
    float* ads = as + N * N;      // (N, N) ad = a * keep / (1 - p)
    float* dss = ads + N * N;     // (N, N) da, then ds
    const int gh = blockIdx.x, g = gh / H, h = gh % H, D = H * HD;
    const size_t row = 3 * (size_t)D;
    const floatX* base = qkv + (size_t)g * N * row + (size_t)h * HD;
    object_attention_load_rows(qs, base, N, HD, HDP, row);
    object_attention_load_rows(ks, base + D, N, HD, HDP, row);
    object_attention_load_rows(vs, base + 2 * D, N, HD, HDP, row);
    object_attention_load_rows(dos, dout + (size_t)g * N * D + (size_t)h * HD, N, HD, HDP, (size_t)D);
    __syncthreads();
    for (int p = threadIdx.x; p < N * N; p += blockDim.x) {
        const int i = p / N, j = p % N;
        const float a = (float)att[(size_t)gh * N * N + p];
        const float m = object_attention_drop(dropout, drop_scale, seed, gh, N, i, j);
        float dad = 0.0f;
        for (int d = 0; d < HD; d++) dad += dos[i * HDP + d] * vs[j * HDP + d];
        as[p] = a;
        ads[p] = a * m;
        dss[p] = dad * m;
    }
    __syncthreads();
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, n_warps = blockDim.x / WARP_SIZE;
    for (int i = warp; i < N; i += n_warps) {
        const float a = lane < N ? as[i * N + lane] : 0.0f;
        const float da = lane < N ? dss[i * N + lane] : 0.0f;
        const float rowdot = warp_reduce_sum(a * da);
        if (lane < N) dss[i * N + lane] = a * (da - rowdot);
    }
    __syncthreads();
    floatX* dbase = dqkv + (size_t)g * N * row + (size_t)h * HD;
    for (int e = threadIdx.x; e < N * HD; e += blockDim.x) {
        const int i = e / HD, d = e % HD;
        float dq = 0.0f, dk = 0.0f, dv = 0.0f;
        for (int j = 0; j < N; j++) {
            dq += dss[i * N + j] * ks[j * HDP + d];
            dk += dss[j * N + i] * qs[j * HDP + d];
            dv += ads[j * N + i] * dos[j * HDP + d];
        }
        floatX* r = dbase + (size_t)i * row + d;
        r[0] = from_float<floatX>(dq * inv_sqrt);
        r[D] = from_float<floatX>(dk * inv_sqrt);
        r[2 * D] = from_float<floatX>(dv);
    }
}

inline void object_attention_forward(floatX* out, floatS* att, const floatX* qkv, const uint8_t* adj, const uint8_t* mask,
                                     int G, int N, int H, int HD, float dropout, uint64_t seed, Stream stream) {
    object_attention_check(N);
    if ((size_t)G * H * N == 0) return;
    const int HDP = HD | 1;
    const size_t smem = (3 * (size_t)N * HDP + (size_t)N * N) * sizeof(float);
    // beyond 48 KB (N = 32 with HD > 64) an opt-in, up to the device's limit
    smem_opt_in(object_attention_forward_kernel, smem, "object_attention_forward", "G = %d, N = %d, H = %d, HD = %d", G, N, H, HD);
    const float inv_sqrt = HD > 0 ? 1.0f / sqrtf((float)HD) : 0.0f;
    object_attention_forward_kernel<<<G * H, OBJECT_ATTENTION_BLOCK, smem, stream>>>(
        out, att, qkv, adj, mask, N, H, HD, dropout, object_attention_drop_scale(dropout), seed, inv_sqrt);
    cudaCheckLaunch("object_attention_forward_kernel");
}

inline void object_attention_backward(floatX* dqkv, const floatX* dout, const floatS* att, const floatX* qkv,
                                      const uint8_t* adj, const uint8_t* mask, int G, int N, int H, int HD, float dropout,
                                      uint64_t seed, Stream stream) {
    object_attention_check(N);
    if ((size_t)G * H * N * HD == 0) return;          // dqkv has no element
    const int HDP = HD | 1;
    const size_t smem = (4 * (size_t)N * HDP + 3 * (size_t)N * N) * sizeof(float);
    smem_opt_in(object_attention_backward_kernel, smem, "object_attention_backward", "G = %d, N = %d, H = %d, HD = %d", G, N, H, HD);
    const float inv_sqrt = 1.0f / sqrtf((float)HD);
    object_attention_backward_kernel<<<G * H, OBJECT_ATTENTION_BLOCK, smem, stream>>>(
        dqkv, dout, att, qkv, N, H, HD, dropout, object_attention_drop_scale(dropout), seed, inv_sqrt);
    cudaCheckLaunch("object_attention_backward_kernel");
}
#endif
