// The parameters of a model: a table of named tensors laid out in one flat buffer, in groups.
//
// A trainer lists its tensors once (name, shape, initialisation, group), in a function templated on the pointer
// type that fills the fields of its tensor struct (see TensorList below). The table lays them out and says, for
// every buffer the runtime keeps, which groups it covers:
//
//   params   floatX   (n_total)      the compute copy of every group: what the forward pass reads
//   master   floatS   (n_trainable)  fp32 values of the trained groups when floatX is not fp32 (else params are)
//   grads, adam_m, adam_v  floatS  (n_dense)  gradient and Adam moments of the groups trained by Adam (Muon: its
//                                    momentum in adam_m, adam_v unused)
//   ema      floatS   (n_ema)        exponential moving average of the first groups (evaluation weights, or
//                                    JEPA's target branch), with its own floatX compute copy
//
// Groups are laid out in the order declared and must come in this order: the groups Adam trains (their EMA'd
// ones first), then those Muon trains, then the groups a trainer updates itself from sparse gradients (TRM's puzzle
// embedding, sign-SGD), then frozen groups. Every buffer is then a prefix of the flat layout and one offset serves them all; a frozen
// group has no gradient, master copy or optimizer state, and its weights stay in floatX. Every tensor starts at a
// multiple of 64 elements (the gaps stay zero): 128-bit loads and cuBLASLt's fastest kernels need aligned rows.
// A tensor may reserve more elements than it has (zero rows after it, e.g. a head padded to a 16-byte output
// width): they stay zero as long as their gradient is zero; names, shapes, exports and numel ignore them.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string>
#include <type_traits>
#include <vector>
#include "checkpoint.h"
#include "device.h"
#include "rand.h"
#include "safetensors.h"
#include "utils.h"

// How a group is trained.
typedef enum {
    GROUP_ADAM,      // dense gradient, Adam(ATan2)/AdamW on fp32 master weights (common/optimizer.h)
    GROUP_MUON,      // dense gradient, Muon on each of its matrices (2-D tensors only; kernels/muon.cuh)
    GROUP_SPARSE,    // trained by the trainer from sparse row gradients (TRM's puzzle embedding: sign-SGD)
    GROUP_FROZEN,    // never trained: no gradient, no master copy, no optimizer state
} GroupKind;

// Whether a group has a dense gradient (and optimizer state) in grads, adam_m, adam_v.
inline bool group_dense(GroupKind k) { return k == GROUP_ADAM || k == GROUP_MUON; }

typedef struct {
    std::string name;
    GroupKind kind;
    float lr_scale, weight_decay_scale;   // of the run's learning rate and weight decay (Adam groups)
    int frozen_steps;                     // an Adam group is not updated in steps 1..frozen_steps (gradients are
                                          // still computed and logged)
    bool ema;                             // covered by the EMA
    size_t begin, end;                    // its elements [begin, end) of the flat layout (set by the table)
} ParamGroup;

inline ParamGroup param_group(const std::string& name, GroupKind kind, bool ema = false) {
    return {name, kind, 1.0f, 1.0f, 0, ema, 0, 0};
}

typedef enum { INIT_ZERO, INIT_CONST, INIT_TRUNC_NORMAL, INIT_UNIFORM } InitKind;
typedef struct {
    InitKind kind;
    float value;     // the constant; the std of the truncated normal (upstream TRM's, sequential Rng); the bound a
                     // of U(-a, a) (torch's nn.Linear, drawn by hash from (seed, tensor index, element))
} Init;
inline Init init_zero() { return {INIT_ZERO, 0.0f}; }
inline Init init_const(float v) { return {INIT_CONST, v}; }
inline Init init_trunc_normal(float std) { return {INIT_TRUNC_NORMAL, std}; }
inline Init init_uniform(float bound) { return {INIT_UNIFORM, bound}; }

typedef struct {
    std::string name;                // the upstream state_dict name
    std::vector<int64_t> shape;
    size_t offset, numel;
    int group;
    Init init;
    size_t reserve;                  // elements the layout reserves from offset (>= numel; the rest stays zero)
} TensorInfo;

typedef struct {
    std::vector<ParamGroup> groups;
    std::vector<TensorInfo> tensors;
    size_t n_total, n_trainable, n_dense, n_ema;   // buffer lengths (see the top of the file)
} ParamTable;

