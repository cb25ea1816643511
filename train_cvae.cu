/*
train_cvae.cu — the latent-strategy CVAE of seed report 004 on a Qwen2 language model.

The seed report studies a latent-strategy CVAE on a pretrained Qwen2.5-0.5B: synthetic problems x that several
strategies solve through different reasoning traces y, all ending in the same answer. This file holds its
language model, exactly Hugging Face's Qwen2ForCausalLM:

    h_0 = E[ids]                                                      token embedding (V, D)
    h_l = block_l(h_{l-1})  for l = 1..N                              pre-norm blocks (common/transformer.h):
          r = h + o(attn(rms_w1(h)))                                    RMSNorm with a weight; q/k/v with biases;
          out = r + down(silu(gate(rms_w2(r))) * up(rms_w2(r)))          RoPE; causal grouped-query attention
    logits = rms_w(h_N) W^T                                           W = E (tied) or lm_head.weight

trained either from scratch (a small preset, every weight trained) or with LoRA adapters on a loaded, frozen base
(PEFT's LoRA: W x + s B A x on the chosen projections). Phase 1 of the report ("entangled") is mode=lm:
p(y | x) on the mixture of strategies, the loss on the y-region of each example only,

    <bos> <x> X </x> <z> </z> <y> Y </y> <eos>          loss = mean over the tokens of " Y </y> <eos>" of -log p

(the z slot stays empty). Phase 2 ("disentangled") is mode=cvae: p(y | x) = int p(y | x, z) p(z | x) dz with a
continuous z, trained as a CVAE (section 5 has the equations):

    posterior q(z | x, y)   a second LoRA adapter on the same frozen base (from scratch: a second network), its
                            final hidden state at <eos> of "<bos> <x> X </x> <y> Y </y> <eos>" -> (mu_q, logvar_q)
    generator p(y | x, z)   the sequence above with h_z = W_z z + b_z as the input of a slot between <z> and </z>
    router p(z | x)         the generator's final hidden state at <z>, which the causal mask keeps from seeing z
    J = R / c_base + beta KL(q || p) + pv mean exp(logvar_q) + rmkl KL(moment-matched router batch || N(0, I))

Evaluation: the validation NLL on y (cvae: with z from the posterior, and the latent terms), and traces generated
from the prompts of held-out problems with a key/value cache (greedy, temperature, top-p; cvae: z sampled from the
router), scored by data/strategies.py for final-answer accuracy and for the mix of strategies the model picks; in
cvae mode also the router probe, the posterior-mu probe and the alignment of forced latents with strategies.

The file reads top to bottom:
  1. configuration          6. update (AdamW on the trained group, clipping)
  2. parameters             7. data (the strategy-sequence JSONL, tokenized)
  3. activations            8. generation and evaluation
  4. forward                9. checkpoints, Hugging Face / PEFT files, debug state
  5. loss and backward     10. main loop
It is compiled twice (common/device.h): `train_cvae_cpu` (the CPU reference) and `train_cvae` (CUDA).
*/
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <algorithm>
#include <map>
#include <string>
#include <vector>

// defines: fatal, write_file_atomic, split_commas, split_lines, file_exists, run_main
#include "common/utils.h"
// defines: floatX, floatS, Stream, device_malloc, copy_to_device, copy_to_host, device_memset
#include "common/device.h"
// defines: hash_u64, Rng, rng_make, rng_uniform
#include "common/rand.h"
// defines: ArgSpec, args_parse, args_dump
#include "common/args.h"
// defines: Logger, log_printf, wall_time
#include "common/logger.h"
// defines: JsonDoc, JsonValue, json_parse, json_read_file, json_quote
#include "common/json.h"
// defines: Tokenizer, tokenizer_load
#include "common/tokenizer.h"
// defines: Qwen2Config, qwen2_config_read, qwen2_config_json, HfWeights, hf_weights_open, hf_load_tensors, hf_parts,
//          hf_write_tensors, PeftConfig, peft_config_json, peft_write, peft_read
#include "common/huggingface.h"
// defines: checkpoint_write, checkpoint_read_newest, section_add, section_get, SectionList, Sections
#include "common/checkpoint.h"
// defines: dist, dist_sum_host, dist_sum_wait, dist_check_same
#include "common/distributed.h"
// defines: ParamTable, ParamGroup, TensorList, Params, params_alloc, params_set, params_values, params_sections, ...
#include "common/parameters.h"
// defines: Schedule, lr_schedule, clip_scale, AdamConfig, params_grad_norm_squared, params_update, ...
#include "common/optimizer.h"
// defines: Arena, arena_take, arena_alloc
#include "common/arena.h"
// defines: BlockConfig, BlockTensors, BlockLora, block_tensors, block_lora_tensors, StackShape, KvCache, stack_forward, ...
#include "common/transformer.h"
// defines: Run, run_begin, run_end, RunTiming, timing_step, mfu_field, log_progress, log_timing
#include "common/run.h"
// defines: embedding_forward, embedding_backward
#include "kernels/embedding.cuh"
// defines: rmsnorm_weighted_forward, rmsnorm_weighted_backward
#include "kernels/rmsnorm.cuh"
// defines: lm_head_loss
#include "kernels/lm_head_loss.cuh"
// defines: softmax_xent, IGNORE_LABEL_ID
#include "kernels/softmax_xent.cuh"
// defines: gather_rows, scatter_rows, put_rows
#include "kernels/rows.cuh"
// defines: reparameterize, gaussian_kl, posterior_variance, marginal_moments, router_marginal_kl, ...
#include "common/cvae_objective.h"
// defines: probe_accuracy, kmeans, alignment_one_to_one
#include "common/latent_probes.h"

// ----------------------------------------------------------------------------------------------------------
// 1. Configuration. The model comes from a preset or a Hugging Face config.json; LoRA when lora_r > 0.

typedef struct {
    std::string mode;
    // model
    std::string model, init_from, tokenizer, lora_targets, lora_adapters, adapter, load_adapter, posterior_adapter;
    int lora_r, use_rslora;
    float lora_alpha, lora_dropout;
    // the CVAE (mode=cvae)
    int d_z;
    float beta, c_base, posterior_variance_weight, router_marginal_kl_to_prior_weight, token_weighted_reconstruction_weight, head_lr;
    // optimisation
    std::string optimizer;
    int batch_size, micro_batch_size, max_steps, lr_warmup_steps, seed;
    float epochs, lr, lr_min_ratio, beta1, beta2, weight_decay, grad_clip_norm, adam_eps, muon_lr, muon_momentum;
    // data
    std::string data_dir, tasks;
    int max_seq_len, max_train_examples;
    // evaluation
    std::string eval_split;
    int eval_every, val_examples, gen_examples, gen_max_tokens, eval_only, align_examples;
    float temperature, top_p;
    // run control
    std::string checkpoint_path, debug_state;
    int resume, checkpoint_every, checkpoint_keep, save_hf, save_merged, log_every, lm_head_chunk, pad_to_max;
} Config;

static Config config_defaults() {
    Config c;
    c.mode = "lm";
    c.model = "small"; c.init_from = ""; c.tokenizer = "char"; c.lora_targets = "all"; c.lora_adapters = "default";
    c.adapter = ""; c.load_adapter = ""; c.posterior_adapter = "posterior";
    c.d_z = 8; c.beta = 0.1f; c.c_base = 0.0f; c.posterior_variance_weight = 0.0f; c.router_marginal_kl_to_prior_weight = 0.0f;
    c.token_weighted_reconstruction_weight = 0.0f;
    c.head_lr = 0.0f;
    c.lora_r = 0; c.lora_alpha = 32.0f; c.lora_dropout = 0.0f; c.use_rslora = 0;
    c.batch_size = 32; c.micro_batch_size = 0; c.max_steps = 0; c.lr_warmup_steps = 50; c.seed = 0;
    c.epochs = 1.0f; c.lr = 1e-3f; c.lr_min_ratio = 0.1f; c.beta1 = 0.9f; c.beta2 = 0.95f; c.weight_decay = 0.0f;
    c.grad_clip_norm = 1.0f; c.adam_eps = 1e-8f; c.optimizer = "adamw"; c.muon_lr = 0.02f; c.muon_momentum = 0.95f;
    c.data_dir = "data/strategies"; c.tasks = "all"; c.max_seq_len = 512; c.max_train_examples = 0;
    c.eval_split = "val"; c.eval_every = 0; c.val_examples = 64; c.gen_examples = 32; c.gen_max_tokens = 0; c.eval_only = 0;
    c.align_examples = 8;
    c.temperature = 0.0f; c.top_p = 1.0f;
    c.checkpoint_path = "out/cvae"; c.debug_state = "";
    c.resume = 0; c.checkpoint_every = 0; c.checkpoint_keep = 3; c.save_hf = 1; c.save_merged = 0; c.log_every = 10; c.lm_head_chunk = 512;
    c.pad_to_max = 0;
    return c;
}

static std::vector<ArgSpec> config_specs(Config* c) {
    return {
        {"mode", ARG_STRING, &c->mode, "lm: p(y|x) on the strategy mixture (the report's phase 1); cvae: the latent-strategy CVAE (phase 2)", "lm|cvae"},
        // model
        {"model", ARG_STRING, &c->model, "a preset (tiny, small, qwen2.5-0.5b) or a Hugging Face config.json (or its directory)", nullptr},
        {"init_from", ARG_STRING, &c->init_from, "base weights: Hugging Face safetensors (a file, or a directory, sharded or not); empty: random", nullptr},
        {"tokenizer", ARG_STRING, &c->tokenizer, "char (built in) or a tokenizer.json (Qwen's byte-level BPE)", nullptr},
        {"lora_r", ARG_INT, &c->lora_r, "LoRA rank: adapters on a frozen base (0: train every weight)", nullptr},
        {"lora_alpha", ARG_FLOAT, &c->lora_alpha, "LoRA alpha: scale alpha / r (alpha / sqrt(r) with use_rslora)", nullptr},
        {"lora_targets", ARG_STRING, &c->lora_targets, "adapted projections, comma-separated (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or all", nullptr},
        {"use_rslora", ARG_BOOL, &c->use_rslora, "rank-stabilised LoRA scale alpha / sqrt(r)", nullptr},
        {"lora_dropout", ARG_FLOAT, &c->lora_dropout, "dropout on the adapters' inputs in training (PEFT's lora_dropout)", nullptr},
        {"lora_adapters", ARG_STRING, &c->lora_adapters, "the named adapters on the frozen base, comma-separated (PEFT's adapter names)", nullptr},
        {"adapter", ARG_STRING, &c->adapter, "the adapter the model runs and trains (PEFT's active adapter; empty: the first); the others are kept as loaded", nullptr},
        {"load_adapter", ARG_STRING, &c->load_adapter, "PEFT adapter directories (adapter_config.json + adapter_model.safetensors): DIR for the active adapter, or NAME=DIR,...", nullptr},
        // the CVAE
        {"d_z", ARG_INT, &c->d_z, "cvae: the latent's dimension", nullptr},
        {"beta", ARG_FLOAT, &c->beta, "cvae: weight of KL(q(z|x,y) || p(z|x))", nullptr},
        {"c_base", ARG_FLOAT, &c->c_base, "cvae: the reconstruction's baseline, R / c_base (0: the validation NLL of the loaded model with z = 0, measured before step 1)", nullptr},
        {"posterior_variance_weight", ARG_FLOAT, &c->posterior_variance_weight, "cvae: weight of the posterior variance, mean exp(logvar_q)", nullptr},
        {"router_marginal_kl_to_prior_weight", ARG_FLOAT, &c->router_marginal_kl_to_prior_weight, "cvae: weight of KL(moment-matched batch of router Gaussians || N(0, I))", nullptr},
        {"token_weighted_reconstruction_weight", ARG_FLOAT, &c->token_weighted_reconstruction_weight, "cvae: weight of the token-weighted excess reconstruction, mean over y tokens of (b_t / c_base)(nll_t - b_t), b_t the z-free (z = 0) NLL of token t, not differentiated", nullptr},
        {"posterior_adapter", ARG_STRING, &c->posterior_adapter, "cvae with LoRA: the posterior's adapter (added to lora_adapters; the generator and router run `adapter`)", nullptr},
        {"head_lr", ARG_FLOAT, &c->head_lr, "cvae: learning rate of the router head, posterior head and latent projection (0: lr)", nullptr},
        // optimisation
        {"batch_size", ARG_INT, &c->batch_size, "sequences per optimizer step (over all processes)", nullptr},
        {"micro_batch_size", ARG_INT, &c->micro_batch_size, "sequences per forward/backward, gradients accumulated (0: the whole per-process batch)", nullptr},
        {"epochs", ARG_FLOAT, &c->epochs, "training length in passes over the training examples", nullptr},
        {"max_steps", ARG_INT, &c->max_steps, "stop after this many optimizer steps (0: from epochs)", nullptr},
        {"lr", ARG_FLOAT, &c->lr, "peak learning rate (AdamW)", nullptr},
        {"lr_warmup_steps", ARG_INT, &c->lr_warmup_steps, "linear warm-up steps", nullptr},
        {"lr_min_ratio", ARG_FLOAT, &c->lr_min_ratio, "cosine decay to lr * this (1: constant)", nullptr},
        {"beta1", ARG_FLOAT, &c->beta1, "AdamW beta1", nullptr},
        {"beta2", ARG_FLOAT, &c->beta2, "AdamW beta2", nullptr},
        {"weight_decay", ARG_FLOAT, &c->weight_decay, "decoupled weight decay", nullptr},
        {"grad_clip_norm", ARG_FLOAT, &c->grad_clip_norm, "clip the gradient norm to this (0: off)", nullptr},
        {"adam_eps", ARG_FLOAT, &c->adam_eps, "AdamW epsilon", nullptr},
        {"optimizer", ARG_STRING, &c->optimizer, "adamw, or muon: Muon on the blocks' weight matrices, AdamW on the rest (training from scratch)", "adamw|muon"},
        {"muon_lr", ARG_FLOAT, &c->muon_lr, "Muon's learning rate (the schedule scales it as lr)", nullptr},
        {"muon_momentum", ARG_FLOAT, &c->muon_momentum, "Muon's (Nesterov) momentum", nullptr},
        {"seed", ARG_INT, &c->seed, "seed of initialisation, data order and sampling", nullptr},
        // data
        {"data_dir", ARG_STRING, &c->data_dir, "data/strategies.py output: train.jsonl, val.jsonl, test.jsonl", nullptr},
        {"tasks", ARG_STRING, &c->tasks, "all, or a comma-separated list of the tasks to train and evaluate on", nullptr},
        {"max_seq_len", ARG_INT, &c->max_seq_len, "tokens per sequence at most (an example longer than this is an error)", nullptr},
        {"max_train_examples", ARG_INT, &c->max_train_examples, "use the first N training examples only (0: all)", nullptr},
        // evaluation
        {"eval_split", ARG_STRING, &c->eval_split, "the split the evaluations read", "val|test"},
        {"eval_every", ARG_INT, &c->eval_every, "evaluate (and checkpoint) every this many steps (0: only at the end)", nullptr},
        {"val_examples", ARG_INT, &c->val_examples, "examples per task for the validation NLL (0: all)", nullptr},
        {"gen_examples", ARG_INT, &c->gen_examples, "prompts per task to generate traces for (0: no generation)", nullptr},
        {"gen_max_tokens", ARG_INT, &c->gen_max_tokens, "tokens generated per trace at most (0: up to max_seq_len)", nullptr},
        {"temperature", ARG_FLOAT, &c->temperature, "sampling temperature of generation (0: greedy)", nullptr},
        {"top_p", ARG_FLOAT, &c->top_p, "nucleus sampling: the smallest set of tokens with this much probability", nullptr},
        {"align_examples", ARG_INT, &c->align_examples, "cvae: prompts per task generated with each forced latent for alignment_one_to_one (0: none; the probes and the alignment run with the generation: gen_examples > 0)", nullptr},
        {"eval_only", ARG_BOOL, &c->eval_only, "only evaluate the loaded weights", nullptr},
        // run control
        {"checkpoint_path", ARG_STRING, &c->checkpoint_path, "directory for the log, checkpoints, exports and generations", nullptr},
        {"resume", ARG_BOOL, &c->resume, "continue from the newest checkpoint in checkpoint_path", nullptr},
        {"checkpoint_every", ARG_INT, &c->checkpoint_every, "also checkpoint every this many steps (0: at evaluations and the end)", nullptr},
        {"checkpoint_keep", ARG_INT, &c->checkpoint_keep, "keep the newest N checkpoints (0: all)", nullptr},
        {"save_hf", ARG_BOOL, &c->save_hf, "with each checkpoint, export Hugging Face weights (full training) or a PEFT adapter (LoRA)", nullptr},
        {"save_merged", ARG_BOOL, &c->save_merged, "LoRA: also export the base with the active adapter merged in, as Hugging Face weights", nullptr},
        {"debug_state", ARG_STRING, &c->debug_state, "write weights, batch, logits, loss and gradients of the first step of this run (after a resume: the step after the checkpoint; safetensors, HF/PEFT names)", nullptr},
        {"log_every", ARG_INT, &c->log_every, "log a training line every this many steps", nullptr},
        {"lm_head_chunk", ARG_INT, &c->lm_head_chunk, "rows of logits that exist at once in the lm head's loss", nullptr},
        {"pad_to_max", ARG_BOOL, &c->pad_to_max, "pad every micro-batch to max_seq_len (benchmarks at a fixed length)", nullptr},
    };
}

// The Qwen2 architecture (the fields of Hugging Face's Qwen2Config that the model uses).
typedef struct {
    int D, n_layers, NH, NKV, HD, I, V, max_pos;
    double rope_theta, eps;          // as the config.json has them (the kernels take them as float)
    bool tied;
    int bos, eos;                    // the config's token ids (-1: none), kept for the exports
    std::string source;              // the preset name or the config.json it was read from
} Arch;

// Presets: Qwen2.5-0.5B as published (config.json of Qwen/Qwen2.5-0.5B), and two small shapes for training from
// scratch on a CPU (their vocabulary is the tokenizer's, rounded up to a multiple of 64 as Qwen pads its own).
static bool arch_preset(const std::string& name, int tokenizer_vocab, Arch* a) {
    const int V_small = CEIL_DIV(tokenizer_vocab, 64) * 64;
    if (name == "qwen2.5-0.5b") *a = {896, 24, 14, 2, 64, 4864, 151936, 32768, 1e6, 1e-6, true, 151643, 151643, name};
    else if (name == "small") *a = {128, 4, 4, 2, 32, 352, V_small, 4096, 1e4, 1e-6, true, -1, -1, name};
    else if (name == "tiny") *a = {64, 2, 4, 2, 16, 192, V_small, 4096, 1e4, 1e-6, true, -1, -1, name};
    else return false;
    return true;
}

