#!/usr/bin/env bash
# make demo — the main job on bundled data:
#   1. a full-size SD1.5 single-file checkpoint (LDM layout, fp16, UNet + VAE + text encoder;
#      names and shapes of fixtures/golden/sd15/sd15_ldm_manifest.json, deterministic
#      pseudo-random weights: real weights cannot be downloaded here),
#   2. an LCM-LoRA-shaped LoRA (the released SD1.5 LCM-LoRA's 834 tensors, rank 64, fp16,
#      fixtures/golden/manifests/lcm_lora_sd15_keys.json),
#   3. a real style LoRA from fixtures/real/ (SD1.5, diffusers attention-processor format),
#   4. lcm-bake: W' = W + 0.8·ΔW_style + 1.0·ΔW_LCM, fp16 out, into demo-out/,
#   5. lcm-verify bake: proves the output equals base + Σ λ·ΔW from its recipe alone.
# Needs about 4.5 GB free disk (two 2.1 GB checkpoints). DEMO_OUT overrides the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=${BIN:-bin}
OUT=${DEMO_OUT:-demo-out}
STYLE=fixtures/real/sd15_lora_attnproc_noprefix.safetensors
BASE=$OUT/sd15_synthetic_fp16.safetensors
LCM=$OUT/lcm_lora_sd15_shaped.safetensors
BAKED=$OUT/sd15_style0.8_lcm1.0.safetensors

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

make -s "$BUILD/bench/gen_sd15" >/dev/null
mkdir -p "$OUT"
avail=$(df -Pk "$OUT" | awk 'NR == 2 { print $4 }')
if [ "${avail:-0}" -lt 4500000 ]; then
  echo "demo: $OUT has $((avail / 1024)) MB free; the demo writes about 4.5 GB" >&2
  exit 4
fi

echo "== 1. synthetic SD1.5 base (LDM single-file layout, fp16, UNet + VAE + CLIP text encoder)"
t0=$(now)
"$BUILD/bench/gen_sd15" base fixtures/golden/sd15/sd15_ldm_manifest.json "$BASE"
t1=$(now)
echo "   $(secs "$t0" "$t1") s"

echo "== 2. LCM-LoRA-shaped LoRA (278 modules, rank 64, alpha 8, kohya names)"
t0=$(now)
"$BUILD/bench/gen_sd15" lora fixtures/golden/manifests/lcm_lora_sd15_keys.json "$LCM"
t1=$(now)
echo "   $(secs "$t0" "$t1") s"

echo "== 3. bake: W' = W + 0.8·ΔW(style: $(basename "$STYLE")) + 1.0·ΔW(LCM)"
t0=$(now)
"$BIN/lcm-bake" "$BASE" -l "$STYLE:0.8" --lcm "$LCM:1.0" -o "$BAKED" --title "SD1.5 synthetic + style 0.8 + LCM 1.0"
t1=$(now)
echo "   bake took $(secs "$t0" "$t1") s (fsync'd output; SHA-256 of the base and of the output's data included)"

echo "== 4. verify: lcm-verify bake recomputes every ΔW from the recipe in the output's header"
t0=$(now)
"$BIN/lcm-verify" bake "$BAKED" --search "$(dirname "$STYLE")" --search "$OUT" | tail -n 3 | sed 's/^/   /'
t1=$(now)
echo "   verify took $(secs "$t0" "$t1") s"

echo "== result"
ls -l "$BASE" "$LCM" "$BAKED" | awk '{ printf "   %12s  %s\n", $5, $NF }'
echo "   the output's header carries modelspec.*, sd_merge_recipe / sd_merge_models and"
echo "   libmerge.recipe (each input's SHA-256 and λ): lcm-verify can re-check it from the file."
echo "   Generated files stay in $OUT/ (not committed); remove them with: rm -r $OUT"
