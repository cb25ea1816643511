// Kernel lab: stablemax cross-entropy loss, forward and backward, see kernels/stablemax.cuh.
//
//   forward   v1  a thread per sample walks its tokens in order (the reference loop)
//             v2  the mainline kernel: a block per sample, a thread per token, fixed-order block reduction
//   backward  v1  a thread per logit (each recomputes its row's sum)
//             v2  the mainline kernel: a thread per (b, t) row
//
// Rows of logits are ld >= V apart (the trainer pads the lm head to 16 columns); the padding is not read, and the
// backward writes 0 into it.
//
// nvcc -O3 -std=c++17 -arch=sm_90 -I. -Xcompiler -fopenmp dev/cuda/stablemax.cu -o stablemax -lcublasLt -lgomp
#include "lab.h"
#include "../../kernels/stablemax.cuh"

__global__ void stablemax_loss_forward_v1(floatS* loss, int* n_valid, int* n_correct, int* preds, const floatX* logits,
                                          const int* labels, int B, int T, int P, int V, int ld) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x, S = T - P;
    if (b >= B) return;
    double sum = 0;
    int count = 0, correct = 0;
    for (int s = 0; s < S; s++) {
        const floatX* x = logits + ((size_t)b * T + P + s) * ld;
        int argmax = 0;
        for (int v = 1; v < V; v++) if (to_float(x[v]) > to_float(x[argmax])) argmax = v;
        if (preds) preds[(size_t)b * S + s] = argmax;
        const int y = labels[(size_t)b * S + s];
        if (y == IGNORE_LABEL_ID) continue;
        double total = 0;
        for (int v = 0; v < V; v++) total += stablemax_s(to_float(x[v]));
        sum += log(total) - log(stablemax_s(to_float(x[y])));
        count++;
        correct += argmax == y;
    }
    loss[b] = (floatS)(sum / (count > 1 ? count : 1));
    n_valid[b] = count;
    n_correct[b] = correct;
}

__global__ void stablemax_loss_backward_v1(floatX* dlogits, const floatX* logits, const int* labels, const int* n_valid,
                                           const floatS* dloss, int B, int T, int P, int V, int ld) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * T * ld) return;
    const int row = (int)(idx / ld), v = (int)(idx % ld), b = row / T, t = row % T;
    const floatX* x = logits + (size_t)row * ld;
    const int y = t < P ? IGNORE_LABEL_ID : labels[(size_t)b * (T - P) + t - P];
    if (y == IGNORE_LABEL_ID || v >= V) { dlogits[idx] = from_float<floatX>(0.0); return; }
    double total = 0;
    for (int j = 0; j < V; j++) total += stablemax_s(to_float(x[j]));
    const double xv = to_float(x[v]);
    double g = stablemax_ds(xv) / total;
    if (v == y) g -= stablemax_ds(xv) / stablemax_s(xv);
    dlogits[idx] = from_float<floatX>(g * ((double)dloss[b] / (n_valid[b] > 1 ? n_valid[b] : 1)));
}

static const int block_sizes[] = {64, 128, 256, 512, 1024};

static std::vector<float> ints_as_floats(const int* d, size_t n) {
    std::vector<int> h(n);
    copy_to_host(h.data(), d, n * sizeof(int));
    return std::vector<float>(h.begin(), h.end());
}

