// Optimisation of a Params (common/parameters.h): learning-rate schedules, gradient norms and clipping, the
// gradient sum over the ranks, Adam(ATan2)/AdamW per group, the EMA.
//
// One optimizer step of a trainer:
//   params_grad_sum_start(p, 0, n, st) ... dist_sum_wait(st)      gradients summed over the ranks
//   norm = sqrt(params_grad_norm_squared(p, 0, n, st))            of the groups that train this step
//   params_update(p, adam, lr_schedule(schedule, s), step, clip_scale(norm, max_norm), st)    (step from 1)
// params_update steps every Adam group that is not frozen at `step` (its lr and weight decay scaled by the
// group's) and every Muon group (each of its matrices on its own), then the EMA, then zeroes the gradients.
#pragma once
#include <math.h>
#include <algorithm>
#include "../kernels/adam.cuh"
#include "../kernels/convert.cuh"
#include "../kernels/ema.cuh"
#include "../kernels/global_norm.cuh"
#include "../kernels/muon.cuh"
#include "distributed.h"
#include "parameters.h"

// Linear warm-up, then cosine, in the two forms the reference systems use (each keeps its reference's step
// counting, so that runs reproduce them to the bit):
//   SCHEDULE_TRM (TinyRecursiveModels; steps counted from 1):
//       s < W: lr s / W ;  else lr (r + max(0, (1 - r) (1 + cos(pi (s - W) / (T - W))) / 2))   (r = 1: constant)
//   SCHEDULE_LAMBDA (arc-jepa-rl's LambdaLR; steps counted from 0):
//       s < W: lr (s + 1) / W ;  else lr max(r, (1 + cos(pi min(1, (s - W) / (T - W)))) / 2)
typedef enum { SCHEDULE_TRM, SCHEDULE_LAMBDA } ScheduleForm;
typedef struct {
    ScheduleForm form;
    float lr;
    int warmup, total;
    float min_ratio;
} Schedule;

inline float lr_schedule(const Schedule& s, int step) {
    if (s.form == SCHEDULE_TRM) {
        if (step < s.warmup) return s.lr * (float)step / (float)std::max(1, s.warmup);
        const double progress = (double)(step - s.warmup) / std::max(1, s.total - s.warmup);
        return (float)(s.lr * (s.min_ratio + std::max(0.0, (1.0 - s.min_ratio) * 0.5 * (1.0 + cos(M_PI * progress)))));
    }
    if (step < s.warmup) return s.lr * (float)(step + 1) / (float)s.warmup;
    const double p = s.total > s.warmup ? std::min(1.0, (double)(step - s.warmup) / (s.total - s.warmup)) : 1.0;
    return s.lr * (float)std::max((double)s.min_ratio, 0.5 * (1.0 + cos(M_PI * p)));
}

// The factor that clips a gradient of norm `norm` to max_norm (0: no clipping), as torch.nn.utils.clip_grad_norm_.
inline float clip_scale(double norm, float max_norm) {
    return max_norm > 0 ? (float)std::min(1.0, max_norm / (norm + 1e-6)) : 1.0f;
}

// The elements [begin, end) of groups g0..g1-1 (one range: the groups are contiguous).
inline size_t groups_begin(const Params& p, int g0) { return p.table.groups[g0].begin; }
inline size_t groups_end(const Params& p, int g1) { return p.table.groups[g1 - 1].end; }

// Squared norm of the gradient of Adam groups g0..g1-1, as one vector (one fixed-order sum: deterministic).
inline double params_grad_norm_squared(Params* p, int g0, int g1, Stream st) {
    const size_t begin = groups_begin(*p, g0), end = std::min(groups_end(*p, g1), p->table.n_dense);
    if (end <= begin) return 0;
    global_norm_squared(p->norm_scratch, p->grads + begin, end - begin, st);
    floatS host;
    copy_to_host(&host, p->norm_scratch, sizeof(floatS));
    return (double)host;
}

