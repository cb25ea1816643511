#!/usr/bin/env python3
"""Tests for data/strategies.py, the strategy-sequence tasks of seed report 004; standard library only.

Run from the repository root:  python3 test/test_strategies.py
Prints "PASS name" or "FAIL name: why" per check, then "<N> passed, <M> failed"; exits 1 if anything failed.
"""
import json
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "data"))
from harness import check, finish  # noqa: E402
import strategies as S  # noqa: E402

PER_STRATEGY = 300    # seeded examples per strategy of every task
MEASURED = 500        # training examples per task measured as --report does
DECIDED_WITHIN = 7    # two strategies' traces for the same x differ within this many characters (the docstring)
TMP = None            # scratch folder, made by main()


def run_tool(*args):
    """Run data/strategies.py from the repo root; returns (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, os.path.join("data", "strategies.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def examples(task, strategy, n=PER_STRATEGY):
    return [S.generate(task, strategy, random.Random(f"test:{task}:{strategy}:{i}")) for i in range(n)]


def answer_of(y):
    return y.rsplit("ans:", 1)[1].strip()


def wrong(answer):
    """A different answer: the last move dropped, or the last digit changed."""
    if answer[-1] in "UDLR":
        return answer[:-2]
    alphabet = S.DIGITS
    return answer[:-1] + alphabet[(alphabet.index(answer[-1]) + 1) % 10]


# ---------------------------------------------------------------- traces

def check_answers(task):
    """Every strategy's traces end in a correct answer, the detector names the strategy, and a changed answer
    fails the check."""
    for s in range(len(S.STRATEGIES[task])):
        for ex in examples(task, s):
            x, y = ex["x"], ex["y"]
            assert S.check(task, x, y), f"strategy {s}: check fails on {x!r} -> {y!r}"
            assert S.detect(task, y) == s, f"strategy {s}: detected {S.detect(task, y)} on {y!r}"
            assert not S.check(task, x, y.rsplit("ans:", 1)[0] + "ans: " + wrong(answer_of(y))), \
                f"strategy {s}: a wrong answer passes on {x!r}"
            assert ex["text"] == f"<bos> <x> {x} </x> <z> </z> <y> {y} </y> <eos>", f"template: {ex['text']!r}"
            assert not any(name in y for name in S.STRATEGIES[task]), f"a strategy is named in {y!r}"


def check_same_answer(task):
    """For one x, every strategy's trace is different, differs early, and ends in the same answer."""
    t = S.task_of(task)
    for i in range(200):
        problem, x = S.draw_problem(task, random.Random(f"same:{task}:{i}"))
        ys = [S.trace(task, problem, s) for s in range(len(t.strategies))]
        assert len({answer_of(y) for y in ys}) == 1, f"{x!r}: answers differ: {ys}"
        for a in range(len(ys)):
            for b in range(a):
                assert ys[a][:DECIDED_WITHIN] != ys[b][:DECIDED_WITHIN], \
                    f"{x!r}: strategies {b} and {a} agree on {ys[a][:DECIDED_WITHIN]!r}"


def check_measured(task):
    """The documented detector accuracy (100%) and coinciding fraction (0) on the examples --report measures."""
    stats = S.measure(task, MEASURED, 0)
    assert stats["hits"] == MEASURED, f"detector accuracy {stats['hits']}/{MEASURED}, documented 100%"
    assert stats["coinciding"] == 0, f"{stats['coinciding']}/{MEASURED} coinciding traces, documented 0"
    assert stats["decided_by"] < DECIDED_WITHIN, f"traces first differ at character {stats['decided_by']}"
    assert stats["max_chars"] <= S.MAX_CHARS, f"an example of {stats['max_chars']} characters"


def check_lengths(task):
    """Every example of every split fits MAX_CHARS characters, so 512 tokens character-level and byte-level."""
    for split in S.SPLITS:
        for i in range(100):
            text = S.example(task, split, i, 5)["text"]
            assert len(text) <= S.MAX_CHARS and text.isascii(), f"{split} {i}: {len(text)} characters"
            assert S.char_tokens(text) <= len(text) - 8, f"{split} {i}: the markers are not single tokens"


