#!/usr/bin/env python3
"""Tests for dev/generalise.py (issue 15's generalisation study) with test/fake_train_etrm.py, a stand-in trainer
that writes train_etrm's log lines, predictions and weights in milliseconds; standard library only, about 10 s.

Run from the repository root:  python3 test/test_generalise.py
Prints "PASS name" / "FAIL name: why" / "SKIP name: why" per check, then "<N> passed, <M> failed"; exits 1 if
anything failed. The studies run in a temporary folder as `python3 dev/generalise.py` subprocesses with matplotlib
hidden (a stand-in package first on PYTHONPATH), except the check of the figures, which is SKIP where this python
has no matplotlib. The data is a tiny real benchmark that the runner makes with data/synth.py (24 / 12 / 6 tasks).
Checks: --dry-run prints the data, row, demo-control and latent_opt commands (a demo-control run that a live
process runs is left to it) and writes nothing; a first run where one row fails and one is killed by SIGKILL mid-run
(the rows get OMP_NUM_THREADS = cores / jobs, the copied trainer, their flags; the failures are reported with their reasons;
demo-control and latent_opt runs for the done rows only); a rerun skips done rows, demo-control and latent_opt runs,
resumes the killed row with resume=1 (the trainer refuses anything but 0/1) and runs its evaluations; the
latent_opt commands (eval_only, the newest weights, the row's flags, eval and heldout only) and their table; the
demo-control commands (eval_shuffle_demos=0 / 1 in demos_true / demos_shuffled, no row with encoder_type=none) and
the demo gaps of the fake trainer's eval lines in the tables, results.json and the seed summary; the
table, the seed summary and the per-family pass@2 of the run against the rule the fake trainer answers by; a study
of hand-written logs: exact table values (pass@K, the encoder gradient share, means over the last train lines,
ms/step, wall, eval s/task), malformed and resumed log lines, an unreadable predictions file, rows running (a live
process), failed (error line, signal), stopped and not started, three seeds' mean ± std; a second runner of the
same folder is refused while the first is alive (which the report shows as running); bad configurations are one
error line; the figures (fig_demo_gap.png with demo_control); dev/sweeps/generalise_cpu.json, and
generalise_best.json (make run-generalise) is the same recipe as one of its rows.
"""
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "dev"))
sys.path.insert(0, os.path.join(ROOT, "data"))
from harness import Skip, check, finish  # noqa: E402
import arc_format  # noqa: E402
import generalise  # noqa: E402

SCRIPT = os.path.join(ROOT, "dev", "generalise.py")
FAKE = os.path.join(ROOT, "test", "fake_train_etrm.py")
TMP = None          # scratch folder, made by main()
ROWS = ["std_seed1", "std_seed2", "trm", "fails", "killed"]


def path(*parts):
    return os.path.join(TMP, *parts)


def read(*parts):
    with open(path(*parts), encoding="utf-8") as f:
        return f.read()


def config(**changes):
    """The study of the fake-trainer checks (out: TMP/out), with top-level keys replaced."""
    c = {"name": "test", "out": path("out"), "trainer": FAKE,
         "data": {"dir": path("data"), "tasks": 24, "eval_tasks": 12, "heldout_tasks": 6},
         "common": {"hidden_size": 64, "max_steps": 20, "eval_interval_steps": 10, "log_every": 5,
                    "max_eval_groups": 8, "lr": 0.001},
         "rows": [{"name": "std_seed1", "flags": {"seed": 1}}, {"name": "std_seed2", "flags": {"seed": 2}},
                  {"name": "trm", "flags": {"encoder_type": "none"}}, {"name": "fails", "flags": {}},
                  {"name": "killed", "flags": {"lr": 0.002}}],
         "demo_control": {"max_eval_groups": 6},
         "latent_opt": {"rows": ["std_seed1", "killed"], "steps": [0, 4], "lr": 0.05, "max_eval_groups": 4}}
    c.update(changes)
    return c


