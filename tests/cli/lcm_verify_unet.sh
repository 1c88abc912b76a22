#!/usr/bin/env bash
# lcm-verify unet / schedule / sample against diffusers' goldens
# (fixtures/golden/sd15; inputs built by fixtures/sampler/make_inputs.py).
# Tolerances: eps max-abs ≤ 1e-4 (reached 3.0e-6); sampled latents of
# magnitude ~50 ≤ 1e-3 max-abs, the README's end-to-end bound (reached
# 2.9e-5, i.e. 6e-7 relative: float32 rounding amplified ~15x by
# x0 = (x − √(1−ᾱ)ε)/√ᾱ at t = 999); timesteps exact.
set -u
cd "$(dirname "$0")/../.."
BIN=${BIN:-bin}
CMP="${BUILD:-build}/tests/test_unet cmp"
G=fixtures/golden/sd15
F=fixtures/sampler
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT

ok() { echo "PASS $1"; }
no() { echo "FAIL $1: $2"; }

# unet: a batch of 3 (t = 999, 759, 1), LDM and diffusers layouts
for layout in ldm diffusers; do
  if "$BIN/lcm-verify" unet "$G/unet_$layout.safetensors" --input "$F/unet_in.safetensors" -o "$T/eps_$layout.safetensors" 2>"$T/err"; then
    d=$($CMP "$T/eps_$layout.safetensors" eps "$F/unet_in.safetensors" expected_eps 1e-4) \
      && ok "unet_eps_$layout" || no "unet_eps_$layout" "max abs $d"
  else no "unet_eps_$layout" "exit $?: $(cat "$T/err")"; fi
done
$CMP "$T/eps_ldm.safetensors" eps "$T/eps_diffusers.safetensors" eps 0 >/dev/null \
  && ok unet_layouts_identical || no unet_layouts_identical "LDM and diffusers results differ"

# schedule: timesteps exact (lcm.json)
check_sched() {
  local out; out=$("$BIN/lcm-verify" schedule --steps "$1" | tr -d '\n')
  case "$out" in *"\"timesteps\": [$2]"*) ok "schedule_$1";; *) no "schedule_$1" "got $out";; esac
}
check_sched 1 "999"
check_sched 2 "999, 499"
check_sched 3 "999, 679, 339"
check_sched 4 "999, 759, 499, 259"
check_sched 5 "999, 799, 599, 399, 199"
check_sched 6 "999, 839, 679, 499, 339, 179"
check_sched 8 "999, 879, 759, 639, 499, 379, 259, 139"
"$BIN/lcm-verify" schedule --steps 51 >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] && ok schedule_too_many_steps || no schedule_too_many_steps "exit $rc, expected 2"

# sample: the 4-step trace with the injected noise
if "$BIN/lcm-verify" sample "$G/unet_ldm.safetensors" --input "$F/sample_s4_in.safetensors" --steps 4 -o "$T/s4.safetensors" 2>"$T/err"; then
  d=$($CMP "$T/s4.safetensors" latent "$F/sample_s4_in.safetensors" expected_latent 1e-3) \
    && ok sample_s4_final || no sample_s4_final "max abs $d"
  bad=""
  for k in 1 2 3 4; do
    $CMP "$T/s4.safetensors" denoised_$k "$F/sample_s4_in.safetensors" expected_denoised_$k 1e-3 >/dev/null || bad="$bad $k"
  done
  [ -z "$bad" ] && ok sample_s4_denoised || no sample_s4_denoised "steps$bad"
else no sample_s4_final "exit $?: $(cat "$T/err")"; fi

# sample without noise_k: drawn with --seed 105 as torch.Generator().manual_seed(105) draws them
if "$BIN/lcm-verify" sample "$G/unet_diffusers.safetensors" --input "$F/sample_s4_seed_in.safetensors" --steps 4 --seed 105 -o "$T/seed.safetensors" 2>"$T/err"; then
  d=$($CMP "$T/seed.safetensors" latent "$F/sample_s4_seed_in.safetensors" expected_latent 1e-3) \
    && ok sample_seeded_noise || no sample_seeded_noise "max abs $d"
else no sample_seeded_noise "exit $?: $(cat "$T/err")"; fi

