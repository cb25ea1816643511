// One transformer block, and stacks of them, with the options of the three systems. The weights are always passed
// explicitly: the same block runs a model's live weights, its EMA, or weights without gradient.
//
//   post-norm (TRM decoder, standard ETRM encoders):  n1 = rms(x + o(attn(x))) ;  out = n2 = rms(n1 + mlp(n1))
//   pre-norm  (LPN encoders, Qwen2):                  n1 = rms(x) ; r1 = x + o(attn(n1)) ; n2 = rms(r1) ;
//                                                     out = r1 + mlp(n2)
//   mlp(h) = down(swiglu(gate_up(h)))                 SwiGLU, no biases
//   attn   self-attention: q, k, v = split(qkv(h) [+ qkv bias]), RoPE (rotate-half) on q and k, attention of the
//          NH query heads over NKV key/value heads (GQA: query head h reads kv head h / (NH / NKV)), causal or
//          bidirectional; cross-attention: q(h), k(memory), v(memory) [+ biases], with a key mask over the memory
//   rms    scale-free RMSNorm (TRM), or with a learned weight (Qwen2: pre-norm only)
//
// LoRA (kernels/lora.cuh): an adapter set adds scale * drop(x) A^T B^T to any of the self-attention block's
// projections (q, k, v, o, gate, up, down; PEFT's target_modules), each adapter a pair A (r, in), B (out, r) in its
// own parameters, drop PEFT's lora_dropout (each adapter its own mask, kernels/dropout.cuh). The base stays as it is
// (frozen when its gradient fields are null); q/k/v and gate/up adapters add into their columns of the fused outputs,
// before RoPE and SwiGLU.
//
// Decoding (StackShape.kv): a stack can also run a few new positions of sequences whose earlier keys and values are
// in a cache (KvCache), writing theirs there too: the prompt once, then one token at a time.
//
// Shapes: x (B, T, D) with N = B*T rows; q (N, NH*HD), k and v (B*Tk, NKV*HD); a fused self-attention row is
// [q | k | v] of (NH + 2 NKV) * HD. Conventions (llm.c): parameter gradients accumulate (+=); a BlockTensors of
// gradients may have null fields (no gradient wanted: evaluation, a frozen group), and then none is computed.
#pragma once
#include <vector>
#include "../kernels/add.cuh"
#include "../kernels/attention.cuh"
#include "../kernels/dropout.cuh"
#include "../kernels/kv_cache.cuh"
#include "../kernels/lora.cuh"
#include "../kernels/matmul.cuh"
#include "../kernels/rmsnorm.cuh"
#include "../kernels/rope.cuh"
#include "../kernels/swiglu.cuh"
#include "arena.h"
#include "device.h"
#include "parameters.h"

typedef struct {
    int D, NH, NKV, HD, I;     // width, query heads, key/value heads, head width, SwiGLU width
    bool pre_norm;
    bool norm_weight;          // RMSNorm with a learned weight
    bool qkv_bias;
    bool causal;
    float eps;                 // RMSNorm epsilon
} BlockConfig;

template <typename T> struct BlockTensors {
    T *qkv, *qkv_b;            // ((NH + 2 NKV) HD, D), ((NH + 2 NKV) HD): self-attention, q rows then k, then v
    T *q, *k, *v;              // (NH HD, D), (NKV HD, D), (NKV HD, D): cross-attention
    T *q_b, *k_b, *v_b;        // their biases
    T *o, *gate_up, *down;     // (D, NH HD), (2I, D), (D, I)
    T *norm1, *norm2;          // (D) RMSNorm weights
};

