#!/usr/bin/env python3
"""Turn train_etrm prediction files into an ARC Prize (Kaggle) submission.

Usage:  python3 dev/submission.py OUT.json PRED.json [PRED.json ...]
                                  [--tasks X_challenges.json] [--solutions X_solutions.json]

PRED.json is a predictions_step%08d_<set>.json written by train_etrm (section 8):
  {"step": S, "set": "...", "tasks": {"<task>": [[{"votes": int, "mean_q": float, "grid": [[...]]}, ...
                                                  up to 10 candidates, best first], ... one list per test input]}}
(votes 1..2^31-1, mean_q the mean halting probability 0..1, grids at most 30x30 with colours 0..9).
OUT.json is  {"<task>": [{"attempt_1": grid, "attempt_2": grid}, ... one per test input]}.

Several PRED files (checkpoints, processes) are merged per task and test input: identical grids
are one candidate, votes add up, mean_q is the vote-weighted mean; candidates rank by
(votes, mean_q) descending, ties keeping first-seen order (files in the order given).  Empty
grids are dropped (they can never be right).  attempt_1/attempt_2 are the top two; a single
candidate fills both; none gives [[0]] (ARC needs a non-empty grid).
--tasks: the submission holds exactly the challenge's tasks and test inputs (missing ones get
[[0]]); a task whose number of test inputs differs from the challenge's is an error.
--solutions: also print the ARC Prize score (per task, the fraction of test inputs that either
attempt solves; the score is the mean over the solutions' tasks).
Prints a one-line summary.  Any bad input (also: JSON with NaN/Infinity, duplicate keys or absurd
nesting) exits 1 with one line "error: FILE: problem" on stderr; OUT.json is then left as it was.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data"))
import arc_format  # noqa: E402

FILLER = [[0]]
MAX_SIDE = 30           # ARC grids have sides 1..30
MAX_VOTES = 2**31 - 1   # train_etrm writes votes as an int32


class InputError(Exception):
    """A problem with an input, already phrased as one line."""

    def __init__(self, path, problem, task=None):
        super().__init__(f'{path}: task "{task}": {problem}' if task is not None else f"{path}: {problem}")


def kind(value):
    """JSON-flavoured type name for messages: arc_format.json_kind, in this tool's words for numbers."""
    return {int: "an integer", float: "a number"}.get(type(value)) or arc_format.json_kind(value)


def load_json(path):
    """arc_format.load_json_strict: any problem is an arc_format.JSONFileError ("PATH: problem")."""
    return arc_format.load_json_strict(path, expected_levels="a few levels: tasks, test inputs, grids")


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def parse_grid(grid, path, task, where, allow_empty=False):
    """Validate a grid (rows of equal length, sides 1..MAX_SIDE, colours 0..9); returns it as a tuple of
    tuples.  With allow_empty, a grid without cells (a prediction that can never be right) passes too."""
    if not isinstance(grid, list) or not all(isinstance(row, list) for row in grid):
        raise InputError(path, f"{where}: grid is {kind(grid)}, expected a list of rows", task)
    if grid and len({len(row) for row in grid}) != 1:
        raise InputError(path, f"{where}: grid rows have different lengths", task)
    rows, cols = len(grid), len(grid[0]) if grid else 0
    if not (rows and cols) and not allow_empty:
        raise InputError(path, f"{where}: grid is empty, expected sides 1..{MAX_SIDE}", task)
    if rows > MAX_SIDE or cols > MAX_SIDE:
        raise InputError(path, f"{where}: grid is {rows}x{cols}, expected sides 1..{MAX_SIDE}", task)
    if not all(is_int(c) and 0 <= c <= 9 for row in grid for c in row):
        raise InputError(path, f"{where}: grid cells must be integers 0..9", task)
    return tuple(tuple(row) for row in grid)