# classifier-free guidance with uncond_context = context is the identity
if "$BIN/lcm-verify" sample "$G/unet_ldm.safetensors" --input "$F/sample_cfg_in.safetensors" --steps 4 --guidance 1.8 -o "$T/cfg.safetensors" 2>"$T/err"; then
  d=$($CMP "$T/cfg.safetensors" latent "$T/s4.safetensors" latent 0) \
    && ok sample_cfg_identity || no sample_cfg_identity "max abs $d"
else no sample_cfg_identity "exit $?: $(cat "$T/err")"; fi

# errors: exit statuses and no output left behind
"$BIN/lcm-verify" sample "$G/unet_ldm.safetensors" --input "$F/sample_s4_seed_in.safetensors" --steps 4 --guidance 2 -o "$T/x.safetensors" 2>"$T/err"; rc=$?
[ $rc -eq 3 ] && grep -q uncond_context "$T/err" && [ ! -e "$T/x.safetensors" ] \
  && ok sample_missing_uncond || no sample_missing_uncond "exit $rc: $(cat "$T/err")"
"$BIN/lcm-verify" unet "$G/vae_ldm.safetensors" --input "$F/unet_in.safetensors" -o "$T/x.safetensors" 2>"$T/err"; rc=$?
[ $rc -eq 3 ] && grep -q "conv_in" "$T/err" && ok unet_not_a_unet || no unet_not_a_unet "exit $rc: $(cat "$T/err")"
"$BIN/lcm-verify" unet "$G/unet_ldm.safetensors" --input "$F/unet_in.safetensors" -o "$F/unet_in.safetensors" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && ok unet_refuses_overwriting_input || no unet_refuses_overwriting_input "exit $rc: $(cat "$T/err")"
"$BIN/lcm-verify" unet "$G/unet_ldm.safetensors" -o "$T/x.safetensors" 2>/dev/null; rc=$?
[ $rc -eq 2 ] && ok unet_usage || no unet_usage "exit $rc"

# LoRA applied at load time = the same LoRA baked into the weights by lcm-bake
# (fixtures/sampler/tiny_lora.safetensors: kohya names, linear, 1×1 and 3×3 LoCon modules)
L=$F/tiny_lora.safetensors
if "$BIN/lcm-verify" unet "$G/unet_ldm.safetensors" --input "$F/unet_in.safetensors" -l "$L:0.7" -o "$T/eps_lora.safetensors" 2>"$T/err"; then
  if "$BIN/lcm-bake" "$G/unet_ldm.safetensors" -l "$L:0.7" --dtype fp32 -o "$T/baked.safetensors" >/dev/null 2>"$T/err" &&
     "$BIN/lcm-verify" unet "$T/baked.safetensors" --input "$F/unet_in.safetensors" -o "$T/eps_baked.safetensors" 2>"$T/err"; then
    d=$($CMP "$T/eps_lora.safetensors" eps "$T/eps_baked.safetensors" eps 1e-5) \
      && ok unet_lora_equals_baked || no unet_lora_equals_baked "max abs $d"
  else no unet_lora_equals_baked "bake: $(cat "$T/err")"; fi
  # the LoRA moves eps (so the comparison above is not vacuous)
  $CMP "$T/eps_lora.safetensors" eps "$F/unet_in.safetensors" expected_eps 1e-2 >/dev/null \
    && no unet_lora_changes_eps "eps unchanged" || ok unet_lora_changes_eps
else no unet_lora_equals_baked "exit $?: $(cat "$T/err")"; fi
"$BIN/lcm-verify" unet "$G/unet_diffusers.safetensors" --input "$F/unet_in.safetensors" -l "$L:0" -o "$T/eps_l0.safetensors" 2>"$T/err" &&
  $CMP "$T/eps_l0.safetensors" eps "$T/eps_diffusers.safetensors" eps 0 >/dev/null \
  && ok unet_lora_lambda0_identity || no unet_lora_lambda0_identity "$(cat "$T/err")"
"$BIN/lcm-verify" sample "$G/unet_ldm.safetensors" --input "$F/sample_s4_in.safetensors" --steps 4 -l "$L:0.7" -o "$T/sl.safetensors" 2>"$T/err" &&
"$BIN/lcm-verify" sample "$T/baked.safetensors" --input "$F/sample_s4_in.safetensors" --steps 4 -o "$T/sb.safetensors" 2>>"$T/err" &&
  $CMP "$T/sl.safetensors" latent "$T/sb.safetensors" latent 1e-4 >/dev/null \
  && ok sample_lora_equals_baked || no sample_lora_equals_baked "$(cat "$T/err")"
