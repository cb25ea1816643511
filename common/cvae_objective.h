// The latent terms of the latent-strategy CVAE's objective (seed report 004), on diagonal Gaussians, with their
// gradients. Each example b has a posterior q = N(mu_q, diag exp(lv_q)) and a router prior p = N(mu_p, diag
// exp(lv_p)) over d_z dimensions; eps ~ N(0, I) is its reparameterisation noise.
//
//   reparameterize   z = mu_q + exp(lv_q / 2) * eps
//                    backward: dmu_q += dz,  dlv_q += dz * eps * exp(lv_q / 2) / 2
//   gaussian_kl      KL(q || p) = sum_d 1/2 [lv_p - lv_q + (exp(lv_q) + (mu_q - mu_p)^2) / exp(lv_p) - 1]
//                    d/dmu_q = (mu_q - mu_p) / exp(lv_p) = -d/dmu_p
//                    d/dlv_q = 1/2 (exp(lv_q - lv_p) - 1)
//                    d/dlv_p = 1/2 (1 - (exp(lv_q) + (mu_q - mu_p)^2) / exp(lv_p))
//   posterior_variance   V = sum_d exp(lv_q)                                     d/dlv_q = exp(lv_q)
//   router marginal KL   the N router Gaussians of a batch, moment-matched to one diagonal Gaussian
//                    m = (1/N) sum_b mu_p,   S = (1/N) sum_b (exp(lv_p) + mu_p^2),   v = S - m^2
//                    and compared with N(0, I):  K = sum_d 1/2 (v + m^2 - 1 - log v) = sum_d 1/2 (S - 1 - log(S - m^2))
//                    dK/dm = m / v,   dK/dS = 1/2 (1 - 1/v), so per example:
//                    dK/dmu_p = (m / v + (1 - 1/v) mu_p) / N,   dK/dlv_p = 1/2 (1 - 1/v) exp(lv_p) / N
//
// K is a batch-level term: its moments are sums over the whole global batch (every micro-batch of every rank),
// which marginal_moments() accumulates so that the sums can be added over ranks before the value and gradients are
// taken. The per-example terms are returned per example (the trainer takes their batch means).
//
// These run on the host in both backends: they touch B x d_z numbers (8 per example by default), which the
// trainer already copies to the host; a kernel launch would cost more than the arithmetic. T is float or double
// (the model tests run them in double).
#pragma once
#include <math.h>
#include <vector>

template <typename T>
void reparameterize(T* z, const T* mu, const T* lv, const T* eps, int B, int dz) {
    for (int i = 0; i < B * dz; i++) z[i] = mu[i] + exp(lv[i] / 2) * eps[i];
}

template <typename T>
void reparameterize_backward(T* dmu, T* dlv, const T* dz, const T* lv, const T* eps, int B, int dz_) {
    for (int i = 0; i < B * dz_; i++) {
        dmu[i] += dz[i];
        dlv[i] += dz[i] * eps[i] * exp(lv[i] / 2) / 2;
    }
}

// kl[b] = KL(q_b || p_b); with grads (non-null), the gradients of sum_b scale * kl[b] are added to them.
template <typename T>
void gaussian_kl(T* kl, const T* mu_q, const T* lv_q, const T* mu_p, const T* lv_p, int B, int dz, T scale,
                 T* dmu_q, T* dlv_q, T* dmu_p, T* dlv_p) {
    for (int b = 0; b < B; b++) {
        double sum = 0;
        for (int d = 0; d < dz; d++) {
            const int i = b * dz + d;
            const double diff = (double)mu_q[i] - mu_p[i], inv_var_p = exp(-(double)lv_p[i]), var_q = exp((double)lv_q[i]);
            sum += 0.5 * ((double)lv_p[i] - lv_q[i] + (var_q + diff * diff) * inv_var_p - 1.0);
            if (!dmu_q) continue;
            dmu_q[i] += (T)(scale * diff * inv_var_p);
            dmu_p[i] -= (T)(scale * diff * inv_var_p);
            dlv_q[i] += (T)(scale * 0.5 * (var_q * inv_var_p - 1.0));
            dlv_p[i] += (T)(scale * 0.5 * (1.0 - (var_q + diff * diff) * inv_var_p));
        }
        kl[b] = (T)sum;
    }
}

// v[b] = sum_d exp(lv_q); with dlv_q, the gradient of sum_b scale * v[b] is added to it.
template <typename T>
void posterior_variance(T* v, const T* lv_q, int B, int dz, T scale, T* dlv_q) {
    for (int b = 0; b < B; b++) {
        double sum = 0;
        for (int d = 0; d < dz; d++) {
            const double e = exp((double)lv_q[b * dz + d]);
            sum += e;
            if (dlv_q) dlv_q[b * dz + d] += (T)(scale * e);
        }
        v[b] = (T)sum;
    }
}

// sums (2 dz, +=): sum_b mu_p, then sum_b (exp(lv_p) + mu_p^2): the moments' numerators, to be added over the
// micro-batches and ranks of a batch.
template <typename T>
void marginal_moments(double* sums, const T* mu_p, const T* lv_p, int B, int dz) {
    for (int b = 0; b < B; b++)
        for (int d = 0; d < dz; d++) {
            const double mu = mu_p[b * dz + d];
            sums[d] += mu;
            sums[dz + d] += exp((double)lv_p[b * dz + d]) + mu * mu;
        }
}

// The router marginal KL of a batch of N examples from its moment sums.
inline double router_marginal_kl(const double* sums, double N, int dz) {
    double K = 0;
    for (int d = 0; d < dz; d++) {
        const double m = sums[d] / N, S = sums[dz + d] / N, v = S - m * m;
        K += 0.5 * (S - 1.0 - log(v));
    }
    return K;
}

// Adds the gradient of scale * K (K from the batch's sums over N examples) for B of its examples.
template <typename T>
void router_marginal_kl_backward(T* dmu_p, T* dlv_p, const double* sums, double N, const T* mu_p, const T* lv_p,
                                 int B, int dz, T scale) {
    for (int d = 0; d < dz; d++) {
        const double m = sums[d] / N, v = sums[dz + d] / N - m * m, dS = 0.5 * (1.0 - 1.0 / v);
        for (int b = 0; b < B; b++) {
            const int i = b * dz + d;
            dmu_p[i] += (T)(scale * (m / v + 2.0 * dS * mu_p[i]) / N);
            dlv_p[i] += (T)(scale * dS * exp((double)lv_p[i]) / N);
        }
    }
}
