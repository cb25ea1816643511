// ACT (adaptive computation time): the carry of the recursive decoder across ACT steps.
//
// Every batch slot carries (z_H, z_L) (T, D), a step counter and a halted flag from one training step to the
// next. Each step:
//   act_reset   slots halted at the previous step restart on their new sample:
//               z_H[b] = H_init, z_L[b] = L_init (one D-vector broadcast to all T positions), steps[b] = 0
//   ...one ACT step of the model...
//   act_halt    steps += 1 ;  halted = steps >= max_steps
//               training (and max_steps > 1) only: halted |= q_halt > 0 ; then exploration: with probability
//               explore_prob a slot must run at least U{2..max_steps} steps: halted &= steps >= min_steps
//               (min_steps = 0 for a slot that does not explore). Evaluation always runs max_steps steps.
// q (B, 2) = (q_halt, q_continue) has rows ld >= 2 apart (the trainer pads the q head to a 16-byte output width).
// The random numbers are hash(seed, global slot, purpose), global slot = slot_offset + b * slot_stride, so
// the decisions are identical on every backend and for any number of ranks.
#pragma once
#include <algorithm>
#include "../common/device.h"
#include "../common/rand.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void act_reset_ref(T* z_H, T* z_L, const T* H_init, const T* L_init, int* steps, const uint8_t* halted, int B, int T_len, int D) {
    for (int b = 0; b < B; b++) {
        if (!halted[b]) continue;
        steps[b] = 0;
        for (int t = 0; t < T_len; t++)
            for (int d = 0; d < D; d++) {
                z_H[((size_t)b * T_len + t) * D + d] = H_init[d];
                z_L[((size_t)b * T_len + t) * D + d] = L_init[d];
            }
    }
}

template <typename T>
void act_halt_ref(uint8_t* halted, int* steps, const T* q, int ld, int B, int max_steps, float explore_prob, bool training,
                  uint64_t seed, int slot_offset, int slot_stride) {
    for (int b = 0; b < B; b++) {
        steps[b] += 1;
        bool halt = steps[b] >= max_steps;
        if (training && max_steps > 1) {
            halt = halt || (double)q[(size_t)b * ld] > 0;
            const uint64_t slot = (uint64_t)(slot_offset + b * slot_stride);
            const bool explore = hash_uniform(seed, slot, 0) < explore_prob;
            const int min_steps = explore ? 2 + (int)hash_below((uint32_t)(max_steps - 1), seed, slot, 1) : 0;
            halt = halt && steps[b] >= min_steps;
        }
        halted[b] = halt;
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void act_reset(floatX* z_H, floatX* z_L, const floatX* H_init, const floatX* L_init, int* steps,
                      const uint8_t* halted, int B, int T, int D, Stream) {
    act_reset_ref(z_H, z_L, H_init, L_init, steps, halted, B, T, D);
}
inline void act_halt(uint8_t* halted, int* steps, const floatX* q, int ld, int B, int max_steps, float explore_prob,
                     bool training, uint64_t seed, int slot_offset, int slot_stride, Stream) {
    act_halt_ref(halted, steps, q, ld, B, max_steps, explore_prob, training, seed, slot_offset, slot_stride);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA

#ifdef __CUDACC__
// Block (position tile, b): a slot that did not halt returns at once; otherwise its threads write z_H[b], z_L[b]
// at positions t * D + d = blockIdx.x * blockDim.x + threadIdx.x (of T_len * D).
template <typename T>
__global__ void act_reset_kernel(T* z_H, T* z_L, const T* H_init, const T* L_init, int* steps, const uint8_t* halted,
                                 int T_len, int D) {
    const int b = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
    if (!halted[b]) return;
    if (i == 0) steps[b] = 0;
    if (i >= T_len * D) return;
    const size_t j = (size_t)b * T_len * D + i;
    z_H[j] = H_init[i % D];
    z_L[j] = L_init[i % D];
}

// One thread per slot; the same decisions as the reference (the same hash functions, the same comparisons).
template <typename T>
__global__ void act_halt_kernel(uint8_t* halted, int* steps, const T* q, int ld, int B, int max_steps, float explore_prob,
                                bool training, uint64_t seed, int slot_offset, int slot_stride) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const int step = steps[b] + 1;
    steps[b] = step;
    bool halt = step >= max_steps;
    if (training && max_steps > 1) {
        halt = halt || (double)to_float(q[(size_t)b * ld]) > 0;
        const uint64_t slot = (uint64_t)(slot_offset + b * slot_stride);
        const bool explore = hash_uniform(seed, slot, 0) < explore_prob;
        const int min_steps = explore ? 2 + (int)hash_below((uint32_t)(max_steps - 1), seed, slot, 1) : 0;
        halt = halt && step >= min_steps;
    }
    halted[b] = halt;
}

inline void act_reset(floatX* z_H, floatX* z_L, const floatX* H_init, const floatX* L_init, int* steps,
                      const uint8_t* halted, int B, int T, int D, Stream stream) {
    if (B == 0) return;
    const int block_size = 256;
    const dim3 grid(CEIL_DIV(std::max(T * D, 1), block_size), B);    // at least one block: it resets steps
    act_reset_kernel<<<grid, block_size, 0, stream>>>(z_H, z_L, H_init, L_init, steps, halted, T, D);
    cudaCheckLaunch("act_reset_kernel");
}

inline void act_halt(uint8_t* halted, int* steps, const floatX* q, int ld, int B, int max_steps, float explore_prob,
                     bool training, uint64_t seed, int slot_offset, int slot_stride, Stream stream) {
    if (B == 0) return;
    const int block_size = 256;
    act_halt_kernel<<<CEIL_DIV(B, block_size), block_size, 0, stream>>>(halted, steps, q, ld, B, max_steps, explore_prob,
                                                                       training, seed, slot_offset, slot_stride);
    cudaCheckLaunch("act_halt_kernel");
}
#endif
