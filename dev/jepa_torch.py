#!/usr/bin/env python3
"""One optimisation step of train_jepa.cu's default model, written in PyTorch and timed: the baseline of the
benchmark "samples/s of train_jepa at micro-batch 512 against a PyTorch implementation of the same step on the same
GPU" (`make bench` runs both; see dev/bench.py).

    python3 dev/jepa_torch.py                     # CUDA when available: micro-batch 512 x 2, bf16 autocast, eager
    python3 dev/jepa_torch.py --compile           # the model's forward through torch.compile (torch >= 2.0)
    python3 dev/jepa_torch.py --device cpu --micro-batch 8 --hidden 32 --heads 4 --codes 16 --proj 16 \
        --queue 64 --steps 3 --warmup 1 --dtype fp32      # a CPU smoke test (torch 1.13 is enough)

It is written the way a PyTorch researcher writes it, the style of the reference repository (arc-jepa-rl):
nn.Modules, autograd, torch.optim.Adam, bf16 autocast, no custom kernels. One step is what train_jepa.cu
(sections 4-7) does at its defaults: batch_size 1024 = grad_accum 2 micro-batches of B = 512 samples; a sample is a
context of k = 3 grids and a target grid, a grid N = 16 object slots of F = 23 features. Per micro-batch:
  - the online encoder runs ONCE over all its grids, as train_jepa's does: the context (B k grids), its colour,
    translation and flip copies (3 B k) and the three perturbed copies of the target (3 B): 7680 grids at B = 512.
    Encoder = Linear(F, D) - GELU - Linear(D, D), then 3 pre-LN relational blocks (8 heads; an object attends to
    itself and its adjacent objects; dropout 0.1 on the attention weights and both residual branches; padded slots
    zeroed after every block), then a hard VQ (K codes, nearest code, straight-through, one EMA codebook update
    per pass over the valid objects, commitment loss 0.3).
  - the EMA target branch (decay 0.99, its own VQ and codebook, in training mode, without gradient) encodes the
    B target grids.
  - masked mean over each grid's objects; the k context grids are averaged; the unperturbed context goes through
    the projection head Linear(D, P) - ReLU - Linear(P, P) - L2 normalise, the target through the target head.
  - losses: InfoNCE of each context against the micro-batch's targets and a FIFO queue of past targets
    (learnable log-temperature, clamped to [0.07, 0.15]); 0.1 x SIGReg (LeJEPA: 1024 slices drawn once per step,
    17 knots on [0, 3], on the head's raw output); colour 0.1 / translation 0.05 / flip 0.05 invariance (MSE of the
    perturbed context to the context, and of the perturbed target to the target, on the D-wide representations);
    relational loss (0.05 context mean vs target, 0.025 spread of the context grids) on the post-VQ objects;
    the commitment loss. The objective / grad_accum is backpropagated.
After the micro-batches: global-norm clipping to 0.5, Adam (lr 5e-5 with the warm-up / cosine schedule, weight
decay 1e-6), the EMA of the target branch, the step's 1024 target projections into the queue (8192 rows).

Differences from train_jepa, none of which changes the arithmetic or the memory traffic of the step materially:
  - The reference encodes the context and each perturbed copy in separate encoder calls; train_jepa and this
    script encode all of them in one pass (the same FLOPs, in fewer and larger kernels).
  - --compile compiles the model's forward (encoders, VQs, heads, losses; the backward through AOTAutograd); the
    perturbations, the dead-code refresh, the optimizer, the target EMA and the queue stay eager.
  - The inputs are random object tensors of the right shapes (features, masks, adjacency symmetric with self),
    one set per micro-batch, made once on the device before timing: data loading is not timed here, while
    train_jepa's samples/s includes its host data pipeline (object extraction, invariance copies, upload).
  - The invariance perturbations act on those random features the way train_jepa's do (a permutation of the 10
    colours and of the 10 colour slots; an independent shift of every object's geometry, clamped to [0, 1]; a
    reflection of one axis), so they stand in for its host-side perturbations at the same shapes.
  - q, k and v are one Linear(D, 3D) (train_jepa's layout; the reference has three Linear(D, D)); attention is
    torch's scaled_dot_product_attention where torch has it (>= 2.0), the explicit softmax otherwise.
  - torch.optim.Adam adds the weight decay to the gradient (the reference), train_jepa decays decoupled (AdamW).
  - Dead codes are re-seeded as train_jepa's default does (EMA count below 1 every 500 VQ calls, from random batch
    vectors), but after the micro-batch instead of inside the VQ call; a 30-step benchmark reaches no refresh.
  - train_jepa reads the losses back after every micro-batch (to skip non-finite steps); this reads them only
    for the two printed steps, which can only favour PyTorch.
  - Parameter count: both count the same trainable tensors (encoder, projection head, log-temperature; the
    codebook is an EMA buffer in both), 3,873,025 at the defaults; train_jepa's "parameters:" line prints the same.

Prints the loss terms of the first and the last step, then one line:
    torch_jepa device="<name>" micro_batch=512 grad_accum=2 dtype=bf16 compile=0 ms_per_step=<x> samples_per_s=<y> params=<n>
where samples_per_s counts micro_batch x grad_accum samples per optimisation step.
"""
import argparse
import contextlib
import copy
import math
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# Object tensors (common/objects.h): N slots per grid, F features per object, k grids per context.
N_OBJECTS, N_FEATURES, CONTEXT_WINDOW = 16, 23, 3
DOMINANT_COLOR = 6
Y_COLUMNS, X_COLUMNS = [7, 9, 11], [8, 10, 12]          # centroid, bbox min, bbox max on each axis
COLOR_SLOTS = list(range(13, 23))

