#!/usr/bin/env python3
"""Tests of dev/make_tiny_qwen2.py, the tiny random Qwen2 checkpoint in Hugging Face's layout; standard library only.

Run from the repository root:  python3 test/test_hf_files.py   (about 6 s; 3 s of it importing torch, when present)
Prints "PASS name" / "FAIL name: why" / "SKIP name: why" per check, then "<N> passed, <M> failed"; exits 1 if
anything failed. For every dtype (bf16, f16, f32) and shard count (1, 3) the checkpoint is written and checked:
every file passes test/read_safetensors.py (the reference loader's rules), the tensor names and shapes are
Qwen2ForCausalLM's (listed here, not taken from the script), the index matches the shards, config.json holds the
sizes, the values have the documented distributions, and the bf16 and f16 values are the f32 values of the same seed
rounded to nearest (even). When /usr/bin/python3 has torch, torch.frombuffer decodes the same values as
test/read_safetensors.py (checked without the safetensors package); otherwise that check is a SKIP.
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "dev"))
from harness import Skip, check, finish  # noqa: E402
import make_tiny_qwen2  # noqa: E402

SCRIPT = os.path.join(ROOT, "dev", "make_tiny_qwen2.py")
READER = os.path.join(ROOT, "test", "read_safetensors.py")
SIZES = {"BF16": 2, "F16": 2, "F32": 4}
# the model of the dtype x shard-count checks: small, so that the suite stays fast on a loaded machine
MODEL = {"layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "intermediate": 64, "vocab": 160}
MODEL_ARGS = [a for k, v in MODEL.items() for a in ("--" + k.replace("_", "-"), str(v))]
TMP = tempfile.mkdtemp(prefix="test_hf_files.")


def make(name, *args):
    """Runs the script into TMP/name; returns the folder."""
    out = os.path.join(TMP, name)
    proc = subprocess.run([sys.executable, SCRIPT, out, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"make_tiny_qwen2.py {' '.join(args)}: exit {proc.returncode}: {proc.stderr}"
    return out


def read(path):
    """{name: (dtype, shape, values)} and {metadata key: value} of a file, through test/read_safetensors.py --values."""
    proc = subprocess.run([sys.executable, READER, path, "--values"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"read_safetensors.py refuses {path}: {proc.stderr.strip()}"
    tensors, meta, last = {}, {}, None
    for line in proc.stdout.splitlines():
        if line.startswith("  = "):
            tensors[last][2].extend(float(v) for v in line[4:].split())
        elif line.startswith("__metadata__ "):
            key, value = line[len("__metadata__ "):].split(" ", 1)
            meta[json.loads(key)] = json.loads(value)
        else:
            last, dtype, shape = line.split(" ", 2)
            tensors[last] = (dtype, json.loads(shape), [])
    return tensors, meta


def expected_shapes(layers, hidden, heads, kv_heads, intermediate, vocab, untied):
    """Qwen2ForCausalLM's state_dict names and shapes (transformers' modeling_qwen2)."""
    hd = hidden // heads
    qd, kd = heads * hd, kv_heads * hd
    out = {"model.embed_tokens.weight": [vocab, hidden], "model.norm.weight": [hidden]}
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": [hidden], p + "post_attention_layernorm.weight": [hidden],
                    p + "self_attn.q_proj.weight": [qd, hidden], p + "self_attn.q_proj.bias": [qd],
                    p + "self_attn.k_proj.weight": [kd, hidden], p + "self_attn.k_proj.bias": [kd],
                    p + "self_attn.v_proj.weight": [kd, hidden], p + "self_attn.v_proj.bias": [kd],
                    p + "self_attn.o_proj.weight": [hidden, qd], p + "mlp.gate_proj.weight": [intermediate, hidden],
                    p + "mlp.up_proj.weight": [intermediate, hidden], p + "mlp.down_proj.weight": [hidden, intermediate]})
    if untied:
        out["lm_head.weight"] = [vocab, hidden]
    return out


def load(folder):
    """Every tensor of a checkpoint folder, checking the index against its shards: {name: (dtype, shape, values)}."""
    names = sorted(os.listdir(folder))
    if "model.safetensors" in names:
        assert not any(n.startswith("model-") or n.endswith(".index.json") for n in names), f"stray files: {names}"
        tensors, meta = read(os.path.join(folder, "model.safetensors"))
        assert meta == {"format": "pt"}, f"metadata {meta}"
        return tensors
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        index = json.load(f)
    assert set(index) == {"metadata", "weight_map"}, f"index keys {sorted(index)}"
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert shards == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)], f"shard names {shards}"
    assert sorted(n for n in names if n.startswith("model-")) == shards, f"files {names} vs index {shards}"
    tensors = {}
    for shard in shards:
        part, meta = read(os.path.join(folder, shard))
        assert part and meta == {"format": "pt"}, f"{shard}: {len(part)} tensors, metadata {meta}"
        assert sorted(part) == sorted(k for k, v in index["weight_map"].items() if v == shard), f"{shard} vs the index"
        assert not set(part) & set(tensors), f"{shard} repeats tensors"
        tensors.update(part)
    total = sum(len(v) * SIZES[d] for d, _, v in tensors.values())
    assert index["metadata"] == {"total_size": total}, f"metadata {index['metadata']}, data bytes {total}"
    return tensors


def stats(values):
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def bf16_nearest(x):
    """x rounded to bfloat16 by distance (ties to an even last mantissa bit); independent of the script's bit trick."""
    (bits,) = struct.unpack("<I", struct.pack("<f", x))
    lo, hi = bits & 0xFFFF0000, (bits & 0xFFFF0000) + 0x10000
    flo, fhi = (struct.unpack("<f", struct.pack("<I", b))[0] for b in (lo, hi))
    dlo, dhi = abs(x - flo), abs(fhi - x)
    return flo if dlo < dhi or (dlo == dhi and not (lo >> 16) & 1) else fhi


