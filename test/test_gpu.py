#!/usr/bin/env python3
"""End-to-end tests of the CUDA trainers against the CPU backend (standard library only).

    python3 test/test_gpu.py [etrm|jepa|cvae] [--quick]    (from the repository root, after `make train_etrm_cpu
                   train_etrm train_etrm_fp32 train_jepa_cpu train_jepa train_jepa_fp32 train_cvae_cpu train_cvae train_cvae_fp32`)

etrm, jepa or cvae runs one trainer's checks (dev/gpu_check.py runs the three at once); --quick compares TRM and the
standard encoder only, and the first JEPA configuration only (the determinism and resume checks stay whole).

Checks, on the synthetic data, for train_etrm.cu:
  - GPU FP32 build == CPU backend from the same initial weights and batches: the first step's debug state
    (logits, q logits, losses and every parameter gradient) for TRM and every encoder, then 5 training steps
    (each step's losses, and the weights after the last): within 1e-4 relative (of each tensor's largest value);
  - the same for 5 steps with latent_inner_steps=2 (standard, lpn_variational), and every number of the evaluation
    after them with latent_opt_steps=3 and the best-two vote;
  - the GPU trainer (BF16 build) is deterministic: the same seed twice gives identical losses and checkpoints;
  - resume on the GPU is bit-identical (3 steps + resume + 3 steps == 6 steps, every byte of the checkpoint);
  - micro-batches on the GPU give the losses of one batch (FP32 build).
and for train_jepa.cu, in test/test_jepa.py's tiny configuration (6 steps in 2 epochs, validation after each):
  - GPU FP32 build == CPU backend from the same seed, for hard VQ with InfoNCE and every auxiliary loss (the
    default), objective=sigreg with context_agg=gru, and vq_mode=gumbel with context_agg=attention: every number
    of every train and val line (each loss term, tau, the gradient norm) and the codebook usage of the diag lines
    within 1e-4 relative, beyond the last printed digit; every float section of the final checkpoint (weights,
    Adam moments, target branch, codebooks, queue) within 1e-4 relative (of each section's largest value);
  - the GPU trainer (BF16 build) is deterministic (the same seed twice: identical losses and checkpoint bytes;
    another seed: other losses), and 1 epoch + resume + 1 epoch == 2 epochs, every byte of the checkpoint.
and for train_cvae.cu (model=tiny, batch 4, on data/strategies.py's output with 64/16/16 examples per task), for full
training and for LoRA (r=4 on every projection):
  - GPU FP32 build == CPU backend (the initial weights are drawn on the host): the first step's debug state (the
    weights, logits, loss and every gradient: 1e-4 relative of each tensor's largest value; the batch's token ids
    equal); then 5 steps: every logged loss and gradient norm, the validation NLL per task (1e-4 relative, beyond
    the last printed digit) and the exported weights (hf_5/model.safetensors or adapter_5/adapter_model.safetensors,
    1e-4 relative per tensor); and greedy generation at the end (4 prompts per task, 24 tokens, through the KV cache):
    the same generations_5.jsonl, byte for byte, and the same count of generated tokens;
  - the GPU trainer (BF16 build) is deterministic (the same seed twice: identical train lines and checkpoint
    sections; another seed: other losses), and 3 steps + resume + 3 steps == 6 steps, every byte of every section
    of the checkpoint (the header holds the run's flags, resume=1 among them);
and for train_cvae.cu mode=cvae (the same tiny run, LoRA r=4 on its random base, the posterior an adapter of its own,
beta, posterior_variance_weight and router_marginal_kl_to_prior_weight all > 0):
  - GPU FP32 build == CPU backend: the first step's debug state (weights, batch, latents, J's terms, logits, every
    gradient: 1e-4 relative of each tensor's largest value); then 5 steps: c_base, each train line's J, recon, kl,
    pv, rmkl and gradient norm, each val line's recon_ratio, nll, kl, pv and rmkl (1e-4 relative of max(|value|,
    1e-3), beyond the last printed digit: kl and rmkl start at exactly 0 on both), and the exported adapter,
    posterior adapter and heads (1e-4 relative per tensor);
  - the BF16 build's determinism and bitwise resume as above, and the resumed run restores c_base from the
    checkpoint instead of measuring it again.
The determinism, resume and micro-batch checks are test/test_train.py's and test/test_jepa.py's, run on the GPU
binaries. Without a GPU every check is reported as SKIP (not passed); with ARC_REQUIRE_GPU=1 (make test-gpu) a
missing GPU is a failure.
"""
import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

import harness
import test_jepa
import test_train
from harness import expect as check, finish

