// Kernel lab: attention backward (flash attention, optional key mask, causal mask and GQA), see kernels/attention.cuh.
//
//   v1  SIMT: D = dout . out, then a warp per key of a kv head (dk, dv) and a warp per query (dq), exact fp32 math
//   v2  tensor cores (BF16 build): D, then 16 keys per warp (dk, dv) and 16 queries per warp (dq), mma.sync
//   v3  tensor cores, 32 keys / queries per warp (HD <= 64; HD = 128 runs v2's kernels)
// block = warps per block (at most: short sequences take fewer). Every launch is the whole backward (the D kernel
// included).
// FLOPs counted as FlashAttention-2 counts them, 2.5x the forward's 4 B NH pairs HD (five Tq x Tk x HD
// products; pairs = Tq Tk, about half of that under the causal mask, see attention_pairs); the kernels do seven
// (S and dP are computed twice, once per parallel direction), so the rates are comparable with FlashAttention /
// PyTorch figures, not a count of the work done.
//
// out and lse come from the mainline GPU forward; the CPU reference backward takes the same out and lse and
// runs on the first few samples (every sample is computed alike); the rest of dq, dk, dv is checked to be
// written (poisoned with NaN first). Each configuration is run twice and must give the same bits.
//
// nvcc -O3 -std=c++17 -arch=sm_90 -I. -Xcompiler -fopenmp dev/cuda/attention_backward.cu -o attention_backward -lcublasLt -lgomp
// usage: attention_backward [seed]
#include <time.h>
#include <cmath>
#include "attention_lab.h"
#include "../../kernels/attention.cuh"

// Validates the first ref.size() elements against the reference; the rest must be written (finite).
static void check(const char* what, const std::vector<float>& gpu, const std::vector<float>& ref) {
    lab_validate(what, std::vector<float>(gpu.begin(), gpu.begin() + ref.size()), ref, LAB_RTOL, atol_for(ref));
    for (size_t i = 0; i < gpu.size(); i++)
        if (!std::isfinite(gpu[i])) { printf("FAIL %s[%zu] = %g: not written or not finite\n", what, i, gpu[i]); exit(1); }
}

