#!/usr/bin/env python3
"""Tests for the run tools in dev/ (submission.py, plot.py); standard library only.

Run from the repository root:  python3 test/test_tools.py
Prints "PASS name" or "FAIL name: why" per check, then "<N> passed, <M> failed"; exits 1 if anything
failed.  plot.py is always run with "matplotlib missing": PYTHONPATH starts with a folder holding
a stand-in package matplotlib/ whose __init__ raises ImportError, which shadows any installed one
(PYTHONPATH comes before site-packages), so the CSV path is tested whether or not matplotlib exists.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "dev"))
from harness import check, finish  # noqa: E402
import plot  # noqa: E402
import submission  # noqa: E402

TMP = None  # scratch folder, made by main()

G1, G2, G3, G4, G5 = [[1]], [[2, 2]], [[3], [3]], [[4, 4], [4, 4]], [[5, 0, 5]]


def path_in_tmp(*parts):
    path = os.path.join(TMP, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def write(name, obj):
    """Write obj (JSON, or text as it is) to TMP/name; returns the path."""
    path = path_in_tmp(name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def run_tool(script, *args):
    """Run dev/<script> with matplotlib hidden; returns (returncode, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (os.path.join(TMP, "no_matplotlib"),
                                                                     os.environ.get("PYTHONPATH")))))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "dev", script), *args], cwd=TMP,
                          capture_output=True, text=True, timeout=60, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def cand(grid, votes=1, mean_q=0.5):
    return {"votes": votes, "mean_q": mean_q, "grid": grid}


# one candidate with its mean_q spelled as MEAN_Q, for values json.dumps cannot write
RAW_CAND = '{"tasks": {"a": [[{"votes": 1, "mean_q": MEAN_Q, "grid": [[1]]}]]}}'


def preds(name, tasks):
    return write(name, {"step": 20, "set": "data/synth/eval.bin", "tasks": tasks})


def submit(*args):
    """Run submission.py, expecting success; returns (submission, stdout)."""
    out = path_in_tmp("sub", f"out{len(os.listdir(os.path.join(TMP, 'sub')))}.json")
    rc, stdout, stderr = run_tool("submission.py", out, *args)
    assert rc == 0, f"submission.py exited {rc}: {stderr.strip()}"
    with open(out, encoding="utf-8") as f:
        return json.load(f), stdout


def attempts(entry):
    return entry["attempt_1"], entry["attempt_2"]


# ---------------------------------------------------------------- submission.py

def check_submission_one_file():
    p = preds("one.json", {
        "a": [[cand(G1, 2, 0.1), cand(G2, 3, 0.2), cand(G3, 3, 0.9)],   # votes first, then mean_q
              [cand(G4, 1, 0.5), cand(G5, 1, 0.5), cand(G1, 1, 0.5)],   # full tie: first-seen order
              [cand(G2, 7, 0.3)],                                         # one candidate: duplicated
              [],                                                         # none: [[0]]
              [cand([], 4, 0.9)],                                         # only an empty grid: [[0]]
              [cand([], 5, 0.9), cand(G5, 1, 0.1)]],                      # empty grid dropped
        "b": [[cand(G3)]]})
    sub, stdout = submit(p)
    assert list(sub) == ["a", "b"], f"tasks {list(sub)}"
    got = [attempts(e) for e in sub["a"]]
    want = [(G3, G2), (G4, G5), (G2, G2), ([[0]], [[0]]), ([[0]], [[0]]), (G5, G5)]
    assert got == want, f"attempts {got}, expected {want}"
    assert attempts(sub["b"][0]) == (G3, G3)
    for phrase in ("2 tasks", "7 test inputs", "2 without a prediction", "3 with one candidate", "2 empty grids"):
        assert phrase in stdout, f"summary lacks {phrase!r}: {stdout!r}"
    assert stdout.count("\n") == 1, f"summary is not one line: {stdout!r}"


