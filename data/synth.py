#!/usr/bin/env python3
"""Generate small synthetic ARC-like tasks: the embedded default dataset (nothing to download).

Every task comes from a rule family (a class below; names at the end of --help) plus per-task
parameters drawn at random, so the rule has to be read from the task's 2-5 demonstration pairs;
each task also has 1-2 test pairs.  Writes OUT_DIR/train.bin (training families), OUT_DIR/eval.bin
(new tasks of the same families) and OUT_DIR/heldout.bin (held-out families only), in the format
of data/arc_format.py.

Determinism: task `index` of family `name` draws everything from random.Random("seed:name:index"),
parameters first, so adding a family or changing a count never changes another task, and
task_params() re-derives a task's parameters from its name (test/test_data.py uses that).
Tasks are named "<family>_<index>"; eval tasks continue each family's indices after train's.

Sequences (the context_mode=frames samples of train_jepa.cu): OUT_DIR/sequences_train.bin and
OUT_DIR/sequences_val.bin hold "sequences", one per task.  A sequence is S+1 distinct frames
f_0..f_S (S = --sequence-steps, default 3): f_0 is a random grid of 2-6 separate objects in a
palette of 4-6 colours (background included, as the reference's pilot curriculum), sides
--sequence-min-side..--sequence-max-side (default 6..14), and f_(i+1) = rule_(i mod L)(f_i) for
a program of L = 1-3 step rules (SEQUENCE_RULES: shift, rotate, flip, recolor, gravity, fall,
grow).  A task holds the pairs (f_0, f_1), ..., (f_(S-1), f_S) in order: the first S-1 are its
train pairs and the last its test pair, so pair i's output is pair i+1's input.  Every frame
has at least one coloured cell.  A sequence is named "seq_<index>:<program>", e.g.
"seq_00012:shift(1,-1)+recolor(3,5,7)" (decode_program() reads the program back); sequence
`index` draws from random.Random("seed:sequence:index"), and the validation sequences (held out:
different sequences of the same rules) continue the indices after the training ones.
"""
import argparse
import json
import os
import random
import sys

import arc_format

PROG = sys.argv[0]
COLOURS = tuple(range(1, 10))  # 0 is the background
MAX_PAIR_TRIES = 300   # input samples per attempt at a task's pairs
MAX_TASK_TRIES = 50    # attempts at a task whose demos leave its rule ambiguous


# ---------------------------------------------------------------- grid helpers

def blank(rows, cols):
    return [[0] * cols for _ in range(rows)]


def sides(rng, cfg, max_rows=arc_format.MAX_SIDE, max_cols=arc_format.MAX_SIDE):
    """Random (rows, cols) in [min_side, max_side], capped by max_rows / max_cols."""
    return (rng.randint(cfg.min_side, min(cfg.max_side, max_rows)),
            rng.randint(cfg.min_side, min(cfg.max_side, max_cols)))


def random_grid(rng, rows, cols, palette, density):
    """Each cell is a random palette colour with probability `density`, else background."""
    return [[rng.choice(palette) if rng.random() < density else 0 for _ in range(cols)] for _ in range(rows)]


def random_shape(rng, max_rows, max_cols, size):
    """A 4-connected set of `size` cells grown inside a max_rows x max_cols box, shifted to touch (0, 0)."""
    cells = {(rng.randrange(max_rows), rng.randrange(max_cols))}
    while len(cells) < size:
        r, c = rng.choice(sorted(cells))
        dr, dc = rng.choice(((1, 0), (-1, 0), (0, 1), (0, -1)))
        if 0 <= r + dr < max_rows and 0 <= c + dc < max_cols:
            cells.add((r + dr, c + dc))
    top, left = min(r for r, _ in cells), min(c for _, c in cells)
    return sorted((r - top, c - left) for r, c in cells)


def extent(shape):
    """(rows, cols) of a shape's bounding box."""
    return max(r for r, _ in shape) + 1, max(c for _, c in shape) + 1


def place(rng, rows, cols, shapes, tries=30):
    """Top-left corners for `shapes` whose bounding boxes are at least one cell apart, or None."""
    boxes = []
    for shape in shapes:
        h, w = extent(shape)
        if h > rows or w > cols:
            return None
        for _ in range(tries):
            r, c = rng.randint(0, rows - h), rng.randint(0, cols - w)
            if all(r > r1 or r + h < r0 or c > c1 or c + w < c0 for r0, c0, r1, c1 in boxes):
                boxes.append((r, c, r + h, c + w))
                break
        else:
            return None
    return [(r, c) for r, c, _, _ in boxes]


def objects_grid(rng, cfg, shapes, avoid=()):
    """A grid with `shapes` placed apart, each in its own colour (never one in `avoid`); None if
    they do not fit."""
    rows, cols = sides(rng, cfg)
    corners = place(rng, rows, cols, shapes)
    if corners is None:
        return None
    grid = blank(rows, cols)
    palette = [c for c in COLOURS if c not in avoid]
    for shape, (r0, c0), colour in zip(shapes, corners, rng.sample(palette, len(shapes))):
        for r, c in shape:
            grid[r0 + r][c0 + c] = colour
    return grid