// The tensors of one block, declared into (or bound from) a TensorList (common/parameters.h) under `prefix`,
// with upstream's names: "<prefix><attn>qkv_proj", "<prefix><attn>o_proj" or q/k/v/o_proj, "<prefix>mlp.gate_up_proj",
// "<prefix>mlp.down_proj", "<prefix>input_layernorm" / "post_attention_layernorm" (weights). Linear layers get
// `linear_init(fan_in)`, biases zero, norm weights one. The weight matrices go into group matrix_group when it is
// given (>= 0; e.g. the group Muon trains), the rest into the list's current group.
template <typename T, typename LinearInit>
void block_tensors(TensorList<T>& list, BlockTensors<T>* b, const BlockConfig& c, bool cross, const std::string& prefix,
                   const std::string& attn, LinearInit linear_init, int matrix_group = -1) {
    const int QD = c.NH * c.HD, KD = c.NKV * c.HD;
    const int vector_group = list.current;
    if (matrix_group < 0) matrix_group = vector_group;
    *b = BlockTensors<T>();
    list.group(matrix_group);
    if (cross) {
        list.add(&b->q, prefix + attn + "q_proj.weight", {QD, c.D}, linear_init(c.D));
        list.add(&b->k, prefix + attn + "k_proj.weight", {KD, c.D}, linear_init(c.D));
        list.add(&b->v, prefix + attn + "v_proj.weight", {KD, c.D}, linear_init(c.D));
    } else {
        list.add(&b->qkv, prefix + attn + "qkv_proj.weight", {QD + 2 * KD, c.D}, linear_init(c.D));
    }
    list.add(&b->o, prefix + attn + "o_proj.weight", {c.D, QD}, linear_init(QD));
    list.add(&b->gate_up, prefix + "mlp.gate_up_proj.weight", {2 * c.I, c.D}, linear_init(c.D));
    list.add(&b->down, prefix + "mlp.down_proj.weight", {c.D, c.I}, linear_init(c.I));
    list.group(vector_group);
    if (c.qkv_bias && cross) {
        list.add(&b->q_b, prefix + attn + "q_proj.bias", {QD}, init_zero());
        list.add(&b->k_b, prefix + attn + "k_proj.bias", {KD}, init_zero());
        list.add(&b->v_b, prefix + attn + "v_proj.bias", {KD}, init_zero());
    }
    if (c.qkv_bias && !cross) list.add(&b->qkv_b, prefix + attn + "qkv_proj.bias", {QD + 2 * KD}, init_zero());
    if (c.norm_weight) {
        list.add(&b->norm1, prefix + "input_layernorm.weight", {c.D}, init_const(1.0f));
        list.add(&b->norm2, prefix + "post_attention_layernorm.weight", {c.D}, init_const(1.0f));
    }
}

// The projections an adapter may adapt, with PEFT's target_modules names.
enum { LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN, LORA_SITES };
static const char* const LORA_SITE_NAMES[LORA_SITES] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

// One block's adapters: A (r, in) and B (out, r) for every site in the set's mask (null elsewhere).
template <typename T> struct BlockLora {
    T* A[LORA_SITES];
    T* B[LORA_SITES];
};

// Where a site's adapter reads and writes: its input width, its output width, and its columns in the (fused) output,
// whose rows are ld wide: q | k | v in the qkv rows, gate | up in the gate_up rows.
typedef struct { int in, out, offset, ld; } LoraSite;

inline LoraSite lora_site(const BlockConfig& c, int site) {
    const int QD = c.NH * c.HD, KD = c.NKV * c.HD, row = QD + 2 * KD;
    switch (site) {
        case LORA_Q: return {c.D, QD, 0, row};
        case LORA_K: return {c.D, KD, QD, row};
        case LORA_V: return {c.D, KD, QD + KD, row};
        case LORA_O: return {QD, c.D, 0, c.D};
        case LORA_GATE: return {c.D, c.I, 0, 2 * c.I};
        case LORA_UP: return {c.D, c.I, c.I, 2 * c.I};
        default: return {c.I, c.D, 0, c.D};
    }
}

// The adapter tensors of one block for the sites in `mask` (bit i: site i), under PEFT's names:
// "<prefix>self_attn.q_proj.lora_A.weight", "<prefix>mlp.gate_proj.lora_B.weight", ... A is Kaiming-uniform with
// a = sqrt(5) (bound 1 / sqrt(in), as PEFT initialises it), B zero: a new adapter leaves the model unchanged.
template <typename T>
void block_lora_tensors(TensorList<T>& list, BlockLora<T>* b, const BlockConfig& c, unsigned mask, int r,
                        const std::string& prefix) {
    *b = BlockLora<T>();
    for (int site = 0; site < LORA_SITES; site++) {
        if (!(mask >> site & 1)) continue;
        const LoraSite ls = lora_site(c, site);
        const std::string name = prefix + (site <= LORA_O ? "self_attn." : "mlp.") + LORA_SITE_NAMES[site];
        list.add(&b->A[site], name + ".lora_A.weight", {r, ls.in}, init_uniform(1.0f / sqrtf((float)ls.in)));
        list.add(&b->B[site], name + ".lora_B.weight", {ls.out, r}, init_zero());
    }
}

