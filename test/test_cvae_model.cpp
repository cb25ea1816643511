// Whole-model checks of train_cvae.cu (the Qwen2 language model), in double (built with -DENABLE_FP64).
//
// 1. Gradients: on a tiny Qwen2 (grouped-query attention, q/k/v biases, RMSNorm weights, an untied and a tied lm
//    head) with random weights, the loss L = mean over a batch's y-region targets of -log p (two sequences of
//    different lengths, the prompt and the padding without targets, the lm head in chunks that split a sequence)
//    is differentiated by the trainer's backward pass and by central differences over sampled elements of every
//    trained tensor: every weight without LoRA, every adapter (with nonzero B) with LoRA on all seven projections,
//    also with LoRA dropout (its masks fixed by the seed, so the loss is a function of the weights).
// 2. Generation: the key/value cache computes what the full forward pass computes. The prompt pass and each
//    one-token step over the cache give the final hidden states of a full forward over the same tokens (to 1e-12
//    for the longest prompt; to RoPE's fp32 tables, 1e-5, for a left-padded one, whose positions are shifted);
//    greedy generation's tokens are the argmax of the full forward's logits at every position.
#define TESTING
#include "../train_cvae.cu"
#include "test.h"

static Arch tiny_arch(bool tied) {
    Arch a = {16, 2, 4, 2, 4, 24, 40, 64, 1e4, 1e-6, tied, -1, -1, "tiny test"};
    return a;
}

static Config tiny_config(int lora_r, int T, float dropout = 0.0f) {
    Config c = config_defaults();
    c.lora_r = lora_r; c.lora_alpha = 3.0f; c.lora_targets = "all"; c.lora_dropout = dropout;
    c.batch_size = 2; c.max_seq_len = T; c.lm_head_chunk = 5;
    return c;
}

// Every value of the model uniform in +-0.4 (norm weights around 1): biases, norms and LoRA's B are not at their
// initial values, so every path carries gradient.
static void random_weights(Model* m, uint64_t seed) {
    std::vector<floatS> w = params_values(m->p);
    for (const TensorInfo& t : m->p.table.tensors) {
        const bool norm = t.name.find("norm") != std::string::npos;
        for (size_t i = 0; i < t.numel; i++)
            w[t.offset + i] = (norm ? 1.0 : 0.0) + 0.4 * (2.0 * hash_uniform(seed, t.offset, i) - 1.0);
    }
    params_set(&m->p, w);
}

static Example example(int n_prompt, int n_total, uint64_t seed, int V) {
    Example e;
    e.task = 0; e.strategy = 0; e.n_prompt = n_prompt;
    for (int t = 0; t < n_total; t++) e.ids.push_back(3 + (int)hash_below((uint32_t)(V - 3), seed, t));
    return e;
}

// The mean y-region loss of the examples (and with grad, the gradients in m->p.grads).
static double batch_loss(Model* m, const Data& d, const std::vector<const Example*>& ex, int T, bool grad) {
    int n = 0;
    for (const Example* e : ex) n += (int)e->ids.size() - e->n_prompt;
    upload_batch(m, d, ex, T);
    model_forward(m, generator_net(*m), &m->acts.gen, (int)ex.size(), T, nullptr, 0, true, nullptr, Stream());
    loss_and_backward(m, (int)ex.size(), T, 1.0f / n, grad, Stream());
    double L = 0;
    for (int i = 0; i < (int)ex.size() * T; i++) L += m->acts.loss[i];
    return L / n;
}

