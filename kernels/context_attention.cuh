// The context aggregation "attention" of the JEPA reference from commit 185e707 (jepa_reference.md section 4):
// nn.Linear(L, L) applied to x^T, a softmax over the L axis for every channel, then a weighted sum over L.
//
//   x (B, L, D) floatX, W (L, L) and bias (L) floatX (the nn.Linear's weight[out, in] and bias)
//   logits[b, l', d] = sum_l W[l', l] x[b, l, d] + bias[l']
//   a[b, :, d]       = softmax over l' of logits[b, :, d]             att (B, L, D) floatS keeps a (=)
//   out[b, d]        = sum_l' a[b, l', d] x[b, l', d]                  out (B, D) floatX (=)
//   (L identical copies x[b, l] = x[b, 0] give out = x[b, 0] whatever W: the reports' "no-op")
//
//   backward, with o = out[b, d] and g_l' = dlogits[b, l', d] = a_l' dout (x_l' - o):
//     dx[b, l, d]  = dout a_l + sum_l' W[l', l] g_l'                  (=)
//     dW[l', l]   += sum_{b, d} g_l' x[b, l, d]                       (floatS, +=)
//     dbias[l']   += sum_{b, d} g_l'                                  (floatS, +=)
//   o is recomputed from att and x. dW and dbias are summed in a fixed order (no atomics): deterministic.
// L <= 32.
#pragma once
#include <math.h>
#include <stdint.h>
#include <algorithm>
#include <vector>
#include "../common/device.h"

#define CONTEXT_ATTENTION_MAX_L 32

// ----------------------------------------------------------------------------------------------------------
// CPU reference (one sample b per OpenMP iteration; the parameter gradients are summed per sample, then over
// the samples in order)

template <typename T>
void context_attention_forward_ref(T* out, T* att, const T* x, const T* W, const T* bias, int B, int L, int D) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        std::vector<T> e(L);
        const T* xb = x + (size_t)b * L * D;
        for (int d = 0; d < D; d++) {
            T maxval = -INFINITY;
            for (int lo = 0; lo < L; lo++) {
                T logit = bias[lo];
                for (int l = 0; l < L; l++) logit += W[(size_t)lo * L + l] * xb[(size_t)l * D + d];
                e[lo] = logit;
                maxval = logit > maxval ? logit : maxval;
            }
            T sum = 0;
            for (int lo = 0; lo < L; lo++) {
                e[lo] = exp(e[lo] - maxval);
                sum += e[lo];
            }
            T o = 0;
            for (int lo = 0; lo < L; lo++) {
                const T a = e[lo] / sum;
                att[((size_t)b * L + lo) * D + d] = a;
                o += a * xb[(size_t)lo * D + d];
            }
            out[(size_t)b * D + d] = o;
        }
    }
}

template <typename T>
void context_attention_backward_ref(T* dx, T* dW, T* dbias, const T* dout, const T* att, const T* x, const T* W, int B,
                                    int L, int D) {
    const int E = L * (L + 1);      // entry lo*(L+1) + l: dW[lo, l] for l < L, dbias[lo] for l = L
    std::vector<double> partial((size_t)B * E);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        std::vector<double> g(L);
        double* pb = partial.data() + (size_t)b * E;
        for (int k = 0; k < E; k++) pb[k] = 0;
        const T* xb = x + (size_t)b * L * D;
        const T* ab = att + (size_t)b * L * D;
        for (int d = 0; d < D; d++) {
            const double go = (double)dout[(size_t)b * D + d];
            double o = 0;
            for (int l = 0; l < L; l++) o += (double)ab[(size_t)l * D + d] * (double)xb[(size_t)l * D + d];
            for (int lo = 0; lo < L; lo++) g[lo] = (double)ab[(size_t)lo * D + d] * go * ((double)xb[(size_t)lo * D + d] - o);
            for (int l = 0; l < L; l++) {
                double acc = go * (double)ab[(size_t)l * D + d];
                for (int lo = 0; lo < L; lo++) acc += (double)W[(size_t)lo * L + l] * g[lo];
                dx[((size_t)b * L + l) * D + d] = (T)acc;
            }
            for (int lo = 0; lo < L; lo++) {
                for (int l = 0; l < L; l++) pb[lo * (L + 1) + l] += g[lo] * (double)xb[(size_t)l * D + d];
                pb[lo * (L + 1) + L] += g[lo];
            }
        }
    }
    for (int lo = 0; lo < L; lo++)
        for (int l = 0; l <= L; l++) {
            double sum = 0;
            for (int b = 0; b < B; b++) sum += partial[(size_t)b * E + lo * (L + 1) + l];
            T& dst = l < L ? dW[(size_t)lo * L + l] : dbias[lo];
            dst = (T)((double)dst + sum);
        }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

