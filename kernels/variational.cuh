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
