#!/usr/bin/env python3
"""The collection runner of seed report 004's sweep: tasks x posterior_variance_weight x
router_marginal_kl_to_prior_weight x seed, each cell one `train_cvae mode=cvae` run, optionally after a phase-1
run (`train_cvae mode=lm`, the z-free "entangled" model) whose Hugging Face export every cell starts from; then a
table, a JSON summary and four figures from the cells' logs.

Usage (from the repository root, where the trainers and data/ are):
    python3 dev/cvae_sweep.py run SWEEP.json [--trainer ./train_cvae_cpu] [--mpirun N] [--out DIR] [--dry-run]
    python3 dev/cvae_sweep.py report DIR        # (re)write the table and figures from the logs of DIR

SWEEP.json (dev/sweeps/ has the report's two configurations):
    {"name": "cpu-small",                        # required: names the sweep in the table
     "out": "out/cvae_sweep_cpu",                # output folder, relative to the current directory
                                                 #   (default out/cvae_sweep_<name>; --out overrides)
     "trainer": "./train_cvae_cpu",              # optional: the trainer command (default ./train_cvae_cpu;
                                                 #   --trainer overrides; split like a shell line, so
                                                 #   "python3 x.py" works)
     "comment": "...",                           # optional, ignored (a string or a list of strings)
     "phase1": {"mode": "lm", "model": "small", "max_steps": 600, ...},    # or null / absent: no phase 1
     "cell": {"mode": "cvae", "lora_r": 8, "max_steps": 120, ...},        # the flags every cell has
     "grid": {"tasks": ["multidigit_addition", ...], "posterior_variance_weight": [0, 0.1],
              "router_marginal_kl_to_prior_weight": [0, 0.1], "seed": [314159]}}
Flags are trainer flags (key=value on its command line): JSON strings go as written, numbers as Python writes
them (0.1, 0.0002, 200000; 2.0 as 2), true/false as 1/0, a list as its items joined by commas. "mode" defaults to
lm in phase1 and to cvae in cell. Every grid key is a trainer flag with a non-empty list of values; the cells are
the product of the lists in the grid's key order (the first key varies slowest), a cell's flags are cell's plus one
value of each grid key (a key in both is an error). A cell's id joins its grid values in that order, each after
its key's tag: tasks (none), posterior_variance_weight "pv", router_marginal_kl_to_prior_weight "rmkl", seed "s",
any other key its own name; e.g. multidigit_addition_pv0.1_rmkl0_s314159 (characters other than letters,
digits, '.', '_', '-' become '-'). A cell's "setting" is the same without the task and the seed (pv0.1_rmkl0).

What each run gets:
    phase 1:  <trainer> <phase1 flags> checkpoint_path=<out>/phase1 resume=1
    a cell:   <trainer> <cell flags> <grid values> [init_from=E model=E/config.json [tokenizer=T]]
                        checkpoint_path=<out>/cells/<id> resume=1
where E is the newest hf_<8-digit step>/ folder of <out>/phase1 holding config.json and model.safetensors (phase 1
must keep save_hf on), passed unless the cell sets init_from itself (then neither init_from nor model is added;
a model the cell sets is kept), and T is phase 1's tokenizer when phase 1 sets one and the cell does not (the
export's vocabulary is that tokenizer's). Without phase 1 ("direct-pretrained") the cell flags carry the base
(init_from, model, tokenizer). checkpoint_path and resume belong to the sweep: a configuration setting them is an
error. With --mpirun N every run is `mpirun --oversubscribe -np N <trainer> ...` (as root, the sweep also sets
OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 for it). --dry-run prints the commands and writes
nothing.

The output folder:
    sweep.json      the configuration of the last `run` (what `report` tabulates)
    status.json     the state of phase 1 and of each cell: "running", "done", "failed" or "interrupted", with
                    exit_code, signal, reason, the flags it ran with (args), seconds and peak_rss_kib summed /
                    maxed over its attempts, and the attempts themselves
    phase1/, cells/<id>/   each run's checkpoint_path: the trainer's own log.txt, its checkpoints and exports,
                    and stdout.log, the run's stdout and stderr together (appended, one header line per attempt)
    results.md, results.json, fig1_accuracy_alignment.png, fig2_objective_terms.png,
    fig3_weighted_pv_rmkl.png, fig4_final_metrics.png       the report (figures need matplotlib)
Runs are one after another. A run is done when its process exits 0 and (a cell) its log has `final` lines or
(phase 1) the export exists; otherwise it failed, with a reason: "killed by signal 9 (out of memory?)" (or another
signal, also when mpirun reports that a rank "exited on signal N"), else the last output line that starts with
"error" (the trainers' fatal() writes "error: <message>"), else the last output line, else "exited 0 without a
final line in its log". Rerunning `run` skips done cells and reruns the others (failed, interrupted, or left
"running" by a sweep that was killed), which continue from their newest checkpoint (resume=1). A done run whose
flags differ from those the configuration gives now is an error (remove its folder to rerun it); checkpoint_path
is left out of that comparison and paths inside the output folder are compared relative to it, so a sweep folder
moved elsewhere continues with --out. A failed phase 1 stops the sweep (exit 1) before any cell; failed cells
never stop it: they are tabulated with their reason, and `run` exits 1 when any cell is not done. Ctrl-C (or
SIGTERM) stops the running trainer, records the cell as interrupted and exits 130. Two `run`s on one folder at
once are refused: a lock on <out>/.lock, which the trainer a sweep started also holds (a trainer left running
by a killed sweep keeps the folder locked until it ends).

Peak memory: the peak resident set of the run's process as os.wait4 reports it (ru_maxrss, KiB on Linux): the
trainer, or under --mpirun the largest single process of mpirun and the ranks it waited for (not their sum);
besides it the trainer's own `memory: X GiB allocated` / `memory: Y GiB in use ... after the first step` lines.

The report reads each cell's <checkpoint_path>/log.txt (stdout.log where it is missing), lines of the form
    train step=S loss=J recon=R recon_ratio=RR kl=K pv=V rmkl=M w_recon=.. w_kl=.. w_pv=.. w_rmkl=.. ...
    val step=S task=T recon_ratio=.. nll=.. kl=.. pv=.. rmkl=.. token_acc=.. tokens=..
    gen step=S task=T n=.. answer_acc=.. detected=.. mix=.. undetected=.. match=..
    probe step=S task=T router_probe=.. posterior_mu_probe=.. chance=.. alignment_one_to_one=.. ...
    final task=T answer_acc=.. recon_ratio=.. kl=.. pv=.. rmkl=.. router_probe=.. posterior_mu_probe=.. chance=..
          alignment_one_to_one=..
and ignores every other line, token without '=', and line without a whole-number step (train/val/gen/probe). A
resumed run appends to its log, so a step can appear twice: the later line wins. A cell's task is its `tasks` flag
when that names one task, else "all"; its val/gen/probe/final lines are those of that task (those of "all" where
it has none); a value logged as -1 is the trainer's "not measured" (n/m in the table, left out of means and
figures). The table has one row per cell of the grid (a cell never run is "not run", a failed one shows its
reason), the per-setting means over done cells of the final rmkl, pv, router_probe, posterior_mu_probe and
answer_acc, and the figures: 1. answer_acc, router_probe, posterior_mu_probe, alignment_one_to_one vs step (val
step of gen/probe lines); 2. recon_ratio and kl vs step (train lines); 3. pv, w_pv, rmkl, w_rmkl vs step (train
lines, log y; zero and negative values are not drawn); 4. the final answer_acc, router_probe, posterior_mu_probe
and alignment_one_to_one of each cell as grouped bars, chance as a marker. One row of panels per task, one line
style per setting (the seeds of a setting share it). Standard library only; without matplotlib the figures are
skipped with one message. Exit status: 0 when every cell is done (run) / the report was written (report), 1
otherwise (bad configuration, trainer missing, a failed phase 1 or cell).
"""
import argparse
import datetime
import fcntl
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plot  # noqa: E402  (dev/plot.py: load_pyplot, write_atomic)