def write_config(name, obj):
    p = path(name)
    with open(p, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return p


def study(*args, env=None, matplotlib=False, timeout=60):
    """Runs dev/generalise.py with the fake trainer's environment `env`; returns (rc, stdout, stderr)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_")}
    e.update(env or {})
    if not matplotlib:
        e["PYTHONPATH"] = os.pathsep.join(filter(None, (path("no_matplotlib"), os.environ.get("PYTHONPATH"))))
    p = subprocess.run([sys.executable, SCRIPT, *args], cwd=TMP, capture_output=True, text=True, timeout=timeout, env=e)
    return p.returncode, p.stdout, p.stderr


# OMP_NUM_THREADS of each run under the default --jobs 2: the cores shared out
OMP = str(max(1, (os.cpu_count() or 1) // 2))


def runs(*parts):
    """The invocations the fake trainer recorded in a folder: [{"exe", "argv", "omp"}]."""
    try:
        return [json.loads(line) for line in read(*parts, "argv.txt").splitlines()]
    except FileNotFoundError:
        return []


def flags_of(argv):
    return dict(a.split("=", 1) for a in argv)


def rows_of(md):
    """{first cell: [cells]} of the markdown table lines."""
    table = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| row "):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            table.setdefault(cells[0], []).append(cells)
    return table


def expected_pass(tasks, shift):
    """{family: [pass@1, pass@2, tasks]} and the overall pair under the fake trainer's rule."""
    fams, total = {}, [0.0, 0.0]
    for i, t in enumerate(tasks):
        ranks = [(i + j + shift) % 3 for j in range(len(t["test"]))]
        p1 = sum(r == 0 for r in ranks) / len(ranks)
        p2 = sum(r < 2 for r in ranks) / len(ranks)
        f = fams.setdefault(t["name"].rsplit("_", 1)[0], [0.0, 0.0, 0])
        f[0], f[1], f[2] = f[0] + p1, f[1] + p2, f[2] + 1
        total[0] += p1
        total[1] += p2
    n = len(tasks)
    return {k: [v[0] / v[2], v[1] / v[2], v[2]] for k, v in fams.items()}, (total[0] / n, total[1] / n)


def pct(v):
    return f"{100 * v:.1f}"


def make_matplotlib_stand_in():
    folder = path("no_matplotlib", "matplotlib")
    os.makedirs(folder)
    with open(os.path.join(folder, "__init__.py"), "w") as f:
        f.write("raise ImportError('matplotlib hidden by test_generalise.py')\n")


# ---------------------------------------------------------------- checks

def check_dry_run():
    cfg = write_config("study.json", config())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "checkpoint_path=" + path("out", "std_seed2", "demos_shuffled")])
    try:
        rc, out, err = study("run", cfg, "--dry-run")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert rc == 0, f"exit {rc}: {err}"
    lines = out.splitlines()
    data = lines[lines.index("# the data:") + 1]
    assert shlex.split(data)[1:] == [os.path.join(ROOT, "data", "synth.py"), path("data"), "--tasks", "24",
                                     "--eval-tasks", "12", "--heldout-tasks", "6", "--sequences", "0",
                                     "--val-sequences", "0"], data
    commands = [shlex.split(line) for line in lines if line.startswith(f"OMP_NUM_THREADS={OMP} ")]
    assert len(commands) == 5 + 7 + 4, f"{len(commands)} commands (want 5 rows + 4 x 2 - 1 demo + 2 x 2 latent):\n{out}"
    assert f"# demo_control std_seed2 shuffled demos: running in pid {sleeper.pid}, left to it" in out, out
    copy = path("out", "bin", "fake_train_etrm.py")
    assert all(c[1] == copy for c in commands), commands[0]
    f = flags_of(commands[0][2:])
    assert f == {"hidden_size": "64", "max_steps": "20", "eval_interval_steps": "10", "log_every": "5",
                 "max_eval_groups": "8", "lr": "0.001", "seed": "1", "data_paths": path("data", "train.bin"),
                 "data_paths_test": ",".join(path("data", s + ".bin") for s in ("train", "eval", "heldout")),
                 "checkpoint_path": path("out", "std_seed1")}, f
    demo = [flags_of(c[2:]) for c in commands[5:12]]
    assert [(d["checkpoint_path"], d["eval_shuffle_demos"]) for d in demo[:3]] == [
        (path("out", "std_seed1", "demos_true"), "0"), (path("out", "std_seed1", "demos_shuffled"), "1"),
        (path("out", "std_seed2", "demos_true"), "0")], demo
    assert all("latent_opt_steps" not in d and d["eval_only"] == "1" and d["max_eval_groups"] == "6" for d in demo)
    assert not any("trm" in d["checkpoint_path"] for d in demo), "a demo control for encoder_type=none"
    latent = flags_of(commands[12 + 1][2:])
    assert latent["load_checkpoint"] == path("out", "std_seed1", "model_XXXXXXXX.safetensors"), latent
    assert latent["latent_opt_steps"] == "4" and latent["eval_only"] == "1" and "resume" not in latent, latent
    assert "# latent_opt std_seed1 K=4 (once the row is done" in out, out
    assert not os.path.exists(path("out")) and not os.path.exists(path("data")), "--dry-run wrote something"


