#!/usr/bin/env python3
"""Qwen2 with LoRA in plain PyTorch: an independent reference for train_cvae.cu's debug state, and its step timed.

    python3 dev/cvae_torch.py replay STATE.safetensors [--tol 1e-4]   # recompute a debug state in float64
    python3 dev/cvae_torch.py make-example OUT.safetensors [--trainable lora|base] [--untied] [--rslora] [--cvae] ...
    python3 dev/cvae_torch.py selftest                                 # this file against naive loops
    python3 dev/cvae_torch.py bench [--preset qwen2.5-0.5b|small] [--batch 8] [--seq 512] [--lora-r 16] ...

Needs torch (>= 1.13; on the development machine /usr/bin/python3 has it), nothing else: no transformers, no peft.

The model is Hugging Face's Qwen2ForCausalLM, written out from its equations, on parameters kept in one dict
under HF's names (PEFT's names for the adapters), so a debug state maps onto it name for name:
  - x = embed_tokens[ids]; per layer (pre-norm):  h = x + o_proj(attn(rms1(x)))
                                                   x = h + down_proj(silu(gate_proj(rms2(h))) * up_proj(rms2(h)))
    then the final RMSNorm and logits = x W^T with W = lm_head.weight, or embed_tokens when the embeddings are tied.
  - RMSNorm: w * (x / sqrt(mean(x^2) + eps)), the statistics in fp32 (float64 in float64).
  - Attention: q, k, v projections with bias, o_proj without; NH query heads of HD = D / NH, NKV key/value heads,
    query head h reading kv head h // (NH / NKV); rotary embedding (rotate-half: angle = pos * theta^(-2i/HD), the
    cos and sin tables repeated over both halves, q' = q cos + rotate_half(q) sin, rotate_half(x) = [-x2, x1]);
    causal softmax(q k^T / sqrt(HD)) v, the softmax in fp32; no other mask (padding sits at the end of a row).
  - LoRA on an adapted linear layer: y = x W^T + b + s (x A^T) B^T, A (r, in), B (out, r), s = alpha / r, or
    alpha / sqrt(r) with rsLoRA (no dropout).
  - Loss: mean over the positions t < T-1 whose next label labels[b, t+1] is not -100 of
    cross_entropy(logits[b, t], labels[b, t+1]).

replay reads the debug state (safetensors: "__metadata__" holds "config" = the model's config.json text, "lora" =
{"r", "lora_alpha", "target_modules", "use_rslora", "lora_dropout"} or nothing, "trainable" = "lora" | "base";
the weights; batch.input_ids and batch.labels; out.logits and out.loss; grad.NAME for each trainable tensor),
rebuilds the model in float64, recomputes the logits, the loss and by autograd the gradient of the loss with
respect to each trainable tensor, and prints for each of them "NAME max_abs_err rel_err" (rel_err: the largest
difference over the largest magnitude of the float64 value; for the CVAE's out.tw over its operands', see below),
then "worst rel_err=E (tensor NAME)". A gradient is that of out.loss itself (the mean over the batch's labelled
positions; with tied embeddings, embed_tokens' gradient sums the lookup's and the lm head's parts). Exit status 1,
with one line "error: FILE: why" on stderr, when the worst exceeds --tol (NaN does), or when a tensor is missing,
unexpected, misshapen or of the wrong dtype.

The CVAE's state (train_cvae mode=cvae) is recognised by the metadata "cvae" = {"d_z", "beta", "c_base",
"posterior_variance_weight", "router_marginal_kl_to_prior_weight", "token_weighted_reconstruction_weight"} (each
required; other keys are an error: replay would not know their math). Beside the above it holds the posterior's
tensors (with LoRA its adapters "posterior." + PEFT's names on the shared frozen base; without, a second network
"posterior." + HF's names, no lm head), the heads cvae.{router_head,posterior_head}.{weight (2 d_z, D), bias} and
cvae.z_proj.{weight (D, d_z), bias}, all trained;
batch.slot_pos, batch.router_pos (= slot_pos - 1), batch.posterior_ids (B, Tq), batch.posterior_pos (int) and
batch.eps (B, d_z); out.mu_q, out.logvar_q, out.z, out.mu_p, out.logvar_p (B, d_z), out.recon, out.kl, out.pv,
out.rmkl, out.tw (1). The math: the posterior network on posterior_ids, final-normed, read at posterior_pos, through
posterior_head -> [mu_q, logvar_q]; z = mu_q + exp(logvar_q / 2) eps; the generator on the token embeddings with
row slot_pos replaced by z_proj(z), final-normed h, router_head(h at router_pos) -> [mu_p, logvar_p], logits = the
lm head of h; recon = the loss above, kl = mean_b sum_d KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)),
pv = mean exp(logvar_q), rmkl = sum_d KL(N(m_d, v_d) || N(0, 1)) with m_d, v_d the batch's mean and variance of the
router's mixture; tw = R_tw = (1/n) sum over the n labelled positions t of (b_t / c_base)(nll_t - b_t), nll_t the
position's cross-entropy (recon = (1/n) sum nll_t) and b_t that of the same generator with z = 0 (the slot row
z_proj(0) = z_proj.bias), computed under torch.no_grad: a constant, so that R_tw's gradient is that of
(1/(n c_base)) sum b_t nll_t; when token_weighted_reconstruction_weight is 0 the trainer does not compute b and
writes out.tw = 0, and so does replay. out.loss = J = recon / c_base + beta kl + posterior_variance_weight pv
+ router_marginal_kl_to_prior_weight rmkl + token_weighted_reconstruction_weight tw, and every grad.NAME is J's
(b held fixed). replay compares the logits, each out.* and each gradient the same way, except that out.tw's rel_err
is taken over the larger of its two operands (1/n) sum b_t nll_t / c_base and (1/n) sum b_t^2 / c_base: R_tw is
their difference, near 0 while z barely moves the NLL (the first steps: 2e-6 against operands of 3 on a tiny run),
where float32 NLLs (errors about 1e-6) cannot give it to 1e-4 of itself (measured 1e-2 at step 1, 1e-4 at step 4).

make-example writes such a file from this script itself (a tiny random config and batch with padding and -100
labels, nonzero adapters, everything computed in float32), for testing replay while no trainer writes one; with
--cvae the CVAE's (d_z 4, every weight of J nonzero, token_weighted_reconstruction_weight 0.3 among them, padding
in both id tensors, nonzero heads and adapters).
selftest checks the attention against a loop over one head at a time, the LoRA path against merged weights, the
loss against a loop, and the make-example / replay cycle (a perturbed gradient, a missing or misshapen tensor
must fail); for the CVAE the posterior, z, the slot row's injection and the router against loops, the KL terms
against per-dimension loops and torch.distributions, their gradients against central differences (gradcheck),
R_tw against a loop over the positions (b_t from a second pass with the slot row z_proj.bias), J's gradient with b
constant against central differences of J with b held fixed (and against the per-token weights (1 + tw b_t) of the
NLL; a b differentiated moves it), out.tw = 0 at weight 0, and its cycle (a perturbed gradient of a head or of a
posterior tensor, a perturbed out.kl or out.tw must fail, a "cvae" without token_weighted_reconstruction_weight is
an error); when
transformers happens to be importable it also compares the logits with its Qwen2ForCausalLM.

bench times one LoRA training step on random weights (frozen base in --dtype, fp32 adapters on all seven
projections with alpha = 2r, cast to --dtype in the forward; loss on every token; backward; AdamW on the adapters)
on CUDA when available, otherwise on the CPU (small preset only), and prints one line
    bench_torch ms_per_step=M tokens_per_s=T peak_mem_gb=G device="NAME" ... flops_per_step=F tflops_per_s=X
peak_mem_gb is torch's peak allocation on CUDA, the process's peak resident memory on the CPU.
"""
import argparse
import json
import math
import os
import resource
import struct
import sys
import tempfile
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("error: dev/cvae_torch.py: needs torch (on the development machine: /usr/bin/python3 dev/cvae_torch.py)")

TARGETS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
PEFT = "base_model.model."       # PEFT's prefix of every name of the adapted model
DTYPES = {"F32": torch.float32, "F64": torch.float64, "I32": torch.int32, "I64": torch.int64}
SIZES = {"F32": 4, "F64": 8, "I32": 4, "I64": 8}
QWEN = {"num_hidden_layers": 24, "hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2,
        "intermediate_size": 4864, "vocab_size": 151936, "rope_theta": 1e6, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True}
PRESETS = {"qwen2.5-0.5b": QWEN,
           "small": dict(QWEN, num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                         vocab_size=512)}