def check_submission_merge():
    p1 = preds("m1.json", {"a": [[cand(G1, 3, 0.2), cand(G2, 2, 0.9)],
                                 [cand(G3, 3, 0.9), cand(G4, 2, 0.6)]]})
    p2 = preds("m2.json", {"a": [[cand(G2, 2, 0.1), cand(G5, 1, 1.0)],
                                 [cand(G3, 1, 0.1), cand(G4, 2, 0.6)]],
                           "c": [[cand(G5)]]})
    alone, _ = submit(p1)
    assert attempts(alone["a"][0]) == (G1, G2) and attempts(alone["a"][1]) == (G3, G4)
    sub, stdout = submit(p1, p2)
    assert list(sub) == ["a", "c"], f"tasks {list(sub)}"
    # test 0: G2 now has 2+2 votes, more than G1's 3
    assert attempts(sub["a"][0]) == (G2, G1), f"test 0: {attempts(sub['a'][0])}"
    # test 1: 4 votes each; G3's vote-weighted mean_q (3*0.9 + 1*0.1)/4 = 0.7 beats G4's 0.6
    # (the unweighted mean (0.9 + 0.1)/2 = 0.5 would not)
    assert attempts(sub["a"][1]) == (G3, G4), f"test 1: {attempts(sub['a'][1])}"
    sub_rev, _ = submit(p2, p1)
    assert attempts(sub_rev["a"][1]) == (G3, G4) and list(sub_rev) == ["a", "c"]
    assert "from 2 file(s)" in stdout, stdout


def check_submission_weighted_mean_exact():
    ranked, _, n_empty = submission.merge([preds("w1.json", {"t": [[cand(G1, 3, 0.9), cand([], 1, 0.0)]]}),
                                           preds("w2.json", {"t": [[cand(G1, 1, 0.1)]]})])
    (grid, votes, mean_q), = ranked["t"][0]
    assert (grid, votes, n_empty) == (((1,),), 4, 1), (grid, votes, n_empty)
    assert abs(mean_q - 0.7) < 1e-12, mean_q


def check_submission_tasks():
    p = preds("t.json", {"b": [[cand(G1)]], "a": [[cand(G2)], [cand(G3), cand(G4)]], "z": [[cand(G5)]]})
    ch = write("t_challenges.json", {"a": {"train": [], "test": [{"input": G1}, {"input": G1}]},
                                     "b": {"train": [], "test": [{"input": G1}]},
                                     "c": {"train": [], "test": [{"input": G1}, {"input": G1}]}})
    sub, stdout = submit(p, "--tasks", ch)
    assert list(sub) == ["a", "b", "c"], f"tasks {list(sub)} (challenge order, z dropped)"
    assert [attempts(e) for e in sub["a"]] == [(G2, G2), (G3, G4)]
    assert [attempts(e) for e in sub["c"]] == [([[0]], [[0]])] * 2
    for phrase in ("3 tasks", "5 test inputs", "2 without a prediction", "1 challenge tasks missing",
                   "1 predicted tasks not in the challenge"):
        assert phrase in stdout, f"summary lacks {phrase!r}: {stdout!r}"
    bad = write("bad_challenges.json", {"a": {"train": [], "test": [{"input": G1}] * 3}})
    expect_error("submission.py", [path_in_tmp("sub", "x.json"), p, "--tasks", bad], p, '"a"', "3")


