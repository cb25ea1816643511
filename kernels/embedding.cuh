// Scaled token embedding, and the prefix positions that carry the puzzle embedding / encoder context.
//
//   embedding_forward   out[b, offset + s, :] = scale * table[ids[b, s], :]        ids (B, S) in [0, V); out rows (B, T, C)
//   embedding_backward  dtable[v, :] += scale * sum over (b, s) with ids[b, s] == v of dout[b, offset + s, :]   (+=)
//
//   prefix_forward      out[b, 0 : P*C] (the first P rows, flattened) = scale * [src[b, 0:K], 0, ..., 0],  K <= P*C
//                       TRM: src = the sample's puzzle-embedding row (K = puzzle_emb_ndim, zero-padded);
//                       ETRM: src = the encoder's context (K = P*C).
//   prefix_backward     dsrc[b, k] = scale * dout[b, k]                                                       (=)
//
// The decoder input is x = sqrt(D) * concat(prefix, E_tok[inputs]): one prefix_forward plus one
// embedding_forward at offset P. The demo encoders build [E_in(x); E_out(y)] with two embedding_forward calls.
#pragma once
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void embedding_forward_ref(T* out, const int* ids, const T* table, int B, int S, int C, int T_out, int offset, float scale) {
#pragma omp parallel for schedule(static)
    for (int bs = 0; bs < B * S; bs++) {
        const int b = bs / S, s = bs % S;
        const T* row = table + (size_t)ids[bs] * C;
        T* o = out + ((size_t)b * T_out + offset + s) * C;
        for (int c = 0; c < C; c++) o[c] = (T)scale * row[c];
    }
}

template <typename T>
void embedding_backward_ref(T* dtable, const T* dout, const int* ids, int B, int S, int C, int T_out, int offset, float scale) {
    // Parallel over channels; within a channel the (b, s) order is fixed: deterministic.
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        for (int bs = 0; bs < B * S; bs++) {
            const int b = bs / S, s = bs % S;
            dtable[(size_t)ids[bs] * C + c] += (T)scale * dout[((size_t)b * T_out + offset + s) * C + c];
        }
    }
}

template <typename T>
void prefix_forward_ref(T* out, const T* src, int B, int K, int prefix_size, size_t out_batch_stride, float scale) {
    for (int b = 0; b < B; b++) {
        T* o = out + b * out_batch_stride;
        for (int k = 0; k < prefix_size; k++) o[k] = k < K ? (T)scale * src[(size_t)b * K + k] : T(0);
    }
}

template <typename T>
void prefix_backward_ref(T* dsrc, const T* dout, int B, int K, size_t out_batch_stride, float scale) {
    for (int b = 0; b < B; b++)
        for (int k = 0; k < K; k++) dsrc[(size_t)b * K + k] = (T)scale * dout[b * out_batch_stride + k];
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void embedding_forward(floatX* out, const int* ids, const floatX* table, int B, int S, int C, int T_out,
                              int offset, float scale, Stream) {
    embedding_forward_ref(out, ids, table, B, S, C, T_out, offset, scale);
}
inline void embedding_backward(floatS* dtable, const floatX* dout, const int* ids, int B, int S, int C, int T_out,
                               int offset, float scale, Stream) {
    embedding_backward_ref(dtable, dout, ids, B, S, C, T_out, offset, scale);
}
inline void prefix_forward(floatX* out, const floatX* src, int B, int K, int prefix_size, size_t out_batch_stride,
                           float scale, Stream) {
    prefix_forward_ref(out, src, B, K, prefix_size, out_batch_stride, scale);
}
inline void prefix_backward(floatX* dsrc, const floatX* dout, int B, int K, size_t out_batch_stride, float scale, Stream) {
    prefix_backward_ref(dsrc, dout, B, K, out_batch_stride, scale);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA

#ifdef __CUDACC__
// Shape constants of embedding_backward.
//   EMBEDDING_BACKWARD_MAX_VOCAB   the ids the two-stage reduction handles (the token tables have VOCAB = 12
//                                  rows): stage 1 keeps one fp32 accumulator per (id, channel). Larger ids (a
//                                  bigger table; not the trainer's) take a slow exact path, flagged per chunk
//                                  by bit EMBEDDING_BACKWARD_LARGE_ID of the chunk's id mask.
//   EMBEDDING_BACKWARD_MAX_CHUNKS  stage 1 splits the B*S rows into at most this many fixed chunks
//                                  (x channel tiles: about 1000 blocks at C = 512, enough to fill an H100)
constexpr int EMBEDDING_BACKWARD_MAX_VOCAB = 16;
constexpr uint32_t EMBEDDING_BACKWARD_LARGE_ID = 1u << 31;
constexpr int EMBEDDING_BACKWARD_MAX_CHUNKS = 512;
constexpr int EMBEDDING_BACKWARD_BLOCK = 256;
static_assert(EMBEDDING_BACKWARD_MAX_VOCAB < 32, "the ids of a chunk are a 32-bit mask with the top bit for larger ids");

// out[b, offset + s, c] = scale * table[ids[b, s], c]; one thread per output element.
template <typename T>
__global__ void embedding_forward_kernel(T* out, const int* ids, const T* table, int B, int S, int C, int T_out,
                                         int offset, float scale) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * S * C) return;
    const int bs = (int)(i / C), c = (int)(i % C), b = bs / S, s = bs % S;
    out[((size_t)b * T_out + offset + s) * C + c] = from_float<T>(scale * to_float(table[(size_t)ids[bs] * C + c]));
}

