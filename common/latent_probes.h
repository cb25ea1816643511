// Probes of what a latent encodes (seed report 004's router probe, posterior-mu probe and strategy alignment).
//
//   probe_accuracy      multinomial logistic regression from features (n, d) to labels in 0..K-1, fitted on the
//                       rows with train[i] = 1 and scored on the others: their accuracy (-1 when either side is
//                       empty). Features are standardised with the training rows' mean and deviation; the fit
//                       minimises mean cross-entropy + l2 / 2 |W|^2 by full-batch gradient descent (a fixed number of
//                       steps from zero: deterministic, and the loss is convex, so the start does not matter).
//   majority_accuracy   the baseline a probe must beat: the accuracy on the test rows of always answering the
//                       training rows' most common label (-1 when either side is empty); above 1 / K when the
//                       labels are unbalanced
//   kmeans              K centroids of n points (d): farthest-point initialisation from the point nearest the mean
//                       (deterministic), then Lloyd iterations; a cluster that empties keeps its centroid.
//   alignment_one_to_one   given counts C[k][s] of outputs generated with forced latent k that show strategy s, the
//                       best one-to-one matching of latents to strategies: max over injective maps pi of
//                       sum_k C[k][pi(k)] / sum of all counts (brute force over permutations: K <= 8).
//
// Host code for both backends: a probe set holds a few hundred points of d_z = 8 features.
#pragma once
#include <math.h>
#include <algorithm>
#include <numeric>
#include <vector>

inline double probe_accuracy(const std::vector<double>& x, const std::vector<int>& labels, const std::vector<int>& train,
                             int n, int d, int K, int steps = 500, double lr = 0.5, double l2 = 1e-3) {
    int n_train = 0, n_test = 0;
    for (int i = 0; i < n; i++) (train[i] ? n_train : n_test)++;
    if (n_train == 0 || n_test == 0 || K < 1) return -1.0;
    std::vector<double> mean(d, 0.0), sd(d, 0.0);
    for (int i = 0; i < n; i++)
        if (train[i]) for (int j = 0; j < d; j++) mean[j] += x[(size_t)i * d + j] / n_train;
    for (int i = 0; i < n; i++)
        if (train[i]) for (int j = 0; j < d; j++) sd[j] += pow(x[(size_t)i * d + j] - mean[j], 2) / n_train;
    for (int j = 0; j < d; j++) sd[j] = sd[j] > 1e-24 ? sqrt(sd[j]) : 1.0;
    auto feature = [&](int i, int j) { return (x[(size_t)i * d + j] - mean[j]) / sd[j]; };
    const int P = d + 1;                                   // weights and a bias per class
    std::vector<double> W((size_t)K * P, 0.0), grad(W.size()), logits(K);
    auto scores = [&](int i) {
        for (int k = 0; k < K; k++) {
            double s = W[(size_t)k * P + d];
            for (int j = 0; j < d; j++) s += W[(size_t)k * P + j] * feature(i, j);
            logits[k] = s;
        }
    };
    for (int step = 0; step < steps; step++) {
        for (size_t q = 0; q < W.size(); q++) grad[q] = l2 * W[q];
        for (int i = 0; i < n; i++) {
            if (!train[i]) continue;
            scores(i);
            const double top = *std::max_element(logits.begin(), logits.end());
            double sum = 0;
            for (int k = 0; k < K; k++) sum += logits[k] = exp(logits[k] - top);
            for (int k = 0; k < K; k++) {
                const double g = (logits[k] / sum - (k == labels[i])) / n_train;
                for (int j = 0; j < d; j++) grad[(size_t)k * P + j] += g * feature(i, j);
                grad[(size_t)k * P + d] += g;
            }
        }
        for (size_t q = 0; q < W.size(); q++) W[q] -= lr * grad[q];
    }
    int correct = 0;
    for (int i = 0; i < n; i++) {
        if (train[i]) continue;
        scores(i);
        correct += (int)(std::max_element(logits.begin(), logits.end()) - logits.begin()) == labels[i];
    }
    return (double)correct / n_test;
}

