#!/usr/bin/env python3
"""The orchestration of `make gpu-check` (dev/gpu_check.py, dev/bench.py) without a GPU, in a few seconds: stages
whose binary is missing, that fail, crash, time out (their child processes too) or run past the budget are reported,
not fatal; the report from fabricated outcomes (stage table, verdict, measurement tables, nothing invented where a
measurement failed); where the shared bench and ARC data are found; the whole command with a failing build writes
its report, copies it to $OUT and exits 1.
"""
import os
import subprocess
import sys
import tempfile
import time

import harness
import test_jepa
import test_train
from harness import check, finish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "dev"))
import bench  # noqa: E402
import gpu_check  # noqa: E402
from bench import Outcome, Stage  # noqa: E402

PY = sys.executable


def py(code):
    return [PY, "-c", code]


def test_find_shared():
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "repo")
        inside, beside = os.path.join(root, "shared", "bench"), os.path.join(tmp, "shared", "bench")
        os.makedirs(inside)
        assert bench.find_shared(bench.TORCH_BENCH, root) is None, "found a bench_trm.py that is not there"
        open(os.path.join(inside, "bench_trm.py"), "w").close()
        found = bench.find_shared(bench.TORCH_BENCH, root)
        assert found == os.path.join(inside, "bench_trm.py"), f"the copy inside the checkout: {found}"
        os.makedirs(beside)
        open(os.path.join(beside, "bench_trm.py"), "w").close()
        found = bench.find_shared(bench.TORCH_BENCH, root)
        assert found == os.path.join(beside, "bench_trm.py"), f"../shared first: {found}"


def test_stage_outcomes():
    stages = [Stage("passes", py("print('PASS a'); print('SKIP b: why')"), 30),
              Stage("one fails", py("print('PASS a'); print('FAIL b: broken')"), 30),
              Stage("crashes", py("import sys; print('PASS a'); sys.exit(3)"), 30),
              Stage("no PASS", py("print('SKIP a: no device')"), 30),
              Stage("not built", ["./build/no_such_binary"], 30, needs=["build/no_such_binary"]),
              Stage("cannot start", ["./no_such_program"], 30),
              Stage("skipped", ["false"], 30, skip="nothing to compare with"),
              Stage("measures", py("print('RESULT op=x version=v block=1 ms=2.5 gbps=1 tflops=2 pct=3 of=copy')"), 30,
                    parse=bench.lab_lines),
              Stage("measures nothing", py("print('hello')"), 30, parse=bench.lab_lines),
              Stage("bad json", py("print('{oops')"), 30, parse=bench.torch_trm_result)]
    with open(os.devnull, "w") as log:
        o = bench.run_stages(stages, log, parallel=4)
    got = {name: (x.status, x.passed, x.failed, x.skipped) for name, x in o.items()}
    want = {"passes": ("PASS", 1, 0, 1), "one fails": ("FAIL", 1, 1, 0), "crashes": ("FAIL", 1, 1, 0),
            "no PASS": ("FAIL", 0, 1, 1), "not built": ("FAIL", 0, 1, 0), "cannot start": ("FAIL", 0, 1, 0),
            "skipped": ("SKIP", 0, 0, 0), "measures": ("PASS", 1, 0, 0), "measures nothing": ("FAIL", 0, 1, 0),
            "bad json": ("FAIL", 0, 1, 0)}
    assert list(o) == [s.name for s in stages], f"order {list(o)}"
    assert got == want, f"{got}"
    assert "exit status 3" in o["crashes"].note and "broken" in o["one fails"].note, o["crashes"].note
    assert "build/no_such_binary missing" in o["not built"].note, o["not built"].note
    assert o["measures"].data[0]["ms"] == "2.5", o["measures"].data