DEFAULT_TRAINER = "./train_cvae_cpu"
TOP_KEYS = ("name", "out", "trainer", "comment", "phase1", "cell", "grid")
RESERVED = ("checkpoint_path", "resume")           # set by the sweep for every run
PV, RMKL = "posterior_variance_weight", "router_marginal_kl_to_prior_weight"
TAGS = {"tasks": "", PV: "pv", RMKL: "rmkl", "seed": "s"}
NOT_SETTING = ("tasks", "seed")                    # grid keys that do not make a setting
KINDS = ("train", "val", "gen", "probe", "final")
FIG1 = ("answer_acc", "router_probe", "posterior_mu_probe", "alignment_one_to_one")
FIG2 = ("recon_ratio", "kl")
FIG3 = ("pv", "w_pv", "rmkl", "w_rmkl")
MEANS = ("rmkl", "pv", "router_probe", "posterior_mu_probe", "answer_acc")
COLUMNS = ("answer_acc", "recon_ratio", "kl", "pv", "rmkl", "router_probe", "posterior_mu_probe", "chance",
           "router_majority", "posterior_majority", "alignment_one_to_one")
FIGURES = ("fig1_accuracy_alignment.png", "fig2_objective_terms.png", "fig3_weighted_pv_rmkl.png",
           "fig4_final_metrics.png")
RSS_NOTE = {"trainer": "the trainer process", "mpirun": "the largest process of mpirun and its ranks"}


class SweepError(Exception):
    """A bad configuration or folder, a missing trainer, a failed phase 1: one line for the user."""


