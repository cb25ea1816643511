#!/usr/bin/env python3
"""Convert ARC-AGI task JSON into one arc.cu binary task file (format: data/arc_format.py).

Each INPUT is one of
  - an ARC task file  {"train": [{"input": grid, "output": grid}, ...], "test": [...]}, named by its stem;
  - a directory: every *.json directly in it, sorted by file name;
  - a Kaggle file *_challenges.json (task id -> task; test outputs may be missing), with
    *_solutions.json next to it when present (task id -> one output grid per test input).
Tasks are written in the order given.  Any problem (bad JSON, NaN/Infinity, a key twice in one
object, a malformed task or grid, duplicate task names, ...) exits with status 1 and one line
"error: FILE: problem" on stderr naming the file and task; OUT.bin is then left as it was.
"""
import argparse
import os
import sys

import arc_format

PROG = sys.argv[0]
CHALLENGES, SOLUTIONS = "_challenges.json", "_solutions.json"


class InputError(Exception):
    """A problem with an input, already phrased as one line."""

    def __init__(self, path, task, problem):
        super().__init__(f'{path}: task "{task}": {problem}' if task is not None else f"{path}: {problem}")


def load_json(path, task=None):
    """arc_format.load_json_strict with InputError; `task` names the task the file holds (for messages),
    if it is a single task."""
    try:
        return arc_format.load_json_strict(path, expected_levels="tasks, pairs and grids, a few levels",
                                           expected_keys="unique keys, e.g. task ids")
    except arc_format.JSONFileError as e:
        raise InputError(path, task, e.problem)


def parse_task(obj, path, name, kaggle=False):
    """Validate one task object; returns {"name", "train": [(in, out)], "test": [(in, out or None)]}.

    In a Kaggle challenges file (`kaggle`) test pairs may lack "output" (it is then unknown).
    """
    def check(ok, problem):
        if not ok:
            raise InputError(path, name, problem)

    what = "task" if kaggle else "top level"
    check(isinstance(obj, dict), f'{what} is {arc_format.json_kind(obj)}, expected an object with "train" and "test"')
    task = {"name": name}
    for split in ("train", "test"):
        check(split in obj, f'missing "{split}"')
        pairs = obj[split]
        check(isinstance(pairs, list), f'"{split}" is {arc_format.json_kind(pairs)}, expected a list of pairs')
        check(pairs, f'"{split}" is empty')
        task[split] = []
        for i, pair in enumerate(pairs):
            where = f"{split} pair {i}"
            check(isinstance(pair, dict),
                  f'{where} is {arc_format.json_kind(pair)}, expected an object with "input" and "output"')
            check("input" in pair, f'{where}: missing "input"')
            check("output" in pair or (split == "test" and kaggle), f'{where}: missing "output"')
            for role in ("input", "output"):
                problem = role in pair and arc_format.grid_problem(pair[role])
                check(not problem, f"{where} {role}: {problem}")
            task[split].append((pair["input"], pair.get("output")))
    return task


def load_task_file(path):
    """One ARC task file, named by its stem."""
    name = os.path.splitext(os.path.basename(path))[0]
    return [parse_task(load_json(path, name), path, name)]


def load_challenges(path):
    """A Kaggle challenges file, with test outputs from the matching solutions file when it exists."""
    challenges = load_json(path)
    if not isinstance(challenges, dict):
        raise InputError(path, None,
                         f"top level is {arc_format.json_kind(challenges)}, expected an object task id -> task")
    if not challenges:
        raise InputError(path, None, "contains no tasks")
    solutions_path = path[:-len(CHALLENGES)] + SOLUTIONS
    solutions = load_json(solutions_path) if os.path.exists(solutions_path) else None
    if solutions is not None and not isinstance(solutions, dict):
        raise InputError(solutions_path, None,
                         f"top level is {arc_format.json_kind(solutions)}, expected an object task id -> outputs")
    tasks = []
    for name, obj in challenges.items():
        if not name or "\0" in name:
            raise InputError(path, name, "task id must be non-empty and contain no NUL")
        task = parse_task(obj, path, name, kaggle=True)
        if solutions is not None:
            task["test"] = attach_solutions(task, solutions, solutions_path)
        tasks.append(task)
    return tasks


def attach_solutions(task, solutions, path):
    """The task's test pairs with outputs taken from the solutions dict (file `path`)."""
    name, tests = task["name"], task["test"]
    if name not in solutions:
        raise InputError(path, name, "task missing from the solutions file")
    outputs = solutions[name]
    if not isinstance(outputs, list) or len(outputs) != len(tests):
        got = f"{len(outputs)} outputs" if isinstance(outputs, list) else arc_format.json_kind(outputs)
        raise InputError(path, name, f"solutions have {got}, the task has {len(tests)} test input(s)")
    for i, grid in enumerate(outputs):
        problem = arc_format.grid_problem(grid)
        if problem:
            raise InputError(path, name, f"test pair {i} output: {problem}")
    return [(inp, out) for (inp, _), out in zip(tests, outputs)]


def load_file(path):
    """The tasks of one JSON file: a Kaggle challenges file or a single task."""
    return load_challenges(path) if path.endswith(CHALLENGES) else load_task_file(path)


def load_input(path):
    """The tasks of one INPUT argument (file or directory), as (file, task) pairs."""
    if not os.path.exists(path):
        raise InputError(path, None, "no such file or directory")
    if not os.path.isdir(path):
        return [(path, task) for task in load_file(path)]
    files = sorted(f for f in os.listdir(path) if f.endswith(".json"))
    # a solutions file beside its challenges file is read together with it
    files = [f for f in files if not (f.endswith(SOLUTIONS) and f[:-len(SOLUTIONS)] + CHALLENGES in files)]
    if not files:
        raise InputError(path, None, "directory contains no .json files")
    return [(os.path.join(path, f), task) for f in files for task in load_file(os.path.join(path, f))]


def convert(out_path, inputs):
    """Load and validate every input, then write them all to out_path; returns the tasks."""
    seen = {}
    tasks = []
    for inp in inputs:
        for path, task in load_input(inp):
            if task["name"] in seen:
                raise InputError(path, task["name"], f"duplicate task name (also in {seen[task['name']]})")
            seen[task["name"]] = path
            tasks.append(task)
    try:
        os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
        arc_format.write_tasks(out_path, tasks, canvas=arc_format.MAX_SIDE)
    except OSError as e:
        raise InputError(out_path, None, f"cannot write: {e.strerror}")
    return tasks


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__,
        epilog="example: python3 data/arc.py out/arc1_train.bin ../shared/data/arc-agi-1/data/training")
    parser.add_argument("out", metavar="OUT.bin", help="binary task file to write (atomically)")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="ARC task .json file, directory of them, or Kaggle *_challenges.json")
    args = parser.parse_args(argv)
    try:
        tasks = convert(args.out, args.inputs)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # never a traceback: report anything unexpected on one line
        print(f"{PROG}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    n_train = sum(len(t["train"]) for t in tasks)
    n_test = sum(len(t["test"]) for t in tasks)
    n_unknown = sum(out is None for t in tasks for _, out in t["test"])
    print(f"{PROG}: wrote {len(tasks)} tasks, {n_train + n_test} pairs ({n_train} train, {n_test} test, "
          f"{n_unknown} test outputs unknown) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
