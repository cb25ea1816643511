"""Reader and writer for the arc.cu binary task file (the contract with the C++ loader).

All integers are little-endian int32 unless noted.

    header  int32[256]          [0] magic 20261121  [1] version 1  [2] n_tasks  [3] n_pairs
                                [4] n_cells  [5] names_bytes  [6] canvas (suggested canvas side
                                for tokenisation)  [7] max_side (largest grid side in the file)
                                [8..255] 0
    tasks   int32[n_tasks][4]   first_pair, n_train, n_test, name_offset
    pairs   int32[n_pairs][6]   in_rows, in_cols, out_rows, out_cols, in_offset, out_offset
    cells   uint8[n_cells]      colours 0..9, each grid row-major, grids back to back
    names   char[names_bytes]   each task's name, NUL-terminated

A task's pairs are pairs[first_pair : first_pair + n_train + n_test], train pairs first;
n_tasks, n_train and n_test are >= 1, names are non-empty UTF-8, max_side <= canvas <= 1024.
An unknown output (a test pair of a Kaggle challenges file without solutions) has
out_rows = out_cols = 0 and out_offset = -1.  The file length is exactly
1024 + 16*n_tasks + 24*n_pairs + n_cells + names_bytes.

In Python a task is a dict {"name": str, "train": [(input, output)], "test": [(input, output or None)]}
and a grid is a list of rows, each a list of ints.  load_json_strict reads the JSON the tools take
(ARC task files, Kaggle challenges/solutions, train_etrm predictions) strictly.
"""
import json
import math
import os
import sys
from array import array

MAGIC = 20261121
VERSION = 1
HEADER_INTS = 256
TASK_INTS = 4
PAIR_INTS = 6
MAX_SIDE = 30  # largest grid side ARC allows
MAX_CANVAS = 1024  # sanity bound on the header's canvas (ARC_MAX_CANVAS of common/arc_tasks.h)
HEADER_FIELDS = ("magic", "version", "n_tasks", "n_pairs", "n_cells", "names_bytes", "canvas", "max_side")


class FormatError(ValueError):
    """A task file that does not follow the format; the message is one line naming the file."""


class JSONFileError(ValueError):
    """A JSON file that cannot be read or is not strict JSON (see load_json_strict); the message is one
    line "PATH: problem", and `problem` is the part after the path."""

    def __init__(self, path, problem):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def load_json_strict(path, expected_levels="a few levels", expected_keys="unique keys"):
    """Parse the JSON file `path` strictly; raises JSONFileError on an unreadable file, text that is not
    UTF-8, bad JSON, NaN/Infinity, a number out of float range (1e999), an integer with more digits than
    int() accepts, a key twice in one object (json.load would silently keep the last) or nesting too
    deep for the parser.  `expected_levels` and `expected_keys` end the messages on the last two."""
    def reject_constant(name):
        raise ValueError(f"{name} is not a number (expected finite numbers only)")

    def finite_float(text):
        value = float(text)
        if not math.isfinite(value):   # 1e999 parses as inf
            raise ValueError(f"number {text} is out of range (expected finite numbers only)")
        return value

    def unique_keys(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise ValueError(f'key "{key}" appears twice in one object (expected {expected_keys})')
            obj[key] = value
        return obj

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, parse_constant=reject_constant, parse_float=finite_float, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise JSONFileError(path, f"bad JSON at line {e.lineno} column {e.colno}: {e.msg}")
    except UnicodeDecodeError as e:
        raise JSONFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})")
    except ValueError as e:   # the hooks above, or an integer with more digits than int() accepts
        raise JSONFileError(path, f"bad JSON: {e}")
    except RecursionError:
        raise JSONFileError(path, f"bad JSON: nested too deeply (expected {expected_levels})")
    except OSError as e:
        raise JSONFileError(path, f"cannot read: {e.strerror}")


