// Whole-graph gradient checks of train_jepa.cu, in double (built with -DENABLE_FP64).
//
// On tiny configurations with random weights, a random micro-batch of object tensors (padded slots, a grid
// without objects, random adjacency, distinct context grids) and a queue of random unit vectors, the objective
//   L = infonce | mse  +  sigreg_weight * SIGReg  +  invariance terms  +  relational terms  (+ commitment)
// is differentiated by the trainer's backward pass and by central differences over sampled elements of every
// parameter tensor, log_tau included. Dropout is 0 and the pass is in evaluation mode (no codebook update), so
// L is a pure function of the weights. Without VQ every tensor is checked; with the hard VQ the straight-through
// estimator is not the derivative of L (the codes are piecewise constant), so only the tensors after the
// quantiser (aggregator, head, temperature) are.
#define TESTING
#include "../train_jepa.cu"
#include "test.h"

static Config tiny_config() {
    Config c = config_defaults();
    c.hidden_dim = 8; c.relational_layers = 2; c.relational_heads = 2; c.relational_dropout = 0;
    c.projection_dim = 6; c.num_embeddings = 5; c.context_window = 3; c.batch_size = 4; c.grad_accum_steps = 1;
    c.queue_size = 7; c.sigreg_slices = 4; c.temperature = 0.1f; c.temperature_min = 0.05f; c.temperature_max = 0.5f;
    c.inv_color = 0.7f; c.inv_translation = 0.5f; c.inv_symmetry = 0.3f; c.rel_weight = 0.5f; c.rel_self_weight = 0.25f;
    c.sigreg_weight = 0.2f; c.diag_every = 0; c.vq_enabled = 0; c.use_target_encoder = 0;
    return c;
}

static void random_objects(ObjectBatch* ob, int G, Rng* rng, bool one_empty) {
    const int N = OBJ_MAX_OBJECTS, F = OBJ_FEATURES;
    ob->G = G; ob->N = N;
    ob->features.assign((size_t)G * N * F, 0.0f); ob->mask.assign((size_t)G * N, 0); ob->adjacency.assign((size_t)G * N * N, 0);
    for (int g = 0; g < G; g++) {
        const int n = one_empty && g == 1 ? 0 : 1 + (int)(rng_u64(rng) % 5);      // objects in slots 0..n-1
        for (int i = 0; i < n; i++) {
            ob->mask[(size_t)g * N + i] = 1;
            for (int f = 0; f < F; f++) ob->features[((size_t)g * N + i) * F + f] = (float)rng_uniform(rng);
            for (int j = 0; j < i; j++)
                if (rng_uniform(rng) < 0.5) ob->adjacency[((size_t)g * N + i) * N + j] = ob->adjacency[((size_t)g * N + j) * N + i] = 1;
        }
    }
}

static MicroBatch random_micro_batch(const Model& m, Rng* rng) {
    const Dims& d = m.d;
    MicroBatch mb;
    random_objects(&mb.ctx, d.B * d.L, rng, true);
    random_objects(&mb.tgt, d.B, rng, false);
    const int kinds[3] = {LOSS_INV_COLOR, LOSS_INV_TRANSLATION, LOSS_INV_SYMMETRY};
    const float weights[3] = {m.c.inv_color, m.c.inv_translation, m.c.inv_symmetry};
    for (int i = 0; i < d.n_inv; i++) {     // a perturbed copy: the same objects, features moved a little
        mb.inv_ctx[i] = mb.ctx;
        mb.inv_tgt[i] = mb.tgt;
        for (float& f : mb.inv_ctx[i].features) f += f != 0 ? 0.1f * (float)(rng_uniform(rng) - 0.5) : 0.0f;
        for (float& f : mb.inv_tgt[i].features) f += f != 0 ? 0.1f * (float)(rng_uniform(rng) - 0.5) : 0.0f;
        mb.inv_kind[i] = kinds[i];
        mb.inv_weight[i] = weights[i];
    }
    double n = 0;
    for (uint8_t v : mb.ctx.mask) n += v;
    for (int i = 0; i < d.n_inv; i++) { for (uint8_t v : mb.inv_ctx[i].mask) n += v; for (uint8_t v : mb.inv_tgt[i].mask) n += v; }
    if (!m.c.use_target_encoder) for (uint8_t v : mb.tgt.mask) n += v;
    mb.n_valid_global = n;
    return mb;
}

static double objective(Model* m, const MicroBatch& mb, bool with_grad) {
    const PassKey key = {3, 0, false, 0};
    if (with_grad) params_zero_grads(&m->p);
    microbatch_forward_backward(m, mb, key, with_grad, Stream());
    double t[LOSS_COUNT];
    download_losses(m, t);
    return objective_of(m, t);
}

