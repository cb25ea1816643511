/*
train_etrm.cu — TRM and ETRM on ARC-AGI grids: training, evaluation and checkpoints in one file.

TRM (Tiny Recursive Model, Jolicoeur-Martineau 2025) solves a grid puzzle by recursion: one small 2-block
transformer f is applied H_cycles x (L_cycles + 1) times per "ACT step", alternately refining a latent
z_L (from z_L, z_H and the input x) and an answer state z_H (from z_H and z_L); the answer is read from
z_H by a linear head, and a q head on position 0 decides when to stop. The state is carried from one
optimizer step to the next (deep supervision), and only the last cycle receives gradient. TRM tells puzzles
apart by a learned per-puzzle embedding in the 16 prefix positions of the sequence. ETRM replaces that
embedding by the output of an encoder over the task's demonstration pairs, so unseen puzzles can be solved.

This file reads like the papers, top to bottom:
  1. configuration          6. update (AdamATan2 / AdamW, clipping, EMA, sign-SGD)
  2. parameters             7. data (batches, the ACT carry's samples)
  3. activations            8. evaluation (augmentation voting, pass@K, predictions)
  4. forward                9. checkpoints, safetensors, debug state
  5. loss and backward     10. main loop
It is compiled twice (see common/device.h): `train_etrm_cpu` by the host compiler, the CPU reference;
`train_etrm` by nvcc (the CUDA backend). Every op is a call to kernels/<op>.cuh with the same signature on
both backends.
*/
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <algorithm>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

// defines: fatal, fopen_check, fread_check, fwrite_check, write_file_atomic, split_commas
#include "common/utils.h"
// defines: floatX, floatS, Stream, device_malloc, device_free, copy_to_device, copy_to_host, device_memset
#include "common/device.h"
// defines: hash_u64, hash_uniform, hash_below, Rng, rng_make, rng_trunc_normal
#include "common/rand.h"
// defines: ArgSpec, args_parse, args_dump
#include "common/args.h"
// defines: Logger, logger_open, log_printf, wall_time
#include "common/logger.h"
// defines: ArcTaskFile, arc_tasks_load
#include "common/arc_tasks.h"
// defines: Augmentation, augmentation_table, grid_augment, grid_unaugment, grid_tokenize, grid_crop_tokens
#include "common/augment.h"
// defines: Sample, DataLoader, loader_init, loader_next_train_batch, loader_next_eval_batch, loader_blank_sample
#include "common/dataloader.h"
// defines: Safetensors, safetensors_read, safetensors_get, SafetensorsWriter, safetensors_write
#include "common/safetensors.h"
// defines: checkpoint_write, checkpoint_read, section_get, section_add, SectionList, Sections
#include "common/checkpoint.h"
// defines: Dist, dist_init, dist_init_device, dist_sum, dist_allgather, dist_sum_host, dist_gather_host, ...
#include "common/distributed.h"
// defines: ParamTable, ParamGroup, TensorList, tensor_bind, Params, params_alloc, params_set, params_values, ...
#include "common/parameters.h"
// defines: Schedule, lr_schedule, clip_scale, AdamConfig, params_grad_norm_squared, params_update, ...
#include "common/optimizer.h"
// defines: Arena, arena_take, arena_alloc
#include "common/arena.h"
// defines: BlockConfig, BlockTensors, block_tensors, StackActs, StackShape, BlockScratch, stack_forward, stack_backward, ...
#include "common/transformer.h"
// defines: Run, run_begin, run_end, RunTiming, timing_step, mfu_field, log_progress, log_timing
#include "common/run.h"
// defines: matmul_forward, matmul_backward
#include "kernels/matmul.cuh"
// defines: rmsnorm_forward, rmsnorm_backward
#include "kernels/rmsnorm.cuh"
// defines: add_forward
#include "kernels/add.cuh"
// defines: embedding_forward, embedding_backward, prefix_forward, prefix_backward
#include "kernels/embedding.cuh"
// defines: gather_rows, scatter_rows, broadcast_rows, broadcast_rows_backward
#include "kernels/rows.cuh"
// defines: masked_mean_forward, masked_mean_backward
#include "kernels/masked_mean.cuh"
// defines: gaussian_noise, reparameterize_forward, reparameterize_backward
#include "kernels/variational.cuh"
// defines: IGNORE_LABEL_ID, stablemax_loss_forward, stablemax_loss_backward
#include "kernels/stablemax.cuh"
// defines: q_halt_loss_forward, q_halt_loss_backward
#include "kernels/q_halt_loss.cuh"
// defines: act_reset, act_halt
#include "kernels/act.cuh"
// defines: puzzle_emb_gather, sign_sgd_update
#include "kernels/puzzle_embedding.cuh"
// defines: adam_update (also the test-time latent optimisation's)
#include "kernels/adam.cuh"
// defines: convert_to_floatS
#include "kernels/convert.cuh"

// ----------------------------------------------------------------------------------------------------------
// 1. Configuration: the upstream config names (TinyRecursiveModels cfg_pretrain.yaml + arch/trm.yaml, etrm
//    cfg_pretrain_etrm_arc_agi_1.yaml + arch/etrm.yaml), defaults as upstream's ARC runs (L_cycles = 4, the
//    value of the README command and the released checkpoint), plus the flags of our design decisions.

typedef struct {
    // model
    int hidden_size, num_heads, L_layers, H_cycles, L_cycles, puzzle_emb_len, puzzle_emb_ndim, halt_max_steps;
    float expansion, rope_theta, rms_norm_eps, halt_exploration_prob;
    std::string encoder_type, encoder_norm_style, encoder_pooling_method, latent_mode;
    int encoder_num_layers, encoder_set_layers, set_encoder_final_norm, max_demos, latent_hold_steps, kl_anneal_steps;
    float encoder_prefix_scale, kl_weight;
    int latent_opt_steps, latent_inner_steps;
    float latent_opt_lr, latent_inner_lr;
    // optimisation
    int global_batch_size, micro_batch_size, epochs, eval_interval, eval_interval_steps, max_steps, lr_warmup_steps, freeze_decoder_steps;
    int ema, seed;
    float lr, lr_min_ratio, beta1, beta2, weight_decay, grad_clip_norm, adam_eps, encoder_lr_scale;
    float puzzle_emb_lr, puzzle_emb_weight_decay, ema_rate;
    std::string optimizer;
    // data
    std::string data_paths, data_paths_test;
    int canvas, num_aug, max_train_groups, max_eval_groups, eval_num_aug, eval_shuffle_demos;
    // run control
    std::string checkpoint_path, load_checkpoint, load_decoder, debug_state;
    int resume, checkpoint_every, checkpoint_keep, save_safetensors, eval_only, log_every;
} Config;

static Config config_defaults() {
    Config c;
    c.hidden_size = 512; c.num_heads = 8; c.expansion = 4.0f; c.L_layers = 2; c.H_cycles = 3; c.L_cycles = 4;
    c.puzzle_emb_len = 16; c.puzzle_emb_ndim = 0; c.rope_theta = 10000.0f; c.rms_norm_eps = 1e-5f;
    c.halt_max_steps = 16; c.halt_exploration_prob = 0.1f;
    c.encoder_type = "standard"; c.encoder_num_layers = 2; c.encoder_set_layers = 1; c.encoder_norm_style = "post";
    c.encoder_pooling_method = "mean"; c.set_encoder_final_norm = 1; c.encoder_prefix_scale = 0.0f;
    c.latent_mode = "sample"; c.latent_hold_steps = 100; c.kl_weight = 1e-4f; c.kl_anneal_steps = 0; c.max_demos = 10;
    c.latent_opt_steps = 0; c.latent_opt_lr = 1e-2f; c.latent_inner_steps = 0; c.latent_inner_lr = 0.1f;
    c.global_batch_size = 384; c.micro_batch_size = 0; c.epochs = 100000; c.eval_interval = 10000; c.eval_interval_steps = 0; c.max_steps = 0;
    c.lr = 1e-4f; c.lr_min_ratio = 1.0f; c.lr_warmup_steps = 2000; c.beta1 = 0.9f; c.beta2 = 0.95f;
    c.weight_decay = 0.1f; c.grad_clip_norm = 1.0f; c.optimizer = "adam_atan2"; c.adam_eps = 1e-8f;
    c.encoder_lr_scale = 0.0f; c.freeze_decoder_steps = 0; c.puzzle_emb_lr = 1e-2f; c.puzzle_emb_weight_decay = 0.1f;
    c.ema = 1; c.ema_rate = 0.999f; c.seed = 0;
    c.data_paths = ""; c.data_paths_test = ""; c.canvas = 0; c.num_aug = 1000; c.max_train_groups = 0;
    c.max_eval_groups = 0; c.eval_num_aug = 0; c.eval_shuffle_demos = 0;
    c.checkpoint_path = "out"; c.load_checkpoint = ""; c.load_decoder = ""; c.debug_state = "";
    c.resume = 0; c.checkpoint_every = 0; c.checkpoint_keep = 3; c.save_safetensors = 1; c.eval_only = 0; c.log_every = 1;
    return c;
}

static std::vector<ArgSpec> config_specs(Config* c) {
    return {
        // model
        {"hidden_size", ARG_INT, &c->hidden_size, "width D of the decoder and the encoders", nullptr},
        {"num_heads", ARG_INT, &c->num_heads, "attention heads (head dim = hidden_size / num_heads)", nullptr},
        {"expansion", ARG_FLOAT, &c->expansion, "SwiGLU width: round_up(expansion * D * 2/3, 256)", nullptr},
        {"L_layers", ARG_INT, &c->L_layers, "blocks in the recursive net f", nullptr},
        {"H_cycles", ARG_INT, &c->H_cycles, "outer cycles per ACT step (all but the last without gradient)", nullptr},
        {"L_cycles", ARG_INT, &c->L_cycles, "z_L updates per H cycle", nullptr},
        {"puzzle_emb_len", ARG_INT, &c->puzzle_emb_len, "prefix positions P (0: ceil(puzzle_emb_ndim / D))", nullptr},
        {"puzzle_emb_ndim", ARG_INT, &c->puzzle_emb_ndim, "TRM puzzle-embedding size (0: hidden_size)", nullptr},
        {"rope_theta", ARG_FLOAT, &c->rope_theta, "RoPE base", nullptr},
        {"rms_norm_eps", ARG_FLOAT, &c->rms_norm_eps, "RMSNorm epsilon", nullptr},
        {"halt_max_steps", ARG_INT, &c->halt_max_steps, "ACT steps at most (evaluation always runs this many)", nullptr},
        {"halt_exploration_prob", ARG_FLOAT, &c->halt_exploration_prob, "probability a slot must run >= U{2..max} steps", nullptr},
        {"encoder_type", ARG_STRING, &c->encoder_type, "demonstration encoder (ETRM), or none for TRM's puzzle embedding",
         "none|standard|hybrid_standard|hybrid_variational|lpn_standard|lpn_variational"},
        {"encoder_num_layers", ARG_INT, &c->encoder_num_layers, "blocks of the per-demo grid encoder", nullptr},
        {"encoder_set_layers", ARG_INT, &c->encoder_set_layers, "cross-attention layers of the demo-set encoder", nullptr},
        {"encoder_norm_style", ARG_STRING, &c->encoder_norm_style, "standard grid and set encoder blocks", "post|pre"},
        {"encoder_pooling_method", ARG_STRING, &c->encoder_pooling_method, "standard grid encoder token pooling", "mean"},
        {"set_encoder_final_norm", ARG_BOOL, &c->set_encoder_final_norm, "RMSNorm at the end of the set encoder (seed-001 fix; 0 = before the fix)", nullptr},
        {"encoder_prefix_scale", ARG_FLOAT, &c->encoder_prefix_scale, "scale of the encoder context in the prefix (0: sqrt(hidden_size), upstream)", nullptr},
        {"latent_mode", ARG_STRING, &c->latent_mode, "variational latents in training: sample (upstream), mean, hold (resample every latent_hold_steps)", "sample|mean|hold"},
        {"latent_hold_steps", ARG_INT, &c->latent_hold_steps, "steps between resamples for latent_mode=hold", nullptr},
        {"kl_weight", ARG_FLOAT, &c->kl_weight, "weight of the KL term (variational encoders)", nullptr},
        {"kl_anneal_steps", ARG_INT, &c->kl_anneal_steps, "linear warm-up of the KL weight over this many steps (0: off)", nullptr},
        {"max_demos", ARG_INT, &c->max_demos, "demonstration slots per sample (extra demos are dropped)", nullptr},
        {"latent_opt_steps", ARG_INT, &c->latent_opt_steps, "evaluation: Adam steps refining each sample's encoder latent on its demonstrations (LPN-style; 0: off)", nullptr},
        {"latent_opt_lr", ARG_FLOAT, &c->latent_opt_lr, "learning rate of latent_opt_steps", nullptr},
        {"latent_inner_steps", ARG_INT, &c->latent_inner_steps, "training: gradient steps on each sample's latent on its demonstrations before it is decoded (LPN's Grad-N; 0: off)", nullptr},
        {"latent_inner_lr", ARG_FLOAT, &c->latent_inner_lr, "step size of latent_inner_steps", nullptr},
        // optimisation
        {"global_batch_size", ARG_INT, &c->global_batch_size, "samples per optimizer step", nullptr},
        {"micro_batch_size", ARG_INT, &c->micro_batch_size, "samples per forward/backward, gradients accumulated (0: the whole batch)", nullptr},
        {"epochs", ARG_INT, &c->epochs, "training length in epochs (upstream: total_steps = epochs * groups [* examples] / batch)", nullptr},
        {"eval_interval", ARG_INT, &c->eval_interval, "evaluate (and checkpoint) every this many epochs (0: only at the end)", nullptr},
        {"eval_interval_steps", ARG_INT, &c->eval_interval_steps, "evaluate (and checkpoint) every this many optimizer steps instead (0: eval_interval)", nullptr},
        {"max_steps", ARG_INT, &c->max_steps, "stop after this many optimizer steps (0: from epochs)", nullptr},
        {"lr", ARG_FLOAT, &c->lr, "learning rate", nullptr},
        {"lr_min_ratio", ARG_FLOAT, &c->lr_min_ratio, "cosine decay to lr * this after warm-up (1: constant)", nullptr},
        {"lr_warmup_steps", ARG_INT, &c->lr_warmup_steps, "linear warm-up steps", nullptr},
        {"beta1", ARG_FLOAT, &c->beta1, "Adam beta1", nullptr},
        {"beta2", ARG_FLOAT, &c->beta2, "Adam beta2", nullptr},
        {"weight_decay", ARG_FLOAT, &c->weight_decay, "decoupled weight decay", nullptr},
        {"grad_clip_norm", ARG_FLOAT, &c->grad_clip_norm, "clip the global gradient norm to this (0: off)", nullptr},
        {"optimizer", ARG_STRING, &c->optimizer, "dense-parameter optimizer", "adam_atan2|adamw"},
        {"adam_eps", ARG_FLOAT, &c->adam_eps, "AdamW epsilon (AdamATan2 has none)", nullptr},
        {"encoder_lr_scale", ARG_FLOAT, &c->encoder_lr_scale, "encoder lr = lr * this and wd = wd * 0.1 (0: same as the decoder)", nullptr},
        {"freeze_decoder_steps", ARG_INT, &c->freeze_decoder_steps, "do not update the decoder for this many steps", nullptr},
        {"puzzle_emb_lr", ARG_FLOAT, &c->puzzle_emb_lr, "TRM puzzle-embedding sign-SGD learning rate", nullptr},
        {"puzzle_emb_weight_decay", ARG_FLOAT, &c->puzzle_emb_weight_decay, "TRM puzzle-embedding weight decay", nullptr},
        {"ema", ARG_BOOL, &c->ema, "keep an EMA of the weights and evaluate with it", nullptr},
        {"ema_rate", ARG_FLOAT, &c->ema_rate, "EMA rate", nullptr},
        {"seed", ARG_INT, &c->seed, "seed of initialisation, data order, augmentation and all sampling", nullptr},
        // data
        {"data_paths", ARG_STRING, &c->data_paths, "training task files (data/arc.py or data/synth.py output), comma-separated", nullptr},
        {"data_paths_test", ARG_STRING, &c->data_paths_test, "evaluation task files, comma-separated, each reported separately", nullptr},
        {"canvas", ARG_INT, &c->canvas, "canvas side (0: from the data files; ARC 30)", nullptr},
        {"num_aug", ARG_INT, &c->num_aug, "augmentations per task besides the original (dihedral x colour permutation)", nullptr},
        {"max_train_groups", ARG_INT, &c->max_train_groups, "train on the first N tasks only (0: all)", nullptr},
        {"max_eval_groups", ARG_INT, &c->max_eval_groups, "evaluate the first N tasks of each file only (0: all)", nullptr},
        {"eval_num_aug", ARG_INT, &c->eval_num_aug, "augmentations voted per test input (0: the whole table)", nullptr},
        {"eval_shuffle_demos", ARG_INT, &c->eval_shuffle_demos, "evaluate every test input with another task's demonstrations (the control for whether the answers use them)", nullptr},
        // run control
        {"checkpoint_path", ARG_STRING, &c->checkpoint_path, "directory for the log, checkpoints, predictions", nullptr},
        {"load_checkpoint", ARG_STRING, &c->load_checkpoint, "start from weights: an arc.cu checkpoint (.bin) or a safetensors file", nullptr},
        {"load_decoder", ARG_STRING, &c->load_decoder, "load the decoder (inner.*) from a TRM safetensors file (alias: load_pretrained_decoder)", nullptr},
        {"load_pretrained_decoder", ARG_STRING, &c->load_decoder, "upstream name of load_decoder", nullptr},
        {"debug_state", ARG_STRING, &c->debug_state, "write weights, batch, outputs and gradients of the first step to this safetensors file", nullptr},
        {"resume", ARG_BOOL, &c->resume, "continue from the latest checkpoint in checkpoint_path", nullptr},
        {"checkpoint_every", ARG_INT, &c->checkpoint_every, "also checkpoint every this many steps (0: only at evaluations and the end)", nullptr},
        {"checkpoint_keep", ARG_INT, &c->checkpoint_keep, "keep the newest N checkpoints (0: all)", nullptr},
        {"save_safetensors", ARG_BOOL, &c->save_safetensors, "with each checkpoint, export the (EMA) weights as safetensors", nullptr},
        {"eval_only", ARG_BOOL, &c->eval_only, "only evaluate the loaded weights and write predictions", nullptr},
        {"log_every", ARG_INT, &c->log_every, "log a training line every this many steps", nullptr},
    };
}