ROOT = test_train.ROOT
SYNTH = test_train.SYNTH
CPU_BIN = os.path.join(ROOT, "train_etrm_cpu")
GPU_BIN = os.path.join(ROOT, "train_etrm")
GPU_FP32_BIN = os.path.join(ROOT, "train_etrm_fp32")
JEPA_CPU_BIN = os.path.join(ROOT, "train_jepa_cpu")
JEPA_GPU_BIN = os.path.join(ROOT, "train_jepa")
JEPA_GPU_FP32_BIN = os.path.join(ROOT, "train_jepa_fp32")
CVAE_CPU_BIN = os.path.join(ROOT, "train_cvae_cpu")
CVAE_GPU_BIN = os.path.join(ROOT, "train_cvae")
CVAE_GPU_FP32_BIN = os.path.join(ROOT, "train_cvae_fp32")
BINARIES = {"etrm": (GPU_BIN, GPU_FP32_BIN, CPU_BIN), "jepa": (JEPA_GPU_BIN, JEPA_GPU_FP32_BIN, JEPA_CPU_BIN),
            "cvae": (CVAE_GPU_BIN, CVAE_GPU_FP32_BIN, CVAE_CPU_BIN)}
ETRM_TINY = [f"data_paths={SYNTH}/train.bin"] + test_train.TINY
ENCODERS = ("none", "standard", "hybrid_standard", "hybrid_variational", "lpn_standard", "lpn_variational")
TOLERANCE = 1e-4

# The JEPA configurations compared with the CPU backend, on top of test_jepa.TINY. Every random draw of train_jepa
# is keyed by (seed, step, micro-batch, position) through common/rand.h's integer hashes, which both backends
# evaluate alike, so all of them stay on: the dropout masks (kernels/dropout.cuh, and the attention weights' in
# kernels/object_attention.cuh), the Gumbel noise (kernels/vq_gumbel.cuh), and, drawn on the host, the SIGReg slices,
# the dead-code refresh candidates, the data order, the augmentations and the invariance perturbations.
# The discrete choices are the risk instead: the nearest code (hard VQ; the Gumbel VQ in validation), the Gumbel
# sample's argmax and the dead-code test (EMA count < refresh_threshold). Both backends sum the distances in the same
# order (kernels/vq.cuh), so they differ only through the encoder's output, by fp32 rounding (~1e-6 relative), and
# only a near-tie can pick another code, which would move the losses far beyond the tolerance (and the diag lines'
# vq_perplexity). Measured once in an instrumented CPU build, these 6-step runs keep the nearest code ahead of the
# second by >= 4.7e-6, 6.0e-5 and 3.7e-6 relative (the three configurations below), the Gumbel sample ahead by
# >= 1.5e-4, and every EMA count >= 1e-2 from the threshold; and the CPU backend built in double (-DENABLE_FP64),
# which differs from the float build by rounding of that size, logs the same numbers and codes, and its checkpoints
# differ from the float build's by at most 4e-6 relative: the ETRM's tolerance fits. Longer runs encode more rows
# and come closer to a tie.
JEPA_CONFIGS = [("hard VQ, InfoNCE, invariance, relational, SIGReg", []),
                ("objective=sigreg, context_agg=gru", ["objective=sigreg", "context_agg=gru"]),
                ("vq_mode=gumbel, context_agg=attention", ["vq_mode=gumbel", "context_agg=attention"])]


# train_cvae's tiny run on top of its data_dir: log every step, a short warm-up (the weights move in 5 steps), the
# validation NLL on 4 examples per task. Generation is off unless a check turns it on.
CVAE_TINY = ["model=tiny", "batch_size=4", "log_every=1", "lr=3e-3", "lr_warmup_steps=2", "val_examples=4",
             "gen_examples=0", "save_hf=1"]
CVAE_MODES = [("full training", []), ("LoRA r=4", ["lora_r=4", "lora_alpha=8"])]
# mode=cvae: LoRA r=4 on tiny's (random, frozen) base, the posterior an adapter of its own, every term of J weighted
# (the router marginal KL's gradient takes the batch moments of a first pass over the prompts)
CVAE_LATENT = ("mode=cvae, LoRA r=4", ["mode=cvae", "lora_r=4", "lora_alpha=8", "beta=0.1", "posterior_variance_weight=0.2",
                                       "router_marginal_kl_to_prior_weight=0.3"])
# what train_cvae mode=cvae logs that the backends must agree on: J and its terms (%.5f: loss, recon, nll,
# recon_ratio, c_base; %.5g: kl, pv, rmkl) and the gradient norm (%.4f)
CVAE_LATENT_TRAIN = ("loss", "recon", "kl", "pv", "rmkl", "grad_norm")
CVAE_LATENT_VAL = ("recon_ratio", "nll", "kl", "pv", "rmkl")
CVAE_G5 = ("kl", "pv", "rmkl")


def cvae_tag(mode, extra):
    """A folder-name tag of a CVAE_MODES entry."""
    return "latent" if "mode=cvae" in extra else mode.split()[0].lower()