def check_submission_score():
    p = preds("s.json", {"a": [[cand(G1, 2), cand(G2, 1)], [cand(G3)]],   # test 0 by attempt_2, test 1 wrong
                         "b": [[cand(G4, 5), cand(G5, 1)]],               # solved by attempt_1
                         "d": [[cand(G1)]]})                               # not in the solutions: ignored
    sol = write("s_solutions.json", {"a": [G2, G4], "b": [G4], "c": [G5]})   # c never predicted: 0
    _, stdout = submit(p, "--solutions", sol)
    lines = stdout.splitlines()
    assert len(lines) == 2 and lines[1] == "score 0.5000 (1.5 / 3 tasks)", f"score lines {lines}"
    ch = write("s_challenges.json", {"a": {"train": [], "test": [{"input": G1}] * 2},
                                     "b": {"train": [], "test": [{"input": G1}]}})
    _, stdout = submit(p, "--tasks", ch, "--solutions", write("s2_solutions.json", {"a": [G2, G3], "b": [G1]}))
    assert stdout.splitlines()[1] == "score 0.5000 (1 / 2 tasks)", stdout


def expect_error(script, args, culprit, *phrases):
    """The tool exits 1 with exactly one stderr line "error: <culprit>..." (other lines may only be warnings)
    mentioning `phrases`, without a traceback or an output file (nor its temporary file)."""
    rc, stdout, stderr = run_tool(script, *args)
    assert rc == 1, f"exit status {rc}, expected 1 (stderr {stderr.strip()!r})"
    assert "Traceback" not in stderr, f"traceback on stderr: {stderr!r}"
    errors = [line for line in stderr.splitlines() if "error: " in line]
    others = [line for line in stderr.splitlines() if line not in errors and ": warning: " not in line]
    assert len(errors) == 1 and not others, f"stderr is not one error line (and warnings): {stderr!r}"
    assert f"error: {culprit}" in errors[0], f"error {errors[0]!r} does not start with {culprit!r}"
    for phrase in phrases:
        assert phrase in errors[0], f"error {errors[0]!r} does not mention {phrase!r}"
    if script == "submission.py":
        assert not os.path.exists(args[0]), "an output file was written"
        assert not os.path.exists(args[0] + ".tmp"), "a temporary file was left behind"