// The derived sizes of the model. Notation: B batch, T decoder sequence, D width, NH heads, HD head width,
// I SwiGLU width, V vocabulary, P prefix positions, S grid tokens (canvas^2), K demo slots, S2 tokens per demo.
typedef enum { ENC_NONE, ENC_STANDARD, ENC_HYBRID_STANDARD, ENC_HYBRID_VARIATIONAL, ENC_LPN_STANDARD, ENC_LPN_VARIATIONAL } EncoderKind;

#define VOCAB 12          // 0 PAD, 1 EOS, 2..11 colours 0..9

// Output width of a head of n outputs as the trainer lays it out: n rounded up to 8, a multiple of 16 bytes in
// bf16 (and fp32), so cuBLASLt always has a tensor-core algorithm for its leading dimensions. The extra weight
// rows are zero and get zero gradient: the extra outputs are 0 and nothing reads them.
static int head_width(int n) { return CEIL_DIV(n, 8) * 8; }

typedef struct {
    int D, NH, HD, I, V, P, S, T, canvas;
    int V_pad, Q_pad;     // output widths of the lm head and the q head (head_width): rows of logits and q
    EncoderKind enc;
    bool lpn_grid;        // LPN grid encoder (CLS token, pre-norm); else the standard grid encoder
    bool set_encoder;     // standard, hybrid_*: cross-attention over the demo encodings
    bool variational;
    int K, S2;            // demo slots, tokens per encoded demo (2S, or 1 + 2S with the CLS token)
    int ndim;             // TRM puzzle-embedding size
    float prefix_scale;
    float logvar_lo, logvar_hi;   // variational clamp: [-10, 10] for hybrid_variational (upstream), none for lpn
    BlockConfig block;    // every block (pre_norm is set per stack): scale-free RMSNorm, no biases, NH kv heads
} Dims;

static Dims make_dims(const Config& c, int canvas) {
    Dims d;
    d.D = c.hidden_size; d.NH = c.num_heads; d.HD = d.D / d.NH; d.V = VOCAB; d.canvas = canvas;
    d.V_pad = head_width(d.V);
    d.Q_pad = head_width(2);
    d.I = (int)lround(c.expansion * d.D * 2.0 / 3.0);
    d.I = CEIL_DIV(d.I, 256) * 256;
    const std::string& t = c.encoder_type;
    d.enc = t == "none" ? ENC_NONE : t == "standard" ? ENC_STANDARD : t == "hybrid_standard" ? ENC_HYBRID_STANDARD
          : t == "hybrid_variational" ? ENC_HYBRID_VARIATIONAL : t == "lpn_standard" ? ENC_LPN_STANDARD : ENC_LPN_VARIATIONAL;
    d.ndim = d.enc == ENC_NONE ? (c.puzzle_emb_ndim > 0 ? c.puzzle_emb_ndim : d.D) : 0;
    d.P = c.puzzle_emb_len > 0 ? c.puzzle_emb_len : CEIL_DIV(d.ndim, d.D);
    d.S = canvas * canvas;
    d.T = d.P + d.S;
    d.lpn_grid = d.enc == ENC_HYBRID_STANDARD || d.enc == ENC_HYBRID_VARIATIONAL || d.enc == ENC_LPN_STANDARD || d.enc == ENC_LPN_VARIATIONAL;
    d.set_encoder = d.enc == ENC_STANDARD || d.enc == ENC_HYBRID_STANDARD || d.enc == ENC_HYBRID_VARIATIONAL;
    d.variational = d.enc == ENC_HYBRID_VARIATIONAL || d.enc == ENC_LPN_VARIATIONAL;
    d.K = d.enc == ENC_NONE ? 0 : c.max_demos;
    d.S2 = 2 * d.S + (d.lpn_grid ? 1 : 0);
    d.prefix_scale = (d.enc != ENC_NONE && c.encoder_prefix_scale > 0) ? c.encoder_prefix_scale : sqrtf((float)d.D);
    d.logvar_lo = d.enc == ENC_HYBRID_VARIATIONAL ? -10.0f : -INFINITY;
    d.logvar_hi = d.enc == ENC_HYBRID_VARIATIONAL ? 10.0f : INFINITY;
    d.block = {d.D, d.NH, d.NH, d.HD, d.I, false, false, false, false, c.rms_norm_eps};
    return d;
}

// The keys that give the weights their meaning: a checkpoint or safetensors file written with other values is
// refused (resume=1, load_checkpoint=; load_decoder= compares the decoder's). On resume, other differing keys are
// logged as warnings, except these run-control keys, which a continued run is expected to change.
// (Keys whose 0 means "derived", canvas or puzzle_emb_len, are not compared as text; their sizes are checked.)
#define ARCH_KEYS "hidden_size|num_heads|expansion|L_layers|rope_theta|rms_norm_eps|encoder_type|encoder_num_layers|" \
    "encoder_set_layers|encoder_norm_style|encoder_pooling_method|set_encoder_final_norm"
#define DECODER_ARCH_KEYS "hidden_size|num_heads|expansion|L_layers|rope_theta|rms_norm_eps"
#define RUN_CONTROL_KEYS "epochs|max_steps|eval_interval|eval_interval_steps|data_paths_test|max_eval_groups|eval_num_aug|eval_shuffle_demos|checkpoint_path|" \
    "load_checkpoint|load_decoder|debug_state|resume|checkpoint_every|checkpoint_keep|save_safetensors|eval_only|log_every"

// Checks that need the whole configuration; every message names the key and the value.
static void config_validate(const Config& c) {
    auto positive = [](const char* key, int v) { if (v <= 0) fatal("%s=%d: must be positive", key, v); };
    positive("hidden_size", c.hidden_size); positive("num_heads", c.num_heads); positive("L_layers", c.L_layers);
    positive("H_cycles", c.H_cycles); positive("L_cycles", c.L_cycles); positive("halt_max_steps", c.halt_max_steps);
    positive("global_batch_size", c.global_batch_size); positive("epochs", c.epochs); positive("log_every", c.log_every);
    if (c.hidden_size % c.num_heads) fatal("hidden_size=%d is not divisible by num_heads=%d", c.hidden_size, c.num_heads);
    if ((c.hidden_size / c.num_heads) % 2) fatal("head dim hidden_size/num_heads=%d must be even (RoPE rotates pairs)", c.hidden_size / c.num_heads);
    if (c.encoder_type != "none") {
        positive("encoder_num_layers", c.encoder_num_layers); positive("max_demos", c.max_demos);
        positive("puzzle_emb_len", c.puzzle_emb_len);
        if ((c.encoder_type == "standard" || c.encoder_type.rfind("hybrid", 0) == 0) && c.encoder_set_layers <= 0)
            fatal("encoder_set_layers=%d: %s needs at least one set-encoder layer", c.encoder_set_layers, c.encoder_type.c_str());
    }
    auto non_negative = [](const char* key, double v) { if (!(v >= 0)) fatal("%s=%g: must be >= 0", key, v); };
    non_negative("lr", c.lr); non_negative("lr_warmup_steps", c.lr_warmup_steps); non_negative("weight_decay", c.weight_decay);
    non_negative("grad_clip_norm", c.grad_clip_norm); non_negative("kl_weight", c.kl_weight);
    non_negative("kl_anneal_steps", c.kl_anneal_steps); non_negative("encoder_lr_scale", c.encoder_lr_scale);
    non_negative("freeze_decoder_steps", c.freeze_decoder_steps); non_negative("puzzle_emb_lr", c.puzzle_emb_lr);
    non_negative("puzzle_emb_weight_decay", c.puzzle_emb_weight_decay); non_negative("lr_min_ratio", c.lr_min_ratio);
    non_negative("checkpoint_every", c.checkpoint_every); non_negative("checkpoint_keep", c.checkpoint_keep);
    non_negative("eval_interval", c.eval_interval); non_negative("eval_interval_steps", c.eval_interval_steps); non_negative("puzzle_emb_ndim", c.puzzle_emb_ndim);
    non_negative("puzzle_emb_len", c.puzzle_emb_len); non_negative("encoder_set_layers", c.encoder_set_layers);
    non_negative("latent_opt_steps", c.latent_opt_steps); non_negative("latent_opt_lr", c.latent_opt_lr);
    if (c.latent_opt_steps > 0 && c.encoder_type == "none") fatal("latent_opt_steps=%d needs an encoder (encoder_type=none has no latent)", c.latent_opt_steps);
    non_negative("latent_inner_steps", c.latent_inner_steps); non_negative("latent_inner_lr", c.latent_inner_lr);
    if (c.eval_shuffle_demos != 0 && c.eval_shuffle_demos != 1) fatal("eval_shuffle_demos=%d: expected 0 or 1", c.eval_shuffle_demos);
    if (c.eval_shuffle_demos && c.encoder_type == "none") fatal("eval_shuffle_demos=1 needs an encoder (encoder_type=none reads no demonstrations)");
    if (c.latent_inner_steps > 0 && c.encoder_type == "none") fatal("latent_inner_steps=%d needs an encoder (encoder_type=none has no latent)", c.latent_inner_steps);
    if (c.latent_inner_steps > 0 && !c.debug_state.empty()) fatal("debug_state: the PyTorch replay has no latent_inner_steps; set latent_inner_steps=0");
    if (!(c.expansion > 0) || !(c.rope_theta > 0) || !(c.rms_norm_eps > 0) || !(c.adam_eps > 0))
        fatal("expansion=%g, rope_theta=%g, rms_norm_eps=%g and adam_eps=%g must be positive", c.expansion, c.rope_theta, c.rms_norm_eps, c.adam_eps);
    if (!(c.beta1 >= 0 && c.beta1 < 1) || !(c.beta2 >= 0 && c.beta2 < 1)) fatal("beta1=%g, beta2=%g: must be in [0, 1)", c.beta1, c.beta2);
    if (c.encoder_type == "none" && c.puzzle_emb_len > 0 && (c.puzzle_emb_ndim > 0 ? c.puzzle_emb_ndim : c.hidden_size) > c.puzzle_emb_len * c.hidden_size)
        fatal("puzzle_emb_ndim=%d does not fit in puzzle_emb_len=%d positions of hidden_size=%d", c.puzzle_emb_ndim, c.puzzle_emb_len, c.hidden_size);
    if (c.micro_batch_size < 0 || (c.micro_batch_size > 0 && c.global_batch_size % c.micro_batch_size))
        fatal("micro_batch_size=%d must divide global_batch_size=%d", c.micro_batch_size, c.global_batch_size);
    if (c.halt_exploration_prob < 0 || c.halt_exploration_prob > 1) fatal("halt_exploration_prob=%g: must be in [0, 1]", c.halt_exploration_prob);
    if (c.ema_rate < 0 || c.ema_rate >= 1) fatal("ema_rate=%g: must be in [0, 1)", c.ema_rate);
    if (c.latent_mode == "hold" && c.latent_hold_steps <= 0) fatal("latent_hold_steps=%d: must be positive with latent_mode=hold", c.latent_hold_steps);
    if (c.num_aug < 0 || c.eval_num_aug < 0 || c.max_train_groups < 0 || c.max_eval_groups < 0 || c.canvas < 0 || c.max_steps < 0)
        fatal("num_aug, eval_num_aug, max_train_groups, max_eval_groups, canvas and max_steps must be >= 0");
    if (c.canvas > 30) fatal("canvas=%d: at most 30 (the largest ARC grid)", c.canvas);
    if (!(c.lr <= 1) || !(c.puzzle_emb_lr <= 1) || !(c.lr * c.encoder_lr_scale <= 1))
        fatal("lr=%g, puzzle_emb_lr=%g, lr x encoder_lr_scale=%g: must be at most 1 (upstream uses 1e-4 and 1e-2)", c.lr,
              c.puzzle_emb_lr, c.lr * c.encoder_lr_scale);
    for (const std::string* paths : {&c.data_paths, &c.data_paths_test})
        if (!paths->empty() && split_commas(*paths).empty())
            fatal("%s=%s: expected comma-separated file names", paths == &c.data_paths ? "data_paths" : "data_paths_test", paths->c_str());
    if (c.data_paths.empty() && !c.eval_only) fatal("data_paths is empty: give the training task files, e.g. data_paths=data/synth/train.bin (make the synthetic set with python3 data/synth.py data/synth)");
    if (c.eval_only && c.data_paths_test.empty()) fatal("eval_only=1 needs data_paths_test (the tasks to evaluate)");
    if (c.eval_only && c.load_checkpoint.empty() && !c.resume) fatal("eval_only=1 needs weights: load_checkpoint=PATH or resume=1");
}

// ----------------------------------------------------------------------------------------------------------
// 2. Parameters. One flat buffer (common/parameters.h) holds every tensor, in four groups: the decoder and the
//    encoder (dense gradients, AdamATan2 / AdamW, EMA), TRM's puzzle-embedding table (sparse sign-SGD on the rows
//    of the batch) and the buffers H_init / L_init (never trained). The list below is the single source of truth
//    for names (upstream state_dict names), shapes, initialisation and groups; ModelTensors<T> gives each tensor a
//    readable name in code.

enum { GROUP_DECODER, GROUP_ENCODER, GROUP_PUZZLE, GROUP_BUFFERS };

template <typename T> struct ModelTensors {
    // decoder ("inner."): token embedding, the recursive net f, the output and halting heads
    T *embed_tokens;                             // (V, D)
    std::vector<BlockTensors<T>> L_level;        // L_layers blocks (common/transformer.h)
    T *lm_head;                                  // (V, D), zero rows up to V_pad in the layout
    T *q_head_w, *q_head_b;                      // (2, D), (2), zero rows up to Q_pad in the layout
    // encoder ("encoder."): grid encoder over each demo pair, then aggregation over the demos
    T *enc_input_embed, *enc_output_embed;       // (V, D)
    T *cls_token;                                // (D) LPN grid encoder
    std::vector<BlockTensors<T>> grid_layers;    // encoder_num_layers blocks
    T *pool_proj;                                // (D, D) standard grid encoder
    T *query_tokens;                             // (P, D) set encoder
    std::vector<BlockTensors<T>> set_layers;     // encoder_set_layers blocks
    T *mu_w, *mu_b, *logvar_w, *logvar_b;        // (D, D), (D) variational encoders
    T *latent_proj;                              // (P*D, D) decode_proj (hybrid_variational) / output_proj (lpn_*)
    // TRM's puzzle embedding and the initial states
    T *puzzle_emb;                               // (n_puzzle_ids, ndim)
    T *H_init, *L_init;                          // (D) each
};

// The tensors, in upstream's initialisation order: LeCun truncated normal for linears, truncated normal for
// embeddings and learned tokens, q head zero with bias -5, the zero-initialised logvar projection of
// hybrid_variational, the puzzle table zero, H_init / L_init truncated normal (std 1).
template <typename T>
void model_tensors(TensorList<T>& list, ModelTensors<T>* t, const Dims& d, const Config& c, int n_puzzle_ids) {
    auto lecun = [](int fan_in) { return init_trunc_normal(1.0f / sqrtf((float)fan_in)); };
    auto linear = [&](T** field, const std::string& name, int out, int in) { list.add(field, name + ".weight", {out, in}, lecun(in)); };
    const Init emb = init_trunc_normal(1.0f / sqrtf((float)d.D));

    list.group(GROUP_DECODER);
    list.add(&t->embed_tokens, "inner.embed_tokens.embedding_weight", {d.V, d.D}, emb);
    t->L_level.resize(c.L_layers);
    for (int l = 0; l < c.L_layers; l++)
        block_tensors(list, &t->L_level[l], d.block, false, "inner.L_level.layers." + std::to_string(l) + ".", "self_attn.", lecun);
    // the heads reserve zero rows up to their padded output widths (head_width)
    list.add(&t->lm_head, "inner.lm_head.weight", {d.V, d.D}, lecun(d.D), (size_t)d.V_pad * d.D);
    // the q head starts at "never halt": weight 0, bias -5 (sigmoid(-5) = 0.007)
    list.add(&t->q_head_w, "inner.q_head.weight", {2, d.D}, init_zero(), (size_t)d.Q_pad * d.D);
    list.add(&t->q_head_b, "inner.q_head.bias", {2}, init_const(-5.0f), d.Q_pad);

    list.group(GROUP_ENCODER);
    t->grid_layers.resize(d.enc == ENC_NONE ? 0 : c.encoder_num_layers);
    t->set_layers.resize(d.set_encoder ? c.encoder_set_layers : 0);
    if (d.enc != ENC_NONE) {
        list.add(&t->enc_input_embed, "encoder.grid_encoder.input_embed.embedding_weight", {d.V, d.D}, emb);
        list.add(&t->enc_output_embed, "encoder.grid_encoder.output_embed.embedding_weight", {d.V, d.D}, emb);
        if (d.lpn_grid) list.add(&t->cls_token, "encoder.grid_encoder.cls_token", {1, 1, d.D}, init_trunc_normal(0.02f));
        for (int l = 0; l < c.encoder_num_layers; l++)                          // LPN blocks own their projections
            block_tensors(list, &t->grid_layers[l], d.block, false, "encoder.grid_encoder.layers." + std::to_string(l) + ".",
                          d.lpn_grid ? "" : "self_attn.", lecun);
        if (!d.lpn_grid) linear(&t->pool_proj, "encoder.grid_encoder.pool_proj", d.D, d.D);
        if (d.set_encoder) {
            list.add(&t->query_tokens, "encoder.set_encoder.query_tokens", {d.P, d.D}, init_trunc_normal(0.02f));
            for (int l = 0; l < c.encoder_set_layers; l++)
                block_tensors(list, &t->set_layers[l], d.block, true, "encoder.set_encoder.layers." + std::to_string(l) + ".", "", lecun);
        }
        if (d.variational) {
            linear(&t->mu_w, "encoder.mu_proj", d.D, d.D);
            list.add(&t->mu_b, "encoder.mu_proj.bias", {d.D}, init_zero());
            if (d.enc == ENC_HYBRID_VARIATIONAL) list.add(&t->logvar_w, "encoder.logvar_proj.weight", {d.D, d.D}, init_zero());
            else linear(&t->logvar_w, "encoder.logvar_proj", d.D, d.D);
            list.add(&t->logvar_b, "encoder.logvar_proj.bias", {d.D}, init_zero());
        }
        if (d.enc == ENC_HYBRID_VARIATIONAL) linear(&t->latent_proj, "encoder.decode_proj", d.P * d.D, d.D);
        if (d.enc == ENC_LPN_STANDARD || d.enc == ENC_LPN_VARIATIONAL) linear(&t->latent_proj, "encoder.output_proj", d.P * d.D, d.D);
    }

    list.group(GROUP_PUZZLE);                                                   // upstream: zeros
    if (d.enc == ENC_NONE) list.add(&t->puzzle_emb, "inner.puzzle_emb.weights", {n_puzzle_ids, d.ndim}, init_zero());
    list.group(GROUP_BUFFERS);
    list.add(&t->H_init, "inner.H_init", {d.D}, init_trunc_normal(1.0f));
    list.add(&t->L_init, "inner.L_init", {d.D}, init_trunc_normal(1.0f));
}

