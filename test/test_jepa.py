#!/usr/bin/env python3
"""End-to-end tests of ./train_jepa_cpu on the synthetic data (standard library only).

    python3 test/test_jepa.py        (from the repository root, after `make train_jepa_cpu`)

Checks: determinism (same seed, same bytes; another seed, other losses), resume (an epoch + resume + an epoch ==
two epochs, every byte of weights, optimizer, target branch, codebooks, queue and state), every context
aggregation, objective and VQ mode runs with finite losses, the safetensors export and the code export, the
non-finite-loss skip, early stopping, context_mode=frames on the synthetic sequences, real ARC-AGI-1 task files
(data/arc.py) with every augmentation, and clear errors for bad input. `mpirun -np 2` equivalence is in test/test_mpi.py. Prints PASS/FAIL/SKIP lines; exit 1 on failure.
"""
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys

from harness import expect as check, finish, merge_args, run_groups
from test_train import read_checkpoint, read_sections, train_lines, write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "train_jepa_cpu")
SYNTH = os.path.join(ROOT, "data", "synth")

# Small enough that a step takes tens of milliseconds: 96 examples, 3 steps per epoch.
TINY = [f"data_path={SYNTH}/train.bin", "hidden_dim=16", "relational_layers=1", "relational_heads=2", "num_embeddings=16",
        "projection_dim=16", "batch_size=32", "grad_accum_steps=2", "max_examples=96", "epochs=2", "lr=1e-3",
        "warmup_steps=2", "queue_size=48", "sigreg_slices=8", "diag_every=3", "diag_window=64", "log_every=1",
        "refresh_interval=4", "val_fraction=0.1"]