# train_jepa.cu's defaults (section 1, config_defaults).
DROPOUT = 0.1
COMMITMENT_COST, CODEBOOK_DECAY, CODEBOOK_EPS = 0.3, 0.99, 1e-5
REFRESH_INTERVAL, REFRESH_THRESHOLD = 500, 1.0
TARGET_DECAY = 0.99
TEMPERATURE, TEMPERATURE_MIN, TEMPERATURE_MAX = 0.07, 0.07, 0.15
INVARIANCES = [("inv_color", 0.1), ("inv_translation", 0.05), ("inv_symmetry", 0.05)]
TRANSLATION_DELTA = 0.1
REL_WEIGHT, REL_SELF_WEIGHT = 0.05, 0.025
SIGREG_WEIGHT, SIGREG_SLICES, SIGREG_KNOTS, SIGREG_TMAX = 0.1, 1024, 17, 3.0
LR, WEIGHT_DECAY, BETAS, MAX_NORM = 5e-5, 1e-6, (0.9, 0.999), 0.5
WARMUP_STEPS, MIN_LR_SCALE = 1000, 0.1

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")    # torch >= 2.0


# ----------------------------------------------------------------------------------------------------------
# Model

def attention(q, k, v, allowed, dropout_p):
    """q, k, v (G, H, N, HD), allowed (G, 1, N, N) bool -> (G, H, N, HD), softmax over the allowed keys."""
    if HAS_SDPA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])                        # (G, H, N, N)
    weights = F.dropout(scores.masked_fill(~allowed, float("-inf")).softmax(-1), dropout_p)
    return weights @ v


class RelationalBlock(nn.Module):
    """Pre-LN block: x1 = x + Drop(out_proj(Attn(LN1(x)))), out = mask * (x1 + Drop(FFN(LN2(x1))))."""

    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, allowed, padded):
        # x (G, N, D), allowed (G, 1, N, N) bool, padded (G, N, 1) bool
        G, N, D = x.shape
        qkv = self.qkv_proj(self.norm1(x)).view(G, N, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                            # each (G, H, N, HD)
        attended = attention(q, k, v, allowed, self.dropout if self.training else 0.0)
        x = x + self.drop(self.out_proj(attended.transpose(1, 2).reshape(G, N, D)))
        return (x + self.drop(self.ffn(self.norm2(x)))).masked_fill(padded, 0.0)


class ObjectEncoder(nn.Module):
    """The object encoder up to the VQ: features (G, N, F), mask (G, N), adjacency (G, N, N) -> (G, N, D)."""

    def __init__(self, dim, layers, heads, dropout):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(N_FEATURES, dim), nn.GELU(), nn.Linear(dim, dim))
        self.layers = nn.ModuleList(RelationalBlock(dim, heads, dropout) for _ in range(layers))

    def forward(self, features, mask, adjacency):
        valid = mask.bool()                                                               # (G, N)
        self_loops = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
        allowed = self_loops | (adjacency.bool() & valid[:, :, None] & valid[:, None, :])  # (G, N, N)
        x = self.proj(features)
        for layer in self.layers:
            x = layer(x, allowed[:, None], ~valid[:, :, None])
        return x