def sized_objects_grid(rng, cfg, avoid=()):
    """A grid with 2-3 objects of different sizes (1-6 cells), so that the largest and the
    smallest are unique; None if they do not fit."""
    sizes = rng.sample(range(1, 7), rng.randint(2, 3))
    return objects_grid(rng, cfg, [random_shape(rng, 3, 3, size) for size in sizes], avoid)


def shifted_shape_grid(rng, cfg, shift):
    """A grid with one random two-colour shape, placed so that it stays inside when moved by
    shift(shape_rows, shape_cols) -> (dr, dc); None if it cannot."""
    rows, cols = sides(rng, cfg)
    box_rows, box_cols = rng.randint(1, 3), rng.randint(1, 3)
    shape = random_shape(rng, box_rows, box_cols, rng.randint(1, box_rows * box_cols))
    h, w = extent(shape)
    dr, dc = shift(h, w)
    if h + abs(dr) > rows or w + abs(dc) > cols:
        return None
    r0 = rng.randint(max(0, -dr), rows - h - max(0, dr))
    c0 = rng.randint(max(0, -dc), cols - w - max(0, dc))
    palette = rng.sample(COLOURS, 2)
    grid = blank(rows, cols)
    for r, c in shape:
        grid[r0 + r][c0 + c] = rng.choice(palette)
    return grid


def neighbours(grid, r, c, diagonal):
    """Values of the 4 (or, with `diagonal`, 8) neighbours of (r, c) that lie inside the grid."""
    steps = ((-1, 0), (1, 0), (0, -1), (0, 1)) + (((-1, -1), (-1, 1), (1, -1), (1, 1)) if diagonal else ())
    return [grid[r + dr][c + dc] for dr, dc in steps
            if 0 <= r + dr < len(grid) and 0 <= c + dc < len(grid[0])]


def components(grid):
    """Objects: 4-connected single-colour regions of non-background cells, as cell lists, in
    row-major order of their first cell."""
    rows, cols = len(grid), len(grid[0])
    seen = [[False] * cols for _ in range(rows)]
    objects = []
    for r in range(rows):
        for c in range(cols):
            if grid[r][c] == 0 or seen[r][c]:
                continue
            seen[r][c] = True
            stack, cells = [(r, c)], []
            while stack:
                y, x = stack.pop()
                cells.append((y, x))
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < rows and 0 <= nx < cols and not seen[ny][nx] and grid[ny][nx] == grid[r][c]:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
            objects.append(cells)
    return objects


def symmetry(grid, op):
    """One of the eight symmetries of the square applied to a grid (a new grid)."""
    if op == "identity":
        return [row[:] for row in grid]
    if op == "flip_lr":
        return [row[::-1] for row in grid]
    if op == "flip_ud":
        return [row[:] for row in grid[::-1]]
    if op == "transpose":
        return [list(col) for col in zip(*grid)]
    if op == "rot90":  # clockwise
        return [list(col) for col in zip(*grid[::-1])]
    if op == "rot180":
        return [row[::-1] for row in grid[::-1]]
    if op == "rot270":
        return [list(col) for col in zip(*grid)][::-1]
    if op == "antitranspose":
        return [list(col)[::-1] for col in zip(*grid)][::-1]
    raise ValueError(f"unknown symmetry {op}")


# ---------------------------------------------------------------- rule families

class Family:
    """A rule family.  space(cfg) lists every value of the per-task parameter; sample_input draws
    an input suited to the parameter (or None to ask for another draw); apply is the rule itself,
    a deterministic function of (input, parameter) that returns a new grid."""
    name = ""

    def space(self, cfg):
        raise NotImplementedError

    def sample_params(self, rng, cfg):
        return rng.choice(self.space(cfg))

    def sample_input(self, rng, p, cfg):
        raise NotImplementedError

    def apply(self, grid, p):
        raise NotImplementedError

    def problem(self, cfg):
        """Why this family cannot be generated under cfg, or None."""
        return None

    def ambiguous(self, p, demos, tests, cfg):
        """True when another parameter value explains every demo yet answers some test differently."""
        for q in self.space(cfg):
            if q != p and all(self.apply(i, q) == o for i, o in demos) \
                    and any(self.apply(i, q) != o for i, o in tests):
                return True
        return False


class Flip(Family):
    """Mirror or rotate the whole grid; which of the 7 non-identity symmetries is the parameter."""
    name = "flip"

    def space(self, cfg):
        return ("flip_lr", "flip_ud", "rot90", "rot180", "rot270", "transpose", "antitranspose")

    def sample_input(self, rng, p, cfg):
        return random_grid(rng, *sides(rng, cfg), rng.sample(COLOURS, 3), 0.5)

    def apply(self, grid, p):
        return symmetry(grid, p)


