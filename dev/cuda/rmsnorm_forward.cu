// Kernel lab: RMSNorm forward (scale-free with an optional fused residual add; and with a learned weight, Qwen2's),
// see kernels/rmsnorm.cuh.
//
//   v1  a thread per row, two passes straight from memory (the reference loop, one row per thread)
//   v2  the mainline kernel: a warp per row, 128-bit packs, pass 2 re-reads the row from L1/L2
//
// nvcc -O3 -std=c++17 -arch=sm_90 -I. -Xcompiler -fopenmp dev/cuda/rmsnorm_forward.cu -o rmsnorm_forward -lcublasLt -lgomp
#include "lab.h"
#include "../../kernels/rmsnorm.cuh"

__global__ void rmsnorm_forward_v1(floatX* out, floatS* rstd, const floatX* inp, const floatX* residual,
                                   const floatX* weight, int N, int C, float eps) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const floatX* x = inp + (size_t)n * C;
    const floatX* r = residual ? residual + (size_t)n * C : nullptr;
    float sum_sq = 0;
    for (int c = 0; c < C; c++) {
        const float s = to_float(x[c]) + (r ? to_float(r[c]) : 0.0f);
        sum_sq += s * s;
    }
    const float rs = 1.0f / sqrtf(sum_sq / C + eps);
    for (int c = 0; c < C; c++) {
        const float s = to_float(x[c]) + (r ? to_float(r[c]) : 0.0f);
        const float y = weight ? to_float(from_float<floatX>(s * rs)) * to_float(weight[c]) : s * rs;
        out[(size_t)n * C + c] = from_float<floatX>(y);
    }
    rstd[n] = rs;
}

static const int block_sizes[] = {64, 128, 256, 512, 1024};

// One shape: every version and block size is validated (scale-free with and without the residual, and weighted;
// each also in place: out == inp); with `timed`, each is also timed.
static void run_shape(const Ceilings& ceil, int N, int C, bool timed, uint64_t seed) {
    const float eps = 1e-5f;
    const size_t n = (size_t)N * C;
    const std::vector<float> x = lab_round(lab_random(n, seed)), r = lab_round(lab_random(n, seed + 1)),
                             w = lab_round(lab_random(C, seed + 2, 0.5f, 1.5f));
    floatX* d_x = lab_upload<floatX>(x);
    floatX* d_r = lab_upload<floatX>(r);
    floatX* d_w = lab_upload<floatX>(w);
    floatX* d_out = (floatX*)device_malloc(n * sizeof(floatX), "out");
    floatS* d_rstd = (floatS*)device_malloc(N * sizeof(floatS), "rstd");
    printf("shape N=%d C=%d\n", N, C);

    for (int variant = 0; variant < 3; variant++) {     // 0: scale-free, 1: + residual, 2: weighted
        const bool with_res = variant == 1, weighted = variant == 2;
        const floatX* res = with_res ? d_r : nullptr;
        const floatX* weight = weighted ? d_w : nullptr;
        std::vector<float> out_ref(n), rstd_ref(N);
        if (weighted) rmsnorm_weighted_forward_ref(out_ref.data(), rstd_ref.data(), x.data(), w.data(), N, C, eps);
        else rmsnorm_forward_ref(out_ref.data(), rstd_ref.data(), x.data(), with_res ? r.data() : nullptr, N, C, eps);
        // inp (and residual) read, out written, the weight read once per block (counted once), rstd written
        const double bytes = (double)n * sizeof(floatX) * (with_res ? 3 : 2) + (weighted ? (double)C * sizeof(floatX) : 0.0) +
                             (double)N * sizeof(floatS);
        const char* op = weighted ? "rmsnorm_weighted_forward" : with_res ? "rmsnorm_forward_residual" : "rmsnorm_forward";
        for (int version = 1; version <= 2; version++) {
            for (int block : block_sizes) {
                auto launch = [&](floatX* out, const floatX* inp) {
                    if (version == 1) {
                        rmsnorm_forward_v1<<<CEIL_DIV(N, block), block>>>(out, d_rstd, inp, res, weight, N, C, eps);
                        cudaCheckLaunch("rmsnorm_forward_v1");
                    } else {
                        rmsnorm_forward_launch(out, d_rstd, inp, res, weight, N, C, eps, block, 0);
                    }
                };
                lab_poison(d_out, n * sizeof(floatX));
                lab_poison(d_rstd, N * sizeof(floatS));
                launch(d_out, d_x);
                lab_validate("rmsnorm forward out", lab_download(d_out, n), out_ref);
                lab_validate("rmsnorm forward rstd", lab_download(d_rstd, N), rstd_ref);
                // in place: out == inp
                copy_on_device(d_out, d_x, n * sizeof(floatX));
                launch(d_out, d_out);
                lab_validate("rmsnorm forward in place", lab_download(d_out, n), out_ref);
                if (timed) {
                    const float ms = lab_time_ms(20, [&] { launch(d_out, d_x); });
                    lab_report(ceil, op, version == 1 ? "v1" : "v2", block, ms, bytes, 0);
                }
            }
        }
    }
    device_free(d_x); device_free(d_r); device_free(d_w); device_free(d_out); device_free(d_rstd);
}

int main() {
    const Ceilings ceil = lab_begin("rmsnorm_forward");
    run_shape(ceil, 7, 37, false, 1);          // odd C: the scalar path
    run_shape(ceil, 33, 64, false, 2);         // a few packs per row, idle lanes
    run_shape(ceil, 64 * 916, 512, true, 3);   // ARC default: batch 64, 916 positions, hidden 512
    run_shape(ceil, 16 * 1024, 896, true, 4);  // Qwen2.5-0.5B width: 16 sequences of 1024 tokens
    printf("all validated\n");
    return 0;
}
