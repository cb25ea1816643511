// Whole-graph gradient checks of train_etrm.cu, in double (built with -DENABLE_FP64).
//
// For TRM (puzzle embedding) and every ETRM encoder, on a tiny configuration with random weights and a
// random batch (including a sample without demonstrations and ignored labels), one ACT step's loss
//   L = sum_b lm_loss_b + 0.5 * sum_b q_halt_loss_b + kl_weight * KL
// is differentiated by the trainer's backward pass and by central differences over sampled elements of
// every parameter tensor (and the puzzle-embedding rows). With H_cycles = 1 every application of the net
// gets gradient, so the two must agree. With H_cycles = 2 the first cycle runs without gradient (upstream's
// 1-step gradient approximation): its gradients must equal those of an H_cycles = 1 model started from the
// carry the no-gradient cycle produced, and that run is itself checked by central differences (so the
// carry-in path of a later ACT step is covered too).
#define TESTING
#include "../train_etrm.cu"
#include "test.h"

static const int B = 3, CANVAS = 3, N_IDS = 5;

static Config tiny_config(const char* encoder) {
    Config c = config_defaults();
    c.hidden_size = 8; c.num_heads = 2; c.expansion = 1.0f; c.L_layers = 2; c.H_cycles = 1; c.L_cycles = 2;
    c.puzzle_emb_len = 2; c.encoder_type = encoder; c.encoder_num_layers = 2; c.encoder_set_layers = 1;
    c.max_demos = 3; c.global_batch_size = B; c.kl_weight = 0.3f; c.ema = 0;
    return c;
}

// Random tokens; labels with ignored positions; demo counts 3, 1, 0 (a sample without demonstrations).
static std::vector<Sample> random_batch(const Model& m, Rng* rng) {
    const int S = m.d.S;
    std::vector<Sample> batch(B);
    auto token = [&]() { return (int)(rng_u64(rng) % VOCAB); };
    for (int b = 0; b < B; b++) {
        Sample& s = batch[b];
        s.task = b; s.aug = 0; s.pair = 0; s.puzzle_id = 1 + b % (N_IDS - 1);
        for (int i = 0; i < S; i++) {
            s.inputs.push_back(token());
            s.labels.push_back(rng_uniform(rng) < 0.3 ? IGNORE_LABEL_ID : token());
        }
        s.n_demos = m.d.K ? (b == 0 ? 3 : b == 1 ? 1 : 0) : 0;
        for (int i = 0; i < s.n_demos * S; i++) {
            s.demo_inputs.push_back(rng_uniform(rng) < 0.3 ? 0 : token());     // some PAD for the pooling mask
            s.demo_labels.push_back(rng_uniform(rng) < 0.3 ? 0 : token());
        }
    }
    return batch;
}

// latent_inner_steps: the shift of the latents the trainer computed, held constant (stop-gradient) in act_step_loss.
static const std::vector<double>* g_inner_shift = nullptr;

// One ACT step from the carry in m (reset where halted) through the loss; returns L (see the top).
static double act_step_loss(Model* m, const std::vector<Sample>& batch, int* Nd_out) {
    const Dims& d = m->d;
    const int Nd = upload_micro_batch(m, batch.data(), B, 0, 1);
    const int rows = d.enc == ENC_LPN_VARIATIONAL ? Nd : B;
    latent_noise(m, rows, true, 1);
    act_reset(m->z_H, m->z_L, m->w.H_init, m->w.L_init, m->steps, m->halted, B, d.T, d.D, Stream());
    if (d.enc != ENC_NONE) encoder_forward(m, m->w, B, Nd, Stream());
    if (g_inner_shift) latent_shift_apply(m, m->w, *g_inner_shift, B, Stream());
    input_embedding_forward(m, m->w, B, m->acts.enc.context, Stream());
    decoder_forward(m, m->w, m->z_H, m->z_L, B, true, Stream());
    loss_forward(m, B, Stream());
    double L = 0;
    for (int b = 0; b < B; b++) L += m->acts.lm_loss[b] + 0.5 * m->acts.q_loss[b];
    if (d.variational) {
        double kl = 0;
        for (int i = 0; i < rows; i++) kl += m->acts.enc.kl[i];
        L += m->cfg.kl_weight * kl / std::max(1, rows);
    }
    *Nd_out = Nd;
    return L;
}

