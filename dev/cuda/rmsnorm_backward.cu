// Kernel lab: RMSNorm backward (scale-free; = or +=), see kernels/rmsnorm.cuh.
//
//   v1  a thread per row, two passes straight from memory (the reference loop, one row per thread)
//   v2  the mainline kernel: a warp per row, 128-bit packs, pass 2 re-reads the row from L1/L2
//
// nvcc -O3 -std=c++17 -arch=sm_90 -I. -Xcompiler -fopenmp dev/cuda/rmsnorm_backward.cu -o rmsnorm_backward -lcublasLt -lgomp
#include "lab.h"
#include "../../kernels/rmsnorm.cuh"

__global__ void rmsnorm_backward_v1(floatX* dinp, const floatX* dout, const floatX* out, const floatS* rstd, int N, int C,
                                    bool accumulate) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const floatX* dy = dout + (size_t)n * C;
    const floatX* y = out + (size_t)n * C;
    floatX* dx = dinp + (size_t)n * C;
    float dot = 0;
    for (int c = 0; c < C; c++) dot += to_float(dy[c]) * to_float(y[c]);
    const float mean_dot = dot / C, rs = rstd[n];
    for (int c = 0; c < C; c++) {
        const float g = rs * (to_float(dy[c]) - to_float(y[c]) * mean_dot);
        dx[c] = from_float<floatX>(accumulate ? to_float(dx[c]) + g : g);
    }
}

static const int block_sizes[] = {64, 128, 256, 512, 1024};

// One shape: every version and block size is validated for = and += (and in place, dinp == dout, for =);
// with `timed`, each is also timed.
static void run_shape(const Ceilings& ceil, int N, int C, bool timed, uint64_t seed) {
    const size_t n = (size_t)N * C;
    const std::vector<float> dout = lab_round(lab_random(n, seed)), out = lab_round(lab_random(n, seed + 1)),
                             dinp0 = lab_round(lab_random(n, seed + 2)), rstd = lab_random(N, seed + 3, 0.5f, 2.0f);
    floatX* d_dout = lab_upload<floatX>(dout);
    floatX* d_out = lab_upload<floatX>(out);
    floatX* d_dinp0 = lab_upload<floatX>(dinp0);
    floatS* d_rstd = lab_upload<floatS>(rstd);
    floatX* d_dinp = (floatX*)device_malloc(n * sizeof(floatX), "dinp");
    printf("shape N=%d C=%d\n", N, C);

    for (int accumulate = 0; accumulate < 2; accumulate++) {
        std::vector<float> ref = dinp0;
        rmsnorm_backward_ref(ref.data(), dout.data(), out.data(), rstd.data(), N, C, accumulate);
        // dout, out read; dinp written (and read first when accumulating); rstd read
        const double bytes = (double)n * sizeof(floatX) * (accumulate ? 4 : 3) + (double)N * sizeof(floatS);
        const char* op = accumulate ? "rmsnorm_backward_accumulate" : "rmsnorm_backward";
        for (int version = 1; version <= 2; version++) {
            for (int block : block_sizes) {
                auto launch = [&](floatX* dinp, const floatX* dy) {
                    if (version == 1) {
                        rmsnorm_backward_v1<<<CEIL_DIV(N, block), block>>>(dinp, dy, d_out, d_rstd, N, C, accumulate);
                        cudaCheckLaunch("rmsnorm_backward_v1");
                    } else {
                        rmsnorm_backward_launch(dinp, dy, d_out, d_rstd, N, C, accumulate, block, 0);
                    }
                };
                if (accumulate) copy_on_device(d_dinp, d_dinp0, n * sizeof(floatX));
                else lab_poison(d_dinp, n * sizeof(floatX));
                launch(d_dinp, d_dout);
                lab_validate(accumulate ? "rmsnorm backward +=" : "rmsnorm backward =", lab_download(d_dinp, n), ref);
                if (!accumulate) {    // in place: dinp == dout
                    copy_on_device(d_dinp, d_dout, n * sizeof(floatX));
                    launch(d_dinp, d_dinp);
                    lab_validate("rmsnorm backward in place", lab_download(d_dinp, n), ref);
                }
                if (timed) {
                    const float ms = lab_time_ms(20, [&] { launch(d_dinp, d_dout); });
                    lab_report(ceil, op, version == 1 ? "v1" : "v2", block, ms, bytes, 0);
                }
            }
        }
    }
    device_free(d_dout); device_free(d_out); device_free(d_dinp0); device_free(d_rstd); device_free(d_dinp);
}

int main() {
    const Ceilings ceil = lab_begin("rmsnorm_backward");
    run_shape(ceil, 7, 37, false, 1);          // odd C: the scalar path
    run_shape(ceil, 33, 64, false, 2);         // a few packs per row, idle lanes
    run_shape(ceil, 64 * 916, 512, true, 3);   // ARC default: batch 64, 916 positions, hidden 512
    printf("all validated\n");
    return 0;
}