class StateError(Exception):
    """A debug state that cannot be replayed; the command line prints "error: FILE: why"."""


# ---------------------------------------------------------------- configuration

class Config:
    """The shapes of a Qwen2 config.json (a dict) and, when `lora` is a dict, of its adapters."""

    def __init__(self, hf, lora):
        try:
            self.D, self.I, self.L = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
            self.NH, self.NKV, self.V = hf["num_attention_heads"], hf["num_key_value_heads"], hf["vocab_size"]
            self.theta, self.eps = float(hf["rope_theta"]), float(hf["rms_norm_eps"])
            self.HD, self.tied = hf.get("head_dim") or self.D // self.NH, bool(hf.get("tie_word_embeddings"))
            if lora is not None:
                self.r, self.targets, alpha = lora["r"], lora["target_modules"], lora["lora_alpha"]
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            raise StateError(f"config or lora metadata: missing or malformed {e}")
        sizes = (self.D, self.I, self.L, self.NH, self.NKV, self.V, self.HD) + ((self.r,) if lora else ())
        if not all(type(n) is int and n > 0 for n in sizes) or self.NH % self.NKV or self.HD % 2 or \
                hf.get("rope_scaling"):
            raise StateError("config: needs positive integer sizes, num_attention_heads divisible by "
                             "num_key_value_heads, an even head_dim, no rope_scaling")
        self.lora = lora
        if lora is not None:
            self.scale = alpha / (math.sqrt(self.r) if lora.get("use_rslora") else self.r)
            if not isinstance(self.targets, list) or set(self.targets) - set(TARGETS) or lora.get("lora_dropout"):
                raise StateError(f"lora: targets {self.targets} must be a list among {list(TARGETS)}, dropout 0")

    def projections(self):
        """(out, in) of each linear layer of a decoder layer."""
        q, kv = self.NH * self.HD, self.NKV * self.HD
        return {"q_proj": (q, self.D), "k_proj": (kv, self.D), "v_proj": (kv, self.D), "o_proj": (self.D, q),
                "gate_proj": (self.I, self.D), "up_proj": (self.I, self.D), "down_proj": (self.D, self.I)}

    def shapes(self):
        """Every tensor of the model by name: the base under HF's names, then the adapters under PEFT's."""
        base, adapters = {"model.embed_tokens.weight": (self.V, self.D), "model.norm.weight": (self.D,)}, {}
        if not self.tied:
            base["lm_head.weight"] = (self.V, self.D)
        for i in range(self.L):
            base[f"model.layers.{i}.input_layernorm.weight"] = (self.D,)
            base[f"model.layers.{i}.post_attention_layernorm.weight"] = (self.D,)
            for proj, (out, inp) in self.projections().items():
                name = f"model.layers.{i}.{TARGETS[proj]}.{proj}"
                base[name + ".weight"] = (out, inp)
                if proj in ("q_proj", "k_proj", "v_proj"):
                    base[name + ".bias"] = (out,)
                if self.lora is not None and proj in self.targets:
                    adapters[PEFT + name + ".lora_A.weight"] = (self.r, inp)
                    adapters[PEFT + name + ".lora_B.weight"] = (out, self.r)
        return {**base, **adapters}


def stat_dtype(dtype):
    """Where HF computes norms, softmax and rotary tables: fp32, or float64 in a float64 model."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- the model

def linear(x, p, cfg, name):
    """x W^T + b, plus the LoRA term s (x A^T) B^T when `name` is adapted (adapters cast to x's dtype)."""
    y = F.linear(x, p[name + ".weight"], p.get(name + ".bias"))
    if PEFT + name + ".lora_A.weight" in p:
        a, b = (p[PEFT + name + f".lora_{k}.weight"].to(x.dtype) for k in "AB")
        y = y + cfg.scale * F.linear(F.linear(x, a), b)
    return y


def rms_norm(x, w, eps):
    h = x.to(stat_dtype(x.dtype))
    return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rope_tables(cfg, T, dtype, device):
    """cos and sin of pos * theta^(-2i/HD) for pos < T, each (T, HD): the HD/2 angles written twice."""
    s = stat_dtype(dtype)
    inv_freq = cfg.theta ** (-torch.arange(0, cfg.HD, 2, dtype=s, device=device) / cfg.HD)
    angles = torch.arange(T, dtype=s, device=device)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], -1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def attention_heads(x, p, cfg, prefix, rope):
    """The heads' outputs (B, NH, T, HD) for the normed input x (B, T, D) of the layer whose names start prefix."""
    B, T, _ = x.shape
    q, k, v = (linear(x, p, cfg, prefix + proj).view(B, T, n, cfg.HD).transpose(1, 2)
               for proj, n in (("q_proj", cfg.NH), ("k_proj", cfg.NKV), ("v_proj", cfg.NKV)))
    q, k = rotate(q, *rope), rotate(k, *rope)
    group = cfg.NH // cfg.NKV    # query head h reads kv head h // group
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    if hasattr(F, "scaled_dot_product_attention"):       # torch >= 2.0: fused kernels
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.HD)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
    return torch.softmax(scores, -1, dtype=stat_dtype(x.dtype)).to(x.dtype) @ v


def hidden(cfg, p, x):
    """The final-normed hidden states (B, T, D) of the decoder on the input embeddings x (B, T, D)."""
    B, T, _ = x.shape
    rope = rope_tables(cfg, T, x.dtype, x.device)
    for i in range(cfg.L):
        pre = f"model.layers.{i}."
        heads = attention_heads(rms_norm(x, p[pre + "input_layernorm.weight"], cfg.eps), p, cfg, pre + "self_attn.",
                                rope)
        x = x + linear(heads.transpose(1, 2).reshape(B, T, cfg.NH * cfg.HD), p, cfg, pre + "self_attn.o_proj")
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"], cfg.eps)
        gated = F.silu(linear(h, p, cfg, pre + "mlp.gate_proj")) * linear(h, p, cfg, pre + "mlp.up_proj")
        x = x + linear(gated, p, cfg, pre + "mlp.down_proj")
    return rms_norm(x, p["model.norm.weight"], cfg.eps)


def lm_head(cfg, p, h):
    """Logits of the hidden states h: h W^T, W = lm_head.weight, or embed_tokens when the embeddings are tied."""
    return h @ p["model.embed_tokens.weight" if cfg.tied else "lm_head.weight"].t()


def forward(cfg, p, ids):
    """Logits (B, T, V) of the token ids (B, T)."""
    return lm_head(cfg, p, hidden(cfg, p, F.embedding(ids, p["model.embed_tokens.weight"])))


def loss_of(logits, labels):
    """HF's causal LM loss: position t predicts labels[:, t+1]; labels -100 are ignored."""
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V).to(stat_dtype(logits.dtype)),
                           labels[:, 1:].reshape(-1).long(), ignore_index=-100)


def random_params(cfg, seed, device="cpu", dtype=torch.float32):
    """Random weights of every tensor of cfg.shapes(): base in dtype, adapters (B nonzero) in fp32."""
    g = torch.Generator(device=device).manual_seed(seed)
    p = {}
    for name, shape in cfg.shapes().items():
        t = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
        if name.endswith("norm.weight"):
            t = 1 + 0.1 * t
        elif name.endswith(".bias") or name.endswith("lora_B.weight"):
            t = 0.1 * t
        else:                                   # embeddings, projections, A: unit-scale outputs
            t = t / math.sqrt(shape[-1])
        p[name] = t if ".lora_" in name else t.to(dtype)
    return p


def trainable_names(cfg, trainable):
    return [n for n in cfg.shapes() if (".lora_" in n) == (trainable == "lora")]


# ---------------------------------------------------------------- the CVAE (train_cvae mode=cvae)

POST = "posterior."              # prefix of the posterior's tensors: its adapters with LoRA, its network without
CVAE_KEYS = ("d_z", "beta", "c_base", "posterior_variance_weight", "router_marginal_kl_to_prior_weight",
             "token_weighted_reconstruction_weight")
CVAE_OUTS = ("out.logits", "out.mu_q", "out.logvar_q", "out.z", "out.mu_p", "out.logvar_p", "out.recon", "out.kl",
             "out.pv", "out.rmkl", "out.tw", "out.loss")