static unsigned lora_mask_parse(const std::string& targets) {
    if (targets == "all") return (1u << LORA_SITES) - 1;
    unsigned mask = 0;
    for (const std::string& t : split_commas(targets)) {
        int site = -1;
        for (int s = 0; s < LORA_SITES; s++) if (t == LORA_SITE_NAMES[s]) site = s;
        if (site < 0) fatal("lora_targets: '%s' is not a projection of a Qwen2 block (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, or all)", t.c_str());
        if (mask >> site & 1) fatal("lora_targets: '%s' is listed twice", t.c_str());
        mask |= 1u << site;
    }
    if (!mask) fatal("lora_targets: no projection given");
    return mask;
}

// The adapters' names: distinct, 1..64 characters of [A-Za-z0-9_-] (a name is also a directory of the export), at
// most 8; in cvae mode the posterior's adapter is added when lora_adapters does not name it.
static std::vector<std::string> adapter_names(const Config& c) {
    std::vector<std::string> names = split_commas(c.lora_adapters);
    if (c.mode == "cvae" && std::find(names.begin(), names.end(), c.posterior_adapter) == names.end())
        names.push_back(c.posterior_adapter);
    if (names.empty() || names.size() > 8) fatal("lora_adapters=%s: expected 1..8 adapter names", c.lora_adapters.c_str());
    for (size_t i = 0; i < names.size(); i++) {
        const std::string& n = names[i];
        if (n.empty() || n.size() > 64 || n.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") != std::string::npos)
            fatal("lora_adapters: '%s' is not an adapter name (1..64 letters, digits, '_' or '-')", n.c_str());
        if (std::find(names.begin(), names.begin() + i, n) != names.begin() + i) fatal("lora_adapters: '%s' is listed twice", n.c_str());
    }
    return names;
}

// The index of the active adapter (`adapter`, or the first).
static int active_adapter(const Config& c) {
    const std::vector<std::string> names = adapter_names(c);
    if (c.adapter.empty()) return 0;
    auto it = std::find(names.begin(), names.end(), c.adapter);
    if (it == names.end()) fatal("adapter=%s is not one of lora_adapters=%s", c.adapter.c_str(), c.lora_adapters.c_str());
    return (int)(it - names.begin());
}

// The index of the posterior's adapter (cvae with LoRA), else -1.
static int posterior_adapter(const Config& c) {
    if (c.mode != "cvae" || c.lora_r == 0) return -1;
    const std::vector<std::string> names = adapter_names(c);
    return (int)(std::find(names.begin(), names.end(), c.posterior_adapter) - names.begin());
}

// load_adapter as (adapter index, directory) pairs: "DIR" (the active adapter) or "NAME=DIR,NAME=DIR".
static std::vector<std::pair<int, std::string>> adapter_sources(const Config& c) {
    std::vector<std::pair<int, std::string>> out;
    if (c.load_adapter.empty()) return out;
    const std::vector<std::string> names = adapter_names(c);
    if (c.load_adapter.find('=') == std::string::npos) return {{active_adapter(c), c.load_adapter}};
    for (const std::string& item : split_commas(c.load_adapter)) {
        const size_t eq = item.find('=');
        const std::string name = item.substr(0, eq);
        auto it = std::find(names.begin(), names.end(), name);
        if (eq == std::string::npos || it == names.end())
            fatal("load_adapter: '%s': expected NAME=DIR with NAME one of lora_adapters=%s", item.c_str(), c.lora_adapters.c_str());
        for (const auto& p : out)
            if (p.first == (int)(it - names.begin())) fatal("load_adapter: adapter '%s' is given twice", name.c_str());
        out.push_back({(int)(it - names.begin()), item.substr(eq + 1)});
    }
    return out;
}

// c_base divides the reconstruction: a value outside this range (a baseline NLL per token) would swamp or erase it.
#define C_BASE_MIN 1e-6
#define C_BASE_MAX 1e6
static bool c_base_plausible(double c_base) { return c_base >= C_BASE_MIN && c_base <= C_BASE_MAX; }

static void config_validate(const Config& c) {
    if (c.batch_size < 1 || c.batch_size > 1 << 20) fatal("batch_size=%d: expected 1..%d", c.batch_size, 1 << 20);
    if (c.micro_batch_size < 0) fatal("micro_batch_size=%d: expected >= 0", c.micro_batch_size);
    if (c.max_seq_len < 8 || c.max_seq_len > 1 << 16) fatal("max_seq_len=%d: expected 8..65536", c.max_seq_len);
    if (c.lora_r < 0 || c.lora_r > 4096) fatal("lora_r=%d: expected 0 (no LoRA) or a rank 1..4096", c.lora_r);
    if (c.lora_r > 0 && !(c.lora_alpha > 0)) fatal("lora_alpha=%g: expected > 0", c.lora_alpha);
    if (c.lora_r > 0) lora_mask_parse(c.lora_targets);
    if (!(c.lora_dropout >= 0 && c.lora_dropout < 1)) fatal("lora_dropout=%g: expected in [0, 1)", c.lora_dropout);
    if (c.lora_dropout > 0 && !c.debug_state.empty()) fatal("debug_state needs lora_dropout=0 (a replay cannot draw our dropout masks)");
    if (c.lora_r == 0 && !c.load_adapter.empty()) fatal("load_adapter=%s needs lora_r > 0 (the adapter's rank)", c.load_adapter.c_str());
    if (c.lora_r > 0) {
        adapter_names(c);
        if (active_adapter(c) == posterior_adapter(c))
            fatal("adapter=%s is the posterior's adapter (posterior_adapter=%s): the generator needs its own",
                  adapter_names(c)[active_adapter(c)].c_str(),
                  c.posterior_adapter.c_str());
        adapter_sources(c);
    }
    if (c.mode == "cvae") {
        if (c.d_z < 1 || c.d_z > 256) fatal("d_z=%d: expected a latent dimension 1..256", c.d_z);
        if (!(c.beta >= 0) || !(c.c_base >= 0) || !(c.posterior_variance_weight >= 0) || !(c.router_marginal_kl_to_prior_weight >= 0) ||
            !(c.token_weighted_reconstruction_weight >= 0))
            fatal("beta=%g, c_base=%g, posterior_variance_weight=%g, router_marginal_kl_to_prior_weight=%g, "
                  "token_weighted_reconstruction_weight=%g: expected >= 0 (c_base 0: measured)", c.beta, c.c_base,
                  c.posterior_variance_weight, c.router_marginal_kl_to_prior_weight, c.token_weighted_reconstruction_weight);
        if (c.c_base != 0 && !c_base_plausible(c.c_base))
            fatal("c_base=%g: expected a baseline NLL per token in [%g, %g] (0: measured)", c.c_base, C_BASE_MIN, C_BASE_MAX);
        if (!(c.head_lr >= 0 && c.head_lr <= 1)) fatal("head_lr=%g: expected in [0, 1] (0: lr)", c.head_lr);
        if (c.align_examples < 0) fatal("align_examples=%d: expected >= 0", c.align_examples);
    }
    if (!(c.lr > 0 && c.lr <= 1)) fatal("lr=%g: expected in (0, 1]", c.lr);
    if (c.optimizer == "muon" && c.lora_r > 0) fatal("optimizer=muon trains the base model's matrices; LoRA adapters (lora_r=%d) train with adamw", c.lora_r);
    if (!(c.muon_lr > 0 && c.muon_lr <= 1) || !(c.muon_momentum >= 0 && c.muon_momentum < 1))
        fatal("muon_lr=%g, muon_momentum=%g: expected muon_lr in (0, 1], muon_momentum in [0, 1)", c.muon_lr, c.muon_momentum);
    if (!(c.epochs > 0) && c.max_steps <= 0) fatal("epochs=%g: expected > 0 (or max_steps > 0)", c.epochs);
    if (c.max_steps < 0 || c.lr_warmup_steps < 0 || c.max_train_examples < 0 || c.eval_every < 0 || c.val_examples < 0 ||
        c.gen_examples < 0 || c.gen_max_tokens < 0 || c.checkpoint_every < 0 || c.checkpoint_keep < 0)
        fatal("max_steps, lr_warmup_steps, max_train_examples, eval_every, val_examples, gen_examples, gen_max_tokens, "
              "checkpoint_every and checkpoint_keep must be >= 0");
    if (!(c.lr_min_ratio >= 0 && c.lr_min_ratio <= 1)) fatal("lr_min_ratio=%g: expected in [0, 1]", c.lr_min_ratio);
    if (!(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1)) fatal("beta1=%g, beta2=%g: expected in [0, 1)", c.beta1, c.beta2);
    if (!(c.weight_decay >= 0 && c.grad_clip_norm >= 0 && c.adam_eps > 0)) fatal("weight_decay and grad_clip_norm must be >= 0, adam_eps > 0");
    if (!(c.temperature >= 0) || !(c.top_p > 0 && c.top_p <= 1)) fatal("temperature=%g, top_p=%g: expected temperature >= 0, top_p in (0, 1]", c.temperature, c.top_p);
    if (c.log_every < 1) fatal("log_every=%d: expected >= 1", c.log_every);
    if (c.lm_head_chunk < 1) fatal("lm_head_chunk=%d: expected >= 1", c.lm_head_chunk);
}

// The architecture of `model`: a preset, or a Hugging Face config.json (a file, or the directory holding it).
static Arch arch_resolve(const std::string& model, int tokenizer_vocab) {
    Arch a;
    if (arch_preset(model, tokenizer_vocab, &a)) return a;
    const std::string path = is_directory(model) ? model + "/config.json" : model;
    if (!file_exists(path.c_str()))
        fatal("model=%s: not a preset (tiny, small, qwen2.5-0.5b) and %s does not exist", model.c_str(), path.c_str());
    const Qwen2Config q = qwen2_config_read(path.c_str());
    a = {q.hidden_size, q.num_hidden_layers, q.num_attention_heads, q.num_key_value_heads, q.head_dim, q.intermediate_size,
         q.vocab_size, q.max_position_embeddings, q.rope_theta, q.rms_norm_eps, q.tie_word_embeddings, q.bos_token_id,
         q.eos_token_id, path};
    return a;
}

// The Hugging Face configuration of an architecture (for exports and the debug state).
static Qwen2Config arch_hf_config(const Arch& a) {
    Qwen2Config q = Qwen2Config();
    q.hidden_size = a.D; q.num_hidden_layers = a.n_layers; q.num_attention_heads = a.NH; q.num_key_value_heads = a.NKV;
    q.head_dim = a.HD; q.intermediate_size = a.I; q.vocab_size = a.V; q.max_position_embeddings = a.max_pos;
    q.rope_theta = a.rope_theta; q.rms_norm_eps = a.eps; q.tie_word_embeddings = a.tied;
    q.bos_token_id = a.bos;
    q.eos_token_id = a.eos;
    return q;
}

static BlockConfig arch_block(const Arch& a) {
    BlockConfig b;
    b.D = a.D; b.NH = a.NH; b.NKV = a.NKV; b.HD = a.HD; b.I = a.I;
    b.pre_norm = true; b.norm_weight = true; b.qkv_bias = true; b.causal = true; b.eps = (float)a.eps;
    return b;
}

// ----------------------------------------------------------------------------------------------------------
// 2. Parameters, under Hugging Face's names (q/k/v and gate/up fused, see common/huggingface.h for the mapping).
//    Groups: with LoRA, the adapters (AdamW) and the frozen base; without, the base (AdamW), and with optimizer=muon
//    the blocks' weight matrices in a group of their own that Muon trains (the embedding, lm head, norms and biases
//    stay with AdamW, as Muon's authors use it).
//    In cvae mode, also the posterior network (with LoRA: its own adapter on the shared frozen base; from scratch: a
//    second network of the same shape under "posterior.") and the three heads, in a group of their own (head_lr).
//    Initialisation from scratch as Hugging Face's: linear layers and the embedding with std 0.02 (uniform here),
//    biases 0, norm weights 1; LoRA as PEFT (A uniform in +-1/sqrt(in), B = 0). The router and posterior heads
//    start at 0, so that q = p = N(0, I) at the start (KL 0, log sigma^2 = 0), the latent projection at std 0.02.

// The body of a causal LM: embedding, blocks, final norm (the lm head is the generator's alone).
template <typename T> struct Body {
    T* embed;                              // (V, D) model.embed_tokens.weight
    std::vector<BlockTensors<T>> blocks;   // model.layers.<l>.*
    T* norm;                               // (D) model.norm.weight
};

template <typename T> struct ModelTensors {
    Body<T> base;                          // the generator (and router); with LoRA also the posterior's base
    T* lm_head;                            // (V, D) lm_head.weight, or null when tied to the embedding
    std::vector<std::vector<BlockLora<T>>> lora;   // [adapter][block] (none without LoRA)
    Body<T> posterior;                     // cvae from scratch: the posterior's own network "posterior.model.*"
    T *router_w, *router_b;                // (2 d_z, D), (2 d_z) cvae.router_head: [mu_p, logvar_p] at <z>
    T *posterior_w, *posterior_b;          // (2 d_z, D), (2 d_z) cvae.posterior_head: [mu_q, logvar_q] at <eos>
    T *z_proj_w, *z_proj_b;                // (D, d_z), (D) cvae.z_proj: h_z = W z + b, the z slot's input
};

typedef struct {
    bool lora, cvae;
    int n_trained;                         // groups 0..n_trained-1 are trained
    std::vector<int> g_adapters;           // each adapter's group (none without LoRA)
    int active;                            // the adapter the generator runs
    int posterior;                         // the adapter the posterior runs (cvae with LoRA), else -1
    int g_base, g_matrices;                // the base weights' group, and that of the blocks' matrices (Muon's)
    int g_heads;                           // the cvae heads' group, else -1
    unsigned lora_mask;
} Groups;

template <typename T>
void body_tensors(TensorList<T>& list, Body<T>* b, const Arch& a, const Groups& gr, const std::string& prefix) {
    const Init normal = init_uniform(0.02f * sqrtf(3.0f));          // std 0.02
    list.group(gr.g_base);
    list.add(&b->embed, prefix + "model.embed_tokens.weight", {a.V, a.D}, normal);
    b->blocks.resize(a.n_layers);
    for (int l = 0; l < a.n_layers; l++)
        block_tensors(list, &b->blocks[l], arch_block(a), false, prefix + "model.layers." + std::to_string(l) + ".",
                      "self_attn.", [&](int) { return normal; }, gr.g_matrices);
    list.add(&b->norm, prefix + "model.norm.weight", {a.D}, init_const(1.0f));
}

template <typename T>
void model_tensors(TensorList<T>& list, ModelTensors<T>* t, const Arch& a, const Groups& gr, int lora_r, int d_z) {
    body_tensors(list, &t->base, a, gr, "");
    t->lm_head = nullptr;
    if (!a.tied) list.add(&t->lm_head, "lm_head.weight", {a.V, a.D}, init_uniform(0.02f * sqrtf(3.0f)));
    t->lora.assign(gr.g_adapters.size(), std::vector<BlockLora<T>>(a.n_layers));
    for (size_t k = 0; k < gr.g_adapters.size(); k++) {      // every adapter under PEFT's (saved) names
        list.group(gr.g_adapters[k]);
        for (int l = 0; l < a.n_layers; l++)
            block_lora_tensors(list, &t->lora[k][l], arch_block(a), gr.lora_mask, lora_r, "model.layers." + std::to_string(l) + ".");
    }
    t->posterior = Body<T>();
    t->router_w = t->router_b = t->posterior_w = t->posterior_b = t->z_proj_w = t->z_proj_b = nullptr;
    if (!gr.cvae) return;
    if (!gr.lora) body_tensors(list, &t->posterior, a, gr, "posterior.");
    list.group(gr.g_heads);
    list.add(&t->router_w, "cvae.router_head.weight", {2 * d_z, a.D}, init_zero());
    list.add(&t->router_b, "cvae.router_head.bias", {2 * d_z}, init_zero());
    list.add(&t->posterior_w, "cvae.posterior_head.weight", {2 * d_z, a.D}, init_zero());
    list.add(&t->posterior_b, "cvae.posterior_head.bias", {2 * d_z}, init_zero());
    list.add(&t->z_proj_w, "cvae.z_proj.weight", {a.D, d_z}, init_uniform(0.02f * sqrtf(3.0f)));
    list.add(&t->z_proj_b, "cvae.z_proj.bias", {a.D}, init_zero());
}

// Groups, the trained ones first (Adam's, then Muon's, then the frozen; see common/parameters.h). With LoRA: the
// generator's adapter, [cvae: the posterior's adapter, the heads], the frozen base, the other adapters (frozen:
// kept as loaded). From scratch: the base (AdamW; with Muon the blocks' matrices after the heads), [the heads].
static Groups model_groups(const Config& c) {
    Groups g;
    g.lora = c.lora_r > 0;
    g.cvae = c.mode == "cvae";
    g.lora_mask = g.lora ? lora_mask_parse(c.lora_targets) : 0;
    g.active = g.lora ? active_adapter(c) : 0;
    g.posterior = posterior_adapter(c);
    g.g_heads = -1;
    int n = 0;
    if (g.lora) {
        n = g.cvae ? 2 : 1;                                    // the generator's and the posterior's adapters
        if (g.cvae) g.g_heads = n++;
        g.n_trained = n;
        g.g_base = g.g_matrices = n++;
        const int n_adapters = (int)adapter_names(c).size();
        for (int k = 0; k < n_adapters; k++) g.g_adapters.push_back(k == g.active ? 0 : k == g.posterior ? 1 : n++);
    } else {
        g.g_base = n++;
        if (g.cvae) g.g_heads = n++;
        g.g_matrices = c.optimizer == "muon" ? n++ : g.g_base;
        g.n_trained = n;
    }
    return g;
}

static ParamTable model_table(const Arch& a, const Config& c) {
    const Groups gr = model_groups(c);
    std::vector<ParamGroup> groups(gr.lora ? gr.g_base + 1 + gr.g_adapters.size() - (gr.cvae ? 2 : 1) : gr.n_trained);
    if (gr.lora) {
        const std::vector<std::string> names = adapter_names(c);
        for (size_t k = 0; k < names.size(); k++)
            groups[gr.g_adapters[k]] = param_group("adapter." + names[k], gr.g_adapters[k] < gr.n_trained ? GROUP_ADAM : GROUP_FROZEN);
        groups[gr.g_base] = param_group("base", GROUP_FROZEN);
    } else {
        groups[gr.g_base] = param_group("base", GROUP_ADAM);
        if (gr.g_matrices != gr.g_base) {
            groups[gr.g_matrices] = param_group("matrices", GROUP_MUON);
            groups[gr.g_matrices].lr_scale = c.muon_lr / c.lr;
        }
    }
    if (gr.cvae) {
        groups[gr.g_heads] = param_group("heads", GROUP_ADAM);
        if (c.head_lr > 0) groups[gr.g_heads].lr_scale = c.head_lr / c.lr;
    }
    return param_table<ModelTensors<floatX>>(groups, [&](TensorList<floatX>& list, ModelTensors<floatX>* t) {
        model_tensors(list, t, a, gr, c.lora_r, c.d_z);
    });
}

// ----------------------------------------------------------------------------------------------------------
// 3. Activations of one micro-batch of up to mb sequences of up to T tokens (one arena): the generator's pass and,
//    in cvae mode, the posterior's; and the key/value cache of generation (mb sequences of T positions).

// What a pass of a network over (B, T) tokens keeps.
typedef struct {
    int* ids;                    // (mb, T) tokens
    floatX* x;                   // (mb, T, D) token embeddings (the z slot's row replaced by h_z): the stack's input
    StackActs stack;
    floatX* hn;                  // (mb, T, D) the final RMSNorm's output
    floatS* rstd;                // (mb, T)
} PassActs;

typedef struct {
    PassActs gen, post;          // the generator's (and router's) pass; the posterior's (cvae)
    int* targets;                // (mb, T) the next token where it is in the y-region, else -100
    floatS* loss;                // (mb, T) -log p of each target (0 where none)
    int* argmax;                 // (mb, T)
    floatX* logits;              // (lm_head_chunk, V) one chunk of logits (the loss overwrites it with its gradient)
    floatX* dhn;                 // (mb, T, D)
    BlockScratch bs;
    // generation
    uint8_t* prompt_mask;        // (mb, P) the left-padded prompts' real tokens
    uint8_t* key_mask;           // (mb, T) the cache positions each sequence's new token may see
    int *last_rows, *no_labels;  // (mb) the row of each prompt's last token; -100 (argmax without a loss)
    // the CVAE's latent (rows: index into the (mb, T) rows of a pass)
    int *slot_rows, *router_rows, *post_rows;   // (mb) the z slot, the <z> token before it, the posterior's <eos>
    int* iota;                   // (mb) 0, 1, ..., mb-1: the rows of a one-token decoding step
    floatX *pooled_p, *pooled_q; // (mb, D) the final hidden state at <z> (router), at <eos> (posterior)
    floatX* head;                // (mb, 2 d_z) a head's output [mu, logvar]
    floatX* d_head;              // (mb, 2 d_z) its gradient
    floatX* d_pooled;            // (mb, D)
    floatX *z, *dz;              // (mb, d_z)
    floatX *hz, *d_hz;           // (mb, D) h_z = W z + b and its gradient
    floatX* zeros;               // (mb, D) zeros (cleared gradient rows)
    floatS* row_scale;           // (mb, T) the y tokens' loss weights (token-weighted reconstruction)
} Acts;

typedef struct {
    Config cfg;
    Arch arch;
    BlockConfig block;
    Groups groups;
    int B_local, mb, T;                      // sequences per step on this process, per micro-batch; tokens at most
    Params p;
    ModelTensors<floatX> w;
    ModelTensors<floatS> g;                  // gradients (null fields: frozen)
    floatS *rope_cos, *rope_sin;             // (T, HD)
    float lora_scale;
    uint64_t lora_seed;                      // the dropout masks of the current micro-batch (training)
    Acts acts;
    void* acts_memory;
    size_t acts_bytes;
    KvCache kv;                              // generation's key/value cache, (mb, T, NKV HD) per layer
    double c_base;                           // cvae: the reconstruction's baseline
} Model;

// A network the model runs: the generator (the base with the generator's adapter), or the posterior (the base with
// the posterior's adapter; from scratch, a body of its own).
typedef struct {
    const Body<floatX>* w;
    const Body<floatS>* g;
    int adapter;                             // -1: none
} Net;

static Net generator_net(const Model& m) { return {&m.w.base, &m.g.base, m.groups.lora ? m.groups.active : -1}; }
static Net posterior_net(const Model& m) {
    return m.groups.lora ? Net{&m.w.base, &m.g.base, m.groups.posterior} : Net{&m.w.posterior, &m.g.posterior, -1};
}

// The stack of a network over B sequences of T tokens (positions pos.. when decoding with the cache); in training
// with LoRA's dropout (masks from m.lora_seed, and the adapter).
static StackShape stack_shape(const Model& m, const Net& net, int B, int T, KvCache* kv, int pos, bool training) {
    StackShape s = StackShape();
    s.cfg = m.block;
    s.B = B; s.T = T; s.n_layers = m.arch.n_layers;
    s.rope_cos = m.rope_cos; s.rope_sin = m.rope_sin;
    if (net.adapter >= 0)
        s.lora = {&m.w.lora[net.adapter], &m.g.lora[net.adapter], m.groups.lora_mask, m.cfg.lora_r, m.lora_scale,
                  training ? m.cfg.lora_dropout : 0.0f, hash_u64(m.lora_seed, (uint64_t)net.adapter)};
    s.kv = kv; s.pos = pos;
    if (kv) s.key_mask = m.acts.prompt_mask;  // the prompt's padding (decoding reads kv->key_mask instead)
    return s;
}

static void pass_layout(Arena* a, PassActs* p, const Model& m, const Net& net) {
    const size_t N = (size_t)m.mb * m.T, D = m.arch.D;
    p->ids = arena_take<int>(a, N);
    p->x = arena_take<floatX>(a, N * D);
    stack_layout(a, &p->stack, stack_shape(m, net, m.mb, m.T, nullptr, 0, true));
    p->hn = arena_take<floatX>(a, N * D);
    p->rstd = arena_take<floatS>(a, N);
}

static void acts_layout(Arena* a, Model* m) {
    const size_t N = (size_t)m->mb * m->T, D = m->arch.D, mb = m->mb, dz = m->cfg.d_z;
    Acts* ac = &m->acts;
    *ac = Acts();
    pass_layout(a, &ac->gen, *m, generator_net(*m));
    if (m->groups.cvae) pass_layout(a, &ac->post, *m, posterior_net(*m));
    ac->targets = arena_take<int>(a, N);
    ac->loss = arena_take<floatS>(a, N);
    ac->argmax = arena_take<int>(a, N);
    const size_t chunk = std::max<size_t>(std::min<size_t>(m->cfg.lm_head_chunk, N), m->mb);   // (generation: mb rows)
    ac->logits = arena_take<floatX>(a, chunk * m->arch.V);
    ac->dhn = arena_take<floatX>(a, N * D);
    scratch_layout(a, &ac->bs, m->block, N, 0, 0, m->cfg.lora_r, m->cfg.lora_dropout > 0);
    ac->prompt_mask = arena_take<uint8_t>(a, N);
    ac->key_mask = arena_take<uint8_t>(a, N);
    ac->last_rows = arena_take<int>(a, mb);
    ac->no_labels = arena_take<int>(a, mb);
    if (!m->groups.cvae) return;
    ac->slot_rows = arena_take<int>(a, mb);
    ac->router_rows = arena_take<int>(a, mb);
    ac->post_rows = arena_take<int>(a, mb);
    ac->iota = arena_take<int>(a, mb);
    ac->pooled_p = arena_take<floatX>(a, mb * D);
    ac->pooled_q = arena_take<floatX>(a, mb * D);
    ac->head = arena_take<floatX>(a, mb * 2 * dz);
    ac->d_head = arena_take<floatX>(a, mb * 2 * dz);
    ac->d_pooled = arena_take<floatX>(a, mb * D);
    ac->z = arena_take<floatX>(a, mb * dz);
    ac->dz = arena_take<floatX>(a, mb * dz);
    ac->hz = arena_take<floatX>(a, mb * D);
    ac->d_hz = arena_take<floatX>(a, mb * D);
    ac->zeros = arena_take<floatX>(a, mb * D);
    ac->row_scale = arena_take<floatS>(a, N);
}

static void model_build(Model* m, const Config& c, const Arch& arch, int B_local) {
    m->cfg = c;
    m->arch = arch;
    m->block = arch_block(arch);
    block_config_check(m->block);
    m->groups = model_groups(c);
    m->B_local = B_local;
    m->mb = c.micro_batch_size > 0 ? std::min(c.micro_batch_size, B_local) : B_local;
    if (B_local % m->mb) fatal("micro_batch_size=%d must divide the per-process batch %d", m->mb, B_local);
    m->T = c.max_seq_len;
    if (m->T > arch.max_pos) fatal("max_seq_len=%d exceeds the model's max_position_embeddings %d", m->T, arch.max_pos);
    m->lora_scale = c.lora_r > 0 ? c.lora_alpha / (c.use_rslora ? sqrtf((float)c.lora_r) : (float)c.lora_r) : 0.0f;
    m->lora_seed = 0;
    m->c_base = c.c_base;

    params_alloc(&m->p, model_table(arch, c), false, 0.0f);
    const ParamTable& table = m->p.table;
    TensorList<floatX> w = tensor_bind(table, param_bases(table, m->p.params, BUF_PARAMS));
    model_tensors(w, &m->w, arch, m->groups, c.lora_r, c.d_z);
    TensorList<floatS> g = tensor_bind(table, param_bases(table, m->p.grads, BUF_GRADS));
    model_tensors(g, &m->g, arch, m->groups, c.lora_r, c.d_z);

    std::vector<floatS> cs((size_t)m->T * arch.HD), sn(cs.size());
    rope_tables(cs.data(), sn.data(), m->T, arch.HD, (float)arch.rope_theta);
    m->rope_cos = (floatS*)device_malloc(cs.size() * sizeof(floatS), "RoPE table");
    m->rope_sin = (floatS*)device_malloc(sn.size() * sizeof(floatS), "RoPE table");
    copy_to_device(m->rope_cos, cs.data(), cs.size() * sizeof(floatS));
    copy_to_device(m->rope_sin, sn.data(), sn.size() * sizeof(floatS));
    m->acts_memory = arena_alloc([&](Arena* a) { acts_layout(a, m); }, &m->acts_bytes, "activations");
    if (m->groups.cvae) {
        std::vector<int> iota(m->mb);
        for (int b = 0; b < m->mb; b++) iota[b] = b;
        copy_to_device(m->acts.iota, iota.data(), iota.size() * sizeof(int));
        device_memset(m->acts.zeros, 0, (size_t)m->mb * arch.D * sizeof(floatX));
    }

    const size_t kv_size = (size_t)m->mb * m->T * arch.NKV * arch.HD;
    m->kv.Tmax = m->T;
    m->kv.key_mask = m->acts.key_mask;
    for (int l = 0; l < arch.n_layers; l++) {         // zeroed: masked positions are multiplied by 0, never NaN
        m->kv.k.push_back((floatX*)device_malloc(kv_size * sizeof(floatX), "key cache"));
        m->kv.v.push_back((floatX*)device_malloc(kv_size * sizeof(floatX), "value cache"));
        device_memset(m->kv.k.back(), 0, kv_size * sizeof(floatX));
        device_memset(m->kv.v.back(), 0, kv_size * sizeof(floatX));
    }
}

static void model_init_weights(Model* m, uint64_t seed) {
    Rng rng = rng_make(seed);
    params_set(&m->p, param_init_values(m->p.table, seed, &rng));
}

// The lm head's weight: the embedding when tied.
static const floatX* lm_head_weight(const Model& m) { return m.w.lm_head ? m.w.lm_head : m.w.base.embed; }
static floatS* lm_head_grad(const Model& m) { return m.w.lm_head ? m.g.lm_head : m.g.base.embed; }

// ----------------------------------------------------------------------------------------------------------
// 4. Forward: embedding, the blocks, the final norm (the lm head runs with the loss, chunk by chunk). In cvae mode
//    the generator's input at the z slot of each sequence is h_z = W z + b (acts.hz) instead of a token embedding.

// Writes pass->hn for B sequences of T tokens whose ids are in pass->ids (positions pos.. with a cache); with
// inject_rows (B row indices), those rows of the input are acts.hz.
static void model_forward(Model* m, const Net& net, PassActs* pass, int B, int T, KvCache* kv, int pos, bool training,
                          const int* inject_rows, Stream st) {
    const int D = m->arch.D;
    embedding_forward(pass->x, pass->ids, net.w->embed, B, T, D, T, 0, 1.0f, st);
    if (inject_rows) put_rows(pass->x, m->acts.hz, inject_rows, B, D, false, st);
    pass->stack.in = pass->x;
    const floatX* out = stack_forward(&pass->stack, net.w->blocks, stack_shape(*m, net, B, T, kv, pos, training), st);
    rmsnorm_weighted_forward(pass->hn, pass->rstd, out, net.w->norm, B * T, D, (float)m->arch.eps, st);
}

// A head on the final hidden state at one row of each of B sequences: pooled = hn[rows], head = pooled W^T + b
// (acts.head, (B, 2 d_z)), returned on the host as mu (B, d_z) and logvar (B, d_z).
static void head_forward(Model* m, floatX* pooled, const PassActs& pass, const int* rows, const floatX* W, const floatX* b,
                         int B, std::vector<floatS>* mu, std::vector<floatS>* logvar, Stream st) {
    const int D = m->arch.D, dz = m->cfg.d_z;
    gather_rows(pooled, pass.hn, rows, B, D, st);
    matmul_forward(m->acts.head, pooled, W, b, B, D, 2 * dz, st);
    std::vector<floatS> h((size_t)B * 2 * dz);
    download_floatX(h.data(), m->acts.head, h.size());
    mu->resize((size_t)B * dz);
    logvar->resize((size_t)B * dz);
    for (int i = 0; i < B; i++)
        for (int d = 0; d < dz; d++) {
            (*mu)[(size_t)i * dz + d] = h[(size_t)i * 2 * dz + d];
            (*logvar)[(size_t)i * dz + d] = h[(size_t)i * 2 * dz + dz + d];
        }
}

// h_z = W z + b for B latents z (host, (B, d_z)): acts.z, acts.hz.
static void z_project(Model* m, const std::vector<floatS>& z, int B, Stream st) {
    upload_floatX(m->acts.z, z.data(), (size_t)B * m->cfg.d_z);
    matmul_forward(m->acts.hz, m->acts.z, m->w.z_proj_w, m->w.z_proj_b, B, m->cfg.d_z, m->arch.D, st);
}

// ----------------------------------------------------------------------------------------------------------
// 5. Loss and backward. loss = sum over the y-region targets of -log softmax(logits)[target] / n, n the number of
//    targets in the global batch (dscale = 1 / n: the mean over the batch's y tokens, as Hugging Face's loss).

// The lm head's loss of the generator's B x T rows (acts.loss, acts.argmax), with grad its gradient in acts.dhn
// (each row's weighted by row_scale when given).
static void lm_loss(Model* m, int B, int T, float dscale, bool grad, Stream st, const floatS* row_scale = nullptr) {
    Acts* a = &m->acts;
    lm_head_loss(a->loss, a->argmax, grad ? a->dhn : nullptr, grad ? lm_head_grad(*m) : nullptr, a->gen.hn, lm_head_weight(*m),
                 a->targets, B * T, m->arch.D, m->arch.V, dscale, grad, a->logits, std::min(m->cfg.lm_head_chunk, B * T), st,
                 row_scale);
}

// The backward pass of a network from acts.dhn (the gradient of its final norm's output) to its weights. With
// slot_rows, the input gradient of those rows goes to acts.d_hz (h_z's) instead of the token embedding.
static void body_backward(Model* m, const Net& net, const PassActs& pass, int B, int T, const int* slot_rows, Stream st) {
    Acts* a = &m->acts;
    const int N = B * T, D = m->arch.D;
    const StackShape s = stack_shape(*m, net, B, T, nullptr, 0, true);
    const floatX* out = pass.stack.layers[s.n_layers - 1].out;
    rmsnorm_weighted_backward(a->bs.G, net.g->norm, a->dhn, out, net.w->norm, pass.rstd, N, D, false, st);
    stack_backward(nullptr, &pass.stack, net.w->blocks, net.g->blocks, s, a->bs, st);
    if (slot_rows) {
        gather_rows(a->d_hz, a->bs.G, slot_rows, B, D, st);
        put_rows(a->bs.G, a->zeros, slot_rows, B, D, false, st);
    }
    if (net.g->embed) embedding_backward(net.g->embed, a->bs.G, pass.ids, B, T, D, T, 0, 1.0f, st);
}

// The language model's loss of B x T rows and, with grad, the gradients of everything trained.
static void loss_and_backward(Model* m, int B, int T, float dscale, bool grad, Stream st) {
    lm_loss(m, B, T, dscale, grad, st);
    if (grad) body_backward(m, generator_net(*m), m->acts.gen, B, T, nullptr, st);
}

// The CVAE (seed report 004's phase 2). For each example, with eps ~ N(0, I):
//
//   posterior   (mu_q, logvar_q) = posterior_head(h_post[<eos>])   the posterior network over <bos> <x> X </x> <y> Y </y> <eos>
//   latent      z = mu_q + exp(logvar_q / 2) eps,   h_z = W_z z + b_z
//   generator   over <bos> <x> X </x> <z> [h_z] </z> <y> Y </y> <eos> (h_z in the z slot's input row):
//               (mu_p, logvar_p) = router_head(h[<z>])             the router p(z|x): <z> comes before the slot,
//               and the y tokens' logits                            so one causal pass gives both
//   objective   J = R / c_base + beta KL(q || p) + pv V_post + rmkl K_rmarg   (common/cvae_objective.h)
//                   + tw R_tw
//               R = the mean NLL of the batch's y tokens; KL and V_post batch means; K_rmarg of the whole batch;
//               R_tw = mean over the y tokens of (b_t / c_base)(nll_t - b_t), the token-weighted excess
//               reconstruction: b_t, the NLL of token t with z = 0, is a constant (no gradient) that weights up the
//               tokens the z-free model finds hard, the few "strategy-sensitive" ones whose NLL z can lower, against
//               the many that teacher forcing makes easy whatever z is
//
// The latent quantities of a micro-batch, on the host ((B, d_z) each; the gradients are those of J).
typedef struct {
    std::vector<floatS> mu_q, lv_q, mu_p, lv_p, eps, z;
    std::vector<floatS> dmu_q, dlv_q, dmu_p, dlv_p;
} Latents;

// The weights of J's terms and the global batch's constants they are taken over.
typedef struct {
    double recon_scale;          // 1 / (n c_base): n the y tokens of the global batch
    double tw_weight;            // R_tw's weight (its per-token weight is recon_scale * tw_weight * b_t)
    double kl_scale, pv_scale;   // beta / N, pv / (N d_z): N the examples of the global batch
    double rmkl_weight, N;       // K_rmarg's weight, and its moment sums over the N examples (null: not trained)
    const double* rmkl_sums;
} ObjectiveScales;

// The term values of a micro-batch (sums over its examples; kl and pv per example), and the squared norms of each
// weighted term's gradient with respect to the latent statistics (mu_q, logvar_q, mu_p, logvar_p).
typedef struct {
    double kl, pv;               // sum over the examples of KL(q || p) and of sum_d exp(logvar_q)
    double gn2[4];               // recon, kl, pv, rmkl
} LatentTerms;

// The posterior's and the generator's forward passes over a micro-batch whose ids are uploaded (acts.post.ids and
// post_rows, acts.gen.ids, targets, slot_rows, router_rows): fills L's mu_q, lv_q, z (from L->eps), mu_p, lv_p.
static void cvae_forward(Model* m, Latents* L, int B, int T, int Tq, bool training, Stream st) {
    Acts* a = &m->acts;
    model_forward(m, posterior_net(*m), &a->post, B, Tq, nullptr, 0, training, nullptr, st);
    head_forward(m, a->pooled_q, a->post, a->post_rows, m->w.posterior_w, m->w.posterior_b, B, &L->mu_q, &L->lv_q, st);
    L->z.resize(L->mu_q.size());
    reparameterize(L->z.data(), L->mu_q.data(), L->lv_q.data(), L->eps.data(), B, m->cfg.d_z);
    z_project(m, L->z, B, st);
    model_forward(m, generator_net(*m), &a->gen, B, T, nullptr, 0, training, a->slot_rows, st);
    head_forward(m, a->pooled_p, a->gen, a->router_rows, m->w.router_w, m->w.router_b, B, &L->mu_p, &L->lv_p, st);
}

// The latent terms of a micro-batch: their values, and the gradients of J through them into L->d*.
static LatentTerms latent_terms(Latents* L, int B, int dz, const ObjectiveScales& sc) {
    LatentTerms t = LatentTerms();
    std::vector<floatS> kl(B), v(B);
    const size_t n = (size_t)B * dz;
    std::vector<floatS> zero(n, 0);
    L->dmu_q = L->dlv_q = L->dmu_p = L->dlv_p = zero;
    // each term's gradient alone (for its norm), then added to the total
    std::vector<floatS> a_mq = zero, a_lq = zero, a_mp = zero, a_lp = zero;
    auto take = [&](int term) {
        for (size_t i = 0; i < n; i++) {
            t.gn2[term] += (double)a_mq[i] * a_mq[i] + (double)a_lq[i] * a_lq[i] + (double)a_mp[i] * a_mp[i] + (double)a_lp[i] * a_lp[i];
            L->dmu_q[i] += a_mq[i]; L->dlv_q[i] += a_lq[i]; L->dmu_p[i] += a_mp[i]; L->dlv_p[i] += a_lp[i];
            a_mq[i] = a_lq[i] = a_mp[i] = a_lp[i] = 0;
        }
    };
    gaussian_kl(kl.data(), L->mu_q.data(), L->lv_q.data(), L->mu_p.data(), L->lv_p.data(), B, dz, (floatS)sc.kl_scale,
                a_mq.data(), a_lq.data(), a_mp.data(), a_lp.data());
    take(1);
    posterior_variance(v.data(), L->lv_q.data(), B, dz, (floatS)sc.pv_scale, a_lq.data());
    take(2);
    if (sc.rmkl_sums)
        router_marginal_kl_backward(a_mp.data(), a_lp.data(), sc.rmkl_sums, sc.N, L->mu_p.data(), L->lv_p.data(), B, dz,
                                    (floatS)sc.rmkl_weight);
    take(3);
    for (int b = 0; b < B; b++) {
        t.kl += kl[b];
        t.pv += v[b];
    }
    return t;
}

// Uploads a head's gradient [dmu, dlogvar] (host, (B, d_z) each) to acts.d_head.
static void upload_head_grad(Model* m, const std::vector<floatS>& dmu, const std::vector<floatS>& dlv, int B) {
    const int dz = m->cfg.d_z;
    std::vector<floatS> h((size_t)B * 2 * dz);
    for (int i = 0; i < B; i++)
        for (int d = 0; d < dz; d++) {
            h[(size_t)i * 2 * dz + d] = dmu[(size_t)i * dz + d];
            h[(size_t)i * 2 * dz + dz + d] = dlv[(size_t)i * dz + d];
        }
    upload_floatX(m->acts.d_head, h.data(), h.size());
}

// The z-free NLL b_t of every (B, T) row (z = 0 in the slot; 0 outside the y-region): the token-weighted
// reconstruction's weights, from the generator's current weights.
static std::vector<floatS> token_baseline(Model* m, int B, int T, Stream st) {
    z_project(m, std::vector<floatS>((size_t)B * m->cfg.d_z, 0), B, st);
    model_forward(m, generator_net(*m), &m->acts.gen, B, T, nullptr, 0, false, m->acts.slot_rows, st);
    lm_loss(m, B, T, 0.0f, false, st);
    std::vector<floatS> b((size_t)B * T);
    copy_to_host(b.data(), m->acts.loss, b.size() * sizeof(floatS));
    return b;
}

// The backward pass of J over a micro-batch after cvae_forward: the y tokens' loss (acts.loss, argmax; scaled by
// sc.recon_scale, and with a baseline b (token_baseline) by 1 + tw b_t per token), then the gradients of every
// trained tensor. Returns the latent terms (gn2[0]: the reconstruction's gradient norm at mu_q, logvar_q through z).
static LatentTerms cvae_backward(Model* m, Latents* L, int B, int T, int Tq, const ObjectiveScales& sc,
                                 const std::vector<floatS>* baseline, Stream st) {
    Acts* a = &m->acts;
    const int D = m->arch.D, dz = m->cfg.d_z;
    LatentTerms t = latent_terms(L, B, dz, sc);
    // generator: the y tokens' loss, the router head's gradient added at the <z> rows, then the stack
    if (baseline) {
        std::vector<floatS> scale(baseline->size());
        for (size_t i = 0; i < scale.size(); i++) scale[i] = (floatS)(1.0 + sc.tw_weight * (*baseline)[i]);
        copy_to_device(a->row_scale, scale.data(), scale.size() * sizeof(floatS));
    }
    lm_loss(m, B, T, (float)sc.recon_scale, true, st, baseline ? a->row_scale : nullptr);
    upload_head_grad(m, L->dmu_p, L->dlv_p, B);
    matmul_backward(a->d_pooled, m->g.router_w, m->g.router_b, a->d_head, a->pooled_p, m->w.router_w, B, D, 2 * dz, false, st);
    put_rows(a->dhn, a->d_pooled, a->router_rows, B, D, true, st);
    body_backward(m, generator_net(*m), a->gen, B, T, a->slot_rows, st);
    // h_z = W z + b, and z's gradient through the reparameterisation to mu_q, logvar_q
    matmul_backward(a->dz, m->g.z_proj_w, m->g.z_proj_b, a->d_hz, a->z, m->w.z_proj_w, B, dz, D, false, st);
    std::vector<floatS> dz_host((size_t)B * dz), r_mu((size_t)B * dz, 0), r_lv((size_t)B * dz, 0);
    download_floatX(dz_host.data(), a->dz, dz_host.size());
    reparameterize_backward(r_mu.data(), r_lv.data(), dz_host.data(), L->lv_q.data(), L->eps.data(), B, dz);
    for (size_t i = 0; i < r_mu.size(); i++) {
        t.gn2[0] += (double)r_mu[i] * r_mu[i] + (double)r_lv[i] * r_lv[i];
        L->dmu_q[i] += r_mu[i];
        L->dlv_q[i] += r_lv[i];
    }
    // posterior: its head's gradient at the <eos> rows, then its network
    upload_head_grad(m, L->dmu_q, L->dlv_q, B);
    matmul_backward(a->d_pooled, m->g.posterior_w, m->g.posterior_b, a->d_head, a->pooled_q, m->w.posterior_w, B, D, 2 * dz, false, st);
    scatter_rows(a->dhn, a->d_pooled, a->post_rows, B, B * Tq, D, st);
    body_backward(m, posterior_net(*m), a->post, B, Tq, nullptr, st);
    return t;
}

// ----------------------------------------------------------------------------------------------------------
// 6. Update: AdamW on the adapters, or on every weight (optimizer=muon: Muon, kernels/muon.cuh, on the blocks'
//    weight matrices, Nesterov momentum and 5 Newton-Schulz steps), the gradient summed over the ranks and clipped;
//    linear warm-up then cosine decay to lr * lr_min_ratio (muon_lr in proportion).

typedef struct { double grad_norm, lr; } UpdateStats;

static UpdateStats model_update(Model* m, int step, int total_steps, Stream st) {
    const Config& c = m->cfg;
    UpdateStats u;
    u.grad_norm = sqrt(params_grad_norm_squared(&m->p, 0, m->groups.n_trained, st));
    const Schedule schedule = {SCHEDULE_TRM, c.lr, c.lr_warmup_steps, total_steps, c.lr_min_ratio};
    u.lr = lr_schedule(schedule, step);
    const AdamConfig adam = {false, c.beta1, c.beta2, c.adam_eps, c.weight_decay};
    const MuonConfig muon = {c.muon_momentum, true, 5};
    params_update(&m->p, adam, (float)u.lr, step, clip_scale(u.grad_norm, c.grad_clip_norm), st, &muon);
    return u;
}

// ----------------------------------------------------------------------------------------------------------
// 7. Data: the JSON lines of data/strategies.py ({"task", "strategy", "x", "y", ...}), each tokenized into
//        prompt      "<bos> <x> X </x> <z> </z> <y>"             mode=lm
//                    "<bos> <x> X </x> <z>" [slot] " </z> <y>"    mode=cvae: the slot's input row is h_z
//        completion  " Y </y> <eos>"                              (the loss is on these tokens)
//    and in cvae mode the posterior's record "<bos> <x> X </x> <y> Y </y> <eos>" (the template without the z slot).
//    <bos> and <eos> are the tokenizer's own: the character tokenizer's specials, or Qwen's <|endoftext|>; the
//    other markers are special tokens of the character tokenizer and plain text to Qwen's BPE. The slot holds the
//    <eos> id, which its input never reads.

typedef struct {
    int task;                        // index into Data::task_names
    int strategy;                    // the strategy the example was drawn with (evaluation only)
    std::string x, y;
    std::vector<int32_t> ids;        // prompt + completion
    int n_prompt;
    int n_prefix;                    // cvae: the tokens up to <z> (the router's row is n_prefix - 1, the slot n_prefix)
    std::vector<int32_t> post_ids;   // cvae: the posterior's record
    int index;                       // its line in the file (the key of its noise)
} Example;

typedef struct {
    Tokenizer tok;
    std::string bos_text, eos_text;
    int32_t eos;
    bool cvae;
    std::vector<int32_t> suffix;     // cvae: the prompt's tokens after the slot, " </z> <y>"
    std::vector<std::string> task_names;
    std::vector<int> n_strategies;   // per task: 1 + the largest strategy id in the data
    std::vector<Example> train, eval;
    // the training order: a permutation of the examples per epoch, drawn from (seed, epoch)
    int epoch;
    int64_t cursor;
    std::vector<int> order;
} Data;

static std::string prompt_text(const Data& d, const std::string& x) { return d.bos_text + " <x> " + x + " </x> <z> </z> <y>"; }
static std::string prefix_text(const Data& d, const std::string& x) { return d.bos_text + " <x> " + x + " </x> <z>"; }
static std::string completion_text(const Data& d, const std::string& y) { return " " + y + " </y> " + d.eos_text; }
static std::string posterior_text(const Data& d, const std::string& x, const std::string& y) {
    return d.bos_text + " <x> " + x + " </x> <y> " + y + " </y> " + d.eos_text;
}

// A string field of a JSON line: ASCII text without control characters (what data/strategies.py writes).
static std::string example_field(const JsonValue& v, const char* key) {
    const std::string s = v.get(key).as_string();
    for (unsigned char ch : s)
        if (ch < 32 || ch >= 127) v.get(key).fail("expected printable ASCII text (byte 0x%02x found)", ch);
    return s;
}

// The examples of one JSONL file whose task is wanted (tasks: "all" or a list); unknown tasks are added to
// task_names in their order of appearance.
static std::vector<Example> read_examples(Data* d, const std::string& path, const std::vector<std::string>& wanted, int T) {
    const long size = regular_file_size(path.c_str(), "example file", " (make it with python3 data/strategies.py DIR)");
    std::string text((size_t)size, '\0');
    FILE* f = fopen_check(path.c_str(), "rb");
    fread_check(&text[0], (size_t)size, f, path.c_str());
    fclose(f);
    std::vector<Example> out;
    const std::vector<std::string> lines = split_lines(text);
    for (size_t i = 0; i < lines.size(); i++) {
        if (lines[i].empty()) continue;
        const std::string where = path + ":" + std::to_string(i + 1);
        JsonDoc doc = json_parse(where, lines[i].data(), lines[i].size(), 4);
        JsonValue v = doc.root();
        v.expect_type(JSON_OBJECT);
        Example e;
        const std::string task = example_field(v, "task");
        if (!wanted.empty() && std::find(wanted.begin(), wanted.end(), task) == wanted.end()) continue;
        auto it = std::find(d->task_names.begin(), d->task_names.end(), task);
        e.task = (int)(it - d->task_names.begin());
        if (it == d->task_names.end()) {
            if (task.empty() || task.size() > 64) v.get("task").fail("expected a task name of 1..64 characters");
            d->task_names.push_back(task);
        }
        e.strategy = (int)v.get("strategy").as_int(0, 63);
        if ((int)d->n_strategies.size() <= e.task) d->n_strategies.resize(e.task + 1, 0);
        d->n_strategies[e.task] = std::max(d->n_strategies[e.task], e.strategy + 1);
        e.x = example_field(v, "x");
        e.y = example_field(v, "y");
        e.index = (int)i;
        if (d->cvae) {
            e.ids = d->tok.encode(prefix_text(*d, e.x));
            e.n_prefix = (int)e.ids.size();
            e.ids.push_back(d->eos);
            e.ids.insert(e.ids.end(), d->suffix.begin(), d->suffix.end());
            e.post_ids = d->tok.encode(posterior_text(*d, e.x, e.y));
            if ((int)e.post_ids.size() > T)
                fatal("%s: the posterior's record has %zu tokens, more than max_seq_len=%d", where.c_str(), e.post_ids.size(), T);
        } else {
            e.ids = d->tok.encode(prompt_text(*d, e.x));
            e.n_prefix = (int)e.ids.size();
        }
        e.n_prompt = (int)e.ids.size();
        const std::vector<int32_t> completion = d->tok.encode(completion_text(*d, e.y));
        e.ids.insert(e.ids.end(), completion.begin(), completion.end());
        if ((int)e.ids.size() > T)
            fatal("%s: the example has %zu tokens, more than max_seq_len=%d", where.c_str(), e.ids.size(), T);
        out.push_back(std::move(e));
    }
    return out;
}

static void data_load(Data* d, const Config& c, const Arch& arch) {
    if (d->tok.kind == TOKENIZER_CHAR) {
        d->bos_text = "<bos>";
        d->eos_text = "<eos>";
    } else {
        d->bos_text = d->eos_text = "<|endoftext|>";
    }
    d->eos = d->tok.token_id(d->eos_text);
    if (d->eos < 0 || d->tok.token_id(d->bos_text) < 0)
        fatal("tokenizer %s has no %s token (the sequences begin and end with it)", c.tokenizer.c_str(), d->eos_text.c_str());
    d->cvae = c.mode == "cvae";
    if (d->cvae) d->suffix = d->tok.encode(" </z> <y>");
    if (d->tok.vocab_size() > arch.V)
        fatal("tokenizer %s has ids up to %d, more than the model's vocabulary of %d (vocab_size of %s)", c.tokenizer.c_str(),
              d->tok.vocab_size() - 1, arch.V, arch.source.c_str());
    const std::vector<std::string> wanted = c.tasks == "all" ? std::vector<std::string>() : split_commas(c.tasks);
    d->train = read_examples(d, c.data_dir + "/train.jsonl", wanted, c.max_seq_len);
    d->eval = read_examples(d, c.data_dir + "/" + c.eval_split + ".jsonl", wanted, c.max_seq_len);
    for (const std::string& t : wanted)
        if (std::find(d->task_names.begin(), d->task_names.end(), t) == d->task_names.end())
            fatal("tasks: '%s' has no examples in %s/train.jsonl", t.c_str(), c.data_dir.c_str());
    if (c.max_train_examples > 0 && (int)d->train.size() > c.max_train_examples) d->train.resize(c.max_train_examples);
    if (d->train.empty() && !c.eval_only) fatal("%s/train.jsonl: no training examples", c.data_dir.c_str());
    d->epoch = 0;
    d->cursor = 0;
}

// The permutation of the training examples for an epoch.
static void data_shuffle(Data* d, uint64_t seed) {
    d->order.resize(d->train.size());
    for (size_t i = 0; i < d->order.size(); i++) d->order[i] = (int)i;
    for (size_t i = d->order.size(); i > 1; i--)
        std::swap(d->order[i - 1], d->order[hash_below((uint32_t)i, seed, 0x5EED, (uint64_t)d->epoch, i)]);
}

// The next G examples of the training order (crossing into the next epoch when one ends).
static std::vector<int> data_next_batch(Data* d, int G, uint64_t seed) {
    std::vector<int> batch;
    while ((int)batch.size() < G) {
        if (d->cursor >= (int64_t)d->order.size()) {
            d->epoch++;
            d->cursor = 0;
            data_shuffle(d, seed);
        }
        batch.push_back(d->order[d->cursor++]);
    }
    return batch;
}

// Uploads B examples as one micro-batch of T tokens (T >= the longest): ids padded with <eos>, the targets of the
// completion (the next token where it belongs to " Y </y> <eos>", else -100). Returns the number of targets.
static int upload_batch(Model* m, const Data& d, const std::vector<const Example*>& ex, int T) {
    const int B = (int)ex.size();
    std::vector<int> ids((size_t)B * T, d.eos), targets((size_t)B * T, IGNORE_LABEL_ID);
    int n_targets = 0;
    for (int b = 0; b < B; b++) {
        const std::vector<int32_t>& s = ex[b]->ids;
        for (size_t t = 0; t < s.size(); t++) ids[(size_t)b * T + t] = s[t];
        for (size_t t = ex[b]->n_prompt - 1; t + 1 < s.size(); t++, n_targets++) targets[(size_t)b * T + t] = s[t + 1];
    }
    copy_to_device(m->acts.gen.ids, ids.data(), ids.size() * sizeof(int));
    copy_to_device(m->acts.targets, targets.data(), targets.size() * sizeof(int));
    return n_targets;
}

// Rounds a length up to a multiple of 8 (at most T).
static int padded_length(const Model& m, size_t longest) { return std::min(m.T, (int)CEIL_DIV(std::max<size_t>(longest, 1), (size_t)8) * 8); }

// cvae: uploads the rows of the z slot and of <z> in the generator's (B, T) rows, and the posterior's records
// (padded with <eos> to Tq tokens) with the row of each one's last token. Returns Tq.
static int upload_latent_rows(Model* m, const Data& d, const std::vector<const Example*>& ex, int T) {
    const int B = (int)ex.size();
    size_t longest = 1;
    for (const Example* e : ex) longest = std::max(longest, e->post_ids.size());
    const int Tq = m->cfg.pad_to_max ? m->T : padded_length(*m, longest);
    std::vector<int> ids((size_t)B * Tq, d.eos), slot(B), router(B), post(B);
    for (int b = 0; b < B; b++) {
        const std::vector<int32_t>& q = ex[b]->post_ids;
        std::copy(q.begin(), q.end(), ids.begin() + (size_t)b * Tq);
        slot[b] = b * T + ex[b]->n_prefix;
        router[b] = b * T + ex[b]->n_prefix - 1;
        post[b] = b * Tq + (int)q.size() - 1;
    }
    copy_to_device(m->acts.post.ids, ids.data(), ids.size() * sizeof(int));
    copy_to_device(m->acts.slot_rows, slot.data(), B * sizeof(int));
    copy_to_device(m->acts.router_rows, router.data(), B * sizeof(int));
    copy_to_device(m->acts.post_rows, post.data(), B * sizeof(int));
    return Tq;
}

// The reparameterisation noise of B examples, (B, d_z): standard normal keyed by (seed, a stream, each one's key).
static std::vector<floatS> latent_noise(int B, int dz, uint64_t seed, const std::vector<uint64_t>& keys) {
    std::vector<floatS> eps((size_t)B * dz);
    for (int b = 0; b < B; b++)
        for (int d = 0; d < dz; d++) eps[(size_t)b * dz + d] = hash_normal(seed, keys[b], (uint64_t)d);
    return eps;
}

// The router's Gaussians (mu_p, logvar_p, (n, d_z) each) of examples, from the generator's pass over their tokens
// up to <z> (without dropout), in micro-batches.
static void router_latents(Model* m, const Data& d, const std::vector<const Example*>& ex, std::vector<floatS>* mu,
                           std::vector<floatS>* lv) {
    mu->clear();
    lv->clear();
    for (size_t i0 = 0; i0 < ex.size(); i0 += m->mb) {
        const int B = (int)std::min<size_t>(m->mb, ex.size() - i0);
        size_t longest = 1;
        for (int b = 0; b < B; b++) longest = std::max(longest, (size_t)ex[i0 + b]->n_prefix);
        const int Tp = padded_length(*m, longest);
        std::vector<int> ids((size_t)B * Tp, d.eos), rows(B);
        for (int b = 0; b < B; b++) {
            std::copy(ex[i0 + b]->ids.begin(), ex[i0 + b]->ids.begin() + ex[i0 + b]->n_prefix, ids.begin() + (size_t)b * Tp);
            rows[b] = b * Tp + ex[i0 + b]->n_prefix - 1;
        }
        copy_to_device(m->acts.gen.ids, ids.data(), ids.size() * sizeof(int));
        copy_to_device(m->acts.router_rows, rows.data(), B * sizeof(int));
        model_forward(m, generator_net(*m), &m->acts.gen, B, Tp, nullptr, 0, false, nullptr, Stream());
        std::vector<floatS> mb_mu, mb_lv;
        head_forward(m, m->acts.pooled_p, m->acts.gen, m->acts.router_rows, m->w.router_w, m->w.router_b, B, &mb_mu, &mb_lv, Stream());
        mu->insert(mu->end(), mb_mu.begin(), mb_mu.end());
        lv->insert(lv->end(), mb_lv.begin(), mb_lv.end());
    }
}

// Tokens a micro-batch is padded to: its longest example, rounded up to a multiple of 8 (max_seq_len with pad_to_max).
static int batch_length(const Model& m, const std::vector<const Example*>& ex) {
    if (m.cfg.pad_to_max) return m.T;
    size_t longest = 1;
    for (const Example* e : ex) longest = std::max(longest, e->ids.size());
    return padded_length(m, longest);
}

// ----------------------------------------------------------------------------------------------------------
// 8. Generation and evaluation.
//
// Generation with a key/value cache: the prompts of a batch are left-padded to one length P (their padding
// masked out of attention), the whole prompt runs once (writing every layer's keys and values into the cache),
// then each new token runs alone at position P, P+1, ... and attends over the cache. RoPE makes attention depend
// only on the distance between positions, so a prompt shifted right by its padding computes what it computes
// alone. The next token is the argmax (temperature 0), or drawn from softmax(logits / temperature) restricted to
// the smallest set of tokens whose probability reaches top_p, with a uniform draw keyed by (seed, step, example,
// position): the same on every backend and every run.

// The next token of each of B rows of logits (acts.logits, (B, V)), among the first V_tok ids: the tokenizer's (a
// model's vocabulary is padded past them, e.g. Qwen2.5's 151936 rows for 151665 ids; those rows are never chosen).
static std::vector<int> next_tokens(Model* m, int B, int V_tok, uint64_t seed, const std::vector<uint64_t>& keys, int pos) {
    const int V = m->arch.V;
    const Config& c = m->cfg;
    std::vector<int> next(B);
    if (c.temperature == 0) {
        softmax_xent(m->acts.loss, m->acts.argmax, m->acts.logits, m->acts.no_labels, B, V_tok, V, 0.0f, false, Stream());
        copy_to_host(next.data(), m->acts.argmax, B * sizeof(int));
        return next;
    }
    std::vector<floatS> logits((size_t)B * V);
    download_floatX(logits.data(), m->acts.logits, logits.size());
    std::vector<std::pair<double, int>> probs(V_tok);
    for (int b = 0; b < B; b++) {
        const floatS* x = logits.data() + (size_t)b * V;
        const double top = *std::max_element(x, x + V_tok);
        double sum = 0;
        for (int v = 0; v < V_tok; v++) sum += probs[v].first = exp(((double)x[v] - top) / c.temperature);
        for (int v = 0; v < V_tok; v++) probs[v] = {probs[v].first / sum, v};
        std::sort(probs.begin(), probs.end(), [](const auto& p, const auto& q) { return p.first > q.first || (p.first == q.first && p.second < q.second); });
        int keep = 0;
        double mass = 0;
        while (keep < V_tok && (keep == 0 || mass < c.top_p)) mass += probs[keep++].first;
        double u = hash_uniform(seed, keys[b], (uint64_t)pos) * mass;
        next[b] = probs[keep - 1].second;
        for (int k = 0; k < keep; k++) {
            if (u < probs[k].first) { next[b] = probs[k].second; break; }
            u -= probs[k].first;
        }
    }
    return next;
}

// Continues each prompt until <eos> or max_new tokens (at most mb prompts; keys: one per prompt, for sampling).
// Returns the new tokens of each, without the <eos>. In cvae mode the prompts are the prefixes up to <z>: the
// router's Gaussian at their last token gives z = mu_p + sigma_p eps (eps keyed like the sampling), or z is
// forced (forced_z, (B, d_z)); then the z slot (input h_z) and " </z> <y>" run as forced one-token steps before
// the generation. z_used (non-null): the latents, (B, d_z).
static std::vector<std::vector<int32_t>> generate(Model* m, const Data& d, const std::vector<std::vector<int32_t>>& prompts,
                                                  const std::vector<uint64_t>& keys, int max_new, uint64_t seed,
                                                  const std::vector<floatS>* forced_z = nullptr,
                                                  std::vector<floatS>* z_used = nullptr) {
    Acts* a = &m->acts;
    PassActs* g = &a->gen;
    const int B = (int)prompts.size(), T = m->T, D = m->arch.D, dz = m->cfg.d_z;
    const bool cvae = m->groups.cvae;
    const Net net = generator_net(*m);
    size_t P = 1;
    for (const auto& p : prompts) P = std::max(P, p.size());
    const int forced = cvae ? 1 + (int)d.suffix.size() : 0;            // the slot and " </z> <y>"
    if ((int)P + forced >= T) fatal("a prompt of %zu tokens leaves no room to generate within max_seq_len=%d", P + forced, T);
    max_new = std::min(max_new, T - (int)P - forced);
    // the prompts, right-aligned: ids and masks; the row of each one's last token
    std::vector<int> ids((size_t)B * P, d.eos), last(B), no_labels(B, IGNORE_LABEL_ID);
    std::vector<uint8_t> prompt_mask((size_t)B * P, 0), key_mask((size_t)B * T, 0);
    for (int b = 0; b < B; b++) {
        const size_t pad = P - prompts[b].size();
        for (size_t t = 0; t < prompts[b].size(); t++) {
            ids[b * P + pad + t] = prompts[b][t];
            prompt_mask[b * P + pad + t] = key_mask[b * T + pad + t] = 1;
        }
        last[b] = (int)(b * P + P - 1);
    }
    copy_to_device(g->ids, ids.data(), ids.size() * sizeof(int));
    copy_to_device(a->prompt_mask, prompt_mask.data(), prompt_mask.size());
    copy_to_device(a->last_rows, last.data(), B * sizeof(int));
    copy_to_device(a->no_labels, no_labels.data(), B * sizeof(int));
    model_forward(m, net, g, B, (int)P, &m->kv, 0, false, nullptr, Stream());
    const floatX* h_last = a->dhn;                                       // (B, D) the final hidden state to continue
    gather_rows(a->dhn, g->hn, a->last_rows, B, D, Stream());
    int pos = (int)P;
    if (cvae) {
        std::vector<floatS> mu, lv, z;
        head_forward(m, a->pooled_p, *g, a->last_rows, m->w.router_w, m->w.router_b, B, &mu, &lv, Stream());
        if (forced_z) {
            z = *forced_z;
        } else {
            z.resize(mu.size());
            const std::vector<floatS> eps = latent_noise(B, dz, hash_u64(seed, 0x2A7), keys);
            reparameterize(z.data(), mu.data(), lv.data(), eps.data(), B, dz);
        }
        if (z_used) *z_used = z;
        z_project(m, z, B, Stream());
        for (int f = 0; f < forced; f++, pos++) {
            for (int b = 0; b < B; b++) key_mask[(size_t)b * T + pos] = 1;
            const std::vector<int> next(B, f == 0 ? d.eos : d.suffix[f - 1]);
            copy_to_device(g->ids, next.data(), B * sizeof(int));
            copy_to_device(a->key_mask, key_mask.data(), key_mask.size());
            model_forward(m, net, g, B, 1, &m->kv, pos, false, f == 0 ? a->iota : nullptr, Stream());
        }
        h_last = g->hn;
    }
    matmul_forward(a->logits, h_last, lm_head_weight(*m), nullptr, B, D, m->arch.V, Stream());
    std::vector<std::vector<int32_t>> out(B);
    std::vector<uint8_t> done(B, 0);
    for (int n = 0; n < max_new; pos++, n++) {
        std::vector<int> next = next_tokens(m, B, std::min(d.tok.vocab_size(), m->arch.V), seed, keys, pos);
        int open = 0;
        for (int b = 0; b < B; b++) {
            if (!done[b] && next[b] == d.eos) done[b] = 1;
            if (!done[b]) out[b].push_back(next[b]);
            open += !done[b];
        }
        if (!open || n + 1 == max_new) break;
        for (int b = 0; b < B; b++) key_mask[(size_t)b * T + pos] = 1;
        copy_to_device(g->ids, next.data(), B * sizeof(int));
        copy_to_device(a->key_mask, key_mask.data(), key_mask.size());
        model_forward(m, net, g, B, 1, &m->kv, pos, false, nullptr, Stream());
        matmul_forward(a->logits, g->hn, lm_head_weight(*m), nullptr, B, D, m->arch.V, Stream());
    }
    return out;
}

// The first `limit` evaluation examples of every task (limit 0: all), in file order.
static std::vector<const Example*> eval_examples(const Data& d, int limit) {
    std::vector<int> taken(d.task_names.size(), 0);
    std::vector<const Example*> out;
    for (const Example& e : d.eval)
        if (limit == 0 || taken[e.task] < limit) {
            taken[e.task]++;
            out.push_back(&e);
        }
    return out;
}

// What an evaluation measured per task (the `final` lines repeat the last one's); -1: not measured.
typedef struct {
    double nll, token_acc, tokens;
    double recon_ratio, kl, pv, rmkl;                 // cvae
    double answer_acc, router_probe, posterior_mu_probe, chance, alignment;
    double router_majority, posterior_majority;       // each probe's majority-label baseline
    std::vector<double> mu_q;                         // cvae: (n, d_z) the posterior means of the validation examples
    std::vector<int> strategy;                        // (n) and their strategies
} TaskEval;

static TaskEval task_eval_empty() {
    TaskEval t = TaskEval();
    t.recon_ratio = t.kl = t.pv = t.rmkl = t.answer_acc = t.router_probe = t.posterior_mu_probe = t.chance = t.alignment = -1;
    t.router_majority = t.posterior_majority = -1;
    return t;
}

// The validation loss on held-out examples per task: the NLL per y token and the next-token accuracy; in cvae
// mode with z from the posterior (z = mu_q + sigma_q eps, eps keyed by the example), also R / c_base, KL(q || p),
// the posterior variance and the router marginal KL of the task's examples, and the posterior means (for the
// probes). zero_z: z = 0 instead (no posterior: c_base's measurement). The examples are shared out among the ranks
// and their values gathered. Returns per task, then "all".
static std::vector<TaskEval> evaluate_nll(Model* m, const Data& d, int step, Logger* log, bool zero_z = false) {
    const std::vector<const Example*> all = eval_examples(d, m->cfg.val_examples);
    const int n_tasks = (int)d.task_names.size(), dz = m->cfg.d_z;
    const bool cvae = m->groups.cvae;
    const int F = 5 + 3 * dz;                                 // per example: nll, targets, correct, kl, pv, mu_q, mu_p, lv_p
    std::vector<double> values(all.size() * F, 0.0);
    std::vector<size_t> mine;
    for (size_t i = dist().rank; i < all.size(); i += dist().world) mine.push_back(i);
    for (size_t i0 = 0; i0 < mine.size(); i0 += m->mb) {
        std::vector<const Example*> ex;
        std::vector<uint64_t> keys;
        for (size_t i = i0; i < std::min(mine.size(), i0 + m->mb); i++) {
            ex.push_back(all[mine[i]]);
            keys.push_back((uint64_t)all[mine[i]]->index);
        }
        const int B = (int)ex.size(), T = batch_length(*m, ex);
        upload_batch(m, d, ex, T);
        Latents L;
        if (cvae) {
            const int Tq = upload_latent_rows(m, d, ex, T);
            if (zero_z) {
                z_project(m, std::vector<floatS>((size_t)B * dz, 0), B, Stream());
                model_forward(m, generator_net(*m), &m->acts.gen, B, T, nullptr, 0, false, m->acts.slot_rows, Stream());
            } else {
                L.eps = latent_noise(B, dz, hash_u64((uint64_t)m->cfg.seed, 0xE7A1), keys);
                cvae_forward(m, &L, B, T, Tq, false, Stream());
            }
        } else {
            model_forward(m, generator_net(*m), &m->acts.gen, B, T, nullptr, 0, false, nullptr, Stream());
        }
        lm_loss(m, B, T, 0.0f, false, Stream());
        std::vector<floatS> loss((size_t)B * T), kl(B), pv(B);
        std::vector<int> argmax((size_t)B * T);
        copy_to_host(loss.data(), m->acts.loss, loss.size() * sizeof(floatS));
        copy_to_host(argmax.data(), m->acts.argmax, argmax.size() * sizeof(int));
        const bool latents = cvae && !zero_z;
        if (latents) {
            gaussian_kl<floatS>(kl.data(), L.mu_q.data(), L.lv_q.data(), L.mu_p.data(), L.lv_p.data(), B, dz, 0, nullptr, nullptr, nullptr, nullptr);
            posterior_variance<floatS>(pv.data(), L.lv_q.data(), B, dz, 0, nullptr);
        }
        for (int b = 0; b < B; b++) {
            double* v = values.data() + mine[i0 + b] * F;
            const std::vector<int32_t>& s = ex[b]->ids;
            for (size_t t = ex[b]->n_prompt - 1; t + 1 < s.size(); t++) {
                v[0] += loss[(size_t)b * T + t];
                v[1] += 1;
                v[2] += argmax[(size_t)b * T + t] == s[t + 1];
            }
            if (!latents) continue;
            v[3] = kl[b];
            v[4] = pv[b];
            for (int k = 0; k < dz; k++) {
                v[5 + k] = L.mu_q[(size_t)b * dz + k];
                v[5 + dz + k] = L.mu_p[(size_t)b * dz + k];
                v[5 + 2 * dz + k] = L.lv_p[(size_t)b * dz + k];
            }
        }
    }
    dist_sum_host(values.data(), (int)values.size());
    std::vector<TaskEval> out(n_tasks + 1, task_eval_empty());
    for (int k = 0; k <= n_tasks; k++) {
        TaskEval& te = out[k];
        double nll = 0, targets = 0, correct = 0, kl = 0, pv = 0, n = 0;
        std::vector<double> moments(2 * dz, 0.0);
        for (size_t i = 0; i < all.size(); i++) {
            if (k < n_tasks && all[i]->task != k) continue;
            const double* v = values.data() + i * F;
            nll += v[0]; targets += v[1]; correct += v[2]; kl += v[3]; pv += v[4]; n += 1;
            if (!cvae || zero_z) continue;
            std::vector<floatS> mu_p(v + 5 + dz, v + 5 + 2 * dz), lv_p(v + 5 + 2 * dz, v + 5 + 3 * dz);
            marginal_moments(moments.data(), mu_p.data(), lv_p.data(), 1, dz);
            te.mu_q.insert(te.mu_q.end(), v + 5, v + 5 + dz);
            te.strategy.push_back(all[i]->strategy);
        }
        te.nll = nll / std::max(1.0, targets);
        te.token_acc = correct / std::max(1.0, targets);
        te.tokens = targets;
        const char* task = k < n_tasks ? d.task_names[k].c_str() : "all";
        if (zero_z) continue;
        if (!cvae) {
            log_printf(log, "val step=%d task=%s nll=%.5f token_acc=%.4f tokens=%.0f\n", step, task, te.nll, te.token_acc, targets);
            continue;
        }
        te.recon_ratio = te.nll / m->c_base;
        te.kl = kl / std::max(1.0, n);
        te.pv = pv / std::max(1.0, n * dz);
        te.rmkl = n > 0 ? router_marginal_kl(moments.data(), n, dz) : 0.0;
        log_printf(log, "val step=%d task=%s recon_ratio=%.5f nll=%.5f kl=%.5g pv=%.5g rmkl=%.5g token_acc=%.4f tokens=%.0f\n",
                   step, task, te.recon_ratio, te.nll, te.kl, te.pv, te.rmkl, te.token_acc, targets);
    }
    return out;
}

// The trace text of generated tokens: " Y </y>" without the space and the end marker.
static std::string trace_text(const Data& d, const std::vector<int32_t>& ids) {
    std::string s = d.tok.decode(ids.data(), ids.size());
    while (!s.empty() && s[0] == ' ') s.erase(0, 1);
    const size_t end = s.rfind("</y>");
    if (end != std::string::npos) s.erase(end);
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s;
}

// The repository's data/strategies.py (beside the executable, which make builds in the repository root).
static std::string strategies_script() {
    char exe[4096];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    std::string dir = ".";
    if (n > 0) {
        exe[n] = '\0';
        const std::string path = exe;
        dir = path.substr(0, path.find_last_of('/'));
    }
    return dir + "/data/strategies.py";
}

// Runs `python3 data/strategies.py ARGS FILE` and returns its output lines (empty, with a log line, when it cannot).
static std::vector<std::string> run_strategies(const std::string& args, const std::string& path, int step, Logger* log) {
    const std::string script = strategies_script();
    if (!file_exists(script.c_str())) {
        log_printf(log, "gen step=%d: %s not found: score %s with python3 data/strategies.py %s\n", step, script.c_str(),
                   path.c_str(), args.c_str());
        return {};
    }
    const std::string cmd = "python3 " + script + " " + args + " " + path + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) {
        log_printf(log, "gen step=%d: could not run %s\n", step, cmd.c_str());
        return {};
    }
    std::vector<std::string> lines;
    char buf[1024];
    while (fgets(buf, sizeof buf, p)) lines.push_back(buf);
    if (pclose(p) != 0) {
        log_printf(log, "gen step=%d: warning: %s failed%s%s", step, cmd.c_str(), lines.empty() ? "" : ": ",
                   lines.empty() ? "\n" : lines.back().c_str());
        return {};
    }
    return lines;
}

