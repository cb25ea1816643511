// Conversion of a tensor to the statistics precision: dst[i] = (floatS) src[i].
// (Gradients flow through activations in floatX; Adam takes floatS gradients. Used for the latents that
// test-time optimisation updates, whose gradients come out of the decoder's backward pass.)
#pragma once
#include "../common/device.h"

template <typename TS, typename TX>
void convert_to_floatS_ref(TS* dst, const TX* src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (TS)to_float(src[i]);
}

#ifndef __CUDACC__
inline void convert_to_floatS(floatS* dst, const floatX* src, size_t n, Stream) { convert_to_floatS_ref(dst, src, n); }
#endif