# --- configuration ----------------------------------------------------------------------------------------------
def flag_text(value, where):
    """The command-line text of a JSON value."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SweepError(f"{where}: {value} is not a finite number")
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, str):
        if not value or any(c.isspace() for c in value):
            raise SweepError(f"{where}: {value!r}: a flag value must be non-empty, without spaces")
        return value
    if isinstance(value, list) and value and not any(isinstance(v, list) for v in value):
        return ",".join(flag_text(v, where) for v in value)
    raise SweepError(f"{where}: {json.dumps(value)} is not a string, number, boolean or list of them")


def flag_dict(obj, where, default_mode):
    """The flags of a "phase1" / "cell" object as {key: text}, "mode" first."""
    if not isinstance(obj, dict):
        raise SweepError(f"{where}: expected an object of trainer flags")
    flags = {"mode": default_mode}
    for key, value in obj.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SweepError(f"{where}: {key!r} is not a trainer flag name")
        if key in RESERVED:
            raise SweepError(f"{where}: {key} is set by the sweep (checkpoint_path=<out>/..., resume=1)")
        flags[key] = flag_text(value, f"{where}.{key}")
    return flags


def parse_sweep(config, source):
    """The validated sweep of a configuration dict: name, out, trainer, phase1 (flags or None), cell (flags),
    grid ([(key, [value texts])]), cells (see make_cells)."""
    if not isinstance(config, dict):
        raise SweepError(f"{source}: expected a JSON object")
    unknown = [k for k in config if k not in TOP_KEYS]
    if unknown:
        raise SweepError(f"{source}: unknown key {unknown[0]!r} (expected {', '.join(TOP_KEYS)})")
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise SweepError(f"{source}: \"name\" must be a non-empty string")
    for key in ("out", "trainer"):
        if key in config and (not isinstance(config[key], str) or not config[key]):
            raise SweepError(f"{source}: \"{key}\" must be a non-empty string")
    phase1 = config.get("phase1")
    phase1 = None if phase1 is None else flag_dict(phase1, f"{source}: phase1", "lm")
    if phase1 is not None and phase1.get("save_hf") == "0":
        raise SweepError(f"{source}: phase1 has save_hf=0, but the cells start from its Hugging Face export")
    cell = flag_dict(config.get("cell", {}), f"{source}: cell", "cvae")
    grid_obj = config.get("grid")
    if not isinstance(grid_obj, dict) or not grid_obj:
        raise SweepError(f"{source}: \"grid\" must be an object of trainer flags, each with a list of values")
    grid = []
    for key, values in grid_obj.items():
        where = f"{source}: grid.{key}"
        if key in RESERVED or key == "mode":
            raise SweepError(f"{where}: {key} cannot vary in a sweep")
        if key in cell:
            raise SweepError(f"{where}: {key} is also in \"cell\"; give it in one place")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: expected a non-empty list of values")
        texts = [flag_text(v, where) for v in values]
        if len(set(texts)) != len(texts):
            raise SweepError(f"{where}: a value is listed twice")
        grid.append((key, texts))
    sweep = {"name": name, "out": config.get("out", os.path.join("out", "cvae_sweep_" + safe(name))),
             "trainer": config.get("trainer", DEFAULT_TRAINER), "phase1": phase1, "cell": cell, "grid": grid,
             "config": config}
    sweep["cells"] = make_cells(sweep, source)
    return sweep


def read_config(path):
    """The JSON object of a configuration file, or SweepError naming the file (dev/generalise.py uses it too)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise SweepError(f"{path}: cannot read: {e.strerror}")
    except ValueError as e:
        raise SweepError(f"{path}: not JSON: {e}")


def load_sweep(path):
    return parse_sweep(read_config(path), path)


def safe(text):
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)


def cell_task(flags):
    """The task whose lines describe a cell: its tasks flag when it names one task, else "all"."""
    tasks = flags.get("tasks", "all")
    return tasks if tasks and "," not in tasks else "all"


def make_cells(sweep, source):
    """The cells in grid order: {"id", "values" {grid key: text}, "flags" (cell + grid), "task", "setting"}."""
    keys = [k for k, _ in sweep["grid"]]
    cells, seen = [], {}
    for combo in itertools.product(*(values for _, values in sweep["grid"])):
        values = dict(zip(keys, combo))
        parts = [TAGS.get(k, k) + safe(v) for k, v in values.items()]
        cell_id = "_".join(parts)
        if cell_id in seen:
            raise SweepError(f"{source}: cells {seen[cell_id]} and {values} have the same id {cell_id}")
        seen[cell_id] = values
        flags = dict(sweep["cell"], **values)
        setting = "_".join(TAGS.get(k, k) + safe(v) for k, v in values.items() if k not in NOT_SETTING)
        cells.append({"id": cell_id, "values": values, "flags": flags, "task": cell_task(flags),
                      "setting": setting or "default"})
    return cells


def phase1_dir(out):
    return os.path.join(out, "phase1")


def cell_dir(out, cell_id):
    return os.path.join(out, "cells", cell_id)


def phase1_export(out):
    """The newest hf_<8 digits>/ of phase 1 holding config.json and model.safetensors (or its index), or None."""
    folder = phase1_dir(out)
    try:
        names = sorted(n for n in os.listdir(folder) if re.fullmatch(r"hf_\d{8}", n))
    except OSError:
        return None
    for name in reversed(names):
        path = os.path.join(folder, name)
        if os.path.isfile(os.path.join(path, "config.json")) and any(
                os.path.isfile(os.path.join(path, w)) for w in ("model.safetensors", "model.safetensors.index.json")):
            return path
    return None


def run_args(flags, checkpoint_path):
    return [f"{k}={v}" for k, v in flags.items()] + [f"checkpoint_path={checkpoint_path}", "resume=1"]


def phase1_args(sweep, out):
    return run_args(sweep["phase1"], phase1_dir(out))


def cell_args(sweep, cell, out, export):
    """A cell's trainer flags; export: phase 1's export folder (None without phase 1)."""
    flags = dict(cell["flags"])
    if sweep["phase1"] is not None and "init_from" not in flags:
        flags["init_from"] = export
        flags.setdefault("model", os.path.join(export, "config.json"))
        if "tokenizer" in sweep["phase1"]:
            flags.setdefault("tokenizer", sweep["phase1"]["tokenizer"])
    return run_args(flags, cell_dir(out, cell["id"]))


# --- status -----------------------------------------------------------------------------------------------------
def read_json(path, default):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except OSError as e:
        raise SweepError(f"{path}: cannot read: {e.strerror}")
    except ValueError as e:
        raise SweepError(f"{path}: not JSON ({e}): repair or remove it")


def write_text(path, text):
    try:
        plot.write_atomic(path, "w", lambda f: f.write(text))
    except plot.InputError as e:
        raise SweepError(str(e))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1) + "\n")


def now():
    return datetime.datetime.now().isoformat(timespec="seconds")