class Recolor(Family):
    """Permute a few colours: the parameter maps each of 2-4 colours to another of them, other
    colours stay.  Demos show every colour that the test inputs use.  (Too many permutations to
    list as a space, so this family draws and checks its parameter itself.)"""
    name = "recolor"

    def sample_params(self, rng, cfg):
        source = rng.sample(COLOURS, rng.randint(2, 4))
        target = source[:]
        while any(s == t for s, t in zip(source, target)):
            rng.shuffle(target)
        return tuple(sorted(zip(source, target)))

    def sample_input(self, rng, p, cfg):
        source = [s for s, _ in p]
        return random_grid(rng, *sides(rng, cfg), rng.sample(source, rng.randint(1, len(source))), 0.6)

    def apply(self, grid, p):
        mapping = dict(p)
        return [[mapping.get(v, v) for v in row] for row in grid]

    def ambiguous(self, p, demos, tests, cfg):
        """A colour is determined once a demo input shows it, so every test colour must appear in a demo."""
        def colours(pairs):
            return {v for grid, _ in pairs for row in grid for v in row}
        return not colours(tests) <= colours(demos)


class Gravity(Family):
    """Every coloured cell falls towards one side (the parameter) until it rests on another cell or the edge."""
    name = "gravity"

    def space(self, cfg):
        return ("up", "down", "left", "right")

    def sample_input(self, rng, p, cfg):
        return random_grid(rng, *sides(rng, cfg), rng.sample(COLOURS, 2), 0.3)

    def apply(self, grid, p):
        if p in ("up", "down"):
            return symmetry(self.apply(symmetry(grid, "transpose"), "left" if p == "up" else "right"), "transpose")
        out = []
        for row in grid:
            filled = [v for v in row if v]
            pad = [0] * (len(row) - len(filled))
            out.append(filled + pad if p == "left" else pad + filled)
        return out


class FillEnclosed(Family):
    """Background cells that cannot reach the border through background (4-connected) take the
    parameter colour."""
    name = "fill_enclosed"

    def space(self, cfg):
        return COLOURS

    def sample_input(self, rng, p, cfg):
        rows, cols = sides(rng, cfg)
        wall = rng.choice([c for c in COLOURS if c != p])
        grid = blank(rows, cols)
        for _ in range(rng.randint(1, 2)):
            h, w = rng.randint(3, rows), rng.randint(3, cols)
            r0, c0 = rng.randint(0, rows - h), rng.randint(0, cols - w)
            for r in range(r0, r0 + h):
                for c in range(c0, c0 + w):
                    if r in (r0, r0 + h - 1) or c in (c0, c0 + w - 1):
                        grid[r][c] = wall
        for _ in range(rng.randint(0, 2)):
            grid[rng.randrange(rows)][rng.randrange(cols)] = wall
        return grid

    def apply(self, grid, p):
        rows, cols = len(grid), len(grid[0])
        outside = [[False] * cols for _ in range(rows)]
        stack = [(r, c) for r in range(rows) for c in range(cols)
                 if (r in (0, rows - 1) or c in (0, cols - 1)) and grid[r][c] == 0]
        for r, c in stack:
            outside[r][c] = True
        while stack:
            r, c = stack.pop()
            for y, x in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= y < rows and 0 <= x < cols and grid[y][x] == 0 and not outside[y][x]:
                    outside[y][x] = True
                    stack.append((y, x))
        return [[p if v == 0 and not outside[r][c] else v for c, v in enumerate(row)] for r, row in enumerate(grid)]


class Move(Family):
    """Shift the whole picture by the parameter offset (dr, dc), each within -2..2; cells pushed
    off the grid vanish."""
    name = "move"

    def space(self, cfg):
        return tuple((dr, dc) for dr in range(-2, 3) for dc in range(-2, 3) if (dr, dc) != (0, 0))

    def sample_input(self, rng, p, cfg):
        return shifted_shape_grid(rng, cfg, lambda h, w: p)

    def apply(self, grid, p):
        dr, dc = p
        rows, cols = len(grid), len(grid[0])
        out = blank(rows, cols)
        for r in range(rows):
            for c in range(cols):
                if grid[r][c] and 0 <= r + dr < rows and 0 <= c + dc < cols:
                    out[r + dr][c + dc] = grid[r][c]
        return out


class Duplicate(Family):
    """Copy the picture (the bounding box of all coloured cells) next to itself towards the
    parameter direction, leaving a gap of 0 or 1 cells (also a parameter)."""
    name = "duplicate"
    STEPS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}

    def space(self, cfg):
        return tuple((d, gap) for d in self.STEPS for gap in (0, 1))

    def offset(self, p, rows, cols):
        """How far the copy of a rows x cols picture moves."""
        (dr, dc), gap = self.STEPS[p[0]], p[1]
        return dr * (rows + gap), dc * (cols + gap)

    def sample_input(self, rng, p, cfg):
        return shifted_shape_grid(rng, cfg, lambda h, w: self.offset(p, h, w))

    def apply(self, grid, p):
        cells = [(r, c) for r, row in enumerate(grid) for c, v in enumerate(row) if v]
        top, left = min(r for r, _ in cells), min(c for _, c in cells)
        dr, dc = self.offset(p, max(r for r, _ in cells) - top + 1, max(c for _, c in cells) - left + 1)
        out = [row[:] for row in grid]
        for r, c in cells:
            if 0 <= r + dr < len(grid) and 0 <= c + dc < len(grid[0]):
                out[r + dr][c + dc] = grid[r][c]
        return out