// Merges a block's adapters into its weights (host values): W[offset + o, c] += scale sum_k B[o, k] A[k, c], the
// rows of the site's projection in its (fused) weight. The merged block computes what base + adapters computed.
template <typename T>
void block_lora_merge(BlockTensors<T>& w, const BlockLora<T>& lora, const BlockConfig& c, unsigned mask, int r, double scale) {
    for (int site = 0; site < LORA_SITES; site++) {
        if (!(mask >> site & 1)) continue;
        const LoraSite ls = lora_site(c, site);
        T* W = site <= LORA_V ? w.qkv : site == LORA_O ? w.o : site == LORA_DOWN ? w.down : w.gate_up;
        for (int o = 0; o < ls.out; o++)
            for (int i = 0; i < ls.in; i++) {
                double sum = 0;
                for (int k = 0; k < r; k++) sum += (double)lora.B[site][(size_t)o * r + k] * (double)lora.A[site][(size_t)k * ls.in + i];
                W[(size_t)(ls.offset + o) * ls.in + i] += (T)(scale * sum);
            }
    }
}

inline void block_config_check(const BlockConfig& c) {
    if (c.NKV < 1 || c.NH % c.NKV) fatal("attention heads: %d query heads are not a multiple of %d key/value heads", c.NH, c.NKV);
    if (c.HD % 2) fatal("head width %d: must be even (RoPE rotates pairs)", c.HD);
    if (c.norm_weight && !c.pre_norm) fatal("a learned RMSNorm weight needs pre-norm blocks (the post-norm input is not kept)");
}

// What one application of a stack keeps for its backward pass.
typedef struct {
    floatX *n1, *qkv, *q, *k, *v, *att, *r1, *n2, *gu, *sw, *out;
    floatS *rstd1, *lse, *rstd2;
    floatX* lora_t[LORA_SITES];       // (N, r) scale * drop(x) A^T of each adapted site
    floatX* lora_x[LORA_SITES];       // (N, in) drop(x), with lora dropout
} BlockActs;

typedef struct {
    floatX* in;                       // the stack's input (B, T, D)
    std::vector<BlockActs> layers;
} StackActs;

// The adapter set a stack runs with: per layer its weights and their gradients (null gradient fields: none
// computed), the adapted sites (bit mask), rank and scale (alpha / r, or alpha / sqrt(r) with rsLoRA), and the
// dropout on the adapters' inputs (training; 0 in evaluation), its masks drawn from (seed, layer, site, element).
typedef struct {
    const std::vector<BlockLora<floatX>>* w;      // null: no adapter
    const std::vector<BlockLora<floatS>>* g;
    unsigned mask;
    int r;
    float scale;
    float dropout;
    uint64_t seed;
} StackLora;

// The keys and values of the positions a decoding stack has processed (kernels/kv_cache.cuh), per layer
// (B, Tmax, NKV HD), and which of them each sample's new queries may see: key_mask (B, Tmax), kept by the caller
// (a left-padded prompt's padding is 0, every position written since is 1).
typedef struct {
    std::vector<floatX*> k, v;
    int Tmax;
    const uint8_t* key_mask;
} KvCache;

// One application of a stack of blocks.
typedef struct {
    BlockConfig cfg;
    int B, T, n_layers;
    bool cross;                           // cross-attention to `memory` instead of self-attention
    const floatS *rope_cos, *rope_sin;    // self-attention RoPE tables (positions, HD)
    int rope_skip;                        // leading positions left unrotated (the LPN CLS token)
    const floatX* memory;                 // cross-attention keys/values source (B, Tk, D)
    int Tk;
    const uint8_t* key_mask;              // valid keys, or null: (B, Tk) memory rows; self-attention (B, T) rows
    StackLora lora;                       // adapters (self-attention stacks only)
    KvCache* kv;                          // decoding (self-attention, no gradient): the rows are positions pos..pos+T-1;
    int pos;                              // their keys and values go into the cache; pos = 0 (the prompt) attends
                                          // over its own rows as usual, pos > 0 (one new token, T = 1) over the cache
} StackShape;

