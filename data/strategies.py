#!/usr/bin/env python3
"""Strategy-sequence tasks: problems solved by several strategies whose traces differ but reach one answer.

These are the six synthetic tasks of seed report 004 (spec ../shared/spec/cvae_reference.md, sections 2, 5 and
7), the data of the latent-strategy CVAE. For a problem x, each strategy s writes a reasoning trace y that ends
in the same answer, and the traces of different strategies differ from their first step on. A model trained on
the mixture has to pick a strategy in its first few tokens; the CVAE's latent z should come to encode that pick.
The strategy is drawn uniformly per example and is never named in the trace.

Every example is one line of text in the template of the spec (the markers are literal text tokens; the empty
z slot is filled by the trainer):

    <bos> <x> X </x> <z> </z> <y> STEP | STEP | ... | ans: ANSWER </y> <eos>

The tasks and their strategies (strategy ids are the indices below; STRATEGIES[task] lists their names):

  multidigit_addition      x = "4 7 3 9 + 8 2 6" (2-8 digits each), answer "5 5 6 5"
    0 columns    right to left, one column per step with its carry: "9+6+0=15 w5 c1 | 3+2+1=6 w6 c0 | ..."
    1 places     left to right place values into a running total: "4000+0=4000 | 4000+700+800=5500 | ..."
    2 chunks     right to left in two-digit chunks with a carry: "39+26+0=65 w65 c0 | 47+08+0=55 w55 c0"
  list_summation           x = "[23, 45, 7, 81]" (3-12 numbers 0..99), answer "156"
    0 running    left to right running sum: "23+45=68 | 68+7=75 | 75+81=156"
    1 tree       pairwise, level by level: "(23+45)=68 (7+81)=88 | (68+88)=156"
    2 tens_ones  the tens, then the ones, then both: "20+40+0+80=140 | 3+5+7+1=16 | 140+16=156"
  grid_pathfinding         x = "S . . # / . # . . / ..." (4x4 to 6x6, '#' walls, rows split by '/'),
                           answer the moves "R R D D" (U D L R) of the shortest path; cells are written "rc"
    0 bfs_start  breadth-first layers from S, then the path traced back from G: "S=00 | 01 10 | ... | 33 23 .. 00"
    1 bfs_goal   breadth-first layers from G, then the path walked from S: "G=33 | 23 32 | ... | 00 01 .. 33"
    2 astar      A* with the Manhattan heuristic, each expansion "cell g+h", then the path back from G:
                 "00 0+6 | 01 1+5 | ... | 33 23 .. 00"
  linear_equation_solving  x = "3 x + 5 = x - 7" (integer solution), answer "-6"
    0 x_left     x terms to the left first: "3x-x+5=-7 | 2x+5=-7 | 2x=-7-5 | 2x=-12 | x=-12/2 | x=-6"
    1 consts     constants to the right first: "3x=x-7-5 | 3x=x-12 | 3x-x=-12 | 2x=-12 | x=-12/2 | x=-6"
    2 x_right    x terms to the right first: "5=x-3x-7 | 5=-2x-7 | 5+7=-2x | 12=-2x | x=12/-2 | x=-6"
  base_conversion          x = "n=1 8 5 b10 -> b8" (10..9999 into base 4, 8 or 16), answer "2 7 1"
    0 division   repeated division by the base, remainders read upwards: "185/8=23 r1 | 23/8=2 r7 | 2/8=0 r2"
    1 powers     the powers of the base, then greatest-power subtraction: "1 8 64 512 | 185-2*64=57 | ..."
    2 binary     halving into bits, then groups of log2(base) bits: "185/2=92 r1 | ... | 10111001 | 10=2 111=7 001=1"
  sorting_algorithms       x = "[52, 7, 90, 13, 41]" (4-9 numbers 0..99), answer "7 13 41 52 90"
    0 bubble     the list after each pass, its sorted suffix after '/': "7 52 13 41 / 90 | 7 13 41 / 52 90 | ..."
    1 insertion  the list after each insertion, its sorted prefix before '/': "7 52 / 90 13 41 | 7 52 90 / 13 41"
    2 selection  the list after each swap of the minimum to the front: "7 / 52 90 13 41 | 7 13 / 90 52 41 | ..."
    3 merge      bottom-up merge sort, one level per step: "[7 52] [13 90] [41] | [7 13 52 90] [41] | ..."

Digits are spaced where a number is processed digit by digit (the addition operands and answers, the base
conversion input and answer) and written whole elsewhere; Qwen2.5's BPE splits digits into single tokens anyway.

Where this departs from the proposal of spec section 7, and why:
  - list_summation drops "reverse-order running sum": from the trace alone it is a forward running sum of the
    reversed list, so no detector that sees only y can tell the two apart. Adding tens then ones replaces it.
  - grid_pathfinding drops DFS: DFS does not find shortest paths, so its answer would differ from the others'.
    Backward BFS replaces it. Only mazes with exactly one shortest path are kept, so all strategies end in the
    same moves; the checker still accepts any valid path of the shortest length.
  - linear_equation_solving drops "divide first when possible": it is the same trace as another strategy
    whenever no coefficient divides; "x terms to the right" is always different.
  - base_conversion converts into bases 4, 8 and 16: "via binary" needs a power-of-two base, and for base 2 it
    is the same trace as repeated division.
  - sorting_algorithms keeps the optional merge sort (four strategies) and caps lists at 9 numbers, so its
    quadratic traces stay within the length cap (the report's sorting runs ran out of memory).

Detection. detect(task, y) looks at the first step of y only (the text before the first "|"): each strategy
opens with a step of its own shape (the `openings` regexes of each task, which never match the same step), so
a trace cut anywhere is taken for its own strategy once its first step is complete, and never for another one.
For one x, the traces of two strategies differ within their first 7 characters (--report gives the largest
position at which they first differ). On generated data the detector recovers the drawn strategy in 100% of
the examples for every task, and no two strategies ever write the same trace for the same x (--report measures
both). check(task, x, y) reads the answer after the last "ans:" of y and compares it with the solution of x.
Both take arbitrary strings (model outputs) and return None / False instead of raising.

Lengths. Every example's text is at most MAX_CHARS = 480 characters, all ASCII. A character-level tokenizer
(markers as single tokens) gives fewer tokens than characters, and a byte-level BPE such as Qwen2.5's never
gives more tokens than bytes, so both stay under 512 tokens with room for the z slot's content. The problem
sizes above are chosen so that the traces of every strategy fit: for five tasks the largest problems fit by
construction (test/test_strategies.py checks them); a grid_pathfinding maze for which one strategy's trace would
not fit is redrawn, for every strategy alike so that the distribution of x does not depend on the strategy
(none of 30000 mazes drawn needed it; the longest had under 440 characters). --report gives the maximum and mean
length per task.

Splits and determinism. Example `index` of split `split` of task `task` draws everything from
random.Random("seed:task:split:index"): the strategy first, then the problem. A problem belongs to one split,
fixed by a hash of its x text (80% train, 10% val, 10% test of all problems, whatever the seed), and a split
redraws problems that belong to another, so no x appears in two splits. Counts are per task.

Usage:
    python3 data/strategies.py OUT_DIR [--tasks all|T1,T2] [--n-train N] [--n-val N] [--n-test N] [--seed S]
    python3 data/strategies.py --json      # the same problems solved by every strategy, as JSON lines
    python3 data/strategies.py --report    # strategies, detector accuracy, coinciding traces, lengths
    python3 data/strategies.py --score GEN.jsonl [--json]   # answer accuracy and strategy mix of model outputs
    python3 data/strategies.py --detect GEN.jsonl           # per record: "detect S C" (strategy id or -1; answer 1/0)
OUT_DIR gets train.jsonl, val.jsonl and test.jsonl, one example per line:
{"task", "strategy" (the id; for evaluation only, not in the text), "x", "y", "text"}.

Scoring. A trainer that generates traces writes them as JSON lines {"task", "x", "y": the generated trace, any
string, "strategy": the id its reference example was drawn with, optional}; other keys are ignored. --score reads
such a file and prints one line per task present (in TASKS order), then one for all records:

    score task=list_summation n=100 answer_acc=0.930 detected=0.990 mix=running:0.340,tree:0.330,tens_ones:0.320 \
undetected=0.010 match=0.950
    score task=all n=600 answer_acc=0.910 detected=0.985 undetected=0.015 match=0.940

answer_acc is the fraction of the n records that check(task, x, y) accepts; mix the fraction of the n records
in which detect(task, y) finds each strategy, detected their sum and undetected the rest (1 - detected); match,
printed only when some record has "strategy", the fraction of those records whose trace detect() attributes to
that strategy. The task=all line has no mix (the tasks' strategies differ). Rates of n = 0 records are printed
as 0. With --json each line is instead one JSON object with the same keys (mix an object) and unrounded rates.
A malformed record is one line "error: FILE:LINE: ..." on stderr and exit status 1.

Importable: TASKS, STRATEGIES, generate(task, strategy, rng), detect(task, y), check(task, x, y),
score(records) (the lines above as dicts).
"""
import argparse
import hashlib
import heapq
import json
import os
import random
import re
import sys