def run(args):
    p = subprocess.run([BIN] + merge_args(args), capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def train(out, *extra):
    rc, so, se = run(list(TINY) + [f"checkpoint_path={out}"] + list(extra))
    if rc != 0:
        raise RuntimeError(f"{os.path.basename(BIN)} {' '.join(extra)} failed ({rc}): {se.strip()[-400:]}")
    return so


def values(line):
    return {k: v for k, v in re.findall(r"(\w+)=(\S+)", line)}


def test_determinism(tmp):
    a = train(f"{tmp}/det_a")
    b = train(f"{tmp}/det_b")
    sa, sb = read_sections(f"{tmp}/det_a/latest.bin"), read_sections(f"{tmp}/det_b/latest.bin")
    check(train_lines(a) == train_lines(b) and len(train_lines(a)) == 6 and sa == sb,
          "determinism: same seed gives identical losses and checkpoints")
    c = train(f"{tmp}/det_c", "seed=5")
    check(train_lines(a) != train_lines(c), "determinism: another seed gives other losses")
    lines = train_lines(a)
    check(all(math.isfinite(float(values(l)["loss"])) for l in lines), "train: every logged loss is finite")
    diag = [l for l in a.splitlines() if l.startswith("diag ")]
    keys = ("ctx_erank_rankme", "ctx_erank_cov", "tgt_erank_rankme", "ctx_isotropy", "ctx_gaussian", "vq_active",
            "vq_usage", "vq_perplexity", "vq_refreshed")
    check(len(diag) == 2 and all(k in diag[0] for k in keys), "diagnostics: every diag_every steps, every metric", diag[:1])
    v = [l for l in a.splitlines() if l.startswith("val ")]
    check(len(v) == 2, "validation after every epoch", v)


def test_resume(tmp):
    full, part = f"{tmp}/res_full", f"{tmp}/res_part"
    train(full, "checkpoint_interval=1")
    os.makedirs(part)
    shutil.copy(f"{full}/epoch_1.bin", f"{part}/latest.bin")   # the run interrupted after epoch 1
    so = train(part, "checkpoint_interval=1", "resume=latest")
    a, b = read_sections(f"{full}/epoch_2.bin"), read_sections(f"{part}/epoch_2.bin")
    same = [k for k in a if a[k] == b.get(k)]
    check(a.keys() == b.keys() and len(same) == len(a) and "resumed from" in so,
          "resume: 1 epoch + resume + 1 epoch == 2 epochs, bitwise", f"sections that differ: {sorted(set(a) - set(same))}")
    full_lines = [l for l in train_lines(open(f"{full}/log.txt").read()) if int(values(l)["step"]) > 3]
    check(full_lines == train_lines(so), "resume: the resumed steps log the same losses")


def test_variants(tmp):
    variants = {
        "context_agg=last": ["context_agg=last"], "context_agg=attention": ["context_agg=attention"],
        "context_agg=gru": ["context_agg=gru"], "objective=sigreg": ["objective=sigreg"],
        "vq_enabled=0": ["vq_enabled=0"], "vq_mode=gumbel": ["vq_mode=gumbel"],
        "reference flags": ["refresh_mode=fraction", "refresh_threshold=0.05", "vq_count_padded=1", "vq_loss_in_objective=0",
                            "sigreg_mode=reference", "proj_final_relu=1", "vq_train_in_eval=1"],
        "no target branch": ["use_target_encoder=0"],
        "augmentations": ["aug_palette=1", "aug_mask_ratio=0.1", "aug_translate=1", "aug_dihedral=1", "aug_object_dropout=0.1"],
    }
    for name, extra in variants.items():
        try:
            so = train(f"{tmp}/var_{len(name)}_{abs(hash(name)) % 1000}", *extra)
            lines = train_lines(so)
            ok = len(lines) == 6 and all(math.isfinite(float(values(l)["loss"])) for l in lines)
            check(ok, f"variant {name}: trains with finite losses", lines[-1:] if lines else so[-300:])
        except RuntimeError as e:
            check(False, f"variant {name}: trains with finite losses", str(e))
    # the fixed refresh keeps codes alive; the reference's fraction-of-mass threshold re-seeds most of them
    fixed = train(f"{tmp}/ref_fixed", "num_embeddings=64", "refresh_interval=2")
    ref = train(f"{tmp}/ref_frac", "num_embeddings=64", "refresh_interval=2", "refresh_mode=fraction", "refresh_threshold=0.05")
    rf = sum(int(values(l)["vq_refreshed"]) for l in fixed.splitlines() if l.startswith("diag "))
    rr = sum(int(values(l)["vq_refreshed"]) for l in ref.splitlines() if l.startswith("diag "))
    check(rr > 40 and rr > rf, "refresh_mode=fraction with threshold 0.05 re-seeds most of a 64-code codebook", f"{rr} vs {rf}")


def test_frames(tmp):
    path = f"{SYNTH}/sequences_train.bin"
    if not os.path.exists(path):
        check(False, "context_mode=frames on the synthetic sequences", f"{path} missing (make data/synth/train.bin)")
        return
    so = train(f"{tmp}/frames", f"data_path={path}", "context_mode=frames", "context_agg=gru")
    check(len(train_lines(so)) == 6, "context_mode=frames trains on data/synth/sequences_train.bin", so[-300:])


def test_arc_data(tmp):
    """The ARC task files of data/arc.py: real grids (up to 30x30, many objects) with every augmentation on."""
    tasks = os.path.join(ROOT, os.pardir, "shared", "data", "arc-agi-1", "data", "training")
    if not os.path.isdir(tasks):
        print(f"SKIP ARC data: {tasks} not found", flush=True)
        return
    names = sorted(f for f in os.listdir(tasks) if f.endswith(".json"))[:60]
    arc = f"{tmp}/arc.bin"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "data", "arc.py"), arc] + [os.path.join(tasks, n) for n in names],
                       capture_output=True, text=True)
    if p.returncode != 0:
        check(False, "ARC data: data/arc.py converts 60 ARC-AGI-1 tasks", p.stderr[-300:])
        return
    out = f"{tmp}/arc_run"
    so = train(out, f"data_path={arc}", "aug_palette=0.5", "aug_mask_ratio=0.1", "aug_translate=0.5", "aug_dihedral=0.5",
               "aug_object_dropout=0.1", "aug_per_grid=1")
    lines = train_lines(so)
    check(len(lines) == 6 and all(math.isfinite(float(values(l)["loss"])) for l in lines),
          "ARC data: trains on 60 ARC-AGI-1 tasks with every augmentation, finite losses", so[-300:])
    codes = f"{tmp}/arc_codes.jsonl"
    rc, so, se = run(list(TINY) + [f"resume={out}/latest.bin", f"export_codes={codes}", f"codes_data={arc}"])
    rows = [json.loads(l) for l in open(codes)] if rc == 0 and os.path.exists(codes) else []
    check(len(rows) > 100 and all(len(r["codes"]) == r["objects"] <= 16 for r in rows) and max(r["objects"] for r in rows) == 16,
          "ARC data: export_codes gives every grid's objects a code (at most 16 objects, some grids full)", (se or so)[-300:])


