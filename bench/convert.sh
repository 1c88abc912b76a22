#!/usr/bin/env bash
# bench/convert — model-convert of a ~2 GB fp32 torch.save zip checkpoint to fp16
# safetensors, against `cp` of the input followed by `sync`, in one run (issue 3).
# Target: convert ≤ 1.5 × cp+sync, peak RSS well under the model's size.
#
#   bench/convert.sh                 # 2048 MB model in a temp dir under /var/tmp
#   SIZE_MB=512 bench/convert.sh     # smaller
#
# The checkpoint is generated with Debian's python3-torch (/usr/bin/python3): the SD1.5
# tensor names and shapes of fixtures/golden/sd15/sd15_ldm_manifest.json, in manifest
# order, F32 normal values, wrapped as {"state_dict": …, "global_step": 0} like SD1.x
# training checkpoints, until SIZE_MB is reached. Both runs read a warm page cache (the
# generator just wrote the file); both end with every byte on disk (cp: sync; model-convert
# fsyncs its output before renaming it).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
SIZE_MB=${SIZE_MB:-2048}
DIR=$(mktemp -d "${BENCH_DIR:-/var/tmp}/lm_bench_convert.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
[ -x "$BIN/model-convert" ] || { echo "bench/convert: build first (make)" >&2; exit 2; }

/usr/bin/python3 - "$DIR/model.ckpt" "$SIZE_MB" <<'EOF'
import json, sys, torch
out, size_mb = sys.argv[1], int(sys.argv[2])
man = json.load(open("fixtures/golden/sd15/sd15_ldm_manifest.json"))["tensors"]
g = torch.Generator().manual_seed(0)
sd, total, k = {}, 0, 0
while total < size_mb << 20:
    t = man[k % len(man)]
    name = t["name"] if k < len(man) else "extra.%d.%s" % (k // len(man), t["name"])
    x = torch.empty(t["shape"], dtype=torch.float32)
    x.normal_(generator=g)
    sd[name] = x
    total += x.numel() * 4
    k += 1
torch.save({"state_dict": sd, "global_step": 0}, out)
print("bench/convert: %d tensors, %.0f MB of fp32" % (len(sd), total / 2**20), file=sys.stderr)
EOF
sync
in_bytes=$(stat -c %s "$DIR/model.ckpt")

t0=$(date +%s.%N)
cp "$DIR/model.ckpt" "$DIR/copy.ckpt" && sync
t1=$(date +%s.%N)
rm -f "$DIR/copy.ckpt"; sync

t2=$(date +%s.%N)
/usr/bin/time -f '%M' -o "$DIR/rss" "$BIN/model-convert" "$DIR/model.ckpt" -o "$DIR/out.safetensors" --dtype fp16 >/dev/null
sync
t3=$(date +%s.%N)

awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v rss="$(cat "$DIR/rss")" -v in_b="$in_bytes" \
    -v out_b="$(stat -c %s "$DIR/out.safetensors")" 'BEGIN {
  cp = b - a; mc = d - c;
  printf "input            %8.0f MB (torch zip, fp32)\n", in_b / 1048576
  printf "output           %8.0f MB (safetensors, fp16)\n", out_b / 1048576
  printf "cp + sync        %8.2f s\n", cp
  printf "model-convert    %8.2f s   (%.2f x cp+sync; target <= 1.5)\n", mc, mc / cp
  printf "peak RSS         %8.0f MB  (%.1f %% of the input)\n", rss / 1024, 100 * rss * 1024 / in_b
}'
