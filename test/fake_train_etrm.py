#!/usr/bin/env python3
"""A stand-in for ./train_etrm_cpu used by test/test_generalise.py only: it takes the trainer's key=value flags and
writes, in milliseconds, the lines of train_etrm's log (to stdout and to <checkpoint_path>/log.txt, appended):
`train` lines every log_every steps, an `eval` line per data_paths_test file at every eval_interval_steps and at
the end, `timing` at the end of training; at each evaluation predictions_step<8 digits>_<set>.json, ckpt_<8
digits>.bin and model_<8 digits>.safetensors (placeholders). resume=1 continues from the newest ckpt_; eval_only=1
evaluates once at step 0 (it needs load_checkpoint=FILE) and writes no timing line, as the real trainer does. Every
invocation appends {"exe": its path, "argv": [...], "omp": OMP_NUM_THREADS} (JSON) to <checkpoint_path>/argv.txt
for the test.

The predictions are those of a rule the test knows: test input j of the task at position i of its file (the
first max_eval_groups tasks) has its true output ranked first when (i + j + shift) % 3 == 0, second when it is 1,
not among the candidates when it is 2, where shift = seed + latent_opt_steps; the eval line's pass@1 / pass@2 are
that rule's. With latent_opt_steps=K > 0 the eval lines also carry demo_loss_encoder=2.0000 and
demo_loss_optimised=2 - 0.01 K. eval_shuffle_demos=1 (refused with encoder_type=none, as by the real trainer)
labels every set <name>_shuffled_demos (eval lines and predictions files) and lowers its token_acc by
0.1 + 0.01 seed (0.02 on a file named heldout.bin) and raises its lm_loss by 3 times that; the predictions are
unchanged. encoder_type=none logs grad_norm_enc=0 and encoder_cross_sample_var=0, the
others grad_norm_enc=0.3 and grad_norm_dec=0.4 (encoder share 0.36). The task files are read with
data/arc_format.py from the working directory's data/ (the study runs its trainer in the repository root).

Flags it reads: checkpoint_path (required), resume (0/1/true/false, as the real trainer: anything else is an
error), max_steps (20), eval_interval_steps (0: the end only), log_every (1), data_paths_test, max_eval_groups
(0: all), seed, encoder_type, eval_only, load_checkpoint, latent_opt_steps, eval_shuffle_demos (0/1); others are
accepted and ignored; a key given twice is an error, as the real trainer's.
Environment (set by the test, so that a rerun has the same flags):
  FAKE_FAIL=SUBSTR        a run whose checkpoint_path contains SUBSTR prints "error: step 3: ..." and exits 1 at
                          step 3 (before any checkpoint when eval_interval_steps > 3)
  FAKE_KILL=SUBSTR:STEP   ... kills itself with SIGKILL at STEP (after the evaluations of the steps before it)
  FAKE_STEP_SECONDS=S     sleeps S seconds per step
"""
import json
import os
import signal
import sys
import time

# run from the repository root (dev/generalise.py runs a copy of this file from its study folder)
sys.path.insert(0, os.path.join(os.getcwd(), "data"))
sys.path.insert(0, os.path.join(os.getcwd(), "test"))
import arc_format  # noqa: E402
from fake_train_cvae import fail, parse_flags  # noqa: E402


def boolean(flags, key):
    value = flags.get(key, "0")
    if value in ("1", "true", "True"):
        return True
    if value in ("0", "false", "False"):
        return False
    fail(f"{key}={value}: expected 0 or 1 (or true/false)")


def wrong(grid):
    """The grid with its first cell changed: a candidate that is not the truth."""
    g = [list(row) for row in grid]
    g[0][0] = (g[0][0] + 1) % 10
    return g


def evaluate(path, limit, shift):
    """(label, tasks, pass@1, pass@2, predictions {name: [[candidates] per test input]}) of a task file."""
    tasks, _ = arc_format.read_tasks(path)
    tasks = tasks[:limit] if limit > 0 else tasks
    p1 = p2 = 0.0
    predictions = {}
    for i, task in enumerate(tasks):
        inputs = []
        hit1 = hit2 = 0
        for j, (_, truth) in enumerate(task["test"]):
            rank = (i + j + shift) % 3
            grids = [truth, wrong(truth)] if rank == 0 else [wrong(truth), truth] if rank == 1 else [wrong(truth)]
            inputs.append([{"votes": 3 - k, "mean_q": 0.5, "grid": g} for k, g in enumerate(grids)])
            hit1 += rank == 0
            hit2 += rank < 2
        p1 += hit1 / len(task["test"])
        p2 += hit2 / len(task["test"])
        predictions[task["name"]] = inputs
    label = os.path.basename(path)
    label = label[:-4] if label.endswith(".bin") else label
    return label, len(tasks), p1 / len(tasks), p2 / len(tasks), predictions