// The strategy data/strategies.py detects in each generated trace of a file (-1: none) and whether its answer is
// right (`--detect`: one line "detect S C" per record).
static bool detect_traces(const std::string& path, size_t n, int step, Logger* log, std::vector<int>* strategy, std::vector<int>* correct) {
    const std::vector<std::string> lines = run_strategies("--detect", path, step, log);
    strategy->clear();
    correct->clear();
    for (const std::string& line : lines) {
        int s, c;
        if (sscanf(line.c_str(), "detect %d %d", &s, &c) == 2) {
            strategy->push_back(s);
            correct->push_back(c);
        }
    }
    if (strategy->size() == n) return true;
    if (!lines.empty()) log_printf(log, "gen step=%d: data/strategies.py --detect gave %zu lines for %zu traces\n", step, strategy->size(), n);
    return false;
}

// A generation job: a prompt (its example) and, for alignment, the forced latent's index and value.
typedef struct {
    const Example* e;
    int latent;                      // -1: z from the router (or mode=lm)
    std::vector<floatS> z;
} GenJob;

// Generates the jobs' traces in micro-batches; writes them as JSON lines (task, x, the generated y, the
// reference's strategy, and the forced latent's index) to `path`; returns the latents used ((n, d_z), cvae).
static std::vector<floatS> generate_file(Model* m, const Data& d, const std::vector<GenJob>& jobs, int step, uint64_t stream,
                                         const std::string& path, Logger* log) {
    const Config& c = m->cfg;
    const int max_new = c.gen_max_tokens > 0 ? c.gen_max_tokens : m->T;
    const double t0 = wall_time();
    std::string lines;
    size_t tokens = 0;
    std::vector<floatS> latents;
    for (size_t i0 = 0; i0 < jobs.size(); i0 += m->mb) {
        std::vector<std::vector<int32_t>> prompts;
        std::vector<uint64_t> keys;
        std::vector<floatS> forced;
        const size_t i1 = std::min(jobs.size(), i0 + m->mb);
        for (size_t i = i0; i < i1; i++) {
            prompts.emplace_back(jobs[i].e->ids.begin(), jobs[i].e->ids.begin() + jobs[i].e->n_prefix);
            keys.push_back(hash_u64((uint64_t)c.seed, stream, (uint64_t)step, i));
            forced.insert(forced.end(), jobs[i].z.begin(), jobs[i].z.end());
        }
        std::vector<floatS> z;
        const std::vector<std::vector<int32_t>> gen = generate(m, d, prompts, keys, max_new, (uint64_t)c.seed,
                                                               jobs[i0].latent >= 0 ? &forced : nullptr, &z);
        latents.insert(latents.end(), z.begin(), z.end());
        for (size_t k = 0; k < gen.size(); k++) {
            const GenJob& j = jobs[i0 + k];
            tokens += gen[k].size();
            lines += "{\"task\": " + json_quote(d.task_names[j.e->task]) + ", \"x\": " + json_quote(j.e->x) + ", \"y\": " +
                     json_quote(trace_text(d, gen[k])) + ", \"strategy\": " + std::to_string(j.e->strategy) +
                     (j.latent >= 0 ? ", \"latent\": " + std::to_string(j.latent) : std::string()) + "}\n";
        }
    }
    const double seconds = wall_time() - t0;
    write_file_atomic(path, [&](FILE* f, const char* p) { fwrite_check(lines.data(), lines.size(), f, p); });
    log_printf(log, "gen step=%d traces=%zu tokens=%zu seconds=%.1f tokens_per_s=%.0f file=%s\n", step, jobs.size(), tokens,
               seconds, tokens / std::max(seconds, 1e-9), path.c_str());
    return latents;
}

