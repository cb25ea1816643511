// Moving whole rows (of width C) between tensors.
//
//   gather_rows    out[r, :] = inp[index[r], :]                          r < n_rows
//   scatter_rows   out[index[r], :] = inp[r, :], every other of the n_out rows of out = 0
//   (with distinct indices each is the other's backward; both overwrite, =)
//   put_rows       out[index[r], :] = inp[r, :]  (or += with accumulate), the other rows of out untouched
//
//   broadcast_rows           out[b, offset + r, :] = src[r, :]            b < B, r < R; out rows (B, T, C)
//   broadcast_rows_backward  dsrc[r, :] += sum_b dout[b, offset + r, :]   (a parameter gradient, +=)
//
// Uses: the valid demos of a batch are encoded as one compact list and scattered to their (sample, slot)
// places for the set encoder; the q head reads position 0 of every sample (a gather); the LPN encoder's CLS
// token and the set encoder's learned queries are parameters broadcast over the batch; the CVAE writes its latent
// into one row of each sequence's embeddings, and adds the router head's gradient into one row (put_rows).
#pragma once
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void gather_rows_ref(T* out, const T* inp, const int* index, int n_rows, int C) {
    for (int r = 0; r < n_rows; r++)
        for (int c = 0; c < C; c++) out[(size_t)r * C + c] = inp[(size_t)index[r] * C + c];
}

template <typename T>
void scatter_rows_ref(T* out, const T* inp, const int* index, int n_rows, int n_out, int C) {
    for (size_t i = 0; i < (size_t)n_out * C; i++) out[i] = 0;
    for (int r = 0; r < n_rows; r++)
        for (int c = 0; c < C; c++) out[(size_t)index[r] * C + c] = inp[(size_t)r * C + c];
}

template <typename T>
void put_rows_ref(T* out, const T* inp, const int* index, int n_rows, int C, bool accumulate) {
    for (int r = 0; r < n_rows; r++)
        for (int c = 0; c < C; c++) {
            T& o = out[(size_t)index[r] * C + c];
            o = (accumulate ? o : (T)0) + inp[(size_t)r * C + c];
        }
}

template <typename T>
void broadcast_rows_ref(T* out, const T* src, int B, int R, int C, int T_out, int offset) {
    for (int b = 0; b < B; b++)
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) out[((size_t)b * T_out + offset + r) * C + c] = src[(size_t)r * C + c];
}

template <typename T>
void broadcast_rows_backward_ref(T* dsrc, const T* dout, int B, int R, int C, int T_out, int offset) {
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            T sum = 0;
            for (int b = 0; b < B; b++) sum += dout[((size_t)b * T_out + offset + r) * C + c];
            dsrc[(size_t)r * C + c] += sum;
        }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void gather_rows(floatX* out, const floatX* inp, const int* index, int n_rows, int C, Stream) {
    gather_rows_ref(out, inp, index, n_rows, C);
}
inline void scatter_rows(floatX* out, const floatX* inp, const int* index, int n_rows, int n_out, int C, Stream) {
    scatter_rows_ref(out, inp, index, n_rows, n_out, C);
}
inline void put_rows(floatX* out, const floatX* inp, const int* index, int n_rows, int C, bool accumulate, Stream) {
    put_rows_ref(out, inp, index, n_rows, C, accumulate);
}
inline void broadcast_rows(floatX* out, const floatX* src, int B, int R, int C, int T_out, int offset, Stream) {
    broadcast_rows_ref(out, src, B, R, C, T_out, offset);
}
inline void broadcast_rows_backward(floatS* dsrc, const floatX* dout, int B, int R, int C, int T_out, int offset, Stream) {
    broadcast_rows_backward_ref(dsrc, dout, B, R, C, T_out, offset);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA

#ifdef __CUDACC__
// gather (SCATTER = false): out[r, c] = inp[index[r], c];  scatter (SCATTER = true): out[index[r], c] = inp[r, c].
// One thread per element of the n_rows rows.
template <bool SCATTER, typename T>
__global__ void copy_rows_kernel(T* out, const T* inp, const int* index, int n_rows, int C) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n_rows * C) return;
    const size_t r = i / C, c = i % C, indexed = (size_t)index[r];
    out[(SCATTER ? indexed : r) * C + c] = inp[(SCATTER ? r : indexed) * C + c];
}