// Elements of the group's tensors, without the alignment gaps.
inline size_t group_numel(const ParamTable& t, int g) {
    size_t n = 0;
    for (const TensorInfo& ti : t.tensors) n += ti.group == g ? ti.numel : 0;
    return n;
}

// Walks a trainer's list of tensors. Declaring (tensor_declare), it appends each tensor to a table; binding
// (tensor_bind), it points each field at its tensor in a buffer laid out by that table: base[g] + offset for a
// tensor of group g, or null where base[g] is null (the group is not in that buffer). A trainer writes
//     template <typename T> void model_tensors(TensorList<T>& list, ModelTensors<T>* t, ...) {
//         list.group(GROUP_INDEX);
//         list.add(&t->lm_head, "lm_head.weight", {V, D}, init_trunc_normal(std));
//     }
// and calls it once to declare and once per buffer to bind. `reserve` (elements, >= numel; 0: numel) keeps zero
// elements after the tensor in the layout.
template <typename T> struct TensorList {
    ParamTable* table;              // declaring
    const ParamTable* layout;       // binding
    std::vector<T*> base;           // binding: per group
    int current = 0, next = 0;

    void group(int g) { current = g; }
    void add(T** field, const std::string& name, std::vector<int64_t> shape, Init init, size_t reserve = 0) {
        if (table) {
            size_t n = 1;
            for (int64_t s : shape) n *= (size_t)s;
            if (reserve != 0 && reserve < n) fatal("internal: tensor '%s' reserves %zu < %zu elements", name.c_str(), reserve, n);
            table->tensors.push_back({name, shape, 0, n, current, init, reserve ? reserve : n});
            *field = nullptr;
            return;
        }
        if (next >= (int)layout->tensors.size() || layout->tensors[next].name != name)
            fatal("internal: tensor '%s' bound out of the order it was declared in", name.c_str());
        const TensorInfo& t = layout->tensors[next++];
        *field = base[t.group] ? base[t.group] + t.offset : nullptr;
    }
};
template <typename T> TensorList<T> tensor_declare(ParamTable* table) { return {table, nullptr, {}, 0, 0}; }
template <typename T> TensorList<T> tensor_bind(const ParamTable& table, const std::vector<T*>& base) {
    return {nullptr, &table, base, 0, 0};
}

// Lays out the declared tensors (group by group, in declaration order) and checks the group order.
inline void param_table_layout(ParamTable* t) {
    size_t offset = 0;
    int last_kind = GROUP_ADAM;
    bool ema_open = true;
    t->n_trainable = t->n_dense = t->n_ema = 0;
    for (int g = 0; g < (int)t->groups.size(); g++) {
        ParamGroup& grp = t->groups[g];
        if (grp.kind < last_kind) fatal("internal: parameter group '%s' declared after a %s group", grp.name.c_str(),
                                        last_kind == GROUP_SPARSE ? "sparse" : "frozen");
        if (grp.ema && (!ema_open || grp.kind != GROUP_ADAM))
            fatal("internal: the EMA groups must be the first Adam groups ('%s')", grp.name.c_str());
        ema_open = ema_open && grp.ema;
        last_kind = grp.kind;
        grp.begin = CEIL_DIV(offset, 64) * 64;
        grp.end = grp.begin;
        for (TensorInfo& ti : t->tensors) {
            if (ti.group != g) continue;
            if (grp.kind == GROUP_MUON && ti.shape.size() != 2)
                fatal("internal: Muon group '%s' holds '%s', which is not a matrix", grp.name.c_str(), ti.name.c_str());
            ti.offset = CEIL_DIV(grp.end, 64) * 64;
            grp.end = ti.offset + ti.reserve;
        }
        offset = grp.end;
        if (grp.kind != GROUP_FROZEN) t->n_trainable = grp.end;
        if (group_dense(grp.kind)) t->n_dense = grp.end;
        if (grp.ema) t->n_ema = grp.end;
    }
    t->n_total = offset;
}

// Builds the table of a trainer's tensor list: groups, then model_tensors(list, &fields) declares the tensors.
template <typename Fields, typename Declare>
ParamTable param_table(const std::vector<ParamGroup>& groups, Declare declare) {
    ParamTable t;
    t.groups = groups;
    TensorList<floatX> list = tensor_declare<floatX>(&t);
    Fields none;
    declare(list, &none);
    param_table_layout(&t);
    return t;
}

