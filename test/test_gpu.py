#!/usr/bin/env python3
"""End-to-end tests of the CUDA trainers against the CPU backend (standard library only).

    python3 test/test_gpu.py       (from the repository root, after `make train_etrm_cpu train_etrm train_etrm_fp32`)

Checks, on the synthetic data:
  - GPU FP32 build == CPU backend from the same initial weights and batches: the first step's debug state
    (logits, q logits, losses and every parameter gradient) for TRM and every encoder, then 5 training steps
    (each step's losses, and the weights after the last): within 1e-4 relative (of each tensor's largest value);
  - the GPU trainer (BF16 build) is deterministic: the same seed twice gives identical losses and checkpoints;
  - resume on the GPU is bit-identical (3 steps + resume + 3 steps == 6 steps, every byte of the checkpoint);
  - micro-batches on the GPU give the losses of one batch (FP32 build).
The determinism, resume and micro-batch checks are test/test_train.py's, run on the GPU binaries.
Without a GPU every check is reported as SKIP (not passed); with ARC_REQUIRE_GPU=1 (make test-gpu) a missing
GPU is a failure.
"""
import json
import os
import shutil
import struct
import subprocess
import tempfile

import harness
import test_train
from harness import expect as check, finish

ROOT = test_train.ROOT
SYNTH = test_train.SYNTH
CPU_BIN = os.path.join(ROOT, "train_etrm_cpu")
GPU_BIN = os.path.join(ROOT, "train_etrm")
GPU_FP32_BIN = os.path.join(ROOT, "train_etrm_fp32")
ENCODERS = ("none", "standard", "hybrid_standard", "hybrid_variational", "lpn_standard", "lpn_variational")
TOLERANCE = 1e-4


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
        out[name] = struct.unpack(f"<{(e - b) // 4}f", data[b:e])
    return out


def relative_difference(a, b):
    """max |a - b| / max |b| (0 when both are all zeros); NaN anywhere gives inf."""
    scale = max((abs(x) for x in b), default=0.0)
    worst = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
    if worst != worst or scale != scale:
        return float("inf")
    return worst / scale if scale > 0 else worst


def train(binary, out, *extra):
    args = [binary, f"data_paths={SYNTH}/train.bin"] + list(test_train.TINY) + [f"checkpoint_path={out}"] + list(extra)
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{os.path.basename(binary)} {' '.join(extra)} failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return p.stdout


def losses(stdout):
    """(loss, lm_loss, q_halt_loss, kl) of every train line."""
    rows = []
    for line in test_train.train_lines(stdout):
        fields = dict(kv.split("=", 1) for kv in line.split()[1:])
        rows.append(tuple(float(fields[k]) for k in ("loss", "lm_loss", "q_halt_loss", "kl")))
    return rows


def test_gpu_matches_cpu(tmp):
    for enc in ENCODERS:
        common = [f"encoder_type={enc}", "kl_weight=0.1"]
        cpu_path, gpu_path = f"{tmp}/cpu_{enc}.safetensors", f"{tmp}/gpu_{enc}.safetensors"
        train(CPU_BIN, f"{tmp}/cpu_debug_{enc}", *common, "max_steps=1", f"debug_state={cpu_path}")
        train(GPU_FP32_BIN, f"{tmp}/gpu_debug_{enc}", *common, "max_steps=1", f"debug_state={gpu_path}")
        cpu, gpu = read_f32_tensors(cpu_path), read_f32_tensors(gpu_path)
        compared = [n for n in cpu if n.startswith(("out.", "grad."))]
        worst = max(((relative_difference(gpu.get(n, ()), cpu[n]), n) for n in compared), default=(0.0, ""))
        check(set(cpu) == set(gpu) and len(compared) > 10 and worst[0] <= TOLERANCE,
              f"GPU FP32 == CPU: first step's outputs, losses and {len(compared)} gradients within {TOLERANCE} ({enc})",
              f"largest relative difference {worst[0]:.3g} in {worst[1]}")

        a = train(CPU_BIN, f"{tmp}/cpu_steps_{enc}", *common, "max_steps=5")
        b = train(GPU_FP32_BIN, f"{tmp}/gpu_steps_{enc}", *common, "max_steps=5")
        la, lb = losses(a), losses(b)
        worst_loss = max((abs(x - y) / max(abs(x), 1e-3) for ra, rb in zip(la, lb) for x, y in zip(ra, rb)), default=0.0)
        check(len(la) == 5 and len(lb) == 5 and worst_loss <= TOLERANCE,
              f"GPU FP32 == CPU: losses of 5 training steps within {TOLERANCE} ({enc})",
              f"largest relative difference {worst_loss:.3g}: cpu {la} gpu {lb}")
        wa = test_train.read_sections(f"{tmp}/cpu_steps_{enc}/ckpt_00000005.bin")["weights"]
        wb = test_train.read_sections(f"{tmp}/gpu_steps_{enc}/ckpt_00000005.bin")["weights"]
        va, vb = struct.unpack(f"<{len(wa) // 4}f", wa), struct.unpack(f"<{len(wb) // 4}f", wb)
        diff = relative_difference(vb, va) if len(va) == len(vb) else float("inf")
        check(diff <= TOLERANCE, f"GPU FP32 == CPU: weights after 5 steps within {TOLERANCE} ({enc})",
              f"relative difference {diff:.3g}")


def gpu_available():
    """None when the GPU trainer runs; otherwise why not."""
    for binary in (GPU_BIN, GPU_FP32_BIN, CPU_BIN):
        if not os.path.exists(binary):
            return f"{os.path.basename(binary)} is not built"
    probe = tempfile.mkdtemp(prefix="arc_gpu_probe_")
    try:
        p = subprocess.run([GPU_FP32_BIN, f"data_paths={SYNTH}/train.bin", f"checkpoint_path={probe}", "max_steps=1",
                            "eval_interval=0"] + test_train.TINY, capture_output=True, text=True)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if p.returncode != 0 and "no CUDA GPU" in p.stderr:
        return p.stderr.strip().splitlines()[-1]
    return None


def main():
    test_train.ensure_synthetic_data()
    tiny = list(test_train.TINY)

    def on_gpu(binary, test):                       # test_train's checks, run on a GPU binary, named "gpu ..."
        def run_test(tmp):
            test_train.BIN = binary
            test_train.check = lambda ok, name, why="": harness.expect(ok, f"gpu {name}", why)
            # head size 16 (D=32, 2 heads): the BF16 build then takes the tensor-core attention path
            test_train.TINY = ["hidden_size=32" if a.startswith("hidden_size=") else a for a in tiny]
            test(tmp)
        return run_test
    harness.run_groups([("GPU FP32 == CPU backend", test_gpu_matches_cpu),
                        ("GPU determinism", on_gpu(GPU_BIN, test_train.test_determinism)),
                        ("GPU resume", on_gpu(GPU_BIN, test_train.test_resume)),
                        ("GPU micro-batches", on_gpu(GPU_FP32_BIN, test_train.test_micro_batches))],
                       "arc_test_gpu_", gpu_available())
    finish()


if __name__ == "__main__":
    main()
