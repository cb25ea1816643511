#!/usr/bin/env python3
"""Writes a tiny random Qwen2 checkpoint in Hugging Face's layout, standard library only, so that a loader can be
tested without downloading a model.

Usage: python3 dev/make_tiny_qwen2.py OUT_DIR [--layers 2] [--hidden 64] [--heads 4] [--kv-heads 2]
                                      [--intermediate 128] [--vocab 256] [--dtype bf16|f16|f32] [--shards N]
                                      [--untied] [--seed S]

OUT_DIR/config.json       Qwen2ForCausalLM's configuration (the keys of Qwen/Qwen2.5-0.5B's config.json)
OUT_DIR/model.safetensors with --shards 1 (the default); with --shards N > 1, model-0000K-of-0000N.safetensors
                          and model.safetensors.index.json ({"metadata": {"total_size": bytes of tensor data},
                          "weight_map": {tensor: shard file}}), as transformers' save_pretrained writes them

Tensors under transformers' names and shapes (D hidden, I intermediate, V vocab, QD = heads * head_dim, KD =
kv_heads * head_dim): model.embed_tokens.weight (V, D); per layer N model.layers.N.input_layernorm.weight (D),
self_attn.{q,k,v}_proj.weight (QD|KD|KD, D) and .bias, self_attn.o_proj.weight (D, QD),
post_attention_layernorm.weight (D), mlp.gate_proj.weight and mlp.up_proj.weight (I, D), mlp.down_proj.weight (D, I);
model.norm.weight (D); lm_head.weight (V, D) only with --untied (tie_word_embeddings is true otherwise). Values:
matrices normal(0, 0.02), biases normal(0, 0.01), norm weights 1 + normal(0, 0.02), from random.Random(seed), then
stored as the dtype: F32, F16 (struct's half, rounded to nearest even), or BF16 (the float32 bits rounded to nearest
even). With --shards N the tensors are cut into N consecutive groups of nearly equal counts. Each safetensors file has the metadata {"format": "pt"} and is written atomically (a temporary name, then a
rename); weight files of another layout left in OUT_DIR (model.safetensors, the index, model-*-of-*.safetensors) are
removed. The same arguments always give the same bytes.
"""
import argparse
import json
import os
import random
import re
import struct
import sys

DTYPES = {"bf16": ("BF16", 2, "bfloat16"), "f16": ("F16", 2, "float16"), "f32": ("F32", 4, "float32")}


def bf16_bits(x):
    """The bfloat16 bits of x: its float32 bits rounded to nearest even on the top 16 (x finite)."""
    (bits,) = struct.unpack("<I", struct.pack("<f", x))
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def encode(values, dtype):
    """Little-endian bytes of values as the safetensors dtype."""
    if dtype == "BF16":
        return struct.pack(f"<{len(values)}H", *(bf16_bits(v) for v in values))
    return struct.pack(f"<{len(values)}{'e' if dtype == 'F16' else 'f'}", *values)


def qwen2_tensors(a, rng):
    """[(name, shape, values)] of a random Qwen2ForCausalLM, in transformers' module order."""
    hd = a.hidden // a.heads
    qd, kd = a.heads * hd, a.kv_heads * hd

    def normal(shape, std, mean=0.0):
        n = 1
        for d in shape:
            n *= d
        return [mean + rng.gauss(0.0, std) for _ in range(n)]

    out = [("model.embed_tokens.weight", [a.vocab, a.hidden], normal([a.vocab, a.hidden], 0.02))]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        out.append((p + "input_layernorm.weight", [a.hidden], normal([a.hidden], 0.02, 1.0)))
        for proj, rows in (("q_proj", qd), ("k_proj", kd), ("v_proj", kd)):
            out.append((p + f"self_attn.{proj}.weight", [rows, a.hidden], normal([rows, a.hidden], 0.02)))
            out.append((p + f"self_attn.{proj}.bias", [rows], normal([rows], 0.01)))
        out.append((p + "self_attn.o_proj.weight", [a.hidden, qd], normal([a.hidden, qd], 0.02)))
        out.append((p + "post_attention_layernorm.weight", [a.hidden], normal([a.hidden], 0.02, 1.0)))
        for proj in ("gate_proj", "up_proj"):
            out.append((p + f"mlp.{proj}.weight", [a.intermediate, a.hidden], normal([a.intermediate, a.hidden], 0.02)))
        out.append((p + "mlp.down_proj.weight", [a.hidden, a.intermediate], normal([a.hidden, a.intermediate], 0.02)))
    out.append(("model.norm.weight", [a.hidden], normal([a.hidden], 0.02, 1.0)))
    if a.untied:
        out.append(("lm_head.weight", [a.vocab, a.hidden], normal([a.vocab, a.hidden], 0.02)))
    return out