// out[index[r], c] = (accumulate ? out[index[r], c] : 0) + inp[r, c]; one thread per element of the n_rows rows.
template <typename T>
__global__ void put_rows_kernel(T* out, const T* inp, const int* index, int n_rows, int C, bool accumulate) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n_rows * C) return;
    const size_t r = i / C, c = i % C;
    T& o = out[(size_t)index[r] * C + c];
    o = from_float<T>((accumulate ? to_float(o) : 0.0f) + to_float(inp[r * C + c]));
}

// out[b, offset + r, c] = src[r, c]; one thread per output element.
template <typename T>
__global__ void broadcast_rows_kernel(T* out, const T* src, int B, int R, int C, int T_out, int offset) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * R * C) return;
    const size_t br = i / C, b = br / R, r = br % R, c = i % C;
    out[(b * T_out + offset + r) * C + c] = src[r * C + c];
}

// dsrc[r, c] += sum_b dout[b, offset + r, c]: one thread per (r, c), summing over b in order in fp32
// (deterministic: no other thread touches the element).
template <typename TS, typename T>
__global__ void broadcast_rows_backward_kernel(TS* dsrc, const T* dout, int B, int R, int C, int T_out, int offset) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= R * C) return;
    const int r = i / C, c = i % C;
    float sum = 0.0f;
#pragma unroll 8     // keeps several loads in flight; the additions stay in order
    for (int b = 0; b < B; b++) sum += to_float(dout[((size_t)b * T_out + offset + r) * C + c]);
    dsrc[i] += sum;
}

inline void gather_rows(floatX* out, const floatX* inp, const int* index, int n_rows, int C, Stream stream) {
    const size_t n = (size_t)n_rows * C;
    if (n == 0) return;
    const int block_size = 256;
    copy_rows_kernel<false><<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(out, inp, index, n_rows, C);
    cudaCheckLaunch("copy_rows_kernel (gather)");
}

inline void scatter_rows(floatX* out, const floatX* inp, const int* index, int n_rows, int n_out, int C, Stream stream) {
    if ((size_t)n_out * C == 0) return;
    cudaCheck(cudaMemsetAsync(out, 0, (size_t)n_out * C * sizeof(floatX), stream));   // 0 bits are 0 in bf16 and fp32
    const size_t n = (size_t)n_rows * C;
    if (n == 0) return;
    const int block_size = 256;
    copy_rows_kernel<true><<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(out, inp, index, n_rows, C);
    cudaCheckLaunch("copy_rows_kernel (scatter)");
}

inline void put_rows(floatX* out, const floatX* inp, const int* index, int n_rows, int C, bool accumulate, Stream stream) {
    const size_t n = (size_t)n_rows * C;
    if (n == 0) return;
    const int block_size = 256;
    put_rows_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(out, inp, index, n_rows, C, accumulate);
    cudaCheckLaunch("put_rows_kernel");
}

inline void broadcast_rows(floatX* out, const floatX* src, int B, int R, int C, int T_out, int offset, Stream stream) {
    const size_t n = (size_t)B * R * C;
    if (n == 0) return;
    const int block_size = 256;
    broadcast_rows_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(out, src, B, R, C, T_out, offset);
    cudaCheckLaunch("broadcast_rows_kernel");
}

inline void broadcast_rows_backward(floatS* dsrc, const floatX* dout, int B, int R, int C, int T_out, int offset,
                                    Stream stream) {
    if (B == 0 || R * C == 0) return;
    const int block_size = 256;
    broadcast_rows_backward_kernel<<<CEIL_DIV(R * C, block_size), block_size, 0, stream>>>(dsrc, dout, B, R, C, T_out, offset);
    cudaCheckLaunch("broadcast_rows_backward_kernel");
}
#endif