def check_first_run():
    cfg = write_config("study.json", config())
    rc, out, err = study("run", cfg, env={"FAKE_FAIL": "fails", "FAKE_KILL": "killed:15"})
    assert rc == 1, f"exit {rc} with a failed row (want 1): {err}\n{out}"
    assert os.path.isfile(path("data", "heldout.bin")), "the data was not made"
    assert "row std_seed1: done" in out and "row trm: done" in out, out
    assert "row fails: failed (error: step 3: the loss is nan" in out, out
    assert "row killed: failed (killed by signal 9 (out of memory?))" in out, out
    assert "latent_opt std_seed1 K=0: done" in out and "latent_opt std_seed1 K=4: done" in out, out
    assert "latent_opt killed K=0: skipped, the row is not done" in out, out
    assert "demo_control std_seed2 shuffled demos: done" in out, out
    assert "demo_control killed true demos: skipped, the row is not done" in out and "demo_control trm" not in out, out
    assert out.index("demo_control killed shuffled") < out.index("latent_opt std_seed1 K=0"), "demo control first"
    assert "3 of 5 rows done, 4 of 8 demo-control runs done, 2 of 4 latent_opt runs done" in out, out
    (first,) = runs("out", "std_seed1")
    assert first["exe"] == path("out", "bin", "fake_train_etrm.py") and first["omp"] == OMP, first
    f = flags_of(first["argv"])
    assert f["seed"] == "1" and f["checkpoint_path"] == path("out", "std_seed1") and "resume" not in f, f
    std = read("out", "killed", "stdout.txt")
    assert std.startswith(generalise.START) and generalise.END + " signal=9 " in std, std[-300:]
    assert json.loads(read("out", "config.json")) == config(), "config.json is not the configuration"
    res = {r["name"]: r for r in json.loads(read("out", "results.json"))["rows"]}
    assert [res[n]["status"] for n in ROWS] == ["done", "done", "done", "failed", "failed"], res
    assert res["fails"]["reason"].startswith("error: step 3: the loss is nan"), res["fails"]["reason"]
    assert res["killed"]["reason"] == "killed by signal 9 (out of memory?)" and res["killed"]["step"] == 10, \
        res["killed"]
    md = read("out", "results.md")
    assert "| fails | failed: error: step 3: the loss is nan" in md, md
    assert "| killed | failed: killed by signal 9 (out of memory?) | lr=0.002 | 10/20 | 10 |" in md, md
    assert "| killed | 0 | not started: waits for the row (failed) |" in md, md
    assert "| killed | not started: waits for the row (failed) | - / - | - |" in md, md
    assert "Figures skipped: matplotlib is not installed" in md and err.count("matplotlib is not installed") == 1, err


def check_rerun():
    cfg = path("study.json")
    rc, out, err = study("run", cfg, "--dry-run")
    assert rc == 0 and "# row 1/5 std_seed1: done, skipped" in out and "# row 5/5 killed (resuming)" in out, out
    resumed = [shlex.split(line) for line in out.splitlines() if "checkpoint_path=" + path("out", "killed") in line
               and "eval_only=1" not in line]
    assert len(resumed) == 1 and resumed[0][-1] == "resume=1", resumed
    rc, out, err = study("run", cfg)
    assert rc == 0, f"exit {rc}: {err}\n{out}"
    assert "row std_seed1: done before, skipped" in out and "row killed (resumed): done" in out, out
    assert "row fails: done" in out and "latent_opt std_seed1 K=4: done before, skipped" in out, out
    assert "latent_opt killed K=4: done" in out and "demo_control killed shuffled demos: done" in out, out
    assert "demo_control std_seed1 true demos: done before, skipped" in out, out
    assert "5 of 5 rows done, 8 of 8 demo-control runs done, 4 of 4 latent_opt runs done" in out, out
    assert [len(runs("out", n)) for n in ROWS] == [1, 1, 1, 2, 2], "which rows ran again"
    assert len(runs("out", "std_seed1", "latent_opt_K4")) == 1, "a done latent_opt run ran again"
    assert len(runs("out", "std_seed1", "demos_shuffled")) == 1, "a done demo-control run ran again"
    killed = [flags_of(r["argv"]) for r in runs("out", "killed")]
    assert "resume" not in killed[0] and killed[1]["resume"] == "1", killed
    assert "resume" not in flags_of(runs("out", "fails")[1]["argv"]), "resume=1 without a checkpoint"
    log = read("out", "killed", "log.txt")
    assert f"resumed from {path('out', 'killed')}/ckpt_00000010.bin at step 10" in log, log[-400:]
    assert read("out", "killed", "stdout.txt").count(generalise.START) == 2, "one start line per attempt"
    md = read("out", "results.md")
    assert "Rows: 5 done." in md and "Resumed: killed." in md, md


