// Random numbers that are the same on every backend and every number of processes.
//
// Two kinds:
//  - Counter-based: hash_uniform(seed, a, b, c) is a pure function of its arguments (a splitmix64-style
//    mixer). Everything random during training is drawn this way, keyed by (seed, step, global sample
//    slot, purpose): halting exploration, the variational latents' noise, data shuffling and augmentation.
//    The CPU and GPU builds, and any number of ranks, therefore draw exactly the same numbers, and a resumed
//    run needs no generator state beyond the step counter.
//  - Sequential: Rng, a 64-bit state stepped by splitmix64, for parameter initialisation on the host.
#pragma once
#include <math.h>
#include <stdint.h>
#include "device.h"

HOST_DEVICE inline uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

HOST_DEVICE inline uint64_t hash_u64(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
    return mix64(mix64(mix64(mix64(seed) ^ a) ^ b) ^ c);
}

// A hash of a byte string (e.g. comparing the configuration of every rank).
inline uint64_t hash_bytes(const void* data, size_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n; i++) h = mix64(h ^ ((const uint8_t*)data)[i]);
    return h;
}

// Uniform in [0, 1) with 24 random bits (exactly representable in float).
HOST_DEVICE inline float hash_uniform(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
    return (float)(hash_u64(seed, a, b, c) >> 40) * (1.0f / 16777216.0f);
}

// Uniform integer in [0, n).
HOST_DEVICE inline uint32_t hash_below(uint32_t n, uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
    return (uint32_t)((hash_u64(seed, a, b, c) >> 32) * (uint64_t)n >> 32);
}

// Standard normal by Box-Muller from two counter-based uniforms (computed in double so that the CPU and GPU
// builds agree to the last float bit).
HOST_DEVICE inline float hash_normal(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
    uint64_t h = hash_u64(seed, a, b, c);
    double u1 = ((double)(h >> 40) + 1.0) * (1.0 / 16777217.0);   // (0, 1]
    double u2 = (double)(mix64(h) >> 40) * (1.0 / 16777216.0);     // [0, 1)
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

// Sequential generator for host-side initialisation.
typedef struct { uint64_t state; } Rng;

inline Rng rng_make(uint64_t seed) { Rng r; r.state = mix64(seed ^ 0x5DEECE66Dull); return r; }
inline uint64_t rng_u64(Rng* r) { r->state += 0x9E3779B97F4A7C15ull; return mix64(r->state); }
inline double rng_uniform(Rng* r) { return (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }
inline double rng_normal(Rng* r) {
    double u1 = 1.0 - rng_uniform(r), u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

// JAX-style truncated normal: a standard normal cut at +-2, rescaled so the result has standard deviation
// `std` (the truncated normal's own std is ~0.8796). This is the initialiser of every upstream linear layer.
inline double rng_trunc_normal(Rng* r, double std) {
    const double a = 2.0;
    const double mass = erf(a / sqrt(2.0));                          // P(|x| < 2)
    const double pdf_a = exp(-0.5 * a * a) / sqrt(2.0 * M_PI);
    const double trunc_std = sqrt(1.0 - 2.0 * a * pdf_a / mass);
    double x;
    do { x = rng_normal(r); } while (x < -a || x > a);
    return x * std / trunc_std;
}
