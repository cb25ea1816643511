// Embedding diagnostics of the JEPA (train_jepa.cu): jepa_reference.md section 8 (reference: arc-jepa-rl
// training/jepa/diagnostics.py, EmbeddingDiagnosticsTracker._compute_stats) and DESIGN.md "JEPA" decision 6.
//
// embedding_metrics(Z, n, d): Z (n, d) float row-major (e.g. the last <= 4096 rows of context_proj), everything
// computed in double, sums in a fixed order (deterministic):
//   variance       mean_j Var_j, the biased (1/n) variance of column j
//   Sigma          centred covariance (Z - mean)^T (Z - mean) / (n - 1) + 1e-6 I;  lambda = its eigenvalues, clamped >= 0
//   isotropy       (max(lambda_min, 0) + 1e-8) / (max(lambda_max, 1e-8) + 1e-8)       (the reference's form)
//   erank_cov      exp(H(p)), p = lambda / max(sum lambda, 1e-8), H(p) = -sum p log(p + 1e-12)
//                  (the reference's "effective_rank": covariance eigenvalues, i.e. SQUARED singular values of the
//                  centred Z; the "von Neumann" form, smaller than RankMe on a non-flat spectrum)
//   erank_rankme   RankMe (Garrido et al. 2023; Roy & Vetterli 2007): sigma = the min(n, d) singular values of Z
//                  (uncentred, not squared), p_k = sigma_k / sum sigma + 1e-7, exp(-sum p log p); 0 for an all-zero Z
//   gaussian_score 1 / (1 + mean_j |skew_j| + mean_j |kurt_j - 3|), with s_j = max(biased std_j, 1e-6),
//                  z = (x - mean_j) / s_j, skew_j = mean z^3, kurt_j = mean z^4 (the reference's estimators: plain
//                  biased moments, no small-sample correction)
// n < 2, d < 1 or a non-finite entry in Z: every field is NaN (no error, no crash).
//
// codebook_perplexity(counts, K): exp(-sum p log p), p = counts / sum counts (0 log 0 = 0): K for uniform counts,
// 1 for a single code. K < 1, a negative or non-finite count, or all counts 0: NaN.
//
// symmetric_eigenvalues(A, d): the eigenvalues (ascending) of a symmetric d x d matrix (row-major; the average of A
// and A^T is used), in double: Householder reduction to a tridiagonal T (4/3 d^3 flops), then bisection on the Sturm
// counts of T for each eigenvalue (~60-80 halvings of O(d) each: O(d^2)). Both steps are backward stable, so each
// eigenvalue is within a few d * 2^-52 * ||A|| of the exact one (not relatively accurate for eigenvalues far below
// ||A||, which the clamps and the 1e-6 jitter make irrelevant here). A non-finite entry gives all NaN. Serial and
// deterministic. Cost on one core: ~0.07 s at d = 256, ~0.16 s at d = 384, ~0.33 s at d = 512.
// embedding_metrics(Z, n, d) costs one n d^2 / 2 product (Z^T Z of the centred Z; the uncentred Gram matrix is
// that plus n mean mean^T) and two eigenvalue runs when d <= n; when d > n the singular values come from Z Z^T (n x n,
// n^2 d / 2). test/test_jepa_data.cpp prints the time at n = 4096, d = 256.
#pragma once
#include <math.h>
#include <stddef.h>
#include <algorithm>
#include <vector>
#include "utils.h"

struct EmbeddingMetrics { double variance, isotropy, erank_cov, erank_rankme, gaussian_score; };

// Sturm count of the symmetric tridiagonal T (diagonal a, off-diagonal b, b[i] couples i and i+1): the number of
// eigenvalues of T below x (the negative pivots of the LDL^T factorisation of T - x I; a zero pivot counts as negative).
inline int tridiagonal_count_below(const std::vector<double>& a, const std::vector<double>& b, double x, double pivmin) {
    int count = 0;
    double q = 1;
    for (size_t i = 0; i < a.size(); i++) {
        q = a[i] - x - (i > 0 ? b[i - 1] * b[i - 1] / q : 0.0);
        if (fabs(q) < pivmin) q = -pivmin;
        if (q < 0) count++;
    }
    return count;
}