def floats(data):
    """Little-endian float32 values of a byte string."""
    return struct.unpack(f"<{len(data) // 4}f", data)


def read_f32_tensors(path):
    """name -> list of floats for every F32 tensor of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        b, e = info["data_offsets"]
        out[name] = floats(data[b:e])
    return out


def relative_difference(a, b):
    """max |a - b| / max |b| (0 when both are all zeros); NaN anywhere gives inf."""
    scale = max((abs(x) for x in b), default=0.0)
    worst = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
    if worst != worst or scale != scale:
        return float("inf")
    return worst / scale if scale > 0 else worst


def sections_difference(a, b, names):
    """(largest relative_difference(b[name], a[name]), its name) over float32 checkpoint sections (read_sections
    dicts); a section missing from b or of another size gives inf."""
    worst = (0.0, "")
    for name in names:
        va, vb = floats(a[name]), floats(b.get(name, b""))
        worst = max(worst, (relative_difference(vb, va) if len(va) == len(vb) else float("inf"), name))
    return worst


def train(binary, config, out, *extra):
    """Runs a trainer with config, checkpoint_path=out and extra; its stdout."""
    args = [binary] + harness.merge_args(list(config) + [f"checkpoint_path={out}"] + list(extra))
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{os.path.basename(binary)} {' '.join(extra)} failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return p.stdout


def losses(stdout):
    """(loss, lm_loss, q_halt_loss, kl) of every train line of train_etrm."""
    rows = []
    for line in test_train.train_lines(stdout):
        fields = dict(kv.split("=", 1) for kv in line.split()[1:])
        rows.append(tuple(float(fields[k]) for k in ("loss", "lm_loss", "q_halt_loss", "kl")))
    return rows


def logged_numbers(stdout):
    """[(line, key, printed value)] of what train_jepa logs: every number of the train and val lines but the timings,
    and the codebook usage of the diag lines (vq_*: counts of the codes the VQ chose). The diag lines' spectra
    (effective ranks, isotropy = smallest / largest eigenvalue) are ill-conditioned and not compared."""
    numbers = []
    for line in stdout.splitlines():
        kind = line.split(" ", 1)[0]
        if kind not in ("train", "val", "diag"):
            continue
        fields = test_jepa.values(line)
        for key, text in fields.items():
            if key in ("ms", "data_ms", "samples_per_s", "mfu") or (kind == "diag" and not key.startswith("vq_")):
                continue
            numbers.append((f"{kind} step={fields['step']}", key, text))
    return numbers


def last_digit(text):
    """One unit of the last printed digit: 1e-6 for "0.123456", 1e-7 for "5.000e-04", 0 for "48" (an exact count).
    The printed roundings of two values can differ by this much more than the values."""
    mantissa, _, exponent = text.lower().partition("e")
    return 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2])) if "." in mantissa else 0.0


def printed_difference(x, y):
    """|x - y| beyond one unit of the last printed digit, relative to |y|, for printed numbers x and y; inf when
    either is not finite (and they differ) or y is zero and x is farther than that unit."""
    if x == y:
        return 0.0
    excess = abs(float(x) - float(y)) - last_digit(y)
    if not math.isfinite(excess):
        return float("inf")
    if excess <= 0:
        return 0.0
    return excess / abs(float(y)) if float(y) != 0 else float("inf")


def logged_difference(a, b):
    """(largest printed_difference, where) over two runs' logged_numbers, b the reference; inf when they logged
    other lines or keys."""
    if [n[:2] for n in a] != [n[:2] for n in b]:
        return float("inf"), f"the logged lines differ: {a[-1:]} vs {b[-1:]}"
    return max(((printed_difference(x, y), f"{line} {key}: {x} vs {y}") for (line, key, x), (_, _, y) in zip(a, b)),
               default=(0.0, ""))


def test_gpu_matches_cpu(tmp, encoders=ENCODERS):
    for enc in encoders:
        common = [f"encoder_type={enc}", "kl_weight=0.1"]
        cpu_path, gpu_path = f"{tmp}/cpu_{enc}.safetensors", f"{tmp}/gpu_{enc}.safetensors"
        train(CPU_BIN, ETRM_TINY, f"{tmp}/cpu_debug_{enc}", *common, "max_steps=1", f"debug_state={cpu_path}")
        train(GPU_FP32_BIN, ETRM_TINY, f"{tmp}/gpu_debug_{enc}", *common, "max_steps=1", f"debug_state={gpu_path}")
        cpu, gpu = read_f32_tensors(cpu_path), read_f32_tensors(gpu_path)
        compared = [n for n in cpu if n.startswith(("out.", "grad."))]
        worst = max(((relative_difference(gpu.get(n, ()), cpu[n]), n) for n in compared), default=(0.0, ""))
        check(set(cpu) == set(gpu) and len(compared) > 10 and worst[0] <= TOLERANCE,
              f"GPU FP32 == CPU: first step's outputs, losses and {len(compared)} gradients within {TOLERANCE} ({enc})",
              f"largest relative difference {worst[0]:.3g} in {worst[1]}")

        a = train(CPU_BIN, ETRM_TINY, f"{tmp}/cpu_steps_{enc}", *common, "max_steps=5")
        b = train(GPU_FP32_BIN, ETRM_TINY, f"{tmp}/gpu_steps_{enc}", *common, "max_steps=5")
        la, lb = losses(a), losses(b)
        worst_loss = max((abs(x - y) / max(abs(x), 1e-3) for ra, rb in zip(la, lb) for x, y in zip(ra, rb)), default=0.0)
        check(len(la) == 5 and len(lb) == 5 and worst_loss <= TOLERANCE,
              f"GPU FP32 == CPU: losses of 5 training steps within {TOLERANCE} ({enc})",
              f"largest relative difference {worst_loss:.3g}: cpu {la} gpu {lb}")
        a = test_train.read_sections(f"{tmp}/cpu_steps_{enc}/ckpt_00000005.bin")
        diff, _ = sections_difference(a, test_train.read_sections(f"{tmp}/gpu_steps_{enc}/ckpt_00000005.bin"),
                                      [s for s in a if s.endswith(".weights")])
        check(diff <= TOLERANCE, f"GPU FP32 == CPU: weights after 5 steps within {TOLERANCE} ({enc})",
              f"relative difference {diff:.3g}")


def eval_numbers(stdout):
    """[(line, key, printed value)] of train_etrm's eval lines (every number but the seconds)."""
    return [(f"eval step={f['step']} set={f['set']}", k, v) for line in stdout.splitlines() if line.startswith("eval ")
            for f in [dict(kv.split("=", 1) for kv in line.split()[1:])] for k, v in f.items()
            if k not in ("step", "set", "seconds")]


