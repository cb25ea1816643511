// Gradient checks of the transformer block (common/transformer.h) in double (built with -DENABLE_FP64), with the
// options of the three systems: a stack of 2 blocks, loss L = sum(out * R) for a random R, differentiated by
// stack_backward and by central differences over every weight, the input and (cross-attention) the memory.
//   TRM        post-norm, scale-free RMSNorm, RoPE, bidirectional
//   LPN        pre-norm, scale-free, RoPE with a leading position left unrotated
//   Qwen2      pre-norm, RMSNorm weights, q/k/v biases, RoPE, GQA (4 query heads over 2 kv heads), causal
//   set        cross-attention with biases and GQA over a key-masked memory, pre-norm with weights
//   LoRA       Qwen2 (and TRM) blocks with adapters on every projection (q, k, v inside the fused qkv rows, o, gate
//              and up inside the gate_up rows, down), checked over every adapter tensor; the frozen base gets none
// A backward pass with null gradient fields must give the same input gradient and write no weight gradient.
#include "../common/parameters.h"
#include "../common/transformer.h"
#include "test.h"
#include "op_test.h"

struct Case {
    const char* name;
    BlockConfig cfg;
    bool cross, rope;
    int rope_skip;
    unsigned lora_mask;     // adapted sites (0: no adapter); with adapters the base is frozen
};