static void run_shape(const Ceilings& ceil, const Shape& s, uint64_t seed) {
    const int C = s.NH * s.HD, CK = s.NKV * s.HD, S = C + 2 * CK, q_stride = s.self ? S : C, kv_stride = s.self ? S : CK;
    const int B_ref = std::min(s.B, 4);
    printf("shape B=%d Tq=%d Tk=%d NH=%d NKV=%d HD=%d %s%s%s\n", s.B, s.Tq, s.Tk, s.NH, s.NKV, s.HD,
           s.self ? "self-attention (fused qkv)" : "cross-attention", s.masked ? ", key mask" : "", s.causal ? ", causal" : "");
    // self: qkv and dqkv (B, T, C + 2 CK); cross: q, dq (B, Tq, C), k, v, dk, dv (B, Tk, CK)
    const size_t n_q = (size_t)s.B * s.Tq * q_stride, n_kv = s.self ? 0 : (size_t)s.B * s.Tk * CK, n_out = (size_t)s.B * s.Tq * C;
    const std::vector<float> q = lab_round(lab_random(n_q, seed, -2.0f, 2.0f));
    const std::vector<float> k = lab_round(lab_random(n_kv, seed + 1, -2.0f, 2.0f)), v = lab_round(lab_random(n_kv, seed + 2));
    const std::vector<float> dout = lab_round(lab_random(n_out, seed + 4));
    const std::vector<uint8_t> mask = make_mask(s.B, s.Tk, seed + 3);
    floatX* d_q = lab_upload<floatX>(q);
    floatX* d_k = s.self ? d_q + C : lab_upload<floatX>(k);
    floatX* d_v = s.self ? d_q + C + CK : lab_upload<floatX>(v);
    floatX* d_dout = lab_upload<floatX>(dout);
    uint8_t* d_mask = nullptr;
    if (s.masked) {
        d_mask = (uint8_t*)device_malloc(mask.size(), "mask");
        copy_to_device(d_mask, mask.data(), mask.size());
    }
    const uint8_t* m = s.masked ? d_mask : nullptr;
    const size_t n_lse = (size_t)s.B * s.NH * s.Tq;
    floatX* d_out = (floatX*)device_malloc(n_out * sizeof(floatX), "out");
    floatS* d_lse = (floatS*)device_malloc(n_lse * sizeof(floatS), "lse");
    attention_forward(d_out, d_lse, d_q, d_k, d_v, m, s.B, s.Tq, s.Tk, s.NH, s.NKV, s.HD, q_stride, kv_stride, s.causal, 0);
    const std::vector<float> out = lab_download(d_out, n_out), lse = lab_download(d_lse, n_lse);
    floatX* d_dq = (floatX*)device_malloc(n_q * sizeof(floatX), "dq");
    floatX* d_dk = s.self ? d_dq + C : (floatX*)device_malloc(n_kv * sizeof(floatX), "dk");
    floatX* d_dv = s.self ? d_dq + C + CK : (floatX*)device_malloc(n_kv * sizeof(floatX), "dv");

    // CPU reference on the first B_ref samples (a prefix of every tensor)
    std::vector<float> dq_ref((size_t)B_ref * s.Tq * q_stride), dk_ref(s.self ? 0 : (size_t)B_ref * s.Tk * CK), dv_ref(dk_ref.size());
    attention_backward_ref(dq_ref.data(), s.self ? dq_ref.data() + C : dk_ref.data(), s.self ? dq_ref.data() + C + CK : dv_ref.data(),
                           dout.data(), out.data(), lse.data(), q.data(), s.self ? q.data() + C : k.data(),
                           s.self ? q.data() + C + CK : v.data(), s.masked ? mask.data() : nullptr, B_ref, s.Tq, s.Tk, s.NH,
                           s.NKV, s.HD, q_stride, kv_stride, s.causal);
    const double flops = 2.5 * 4.0 * s.B * s.NH * attention_pairs(s) * s.HD;

    for (int version = 1; version <= 3; version++) {
#if defined(ENABLE_FP32)
        if (version > 1) continue;                                     // tensor-core versions: bf16 only
#else
        if (version > 1 && !attention_tc_ok(s.HD, q_stride, kv_stride, {d_dq, d_dk, d_dv, d_dout, d_q, d_k, d_v})) continue;
#endif
        for (int warps : {1, 2, 4, 8}) {
            auto launch = [&] {
                if (version == 1)
                    attention_backward_simt(d_dq, d_dk, d_dv, d_dout, d_out, d_lse, d_q, d_k, d_v, m, s.B, s.Tq, s.Tk, s.NH,
                                            s.NKV, s.HD, q_stride, kv_stride, warps, s.causal, 0);
#if !defined(ENABLE_FP32)
                else
                    attention_backward_tc(d_dq, d_dk, d_dv, d_dout, d_out, d_lse, d_q, d_k, d_v, m, s.B, s.Tq, s.Tk, s.NH,
                                          s.NKV, s.HD, q_stride, kv_stride, warps, version - 1, s.causal, 0);
#endif
            };
            lab_poison(d_dq, n_q * sizeof(floatX));
            if (!s.self) {
                lab_poison(d_dk, n_kv * sizeof(floatX));
                lab_poison(d_dv, n_kv * sizeof(floatX));
            }
            launch();
            auto download = [](const floatX* p, size_t n) { return n ? lab_download(p, n) : std::vector<float>(); };
            const std::vector<float> dq = download(d_dq, n_q), dk = download(d_dk, n_kv), dv = download(d_dv, n_kv);
            check(s.self ? "attention backward dqkv" : "attention backward dq", dq, dq_ref);
            if (!s.self) {
                check("attention backward dk", dk, dk_ref);
                check("attention backward dv", dv, dv_ref);
            }
            launch();
            if (download(d_dq, n_q) != dq || download(d_dk, n_kv) != dk || download(d_dv, n_kv) != dv) {
                printf("FAIL v%d warps=%d: a second run gave different bits\n", version, warps);
                exit(1);
            }
            if (s.op_suffix) {
                const float ms = lab_time_ms(20, launch);
                const char* names[] = {"", "v1", "v2", "v3"};
                lab_report(ceil, (std::string("attention_backward") + s.op_suffix).c_str(), names[version], warps, ms, 0, flops);
            } else {
                printf("ok v%d warps=%d\n", version, warps);
            }
        }
    }
    device_free(d_q);
    device_free(d_dq);
    if (!s.self) { device_free(d_k); device_free(d_v); device_free(d_dk); device_free(d_dv); }
    if (d_mask) device_free(d_mask);
    device_free(d_dout);
    device_free(d_out);
    device_free(d_lse);
}

int main(int argc, char** argv) {
    const Ceilings ceil = lab_begin("attention_backward");
    const uint64_t seed = argc > 1 ? strtoull(argv[1], nullptr, 10) : (uint64_t)time(nullptr);
    printf("seed %llu\n", (unsigned long long)seed);
    for (const Shape& s : shapes) run_shape(ceil, s, seed);
    printf("all validated\n");
    return 0;
}
