/*
train_jepa.cu — the object-centric JEPA of seed reports 002/003 on ARC grids: training, diagnostics, checkpoints.

A grid is read as a set of objects (common/objects.h: connected single-colour components, 23 features each, bounding-box
adjacency). The encoder maps every object to a D-dimensional vector: an MLP on the features, then relational attention
blocks in which an object attends only to itself and to the objects whose bounding boxes touch it, then a vector
quantiser (VQ) that snaps each object to the nearest of K codebook vectors, the "discrete object codes". A grid's
representation is the mean of its objects; a sample is a context of k grids and a target grid, and the k context
representations are aggregated into one. Both sides go through a projection head; the context projection must pick
out its own target among the other targets of the batch and a queue of older ones (InfoNCE), while a slowly moving
copy of the network (the EMA target branch) encodes the targets. Auxiliary losses ask for invariance to colour
permutation, small translations and flips, and for the context's pairwise object distances to predict the target's.
SIGReg (LeJEPA) pushes the projections towards an isotropic Gaussian; with `objective=sigreg` it replaces InfoNCE
(L-JEPA: MSE to the target projection + SIGReg).

This file reads like the method, top to bottom:
  1. configuration            5. losses and backward          9. diagnostics
  2. parameters               6. codebook maintenance          10. checkpoints, exports
  3. activations              7. update                        11. main
  4. forward                  8. data
Reference: jepa_reference.md (arc-jepa-rl). Where the reference has known defects the fix is the default and the
reference behaviour is a flag (DESIGN.md "JEPA"): vq_loss_in_objective, vq_count_padded, refresh_mode=fraction,
sigreg_mode=reference, proj_final_relu, vq_train_in_eval.

Compiled twice (common/device.h): train_jepa_cpu, the CPU reference, and train_jepa (CUDA). Every rank of an MPI run
draws the same global micro-batch and keeps the samples rank, rank + W, ...; gradients, codebook statistics and
metrics are summed over the ranks, so every rank takes the same step.
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
#include <string>
#include <vector>

// defines: fatal, fopen_check, fread_check, fwrite_check, write_file_atomic, file_exists
#include "common/utils.h"
// defines: floatX, floatS, Stream, device_malloc, device_free, copy_to_device, copy_to_host, device_memset
#include "common/device.h"
// defines: hash_u64, hash_uniform, hash_below, Rng, rng_make, rng_uniform
#include "common/rand.h"
// defines: ArgSpec, args_parse, args_dump
#include "common/args.h"
// defines: Logger, logger_open, log_printf, wall_time
#include "common/logger.h"
// defines: ArcTaskFile, arc_tasks_load
#include "common/arc_tasks.h"
// defines: OBJ_MAX_OBJECTS, OBJ_FEATURES, grid_objects
#include "common/objects.h"
// defines: ContextMode, JepaExample, jepa_examples, JepaAugment, ObjectBatch, jepa_fill, perturb_color, ...
#include "common/jepa_data.h"
// defines: EmbeddingMetrics, embedding_metrics, codebook_perplexity
#include "common/embedding_metrics.h"
// defines: SafetensorsWriter, safetensors_add_f32, safetensors_add_i32, safetensors_write
#include "common/safetensors.h"
// defines: checkpoint_write, checkpoint_read, section_get, section_add, SectionList, Sections
#include "common/checkpoint.h"
// defines: Dist, dist_init, dist_init_device, dist_sum, dist_allgather, dist_sum_host, dist_allgather_host, ...
#include "common/distributed.h"
// defines: ParamTable, ParamGroup, TensorList, tensor_bind, Params, params_alloc, params_set, params_values, ...
#include "common/parameters.h"
// defines: Schedule, lr_schedule, clip_scale, AdamConfig, params_grad_norm_squared, params_update, ...
#include "common/optimizer.h"
// defines: Arena, arena_take, arena_alloc
#include "common/arena.h"
// defines: Run, run_begin, run_end, RunTiming, timing_step, mfu_field, log_progress, log_timing
#include "common/run.h"
// defines: matmul_forward, matmul_backward
#include "kernels/matmul.cuh"
// defines: layernorm_forward, layernorm_backward
#include "kernels/layernorm.cuh"
// defines: ActivationKind, activation_forward, activation_backward
#include "kernels/activation.cuh"
// defines: dropout_add
#include "kernels/dropout.cuh"
// defines: object_attention_forward, object_attention_backward
#include "kernels/object_attention.cuh"
// defines: vq_nearest, vq_quantize, vq_code_stats, vq_ema_update, vq_refresh_codes, vq_commitment_forward, ...
#include "kernels/vq.cuh"
// defines: vq_gumbel_forward, vq_gumbel_backward, vq_usage_entropy_loss, gumbel_tau
#include "kernels/vq_gumbel.cuh"
// defines: add_forward
#include "kernels/add.cuh"
// defines: masked_mean_forward, masked_mean_backward
#include "kernels/masked_mean.cuh"
// defines: gather_rows, scatter_rows
#include "kernels/rows.cuh"
// defines: context_attention_forward, context_attention_backward
#include "kernels/context_attention.cuh"
// defines: gru_cell_forward, gru_cell_backward
#include "kernels/gru.cuh"
// defines: l2norm_forward, l2norm_backward
#include "kernels/l2norm.cuh"
// defines: infonce_forward, infonce_backward
#include "kernels/infonce.cuh"
// defines: mse_forward, mse_backward
#include "kernels/mse.cuh"
// defines: relational_loss_forward, relational_loss_backward
#include "kernels/relational_loss.cuh"
// defines: SigregVariant, sigreg_directions_ref, sigreg_forward, sigreg_slice_value, sigreg_backward
#include "kernels/sigreg.cuh"
// defines: convert_to_floatS, convert_to_floatX
#include "kernels/convert.cuh"

// ----------------------------------------------------------------------------------------------------------
// 1. Configuration: the reference's YAML names where it has them (object_encoder.*, loss.*, training.*), flattened.
// Defaults are the `a6000` report configuration with DESIGN.md's fixes; README lists the other report configs
// (gentle, optimized, no_vq) as key=value sets.

typedef struct {
    // data
    std::string data_path, val_path;   // task files (data/synth.py, data/arc.py); val_path empty: split val_fraction
    std::string context_mode;          // repeat (input k times, the reference) | frames (k distinct frames)
    int context_window;                // k
    float val_fraction;
    int max_examples;                  // use the first N training examples (0: all)
    float aug_palette, aug_mask_ratio, aug_translate, aug_dihedral, aug_object_dropout;
    int aug_translate_radius, aug_min_grid_for_translate, aug_per_grid;
    // encoder
    int hidden_dim, relational_layers, relational_heads;
    float relational_dropout;
    int vq_enabled, num_embeddings;
    std::string vq_mode;               // hard | gumbel
    float commitment_cost, ema_decay, vq_epsilon;
    int vq_loss_in_objective, vq_count_padded, vq_train_in_eval;
    std::string refresh_mode;          // count | fraction | off
    int refresh_interval;
    float refresh_threshold;           // count: EMA count below which a code is dead; fraction: share of the mass
    float gumbel_tau_init, gumbel_tau_min, gumbel_entropy_weight;
    int gumbel_anneal_steps;
    // context aggregation, projection, target branch
    std::string context_agg;           // mean | last | attention | gru
    int projection_dim, proj_final_relu, use_target_encoder;
    float target_ema_decay;
    // losses
    std::string objective;             // infonce | sigreg
    int queue_size;
    float temperature, temperature_min, temperature_max;
    float inv_color, inv_translation, inv_translation_delta, inv_symmetry;
    float rel_weight, rel_self_weight;
    float sigreg_weight;
    int sigreg_slices;
    std::string sigreg_mode;           // lejepa | reference
    // optimisation
    int batch_size, grad_accum_steps, epochs, max_steps, warmup_steps;
    float lr, weight_decay, beta1, beta2, adam_eps, max_norm, min_lr_scale;
    int early_stop_patience;
    float early_stop_min_delta;
    // run
    int seed, log_every, diag_every, diag_window, checkpoint_interval, eval_every_epochs;
    std::string checkpoint_path, resume, export_codes, codes_data;
} Config;

static Config config_defaults() {
    Config c;
    c.data_path = "data/synth/train.bin"; c.val_path = ""; c.context_mode = "repeat"; c.context_window = 3;
    c.val_fraction = 0.02f; c.max_examples = 0;
    c.aug_palette = 0; c.aug_mask_ratio = 0; c.aug_translate = 0; c.aug_dihedral = 0; c.aug_object_dropout = 0;
    c.aug_translate_radius = 1; c.aug_min_grid_for_translate = 8; c.aug_per_grid = 0;
    c.hidden_dim = 384; c.relational_layers = 3; c.relational_heads = 8; c.relational_dropout = 0.1f;
    c.vq_enabled = 1; c.num_embeddings = 768; c.vq_mode = "hard";
    c.commitment_cost = 0.3f; c.ema_decay = 0.99f; c.vq_epsilon = 1e-5f;
    c.vq_loss_in_objective = 1; c.vq_count_padded = 0; c.vq_train_in_eval = 0;
    c.refresh_mode = "count"; c.refresh_interval = 500; c.refresh_threshold = 1.0f;
    c.gumbel_tau_init = 1.0f; c.gumbel_tau_min = 0.1f; c.gumbel_entropy_weight = 0.01f; c.gumbel_anneal_steps = 10000;
    c.context_agg = "mean"; c.projection_dim = 256; c.proj_final_relu = 0; c.use_target_encoder = 1;
    c.target_ema_decay = 0.99f;
    c.objective = "infonce"; c.queue_size = 8192;
    c.temperature = 0.07f; c.temperature_min = 0.07f; c.temperature_max = 0.15f;
    c.inv_color = 0.1f; c.inv_translation = 0.05f; c.inv_translation_delta = 0.1f; c.inv_symmetry = 0.05f;
    c.rel_weight = 0.05f; c.rel_self_weight = 0.025f;
    c.sigreg_weight = 0.1f; c.sigreg_slices = 1024; c.sigreg_mode = "lejepa";
    c.batch_size = 1024; c.grad_accum_steps = 2; c.epochs = 30; c.max_steps = 0; c.warmup_steps = 1000;
    c.lr = 5e-5f; c.weight_decay = 1e-6f; c.beta1 = 0.9f; c.beta2 = 0.999f; c.adam_eps = 1e-8f;
    c.max_norm = 0.5f; c.min_lr_scale = 0.1f;
    c.early_stop_patience = 15; c.early_stop_min_delta = 0.01f;
    c.seed = 123; c.log_every = 10; c.diag_every = 200; c.diag_window = 4096; c.checkpoint_interval = 5;
    c.eval_every_epochs = 1;
    c.checkpoint_path = ""; c.resume = ""; c.export_codes = ""; c.codes_data = "";
    return c;
}

static std::vector<ArgSpec> config_specs(Config* c) {
    return {
        {"data_path", ARG_STRING, &c->data_path, "training task file (data/synth.py or data/arc.py output)", nullptr},
        {"val_path", ARG_STRING, &c->val_path, "validation task file; empty: hold out val_fraction of the examples", nullptr},
        {"context_mode", ARG_STRING, &c->context_mode, "repeat: the input grid k times (reference); frames: k consecutive frames of a sequence task", "repeat|frames"},
        {"context_window", ARG_INT, &c->context_window, "k, grids in a context", nullptr},
        {"val_fraction", ARG_FLOAT, &c->val_fraction, "share of the examples held out for validation when val_path is empty", nullptr},
        {"max_examples", ARG_INT, &c->max_examples, "train on the first N examples only (0: all)", nullptr},
        {"aug_palette", ARG_FLOAT, &c->aug_palette, "probability of a permutation of the non-background colours", nullptr},
        {"aug_mask_ratio", ARG_FLOAT, &c->aug_mask_ratio, "probability that a non-background cell becomes background", nullptr},
        {"aug_translate", ARG_FLOAT, &c->aug_translate, "probability of a translation by up to aug_translate_radius", nullptr},
        {"aug_translate_radius", ARG_INT, &c->aug_translate_radius, "largest translation in cells", nullptr},
        {"aug_min_grid_for_translate", ARG_INT, &c->aug_min_grid_for_translate, "translate only grids whose smaller side is at least this", nullptr},
        {"aug_dihedral", ARG_FLOAT, &c->aug_dihedral, "probability of a random D4 transform", nullptr},
        {"aug_object_dropout", ARG_FLOAT, &c->aug_object_dropout, "probability of dropping each object", nullptr},
        {"aug_per_grid", ARG_BOOL, &c->aug_per_grid, "1: independent draws per grid (reference); 0: one draw per sample", nullptr},
        {"hidden_dim", ARG_INT, &c->hidden_dim, "D, object embedding width", nullptr},
        {"relational_layers", ARG_INT, &c->relational_layers, "relational attention blocks", nullptr},
        {"relational_heads", ARG_INT, &c->relational_heads, "attention heads (hidden_dim must divide)", nullptr},
        {"relational_dropout", ARG_FLOAT, &c->relational_dropout, "dropout in the relational blocks (attention weights and both residual branches)", nullptr},
        {"vq_enabled", ARG_BOOL, &c->vq_enabled, "quantise the object embeddings with a codebook", nullptr},
        {"num_embeddings", ARG_INT, &c->num_embeddings, "K, codebook size", nullptr},
        {"vq_mode", ARG_STRING, &c->vq_mode, "hard: nearest code, EMA codebook; gumbel: Gumbel-softmax, codebook trained by gradient", "hard|gumbel"},
        {"commitment_cost", ARG_FLOAT, &c->commitment_cost, "beta of the commitment loss beta * mse(x, sg(q))", nullptr},
        {"ema_decay", ARG_FLOAT, &c->ema_decay, "codebook EMA decay gamma", nullptr},
        {"vq_epsilon", ARG_FLOAT, &c->vq_epsilon, "Laplace smoothing epsilon of the codebook counts", nullptr},
        {"vq_loss_in_objective", ARG_BOOL, &c->vq_loss_in_objective, "add the commitment loss to the objective (reference: 0, computed and never added)", nullptr},
        {"vq_count_padded", ARG_BOOL, &c->vq_count_padded, "padded object slots enter the codebook statistics (reference: 1)", nullptr},
        {"vq_train_in_eval", ARG_BOOL, &c->vq_train_in_eval, "validation also updates the codebook and its refresh counter (reference: 1)", nullptr},
        {"refresh_mode", ARG_STRING, &c->refresh_mode, "dead codes: count (EMA count below refresh_threshold, re-seeded from random batch vectors); fraction (reference: usage share <= refresh_threshold, re-seeded from the farthest inputs); off", "count|fraction|off"},
        {"refresh_interval", ARG_INT, &c->refresh_interval, "check for dead codes every this many VQ calls", nullptr},
        {"refresh_threshold", ARG_FLOAT, &c->refresh_threshold, "dead-code threshold (see refresh_mode)", nullptr},
        {"gumbel_tau_init", ARG_FLOAT, &c->gumbel_tau_init, "Gumbel-softmax temperature at step 0", nullptr},
        {"gumbel_tau_min", ARG_FLOAT, &c->gumbel_tau_min, "Gumbel-softmax temperature after the anneal", nullptr},
        {"gumbel_anneal_steps", ARG_INT, &c->gumbel_anneal_steps, "steps of the linear temperature anneal", nullptr},
        {"gumbel_entropy_weight", ARG_FLOAT, &c->gumbel_entropy_weight, "weight of the (gradient-free) usage-entropy term", nullptr},
        {"context_agg", ARG_STRING, &c->context_agg, "aggregation of the k context grids", "mean|last|attention|gru"},
        {"projection_dim", ARG_INT, &c->projection_dim, "P, projection head width", nullptr},
        {"proj_final_relu", ARG_BOOL, &c->proj_final_relu, "ReLU after the head's last linear (reference: 1; outputs then lie in the positive orthant)", nullptr},
        {"use_target_encoder", ARG_BOOL, &c->use_target_encoder, "encode targets with the EMA target branch", nullptr},
        {"target_ema_decay", ARG_FLOAT, &c->target_ema_decay, "target branch EMA decay", nullptr},
        {"objective", ARG_STRING, &c->objective, "infonce (+ invariance, relational, SIGReg) or sigreg (L-JEPA: MSE to the target projection + SIGReg)", "infonce|sigreg"},
        {"queue_size", ARG_INT, &c->queue_size, "InfoNCE FIFO of past target projections", nullptr},
        {"temperature", ARG_FLOAT, &c->temperature, "initial InfoNCE temperature (log_tau is learned)", nullptr},
        {"temperature_min", ARG_FLOAT, &c->temperature_min, "temperature clamp, lower bound", nullptr},
        {"temperature_max", ARG_FLOAT, &c->temperature_max, "temperature clamp, upper bound", nullptr},
        {"inv_color", ARG_FLOAT, &c->inv_color, "weight of the colour-permutation invariance", nullptr},
        {"inv_translation", ARG_FLOAT, &c->inv_translation, "weight of the translation invariance", nullptr},
        {"inv_translation_delta", ARG_FLOAT, &c->inv_translation_delta, "largest per-object shift (normalised units)", nullptr},
        {"inv_symmetry", ARG_FLOAT, &c->inv_symmetry, "weight of the flip invariance", nullptr},
        {"rel_weight", ARG_FLOAT, &c->rel_weight, "relational loss: context mean vs target", nullptr},
        {"rel_self_weight", ARG_FLOAT, &c->rel_self_weight, "relational loss: spread of the context grids", nullptr},
        {"sigreg_weight", ARG_FLOAT, &c->sigreg_weight, "weight of SIGReg on the context projections", nullptr},
        {"sigreg_slices", ARG_INT, &c->sigreg_slices, "random 1-d slices per step", nullptr},
        {"sigreg_mode", ARG_STRING, &c->sigreg_mode, "lejepa (on the raw projections, as LeJEPA defines it) or reference (the repo's deprecated variant on the L2-normalised projections)", "lejepa|reference"},
        {"batch_size", ARG_INT, &c->batch_size, "samples per optimizer step, all ranks together", nullptr},
        {"grad_accum_steps", ARG_INT, &c->grad_accum_steps, "micro-batches per step (InfoNCE negatives come from one micro-batch)", nullptr},
        {"epochs", ARG_INT, &c->epochs, "passes over the training examples", nullptr},
        {"max_steps", ARG_INT, &c->max_steps, "stop after this many steps (0: epochs decide)", nullptr},
        {"warmup_steps", ARG_INT, &c->warmup_steps, "linear learning-rate warm-up", nullptr},
        {"lr", ARG_FLOAT, &c->lr, "peak learning rate", nullptr},
        {"weight_decay", ARG_FLOAT, &c->weight_decay, "decoupled weight decay", nullptr},
        {"beta1", ARG_FLOAT, &c->beta1, "Adam beta1", nullptr},
        {"beta2", ARG_FLOAT, &c->beta2, "Adam beta2", nullptr},
        {"adam_eps", ARG_FLOAT, &c->adam_eps, "Adam epsilon", nullptr},
        {"max_norm", ARG_FLOAT, &c->max_norm, "global gradient-norm clip (0: off)", nullptr},
        {"min_lr_scale", ARG_FLOAT, &c->min_lr_scale, "floor of the cosine schedule, as a share of lr", nullptr},
        {"early_stop_patience", ARG_INT, &c->early_stop_patience, "validations without improvement before stopping (0: off)", nullptr},
        {"early_stop_min_delta", ARG_FLOAT, &c->early_stop_min_delta, "improvement needed on the validation loss", nullptr},
        {"seed", ARG_INT, &c->seed, "seed of the initialisation, data order, augmentations, dropout and SIGReg slices", nullptr},
        {"log_every", ARG_INT, &c->log_every, "print the losses every this many steps", nullptr},
        {"diag_every", ARG_INT, &c->diag_every, "embedding diagnostics every this many steps", nullptr},
        {"diag_window", ARG_INT, &c->diag_window, "rows of recent projections the diagnostics use", nullptr},
        {"checkpoint_path", ARG_STRING, &c->checkpoint_path, "directory for checkpoints, logs and exports (empty: none)", nullptr},
        {"checkpoint_interval", ARG_INT, &c->checkpoint_interval, "keep a numbered checkpoint every this many epochs (the latest is always written)", nullptr},
        {"eval_every_epochs", ARG_INT, &c->eval_every_epochs, "validate every this many epochs", nullptr},
        {"resume", ARG_STRING, &c->resume, "checkpoint to continue from; 'latest': checkpoint_path/latest.bin, or the newest epoch_<e>.bin that reads, when there is one", nullptr},
        {"export_codes", ARG_STRING, &c->export_codes, "with a checkpoint in resume: write the code of every object of codes_data to this file and exit", nullptr},
        {"codes_data", ARG_STRING, &c->codes_data, "task file whose grids export_codes encodes", nullptr},
    };
}

// The derived sizes. Notation: B samples per micro-batch on this rank (Bg on all ranks), L = context_window,
// N objects per grid, F features, D width, H heads, P projection width, K codes.
enum { AGG_MEAN, AGG_LAST, AGG_ATTENTION, AGG_GRU };

typedef struct {
    int L, N, F, D, H, HD, P, K, layers;
    int agg;
    bool vq, gumbel, infonce, lejepa_sigreg;
    int n_inv;                 // invariance copies the online encoder also encodes (colour, translation, symmetry)
    int Bg, B;                 // samples per micro-batch: all ranks, this rank
} Dims;

static int agg_kind(const std::string& s) {
    return s == "mean" ? AGG_MEAN : s == "last" ? AGG_LAST : s == "attention" ? AGG_ATTENTION : AGG_GRU;
}

// The keys that give the weights their meaning: a checkpoint written with other values is refused. On resume, other
// differing keys are logged as warnings, except these run-control keys, which a continued run is expected to change.
#define ARCH_KEYS "context_mode|context_window|hidden_dim|relational_layers|relational_heads|vq_enabled|num_embeddings|" \
    "vq_mode|context_agg|projection_dim|proj_final_relu|use_target_encoder|objective|queue_size"
#define RUN_CONTROL_KEYS "epochs|max_steps|log_every|diag_every|diag_window|checkpoint_path|checkpoint_interval|" \
    "eval_every_epochs|resume|export_codes|codes_data|early_stop_patience|early_stop_min_delta"

static void config_validate(const Config& c) {
    auto need = [](bool ok, const char* key, const char* what, double value) {
        if (!ok) fatal("%s=%g: expected %s", key, value, what);
    };
    need(c.context_window >= 1 && c.context_window <= 16, "context_window", "1..16", c.context_window);
    need(c.hidden_dim >= 1, "hidden_dim", ">= 1", c.hidden_dim);
    need(c.relational_layers >= 0, "relational_layers", ">= 0", c.relational_layers);
    need(c.relational_heads >= 1 && c.hidden_dim % c.relational_heads == 0, "relational_heads", "a divisor of hidden_dim", c.relational_heads);
    need(c.relational_dropout >= 0 && c.relational_dropout < 1, "relational_dropout", "in [0, 1)", c.relational_dropout);
    need(c.num_embeddings >= 1, "num_embeddings", ">= 1", c.num_embeddings);
    need(c.ema_decay >= 0 && c.ema_decay < 1, "ema_decay", "in [0, 1)", c.ema_decay);
    need(c.refresh_interval >= 1, "refresh_interval", ">= 1", c.refresh_interval);
    need(c.projection_dim >= 1, "projection_dim", ">= 1", c.projection_dim);
    need(c.target_ema_decay >= 0 && c.target_ema_decay <= 1, "target_ema_decay", "in [0, 1]", c.target_ema_decay);
    need(c.queue_size >= 0, "queue_size", ">= 0", c.queue_size);
    need(c.temperature > 0 && c.temperature_min > 0 && c.temperature_min <= c.temperature_max, "temperature_min",
         "0 < temperature_min <= temperature_max", c.temperature_min);
    need(c.sigreg_slices >= 1, "sigreg_slices", ">= 1", c.sigreg_slices);
    need(c.lr > 0 && c.lr <= 1, "lr", "in (0, 1] (the reference uses 5e-5)", c.lr);
    need(c.weight_decay >= 0, "weight_decay", ">= 0", c.weight_decay);
    need(c.warmup_steps >= 0, "warmup_steps", ">= 0", c.warmup_steps);
    need(c.max_norm >= 0, "max_norm", ">= 0 (0: off)", c.max_norm);
    need(c.min_lr_scale >= 0 && c.min_lr_scale <= 1, "min_lr_scale", "in [0, 1]", c.min_lr_scale);
    need(c.beta1 >= 0 && c.beta1 < 1, "beta1", "in [0, 1)", c.beta1);
    need(c.beta2 >= 0 && c.beta2 < 1, "beta2", "in [0, 1)", c.beta2);
    need(c.adam_eps > 0, "adam_eps", "> 0", c.adam_eps);
    need(c.batch_size >= 1, "batch_size", ">= 1", c.batch_size);
    need(c.grad_accum_steps >= 1 && c.batch_size % c.grad_accum_steps == 0, "grad_accum_steps", "a divisor of batch_size", c.grad_accum_steps);
    need(c.epochs >= 1, "epochs", ">= 1", c.epochs);
    need(c.max_steps >= 0, "max_steps", ">= 0", c.max_steps);
    need(c.val_fraction >= 0 && c.val_fraction < 1, "val_fraction", "in [0, 1)", c.val_fraction);
    need(c.max_examples >= 0, "max_examples", ">= 0 (0: all)", c.max_examples);
    need(c.log_every >= 1, "log_every", ">= 1", c.log_every);
    need(c.diag_every >= 0, "diag_every", ">= 0 (0: off)", c.diag_every);
    need(c.diag_window >= 2, "diag_window", ">= 2", c.diag_window);
    need(c.checkpoint_interval >= 1, "checkpoint_interval", ">= 1", c.checkpoint_interval);
    need(c.eval_every_epochs >= 1, "eval_every_epochs", ">= 1", c.eval_every_epochs);
    need(c.gumbel_tau_min > 0 && c.gumbel_tau_init >= c.gumbel_tau_min, "gumbel_tau_min", "0 < gumbel_tau_min <= gumbel_tau_init", c.gumbel_tau_min);
    for (float p : {c.aug_palette, c.aug_mask_ratio, c.aug_translate, c.aug_dihedral, c.aug_object_dropout})
        if (p < 0 || p > 1) fatal("augmentation probabilities must lie in [0, 1] (got %g)", p);
    if ((c.batch_size / c.grad_accum_steps) % dist().world != 0)
        fatal("batch_size=%d / grad_accum_steps=%d = %d samples per micro-batch, not divisible by the %d ranks",
              c.batch_size, c.grad_accum_steps, c.batch_size / c.grad_accum_steps, dist().world);
}

static Dims make_dims(const Config& c) {
    Dims d;
    d.L = c.context_window; d.N = OBJ_MAX_OBJECTS; d.F = OBJ_FEATURES; d.D = c.hidden_dim; d.H = c.relational_heads;
    d.HD = d.D / d.H; d.layers = c.relational_layers; d.P = c.projection_dim; d.K = c.num_embeddings; d.agg = agg_kind(c.context_agg);
    d.vq = c.vq_enabled != 0; d.gumbel = d.vq && c.vq_mode == "gumbel";
    d.infonce = c.objective == "infonce"; d.lejepa_sigreg = c.sigreg_mode == "lejepa";
    // the reference computes invariance and relational terms only with the InfoNCE objective
    d.n_inv = d.infonce ? (c.inv_color > 0) + (c.inv_translation > 0 && c.inv_translation_delta > 0) + (c.inv_symmetry > 0) : 0;
    d.Bg = c.batch_size / c.grad_accum_steps; d.B = d.Bg / dist().world;
    return d;
}

// ----------------------------------------------------------------------------------------------------------
// 2. Parameters. One flat buffer (common/parameters.h) of every trained tensor, in two groups: the network (the
// encoder: feature MLP, relational blocks, the Gumbel codebook when vq_mode=gumbel; the context aggregator; the
// projection head), whose EMA is the target branch, and the temperature (log_tau). Both are trained by AdamW. The
// hard VQ codebook is not a parameter: it is learned by EMA (section 6) and lives with its statistics in a Codebook.

enum { GROUP_NETWORK, GROUP_TEMPERATURE };

template <typename T> struct LayerTensors {
    T *ln1_w, *ln1_b, *qkv_w, *qkv_b, *out_w, *out_b, *ln2_w, *ln2_b, *ff1_w, *ff1_b, *ff2_w, *ff2_b;
};
template <typename T> struct Tensors {
    T *proj1_w, *proj1_b, *proj2_w, *proj2_b;       // Linear(F, D) - GELU - Linear(D, D)
    std::vector<LayerTensors<T>> layer;             // relational_layers blocks
    T* codebook;                                    // (K, D), gumbel only
    T *agg_w, *agg_b;                               // attention: Linear(L, L); gru: W_ih (3D, D), b_ih (3D)
    T *gru_whh, *gru_bhh;                           // gru: W_hh (3D, D), b_hh (3D)
    T *head1_w, *head1_b, *head2_w, *head2_b;       // Linear(D, P) - ReLU - Linear(P, P) [- ReLU] - L2 normalise
    T* log_tau;                                     // (1)
};

// The tensors with the reference's state_dict names and torch's initialisation (nn.Linear, nn.GRU: U(-a, a) with
// a = 1/sqrt(fan_in); LayerNorm 1 and 0), log_tau = log(temperature).
template <typename T>
void model_tensors(TensorList<T>& list, Tensors<T>* t, const Dims& d, float log_tau) {
    auto linear = [&](T** w, T** b, const std::string& name, int out, int in) {
        const float a = 1.0f / sqrtf((float)in);
        list.add(w, name + ".weight", {out, in}, init_uniform(a));
        list.add(b, name + ".bias", {out}, init_uniform(a));
    };
    list.group(GROUP_NETWORK);
    const std::string enc = "object_encoder.";
    linear(&t->proj1_w, &t->proj1_b, enc + "proj.0", d.D, d.F);
    linear(&t->proj2_w, &t->proj2_b, enc + "proj.2", d.D, d.D);
    t->layer.resize(d.layers);
    for (int l = 0; l < d.layers; l++) {
        LayerTensors<T>& y = t->layer[l];
        const std::string p = enc + "relational.layers." + std::to_string(l) + ".";
        list.add(&y.ln1_w, p + "norm1.weight", {d.D}, init_const(1.0f));
        list.add(&y.ln1_b, p + "norm1.bias", {d.D}, init_zero());
        // q_proj, k_proj, v_proj as one (3D, D) matrix (exported as the three)
        linear(&y.qkv_w, &y.qkv_b, p + "qkv_proj", 3 * d.D, d.D);
        linear(&y.out_w, &y.out_b, p + "out_proj", d.D, d.D);
        list.add(&y.ln2_w, p + "norm2.weight", {d.D}, init_const(1.0f));
        list.add(&y.ln2_b, p + "norm2.bias", {d.D}, init_zero());
        linear(&y.ff1_w, &y.ff1_b, p + "ffn.0", 2 * d.D, d.D);
        linear(&y.ff2_w, &y.ff2_b, p + "ffn.2", d.D, 2 * d.D);
    }
    if (d.gumbel) list.add(&t->codebook, enc + "vq.embedding.weight", {d.K, d.D}, init_uniform(1.0f / d.K));
    if (d.agg == AGG_ATTENTION) linear(&t->agg_w, &t->agg_b, "context_attention.0", d.L, d.L);
    if (d.agg == AGG_GRU) {   // torch nn.GRU: every tensor U(-1/sqrt(D), 1/sqrt(D))
        const Init u = init_uniform(1.0f / sqrtf((float)d.D));
        list.add(&t->agg_w, "context_gru.weight_ih_l0", {3 * d.D, d.D}, u);
        list.add(&t->gru_whh, "context_gru.weight_hh_l0", {3 * d.D, d.D}, u);
        list.add(&t->agg_b, "context_gru.bias_ih_l0", {3 * d.D}, u);
        list.add(&t->gru_bhh, "context_gru.bias_hh_l0", {3 * d.D}, u);
    }
    linear(&t->head1_w, &t->head1_b, "projection_head.proj.0", d.P, d.D);
    linear(&t->head2_w, &t->head2_b, "projection_head.proj.2", d.P, d.P);
    list.group(GROUP_TEMPERATURE);
    list.add(&t->log_tau, "log_temperature", {1}, init_const(log_tau));
}

static ParamTable model_table(const Dims& d, const Config& c) {
    return param_table<Tensors<floatX>>({param_group("network", GROUP_ADAM, true), param_group("temperature", GROUP_ADAM)},
                                        [&](TensorList<floatX>& list, Tensors<floatX>* t) {
                                            model_tensors(list, t, d, logf(c.temperature));
                                        });
}

// ----------------------------------------------------------------------------------------------------------
// 3. Activations. One encoder pass over G grids of N objects (R = G*N rows of width D) keeps what its backward
// needs; the aggregator and the projection head have their own. All are allocated once, for the largest call.

typedef struct {
    floatX *ln1, *qkv, *ao, *o, *x1, *ln2, *f1, *g, *f2, *out;   // (R, D) except qkv (R, 3D), f1 and g (R, 2D)
    floatS *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd;           // (R)
    floatS* att;                                                 // (G, H, N, N)
} LayerActs;

typedef struct {
    int G_max;
    floatX* feat;                  // (R, F) object features
    uint8_t *mask, *adj;           // (G, N), (G, N, N)
    floatX *p1, *a1, *x0;          // feature MLP: pre-GELU, post-GELU, output (R, D)
    std::vector<LayerActs> layer;
    int* idx;                      // (R) code of each object (-1: not quantised)
    floatS* dist;                  // (R) squared distance to its code
    floatS* ysoft;                 // (R, K) Gumbel-softmax weights (gumbel only)
    floatX* e;                     // (R, D) encoder output: the quantised embeddings (straight-through)
    floatX* pooled;                // (G, D) masked mean over the objects of each grid
    // backward scratch
    floatX *de, *dx1, *dA, *dB;    // (R, D)
    floatX *d2, *d3;               // (R, 2D), (R, 3D)
} EncoderActs;

typedef struct {                   // context aggregation of n samples x L grids
    int n_max;
    uint8_t* last_mask;            // (n, L): 1 at the last grid (context_agg=last is a masked mean)
    floatS* att;                   // attention: (n, L, D)
    floatX *gi, *gh, *gates, *h;   // gru: gi (n, L, 3D), gh and gates (L, n, 3D), h (L + 1, n, D) with h_0 = 0
    floatX *dgi, *dgh, *dh0, *dh1; // gru backward
    floatX* repr;                  // (n, D)
} AggActs;

typedef struct {                   // projection head on n rows
    floatX *z1, *a, *z2, *raw, *proj;   // (n, P); raw = z2 or ReLU(z2); proj = raw / |raw|
    floatS* norm;                  // (n)
    floatX *draw, *dz, *da;        // backward scratch (n, P)
} HeadActs;

static void encoder_layout(Arena* a, EncoderActs* e, const Dims& d, int G, bool with_backward) {
    const size_t R = (size_t)G * d.N, D = d.D;
    e->G_max = G;
    e->feat = arena_take<floatX>(a, R * d.F);
    e->mask = arena_take<uint8_t>(a, R);
    e->adj = arena_take<uint8_t>(a, R * d.N);
    e->p1 = arena_take<floatX>(a, R * D); e->a1 = arena_take<floatX>(a, R * D); e->x0 = arena_take<floatX>(a, R * D);
    e->layer.resize(d.layers);
    for (int l = 0; l < d.layers; l++) {
        LayerActs& y = e->layer[l];
        y.ln1 = arena_take<floatX>(a, R * D); y.qkv = arena_take<floatX>(a, R * 3 * D); y.ao = arena_take<floatX>(a, R * D);
        y.o = arena_take<floatX>(a, R * D); y.x1 = arena_take<floatX>(a, R * D); y.ln2 = arena_take<floatX>(a, R * D);
        y.f1 = arena_take<floatX>(a, R * 2 * D); y.g = arena_take<floatX>(a, R * 2 * D); y.f2 = arena_take<floatX>(a, R * D);
        y.out = arena_take<floatX>(a, R * D);
        y.ln1_mean = arena_take<floatS>(a, R); y.ln1_rstd = arena_take<floatS>(a, R);
        y.ln2_mean = arena_take<floatS>(a, R); y.ln2_rstd = arena_take<floatS>(a, R);
        y.att = arena_take<floatS>(a, (size_t)G * d.H * d.N * d.N);
    }
    e->idx = arena_take<int>(a, R);
    e->dist = arena_take<floatS>(a, R);
    e->ysoft = d.gumbel ? arena_take<floatS>(a, R * d.K) : nullptr;
    e->e = arena_take<floatX>(a, R * D);
    e->pooled = arena_take<floatX>(a, (size_t)G * D);
    if (with_backward) {
        e->de = arena_take<floatX>(a, R * D); e->dx1 = arena_take<floatX>(a, R * D);
        e->dA = arena_take<floatX>(a, R * D); e->dB = arena_take<floatX>(a, R * D);
        e->d2 = arena_take<floatX>(a, R * 2 * D); e->d3 = arena_take<floatX>(a, R * 3 * D);
    }
}

static void agg_layout(Arena* a, AggActs* g, const Dims& d, int n) {
    const size_t D = d.D, L = d.L;
    g->n_max = n;
    g->last_mask = arena_take<uint8_t>(a, (size_t)n * L);
    g->att = d.agg == AGG_ATTENTION ? arena_take<floatS>(a, (size_t)n * L * D) : nullptr;
    if (d.agg == AGG_GRU) {
        g->gi = arena_take<floatX>(a, (size_t)n * L * 3 * D); g->gh = arena_take<floatX>(a, (size_t)n * L * 3 * D);
        g->gates = arena_take<floatX>(a, (size_t)n * L * 3 * D); g->h = arena_take<floatX>(a, (size_t)n * (L + 1) * D);
        g->dgi = arena_take<floatX>(a, (size_t)n * L * 3 * D); g->dgh = arena_take<floatX>(a, (size_t)n * 3 * D);
        g->dh0 = arena_take<floatX>(a, (size_t)n * D); g->dh1 = arena_take<floatX>(a, (size_t)n * D);
    }
    g->repr = arena_take<floatX>(a, (size_t)n * D);
}

static void head_layout(Arena* a, HeadActs* h, const Dims& d, int n) {
    const size_t P = d.P;
    h->z1 = arena_take<floatX>(a, n * P); h->a = arena_take<floatX>(a, n * P); h->z2 = arena_take<floatX>(a, n * P);
    h->raw = arena_take<floatX>(a, n * P); h->proj = arena_take<floatX>(a, n * P);
    h->norm = arena_take<floatS>(a, n);
    h->draw = arena_take<floatX>(a, n * P); h->dz = arena_take<floatX>(a, n * P); h->da = arena_take<floatX>(a, n * P);
}

// The hard-VQ codebook and its EMA statistics (fp32), one per branch.
typedef struct {
    floatS *codebook, *ema_count, *ema_sum;      // (K, D), (K), (K, D)
    floatS *counts, *sums;                       // this call's statistics (K), (K, D)
    long calls;                                  // VQ calls since the last refresh (the reference's counter)
    long refreshes;                              // refresh events so far (keys the random re-seeding)
    int* refresh_codes;                          // (K) scratch of a refresh: the dead codes
    floatS* refresh_vectors;                     // (K, D) and their new vectors
    // the state at the start of the training step, restored when the step is skipped (non-finite loss)
    floatS *saved_codebook, *saved_count, *saved_sum;
    long saved_calls, saved_refreshes;
} Codebook;

// Everything on the device: weights, gradients, optimizer state, the target branch, codebooks, the InfoNCE queue,
// the activations of one micro-batch.
typedef struct {
    Config c;
    Dims d;
    Params p;                        // weights, gradients, AdamW state; the EMA is the target branch
    Tensors<floatX> w, tw;           // the weights; the target branch's (the network's EMA)
    Tensors<floatS> gw, mw, tmw;     // gradients; fp32 values; the target branch's fp32 values
    Codebook cb, tcb;                // online and target hard-VQ codebooks
    floatS* queue;                   // (Q, P) past target projections, a ring
    int queue_ptr, queue_fill;
    floatX* pending;                 // (grad_accum * Bg, P) target projections waiting for the step to commit
    floatX *pending_c, *pending_t;   // (grad_accum * B, P) this rank's projections for the diagnostics, likewise
    // one micro-batch
    int G_online, n_agg;             // online encoder grids; context samples aggregated (1 + invariance copies) * B
    EncoderActs enc, tenc;           // online and target encoder passes
    AggActs agg;
    HeadActs head_c, head_t;         // context head; target head (online or target weights)
    floatX* t_all;                   // (Bg, P) target projections of the whole micro-batch, slot order
    floatX* t_rank;                  // (Bg, P) the same in rank order (the all-gather's output)
    floatX* dt_all;                  // (Bg, P)
    int *pos, *slot_of_row;          // (B) positive of each local row in t_all; (Bg) rank-order row of slot g
    floatS* probs;                   // (B, Bg + Q)
    floatX *drepr, *dpooled;         // (n_agg, D), (G_online, D)
    floatX* dsig;                    // (B, P) SIGReg gradient
    floatS *sig_dirs, *sig_cs;       // (P, M), (M, 2 * 17)
    int sig_dirs_step;               // the step sig_dirs were drawn for (-1: none yet)
    floatS* losses;                  // (LOSS_COUNT) this micro-batch's loss terms
    floatX *ring_c, *ring_t;         // (diag_window, P) recent projections for the diagnostics
    int ring_ptr, ring_fill;
    std::vector<double> usage;       // objects per code since the last diagnostics (online encoder, all ranks)
    std::vector<double> step_usage;  // ... in the current step, added to usage when the step commits
    long refreshed, saved_refreshed; // codes re-seeded since the last diagnostics; at the start of the step
    void* arena;
    size_t arena_bytes;
} Model;

enum { LOSS_INFONCE, LOSS_MSE, LOSS_SIGREG, LOSS_INV_COLOR, LOSS_INV_TRANSLATION, LOSS_INV_SYMMETRY, LOSS_REL,
       LOSS_REL_SELF, LOSS_COMMIT, LOSS_COUNT };
static const char* LOSS_NAMES[LOSS_COUNT] = {"infonce", "mse", "sigreg", "inv_color", "inv_translation",
                                             "inv_symmetry", "relational", "relational_self", "commitment"};

static void acts_layout(Arena* a, Model* m) {
    const Dims& d = m->d;
    encoder_layout(a, &m->enc, d, m->G_online, true);
    if (m->c.use_target_encoder) encoder_layout(a, &m->tenc, d, d.B, false);
    agg_layout(a, &m->agg, d, m->n_agg);
    head_layout(a, &m->head_c, d, d.B);
    head_layout(a, &m->head_t, d, d.B);
    m->t_all = arena_take<floatX>(a, (size_t)d.Bg * d.P);
    m->t_rank = arena_take<floatX>(a, (size_t)d.Bg * d.P);
    m->dt_all = arena_take<floatX>(a, (size_t)d.Bg * d.P);
    m->pos = arena_take<int>(a, d.B);
    m->slot_of_row = arena_take<int>(a, d.Bg);
    m->probs = arena_take<floatS>(a, (size_t)d.B * (d.Bg + m->c.queue_size));
    m->drepr = arena_take<floatX>(a, (size_t)m->n_agg * d.D);
    m->dpooled = arena_take<floatX>(a, (size_t)m->G_online * d.D);
    m->dsig = arena_take<floatX>(a, (size_t)d.B * d.P);
    m->sig_dirs = arena_take<floatS>(a, (size_t)d.P * m->c.sigreg_slices);
    m->sig_cs = arena_take<floatS>(a, (size_t)m->c.sigreg_slices * 2 * SIGREG_POINTS);
    m->losses = arena_take<floatS>(a, LOSS_COUNT + 1);          // the loss terms, then device_scalar(m, 0)
    m->ring_c = arena_take<floatX>(a, (size_t)m->c.diag_window * d.P);
    m->ring_t = arena_take<floatX>(a, (size_t)m->c.diag_window * d.P);
}

static void codebook_alloc(Codebook* cb, const Dims& d) {
    const size_t KD = (size_t)d.K * d.D;
    cb->codebook = (floatS*)device_malloc(KD * sizeof(floatS), "codebook");
    cb->ema_count = (floatS*)device_malloc(d.K * sizeof(floatS), "codebook EMA counts");
    cb->ema_sum = (floatS*)device_malloc(KD * sizeof(floatS), "codebook EMA sums");
    cb->counts = (floatS*)device_malloc(d.K * sizeof(floatS), "codebook batch counts");
    cb->sums = (floatS*)device_malloc(KD * sizeof(floatS), "codebook batch sums");
    cb->refresh_codes = (int*)device_malloc(d.K * sizeof(int), "codebook refresh codes");
    cb->refresh_vectors = (floatS*)device_malloc(KD * sizeof(floatS), "codebook refresh vectors");
    cb->saved_codebook = (floatS*)device_malloc(KD * sizeof(floatS), "codebook at the start of the step");
    cb->saved_count = (floatS*)device_malloc(d.K * sizeof(floatS), "codebook counts at the start of the step");
    cb->saved_sum = (floatS*)device_malloc(KD * sizeof(floatS), "codebook sums at the start of the step");
    cb->calls = cb->refreshes = 0;
}

// A skipped step (non-finite loss) must leave every state as it was, but the forward passes of its micro-batches
// already moved the codebooks (EMA steps, refreshes): their state is saved at the start of every training step
// and restored on a skip.
typedef enum { CODEBOOK_SAVE, CODEBOOK_RESTORE } CodebookKeep;
static void codebook_keep(Codebook* cb, const Dims& d, CodebookKeep what) {
    if (!cb->codebook) return;
    const size_t n[3] = {(size_t)d.K * d.D, (size_t)d.K, (size_t)d.K * d.D};
    floatS* live[3] = {cb->codebook, cb->ema_count, cb->ema_sum};
    floatS* saved[3] = {cb->saved_codebook, cb->saved_count, cb->saved_sum};
    const bool save = what == CODEBOOK_SAVE;
    for (int i = 0; i < 3; i++) copy_on_device(save ? saved[i] : live[i], save ? live[i] : saved[i], n[i] * sizeof(floatS));
    if (save) { cb->saved_calls = cb->calls; cb->saved_refreshes = cb->refreshes; }
    else { cb->calls = cb->saved_calls; cb->refreshes = cb->saved_refreshes; }
}

static void model_build(Model* m, const Config& c) {
    m->c = c;
    m->d = make_dims(c);
    const Dims& d = m->d;
    m->cb = Codebook();                 // every field, also of a codebook this configuration does not allocate,
    m->tcb = Codebook();                // is written to checkpoints
    m->refreshed = m->saved_refreshed = 0;
    m->usage.assign(d.K, 0.0);
    m->step_usage.assign(d.K, 0.0);
    params_alloc(&m->p, model_table(d, c), true, c.target_ema_decay);
    const ParamTable& table = m->p.table;
    TensorList<floatX> w = tensor_bind(table, param_bases(table, m->p.params, BUF_PARAMS));
    model_tensors(w, &m->w, d, 0);
    TensorList<floatX> tw = tensor_bind(table, param_bases_ema(m->p));
    model_tensors(tw, &m->tw, d, 0);
    TensorList<floatS> gw = tensor_bind(table, param_bases(table, m->p.grads, BUF_GRADS));
    model_tensors(gw, &m->gw, d, 0);
    TensorList<floatS> mw = tensor_bind(table, param_bases(table, params_fp32(m->p), BUF_MASTER));
    model_tensors(mw, &m->mw, d, 0);
    TensorList<floatS> tmw = tensor_bind(table, param_bases(table, m->p.ema, BUF_EMA));
    model_tensors(tmw, &m->tmw, d, 0);
    if (d.vq) codebook_alloc(&m->cb, d);                       // gumbel: only its batch statistics (usage) are used
    if (d.vq && !d.gumbel) codebook_alloc(&m->tcb, d);
    m->queue = (floatS*)device_malloc(std::max(1, c.queue_size) * (size_t)d.P * sizeof(floatS), "InfoNCE queue");
    device_memset(m->queue, 0, std::max(1, c.queue_size) * (size_t)d.P * sizeof(floatS));
    m->queue_ptr = m->queue_fill = 0;
    m->pending = (floatX*)device_malloc((size_t)c.grad_accum_steps * d.Bg * d.P * sizeof(floatX), "queue staging");
    m->pending_c = (floatX*)device_malloc((size_t)c.grad_accum_steps * d.B * d.P * sizeof(floatX), "diagnostics staging");
    m->pending_t = (floatX*)device_malloc((size_t)c.grad_accum_steps * d.B * d.P * sizeof(floatX), "diagnostics staging");
    // online grids per micro-batch: the context (B L) and, per invariance, its perturbed copy (B L) and the
    // perturbed target (B); the unperturbed target too when there is no target branch
    m->n_agg = (1 + d.n_inv) * d.B;
    m->G_online = m->n_agg * d.L + (d.n_inv + (c.use_target_encoder ? 0 : 1)) * d.B;
    m->arena = arena_alloc([&](Arena* a) { acts_layout(a, m); }, &m->arena_bytes, "activations");
    m->ring_ptr = m->ring_fill = 0;
    m->sig_dirs_step = -1;
    // the positive of local row b (global slot rank + b W) and the rank-order row of every slot
    std::vector<int> pos(d.B), slot_row(d.Bg);
    for (int b = 0; b < d.B; b++) pos[b] = dist().rank + b * dist().world;
    for (int g = 0; g < d.Bg; g++) slot_row[g] = dist_slot_row(g, d.B);
    copy_to_device(m->pos, pos.data(), d.B * sizeof(int));
    copy_to_device(m->slot_of_row, slot_row.data(), d.Bg * sizeof(int));
    std::vector<uint8_t> last((size_t)m->n_agg * d.L, 0);
    for (int n = 0; n < m->n_agg; n++) last[(size_t)n * d.L + d.L - 1] = 1;
    copy_to_device(m->agg.last_mask, last.data(), last.size());
}

// Initial weights (section 2), the target branch as a copy, the codebook U(-1/K, 1/K) with its EMA sum = the
// codebook and counts 0 (the reference's buffers, no debiasing).
static void model_init(Model* m, uint64_t seed) {
    Rng unused = rng_make(seed);              // the initialisers here are all hash-based
    params_set(&m->p, param_init_values(m->p.table, seed, &unused));
    const Dims& d = m->d;
    if (d.vq && !d.gumbel) {
        std::vector<floatS> cb((size_t)d.K * d.D);
        for (size_t i = 0; i < cb.size(); i++) cb[i] = (2.0f * hash_uniform(seed ^ 0x636f6465626f6f6bull, i) - 1.0f) / d.K;
        for (Codebook* b : {&m->cb, &m->tcb}) {
            copy_to_device(b->codebook, cb.data(), cb.size() * sizeof(floatS));
            copy_to_device(b->ema_sum, cb.data(), cb.size() * sizeof(floatS));
            device_memset(b->ema_count, 0, d.K * sizeof(floatS));
            b->calls = b->refreshes = 0;
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// 4. Forward.
//
// Encoder over G grids (R = G N rows), as the reference's ObjectTokenEncoder:
//   x   = Linear(GELU(Linear(features)))                                            (R, D)
//   per relational block (pre-LN):  x1  = x + Dropout(out_proj(Attn(LN1(x))))      attention: each object over
//                                   x   = mask * (x1 + Dropout(FFN(LN2(x1))))       itself and its adjacent objects
//   e   = VQ(x): the nearest code, passed straight through (e = x + sg(q - x))      (R, D)
//   grid representation = masked mean of e over the grid's objects                  (G, D)
// Padded object rows never reach a valid row (attention masks them out, the mask zeroes them after every block).
// A pass runs in training mode (dropout; the hard codebook's EMA update) or evaluation mode.

typedef struct { int step, micro; bool training; uint64_t salt; } PassKey;   // keys dropout and Gumbel noise

// The noise of one site of a pass: in relational layer `layer`, the attention (site 0) and the two residual
// dropouts (1, 2); the Gumbel noise of the quantiser (SITE_GUMBEL, layer 0).
enum { SITE_GUMBEL = 3 };
static uint64_t pass_seed(const Config& c, const PassKey& k, int layer, int site) {
    return hash_u64((uint64_t)c.seed ^ k.salt, ((uint64_t)k.step << 20) | (uint64_t)k.micro, (uint64_t)layer, (uint64_t)site);
}

static void codebook_update(Model* m, Codebook* cb, const EncoderActs* e, int G, Stream st);

// Object rows that count in the codebook statistics and the commitment loss: valid objects, or every slot with
// vq_count_padded (the reference).
static const uint8_t* vq_valid_rows(const Model* m, const EncoderActs* e) { return m->c.vq_count_padded ? nullptr : e->mask; }

static float gumbel_temperature(const Model* m, int step) {
    return gumbel_tau(step, m->c.gumbel_tau_init, m->c.gumbel_tau_min, m->c.gumbel_anneal_steps);
}

static void encoder_forward(Model* m, EncoderActs* e, const Tensors<floatX>& w, const floatS* gumbel_codebook,
                            Codebook* cb, int G, const PassKey& key, Stream st) {
    const Dims& d = m->d;
    const int R = G * d.N, D = d.D;
    const float p = key.training ? m->c.relational_dropout : 0.0f;
    matmul_forward(e->p1, e->feat, w.proj1_w, w.proj1_b, R, d.F, D, st);
    activation_forward(e->a1, e->p1, (size_t)R * D, ACT_GELU, st);
    matmul_forward(e->x0, e->a1, w.proj2_w, w.proj2_b, R, D, D, st);
    const floatX* x = e->x0;
    for (int l = 0; l < d.layers; l++) {
        LayerActs& y = e->layer[l];
        const LayerTensors<floatX>& lw = w.layer[l];
        layernorm_forward(y.ln1, y.ln1_mean, y.ln1_rstd, x, lw.ln1_w, lw.ln1_b, R, D, st);
        matmul_forward(y.qkv, y.ln1, lw.qkv_w, lw.qkv_b, R, D, 3 * D, st);
        object_attention_forward(y.ao, y.att, y.qkv, e->adj, e->mask, G, d.N, d.H, d.HD, p, pass_seed(m->c, key, l, 0), st);
        matmul_forward(y.o, y.ao, lw.out_w, lw.out_b, R, D, D, st);
        dropout_add(y.x1, x, y.o, nullptr, R, D, p, pass_seed(m->c, key, l, 1), st);
        layernorm_forward(y.ln2, y.ln2_mean, y.ln2_rstd, y.x1, lw.ln2_w, lw.ln2_b, R, D, st);
        matmul_forward(y.f1, y.ln2, lw.ff1_w, lw.ff1_b, R, D, 2 * D, st);
        activation_forward(y.g, y.f1, (size_t)R * 2 * D, ACT_GELU, st);
        matmul_forward(y.f2, y.g, lw.ff2_w, lw.ff2_b, R, 2 * D, D, st);
        dropout_add(y.out, y.x1, y.f2, e->mask, R, D, p, pass_seed(m->c, key, l, 2), st);
        x = y.out;
    }
    const uint8_t* valid = vq_valid_rows(m, e);
    if (d.gumbel) {
        vq_gumbel_forward(e->e, e->idx, e->ysoft, x, gumbel_codebook, valid, R, d.K, D, gumbel_temperature(m, key.step),
                          pass_seed(m->c, key, 0, SITE_GUMBEL), key.training, st);
    } else if (d.vq) {
        vq_nearest(e->idx, e->dist, x, cb->codebook, R, d.K, D, st);
        vq_quantize(e->e, e->idx, cb->codebook, x, valid, R, D, st);
        if (key.training || m->c.vq_train_in_eval) codebook_update(m, cb, e, G, st);
    } else {
        copy_on_device(e->e, x, (size_t)R * D * sizeof(floatX));
    }
    masked_mean_forward(e->pooled, e->e, e->mask, G, d.N, D, st);
}

// The encoder's input to the VQ (the last block's output).
static const floatX* encoder_top(const Model* m, const EncoderActs* e) {
    return m->d.layers ? e->layer[m->d.layers - 1].out : e->x0;
}

// Context aggregation of n samples (x: (n, L, D) grid representations) into (n, D):
//   mean | last (x[:, L-1]) | attention: a = softmax_l(W x[:, :, c] + b) per channel c, sum_l a x  (reference 185e707)
//   | gru: torch GRU(D, D), h_0 = 0, the last hidden state.
static void aggregate_forward(Model* m, const Tensors<floatX>& w, const floatX* x, int n, Stream st) {
    const Dims& d = m->d;
    AggActs* g = &m->agg;
    const int D = d.D, L = d.L;
    switch (d.agg) {
        case AGG_MEAN: masked_mean_forward(g->repr, x, nullptr, n, L, D, st); break;
        case AGG_LAST: masked_mean_forward(g->repr, x, g->last_mask, n, L, D, st); break;
        case AGG_ATTENTION: context_attention_forward(g->repr, g->att, x, w.agg_w, w.agg_b, n, L, D, st); break;
        case AGG_GRU: {
            matmul_forward(g->gi, x, w.agg_w, w.agg_b, n * L, D, 3 * D, st);         // (n, L, 3D)
            device_memset(g->h, 0, (size_t)n * D * sizeof(floatX));
            for (int l = 0; l < L; l++) {
                floatX* h = g->h + (size_t)l * n * D;
                floatX* gh = g->gh + (size_t)l * n * 3 * D;
                matmul_forward(gh, h, w.gru_whh, w.gru_bhh, n, D, 3 * D, st);
                gru_cell_forward(h + (size_t)n * D, g->gates + (size_t)l * n * 3 * D, g->gi + (size_t)l * 3 * D, L * 3 * D,
                                 gh, l ? h : nullptr, n, D, st);
            }
            copy_on_device(g->repr, g->h + (size_t)L * n * D, (size_t)n * D * sizeof(floatX));
            break;
        }
    }
}

// Projection head: proj = normalize([ReLU] Linear(ReLU(Linear(x)))), x (n, D) -> (n, P).
static void head_forward(Model* m, HeadActs* h, const Tensors<floatX>& w, const floatX* x, int n, Stream st) {
    const Dims& d = m->d;
    matmul_forward(h->z1, x, w.head1_w, w.head1_b, n, d.D, d.P, st);
    activation_forward(h->a, h->z1, (size_t)n * d.P, ACT_RELU, st);
    matmul_forward(h->z2, h->a, w.head2_w, w.head2_b, n, d.P, d.P, st);
    if (m->c.proj_final_relu) activation_forward(h->raw, h->z2, (size_t)n * d.P, ACT_RELU, st);
    else copy_on_device(h->raw, h->z2, (size_t)n * d.P * sizeof(floatX));
    l2norm_forward(h->proj, h->norm, h->raw, n, d.P, st);
}

// Backward of the head given h->dz (d loss / d proj) and h->draw (d loss / d raw from losses on raw): adds the
// parameter gradients and d loss / d x into dx (+=).
static void head_backward(Model* m, HeadActs* h, const Tensors<floatX>& w, const Tensors<floatS>& gw, const floatX* x,
                          floatX* dx, int n, Stream st) {
    const Dims& d = m->d;
    const size_t nP = (size_t)n * d.P;
    l2norm_backward(h->da, h->dz, h->raw, h->norm, n, d.P, st);
    add_forward(h->draw, h->draw, h->da, nullptr, nP, st);
    if (m->c.proj_final_relu) activation_backward(h->draw, h->draw, h->z2, nP, ACT_RELU, st);
    matmul_backward(h->da, gw.head2_w, gw.head2_b, h->draw, h->a, w.head2_w, n, d.P, d.P, false, st);
    activation_backward(h->da, h->da, h->z1, nP, ACT_RELU, st);
    matmul_backward(dx, gw.head1_w, gw.head1_b, h->da, x, w.head1_w, n, d.D, d.P, true, st);
}

// Backward of aggregate_forward: dx (n, L, D) = from m->drepr (n, D).
static void aggregate_backward(Model* m, const Tensors<floatX>& w, const Tensors<floatS>& gw, const floatX* x, floatX* dx,
                               int n, Stream st) {
    const Dims& d = m->d;
    AggActs* g = &m->agg;
    const int D = d.D, L = d.L;
    switch (d.agg) {
        case AGG_MEAN: masked_mean_backward(dx, m->drepr, nullptr, n, L, D, st); break;
        case AGG_LAST: masked_mean_backward(dx, m->drepr, g->last_mask, n, L, D, st); break;
        case AGG_ATTENTION: context_attention_backward(dx, gw.agg_w, gw.agg_b, m->drepr, g->att, x, w.agg_w, n, L, D, st); break;
        case AGG_GRU: {
            // dh holds d loss / d h_{l+1}; each step gives d gi_l, d gh_l, and d h_l = pointwise part + d gh_l W_hh
            floatX* dh = g->dh0;
            floatX* dh_prev = g->dh1;
            copy_on_device(dh, m->drepr, (size_t)n * D * sizeof(floatX));
            for (int l = L - 1; l >= 0; l--) {
                const floatX* h = g->h + (size_t)l * n * D;
                const floatX* gh = g->gh + (size_t)l * n * 3 * D;
                gru_cell_backward(g->dgi + (size_t)l * 3 * D, L * 3 * D, g->dgh, l ? dh_prev : nullptr, dh,
                                  g->gates + (size_t)l * n * 3 * D, gh, l ? h : nullptr, n, D, st);
                matmul_backward(l ? dh_prev : nullptr, gw.gru_whh, gw.gru_bhh, g->dgh, h, w.gru_whh, n, D, 3 * D, true, st);
                std::swap(dh, dh_prev);
            }
            matmul_backward(dx, gw.agg_w, gw.agg_b, g->dgi, x, w.agg_w, n * L, D, 3 * D, false, st);
            break;
        }
    }
}

// Backward of encoder_forward from e->de, the gradient of the loss with respect to the encoder output e (the
// commitment gradient already added). The straight-through estimator passes it to the VQ input unchanged (hard
// VQ); the Gumbel quantiser routes it through its soft weights (and into the codebook).
static void encoder_backward(Model* m, EncoderActs* e, int G, const PassKey& key, Stream st) {
    const Dims& d = m->d;
    const Config& c = m->c;
    const int R = G * d.N, D = d.D;
    const float p = key.training ? c.relational_dropout : 0.0f;
    floatX* dres = e->de;                                           // d loss / d (current block output)
    if (d.gumbel) {
        device_memset(e->dB, 0, (size_t)R * D * sizeof(floatX));
        vq_gumbel_backward(e->dB, m->gw.codebook, e->de, e->ysoft, e->idx, encoder_top(m, e), m->mw.codebook,
                           vq_valid_rows(m, e), R, d.K, D, gumbel_temperature(m, key.step), st);
        copy_on_device(e->de, e->dB, (size_t)R * D * sizeof(floatX));
    }
    const Tensors<floatX>& w = m->w;
    const Tensors<floatS>& gw = m->gw;
    for (int l = d.layers - 1; l >= 0; l--) {
        const LayerActs& y = e->layer[l];
        const LayerTensors<floatX>& lw = w.layer[l];
        const LayerTensors<floatS>& lg = gw.layer[l];
        const floatX* x = l ? e->layer[l - 1].out : e->x0;
        // out = mask * (x1 + Dropout(f2))
        dropout_add(e->dx1, nullptr, dres, e->mask, R, D, 0.0f, 0, st);
        dropout_add(e->dA, nullptr, dres, e->mask, R, D, p, pass_seed(c, key, l, 2), st);
        matmul_backward(e->d2, lg.ff2_w, lg.ff2_b, e->dA, y.g, lw.ff2_w, R, 2 * D, D, false, st);
        activation_backward(e->d2, e->d2, y.f1, (size_t)R * 2 * D, ACT_GELU, st);
        matmul_backward(e->dB, lg.ff1_w, lg.ff1_b, e->d2, y.ln2, lw.ff1_w, R, D, 2 * D, false, st);
        layernorm_backward(e->dx1, lg.ln2_w, lg.ln2_b, e->dB, y.x1, lw.ln2_w, y.ln2_mean, y.ln2_rstd, R, D, st);
        // x1 = x + Dropout(o)
        copy_on_device(dres, e->dx1, (size_t)R * D * sizeof(floatX));
        dropout_add(e->dA, nullptr, e->dx1, nullptr, R, D, p, pass_seed(c, key, l, 1), st);
        matmul_backward(e->dB, lg.out_w, lg.out_b, e->dA, y.ao, lw.out_w, R, D, D, false, st);
        object_attention_backward(e->d3, e->dB, y.att, y.qkv, e->adj, e->mask, G, d.N, d.H, d.HD, p, pass_seed(c, key, l, 0), st);
        matmul_backward(e->dB, lg.qkv_w, lg.qkv_b, e->d3, y.ln1, lw.qkv_w, R, D, 3 * D, false, st);
        layernorm_backward(dres, lg.ln1_w, lg.ln1_b, e->dB, x, lw.ln1_w, y.ln1_mean, y.ln1_rstd, R, D, st);
    }
    // x0 = Linear(GELU(Linear(features)))
    matmul_backward(e->dB, gw.proj2_w, gw.proj2_b, dres, e->a1, w.proj2_w, R, D, D, false, st);
    activation_backward(e->dB, e->dB, e->p1, (size_t)R * D, ACT_GELU, st);
    matmul_backward(nullptr, gw.proj1_w, gw.proj1_b, e->dB, e->feat, w.proj1_w, R, d.F, D, false, st);
}

// ----------------------------------------------------------------------------------------------------------
// 6. Codebook maintenance (hard VQ, training mode). After every VQ call the codebook takes one EMA step towards
// the mean of the vectors assigned to each code (statistics summed over the ranks, so every rank keeps the same
// codebook), with Laplace-smoothed counts; every refresh_interval calls the dead codes are re-seeded:
//   refresh_mode=count (default, lucidrains): codes whose EMA count N_k < refresh_threshold take random vectors of
//     the current batch, N_k = threshold, m_k = threshold * x;
//   refresh_mode=fraction (the reference): codes with N_k / sum N <= refresh_threshold take the batch vectors
//     farthest from their codes (cycling), N_k = max(mean N, 1), m_k = x. With K = 768 this re-seeds nearly the
//     whole codebook (at most 1/threshold codes can stay), the collapse the reports saw.
// The counter counts calls the way the reference does: one per encoding of a batch of grids.

static int codebook_refresh(Model* m, Codebook* cb, const EncoderActs* e, int G, Stream st);

static void codebook_update(Model* m, Codebook* cb, const EncoderActs* e, int G, Stream st) {
    const Dims& d = m->d;
    const int R = G * d.N;
    vq_code_stats(cb->counts, cb->sums, e->idx, encoder_top(m, e), vq_valid_rows(m, e), R, d.K, d.D, st);
    dist_sum(cb->counts, d.K, st);
    dist_sum(cb->sums, (size_t)d.K * d.D, st);
    vq_ema_update(cb->codebook, cb->ema_count, cb->ema_sum, cb->counts, cb->sums, d.K, d.D, m->c.ema_decay, m->c.vq_epsilon, st);
    // the reference's calls: the online encoder encodes the context, the target (without a target branch) and two
    // batches per invariance; the target branch one
    cb->calls += cb == &m->cb ? 1 + (m->c.use_target_encoder ? 0 : 1) + 2 * m->d.n_inv : 1;
    if (m->c.refresh_mode != "off" && cb->calls >= m->c.refresh_interval) {
        const int n = codebook_refresh(m, cb, e, G, st);
        if (cb == &m->cb) m->refreshed += n;
    }
}

static int codebook_refresh(Model* m, Codebook* cb, const EncoderActs* e, int G, Stream st) {
    const Dims& d = m->d;
    const Config& c = m->c;
    const int K = d.K, D = d.D, R = G * d.N;
    std::vector<floatS> N(K);
    copy_to_host(N.data(), cb->ema_count, K * sizeof(floatS));
    double total = 0;
    for (int k = 0; k < K; k++) total += N[k];
    const bool fraction = c.refresh_mode == "fraction";
    std::vector<int> dead;
    for (int k = 0; k < K; k++)
        if (fraction ? N[k] / std::max(total, 1.0) <= c.refresh_threshold : N[k] < c.refresh_threshold) dead.push_back(k);
    if (dead.empty()) return 0;                          // as the reference, the counter runs on
    cb->calls = 0;
    // candidates: the quantised rows of every rank (rank-major), with their distance to their code
    std::vector<floatS> dist_local(R);
    std::vector<uint8_t> valid_local(R, 1);
    copy_to_host(dist_local.data(), e->dist, R * sizeof(floatS));
    if (!c.vq_count_padded) copy_to_host(valid_local.data(), e->mask, R);
    const std::vector<uint8_t> dist_all = dist_allgather_host(dist_local.data(), R * sizeof(floatS));
    const std::vector<uint8_t> valid_all = dist_allgather_host(valid_local.data(), R);
    std::vector<std::pair<float, long>> cand;            // (distance, global row)
    for (long r = 0; r < (long)R * dist().world; r++)
        if (valid_all[r]) { float v; memcpy(&v, &dist_all[r * sizeof(floatS)], sizeof v); cand.push_back({v, r}); }
    if (cand.empty()) return 0;
    if (fraction)   // farthest first (ties: lower row first)
        std::stable_sort(cand.begin(), cand.end(), [](const std::pair<float, long>& a, const std::pair<float, long>& b) { return a.first > b.first; });
    const uint64_t key = hash_u64((uint64_t)c.seed, cb == &m->cb ? 1 : 2, (uint64_t)cb->refreshes++);
    const int n = (int)dead.size();
    std::vector<double> vec((size_t)n * D, 0.0);
    std::vector<floatX> row(D);
    for (int i = 0; i < n; i++) {
        const long r = fraction ? cand[i % cand.size()].second : cand[hash_below((uint32_t)cand.size(), key, (uint64_t)i)].second;
        if (r / R != dist().rank) continue;              // the owner supplies the vector, the others add zeros
        copy_to_host(row.data(), encoder_top(m, e) + (size_t)(r % R) * D, D * sizeof(floatX));
        for (int j = 0; j < D; j++) vec[(size_t)i * D + j] = to_float(row[j]);
    }
    dist_sum_host(vec.data(), n * D);
    std::vector<floatS> vs(vec.begin(), vec.end());
    copy_to_device(cb->refresh_codes, dead.data(), n * sizeof(int));
    copy_to_device(cb->refresh_vectors, vs.data(), vs.size() * sizeof(floatS));
    const float new_count = fraction ? (float)std::max(total / K, 1.0) : c.refresh_threshold;
    vq_refresh_codes(cb->codebook, cb->ema_count, cb->ema_sum, cb->refresh_codes, cb->refresh_vectors, n, D, new_count,
                     fraction ? 1.0f : c.refresh_threshold, st);
    return n;
}

// ----------------------------------------------------------------------------------------------------------
// 5. Losses and backward. One micro-batch of Bg samples (B on this rank). The online encoder runs once over all
// of its grids, laid out in sections of grids:
//   context sections s = 0..n_inv, B L grids each: the context, then its copy under each invariance perturbation
//   target sections: [the target, without a target branch], then the target under each perturbation, B grids each
// so the context aggregator runs once over the (1 + n_inv) B contexts. Losses (each a mean over the global
// micro-batch, as the reference's MSE/cross-entropy means):
//   infonce     CE of c_i against [its target t_i | the other targets | the queue], temperature tau     (InfoNCE)
//   mse         |c - t|^2 mean (objective=sigreg, L-JEPA)
//   sigreg      SIGReg of the context projections (raw with sigreg_mode=lejepa; normalised, deprecated variant,
//               with sigreg_mode=reference)
//   inv_*       w [MSE(ctx_repr', ctx_repr) + MSE(tgt_repr', tgt_repr)], reprs before the head
//   relational  on the post-VQ object embeddings of the context and target grids
//   commitment  beta |x - sg(q)|^2 over the quantised rows (added unless vq_loss_in_objective=0)
// The step's objective is the mean over its grad_accum micro-batches.

static int grid_ctx(const Model* m, int s) { return s * m->d.B * m->d.L; }
static int grid_tgt(const Model* m, int t) { return m->n_agg * m->d.L + t * m->d.B; }
static int tgt_section_inv(const Model* m, int i) { return i + (m->c.use_target_encoder ? 0 : 1); }

typedef struct {
    ObjectBatch ctx, tgt;                 // this rank's B samples
    ObjectBatch inv_ctx[3], inv_tgt[3];   // their perturbed copies, one per active invariance
    float inv_weight[3];
    int inv_kind[3];                      // LOSS_INV_COLOR / _TRANSLATION / _SYMMETRY
    double n_valid_global;                // valid objects over every online grid of the global micro-batch
} MicroBatch;

// Copies the object tensors of a section of grids to the encoder's input arrays.
static void upload_grids(EncoderActs* e, const Dims& d, int g0, const ObjectBatch& ob) {
    const size_t N = d.N, F = d.F;
    std::vector<floatX> f(ob.features.size());
    for (size_t i = 0; i < f.size(); i++) f[i] = from_float<floatX>(ob.features[i]);
    copy_to_device(e->feat + (size_t)g0 * N * F, f.data(), f.size() * sizeof(floatX));
    copy_to_device(e->mask + (size_t)g0 * N, ob.mask.data(), ob.mask.size());
    copy_to_device(e->adj + (size_t)g0 * N * N, ob.adjacency.data(), ob.adjacency.size());
}

static void upload_micro_batch(Model* m, const MicroBatch& mb) {
    const Dims& d = m->d;
    upload_grids(&m->enc, d, grid_ctx(m, 0), mb.ctx);
    for (int i = 0; i < d.n_inv; i++) {
        upload_grids(&m->enc, d, grid_ctx(m, 1 + i), mb.inv_ctx[i]);
        upload_grids(&m->enc, d, grid_tgt(m, tgt_section_inv(m, i)), mb.inv_tgt[i]);
    }
    if (m->c.use_target_encoder) upload_grids(&m->tenc, d, 0, mb.tgt);
    else upload_grids(&m->enc, d, grid_tgt(m, 0), mb.tgt);
}

static floatS* device_scalar(Model* m, int i) { return m->losses + LOSS_COUNT + i; }   // see acts_layout

// With several ranks SIGReg's statistics are means over the global micro-batch: the ranks' c and s (means over
// their B rows) are averaged, and the loss recomputed from them with N = Bg (the backward reads the averaged cs).
static void sigreg_global_stats(Model* m, SigregVariant variant, Stream st) {
    const int M = m->c.sigreg_slices, n = M * 2 * SIGREG_POINTS, W = dist().world;
    std::vector<floatS> cs(n);
    copy_to_host(cs.data(), m->sig_cs, n * sizeof(floatS));
    std::vector<double> sum(cs.begin(), cs.end());
    dist_sum_host(sum.data(), n);
    for (int i = 0; i < n; i++) cs[i] = (floatS)(sum[i] / W);
    copy_to_device(m->sig_cs, cs.data(), n * sizeof(floatS));
    double total = 0;
    for (int s = 0; s < M; s++) total += sigreg_slice_value(&cs[(size_t)s * 2 * SIGREG_POINTS], m->d.Bg, variant);
    const floatS loss = (floatS)(total / M);
    copy_to_device(m->losses + LOSS_SIGREG, &loss, sizeof loss);
}

// Forward of the whole micro-batch and its losses (m->losses); with `with_grad` also the backward, adding the
// parameter gradients (scaled by 1 / grad_accum) into m->grads.
static void microbatch_forward_backward(Model* m, const MicroBatch& mb, const PassKey& key, bool with_grad, Stream st) {
    const Config& c = m->c;
    const Dims& d = m->d;
    const int B = d.B, Bg = d.Bg, D = d.D, P = d.P, L = d.L, N = d.N;
    const float accum = with_grad ? 1.0f / c.grad_accum_steps : 0.0f;   // d objective / d micro-batch loss
    device_memset(m->losses, 0, LOSS_COUNT * sizeof(floatS));
    upload_micro_batch(m, mb);

    // --- forward: online encoder, target branch, aggregation, heads
    floatS* gumbel_cb = d.gumbel ? m->mw.codebook : nullptr;
    encoder_forward(m, &m->enc, m->w, gumbel_cb, &m->cb, m->G_online, key, st);
    const floatX* tgt_repr;           // (B, D) the target representations the losses compare with
    const floatX* tgt_e;              // (B N, D) the target's object embeddings (relational loss)
    if (c.use_target_encoder) {
        PassKey tkey = key;
        tkey.salt ^= 0x746172676574ull;   // the target branch draws its own dropout
        encoder_forward(m, &m->tenc, m->tw, d.gumbel ? m->tmw.codebook : nullptr, &m->tcb, B, tkey, st);
        tgt_repr = m->tenc.pooled;
        tgt_e = m->tenc.e;
    } else {
        tgt_repr = m->enc.pooled + (size_t)grid_tgt(m, 0) * D;
        tgt_e = m->enc.e + (size_t)grid_tgt(m, 0) * N * D;
    }
    aggregate_forward(m, m->w, m->enc.pooled, m->n_agg, st);
    const floatX* ctx_repr = m->agg.repr;                                   // rows 0..B-1: the unperturbed context
    head_forward(m, &m->head_c, m->w, ctx_repr, B, st);
    head_forward(m, &m->head_t, c.use_target_encoder ? m->tw : m->w, tgt_repr, B, st);

    // every rank's target projections, in global slot order (the InfoNCE candidates and the queue entries)
    dist_allgather(m->t_rank, m->head_t.proj, (size_t)B * P, st);
    gather_rows(m->t_all, m->t_rank, m->slot_of_row, Bg, P, st);

    // --- losses
    const floatX* c_proj = m->head_c.proj;
    const bool lejepa = d.lejepa_sigreg;
    const floatX* sig_in = lejepa ? m->head_c.raw : c_proj;                 // SIGReg's input
    if (d.infonce) {
        infonce_forward(m->losses + LOSS_INFONCE, m->probs, c_proj, m->t_all, m->queue, m->pos, m->mw.log_tau, B, Bg,
                        m->queue_fill, P, c.temperature_min, c.temperature_max, 1.0f / Bg, st);
    } else {   // L-JEPA: raw projections as LeJEPA (lejepa), the normalised ones as the reference
        mse_forward(m->losses + LOSS_MSE, lejepa ? m->head_c.raw : c_proj, lejepa ? m->head_t.raw : m->head_t.proj,
                    (size_t)B * P, 1.0f / ((float)Bg * P), st);
    }
    const SigregVariant variant = lejepa ? SIGREG_LEJEPA : SIGREG_DEPRECATED;
    if (c.sigreg_weight > 0) {
        if (m->sig_dirs_step != key.step) {   // the slices of this step (the same for its micro-batches and ranks)
            std::vector<floatS> A((size_t)P * c.sigreg_slices);
            sigreg_directions_ref(A.data(), P, c.sigreg_slices, hash_u64((uint64_t)c.seed, 0x736967726567ull, (uint64_t)key.step));
            copy_to_device(m->sig_dirs, A.data(), A.size() * sizeof(floatS));
            m->sig_dirs_step = key.step;
        }
        sigreg_forward(m->losses + LOSS_SIGREG, nullptr, m->sig_cs, sig_in, m->sig_dirs, B, P, c.sigreg_slices, variant, st);
        if (dist().world > 1) sigreg_global_stats(m, variant, st);
    }
    const int tgt_inv0 = tgt_section_inv(m, 0);
    for (int i = 0; i < d.n_inv; i++) {
        floatS* loss = m->losses + mb.inv_kind[i];
        const float scale = mb.inv_weight[i] / ((float)Bg * D);
        mse_forward(loss, m->agg.repr + (size_t)(1 + i) * B * D, ctx_repr, (size_t)B * D, scale, st);
        mse_forward(loss, m->enc.pooled + (size_t)grid_tgt(m, tgt_inv0 + i) * D, tgt_repr, (size_t)B * D, scale, st);
    }
    const float rel_t = 1.0f / ((float)Bg * N * N), rel_s = 1.0f / ((float)Bg * L * N * N);
    const bool relational = d.infonce && (c.rel_weight > 0 || c.rel_self_weight > 0);
    const uint8_t* tgt_mask = c.use_target_encoder ? m->tenc.mask : m->enc.mask + (size_t)grid_tgt(m, 0) * N;
    const uint8_t* tgt_adj = c.use_target_encoder ? m->tenc.adj : m->enc.adj + (size_t)grid_tgt(m, 0) * N * N;
    if (relational)
        relational_loss_forward(m->losses + LOSS_REL, m->enc.e, m->enc.adj, m->enc.mask, tgt_e, tgt_adj, tgt_mask, B, L, N, D,
                                c.rel_weight, c.rel_self_weight, rel_t, rel_s, st);
    const bool commit = d.vq && !d.gumbel && c.commitment_cost > 0;
    const int R = m->G_online * N;
    const float commit_scale = mb.n_valid_global > 0 ? (float)(c.commitment_cost / (mb.n_valid_global * D)) : 0.0f;
    if (commit)
        vq_commitment_forward(m->losses + LOSS_COMMIT, encoder_top(m, &m->enc), m->enc.e, vq_valid_rows(m, &m->enc), R, D,
                              commit_scale, st);
    if (!with_grad) return;

    // --- backward: projections -> heads -> representations -> aggregation -> encoder
    HeadActs* hc = &m->head_c;
    HeadActs* ht = &m->head_t;
    floatX* dt = c.use_target_encoder ? nullptr : m->dt_all;
    device_memset(hc->draw, 0, (size_t)B * P * sizeof(floatX));
    device_memset(ht->draw, 0, (size_t)B * P * sizeof(floatX));
    if (d.infonce) {
        infonce_backward(hc->dz, dt, m->gw.log_tau, m->probs, c_proj, m->t_all, m->queue, m->pos, m->mw.log_tau, B, Bg,
                         m->queue_fill, P, c.temperature_min, c.temperature_max, 1.0f / Bg, accum, st);
        if (dt) {   // every rank's rows hold gradient for every target: sum, then keep this rank's slots
            dist_sum(m->dt_all, (size_t)Bg * P, st);
            gather_rows(ht->dz, m->dt_all, m->pos, B, P, st);
        }
    } else {
        device_memset(hc->dz, 0, (size_t)B * P * sizeof(floatX));
        device_memset(ht->dz, 0, (size_t)B * P * sizeof(floatX));
        // lejepa: the gradient is on raw (draw), else on the normalised projection (dz holds d proj until the head)
        mse_backward(lejepa ? hc->draw : hc->dz, c.use_target_encoder ? nullptr : (lejepa ? ht->draw : ht->dz),
                     lejepa ? hc->raw : c_proj, lejepa ? ht->raw : ht->proj, (size_t)B * P, 1.0f / ((float)Bg * P), accum, st);
    }
    if (c.sigreg_weight > 0) {
        // the deprecated variant has no factor N, so its per-row derivative carries 1/N of the rows it walks (B):
        // with several ranks the loss is over Bg rows
        floatS dsig = c.sigreg_weight * accum * (variant == SIGREG_DEPRECATED ? (float)B / Bg : 1.0f);
        copy_to_device(device_scalar(m, 0), &dsig, sizeof dsig);
        sigreg_backward(m->dsig, sig_in, m->sig_dirs, m->sig_cs, device_scalar(m, 0), B, P, c.sigreg_slices, variant, st);
        floatX* into = lejepa ? hc->draw : hc->dz;
        add_forward(into, into, m->dsig, nullptr, (size_t)B * P, st);
    }
    device_memset(m->drepr, 0, (size_t)m->n_agg * D * sizeof(floatX));
    device_memset(m->dpooled, 0, (size_t)m->G_online * D * sizeof(floatX));
    head_backward(m, hc, m->w, m->gw, ctx_repr, m->drepr, B, st);
    if (!c.use_target_encoder) head_backward(m, ht, m->w, m->gw, tgt_repr, m->dpooled + (size_t)grid_tgt(m, 0) * D, B, st);
    for (int i = 0; i < d.n_inv; i++) {
        const float scale = mb.inv_weight[i] / ((float)Bg * D);
        mse_backward(m->drepr + (size_t)(1 + i) * B * D, m->drepr, m->agg.repr + (size_t)(1 + i) * B * D, ctx_repr,
                     (size_t)B * D, scale, accum, st);
        floatX* dtgt = c.use_target_encoder ? nullptr : m->dpooled + (size_t)grid_tgt(m, 0) * D;
        mse_backward(m->dpooled + (size_t)grid_tgt(m, tgt_inv0 + i) * D, dtgt,
                     m->enc.pooled + (size_t)grid_tgt(m, tgt_inv0 + i) * D, tgt_repr, (size_t)B * D, scale, accum, st);
    }
    aggregate_backward(m, m->w, m->gw, m->enc.pooled, m->dpooled, m->n_agg, st);
    // encoder: pooling, then the relational loss and the commitment add into the same object gradients
    EncoderActs* e = &m->enc;
    masked_mean_backward(e->de, m->dpooled, e->mask, m->G_online, N, D, st);
    if (relational)
        relational_loss_backward(e->de, c.use_target_encoder ? nullptr : e->de + (size_t)grid_tgt(m, 0) * N * D, e->e, e->adj,
                                 e->mask, tgt_e, tgt_adj, tgt_mask, B, L, N, D, c.rel_weight, c.rel_self_weight, rel_t, rel_s,
                                 accum, st);
    if (commit && c.vq_loss_in_objective)
        vq_commitment_backward(e->de, encoder_top(m, e), e->e, vq_valid_rows(m, e), R, D, commit_scale, accum, st);
    encoder_backward(m, e, m->G_online, key, st);
}

// Model FLOPs of one micro-batch on this rank (forward + backward, 2 per multiply-add; a backward costs two
// forwards), for the MFU. Counted: the encoder per object row (feature MLP 2FD + 2D^2; per relational block qkv
// 6D^2, out 2D^2, FFN 8D^2, attention over the N slots 4ND; the nearest-code search 2KD, forward only), the
// GRU, the projection heads, the InfoNCE logits against the micro-batch and the filled queue, and SIGReg's
// slice projections. The target branch runs forward only. Element-wise work (norms, activations) is not counted.
static double micro_batch_flops(const Model* m) {
    const Dims& d = m->d;
    const Config& c = m->c;
    const double D = d.D, N = d.N, P = d.P, B = d.B;
    const double encoder_row = 2 * d.F * D + 2 * D * D + d.layers * (16 * D * D + 4 * N * D);
    const double vq_row = d.gumbel ? 3 * 2 * d.K * D : d.vq ? 2 * d.K * D : 0;   // Gumbel: trained codebook
    double flops = (double)m->G_online * N * (3 * encoder_row + vq_row);
    if (c.use_target_encoder) flops += B * N * (encoder_row + vq_row);
    if (d.agg == AGG_GRU) flops += 3.0 * m->n_agg * d.L * 2 * (2 * D * 3 * D);     // W_ih x and W_hh h per step
    const double head_row = 2 * D * P + 2 * P * P;
    flops += 3 * B * head_row + (c.use_target_encoder ? 1 : 3) * B * head_row;
    if (d.infonce) flops += 3 * B * 2 * (d.Bg + m->queue_fill) * P;
    if (c.sigreg_weight > 0) flops += 3 * B * 2 * P * c.sigreg_slices;
    return flops;
}

// ----------------------------------------------------------------------------------------------------------
// 7. Update (common/optimizer.h): the reference's LambdaLR (linear warm-up (s + 1) / warmup, then cosine to
// min_lr_scale), global-norm clipping (the pre-clip norm is logged), Adam with decoupled weight decay (AdamW; the
// reference's torch Adam adds wd * w to the gradient instead, which at wd = 1e-6 is the same step to 1e-6
// relative), then the EMA target branch (the network group) and the queue.

// One optimizer step (step counted from 0) on the gradients summed over the ranks; returns the pre-clip norm.
static double model_update(Model* m, int step, int total, float* lr_out, Stream st) {
    const Config& c = m->c;
    params_grad_sum_start(&m->p, GROUP_NETWORK, GROUP_TEMPERATURE + 1, st);
    dist_sum_wait(st);
    const double norm = sqrt(params_grad_norm_squared(&m->p, GROUP_NETWORK, GROUP_TEMPERATURE + 1, st));
    const Schedule schedule = {SCHEDULE_LAMBDA, c.lr, c.warmup_steps, total, c.min_lr_scale};
    *lr_out = lr_schedule(schedule, step);
    const AdamConfig adamw = {false, c.beta1, c.beta2, c.adam_eps, c.weight_decay};
    // then target <- decay * target + (1 - decay) * network, on the fp32 values, and its compute copy
    params_update(&m->p, adamw, *lr_out, step + 1, clip_scale(norm, c.max_norm), st);
    return norm;
}

// Writes `rows` new rows into a ring buffer of `capacity` rows at *ptr (of more rows than fit, the last ones), as
// at most two contiguous copies: copy(first ring row, first source row, number of rows).
template <typename Copy>
static void ring_write(int capacity, int* ptr, int* fill, int rows, Copy copy) {
    const int skip = std::max(0, rows - capacity);
    rows -= skip;
    const int first = std::min(rows, capacity - *ptr);
    copy(*ptr, skip, first);
    if (rows > first) copy(0, skip + first, rows - first);
    *ptr = (*ptr + rows) % capacity;
    *fill = std::min(capacity, *fill + rows);
}

// Appends the step's target projections (all micro-batches, global slot order) to the FIFO queue (fp32).
static void queue_push(Model* m, int rows, Stream st) {
    const size_t P = m->d.P;
    if (m->c.queue_size == 0) return;
    ring_write(m->c.queue_size, &m->queue_ptr, &m->queue_fill, rows, [&](int dst, int src, int n) {
        convert_to_floatS(m->queue + dst * P, m->pending + src * P, n * P, st);
    });
}

// ----------------------------------------------------------------------------------------------------------
// 8. Data. Examples (context, target) from the task file (common/jepa_data.h), shuffled every epoch; a step's
// grad_accum micro-batches of Bg examples follow in order; this rank encodes slots rank, rank + W, ... Every
// random choice is keyed by (seed, step, micro-batch, slot) or by the example, so a resumed run sees the same data.

typedef struct {
    ArcTaskFile file;
    std::vector<JepaExample> examples;
    ContextMode mode;
    JepaAugment aug;
} DataSet;

static std::vector<int> epoch_order(int n, uint64_t seed, int epoch) {
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    Rng r = rng_make(hash_u64(seed, 0x65706f6368ull, (uint64_t)epoch));
    for (int i = n - 1; i > 0; i--) std::swap(order[i], order[(int)(rng_u64(&r) % (uint64_t)(i + 1))]);
    return order;
}

// Fills mb with this rank's samples of the global micro-batch `ex` (Bg examples, global slot order) and their
// invariance copies; `training` applies the augmentations.
static void make_micro_batch(Model* m, const DataSet& ds, const std::vector<JepaExample>& ex, const std::vector<uint64_t>& keys,
                             const PassKey& key, bool training, MicroBatch* mb) {
    const Config& c = m->c;
    const Dims& d = m->d;
    std::vector<JepaExample> mine(d.B);
    std::vector<uint64_t> my_keys(d.B);
    for (int b = 0; b < d.B; b++) {
        mine[b] = ex[dist().rank + b * dist().world];
        my_keys[b] = keys[dist().rank + b * dist().world];
    }
    JepaAugment none = {};
    jepa_fill(&mb->ctx, &mb->tgt, ds.file, mine.data(), d.B, d.L, ds.mode, training ? ds.aug : none, (uint64_t)c.seed,
              my_keys.data());
    int i = 0;
    const uint64_t base = hash_u64((uint64_t)c.seed, 0x696e76ull, ((uint64_t)key.step << 20) | (uint64_t)key.micro, key.training);
    auto add = [&](int kind, float weight) {   // context and target get independent draws, as the reference
        mb->inv_ctx[i] = mb->ctx;
        mb->inv_tgt[i] = mb->tgt;
        const uint64_t sc = jepa_perturb_seed(base, 0, kind, JEPA_ROLE_CONTEXT), stg = jepa_perturb_seed(base, 0, kind, JEPA_ROLE_TARGET);
        if (kind == LOSS_INV_COLOR) { perturb_color(&mb->inv_ctx[i], sc); perturb_color(&mb->inv_tgt[i], stg); }
        if (kind == LOSS_INV_TRANSLATION) {
            perturb_translation(&mb->inv_ctx[i], c.inv_translation_delta, sc);
            perturb_translation(&mb->inv_tgt[i], c.inv_translation_delta, stg);
        }
        if (kind == LOSS_INV_SYMMETRY) { perturb_symmetry(&mb->inv_ctx[i], sc); perturb_symmetry(&mb->inv_tgt[i], stg); }
        mb->inv_kind[i] = kind;
        mb->inv_weight[i] = weight;
        i++;
    };
    if (d.infonce) {   // the order of make_dims's count
        if (c.inv_color > 0) add(LOSS_INV_COLOR, c.inv_color);
        if (c.inv_translation > 0 && c.inv_translation_delta > 0) add(LOSS_INV_TRANSLATION, c.inv_translation);
        if (c.inv_symmetry > 0) add(LOSS_INV_SYMMETRY, c.inv_symmetry);
    }
    // the commitment loss is a mean over the quantised rows of the whole micro-batch
    double n_valid = 0;
    auto count = [&](const ObjectBatch& ob) { for (uint8_t v : ob.mask) n_valid += c.vq_count_padded ? 1 : v; };
    count(mb->ctx);
    if (!c.use_target_encoder) count(mb->tgt);
    for (int j = 0; j < i; j++) { count(mb->inv_ctx[j]); count(mb->inv_tgt[j]); }
    dist_sum_host(&n_valid, 1);
    mb->n_valid_global = n_valid;
}

// ----------------------------------------------------------------------------------------------------------
// 9. Diagnostics (reference section 8, DESIGN decision 6), every diag_every steps on the last diag_window context
// and target projections: variance, isotropy, effective rank from the covariance eigenvalues (the reference's
// number) and from the singular values (RankMe), the Gaussian score; codebook usage over the objects quantised
// since the last report (active codes, share of K, perplexity) and the codes re-seeded.

static void ring_push(Model* m, const floatX* c_proj, const floatX* t_proj, int rows, Stream st) {
    const size_t P = m->d.P;
    ring_write(m->c.diag_window, &m->ring_ptr, &m->ring_fill, rows, [&](int dst, int src, int n) {
        copy_on_device(m->ring_c + dst * P, c_proj + src * P, n * P * sizeof(floatX));
        copy_on_device(m->ring_t + dst * P, t_proj + src * P, n * P * sizeof(floatX));
    });
}

static std::vector<float> ring_rows(const floatX* ring, int rows, int P) {
    std::vector<floatX> x((size_t)rows * P);
    copy_to_host(x.data(), ring, x.size() * sizeof(floatX));
    return std::vector<float>(x.begin(), x.end());
}

static std::string diagnostics_line(Model* m) {
    const int P = m->d.P, n = m->ring_fill;
    const EmbeddingMetrics mc = embedding_metrics(ring_rows(m->ring_c, n, P).data(), n, P);
    const EmbeddingMetrics mt = embedding_metrics(ring_rows(m->ring_t, n, P).data(), n, P);
    char buf[1024];
    int len = snprintf(buf, sizeof buf,
                       "rows=%d ctx_erank_rankme=%.3f ctx_erank_cov=%.3f tgt_erank_rankme=%.3f tgt_erank_cov=%.3f "
                       "ctx_variance=%.3e tgt_variance=%.3e ctx_isotropy=%.3e ctx_gaussian=%.4f tgt_gaussian=%.4f",
                       n, mc.erank_rankme, mc.erank_cov, mt.erank_rankme, mt.erank_cov, mc.variance, mt.variance,
                       mc.isotropy, mc.gaussian_score, mt.gaussian_score);
    if (m->d.vq) {
        int active = 0;
        for (double u : m->usage) active += u > 0;
        std::vector<float> u(m->usage.begin(), m->usage.end());
        snprintf(buf + len, sizeof buf - len, " vq_active=%d vq_usage=%.4f vq_perplexity=%.2f vq_refreshed=%ld", active,
                 (double)active / m->d.K, codebook_perplexity(u.data(), m->d.K), m->refreshed);
        std::fill(m->usage.begin(), m->usage.end(), 0.0);
        m->refreshed = 0;
    }
    return buf;
}

// ----------------------------------------------------------------------------------------------------------
// 10. Checkpoints and exports. Checkpoint sections (common/checkpoint.h): weights (fp32), adam_m, adam_v, target
// (the EMA branch, fp32), per codebook its codebook / ema_count / ema_sum, the queue, and state: step, epoch,
// best validation loss, epochs without improvement, the queue and refresh counters. Written as latest.bin every
// epoch and kept as epoch_<e>.bin every checkpoint_interval epochs.

typedef struct {
    int step, epoch;
    double best_val;
    int wait;
} TrainState;

static std::vector<floatS> download_floatS(const floatS* p, size_t n) {
    std::vector<floatS> v(n);
    copy_to_host(v.data(), p, n * sizeof(floatS));
    return v;
}

static void checkpoint_save(Model* m, const TrainState& ts, const std::string& path) {
    const Dims& d = m->d;
    SectionList sections;
    params_sections(m->p, &sections);
    auto add = [&](const char* name, const floatS* p, size_t n) {
        section_add(&sections, name, download_floatS(p, n).data(), n * sizeof(floatS));
    };
    if (d.vq && !d.gumbel) {
        const size_t KD = (size_t)d.K * d.D;
        add("codebook", m->cb.codebook, KD); add("codebook_count", m->cb.ema_count, d.K); add("codebook_sum", m->cb.ema_sum, KD);
        add("target_codebook", m->tcb.codebook, KD); add("target_codebook_count", m->tcb.ema_count, d.K);
        add("target_codebook_sum", m->tcb.ema_sum, KD);
    }
    add("queue", m->queue, (size_t)std::max(1, m->c.queue_size) * d.P);
    int64_t state[12] = {ts.step, ts.epoch, 0, ts.wait, m->queue_ptr, m->queue_fill, m->cb.calls, m->cb.refreshes,
                         m->tcb.calls, m->tcb.refreshes, 0, 0};
    memcpy(&state[2], &ts.best_val, sizeof(double));
    section_add(&sections, "state", state, sizeof state);
    checkpoint_write(path, ts.step, args_dump(config_specs(&m->c)), sections);
}

// Continues from checkpoint sections, every value validated against this run (sizes, ranges, finiteness) before
// it is used: the queue position indexes the queue, the step indexes the data order.
static void checkpoint_load(Model* m, TrainState* ts, const char* path, const Checkpoint& ck) {
    const Dims& d = m->d;
    const Sections& s = ck.sections;
    int64_t state[12];
    section_get(s, path, "state", state, 12);
    const int Q = std::max(1, m->c.queue_size);
    section_check_range(path, "the step", state[0], ck.step, ck.step);          // the header's
    section_check_range(path, "the epoch", state[1], 0, state[0]);              // an epoch has at least one step
    section_check_range(path, "the epochs without improvement", state[3], 0, state[1]);
    section_check_range(path, "the queue fill", state[5], 0, m->c.queue_size);
    // the queue is a ring: until it is full, the next position is the fill
    section_check_range(path, "the queue position", state[4], state[5] < Q ? state[5] : 0, state[5] < Q ? state[5] : Q - 1);
    for (int i = 6; i < 10; i++) section_check_range(path, "a codebook counter", state[i], 0, INT_MAX);
    for (int i = 10; i < 12; i++) section_check_range(path, "a reserved state field", state[i], 0, 0);
    double best_val;
    memcpy(&best_val, &state[2], sizeof(double));
    if (std::isnan(best_val) || best_val == -INFINITY)
        fatal("%s: the best validation loss is %g, expected a number or +inf (corrupt checkpoint)", path, best_val);
    params_load_sections(&m->p, s, path, state[0]);
    std::vector<floatS> buf;
    auto get = [&](const char* name, floatS* dst, size_t n, bool non_negative) {
        buf.resize(n);
        section_get(s, path, name, buf.data(), n);
        section_check_finite(path, name, buf.data(), n, non_negative);
        copy_to_device(dst, buf.data(), n * sizeof(floatS));
    };
    if (d.vq && !d.gumbel) {
        const size_t KD = (size_t)d.K * d.D;
        get("codebook", m->cb.codebook, KD, false); get("codebook_count", m->cb.ema_count, d.K, true);
        get("codebook_sum", m->cb.ema_sum, KD, false);
        get("target_codebook", m->tcb.codebook, KD, false); get("target_codebook_count", m->tcb.ema_count, d.K, true);
        get("target_codebook_sum", m->tcb.ema_sum, KD, false);
    }
    get("queue", m->queue, (size_t)Q * d.P, false);
    ts->step = (int)state[0]; ts->epoch = (int)state[1]; ts->wait = (int)state[3];
    ts->best_val = best_val;
    m->queue_ptr = (int)state[4]; m->queue_fill = (int)state[5];
    m->cb.calls = state[6]; m->cb.refreshes = state[7]; m->tcb.calls = state[8]; m->tcb.refreshes = state[9];
}

// resume=latest's candidates, newest first: latest.bin, then epoch_<e>.bin by descending epoch (those that exist).
static std::vector<std::string> latest_checkpoints(const std::string& dir) {
    std::vector<std::string> paths;
    if (file_exists((dir + "/latest.bin").c_str())) paths.push_back(dir + "/latest.bin");
    std::vector<int> epochs;
    if (DIR* dp = opendir(dir.c_str())) {
        while (struct dirent* e = readdir(dp)) {
            int epoch, n = 0;
            if (sscanf(e->d_name, "epoch_%d.bin%n", &epoch, &n) == 1 && n == (int)strlen(e->d_name) && epoch >= 0) epochs.push_back(epoch);
        }
        closedir(dp);
    }
    std::sort(epochs.rbegin(), epochs.rend());
    for (int e : epochs) paths.push_back(dir + "/epoch_" + std::to_string(e) + ".bin");
    return paths;
}

// The encoder, aggregator, head and codebook as safetensors with the reference's state_dict names (q/k/v split).
static void export_safetensors(Model* m, const std::string& path) {
    const Dims& d = m->d;
    const std::vector<floatS> w = params_values(m->p);
    SafetensorsWriter sw;
    for (const TensorInfo& t : m->p.table.tensors) {
        const floatS* p = w.data() + t.offset;
        const size_t qkv = t.name.find("qkv_proj");
        if (qkv == std::string::npos) { safetensors_add_f32(&sw, t.name, t.shape, p); continue; }
        const bool weight = t.name.compare(t.name.size() - 7, 7, ".weight") == 0;
        const size_t part = weight ? (size_t)d.D * d.D : (size_t)d.D;
        const char* names[3] = {"q_proj", "k_proj", "v_proj"};
        for (int i = 0; i < 3; i++) {
            std::string name = t.name;
            name.replace(qkv, 8, names[i]);
            safetensors_add_f32(&sw, name, weight ? std::vector<int64_t>{d.D, d.D} : std::vector<int64_t>{d.D}, p + i * part);
        }
    }
    if (d.vq && !d.gumbel) {
        const std::vector<floatS> cb = download_floatS(m->cb.codebook, (size_t)d.K * d.D);
        const std::vector<floatS> n = download_floatS(m->cb.ema_count, d.K);
        const std::vector<floatS> s = download_floatS(m->cb.ema_sum, (size_t)d.K * d.D);
        safetensors_add_f32(&sw, "object_encoder.vq.embedding.weight", {d.K, d.D}, cb.data());
        safetensors_add_f32(&sw, "object_encoder.vq._ema_cluster_size", {d.K}, n.data());
        safetensors_add_f32(&sw, "object_encoder.vq._ema_w", {d.K, d.D}, s.data());
    }
    safetensors_add_meta(&sw, "config", args_dump(config_specs(&m->c)));
    safetensors_add_meta(&sw, "format", "arc.cu train_jepa");
    safetensors_write(sw, path);
}

// Validation: the same losses in evaluation mode (no dropout, no codebook updates unless vq_train_in_eval, no
// queue updates) over the full micro-batches of the validation examples; returns the mean objective.
static double objective_of(const Model* m, const double* terms) {
    const Config& c = m->c;
    double total = terms[LOSS_INFONCE] + terms[LOSS_MSE] + c.sigreg_weight * terms[LOSS_SIGREG] + terms[LOSS_INV_COLOR] +
                   terms[LOSS_INV_TRANSLATION] + terms[LOSS_INV_SYMMETRY] + terms[LOSS_REL] + terms[LOSS_REL_SELF];
    if (c.vq_loss_in_objective) total += terms[LOSS_COMMIT];
    return total;
}

// The micro-batch's loss terms over all ranks: each rank holds its rows' share of every mean, except SIGReg,
// which every rank computed from the global statistics.
static void download_losses(Model* m, double* terms) {
    floatS l[LOSS_COUNT];
    copy_to_host(l, m->losses, sizeof l);
    for (int i = 0; i < LOSS_COUNT; i++) terms[i] = l[i];
    const double sigreg = terms[LOSS_SIGREG];
    dist_sum_host(terms, LOSS_COUNT);
    terms[LOSS_SIGREG] = sigreg;
}

static double validate(Model* m, const DataSet& val, int step, double* terms_out) {
    const int Bg = m->d.Bg, n_batches = (int)val.examples.size() / Bg;
    double sums[LOSS_COUNT] = {0};
    for (int b = 0; b < n_batches; b++) {
        std::vector<JepaExample> ex(val.examples.begin() + (size_t)b * Bg, val.examples.begin() + (size_t)(b + 1) * Bg);
        std::vector<uint64_t> keys(Bg);
        for (int g = 0; g < Bg; g++) keys[g] = hash_u64((uint64_t)m->c.seed, 0x76616cull, (uint64_t)b * Bg + g);
        MicroBatch mb;
        const PassKey key = {step, b, false, 0};
        make_micro_batch(m, val, ex, keys, key, false, &mb);
        microbatch_forward_backward(m, mb, key, false, Stream());
        double t[LOSS_COUNT];
        download_losses(m, t);
        for (int i = 0; i < LOSS_COUNT; i++) sums[i] += t[i] / n_batches;
    }
    for (int i = 0; i < LOSS_COUNT; i++) terms_out[i] = sums[i];
    return objective_of(m, sums);
}

static std::string terms_string(const double* t) {
    std::string s;
    char buf[64];
    for (int i = 0; i < LOSS_COUNT; i++) {
        snprintf(buf, sizeof buf, " %s=%.6f", LOSS_NAMES[i], t[i]);
        s += buf;
    }
    return s;
}

// export_codes: the code of every object of every grid of codes_data, one JSON line per grid:
//   {"task": "...", "pair": i, "grid": "input"|"output", "objects": n, "codes": [k_0, ..., k_{n-1}]}
// (objects in the order of common/objects.h: by area, then discovery order).
static void export_codes(Model* m, const std::string& data_path, const std::string& out_path) {
    const Dims& d = m->d;
    if (!d.vq) fatal("export_codes: the model has no codebook (vq_enabled=0)");
    const ArcTaskFile f = arc_tasks_load(data_path.c_str());
    struct GridRef { int task, pair; bool output; GridView g; };
    std::vector<GridRef> grids;
    for (int t = 0; t < (int)f.tasks.size(); t++)
        for (int p = 0; p < (int)f.tasks[t].pairs.size(); p++) {
            grids.push_back({t, p, false, f.tasks[t].pairs[p].input});
            if (grid_known(f.tasks[t].pairs[p].output)) grids.push_back({t, p, true, f.tasks[t].pairs[p].output});
        }
    const int chunk = m->G_online, N = d.N;
    std::string text;
    ObjectSet os;
    for (size_t g0 = 0; g0 < grids.size(); g0 += chunk) {
        const int G = (int)std::min<size_t>(chunk, grids.size() - g0);
        ObjectBatch ob;
        ob.G = G; ob.N = N;
        ob.features.assign((size_t)G * N * d.F, 0.0f); ob.mask.assign((size_t)G * N, 0); ob.adjacency.assign((size_t)G * N * N, 0);
        std::vector<int> n_obj(G);
        for (int g = 0; g < G; g++) {
            const GridView& v = grids[g0 + g].g;
            grid_objects(v.cells, v.rows, v.cols, N, &os);
            std::copy(os.features.begin(), os.features.end(), ob.features.begin() + (size_t)g * N * d.F);
            std::copy(os.mask.begin(), os.mask.end(), ob.mask.begin() + (size_t)g * N);
            std::copy(os.adjacency.begin(), os.adjacency.end(), ob.adjacency.begin() + (size_t)g * N * N);
            n_obj[g] = os.n;
        }
        upload_grids(&m->enc, d, 0, ob);
        const PassKey key = {0, 0, false, 0};
        encoder_forward(m, &m->enc, m->w, d.gumbel ? m->mw.codebook : nullptr, &m->cb, G, key, Stream());
        std::vector<int> idx((size_t)G * N);
        copy_to_host(idx.data(), m->enc.idx, idx.size() * sizeof(int));
        for (int g = 0; g < G; g++) {
            const GridRef& r = grids[g0 + g];
            text += "{\"task\": \"" + f.tasks[r.task].name + "\", \"pair\": " + std::to_string(r.pair) + ", \"grid\": \"" +
                    (r.output ? "output" : "input") + "\", \"objects\": " + std::to_string(n_obj[g]) + ", \"codes\": [";
            for (int n = 0; n < n_obj[g]; n++) text += (n ? ", " : "") + std::to_string(idx[(size_t)g * N + n]);
            text += "]}\n";
        }
    }
    write_file_atomic(out_path, [&](FILE* fp, const char* tmp) { fwrite_check(text.data(), text.size(), fp, tmp); });
    printf("export_codes: %zu grids of %s -> %s\n", grids.size(), data_path.c_str(), out_path.c_str());
}

// ----------------------------------------------------------------------------------------------------------
// 11. Main: data, model, then epochs of steps; validation, early stopping and checkpoints at the end of epochs.

static DataSet load_examples(const std::string& path, const Config& c) {
    DataSet ds;
    ds.file = arc_tasks_load(path.c_str());
    ds.mode = c.context_mode == "frames" ? CONTEXT_FRAMES : CONTEXT_REPEAT;
    ds.examples = jepa_examples(ds.file, ds.mode, c.context_window);
    ds.aug = JepaAugment{c.aug_palette, c.aug_mask_ratio, c.aug_translate, c.aug_translate_radius, c.aug_min_grid_for_translate,
                         c.aug_dihedral, c.aug_object_dropout, c.aug_per_grid != 0};
    if (ds.examples.empty())
        fatal("%s: no examples for context_mode=%s with context_window=%d (frames needs tasks with at least k+1 frames: "
              "data/synth.py writes sequences_train.bin)", path.c_str(), c.context_mode.c_str(), c.context_window);
    return ds;
}

#ifndef TESTING
static int train_main(int argc, char** argv) {
    Config cfg = config_defaults();
    std::vector<ArgSpec> specs = config_specs(&cfg);
    Run run;
    if (!run_begin(&run, &argc, &argv, specs, "key=value ...   (e.g. data_path=data/synth/train.bin hidden_dim=64)",
                   [&]() { config_validate(cfg); }, cfg.checkpoint_path))
        return 0;
    const int rank = run.rank, W = run.world;
    Logger& log = run.log;

    Model model;
    Model* m = &model;
    model_build(m, cfg);
    model_init(m, (uint64_t)cfg.seed);
    TrainState ts = {0, 0, INFINITY, 0};
    // resume=latest: latest.bin, or when it is damaged the newest numbered checkpoint that reads; resume=PATH: that file
    std::string resume;
    if (!cfg.resume.empty()) {
        std::vector<std::string> paths = {cfg.resume};
        if (cfg.resume == "latest") {
            if (rank == 0) checkpoint_dir_clean(cfg.checkpoint_path);      // (the other ranks read no .tmp file)
            paths = latest_checkpoints(cfg.checkpoint_path);
        }
        Checkpoint ck;
        resume = run_resume_newest(&run, paths, &ck, cfg.resume == "latest", cfg.checkpoint_path);
        if (!resume.empty()) {
            config_check_file(&run, resume.c_str(), ck.config, ARCH_KEYS, RUN_CONTROL_KEYS, true, true);
            checkpoint_load(m, &ts, resume.c_str(), ck);
            log_printf(&log, "resumed from %s at step %d (epoch %d)\n", resume.c_str(), ts.step, ts.epoch);
        }
    }
    if (!cfg.export_codes.empty()) {
        if (resume.empty()) fatal("export_codes=%s needs a checkpoint: resume=PATH", cfg.export_codes.c_str());
        if (cfg.codes_data.empty()) fatal("export_codes=%s needs codes_data=TASK_FILE (the grids to encode)", cfg.export_codes.c_str());
        if (rank == 0) export_codes(m, cfg.codes_data, cfg.export_codes);
        run_end(&run);
        return 0;
    }

    // data: the training examples, and the validation examples (a file, or a held-out share keyed by the seed)
    DataSet train = load_examples(cfg.data_path, cfg), val;
    if (!cfg.val_path.empty()) {
        val = load_examples(cfg.val_path, cfg);
    } else if (cfg.val_fraction > 0) {
        val = train;
        val.examples.clear();
        std::vector<JepaExample> keep;
        for (size_t i = 0; i < train.examples.size(); i++)
            (hash_uniform(hash_u64((uint64_t)cfg.seed, 13), i) < cfg.val_fraction ? val.examples : keep).push_back(train.examples[i]);
        train.examples = keep;
    }
    if (cfg.max_examples > 0 && (size_t)cfg.max_examples < train.examples.size()) train.examples.resize(cfg.max_examples);
    const Dims& d = m->d;
    const int steps_per_epoch = (int)(train.examples.size() / cfg.batch_size);
    if (steps_per_epoch < 1)
        fatal("%s: %zu training examples, fewer than batch_size=%d", cfg.data_path.c_str(), train.examples.size(), cfg.batch_size);
    int total_steps = (int)std::min<int64_t>((int64_t)cfg.epochs * steps_per_epoch, INT_MAX - 1);
    if (cfg.max_steps > 0) total_steps = std::min(total_steps, cfg.max_steps);
    const int val_batches = (int)(val.examples.size() / d.Bg);

    log_printf(&log, "arc.cu train_jepa (%s backend on %s, %s, %d process%s)  objective=%s vq=%s context=%s x%d agg=%s\n",
               BACKEND_NAME, run.device_name.c_str(), PRECISION_NAME, W, W > 1 ? "es" : "", cfg.objective.c_str(),
               d.vq ? cfg.vq_mode.c_str() : "off", cfg.context_mode.c_str(), d.L, cfg.context_agg.c_str());
    size_t trained = 0;               // without the alignment padding of the flat buffer; the target branch: all but log_tau
    for (const TensorInfo& t : m->p.table.tensors) trained += t.numel;
    log_printf(&log, "parameters: %zu (target branch %zu)  D=%d layers=%d heads=%d P=%d K=%d  online grids per micro-batch: %d\n",
               trained, group_numel(m->p.table, GROUP_NETWORK), d.D, d.layers, d.H, d.P, d.K, m->G_online);
    log_printf(&log, "data: %zu training examples (%d steps per epoch of %d), %zu validation examples (%d micro-batches)%s\n",
               train.examples.size(), steps_per_epoch, cfg.batch_size, val.examples.size(), val_batches,
               val_batches ? "" : ": validation and early stopping off");
    log_printf(&log, "memory: %.2f GiB allocated on the device\n", device_bytes_allocated() / 1073741824.0);

    const Stream st = Stream();
    RunTiming timing = timing_begin(ts.step + 1);          // steps counted from 1 in the timing and progress
    bool stop = false;
    const int MAX_SKIPPED_IN_A_ROW = 50;
    int skipped_in_a_row = 0;
    for (int step = ts.step; step < total_steps && !stop; step++) {
        const double t0 = wall_time();
        const int epoch = step / steps_per_epoch, in_epoch = step % steps_per_epoch;
        const std::vector<int> order = epoch_order((int)train.examples.size(), (uint64_t)cfg.seed, epoch);
        double terms[LOSS_COUNT] = {0};
        bool finite = true;
        double flops = 0, data_seconds = 0;             // data_seconds: the host's sample building (objects, perturbations)
        codebook_keep(&m->cb, d, CODEBOOK_SAVE);
        codebook_keep(&m->tcb, d, CODEBOOK_SAVE);
        m->saved_refreshed = m->refreshed;
        std::fill(m->step_usage.begin(), m->step_usage.end(), 0.0);
        for (int j = 0; j < cfg.grad_accum_steps; j++) {
            flops += micro_batch_flops(m);
            std::vector<JepaExample> ex(d.Bg);
            std::vector<uint64_t> keys(d.Bg);
            for (int g = 0; g < d.Bg; g++) {
                const int i = order[((size_t)in_epoch * cfg.grad_accum_steps + j) * d.Bg + g];
                ex[g] = train.examples[i];
                keys[g] = hash_u64((uint64_t)cfg.seed, (uint64_t)epoch, (uint64_t)i);
            }
            MicroBatch mb;
            const PassKey key = {step, j, true, 0};
            const double t_data = wall_time();
            make_micro_batch(m, train, ex, keys, key, true, &mb);
            data_seconds += wall_time() - t_data;
            microbatch_forward_backward(m, mb, key, true, st);
            double t[LOSS_COUNT];
            download_losses(m, t);
            for (int i = 0; i < LOSS_COUNT; i++) {
                terms[i] += t[i] / cfg.grad_accum_steps;
                finite = finite && isfinite(t[i]);
            }
            copy_on_device(m->pending + (size_t)j * d.Bg * d.P, m->t_all, (size_t)d.Bg * d.P * sizeof(floatX));
            if (cfg.diag_every > 0) {
                const size_t rows = (size_t)j * d.B * d.P, bytes = (size_t)d.B * d.P * sizeof(floatX);
                copy_on_device(m->pending_c + rows, m->head_c.proj, bytes);
                copy_on_device(m->pending_t + rows, m->head_t.proj, bytes);
                if (d.vq) {
                    std::vector<floatS> counts(d.K);
                    if (d.gumbel) vq_code_stats(m->cb.counts, m->cb.sums, m->enc.idx, encoder_top(m, &m->enc), m->enc.mask,
                                                m->G_online * d.N, d.K, d.D, st);
                    copy_to_host(counts.data(), m->cb.counts, d.K * sizeof(floatS));
                    for (int k = 0; k < d.K; k++) m->step_usage[k] += counts[k];
                }
            }
        }
        double norm = 0;
        float lr = 0;
        if (!finite) {   // the reference skips the step, zeroes the gradients and drops the staged queue entries;
                         // the codebooks go back to where the step started
            log_printf(&log, "step %d skipped: non-finite loss (%s)\n", step + 1, terms_string(terms).c_str());
            if (++skipped_in_a_row == MAX_SKIPPED_IN_A_ROW)      // a run that can no longer take a step has diverged
                fatal("steps %d..%d all had a non-finite loss: the run diverged (lower lr, or max_norm); the checkpoints "
                      "written so far are kept", step + 2 - MAX_SKIPPED_IN_A_ROW, step + 1);
            codebook_keep(&m->cb, d, CODEBOOK_RESTORE);
            codebook_keep(&m->tcb, d, CODEBOOK_RESTORE);
            m->refreshed = m->saved_refreshed;
        } else {
            skipped_in_a_row = 0;
            norm = model_update(m, step, total_steps, &lr, st);
            queue_push(m, cfg.grad_accum_steps * d.Bg, st);
            if (cfg.diag_every > 0) ring_push(m, m->pending_c, m->pending_t, cfg.grad_accum_steps * d.B, st);
            for (int k = 0; k < d.K; k++) m->usage[k] += m->step_usage[k];
        }
        params_zero_grads(&m->p);
        device_synchronize();
        ts.step = step + 1;
        const double seconds = wall_time() - t0;
        timing_step(&timing, step + 1, seconds, flops);
        if (ts.step % cfg.log_every == 0 || ts.step == total_steps) {
            floatS log_tau;
            copy_to_host(&log_tau, m->mw.log_tau, sizeof log_tau);
            const double tau = std::min(std::max((double)expf(log_tau), (double)cfg.temperature_min), (double)cfg.temperature_max);
            log_printf(&log, "train step=%d epoch=%d loss=%.6f%s tau=%.5f grad_norm=%.4f lr=%.3e queue_fill=%d ms=%.1f data_ms=%.1f samples_per_s=%.1f%s\n",
                       ts.step, epoch + 1, objective_of(m, terms), terms_string(terms).c_str(), tau, norm, lr, m->queue_fill,
                       1000 * seconds, 1000 * data_seconds, cfg.batch_size / seconds, mfu_field(run, flops, seconds).c_str());
        }
        if (cfg.diag_every > 0 && ts.step % cfg.diag_every == 0 && rank == 0)
            log_printf(&log, "diag step=%d %s\n", ts.step, diagnostics_line(m).c_str());
        log_progress(&run, timing, ts.step, total_steps);
        const bool epoch_end = ts.step % steps_per_epoch == 0 || ts.step == total_steps;
        if (!epoch_end) continue;
        ts.epoch = (ts.step - 1) / steps_per_epoch + 1;
        if (val_batches > 0 && (ts.epoch % cfg.eval_every_epochs == 0 || ts.step == total_steps)) {
            double vt[LOSS_COUNT];
            const double v = validate(m, val, ts.step, vt);
            const bool improved = v < ts.best_val - cfg.early_stop_min_delta;
            if (improved) { ts.best_val = v; ts.wait = 0; } else ts.wait++;
            log_printf(&log, "val step=%d epoch=%d loss=%.6f%s best=%.6f wait=%d\n", ts.step, ts.epoch, v, terms_string(vt).c_str(),
                       ts.best_val, ts.wait);
            if (cfg.early_stop_patience > 0 && ts.wait >= cfg.early_stop_patience) {
                log_printf(&log, "early stop at epoch %d: no improvement of %g in %d validations\n", ts.epoch,
                           cfg.early_stop_min_delta, ts.wait);
                stop = true;
            }
        }
        if (rank == 0 && !cfg.checkpoint_path.empty()) {
            checkpoint_save(m, ts, cfg.checkpoint_path + "/latest.bin");
            if (ts.epoch % cfg.checkpoint_interval == 0 || ts.step == total_steps || stop)
                checkpoint_save(m, ts, cfg.checkpoint_path + "/epoch_" + std::to_string(ts.epoch) + ".bin");
            export_safetensors(m, cfg.checkpoint_path + "/model.safetensors");
        }
    }
    log_timing(&run, timing, cfg.batch_size);
    run_end(&run);
    return 0;
}
int main(int argc, char** argv) { return run_main(train_main, argc, argv); }
#endif