def main(argv):
    flags = parse_flags(argv)
    cp = flags.get("checkpoint_path") or fail("checkpoint_path is required")
    resume, eval_only = boolean(flags, "resume"), boolean(flags, "eval_only")
    shuffled = boolean(flags, "eval_shuffle_demos")
    if eval_only and not os.path.isfile(flags.get("load_checkpoint", "")):
        fail(f"eval_only=1 needs weights: load_checkpoint={flags.get('load_checkpoint', '')} is not a file")
    max_steps, log_every = int(flags.get("max_steps", 20)), int(flags.get("log_every", 1))
    eval_every = int(flags.get("eval_interval_steps", 0))
    limit, opt_steps = int(flags.get("max_eval_groups", 0)), int(flags.get("latent_opt_steps", 0))
    shift = int(flags.get("seed", 0)) + opt_steps
    encoder = flags.get("encoder_type", "standard") != "none"
    if shuffled and not encoder:
        fail("eval_shuffle_demos=1 needs an encoder (encoder_type=none reads no demonstrations)")
    test_paths = [p for p in flags.get("data_paths_test", "").split(",") if p]
    fail_on = os.environ.get("FAKE_FAIL", "")
    kill = os.environ.get("FAKE_KILL", "")
    kill_on, kill_step = (kill.rsplit(":", 1)[0], int(kill.rsplit(":", 1)[1])) if kill else ("", 0)
    step_seconds = float(os.environ.get("FAKE_STEP_SECONDS", "0"))

    os.makedirs(cp, exist_ok=True)
    with open(os.path.join(cp, "argv.txt"), "a") as f:
        f.write(json.dumps({"exe": sys.argv[0], "argv": argv, "omp": os.environ.get("OMP_NUM_THREADS")}) + "\n")
    log = open(os.path.join(cp, "log.txt"), "a")

    def out(line):
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    def run_eval(step):
        for path in test_paths:
            label, n, p1, p2, predictions = evaluate(path, limit, shift)
            opt = (f" demo_loss_encoder=2.0000 demo_loss_optimised={2 - 0.01 * opt_steps:.4f}" if opt_steps else "")
            gap = 0.0
            if shuffled:
                gap = 0.02 if label == "heldout" else 0.1 + 0.01 * int(flags.get("seed", 0))
                label += "_shuffled_demos"
            out(f"eval step={step} set={label} tasks={n} samples={n} lm_loss={1.5 + 3 * gap:.4f} "
                f"token_acc={0.5 + 0.4 * step / max_steps - gap:.4f} exact_acc={p1:.4f} q_halt_acc=0.7500 "
                f"pass@1={p1:.4f} pass@2={p2:.4f} pass@5={p2:.4f}{opt} seconds={0.1 * n:.1f}")
            with open(os.path.join(cp, f"predictions_step{step:08d}_{label}.json"), "w") as f:
                json.dump({"step": step, "set": label, "tasks": predictions}, f)

    step = 0
    if resume:
        ckpts = sorted(n for n in os.listdir(cp) if n.startswith("ckpt_"))
        if ckpts:
            step = int(ckpts[-1][5:13])
            out(f"resumed from {cp}/{ckpts[-1]} at step {step}")
        else:
            out(f"resume=1: no checkpoint in {cp} yet, starting from step 0")
    out(f"arc.cu train_etrm (fake backend, FP32, 1 process)  model=ETRM {flags.get('encoder_type', 'standard')}")
    out(f"data: 24 training tasks, {len(test_paths)} evaluation sets  steps: {max_steps} (1.0 per epoch)  "
        f"eval every {eval_every} steps")
    if eval_only:
        run_eval(step)
        return 0
    first = step + 1
    for step in range(first, max_steps + 1):
        time.sleep(step_seconds)
        if fail_on and fail_on in cp and step == 3:
            fail("step 3: the loss is nan: the run diverged (try a lower lr or grad_clip_norm=1); the checkpoints "
                 "written so far are kept")
        if kill_on and kill_on in cp and step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if step % log_every == 0 or step == max_steps:
            enc = 0.3 if encoder else 0.0
            out(f"train step={step} loss=1.5 lm_loss=1.5 q_halt_loss=0.001 kl=0.000000 token_acc=0.5000 "
                f"exact_acc=0.0000 q_halt_acc=1.0000 act_steps=2.00 lr=1.000e-03 grad_norm_enc={enc:.4f} "
                f"grad_norm_dec=0.4000 grad_norm=0.5000 encoder_cross_sample_var={0.01 * step if encoder else 0:.4f} "
                f"ms=10.0 samples_per_s=100.0")
        if (eval_every and step % eval_every == 0) or step == max_steps:
            run_eval(step)
            for name in (f"ckpt_{step:08d}.bin", f"model_{step:08d}.safetensors"):
                with open(os.path.join(cp, name), "w") as f:
                    f.write(f"{step}\n")
            out(f"checkpoint step={step} path={cp}/ckpt_{step:08d}.bin")
    if max_steps > first:      # the first step is not timed: a run of one step has no timing line
        out(f"timing steps={max_steps - first} ms_per_step=12.5 steps_per_s=80.000 samples_per_s=400.0 tflops=0.001 "
            f"elapsed=1m05s")
    elif max_steps < first:
        out(f"nothing to do: the run is at step {step} of {max_steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
