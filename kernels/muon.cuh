// Muon (Keller Jordan 2024, "Muon: an optimizer for hidden layers"): SGD momentum whose update of a weight
// matrix is orthogonalised by a Newton-Schulz iteration. One matrix W (R rows, C columns) per call; fp32 state.
//
//   g = grad * grad_scale                      (grad_scale folds in global-norm clipping; grad summed over ranks)
//   m = mu * m + g                             (momentum buffer, fp32)
//   u = nesterov ? g + mu * m : m
//   O = NS(u), the quintic Newton-Schulz iteration towards the orthogonal factor U V^T of u = U S V^T:
//       X = u / (||u||_F + 1e-7)               transposed first when R > C, so that X is (r, c) = (min, max) and
//                                              the Gram matrix X X^T is the small side (r, r)
//       ns_steps times:  A = X X^T ;  B = b A + c A A ;  X = a X + B X      (a, b, c) = (3.4445, -4.7750, 2.0315)
//       O = X (transposed back when R > C)
//   W = W * (1 - lr * weight_decay) - lr * sqrt(max(1, R / C)) * O
//
// Each step maps every singular value s of X to p(s) = a s + b s^3 + c s^5 and keeps the singular vectors, so
// O = U diag(p^ns_steps(S / ||u||_F)) V^T. The coefficients trade exact convergence for speed: after 5 steps the
// singular values lie in a band around 1 (about [0.7, 1.2]) rather than at 1 (the author's "approximately
// orthogonal"), for every singular value of u above ~1e-3 ||u||_F. (The author's later code keeps the momentum
// as an average, m = lerp(m, g, 1 - mu), u = lerp(g, m, mu): that u is (1 - mu) times this one, the same O up to
// the 1e-7.) The weight decay is decoupled, as in AdamW; 1 - lr * weight_decay and lr * sqrt(max(1, R / C)) are
// formed in double and rounded once.
//
// Precision: momentum, grad and the master weights are fp32 (floatS); X, A and B are floatX, so in the BF16 build
// the iteration's matmuls take bf16 operands (fp32 accumulation, bf16 results), as the author's implementation
// runs it in bfloat16. ||u||_F is accumulated in double. `master` holds the fp32 weights when the compute copy
// `param` is bf16; it is null when floatX is float and param is the master itself (as adam_update).
//
// Scratch: muon_scratch_size(R, C) elements of floatX, four regions each padded to a multiple of 64 elements
// (128 bytes in bf16, so every matmul operand is aligned): X and its successor (R * C each), A and B (r * r each).
// Nothing in it needs initialising and nothing in it is kept between calls.
//
// Built from the matmul launchers (kernels/matmul.cuh): A = X X^T and A A^T (= A A, A being symmetric) are
// matmul_forward's out = inp W^T with W = inp; B X is matmul_backward's dinp = dout W with dinp pre-filled with
// a X and accumulate_dinp. The rest is elementwise. Deterministic: the norm is a fixed-order two-stage reduction
// (kernels/global_norm.cuh's shape and its second stage), every other output element has one writer, no atomics.
#pragma once
#include <math.h>
#include <algorithm>
#include <utility>
#include "../common/device.h"
#include "global_norm.cuh"
#include "matmul.cuh"

// The quintic's coefficients (the author's).
constexpr double MUON_NS_A = 3.4445, MUON_NS_B = -4.7750, MUON_NS_C = 2.0315;
constexpr double MUON_NORM_EPS = 1e-7;

// Elements of floatX scratch one muon_update of an (R, C) matrix needs.
inline size_t muon_scratch_region(size_t n) { return (n + 63) / 64 * 64; }
inline size_t muon_scratch_size(int R, int C) {
    if (R <= 0 || C <= 0) return 0;
    const size_t r = (size_t)std::min(R, C);
    return 2 * muon_scratch_region((size_t)R * C) + 2 * muon_scratch_region(r * r);
}