// embedding_backward stage 1: block (k, tile) sums the dout rows of chunk k, [k * rows_per_chunk, ...) of the
// B*S rows, in row order, for the channel c = tile * blockDim.x + threadIdx.x, into one fp32 accumulator per
// id in shared memory (each thread owns its column of acc: no barrier needed), then writes all of them to
// partial[k, v, c] (MAX_VOCAB, C); tile 0's thread 0 also writes the bit mask of the ids the chunk holds.
// (Negative ids are invalid input and skipped.)
template <typename T>
__global__ void embedding_backward_partial_kernel(float* partial, uint32_t* seen, const T* dout, const int* ids,
                                                  int B, int S, int C, int T_out, int offset, int rows_per_chunk) {
    __shared__ float acc[EMBEDDING_BACKWARD_MAX_VOCAB][EMBEDDING_BACKWARD_BLOCK];
    const int k = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int v = 0; v < EMBEDDING_BACKWARD_MAX_VOCAB; v++) acc[v][threadIdx.x] = 0.0f;
    uint32_t mask = 0;
    const int begin = k * rows_per_chunk, end = min(B * S, begin + rows_per_chunk);
    for (int bs = begin; bs < end; bs++) {
        const int id = ids[bs];
        if (id < 0) continue;
        if (id >= EMBEDDING_BACKWARD_MAX_VOCAB) {
            mask |= EMBEDDING_BACKWARD_LARGE_ID;
            continue;
        }
        const int b = bs / S, s = bs % S;
        acc[id][threadIdx.x] += to_float(dout[((size_t)b * T_out + offset + s) * C + c]);
        mask |= 1u << id;
    }
    for (int v = 0; v < EMBEDDING_BACKWARD_MAX_VOCAB; v++)
        partial[((size_t)k * EMBEDDING_BACKWARD_MAX_VOCAB + v) * C + c] = acc[v][threadIdx.x];
    if (blockIdx.y == 0 && threadIdx.x == 0) seen[k] = mask;
}

// embedding_backward stage 2: one thread per (v, c) adds the chunks' partial sums in chunk order, then
// dtable[v, c] += scale * sum for the ids v that occur (the table may have fewer than MAX_VOCAB rows).
template <typename TS>
__global__ void embedding_backward_sum_kernel(TS* dtable, const float* partial, const uint32_t* seen, int n_chunks,
                                              int C, float scale) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= EMBEDDING_BACKWARD_MAX_VOCAB * C) return;
    const int v = i / C;
    float sum = 0.0f;
    uint32_t mask = 0;
    for (int k = 0; k < n_chunks; k++) {
        sum += partial[(size_t)k * EMBEDDING_BACKWARD_MAX_VOCAB * C + i];
        mask |= seen[k];
    }
    if ((mask >> v) & 1u) dtable[i] += scale * sum;
}

// embedding_backward, ids >= MAX_VOCAB: one thread per channel c walks the rows of the chunks flagged by
// stage 1, in order, adding each such row into dtable[id, c] as the reference does (each element of dtable
// has one writer, and the additions are in row order: deterministic). Without such ids it only reads the masks.
template <typename TS, typename T>
__global__ void embedding_backward_large_ids_kernel(TS* dtable, const T* dout, const int* ids, const uint32_t* seen,
                                                    int B, int S, int C, int T_out, int offset, int rows_per_chunk,
                                                    int n_chunks, float scale) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int k = 0; k < n_chunks; k++) {
        if (!(seen[k] & EMBEDDING_BACKWARD_LARGE_ID)) continue;
        const int end = min(B * S, (k + 1) * rows_per_chunk);
        for (int bs = k * rows_per_chunk; bs < end; bs++) {
            const int id = ids[bs], b = bs / S, s = bs % S;
            if (id < EMBEDDING_BACKWARD_MAX_VOCAB) continue;
            dtable[(size_t)id * C + c] += scale * to_float(dout[((size_t)b * T_out + offset + s) * C + c]);
        }
    }
}

