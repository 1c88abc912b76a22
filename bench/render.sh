#!/usr/bin/env bash
# bench/render.sh — text to image stages on the full-size SD1.5 architecture
# (synthetic fp16 weights from bench/gen_sd15, same names and shapes as a real
# v1-5 checkpoint): text encoding, 4 LCM steps and VAE decoding at 512 and
# 256 px; seconds per stage, GFLOP/s with the ratio to cblas_sgemm's peak
# measured in the same process, peak RSS per stage (each stage its own
# process). Needs ~2.2 GB disk for the model (reused from demo-out/ when
# there). RENDER_SIZES overrides "512 256"; RENDER_PROFILE=1 adds the VAE's
# per-op-class wall / CPU seconds (lm_ops_profile) on stderr. On this shared
# 2-core machine compare CPU seconds: wall time follows the load average.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OUT=${DEMO_OUT:-demo-out}
BASE=$OUT/sd15_synthetic_fp16.safetensors
make -s "$BUILD/bench/gen_sd15" "$BUILD/bench/render" >/dev/null
mkdir -p "$OUT"
[ -f "$BASE" ] || "$BUILD/bench/gen_sd15" base fixtures/golden/sd15/sd15_ldm_manifest.json "$BASE"
echo "model: $BASE ($(du -h "$BASE" | cut -f1)), $(nproc) cores"
"$BUILD/bench/render" text "$BASE"
for s in ${RENDER_SIZES:-512 256}; do
  "$BUILD/bench/render" unet "$BASE" "$s" 4
  "$BUILD/bench/render" vae "$BASE" "$s"
done
