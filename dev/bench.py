#!/usr/bin/env python3
"""`make bench`: every kernel lab, PyTorch's attention beside ours, fixed-length training benchmarks at the ARC
default, and the JEPA step against its PyTorch version, on the GPU of this machine; writes markdown tables and the
raw log to dev/results/.

    python3 dev/bench.py [--steps 30] [--arc-data DIR] [--torch-bench PATH] [--out dev/results] [--skip-train]
                         [--skip-jepa]

What it runs (each step's output goes to the raw log; a step that fails is reported and the rest still runs):
  1. build/lab_*            the dev/cuda kernel labs: CEILING lines (device-to-device copy GB/s, bf16 matmul
                            TFLOP/s, measured in the same run) and RESULT lines (op, version, block, ms, rate, %)
  2. dev/cuda/attention_sdpa.py   torch scaled_dot_product_attention on the labs' shapes (needs torch)
  3. ./train_etrm           ARC-AGI-1 training tasks converted by data/arc.py, the ARC default (global batch 768,
                            30x30 canvas, D=512, H_cycles=3, L_cycles=4): TRM and ETRM (standard encoder), --steps
                            steps each; the trainer's final "timing" line (ms/step, samples/s, TFLOP/s, MFU)
  4. bench_trm.py           the PyTorch reference training step on the same configurations (needs torch and
                            ../shared/bench/bench_trm.py, or --torch-bench)
  5. ./train_jepa           the JEPA at train_jepa's defaults (batch 1024 = 2 micro-batches of 512, D=384, 3 relational
                            blocks, K=768, P=256, queue 8192, bf16) on the same ARC data, --steps steps with validation,
                            diagnostics and checkpoints off; its "timing" line (ms/step, samples/s, host data pipeline
                            included), beside dev/jepa_torch.py (the same step in PyTorch, needs torch) eager and with
                            torch.compile: the table "JEPA step, micro-batch 512" with arc.cu's speed-up (goal >= 5x)
Steps 3-4 are skipped with --skip-train, step 5 with --skip-jepa. Only the standard library is needed here (the
PyTorch scripts run as subprocesses of the same python).
"""
import argparse
import datetime
import glob
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, log, timeout):
    """Runs cmd (a list), appends its output to the log; returns the output ('' on failure, which is logged)."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        out = p.stdout + p.stderr
        log.write(out)
        if p.returncode != 0:
            log.write(f"[exit status {p.returncode}]\n")
            print(f"bench: {' '.join(cmd[:2])} failed with status {p.returncode}: {out.strip()[-300:]}", flush=True)
            return ""
        return out
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        log.write(out + f"\n[timed out after {timeout} s]\n")
        print(f"bench: {' '.join(cmd[:2])} timed out after {timeout} s", flush=True)
        return ""
    finally:
        log.flush()


def fields(line):
    """key=value fields of a RESULT/CEILING/timing line (values with spaces are quoted)."""
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', line)}


def train_args(encoder, steps, data):
    return ["./train_etrm", f"data_paths={data}", f"encoder_type={encoder}", "global_batch_size=768",
            "hidden_size=512", "num_heads=8", "H_cycles=3", "L_cycles=4", "L_layers=2", "halt_max_steps=16",
            f"max_steps={steps}", "eval_interval=0", "log_every=5", f"checkpoint_path=build/bench_{encoder}",
            "checkpoint_every=0"]


def arc_training_data(arc_dir, log):
    """ARC-AGI-1's training tasks as a data/arc.py file (converted once), for train_etrm and train_jepa."""
    data = "build/bench_arc1_train.bin"
    if not os.path.exists(os.path.join(ROOT, data)):
        run([sys.executable, "data/arc.py", data, arc_dir], log, 600)
    return data


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
    """dev/jepa_torch.py at the same dimensions: 5 untimed steps, then `steps` timed ones."""
    cmd = [sys.executable, "dev/jepa_torch.py", "--micro-batch", str(dims["batch_size"] // dims["grad_accum_steps"]),
           "--grad-accum", str(dims["grad_accum_steps"]), "--steps", str(steps), "--warmup", "5"]
    for key, flag in JEPA_TORCH_FLAGS.items():
        cmd += [flag, str(dims[key])]
    return cmd + (["--compile"] if compile else [])


def bench_jepa(steps, data, log, trainer="./train_jepa", dims=JEPA_DEFAULTS):
    """Times the JEPA step: the trainer, then dev/jepa_torch.py eager and compiled. Returns one row per run (name,
    parameters, and the ms_per_step / samples_per_s of its final line, absent when the run failed)."""
    print(f"bench: {trainer} batch_size={dims['batch_size']} grad_accum_steps={dims['grad_accum_steps']}", flush=True)
    out = run(jepa_args(trainer, steps, data, dims), log, 1800)
    backend = re.search(r"backend on [^,]*, (\w+),", out)
    params = re.search(r"^parameters: (\d+)", out, re.M)
    ours = {"name": f"arc.cu {os.path.basename(trainer)} ({backend.group(1) if backend else '?'})",
            "params": params.group(1) if params else "?"}
    timing = [fields(l) for l in out.splitlines() if l.startswith("timing ")]
    if timing:
        ours.update(timing[-1])
    rows = [ours]
    for compile in (False, True):
        name = "PyTorch torch.compile" if compile else "PyTorch eager"
        print(f"bench: dev/jepa_torch.py{' --compile' if compile else ''}", flush=True)
        out = run(torch_jepa_args(steps, dims, compile), log, 1800)
        final = [fields(l) for l in out.splitlines() if l.startswith("torch_jepa ")]
        row = {"name": name, "params": "?"}
        if final:
            row.update(final[-1])
            row["name"] = f"{name} ({final[-1]['dtype']} autocast)" if final[-1]["dtype"] == "bf16" else name
        rows.append(row)
    return rows


def jepa_table(rows, dims):
    """The markdown of bench_jepa's rows: arc.cu's speed-up over each PyTorch run, in samples/s."""
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
    ours = rows[0]
    step_tflop = float(ours["tflops"]) * float(ours["ms_per_step"]) / 1e3 if "tflops" in ours else None
    for r in rows:
        if "samples_per_s" not in r:
            md.append(f"| {r['name']} | failed: see the log |||||")
            continue
        rate = f"{step_tflop / (float(r['ms_per_step']) / 1e3):.1f}" if step_tflop else "?"
        if r is ours and "mfu" in r:
            rate += f" (MFU {r['mfu']}%)"
        speedup = "-" if r is ours else f"{float(ours['samples_per_s']) / float(r['samples_per_s']):.2f}x" \
            if "samples_per_s" in ours else "n/a"
        md.append(f"| {r['name']} | {r['params']} | {r['ms_per_step']} | {r['samples_per_s']} | {rate} | {speedup} |")
    md.append("")
    return md


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps per benchmark run (the trainers time all "
                    "but the first; dev/jepa_torch.py times these after 5 more)")
    ap.add_argument("--arc-data", default=os.path.join(ROOT, "..", "shared", "data", "arc-agi-1", "data", "training"))
    ap.add_argument("--torch-bench", default=os.path.join(ROOT, "..", "shared", "bench", "bench_trm.py"))
    ap.add_argument("--out", default=os.path.join(ROOT, "dev", "results"))
    ap.add_argument("--skip-train", action="store_true", help="no TRM / ETRM training runs")
    ap.add_argument("--skip-jepa", action="store_true", help="no JEPA step comparison")
    args = ap.parse_args()

    device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                            text=True).stdout.strip().splitlines()
    if not device:
        sys.exit("dev/bench.py: no GPU (nvidia-smi lists none); the benchmark needs one")
    device = device[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    commit += "+uncommitted" if dirty else ""
    date = datetime.date.today().isoformat()
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"bench_{re.sub(r'[^A-Za-z0-9]+', '_', device)}_{date}")
    log = open(stem + ".log", "w")
    log.write(f"arc.cu bench: device {device}, date {date}, commit {commit}\n")

    ceilings, results = {}, []
    for lab in sorted(glob.glob(os.path.join(ROOT, "build", "lab_*"))):
        print(f"bench: {os.path.basename(lab)}", flush=True)
        for line in run([lab], log, 600).splitlines():
            if line.startswith("CEILING"):
                ceilings = fields(line)
            elif line.startswith("RESULT"):
                results.append(fields(line))
    print("bench: torch scaled_dot_product_attention", flush=True)
    for line in run([sys.executable, "dev/cuda/attention_sdpa.py"], log, 600).splitlines():
        if line.startswith("RESULT"):
            results.append(fields(line))

    training = []
    if not args.skip_train:
        data = arc_training_data(args.arc_data, log)
        for enc in ("none", "standard"):
            print(f"bench: train_etrm encoder_type={enc}", flush=True)
            out = run(train_args(enc, args.steps, data), log, 1800)
            t = [fields(l) for l in out.splitlines() if l.startswith("timing ")]
            mb = re.search(r"micro-batch (\d+) of (\d+)", out)
            mem = re.search(r"memory: ([\d.]+) GiB in use on the device after the first step", out)
            row = {"encoder": enc, "micro_batch": mb.group(1) if mb else "?", "memory_gib": mem.group(1) if mem else "?"}
            if t:
                row.update(t[-1])
            if os.path.exists(args.torch_bench):
                print(f"bench: PyTorch bench_trm.py --encoder {enc}", flush=True)
                tout = run([sys.executable, args.torch_bench, "--encoder", enc, "--batch", "768",
                            "--iters", "10"], log, 1800)
                js = [l for l in tout.splitlines() if l.startswith("{")]
                if js:
                    row["torch"] = json.loads(js[-1])
            training.append(row)
    jepa = [] if args.skip_jepa else bench_jepa(args.steps, arc_training_data(args.arc_data, log), log)
    log.close()

    md = [f"# arc.cu benchmark: {device}", "", f"Date {date}, commit `{commit}`, `make bench` (dev/bench.py); raw log: "
          f"`{os.path.basename(stem)}.log`.", ""]
    if ceilings:
        md += [f"Measured ceilings (same run): device-to-device copy **{float(ceilings['copy_gbps']):.0f} GB/s**, "
               f"bf16 matmul (cuBLASLt, 8192^3) **{float(ceilings['bf16_matmul_tflops']):.0f} TFLOP/s**.", ""]
    if results:
        md += ["## Kernel labs (median of 20+, L2 flushed)", "",
               "| op | version | block | ms | GB/s | TFLOP/s | % of ceiling |", "|---|---|---|---|---|---|---|"]
        best = {}
        for r in results:                           # the best block size of every (op, version)
            key = (r["op"], r["version"])
            if key not in best or float(r["ms"]) < float(best[key]["ms"]):
                best[key] = r
        for (op, version), r in sorted(best.items()):
            md.append(f"| {op} | {version} | {r['block']} | {float(r['ms']):.4f} | {float(r['gbps']):.0f} | "
                      f"{float(r['tflops']):.1f} | {r['pct']}% of {r.get('of', '')} |")
        md.append("")
    if results:                                     # forward + backward: our best versions against torch's
        md += ["## Attention forward + backward against PyTorch (same shapes, same device, same run)", "",
               "| shape | arc.cu forward + backward ms (best versions) | torch SDPA forward + backward ms | ratio |",
               "|---|---|---|---|"]
        for suffix, label in (("", "self, B=64 T=916 NH=8 HD=64"), ("_cross", "cross, B=768 Tq=16 Tk=10 (masked)"),
                              ("_causal_gqa", "causal GQA, B=8 T=1024 NH=14 NKV=2 HD=64")):
            ours = [min((float(r["ms"]) for r in results if r["op"] == f"attention_{d}{suffix}" and
                         r["version"] != "torch_sdpa"), default=None) for d in ("forward", "backward")]
            torch_ms = [float(r["ms"]) for r in results if r["op"] == f"attention_forward_backward{suffix}"]
            if None in ours or not torch_ms:
                continue
            total = sum(ours)
            md.append(f"| {label} | {total:.3f} | {torch_ms[0]:.3f} | {torch_ms[0] / total:.2f}x |")
        md.append("")
    if training:
        md += ["## Training at the ARC default (global batch 768, 30x30 canvas, D=512, H=3, L=4, bf16)", "",
               "| model | micro-batch | device memory GiB | ms/step | steps/s | samples/s | TFLOP/s | MFU (peak table) | "
               "MFU (measured matmul ceiling) | PyTorch steps/s | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in training:
            if "ms_per_step" not in r:
                md.append(f"| {r['encoder']} | failed: see the log |||||||||")
                continue
            tflops = float(r["tflops"])
            of_ceiling = f"{100 * tflops / float(ceilings['bf16_matmul_tflops']):.1f}%" if ceilings else "?"
            torch_rate = r.get("torch", {}).get("steps_per_s")
            speedup = f"{float(r['steps_per_s']) / torch_rate:.2f}x" if torch_rate else "n/a"
            md.append(f"| {'TRM' if r['encoder'] == 'none' else 'ETRM ' + r['encoder']} | {r['micro_batch']} | "
                      f"{r['memory_gib']} | {r['ms_per_step']} | {r['steps_per_s']} | {r['samples_per_s']} | {tflops:.1f} | "
                      f"{r.get('mfu', '?')}% | {of_ceiling} | {torch_rate if torch_rate else 'n/a'} | {speedup} |")
        md.append("")
    if jepa:
        md += jepa_table(jepa, JEPA_DEFAULTS)
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"bench: wrote {stem}.md and {stem}.log")


if __name__ == "__main__":
    main()
