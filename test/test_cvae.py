#!/usr/bin/env python3
"""End-to-end tests of ./train_cvae_cpu (mode=lm: a Qwen2 language model, full training or LoRA; mode=cvae: the
latent-strategy CVAE) on a small strategy-sequence dataset (standard library only; the PyTorch replay runs under the
interpreter that has torch).

    python3 test/test_cvae.py        (from the repository root, after `make train_cvae_cpu`; about 110 s on 2 cores,
                                      65 s of it mode=cvae's)

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
     (measured about 41%) and the validation NLL below 60% of the first train loss (measured about 44%);
  8. mode=cvae, with beta, posterior_variance_weight and router_marginal_kl_to_prior_weight all > 0 (0.1, 0.2, 0.3),
     in both regimes: LoRA r=4 on the hf_<step>/ export of a 20-step mode=lm run of model=tiny ("from-entangled",
     the posterior an adapter of its own) and model=tiny from scratch (lora_r=0, the posterior a network of its own):
     - 3 steps with generation and alignment finish; every field of the train lines (J, recon, kl, pv, rmkl, w_*,
       gn_*), val lines (recon_ratio, ...), probe and final lines parses and is finite; w_* = weight x term and
       J = their sum, recon_ratio = nll / c_base, kl = rmkl = 0 and pv = 1 at step 1 (zero heads: q = p = N(0, I));
       the final lines repeat the last val and probe lines; probes are -1 (undetermined) or in [0, 1]; the
       generation and alignment files and the exports (adapters + posterior/ + cvae_heads.safetensors);
     - debug_state == dev/cvae_torch.py replay at step 1 (LoRA, from scratch) and at the first step after resume=1
       (LoRA, step 4: the router head, its gradient and every posterior gradient nonzero; its J is the logged one);
     - resume: 3 steps + resume=1 + 3 steps == 6 steps bit for bit (checkpoint sections, the exports, the train and
       val lines); c_base measured once before step 1 and restored from the checkpoint, not re-measured;
     - token_weighted_reconstruction_weight=0.5 (LoRA): the train lines' tw= and w_tw= = 0.5 tw, J the sum of the
       five w_*; debug_state == replay at the first step after resume=1 (out.tw nonzero and the logged tw); resumed
       without c_base= the checkpoint's c_base, with c_base=2.5 that one (logged c_base=2.50000, recon_ratio =
       nll / 2.5 in train and val lines, the debug state's J over 2.5);
     - exports round trip: eval_only=1 on the 3-step runs' exports (load_adapter=adapter_<step>/ on the same base;
       from scratch init_from=hf_<step>/) reports the runs' last val lines exactly with the heads file's c_base,
       and with c_base= the logged 5-decimal value all but recon_ratio exactly (it within 1e-5);
     - mpirun -np 2 against one process (the router marginal KL takes the global batch's moments): the train lines'
       J terms within 1e-5 relative (measured: identical), the weights within 1e-5 of each section's largest
       (measured 4.4e-6 with LoRA, 7.5e-6 from scratch after 4 steps: Adam's first steps on near-zero gradients);
     - bad configurations: one error line, exit 1 (d_z=0, d_z=-3, an unknown task, the posterior's adapter as the
       generator's, negative weights, init_from of another shape, resume with another d_z or mode);
     - determinism: the same run twice gives the same log (timing fields aside), generation, alignment and exports.
Prints PASS/FAIL/SKIP lines and "N passed, M failed"; exit 1 on failure.
"""
import json
import math
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

MPI_WHY = []         # mpi_unavailable's answer, once asked


def mpi_unavailable():
    """Why mpirun -np 2 cannot run train_cvae_cpu (None: it can); probed once."""
    if not MPI_WHY:
        MPI_WHY.append(mpi_probe())
    return MPI_WHY[0]


def mpi_probe():
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


# ---------------------------------------------------------------- 8. mode=cvae: the latent-strategy CVAE

# J's weighted terms all on, each with a weight of its own: the KL, the posterior variance and the router marginal KL
# (whose gradient needs the moments of the whole global batch)
CVAE_WEIGHTS = {"beta": 0.1, "posterior_variance_weight": 0.2, "router_marginal_kl_to_prior_weight": 0.3}
CVAE = ["mode=cvae"] + [f"{k}={v}" for k, v in CVAE_WEIGHTS.items()]
ENTANGLED = {}       # tmp -> the phase-1 model's hf export (made once per temporary folder)
CVAE_RUNS = {}       # tag -> (args, stdout, folder) of test_cvae_runs' runs (test_cvae_determinism repeats one)
TRAIN_KEYS = ("loss", "recon", "recon_ratio", "kl", "pv", "rmkl", "w_recon", "w_kl", "w_pv", "w_rmkl", "gn_recon",
              "gn_kl", "gn_pv", "gn_rmkl", "token_acc", "lr", "grad_norm")
