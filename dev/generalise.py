#!/usr/bin/env python3
"""The ETRM generalisation study (issue 15): train one row per recipe on the synthetic benchmark, then report.

    python3 dev/generalise.py run CONFIG.json [--jobs N]

CONFIG (dev/sweeps/generalise_cpu.json): the benchmark data (data/synth.py arguments), the flags every row shares
(`common`) and the rows (`name`, `flags` overriding common). Each row trains in OUT/<name>/ with one OpenMP thread;
--jobs rows run at once. A row whose log already ends with its timing line is skipped, a started one resumes from
its latest checkpoint, so the command can be re-run after an interruption.
"""
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path):
    with open(path) as f:
        return json.load(f)


def make_data(cfg):
    d = cfg["data"]
    if os.path.exists(os.path.join(ROOT, d["dir"], "heldout.bin")):
        return
    subprocess.run([sys.executable, os.path.join(ROOT, "data", "synth.py"), os.path.join(ROOT, d["dir"]),
                    "--tasks", str(d["tasks"]), "--eval-tasks", str(d["eval_tasks"]),
                    "--heldout-tasks", str(d["heldout_tasks"]), "--sequences", "0", "--val-sequences", "0"],
                   check=True)


def row_flags(cfg, row):
    d = cfg["data"]["dir"]
    flags = dict(cfg["common"])
    flags.update(row["flags"])
    flags["data_paths"] = f"{d}/train.bin"
    flags["data_paths_test"] = f"{d}/train.bin,{d}/eval.bin,{d}/heldout.bin"
    flags["checkpoint_path"] = f"{cfg['out']}/{row['name']}"
    return flags


def finished(folder):
    log = os.path.join(ROOT, folder, "log.txt")
    return os.path.exists(log) and any(line.startswith("timing ") for line in open(log))


def snapshot_trainer(cfg):
    """A copy of the trainer for this invocation's rows, so that rebuilding it meanwhile cannot touch them."""
    folder = os.path.join(ROOT, cfg["out"], "bin")
    os.makedirs(folder, exist_ok=True)
    copy = os.path.join(folder, os.path.basename(cfg["trainer"]))
    shutil.copy2(os.path.join(ROOT, cfg["trainer"]), copy + ".tmp")
    os.replace(copy + ".tmp", copy)
    return copy


def run_row(cfg, row):
    flags = row_flags(cfg, row)
    folder = flags["checkpoint_path"]
    if finished(folder):
        return row["name"], "done before"
    if any(n.startswith("ckpt_") for n in os.listdir(os.path.join(ROOT, folder))) if os.path.isdir(os.path.join(ROOT, folder)) else False:
        flags["resume"] = "latest"
    os.makedirs(os.path.join(ROOT, folder), exist_ok=True)
    cmd = [cfg["trainer_copy"]] + [f"{k}={v}" for k, v in flags.items()]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(os.path.join(ROOT, folder, "stdout.txt"), "a") as out:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return row["name"], f"exit {rc}"


def main(argv):
    if len(argv) < 3 or argv[1] != "run":
        sys.exit(__doc__)
    cfg = load_config(argv[2])
    jobs = int(argv[argv.index("--jobs") + 1]) if "--jobs" in argv else 2
    make_data(cfg)
    cfg["trainer_copy"] = snapshot_trainer(cfg)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for name, what in pool.map(lambda r: run_row(cfg, r), cfg["rows"]):
            print(f"{name}: {what}", flush=True)


if __name__ == "__main__":
    main(sys.argv)