def submission_malformed_cases():
    ok = preds("ok.json", {"a": [[cand(G1)]]})
    bad_preds = {
        "missing_file": (os.path.join(TMP, "absent.json"), "cannot read"),
        "bad_json": ('{"tasks": {', "bad JSON"),
        "not_utf8": (None, "UTF-8"),
        "top_level_list": ([1, 2], '"tasks"'),
        "tasks_not_object": ({"tasks": [1]}, '"tasks"'),
        "inputs_not_lists": ({"tasks": {"a": [cand(G1)]}}, "candidate lists"),
        "candidate_not_object": ({"tasks": {"a": [[[1]]]}}, "candidate 0"),
        "missing_votes": ({"tasks": {"a": [[{"mean_q": 0.1, "grid": G1}]]}}, '"votes"'),
        "zero_votes": ({"tasks": {"a": [[cand(G1, 0)]]}}, '"votes"'),
        "bool_votes": ({"tasks": {"a": [[cand(G1, True)]]}}, '"votes"'),
        "string_mean_q": ({"tasks": {"a": [[cand(G1, 1, "x")]]}}, '"mean_q"'),
        "grid_not_list": ({"tasks": {"a": [[cand(7)]]}}, "grid"),
        "ragged_grid": ({"tasks": {"a": [[cand([[1, 2], [3]])]]}}, "different lengths"),
        "colour_10": ({"tasks": {"a": [[cand([[10]])]]}}, "0..9"),
        "test_count_disagrees": ({"tasks": {"a": [[cand(G1)], [cand(G2)]]}}, "ok.json"),
        # json.load would accept these (NaN/Infinity, 1e999 -> inf, the last of two keys) or raise out of them
        "nan_mean_q": (RAW_CAND.replace("MEAN_Q", "NaN"), "NaN is not a number"),
        "infinity_mean_q": (RAW_CAND.replace("MEAN_Q", "Infinity"), "Infinity is not a number"),
        "minus_infinity_mean_q": (RAW_CAND.replace("MEAN_Q", "-Infinity"), "-Infinity is not a number"),
        "overflowing_mean_q": (RAW_CAND.replace("MEAN_Q", "1e999"), "1e999 is out of range"),
        "huge_integer": (RAW_CAND.replace("MEAN_Q", "9" * 5000), "bad JSON"),
        "deep_nesting": ('{"tasks": {"a": ' + "[" * 100000 + "]" * 100000 + "}}", "nested too deeply"),
        "duplicate_task": ('{"tasks": {"a": [[]], "a": [[]]}}', 'key "a" appears twice'),
        "mean_q_above_1": ({"tasks": {"a": [[cand(G1, 1, 1.5)]]}}, '"mean_q" is 1.5, expected a number 0..1'),
        "votes_above_int32": ({"tasks": {"a": [[cand(G1, 2**31)]]}}, '"votes" is 2147483648'),
        "grid_31x31": ({"tasks": {"a": [[cand([[1] * 31] * 31)]]}}, "31x31, expected sides 1..30"),
        "grid_1x31": ({"tasks": {"a": [[cand([[1] * 31])]]}}, "1x31"),
        "no_test_inputs": ({"tasks": {"a": []}}, "no test inputs"),
        "empty_task_name": ({"tasks": {"": [[cand(G1)]]}}, "task name is empty"),
    }
    cases = {}
    for case, (content, phrase) in bad_preds.items():
        if case == "missing_file":
            path = content
        elif content is None:
            path = path_in_tmp("malformed", case + ".json")
            with open(path, "wb") as f:
                f.write(b'{"tasks": {"\xff": []}}')
        else:
            path = write(os.path.join("malformed", case + ".json"), content)
        cases["pred_" + case] = ([ok, path], path, phrase)
    for flag in ("tasks", "solutions"):
        for case, content, phrase in (("missing", None, "cannot read"), ("list", [1], "top level"),
                                      ("bad_task", {"a": 5}, '"a"'), ("empty", {}, "no tasks"),
                                      ("nan", '{"a": NaN}', "NaN"), ("duplicate_task", '{"a": 1, "a": 2}', '"a"'),
                                      ("deep_nesting", "[" * 100000 + "]" * 100000, "nested too deeply")):
            path = os.path.join(TMP, "absent_" + flag) if content is None else \
                write(os.path.join("malformed", f"{flag}_{case}.json"), content)
            cases[f"{flag}_{case}"] = ([ok, "--" + flag, path], path, phrase)
    bad_sol = write("malformed/solutions_ragged.json", {"a": [[[1, 2], [1]]]})
    cases["solutions_ragged"] = ([ok, "--solutions", bad_sol], bad_sol, "different lengths")
    count_sol = write("malformed/solutions_count.json", {"a": [G1, G1]})
    cases["solutions_count"] = ([ok, "--solutions", count_sol], count_sol, "2 test outputs")
    for flag, case, content, phrase in (
            ("tasks", "no_test", {"a": {"train": [], "test": []}}, '"test"'),
            ("tasks", "test_without_input", {"a": {"train": [], "test": [{"output": G1}]}}, '"input"'),
            ("tasks", "grid_31x1", {"a": {"train": [], "test": [{"input": [[0]] * 31}]}}, "31x1"),
            ("solutions", "empty_grid", {"a": [[]]}, "empty"),
            ("solutions", "grid_31x31", {"a": [[[0] * 31] * 31]}, "31x31")):
        path = write(os.path.join("malformed", f"{flag}_{case}.json"), content)
        cases[f"{flag}_{case}"] = ([ok, "--" + flag, path], path, phrase)
    return cases


def check_submission_malformed(args, culprit, phrase):
    expect_error("submission.py", [path_in_tmp("sub", "never.json")] + args, culprit, phrase)


def check_submission_unwritable():
    out = os.path.join(TMP, "no_such_dir", "out.json")
    expect_error("submission.py", [out, preds("u.json", {"a": [[cand(G1)]]})], out, "cannot write")


