#!/usr/bin/env python3
"""`make bench`: every kernel lab, PyTorch's attention beside ours, fixed-length training benchmarks at the ARC
default, and the JEPA step against its PyTorch version, on the GPU of this machine; writes markdown tables and the
raw log to dev/results/.

    python3 dev/bench.py [--steps 30] [--arc-data DIR] [--torch-bench PATH] [--out dev/results] [--skip-train]
                         [--skip-jepa]

What it runs (each run's output goes to the raw log; a run that fails is reported and the rest still runs):
  1. build/lab_*            the dev/cuda kernel labs: CEILING lines (device-to-device copy GB/s, bf16 matmul
                            TFLOP/s, measured in the same run) and RESULT lines (op, version, block, ms, rate, %)
  2. dev/cuda/attention_sdpa.py   torch scaled_dot_product_attention on the labs' shapes (needs torch)
  3. ./train_etrm           ARC-AGI-1 training tasks converted by data/arc.py, the ARC default (global batch 768,
                            30x30 canvas, D=512, H_cycles=3, L_cycles=4): TRM and ETRM (standard encoder), --steps
                            steps each; the trainer's final "timing" line (ms/step, samples/s, TFLOP/s, MFU)
  4. bench_trm.py           the PyTorch reference training step on the same configurations (needs torch and
                            bench/bench_trm.py of the shared folder, or --torch-bench)
  5. ./train_jepa           the JEPA at train_jepa's defaults (batch 1024 = 2 micro-batches of 512, D=384, 3 relational
                            blocks, K=768, P=256, queue 8192, bf16) on the same ARC data, --steps steps with validation,
                            diagnostics and checkpoints off; its "timing" line (ms/step, samples/s, host data pipeline
                            included), beside dev/jepa_torch.py (the same step in PyTorch, needs torch) eager and with
                            torch.compile: the table "JEPA step, micro-batch 512" with arc.cu's speed-up (goal >= 5x)
Steps 3-4 are skipped with --skip-train, step 5 with --skip-jepa. Only the standard library is needed here (the
PyTorch scripts run as subprocesses of the same python).

The shared folder is ../shared beside the checkout or, where that is absent (a GPU machine gets the checkout alone),
its copy shared/ inside the checkout (ignored by git; `make shared-copy` fills it).

This module is also the measurement half of dev/gpu_check.py (`make gpu-check`): a Stage is one command with a
timeout; run_stages runs stages and records each one's outcome (PASS / FAIL / SKIP / NOT RUN, counts, seconds) and
output; measurement_stages builds the runs above; report_tables makes the tables from their outcomes.
"""
import argparse
import concurrent.futures
import datetime
import glob
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- the shared folder ------------------------------------------------------------------------------------------
SHARED_DIRS = (os.path.join(os.pardir, "shared"), "shared")     # relative to the checkout, in this order
ARC1_TRAINING = os.path.join("data", "arc-agi-1", "data", "training")
TORCH_BENCH = os.path.join("bench", "bench_trm.py")


def find_shared(relative, root=ROOT):
    """The first of ../shared/<relative> (beside the checkout) and shared/<relative> (the copy inside it) that
    exists, or None."""
    for folder in SHARED_DIRS:
        path = os.path.normpath(os.path.join(root, folder, relative))
        if os.path.exists(path):
            return path
    return None


# --- running commands -------------------------------------------------------------------------------------------
class Stage:
    """One command, run in the repository root with a timeout (seconds). needs: files (relative to the root) that
    must exist, else it fails without running; skip: why it is not run (reported as SKIP, not a failure); env:
    variables added to the environment. parse=None makes it a test (its PASS / FAIL / SKIP lines are counted; it
    passes with no FAIL line, at least one PASS line and exit status 0); otherwise a measurement, parse(output) returns
    what it measured, or None when the output lacks it (a failure), and the outcome's data holds it."""

    def __init__(self, name, cmd, timeout, needs=(), skip=None, env=None, parse=None):
        self.name, self.cmd, self.timeout, self.needs, self.skip = name, cmd, timeout, needs, skip
        self.env, self.parse = env or {}, parse


