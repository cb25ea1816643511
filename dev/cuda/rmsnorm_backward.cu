// Kernel lab: RMSNorm backward (scale-free, and with a learned weight: dinp = or +=, dweight +=), see
// kernels/rmsnorm.cuh.
//
//   v1  a thread per row, two passes straight from memory (the reference loop, one row per thread); with a weight,
//       then a thread per column summing dweight over all N rows
//   v2  the mainline: a warp per row, 128-bit packs, pass 2 re-reads the row from L1/L2; with a weight, dweight
//       first by fixed chunks of rows (kernels/norm_param_grad.cuh), which reads dout and inp a second time
//
// nvcc -O3 -std=c++17 -arch=sm_90 -I. -Xcompiler -fopenmp dev/cuda/rmsnorm_backward.cu -o rmsnorm_backward -lcublasLt -lgomp
#include "lab.h"
#include "../../kernels/rmsnorm.cuh"

// x: out (scale-free) or inp (weighted, xhat = inp * rstd), as rmsnorm_backward_kernel
__global__ void rmsnorm_backward_v1(floatX* dinp, const floatX* dout, const floatX* x, const floatX* weight,
                                    const floatS* rstd, int N, int C, bool accumulate) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const floatX* dy = dout + (size_t)n * C;
    const floatX* xn = x + (size_t)n * C;
    floatX* dx = dinp + (size_t)n * C;
    const float rs = rstd[n];
    auto g_at = [&](int c) { return to_float(dy[c]) * (weight ? to_float(weight[c]) : 1.0f); };
    auto xhat_at = [&](int c) { return to_float(xn[c]) * (weight ? rs : 1.0f); };
    float dot = 0;
    for (int c = 0; c < C; c++) dot += g_at(c) * xhat_at(c);
    const float mean_dot = dot / C;
    for (int c = 0; c < C; c++) {
        const float g = rs * (g_at(c) - xhat_at(c) * mean_dot);
        dx[c] = from_float<floatX>(accumulate ? to_float(dx[c]) + g : g);
    }
}

__global__ void rmsnorm_dweight_v1(floatS* dweight, const floatX* dout, const floatX* inp, const floatS* rstd, int N, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float dw = 0;
    for (int n = 0; n < N; n++) dw += to_float(dout[(size_t)n * C + c]) * to_float(inp[(size_t)n * C + c]) * (float)rstd[n];
    dweight[c] += dw;
}

static const int block_sizes[] = {64, 128, 256, 512, 1024};