inline void context_attention_check(int L) {
    if (L > CONTEXT_ATTENTION_MAX_L) fatal("context_attention: L = %d context grids, at most %d supported", L, CONTEXT_ATTENTION_MAX_L);
}

#ifndef __CUDACC__
inline void context_attention_forward(floatX* out, floatS* att, const floatX* x, const floatX* W, const floatX* bias, int B,
                                      int L, int D, Stream) {
    context_attention_check(L);
    context_attention_forward_ref(out, att, x, W, bias, B, L, D);
}
inline void context_attention_backward(floatX* dx, floatS* dW, floatS* dbias, const floatX* dout, const floatS* att,
                                       const floatX* x, const floatX* W, int B, int L, int D, Stream) {
    context_attention_check(L);
    context_attention_backward_ref(dx, dW, dbias, dout, att, x, W, B, L, D);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA. One thread per (b, d) (consecutive d in a warp: the loads of x[b, l, :] are coalesced), W and bias in
// shared memory, the L values of the thread in registers / local memory.
//   forward:  the L logits, the softmax, att and out.
//   backward: stage 1, blocks of 256 threads over (b, d): each thread writes dx and forms its L (L + 1)
//             contributions to dW / dbias; each is summed over the warp (shuffles), the warp sums go to shared
//             memory and are added over the warps in order into one partial sum per block (a (blocks, E) fp32
//             scratch buffer, E = L (L + 1)); stage 2: one block per entry sums the blocks' partials in a fixed
//             order and adds the total to dW or dbias.

#ifdef __CUDACC__
constexpr int CONTEXT_ATTENTION_BLOCK = 256;

__global__ void context_attention_forward_kernel(floatX* out, floatS* att, const floatX* x, const floatX* W,
                                                 const floatX* bias, int B, int L, int D) {
    __shared__ float Ws[CONTEXT_ATTENTION_MAX_L * CONTEXT_ATTENTION_MAX_L], bs[CONTEXT_ATTENTION_MAX_L];
    for (int k = threadIdx.x; k < L * L; k += blockDim.x) Ws[k] = to_float(W[k]);
    for (int k = threadIdx.x; k < L; k += blockDim.x) bs[k] = to_float(bias[k]);
    __syncthreads();
    const size_t n = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= (size_t)B * D) return;
    const size_t b = n / D, d = n % D;
    const floatX* xb = x + b * L * D + d;
    float xv[CONTEXT_ATTENTION_MAX_L], e[CONTEXT_ATTENTION_MAX_L];
    for (int l = 0; l < L; l++) xv[l] = to_float(xb[(size_t)l * D]);
    float maxval = -INFINITY;
    for (int lo = 0; lo < L; lo++) {
        float logit = bs[lo];
        for (int l = 0; l < L; l++) logit += Ws[lo * L + l] * xv[l];
        e[lo] = logit;
        maxval = fmaxf(maxval, logit);
    }
    float sum = 0.0f;
    for (int lo = 0; lo < L; lo++) {
        e[lo] = expf(e[lo] - maxval);
        sum += e[lo];
    }
    float o = 0.0f;
    for (int lo = 0; lo < L; lo++) {
        const float a = e[lo] / sum;
        att[(b * L + lo) * D + d] = a;
        o += a * xv[lo];
    }
    out[n] = from_float<floatX>(o);
}