// Backward scratch shared by every stack of a model (sized for the largest by transformer_scratch_layout); G carries
// the gradient through a stack, in place.
typedef struct {
    floatX *G, *d_att, *d_qkv, *d_gu, *d_sw, *d_tmp;
    floatX* d_lora;                       // (rows, r) an adapter's d(x A^T)
    floatX* d_lora_x;                     // (rows, widest input) an adapter's d drop(x), with lora dropout
} BlockScratch;

inline void stack_layout(Arena* a, StackActs* s, const StackShape& sh) {
    const BlockConfig& c = sh.cfg;
    const size_t N = (size_t)sh.B * sh.T, D = c.D, I = c.I, QD = (size_t)c.NH * c.HD, KD = (size_t)c.NKV * c.HD;
    s->in = arena_take<floatX>(a, N * D);
    s->layers.resize(sh.n_layers);
    for (BlockActs& b : s->layers) {
        b = BlockActs();
        b.n1 = arena_take<floatX>(a, N * D);
        b.rstd1 = arena_take<floatS>(a, N);
        if (sh.cross) {
            b.q = arena_take<floatX>(a, N * QD);
            b.k = arena_take<floatX>(a, (size_t)sh.B * sh.Tk * KD);
            b.v = arena_take<floatX>(a, (size_t)sh.B * sh.Tk * KD);
        } else {
            b.qkv = arena_take<floatX>(a, N * (QD + 2 * KD));
        }
        b.att = arena_take<floatX>(a, N * QD);
        b.lse = arena_take<floatS>(a, N * c.NH);
        b.n2 = arena_take<floatX>(a, N * D);
        b.rstd2 = arena_take<floatS>(a, N);
        b.gu = arena_take<floatX>(a, N * 2 * I);
        b.sw = arena_take<floatX>(a, N * I);
        if (c.pre_norm) {
            b.r1 = arena_take<floatX>(a, N * D);
            b.out = arena_take<floatX>(a, N * D);
        } else {
            b.out = b.n2;
        }
        if (sh.lora.w)
            for (int site = 0; site < LORA_SITES; site++) {
                if (!(sh.lora.mask >> site & 1)) continue;
                b.lora_t[site] = arena_take<floatX>(a, N * sh.lora.r);
                if (sh.lora.dropout > 0) b.lora_x[site] = arena_take<floatX>(a, N * lora_site(c, site).in);
            }
    }
}

// Scratch for stacks of at most `rows` rows and, in cross-attention, `cross_q_rows` query rows over `memory_rows`
// memory rows; for adapters of rank lora_rank (with lora_dropout: their input gradients before the mask).
inline void scratch_layout(Arena* a, BlockScratch* s, const BlockConfig& c, size_t rows, size_t cross_q_rows,
                           size_t memory_rows, int lora_rank = 0, bool lora_dropout = false) {
    const size_t D = c.D, QD = (size_t)c.NH * c.HD, KD = (size_t)c.NKV * c.HD;
    s->G = arena_take<floatX>(a, rows * D);
    s->d_att = arena_take<floatX>(a, rows * QD);
    // self-attention: d qkv rows; cross-attention: dq, dk, dv side by side
    s->d_qkv = arena_take<floatX>(a, std::max(rows * (QD + 2 * KD), cross_q_rows * QD + 2 * memory_rows * KD));
    s->d_gu = arena_take<floatX>(a, rows * 2 * c.I);
    s->d_sw = arena_take<floatX>(a, rows * c.I);
    s->d_tmp = arena_take<floatX>(a, rows * D);
    s->d_lora = lora_rank ? arena_take<floatX>(a, rows * lora_rank) : nullptr;
    s->d_lora_x = lora_dropout ? arena_take<floatX>(a, rows * std::max<size_t>(std::max(D, QD), c.I)) : nullptr;
}

