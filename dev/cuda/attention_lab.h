// Shared by the attention labs (attention_forward.cu, attention_backward.cu): the shapes they run, the key masks
// and the bf16 tolerance.
#pragma once
#include <algorithm>
#include <vector>
#include "lab.h"

struct Shape {
    const char* op_suffix;    // appended to the lab's op name in its RESULT lines; null: validated only
    int B, Tq, Tk, NH, HD;
    bool self, masked;        // self: q, k, v read from fused qkv rows (Tk = Tq), dq, dk, dv written to one dqkv
};
static const Shape shapes[] = {
    {"", 64, 916, 916, 8, 64, true, false},                  // ARC default: 30x30 canvas + 16 puzzle tokens
    {"_cross", 768, 16, 10, 8, 64, false, true},             // ETRM demo-set encoder: 16 queries over <= 10 demos
    {nullptr, 2, 1800, 1800, 8, 64, true, false},            // grid encoder: 2 x 900 tokens
    {nullptr, 4, 100, 100, 4, 16, true, false},              // the CPU tests' head size
    {nullptr, 3, 33, 7, 2, 16, false, true},                 // ragged everything
    {nullptr, 2, 70, 130, 2, 128, false, true},              // HD 128: 32-row tiles
    {nullptr, 2, 40, 40, 2, 32, true, true},
    {nullptr, 2, 37, 37, 2, 24, true, false},                // HD 24: SIMT only
};

// Key masks: sample b % 4 == 1 has no valid key, b % 4 == 2 only its last one, the others 70% at random.
static std::vector<uint8_t> make_mask(int B, int Tk, uint64_t seed) {
    std::vector<uint8_t> m((size_t)B * Tk);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < Tk; j++)
            m[(size_t)b * Tk + j] = b % 4 == 1 ? 0 : b % 4 == 2 ? j == Tk - 1 : hash_uniform(seed, b, j, 0x3a5) < 0.7f;
    return m;
}

// Absolute tolerance: the lab's in the FP32 build; in bf16 (P, dS and the outputs rounded) 1% of the largest
// reference value.
static double atol_for(const std::vector<float>& ref) {
#if defined(ENABLE_FP32)
    (void)ref;
    return LAB_ATOL;
#else
    double m = 0;
    for (float x : ref) m = std::max(m, (double)fabsf(x));
    return 1e-2 * m;
#endif
}