VAL_KEYS = ("recon_ratio", "nll", "kl", "pv", "rmkl", "token_acc", "tokens")
PROBE_KEYS = ("router_probe", "posterior_mu_probe", "alignment_one_to_one")
FINAL_KEYS = ("answer_acc", "recon_ratio", "kl", "pv", "rmkl", "chance", "nll", "token_acc") + PROBE_KEYS


def entangled(tmp):
    """Phase 1 ("entangled"): model=tiny trained as a language model (mode=lm) for 20 steps, its hf_00000020/ export."""
    if tmp not in ENTANGLED:
        train(f"{tmp}/phase1", *TINY, "max_steps=20", "save_hf=1")
        ENTANGLED[tmp] = f"{tmp}/phase1/hf_00000020"
    return ENTANGLED[tmp]


def from_entangled(tmp, r=4):
    """LoRA r on the phase-1 export (the report's "from-entangled" regime): model=<dir>/config.json init_from=<dir>."""
    d = entangled(tmp)
    return [f"model={d}/config.json", f"init_from={d}", f"lora_r={r}"]


def fields(line):
    """{key: text} of a log line's key=value fields."""
    return dict(re.findall(r"(\w+)=(\S+)", line))


def numbers(line, keys):
    """The float values of keys in a log line; raises AssertionError naming a missing, unparsable or non-finite one."""
    f, out = fields(line), {}
    for k in keys:
        try:
            out[k] = float(f[k])
        except (KeyError, ValueError):
            raise AssertionError(f"no number {k}= in {line[:160]!r}")
        if not math.isfinite(out[k]):
            raise AssertionError(f"{k}={f[k]} is not finite in {line[:160]!r}")
    return out


def last_digit(text):
    """One unit of the last printed digit of a number as the log prints it (%.5f, %.5g, %.4g, %.3e); 0 for a number
    printed without a decimal point ("0", "1", "1e-05": %.5g's exact values)."""
    mantissa, _, exponent = text.lower().partition("e")
    return 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2])) if "." in mantissa else 0.0


def g5_unit(text):
    """One unit of the 5th significant digit of a number printed with %.5g (which drops trailing zeros: "0.1" is
    0.10000, unit 1e-5); 0 for 0."""
    x = abs(float(text))
    return 10.0 ** (math.floor(math.log10(x)) - 4) if x > 0 else 0.0


def c_base_of(stdout):
    m = re.search(r"^c_base=(\S+?)(:|$)", stdout, re.M)
    assert m, "no c_base line"
    return float(m.group(1))


