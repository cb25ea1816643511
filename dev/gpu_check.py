#!/usr/bin/env python3
"""`make gpu-check`: the one command of a GPU window. It validates the CUDA backend and measures it in about 8 minutes
on an H100 / H200 with 16 cores, and writes dev/results/gpu_check_<device>_<date>.md (a table of the stages, PASS /
FAIL with counts and seconds, and the measurements) and .log (everything every stage printed); with $OUT set it copies
both there too. It never stops at a failure: every stage runs (or is reported NOT RUN when the time budget is
spent), and the exit status is 1 when any stage failed or did not run.

    python3 dev/gpu_check.py [--build CMD] [--budget 480] [--quick] [--steps 10] [--skip-tests] [--skip-measure]
                             [--arc-data DIR] [--torch-bench PATH] [--out dev/results] [--commit HASH]

The stages, each with its own timeout (seconds, cut to what is left of --budget):
  build           --build CMD: `make gpu-check` passes `make -j<nproc> -k` of the targets it needs, for the GPU's
                  own arch only (GPU_COMPUTE_CAPABILITY from nvidia-smi, 90 on an H100 / H200)           300
  tests, at once  build/test_kernels, build/test_kernels_fp32 (every kernel against its CPU reference)     120 each
                  test/test_gpu.py etrm, jepa and cvae (the FP32 GPU trainer against the CPU backend,
                  determinism and bitwise resume of the GPU trainers; --quick: its reduced subset)           240 each
                  data/arc.py (ARC-AGI-1's training tasks for the measurements)                               60
  measurements,   TRM, ETRM (standard encoder) at the ARC default, --steps steps each (ms/step, samples/s,
  one at a time   MFU)                                                                                    90, 150
                  the JEPA step at train_jepa's defaults, --steps steps                                        60
                  train_cvae: a LoRA step (r=16) on a Qwen2.5-0.5B-shaped model, micro-batch 8 x 512       120
                  build/lab_attention_* (validated, then timed) and dev/cuda/attention_sdpa.py (torch SDPA)   60 each
                  bench_trm.py (TRM, ETRM), dev/jepa_torch.py (eager) and dev/cvae_torch.py bench, the same
                  configurations in PyTorch, 5 timed steps each                                    90, 120, 90, 90
The tests run together (the GPU is idle most of their time; each gets OMP_NUM_THREADS = cores / 4); the
measurements run alone. `make bench` (dev/bench.py) has the longer measurement: every lab, 30 steps, torch.compile.

The shared folder (bench_trm.py, the ARC data) is ../shared beside the checkout or its copy shared/ inside it
(`make shared-copy`); without bench_trm.py or torch those stages are SKIP, not failures.

The build (nvcc 13, -O3, sm_90 only), measured on the development machine (2 shared cores of an AMD EPYC) as the CPU
time of each target compiled alone: test_kernels 45 s, test_kernels_fp32 33 s, train_etrm 28 s, train_etrm_fp32 24 s,
train_jepa 23 s, train_jepa_fp32 22 s, lab_attention_forward 13 s, lab_attention_backward 12 s, train_etrm_cpu 16 s,
train_jepa_cpu 14 s (g++); `make -j2` of them all: 247 s of CPU, 478 s of wall clock. On 16 cores the 11 targets
compile at once and the longest, test_kernels, sets the time: about 45-60 s (extrapolated, not measured). Both archs
(80 90) would cost test_kernels nothing more (its host code dominates) and train_etrm 34% more. The stages after the
build have not run on a GPU yet: their timeouts are budgets, not measurements.
"""
import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import ROOT, Stage  # noqa: E402

# Seconds per stage (each also cut to what is left of the budget).
TIMEOUTS = {"build": 300, "kernels": 120, "test_gpu": 240, "convert": 60, "TRM": 90, "ETRM": 150, "JEPA": 60,
            "lab": 60, "sdpa": 60, "torch TRM": 90, "torch ETRM": 120, "torch JEPA": 90, "CVAE": 120, "torch CVAE": 90}
# Timed steps of the PyTorch runs (after their warm-up: 3 for bench_trm.py, 5 for dev/jepa_torch.py).
TORCH_STEPS = 5
# The measurements in the order they run: arc.cu's own first, the PyTorch comparisons last.
ORDER = ("TRM train_etrm", "ETRM train_etrm", "JEPA train_jepa", "CVAE train_cvae", "lab_", "attention_sdpa.py",
         "TRM bench_trm.py", "ETRM bench_trm.py", "JEPA jepa_torch.py", "CVAE cvae_torch.py")


def attention_labs():
    """build/lab_<name> of every dev/cuda/attention*.cu (the Makefile's gpu-check labs)."""
    return sorted(os.path.join("build", "lab_" + f[:-3]) for f in os.listdir(os.path.join(ROOT, "dev", "cuda"))
                  if f.startswith("attention") and f.endswith(".cu"))


def test_stages(quick):
    """The kernel tests in both precisions and test_gpu.py's three parts (etrm, jepa, cvae), with ARC_REQUIRE_GPU=1
    (a missing GPU fails) and a quarter of the cores each. The cvae part writes its own data (data/strategies.py)."""
    env = {"ARC_REQUIRE_GPU": "1", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 4) // 4))}
    stages = [Stage(f"test_kernels {precision}", [f"./{binary}"], TIMEOUTS["kernels"], needs=[binary], env=env)
              for precision, binary in (("BF16", "build/test_kernels"), ("FP32", "build/test_kernels_fp32"))]
    for trainer in ("etrm", "jepa", "cvae"):
        stages.append(Stage(f"test_gpu.py {trainer}", [sys.executable, "test/test_gpu.py", trainer] +
                            (["--quick"] if quick else []), TIMEOUTS["test_gpu"],
                            needs=["data/synth/train.bin"] if trainer != "cvae" else [], env=env))
    return stages