__global__ void context_attention_backward_kernel(floatX* dx, float* partial, const floatX* dout, const floatS* att,
                                                  const floatX* x, const floatX* W, int B, int L, int D) {
    extern __shared__ float smem[];
    const int E = L * (L + 1), n_warps = blockDim.x / WARP_SIZE;
    float* Ws = smem;                 // (L, L)
    float* wsum = smem + L * L;       // (n_warps, E)
    for (int k = threadIdx.x; k < L * L; k += blockDim.x) Ws[k] = to_float(W[k]);
    __syncthreads();
    const size_t n = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = n < (size_t)B * D;       // inactive threads contribute zeros to the sums
    const size_t b = active ? n / D : 0, d = active ? n % D : 0;
    float xv[CONTEXT_ATTENTION_MAX_L], g[CONTEXT_ATTENTION_MAX_L];
    if (active) {
        const float go = to_float(dout[n]);
        float av[CONTEXT_ATTENTION_MAX_L];
        float o = 0.0f;
        for (int l = 0; l < L; l++) {
            xv[l] = to_float(x[(b * L + l) * D + d]);
            av[l] = (float)att[(b * L + l) * D + d];
            o += av[l] * xv[l];
        }
        for (int lo = 0; lo < L; lo++) g[lo] = av[lo] * go * (xv[lo] - o);
        for (int l = 0; l < L; l++) {
            float acc = go * av[l];
            for (int lo = 0; lo < L; lo++) acc += Ws[lo * L + l] * g[lo];
            dx[(b * L + l) * D + d] = from_float<floatX>(acc);
        }
    } else {
        for (int l = 0; l < L; l++) xv[l] = g[l] = 0.0f;
    }
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    for (int lo = 0; lo < L; lo++)
        for (int l = 0; l <= L; l++) {
            const float v = warp_reduce_sum(l < L ? g[lo] * xv[l] : g[lo]);
            if (lane == 0) wsum[warp * E + lo * (L + 1) + l] = v;
        }
    __syncthreads();
    for (int k = threadIdx.x; k < E; k += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < n_warps; w++) sum += wsum[w * E + k];
        partial[(size_t)blockIdx.x * E + k] = sum;
    }
}

__global__ void context_attention_param_kernel(floatS* dW, floatS* dbias, const float* partial, int n_blocks, int L) {
    __shared__ float scratch[WARP_SIZE];
    const int E = L * (L + 1), k = blockIdx.x, lo = k / (L + 1), l = k % (L + 1);
    float sum = 0.0f;
    for (int blk = threadIdx.x; blk < n_blocks; blk += blockDim.x) sum += partial[(size_t)blk * E + k];
    sum = block_reduce_sum(sum, scratch);
    if (threadIdx.x == 0) {
        if (l < L) dW[lo * L + l] += sum;
        else dbias[lo] += sum;
    }
}

inline void context_attention_forward(floatX* out, floatS* att, const floatX* x, const floatX* W, const floatX* bias, int B,
                                      int L, int D, Stream stream) {
    context_attention_check(L);
    if ((size_t)B * D == 0) return;
    const unsigned grid = (unsigned)CEIL_DIV((size_t)B * D, (size_t)CONTEXT_ATTENTION_BLOCK);
    context_attention_forward_kernel<<<grid, CONTEXT_ATTENTION_BLOCK, 0, stream>>>(out, att, x, W, bias, B, L, D);
    cudaCheckLaunch("context_attention_forward_kernel");
}

inline void context_attention_backward(floatX* dx, floatS* dW, floatS* dbias, const floatX* dout, const floatS* att,
                                       const floatX* x, const floatX* W, int B, int L, int D, Stream stream) {
    context_attention_check(L);
    if ((size_t)B * D * L == 0) return;          // nothing to write, and the parameter gradients add 0
    const int E = L * (L + 1);
    const int n_blocks = (int)CEIL_DIV((size_t)B * D, (size_t)CONTEXT_ATTENTION_BLOCK);
    float* partial = device_scratch<struct ContextAttentionPartials>((size_t)n_blocks * E, stream, "context_attention partial sums");
    const size_t smem = ((size_t)L * L + (size_t)(CONTEXT_ATTENTION_BLOCK / WARP_SIZE) * E) * sizeof(float);
    context_attention_backward_kernel<<<n_blocks, CONTEXT_ATTENTION_BLOCK, smem, stream>>>(dx, partial, dout, att, x, W, B,
                                                                                         L, D);
    cudaCheckLaunch("context_attention_backward_kernel");
    context_attention_param_kernel<<<E, 256, 0, stream>>>(dW, dbias, partial, n_blocks, L);
    cudaCheckLaunch("context_attention_param_kernel");
}
#endif
