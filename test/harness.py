"""The PASS / FAIL / SKIP protocol of the Python tests (the C++ tests use test/test.h).

check(name, fn, *args) runs one check: fn passes by returning, fails by raising AssertionError (or anything else),
and is skipped by raising Skip. expect(ok, name, why) records a check already evaluated. finish() prints
"<N> passed, <M> failed" and exits 1 if anything failed. test/run.sh collects these lines for the suite.
"""
import sys
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


def finish():
    print(f"{counts['passed']} passed, {counts['failed']} failed")
    sys.exit(1 if counts["failed"] else 0)
