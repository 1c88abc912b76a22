#!/usr/bin/env bash
# lcm-bake(1) from the command line: a bake with --json, the documented exit statuses of
# every refusal (2 usage / output == input, 3 bad or mismatched input, 4 disk full), and no
# output or temporary file left behind by a refusal. Inputs: fixtures/golden/sd15/unet_ldm
# (a tiny SD1.5 UNet, LDM layout) and the LoRAs of fixtures/bake/. One PASS/FAIL per check.
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
empty() { [ -z "$(ls -A "$T")" ]; }

# expect NAME STATUS -- command…: exit status and nothing written to $T
expect() {
  local name=$1 want=$2; shift 3
  "$@" >"$T.out" 2>"$T.err"; local st=$?
  if [ "$st" -ne "$want" ]; then fail "$name" "exit $st, expected $want: $(head -c 300 "$T.err")"
  elif ! empty; then fail "$name" "left $(ls -A "$T" | tr '\n' ' ')"
  elif [ "$want" -ne 0 ] && ! grep -q "^lcm-bake: " "$T.err"; then fail "$name" "no 'lcm-bake: ' message"
  else pass "$name"; fi
  rm -f "$T.out" "$T.err"
}

"$BIN/lcm-bake" "$BASE" -l "$LA:0.8" --lcm "$LB:-0.5" -o "$T/out.safetensors" --dtype fp16 --json >"$T.json" 2>"$T.err"
st=$?
if [ $st -eq 0 ] && [ -f "$T/out.safetensors" ] && grep -q '"ok":[[:space:]]*true' "$T.json" &&
   grep -q '"touched":[[:space:]]*7' "$T.json" && grep -q '"role":[[:space:]]*"lcm"' "$T.json"; then
  pass lcm_bake_json
else fail lcm_bake_json "exit $st: $(head -c 300 "$T.err")"; fi
# the recipe in the header names each input's SHA-256 and λ
hdr=$(head -c 200000 "$T/out.safetensors" | tr -d '\0')
if echo "$hdr" | grep -q 'libmerge.recipe' && echo "$hdr" | grep -q 'ff843e57ff8836dd1f20372184179c1147a591e508a6df3abf92317ae5ca8663' &&
   echo "$hdr" | grep -q '\\"lambda\\":-0.5' && echo "$hdr" | grep -q 'modelspec.architecture":"stable-diffusion-v1"'; then
  pass lcm_bake_recipe_in_header
else fail lcm_bake_recipe_in_header "recipe, base SHA-256, λ or modelspec missing"; fi
rm -f "$T/out.safetensors" "$T.json" "$T.err"

# human summary on stdout
out=$("$BIN/lcm-bake" "$BASE" -l "$LA" -o "$T/h.safetensors" 2>/dev/null)
if [ $? -eq 0 ] && echo "$out" | grep -q "6 modules, 6 baked" && echo "$out" | grep -q "^time"; then pass lcm_bake_summary
else fail lcm_bake_summary "unexpected output: $out"; fi
rm -f "$T/h.safetensors"

expect lcm_bake_usage_no_output 2 -- "$BIN/lcm-bake" "$BASE" -l "$LA"
expect lcm_bake_usage_no_lora 2 -- "$BIN/lcm-bake" "$BASE" -o "$T/x.safetensors"
expect lcm_bake_usage_bad_dtype 2 -- "$BIN/lcm-bake" "$BASE" -l "$LA" --dtype fp8 -o "$T/x.safetensors"
expect lcm_bake_usage_bad_lambda_path 2 -- "$BIN/lcm-bake" "$BASE" -l ":0.5" -o "$T/x.safetensors"
expect lcm_bake_usage_threads_negative 2 -- "$BIN/lcm-bake" "$BASE" -l "$LA" --threads -1 -o "$T/x.safetensors"
expect lcm_bake_usage_threads_too_many 2 -- "$BIN/lcm-bake" "$BASE" -l "$LA" --threads 65 -o "$T/x.safetensors"
expect lcm_bake_usage_bad_lambda 2 -- "$BIN/lcm-bake" "$BASE" -l "$LA:1e39" -o "$T/x.safetensors"
# getopt's own messages start with the program path: status only (under ASan a leak exits 1)
for a in "--bogus" "--dtype"; do
  "$BIN/lcm-bake" "$BASE" -l "$LA" -o "$T/x.safetensors" $a >/dev/null 2>"$T.err"; st=$?
  [ $st -eq 2 ] && empty && pass "lcm_bake_usage_flag_${a#--}" || fail "lcm_bake_usage_flag_${a#--}" "exit $st: $(head -c 300 "$T.err")"