inline std::vector<double> symmetric_eigenvalues(std::vector<double> A, int d) {
    if (d < 0 || A.size() != (size_t)d * (size_t)d)
        fatal("symmetric_eigenvalues: %zu entries for a %d x %d matrix", A.size(), d, d);
    const size_t D = (size_t)d;
    if (D == 0) return {};
    for (double v : A)
        if (!isfinite(v)) return std::vector<double>(D, NAN);
    for (size_t i = 0; i < D; i++)
        for (size_t j = i + 1; j < D; j++) A[i * D + j] = A[j * D + i] = 0.5 * (A[i * D + j] + A[j * D + i]);

    // 1. Householder reduction to tridiagonal form: for k = 0..D-3, H = I - tau v v^T maps column k below the diagonal,
    //    x = A[k+1.., k], to alpha e_1 (|alpha| = |x|, its sign opposite to x_0, so v = x - alpha e_1 has no
    //    cancellation); the trailing block becomes H A22 H = A22 - v w^T - w v^T, p = tau A22 v, w = p - (tau/2)(v^T p) v.
    std::vector<double> diag(D), off(D, 0.0), v(D), p(D);
    for (size_t k = 0; k + 2 < D; k++) {
        diag[k] = A[k * D + k];
        double scale = 0;
        for (size_t i = k + 1; i < D; i++) scale = std::max(scale, fabs(A[i * D + k]));
        if (scale == 0) continue;                              // already reduced: off[k] = 0
        double sigma = 0;
        for (size_t i = k + 1; i < D; i++) {
            v[i] = A[i * D + k] / scale;                       // scaled against overflow and underflow
            sigma += v[i] * v[i];
        }
        const double alpha = v[k + 1] >= 0 ? -sqrt(sigma) : sqrt(sigma);
        off[k] = alpha * scale;
        v[k + 1] -= alpha;
        double vtv = 0;
        for (size_t i = k + 1; i < D; i++) vtv += v[i] * v[i];
        const double tau = 2.0 / vtv;
        double vtp = 0;
        for (size_t i = k + 1; i < D; i++) {
            double acc = 0;
            for (size_t j = k + 1; j < D; j++) acc += A[i * D + j] * v[j];
            p[i] = tau * acc;
            vtp += v[i] * p[i];
        }
        const double K = 0.5 * tau * vtp;
        for (size_t i = k + 1; i < D; i++) p[i] -= K * v[i];   // w
        for (size_t i = k + 1; i < D; i++)
            for (size_t j = k + 1; j < D; j++) A[i * D + j] -= v[i] * p[j] + p[i] * v[j];
    }
    if (D >= 2) {
        diag[D - 2] = A[(D - 2) * D + D - 2];
        off[D - 2] = A[(D - 1) * D + D - 2];
    }
    diag[D - 1] = A[(D - 1) * D + D - 1];

    // 2. Bisection on Sturm counts for each eigenvalue, inside the Gershgorin interval of T.
    double lo = INFINITY, hi = -INFINITY, bmax = 0;
    for (size_t i = 0; i < D; i++) {
        const double r = (i > 0 ? fabs(off[i - 1]) : 0.0) + fabs(off[i]);
        lo = std::min(lo, diag[i] - r);
        hi = std::max(hi, diag[i] + r);
        bmax = std::max(bmax, off[i] * off[i]);
    }
    const double eps = 2.220446049250313e-16, pivmin = 2.2250738585072014e-308 / eps * std::max(1.0, bmax);
    const double slack = 2 * eps * (double)D * std::max(fabs(lo), fabs(hi)) + pivmin;
    lo -= slack;
    hi += slack;
    std::vector<double> lambda(D);
    for (size_t j = 0; j < D; j++) {
        // invariant: count(a) <= j < count(b)
        double a = j > 0 ? std::max(lo, lambda[j - 1] - slack) : lo, b = hi;
        if (tridiagonal_count_below(diag, off, a, pivmin) > (int)j) a = lo;
        for (int it = 0; it < 200; it++) {
            const double mid = 0.5 * (a + b);
            if (mid <= a || mid >= b || b - a <= 2 * eps * std::max(fabs(a), fabs(b)) + pivmin) break;
            if (tridiagonal_count_below(diag, off, mid, pivmin) > (int)j) b = mid;
            else a = mid;
        }
        lambda[j] = 0.5 * (a + b);
    }
    return lambda;
}