class VectorQuantizer(nn.Module):
    """Hard VQ with an EMA codebook (VQ-VAE EMA form, Laplace-smoothed counts), straight-through, commitment loss.
    The codebook and its statistics are buffers, updated in training mode from the valid rows only."""

    def __init__(self, codes, dim):
        super().__init__()
        codebook = torch.empty(codes, dim).uniform_(-1.0 / codes, 1.0 / codes)
        self.register_buffer("codebook", codebook)                # (K, D)
        self.register_buffer("ema_count", torch.zeros(codes))     # (K)
        self.register_buffer("ema_sum", codebook.clone())         # (K, D)

    def forward(self, x, valid):
        """x (R, D), valid (R) bool -> quantised x (R, D) (straight-through on valid rows), commitment loss."""
        with torch.no_grad():
            x32 = x.float()
            distances = (x32.pow(2).sum(1, keepdim=True) - 2 * x32 @ self.codebook.t()
                         + self.codebook.pow(2).sum(1))                                  # (R, K)
            codes = distances.argmin(1)                                                  # (R)
            nearest = self.codebook[codes]                                               # (R, D)
            if self.training:
                self.ema_update(x32, codes, valid)
        quantised = torch.where(valid[:, None], x + (nearest.to(x.dtype) - x).detach(), x)
        weight = valid.to(torch.float32)[:, None]
        n_valid = weight.sum().clamp_min(1.0)
        commitment = COMMITMENT_COST * ((x.float() - nearest).pow(2) * weight).sum() / (n_valid * x.shape[1])
        return quantised, commitment

    def ema_update(self, x, codes, valid):
        # under no_grad: x (R, D) fp32, codes (R) long, valid (R) bool
        weight = valid.to(torch.float32)
        counts = torch.zeros_like(self.ema_count).index_add_(0, codes, weight)           # (K)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, x * weight[:, None])  # (K, D)
        self.ema_count.mul_(CODEBOOK_DECAY).add_(counts, alpha=1 - CODEBOOK_DECAY)
        self.ema_sum.mul_(CODEBOOK_DECAY).add_(sums, alpha=1 - CODEBOOK_DECAY)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + CODEBOOK_EPS) / (total + len(counts) * CODEBOOK_EPS) * total   # (K)
        self.codebook.copy_(self.ema_sum / smoothed[:, None])


class DeadCodeRefresh:
    """Re-seeds a VectorQuantizer's dead codes as train_jepa's default does: it counts the VQ's calls (the reference
    counts one per encoding of a batch of grids) and, once there are REFRESH_INTERVAL, gives the codes whose EMA count
    is below REFRESH_THRESHOLD random valid rows of the batch. (Python state lives outside the modules, whose
    attributes torch.compile watches.)"""

    def __init__(self, vq):
        self.vq, self.calls = vq, 0

    @torch.no_grad()
    def __call__(self, x, valid, calls):
        # x (R, D) the VQ's input, valid (R) bool
        self.calls += calls
        if self.calls < REFRESH_INTERVAL:
            return
        vq = self.vq
        dead = (vq.ema_count < REFRESH_THRESHOLD).nonzero().squeeze(1)
        candidates = valid.nonzero().squeeze(1)
        if len(dead) == 0 or len(candidates) == 0:
            return
        self.calls = 0
        vectors = x[candidates[torch.randint(len(candidates), (len(dead),), device=x.device)]].float()  # (dead, D)
        vq.codebook[dead] = vectors
        vq.ema_count[dead] = REFRESH_THRESHOLD
        vq.ema_sum[dead] = REFRESH_THRESHOLD * vectors