def check_checkpoint(dtype, shards, untied):
    args = MODEL_ARGS + ["--dtype", dtype, "--shards", str(shards), "--seed", "3"] + (["--untied"] if untied else [])
    folder = make(f"{dtype}_{shards}_{int(untied)}", *args)
    tensors = load(folder)
    want = expected_shapes(untied=untied, **MODEL)
    assert sorted(tensors) == sorted(want), f"names: extra {sorted(set(tensors) - set(want))}, missing {sorted(set(want) - set(tensors))}"
    for name, (dt, shape, values) in tensors.items():
        assert dt == dtype.upper() and shape == want[name], f"{name}: {dt} {shape}, expected {dtype.upper()} {want[name]}"
        assert len(values) == math.prod(shape) and all(math.isfinite(v) for v in values), f"{name}: values"
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    sizes = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": MODEL["hidden"],
             "intermediate_size": MODEL["intermediate"], "num_hidden_layers": MODEL["layers"], "num_attention_heads": MODEL["heads"],
             "num_key_value_heads": MODEL["kv_heads"], "vocab_size": MODEL["vocab"], "tie_word_embeddings": not untied, "use_sliding_window": False,
             "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]}
    assert {k: config.get(k) for k in sizes} == sizes, f"config.json: {config}"
    return tensors


def check_distributions(tensors):
    mean, std = stats([v for name, t in tensors.items() if name.endswith("proj.weight") or "embed" in name for v in t[2]])
    assert abs(mean) < 0.001 and 0.019 < std < 0.021, f"matrices mean {mean} std {std}, expected normal(0, 0.02)"
    mean, std = stats([v for name, t in tensors.items() if name.endswith(".bias") for v in t[2]])
    assert abs(mean) < 0.003 and 0.008 < std < 0.012, f"biases mean {mean} std {std}, expected normal(0, 0.01)"
    mean, std = stats([v for name, t in tensors.items() if name.endswith("norm.weight") for v in t[2]])
    assert abs(mean - 1) < 0.006 and 0.015 < std < 0.025, f"norm weights mean {mean} std {std}, expected 1 + normal(0, 0.02)"


def check_rounding(exact, rounded, dtype):
    """Every value of `rounded` (bf16 or f16) is the nearest of its dtype to the f32 value of the same seed."""
    for name, (_, _, values) in exact.items():
        for i, (x, y) in enumerate(zip(values, rounded[name][2])):
            if dtype == "bf16":
                ok = y == bf16_nearest(x)
            else:   # f16: within half a unit in the last place (11 significant bits; 2^-24 apart below 2^-14)
                ok = abs(y - x) <= max(2.0 ** (math.frexp(x)[1] - 12), 2.0 ** -25)
            assert ok, f"{name}[{i}]: {dtype} {y!r} is not {x!r} rounded"