PROG = sys.argv[0]
TEMPLATE = "<bos> <x> {x} </x> <z> </z> <y> {y} </y> <eos>"
MARKERS = ("<bos>", "<x>", "</x>", "<z>", "</z>", "<y>", "</y>", "<eos>")
MAX_CHARS = 480          # of a whole example's text: 32 tokens of room under 512 for the z slot
SEP = " | "              # between the steps of a trace
ANSWER = "ans: "         # opens a trace's last step
SPLITS = ("train", "val", "test")
MAX_DRAWS = 10000        # problems drawn for one example before giving up (a few dozen at most in practice)
SHOW_PROBLEMS = 2        # problems per task that --json solves with every strategy
DIGITS = "0123456789ABCDEF"


class GenerationError(RuntimeError):
    pass


def spaced(text):
    """'185' -> '1 8 5'."""
    return " ".join(str(text))


def squeeze(answer):
    """An answer with its spacing normalised: model outputs may differ in whitespace only."""
    return " ".join(answer.split())


class Task:
    """A task: a subclass defines `name`, `strategies` (names; a strategy's id is its index), `openings` (for
    each strategy a regex that the first step of its traces matches and the first steps of the other strategies
    never do), and the methods

        sample(rng) -> problem     question(problem) -> x      parse(x) -> problem, or None when x is malformed
        answer(problem) -> str     steps(problem, strategy) -> [step, ...] (the trace without its answer)

    correct(problem, answer) says whether an answer string is right (a subclass may accept several answers)."""

    def correct(self, problem, answer):
        return squeeze(answer) == self.answer(problem)


