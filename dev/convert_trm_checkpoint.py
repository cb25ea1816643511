#!/usr/bin/env python3
"""Convert an upstream PyTorch TRM/ETRM checkpoint into a .safetensors file with the clean upstream names.

Usage:
    python3 dev/convert_trm_checkpoint.py IN OUT.safetensors [--drop-puzzle-emb]
    python3 dev/convert_trm_checkpoint.py IN --list [--drop-puzzle-emb]

IN is what upstream pretrain.py writes, `torch.save(model.state_dict(), path)`. Its keys may carry the prefixes
`_orig_mod.` (torch.compile) and `model.` (the ACT loss-head wrapper), e.g.
    _orig_mod.model.inner.L_level.layers.0.self_attn.qkv_proj.weight
which become the clean upstream names
    inner.L_level.layers.0.self_attn.qkv_proj.weight, inner.puzzle_emb.weights, inner.H_init, encoder.... .
Every tensor keeps its dtype (BF16 stays BF16, F32 stays F32, ...).

Options:
    --drop-puzzle-emb   skip inner.puzzle_emb.* (e.g. to load a TRM checkpoint as an ETRM decoder)
    --list              print every tensor's clean name, dtype and shape, then exit without writing

torch is needed only to read PyTorch checkpoints, and only this script needs it (it is imported inside
load_torch_checkpoint). IN may also be a .safetensors file (detected by content), read with the standard
library: that re-cleans names / drops the puzzle embedding of an existing file, and lets the conversion be
tested without torch (test/test_safetensors.cpp does so). The output is written with struct + json only.
"""
import argparse
import json
import os
import struct
import sys
from collections import namedtuple

STRIP_PREFIXES = ("_orig_mod.", "model.")
PUZZLE_EMB_PREFIX = "inner.puzzle_emb."
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

# One tensor as raw little-endian bytes; read() returns them (called once, while writing, so a big checkpoint
# is never held twice in memory).
RawTensor = namedtuple("RawTensor", "name dtype shape nbytes read")


class ConvertError(Exception):
    """A problem with the input, reported as one line "error: ..." and exit status 1."""


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# ----------------------------------------------------------------------------------------------------------------
# Names


def clean_name(key):
    """Strip leading '_orig_mod.' / 'model.' prefixes (in any order, repeatedly); returns (name, prefixes)."""
    stripped = []
    while True:
        for p in STRIP_PREFIXES:
            if key.startswith(p):
                key = key[len(p):]
                stripped.append(p)
                break
        else:
            return key, stripped


def convert(tensors, drop_puzzle_emb):
    """Rename to clean names and optionally drop the puzzle embedding.
    Returns (kept, dropped, strip_counts {prefix: how many names had it})."""
    kept, dropped, strip_counts, seen = [], [], {}, {}
    for t in tensors:
        name, stripped = clean_name(t.name)
        for p in stripped:
            strip_counts[p] = strip_counts.get(p, 0) + 1
        if not name:
            raise ConvertError(f"key {t.name!r} is nothing but prefixes")
        if name in seen:
            raise ConvertError(f"keys {seen[name]!r} and {t.name!r} both become {name!r}")
        seen[name] = t.name
        t = t._replace(name=name)
        (dropped if drop_puzzle_emb and name.startswith(PUZZLE_EMB_PREFIX) else kept).append(t)
    return kept, dropped, strip_counts


# ----------------------------------------------------------------------------------------------------------------
# safetensors (standard library only)