static void check_gradients(int lora_r, bool tied, float dropout = 0.0f) {
    const int T = 12;
    Model model;
    Model* m = &model;
    model_build(m, tiny_config(lora_r, T, dropout), tiny_arch(tied), 2);
    random_weights(m, 7 + lora_r + tied);
    m->lora_seed = 1234;                  // the dropout masks (fixed: the loss is a function of the weights)
    Data d;
    d.eos = 2;
    const Example e0 = example(4, 11, 1, m->arch.V), e1 = example(6, 9, 2, m->arch.V);
    const std::vector<const Example*> ex = {&e0, &e1};
    params_zero_grads(&m->p);
    batch_loss(m, d, ex, T, true);
    std::vector<floatS> grads(m->p.table.n_dense);
    copy_to_host(grads.data(), m->p.grads, grads.size() * sizeof(floatS));
    std::vector<floatS> w = params_values(m->p);
    const std::string what = lora_r ? (dropout > 0 ? "LoRA adapters with dropout" : "LoRA adapters")
                                    : tied ? "every weight, tied head" : "every weight, untied head";
    int n_tensors = 0;
    for (const TensorInfo& t : m->p.table.tensors) {
        if (t.group >= m->groups.n_trained) continue;
        n_tensors++;
        double worst = 0, scale = 1e-12;
        for (int k = 0; k < 6; k++) {
            const size_t i = t.offset + hash_below((uint32_t)t.numel, 99, t.offset, k);
            const double h = 1e-5, keep = w[i];
            w[i] = keep + h; params_set(&m->p, w);
            const double up = batch_loss(m, d, ex, T, false);
            w[i] = keep - h; params_set(&m->p, w);
            const double down = batch_loss(m, d, ex, T, false);
            w[i] = keep; params_set(&m->p, w);
            const double numeric = (up - down) / (2 * h);
            worst = std::max(worst, fabs(numeric - grads[i]));
            scale = std::max(scale, std::max(fabs(numeric), fabs((double)grads[i])));
        }
        check(worst / scale < 1e-6, fmt("cvae gradient %s: %s", what.c_str(), t.name.c_str()).c_str(),
              "largest difference %.3g of %.3g", worst, scale);
    }
    // the frozen base has no gradient buffer: only the adapters (or the whole model) are trained
    const size_t trained = group_numel(m->p.table, 0);
    check(n_tensors == (lora_r ? 2 * 7 * m->arch.n_layers : 2 + 7 * m->arch.n_layers + (tied ? 0 : 1)) && trained > 0,
          fmt("cvae gradient %s: the trained tensors", what.c_str()).c_str(), "%d tensors", n_tensors);
}

// The final hidden state of row `t` of a full forward over `ids` (one sequence, no cache).
static std::vector<floatX> full_hidden(Model* m, const std::vector<int>& ids, int t) {
    copy_to_device(m->acts.gen.ids, ids.data(), ids.size() * sizeof(int));
    model_forward(m, generator_net(*m), &m->acts.gen, 1, (int)ids.size(), nullptr, 0, false, nullptr, Stream());
    const int D = m->arch.D;
    return std::vector<floatX>(m->acts.gen.hn + (size_t)t * D, m->acts.gen.hn + (size_t)(t + 1) * D);
}

static double max_diff(const floatX* a, const std::vector<floatX>& b) {
    double worst = 0;
    for (size_t i = 0; i < b.size(); i++) worst = std::max(worst, fabs((double)a[i] - (double)b[i]));
    return worst;
}

