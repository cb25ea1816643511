#!/usr/bin/env python3
"""The oracle ceiling of the synthetic benchmark: can a task's rule be read from its demonstrations at all?

Usage:  python3 dev/synth_oracle.py TASK_FILE [TASK_FILE ...] [--markdown OUT.md] [--max-tasks N]
                                    [--min-side S]

TASK_FILE is a task file written by data/synth.py (train.bin, eval.bin, heldout.bin); its tasks are named
"<family>_<index>" after the rule family of data/synth.py that made them.  For every task a brute-force rule
search tries every parameter of every family (synth.FAMILIES, their space(cfg) with the file's canvas and
--min-side, data/synth.py's default 3).  recolor's space is too large to list, so its one candidate is the
colour mapping the demos imply (each input colour goes to the colour its first demo cell becomes), kept
only when it can be part of a recolor parameter (2-4 colours permuted, the background fixed); whether it
explains every demo is checked like any other candidate.  A test colour that no demo input shows stays as
it is: one hypothesis, where the family would allow several (data/synth.py never makes such a recolor task).

A hypothesis (family, parameter) is consistent when apply() reproduces every demo output; an apply that
raises (crop on a grid without objects, duplicate on a blank one) counts as not reproducing it.  Each
consistent hypothesis predicts every test input (one that raises there predicts nothing for it).  The
distinct predictions for a test input are ranked by how many consistent hypotheses produce them, ties by
the first hypothesis that produced them in family order (synth.FAMILIES), then parameter order; so a
family with two parameters that agree on a task (halo with and without diagonals) outvotes a family with
one.  pass@K as in train_etrm's evaluation: the true output is among the top K; a task scores the
fraction of its test inputs passed (test inputs without a known output are not scored), a set scores the
mean over its tasks.

Two oracles:
  family known    only the family named by the task's name prefix is searched; data/synth.py rejects
                  tasks whose demos leave two parameters of their family that answer a test differently
                  (Family.ambiguous), so this should be 100% on anything it generated.
  family unknown  all 15 families are searched: the ceiling for a learner that must read the rule from
                  the demonstrations alone.

Prints per file the tasks, pass@1 and pass@2 of both oracles, and per family: tasks, family-known pass@1,
family-unknown pass@1 and pass@2, the mean number of consistent hypotheses (all families) and the other
families consistent with its tasks (number of tasks).  --markdown also writes that as markdown tables
(atomically: a temporary file, then os.replace()).  --max-tasks N reads only the first N tasks of each file.
Bad input (a missing or malformed file, a task not named after a family) exits 1 with one line "error: ...".
"""
import argparse
import datetime
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "data"))
import arc_format  # noqa: E402
import synth  # noqa: E402

PROG = "synth_oracle.py"
KS = (1, 2)
MAX_RECOLORED = 4   # recolor permutes 2-4 colours


class InputError(Exception):
    """A problem with an input, already phrased as one line."""


# ---------------------------------------------------------------- the rule search

def implied_recoloring(demos):
    """The recolor parameter the demos imply: each input colour maps to what its first demo cell
    becomes, the moved colours as sorted (source, target) pairs.  None when no recolor parameter can
    be meant: grids change shape, nothing moves, the background moves or is painted, two colours
    merge, or more than MAX_RECOLORED colours are involved.  Conflicting demos are not looked for
    here: the consistency check rejects them."""
    mapping = {}
    for grid, out in demos:
        if len(grid) != len(out) or len(grid[0]) != len(out[0]):
            return None
        for row, out_row in zip(grid, out):
            for v, w in zip(row, out_row):
                mapping.setdefault(v, w)
    moved = {v: w for v, w in mapping.items() if v != w}
    if not moved or 0 in moved or 0 in moved.values() or len(set(mapping.values())) < len(mapping):
        return None
    if len(set(moved) | set(moved.values())) > MAX_RECOLORED:
        return None
    return tuple(sorted(moved.items()))