// How an (R, C) update lays out its scratch: X and Xn (r, c) = (min, max) side (transposed when R > C), A and B (r, r).
template <typename T> struct MuonWork {
    T *X, *Xn, *A, *B;
    int r, c;
    bool transposed;
};
template <typename T> MuonWork<T> muon_work(T* scratch, int R, int C) {
    MuonWork<T> w;
    w.transposed = R > C;
    w.r = w.transposed ? C : R;
    w.c = w.transposed ? R : C;
    const size_t n = (size_t)R * C;
    w.X = scratch;
    w.Xn = w.X + muon_scratch_region(n);
    w.A = w.Xn + muon_scratch_region(n);
    w.B = w.A + muon_scratch_region((size_t)w.r * w.r);
    return w;
}

// The two constants of the final update, in double (both backends round them once to their type).
inline double muon_decay(float lr, float weight_decay) { return 1.0 - (double)lr * (double)weight_decay; }
inline double muon_step(float lr, int R, int C) { return (double)lr * sqrt(std::max(1.0, (double)R / (double)C)); }

// ----------------------------------------------------------------------------------------------------------
// CPU reference

// ns_steps iterations on X (r, c), r <= c; Xn (r, c), A and B (r, r) are work space. Returns the buffer that
// holds the result (X or Xn).
template <typename T>
T* muon_newton_schulz_ref(T* X, T* Xn, T* A, T* B, int r, int c, int ns_steps) {
    const size_t nx = (size_t)r * c, na = (size_t)r * r;
    for (int s = 0; s < ns_steps; s++) {
        matmul_forward_ref<T>(A, X, X, nullptr, r, c, r);            // A = X X^T
        matmul_forward_ref<T>(B, A, A, nullptr, r, r, r);            // A A^T = A A
        for (size_t i = 0; i < na; i++) B[i] = (T)MUON_NS_C * B[i] + (T)MUON_NS_B * A[i];
        for (size_t i = 0; i < nx; i++) Xn[i] = (T)MUON_NS_A * X[i];
        matmul_backward_ref<T>(Xn, nullptr, nullptr, B, nullptr, X, r, c, r, true);   // Xn += B X
        std::swap(X, Xn);
    }
    return X;
}

