// Reparameterised Gaussian latent and its KL divergence to N(0, I), per row (N rows of width C).
//
//   noise     eps[n, c] = standard normal from hash(seed, row_key[n], c): the same numbers on every backend
//             and rank (row_key = the global sample slot, or slot * max_demos + demo for per-demo latents)
//   forward   lv = clamp(logvar, lo, hi) ,  z = mu + exp(lv / 2) * eps
//             kl[n] = -1/2 * sum_c (1 + lv - mu^2 - exp(lv))                                          (fp32)
//   backward  given dz and dkl, the gradient of the loss with respect to every row's kl:
//             dmu = dz + dkl * mu
//             dlogvar = (dz * eps * exp(lv / 2) / 2 + dkl * (exp(lv) - 1) / 2) * [lo <= logvar <= hi]      (=)
//
// eps = 0 gives z = mu: evaluation, and latent_mode=mean in training. hybrid_variational clamps logvar to
// [-10, 10] as upstream; lpn_variational does not clamp (lo = -inf, hi = +inf).
#pragma once
#include <math.h>
#include "../common/device.h"
#include "../common/rand.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void gaussian_noise_ref(T* eps, const int* row_key, int N, int C, uint64_t seed) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) eps[(size_t)n * C + c] = (T)hash_normal(seed, (uint64_t)row_key[n], (uint64_t)c);
}

template <typename T>
void reparameterize_forward_ref(T* z, T* kl, const T* mu, const T* logvar, const T* eps, int N, int C, float lo, float hi) {
    for (int n = 0; n < N; n++) {
        double sum = 0;
        for (int c = 0; c < C; c++) {
            const size_t i = (size_t)n * C + c;
            const T lv = logvar[i] < lo ? (T)lo : (logvar[i] > hi ? (T)hi : logvar[i]);
            z[i] = mu[i] + exp(lv / 2) * eps[i];
            sum += 1.0 + (double)lv - (double)mu[i] * (double)mu[i] - exp((double)lv);
        }
        kl[n] = (T)(-0.5 * sum);
    }
}

template <typename T>
void reparameterize_backward_ref(T* dmu, T* dlogvar, const T* dz, const T* mu, const T* logvar, const T* eps,
                                 float dkl, int N, int C, float lo, float hi) {
    for (size_t i = 0; i < (size_t)N * C; i++) {
        const bool inside = logvar[i] >= lo && logvar[i] <= hi;
        const T lv = logvar[i] < lo ? (T)lo : (logvar[i] > hi ? (T)hi : logvar[i]);
        dmu[i] = dz[i] + (T)dkl * mu[i];
        dlogvar[i] = inside ? dz[i] * eps[i] * exp(lv / 2) / 2 + (T)dkl * (exp(lv) - 1) / 2 : T(0);
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void gaussian_noise(floatS* eps, const int* row_key, int N, int C, uint64_t seed, Stream) {
    gaussian_noise_ref(eps, row_key, N, C, seed);
}
inline void reparameterize_forward(floatX* z, floatS* kl, const floatX* mu, const floatX* logvar, const floatS* eps,
                                   int N, int C, float lo, float hi, Stream) {
    reparameterize_forward_ref(z, kl, mu, logvar, eps, N, C, lo, hi);
}
inline void reparameterize_backward(floatX* dmu, floatX* dlogvar, const floatX* dz, const floatX* mu,
                                    const floatX* logvar, const floatS* eps, float dkl, int N, int C, float lo,
                                    float hi, Stream) {
    reparameterize_backward_ref(dmu, dlogvar, dz, mu, logvar, eps, dkl, N, C, lo, hi);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA

#ifdef __CUDACC__
// The logvar clamp of the forward and backward (lo = -inf, hi = +inf: no clamp).
__device__ inline float clamp_logvar(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

// eps[n, c] = hash_normal(seed, row_key[n], c): the same function as the CPU's (rand.h is HOST_DEVICE).
template <typename TS>
__global__ void gaussian_noise_kernel(TS* eps, const int* row_key, int N, int C, uint64_t seed) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * C) return;
    eps[i] = (TS)hash_normal(seed, (uint64_t)row_key[i / C], (uint64_t)(i % C));
}

// One block per row n: z elementwise (fp32), and kl[n] summed in double, each thread over its channels
// c = threadIdx.x + k * blockDim.x in order, then block_reduce_sum (fixed order): deterministic.
template <typename TX, typename TS>
__global__ void reparameterize_forward_kernel(TX* z, TS* kl, const TX* mu, const TX* logvar, const TS* eps, int C,
                                              float lo, float hi) {
    __shared__ double scratch[32];
    const size_t row = (size_t)blockIdx.x * C;
    double sum = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const float m = to_float(mu[row + c]), lv = clamp_logvar(to_float(logvar[row + c]), lo, hi);
        z[row + c] = from_float<TX>(m + expf(lv / 2) * (float)eps[row + c]);
        sum += 1.0 + (double)lv - (double)m * (double)m - exp((double)lv);
    }
    sum = block_reduce_sum(sum, scratch);
    if (threadIdx.x == 0) kl[blockIdx.x] = (TS)(-0.5 * sum);
}

// Elementwise, in fp32.
template <typename TX, typename TS>
__global__ void reparameterize_backward_kernel(TX* dmu, TX* dlogvar, const TX* dz, const TX* mu, const TX* logvar,
                                               const TS* eps, float dkl, size_t n, float lo, float hi) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = to_float(dz[i]), m = to_float(mu[i]), raw = to_float(logvar[i]), lv = clamp_logvar(raw, lo, hi);
    const bool inside = raw >= lo && raw <= hi;     // the clamp passes no gradient outside [lo, hi]
    dmu[i] = from_float<TX>(g + dkl * m);
    dlogvar[i] = from_float<TX>(inside ? g * (float)eps[i] * expf(lv / 2) / 2 + dkl * (expf(lv) - 1) / 2 : 0.0f);
}

inline void gaussian_noise(floatS* eps, const int* row_key, int N, int C, uint64_t seed, Stream stream) {
    const size_t n = (size_t)N * C;
    if (n == 0) return;
    const int block_size = 256;
    gaussian_noise_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(eps, row_key, N, C, seed);
    cudaCheckLaunch("gaussian_noise_kernel");
}

inline void reparameterize_forward(floatX* z, floatS* kl, const floatX* mu, const floatX* logvar, const floatS* eps,
                                   int N, int C, float lo, float hi, Stream stream) {
    if (N == 0) return;
    const int block_size = 256;
    reparameterize_forward_kernel<<<N, block_size, 0, stream>>>(z, kl, mu, logvar, eps, C, lo, hi);
    cudaCheckLaunch("reparameterize_forward_kernel");
}

inline void reparameterize_backward(floatX* dmu, floatX* dlogvar, const floatX* dz, const floatX* mu,
                                    const floatX* logvar, const floatS* eps, float dkl, int N, int C, float lo,
                                    float hi, Stream stream) {
    const size_t n = (size_t)N * C;
    if (n == 0) return;
    const int block_size = 256;
    reparameterize_backward_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(
        dmu, dlogvar, dz, mu, logvar, eps, dkl, n, lo, hi);
    cudaCheckLaunch("reparameterize_backward_kernel");
}
#endif
