#!/usr/bin/env bash
# bench/io.sh — I/O benchmark of issue 2 (not part of `make test`).
# On one generated safetensors file (default 2048 MiB):
#   read-and-hash:  libmerge's SHA-256 of the file      vs  sha256sum      (target ≤ 1.1×)
#   copy-through:   read every tensor, write it through
#                   the streaming writer, fsync, rename  vs  cp + sync FILE (target ≤ 1.2×)
# Each is run once to warm the page cache, then timed; the best of RUNS (default 3) counts.
# Usage: make && bench/io.sh [SIZE_MB]      (BENCH_DIR: where the files go, default /tmp)
set -eu
cd "$(dirname "$0")/.."
MB=${1:-2048}
RUNS=${RUNS:-3}
DIR=$(mktemp -d "${BENCH_DIR:-/tmp}/lm_bench_io.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
[ -f lib/libmerge.a ] || { echo "run make first" >&2; exit 2; }
cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude bench/io_tool.c lib/libmerge.a \
   $(pkg-config --libs libzip libcjson libcrypto libxxhash openblas lapacke libpng zlib) -lm -lpthread -o "$DIR/io_tool"
T="$DIR/io_tool"
F="$DIR/in.safetensors"
echo "generating $MB MiB safetensors file in $DIR ..."
"$T" gen "$F" "$MB"

best() {  # best wall time in seconds of RUNS runs of "$@"
  local b="" s e t
  for _ in $(seq "$RUNS"); do
    s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc -l)
    if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then b=$t; fi
  done
  echo "$b"
}
cmp_hash() { [ "$("$T" hash "$F" | cut -d' ' -f1)" = "$(sha256sum "$F" | cut -d' ' -f1)" ]; }
cmp_hash || { echo "SHA-256 mismatch with sha256sum" >&2; exit 1; }

sha256sum "$F" >/dev/null   # warm the cache
ours=$(best "$T" hash "$F")
theirs=$(best sha256sum "$F")
printf 'read-and-hash: libmerge %.3f s, sha256sum %.3f s, ratio %.2f (target <= 1.10)\n' "$ours" "$theirs" "$(echo "$ours / $theirs" | bc -l)"

copy_ours() { rm -f "$DIR/out1.safetensors"; "$T" copy "$F" "$DIR/out1.safetensors"; }
copy_mmap() { rm -f "$DIR/out1.safetensors"; "$T" copy-mmap "$F" "$DIR/out1.safetensors"; }
copy_cp() { rm -f "$DIR/out2.safetensors"; cp "$F" "$DIR/out2.safetensors" && sync "$DIR/out2.safetensors"; }
mm=$(best copy_mmap)
cmp -s "$F" "$DIR/out1.safetensors" || { echo "copy-through (mmap) output differs from the input" >&2; exit 1; }
ours=$(best copy_ours)
cmp -s "$F" "$DIR/out1.safetensors" || { echo "copy-through output differs from the input" >&2; exit 1; }
theirs=$(best copy_cp)
printf 'copy-through:  libmerge %.3f s, cp+sync %.3f s, ratio %.2f (target <= 1.20)\n' "$ours" "$theirs" "$(echo "$ours / $theirs" | bc -l)"
printf '  (through the mapping and write(2) instead of copy_file_range: %.3f s, ratio %.2f)\n' "$mm" "$(echo "$mm / $theirs" | bc -l)"