// The dropout mask seed of a site's adapter in layer l.
inline uint64_t lora_dropout_seed(const StackLora& lo, int l, int site) { return hash_u64(lo.seed, (uint64_t)l, (uint64_t)site); }

// The adapters of sites first..last of layer l (those in the mask): out (the sites' fused output) += scale x A^T B^T.
inline void lora_sites_forward(BlockActs* a, floatX* out, const floatX* x, int first, int last, int l, const StackShape& s,
                               Stream st) {
    const StackLora& lo = s.lora;
    if (!lo.w) return;
    const BlockLora<floatX>& w = (*lo.w)[l];
    const int N = s.B * s.T;
    for (int site = first; site <= last; site++) {
        if (!(lo.mask >> site & 1)) continue;
        const LoraSite ls = lora_site(s.cfg, site);
        const floatX* in = x;
        if (lo.dropout > 0) {                        // drop(x), kept for the backward
            dropout_add(a->lora_x[site], nullptr, x, nullptr, N, ls.in, lo.dropout, lora_dropout_seed(lo, l, site), st);
            in = a->lora_x[site];
        }
        lora_forward(out + ls.offset, a->lora_t[site], in, w.A[site], w.B[site], N, ls.in, ls.out, lo.r, lo.scale, st, ls.ld);
    }
}

// Their backward: dx += the adapters' input gradient (after the base layer wrote its own), dA, dB += when wanted.
inline void lora_sites_backward(floatX* dx, const floatX* dout, const BlockActs* a, const floatX* x, int first, int last,
                                int l, const StackShape& s, const BlockScratch& sc, Stream st) {
    const StackLora& lo = s.lora;
    if (!lo.w) return;
    const BlockLora<floatX>& w = (*lo.w)[l];
    const BlockLora<floatS>* g = lo.g ? &(*lo.g)[l] : nullptr;
    const int N = s.B * s.T;
    for (int site = first; site <= last; site++) {
        if (!(lo.mask >> site & 1)) continue;
        const LoraSite ls = lora_site(s.cfg, site);
        floatS *dA = g ? g->A[site] : nullptr, *dB = g ? g->B[site] : nullptr;
        if (lo.dropout > 0) {                        // d drop(x), then dx += mask * it / (1 - p)
            lora_backward(sc.d_lora_x, dA, dB, sc.d_lora, dout + ls.offset, a->lora_x[site], a->lora_t[site], w.A[site],
                          w.B[site], N, ls.in, ls.out, lo.r, lo.scale, st, ls.ld, false);
            dropout_add(dx, dx, sc.d_lora_x, nullptr, N, ls.in, lo.dropout, lora_dropout_seed(lo, l, site), st);
        } else {
            lora_backward(dx, dA, dB, sc.d_lora, dout + ls.offset, x, a->lora_t[site], w.A[site], w.B[site], N, ls.in,
                          ls.out, lo.r, lo.scale, st, ls.ld);
        }
    }
}

// n = rms(x) (scale-free or with the weight), fused with a residual add only in the scale-free post-norm form.
inline void block_norm_forward(floatX* n, floatS* rstd, const floatX* x, const floatX* residual, const floatX* weight,
                               int N, const BlockConfig& c, Stream st) {
    if (c.norm_weight) rmsnorm_weighted_forward(n, rstd, x, weight, N, c.D, c.eps, st);
    else rmsnorm_forward(n, rstd, x, residual, N, c.D, c.eps, st);
}

