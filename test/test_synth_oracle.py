#!/usr/bin/env python3
"""Tests for dev/synth_oracle.py (the oracle ceiling of the synthetic benchmark); standard library only.

Run from the repository root:  python3 test/test_synth_oracle.py
Prints "PASS name" or "FAIL name: why" per check, then "<N> passed, <M> failed"; exits 1 if anything
failed.  Generates a small benchmark with data/synth.py (every family: 60 training, 24 eval, 12 held-out
tasks) into a temporary folder; about 5 seconds.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "dev"))
from harness import check, finish  # noqa: E402
import synth_oracle  # noqa: E402  (puts data/ on the path)
import arc_format  # noqa: E402
import synth  # noqa: E402

TMP = None    # scratch folder, made by main()
SPLITS = ("train", "eval", "heldout")
CFG = argparse.Namespace(canvas=8, min_side=3)   # data/synth.py's defaults


def data_path(split):
    return os.path.join(TMP, "synth", split + ".bin")


def run_oracle(*args):
    """Run dev/synth_oracle.py from the repo root; returns (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, os.path.join("dev", "synth_oracle.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def write(name, tasks, canvas=8):
    path = os.path.join(TMP, name)
    arc_format.write_tasks(path, tasks, canvas)
    return path


def check_generated():
    proc = subprocess.run([sys.executable, os.path.join("data", "synth.py"), os.path.join(TMP, "synth"),
                           "--tasks", "60", "--eval-tasks", "24", "--heldout-tasks", "12",
                           "--sequences", "0", "--val-sequences", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"synth.py exited {proc.returncode}: {proc.stderr.strip()}"
    families = {r["family"] for split in SPLITS for r in synth_oracle.solve_file(data_path(split), None, 3)}
    assert families == set(synth.FAMILIES), f"families covered: {sorted(families)}"


def check_family_known_is_perfect():
    """synth.py rejects a task when another parameter of its family fits every demo but answers a test
    differently (Family.ambiguous; recolor: every test colour appears in a demo), so knowing the family,
    every consistent parameter gives the true answer."""
    for split in SPLITS:
        records = synth_oracle.solve_file(data_path(split), None, 3)
        wrong = [r for r in records if r["known"][1] != 1.0]
        assert not wrong, f"{split}: family-known pass@1 below 1 on {len(wrong)} tasks ({wrong[0]})"
        summary = synth_oracle.summarise(records)
        assert summary["known"] == {1: 1.0, 2: 1.0}, f"{split}: {summary['known']}"


def check_family_unknown_bounds():
    for split in SPLITS:
        for r in synth_oracle.solve_file(data_path(split), None, 3):
            assert r["unknown"][1] <= r["unknown"][2] <= 1.0, f"{split}: pass@1 > pass@2 in {r}"
            assert r["family"] in r["families"] and r["n_hyps"] >= 1, f"{split}: own family not consistent: {r}"


def check_corrupted_test_output():
    tasks, _ = arc_format.read_tasks(data_path("eval"))
    task = tasks[0]
    hyps = synth_oracle.hypotheses(task, synth.FAMILIES.values(), CFG)
    assert synth_oracle.task_scores(task, hyps)[2] == 1.0, "the intact task is not solved"
    test = [(grid, [row[:] for row in out]) for grid, out in task["test"]]
    for _, out in test:   # one cell of every test output changed
        out[0][0] = (out[0][0] + 1) % 10
    corrupted = {"name": task["name"], "train": task["train"], "test": test}
    records = synth_oracle.solve_file(write("corrupted.bin", [corrupted]), None, 3)
    assert records[0]["known"] == {1: 0.0, 2: 0.0}, f"family known solved a corrupted task: {records[0]}"
    assert records[0]["unknown"] == {1: 0.0, 2: 0.0}, f"family unknown solved a corrupted task: {records[0]}"


def check_recolor_inference():
    demos = [([[1, 2], [0, 3]], [[2, 1], [0, 3]])]
    assert synth_oracle.implied_recoloring(demos) == ((1, 2), (2, 1)), synth_oracle.implied_recoloring(demos)
    conflicting = demos + [([[1, 1]], [[2, 3]])]
    assert synth_oracle.implied_recoloring(conflicting) == ((1, 2), (2, 1)), "first occurrence must win"
    task = {"name": "recolor_0000", "train": conflicting, "test": [([[1]], [[2]])]}
    assert not synth_oracle.hypotheses(task, [synth.FAMILIES["recolor"]], CFG), "a conflicting mapping fits"
    for why, bad in (("background moves", [([[0, 1]], [[5, 1]])]), ("colour painted as background", [([[1]], [[0]])]),
                     ("two colours merge", [([[1, 2]], [[3, 3]])]), ("five colours", [([[1, 2, 3, 4]], [[2, 3, 4, 5]])]),
                     ("shape changes", [([[1]], [[2, 2]])])):
        assert synth_oracle.implied_recoloring(bad) is None, f"{why}: {synth_oracle.implied_recoloring(bad)}"


def check_apply_that_raises():
    """A blank demo input makes crop and duplicate raise; the search must treat that as inconsistent."""
    blank = [[0, 0], [0, 0]]
    task = {"name": "flip_0000", "train": [(blank, blank), ([[1, 2], [0, 0]], [[2, 1], [0, 0]])],
            "test": [(blank, blank), ([[3, 0], [0, 0]], [[0, 3], [0, 0]])]}
    records = synth_oracle.solve_file(write("raises.bin", [task]), None, 3)
    assert records[0]["known"][1] == 1.0, records[0]
    assert "crop" not in records[0]["families"] and "duplicate" not in records[0]["families"], records[0]


def check_command_line():
    md = os.path.join(TMP, "oracle.md")
    rc, out, err = run_oracle(data_path("eval"), data_path("heldout"), "--markdown", md)
    assert rc == 0, f"exited {rc}: {err.strip()}"
    for text in ("24 tasks", "12 tasks", "family known    pass@1 100.0%  pass@2 100.0%", "family unknown"):
        assert text in out, f"{text!r} not in the output:\n{out}"
    with open(md) as f:
        text = f.read()
    assert text.startswith("# Oracle ceiling") and "Command: `python3 dev/synth_oracle.py" in text, text[:300]
    for name in synth.FAMILIES:
        assert f"\n| {name} | " in text, f"no markdown row for {name}"
    assert "| family known | 100.0% | 100.0% |" in text, text
    assert not os.path.exists(md + ".tmp"), "temporary file left behind"
    rc, out, err = run_oracle(data_path("train"), "--max-tasks", "5")
    assert rc == 0 and "5 tasks" in out, f"--max-tasks 5: exited {rc}: {out}{err}"


def check_bad_input():
    garbage = os.path.join(TMP, "garbage.bin")
    with open(garbage, "wb") as f:
        f.write(b"not a task file" * 100)
    foreign = write("foreign.bin", [{"name": "puzzle_7", "train": [([[1]], [[2]])], "test": [([[1]], [[2]])]}])
    for what, args, expected in (("missing file", [os.path.join(TMP, "nope.bin")], "cannot read"),
                                 ("not a task file", [garbage], "bad magic"),
                                 ("task not named after a family", [foreign], "puzzle_7"),
                                 ("unwritable markdown", [data_path("heldout"), "--markdown",
                                                          os.path.join(TMP, "no", "dir", "x.md")], "cannot write")):
        rc, out, err = run_oracle(*args)
        assert rc == 1, f"{what}: exited {rc}"
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and expected in lines[0], f"{what}: stderr {err!r}"
    rc, _, err = run_oracle(data_path("eval"), "--max-tasks", "0")
    assert rc == 2 and "must be >= 1" in err, f"--max-tasks 0: exited {rc}: {err!r}"


def main():
    global TMP
    TMP = tempfile.mkdtemp(prefix="test_synth_oracle_")
    try:
        check("generate a small benchmark with every family", check_generated)
        if not os.path.exists(data_path("heldout")):
            return finish()
        check("family known: pass@1 100% on train, eval and held-out tasks", check_family_known_is_perfect)
        check("family unknown: pass@1 <= pass@2 <= 1, the task's own family always consistent",
              check_family_unknown_bounds)
        check("a task with corrupted test outputs is not solved", check_corrupted_test_output)
        check("recolor: the mapping the demos imply, out-of-space mappings refused", check_recolor_inference)
        check("an apply that raises counts as inconsistent", check_apply_that_raises)
        check("command line: report, markdown, --max-tasks", check_command_line)
        check("bad input: one error line, exit 1 (usage errors exit 2)", check_bad_input)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