def check_largest_problems():
    """The largest problems of the size-capped tasks fit without any redrawing (grid_pathfinding is the one task
    where a rare maze may be redrawn)."""
    largest = {"multidigit_addition": [(10 ** 8 - 1, 10 ** 8 - 1), (10 ** 7, 10 ** 8 - 1)],
               "list_summation": [[99] * 12, [10] * 12],
               "linear_equation_solving": [(-9, -20, 9, 196), (9, -20, -9, -236)],
               "base_conversion": [(9999, 4), (9999, 8), (9999, 16), (8191, 4)],
               "sorting_algorithms": [[99 - i for i in range(9)], [10 + i for i in range(9)]]}
    for task, problems in largest.items():
        t = S.task_of(task)
        for problem in problems:
            x = t.question(problem)
            assert t.parse(x) == problem, f"{task}: parse {x!r}"
            for s in range(len(t.strategies)):
                text = S.render(x, S.trace(task, problem, s))
                assert len(text) <= S.MAX_CHARS, f"{task} {x!r} strategy {s}: {len(text)} characters"


# ---------------------------------------------------------------- determinism and splits

def check_determinism():
    for task in S.TASKS:
        first = [S.example(task, "train", i, 0) for i in range(20)]
        assert first == [S.example(task, "train", i, 0) for i in range(20)], f"{task}: same seed, other examples"
        assert first != [S.example(task, "train", i, 1) for i in range(20)], f"{task}: seed 1 gives seed 0's data"
        assert len({S.example(task, "train", i, 0)["strategy"] for i in range(60)}) == len(S.STRATEGIES[task]), \
            f"{task}: not every strategy drawn in 60 examples"


def check_splits_disjoint():
    for task in S.TASKS:
        xs = {split: {S.example(task, split, i, 0)["x"] for i in range(150)} for split in S.SPLITS}
        for split, found in xs.items():
            assert all(S.split_of(task, x) == split for x in found), f"{task} {split}: an x of another split"
        assert not (xs["train"] & xs["val"] or xs["train"] & xs["test"] or xs["val"] & xs["test"]), \
            f"{task}: splits share an x"


# ---------------------------------------------------------------- hostile input

def garbage(rng):
    """A random string built from the characters and pieces of traces, or a long or odd one."""
    pieces = list("0123456789+-=*/()[]#.SGUDLRxrwcb ,|") + [" | ", "ans: ", "ans:", "S=", "G=", " / ", "9" * 40]
    kind = rng.randrange(4)
    if kind == 0:
        return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
    if kind == 1:
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randint(0, 30)))
    if kind == 2:
        return "9" * rng.choice((5000, 20000)) + rng.choice(["", "+1=1", " / 1", " | ans: 9"])
    return rng.choice(["", " ", "|", "ans:", "ans: ", "\n", "\0", "( )", "[ ]", "1 / 2 3 4 | ans: 1 2 3 4"])


def check_garbage():
    rng = random.Random(11)
    for task in S.TASKS:
        for _ in range(400):
            y = garbage(rng)
            assert S.detect(task, y) in (None,) + tuple(range(len(S.STRATEGIES[task]))), f"detect {y[:80]!r}"
            assert S.check(task, y, y) in (False, True) and S.check(task, y, "ans: 1") is False, f"check {y[:80]!r}"
        good = examples(task, 0, 1)[0]
        for bad in (None, 5, b"ans: 1", ["ans: 1"]):
            assert S.detect(task, bad) is None and S.check(task, good["x"], bad) is False, f"{bad!r} as y"
            assert S.check(task, bad, good["y"]) is False, f"{bad!r} as x"
    for fn, args in ((S.detect, ("no_such_task", "")), (S.check, ("no_such_task", "", "")),
                     (S.generate, ("list_summation", 3, random.Random(0))),
                     (S.generate, ("list_summation", True, random.Random(0)))):
        try:
            fn(*args)
        except ValueError:
            continue
        raise AssertionError(f"{fn.__name__}{args[:2]} did not raise ValueError")


def check_truncated():
    """A trace cut anywhere: the detector says None or the true strategy, and the true strategy once the first
    step is complete; the answer check fails on every proper prefix."""
    for task in S.TASKS:
        for s in range(len(S.STRATEGIES[task])):
            for ex in examples(task, s, 20):
                x, y = ex["x"], ex["y"]
                complete = len(y.split(" | ")[0])
                for k in range(len(y)):
                    got = S.detect(task, y[:k])
                    assert got in (None, s) and (got == s or k < complete), f"detect {y[:k]!r}: {got}"
                    assert not S.check(task, x, y[:k]), f"check passes on the prefix {y[:k]!r}"


# ---------------------------------------------------------------- command line