def config(a):
    """config.json's object: the keys of Qwen2.5-0.5B's, with this model's sizes."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": a.vocab - 1,
        "eos_token_id": a.vocab - 1, "hidden_act": "silu", "hidden_size": a.hidden, "initializer_range": 0.02,
        "intermediate_size": a.intermediate, "max_position_embeddings": 2048, "max_window_layers": a.layers,
        "model_type": "qwen2", "num_attention_heads": a.heads, "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 2048,
        "tie_word_embeddings": not a.untied, "torch_dtype": DTYPES[a.dtype][2], "use_cache": True,
        "use_sliding_window": False, "vocab_size": a.vocab,
    }


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def safetensors_bytes(tensors, dtype):
    """A safetensors file of [(name, shape, values)]: tensors sorted by name, header padded to 8 bytes."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, shape, values in sorted(tensors, key=lambda t: t[0]):
        blob = encode(values, dtype)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def split_shards(tensors, n):
    """n consecutive groups of tensors, of as equal counts as can be (none empty: n <= len(tensors))."""
    shards = [[] for _ in range(n)]
    for k, t in enumerate(tensors):
        shards[k * n // len(tensors)].append(t)
    return shards


def remove_stale(out_dir, written):
    """Removes the weight files of out_dir this run did not write (a checkpoint of another layout left there)."""
    for name in os.listdir(out_dir):
        stale = name in ("model.safetensors", "model.safetensors.index.json") or re.fullmatch(r"model-\d+-of-\d+\.safetensors", name)
        if stale and name not in written:
            os.remove(os.path.join(out_dir, name))


def parse_args(argv):
    ap = argparse.ArgumentParser(description="Write a tiny random Qwen2 checkpoint in Hugging Face's layout.")
    ap.add_argument("out_dir")
    for flag, default in (("--layers", 2), ("--hidden", 64), ("--heads", 4), ("--kv-heads", 2),
                          ("--intermediate", 128), ("--vocab", 256), ("--shards", 1), ("--seed", 0)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--untied", action="store_true", help="a separate lm_head.weight (default: tied to the embedding)")
    a = ap.parse_args(argv)
    for name in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab", "shards"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.hidden % a.heads or a.heads % a.kv_heads or (a.hidden // a.heads) % 2:
        ap.error("--heads must divide --hidden into an even head width, and --kv-heads must divide --heads")
    if a.shards > 2 + 12 * a.layers + (1 if a.untied else 0):
        ap.error(f"--shards {a.shards} is more than the model has tensors")
    return a


def main(argv):
    a = parse_args(argv)
    dtype, esize, _ = DTYPES[a.dtype]
    tensors = qwen2_tensors(a, random.Random(a.seed))
    os.makedirs(a.out_dir, exist_ok=True)
    if a.shards == 1:
        written = ["model.safetensors"]
        write_atomic(os.path.join(a.out_dir, written[0]), safetensors_bytes(tensors, dtype))
    else:
        weight_map, written = {}, ["model.safetensors.index.json"]
        for k, shard in enumerate(split_shards(tensors, a.shards)):
            written.append(f"model-{k + 1:05d}-of-{a.shards:05d}.safetensors")
            write_atomic(os.path.join(a.out_dir, written[-1]), safetensors_bytes(shard, dtype))
            weight_map.update({name: written[-1] for name, _, _ in shard})
        index = {"metadata": {"total_size": sum(len(v) for _, _, v in tensors) * esize},
                 "weight_map": dict(sorted(weight_map.items()))}
        write_atomic(os.path.join(a.out_dir, written[0]), json.dumps(index, indent=2).encode() + b"\n")
    remove_stale(a.out_dir, written)
    write_atomic(os.path.join(a.out_dir, "config.json"), json.dumps(config(a), indent=2, sort_keys=True).encode() + b"\n")
    print(f"wrote {a.out_dir}: {len(tensors)} tensors, {dtype}, {a.shards} file(s)")


if __name__ == "__main__":
    main(sys.argv[1:])
