#!/usr/bin/env python3
"""End-to-end tests of ./train_cvae_cpu (mode=lm: a Qwen2 language model, full training or LoRA) on a small
strategy-sequence dataset (standard library only; the PyTorch replay runs under the interpreter that has torch).

    python3 test/test_cvae.py        (from the repository root, after `make train_cvae_cpu`; about 40 s on 2 cores)

Every run is tiny: model=tiny (D=64, 2 layers) trained from scratch, or LoRA on a random Hugging Face Qwen2
checkpoint from dev/make_tiny_qwen2.py (D=32, 2 layers, vocabulary 128 >= the char tokenizer's 106 ids, bf16,
untied lm head, two shards), on data/strategies.py's six tasks with 64 training and 16 validation examples each,
generated into a temporary folder. Checks:
  1. debug_state == dev/cvae_torch.py replay (float64 PyTorch, --tol 1e-4) for full training from scratch, LoRA r=4
     on all seven projections of the HF base, and LoRA continued from a PEFT adapter whose lora_B is nonzero (so
     that lora_A's gradients are nonzero too); without torch the replays are SKIP, the stdlib checks still run
     (the debug state holds the loaded base / adapter values exactly, every trained tensor has a gradient);
  2. exports: save_hf=1 writes hf_<step>/ (config.json + model.safetensors) or adapter_<step>/; eval_only from
     them reproduces the run's own final val lines exactly (and, greedy, its generations); two named adapters on
     one base (train "default", then "second" beside it): PEFT's folder layout, each reproduces its own run;
  3. resume: 2 steps + resume=1 + 2 steps == 4 steps bit for bit (every checkpoint section, the exports, the
     logged losses), full and LoRA; a damaged newest checkpoint falls back to the previous one with a warning;
  4. mpirun -np 2 against one process (SKIP without mpirun or MPI): the same losses within 1e-5 relative, the
     same weights within 1e-5 absolute (float summation order: measured 1.8e-6 on tiny, 5.7e-7 with LoRA, after
     4 steps; the logged losses were identical), full and LoRA;
  5. generation: one JSON line per (task, prompt), `gen step=... task=all n=...` lines; temperature=0.8
     top_p=0.9 twice with one seed gives the same file, another seed another file (on a random HF model whose
     vocabulary is exactly the tokenizer's 106 ids); sampling (tiny) and greedy
     decoding (LoRA on the HF base) from a vocabulary padded past the tokenizer's ids (128 > 106) never emit a
     padding id (they are no text) and complete the run;
  6. bad inputs: exit 1 with exactly one `error:` line on stderr naming the file or field;
  7. learning: model=tiny on list_summation, 60 steps at lr 3e-3, the last train loss below 60% of the first
     (measured about 41%) and the validation NLL below 60% of the first train loss (measured about 44%).
Prints PASS/FAIL/SKIP lines and "N passed, M failed"; exit 1 on failure.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

from harness import Skip, check, expect, finish, merge_args, run_groups
from test_train import read_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "train_cvae_cpu")
TORCH_SCRIPT = os.path.join(ROOT, "dev", "cvae_torch.py")
TOL_MPI = 1e-5
# one thread per process (2 threads on 2 busy cores spin: twice the time); one isolated MPI singleton per run (no
# helper daemon), its session files in a folder of the run's own
ENV = dict(os.environ, OMPI_MCA_ess_singleton_isolated="1", OMP_NUM_THREADS="1")
MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")

DATA = None          # the strategies dataset, made by main()
BASE = None          # the tiny Hugging Face Qwen2 checkpoint (bf16, untied, 2 shards), made by main()
PYTHON_TORCH = None  # an interpreter that imports torch, or None

# the base of every run: a few short sequences per step, a short evaluation, no generation unless asked
COMMON = ["batch_size=4", "val_examples=2", "gen_examples=0", "log_every=1", "lr=3e-3", "lr_warmup_steps=1"]
TINY = ["model=tiny"]


def lora(r=4):
    return [f"model={BASE}", f"init_from={BASE}", f"lora_r={r}"]


def run(args, mpi_ranks=0, timeout=300):
    """(exit status, stdout, stderr) of train_cvae_cpu with COMMON + args (a later key replaces an earlier one)."""
    args = merge_args([f"data_dir={DATA}"] + COMMON + list(args))
    if mpi_ranks:
        p = subprocess.run(["mpirun", "-np", str(mpi_ranks), BIN] + args, capture_output=True, text=True, env=MPI_ENV,
                           timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    session = tempfile.mkdtemp(prefix="arc_cvae_mpi_")
    try:
        p = subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout,
                           env=dict(ENV, OMPI_MCA_orte_tmpdir_base=session))
        return p.returncode, p.stdout, p.stderr
    finally:
        shutil.rmtree(session, ignore_errors=True)


def train(out, *args, mpi_ranks=0):
    """A run that must succeed; returns its stdout (the log)."""
    rc, so, se = run([f"checkpoint_path={out}"] + list(args), mpi_ranks)
    if rc != 0:
        raise AssertionError(f"train_cvae_cpu {' '.join(args)} failed ({rc}): {se.strip()[-400:]}")
    return so


def lines(stdout, kind):
    """The log lines of a kind (train, val, gen), without their timing fields and step numbers."""
    out = []
    for l in stdout.splitlines():
        if l.startswith(kind + " "):
            l = re.sub(r" (ms|tokens_per_s|seconds|mfu)=\S+", "", l)
            out.append(re.sub(r" step=\d+", "", l) if kind != "train" else l)
    return out


def losses(stdout):
    return [float(re.search(r" loss=(\S+)", l).group(1)) for l in lines(stdout, "train")]


# ---------------------------------------------------------------- safetensors (standard library)

def st_read(path):
    """{name: (dtype, shape, bytes)} and the metadata of a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    return {k: (v["dtype"], v["shape"], data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in header.items()}, meta


def as_f32_bytes(dtype, raw):
    """The float32 bytes of a tensor stored as F32 or BF16 (bf16 -> f32 is exact: the bits shifted up)."""
    if dtype == "F32":
        return raw
    assert dtype == "BF16", dtype
    halves = struct.unpack(f"<{len(raw) // 2}H", raw)
    return struct.pack(f"<{len(halves)}I", *(h << 16 for h in halves))


def floats(raw):
    return struct.unpack(f"<{len(raw) // 4}f", raw)


def hf_dir_tensors(d):
    """{name: (dtype, shape, bytes)} of a Hugging Face directory (one file or shards with an index)."""
    index = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(st_read(os.path.join(d, f))[0])
    return out


def replay(name, path):
    if PYTHON_TORCH is None:
        raise Skip("torch is not importable by python3 or /usr/bin/python3 (apt-get install python3-torch)")
    p = subprocess.run([PYTHON_TORCH, TORCH_SCRIPT, "replay", path, "--tol", "1e-4"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    worst = re.search(r"^worst rel_err=(\S+) \(tensor (\S+)\)", p.stdout, re.M)
    assert p.returncode == 0 and worst, f"exit {p.returncode}: {(p.stdout[-300:] + p.stderr[-300:]).strip()}"


# ---------------------------------------------------------------- 1. debug state against the PyTorch replay

def test_debug_state(tmp):
    def state(tag, *args):
        path = f"{tmp}/debug_{tag}.safetensors"
        so = train(f"{tmp}/debug_run_{tag}", "max_steps=1", f"debug_state={path}", *args)
        assert "debug state written to" in so, so[-300:]
        tensors, meta = st_read(path)
        trainable = {n for n in tensors if not n.startswith(("grad.", "batch.", "out."))}
        if meta.get("trainable") == "lora":
            trainable = {n for n in trainable if ".lora_" in n}
        grads = {n[5:] for n in tensors if n.startswith("grad.")}
        expect(grads == trainable and {"batch.input_ids", "batch.labels", "out.logits", "out.loss"} <= set(tensors)
               and "config" in meta, f"debug_state ({tag}): every trained tensor has its gradient; batch, logits, loss",
               f"trained without gradient {sorted(trainable - grads)[:3]}, gradient of no trained tensor "
               f"{sorted(grads - trainable)[:3]}")
        return path, tensors

    # (a) full training from scratch
    path, _ = state("full", *TINY)
    check("debug_state == PyTorch replay (full training, model=tiny, tied)", replay, "full", path)

    # (b) LoRA r=4 on all seven projections of the bf16, sharded, untied HF base
    path, tensors = state("lora", *lora(), "lora_targets=all")
    base = hf_dir_tensors(BASE)
    same = [n for n in base if n in tensors and tensors[n][2] == as_f32_bytes(base[n][0], base[n][2])]
    expect(len(same) == len(base) and "lm_head.weight" in same,
           "debug_state (lora): the base weights are the bf16 values of the sharded init_from, exactly",
           f"{len(same)} of {len(base)} equal; differ or missing: {sorted(set(base) - set(same))[:3]}")
    n_targets = sum(1 for n in tensors if n.startswith("grad.") and n.endswith("lora_A.weight"))
    expect(n_targets == 2 * 7, "debug_state (lora): lora_targets=all adapts 7 projections per layer", f"{n_targets}")
    check("debug_state == PyTorch replay (LoRA r=4 on all targets, HF base bf16 untied)", replay, "lora", path)

    # (c) a PEFT adapter with nonzero lora_B (3 steps of LoRA training, its save_hf export)
    train(f"{tmp}/adapter_run", *lora(), "max_steps=3", "lr=1e-2", "save_hf=1")
    adapter = f"{tmp}/adapter_run/adapter_00000003"
    ad, _ = st_read(f"{adapter}/adapter_model.safetensors")
    b_max = max(max(abs(x) for x in floats(ad[n][2])) for n in ad if "lora_B" in n)
    expect(b_max > 1e-4, "the LoRA export after 3 steps has nonzero lora_B", f"largest |lora_B| {b_max}")
    path, tensors = state("adapter", *lora(), f"load_adapter={adapter}")
    loaded = [n for n in ad if tensors.get(n, (0, 0, None))[2] == ad[n][2]]
    expect(len(loaded) == len(ad) and len(ad) == 28, "debug_state (load_adapter): the adapter's values, exactly",
           f"{len(loaded)} of {len(ad)} equal")
    a_grad = max(max(abs(x) for x in floats(tensors[n][2])) for n in tensors if n.startswith("grad.") and "lora_A" in n)
    expect(a_grad > 0, "debug_state (load_adapter): lora_A's gradients are nonzero (lora_B is)", f"{a_grad}")
    check("debug_state == PyTorch replay (load_adapter with nonzero lora_B)", replay, "adapter", path)


# ---------------------------------------------------------------- 2. exports round trip

def test_exports(tmp):
    so = train(f"{tmp}/exp_full", *TINY, "max_steps=3", "save_hf=1", "val_examples=4", "gen_examples=1",
               "gen_max_tokens=24")
    hf = f"{tmp}/exp_full/hf_00000003"
    ok = os.path.exists(f"{hf}/config.json") and os.path.exists(f"{hf}/model.safetensors")
    tensors = st_read(f"{hf}/model.safetensors")[0] if ok else {}
    expect(ok and "model.layers.1.mlp.down_proj.weight" in tensors and "model.layers.0.self_attn.k_proj.bias" in tensors
           and json.load(open(f"{hf}/config.json")).get("model_type") == "qwen2",
           "save_hf=1 (full training) writes hf_<step>/ config.json + model.safetensors under HF's names")
    ev = f"{tmp}/exp_full_eval"
    so2 = train(ev, f"model={hf}", f"init_from={hf}", "eval_only=1", "val_examples=4", "gen_examples=1",
                "gen_max_tokens=24")
    a, b = lines(so, "val"), lines(so2, "val")
    expect(len(a) == 7 and a == b, "eval_only from the hf_<step> export reports the run's own val lines exactly",
           f"{a[-1:]} vs {b[-1:]}")
    ga, gb = f"{tmp}/exp_full/generations_00000003.jsonl", f"{ev}/generations_00000000.jsonl"
    expect(os.path.exists(gb) and open(ga).read() == open(gb).read(),
           "eval_only from the hf_<step> export generates the run's own greedy traces")

    so = train(f"{tmp}/exp_lora", *lora(), "max_steps=3", "lr=1e-2", "save_hf=1", "val_examples=4")
    ad = f"{tmp}/exp_lora/adapter_00000003"
    cfg = json.load(open(f"{ad}/adapter_config.json")) if os.path.exists(f"{ad}/adapter_config.json") else {}
    expect(cfg.get("r") == 4 and cfg.get("peft_type") == "LORA" and os.path.exists(f"{ad}/adapter_model.safetensors")
           and not os.path.exists(f"{tmp}/exp_lora/hf_00000003"),
           "save_hf=1 (LoRA) writes adapter_<step>/ adapter_config.json + adapter_model.safetensors")
    so2 = train(f"{tmp}/exp_lora_eval", *lora(), f"load_adapter={ad}", "eval_only=1", "val_examples=4")
    a, b = lines(so, "val"), lines(so2, "val")
    expect(len(a) == 7 and a == b, "eval_only with load_adapter=adapter_<step> reports the run's own val lines exactly",
           f"{a[-1:]} vs {b[-1:]}")
    so3 = train(f"{tmp}/exp_lora_base", *lora(), "eval_only=1", "val_examples=4")
    expect(lines(so3, "val") != a, "eval_only without the adapter reports other val lines (the adapter matters)")
    so4 = train(f"{tmp}/exp_merged", *lora(), "max_steps=3", "lr=1e-2", "save_hf=1", "save_merged=1", "val_examples=4")
    merged = f"{tmp}/exp_merged/hf_00000003"
    so5 = train(f"{tmp}/exp_merged_eval", f"model={merged}", f"init_from={merged}", "eval_only=1", "val_examples=4")
    nll = lambda so: [float(re.search(r" nll=(\S+)", l).group(1)) for l in lines(so, "val")]
    m, e = nll(so4), nll(so5)
    expect(len(m) == 7 and len(e) == 7 and all(abs(x - y) <= 2e-5 * abs(x) for x, y in zip(m, e)),
           "save_merged=1: the base with the adapter merged in (hf_<step>/, no LoRA) gives the LoRA run's val NLL "
           "(within 2e-5: fp32 rounding of W + s B A)", f"{m} vs {e}")


def test_named_adapters(tmp):
    """Two named adapters on one frozen base, as PEFT keeps them: train "default", then train "second" with
    "default" loaded (and frozen); the export holds both, "default" in the folder itself and "second" in its
    subfolder (PEFT's save_pretrained layout), and each, loaded back, reproduces the run that trained it."""
    so_a = train(f"{tmp}/na_a", *lora(), "max_steps=3", "lr=1e-2", "save_hf=1", "val_examples=4")
    first = f"{tmp}/na_a/adapter_00000003"
    so_b = train(f"{tmp}/na_b", *lora(), "max_steps=3", "lr=1e-2", "save_hf=1", "val_examples=4",
                 "lora_adapters=default,second", "adapter=second", f"load_adapter=default={first}")
    both = f"{tmp}/na_b/adapter_00000003"
    ok = all(os.path.exists(f"{d}/adapter_model.safetensors") for d in (both, f"{both}/second"))
    same = ok and st_read(f"{both}/adapter_model.safetensors")[0] == st_read(f"{first}/adapter_model.safetensors")[0]
    expect(ok and same, "two named adapters: the export holds default (unchanged by training second, bit for bit) "
           "in the folder and second in its subfolder")
    so_1 = train(f"{tmp}/na_e1", *lora(), "eval_only=1", "val_examples=4", f"load_adapter={both}")
    so_2 = train(f"{tmp}/na_e2", *lora(), "eval_only=1", "val_examples=4", "lora_adapters=default,second",
                 "adapter=second", f"load_adapter=default={both},second={both}/second")
    expect(lines(so_1, "val") == lines(so_a, "val") and lines(so_2, "val") == lines(so_b, "val")
           and lines(so_a, "val") != lines(so_b, "val"),
           "two named adapters: each, loaded back and active, reproduces the val lines of the run that trained it")


# ---------------------------------------------------------------- 3. resume

def test_resume(tmp):
    for tag, model in (("full", TINY), ("lora", lora())):
        full, part = f"{tmp}/res_full_{tag}", f"{tmp}/res_part_{tag}"
        common = list(model) + ["max_steps=4", "checkpoint_every=2", "lr_warmup_steps=2", "save_hf=1", "checkpoint_keep=0"]
        so_full = train(full, *common)
        os.makedirs(part)
        shutil.copy(f"{full}/ckpt_00000002.bin", part)   # the run interrupted after its step-2 checkpoint
        so = train(part, *common, "resume=1")
        a, b = read_checkpoint(f"{full}/ckpt_00000004.bin"), read_checkpoint(f"{part}/ckpt_00000004.bin")
        differ = sorted(k for k in set(a[2]) | set(b[2]) if a[2].get(k) != b[2].get(k))
        expect(a[0] == b[0] == 4 and not differ and "resumed from" in so and any(k.endswith(".weights") for k in a[2]),
               f"resume ({tag}): 2 steps + resume=1 + 2 steps == 4 steps, every checkpoint section bit for bit",
               f"sections that differ: {differ}")
        export = "hf_00000004/model.safetensors" if tag == "full" else "adapter_00000004/adapter_model.safetensors"
        expect(open(f"{full}/{export}", "rb").read() == open(f"{part}/{export}", "rb").read(),
               f"resume ({tag}): the step-4 export is byte-identical")
        expect(lines(so_full, "train")[2:] == lines(so, "train") and len(lines(so, "train")) == 2,
               f"resume ({tag}): the resumed steps log the same losses",
               f"{lines(so_full, 'train')[2:]} vs {lines(so, 'train')}")

    # LoRA on a loaded base: the checkpoint holds the base's CRC-32, not the base; another base is refused on resume
    lora_ckpt = read_checkpoint(f"{tmp}/res_full_lora/ckpt_00000004.bin")[2]
    expect("frozen_weights_crc" in lora_ckpt and "base.weights" not in lora_ckpt,
           "resume (lora): the checkpoint holds the loaded base's CRC-32 instead of its weights")
    other = f"{tmp}/other_base"
    subprocess.run([sys.executable, os.path.join(ROOT, "dev", "make_tiny_qwen2.py"), other, "--layers", "2", "--hidden", "32",
                    "--heads", "4", "--kv-heads", "2", "--intermediate", "64", "--vocab", "128", "--dtype", "bf16",
                    "--untied", "--seed", "7"], check=True, capture_output=True)
    moved = f"{tmp}/res_other_base"
    shutil.copytree(f"{tmp}/res_full_lora", moved)
    rc, so, se = run([f"model={BASE}", f"init_from={other}", "lora_r=4", "max_steps=6", f"checkpoint_path={moved}", "resume=1"])
    expect(rc == 1 and se.count("error:") == 1 and "CRC-32" in se and "init_from" in se,
           "resume (lora) with another base than the run's: one error line naming init_from", f"exit {rc}: {se.strip()[-300:]!r}")

    # a damaged newest checkpoint: resume=1 warns and continues from the previous one, to the same end
    fb = f"{tmp}/res_fallback"
    shutil.copytree(f"{tmp}/res_full_full", fb)
    newest = f"{fb}/ckpt_00000004.bin"
    data = open(newest, "rb").read()
    open(newest, "wb").write(data[:len(data) // 2])
    rc, so, se = run(TINY + ["max_steps=4", "checkpoint_every=2", "lr_warmup_steps=2", "save_hf=1", "checkpoint_keep=0",
                             f"checkpoint_path={fb}", "resume=1"])
    out = so + se
    expect(rc == 0 and re.search(r"warning: .*ckpt_00000004\.bin", out) is not None
           and re.search(r"resumed from \S*ckpt_00000002\.bin at step 2", out) is not None,
           "resume=1 with a damaged newest checkpoint warns and resumes from the previous one",
           f"exit {rc}: {out.strip()[-400:]!r}")
    if rc == 0:
        a, b = read_checkpoint(f"{tmp}/res_full_full/ckpt_00000004.bin"), read_checkpoint(newest)
        expect(a[2] == b[2], "the fallback run ends with the uninterrupted run's step-4 checkpoint, bit for bit")


# ---------------------------------------------------------------- 4. mpirun -np 2

def mpi_unavailable():
    if shutil.which("mpirun") is None:
        return "mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
    probe = tempfile.mkdtemp(prefix="arc_cvae_mpi_probe_")
    try:
        rc, so, se = run(TINY + ["max_steps=1", f"checkpoint_path={probe}", "save_hf=0", "val_examples=1"], mpi_ranks=2)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if "2 processes" not in so:
        return "train_cvae_cpu was built without MPI (make found no mpicxx)" if rc == 0 else \
            f"mpirun -np 2 failed: {se.strip()[-200:]}"
    return None


def test_mpi(tmp):
    why = mpi_unavailable()
    for tag, model in (("full", TINY), ("lora", lora())):
        name = f"mpirun -np 2 == one process ({tag}): losses within {TOL_MPI} relative, weights within {TOL_MPI}"
        if why:
            print(f"SKIP {name}: {why}", flush=True)
            continue
        args = list(model) + ["max_steps=4", "lr=1e-2" if tag == "lora" else "lr=3e-3", "save_hf=0"]
        one = train(f"{tmp}/mpi1_{tag}", *args)
        two = train(f"{tmp}/mpi2_{tag}", *args, mpi_ranks=2)
        l1, l2 = losses(one), losses(two)
        worst_loss = max((abs(x - y) / abs(x) for x, y in zip(l1, l2)), default=1.0)
        a = read_checkpoint(f"{tmp}/mpi1_{tag}/ckpt_00000004.bin")[2]
        b = read_checkpoint(f"{tmp}/mpi2_{tag}/ckpt_00000004.bin")[2]
        keys = sorted(k for k in a if k.endswith(".weights"))
        worst_w = max(max(abs(x - y) for x, y in zip(floats(a[k]), floats(b[k]))) for k in keys) if keys else 1.0
        va, vb = lines(one, "val"), lines(two, "val")
        print(f"     (mpirun {tag}: largest loss difference {worst_loss:.3g} relative, weights {worst_w:.3g})", flush=True)
        expect(len(l1) == len(l2) == 4 and worst_loss <= TOL_MPI and sorted(a) == sorted(b) and keys
               and worst_w <= TOL_MPI and a["state"] == b["state"] and len(va) == len(vb) == 7
               and two.count("arc.cu train_cvae") == 1,
               name, f"largest loss difference {worst_loss:.3g} ({l1} vs {l2}), largest weight difference {worst_w:.3g}")


# ---------------------------------------------------------------- 5. generation

def test_generation(tmp):
    run_dir = f"{tmp}/gen"
    so = train(run_dir, *TINY, "max_steps=2", "gen_examples=2", "gen_max_tokens=24", "save_hf=1")
    path = f"{run_dir}/generations_00000002.jsonl"
    records = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    val = [json.loads(l) for l in open(f"{DATA}/val.jsonl")]
    want = []
    for task in dict.fromkeys(r["task"] for r in val):
        want += [(r["task"], r["x"]) for r in val if r["task"] == task][:2]
    expect(len(records) == 12 and sorted((r["task"], r["x"]) for r in records) == sorted(want)
           and all(isinstance(r.get("y"), str) and isinstance(r.get("strategy"), int) for r in records),
           "generation writes generations_<step>.jsonl: one line {task, x, y, strategy} per (task, prompt)",
           f"{len(records)} records")
    gen = [l for l in so.splitlines() if l.startswith("gen step=2 ")]
    expect(any(re.match(r"gen step=2 task=all n=12 answer_acc=\S+", l) for l in gen)
           and sum(1 for l in gen if re.match(r"gen step=2 task=\w+ n=2 ", l)) == 6,
           "generation logs `gen step=... task=... n=...` score lines per task and for all", f"{gen[-2:]}")

    def generate(tag, model_dir, *args):
        """eval_only generation from an HF directory: the file's text, or why the run failed."""
        d = f"{tmp}/gen_{tag}"
        rc, _, se = run([f"checkpoint_path={d}", f"model={model_dir}", f"init_from={model_dir}", "eval_only=1",
                         "val_examples=1", "gen_examples=2", "gen_max_tokens=24"] + list(args))
        return open(f"{d}/generations_00000000.jsonl").read() if rc == 0 else f"exit {rc}: {se.strip()[-300:]}"

    # Sampling determinism, on a random HF model whose vocabulary is exactly the char tokenizer's 106 ids.
    exact = f"{tmp}/base_vocab106"
    subprocess.run([sys.executable, os.path.join(ROOT, "dev", "make_tiny_qwen2.py"), exact, "--hidden", "32",
                    "--intermediate", "64", "--vocab", "106"], check=True, capture_output=True)
    sampling = ["temperature=0.8", "top_p=0.9"]
    a, b, c = (generate(tag, exact, *sampling, f"seed={seed}") for tag, seed in (("a", 0), ("b", 0), ("c", 1)))
    greedy = generate("greedy", exact)
    ok = all(x.count("\n") == 12 and not x.startswith("exit ") for x in (a, b, c, greedy))
    expect(ok, "eval_only generation writes one line per (task, prompt), greedy and temperature=0.8 top_p=0.9",
           next((x for x in (a, b, c, greedy) if x.startswith("exit ")), "not 12 lines"))
    expect(ok and a == b, "temperature=0.8 top_p=0.9: the same seed generates the same file")
    expect(ok and a != c, "temperature=0.8 top_p=0.9: another seed generates another file")
    expect(ok and a != greedy, "temperature=0.8 top_p=0.9 samples other traces than greedy decoding")

    # tiny's vocabulary (128) is the tokenizer's 106 ids padded to a multiple of 64, as Qwen pads its own: the
    # padding ids are no text, so generation must never produce them (nor stop the run over them). Sampling from
    # tiny after 2 steps, and greedy decoding with LoRA on the HF base (vocab_size 128, whose random lm head scores
    # the ids 106..127 like any other), at the end of a training run that must still save its checkpoint.
    x = generate("tiny_sampled", f"{run_dir}/hf_00000002", *sampling)
    expect(x.count("\n") == 12 and not x.startswith("exit "),
           "temperature=0.8 top_p=0.9 from tiny, whose vocabulary (128) is padded past the tokenizer's 106 ids", x[:300])
    d = f"{tmp}/gen_lora"
    rc, so, se = run([f"checkpoint_path={d}"] + lora() + ["max_steps=1", "gen_examples=2", "gen_max_tokens=24"])
    n = open(f"{d}/generations_00000001.jsonl").read().count("\n") if rc == 0 else 0
    expect(rc == 0 and n == 12 and os.path.exists(f"{d}/ckpt_00000001.bin") and "gen step=1 task=all n=12" in so,
           "greedy generation with LoRA on an HF base whose vocabulary (128) extends past the tokenizer's 106 ids",
           f"exit {rc}: {se.strip()[-300:]}")


# ---------------------------------------------------------------- 6. bad inputs

def expect_error(name, args, pattern):
    rc, so, se = run(args)
    errs = [l for l in se.splitlines() if l.strip()]
    ok = rc == 1 and len(errs) == 1 and errs[0].startswith("error: ") and re.search(pattern, errs[0]) is not None
    expect(ok, f"error: {name}", f"exit {rc}, stderr {se.strip()[-300:]!r}")


def test_errors(tmp):
    out = [f"checkpoint_path={tmp}/err", "max_steps=1"]
    config = json.load(open(f"{BASE}/config.json"))

    def model_dir(tag, **changes):
        d = f"{tmp}/model_{tag}"
        os.makedirs(d)
        json.dump(dict(config, **changes), open(f"{d}/config.json", "w"))
        return d
    d = model_dir("kv", num_key_value_heads=3)
    expect_error("config.json: num_key_value_heads does not divide the heads", out + [f"model={d}"],
                 re.escape(f"{d}/config.json") + r".*num_key_value_heads")
    d = model_dir("vocab", vocab_size=100, bos_token_id=0, eos_token_id=0)
    expect_error("config.json: vocab_size smaller than the tokenizer", out + [f"model={d}"],
                 r"tokenizer char.*\b100\b.*vocab_size of " + re.escape(f"{d}/config.json"))
    d = f"{tmp}/model_shard"
    shutil.copytree(BASE, d)
    missing = sorted(f for f in os.listdir(d) if re.fullmatch(r"model-\d+-of-\d+\.safetensors", f))[-1]
    os.remove(f"{d}/{missing}")
    expect_error("init_from a directory missing a shard", out + [f"model={d}", f"init_from={d}"], re.escape(missing))

    adapter = f"{tmp}/err_adapter"
    train(adapter, *lora(4), "max_steps=1", "save_hf=1", "val_examples=1")
    ad = f"{adapter}/adapter_00000001"
    expect_error("load_adapter with another rank (lora_r=8, adapter r=4)", out + lora(8) + [f"load_adapter={ad}"],
                 re.escape(f"{ad}/adapter_config.json") + r".*\br\b.*\b4\b.*\b8\b")
    expect_error("load_adapter with a target module the run does not adapt",
                 out + lora(4) + ["lora_targets=q_proj,v_proj", f"load_adapter={ad}"],
                 re.escape(f"{ad}/adapter_config.json") + r".*target_modules")
    expect_error("tasks=nonexistent_task", out + TINY + ["tasks=nonexistent_task"], r"tasks.*nonexistent_task")

    bad = f"{tmp}/data_badjson"
    os.makedirs(bad)
    train_lines = open(f"{DATA}/train.jsonl").read().splitlines()
    train_lines[6] = '{"task": "list_summation", "x": oops'
    open(f"{bad}/train.jsonl", "w").write("\n".join(train_lines) + "\n")
    shutil.copy(f"{DATA}/val.jsonl", bad)
    expect_error("a train.jsonl line that is not JSON (file:line)", out + TINY + [f"data_dir={bad}"],
                 re.escape(f"{bad}/train.jsonl:7:"))
    expect_error("an example longer than max_seq_len", out + TINY + ["max_seq_len=64"],
                 re.escape(f"{DATA}/train.jsonl:") + r"\d+:.*max_seq_len=64")
    expect_error("lora_targets=foo_proj", out + lora(4) + ["lora_targets=foo_proj"], r"lora_targets.*foo_proj")
    expect_error("model=nonexistent", out + ["model=nonexistent"], r"model=nonexistent")


# ---------------------------------------------------------------- 7. learning smoke check

def test_learning(tmp):
    so = train(f"{tmp}/learn", *TINY, "tasks=list_summation", "batch_size=8", "max_steps=60", "lr=3e-3",
               "lr_warmup_steps=5", "val_examples=16", "save_hf=0")
    l = losses(so)
    val = [float(re.search(r" nll=(\S+)", x).group(1)) for x in lines(so, "val") if " task=all " in x]
    ratio = l[-1] / l[0] if len(l) == 60 else float("nan")
    expect(len(l) == 60 and ratio < 0.6, "learning: 60 steps on list_summation take the train loss below 60% of step 1's",
           f"first {l[:1]}, last {l[-1:]}, ratio {ratio:.3f}")
    expect(len(val) == 1 and len(l) == 60 and val[0] < 0.6 * l[0],
           "learning: the validation NLL ends below 60% of step 1's train loss", f"val {val}, first train {l[:1]}")
    print(f"     (learning: train loss {l[0]:.3f} -> {l[-1]:.3f}, ratio {ratio:.3f}; val nll {val})", flush=True)


def torch_python():
    for py in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(py) and subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0:
            return py
    return None


def main():
    global DATA, BASE, PYTHON_TORCH
    if not os.path.exists(BIN):
        sys.exit(f"test/test_cvae.py: {BIN} is missing: run make train_cvae_cpu first")
    PYTHON_TORCH = torch_python()
    tmp = tempfile.mkdtemp(prefix="arc_test_cvae_data_")
    try:
        DATA, BASE = f"{tmp}/data", f"{tmp}/base"
        subprocess.run([sys.executable, os.path.join(ROOT, "data", "strategies.py"), DATA, "--n-train", "64", "--n-val",
                        "16", "--n-test", "16"], check=True, capture_output=True)
        subprocess.run([sys.executable, os.path.join(ROOT, "dev", "make_tiny_qwen2.py"), BASE, "--layers", "2",
                        "--hidden", "32", "--heads", "4", "--kv-heads", "2", "--intermediate", "64", "--vocab", "128",
                        "--dtype", "bf16", "--untied", "--shards", "2"], check=True, capture_output=True)
        run_groups([(t.__name__, t) for t in (test_debug_state, test_exports, test_named_adapters, test_resume, test_mpi,
                                              test_generation, test_errors, test_learning)], "arc_test_cvae_")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