// The groups: decoder and encoder trained by Adam (the encoder with encoder_lr_scale and a tenth of the weight
// decay when that is set, upstream's second optimizer; the decoder frozen for freeze_decoder_steps), both in the
// EMA; the puzzle table by sign-SGD (section 6); the buffers frozen.
static ParamTable model_table(const Dims& d, const Config& c, int n_puzzle_ids) {
    ParamGroup decoder = param_group("decoder", GROUP_ADAM, true), encoder = param_group("encoder", GROUP_ADAM, true);
    decoder.frozen_steps = c.freeze_decoder_steps;
    if (c.encoder_lr_scale > 0) { encoder.lr_scale = c.encoder_lr_scale; encoder.weight_decay_scale = 0.1f; }
    return param_table<ModelTensors<floatX>>({decoder, encoder, param_group("puzzle_emb", GROUP_SPARSE),
                                             param_group("buffers", GROUP_FROZEN)},
                                            [&](TensorList<floatX>& list, ModelTensors<floatX>* t) {
                                                model_tensors(list, t, d, c, n_puzzle_ids);
                                            });
}

// ----------------------------------------------------------------------------------------------------------
// 3. Activations. Everything a forward pass writes is laid out once, for one micro-batch, in a single device
//    allocation (an arena: measured in a first pass, carved in a second). Names follow the block:
//      post-norm (TRM decoder, standard encoders):  n1 = rms(x + o(attn(x))) ;  out = n2 = rms(n1 + mlp(n1))
//      pre-norm  (LPN encoders, encoder_norm_style=pre):  n1 = rms(x) ; r1 = x + o(attn(n1)) ;
//                                                         n2 = rms(r1) ; out = r1 + mlp(n2)
//    with mlp(h) = down(swiglu(gate_up(h))) and attn either self-attention with RoPE over the fused qkv
//    projection, or cross-attention from q(h) to k(memory), v(memory) (the set encoder).

// The demonstration encoder's tensors for one micro-batch (B samples, at most B*K valid demos).
typedef struct {
    // the valid demos of the micro-batch, compacted (a padded demo slot would only contribute zeros)
    int *demo_in, *demo_out;          // (Nd, S) tokens
    int* demo_slot;                   // (Nd) b*K + k: where demo n's encoding goes in (B, K, D)
    uint8_t* demo_mask;               // (B, K) valid demo slots
    uint8_t* pool_mask;               // (Nd, S2) standard pooling: token != PAD
    int* cls_index;                   // (B*K) n * S2: the CLS row of demo n
    int* latent_key;                  // (B or Nd) global key of every latent row (for its noise)
    StackActs grid;                   // grid encoder over (Nd, S2, D)
    floatX* pooled;                   // (Nd, D) mean-pooled tokens (standard) / CLS outputs (LPN)
    floatX* e;                        // (Nd, D) one encoding per demo
    floatS* e_rstd;                   // (Nd) LPN: e = rms(CLS output)
    floatX* E;                        // (B*K, D) encodings (lpn_variational: latents) at their slots, 0 elsewhere
    StackActs set;                    // set encoder: P learned queries over the K demo slots
    floatX* ctx;                      // (B, P, D) set-encoder output (after the final norm)
    floatS* ctx_rstd;                 // (B*P)
    floatX *ctx_mean, *zp;            // (B, D) hybrid_variational: mean of the context tokens, and rms of it
    floatS* zp_rstd;
    floatX *mu, *logvar, *z;          // (B or Nd, D) posterior mean, log-variance, latent
    floatS *eps, *kl;                 // (B or Nd, D) noise, (B or Nd) KL per latent
    floatX* agg;                      // (B, D) lpn_*: mean over the demos
    floatX* context;                  // (B, P*D) the encoder output that becomes the decoder prefix
    // gradients of the above (the grid and set stacks use the shared scratch of Acts)
    floatX *d_pooled, *d_e, *d_E, *d_ctx, *d_ctx_mean, *d_zp, *d_mu, *d_logvar, *d_z, *d_agg;
    // test-time latent optimisation (evaluation): the latent (B, L) of every sample, L = D or P*D, its Adam state
    floatX *opt_latent, *opt_grad;
    floatS *opt_master, *opt_grad_s, *opt_m, *opt_v;
    floatX *opt_prefix, *opt_d_context, *opt_tmp;    // (B, P*D) demo rows' contexts; gradient; scatter scratch
    int* opt_rows;                                   // (B) sample of each demo row
} EncoderActs;

typedef struct {
    // the micro-batch's data
    int *inputs, *labels, *puzzle_ids;           // (B, S), (B, S), (B)
    EncoderActs enc;
    // decoder
    floatX* prefix_src;                          // (B, ndim) TRM: the puzzle-embedding rows
    floatX* x;                                   // (B, T, D) input embedding
    StackActs scratch;                           // applications of f without gradient (overwritten each time)
    std::vector<StackActs> calls;                // the L_cycles + 1 applications with gradient
    floatX* logits;                              // (B, T, V_pad)
    int* q_index;                                // (B) b * T: position 0 of every sample
    floatX *q_in, *q;                            // (B, D), (B, Q_pad): q_halt, q_continue, then zeros
    // loss
    floatS *lm_loss, *q_loss, *dloss_lm, *dloss_q;   // (B)
    int *n_valid, *n_correct, *preds;                // (B), (B), (B, S)
    floatX *eval_z_H, *eval_z_L;                     // (B, T, D) evaluation's own carry, counters and flags
    int* eval_steps;
    uint8_t* eval_halted;
    floatS *weight_one, *weight_zero;                // (B) loss weights 1 and 0 (latent optimisation)
    // backward: the blocks' scratch (bs.G carries the gradient through a stack), shared by the decoder and the
    // encoder stacks (sized for the larger)
    BlockScratch bs;
    floatX *dx, *dlogits, *dq, *dq_in, *dprefix;   // (B, T, D), (B, T, V_pad), (B, Q_pad), (B, D), (B, P*D)
} Acts;

typedef struct {
    Config cfg;
    Dims d;
    int B_local, mb;                  // samples per optimizer step on this process; per micro-batch
    Params p;                         // weights, gradients, optimizer state, EMA (common/parameters.h)
    ModelTensors<floatX> w, w_ema;    // the weights; what evaluation runs (the EMA of decoder and encoder)
    ModelTensors<floatS> g;           // gradients (decoder and encoder)
    ModelTensors<floatS> g_none;      // no gradients: a backward pass for input gradients only (latent optimisation)
    int n_puzzle_ids;
    floatS *rope_cos, *rope_sin;      // decoder RoPE (T, HD)
    floatS *enc_rope_cos, *enc_rope_sin;   // encoder RoPE (2S, HD)
    Acts acts;
    void* acts_memory;
    size_t acts_bytes;
    // the ACT carry of this process's B_local slots
    floatX *z_H, *z_L;                // (B_local, T, D)
    int* steps;                       // (B_local)
    uint8_t* halted;                  // (B_local)
    // TRM: the puzzle-embedding rows of this step and their gradients, for sign-SGD after the micro-batches
    int* step_puzzle_ids;             // (B_local)
    floatX* step_puzzle_grads;        // (B_local, ndim)
    // ...and of every rank's slots, in global slot order (sign-SGD sees the whole global batch on every rank)
    int* puzzle_ids_global;           // (B_global)
    floatX *puzzle_grads_global, *puzzle_grads_gathered;   // (B_global, ndim); the latter in rank order
    int* slot_order;                  // (B_global) row of global slot g in the rank-ordered gather
} Model;

static StackShape decoder_shape(const Model& m, int B) {
    StackShape s = StackShape();
    s.cfg = m.d.block;                     // post-norm
    s.B = B; s.T = m.d.T; s.n_layers = m.cfg.L_layers;
    s.rope_cos = m.rope_cos; s.rope_sin = m.rope_sin;
    return s;
}

static StackShape grid_shape(const Model& m, int Nd) {
    StackShape s = StackShape();
    s.cfg = m.d.block;
    s.cfg.pre_norm = m.d.lpn_grid || m.cfg.encoder_norm_style == "pre";
    s.B = Nd; s.T = m.d.S2; s.n_layers = m.cfg.encoder_num_layers;
    s.rope_cos = m.enc_rope_cos; s.rope_sin = m.enc_rope_sin; s.rope_skip = m.d.lpn_grid ? 1 : 0;
    return s;
}

static StackShape set_shape(const Model& m, int B) {
    StackShape s = StackShape();
    s.cfg = m.d.block;
    s.cfg.pre_norm = m.cfg.encoder_norm_style == "pre";
    s.B = B; s.T = m.d.P; s.n_layers = m.cfg.encoder_set_layers;
    s.cross = true; s.memory = m.acts.enc.E; s.Tk = m.d.K; s.key_mask = m.acts.enc.demo_mask;
    return s;
}

// Lays out (or, while measuring, sizes) every activation of a micro-batch of B samples.
static void acts_layout(Arena* a, Model* m) {
    const Dims& d = m->d;
    const int B = m->mb, D = d.D;
    const size_t BT = (size_t)B * d.T, Ndmax = (size_t)B * d.K;
    Acts* ac = &m->acts;
    *ac = Acts();
    ac->inputs = arena_take<int>(a, (size_t)B * d.S);
    ac->labels = arena_take<int>(a, (size_t)B * d.S);
    ac->puzzle_ids = arena_take<int>(a, B);
    if (d.enc == ENC_NONE) ac->prefix_src = arena_take<floatX>(a, (size_t)B * d.ndim);
    ac->x = arena_take<floatX>(a, BT * D);
    StackShape dec = decoder_shape(*m, B);
    stack_layout(a, &ac->scratch, dec);
    ac->calls.resize(m->cfg.L_cycles + 1);
    for (StackActs& call : ac->calls) stack_layout(a, &call, dec);
    ac->logits = arena_take<floatX>(a, BT * d.V_pad);
    ac->q_index = arena_take<int>(a, B);
    ac->q_in = arena_take<floatX>(a, (size_t)B * D);
    ac->q = arena_take<floatX>(a, (size_t)B * d.Q_pad);
    ac->lm_loss = arena_take<floatS>(a, B); ac->q_loss = arena_take<floatS>(a, B);
    ac->dloss_lm = arena_take<floatS>(a, B); ac->dloss_q = arena_take<floatS>(a, B);
    ac->n_valid = arena_take<int>(a, B); ac->n_correct = arena_take<int>(a, B);
    ac->preds = arena_take<int>(a, (size_t)B * d.S);
    ac->eval_z_H = arena_take<floatX>(a, BT * D);
    ac->eval_z_L = arena_take<floatX>(a, BT * D);
    ac->eval_steps = arena_take<int>(a, B);
    ac->eval_halted = arena_take<uint8_t>(a, B);
    ac->weight_one = arena_take<floatS>(a, B);
    ac->weight_zero = arena_take<floatS>(a, B);

    size_t rows = BT;                                  // rows of the largest stack: sizes the backward scratch
    if (d.enc != ENC_NONE) {
        EncoderActs* e = &ac->enc;
        e->demo_in = arena_take<int>(a, Ndmax * d.S);
        e->demo_out = arena_take<int>(a, Ndmax * d.S);
        e->demo_slot = arena_take<int>(a, Ndmax);
        e->demo_mask = arena_take<uint8_t>(a, Ndmax);
        e->pool_mask = arena_take<uint8_t>(a, Ndmax * d.S2);
        e->cls_index = arena_take<int>(a, Ndmax);
        e->latent_key = arena_take<int>(a, Ndmax);
        stack_layout(a, &e->grid, grid_shape(*m, (int)Ndmax));
        rows = std::max(rows, Ndmax * d.S2);
        e->pooled = arena_take<floatX>(a, Ndmax * D);
        e->e = arena_take<floatX>(a, Ndmax * D);
        e->e_rstd = arena_take<floatS>(a, Ndmax);
        e->E = arena_take<floatX>(a, Ndmax * D);
        if (d.set_encoder) {
            stack_layout(a, &e->set, set_shape(*m, B));
            e->ctx = arena_take<floatX>(a, (size_t)B * d.P * D);
            e->ctx_rstd = arena_take<floatS>(a, (size_t)B * d.P);
        }
        const size_t latent_rows = d.enc == ENC_LPN_VARIATIONAL ? Ndmax : (size_t)B;
        e->ctx_mean = arena_take<floatX>(a, (size_t)B * D);
        e->zp = arena_take<floatX>(a, (size_t)B * D);
        e->zp_rstd = arena_take<floatS>(a, B);
        e->mu = arena_take<floatX>(a, latent_rows * D);
        e->logvar = arena_take<floatX>(a, latent_rows * D);
        e->z = arena_take<floatX>(a, latent_rows * D);
        e->eps = arena_take<floatS>(a, latent_rows * D);
        e->kl = arena_take<floatS>(a, latent_rows);
        e->agg = arena_take<floatX>(a, (size_t)B * D);
        e->context = arena_take<floatX>(a, (size_t)B * d.P * D);     // not ctx: latent_inner_steps shifts it
        e->d_pooled = arena_take<floatX>(a, Ndmax * D);
        e->d_e = arena_take<floatX>(a, Ndmax * D);
        e->d_E = arena_take<floatX>(a, Ndmax * D);
        e->d_ctx = arena_take<floatX>(a, (size_t)B * d.P * D);
        e->d_ctx_mean = arena_take<floatX>(a, (size_t)B * D);
        e->d_zp = arena_take<floatX>(a, (size_t)B * D);
        e->d_mu = arena_take<floatX>(a, latent_rows * D);
        e->d_logvar = arena_take<floatX>(a, latent_rows * D);
        e->d_z = arena_take<floatX>(a, latent_rows * D);
        e->d_agg = arena_take<floatX>(a, (size_t)B * D);
        const size_t L = (size_t)B * d.P * D;             // the larger latent: the context tokens
        e->opt_latent = arena_take<floatX>(a, L); e->opt_grad = arena_take<floatX>(a, L);
        e->opt_master = arena_take<floatS>(a, L); e->opt_grad_s = arena_take<floatS>(a, L);
        e->opt_m = arena_take<floatS>(a, L); e->opt_v = arena_take<floatS>(a, L);
        e->opt_prefix = arena_take<floatX>(a, L); e->opt_d_context = arena_take<floatX>(a, L);
        e->opt_tmp = arena_take<floatX>(a, L);
        e->opt_rows = arena_take<int>(a, B);
    }
    scratch_layout(a, &ac->bs, d.block, rows, (size_t)B * d.P, (size_t)B * d.K);
    ac->dx = arena_take<floatX>(a, BT * D);
    ac->dlogits = arena_take<floatX>(a, BT * d.V_pad);
    ac->dq = arena_take<floatX>(a, (size_t)B * d.Q_pad);
    ac->dq_in = arena_take<floatX>(a, (size_t)B * D);
    ac->dprefix = arena_take<floatX>(a, (size_t)B * d.P * D);
}

// Samples per forward/backward: micro_batch_size when set; otherwise the whole per-process batch if its
// activations (and the ACT carry still to be allocated) fit in the device's free memory, else the largest
// divisor of the batch that fits (the ARC default, 768 x 916 tokens, needs a few micro-batches on 80 GB).
static int choose_micro_batch(Model* m, int B_local) {
    const Config& c = m->cfg;
    if (c.micro_batch_size > 0) {
        const int mb = std::min(c.micro_batch_size, B_local);
        if (B_local % mb) fatal("micro_batch_size=%d must divide the per-process batch %d", mb, B_local);
        return mb;
    }
    const size_t carry = (size_t)B_local * m->d.T * m->d.D * 2 * sizeof(floatX);
    const size_t free_bytes = device_free_memory(), reserve = (size_t)1 << 30;      // cuBLASLt, scratch, fragmentation
    for (int mb = B_local; mb >= 1; mb--) {
        if (B_local % mb) continue;
        m->mb = mb;
        Arena measure = {nullptr, 0};
        acts_layout(&measure, m);
        if (measure.used + carry + reserve <= free_bytes) return mb;
    }
    fatal("even one sample's activations do not fit in the %.1f GiB of free device memory", free_bytes / 1073741824.0);
}