static void check_kv_cache() {
    const int T = 24;
    Model model;
    Model* m = &model;
    model_build(m, tiny_config(3, T), tiny_arch(true), 2);
    random_weights(m, 11);
    const int D = m->arch.D, V = m->arch.V;
    Data d;
    d.eos = 2;
    // two prompts, the second shorter (left-padded by 3 in the batch)
    std::vector<std::vector<int32_t>> prompts = {{5, 9, 13, 7, 21, 30}, {8, 17, 4}};
    const int P = 6;
    std::vector<int> ids(2 * P, d.eos), last = {P - 1, 2 * P - 1}, no_labels(2, IGNORE_LABEL_ID);
    std::vector<uint8_t> prompt_mask(2 * P, 0), key_mask(2 * T, 0);
    for (int b = 0; b < 2; b++)
        for (size_t t = 0; t < prompts[b].size(); t++) {
            const size_t at = P - prompts[b].size() + t;
            ids[b * P + at] = prompts[b][t];
            prompt_mask[b * P + at] = key_mask[b * T + at] = 1;
        }
    copy_to_device(m->acts.gen.ids, ids.data(), ids.size() * sizeof(int));
    copy_to_device(m->acts.prompt_mask, prompt_mask.data(), prompt_mask.size());
    model_forward(m, generator_net(*m), &m->acts.gen, 2, P, &m->kv, 0, false, nullptr, Stream());
    const floatX* hn = m->acts.gen.hn;
    std::vector<std::vector<floatX>> cached = {{hn + (P - 1) * D, hn + P * D}, {hn + (2 * P - 1) * D, hn + 2 * P * D}};
    std::vector<std::vector<int>> seqs = {std::vector<int>(prompts[0].begin(), prompts[0].end()),
                                          std::vector<int>(prompts[1].begin(), prompts[1].end())};
    double worst[2] = {0, 0};
    for (int pos = P; pos < P + 5; pos++) {
        std::vector<int> next(2);
        for (int b = 0; b < 2; b++) {
            const std::vector<floatX> full = full_hidden(m, seqs[b], (int)seqs[b].size() - 1);
            worst[b] = std::max(worst[b], max_diff(cached[b].data(), full));
            next[b] = 3 + (pos * 7 + b * 5) % (V - 3);
            seqs[b].push_back(next[b]);
            key_mask[b * T + pos] = 1;
        }
        copy_to_device(m->acts.gen.ids, next.data(), 2 * sizeof(int));
        copy_to_device(m->acts.key_mask, key_mask.data(), key_mask.size());
        model_forward(m, generator_net(*m), &m->acts.gen, 2, 1, &m->kv, pos, false, nullptr, Stream());
        cached = {{hn, hn + D}, {hn + D, hn + 2 * D}};
    }
    check(worst[0] < 1e-12, "kv cache: prompt pass and 5 cached steps == full forward (the longest prompt)", "largest difference %.3g", worst[0]);
    check(worst[1] < 1e-5, "kv cache: prompt pass and 5 cached steps == full forward (a left-padded prompt)", "largest difference %.3g", worst[1]);

    // greedy generation: every token is the argmax of the full forward's logits at its position
    d.tok = tokenizer_char_default();
    const std::vector<std::vector<int32_t>> gen = generate(m, d, prompts, {1, 2}, 6, 0);
    bool ok = true;
    std::string why;
    for (int b = 0; b < 2; b++) {
        std::vector<int> seq(prompts[b].begin(), prompts[b].end());
        for (size_t k = 0; k < gen[b].size(); k++) {
            const std::vector<floatX> h = full_hidden(m, seq, (int)seq.size() - 1);
            std::vector<floatX> logits(V);
            matmul_forward(logits.data(), h.data(), lm_head_weight(*m), nullptr, 1, D, V, Stream());
            const int best = (int)(std::max_element(logits.begin(), logits.end()) - logits.begin());
            if (best != gen[b][k]) { ok = false; why = fmt("sequence %d token %zu: generated %d, full forward's argmax %d", b, k, gen[b][k], best); }
            seq.push_back(gen[b][k]);
        }
        if (gen[b].empty()) { ok = false; why = "nothing generated"; }
    }
    check(ok, "kv cache: greedy generation == the full forward's argmax at every position", "%s", why.c_str());
}

// ---------------------------------------------------------------------------------------------------------------
// The CVAE (mode=cvae): J = R / c_base + beta KL + pv V_post + rmkl K_rmarg over a batch of three examples of
// different lengths (posterior records too), eps fixed, every weight random (heads included), differentiated by
// cvae_forward / cvae_backward and by central differences: with LoRA (the generator's and the posterior's adapters
// and the heads trained) and from scratch (the generator, the posterior's own network and the heads).

static Example cvae_example(int n_prefix, int n_suffix, int n_total, int n_post, uint64_t seed, int V) {
    Example e = example(n_prefix + 1 + n_suffix, n_total, seed, V);
    e.n_prefix = n_prefix;
    e.ids[n_prefix] = 2;                  // the slot's placeholder id (its input is h_z)
    for (int t = 0; t < n_post; t++) e.post_ids.push_back(3 + (int)hash_below((uint32_t)(V - 3), seed + 77, t));
    return e;
}

