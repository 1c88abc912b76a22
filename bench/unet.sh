#!/usr/bin/env bash
# bench/unet.sh — one UNet evaluation of the full-size SD1.5 architecture,
# batch 1, at latent 64×64 (512 px) and 32×32 (256 px): seconds, GFLOP/s,
# the ratio to cblas_sgemm's GFLOP/s measured in the same run, the OpenBLAS
# kernel and the peak RSS (weights are loaded as fp32: 3.44 GB for SD1.5,
# 4.4 GB with the Winograd-transformed 3×3 weights). For the second step of
# each size it prints wall seconds, process CPU seconds and GEMM GFLOP per op
# class (lm_ops_profile): on a machine shared with other work, CPU seconds
# (GFLOP/CPUs) are the steadier measure, and wall ≈ CPU means the step got
# only one core. GFLOP counts the direct-convolution FLOPs, so Winograd 3×3
# convolutions show more GFLOP/s than sgemm itself reaches.
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
# bench/render.sh's copy of the same synthetic model, when it is there
[ -z "$MODEL" ] && [ -z "${BENCH_DIR:-}" ] && [ -f demo-out/sd15_synthetic_fp16.safetensors ] &&
  MODEL=demo-out/sd15_synthetic_fp16.safetensors
if [ -z "$MODEL" ]; then
  dir=${BENCH_DIR:-build/bench-data}
  mkdir -p "$dir"
  MODEL=$dir/sd15_synthetic_fp16.safetensors
  [ -f "$MODEL" ] || build/bench/gen_sd15 base fixtures/golden/sd15/sd15_ldm_manifest.json "$MODEL" 1 >&2
fi
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
build/bench/unet "$MODEL" 64 32
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