// out[b * stride + k] = scale * src[b, k] for k < K, 0 for K <= k < prefix_size; one thread per element.
template <typename T>
__global__ void prefix_forward_kernel(T* out, const T* src, int B, int K, int prefix_size, size_t out_batch_stride,
                                      float scale) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * prefix_size) return;
    const size_t b = i / prefix_size;
    const int k = (int)(i % prefix_size);
    out[b * out_batch_stride + k] = from_float<T>(k < K ? scale * to_float(src[b * K + k]) : 0.0f);
}

// dsrc[b, k] = scale * dout[b * stride + k]; one thread per element.
template <typename T>
__global__ void prefix_backward_kernel(T* dsrc, const T* dout, int B, int K, size_t out_batch_stride, float scale) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * K) return;
    dsrc[i] = from_float<T>(scale * to_float(dout[i / K * out_batch_stride + i % K]));
}

inline void embedding_forward(floatX* out, const int* ids, const floatX* table, int B, int S, int C, int T_out,
                              int offset, float scale, Stream stream) {
    const size_t n = (size_t)B * S * C;
    if (n == 0) return;
    const int block_size = 256;
    embedding_forward_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(
        out, ids, table, B, S, C, T_out, offset, scale);
    cudaCheckLaunch("embedding_forward_kernel");
}

// The partial sums (MAX_CHUNKS, MAX_VOCAB, C) and the chunks' id masks: one device buffer owned by
// embedding_backward, grown when C grows and reused by every call. The calls are ordered on one stream, so a
// call never overwrites partial sums that an earlier call still reads.
inline void embedding_backward_scratch(int C, float** partial, uint32_t** seen) {
    static void* buffer = nullptr;
    static int capacity_C = 0;
    const size_t partial_bytes = (size_t)EMBEDDING_BACKWARD_MAX_CHUNKS * EMBEDDING_BACKWARD_MAX_VOCAB * C * sizeof(float);
    if (C > capacity_C) {
        if (buffer) {
            device_synchronize();     // an earlier call may still be reading the old buffer
            device_free(buffer);
        }
        buffer = device_malloc(partial_bytes + EMBEDDING_BACKWARD_MAX_CHUNKS * sizeof(uint32_t), "embedding_backward partial sums");
        capacity_C = C;
    }
    *partial = (float*)buffer;
    *seen = (uint32_t*)((char*)buffer + (size_t)EMBEDDING_BACKWARD_MAX_CHUNKS * EMBEDDING_BACKWARD_MAX_VOCAB * capacity_C * sizeof(float));
}

inline void embedding_backward(floatS* dtable, const floatX* dout, const int* ids, int B, int S, int C, int T_out,
                               int offset, float scale, Stream stream) {
    const int n_rows = B * S;
    if (n_rows == 0 || C == 0) return;
    float* partial;
    uint32_t* seen;
    embedding_backward_scratch(C, &partial, &seen);
    const int rows_per_chunk = CEIL_DIV(n_rows, EMBEDDING_BACKWARD_MAX_CHUNKS), n_chunks = CEIL_DIV(n_rows, rows_per_chunk);
    const dim3 grid(n_chunks, CEIL_DIV(C, EMBEDDING_BACKWARD_BLOCK));
    embedding_backward_partial_kernel<<<grid, EMBEDDING_BACKWARD_BLOCK, 0, stream>>>(partial, seen, dout, ids, B, S, C,
                                                                                    T_out, offset, rows_per_chunk);
    cudaCheckLaunch("embedding_backward_partial_kernel");
    const int block_size = 256;
    embedding_backward_sum_kernel<<<CEIL_DIV(EMBEDDING_BACKWARD_MAX_VOCAB * C, block_size), block_size, 0, stream>>>(
        dtable, partial, seen, n_chunks, C, scale);
    cudaCheckLaunch("embedding_backward_sum_kernel");
    embedding_backward_large_ids_kernel<<<CEIL_DIV(C, block_size), block_size, 0, stream>>>(
        dtable, dout, ids, seen, B, S, C, T_out, offset, rows_per_chunk, n_chunks, scale);
    cudaCheckLaunch("embedding_backward_large_ids_kernel");
}

inline void prefix_forward(floatX* out, const floatX* src, int B, int K, int prefix_size, size_t out_batch_stride,
                           float scale, Stream stream) {
    const size_t n = (size_t)B * prefix_size;
    if (n == 0) return;
    const int block_size = 256;
    prefix_forward_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(
        out, src, B, K, prefix_size, out_batch_stride, scale);
    cudaCheckLaunch("prefix_forward_kernel");
}

inline void prefix_backward(floatX* dsrc, const floatX* dout, int B, int K, size_t out_batch_stride, float scale,
                            Stream stream) {
    const size_t n = (size_t)B * K;
    if (n == 0) return;
    const int block_size = 256;
    prefix_backward_kernel<<<(unsigned)CEIL_DIV(n, (size_t)block_size), block_size, 0, stream>>>(
        dsrc, dout, B, K, out_batch_stride, scale);
    cudaCheckLaunch("prefix_backward_kernel");
}
#endif