def check_cvae_log(so, steps, n_tasks=6):
    """The train / val / probe / final lines of a mode=cvae run with CVAE's weights (each field parses and is finite;
    each w_* is its weight times its term, J their sum; the heads start at 0, so step 1 has q = p = N(0, I); the
    final lines repeat the last val and probe lines; probes are -1 (undetermined) or in [0, 1])."""
    c_base = c_base_of(so)
    assert re.search(r"^cvae: d_z=8 beta=0.1 posterior_variance_weight=0.2 router_marginal_kl_to_prior_weight=0.3,", so, re.M), \
        "no cvae: line with the run's weights"
    train_text = [fields(l) for l in so.splitlines() if l.startswith("train ")]
    train_l = [numbers(l, TRAIN_KEYS) for l in so.splitlines() if l.startswith("train ")]
    assert len(train_l) == steps, f"{len(train_l)} train lines, expected {steps}"
    for i, (t, text) in enumerate(zip(train_l, train_text), 1):
        assert t["recon"] > 0 and min(t[k] for k in TRAIN_KEYS if k.startswith(("kl", "pv", "rmkl", "w_", "gn_"))) >= 0, \
            f"step {i}: a negative term or gradient norm: {t}"
        parts = t["w_recon"] + t["w_kl"] + t["w_pv"] + t["w_rmkl"]
        for w, term, weight in (("w_kl", "kl", "beta"), ("w_pv", "pv", "posterior_variance_weight"),
                                ("w_rmkl", "rmkl", "router_marginal_kl_to_prior_weight")):
            want = CVAE_WEIGHTS[weight] * t[term]      # both printed to 5 significant digits
            assert abs(t[w] - want) <= g5_unit(text[w]) + CVAE_WEIGHTS[weight] * g5_unit(text[term]), \
                f"step {i}: {w}={text[w]}, expected {weight} * {term} = {want}"
        slack = last_digit(text["loss"]) + sum(g5_unit(text[k]) for k in ("w_recon", "w_kl", "w_pv", "w_rmkl"))
        assert abs(t["loss"] - parts) <= slack, f"step {i}: loss={t['loss']} != the sum of the w_* {parts}"
        assert abs(t["recon_ratio"] - t["recon"] / c_base) <= 2e-5 * t["recon_ratio"], \
            f"step {i}: recon_ratio {t['recon_ratio']} != recon / c_base = {t['recon'] / c_base}"
    assert train_l[0]["kl"] == 0 and train_l[0]["rmkl"] == 0 and train_l[0]["pv"] == 1 and train_l[0]["gn_pv"] > 0, \
        f"step 1 (zero heads: q = p = N(0, I)) logs kl, rmkl, pv = {train_l[0]['kl']}, {train_l[0]['rmkl']}, {train_l[0]['pv']}"
    assert train_l[-1]["kl"] > 0 and train_l[-1]["rmkl"] > 0, f"step {steps}: kl and rmkl still 0 {train_l[-1]}"
    val = {fields(l)["task"]: numbers(l, VAL_KEYS) for l in so.splitlines() if l.startswith("val ")}
    assert len(val) == n_tasks + 1 and "all" in val, f"val lines for {sorted(val)}"
    for task, v in val.items():
        assert abs(v["recon_ratio"] - v["nll"] / c_base) <= 2e-5 * v["recon_ratio"] and v["kl"] >= 0 and v["pv"] > 0 \
            and v["rmkl"] >= 0 and v["tokens"] > 0, f"val task={task}: {v} (c_base {c_base})"
    probes = {fields(l)["task"]: numbers(l, PROBE_KEYS + ("chance",)) for l in so.splitlines() if l.startswith("probe ")}
    assert len(probes) == n_tasks and "all" not in probes, f"probe lines for {sorted(probes)}"
    final = {fields(l)["task"]: numbers(l, FINAL_KEYS) for l in so.splitlines() if l.startswith("final ")}
    assert len(final) == n_tasks + 1 and "all" in final, f"final lines for {sorted(final)}"
    for task, f in final.items():
        for k in PROBE_KEYS + ("answer_acc",):
            assert f[k] == -1 or 0 <= f[k] <= 1, f"final task={task} {k}={f[k]}: expected -1 or in [0, 1]"
        for k in ("recon_ratio", "nll", "kl", "pv", "rmkl"):
            assert f[k] == val[task][k], f"final task={task} {k}={f[k]} is not the last val line's {val[task][k]}"
        if task != "all":
            p = probes[task]
            assert all(f[k] == p[k] for k in PROBE_KEYS + ("chance",)) and 0 < f["chance"] <= 0.5, \
                f"final task={task} {f} does not repeat its probe line {p}"
    return train_l, val, probes, final


def test_cvae_runs(tmp):
    """Both regimes finish and log what they should: LoRA on the phase-1 export, and from scratch."""
    gen = ["max_steps=3", "gen_examples=2", "gen_max_tokens=16", "align_examples=1"]
    for tag, model, posterior in (("from-entangled LoRA r=4", from_entangled(tmp), "adapter posterior on the shared base"),
                                  ("from scratch, model=tiny lora_r=0", TINY + ["lora_r=0"], "a network of its own")):
        args = list(model) + CVAE + gen
        out = f"{tmp}/cvae_run_{len(CVAE_RUNS)}"
        rc, so, se = run([f"checkpoint_path={out}"] + args)
        CVAE_RUNS[tag] = (args, so, out)
        ok = rc == 0 and f"posterior: {posterior}" in so and "c_base=" in so
        expect(ok, f"mode=cvae {tag}: 3 steps with generation and the probes finish", f"exit {rc}: {se.strip()[-300:]!r}")
        if not ok:
            continue
        check(f"mode=cvae {tag}: train lines (each w_* its weight times its term, J their sum, kl = rmkl = 0 and pv = 1 "
              f"at step 1), val lines with recon_ratio = nll / c_base, probe and final lines per task, every field "
              f"finite, probes -1 or in [0, 1]", check_cvae_log, so, 3)
        files = [f"{out}/generations_00000003.jsonl", f"{out}/alignment_00000003.jsonl"]
        n = [open(f).read().count("\n") if os.path.exists(f) else 0 for f in files]
        # alignment: align_examples=1 prompt per task under each of its K strategies' latents (3, and 4 for sorting)
        expect(n == [12, 19] and all(json.loads(l).get("latent") in range(4) for l in open(files[1])),
               f"mode=cvae {tag}: generations_3.jsonl (2 prompts x 6 tasks, z from the router) and alignment_3.jsonl "
               f"(one prompt per task under each forced latent)", f"lines {n}")
    _, so, out = CVAE_RUNS["from-entangled LoRA r=4"]
    ad = f"{out}/adapter_00000003"
    heads = st_read(f"{ad}/cvae_heads.safetensors")[0] if os.path.exists(f"{ad}/cvae_heads.safetensors") else {}
    expect(os.path.exists(f"{ad}/adapter_model.safetensors") and os.path.exists(f"{ad}/posterior/adapter_model.safetensors")
           and sorted(heads) == sorted(f"cvae.{h}.{p}" for h in ("router_head", "posterior_head", "z_proj")
                                       for p in ("weight", "bias")),
           "mode=cvae (LoRA): adapter_<step>/ holds the generator's adapter, posterior/ and cvae_heads.safetensors",
           f"{sorted(heads)}")
    _, so, out = CVAE_RUNS["from scratch, model=tiny lora_r=0"]
    hf = f"{out}/hf_00000003"
    expect(all(os.path.exists(f"{hf}/{f}") for f in ("model.safetensors", "cvae_heads.safetensors",
                                                     "posterior/model.safetensors", "posterior/config.json")),
           "mode=cvae (from scratch): hf_<step>/ holds the generator, cvae_heads.safetensors and posterior/")


