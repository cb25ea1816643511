#!/usr/bin/env python3
"""Tests for dev/cvae_sweep.py (the runner of seed report 004's sweep) with test/fake_train_cvae.py, a stand-in
trainer that writes train_cvae's log lines in milliseconds; standard library only, about 10 s.

Run from the repository root:  python3 test/test_cvae_sweep.py
Prints "PASS name" / "FAIL name: why" / "SKIP name: why" per check, then "<N> passed, <M> failed"; exits 1 if
anything failed. The sweeps run in a temporary folder, as `python3 dev/cvae_sweep.py` subprocesses with matplotlib
hidden (a stand-in package first on PYTHONPATH, as test/test_tools.py does), except the check of the figures, which
is SKIP where this python has no matplotlib. Checks: --dry-run prints the commands (mpirun prefix, resume=1,
checkpoint_path, phase 1's export as init_from) and writes nothing; with phase 1 and a 2x2x1 grid (pv x rmkl x seed)
where one cell fails and one is killed by SIGKILL mid-run: phase 1's newest export is every cell's init_from and
model, status.json and results.md record the failures with their reasons, the peak RSS and the trainer's memory
lines are recorded; a rerun skips the done cells, retries the failed one and resumes the killed one from its
checkpoint (resume=1); the per-setting means; a sweep stopped by SIGTERM mid-cell records it as interrupted and the
next run resumes it (no phase 1: the cells' own init_from); report DIR rewrites results.md / results.json (one
message about matplotlib when it is missing) and the four PNGs; a failing phase 1 stops the sweep before any cell; a
cell that exits 0 without final lines has failed; a done cell whose flags changed is an error; a sweep folder moved
elsewhere continues with --out, and one whose lock is held is refused; bad configurations are one error line; the
log parser on malformed and resumed logs (the trainer's -1 "not measured" left out); --mpirun 2 (SKIP without
mpirun); the two configurations of dev/sweeps/.
"""
import fcntl
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "dev"))
from harness import Skip, check, finish  # noqa: E402
import cvae_sweep  # noqa: E402

SCRIPT = os.path.join(ROOT, "dev", "cvae_sweep.py")
TRAINER = shlex.join([sys.executable, os.path.join(ROOT, "test", "fake_train_cvae.py")])
TMP = None          # scratch folder, made by main()
IDS = ["task_a_pv0_rmkl0_s7", "task_a_pv0_rmkl0.1_s7", "task_a_pv0.1_rmkl0_s7", "task_a_pv0.1_rmkl0.1_s7"]
FAILS, KILLED = IDS[1], IDS[2]
MEM_MIB = 48        # what the fake trainer holds in the first run


def config(**changes):
    """The 2x2x1 sweep with phase 1 (out: "out" in TMP), with top-level keys replaced."""
    c = {"name": "test", "out": "out",
         "phase1": {"model": "small", "max_steps": 20, "eval_every": 10, "tokenizer": "char"},
         "cell": {"lora_r": 4, "max_steps": 30, "eval_every": 10, "beta": 0.1},
         "grid": {"tasks": ["task_a"], "posterior_variance_weight": [0, 0.1],
                  "router_marginal_kl_to_prior_weight": [0, 0.1], "seed": [7]}}
    c.update(changes)
    return c