# ---------------------------------------------------------------- multidigit_addition

class Addition(Task):
    name = "multidigit_addition"
    strategies = ("columns", "places", "chunks")
    openings = (r"\d\+\d\+0=\d{1,2} w\d c[01]", r"\d{1,9}\+\d{1,9}=\d{1,10}", r"\d\d\+\d\d\+0=\d{1,3} w\d\d c[01]")
    OPERAND_DIGITS = (2, 8)

    def sample(self, rng):
        lengths = [rng.randint(*self.OPERAND_DIGITS) for _ in range(2)]
        return tuple(rng.randint(10 ** (k - 1), 10 ** k - 1) for k in lengths)

    def question(self, p):
        return f"{spaced(p[0])} + {spaced(p[1])}"

    def parse(self, x):
        m = re.fullmatch(r"(\d(?: \d){0,15}) \+ (\d(?: \d){0,15})", x)
        return m and tuple(int(g.replace(" ", "")) for g in m.groups())

    def answer(self, p):
        return spaced(sum(p))

    def steps(self, p, strategy):
        a, b = p
        if strategy == 1:
            return self.places(a, b)
        return self.columns(a, b, 10 if strategy == 0 else 100)

    @staticmethod
    def columns(a, b, width):
        """School addition in base `width`: each column's sum with the carry in, the written chunk, the carry."""
        digits = len(str(width)) - 1
        steps, carry = [], 0
        while a or b or carry:
            da, db = a % width, b % width
            s = da + db + carry
            steps.append(f"{da:0{digits}}+{db:0{digits}}+{carry}={s} w{s % width:0{digits}} c{s // width}")
            a, b, carry = a // width, b // width, s // width
        return steps

    @staticmethod
    def places(a, b):
        """The place values of both numbers, highest first, added to a running total."""
        top = max(len(str(a)), len(str(b))) - 1
        steps, total = [], 0
        for k in range(top, -1, -1):
            pa, pb = a // 10 ** k % 10 * 10 ** k, b // 10 ** k % 10 * 10 ** k
            steps.append(f"{pa}+{pb}={pa + pb}" if k == top else f"{total}+{pa}+{pb}={total + pa + pb}")
            total += pa + pb
        return steps


# ---------------------------------------------------------------- list_summation

