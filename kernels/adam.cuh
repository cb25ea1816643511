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