class Queue:
    """The InfoNCE FIFO of past target projections: rows (Q, P) fp32, and which of them are filled (Q)."""

    def __init__(self, size, dim, device):
        self.rows = torch.zeros(size, dim, device=device)
        self.filled = torch.zeros(size, dtype=torch.bool, device=device)
        self.ptr = 0

    @torch.no_grad()
    def push(self, target_proj):
        """A step's target projections (n, P), the last Q of them if there are more."""
        Q = self.rows.shape[0]
        target_proj = target_proj[-Q:]
        index = (self.ptr + torch.arange(target_proj.shape[0], device=self.rows.device)) % Q
        self.rows[index] = target_proj.float()
        self.filled[index] = True
        self.ptr = (self.ptr + target_proj.shape[0]) % Q


class ProjectionHead(nn.Module):
    """x (n, D) -> (L2-normalised projection (n, P), raw projection (n, P))."""

    def __init__(self, dim, proj_dim):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, proj_dim), nn.ReLU(), nn.Linear(proj_dim, proj_dim))

    def forward(self, x):
        raw = self.proj(x)
        return F.normalize(raw, dim=-1), raw


def masked_mean(x, mask):
    """x (G, N, D), mask (G, N) -> the mean over each grid's valid objects (G, D) (0 for a grid without any)."""
    m = mask.to(x.dtype)[:, :, None]
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def sigreg(z, directions):
    """LeJEPA's SIGReg of z (n, P) on the slices directions (P, M): the Epps-Pulley statistic of every 1-d
    projection against N(0, 1), 17 knots on [0, 3] (trapezoid, mirrored), times n, averaged over the slices."""
    t = torch.linspace(0, SIGREG_TMAX, SIGREG_KNOTS, device=z.device)                  # (T)
    phi = torch.exp(-0.5 * t * t)
    dt = SIGREG_TMAX / (SIGREG_KNOTS - 1)
    weights = 2 * dt * phi
    weights[0], weights[-1] = dt * phi[0], dt * phi[-1]
    tx = (z.float() @ directions)[:, :, None] * t                                      # (n, M, T)
    err = (tx.cos().mean(0) - phi).pow(2) + tx.sin().mean(0).pow(2)                      # (M, T)
    return (err @ weights).mean() * z.shape[0]


def pair_distances(e, adjacency, mask):
    """R_ij = |e_i - e_j|^2 on the edges between valid objects: e (..., N, D) -> (..., N, N)."""
    e = e.float()
    sq = e.pow(2).sum(-1)                                                                  # (..., N)
    r = (sq[..., :, None] + sq[..., None, :] - 2 * e @ e.transpose(-1, -2)).clamp_min(0.0)
    valid = mask.bool()
    edges = adjacency.bool() & valid[..., :, None] & valid[..., None, :]
    return r * edges