def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def check_cli_files():
    out, again, other = (os.path.join(TMP, name) for name in ("cli", "cli_again", "cli_seed4"))
    counts = {"train": 12, "val": 4, "test": 3}
    args = ["--n-train", "12", "--n-val", "4", "--n-test", "3", "--seed", "3"]
    for folder, seed in ((out, "3"), (again, "3"), (other, "4")):
        rc, stdout, stderr = run_tool(folder, *args[:-1], seed)
        assert rc == 0 and not stderr, f"exit {rc}: {stderr!r}"
        assert stdout.count("wrote") == 3, f"summary {stdout!r}"
    assert sorted(os.listdir(out)) == ["test.jsonl", "train.jsonl", "val.jsonl"], f"files {os.listdir(out)}"
    for split, n in counts.items():
        rows = read_jsonl(os.path.join(out, f"{split}.jsonl"))
        expected = [S.example(task, split, i, 3) for task in S.TASKS for i in range(n)]
        assert rows == expected, f"{split}.jsonl differs from example()"
        assert all(list(row) == ["task", "strategy", "x", "y", "text"] for row in rows), f"{split}: keys"
        with open(os.path.join(out, f"{split}.jsonl"), "rb") as f, \
                open(os.path.join(again, f"{split}.jsonl"), "rb") as g, \
                open(os.path.join(other, f"{split}.jsonl"), "rb") as h:
            data = f.read()
            assert data == g.read(), f"{split}: same seed, different bytes"
            assert data != h.read(), f"{split}: seeds 3 and 4 give the same bytes"
    some = os.path.join(TMP, "cli_some")
    rc, _, stderr = run_tool(some, "--tasks", "sorting_algorithms,list_summation", "--n-train", "2", "--n-val", "0",
                             "--n-test", "1")
    assert rc == 0, f"--tasks: exit {rc}: {stderr!r}"
    assert [r["task"] for r in read_jsonl(os.path.join(some, "train.jsonl"))] == ["sorting_algorithms"] * 2 + \
        ["list_summation"] * 2, "--tasks order or counts"
    assert read_jsonl(os.path.join(some, "val.jsonl")) == [], "an empty split is an empty file"


def check_cli_show():
    rc, stdout, stderr = run_tool("--json", "--report", "--report-examples", "30", "--tasks", "all")
    assert rc == 0 and not stderr, f"exit {rc}: {stderr!r}"
    lines = stdout.splitlines()
    shown = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(shown) == S.SHOW_PROBLEMS * sum(len(v) for v in S.STRATEGIES.values()), f"{len(shown)} examples"
    for row in shown:
        assert S.check(row["task"], row["x"], row["y"]) and S.detect(row["task"], row["y"]) == row["strategy"], row
    report = [line for line in lines if "detector accuracy" in line]
    assert len(report) == len(S.TASKS) and all("= 1.0000; coinciding traces 0/30" in line for line in report), \
        f"report {report}"
    assert sum("length: max" in line for line in lines) == len(S.TASKS), "no lengths in the report"


def check_cli_errors():
    """Bad arguments: one "error:" line, exit 2, no traceback, no output folder; an unwritable OUT_DIR: exit 1."""
    out = os.path.join(TMP, "cli_bad")
    cases = [(["--n-train", "-1"], "--n-train: must be >= 0"), (["--n-val", "x"], "--n-val: 'x' is not an integer"),
             (["--tasks", "nosuch"], "unknown task 'nosuch'"), (["--tasks", "list_summation,"], "unknown task ''"),
             (["--seed", "1.5"], "--seed"), (["--report-examples", "0"], "must be >= 1"),
             (["--bogus"], "unrecognized arguments: --bogus")]
    for args, text in [([out] + a, t) for a, t in cases] + [([], "nothing to do")]:
        rc, stdout, stderr = run_tool(*args)
        assert rc == 2 and stderr.count("\n") == 1 and "error: " in stderr and text in stderr and not stdout, \
            f"{args}: exit {rc}, stderr {stderr!r}"
        assert not os.path.exists(out), f"{args}: output folder created"
    blocked = os.path.join(TMP, "a_file")
    open(blocked, "w").close()
    rc, _, stderr = run_tool(os.path.join(blocked, "out"), "--n-train", "1")
    assert rc == 1 and stderr.count("\n") == 1 and "cannot write" in stderr, f"exit {rc}, stderr {stderr!r}"


# ---------------------------------------------------------------- scoring generated traces

SCORED = 40   # reference examples per task that the scoring checks score