// One shape: both directions, every version and block size validated; with `timed`, also timed.
static void run_shape(const Ceilings& ceil, int B, int T, int P, int V, int ld, bool timed, uint64_t seed) {
    const int S = T - P;
    const size_t n_logits = (size_t)B * T * ld, n_tok = (size_t)B * S;
    // logits on a grid of 1/4 in [-4, 4]: many ties (the first maximum wins) and exact zeros (both sides of s)
    std::vector<float> logits = lab_random(n_logits, seed, -4.0f, 4.0f);
    for (float& x : logits) x = roundf(x * 4) / 4;
    logits = lab_round(logits);
    // labels: about one in five ignored, and every token of sample 1 (no valid token: loss 0)
    std::vector<int> labels(n_tok);
    const std::vector<float> u = lab_random(n_tok, seed + 1, 0.0f, 1.0f);
    for (size_t i = 0; i < n_tok; i++)
        labels[i] = (u[i] < 0.2f || (B > 1 && i / S == 1)) ? IGNORE_LABEL_ID : (int)(u[i] * 1000) % V;

    std::vector<float> loss_ref(B), dlogits_ref(n_logits);
    std::vector<int> n_valid_ref(B), n_correct_ref(B), preds_ref(n_tok);
    stablemax_loss_forward_ref(loss_ref.data(), n_valid_ref.data(), n_correct_ref.data(), preds_ref.data(), logits.data(),
                               labels.data(), B, T, P, V, ld);
    // dloss of order n_valid: the gradients are of order one, so the bf16 tolerance is a real test
    std::vector<float> dloss = lab_random(B, seed + 2, 0.5f, 1.5f);
    for (int b = 0; b < B; b++) dloss[b] *= std::max(1, n_valid_ref[b]);
    stablemax_loss_backward_ref(dlogits_ref.data(), logits.data(), labels.data(), n_valid_ref.data(), dloss.data(), B, T, P, V, ld);

    floatX* d_logits = lab_upload<floatX>(logits);
    floatS* d_dloss = lab_upload<floatS>(dloss);
    int* d_labels = (int*)device_malloc(n_tok * sizeof(int), "labels");
    copy_to_device(d_labels, labels.data(), n_tok * sizeof(int));
    floatS* d_loss = (floatS*)device_malloc(B * sizeof(floatS), "loss");
    int* d_n_valid = (int*)device_malloc(B * sizeof(int), "n_valid");
    int* d_n_correct = (int*)device_malloc(B * sizeof(int), "n_correct");
    int* d_preds = (int*)device_malloc(n_tok * sizeof(int), "preds");
    floatX* d_dlogits = (floatX*)device_malloc(n_logits * sizeof(floatX), "dlogits");
    printf("shape B=%d T=%d P=%d V=%d ld=%d\n", B, T, P, V, ld);

    // forward: the S token rows of logits and the labels read, preds and the three per-sample results written;
    // backward: the same rows and labels, n_valid and dloss read, every row of dlogits written
    const double fwd_bytes = (double)n_tok * (V * sizeof(floatX) + 2 * sizeof(int)) + (double)B * (sizeof(floatS) + 2 * sizeof(int));
    const double bwd_bytes = (double)n_tok * (V * sizeof(floatX) + sizeof(int)) + (double)B * (sizeof(floatS) + sizeof(int)) +
                             (double)n_logits * sizeof(floatX);
    for (int version = 1; version <= 2; version++) {
        const char* v = version == 1 ? "v1" : "v2";
        for (int block : block_sizes) {
            auto forward = [&](int* preds) {
                if (version == 1) {
                    stablemax_loss_forward_v1<<<CEIL_DIV(B, block), block>>>(d_loss, d_n_valid, d_n_correct, preds, d_logits,
                                                                             d_labels, B, T, P, V, ld);
                    cudaCheckLaunch("stablemax_loss_forward_v1");
                } else {
                    stablemax_loss_forward_launch(d_loss, d_n_valid, d_n_correct, preds, d_logits, d_labels, B, T, P, V, ld, block, 0);
                }
            };
            auto backward = [&] {
                if (version == 1) {
                    stablemax_loss_backward_v1<<<(unsigned)CEIL_DIV(n_logits, (size_t)block), block>>>(
                        d_dlogits, d_logits, d_labels, d_n_valid, d_dloss, B, T, P, V, ld);
                    cudaCheckLaunch("stablemax_loss_backward_v1");
                } else {
                    stablemax_loss_backward_launch(d_dlogits, d_logits, d_labels, d_n_valid, d_dloss, B, T, P, V, ld, block, 0);
                }
            };
            for (int with_preds = 0; with_preds < 2; with_preds++) {     // the integer results compare exactly
                lab_poison(d_loss, B * sizeof(floatS));
                lab_poison(d_n_valid, B * sizeof(int));
                lab_poison(d_n_correct, B * sizeof(int));
                lab_poison(d_preds, n_tok * sizeof(int));
                forward(with_preds ? d_preds : nullptr);
                lab_validate("stablemax forward loss", lab_download(d_loss, B), loss_ref);
                lab_validate("stablemax forward n_valid", ints_as_floats(d_n_valid, B),
                             std::vector<float>(n_valid_ref.begin(), n_valid_ref.end()), 0, 0.5);
                lab_validate("stablemax forward n_correct", ints_as_floats(d_n_correct, B),
                             std::vector<float>(n_correct_ref.begin(), n_correct_ref.end()), 0, 0.5);
                if (with_preds)
                    lab_validate("stablemax forward preds", ints_as_floats(d_preds, n_tok),
                                 std::vector<float>(preds_ref.begin(), preds_ref.end()), 0, 0.5);
            }
            lab_poison(d_dlogits, n_logits * sizeof(floatX));
            backward();     // reads the n_valid the forward just wrote
            lab_validate("stablemax backward", lab_download(d_dlogits, n_logits), dlogits_ref);
            if (timed) {
                lab_report(ceil, "stablemax_forward", v, block, lab_time_ms(20, [&] { forward(d_preds); }), fwd_bytes, 0);
                lab_report(ceil, "stablemax_backward", v, block, lab_time_ms(20, backward), bwd_bytes, 0);
            }
        }
    }
    device_free(d_logits); device_free(d_dloss); device_free(d_labels); device_free(d_loss); device_free(d_n_valid);
    device_free(d_n_correct); device_free(d_preds); device_free(d_dlogits);
}

int main() {
    const Ceilings ceil = lab_begin("stablemax");
    run_shape(ceil, 3, 41, 5, 7, 8, false, 1);         // small odd shape (sample 1 has no valid token)
    run_shape(ceil, 64, 916, 16, 12, 16, true, 2);     // ARC default: batch 64, 16 prefix + 900 grid positions, vocab
                                                       // 12 in rows of 16 (the trainer's padded lm head)
    printf("all validated\n");
    return 0;
}