// Random weights (larger than the initialisation, so every path carries gradient) and a random queue.
static void randomize(Model* m, Rng* rng) {
    for (size_t i = 0; i < m->p.table.n_total; i++) m->p.params[i] = 0.6 * (rng_uniform(rng) - 0.5);
    for (const TensorInfo& t : m->p.table.tensors)       // the LayerNorm weights around 1
        if (t.init.kind == INIT_CONST && t.init.value == 1.0f) for (size_t j = 0; j < t.numel; j++) m->p.params[t.offset + j] += 1.0;
    m->mw.log_tau[0] = log(0.15);
    const int Q = m->c.queue_size, P = m->d.P;
    for (int q = 0; q < Q; q++) {
        double ss = 0;
        for (int j = 0; j < P; j++) { m->queue[q * P + j] = rng_normal(rng); ss += m->queue[q * P + j] * m->queue[q * P + j]; }
        for (int j = 0; j < P; j++) m->queue[q * P + j] /= sqrt(ss);
    }
    m->queue_fill = Q;
    for (size_t i = 0; i < m->p.table.n_ema; i++) m->p.ema[i] = m->p.params[i] + 0.05 * (rng_uniform(rng) - 0.5);
}

static void gradcheck(const Config& c, const char* label, bool only_after_vq) {
    Model model;
    Model* m = &model;
    model_build(m, c);
    model_init(m, 7);
    Rng rng = rng_make(11);
    randomize(m, &rng);
    const MicroBatch mb = random_micro_batch(*m, &rng);
    const double L = objective(m, mb, true);
    std::vector<double> g(m->p.grads, m->p.grads + m->p.table.n_dense);
    const double h = 1e-6;
    int checked = 0, bad = 0;
    double worst = 0;
    std::string worst_name;
    for (const TensorInfo& t : m->p.table.tensors) {
        const bool after_vq = t.name.rfind("projection_head", 0) == 0 || t.name.rfind("context_", 0) == 0 || t.name == "log_temperature";
        if (only_after_vq && !after_vq) continue;
        for (int s = 0; s < 3 && s < (int)t.numel; s++) {
            const size_t i = t.offset + (s == 0 ? 0 : rng_u64(&rng) % t.numel);
            const double w0 = m->p.params[i];
            m->p.params[i] = w0 + h;
            const double lp = objective(m, mb, false);
            m->p.params[i] = w0 - h;
            const double lm = objective(m, mb, false);
            m->p.params[i] = w0;
            const double fd = (lp - lm) / (2 * h);
            const double err = fabs(fd - g[i]) / std::max(1e-4, std::max(fabs(fd), fabs(g[i])));
            checked++;
            if (err > 1e-5) bad++;
            if (err > worst) { worst = err; worst_name = t.name + "[" + std::to_string(i - t.offset) + "]"; }
        }
    }
    double gmax = 0;
    for (double x : g) gmax = std::max(gmax, fabs(x));
    check(bad == 0 && checked > 0 && isfinite(L) && gmax > 0, fmt("jepa gradcheck %s", label).c_str(),
          "%d of %d sampled elements disagree with central differences; worst relative error %.3g at %s (L=%.6f)", bad,
          checked, worst, worst_name.c_str(), L);
}

// Checkpoints write every codebook counter, also of codebooks a configuration does not allocate (no VQ, or the
// Gumbel VQ's target): model_build must set them, whatever the memory held before.
static void test_state_initialised() {
    for (const char* mode : {"off", "gumbel"}) {
        Config c = tiny_config();
        c.vq_enabled = std::string(mode) != "off";
        c.vq_mode = c.vq_enabled ? mode : "hard";
        void* raw = malloc(sizeof(Model));
        memset(raw, 0xA5, sizeof(Model));
        Model* m = new (raw) Model;                   // default-initialised: plain fields keep the 0xA5 bytes
        model_build(m, c);
        const bool ok = m->cb.calls == 0 && m->cb.refreshes == 0 && m->tcb.calls == 0 && m->tcb.refreshes == 0 &&
                        m->queue_ptr == 0 && m->queue_fill == 0 && m->refreshed == 0;
        check(ok, fmt("model_build sets every counter a checkpoint stores (vq %s)", mode).c_str(),
              "cb %ld %ld, tcb %ld %ld", m->cb.calls, m->cb.refreshes, m->tcb.calls, m->tcb.refreshes);
        m->~Model();
        free(raw);
    }
}

int main() {
    test_state_initialised();
    {
        Config c = tiny_config();
        c.context_agg = "gru";
        gradcheck(c, "infonce + invariance + relational + SIGReg (lejepa), no target branch, gru aggregation", false);
    }
    {
        Config c = tiny_config();
        c.context_agg = "attention"; c.use_target_encoder = 1; c.sigreg_mode = "reference"; c.proj_final_relu = 1;
        gradcheck(c, "target branch, attention aggregation, reference SIGReg, final ReLU", false);
    }
    {
        Config c = tiny_config();
        c.objective = "sigreg"; c.context_agg = "mean";
        gradcheck(c, "objective=sigreg (L-JEPA on raw projections), mean aggregation", false);
    }
    {
        Config c = tiny_config();
        c.objective = "sigreg"; c.sigreg_mode = "reference"; c.use_target_encoder = 1; c.context_agg = "last";
        gradcheck(c, "objective=sigreg reference mode, last-grid aggregation", false);
    }
    {
        Config c = tiny_config();
        c.vq_enabled = 1; c.context_agg = "attention";
        gradcheck(c, "hard VQ: tensors after the quantiser", true);
    }
    return test_summary();
}