// J of the batch (the gradients in m->p.grads with grad), and its terms. The token-weighted reconstruction's
// baseline b_t is a constant of J: measured at the first call (when *baseline is empty), then kept.
static double cvae_objective(Model* m, const Data& d, const std::vector<const Example*>& ex, const std::vector<floatS>& eps,
                             int T, bool grad, std::vector<floatS>* baseline, double* terms = nullptr) {
    const int B = (int)ex.size(), dz = m->cfg.d_z;
    double n_targets = 0;
    for (const Example* e : ex) n_targets += (double)(e->ids.size() - e->n_prompt);
    std::vector<floatS> mu, lv;
    router_latents(m, d, ex, &mu, &lv);
    std::vector<double> sums(2 * dz, 0.0);
    marginal_moments(sums.data(), mu.data(), lv.data(), B, dz);
    const ObjectiveScales sc = objective_scales(m->cfg, m->c_base, B, n_targets, sums.data());
    upload_batch(m, d, ex, T);
    const int Tq = upload_latent_rows(m, d, ex, T);
    const bool tw = m->cfg.token_weighted_reconstruction_weight > 0;
    if (tw && baseline->empty()) *baseline = token_baseline(m, B, T, Stream());
    Latents L;
    L.eps = eps;
    cvae_forward(m, &L, B, T, Tq, true, Stream());
    LatentTerms t;
    if (grad) {
        t = cvae_backward(m, &L, B, T, Tq, sc, tw ? baseline : nullptr, Stream());
    } else {
        lm_loss(m, B, T, 0.0f, false, Stream());
        t = latent_terms(&L, B, dz, sc);
    }
    double nll = 0, excess = 0;
    for (int i = 0; i < B * T; i++) {
        nll += m->acts.loss[i];
        if (tw) excess += (*baseline)[i] * (m->acts.loss[i] - (*baseline)[i]);
    }
    const double R = nll / n_targets, kl = t.kl / B, pv = t.pv / (B * dz), rmkl = router_marginal_kl(sums.data(), B, dz);
    const double R_tw = excess / (n_targets * m->c_base);
    if (terms) terms[0] = R, terms[1] = kl, terms[2] = pv, terms[3] = rmkl, terms[4] = R_tw;
    const Config& c = m->cfg;
    return R / m->c_base + c.beta * kl + c.posterior_variance_weight * pv + c.router_marginal_kl_to_prior_weight * rmkl +
           c.token_weighted_reconstruction_weight * R_tw;
}

static void check_cvae_gradients(int lora_r, float tw = 0.0f) {
    const int T = 16;
    Config c = tiny_config(lora_r, T);
    c.mode = "cvae";
    c.d_z = 3;
    c.beta = 0.7f; c.posterior_variance_weight = 0.3f; c.router_marginal_kl_to_prior_weight = 0.4f;
    c.token_weighted_reconstruction_weight = tw;
    Model model;
    Model* m = &model;
    model_build(m, c, tiny_arch(true), 3);
    m->c_base = 1.7;
    random_weights(m, 21 + lora_r);
    m->lora_seed = 99;
    Data d;
    d.eos = 2;
    const int V = m->arch.V;
    const Example e0 = cvae_example(4, 2, 13, 9, 1, V), e1 = cvae_example(3, 2, 10, 7, 2, V), e2 = cvae_example(5, 2, 16, 12, 3, V);
    const std::vector<const Example*> ex = {&e0, &e1, &e2};
    std::vector<floatS> eps(3 * c.d_z);
    for (size_t i = 0; i < eps.size(); i++) eps[i] = hash_normal(5, i);
    params_zero_grads(&m->p);
    double terms[5];
    std::vector<floatS> baseline;
    cvae_objective(m, d, ex, eps, T, true, &baseline, terms);
    const std::string what = std::string(lora_r ? "LoRA" : "from scratch") + (tw > 0 ? ", token-weighted" : "");
    check(terms[1] > 0 && terms[2] > 0 && terms[3] > 0 && (tw == 0 || terms[4] != 0),
          fmt("cvae objective (%s): KL, V_post, K_rmarg (and R_tw) nonzero", what.c_str()).c_str(),
          "kl %g pv %g rmkl %g tw %g", terms[1], terms[2], terms[3], terms[4]);
    std::vector<floatS> grads(m->p.table.n_dense);
    copy_to_host(grads.data(), m->p.grads, grads.size() * sizeof(floatS));
    std::vector<floatS> w = params_values(m->p);
    int n_tensors = 0, n_posterior = 0, n_heads = 0;
    for (const TensorInfo& t : m->p.table.tensors) {
        if (t.group >= m->groups.n_trained) continue;
        n_tensors++;
        n_heads += t.group == m->groups.g_heads;
        n_posterior += tensor_part(t, m->groups) == PART_POSTERIOR || (lora_r && t.group == m->groups.g_adapters[m->groups.posterior]);
        double worst = 0, scale = 1e-12;
        for (int k = 0; k < 5; k++) {
            const size_t i = t.offset + hash_below((uint32_t)t.numel, 98, t.offset, k);
            const double h = 1e-5, keep = w[i];
            w[i] = keep + h; params_set(&m->p, w);
            const double up = cvae_objective(m, d, ex, eps, T, false, &baseline);
            w[i] = keep - h; params_set(&m->p, w);
            const double down = cvae_objective(m, d, ex, eps, T, false, &baseline);
            w[i] = keep; params_set(&m->p, w);
            const double numeric = (up - down) / (2 * h);
            worst = std::max(worst, fabs(numeric - grads[i]));
            scale = std::max(scale, std::max(fabs(numeric), fabs((double)grads[i])));
        }
        check(worst / scale < 1e-6, fmt("cvae objective gradient (%s): %s", what.c_str(), t.name.c_str()).c_str(),
              "largest difference %.3g of %.3g", worst, scale);
    }
    check(n_heads == 6 && n_posterior == (lora_r ? 7 * 2 * m->arch.n_layers : 2 + 7 * m->arch.n_layers),
          fmt("cvae objective gradient (lora_r=%d): the heads and the posterior are trained", lora_r).c_str(),
          "%d heads, %d posterior tensors of %d", n_heads, n_posterior, n_tensors);
}