def write_config(name, obj):
    path = os.path.join(TMP, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return path


def sweep(*args, env=None, matplotlib=False, timeout=60):
    """Runs dev/cvae_sweep.py in TMP with the fake trainer's environment `env`; returns (rc, stdout, stderr)."""
    e = dict(os.environ, **(env or {}))
    for k in ("FAKE_FAIL", "FAKE_KILL", "FAKE_MEM_MIB", "FAKE_STEP_SECONDS", "FAKE_NO_FINAL"):
        if k not in (env or {}):
            e.pop(k, None)
    if not matplotlib:
        hide = os.path.join(TMP, "no_matplotlib")
        e["PYTHONPATH"] = os.pathsep.join(filter(None, (hide, os.environ.get("PYTHONPATH"))))
    p = subprocess.run([sys.executable, SCRIPT, *args], cwd=TMP, capture_output=True, text=True, timeout=timeout, env=e)
    return p.returncode, p.stdout, p.stderr


def path(*parts):
    return os.path.join(TMP, *parts)


def read(*parts):
    with open(path(*parts), encoding="utf-8") as f:
        return f.read()


def argv_lines(folder):
    """The argument lists the fake trainer was started with in a run folder (one per attempt)."""
    try:
        return [json.loads(line) for line in read(folder, "argv.txt").splitlines()]
    except FileNotFoundError:
        return []


def flags_of(argv):
    return dict(a.split("=", 1) for a in argv)


def status(out="out"):
    return json.loads(read(out, "status.json"))


def make_matplotlib_stand_in():
    folder = path("no_matplotlib", "matplotlib")
    os.makedirs(folder)
    with open(os.path.join(folder, "__init__.py"), "w") as f:
        f.write("raise ImportError('matplotlib hidden by test_cvae_sweep.py')\n")


# ---------------------------------------------------------------- checks

def check_dry_run():
    cfg = write_config("sweep.json", config())
    rc, out, err = sweep("run", cfg, "--trainer", TRAINER, "--mpirun", "2", "--dry-run")
    assert rc == 0, f"exit {rc}: {err}"
    commands = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
    assert len(commands) == 5, f"{len(commands)} commands (want phase 1 + 4 cells):\n{out}"
    prefix = ["mpirun", "--oversubscribe", "-np", "2"] + shlex.split(TRAINER)
    assert all(c[:len(prefix)] == prefix for c in commands), commands[0]
    p1 = flags_of(commands[0][len(prefix):])
    assert p1 == {"mode": "lm", "model": "small", "max_steps": "20", "eval_every": "10", "tokenizer": "char",
                  "checkpoint_path": "out/phase1", "resume": "1"}, p1
    for cell_id, cmd in zip(IDS, commands[1:]):
        f = flags_of(cmd[len(prefix):])
        assert f["checkpoint_path"] == f"out/cells/{cell_id}" and f["resume"] == "1" and f["mode"] == "cvae", f
        assert f["init_from"] == "out/phase1/hf_XXXXXXXX" and f["model"] == "out/phase1/hf_XXXXXXXX/config.json", f
        assert f["tokenizer"] == "char", f"phase 1's tokenizer is not passed on: {f}"
        assert f"# cell {IDS.index(cell_id) + 1}/4 {cell_id} -> out/cells/{cell_id}/stdout.log" in out, out
    assert (flags_of(commands[3][len(prefix):])[cvae_sweep.PV], flags_of(commands[3][len(prefix):])[cvae_sweep.RMKL]) \
        == ("0.1", "0"), commands[3]
    assert not os.path.exists(path("out")), "--dry-run wrote the output folder"


def check_first_run():
    cfg = write_config("sweep.json", config())
    rc, out, err = sweep("run", cfg, "--trainer", TRAINER,
                         env={"FAKE_FAIL": FAILS, "FAKE_KILL": f"{KILLED}:25", "FAKE_MEM_MIB": str(MEM_MIB)})
    assert rc == 1, f"exit {rc} with a failed cell (want 1): {err}"
    assert "phase 1 (out/phase1) ... done in" in out and "export out/phase1/hf_00000020" in out, out
    assert f"cell 1/4 {IDS[0]} ... done in" in out and "(ETA " in out, out
    assert f"cell 2/4 {FAILS} ... FAILED (error: step 3: the loss is nan" in out, out
    assert f"cell 3/4 {KILLED} ... FAILED (killed by signal 9 (out of memory?))" in out, out
    assert "2 of 4 cells done, 2 not" in out, out
    assert {"hf_00000010", "hf_00000020"} <= set(os.listdir(path("out", "phase1"))), "phase 1's two exports"
    for cell_id in IDS:
        (argv,) = argv_lines(path("out", "cells", cell_id))
        f = flags_of(argv)
        assert f["init_from"] == "out/phase1/hf_00000020", f"{cell_id}: init_from={f.get('init_from')} (not the newest)"
        assert f["model"] == "out/phase1/hf_00000020/config.json" and f["resume"] == "1", f
        assert f["checkpoint_path"] == f"out/cells/{cell_id}", f
    s = status()
    assert s["phase1"]["state"] == "done" and s["phase1"]["export"] == "out/phase1/hf_00000020", s["phase1"]
    c = s["cells"]
    assert [c[i]["state"] for i in IDS] == ["done", "failed", "failed", "done"], {i: c[i]["state"] for i in IDS}
    assert c[FAILS]["exit_code"] == 1 and c[FAILS]["signal"] is None, c[FAILS]
    assert c[FAILS]["reason"].startswith("error: step 3: the loss is nan: the run diverged"), c[FAILS]["reason"]
    assert c[KILLED]["signal"] == 9 and c[KILLED]["reason"] == "killed by signal 9 (out of memory?)", c[KILLED]
    for i in IDS:
        assert c[i]["peak_rss_kib"] >= MEM_MIB * 1024, f"{i}: peak RSS {c[i]['peak_rss_kib']} KiB < {MEM_MIB} MiB held"
        assert c[i]["rss_source"] == "trainer" and c[i]["seconds"] >= 0 and len(c[i]["attempts"]) == 1, c[i]
    md = read("out", "results.md")
    assert f"| {FAILS} | task_a | 0 | 0.1 | 7 | failed (exit 1): error: step 3: the loss is nan" in md, md
    assert f"| {KILLED} | task_a | 0.1 | 0 | 7 | failed (signal 9): killed by signal 9 (out of memory?) |" in md, md
    assert f"| {IDS[0]} | task_a | 0 | 0 | 7 | done | 0.800 | 0.5000 | 3.0000 | 0.5000 | 3801.0000 | 0.4400 | " \
           f"0.3900 | 0.3333 | 0.3750 | 0.4375 | 0.5400 |" in md, md
    assert "Phase 1 (`mode=lm model=small" in md and "export `out/phase1/hf_00000020`" in md, md
    assert "Figures skipped: matplotlib is not installed" in md and err.count("matplotlib is not installed") == 1, err
    res = json.loads(read("out", "results.json"))
    rows = {r["id"]: r for r in res["cells"]}
    assert [rows[i]["status"] for i in IDS] == ["done", "failed", "failed", "done"], rows
    assert rows[IDS[0]]["memory_allocated_gib"] == 0.12 and rows[IDS[0]]["memory_in_use_gib"] == 0.2, rows[IDS[0]]
    assert rows[IDS[0]]["final"]["rmkl"] == "3801.0000" and rows[FAILS]["final"] == {}, rows[FAILS]
    assert rows[IDS[0]]["peak_rss_mib"] >= MEM_MIB, rows[IDS[0]]


def check_rerun():
    cfg = write_config("sweep.json", config())
    rc, out, err = sweep("run", cfg, "--trainer", TRAINER)
    assert rc == 0, f"exit {rc}: {err}\n{out}"
    assert "phase 1: done earlier" in out, out
    assert f"cell 1/4 {IDS[0]}: done earlier, skipped" in out, out
    assert f"cell 4/4 {IDS[3]}: done earlier, skipped" in out, out
    assert f"cell 2/4 {FAILS} (retrying) ... done in" in out and f"cell 3/4 {KILLED} (retrying) ... done in" in out, out
    assert len(argv_lines(path("out", "phase1"))) == 1, "phase 1 ran again"
    assert [len(argv_lines(path("out", "cells", i))) for i in IDS] == [1, 2, 2, 1], "which cells ran again"
    for argv in argv_lines(path("out", "cells", KILLED)):
        assert flags_of(argv)["resume"] == "1", argv
    log = read("out", "cells", KILLED, "log.txt")
    assert f"resumed from out/cells/{KILLED}/ckpt_00000020.bin at step 20" in log, log[-500:]
    assert log.count("train step=20 ") == 1 and "train step=30 " in log and "final task=task_a" in log, log[-500:]
    stdout_log = read("out", "cells", KILLED, "stdout.log")
    assert stdout_log.count("==== cvae_sweep cell") == 2, "stdout.log: one header per attempt"
    c = status()["cells"]
    assert all(c[i]["state"] == "done" for i in IDS), {i: c[i]["state"] for i in IDS}
    assert len(c[KILLED]["attempts"]) == 2 and c[KILLED]["reason"] == "" and c[KILLED]["signal"] is None, c[KILLED]
    assert c[KILLED]["attempts"][0]["reason"] == "killed by signal 9 (out of memory?)", c[KILLED]["attempts"]
    assert c[KILLED]["peak_rss_kib"] >= MEM_MIB * 1024, "the peak over the attempts"
    md = read("out", "results.md")
    assert md.count("| done |") == 4 and "| failed" not in md and "Cells: 4 done." in md, md
    assert "| pv0_rmkl0 | 1 | 3801 | 0.5 | 0.44 | 0.39 | 0.8 |" in md, md
    assert "| pv0_rmkl0.1 | 1 | 1.017 | 0.5 | 0.84 | 0.79 | 0.8 |" in md, md
    assert "- rmkl mean 3801 in pv0_rmkl0 vs 1.017 in pv0_rmkl0.1 vs 3801 in pv0.1_rmkl0 vs 1.017 in pv0.1_rmkl0.1" \
        in md, md
    means = {m["setting"]: m for m in json.loads(read("out", "results.json"))["setting_means"]}
    assert abs(means["pv0.1_rmkl0.1"]["pv"] - 0.0161) < 1e-9 and means["pv0.1_rmkl0.1"]["cells"] == 1, means


def check_interrupted():
    """No phase 1 (the cell's own init_from); SIGTERM to the sweep mid-cell, then a rerun resumes the cell."""
    base = path("base")
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "config.json"), "w") as f:
        f.write("{}")
    cfg = write_config("direct.json", config(out="direct", phase1=None,
                                             cell={"init_from": "base", "model": "base/config.json", "max_steps": 40,
                                                   "eval_every": 10},
                                             grid={"tasks": ["task_b"], "seed": [1]}))
    e = dict(os.environ, FAKE_STEP_SECONDS="0.05", PYTHONPATH=os.path.join(TMP, "no_matplotlib"))
    p = subprocess.Popen([sys.executable, SCRIPT, "run", cfg, "--trainer", TRAINER], cwd=TMP, env=e,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = path("direct", "cells", "task_b_s1")
    deadline = time.time() + 20
    while not os.path.exists(os.path.join(folder, "ckpt_00000010.bin")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 130, f"exit {p.returncode} after SIGTERM (want 130): {err}"
    assert "interrupted" in out and "run the same command again" in err, (out, err)
    c = status("direct")["cells"]["task_b_s1"]
    assert c["state"] == "interrupted" and c["attempts"][0]["interrupted"], c
    assert not os.path.exists(path("direct", "phase1")), "a phase 1 folder without phase 1"
    rc, out, err = sweep("run", cfg, "--trainer", TRAINER)
    assert rc == 0 and "cell 1/1 task_b_s1 (resuming) ... done in" in out, (rc, out, err)
    runs = argv_lines(folder)
    assert len(runs) == 2 and all(flags_of(a)["init_from"] == "base" and flags_of(a)["model"] == "base/config.json"
                                  and flags_of(a)["resume"] == "1" for a in runs), runs
    assert "resumed from" in read("direct", "cells", "task_b_s1", "log.txt"), "the rerun did not resume"
    assert status("direct")["cells"]["task_b_s1"]["state"] == "done"


def check_report_tables():
    for name in ("results.md", "results.json"):
        os.remove(path("out", name))
    rc, out, err = sweep("report", "out")
    assert rc == 0, f"exit {rc}: {err}"
    assert "wrote out/results.md, out/results.json" in out and err.count("matplotlib is not installed") == 1, (out, err)
    assert read("out", "results.md").count("| done |") == 4
    assert not any(n.endswith(".png") for n in os.listdir(path("out"))), "figures without matplotlib"
    rc, out, err = sweep("report", "nowhere")
    assert rc == 1 and "nowhere/sweep.json: missing" in err and len(err.strip().splitlines()) == 1, err


def check_report_figures():
    if importlib.util.find_spec("matplotlib") is None:
        raise Skip(f"matplotlib is not installed for {sys.executable}")
    rc, out, err = sweep("report", "out", matplotlib=True, timeout=120)
    assert rc == 0 and "matplotlib" not in err, f"exit {rc}: {err}"
    for name in cvae_sweep.FIGURES:
        with open(path("out", name), "rb") as f:
            data = f.read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, f"{name}: {len(data)} bytes, not a PNG"
        assert f"]({name})" in read("out", "results.md"), name
    assert json.loads(read("out", "results.json"))["figures"] == list(cvae_sweep.FIGURES)


def check_phase1_fails():
    cfg = write_config("p1.json", config(out="p1fail"))
    rc, out, err = sweep("run", cfg, "--trainer", TRAINER, env={"FAKE_FAIL": "phase1"})
    assert rc == 1, f"exit {rc}"
    assert "phase 1 failed: error: step 3: the loss is nan" in err and "no cell was run" in err, err
    assert not os.path.exists(path("p1fail", "cells")), "cells ran after a failed phase 1"
    s = status("p1fail")
    assert s["phase1"]["state"] == "failed" and s["phase1"]["exit_code"] == 1, s["phase1"]
    assert "Phase 1 (`mode=lm" in read("p1fail", "results.md") and "failed" in read("p1fail", "results.md")


def check_no_final():
    cfg = write_config("nofinal.json", config(out="nofinal", phase1=None, cell={"max_steps": 10},
                                              grid={"tasks": ["task_a", "task_b"]}))
    rc, out, err = sweep("run", cfg, "--trainer", TRAINER, env={"FAKE_NO_FINAL": "task_b"})
    assert rc == 1 and "cell 2/2 task_b ... FAILED (exited 0 without a final line in its log)" in out, (rc, out, err)
    c = status("nofinal")["cells"]
    assert c["task_a"]["state"] == "done" and c["task_b"]["state"] == "failed" and c["task_b"]["exit_code"] == 0, c
    md = read("nofinal", "results.md")
    assert "| task_b | task_b | - | - | - | failed (exit 0): exited 0 without a final line" in md, md


def check_changed_flags():
    c = config()
    c["cell"] = dict(c["cell"], max_steps=40)
    cfg = write_config("changed.json", c)
    rc, out, err = sweep("run", cfg, "--trainer", TRAINER)
    assert rc == 1 and f"cell {IDS[0]} is done with other flags" in err and "max_steps=40" in err, err
    assert len(argv_lines(path("out", "cells", IDS[0]))) == 1, "ran a done cell with other flags"


def check_moved_and_locked():
    shutil.copytree(path("out"), path("moved"))
    rc, out, err = sweep("run", write_config("sweep.json", config()), "--trainer", TRAINER, "--out", "moved")
    assert rc == 0 and out.count("done earlier, skipped") == 4 and "phase 1: done earlier" in out, (rc, out, err)
    assert "export moved/phase1/hf_00000020" in out, out
    with open(path("moved", ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rc, out, err = sweep("run", path("sweep.json"), "--trainer", TRAINER, "--out", "moved")
    assert rc == 1 and "another cvae_sweep run, or a trainer it started, is using moved" in err, (rc, err)


def check_bad_configs():
    cases = {"reserved": (config(cell={"checkpoint_path": "x"}), "cell: checkpoint_path is set by the sweep"),
             "in both": (config(cell={"seed": 1}), "grid.seed: seed is also in \"cell\""),
             "unknown key": (dict(config(), grdi={}), "unknown key 'grdi'"),
             "empty list": (config(grid={"seed": []}), "grid.seed: expected a non-empty list"),
             "no name": (dict(config(), name=""), "\"name\" must be a non-empty string"),
             "bad value": (config(cell={"beta": {"a": 1}}), "cell.beta: {\"a\": 1} is not a string"),
             "phase 1 without export": (config(phase1={"save_hf": 0}), "phase1 has save_hf=0")}
    for name, (cfg, want) in cases.items():
        try:
            cvae_sweep.parse_sweep(cfg, "x.json")
        except cvae_sweep.SweepError as e:
            assert want in str(e), f"{name}: {e}"
            continue
        raise AssertionError(f"{name}: accepted")
    rc, out, err = sweep("run", write_config("bad.json", config(cell={"resume": 0})), "--trainer", TRAINER)
    assert rc == 1 and err.startswith("cvae_sweep.py: error: "), err
    assert "bad.json: cell: resume is set by the sweep" in err, err
    assert len(err.strip().splitlines()) == 1, err
    rc, out, err = sweep("run", write_config("ok.json", config(out="never")), "--trainer", "./no_such_trainer")
    assert rc == 1 and "trainer ./no_such_trainer not found" in err and not os.path.exists(path("never")), err


def check_flags_and_ids():
    ft = cvae_sweep.flag_text
    assert [ft(v, "x") for v in (0, 0.1, 2e-4, 2.0, 200000, True, False, "a", ["a", "b"], 1e-05)] == \
        ["0", "0.1", "0.0002", "2", "200000", "1", "0", "a", "a,b", "1e-05"]
    s = cvae_sweep.parse_sweep(config(grid={"tasks": ["multidigit_addition"], "posterior_variance_weight": [0.1],
                                            "router_marginal_kl_to_prior_weight": [0], "seed": [314159],
                                            "lr": [0.001]}), "x")
    (cell,) = s["cells"]
    assert cell["id"] == "multidigit_addition_pv0.1_rmkl0_s314159_lr0.001", cell["id"]
    assert cell["setting"] == "pv0.1_rmkl0_lr0.001" and cell["task"] == "multidigit_addition", cell
    assert cvae_sweep.cell_task({"tasks": "a,b"}) == "all" and cvae_sweep.cell_task({}) == "all"


def check_log_parser():
    text = "\n".join([
        "arc.cu train_cvae mode=cvae ...", "memory: 0.50 GiB allocated (activations ...)",
        "train step=10 loss=2 recon_ratio=0.9 kl=1", "train step=20 loss=1.5 recon_ratio=0.8 kl=nan",
        "train step=", "train step=x loss=1", "train loss=1", "val step=10 task=a recon_ratio=0.7",
        "gen step=10 traces=8 tokens=10 seconds=1", "gen step=10: warning: python3 failed",
        "gen step=10 task=a n=4 answer_acc=0.25 mix=a:0.5,b:0.5 junk", "gen step=10 task=all n=8 answer_acc=0.5",
        "probe step=10 task=all router_probe=0.4", "memory: 0.70 GiB in use on the device after the first step",
        "resumed from x at step 10", "train step=20 loss=1.4 recon_ratio=0.75 kl=1.1",   # the resumed run wins
        "final task=all answer_acc=0.6", "final answer_acc=0.1", "final task=a answer_acc=0.5 =x y",
        "progress step=20/20 (100%)", "train step=30 loss=1.2 rec"])                      # cut short by a crash
    p = cvae_sweep.parse_log(text)
    assert sorted(p["train"]) == [10, 20, 30] and p["train"][20]["loss"] == "1.4", p["train"]
    assert p["gen"]["a"][10]["answer_acc"] == "0.25" and p["gen"]["a"][10]["mix"] == "a:0.5,b:0.5", p["gen"]
    assert set(p["gen"]) == {"a", "all"} and p["val"]["a"][10]["recon_ratio"] == "0.7", p
    assert cvae_sweep.of_task(p["probe"], "a") == {10: p["probe"]["all"][10]}, "no probe lines of a: those of all"
    assert cvae_sweep.final_of(p, "a")["answer_acc"] == "0.5" and cvae_sweep.final_of(p, "b")["answer_acc"] == "0.6"
    assert cvae_sweep.memory_gib(p["memory"]) == (0.5, 0.7), p["memory"]
    assert cvae_sweep.curve(p["train"], "kl") == [(10, 1.0), (20, 1.1)], "nan / missing values are not drawn"
    assert cvae_sweep.measured("-1.0000") is None and cvae_sweep.measured("-0.5") == -0.5, "-1: not measured"
    assert cvae_sweep.final_text("-1.0000") == "n/m" and cvae_sweep.final_text(None) == "-"
    assert cvae_sweep.failure_reason("x\nerror: a\nerror: b\nmore\n", 1, None) == "error: b"
    assert cvae_sweep.failure_reason("mpirun noticed that process rank 0 ... exited on signal 9 (Killed).", 137, None) \
        == "killed by signal 9 (out of memory?)"
    assert cvae_sweep.failure_reason("", None, 11) == "killed by signal 11 (SIGSEGV)"
    assert cvae_sweep.failure_reason("Segfault here\n", 3, None) == "Segfault here (exit status 3)"


def check_mpirun():
    if shutil.which("mpirun") is None:
        raise Skip("mpirun is not installed")
    cfg = write_config("mpi.json", config(out="mpi", phase1=None, cell={"max_steps": 20, "eval_every": 10},
                                          grid={"tasks": ["task_a"], "seed": [3]}))
    rc, out, err = sweep("run", cfg, "--trainer", TRAINER, "--mpirun", "2", env={"FAKE_MEM_MIB": str(MEM_MIB)})
    assert rc == 0, f"exit {rc}: {err}; stdout.log ends: {read('mpi', 'cells', 'task_a_s3', 'stdout.log')[-300:]}"
    c = status("mpi")["cells"]["task_a_s3"]
    assert c["state"] == "done" and c["rss_source"] == "mpirun" and c["peak_rss_kib"] >= MEM_MIB * 1024, c
    assert c["args"][-1] == "resume=1" and len(argv_lines(path("mpi", "cells", "task_a_s3"))) == 1, "rank 1 logged too"
    log = read("mpi", "cells", "task_a_s3", "stdout.log")
    assert log.splitlines()[0].split(": ", 1)[1].startswith("mpirun --oversubscribe -np 2 "), log.splitlines()[0]
    assert "the largest process of mpirun and its ranks" in read("mpi", "results.md")


def check_shipped_configs():
    for name, phase1 in (("cpu_small.json", True), ("qwen_direct_pretrained.json", False)):
        s = cvae_sweep.load_sweep(os.path.join(ROOT, "dev", "sweeps", name))
        assert len(s["cells"]) == 24 and (s["phase1"] is not None) == phase1, name
        assert {c["task"] for c in s["cells"]} == set(cvae_sweep_tasks()), name
        assert all(c["flags"]["mode"] == "cvae" for c in s["cells"]) and not os.path.isabs(s["out"]), name
        assert s["cells"][2]["id"] == "multidigit_addition_pv0.1_rmkl0_s314159", s["cells"][2]["id"]
        args = cvae_sweep.cell_args(s, s["cells"][0], s["out"], os.path.join(s["out"], "phase1", "hf_00000600"))
        f = flags_of(args)
        if phase1:
            assert s["phase1"]["mode"] == "lm" and f["init_from"].endswith("phase1/hf_00000600"), f
            assert f["lora_r"] == "8" and f["lora_alpha"] == "16" and f["beta"] == "0.1" and f["tokenizer"] == "char", f
        else:
            assert f["init_from"] == "weights/Qwen2.5-0.5B", f
            assert f["tokenizer"] == "weights/Qwen2.5-0.5B/tokenizer.json", f
            assert f["lr"] == "0.0002" and f["head_lr"] == "0.001" and f["d_z"] == "8" and f["lora_r"] == "16", f


def cvae_sweep_tasks():
    sys.path.insert(0, os.path.join(ROOT, "data"))
    import strategies
    return strategies.TASKS


def main():
    global TMP
    with tempfile.TemporaryDirectory(prefix="test_cvae_sweep_") as TMP:
        make_matplotlib_stand_in()
        check("cvae_sweep: --dry-run prints every command (mpirun, resume=1, phase 1's export) and writes nothing",
              check_dry_run)
        check("cvae_sweep: a failing and a killed cell are recorded with their reasons; phase 1's export is "
              "init_from", check_first_run)
        check("cvae_sweep: a rerun skips done cells, retries the failed one, resumes the killed one", check_rerun)
        check("cvae_sweep: SIGTERM mid-cell records it as interrupted, the next run resumes it (no phase 1)",
              check_interrupted)
        check("cvae_sweep: report DIR rewrites results.md and results.json (without matplotlib: one message)",
              check_report_tables)
        check("cvae_sweep: report DIR draws the four figures", check_report_figures)
        check("cvae_sweep: a failing phase 1 stops the sweep before any cell", check_phase1_fails)
        check("cvae_sweep: a cell that exits 0 without final lines has failed", check_no_final)
        check("cvae_sweep: a done cell whose flags changed is an error", check_changed_flags)
        check("cvae_sweep: a moved sweep folder continues (--out), a locked one is refused", check_moved_and_locked)
        check("cvae_sweep: bad configurations are one error line", check_bad_configs)
        check("cvae_sweep: flag values and cell ids", check_flags_and_ids)
        check("cvae_sweep: the log parser skips malformed lines, a resumed step's later line wins", check_log_parser)
        check("cvae_sweep: --mpirun 2 (peak RSS of the mpirun tree, rank 0 logs)", check_mpirun)
        check("cvae_sweep: dev/sweeps/ configurations", check_shipped_configs)
    finish()


if __name__ == "__main__":
    main()