def grid_problem(grid):
    """Why `grid` is not a valid ARC grid (one phrase), or None when it is valid.

    A valid grid is a non-empty rectangular list of lists of ints (bool is not an int),
    with both sides in 1..MAX_SIDE and every colour in 0..9.
    """
    if not isinstance(grid, list):
        return f"grid is {json_kind(grid)}, expected a list of rows"
    if not grid:
        return "grid is empty"
    for r, row in enumerate(grid):
        if not isinstance(row, list):
            return f"row {r} is {json_kind(row)}, expected a list of ints"
        if len(row) != len(grid[0]):
            return f"row {r} has {len(row)} cells, row 0 has {len(grid[0])} (grid must be rectangular)"
    rows, cols = len(grid), len(grid[0])
    if cols == 0:
        return "grid is empty (its rows have no cells)"
    if not (1 <= rows <= MAX_SIDE and 1 <= cols <= MAX_SIDE):
        return f"grid is {rows}x{cols}, sides must be 1..{MAX_SIDE}"
    for r, row in enumerate(grid):
        if all(type(v) is int for v in row) and 0 <= min(row) and max(row) <= 9:
            continue
        for c, v in enumerate(row):
            if type(v) is not int:
                return f"row {r} column {c} is {json_kind(v)} {v!r}, expected an int colour 0..9"
            if not 0 <= v <= 9:
                return f"row {r} column {c} has colour {v}, expected 0..9"
    return None