def duration(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


# --- running ----------------------------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


def on_sigterm(signum, frame):
    raise Interrupted("SIGTERM")


def failure_reason(output, exit_code, sig):
    """Why a run failed (output: what this attempt printed; sig: the signal that killed it, or None)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if sig is None:   # mpirun: "mpirun noticed that process rank 0 ... exited on signal 9 (Killed)."
        m = re.findall(r"exited on signal (\d+)", output)
        sig = int(m[-1]) if m else None
    if sig is not None:
        if sig == signal.SIGKILL:
            return "killed by signal 9 (out of memory?)"
        try:
            return f"killed by signal {sig} ({signal.Signals(sig).name})"
        except ValueError:
            return f"killed by signal {sig}"
    errors = [line for line in lines if line.startswith("error")]
    if errors:
        return errors[-1][:400]
    if exit_code != 0:
        return (lines[-1][:400] if lines else "no output") + f" (exit status {exit_code})"
    return "exited 0 without a final line in its log"


def execute(cmd, log_path, env, label, lock):
    """Runs cmd with stdout and stderr appended to log_path; returns the attempt's record (exit_code, signal,
    seconds, peak_rss_kib, and interrupted when Ctrl-C / SIGTERM stopped it) and what it printed. The child keeps
    the sweep's lock (an open descriptor of the locked file), so that a trainer left running by a killed sweep still
    keeps a second sweep out of the folder."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"==== cvae_sweep {label} {now()}: {shlex.join(cmd)}\n".encode())
        log.flush()
        start_offset = log.tell()
        started, start = now(), time.monotonic()
        try:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 pass_fds=(lock.fileno(),))
        except OSError as e:
            raise SweepError(f"cannot start {cmd[0]}: {e.strerror}")
        interrupted = None
        try:
            _, status, usage = os.wait4(p.pid, 0)
        except (KeyboardInterrupt, Interrupted) as e:
            interrupted = e
            p.send_signal(signal.SIGTERM)
            _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)     # reaped here: Popen must not wait for it again
    seconds = time.monotonic() - start
    with open(log_path, "rb") as log:
        log.seek(start_offset)
        output = log.read().decode(errors="replace")
    attempt = {"started": started, "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
               "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, "seconds": round(seconds, 1),
               "peak_rss_kib": usage.ru_maxrss}
    if interrupted is not None:
        attempt["interrupted"] = True
    return attempt, output


def record(entry, attempt, args, state, reason, rss_source):
    """Updates a status entry (phase 1 or a cell) with an attempt's outcome."""
    entry.setdefault("attempts", []).append(dict(attempt, state=state, reason=reason))
    entry.update(state=state, reason=reason, exit_code=attempt["exit_code"], signal=attempt["signal"], args=args,
                 seconds=round(sum(a["seconds"] for a in entry["attempts"]), 1),
                 peak_rss_kib=max(a["peak_rss_kib"] for a in entry["attempts"]), rss_source=rss_source,
                 updated=now())


def comparable(args, out):
    """Flags as compared between runs: without checkpoint_path, and paths inside the output folder relative to it
    (a sweep folder that was moved continues)."""
    prefix = os.path.join(out, "")
    kept = []
    for a in args or []:
        key, _, value = a.partition("=")
        if key != "checkpoint_path":
            kept.append(f"{key}=<out>/{value[len(prefix):]}" if value.startswith(prefix) else a)
    return kept


def check_unchanged(entry, args, out, previous_out, what, folder):
    """A done run must have been run with the flags it would get now."""
    if entry.get("state") == "done" and comparable(entry.get("args"), previous_out) != comparable(args, out):
        then, now_ = set(comparable(entry.get("args"), previous_out)), set(comparable(args, out))
        diff = ", ".join(sorted(now_ - then)) or "(fewer flags)"
        raise SweepError(f"{what} is done with other flags than the configuration gives now ({diff}; it had "
                         f"{', '.join(sorted(then - now_)) or 'none of them'}): remove {folder} to rerun it, or "
                         f"use another --out")


def resolve_trainer(trainer, dry_run):
    cmd = shlex.split(trainer)
    if not cmd:
        raise SweepError("the trainer command is empty")
    exe = cmd[0]
    found = (os.path.isfile(exe) and os.access(exe, os.X_OK)) if os.sep in exe else shutil.which(exe)
    if not found and not dry_run:
        hint = f" (make {os.path.basename(exe)})" if os.path.basename(exe).startswith("train_") else ""
        raise SweepError(f"trainer {exe} not found or not executable{hint}")
    return cmd


def command(prefix, trainer, args):
    return prefix + trainer + args