def check_submission_keeps_output():
    """A failure leaves OUT.json as it was: after a bad input, and when the final rename fails."""
    out = write("sub_keep/out.json", "previous\n")
    rc, _, stderr = run_tool("submission.py", out, write("keep_nan.json", RAW_CAND.replace("MEAN_Q", "NaN")))
    assert rc == 1 and stderr.count("error: ") == 1 and "Traceback" not in stderr, f"exit {rc}: {stderr!r}"
    with open(out, encoding="utf-8") as f:
        assert f.read() == "previous\n", "OUT.json changed"
    folder = os.path.dirname(path_in_tmp("sub_keep", "a_folder", "x"))   # os.replace() onto a folder fails
    rc, _, stderr = run_tool("submission.py", folder, preds("keep_ok.json", {"a": [[cand(G1)]]}))
    assert rc == 1 and f"error: {folder}: cannot write" in stderr and "Traceback" not in stderr, \
        f"exit {rc}: {stderr!r}"
    assert os.path.isdir(folder) and not os.path.exists(folder + ".tmp"), "the temporary file was left behind"


# ---------------------------------------------------------------- plot.py

LOG_A = """\
arc.cu train_etrm (CPU backend, FP32)  model=ETRM standard  D=64
parameters: 269698 (decoder 132738, encoder 136960)
training starts now
train step=1 loss=3.0000 token_acc=0.1000 grad_norm=2.0 lr=1.000e-04
progress step=1/4 (25.0%) elapsed=0m01s eta=0m03s
train step=2 loss=2.5000 token_acc=0.2000 grad_norm=1.5 lr=2.000e-04
eval step=2 set=eval tasks=2 samples=4 exact_acc=0.0000 pass@1=0.0000 pass@2=0.5000
train step=3 loss=9.9999 token_acc=0.9999 grad_norm=9.9 lr=3.000e-04
checkpoint step=2 path=/tmp/x/ckpt_00000002.bin
train step=oops loss=1.0
train the loss went down
resumed from /tmp/x/ckpt_00000002.bin at step 2
train step=3 loss=2.0000 token_acc=0.3000 grad_norm=1.0 lr=3.000e-04
train step=4 loss=2.2000 token_acc=0.2500 grad_norm=0.5 lr=4.000e-04
eval step=4 set=heldout tasks=1 samples=2 exact_acc=0.5000 pass@1=0.5000 pass@2=1.0000
eval step=4 set=eval tasks=2 samples=4 exact_acc=0.2500 pass@1=0.5000 pass@2=0.5000
eval step=4 set=eval tasks=2 samples=4 exact_acc=0.5000 pass@1=1.0000 pass@2=1.0000
"""

LOG_B = """\
train step=1 loss=4.0 kl=0.1
train step=2 loss=3.0 kl=0.2
"""

CSV_AB = """\
log,kind,set,step,loss,token_acc,grad_norm,lr,tasks,samples,exact_acc,pass@1,pass@2,kl
runA,train,,1,3.0000,0.1000,2.0,1.000e-04,,,,,,
runA,train,,2,2.5000,0.2000,1.5,2.000e-04,,,,,,
runA,train,,3,2.0000,0.3000,1.0,3.000e-04,,,,,,
runA,train,,4,2.2000,0.2500,0.5,4.000e-04,,,,,,
runA,eval,eval,2,,,,,2,4,0.0000,0.0000,0.5000,
runA,eval,eval,4,,,,,2,4,0.5000,1.0000,1.0000,
runA,eval,heldout,4,,,,,1,2,0.5000,0.5000,1.0000,
runB,train,,1,4.0,,,,,,,,,0.1
runB,train,,2,3.0,,,,,,,,,0.2
"""


def logs():
    return write("runA/log.txt", LOG_A), write("runB/log.txt", LOG_B)