// Analytic gradients of L (the trainer's are of L / global_batch_size): parameters, and the puzzle rows.
static double backward(Model* m, const std::vector<Sample>& batch, std::vector<double>* grads, std::vector<double>* row_grads) {
    int Nd;
    params_zero_grads(&m->p);
    const double L = act_step_loss(m, batch, &Nd);
    const int rows = m->d.enc == ENC_LPN_VARIATIONAL ? Nd : B;
    decoder_backward(m, m->w, m->g, m->z_H, B, m->acts.dloss_lm, m->acts.dloss_q, Stream());
    if (m->d.enc != ENC_NONE) encoder_backward(m, m->w, m->g, B, Nd, m->cfg.kl_weight / ((float)B * std::max(1, rows)), Stream());
    grads->assign(m->p.grads, m->p.grads + m->p.table.n_dense);
    for (double& g : *grads) g *= B;
    row_grads->assign(m->acts.dprefix, m->acts.dprefix + (m->d.enc == ENC_NONE ? (size_t)B * m->d.ndim : 0));
    for (double& g : *row_grads) g *= B;
    return L;
}

// The carry before the step is restored for every evaluation (act_reset only resets halted slots).
struct Carry { std::vector<double> z_H, z_L; std::vector<int> steps; std::vector<uint8_t> halted; };
static Carry save_carry(const Model& m) {
    const size_t n = (size_t)B * m.d.T * m.d.D;
    return {std::vector<double>(m.z_H, m.z_H + n), std::vector<double>(m.z_L, m.z_L + n),
            std::vector<int>(m.steps, m.steps + B), std::vector<uint8_t>(m.halted, m.halted + B)};
}
static void restore_carry(Model* m, const Carry& c) {
    std::copy(c.z_H.begin(), c.z_H.end(), m->z_H);
    std::copy(c.z_L.begin(), c.z_L.end(), m->z_L);
    std::copy(c.steps.begin(), c.steps.end(), m->steps);
    std::copy(c.halted.begin(), c.halted.end(), m->halted);
}

// Central differences on sampled elements of every tensor (and of the used puzzle rows) against the analytic
// gradients; one check line per tensor group.
static void gradcheck(Model* m, const std::vector<Sample>& batch, const Carry& carry, const char* label, Rng* rng) {
    std::vector<double> grads, row_grads;
    restore_carry(m, carry);
    backward(m, batch, &grads, &row_grads);
    int Nd;
    // fourth-order central difference (error O(h^4)); h large enough that rounding noise stays ~1e-11
    auto derivative = [&](double* p) {
        const double h = 1e-4, saved = *p;
        double L[4];
        const double offsets[4] = {-2 * h, -h, h, 2 * h};
        for (int k = 0; k < 4; k++) {
            *p = saved + offsets[k];
            restore_carry(m, carry);
            L[k] = act_step_loss(m, batch, &Nd);
        }
        *p = saved;
        return (L[0] - 8 * L[1] + 8 * L[2] - L[3]) / (12 * h);
    };
    double worst = 0;
    std::string worst_where = "-";
    int checked = 0, nonzero = 0;
    for (const TensorInfo& t : m->p.table.tensors) {
        if (t.group != GROUP_DECODER && t.group != GROUP_ENCODER) continue;     // the puzzle rows are checked below
        double gmax = 0;
        for (size_t i = 0; i < t.numel; i++) gmax = std::max(gmax, fabs(grads[t.offset + i]));
        const int samples = (int)std::min<size_t>(t.numel, 12);
        for (int k = 0; k < samples; k++) {
            const size_t i = t.offset + (samples == (int)t.numel ? k : rng_u64(rng) % t.numel);
            double* p = &m->p.params[i];
            const double fd = derivative(p);
            const double err = fabs(fd - grads[i]) / (fabs(grads[i]) + 1e-3 * gmax + 1e-9);
            checked++;
            nonzero += grads[i] != 0;
            if (getenv("GRADCHECK_VERBOSE") && err > 1e-6) printf("  %s[%zu] fd=%.10g an=%.10g err=%.3g\n", t.name.c_str(), i - t.offset, fd, grads[i], err);
            if (!(err <= worst)) { worst = err; worst_where = t.name; }
        }
    }
    if (m->d.enc == ENC_NONE) {                 // the puzzle rows: the table entry of each sample's id
        for (int b = 0; b < B; b++)
            for (int j = 0; j < m->d.ndim; j += 3) {
                double* p = &m->w.puzzle_emb[(size_t)batch[b].puzzle_id * m->d.ndim + j];
                double an = 0;                  // rows sharing an id add up
                for (int b2 = 0; b2 < B; b2++) if (batch[b2].puzzle_id == batch[b].puzzle_id) an += row_grads[(size_t)b2 * m->d.ndim + j];
                const double fd = derivative(p);
                const double err = fabs(fd - an) / (fabs(an) + 1e-6);
                checked++;
                if (!(err <= worst)) { worst = err; worst_where = "puzzle_emb row"; }
            }
    }
    char name[160];
    snprintf(name, sizeof name, "gradcheck %s (%d elements)", label, checked);
    check(worst < 1e-5 && nonzero > checked / 2, name, "max rel error %.3g at %s; %d of %d gradients nonzero", worst,
          worst_where.c_str(), nonzero, checked);
}

