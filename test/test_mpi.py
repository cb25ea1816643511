#!/usr/bin/env python3
"""Data-parallel training of ./train_etrm_cpu under `mpirun -np 2` (standard library only).

    python3 test/test_mpi.py       (from the repository root, after `make train_etrm_cpu` with MPI found)

Checks, on the synthetic data, against one process with the same global batch:
  - the first step is identical bit for bit (the same losses and metrics: every sample's forward pass does not
    depend on where it sits in the batch), and 6 steps' losses and the weights after them agree to 1e-5
    (relative to each tensor's largest value). Not bitwise: one process sums a weight gradient over all rows of
    the batch in one running sum, two ranks sum their halves and then add them (MPI_Allreduce), so the float
    roundings differ at the 1e-7 level; AdamATan2's first, sign-like steps turn that into slightly different
    updates of near-zero gradient elements;
  - two 2-rank runs give identical checkpoints; only rank 0 logs;
  - resume: 3 steps + resume + 3 steps == 6 steps bitwise with 2 ranks; a 2-rank checkpoint resumes with 1 rank
    and a 1-rank checkpoint with 2 ranks (the carry is saved in global slot order), agreeing to 1e-5;
  - errors stop every rank with one clear message, no hang: a batch not divisible by the ranks, a configuration
    that differs between ranks (the data files too), a rank that dies (killed in the middle of the run).
  - train_jepa_cpu: 2 ranks against one process (InfoNCE negatives, SIGReg statistics, codebook EMA statistics and
    loss normalisers are global), losses within 1e-5 over 6 steps, with dropout, per-object translation jitter and
    the dead-code refresh off (their random draws are keyed by the position in a rank's buffer, see README).
Without mpirun, or with a train_etrm_cpu built without MPI, the checks are reported as SKIP.
"""
import os
import re
import shutil
import struct
import subprocess
import tempfile

import test_train
from harness import expect as check, finish, merge_args, run_groups

ROOT = test_train.ROOT
SYNTH = test_train.SYNTH
BIN = os.path.join(ROOT, "train_etrm_cpu")
TOLERANCE = 1e-5
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")


def args_for(out, extra):
    return [f"data_paths={SYNTH}/train.bin"] + test_train.TINY + [f"checkpoint_path={out}", "eval_interval=0"] + list(extra)