class ObjectJepa(nn.Module):
    """The online network (encoder, VQ, projection head, log-temperature) and its EMA target branch."""

    def __init__(self, dim, layers, heads, codes, proj_dim):
        super().__init__()
        self.encoder = ObjectEncoder(dim, layers, heads, DROPOUT)
        self.vq = VectorQuantizer(codes, dim)
        self.projection_head = ProjectionHead(dim, proj_dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(TEMPERATURE)))
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_vq = copy.deepcopy(self.vq)
        self.target_head = copy.deepcopy(self.projection_head).requires_grad_(False)

    def forward(self, online, target, directions, queue, queue_filled):
        """online: features (G, N, F), mask (G, N), adjacency (G, N, N) of the online grids in the order
        [context (B k) | its 3 perturbed copies (3 B k) | 3 perturbed targets (3 B)]; target: the B target grids;
        directions (P, M): this step's SIGReg slices; queue (Q, P), queue_filled (Q): the InfoNCE queue. Returns
        the micro-batch's objective, its terms, the target projections (B, P) and the inputs of both VQs (for the
        dead-code refresh)."""
        B, L, N = target["mask"].shape[0], CONTEXT_WINDOW, N_OBJECTS
        n_inv = len(INVARIANCES)
        x = self.encoder(online["features"], online["mask"], online["adjacency"])       # (G, N, D)
        G, D = x.shape[0], x.shape[2]
        e, commitment = self.vq(x.reshape(G * N, D), online["mask"].reshape(G * N).bool())
        e = e.view(G, N, D)
        pooled = masked_mean(e, online["mask"])                                           # (G, D)
        contexts = pooled[:(1 + n_inv) * B * L].view((1 + n_inv) * B, L, D).mean(1)      # (4B, D)
        perturbed_targets = pooled[(1 + n_inv) * B * L:].view(n_inv, B, D)               # (3, B, D)

        with torch.no_grad():
            tx = self.target_encoder(target["features"], target["mask"], target["adjacency"])   # (B, N, D)
            te, _ = self.target_vq(tx.reshape(B * N, D), target["mask"].reshape(B * N).bool())
            te = te.view(B, N, D)
            target_repr = masked_mean(te, target["mask"])                                 # (B, D)
            target_proj, _ = self.target_head(target_repr)                                # (B, P)
        context_proj, context_raw = self.projection_head(contexts[:B])                    # (B, P) each

        terms = {}
        tau = self.log_temperature.exp().clamp(TEMPERATURE_MIN, TEMPERATURE_MAX)
        candidates = torch.cat([target_proj.float(), queue])                               # (B + Q, P)
        logits = context_proj.float() @ candidates.t() / tau                               # (B, B + Q)
        filled = torch.cat([torch.ones(B, dtype=torch.bool, device=logits.device), queue_filled])
        logits = logits.masked_fill(~filled, float("-inf"))
        terms["infonce"] = F.cross_entropy(logits, torch.arange(B, device=logits.device))
        terms["sigreg"] = sigreg(context_raw, directions)
        for i, (name, weight) in enumerate(INVARIANCES):
            terms[name] = weight * (F.mse_loss(contexts[(1 + i) * B:(2 + i) * B].float(), contexts[:B].float())
                                    + F.mse_loss(perturbed_targets[i].float(), target_repr.float()))
        context_r = pair_distances(e[:B * L].view(B, L, N, D), online["adjacency"][:B * L].view(B, L, N, N),
                                   online["mask"][:B * L].view(B, L, N))                  # (B, L, N, N)
        target_r = pair_distances(te, target["adjacency"], target["mask"])                # (B, N, N)
        context_mean = context_r.mean(1)                                                   # (B, N, N)
        terms["relational"] = REL_WEIGHT * F.mse_loss(context_mean, target_r)
        terms["relational_self"] = REL_SELF_WEIGHT * F.mse_loss(context_r, context_mean[:, None].expand_as(context_r))
        terms["commitment"] = commitment
        objective = sum([SIGREG_WEIGHT * v if name == "sigreg" else v for name, v in terms.items()])
        terms["tau"] = tau.detach()
        return objective, terms, target_proj, x.detach(), tx

    def trainable_parameters(self):
        """The trained tensors in train_jepa's order: encoder, projection head, log-temperature."""
        return list(self.encoder.parameters()) + list(self.projection_head.parameters()) + [self.log_temperature]

    @torch.no_grad()
    def update_target(self):
        """target <- TARGET_DECAY target + (1 - TARGET_DECAY) online, on the parameters (not the codebooks)."""
        for online, target in ((self.encoder, self.target_encoder), (self.projection_head, self.target_head)):
            for p_online, p_target in zip(online.parameters(), target.parameters()):
                p_target.mul_(TARGET_DECAY).add_(p_online, alpha=1 - TARGET_DECAY)


# ----------------------------------------------------------------------------------------------------------
# Inputs

def random_grids(G, gen):
    """G grids of random objects: features (G, N, F) (geometry in [0, 1], dominant colour 0..9), mask (G, N) with
    1..N leading valid slots, adjacency (G, N, N) symmetric with self-loops, among valid objects."""
    N = N_OBJECTS
    valid = torch.arange(N)[None, :] < torch.randint(1, N + 1, (G, 1), generator=gen)           # (G, N)
    features = torch.rand(G, N, N_FEATURES, generator=gen)
    features[:, :, DOMINANT_COLOR] = torch.randint(0, 10, (G, N), generator=gen).float()
    features *= valid[:, :, None]
    touching = torch.rand(G, N, N, generator=gen) < 0.3
    adjacency = (touching | touching.transpose(1, 2) | torch.eye(N, dtype=torch.bool)) & valid[:, :, None] & valid[:, None, :]
    return {"features": features, "mask": valid.to(torch.uint8), "adjacency": adjacency.to(torch.uint8)}