def check_latent_opt():
    (run,) = runs("out", "std_seed1", "latent_opt_K4")
    f = flags_of(run["argv"])
    want = {"eval_only": "1", "load_checkpoint": path("out", "std_seed1", "model_00000020.safetensors"),
            "latent_opt_steps": "4", "latent_opt_lr": "0.05", "max_eval_groups": "4", "seed": "1",
            "checkpoint_path": path("out", "std_seed1", "latent_opt_K4"), "hidden_size": "64",
            "data_paths_test": path("data", "eval.bin") + "," + path("data", "heldout.bin")}
    assert {k: f.get(k) for k in want} == want and "resume" not in f and run["omp"] == OMP, f
    assert flags_of(runs("out", "killed", "latent_opt_K0")[0]["argv"])["lr"] == "0.002", "the row's own flags"
    table = rows_of(read("out", "results.md"))
    e, _ = arc_format.read_tasks(path("data", "eval.bin"))
    h, _ = arc_format.read_tasks(path("data", "heldout.bin"))
    for k, demo in ((0, "-"), (4, "2.0000 → 1.9600")):
        _, (e1, e2) = expected_pass(e[:4], 1 + k)
        _, (h1, h2) = expected_pass(h[:4], 1 + k)
        (cells,) = [c for c in table["std_seed1"] if c[1] == str(k)]
        log = read("out", "std_seed1", f"latent_opt_K{k}", "log.txt")
        acc = {f["set"]: pct(float(f["token_acc"])) for f in (dict(kv.split("=", 1) for kv in line.split()[1:])
                                                             for line in log.splitlines() if line.startswith("eval "))}
        assert cells[2:] == ["done", f"{pct(e1)} / {pct(e2)}", f"{pct(h1)} / {pct(h2)}", acc["eval"], acc["heldout"],
                             demo, demo, "0.1", "0.1"], (k, cells)


def check_demo_control():
    """The demo-control runs' commands and the demo gaps of the fake trainer's lines (shuffled demos: token_acc
    0.1 + 0.01 seed lower, 0.02 on heldout; lm_loss 3 times that higher)."""
    for demos, d in (("true", "0"), ("shuffled", "1")):
        (run,) = runs("out", "std_seed1", f"demos_{demos}")
        f = flags_of(run["argv"])
        want = {"eval_only": "1", "load_checkpoint": path("out", "std_seed1", "model_00000020.safetensors"),
                "eval_shuffle_demos": d, "max_eval_groups": "6", "seed": "1", "hidden_size": "64",
                "checkpoint_path": path("out", "std_seed1", f"demos_{demos}"),
                "data_paths_test": path("data", "eval.bin") + "," + path("data", "heldout.bin")}
        assert {k: f.get(k) for k in want} == want and run["omp"] == OMP, f
        assert "resume" not in f and "latent_opt_steps" not in f, f
    assert flags_of(runs("out", "killed", "demos_shuffled")[0]["argv"])["lr"] == "0.002", "the row's own flags"
    shuffled = path("out", "std_seed1", "demos_shuffled", "predictions_step00000000_eval_shuffled_demos.json")
    assert os.path.isfile(shuffled), "the shuffled run's predictions file"
    assert not os.path.exists(path("out", "trm", "demos_true")), "a demo control for encoder_type=none"
    res = json.loads(read("out", "results.json"))
    rows = {r["name"]: r for r in res["rows"]}
    assert rows["trm"]["demo_gap"] is None, rows["trm"]["demo_gap"]
    for name, seed in (("std_seed1", 1), ("std_seed2", 2), ("killed", 0)):
        g = rows[name]["demo_gap"]
        want = {"eval": (0.1 + 0.01 * seed, 0.3 + 0.03 * seed), "heldout": (0.02, 0.06)}
        for s, (acc, loss) in want.items():
            assert abs(g[s]["token_acc"] - acc) < 1e-9 and abs(g[s]["lm_loss"] - loss) < 1e-9, (name, g)
    demo = res["demo_control"]
    assert [(d["row"], d["demos"], d["status"]) for d in demo] == [
        (n, k, "done") for n in ("std_seed1", "std_seed2", "fails", "killed") for k in ("true", "shuffled")], demo
    assert demo[1]["sets"]["eval"]["token_acc"] == 0.39 and demo[1]["sets"]["heldout"]["lm_loss"] == 1.56, demo[1]
    (group,) = res["seed_groups"]
    assert [round(v, 9) for v in group["eval demo gap token_acc"]] == [0.11, 0.12], group
    md = read("out", "results.md")
    assert "**Demo gap**" in md and "## Demo control" in md, md
    cells = [c for c in rows_of(md)["std_seed2"] if c[1] == "done" and "/" in c[2]]
    assert cells == [["std_seed2", "done", "50.0 / 38.0", "+12.0", "1.500 / 1.860", "+0.360", "50.0 / 48.0", "+2.0",
                      "1.500 / 1.560", "+0.060", cells[0][-1]]], cells
    line = next(line for line in md.splitlines() if line.startswith("- **std**"))
    assert "eval demo gap token_acc 11.0 / 12.0 (mean 11.5); eval demo gap lm_loss 0.330 / 0.360 (mean 0.345); " \
           "heldout demo gap token_acc 2.0 / 2.0 (mean 2.0)" in line, line