class Outcome:
    """What a Stage did: status PASS, FAIL, SKIP or NOT RUN; counts of PASS / FAIL / SKIP lines (tests) or of
    measured rows; seconds; a one-line note; data (parse's result)."""

    def __init__(self, status, note="", seconds=0.0, passed=0, failed=0, skipped=0, data=None):
        self.status, self.note, self.seconds, self.data = status, note, seconds, data
        self.passed, self.failed, self.skipped = passed, failed, skipped


# Fewer seconds than this left in the budget: a stage is not started.
MIN_STAGE_SECONDS = 5


def execute(cmd, timeout, env=None, cwd=ROOT):
    """Runs cmd (a list) in its own process group, stdout and stderr together; returns (output, exit status or None
    when it timed out and its whole group was killed, seconds). A command that cannot start gives status 127."""
    start = time.time()
    try:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
    except OSError as e:
        return f"{cmd[0]}: {e.strerror}\n", 127, time.time() - start
    try:
        out, _ = p.communicate(timeout=max(timeout, 0))
        status = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)           # the trainers a test started too
        out, _ = p.communicate()
        status = None
    return out.decode(errors="replace"), status, time.time() - start


def counts(output):
    """(PASS, FAIL, SKIP) line counts of a test's output."""
    lines = output.splitlines()
    return tuple(sum(line.startswith(kind + " ") for line in lines) for kind in ("PASS", "FAIL", "SKIP"))


def first_line(output, prefix):
    """The first line of output starting with prefix, or ''."""
    return next((line for line in output.splitlines() if line.startswith(prefix)), "")


def last_words(output, n=200):
    """The output's last non-empty line, at most n characters."""
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1][-n:] if lines else "no output"


def judge(stage, output, status, seconds):
    """The Outcome of a stage that ran: its output and exit status (None: timed out)."""
    timed_out = f"timed out after {seconds:.0f} s; " if status is None else ""
    if stage.parse is None:
        passed, failed, skipped = counts(output)
        tally = dict(seconds=seconds, passed=passed, failed=failed, skipped=skipped)
        if status == 0 and failed == 0 and passed > 0:
            return Outcome("PASS", f"{skipped} skipped" if skipped else "", **tally)
        why = first_line(output, "FAIL ") or first_line(output, "SKIP ") or last_words(output)
        if status not in (0, None) and failed == 0:
            why = f"exit status {status}: {why}"
        tally["failed"] = max(failed, 1)            # a crash, a timeout or no PASS at all counts as one failure
        return Outcome("FAIL", timed_out + why[:240], **tally)
    try:
        data = stage.parse(output) if status == 0 else None
    except (ValueError, KeyError) as e:             # a malformed line
        data, output = None, output + f"\n{type(e).__name__} reading the output: {e}\n"
    if data is not None:
        return Outcome("PASS", seconds=seconds, passed=len(data) if isinstance(data, list) else 1, data=data)
    skip = first_line(output, "SKIP ")
    if status == 0 and skip:
        return Outcome("SKIP", skip[5:], seconds=seconds, skipped=1)
    why = first_line(output, "FAIL ") or last_words(output)
    if status not in (0, None):
        why = f"exit status {status}: {why}"
    return Outcome("FAIL", timed_out + why[:240], seconds=seconds, failed=1)


def run_stage(stage, deadline=None):
    """Runs one stage unless it is skipped, lacks a file it needs, or the deadline (time.time() value) leaves it
    fewer than MIN_STAGE_SECONDS; its timeout is cut to the deadline. Returns (Outcome, text for the log)."""
    if stage.skip:
        return Outcome("SKIP", stage.skip), f"skipped: {stage.skip}\n"
    missing = [n for n in stage.needs if not os.path.exists(os.path.join(ROOT, n))]
    if missing:
        note = f"{', '.join(missing)} missing (not built, or an earlier stage failed)"
        return Outcome("FAIL", note, failed=1), note + "\n"
    timeout = stage.timeout if deadline is None else min(stage.timeout, deadline - time.time())
    if deadline is not None and timeout < min(stage.timeout, MIN_STAGE_SECONDS):
        return Outcome("NOT RUN", "the time budget was spent"), "not run: the time budget was spent\n"
    output, status, seconds = execute(stage.cmd, timeout, dict(os.environ, **stage.env))
    end = f"[exit status {status}, {seconds:.1f} s]" if status is not None else f"[timed out after {timeout:.0f} s]"
    return judge(stage, output, status, seconds), output + end + "\n"