def test_exports(tmp):
    out = f"{tmp}/exp"
    train(out)
    with open(f"{out}/model.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        names = set(json.loads(f.read(n))) - {"__metadata__"}
    want = {"object_encoder.proj.0.weight", "object_encoder.relational.layers.0.q_proj.weight",
            "object_encoder.relational.layers.0.v_proj.bias", "object_encoder.vq.embedding.weight",
            "projection_head.proj.2.weight", "log_temperature"}
    check(want <= names, "safetensors: the reference's state_dict names, q/k/v split", sorted(want - names))
    codes = f"{tmp}/codes.jsonl"
    rc, so, se = run(list(TINY) + [f"resume={out}/latest.bin", f"export_codes={codes}", f"codes_data={SYNTH}/eval.bin"])
    ok = rc == 0 and os.path.exists(codes)
    rows = [json.loads(l) for l in open(codes)] if ok else []
    good = ok and len(rows) > 0 and all(len(r["codes"]) == r["objects"] and all(0 <= k < 16 for k in r["codes"]) for r in rows)
    check(good, "export_codes: one JSON line per grid with a code per object", (se or so)[-300:])
    again = f"{tmp}/codes2.jsonl"
    run(list(TINY) + [f"resume={out}/latest.bin", f"export_codes={again}", f"codes_data={SYNTH}/eval.bin"])
    check(ok and open(codes).read() == open(again).read(), "export_codes is deterministic")


def test_skip_and_stop(tmp):
    # weights scaled by 1e30 (finite, as a diverged run's may be): every step's loss overflows and is skipped
    train(f"{tmp}/one", "max_steps=1")
    step, config, sections = read_checkpoint(f"{tmp}/one/latest.bin")
    w = struct.unpack(f"<{len(sections['network.weights']) // 4}f", sections["network.weights"])
    sections["network.weights"] = struct.pack(f"<{len(w)}f", *[x * 1e30 for x in w])
    os.makedirs(f"{tmp}/nan")
    write_checkpoint(f"{tmp}/nan/latest.bin", step, config, sections)
    so = train(f"{tmp}/nan", "resume=latest")
    check("skipped: non-finite loss" in so and "train step=6 " in so, "a non-finite loss skips the step and says so", so[-400:])
    a, b = sections, read_sections(f"{tmp}/nan/latest.bin")
    differ = sorted(k for k in a if k != "state" and a[k] != b.get(k))
    counters = lambda st: struct.unpack("<12q", st)[4:10]          # queue pointer and fill, codebook counters
    check(a.keys() == b.keys() and not differ and counters(a["state"]) == counters(b["state"]),
          "skipped steps leave weights, optimizer, target branch, codebooks, queue and counters as they were",
          f"sections that changed: {differ}; counters {counters(a['state'])} -> {counters(b['state'])}")
    so = train(f"{tmp}/stop", "epochs=20", "early_stop_patience=1", "early_stop_min_delta=1e9")
    check("early stop at epoch 2" in so, "early stopping after early_stop_patience validations without improvement", so[-300:])


def test_errors(tmp):
    def expect_error(name, args, pattern):
        rc, so, se = run(args)
        check(rc != 0 and re.search(pattern, se) is not None, f"error: {name}", f"rc={rc} stderr={se.strip()[-300:]}")
    expect_error("unknown key", TINY + ["hidden_dimm=8"], r"hidden_dimm")
    expect_error("missing data file", TINY + ["data_path=/nonexistent.bin"], r"/nonexistent\.bin")
    expect_error("heads not dividing", TINY + ["relational_heads=3"], r"relational_heads=3")
    expect_error("batch not divisible by accumulation", TINY + ["grad_accum_steps=5"], r"grad_accum_steps=5")
    expect_error("batch larger than the data", TINY + ["batch_size=4096", "grad_accum_steps=1"], r"fewer than batch_size=4096")
    expect_error("bad choice", TINY + ["context_agg=max"], r"context_agg")
    expect_error("export without checkpoint", TINY + [f"export_codes={tmp}/x.jsonl"], r"resume")
    bad = f"{tmp}/bad.bin"
    with open(bad, "wb") as f:
        f.write(b"\0" * 100)
    expect_error("resume from a corrupt checkpoint", TINY + [f"resume={bad}"], r"bad\.bin")


if __name__ == "__main__":
    if not os.path.exists(BIN):
        print(f"FAIL test_jepa: {BIN} not built (make train_jepa_cpu)")
        sys.exit(1)
    run_groups([(t.__name__, t) for t in (test_determinism, test_resume, test_variants, test_frames, test_arc_data, test_exports,
                                          test_skip_and_stop, test_errors)], "arc_jepa_")
    finish()