def run_sweep(sweep_path, trainer_arg, mpirun, out_arg, dry_run):
    sweep = load_sweep(sweep_path)
    out = out_arg or sweep["out"]
    trainer = resolve_trainer(trainer_arg or sweep["trainer"], dry_run)
    prefix = []
    if mpirun is not None:
        if mpirun < 1:
            raise SweepError(f"--mpirun {mpirun}: expected a number of processes >= 1")
        if shutil.which("mpirun") is None and not dry_run:
            raise SweepError("--mpirun: mpirun is not installed (apt-get install openmpi-bin)")
        prefix = ["mpirun", "--oversubscribe", "-np", str(mpirun)]
    cells = sweep["cells"]
    if dry_run:
        export = phase1_export(out) or os.path.join(phase1_dir(out), "hf_XXXXXXXX")
        if sweep["phase1"] is not None:
            print(f"# phase 1 -> {os.path.join(phase1_dir(out), 'stdout.log')}"
                  + ("" if phase1_export(out) else "; the cells get its newest export, hf_XXXXXXXX here"))
            print(shlex.join(command(prefix, trainer, phase1_args(sweep, out))))
        for i, cell in enumerate(cells, 1):
            print(f"# cell {i}/{len(cells)} {cell['id']} -> {os.path.join(cell_dir(out, cell['id']), 'stdout.log')}")
            print(shlex.join(command(prefix, trainer, cell_args(sweep, cell, out, export))))
        return 0

    os.makedirs(out, exist_ok=True)
    lock = open(os.path.join(out, ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise SweepError(f"another cvae_sweep run, or a trainer it started, is using {out} (it holds "
                         f"{os.path.join(out, '.lock')})")
    env = dict(os.environ)
    if prefix and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    rss_source = "mpirun" if prefix else "trainer"
    status_path = os.path.join(out, "status.json")
    status = read_json(status_path, {})
    status.setdefault("cells", {})
    previous_out = status.get("out", out)
    status.update(name=sweep["name"], out=out)
    write_json(os.path.join(out, "sweep.json"), sweep["config"])

    def save():
        status["updated"] = now()
        write_json(status_path, status)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # phase 1
        export = None
        if sweep["phase1"] is not None:
            args = phase1_args(sweep, out)
            entry = status.setdefault("phase1", {})
            check_unchanged(entry, args, out, previous_out, "phase 1", phase1_dir(out))
            export = phase1_export(out)
            if entry.get("state") == "done" and export:
                print(f"phase 1: done earlier, export {export}")
            else:
                print(f"phase 1 ({phase1_dir(out)}) ...", end=" ", flush=True)
                entry.update(state="running", args=args, updated=now())
                save()
                attempt, output = execute(command(prefix, trainer, args), os.path.join(phase1_dir(out), "stdout.log"),
                                          env, "phase 1", lock)
                export = phase1_export(out)
                if attempt.get("interrupted"):
                    record(entry, attempt, args, "interrupted", "interrupted (Ctrl-C or SIGTERM)", rss_source)
                    save()
                    raise Interrupted("phase 1")
                ok = attempt["exit_code"] == 0 and export is not None
                reason = "" if ok else (failure_reason(output, attempt["exit_code"], attempt["signal"])
                                        if attempt["exit_code"] != 0 else
                                        f"exited 0 but {phase1_dir(out)} has no hf_<step>/ with config.json and "
                                        f"model.safetensors")
                record(entry, attempt, args, "done" if ok else "failed", reason, rss_source)
                entry["export"] = export
                save()
                if not ok:
                    print(f"FAILED in {attempt['seconds']:.0f} s")
                    write_report(out, quiet=True)
                    raise SweepError(f"phase 1 failed: {reason} (see {os.path.join(phase1_dir(out), 'stdout.log')}); "
                                     f"the cells start from its export: no cell was run")
                print(f"done in {attempt['seconds']:.0f} s, export {export}")

        # the cells
        todo = [c for c in cells if status["cells"].get(c["id"], {}).get("state") != "done"]
        for c in cells:
            check_unchanged(status["cells"].get(c["id"], {}), cell_args(sweep, c, out, export), out, previous_out,
                            f"cell {c['id']}", cell_dir(out, c["id"]))
        spent, ran = 0.0, 0
        for i, cell in enumerate(cells, 1):
            entry = status["cells"].setdefault(cell["id"], {})
            head = f"cell {i}/{len(cells)} {cell['id']}"
            if entry.get("state") == "done":
                print(f"{head}: done earlier, skipped")
                continue
            note = {"running": " (was running when its sweep stopped: resuming)", "failed": " (retrying)",
                    "interrupted": " (resuming)"}.get(entry.get("state"), "")
            print(f"{head}{note} ...", end=" ", flush=True)
            args = cell_args(sweep, cell, out, export)
            entry.update(state="running", args=args, updated=now())
            save()
            folder = cell_dir(out, cell["id"])
            attempt, output = execute(command(prefix, trainer, args), os.path.join(folder, "stdout.log"), env,
                                      f"cell {cell['id']}", lock)
            if attempt.get("interrupted"):
                record(entry, attempt, args, "interrupted", "interrupted (Ctrl-C or SIGTERM)", rss_source)
                save()
                print("interrupted")
                raise Interrupted(cell["id"])
            parsed = parse_log(read_log(folder))
            ok = attempt["exit_code"] == 0 and bool(parsed["final"])
            reason = "" if ok else failure_reason(output, attempt["exit_code"], attempt["signal"])
            record(entry, attempt, args, "done" if ok else "failed", reason, rss_source)
            save()
            spent, ran = spent + attempt["seconds"], ran + 1
            left = sum(1 for c in todo[todo.index(cell) + 1:])
            eta = f" (ETA {duration(spent / ran * left)})" if left else ""
            outcome = "done" if ok else f"FAILED ({reason})"
            print(f"{outcome} in {attempt['seconds']:.0f} s{eta}", flush=True)
    except (KeyboardInterrupt, Interrupted):
        save()
        print("\ninterrupted: run the same command again to continue (done cells are skipped, the others resume)",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    results = write_report(out)
    done = sum(1 for r in results["cells"] if r["status"] == "done")
    print(f"{done} of {len(cells)} cells done, {len(cells) - done} not: see {os.path.join(out, 'results.md')}")
    return 0 if done == len(cells) else 1


# --- logs -------------------------------------------------------------------------------------------------------
def read_log(folder):
    """The trainer's log.txt of a run folder, or its stdout.log where that is missing ('' when neither is)."""
    for name in ("log.txt", "stdout.log"):
        try:
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise SweepError(f"{os.path.join(folder, name)}: cannot read: {e.strerror}")
    return ""


def parse_log(text):
    """{"train": {step: fields}, "val" / "gen" / "probe": {task: {step: fields}}, "final": {task: fields},
    "memory": [memory: lines]}; later lines win; anything malformed or unknown is skipped."""
    out = {"train": {}, "val": {}, "gen": {}, "probe": {}, "final": {}, "memory": []}
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0] == "memory:":
            out["memory"].append(line.strip())
            continue
        if tokens[0] not in KINDS:
            continue
        fields = dict(t.split("=", 1) for t in tokens[1:] if "=" in t and not t.startswith("="))
        if tokens[0] == "final":
            if fields.get("task"):
                out["final"][fields["task"]] = fields
            continue
        step = fields.get("step", "")
        if not (step.isascii() and step.isdigit()):
            continue
        if tokens[0] == "train":
            out["train"][int(step)] = fields
        elif fields.get("task"):
            out[tokens[0]].setdefault(fields["task"], {})[int(step)] = fields
    return out


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def measured(text):
    """A logged value as a finite number, None where it is missing, not a finite number, or -1 (the trainer's "not
    measured", e.g. answer_acc and the probes of a run without generation)."""
    v = number(text)
    return None if v is None or not math.isfinite(v) or v == -1.0 else v


def of_task(per_task, task):
    """The lines of `task` in {task: ...}, else those of "all", else {}."""
    return per_task.get(task) or per_task.get("all") or {}


def final_of(parsed, task):
    finals = parsed["final"]
    if task in finals or "all" in finals:
        return finals.get(task) or finals["all"]
    return list(finals.values())[-1] if finals else {}


def memory_gib(lines):
    """(allocated, in use after the first step) in GiB from the last `memory:` lines, None where absent."""
    allocated = in_use = None
    for line in lines:
        m = re.match(r"memory:\s*([0-9.]+)\s*GiB allocated", line)
        if m:
            allocated = float(m.group(1))
        m = re.match(r"memory:\s*([0-9.]+)\s*GiB in use", line)
        if m:
            in_use = float(m.group(1))
    return allocated, in_use


# --- the report -------------------------------------------------------------------------------------------------
def cell_result(out, cell, entry):
    parsed = parse_log(read_log(cell_dir(out, cell["id"])))
    allocated, in_use = memory_gib(parsed["memory"])
    kib = entry.get("peak_rss_kib")
    return {"id": cell["id"], "task": cell["task"], "setting": cell["setting"], "grid": cell["values"],
            "pv": cell["flags"].get(PV), "rmkl": cell["flags"].get(RMKL), "seed": cell["flags"].get("seed"),
            "status": entry.get("state", "not run"), "reason": entry.get("reason", ""),
            "exit_code": entry.get("exit_code"), "signal": entry.get("signal"),
            "final": final_of(parsed, cell["task"]), "peak_rss_mib": round(kib / 1024, 1) if kib else None,
            "rss_source": entry.get("rss_source"), "seconds": entry.get("seconds"),
            "attempts": len(entry.get("attempts", [])), "memory_allocated_gib": allocated,
            "memory_in_use_gib": in_use, "memory_lines": parsed["memory"][-2:],
            "last_step": max(parsed["train"]) if parsed["train"] else None}, parsed


def setting_means(results):
    """[{"setting", "cells", metric: mean over the done cells that have it}] in first-seen order."""
    groups = {}
    for r in results:
        groups.setdefault(r["setting"], [])
        if r["status"] == "done":
            groups[r["setting"]].append(r)
    means = []
    for setting, rows in groups.items():
        m = {"setting": setting, "cells": len(rows)}
        for key in MEANS:
            values = [v for v in (measured(r["final"].get(key)) for r in rows) if v is not None]
            m[key] = sum(values) / len(values) if values else None
        means.append(m)
    return means


def md_escape(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def fmt(value, spec=".4g"):
    return "-" if value is None else format(value, spec)


def final_text(text):
    """A final value as logged; "-" where absent, "n/m" for the trainer's -1 (not measured)."""
    if text is None:
        return "-"
    return "n/m" if number(text) == -1.0 else md_escape(text)


def status_text(r):
    if r["status"] in ("done", "not run", "running"):
        return r["status"]
    how = (f"signal {r['signal']}" if r["signal"] is not None else
           f"exit {r['exit_code']}" if r["exit_code"] is not None else "")
    return f"{r['status']}{f' ({how})' if how else ''}: {md_escape(r['reason'])}"


def commit():
    try:
        p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return p.stdout.strip() if p.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def markdown(sweep, out, status, results, means, figures_note):
    lines = [f"# CVAE sweep {sweep['name']}", ""]
    rev = commit()
    lines.append(f"Written by dev/cvae_sweep.py on {now()}" + (f", commit {rev}" if rev else "") +
                 f" (again from the logs: `python3 dev/cvae_sweep.py report {out}`). Configuration: "
                 f"`{os.path.join(out, 'sweep.json')}`; every cell runs with "
                 f"`{' '.join(f'{k}={v}' for k, v in sweep['cell'].items())}` and its grid values.")
    lines.append("")
    p1 = status.get("phase1")
    if sweep["phase1"] is None:
        lines.append("Phase 1: none (direct-pretrained: the cells' base comes from their flags).")
    elif not p1:
        lines.append("Phase 1: not run.")
    else:
        rss = f", peak RSS {p1['peak_rss_kib'] / 1024:.0f} MiB" if p1.get("peak_rss_kib") else ""
        state = p1.get("state", "not run")
        detail = (f"export `{p1.get('export')}`" if state == "done" else md_escape(p1.get("reason", "")))
        lines.append(f"Phase 1 (`{' '.join(f'{k}={v}' for k, v in sweep['phase1'].items())}`): {state} in "
                     f"{p1.get('seconds', 0):.0f} s{rss}; {detail}.")
    counts = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines += ["", "Cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".", ""]
    extra = [k for k, _ in sweep["grid"] if k not in ("tasks", PV, RMKL, "seed")]
    head = ["cell", "task", "pv", "rmkl", "seed"] + extra + ["status", "answer_acc", "recon_ratio", "kl", "pv term",
                                                            "rmkl term", "router_probe", "posterior_mu_probe", "chance",
                                                            "router_majority", "posterior_majority",
                                                            "alignment_one_to_one", "peak RSS MiB",
                                                            "trainer memory GiB", "seconds"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        mem = (f"{fmt(r['memory_allocated_gib'], '.2f')} / {fmt(r['memory_in_use_gib'], '.2f')}"
               if r["memory_allocated_gib"] is not None or r["memory_in_use_gib"] is not None else "-")
        row = [r["id"], r["task"], r["pv"] or "-", r["rmkl"] or "-", r["seed"] or "-"]
        row += [r["grid"].get(k, "-") for k in extra]
        row += [status_text(r)] + [final_text(r["final"].get(k)) for k in COLUMNS]
        row += [fmt(r["peak_rss_mib"], ".0f"), mem, fmt(r["seconds"], ".0f")]
        lines.append("| " + " | ".join(str(x) for x in row) + " |")
    sources = sorted({r["rss_source"] for r in results if r["rss_source"]})
    lines += ["", "Metrics: the cell's `final` line (pv term, rmkl term: its unweighted pv and rmkl; n/m: logged as "
              "-1, not measured; -: not in the line). Peak RSS: "
              "os.wait4's ru_maxrss of " + (" / ".join(RSS_NOTE.get(s, s) for s in sources) or "the run") +
              ", over all of the cell's attempts. Trainer memory: its `memory:` lines, allocated / in use on the "
              "device after the first step. Seconds: summed over the cell's attempts (a failed or interrupted cell "
              "resumed from its checkpoint counts both).", ""]
    lines += ["## Means per setting", "", "Over the done cells of each setting (all tasks and seeds), from their "
              "final lines (values not measured left out).", ""]
    lines += ["| setting | done cells | " + " | ".join(MEANS) + " |", "|" + "---|" * (len(MEANS) + 2)]
    for m in means:
        lines.append(f"| {m['setting']} | {m['cells']} | " + " | ".join(fmt(m[k]) for k in MEANS) + " |")
    lines.append("")
    for key in MEANS:
        parts = [f"{fmt(m[key])} in {m['setting']}" for m in means if m[key] is not None]
        if parts:
            lines.append(f"- {key} mean " + " vs ".join(parts))
    lines += ["", "## Figures", ""]
    if figures_note:
        lines.append(figures_note)
    else:
        titles = ("validation final-answer accuracy and alignment vs step", "objective terms vs step",
                  "weighted and unweighted PV and RMKL terms vs step", "final metrics per cell")
        for name, title in zip(FIGURES, titles):
            lines.append(f"![{title}]({name})")
    return "\n".join(lines) + "\n"


def pyplot_or_note():
    """(matplotlib.pyplot, None), or (None, the report's line on why there are no figures)."""
    plt = plot.load_pyplot()
    if plt is not None:
        return plt, None
    return None, (f"Figures skipped: matplotlib is not installed for {sys.executable} "
                  f"(apt-get install python3-matplotlib, or pip install matplotlib).")


def write_report(out, quiet=False):
    """Writes results.md, results.json and the figures of the sweep in `out`; returns results.json's object."""
    path = os.path.join(out, "sweep.json")
    if not os.path.isfile(path):
        raise SweepError(f"{path}: missing: {out} is not a sweep folder (`run` writes it)")
    sweep = load_sweep(path)
    status = read_json(os.path.join(out, "status.json"), {})
    cells = status.get("cells", {})
    pairs = [cell_result(out, c, cells.get(c["id"], {})) for c in sweep["cells"]]
    results = [r for r, _ in pairs]
    means = setting_means(results)
    plt, note = pyplot_or_note()
    if plt is not None:
        figures(out, sweep, pairs, plt)
    write_text(os.path.join(out, "results.md"), markdown(sweep, out, status, results, means, note))
    obj = {"name": sweep["name"], "written": now(), "phase1": status.get("phase1"), "cells": results,
           "setting_means": means, "figures": [] if plt is None else list(FIGURES)}
    write_json(os.path.join(out, "results.json"), obj)
    if not quiet:
        wrote = ["results.md", "results.json"] + ([] if plt is None else list(FIGURES))
        print(f"wrote {', '.join(os.path.join(out, w) for w in wrote)}")
    if note:
        print(note, file=sys.stderr)
    return obj


# --- figures ----------------------------------------------------------------------------------------------------
STYLES = ("-", "--", ":", "-.")


def setting_styles(sweep):
    settings = []
    for c in sweep["cells"]:
        if c["setting"] not in settings:
            settings.append(c["setting"])
    return {s: (f"C{i % 10}", STYLES[i % len(STYLES)]) for i, s in enumerate(settings)}


def task_order(sweep):
    tasks = []
    for c in sweep["cells"]:
        if c["task"] not in tasks:
            tasks.append(c["task"])
    return tasks


def curve(points, key, positive=False):
    """[(step, value)] of a key in {step: fields}, numbers only (positive ones with positive)."""
    out = []
    for step in sorted(points):
        v = measured(points[step].get(key))
        if v is not None and (v > 0 or not positive):
            out.append((step, v))
    return out


def save_figure(fig, path, plt):
    try:
        plot.write_atomic(path, "wb", lambda f: fig.savefig(f, format="png", dpi=90))
    except plot.InputError as e:
        raise SweepError(str(e))
    finally:
        plt.close(fig)


def line_panels(path, sweep, pairs, plt, keys, source, title, log_y=False):
    """One row per task, one column per key, one line per cell styled by its setting."""
    tasks, styles = task_order(sweep), setting_styles(sweep)
    fig, axes = plt.subplots(len(tasks), len(keys), figsize=(4.2 * len(keys), 2.8 * len(tasks) + 0.6), squeeze=False)
    for row, task in enumerate(tasks):
        for col, key in enumerate(keys):
            ax = axes[row][col]
            for r, parsed in pairs:
                if r["task"] != task:
                    continue
                points = source(parsed, r["task"], key)
                pts = curve(points, key, positive=log_y)
                if not pts:
                    continue
                color, style = styles[r["setting"]]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, linestyle=style, marker=".",
                        markersize=3, label=r["setting"])
            ax.set_title(f"{task}: {key}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if row == len(tasks) - 1:
                ax.set_xlabel("step", fontsize=7)
            if ax.get_lines():
                if log_y:
                    log_axis(ax, plt)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=8, color="gray")
    figure_legend(fig, axes, sweep["name"] + ": " + title)
    save_figure(fig, path, plt)


def log_axis(ax, plt):
    """A log y axis labelled as plain numbers (3 digits); the minor ticks labelled only within one decade."""
    import matplotlib.ticker as ticker
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    plain = ticker.FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if high < 10 * low else ticker.NullFormatter())
    ax.tick_params(which="both", labelsize=7)


def figure_legend(fig, axes, title):
    """One legend for the whole figure (a label once) below the panels, the title above them."""
    labelled = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    height = fig.get_size_inches()[1]
    fig.suptitle(title, fontsize=10)
    bottom = 0.0
    if labelled:
        ncol = min(len(labelled), 6)
        bottom = (0.25 * math.ceil(len(labelled) / ncol) + 0.15) / height
        fig.legend(list(labelled.values()), list(labelled), loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, bottom, 1, 1 - 0.35 / height))


def eval_source(parsed, task, key):
    """answer_acc from gen lines, the rest from probe lines (those of the cell's task)."""
    return of_task(parsed["gen" if key == "answer_acc" else "probe"], task)


def train_source(parsed, task, key):
    return parsed["train"]


def bars(path, sweep, pairs, plt):
    tasks = task_order(sweep)
    cols = min(3, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.4 * rows + 0.6), squeeze=False)
    width = 0.8 / len(FIG1)
    multi_seed = len({c["values"].get("seed") for c in sweep["cells"]}) > 1
    for ax, task in zip(axes.flat, tasks):
        mine = [r for r, _ in pairs if r["task"] == task]
        for k, key in enumerate(FIG1):
            xs = [i + (k - (len(FIG1) - 1) / 2) * width for i in range(len(mine))]
            ys = [measured(r["final"].get(key)) if r["status"] == "done" else None for r in mine]
            ax.bar([x for x, y in zip(xs, ys) if y is not None], [y for y in ys if y is not None], width,
                   color=f"C{k}", label=key)
        chance = [(i, measured(r["final"].get("chance"))) for i, r in enumerate(mine) if r["status"] == "done"]
        chance = [(i, c) for i, c in chance if c is not None]
        if chance:
            ax.plot([i for i, _ in chance], [c for _, c in chance], linestyle="none", marker="_", markersize=30,
                    color="black", label="chance")
        for i, r in enumerate(mine):
            if r["status"] != "done":
                ax.text(i, 0.5, r["status"], ha="center", va="center", rotation=90, fontsize=8, color="red")
        ax.set_xticks(range(len(mine)))
        ax.set_xticklabels([r["setting"] + (f"\ns{r['seed']}" if multi_seed and r["seed"] else "") for r in mine],
                           fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(task, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    figure_legend(fig, axes, f"{sweep['name']}: final metrics per cell (chance: the probes' chance level)")
    save_figure(fig, path, plt)


def figures(out, sweep, pairs, plt):
    line_panels(os.path.join(out, FIGURES[0]), sweep, pairs, plt, FIG1, eval_source,
                "validation answer accuracy and alignment (gen / probe lines)")
    line_panels(os.path.join(out, FIGURES[1]), sweep, pairs, plt, FIG2, train_source, "objective terms (train lines)")
    line_panels(os.path.join(out, FIGURES[2]), sweep, pairs, plt, FIG3, train_source,
                "PV and RMKL terms, unweighted and weighted (train lines; log scale, zeros not drawn)", log_y=True)
    bars(os.path.join(out, FIGURES[3]), sweep, pairs, plt)


# --- command line -----------------------------------------------------------------------------------------------
def main(argv):
    ap = argparse.ArgumentParser(prog="cvae_sweep.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the sweep's phase 1 and cells (skipping done ones), then the report")
    r.add_argument("sweep", metavar="SWEEP.json")
    r.add_argument("--trainer", help=f"trainer command (default: the configuration's, else {DEFAULT_TRAINER})")
    r.add_argument("--mpirun", type=int, metavar="N", help="run each trainer as mpirun --oversubscribe -np N")
    r.add_argument("--out", help="output folder (default: the configuration's \"out\")")
    r.add_argument("--dry-run", action="store_true", help="print the commands, run and write nothing")
    p = sub.add_parser("report", help="(re)write results.md, results.json and the figures of a sweep folder")
    p.add_argument("dir", metavar="DIR")
    args = ap.parse_args(argv)
    if args.command == "run":
        return guarded(ap.prog, lambda: run_sweep(args.sweep, args.trainer, args.mpirun, args.out, args.dry_run))
    def report():
        write_report(args.dir)
        return 0
    return guarded(ap.prog, report)


def guarded(prog, action):
    """The exit status of action(); a SweepError is one error line and 1, as is a closed stdout (--dry-run | head).
    dev/generalise.py's main uses it too."""
    try:
        return action()
    except SweepError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