// cvae generation: with a forced z, the prefix pass, the z slot (h_z) and " </z> <y>" as cached steps, then greedy
// tokens: each is the argmax of a full forward over the same tokens with h_z in the slot's row.
static void check_cvae_generation() {
    const int T = 24;
    Config c = tiny_config(3, T);
    c.mode = "cvae";
    c.d_z = 3;
    Model model;
    Model* m = &model;
    model_build(m, c, tiny_arch(true), 2);
    random_weights(m, 31);
    const int D = m->arch.D, V = m->arch.V;
    Data d;
    d.eos = 2;
    d.tok = tokenizer_char_default();
    d.suffix = {7, 8};
    Example e0 = cvae_example(5, 2, 8, 9, 4, V), e1 = cvae_example(3, 2, 6, 9, 5, V);
    const std::vector<std::vector<int32_t>> prompts = {{e0.ids.begin(), e0.ids.begin() + 5}, {e1.ids.begin(), e1.ids.begin() + 3}};
    const std::vector<floatS> z = {0.5, -1.0, 2.0, -0.3, 0.8, 0.1};
    const std::vector<std::vector<int32_t>> gen = generate(m, d, prompts, {1, 2}, 5, 0, &z);
    bool ok = true;
    std::string why;
    for (int b = 0; b < 2; b++) {
        std::vector<int> seq(prompts[b].begin(), prompts[b].end());
        const int slot = (int)seq.size();
        seq.push_back(d.eos);
        seq.insert(seq.end(), d.suffix.begin(), d.suffix.end());
        for (size_t k = 0; k < gen[b].size(); k++) {
            const int Tn = (int)seq.size();
            copy_to_device(m->acts.gen.ids, seq.data(), Tn * sizeof(int));
            copy_to_device(m->acts.slot_rows, &slot, sizeof(int));
            z_project(m, std::vector<floatS>(z.begin() + 3 * b, z.begin() + 3 * b + 3), 1, Stream());
            model_forward(m, generator_net(*m), &m->acts.gen, 1, Tn, nullptr, 0, false, m->acts.slot_rows, Stream());
            std::vector<floatX> logits(V);
            matmul_forward(logits.data(), m->acts.gen.hn + (size_t)(Tn - 1) * D, lm_head_weight(*m), nullptr, 1, D, V, Stream());
            const int best = (int)(std::max_element(logits.begin(), logits.end()) - logits.begin());
            if (best != gen[b][k]) { ok = false; why = fmt("sequence %d token %zu: generated %d, full forward's argmax %d", b, k, gen[b][k], best); }
            seq.push_back(gen[b][k]);
        }
        if (gen[b].empty()) { ok = false; why = "nothing generated"; }
    }
    check(ok, "cvae generation (forced z): cached prefix, slot and suffix steps == the full forward with h_z in the slot", "%s", why.c_str());
}

int main() {
    check_gradients(0, false);
    check_gradients(0, true);
    check_gradients(4, true);
    check_gradients(4, false, 0.3f);
    check_kv_cache();
    check_cvae_gradients(3);
    check_cvae_gradients(0);
    check_cvae_gradients(3, 0.6f);
    check_cvae_generation();
    return test_summary();
}