def run_stages(stages, log, deadline=None, parallel=1):
    """Runs stages, `parallel` at a time in order, each under the deadline; writes each one's command and output to
    the log (a file) as one block when it ends and prints one line; returns {name: Outcome} in the stages' order."""
    lock = threading.Lock()

    def one(stage):
        outcome, text = run_stage(stage, deadline)
        with lock:
            log.write(f"\n===== {stage.name}: {outcome.status} {outcome.note}\n$ {' '.join(stage.cmd)}\n{text}")
            log.flush()
            print(f"[{outcome.status}] {stage.name} ({outcome.seconds:.0f} s){': ' + outcome.note if outcome.note else ''}",
                  flush=True)
        return outcome

    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        outcomes = list(pool.map(one, stages))
    return {stage.name: outcome for stage, outcome in zip(stages, outcomes)}


# --- what the runs print ----------------------------------------------------------------------------------------
def fields(line):
    """key=value fields of a RESULT/CEILING/timing line (values with spaces are quoted)."""
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', line)}


def lab_lines(output):
    """The CEILING and RESULT lines of a lab or of attention_sdpa.py, as field dicts; None when there is no RESULT."""
    rows = [fields(line) for line in output.splitlines() if line.startswith(("CEILING ", "RESULT "))]
    return rows if any("op" in r for r in rows) else None


def trainer_timing(output):
    """A train_etrm / train_jepa run: its final timing line's fields, with micro_batch (train_etrm), memory_gib
    (device memory in use after the first step, train_etrm), backend precision and parameters when printed; None
    without a timing line."""
    timing = [fields(line) for line in output.splitlines() if line.startswith("timing ")]
    if not timing:
        return None
    row = dict(timing[-1])
    for key, pattern in (("micro_batch", r"micro-batch (\d+) of"), ("precision", r"backend on [^,]*, (\w+),"),
                         ("memory_gib", r"memory: ([\d.]+) GiB in use on the device after the first step"),
                         ("params", r"^parameters: (\d+)")):
        match = re.search(pattern, output, re.M)
        if match:
            row[key] = match.group(1)
    return row