inline void attention_sublayer_forward(BlockActs* a, const floatX* h, const BlockTensors<floatX>& w, int l,
                                       const StackShape& s, Stream st) {
    const BlockConfig& c = s.cfg;
    const int N = s.B * s.T, QD = c.NH * c.HD, KD = c.NKV * c.HD;
    if (s.cross) {
        matmul_forward(a->q, h, w.q, w.q_b, N, c.D, QD, st);
        matmul_forward(a->k, s.memory, w.k, w.k_b, s.B * s.Tk, c.D, KD, st);
        matmul_forward(a->v, s.memory, w.v, w.v_b, s.B * s.Tk, c.D, KD, st);
        attention_forward(a->att, a->lse, a->q, a->k, a->v, s.key_mask, s.B, s.T, s.Tk, c.NH, c.NKV, c.HD, QD, KD,
                          c.causal, st);
    } else {
        const int row = QD + 2 * KD;
        matmul_forward(a->qkv, h, w.qkv, w.qkv_b, N, c.D, row, st);
        lora_sites_forward(a, a->qkv, h, LORA_Q, LORA_V, l, s, st);
        if (s.rope_cos) {
            const size_t at = (size_t)s.pos * c.HD;          // the table rows of positions pos..
            rope_forward(a->qkv, s.rope_cos + at, s.rope_sin + at, s.B, s.T, c.NH + c.NKV, c.HD, row, s.rope_skip, st);
        }
        if (s.kv) {
            kv_cache_write(s.kv->k[l], s.kv->v[l], a->qkv, s.B, s.T, s.pos, s.kv->Tmax, QD, KD, row, st);
            if (s.pos > 0) {          // the new token over every cached position its sample may see
                attention_forward(a->att, a->lse, a->qkv, s.kv->k[l], s.kv->v[l], s.kv->key_mask, s.B, s.T, s.kv->Tmax,
                                  c.NH, c.NKV, c.HD, row, KD, false, st);
                return;
            }
        }
        attention_forward(a->att, a->lse, a->qkv, a->qkv + QD, a->qkv + QD + KD, s.key_mask, s.B, s.T, s.T, c.NH, c.NKV,
                          c.HD, row, row, c.causal, st);
    }
}

// Block l of the stack.
inline void block_forward(BlockActs* a, const floatX* x, const BlockTensors<floatX>& w, int l, const StackShape& s, Stream st) {
    const BlockConfig& c = s.cfg;
    const int N = s.B * s.T, D = c.D, I = c.I, QD = c.NH * c.HD;
    if (c.pre_norm) {
        block_norm_forward(a->n1, a->rstd1, x, nullptr, w.norm1, N, c, st);          // n1 = rms(x)
        attention_sublayer_forward(a, a->n1, w, l, s, st);
        matmul_forward(a->r1, a->att, w.o, nullptr, N, QD, D, st);
        lora_sites_forward(a, a->r1, a->att, LORA_O, LORA_O, l, s, st);
        add_forward(a->r1, a->r1, x, nullptr, (size_t)N * D, st);                     // r1 = x + o(attn(n1))
        block_norm_forward(a->n2, a->rstd2, a->r1, nullptr, w.norm2, N, c, st);      // n2 = rms(r1)
        matmul_forward(a->gu, a->n2, w.gate_up, nullptr, N, D, 2 * I, st);
        lora_sites_forward(a, a->gu, a->n2, LORA_GATE, LORA_UP, l, s, st);
        swiglu_forward(a->sw, a->gu, N, I, st);
        matmul_forward(a->out, a->sw, w.down, nullptr, N, I, D, st);
        lora_sites_forward(a, a->out, a->sw, LORA_DOWN, LORA_DOWN, l, s, st);
        add_forward(a->out, a->out, a->r1, nullptr, (size_t)N * D, st);               // out = r1 + mlp(n2)
    } else {
        attention_sublayer_forward(a, x, w, l, s, st);
        matmul_forward(a->n1, a->att, w.o, nullptr, N, QD, D, st);
        lora_sites_forward(a, a->n1, a->att, LORA_O, LORA_O, l, s, st);
        rmsnorm_forward(a->n1, a->rstd1, a->n1, x, N, D, c.eps, st);                 // n1 = rms(x + o(attn(x)))
        matmul_forward(a->gu, a->n1, w.gate_up, nullptr, N, D, 2 * I, st);
        lora_sites_forward(a, a->gu, a->n1, LORA_GATE, LORA_UP, l, s, st);
        swiglu_forward(a->sw, a->gu, N, I, st);
        matmul_forward(a->n2, a->sw, w.down, nullptr, N, I, D, st);
        lora_sites_forward(a, a->n2, a->sw, LORA_DOWN, LORA_DOWN, l, s, st);
        rmsnorm_forward(a->n2, a->rstd2, a->n2, a->n1, N, D, c.eps, st);             // out = n2 = rms(n1 + mlp(n1))
    }
}