done
"$BIN/lcm-bake" -l "$LA" -o "$T/x.safetensors" >/dev/null 2>"$T.err"; st=$?
[ $st -eq 2 ] && empty && pass lcm_bake_usage_no_base || fail lcm_bake_usage_no_base "exit $st: $(head -c 300 "$T.err")"
rm -f "$T.err"
expect lcm_bake_refuses_output_is_input 2 -- "$BIN/lcm-bake" "$BASE" -l "$LA" -o "$BASE"
expect lcm_bake_refuses_output_is_lora 2 -- "$BIN/lcm-bake" "$BASE" -l "$LA" -o "$LA"
expect lcm_bake_refuses_unmatched 3 -- "$BIN/lcm-bake" "$BASE" -l fixtures/bake/lora_unmatched.safetensors -o "$T/x.safetensors"
expect lcm_bake_refuses_shape_mismatch 3 -- "$BIN/lcm-bake" "$BASE" -l fixtures/bake/lora_badshape.safetensors -o "$T/x.safetensors"
expect lcm_bake_refuses_sd2_lora_on_sd1 3 -- "$BIN/lcm-bake" "$BASE" -l fixtures/real/sd15_lora_diffusers_bf16.safetensors -o "$T/x.safetensors"
expect lcm_bake_refuses_sd1_lora_on_sdxl 3 -- "$BIN/lcm-bake" fixtures/golden/sdxl/unet_tiny_sdxl_original.safetensors -l "$LA" -o "$T/x.safetensors"
expect lcm_bake_fail_on_overflow 3 -- "$BIN/lcm-bake" "$BASE" -l fixtures/bake/lora_overflow.safetensors --dtype fp16 --fail-on-overflow -o "$T/x.safetensors"
expect lcm_bake_missing_lora 4 -- "$BIN/lcm-bake" "$BASE" -l "$T/none.safetensors" -o "$T/x.safetensors"
# a FIFO as base or LoRA is refused at once (the base hash thread once blocked in open())
mkfifo "$T.fifo"
expect lcm_bake_fifo_base 4 -- timeout 20 "$BIN/lcm-bake" "$T.fifo" -l "$LA" -o "$T/x.safetensors"
expect lcm_bake_fifo_lora 4 -- timeout 20 "$BIN/lcm-bake" "$BASE" -l "$T.fifo" -o "$T/x.safetensors"
rm -f "$T.fifo"
expect lcm_bake_disk_full 4 -- bash -c 'ulimit -f 1024; exec "$@"' _ "$BIN/lcm-bake" "$BASE" -l "$LA" -o "$T/x.safetensors"

# non-finite values: a LoRA holding a NaN is bad input naming file and key; NaN/Inf made by
# the update in fp32 (alpha 3e38 at λ 1000) are counted, and fail with --fail-on-overflow
expect lcm_bake_refuses_nan_lora 3 -- "$BIN/lcm-bake" "$BASE" -l fixtures/bake/lora_nan.safetensors -o "$T/x.safetensors"
"$BIN/lcm-bake" "$BASE" -l fixtures/bake/lora_nan.safetensors -o "$T/x.safetensors" 2>&1 | grep -q "lora_nan.safetensors: .*attn1_to_q.lora_down.weight: 1 of 128 values are NaN" &&
  pass lcm_bake_nan_lora_message || fail lcm_bake_nan_lora_message "no file/key in the message"
expect lcm_bake_nonfinite_fail 3 -- "$BIN/lcm-bake" "$BASE" -l fixtures/bake/lora_alpha_huge.safetensors:1000 --dtype fp32 --fail-on-overflow -o "$T/x.safetensors"
out=$("$BIN/lcm-bake" "$BASE" -l fixtures/bake/lora_alpha_huge.safetensors:1000 --json -o "$T/nf.safetensors" 2>&1)
if [ $? -eq 0 ] && echo "$out" | grep -q '"nonfinite_total":[[:space:]]*1024'; then pass lcm_bake_nonfinite_reported
else fail lcm_bake_nonfinite_reported "$(echo "$out" | head -c 300)"; fi
rm -f "$T/nf.safetensors"

# overflow without --fail-on-overflow: written, and reported
out=$("$BIN/lcm-bake" "$BASE" -l fixtures/bake/lora_overflow.safetensors --dtype fp16 -o "$T/ov.safetensors" 2>&1)
if [ $? -eq 0 ] && echo "$out" | grep -q "overflow .* 1 tensors" && echo "$out" | grep -q "attn1.to_q.weight"; then pass lcm_bake_overflow_reported
else fail lcm_bake_overflow_reported "$out"; fi
rm -f "$T/ov.safetensors"

# refused for overflow: the report says no output exists (it used to print a size)
out=$("$BIN/lcm-bake" "$BASE" -l fixtures/bake/lora_overflow.safetensors --dtype fp16 --fail-on-overflow -o "$T/ov2.safetensors" 2>/dev/null)
if echo "$out" | grep -q "ov2.safetensors: not written" && [ ! -e "$T/ov2.safetensors" ]; then pass lcm_bake_refused_says_not_written
else fail lcm_bake_refused_says_not_written "$out"; fi

# --allow-unmatched skips and counts
out=$("$BIN/lcm-bake" "$BASE" -l fixtures/bake/lora_unmatched.safetensors --allow-unmatched -o "$T/u.safetensors" 2>&1)
if [ $? -eq 0 ] && echo "$out" | grep -q "1 unmatched (skipped)"; then pass lcm_bake_allow_unmatched
else fail lcm_bake_allow_unmatched "$out"; fi
rm -f "$T/u.safetensors"

