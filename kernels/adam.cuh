// Adam with decoupled weight decay, in the two flavours the reference systems use; fp32 state.
//
//   g = grad * grad_scale                      (grad_scale folds in global-norm clipping)
//   m = m + (1 - beta1) (g - m) ,  v = v + (1 - beta2) (g^2 - v)          (torch's lerp)
//   mhat = m / (1 - beta1^t) ,  vhat = v / (1 - beta2^t)
//   w = w * (1 - lr * weight_decay) - lr * u
//     AdamATan2 (TRM's optimizer, no epsilon):   u = atan2(mhat, sqrt(vhat))
//     AdamW:                                     u = mhat / (sqrt(vhat) + eps)
//
// `master` holds the fp32 weights when the compute copy `params` is bf16; it is null when floatX is float and
// params are the master weights themselves. Every element is independent: no reduction, deterministic.
#pragma once
#include <math.h>
#include <algorithm>
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void adam_update_ref(T* params, T* master, const T* grads, T* m, T* v, size_t n, float lr, float beta1, float beta2,
                     float eps, float weight_decay, float grad_scale, int t, bool use_atan2) {
    const double bias1 = 1.0 - pow((double)beta1, t), bias2 = 1.0 - pow((double)beta2, t);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const T g = grads[i] * (T)grad_scale;
        m[i] += (T)(1.0f - beta1) * (g - m[i]);
        v[i] += (T)(1.0f - beta2) * (g * g - v[i]);
        const T mhat = m[i] / (T)bias1, vhat = v[i] / (T)bias2;
        const T u = use_atan2 ? atan2(mhat, sqrt(vhat)) : mhat / (sqrt(vhat) + (T)eps);
        T w = master ? master[i] : params[i];
        w = w * (T)(1.0f - lr * weight_decay) - (T)lr * u;
        if (master) master[i] = w;
        params[i] = w;
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void adam_update(floatX* params, floatS* master, const floatS* grads, floatS* m, floatS* v, size_t n, float lr,
                        float beta1, float beta2, float eps, float weight_decay, float grad_scale, int t,
                        bool use_atan2, Stream) {
    adam_update_ref(params, master, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t, use_atan2);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA: elementwise in fp32, a grid-stride loop over packs of 4 consecutive elements: one 128-bit access per
// fp32 array and one 8-byte (bf16) or 16-byte (fp32) store of params. A slice of the parameter buffer (the
// encoder's starts at n_decoder) need not begin on a pack boundary, so the `head` < 4 elements before the first
// aligned pack and the < 4 after the last one go one by one (all n of them if the arrays are not co-aligned).

#ifdef __CUDACC__
static_assert(Packed128<floatS>::size == 4, "a pack is 4 fp32 elements");

// The update's constants, derived on the host once per call (the bias corrections in double, as the reference).
struct AdamConstants {
    float lr, one_minus_beta1, one_minus_beta2, bias1, bias2, eps, decay, grad_scale;
    bool use_atan2;
};

// Four consecutive compute weights, moved with one 8-byte (bf16) or 16-byte (fp32) access.
struct alignas(4 * sizeof(floatX)) AdamParams4 {
    floatX w[4];
};

// One element: updates m and v in place, returns the new weight.
__device__ inline float adam_step(float w, float grad, float& m, float& v, const AdamConstants& h) {
    const float g = grad * h.grad_scale;
    m += h.one_minus_beta1 * (g - m);
    v += h.one_minus_beta2 * (g * g - v);
    const float mhat = m / h.bias1, vhat = v / h.bias2;
    const float u = h.use_atan2 ? atan2f(mhat, sqrtf(vhat)) : mhat / (sqrtf(vhat) + h.eps);
    return w * h.decay - h.lr * u;
}

__device__ inline void adam_element(floatX* params, floatS* master, const floatS* grads, floatS* m, floatS* v, size_t i,
                                    const AdamConstants& h) {
    float mi = m[i], vi = v[i];
    const float w = adam_step(master ? master[i] : to_float(params[i]), grads[i], mi, vi, h);
    m[i] = mi;
    v[i] = vi;
    if (master) master[i] = w;
    params[i] = from_float<floatX>(w);
}

__global__ void adam_update_kernel(floatX* params, floatS* master, const floatS* grads, floatS* m, floatS* v, size_t n,
                                   size_t head, AdamConstants h) {
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    const size_t n_packs = (n - head) / 4, tail = head + 4 * n_packs;
    for (size_t p = tid; p < n_packs; p += stride) {
        const size_t i = head + 4 * p;                 // every array is pack-aligned at i
        const Packed128<floatS> g = load128cs(grads + i);
        Packed128<floatS> mm = load128cs(m + i), vv = load128cs(v + i), w;
        if (master) {
            w = load128cs(master + i);
        } else {
            const AdamParams4 pw = *reinterpret_cast<const AdamParams4*>(params + i);
            for (int j = 0; j < 4; j++) w[j] = to_float(pw.w[j]);
        }
        AdamParams4 out;
        for (int j = 0; j < 4; j++) {
            w[j] = adam_step(w[j], g[j], mm[j], vv[j], h);
            out.w[j] = from_float<floatX>(w[j]);
        }
        store128(m + i, mm);
        store128(v + i, vv);
        if (master) store128(master + i, w);
        *reinterpret_cast<AdamParams4*>(params + i) = out;
    }
    for (size_t i = tid; i < head; i += stride) adam_element(params, master, grads, m, v, i, h);
    for (size_t i = tail + tid; i < n; i += stride) adam_element(params, master, grads, m, v, i, h);
}

// The launcher with the block size as a parameter; the lab sweeps it.
inline void adam_update_launch(floatX* params, floatS* master, const floatS* grads, floatS* m, floatS* v, size_t n, float lr,
                               float beta1, float beta2, float eps, float weight_decay, float grad_scale, int t,
                               bool use_atan2, int block_size, Stream stream) {
    if (n == 0) return;
    AdamConstants h;
    h.lr = lr;
    h.one_minus_beta1 = 1.0f - beta1;
    h.one_minus_beta2 = 1.0f - beta2;
    h.bias1 = (float)(1.0 - pow((double)beta1, t));
    h.bias2 = (float)(1.0 - pow((double)beta2, t));
    h.eps = eps;
    h.decay = 1.0f - lr * weight_decay;
    h.grad_scale = grad_scale;
    h.use_atan2 = use_atan2;
    // Where each array stands within a pack of 4 elements; the packed body needs them all to agree.
    auto phase = [](const void* p, size_t elem_bytes) { return (uintptr_t)p / elem_bytes % 4; };
    const uintptr_t ph = phase(grads, sizeof(floatS));
    const bool co_aligned = phase(m, sizeof(floatS)) == ph && phase(v, sizeof(floatS)) == ph &&
                            (!master || phase(master, sizeof(floatS)) == ph) && phase(params, sizeof(floatX)) == ph;
    const size_t head = co_aligned ? std::min(n, (size_t)((4 - ph) % 4)) : n;
    const size_t threads = std::max<size_t>(1, std::max((n - head) / 4, head));   // one block covers the tail
    adam_update_kernel<<<(unsigned)CEIL_DIV(threads, (size_t)block_size), block_size, 0, stream>>>(params, master, grads, m, v,
                                                                                                   n, head, h);
    cudaCheckLaunch("adam_update_kernel");
}

inline void adam_update(floatX* params, floatS* master, const floatS* grads, floatS* m, floatS* v, size_t n, float lr,
                        float beta1, float beta2, float eps, float weight_decay, float grad_scale, int t,
                        bool use_atan2, Stream stream) {
    adam_update_launch(params, master, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t, use_atan2, 256,
                       stream);
}
#endif
