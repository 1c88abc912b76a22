#!/usr/bin/env bash
# lora-merge(1) from the command line: --exact, --rank with the per-module report, --json,
# --format peft, --extract, and the refusals with their exit statuses. One PASS/FAIL per check.
set -u
. tests/support/cli.sh
BIN=${BIN:-bin}
T=$(mktemp -d); trap 'rm -rf "$T" "$T.xdg"' EXIT
# the SHA-256 cache (lcm-bake(1) ENVIRONMENT) never in the real home, even when run alone
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-$T.xdg}
BASE=fixtures/golden/sd15/unet_ldm.safetensors
LA=fixtures/bake/lora_a_kohya.safetensors
LB=fixtures/bake/lora_b_diffusers.safetensors
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

out=$("$BIN/lora-merge" "$LA:0.8" "$LB:-0.5" --exact -o "$T/exact.safetensors" 2>&1)
if [ $? -eq 0 ] && echo "$out" | grep -q "7 modules" && head -c 100000 "$T/exact.safetensors" | grep -q 'lora_unet_down_blocks_0_resnets_0_conv1.alpha'; then
  pass lora_merge_exact
else fail lora_merge_exact "$out"; fi

"$BIN/lora-merge" "$LA:0.8" "$LB:-0.5" --rank 2 --json -o "$T/r2.safetensors" >"$T/r2.json" 2>"$T/err"
if [ $? -eq 0 ] && grep -q '"modules_written":[[:space:]]*7' "$T/r2.json" && grep -q '"rel_error":' "$T/r2.json" &&
   grep -q '"energy":' "$T/r2.json"; then pass lora_merge_rank_json
else fail lora_merge_rank_json "$(cat "$T/err")"; fi
# the per-module report of the conv 3x3 module matches the numpy reference (0.7359)
if grep -A8 '"lora_unet_down_blocks_0_resnets_0_conv1"' "$T/r2.json" | grep -q '"rel_error":[[:space:]]*0.7359'; then
  pass lora_merge_rank_error_value
else fail lora_merge_rank_error_value "conv1 rel_error not 0.7359…"; fi

out=$("$BIN/lora-merge" "$LA:0.8" "$LB:-0.5" --exact --format peft --base "$BASE" -o "$T/peft.safetensors" 2>&1)
if [ $? -eq 0 ] && head -c 100000 "$T/peft.safetensors" | grep -q 'unet.down_blocks.0.resnets.0.conv1.lora_A.weight'; then
  pass lora_merge_peft
else fail lora_merge_peft "$out"; fi

"$BIN/lcm-bake" "$BASE" -l "$LA" -o "$T/tuned.safetensors" >/dev/null 2>&1
out=$("$BIN/lora-merge" --extract "$BASE" "$T/tuned.safetensors" --rank 4 -o "$T/ex.safetensors" 2>&1)
if [ $? -eq 0 ] && echo "$out" | grep -q "6 modules"; then pass lora_merge_extract
else fail lora_merge_extract "$out"; fi

# cancelling inputs: modules dropped with a note, the empty result written with a warning
out=$("$BIN/lora-merge" "$LA" "$LA:-1" --rank 4 -o "$T/c.safetensors" 2>"$T/cerr")
if [ $? -eq 0 ] && echo "$out" | grep -q "0 modules" && echo "$out" | grep -q "^dropped 6 modules" &&
   grep -q "warning: every module" "$T/cerr"; then pass lora_merge_cancel_dropped
else fail lora_merge_cancel_dropped "$out $(cat "$T/cerr")"; fi
"$BIN/lora-merge" "$LA:0" "$LB:0" --rank 2 --json -o "$T/c.safetensors" >"$T/c.json" 2>/dev/null
if grep -q '"modules_written":[[:space:]]*0' "$T/c.json" && grep -q '"dropped":[[:space:]]*\["lora_unet' "$T/c.json" &&
   grep -q '"warnings":[[:space:]]*\["every module' "$T/c.json"; then pass lora_merge_zero_lambda_dropped
else fail lora_merge_zero_lambda_dropped "$(head -c 300 "$T/c.json")"; fi
# a near-cancellation (λ 1 and -0.9999) is a real difference and is kept
out=$("$BIN/lora-merge" "$LA" "$LA:-0.9999" --rank 4 -o "$T/c.safetensors" 2>&1)
if echo "$out" | grep -q "6 modules" && ! echo "$out" | grep -q "^dropped"; then pass lora_merge_near_cancel_kept
else fail lora_merge_near_cancel_kept "$out"; fi
"$BIN/lora-merge" --extract "$BASE" "$BASE" --rank 4 --json -o "$T/c.safetensors" >"$T/c.json" 2>"$T/cerr"
if [ $? -eq 0 ] && grep -q "warning: BASE and TUNED have identical weights" "$T/cerr" && grep -q '"warnings":[[:space:]]*\["BASE and TUNED' "$T/c.json"; then
  pass lora_merge_extract_identical_warns
else fail lora_merge_extract_identical_warns "$(cat "$T/cerr")"; fi
rm -f "$T/c.safetensors" "$T/c.json" "$T/cerr"