// Generation and the latent probes (rank 0). Traces for the first gen_examples prompts of every task, z from the
// router in cvae mode, go to generations_<step>.jsonl and `data/strategies.py --score` gives the `gen` lines:
// final-answer accuracy and the mix of strategies per task. In cvae mode, per task:
//   router probe        a logistic regression from the router-sampled z of those traces to the strategy detected in
//                       each (traces without one left out), fitted on the even-numbered, scored on the odd-numbered
//   posterior-mu probe  the same from the validation examples' mu_q to the strategy they were drawn with
//   alignment_one_to_one  K = the task's number of strategies forced latents: the k-means centroids of those mu_q
//                       (label-free: where the posterior puts its examples); each of the first align_examples
//                       prompts is continued under each, and the latents are matched one-to-one to the strategies
//                       detected (undetected traces count as misses); written to alignment_<step>.jsonl (not
//                       measured, -1, for more than 8 strategies; with fewer validation examples than strategies
//                       some centroids coincide)
// Chance is 1 / the task's number of strategies; each probe's majority baseline (the accuracy of always answering its
// training half's most common strategy) is what an uninformative latent scores when the strategies are unbalanced.
static void evaluate_generation(Model* m, const Data& d, int step, std::vector<TaskEval>* ev, Logger* log) {
    const Config& c = m->cfg;
    if (c.gen_examples == 0 || dist().rank != 0) return;
    const int n_tasks = (int)d.task_names.size(), dz = c.d_z;
    std::vector<GenJob> jobs;
    for (const Example* e : eval_examples(d, c.gen_examples)) jobs.push_back({e, -1, {}});
    char name[64];
    snprintf(name, sizeof name, "/generations_%08d.jsonl", step);
    const std::string path = c.checkpoint_path + name;
    const std::vector<floatS> z = generate_file(m, d, jobs, step, 0x6E4, path, log);
    for (const std::string& line : run_strategies("--score", path, step, log))
        log_printf(log, "gen step=%d %s", step, line.compare(0, 6, "score ") == 0 ? line.c_str() + 6 : line.c_str());
    std::vector<int> detected, correct;
    if (!detect_traces(path, jobs.size(), step, log, &detected, &correct)) return;
    for (int k = 0; k <= n_tasks; k++) {                // each task, then all
        double n = 0, right = 0;
        for (size_t i = 0; i < jobs.size(); i++)
            if (k == n_tasks || jobs[i].e->task == k) n++, right += correct[i];
        if (n > 0) (*ev)[k].answer_acc = right / n;
    }
    if (!m->groups.cvae) return;
    // the probes
    std::vector<GenJob> forced;
    for (int k = 0; k < n_tasks; k++) {
        TaskEval& te = (*ev)[k];
        const int S = d.n_strategies[k];
        te.chance = 1.0 / S;
        std::vector<double> x;
        std::vector<int> labels, train;
        for (size_t i = 0; i < jobs.size(); i++) {
            if (jobs[i].e->task != k || detected[i] < 0) continue;
            x.insert(x.end(), z.begin() + i * dz, z.begin() + (i + 1) * dz);
            train.push_back(labels.size() % 2 == 0);
            labels.push_back(detected[i]);
        }
        te.router_probe = probe_accuracy(x, labels, train, (int)labels.size(), dz, S);
        te.router_majority = majority_accuracy(labels, train, S);
        const int n_post = (int)te.strategy.size();
        std::vector<int> post_train(n_post);
        for (int i = 0; i < n_post; i++) post_train[i] = i % 2 == 0;
        te.posterior_mu_probe = probe_accuracy(te.mu_q, te.strategy, post_train, n_post, dz, S);
        te.posterior_majority = majority_accuracy(te.strategy, post_train, S);
        if (c.align_examples == 0 || n_post == 0 || S > 8) continue;    // (the matching tries all S! orders)
        const std::vector<double> centroids = kmeans(te.mu_q, n_post, dz, S);
        for (const Example* e : eval_examples(d, c.align_examples)) {
            if (e->task != k) continue;
            for (int l = 0; l < S; l++)
                forced.push_back({e, l, std::vector<floatS>(centroids.begin() + (size_t)l * dz, centroids.begin() + (size_t)(l + 1) * dz)});
        }
    }
    if (!forced.empty()) {
        snprintf(name, sizeof name, "/alignment_%08d.jsonl", step);
        const std::string apath = c.checkpoint_path + name;
        generate_file(m, d, forced, step, 0xA11, apath, log);
        std::vector<int> adetected, acorrect;
        if (detect_traces(apath, forced.size(), step, log, &adetected, &acorrect))
            for (int k = 0; k < n_tasks; k++) {
                const int S = d.n_strategies[k];
                std::vector<std::vector<int>> counts(S, std::vector<int>(S, 0));
                int total = 0;
                for (size_t i = 0; i < forced.size(); i++) {
                    if (forced[i].e->task != k) continue;
                    total++;
                    if (adetected[i] >= 0 && adetected[i] < S) counts[forced[i].latent][adetected[i]]++;
                }
                if (total == 0) continue;
                int detected_total = 0;
                for (const auto& row : counts) for (int v : row) detected_total += v;
                (*ev)[k].alignment = alignment_one_to_one(counts) * detected_total / total;
            }
    }
    for (int k = 0; k < n_tasks; k++) {
        const TaskEval& te = (*ev)[k];
        log_printf(log, "probe step=%d task=%s router_probe=%.4f posterior_mu_probe=%.4f chance=%.4f alignment_one_to_one=%.4f "
                   "router_majority=%.4f posterior_majority=%.4f n_router=%d n_posterior=%zu\n", step, d.task_names[k].c_str(),
                   te.router_probe, te.posterior_mu_probe, te.chance, te.alignment, te.router_majority, te.posterior_majority, (int)std::count_if(jobs.begin(), jobs.end(), [&](const GenJob& j) { return j.e->task == k; }),
                   te.strategy.size());
    }
}

