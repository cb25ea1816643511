// The pointwise part of a torch nn.GRU cell (gate order r, z, n), for the GRU context aggregator option of
// jepa_reference.md section 4. The trainer does the matmuls with matmul_forward / matmul_backward:
//   gi = x W_ih^T + b_ih  (rows of 3D: [r | z | n]),   gh = h W_hh^T + b_hh  (B, 3D),   h0 = 0
//
//   r  = sigmoid(gi_r + gh_r) ,  z = sigmoid(gi_z + gh_z) ,  n = tanh(gi_n + r * gh_n)
//   h' = (1 - z) * n + z * h                                      h_out (B, D) floatX (=)
//   gates (B, 3D) floatX keeps [r | z | n] for the backward (=)
//   gi rows are gi_stride elements apart (the trainer keeps gi of all L steps as (B, L, 3D) and passes
//   gi + l*3D with stride L*3D); h may be null, meaning h = 0 (the first step).
//
//   backward, from dh' = dh_out:
//     dn = dh' (1 - z) ,  dz = dh' (h - n) ,  dh = dh' z
//     dgi_n = dn (1 - n^2) ,  dgh_n = dgi_n r ,  dr = dgi_n gh_n
//     dgi_r = dgh_r = dr r (1 - r) ,  dgi_z = dgh_z = dz z (1 - z)
//   dgi (rows dgi_stride apart) =, dgh (B, 3D) =, dh (B, D) = (the gradient reaching h through the pointwise
//   part only: the trainer adds the matmul part dgh W_hh). With h null, h = 0 and dh is not written (may be
//   null). Elementwise: no reduction.
#pragma once
#include <math.h>
#include "../common/device.h"

// ----------------------------------------------------------------------------------------------------------
// CPU reference

template <typename T>
void gru_cell_forward_ref(T* h_out, T* gates, const T* gi, int gi_stride, const T* gh, const T* h, int B, int D) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const T* gib = gi + (size_t)b * gi_stride;
        const T* ghb = gh + (size_t)b * 3 * D;
        T* gb = gates + (size_t)b * 3 * D;
        for (int d = 0; d < D; d++) {
            const T r = T(1) / (T(1) + exp(-(gib[d] + ghb[d])));
            const T z = T(1) / (T(1) + exp(-(gib[D + d] + ghb[D + d])));
            const T n = tanh(gib[2 * D + d] + r * ghb[2 * D + d]);
            const T hp = h ? h[(size_t)b * D + d] : T(0);
            h_out[(size_t)b * D + d] = (T(1) - z) * n + z * hp;
            gb[d] = r;
            gb[D + d] = z;
            gb[2 * D + d] = n;
        }
    }
}