def safetensors_header(tensors, metadata=None):
    """The header bytes (length prefix included) for `tensors` written sorted by name, packed from offset 0,
    JSON padded with spaces to a multiple of 8; returns (header_bytes, tensors_in_file_order)."""
    order = sorted(tensors, key=lambda t: t.name)
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    for t in order:
        if t.name == "__metadata__" or t.name in header:
            raise ConvertError(f"tensor name {t.name!r} is reserved or repeated")
        if t.dtype not in DTYPE_SIZES:
            raise ConvertError(f"tensor {t.name!r} has unsupported dtype {t.dtype}")
        need = numel(t.shape) * DTYPE_SIZES[t.dtype]
        if t.nbytes != need:
            raise ConvertError(f"tensor {t.name!r} ({t.dtype} {list(t.shape)}) has {t.nbytes} bytes, needs {need}")
        header[t.name] = {"dtype": t.dtype, "shape": [int(d) for d in t.shape],
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h, order


def write_safetensors(path, tensors, metadata=None):
    """Write atomically (OUT.tmp, then renamed); each tensor's bytes are fetched with read() one at a time."""
    head, order = safetensors_header(tensors, metadata)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            for t in order:
                b = t.read()
                if len(b) != t.nbytes:
                    raise ConvertError(f"tensor {t.name!r}: got {len(b)} bytes, expected {t.nbytes}")
                f.write(b)
        os.replace(tmp, path)
    except OSError as e:
        raise ConvertError(f"cannot write {path}: {e.strerror or e}")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def looks_like_safetensors(path):
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + n <= os.path.getsize(path)


def read_safetensors(path):
    """Returns (tensors, metadata) of a safetensors file, validated enough to copy it safely."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except ValueError as e:
        raise ConvertError(f"{path}: malformed safetensors header: {e}")
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: malformed safetensors header: not a JSON object")
    data = memoryview(raw)[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = []
    for name, info in header.items():
        try:
            dtype, shape, (b, e) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ConvertError(f"{path}: tensor {name!r}: malformed entry {info!r}")
        if dtype not in DTYPE_SIZES:
            raise ConvertError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not (0 <= b <= e <= len(data)) or e - b != numel(shape) * DTYPE_SIZES[dtype]:
            raise ConvertError(f"{path}: tensor {name!r}: data_offsets [{b}, {e}] do not fit dtype {dtype} "
                               f"shape {shape} inside the {len(data)}-byte data block")
        tensors.append(RawTensor(name, dtype, shape, e - b, lambda b=b, e=e: bytes(data[b:e])))
    return tensors, metadata


# ----------------------------------------------------------------------------------------------------------------
# PyTorch checkpoints


def load_torch_checkpoint(path):
    try:
        import torch
    except ImportError:
        raise ConvertError(f"reading the PyTorch checkpoint {path} needs torch, which is not installed "
                           "(pip install torch; only this script needs it)")
    if sys.byteorder != "little":
        raise ConvertError("this script assumes a little-endian machine")
    dtypes = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except TypeError:                       # torch < 1.13 has no weights_only
            obj = torch.load(path, map_location="cpu")
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConvertError(f"{path}: torch.load failed ({type(e).__name__}: {msg}); is it a torch.save() checkpoint?")

    def is_state_dict(d):
        return isinstance(d, dict) and len(d) > 0 and all(isinstance(k, str) for k in d) and \
            all(isinstance(v, torch.Tensor) for v in d.values())

    if not is_state_dict(obj):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj, dict) and is_state_dict(obj.get(wrapper)):
                print(f"note: using the state_dict under key {wrapper!r} of {path}")
                obj = obj[wrapper]
                break
        else:
            if isinstance(obj, dict):
                bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:3]
                raise ConvertError(f"{path}: not a state_dict: " + (f"keys {bad} do not hold tensors" if bad else
                                                                     "it is empty"))
            raise ConvertError(f"{path}: not a state_dict: it holds a {type(obj).__name__}, expected a dict of tensors")

    def tensor_reader(t):
        def read():
            flat = t.detach().to("cpu").contiguous().reshape(-1)
            nbytes = flat.numel() * flat.element_size()
            if nbytes == 0:
                return b""
            buf = bytearray(nbytes)
            torch.frombuffer(buf, dtype=torch.uint8).copy_(flat.view(torch.uint8))
            return buf
        return read

    tensors = []
    for key, t in obj.items():
        if t.dtype not in dtypes:
            raise ConvertError(f"{path}: tensor {key!r} has dtype {t.dtype}, which safetensors cannot hold here")
        if t.layout != torch.strided:
            raise ConvertError(f"{path}: tensor {key!r} is not dense ({t.layout})")
        tensors.append(RawTensor(key, dtypes[t.dtype], list(t.shape), t.numel() * t.element_size(), tensor_reader(t)))
    return tensors


# ----------------------------------------------------------------------------------------------------------------


def summarize(tensors):
    by_dtype = {}
    for t in tensors:
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + 1
    params = sum(numel(t.shape) for t in tensors)
    nbytes = sum(t.nbytes for t in tensors)
    kinds = ", ".join(f"{n} {d}" for d, n in sorted(by_dtype.items()))
    return (f"{len(tensors)} tensor{'' if len(tensors) == 1 else 's'} ({kinds or 'none'}), {params:,} parameters, "
            f"{nbytes / 1e6:.1f} MB")


def run(argv):
    ap = argparse.ArgumentParser(description="Convert an upstream TRM/ETRM PyTorch checkpoint to safetensors "
                                             "with clean upstream names.")
    ap.add_argument("input", metavar="IN", help="torch.save(model.state_dict()) checkpoint, or a .safetensors file")
    ap.add_argument("output", metavar="OUT.safetensors", nargs="?")
    ap.add_argument("--drop-puzzle-emb", action="store_true", help=f"skip {PUZZLE_EMB_PREFIX}*")
    ap.add_argument("--list", action="store_true", help="print names, dtypes and shapes, then exit")
    args = ap.parse_args(argv)
    if not args.list and not args.output:
        ap.error("OUT.safetensors is required (or pass --list)")

    if not os.path.isfile(args.input):
        raise ConvertError(f"{args.input}: no such file")
    if looks_like_safetensors(args.input):
        tensors, _ = read_safetensors(args.input)
        kind = "safetensors"
    else:
        tensors = load_torch_checkpoint(args.input)
        kind = "PyTorch checkpoint"
    kept, dropped, strip_counts = convert(tensors, args.drop_puzzle_emb)

    print(f"read {args.input} ({kind}): {summarize(tensors)}")
    for p in STRIP_PREFIXES:
        if p in strip_counts:
            print(f"  stripped prefix {p!r} from {strip_counts[p]} names")
    if dropped:
        print(f"  dropped {PUZZLE_EMB_PREFIX}*: {summarize(dropped)}")
    elif args.drop_puzzle_emb:
        print(f"  --drop-puzzle-emb: no {PUZZLE_EMB_PREFIX}* tensor found")

    if args.list:
        dropped_names = {t.name for t in dropped}
        for t in sorted(kept + dropped, key=lambda t: t.name):
            mark = "  (dropped)" if t.name in dropped_names else ""
            print(f"{t.name} {t.dtype} {list(t.shape)}{mark}")
        return
    metadata = {"format": "pt", "converted_from": os.path.basename(args.input)}
    if dropped:
        metadata["dropped"] = PUZZLE_EMB_PREFIX + "*"
    write_safetensors(args.output, kept, metadata)
    print(f"wrote {args.output}: {summarize(kept)}")


def main():
    try:
        run(sys.argv[1:])
    except ConvertError as e:
        sys.exit(f"error: {e}")
    except BrokenPipeError:                     # e.g. `--list | head`
        sys.stderr.close()
    except OSError as e:
        sys.exit(f"error: {e.filename}: {e.strerror or e}" if e.filename else f"error: {e.strerror or e}")


if __name__ == "__main__":
    main()
