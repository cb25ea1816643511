// Shared by the attention labs (attention_forward.cu, attention_backward.cu): the shapes they run, the key masks
// and the bf16 tolerance.
#pragma once
#include <algorithm>
#include <vector>
#include "lab.h"

struct Shape {
    const char* op_suffix;    // appended to the lab's op name in its RESULT lines; null: validated only
    int B, Tq, Tk, NH, NKV, HD;
    bool self, masked;        // self: q, k, v read from fused [q | k | v] rows (Tk = Tq), dq, dk, dv written to one dqkv
    bool causal;              // query i sees keys j <= i + Tk - Tq
};
static const Shape shapes[] = {
    {"", 64, 916, 916, 8, 8, 64, true, false, false},                 // ARC default: 30x30 canvas + 16 puzzle tokens
    {"_cross", 768, 16, 10, 8, 8, 64, false, true, false},            // ETRM demo-set encoder: 16 queries over <= 10 demos
    {"_causal_gqa", 8, 1024, 1024, 14, 2, 64, true, false, true},     // Qwen2.5-0.5B: 14 query heads on 2 kv heads
    {nullptr, 2, 1800, 1800, 8, 8, 64, true, false, false},           // grid encoder: 2 x 900 tokens
    {nullptr, 4, 100, 100, 4, 4, 16, true, false, false},             // the CPU tests' head size
    {nullptr, 3, 33, 7, 2, 2, 16, false, true, false},                // ragged everything
    {nullptr, 2, 70, 130, 2, 2, 128, false, true, false},             // HD 128: 32-row tiles
    {nullptr, 2, 40, 40, 2, 2, 32, true, true, false},
    {nullptr, 2, 37, 37, 2, 2, 24, true, false, false},               // HD 24: SIMT only
    {nullptr, 3, 200, 200, 4, 1, 32, true, true, true},               // causal GQA, ragged, key mask
    {nullptr, 2, 70, 130, 4, 2, 128, false, true, true},              // causal, Tq < Tk, HD 128
    {nullptr, 2, 130, 70, 6, 3, 64, false, false, true},              // causal, Tq > Tk: 60 queries see no key
    {nullptr, 2, 37, 37, 4, 2, 24, true, false, true},                // causal GQA, SIMT only
};

// The (query, key) pairs a (batch, head) computes: Tq Tk, or under the causal mask sum_i min(Tk, i + Tk - Tq + 1)
// over the queries that see a key (about half of Tq Tk at Tq = Tk). The labs count FLOPs over these.
static double attention_pairs(const Shape& s) {
    if (!s.causal) return (double)s.Tq * s.Tk;
    double pairs = 0;
    for (int i = 0; i < s.Tq; i++) pairs += std::max(0, std::min(s.Tk, i + s.Tk - s.Tq + 1));
    return pairs;
}

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