def torch_trm_result(output):
    """bench_trm.py's JSON line, or None."""
    lines = [line for line in output.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def torch_jepa_result(output):
    """dev/jepa_torch.py's final torch_jepa line's fields, or None."""
    lines = [fields(line) for line in output.splitlines() if line.startswith("torch_jepa ")]
    return lines[-1] if lines else None


# --- the runs ---------------------------------------------------------------------------------------------------
ARC_DATA = os.path.join("build", "bench_arc1_train.bin")     # ARC-AGI-1's training tasks as a data/arc.py file


def train_args(encoder, steps, data):
    return ["./train_etrm", f"data_paths={data}", f"encoder_type={encoder}", "global_batch_size=768",
            "hidden_size=512", "num_heads=8", "H_cycles=3", "L_cycles=4", "L_layers=2", "halt_max_steps=16",
            f"max_steps={steps}", "eval_interval=0", "log_every=5", f"checkpoint_path=build/bench_{encoder}",
            "checkpoint_every=0"]


# train_jepa's default model and batch, and the dev/jepa_torch.py flag of each dimension.
JEPA_DEFAULTS = {"hidden_dim": 384, "relational_layers": 3, "relational_heads": 8, "num_embeddings": 768,
                 "projection_dim": 256, "queue_size": 8192, "batch_size": 1024, "grad_accum_steps": 2}
JEPA_TORCH_FLAGS = {"hidden_dim": "--hidden", "relational_layers": "--layers", "relational_heads": "--heads",
                    "num_embeddings": "--codes", "projection_dim": "--proj", "queue_size": "--queue"}


def jepa_args(trainer, steps, data, dims):
    """train_jepa at `dims` for `steps` steps and nothing else: no validation split, early stopping, diagnostics or
    checkpoints (ARC-AGI-1's training pairs fill one batch of 1024, so every step ends an epoch)."""
    return ([trainer, f"data_path={data}"] + [f"{k}={v}" for k, v in dims.items()] +
            [f"max_steps={steps}", "epochs=100000", "val_fraction=0", "early_stop_patience=0", "diag_every=0",
             "log_every=5"])


def torch_jepa_args(steps, dims, compile):
    """dev/jepa_torch.py at the same dimensions on the GPU: 5 untimed steps, then `steps` timed ones."""
    cmd = [sys.executable, "dev/jepa_torch.py", "--device", "cuda", "--micro-batch",
           str(dims["batch_size"] // dims["grad_accum_steps"]), "--grad-accum", str(dims["grad_accum_steps"]),
           "--steps", str(steps), "--warmup", "5"]
    for key, flag in JEPA_TORCH_FLAGS.items():
        cmd += [flag, str(dims[key])]
    return cmd + (["--compile"] if compile else [])


def torch_trm_args(torch_bench, encoder, iters, warmup):
    """bench_trm.py at the ARC default (batch 768) on the GPU: `warmup` untimed steps, then `iters` timed ones."""
    return [sys.executable, torch_bench, "--device", "cuda", "--encoder", encoder, "--batch", "768", "--iters",
            str(iters), "--warmup", str(warmup)]


# train_cvae's benchmark: LoRA (r = 16 on every projection) on a Qwen2.5-0.5B-shaped model with random weights, at
# micro-batch 8 of sequences padded to 512 tokens (the strategy-sequence data; the character tokenizer, whose ids
# fit Qwen's vocabulary of 151936), with the CVAE's two adapters on the base (one trained), beside dev/cvae_torch.py
# bench at the same shape.
STRATEGIES_DATA = os.path.join("build", "bench_strategies")
CVAE_SHAPE = {"batch": 8, "seq": 512, "lora_r": 16}


def cvae_args(steps):
    return ["./train_cvae", f"data_dir={STRATEGIES_DATA}", "model=qwen2.5-0.5b", f"lora_r={CVAE_SHAPE['lora_r']}",
            f"lora_alpha={2 * CVAE_SHAPE['lora_r']}", f"batch_size={CVAE_SHAPE['batch']}", f"max_seq_len={CVAE_SHAPE['seq']}",
            "pad_to_max=1", f"max_steps={steps}", "log_every=5", "val_examples=1", "gen_examples=1", "gen_max_tokens=16",
            "save_hf=0", "checkpoint_keep=1", "checkpoint_path=build/bench_cvae", "lora_adapters=generator,posterior"]


def torch_cvae_args(steps):
    return [sys.executable, "dev/cvae_torch.py", "bench", "--preset", "qwen2.5-0.5b", "--batch", str(CVAE_SHAPE["batch"]),
            "--seq", str(CVAE_SHAPE["seq"]), "--lora-r", str(CVAE_SHAPE["lora_r"]), "--steps", str(steps)]


def torch_cvae_result(output):
    """dev/cvae_torch.py bench's bench_torch line's fields, or None."""
    lines = [fields(line) for line in output.splitlines() if line.startswith("bench_torch ")]
    return lines[-1] if lines else None


ENCODERS = (("TRM", "none"), ("ETRM", "standard"))    # (model, encoder_type) of the training runs
TORCH_MISSING = "torch is not installed for this python"


def measurement_stages(steps, arc_dir, torch_bench, labs, train=True, jepa=True, compile=True, torch_steps=None,
                       timeouts=None, cvae=True):
    """The measurement stages: the labs (paths relative to the root), torch SDPA, the ARC-AGI-1 conversion (from
    arc_dir, None when not found), TRM / ETRM at the ARC default for `steps` steps each, each followed by bench_trm.py
    (torch_bench, None when not found), the JEPA step and dev/jepa_torch.py (eager, and compiled with compile); the
    PyTorch runs time torch_steps steps (default: steps) after their warm-up steps.
    timeouts: seconds per kind ("lab", "sdpa", "convert", "TRM", "ETRM", "JEPA", "torch TRM", "torch ETRM",
    "torch JEPA", "torch JEPA compile", "CVAE", "torch CVAE"); 1800 each by default. With cvae, train_cvae's LoRA step
    on the Qwen2.5-0.5B shape and dev/cvae_torch.py's."""
    limit = lambda kind: (timeouts or {}).get(kind, 1800)
    torch_steps = torch_steps or steps
    no_torch = None if importlib.util.find_spec("torch") else TORCH_MISSING
    stages = [Stage(os.path.basename(lab), [f"./{lab}"], limit("lab"), needs=[lab], parse=lab_lines) for lab in labs]
    stages.append(Stage("attention_sdpa.py", [sys.executable, "dev/cuda/attention_sdpa.py"], limit("sdpa"),
                        skip=no_torch, parse=lab_lines))
    if train or jepa:
        stages.append(Stage("ARC-AGI-1 data", [sys.executable, "data/arc.py", ARC_DATA, arc_dir or ""],
                            limit("convert"), parse=lambda out: {} if os.path.exists(os.path.join(ROOT, ARC_DATA)) else None,
                            skip=None if arc_dir else f"{ARC1_TRAINING} not found in ../shared or shared/"))
    for model, encoder in ENCODERS if train else ():
        stages.append(Stage(f"{model} train_etrm", train_args(encoder, steps, ARC_DATA), limit(model),
                            needs=["train_etrm", ARC_DATA], parse=trainer_timing))
        stages.append(Stage(f"{model} bench_trm.py", torch_trm_args(torch_bench or "", encoder, torch_steps, 3),
                            limit(f"torch {model}"), parse=torch_trm_result,
                            skip=no_torch or (None if torch_bench else f"{TORCH_BENCH} not found in ../shared or shared/")))
    if jepa:
        stages.append(Stage("JEPA train_jepa", jepa_args("./train_jepa", steps, ARC_DATA, JEPA_DEFAULTS), limit("JEPA"),
                            needs=["train_jepa", ARC_DATA], parse=trainer_timing))
        for compiled in (False, True) if compile else (False,):
            kind = "torch JEPA compile" if compiled else "torch JEPA"
            stages.append(Stage(f"JEPA jepa_torch.py{' --compile' if compiled else ''}",
                                torch_jepa_args(torch_steps, JEPA_DEFAULTS, compiled), limit(kind), skip=no_torch,
                                parse=torch_jepa_result))
    if cvae:
        stages.append(Stage("strategies data", [sys.executable, "data/strategies.py", STRATEGIES_DATA, "--n-train", "200",
                                                "--n-val", "20", "--n-test", "20"], limit("convert"), parse=lambda out: {}))
        stages.append(Stage("CVAE train_cvae", cvae_args(steps), limit("CVAE"), needs=["train_cvae"], parse=trainer_timing))
        stages.append(Stage("CVAE cvae_torch.py", torch_cvae_args(torch_steps), limit("torch CVAE"), skip=no_torch,
                            parse=torch_cvae_result))
    return stages


# --- the tables -------------------------------------------------------------------------------------------------
def data_of(outcomes, name):
    """The data of the stage `name` if it ran and passed, else None."""
    outcome = outcomes.get(name)
    return outcome.data if outcome is not None and outcome.status == "PASS" else None


def labs_table(results):
    """The kernel labs' best block size of every (op, version)."""
    md = ["## Kernel labs (median of 20+, L2 flushed)", "",
          "| op | version | block | ms | GB/s | TFLOP/s | % of ceiling |", "|---|---|---|---|---|---|---|"]
    best = {}
    for r in results:
        key = (r["op"], r["version"])
        if key not in best or float(r["ms"]) < float(best[key]["ms"]):
            best[key] = r
    for (op, version), r in sorted(best.items()):
        md.append(f"| {op} | {version} | {r['block']} | {float(r['ms']):.4f} | {float(r['gbps']):.0f} | "
                  f"{float(r['tflops']):.1f} | {r['pct']}% of {r.get('of', '')} |")
    return md + [""]


def attention_table(results):
    """Forward + backward: our best versions against torch SDPA's forward + backward, per shape measured by both."""
    md = ["## Attention forward + backward against PyTorch (same shapes, same device, same run)", "",
          "| shape | arc.cu forward + backward ms (best versions) | torch SDPA forward + backward ms | ratio |",
          "|---|---|---|---|"]
    for suffix, label in (("", "self, B=64 T=916 NH=8 HD=64"), ("_cross", "cross, B=768 Tq=16 Tk=10 (masked)"),
                          ("_causal_gqa", "causal GQA, B=8 T=1024 NH=14 NKV=2 HD=64")):
        ours = [min((float(r["ms"]) for r in results if r["op"] == f"attention_{d}{suffix}" and
                     r["version"] != "torch_sdpa"), default=None) for d in ("forward", "backward")]
        torch_ms = [float(r["ms"]) for r in results if r["op"] == f"attention_forward_backward{suffix}"]
        total = f"{sum(ours):.3f}" if None not in ours else "not measured"
        theirs = f"{torch_ms[0]:.3f}" if torch_ms else "not measured"
        ratio = f"{torch_ms[0] / sum(ours):.2f}x" if None not in ours and torch_ms else "n/a"
        md.append(f"| {label} | {total} | {theirs} | {ratio} |")
    return md + [""]


def training_table(outcomes, ceilings):
    """TRM and ETRM at the ARC default, each beside bench_trm.py's steps/s when measured."""
    md = ["## Training at the ARC default (global batch 768, 30x30 canvas, D=512, H=3, L=4, bf16)", "",
          "| model | micro-batch | device memory GiB | ms/step | steps/s | samples/s | TFLOP/s | MFU (peak table) | "
          "MFU (measured matmul ceiling) | PyTorch steps/s | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, encoder in ENCODERS:
        if f"{model} train_etrm" not in outcomes:
            continue
        label = "TRM" if encoder == "none" else f"ETRM {encoder}"
        r = data_of(outcomes, f"{model} train_etrm")
        if r is None:
            md.append(f"| {label} | failed or not run: see the stages and the log |||||||||")
            continue
        tflops = float(r["tflops"])
        of_ceiling = f"{100 * tflops / float(ceilings['bf16_matmul_tflops']):.1f}%" if ceilings else "?"
        torch_rate = (data_of(outcomes, f"{model} bench_trm.py") or {}).get("steps_per_s")
        speedup = f"{float(r['steps_per_s']) / torch_rate:.2f}x" if torch_rate else "n/a"
        md.append(f"| {label} | {r.get('micro_batch', '?')} | {r.get('memory_gib', '?')} | {r['ms_per_step']} | "
                  f"{r['steps_per_s']} | {r['samples_per_s']} | {tflops:.1f} | {r.get('mfu', '?')}% | {of_ceiling} | "
                  f"{torch_rate if torch_rate else 'n/a'} | {speedup} |")
    return md + [""]


def jepa_table(outcomes, dims):
    """The JEPA step: arc.cu's speed-up over each PyTorch run, in samples/s."""
    micro = dims["batch_size"] // dims["grad_accum_steps"]
    md = [f"## JEPA step, micro-batch {micro}", "",
          f"train_jepa's default model (D={dims['hidden_dim']}, {dims['relational_layers']} relational blocks of "
          f"{dims['relational_heads']} heads, K={dims['num_embeddings']} codes, P={dims['projection_dim']}, queue "
          f"{dims['queue_size']}), batch {dims['batch_size']} = {dims['grad_accum_steps']} micro-batches of {micro}; "
          "the issue's goal is a speed-up >= 5x. PyTorch is dev/jepa_torch.py, the same step, on inputs made once on "
          "the device (data loading not timed); train_jepa's samples/s includes its host data pipeline.", "",
          "TFLOP/s counts train_jepa's model FLOPs of a step (its `timing` line) over each run's time per step; MFU is "
          "against the trainer's dense peak for the precision.", "",
          "| implementation | parameters | ms/step | samples/s | TFLOP/s | arc.cu speed-up |", "|---|---|---|---|---|---|"]
    ours = data_of(outcomes, "JEPA train_jepa")
    step_tflop = float(ours["tflops"]) * float(ours["ms_per_step"]) / 1e3 if ours and "tflops" in ours else None
    for name in [n for n in outcomes if n.startswith("JEPA ")]:
        r = data_of(outcomes, name)
        if name == "JEPA train_jepa":
            label = f"arc.cu train_jepa ({(r or {}).get('precision', '?')})"
        else:
            compiled = name.endswith("--compile")
            label = "PyTorch torch.compile" if compiled else "PyTorch eager"
            label += f" ({r['dtype']} autocast)" if r and r.get("dtype") == "bf16" else ""
        if r is None or "samples_per_s" not in r:
            md.append(f"| {label} | failed or not run: see the stages and the log |||||")
            continue
        rate = f"{step_tflop / (float(r['ms_per_step']) / 1e3):.1f}" if step_tflop else "?"
        if r is ours and "mfu" in r:
            rate += f" (MFU {r['mfu']}%)"
        speedup = "-" if r is ours else f"{float(ours['samples_per_s']) / float(r['samples_per_s']):.2f}x" \
            if ours else "n/a"
        md.append(f"| {label} | {r.get('params', '?')} | {r['ms_per_step']} | {r['samples_per_s']} | {rate} | {speedup} |")
    return md + [""]


def cvae_table(outcomes):
    """train_cvae's LoRA step on the Qwen2.5-0.5B shape beside dev/cvae_torch.py's: ms/step, tokens/s, memory, speed-up
    (the issue's goals: >= 2x PyTorch, >= 40% MFU)."""
    shape = f"micro-batch {CVAE_SHAPE['batch']} x {CVAE_SHAPE['seq']} tokens, LoRA r={CVAE_SHAPE['lora_r']} on all 7 projections"
    md = [f"## Qwen2.5-0.5B LoRA step ({shape})", "",
          "Random weights of the published shape; the goals are >= 40% MFU and >= 2x the PyTorch step. tokens/s counts "
          "every position of the padded batch for both. MFU is train_cvae's FLOP count (its `timing` line) over the dense "
          "peak for the precision.", "",
          "| implementation | ms/step | tokens/s | MFU | memory GiB | arc.cu speed-up |", "|---|---|---|---|---|---|"]
    ours, theirs = data_of(outcomes, "CVAE train_cvae"), data_of(outcomes, "CVAE cvae_torch.py")
    tokens = CVAE_SHAPE["batch"] * CVAE_SHAPE["seq"]
    for label, r in (("arc.cu train_cvae", ours), ("PyTorch (dev/cvae_torch.py)", theirs)):
        if r is None or "ms_per_step" not in r:
            md.append(f"| {label} | failed or not run: see the stages and the log |||||")
            continue
        ms = float(r["ms_per_step"])
        speedup = "-" if r is ours else (f"{ms / float(ours['ms_per_step']):.2f}x" if ours and "ms_per_step" in ours else "n/a")
        memory = r.get("memory_gib", r.get("peak_mem_gb", "?"))
        md.append(f"| {label} | {ms:.1f} | {tokens / ms * 1e3:.0f} | {r.get('mfu', '-')} | {memory} | {speedup} |")
    return md + [""]


def report_tables(outcomes):
    """The markdown of the measurement stages' outcomes: ceilings, labs, attention against torch, training, JEPA."""
    rows = [row for name, o in outcomes.items() if name.startswith("lab_") or name == "attention_sdpa.py"
            for row in data_of(outcomes, name) or []]
    ceilings = next((r for r in rows if "copy_gbps" in r), None)
    results = [r for r in rows if "op" in r]
    md = []
    if ceilings:
        md += [f"Measured ceilings (same run): device-to-device copy **{float(ceilings['copy_gbps']):.0f} GB/s**, "
               f"bf16 matmul (cuBLASLt, 8192^3) **{float(ceilings['bf16_matmul_tflops']):.0f} TFLOP/s**.", ""]
    if results:
        md += labs_table(results) + attention_table(results)
    if any(name.endswith(" train_etrm") for name in outcomes):
        md += training_table(outcomes, ceilings)
    if "JEPA train_jepa" in outcomes:
        md += jepa_table(outcomes, JEPA_DEFAULTS)
    if "CVAE train_cvae" in outcomes:
        md += cvae_table(outcomes)
    return md


# --- the report -------------------------------------------------------------------------------------------------
def describe():
    """(GPU name or None, its compute capability as "90" or None, commit with "+uncommitted" when the tracked files
    differ from it, today's date)."""
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=60).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        query = []
    name, _, cc = query[0].rpartition(", ") if query else (None, "", None)
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    commit = (git("rev-parse", "--short", "HEAD") or "unknown") + \
        ("+uncommitted" if git("status", "--porcelain", "--untracked-files=no") else "")
    return name or None, cc.replace(".", "") if cc else None, commit, datetime.date.today().isoformat()


def stem(out, prefix, device, date):
    """out/<prefix>_<device>_<date>, the device's name reduced to letters, digits and underscores."""
    return os.path.join(out, f"{prefix}_{re.sub(r'[^A-Za-z0-9]+', '_', device).strip('_')}_{date}")


def stages_table(outcomes):
    """One row per stage: result, counts, seconds, note."""
    md = ["| stage | result | passed | failed | skipped | seconds | note |", "|---|---|---|---|---|---|---|"]
    for name, o in outcomes.items():
        note = o.note.replace("|", "\\|")
        md.append(f"| {name} | {o.status} | {o.passed} | {o.failed} | {o.skipped} | {o.seconds:.1f} | {note} |")
    return md + [""]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps per benchmark run (the trainers time all "
                    "but the first; dev/jepa_torch.py times these after 5 more)")
    ap.add_argument("--arc-data", default=find_shared(ARC1_TRAINING), help="ARC-AGI-1's training JSON files "
                    "(default: the shared folder's)")
    ap.add_argument("--torch-bench", default=find_shared(TORCH_BENCH), help="bench_trm.py (default: the shared "
                    "folder's)")
    ap.add_argument("--out", default=os.path.join(ROOT, "dev", "results"))
    ap.add_argument("--skip-train", action="store_true", help="no TRM / ETRM training runs")
    ap.add_argument("--skip-jepa", action="store_true", help="no JEPA step comparison")
    args = ap.parse_args()

    device, _, commit, date = describe()
    if not device:
        sys.exit("dev/bench.py: no GPU (nvidia-smi lists none); the benchmark needs one")
    labs = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "build", "lab_*")))
    os.makedirs(args.out, exist_ok=True)
    path = stem(args.out, "bench", device, date)
    with open(path + ".log", "w") as log:
        log.write(f"arc.cu bench: device {device}, date {date}, commit {commit}\n")
        outcomes = run_stages(measurement_stages(args.steps, args.arc_data, args.torch_bench, labs,
                                                 train=not args.skip_train, jepa=not args.skip_jepa), log)
    md = [f"# arc.cu benchmark: {device}", "", f"Date {date}, commit `{commit}`, `make bench` (dev/bench.py); raw log: "
          f"`{os.path.basename(path)}.log`.", "", "## Runs", ""] + stages_table(outcomes) + report_tables(outcomes)
    with open(path + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"bench: wrote {path}.md and {path}.log")


if __name__ == "__main__":
    main()