def random_micro_batch(B, gen, device):
    """B samples of the reference's repeat mode: a context of one grid k times (B, k, ...) and a target grid (B, ...)."""
    grids = random_grids(B, gen)
    context = {name: t[:, None].expand(B, CONTEXT_WINDOW, *t.shape[1:]).contiguous().to(device) for name, t in grids.items()}
    target = {name: t.to(device) for name, t in random_grids(B, gen).items()}
    return context, target


def perturb(features, mask, kind):
    """A perturbed copy of features (..., N, F), on the valid objects (mask (..., N)) only:
    inv_color: one permutation of the 10 colours (dominant colour) and one of the 10 colour slots;
    inv_translation: an independent shift of every object's y and x geometry in [-0.1, 0.1], clamped to [0, 1];
    inv_symmetry: one axis reflected (centroid c -> 1 - c, bbox min/max -> 1 - max / 1 - min)."""
    out = features.clone()
    if kind == "inv_color":
        colour_perm = torch.randperm(10, device=features.device).to(features.dtype)
        slot_perm = torch.randperm(10, device=features.device)
        out[..., DOMINANT_COLOR] = colour_perm[features[..., DOMINANT_COLOR].round().clamp(0, 9).long()]
        out[..., COLOR_SLOTS] = features[..., COLOR_SLOTS][..., slot_perm]
    elif kind == "inv_translation":
        shift = (torch.rand(*features.shape[:-1], 2, device=features.device) * 2 - 1) * TRANSLATION_DELTA   # (..., N, 2)
        out[..., Y_COLUMNS] = (features[..., Y_COLUMNS] + shift[..., :1]).clamp(0, 1)
        out[..., X_COLUMNS] = (features[..., X_COLUMNS] + shift[..., 1:]).clamp(0, 1)
    else:
        centroid, low, high = random.choice([X_COLUMNS, Y_COLUMNS])
        out[..., centroid] = (1 - features[..., centroid]).clamp(0, 1)
        out[..., low] = (1 - features[..., high]).clamp(0, 1)
        out[..., high] = (1 - features[..., low]).clamp(0, 1)
    return torch.where(mask.bool()[..., None], out, features)


def online_grids(context, target):
    """The online encoder's grids of one micro-batch: [context | 3 perturbed contexts | 3 perturbed targets]."""
    n_inv = len(INVARIANCES)
    def grids(t):                                                   # (B, k, ...) -> (B k, ...)
        return t.reshape(-1, *t.shape[2:])
    features = [grids(context["features"])]
    features += [grids(perturb(context["features"], context["mask"], name)) for name, _ in INVARIANCES]
    features += [perturb(target["features"], target["mask"], name) for name, _ in INVARIANCES]
    return {"features": torch.cat(features),                                                 # (G, N, F)
            "mask": torch.cat([grids(context["mask"])] * (1 + n_inv) + [target["mask"]] * n_inv),   # (G, N)
            "adjacency": torch.cat([grids(context["adjacency"])] * (1 + n_inv) + [target["adjacency"]] * n_inv)}


# ----------------------------------------------------------------------------------------------------------
# Training step and timing

