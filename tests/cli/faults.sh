#!/usr/bin/env bash
# Fault injection for every command that writes a file: the file-size limit
# hit mid-write (RLIMIT_FSIZE → EFBIG), a read-only output directory, an
# input truncated before and while it is read, an input removed while it is
# read, SIGINT/SIGTERM during a long write. Each must give a clear error, the
# documented exit status (libmerge(7): 3 bad input, 4 I/O, 128+signal) and
# leave no output and no temporary file. Inputs are generated here (zero-
# filled safetensors files written with printf/head, ~200 MB for the signal
# cases). Run from the repository root; one PASS/FAIL line per check.
set -u
BIN=${BIN:-bin}
T=$(mktemp -d); trap 'chmod -R u+w "$T" 2>/dev/null; rm -rf "$T"' EXIT
chmod 755 "$T"

# mkst OUT [NAME DTYPE SHAPE NBYTES]…: a safetensors file, zero data, header
# padded with spaces to 8 bytes as the reference writer pads it.
mkst() {
  local out=$1; shift
  local hdr="{" off=0 sep=""
  while [ $# -ge 4 ]; do
    hdr+="$sep\"$1\":{\"dtype\":\"$2\",\"shape\":$3,\"data_offsets\":[$off,$((off + $4))]}"
    off=$((off + $4)); sep=","; shift 4
  done
  hdr+="}"
  while [ $(( ${#hdr} % 8 )) -ne 0 ]; do hdr+=" "; done
  local n=${#hdr}
  { printf "$(printf '\\%03o' $((n & 255)) $(((n >> 8) & 255)) $(((n >> 16) & 255)) $(((n >> 24) & 255)) 0 0 0 0)"
    printf '%s' "$hdr"; head -c "$off" /dev/zero; } >"$out"
}

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

# clean DIR: nothing in DIR but the listed inputs (no output, no .NAME.XXXXXX)
leftovers() { ls -A "$1" | grep -v -x -e in.safetensors -e lora.safetensors -e lora2.safetensors -e base.safetensors; }

# expect NAME STATUS GREP DIR -- command…: status, a message matching GREP,
# and nothing left in DIR
expect() {
  local name=$1 want=$2 re=$3 dir=$4; shift 5
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ "$rc" -ne "$want" ]; then fail "$name" "status $rc, expected $want: $(head -c 300 "$T/err")"; return; fi
  if ! grep -qiE "$re" "$T/err"; then fail "$name" "message does not match /$re/: $(head -c 300 "$T/err")"; return; fi
  local left; left=$(leftovers "$dir")
  if [ -n "$left" ]; then fail "$name" "left behind: $left"; return; fi
  pass "$name"
}

U=model.diffusion_model.input_blocks.1.1
L=lora_unet_down_blocks_0_attentions_0_proj_in
# an SD1.x-shaped base (enough names for the architecture to be detected)
# with one big untouched tensor; a LoRA for its proj_in; a second one
mkbase() { # OUT FILLER_BYTES
  mkst "$1" model.diffusion_model.input_blocks.0.0.weight F32 '[320,4,3,3]' $((320 * 4 * 9 * 4)) \
    $U.proj_in.weight F32 '[320,320,1,1]' $((320 * 320 * 4)) \
    $U.transformer_blocks.0.attn2.to_k.weight F32 '[320,768]' $((320 * 768 * 4)) \
    model.diffusion_model.input_blocks.11.0.in_layers.0.weight F32 '[1280]' 5120 \
    zz.filler F32 "[$(($2 / 4))]" "$2"
}
mklora() { # OUT RANK
  mkst "$1" $L.alpha F32 '[]' 4 $L.lora_down.weight F32 "[$2,320,1,1]" $(($2 * 320 * 4)) \
    $L.lora_up.weight F32 "[320,$2,1,1]" $(($2 * 320 * 4))
}

# ---- EFBIG: the output grows past RLIMIT_FSIZE (ulimit -f, 1 KiB blocks) ----
D=$T/efbig; mkdir -p "$D"
mkbase "$D/base.safetensors" $((8 << 20))
mklora "$D/lora.safetensors" 64
mklora "$D/lora2.safetensors" 32
expect faults_efbig_model_convert 4 'file too large' "$D" -- \
  bash -c 'ulimit -f 2048; exec "$@"' _ "$BIN/model-convert" "$D/base.safetensors" -o "$D/out.safetensors"
expect faults_efbig_lcm_bake 4 'file too large' "$D" -- \
  bash -c 'ulimit -f 2048; exec "$@"' _ "$BIN/lcm-bake" "$D/base.safetensors" -l "$D/lora.safetensors:0.5" -o "$D/out.safetensors"
expect faults_efbig_lora_merge 4 'file too large' "$D" -- \
  bash -c 'ulimit -f 64; exec "$@"' _ "$BIN/lora-merge" "$D/lora.safetensors" "$D/lora2.safetensors:-1" --exact -o "$D/out.safetensors"
# the same commands without the limit succeed (so the failures above are the limit's)
if "$BIN/lcm-bake" "$D/base.safetensors" -l "$D/lora.safetensors:0.5" -o "$D/ok.safetensors" >/dev/null 2>&1 &&
   [ "$(stat -c %s "$D/ok.safetensors")" -gt $((8 << 20)) ]; then pass faults_efbig_control
else fail faults_efbig_control "lcm-bake without the limit failed"; fi
rm -f "$D/ok.safetensors"

# ---- read-only output directory ----
D=$T/ro; mkdir -p "$D/out"
mkbase "$D/base.safetensors" 4096
mklora "$D/lora.safetensors" 4
chmod 644 "$D"/*.safetensors
chmod 555 "$D/out"
if [ "$(id -u)" -eq 0 ]; then
  # root ignores permission bits: run as nobody where setpriv exists
  if command -v setpriv >/dev/null; then
    AS=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
    # nobody must reach the commands and inputs
    if ! "${AS[@]}" test -x "$BIN/model-convert" -a -r "$D/base.safetensors"; then AS=(); fi
  else AS=(); fi
else AS=(); fi
if [ "$(id -u)" -ne 0 ] || [ ${#AS[@]} -gt 0 ]; then
  for c in model-convert lcm-bake lora-merge; do
    case $c in
      model-convert) args=("$D/base.safetensors" -o "$D/out/x.safetensors");;
      lcm-bake) args=("$D/base.safetensors" -l "$D/lora.safetensors" -o "$D/out/x.safetensors");;
      lora-merge) args=("$D/lora.safetensors" "$D/lora.safetensors:0.5" --exact -o "$D/out/x.safetensors");;
    esac
    expect "faults_readonly_dir_${c//-/_}" 4 'permission denied|read-only' "$D/out" -- "${AS[@]}" "$BIN/$c" "${args[@]}"
  done
else
  echo "SKIP faults_readonly_dir: running as root without setpriv" >&2
fi
chmod 755 "$D/out"

# ---- input truncated before it is read ----
D=$T/trunc; mkdir -p "$D"
mkbase "$D/base.safetensors" $((1 << 20))
mklora "$D/lora.safetensors" 4
cp "$D/base.safetensors" "$D/in.safetensors"
truncate -s $(( $(stat -c %s "$D/in.safetensors") - 1000 )) "$D/in.safetensors"
expect faults_truncated_input_model_convert 3 'in\.safetensors.*(truncat|short|past the end|end of (the )?file|size)' "$D" -- \
  "$BIN/model-convert" "$D/in.safetensors" -o "$D/out.safetensors"
expect faults_truncated_input_lcm_bake 3 'in\.safetensors.*(truncat|short|past the end|end of (the )?file|size)' "$D" -- \
  "$BIN/lcm-bake" "$D/in.safetensors" -l "$D/lora.safetensors" -o "$D/out.safetensors"
head -c 100 "$D/lora.safetensors" >"$D/in.safetensors"
expect faults_truncated_lora_lcm_bake 3 'in\.safetensors' "$D" -- \
  "$BIN/lcm-bake" "$D/base.safetensors" -l "$D/in.safetensors" -o "$D/out.safetensors"

# ---- long runs: wait for the temporary output, then act on the process ----
D=$T/long; mkdir -p "$D"
mkbase "$D/base.safetensors" 200000000
mklora "$D/lora.safetensors" 4
# started PID DIR: wait (≤ 30 s) until PID has created its temp file in DIR
started() {
  local i
  for i in $(seq 1 3000); do
    ls -A "$2" | grep -q '^\.out\.safetensors\.' && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.01
  done
  return 1
}
# during NAME SIGNAL STATUS WHAT command…: start, signal while writing, check
during() {
  local name=$1 sig=$2 want=$3 what=$4; shift 4
  "$@" >"$T/out" 2>"$T/err" & local pid=$!
  if ! started "$pid" "$D"; then wait "$pid"; fail "$name" "no temp output seen (status $?)"; return; fi
  kill -STOP "$pid"
  case $what in
    signal) kill "-$sig" "$pid";;
    truncate) truncate -s 1000000 "$D/in.safetensors";;
    remove) rm -f "$D/in.safetensors";;
  esac
  kill -CONT "$pid"
  wait "$pid"; local rc=$?
  local left; left=$(leftovers "$D" | grep -v -x out.safetensors)
  if [ "$what" = remove ]; then
    # the open mapping keeps the data: the command finishes, and correctly
    if [ "$rc" -eq 0 ] && [ -z "$left" ] && "$BIN/model-inspect" "$D/out.safetensors" >/dev/null 2>&1; then pass "$name"
    else fail "$name" "status $rc (expected 0), left: $left: $(head -c 300 "$T/err")"; fi
    rm -f "$D/out.safetensors"; return
  fi
  [ -e "$D/out.safetensors" ] && left="$left out.safetensors"
  if [ "$rc" -ne "$want" ]; then fail "$name" "status $rc, expected $want: $(head -c 300 "$T/err")"
  elif [ -n "$left" ]; then fail "$name" "left behind:$left"
  elif [ "$what" = truncate ] && ! grep -qiE 'shrank|truncat|bad address|short|sigbus' "$T/err"; then fail "$name" "unclear message: $(head -c 300 "$T/err")"
  else pass "$name"; fi
  rm -f "$D/out.safetensors"
}
during faults_sigint_model_convert INT 130 signal "$BIN/model-convert" "$D/base.safetensors" -o "$D/out.safetensors" --dtype fp16
during faults_sigint_lcm_bake INT 130 signal "$BIN/lcm-bake" "$D/base.safetensors" -l "$D/lora.safetensors" -o "$D/out.safetensors"
during faults_sigterm_lcm_bake TERM 143 signal "$BIN/lcm-bake" "$D/base.safetensors" -l "$D/lora.safetensors" -o "$D/out.safetensors"
cp "$D/base.safetensors" "$D/in.safetensors"
during faults_truncated_while_read_model_convert - 4 truncate "$BIN/model-convert" "$D/in.safetensors" -o "$D/out.safetensors" --dtype fp16
cp "$D/base.safetensors" "$D/in.safetensors"
during faults_truncated_while_read_lcm_bake - 4 truncate "$BIN/lcm-bake" "$D/in.safetensors" -l "$D/lora.safetensors" -o "$D/out.safetensors"
cp "$D/base.safetensors" "$D/in.safetensors"
during faults_removed_while_read_model_convert - 0 remove "$BIN/model-convert" "$D/in.safetensors" -o "$D/out.safetensors" --dtype fp16