template <typename T>
void muon_update_ref(T* param, T* master, const T* grad, T* momentum, int R, int C, float lr, float mu, bool nesterov,
                     int ns_steps, float weight_decay, float grad_scale, T* scratch) {
    if (R <= 0 || C <= 0) return;
    const size_t n = (size_t)R * C;
    const MuonWork<T> w = muon_work(scratch, R, C);
    const bool transposed = w.transposed;
    const int r = w.r, c = w.c;
    T *X = w.X, *Xn = w.Xn, *A = w.A, *B = w.B;
    // momentum, and u (R, C) in Xn for the moment
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const T g = grad[i] * (T)grad_scale;
        momentum[i] = (T)mu * momentum[i] + g;
        Xn[i] = nesterov ? g + (T)mu * momentum[i] : momentum[i];
    }
    T sumsq;
    global_norm_squared_ref<T>(&sumsq, Xn, n);
    const T denom = (T)sqrt(sumsq) + (T)MUON_NORM_EPS;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) X[transposed ? (size_t)j * R + i : (size_t)i * C + j] = Xn[(size_t)i * C + j] / denom;
    const T* O = muon_newton_schulz_ref(X, Xn, A, B, r, c, ns_steps);
    const T decay = (T)muon_decay(lr, weight_decay), step = (T)muon_step(lr, R, C);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) {
            const size_t k = (size_t)i * C + j;
            T w = master ? master[k] : param[k];
            w = w * decay - step * O[transposed ? (size_t)j * R + i : k];
            if (master) master[k] = w;
            param[k] = w;
        }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void muon_update(floatX* param, floatS* master, const floatS* grad, floatS* momentum, int R, int C, float lr,
                        float mu, bool nesterov, int ns_steps, float weight_decay, float grad_scale, floatX* scratch,
                        Stream) {
    muon_update_ref(param, master, grad, momentum, R, C, lr, mu, nesterov, ns_steps, weight_decay, grad_scale, scratch);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA. Five launches around the matmuls:
//   muon_momentum_kernel   m = mu m + g, and one partial sum of u^2 per block (double; global_norm's grid)
//   global_norm_sum_kernel the partial sums added in order: ||u||_F^2 stays on the device (no host sync)
//   muon_prepare_kernel    X = u / (||u||_F + 1e-7), u recomputed from m and g, transposed through shared memory
//                          in 32 x 32 tiles when R > C (coalesced reads and writes)
//   per NS step            2 matmul_forward, muon_axpby (B), muon_axpby (a X), matmul_backward (+= B X)
//   muon_apply_kernel      the weight update, reading O through the same tiles when R > C

#ifdef __CUDACC__
constexpr int MUON_TILE = 32, MUON_TILE_ROWS = 8;    // a 32 x 32 tile per block of 32 x 8 threads

__device__ inline float muon_u(float g, float m, float mu, bool nesterov) { return nesterov ? g + mu * m : m; }

// Same grid and per-thread element order as global_norm_sum_kernel: deterministic for a given n.
__global__ void muon_momentum_kernel(floatS* m, const floatS* grad, size_t n, float mu, float grad_scale, bool nesterov,
                                     double* partial) {
    __shared__ double scratch[32];
    double sum = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = grad[i] * grad_scale;
        const float mi = mu * m[i] + g;
        m[i] = mi;
        const double u = (double)muon_u(g, mi, mu, nesterov);
        sum += u * u;
    }
    sum = block_reduce_sum(sum, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

// X (r, c) = u / (||u|| + eps), u (R, C) from the updated momentum; X = u^T / .. when transposed (R > C).
__global__ void muon_prepare_kernel(floatX* X, const floatS* m, const floatS* grad, int R, int C, float mu,
                                    float grad_scale, bool nesterov, bool transposed, const double* sumsq) {
    __shared__ float tile[MUON_TILE][MUON_TILE + 1];
    const float denom = (float)sqrt(*sumsq) + (float)MUON_NORM_EPS;
    const int c0 = blockIdx.x * MUON_TILE, row_tiles = CEIL_DIV(R, MUON_TILE);
    for (int rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {
        const int r0 = rt * MUON_TILE;
        for (int j = threadIdx.y; j < MUON_TILE; j += MUON_TILE_ROWS) {
            const int i = r0 + j, k = c0 + threadIdx.x;
            if (i < R && k < C) {
                const size_t e = (size_t)i * C + k;
                const float x = muon_u(grad[e] * grad_scale, m[e], mu, nesterov) / denom;
                if (transposed) tile[j][threadIdx.x] = x;
                else X[e] = from_float<floatX>(x);
            }
        }
        if (transposed) {
            __syncthreads();
            for (int j = threadIdx.y; j < MUON_TILE; j += MUON_TILE_ROWS) {
                const int k = c0 + j, i = r0 + threadIdx.x;     // X[k, i] = u[i, k]
                if (i < R && k < C) X[(size_t)k * R + i] = from_float<floatX>(tile[threadIdx.x][j]);
            }
            __syncthreads();
        }
    }
}

// out = alpha x + beta y over n elements of floatX (y may be null: out = alpha x); out may alias x.
__global__ void muon_axpby_kernel(floatX* out, float alpha, const floatX* x, float beta, const floatX* y, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = alpha * to_float(x[i]);
        if (y) v += beta * to_float(y[i]);
        out[i] = from_float<floatX>(v);
    }
}
inline void muon_axpby(floatX* out, float alpha, const floatX* x, float beta, const floatX* y, size_t n, Stream st) {
    if (n == 0) return;
    muon_axpby_kernel<<<(unsigned)std::min<size_t>(CEIL_DIV(n, 256), 4096), 256, 0, st>>>(out, alpha, x, beta, y, n);
    cudaCheckLaunch("muon_axpby_kernel");
}

// w = w * decay - step * O, O (R, C) = X, or X^T (X (C, R)) when transposed.
__global__ void muon_apply_kernel(floatX* param, floatS* master, const floatX* X, int R, int C, bool transposed,
                                  float decay, float step) {
    __shared__ float tile[MUON_TILE][MUON_TILE + 1];
    const int c0 = blockIdx.x * MUON_TILE, row_tiles = CEIL_DIV(R, MUON_TILE);
    for (int rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {
        const int r0 = rt * MUON_TILE;
        if (transposed) {
            for (int j = threadIdx.y; j < MUON_TILE; j += MUON_TILE_ROWS) {
                const int k = c0 + j, i = r0 + threadIdx.x;     // tile[j][t] = O[r0 + t, c0 + j]
                if (i < R && k < C) tile[j][threadIdx.x] = to_float(X[(size_t)k * R + i]);
            }
            __syncthreads();
        }
        for (int j = threadIdx.y; j < MUON_TILE; j += MUON_TILE_ROWS) {
            const int i = r0 + j, k = c0 + threadIdx.x;
            if (i < R && k < C) {
                const size_t e = (size_t)i * C + k;
                const float o = transposed ? tile[threadIdx.x][j] : to_float(X[e]);
                const float w = (master ? master[e] : to_float(param[e])) * decay - step * o;
                if (master) master[e] = w;
                param[e] = from_float<floatX>(w);
            }
        }
        if (transposed) __syncthreads();
    }
}

inline void muon_update(floatX* param, floatS* master, const floatS* grad, floatS* momentum, int R, int C, float lr,
                        float mu, bool nesterov, int ns_steps, float weight_decay, float grad_scale, floatX* scratch,
                        Stream st) {
    if (R <= 0 || C <= 0) return;
    const size_t n = (size_t)R * C;
    const MuonWork<floatX> w = muon_work(scratch, R, C);
    const bool transposed = w.transposed;
    const int r = w.r, c = w.c;
    floatX *X = w.X, *Xn = w.Xn, *A = w.A, *B = w.B;
    // the per-block partial sums of u^2 and, after them, their total (allocated at the first call and reused: the
    // calls are ordered on one stream)
    static double* partial = (double*)device_malloc((GLOBAL_NORM_BLOCKS + 1) * sizeof(double), "muon norm partial sums");
    double* sumsq = partial + GLOBAL_NORM_BLOCKS;
    const int n_blocks = (int)std::min((size_t)GLOBAL_NORM_BLOCKS, CEIL_DIV(n, (size_t)GLOBAL_NORM_BLOCK_SIZE));
    muon_momentum_kernel<<<n_blocks, GLOBAL_NORM_BLOCK_SIZE, 0, st>>>(momentum, grad, n, mu, grad_scale, nesterov, partial);
    cudaCheckLaunch("muon_momentum_kernel");
    global_norm_sum_kernel<false><<<1, GLOBAL_NORM_BLOCK_SIZE, 0, st>>>(sumsq, partial, (size_t)n_blocks);
    cudaCheckLaunch("global_norm_sum_kernel (muon norm)");
    const dim3 tiles((unsigned)CEIL_DIV(C, MUON_TILE), (unsigned)std::min(CEIL_DIV(R, MUON_TILE), 65535));
    const dim3 threads(MUON_TILE, MUON_TILE_ROWS);
    muon_prepare_kernel<<<tiles, threads, 0, st>>>(X, momentum, grad, R, C, mu, grad_scale, nesterov, transposed, sumsq);
    cudaCheckLaunch("muon_prepare_kernel");
    for (int s = 0; s < ns_steps; s++) {
        matmul_forward(A, X, X, nullptr, r, c, r, st);                                   // A = X X^T
        matmul_forward(B, A, A, nullptr, r, r, r, st);                                   // A A^T = A A
        muon_axpby(B, (float)MUON_NS_C, B, (float)MUON_NS_B, A, (size_t)r * r, st);      // B = c A A + b A
        muon_axpby(Xn, (float)MUON_NS_A, X, 0.0f, nullptr, n, st);                       // Xn = a X
        matmul_backward(Xn, nullptr, nullptr, B, nullptr, X, r, c, r, true, st);         // Xn += B X
        std::swap(X, Xn);
    }
    muon_apply_kernel<<<tiles, threads, 0, st>>>(param, master, X, R, C, transposed, (float)muon_decay(lr, weight_decay),
                                                 (float)muon_step(lr, R, C));
    cudaCheckLaunch("muon_apply_kernel");
}
#endif