// Allocates the model for B_local samples per step (micro-batches of mb) and initialises it as upstream.
static void model_build(Model* m, const Config& c, int canvas, int n_puzzle_ids, int B_local) {
    m->cfg = c;
    m->d = make_dims(c, canvas);
    const Dims& d = m->d;
    m->B_local = B_local;

    m->n_puzzle_ids = d.enc == ENC_NONE ? n_puzzle_ids : 0;
    params_alloc(&m->p, model_table(d, c, m->n_puzzle_ids), c.ema, c.ema_rate);
    const ParamTable& table = m->p.table;
    TensorList<floatX> w = tensor_bind(table, param_bases(table, m->p.params, BUF_PARAMS));
    model_tensors(w, &m->w, d, c, m->n_puzzle_ids);
    TensorList<floatX> w_ema = tensor_bind(table, param_bases_ema(m->p));
    model_tensors(w_ema, &m->w_ema, d, c, m->n_puzzle_ids);
    TensorList<floatS> g = tensor_bind(table, param_bases(table, m->p.grads, BUF_GRADS));
    model_tensors(g, &m->g, d, c, m->n_puzzle_ids);
    TensorList<floatS> none = tensor_bind(table, std::vector<floatS*>(table.groups.size(), nullptr));
    model_tensors(none, &m->g_none, d, c, m->n_puzzle_ids);

    // RoPE tables: decoder positions 0..T-1; encoder positions 0..2S-1 (the LPN CLS token is not rotated)
    std::vector<floatS> cs((size_t)std::max(d.T, 2 * d.S) * d.HD), sn(cs.size());
    rope_tables(cs.data(), sn.data(), d.T, d.HD, c.rope_theta);
    m->rope_cos = (floatS*)device_malloc((size_t)d.T * d.HD * sizeof(floatS), "RoPE table");
    m->rope_sin = (floatS*)device_malloc((size_t)d.T * d.HD * sizeof(floatS), "RoPE table");
    copy_to_device(m->rope_cos, cs.data(), (size_t)d.T * d.HD * sizeof(floatS));
    copy_to_device(m->rope_sin, sn.data(), (size_t)d.T * d.HD * sizeof(floatS));
    m->enc_rope_cos = m->enc_rope_sin = nullptr;
    if (d.enc != ENC_NONE) {
        rope_tables(cs.data(), sn.data(), 2 * d.S, d.HD, 10000.0f);      // upstream encoders: fixed base 1e4
        m->enc_rope_cos = (floatS*)device_malloc((size_t)2 * d.S * d.HD * sizeof(floatS), "RoPE table");
        m->enc_rope_sin = (floatS*)device_malloc((size_t)2 * d.S * d.HD * sizeof(floatS), "RoPE table");
        copy_to_device(m->enc_rope_cos, cs.data(), (size_t)2 * d.S * d.HD * sizeof(floatS));
        copy_to_device(m->enc_rope_sin, sn.data(), (size_t)2 * d.S * d.HD * sizeof(floatS));
    }

    m->mb = choose_micro_batch(m, B_local);
    m->acts_memory = arena_alloc([&](Arena* a) { acts_layout(a, m); }, &m->acts_bytes, "activations");

    // constant index tables and loss weights
    std::vector<int> idx(std::max(m->mb, m->mb * std::max(d.K, 1)));
    for (int b = 0; b < m->mb; b++) idx[b] = b * d.T;
    copy_to_device(m->acts.q_index, idx.data(), m->mb * sizeof(int));
    if (d.enc != ENC_NONE) {
        for (int n = 0; n < m->mb * d.K; n++) idx[n] = n * d.S2;
        copy_to_device(m->acts.enc.cls_index, idx.data(), (size_t)m->mb * d.K * sizeof(int));
    }
    std::vector<floatS> w_lm(m->mb, (floatS)(1.0 / c.global_batch_size)), w_q(m->mb, (floatS)(0.5 / c.global_batch_size));
    copy_to_device(m->acts.dloss_lm, w_lm.data(), m->mb * sizeof(floatS));
    copy_to_device(m->acts.dloss_q, w_q.data(), m->mb * sizeof(floatS));
    std::vector<floatS> ones(m->mb, 1), zeros(m->mb, 0);
    copy_to_device(m->acts.weight_one, ones.data(), m->mb * sizeof(floatS));
    copy_to_device(m->acts.weight_zero, zeros.data(), m->mb * sizeof(floatS));

    // the ACT carry: every slot starts halted, so the first step resets it from H_init / L_init
    const size_t carry = (size_t)B_local * d.T * d.D;
    m->z_H = (floatX*)device_malloc(carry * sizeof(floatX), "ACT carry z_H");
    m->z_L = (floatX*)device_malloc(carry * sizeof(floatX), "ACT carry z_L");
    m->steps = (int*)device_malloc(B_local * sizeof(int), "ACT steps");
    m->halted = (uint8_t*)device_malloc(B_local, "ACT halted");
    device_memset(m->z_H, 0, carry * sizeof(floatX));
    device_memset(m->z_L, 0, carry * sizeof(floatX));
    device_memset(m->steps, 0, B_local * sizeof(int));
    device_memset(m->halted, 1, B_local);
    m->step_puzzle_ids = (int*)device_malloc(B_local * sizeof(int), "puzzle ids of the step");
    m->step_puzzle_grads = (floatX*)device_malloc((size_t)B_local * std::max(d.ndim, 1) * sizeof(floatX), "puzzle-row gradients");
    const int W = dist().world, B_global = B_local * W;
    m->puzzle_ids_global = (int*)device_malloc(B_global * sizeof(int), "puzzle ids of the global batch");
    m->puzzle_grads_global = (floatX*)device_malloc((size_t)B_global * std::max(d.ndim, 1) * sizeof(floatX), "puzzle-row gradients");
    m->puzzle_grads_gathered = (floatX*)device_malloc((size_t)B_global * std::max(d.ndim, 1) * sizeof(floatX), "puzzle-row gradients");
    m->slot_order = (int*)device_malloc(B_global * sizeof(int), "slot order");
    std::vector<int> order(B_global);
    for (int g = 0; g < B_global; g++) order[g] = dist_slot_row(g, B_local);
    copy_to_device(m->slot_order, order.data(), B_global * sizeof(int));
}

// Upstream initialisation (section 2).
static void model_init_weights(Model* m, uint64_t seed) {
    Rng rng = rng_make(seed);
    params_set(&m->p, param_init_values(m->p.table, seed, &rng));
}

// ----------------------------------------------------------------------------------------------------------
// 4. Forward (the transformer blocks: common/transformer.h).

// The demonstration encoder: (demos of each sample) -> context (B, P*D), and the KL of each latent.
//   grid encoder   standard: sqrt(D) [E_in(x); E_out(y)] (2S tokens) -> blocks -> mean over non-PAD -> pool_proj
//                  LPN:      [CLS; sqrt(D) E_in(x); sqrt(D) E_out(y)] -> pre-norm blocks -> rms(CLS output)
//   aggregation    standard, hybrid_standard: set encoder (P queries cross-attend to the demos) -> final rms
//                  hybrid_variational: the above -> mean over P -> rms -> mu, logvar (clamped) -> z -> decode_proj
//                  lpn_standard: mean over the demos -> output_proj
//                  lpn_variational: per demo mu, logvar -> z_i -> mean over the demos -> output_proj
static void encoder_forward(Model* m, const ModelTensors<floatX>& w, int B, int Nd, Stream st) {
    const Dims& d = m->d;
    EncoderActs* e = &m->acts.enc;
    const int D = d.D, S = d.S, S2 = d.S2;
    const float eps = m->cfg.rms_norm_eps, emb_scale = sqrtf((float)D);
    if (Nd > 0) {
        const int first = d.lpn_grid ? 1 : 0;
        if (d.lpn_grid) broadcast_rows(e->grid.in, w.cls_token, Nd, 1, D, S2, 0, st);
        embedding_forward(e->grid.in, e->demo_in, w.enc_input_embed, Nd, S, D, S2, first, emb_scale, st);
        embedding_forward(e->grid.in, e->demo_out, w.enc_output_embed, Nd, S, D, S2, first + S, emb_scale, st);
        const floatX* h = stack_forward(&e->grid, w.grid_layers, grid_shape(*m, Nd), st);
        if (d.lpn_grid) {
            gather_rows(e->pooled, h, e->cls_index, Nd, D, st);
            rmsnorm_forward(e->e, e->e_rstd, e->pooled, nullptr, Nd, D, eps, st);
        } else {
            masked_mean_forward(e->pooled, h, e->pool_mask, Nd, S2, D, st);
            matmul_forward(e->e, e->pooled, w.pool_proj, nullptr, Nd, D, D, st);
        }
    }
    if (d.enc == ENC_LPN_VARIATIONAL) {               // a latent per demo, then their mean
        matmul_forward(e->mu, e->e, w.mu_w, w.mu_b, Nd, D, D, st);
        matmul_forward(e->logvar, e->e, w.logvar_w, w.logvar_b, Nd, D, D, st);
        reparameterize_forward(e->z, e->kl, e->mu, e->logvar, e->eps, Nd, D, d.logvar_lo, d.logvar_hi, st);
        scatter_rows(e->E, e->z, e->demo_slot, Nd, B * d.K, D, st);
    } else {
        scatter_rows(e->E, e->e, e->demo_slot, Nd, B * d.K, D, st);
    }
    if (d.set_encoder) {
        StackShape ss = set_shape(*m, B);
        broadcast_rows(e->set.in, w.query_tokens, B, d.P, D, d.P, 0, st);
        const floatX* out = stack_forward(&e->set, w.set_layers, ss, st);
        if (m->cfg.set_encoder_final_norm) rmsnorm_forward(e->ctx, e->ctx_rstd, out, nullptr, B * d.P, D, eps, st);
        else copy_on_device(e->ctx, out, (size_t)B * d.P * D * sizeof(floatX));
        if (d.enc == ENC_HYBRID_VARIATIONAL) {        // one latent per sample from the pooled context
            masked_mean_forward(e->ctx_mean, e->ctx, nullptr, B, d.P, D, st);
            rmsnorm_forward(e->zp, e->zp_rstd, e->ctx_mean, nullptr, B, D, eps, st);
            matmul_forward(e->mu, e->zp, w.mu_w, w.mu_b, B, D, D, st);
            matmul_forward(e->logvar, e->zp, w.logvar_w, w.logvar_b, B, D, D, st);
            reparameterize_forward(e->z, e->kl, e->mu, e->logvar, e->eps, B, D, d.logvar_lo, d.logvar_hi, st);
            matmul_forward(e->context, e->z, w.latent_proj, nullptr, B, D, d.P * D, st);
        } else {
            copy_on_device(e->context, e->ctx, (size_t)B * d.P * D * sizeof(floatX));
        }
    } else {                                          // lpn_standard, lpn_variational: mean over the valid demos
        masked_mean_forward(e->agg, e->E, e->demo_mask, B, d.K, D, st);
        matmul_forward(e->context, e->agg, w.latent_proj, nullptr, B, D, d.P * D, st);
    }
}

// x = sqrt(D) * concat(prefix, E_tok[inputs]) with the prefix from the puzzle embedding (TRM) or the encoder
// context (B, P*D) (ETRM, scaled by encoder_prefix_scale).
static void input_embedding_forward(Model* m, const ModelTensors<floatX>& w, int B, const floatX* context, Stream st) {
    const Dims& d = m->d;
    Acts* a = &m->acts;
    const size_t batch_stride = (size_t)d.T * d.D;
    if (d.enc == ENC_NONE) {
        puzzle_emb_gather(a->prefix_src, w.puzzle_emb, a->puzzle_ids, B, d.ndim, st);
        prefix_forward(a->x, a->prefix_src, B, d.ndim, d.P * d.D, batch_stride, sqrtf((float)d.D), st);
    } else {
        prefix_forward(a->x, context, B, d.P * d.D, d.P * d.D, batch_stride, d.prefix_scale, st);
    }
    embedding_forward(a->x, a->inputs, w.embed_tokens, B, d.S, d.D, d.T, d.P, sqrtf((float)d.D), st);
}

// One ACT step of the recursive decoder on the carry (z_H, z_L) of B slots (TRM's inner model):
//   repeat H_cycles: { repeat L_cycles: z_L = f(z_L + z_H + x) ;  z_H = f(z_H + z_L) }
// with f the stack of L_layers post-norm blocks. With `with_grad`, the last H cycle keeps its L_cycles + 1
// applications in acts.calls for the backward pass (the earlier cycles, and evaluation, keep nothing).
// Then the heads: logits = lm_head(z_H) (B, T, V_pad); q = q_head(z_H[:, 0]) (B, Q_pad) (zero padding columns).
static void decoder_forward(Model* m, const ModelTensors<floatX>& w, floatX* z_H, floatX* z_L, int B, bool with_grad, Stream st) {
    const Dims& d = m->d;
    Acts* a = &m->acts;
    const StackShape s = decoder_shape(*m, B);
    const size_t n = (size_t)B * d.T * d.D;
    const int L = m->cfg.L_cycles;
    for (int h = 0; h < m->cfg.H_cycles; h++) {
        const bool grad = with_grad && h == m->cfg.H_cycles - 1;
        for (int i = 0; i <= L; i++) {
            StackActs* stack = grad ? &a->calls[i] : &a->scratch;
            if (i < L) add_forward(stack->in, z_L, z_H, a->x, n, st);     // z_L = f(z_L + z_H + x)
            else add_forward(stack->in, z_H, z_L, nullptr, n, st);        // z_H = f(z_H + z_L)
            const floatX* out = stack_forward(stack, w.L_level, s, st);
            copy_on_device(i < L ? z_L : z_H, out, n * sizeof(floatX));
        }
    }
    matmul_forward(a->logits, z_H, w.lm_head, nullptr, B * d.T, d.D, d.V_pad, st);
    gather_rows(a->q_in, z_H, a->q_index, B, d.D, st);
    matmul_forward(a->q, a->q_in, w.q_head_w, w.q_head_b, B, d.D, d.Q_pad, st);
}

// ----------------------------------------------------------------------------------------------------------
// 5. Loss and backward.
//
// Loss of one ACT step (upstream ACTLossHead), summed over the batch:
//   loss = sum_b lm_loss_b + 0.5 * sum_b BCE(q_halt_b, exact_b) + kl_weight * KL
// lm_loss_b is the stablemax cross-entropy averaged over the sample's valid tokens; exact_b says whether the
// argmax prediction is right on every token; KL is the mean KL of the latents (variational encoders). As
// upstream, the gradient is that of loss / global_batch_size; acts.dloss_lm and acts.dloss_q hold the weights
// 1 / global_batch_size and 0.5 / global_batch_size of each sample's terms.

static void loss_forward(Model* m, int B, Stream st) {
    const Dims& d = m->d;
    Acts* a = &m->acts;
    stablemax_loss_forward(a->lm_loss, a->n_valid, a->n_correct, a->preds, a->logits, a->labels, B, d.T, d.P, d.V, d.V_pad, st);
    q_halt_loss_forward(a->q_loss, a->q, a->n_valid, a->n_correct, B, d.Q_pad, st);
}

// Backward of the loss through the heads and the last H cycle of the decoder (the earlier cycles and the
// carry are detached, as upstream) down to the input embedding, for the weights w the forward pass ran; leaves
// d prefix in acts.dprefix and adds the parameter gradients into g (m->g_none: none). dloss_lm, dloss_q: (B)
// weights of each sample's lm and q_halt losses in the objective.
static void decoder_backward(Model* m, const ModelTensors<floatX>& w, const ModelTensors<floatS>& g, const floatX* z_H, int B,
                             const floatS* dloss_lm, const floatS* dloss_q, Stream st) {
    const Dims& d = m->d;
    Acts* a = &m->acts;
    const StackShape s = decoder_shape(*m, B);
    const int BT = B * d.T, L = m->cfg.L_cycles;
    const size_t n = (size_t)BT * d.D;
    // the padding columns of dlogits and dq are 0: the padding rows of the heads get zero gradient
    stablemax_loss_backward(a->dlogits, a->logits, a->labels, a->n_valid, dloss_lm, B, d.T, d.P, d.V, d.V_pad, st);
    q_halt_loss_backward(a->dq, a->q, a->n_valid, a->n_correct, dloss_q, B, d.Q_pad, st);
    matmul_backward(a->dq_in, g.q_head_w, g.q_head_b, a->dq, a->q_in, w.q_head_w, B, d.D, d.Q_pad, false, st);
    scatter_rows(a->bs.G, a->dq_in, a->q_index, B, BT, d.D, st);                       // q head reads position 0
    matmul_backward(a->bs.G, g.lm_head, nullptr, a->dlogits, z_H, w.lm_head, BT, d.D, d.V_pad, true, st);
    // z_H = f(z_H' + z_L): G becomes the gradient of the last z_L (z_H' came from a detached cycle)
    stack_backward(nullptr, &a->calls[L], w.L_level, g.L_level, s, a->bs, st);
    // z_L = f(z_L' + z_H' + x), L_cycles times: x collects every application's input gradient
    for (int i = L - 1; i >= 0; i--) {
        stack_backward(nullptr, &a->calls[i], w.L_level, g.L_level, s, a->bs, st);
        if (i == L - 1) copy_on_device(a->dx, a->bs.G, n * sizeof(floatX));
        else add_forward(a->dx, a->dx, a->bs.G, nullptr, n, st);
    }
    const float scale = d.enc == ENC_NONE ? sqrtf((float)d.D) : d.prefix_scale;
    const int K = d.enc == ENC_NONE ? d.ndim : d.P * d.D;
    if (g.embed_tokens) embedding_backward(g.embed_tokens, a->dx, a->inputs, B, d.S, d.D, d.T, d.P, sqrtf((float)d.D), st);
    prefix_backward(a->dprefix, a->dx, B, K, (size_t)d.T * d.D, scale, st);
}

// Backward of encoder_forward from acts.dprefix (the gradient of the context). dkl is the gradient of the
// loss with respect to each latent's KL (kl_weight / (global batch * number of latents averaged)).
static void encoder_backward(Model* m, const ModelTensors<floatX>& w, const ModelTensors<floatS>& g, int B, int Nd, float dkl,
                             Stream st) {
    const Dims& d = m->d;
    Acts* a = &m->acts;
    EncoderActs* e = &a->enc;
    const int D = d.D, S = d.S, S2 = d.S2;
    if (d.set_encoder) {
        const floatX* d_context = a->dprefix;
        if (d.enc == ENC_HYBRID_VARIATIONAL) {
            matmul_backward(e->d_z, g.latent_proj, nullptr, a->dprefix, e->z, w.latent_proj, B, D, d.P * D, false, st);
            reparameterize_backward(e->d_mu, e->d_logvar, e->d_z, e->mu, e->logvar, e->eps, dkl, B, D, d.logvar_lo, d.logvar_hi, st);
            matmul_backward(e->d_zp, g.mu_w, g.mu_b, e->d_mu, e->zp, w.mu_w, B, D, D, false, st);
            matmul_backward(e->d_zp, g.logvar_w, g.logvar_b, e->d_logvar, e->zp, w.logvar_w, B, D, D, true, st);
            rmsnorm_backward(e->d_ctx_mean, e->d_zp, e->zp, e->zp_rstd, B, D, false, st);
            masked_mean_backward(e->d_ctx, e->d_ctx_mean, nullptr, B, d.P, D, st);
            d_context = e->d_ctx;
        }
        StackShape ss = set_shape(*m, B);
        const size_t n_ctx = (size_t)B * d.P * D;
        if (m->cfg.set_encoder_final_norm) rmsnorm_backward(a->bs.G, d_context, e->ctx, e->ctx_rstd, B * d.P, D, false, st);
        else copy_on_device(a->bs.G, d_context, n_ctx * sizeof(floatX));
        device_memset(e->d_E, 0, (size_t)B * d.K * D * sizeof(floatX));
        stack_backward(e->d_E, &e->set, w.set_layers, g.set_layers, ss, a->bs, st);
        broadcast_rows_backward(g.query_tokens, a->bs.G, B, d.P, D, d.P, 0, st);
    } else {
        matmul_backward(e->d_agg, g.latent_proj, nullptr, a->dprefix, e->agg, w.latent_proj, B, D, d.P * D, false, st);
        masked_mean_backward(e->d_E, e->d_agg, e->demo_mask, B, d.K, D, st);
    }
    if (Nd == 0) return;
    if (d.enc == ENC_LPN_VARIATIONAL) {
        gather_rows(e->d_z, e->d_E, e->demo_slot, Nd, D, st);
        reparameterize_backward(e->d_mu, e->d_logvar, e->d_z, e->mu, e->logvar, e->eps, dkl, Nd, D, d.logvar_lo, d.logvar_hi, st);
        matmul_backward(e->d_e, g.mu_w, g.mu_b, e->d_mu, e->e, w.mu_w, Nd, D, D, false, st);
        matmul_backward(e->d_e, g.logvar_w, g.logvar_b, e->d_logvar, e->e, w.logvar_w, Nd, D, D, true, st);
    } else {
        gather_rows(e->d_e, e->d_E, e->demo_slot, Nd, D, st);
    }
    if (d.lpn_grid) {
        rmsnorm_backward(e->d_pooled, e->d_e, e->e, e->e_rstd, Nd, D, false, st);
        scatter_rows(a->bs.G, e->d_pooled, e->cls_index, Nd, Nd * S2, D, st);
    } else {
        matmul_backward(e->d_pooled, g.pool_proj, nullptr, e->d_e, e->pooled, w.pool_proj, Nd, D, D, false, st);
        masked_mean_backward(a->bs.G, e->d_pooled, e->pool_mask, Nd, S2, D, st);
    }
    stack_backward(nullptr, &e->grid, w.grid_layers, g.grid_layers, grid_shape(*m, Nd), a->bs, st);
    const int first = d.lpn_grid ? 1 : 0;
    const float emb_scale = sqrtf((float)D);
    embedding_backward(g.enc_input_embed, a->bs.G, e->demo_in, Nd, S, D, S2, first, emb_scale, st);
    embedding_backward(g.enc_output_embed, a->bs.G, e->demo_out, Nd, S, D, S2, first + S, emb_scale, st);
    if (d.lpn_grid) broadcast_rows_backward(g.cls_token, a->bs.G, Nd, 1, D, S2, 0, st);
}

