#!/usr/bin/env python3
"""Tests for dev/cvae_torch.py, the plain-PyTorch Qwen2 + LoRA that replays train_cvae.cu's debug state.

Run from the repository root:  python3 test/test_cvae_torch.py
The script needs torch, which is a development dependency: it runs under the first of this interpreter and
/usr/bin/python3 that imports torch, and without one every check is reported as SKIP. This file itself uses the
standard library only (it edits a safetensors file with struct). Checks: the script's selftest (attention against
a per-head loop, LoRA against merged weights, the loss against a loop, the replay cycle in memory; for the CVAE's
state the z injection, posterior and router against loops, the KL terms against per-dimension loops and their
gradients against central differences, the token-weighted reconstruction against a loop and J's gradient with its
baseline held fixed against central differences, its replay cycle in memory); through the command line, make-example
files in three variants replay within 1e-5, a gradient perturbed by 1% of its largest value fails and is named, a
tighter --tol fails, a truncated file is one error line; a make-example --cvae file (LoRA) replays within 1e-5 with
every out.* row (out.tw among them, its metadata "cvae" with a nonzero token_weighted_reconstruction_weight), and
its out.kl moved by 1% and its out.tw moved by 10% (out.tw's rel_err is taken over its operands, about 16 times it
here) each fail and are named; the bench runs on the small preset. Prints "PASS name" / "FAIL name: why" / "SKIP
name: why", then "<N> passed, <M> failed".
"""
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from harness import Skip, check, finish  # noqa: E402

SCRIPT = os.path.join(ROOT, "dev", "cvae_torch.py")
VARIANTS = {"lora_tied": [], "base_untied": ["--trainable", "base", "--untied"],
            "lora_rslora_qv": ["--untied", "--rslora", "--targets", "q_proj,v_proj", "--seed", "2"],
            "cvae_lora": ["--cvae", "--seed", "1"]}
CVAE_OUTS = ["out.logits", "out.mu_q", "out.logvar_q", "out.z", "out.mu_p", "out.logvar_p", "out.recon", "out.kl",
             "out.pv", "out.rmkl", "out.tw", "out.loss"]
TMP = None            # scratch folder, made by main()
PYTHON = None         # an interpreter with torch, found by main()


def torch_python():
    for py in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(py) and subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0:
            return py
    return None