inline double majority_accuracy(const std::vector<int>& labels, const std::vector<int>& train, int K) {
    std::vector<int> count(std::max(K, 1), 0);
    int n_test = 0, correct = 0;
    for (size_t i = 0; i < labels.size(); i++)
        if (train[i] && labels[i] >= 0 && labels[i] < K) count[labels[i]]++;
    const int top = (int)(std::max_element(count.begin(), count.end()) - count.begin());
    bool any_train = false;
    for (size_t i = 0; i < labels.size(); i++) {
        if (train[i]) { any_train = true; continue; }
        n_test++;
        correct += labels[i] == top;
    }
    return any_train && n_test ? (double)correct / n_test : -1.0;
}

inline std::vector<double> kmeans(const std::vector<double>& x, int n, int d, int K, int iterations = 50) {
    std::vector<double> c((size_t)std::max(K, 0) * d, 0.0);
    if (n == 0 || K <= 0) return c;
    auto dist2 = [&](int i, const double* y) {
        double s = 0;
        for (int j = 0; j < d; j++) s += pow(x[(size_t)i * d + j] - y[j], 2);
        return s;
    };
    std::vector<double> mean(d, 0.0);
    for (int i = 0; i < n; i++) for (int j = 0; j < d; j++) mean[j] += x[(size_t)i * d + j] / n;
    int first = 0;
    for (int i = 1; i < n; i++) if (dist2(i, mean.data()) < dist2(first, mean.data())) first = i;
    std::vector<double> nearest(n);
    for (int k = 0; k < K; k++) {
        int pick = first;
        if (k > 0) pick = (int)(std::max_element(nearest.begin(), nearest.end()) - nearest.begin());
        std::copy(x.begin() + (size_t)pick * d, x.begin() + (size_t)(pick + 1) * d, c.begin() + (size_t)k * d);
        for (int i = 0; i < n; i++) nearest[i] = k == 0 ? dist2(i, &c[0]) : std::min(nearest[i], dist2(i, &c[(size_t)k * d]));
    }
    std::vector<int> assign(n, 0), count(K);
    for (int it = 0; it < iterations; it++) {
        for (int i = 0; i < n; i++) {
            assign[i] = 0;
            for (int k = 1; k < K; k++)
                if (dist2(i, &c[(size_t)k * d]) < dist2(i, &c[(size_t)assign[i] * d])) assign[i] = k;
        }
        std::vector<double> sum((size_t)K * d, 0.0);
        std::fill(count.begin(), count.end(), 0);
        for (int i = 0; i < n; i++) {
            count[assign[i]]++;
            for (int j = 0; j < d; j++) sum[(size_t)assign[i] * d + j] += x[(size_t)i * d + j];
        }
        for (int k = 0; k < K; k++)
            if (count[k]) for (int j = 0; j < d; j++) c[(size_t)k * d + j] = sum[(size_t)k * d + j] / count[k];
    }
    return c;
}

inline double alignment_one_to_one(const std::vector<std::vector<int>>& counts) {
    const int K = (int)counts.size(), S = K ? (int)counts[0].size() : 0;
    double total = 0;
    for (const auto& row : counts) for (int v : row) total += v;
    if (total == 0 || K == 0) return 0.0;
    // every injective map of the K latents into the S strategies: permutations of the strategies, first K used
    std::vector<int> perm(std::max(K, S));
    std::iota(perm.begin(), perm.end(), 0);
    double best = 0;
    do {
        double s = 0;
        for (int k = 0; k < K; k++) if (perm[k] < S) s += counts[k][perm[k]];
        best = std::max(best, s);
    } while (std::next_permutation(perm.begin(), perm.end()));
    return best / total;
}