// The `final` lines: per task, what the last evaluation measured (-1: not measured).
static void log_final(const Model& m, const Data& d, const std::vector<TaskEval>& ev, Logger* log) {
    for (size_t k = 0; k < ev.size(); k++) {
        const TaskEval& te = ev[k];
        const char* task = k < d.task_names.size() ? d.task_names[k].c_str() : "all";
        if (!m.groups.cvae) {
            log_printf(log, "final task=%s answer_acc=%.4f nll=%.5f token_acc=%.4f\n", task, te.answer_acc, te.nll, te.token_acc);
            continue;
        }
        log_printf(log, "final task=%s answer_acc=%.4f recon_ratio=%.5f kl=%.5g pv=%.5g rmkl=%.5g router_probe=%.4f "
                   "posterior_mu_probe=%.4f chance=%.4f alignment_one_to_one=%.4f router_majority=%.4f posterior_majority=%.4f "
                   "nll=%.5f token_acc=%.4f\n", task, te.answer_acc, te.recon_ratio, te.kl, te.pv, te.rmkl, te.router_probe,
                   te.posterior_mu_probe, te.chance, te.alignment, te.router_majority, te.posterior_majority, te.nll, te.token_acc);
    }
}

// ----------------------------------------------------------------------------------------------------------
// 9. Checkpoints, Hugging Face and PEFT files, debug state.
//
// Checkpoint (ckpt_<step>.bin, common/checkpoint.h): the parameter state (params_sections: every group's fp32
// weights, AdamW moments, steps; with init_from, not the frozen weights but their CRC-32, see below), "state" (step,
// data epoch and cursor, training examples) and "architecture" (the model's config.json text, which must match on
// resume). With save_hf, each checkpoint is also exported for
// Hugging Face: full training writes hf_<step>/ (config.json + model.safetensors, HF's names, q/k/v and gate/up
// split back out), LoRA writes adapter_<step>/ as PEFT's save_pretrained does (adapter_config.json +
// adapter_model.safetensors), loadable onto the base model with peft.PeftModel.from_pretrained, and with save_merged
// hf_<step>/ too: the base with the adapter merged in.