def check_run_table():
    """The table of the fake run: values of the fake trainer's lines and its predictions against the truths."""
    md = read("out", "results.md")
    table = rows_of(md)
    e, _ = arc_format.read_tasks(path("data", "eval.bin"))
    h, _ = arc_format.read_tasks(path("data", "heldout.bin"))
    t, _ = arc_format.read_tasks(path("data", "train.bin"))
    _, (t1, t2) = expected_pass(t[:8], 1)
    fam_e, (e1, e2) = expected_pass(e[:8], 1)
    fam_h, (h1, h2) = expected_pass(h[:8], 1)
    row = table["std_seed1"][0]
    assert row == ["std_seed1", "done", "seed=1", "20/20", "20", f"{pct(t1)} / {pct(t2)}", f"{pct(e1)} / {pct(e2)}",
                   f"{pct(h1)} / {pct(h2)}", "90.0", "90.0", "+11.0", "+0.330", "+2.0", "0.125", "0.360", "75.0",
                   "12.5", "65 s", "0.1"], row
    assert table["trm"][0][10:15] == ["n/a"] * 5, table["trm"][0]
    res = {r["name"]: r for r in json.loads(read("out", "results.json"))["rows"]}
    fams = res["std_seed1"]["families"]
    assert fams["eval"]["file"] == "predictions_step00000020_eval.json", fams["eval"]
    got = {f: [v["pass@1"], v["pass@2"], v["tasks"]] for f, v in fams["eval"]["families"].items()}
    assert got == fam_e, (got, fam_e)
    assert {f: v["pass@2"] for f, v in fams["heldout"]["families"].items()} == {f: v[1] for f, v in fam_h.items()}
    assert abs(fams["eval"]["all"]["pass@2"] - e2) < 1e-12, "per-family total vs the eval line"
    eval_rows = rows_of(md.split("### eval")[1].split("###")[0])
    first = next(iter(fam_e))
    cell, last = eval_rows["std_seed1"][0][2], eval_rows["std_seed1"][0][-1]
    assert cell.startswith(f"{pct(fam_e[first][1])} / ") and cell.endswith(f" ({fam_e[first][2]})"), cell
    assert last == f"{pct(e2)} / {pct(fams['eval']['all']['cells'])}", last
    # the top answer's cell accuracy: the fraction of the true cells it gets right, 0 for another shape
    assert generalise.cell_accuracy([[1, 2], [3, 4]], [[1, 2], [3, 0]]) == 0.75
    assert generalise.cell_accuracy([[1, 2]], [[1, 2], [3, 0]]) == 0.0 == generalise.cell_accuracy(None, [[1]])
    assert generalise.cell_accuracy([[1, 2], [3]], [[1, 2], [3, 0]]) == 0.0
    a2 = expected_pass(e[:8], 1)[1][1], expected_pass(e[:8], 2)[1][1]
    line = next(line for line in md.splitlines() if line.startswith("- **std**"))
    assert "(std_seed1, std_seed2; 2 of 2 done)" in line, line
    assert f"eval pass@2 {pct(a2[0])} / {pct(a2[1])} (mean {pct(sum(a2) / 2)})" in line, line


def hand_log(*lines):
    return "\n".join(lines) + "\n"


def eval_line(step, name, p1, p2, token_acc=0.5, seconds=1.0, tasks=10):
    return (f"eval step={step} set={name} tasks={tasks} samples={tasks} lm_loss=1.0 token_acc={token_acc} "
            f"exact_acc={p1} q_halt_acc=0.8 pass@1={p1} pass@2={p2} pass@5={p2} seconds={seconds}")


def train_line(step, enc, dec, var, ms=100):
    return (f"train step={step} loss=1.5 lm_loss=1.5 q_halt_loss=0.01 kl=0 token_acc=0.5 exact_acc=0 q_halt_acc=1 "
            f"act_steps=2 lr=1e-3 grad_norm_enc={enc} grad_norm_dec={dec} grad_norm=5 encoder_cross_sample_var={var} "
            f"ms={ms} samples_per_s=100")


def write_file(text, *parts):
    os.makedirs(os.path.dirname(path(*parts)), exist_ok=True)
    with open(path(*parts), "w", encoding="utf-8") as f:
        f.write(text)


