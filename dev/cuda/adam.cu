// Kernel lab: the Adam update (AdamATan2 and AdamW), see kernels/adam.cuh.
//
//   v1  a thread per element, scalar accesses
//   v2  the mainline kernel: grid-stride over packs of 4 elements (128-bit fp32 accesses, one params store),
//       the unaligned head and tail one by one
//
// nvcc -O3 -std=c++17 -arch=sm_90 -I. -Xcompiler -fopenmp dev/cuda/adam.cu -o adam -lcublasLt -lgomp
#include <type_traits>
#include "lab.h"
#include "../../kernels/adam.cuh"

__global__ void adam_update_v1(floatX* params, floatS* master, const floatS* grads, floatS* m, floatS* v, size_t n, float lr,
                               float beta1, float beta2, float eps, float weight_decay, float grad_scale, float bias1,
                               float bias2, bool use_atan2) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = grads[i] * grad_scale;
    const float mi = m[i] + (1.0f - beta1) * (g - m[i]), vi = v[i] + (1.0f - beta2) * (g * g - v[i]);
    const float mhat = mi / bias1, vhat = vi / bias2;
    const float u = use_atan2 ? atan2f(mhat, sqrtf(vhat)) : mhat / (sqrtf(vhat) + eps);
    const float w = (master ? master[i] : to_float(params[i])) * (1.0f - lr * weight_decay) - lr * u;
    m[i] = mi;
    v[i] = vi;
    if (master) master[i] = w;
    params[i] = from_float<floatX>(w);
}

static const int block_sizes[] = {64, 128, 256, 512, 1024};
static const float lr = 0.05f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f, grad_scale = 0.7f;
static const int t = 5;

// h uploaded `at` elements into a buffer with room for it (free with device_free(p - at))
template <typename T> T* upload_at(const std::vector<float>& h, int at) {
    std::vector<float> padded(h.size() + at, 0.0f);
    std::copy(h.begin(), h.end(), padded.begin() + at);
    return lab_upload<T>(padded) + at;
}

// One configuration: n elements, each array starting `off` elements into its buffer (params at `params_off`:
// when it differs from `off` mod 4 the arrays are not co-aligned), with or without master weights. Every version
// and block size is validated; with `timed`, also timed.
static void run_case(const Ceilings& ceil, size_t n, int off, int params_off, bool with_master, bool use_atan2,
                     bool timed, uint64_t seed) {
    const std::vector<float> master0 = lab_random(n, seed), grads = lab_random(n, seed + 1),
                             m0 = lab_random(n, seed + 2, -0.1f, 0.1f), v0 = lab_random(n, seed + 3, 0.0f, 0.01f);
    const std::vector<float> params0 = lab_round(master0);         // the compute copy of the master weights
    // the reference: master and params are the same fp32 weights
    std::vector<float> w_ref = with_master ? master0 : params0, m_ref = m0, v_ref = v0;
    adam_update_ref(w_ref.data(), (float*)nullptr, grads.data(), m_ref.data(), v_ref.data(), n, lr, beta1, beta2, eps,
                    weight_decay, grad_scale, t, use_atan2);

    // the *0 copies restore the state before every run
    floatX* d_params0 = upload_at<floatX>(params0, params_off);
    floatS *d_master0 = upload_at<floatS>(master0, off), *d_m0 = upload_at<floatS>(m0, off), *d_v0 = upload_at<floatS>(v0, off);
    floatS* d_grads = upload_at<floatS>(grads, off);
    floatX* d_params = upload_at<floatX>(params0, params_off);
    floatS *d_master = upload_at<floatS>(master0, off), *d_m = upload_at<floatS>(m0, off), *d_v = upload_at<floatS>(v0, off);
    floatS* master = with_master ? d_master : nullptr;
    printf("case n=%zu off=%d params_off=%d master=%d %s\n", n, off, params_off, with_master, use_atan2 ? "atan2" : "adamw");

    // grads, m, v (and master) read; m, v (and master), params written; params read too without master
    const double bytes = (double)n * (sizeof(floatS) * (with_master ? 7 : 5) + sizeof(floatX) * (with_master ? 1 : 2));
    const float bias1 = (float)(1.0 - pow((double)beta1, t)), bias2 = (float)(1.0 - pow((double)beta2, t));
    for (int version = 1; version <= 2; version++) {
        for (int block : block_sizes) {
            auto launch = [&] {
                if (version == 1) {
                    adam_update_v1<<<(unsigned)CEIL_DIV(n, (size_t)block), block>>>(d_params, master, d_grads, d_m, d_v, n, lr,
                                                                                  beta1, beta2, eps, weight_decay, grad_scale,
                                                                                  bias1, bias2, use_atan2);
                    cudaCheckLaunch("adam_update_v1");
                } else {
                    adam_update_launch(d_params, master, d_grads, d_m, d_v, n, lr, beta1, beta2, eps, weight_decay, grad_scale,
                                       t, use_atan2, block, 0);
                }
            };
            copy_on_device(d_m, d_m0, n * sizeof(floatS));
            copy_on_device(d_v, d_v0, n * sizeof(floatS));
            copy_on_device(d_master, d_master0, n * sizeof(floatS));
            if (with_master) lab_poison(d_params, n * sizeof(floatX));     // write-only when the master weights exist
            else copy_on_device(d_params, d_params0, n * sizeof(floatX));
            launch();
            // the fp32 state follows the same fp32 formula: tight tolerances in every build
            lab_validate("adam m", lab_download(d_m, n), m_ref, 1e-5, 1e-6);
            lab_validate("adam v", lab_download(d_v, n), v_ref, 1e-5, 1e-6);
            if (with_master) lab_validate("adam master", lab_download(d_master, n), w_ref, 1e-5, 1e-6);
            lab_validate("adam params", lab_download(d_params, n), w_ref);
            if (timed) {
                const float ms = lab_time_ms(20, launch);
                lab_report(ceil, use_atan2 ? "adam_atan2" : "adamw", version == 1 ? "v1" : "v2", block, ms, bytes, 0);
            }
        }
    }
    for (floatS* p : {d_master0, d_m0, d_v0, d_grads, d_master, d_m, d_v}) device_free(p - off);
    device_free(d_params0 - params_off);
    device_free(d_params - params_off);
}

int main() {
    const Ceilings ceil = lab_begin("adam");
    for (int use_atan2 = 1; use_atan2 >= 0; use_atan2--) {
        for (int with_master = 0; with_master < 2; with_master++) {
            for (int off = 0; off < 4; off++) run_case(ceil, 1003, off, off, with_master, use_atan2, false, 10 + off);
            run_case(ceil, 1003, 2, 1, with_master, use_atan2, false, 20);   // not co-aligned: all one by one
            run_case(ceil, 2, 3, 3, with_master, use_atan2, false, 21);      // shorter than the head
        }
        // 8M parameters, master weights as the trainer holds them (only when params are bf16)
        run_case(ceil, (size_t)8 << 20, 0, 0, !std::is_same<floatX, floatS>::value, use_atan2, true, 30);
    }
    printf("all validated\n");
    return 0;
}