def nonzero(tensors, name):
    t = tensors.get(name)
    return t is not None and max(abs(x) for x in floats(t[2])) > 0


def test_cvae_debug_state(tmp):
    def state(tag, model, *args, out=None):
        path = f"{tmp}/cvae_debug_{tag}.safetensors"
        so = train(out or f"{tmp}/cvae_debug_run_{tag}", *model, *CVAE, "max_steps=1", f"debug_state={path}", *args)
        assert "debug state written to" in so, so[-300:]
        tensors, meta = st_read(path)
        cv = json.loads(meta.get("cvae", "{}"))
        heads = {f"cvae.{h}.{p}" for h in ("router_head", "posterior_head", "z_proj") for p in ("weight", "bias")}
        trained = {n[5:] for n in tensors if n.startswith("grad.")}
        posterior = {n for n in trained if n.startswith("posterior.")}
        expect(cv.get("d_z") == 8 and (cv.get("posterior_variance_weight") or 0) > 0
               and (cv.get("router_marginal_kl_to_prior_weight") or 0) > 0 and heads <= trained and posterior and {"batch.eps", "out.mu_q", "out.mu_p", "out.rmkl"} <= set(tensors),
               f"debug_state (cvae, {tag}): cvae metadata, heads and posterior with their gradients, latents",
               f"metadata {cv}, posterior tensors {len(posterior)}")
        return path, tensors, so

    # (a) LoRA r=4 on the phase-1 export, step 1: the heads are 0 (q = p = N(0, I))
    path, tensors, _ = state("lora", from_entangled(tmp))
    expect(any(".lora_A." in n for n in tensors if n.startswith("grad.posterior.base_model.model."))
           and not nonzero(tensors, "cvae.router_head.weight"),
           "debug_state (cvae, LoRA): the posterior adapter's tensors (posterior.base_model.model.*), zero heads at step 1")
    check("debug_state == PyTorch replay (mode=cvae, LoRA r=4 from the phase-1 export, step 1)", replay, "cvae_lora", path)

    # (b) from scratch: the posterior is a network of its own
    path, tensors, _ = state("scratch", TINY + ["lora_r=0"])
    expect("grad.posterior.model.embed_tokens.weight" in tensors and "grad.posterior.lm_head.weight" not in tensors,
           "debug_state (cvae, from scratch): the posterior's own network posterior.model.* (no lm head)")
    check("debug_state == PyTorch replay (mode=cvae from scratch, model=tiny, step 1)", replay, "cvae_scratch", path)

    # (c) resumed: 3 steps, then resume=1 max_steps=4 writes the state of step 4 (nonzero router and posterior)
    out = f"{tmp}/cvae_debug_run_resumed"
    train(out, *from_entangled(tmp), *CVAE, "max_steps=3", "checkpoint_every=3")
    path, tensors, so = state("resumed", from_entangled(tmp), "max_steps=4", "checkpoint_every=3", "resume=1", out=out)
    step4 = [l for l in so.splitlines() if l.startswith("train ")]
    loss = float(fields(step4[0])["loss"]) if len(step4) == 1 and "step=4 " in step4[0] else None
    file_loss = floats(tensors["out.loss"][2])[0]
    zero = [n for n in ["cvae.router_head.weight", "grad.cvae.router_head.weight", "grad.cvae.posterior_head.weight"]
            + sorted(n for n in tensors if n.startswith("grad.posterior.")) if not nonzero(tensors, n)]
    expect("resumed from" in so and loss is not None and abs(file_loss - loss) <= 1e-5 and not zero,
           "debug_state after resume=1: the state of step 4 (its J is the logged loss), the router head, its gradient "
           "and every posterior gradient (adapter A and B, head) nonzero",
           f"logged {loss}, file {file_loss}; all zero: {zero[:4]}")
    check("debug_state == PyTorch replay (mode=cvae LoRA, the first step after resume=1)", replay, "cvae_resumed", path)