def check_plot_parse():
    run = plot.parse_log(logs()[0])
    assert sorted(run["train"]) == [1, 2, 3, 4], f"train steps {sorted(run['train'])}"
    assert run["train"][3]["loss"] == "2.0000", f"step 3 after the resume: {run['train'][3]}"
    assert sorted(run["eval"]) == [("eval", 2), ("eval", 4), ("heldout", 4)], sorted(run["eval"])
    assert run["eval"][("eval", 4)]["pass@1"] == "1.0000", run["eval"][("eval", 4)]
    assert plot.moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]


def check_plot_csv():
    log_a, _ = logs()
    out = path_in_tmp("csv", "ab.csv")
    rc, stdout, stderr = run_tool("plot.py", os.path.dirname(log_a), os.path.join(TMP, "runB"), "--csv", out,
                                  "--out", path_in_tmp("csv", "ab.png"))
    assert rc == 0, f"plot.py exited {rc}: {stderr.strip()}"
    with open(out, encoding="utf-8") as f:
        text = f.read()
    assert text == CSV_AB, f"CSV differs:\n{text}"
    # "train step=oops" and "train the loss went down"; runB has no malformed line
    warning = f"warning: {log_a}: skipped 2 malformed line(s) (lines 10, 11)"
    assert stderr.count("warning:") == 1 and warning in stderr, f"stderr {stderr!r}"
    for phrase in ("runA (", "4 train steps (1..4), 3 eval points (sets eval, heldout)", "runB (",
                   "2 train steps (1..2), 0 eval points", f"wrote {out}"):
        assert phrase in stdout, f"summary lacks {phrase!r}:\n{stdout}"
    lines = {line.split()[0]: line for line in stdout.splitlines()[1:6]}
    assert "last=2.2000 (step 4)" in lines["loss"] and "best=2.0000 (step 3)" in lines["loss"], lines["loss"]
    assert "best=0.3000 (step 3)" in lines["token_acc"], lines["token_acc"]
    assert "min=0.5 max=2.0" in lines["grad_norm"], lines["grad_norm"]
    assert "eval/pass@1[heldout]" in stdout and "eval/pass@2[eval]" in stdout, stdout


def check_plot_without_matplotlib():
    log_a, _ = logs()
    png = path_in_tmp("nompl", "curves.png")
    rc, stdout, stderr = run_tool("plot.py", log_a, "--out", png, "--keys", "loss,eval/pass@1", "--smooth", "2")
    assert rc == 0, f"plot.py exited {rc}: {stderr.strip()}"
    assert "matplotlib is not installed" in stderr, f"stderr {stderr!r}"
    assert not os.path.exists(png), "a PNG was written without matplotlib"
    with open(os.path.splitext(png)[0] + ".csv", encoding="utf-8") as f:
        assert f.read() == "".join(line[:line.rindex(",")] + "\n" for line in CSV_AB.splitlines()
                                   if line.startswith(("log", "runA"))), "CSV differs"
    keys = [line.split()[0] for line in stdout.splitlines() if line.startswith("  ")]
    assert keys == ["loss", "eval/pass@1[eval]", "eval/pass@1[heldout]"], f"summary keys {keys}"


def check_plot_unknown_key():
    log_a, _ = logs()
    expect_error("plot.py", [log_a, "--keys", "loss,nope", "--out", path_in_tmp("k", "k.png")],
                 "unknown key 'nope'", "available: loss, token_acc, grad_norm, lr, eval/tasks", "eval/pass@2")
    assert not os.path.exists(path_in_tmp("k", "k.csv")), "a CSV was written despite the error"


def check_plot_bad_logs():
    expect_error("plot.py", [os.path.join(TMP, "absent_run")], os.path.join(TMP, "absent_run"), "no such log")
    empty = write("empty_run/log.txt", "arc.cu train_etrm\nprogress step=1/2\n")
    expect_error("plot.py", [empty], empty, "no train or eval lines")


