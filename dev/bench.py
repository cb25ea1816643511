#!/usr/bin/env python3
"""`make bench`: every kernel lab, PyTorch's attention beside ours, and a fixed-length training benchmark at the
ARC default, on the GPU of this machine; writes a markdown table and the raw log to dev/results/.

    python3 dev/bench.py [--steps 30] [--arc-data DIR] [--torch-bench PATH] [--out dev/results]

What it runs (each step's output goes to the raw log; a step that fails is reported and the rest still runs):
  1. build/lab_*            the dev/cuda kernel labs: CEILING lines (device-to-device copy GB/s, bf16 matmul
                            TFLOP/s, measured in the same run) and RESULT lines (op, version, block, ms, rate, %)
  2. dev/cuda/attention_sdpa.py   torch scaled_dot_product_attention on the labs' shapes (needs torch)
  3. ./train_etrm           ARC-AGI-1 training tasks converted by data/arc.py, the ARC default (global batch 768,
                            30x30 canvas, D=512, H_cycles=3, L_cycles=4): TRM and ETRM (standard encoder), --steps
                            steps each; the trainer's final "timing" line (ms/step, samples/s, TFLOP/s, MFU)
  4. bench_trm.py           the PyTorch reference training step on the same configurations (needs torch and
                            ../shared/bench/bench_trm.py, or --torch-bench)
Only the standard library is needed here.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps per benchmark run (the first is not timed)")
    ap.add_argument("--arc-data", default=os.path.join(ROOT, "..", "shared", "data", "arc-agi-1", "data", "training"))
    ap.add_argument("--torch-bench", default=os.path.join(ROOT, "..", "shared", "bench", "bench_trm.py"))
    ap.add_argument("--out", default=os.path.join(ROOT, "dev", "results"))
    ap.add_argument("--skip-train", action="store_true", help="labs only")
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
        data = "build/bench_arc1_train.bin"
        if not os.path.exists(os.path.join(ROOT, data)):
            run([sys.executable, "data/arc.py", data, args.arc_data], log, 600)
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
        for suffix, label in (("", "self, B=64 T=916 NH=8 HD=64"), ("_cross", "cross, B=768 Tq=16 Tk=10 (masked)")):
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
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"bench: wrote {stem}.md and {stem}.log")


if __name__ == "__main__":
    main()
