#!/usr/bin/env bash
# Checks found by trying the commands as a new user with bad input: files made
# by hand (crafted safetensors headers), output paths that alias an input, odd
# option values. Each check names what a user would see go wrong.
# Prints one PASS/FAIL per check; run from the repository root.
set -u
BIN=${BIN:-bin}
MI="$BIN/model-inspect"
MC="$BIN/model-convert"
T=$(mktemp -d "${TMPDIR:-/tmp}/lm_nu.XXXXXX")
trap 'chmod -R u+w "$T" 2>/dev/null; rm -rf "$T"' EXIT

ok() { echo "PASS new_user_$1"; }
bad() { echo "FAIL new_user_$1: $2"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name" "$*"; fi; }
has() { grep -qF -- "$2" <<<"$1"; }
hasnt() { ! grep -qF -- "$2" <<<"$1"; }

# mkst FILE HEADER_JSON DATA_BYTES: a safetensors file by hand (8-byte LE
# header length, the header, then DATA_BYTES zero bytes).
mkst() {
  local n=${#2} i b=""
  for i in 0 1 2 3 4 5 6 7; do b+=$(printf '\\x%02x' $(( (n >> (8 * i)) & 255 ))); done
  { printf "$b"; printf '%s' "$2"; head -c "$3" /dev/zero; } >"$1"
}

# --- model-inspect: names from the file are printed on one line each ---
# A tensor name holding a newline, a tab and an ESC sequence (JSON escapes in
# the header) must not split the --keys line or reach the terminal raw.
mkst "$T/ctl.safetensors" '{"__metadata__":{"k\ney":"v"},"a\nb\tc\u001b[31m":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' 4
out=$("$MI" --keys "$T/ctl.safetensors"); rc=$?
check keys_ctl_exit [ "$rc" = 0 ]
check keys_ctl_one_line [ "$(wc -l <<<"$out")" = 1 ]
check keys_ctl_escaped has "$out" 'a\nb\tc\x1b[31m	F32	[1]'
check keys_no_raw_escape [ "$(printf '%s' "$out" | tr -d -c '\033' | wc -c)" = 0 ]
out=$("$MI" "$T/ctl.safetensors")
check meta_key_escaped has "$out" '  k\ney: v'

# --- error messages stay on one line when a key holds control characters ---
mkst "$T/ctlerr.safetensors" '{"x\n\u001b[31mEVIL":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}' 4
err=$("$MI" "$T/ctlerr.safetensors" 2>&1 >/dev/null); rc=$?
check ctl_err_exit [ "$rc" = 3 ]
check ctl_err_one_line [ "$(wc -l <<<"$err")" = 1 ]
check ctl_err_escaped has "$err" 'ctlerr.safetensors: x\n\x1b[31mEVIL: unknown dtype "Q9"'

# --- output paths the rename must not replace ---
# A device or FIFO at OUT used to be replaced by the renamed temporary file
# (as root, -o /dev/null turned /dev/null into a regular file); a directory
# failed only after the whole conversion, naming the last tensor.
IN=fixtures/lora/hand.safetensors
mkfifo "$T/fifo"
"$MC" "$IN" -o "$T/fifo" 2>"$T/err"; rc=$?
check out_fifo_refused [ "$rc" = 2 ]
check out_fifo_kept [ -p "$T/fifo" ]
check out_fifo_message has "$(cat "$T/err")" "fifo: is a device, FIFO or socket, not a regular file"
mkdir "$T/d"
"$MC" "$IN" -o "$T/d" 2>"$T/err"; rc=$?
check out_dir_refused [ "$rc" = 2 ]
check out_dir_message [ "$(cat "$T/err")" = "model-convert: $T/d: is a directory: the output must be a file name" ]
"$MC" "$IN" -o "" 2>"$T/err"; rc=$?
check out_empty_refused [ "$rc" = 2 ]
"$BIN/lcm-bake" fixtures/golden/sd15/unet_ldm.safetensors -l fixtures/bake/lora_a_kohya.safetensors -o "$T/fifo" 2>/dev/null; rc=$?
check bake_out_fifo_refused [ "$rc" = 2 ]
no_temp() { [ -z "$(ls -A "$T/d")" ] && [ -z "$(ls -A "$T" | grep '^\.')" ]; }
check no_temp_left no_temp

# --- model-convert command line: a one-line reason, not only the usage ---
err=$("$MC" "$IN" 2>&1); rc=$?
check convert_no_output [ "$rc" = 2 ] && check convert_no_output_msg [ "$err" = "model-convert: no output: give -o OUT.safetensors" ]
err=$("$MC" "$IN" "$IN" -o "$T/x.safetensors" 2>&1); rc=$?
check convert_two_inputs [ "$rc" = 2 ]
check convert_two_inputs_msg has "$err" "model-convert: one input file only, got 2:"
check convert_two_inputs_nothing [ ! -e "$T/x.safetensors" ]
# --layout on a LoRA says so (it used to print the checkpoint detector's reason,
# "UNet without cross-attention", for a plain SD1.5 LoRA)
err=$("$MC" fixtures/real/sd15_lora_attnproc_noprefix.safetensors -o "$T/x.safetensors" --layout ldm 2>&1); rc=$?
check convert_layout_lora [ "$rc" = 3 ]
check convert_layout_lora_msg has "$err" "cannot change the layout: this is a LoRA"

# --- progress on a terminal (script(1) gives one): one write per percent, and
# a warning starts its own line instead of being glued to "model-convert:  6%" ---
if command -v script >/dev/null 2>&1; then
  tty_out=$(script -qc "$MC fixtures/bake/unet_tiny_fp16.ckpt -o $T/tty.safetensors --dtype fp32" /dev/null)
  ncr=$(printf '%s' "$tty_out" | tr -d -c '\r' | wc -c)
  check tty_progress_shown has "$tty_out" "model-convert: 100%"
  check tty_progress_per_percent [ "$ncr" -le 110 ]
  tty_out=$(script -qc "$MC fixtures/torch/sd_like.ckpt -o $T/tty.safetensors --dtype fp16" /dev/null | tr -d '\r')
  check tty_warning_own_line grep -q '^model-convert: warning: cond_stage_model' <<<"$tty_out"
  out=$("$MC" fixtures/torch/sd_like.ckpt -o "$T/tty.safetensors" --dtype fp16 2>&1)
  check no_tty_no_progress hasnt "$out" "%"
fi

# --- a failure of the output file as a whole names no tensor ---
# (ulimit -f: fallocate fails with EFBIG before any tensor is written; the
# message used to name the first tensor and a byte offset)
err=$(bash -c 'ulimit -f 16; exec "$@"' _ "$MC" fixtures/bake/unet_tiny_fp16.ckpt -o "$T/big.safetensors" 2>&1); rc=$?
check reserve_fail_exit [ "$rc" = 4 ]
check reserve_fail_msg [ "$err" = "model-convert: $T/big.safetensors: cannot reserve space: File too large (temporary file removed)" ]
check reserve_fail_nothing_left no_temp

# --- a report that cannot be written is a failure (exit 4), not success ---
if [ -c /dev/full ]; then
  err=$("$MI" --json "$IN" 2>&1 >/dev/full); rc=$?
  check inspect_stdout_full [ "$rc" = 4 ]
  check inspect_stdout_full_msg [ "$err" = "model-inspect: standard output: write error: No space left on device" ]
  "$MC" "$IN" -o "$T/r.safetensors" --json >/dev/full 2>/dev/null; rc=$?
  check convert_stdout_full [ "$rc" = 4 ]
fi
err=$("$MI" 2>&1); rc=$?
check inspect_no_file [ "$rc" = 2 ] && check inspect_no_file_msg [ "$err" = "model-inspect: no input file (see --help)" ]

# --- a FIFO or a directory given as input: refused at once, no wait ---
# (opening a FIFO without a writer used to block forever)
timeout 20 "$MI" "$T/fifo" 2>"$T/err"; rc=$?
check input_fifo_inspect [ "$rc" = 4 ]
check input_fifo_msg [ "$(cat "$T/err")" = "model-inspect: $T/fifo: not a regular file (a FIFO, device or socket?)" ]
timeout 20 "$MI" --hash "$T/fifo" 2>/dev/null; rc=$?
check input_fifo_hash [ "$rc" = 4 ]
timeout 20 "$MC" "$T/fifo" -o "$T/x.safetensors" 2>/dev/null; rc=$?
check input_fifo_convert [ "$rc" = 4 ]
err=$("$MI" "$T/d" 2>&1); rc=$?
check input_dir [ "$rc" = 4 ] && check input_dir_msg [ "$err" = "model-inspect: $T/d: is a directory, not a model file" ]

# --- a standalone LDM VAE (bare names, as vae-ft-mse-840000-ema-pruned and
# sdxl_vae ship) converts to diffusers' layout: it used to be taken for a
# diffusers file and written unchanged ("layout diffusers -> diffusers") ---
PY=/usr/bin/python3; [ -x "$PY" ] || PY=$(command -v python3 || true)
if [ -n "$PY" ]; then
  "$PY" - "$T/vae_bare.safetensors" <<'PYEOF'
import json, struct, sys
b = open("fixtures/golden/sd15/vae_ldm.safetensors", "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h = {(k[len("first_stage_model."):] if k.startswith("first_stage_model.") else k): v for k, v in h.items()}
hb = json.dumps(h).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
PYEOF
  out=$("$MC" "$T/vae_bare.safetensors" -o "$T/vae_d.safetensors" --layout diffusers 2>&1); rc=$?
  check bare_vae_convert [ "$rc" = 0 ]
  check bare_vae_layout has "$out" "layout ldm -> diffusers"
  # same names, shapes and bytes as the diffusers golden (attention 1x1 -> linear)
  check bare_vae_keys [ "$("$MI" --keys --hash "$T/vae_d.safetensors")" = "$("$MI" --keys --hash fixtures/golden/sd15/vae_diffusers.safetensors)" ]
fi

# --- an output name near NAME_MAX still gets its temporary file ---
long=$(printf 'a%.0s' $(seq 1 240)).safetensors
"$MC" "$IN" -o "$T/$long" >/dev/null 2>&1; rc=$?
check long_out_name [ "$rc" = 0 ] && check long_out_name_written [ -f "$T/$long" ]
rm -f "$T/$long"

# --- "-o name/" is refused before any work (it failed at the final rename) ---
err=$("$MC" "$IN" -o "$T/new.safetensors/" 2>&1); rc=$?
check out_trailing_slash [ "$rc" = 2 ] && check out_trailing_slash_msg has "$err" "ends with '/': the output must be a file name"
