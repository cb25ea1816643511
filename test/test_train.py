#!/usr/bin/env python3
"""End-to-end tests of ./train_etrm_cpu on the synthetic data (standard library only).

    python3 test/test_train.py        (from the repository root, after `make train_etrm_cpu`)

Checks: determinism (same seed, same bytes), resume (N steps + resume + N steps == 2N steps, every byte of
the model, optimizer, EMA, carry and data position), micro-batches (same losses as one batch), the debug
state (names and shapes; against the PyTorch oracle when torch is installed), safetensors export/import
and decoder transfer, evaluation-only runs and their predictions, and clear errors for bad input (keys,
values, data files, checkpoints). Prints PASS/FAIL/SKIP lines and "N passed, M failed"; exit 1 on failure.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib

from harness import expect as check, finish, merge_args, run_groups

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "train_etrm_cpu")
SYNTH = os.path.join(ROOT, "data", "synth")

# A configuration small enough that a step takes milliseconds.
TINY = ["hidden_size=16", "num_heads=2", "L_layers=2", "H_cycles=2", "L_cycles=2", "puzzle_emb_len=2",
        "encoder_num_layers=1", "global_batch_size=8", "num_aug=3", "halt_max_steps=3", "max_demos=4",
        "lr=1e-3", "lr_warmup_steps=2", "log_every=1", "eval_num_aug=2", "max_eval_groups=4", "max_train_groups=40"]


def run(args, cwd=None):
    p = subprocess.run([BIN] + merge_args(args), capture_output=True, text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def train(out, *extra, data=True):
    args = list(TINY) + [f"checkpoint_path={out}"] + list(extra)
    if data:
        args = [f"data_paths={SYNTH}/train.bin"] + args
    rc, so, se = run(args)
    if rc != 0:
        raise RuntimeError(f"train_etrm_cpu {' '.join(extra)} failed ({rc}): {se.strip()[-400:]}")
    return so


def train_lines(stdout):
    """The train lines without the timing fields (ms, data_ms, samples_per_s, mfu)."""
    return [re.sub(r" ms=\S+( data_ms=\S+)? samples_per_s=\S+( mfu=\S+)?", "", l) for l in stdout.splitlines()
            if l.startswith("train ")]


def read_checkpoint(path):
    """An arc.cu checkpoint (common/checkpoint.h, version 3): (step, config text, {name: bytes}), CRCs checked."""
    with open(path, "rb") as f:
        data = f.read()
    header = struct.unpack("<256i", data[:1024])
    assert header[1] == 3, f"{path}: checkpoint version {header[1]}, expected 3"
    pos = 1024 + header[4]
    config = data[1024:pos].decode()
    sections = {}
    for _ in range(header[3]):
        name = data[pos:pos + 48].split(b"\0")[0].decode()
        n, crc, _zero = struct.unpack("<qII", data[pos + 48:pos + 64])
        sections[name] = data[pos + 64:pos + 64 + n]
        assert zlib.crc32(sections[name]) == crc, f"{path}: section {name} fails its CRC-32"
        pos += 64 + n
    return header[2], config, sections


def read_sections(path):
    return read_checkpoint(path)[2]


def write_checkpoint(path, step, config, sections):
    """The inverse of read_checkpoint (valid CRCs), for tests that hand the trainers a modified checkpoint."""
    header = [0] * 256
    header[:6] = [20261122, 3, step, len(sections), len(config.encode()), zlib.crc32(config.encode())]
    out = [struct.pack("<256I", *[h & 0xFFFFFFFF for h in header]), config.encode()]
    for name, data in sections.items():
        out += [name.encode().ljust(48, b"\0"), struct.pack("<qII", len(data), zlib.crc32(data), 0), data]
    with open(path, "wb") as f:
        f.write(b"".join(out))


def read_safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def expect_error(name, args, pattern):
    """A bad input must exit 1 with a single error line matching pattern (no crash, no traceback)."""
    rc, so, se = run(args)
    lines = [l for l in se.strip().splitlines() if l]
    ok = rc == 1 and len(lines) == 1 and re.search(pattern, lines[0]) is not None
    check(ok, f"error: {name}", f"exit {rc}, stderr {se.strip()[-300:]!r}")


def test_determinism(tmp):
    for enc in ("hybrid_variational", "none"):
        a = train(f"{tmp}/det_a_{enc}", f"encoder_type={enc}", "max_steps=4")
        b = train(f"{tmp}/det_b_{enc}", f"encoder_type={enc}", "max_steps=4")
        sa = read_sections(f"{tmp}/det_a_{enc}/ckpt_00000004.bin")
        sb = read_sections(f"{tmp}/det_b_{enc}/ckpt_00000004.bin")
        check(train_lines(a) == train_lines(b) and len(train_lines(a)) == 4 and sa == sb,
              f"determinism: same seed gives identical losses and checkpoints ({enc})")
        c = train(f"{tmp}/det_c_{enc}", f"encoder_type={enc}", "max_steps=4", "seed=1")
        check(train_lines(a) != train_lines(c), f"determinism: another seed gives other losses ({enc})")


def test_resume(tmp):
    for enc in ("standard", "lpn_variational", "none", "lpn_standard"):
        full, part = f"{tmp}/res_full_{enc}", f"{tmp}/res_part_{enc}"
        common = [f"encoder_type={enc}", "checkpoint_every=3", "max_steps=6", f"data_paths_test={SYNTH}/eval.bin",
                  "eval_interval=0"] + (["latent_inner_steps=1"] if enc == "lpn_standard" else [])
        train(full, *common)
        # the interrupted run: stop after its step-3 checkpoint by resuming from a copy of it
        os.makedirs(part)
        shutil.copy(f"{full}/ckpt_00000003.bin", part)
        so = train(part, *common, "resume=1")
        a, b = read_sections(f"{full}/ckpt_00000006.bin"), read_sections(f"{part}/ckpt_00000006.bin")
        same = [k for k in a if a[k] == b.get(k)]
        check(a.keys() == b.keys() and len(same) == len(a) and "resumed from" in so,
              f"resume: 3 steps + resume + 3 steps == 6 steps, bitwise ({enc})",
              f"sections that differ: {sorted(set(a) - set(same))}")
        full_lines = [l for l in train_lines(open(f"{full}/log.txt").read()) if int(l.split()[1][5:]) > 3]
        check(full_lines == train_lines(so), f"resume: the resumed steps log the same losses ({enc})")


def test_micro_batches(tmp):
    a = train(f"{tmp}/mb_a", "encoder_type=hybrid_standard", "max_steps=3")
    b = train(f"{tmp}/mb_b", "encoder_type=hybrid_standard", "max_steps=3", "micro_batch_size=2")
    va = [float(re.search(r" loss=(\S+)", l).group(1)) for l in train_lines(a)]
    vb = [float(re.search(r" loss=(\S+)", l).group(1)) for l in train_lines(b)]
    close = len(va) == 3 and all(abs(x - y) <= 2e-4 * abs(x) for x, y in zip(va, vb))
    check(close, "micro_batch_size=2 gives the losses of one batch of 8", f"{va} vs {vb}")
    inner = ["encoder_type=lpn_variational", "max_steps=3", "latent_inner_steps=1", "latent_inner_lr=0.5"]
    a = train(f"{tmp}/mb_inner_a", *inner)
    b = train(f"{tmp}/mb_inner_b", *inner, "micro_batch_size=2")
    c = train(f"{tmp}/mb_inner_c", "encoder_type=lpn_variational", "max_steps=3")
    va, vb, vc = ([float(re.search(r" loss=(\S+)", l).group(1)) for l in train_lines(x)] for x in (a, b, c))
    close = len(va) == 3 and all(abs(x - y) <= 2e-4 * abs(x) for x, y in zip(va, vb))
    check(close and va[1:] != vc[1:], "latent_inner_steps=1: micro_batch_size=2 gives the losses of one batch of 8, "
          "and other losses than without the steps", f"{va} vs {vb} (without: {vc})")


def test_debug_state(tmp):
    torch_python = None
    oracle = os.path.join(os.path.dirname(ROOT), "shared", "bench", "torch_trm.py")
    for py in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(py) and subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0:
            torch_python = py
            break
    for enc in ("none", "standard", "hybrid_standard", "hybrid_variational", "lpn_standard", "lpn_variational"):
        path = f"{tmp}/debug_{enc}.safetensors"
        train(f"{tmp}/debug_run_{enc}", f"encoder_type={enc}", "max_steps=1", f"debug_state={path}", "kl_weight=0.1")
        h = read_safetensors_header(path)
        names = set(h) - {"__metadata__"}
        needed = {"batch.inputs", "batch.labels", "batch.puzzle_identifiers", "out.logits", "out.q_halt_logits",
                  "out.q_continue_logits", "out.loss", "out.lm_loss", "out.q_halt_loss", "out.kl",
                  "inner.H_init", "inner.L_init", "inner.L_level.layers.0.self_attn.qkv_proj.weight",
                  "grad.inner.L_level.layers.0.self_attn.qkv_proj.weight", "grad.inner.lm_head.weight"}
        if enc == "none":
            needed |= {"inner.puzzle_emb.weights", "grad.inner.puzzle_emb.local_weights"}
        else:
            needed |= {"batch.demo_inputs", "batch.demo_labels", "batch.demo_mask"}
        if enc.endswith("variational"):
            needed.add("batch.eps")
        params = {n for n in names if not n.startswith(("grad.", "batch.", "out."))}
        grads = {n[5:] for n in names if n.startswith("grad.")}
        ok = needed <= names and h["out.logits"]["shape"] == [8, 64, 12] and "config" in h["__metadata__"]
        ok = ok and params - {"inner.H_init", "inner.L_init", "inner.puzzle_emb.weights"} <= grads
        check(ok, f"debug_state: names, shapes and config ({enc})", f"missing {sorted(needed - names)}")
        if torch_python is None or not os.path.exists(oracle):
            why = "torch is not installed (apt-get install python3-torch)" if torch_python is None else f"no {oracle}"
            print(f"SKIP debug_state == PyTorch oracle ({enc}): {why}")
            continue
        p = subprocess.run([torch_python, os.path.join(ROOT, "dev", "check_debug_state.py"), path],
                           capture_output=True, text=True)
        check(p.returncode == 0, f"debug_state == PyTorch oracle, outputs and every gradient ({enc})",
              (p.stdout + p.stderr).strip()[-600:])


def test_export_import(tmp):
    run_dir = f"{tmp}/exp"
    so = train(run_dir, "encoder_type=none", "max_steps=3", f"data_paths_test={SYNTH}/train.bin", "eval_interval=0")
    ev = [l for l in so.splitlines() if l.startswith("eval ")]
    st = f"{run_dir}/model_00000003.safetensors"
    check(os.path.exists(st) and os.path.exists(f"{run_dir}/predictions_step00000003_train.json"),
          "a checkpoint exports safetensors and evaluation writes predictions")
    h = read_safetensors_header(st)
    check(h["__metadata__"].get("weights") == "ema" and "inner.puzzle_emb.weights" in h
          and "inner.L_level.layers.1.mlp.down_proj.weight" in h, "safetensors export has the upstream names (EMA weights)")
    so2 = train(f"{tmp}/exp_eval", "encoder_type=none", f"load_checkpoint={st}", "eval_only=1",
                f"data_paths_test={SYNTH}/train.bin")
    ev2 = [l for l in so2.splitlines() if l.startswith("eval ")]
    strip = lambda ls: [re.sub(r" seconds=\S+| step=\d+", "", l) for l in ls]
    check(len(ev) == 1 and strip(ev) == strip(ev2), "eval_only from the exported safetensors reproduces the evaluation",
          f"{ev} vs {ev2}")
    # TRM -> ETRM decoder transfer: the ETRM's inner.* weights are the TRM's
    dbg = f"{tmp}/transfer.safetensors"
    train(f"{tmp}/exp_transfer", "encoder_type=standard", f"load_decoder={st}", "max_steps=1", f"debug_state={dbg}")
    trm, etrm = read_safetensors_header(st), read_safetensors_header(dbg)

    def tensor(path, header, name):
        b, e = header[name]["data_offsets"]
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + n + b)
            return f.read(e - b)
    inner = [n for n in trm if n.startswith("inner.") and "puzzle_emb" not in n]
    check(all(tensor(st, trm, n) == tensor(dbg, etrm, n) for n in inner) and len(inner) > 8,
          "load_decoder copies every inner.* tensor of a TRM model into an ETRM model")


def test_errors(tmp):
    base = [f"data_paths={SYNTH}/train.bin", f"checkpoint_path={tmp}/err"]
    expect_error("unknown key suggests the closest", base + ["hiden_size=8"], r"unknown key 'hiden_size'.*hidden_size")
    expect_error("non-integer value", base + ["hidden_size=8x"], r"hidden_size=8x: expected an integer")
    expect_error("value outside the choices", base + ["encoder_type=lpn"], r"encoder_type=lpn: expected one of")
    expect_error("not key=value", base + ["hidden_size"], r"not of the form key=value")
    expect_error("heads do not divide the width", base + ["hidden_size=10", "num_heads=4"], r"hidden_size=10 is not divisible")
    expect_error("micro-batch does not divide the batch", base + ["global_batch_size=8", "micro_batch_size=3"], r"micro_batch_size=3 must divide")
    expect_error("no training data", [f"checkpoint_path={tmp}/err"], r"data_paths is empty")
    expect_error("missing data file", [f"data_paths={tmp}/nope.bin", f"checkpoint_path={tmp}/err"], r"nope\.bin")
    with open(f"{SYNTH}/train.bin", "rb") as f:
        data = f.read()
    with open(f"{tmp}/truncated.bin", "wb") as f:
        f.write(data[:-100])
    expect_error("truncated data file", [f"data_paths={tmp}/truncated.bin", f"checkpoint_path={tmp}/err"],
                 r"truncated\.bin.*(truncat|bytes)")
    with open(f"{tmp}/version.bin", "wb") as f:
        f.write(data[:4] + struct.pack("<i", 99) + data[8:])
    expect_error("wrong data version", [f"data_paths={tmp}/version.bin", f"checkpoint_path={tmp}/err"], r"version\.bin.*version")
    expect_error("eval_only without weights", base + ["eval_only=1", f"data_paths_test={SYNTH}/eval.bin"], r"eval_only=1 needs weights")
    expect_error("canvas smaller than the grids", base + ["canvas=4"], r"canvas=4 is smaller than the largest grid")
    # checkpoints: another configuration, a truncated file
    train(f"{tmp}/err_ckpt", "max_steps=1")
    expect_error("resume with another model size", [f"data_paths={SYNTH}/train.bin", f"checkpoint_path={tmp}/err_ckpt",
                 "resume=1"] + TINY[1:] + ["hidden_size=32"], r"ckpt_00000001\.bin.*(configuration|hidden_size)")
    with open(f"{tmp}/err_ckpt/ckpt_00000001.bin", "rb") as f:
        ck = f.read()
    with open(f"{tmp}/err_ckpt/ckpt_00000001.bin", "wb") as f:
        f.write(ck[:len(ck) // 2])
    expect_error("truncated checkpoint", [f"data_paths={SYNTH}/train.bin", f"checkpoint_path={tmp}/err_ckpt", "resume=1"] + TINY,
                 r"ckpt_00000001\.bin.*(truncated|past the end|ended early)")
    rc, so, se = run(["--help"])
    check(rc == 0 and "hidden_size" in so and "default: 512" in so and "encoder_prefix_scale" in so,
          "--help lists every key with its default")


def ensure_synthetic_data():
    if not os.path.exists(f"{SYNTH}/train.bin"):
        subprocess.run([sys.executable, os.path.join(ROOT, "data", "synth.py"), SYNTH], check=True, capture_output=True)


def main():
    if not os.path.exists(BIN):
        sys.exit(f"test/test_train.py: {BIN} is missing: run make train_etrm_cpu first")
    ensure_synthetic_data()
    run_groups([(t.__name__, t) for t in (test_determinism, test_resume, test_micro_batches, test_debug_state,
                                          test_export_import, test_errors)], "arc_test_train_")
    finish()


if __name__ == "__main__":
    main()
