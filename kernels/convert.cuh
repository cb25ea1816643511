// Conversions between the two precisions:
//   convert_to_floatS: dst[i] = (floatS) src[i]. Gradients flow through activations in floatX; Adam takes floatS
//     gradients (the latents that ETRM's test-time optimisation updates).
//   convert_to_floatX: dst[i] = (floatX) src[i], the compute copy of fp32 weights (the JEPA's EMA target branch).
#pragma once
#include "../common/device.h"

template <typename TS, typename TX>
void convert_to_floatS_ref(TS* dst, const TX* src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (TS)to_float(src[i]);
}

template <typename TX, typename TS>
void convert_to_floatX_ref(TX* dst, const TS* src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = from_float<TX>((double)src[i]);
}

#ifndef __CUDACC__
inline void convert_to_floatS(floatS* dst, const floatX* src, size_t n, Stream) { convert_to_floatS_ref(dst, src, n); }
inline void convert_to_floatX(floatX* dst, const floatS* src, size_t n, Stream) { convert_to_floatX_ref(dst, src, n); }
#endif

#ifdef __CUDACC__
template <typename TS, typename TX>
__global__ void convert_to_floatS_kernel(TS* dst, const TX* src, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = (TS)to_float(src[i]);
}

template <typename TX, typename TS>
__global__ void convert_to_floatX_kernel(TX* dst, const TS* src, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = from_float<TX>(src[i]);
}

inline void convert_to_floatS(floatS* dst, const floatX* src, size_t n, Stream stream) {
    if (n == 0) return;
    const int block_size = 256;
    convert_to_floatS_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(dst, src, n);
    cudaCheckLaunch("convert_to_floatS_kernel");
}
inline void convert_to_floatX(floatX* dst, const floatS* src, size_t n, Stream stream) {
    if (n == 0) return;
    const int block_size = 256;
    convert_to_floatX_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(dst, src, n);
    cudaCheckLaunch("convert_to_floatX_kernel");
}
#endif