def test_cvae_resume(tmp):
    for tag, model in (("LoRA", from_entangled(tmp)), ("from scratch", TINY + ["lora_r=0"])):
        full, part = f"{tmp}/cvae_res_full_{tag[0]}", f"{tmp}/cvae_res_part_{tag[0]}"
        common = list(model) + CVAE + ["max_steps=6", "checkpoint_every=3", "save_hf=1", "checkpoint_keep=0"]
        so_full = train(full, *common)
        os.makedirs(part)
        shutil.copy(f"{full}/ckpt_00000003.bin", part)     # the run interrupted after its step-3 checkpoint
        so = train(part, *common, "resume=1")
        a, b = read_checkpoint(f"{full}/ckpt_00000006.bin"), read_checkpoint(f"{part}/ckpt_00000006.bin")
        differ = sorted(k for k in set(a[2]) | set(b[2]) if a[2].get(k) != b[2].get(k))
        expect(a[0] == b[0] == 6 and not differ and "resumed from" in so and "heads.weights" in a[2],
               f"cvae resume ({tag}): 3 steps + resume=1 + 3 steps == 6 steps, every checkpoint section bit for bit",
               f"sections that differ: {differ}")
        exports = (["adapter_00000006/adapter_model.safetensors", "adapter_00000006/posterior/adapter_model.safetensors",
                    "adapter_00000006/cvae_heads.safetensors"] if tag == "LoRA" else
                   ["hf_00000006/model.safetensors", "hf_00000006/posterior/model.safetensors", "hf_00000006/cvae_heads.safetensors"])
        same = [f for f in exports if os.path.exists(f"{full}/{f}") and os.path.exists(f"{part}/{f}")
                and open(f"{full}/{f}", "rb").read() == open(f"{part}/{f}", "rb").read()]
        expect(same == exports, f"cvae resume ({tag}): the step-6 exports (adapters or model, posterior, heads) are "
               f"byte-identical", f"differ or missing: {sorted(set(exports) - set(same))}")
        expect(lines(so_full, "train")[3:] == lines(so, "train") and len(lines(so, "train")) == 3
               and lines(so_full, "val") == lines(so, "val"),
               f"cvae resume ({tag}): the resumed steps log the same train lines (every J term) and val lines",
               f"{lines(so_full, 'train')[3:4]} vs {lines(so, 'train')[:1]}")
        measured = re.findall(r"^c_base=(\S+): the validation NLL", so_full, re.M)
        restored = re.findall(r"^c_base=(\S+)$", so, re.M)
        stored = struct.unpack("<d", a[2].get("c_base", b"\0" * 8))[0]
        expect(len(measured) == 1 and restored == measured and "the validation NLL" not in so
               and abs(stored - float(measured[0])) <= 1e-5 and stored > 0,
               f"cvae resume ({tag}): c_base measured once before step 1, kept in the checkpoint, restored (not "
               f"re-measured) by the resumed run", f"measured {measured}, resumed run logs {restored}, checkpoint {stored}")


def check_tw_lines(so, steps):
    """The train lines of a run with token_weighted_reconstruction_weight=0.5: tw= and w_tw= parse, w_tw = 0.5 tw and
    J = w_recon + w_kl + w_pv + w_rmkl + w_tw (each to its printed digits)."""
    train_lines = [l for l in so.splitlines() if l.startswith("train ")]
    assert len(train_lines) == steps, f"{len(train_lines)} train lines, expected {steps}"
    for line in train_lines:
        text, t = fields(line), numbers(line, TRAIN_KEYS + ("tw", "w_tw"))
        assert abs(t["w_tw"] - 0.5 * t["tw"]) <= g5_unit(text["w_tw"]) + 0.5 * g5_unit(text["tw"]), \
            f"step {text['step']}: w_tw={text['w_tw']}, expected 0.5 * tw = {0.5 * t['tw']}"
        ws = ("w_recon", "w_kl", "w_pv", "w_rmkl", "w_tw")
        slack = last_digit(text["loss"]) + sum(g5_unit(text[k]) for k in ws)
        assert abs(t["loss"] - sum(t[k] for k in ws)) <= slack, \
            f"step {text['step']}: loss={text['loss']} != the sum of the w_* (w_tw among them) {sum(t[k] for k in ws)}"
    assert float(fields(train_lines[-1])["tw"]) != 0, f"step {steps}: tw=0"


