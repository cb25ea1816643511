// Exponential moving average of the weights, used for evaluation (upstream EMAHelper):
//   ema = (1 - rate) * w + rate * ema          (rate 0.999), after every optimizer step
#pragma once
#include "../common/device.h"

template <typename T>
void ema_update_ref(T* ema, const T* weights, size_t n, float rate) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) ema[i] = (T)(1.0f - rate) * weights[i] + (T)rate * ema[i];
}

#ifndef __CUDACC__
inline void ema_update(floatS* ema, const floatS* weights, size_t n, float rate, Stream) { ema_update_ref(ema, weights, n, rate); }
#endif
