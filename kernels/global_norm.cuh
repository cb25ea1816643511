// Squared L2 norm of a gradient vector, summed in a fixed order (deterministic for any thread count):
//   out[0] = sum_i x[i]^2        accumulated in double per fixed chunk of 4096 elements, chunks added in order.
// The trainer takes sqrt on the host for logging and clipping (scale = min(1, clip / (norm + 1e-6)), as
// torch.nn.utils.clip_grad_norm_).
#pragma once
#include <vector>
#include "../common/device.h"

template <typename T>
void global_norm_squared_ref(T* out, const T* x, size_t n) {
    const size_t chunk = 4096, n_chunks = CEIL_DIV(n, chunk);
    std::vector<double> partial(n_chunks);
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < n_chunks; c++) {
        double s = 0;
        for (size_t i = c * chunk; i < n && i < (c + 1) * chunk; i++) s += (double)x[i] * (double)x[i];
        partial[c] = s;
    }
    double total = 0;
    for (size_t c = 0; c < n_chunks; c++) total += partial[c];
    out[0] = (T)total;
}

#ifndef __CUDACC__
inline void global_norm_squared(floatS* out, const floatS* x, size_t n, Stream) { global_norm_squared_ref(out, x, n); }
#endif
