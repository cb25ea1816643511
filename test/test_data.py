#!/usr/bin/env python3
"""Tests for the dataset tools in data/ (arc_format.py, arc.py, synth.py); standard library only.

Run from the repository root:  python3 test/test_data.py
Prints "PASS name", "FAIL name: why" or "SKIP name: why" per check, then "<N> passed, <M> failed";
exits 1 if anything failed.  The real-data checks read ../shared/data/arc-agi-{1,2} (relative to
the repository root) and are skipped when it is absent.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "data"))
from harness import Skip, check, finish  # noqa: E402
import arc_format  # noqa: E402
import synth  # noqa: E402

SHARED = os.path.join(ROOT, os.pardir, "shared", "data")
REAL_SETS = ("arc-agi-1/data/training", "arc-agi-1/data/evaluation",
             "arc-agi-2/data/training", "arc-agi-2/data/evaluation")
TMP = None  # scratch folder, made by main()



def tmp_dir(name):
    path = os.path.join(TMP, name)
    os.makedirs(path)
    return path


def run_tool(script, *args):
    """Run data/<script> from the repo root; returns (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, os.path.join("data", script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def convert(out, *inputs):
    rc, stdout, stderr = run_tool("arc.py", out, *inputs)
    assert rc == 0, f"arc.py exited {rc}: {stderr.strip()}"
    assert stdout.count("\n") == 1 and "wrote" in stdout and out in stdout, f"unexpected summary {stdout!r}"
    return arc_format.read_tasks(out)


def write_json(path, obj):
    """Write obj as JSON (str and bytes are written as they are)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not isinstance(obj, (str, bytes)):
        obj = json.dumps(obj)
    with open(path, "wb") as f:
        f.write(obj if isinstance(obj, bytes) else obj.encode())


def json_pairs(pairs):
    return [(p["input"], p.get("output")) for p in pairs]


def assert_raw_layout(path):
    """Check the file length against the header with struct (independently of arc_format)."""
    with open(path, "rb") as f:
        data = f.read()
    header = struct.unpack("<256i", data[:1024])
    assert header[:2] == (20261121, 1), f"magic/version {header[:2]}"
    assert not any(header[8:]), "header words 8..255 must be 0"
    expected = 1024 + 16 * header[2] + 24 * header[3] + header[4] + header[5]
    assert len(data) == expected, f"file is {len(data)} bytes, header implies {expected}"
    return data, header


# ---------------------------------------------------------------- arc.py on real data

def check_real_set(subdir):
    folder = os.path.join(SHARED, subdir)
    if not os.path.isdir(folder):
        raise Skip(f"{folder} not found")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".json"))
    out = os.path.join(TMP, subdir.replace("/", "_") + ".bin")
    tasks, header = convert(out, folder)
    assert_raw_layout(out)
    assert [t["name"] for t in tasks] == [f[:-5] for f in files], "task names differ from the file stems"
    n_pairs, max_side = 0, 0
    for task, file in zip(tasks, files):
        with open(os.path.join(folder, file)) as f:
            obj = json.load(f)
        assert task["train"] == json_pairs(obj["train"]), f"{file}: train pairs differ"
        assert task["test"] == json_pairs(obj["test"]), f"{file}: test pairs differ"
        n_pairs += len(obj["train"]) + len(obj["test"])
        max_side = max([max(len(g), len(g[0])) for p in obj["train"] + obj["test"]
                        for g in (p["input"], p["output"])] + [max_side])
    assert (header["n_tasks"], header["n_pairs"]) == (len(files), n_pairs), "task/pair counts differ"
    assert (header["canvas"], header["max_side"]) == (30, max_side), f"canvas/max_side {header}"


def some_tasks(count):
    """A few real ARC tasks as JSON objects {name: task} (synthetic ones when the data is absent)."""
    folder = os.path.join(SHARED, REAL_SETS[0])
    if not os.path.isdir(folder):
        folder = os.path.join(TMP, "synth_default", "json", "train")
    tasks = {}
    for file in sorted(os.listdir(folder))[:count]:
        with open(os.path.join(folder, file)) as f:
            tasks[file[:-5]] = json.load(f)
    return tasks


def check_kaggle():
    tasks = some_tasks(5)
    folder = tmp_dir("kaggle")
    challenges = os.path.join(folder, "set_challenges.json")
    write_json(challenges, {k: {"train": t["train"], "test": [{"input": p["input"]} for p in t["test"]]}
                            for k, t in tasks.items()})
    write_json(os.path.join(folder, "set_solutions.json"),
               {k: [p["output"] for p in t["test"]] for k, t in tasks.items()})
    got, _ = convert(os.path.join(folder, "with.bin"), challenges)
    assert [t["name"] for t in got] == list(tasks), "task names/order differ"
    for t in got:
        assert t["train"] == json_pairs(tasks[t["name"]]["train"]), f"{t['name']}: train differs"
        assert t["test"] == json_pairs(tasks[t["name"]]["test"]), f"{t['name']}: test differs"
    # a directory holding both files reads the pair once
    got_dir, _ = convert(os.path.join(TMP, "kaggle_dir.bin"), folder)
    assert got_dir == got, "directory with challenges + solutions differs from the challenges file"


def check_kaggle_unknown_outputs():
    tasks = some_tasks(5)
    folder = tmp_dir("kaggle_unsolved")
    challenges = os.path.join(folder, "set_challenges.json")
    write_json(challenges, {k: {"train": t["train"], "test": [{"input": p["input"]} for p in t["test"]]}
                            for k, t in tasks.items()})
    out = os.path.join(folder, "without.bin")
    got, header = convert(out, challenges)
    for t in got:
        assert t["train"] == json_pairs(tasks[t["name"]]["train"]), f"{t['name']}: train differs"
        assert t["test"] == [(p["input"], None) for p in tasks[t["name"]]["test"]], f"{t['name']}: test differs"
    data, _ = assert_raw_layout(out)
    pairs_at = 1024 + 16 * header["n_tasks"]
    rows = [struct.unpack_from("<6i", data, pairs_at + 24 * i) for i in range(header["n_pairs"])]
    unknown = [r for r in rows if r[5] == -1]
    assert len(unknown) == sum(len(t["test"]) for t in tasks.values()), "wrong number of unknown outputs"
    assert all(r[2:4] == (0, 0) for r in unknown), "unknown outputs must have out_rows = out_cols = 0"


def check_input_order():
    folder = tmp_dir("order")
    task = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]], "output": [[4]]}]}
    for name in ("b", "a", "c"):
        write_json(os.path.join(folder, "dir", name + ".json"), task)
    write_json(os.path.join(folder, "z.json"), task)
    got, _ = convert(os.path.join(folder, "out.bin"), os.path.join(folder, "z.json"), os.path.join(folder, "dir"))
    assert [t["name"] for t in got] == ["z", "a", "b", "c"], f"order {[t['name'] for t in got]}"


# ---------------------------------------------------------------- arc.py on malformed input

GOOD = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}],
        "test": [{"input": [[0]], "output": [[1]]}]}


def with_grid(grid, split="train", role="input"):
    """GOOD with one grid replaced."""
    task = json.loads(json.dumps(GOOD))
    task[split][0][role] = grid
    return task


def without(key, split=None):
    """GOOD without a top-level key, or without a key of the first pair of `split`."""
    task = json.loads(json.dumps(GOOD))
    del (task[split][0] if split else task)[key]
    return task


KAGGLE = {"t1": {"train": GOOD["train"], "test": [{"input": [[0]]}]}}
B, K, S = "bad.json", "k_challenges.json", "k_solutions.json"
# case -> (files to create {relative path: JSON object, or raw str/bytes}, inputs to convert,
#          the file the error line must name first, other text it must contain)
MALFORMED = {
    "bad_json": ({B: '{"train": [\n  {"input": [[1]]'}, [B], B, ['task "bad"', "line 2 column"]),
    "not_utf8": ({B: b'{"train": "\xff"}'}, [B], B, ['task "bad"', "UTF-8"]),
    "top_level_list": ({B: [GOOD]}, [B], B, ['task "bad"', "top level"]),
    "missing_train": ({B: without("train")}, [B], B, ['task "bad"', '"train"']),
    "missing_test": ({B: without("test")}, [B], B, ['task "bad"', '"test"']),
    "train_not_list": ({B: dict(GOOD, train={"a": 1})}, [B], B, ['task "bad"', '"train"']),
    "test_not_list": ({B: dict(GOOD, test="x")}, [B], B, ['task "bad"', '"test"']),
    "empty_train": ({B: dict(GOOD, train=[])}, [B], B, ['task "bad"', '"train" is empty']),
    "empty_test": ({B: dict(GOOD, test=[])}, [B], B, ['task "bad"', '"test" is empty']),
    "pair_not_object": ({B: dict(GOOD, train=[[1, 2]])}, [B], B, ['task "bad"', "train pair 0"]),
    "pair_missing_input": ({B: without("input", "train")}, [B], B, ['task "bad"', '"input"']),
    "train_missing_output": ({B: without("output", "train")}, [B], B, ['task "bad"', '"output"']),
    "test_missing_output": ({B: without("output", "test")}, [B], B, ['task "bad"', "test pair 0", '"output"']),
    "output_null": ({B: with_grid(None, "test", "output")}, [B], B, ['task "bad"', "null"]),
    "grid_not_list": ({B: with_grid(5)}, [B], B, ['task "bad"', "train pair 0 input"]),
    "rows_not_lists": ({B: with_grid([1, 2])}, [B], B, ['task "bad"', "row 0"]),
    "cell_string": ({B: with_grid([[1, "2"]])}, [B], B, ['task "bad"', "column 1"]),
    "cell_float": ({B: with_grid([[1.0]])}, [B], B, ['task "bad"', "float"]),
    "cell_bool": ({B: with_grid([[True]], "test")}, [B], B, ['task "bad"', "test pair 0 input", "bool"]),
    "not_rectangular": ({B: dict(GOOD, train=GOOD["train"] * 3 + [
        {"input": [[1]], "output": [[1] * 5, [1] * 5, [1] * 5, [1] * 4]}])}, [B], B,
        ['task "bad": train pair 3 output: row 3 has 4 cells, row 0 has 5 (grid must be rectangular)']),
    "empty_grid": ({B: with_grid([])}, [B], B, ['task "bad"', "empty"]),
    "empty_rows": ({B: with_grid([[], []])}, [B], B, ['task "bad"', "empty"]),
    "too_many_rows": ({B: with_grid([[0]] * 31)}, [B], B, ['task "bad"', "31x1"]),
    "too_many_cols": ({B: with_grid([[0] * 31], "train", "output")}, [B], B, ['task "bad"', "1x31"]),
    "colour_10": ({B: with_grid([[1, 10]])}, [B], B, ['task "bad"', "colour 10"]),
    "colour_negative": ({B: with_grid([[-1]])}, [B], B, ['task "bad"', "colour -1"]),
    "challenges_not_object": ({K: [GOOD]}, [K], K, ["top level"]),
    "challenges_empty": ({K: {}}, [K], K, ["no tasks"]),
    "challenges_train_missing_output": ({K: {"t1": without("output", "train")}}, [K], K, ['task "t1"', '"output"']),
    "challenges_bad_grid": ({K: {"t1": with_grid([[1], [2, 3]], "test")}}, [K], K, ['task "t1"', "rectangular"]),
    "solutions_bad_json": ({K: KAGGLE, S: "{"}, [K], S, ["bad JSON"]),
    "solutions_missing_task": ({K: KAGGLE, S: {"t2": [[[1]]]}}, [K], S, ['task "t1"', "missing"]),
    "solutions_wrong_count": ({K: KAGGLE, S: {"t1": [[[1]], [[2]]]}}, [K], S,
                              ['task "t1"', "2 outputs, the task has 1 test input"]),
    "solutions_bad_grid": ({K: KAGGLE, S: {"t1": [[[1, 99]]]}}, [K], S, ['task "t1"', "colour 99"]),
    "input_missing": ({}, ["nothing_here.json"], "nothing_here.json", ["no such file"]),
    "dir_without_json": ({"d/readme.txt": "x"}, ["d"], "d", ["no .json files"]),
    "dir_with_bad_task": ({"d/a.json": GOOD, "d/b.json": with_grid([[11]])}, ["d"], "d/b.json", ['task "b"']),
    "duplicate_name": ({"x/t.json": GOOD, "y/t.json": GOOD}, ["x", "y/t.json"], "y/t.json",
                       ['task "t"', "duplicate", "x/t.json"]),
    # json.load would keep the last of two task ids, accept NaN/Infinity (and read 1e999 as inf), or raise
    # RecursionError / ValueError out of these
    "challenges_duplicate_id": ({K: '{"t1": %s, "t1": %s}' % (json.dumps(KAGGLE["t1"]), json.dumps(GOOD))}, [K], K,
                                ['key "t1" appears twice']),
    "duplicate_key_in_pair": ({B: json.dumps(GOOD).replace('"input"', '"input": [[5]], "input"', 1)}, [B], B,
                              ['task "bad"', 'key "input" appears twice']),
    "solutions_duplicate_id": ({K: KAGGLE, S: '{"t1": [[[1]]], "t1": [[[2]]]}'}, [K], S, ['key "t1" appears twice']),
    "nan": ({B: json.dumps(with_grid(float("nan")))}, [B], B, ['task "bad"', "NaN is not a number"]),
    "infinity_in_unused_key": ({B: json.dumps(dict(GOOD, note=float("inf")))}, [B], B, ["Infinity is not a number"]),
    "minus_infinity": ({B: json.dumps(with_grid([[float("-inf")]]))}, [B], B, ["-Infinity is not a number"]),
    "overflowing_float": ({B: json.dumps(GOOD).replace("[[0]]", "[[1e999]]")}, [B], B, ["1e999 is out of range"]),
    "huge_integer": ({B: json.dumps(GOOD).replace("[[0]]", "[[" + "9" * 5000 + "]]")}, [B], B, ["bad JSON"]),
    "deep_nesting": ({B: "[" * 100000 + "]" * 100000}, [B], B, ['task "bad"', "nested too deeply"]),
    "challenges_deep_nesting": ({K: '{"t1": ' + "[" * 100000 + "]" * 100000 + "}"}, [K], K, ["nested too deeply"]),
}


def check_malformed(case, files, inputs, named, expected):
    folder = tmp_dir("bad_" + case)
    for rel, content in files.items():
        write_json(os.path.join(folder, rel), content)
    out = os.path.join(folder, "out", "out.bin")
    rc, stdout, stderr = run_tool("arc.py", out, *[os.path.join(folder, i) for i in inputs])
    assert rc == 1 and not stdout, f"exit status {rc}, expected 1 (stdout {stdout!r}, stderr {stderr!r})"
    assert "Traceback" not in stderr, f"traceback on stderr: {stderr!r}"
    assert stderr.endswith("\n") and stderr.count("\n") == 1, f"stderr is not one line: {stderr!r}"
    prefix = f"data/arc.py: error: {os.path.join(folder, named)}: "
    assert stderr.startswith(prefix), f"does not start with {prefix!r}: {stderr!r}"
    for text in expected:
        assert text in stderr, f"{text!r} not in {stderr.strip()!r}"
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp"), "output file was created"


# ---------------------------------------------------------------- arc_format.read_tasks

def small_file(name):
    path = os.path.join(TMP, name)
    arc_format.write_tasks(path, [{"name": "t", "train": [([[1, 2]], [[2], [1]])], "test": [([[3]], None)]}], 8)
    with open(path, "rb") as f:
        return path, bytearray(f.read())


def expect_format_error(path, data, *fragments):
    with open(path, "wb") as f:
        f.write(data)
    try:
        arc_format.read_tasks(path)
    except arc_format.FormatError as e:
        message = str(e)
        assert "\n" not in message and message.startswith(path), f"message {message!r}"
        for text in fragments:
            assert text in message, f"{text!r} not in {message!r}"
        return
    raise AssertionError("read_tasks accepted a bad file")


def check_format_roundtrip():
    path, data = small_file("ok.bin")
    tasks, header = arc_format.read_tasks(path)
    assert tasks == [{"name": "t", "train": [([[1, 2]], [[2], [1]])], "test": [([[3]], None)]}], f"read {tasks}"
    assert (header["n_pairs"], header["n_cells"], header["canvas"], header["max_side"]) == (2, 5, 8, 2), header
    assert not os.path.exists(path + ".tmp"), "temporary file left behind"
    bad = os.path.join(TMP, "never.bin")
    pair = ([[1]], [[2]])
    for tasks, canvas, text in (([{"name": "t", "train": [([[1, 12]], [[1]])], "test": [pair]}], 8, "colour 12"),
                                ([], 8, "no tasks"), ([{"name": "t", "train": [pair], "test": []}], 8, "0 test"),
                                ([{"name": "t", "train": [], "test": [pair]}], 8, "0 train"),
                                ([{"name": "t", "train": [([[1] * 9], [[1]])], "test": [pair]}], 8, "canvas 8"),
                                ([{"name": "t", "train": [pair], "test": [pair]}], 1025, "canvas 1025")):
        try:
            arc_format.write_tasks(bad, tasks, canvas)
            raise AssertionError(f"write_tasks accepted a file with {text}")
        except ValueError as e:
            assert text in str(e), f"{text!r} not in {str(e)!r}"
        assert not os.path.exists(bad) and not os.path.exists(bad + ".tmp"), "failed write left a file"


def check_format_errors():
    path, data = small_file("errors.bin")
    expect_format_error(path, data[:-1], "truncated")
    expect_format_error(path, data + b"\0", "truncated")
    expect_format_error(path, data[:100], "header")
    expect_format_error(path, data[:4] + struct.pack("<i", 2) + data[8:], "version 2")
    expect_format_error(path, b"\0\0\0\0" + data[4:], "magic")
    pair0 = 1024 + 16
    expect_format_error(path, data[:pair0 + 16] + struct.pack("<i", 999) + data[pair0 + 20:], "outside")
    expect_format_error(path, data[:-3] + b"\x0b" + data[-2:], "colour 11")
    # what the C++ loader refuses too: no tasks, a task without test pairs, a header word past max_side set,
    # a canvas below max_side, a name that is empty or not UTF-8
    expect_format_error(path, data[:8] + struct.pack("<i", 0) + data[12:], "no tasks")
    expect_format_error(path, data[:1032] + struct.pack("<i", 0) + data[1036:], "1 train and 0 test pairs")
    expect_format_error(path, data[:32] + struct.pack("<i", 1) + data[36:], "header ints 8..255")
    expect_format_error(path, data[:24] + struct.pack("<i", 1) + data[28:], "canvas is 1")
    expect_format_error(path, data[:-2] + b"\xff\0", "not UTF-8")
    expect_format_error(path, data[:-2] + b"\0\0", "empty name")


# ---------------------------------------------------------------- synth.py

def run_synth(name, *args, files=5):
    out = os.path.join(TMP, name)
    rc, stdout, stderr = run_tool("synth.py", out, *args)
    assert rc == 0, f"synth.py {' '.join(args)} exited {rc}: {stderr.strip()}"
    assert stdout.count("\n") == files, f"expected one summary line per file ({files}): {stdout!r}"
    return out


def read_split(folder, split):
    return arc_format.read_tasks(os.path.join(folder, split + ".bin"))


def family_of(name):
    return name.rsplit("_", 1)[0]


def file_bytes(folder):
    result = []
    for split in ("train", "eval", "heldout", "sequences_train", "sequences_val"):
        with open(os.path.join(folder, split + ".bin"), "rb") as f:
            result.append(f.read())
    return result


def check_synth_determinism(default, same, other):
    assert file_bytes(default) == file_bytes(same), "two runs with the same seed differ"
    assert all(a != b for a, b in zip(file_bytes(default), file_bytes(other))), "seed 1 gives a file equal to seed 0"


def check_synth_tasks_depend_on_name_only(default, small):
    """A task is a function of (seed, family, index) only: a smaller run repeats the same tasks."""
    reference = {t["name"]: t for split in ("train", "eval", "heldout") for t in read_split(default, split)[0]}
    shared = 0
    for split in ("train", "eval", "heldout"):
        for task in read_split(small, split)[0]:
            if task["name"] in reference:
                assert task == reference[task["name"]], f"{task['name']} differs between runs"
                shared += 1
    assert shared > 20, f"only {shared} task names in common"


def check_synth_splits(default, cfg):
    split = {s: read_split(default, s)[0] for s in ("train", "eval", "heldout")}
    heldout = set(cfg.heldout)
    training = set(synth.FAMILIES) - heldout
    assert heldout == set(synth.DEFAULT_HELDOUT) and 2 <= len(heldout) <= 3, f"held-out {heldout}"
    for s, wanted, count in (("train", training, cfg.tasks), ("eval", training, cfg.eval_tasks),
                             ("heldout", heldout, cfg.heldout_tasks)):
        assert len(split[s]) == count, f"{s}.bin has {len(split[s])} tasks, expected {count}"
        per_family = {}
        for t in split[s]:
            per_family[family_of(t["name"])] = per_family.get(family_of(t["name"]), 0) + 1
        assert set(per_family) == wanted, f"{s}.bin families {sorted(per_family)}, expected {sorted(wanted)}"
        assert max(per_family.values()) - min(per_family.values()) <= 1, f"{s}.bin uneven: {per_family}"
    names = {s: {t["name"] for t in split[s]} for s in split}
    assert not names["train"] & names["eval"], "eval task names repeat train names"
    contents = {json.dumps([t["train"], t["test"]]) for t in split["train"]}
    assert not any(json.dumps([t["train"], t["test"]]) in contents for t in split["eval"]), \
        "an eval task copies a train task"
    assert len(synth.FAMILIES) >= 12, "fewer than 12 families"


def check_synth_shapes(default, cfg):
    for s in ("train", "eval", "heldout"):
        tasks, header = read_split(default, s)
        assert header["canvas"] == cfg.canvas, f"{s}.bin canvas {header['canvas']}"
        assert header["max_side"] <= cfg.canvas, f"{s}.bin max_side {header['max_side']}"
        for t in tasks:
            assert 2 <= len(t["train"]) <= 5 and 1 <= len(t["test"]) <= 2, f"{t['name']}: pair counts"
            for inp, out in t["train"] + t["test"]:
                assert cfg.min_side <= min(len(inp), len(inp[0])) and max(len(inp), len(inp[0])) <= cfg.max_side, \
                    f"{t['name']}: input {len(inp)}x{len(inp[0])} outside the side range"
                assert out is not None and max(len(out), len(out[0])) <= cfg.canvas, f"{t['name']}: output too big"


def check_synth_rules(default, cfg):
    """Re-derive each task's parameters from its name and re-apply its family's rule."""
    for s in ("train", "eval", "heldout"):
        for t in read_split(default, s)[0]:
            family = synth.FAMILIES[family_of(t["name"])]
            params, _ = synth.task_params(family, int(t["name"].rsplit("_", 1)[1]), cfg)
            pairs = t["train"] + t["test"]
            for i, (inp, out) in enumerate(pairs):
                assert family.apply(inp, params) == out, f"{t['name']} pair {i} does not follow {params}"
                assert out != inp, f"{t['name']} pair {i}: output equals input"
            assert len({json.dumps(inp) for inp, _ in pairs}) == len(pairs), f"{t['name']}: repeated input"
            assert not family.ambiguous(params, t["train"], t["test"], cfg), f"{t['name']}: demos are ambiguous"


def mirror_images(grid):
    """grid, mirrored left-right, upside down, and both."""
    return [grid, [row[::-1] for row in grid], grid[::-1], [row[::-1] for row in grid[::-1]]]


def check_synth_rules_independently(default):
    """Spot-check two families with rules written here, not taken from synth.py."""
    tasks = read_split(default, "train")[0]
    seen = set()
    for t in tasks:
        family = family_of(t["name"])
        for inp, out in t["train"] + t["test"]:
            if family == "scale":
                k = len(out) // len(inp)
                assert k in (2, 3) and len(out[0]) == k * len(inp[0]) and \
                    all(out[r][c] == inp[r // k][c // k] for r in range(len(out)) for c in range(len(out[0]))), \
                    f"{t['name']}: not a {k}x upscale"
            elif family == "flip":
                transposed = [[inp[r][c] for r in range(len(inp))] for c in range(len(inp[0]))]
                images = mirror_images(inp)[1:] + mirror_images(transposed)  # the 7 non-identity symmetries
                assert out in images, f"{t['name']}: output is not a symmetry of the input"
            else:
                continue
            seen.add(family)
    assert seen == {"scale", "flip"}, f"checked only {seen}"


def check_synth_json(default, cfg):
    for s in ("train", "eval", "heldout"):
        folder = os.path.join(default, "json", s)
        via_json, header = convert(os.path.join(TMP, f"synth_json_{s}.bin"), folder)
        expected = read_split(default, s)[0]
        assert sorted(via_json, key=lambda t: t["name"]) == sorted(expected, key=lambda t: t["name"]), \
            f"json/{s} converts to different tasks"
        assert header["canvas"] == 30, "arc.py writes canvas 30"


def check_synth_bad_args():
    """A value out of its own range is a usage error (exit 2), a bad combination exits 1; either way one
    "error:" line naming the option, no traceback and no output folder."""
    usage = [(["--tasks", "0"], "--tasks: must be >= 1"), (["--tasks", "-1"], "--tasks: must be >= 1"),
             (["--tasks", "x"], "--tasks: 'x' is not an integer"),
             (["--eval-tasks", "-1"], "--eval-tasks: must be >= 0"), (["--heldout-tasks", "-1"], "--heldout-tasks"),
             (["--sequences", "-1"], "--sequences: must be >= 0"), (["--val-sequences", "-1"], "--val-sequences"),
             (["--min-side", "2"], "--min-side: must be 3..30"), (["--max-side", "31"], "--max-side: must be 3..30"),
             (["--canvas", "31"], "--canvas: must be 3..30"),
             (["--sequence-steps", "1"], "--sequence-steps: must be >= 2"),
             (["--sequence-min-side", "2"], "--sequence-min-side"),
             (["--sequence-max-side", "31"], "--sequence-max-side")]
    combination = [(["--max-side", "9"], "--canvas"), (["--heldout", "flip,nosuch"], "recolor_largest"),
                   (["--min-side", "5", "--max-side", "8"], "scale"),
                   (["--sequence-min-side", "9", "--sequence-max-side", "8"], "--sequence-max-side"),
                   (["--heldout", ",".join(synth.FAMILIES)], "every family is held out"),
                   (["--heldout", "", "--heldout-tasks", "1"], "--heldout-tasks")]
    for status, cases in ((2, usage), (1, combination)):
        for args, text in cases:
            out = os.path.join(TMP, "synth_bad")
            rc, _, stderr = run_tool("synth.py", out, *args)
            errors = [line for line in stderr.splitlines() if "error: " in line]
            assert rc == status and len(errors) == 1 and text in errors[0] and "Traceback" not in stderr, \
                f"{args}: exit {rc}, expected {status}; stderr {stderr!r}"
            assert not os.path.exists(out), f"{args}: output folder created"


# ---------------------------------------------------------------- synth.py sequences

def sequence_frames(task):
    """f_0..f_S of a sequence task: the pair inputs in order, then the last output."""
    pairs = task["train"] + task["test"]
    return [inp for inp, _ in pairs] + [pairs[-1][1]]


def check_sequences_files(default, cfg):
    for split, count, first in (("train", cfg.sequences, 0), ("val", cfg.val_sequences, cfg.sequences)):
        path = os.path.join(default, f"sequences_{split}.bin")
        assert os.path.exists(path), f"{path} not written"
        assert_raw_layout(path)
        tasks, header = arc_format.read_tasks(path)
        assert len(tasks) == count > 0, f"sequences_{split}.bin: {len(tasks)} sequences, expected {count}"
        assert header["canvas"] == cfg.sequence_max_side, f"canvas {header['canvas']}"
        for j, t in enumerate(tasks):
            assert t["name"].startswith(f"seq_{first + j:05d}:"), f"sequence {j} of {split} is named {t['name']!r}"
            assert (len(t["train"]), len(t["test"])) == (cfg.sequence_steps - 1, 1), f"{t['name']}: pair counts"
            for g in sequence_frames(t):
                assert cfg.sequence_min_side <= min(len(g), len(g[0])) and \
                    max(len(g), len(g[0])) <= cfg.sequence_max_side, f"{t['name']}: frame {len(g)}x{len(g[0])}"
                colours = {v for row in g for v in row} - {0}
                assert colours and len(colours) <= synth.SEQUENCE_COLOURS[1] - 1, f"{t['name']}: colours {colours}"
    # the default run must not take long (make runs it)
    assert cfg.sequences <= 5000 and cfg.val_sequences <= 1000, "default sequence counts too large"


def check_sequences_chain(default):
    """Pair i's output is pair i+1's input; the frames of a sequence are distinct and never blank."""
    for split in ("train", "val"):
        for t in arc_format.read_tasks(os.path.join(default, f"sequences_{split}.bin"))[0]:
            pairs = t["train"] + t["test"]
            for i in range(len(pairs) - 1):
                assert pairs[i][1] == pairs[i + 1][0], f"{t['name']}: pair {i} output is not pair {i + 1} input"
            frames = sequence_frames(t)
            assert len({json.dumps(f) for f in frames}) == len(frames), f"{t['name']}: repeated frame"
            assert all(any(map(any, f)) for f in frames), f"{t['name']}: blank frame"


def check_sequences_rules(default, cfg):
    """Decode each sequence's program from its name and re-run it from f_0."""
    used = set()
    for split in ("train", "val"):
        for t in arc_format.read_tasks(os.path.join(default, f"sequences_{split}.bin"))[0]:
            program = synth.decode_program(t["name"].split(":", 1)[1])
            assert 1 <= len(program) <= 3, f"{t['name']}: program length {len(program)}"
            assert synth.encode_program(program) == t["name"].split(":", 1)[1], f"{t['name']}: encoding round trip"
            frames = sequence_frames(t)
            assert synth.run_program(frames[0], program, cfg.sequence_steps) == frames, \
                f"{t['name']}: frames do not follow the program"
            used.update(rule for rule, _ in program)
    assert used == set(synth.SEQUENCE_RULES), f"rules never used: {set(synth.SEQUENCE_RULES) - used}"


def check_sequences_rules_independently(default):
    """Spot-check three step rules with rules written here, not taken from synth.py, applied at the
    steps the program schedule (rule i mod L at step i) gives them."""
    seen = set()
    for t in arc_format.read_tasks(os.path.join(default, "sequences_train.bin"))[0]:
        program = synth.decode_program(t["name"].split(":", 1)[1])
        frames = sequence_frames(t)
        for i, (before, after) in enumerate(zip(frames, frames[1:])):
            rule, p = program[i % len(program)]
            rows, cols = len(before), len(before[0])
            if rule == "shift":
                dr, dc = p
                expected = [[before[r - dr][c - dc] if 0 <= r - dr < rows and 0 <= c - dc < cols else 0
                             for c in range(cols)] for r in range(rows)]
            elif rule == "rotate":   # rot90 = clockwise: row r of the result is column r read bottom-up
                turned = [[before[rows - 1 - j][i2] for j in range(rows)] for i2 in range(cols)]
                expected = turned if p == ["rot90"] else [row[::-1] for row in turned[::-1]]
            elif rule == "recolor":
                step = {a: b for a, b in zip(p, p[1:] + p[:1])}
                expected = [[step.get(v, v) for v in row] for row in before]
            else:
                continue
            assert after == expected, f"{t['name']}: step {i} ({rule} {p}) differs"
            seen.add(rule)
    assert seen == {"shift", "rotate", "recolor"}, f"checked only {seen}"


def check_sequences_heldout(default):
    """The validation sequences are other sequences than the training ones."""
    train = arc_format.read_tasks(os.path.join(default, "sequences_train.bin"))[0]
    val = arc_format.read_tasks(os.path.join(default, "sequences_val.bin"))[0]
    seen = {json.dumps(sequence_frames(t)) for t in train}
    assert not any(json.dumps(sequence_frames(t)) in seen for t in val), "a validation sequence repeats a training one"
    assert len(seen) == len(train), "two training sequences are equal"


def check_sequences_depend_on_index_only(default, small):
    """A sequence is a function of (seed, index): a run with fewer sequences repeats the same ones."""
    reference = {t["name"].split(":")[0]: t for s in ("train", "val")
                 for t in arc_format.read_tasks(os.path.join(default, f"sequences_{s}.bin"))[0]}
    shared = 0
    for s in ("train", "val"):
        for t in arc_format.read_tasks(os.path.join(small, f"sequences_{s}.bin"))[0]:
            assert t == reference[t["name"].split(":")[0]], f"{t['name']} differs between runs"
            shared += 1
    assert shared == 36, f"{shared} sequences compared"


def check_sequences_none():
    """--sequences 0 --val-sequences 0 writes no sequence file (a task file must hold a task)."""
    out = run_synth("synth_noseq", "--tasks", "12", "--eval-tasks", "12", "--heldout-tasks", "3",
                    "--sequences", "0", "--val-sequences", "0", files=3)
    assert not any(os.path.exists(os.path.join(out, f"sequences_{s}.bin")) for s in ("train", "val")), \
        "a sequence file was written"


def check_synth_empty_splits():
    """A count of 0 writes no file (the trainer refuses a task file without tasks) and removes the file
    an earlier run left in OUT_DIR, which would not match the new train.bin."""
    out = os.path.join(TMP, "synth_empty")
    stale = ("eval.bin", "heldout.bin", "sequences_train.bin", "sequences_val.bin", "json/eval/old_0001.json")
    for name in stale:
        write_json(os.path.join(out, name), "stale")
    run_synth("synth_empty", "--tasks", "12", "--eval-tasks", "0", "--heldout", "", "--heldout-tasks", "0",
              "--sequences", "0", "--val-sequences", "0", "--json", files=1)
    left = [name for name in stale if os.path.exists(os.path.join(out, name))]
    assert not left, f"stale files left: {left}"
    tasks, _ = read_split(out, "train")
    assert len(tasks) == 12 and len(os.listdir(os.path.join(out, "json", "train"))) == 12, "train.bin / json differ"


def check_sequences_options():
    """Other steps and sides are honoured."""
    out = run_synth("synth_seq_opts", "--tasks", "12", "--eval-tasks", "12", "--heldout-tasks", "3",
                    "--sequences", "40", "--val-sequences", "4", "--sequence-steps", "5",
                    "--sequence-min-side", "4", "--sequence-max-side", "5")
    cfg = synth.parse_args([out, "--sequences", "40", "--val-sequences", "4", "--sequence-steps", "5",
                            "--sequence-min-side", "4", "--sequence-max-side", "5"])
    check_sequences_files(out, cfg)
    check_sequences_chain(out)
    check_sequences_rules(out, cfg)


def main():
    global TMP
    with tempfile.TemporaryDirectory(prefix="test_data_") as TMP:
        run_checks()
    finish()


def run_checks():
    for subdir in REAL_SETS:
        check("arc_real_" + subdir.replace("/data/", "_"), check_real_set, subdir)
    # synthetic runs first: some_tasks() falls back on them when the real data is absent
    runs = {}
    check("synth_runs", lambda: runs.update(
        default=run_synth("synth_default", "--json"), same=run_synth("synth_same", "--json"),
        other=run_synth("synth_seed1", "--seed", "1"),
        small=run_synth("synth_small", "--tasks", "30", "--eval-tasks", "24", "--heldout-tasks", "6",
                        "--sequences", "30", "--val-sequences", "6")))
    check("arc_kaggle_with_solutions", check_kaggle)
    check("arc_kaggle_without_solutions", check_kaggle_unknown_outputs)
    check("arc_input_order", check_input_order)
    for case, spec in MALFORMED.items():
        check("arc_malformed_" + case, check_malformed, case, *spec)
    check("format_roundtrip", check_format_roundtrip)
    check("format_errors", check_format_errors)
    if len(runs) == 4:
        cfg = synth.parse_args([runs["default"], "--json"])
        check("synth_determinism", check_synth_determinism, runs["default"], runs["same"], runs["other"])
        check("synth_tasks_depend_on_name_only", check_synth_tasks_depend_on_name_only, runs["default"], runs["small"])
        check("synth_splits", check_synth_splits, runs["default"], cfg)
        check("synth_shapes", check_synth_shapes, runs["default"], cfg)
        check("synth_rules", check_synth_rules, runs["default"], cfg)
        check("synth_rules_independent", check_synth_rules_independently, runs["default"])
        check("synth_json_converts", check_synth_json, runs["default"], cfg)
        check("synth_sequences_files", check_sequences_files, runs["default"], cfg)
        check("synth_sequences_chain", check_sequences_chain, runs["default"])
        check("synth_sequences_rules", check_sequences_rules, runs["default"], cfg)
        check("synth_sequences_rules_independent", check_sequences_rules_independently, runs["default"])
        check("synth_sequences_heldout", check_sequences_heldout, runs["default"])
        check("synth_sequences_depend_on_index_only", check_sequences_depend_on_index_only, runs["default"],
              runs["small"])
    check("synth_sequences_none", check_sequences_none)
    check("synth_sequences_options", check_sequences_options)
    check("synth_empty_splits", check_synth_empty_splits)
    check("synth_bad_args", check_synth_bad_args)


if __name__ == "__main__":
    main()