def test_latent_steps_gpu_match_cpu(tmp):
    """LPN's latent steps: 5 training steps with latent_inner_steps=2 (losses, weights) and the evaluation after them
    with latent_opt_steps=3 and the best-two vote (every number of the eval lines: pass@K, demo losses)."""
    for enc in ("standard", "lpn_variational"):
        common = [f"encoder_type={enc}", "kl_weight=0.1", "max_steps=5", "latent_inner_steps=2", "latent_inner_lr=0.5",
                  "latent_opt_steps=3", "latent_opt_lr=0.1", f"data_paths_test={SYNTH}/eval.bin"]
        a = train(CPU_BIN, ETRM_TINY, f"{tmp}/cpu_inner_{enc}", *common)
        b = train(GPU_FP32_BIN, ETRM_TINY, f"{tmp}/gpu_inner_{enc}", *common)
        la, lb = losses(a), losses(b)
        worst_loss = max((abs(x - y) / max(abs(x), 1e-3) for ra, rb in zip(la, lb) for x, y in zip(ra, rb)), default=0.0)
        weights = test_train.read_sections(f"{tmp}/cpu_inner_{enc}/ckpt_00000005.bin")
        diff, _ = sections_difference(weights, test_train.read_sections(f"{tmp}/gpu_inner_{enc}/ckpt_00000005.bin"),
                                      [s for s in weights if s.endswith(".weights")])
        check(len(la) == 5 and len(lb) == 5 and worst_loss <= TOLERANCE and diff <= TOLERANCE,
              f"GPU FP32 == CPU: 5 steps with latent_inner_steps=2, losses and weights within {TOLERANCE} ({enc})",
              f"losses {worst_loss:.3g}, weights {diff:.3g}")
        ea, eb = eval_numbers(b), eval_numbers(a)
        worst, where = logged_difference(ea, eb)
        check(len(eb) > 5 and any(k == "demo_loss_optimised" for _, k, _ in eb) and worst <= TOLERANCE,
              f"GPU FP32 == CPU: evaluation with latent_opt_steps=3 and the best-two vote within {TOLERANCE} ({enc})",
              f"{worst:.3g} at {where}")