// Random weights (every path active: the q head and zero-initialised projections included).
static void randomize(Model* m, Rng* rng) {
    for (const TensorInfo& t : m->p.table.tensors) {
        if (t.group == GROUP_BUFFERS) continue;
        const double scale = t.group == GROUP_PUZZLE ? 0.3 : t.shape.size() > 1 ? 0.7 / sqrt((double)t.shape.back()) : 0.3;
        for (size_t i = 0; i < t.numel; i++) m->p.params[t.offset + i] = rng_normal(rng) * scale;
    }
}

// A model of configuration c with random weights (every path active), and a random batch for it.
static std::vector<Sample> random_model(Model* m, const Config& c, Rng* rng) {
    model_build(m, c, CANVAS, N_IDS, B);
    model_init_weights(m, 7);
    randomize(m, rng);
    return random_batch(*m, rng);
}

static void test_variant(const char* encoder, const char* label, void (*tweak)(Config*)) {
    Config c = tiny_config(encoder);
    if (tweak) tweak(&c);
    Rng rng = rng_make(1234);
    Model m;
    std::vector<Sample> batch = random_model(&m, c, &rng);
    gradcheck(&m, batch, save_carry(m), label, &rng);
}

// H_cycles = 2: gradients == those of H_cycles = 1 from the carry after one cycle without gradient.
static void test_truncated_gradient(const char* encoder) {
    Config c2 = tiny_config(encoder);
    c2.H_cycles = 2;
    Rng rng = rng_make(99);
    Model m2;
    std::vector<Sample> batch = random_model(&m2, c2, &rng);
    std::vector<double> g2, r2, g1, r1;
    backward(&m2, batch, &g2, &r2);

    Config c1 = c2;
    c1.H_cycles = 1;
    Model m1;
    model_build(&m1, c1, CANVAS, N_IDS, B);
    std::copy(m2.p.params, m2.p.params + m2.p.table.n_total, m1.p.params);     // every group
    // one cycle without gradient from H_init / L_init: what the H_cycles = 2 model's first cycle computes
    const int Nd = upload_micro_batch(&m1, batch.data(), B, 0, 1);
    latent_noise(&m1, m1.d.enc == ENC_LPN_VARIATIONAL ? Nd : B, true, 1);
    act_reset(m1.z_H, m1.z_L, m1.w.H_init, m1.w.L_init, m1.steps, m1.halted, B, m1.d.T, m1.d.D, Stream());
    if (m1.d.enc != ENC_NONE) encoder_forward(&m1, m1.w, B, Nd, Stream());
    input_embedding_forward(&m1, m1.w, B, m1.acts.enc.context, Stream());
    decoder_forward(&m1, m1.w, m1.z_H, m1.z_L, B, false, Stream());
    std::fill(m1.halted, m1.halted + B, 0);               // continue from this carry
    const Carry carry = save_carry(m1);
    backward(&m1, batch, &g1, &r1);
    const double err = max_rel_error(g1.data(), g2.data(), g1.size(), 1e-12);
    char name[128];
    snprintf(name, sizeof name, "H_cycles=2 gradient == H_cycles=1 gradient from the detached carry (%s)", encoder);
    check(err < 1e-9 && max_rel_error(r1.data(), r2.data(), r1.size(), 1e-12) < 1e-9, name, "max rel error %.3g", err);
    snprintf(name, sizeof name, "%s from a carried state", encoder);
    gradcheck(&m1, batch, carry, name, &rng);
}