inline EmbeddingMetrics embedding_metrics(const float* Z, int n, int d) {
    EmbeddingMetrics m = {NAN, NAN, NAN, NAN, NAN};
    if (n < 2 || d < 1 || !Z) return m;
    const size_t N = (size_t)n, D = (size_t)d;
    for (size_t i = 0; i < N * D; i++)
        if (!isfinite(Z[i])) return m;

    // column means, biased variances and central moments
    std::vector<double> mean(D, 0.0);
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < D; j++) mean[j] += Z[i * D + j];
    for (size_t j = 0; j < D; j++) mean[j] /= (double)n;
    std::vector<double> m2(D, 0.0), m3(D, 0.0), m4(D, 0.0);
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < D; j++) {
            const double x = Z[i * D + j] - mean[j], x2 = x * x;
            m2[j] += x2;
            m3[j] += x2 * x;
            m4[j] += x2 * x2;
        }
    double variance = 0, skew = 0, kurt = 0;
    for (size_t j = 0; j < D; j++) {
        const double var = m2[j] / (double)n;
        variance += var;
        const double s = std::max(sqrt(var), 1e-6);
        skew += fabs(m3[j] / (double)n / (s * s * s));
        kurt += fabs(m4[j] / (double)n / (s * s * s * s) - 3.0);
    }
    m.variance = variance / (double)d;
    m.gaussian_score = 1.0 / (1.0 + skew / (double)d + kurt / (double)d);

    // covariance spectrum. XtX = X^T X of the centred X, accumulated row by row (S[a][b] += x_ia x_ib, i in order,
    // for b >= a), rows of X in blocks of 64 that stay in cache; threads split the rows a of S, so every sum runs in
    // the same order whatever the thread count.
    std::vector<double> X(N * D);   // (n, d) centred
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < D; j++) X[i * D + j] = Z[i * D + j] - mean[j];
    std::vector<double> XtX(D * D, 0.0);
    for (size_t i0 = 0; i0 < N; i0 += 64) {
        const size_t i1 = std::min(N, i0 + 64);
#pragma omp parallel for schedule(static)
        for (int a = 0; a < d; a++) {
            double* row = &XtX[(size_t)a * D];
            for (size_t i = i0; i < i1; i++) {
                const double xa = X[i * D + (size_t)a];
                const double* xi = &X[i * D];
                for (size_t b = (size_t)a; b < D; b++) row[b] += xa * xi[b];
            }
        }
    }
    for (size_t a = 0; a < D; a++)
        for (size_t b = 0; b < a; b++) XtX[a * D + b] = XtX[b * D + a];
    std::vector<double> S(D * D);
    for (size_t a = 0; a < D; a++)
        for (size_t b = 0; b < D; b++) S[a * D + b] = XtX[a * D + b] / (double)(n - 1) + (a == b ? 1e-6 : 0.0);
    std::vector<double> lambda = symmetric_eigenvalues(S, d);
    double lmin = INFINITY, lmax = -INFINITY, lsum = 0;
    for (double& l : lambda) {
        l = std::max(l, 0.0);
        lmin = std::min(lmin, l);
        lmax = std::max(lmax, l);
        lsum += l;
    }
    m.isotropy = (std::max(lmin, 0.0) + 1e-8) / (std::max(lmax, 1e-8) + 1e-8);
    const double total = std::max(lsum, 1e-8);
    double H = 0;
    for (double l : lambda) {
        const double p = l / total;
        H -= p * log(p + 1e-12);
    }
    m.erank_cov = exp(H);

    // singular values of the uncentred Z: square roots of the eigenvalues of the smaller Gram matrix,
    // Z^T Z = X^T X + n mean mean^T (d x d) when d <= n, else Z Z^T (n x n, rows dotted in order)
    const bool by_columns = d <= n;
    const size_t R = by_columns ? D : N;
    std::vector<double> gram(R * R);
    if (by_columns) {
        for (size_t a = 0; a < D; a++)
            for (size_t b = 0; b < D; b++) gram[a * D + b] = XtX[a * D + b] + (double)n * mean[a] * mean[b];
    } else {
#pragma omp parallel for schedule(dynamic, 8)
        for (int a = 0; a < n; a++)
            for (size_t b = (size_t)a; b < N; b++) {
                double acc = 0;
                for (size_t j = 0; j < D; j++) acc += (double)Z[(size_t)a * D + j] * (double)Z[b * D + j];
                gram[(size_t)a * N + b] = gram[b * N + (size_t)a] = acc;
            }
    }
    std::vector<double> sigma = symmetric_eigenvalues(gram, (int)R);
    double ssum = 0;
    for (double& s : sigma) {
        s = sqrt(std::max(s, 0.0));
        ssum += s;
    }
    if (ssum == 0) {
        m.erank_rankme = 0;
    } else {
        double Hs = 0;
        for (double s : sigma) {
            const double p = s / ssum + 1e-7;
            Hs -= p * log(p);
        }
        m.erank_rankme = exp(Hs);
    }
    return m;
}

inline double codebook_perplexity(const float* counts, int K) {
    if (K < 1 || !counts) return NAN;
    double total = 0;
    for (int k = 0; k < K; k++) {
        if (!(counts[k] >= 0) || !isfinite(counts[k])) return NAN;
        total += counts[k];
    }
    if (total == 0) return NAN;
    double H = 0;
    for (int k = 0; k < K; k++)
        if (counts[k] > 0) {
            const double p = counts[k] / total;
            H -= p * log(p);
        }
    return exp(H);
}
