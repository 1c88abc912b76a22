#!/usr/bin/env bash
# Runs each libFuzzer harness named on the command line (fuzz_safetensors,
# fuzz_torch, fuzz_pickle, fuzz_torch_zip, fuzz_lora, fuzz_tokenizer) for FUZZ_SECONDS seconds, one after
# the other, from the repository root. Called by `make fuzz`.
#
# Corpus: build-fuzz/corpus/NAME, seeded (cp -n, never the other way) from
# the small files in fixtures/ that match the harness, tests/fuzz/seeds/NAME/
# and the regression inputs in tests/regress/. Nothing is written into
# fixtures/ or tests/.
# Findings (crash, leak, timeout, out-of-memory) land in
# build-fuzz/artifacts/NAME/; turn each into tests/regress/<parser>-<what>
# (see tests/regress/README).
#
# Exit status: 0 when every harness ran its time without a finding, 1 when any
# found something, 2 when a harness is missing.
set -u
cd "$(dirname "$0")/../.."
secs=${FUZZ_SECONDS:-60}
timeout=${FUZZ_TIMEOUT:-2}      # seconds per input before it counts as a hang (issue 9: > 1 s; 2 s leaves room for a loaded CI machine)
rss=${FUZZ_RSS_MB:-2048}        # also the malloc limit: one allocation past it is a finding
export OPENBLAS_NUM_THREADS=1   # one core per fuzzer
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# seeds NAME: prints the seed files for a harness, one per line
seeds() {
  local small="-size -300k"
  case $1 in
    fuzz_safetensors)
      find fixtures -type f -name '*.safetensors' $small
      ls tests/regress/safetensors-* 2>/dev/null;;
    fuzz_torch)
      find fixtures -type f \( -name '*.pt' -o -name '*.pth' -o -name '*.ckpt' -o -name '*.bin' -o -name '*.pkl' -o -name '*.pickle' \) $small
      ls tests/regress/torch-* 2>/dev/null;;
    fuzz_pickle)
      find fixtures -type f \( -name '*.pkl' -o -name '*.pickle' \) $small
      ls tests/regress/pickle-* 2>/dev/null;;
    fuzz_torch_zip)
      ls tests/regress/torchzip-* 2>/dev/null
      find tests/fuzz/seeds/fuzz_pickle -type f;;
    fuzz_lora)
      find fixtures -type f \( -iname '*lora*' -o -iname '*lycoris*' -o -iname '*loha*' -o -iname '*lokr*' \) \
        \( -name '*.safetensors' -o -name '*.pt' -o -name '*.bin' \) $small
      ls tests/regress/lora-* 2>/dev/null;;
    fuzz_tokenizer)
      ls tests/regress/tokenizer-* 2>/dev/null;;
  esac
  [ -d "tests/fuzz/seeds/$1" ] && find "tests/fuzz/seeds/$1" -type f
  true
}

status=0
for name in "$@"; do
  bin=build-fuzz/fuzz/$name
  if [ ! -x "$bin" ]; then echo "fuzz: $bin not built" >&2; exit 2; fi
  corpus=build-fuzz/corpus/$name
  art=build-fuzz/artifacts/$name
  mkdir -p "$corpus" "$art"
  seeds "$name" | while read -r f; do
    [ -f "$f" ] && cp -n "$f" "$corpus/$(echo "$f" | tr / _)"
  done
  dict=()
  [ -f "tests/fuzz/$name.dict" ] && dict=(-dict="tests/fuzz/$name.dict")
  echo "fuzz: $name for ${secs}s ($(ls "$corpus" | wc -l) corpus files)" >&2
  log=build-fuzz/$name.log
  "$bin" "$corpus" "${dict[@]}" -max_total_time="$secs" -timeout="$timeout" \
    -rss_limit_mb="$rss" -artifact_prefix="$art/" -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "FAIL $name: libFuzzer exited $rc; finding(s) in $art/, log $log" >&2
    grep -E 'ERROR|SUMMARY|Test unit written|timeout|out-of-memory' "$log" | head -n 20 >&2
    status=1
  else
    echo "PASS $name: $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') inputs, no finding" >&2
  fi
done
exit $status