# lcm-bake(1) documents every option --help lists, the hashing default and the thread cap
man=$(sed 's/\\-/-/g; s/\\f[BIR]//g' man/man1/lcm-bake.1)
missing=$(man_missing_options "$BIN/lcm-bake" man/man1/lcm-bake.1)
if [ -z "$missing" ] && echo "$man" | grep -q "Hashing is on by default" && echo "$man" | grep -q "capped at 64"; then
  pass lcm_bake_man_matches_options
else fail lcm_bake_man_matches_options "undocumented:$missing"; fi

# the base deleted mid-bake: the bake completes with the bytes of an undisturbed bake
# (untouched tensors are copied from the descriptor opened before the output exists, the
# hashes come from it and from the mapping; it once failed with exit 4 when the deletion
# came before the first copy, and never may exit 2 "new metadata changes the header
# length"). The deletion lands when the output's temporary file appears (the header is
# written then): timing, so up to 8 tries until one lands mid-bake; every try is checked.
legacy_of() { head -c 200000 "$1" | tr -d '\0' | grep -o '\\"legacy_hash\\":\\"[0-9a-f]*\\"' | head -1; }
mkdir -p "$T/del/ref"
cp "$BASE" "$T/del/base.safetensors"
"$BIN/lcm-bake" "$T/del/base.safetensors" -l "$LA:0.8" -o "$T/del/ref/out.safetensors" >/dev/null 2>&1
want=$(legacy_of "$T/del/ref/out.safetensors")
bad= mid=0 tries=0
while [ $tries -lt 8 ] && [ $mid -eq 0 ] && [ -n "$want" ]; do
  tries=$((tries + 1))
  cp "$BASE" "$T/del/base.safetensors"
  rm -f "$T/del/out.safetensors"
  "$BIN/lcm-bake" "$T/del/base.safetensors" -l "$LA:0.8" -o "$T/del/out.safetensors" >/dev/null 2>"$T/del/err" &
  pid=$!
  while kill -0 $pid 2>/dev/null && ! ls -A "$T/del" | grep -q '^\.out\.safetensors\.'; do :; done
  ls -A "$T/del" | grep -q '^\.out\.safetensors\.' && mid=1
  rm -f "$T/del/base.safetensors"
  wait $pid; st=$?
  if grep -q "header length" "$T/del/err"; then bad="$bad try $tries: $(head -c 200 "$T/del/err")"
  elif [ $st -ne 0 ]; then bad="$bad try $tries: exit $st $(head -c 200 "$T/del/err")"
  elif ! cmp -s "$T/del/ref/out.safetensors" "$T/del/out.safetensors"; then
    bad="$bad try $tries: output differs from the undisturbed bake (legacy hash $(legacy_of "$T/del/out.safetensors"), want $want)"; fi
done
if [ -z "$want" ]; then fail lcm_bake_base_deleted_mid_bake "no legacy_hash in a normal bake's header"
elif [ -n "$bad" ]; then fail lcm_bake_base_deleted_mid_bake "$bad"
else pass lcm_bake_base_deleted_mid_bake; echo "    (deletion landed mid-bake: $mid, tries $tries)" >&2; fi
rm -rf "$T/del"

# the same bytes whatever the workers, the block size of the row-blocked update path and
# the write path: --threads 1 and 3, LIBMERGE_DIRECT_IO=0 (page cache only) and the
# default (whole 4 KiB blocks with O_DIRECT), and a tmpfs output when /dev/shm exists.
# LIBMERGE_BAKE_BLOCK_ROWS=0 is left out: the whole-tensor path may round a sum apart.
mkdir -p "$T/same/a" "$T/same/b"
bad=
"$BIN/lcm-bake" "$BASE" -l "$LA:0.8" --lcm "$LB:-0.5" -o "$T/same/a/o.safetensors" --threads 1 >/dev/null 2>"$T.err" || bad="threads 1: $(head -c 200 "$T.err")"
for v in "--threads 3" "--threads 3 DIO0" "--threads 2 SHM"; do
  dst="$T/same/b/o.safetensors"
  case "$v" in *SHM*) [ -d /dev/shm ] && [ -w /dev/shm ] || continue; dst=$(mktemp -d /dev/shm/lcm_bake_same.XXXXXX)/o.safetensors ;; esac
  dio=1; case "$v" in *DIO0*) dio=0 ;; esac
  LIBMERGE_DIRECT_IO=$dio "$BIN/lcm-bake" "$BASE" -l "$LA:0.8" --lcm "$LB:-0.5" -o "$dst" ${v%% [DS]*} >/dev/null 2>"$T.err" || bad="$bad [$v] exit $?: $(head -c 200 "$T.err")"
  cmp -s "$T/same/a/o.safetensors" "$dst" || bad="$bad [$v] differs"
  case "$v" in *SHM*) rm -rf "$(dirname "$dst")" ;; *) rm -f "$dst" ;; esac
done
[ -z "$bad" ] && pass lcm_bake_same_bytes_threads_direct_io_tmpfs || fail lcm_bake_same_bytes_threads_direct_io_tmpfs "$bad"
rm -rf "$T/same" "$T.err"