def reference_records():
    return [{k: ex[k] for k in ("task", "x", "y", "strategy")}
            for task in S.TASKS for ex in (S.example(task, "test", i, 7) for i in range(SCORED))]


def by_task(results):
    return {r["task"]: r for r in results}


def check_score_reference():
    """The reference traces score answer_acc 1, detected 1, match 1 and exactly the drawn mix of strategies."""
    records = reference_records()
    results = by_task(S.score(records))
    assert list(results) == list(S.TASKS) + ["all"], f"lines {list(results)}"
    for task in S.TASKS:
        drawn = [r["strategy"] for r in records if r["task"] == task]
        want = {"task": task, "n": SCORED, "answer_acc": 1.0, "detected": 1.0,
                "mix": {name: drawn.count(s) / SCORED for s, name in enumerate(S.STRATEGIES[task])},
                "undetected": 0.0, "match": 1.0}
        assert results[task] == want, f"{results[task]} != {want}"
    n = SCORED * len(S.TASKS)
    assert results["all"] == {"task": "all", "n": n, "answer_acc": 1.0, "detected": 1.0, "undetected": 0.0,
                              "match": 1.0}, results["all"]
    assert "match" not in S.score([{k: v for k, v in r.items() if k != "strategy"} for r in records])[-1], \
        "match without any strategy field"


def corrupt(records):
    """Every 4th record of a task gets a wrong answer, every 5th (from the 2nd) an unrecognisable first step
    (its answer still right); returns the records and the expected counts per task (wrong, hidden)."""
    out, seen = [], {}
    for r in records:
        i = seen[r["task"]] = seen.get(r["task"], -1) + 1
        y = r["y"]
        if i % 4 == 0:
            y = y.rsplit("ans:", 1)[0] + "ans: " + wrong(answer_of(y))
        if i % 5 == 1:
            y = "?? | " + y
        out.append(dict(r, y=y))
    return out, len(range(0, SCORED, 4)), len(range(1, SCORED, 5))


def check_score_corrupted():
    """Wrong answers lower answer_acc, and hidden first steps detected and the mix, by exactly their counts."""
    records, wrong_answers, hidden = corrupt(reference_records())
    results = by_task(S.score(records))
    for task in S.TASKS:
        rows = [(i, r["strategy"]) for i, r in enumerate(r for r in records if r["task"] == task)]
        got = results[task]
        assert got["answer_acc"] == (SCORED - wrong_answers) / SCORED, f"{task}: answer_acc {got['answer_acc']}"
        assert got["detected"] == got["match"] == (SCORED - hidden) / SCORED, f"{task}: {got}"
        assert got["undetected"] == hidden / SCORED, f"{task}: undetected {got['undetected']}"
        for s, name in enumerate(S.STRATEGIES[task]):
            seen = sum(1 for i, drawn in rows if drawn == s and i % 5 != 1)
            assert got["mix"][name] == seen / SCORED, f"{task} {name}: {got['mix'][name]} != {seen}/{SCORED}"
    n = SCORED * len(S.TASKS)
    assert results["all"]["answer_acc"] == (n - wrong_answers * len(S.TASKS)) / n, results["all"]
    assert results["all"]["detected"] == (n - hidden * len(S.TASKS)) / n, results["all"]


def write_lines(name, lines):
    path = os.path.join(TMP, name)
    with open(path, "wb") as f:
        f.write(b"".join(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode() for line in lines))
    return path


def check_cli_score():
    """--score prints score_line() of each result, --json the results themselves; an empty file is n=0."""
    records = corrupt(reference_records())[0]
    path = write_lines("generated.jsonl", records)
    expected = S.score(records)
    rc, stdout, stderr = run_tool("--score", path)
    assert rc == 0 and not stderr and stdout.splitlines() == [S.score_line(r) for r in expected], \
        f"exit {rc}: {stderr!r} {stdout[:300]!r}"
    assert stdout.splitlines()[1].startswith("score task=list_summation n=40 answer_acc=0.750 detected=0.800 mix="), \
        stdout.splitlines()[1]
    rc, stdout, stderr = run_tool("--score", path, "--json")
    assert rc == 0 and [json.loads(line) for line in stdout.splitlines()] == expected, f"--json: {stdout[:300]!r}"
    rc, stdout, stderr = run_tool("--score", write_lines("empty.jsonl", []))
    assert rc == 0 and stdout == "score task=all n=0 answer_acc=0.000 detected=0.000 undetected=0.000\n", \
        f"empty file: exit {rc}, {stdout!r} {stderr!r}"