def check_hand_logs():
    names = ["hand", "absent", "busy", "broken", "oom", "halted", "s_seed1", "s_seed2", "s_seed3"]
    cfg = config(out=path("hand"), rows=[{"name": n, "flags": {"lr": 0.002} if n == "hand" else {}} for n in names])
    del cfg["latent_opt"], cfg["demo_control"]        # and so no demo-gap columns
    write_file(json.dumps(cfg), "hand", "config.json")
    write_file(hand_log(
        "arc.cu train_etrm (CPU backend on the host, FP32, 1 process)  model=ETRM standard",
        "data: 24 training tasks, 3 evaluation sets  steps: 100 (1.0 per epoch)  eval every 50 steps",
        train_line(10, 1, 0, 9), train_line(20, 3, 4, 0.1), train_line(30, 3.0, 4.0, 0.2), train_line(40, 0, 2, 0.3),
        train_line(50, 3, 4, 0.4), "train step=x loss=1", "train loss=1",
        eval_line(50, "train", 0.5, 0.75), eval_line(50, "eval", 0.125, 0.25, 0.6543, 12.0, 240),
        eval_line(50, "heldout", 0, 0.0333), "eval step=50 tasks=3 pass@2=1", "\x00garbage = =",
        train_line(60, "nan", 4, "nan", "nan"), "resumed from x/ckpt_00000050.bin at step 50",
        train_line(50, 3, 4, 0.6), eval_line(100, "train", 1, 1), "train step=70 loss=1.2 lm_lo",
        "timing steps=99 ms_per_step=123.4 steps_per_s=8.1 samples_per_s=259.3 tflops=0.001 elapsed=1h02m"),
        "hand", "hand", "log.txt")
    write_file("{not json", "hand", "hand", "predictions_step00000050_eval.json")
    write_file(f"{generalise.START} now: x\narc.cu\nerror: cannot open x.bin: No such file or directory\n",
               "hand", "broken", "stdout.txt")
    write_file(f"{generalise.START} now: x\narc.cu\n{generalise.END} signal=9 seconds=3.0 now\n",
               "hand", "oom", "stdout.txt")
    write_file(hand_log(train_line(10, 3, 4, 0.1)), "hand", "halted", "log.txt")
    write_file(f"{generalise.START} now: x\narc.cu\n", "hand", "halted", "stdout.txt")
    for i, p2 in enumerate((0.1, 0.2, 0.3), 1):
        write_file(hand_log(eval_line(100, "eval", 0, p2), "timing steps=9 ms_per_step=1 elapsed=0m01s"),
                   "hand", f"s_seed{i}", "log.txt")
    os.makedirs(path("hand", "busy"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "checkpoint_path=" + path("hand", "busy")])
    try:
        rc, out, err = study("report", path("hand"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert rc == 0 and "wrote " in out and err.count("matplotlib is not installed") == 1, (rc, out, err)
    md = read("hand", "results.md")
    table = rows_of(md)
    assert table["hand"][0] == ["hand", "done", "lr=0.002", "60/100", "50", "50.0 / 75.0", "12.5 / 25.0",
                                "0.0 / 3.3", "65.4", "50.0", "0.3", "0.270", "80.0", "123.4", "62 min", "0.05"], \
        table["hand"][0]
    assert table["absent"][0][1] == "not started" and table["busy"][0][1] == f"running (pid {sleeper.pid})", table
    assert table["broken"][0][1] == "failed: error: cannot open x.bin: No such file or directory", table["broken"]
    assert table["oom"][0][1] == "failed: killed by signal 9 (out of memory?)", table["oom"]
    assert table["halted"][0][1] == "stopped: no end line: its runner was stopped", table["halted"]
    assert table["halted"][0][3] == "10/20" and table["halted"][0][13] == "100.0", table["halted"]
    assert "Malformed log lines skipped: hand 4." in md and "Resumed: hand." in md, md
    assert "Not readable: hand: predictions_step00000050_eval.json: unreadable (" in md, md
    assert "- **s** (s_seed1, s_seed2, s_seed3; 3 of 3 done): eval pass@1 0.0 ± 0.0 (mean ± sample std of 3 " \
           "seeds); eval pass@2 20.0 ± 10.0 (mean ± sample std of 3 seeds); heldout pass@2 -;" in md, md
    res = {r["name"]: r for r in json.loads(read("hand", "results.json"))["rows"]}
    assert abs(res["hand"]["encoder_grad_share"] - 0.27) < 1e-12 and res["hand"]["train_lines_averaged"] == 5, res
    assert res["hand"]["wall_seconds"] == 3720 and res["hand"]["curves"]["train"]["pass@2"] == [[50, 0.75], [100, 1]]


def check_second_runner():
    cfg = write_config("slow.json", config(out=path("slow"), rows=[{"name": "only", "flags": {}}], latent_opt=None))
    e = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_")}
    e.update(FAKE_STEP_SECONDS="0.1", PYTHONPATH=path("no_matplotlib"))
    first = subprocess.Popen([sys.executable, SCRIPT, "run", cfg], cwd=TMP, env=e, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while not os.path.exists(path("slow", "only", "log.txt")) and time.time() < deadline and first.poll() is None:
            time.sleep(0.02)
        rc, out, err = study("run", cfg)
        assert rc == 1 and err.strip() == f"generalise.py: error: another generalise.py run (pid {first.pid}) is " \
            f"using {path('slow')}: wait for it to end", (rc, out, err)
        rc, out, err = study("report", cfg)
        assert rc == 0 and "| only | running (pid " in read("slow", "results.md"), (rc, err)
    finally:
        out, err = first.communicate(timeout=30)
    assert first.returncode == 0 and "row only: done" in out, (first.returncode, out, err)


def check_bad_configs():
    good = config()
    cases = {"reserved": (dict(good, common={"checkpoint_path": "x"}), "common: checkpoint_path is set by the study"),
             "unknown key": (dict(good, rowz=[]), "unknown key 'rowz'"),
             "no rows": (dict(good, rows=[]), "\"rows\" must be a non-empty list"),
             "twice": (dict(good, rows=[{"name": "a"}, {"name": "a"}]), "rows[1]: row a is given twice"),
             "bad name": (dict(good, rows=[{"name": "a/b"}]), "rows[0]: name \"a/b\" is not a folder name"),
             "resume": (dict(good, rows=[{"name": "a", "flags": {"resume": 1}}]), "(a).flags: resume is set by"),
             "bad value": (dict(good, rows=[{"name": "a", "flags": {"lr": [[1]]}}]), "flags.lr: [[1]] is not"),
             "data": (dict(good, data={"dir": "d", "tasks": 0, "eval_tasks": 1, "heldout_tasks": 1}),
                      "data.tasks: 0 is not a whole number >= 1"),
             "latent row": (dict(good, latent_opt={"rows": ["nope"], "steps": [0]}), "latent_opt.rows: nope is not"),
             "latent trm": (dict(good, latent_opt={"rows": ["trm"], "steps": [0, 10]}), "trm has encoder_type=none"),
             "latent steps": (dict(good, latent_opt={"rows": ["std_seed1"], "steps": [-1]}), "latent_opt.steps: -1"),
             "latent lr": (dict(good, latent_opt={"rows": ["std_seed1"], "steps": [1], "lr": 0}), "lr: 0 is not"),
             "demo type": (dict(good, demo_control=[240]), "demo_control: expected an object: max_eval_groups"),
             "demo key": (dict(good, demo_control={"rows": []}), "demo_control: unknown key 'rows'"),
             "demo groups": (dict(good, demo_control={"max_eval_groups": -1}), "max_eval_groups: -1 is not")}
    for name, (cfg, want) in cases.items():
        try:
            generalise.parse_config(cfg, "x.json")
        except generalise.SweepError as e:
            assert want in str(e), f"{name}: {e}"
            continue
        raise AssertionError(f"{name}: accepted")
    generalise.parse_config(dict(good, latent_opt={"rows": ["trm"], "steps": [0]}), "x.json")   # K=0 only: fine
    write_file("{\"name\": ", "broken.json")
    for args, want in ((["run", path("broken.json")], "broken.json: not JSON"),
                       (["run", write_config("bad.json", dict(good, rows=[{"name": "a", "flags": {"resume": 1}}]))],
                        "bad.json: rows[0] (a).flags: resume is set by the study"),
                       (["report", path("nowhere")], "nowhere: no such configuration file or study folder"),
                       (["report", path("no_matplotlib")], "has no config.json and no configuration of dev/sweeps/"),
                       (["run", write_config("notrainer.json", config(out=path("never"), trainer="./no_trainer"))],
                        "trainer ./no_trainer not found")):
        rc, out, err = study(*args)
        assert rc == 1 and err.startswith("generalise.py: error: ") and want in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(path("never")), "a study without its trainer wrote its folder"


def check_report_figures():
    if importlib.util.find_spec("matplotlib") is None:
        raise Skip(f"matplotlib is not installed for {sys.executable}")
    rc, out, err = study("report", path("out"), matplotlib=True, timeout=120)
    assert rc == 0 and "matplotlib" not in err, f"exit {rc}: {err}"
    names = [f[0] for f in generalise.FIGURES] + ["fig_demo_gap.png"]
    for name in names:
        with open(path("out", name), "rb") as f:
            data = f.read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, f"{name}: {len(data)} bytes, not a PNG"
        assert f"]({name})" in read("out", "results.md"), name
    assert json.loads(read("out", "results.json"))["figures"] == names


def check_parsers():
    p = generalise.parse_log(hand_log("progress step=50/1000 (5.0%) elapsed=0m31s eta=9m58s", "nothing to do: x",
                                      "timing steps=3 ms_per_step=9 mfu=1.0 (of 989 TFLOP/s peak) elapsed=2m03s"))
    assert p["nothing_to_do"] and generalise.row_done(p) and generalise.seconds_of(p["timing"]["elapsed"]) == 123, p
    assert generalise.seconds_of("1h02m") == 3720 and generalise.seconds_of("x") is None
    assert generalise.seconds_of(p["progress"]["elapsed"]) == 31
    assert generalise.last_attempt("old runner\nerror: a\n") == ("old runner\nerror: a", None)
    assert generalise.family("recolor_largest_0012") == "recolor_largest"
    assert generalise.spread([0.1, 0.3]) == "10.0 / 30.0 (mean 20.0)" and generalise.spread([None]) == "-"


def check_shipped_config():
    s = generalise.load_config(os.path.join(ROOT, "dev", "sweeps", "generalise_cpu.json"))
    names = [r["name"] for r in s["rows"]]
    assert len(names) >= 10 and s["rows"][names.index("trm_puzzle_emb")]["own"] == {"encoder_type": "none"}, names
    assert s["latent"] is not None and all(n in [r["name"] for r in s["rows"]] for n in s["latent"]["rows"])
    f = generalise.latent_flags(s, s["rows"][0], 10, "out/generalise/standard/model_00001000.safetensors")
    assert f["checkpoint_path"] == "out/generalise/standard/latent_opt_K10" and f["eval_only"] == "1", f
    assert f["data_paths_test"] == "data/generalise/eval.bin,data/generalise/heldout.bin", f
    assert s["demo"] == {"max_eval_groups": 240}, s["demo"]
    jobs = generalise.eval_jobs(s)
    kinds = [j["kind"] for j in jobs]
    assert kinds == ["demo_control"] * 2 * (len(names) - 1) + ["latent_opt"] * len(kinds[2 * len(names) - 2:]), kinds
    assert not any(j["row"]["name"] == "trm_puzzle_emb" for j in jobs if j["kind"] == "demo_control"), "trm"
    # make run-generalise: the study's row `standard` (same data, flags and seed), so it reproduces that row
    best = generalise.load_config(os.path.join(ROOT, "dev", "sweeps", "generalise_best.json"))
    (row,) = best["rows"]
    assert best["data"] == s["data"] and generalise.row_flags(best, row) == dict(
        generalise.row_flags(s, s["rows"][names.index(row["name"])]), checkpoint_path=f"out/run_generalise/{row['name']}")
    f = jobs[1]["flags"]("out/generalise/standard/model_00001000.safetensors")
    assert f["checkpoint_path"] == "out/generalise/standard/demos_shuffled" and f["eval_shuffle_demos"] == "1", f
    assert f["max_eval_groups"] == "240" and f["eval_only"] == "1" and "latent_opt_steps" not in f, f


def main():
    global TMP
    with tempfile.TemporaryDirectory(prefix="test_generalise_") as TMP:
        make_matplotlib_stand_in()
        check("generalise: --dry-run prints the data, row, demo-control and latent_opt commands, writes nothing",
              check_dry_run)
        check("generalise: a failing and a killed row are reported with their reasons; evaluations of done rows",
              check_first_run)
        check("generalise: a rerun skips done rows and evaluations, resumes the killed row (resume=1)", check_rerun)
        check("generalise: latent_opt commands (eval_only, newest weights, the row's flags) and their table",
              check_latent_opt)
        check("generalise: demo-control commands (eval_shuffle_demos, folders, no encoder_type=none) and demo gaps",
              check_demo_control)
        check("generalise: the table, the seed summary and per-family pass@2 of a run against the task file",
              check_run_table)
        check("generalise: hand-written logs: exact values, malformed lines, running / failed / stopped rows, seeds",
              check_hand_logs)
        check("generalise: a second runner of the same folder is refused while the first is alive",
              check_second_runner)
        check("generalise: bad configurations and arguments are one error line", check_bad_configs)
        check("generalise: report draws the four figures", check_report_figures)
        check("generalise: log, duration and attempt parsers", check_parsers)
        check("generalise: dev/sweeps/generalise_cpu.json, and generalise_best.json is one of its rows", check_shipped_config)
    finish()


if __name__ == "__main__":
    main()
