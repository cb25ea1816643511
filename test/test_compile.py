#!/usr/bin/env python3
"""Checks that the compiler enforces: programs that misuse an interface must not compile (standard library only).

    python3 test/test_compile.py        (from the repository root; needs nvcc, else SKIP)

- dist_sum on the GPU backend sums float or bf16 buffers only (NCCL's types): a double buffer must be a compile error
  naming the rule, not a silent ncclBfloat16 sum of the wrong bytes. A float buffer compiles (the check can fail).
Prints PASS/FAIL/SKIP lines and "N passed, M failed"; exit 1 on failure.
"""
import os
import shutil
import subprocess
import tempfile

from harness import expect as check, finish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = '#include "common/distributed.h"\nvoid sum(%s* buf) { dist_sum(buf, 4, Stream()); }\n'


def compile_cuda(source, tmp):
    path = os.path.join(tmp, "program.cu")
    with open(path, "w") as f:
        f.write(source)
    p = subprocess.run(["nvcc", "-std=c++17", f"-I{ROOT}", "-c", path, "-o", os.path.join(tmp, "program.o")],
                       capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def main():
    if shutil.which("nvcc") is None:
        print("SKIP compile checks: nvcc not found")
        finish()
    with tempfile.TemporaryDirectory() as tmp:
        rc, out = compile_cuda(PROGRAM % "float", tmp)
        check(rc == 0, "dist_sum of a float buffer compiles (CUDA backend)", out[-400:])
        rc, out = compile_cuda(PROGRAM % "double", tmp)
        check(rc != 0 and "dist_sum on the GPU sums float or bf16 buffers" in out,
              "dist_sum of a double buffer is a compile error naming the rule (CUDA backend)", out[-400:])
    finish()


if __name__ == "__main__":
    main()