def test_cvae_token_weighted(tmp):
    """token_weighted_reconstruction_weight=0.5 (LoRA r=4 on the phase-1 export, pv and rmkl > 0): 3 steps, then
    resume=1 to step 4 twice from the step-3 checkpoint, once as it was (c_base from the checkpoint) and once with
    c_base=2.5 (which overrides it)."""
    tw = ["token_weighted_reconstruction_weight=0.5"]
    common = from_entangled(tmp) + CVAE + tw + ["checkpoint_every=3"]
    out, out_c = f"{tmp}/cvae_tw", f"{tmp}/cvae_tw_c"
    so1 = train(out, *common, "max_steps=3")
    check("mode=cvae token_weighted_reconstruction_weight=0.5: every train line has tw= and w_tw= = 0.5 tw, and J "
          "= w_recon + w_kl + w_pv + w_rmkl + w_tw", check_tw_lines, so1, 3)
    os.makedirs(out_c)
    shutil.copy(f"{out}/ckpt_00000003.bin", out_c)

    # (a) the first step after resume=1 (nonzero heads): the debug state against the replay
    path = f"{tmp}/cvae_debug_tw.safetensors"
    so2 = train(out, *common, "max_steps=4", "resume=1", f"debug_state={path}")
    tensors, meta = st_read(path)
    cv = json.loads(meta.get("cvae", "{}"))
    step4 = [fields(l) for l in so2.splitlines() if l.startswith("train step=4 ")]
    logged = step4[0] if step4 else {}
    file_tw, file_loss = floats(tensors["out.tw"][2])[0], floats(tensors["out.loss"][2])[0]
    measured = c_base_of(so1)
    expect("resumed from" in so2 and cv.get("token_weighted_reconstruction_weight") == 0.5
           and cv.get("posterior_variance_weight", 0) > 0 and cv.get("router_marginal_kl_to_prior_weight", 0) > 0
           and nonzero(tensors, "cvae.router_head.weight") and file_tw != 0 and "tw" in logged
           and abs(file_tw - float(logged["tw"])) <= g5_unit(logged["tw"])
           and abs(file_loss - float(logged["loss"])) <= 1e-5,
           "debug_state after resume=1 with token_weighted_reconstruction_weight=0.5: the metadata's weight, a nonzero "
           "out.tw equal to the logged tw=, out.loss the logged J, nonzero heads",
           f"metadata {cv}, out.tw {file_tw}, out.loss {file_loss}, logged {logged}")
    check("debug_state == PyTorch replay (mode=cvae LoRA, token_weighted_reconstruction_weight=0.5, the first step "
          "after resume=1)", replay, "cvae_tw", path)

    # (c) c_base: without c_base= the resumed run keeps the stored one; c_base=2.5 overrides it
    restored = re.findall(r"^c_base=(\S+)$", so2, re.M)
    expect(restored == [f"{measured:.5f}"] and "the validation NLL" not in so2
           and abs(cv.get("c_base", 0) - measured) <= 1e-5 * measured,
           "cvae resume without c_base=: the checkpoint's c_base (logged, in the debug state's metadata), not "
           "re-measured",
           f"measured {measured}, resumed run logs {restored}, metadata c_base {cv.get('c_base')}")
    path_c = f"{tmp}/cvae_debug_tw_c.safetensors"
    so3 = train(out_c, *common, "max_steps=4", "resume=1", "c_base=2.5", f"debug_state={path_c}")
    tensors_c, meta_c = st_read(path_c)
    cv_c = json.loads(meta_c.get("cvae", "{}"))
    outs = {k: floats(tensors_c[f"out.{k}"][2])[0] for k in ("loss", "recon", "kl", "pv", "rmkl", "tw")}
    w = CVAE_WEIGHTS
    j = outs["recon"] / 2.5 + w["beta"] * outs["kl"] + w["posterior_variance_weight"] * outs["pv"] + \
        w["router_marginal_kl_to_prior_weight"] * outs["rmkl"] + 0.5 * outs["tw"]
    train_c = [numbers(l, ("recon", "recon_ratio", "tw")) for l in so3.splitlines() if l.startswith("train step=4 ")]
    val_c = [numbers(l, ("recon_ratio", "nll")) for l in so3.splitlines() if l.startswith("val ")]
    recon = [float(x["recon"]) for x in step4]
    expect(re.findall(r"^c_base=(\S+)$", so3, re.M) == ["2.50000"] and "the validation NLL" not in so3
           and cv_c.get("c_base") == 2.5 and abs(outs["loss"] - j) <= 1e-5 * abs(j) and len(train_c) == 1
           and [train_c[0]["recon"]] == recon and abs(train_c[0]["recon_ratio"] - train_c[0]["recon"] / 2.5) <= 1.01e-5
           and len(val_c) == 7 and all(abs(v["recon_ratio"] - v["nll"] / 2.5) <= 1.01e-5 for v in val_c),
           "cvae resume with c_base=2.5: logs c_base=2.50000 (not the stored one), recon_ratio = nll / 2.5 in the "
           "train and val lines, J = recon / 2.5 + ... in the debug state (its metadata c_base 2.5); the same recon",
           f"c_base lines {re.findall(r'^c_base=.*$', so3, re.M)}, metadata {cv_c.get('c_base')}, J {outs['loss']} vs "
           f"{j}, train {train_c}, val {val_c[-1:]}")