// The parts of the model: adapter k (k >= 0), the base model (the generator's Qwen2), the cvae heads, and the
// posterior's own network (cvae from scratch).
enum { PART_BASE = -1, PART_HEADS = -2, PART_POSTERIOR = -3 };

static int tensor_part(const TensorInfo& ti, const Groups& gr) {
    const auto it = std::find(gr.g_adapters.begin(), gr.g_adapters.end(), ti.group);
    if (it != gr.g_adapters.end()) return (int)(it - gr.g_adapters.begin());
    if (ti.group == gr.g_heads) return PART_HEADS;
    return ti.name.compare(0, 10, "posterior.") == 0 ? PART_POSTERIOR : PART_BASE;
}

static std::vector<TensorInfo> model_part(const ParamTable& t, const Groups& gr, int k) {
    std::vector<TensorInfo> out;
    for (const TensorInfo& ti : t.tensors)
        if (tensor_part(ti, gr) == k) out.push_back(ti);
    return out;
}

// The posterior's network under the base model's names (its tensors without the "posterior." prefix), for export.
static std::vector<TensorInfo> posterior_as_base(const ParamTable& t, const Groups& gr) {
    std::vector<TensorInfo> out = model_part(t, gr, PART_POSTERIOR);
    for (TensorInfo& ti : out) ti.name = ti.name.substr(10);
    return out;
}

static std::string arch_config_json(const Arch& a) { return qwen2_config_json(arch_hf_config(a)); }

static PeftConfig lora_peft_config(const Config& c, const Arch& a) {
    PeftConfig p;
    p.r = c.lora_r;
    p.lora_alpha = c.lora_alpha;
    p.lora_dropout = c.lora_dropout;
    p.use_rslora = c.use_rslora != 0;
    const unsigned mask = lora_mask_parse(c.lora_targets);
    for (int s = 0; s < LORA_SITES; s++) if (mask >> s & 1) p.target_modules.push_back(LORA_SITE_NAMES[s]);
    p.base_model = c.init_from.empty() ? a.source : c.init_from;     // where the base weights came from
    return p;
}

// Where PEFT's save_pretrained puts adapter `name` of a model saved to dir: the adapter "default" in dir itself,
// any other in dir/<name>.
static std::string adapter_dir(const std::string& dir, const std::string& name) {
    return name == "default" ? dir : dir + "/" + name;
}

// The active adapter merged into the base weights (host values of the flat layout): W += scale B A per projection.
static void merge_active_adapter(const Model& m, std::vector<floatS>* w) {
    ModelTensors<floatS> h;
    TensorList<floatS> list = tensor_bind(m.p.table, param_bases(m.p.table, w->data(), BUF_PARAMS));
    model_tensors(list, &h, m.arch, m.groups, m.cfg.lora_r, m.cfg.d_z);
    for (int l = 0; l < m.arch.n_layers; l++)
        block_lora_merge(h.base.blocks[l], h.lora[m.groups.active][l], m.block, m.groups.lora_mask, m.cfg.lora_r, m.lora_scale);
}

