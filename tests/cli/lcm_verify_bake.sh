#!/usr/bin/env bash
# lcm-verify bake (lcm-verify(1)): a clean bake verified from its recipe and from the
# command line; planted faults with their exit status and the kind of problem reported;
# usage, bad-input and I/O statuses. Prints one PASS/FAIL per check.
set -u
BIN=${BIN:-bin}
LV="$BIN/lcm-verify"
BAKE="$BIN/lcm-bake"
BASE=fixtures/golden/sd15/unet_ldm.safetensors
A=fixtures/bake/lora_a_kohya.safetensors
B=fixtures/bake/lora_b_diffusers.safetensors
S="--search fixtures/golden/sd15 --search fixtures/bake"
T=$(mktemp -d "${TMPDIR:-/tmp}/lm_vb.XXXXXX")
trap 'rm -rf "$T"' EXIT

ok() { echo "PASS lcm_verify_bake_$1"; }
bad() { echo "FAIL lcm_verify_bake_$1: $2"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name" "$*"; fi; }
has() { grep -qF -- "$2" <<<"$1"; }

"$BAKE" $BASE -l $A:0.8 -l $B:-0.5 --dtype fp16 -o $T/ab16.safetensors >/dev/null 2>&1 || bad setup "lcm-bake failed"

# --- clean: from the recipe, table and JSON ---
out=$("$LV" bake $T/ab16.safetensors $S); rc=$?
check clean_exit [ "$rc" = 0 ]
check clean_verdict has "$out" "VERIFIED: worst error/bound"
check clean_counts has "$out" "tensors: 684 (7 touched, 677 untouched: 677 identical to the base)"
check clean_hash has "$out" "sha256 = recipe"
out=$("$LV" bake $T/ab16.safetensors $S --json); rc=$?
check clean_json_exit [ "$rc" = 0 ]
check clean_json_ok has "$out" '"ok":	true'
check clean_json_from has "$out" '"inputs_from":	"recipe"'
check clean_json_identical has "$out" '"identical":	677'
# --- clean: inputs on the command line ---
out=$("$LV" bake $T/ab16.safetensors --base $BASE -l $A:0.8 -l $B:-0.5); rc=$?
check cmdline_exit [ "$rc" = 0 ]
# --base alone: the LoRAs come from the recipe; --no-hash leaves hash_ok null
out=$("$LV" bake $T/ab16.safetensors --base $BASE --search fixtures/bake --no-hash --json); rc=$?
check base_only_exit [ "$rc" = 0 ]
check base_only_nohash has "$out" '"hash_ok":	null'
check base_only_loras has "$out" '"path":	"fixtures/bake/lora_b_diffusers.safetensors"'

# --- a LoRA left out of the bake: B's ΔW missing ---
"$BAKE" $BASE -l $A:0.8 --dtype fp16 -o $T/a16.safetensors >/dev/null 2>&1
out=$("$LV" bake $T/a16.safetensors --base $BASE -l $A:0.8 -l $B:-0.5 --json); rc=$?
check dropped_exit [ "$rc" = 1 ]
check dropped_kind has "$out" '"kind":	"tensor"'
check dropped_diag has "$out" "ΔW missing: unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"
check dropped_recipe has "$out" "the recipe lists 1 LoRA, the command line 2"
# --- λ applied twice (baked 0.8, claimed 0.4) ---
out=$("$LV" bake $T/a16.safetensors --base $BASE -l $A:0.4); rc=$?
check twice_exit [ "$rc" = 1 ]
check twice_diag has "$out" "λ applied twice"
check twice_verdict has "$out" "FAILED:"
# --- one module, one failed tensor: singular counts ("1 module", "1 failed tensor", "1 LoRA") ---
H=fixtures/bake/lora_alpha_huge.safetensors
"$BAKE" $BASE -l $H:1 -o $T/one.safetensors >/dev/null 2>&1
out=$("$LV" bake $T/one.safetensors --base $BASE -l $H:0.5); rc=$?
check one_exit [ "$rc" = 1 ]
check one_module has "$out" "kohya, 1 module, 1 matched, 0 unmatched"
check one_failed_tensor has "$out" ", 1 failed tensor, "
lacks_re() { ! grep -qE -- "$2" <<<"$1"; }
check one_no_plural_of_one lacks_re "$out" '(^|[^0-9.])1 (modules|failed tensors|LoRAs|elements|sources)\b'
# --- fp16 overflow ---
"$BAKE" $BASE -l fixtures/bake/lora_overflow.safetensors --dtype fp16 -o $T/ov.safetensors >/dev/null 2>&1
out=$("$LV" bake $T/ov.safetensors $S --json); rc=$?
check overflow_exit [ "$rc" = 1 ]
check overflow_kind has "$out" '"kind":	"overflow"'
# --- truncated output ---
head -c 6000000 $T/ab16.safetensors >$T/trunc.safetensors
out=$("$LV" bake $T/trunc.safetensors $S --json); rc=$?
check truncated_exit [ "$rc" = 1 ]
check truncated_kind has "$out" '"kind":	"output"'
# --- a recipe input whose hash differs: another file under the recipe's name ---
mkdir -p $T/h && "$BAKE" $BASE -l $A:0.8 --dtype fp16 -o $T/h/out.safetensors >/dev/null 2>&1
cp $B $T/h/lora_a_kohya.safetensors
out=$("$LV" bake $T/h/out.safetensors $S --json); rc=$?
check hash_exit [ "$rc" = 1 ]
check hash_kind has "$out" '"kind":	"hash"'
check hash_flag has "$out" '"hash_ok":	false'
# --- a LoRA module that matched nothing ---
"$BAKE" $BASE -l fixtures/bake/lora_unmatched.safetensors --allow-unmatched --dtype fp16 -o $T/um.safetensors >/dev/null 2>&1
out=$("$LV" bake $T/um.safetensors $S); rc=$?
check unmatched_exit [ "$rc" = 1 ]
check unmatched_name has "$out" "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_zz"
"$LV" bake $T/um.safetensors $S --allow-unmatched >/dev/null; rc=$?
check unmatched_allowed_exit [ "$rc" = 0 ]
# --- statuses: usage, no recipe (bad input), missing file (I/O) ---
"$LV" bake >/dev/null 2>&1; rc=$?
check usage_exit [ "$rc" = 2 ]
"$LV" bake $T/ab16.safetensors -l $A >/dev/null 2>&1; rc=$?
check usage_lora_without_base [ "$rc" = 2 ]
err=$("$LV" bake $BASE 2>&1 >/dev/null); rc=$?
check norecipe_exit [ "$rc" = 3 ]
check norecipe_msg has "$err" "no recipe in the metadata"
err=$("$LV" bake $T/ab16.safetensors 2>&1 >/dev/null); rc=$?
check notfound_exit [ "$rc" = 3 ]
check notfound_msg has "$err" "recipe input unet_ldm.safetensors (base) not found"
"$LV" bake $T/none.safetensors $S >/dev/null 2>&1; rc=$?
check missing_exit [ "$rc" = 4 ]
# --- OUT that is not a model (random bytes, empty, a header that is not JSON): bad input, not a failed check ---
head -c 4096 /dev/urandom >$T/random.safetensors; : >$T/empty.safetensors
printf '\x10\x00\x00\x00\x00\x00\x00\x00{not json at all' >$T/badjson.safetensors
for f in random empty badjson; do
    err=$("$LV" bake $T/$f.safetensors --base $BASE -l $A:0.8 2>&1 >/dev/null); rc=$?
    check ${f}_out_exit [ "$rc" = 3 ]
    check ${f}_out_names_file has "$err" "$T/$f.safetensors"
done
# the header cut short is still the "truncated output" fault; no inputs claimed from the command line
head -c 100 $T/ab16.safetensors >$T/cut.safetensors
out=$("$LV" bake $T/cut.safetensors $S); rc=$?
check truncated_header_exit [ "$rc" = 1 ]
check truncated_header_kind has "$out" "output    $T/cut.safetensors: cannot be read"
check truncated_no_inputs_claimed has "$out" "(no inputs gathered)"