def test_cvae_export_roundtrip(tmp):
    """test_cvae_runs' exports at step 3, loaded back with eval_only=1: the LoRA run's adapter_00000003/ (generator
    adapter, posterior/ and cvae_heads.safetensors) with load_adapter= on the same base, the from-scratch run's
    hf_00000003/ (with posterior/ and the heads) as init_from and model; without c_base= (the heads file's) the run's
    last val lines exactly, with c_base= the run's logged value (5 decimals) exactly but recon_ratio, within one unit
    of its last digit."""
    for tag, load in (("from-entangled LoRA r=4", lambda out: [f"load_adapter={out}/adapter_00000003"]),
                      ("from scratch, model=tiny lora_r=0",
                       lambda out: [f"model={out}/hf_00000003/config.json", f"init_from={out}/hf_00000003"])):
        if tag not in CVAE_RUNS:
            raise AssertionError("test_cvae_runs did not run")
        args, so, out = CVAE_RUNS[tag]
        c_base = re.search(r"^c_base=([0-9.]+)", so, re.M).group(1)
        want = [fields(l) for l in lines(so, "val")]
        for given in ([], [f"c_base={c_base}"]):
            ev = train(f"{tmp}/cvae_rt_{len(tag)}_{len(given)}", *args, *load(out), "eval_only=1", "gen_examples=0",
                       *given)
            got = [fields(l) for l in lines(ev, "val")]
            same = len(got) == len(want) == 7 and all(
                sorted(a) == sorted(b) and all(a[k] == b[k] for k in a if k != "recon_ratio" or not given)
                and abs(float(a["recon_ratio"]) - float(b["recon_ratio"])) <= 1.01e-5 for a, b in zip(want, got))
            expect(same and "loaded " in ev and "cvae_heads.safetensors" in ev,
                   f"mode=cvae export round trip ({tag}): eval_only=1 on the step-3 export "
                   f"{'with c_base= the logged ' + c_base if given else 'without c_base= (the exported one)'} reports "
                   f"the run's last val lines exactly{' (recon_ratio within 1e-5)' if given else ''}",
                   f"{lines(so, 'val')[:1]} vs {lines(ev, 'val')[:1]}")


def test_cvae_mpi(tmp):
    why = mpi_unavailable()
    for tag in ("LoRA", "from scratch"):
        name = (f"cvae mpirun -np 2 == one process ({tag}, router marginal KL on global batch moments): the train "
                f"lines' J terms within {TOL_MPI} relative, weights within {TOL_MPI} of each section's largest")
        if why:
            print(f"SKIP {name}: {why}", flush=True)
            continue
        model = from_entangled(tmp) if tag == "LoRA" else TINY + ["lora_r=0"]
        args = list(model) + CVAE + ["max_steps=4", "save_hf=0"]
        one = train(f"{tmp}/cvae_mpi1_{tag[0]}", *args)
        two = train(f"{tmp}/cvae_mpi2_{tag[0]}", *args, mpi_ranks=2)
        keys = ("loss", "recon", "kl", "pv", "rmkl", "grad_norm")
        ta = [fields(l) for l in lines(one, "train")]
        tb = [fields(l) for l in lines(two, "train")]
        worst_loss = max((max(abs(float(x[k]) - float(y[k])) - last_digit(x[k]), 0.0) / max(abs(float(x[k])), 1e-3)
                          for x, y in zip(ta, tb) for k in keys), default=1.0)
        a = read_checkpoint(f"{tmp}/cvae_mpi1_{tag[0]}/ckpt_00000004.bin")[2]
        b = read_checkpoint(f"{tmp}/cvae_mpi2_{tag[0]}/ckpt_00000004.bin")[2]
        sections = sorted(k for k in a if k.endswith(".weights"))
        worst_w = 0.0
        for k in sections:
            x, y = floats(a[k]), floats(b.get(k, b""))
            scale = max(abs(v) for v in x)
            worst_w = max(worst_w, max(abs(p - q) for p, q in zip(x, y)) / scale if len(x) == len(y) else 1.0)
        c_base = [struct.unpack("<d", s["c_base"])[0] if len(s.get("c_base", b"")) == 8 else float("nan") for s in (a, b)]
        print(f"     (cvae mpirun {tag}: largest term difference {worst_loss:.3g} relative, weights {worst_w:.3g})", flush=True)
        expect(len(ta) == len(tb) == 4 and float(ta[-1]["rmkl"]) > 0 and worst_loss <= TOL_MPI and sorted(a) == sorted(b)
               and "heads.weights" in sections and worst_w <= TOL_MPI and abs(c_base[0] - c_base[1]) <= TOL_MPI * c_base[0]
               and two.count("arc.cu train_cvae") == 1, name,
               f"largest term difference {worst_loss:.3g} ({ta[-1:]} vs {tb[-1:]}), weights {worst_w:.3g}")