n=$(ls -A "$T" | wc -l)
st() { "$@" >/dev/null 2>"$T.err"; echo $?; }
check() {  # NAME WANT STATUS
  if [ "$3" -ne "$2" ]; then fail "$1" "exit $3, expected $2: $(head -c 300 "$T.err")"
  elif [ "$(ls -A "$T" | wc -l)" -ne "$n" ]; then fail "$1" "left a file behind"
  else pass "$1"; fi
}
check lora_merge_usage_no_mode 2 "$(st "$BIN/lora-merge" "$LA" -o "$T/x.safetensors")"
check lora_merge_usage_both_modes 2 "$(st "$BIN/lora-merge" "$LA" --exact --rank 4 -o "$T/x.safetensors")"
check lora_merge_usage_bad_rank 2 "$(st "$BIN/lora-merge" "$LA" --rank 0 -o "$T/x.safetensors")"
check lora_merge_usage_bad_lambda 2 "$(st "$BIN/lora-merge" "$LA" "$LB:1e39" --exact -o "$T/x.safetensors")"
check lora_merge_usage_threads 2 "$(st "$BIN/lora-merge" "$LA" --exact --threads -1 -o "$T/x.safetensors")"
check lora_merge_usage_unknown_flag 2 "$(st "$BIN/lora-merge" "$LA" --exact --bogus -o "$T/x.safetensors")"
check lora_merge_usage_rank_too_big 2 "$(st "$BIN/lora-merge" "$LA" --rank 2147483647 -o "$T/x.safetensors")"
check lora_merge_usage_extract_args 2 "$(st "$BIN/lora-merge" --extract "$BASE" --rank 4 -o "$T/x.safetensors")"
check lora_merge_refuses_output_is_input 2 "$(st "$BIN/lora-merge" "$LA" "$LB" --exact -o "$LB")"
check lora_merge_refuses_shape_mismatch 3 "$(st "$BIN/lora-merge" "$LA" fixtures/bake/lora_badshape.safetensors --exact -o "$T/x.safetensors")"
check lora_merge_refuses_lokr_exact 3 "$(st "$BIN/lora-merge" fixtures/real/sd15_lycoris_lokr_fp16.safetensors --exact -o "$T/x.safetensors")"
check lora_merge_peft_needs_paths 3 "$(st "$BIN/lora-merge" "$LA" --exact --format peft -o "$T/x.safetensors")"
check lora_merge_extract_other_arch 3 "$(st "$BIN/lora-merge" --extract "$BASE" fixtures/golden/sdxl/unet_tiny_sdxl_original.safetensors --rank 2 -o "$T/x.safetensors")"
# NaN inputs and overflowing factors are bad input (exit 3), never written, never "QR failed"
check lora_merge_refuses_nan_exact 3 "$(st "$BIN/lora-merge" fixtures/bake/lora_nan.safetensors "$LA" --exact -o "$T/x.safetensors")"
check lora_merge_refuses_nan_rank 3 "$(st "$BIN/lora-merge" fixtures/bake/lora_nan.safetensors --rank 2 -o "$T/x.safetensors")"
check lora_merge_fp32_overflow_exact 3 "$(st "$BIN/lora-merge" fixtures/bake/lora_alpha_huge.safetensors:1000 --exact --dtype fp32 -o "$T/x.safetensors")"
check lora_merge_fp32_overflow_rank 3 "$(st "$BIN/lora-merge" fixtures/bake/lora_alpha_huge.safetensors:1000 --rank 2 -o "$T/x.safetensors")"
check lora_merge_fp16_overflow_exact 3 "$(st "$BIN/lora-merge" fixtures/bake/lora_alpha_huge.safetensors --exact --dtype fp16 -o "$T/x.safetensors")"
"$BIN/lora-merge" fixtures/bake/lora_alpha_huge.safetensors:1000 --rank 2 -o "$T/x.safetensors" 2>&1 | grep -q "lora_alpha_huge.safetensors: .*attn1_to_q: .*overflows fp32" &&
  pass lora_merge_overflow_message || fail lora_merge_overflow_message "input file and module not named"
mkfifo "$T.fifo"
check lora_merge_fifo_input 4 "$(st timeout 20 "$BIN/lora-merge" "$T.fifo" "$LA" --exact -o "$T/x.safetensors")"
check lora_merge_extract_fifo_base 4 "$(st timeout 20 "$BIN/lora-merge" --extract "$T.fifo" "$BASE" --rank 2 -o "$T/x.safetensors")"
rm -f "$T.fifo"
check lora_merge_disk_full 4 "$(st bash -c 'ulimit -f 8; exec "$@"' _ "$BIN/lora-merge" "$LA" "$LB" --exact -o "$T/x.safetensors")"
rm -f "$T.err"

# lora-merge(1) documents every option --help lists and the real caps; the error says the cap
man=$(sed 's/\\-/-/g; s/\\f[BIR]//g' man/man1/lora-merge.1)
missing=$(man_missing_options "$BIN/lora-merge" man/man1/lora-merge.1)
if [ -z "$missing" ] && echo "$man" | grep -q "R is 1 to 100000" && echo "$man" | grep -q "capped at 64"; then
  pass lora_merge_man_matches_options
else fail lora_merge_man_matches_options "undocumented:$missing"; fi
"$BIN/lora-merge" "$LA" --rank 2147483647 -o "$T/x.safetensors" 2>&1 | grep -q "from 1 to 100000" &&
  pass lora_merge_rank_cap_message || fail lora_merge_rank_cap_message "the --rank error does not give the cap"