template <typename T>
void gru_cell_backward_ref(T* dgi, int dgi_stride, T* dgh, T* dh, const T* dh_out, const T* gates, const T* gh, const T* h,
                           int B, int D) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const T* gb = gates + (size_t)b * 3 * D;
        T* dgib = dgi + (size_t)b * dgi_stride;
        T* dghb = dgh + (size_t)b * 3 * D;
        for (int d = 0; d < D; d++) {
            const T r = gb[d], z = gb[D + d], n = gb[2 * D + d];
            const T go = dh_out[(size_t)b * D + d];
            const T hp = h ? h[(size_t)b * D + d] : T(0);
            const T dan = go * (T(1) - z) * (T(1) - n * n);
            const T dar = dan * gh[(size_t)b * 3 * D + 2 * D + d] * r * (T(1) - r);
            const T daz = go * (hp - n) * z * (T(1) - z);
            dgib[d] = dar;
            dgib[D + d] = daz;
            dgib[2 * D + d] = dan;
            dghb[d] = dar;
            dghb[D + d] = daz;
            dghb[2 * D + d] = dan * r;
            if (h) dh[(size_t)b * D + d] = go * z;
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// Launchers

#ifndef __CUDACC__
inline void gru_cell_forward(floatX* h_out, floatX* gates, const floatX* gi, int gi_stride, const floatX* gh,
                             const floatX* h, int B, int D, Stream) {
    gru_cell_forward_ref(h_out, gates, gi, gi_stride, gh, h, B, D);
}
inline void gru_cell_backward(floatX* dgi, int dgi_stride, floatX* dgh, floatX* dh, const floatX* dh_out,
                              const floatX* gates, const floatX* gh, const floatX* h, int B, int D, Stream) {
    gru_cell_backward_ref(dgi, dgi_stride, dgh, dh, dh_out, gates, gh, h, B, D);
}
#endif

// ----------------------------------------------------------------------------------------------------------
// CUDA: one thread per (b, d), consecutive d in a warp (coalesced loads of each gate block), fp32 math.
// The forward computes h' from the fp32 gates before they are rounded to floatX for storage.

#ifdef __CUDACC__
__global__ void gru_cell_forward_kernel(floatX* h_out, floatX* gates, const floatX* gi, int gi_stride, const floatX* gh,
                                        const floatX* h, int B, int D) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * D) return;
    const size_t b = idx / D, d = idx % D;
    const floatX* gib = gi + b * gi_stride;
    const floatX* ghb = gh + b * 3 * D;
    const float r = 1.0f / (1.0f + expf(-(to_float(gib[d]) + to_float(ghb[d]))));
    const float z = 1.0f / (1.0f + expf(-(to_float(gib[D + d]) + to_float(ghb[D + d]))));
    const float n = tanhf(to_float(gib[2 * D + d]) + r * to_float(ghb[2 * D + d]));
    const float hp = h ? to_float(h[idx]) : 0.0f;
    h_out[idx] = from_float<floatX>((1.0f - z) * n + z * hp);
    floatX* gb = gates + b * 3 * D;
    gb[d] = from_float<floatX>(r);
    gb[D + d] = from_float<floatX>(z);
    gb[2 * D + d] = from_float<floatX>(n);
}

__global__ void gru_cell_backward_kernel(floatX* dgi, int dgi_stride, floatX* dgh, floatX* dh, const floatX* dh_out,
                                         const floatX* gates, const floatX* gh, const floatX* h, int B, int D) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * D) return;
    const size_t b = idx / D, d = idx % D;
    const floatX* gb = gates + b * 3 * D;
    const float r = to_float(gb[d]), z = to_float(gb[D + d]), n = to_float(gb[2 * D + d]);
    const float go = to_float(dh_out[idx]);
    const float hp = h ? to_float(h[idx]) : 0.0f;
    const float dan = go * (1.0f - z) * (1.0f - n * n);
    const float dar = dan * to_float(gh[b * 3 * D + 2 * D + d]) * r * (1.0f - r);
    const float daz = go * (hp - n) * z * (1.0f - z);
    floatX* dgib = dgi + b * dgi_stride;
    floatX* dghb = dgh + b * 3 * D;
    dgib[d] = from_float<floatX>(dar);
    dgib[D + d] = from_float<floatX>(daz);
    dgib[2 * D + d] = from_float<floatX>(dan);
    dghb[d] = from_float<floatX>(dar);
    dghb[D + d] = from_float<floatX>(daz);
    dghb[2 * D + d] = from_float<floatX>(dan * r);
    if (h) dh[idx] = from_float<floatX>(go * z);
}

inline void gru_cell_forward(floatX* h_out, floatX* gates, const floatX* gi, int gi_stride, const floatX* gh,
                             const floatX* h, int B, int D, Stream stream) {
    if ((size_t)B * D == 0) return;
    const unsigned grid = (unsigned)CEIL_DIV((size_t)B * D, (size_t)256);
    gru_cell_forward_kernel<<<grid, 256, 0, stream>>>(h_out, gates, gi, gi_stride, gh, h, B, D);
    cudaCheckLaunch("gru_cell_forward_kernel");
}

inline void gru_cell_backward(floatX* dgi, int dgi_stride, floatX* dgh, floatX* dh, const floatX* dh_out,
                              const floatX* gates, const floatX* gh, const floatX* h, int B, int D, Stream stream) {
    if ((size_t)B * D == 0) return;
    const unsigned grid = (unsigned)CEIL_DIV((size_t)B * D, (size_t)256);
    gru_cell_backward_kernel<<<grid, 256, 0, stream>>>(dgi, dgi_stride, dgh, dh, dh_out, gates, gh, h, B, D);
    cudaCheckLaunch("gru_cell_backward_kernel");
}
#endif