def test_timeout_kills_children():
    with tempfile.TemporaryDirectory() as tmp:
        pidfile = os.path.join(tmp, "pid")
        stage = Stage("hangs", ["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], 1)
        start = time.time()
        outcome, text = bench.run_stage(stage)
        assert time.time() - start < 10, f"took {time.time() - start:.1f} s"
        assert outcome.status == "FAIL" and "timed out" in outcome.note and "timed out" in text, outcome.note
        child = int(open(pidfile).read())
        time.sleep(0.2)
        try:                                            # gone, or a zombie (dead, not yet reaped)
            state = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        assert state in ("gone", "Z", "X"), f"the stage's child {child} survived it (state {state})"


def test_budget():
    stages = [Stage("first", py("print('PASS a')"), 30), Stage("second", py("print('PASS a')"), 30)]
    with open(os.devnull, "w") as log:
        o = bench.run_stages(stages, log, deadline=time.time() + bench.MIN_STAGE_SECONDS - 1)
    assert [x.status for x in o.values()] == ["NOT RUN", "NOT RUN"], [x.status for x in o.values()]


def fabricated():
    """Outcomes of a gpu-check where most things worked, the ETRM run failed and PyTorch's JEPA was skipped."""
    lab = [{"device": "GPU X", "copy_gbps": "3000.0", "bf16_matmul_tflops": "700.0"},
           {"op": "attention_forward", "version": "tc", "block": "4", "ms": "1.0000", "gbps": "0.0", "tflops": "300.0",
            "pct": "43.0", "of": "matmul"},
           {"op": "attention_backward", "version": "tc", "block": "4", "ms": "3.0000", "gbps": "0.0", "tflops": "250.0",
            "pct": "35.0", "of": "matmul"}]
    sdpa = [{"op": "attention_forward_backward", "version": "torch_sdpa", "block": "0", "ms": "6.0000", "gbps": "0.0",
             "tflops": "1.0", "pct": "0", "of": "matmul"}]
    trm = {"steps": "9", "ms_per_step": "800.0", "steps_per_s": "1.250", "samples_per_s": "960.0", "tflops": "382",
           "mfu": "38.6", "micro_batch": "384", "memory_gib": "70.10"}
    jepa = {"ms_per_step": "50.0", "steps_per_s": "20.000", "samples_per_s": "20480.0", "tflops": "100", "mfu": "10.1",
            "precision": "bf16", "params": "4000000"}
    return {"build": Outcome("PASS", seconds=61.0),
            "test_kernels BF16": Outcome("PASS", seconds=30.0, passed=526),
            "test_gpu.py etrm": Outcome("FAIL", "FAIL gpu resume: checkpoints differ | bytes", seconds=90.0, passed=20,
                                        failed=1),
            "TRM train_etrm": Outcome("PASS", seconds=20.0, passed=1, data=trm),
            "ETRM train_etrm": Outcome("FAIL", "timed out after 150 s; train step=3", seconds=150.0, failed=1),
            "JEPA train_jepa": Outcome("PASS", seconds=10.0, passed=1, data=jepa),
            "lab_attention_forward": Outcome("PASS", seconds=9.0, passed=3, data=lab[:2]),
            "lab_attention_backward": Outcome("PASS", seconds=9.0, passed=2, data=lab[:1] + lab[2:]),
            "attention_sdpa.py": Outcome("PASS", seconds=9.0, passed=1, data=sdpa),
            "TRM bench_trm.py": Outcome("PASS", seconds=40.0, passed=1, data={"steps_per_s": 0.5}),
            "ETRM bench_trm.py": Outcome("NOT RUN", "the time budget was spent"),
            "JEPA jepa_torch.py": Outcome("SKIP", bench.TORCH_MISSING)}


def test_report():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gpu_check_GPU_X_2026-01-01")
        verdict = gpu_check.write_report(path, fabricated(), ["# header", ""], 480, 400)
        md = open(path + ".md").read()
    assert verdict == "FAIL: test_gpu.py etrm, ETRM train_etrm, ETRM bench_trm.py", verdict
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ")}
    assert "| FAIL | 20 | 1 | 0 | 90.0 | FAIL gpu resume: checkpoints differ \\| bytes |" in rows["test_gpu.py etrm"], \
        rows["test_gpu.py etrm"]
    assert "| NOT RUN |" in rows["ETRM bench_trm.py"] and "| SKIP |" in rows["JEPA jepa_torch.py"], md
    assert "| 800.0 | 1.250 | 960.0 | 382.0 | 38.6% | 54.6% | 0.5 | 2.50x |" in rows["TRM"], rows["TRM"]
    assert "failed or not run" in rows["ETRM standard"], rows["ETRM standard"]
    assert "| 4.000 | 6.000 | 1.50x |" in rows["self, B=64 T=916 NH=8 HD=64"], md
    assert "| not measured | not measured | n/a |" in rows["cross, B=768 Tq=16 Tk=10 (masked)"], md
    assert "| 4000000 | 50.0 | 20480.0 | 100.0 (MFU 10.1%) | - |" in rows["arc.cu train_jepa (bf16)"], md
    assert "failed or not run" in rows["PyTorch eager"], md
    assert "copy **3000 GB/s**" in md and "**700 TFLOP/s**" in md, md
    with tempfile.TemporaryDirectory() as tmp:
        ok = {"build": Outcome("PASS"), "JEPA jepa_torch.py": Outcome("SKIP", bench.TORCH_MISSING)}
        verdict = gpu_check.write_report(os.path.join(tmp, "r"), ok, [], 480, 1)
    assert verdict.startswith("PASS"), verdict


def test_command():
    """dev/gpu_check.py with a failing build and nothing else: a report, its copy in $OUT, exit status 1."""
    with tempfile.TemporaryDirectory() as tmp:
        out, copy = os.path.join(tmp, "results"), os.path.join(tmp, "OUT")
        os.makedirs(copy)
        p = subprocess.run([PY, os.path.join(ROOT, "dev", "gpu_check.py"), "--build", "echo compiling; exit 2",
                            "--skip-tests", "--skip-measure", "--out", out], capture_output=True, text=True,
                           env=dict(os.environ, OUT=copy), timeout=120)
        assert p.returncode == 1, f"exit status {p.returncode}: {p.stderr[-300:]}"
        names = sorted(os.listdir(out))
        assert len(names) == 2 and names[0].startswith("gpu_check_") and names[0].endswith(".log"), names
        assert sorted(os.listdir(copy)) == names, os.listdir(copy)
        md, log = (open(os.path.join(out, n)).read() for n in (names[1], names[0]))
        assert "**FAIL: build**" in md and "| build | FAIL |" in md and "exit status 2" in md, md
        assert "compiling" in log and "[exit status 2," in log, log


def test_trainer_lines():
    """trainer_timing on the trainers' own output (the CPU backend's: the GPU's adds mfu=)."""
    test_train.ensure_synthetic_data()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"train_etrm_cpu": [f"data_paths={test_train.SYNTH}/train.bin"] + test_train.TINY +
                ["encoder_type=standard", "max_steps=2", "eval_interval=0", f"checkpoint_path={tmp}/etrm"],
                "train_jepa_cpu": test_jepa.TINY + ["max_steps=2", f"checkpoint_path={tmp}/jepa"]}
        for binary, args in runs.items():
            if not os.path.exists(os.path.join(ROOT, binary)):
                raise harness.Skip(f"{binary} is not built")
            p = subprocess.run([os.path.join(ROOT, binary)] + harness.merge_args(args), capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
            assert p.returncode == 0, f"{binary}: {p.stderr[-300:]}"
            row = bench.trainer_timing(p.stdout)
            assert row and {"ms_per_step", "steps_per_s", "samples_per_s", "tflops", "precision", "params"} <= set(row), \
                f"{binary}: {row}"
            assert binary != "train_etrm_cpu" or {"micro_batch", "memory_gib"} <= set(row), row


def main():
    for name, fn in [("gpu-check: where the shared bench and ARC data are found", test_find_shared),
                     ("gpu-check: stage outcomes (missing, failing, crashing, skipped, measuring)", test_stage_outcomes),
                     ("gpu-check: a timed-out stage is killed with its children", test_timeout_kills_children),
                     ("gpu-check: stages past the budget are NOT RUN", test_budget),
                     ("gpu-check: the report from fabricated outcomes", test_report),
                     ("gpu-check: the timing lines of the trainers (CPU backend) are read", test_trainer_lines),
                     ("gpu-check: the command with a failing build writes its report and exits 1", test_command)]:
        check(name, fn)
    finish()


if __name__ == "__main__":
    main()