// Initial values (host, fp32, the flat layout): ZERO, CONST, TRUNC_NORMAL from one sequential Rng seeded with
// `seed` (in table order, as upstream TRM draws them), UNIFORM by hash of (seed, tensor index, element).
inline std::vector<floatS> param_init_values(const ParamTable& t, uint64_t seed, Rng* rng) {
    std::vector<floatS> w(t.n_total, 0);
    for (size_t i = 0; i < t.tensors.size(); i++) {
        const TensorInfo& ti = t.tensors[i];
        for (size_t j = 0; j < ti.numel; j++) {
            floatS& v = w[ti.offset + j];
            switch (ti.init.kind) {
                case INIT_ZERO: v = 0; break;
                case INIT_CONST: v = ti.init.value; break;
                case INIT_TRUNC_NORMAL: v = (floatS)rng_trunc_normal(rng, ti.init.value); break;
                case INIT_UNIFORM: v = ti.init.value * (2.0f * hash_uniform(seed, i, j) - 1.0f); break;
            }
        }
    }
    return w;
}

// ----------------------------------------------------------------------------------------------------------
// The device buffers

typedef struct {
    ParamTable table;
    floatX* params;                  // (n_total)
    floatS* master;                  // (n_trainable), null when floatX is floatS
    floatS *grads, *adam_m, *adam_v; // (n_dense)
    floatS* ema;                     // (n_ema) or null without an EMA
    floatX* ema_compute;             // (n_ema) its compute copy (== ema when floatX is floatS)
    float ema_rate;                  // ema = rate * ema + (1 - rate) * weights
    std::vector<int> steps;          // optimizer steps taken by each group (Adam's t)
    floatS* norm_scratch;            // (1)
    floatX* muon_scratch;            // Muon's Newton-Schulz iterates (allocated by its first update)
    size_t muon_scratch_n;
} Params;

// Which buffer a binding points into (see param_bases).
typedef enum { BUF_PARAMS, BUF_MASTER, BUF_GRADS, BUF_EMA } ParamBuffer;

// fp32 values of the trained groups: the master copy, or params themselves when floatX is floatS.
inline floatS* params_fp32(const Params& p) { return p.master ? p.master : reinterpret_cast<floatS*>(p.params); }

// Per-group bases of a buffer, for tensor_bind: the buffer's start for the groups it covers, null for the others.
template <typename T> std::vector<T*> param_bases(const ParamTable& t, T* base, ParamBuffer which) {
    std::vector<T*> out;
    for (const ParamGroup& g : t.groups) {
        const bool covered = which == BUF_PARAMS || (which == BUF_MASTER && g.kind != GROUP_FROZEN) ||
                             (which == BUF_GRADS && group_dense(g.kind)) || (which == BUF_EMA && g.ema);
        out.push_back(covered ? base : nullptr);
    }
    return out;
}
// The weights evaluation (or a target branch) runs: the EMA's compute copy for the EMA groups, params elsewhere.
inline std::vector<floatX*> param_bases_ema(const Params& p) {
    std::vector<floatX*> out = param_bases(p.table, p.params, BUF_PARAMS);
    for (size_t g = 0; g < out.size(); g++) if (p.table.groups[g].ema && p.ema) out[g] = p.ema_compute;
    return out;
}

// Allocates the buffers of a table (with an EMA at `ema_rate` when with_ema), state zeroed.
inline void params_alloc(Params* p, const ParamTable& t, bool with_ema, float ema_rate) {
    const bool split = !std::is_same<floatX, floatS>::value;
    p->table = t;
    p->params = (floatX*)device_malloc(t.n_total * sizeof(floatX), "parameters");
    device_memset(p->params, 0, t.n_total * sizeof(floatX));
    p->master = split ? (floatS*)device_malloc(t.n_trainable * sizeof(floatS), "master weights") : nullptr;
    p->grads = (floatS*)device_malloc(t.n_dense * sizeof(floatS), "gradients");
    p->adam_m = (floatS*)device_malloc(t.n_dense * sizeof(floatS), "Adam m");
    p->adam_v = (floatS*)device_malloc(t.n_dense * sizeof(floatS), "Adam v");
    for (floatS* b : {p->grads, p->adam_m, p->adam_v}) device_memset(b, 0, t.n_dense * sizeof(floatS));
    p->ema = with_ema ? (floatS*)device_malloc(t.n_ema * sizeof(floatS), "EMA weights") : nullptr;
    p->ema_compute = with_ema && split ? (floatX*)device_malloc(t.n_ema * sizeof(floatX), "EMA compute weights")
                                       : reinterpret_cast<floatX*>(p->ema);
    p->ema_rate = ema_rate;
    p->steps.assign(t.groups.size(), 0);
    p->norm_scratch = (floatS*)device_malloc(sizeof(floatS), "gradient norm");
    p->muon_scratch = nullptr;
    p->muon_scratch_n = 0;
}

