#!/usr/bin/env python3
"""Standard-library reader of safetensors files, used by test/test_safetensors.cpp to check that files written by
common/safetensors.h are what the reference loaders (the `safetensors` package, torch) accept.

Usage: python3 test/read_safetensors.py FILE [--values]

Prints one line per tensor, sorted by name:          <name> <dtype> <shape>        e.g.  weights F32 [2, 3]
(with --values, followed by a line "  = v0 v1 ..." of its elements; floats in Python's repr, bools as 0/1),
then one line per metadata entry, sorted by key:     __metadata__ <key> <value>    key and value as JSON strings
(ASCII, non-ASCII characters as \\uXXXX). A name with spaces, quotes or non-printable characters is also printed
as a JSON string.

Validates as strictly as the reference (Rust) loader: header length inside the file, UTF-8 JSON object starting
with '{', no duplicate keys, "__metadata__" a string-to-string map, every tensor exactly {dtype, shape,
data_offsets} with a known dtype and non-negative integer dims, the tensors packed back to back from offset 0 to
the end of the file with exactly numel * dtype size bytes each. Any problem: "error: FILE: ..." and exit 1.
"""
import json
import struct
import sys

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
UNPACK = {"F64": "d", "F32": "f", "F16": "e", "I64": "q", "I32": "i", "I16": "h", "I8": "b",
          "U64": "Q", "U32": "I", "U16": "H", "U8": "B", "BOOL": "B"}


def fail(path, msg):
    sys.exit(f"error: {path}: {msg}")


def no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def show(s):
    simple = s and all(33 <= ord(c) < 127 and c not in '"\\' for c in s)
    return s if simple else json.dumps(s)


def decode(dtype, raw):
    if dtype == "BF16":
        bits = struct.unpack(f"<{len(raw) // 2}H", raw)
        return [struct.unpack("<f", struct.pack("<I", b << 16))[0] for b in bits]
    if dtype not in UNPACK:
        return [f"0x{b:02x}" for b in raw]
    size = DTYPE_SIZES[dtype]
    return list(struct.unpack(f"<{len(raw) // size}{UNPACK[dtype]}", raw))


def main():
    args = [a for a in sys.argv[1:] if a != "--values"]
    values = "--values" in sys.argv[1:]
    if len(args) != 1:
        sys.exit("usage: python3 test/read_safetensors.py FILE [--values]")
    path = args[0]
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        sys.exit(f"error: cannot read {path}: {e.strerror}")
    if len(raw) < 8:
        fail(path, f"only {len(raw)} bytes, fewer than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        fail(path, f"header length {n} runs past the end of the file ({len(raw)} bytes)")
    try:
        text = raw[8:8 + n].decode("utf-8")
    except UnicodeDecodeError as e:
        fail(path, f"header is not UTF-8: {e}")
    if not text.startswith("{"):
        fail(path, "header does not start with '{'")
    try:
        header = json.loads(text, object_pairs_hook=no_duplicates)
    except ValueError as e:
        fail(path, f"header is not valid JSON: {e}")
    if not isinstance(header, dict):
        fail(path, "header is not a JSON object")
    data = raw[8 + n:]

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        fail(path, "__metadata__ is not an object of string values")
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            fail(path, f"tensor {name!r}: expected exactly the fields dtype, shape, data_offsets")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_SIZES:
            fail(path, f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            fail(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        if not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs):
            fail(path, f"tensor {name!r}: data_offsets {offs!r} is not [begin, end]")
        numel = 1
        for d in shape:
            numel *= d
        if offs[1] - offs[0] != numel * DTYPE_SIZES[dtype]:
            fail(path, f"tensor {name!r}: data_offsets {offs} span {offs[1] - offs[0]} bytes, "
                       f"dtype {dtype} shape {shape} needs {numel * DTYPE_SIZES[dtype]}")
        spans.append((offs[0], offs[1], name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            fail(path, f"tensor {name!r}: data_offsets start at {begin}, expected {pos} (tensors must be packed)")
        pos = end
    if pos != len(data):
        fail(path, f"the tensors cover {pos} bytes of the {len(data)}-byte data block")

    for name in sorted(header):
        info = header[name]
        print(f"{show(name)} {info['dtype']} {info['shape']}")
        if values:
            b, e = info["data_offsets"]
            print("  =", " ".join(str(v) for v in decode(info["dtype"], data[b:e])))
    for key in sorted(metadata):
        print(f"__metadata__ {json.dumps(key)} {json.dumps(metadata[key])}")


if __name__ == "__main__":
    main()