def check_cli_detect():
    """--detect prints "detect S C" per record: detect()'s strategy (-1 for none) and check()'s answer; a malformed
    record is one error line; --detect takes no other option."""
    records = corrupt(reference_records())[0]
    path = write_lines("generated.jsonl", records)
    rc, stdout, stderr = run_tool("--detect", path)
    want = [f"detect {-1 if S.detect(r['task'], r['y']) is None else S.detect(r['task'], r['y'])} "
            f"{int(S.check(r['task'], r['x'], r['y']))}" for r in records]
    assert rc == 0 and not stderr and stdout.splitlines() == want, f"exit {rc}: {stderr!r} {stdout[:200]!r}"
    assert any(line.startswith("detect -1 ") for line in want) and any(line.endswith(" 0") for line in want) \
        and any(line.endswith(" 1") for line in want), "the corrupted records cover every case"
    rc, stdout, stderr = run_tool("--detect", write_lines("bad.jsonl", [records[0], {"task": "nosuch", "x": "", "y": ""}]))
    assert rc == 1 and not stdout and stderr.startswith("error: ") and ":2: unknown task" in stderr, f"{rc} {stderr!r}"
    rc, _, stderr = run_tool("--detect", path, "--json")
    assert rc == 2 and "--detect takes no other option" in stderr, f"--detect --json: exit {rc}, {stderr!r}"


def check_score_errors():
    """A malformed record: one line "error: FILE:LINE: why" on stderr, nothing on stdout, exit 1."""
    good = {"task": "list_summation", "x": "[1, 2, 3]", "y": "1+2=3 | 3+3=6 | ans: 6", "strategy": 0}
    cases = [(b"{oops\n", "not JSON"), (b"\n", "not JSON"), (b"\xff\xfe\n", "not UTF-8"),
             ([1, 2], "expected a JSON object, got list"), (dict(good, task="nosuch"), "unknown task 'nosuch'"),
             ({"task": "list_summation", "x": "[1]"}, "missing field 'y'"),
             (dict(good, y=None), "field 'y' is NoneType, expected a string"),
             (dict(good, x=5), "field 'x' is int"), (dict(good, task=3), "field 'task' is int"),
             (dict(good, strategy=3), "expected an integer id 0..2 of list_summation"),
             (dict(good, strategy=True), "field 'strategy' is True"), (dict(good, strategy="1"), "field 'strategy'")]
    for bad, text in cases:
        path = write_lines("bad.jsonl", [good, bad, good])
        rc, stdout, stderr = run_tool("--score", path)
        assert rc == 1 and not stdout and stderr.count("\n") == 1 and stderr.startswith(f"error: {path}:2: ") \
            and text in stderr, f"{bad!r}: exit {rc}, stderr {stderr!r}"
        if not isinstance(bad, bytes):
            try:
                S.score([good, bad])
            except ValueError as e:
                assert str(e).startswith("record 1: ") and text in str(e), f"score(): {e}"
            else:
                raise AssertionError(f"score() accepts {bad!r}")
    missing = os.path.join(TMP, "no_such.jsonl")
    rc, stdout, stderr = run_tool("--score", missing)
    assert rc == 1 and stderr == f"error: {missing}: cannot read: No such file or directory\n", f"{rc} {stderr!r}"
    rc, _, stderr = run_tool("--score", missing, "--report")
    assert rc == 2 and "--score takes only --json" in stderr, f"--score --report: exit {rc}, {stderr!r}"


def main():
    global TMP
    with tempfile.TemporaryDirectory(prefix="test_strategies_") as TMP:
        for task in S.TASKS:
            check(f"answers_{task}", check_answers, task)
            check(f"same_answer_{task}", check_same_answer, task)
            check(f"measured_{task}", check_measured, task)
            check(f"lengths_{task}", check_lengths, task)
        check("largest_problems_fit", check_largest_problems)
        check("determinism", check_determinism)
        check("splits_disjoint", check_splits_disjoint)
        check("garbage_never_raises", check_garbage)
        check("truncated_traces", check_truncated)
        check("cli_files", check_cli_files)
        check("cli_json_report", check_cli_show)
        check("cli_errors", check_cli_errors)
        check("score_reference_traces", check_score_reference)
        check("score_corrupted_traces", check_score_corrupted)
        check("cli_score", check_cli_score)
        check("cli_detect", check_cli_detect)
        check("score_errors", check_score_errors)
    finish()


if __name__ == "__main__":
    main()