// Test-time latent optimisation: d(demo loss)/d(context) against central differences, and the optimisation
// keeps a latent whose demo loss is no higher than the encoder's (and lower after a few steps). With `ema` the
// evaluation weights are an EMA that differs from the raw weights, so a backward pass that read the raw weights
// would differentiate the wrong function; and the optimisation must leave the training gradients untouched.
static void test_latent_optimisation(const char* encoder, bool ema) {
    Config c = tiny_config(encoder);
    c.latent_opt_steps = 4;
    c.latent_opt_lr = 0.05f;
    c.ema = ema;
    Rng rng = rng_make(5);
    Model m;
    std::vector<Sample> batch = random_model(&m, c, &rng);
    for (size_t i = 0; ema && i < m.p.table.n_ema; i++) m.p.ema[i] = m.p.params[i] * 0.6 + 0.05 * rng_normal(&rng);
    for (size_t i = 0; i < m.p.table.n_dense; i++) m.p.grads[i] = rng_normal(&rng);     // a step's gradients
    const std::vector<double> grads_before(m.p.grads, m.p.grads + m.p.table.n_dense);
    const ModelTensors<floatX>& w = m.w_ema;                                             // what evaluation runs
    EncoderActs* e = &m.acts.enc;
    const int Nd = upload_micro_batch(&m, batch.data(), B, 0, 1);
    latent_noise(&m, m.d.enc == ENC_LPN_VARIATIONAL ? Nd : B, false, 0);
    encoder_forward(&m, w, B, Nd, Stream());
    const size_t n = (size_t)B * m.d.P * m.d.D;
    std::vector<double> context(e->context, e->context + n), loss;
    demo_loss(&m, w, batch.data(), B, e->context, true, &loss, Stream());
    std::vector<double> grad(e->opt_d_context, e->opt_d_context + n);
    auto total = [&](size_t i, double v) {
        std::vector<double> ctx = context;
        ctx[i] = v;
        demo_loss(&m, w, batch.data(), B, ctx.data(), false, &loss, Stream());
        return std::accumulate(loss.begin(), loss.end(), 0.0);
    };
    double worst = 0, gmax = 0;
    for (double g : grad) gmax = std::max(gmax, fabs(g));
    for (int k = 0; k < 24; k++) {
        const size_t i = rng_u64(&rng) % n;
        const double h = 1e-4, x = context[i];
        const double fd = (total(i, x - 2 * h) - 8 * total(i, x - h) + 8 * total(i, x + h) - total(i, x + 2 * h)) / (12 * h);
        worst = std::max(worst, fabs(fd - grad[i]) / (fabs(grad[i]) + 1e-3 * gmax + 1e-12));
    }
    char name[128];
    const char* weights = ema ? "EMA weights" : "raw weights";
    snprintf(name, sizeof name, "latent optimisation: d demo loss / d context == central differences (%s, %s)", encoder, weights);
    check(worst < 1e-5 && gmax > 0, name, "max rel error %.3g (largest gradient %.3g)", worst, gmax);
    std::copy(context.begin(), context.end(), e->context);
    double before = 0, after = 0;
    KeptLatents kept;
    latent_optimise(&m, w, batch.data(), B, &kept, &before, &after, Stream());
    snprintf(name, sizeof name, "latent optimisation lowers the demonstrations' loss (%s, %s)", encoder, weights);
    check(after < before, name, "encoder's latent %.6g, kept %.6g", before, after);
    // the two kept latents are the two lowest losses, each reproduced by a fresh demo_loss of its latent
    bool ordered = true;
    double reproduced = 0;
    for (int k = 0; k < 2; k++) {
        use_kept_latent(&m, w, kept, k, B, Stream());
        demo_loss(&m, w, batch.data(), B, e->context, false, &loss, Stream());
        for (int b = 0; b < B; b++) {
            ordered &= kept.loss[0][b] <= kept.loss[1][b] && (batch[b].n_demos == 0 || kept.latent[0] != kept.latent[1]);
            reproduced = std::max(reproduced, fabs(loss[b] - kept.loss[k][b]) / (fabs(loss[b]) + 1e-12));
        }
    }
    snprintf(name, sizeof name, "latent optimisation keeps the best two latents with their losses (%s, %s)", encoder, weights);
    check(ordered && reproduced < 1e-12, name, "ordered %d, worst relative loss difference %.3g", ordered, reproduced);
    snprintf(name, sizeof name, "latent optimisation leaves the training gradients untouched (%s, %s)", encoder, weights);
    check(std::equal(grads_before.begin(), grads_before.end(), m.p.grads), name, "the gradient buffer changed");
}