# a LoRA for another UNet (full-size SD1.5 shapes) is refused by name
"$BIN/lcm-verify" unet "$G/unet_ldm.safetensors" --input "$F/unet_in.safetensors" -l fixtures/real/sd15_lora_attnproc_noprefix.safetensors -o "$T/x.safetensors" 2>"$T/err"; rc=$?
[ $rc -eq 3 ] && [ ! -e "$T/x.safetensors" ] && ok unet_lora_mismatch || no unet_lora_mismatch "exit $rc: $(cat "$T/err")"

# a 9×11 latent (odd at every level) against an independent float64 reference
if "$BIN/lcm-verify" unet "$G/unet_ldm.safetensors" --input "$F/unet_odd_in.safetensors" -o "$T/odd.safetensors" 2>"$T/err"; then
  d=$($CMP "$T/odd.safetensors" eps "$F/unet_odd_in.safetensors" expected_eps 1e-4) \
    && ok unet_odd_latent || no unet_odd_latent "max abs $d"
else no unet_odd_latent "exit $?: $(cat "$T/err")"; fi

# an empty context [1,0,32] is bad input naming the file and tensor (it exited 2, naming nothing)
PY=$(command -v python3 || echo /usr/bin/python3)
"$PY" - "$T/empty_ctx.safetensors" <<'PYEOF'
import json, struct, sys
ts = {"latent": ("F32", [1, 4, 8, 8]), "timestep": ("F32", [1]), "context": ("F32", [1, 0, 32])}
hdr, off = {}, 0
for k, (dt, sh) in ts.items():
    n = 4
    for d in sh: n *= d
    hdr[k] = {"dtype": dt, "shape": sh, "data_offsets": [off, off + n]}
    off += n
h = json.dumps(hdr).encode(); h += b" " * (-len(h) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * off)
PYEOF
"$BIN/lcm-verify" unet "$G/unet_ldm.safetensors" --input "$T/empty_ctx.safetensors" -o "$T/e.safetensors" 2>"$T/err"; rc=$?
[ $rc -eq 3 ] && grep -q "empty_ctx.safetensors: context: .*empty tensor, shape \[1,0,32\]" "$T/err" && [ ! -e "$T/e.safetensors" ] \
  && ok unet_empty_context || no unet_empty_context "exit $rc: $(cat "$T/err")"

# -o naming a LoRA given with -l is refused before any work (exit 2), the LoRA left as it was
cp fixtures/bake/lora_a_kohya.safetensors "$T/lora.safetensors"
for sub in unet sample; do
  extra=(); [ $sub = sample ] && extra=(--steps 1)
  "$BIN/lcm-verify" $sub "$G/unet_ldm.safetensors" --input "$F/unet_in.safetensors" "${extra[@]}" \
    -l "$T/lora.safetensors:0.5" -o "$T/lora.safetensors" 2>"$T/err"; rc=$?
  [ $rc -eq 2 ] && cmp -s "$T/lora.safetensors" fixtures/bake/lora_a_kohya.safetensors && grep -q "refusing to overwrite input" "$T/err" \
    && ok "${sub}_refuses_output_over_lora" || no "${sub}_refuses_output_over_lora" "exit $rc: $(cat "$T/err")"
done

# --heads/--head-dim/--seed that are not what they claim are usage errors (were: ignored, or -1 taken as 2^64-1)
for a in "--heads -3" "--heads abc" "--head-dim 0" "--seed -1" "--seed 99999999999999999999999"; do
  "$BIN/lcm-verify" sample "$G/unet_ldm.safetensors" --input "$F/unet_in.safetensors" --steps 1 $a -o "$T/u.safetensors" 2>"$T/err"; rc=$?
  [ $rc -eq 2 ] && [ ! -e "$T/u.safetensors" ] && ok "sample_usage_${a// /_}" || no "sample_usage_${a// /_}" "exit $rc: $(cat "$T/err")"
done
"$BIN/lcm-verify" unet "$G/unet_ldm.safetensors" --input "$F/unet_in.safetensors" --heads x -o "$T/u.safetensors" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--heads: 'x' is not an integer" "$T/err" && ok unet_usage_heads || no unet_usage_heads "exit $rc: $(cat "$T/err")"