class ListSum(Task):
    name = "list_summation"
    strategies = ("running", "tree", "tens_ones")
    _pair = r"\(\d{1,4}\+\d{1,4}\)=\d{1,4}"
    openings = (r"\d{1,4}\+\d{1,4}=\d{1,4}", rf"{_pair}(?: {_pair})*(?: \d{{1,4}})?",
                r"\d{1,4}(?:\+\d{1,4}){2,}=\d{1,5}")
    LENGTH = (3, 12)
    VALUES = (0, 99)

    def sample(self, rng):
        return [rng.randint(*self.VALUES) for _ in range(rng.randint(*self.LENGTH))]

    def question(self, p):
        return "[" + ", ".join(map(str, p)) + "]"

    def parse(self, x):
        m = re.fullmatch(r"\[(\d{1,4}(?:, \d{1,4}){1,31})\]", x)
        return m and [int(v) for v in m.group(1).split(", ")]

    def answer(self, p):
        return str(sum(p))

    def steps(self, p, strategy):
        if strategy == 0:
            return [f"{sum(p[:i])}+{p[i]}={sum(p[:i + 1])}" for i in range(1, len(p))]
        if strategy == 1:
            steps, level = [], p
            while len(level) > 1:
                pairs = [level[i:i + 2] for i in range(0, len(level), 2)]   # the last may be a single number
                steps.append(" ".join(f"({pair[0]}+{pair[1]})={sum(pair)}" if len(pair) == 2 else str(pair[0])
                                      for pair in pairs))
                level = [sum(pair) for pair in pairs]
            return steps
        tens, ones = [v // 10 * 10 for v in p], [v % 10 for v in p]
        return ["+".join(map(str, tens)) + f"={sum(tens)}", "+".join(map(str, ones)) + f"={sum(ones)}",
                f"{sum(tens)}+{sum(ones)}={sum(p)}"]


# ---------------------------------------------------------------- grid_pathfinding

class Maze:
    """A rows x cols grid of open cells and walls with a start and a goal; cells are (row, col)."""
    STEPS = {(-1, 0): "U", (1, 0): "D", (0, -1): "L", (0, 1): "R"}

    def __init__(self, rows, cols, walls, start, goal):
        self.rows, self.cols, self.walls, self.start, self.goal = rows, cols, walls, start, goal

    def passable(self, cell):
        return 0 <= cell[0] < self.rows and 0 <= cell[1] < self.cols and cell not in self.walls

    def neighbours(self, cell):
        moved = ((cell[0] + dr, cell[1] + dc) for dr, dc in self.STEPS)
        return [n for n in moved if self.passable(n)]

    def distances(self, root):
        """Breadth-first distances from `root` to every reachable cell."""
        dist, frontier = {root: 0}, [root]
        while frontier:
            nxt = []
            for cell in frontier:
                for n in self.neighbours(cell):
                    if n not in dist:
                        dist[n] = dist[cell] + 1
                        nxt.append(n)
            frontier = nxt
        return dist

    def shortest_path(self):
        """A shortest path start..goal (the only one when it is unique), or None when the goal is unreachable."""
        to_goal = self.distances(self.goal)
        if self.start not in to_goal:
            return None
        path = [self.start]
        while path[-1] != self.goal:
            path.append(next(n for n in self.neighbours(path[-1]) if to_goal.get(n) == to_goal[path[-1]] - 1))
        return path

    def has_unique_shortest_path(self):
        """True when exactly one shortest path joins start and goal: each distance from the start then has
        exactly one cell that lies on a shortest path (two such cells would start two different paths)."""
        from_start, to_goal = self.distances(self.start), self.distances(self.goal)
        if self.goal not in from_start:
            return False
        length = from_start[self.goal]
        on_path = [c for c in from_start if c in to_goal and from_start[c] + to_goal[c] == length]
        return len(on_path) == length + 1


def cell_name(cell):
    return f"{cell[0]}{cell[1]}"


def moves(path):
    return " ".join(Maze.STEPS[(b[0] - a[0], b[1] - a[1])] for a, b in zip(path, path[1:]))


class Pathfinding(Task):
    name = "grid_pathfinding"
    strategies = ("bfs_start", "bfs_goal", "astar")
    openings = (r"S=\d\d", r"G=\d\d", r"\d\d \d{1,2}\+\d{1,2}")
    SIDE = (4, 6)
    WALL_DENSITY = (0.2, 0.4)
    MIN_DISTANCE = 3

    def sample(self, rng):
        while True:
            side = rng.randint(*self.SIDE)
            density = rng.uniform(*self.WALL_DENSITY)
            cells = [(r, c) for r in range(side) for c in range(side)]
            walls = {cell for cell in cells if rng.random() < density}
            free = [cell for cell in cells if cell not in walls]
            if len(free) < 2:
                continue
            maze = Maze(side, side, walls, *rng.sample(free, 2))
            if maze.has_unique_shortest_path() and maze.distances(maze.start)[maze.goal] >= self.MIN_DISTANCE:
                return maze

    def question(self, m):
        def symbol(cell):
            return "S" if cell == m.start else "G" if cell == m.goal else "#" if cell in m.walls else "."
        return " / ".join(" ".join(symbol((r, c)) for c in range(m.cols)) for r in range(m.rows))

    def parse(self, x):
        if not re.fullmatch(r"[.#SG](?: [.#SG]){0,8}(?: / [.#SG](?: [.#SG]){0,8}){0,8}", x):
            return None
        rows = [row.split(" ") for row in x.split(" / ")]
        where = {s: [(r, c) for r, row in enumerate(rows) for c, v in enumerate(row) if v == s] for s in "#SG"}
        if len({len(row) for row in rows}) != 1 or len(where["S"]) != 1 or len(where["G"]) != 1:
            return None
        return Maze(len(rows), len(rows[0]), set(where["#"]), where["S"][0], where["G"][0])

    def answer(self, m):
        return moves(m.shortest_path())

    def correct(self, m, answer):
        """Any path of the shortest length from S to G through open cells (generated mazes have only one)."""
        path = [m.start]
        for move in answer.split():
            step = next((d for d, name in Maze.STEPS.items() if name == move), None)
            if step is None or not m.passable((path[-1][0] + step[0], path[-1][1] + step[1])):
                return False
            path.append((path[-1][0] + step[0], path[-1][1] + step[1]))
        best = m.distances(m.start).get(m.goal)
        return path[-1] == m.goal and len(path) - 1 == best

    def steps(self, m, strategy):
        path = m.shortest_path()
        if strategy == 0:
            return [f"S={cell_name(m.start)}"] + self.layers(m, m.start, m.goal) + [self.names(path[::-1])]
        if strategy == 1:
            return [f"G={cell_name(m.goal)}"] + self.layers(m, m.goal, m.start) + [self.names(path)]
        return self.astar(m)

    @staticmethod
    def names(cells):
        return " ".join(map(cell_name, cells))

    def layers(self, m, root, target):
        """The cells at distance 1, 2, ... from root, up to the layer that holds target, one step per layer."""
        dist = m.distances(root)
        return [self.names(sorted(c for c in dist if dist[c] == k)) for k in range(1, dist[target] + 1)]

    def astar(self, m):
        """A* from S with the Manhattan distance to G: each expanded cell with g+h (ties go to the deeper cell,
        then the smaller cell), then the path back from G along the parents."""
        def h(cell):
            return abs(cell[0] - m.goal[0]) + abs(cell[1] - m.goal[1])
        g, parent, done, steps = {m.start: 0}, {}, set(), []
        heap = [(h(m.start), 0, m.start)]
        while heap:
            _, _, cell = heapq.heappop(heap)
            if cell in done:
                continue
            done.add(cell)
            steps.append(f"{cell_name(cell)} {g[cell]}+{h(cell)}")
            if cell == m.goal:
                break
            for n in m.neighbours(cell):
                if g[cell] + 1 < g.get(n, float("inf")):
                    g[n], parent[n] = g[cell] + 1, cell
                    heapq.heappush(heap, (g[n] + h(n), -g[n], n))
        back = [m.goal]
        while back[-1] != m.start:
            back.append(parent[back[-1]])
        return steps + [self.names(back)]


# ---------------------------------------------------------------- linear_equation_solving

def expression(terms):
    """Terms (coefficient, "x" or "") written compactly: [(3, "x"), (-1, "x"), (5, "")] -> "3x-x+5"; zero
    terms are left out ("0" when nothing is left)."""
    out = ""
    for k, var in terms:
        if k:
            body = ("" if var and abs(k) == 1 else str(abs(k))) + var
            out += ("-" if k < 0 else "+" if out else "") + body
    return out or "0"


class LinearEquation(Task):
    name = "linear_equation_solving"
    strategies = ("x_left", "consts", "x_right")
    _x, _c = r"-?\d{0,3}x", r"-?\d{1,4}"
    openings = (rf"{_x}[+-]\d{{0,3}}x[+-]\d{{1,4}}={_c}", rf"{_x}={_x}[+-]\d{{1,4}}[+-]\d{{1,4}}",
                rf"{_c}={_x}[+-]\d{{0,3}}x[+-]\d{{1,4}}")
    COEFFICIENTS = [k for k in range(-9, 10) if k]
    CONSTANTS = [k for k in range(-20, 21) if k]
    SOLUTIONS = (-12, 12)

    def sample(self, rng):
        """a x + b = c x + d with a != c and no zero coefficient or constant, so every strategy has terms to move."""
        while True:
            a, c = rng.sample(self.COEFFICIENTS, 2)
            solution, b = rng.randint(*self.SOLUTIONS), rng.choice(self.CONSTANTS)
            d = (a - c) * solution + b
            if d:
                return a, b, c, d

    def question(self, p):
        def side(k, const):
            coefficient = {1: "", -1: "-"}.get(k, f"{k} ")
            return f"{coefficient}x {'+' if const > 0 else '-'} {abs(const)}"
        return f"{side(p[0], p[1])} = {side(p[2], p[3])}"

    def parse(self, x):
        side = r"(-?(?:\d{1,3} )?)x ([+-]) (\d{1,4})"
        m = re.fullmatch(f"{side} = {side}", x)
        if not m:
            return None
        k1, s1, c1, k2, s2, c2 = m.groups()
        a, c = ({"": 1, "-": -1}.get(k.strip(), None) or int(k) for k in (k1, k2))
        b, d = (int(v) * (-1 if s == "-" else 1) for s, v in ((s1, c1), (s2, c2)))
        return (a, b, c, d) if a != c and (d - b) % (a - c) == 0 else None

    def answer(self, p):
        a, b, c, d = p
        return str((d - b) // (a - c))

    def steps(self, p, strategy):
        a, b, c, d = p
        x = self.answer(p)
        if strategy == 0:
            return [expression([(a, "x"), (-c, "x"), (b, "")]) + f"={d}", expression([(a - c, "x"), (b, "")]) + f"={d}",
                    expression([(a - c, "x")]) + "=" + expression([(d, ""), (-b, "")]),
                    expression([(a - c, "x")]) + f"={d - b}", f"x={d - b}/{a - c}", f"x={x}"]
        if strategy == 1:
            return [expression([(a, "x")]) + "=" + expression([(c, "x"), (d, ""), (-b, "")]),
                    expression([(a, "x")]) + "=" + expression([(c, "x"), (d - b, "")]),
                    expression([(a, "x"), (-c, "x")]) + f"={d - b}",
                    expression([(a - c, "x")]) + f"={d - b}", f"x={d - b}/{a - c}", f"x={x}"]
        return [f"{b}=" + expression([(c, "x"), (-a, "x"), (d, "")]), f"{b}=" + expression([(c - a, "x"), (d, "")]),
                expression([(b, ""), (-d, "")]) + "=" + expression([(c - a, "x")]),
                f"{b - d}=" + expression([(c - a, "x")]), f"x={b - d}/{c - a}", f"x={x}"]


# ---------------------------------------------------------------- base_conversion

class BaseConversion(Task):
    name = "base_conversion"
    strategies = ("division", "powers", "binary")
    openings = (r"\d{1,5}/(?:4|8|16)=\d{1,5} r\d{1,2}", r"1(?: \d{1,6}){1,16}", r"\d{1,5}/2=\d{1,5} r[01]")
    NUMBER_DIGITS = (2, 4)
    BASES = (4, 8, 16)

    def sample(self, rng):
        k = rng.randint(*self.NUMBER_DIGITS)
        return rng.randint(10 ** (k - 1), 10 ** k - 1), rng.choice(self.BASES)

    def question(self, p):
        return f"n={spaced(p[0])} b10 -> b{p[1]}"

    def parse(self, x):
        m = re.fullmatch(r"n=(\d(?: \d){0,5}) b10 -> b(4|8|16)", x)
        return m and (int(m.group(1).replace(" ", "")), int(m.group(2)))

    def answer(self, p):
        n, base = p
        digits = []
        while n:
            n, r = divmod(n, base)
            digits.append(DIGITS[r])
        return " ".join(reversed(digits))

    def steps(self, p, strategy):
        n, base = p
        if strategy == 0:
            return self.halvings(n, base)
        if strategy == 1:
            powers = [1]
            while powers[-1] <= n:
                powers.append(powers[-1] * base)
            steps = [" ".join(map(str, powers))]
            for power in reversed(powers[:-1]):
                q = n // power
                steps.append(f"{n}-{q}*{power}={n - q * power}")
                n -= q * power
            return steps
        bits = bin(n)[2:]
        width = base.bit_length() - 1
        first = len(bits) % width or width   # the leftmost group may be shorter
        groups = [bits[:first]] + [bits[i:i + width] for i in range(first, len(bits), width)]
        return self.halvings(n, 2) + [bits, " ".join(f"{g}={DIGITS[int(g, 2)]}" for g in groups)]

    @staticmethod
    def halvings(n, base):
        """Repeated division: "185/8=23 r1" until the quotient is 0 (the remainders are the digits, last first)."""
        steps = []
        while n:
            steps.append(f"{n}/{base}={n // base} r{n % base}")
            n //= base
        return steps


# ---------------------------------------------------------------- sorting_algorithms

class Sorting(Task):
    name = "sorting_algorithms"
    strategies = ("bubble", "insertion", "selection", "merge")
    # first steps: bubble leaves one number after '/', insertion two before it, selection one before it (and,
    # with at least 4 numbers, these shapes never coincide); merge sort writes runs in brackets
    openings = (r"\d{1,4}(?: \d{1,4}){2,} / \d{1,4}", r"\d{1,4} \d{1,4} / \d{1,4}(?: \d{1,4})+",
                r"\d{1,4} / \d{1,4}(?: \d{1,4}){2,}", r"\[\d{1,4}(?: \d{1,4})?\](?: \[\d{1,4}(?: \d{1,4})?\])+")
    LENGTH = (4, 9)      # bubble sort's trace grows as the square of the length: 9 keeps it within MAX_CHARS
    VALUES = (0, 99)

    sample, question, parse = ListSum.sample, ListSum.question, ListSum.parse   # a list of numbers, as there

    def answer(self, p):
        return " ".join(map(str, sorted(p)))

    def steps(self, p, strategy):
        return (self.bubble, self.insertion, self.selection, self.merge)[strategy](list(p))

    @staticmethod
    def split(values, at):
        """The list with '/' between its first `at` numbers and the rest (no '/' when the rest is empty)."""
        return " ".join(map(str, values[:at])) + (" / " + " ".join(map(str, values[at:])) if at < len(values) else "")

    def bubble(self, v):
        steps = []
        for done in range(1, len(v)):
            for i in range(len(v) - done):
                if v[i] > v[i + 1]:
                    v[i], v[i + 1] = v[i + 1], v[i]
            steps.append(self.split(v, len(v) - done))
        return steps

    def insertion(self, v):
        steps = []
        for i in range(1, len(v)):
            j = i
            while j and v[j - 1] > v[j]:
                v[j - 1], v[j] = v[j], v[j - 1]
                j -= 1
            steps.append(self.split(v, i + 1))
        return steps

    def selection(self, v):
        steps = []
        for i in range(len(v) - 1):
            m = min(range(i, len(v)), key=lambda k: v[k])
            v[i], v[m] = v[m], v[i]
            steps.append(self.split(v, i + 1))
        return steps

    @staticmethod
    def merge(v):
        steps, runs = [], [[x] for x in v]
        while len(runs) > 1:   # merging two sorted runs gives what sorting their concatenation gives
            runs = [sorted(runs[i] + (runs[i + 1] if i + 1 < len(runs) else [])) for i in range(0, len(runs), 2)]
            steps.append(" ".join("[" + " ".join(map(str, run)) + "]" for run in runs))
        return steps


# ---------------------------------------------------------------- the interface

TASK_LIST = (Addition(), ListSum(), Pathfinding(), LinearEquation(), BaseConversion(), Sorting())
TASKS = tuple(t.name for t in TASK_LIST)
STRATEGIES = {t.name: t.strategies for t in TASK_LIST}
_BY_NAME = {t.name: t for t in TASK_LIST}
_OPENINGS = {t.name: [re.compile(r) for r in t.openings] for t in TASK_LIST}


def task_of(name):
    if name not in _BY_NAME:
        raise ValueError(f"unknown task {name!r} (valid: {', '.join(TASKS)})")
    return _BY_NAME[name]


def split_of(task, x):
    """The split that problem x belongs to, by a hash of its text: 8 in 10 train, 1 val, 1 test."""
    bucket = hashlib.sha256(f"{task}:{x}".encode()).digest()[0] % 10
    return "train" if bucket < 8 else SPLITS[bucket - 7]


def trace(task, problem, strategy):
    t = task_of(task)
    return SEP.join(t.steps(problem, strategy) + [ANSWER + t.answer(problem)])


def render(x, y):
    return TEMPLATE.format(x=x, y=y)


def char_tokens(text):
    """Tokens of `text` for a character-level tokenizer with each template marker a single token."""
    return len(text) - sum(text.count(m) * (len(m) - 1) for m in MARKERS)


def draw_problem(task, rng, split=None):
    """A problem of `task` (of `split` when given) whose traces all fit MAX_CHARS, and its x."""
    t = task_of(task)
    for _ in range(MAX_DRAWS):
        problem = t.sample(rng)
        x = t.question(problem)
        if split is not None and split_of(task, x) != split:
            continue
        if all(len(render(x, trace(task, problem, s))) <= MAX_CHARS for s in range(len(t.strategies))):
            return problem, x
    raise GenerationError(f"{task}: no problem within {MAX_CHARS} characters in {MAX_DRAWS} draws")


def generate(task, strategy, rng, split=None):
    """One example of `task` solved by `strategy` (an id), drawn from rng (from `split` when given):
    {"task", "strategy", "x", "y", "text"}."""
    if type(strategy) is not int or strategy not in range(len(task_of(task).strategies)):
        raise ValueError(f"{task} has no strategy {strategy!r} (ids 0..{len(task_of(task).strategies) - 1})")
    problem, x = draw_problem(task, rng, split)
    y = trace(task, problem, strategy)
    return {"task": task, "strategy": strategy, "x": x, "y": y, "text": render(x, y)}


def example(task, split, index, seed):
    """Example `index` of `split`: a strategy drawn uniformly, then a problem of that split."""
    rng = random.Random(f"{seed}:{task}:{split}:{index}")
    return generate(task, rng.randrange(len(task_of(task).strategies)), rng, split)


def detect(task, y):
    """The strategy id whose opening step y starts with, or None (y may be any string, e.g. a model output)."""
    if not isinstance(y, str):
        return None
    first = y.split(SEP.strip(), 1)[0].strip()   # a trace cut within the separator still has its first step
    found = [s for s, pattern in enumerate(_OPENINGS[task_of(task).name]) if pattern.fullmatch(first)]
    return found[0] if len(found) == 1 else None


def check(task, x, y):
    """Whether the answer after the last "ans:" of y solves x (False for anything malformed)."""
    t = task_of(task)
    if not isinstance(x, str) or not isinstance(y, str) or ANSWER.strip() not in y:
        return False
    problem = t.parse(x)
    return problem is not None and t.correct(problem, y.rsplit(ANSWER.strip(), 1)[1])


# ---------------------------------------------------------------- scoring generated traces

def record_error(record):
    """Why `record` is not a generated trace {"task", "x", "y", "strategy" (optional)}, or None when it is."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for key in ("task", "x", "y"):
        if key not in record:
            return f"missing field {key!r}"
        if not isinstance(record[key], str):
            return f"field {key!r} is {type(record[key]).__name__}, expected a string"
    if record["task"] not in TASKS:
        return f"unknown task {record['task']!r} (valid: {', '.join(TASKS)})"
    strategy, ids = record.get("strategy"), range(len(STRATEGIES[record["task"]]))
    if "strategy" in record and (type(strategy) is not int or strategy not in ids):
        return f"field 'strategy' is {strategy!r}, expected an integer id 0..{ids[-1]} of {record['task']}"
    return None


def rate(count, n):
    return count / n if n else 0.0


def score_group(task, records):
    """The score of `records` (all of `task`, or of every task when task is "all")."""
    n, found = len(records), [detect(r["task"], r["y"]) for r in records]
    drawn = [(r["strategy"], s) for r, s in zip(records, found) if "strategy" in r]
    out = {"task": task, "n": n, "answer_acc": rate(sum(check(r["task"], r["x"], r["y"]) for r in records), n),
           "detected": rate(sum(s is not None for s in found), n)}
    if task != "all":
        out["mix"] = {name: rate(found.count(s), n) for s, name in enumerate(STRATEGIES[task])}
    out["undetected"] = rate(found.count(None), n)
    if drawn:
        out["match"] = rate(sum(want == got for want, got in drawn), len(drawn))
    return out


def score(records):
    """Scores of generated traces: one dict per task present (TASKS order), then task "all" (see the module
    docstring for the keys). Raises ValueError naming the first malformed record."""
    records = list(records)
    for i, record in enumerate(records):
        why = record_error(record)
        if why is not None:
            raise ValueError(f"record {i}: {why}")
    present = [t for t in TASKS if any(r["task"] == t for r in records)]
    return [score_group(t, [r for r in records if r["task"] == t]) for t in present] + [score_group("all", records)]


def score_line(result):
    """A score dict as one line of key=value pairs, rates to 3 decimals."""
    parts = [f"task={result['task']}", f"n={result['n']}"]
    for key, value in result.items():
        if key == "mix":
            parts.append("mix=" + ",".join(f"{name}:{v:.3f}" for name, v in value.items()))
        elif key not in ("task", "n"):
            parts.append(f"{key}={value:.3f}")
    return "score " + " ".join(parts)


class ScoreError(Exception):
    pass


def read_records(path):
    """The records of a JSON-lines file of generated traces; ScoreError "FILE:LINE: why" at the first bad line."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        raise ScoreError(f"{path}: cannot read: {e.strerror}")
    if lines[-1] == b"":
        lines.pop()   # the newline that ends the last line
    records = []
    for number, raw in enumerate(lines, 1):
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ScoreError(f"{path}:{number}: not UTF-8")
        except ValueError as e:
            raise ScoreError(f"{path}:{number}: not JSON: {e}")
        why = record_error(record)
        if why is not None:
            raise ScoreError(f"{path}:{number}: {why}")
        records.append(record)
    return records


def print_scores(path, as_json):
    for result in score(read_records(path)):
        print(json.dumps(result) if as_json else score_line(result))


# ---------------------------------------------------------------- report

def first_difference(a, b):
    """The first position at which strings a and b differ."""
    return next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))