// ----------------------------------------------------------------------------------------------------------
// 6. Update: learning-rate schedule, gradient norms and clipping, AdamATan2 / AdamW on the dense parameters
//    (decoder and encoder as two groups), EMA, and sign-SGD on the puzzle-embedding rows of the batch.

typedef struct { double enc_norm, dec_norm, total_norm, lr; } UpdateStats;

// The gradients are already summed over the ranks, so every rank takes the same step. The schedule is upstream's
// (linear warm-up, then cosine to lr * lr_min_ratio; steps from 1); clipping is over the groups that train this
// step, as torch.nn.utils.clip_grad_norm_ over the optimizer's parameters. TRM: sign-SGD on the puzzle rows of the
// global batch (m->puzzle_ids_global, m->puzzle_grads_global), with the schedule of puzzle_emb_lr.
static UpdateStats model_update(Model* m, int step, int total_steps, Stream st) {
    const Config& c = m->cfg;
    UpdateStats u;
    u.dec_norm = sqrt(params_grad_norm_squared(&m->p, GROUP_DECODER, GROUP_DECODER + 1, st));
    u.enc_norm = sqrt(params_grad_norm_squared(&m->p, GROUP_ENCODER, GROUP_ENCODER + 1, st));
    u.total_norm = sqrt(u.dec_norm * u.dec_norm + u.enc_norm * u.enc_norm);
    const double trained_norm = group_updates_at(m->p.table.groups[GROUP_DECODER], step) ? u.total_norm : u.enc_norm;
    const Schedule schedule = {SCHEDULE_TRM, c.lr, c.lr_warmup_steps, total_steps, c.lr_min_ratio};
    u.lr = lr_schedule(schedule, step);
    const AdamConfig adam = {c.optimizer == "adam_atan2", c.beta1, c.beta2, c.adam_eps, c.weight_decay};
    params_update(&m->p, adam, (float)u.lr, step, clip_scale(trained_norm, c.grad_clip_norm), st);
    if (m->d.enc == ENC_NONE) {
        const Schedule puzzle = {SCHEDULE_TRM, c.puzzle_emb_lr, c.lr_warmup_steps, total_steps, c.lr_min_ratio};
        const size_t off = m->p.table.groups[GROUP_PUZZLE].begin;
        sign_sgd_update(m->w.puzzle_emb, m->p.master ? m->p.master + off : nullptr, m->puzzle_ids_global,
                        m->puzzle_grads_global, m->B_local * dist().world, m->d.ndim, lr_schedule(puzzle, step),
                        c.puzzle_emb_weight_decay, st);
    }
    return u;
}

// ----------------------------------------------------------------------------------------------------------
// 7. Data on the device. The ACT carry keeps, for every slot, the sample it is working on: a slot that halted
//    at the previous step takes the new batch's sample, the others keep theirs (upstream's current_data).

static void carry_take_new_samples(std::vector<Sample>* carry, std::vector<Sample>* batch, const std::vector<uint8_t>& halted) {
    for (size_t b = 0; b < carry->size(); b++)
        if (halted[b]) (*carry)[b] = std::move((*batch)[b]);
}

// The decoder's queries: inputs and labels (B, S), puzzle identifiers (B).
static void upload_queries(Model* m, const std::vector<int>& inputs, const std::vector<int>& labels, const std::vector<int>& ids) {
    Acts* a = &m->acts;
    copy_to_device(a->inputs, inputs.data(), inputs.size() * sizeof(int));
    copy_to_device(a->labels, labels.data(), labels.size() * sizeof(int));
    copy_to_device(a->puzzle_ids, ids.data(), ids.size() * sizeof(int));
}

// The decoder's queries of B samples.
static void upload_sample_queries(Model* m, const Sample* s, int B) {
    const Dims& d = m->d;
    std::vector<int> inputs((size_t)B * d.S), labels((size_t)B * d.S), ids(B);
    for (int b = 0; b < B; b++) {
        std::copy(s[b].inputs.begin(), s[b].inputs.end(), inputs.begin() + (size_t)b * d.S);
        std::copy(s[b].labels.begin(), s[b].labels.end(), labels.begin() + (size_t)b * d.S);
        ids[b] = s[b].puzzle_id;
        if (d.enc == ENC_NONE && (ids[b] < 0 || ids[b] >= m->n_puzzle_ids)) fatal("puzzle id %d outside the table (%d rows)", ids[b], m->n_puzzle_ids);
    }
    upload_queries(m, inputs, labels, ids);
}

// Copies B samples to the device arrays of the micro-batch; returns the number of valid demos Nd.
// Sample b is global slot slot0 + b * slot_stride of the batch (the key of its random numbers).
static int upload_micro_batch(Model* m, const Sample* s, int B, int slot0, int slot_stride) {
    const Dims& d = m->d;
    Acts* a = &m->acts;
    upload_sample_queries(m, s, B);
    if (d.enc == ENC_NONE) return 0;

    EncoderActs* e = &a->enc;
    std::vector<int> demo_in, demo_out, slot, latent_key;
    std::vector<uint8_t> mask((size_t)B * d.K, 0), pool_mask;
    for (int b = 0; b < B; b++) {
        for (int k = 0; k < s[b].n_demos; k++) {
            demo_in.insert(demo_in.end(), s[b].demo_inputs.begin() + (size_t)k * d.S, s[b].demo_inputs.begin() + (size_t)(k + 1) * d.S);
            demo_out.insert(demo_out.end(), s[b].demo_labels.begin() + (size_t)k * d.S, s[b].demo_labels.begin() + (size_t)(k + 1) * d.S);
            slot.push_back(b * d.K + k);
            mask[(size_t)b * d.K + k] = 1;
            if (d.enc == ENC_LPN_VARIATIONAL) latent_key.push_back((slot0 + b * slot_stride) * d.K + k);
        }
        if (d.enc == ENC_HYBRID_VARIATIONAL) latent_key.push_back(slot0 + b * slot_stride);
    }
    const int Nd = (int)slot.size();
    if (!d.lpn_grid) {                              // standard pooling averages the non-PAD tokens
        pool_mask.resize((size_t)Nd * d.S2);
        for (int n = 0; n < Nd; n++)
            for (int i = 0; i < d.S; i++) {
                pool_mask[(size_t)n * d.S2 + i] = demo_in[(size_t)n * d.S + i] != ARC_TOKEN_PAD;
                pool_mask[(size_t)n * d.S2 + d.S + i] = demo_out[(size_t)n * d.S + i] != ARC_TOKEN_PAD;
            }
        copy_to_device(e->pool_mask, pool_mask.data(), pool_mask.size());
    }
    copy_to_device(e->demo_in, demo_in.data(), demo_in.size() * sizeof(int));
    copy_to_device(e->demo_out, demo_out.data(), demo_out.size() * sizeof(int));
    copy_to_device(e->demo_slot, slot.data(), slot.size() * sizeof(int));
    copy_to_device(e->demo_mask, mask.data(), mask.size());
    copy_to_device(e->latent_key, latent_key.data(), latent_key.size() * sizeof(int));
    return Nd;
}

enum { TAG_HALT = 101, TAG_LATENT = 102 };

// The noise of the variational latents: fresh every step (latent_mode=sample, upstream), fixed for
// latent_hold_steps steps (hold), or none (mean; and always in evaluation).
static void latent_noise(Model* m, int rows, bool training, int step) {
    if (!m->d.variational) return;
    EncoderActs* e = &m->acts.enc;
    const std::string& mode = m->cfg.latent_mode;
    if (!training || mode == "mean" || rows == 0) {
        device_memset(e->eps, 0, (size_t)rows * m->d.D * sizeof(floatS));
        return;
    }
    const int draw = mode == "hold" ? (step - 1) / m->cfg.latent_hold_steps : step;
    gaussian_noise(e->eps, e->latent_key, rows, m->d.D, hash_u64((uint64_t)m->cfg.seed, TAG_LATENT, (uint64_t)draw), Stream());
}

// ----------------------------------------------------------------------------------------------------------
// 8. Evaluation (upstream evaluators/arc.py). Every test input is solved under every augmentation of its task
//    (eval_num_aug of them): the model runs halt_max_steps ACT steps from a fresh carry (no early halting),
//    the predicted grid is cropped from the canvas and mapped back by the inverse augmentation, and the
//    distinct answers are ranked by their number of votes, then by their mean sigmoid(q_halt). pass@K: the
//    true output is among the top K; a task scores the fraction of its test inputs passed; the result is the
//    mean over the tasks evaluated. Predictions (top candidates per test input) go to a JSON file that
//    dev/submission.py turns into an ARC Prize submission.

// Test-time latent optimisation (DESIGN decision 4, LPN-style; latent_opt_steps > 0). Each sample's latent,
// the vector the encoder's output projection maps to the 16 context tokens (hybrid_variational: z; lpn_*:
// the mean over the demos) or the context tokens themselves (standard, hybrid_standard), is refined by Adam
// on the reconstruction loss of the sample's own demonstrations: for every demo, one decoder ACT step from a
// fresh carry with the demo input as the query and the latent's context as the prefix, stablemax
// cross-entropy against the demo output. The two latents with the lowest losses seen are kept (the first one
// evaluated is the encoder's own) and the test input is solved with each: their answers are voted on (LPN's
// best-two-latents pass@2; evaluate_set breaks ties between equal votes by the lower demo loss).

static bool latent_has_projection(const Dims& d) {
    return d.enc == ENC_HYBRID_VARIATIONAL || d.enc == ENC_LPN_STANDARD || d.enc == ENC_LPN_VARIATIONAL;
}

// Width L of a sample's latent: D when a projection maps it to the context, else the P*D context itself.
static int latent_width(const Dims& d) { return latent_has_projection(d) ? d.D : d.P * d.D; }

// The encoder's latent (B, L) after encoder_forward.
static floatX* encoder_latent(Model* m) {
    EncoderActs* e = &m->acts.enc;
    if (!latent_has_projection(m->d)) return e->context;
    return m->d.enc == ENC_HYBRID_VARIATIONAL ? e->z : e->agg;
}

// enc.context (B, P*D) = latent_proj(latent), or the latent itself.
static void context_from_latent(Model* m, const ModelTensors<floatX>& w, const floatX* latent, int B, Stream st) {
    const Dims& d = m->d;
    EncoderActs* e = &m->acts.enc;
    if (latent_has_projection(d)) matmul_forward(e->context, latent, w.latent_proj, nullptr, B, d.D, d.P * d.D, st);
    else if (latent != e->context) copy_on_device(e->context, latent, (size_t)B * d.P * d.D * sizeof(floatX));
}

// Per sample, the sum over its demos of the mean token loss given the contexts (B, P*D); with_grad also
// leaves d loss / d context in enc.opt_d_context. Uses the query arrays: re-upload the queries afterwards.
static void demo_loss(Model* m, const ModelTensors<floatX>& w, const Sample* s, int B, const floatX* context,
                      bool with_grad, std::vector<double>* loss, Stream st) {
    const Dims& d = m->d;
    Acts* a = &m->acts;
    EncoderActs* e = &a->enc;
    const int ctx = d.P * d.D;
    loss->assign(B, 0.0);
    if (with_grad) device_memset(e->opt_d_context, 0, (size_t)B * ctx * sizeof(floatX));
    std::vector<floatS> row_loss(B);
    for (int k = 0; k < d.K; k++) {                                  // the k-th demo of every sample that has one
        std::vector<int> inputs, labels, rows;
        for (int b = 0; b < B; b++) {
            if (k >= s[b].n_demos) continue;
            const int32_t* in = &s[b].demo_inputs[(size_t)k * d.S];
            const int32_t* out = &s[b].demo_labels[(size_t)k * d.S];
            inputs.insert(inputs.end(), in, in + d.S);
            for (int i = 0; i < d.S; i++) labels.push_back(out[i] == ARC_TOKEN_PAD ? IGNORE_LABEL_ID : out[i]);
            rows.push_back(b);
        }
        const int n = (int)rows.size();
        if (n == 0) break;                                          // demos fill slots 0..n_demos-1
        upload_queries(m, inputs, labels, std::vector<int>(n, 0));
        copy_to_device(e->opt_rows, rows.data(), n * sizeof(int));
        gather_rows(e->opt_prefix, context, e->opt_rows, n, ctx, st);
        device_memset(a->eval_halted, 1, n);
        act_reset(a->eval_z_H, a->eval_z_L, w.H_init, w.L_init, a->eval_steps, a->eval_halted, n, d.T, d.D, st);
        input_embedding_forward(m, w, n, e->opt_prefix, st);
        decoder_forward(m, w, a->eval_z_H, a->eval_z_L, n, with_grad, st);
        loss_forward(m, n, st);
        copy_to_host(row_loss.data(), a->lm_loss, n * sizeof(floatS));
        for (int r = 0; r < n; r++) (*loss)[rows[r]] += row_loss[r];
        if (with_grad) {                                             // objective: the token loss only
            decoder_backward(m, w, m->g_none, a->eval_z_H, n, a->weight_one, a->weight_zero, st);
            scatter_rows(e->opt_tmp, a->dprefix, e->opt_rows, n, B, ctx, st);
            add_forward(e->opt_d_context, e->opt_d_context, e->opt_tmp, nullptr, (size_t)B * ctx, st);
        }
    }
}

// d demo loss / d latent (B, L) after demo_loss(with_grad) on the context of the latents in enc.opt_latent.
static const floatX* latent_gradient(Model* m, const ModelTensors<floatX>& w, int B, Stream st) {
    const Dims& d = m->d;
    EncoderActs* e = &m->acts.enc;
    if (!latent_has_projection(d)) return e->opt_d_context;
    matmul_backward(e->opt_grad, nullptr, nullptr, e->opt_d_context, e->opt_latent, w.latent_proj, B, d.D, d.P * d.D, false, st);
    return e->opt_grad;
}

// The latents test-time optimisation keeps per sample: [0] the lowest demo loss seen, [1] the next.
typedef struct {
    std::vector<floatX> latent[2];    // (B, L)
    std::vector<double> loss[2];      // (B)
} KeptLatents;

// Refines the latents of B samples after encoder_forward and keeps the best two. Returns the summed demo loss of the
// encoder's latents and of the best kept ones.
static void latent_optimise(Model* m, const ModelTensors<floatX>& w, const Sample* s, int B, KeptLatents* kept,
                            double* loss_before, double* loss_after, Stream st) {
    const Dims& d = m->d;
    const Config& c = m->cfg;
    EncoderActs* e = &m->acts.enc;
    const int L = latent_width(d);
    const size_t n = (size_t)B * L;
    copy_on_device(e->opt_latent, encoder_latent(m), n * sizeof(floatX));
    convert_to_floatS(e->opt_master, e->opt_latent, n, st);
    device_memset(e->opt_m, 0, n * sizeof(floatS));
    device_memset(e->opt_v, 0, n * sizeof(floatS));
    for (int k = 0; k < 2; k++) {
        kept->latent[k].assign(n, from_float<floatX>(0.0));
        kept->loss[k].assign(B, INFINITY);
    }
    std::vector<floatX> current(n);
    std::vector<double> loss;
    for (int it = 0; it <= c.latent_opt_steps; it++) {
        const bool last = it == c.latent_opt_steps;
        context_from_latent(m, w, e->opt_latent, B, st);
        demo_loss(m, w, s, B, e->context, !last, &loss, st);
        copy_to_host(current.data(), e->opt_latent, n * sizeof(floatX));
        for (int b = 0; b < B; b++) {
            const int k = loss[b] < kept->loss[0][b] ? 0 : loss[b] < kept->loss[1][b] ? 1 : 2;
            if (k == 2) continue;
            auto row = [&](std::vector<floatX>& v) { return v.begin() + (size_t)b * L; };
            if (k == 0) {                                          // the best moves down to second
                std::copy(row(kept->latent[0]), row(kept->latent[0]) + L, row(kept->latent[1]));
                kept->loss[1][b] = kept->loss[0][b];
            }
            std::copy(row(current), row(current) + L, row(kept->latent[k]));
            kept->loss[k][b] = loss[b];
        }
        if (it == 0) *loss_before = std::accumulate(loss.begin(), loss.end(), 0.0);
        if (last) break;
        convert_to_floatS(e->opt_grad_s, latent_gradient(m, w, B, st), n, st);
        adam_update(e->opt_latent, e->opt_master, e->opt_grad_s, e->opt_m, e->opt_v, n, c.latent_opt_lr, 0.9f, 0.999f,
                    1e-8f, 0.0f, 1.0f, it + 1, false, st);
    }
    *loss_after = std::accumulate(kept->loss[0].begin(), kept->loss[0].end(), 0.0);
}

// enc.context from kept latent k.
static void use_kept_latent(Model* m, const ModelTensors<floatX>& w, const KeptLatents& kept, int k, int B, Stream st) {
    copy_to_device(m->acts.enc.opt_latent, kept.latent[k].data(), kept.latent[k].size() * sizeof(floatX));
    context_from_latent(m, w, m->acts.enc.opt_latent, B, st);
}

