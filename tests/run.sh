#!/usr/bin/env bash
# Runs every test program (build/tests/test_*) and every CLI test script
# (tests/cli/*.sh), from the repository root, counts PASS/FAIL lines, and
# ends with "N passed, N failed". Exit status 1 if anything failed or a
# program crashed. TEST_WRAP (e.g. "valgrind …") prefixes each C test program.
set -u
cd "$(dirname "$0")/.."
pass=0; fail=0
log=$(mktemp); hcache=$(mktemp -d); trap 'rm -f "$log"; rm -rf "$hcache"' EXIT
# libmerge's SHA-256 cache (libmerge/hash.h) goes to a temp dir, never the real home
export XDG_CACHE_HOME="$hcache"
run_one() {
  local name=$1; shift
  "$@" >"$log" 2>&1; local rc=$?
  local p f
  p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log")
  grep -E '^(FAIL) ' "$log"
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL $name: exited with status $rc"; tail -n 20 "$log" | sed 's/^/    /'; f=1
  fi
  [ "${VERBOSE:-0}" = 1 ] && grep '^PASS ' "$log"
  printf '%-40s %3d passed, %d failed\n' "$name" "$p" "$f" >&2
  pass=$((pass + p)); fail=$((fail + f))
}
# one program per tests/test_*.c: a source whose program is missing or not
# executable is a failure, never a silent skip
for src in tests/test_*.c; do
  t="${BUILD:-build}/tests/$(basename "$src" .c)"
  [ -n "${TESTS:-}" ] && ! echo "$t" | grep -qE "${TESTS}" && continue
  if [ ! -x "$t" ]; then
    echo "FAIL $(basename "$t"): program not built ($t)"; fail=$((fail + 1)); continue
  fi
  run_one "$(basename "$t")" ${TEST_WRAP:-} "$t"
done
if [ -z "${SKIP_CLI:-}" ]; then
  for t in tests/cli/*.sh; do
    [ -f "$t" ] || continue
    [ -n "${TESTS:-}" ] && ! echo "$t" | grep -qE "${TESTS}" && continue
    run_one "$(basename "$t")" bash "$t"
  done
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
