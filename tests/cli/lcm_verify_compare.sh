#!/usr/bin/env bash
# lcm-verify lora, compare and sweep (lcm-verify(1)) on the tiny golden models: a merged
# LoRA (exact and SVD) against its sources, a baked single-file tiny SD1.5 rendered against
# base + LoRA at load (pass, and a LoRA dropped from the bake: fail), a steps × λ grid.
# The single-file checkpoint is assembled at test time by fixtures/verify/make_tiny_sd15.py
# (standard-library python3). Prints one PASS/FAIL per check.
set -u
BIN=${BIN:-bin}
LV="$BIN/lcm-verify"
A=fixtures/bake/lora_a_kohya.safetensors
B=fixtures/bake/lora_b_diffusers.safetensors
VOCAB=fixtures/golden/clip/bpe_simple_vocab_16e6.txt.gz
T=$(mktemp -d "${TMPDIR:-/tmp}/lm_vc.XXXXXX")
trap 'rm -rf "$T"' EXIT
PY=$(command -v python3 || echo /usr/bin/python3)

ok() { echo "PASS lcm_verify_compare_$1"; }
bad() { echo "FAIL lcm_verify_compare_$1: $2"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name" "$*"; fi; }
has() { grep -qF -- "$2" <<<"$1"; }

# --- lora: exact and SVD merges against their sources ---
"$BIN/lora-merge" $A:0.8 $B:-0.5 --exact -o $T/mex.safetensors >/dev/null 2>&1 || bad setup "lora-merge --exact failed"
"$BIN/lora-merge" $A:0.8 $B:-0.5 --rank 2 -o $T/msvd.safetensors >/dev/null 2>&1 || bad setup "lora-merge --rank failed"
out=$("$LV" lora $T/mex.safetensors --search fixtures/bake); rc=$?
check lora_exact_exit [ "$rc" = 0 ]
check lora_exact_modules has "$out" "modules: 7 checked, 0 failed"
out=$("$LV" lora $T/msvd.safetensors --from $A:0.8 $B:-0.5 --json); rc=$?
check lora_svd_exit [ "$rc" = 0 ]
check lora_svd_mode has "$out" '"operation":	"lora-merge-svd"'
"$LV" lora $T/msvd.safetensors --from $A:0.8 $B:-0.5 --exact >/dev/null; rc=$?
check lora_svd_as_exact_exit [ "$rc" = 1 ]
out=$("$LV" lora $T/mex.safetensors --from $A:0.8 $B:0.5); rc=$?
check lora_wrong_lambda_exit [ "$rc" = 1 ]
check lora_wrong_lambda_recipe has "$out" "λ 0.5 on the command line, -0.5 in the recipe"
"$LV" lora $T/mex.safetensors >/dev/null 2>&1; rc=$?
check lora_sources_not_found_exit [ "$rc" = 3 ]

# --- compare: a tiny single-file SD1.5 baked in fp16 ---
"$PY" fixtures/verify/make_tiny_sd15.py $T/tiny.safetensors || bad setup "make_tiny_sd15.py failed"
"$BIN/lcm-bake" $T/tiny.safetensors -l $A:0.8 -l $B:-0.5 --dtype fp16 -o $T/tiny16.safetensors >/dev/null 2>&1 || bad setup "bake failed"
"$BIN/lcm-bake" $T/tiny.safetensors -l $A:0.8 --dtype fp16 -o $T/tinya16.safetensors >/dev/null 2>&1 || bad setup "bake failed"
R="--vocab $VOCAB --size 64x64 --seed 3 --steps 4"
out=$("$LV" compare $T/tiny16.safetensors --base $T/tiny.safetensors -l $A:0.8 -l $B:-0.5 $R --prompt "a photo of a cat" -o $T/side.png); rc=$?
check compare_exit [ "$rc" = 0 ]
check compare_verdict has "$out" "VERIFIED: the baked model renders like base + LoRA"
check compare_png [ -s $T/side.png ]
check compare_png_magic [ "$(head -c 4 $T/side.png | tail -c 3)" = "PNG" ]
out=$("$LV" compare $T/tinya16.safetensors --base $T/tiny.safetensors -l $A:0.8 -l $B:-0.5 $R --prompt "a photo of a cat" --json); rc=$?
check compare_dropped_exit [ "$rc" = 1 ]
check compare_dropped_json has "$out" '"ok":	false'
check compare_dropped_dtype has "$out" '"dtype":	"F16"'
"$LV" compare $T/tiny16.safetensors --base $T/tiny.safetensors $R >/dev/null 2>&1; rc=$?
check compare_usage_no_lora [ "$rc" = 2 ]
"$LV" compare $T/tiny16.safetensors --base $T/tiny.safetensors -l $A --size 60x64 >/dev/null 2>&1; rc=$?
check compare_usage_size [ "$rc" = 2 ]
# a refused --seed/--steps is never converted to an integer (undefined out of range): exit 2, named
for a in "--seed -1" "--seed 1e30" "--steps 1e300"; do
    err=$("$LV" compare $T/tiny16.safetensors --base $T/tiny.safetensors -l $A $a 2>&1 >/dev/null); rc=$?
    check "compare_usage_range_${a// /_}" [ "$rc" = 2 ]
    check "compare_usage_range_${a// /_}_message" has "$err" "${a%% *}: '${a#* }' is not"
done

# --- sweep: 2 steps × 2 λ ---
out=$("$LV" sweep $T/tiny.safetensors -l $A $R --steps 1,2 --lambda 0,1 -o $T/grid.png); rc=$?
check sweep_exit [ "$rc" = 0 ]
check sweep_says has "$out" "2 x 2 images"
check sweep_png [ -s $T/grid.png ]
"$LV" sweep $T/tiny.safetensors -l $A --steps 0,2 -o $T/g2.png >/dev/null 2>&1; rc=$?
check sweep_usage_steps [ "$rc" = 2 ]

# --- -o may not be an input (by name, symlink or hard link) nor a directory/FIFO: exit 2 before any work ---
cp $T/tiny16.safetensors $T/keep16.safetensors
cp $A $T/keepA.safetensors
cp $T/keep16.safetensors $T/keep16.orig; cp $T/keepA.safetensors $T/keepA.orig
ln -s keep16.safetensors $T/link16.png; ln $T/keep16.safetensors $T/hard16.png
mkdir $T/adir; mkfifo $T/afifo
LONG="--vocab $VOCAB --size 64x64 --steps 1"
chk_refused() {  # name, keep file, expected text, lcm-verify args…
    local name=$1 keep=$2 want=$3; shift 3
    local err; err=$("$LV" "$@" 2>&1 >/dev/null); local rc=$?
    check "${name}_exit" [ "$rc" = 2 ]
    check "${name}_says" has "$err" "$want"
    check "${name}_unchanged" cmp -s "$keep" "${keep%.safetensors}.orig"
}
chk_refused compare_out_is_baked $T/keep16.safetensors "refusing to overwrite input" \
    compare $T/keep16.safetensors --base $T/tiny.safetensors -l $A:0.8 $LONG -o $T/keep16.safetensors
chk_refused compare_out_is_lora $T/keepA.safetensors "refusing to overwrite input" \
    compare $T/keep16.safetensors --base $T/tiny.safetensors -l $T/keepA.safetensors:0.8 $LONG -o $T/keepA.safetensors
chk_refused compare_out_symlink_to_baked $T/keep16.safetensors "refusing to overwrite input" \
    compare $T/keep16.safetensors --base $T/tiny.safetensors -l $A:0.8 $LONG -o $T/link16.png
chk_refused compare_out_hardlink_to_baked $T/keep16.safetensors "refusing to overwrite input" \
    compare $T/keep16.safetensors --base $T/tiny.safetensors -l $A:0.8 $LONG -o $T/hard16.png
chk_refused compare_out_directory $T/keep16.safetensors "is a directory" \
    compare $T/keep16.safetensors --base $T/tiny.safetensors -l $A:0.8 $LONG -o $T/adir
chk_refused compare_out_fifo $T/keep16.safetensors "FIFO" \
    compare $T/keep16.safetensors --base $T/tiny.safetensors -l $A:0.8 $LONG -o $T/afifo
check compare_out_fifo_kept [ -p $T/afifo ]
chk_refused sweep_out_is_model $T/keep16.safetensors "refusing to overwrite input" \
    sweep $T/keep16.safetensors -l $A $LONG --steps 1 --lambda 1 -o $T/keep16.safetensors
chk_refused sweep_out_is_lora $T/keepA.safetensors "refusing to overwrite input" \
    sweep $T/keep16.safetensors -l $T/keepA.safetensors $LONG --steps 1 --lambda 1 -o $T/keepA.safetensors
chk_refused sweep_out_directory $T/keep16.safetensors "the output must be a file name" \
    sweep $T/keep16.safetensors -l $A $LONG --steps 1 --lambda 1 -o $T/adir/

# --- lora: a merged LoRA that is not a model is bad input (3); one cut short fails the check (1) ---
head -c 4096 /dev/urandom >$T/random.safetensors
err=$("$LV" lora $T/random.safetensors --from $A:0.8 2>&1 >/dev/null); rc=$?
check lora_random_exit [ "$rc" = 3 ]
check lora_random_names_file has "$err" "$T/random.safetensors"
"$LV" lora $T/tiny.safetensors --from $A:0.8 >/dev/null 2>&1; rc=$?
check lora_not_a_lora_exit [ "$rc" = 3 ]
head -c $(( $(stat -c %s $T/mex.safetensors) - 64 )) $T/mex.safetensors >$T/mcut.safetensors
out=$("$LV" lora $T/mcut.safetensors --from $A:0.8 $B:-0.5 --json); rc=$?
check lora_truncated_exit [ "$rc" = 1 ]
check lora_truncated_kind has "$out" '"kind":	"output"'

# --- --json when an input is missing or unreadable: one JSON object on stdout all the same
# ("ok": false, "error" naming the file, "exit_status" = the exit status), as lcm-bake,
# lora-merge, model-convert and model-inspect do ---
json_err() {  # name, expected exit status, text the error names, lcm-verify args…
    local name=$1 want=$2 file=$3; shift 3
    local out; out=$("$LV" "$@" --json 2>/dev/null); local rc=$?
    check "${name}_exit" [ "$rc" = "$want" ]
    check "${name}_object" "$PY" -c '
import json, sys
o = json.loads(sys.argv[1])
assert o["ok"] is False and sys.argv[3] in o["error"] and o["exit_status"] == int(sys.argv[2]), o' "$out" "$want" "$file"
}
json_err json_error_bake_missing 4 $T/nope.safetensors bake $T/nope.safetensors
json_err json_error_bake_base_missing 4 $T/nobase.safetensors bake $T/tiny16.safetensors --base $T/nobase.safetensors -l $A
json_err json_error_bake_random 3 $T/random.safetensors bake $T/tiny16.safetensors --base $T/random.safetensors -l $A
json_err json_error_lora_missing 4 $T/nope.safetensors lora $T/nope.safetensors --from $A
json_err json_error_lora_not_a_lora 3 $T/tiny.safetensors lora $T/tiny.safetensors --from $A:0.8
json_err json_error_compare_lora_missing 4 $T/nolora.safetensors \
    compare $T/tiny16.safetensors --base $T/tiny.safetensors -l $T/nolora.safetensors $LONG
json_err json_error_compare_baked_missing 4 $T/nope.safetensors \
    compare $T/nope.safetensors --base $T/tiny.safetensors -l $A $LONG
json_err json_error_sweep_model_missing 4 $T/nope.safetensors \
    sweep $T/nope.safetensors -l $A $LONG --steps 1 --lambda 1 -o $T/g3.png
json_err json_error_sweep_lora_random 3 $T/random.safetensors \
    sweep $T/tiny.safetensors -l $T/random.safetensors $LONG --steps 1 --lambda 1 -o $T/g4.png

# --- --negative-prompt (render's name) in compare and sweep too, --negative kept as another name ---
NG="$LONG --guidance 2 --steps 1 --lambda 1"
"$LV" sweep $T/tiny.safetensors -l $A $NG --negative-prompt "blurry" -o $T/neg1.png >/dev/null 2>&1; rc=$?
check sweep_negative_prompt_exit [ "$rc" = 0 ]
"$LV" sweep $T/tiny.safetensors -l $A $NG --negative "blurry" -o $T/neg2.png >/dev/null 2>&1
check sweep_negative_alias_same cmp -s $T/neg1.png $T/neg2.png
"$LV" sweep $T/tiny.safetensors -l $A $NG -o $T/neg0.png >/dev/null 2>&1
differ() { [ -s "$1" ] && [ -s "$2" ] && ! cmp -s "$1" "$2"; }
check sweep_negative_prompt_used differ $T/neg0.png $T/neg1.png
out=$("$LV" compare $T/tiny16.safetensors --base $T/tiny.safetensors -l $A:0.8 -l $B:-0.5 $LONG --guidance 2 \
    --negative-prompt "blurry" --json 2>&1); rc=$?
check compare_negative_prompt_exit [ "$rc" = 0 ]
check compare_negative_prompt_ok has "$out" '"ok":	true'

# --- getopt's messages name the subcommand as the program: "lcm-verify compare: …", not "compare: …" ---
for sub in bake lora compare sweep unet schedule sample tokenize text-encode vae-decode render; do
    err=$("$LV" $sub --no-such-option 2>&1 >/dev/null); rc=$?
    check "prefix_${sub}_exit" [ "$rc" = 2 ]
    check "prefix_${sub}" [ "${err%%$'\n'*}" = "lcm-verify $sub: unrecognized option '--no-such-option'" ]
done