// LPN's Grad-N training (latent_inner_steps = N > 0; DESIGN decision 4's optional inner steps). After the encoder,
// each sample's latent l_0 (the one latent_optimise refines) takes N gradient steps on its own demonstrations' loss
// (demo_loss, with the training weights):
//     l_{i+1} = l_i - latent_inner_lr * d demo_loss(l_i) / d l_i,
// and the query is decoded from l_N. As in LPN the steps enter as a constant shift, l_N = l_0 + stop_gradient(l_N - l_0):
// the training gradient reaches the encoder through l_0 with d L / d l_0 = d L / d l_N (first order: no second
// derivatives through the decoder). latent_inner_shift computes the shift (B, L), latent_shift_apply adds it to the
// encoder's latent and recomputes the context; encoder_backward then needs nothing else, since the latent buffer
// (whose values latent_proj's weight gradient reads) holds l_N. The demos' queries overwrite the query arrays:
// re-upload them afterwards.
static void latent_inner_shift(Model* m, const ModelTensors<floatX>& w, const Sample* s, int B, std::vector<double>* shift,
                               Stream st) {
    const Dims& d = m->d;
    EncoderActs* e = &m->acts.enc;
    const size_t n = (size_t)B * latent_width(d);
    std::vector<floatX> start(n), grad(n), step(n);
    copy_to_host(start.data(), encoder_latent(m), n * sizeof(floatX));
    std::vector<double> latent(n), loss;
    for (size_t i = 0; i < n; i++) latent[i] = to_float(start[i]);
    for (int it = 0; it < m->cfg.latent_inner_steps; it++) {
        for (size_t i = 0; i < n; i++) step[i] = from_float<floatX>(latent[i]);
        copy_to_device(e->opt_latent, step.data(), n * sizeof(floatX));
        context_from_latent(m, w, e->opt_latent, B, st);
        demo_loss(m, w, s, B, e->context, true, &loss, st);
        copy_to_host(grad.data(), latent_gradient(m, w, B, st), n * sizeof(floatX));
        for (size_t i = 0; i < n; i++) latent[i] -= m->cfg.latent_inner_lr * to_float(grad[i]);
    }
    shift->resize(n);
    for (size_t i = 0; i < n; i++) (*shift)[i] = latent[i] - to_float(start[i]);
}

static void latent_shift_apply(Model* m, const ModelTensors<floatX>& w, const std::vector<double>& shift, int B, Stream st) {
    floatX* latent = encoder_latent(m);
    std::vector<floatX> v(shift.size());
    copy_to_host(v.data(), latent, v.size() * sizeof(floatX));
    for (size_t i = 0; i < v.size(); i++) v[i] = from_float<floatX>(to_float(v[i]) + shift[i]);
    copy_to_device(latent, v.data(), v.size() * sizeof(floatX));
    context_from_latent(m, w, latent, B, st);
}

typedef struct {
    std::vector<uint8_t> cells;
    int rows, cols, votes;
    double q_sum, loss_sum;     // sigmoid(q_halt) and (latent_opt_steps) the demo loss of the latents that voted
} Candidate;

typedef struct {
    std::string set;
    int n_samples, n_labelled, n_tasks, n_optimised;
    double lm_loss, token_acc, exact_acc, q_halt_acc, pass_at[3];
    double opt_loss_before, opt_loss_after;       // latent_opt_steps: demo loss per sample, encoder's vs kept
} EvalResult;

static const int PASS_KS[3] = {1, 2, 5};

static uint64_t grid_hash(const uint8_t* cells, int rows, int cols) {
    uint64_t h = hash_u64(0x6772696400000000ull, (uint64_t)rows, (uint64_t)cols);
    for (int i = 0; i < rows * cols; i++) h = mix64(h ^ cells[i]);
    return h;
}

static bool candidate_before(const Candidate& a, const Candidate& b) {
    if (a.votes != b.votes) return a.votes > b.votes;
    if (a.loss_sum / a.votes != b.loss_sum / b.votes) return a.loss_sum / a.votes < b.loss_sum / b.votes;
    return a.q_sum / a.votes > b.q_sum / b.votes;
}

static void json_grid(FILE* f, const uint8_t* cells, int rows, int cols) {
    fprintf(f, "[");
    for (int r = 0; r < rows; r++) {
        fprintf(f, r ? ",[" : "[");
        for (int c = 0; c < cols; c++) fprintf(f, c ? ",%d" : "%d", cells[r * cols + c]);
        fprintf(f, "]");
    }
    fprintf(f, "]");
}

// eval_shuffle_demos=1: each of the first `real` samples takes the demonstrations of the next sample of the batch
// (cyclically) that belongs to another task. Tasks follow one another in the batch and the synthetic sets deal
// their tasks round-robin over the families, so that is usually another family's rule.
static void shuffle_demos(std::vector<Sample>* batch, int real) {
    const std::vector<Sample> original(batch->begin(), batch->begin() + real);
    for (int b = 0; b < real; b++)
        for (int k = 1; k < real; k++) {
            const Sample& other = original[(b + k) % real];
            if (other.task == original[b].task) continue;
            Sample& s = (*batch)[b];
            s.demo_inputs = other.demo_inputs;
            s.demo_labels = other.demo_labels;
            s.n_demos = other.n_demos;
            break;
        }
}

// Evaluates one set with the given weights; fills the voting table `votes[(task, pair)]`.
static EvalResult evaluate_set(Model* m, DataLoader* dl, int set, const ModelTensors<floatX>& w,
                               std::map<std::pair<int, int>, std::vector<Candidate>>* votes) {
    const Dims& d = m->d;
    Acts* a = &m->acts;
    const int B = m->mb;
    EvalResult r = EvalResult();
    r.set = dl->test_names[set];
    std::map<std::pair<int, int>, std::map<uint64_t, Candidate>> table;
    EvalCursor cursor = loader_eval_begin(set);
    std::vector<Sample> batch;
    std::vector<int> preds((size_t)B * d.S), n_valid(B), n_correct(B);
    std::vector<floatS> lm_loss(B);
    std::vector<floatX> q((size_t)B * d.Q_pad);
    KeptLatents kept;
    int real;
    while ((real = loader_next_eval_batch(*dl, &cursor, B, m->cfg.eval_num_aug, &batch)) > 0) {
        if (m->cfg.eval_shuffle_demos) shuffle_demos(&batch, real);
        const int Nd = upload_micro_batch(m, batch.data(), B, 0, 1);
        latent_noise(m, d.enc == ENC_LPN_VARIATIONAL ? Nd : B, false, 0);
        if (d.enc != ENC_NONE) encoder_forward(m, w, B, Nd, Stream());
        const bool optimise = m->cfg.latent_opt_steps > 0;
        if (optimise) {
            double before = 0, after = 0;
            latent_optimise(m, w, batch.data(), B, &kept, &before, &after, Stream());
            upload_sample_queries(m, batch.data(), B);                      // the queries again
            r.opt_loss_before += before;
            r.opt_loss_after += after;
            for (int b = 0; b < real; b++) r.n_optimised += batch[b].n_demos > 0;
        }
        for (int k = 0; k < (optimise ? 2 : 1); k++) {                    // the best latent, then the second
            if (optimise) use_kept_latent(m, w, kept, k, B, Stream());
            input_embedding_forward(m, w, B, a->enc.context, Stream()); // the same for all ACT steps
            // a fresh carry: every slot starts halted, i.e. from H_init / L_init, and runs halt_max_steps steps
            device_memset(a->eval_halted, 1, B);
            act_reset(a->eval_z_H, a->eval_z_L, w.H_init, w.L_init, a->eval_steps, a->eval_halted, B, d.T, d.D, Stream());
            for (int s = 0; s < m->cfg.halt_max_steps; s++) decoder_forward(m, w, a->eval_z_H, a->eval_z_L, B, false, Stream());
            loss_forward(m, B, Stream());
            copy_to_host(preds.data(), a->preds, preds.size() * sizeof(int));
            copy_to_host(n_valid.data(), a->n_valid, B * sizeof(int));
            copy_to_host(n_correct.data(), a->n_correct, B * sizeof(int));
            copy_to_host(lm_loss.data(), a->lm_loss, B * sizeof(floatS));
            copy_to_host(q.data(), a->q, q.size() * sizeof(floatX));
            for (int b = 0; b < real; b++) {
                const Sample& s = batch[b];
                const double q_halt = to_float(q[(size_t)b * d.Q_pad]);
                const bool exact = n_correct[b] == n_valid[b];
                if (k == 0) {                                             // the metrics: the best latent's answer
                    r.n_samples++;
                    if (n_valid[b] > 0) {
                        r.n_labelled++;
                        r.lm_loss += lm_loss[b];
                        r.token_acc += (double)n_correct[b] / n_valid[b];
                        r.exact_acc += exact;
                        r.q_halt_acc += (q_halt >= 0) == exact;
                    }
                }
                uint8_t crop[ARC_MAX_SIDE * ARC_MAX_SIDE], grid[ARC_MAX_SIDE * ARC_MAX_SIDE];
                int cr, cc, gr = 0, gc = 0;
                std::vector<int32_t> tokens(preds.begin() + (size_t)b * d.S, preds.begin() + (size_t)(b + 1) * d.S);
                grid_crop_tokens(tokens.data(), d.canvas, crop, &cr, &cc);
                if (cr * cc > 0) grid_unaugment(crop, cr, cc, dl->tasks[s.task].augs[s.aug], grid, &gr, &gc);
                Candidate& cand = table[{s.task, s.pair}][grid_hash(grid, gr, gc)];
                if (cand.votes == 0) { cand.cells.assign(grid, grid + gr * gc); cand.rows = gr; cand.cols = gc; }
                cand.votes++;
                cand.q_sum += 1.0 / (1.0 + exp(-q_halt));
                if (optimise) cand.loss_sum += kept.loss[k][b];
            }
        }
    }
    // rank the answers of every (task, test input), and score the tasks with known outputs
    std::map<int, std::pair<double, int>> task_score[3];
    for (auto& kv : table) {
        std::vector<Candidate> ranked;
        for (auto& c : kv.second) ranked.push_back(c.second);
        std::stable_sort(ranked.begin(), ranked.end(), candidate_before);
        const int t = kv.first.first;
        const GridView& truth = loader_task(*dl, t).pairs[kv.first.second].output;
        if (grid_known(truth)) {
            for (int k = 0; k < 3; k++) {
                bool ok = false;
                for (int i = 0; i < (int)ranked.size() && i < PASS_KS[k]; i++)
                    ok |= ranked[i].rows == truth.rows && ranked[i].cols == truth.cols &&
                          std::equal(ranked[i].cells.begin(), ranked[i].cells.end(), truth.cells);
                task_score[k][t].first += ok;
                task_score[k][t].second += 1;
            }
        }
        (*votes)[kv.first] = ranked;
    }
    r.n_tasks = (int)task_score[0].size();
    for (int k = 0; k < 3; k++) {
        for (auto& ts : task_score[k]) r.pass_at[k] += ts.second.first / ts.second.second;
        r.pass_at[k] /= std::max(1, r.n_tasks);
    }
    const double n = std::max(1, r.n_labelled);
    r.lm_loss /= n; r.token_acc /= n; r.exact_acc /= n; r.q_halt_acc /= n;
    r.opt_loss_before /= std::max(1, r.n_optimised);
    r.opt_loss_after /= std::max(1, r.n_optimised);
    return r;
}

// ----------------------------------------------------------------------------------------------------------
// 9. Checkpoints, safetensors, debug state.
//
// Checkpoint file (ckpt_<step>.bin in checkpoint_path, format in common/checkpoint.h), sections: the parameter
// state of every group (weights, Adam moments, EMA, optimizer steps: params_sections), state (step, data-loader
// position, global batch, puzzle identifiers), the ACT carry (z_H, z_L, steps, halted) and the carry's samples.
// Everything a run needs to continue bit for bit. Weights are also exported as safetensors with the upstream
// state_dict names.

// A carry sample's indices must name this run's data: a blank (task -1, nothing else set) or a pair of a task under
// one of its augmentations, with at most max_demos demos (none for TRM).
static void sample_check(const Sample& s, const DataLoader& dl, const char* path, int slot) {
    char what[64];
    snprintf(what, sizeof what, "carry slot %d's task", slot);
    section_check_range(path, what, s.task, -1, (long long)dl.tasks.size() - 1);
    const bool blank = s.task < 0;
    snprintf(what, sizeof what, "carry slot %d's augmentation", slot);
    section_check_range(path, what, s.aug, 0, blank ? 0 : (long long)dl.tasks[s.task].augs.size() - 1);
    snprintf(what, sizeof what, "carry slot %d's pair", slot);
    section_check_range(path, what, s.pair, 0, blank ? 0 : (long long)loader_task(dl, s.task).pairs.size() - 1);
    snprintf(what, sizeof what, "carry slot %d's puzzle identifier", slot);
    section_check_range(path, what, s.puzzle_id, 0, blank ? 0 : std::max(dl.n_puzzle_ids - 1, 0));
    snprintf(what, sizeof what, "carry slot %d's number of demos", slot);
    section_check_range(path, what, s.n_demos, 0, blank || !dl.etrm ? 0 : dl.max_demos);
}

// The carry's samples as int32 records: n_demos, puzzle_id, task, aug, pair, then the tokens.
static void samples_serialize(const std::vector<Sample>& samples, int S, std::vector<int32_t>* out) {
    out->clear();
    for (const Sample& s : samples) {
        out->insert(out->end(), {s.n_demos, s.puzzle_id, s.task, s.aug, s.pair});
        out->insert(out->end(), s.inputs.begin(), s.inputs.end());
        out->insert(out->end(), s.labels.begin(), s.labels.end());
        out->insert(out->end(), s.demo_inputs.begin(), s.demo_inputs.end());
        out->insert(out->end(), s.demo_labels.begin(), s.demo_labels.end());
        if ((int)s.inputs.size() != S) fatal("internal: sample of %zu tokens, expected %d", s.inputs.size(), S);
    }
}

// Reads n records back. With a loader, every record is checked against this run's data (a checkpoint is hostile
// until validated: a token outside the vocabulary or too many demos would index outside the buffers): its indices
// first, then the whole record against the sample they name, which the loader rebuilds (a training sample is a pure
// function of task, augmentation and pair).
static std::vector<Sample> samples_deserialize(const std::vector<int32_t>& in, int n, int S, const DataLoader* dl,
                                               const char* path) {
    std::vector<Sample> out(n);
    size_t p = 0;
    for (int b = 0; b < n; b++) {
        Sample& s = out[b];
        if (in.size() - p < 5 + 2 * (size_t)S) fatal("%s: the carry's samples are truncated at slot %d", path, b);
        s.n_demos = in[p]; s.puzzle_id = in[p + 1]; s.task = in[p + 2]; s.aug = in[p + 3]; s.pair = in[p + 4];
        p += 5;
        if (dl) sample_check(s, *dl, path, b);
        const size_t nd = (size_t)s.n_demos * S;
        if (s.n_demos < 0 || in.size() - p < 2 * S + 2 * nd) fatal("%s: the carry's samples are truncated at slot %d", path, b);
        s.inputs.assign(in.begin() + p, in.begin() + p + S); p += S;
        s.labels.assign(in.begin() + p, in.begin() + p + S); p += S;
        s.demo_inputs.assign(in.begin() + p, in.begin() + p + nd); p += nd;
        s.demo_labels.assign(in.begin() + p, in.begin() + p + nd); p += nd;
        if (!dl) continue;
        const Sample want = s.task < 0 ? loader_blank_sample(*dl) : loader_make_sample(*dl, s.task, s.aug, s.pair, true);
        if (s.n_demos != want.n_demos || s.puzzle_id != want.puzzle_id || s.inputs != want.inputs || s.labels != want.labels ||
            s.demo_inputs != want.demo_inputs || s.demo_labels != want.demo_labels)
            fatal("%s: carry slot %d is not the sample of task %d, augmentation %d, pair %d of this run's data (corrupt "
                  "checkpoint, or other data files)", path, b, s.task, s.aug, s.pair);
    }
    if (dl && p != in.size())            // (only the fixed-size records of checkpoint_save's gather have padding)
        fatal("%s: %zu int32 values after the carry's last sample (corrupt checkpoint)", path, in.size() - p);
    return out;
}

// The training state a resumed run continues from (besides the model).
typedef struct {
    int step;
    std::vector<Sample> carry;          // (B_local) the sample of every slot
    std::vector<uint8_t> halted;        // (B_local) host copy of the halted flags
} TrainState;

// Weights (the EMA when ema=1, as upstream saves its evaluation model) with the upstream state_dict names.
static void export_safetensors(Model* m, const std::string& path, int step, const std::string& config) {
    const bool ema = m->p.ema != nullptr;
    SafetensorsWriter st;
    safetensors_add_table(&st, m->p.table, params_values(m->p, ema));
    safetensors_add_meta(&st, "format", "arc.cu");
    safetensors_add_meta(&st, "step", std::to_string(step));
    safetensors_add_meta(&st, "weights", ema ? "ema" : "raw");
    safetensors_add_meta(&st, "config", config);
    safetensors_write(st, path);
}

// The carry of a multi-process run is saved for the whole global batch in global slot order (rank 0 gathers
// it), so a run resumes with any number of ranks: each takes its slots g = rank + b * world back.
// slots_to_global: rank 0 gets every rank's per-slot records (slot_bytes each), in global slot order.
static std::vector<uint8_t> slots_to_global(const void* local, size_t slot_bytes, int B_local) {
    std::vector<uint8_t> by_rank = dist_gather_host(local, slot_bytes * B_local);
    return dist().rank == 0 ? dist_slot_order(by_rank, slot_bytes, B_local) : std::vector<uint8_t>();
}
// This rank's slots of global per-slot records.
template <typename T> static std::vector<T> slots_of_rank(const T* global, size_t per_slot, int B_local) {
    std::vector<T> out((size_t)B_local * per_slot);
    for (int b = 0; b < B_local; b++)
        std::copy(global + (size_t)(dist().rank + b * dist().world) * per_slot,
                  global + (size_t)(dist().rank + b * dist().world + 1) * per_slot, out.begin() + (size_t)b * per_slot);
    return out;
}