def cvae_spec(cv):
    """The metadata "cvae" object, checked: d_z a positive integer, c_base > 0, the weights finite numbers."""
    if not isinstance(cv, dict):
        raise StateError(f"metadata 'cvae' must be a JSON object with {', '.join(CVAE_KEYS)}")
    missing, unknown = [k for k in CVAE_KEYS if k not in cv], sorted(set(cv) - set(CVAE_KEYS))
    if missing or unknown:
        raise StateError(f"metadata 'cvae': {'missing ' + ', '.join(missing) if missing else ''}"
                         f"{'; ' if missing and unknown else ''}{'unknown ' + ', '.join(unknown) if unknown else ''}"
                         f" (replay knows {', '.join(CVAE_KEYS)})")
    numbers = all(type(cv[k]) in (int, float) and math.isfinite(cv[k]) for k in CVAE_KEYS)
    if not numbers or type(cv["d_z"]) is not int or cv["d_z"] < 1 or cv["c_base"] <= 0:
        raise StateError(f"metadata 'cvae' {json.dumps(cv)}: needs a positive integer d_z, c_base > 0 and finite "
                         "numbers")
    return cv


def posterior_shapes(cfg):
    """The posterior's own tensors: with LoRA its adapters ("posterior." + PEFT's names; it shares the frozen base),
    without, a whole second network ("posterior." + HF's names) with no lm head."""
    return {POST + n: shape for n, shape in cfg.shapes().items()
            if (".lora_" in n if cfg.lora is not None else n != "lm_head.weight")}


def head_shapes(D, d_z):
    """The three heads: router (on the generator) and posterior give [mu, logvar] (2 d_z); z_proj maps z to a row."""
    return {"cvae.router_head.weight": (2 * d_z, D), "cvae.router_head.bias": (2 * d_z,),
            "cvae.posterior_head.weight": (2 * d_z, D), "cvae.posterior_head.bias": (2 * d_z,),
            "cvae.z_proj.weight": (D, d_z), "cvae.z_proj.bias": (D,)}


def generator_view(p):
    """The generator's parameters under the names `hidden` reads: the base and its adapters."""
    return {n: t for n, t in p.items() if not n.startswith((POST, "cvae."))}


def posterior_view(cfg, p):
    """The posterior network's parameters under the names `hidden` reads: the frozen base with the posterior's
    adapters in place of the generator's (LoRA), or the "posterior." tensors with the prefix dropped."""
    own = {n[len(POST):]: t for n, t in p.items() if n.startswith(POST)}
    if cfg.lora is None:
        return own
    return {**{n: t for n, t in p.items() if not n.startswith((POST, "cvae.")) and ".lora_" not in n}, **own}


def inject_z(x, slot_pos, h_z):
    """x (B, T, D) with row slot_pos[b] of sequence b replaced by h_z[b]."""
    at = torch.arange(x.shape[1], device=x.device)[None, :] == slot_pos[:, None]
    return torch.where(at[..., None], h_z[:, None, :].to(x.dtype), x)


def gaussian_head(h, p, name, d_z):
    """(mu, logvar), each (B, d_z): the halves of h W^T + b for the head `name`."""
    out = F.linear(h, p[name + ".weight"], p[name + ".bias"])
    return out[:, :d_z], out[:, d_z:]


def kl_of(mu_q, logvar_q, mu_p, logvar_p):
    """KL(q || p) of diagonal Gaussians, summed over the dimensions, averaged over the batch."""
    terms = logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1
    return 0.5 * terms.sum(-1).mean()


def pv_of(logvar_q):
    """The posterior's mean variance, over the batch and the dimensions."""
    return logvar_q.exp().mean()


def rmkl_of(mu_p, logvar_p):
    """KL(N(m, v) || N(0, 1)) summed over the dimensions, m and v the batch's router mixture's mean and variance."""
    m = mu_p.mean(0)
    v = (logvar_p.exp() + mu_p ** 2).mean(0) - m ** 2
    return 0.5 * (v + m ** 2 - 1 - v.log()).sum()


def token_nll(logits, labels):
    """The cross-entropy of each position t < T-1 against labels[:, t+1], (B, T-1): 0 where that label is -100."""
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V).to(stat_dtype(logits.dtype)), labels[:, 1:].reshape(-1).long(),
                           ignore_index=-100, reduction="none").view(labels.shape[0], -1)


def generator_logits(cfg, p, batch, z):
    """The generator's final-normed hidden states and logits with row slot_pos of the embeddings replaced by
    z_proj(z)."""
    gen = generator_view(p)
    x = F.embedding(batch["batch.input_ids"], gen["model.embed_tokens.weight"])
    h_z = F.linear(z, p["cvae.z_proj.weight"], p["cvae.z_proj.bias"])
    h = hidden(cfg, gen, inject_z(x, batch["batch.slot_pos"], h_z))
    return h, lm_head(cfg, gen, h)


def token_baseline(cfg, p, batch, d_z):
    """b (B, T-1): the per-position NLL of the generator with z = 0 (its slot row z_proj(0) = z_proj.bias), computed
    without a graph: the token-weighted reconstruction's constant weights."""
    with torch.no_grad():
        z = torch.zeros(batch["batch.input_ids"].shape[0], d_z, dtype=p["cvae.z_proj.weight"].dtype)
        return token_nll(generator_logits(cfg, p, batch, z)[1], batch["batch.labels"])


def cvae_forward(cfg, cv, p, batch, baseline=None, detail=None):
    """Every out.* of CVAE_OUTS from the parameters p (all names of the state) and the batch (batch.* tensors, ids
    and positions as int64): posterior -> z = mu_q + exp(logvar_q / 2) eps -> the generator with row slot_pos of
    the embeddings replaced by z_proj(z), the router on its hidden state at router_pos, the lm head; out.tw is
    R_tw = (1/n) sum_t (b_t / c_base)(nll_t - b_t) over the n labelled positions, b = `baseline` when given, else
    token_baseline (no gradient), and 0 when token_weighted_reconstruction_weight is 0 (as the trainer, which then
    does not compute b); out.loss is J = recon / c_base + beta kl + posterior_variance_weight pv
    + router_marginal_kl_to_prior_weight rmkl + token_weighted_reconstruction_weight tw. A dict `detail` receives
    "tw_scale": the larger of R_tw's two operands (1/n) sum_t b_t nll_t / c_base and (1/n) sum_t b_t^2 / c_base
    (0 at weight 0), the scale of its rel_err."""
    d_z, rows = cv["d_z"], torch.arange(batch["batch.input_ids"].shape[0])
    post = posterior_view(cfg, p)
    h_q = hidden(cfg, post, F.embedding(batch["batch.posterior_ids"], post["model.embed_tokens.weight"]))
    mu_q, logvar_q = gaussian_head(h_q[rows, batch["batch.posterior_pos"]], p, "cvae.posterior_head", d_z)
    z = mu_q + torch.exp(0.5 * logvar_q) * batch["batch.eps"].to(mu_q.dtype)
    h, logits = generator_logits(cfg, p, batch, z)
    mu_p, logvar_p = gaussian_head(h[rows, batch["batch.router_pos"]], p, "cvae.router_head", d_z)
    labels = batch["batch.labels"]
    recon, kl = loss_of(logits, labels), kl_of(mu_q, logvar_q, mu_p, logvar_p)
    pv, rmkl = pv_of(logvar_q), rmkl_of(mu_p, logvar_p)
    tw_weight = cv["token_weighted_reconstruction_weight"]
    if tw_weight or baseline is not None:
        b = token_baseline(cfg, p, batch, d_z) if baseline is None else baseline
        n = (labels[:, 1:] != -100).sum()
        nll = token_nll(logits, labels)
        tw = (b / cv["c_base"] * (nll - b)).sum() / n
        tw_scale = max((b * nll).sum().item(), (b * b).sum().item()) / (n.item() * cv["c_base"])
    else:
        tw, tw_scale = torch.zeros((), dtype=recon.dtype), 0.0
    if detail is not None:
        detail["tw_scale"] = tw_scale
    loss = recon / cv["c_base"] + cv["beta"] * kl + cv["posterior_variance_weight"] * pv + \
        cv["router_marginal_kl_to_prior_weight"] * rmkl + tw_weight * tw
    values = {"out.logits": logits, "out.mu_q": mu_q, "out.logvar_q": logvar_q, "out.z": z, "out.mu_p": mu_p,
              "out.logvar_p": logvar_p, "out.recon": recon, "out.kl": kl, "out.pv": pv, "out.rmkl": rmkl,
              "out.tw": tw, "out.loss": loss}
    return {n: values[n].reshape(1) if values[n].dim() == 0 else values[n] for n in CVAE_OUTS}


# ---------------------------------------------------------------- safetensors