def measure(task, n, seed):
    """Statistics of the first n training examples of `task`: detector accuracy (hits), examples whose trace
    equals another strategy's for the same x (coinciding), the largest position at which two strategies' traces
    for the same x first differ (decided_by), and text lengths in characters and character-level tokens."""
    t = task_of(task)
    stats = {"n": n, "hits": 0, "coinciding": 0, "decided_by": 0, "max_chars": 0, "sum_chars": 0, "max_tokens": 0}
    for index in range(n):
        ex = example(task, "train", index, seed)
        problem = t.parse(ex["x"])
        ys = [trace(task, problem, s) for s in range(len(t.strategies))]
        stats["hits"] += detect(task, ex["y"]) == ex["strategy"]
        stats["coinciding"] += ys.count(ex["y"]) > 1
        stats["decided_by"] = max([stats["decided_by"]] + [first_difference(a, b) for i, a in enumerate(ys)
                                                          for b in ys[i + 1:]])
        stats["max_chars"] = max(stats["max_chars"], len(ex["text"]))
        stats["sum_chars"] += len(ex["text"])
        stats["max_tokens"] = max(stats["max_tokens"], char_tokens(ex["text"]))
    return stats


def print_report(tasks, n, seed):
    print(f"{n} training examples per task, seed {seed}; cap {MAX_CHARS} characters per example")
    for task in tasks:
        s = measure(task, n, seed)
        print(f"{task}: strategies {', '.join(f'{i} {name}' for i, name in enumerate(STRATEGIES[task]))}\n"
              f"  detector accuracy {s['hits']}/{n} = {s['hits'] / n:.4f}; coinciding traces {s['coinciding']}/{n}"
              f" = {s['coinciding'] / n:.4f}\n"
              f"  the strategies' traces for one x first differ at character <= {s['decided_by']} (0-based)\n"
              f"  length: max {s['max_chars']} characters ({s['max_tokens']} character-level tokens),"
              f" mean {s['sum_chars'] / n:.1f} characters")