def test_jepa_gpu_matches_cpu(tmp, configs=JEPA_CONFIGS):
    for i, (name, extra) in enumerate(configs):
        cpu_out, gpu_out = f"{tmp}/jepa_cpu_{i}", f"{tmp}/jepa_gpu_{i}"
        cpu = logged_numbers(train(JEPA_CPU_BIN, test_jepa.TINY, cpu_out, *extra))
        gpu = logged_numbers(train(JEPA_GPU_FP32_BIN, test_jepa.TINY, gpu_out, *extra))
        worst = logged_difference(gpu, cpu)
        lines = len({line for line, _, _ in cpu})
        check(lines == 10 and worst[0] <= TOLERANCE,
              f"JEPA GPU FP32 == CPU: every logged number of 6 steps, 2 validations and 2 diagnostics within {TOLERANCE} ({name})",
              f"{lines} lines, largest relative difference {worst[0]:.3g} at {worst[1]}")
        a, b = test_train.read_sections(f"{cpu_out}/latest.bin"), test_train.read_sections(f"{gpu_out}/latest.bin")
        compared = [s for s in a if s not in ("state", "param_steps")]
        diff, section = sections_difference(a, b, compared)
        check(a.keys() == b.keys() and diff <= TOLERANCE,
              f"JEPA GPU FP32 == CPU: the final checkpoint's {len(compared)} float sections within {TOLERANCE} ({name})",
              f"relative difference {diff:.3g} in {section}" if a.keys() == b.keys() else f"sections {sorted(a)} vs {sorted(b)}")


def cvae_config(tmp):
    """CVAE_TINY on data/strategies.py's output (written once into tmp)."""
    data = os.path.join(tmp, "cvae_data")
    if not os.path.exists(os.path.join(data, "test.jsonl")):
        subprocess.run([sys.executable, os.path.join(ROOT, "data", "strategies.py"), data, "--n-train", "64", "--n-val",
                        "16", "--n-test", "16"], check=True, capture_output=True)
    return [f"data_dir={data}"] + CVAE_TINY


def cvae_logged(stdout):
    """[(line, key, printed value)] of what train_cvae logs that the backends must agree on: the loss and gradient
    norm of the train lines, the NLL of the val lines (token_acc counts argmax hits: a near-tie flips one; not
    compared), and the traces and token count of the gen line."""
    numbers = []
    for line in stdout.splitlines():
        kind = line.split(" ", 1)[0]
        fields = test_jepa.values(line)
        if kind == "train":
            numbers += [(f"train step={fields['step']}", k, fields[k]) for k in ("loss", "grad_norm")]
        elif kind == "val":
            numbers.append((f"val step={fields['step']} task={fields['task']}", "nll", fields["nll"]))
        elif kind == "gen" and "traces" in fields:
            numbers += [(f"gen step={fields['step']}", k, fields[k]) for k in ("traces", "tokens")]
    return numbers


def cvae_train_lines(stdout):
    """train_cvae's train lines without the timing fields."""
    return [re.sub(r" ms=\S+| tokens_per_s=\S+", "", l) for l in stdout.splitlines() if l.startswith("train ")]


