// Kernel lab: SwiGLU forward and backward on the fused gate_up projection, see kernels/swiglu.cuh.
//
//   v1  a thread per output element, scalar loads
//   v2  the mainline kernels: a thread per 128-bit pack of outputs (8 bf16 or 4 floats), streaming loads
//
// nvcc -O3 -std=c++17 -arch=sm_90 -I. -Xcompiler -fopenmp dev/cuda/swiglu.cu -o swiglu -lcublasLt -lgomp
#include "lab.h"
#include "../../kernels/swiglu.cuh"

__global__ void swiglu_forward_v1(floatX* out, const floatX* gate_up, int N, int I) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * I) return;
    const size_t n = idx / I, i = idx % I;
    const float g = to_float(gate_up[n * 2 * I + i]), u = to_float(gate_up[n * 2 * I + I + i]);
    out[idx] = from_float<floatX>(g / (1.0f + expf(-g)) * u);
}

__global__ void swiglu_backward_v1(floatX* dgate_up, const floatX* dout, const floatX* gate_up, int N, int I) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * I) return;
    const size_t n = idx / I, i = idx % I;
    const float g = to_float(gate_up[n * 2 * I + i]), u = to_float(gate_up[n * 2 * I + I + i]), dy = to_float(dout[idx]);
    const float sig = 1.0f / (1.0f + expf(-g));
    dgate_up[n * 2 * I + i] = from_float<floatX>(dy * u * sig * (1.0f + g * (1.0f - sig)));
    dgate_up[n * 2 * I + I + i] = from_float<floatX>(dy * g * sig);
}

static const int block_sizes[] = {64, 128, 256, 512, 1024};

// One shape: both directions, every version and block size validated; with `timed`, also timed.
static void run_shape(const Ceilings& ceil, int N, int I, bool timed, uint64_t seed) {
    const size_t n_out = (size_t)N * I, n_in = 2 * n_out;
    // gate over [-6, 6): both tails of the sigmoid
    const std::vector<float> gate_up = lab_round(lab_random(n_in, seed, -6.0f, 6.0f)), dout = lab_round(lab_random(n_out, seed + 1));
    floatX* d_gate_up = lab_upload<floatX>(gate_up);
    floatX* d_dout = lab_upload<floatX>(dout);
    floatX* d_out = (floatX*)device_malloc(n_out * sizeof(floatX), "out");
    floatX* d_dgate_up = (floatX*)device_malloc(n_in * sizeof(floatX), "dgate_up");
    std::vector<float> out_ref(n_out), dgate_up_ref(n_in);
    swiglu_forward_ref(out_ref.data(), gate_up.data(), N, I);
    swiglu_backward_ref(dgate_up_ref.data(), dout.data(), gate_up.data(), N, I);
    printf("shape N=%d I=%d\n", N, I);

    for (int version = 1; version <= 2; version++) {
        const char* v = version == 1 ? "v1" : "v2";
        for (int block : block_sizes) {
            const unsigned grid_v1 = (unsigned)CEIL_DIV(n_out, (size_t)block);
            auto forward = [&] {
                if (version == 1) {
                    swiglu_forward_v1<<<grid_v1, block>>>(d_out, d_gate_up, N, I);
                    cudaCheckLaunch("swiglu_forward_v1");
                } else {
                    swiglu_forward_launch(d_out, d_gate_up, N, I, block, 0);
                }
            };
            auto backward = [&] {
                if (version == 1) {
                    swiglu_backward_v1<<<grid_v1, block>>>(d_dgate_up, d_dout, d_gate_up, N, I);
                    cudaCheckLaunch("swiglu_backward_v1");
                } else {
                    swiglu_backward_launch(d_dgate_up, d_dout, d_gate_up, N, I, block, 0);
                }
            };
            lab_poison(d_out, n_out * sizeof(floatX));
            forward();
            lab_validate("swiglu forward", lab_download(d_out, n_out), out_ref);
            lab_poison(d_dgate_up, n_in * sizeof(floatX));
            backward();
            lab_validate("swiglu backward", lab_download(d_dgate_up, n_in), dgate_up_ref);
            if (timed) {
                // forward: gate_up read, out written; backward: gate_up and dout read, dgate_up written
                lab_report(ceil, "swiglu_forward", v, block, lab_time_ms(20, forward), (double)(n_in + n_out) * sizeof(floatX), 0);
                lab_report(ceil, "swiglu_backward", v, block, lab_time_ms(20, backward),
                           (double)(2 * n_in + n_out) * sizeof(floatX), 0);
            }
        }
    }
    device_free(d_gate_up); device_free(d_dout); device_free(d_out); device_free(d_dgate_up);
}

int main() {
    const Ceilings ceil = lab_begin("swiglu");
    run_shape(ceil, 5, 37, false, 1);           // odd I: the scalar path
    run_shape(ceil, 3, 24, false, 2);           // 3 packs of bf16 per row (I not a multiple of 32)
    run_shape(ceil, 64 * 916, 1536, true, 3);   // ARC default: batch 64, 916 positions, intermediate 1536
    printf("all validated\n");
    return 0;
}
