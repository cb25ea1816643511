"""The PASS / FAIL / SKIP protocol of the Python tests (the C++ tests use test/test.h).

check(name, fn, *args) runs one check: fn passes by returning, fails by raising AssertionError (or anything else),
and is skipped by raising Skip. expect(ok, name, why) records a check already evaluated. run_groups() runs groups
of checks that share a temporary folder, or reports them all as skipped. finish() prints "<N> passed, <M> failed"
and exits 1 if anything failed. test/run.sh collects these lines for the suite.
"""
import os
import shutil
import sys
import tempfile
import traceback

counts = {"passed": 0, "failed": 0}


class Skip(Exception):
    pass


def expect(ok, name, why=""):
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + why), flush=True)
    counts["passed" if ok else "failed"] += 1


def check(name, fn, *args):
    try:
        fn(*args)
    except Skip as e:
        print(f"SKIP {name}: {e}", flush=True)
        return
    except AssertionError as e:
        expect(False, name, str(e))
        return
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        expect(False, name, f"{type(e).__name__}: {e} (line {where.lineno})")
        return
    expect(True, name)


def run_groups(groups, prefix, why_skipped=None):
    """Runs every (name, fn) of groups as fn(tmp) with one temporary folder; a group that raises fails as a whole
    and the others still run. With why_skipped, reports every group as SKIP instead, or, when the environment
    sets ARC_REQUIRE_GPU=1 (make test-gpu), as one failure."""
    if why_skipped is not None:
        if os.environ.get("ARC_REQUIRE_GPU") == "1":
            expect(False, prefix.strip("_"), why_skipped)
        for name, _ in groups:
            print(f"SKIP {name}: {why_skipped}", flush=True)
        return
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        for name, fn in groups:
            try:
                fn(tmp)
            except Exception as e:
                expect(False, name, f"{type(e).__name__}: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def merge_args(args):
    """key=value arguments where a later value of a key replaces the earlier one (in the earlier one's place): the
    tests build on a base configuration, and the trainers refuse a key given twice."""
    out, where = [], {}
    for a in args:
        key = a.split("=", 1)[0] if "=" in a and not a.startswith("-") else None
        if key in where:
            out[where[key]] = a
        else:
            if key is not None:
                where[key] = len(out)
            out.append(a)
    return out


def finish():
    print(f"{counts['passed']} passed, {counts['failed']} failed")
    sys.exit(1 if counts["failed"] else 0)