def read_tensors(path):
    """name -> (dtype, shape, bytes) of every tensor of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    return {k: (v["dtype"], v["shape"], raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


def tensors_difference(a, b):
    """(largest relative_difference of b's F32 tensors from a's, its name) over two safetensors files' read_tensors;
    inf when they hold other names, dtypes or shapes, or a non-F32 tensor differs."""
    if {k: v[:2] for k, v in a.items()} != {k: v[:2] for k, v in b.items()}:
        return float("inf"), f"other tensors: {sorted(set(a) ^ set(b))[:4]}"
    worst = (0.0, "")
    for name, (dtype, _, data) in a.items():
        if dtype == "F32":
            worst = max(worst, (relative_difference(floats(b[name][2]), floats(data)), name))
        elif data != b[name][2]:
            return float("inf"), f"{name} ({dtype}) differs"
    return worst


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_cvae_gpu_matches_cpu(tmp):
    config = cvae_config(tmp)
    for mode, extra in CVAE_MODES:
        tag = mode.split()[0].lower()
        cpu_path, gpu_path = f"{tmp}/cvae_cpu_{tag}.safetensors", f"{tmp}/cvae_gpu_{tag}.safetensors"
        train(CVAE_CPU_BIN, config, f"{tmp}/cvae_cpu_debug_{tag}", *extra, "max_steps=1", f"debug_state={cpu_path}")
        train(CVAE_GPU_FP32_BIN, config, f"{tmp}/cvae_gpu_debug_{tag}", *extra, "max_steps=1", f"debug_state={gpu_path}")
        cpu, gpu = read_tensors(cpu_path), read_tensors(gpu_path)
        grads = [n for n in cpu if n.startswith("grad.")]
        worst = tensors_difference(cpu, gpu)
        check(len(grads) >= 10 and "out.logits" in cpu and "out.loss" in cpu and worst[0] <= TOLERANCE,
              f"cvae GPU FP32 == CPU: first step's weights, batch, logits, loss and {len(grads)} gradients within "
              f"{TOLERANCE} ({mode})", f"largest relative difference {worst[0]:.3g} in {worst[1]}")

        runs = {}
        for name, binary in (("cpu", CVAE_CPU_BIN), ("gpu", CVAE_GPU_FP32_BIN)):
            out = f"{tmp}/cvae_{name}_steps_{tag}"
            runs[name] = (out, train(binary, config, out, *extra, "max_steps=5", "gen_examples=4", "gen_max_tokens=24"))
        (cpu_out, a), (gpu_out, b) = runs["cpu"], runs["gpu"]
        la, lb = cvae_logged(a), cvae_logged(b)
        worst = logged_difference(lb, la)
        steps = len([n for n in la if n[1] == "loss"])
        check(steps == 5 and any(n[1] == "nll" for n in la) and worst[0] <= TOLERANCE,
              f"cvae GPU FP32 == CPU: losses and gradient norms of 5 steps, validation NLL, generated token count "
              f"within {TOLERANCE} ({mode})", f"{steps} train lines, largest relative difference {worst[0]:.3g} at {worst[1]}")
        export = "adapter_00000005/adapter_model.safetensors" if extra else "hf_00000005/model.safetensors"
        worst = tensors_difference(read_tensors(f"{cpu_out}/{export}"), read_tensors(f"{gpu_out}/{export}"))
        check(worst[0] <= TOLERANCE, f"cvae GPU FP32 == CPU: exported weights after 5 steps ({export.split('/')[1]}) "
              f"within {TOLERANCE} ({mode})", f"largest relative difference {worst[0]:.3g} in {worst[1]}")
        ga, gb = (read_bytes(f"{out}/generations_00000005.jsonl") for out in (cpu_out, gpu_out))
        first = next((i for i, (x, y) in enumerate(zip(ga.splitlines(), gb.splitlines())) if x != y), None)
        check(ga == gb and ga.count(b"\n") == 24,
              f"cvae GPU FP32 == CPU: greedy generation through the KV cache, the 24 traces identical ({mode})",
              f"{ga.count(b'{')} vs {gb.count(b'{')} traces; first difference in line {first}")


def cvae_latent_logged(stdout):
    """[(line, key, printed value)] of a mode=cvae run: c_base, J and its terms and the gradient norm of every train
    line, the latent terms and NLL of every val line (per task)."""
    numbers = []
    for line in stdout.splitlines():
        kind = line.split(" ", 1)[0]
        fields = test_jepa.values(line)
        if line.startswith("c_base="):
            numbers.append(("c_base", "c_base", fields["c_base"].rstrip(":")))
        elif kind == "train":
            numbers += [(f"train step={fields['step']}", k, fields[k]) for k in CVAE_LATENT_TRAIN]
        elif kind == "val":
            numbers += [(f"val step={fields['step']} task={fields['task']}", k, fields[k]) for k in CVAE_LATENT_VAL]
    return numbers


def term_difference(key, x, y):
    """|x - y| beyond one unit of y's last printed digit (the 5th significant one for %.5g's kl, pv, rmkl, which
    drops trailing zeros), relative to max(|y|, 1e-3): the KL terms start at exactly 0 (zero heads: q = p = N(0, I);
    the router's head stays 0 until its first nonzero gradient, at step 2), on both backends."""
    if x == y:
        return 0.0
    fx, fy = float(x), float(y)
    unit = 10.0 ** (math.floor(math.log10(abs(fy))) - 4) if key in CVAE_G5 and fy != 0 else last_digit(y)
    excess = abs(fx - fy) - unit
    if not math.isfinite(excess):
        return float("inf")
    return max(excess, 0.0) / max(abs(fy), 1e-3)


def test_cvae_latent_gpu_matches_cpu(tmp):
    """mode=cvae on the FP32 GPU build against the CPU backend: the first step's debug state (weights, batch, latents,
    J's terms, logits and every gradient), then 5 steps' train-line terms, validation per task and the exports."""
    config = cvae_config(tmp)
    mode, extra = CVAE_LATENT
    cpu_path, gpu_path = f"{tmp}/cvae_cpu_latent.safetensors", f"{tmp}/cvae_gpu_latent.safetensors"
    train(CVAE_CPU_BIN, config, f"{tmp}/cvae_cpu_debug_latent", *extra, "max_steps=1", f"debug_state={cpu_path}")
    train(CVAE_GPU_FP32_BIN, config, f"{tmp}/cvae_gpu_debug_latent", *extra, "max_steps=1", f"debug_state={gpu_path}")
    cpu, gpu = read_tensors(cpu_path), read_tensors(gpu_path)
    grads = [n for n in cpu if n.startswith("grad.")]
    worst = tensors_difference(cpu, gpu)
    check(len(grads) >= 10 and any(n.startswith("grad.posterior.") for n in grads) and "out.mu_q" in cpu
          and "out.rmkl" in cpu and worst[0] <= TOLERANCE,
          f"cvae GPU FP32 == CPU: first step's weights, batch, latents, J's terms, logits and {len(grads)} gradients "
          f"within {TOLERANCE} ({mode})", f"largest relative difference {worst[0]:.3g} in {worst[1]}")

    runs = {}
    for name, binary in (("cpu", CVAE_CPU_BIN), ("gpu", CVAE_GPU_FP32_BIN)):
        out = f"{tmp}/cvae_{name}_steps_latent"
        runs[name] = (out, train(binary, config, out, *extra, "max_steps=5"))
    (cpu_out, a), (gpu_out, b) = runs["cpu"], runs["gpu"]
    la, lb = cvae_latent_logged(a), cvae_latent_logged(b)
    if [n[:2] for n in la] != [n[:2] for n in lb]:
        worst = (float("inf"), f"the logged lines differ: {la[-1:]} vs {lb[-1:]}")
    else:
        worst = max(((term_difference(k, x, y), f"{line} {k}: {x} vs {y}") for (line, k, x), (_, _, y) in zip(lb, la)),
                    default=(0.0, ""))
    steps = len([n for n in la if n[1] == "loss"])
    rmkl = [float(x) for line, k, x in la if line.startswith("train") and k == "rmkl"]
    check(steps == 5 and rmkl and rmkl[-1] > 0 and any(k == "nll" for _, k, _ in la) and worst[0] <= TOLERANCE,
          f"cvae GPU FP32 == CPU: c_base, J, recon, kl, pv, rmkl and the gradient norm of 5 steps, the validation "
          f"terms per task within {TOLERANCE} ({mode})",
          f"{steps} train lines, rmkl {rmkl}, largest relative difference {worst[0]:.3g} at {worst[1]}")
    for export in ("adapter_model.safetensors", "posterior/adapter_model.safetensors", "cvae_heads.safetensors"):
        path = f"adapter_00000005/{export}"
        worst = tensors_difference(read_tensors(f"{cpu_out}/{path}"), read_tensors(f"{gpu_out}/{path}"))
        check(worst[0] <= TOLERANCE, f"cvae GPU FP32 == CPU: exported {export} after 5 steps within {TOLERANCE} ({mode})",
              f"largest relative difference {worst[0]:.3g} in {worst[1]}")


def test_cvae_determinism(tmp):
    config = cvae_config(tmp)
    for mode, extra in CVAE_MODES + [CVAE_LATENT]:
        tag = cvae_tag(mode, extra)
        a = train(CVAE_GPU_BIN, config, f"{tmp}/cvae_det_a_{tag}", *extra, "max_steps=4")
        b = train(CVAE_GPU_BIN, config, f"{tmp}/cvae_det_b_{tag}", *extra, "max_steps=4")
        sa = test_train.read_sections(f"{tmp}/cvae_det_a_{tag}/ckpt_00000004.bin")
        sb = test_train.read_sections(f"{tmp}/cvae_det_b_{tag}/ckpt_00000004.bin")
        la, lb = cvae_train_lines(a), cvae_train_lines(b)
        check(la == lb and len(la) == 4 and sa == sb,
              f"gpu cvae determinism: same seed gives identical train lines and checkpoints ({mode})",
              f"train lines equal: {la == lb} ({len(la)}), sections differ: {[k for k in sa if sa[k] != sb.get(k)]}")
        c = train(CVAE_GPU_BIN, config, f"{tmp}/cvae_det_c_{tag}", *extra, "max_steps=4", "seed=1")
        check(cvae_train_lines(c) != la, f"gpu cvae determinism: another seed gives other losses ({mode})")


def test_cvae_resume(tmp):
    config = cvae_config(tmp)
    for mode, extra in CVAE_MODES + [CVAE_LATENT]:
        tag = cvae_tag(mode, extra)
        full, part = f"{tmp}/cvae_res_full_{tag}", f"{tmp}/cvae_res_part_{tag}"
        common = list(extra) + ["checkpoint_every=3", "max_steps=6", "checkpoint_keep=0"]
        so_full = train(CVAE_GPU_BIN, config, full, *common)
        # the interrupted run: stop after its step-3 checkpoint by resuming from a copy of it
        os.makedirs(part)
        shutil.copy(f"{full}/ckpt_00000003.bin", part)
        so = train(CVAE_GPU_BIN, config, part, *common, "resume=1")
        a, b = test_train.read_sections(f"{full}/ckpt_00000006.bin"), test_train.read_sections(f"{part}/ckpt_00000006.bin")
        differ = [k for k in a if a[k] != b.get(k)]
        same_lines = cvae_train_lines(so) == cvae_train_lines(so_full)[3:]
        check(a.keys() == b.keys() and not differ and "resumed from" in so and same_lines,
              f"gpu cvae resume: 3 steps + resume + 3 steps == 6 steps: the train lines, every checkpoint section "
              f"bitwise ({mode})", f"sections {sorted(a)} vs {sorted(b)}, differing {differ}; train lines after the "
              f"resume equal: {same_lines}")
        if "mode=cvae" in extra:
            measured = re.findall(r"^c_base=(\S+): the validation NLL", so_full, re.M)
            check(len(measured) == 1 and re.findall(r"^c_base=(\S+)$", so, re.M) == measured,
                  f"gpu cvae resume: c_base measured before step 1 and restored from the checkpoint, not re-measured "
                  f"({mode})", f"measured {measured}; the resumed run's c_base lines "
                  f"{[l for l in so.splitlines() if l.startswith('c_base')]}")


def on_gpu(suite, binary, test, label, tiny=None):
    """The check `test` of suite (the module test_train or test_jepa) run on a GPU binary, its lines named
    "<label> ...", in suite.TINY's configuration or in tiny's."""
    def run_test(tmp):
        suite.BIN = binary
        suite.check = lambda ok, name, why="": harness.expect(ok, f"{label} {name}", why)
        if tiny is not None:
            suite.TINY = tiny
        test(tmp)
    return run_test


def gpu_available(trainer=None):
    """None when the GPU trainers (of one trainer: etrm, jepa, cvae; default: all) run; otherwise why not."""
    trainers = [trainer] if trainer else list(BINARIES)
    for binary in (b for t in trainers for b in BINARIES[t]):
        if not os.path.exists(binary):
            return f"{os.path.basename(binary)} is not built"
    probe = tempfile.mkdtemp(prefix="arc_gpu_probe_")
    try:
        # cvae, jepa: the GPU is opened first; with one, the missing data ends the run at once
        if trainer == "cvae":
            args = [CVAE_GPU_FP32_BIN, f"data_dir={probe}/none", f"checkpoint_path={probe}", "max_steps=1"]
        elif trainer == "jepa":
            args = [JEPA_GPU_FP32_BIN, f"data_path={probe}/none.bin", f"checkpoint_path={probe}"]
        else:
            args = [GPU_FP32_BIN] + harness.merge_args([f"data_paths={SYNTH}/train.bin", f"checkpoint_path={probe}",
                                                        "max_steps=1", "eval_interval=0"] + test_train.TINY)
        p = subprocess.run(args, capture_output=True, text=True)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if p.returncode != 0 and "no CUDA GPU" in p.stderr:
        return p.stderr.strip().splitlines()[-1]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trainer", nargs="?", choices=("etrm", "jepa", "cvae"), help="one trainer's checks (default: all)")
    ap.add_argument("--quick", action="store_true", help="TRM and the standard encoder, the first JEPA configuration")
    args = ap.parse_args()
    encoders, configs = (ENCODERS[:2], JEPA_CONFIGS[:1]) if args.quick else (ENCODERS, JEPA_CONFIGS)
    test_train.ensure_synthetic_data()
    # head size 16 (D=32, 2 heads): the BF16 build then takes the tensor-core attention path
    etrm_tiny = ["hidden_size=32" if a.startswith("hidden_size=") else a for a in test_train.TINY]
    etrm = [("GPU FP32 == CPU backend", lambda tmp: test_gpu_matches_cpu(tmp, encoders)),
            ("GPU FP32 == CPU backend, latent steps", test_latent_steps_gpu_match_cpu),
            ("GPU determinism", on_gpu(test_train, GPU_BIN, test_train.test_determinism, "gpu", etrm_tiny)),
            ("GPU resume", on_gpu(test_train, GPU_BIN, test_train.test_resume, "gpu", etrm_tiny)),
            ("GPU micro-batches", on_gpu(test_train, GPU_FP32_BIN, test_train.test_micro_batches, "gpu", etrm_tiny))]
    jepa = [("JEPA GPU FP32 == CPU backend", lambda tmp: test_jepa_gpu_matches_cpu(tmp, configs)),
            ("JEPA GPU determinism", on_gpu(test_jepa, JEPA_GPU_BIN, test_jepa.test_determinism, "gpu jepa")),
            ("JEPA GPU resume", on_gpu(test_jepa, JEPA_GPU_BIN, test_jepa.test_resume, "gpu jepa"))]
    cvae = [("cvae GPU FP32 == CPU backend", test_cvae_gpu_matches_cpu),
            ("cvae mode=cvae GPU FP32 == CPU backend", test_cvae_latent_gpu_matches_cpu),
            ("cvae GPU determinism", test_cvae_determinism),
            ("cvae GPU resume", test_cvae_resume)]
    groups = {"etrm": etrm, "jepa": jepa, "cvae": cvae}
    # each trainer's checks skip (or, with ARC_REQUIRE_GPU=1, fail) on their own: one trainer not built stops no other
    for trainer in [args.trainer] if args.trainer else list(groups):
        harness.run_groups(groups[trainer], f"arc_test_gpu_{trainer}_", gpu_available(trainer))
    finish()


if __name__ == "__main__":
    main()