def parse_candidate(cand, path, task, where):
    """Validate one candidate; returns (grid tuple, votes, mean_q)."""
    if not isinstance(cand, dict):
        raise InputError(path, f"{where} is {kind(cand)}, expected an object", task)
    for key in ("votes", "mean_q", "grid"):
        if key not in cand:
            raise InputError(path, f'{where}: missing "{key}"', task)
    votes, mean_q = cand["votes"], cand["mean_q"]
    if not is_int(votes) or not 1 <= votes <= MAX_VOTES:
        got = votes if is_int(votes) else kind(votes)
        raise InputError(path, f'{where}: "votes" is {got}, expected an integer 1..{MAX_VOTES}', task)
    if isinstance(mean_q, bool) or not isinstance(mean_q, (int, float)):
        raise InputError(path, f'{where}: "mean_q" is {kind(mean_q)}, expected a number 0..1', task)
    if not 0 <= mean_q <= 1:   # a mean probability; NaN and Infinity never get here (load_json)
        raise InputError(path, f'{where}: "mean_q" is {mean_q}, expected a number 0..1', task)
    return parse_grid(cand["grid"], path, task, where, allow_empty=True), votes, float(mean_q)


def load_predictions(path):
    """Read one PRED file; returns {task: [[(grid, votes, mean_q), ...] per test input]}."""
    obj = load_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("tasks"), dict):
        raise InputError(path, 'expected an object with a "tasks" object')
    tasks = {}
    for task, inputs in obj["tasks"].items():
        if not task:
            raise InputError(path, "a task name is empty, expected the task's id")
        if not isinstance(inputs, list) or not all(isinstance(c, list) for c in inputs):
            raise InputError(path, "expected a list of candidate lists (one per test input)", task)
        if not inputs:   # every ARC task has at least one test input
            raise InputError(path, "no test inputs, expected one list of candidates per test input", task)
        tasks[task] = [[parse_candidate(c, path, task, f"test {i} candidate {j}") for j, c in enumerate(cands)]
                       for i, cands in enumerate(inputs)]
    return tasks


def merge(files):
    """Merge the PRED files' candidates.

    Returns ({task: [[(grid, votes, mean_q), ...] ranked, per test input]}, {task: first file naming it},
    number of empty grids dropped).
    """
    merged, source, n_empty = {}, {}, 0
    for path in files:
        for task, inputs in load_predictions(path).items():
            slots = merged.setdefault(task, [{} for _ in inputs])
            source.setdefault(task, path)
            if len(slots) != len(inputs):
                raise InputError(path, f"{len(inputs)} test inputs, but {source[task]} has {len(slots)}", task)
            for slot, cands in zip(slots, inputs):
                for grid, votes, mean_q in cands:
                    if not any(grid):   # no rows, or only empty rows
                        n_empty += 1
                        continue
                    v, qv = slot.get(grid, (0, 0.0))   # dicts keep first-seen order
                    slot[grid] = (v + votes, qv + votes * mean_q)
    ranked = {task: [rank(slot) for slot in slots] for task, slots in merged.items()}
    return ranked, source, n_empty


def rank(slot):
    """{grid: (votes, votes * mean_q)} -> [(grid, votes, mean_q)] by (votes, mean_q) descending, stable."""
    cands = [(grid, v, qv / v) for grid, (v, qv) in slot.items()]
    return sorted(cands, key=lambda c: (-c[1], -c[2]))


def attempts(cands):
    """The two attempts for one test input from its ranked candidates."""
    grids = [[list(row) for row in grid] for grid, _, _ in cands[:2]] or [FILLER]
    return {"attempt_1": grids[0], "attempt_2": grids[-1]}


def load_task_object(path):
    """Read a JSON file whose top level maps task names to their data (Kaggle challenges / solutions)."""
    obj = load_json(path)
    if not isinstance(obj, dict):
        raise InputError(path, f"top level is {kind(obj)}, expected an object of tasks")
    if not obj:
        raise InputError(path, "contains no tasks, expected an object of tasks")
    return obj


def load_challenges(path):
    """Read an ARC *_challenges.json; returns {task: number of test inputs}, in file order."""
    obj = load_task_object(path)
    counts = {}
    for task, body in obj.items():
        if not isinstance(body, dict) or not isinstance(body.get("test"), list) or not body["test"]:
            raise InputError(path, 'expected an object with a non-empty "test" list', task)
        for i, pair in enumerate(body["test"]):
            if not isinstance(pair, dict) or "input" not in pair:
                raise InputError(path, f'test {i} is not an object with an "input" grid', task)
            parse_grid(pair["input"], path, task, f"test {i} input")
        counts[task] = len(body["test"])
    return counts


