#!/usr/bin/env bash
# bench/unet.sh — one UNet evaluation of the full-size SD1.5 architecture,
# batch 1, at latent 64×64 (512 px) and 32×32 (256 px): seconds, GFLOP/s,
# the ratio to cblas_sgemm's GFLOP/s measured in the same run, the OpenBLAS
# kernel and the peak RSS (weights are loaded as fp32: 3.44 GB for SD1.5).
#
#   bash bench/unet.sh [MODEL]
#
# Without MODEL it uses (and makes once, with build/bench/gen_sd15 from the
# SD1.5 manifest) a synthetic fp16 SD1.5 checkpoint in LDM layout under
# ${BENCH_DIR:-build/bench-data}: real names and shapes, random weights.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are left as the environment sets them.
set -eu
cd "$(dirname "$0")/.."
make -s build/bench/unet build/bench/gen_sd15
MODEL=${1:-}
if [ -z "$MODEL" ]; then
  dir=${BENCH_DIR:-build/bench-data}
  mkdir -p "$dir"
  MODEL=$dir/sd15_synthetic_fp16.safetensors
  [ -f "$MODEL" ] || build/bench/gen_sd15 base fixtures/golden/sd15/sd15_ldm_manifest.json "$MODEL" 1 >&2
fi
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
build/bench/unet "$MODEL" 64 32