class Scale(Family):
    """Blow every cell up into a k x k block; the factor k (2 or 3, as the canvas allows) is the parameter."""
    name = "scale"

    def space(self, cfg):
        return tuple(k for k in (2, 3) if cfg.canvas // k >= cfg.min_side)

    def problem(self, cfg):
        return None if self.space(cfg) else "needs canvas >= 2 * min_side"

    def sample_input(self, rng, p, cfg):
        return random_grid(rng, *sides(rng, cfg, cfg.canvas // p, cfg.canvas // p), rng.sample(COLOURS, 3), 0.5)

    def apply(self, grid, p):
        return [[v for v in row for _ in range(p)] for row in grid for _ in range(p)]


class Tile(Family):
    """Repeat the grid 1x2, 2x1 or 2x2 times, either plainly or mirroring every other copy
    (both choices are the parameter)."""
    name = "tile"

    def space(self, cfg):
        if cfg.canvas < 2 * cfg.min_side:
            return ()
        return tuple((reps, mode) for reps in ((1, 2), (2, 1), (2, 2)) for mode in ("copy", "mirror"))

    def problem(self, cfg):
        return None if self.space(cfg) else "needs canvas >= 2 * min_side"

    def sample_input(self, rng, p, cfg):
        (ry, rx), _ = p
        return random_grid(rng, *sides(rng, cfg, cfg.canvas // ry, cfg.canvas // rx), rng.sample(COLOURS, 3), 0.5)

    def apply(self, grid, p):
        (ry, rx), mode = p
        out = []
        for i in range(ry):
            tiles = [symmetry(grid, "identity" if mode == "copy" else
                              ("identity", "flip_lr", "flip_ud", "rot180")[(j % 2) + 2 * (i % 2)])
                     for j in range(rx)]
            out += [sum((tile[r] for tile in tiles), []) for r in range(len(grid))]
        return out


class Crop(Family):
    """Cut out the bounding box of the largest or of the smallest object (the parameter); inputs
    hold 2-3 objects of different sizes."""
    name = "crop"

    def space(self, cfg):
        return ("largest", "smallest")

    def sample_input(self, rng, p, cfg):
        return sized_objects_grid(rng, cfg)

    def apply(self, grid, p):
        cells = (max if p == "largest" else min)(components(grid), key=len)
        rows, cols = [r for r, _ in cells], [c for _, c in cells]
        return [row[min(cols):max(cols) + 1] for row in grid[min(rows):max(rows) + 1]]


class Lines(Family):
    """Shoot a line from every coloured pixel to the border in the parameter direction(s)
    (up, down, left, right, horizontal, vertical or cross); lines paint only background,
    earlier pixels (row-major) first."""
    name = "lines"
    STEPS = {"up": ((-1, 0),), "down": ((1, 0),), "left": ((0, -1),), "right": ((0, 1),),
             "horizontal": ((0, -1), (0, 1)), "vertical": ((-1, 0), (1, 0)),
             "cross": ((-1, 0), (1, 0), (0, -1), (0, 1))}

    def space(self, cfg):
        return tuple(self.STEPS)

    def sample_input(self, rng, p, cfg):
        return objects_grid(rng, cfg, [[(0, 0)]] * rng.randint(1, 3))

    def apply(self, grid, p):
        rows, cols = len(grid), len(grid[0])
        out = [row[:] for row in grid]
        for r, c in [(r, c) for r in range(rows) for c in range(cols) if grid[r][c]]:
            for dr, dc in self.STEPS[p]:
                y, x = r + dr, c + dc
                while 0 <= y < rows and 0 <= x < cols:
                    if out[y][x] == 0:
                        out[y][x] = grid[r][c]
                    y, x = y + dr, x + dc
        return out


class Denoise(Family):
    """Isolated pixels (no coloured cell among their 8 neighbours) take the parameter colour;
    colour 0 erases them.  Inputs hold 1-2 solid rectangles plus 1-3 such pixels."""
    name = "denoise"

    def space(self, cfg):
        return (0,) + COLOURS

    def sample_input(self, rng, p, cfg):
        shapes = []
        for _ in range(rng.randint(1, 2)):
            h, w = rng.choice([(h, w) for h in (1, 2, 3) for w in (1, 2, 3) if h * w >= 2])
            shapes.append([(r, c) for r in range(h) for c in range(w)])
        shapes += [[(0, 0)]] * rng.randint(1, 3)
        return objects_grid(rng, cfg, shapes, avoid=(p,))

    def apply(self, grid, p):
        return [[p if v and not any(neighbours(grid, r, c, True)) else v for c, v in enumerate(row)]
                for r, row in enumerate(grid)]


class RecolorLargest(Family):
    """Paint the largest object (4-connected single-colour region) in the parameter colour;
    inputs hold 2-3 objects of different sizes."""
    name = "recolor_largest"

    def space(self, cfg):
        return COLOURS

    def sample_input(self, rng, p, cfg):
        return sized_objects_grid(rng, cfg, avoid=(p,))

    def apply(self, grid, p):
        out = [row[:] for row in grid]
        for r, c in max(components(grid), key=len):
            out[r][c] = p
        return out


class Halo(Family):
    """Background cells next to an object take the parameter colour; whether diagonal neighbours
    count is also a parameter."""
    name = "halo"

    def space(self, cfg):
        return tuple((colour, diagonal) for colour in COLOURS for diagonal in (False, True))

    def sample_input(self, rng, p, cfg):
        return objects_grid(rng, cfg, [random_shape(rng, 2, 2, rng.randint(1, 3)) for _ in range(rng.randint(1, 2))],
                            avoid=(p[0],))

    def apply(self, grid, p):
        colour, diagonal = p
        return [[colour if v == 0 and any(neighbours(grid, r, c, diagonal)) else v for c, v in enumerate(row)]
                for r, row in enumerate(grid)]


class Symmetrize(Family):
    """Complete the picture to be mirror-symmetric left-right, top-bottom or both (the parameter):
    a background cell takes the colour of its mirror cell."""
    name = "symmetrize"

    def space(self, cfg):
        return ("lr", "ud", "both")

    def sample_input(self, rng, p, cfg):
        return random_grid(rng, *sides(rng, cfg), rng.sample(COLOURS, 2), 0.3)

    def apply(self, grid, p):
        out = grid
        for axis in (("flip_lr", "flip_ud") if p == "both" else ("flip_lr" if p == "lr" else "flip_ud",)):
            mirror = symmetry(out, axis)
            out = [[v or m for v, m in zip(row, mrow)] for row, mrow in zip(out, mirror)]
        return out


class Negative(Family):
    """Swap figure and ground: background cells take the parameter colour, coloured cells become background."""
    name = "negative"

    def space(self, cfg):
        return COLOURS

    def sample_input(self, rng, p, cfg):
        return random_grid(rng, *sides(rng, cfg), rng.sample(COLOURS, rng.randint(1, 2)), 0.4)

    def apply(self, grid, p):
        return [[p if v == 0 else 0 for v in row] for row in grid]


FAMILIES = {f.name: f for f in (Flip(), Recolor(), Gravity(), FillEnclosed(), Move(), Duplicate(), Scale(), Tile(),
                                Crop(), Lines(), Denoise(), RecolorLargest(), Halo(), Symmetrize(), Negative())}
DEFAULT_HELDOUT = ("duplicate", "halo", "symmetrize")


# ---------------------------------------------------------------- tasks and splits

class GenerationError(Exception):
    """A task whose sampler could not meet its constraints (sides too small for the family)."""


def task_params(family, index, cfg):
    """(parameters, rng) of a task: its own random stream and the parameters drawn first from it."""
    rng = random.Random(f"{cfg.seed}:{family.name}:{index}")
    return family.sample_params(rng, cfg), rng


def sample_pairs(family, p, rng, cfg, count):
    """`count` pairs with distinct inputs, each output differing from its input and fitting the
    canvas; None if the sampler keeps failing."""
    pairs, seen = [], set()
    for _ in range(MAX_PAIR_TRIES):
        if len(pairs) == count:
            return pairs
        grid = family.sample_input(rng, p, cfg)
        if grid is None:
            continue
        key = tuple(map(tuple, grid))
        if key in seen:
            continue
        out = family.apply(grid, p)
        if out != grid and len(out) <= cfg.canvas and len(out[0]) <= cfg.canvas:
            seen.add(key)
            pairs.append((grid, out))
    return pairs if len(pairs) == count else None


def make_task(family, index, cfg):
    """Task `index` of `family`: 2-5 demos and 1-2 tests that pin down the task's parameter."""
    p, rng = task_params(family, index, cfg)
    n_train, n_test = rng.randint(2, 5), rng.randint(1, 2)
    name = f"{family.name}_{index:04d}"
    for _ in range(MAX_TASK_TRIES):
        pairs = sample_pairs(family, p, rng, cfg, n_train + n_test)
        if pairs and not family.ambiguous(p, pairs[:n_train], pairs[n_train:], cfg):
            return {"name": name, "train": pairs[:n_train], "test": pairs[n_train:]}
    raise GenerationError(f"could not generate task {name} with sides {cfg.min_side}..{cfg.max_side} "
                          f"on canvas {cfg.canvas}")


def split_tasks(families, count, first_index, cfg):
    """`count` tasks dealt round-robin over `families`; family f's indices start at first_index[f]."""
    tasks = []
    for j in range(count):
        family = families[j % len(families)]
        tasks.append(make_task(family, first_index[family.name] + j // len(families), cfg))
    return tasks


def write_json(tasks, folder):
    """Each task as ARC JSON folder/<name>.json (stale .json files there are removed first), each file
    written to a temporary name and renamed, so none is ever half written."""
    os.makedirs(folder, exist_ok=True)
    for old in os.listdir(folder):
        if old.endswith(".json"):
            os.remove(os.path.join(folder, old))
    for task in tasks:
        obj = {split: [{"input": i, "output": o} for i, o in task[split]] for split in ("train", "test")}
        path = os.path.join(folder, task["name"] + ".json")
        with open(path + ".tmp", "w") as f:
            json.dump(obj, f)
        os.replace(path + ".tmp", path)


def remove_stale(path):
    """Remove an output of an earlier run that this run does not write (it would not match the others)."""
    if os.path.exists(path):
        os.remove(path)


def generate(cfg):
    """Write the three splits (and their JSON with cfg.json) and the two sequence files, printing one
    summary line per file.  A split or sequence file with no tasks is not written (the trainer refuses
    it), and its file from an earlier run into OUT_DIR is removed."""
    heldout = [FAMILIES[n] for n in FAMILIES if n in cfg.heldout]
    training = [f for f in FAMILIES.values() if f.name not in cfg.heldout]
    n_train_of = {f.name: len(range(i, cfg.tasks, len(training))) for i, f in enumerate(training)}
    splits = (("train", training, cfg.tasks, dict.fromkeys(n_train_of, 0)),
              ("eval", training, cfg.eval_tasks, n_train_of),
              ("heldout", heldout, cfg.heldout_tasks, dict.fromkeys(cfg.heldout, 0)))
    os.makedirs(cfg.out_dir, exist_ok=True)
    for split, families, count, first_index in splits:
        tasks = split_tasks(families, count, first_index, cfg)
        path = os.path.join(cfg.out_dir, split + ".bin")
        if cfg.json:
            write_json(tasks, os.path.join(cfg.out_dir, "json", split))
        if not tasks:
            remove_stale(path)
            continue
        arc_format.write_tasks(path, tasks, cfg.canvas)
        n_pairs = sum(len(t["train"]) + len(t["test"]) for t in tasks)
        print(f"{PROG}: wrote {len(tasks)} tasks ({n_pairs} pairs, {min(count, len(families))} families) to {path}")
    generate_sequences(cfg)


# ---------------------------------------------------------------- sequences (frames for the JEPA)

class StepRule:
    """One step rule of a sequence program.  Its parameter is a list of tokens (ints or strings, see
    encode_program); sample_param(rng, palette) draws one, apply(grid, p) is the rule itself: a
    deterministic function of (grid, p) returning a new grid of sides <= the input's largest side."""
    name = ""

    def sample_param(self, rng, palette):
        raise NotImplementedError

    def apply(self, grid, p):
        raise NotImplementedError


class ShiftStep(StepRule):
    """Move the whole picture by (dr, dc), each in -1..1 (the move family's rule: cells pushed off vanish)."""
    name = "shift"

    def sample_param(self, rng, palette):
        return list(rng.choice([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]))

    def apply(self, grid, p):
        return FAMILIES["move"].apply(grid, (p[0], p[1]))


class RotateStep(StepRule):
    """Rotate the grid a quarter turn, clockwise (rot90) or counter-clockwise (rot270)."""
    name = "rotate"

    def sample_param(self, rng, palette):
        return [rng.choice(("rot90", "rot270"))]

    def apply(self, grid, p):
        return symmetry(grid, p[0])


class FlipStep(StepRule):
    """Mirror the grid (left-right, up-down, transpose, anti-transpose) or turn it half way."""
    name = "flip"

    def sample_param(self, rng, palette):
        return [rng.choice(("flip_lr", "flip_ud", "transpose", "antitranspose", "rot180"))]

    def apply(self, grid, p):
        return symmetry(grid, p[0])


class RecolorStep(StepRule):
    """Cycle the palette: colour p[i] becomes p[i + 1] and the last becomes the first (all the
    sequence's colours, in a random order); other colours stay."""
    name = "recolor"

    def sample_param(self, rng, palette):
        return rng.sample(list(palette), len(palette))

    def apply(self, grid, p):
        return FAMILIES["recolor"].apply(grid, tuple(zip(p, p[1:] + p[:1])))


class GravityStep(StepRule):
    """Everything falls all the way towards one side (the gravity family's rule)."""
    name = "gravity"

    def sample_param(self, rng, palette):
        return [rng.choice(("up", "down", "left", "right"))]

    def apply(self, grid, p):
        return FAMILIES["gravity"].apply(grid, p[0])


class FallStep(StepRule):
    """One time step of gravity: every coloured cell that has background on its side towards the
    parameter direction moves one cell that way (cells are moved nearest the wall first, so a
    column of cells with room ahead moves as a whole)."""
    name = "fall"

    def sample_param(self, rng, palette):
        return [rng.choice(("up", "down", "left", "right"))]

    def apply(self, grid, p):
        if p[0] in ("up", "down"):
            return symmetry(self.apply(symmetry(grid, "transpose"), ["left" if p[0] == "up" else "right"]),
                            "transpose")
        out = []
        for row in grid:
            row = row[::-1] if p[0] == "left" else row[:]
            for c in range(len(row) - 2, -1, -1):   # towards the right wall, nearest it first
                if row[c] and not row[c + 1]:
                    row[c + 1], row[c] = row[c], 0
            out.append(row[::-1] if p[0] == "left" else row)
        return out


class GrowStep(StepRule):
    """Dilate the objects by one cell: a background cell with a coloured neighbour (4 neighbours, or
    8 with "diag") takes the colour of the first of them in the order up, down, left, right, then
    the diagonals up-left, up-right, down-left, down-right."""
    name = "grow"

    def sample_param(self, rng, palette):
        return [rng.choice(("orth", "diag"))]

    def apply(self, grid, p):
        diagonal = p[0] == "diag"
        out = [row[:] for row in grid]
        for r, row in enumerate(grid):
            for c, v in enumerate(row):
                if v == 0:
                    out[r][c] = next((n for n in neighbours(grid, r, c, diagonal) if n), 0)
        return out


SEQUENCE_RULES = {r.name: r for r in (ShiftStep(), RotateStep(), FlipStep(), RecolorStep(), GravityStep(),
                                      FallStep(), GrowStep())}
SEQUENCE_COLOURS = (4, 6)        # colours in a sequence's palette, background included (the pilot curriculum's 4-6)
SEQUENCE_PROGRAM_TRIES = 50      # programs drawn before giving up on a sequence
SEQUENCE_GRID_TRIES = 20         # first frames tried per program


def encode_program(program):
    """A program [(rule, [tokens])] as text: "rule(tok,tok)+rule(tok)"."""
    return "+".join(f"{rule}({','.join(str(t) for t in p)})" for rule, p in program)


def decode_program(text):
    """The inverse of encode_program (tokens that read as ints become ints)."""
    program = []
    for step in text.split("+"):
        rule, _, rest = step.partition("(")
        if rule not in SEQUENCE_RULES or not rest.endswith(")"):
            raise ValueError(f"bad program step {step!r} in {text!r}")
        program.append((rule, [int(t) if t.lstrip("-").isdigit() else t for t in rest[:-1].split(",")]))
    return program


def run_program(first, program, steps):
    """Frames f_0 = first, f_(i+1) = rule_(i mod len(program))(f_i), for i < steps."""
    frames = [first]
    for i in range(steps):
        rule, p = program[i % len(program)]
        frames.append(SEQUENCE_RULES[rule].apply(frames[-1], p))
    return frames


def sequence_first_frame(rng, cfg, palette):
    """A random object grid: 2-6 shapes of 1-6 cells (each grown in a 3x3 box), each in a random
    palette colour, placed with their bounding boxes at least one cell apart (so each shape is one
    object); None if they do not fit."""
    rows = rng.randint(cfg.sequence_min_side, cfg.sequence_max_side)
    cols = rng.randint(cfg.sequence_min_side, cfg.sequence_max_side)
    shapes = [random_shape(rng, 3, 3, rng.randint(1, 6)) for _ in range(rng.randint(2, 6))]
    corners = place(rng, rows, cols, shapes)
    if corners is None:
        return None
    grid = blank(rows, cols)
    for shape, (r0, c0) in zip(shapes, corners):
        colour = rng.choice(palette)
        for r, c in shape:
            grid[r0 + r][c0 + c] = colour
    return grid


def make_sequence(index, cfg):
    """Sequence `index`: a program and a first frame whose frames are distinct and never blank."""
    rng = random.Random(f"{cfg.seed}:sequence:{index}")
    for _ in range(SEQUENCE_PROGRAM_TRIES):
        palette = rng.sample(COLOURS, rng.randint(*SEQUENCE_COLOURS) - 1)
        program = []
        for _ in range(rng.randint(1, 3)):
            rule = rng.choice(list(SEQUENCE_RULES.values()))
            program.append((rule.name, rule.sample_param(rng, palette)))
        for _ in range(SEQUENCE_GRID_TRIES):
            first = sequence_first_frame(rng, cfg, palette)
            if first is None:
                continue
            frames = run_program(first, program, cfg.sequence_steps)
            if len({json.dumps(f) for f in frames}) == len(frames) and all(any(map(any, f)) for f in frames):
                pairs = list(zip(frames[:-1], frames[1:]))
                return {"name": f"seq_{index:05d}:{encode_program(program)}", "train": pairs[:-1], "test": pairs[-1:]}
    raise GenerationError(f"could not generate sequence {index} with sides {cfg.sequence_min_side}.."
                          f"{cfg.sequence_max_side} and {cfg.sequence_steps} steps")


def generate_sequences(cfg):
    """Write sequences_train.bin and sequences_val.bin (a split with no sequences is not written)."""
    for split, first, count in (("train", 0, cfg.sequences), ("val", cfg.sequences, cfg.val_sequences)):
        path = os.path.join(cfg.out_dir, f"sequences_{split}.bin")
        if count == 0:
            remove_stale(path)
            continue
        tasks = [make_sequence(index, cfg) for index in range(first, first + count)]
        arc_format.write_tasks(path, tasks, cfg.sequence_max_side)
        print(f"{PROG}: wrote {count} sequences ({cfg.sequence_steps + 1} frames each) to {path}")


# ---------------------------------------------------------------- command line

def int_in(low, high=None, why=""):
    """An argparse type: an int in low..high (high None: no upper bound), else a usage error (exit 2)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {f'>= {low}' if high is None else f'{low}..{high}'}{why}, "
                                             f"got {value}")
        return value
    return parse


def parse_args(argv):
    """Parse and check the command line: a value out of its own range is a usage error (exit 2); raises
    ValueError (one line) on a bad combination."""
    count = int_in(0)
    side = int_in(3, arc_format.MAX_SIDE, " (3: room for the objects; 30: the ARC limit)")
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__,
        epilog=f"families: {', '.join(FAMILIES)}\ndefault held-out families: {','.join(DEFAULT_HELDOUT)}")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="folder for train.bin, eval.bin, heldout.bin, sequences_train.bin, sequences_val.bin")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--tasks", type=int_in(1, why=" (the trainer refuses a task file without tasks)"),
                        default=400, help="tasks in train.bin, >= 1 (default 400)")
    parser.add_argument("--eval-tasks", type=count, default=100, help="tasks in eval.bin (default 100; 0: no file)")
    parser.add_argument("--heldout-tasks", type=count, default=100,
                        help="tasks in heldout.bin (default 100; 0: no file)")
    parser.add_argument("--heldout", default=",".join(DEFAULT_HELDOUT),
                        help=f"comma-separated held-out families (default {','.join(DEFAULT_HELDOUT)})")
    parser.add_argument("--min-side", type=side, default=3, help="smallest input side, 3..30 (default 3)")
    parser.add_argument("--max-side", type=side, default=6, help="largest input side, 3..30 (default 6)")
    parser.add_argument("--canvas", type=side, default=8,
                        help="largest side of any grid, outputs included, 3..30; written to the header (default 8)")
    parser.add_argument("--json", action="store_true",
                        help="also write OUT_DIR/json/<split>/<name>.json (not for the sequences)")
    parser.add_argument("--sequences", type=count, default=2000,
                        help="sequences in sequences_train.bin (default 2000; 0: no file)")
    parser.add_argument("--val-sequences", type=count, default=200,
                        help="held-out sequences in sequences_val.bin (default 200; 0: no file)")
    parser.add_argument("--sequence-steps", type=int_in(2, why=" (a sequence task needs a train and a test pair)"),
                        default=3, help="rule steps per sequence, >= 2: frames are steps + 1 (default 3)")
    parser.add_argument("--sequence-min-side", type=side, default=6,
                        help="smallest sequence grid side, 3..30 (default 6)")
    parser.add_argument("--sequence-max-side", type=side, default=14,
                        help="largest sequence grid side, 3..30 (default 14)")
    cfg = parser.parse_args(argv)
    cfg.heldout = [n.strip() for n in cfg.heldout.split(",") if n.strip()]
    check_args(cfg)
    return cfg


def check_args(cfg):
    unknown = [n for n in cfg.heldout if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown held-out family {unknown[0]!r} (valid: {', '.join(FAMILIES)})")
    if cfg.max_side < cfg.min_side:
        raise ValueError(f"--max-side {cfg.max_side} is below --min-side {cfg.min_side}")
    if cfg.max_side > cfg.canvas:
        raise ValueError(f"--max-side {cfg.max_side} exceeds --canvas {cfg.canvas} (every grid must fit the canvas)")
    if cfg.sequence_max_side < cfg.sequence_min_side:
        raise ValueError(f"--sequence-max-side {cfg.sequence_max_side} is below --sequence-min-side {cfg.sequence_min_side}")
    training = [n for n in FAMILIES if n not in cfg.heldout]
    if not training:   # train.bin needs at least one task (--tasks >= 1)
        raise ValueError("every family is held out, so train.bin would have no family")
    if not cfg.heldout and cfg.heldout_tasks:
        raise ValueError("no held-out families but --heldout-tasks > 0 (use --heldout-tasks 0)")
    for name in training + (cfg.heldout if cfg.heldout_tasks else []):
        problem = FAMILIES[name].problem(cfg)
        if problem:
            raise ValueError(f"family {name} {problem} (got canvas {cfg.canvas}, min_side {cfg.min_side})")


def main(argv=None):
    try:
        cfg = parse_args(argv)
        generate(cfg)
    except (ValueError, GenerationError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:   # only generate() touches files, so cfg is set
        print(f"{PROG}: error: {e.filename or cfg.out_dir}: cannot write: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