def json_kind(value):
    """JSON-flavoured type name for messages ("an object", "a string", ...)."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a bool",
             int: "an int", float: "a float", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def write_tasks(path, tasks, canvas):
    """Write `tasks` to `path` atomically (via path + ".tmp"); raises ValueError on an invalid grid or
    anything else the C++ loader would refuse (no tasks, a task without train or test pairs, a bad canvas)."""
    if not tasks:
        raise ValueError("no tasks: a task file must hold at least one")
    task_rows, pair_rows = array("i"), array("i")
    cells, names = bytearray(), bytearray()
    max_side = 0

    def add_grid(grid, where):
        nonlocal max_side
        problem = grid_problem(grid)
        if problem:
            raise ValueError(f"{where}: {problem}")
        max_side = max(max_side, len(grid), len(grid[0]))
        offset = len(cells)
        for row in grid:
            cells.extend(row)
        return offset

    for task in tasks:
        name = task["name"].encode()
        if not name or b"\0" in name:
            raise ValueError(f"task name {task['name']!r} must be non-empty and contain no NUL")
        if not task["train"] or not task["test"]:
            raise ValueError(f"task {task['name']!r} has {len(task['train'])} train and {len(task['test'])} test "
                             f"pairs, expected at least one of each")
        task_rows.extend((len(pair_rows) // PAIR_INTS, len(task["train"]), len(task["test"]), len(names)))
        names += name + b"\0"
        for i, (inp, out) in enumerate(task["train"] + task["test"]):
            where = f"task {task['name']!r} pair {i}"
            in_offset = add_grid(inp, where + " input")
            if out is None:
                pair_rows.extend((len(inp), len(inp[0]), 0, 0, in_offset, -1))
            else:
                out_offset = add_grid(out, where + " output")
                pair_rows.extend((len(inp), len(inp[0]), len(out), len(out[0]), in_offset, out_offset))

    if not max_side <= canvas <= MAX_CANVAS:
        raise ValueError(f"canvas {canvas} must be {max_side}..{MAX_CANVAS} (at least the largest grid side)")
    header = array("i", [0] * HEADER_INTS)
    header[:len(HEADER_FIELDS)] = array("i", (MAGIC, VERSION, len(task_rows) // TASK_INTS,
                                              len(pair_rows) // PAIR_INTS, len(cells), len(names),
                                              canvas, max_side))
    blob = b"".join((_le_bytes(header), _le_bytes(task_rows), _le_bytes(pair_rows), cells, names))
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_tasks(path):
    """Read and validate a task file; returns (tasks, header) with header a dict of HEADER_FIELDS.

    Raises FormatError (one line naming the file) on a bad magic, version, size or length.
    """
    with open(path, "rb") as f:
        data = f.read()

    def bad(problem):
        return FormatError(f"{path}: {problem}")

    if len(data) < 4 * HEADER_INTS:
        raise bad(f"file is {len(data)} bytes, shorter than the {4 * HEADER_INTS}-byte header")
    header = dict(zip(HEADER_FIELDS, _ints(data, 0, len(HEADER_FIELDS))))
    if header["magic"] != MAGIC:
        raise bad(f"bad magic {header['magic']} (expected {MAGIC}): not an arc.cu task file")
    if header["version"] != VERSION:
        raise bad(f"unsupported version {header['version']} (this reader knows version {VERSION})")
    n_tasks, n_pairs, n_cells, names_bytes = (header[k] for k in ("n_tasks", "n_pairs", "n_cells", "names_bytes"))
    if min(n_tasks, n_pairs, n_cells, names_bytes) < 0:
        raise bad(f"negative size in header: n_tasks {n_tasks}, n_pairs {n_pairs}, "
                  f"n_cells {n_cells}, names_bytes {names_bytes}")
    if n_tasks == 0:
        raise bad("holds no tasks, expected at least one")
    if any(_ints(data, 4 * len(HEADER_FIELDS), HEADER_INTS - len(HEADER_FIELDS))):
        raise bad(f"header ints {len(HEADER_FIELDS)}..{HEADER_INTS - 1} are not all 0")
    expected = 4 * HEADER_INTS + 4 * TASK_INTS * n_tasks + 4 * PAIR_INTS * n_pairs + n_cells + names_bytes
    if len(data) != expected:
        raise bad(f"file is {len(data)} bytes but its header implies {expected} (truncated or corrupt)")

    pairs_at = 4 * HEADER_INTS + 4 * TASK_INTS * n_tasks
    cells_at = pairs_at + 4 * PAIR_INTS * n_pairs
    cells = data[cells_at:cells_at + n_cells]
    names = data[cells_at + n_cells:]
    if cells and max(cells) > 9:
        raise bad(f"cells block holds colour {max(cells)}, expected 0..9")
    task_ints = _ints(data, 4 * HEADER_INTS, TASK_INTS * n_tasks)
    pair_ints = _ints(data, pairs_at, PAIR_INTS * n_pairs)
    largest = 0

    def grid(rows, cols, offset, what):
        nonlocal largest
        if not (1 <= rows <= MAX_SIDE and 1 <= cols <= MAX_SIDE and 0 <= offset <= n_cells - rows * cols):
            raise bad(f"{what} is {rows}x{cols} at cell offset {offset}, outside the {n_cells}-cell block")
        largest = max(largest, rows, cols)
        return [list(cells[offset + r * cols: offset + (r + 1) * cols]) for r in range(rows)]

    tasks = []
    for t in range(n_tasks):
        first, n_train, n_test, name_offset = task_ints[TASK_INTS * t: TASK_INTS * (t + 1)]
        end = names.find(b"\0", name_offset) if 0 <= name_offset < names_bytes else -1
        if end < 0:
            raise bad(f"task {t}: name offset {name_offset} does not start a NUL-terminated name")
        if n_train < 1 or n_test < 1:
            raise bad(f"task {t}: {n_train} train and {n_test} test pairs, expected at least one of each")
        if first < 0 or first + n_train + n_test > n_pairs:
            raise bad(f"task {t}: pairs {first}..{first + n_train + n_test} (train {n_train}, "
                      f"test {n_test}) outside the {n_pairs} pairs")
        pairs = []
        for p in range(first, first + n_train + n_test):
            in_rows, in_cols, out_rows, out_cols, in_offset, out_offset = pair_ints[PAIR_INTS * p: PAIR_INTS * (p + 1)]
            inp = grid(in_rows, in_cols, in_offset, f"pair {p} input")
            if (out_rows, out_cols, out_offset) == (0, 0, -1):
                out = None
            else:
                out = grid(out_rows, out_cols, out_offset, f"pair {p} output")
            pairs.append((inp, out))
        if any(out is None for _, out in pairs[:n_train]):
            raise bad(f"task {t}: a train pair has an unknown output")
        try:
            name = names[name_offset:end].decode()
        except UnicodeDecodeError:
            raise bad(f"task {t}: name is not UTF-8")
        if not name:
            raise bad(f"task {t}: empty name")
        tasks.append({"name": name, "train": pairs[:n_train], "test": pairs[n_train:]})
    if largest != header["max_side"]:
        raise bad(f"header max_side is {header['max_side']} but the largest grid side is {largest}")
    if not largest <= header["canvas"] <= MAX_CANVAS:
        raise bad(f"header canvas is {header['canvas']}, expected max_side {largest}..{MAX_CANVAS}")
    return tasks, header


def _le_bytes(ints):
    """An int32 array as little-endian bytes."""
    assert ints.itemsize == 4
    if sys.byteorder == "big":
        ints = array("i", ints)
        ints.byteswap()
    return ints.tobytes()


def _ints(data, start, count):
    """`count` little-endian int32 values from data[start:]."""
    ints = array("i", data[start:start + 4 * count])
    assert ints.itemsize == 4
    if sys.byteorder == "big":
        ints.byteswap()
    return ints
