#!/usr/bin/env python3
"""The ETRM generalisation study (issue 15): which demonstration encoder, training recipe and test-time search let
ETRM solve new tasks from their demonstrations. Trains one row per recipe on the synthetic benchmark, evaluates
every row with an encoder with its own and with another task's demonstrations (the demo control), evaluates
chosen rows with test-time latent optimisation, and tabulates it all.

Usage (paths in the configuration are relative to the repository root, where every command runs):
    python3 dev/generalise.py run CONFIG.json [--jobs N] [--dry-run]
    python3 dev/generalise.py report OUT_OR_CONFIG     # (re)write OUT/results.md, results.json and the figures

CONFIG (dev/sweeps/generalise_cpu.json):
    {"name": "generalise-cpu",                 # names the study in the report
     "comment": "..." or ["...", ...],          # optional, ignored
     "out": "out/generalise",                   # the study's folder (OUT)
     "trainer": "./train_etrm_cpu",
     "data": {"dir": "data/generalise", "tasks": 20000, "eval_tasks": 240, "heldout_tasks": 90},  # ("seed": N)
     "common": {"hidden_size": 64, ...},        # the trainer flags of every row
     "rows": [{"name": "standard", "flags": {}}, {"name": "standard_seed1", "flags": {"seed": 1}}, ...],
     "demo_control": {"max_eval_groups": 240},  # optional (max_eval_groups: 0, all, when not given)
     "latent_opt": {"rows": ["standard"], "steps": [0, 10, 50], "lr": 0.01, "max_eval_groups": 48}}   # optional
A row's flags override common's. Flag values are written as dev/cvae_sweep.py writes them (numbers as Python
writes them, true/false as 1/0, a list joined by commas). The study sets data_paths, data_paths_test,
checkpoint_path, resume, eval_only and load_checkpoint itself: a configuration that sets them, an unknown key, a
row name that is not a plain folder name (or given twice), a latent_opt row that is not a row or has no latent
(encoder_type=none) to optimise with a K > 0, are errors: one line, exit 1. (The demo-control and latent_opt runs
set eval_shuffle_demos, latent_opt_steps, latent_opt_lr and max_eval_groups themselves, over the row's.)

run:
 1. the data: data/synth.py DIR --tasks .. --eval-tasks .. --heldout-tasks .. --sequences 0 --val-sequences 0,
    unless DIR/heldout.bin exists;
 2. the trainer copied to OUT/bin/ (rebuilding it meanwhile cannot touch the runs), the configuration to
    OUT/config.json;
 3. the rows, --jobs (default 2) at once, each with OMP_NUM_THREADS = cores / jobs (at least 1; the CPU trainer's
    results do not depend on it):
        OUT/bin/<trainer> <common + row flags> data_paths=DIR/train.bin
            data_paths_test=DIR/train.bin,DIR/eval.bin,DIR/heldout.bin checkpoint_path=OUT/<row> [resume=1]
    its output appended to OUT/<row>/stdout.txt between a "==== generalise.py start" and an "==== generalise.py
    end exit=N" line. A row is done when its log.txt has a `timing` line (or the trainer's "nothing to do" line);
    done rows are skipped, a row with a ckpt_ file resumes from its newest checkpoint (resume=1), and a row that
    a live process is training (a process started with its checkpoint_path) is left to it;
 4. demo_control (when configured): for each done row whose encoder_type is not none, two evaluations (again
    --jobs at once), with the task's own demonstrations (D=0, demos_true) and with another task's of its batch
    (D=1, demos_shuffled; the trainer labels its sets eval_shuffled_demos and heldout_shuffled_demos):
        OUT/bin/<trainer> <the row's flags> data_paths_test=DIR/eval.bin,DIR/heldout.bin eval_only=1
            load_checkpoint=OUT/<row>/<newest model_*.safetensors, else newest ckpt_*.bin> eval_shuffle_demos=D
            max_eval_groups=N checkpoint_path=OUT/<row>/demos_true (D=0) or OUT/<row>/demos_shuffled (D=1)
    a run is done (and skipped) when its log has the eval lines of both sets, and one that a live process is
    running (a process started with its checkpoint_path) is left to it;
 5. latent_opt: for each listed row that is done and each K of steps (again --jobs at once):
        OUT/bin/<trainer> <the row's flags> data_paths_test=DIR/eval.bin,DIR/heldout.bin eval_only=1
            load_checkpoint=OUT/<row>/<newest model_*.safetensors, else newest ckpt_*.bin> latent_opt_steps=K
            latent_opt_lr=LR max_eval_groups=N checkpoint_path=OUT/<row>/latent_opt_K<K>
    done, skipped and left to a live process as the demo-control runs;
 6. the report. Exit 0 when every row, demo-control and latent_opt run is done, 1 otherwise. A second `run` of the
    same OUT while one is alive is refused. --dry-run prints the commands and writes nothing.

report reads OUT/<row>/log.txt (lines `train step=..`, `eval step=.. set=..`, `timing ..`, `progress ..`; malformed
ones skipped and counted, a resumed run's later line of a step wins) and the newest predictions_step*_<set>.json,
and writes OUT/results.md, OUT/results.json and, with matplotlib, fig_eval_pass2.png, fig_heldout_pass2.png,
fig_eval_token_acc.png and, with demo_control, fig_demo_gap.png (without it one message, no figures). The demo
gap of a row: token_acc(own demos) - token_acc(shuffled demos) and lm_loss(shuffled) - lm_loss(own) of its two
demo-control runs, per set; positive when the answers depend on the task's own demonstrations. OUT_OR_CONFIG is
the configuration, or OUT holding config.json, or an OUT that a configuration of dev/sweeps/ writes (OUT's
config.json is the one its last `run` started with). A row's status: done, running (pid), failed (the reason: the
last `error` line, or the signal), stopped (no end line: its runner was stopped), not started. Rows whose names
differ only by a `_seedN` suffix are summarised together (their done rows' last evaluations, demo gaps included).
Standard library only (matplotlib optional).
"""
import argparse
import concurrent.futures
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "data"))
import arc_format  # noqa: E402  (data/arc_format.py: read_tasks)
import cvae_sweep  # noqa: E402  (flag_text, write_text/json, now, commit, duration, md_escape, fmt,
#                                            failure_reason, figure_legend, save_figure)
import plot  # noqa: E402  (dev/plot.py: parse_line)
from cvae_sweep import SweepError, now  # noqa: E402  (SweepError: one line for the user)

TOP_KEYS = ("name", "comment", "out", "trainer", "data", "common", "rows", "demo_control", "latent_opt")
DATA_KEYS = ("dir", "tasks", "eval_tasks", "heldout_tasks", "seed")
ROW_KEYS = ("name", "flags", "comment")
LATENT_KEYS = ("rows", "steps", "lr", "max_eval_groups")
DEMO_KEYS = ("max_eval_groups",)
DEMOS = (("true", "0"), ("shuffled", "1"))      # the demo-control runs: (name, eval_shuffle_demos)
SHUFFLED = "_shuffled_demos"                     # the trainer's suffix of a set label with eval_shuffle_demos=1
RESERVED = ("data_paths", "data_paths_test", "checkpoint_path", "resume", "eval_only", "load_checkpoint")
SETS = ("train", "eval", "heldout")
FAMILY_SETS = ("eval", "heldout")
ONLY_SETS = ("eval", "heldout")        # the sets of the eval-only runs (demo control, latent_opt)
CURVE_KEYS = ("pass@1", "pass@2", "token_acc")
LAST_TRAIN = 5          # train lines averaged for the diagnostics
SEED_RE = re.compile(r"^(.+)_seed(\d+)$")
START, END = "==== generalise.py start", "==== generalise.py end"
FIGURES = (("fig_eval_pass2.png", "eval", "pass@2", "eval set (new tasks of the training families): pass@2"),
           ("fig_heldout_pass2.png", "heldout", "pass@2", "held-out families: pass@2"),
           ("fig_eval_token_acc.png", "eval", "token_acc", "eval set: token accuracy"))