def load_solutions(path):
    """Read an ARC *_solutions.json; returns {task: [grid tuple per test input]}."""
    obj = load_task_object(path)
    solutions = {}
    for task, grids in obj.items():
        if not isinstance(grids, list) or not grids:
            raise InputError(path, "expected a non-empty list of output grids", task)
        solutions[task] = [parse_grid(g, path, task, f"test {i}") for i, g in enumerate(grids)]
    return solutions


def build(ranked, source, challenges, challenges_path):
    """Assemble the submission; returns (submission, counts for the summary)."""
    counts = {"filled": 0, "single": 0, "missing": 0, "extra": 0}
    if challenges is None:
        layout = {task: len(slots) for task, slots in ranked.items()}
    else:
        layout = challenges
        counts["extra"] = sum(task not in challenges for task in ranked)
        for task, slots in ranked.items():
            if task in challenges and len(slots) != challenges[task]:
                raise InputError(source[task], f"{len(slots)} test inputs, but {challenges_path} has "
                                 f"{challenges[task]}", task)
    submission = {}
    for task, n in layout.items():
        slots = ranked.get(task, [[]] * n)
        counts["missing"] += task not in ranked
        counts["filled"] += sum(not cands for cands in slots)
        counts["single"] += sum(len(cands) == 1 for cands in slots)
        submission[task] = [attempts(cands) for cands in slots]
    return submission, counts


def score(submission, solutions, solutions_path):
    """ARC Prize score: mean over the solutions' tasks of the fraction of test inputs solved."""
    total = 0.0
    for task, outputs in solutions.items():
        entries = submission.get(task, [])
        if entries and len(entries) != len(outputs):
            raise InputError(solutions_path, f"{len(outputs)} test outputs, but the submission has {len(entries)}",
                             task)
        solved = sum(any(tuple(map(tuple, e[a])) == out for a in ("attempt_1", "attempt_2"))
                     for e, out in zip(entries, outputs))
        total += solved / len(outputs)
    return total / len(solutions), total   # load_task_object refuses a file without tasks


def write_atomic(path, text):
    """Write via path + ".tmp" and os.replace(), so `path` is never half written."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise InputError(path, f"cannot write: {e.strerror}")


def main(argv):
    ap = argparse.ArgumentParser(description="Write an ARC Prize submission from train_etrm predictions.")
    ap.add_argument("out", metavar="OUT.json")
    ap.add_argument("predictions", metavar="PRED.json", nargs="+")
    ap.add_argument("--tasks", metavar="FILE", help="ARC *_challenges.json: exactly its tasks and test inputs")
    ap.add_argument("--solutions", metavar="FILE", help="ARC *_solutions.json: also print the score")
    args = ap.parse_args(argv)
    try:
        ranked, source, n_empty = merge(args.predictions)
        challenges = load_challenges(args.tasks) if args.tasks else None
        solutions = load_solutions(args.solutions) if args.solutions else None
        submission, counts = build(ranked, source, challenges, args.tasks)
        result = score(submission, solutions, args.solutions) if solutions is not None else None
        write_atomic(args.out, json.dumps(submission, separators=(",", ":")) + "\n")
    except (InputError, arc_format.JSONFileError) as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 1
    n_inputs = sum(len(v) for v in submission.values())
    line = (f"wrote {args.out}: {len(submission)} tasks, {n_inputs} test inputs from {len(args.predictions)} "
            f"file(s); {counts['filled']} without a prediction ([[0]]), {counts['single']} with one candidate, "
            f"{n_empty} empty grids dropped")
    if challenges is not None:
        line += f"; {counts['missing']} challenge tasks missing, {counts['extra']} predicted tasks not in the challenge"
    print(line)
    if result is not None:
        print(f"score {result[0]:.4f} ({result[1]:g} / {len(solutions)} tasks)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
