// Kernel lab: softmax cross-entropy over a large vocabulary with the backward in place, see kernels/softmax_xent.cuh.
//
//   v1  a block per row, three passes over the row: the maximum, the sum of exp(x - max), the gradient (no argmax)
//   v2  the mainline kernel: a block per row, an online softmax (max and sum in one pass), then the gradient
//
// The op reads a row twice and writes it once (bytes = 3 x rows x V x sizeof(floatX)), so its ceiling is the copy
// bandwidth; at Qwen2's V = 151936 a chunk of 512 rows is 156 MB of bf16 logits.
//
// nvcc -O3 -std=c++17 -arch=sm_90 -I. -Xcompiler -fopenmp dev/cuda/softmax_xent.cu -o softmax_xent -lcublasLt -lgomp
#include "lab.h"
#include "../../kernels/softmax_xent.cuh"

__global__ void softmax_xent_v1(floatS* loss, floatX* logits, const int* labels, int V, int ld, float dscale) {
    __shared__ float scratch[WARP_SIZE];
    floatX* x = logits + (size_t)blockIdx.x * ld;
    float m = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, to_float(x[v]));
    m = warp_reduce_max(m);
    if (threadIdx.x % WARP_SIZE == 0) scratch[threadIdx.x / WARP_SIZE] = m;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < (int)blockDim.x / WARP_SIZE; w++) M = fmaxf(M, scratch[w]);
    float s = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) s += expf(to_float(x[v]) - M);
    const float lse = M + logf(block_reduce_sum(s, scratch));
    const int y = labels[blockIdx.x];
    if (threadIdx.x == 0) loss[blockIdx.x] = y == IGNORE_LABEL_ID ? 0.0f : lse - to_float(x[y]);
    __syncthreads();
    for (int v = threadIdx.x; v < ld; v += blockDim.x) {
        float g = 0;
        if (v < V && y != IGNORE_LABEL_ID) g = dscale * (expf(to_float(x[v]) - lse) - (v == y ? 1.0f : 0.0f));
        x[v] = from_float<floatX>(g);
    }
}

static const int block_sizes[] = {256, 512, 1024};

static void run_shape(const Ceilings& ceil, int N, int V, bool timed, uint64_t seed) {
    const size_t n = (size_t)N * V;
    const std::vector<float> logits = lab_round(lab_random(n, seed, -8.0f, 8.0f));
    std::vector<int> labels(N);
    const std::vector<float> u = lab_random(N, seed + 1, 0.0f, 1.0f);
    for (int i = 0; i < N; i++) labels[i] = i % 7 == 3 ? IGNORE_LABEL_ID : (int)(u[i] * V) % V;
    const float dscale = 1.0f / N;
    std::vector<float> loss_ref(N), grad_ref = logits;
    std::vector<int> argmax_ref(N);
    softmax_xent_ref(loss_ref.data(), argmax_ref.data(), grad_ref.data(), labels.data(), N, V, V, dscale, true);
    // the gradients are of order dscale: compare them scaled back to order one
    for (float& g : grad_ref) g *= N;
    floatX* d_logits = (floatX*)device_malloc(n * sizeof(floatX), "logits");
    int* d_labels = (int*)device_malloc(N * sizeof(int), "labels");
    copy_to_device(d_labels, labels.data(), N * sizeof(int));
    floatS* d_loss = (floatS*)device_malloc(N * sizeof(floatS), "loss");
    int* d_argmax = (int*)device_malloc(N * sizeof(int), "argmax");
    printf("shape N=%d V=%d\n", N, V);
    const double bytes = 3.0 * n * sizeof(floatX);
    for (int version = 1; version <= 2; version++) {
        for (int block : block_sizes) {
            auto run = [&] {
                if (version == 1) {
                    softmax_xent_v1<<<N, block>>>(d_loss, d_logits, d_labels, V, V, dscale);
                    cudaCheckLaunch("softmax_xent_v1");
                } else {
                    softmax_xent_launch(d_loss, d_argmax, d_logits, d_labels, N, V, V, dscale, true, block, 0);
                }
            };
            floatX* up = lab_upload<floatX>(logits);
            copy_on_device(d_logits, up, n * sizeof(floatX));
            device_free(up);
            lab_poison(d_loss, N * sizeof(floatS));
            run();
            lab_validate("softmax_xent loss", lab_download(d_loss, N), loss_ref);
            std::vector<float> g = lab_download(d_logits, n);
            for (float& x : g) x *= N;
            lab_validate("softmax_xent dlogits", g, grad_ref);
            std::vector<int> am(N);
            copy_to_host(am.data(), d_argmax, N * sizeof(int));
            if (version == 2 && am != argmax_ref) { printf("softmax_xent argmax differs from the reference\n"); exit(1); }
            // timed on the gradient of the previous run: the same memory traffic and exp count
            if (timed) lab_report(ceil, "softmax_xent", version == 1 ? "v1" : "v2", block, lab_time_ms(20, run), bytes, 0);
        }
    }
    device_free(d_logits); device_free(d_labels); device_free(d_loss); device_free(d_argmax);
}

int main() {
    const Ceilings ceil = lab_begin("softmax_xent");
    run_shape(ceil, 7, 1000, false, 1);          // small: fewer rows than SMs, V not a multiple of the block
    run_shape(ceil, 512, 151936, true, 2);       // a chunk of 512 rows of Qwen2's vocabulary
    printf("all validated\n");
    return 0;
}