// Applies the stack (w: its n_layers blocks) to a->in; returns the output (the last block's out).
inline const floatX* stack_forward(StackActs* a, const std::vector<BlockTensors<floatX>>& w, const StackShape& s, Stream st) {
    const floatX* x = a->in;
    for (int l = 0; l < s.n_layers; l++) {
        block_forward(&a->layers[l], x, w[l], l, s, st);
        x = a->layers[l].out;
    }
    return x;
}

// Backward of the attention sublayer given d_o, the gradient of its output projection o(attn(h)): dh (=, or +=
// when accumulate) gets the gradient of its input h; cross-attention adds into dmemory.
inline void attention_sublayer_backward(floatX* dh, bool accumulate, floatX* dmemory, const floatX* d_o, const BlockActs* a,
                                        const floatX* h, const BlockTensors<floatX>& w, const BlockTensors<floatS>& gw,
                                        int l, const StackShape& s, const BlockScratch& sc, Stream st) {
    const BlockConfig& c = s.cfg;
    const int N = s.B * s.T, QD = c.NH * c.HD, KD = c.NKV * c.HD;
    matmul_backward(sc.d_att, gw.o, nullptr, d_o, a->att, w.o, N, QD, c.D, false, st);
    lora_sites_backward(sc.d_att, d_o, a, a->att, LORA_O, LORA_O, l, s, sc, st);
    if (s.cross) {
        floatX *dq = sc.d_qkv, *dk = dq + (size_t)N * QD, *dv = dk + (size_t)s.B * s.Tk * KD;
        attention_backward(dq, dk, dv, sc.d_att, a->att, a->lse, a->q, a->k, a->v, s.key_mask, s.B, s.T, s.Tk, c.NH,
                           c.NKV, c.HD, QD, KD, c.causal, st);
        matmul_backward(dh, gw.q, gw.q_b, dq, h, w.q, N, c.D, QD, accumulate, st);
        matmul_backward(dmemory, gw.k, gw.k_b, dk, s.memory, w.k, s.B * s.Tk, c.D, KD, true, st);
        matmul_backward(dmemory, gw.v, gw.v_b, dv, s.memory, w.v, s.B * s.Tk, c.D, KD, true, st);
    } else {
        const int row = QD + 2 * KD;
        attention_backward(sc.d_qkv, sc.d_qkv + QD, sc.d_qkv + QD + KD, sc.d_att, a->att, a->lse, a->qkv, a->qkv + QD,
                           a->qkv + QD + KD, s.key_mask, s.B, s.T, s.T, c.NH, c.NKV, c.HD, row, row, c.causal, st);
        if (s.rope_cos) rope_backward(sc.d_qkv, s.rope_cos, s.rope_sin, s.B, s.T, c.NH + c.NKV, c.HD, row, s.rope_skip, st);
        matmul_backward(dh, gw.qkv, gw.qkv_b, sc.d_qkv, h, w.qkv, N, c.D, row, accumulate, st);
        lora_sites_backward(dh, sc.d_qkv, a, h, LORA_Q, LORA_V, l, s, sc, st);
    }
}

// Backward of mlp(h) = down(swiglu(gate_up(h))) given dout: dh (=, or += when accumulate).
inline void mlp_sublayer_backward(floatX* dh, bool accumulate, const floatX* dout, const BlockActs* a, const floatX* h,
                                  const BlockTensors<floatX>& w, const BlockTensors<floatS>& gw, int l, const StackShape& s,
                                  const BlockScratch& sc, Stream st) {
    const BlockConfig& c = s.cfg;
    const int N = s.B * s.T;
    matmul_backward(sc.d_sw, gw.down, nullptr, dout, a->sw, w.down, N, c.I, c.D, false, st);
    lora_sites_backward(sc.d_sw, dout, a, a->sw, LORA_DOWN, LORA_DOWN, l, s, sc, st);
    swiglu_backward(sc.d_gu, sc.d_sw, a->gu, N, c.I, st);
    matmul_backward(dh, gw.gate_up, nullptr, sc.d_gu, h, w.gate_up, N, c.D, 2 * c.I, accumulate, st);
    lora_sites_backward(dh, sc.d_gu, a, h, LORA_GATE, LORA_UP, l, s, sc, st);
}