// Sets every group (and the EMA) from host fp32 values of the flat layout.
inline void params_set(Params* p, const std::vector<floatS>& w) {
    const ParamTable& t = p->table;
    if (w.size() != t.n_total) fatal("internal: %zu parameter values for a table of %zu", w.size(), t.n_total);
    if (p->master) copy_to_device(p->master, w.data(), t.n_trainable * sizeof(floatS));
    upload_floatX(p->params, w.data(), t.n_total);
    if (p->ema) {
        copy_to_device(p->ema, w.data(), t.n_ema * sizeof(floatS));
        if ((void*)p->ema_compute != (void*)p->ema) upload_floatX(p->ema_compute, w.data(), t.n_ema);
    }
}

// Host fp32 values of the flat layout: the trained groups from their fp32 copy, the frozen ones from params;
// with `ema`, the EMA in place of its groups.
inline std::vector<floatS> params_values(const Params& p, bool ema = false) {
    const ParamTable& t = p.table;
    std::vector<floatS> w(t.n_total);
    download_floatX(w.data(), p.params, t.n_total);
    copy_to_host(w.data(), params_fp32(p), t.n_trainable * sizeof(floatS));
    if (ema && p.ema) copy_to_host(w.data(), p.ema, t.n_ema * sizeof(floatS));
    return w;
}

// ----------------------------------------------------------------------------------------------------------
// Checkpoints and safetensors

// The first non-finite value of host values of the flat layout (or of a prefix of it, as the Adam and EMA buffers
// are), padding and alignment gaps included (a NaN there would reach the gradients through a zero times NaN): where it
// is, or "" when every value is finite.
inline std::string params_find_nonfinite(const ParamTable& t, const std::vector<floatS>& values) {
    for (size_t i = 0; i < values.size(); i++) {
        if (std::isfinite((double)values[i])) continue;
        std::string where = "the padding at flat element " + std::to_string(i);
        for (const TensorInfo& ti : t.tensors)
            if (i >= ti.offset && i < ti.offset + ti.numel) where = ti.name + " element " + std::to_string(i - ti.offset);
        return where + " is " + std::to_string((double)values[i]);
    }
    return "";
}

// The parameter state as checkpoint sections: per group "<group>.weights" (fp32), per Adam group "<group>.adam_m"
// and "<group>.adam_v", per EMA group "<group>.ema", and "param_steps" (each group's optimizer steps, int64).
// Without frozen_weights the frozen groups' weights are left out (a trainer that reloads them from their own files,
// e.g. a pretrained base under LoRA, and checks that they are the same).
inline void params_sections(const Params& p, SectionList* out, bool frozen_weights = true) {
    const ParamTable& t = p.table;
    const std::vector<floatS> w = params_values(p), e = p.ema ? params_values(p, true) : std::vector<floatS>();
    std::vector<floatS> m(t.n_dense), v(t.n_dense);
    copy_to_host(m.data(), p.adam_m, m.size() * sizeof(floatS));
    copy_to_host(v.data(), p.adam_v, v.size() * sizeof(floatS));
    const std::vector<floatS>* state[4] = {&w, &e, &m, &v};
    for (const std::vector<floatS>* values : state) {            // a checkpoint never holds a diverged model
        const std::string bad = params_find_nonfinite(t, *values);
        if (!bad.empty()) fatal("not writing a checkpoint: %s (the run diverged; the previous checkpoints are kept)", bad.c_str());
    }
    for (const ParamGroup& g : t.groups) {
        const size_t bytes = (g.end - g.begin) * sizeof(floatS);
        if (frozen_weights || g.kind != GROUP_FROZEN) section_add(out, g.name + ".weights", w.data() + g.begin, bytes);
        if (group_dense(g.kind)) {
            section_add(out, g.name + ".adam_m", m.data() + g.begin, bytes);
            section_add(out, g.name + ".adam_v", v.data() + g.begin, bytes);
        }
        if (g.ema && p.ema) section_add(out, g.name + ".ema", e.data() + g.begin, bytes);
    }
    std::vector<int64_t> steps(p.steps.begin(), p.steps.end());
    section_add(out, "param_steps", steps.data(), steps.size() * sizeof(int64_t));
}

