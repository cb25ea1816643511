#!/usr/bin/env python3
"""Learning test: CPU training of a small ETRM on the synthetic default must fit its training tasks.

    python3 test/test_learning.py        (from the repository root, after `make train_etrm_cpu`)

Like upstream ETRM's overfit runs (max_train_groups=32), a small ETRM (standard encoder, D=64) trains 800
steps on the first 32 tasks of data/synth/train.bin (no dihedral/colour augmentation, translation on), then
votes on their test inputs: pass@1 must reach THRESHOLD within TIME_LIMIT seconds. The accuracy on the
held-out families (data/synth/heldout.bin, rules never seen in training) is reported, not required.
The numbers measured on the development machine are in README.md ("Measured").
"""
import os
import re
import subprocess
import time

from harness import expect, finish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = os.path.join(ROOT, "data", "synth")
THRESHOLD = 0.20          # pass@1 on the 32 training tasks (measured: see README)
TIME_LIMIT = 900          # seconds, on 2 cores
ARGS = ["encoder_type=standard", "hidden_size=64", "num_heads=4", "H_cycles=2", "L_cycles=2", "puzzle_emb_len=4",
        "encoder_num_layers=1", "global_batch_size=32", "max_steps=800", "lr=1e-3", "lr_warmup_steps=50",
        "halt_max_steps=4", "max_train_groups=32", "max_eval_groups=32", "max_demos=5", "num_aug=0",
        "ema_rate=0.95", "eval_interval=0", "log_every=100", "save_safetensors=0"]


def main():
    out = os.path.join(ROOT, "build", "test_learning")
    args = [os.path.join(ROOT, "train_etrm_cpu"), f"data_paths={SYNTH}/train.bin",
            f"data_paths_test={SYNTH}/train.bin,{SYNTH}/heldout.bin", f"checkpoint_path={out}"] + ARGS
    if os.path.exists(os.path.join(out, "log.txt")):
        os.remove(os.path.join(out, "log.txt"))
    t0 = time.time()
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        expect(False, "learning", f"not finished within {TIME_LIMIT} s")
        finish()
    seconds = time.time() - t0
    evals = {m.group(1): m.group(0) for m in re.finditer(r"^eval step=\d+ set=(\S+) .*$", p.stdout, re.M)}
    if p.returncode != 0 or "train" not in evals or "heldout" not in evals:
        expect(False, "learning", f"train_etrm_cpu exited {p.returncode}: {p.stderr.strip()[-300:]}")
        finish()
    value = lambda line, key: float(re.search(rf" {re.escape(key)}=(\S+)", line).group(1))
    train_pass1 = value(evals["train"], "pass@1")
    print(f"  training tasks: exact_acc={value(evals['train'], 'exact_acc'):.3f} pass@1={train_pass1:.3f} "
          f"pass@2={value(evals['train'], 'pass@2'):.3f}   held-out families: exact_acc="
          f"{value(evals['heldout'], 'exact_acc'):.3f} pass@1={value(evals['heldout'], 'pass@1'):.3f}   ({seconds:.0f} s)")
    expect(train_pass1 >= THRESHOLD, f"learning: pass@1 on the 32 training tasks {train_pass1:.3f} (>= {THRESHOLD}) "
           f"after 800 steps in {seconds:.0f} s (<= {TIME_LIMIT})", "below the threshold")
    finish()


if __name__ == "__main__":
    main()