# ---------------------------------------------------------------- command line

class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line on stderr and exit status 2 (argparse also prints the usage)."""
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def count(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive(text):
    value = count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def task_names(text):
    names = TASKS if text == "all" else [n.strip() for n in text.split(",")]
    for name in names:
        if name not in TASKS:
            raise argparse.ArgumentTypeError(f"unknown task {name!r} (valid: all, {', '.join(TASKS)})")
    return list(dict.fromkeys(names))


def parse_args(argv):
    parser = Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    parser.add_argument("out_dir", metavar="OUT_DIR", nargs="?", help="folder for train.jsonl, val.jsonl, test.jsonl")
    parser.add_argument("--tasks", metavar="LIST", type=task_names,
                        help="'all' (default) or a comma-separated list of tasks")
    parser.add_argument("--n-train", metavar="N", type=count, default=10000,
                        help="training examples per task (default 10000)")
    parser.add_argument("--n-val", metavar="N", type=count, default=1000,
                        help="validation examples per task (default 1000)")
    parser.add_argument("--n-test", metavar="N", type=count, default=1000, help="test examples per task (default 1000)")
    parser.add_argument("--seed", metavar="S", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", action="store_true",
                        help=f"print {SHOW_PROBLEMS} problems per task solved by every strategy, as JSON lines"
                             " (with --score: print the scores as JSON objects)")
    parser.add_argument("--score", metavar="FILE",
                        help="score generated traces (JSON lines {task, x, y, strategy}): accuracy, strategy mix")
    parser.add_argument("--detect", metavar="FILE",
                        help="per generated trace (JSON lines {task, x, y}): one line 'detect S C', S the detected "
                             "strategy id (-1: none), C 1 when the answer is right")
    parser.add_argument("--report", action="store_true", help="print strategies, detector accuracy, lengths per task")
    parser.add_argument("--report-examples", metavar="N", type=positive, default=2000,
                        help="training examples per task that --report measures (default 2000)")
    args = parser.parse_args(argv)
    if args.score is not None and (args.out_dir is not None or args.report or args.tasks is not None or args.detect):
        parser.error("--score takes only --json: score the file alone")
    if args.detect is not None and (args.out_dir is not None or args.report or args.tasks is not None or args.json):
        parser.error("--detect takes no other option: detect the file alone")
    if args.out_dir is None and not (args.json or args.report or args.score is not None or args.detect is not None):
        parser.error("nothing to do: give OUT_DIR, --json, --report, --score FILE or --detect FILE")
    args.tasks = args.tasks or list(TASKS)
    return args


def write_splits(args):
    os.makedirs(args.out_dir, exist_ok=True)
    for split, n in zip(SPLITS, (args.n_train, args.n_val, args.n_test)):
        path = os.path.join(args.out_dir, f"{split}.jsonl")
        try:
            with open(path + ".tmp", "w") as f:
                for task in args.tasks:
                    for index in range(n):
                        f.write(json.dumps(example(task, split, index, args.seed)) + "\n")
            os.replace(path + ".tmp", path)
        finally:
            if os.path.exists(path + ".tmp"):
                os.remove(path + ".tmp")
        print(f"{PROG}: wrote {n * len(args.tasks)} examples ({n} per task) to {path}")


def show(args):
    for task in args.tasks:
        for k in range(SHOW_PROBLEMS):
            problem, x = draw_problem(task, random.Random(f"{args.seed}:{task}:show:{k}"))
            for s in range(len(STRATEGIES[task])):
                y = trace(task, problem, s)
                print(json.dumps({"task": task, "strategy": s, "x": x, "y": y, "text": render(x, y)}))


def print_detections(path):
    for r in read_records(path):
        s = detect(r["task"], r["y"])
        print(f"detect {-1 if s is None else s} {int(check(r['task'], r['x'], r['y']))}")


def main(argv=None):
    args = parse_args(argv)
    if args.score is not None or args.detect is not None:
        try:
            if args.score is not None:
                print_scores(args.score, args.json)
            else:
                print_detections(args.detect)
        except ScoreError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        if args.json:
            show(args)
        if args.report:
            print_report(args.tasks, args.report_examples, args.seed)
        if args.out_dir is not None:
            write_splits(args)
    except GenerationError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{PROG}: error: {e.filename or args.out_dir}: cannot write: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