// Values read from a file must be finite: NaN or Inf would silently train garbage.
inline void params_check_finite(const ParamTable& t, const std::vector<floatS>& values, const char* path, const char* what) {
    const std::string bad = params_find_nonfinite(t, values);
    if (!bad.empty()) fatal("%s: %s of %s: expected finite values (corrupt or diverged file)", path, what, bad.c_str());
}

// Reads the sections params_sections wrote (sizes checked against this run's table; values must be finite, Adam's
// second moments non-negative, each group's optimizer steps 0..step, the training step the checkpoint was written at).
// Without frozen_weights the frozen groups keep the weights they have.
inline void params_load_sections(Params* p, const Sections& s, const char* path, int64_t step, bool frozen_weights = true) {
    const ParamTable& t = p->table;
    std::vector<floatS> w = params_values(*p), m(t.n_dense), v(t.n_dense), e(t.n_ema);
    for (const ParamGroup& g : t.groups) {
        const size_t n = g.end - g.begin;
        if (frozen_weights || g.kind != GROUP_FROZEN) section_get(s, path, (g.name + ".weights").c_str(), w.data() + g.begin, n);
        if (group_dense(g.kind)) {
            section_get(s, path, (g.name + ".adam_m").c_str(), m.data() + g.begin, n);
            section_get(s, path, (g.name + ".adam_v").c_str(), v.data() + g.begin, n);
        }
        if (g.ema && p->ema) section_get(s, path, (g.name + ".ema").c_str(), e.data() + g.begin, n);
    }
    params_check_finite(t, w, path, "the weights");
    params_check_finite(t, m, path, "Adam's first moment");
    params_check_finite(t, e, path, "the EMA");
    for (size_t i = 0; i < v.size(); i++)
        if (!(v[i] >= 0) || !std::isfinite(v[i]))
            fatal("%s: Adam's second moment holds %g at flat element %zu, expected a finite, non-negative value (corrupt checkpoint)",
                  path, (double)v[i], i);
    params_set(p, w);
    copy_to_device(p->adam_m, m.data(), m.size() * sizeof(floatS));
    copy_to_device(p->adam_v, v.data(), v.size() * sizeof(floatS));
    if (p->ema) {
        copy_to_device(p->ema, e.data(), e.size() * sizeof(floatS));
        if ((void*)p->ema_compute != (void*)p->ema) upload_floatX(p->ema_compute, e.data(), t.n_ema);
    }
    std::vector<int64_t> steps(p->steps.size());
    section_get(s, path, "param_steps", steps.data(), steps.size());
    for (size_t g = 0; g < steps.size(); g++) {
        section_check_range(path, ("group " + t.groups[g].name + "'s optimizer steps").c_str(), steps[g], 0, step);
        p->steps[g] = (int)steps[g];
    }
}

// Only the weights (load_checkpoint=): "<group>.weights" of every group, into host values of the flat layout.
inline void params_read_weights(const ParamTable& t, const Sections& s, const char* path, std::vector<floatS>* w) {
    for (const ParamGroup& g : t.groups)
        section_get(s, path, (g.name + ".weights").c_str(), w->data() + g.begin, g.end - g.begin);
    params_check_finite(t, *w, path, "the weights");
}

// Every tensor of the table under its name, from host values of the flat layout.
inline void safetensors_add_table(SafetensorsWriter* st, const ParamTable& t, const std::vector<floatS>& w) {
    for (const TensorInfo& ti : t.tensors) safetensors_add_f32(st, ti.name, ti.shape, w.data() + ti.offset);
}