DEMO_FIGURE = ("fig_demo_gap.png", "demo gap: token accuracy with the task's own demonstrations minus with "
               "another task's")
STYLES = ("-", "--", ":", "-.")


# --- configuration ----------------------------------------------------------------------------------------------
def flag_texts(obj, where):
    """{key: command-line text} of a JSON object of trainer flags."""
    if not isinstance(obj, dict):
        raise SweepError(f"{where}: expected an object of trainer flags")
    flags = {}
    for key, value in obj.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SweepError(f"{where}: {key!r} is not a trainer flag name")
        if key in RESERVED:
            raise SweepError(f"{where}: {key} is set by the study ({', '.join(RESERVED)})")
        flags[key] = cvae_sweep.flag_text(value, f"{where}.{key}")
    return flags


def whole(value, where, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SweepError(f"{where}: {json.dumps(value)} is not a whole number >= {low}")
    return value


def unknown_key(obj, keys, where):
    extra = [k for k in obj if k not in keys]
    if extra:
        raise SweepError(f"{where}: unknown key {extra[0]!r} (expected {', '.join(keys)})")


def parse_config(config, source):
    """The validated study: name, out, trainer, data, common, rows [{name, flags, own}], latent (or None), config."""
    if not isinstance(config, dict):
        raise SweepError(f"{source}: expected a JSON object")
    unknown_key(config, TOP_KEYS, source)
    for key in ("name", "out", "trainer"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise SweepError(f"{source}: \"{key}\" must be a non-empty string")
    data = config.get("data")
    if not isinstance(data, dict):
        raise SweepError(f"{source}: \"data\" must be an object: dir, tasks, eval_tasks, heldout_tasks")
    unknown_key(data, DATA_KEYS, f"{source}: data")
    if not isinstance(data.get("dir"), str) or not data["dir"]:
        raise SweepError(f"{source}: data.dir must be a non-empty string")
    for key in ("tasks", "eval_tasks", "heldout_tasks"):
        whole(data.get(key), f"{source}: data.{key}", 1)
    if "seed" in data:
        whole(data["seed"], f"{source}: data.seed", 0)
    common = flag_texts(config.get("common", {}), f"{source}: common")
    rows_obj = config.get("rows")
    if not isinstance(rows_obj, list) or not rows_obj:
        raise SweepError(f"{source}: \"rows\" must be a non-empty list of {{\"name\": ..., \"flags\": {{...}}}}")
    rows, seen = [], set()
    for i, row in enumerate(rows_obj):
        where = f"{source}: rows[{i}]"
        if not isinstance(row, dict):
            raise SweepError(f"{where}: expected an object with \"name\" and \"flags\"")
        unknown_key(row, ROW_KEYS, where)
        name = row.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or name == "bin":
            raise SweepError(f"{where}: name {json.dumps(name)} is not a folder name (letters, digits, '.', '_', "
                             f"'-'; not bin)")
        if name in seen:
            raise SweepError(f"{where}: row {name} is given twice")
        seen.add(name)
        own = flag_texts(row.get("flags", {}), f"{where} ({name}).flags")
        rows.append({"name": name, "flags": dict(common, **own), "own": own})
    study = {"name": config["name"], "out": config["out"], "trainer": config["trainer"], "data": data,
             "common": common, "rows": rows, "demo": parse_demo(config.get("demo_control"), source),
             "latent": parse_latent(config.get("latent_opt"), rows, source), "config": config}
    return study


def parse_demo(obj, source):
    if obj is None:
        return None
    where = f"{source}: demo_control"
    if not isinstance(obj, dict):
        raise SweepError(f"{where}: expected an object: max_eval_groups")
    unknown_key(obj, DEMO_KEYS, where)
    return {"max_eval_groups": whole(obj.get("max_eval_groups", 0), f"{where}.max_eval_groups", 0)}


def parse_latent(obj, rows, source):
    if obj is None:
        return None
    where = f"{source}: latent_opt"
    if not isinstance(obj, dict):
        raise SweepError(f"{where}: expected an object: rows, steps, lr, max_eval_groups")
    unknown_key(obj, LATENT_KEYS, where)
    names = obj.get("rows")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SweepError(f"{where}.rows: expected a non-empty list of row names")
    by_name = {r["name"]: r for r in rows}
    for n in names:
        if n not in by_name:
            raise SweepError(f"{where}.rows: {n} is not a row")
    steps = obj.get("steps")
    if not isinstance(steps, list) or not steps:
        raise SweepError(f"{where}.steps: expected a non-empty list of whole numbers >= 0")
    for k in steps:
        whole(k, f"{where}.steps", 0)
    if len(set(steps)) != len(steps) or len(set(names)) != len(names):
        raise SweepError(f"{where}: a row or a step is listed twice")
    for n in names:
        if by_name[n]["flags"].get("encoder_type") == "none" and any(steps):
            raise SweepError(f"{where}.rows: {n} has encoder_type=none: no latent to optimise")
    lr = obj.get("lr", 0.01)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise SweepError(f"{where}.lr: {json.dumps(lr)} is not a number > 0")
    return {"rows": names, "steps": steps, "lr": cvae_sweep.flag_text(lr, f"{where}.lr"),
            "max_eval_groups": whole(obj.get("max_eval_groups", 48), f"{where}.max_eval_groups", 0)}


def load_config(path):
    return parse_config(cvae_sweep.read_config(path), path)


def find_config(arg):
    """The study of `report OUT_OR_CONFIG`."""
    if os.path.isfile(arg):
        return load_config(arg)
    if not os.path.isdir(arg):
        raise SweepError(f"{arg}: no such configuration file or study folder")
    own = os.path.join(arg, "config.json")
    if os.path.isfile(own):
        return load_config(own)
    sweeps = os.path.join(ROOT, "dev", "sweeps")
    for name in sorted(os.listdir(sweeps)):
        path = os.path.join(sweeps, name)
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and "rows" in config and isinstance(config.get("out"), str) and \
                os.path.realpath(os.path.join(ROOT, config["out"])) == os.path.realpath(arg):
            return parse_config(config, path)
    raise SweepError(f"{arg} has no config.json and no configuration of dev/sweeps/ writes there: give CONFIG.json")


# --- paths and flags --------------------------------------------------------------------------------------------
def out_dir(study):
    return os.path.join(ROOT, study["out"])


def row_folder(study, name):
    return os.path.join(ROOT, study["out"], name)


def latent_folder(study, name, k):
    return os.path.join(ROOT, study["out"], name, f"latent_opt_K{k}")


def demo_folder(study, name, demos):
    return os.path.join(ROOT, study["out"], name, f"demos_{demos}")


def has_encoder(row):
    return row["flags"].get("encoder_type", "standard") != "none"


def set_paths(study, sets):
    return ",".join(os.path.join(study["data"]["dir"], s + ".bin") for s in sets)


def row_flags(study, row):
    flags = dict(row["flags"])
    flags["data_paths"] = os.path.join(study["data"]["dir"], "train.bin")
    flags["data_paths_test"] = set_paths(study, SETS)
    flags["checkpoint_path"] = os.path.join(study["out"], row["name"])
    return flags


def latent_flags(study, row, k, weights):
    flags = row_flags(study, row)
    flags.update(data_paths_test=set_paths(study, ONLY_SETS), eval_only="1", load_checkpoint=weights,
                 latent_opt_steps=str(k), latent_opt_lr=study["latent"]["lr"],
                 max_eval_groups=str(study["latent"]["max_eval_groups"]),
                 checkpoint_path=os.path.join(study["out"], row["name"], f"latent_opt_K{k}"))
    return flags


def demo_flags(study, row, demos, weights):
    flags = row_flags(study, row)
    flags.update(data_paths_test=set_paths(study, ONLY_SETS), eval_only="1", load_checkpoint=weights,
                 eval_shuffle_demos=dict(DEMOS)[demos], max_eval_groups=str(study["demo"]["max_eval_groups"]),
                 checkpoint_path=os.path.join(study["out"], row["name"], f"demos_{demos}"))
    return flags


def newest(folder, prefix, suffix):
    """The name of the newest <prefix><8 digits><suffix> in folder, or None."""
    try:
        names = [n for n in os.listdir(folder) if re.fullmatch(re.escape(prefix) + r"\d{8}" + re.escape(suffix), n)]
    except OSError:
        return None
    return max(names) if names else None


def row_weights(study, name):
    """The row's newest model_*.safetensors (else ckpt_*.bin) as a path relative to the root, or None."""
    folder = row_folder(study, name)
    found = newest(folder, "model_", ".safetensors") or newest(folder, "ckpt_", ".bin")
    return os.path.join(study["out"], name, found) if found else None


def trainer_copy(study):
    return os.path.join(out_dir(study), "bin", os.path.basename(study["trainer"]))


def command(trainer, flags):
    return [trainer] + [f"{k}={v}" for k, v in flags.items()]


# --- processes --------------------------------------------------------------------------------------------------
def processes():
    """[(pid, cwd, argv)] of the other live processes this user may read ([] where /proc is missing)."""
    found = []
    try:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return found
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ROOT
        if argv:
            found.append((pid, cwd, argv))
    return found


def live_trainers(procs):
    """{real path of a checkpoint_path: pid} of the live processes started with checkpoint_path=...."""
    live = {}
    for pid, cwd, argv in procs:
        for a in argv[1:]:
            if a.startswith("checkpoint_path="):
                live[os.path.realpath(os.path.join(cwd, a.split("=", 1)[1]))] = pid
    return live


def other_runners(study, procs):
    """The pids of other `generalise.py run` processes (not --dry-run) writing the study's OUT."""
    mine, pids = os.path.realpath(out_dir(study)), []
    for pid, cwd, argv in procs:
        for i, a in enumerate(argv[:-2]):
            if os.path.basename(a) != "generalise.py" or argv[i + 1] != "run" or "--dry-run" in argv:
                continue
            root = os.path.dirname(os.path.dirname(os.path.realpath(os.path.join(cwd, a))))
            try:
                with open(os.path.join(cwd, argv[i + 2]), encoding="utf-8") as f:
                    out = json.load(f)["out"]
                if os.path.realpath(os.path.join(root, out)) == mine:
                    pids.append(pid)
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return pids


# --- logs -------------------------------------------------------------------------------------------------------
def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise SweepError(f"{path}: cannot read: {e.strerror}")


def key_values(tokens):
    return dict(t.split("=", 1) for t in tokens if "=" in t and not t.startswith("="))


def parse_log(text):
    """{"train": {step: fields}, "eval": {set: {step: fields}}, "timing": fields or None, "progress": fields or None,
    "nothing_to_do", "resumed", "total_steps" (the data line's), "malformed": count}; later lines win."""
    p = {"train": {}, "eval": {}, "timing": None, "progress": None, "nothing_to_do": False, "resumed": False,
         "total_steps": None, "malformed": 0}
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0] in ("train", "eval"):
            try:
                kind, fields = plot.parse_line(line)
            except ValueError:
                p["malformed"] += 1
                continue
            if kind == "train":
                p["train"][int(fields["step"])] = fields
            else:
                p["eval"].setdefault(fields["set"], {})[int(fields["step"])] = fields
        elif tokens[0] == "timing":
            p["timing"] = key_values(tokens[1:])
        elif tokens[0] == "progress":
            p["progress"] = key_values(tokens[1:])
        elif line.startswith("nothing to do:"):
            p["nothing_to_do"] = True
        elif line.startswith("resumed from"):
            p["resumed"] = True
        elif tokens[0] == "data:":
            m = re.search(r"\bsteps: (\d+)", line)
            if m:
                p["total_steps"] = int(m.group(1))
    return p


def value(fields, key):
    """A field as a finite number, None where missing or not one."""
    v = cvae_sweep.number((fields or {}).get(key))
    return v if v is not None and math.isfinite(v) else None


def seconds_of(text):
    """Seconds of the trainer's durations: 4m43s, 1h02m; None otherwise."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text or "")
    if not text or not m:
        return None
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return 3600 * h + 60 * mi + s


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def row_done(parsed):
    return parsed["timing"] is not None or parsed["nothing_to_do"]


def labels_done(parsed, labels):
    """Whether an eval-only run's log has the eval lines of every set ({set: its label in the log})."""
    return all(parsed["eval"].get(label) for label in labels.values())


def last_attempt(text):
    """(the output of the last attempt in a stdout.txt, its end line's fields or None)."""
    start = text.rfind(START)
    body = text if start < 0 else text[start:].partition("\n")[2]
    end, output = None, []
    for line in body.splitlines():
        if line.startswith(END):
            end = key_values(line.split())
        else:
            output.append(line)
    return "\n".join(output), end


def run_state(folder, parsed, done, live, lacks="a timing line"):
    """(status, reason) of a run folder: done, running, failed, stopped or not started; lacks: what a run that
    exited 0 without being done lacks."""
    if done:
        return "done", ""
    pid = live.get(os.path.realpath(folder))
    if pid:
        return "running", f"pid {pid}"
    stdout = read_text(os.path.join(folder, "stdout.txt"))
    if not stdout and not os.path.exists(os.path.join(folder, "log.txt")):
        return "not started", ""
    output, end = last_attempt(stdout)
    if end is not None:
        sig, code = value(end, "signal"), value(end, "exit")
        if sig is not None or (code is not None and code != 0):
            return "failed", cvae_sweep.failure_reason(output, None if code is None else int(code),
                                                       None if sig is None else int(sig))
        return "failed", "exited 0 without " + lacks
    errors = [line.strip() for line in output.splitlines() if line.lower().startswith("error")]
    if errors:
        return "failed", errors[-1][:400]
    return "stopped", "no end line: its runner was stopped"


# --- running ----------------------------------------------------------------------------------------------------
def data_command(study):
    d = study["data"]
    cmd = [sys.executable, os.path.join(ROOT, "data", "synth.py"), os.path.join(ROOT, d["dir"]),
           "--tasks", str(d["tasks"]), "--eval-tasks", str(d["eval_tasks"]), "--heldout-tasks", str(d["heldout_tasks"]),
           "--sequences", "0", "--val-sequences", "0"]
    return cmd + (["--seed", str(d["seed"])] if "seed" in d else [])


def data_ready(study):
    return os.path.exists(os.path.join(ROOT, study["data"]["dir"], "heldout.bin"))


def snapshot_trainer(study):
    """A copy of the trainer for this invocation's runs, so that rebuilding it meanwhile cannot touch them."""
    source = os.path.join(ROOT, study["trainer"])
    if not (os.path.isfile(source) and os.access(source, os.X_OK)):
        raise SweepError(f"trainer {study['trainer']} not found or not executable (make "
                         f"{os.path.basename(study['trainer'])})")
    copy = trainer_copy(study)
    os.makedirs(os.path.dirname(copy), exist_ok=True)
    shutil.copy2(source, copy + ".tmp")
    os.replace(copy + ".tmp", copy)
    return copy


def threads_per_job(jobs):
    """The cores shared out among the jobs run at once (the CPU trainer's results do not depend on it)."""
    return max(1, (os.cpu_count() or 1) // jobs)


def execute(cmd, folder, threads):
    """Runs cmd in the root with OMP_NUM_THREADS=threads, its output appended to folder/stdout.txt between a start
    and an end line; returns (exit status or None, signal or None, seconds)."""
    os.makedirs(folder, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.monotonic()
    with open(os.path.join(folder, "stdout.txt"), "ab") as out:
        out.write(f"{START} {now()}: {shlex.join(cmd)}\n".encode())
        out.flush()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL).returncode
        except OSError as e:
            out.write(f"error: cannot start {cmd[0]}: {e.strerror}\n".encode())
            rc = 127
        seconds = time.monotonic() - start
        what = f"signal={-rc}" if rc < 0 else f"exit={rc}"
        out.write(f"{END} {what} seconds={seconds:.1f} {now()}\n".encode())
    return (None, -rc, seconds) if rc < 0 else (rc, None, seconds)


def run_row(study, row, trainer, live):
    folder = row_folder(study, row["name"])
    parsed = parse_log(read_text(os.path.join(folder, "log.txt")))
    if row_done(parsed):
        return f"row {row['name']}: done before, skipped"
    if os.path.realpath(folder) in live:
        return f"row {row['name']}: being trained by pid {live[os.path.realpath(folder)]}, left to it"
    flags = row_flags(study, row)
    if newest(folder, "ckpt_", ".bin"):
        flags["resume"] = "1"
    execute(command(trainer, flags), folder, study["threads"])
    parsed = parse_log(read_text(os.path.join(folder, "log.txt")))
    status, reason = run_state(folder, parsed, row_done(parsed), {})
    head = f"row {row['name']}{' (resumed)' if 'resume' in flags else ''}"
    return f"{head}: {status}" + (f" ({reason})" if reason else "")


def run_eval_job(study, job, trainer, live):
    """Runs one eval-only job of eval_jobs (unless it is done, being run, or its row is not done)."""
    folder, head = job["folder"], job["head"]
    if labels_done(parse_log(read_text(os.path.join(folder, "log.txt"))), job["labels"]):
        return f"{head}: done before, skipped"
    if os.path.realpath(folder) in live:
        return f"{head}: running in pid {live[os.path.realpath(folder)]}, left to it"
    row_log = parse_log(read_text(os.path.join(row_folder(study, job["row"]["name"]), "log.txt")))
    weights = row_weights(study, job["row"]["name"])
    if not row_done(row_log) or weights is None:
        return f"{head}: skipped, the row is not done"
    execute(command(trainer, job["flags"](weights)), folder, study["threads"])
    parsed = parse_log(read_text(os.path.join(folder, "log.txt")))
    status, reason = run_state(folder, parsed, labels_done(parsed, job["labels"]), {}, "its eval lines")
    return f"{head}: {status}" + (f" ({reason})" if reason else "")


def latent_jobs(study):
    if study["latent"] is None:
        return []
    rows = {r["name"]: r for r in study["rows"]}
    return [(rows[n], k) for n in study["latent"]["rows"] for k in study["latent"]["steps"]]


def demo_jobs(study):
    if study["demo"] is None:
        return []
    return [(row, demos) for row in study["rows"] if has_encoder(row) for demos, _ in DEMOS]


def eval_jobs(study):
    """The eval-only runs in the order they run, the demo control (cheap) first, then latent_opt: [{"kind"
    ("demo_control" or "latent_opt"), "row", "demos" or "steps", "head", "folder", "labels" ({set: its label in the
    log}), "flags" (weights -> the trainer's flags)}]."""
    jobs = []
    for row, demos in demo_jobs(study):
        suffix = SHUFFLED if demos == "shuffled" else ""
        jobs.append({"kind": "demo_control", "row": row, "demos": demos,
                     "head": f"demo_control {row['name']} {demos} demos",
                     "folder": demo_folder(study, row["name"], demos),
                     "labels": {s: s + suffix for s in ONLY_SETS},
                     "flags": lambda w, row=row, demos=demos: demo_flags(study, row, demos, w)})
    for row, k in latent_jobs(study):
        jobs.append({"kind": "latent_opt", "row": row, "steps": k, "head": f"latent_opt {row['name']} K={k}",
                     "folder": latent_folder(study, row["name"], k), "labels": {s: s for s in ONLY_SETS},
                     "flags": lambda w, row=row, k=k: latent_flags(study, row, k, w)})
    return jobs


def dry_run(study, jobs, live):
    trainer = trainer_copy(study)
    print(f"# in {ROOT}, OMP_NUM_THREADS={threads_per_job(jobs)}, {jobs} at once; each run's output appended to its folder's stdout.txt")
    if not data_ready(study):
        print("# the data:")
        print(shlex.join(data_command(study)))
    print(f"# the trainer {study['trainer']} is copied to {trainer}")
    for i, row in enumerate(study["rows"], 1):
        folder = row_folder(study, row["name"])
        head = f"# row {i}/{len(study['rows'])} {row['name']}"
        if row_done(parse_log(read_text(os.path.join(folder, "log.txt")))):
            print(f"{head}: done, skipped")
            continue
        if os.path.realpath(folder) in live:
            print(f"{head}: being trained by pid {live[os.path.realpath(folder)]}, left to it")
            continue
        flags = row_flags(study, row)
        if newest(folder, "ckpt_", ".bin"):
            flags["resume"] = "1"
        print(f"{head}{' (resuming)' if 'resume' in flags else ''} -> {os.path.join(folder, 'stdout.txt')}")
        print(f"OMP_NUM_THREADS={threads_per_job(jobs)} " + shlex.join(command(trainer, flags)))
    for job in eval_jobs(study):
        folder, name = job["folder"], job["row"]["name"]
        head = f"# {job['head']}"
        if labels_done(parse_log(read_text(os.path.join(folder, "log.txt"))), job["labels"]):
            print(f"{head}: done, skipped")
            continue
        if os.path.realpath(folder) in live:
            print(f"{head}: running in pid {live[os.path.realpath(folder)]}, left to it")
            continue
        weights = row_weights(study, name)
        done = row_done(parse_log(read_text(os.path.join(row_folder(study, name), "log.txt"))))
        if not done or weights is None:
            weights = os.path.join(study["out"], name, "model_XXXXXXXX.safetensors")
        print(f"{head}{'' if done else ' (once the row is done; model_XXXXXXXX: its newest weights)'} -> "
              f"{os.path.join(folder, 'stdout.txt')}")
        print(f"OMP_NUM_THREADS={threads_per_job(jobs)} " + shlex.join(command(trainer, job["flags"](weights))))
    return 0


def run_study(config_path, jobs, dry):
    study = load_config(config_path)
    if jobs < 1:
        raise SweepError(f"--jobs {jobs}: expected at least 1")
    procs = processes()
    live = live_trainers(procs)
    if dry:
        return dry_run(study, jobs, live)
    others = other_runners(study, procs)
    if others:
        raise SweepError(f"another generalise.py run (pid {others[0]}) is using {study['out']}: wait for it to end")
    if not data_ready(study):
        print("making the data: " + shlex.join(data_command(study)), flush=True)
        if subprocess.run(data_command(study), cwd=ROOT).returncode != 0:
            raise SweepError(f"data/synth.py failed: no data in {study['data']['dir']}")
    trainer = snapshot_trainer(study)
    study["threads"] = threads_per_job(jobs)
    cvae_sweep.write_json(os.path.join(out_dir(study), "config.json"), study["config"])
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for line in pool.map(lambda r: run_row(study, r, trainer, live), study["rows"]):
            print(line, flush=True)
        for line in pool.map(lambda job: run_eval_job(study, job, trainer, live), eval_jobs(study)):
            print(line, flush=True)
    report = write_report(study)
    kinds = (("rows", "rows"), ("demo_control", "demo-control runs"), ("latent_opt", "latent_opt runs"))
    counts = [(sum(r["status"] == "done" for r in report[key]), len(report[key]), what) for key, what in kinds]
    print(", ".join(f"{n} of {total} {what} done" for n, total, what in counts if total or what == "rows") +
          f": see {os.path.join(study['out'], 'results.md')}")
    return 0 if all(n == total for n, total, _ in counts) else 1


# --- the report -------------------------------------------------------------------------------------------------
def read_truths(study):
    """{set: ({task name: [test outputs]}, error text or None)} of the eval and heldout task files."""
    truths = {}
    for s in FAMILY_SETS:
        path = os.path.join(ROOT, study["data"]["dir"], s + ".bin")
        try:
            tasks, _ = arc_format.read_tasks(path)
            truths[s] = ({t["name"]: [out for _, out in t["test"]] for t in tasks}, None)
        except FileNotFoundError:
            truths[s] = ({}, f"{os.path.join(study['data']['dir'], s + '.bin')} is missing")
        except (OSError, arc_format.FormatError) as e:
            truths[s] = ({}, str(e))
    return truths


def family(name):
    return name.rsplit("_", 1)[0] if "_" in name else name


def cell_accuracy(grid, want):
    """The fraction of want's cells that grid gets right; 0 when grid is missing or of another shape."""
    if not isinstance(grid, list) or len(grid) != len(want) or any(
            not isinstance(row, list) or len(row) != len(w) for row, w in zip(grid, want)):
        return 0.0
    cells = sum(len(w) for w in want)
    return sum(a == b for row, w in zip(grid, want) for a, b in zip(row, w)) / cells if cells else 0.0


def family_pass(path, truth):
    """{"step", "families": {family: {"pass@1", "pass@2", "cells", "tasks"}}, "all": {...}} of a predictions file
    against the true outputs, or {"error": why}. A task scores the fraction of its test inputs whose truth is among
    the top 1 / 2 candidates, and (cells) the mean fraction of the true output's cells the top candidate gets right
    (0 when its shape differs); families average their tasks."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        tasks = obj["tasks"]
        if not isinstance(tasks, dict):
            raise TypeError("tasks is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {"error": f"{os.path.basename(path)}: unreadable ({e})"}
    sums, unknown = {}, 0
    for name, inputs in tasks.items():
        outputs = truth.get(name)
        if not outputs or not isinstance(inputs, list):
            unknown += 1
            continue
        hits = [0, 0, 0.0]
        for i, want in enumerate(outputs):
            cands = inputs[i] if i < len(inputs) and isinstance(inputs[i], list) else []
            grids = [c.get("grid") for c in cands[:2] if isinstance(c, dict)]
            hits[0] += bool(grids[:1]) and grids[0] == want
            hits[1] += want in grids
            hits[2] += cell_accuracy(grids[0] if grids else None, want)
        acc = sums.setdefault(family(name), [0.0, 0.0, 0.0, 0])
        for k in range(3):
            acc[k] += hits[k] / len(outputs)
        acc[3] += 1
    keys = ("pass@1", "pass@2", "cells")
    fams = {f: dict({k: a[i] / a[3] for i, k in enumerate(keys)}, tasks=a[3]) for f, a in sums.items()}
    n = sum(a[3] for a in sums.values())
    overall = dict({k: sum(a[i] for a in sums.values()) / n if n else None for i, k in enumerate(keys)}, tasks=n)
    return {"step": obj.get("step"), "families": fams, "all": overall, "unknown_tasks": unknown}


def row_families(folder, truths):
    result = {}
    for s in FAMILY_SETS:
        name = newest(folder, "predictions_step", f"_{s}.json")
        truth, error = truths[s]
        if name is None:
            result[s] = None
        elif error:
            result[s] = {"error": error}
        else:
            result[s] = dict(family_pass(os.path.join(folder, name), truth), file=name)
    return result


def last_eval_step(parsed, sets):
    """The last step evaluated on every set that has eval lines (else the last step of any)."""
    per = [set(parsed["eval"][s]) for s in sets if parsed["eval"].get(s)]
    if not per:
        return None
    common = set.intersection(*per)
    return max(common) if common else max(max(p) for p in per)


def set_summary(fields):
    if fields is None:
        return None
    tasks = value(fields, "tasks")
    seconds = value(fields, "seconds")
    s = {k: value(fields, k) for k in ("pass@1", "pass@2", "pass@5", "token_acc", "exact_acc", "q_halt_acc",
                                        "lm_loss", "demo_loss_encoder", "demo_loss_optimised")}
    s.update(tasks=tasks, seconds=seconds, seconds_per_task=seconds / tasks if seconds is not None and tasks else None)
    return s


def row_result(study, row, live, truths):
    folder = row_folder(study, row["name"])
    parsed = parse_log(read_text(os.path.join(folder, "log.txt")))
    status, reason = run_state(folder, parsed, row_done(parsed), live)
    steps = sorted(parsed["train"])
    recent = [parsed["train"][s] for s in steps[-LAST_TRAIN:]]
    shares = []
    for f in recent:
        enc, dec = value(f, "grad_norm_enc"), value(f, "grad_norm_dec")
        if enc is not None and dec is not None and enc * enc + dec * dec > 0:
            shares.append(enc * enc / (enc * enc + dec * dec))
    encoder = has_encoder(row)
    at = last_eval_step(parsed, SETS)
    sets = {s: set_summary(parsed["eval"].get(s, {}).get(at)) for s in SETS}
    done = status == "done"
    timing = parsed["timing"] or {}
    progress = parsed["progress"] or {}
    wall = seconds_of(timing.get("elapsed")) if done else seconds_of(progress.get("elapsed"))
    curves = {s: {k: [[step, value(f, k)] for step, f in sorted(parsed["eval"].get(s, {}).items())
                      if value(f, k) is not None] for k in CURVE_KEYS} for s in SETS}
    total = parsed["total_steps"]
    if total is None and row["flags"].get("max_steps", "").isdigit():
        total = int(row["flags"]["max_steps"])
    return {"name": row["name"], "status": status, "reason": reason,
            "flags": {k: v for k, v in row["own"].items() if study["common"].get(k) != v},
            "encoder": encoder, "step": steps[-1] if steps else None, "total_steps": total, "last_eval_step": at,
            "sets": sets,
            "encoder_cross_sample_var": mean(value(f, "encoder_cross_sample_var") for f in recent) if encoder else None,
            "encoder_grad_share": mean(shares) if encoder else None, "train_lines_averaged": len(recent),
            "ms_per_step": value(timing, "ms_per_step") if done else mean(value(f, "ms") for f in recent),
            "wall_seconds": wall, "resumed": parsed["resumed"], "malformed_lines": parsed["malformed"],
            "families": row_families(folder, truths), "curves": curves, "demo_gap": None}


def eval_result(job, row_status, live):
    """An eval-only run of eval_jobs: {"row", "demos" or "steps", "status", "reason", "folder", "sets": {set:
    summary}} (the sets by their plain names, eval and heldout, whatever their labels in the log)."""
    folder, labels = job["folder"], job["labels"]
    parsed = parse_log(read_text(os.path.join(folder, "log.txt")))
    status, reason = run_state(folder, parsed, labels_done(parsed, labels), live, "its eval lines")
    if status == "not started" and row_status != "done":
        reason = f"waits for the row ({row_status})"
    at = last_eval_step(parsed, list(labels.values()))
    which = {"demos": job["demos"]} if job["kind"] == "demo_control" else {"steps": job["steps"]}
    return dict({"row": job["row"]["name"]}, **which, status=status, reason=reason, folder=os.path.relpath(folder, ROOT),
                sets={s: set_summary(parsed["eval"].get(label, {}).get(at)) for s, label in labels.items()})


def demo_gap(true, shuffled):
    """{set: {"token_acc": own - shuffled, "lm_loss": shuffled - own}} of a row's two demo-control results (None
    where a value is missing): positive when the answers depend on the task's own demonstrations."""
    gap = {}
    for s in ONLY_SETS:
        t, f = (true or {}).get("sets", {}).get(s) or {}, (shuffled or {}).get("sets", {}).get(s) or {}
        acc = None if t.get("token_acc") is None or f.get("token_acc") is None else t["token_acc"] - f["token_acc"]
        loss = None if t.get("lm_loss") is None or f.get("lm_loss") is None else f["lm_loss"] - t["lm_loss"]
        gap[s] = {"token_acc": acc, "lm_loss": loss}
    return gap


def spread(values, text=None):
    """Seeds' values as text: "a / b (mean m)" for two, "m ± sd (n seeds)" for more (text: the value's, percent
    by default)."""
    text = text or pct
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{text(values[0])} (one seed)"
    m = sum(values) / len(values)
    if len(values) == 2:
        return f"{text(values[0])} / {text(values[1])} (mean {text(m)})"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{text(m)} ± {text(sd)} (mean ± sample std of {len(values)} seeds)"


SEED_METRICS = (("eval", "pass@1"), ("eval", "pass@2"), ("heldout", "pass@2"), ("eval", "token_acc"),
                ("heldout", "token_acc"))
SEED_GAPS = (("eval", "token_acc"), ("eval", "lm_loss"), ("heldout", "token_acc"))   # as "<set> demo gap <key>"


def loss_text(v):
    return "-" if v is None else f"{v:.3f}"


def seed_groups(results):
    """[{"base", "rows", "done", metric: [values]}] of the rows whose names differ only by a _seedN suffix."""
    groups = {}
    for r in results:
        m = SEED_RE.match(r["name"])
        groups.setdefault(m.group(1) if m else r["name"], []).append(r)
    out = []
    for base, rows in groups.items():
        if len(rows) < 2 or not any(SEED_RE.match(r["name"]) for r in rows):
            continue
        done = [r for r in rows if r["status"] == "done"]
        g = {"base": base, "rows": [r["name"] for r in rows], "done": [r["name"] for r in done]}
        for s, k in SEED_METRICS:
            g[f"{s} {k}"] = [(r["sets"][s] or {}).get(k) for r in done]
        for s, k in SEED_GAPS:
            g[f"{s} demo gap {k}"] = [(r["demo_gap"] or {}).get(s, {}).get(k) for r in done]
        out.append(g)
    return out


def pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


def pair(summary, a="pass@1", b="pass@2"):
    if not summary:
        return "-"
    return f"{pct(summary.get(a))} / {pct(summary.get(b))}"


def status_text(r):
    if r["status"] == "running":
        return f"running ({r['reason']})"
    if r["status"] in ("failed", "stopped") or r["reason"]:
        return f"{r['status']}: {cvae_sweep.md_escape(r['reason'])}"
    return r["status"]


def gap_cells(r):
    """The main table's demo-gap cells of a row: eval token acc (points), eval lm_loss, heldout token acc."""
    if not r["encoder"]:
        return ["n/a"] * 3
    g = r["demo_gap"] or {}
    acc = [(g.get(s) or {}).get("token_acc") for s in ONLY_SETS]
    loss = (g.get("eval") or {}).get("lm_loss")
    signed = ["-" if v is None else f"{100 * v:+.1f}" for v in acc]
    return [signed[0], "-" if loss is None else f"{loss:+.3f}", signed[1]]


def demo_loss(summary):
    if not summary or summary.get("demo_loss_encoder") is None:
        return "-"
    return f"{summary['demo_loss_encoder']:.4f} → {cvae_sweep.fmt(summary.get('demo_loss_optimised'), '.4f')}"


def markdown(study, results, groups, demo, latent, figures_note, out_arg):
    lines = [f"# ETRM generalisation study {study['name']}", ""]
    rev = cvae_sweep.commit()
    d = study["data"]
    lines.append(f"Written by dev/generalise.py on {now()}" + (f", commit {rev}" if rev else "") +
                 f" (again from the logs: `python3 dev/generalise.py report {out_arg}`). Data: `{d['dir']}` "
                 f"(data/synth.py: {d['tasks']} training tasks, {d['eval_tasks']} eval tasks of the training families, "
                 f"{d['heldout_tasks']} tasks of the held-out families). Every row: "
                 f"`{' '.join(f'{k}={v}' for k, v in study['common'].items())}` and its own flags.")
    counts = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines += ["", "Rows: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".", ""]
    head = ["row", "status", "flags", "steps", "last eval", "train pass@1 / @2", "eval pass@1 / @2",
            "heldout pass@1 / @2", "eval token acc", "heldout token acc", "cross-sample var", "enc grad share",
            "eval q_halt acc", "ms/step", "wall", "eval s/task"]
    gaps = study["demo"] is not None
    if gaps:
        head[10:10] = ["eval demo gap: token acc", "eval demo gap: lm_loss", "heldout demo gap: token acc"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = r["sets"]
        steps = "-" if r["step"] is None else f"{r['step']}" + (f"/{r['total_steps']}" if r["total_steps"] else "")
        wall = "-" if r["wall_seconds"] is None else cvae_sweep.duration(r["wall_seconds"]) + (
            "" if r["status"] == "done" else " so far")
        flags = " ".join(f"{k}={v}" for k, v in r["flags"].items()) or "(common)"
        row = [r["name"], status_text(r), cvae_sweep.md_escape(flags), steps, cvae_sweep.fmt(r["last_eval_step"], "d"),
               pair(s["train"]), pair(s["eval"]), pair(s["heldout"]), pct((s["eval"] or {}).get("token_acc")),
               pct((s["heldout"] or {}).get("token_acc")),
               cvae_sweep.fmt(r["encoder_cross_sample_var"], ".4g") if r["encoder"] else "n/a",
               cvae_sweep.fmt(r["encoder_grad_share"], ".3f") if r["encoder"] else "n/a",
               pct((s["eval"] or {}).get("q_halt_acc")), cvae_sweep.fmt(r["ms_per_step"], ".1f"), wall,
               cvae_sweep.fmt((s["eval"] or {}).get("seconds_per_task"), ".3g")]
        if gaps:
            row[10:10] = gap_cells(r)
        lines.append("| " + " | ".join(str(x) for x in row) + " |")
    lines += ["", "Pass@K and accuracies in percent, from the eval lines of the last step evaluated on every set "
              "(pass@K: the true output among the top K answers, a task scoring the fraction of its test inputs). "
              f"Cross-sample var (encoder_cross_sample_var) and enc grad share are the means over the last "
              f"{LAST_TRAIN} train lines; **enc grad share** = grad_norm_enc² / (grad_norm_enc² + grad_norm_dec²), "
              "the encoder's share of the squared gradient norm before clipping (n/a: encoder_type=none). eval "
              "q_halt acc: the eval line's. ms/step: the timing line's average (done rows), else the mean of the "
              "last train lines' ms. wall: the timing line's elapsed (of the last attempt when a row was resumed), "
              "so far: the last progress line's. eval s/task: the eval line's seconds / tasks."]
    if gaps:
        lines[-1] += (" **Demo gap** (the demo control below): the row's final weights evaluated with each test "
                      "input's own task's demonstrations and with another task's (`eval_shuffle_demos=1`); token acc: "
                      "token accuracy with its own minus with another task's (percentage points), lm_loss: the loss "
                      "with another task's minus with its own. A positive gap: the answers depend on the task's own "
                      "demonstrations; about 0: the encoder's latent is ignored, or carries nothing of the task "
                      "(n/a: encoder_type=none reads no demonstrations).")
    odd = [f"{r['name']} {r['malformed_lines']}" for r in results if r["malformed_lines"]]
    resumed = [r["name"] for r in results if r["resumed"]]
    if odd:
        lines.append(f"Malformed log lines skipped: {', '.join(odd)}.")
    if resumed:
        lines.append(f"Resumed: {', '.join(resumed)}.")
    if groups:
        lines += ["", "## Seeds", "", "Rows whose names differ only by a `_seedN` suffix, over their done rows' last "
                  "evaluations (percent" + ("; demo gaps: token acc in percentage points, lm_loss as a loss "
                                           "difference" if gaps else "") + ")."]
        for g in groups:
            parts = [f"{key} {spread(g[key])}" for key in (f"{s} {k}" for s, k in SEED_METRICS)]
            if gaps:
                parts += [f"{key} {spread(g[key], loss_text if k == 'lm_loss' else None)}"
                          for key, k in ((f"{s} demo gap {k}", k) for s, k in SEED_GAPS)]
            lines.append(f"- **{g['base']}** ({', '.join(g['rows'])}; {len(g['done'])} of {len(g['rows'])} done): "
                         + "; ".join(parts))
    lines += ["", "## Per family", "", "pass@2 in percent per rule family, from each row's newest "
              "predictions_step*_<set>.json against the true outputs of the task file (all: over the tasks of the "
              "file, as the eval line's pass@2), then the percentage of the true output's cells that the top answer "
              "gets right (0 for an answer of another shape)."]
    for s in FAMILY_SETS:
        fams = []
        for r in results:
            for f in ((r["families"].get(s) or {}).get("families") or {}):
                if f not in fams:
                    fams.append(f)
        lines += ["", f"### {s}", ""]
        notes = [f"{r['name']}: {r['families'][s]['error']}" for r in results
                 if (r["families"].get(s) or {}).get("error")]
        if not fams:
            lines.append("No predictions yet.")
        else:
            lines += ["| row | step | " + " | ".join(fams) + " | all |", "|" + "---|" * (len(fams) + 3)]
        for r in results:
            fp = r["families"].get(s)
            if not fp or fp.get("error"):
                continue
            cells = [pct(fp["families"][f]["pass@2"]) + " / " + pct(fp["families"][f].get("cells"))
                     + f" ({fp['families'][f]['tasks']})" if f in fp["families"] else "-" for f in fams]
            step = fp.get("step") if isinstance(fp.get("step"), int) else "-"
            lines.append(f"| {r['name']} | {step} | " + " | ".join(cells)
                         + f" | {pct(fp['all']['pass@2'])} / {pct(fp['all'].get('cells'))} |")
        if fams:
            lines += ["", "pass@2 / cells (n): n is the family's tasks in the file."]
        if notes:
            lines.append("Not readable: " + cvae_sweep.md_escape("; ".join(notes)) + ".")
    if gaps:
        n = study["demo"]["max_eval_groups"]
        lines += ["", "## Demo control", "",
                  f"`eval_only=1` from the newest weights of every row with an encoder, `max_eval_groups={n}` on eval "
                  f"and heldout ({f'at most the first {n} tasks of each' if n else 'all their tasks'}), twice: with "
                  "each test input's own task's demonstrations (own: `eval_shuffle_demos=0`, folder demos_true) and "
                  "with those of another task of its batch (shuffled: `eval_shuffle_demos=1`, folder demos_shuffled). "
                  "Token accuracy in percent; gap: own minus shuffled (token acc, points) and shuffled minus own "
                  "(lm_loss).", ""]
        head = ["row", "status", "eval token acc own / shuffled", "gap", "eval lm_loss own / shuffled", "gap",
                "heldout token acc own / shuffled", "gap", "heldout lm_loss own / shuffled", "gap",
                "eval pass@2 own / shuffled"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        by_row = {}
        for j in demo:
            by_row.setdefault(j["row"], {})[j["demos"]] = j
        gap_of = {r["name"]: r["demo_gap"] for r in results}
        for name, pair_ in by_row.items():
            t, f = pair_.get("true"), pair_.get("shuffled")
            if t["status"] == f["status"] and t["reason"] == f["reason"]:
                state = status_text(t)
            else:
                state = f"own: {status_text(t)}; shuffled: {status_text(f)}"
            cells = [name, state]
            for s in ONLY_SETS:
                a, b = t["sets"][s] or {}, f["sets"][s] or {}
                g = (gap_of.get(name) or {}).get(s) or {}
                cells += [f"{pct(a.get('token_acc'))} / {pct(b.get('token_acc'))}",
                          "-" if g.get("token_acc") is None else f"{100 * g['token_acc']:+.1f}",
                          f"{loss_text(a.get('lm_loss'))} / {loss_text(b.get('lm_loss'))}",
                          "-" if g.get("lm_loss") is None else f"{g['lm_loss']:+.3f}"]
            e_t, e_f = t["sets"]["eval"] or {}, f["sets"]["eval"] or {}
            cells.append(f"{pct(e_t.get('pass@2'))} / {pct(e_f.get('pass@2'))}")
            lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    if study["latent"] is not None:
        lt = study["latent"]
        lines += ["", "## Test-time latent optimisation", "",
                  f"`eval_only=1` from each row's newest weights with `latent_opt_steps=K latent_opt_lr={lt['lr']} "
                  f"max_eval_groups={lt['max_eval_groups']}` on eval and heldout (the first "
                  f"{lt['max_eval_groups'] or 'all'} tasks of each; K=0 is the same evaluation without it). Demo loss: "
                  "the demonstrations' loss per sample with the encoder's latent → the optimised one.", ""]
        head = ["row", "K", "status", "eval pass@1 / @2", "heldout pass@1 / @2", "eval token acc", "heldout token acc",
                "eval demo loss", "heldout demo loss", "eval s/task", "heldout s/task"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for j in latent:
            e, h = j["sets"]["eval"], j["sets"]["heldout"]
            row = [j["row"], j["steps"], status_text(j), pair(e), pair(h), pct((e or {}).get("token_acc")),
                   pct((h or {}).get("token_acc")), demo_loss(e), demo_loss(h),
                   cvae_sweep.fmt((e or {}).get("seconds_per_task"), ".3g"),
                   cvae_sweep.fmt((h or {}).get("seconds_per_task"), ".3g")]
            lines.append("| " + " | ".join(str(x) for x in row) + " |")
    lines += ["", "## Figures", ""]
    if figures_note:
        lines.append(figures_note)
    else:
        for name, title in figure_list(study):
            lines.append(f"![{title}]({name})")
    return "\n".join(lines) + "\n"


def figure_list(study):
    """[(file name, title)] of the report's figures."""
    return [(f[0], f[3]) for f in FIGURES] + ([DEMO_FIGURE] if study["demo"] is not None else [])


def figure(path, study, results, set_name, key, title, plt):
    fig, axes = plt.subplots(1, 1, figsize=(12, 5.2), squeeze=False)     # room for 6 legend columns of row names
    ax = axes[0][0]
    for i, r in enumerate(results):
        pts = r["curves"][set_name][key]
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], color=f"C{i % 10}",
                    linestyle=STYLES[(i // 10) % len(STYLES)], marker=".", label=r["name"])
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("%", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if not ax.get_lines():
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="gray")
    cvae_sweep.figure_legend(fig, axes, f"{study['name']}: {title}")
    cvae_sweep.save_figure(fig, path, plt)


def demo_figure(path, study, results, plt):
    """Horizontal bars per row with an encoder: its demo gap of token accuracy on eval and heldout (points)."""
    rows = [r for r in results if r["encoder"]]
    fig, axes = plt.subplots(1, 1, figsize=(8, 2.0 + 0.45 * max(len(rows), 1)), squeeze=False)
    ax = axes[0][0]
    drawn = False
    for j, (s, label) in enumerate((("eval", "eval (new tasks of the training families)"),
                                    ("heldout", "heldout (held-out families)"))):
        points = [(i, ((r["demo_gap"] or {}).get(s) or {}).get("token_acc")) for i, r in enumerate(rows)]
        points = [(i, 100 * v) for i, v in points if v is not None]
        if points:
            ax.barh([i - 0.2 + 0.4 * j for i, _ in points], [v for _, v in points], height=0.38, color=f"C{j}",
                    label=label)
            drawn = True
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["name"] for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("token accuracy, own demonstrations minus another task's (percentage points)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, axis="x")
    if not drawn:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="gray")
    cvae_sweep.figure_legend(fig, axes, f"{study['name']}: {DEMO_FIGURE[1]}")
    cvae_sweep.save_figure(fig, path, plt)


def write_report(study, out_arg=None, quiet=False):
    """Writes results.md, results.json and the figures into OUT; returns results.json's object."""
    out = out_dir(study)
    if not os.path.isdir(out):
        raise SweepError(f"{study['out']}: no such folder (run the study first)")
    live = live_trainers(processes())
    truths = read_truths(study)
    results = [row_result(study, row, live, truths) for row in study["rows"]]
    status = {r["name"]: r["status"] for r in results}
    jobs = [(j, eval_result(j, status[j["row"]["name"]], live)) for j in eval_jobs(study)]
    demo = [r for j, r in jobs if j["kind"] == "demo_control"]
    latent = [r for j, r in jobs if j["kind"] == "latent_opt"]
    if study["demo"] is not None:
        pairs = {}
        for j in demo:
            pairs.setdefault(j["row"], {})[j["demos"]] = j
        for r in results:
            if r["name"] in pairs:
                r["demo_gap"] = demo_gap(pairs[r["name"]].get("true"), pairs[r["name"]].get("shuffled"))
    groups = seed_groups(results)
    plt, note = cvae_sweep.pyplot_or_note()
    if plt is not None:
        for name, set_name, key, title in FIGURES:
            figure(os.path.join(out, name), study, results, set_name, key, title, plt)
        if study["demo"] is not None:
            demo_figure(os.path.join(out, DEMO_FIGURE[0]), study, results, plt)
    cvae_sweep.write_text(os.path.join(out, "results.md"),
                          markdown(study, results, groups, demo, latent, note, out_arg or study["out"]))
    figures = [] if plt is None else [f[0] for f in figure_list(study)]
    obj = {"name": study["name"], "written": now(), "commit": cvae_sweep.commit(), "out": study["out"],
           "common": study["common"], "rows": results, "seed_groups": groups, "demo_control": demo,
           "latent_opt": latent, "figures": figures}
    cvae_sweep.write_json(os.path.join(out, "results.json"), obj)
    if not quiet:
        wrote = ["results.md", "results.json"] + figures
        print(f"wrote {', '.join(os.path.join(study['out'], w) for w in wrote)}")
    if note:
        print(note, file=sys.stderr)
    return obj


# --- command line -----------------------------------------------------------------------------------------------
def main(argv):
    ap = argparse.ArgumentParser(prog="generalise.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train the rows, run the demo-control and latent_opt evaluations (skipping done "
                                   "ones), then report")
    r.add_argument("config", metavar="CONFIG.json")
    r.add_argument("--jobs", type=int, default=2, help="runs at once (default 2), each with one OpenMP thread")
    r.add_argument("--dry-run", action="store_true", help="print the commands, run and write nothing")
    p = sub.add_parser("report", help="(re)write results.md, results.json and the figures of a study")
    p.add_argument("target", metavar="OUT_OR_CONFIG")
    args = ap.parse_args(argv)
    if args.command == "run":
        return cvae_sweep.guarded(ap.prog, lambda: run_study(args.config, args.jobs, args.dry_run))
    def report():
        write_report(find_config(args.target), args.target)
        return 0
    return cvae_sweep.guarded(ap.prog, report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
