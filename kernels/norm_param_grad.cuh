// The parameter gradients of a normalisation over the last axis (LayerNorm; RMSNorm with a weight), shared by
// kernels/layernorm.cuh and kernels/rmsnorm.cuh (their CPU references compute the same sums in their own loops):
//
//   dweight[c] += sum_n dout[n, c] * xhat[n, c]      dout, inp: (N, C); mean, rstd: (N); dweight, dbias: (C)
//   dbias[c]   += sum_n dout[n, c]                   (+=, floatS: parameter gradients accumulate)
//   xhat[n, c]  = (inp[n, c] - mean[n]) * rstd[n]    (mean null: 0, RMSNorm)
//
// Deterministic, no atomics: the rows are cut into at most NORM_PARAM_GRAD_CHUNKS chunks of consecutive rows;
// block (chunk, column tile) has a thread per column that sums its chunk's rows in order, in fp32, into a partial
// (fp32 scratch, (chunks, 2, C)); then a thread per column adds the chunks' partials in chunk order into dweight,
// dbias. N = 4096, C = 384: 128 chunks of 32 rows, 128 x 3 blocks of 128 threads. The chunking depends on N only,
// so the result is bitwise repeatable, and the same on every GPU.
#pragma once
#include "../common/device.h"

#ifdef __CUDACC__
#define NORM_PARAM_GRAD_CHUNKS 128

// partial[chunk, 0, c] = sum over the chunk's rows of dout * xhat, partial[chunk, 1, c] = sum of dout (in row order)
__global__ void norm_param_grad_partial_kernel(float* partial, const floatX* dout, const floatX* inp, const floatS* mean,
                                               const floatS* rstd, int N, int C, int rows_per_chunk) {
    const int chunk = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int start = chunk * rows_per_chunk, end = min(N, start + rows_per_chunk);
    float dw = 0.0f, db = 0.0f;
    for (int n = start; n < end; n++) {
        const float dy = to_float(dout[(size_t)n * C + c]), m = mean ? (float)mean[n] : 0.0f;
        dw += dy * (to_float(inp[(size_t)n * C + c]) - m) * (float)rstd[n];
        db += dy;
    }
    partial[((size_t)chunk * 2) * C + c] = dw;
    partial[((size_t)chunk * 2 + 1) * C + c] = db;
}

__global__ void norm_param_grad_sum_kernel(floatS* dweight, floatS* dbias, const float* partial, int n_chunks, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float dw = 0.0f, db = 0.0f;
    for (int k = 0; k < n_chunks; k++) {
        dw += partial[((size_t)k * 2) * C + c];
        db += partial[((size_t)k * 2 + 1) * C + c];
    }
    if (dweight) dweight[c] += dw;
    if (dbias) dbias[c] += db;
}

// Owner: the tag type of the caller's scratch buffer (device_scratch). dweight or dbias may be null (not computed).
template <typename Owner>
void norm_param_grad(floatS* dweight, floatS* dbias, const floatX* dout, const floatX* inp, const floatS* mean,
                     const floatS* rstd, int N, int C, Stream stream, const char* what) {
    if ((!dweight && !dbias) || N == 0 || C == 0) return;
    float* partial = device_scratch<Owner>((size_t)NORM_PARAM_GRAD_CHUNKS * 2 * C, stream, what);   // (chunks, 2, C)
    const int rows_per_chunk = CEIL_DIV(N, NORM_PARAM_GRAD_CHUNKS), n_chunks = CEIL_DIV(N, rows_per_chunk);
    const int block_size = 128;
    norm_param_grad_partial_kernel<<<dim3(n_chunks, CEIL_DIV(C, block_size)), block_size, 0, stream>>>(
        partial, dout, inp, mean, rstd, N, C, rows_per_chunk);
    cudaCheckLaunch("norm_param_grad_partial_kernel");
    norm_param_grad_sum_kernel<<<CEIL_DIV(C, block_size), block_size, 0, stream>>>(dweight, dbias, partial, n_chunks, C);
    cudaCheckLaunch("norm_param_grad_sum_kernel");
}
#endif