// LPN's Grad-N training (latent_inner_steps): with one step, the shift of each latent is -latent_inner_lr times
// d(demo loss)/d(latent) (central differences); it lowers the demos' loss; and the training gradient with the shift
// held constant (stop-gradient) matches central differences of the loss decoded from the encoder's latent plus that
// shift (latent_proj's weight gradient must read the shifted latent, the context must not alias the set encoder's
// normed output that its backward reads).
static void test_latent_inner_steps(const char* encoder) {
    Config c = tiny_config(encoder);
    c.latent_inner_steps = 1;
    c.latent_inner_lr = 0.3f;
    Rng rng = rng_make(17);
    Model m;
    std::vector<Sample> batch = random_model(&m, c, &rng);
    const Carry carry = save_carry(m);
    const int Nd = upload_micro_batch(&m, batch.data(), B, 0, 1);
    latent_noise(&m, m.d.enc == ENC_LPN_VARIATIONAL ? Nd : B, true, 1);
    encoder_forward(&m, m.w, B, Nd, Stream());
    std::vector<double> shift, loss;
    latent_inner_shift(&m, m.w, batch.data(), B, &shift, Stream());
    const size_t n = shift.size();
    const std::vector<double> start(encoder_latent(&m), encoder_latent(&m) + n);
    EncoderActs* e = &m.acts.enc;
    auto total = [&](const std::vector<double>& latent) {
        std::copy(latent.begin(), latent.end(), e->opt_latent);
        context_from_latent(&m, m.w, e->opt_latent, B, Stream());
        demo_loss(&m, m.w, batch.data(), B, e->context, false, &loss, Stream());
        return std::accumulate(loss.begin(), loss.end(), 0.0);
    };
    double worst = 0, smax = 0;
    for (double v : shift) smax = std::max(smax, fabs(v));
    for (int k = 0; k < 24; k++) {
        const size_t i = rng_u64(&rng) % n;
        const double h = 1e-4;
        std::vector<double> l = start;
        double L[4];
        const double offsets[4] = {-2 * h, -h, h, 2 * h};
        for (int j = 0; j < 4; j++) { l[i] = start[i] + offsets[j]; L[j] = total(l); }
        const double fd = (L[0] - 8 * L[1] + 8 * L[2] - L[3]) / (12 * h);
        worst = std::max(worst, fabs(-c.latent_inner_lr * fd - shift[i]) / (fabs(shift[i]) + 1e-3 * smax + 1e-12));
    }
    check(worst < 1e-5 && smax > 0, fmt("latent_inner_steps: shift == -lr * d demo loss / d latent (%s)", encoder).c_str(),
          "max rel error %.3g (largest shift %.3g)", worst, smax);
    std::vector<double> shifted = start;
    for (size_t i = 0; i < n; i++) shifted[i] += shift[i];
    const double before = total(start), after = total(shifted);
    check(after < before, fmt("latent_inner_steps: the step lowers the demos' loss (%s)", encoder).c_str(),
          "%.6g -> %.6g", before, after);
    g_inner_shift = &shift;
    gradcheck(&m, batch, carry, fmt("ETRM %s with a latent_inner_steps shift (stop-gradient)", encoder).c_str(), &rng);
    g_inner_shift = nullptr;
}