// G += d(rms(x)) / dx applied to dn (the pre-norm residual path already holds the rest of d x in G).
inline void block_norm_backward_add(floatX* G, floatS* dweight, const floatX* dn, const floatX* n, const floatX* x,
                                    const floatX* weight, const floatS* rstd, int N, const BlockConfig& c, Stream st) {
    if (c.norm_weight) rmsnorm_weighted_backward(G, dweight, dn, x, weight, rstd, N, c.D, true, st);
    else rmsnorm_backward(G, dn, n, rstd, N, c.D, true, st);
}

// G holds the gradient of the block's output on entry and of its input x on return.
inline void block_backward(floatX* G, floatX* dmemory, const BlockActs* a, const floatX* x, const BlockTensors<floatX>& w,
                           const BlockTensors<floatS>& gw, int l, const StackShape& s, const BlockScratch& sc, Stream st) {
    const BlockConfig& c = s.cfg;
    const int N = s.B * s.T, D = c.D;
    if (c.pre_norm) {
        // out = r1 + mlp(n2): G is already d r1 through the residual; add the path through n2 = rms(r1)
        mlp_sublayer_backward(sc.d_tmp, false, G, a, a->n2, w, gw, l, s, sc, st);
        block_norm_backward_add(G, gw.norm2, sc.d_tmp, a->n2, a->r1, w.norm2, a->rstd2, N, c, st);
        // r1 = x + o(attn(n1)): G is d x through the residual; add the path through n1 = rms(x)
        attention_sublayer_backward(sc.d_tmp, false, dmemory, G, a, a->n1, w, gw, l, s, sc, st);
        block_norm_backward_add(G, gw.norm1, sc.d_tmp, a->n1, x, w.norm1, a->rstd1, N, c, st);
    } else {
        rmsnorm_backward(G, G, a->n2, a->rstd2, N, D, false, st);               // G = d(n1 + mlp(n1))
        mlp_sublayer_backward(G, true, G, a, a->n1, w, gw, l, s, sc, st);       // G = d n1
        rmsnorm_backward(G, G, a->n1, a->rstd1, N, D, false, st);               // G = d(x + o(attn(x)))
        attention_sublayer_backward(G, true, dmemory, G, a, x, w, gw, l, s, sc, st);   // G = d x
    }
}

// sc.G: the gradient of the stack's output on entry, of its input on return. gw: the blocks' gradients (fields may
// be null, see the top).
inline void stack_backward(floatX* dmemory, const StackActs* a, const std::vector<BlockTensors<floatX>>& w,
                           const std::vector<BlockTensors<floatS>>& gw, const StackShape& s, const BlockScratch& sc, Stream st) {
    for (int l = s.n_layers - 1; l >= 0; l--)
        block_backward(sc.G, dmemory, &a->layers[l], l ? a->layers[l - 1].out : a->in, w[l], gw[l], l, s, sc, st);
}

// Model FLOPs of one forward application of a stack (2 per multiply-add): per layer the attention projections
// (fused qkv and o; cross-attention: q and o on the queries, k and v on the memory rows), the MLP (gate_up and down)
// and attention itself (scores and weighted values: 2 x 2 Tq Tk NH HD; causal: the half that is computed).
inline double stack_flops(const StackShape& s) {
    const BlockConfig& c = s.cfg;
    const double N = (double)s.B * s.T, D = c.D, I = c.I, QD = (double)c.NH * c.HD, KD = (double)c.NKV * c.HD;
    const double memory_rows = s.cross ? (double)s.B * s.Tk : N;
    const double projections = 2 * N * D * QD * 2 + 2 * memory_rows * D * KD * 2;
    const double keys = s.cross ? s.Tk : s.T;
    const double layer = projections + 2 * N * 3 * D * I + 4 * N * keys * QD * (c.causal ? 0.5 : 1.0);
    return layer * s.n_layers;
}
