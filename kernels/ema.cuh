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

#ifdef __CUDACC__
template <typename T>
__global__ void ema_update_kernel(T* ema, const T* weights, size_t n, float rate) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) ema[i] = (1.0f - rate) * weights[i] + rate * ema[i];
}

inline void ema_update(floatS* ema, const floatS* weights, size_t n, float rate, Stream stream) {
    if (n == 0) return;
    const int block_size = 256;
    ema_update_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(ema, weights, n, rate);
    cudaCheckLaunch("ema_update_kernel");
}
#endif