// The cvae heads as dir/cvae_heads.safetensors (their names as in the checkpoint: cvae.router_head.weight, ...),
// with the run's c_base in the metadata.
static void write_heads(const Model& m, const std::string& dir, const std::vector<floatS>& w) {
    SafetensorsWriter st;
    for (const TensorInfo& t : model_part(m.p.table, m.groups, PART_HEADS)) safetensors_add_f32(&st, t.name, t.shape, w.data() + t.offset);
    safetensors_add_meta(&st, "format", "arc.cu train_cvae heads");
    safetensors_add_meta(&st, "c_base", hf_json_float(m.c_base));
    safetensors_write(st, dir + "/cvae_heads.safetensors");
}

// The exports of a step: the PEFT adapters (LoRA), and Hugging Face weights: the model (full training), or the base
// with the active adapter merged in (save_merged). In cvae mode also the heads (cvae_heads.safetensors beside the
// active adapter's files, or beside the model), and from scratch the posterior's network (hf_<step>/posterior/, HF's layout).
// Returns the folders written.
static std::string export_hf(Model* m, int step) {
    std::vector<floatS> w = params_values(m->p);
    const Arch& a = m->arch;
    std::string written;
    if (m->groups.lora) {
        const std::string dir = checkpoint_name(m->cfg.checkpoint_path, "adapter", step, "");
        const std::vector<std::string> names = adapter_names(m->cfg);
        for (size_t k = 0; k < names.size(); k++) {
            make_dirs(adapter_dir(dir, names[k]));
            peft_write(adapter_dir(dir, names[k]), lora_peft_config(m->cfg, a), model_part(m->p.table, m->groups, (int)k), w.data());
        }
        if (m->groups.cvae) write_heads(*m, adapter_dir(dir, names[m->groups.active]), w);
        written = dir;
        if (!m->cfg.save_merged) return written;
        merge_active_adapter(*m, &w);
    }
    const std::string dir = checkpoint_name(m->cfg.checkpoint_path, "hf", step, "");
    make_dirs(dir);
    hf_write_tensors(dir, model_part(m->p.table, m->groups, PART_BASE), w.data(), a.NH * a.HD, a.NKV * a.HD, "F32",
                     (size_t)5 << 30, arch_config_json(a), {{"step", std::to_string(step)}});
    if (m->groups.cvae && !m->groups.lora) {
        write_heads(*m, dir, w);
        make_dirs(dir + "/posterior");
        hf_write_tensors(dir + "/posterior", posterior_as_base(m->p.table, m->groups), w.data(), a.NH * a.HD, a.NKV * a.HD,
                         "F32", (size_t)5 << 30, arch_config_json(a), {{"step", std::to_string(step)}});
    }
    return written.empty() ? dir : written + "," + dir;
}

// The frozen weights come from files (init_from, load_adapter) when the base was loaded: a checkpoint then holds
// a CRC-32 of them instead of the weights (2 GB for Qwen2.5-0.5B), and a resumed run must load the same ones.
static bool checkpoint_stores_frozen(const Config& c) { return c.init_from.empty(); }

static uint32_t frozen_weights_crc(const Params& p) {
    const std::vector<floatS> w = params_values(p);
    uint32_t crc = 0;
    for (const ParamGroup& g : p.table.groups)
        if (g.kind == GROUP_FROZEN) crc = crc32(w.data() + g.begin, (g.end - g.begin) * sizeof(floatS), crc);
    return crc;
}

static void checkpoint_save(Model* m, const Data& d, int step, const std::string& config, Logger* log) {
    SectionList sections;
    const bool frozen = checkpoint_stores_frozen(m->cfg);
    params_sections(m->p, &sections, frozen);
    const uint32_t crc = frozen ? 0 : frozen_weights_crc(m->p);
    if (!frozen) section_add(&sections, "frozen_weights_crc", &crc, sizeof crc);
    if (dist().rank != 0) return;
    const int64_t state[4] = {step, d.epoch, d.cursor, (int64_t)d.train.size()};
    section_add(&sections, "state", state, sizeof state);
    if (m->groups.cvae) section_add(&sections, "c_base", &m->c_base, sizeof m->c_base);
    const std::string arch = arch_config_json(m->arch);
    section_add(&sections, "architecture", arch.data(), arch.size());
    const std::string& dir = m->cfg.checkpoint_path;
    const std::string path = checkpoint_name(dir, "ckpt", step, ".bin");
    checkpoint_write(path, step, config, sections);
    const std::string exported = m->cfg.save_hf ? " export=" + export_hf(m, step) : "";
    log_printf(log, "checkpoint step=%d path=%s%s\n", step, path.c_str(), exported.c_str());
    if (m->cfg.checkpoint_keep > 0) {
        const std::vector<int> all = checkpoint_list_steps(dir, "ckpt");
        for (size_t i = 0; i + m->cfg.checkpoint_keep < all.size(); i++) {
            remove(checkpoint_name(dir, "ckpt", all[i], ".bin").c_str());
            remove_dir_files(checkpoint_name(dir, "adapter", all[i], ""));
            remove_dir_files(checkpoint_name(dir, "hf", all[i], ""));
        }
    }
}

// Continues a run from a checkpoint, every value validated against this run.
static void checkpoint_load(Model* m, Data* d, int* step, const char* path, const Checkpoint& ck) {
    const Sections& s = ck.sections;
    auto arch = s.find("architecture");
    if (arch == s.end()) fatal("%s: no section 'architecture' (not a train_cvae checkpoint)", path);
    const std::string stored(arch->second.begin(), arch->second.end()), now = arch_config_json(m->arch);
    if (stored != now) fatal("%s: written for another architecture than model=%s (its config.json differs)", path, m->cfg.model.c_str());
    int64_t state[4];
    section_get(s, path, "state", state, 4);
    section_check_range(path, "the step", state[0], ck.step, ck.step);
    section_check_range(path, "the step", state[0], 0, INT32_MAX - 1);
    if (state[3] != (int64_t)d->train.size())
        fatal("%s: written with %lld training examples, this run has %zu (other data or tasks; start a new run)", path,
              (long long)state[3], d->train.size());
    section_check_range(path, "the data epoch", state[1], 0, state[0] * (int64_t)m->cfg.batch_size);
    section_check_range(path, "the data cursor", state[2], 0, (int64_t)d->train.size());
    const bool frozen = checkpoint_stores_frozen(m->cfg);
    if (!frozen) {
        uint32_t crc;
        section_get(s, path, "frozen_weights_crc", &crc, 1);
        if (crc != frozen_weights_crc(m->p))
            fatal("%s: the run was trained on other frozen weights than init_from=%s%s%s loads (their CRC-32 differs): "
                  "resume with the files it was started with", path, m->cfg.init_from.c_str(),
                  m->cfg.load_adapter.empty() ? "" : " and load_adapter=", m->cfg.load_adapter.c_str());
    }
    if (m->groups.cvae) {                                   // (a c_base given to this run overrides it)
        double c_base;
        section_get(s, path, "c_base", &c_base, 1);
        if (!c_base_plausible(c_base))
            fatal("%s: section 'c_base' holds %g: expected a baseline NLL per token in [%g, %g]", path, c_base, C_BASE_MIN, C_BASE_MAX);
        if (m->cfg.c_base == 0) m->c_base = c_base;
    }
    params_load_sections(&m->p, s, path, state[0], frozen);
    *step = (int)state[0];
    d->epoch = (int)state[1];
    d->cursor = state[2];
}

// An export's cvae heads (cvae_heads.safetensors) when the file exists, and its c_base unless this run gives one.
static void load_heads_if_present(Model* m, const std::string& file, std::vector<floatS>* w, Logger* log) {
    if (!file_exists(file.c_str())) return;
    const HfWeights hf = hf_weights_open(file.c_str());
    for (const std::string& name : hf_load_tensors(hf, model_part(m->p.table, m->groups, PART_HEADS), w->data(), 0, 0))
        log_printf(log, "warning: %s: tensor %s is not part of the model; ignored\n", file.c_str(), name.c_str());
    for (const auto& [key, value] : hf.files[0].metadata) {
        if (key != "c_base" || m->cfg.c_base > 0) continue;
        char* end = nullptr;
        const double c_base = strtod(value.c_str(), &end);
        if (end == value.c_str() || *end || !c_base_plausible(c_base))
            fatal("%s: metadata c_base is '%s': expected a number in [%g, %g]", file.c_str(), json_printable(value).c_str(),
                  C_BASE_MIN, C_BASE_MAX);
        m->c_base = c_base;
    }
    log_printf(log, "loaded %s\n", file.c_str());
}

// Base weights from Hugging Face safetensors (init_from), and a PEFT adapter (load_adapter). A cvae export
// continues as it was saved: its heads and c_base (cvae_heads.safetensors beside the active adapter, or in the
// init_from folder from scratch), the posterior's adapter (a load_adapter=DIR's subfolder named posterior_adapter, as the
// export writes it) or network (init_from's posterior/).
static void load_pretrained(Model* m, Logger* log) {
    const Config& c = m->cfg;
    const Arch& a = m->arch;
    std::vector<floatS> w = params_values(m->p);
    if (!c.init_from.empty()) {
        const HfWeights hf = hf_weights_open(c.init_from.c_str());
        const std::vector<std::string> unused = hf_load_tensors(hf, model_part(m->p.table, m->groups, PART_BASE), w.data(),
                                                                a.NH * a.HD, a.NKV * a.HD);
        for (const std::string& name : unused)
            log_printf(log, "warning: %s: tensor %s is not part of the model%s; ignored\n", c.init_from.c_str(), name.c_str(),
                       name == "lm_head.weight" && a.tied ? " (the lm head is tied to the embedding)" : "");
        log_printf(log, "loaded the base weights from %s\n", c.init_from.c_str());
    }
    const std::vector<std::string> names = m->groups.lora ? adapter_names(c) : std::vector<std::string>();
    std::vector<std::pair<int, std::string>> sources = adapter_sources(c);
    if (m->groups.cvae && m->groups.lora && c.load_adapter.find('=') == std::string::npos && !c.load_adapter.empty())
        // the export's posterior: a subfolder of the active adapter's folder ("default"), or its sibling (any other name)
        for (const std::string& dir : {c.load_adapter + "/" + c.posterior_adapter, c.load_adapter + "/../" + c.posterior_adapter})
            if (file_exists((dir + "/adapter_config.json").c_str())) {
                sources.push_back({m->groups.posterior, dir});
                break;
            }
    for (const auto& [k, dir] : sources) {
        peft_read(dir, lora_peft_config(c, a), model_part(m->p.table, m->groups, k), w.data());
        log_printf(log, "loaded adapter %s from %s\n", names[k].c_str(), dir.c_str());
        if (m->groups.cvae && k == m->groups.active) load_heads_if_present(m, dir + "/cvae_heads.safetensors", &w, log);
    }
    if (m->groups.cvae && !m->groups.lora && is_directory(c.init_from)) {
        load_heads_if_present(m, c.init_from + "/cvae_heads.safetensors", &w, log);
        if (file_exists((c.init_from + "/posterior/model.safetensors").c_str())) {
            const HfWeights hf = hf_weights_open((c.init_from + "/posterior").c_str());
            std::vector<TensorInfo> post = posterior_as_base(m->p.table, m->groups);
            hf_load_tensors(hf, post, w.data(), a.NH * a.HD, a.NKV * a.HD);
            log_printf(log, "loaded the posterior's network from %s/posterior\n", c.init_from.c_str());
        }
    }
    params_set(&m->p, w);
}

// What the first step computed, for debug_state.
typedef struct {
    int B, T;
    std::vector<int32_t> input_ids, labels;     // (B, T), Hugging Face's labels: the token, or -100 outside the loss
    std::vector<floatS> logits;                 // (B, T, V)
    double loss;                                // the objective (lm: the mean NLL of the y tokens; cvae: J)
    // cvae
    int Tq;
    std::vector<int32_t> slot_pos, router_pos, posterior_ids, posterior_pos;   // (B), (B), (B, Tq), (B)
    Latents latents;
    double recon, kl, pv, rmkl, tw;
} DebugCapture;

// A safetensors file that an independent implementation (dev/cvae_torch.py replay) can reproduce: the weights under
// Hugging Face's names (the adapters under PEFT's), the batch, the logits, the loss (the mean over labelled
// tokens) and the gradient of every trained tensor; the Qwen2 and LoRA configurations in the metadata.
static void debug_state_write(Model* m, const DebugCapture& cap, const std::string& path, const std::string& config) {
    const Arch& a = m->arch;
    const int B = cap.B, T = cap.T;
    const std::vector<floatS> w = params_values(m->p);
    std::vector<floatS> grads(m->p.table.n_dense);
    copy_to_host(grads.data(), m->p.grads, grads.size() * sizeof(floatS));
    SafetensorsWriter st;
    const std::vector<int>& adapters = m->groups.g_adapters;
    for (const TensorInfo& t : m->p.table.tensors) {
        const bool adapter = std::find(adapters.begin(), adapters.end(), t.group) != adapters.end();
        const bool trained = t.group < m->groups.n_trained;
        if (adapter && !trained) continue;              // the adapters the model does not run
        const bool posterior = m->groups.posterior >= 0 && t.group == adapters[m->groups.posterior];
        for (const HfPart& part : hf_parts(t.name, t.shape, a.NH * a.HD, a.NKV * a.HD)) {
            const std::string name = (posterior ? "posterior." : "") + std::string(adapter ? "base_model.model." : "") + part.hf_name;
            std::vector<int64_t> shape = t.shape;
            shape[0] = part.rows;
            const size_t offset = t.offset + (size_t)part.row_begin * (t.numel / t.shape[0]);
            safetensors_add_f32(&st, name, shape, w.data() + offset);
            if (trained) safetensors_add_f32(&st, "grad." + name, shape, grads.data() + offset);
        }
    }
    safetensors_add_i32(&st, "batch.input_ids", {B, T}, cap.input_ids.data());
    safetensors_add_i32(&st, "batch.labels", {B, T}, cap.labels.data());
    safetensors_add_f32(&st, "out.logits", {B, T, a.V}, cap.logits.data());
    const floatS loss = (floatS)cap.loss;
    safetensors_add_f32(&st, "out.loss", {1}, &loss);
    if (m->groups.cvae) {
        const Config& c = m->cfg;
        const int64_t dz = c.d_z;
        safetensors_add_i32(&st, "batch.slot_pos", {B}, cap.slot_pos.data());
        safetensors_add_i32(&st, "batch.router_pos", {B}, cap.router_pos.data());
        safetensors_add_i32(&st, "batch.posterior_ids", {B, cap.Tq}, cap.posterior_ids.data());
        safetensors_add_i32(&st, "batch.posterior_pos", {B}, cap.posterior_pos.data());
        const Latents& L = cap.latents;
        safetensors_add_f32(&st, "batch.eps", {B, dz}, L.eps.data());
        for (const auto& [name, v] : {std::make_pair("out.mu_q", &L.mu_q), std::make_pair("out.logvar_q", &L.lv_q),
                                      std::make_pair("out.mu_p", &L.mu_p), std::make_pair("out.logvar_p", &L.lv_p),
                                      std::make_pair("out.z", &L.z)})
            safetensors_add_f32(&st, name, {B, dz}, v->data());
        for (const auto& [name, v] : {std::make_pair("out.recon", cap.recon), std::make_pair("out.kl", cap.kl),
                                      std::make_pair("out.pv", cap.pv), std::make_pair("out.rmkl", cap.rmkl),
                                      std::make_pair("out.tw", cap.tw)}) {
            const floatS x = (floatS)v;
            safetensors_add_f32(&st, name, {1}, &x);
        }
        safetensors_add_meta(&st, "cvae", "{\"d_z\": " + std::to_string(c.d_z) + ", \"beta\": " + hf_json_float(c.beta) +
                                              ", \"c_base\": " + hf_json_float(m->c_base) + ", \"posterior_variance_weight\": " +
                                              hf_json_float(c.posterior_variance_weight) + ", \"router_marginal_kl_to_prior_weight\": " +
                                              hf_json_float(c.router_marginal_kl_to_prior_weight) +
                                              ", \"token_weighted_reconstruction_weight\": " +
                                              hf_json_float(c.token_weighted_reconstruction_weight) + "}");
    }
    safetensors_add_meta(&st, "format", "arc.cu debug state");
    safetensors_add_meta(&st, "config", arch_config_json(a));
    if (m->groups.lora) safetensors_add_meta(&st, "lora", peft_config_json(lora_peft_config(m->cfg, a)));
    safetensors_add_meta(&st, "trainable", m->groups.lora ? "lora" : "base");
    safetensors_add_meta(&st, "run_config", config);
    safetensors_write(st, path);
}

// The batch and logits of the first micro-batch (before the loss overwrites the logits with their gradient), and
// in cvae mode its latent rows and values.
static void debug_capture(Model* m, DebugCapture* cap, const std::vector<const Example*>& ex, int T, const Latents* L, int Tq) {
    const int B = (int)ex.size(), V = m->arch.V, D = m->arch.D;
    cap->B = B;
    cap->T = T;
    cap->input_ids.assign((size_t)B * T, 0);
    cap->labels.assign((size_t)B * T, IGNORE_LABEL_ID);
    copy_to_host(cap->input_ids.data(), m->acts.gen.ids, cap->input_ids.size() * sizeof(int));
    for (int b = 0; b < B; b++)
        for (size_t t = ex[b]->n_prompt; t < ex[b]->ids.size(); t++) cap->labels[(size_t)b * T + t] = ex[b]->ids[t];
    cap->logits.resize((size_t)B * T * V);
    for (int r = 0; r < B * T; r++) {
        matmul_forward(m->acts.logits, m->acts.gen.hn + (size_t)r * D, lm_head_weight(*m), nullptr, 1, D, V, Stream());
        download_floatX(cap->logits.data() + (size_t)r * V, m->acts.logits, V);
    }
    if (!L) return;
    cap->Tq = Tq;
    cap->latents = *L;
    cap->posterior_ids.assign((size_t)B * Tq, 0);
    copy_to_host(cap->posterior_ids.data(), m->acts.post.ids, cap->posterior_ids.size() * sizeof(int));
    for (int b = 0; b < B; b++) {
        cap->slot_pos.push_back(ex[b]->n_prefix);
        cap->router_pos.push_back(ex[b]->n_prefix - 1);
        cap->posterior_pos.push_back((int)ex[b]->post_ids.size() - 1);
    }
}

// ----------------------------------------------------------------------------------------------------------
// 10. Training step and main loop.