def candidates(family, demos, cfg):
    """The parameters of `family` to try on a task: its whole space, or recolor's implied mapping."""
    if family.name == "recolor":
        p = implied_recoloring(demos)
        return [] if p is None else [p]
    return family.space(cfg)


def safe_apply(family, grid, p):
    """family.apply(grid, p), or None where the rule does not apply to this grid (it raised)."""
    try:
        return family.apply(grid, p)
    except Exception:   # the samplers never draw such inputs, so apply does not guard against them
        return None


def hypotheses(task, families, cfg):
    """[(family name, parameter, predictions)] for every parameter of `families` that reproduces every
    demo of `task`, in family then parameter order; predictions: a grid or None per test input."""
    found = []
    for family in families:
        for p in candidates(family, task["train"], cfg):
            if all(safe_apply(family, grid, p) == out for grid, out in task["train"]):
                found.append((family.name, p, [safe_apply(family, grid, p) for grid, _ in task["test"]]))
    return found


def ranked_predictions(hyps, t):
    """The distinct predictions for test input t, best first: most hypotheses, then first produced."""
    votes = {}
    for order, (_, _, predictions) in enumerate(hyps):
        grid = predictions[t]
        if grid is not None:
            key = tuple(map(tuple, grid))
            votes.setdefault(key, [0, order])[0] += 1
    return [key for key, _ in sorted(votes.items(), key=lambda kv: (-kv[1][0], kv[1][1]))]


def task_scores(task, hyps):
    """{K: fraction of the task's known test outputs among the top K predictions}, or None if no test
    output is known."""
    known = [t for t, (_, out) in enumerate(task["test"]) if out is not None]
    if not known:
        return None
    scores = dict.fromkeys(KS, 0.0)
    for t in known:
        truth = tuple(map(tuple, task["test"][t][1]))
        ranked = ranked_predictions(hyps, t)
        for k in KS:
            scores[k] += (truth in ranked[:k]) / len(known)
    return scores


def family_of(task, path):
    """The synth family a task is named after ("<family>_<index>"); InputError otherwise."""
    name = task["name"]
    prefix, _, index = name.rpartition("_")
    if prefix not in synth.FAMILIES or not index.isdigit():
        raise InputError(f"{path}: task {name!r} is not named <family>_<index> after a data/synth.py family")
    return synth.FAMILIES[prefix]


def solve_task(task, family, cfg):
    """One task's record: its family, both oracles' scores and the consistent hypotheses."""
    hyps = hypotheses(task, synth.FAMILIES.values(), cfg)
    own = [h for h in hyps if h[0] == family.name]
    return {"family": family.name, "known": task_scores(task, own), "unknown": task_scores(task, hyps),
            "n_hyps": len(hyps), "families": sorted({h[0] for h in hyps})}


# ---------------------------------------------------------------- files and summaries

def load(path, max_tasks):
    """(tasks, cfg) of a task file; cfg carries what the families' spaces depend on."""
    try:
        tasks, header = arc_format.read_tasks(path)
    except arc_format.FormatError as e:
        raise InputError(str(e))
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}")
    return (tasks[:max_tasks] if max_tasks else tasks), header["canvas"]


def solve_file(path, max_tasks, min_side):
    """Every task of the file solved by both oracles: [record]."""
    tasks, canvas = load(path, max_tasks)
    cfg = argparse.Namespace(canvas=canvas, min_side=min_side)
    families = [family_of(task, path) for task in tasks]   # every name checked before the search starts
    return [solve_task(task, family, cfg) for task, family in zip(tasks, families)]


def mean(values):
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def summarise(records):
    """{"tasks", "known": {K: score}, "unknown": {K: score}} over the records with a known test output."""
    scored = [r for r in records if r["known"] is not None]
    return {"tasks": len(records), "scored": len(scored),
            **{oracle: {k: mean(r[oracle][k] for r in scored) for k in KS} for oracle in ("known", "unknown")}}