static void check_stack(const Case& k) {
    const int B = 2, T = 5, Tk = 4, L = 2;
    const BlockConfig& c = k.cfg;
    block_config_check(c);
    // the weights: one Adam group of two blocks, initialised at random (norm weights around 1)
    ParamTable table;
    table.groups = {param_group("blocks", GROUP_ADAM)};
    // with adapters (rank 3), a second group; their B random instead of PEFT's zeros, so that every gradient flows
    const int r = 3;
    if (k.lora_mask) table.groups.push_back(param_group("lora", GROUP_ADAM));
    auto init = [](int) { return init_zero(); };
    auto walk = [&](TensorList<double>& list, std::vector<BlockTensors<double>>& blocks, std::vector<BlockLora<double>>& loras) {
        for (int l = 0; l < L; l++) block_tensors(list, &blocks[l], c, k.cross, "layers." + std::to_string(l) + ".", "", init);
        list.group(1);
        if (k.lora_mask)
            for (int l = 0; l < L; l++) block_lora_tensors(list, &loras[l], c, k.lora_mask, r, "layers." + std::to_string(l) + ".");
    };
    std::vector<BlockTensors<double>> none(L);
    std::vector<BlockLora<double>> no_lora(L);
    TensorList<double> declare = tensor_declare<double>(&table);
    walk(declare, none, no_lora);
    param_table_layout(&table);
    vecd w = normal_vec(table.n_total, 0.4), g(table.n_total);
    for (const TensorInfo& t : table.tensors)
        if (t.init.kind == INIT_CONST) for (size_t i = 0; i < t.numel; i++) w[t.offset + i] += 1.0;
    std::vector<BlockTensors<double>> wt(L), gt(L), nul(L);
    std::vector<BlockLora<double>> lw(L), lg(L), lnul(L);
    auto bind = [&](std::vector<BlockTensors<double>>& out, std::vector<BlockLora<double>>& lout, double* base) {
        TensorList<double> list = tensor_bind<double>(table, {base, base});
        walk(list, out, lout);
    };
    bind(wt, lw, w.data());
    bind(gt, lg, g.data());
    bind(nul, lnul, nullptr);

    StackShape s = StackShape();
    s.cfg = c; s.B = B; s.T = T; s.n_layers = L; s.cross = k.cross;
    std::vector<double> cs((size_t)T * c.HD), sn(cs.size());
    rope_tables(cs.data(), sn.data(), T, c.HD, 1e4f);
    if (k.rope) { s.rope_cos = cs.data(); s.rope_sin = sn.data(); s.rope_skip = k.rope_skip; }
    vecd memory = normal_vec((size_t)B * Tk * c.D), dmemory(memory.size());
    std::vector<uint8_t> mask = {1, 1, 0, 1, 0, 1, 1, 0};                 // (B, Tk), a masked key in each sample
    if (k.cross) { s.memory = memory.data(); s.Tk = Tk; s.key_mask = mask.data(); }
    if (k.lora_mask) s.lora = {&lw, &lg, k.lora_mask, r, 0.75f, 0.0f, 0};

    StackActs acts;
    BlockScratch sc;
    size_t bytes;
    void* memory_block = arena_alloc([&](Arena* a) {
        stack_layout(a, &acts, s);
        scratch_layout(a, &sc, c, (size_t)B * T, (size_t)B * T, (size_t)B * Tk, k.lora_mask ? r : 0);
    }, &bytes, "test activations");
    const size_t n_out = (size_t)B * T * c.D;
    vecd x = normal_vec(n_out), R = normal_vec(n_out);
    auto loss = [&]() -> long double {
        std::copy(x.begin(), x.end(), acts.in);
        const double* out = stack_forward(&acts, wt, s, Stream());
        long double L = 0;
        for (size_t i = 0; i < n_out; i++) L += (long double)out[i] * R[i];
        return L;
    };
    auto backward = [&](const std::vector<BlockTensors<double>>& grads, vecd* dx) {
        loss();
        std::copy(R.begin(), R.end(), sc.G);
        std::fill(dmemory.begin(), dmemory.end(), 0.0);
        stack_backward(k.cross ? dmemory.data() : nullptr, &acts, wt, grads, s, sc, Stream());
        dx->assign(sc.G, sc.G + n_out);
    };
    vecd dx, dx_none;
    backward(k.lora_mask ? nul : gt, &dx);          // with adapters: the base frozen (no gradient fields)
    const vecd dmem = dmemory, grads = g;
    gradcheck(fmt("%s: d L / d input == central differences", k.name), x, dx, loss, 1e-6);
    if (k.cross) gradcheck(fmt("%s: d L / d memory == central differences", k.name), memory, dmem, loss, 1e-6);
    for (const TensorInfo& t : table.tensors) {
        if (k.lora_mask && t.group == 0) {
            bool none = true;
            for (size_t i = 0; i < t.numel; i++) none = none && grads[t.offset + i] == 0;
            check(none, fmt("%s: the frozen base's %s gets no gradient", k.name, t.name.c_str()).c_str());
            continue;
        }
        vecd wv(w.begin() + t.offset, w.begin() + t.offset + t.numel), an(grads.begin() + t.offset, grads.begin() + t.offset + t.numel);
        if (t.name.find("k_proj.bias") != std::string::npos) {
            // a key bias adds q . b to every score of a query: the softmax does not change, the gradient is zero
            const long double L0 = loss();
            for (size_t i = 0; i < t.numel; i++) w[t.offset + i] += 0.5;
            const double moved = fabs((double)(loss() - L0));
            std::copy(wv.begin(), wv.end(), w.begin() + t.offset);
            check(max_abs(an) < 1e-12 && moved < 1e-10, fmt("%s: d L / d %s == 0 (softmax is shift-invariant)", k.name, t.name.c_str()).c_str(),
                  "max |grad| %.3g, loss moved by %.3g", max_abs(an), moved);
            continue;
        }
        gradcheck(fmt("%s: d L / d %s == central differences", k.name, t.name.c_str()), wv, an, [&]() {
            std::copy(wv.begin(), wv.end(), w.begin() + t.offset);
            return loss();
        }, 1e-6);
        std::copy(wv.begin(), wv.end(), w.begin() + t.offset);
    }
    if (k.lora_mask) {
        // the adapters merged by hand into the rows of the projection each one names (the layout of block_tensors:
        // qkv rows q | k | v, gate_up rows gate | up), then the stack without adapters: the same output
        const long double L_adapted = loss();
        const vecd w_saved = w;
        const int QD = c.NH * c.HD, KD = c.NKV * c.HD;
        for (int l = 0; l < L; l++)
            for (int site = 0; site < LORA_SITES; site++) {
                if (!(k.lora_mask >> site & 1)) continue;
                struct { double* W; int row0, rows, cols; } t[LORA_SITES] = {
                    {wt[l].qkv, 0, QD, c.D}, {wt[l].qkv, QD, KD, c.D}, {wt[l].qkv, QD + KD, KD, c.D}, {wt[l].o, 0, c.D, QD},
                    {wt[l].gate_up, 0, c.I, c.D}, {wt[l].gate_up, c.I, c.I, c.D}, {wt[l].down, 0, c.D, c.I}};
                for (int o = 0; o < t[site].rows; o++)
                    for (int i = 0; i < t[site].cols; i++)
                        for (int q = 0; q < r; q++)
                            t[site].W[(size_t)(t[site].row0 + o) * t[site].cols + i] +=
                                (double)s.lora.scale * lw[l].B[site][(size_t)o * r + q] * lw[l].A[site][(size_t)q * t[site].cols + i];
            }
        const StackLora adapters = s.lora;
        s.lora.w = nullptr;
        const long double L_merged = loss();
        const vecd w_by_hand = w;
        w = w_saved;
        for (int l = 0; l < L; l++) block_lora_merge(wt[l], lw[l], c, k.lora_mask, r, adapters.scale);
        double merge_err = 0;
        for (size_t i = 0; i < w.size(); i++) merge_err = fmax(merge_err, fabs(w[i] - w_by_hand[i]));
        s.lora = adapters;
        w = w_saved;
        check(fabsl(L_adapted - L_merged) < 1e-10 * (1 + fabsl(L_adapted)),
              fmt("%s: the adapters act on the projections they name (== merged by hand, no adapters)", k.name).c_str(),
              "L %.15Lg vs %.15Lg", L_adapted, L_merged);
        check(merge_err < 1e-12, fmt("%s: block_lora_merge == the merge by hand", k.name).c_str(), "err %.3g", merge_err);
    }
    std::fill(g.begin(), g.end(), 0.0);
    if (k.lora_mask) s.lora.g = nullptr;            // adapters without gradients too
    backward(nul, &dx_none);
    bool untouched = true;
    for (double v : g) untouched = untouched && v == 0;
    check(dx_none == dx && untouched, fmt("%s: without gradient fields the input gradient is the same and no weight gradient is written", k.name).c_str());
    device_free(memory_block);
}