static void checkpoint_save(Model* m, const DataLoader& dl, const TrainState& ts, const std::string& config, Logger* log) {
    const Dims& d = m->d;
    const std::string& dir = m->cfg.checkpoint_path;
    const int Bl = m->B_local;
    // the carry of every rank, in global slot order: z_H then z_L (B_global, T, D), steps, halted, samples
    const size_t slot_z = (size_t)d.T * d.D, carry = (size_t)Bl * slot_z;
    std::vector<floatS> z(carry);
    download_floatX(z.data(), m->z_H, carry);
    std::vector<uint8_t> z_all = slots_to_global(z.data(), slot_z * sizeof(floatS), Bl);
    download_floatX(z.data(), m->z_L, carry);
    std::vector<uint8_t> z_L_all = slots_to_global(z.data(), slot_z * sizeof(floatS), Bl);
    z_all.insert(z_all.end(), z_L_all.begin(), z_L_all.end());
    std::vector<int> steps(Bl);
    copy_to_host(steps.data(), m->steps, steps.size() * sizeof(int));
    std::vector<uint8_t> steps_all = slots_to_global(steps.data(), sizeof(int), Bl);
    std::vector<uint8_t> halted_all = slots_to_global(ts.halted.data(), 1, Bl);
    // samples travel as fixed-size records (at most max_demos demos), then are stored compactly
    const size_t record = 5 + 2 * (size_t)d.S + 2 * (size_t)std::max(d.K, 0) * d.S;
    std::vector<int32_t> records(Bl * record, 0), one;
    for (int b = 0; b < Bl; b++) {
        samples_serialize({ts.carry[b]}, d.S, &one);
        std::copy(one.begin(), one.end(), records.begin() + b * record);
    }
    std::vector<uint8_t> records_all = slots_to_global(records.data(), record * sizeof(int32_t), Bl);
    if (dist().rank != 0) return;                   // only rank 0 writes
    std::vector<Sample> carry_all;
    for (int g = 0; g < Bl * dist().world; g++) {
        std::vector<int32_t> r(record);
        memcpy(r.data(), &records_all[g * record * sizeof(int32_t)], record * sizeof(int32_t));
        carry_all.push_back(samples_deserialize(r, 1, d.S, nullptr, "checkpoint")[0]);
    }
    std::vector<int32_t> samples;
    samples_serialize(carry_all, d.S, &samples);
    const int64_t state[5] = {ts.step, dl.epoch, dl.cursor, (int64_t)Bl * dist().world, m->n_puzzle_ids};
    SectionList sections;
    section_add(&sections, "state", state, sizeof state);
    params_sections(m->p, &sections);
    section_add(&sections, "carry_z", z_all.data(), z_all.size());
    section_add(&sections, "carry_steps", steps_all.data(), steps_all.size());
    section_add(&sections, "carry_halted", halted_all.data(), halted_all.size());
    section_add(&sections, "carry_samples", samples.data(), samples.size() * sizeof(int32_t));
    const std::string path = checkpoint_name(dir, "ckpt", ts.step, ".bin");
    checkpoint_write(path, ts.step, config, sections);
    if (m->cfg.save_safetensors) export_safetensors(m, checkpoint_name(dir, "model", ts.step, ".safetensors"), ts.step, config);
    log_printf(log, "checkpoint step=%d path=%s\n", ts.step, path.c_str());
    // keep the newest checkpoint_keep checkpoints (and their exports)
    if (m->cfg.checkpoint_keep > 0) {
        std::vector<int> all = checkpoint_list_steps(dir, "ckpt");
        for (size_t i = 0; i + m->cfg.checkpoint_keep < all.size(); i++) {
            remove(checkpoint_name(dir, "ckpt", all[i], ".bin").c_str());
            remove(checkpoint_name(dir, "model", all[i], ".safetensors").c_str());
        }
    }
}

// Continues a run: the model, optimizer, EMA, carry and data position of the checkpoint at `path`, every value
// validated against this run (sizes, ranges, vocabulary, finiteness) before it is used.
static void checkpoint_load(Model* m, DataLoader* dl, TrainState* ts, const char* path, const Checkpoint& ck) {
    const Dims& d = m->d;
    const Sections& s = ck.sections;
    int64_t state[5];
    section_get(s, path, "state", state, 5);
    if (state[0] != ck.step) fatal("%s: the header says step %d, the state section step %lld (corrupt checkpoint)", path, ck.step, (long long)state[0]);
    const int Bl = m->B_local, B_global = Bl * dist().world;
    if (state[3] != B_global)
        fatal("%s: written with a global batch of %lld samples, this run has %d: resume with the same global_batch_size",
              path, (long long)state[3], B_global);
    if (state[4] != m->n_puzzle_ids)
        fatal("%s: written with %lld puzzle identifiers, this run has %d: resume with the same data and num_aug", path, (long long)state[4], m->n_puzzle_ids);
    section_check_range(path, "the step", state[0], 0, INT_MAX - 1);
    section_check_range(path, "the data epoch", state[1], 0, INT_MAX);
    section_check_range(path, "the data cursor", state[2], 0, (long long)dl->train_groups.size());
    params_load_sections(&m->p, s, path, state[0]);
    const size_t slot_z = (size_t)d.T * d.D, carry = (size_t)B_global * slot_z;
    std::vector<floatS> buf(2 * carry);
    // this rank's slots of the global carry
    section_get(s, path, "carry_z", buf.data(), 2 * carry);
    section_check_finite(path, "carry_z", buf.data(), buf.size());
    upload_floatX(m->z_H, slots_of_rank(buf.data(), slot_z, Bl).data(), (size_t)Bl * slot_z);
    upload_floatX(m->z_L, slots_of_rank(buf.data() + carry, slot_z, Bl).data(), (size_t)Bl * slot_z);
    std::vector<int> steps(B_global);
    section_get(s, path, "carry_steps", steps.data(), steps.size());
    for (int v : steps) section_check_range(path, "an ACT step count of the carry", v, 0, m->cfg.halt_max_steps);
    copy_to_device(m->steps, slots_of_rank(steps.data(), 1, Bl).data(), Bl * sizeof(int));
    std::vector<uint8_t> halted(B_global);
    section_get(s, path, "carry_halted", halted.data(), halted.size());
    for (int b = 0; b < B_global; b++) {
        section_check_range(path, "a halted flag of the carry", halted[b], 0, 1);
        if (!halted[b]) section_check_range(path, "the ACT steps of a running slot", steps[b], 0, m->cfg.halt_max_steps - 1);
    }
    ts->halted = slots_of_rank(halted.data(), 1, Bl);
    copy_to_device(m->halted, ts->halted.data(), ts->halted.size());
    auto it = s.find("carry_samples");
    if (it == s.end() || it->second.size() % sizeof(int32_t)) fatal("%s: section 'carry_samples' is missing or not whole int32 records", path);
    std::vector<int32_t> samples(it->second.size() / sizeof(int32_t));
    section_get(s, path, "carry_samples", samples.data(), samples.size());
    std::vector<Sample> carry_all = samples_deserialize(samples, B_global, d.S, dl, path);
    ts->carry = slots_of_rank(carry_all.data(), 1, Bl);
    ts->step = (int)state[0];
    dl->epoch = state[1];
    dl->cursor = state[2];
    dl->order.clear();
}