def lr_scale(step, total):
    """The reference's LambdaLR: linear warm-up (s + 1) / warmup, then cosine down to MIN_LR_SCALE."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = min(1.0, (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS))
    return max(MIN_LR_SCALE, 0.5 * (1 + math.cos(math.pi * progress)))


def train_step(model, forward, optimizer, scheduler, queue, refresh, micro_batches, autocast):
    """One optimisation step over the micro-batches (forward: the model or its compiled version; refresh: the
    DeadCodeRefresh of the online and the target VQ); returns the mean of their loss terms (tensors)."""
    directions = F.normalize(torch.randn(queue.rows.shape[1], SIGREG_SLICES, device=queue.rows.device), dim=0)  # (P, M)
    staged, mean_terms = [], {}
    for context, target in micro_batches:
        online = online_grids(context, target)
        with autocast():
            objective, terms, target_proj, vq_in, target_vq_in = forward(online, target, directions, queue.rows,
                                                                         queue.filled)
        (objective / len(micro_batches)).backward()
        D = vq_in.shape[-1]
        refresh[0](vq_in.reshape(-1, D), online["mask"].reshape(-1).bool(), 1 + 2 * len(INVARIANCES))
        refresh[1](target_vq_in.reshape(-1, D), target["mask"].reshape(-1).bool(), 1)
        staged.append(target_proj)
        terms["loss"] = objective
        for name, value in terms.items():
            mean_terms[name] = mean_terms.get(name, 0) + value.detach().float() / len(micro_batches)
    torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), MAX_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    model.update_target()
    queue.push(torch.cat(staged))
    return mean_terms


def terms_line(step, terms):
    return f"step {step}: " + " ".join(f"{name}={value.item():.6f}" for name, value in terms.items())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--micro-batch", type=int, default=512, help="samples per micro-batch")
    ap.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimisation step")
    ap.add_argument("--hidden", type=int, default=384, help="D, object embedding width")
    ap.add_argument("--layers", type=int, default=3, help="relational blocks")
    ap.add_argument("--heads", type=int, default=8, help="attention heads")
    ap.add_argument("--codes", type=int, default=768, help="K, codebook size")
    ap.add_argument("--proj", type=int, default=256, help="P, projection width")
    ap.add_argument("--queue", type=int, default=8192, help="InfoNCE queue rows")
    ap.add_argument("--steps", type=int, default=30, help="timed optimisation steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    ap.add_argument("--compile", action="store_true", help="run the model's forward through torch.compile")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], help="bf16: autocast (default on CUDA); fp32: none "
                    "(default elsewhere: torch 1.13's CPU autocast cannot run LayerNorm on bf16)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.compile and not hasattr(torch, "compile"):
        raise SystemExit(f"dev/jepa_torch.py: --compile needs torch >= 2.0 (this is torch {torch.__version__})")
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("dev/jepa_torch.py: --steps must be >= 1 and --warmup >= 0")
    if args.hidden % args.heads:
        raise SystemExit(f"dev/jepa_torch.py: --heads {args.heads} does not divide --hidden {args.hidden}")
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    model = ObjectJepa(args.hidden, args.layers, args.heads, args.codes, args.proj).to(device).train()
    forward = torch.compile(model) if args.compile else model
    queue = Queue(args.queue, args.proj, device)
    refresh = (DeadCodeRefresh(model.vq), DeadCodeRefresh(model.target_vq))
    params = model.trainable_parameters()
    n_params = sum(p.numel() for p in params)
    optimizer = torch.optim.Adam(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    total_steps = args.warmup + args.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_scale(s, total_steps))
    if args.dtype == "bf16":
        autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    gen = torch.Generator().manual_seed(args.seed)
    micro_batches = [random_micro_batch(args.micro_batch, gen, device) for _ in range(args.grad_accum)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}: D={args.hidden} layers={args.layers} heads={args.heads} K={args.codes} "
          f"P={args.proj} queue={args.queue}, micro-batch {args.micro_batch} x {args.grad_accum}, {args.dtype}, "
          f"compile={int(args.compile)}")
    print(f"parameters: {n_params}")
    print("inputs: random object tensors made once on the device; data loading is not timed here "
          "(train_jepa's samples/s includes its host data pipeline)", flush=True)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = None
    for step in range(total_steps):
        if step == args.warmup:
            synchronize()
            start = time.perf_counter()
        terms = train_step(model, forward, optimizer, scheduler, queue, refresh, micro_batches, autocast)
        if step == 0:
            print(terms_line(step, terms), flush=True)
    synchronize()
    seconds = time.perf_counter() - start
    print(terms_line(total_steps - 1, terms))
    ms_per_step = 1000 * seconds / args.steps
    samples_per_s = args.micro_batch * args.grad_accum * args.steps / seconds
    print(f'torch_jepa device="{name}" micro_batch={args.micro_batch} grad_accum={args.grad_accum} dtype={args.dtype} '
          f"compile={int(args.compile)} ms_per_step={ms_per_step:.2f} samples_per_s={samples_per_s:.1f} params={n_params}")


if __name__ == "__main__":
    main()