LOG_MALFORMED = """\
train step=1 loss=3.0
train step=\u00b2 loss=9.0
eval step=1 pass@1=0.5
train step=2 loss
diag =1 step=2
val epoch=1 loss=8.0
train step=2 loss=2.0
"""


def check_plot_malformed_lines():
    """Malformed train/eval/diag/val lines are skipped with one warning naming the file and the lines."""
    log = write("malformed_run/log.txt", LOG_MALFORMED)
    out = path_in_tmp("malformed_run", "out.csv")
    rc, stdout, stderr = run_tool("plot.py", log, "--csv", out, "--out", path_in_tmp("malformed_run", "out.png"))
    assert rc == 0 and "Traceback" not in stderr, f"plot.py exited {rc}: {stderr!r}"
    warnings = [line for line in stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1, f"expected one warning: {stderr!r}"
    for phrase in (f"warning: {log}: skipped 5 malformed line(s) (lines 2, 3, 4, 5, 6)", "not a whole number"):
        assert phrase in warnings[0], f"warning {warnings[0]!r} lacks {phrase!r}"
    with open(out, encoding="utf-8") as f:
        assert f.read() == "log,kind,set,step,loss\nmalformed_run,train,,1,3.0\nmalformed_run,train,,2,2.0\n", \
            "CSV differs"
    only_bad = write("malformed_only/log.txt", "".join(LOG_MALFORMED.splitlines(True)[1:6]))
    expect_error("plot.py", [only_bad], only_bad, "no train or eval lines (5 malformed line(s) skipped)")


def check_plot_keeps_output():
    """A CSV or PNG path that cannot be replaced is an error line, and no temporary file is left."""
    log_a, _ = logs()
    folder = os.path.dirname(path_in_tmp("plot_keep", "a_folder", "x"))   # os.replace() onto a folder fails
    rc, _, stderr = run_tool("plot.py", log_a, "--csv", folder, "--out", path_in_tmp("plot_keep", "c.png"))
    errors = [line for line in stderr.splitlines() if "error: " in line]
    assert rc == 1 and len(errors) == 1 and f"error: {folder}: cannot write" in errors[0] and \
        "Traceback" not in stderr, f"exit {rc}: {stderr!r}"
    assert os.path.isdir(folder) and not os.path.exists(folder + ".tmp"), "the temporary file was left behind"


def make_matplotlib_stand_in():
    """TMP/no_matplotlib/matplotlib/__init__.py raising ImportError (see the module docstring)."""
    path = path_in_tmp("no_matplotlib", "matplotlib", "__init__.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write('raise ImportError("matplotlib hidden by test_tools.py")\n')
    os.makedirs(os.path.join(TMP, "sub"))


def run_checks():
    make_matplotlib_stand_in()
    check("submission_one_file", check_submission_one_file)
    check("submission_merge", check_submission_merge)
    check("submission_weighted_mean", check_submission_weighted_mean_exact)
    check("submission_tasks", check_submission_tasks)
    check("submission_score", check_submission_score)
    for case, spec in submission_malformed_cases().items():
        check("submission_malformed_" + case, check_submission_malformed, *spec)
    check("submission_unwritable", check_submission_unwritable)
    check("submission_keeps_output", check_submission_keeps_output)
    check("plot_parse", check_plot_parse)
    check("plot_csv", check_plot_csv)
    check("plot_without_matplotlib", check_plot_without_matplotlib)
    check("plot_unknown_key", check_plot_unknown_key)
    check("plot_bad_logs", check_plot_bad_logs)
    check("plot_malformed_lines", check_plot_malformed_lines)
    check("plot_keeps_output", check_plot_keeps_output)


def main():
    global TMP
    with tempfile.TemporaryDirectory(prefix="test_tools_") as TMP:
        run_checks()
    finish()


if __name__ == "__main__":
    main()