static bool ends_with(const std::string& s, const char* suffix) {
    const size_t n = strlen(suffix);
    return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// Initial weights from a file: an arc.cu checkpoint (.bin) or safetensors with the upstream names. With
// decoder_only, only the decoder (inner.*) is read (TRM -> ETRM transfer; the puzzle table is skipped) and the
// encoder keeps its initialisation. A file written by arc.cu carries its configuration: its architecture must be
// this run's. Tensors of the file that this model does not have are named in a warning.
static void load_weights(Model* m, Run* run, const std::string& path, bool decoder_only) {
    const Dims& d = m->d;
    const ParamTable& table = m->p.table;
    const char* arch = decoder_only ? DECODER_ARCH_KEYS : ARCH_KEYS;
    std::vector<floatS> w = params_values(m->p);
    if (ends_with(path, ".safetensors")) {
        Safetensors st = safetensors_read(path.c_str());
        config_check_file(run, path.c_str(), safetensors_meta(st, "config"), arch, "", false, false);
        if (d.enc == ENC_NONE && !decoder_only) {
            const SafetensorsEntry* e = safetensors_find(st, "inner.puzzle_emb.weights");
            if (!e) fatal("%s: no inner.puzzle_emb.weights (a TRM model needs its puzzle table)", path.c_str());
            if (e->shape != std::vector<int64_t>{m->n_puzzle_ids, d.ndim})
                fatal("%s: puzzle table of shape %s, this run has %d identifiers x %d: identifiers depend on the data "
                      "files and num_aug, which must match the run that trained it", path.c_str(),
                      safetensors_shape_str(e->shape).c_str(), m->n_puzzle_ids, d.ndim);
        }
        std::set<std::string> used;
        for (const TensorInfo& t : table.tensors) {
            const bool skip = decoder_only && (t.group == GROUP_ENCODER || t.group == GROUP_PUZZLE);
            if (!skip) safetensors_get(st, t.name, t.shape, w.data() + t.offset);
            used.insert(t.name);
        }
        std::string unused;
        int n_unused = 0;
        for (const SafetensorsEntry& e : st.entries) {
            const bool expected = decoder_only && e.name.rfind("inner.puzzle_emb", 0) == 0;   // TRM -> ETRM: its table stays
            if (!used.count(e.name) && !expected && n_unused++ < 8) unused += (unused.empty() ? "" : ", ") + safetensors_printable(e.name);
        }
        if (n_unused)
            log_printf(&run->log, "warning: %s has %d tensor%s this model does not use: %s%s\n", path.c_str(), n_unused,
                       n_unused > 1 ? "s" : "", unused.c_str(), n_unused > 8 ? ", ..." : "");
    } else {
        if (decoder_only) fatal("load_decoder=%s: expected a .safetensors file (convert PyTorch checkpoints with dev/convert_trm_checkpoint.py)", path.c_str());
        int step;
        std::string config;
        Sections s = checkpoint_read(path.c_str(), &step, &config);
        config_check_file(run, path.c_str(), config, arch, "", false, true);
        params_read_weights(table, s, path.c_str(), &w);
    }
    params_check_finite(table, w, path.c_str(), "the weights");
    params_set(&m->p, w);
}

// What the first training step produced, for debug_state (gathered over the micro-batches).
typedef struct {
    std::vector<floatS> logits, q_halt, q_continue, eps, puzzle_grads;
    double loss, lm_loss, q_halt_loss, kl;
} DebugCapture;

// One safetensors file with the initial weights, the batch, the first ACT step's outputs and every gradient,
// for an independent implementation (e.g. PyTorch) to reproduce: same names as upstream; grads are those of
// loss / global_batch_size; out.loss is upstream's summed loss.
static void debug_state_write(Model* m, const TrainState& ts, const DebugCapture& cap, const std::string& path, const std::string& config) {
    const Dims& d = m->d;
    const int B = m->B_local, K = d.K;
    const std::vector<floatS> w = params_values(m->p);
    std::vector<floatS> grads(m->p.table.n_dense);
    copy_to_host(grads.data(), m->p.grads, grads.size() * sizeof(floatS));
    SafetensorsWriter st;
    for (const TensorInfo& t : m->p.table.tensors) {
        safetensors_add_f32(&st, t.name, t.shape, w.data() + t.offset);
        if (t.group == GROUP_DECODER || t.group == GROUP_ENCODER)
            safetensors_add_f32(&st, "grad." + t.name, t.shape, grads.data() + t.offset);
    }
    std::vector<int32_t> inputs, labels, ids, demo_in((size_t)B * K * d.S, 0), demo_out(demo_in.size(), 0);
    std::vector<uint8_t> mask((size_t)B * K, 0);
    for (int b = 0; b < B; b++) {
        const Sample& s = ts.carry[b];
        inputs.insert(inputs.end(), s.inputs.begin(), s.inputs.end());
        labels.insert(labels.end(), s.labels.begin(), s.labels.end());
        ids.push_back(s.puzzle_id);
        std::copy(s.demo_inputs.begin(), s.demo_inputs.end(), demo_in.begin() + (size_t)b * K * d.S);
        std::copy(s.demo_labels.begin(), s.demo_labels.end(), demo_out.begin() + (size_t)b * K * d.S);
        for (int k = 0; k < s.n_demos; k++) mask[(size_t)b * K + k] = 1;
    }
    safetensors_add_i32(&st, "batch.inputs", {B, d.S}, inputs.data());
    safetensors_add_i32(&st, "batch.labels", {B, d.S}, labels.data());
    safetensors_add_i32(&st, "batch.puzzle_identifiers", {B}, ids.data());
    if (d.enc != ENC_NONE) {
        safetensors_add_i32(&st, "batch.demo_inputs", {B, K, d.S}, demo_in.data());
        safetensors_add_i32(&st, "batch.demo_labels", {B, K, d.S}, demo_out.data());
        safetensors_add_bool(&st, "batch.demo_mask", {B, K}, mask.data());
    }
    if (d.enc == ENC_HYBRID_VARIATIONAL) safetensors_add_f32(&st, "batch.eps", {B, d.D}, cap.eps.data());
    if (d.enc == ENC_LPN_VARIATIONAL) safetensors_add_f32(&st, "batch.eps", {B, K, d.D}, cap.eps.data());
    if (d.enc == ENC_NONE) safetensors_add_f32(&st, "grad.inner.puzzle_emb.local_weights", {B, d.ndim}, cap.puzzle_grads.data());
    safetensors_add_f32(&st, "out.logits", {B, d.S, d.V}, cap.logits.data());
    safetensors_add_f32(&st, "out.q_halt_logits", {B}, cap.q_halt.data());
    safetensors_add_f32(&st, "out.q_continue_logits", {B}, cap.q_continue.data());
    const floatS scalars[4] = {(floatS)cap.loss, (floatS)cap.lm_loss, (floatS)cap.q_halt_loss, (floatS)cap.kl};
    safetensors_add_f32(&st, "out.loss", {}, &scalars[0]);
    safetensors_add_f32(&st, "out.lm_loss", {}, &scalars[1]);
    safetensors_add_f32(&st, "out.q_halt_loss", {}, &scalars[2]);
    safetensors_add_f32(&st, "out.kl", {}, &scalars[3]);
    safetensors_add_meta(&st, "format", "arc.cu debug state");
    safetensors_add_meta(&st, "config", config);
    safetensors_add_meta(&st, "notes", "grad.* = d(out.loss / global_batch_size)/d(param); out.loss = sum_b lm_loss_b + "
                         "0.5 * sum_b q_halt_loss_b + kl_weight * kl (upstream ACTLossHead); the step starts from an all-halted carry");
    safetensors_write(st, path);
}

// ----------------------------------------------------------------------------------------------------------
// 10. Training step and main loop.

static std::vector<EvalResult> evaluate(Model* m, DataLoader* dl, int step, Logger* log);

// Model FLOPs of one micro-batch's training step: the forward pass (all H_cycles x (L_cycles + 1) applications
// of the decoder, its heads, the encoder) and a backward pass of twice the forward FLOPs of what receives
// gradient (the last H cycle, the heads, the encoder). Recomputation is not counted (MFU in the usual sense).
static double micro_batch_flops(const Model& m, int B, int Nd) {
    const Dims& d = m.d;
    const Config& c = m.cfg;
    const double app = stack_flops(decoder_shape(m, B)), heads = 2.0 * B * d.T * d.D * d.V;
    double flops = app * c.H_cycles * (c.L_cycles + 1) + heads + 2 * (app * (c.L_cycles + 1) + heads);
    if (d.enc != ENC_NONE) {
        double enc = Nd > 0 ? stack_flops(grid_shape(m, Nd)) : 0;
        if (d.set_encoder) enc += stack_flops(set_shape(m, B));
        flops += 3 * enc;
    }
    return flops;
}

typedef struct {
    double flops;                                  // model FLOPs of the step (forward + backward)
    double loss, lm_loss, q_halt_loss, kl;         // per sample of the global batch (kl: mean KL of the latents)
    double count, accuracy, exact, q_halt_acc, steps;
    double cross_sample_var;                       // ETRM: mean over (p, d) of the context's variance over samples
} StepMetrics;

// debug_state: keeps a micro-batch's outputs at the grid positions and its latent noise, at (B, D) or
// (B, K, D) with zeros at padded demo slots.
static void debug_capture(Model* m, DebugCapture* cap, const Sample* s, int B, int latent_rows, const std::vector<floatX>& q) {
    const Dims& d = m->d;
    std::vector<floatX> logits((size_t)B * d.T * d.V_pad);
    copy_to_host(logits.data(), m->acts.logits, logits.size() * sizeof(floatX));
    for (int b = 0; b < B; b++) {
        for (int t = d.P; t < d.T; t++)
            for (int v = 0; v < d.V; v++) cap->logits.push_back(to_float(logits[((size_t)b * d.T + t) * d.V_pad + v]));
        cap->q_halt.push_back(to_float(q[(size_t)b * d.Q_pad]));
        cap->q_continue.push_back(to_float(q[(size_t)b * d.Q_pad + 1]));
    }
    if (!d.variational) return;
    std::vector<floatS> eps((size_t)latent_rows * d.D);
    copy_to_host(eps.data(), m->acts.enc.eps, eps.size() * sizeof(floatS));
    const int slots = d.enc == ENC_LPN_VARIATIONAL ? d.K : 1;
    int row = 0;
    for (int b = 0; b < B; b++)
        for (int k = 0; k < slots; k++) {
            const bool real = d.enc != ENC_LPN_VARIATIONAL || k < s[b].n_demos;
            for (int i = 0; i < d.D; i++) cap->eps.push_back(real ? eps[(size_t)row * d.D + i] : 0);
            row += real;
        }
}

// One optimizer step's forward and backward (gradients accumulated over the micro-batches and summed over
// the ranks); the update follows in model_update. Every rank draws the same global batch and keeps its
// interleaved slots (global slot rank + b * world). Metrics as upstream, over the global batch: ETRM counts
// every slot with labels, TRM the slots that halted. With `diagnostics` (a logged step) the encoder context is
// also copied back for encoder_cross_sample_var.
static StepMetrics train_step(Model* m, DataLoader* dl, TrainState* ts, DebugCapture* cap, bool diagnostics) {
    const Config& c = m->cfg;
    const Dims& d = m->d;
    Acts* a = &m->acts;
    const int step = ts->step + 1, B = m->mb, rank = dist().rank, W = dist().world;
    std::vector<Sample> global_batch, batch(m->B_local);
    loader_next_train_batch(dl, c.global_batch_size, &global_batch);
    for (int b = 0; b < m->B_local; b++) batch[b] = std::move(global_batch[rank + b * W]);
    carry_take_new_samples(&ts->carry, &batch, ts->halted);

    // KL = mean over the latents of the global batch: one per sample (hybrid), one per valid demo (lpn)
    int kl_rows = 0;
    for (const Sample& s : ts->carry) kl_rows += d.enc == ENC_LPN_VARIATIONAL ? s.n_demos : 1;
    dist_sum_host(&kl_rows, 1);
    const float kl_weight = c.kl_weight * (c.kl_anneal_steps > 0 ? std::min(1.0f, (float)step / c.kl_anneal_steps) : 1.0f);
    const float dkl = d.variational ? kl_weight / ((float)c.global_batch_size * std::max(1, kl_rows)) : 0.0f;

    StepMetrics r = StepMetrics();
    double kl_sum = 0;
    std::vector<floatS> lm(B), ql(B), kl((size_t)B * std::max(d.K, 1));
    std::vector<floatX> context;
    std::vector<double> inner_shift;
    std::vector<int> n_valid(B), n_correct(B), steps(B);
    std::vector<floatX> q((size_t)B * d.Q_pad);
    std::vector<uint8_t> halted(B);
    const size_t ctx_size = (size_t)d.P * d.D;
    diagnostics = diagnostics && d.enc != ENC_NONE;
    std::vector<double> ctx_sum(diagnostics ? ctx_size : 0), ctx_sum_sq(ctx_sum.size());
    const uint64_t halt_seed = hash_u64((uint64_t)c.seed, TAG_HALT, (uint64_t)step);
    for (int b0 = 0; b0 < m->B_local; b0 += B) {
        floatX* z_H = m->z_H + (size_t)b0 * d.T * d.D;
        floatX* z_L = m->z_L + (size_t)b0 * d.T * d.D;
        const int slot0 = rank + b0 * W;                                   // global slot of local slot b0
        const int Nd = upload_micro_batch(m, &ts->carry[b0], B, slot0, W);
        const int latent_rows = d.enc == ENC_LPN_VARIATIONAL ? Nd : B;
        r.flops += micro_batch_flops(*m, B, Nd);
        latent_noise(m, latent_rows, true, step);
        act_reset(z_H, z_L, m->w.H_init, m->w.L_init, m->steps + b0, m->halted + b0, B, d.T, d.D, Stream());
        if (d.enc != ENC_NONE) encoder_forward(m, m->w, B, Nd, Stream());
        if (c.latent_inner_steps > 0) {
            latent_inner_shift(m, m->w, &ts->carry[b0], B, &inner_shift, Stream());
            latent_shift_apply(m, m->w, inner_shift, B, Stream());
            upload_sample_queries(m, &ts->carry[b0], B);
        }
        input_embedding_forward(m, m->w, B, a->enc.context, Stream());
        decoder_forward(m, m->w, z_H, z_L, B, true, Stream());
        loss_forward(m, B, Stream());
        act_halt(m->halted + b0, m->steps + b0, a->q, d.Q_pad, B, c.halt_max_steps, c.halt_exploration_prob, true, halt_seed, slot0, W, Stream());

        copy_to_host(lm.data(), a->lm_loss, B * sizeof(floatS));
        copy_to_host(ql.data(), a->q_loss, B * sizeof(floatS));
        copy_to_host(n_valid.data(), a->n_valid, B * sizeof(int));
        copy_to_host(n_correct.data(), a->n_correct, B * sizeof(int));
        copy_to_host(q.data(), a->q, q.size() * sizeof(floatX));
        copy_to_host(steps.data(), m->steps + b0, B * sizeof(int));
        copy_to_host(halted.data(), m->halted + b0, B);
        std::copy(halted.begin(), halted.end(), ts->halted.begin() + b0);
        if (d.variational) {
            copy_to_host(kl.data(), a->enc.kl, latent_rows * sizeof(floatS));
            for (int i = 0; i < latent_rows; i++) kl_sum += kl[i];
        }
        for (int b = 0; b < B; b++) {
            r.lm_loss += lm[b];
            r.q_halt_loss += ql[b];
            const bool valid = n_valid[b] > 0 && (d.enc != ENC_NONE || halted[b]);
            const bool exact = n_correct[b] == n_valid[b];
            if (d.enc != ENC_NONE) r.steps += steps[b];           // ETRM averages every slot's steps (upstream)
            if (!valid) continue;
            if (d.enc == ENC_NONE) r.steps += steps[b];
            r.count++;
            r.accuracy += (double)n_correct[b] / n_valid[b];
            r.exact += exact;
            r.q_halt_acc += (to_float(q[(size_t)b * d.Q_pad]) >= 0) == exact;
        }
        if (cap) debug_capture(m, cap, &ts->carry[b0], B, latent_rows, q);
        decoder_backward(m, m->w, m->g, z_H, B, a->dloss_lm, a->dloss_q, Stream());
        // the decoder's gradients are complete after the last micro-batch's decoder backward: their sum over
        // the ranks overlaps the encoder's backward (which writes only the encoder's gradients)
        if (b0 + B == m->B_local) params_grad_sum_start(&m->p, GROUP_DECODER, GROUP_DECODER + 1, Stream());
        if (d.enc == ENC_NONE) {
            copy_on_device(m->step_puzzle_ids + b0, a->puzzle_ids, B * sizeof(int));
            copy_on_device(m->step_puzzle_grads + (size_t)b0 * d.ndim, a->dprefix, (size_t)B * d.ndim * sizeof(floatX));
        } else {
            if (diagnostics) {
                context.resize((size_t)B * ctx_size);
                copy_to_host(context.data(), a->enc.context, context.size() * sizeof(floatX));
                for (int b = 0; b < B; b++)
                    for (size_t i = 0; i < ctx_size; i++) {
                        const double x = to_float(context[(size_t)b * ctx_size + i]);
                        ctx_sum[i] += x;
                        ctx_sum_sq[i] += x * x;
                    }
            }
            encoder_backward(m, m->w, m->g, B, Nd, dkl, Stream());
        }
    }
    // the gradients and the metrics of the global batch (the encoder's sum queued behind the decoder's on the
    // communication stream: one communicator's collectives stay in one order on one stream)
    params_grad_sum_start(&m->p, GROUP_ENCODER, GROUP_ENCODER + 1, Stream());
    dist_sum_wait(Stream());
    double sums[9] = {r.lm_loss, r.q_halt_loss, kl_sum, r.count, r.accuracy, r.exact, r.q_halt_acc, r.steps, 0};
    dist_sum_host(sums, 9);
    r.lm_loss = sums[0]; r.q_halt_loss = sums[1]; kl_sum = sums[2]; r.count = sums[3]; r.accuracy = sums[4];
    r.exact = sums[5]; r.q_halt_acc = sums[6]; r.steps = sums[7];
    if (d.enc == ENC_NONE) {                         // every rank's puzzle rows, in global slot order
        std::vector<int> ids(m->B_local);
        for (int b = 0; b < m->B_local; b++) ids[b] = ts->carry[b].puzzle_id;
        std::vector<uint8_t> global_ids = dist_slot_order(dist_allgather_host(ids.data(), ids.size() * sizeof(int)),
                                                          sizeof(int), m->B_local);
        copy_to_device(m->puzzle_ids_global, global_ids.data(), global_ids.size());
        dist_allgather(m->puzzle_grads_gathered, m->step_puzzle_grads, (size_t)m->B_local * d.ndim, Stream());
        gather_rows(m->puzzle_grads_global, m->puzzle_grads_gathered, m->slot_order, m->B_local * W, d.ndim, Stream());
    }
    const double G = c.global_batch_size;
    r.kl = d.variational ? kl_sum / std::max(1, kl_rows) : 0;
    r.loss = (r.lm_loss + 0.5 * r.q_halt_loss) / G + kl_weight * r.kl / G;
    r.lm_loss /= G;
    r.q_halt_loss /= G;
    if (cap) {
        cap->lm_loss = r.lm_loss * G;
        cap->q_halt_loss = r.q_halt_loss * G;
        cap->kl = r.kl;
        cap->loss = r.loss * G;
        if (d.enc == ENC_NONE) {
            std::vector<floatX> g((size_t)m->B_local * d.ndim);
            copy_to_host(g.data(), m->step_puzzle_grads, g.size() * sizeof(floatX));
            for (floatX v : g) cap->puzzle_grads.push_back(to_float(v));
        }
    }
    const double count = std::max(1.0, r.count);
    r.accuracy /= count; r.exact /= count; r.q_halt_acc /= count; r.steps /= count;
    if (diagnostics) {                              // upstream encoder_cross_sample_var: the variance over samples
        dist_sum_host(ctx_sum.data(), (int)ctx_size);
        dist_sum_host(ctx_sum_sq.data(), (int)ctx_size);
        double var = 0;
        for (size_t i = 0; i < ctx_size; i++) var += ctx_sum_sq[i] - ctx_sum[i] * ctx_sum[i] / G;
        r.cross_sample_var = var / (G * ctx_size);
    }
    return r;
}

static std::string set_label(const std::string& path) {
    std::string base = path.substr(path.find_last_of('/') + 1);
    return ends_with(base, ".bin") ? base.substr(0, base.size() - 4) : base;
}

static void write_predictions(const std::string& path, const DataLoader& dl, int set, int step,
                              const std::map<std::pair<int, int>, std::vector<Candidate>>& votes) {
    write_file_atomic(path, [&](FILE* f, const char*) {
        fprintf(f, "{\"step\": %d, \"set\": %s, \"tasks\": {", step, safetensors_json_string(dl.test_names[set]).c_str());
        bool first_task = true;
        for (int t : dl.test_tasks[set]) {
            const ArcTask& task = loader_task(dl, t);
            fprintf(f, "%s\n  %s: [", first_task ? "" : ",", safetensors_json_string(task.name).c_str());
            first_task = false;
            for (int p = task.n_train; p < task.n_train + task.n_test; p++) {
                fprintf(f, p > task.n_train ? ", [" : "[");
                auto it = votes.find({t, p});
                const int n = it == votes.end() ? 0 : std::min((int)it->second.size(), 10);
                for (int i = 0; i < n; i++) {
                    const Candidate& c = it->second[i];
                    fprintf(f, "%s{\"votes\": %d, \"mean_q\": %.6f, \"grid\": ", i ? ", " : "", c.votes, c.q_sum / c.votes);
                    json_grid(f, c.cells.data(), c.rows, c.cols);
                    fprintf(f, "}");
                }
                fprintf(f, "]");
            }
            fprintf(f, "]");
        }
        fprintf(f, "\n}}\n");
    });
}

// Evaluates every set of data_paths_test with the evaluation weights (the EMA when ema=1).
static std::vector<EvalResult> evaluate(Model* m, DataLoader* dl, int step, Logger* log) {
    const ModelTensors<floatX>& w = m->w_ema;
    std::vector<EvalResult> results;
    for (int set = 0; set < (int)dl->test_names.size(); set++) {
        const double t0 = wall_time();
        std::map<std::pair<int, int>, std::vector<Candidate>> votes;
        EvalResult r = evaluate_set(m, dl, set, w, &votes);
        const std::string label = set_label(r.set) + (m->cfg.eval_shuffle_demos ? "_shuffled_demos" : "");
        char opt[96] = "";
        if (m->cfg.latent_opt_steps > 0)
            snprintf(opt, sizeof opt, " demo_loss_encoder=%.4f demo_loss_optimised=%.4f", r.opt_loss_before, r.opt_loss_after);
        log_printf(log, "eval step=%d set=%s tasks=%d samples=%d lm_loss=%.4f token_acc=%.4f exact_acc=%.4f q_halt_acc=%.4f "
                   "pass@1=%.4f pass@2=%.4f pass@5=%.4f%s seconds=%.1f\n", step, label.c_str(), r.n_tasks, r.n_samples,
                   r.lm_loss, r.token_acc, r.exact_acc, r.q_halt_acc, r.pass_at[0], r.pass_at[1], r.pass_at[2], opt,
                   wall_time() - t0);
        char name[128];
        snprintf(name, sizeof name, "/predictions_step%08d_%s.json", step, label.c_str());
        if (dist().rank == 0) write_predictions(m->cfg.checkpoint_path + name, *dl, set, step, votes);
        results.push_back(r);
    }
    return results;
}

#ifndef TESTING
static int train_main(int argc, char** argv) {
    Config cfg = config_defaults();
    std::vector<ArgSpec> specs = config_specs(&cfg);
    Run run;
    if (!run_begin(&run, &argc, &argv, specs, "key=value ...   (e.g. data_paths=data/synth/train.bin encoder_type=standard)",
                   [&]() {
                       config_validate(cfg);
                       if (cfg.global_batch_size % dist().world)
                           fatal("global_batch_size=%d must be a multiple of the number of processes (%d)",
                                 cfg.global_batch_size, dist().world);
                   }, cfg.checkpoint_path))
        return 0;
    const int rank = run.rank, W = run.world;
    const std::string& config_text = run.config_text;
    Logger& log = run.log;

    DataLoader dl;
    loader_init(&dl, split_commas(cfg.data_paths), split_commas(cfg.data_paths_test), cfg.encoder_type != "none",
                cfg.canvas, cfg.num_aug, cfg.max_demos, cfg.max_train_groups, cfg.max_eval_groups, (uint64_t)cfg.seed);
    Model model;
    Model* m = &model;
    model_build(m, cfg, dl.canvas, dl.n_puzzle_ids, cfg.global_batch_size / W);
    model_init_weights(m, (uint64_t)cfg.seed);
    if (!cfg.load_checkpoint.empty()) load_weights(m, &run, cfg.load_checkpoint, false);
    if (!cfg.load_decoder.empty()) load_weights(m, &run, cfg.load_decoder, true);
    TrainState ts;
    ts.step = 0;
    ts.carry.assign(m->B_local, loader_blank_sample(dl));
    ts.halted.assign(m->B_local, 1);
    if (cfg.resume) {
        if (rank == 0) checkpoint_dir_clean(cfg.checkpoint_path);     // (the other ranks read no .tmp file)
        Checkpoint ck;                           // the newest that reads whole: a damaged one is skipped
        const std::string path = run_resume_newest(&run, checkpoint_paths_newest_first(cfg.checkpoint_path, "ckpt"), &ck,
                                                   true, cfg.checkpoint_path);
        if (path.empty()) {
            if (cfg.eval_only) fatal("resume=1: no checkpoint in %s", cfg.checkpoint_path.c_str());
            log_printf(&log, "resume=1: no checkpoint in %s yet, starting from step 0\n", cfg.checkpoint_path.c_str());
        } else {
            config_check_file(&run, path.c_str(), ck.config, ARCH_KEYS, RUN_CONTROL_KEYS, true, true);
            checkpoint_load(m, &dl, &ts, path.c_str(), ck);
            log_printf(&log, "resumed from %s at step %d\n", path.c_str(), ts.step);
        }
    }

    // upstream: total_steps = epochs * groups / batch (ETRM), epochs * groups * mean examples / batch (TRM)
    const double examples_per_epoch = (double)dl.train_groups.size() * (dl.etrm ? 1.0 : dl.mean_group_examples);
    const double steps_per_epoch = examples_per_epoch / cfg.global_batch_size;
    int total_steps = (int)std::min(2e9, cfg.epochs * steps_per_epoch);
    if (cfg.max_steps > 0) total_steps = std::min(total_steps, cfg.max_steps);
    if (!cfg.debug_state.empty() && total_steps < 1) total_steps = 1;
    const int eval_every = cfg.eval_interval_steps > 0 ? cfg.eval_interval_steps
                         : cfg.eval_interval > 0 ? std::max(1, (int)lround(cfg.eval_interval * steps_per_epoch)) : 0;
    const Dims& d = m->d;
    log_printf(&log, "arc.cu train_etrm (%s backend on %s, %s, %d process%s)  model=%s  D=%d heads=%d layers=%d H_cycles=%d L_cycles=%d P=%d canvas=%d\n",
               BACKEND_NAME, run.device_name.c_str(), PRECISION_NAME, W, W > 1 ? "es" : "", cfg.encoder_type == "none" ? "TRM (puzzle embedding)" : ("ETRM " + cfg.encoder_type).c_str(),
               d.D, d.NH, cfg.L_layers, cfg.H_cycles, cfg.L_cycles, d.P, d.canvas);
    const size_t n_decoder = group_numel(m->p.table, GROUP_DECODER), n_encoder = group_numel(m->p.table, GROUP_ENCODER);
    log_printf(&log, "parameters: %zu (decoder %zu, encoder %zu)  puzzle identifiers: %d\n",
               n_decoder + n_encoder, n_decoder, n_encoder, m->n_puzzle_ids);
    log_printf(&log, "memory: %.2f GiB allocated (peak; activations %.2f GiB for micro-batch %d of %d per step); "
               "%.2f GiB in use on the device\n", device_bytes_allocated() / 1073741824.0, m->acts_bytes / 1073741824.0,
               m->mb, m->B_local, device_memory_in_use() / 1073741824.0);
    log_printf(&log, "data: %zu training tasks, %zu evaluation sets  steps: %d (%.1f per epoch)  eval every %d steps\n",
               dl.train_groups.size(), dl.test_names.size(), total_steps, steps_per_epoch, eval_every);
    if (cfg.eval_only) {
        evaluate(m, &dl, ts.step, &log);
        run_end(&run);
        return 0;
    }

    const int first_step = ts.step + 1;
    RunTiming timing = timing_begin(first_step);
    if (first_step > total_steps) log_printf(&log, "nothing to do: the run is at step %d of %d\n", ts.step, total_steps);
    for (int step = first_step; step <= total_steps; step++) {
        const double t0 = wall_time();
        DebugCapture cap;
        const bool capture = step == 1 && !cfg.debug_state.empty();
        const bool log_step = step % cfg.log_every == 0 || step == total_steps;
        StepMetrics r = train_step(m, &dl, &ts, capture ? &cap : nullptr, log_step);
        if (!std::isfinite(r.loss))      // (summed over the ranks: every rank stops here, before the update)
            fatal("step %d: the loss is %g: the run diverged (try a lower lr or grad_clip_norm=1); the checkpoints written "
                  "so far are kept", step, r.loss);
        if (capture && rank == 0) {
            debug_state_write(m, ts, cap, cfg.debug_state, config_text);
            log_printf(&log, "debug state written to %s\n", cfg.debug_state.c_str());
        }
        UpdateStats u = model_update(m, step, total_steps, Stream());
        device_synchronize();
        ts.step = step;
        const double seconds = wall_time() - t0;
        timing_step(&timing, step, seconds, r.flops);
        if (step == first_step)
            log_printf(&log, "memory: %.2f GiB in use on the device after the first step\n", device_memory_in_use() / 1073741824.0);
        if (log_step)
            log_printf(&log, "train step=%d loss=%.6f lm_loss=%.6f q_halt_loss=%.6f kl=%.6f token_acc=%.4f exact_acc=%.4f "
                       "q_halt_acc=%.4f act_steps=%.2f lr=%.3e grad_norm_enc=%.4f grad_norm_dec=%.4f grad_norm=%.4f "
                       "encoder_cross_sample_var=%.4f ms=%.1f samples_per_s=%.1f%s\n",
                       step, r.loss, r.lm_loss, r.q_halt_loss, r.kl, r.accuracy, r.exact, r.q_halt_acc, r.steps, u.lr,
                       u.enc_norm, u.dec_norm, u.total_norm, r.cross_sample_var, 1000 * seconds,
                       cfg.global_batch_size / seconds, mfu_field(run, r.flops, seconds).c_str());
        log_progress(&run, timing, step, total_steps);
        const bool eval_now = (eval_every && step % eval_every == 0) || step == total_steps;
        if (eval_now && !dl.test_names.empty()) evaluate(m, &dl, step, &log);
        if (eval_now || (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0)) checkpoint_save(m, dl, ts, config_text, &log);
    }
    log_timing(&run, timing, cfg.global_batch_size);    // samples/s counts sample-ACT-steps, as upstream
    run_end(&run);
    return 0;
}
int main(int argc, char** argv) { return run_main(train_main, argc, argv); }
#endif