def run(*args):
    """dev/cvae_torch.py under the torch interpreter; returns (returncode, stdout, stderr)."""
    if PYTHON is None:
        raise Skip("torch is not importable by python3 or /usr/bin/python3 (apt-get install python3-torch)")
    proc = subprocess.run([PYTHON, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def worst(stdout):
    m = re.search(r"^worst rel_err=(\S+) \(tensor (\S+)\)$", stdout, re.M)
    assert m, f"no worst line in {stdout[-300:]!r}"
    return float(m.group(1)), m.group(2)


def perturb(path, out, name=None, fraction=0.01):
    """Copies the safetensors file `path` to `out` with the first value of the tensor `name` (by default its last
    grad.* tensor) moved by `fraction` (1%) of that tensor's largest magnitude; returns the tensor's name and the
    file's metadata."""
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    name = name or max(k for k in header if k.startswith("grad."))
    begin, end = (8 + n + o for o in header[name]["data_offsets"])
    values = struct.unpack(f"<{(end - begin) // 4}f", raw[begin:end])
    raw[begin:begin + 4] = struct.pack("<f", values[0] + fraction * max(abs(v) for v in values))
    with open(out, "wb") as f:
        f.write(raw)
    return name, header.get("__metadata__", {})


def check_selftest():
    rc, stdout, stderr = run("selftest")
    assert rc == 0 and "selftest: 0 failed" in stdout, f"exit {rc}: {(stdout + stderr)[-600:]!r}"
    assert stdout.count("selftest ok ") >= 8 and "selftest ok test_cvae_replay_cycle" in stdout and \
        "selftest ok test_cvae_token_weighted" in stdout, stdout


def check_replay(variant):
    """A make-example file replays; perturbed, it fails on that tensor; a tolerance below fp32 rounding fails
    (checked on one variant: each run of the script costs a few seconds of importing torch)."""
    path = os.path.join(TMP, f"{variant}.safetensors")
    rc, stdout, stderr = run("make-example", path, *VARIANTS[variant])
    assert rc == 0 and os.path.exists(path), f"make-example: exit {rc}: {stderr[-400:]!r}"
    rc, stdout, stderr = run("replay", path)
    rel, _ = worst(stdout)
    assert rc == 0 and rel < 1e-5 and not stderr, f"replay: exit {rc}, worst {rel}, {stderr[-300:]!r}"
    assert all(len(line.split()) == 3 for line in stdout.splitlines()[:-1]), f"rows: {stdout[:300]!r}"
    names = [line.split()[0] for line in stdout.splitlines()[:-1]]
    cvae = variant.startswith("cvae")
    assert names[:len(CVAE_OUTS) if cvae else 2] == (CVAE_OUTS if cvae else ["out.logits", "out.loss"]) and \
        (not cvae or {"grad.cvae.z_proj.weight", "grad.cvae.router_head.bias"} <= set(names)), f"rows: {names[:14]}"
    for name, fraction in ((("out.kl", 0.01), ("out.tw", 0.1)) if cvae else ((None, 0.01),)):
        bad = os.path.join(TMP, f"{variant}_perturbed.safetensors")
        name, meta = perturb(path, bad, name, fraction)
        if name == "out.tw":
            cv = json.loads(meta.get("cvae", "{}"))
            assert cv.get("token_weighted_reconstruction_weight", 0) > 0, f"make-example --cvae: metadata cvae {cv}"
        rc, stdout, stderr = run("replay", bad)
        rel, tensor = worst(stdout)
        assert rc == 1 and tensor == name and rel > 1e-3, f"perturbed {name}: exit {rc}, worst {rel} on {tensor}"
        assert stderr.startswith(f"error: {bad}: rel_err ") and stderr.count("\n") == 1, f"stderr {stderr!r}"
    if variant == "lora_tied":
        rc, _, stderr = run("replay", path, "--tol", "1e-12")
        assert rc == 1 and "above --tol 1e-12" in stderr, f"--tol 1e-12: exit {rc}, {stderr!r}"


def check_errors():
    """A truncated file and a missing one: one "error: FILE: ..." line and exit 1."""
    path = os.path.join(TMP, "lora_tied.safetensors")
    if not os.path.exists(path):
        run("make-example", path)
    cut = os.path.join(TMP, "truncated.safetensors")
    with open(path, "rb") as f, open(cut, "wb") as g:
        g.write(f.read()[:200])
    for target, text in ((cut, "not a readable safetensors file"), (os.path.join(TMP, "none"), "cannot read")):
        rc, stdout, stderr = run("replay", target)
        assert rc == 1 and not stdout and stderr.startswith(f"error: {target}: {text}") and \
            stderr.count("\n") == 1, f"{target}: exit {rc}, {stderr!r}"


def check_bench():
    rc, stdout, stderr = run("bench", "--preset", "small", "--batch", "2", "--seq", "16", "--steps", "2",
                             "--warmup", "1", "--dtype", "fp32")
    fields = dict(kv.split("=", 1) for kv in stdout.split()[1:]) if stdout.startswith("bench_torch ") else {}
    assert rc == 0 and float(fields.get("ms_per_step", 0)) > 0 and float(fields.get("flops_per_step", 0)) > 0, \
        f"exit {rc}: {(stdout + stderr)[-400:]!r}"


def main():
    global TMP, PYTHON
    PYTHON = torch_python()
    with tempfile.TemporaryDirectory(prefix="test_cvae_torch_") as TMP:
        check("cvae_torch_selftest", check_selftest)
        for variant in VARIANTS:
            check(f"cvae_torch_replay_{variant}", check_replay, variant)
        check("cvae_torch_replay_errors", check_errors)
        check("cvae_torch_bench_small", check_bench)
    finish()


if __name__ == "__main__":
    main()