int main() {
    test_seed(20261201);
    //                                  D  NH NKV HD  I  pre   weight bias   causal eps
    check_stack({"TRM post-norm", {8, 2, 2, 4, 12, false, false, false, false, 1e-5f}, false, true, 0, 0});
    check_stack({"LPN pre-norm, CLS not rotated", {8, 2, 2, 4, 12, true, false, false, false, 1e-5f}, false, true, 1, 0});
    check_stack({"Qwen2: weights, biases, GQA, causal", {8, 4, 2, 2, 12, true, true, true, true, 1e-6f}, false, true, 0, 0});
    check_stack({"Qwen2 without GQA, bidirectional", {8, 2, 2, 4, 12, true, true, true, false, 1e-6f}, false, true, 0, 0});
    check_stack({"set encoder: cross-attention, GQA, biases, key mask", {8, 4, 2, 2, 12, true, true, true, false, 1e-6f}, true, false, 0, 0});
    check_stack({"set encoder: post-norm cross-attention", {8, 2, 2, 4, 12, false, false, false, false, 1e-5f}, true, false, 0, 0});
    const unsigned all_sites = (1u << LORA_SITES) - 1, q_v = 1u << LORA_Q | 1u << LORA_V;
    check_stack({"Qwen2 + LoRA on every projection", {8, 4, 2, 2, 12, true, true, true, true, 1e-6f}, false, true, 0, all_sites});
    check_stack({"Qwen2 + LoRA on q and v (PEFT's default)", {8, 4, 2, 2, 12, true, true, true, true, 1e-6f}, false, true, 0, q_v});
    check_stack({"TRM post-norm + LoRA on every projection", {8, 2, 2, 4, 12, false, false, false, false, 1e-5f}, false, true, 0, all_sites});
    expect_fatal("a learned norm weight needs pre-norm", [] { block_config_check({8, 2, 2, 4, 12, false, true, false, false, 1e-5f}); },
                 {"pre-norm"});
    expect_fatal("query heads must be a multiple of kv heads", [] { block_config_check({8, 3, 2, 4, 12, true, false, false, false, 1e-5f}); },
                 {"3 query heads", "2 key/value heads"});
    return test_summary();
}