def check_all_layouts():
    exact = {}
    for dtype in ("f32", "bf16", "f16"):
        for shards in (1, 3):
            name = f"checkpoint {dtype}, {shards} file(s)"
            check(name, lambda d=dtype, s=shards: exact.update({(d, s): check_checkpoint(d, s, False)}))
    check("checkpoint bf16 untied: lm_head.weight, tie_word_embeddings false", check_checkpoint, "bf16", 3, True)
    if len(exact) < 6:
        return

    def same_in_shards():
        for dtype in ("f32", "bf16", "f16"):
            assert exact[(dtype, 1)] == exact[(dtype, 3)], f"{dtype}: sharded values differ from the single file's"
    check("sharded and single-file checkpoints hold the same tensors", same_in_shards)
    check("values: normal(0, 0.02) matrices, normal(0, 0.01) biases, norms 1 + normal(0, 0.02)", check_distributions, exact[("f32", 1)])
    check("bf16 values are the f32 values rounded to nearest even", check_rounding, exact[("f32", 1)], exact[("bf16", 1)], "bf16")
    check("f16 values are the f32 values rounded to nearest", check_rounding, exact[("f32", 1)], exact[("f16", 1)], "f16")
    check("torch.frombuffer decodes the same values (no safetensors package)", check_torch, exact)


# prints {file: {tensor: values}} of the safetensors files given as arguments, decoded by torch.frombuffer
TORCH_DECODE = r"""
import json, struct, sys, torch
dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
out = {}
for path in sys.argv[1:]:
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    out[path] = {}
    for name, info in json.loads(raw[8:8 + n]).items():
        if name != "__metadata__":
            b, e = info["data_offsets"]
            t = torch.frombuffer(bytearray(raw[8 + n + b:8 + n + e]), dtype=dtypes[info["dtype"]]).reshape(info["shape"])
            out[path][name] = t.float().flatten().tolist()
print(json.dumps(out))
"""


def check_torch(exact):
    probe = subprocess.run(["/usr/bin/python3", "-c", "import torch"], capture_output=True, timeout=60) if os.path.exists("/usr/bin/python3") else None
    if probe is None or probe.returncode != 0:
        raise Skip("/usr/bin/python3 has no torch")
    paths = {dtype: os.path.join(TMP, f"{dtype}_1_0", "model.safetensors") for dtype in ("bf16", "f16", "f32")}
    proc = subprocess.run(["/usr/bin/python3", "-c", TORCH_DECODE, *paths.values()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"torch decode: {proc.stderr.strip()[-300:]}"
    decoded = json.loads(proc.stdout)
    for dtype, path in paths.items():
        for name, (_, _, values) in exact[(dtype, 1)].items():
            assert decoded[path][name] == values, f"{dtype} {name}: torch decodes other values"


def check_bf16_bits():
    cases = {0x3F808000: 0x3F80, 0x3F818000: 0x3F82, 0xBF808000: 0xBF80, 0xBF818000: 0xBF82, 0x3F80FFFF: 0x3F81,
             0x3F807FFF: 0x3F80, 0x00008000: 0x0000, 0x7F7F7FFF: 0x7F7F}
    for bits, want in cases.items():
        x = struct.unpack("<f", struct.pack("<I", bits))[0]
        got = make_tiny_qwen2.bf16_bits(x)
        assert got == want, f"bf16_bits(0x{bits:08X}) = 0x{got:04X}, expected 0x{want:04X}"


def check_deterministic():
    a, b, c = (make(f"seed_{k}", "--seed", str(s)) for k, s in ((0, 7), (1, 7), (2, 8)))
    blob = [open(os.path.join(d, "model.safetensors"), "rb").read() for d in (a, b, c)]
    assert blob[0] == blob[1], "the same seed gave different bytes"
    assert blob[0] != blob[2], "different seeds gave the same bytes"


def check_relayout():
    folder = make("relayout", "--shards", "4")
    make("relayout", "--shards", "2")
    names = sorted(os.listdir(folder))
    assert names == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json"], f"after 4 then 2 shards: {names}"
    make("relayout")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"], f"after 1 file: {os.listdir(folder)}"


def check_bad_args():
    for args, says in ((["--heads", "3"], "--heads must divide"), (["--kv-heads", "3"], "--kv-heads must divide"),
                       (["--shards", "99"], "more than the model has tensors"), (["--layers", "0"], "--layers must be >= 1"),
                       (["--dtype", "f64"], "invalid choice")):
        proc = subprocess.run([sys.executable, SCRIPT, os.path.join(TMP, "bad"), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and says in proc.stderr, f"{args}: exit {proc.returncode}, stderr {proc.stderr.strip()[-200:]}"
    assert not os.path.exists(os.path.join(TMP, "bad")), "a refused run created its folder"


def main():
    try:
        check_all_layouts()
        check("bf16_bits: round to nearest even on the float32 bits", check_bf16_bits)
        check("the same seed gives the same bytes, another seed other bytes", check_deterministic)
        check("rewriting a folder in another layout removes the old weight files", check_relayout)
        check("bad arguments are refused (exit 2, a message)", check_bad_args)
    finally:
        subprocess.run(["rm", "-rf", TMP])
    finish()


if __name__ == "__main__":
    main()