def test_cvae_errors(tmp):
    out = [f"checkpoint_path={tmp}/cvae_err", "max_steps=1", "mode=cvae"]
    lora_base = from_entangled(tmp)
    expect_error("mode=cvae d_z=0", out + TINY + ["d_z=0"], r"d_z=0\b.*1\.\.256")
    expect_error("mode=cvae d_z=-3", out + TINY + ["d_z=-3"], r"d_z=-3\b")
    expect_error("mode=cvae tasks=no_such_task", out + TINY + ["tasks=no_such_task"], r"tasks.*no_such_task")
    expect_error("mode=cvae adapter=posterior (the posterior's adapter)", out + lora_base + ["adapter=posterior"],
                 r"adapter=posterior.*posterior_adapter=posterior")
    expect_error("mode=cvae posterior_adapter=default (the active adapter)", out + lora_base + ["posterior_adapter=default"],
                 r"posterior_adapter=default")
    expect_error("mode=cvae beta=-0.5", out + TINY + ["beta=-0.5"], r"beta=-0\.5")
    expect_error("mode=cvae posterior_variance_weight=-1", out + TINY + ["posterior_variance_weight=-1"],
                 r"posterior_variance_weight=-1")
    expect_error("mode=cvae c_base=1e-9 (a baseline that would swamp the objective)", out + TINY + ["c_base=1e-9"],
                 r"c_base=1e-09: expected a baseline NLL per token in \[1e-06, 1e\+06\]")
    expect_error("mode=cvae init_from a tiny-shaped export with model=small", out + ["model=small", f"init_from={entangled(tmp)}"],
                 re.escape(entangled(tmp)) + r".*tensor '\S+' has shape")
    ck = f"{tmp}/cvae_err_ckpt"
    train(ck, *TINY, *CVAE, "max_steps=1", "save_hf=0", "val_examples=1")
    expect_error("resume of a cvae checkpoint with d_z=4 (written with 8)",
                 [f"checkpoint_path={ck}", "mode=cvae", "max_steps=2", "resume=1", "d_z=4"] + TINY,
                 r"ckpt_00000001\.bin.*d_z=8.*d_z=4")
    expect_error("resume of a cvae checkpoint with mode=lm", [f"checkpoint_path={ck}", "max_steps=2", "resume=1"] + TINY,
                 r"ckpt_00000001\.bin.*mode=cvae.*mode=lm")


def normalized_log(so, out):
    """A run's stdout without its timing fields and progress lines, its folder written as RUN."""
    keep = []
    for l in so.replace(out, "RUN").splitlines():
        if l.startswith(("progress ", "timing ")):
            continue
        keep.append(re.sub(r" (ms|tokens_per_s|seconds|mfu|elapsed|eta)=\S+", "", l))
    return keep


def test_cvae_determinism(tmp):
    """test_cvae_runs' LoRA run again, into another folder: the same log and generation files, byte for byte."""
    if "from-entangled LoRA r=4" not in CVAE_RUNS:
        raise AssertionError("test_cvae_runs did not run")
    args, so_a, out_a = CVAE_RUNS["from-entangled LoRA r=4"]
    out_b = f"{tmp}/cvae_det_b"
    so_b = train(out_b, *args)
    la, lb = normalized_log(so_a, out_a), normalized_log(so_b, out_b)
    first = next((f"{x!r} vs {y!r}" for x, y in zip(la, lb) if x != y), f"{len(la)} vs {len(lb)} lines")
    expect(la == lb and sum(l.startswith(("train ", "val ", "gen ", "probe ", "final ")) for l in la) > 30,
           "cvae determinism: the same run twice logs the same lines (timing fields aside)", first[:300])
    files = ["generations_00000003.jsonl", "alignment_00000003.jsonl", "adapter_00000003/cvae_heads.safetensors",
             "adapter_00000003/posterior/adapter_model.safetensors"]
    differ = [f for f in files if not os.path.exists(f"{out_a}/{f}")
              or open(f"{out_a}/{f}", "rb").read() != open(f"{out_b}/{f}", "rb").read()]
    expect(not differ, "cvae determinism: the same generation and alignment files and exports, byte for byte", f"{differ}")


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
                                              test_generation, test_errors, test_learning, test_cvae_runs,
                                              test_cvae_debug_state, test_cvae_resume, test_cvae_token_weighted,
                                              test_cvae_export_roundtrip, test_cvae_mpi, test_cvae_errors,
                                              test_cvae_determinism)], "arc_test_cvae_")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