// One shape: every version and block size is validated for = and += (and in place, dinp == dout, for =), scale-free
// and weighted (dweight adds onto random values); with `timed`, each is also timed.
static void run_shape(const Ceilings& ceil, int N, int C, bool timed, uint64_t seed) {
    const size_t n = (size_t)N * C;
    const std::vector<float> dout = lab_round(lab_random(n, seed)), out = lab_round(lab_random(n, seed + 1)),
                             dinp0 = lab_round(lab_random(n, seed + 2)), rstd = lab_random(N, seed + 3, 0.5f, 2.0f),
                             w = lab_round(lab_random(C, seed + 4, 0.5f, 1.5f)), dw0 = lab_random(C, seed + 5);
    floatX* d_dout = lab_upload<floatX>(dout);
    floatX* d_out = lab_upload<floatX>(out);       // the scale-free op's out, the weighted op's inp
    floatX* d_dinp0 = lab_upload<floatX>(dinp0);
    floatX* d_w = lab_upload<floatX>(w);
    floatS* d_rstd = lab_upload<floatS>(rstd);
    floatS* d_dw0 = lab_upload<floatS>(dw0);
    floatS* d_dw = (floatS*)device_malloc(C * sizeof(floatS), "dweight");
    floatX* d_dinp = (floatX*)device_malloc(n * sizeof(floatX), "dinp");
    // dweight: fp32 sums of N products (|.| <= 2) against the reference's double sums, in both builds
    const double dw_atol = 1e-6 * N;
    printf("shape N=%d C=%d\n", N, C);

    for (int weighted = 0; weighted < 2; weighted++) {
        const floatX* weight = weighted ? d_w : nullptr;
        for (int accumulate = 0; accumulate < 2; accumulate++) {
            std::vector<float> ref = dinp0, dw_ref = dw0;
            if (weighted)
                rmsnorm_weighted_backward_ref(ref.data(), dw_ref.data(), dout.data(), out.data(), w.data(), rstd.data(), N, C,
                                              accumulate);
            else rmsnorm_backward_ref(ref.data(), dout.data(), out.data(), rstd.data(), N, C, accumulate);
            // dout, out (inp) read; dinp written (and read first when accumulating); rstd read; with a weight, the
            // weight read and dweight read and written: each tensor once (the v2 dweight pass reads dout and inp again)
            const double bytes = (double)n * sizeof(floatX) * (accumulate ? 4 : 3) + (double)N * sizeof(floatS) +
                                 (weighted ? (double)C * (sizeof(floatX) + 2 * sizeof(floatS)) : 0.0);
            const char* op = weighted ? (accumulate ? "rmsnorm_weighted_backward_accumulate" : "rmsnorm_weighted_backward")
                                      : (accumulate ? "rmsnorm_backward_accumulate" : "rmsnorm_backward");
            for (int version = 1; version <= 2; version++) {
                for (int block : block_sizes) {
                    auto launch = [&](floatX* dinp, const floatX* dy) {
                        if (version == 1) {
                            if (weighted) {
                                rmsnorm_dweight_v1<<<CEIL_DIV(C, block), block>>>(d_dw, dy, d_out, d_rstd, N, C);
                                cudaCheckLaunch("rmsnorm_dweight_v1");
                            }
                            rmsnorm_backward_v1<<<CEIL_DIV(N, block), block>>>(dinp, dy, d_out, weight, d_rstd, N, C, accumulate);
                            cudaCheckLaunch("rmsnorm_backward_v1");
                        } else {
                            rmsnorm_backward_launch(dinp, weighted ? d_dw : nullptr, dy, d_out, weight, d_rstd, N, C,
                                                    accumulate, block, 0);
                        }
                    };
                    const char* what = accumulate ? "rmsnorm backward +=" : "rmsnorm backward =";
                    if (accumulate) copy_on_device(d_dinp, d_dinp0, n * sizeof(floatX));
                    else lab_poison(d_dinp, n * sizeof(floatX));
                    copy_on_device(d_dw, d_dw0, C * sizeof(floatS));
                    launch(d_dinp, d_dout);
                    lab_validate(what, lab_download(d_dinp, n), ref);
                    if (weighted) lab_validate("rmsnorm backward dweight +=", lab_download(d_dw, C), dw_ref, 1e-4, dw_atol);
                    if (!accumulate) {    // in place: dinp == dout
                        copy_on_device(d_dinp, d_dout, n * sizeof(floatX));
                        copy_on_device(d_dw, d_dw0, C * sizeof(floatS));
                        launch(d_dinp, d_dinp);
                        lab_validate("rmsnorm backward in place", lab_download(d_dinp, n), ref);
                        if (weighted) lab_validate("rmsnorm backward in place dweight", lab_download(d_dw, C), dw_ref, 1e-4, dw_atol);
                    }
                    if (timed) {
                        const float ms = lab_time_ms(20, [&] { launch(d_dinp, d_dout); });
                        lab_report(ceil, op, version == 1 ? "v1" : "v2", block, ms, bytes, 0);
                    }
                }
            }
        }
    }
    device_free(d_dout); device_free(d_out); device_free(d_dinp0); device_free(d_w); device_free(d_rstd);
    device_free(d_dw0); device_free(d_dw); device_free(d_dinp);
}

int main() {
    const Ceilings ceil = lab_begin("rmsnorm_backward");
    run_shape(ceil, 7, 37, false, 1);          // odd C: the scalar path
    run_shape(ceil, 33, 64, false, 2);         // a few packs per row, idle lanes
    run_shape(ceil, 64 * 916, 512, true, 3);   // ARC default: batch 64, 916 positions, hidden 512
    run_shape(ceil, 16 * 1024, 896, true, 4);  // Qwen2.5-0.5B width: 16 sequences of 1024 tokens
    printf("all validated\n");
    return 0;
}