// The heads' output widths are 16-byte multiples in bf16 (cuBLASLt's tensor-core algorithms need that of the
// leading dimensions: V = 12 and 2 outputs are 24 and 4 bytes); the padding rows of their weights, and the
// padding columns of logits, q and their gradients, are exactly zero after a forward and backward pass.
static void test_head_padding(const char* encoder) {
    bool widths = head_width(VOCAB) == 16 && head_width(2) == 8;
    for (int n = 1; n <= 40; n++) widths &= head_width(n) >= n && head_width(n) < n + 8 && head_width(n) * 2 % 16 == 0;
    check(widths, "head_width: V=12 -> 16, 2 -> 8, 16-byte multiples in bf16", "head_width(12) = %d, head_width(2) = %d",
          head_width(VOCAB), head_width(2));
    Config c = tiny_config(encoder);
    Rng rng = rng_make(99);
    Model m;
    std::vector<Sample> batch = random_model(&m, c, &rng);
    const Dims& d = m.d;
    check(d.V_pad == head_width(d.V) && d.Q_pad == head_width(2), fmt("head widths of the model (%s)", encoder).c_str(),
          "V_pad %d, Q_pad %d", d.V_pad, d.Q_pad);
    std::vector<double> grads, row_grads;
    backward(&m, batch, &grads, &row_grads);
    bool layout = true, zero = true, used = false;
    for (const TensorInfo& t : m.p.table.tensors) {
        const bool head = t.name == "inner.lm_head.weight" || t.name == "inner.q_head.weight" || t.name == "inner.q_head.bias";
        const size_t rows = t.name == "inner.lm_head.weight" ? d.V_pad : d.Q_pad;
        if (!head) { layout &= t.reserve == t.numel; continue; }
        layout &= t.reserve == rows * (t.shape.size() > 1 ? d.D : 1);
        for (size_t i = t.offset + t.numel; i < t.offset + t.reserve; i++) zero &= m.p.params[i] == 0 && grads[i] == 0;
        for (size_t i = t.offset; i < t.offset + t.numel; i++) used |= grads[i] != 0;
    }
    const Acts& a = m.acts;
    for (int r = 0; r < B * d.T; r++)
        for (int v = d.V; v < d.V_pad; v++) zero &= a.logits[(size_t)r * d.V_pad + v] == 0 && a.dlogits[(size_t)r * d.V_pad + v] == 0;
    for (int b = 0; b < B; b++)
        for (int j = 2; j < d.Q_pad; j++) zero &= a.q[(size_t)b * d.Q_pad + j] == 0 && a.dq[(size_t)b * d.Q_pad + j] == 0;
    check(layout, fmt("parameter layout reserves V_pad / Q_pad rows for the heads only (%s)", encoder).c_str(), "differs");
    check(zero && used, fmt("head padding rows, logits / q padding columns and their gradients are exactly 0 (%s)", encoder).c_str(),
          zero ? "the heads got no gradient" : "a nonzero value");
}

int main() {
    test_head_padding("none");
    test_head_padding("hybrid_variational");
    test_variant("none", "TRM puzzle embedding", nullptr);
    test_variant("standard", "ETRM standard", nullptr);
    test_variant("standard", "ETRM standard, pre-norm, no final norm", [](Config* c) { c->encoder_norm_style = "pre"; c->set_encoder_final_norm = 0; });
    test_variant("standard", "ETRM standard, encoder_prefix_scale=1.5", [](Config* c) { c->encoder_prefix_scale = 1.5f; });
    test_variant("hybrid_standard", "ETRM hybrid_standard", nullptr);
    test_variant("hybrid_variational", "ETRM hybrid_variational", nullptr);
    test_variant("lpn_standard", "ETRM lpn_standard", nullptr);
    test_variant("lpn_variational", "ETRM lpn_variational", nullptr);
    test_truncated_gradient("none");
    test_truncated_gradient("hybrid_variational");
    test_latent_optimisation("standard", false);
    test_latent_optimisation("hybrid_variational", false);
    test_latent_optimisation("lpn_standard", false);
    test_latent_optimisation("standard", true);
    test_latent_optimisation("lpn_variational", true);
    test_latent_inner_steps("standard");
    test_latent_inner_steps("hybrid_standard");
    test_latent_inner_steps("hybrid_variational");
    test_latent_inner_steps("lpn_standard");
    test_latent_inner_steps("lpn_variational");
    return test_summary();
}
