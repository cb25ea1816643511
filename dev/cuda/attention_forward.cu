// Kernel lab: attention forward (flash attention, optional key mask, causal mask and GQA), see kernels/attention.cuh.
//
//   v1  SIMT: a warp per query, exact fp32 math from shared memory (the FP32 build's kernel; the fallback)
//   v2  tensor cores (BF16 build): mma.sync m16n8k16, 16 query rows per warp
//   v3  tensor cores, 32 query rows per warp (the mainline for Tq >= 128)
// block = warps per block (at most: short sequences take fewer). FLOPs counted: 4 B NH pairs HD (S = Q K^T and
// O = P V), pairs = Tq Tk, or under the causal mask the (query, key) pairs it leaves (attention_pairs: about half;
// key-masked keys are included).
//
// The CPU reference runs on the first few samples (every sample is computed alike); the rest of the output is
// checked to be written (it is poisoned with NaN first). Each configuration is run twice and must give the same
// bits (determinism). Inputs are fresh every run (the seed is printed; pass it back to repeat a run).
//
// nvcc -O3 -std=c++17 -arch=sm_90 -I. -Xcompiler -fopenmp dev/cuda/attention_forward.cu -o attention_forward -lcublasLt -lgomp
// usage: attention_forward [seed]
#include <time.h>
#include <cmath>
#include "attention_lab.h"
#include "../../kernels/attention.cuh"

// lab_validate cannot compare -inf with -inf (inf - inf = NaN): both sides map it to a large finite value.
static std::vector<float> finite_inf(std::vector<float> v) {
    for (float& x : v) x = x == -INFINITY ? -1e30f : x;
    return v;
}

