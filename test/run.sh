#!/usr/bin/env bash
# Runs every test command given as an argument (each one a quoted shell command), collects their
# "PASS name" / "FAIL name: why" / "SKIP name: why" lines and prints one summary line at the end:
#   N passed, N failed
# A command that exits non-zero without printing a FAIL line counts as one failure (a crash must not pass).
# Exit status: 0 when nothing failed, 1 otherwise.
set -u
passed=0; failed=0; skipped=0
for cmd in "$@"; do
    echo "== $cmd"
    start=$(date +%s)
    out=$(bash -c "$cmd" 2>&1); rc=$?
    echo "$out" | grep -E '^(PASS|FAIL|SKIP) ' || true
    p=$(echo "$out" | grep -c '^PASS ' || true)
    f=$(echo "$out" | grep -c '^FAIL ' || true)
    s=$(echo "$out" | grep -c '^SKIP ' || true)
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $cmd: exited with status $rc and reported no failure; its last lines:"
        echo "$out" | tail -n 15 | sed 's/^/    /'
        f=1
    elif [ "$f" -ne 0 ]; then
        echo "-- output of the failing command (last 30 lines):"
        echo "$out" | tail -n 30 | sed 's/^/    /'
    fi
    echo "   ($p passed, $f failed, $s skipped in $(( $(date +%s) - start )) s)"
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
done
[ "$skipped" -gt 0 ] && echo "$skipped skipped (not counted as passed)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