def shown(path):
    """A path as the report shows it: relative to the checkout; 'not found' for None."""
    return os.path.relpath(path, ROOT) if path else "not found"


def ordered(stages):
    """stages sorted by ORDER (the first entry each name starts with; others last)."""
    return sorted(stages, key=lambda s: next((i for i, prefix in enumerate(ORDER) if s.name.startswith(prefix)),
                                             len(ORDER)))


def write_report(path, outcomes, header, budget, seconds):
    """path.md: the header lines, the verdict, the stages table and the measurement tables. Returns the verdict."""
    bad = [name for name, o in outcomes.items() if o.status in ("FAIL", "NOT RUN")]
    verdict = f"FAIL: {', '.join(bad)}" if bad else f"PASS (all {len(outcomes)} stages passed or were skipped)"
    md = header + [f"Wall clock {seconds:.0f} s of a {budget:.0f} s budget.", "", f"**{verdict}**", "",
                   "## Stages", ""] + bench.stages_table(outcomes)
    tables = bench.report_tables(outcomes)
    if tables:
        md += ["## Measurements", ""] + tables
    with open(path + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    return verdict


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", help="shell command that builds the targets (make gpu-check passes it); none: use "
                    "what is built")
    ap.add_argument("--budget", type=float, default=480, help="seconds for everything, the build included")
    ap.add_argument("--quick", action="store_true", help="test_gpu.py --quick: TRM, the standard encoder and one "
                    "JEPA configuration against the CPU backend")
    ap.add_argument("--steps", type=int, default=10, help="training steps of each measurement")
    ap.add_argument("--skip-tests", action="store_true", help="no kernel tests or test_gpu.py")
    ap.add_argument("--skip-measure", action="store_true", help="no measurements")
    ap.add_argument("--arc-data", default=bench.find_shared(bench.ARC1_TRAINING), help="ARC-AGI-1's training JSON "
                    "files (default: the shared folder's)")
    ap.add_argument("--torch-bench", default=bench.find_shared(bench.TORCH_BENCH), help="bench_trm.py (default: "
                    "the shared folder's)")
    ap.add_argument("--out", default=os.path.join(ROOT, "dev", "results"))
    ap.add_argument("--commit", help="the commit to name in the report when the checkout has no .git (a copy)")
    args = ap.parse_args()
    start = time.time()
    deadline = start + args.budget

    device, arch, commit, date = bench.describe()
    commit = args.commit or commit
    os.makedirs(args.out, exist_ok=True)
    path = bench.stem(args.out, "gpu_check", device or "no GPU", date)
    cores = os.cpu_count()
    header = [f"# arc.cu GPU check: {device or 'no GPU found (nvidia-smi lists none)'}", "",
              f"Date {date}, commit `{commit}`, `make gpu-check` (dev/gpu_check.py) on {cores} cores"
              f"{f', compute capability {arch}' if arch else ''}; raw log: `{os.path.basename(path)}.log`.", "",
              f"Build: `{args.build}`." if args.build else "Build: none (the binaries as built).", "",
              f"ARC-AGI-1 training data: `{shown(args.arc_data)}`; bench_trm.py: `{shown(args.torch_bench)}`; "
              f"{args.steps} training steps per measurement ({TORCH_STEPS} for PyTorch)"
              f"{'; test_gpu.py --quick' if args.quick else ''}.", ""]
    print("\n".join(line for line in header if line), flush=True)

    outcomes = {}
    with open(path + ".log", "w") as log:
        log.write("\n".join(header) + "\n")
        if args.build:
            outcomes.update(bench.run_stages([Stage("build", ["bash", "-c", args.build], TIMEOUTS["build"],
                                                    parse=lambda out: {})], log, deadline))
        measures = [] if args.skip_measure else bench.measurement_stages(
            args.steps, args.arc_data, args.torch_bench, attention_labs(), compile=False, torch_steps=TORCH_STEPS,
            timeouts=TIMEOUTS)
        convert = [s for s in measures if s.name in ("ARC-AGI-1 data", "strategies data")]   # no GPU: beside the tests
        together = ([] if args.skip_tests else test_stages(args.quick)) + convert
        if together:
            outcomes.update(bench.run_stages(together, log, deadline, parallel=len(together)))
        outcomes.update(bench.run_stages(ordered([s for s in measures if s not in convert]), log, deadline))
        seconds = time.time() - start
        verdict = write_report(path, outcomes, header, args.budget, seconds)
        log.write(f"\n{verdict} in {seconds:.0f} s\n")
    copied = ""
    if os.environ.get("OUT") and os.path.realpath(os.environ["OUT"]) != os.path.realpath(args.out):
        os.makedirs(os.environ["OUT"], exist_ok=True)
        for suffix in (".md", ".log"):
            shutil.copy(path + suffix, os.environ["OUT"])
        copied = f" (and copied them to {os.environ['OUT']})"
    print(f"gpu_check: {verdict} in {seconds:.0f} s; wrote {path}.md and {path}.log{copied}")
    sys.exit(1 if verdict.startswith("FAIL") else 0)


if __name__ == "__main__":
    main()