// Starts the sum over the ranks of the gradient of Adam groups g0..g1-1 (dist_sum_wait(st) completes it).
inline void params_grad_sum_start(Params* p, int g0, int g1, Stream st) {
    const size_t begin = groups_begin(*p, g0), end = std::min(groups_end(*p, g1), p->table.n_dense);
    if (end > begin) dist_sum_start(p->grads + begin, end - begin, st);
}

inline void params_zero_grads(Params* p) { device_memset(p->grads, 0, p->table.n_dense * sizeof(floatS)); }

typedef struct {
    bool atan2;                  // AdamATan2 (TRM's, no epsilon) or AdamW
    float beta1, beta2, eps, weight_decay;
} AdamConfig;

// Muon (kernels/muon.cuh): momentum, Nesterov, Newton-Schulz iterations.
typedef struct {
    float momentum;
    bool nesterov;
    int ns_steps;
} MuonConfig;

// Whether group g is trained (by Adam or Muon) in optimizer step `step` (counted from 1).
inline bool group_updates_at(const ParamGroup& g, int step) { return group_dense(g.kind) && step > g.frozen_steps; }

// One Muon step of every matrix of group g (the momentum in adam_m), lr and weight decay already the group's.
inline void muon_group_update(Params* p, int g, const MuonConfig& mc, float lr, float weight_decay, float grad_scale, Stream st) {
    for (const TensorInfo& t : p->table.tensors) {
        if (t.group != g) continue;
        const int R = (int)t.shape[0], C = (int)t.shape[1];
        const size_t need = muon_scratch_size(R, C);
        if (need > p->muon_scratch_n) {
            if (p->muon_scratch) { device_synchronize(); device_free(p->muon_scratch); }
            p->muon_scratch = (floatX*)device_malloc(need * sizeof(floatX), "Muon scratch");
            p->muon_scratch_n = need;
        }
        muon_update(p->params + t.offset, p->master ? p->master + t.offset : nullptr, p->grads + t.offset,
                    p->adam_m + t.offset, R, C, lr, mc.momentum, mc.nesterov, mc.ns_steps, weight_decay, grad_scale,
                    p->muon_scratch, st);
    }
}

// Optimizer step `step` (counted from 1) of every Adam or Muon group not frozen then, on gradients already summed and
// to be scaled by grad_scale (clipping); then the EMA and its compute copy; the gradients are zeroed. muon: the Muon
// settings (needed when there are Muon groups).
inline void params_update(Params* p, const AdamConfig& a, float lr, int step, float grad_scale, Stream st,
                          const MuonConfig* muon = nullptr) {
    const ParamTable& t = p->table;
    for (size_t g = 0; g < t.groups.size(); g++) {
        const ParamGroup& grp = t.groups[g];
        if (!group_updates_at(grp, step)) continue;
        if (grp.kind == GROUP_MUON) {
            if (!muon) fatal("internal: group '%s' is trained by Muon but no Muon settings were given", grp.name.c_str());
            muon_group_update(p, (int)g, *muon, lr * grp.lr_scale, a.weight_decay * grp.weight_decay_scale, grad_scale, st);
            ++p->steps[g];
            continue;
        }
        const size_t off = grp.begin, n = grp.end - grp.begin;
        adam_update(p->params + off, p->master ? p->master + off : nullptr, p->grads + off, p->adam_m + off,
                    p->adam_v + off, n, lr * grp.lr_scale, a.beta1, a.beta2, a.eps, a.weight_decay * grp.weight_decay_scale,
                    grad_scale, ++p->steps[g], a.atan2, st);
    }
    if (p->ema) {
        ema_update(p->ema, params_fp32(*p), t.n_ema, p->ema_rate, st);
        if ((void*)p->ema_compute != (void*)p->ema) convert_to_floatX(p->ema_compute, p->ema, t.n_ema, st);
    }
    params_zero_grads(p);
}