def read_state(path):
    """(tensors, metadata) of a safetensors file; StateError on anything malformed."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise StateError(f"cannot read: {e.strerror}")
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        meta, data = header.pop("__metadata__", {}), raw[8 + n:]
        tensors = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            numel = math.prod(info["shape"])
            if info["dtype"] not in DTYPES or end - begin != numel * SIZES[info["dtype"]] or end > len(data):
                raise ValueError(f"tensor {name}: dtype {info['dtype']} (F32/F64/I32/I64), shape {info['shape']}"
                                 f" and offsets {info['data_offsets']} disagree or pass the end of the file")
            t = torch.frombuffer(bytearray(data[begin:end]), dtype=DTYPES[info["dtype"]]) if numel else \
                torch.zeros(0, dtype=DTYPES[info["dtype"]])
            tensors[name] = t.reshape(info["shape"])
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as e:
        raise StateError(f"not a readable safetensors file: {e}")
    return tensors, meta


def write_state(path, tensors, meta):
    """safetensors: float tensors as F32, integer tensors as I32, packed in name order."""
    header, blobs, offset = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().reshape(-1)
        kind, fmt = ("F32", "f") if t.is_floating_point() else ("I32", "i")
        blobs.append(struct.pack(f"<{t.numel()}{fmt}", *t.tolist()))
        header[name] = {"dtype": kind, "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(blobs[-1])]}
        offset += len(blobs[-1])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# ---------------------------------------------------------------- replay

def json_meta(meta, key):
    try:
        return json.loads(meta[key]) if key in meta else None
    except (ValueError, TypeError) as e:
        raise StateError(f"metadata {key!r} is not JSON: {e}")


def expect_shape(tensors, name, shape):
    if name not in tensors:
        raise StateError(f"missing tensor {name}")
    if tuple(tensors[name].shape) != tuple(shape):
        raise StateError(f"tensor {name} has shape {list(tensors[name].shape)}, expected {list(shape)}")


def recompute(tensors, meta):
    """[(name, ours, file value)] for out.logits, out.loss and every grad.NAME (a CVAE state: every out.* of
    CVAE_OUTS), ours recomputed in float64."""
    hf, lora, trainable = json_meta(meta, "config"), json_meta(meta, "lora"), meta.get("trainable")
    cv = cvae_spec(json_meta(meta, "cvae")) if "cvae" in meta else None
    if not isinstance(hf, dict):
        raise StateError("no 'config' metadata (the model's config.json)")
    if trainable != ("lora" if lora is not None else "base"):
        raise StateError(f"metadata trainable={trainable!r} with {'a' if lora else 'no'} 'lora' entry "
                         "(expected 'lora' with an adapter, 'base' without)")
    cfg = Config(hf, lora)
    shapes, train = cfg.shapes(), trainable_names(cfg, trainable)
    ids = tensors.get("batch.input_ids")
    if ids is None or ids.dim() != 2 or ids.numel() == 0 or ids.is_floating_point():
        raise StateError("batch.input_ids: missing, empty or not an integer tensor (B, T)")
    B, T = ids.shape
    integer, given = ["batch.labels"], {"batch.input_ids"}
    wanted = {**shapes, "batch.labels": (B, T), "out.logits": (B, T, cfg.V), "out.loss": (1,)}
    if cv is not None:
        post_ids, d_z = tensors.get("batch.posterior_ids"), cv["d_z"]
        if post_ids is None or post_ids.dim() != 2 or post_ids.shape[0] != B or post_ids.numel() == 0 or \
                post_ids.is_floating_point():
            raise StateError(f"batch.posterior_ids: missing, empty or not an integer tensor ({B}, Tq)")
        own = {**posterior_shapes(cfg), **head_shapes(cfg.D, d_z)}
        shapes, train = {**shapes, **own}, train + list(own)
        integer += ["batch.slot_pos", "batch.router_pos", "batch.posterior_pos"]
        given.add("batch.posterior_ids")
        wanted.update({**own, **{n: (B,) for n in integer[1:]}, "batch.eps": (B, d_z),
                       **{n: (B, d_z) for n in CVAE_OUTS[1:6]}, **{n: (1,) for n in CVAE_OUTS[6:]}})
    wanted.update({"grad." + n: shapes[n] for n in train})
    for name, shape in wanted.items():
        expect_shape(tensors, name, shape)
    extra = sorted(set(tensors) - set(wanted) - given)
    if extra:
        hint = ", no 'cvae' metadata" if cv is None and any(n.startswith(("cvae.", POST, "out.kl")) for n in extra) \
            else ""
        raise StateError(f"unexpected tensor {extra[0]} (trainable={trainable}{hint}; {len(extra)} unexpected in all)")
    wrong = [n for n in wanted if tensors[n].is_floating_point() == (n in integer)]
    if wrong:
        raise StateError(f"tensor {wrong[0]} has the wrong dtype ({', '.join(integer)} "
                         f"{'are' if len(integer) > 1 else 'is'} integer, the others float)")
    labels = tensors["batch.labels"].long()
    if ids.min() < 0 or ids.max() >= cfg.V or ((labels != -100) & ((labels < 0) | (labels >= cfg.V))).any():
        raise StateError(f"batch.input_ids or batch.labels outside 0..{cfg.V - 1} (labels may also be -100)")
    p = {n: tensors[n].double().requires_grad_(n in train) for n in shapes}
    if cv is None:
        logits = forward(cfg, p, ids.long())
        loss = loss_of(logits, labels)
        grads = torch.autograd.grad(loss, [p[n] for n in train])
        pairs = [("out.logits", logits, tensors["out.logits"]), ("out.loss", loss.reshape(1), tensors["out.loss"])]
        return pairs + [("grad." + n, g, tensors["grad." + n]) for n, g in zip(train, grads)]
    batch = {n: tensors[n].long() for n in integer + ["batch.input_ids", "batch.posterior_ids"]}
    batch["batch.eps"] = tensors["batch.eps"].double()
    slot, router, post_pos, Tq = batch["batch.slot_pos"], batch["batch.router_pos"], batch["batch.posterior_pos"], \
        batch["batch.posterior_ids"].shape[1]
    if post_ids.min() < 0 or post_ids.max() >= cfg.V:
        raise StateError(f"batch.posterior_ids outside 0..{cfg.V - 1}")
    if slot.min() < 1 or slot.max() >= T or (router != slot - 1).any() or post_pos.min() < 0 or post_pos.max() >= Tq:
        raise StateError(f"batch.slot_pos {slot.tolist()} must lie in 1..{T - 1}, batch.router_pos "
                         f"{router.tolist()} be slot_pos - 1, batch.posterior_pos {post_pos.tolist()} lie in "
                         f"0..{Tq - 1}")
    detail = {}
    out = cvae_forward(cfg, cv, p, batch, detail=detail)
    grads = torch.autograd.grad(out["out.loss"], [p[n] for n in train], allow_unused=True)
    return [(n, out[n], tensors[n]) + ((detail["tw_scale"],) if n == "out.tw" else ()) for n in CVAE_OUTS] + \
        [("grad." + n, torch.zeros_like(p[n]) if g is None else g, tensors["grad." + n]) for n, g in zip(train, grads)]


def errors(pairs):
    """[(name, max_abs_err, rel_err)]: the largest difference, and it over the largest magnitude of ours, or over a
    given scale when it is larger (a pair (name, ours, theirs, scale): out.tw, a difference of near-equal sums)."""
    rows = []
    for name, ours, theirs, *given in pairs:
        diff = (ours.detach().double() - theirs.double()).abs().max().item() if ours.numel() else 0.0
        scale = max(ours.detach().abs().max().item() if ours.numel() else 0.0, *given, torch.finfo(torch.float32).tiny)
        rows.append((name, diff, diff / scale))
    return rows


def replay(path, tol):
    tensors, meta = read_state(path)
    rows = errors(recompute(tensors, meta))
    for name, diff, rel in rows:
        print(f"{name} {diff:.3e} {rel:.3e}")
    name, _, worst = max(rows, key=lambda row: row[2] if row[2] == row[2] else math.inf)   # NaN counts as worst
    print(f"worst rel_err={worst:.3e} (tensor {name})")
    if not worst <= tol:
        raise StateError(f"rel_err {worst:.3e} of {name} above --tol {tol:g}")


# ---------------------------------------------------------------- make-example

def example_config(trainable, untied, rslora, targets):
    hf = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40, "rope_theta": 10000.0,
          "rms_norm_eps": 1e-6, "tie_word_embeddings": not untied, "hidden_act": "silu"}
    lora = {"r": 4, "lora_alpha": 8, "target_modules": targets, "use_rslora": rslora, "lora_dropout": 0.0}
    return hf, lora if trainable == "lora" else None


def example_batch(V, seed):
    """3 rows of 12 tokens: lengths 12, 9 and 5 (padding 0 after, label -100), the first 3 labels -100."""
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(1, V, (3, 12), generator=g, dtype=torch.int32)
    labels = ids.clone()
    for row, length in enumerate((12, 9, 5)):
        ids[row, length:] = 0
        labels[row, length:] = -100
        labels[row, :3] = -100
    return ids, labels


EXAMPLE_CVAE = {"d_z": 4, "beta": 0.1, "c_base": 1.25, "posterior_variance_weight": 0.05,
                "router_marginal_kl_to_prior_weight": 0.02, "token_weighted_reconstruction_weight": 0.3}


def example_cvae_batch(V, d_z, seed):
    """The CVAE's batch.* (int32 ids and positions, float32 eps) on example_batch's rows: slots at 3, 5 and 2 (their
    labels and those before them -100, router_pos = slot_pos - 1); posterior rows of 10 tokens, lengths 10, 7 and
    4 (padding 0 after), each read at its last token."""
    ids, labels = example_batch(V, seed)
    slot = torch.tensor([3, 5, 2], dtype=torch.int32)
    for row in range(3):
        labels[row, :slot[row] + 1] = -100
    g = torch.Generator().manual_seed(seed + 2)
    post_ids = torch.randint(1, V, (3, 10), generator=g, dtype=torch.int32)
    lengths = torch.tensor([10, 7, 4], dtype=torch.int32)
    for row in range(3):
        post_ids[row, lengths[row]:] = 0
    return {"batch.input_ids": ids, "batch.labels": labels, "batch.slot_pos": slot, "batch.router_pos": slot - 1,
            "batch.posterior_ids": post_ids, "batch.posterior_pos": lengths - 1,
            "batch.eps": torch.randn(3, d_z, generator=g)}


def random_cvae_params(cfg, d_z, seed):
    """random_params plus the posterior's own tensors (drawn as the model's, from another seed) and the heads
    (weights of unit-scale outputs, the Gaussian heads' halved; biases 0.1 N(0, 1)), all float32."""
    p = random_params(cfg, seed)
    other = random_params(cfg, seed + 1000)
    p.update({n: other[n[len(POST):]] for n in posterior_shapes(cfg)})
    g = torch.Generator().manual_seed(seed + 2000)
    for name, shape in head_shapes(cfg.D, d_z).items():
        t = torch.randn(shape, generator=g)
        p[name] = 0.1 * t if name.endswith(".bias") else t / math.sqrt(shape[-1]) * (1 if "z_proj" in name else 0.5)
    return p


def make_example(out, trainable="lora", untied=False, rslora=False, targets=tuple(TARGETS), seed=0, cvae=False):
    """Writes a debug state computed by this script in float32 (with cvae: train_cvae mode=cvae's, with the weights
    of EXAMPLE_CVAE); returns its loss (J for the CVAE)."""
    hf, lora = example_config(trainable, untied, rslora, list(targets))
    cfg = Config(hf, lora)
    meta = {"config": json.dumps(hf), "trainable": trainable, **({"lora": json.dumps(lora)} if lora else {})}
    train = trainable_names(cfg, trainable)
    if cvae:
        d_z = EXAMPLE_CVAE["d_z"]
        p, batch = random_cvae_params(cfg, d_z, seed), example_cvae_batch(cfg.V, d_z, seed)
        train += list(posterior_shapes(cfg)) + list(head_shapes(cfg.D, d_z))
        meta["cvae"] = json.dumps(EXAMPLE_CVAE)
    else:
        p, (ids, labels) = random_params(cfg, seed), example_batch(cfg.V, seed)
        batch = {"batch.input_ids": ids, "batch.labels": labels}
    for n in train:
        p[n].requires_grad_(True)
    if cvae:
        as_long = {n: t if t.is_floating_point() else t.long() for n, t in batch.items()}
        outs = cvae_forward(cfg, EXAMPLE_CVAE, p, as_long)
    else:
        logits = forward(cfg, p, batch["batch.input_ids"].long())
        outs = {"out.logits": logits, "out.loss": loss_of(logits, batch["batch.labels"]).reshape(1)}
    grads = torch.autograd.grad(outs["out.loss"], [p[n] for n in train])
    write_state(out, {**p, **batch, **outs, **{"grad." + n: g for n, g in zip(train, grads)}}, meta)
    return outs["out.loss"].item()


# ---------------------------------------------------------------- selftest

class Skip(Exception):
    pass


def close(a, b, tol, what):
    err = (a.detach() - b.detach()).abs().max().item()
    assert err <= tol, f"{what}: max difference {err:.3e} > {tol:g}"


def merged(cfg, p):
    """The parameters with every adapter folded into its weight (W + s B A) and removed."""
    out = {n: t for n, t in p.items() if ".lora_" not in n}
    for name in p:
        if name.endswith(".lora_A.weight"):
            base = name[len(PEFT):-len(".lora_A.weight")]
            out[base + ".weight"] = out[base + ".weight"] + cfg.scale * p[PEFT + base + ".lora_B.weight"] @ p[name]
    return out


def tiny_model(seed=0, rslora=True, untied=False):
    hf, lora = example_config("lora", untied, rslora, list(TARGETS))
    cfg = Config(hf, lora)
    return hf, cfg, {n: t.double() for n, t in random_params(cfg, seed).items()}


def naive_head(cfg, p, layer, h, x):
    """Head h of a layer on one sequence x (T, D), position by position, from the merged weights."""
    T, HD, half = x.shape[0], cfg.HD, cfg.HD // 2
    kv = h // (cfg.NH // cfg.NKV)

    def rows(proj, head, t):
        name = f"model.layers.{layer}.self_attn.{proj}"
        part = slice(head * HD, (head + 1) * HD)
        return p[name + ".weight"][part] @ x[t] + p[name + ".bias"][part]

    def rot(vec, t):
        out = vec.clone()
        for i in range(half):
            c, s = math.cos(t * cfg.theta ** (-2 * i / HD)), math.sin(t * cfg.theta ** (-2 * i / HD))
            out[i], out[i + half] = vec[i] * c - vec[i + half] * s, vec[i + half] * c + vec[i] * s
        return out

    result = []
    for t in range(T):
        q = rot(rows("q_proj", h, t), t)
        scores = [float(q @ rot(rows("k_proj", kv, s), s)) / math.sqrt(HD) for s in range(t + 1)]
        weights = [math.exp(z - max(scores)) for z in scores]
        result.append(sum(w / sum(weights) * rows("v_proj", kv, s) for s, w in enumerate(weights)))
    return torch.stack(result)


def test_attention_heads():
    """Every head of attention_heads (with LoRA on q, k, v) against the loop on merged weights."""
    _, cfg, p = tiny_model()
    x = torch.randn(1, 7, cfg.D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    heads = attention_heads(x, p, cfg, "model.layers.1.self_attn.", rope_tables(cfg, 7, torch.float64, "cpu"))
    for h in range(cfg.NH):
        close(heads[0, h], naive_head(cfg, merged(cfg, p), 1, h, x[0]), 1e-12, f"head {h}")


def test_lora_merged():
    """The model with adapters equals the model with the adapters merged into the weights; the LoRA scale."""
    hf, cfg, p = tiny_model(untied=True)
    plain = Config(hf, dict(cfg.lora, use_rslora=False))
    assert (cfg.r, cfg.lora["lora_alpha"], cfg.scale, plain.scale) == (4, 8, 4.0, 2.0), "alpha/sqrt(r), alpha/r"
    ids = example_batch(cfg.V, 0)[0].long()
    close(forward(cfg, p, ids), forward(cfg, merged(cfg, p), ids), 1e-10, "logits")


def test_loss():
    """loss_of against a loop over the rows and positions whose next label is not -100."""
    ids, labels = example_batch(40, 2)
    logits = torch.randn(3, 12, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    terms = [-torch.log_softmax(logits[b, t], -1)[labels[b, t + 1]] for b in range(3) for t in range(11)
             if labels[b, t + 1] != -100]
    close(loss_of(logits, labels), sum(terms) / len(terms), 1e-12, "loss")


def expect_state_error(tensors, meta, text):
    try:
        recompute(tensors, meta)
    except StateError as e:
        assert text in str(e), f"error {e!r} lacks {text!r}"
        return
    raise AssertionError(f"no error; expected {text!r}")


def test_replay_cycle():
    """make-example files replay within 1e-5 in three variants; a perturbed gradient fails, and a missing,
    misshapen or unexpected tensor is an error."""
    variants = [dict(), dict(trainable="base", untied=True),
                dict(untied=True, rslora=True, targets=["q_proj", "v_proj"])]
    with tempfile.TemporaryDirectory() as tmp:
        for i, variant in enumerate(variants):
            path = os.path.join(tmp, f"state{i}.safetensors")
            make_example(path, seed=i, **variant)
            tensors, meta = read_state(path)
            worst = max(rel for _, _, rel in errors(recompute(tensors, meta)))
            assert worst < 1e-5, f"{variant}: worst rel_err {worst:.3e}"
            name = sorted(n for n in tensors if n.startswith("grad."))[-1]
            bad = dict(tensors, **{name: tensors[name].clone()})
            bad[name].view(-1)[0] += 1e-3 * tensors[name].abs().max()
            rows = errors(recompute(bad, meta))
            assert max(rows, key=lambda r: r[2])[0] == name and max(r[2] for r in rows) > 1e-4, f"{variant}: {rows}"
            expect_state_error({n: t for n, t in tensors.items() if n != name}, meta, f"missing tensor {name}")
            expect_state_error(dict(tensors, **{name: tensors[name][:-1]}), meta, f"tensor {name} has shape")
            expect_state_error(dict(tensors, **{"grad.model.norm.bias": tensors[name]}), meta, "unexpected tensor")
            expect_state_error(dict(tensors, **{name: tensors[name].int()}), meta, f"tensor {name} has the wrong")
            expect_state_error(tensors, dict(meta, trainable="lora" if i == 1 else "base"), "metadata trainable=")


def tiny_cvae(trainable="lora", untied=False, seed=0):
    """(cfg, float64 parameters, float64 / int64 batch) of make-example's CVAE."""
    cfg = Config(*example_config(trainable, untied, True, list(TARGETS)))
    d_z = EXAMPLE_CVAE["d_z"]
    p = {n: t.double() for n, t in random_cvae_params(cfg, d_z, seed).items()}
    batch = {n: t.double() if t.is_floating_point() else t.long()
             for n, t in example_cvae_batch(cfg.V, d_z, seed).items()}
    return cfg, p, batch


def test_cvae_injection():
    """cvae_forward against loops: the posterior's (mu_q, logvar_q) from its merged weights one sequence at a time
    (LoRA) or from its own "posterior." weights (from scratch), z element by element, the generator on embeddings
    whose slot row is replaced by z_proj(z) one row at a time, the router's head at slot_pos - 1; the router does
    not see z (another eps moves the logits after the slot, not mu_p, logvar_p)."""
    d_z = EXAMPLE_CVAE["d_z"]
    for trainable, untied in (("lora", False), ("base", True)):
        cfg, p, batch = tiny_cvae(trainable, untied, seed=3)
        out = cvae_forward(cfg, EXAMPLE_CVAE, p, batch)
        if trainable == "lora":
            post = merged(cfg, {n[len(POST):] if n.startswith(POST) else n: t for n, t in p.items()
                                if n.startswith(POST) or not (n.startswith("cvae.") or ".lora_" in n)})
            gen = merged(cfg, {n: t for n, t in p.items() if not n.startswith((POST, "cvae."))})
        else:
            post = {n[len(POST):]: t for n, t in p.items() if n.startswith(POST)}
            gen = {n: t for n, t in p.items() if n in cfg.shapes()}
        assert ("lm_head.weight" in gen) == untied and "lm_head.weight" not in post and \
            not any(".lora_" in n for n in list(post) + list(gen)), sorted(post)[:3]
        ids, slot = batch["batch.input_ids"], batch["batch.slot_pos"]
        x = F.embedding(ids, gen["model.embed_tokens.weight"]).clone()
        z = torch.zeros(3, d_z, dtype=torch.float64)
        for b in range(3):
            row = F.embedding(batch["batch.posterior_ids"][b:b + 1], post["model.embed_tokens.weight"])
            h_q = hidden(cfg, post, row)
            head = p["cvae.posterior_head.weight"] @ h_q[0, batch["batch.posterior_pos"][b]] + \
                p["cvae.posterior_head.bias"]
            close(out["out.mu_q"][b], head[:d_z], 1e-12, f"mu_q[{b}]")
            close(out["out.logvar_q"][b], head[d_z:], 1e-12, f"logvar_q[{b}]")
            for k in range(d_z):
                z[b, k] = head[k] + math.exp(0.5 * head[d_z + k].item()) * batch["batch.eps"][b, k]
            x[b, slot[b]] = sum(p["cvae.z_proj.weight"][:, k] * z[b, k] for k in range(d_z)) + p["cvae.z_proj.bias"]
        close(out["out.z"], z, 1e-12, "z")
        h = hidden(cfg, gen, x)
        close(out["out.logits"], lm_head(cfg, gen, h), 1e-10, "logits with the slot rows replaced")
        for b in range(3):
            head = p["cvae.router_head.weight"] @ h[b, slot[b] - 1] + p["cvae.router_head.bias"]
            close(torch.cat([out["out.mu_p"][b], out["out.logvar_p"][b]]), head, 1e-12, f"router head [{b}]")
        moved = cvae_forward(cfg, EXAMPLE_CVAE, p, dict(batch, **{"batch.eps": 3 * batch["batch.eps"] + 1}))
        for name in ("out.mu_p", "out.logvar_p", "out.mu_q", "out.logvar_q"):
            close(moved[name], out[name], 1e-12, f"{name} under another eps")
        for b in range(3):
            close(moved["out.logits"][b, :slot[b]], out["out.logits"][b, :slot[b]], 1e-12, "logits before the slot")
            diff = (moved["out.logits"][b, slot[b]:] - out["out.logits"][b, slot[b]:]).abs().min(-1).values
            assert (diff > 0).all(), f"row {b}: z does not reach every position from the slot on"


def naive_divergences(mu_q, logvar_q, mu_p, logvar_p):
    """(kl, pv, rmkl) dimension by dimension in Python floats: KL of N(a, s^2) to N(c, t^2) as
    log(t / s) + (s^2 + (a - c)^2) / (2 t^2) - 1/2; the router's mixture by its first two moments."""
    B, d_z = mu_q.shape
    kl = pv = rmkl = 0.0
    for d in range(d_z):
        for b in range(B):
            a, c = mu_q[b, d].item(), mu_p[b, d].item()
            s, t = math.exp(0.5 * logvar_q[b, d].item()), math.exp(0.5 * logvar_p[b, d].item())
            kl += (math.log(t / s) + (s * s + (a - c) ** 2) / (2 * t * t) - 0.5) / B
            pv += s * s / (B * d_z)
        mean = sum(mu_p[b, d].item() for b in range(B)) / B
        second = sum(math.exp(logvar_p[b, d].item()) + mu_p[b, d].item() ** 2 for b in range(B)) / B
        var = second - mean * mean
        rmkl += 0.5 * (var + mean * mean - 1 - math.log(var))
    return kl, pv, rmkl


def test_cvae_divergences():
    """kl_of, pv_of and rmkl_of against naive_divergences and torch.distributions; J from its parts; the
    gradients d rmkl / d mu_p and d kl / d logvar_q (and the rest) against central differences in float64."""
    g = torch.Generator().manual_seed(11)
    mu_q, logvar_q, mu_p, logvar_p = (torch.randn(5, 3, dtype=torch.float64, generator=g) for _ in range(4))
    kl, pv, rmkl = naive_divergences(mu_q, logvar_q, mu_p, logvar_p)
    close(kl_of(mu_q, logvar_q, mu_p, logvar_p), torch.tensor(kl, dtype=torch.float64), 1e-12, "kl")
    close(pv_of(logvar_q), torch.tensor(pv, dtype=torch.float64), 1e-12, "pv")
    close(rmkl_of(mu_p, logvar_p), torch.tensor(rmkl, dtype=torch.float64), 1e-12, "rmkl")
    normal = torch.distributions.Normal
    by_torch = torch.distributions.kl_divergence(normal(mu_q, (0.5 * logvar_q).exp()),
                                                 normal(mu_p, (0.5 * logvar_p).exp()))
    close(kl_of(mu_q, logvar_q, mu_p, logvar_p), by_torch.sum(-1).mean(), 1e-12, "kl (torch.distributions)")
    m, v = mu_p.mean(0), (logvar_p.exp() + mu_p ** 2).mean(0) - mu_p.mean(0) ** 2
    by_torch = torch.distributions.kl_divergence(normal(m, v.sqrt()), normal(torch.zeros(3, dtype=torch.float64), 1.0))
    close(rmkl_of(mu_p, logvar_p), by_torch.sum(), 1e-12, "rmkl (torch.distributions)")
    cfg, p, batch = tiny_cvae(seed=4)
    out = cvae_forward(cfg, EXAMPLE_CVAE, p, batch)
    c = EXAMPLE_CVAE
    close(out["out.loss"], out["out.recon"] / c["c_base"] + c["beta"] * out["out.kl"] + c["posterior_variance_weight"]
          * out["out.pv"] + c["router_marginal_kl_to_prior_weight"] * out["out.rmkl"]
          + c["token_weighted_reconstruction_weight"] * out["out.tw"], 1e-12, "J")
    inputs = [t.clone().requires_grad_(True) for t in (mu_q, logvar_q, mu_p, logvar_p)]
    assert torch.autograd.gradcheck(lambda mu: rmkl_of(mu, inputs[3]), (inputs[2],), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(lambda lv: kl_of(inputs[0], lv, inputs[2], inputs[3]), (inputs[1],), eps=1e-6,
                                    atol=1e-8)
    assert torch.autograd.gradcheck(lambda *t: (kl_of(*t), pv_of(t[1]), rmkl_of(t[2], t[3])), tuple(inputs),
                                    eps=1e-6, atol=1e-8)


def test_cvae_token_weighted():
    """R_tw against a loop over the labelled positions (b_t from a second pass whose slot rows are z_proj.bias, the
    logits' own cross-entropies), for LoRA and from scratch; J's gradient (autograd, b computed under no_grad)
    against central differences of J with b held fixed along a random direction of every trained tensor, and
    against the gradient of (1/(n c_base)) sum (1 + tw b_t) nll_t + the latent terms (b a constant weight); a b
    recomputed at each point of the central differences (differentiated) gives another derivative; out.tw's rel_err
    scale is the larger of its operands by the loop; with the weight 0, out.tw is 0 (the trainer computes no b) and
    J has no tw term."""
    cv, d_z = EXAMPLE_CVAE, EXAMPLE_CVAE["d_z"]
    tw, c_base = cv["token_weighted_reconstruction_weight"], cv["c_base"]
    for trainable, untied in (("lora", False), ("base", True)):
        cfg, p, batch = tiny_cvae(trainable, untied, seed=5)
        detail = {}
        out = cvae_forward(cfg, cv, p, batch, detail=detail)
        gen, labels, slot = generator_view(p), batch["batch.labels"], batch["batch.slot_pos"]
        x0 = F.embedding(batch["batch.input_ids"], gen["model.embed_tokens.weight"]).clone()
        for b in range(3):
            x0[b, slot[b]] = p["cvae.z_proj.bias"]
        logits0 = lm_head(cfg, gen, hidden(cfg, gen, x0))
        total, n, operands = 0.0, 0, [0.0, 0.0]
        for b in range(3):
            for t in range(labels.shape[1] - 1):
                y = labels[b, t + 1].item()
                if y == -100:
                    continue
                nll = -torch.log_softmax(out["out.logits"][b, t], -1)[y].item()
                base = -torch.log_softmax(logits0[b, t], -1)[y].item()
                total, n = total + base / c_base * (nll - base), n + 1
                operands = [operands[0] + base * nll / c_base, operands[1] + base * base / c_base]
        close(out["out.tw"], torch.tensor([total / n], dtype=torch.float64), 1e-12, f"R_tw ({trainable}) by the loop")
        assert abs(detail["tw_scale"] - max(operands) / n) <= 1e-12 * detail["tw_scale"], \
            f"out.tw's rel_err scale {detail['tw_scale']}, its larger operand by the loop {max(operands) / n}"
        assert abs(total / n) > 1e-3, f"R_tw {total / n}: z barely moves the NLL, the checks below would be weak"
        off = cvae_forward(cfg, dict(cv, token_weighted_reconstruction_weight=0), p, batch)
        assert off["out.tw"].item() == 0, f"weight 0: out.tw {off['out.tw'].item()}, expected 0 (b not computed)"
        close(off["out.loss"], out["out.loss"] - tw * out["out.tw"], 1e-12, "weight 0: J without the tw term")
        if trainable != "lora":
            continue
        names = [n for n in p if ".lora_" in n or n.startswith("cvae.")]
        p = {n: t.clone().requires_grad_(n in names) for n, t in p.items()}
        grads = torch.autograd.grad(cvae_forward(cfg, cv, p, batch)["out.loss"], [p[n] for n in names])
        b0 = token_baseline(cfg, p, batch, d_z)
        off = cvae_forward(cfg, dict(cv, token_weighted_reconstruction_weight=0), p, batch)
        weighted = off["out.loss"] + tw * (b0 * token_nll(off["out.logits"], labels)).sum() / \
            ((labels[:, 1:] != -100).sum() * c_base)
        for name, g, h in zip(names, grads, torch.autograd.grad(weighted, [p[n] for n in names])):
            close(g, h, 1e-12 * max(1.0, g.abs().max().item()), f"J's gradient vs the (1 + tw b_t) weights: {name}")
        gen = torch.Generator().manual_seed(6)
        direction = {n: torch.randn(p[n].shape, generator=gen, dtype=torch.float64) for n in names}
        step = 1e-6            # truncation error about 5e-9 relative here (2e-6 at 1e-5)

        def moved(sign, baseline):
            with torch.no_grad():
                q = {n: t + sign * step * direction[n] if n in direction else t for n, t in p.items()}
                return cvae_forward(cfg, cv, q, batch, baseline)["out.loss"].item()
        autograd = sum((g * direction[n]).sum().item() for n, g in zip(names, grads))
        fixed = (moved(1, b0) - moved(-1, b0)) / (2 * step)
        free = (moved(1, None) - moved(-1, None)) / (2 * step)
        assert abs(fixed - autograd) <= 1e-7 * abs(autograd), \
            f"J's directional derivative: autograd {autograd:.12g}, central differences with b fixed {fixed:.12g}"
        assert abs(free - autograd) > 1e-4 * abs(autograd), \
            f"a differentiated b should change the derivative: {free:.12g} vs {autograd:.12g}"


def test_cvae_replay_cycle():
    """make-example --cvae files (LoRA; from scratch, untied) replay within 1e-5; a perturbed gradient of a head and
    of a posterior tensor and a perturbed out.kl each fail on that tensor; missing, misshapen, wrongly typed
    tensors, inconsistent positions and bad "cvae" metadata are errors."""
    with tempfile.TemporaryDirectory() as tmp:
        for i, variant in enumerate((dict(), dict(trainable="base", untied=True))):
            path = os.path.join(tmp, f"cvae{i}.safetensors")
            make_example(path, seed=i, cvae=True, **variant)
            tensors, meta = read_state(path)
            rows = errors(recompute(tensors, meta))
            assert [r[0] for r in rows[:len(CVAE_OUTS)]] == list(CVAE_OUTS), rows[:12]
            assert max(r[2] for r in rows) < 1e-5, f"{variant}: worst {max(rows, key=lambda r: r[2])}"
            posterior = "grad.posterior." + ("base_model.model.model.layers.1.mlp.up_proj.lora_A.weight" if i == 0
                                              else "model.layers.0.self_attn.q_proj.weight")
            assert tensors["batch.posterior_ids"][1:, -1].eq(0).all() and tensors["batch.input_ids"][1:, -1].eq(0).all()
            assert abs(tensors["out.tw"].item()) > 1e-4, f"{variant}: out.tw {tensors['out.tw'].item()}"
            scales = {pair[0]: pair[3] for pair in recompute(tensors, meta) if len(pair) == 4}   # out.tw's
            for name in ("grad.cvae.posterior_head.weight", "grad.cvae.router_head.bias", "grad.cvae.z_proj.weight",
                         posterior, "out.kl", "out.rmkl", "out.mu_q", "out.tw"):
                bad = dict(tensors, **{name: tensors[name].clone()})
                bad[name].view(-1)[-1] += 1e-3 * max(tensors[name].abs().max(), scales.get(name, 0))
                rows = errors(recompute(bad, meta))
                top = max(rows, key=lambda r: r[2])
                assert top[0] == name and top[2] > 1e-4, f"{variant}: perturbed {name}, worst {top}"
            expect_state_error({n: t for n, t in tensors.items() if n != "batch.eps"}, meta, "missing tensor batch.eps")
            expect_state_error({n: t for n, t in tensors.items() if n != posterior}, meta,
                               f"missing tensor {posterior}")
            expect_state_error(dict(tensors, **{"out.mu_q": tensors["out.mu_q"][:, :-1]}), meta,
                               "tensor out.mu_q has shape")
            expect_state_error(dict(tensors, **{"batch.posterior_ids": tensors["batch.posterior_ids"][:-1]}), meta,
                               "batch.posterior_ids: missing")
            expect_state_error(dict(tensors, **{"batch.slot_pos": tensors["batch.slot_pos"].float()}), meta,
                               "tensor batch.slot_pos has the wrong dtype")
            expect_state_error(dict(tensors, **{"batch.router_pos": tensors["batch.slot_pos"]}), meta,
                               "be slot_pos - 1")
            expect_state_error(dict(tensors, **{"batch.posterior_pos": tensors["batch.posterior_pos"] + 1}), meta,
                               "batch.posterior_pos")
            cv = json.loads(meta["cvae"])
            expect_state_error(tensors, dict(meta, cvae=json.dumps(dict(cv, d_z=3))), "tensor cvae.router_head.weight")
            expect_state_error(tensors, dict(meta, cvae=json.dumps({k: cv[k] for k in cv if k != "beta"})),
                               "metadata 'cvae': missing beta")
            expect_state_error(tensors, dict(meta, cvae=json.dumps(dict(cv, free_bits=1))), "unknown free_bits")
            expect_state_error(tensors, dict(meta, cvae=json.dumps({k: cv[k] for k in cv
                                                                    if k != "token_weighted_reconstruction_weight"})),
                               "metadata 'cvae': missing token_weighted_reconstruction_weight")
            expect_state_error({n: t for n, t in tensors.items() if n != "out.tw"}, meta, "missing tensor out.tw")
            # read as weight 0 (replay's out.tw is then 0, as the trainer's), the file's nonzero out.tw fails
            zero = dict(meta, cvae=json.dumps(dict(cv, token_weighted_reconstruction_weight=0.0)))
            rows = {r[0]: r[2] for r in errors(recompute(tensors, zero))}
            assert rows["out.tw"] > 0.5 and rows["out.loss"] > 1e-4, f"{variant}: read as weight 0: {rows}"
            expect_state_error(tensors, dict(meta, cvae="[8]"), "must be a JSON object")
            expect_state_error(tensors, {n: v for n, v in meta.items() if n != "cvae"}, "no 'cvae' metadata")


def test_transformers():
    """The logits of Hugging Face's Qwen2ForCausalLM with the same (merged) weights, when it is importable."""
    try:
        import transformers
    except ImportError:
        raise Skip("transformers is not importable")
    for untied in (False, True):
        hf, cfg, p = tiny_model(untied=untied)
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf)).double().eval()
        missing, unexpected = model.load_state_dict(merged(cfg, p), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"} and (cfg.tied or not missing), missing
        ids = example_batch(cfg.V, 0)[0].long()
        with torch.no_grad():
            close(forward(cfg, p, ids), model(input_ids=ids).logits, 1e-9, f"logits (untied={untied})")


def selftest():
    failed = 0
    for test in (test_attention_heads, test_lora_merged, test_loss, test_replay_cycle, test_cvae_injection,
                 test_cvae_divergences, test_cvae_token_weighted, test_cvae_replay_cycle, test_transformers):
        try:
            test()
            print(f"selftest ok {test.__name__}")
        except Skip as e:
            print(f"selftest SKIP {test.__name__}: {e}")
        except Exception as e:                  # an assertion, or an error of the code under test
            failed += 1
            print(f"selftest FAIL {test.__name__}: {type(e).__name__}: {e}")
    print(f"selftest: {failed} failed")
    return 1 if failed else 0


# ---------------------------------------------------------------- bench

def step_flops(cfg, tokens, T):
    """Model FLOPs of one LoRA step with a frozen base, a multiply-add counting 2, over `tokens` tokens in
    sequences of T. With Pb the base's matmul weights used per token (q, k, v, o, gate, up, down of every layer
    and the lm head; not the embedding lookup), Pl the adapters' (A and B) and Af = 4 L T (NH HD) tokens the
    forward attention products (q k^T and p v over the whole T x T; the causal half is not subtracted):
      forward   2 (Pb + Pl) tokens + Af
      backward  2 (Pb + Pl) tokens   the input gradients of every matmul (the base's weights get no gradient)
              + 2 Pl tokens          the adapters' weight gradients
              + 2 Af                 attention: dP and dV, then dQ and dK
    total 4 Pb + 6 Pl per token, + 3 Af. Norms, activations, softmax, biases, the loss, AdamW are not counted."""
    dims = cfg.projections()
    pb = cfg.L * sum(o * i for o, i in dims.values()) + cfg.D * cfg.V
    pl = cfg.L * sum(cfg.r * (o + i) for proj, (o, i) in dims.items() if proj in cfg.targets)
    attention = 4 * cfg.L * T * cfg.NH * cfg.HD * tokens
    return (4 * pb + 6 * pl) * tokens + 3 * attention


def bench(args):
    cuda = torch.cuda.is_available()
    if not cuda and args.preset != "small":
        raise SystemExit(f"error: bench: no CUDA device; on the CPU use --preset small (not {args.preset})")
    device, dtype = ("cuda" if cuda else "cpu"), {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    cfg = Config(PRESETS[args.preset], {"r": args.lora_r, "lora_alpha": 2 * args.lora_r,
                                        "target_modules": list(TARGETS), "use_rslora": False, "lora_dropout": 0.0})
    p = random_params(cfg, 0, device, dtype)
    adapters = [t.requires_grad_(True) for n, t in p.items() if ".lora_" in n]
    opt = torch.optim.AdamW(adapters, lr=2e-4)
    ids = torch.randint(0, cfg.V, (args.batch, args.seq), device=device,
                        generator=torch.Generator(device=device).manual_seed(1))

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of(forward(cfg, p, ids), ids).backward()
        opt.step()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    tokens, flops = args.batch * args.seq, step_flops(cfg, args.batch * args.seq, args.seq)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    n_base = sum(t.numel() for n, t in p.items() if ".lora_" not in n)
    print(f'bench_torch ms_per_step={seconds * 1e3:.2f} tokens_per_s={tokens / seconds:.0f} peak_mem_gb={peak:.2f} '
          f'device="{name}" preset={args.preset} batch={args.batch} seq={args.seq} lora_r={args.lora_r} '
          f'dtype={args.dtype} torch={torch.__version__} params_base={n_base} '
          f'params_lora={sum(t.numel() for t in adapters)} flops_per_step={flops:.4e} '
          f'tflops_per_s={flops / seconds / 1e12:.2f}')


# ---------------------------------------------------------------- command line

class Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def targets(text):
    names = text.split(",")
    if not names or set(names) - set(TARGETS):
        raise argparse.ArgumentTypeError(f"expected names among {','.join(TARGETS)}, got {text!r}")
    return names


def parse_args(argv):
    parser = Parser(prog="dev/cvae_torch.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    r = sub.add_parser("replay", help="recompute a debug state in float64 and compare")
    r.add_argument("state", metavar="STATE.safetensors")
    r.add_argument("--tol", type=float, default=1e-4, help="largest rel_err accepted (default 1e-4)")
    m = sub.add_parser("make-example", help="write a tiny self-consistent debug state")
    m.add_argument("out", metavar="OUT.safetensors")
    m.add_argument("--trainable", choices=("lora", "base"), default="lora")
    m.add_argument("--untied", action="store_true", help="a separate lm_head.weight")
    m.add_argument("--rslora", action="store_true", help="scale alpha / sqrt(r)")
    m.add_argument("--targets", type=targets, default=list(TARGETS), help="adapted projections (default all 7)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--cvae", action="store_true", help="the latent-strategy CVAE's state (train_cvae mode=cvae)")
    sub.add_parser("selftest", help="check this file against naive loops and a replay cycle")
    b = sub.add_parser("bench", help="time a LoRA training step")
    b.add_argument("--preset", choices=tuple(PRESETS), default="qwen2.5-0.5b",
                   help="model shape (default qwen2.5-0.5b)")
    b.add_argument("--batch", type=positive, default=8, help="sequences per step (default 8)")
    b.add_argument("--seq", type=positive, default=512, help="tokens per sequence (default 512)")
    b.add_argument("--lora-r", type=positive, default=16, help="adapter rank, alpha = 2r (default 16)")
    b.add_argument("--steps", type=positive, default=20, help="timed steps (default 20)")
    b.add_argument("--warmup", type=positive, default=3, help="untimed steps first (default 3)")
    b.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="base weights, activations (default bf16)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.command == "selftest":
        return selftest()
    if args.command == "bench":
        return bench(args)
    path = args.state if args.command == "replay" else args.out
    try:
        if args.command == "replay":
            replay(args.state, args.tol)
        else:
            loss = make_example(args.out, args.trainable, args.untied, args.rslora, args.targets, args.seed, args.cvae)
            print(f"wrote {args.out}: trainable={args.trainable}{' cvae' if args.cvae else ''} loss={loss:.6f}")
    except StateError as e:
        print(f"error: {path}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {path}: cannot write: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