def run(ranks, out, *extra, expect_ok=True):
    """Trains with `ranks` processes (1: no mpirun); returns (exit status, stdout, stderr)."""
    cmd = [BIN] + merge_args(args_for(out, extra))
    if ranks > 1:
        cmd = ["mpirun", "-np", str(ranks)] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    if expect_ok and p.returncode != 0:
        raise RuntimeError(f"{ranks} rank(s) {' '.join(extra)} failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return p.returncode, p.stdout, p.stderr


def floats(section):
    return struct.unpack(f"<{len(section) // 4}f", section)


def weights(sections):
    """Every parameter group's fp32 weights of a checkpoint (its "<group>.weights" sections), in name order."""
    return [x for name in sorted(sections) if name.endswith(".weights") for x in floats(sections[name])]


def relative_difference(a, b):
    scale = max(abs(x) for x in b) or 1.0
    return max(abs(x - y) for x, y in zip(a, b)) / scale


def losses(stdout):
    return [float(re.search(r" loss=(\S+)", l).group(1)) for l in test_train.train_lines(stdout)]


def test_matches_one_process(tmp):
    # the last variant: LPN's latent steps in training (latent_inner_steps), per sample, so rank-independent too
    for enc, inner in (("none", 0), ("standard", 0), ("hybrid_variational", 0), ("lpn_variational", 0), ("lpn_variational", 1)):
        extra = [f"encoder_type={enc}", "kl_weight=0.1", "max_steps=6", f"latent_inner_steps={inner}"]
        tag = f"{enc}_inner{inner}"
        if inner:
            enc = f"{enc}, latent_inner_steps={inner}"
        _, one, _ = run(1, f"{tmp}/one_{tag}", *extra)
        _, two, _ = run(2, f"{tmp}/two_{tag}", *extra)
        l1, l2 = test_train.train_lines(one), test_train.train_lines(two)
        check(len(l1) == 6 and len(l2) == 6 and l1[0] == l2[0],
              f"mpirun -np 2: the first step's losses and metrics equal one process's bit for bit ({enc})",
              f"{l1[:1]} vs {l2[:1]}")
        worst = max((abs(x - y) / abs(x) for x, y in zip(losses(one), losses(two))), default=1.0)
        check(worst <= TOLERANCE, f"mpirun -np 2: 6 steps' losses equal one process's within {TOLERANCE} ({enc})",
              f"largest relative difference {worst:.3g}")
        a = test_train.read_sections(f"{tmp}/one_{tag}/ckpt_00000006.bin")
        b = test_train.read_sections(f"{tmp}/two_{tag}/ckpt_00000006.bin")
        diff = relative_difference(weights(b), weights(a))
        check(diff <= TOLERANCE and a["carry_samples"] == b["carry_samples"] and a["carry_halted"] == b["carry_halted"],
              f"mpirun -np 2: weights after 6 steps within {TOLERANCE}, the same ACT carry ({enc})",
              f"weights differ by {diff:.3g} of the largest")


def test_determinism_and_logging(tmp):
    extra = ["encoder_type=hybrid_variational", "max_steps=4"]
    _, so, _ = run(2, f"{tmp}/det_a", *extra)
    run(2, f"{tmp}/det_b", *extra)
    a = test_train.read_sections(f"{tmp}/det_a/ckpt_00000004.bin")
    b = test_train.read_sections(f"{tmp}/det_b/ckpt_00000004.bin")
    check(a == b, "mpirun -np 2: the same seed gives identical checkpoints")
    check(len(test_train.train_lines(so)) == 4 and so.count("arc.cu train_etrm") == 1 and "2 processes" in so,
          "mpirun -np 2: only rank 0 logs", so[-300:])


def test_resume(tmp):
    common = ["encoder_type=lpn_variational", "kl_weight=0.1", "checkpoint_every=3", "max_steps=6"]
    for ranks_first in (2, 1):
        full = f"{tmp}/res_full_{ranks_first}"
        run(ranks_first, full, *common)
        for ranks_after in (2, 1):
            part = f"{tmp}/res_part_{ranks_first}_{ranks_after}"
            os.makedirs(part)
            shutil.copy(f"{full}/ckpt_00000003.bin", part)
            _, so, _ = run(ranks_after, part, *common, "resume=1")
            a = test_train.read_sections(f"{full}/ckpt_00000006.bin")
            b = test_train.read_sections(f"{part}/ckpt_00000006.bin")
            if ranks_first == ranks_after:
                if ranks_first == 1:
                    continue                                  # test_train.py covers the single-process resume
                check(a == b and "resumed from" in so, "mpirun -np 2: 3 steps + resume + 3 steps == 6 steps, bitwise",
                      f"sections that differ: {sorted(k for k in a if a[k] != b.get(k))}")
            else:
                diff = relative_difference(weights(b), weights(a))
                check(diff <= TOLERANCE and a["carry_samples"] == b["carry_samples"] and "resumed from" in so,
                      f"resume: a {ranks_first}-rank checkpoint continues with {ranks_after} rank(s) "
                      f"(weights within {TOLERANCE}, the same carry)", f"weights differ by {diff:.3g}")


def test_errors(tmp):
    rc, _, se = run(2, f"{tmp}/err1", "global_batch_size=7", expect_ok=False)
    check(rc != 0 and "multiple of the number of processes" in se,
          "error: a batch not divisible by the ranks stops every rank", se[-300:])
    base = [BIN] + merge_args(args_for(f"{tmp}/err2", ["max_steps=2"]))
    p = subprocess.run(["mpirun", "-np", "1"] + base + [":", "-np", "1"] + merge_args(base + ["lr=2e-3"]), capture_output=True,
                       text=True, env=ENV, timeout=120)
    check(p.returncode != 0 and re.search(r"configuration line 'lr=0\.00[12]' differs", p.stderr) is not None,
          "error: a configuration that differs between ranks stops every rank, naming the key", p.stderr[-300:])
    # rank 1 is killed 3 s into a long run (a crash): mpirun must stop rank 0 too, not leave it waiting
    long = [BIN] + args_for(f"{tmp}/err3", ["max_steps=100000"])
    killed = ["timeout", "-s", "KILL", "3"] + long
    try:
        p = subprocess.run(["mpirun", "-np", "1"] + long + [":", "-np", "1"] + killed, capture_output=True, text=True,
                           env=ENV, timeout=120)
        check(p.returncode != 0, "error: a rank that dies stops every rank (no hang)", p.stderr[-300:])
    except subprocess.TimeoutExpired:
        check(False, "error: a rank that dies stops every rank (no hang)", "still running after 120 s")


def test_jepa_matches_one_process(tmp):
    import test_jepa
    extra = ["relational_dropout=0", "inv_translation=0", "refresh_mode=off", "max_steps=6", "diag_every=0"]
    out = {}
    for ranks in (1, 2):
        cmd = [test_jepa.BIN] + merge_args(test_jepa.TINY + [f"checkpoint_path={tmp}/jepa_{ranks}"] + extra)
        if ranks > 1:
            cmd = ["mpirun", "-np", "2"] + cmd
        p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"train_jepa_cpu with {ranks} rank(s) failed ({p.returncode}): {p.stderr.strip()[-400:]}")
        out[ranks] = [float(re.search(r" loss=(\S+)", l).group(1)) for l in test_jepa.train_lines(p.stdout)]
    worst = max((abs(x - y) / abs(x) for x, y in zip(out[1], out[2])), default=1.0)
    check(len(out[1]) == 6 and len(out[2]) == 6 and worst <= TOLERANCE,
          f"train_jepa: mpirun -np 2 gives one process's losses within {TOLERANCE} over 6 steps",
          f"largest relative difference {worst:.3g}: {out[1]} vs {out[2]}")


def mpi_available():
    if shutil.which("mpirun") is None:
        return "mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
    if not os.path.exists(BIN):
        return f"{BIN} is not built"
    probe = tempfile.mkdtemp(prefix="arc_mpi_probe_")
    try:
        rc, so, se = run(2, probe, "max_steps=1", expect_ok=False)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if "2 processes" not in so:
        return "train_etrm_cpu was built without MPI (make found no mpicxx, or NO_USE_MPI=1)" if rc == 0 else \
            f"mpirun -np 2 failed: {se.strip()[-200:]}"
    return None


def main():
    test_train.ensure_synthetic_data()
    run_groups([("mpirun -np 2 == one process", test_matches_one_process),
                ("mpirun determinism and logging", test_determinism_and_logging),
                ("mpirun resume", test_resume), ("mpirun errors", test_errors),
                ("train_jepa mpirun -np 2 == one process", test_jepa_matches_one_process)], "arc_test_mpi_", mpi_available())
    finish()


if __name__ == "__main__":
    main()