// Model FLOPs of a micro-batch's training step: the forward pass (the generator's blocks and lm head; in cvae mode
// the posterior's blocks over Tq tokens) and the backward pass, which computes the input gradients of everything
// (as many FLOPs as the forward) and the weight gradients of what is trained (as many again for the base when it is
// trained; LoRA's adapters and the cvae heads are in the count of neither: a few percent at r = 16).
// Recomputation and the router's moment pass (rmkl) are not counted.
static double micro_batch_flops(const Model& m, int B, int T, int Tq) {
    const double gen = stack_flops(stack_shape(m, generator_net(m), B, T, nullptr, 0, true)) + 2.0 * B * T * m.arch.D * m.arch.V;
    const double post = Tq ? stack_flops(stack_shape(m, posterior_net(m), B, Tq, nullptr, 0, true)) : 0.0;
    const double weight_grads = m.groups.lora ? 0.0 : 1.0;
    return (gen + post) * (2.0 + weight_grads);
}

typedef struct {
    double loss, token_acc, targets, tokens, flops;
    // cvae: J's terms (loss is J; recon the mean NLL per y token), and each weighted term's gradient norm at the
    // latent statistics (recon, kl, pv, rmkl)
    double recon, kl, pv, rmkl, tw, grad_norms[4];
} StepMetrics;

// J's terms for the train line: each unweighted and weighted (w_*), and the norm of each weighted term's gradient
// at the latent statistics (gn_*; the reconstruction's through z).
static std::string cvae_terms_field(const Config& c, const StepMetrics& r, double c_base) {
    char buf[512];
    snprintf(buf, sizeof buf, " recon=%.5f recon_ratio=%.5f kl=%.5g pv=%.5g rmkl=%.5g w_recon=%.5g w_kl=%.5g w_pv=%.5g w_rmkl=%.5g "
             "gn_recon=%.4g gn_kl=%.4g gn_pv=%.4g gn_rmkl=%.4g", r.recon, r.recon / c_base, r.kl, r.pv, r.rmkl, r.recon / c_base,
             c.beta * r.kl, c.posterior_variance_weight * r.pv, c.router_marginal_kl_to_prior_weight * r.rmkl, r.grad_norms[0],
             r.grad_norms[1], r.grad_norms[2], r.grad_norms[3]);
    std::string out = buf;
    if (c.token_weighted_reconstruction_weight > 0) {     // (gn_recon then includes its gradient through z)
        snprintf(buf, sizeof buf, " tw=%.5g w_tw=%.5g", r.tw, c.token_weighted_reconstruction_weight * r.tw);
        out += buf;
    }
    return out;
}

// J's weights and batch constants for a global batch of N examples with n_targets y tokens.
static ObjectiveScales objective_scales(const Config& c, double c_base, double N, double n_targets, const double* rmkl_sums) {
    ObjectiveScales sc;
    sc.recon_scale = 1.0 / (n_targets * c_base);
    sc.tw_weight = c.token_weighted_reconstruction_weight;
    sc.kl_scale = c.beta / N;
    sc.pv_scale = c.posterior_variance_weight / (N * c.d_z);
    sc.rmkl_weight = c.router_marginal_kl_to_prior_weight;
    sc.N = N;
    sc.rmkl_sums = c.router_marginal_kl_to_prior_weight > 0 ? rmkl_sums : nullptr;
    return sc;
}

// One optimizer step's forward and backward over the global batch (this rank's share: examples rank, rank + W,
// ...), gradients accumulated over the micro-batches and summed over the ranks. In cvae mode with a router
// marginal KL weight, a first forward pass over the batch's prompts gives the router's batch moments that the
// term's gradient needs (it is a function of the whole batch; the pass runs without LoRA's dropout, so with
// lora_dropout the moments are those of the undropped router, close to the logged ones).
static StepMetrics train_step(Model* m, Data* d, int step, double c_base, DebugCapture* cap) {
    const Config& c = m->cfg;
    const int rank = dist().rank, W = dist().world, dz = c.d_z;
    const bool cvae = m->groups.cvae;
    const std::vector<int> global = data_next_batch(d, c.batch_size, (uint64_t)c.seed);
    std::vector<std::pair<const Example*, uint64_t>> mine;      // with its position in the global batch (its noise key)
    for (size_t i = rank; i < global.size(); i += W) mine.push_back({&d->train[global[i]], (uint64_t)i});
    // micro-batches of similar lengths pad less (the loss is a sum over sequences: their grouping does not matter)
    std::stable_sort(mine.begin(), mine.end(), [](const auto& a, const auto& b) { return a.first->ids.size() < b.first->ids.size(); });
    double n_targets = 0;                                  // the y tokens of the global batch: the loss's mean
    for (int i : global) n_targets += (double)(d->train[i].ids.size() - d->train[i].n_prompt);
    const double N = (double)global.size();
    std::vector<double> moments(2 * dz, 0.0), rmkl_sums(2 * dz, 0.0);
    if (cvae && c.router_marginal_kl_to_prior_weight > 0) {
        std::vector<const Example*> ex;
        for (const auto& e : mine) ex.push_back(e.first);
        std::vector<floatS> mu, lv;
        router_latents(m, *d, ex, &mu, &lv);
        marginal_moments(rmkl_sums.data(), mu.data(), lv.data(), (int)ex.size(), dz);
        dist_sum_host(rmkl_sums.data(), 2 * dz);
    }
    const ObjectiveScales sc = objective_scales(c, c_base, N, n_targets, rmkl_sums.data());
    const uint64_t noise_seed = hash_u64((uint64_t)c.seed, 0xE95, (uint64_t)step);
    StepMetrics r = StepMetrics();
    r.targets = n_targets;
    for (size_t i0 = 0; i0 < mine.size(); i0 += m->mb) {
        std::vector<const Example*> ex;
        std::vector<uint64_t> keys;
        for (size_t i = i0; i < std::min(mine.size(), i0 + m->mb); i++) {
            ex.push_back(mine[i].first);
            keys.push_back(mine[i].second);
        }
        const int B = (int)ex.size(), T = batch_length(*m, ex);
        upload_batch(m, *d, ex, T);
        m->lora_seed = hash_u64((uint64_t)c.seed, 0xD0, (uint64_t)(d->epoch * 1000003LL + d->cursor), (uint64_t)(rank * 65536 + i0));
        int Tq = 0;
        if (cvae) {
            Tq = upload_latent_rows(m, *d, ex, T);
            const bool tw = c.token_weighted_reconstruction_weight > 0;
            const std::vector<floatS> baseline = tw ? token_baseline(m, B, T, Stream()) : std::vector<floatS>();
            Latents L;
            L.eps = latent_noise(B, dz, noise_seed, keys);
            cvae_forward(m, &L, B, T, Tq, true, Stream());
            if (cap && i0 == 0) debug_capture(m, cap, ex, T, &L, Tq);
            const LatentTerms t = cvae_backward(m, &L, B, T, Tq, sc, tw ? &baseline : nullptr, Stream());
            if (tw) {
                std::vector<floatS> nll((size_t)B * T);
                copy_to_host(nll.data(), m->acts.loss, nll.size() * sizeof(floatS));
                for (size_t k = 0; k < nll.size(); k++) r.tw += (double)baseline[k] * ((double)nll[k] - baseline[k]);
            }
            r.kl += t.kl;
            r.pv += t.pv;
            for (int k = 0; k < 4; k++) r.grad_norms[k] += t.gn2[k];
            marginal_moments(moments.data(), L.mu_p.data(), L.lv_p.data(), B, dz);
        } else {
            model_forward(m, generator_net(*m), &m->acts.gen, B, T, nullptr, 0, true, nullptr, Stream());
            if (cap && i0 == 0) debug_capture(m, cap, ex, T, nullptr, 0);
            loss_and_backward(m, B, T, (float)(1.0 / n_targets), true, Stream());
        }
        std::vector<floatS> loss((size_t)B * T);
        std::vector<int> argmax((size_t)B * T), targets((size_t)B * T);
        copy_to_host(loss.data(), m->acts.loss, loss.size() * sizeof(floatS));
        copy_to_host(argmax.data(), m->acts.argmax, argmax.size() * sizeof(int));
        copy_to_host(targets.data(), m->acts.targets, targets.size() * sizeof(int));
        for (size_t k = 0; k < loss.size(); k++) {
            r.loss += loss[k];
            r.token_acc += targets[k] != IGNORE_LABEL_ID && argmax[k] == targets[k];
        }
        for (const Example* e : ex) r.tokens += (double)(e->ids.size() + e->post_ids.size());
        r.flops += micro_batch_flops(*m, B, T, Tq);
    }
    params_grad_sum_start(&m->p, 0, m->groups.n_trained, Stream());
    dist_sum_wait(Stream());
    std::vector<double> sums = {r.loss, r.token_acc, r.tokens, r.kl, r.pv};
    for (int k = 0; k < 4; k++) sums.push_back(r.grad_norms[k]);
    sums.push_back(r.tw);
    sums.insert(sums.end(), moments.begin(), moments.end());
    dist_sum_host(sums.data(), (int)sums.size());
    r.recon = sums[0] / n_targets;
    r.token_acc = sums[1] / n_targets;
    r.tokens = sums[2];
    r.loss = r.recon;
    if (cvae) {
        r.kl = sums[3] / N;
        r.pv = sums[4] / (N * dz);
        for (int k = 0; k < 4; k++) r.grad_norms[k] = sqrt(sums[5 + k]);
        r.tw = sums[9] / (n_targets * c_base);
        r.rmkl = router_marginal_kl(sums.data() + 10, N, dz);
        r.loss = r.recon / c_base + c.beta * r.kl + c.posterior_variance_weight * r.pv + c.router_marginal_kl_to_prior_weight * r.rmkl +
                 c.token_weighted_reconstruction_weight * r.tw;
    }
    if (cap) cap->loss = r.loss, cap->recon = r.recon, cap->kl = r.kl, cap->pv = r.pv, cap->rmkl = r.rmkl, cap->tw = r.tw;
    return r;
}

// Flags compared when a run resumes (see config_check_file): the architecture's (fatal), run control (silent).
#define ARCH_KEYS "mode|lora_r|lora_alpha|lora_targets|use_rslora|optimizer|lora_adapters|adapter"
#define CVAE_ARCH_KEYS ARCH_KEYS "|posterior_adapter|d_z"
#define RUN_CONTROL_KEYS "checkpoint_path|resume|checkpoint_every|checkpoint_keep|save_hf|save_merged|log_every|debug_state|eval_every|" \
    "val_examples|gen_examples|gen_max_tokens|max_steps|epochs|eval_only|init_from|load_adapter|lm_head_chunk|micro_batch_size|" \
    "pad_to_max|align_examples"

static int train_main(int argc, char** argv) {
    Config cfg = config_defaults();
    std::vector<ArgSpec> specs = config_specs(&cfg);
    Run run;
    if (!run_begin(&run, &argc, &argv, specs, "key=value ...   (e.g. data_dir=data/strategies model=small)",
                   [&]() {
                       config_validate(cfg);
                       if (cfg.batch_size % dist().world)
                           fatal("batch_size=%d must be a multiple of the number of processes (%d)", cfg.batch_size, dist().world);
                   }, cfg.checkpoint_path))
        return 0;
    Logger& log = run.log;
    Data data;
    data.tok = tokenizer_load(cfg.tokenizer.c_str());
    const Arch arch = arch_resolve(cfg.model, data.tok.vocab_size());
    data_load(&data, cfg, arch);
    Model model;
    Model* m = &model;
    model_build(m, cfg, arch, cfg.batch_size / run.world);
    model_init_weights(m, (uint64_t)cfg.seed);
    load_pretrained(m, &log);

    int step = 0;
    if (cfg.resume) {
        if (run.rank == 0) checkpoint_dir_clean(cfg.checkpoint_path);
        Checkpoint ck;
        const std::string path = run_resume_newest(&run, checkpoint_paths_newest_first(cfg.checkpoint_path, "ckpt"), &ck,
                                                   true, cfg.checkpoint_path);
        if (path.empty()) {
            log_printf(&log, "resume=1: no checkpoint in %s yet, starting from step 0\n", cfg.checkpoint_path.c_str());
        } else {
            config_check_file(&run, path.c_str(), ck.config, cfg.mode == "cvae" ? CVAE_ARCH_KEYS : ARCH_KEYS, RUN_CONTROL_KEYS, true, true);
            checkpoint_load(m, &data, &step, path.c_str(), ck);
            log_printf(&log, "resumed from %s at step %d\n", path.c_str(), step);
        }
    }
    data_shuffle(&data, (uint64_t)cfg.seed);

    const double steps_per_epoch = (double)data.train.size() / cfg.batch_size;
    int total_steps = (int)std::min(2e9, ceil(cfg.epochs * steps_per_epoch));
    if (cfg.max_steps > 0) total_steps = cfg.max_steps;
    if (!cfg.debug_state.empty() && total_steps < 1) total_steps = 1;
    size_t n_trained = 0, n_total = 0;
    for (size_t g = 0; g < m->p.table.groups.size(); g++) {
        n_total += group_numel(m->p.table, (int)g);
        if ((int)g < m->groups.n_trained) n_trained += group_numel(m->p.table, (int)g);
    }
    log_printf(&log, "arc.cu train_cvae mode=%s (%s backend on %s, %s, %d process%s)  model=%s D=%d layers=%d heads=%d/%d "
               "I=%d V=%d tied=%d\n", cfg.mode.c_str(), BACKEND_NAME, run.device_name.c_str(), PRECISION_NAME, run.world,
               run.world > 1 ? "es" : "", arch.source.c_str(), arch.D, arch.n_layers, arch.NH, arch.NKV, arch.I, arch.V, arch.tied);
    log_printf(&log, "parameters: %zu, trained %zu (%s)  tokenizer: %s (%d ids)\n", n_total, n_trained,
               m->groups.lora ? ("LoRA r=" + std::to_string(cfg.lora_r) + " on " + cfg.lora_targets + ", adapter " +
                                 adapter_names(cfg)[m->groups.active] + " of " + cfg.lora_adapters).c_str()
                              : cfg.optimizer == "muon" ? "every weight; Muon on the block matrices" : "every weight",
               cfg.tokenizer.c_str(), data.tok.vocab_size());
    log_printf(&log, "data: %zu training examples, %zu %s examples, %zu tasks  steps: %d (%.1f per epoch)\n", data.train.size(),
               data.eval.size(), cfg.eval_split.c_str(), data.task_names.size(), total_steps, steps_per_epoch);
    log_printf(&log, "memory: %.2f GiB allocated (activations %.2f GiB for micro-batch %d of %d x %d tokens)\n",
               device_bytes_allocated() / 1073741824.0, m->acts_bytes / 1073741824.0, m->mb, m->B_local, m->T);
    if (m->groups.cvae) {
        if (m->c_base == 0) {
            m->c_base = evaluate_nll(m, data, step, &log, true).back().nll;
            if (!c_base_plausible(m->c_base))
                fatal("c_base: the validation NLL per token with z = 0 is %g, outside [%g, %g]: give c_base=", m->c_base, C_BASE_MIN, C_BASE_MAX);
            log_printf(&log, "c_base=%.5f: the validation NLL per y token of the model with z = 0 at step %d (R is divided by it)\n",
                       m->c_base, step);
        } else {
            log_printf(&log, "c_base=%.5f\n", m->c_base);
        }
        log_printf(&log, "cvae: d_z=%d beta=%g posterior_variance_weight=%g router_marginal_kl_to_prior_weight=%g, posterior: %s\n",
                   cfg.d_z, cfg.beta, cfg.posterior_variance_weight, cfg.router_marginal_kl_to_prior_weight,
                   m->groups.lora ? ("adapter " + cfg.posterior_adapter + " on the shared base").c_str() : "a network of its own");
    }
    auto evaluate = [&](int at) {
        std::vector<TaskEval> ev = evaluate_nll(m, data, at, &log);
        evaluate_generation(m, data, at, &ev, &log);
        return ev;
    };
    if (cfg.eval_only) {
        log_final(*m, data, evaluate(step), &log);
        run_end(&run);
        return 0;
    }
    if (!cfg.debug_state.empty() && (m->mb != m->B_local || run.world != 1))
        fatal("debug_state needs one process and one micro-batch per step (micro_batch_size=0)");

    const int first_step = step + 1;
    std::vector<TaskEval> last_eval;
    RunTiming timing = timing_begin(first_step);
    if (first_step > total_steps) log_printf(&log, "nothing to do: the run is at step %d of %d\n", step, total_steps);
    for (step = first_step; step <= total_steps; step++) {
        const double t0 = wall_time();
        DebugCapture cap;
        const bool capture = step == first_step && !cfg.debug_state.empty();
        StepMetrics r = train_step(m, &data, step, m->c_base, capture ? &cap : nullptr);
        if (!std::isfinite(r.loss))
            fatal("step %d: the loss is %g: the run diverged (try a lower lr); the checkpoints written so far are kept", step, r.loss);
        if (capture && run.rank == 0) {
            debug_state_write(m, cap, cfg.debug_state, run.config_text);
            log_printf(&log, "debug state written to %s\n", cfg.debug_state.c_str());
        }
        const UpdateStats u = model_update(m, step, total_steps, Stream());
        device_synchronize();
        const double seconds = wall_time() - t0;
        timing_step(&timing, step, seconds, r.flops);
        if (step == first_step)
            log_printf(&log, "memory: %.2f GiB in use on the device after the first step\n", device_memory_in_use() / 1073741824.0);
        if (step % cfg.log_every == 0 || step == total_steps)
            log_printf(&log, "train step=%d loss=%.5f%s token_acc=%.4f lr=%.3e grad_norm=%.4f ms=%.1f tokens_per_s=%.0f%s\n", step,
                       r.loss, m->groups.cvae ? cvae_terms_field(cfg, r, m->c_base).c_str() : "", r.token_acc, u.lr, u.grad_norm,
                       1000 * seconds, r.tokens / seconds, mfu_field(run, r.flops, seconds).c_str());
        log_progress(&run, timing, step, total_steps);
        const bool eval_now = (cfg.eval_every && step % cfg.eval_every == 0) || step == total_steps;
        if (eval_now) {
            last_eval = evaluate(step);
        }
        if (eval_now || (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0))
            checkpoint_save(m, data, step, run.config_text, &log);
    }
    if (!last_eval.empty()) log_final(*m, data, last_eval, &log);
    log_timing(&run, timing, cfg.batch_size);
    run_end(&run);
    return 0;
}

#ifndef TESTING
int main(int argc, char** argv) { return run_main(train_main, argc, argv); }
#endif