def family_rows(records):
    """One row per family in FAMILIES order: [family, tasks, known@1, unknown@1, unknown@2, mean hypotheses,
    the other families consistent with its tasks]."""
    rows = []
    for name in synth.FAMILIES:
        mine = [r for r in records if r["family"] == name]
        if not mine:
            continue
        scored = [r for r in mine if r["known"] is not None]
        others = {}
        for r in mine:
            for other in r["families"]:
                if other != name:
                    others[other] = others.get(other, 0) + 1
        also = ", ".join(f"{f} {n}" for f, n in sorted(others.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"
        rows.append([name, str(len(mine)), percent(mean(r["known"][1] for r in scored)),
                     percent(mean(r["unknown"][1] for r in scored)), percent(mean(r["unknown"][2] for r in scored)),
                     f"{mean(r['n_hyps'] for r in mine):.2f}", also])
    return rows


def percent(x):
    return f"{100 * x:.1f}%"


HEADINGS = ("family", "tasks", "known pass@1", "unknown pass@1", "unknown pass@2", "hypotheses",
            "other families consistent (tasks)")


def text_report(path, summary, rows):
    lines = [f"{path}: {summary['tasks']} tasks ({summary['scored']} with known test outputs)"]
    for oracle in ("known", "unknown"):
        s = summary[oracle]
        lines.append(f"  family {oracle:<8} pass@1 {percent(s[1]):>6}  pass@2 {percent(s[2]):>6}")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADINGS[:-1])]
    for row in [list(HEADINGS)] + rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:-1], widths[1:])]
        lines.append("  " + "  ".join(cells + [row[-1]]))
    return "\n".join(lines)


def markdown_report(path, summary, rows):
    lines = [f"### {path}", "",
             f"{summary['tasks']} tasks ({summary['scored']} with known test outputs).", "",
             "| oracle | pass@1 | pass@2 |", "|---|---|---|"]
    for oracle in ("known", "unknown"):
        lines.append(f"| family {oracle} | {percent(summary[oracle][1])} | {percent(summary[oracle][2])} |")
    lines += ["", "| " + " | ".join(HEADINGS) + " |", "|---" * len(HEADINGS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(argv):
    """The markdown's first lines: the command, the date and the commit (with the tool's own state)."""
    def git(*args):
        try:
            proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "dev/synth_oracle.py", "data/synth.py", "data/arc_format.py"):
        commit += " (with uncommitted changes to the oracle or the generator)"
    return ["# Oracle ceiling of the synthetic benchmark (dev/synth_oracle.py)", "",
            f"Command: `python3 dev/synth_oracle.py {' '.join(argv)}`  ",
            f"Date: {datetime.date.today().isoformat()}, commit {commit}."]


def write_atomic(path, text):
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"{e.filename or path}: cannot write: {e.strerror}")


# ---------------------------------------------------------------- command line

def positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description=__doc__)
    parser.add_argument("files", metavar="TASK_FILE", nargs="+", help="task files written by data/synth.py")
    parser.add_argument("--markdown", metavar="OUT.md", help="also write the report as markdown tables")
    parser.add_argument("--max-tasks", type=positive, metavar="N", help="only the first N tasks of each file")
    parser.add_argument("--min-side", type=positive, default=3, metavar="S",
                        help="data/synth.py's --min-side, which the scale and tile spaces depend on (default 3)")
    args = parser.parse_args(argv)
    try:
        texts, sections = [], []
        for path in args.files:
            records = solve_file(path, args.max_tasks, args.min_side)
            summary, rows = summarise(records), family_rows(records)
            texts.append(text_report(path, summary, rows))
            sections.append(markdown_report(path, summary, rows))
        print("\n\n".join(texts))
        if args.markdown:
            write_atomic(args.markdown, "\n".join(provenance(argv)) + "\n\n" + "\n\n".join(sections) + "\n")
            print(f"{PROG}: wrote {args.markdown}")
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