static void run_shape(const Ceilings& ceil, const Shape& s, uint64_t seed) {
    const int C = s.NH * s.HD, CK = s.NKV * s.HD, S = C + 2 * CK, q_stride = s.self ? S : C, kv_stride = s.self ? S : CK;
    const int B_ref = std::min(s.B, 4);
    printf("shape B=%d Tq=%d Tk=%d NH=%d NKV=%d HD=%d %s%s%s\n", s.B, s.Tq, s.Tk, s.NH, s.NKV, s.HD,
           s.self ? "self-attention (fused qkv)" : "cross-attention", s.masked ? ", key mask" : "", s.causal ? ", causal" : "");
    // self: qkv (B, T, C + 2 CK); cross: q (B, Tq, C), k and v (B, Tk, CK)
    const std::vector<float> q = lab_round(lab_random((size_t)s.B * s.Tq * q_stride, seed, -2.0f, 2.0f));
    const std::vector<float> k = s.self ? std::vector<float>() : lab_round(lab_random((size_t)s.B * s.Tk * CK, seed + 1, -2.0f, 2.0f));
    const std::vector<float> v = s.self ? std::vector<float>() : lab_round(lab_random((size_t)s.B * s.Tk * CK, seed + 2));
    const std::vector<uint8_t> mask = make_mask(s.B, s.Tk, seed + 3);
    floatX* d_q = lab_upload<floatX>(q);
    floatX* d_k = s.self ? d_q + C : lab_upload<floatX>(k);
    floatX* d_v = s.self ? d_q + C + CK : lab_upload<floatX>(v);
    uint8_t* d_mask = nullptr;
    if (s.masked) {
        d_mask = (uint8_t*)device_malloc(mask.size(), "mask");
        copy_to_device(d_mask, mask.data(), mask.size());
    }
    const size_t n_out = (size_t)s.B * s.Tq * C, n_lse = (size_t)s.B * s.NH * s.Tq;
    floatX* d_out = (floatX*)device_malloc(n_out * sizeof(floatX), "out");
    floatS* d_lse = (floatS*)device_malloc(n_lse * sizeof(floatS), "lse");

    // CPU reference on the first B_ref samples (a prefix of every tensor)
    const size_t n_out_ref = (size_t)B_ref * s.Tq * C, n_lse_ref = (size_t)B_ref * s.NH * s.Tq;
    std::vector<float> out_ref(n_out_ref), lse_ref(n_lse_ref);
    attention_forward_ref(out_ref.data(), lse_ref.data(), q.data(), s.self ? q.data() + C : k.data(),
                          s.self ? q.data() + C + CK : v.data(), s.masked ? mask.data() : nullptr, B_ref, s.Tq, s.Tk, s.NH,
                          s.NKV, s.HD, q_stride, kv_stride, s.causal);
    const double out_atol = atol_for(out_ref), lse_tol = std::min(LAB_RTOL, 1e-4);   // lse: fp32 statistics
    const double flops = 4.0 * s.B * s.NH * attention_pairs(s) * s.HD;

    for (int version = 1; version <= 3; version++) {
#if defined(ENABLE_FP32)
        if (version > 1) continue;                                     // tensor-core versions: bf16 only
#else
        if (version > 1 && !attention_tc_ok(s.HD, q_stride, kv_stride, {d_out, d_q, d_k, d_v})) continue;
#endif
        for (int warps : {1, 2, 4, 8}) {
            auto launch = [&] {
                const uint8_t* m = s.masked ? d_mask : nullptr;
                if (version == 1)
                    attention_forward_simt(d_out, d_lse, d_q, d_k, d_v, m, s.B, s.Tq, s.Tk, s.NH, s.NKV, s.HD, q_stride, kv_stride,
                                           warps, s.causal, 0);
#if !defined(ENABLE_FP32)
                else
                    attention_forward_tc(d_out, d_lse, d_q, d_k, d_v, m, s.B, s.Tq, s.Tk, s.NH, s.NKV, s.HD, q_stride, kv_stride,
                                         warps, version - 1, s.causal, 0);
#endif
            };
            lab_poison(d_out, n_out * sizeof(floatX));
            lab_poison(d_lse, n_lse * sizeof(floatS));
            launch();
            const std::vector<float> out = lab_download(d_out, n_out), lse = lab_download(d_lse, n_lse);
            lab_validate("attention forward out", std::vector<float>(out.begin(), out.begin() + n_out_ref), out_ref, LAB_RTOL, out_atol);
            lab_validate("attention forward lse", finite_inf(std::vector<float>(lse.begin(), lse.begin() + n_lse_ref)),
                         finite_inf(lse_ref), lse_tol, lse_tol);
            for (size_t i = 0; i < n_out; i++)
                if (!std::isfinite(out[i])) { printf("FAIL out[%zu] = %g: not written or not finite\n", i, out[i]); exit(1); }
            for (size_t i = 0; i < n_lse; i++)
                if (std::isnan(lse[i])) { printf("FAIL lse[%zu] not written\n", i); exit(1); }
            launch();
            if (lab_download(d_out, n_out) != out || finite_inf(lab_download(d_lse, n_lse)) != finite_inf(lse)) {
                printf("FAIL v%d warps=%d: a second run gave different bits\n", version, warps);
                exit(1);
            }
            if (s.op_suffix) {
                const float ms = lab_time_ms(20, launch);
                const char* names[] = {"", "v1", "v2", "v3"};
                lab_report(ceil, (std::string("attention_forward") + s.op_suffix).c_str(), names[version], warps, ms, 0, flops);
            } else {
                printf("ok v%d warps=%d\n", version, warps);
            }
        }
    }
    device_free(d_q);
    if (!s.self) { device_free(d_k); device_free(d_v); }
    if (d_mask) device_free(d_mask);
    device_free(d_out);
    device_free(d_lse);
}

int main(int argc, char** argv) {
    const Ceilings ceil = lab_begin("attention_forward");
    const uint64_t seed = argc > 1 ? strtoull(argv[1], nullptr, 10) : (uint64_t)time(nullptr);
    printf("seed %llu\n", (unsigned long long)seed);
    for (const Shape& s : shapes) run_shape(ceil, s, seed);
    printf("all validated\n");
    return 0;
}
