#!/usr/bin/env bash
# model-inspect(1) on the real fixture files, sparse full-size checkpoints
# built from the key manifests (SD1.5 ~2 GB, SDXL ~6.9 GB: past 4 GiB), and
# its errors and exit statuses (libmerge(7)). Prints one PASS/FAIL per check.
set -u
BIN=${BIN:-bin}
MI="$BIN/model-inspect"
R=fixtures/real
T=$(mktemp -d "${TMPDIR:-/tmp}/lm_mi.XXXXXX")
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3; [ -x "$PY" ] || PY=$(command -v python3 || true)

ok() { echo "PASS model_inspect_$1"; }
bad() { echo "FAIL model_inspect_$1: $2"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name" "$*"; fi; }
not() { ! "$@"; }
has() { grep -qF -- "$2" <<<"$1"; }

# --- summary of a real LoRA ---
out=$("$MI" $R/sd15_lora_attnproc_noprefix.safetensors); rc=$?
check summary_exit [ "$rc" = 0 ]
check summary_format has "$out" "format:      safetensors"
check summary_kind has "$out" "kind:        lora (diffusers-attnproc convention), algo lora, 128 modules (unet 128, te 0, te2 0), rank 4"
check summary_tensors has "$out" "tensors:     256"
check summary_params has "$out" "parameters:  797184"
check summary_dtypes has "$out" "dtypes:      F32 256 tensors 797184 parameters"
check summary_bytes has "$out" "bytes:       3227336 file, 3188736 tensor data, 38592 header"
check summary_metadata has "$out" "  format: pt"

out=$("$MI" $R/sd15_lycoris_lokr_fp16.safetensors)
check lycoris_kind has "$out" "kind:        lora (kohya convention), algo lokr, 350 modules (unet 278, te 72, te2 0), rank 4"
check lycoris_long_value_cut has "$out" "… (15281 bytes)"
o1=$("$MI" fixtures/bake/lora_alpha_huge.safetensors)
check one_module_singular has "$o1" "algo lora, 1 module (unet 1, te 0, te2 0)"

# --- hashes: against sha256sum and kohya's own sshs_model_hash ---
out=$("$MI" --hash $R/sd15_lycoris_lokr_fp16.safetensors)
want=$(sha256sum $R/sd15_lycoris_lokr_fp16.safetensors | cut -d' ' -f1)
check hash_sha256 has "$out" "sha256:      $want"
check hash_autov2 has "$out" "autov2:      ${want:0:10}"
check hash_autov1 has "$out" "autov1:      e3b0c442"
check hash_addnet_is_sshs_model_hash has "$out" "addnet:      150ef207aad02214f69756f53c3fc56efacdf6c79e32dd76e5fcbcf6c6a5350f (short 150ef207aad0)"
check hash_modelspec has "$out" "modelspec:   0x150ef207aad02214f69756f53c3fc56efacdf6c79e32dd76e5fcbcf6c6a5350f"
out=$("$MI" --hash $R/sd15_lora_attnproc_noprefix.safetensors)
check hash_autov1_1mib has "$out" "autov1:      68f5c450"

# --- keys ---
out=$("$MI" --keys $R/st_i64_scalar_offset_order.safetensors)
check keys_count [ "$(wc -l <<<"$out")" = 9 ]
check keys_first_scalar [ "$(head -1 <<<"$out")" = "$(printf 'norm1.num_batches_tracked\tI64\t[]')" ]
check keys_shape has "$out" "$(printf 'conv1.weight\tF32\t[4,3,3,3]')"
out=$("$MI" --keys --hash $R/st_i64_scalar_offset_order.safetensors)
check keys_xxh3_column [ "$(grep -cE $'\t[0-9a-f]{16}$' <<<"$out")" = 9 ]
out=$("$MI" --keys $R/st_i64_scalar_offset_order.safetensors $R/zip_checkpoint_model_optimizer.pt)
check keys_many_files has "$out" "==> $R/zip_checkpoint_model_optimizer.pt <=="

# --- JSON ---
if [ -n "$PY" ]; then
  out=$("$MI" --json --hash $R/sd15_lycoris_lokr_fp16.safetensors $R/ddpm_unet_flat_state_dict.pth)
  res=$("$PY" -c '
import json, sys
a = json.loads(sys.stdin.read())
l, t = a[0], a[1]
ok = (l["kind"] == "lora" and l["lora"]["convention"] == "kohya" and l["lora"]["algo"] == "lokr"
      and l["lora"]["modules"] == 350 and l["tensors"] == 1750 and l["parameters"] == 201726
      and l["dtypes"]["F16"]["tensors"] == 1750 and len(l["metadata"]) == 61
      and l["hashes"]["addnet"] == l["metadata"]["sshs_model_hash"]
      and len(l["metadata"]["ss_tag_frequency"]) == 15281
      and t["format"] == "torch-zip" and t["kind"] == "unknown" and t["tensors"] == 36)
print("ok" if ok else "bad")' <<<"$out" 2>&1)
  check json_fields [ "$res" = ok ]
fi

# --- full-size checkpoints as sparse files (names, dtypes and shapes from the manifests) ---
mk_sparse() {  # manifest out
  "$PY" - "$1" "$2" <<'EOF'
import json, struct, sys
m = json.load(open(sys.argv[1]))
size = {"F16": 2, "F32": 4, "I64": 8, "BF16": 2}
hdr, off = {}, 0
for t in m["tensors"]:
    dt = t["dtype"] if t["dtype"] in ("I64",) else "F16"
    n = 1
    for d in t["shape"]:
        n *= d
    hdr[t["name"]] = {"dtype": dt, "shape": t["shape"], "data_offsets": [off, off + n * size[dt]]}
    off += n * size[dt]
h = json.dumps(hdr, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(sys.argv[2], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    f.truncate(8 + len(h) + off)
EOF
}
if [ -n "$PY" ] && mk_sparse fixtures/golden/sd15/sd15_ldm_manifest.json "$T/sd15.safetensors" 2>/dev/null; then
  out=$("$MI" "$T/sd15.safetensors"); rc=$?
  check sd15_exit [ "$rc" = 0 ]
  check sd15_checkpoint has "$out" "kind:        checkpoint, sd1, ldm layout, parts: unet vae text_encoder"
  check sd15_params has "$out" "parameters:  1066235384"   # 1066235307 weights + 77 position ids
fi
if [ -n "$PY" ] && mk_sparse fixtures/golden/manifests/sdxl_base_1.0_checkpoint_keys.json "$T/sdxl.safetensors" 2>/dev/null; then
  out=$("$MI" "$T/sdxl.safetensors"); rc=$?
  check sdxl_over_4gib_exit [ "$rc" = 0 ]
  check sdxl_checkpoint has "$out" "kind:        checkpoint, sdxl, ldm layout, parts: unet vae text_encoder text_encoder_2"
  check sdxl_params has "$out" "parameters:  3468837945"
  size=$(stat -c %s "$T/sdxl.safetensors")
  check sdxl_size [ "$size" -gt 4294967296 ]
  rm -f "$T/sdxl.safetensors"
fi

# --- errors and exit statuses ---
err=$("$MI" "$T/missing.safetensors" 2>&1 >/dev/null); rc=$?
check missing_exit_4 [ "$rc" = 4 ]
check missing_one_line [ "$(wc -l <<<"$err")" = 1 ]
check missing_names_file has "$err" "model-inspect: $T/missing.safetensors: cannot open"

printf '\x3c\x00\x00\x00\x00\x00\x00\x00{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}' >"$T/trail.safetensors"
head -c 20 /dev/zero >>"$T/trail.safetensors"
err=$("$MI" "$T/trail.safetensors" 2>&1 >/dev/null); rc=$?
check malformed_exit_3 [ "$rc" = 3 ]
check malformed_reason has "$err" "$T/trail.safetensors: at byte 84: 4 trailing bytes after the last tensor"

printf '\x3a\x00\x00\x00\x00\x00\x00\x00{"a":{"dtype":"F8_E8M0","shape":[1],"data_offsets":[0,1]}}' >"$T/e8m0.safetensors"
"$MI" "$T/e8m0.safetensors" >/dev/null 2>&1; rc=$?
check refused_dtype_exit_3 [ "$rc" = 3 ]

printf '\x80\x02}q\x00.' >"$T/pickle.safetensors"
err=$("$MI" "$T/pickle.safetensors" 2>&1 >/dev/null); rc=$?
check pickle_named_safetensors_fails [ "$rc" != 0 ]
check pickle_named_safetensors_not_header not has "$err" "header"

out=$("$MI" $R/st_i64_scalar_offset_order.safetensors "$T/trail.safetensors" 2>/dev/null); rc=$?
check many_files_worst_status [ "$rc" = 3 ]
check many_files_good_one_printed has "$out" "tensors:     9"
out=$("$MI" --json "$T/trail.safetensors" 2>/dev/null)
check json_error_entry has "$out" '"exit_status":	3'

"$MI" >/dev/null 2>&1; rc=$?
check no_args_exit_2 [ "$rc" = 2 ]
"$MI" --bogus $R/st_i64_scalar_offset_order.safetensors >/dev/null 2>&1; rc=$?
check bad_option_exit_2 [ "$rc" = 2 ]
"$MI" --help >/dev/null 2>&1; rc=$?
check help_exit_0 [ "$rc" = 0 ]

# the report on stdout is part of the result: a full stdout is an I/O error (exit 4), named
if [ -w /dev/full ]; then
    err=$("$MI" $R/sd15_lora_attnproc_noprefix.safetensors $R/sd15_lora_attnproc_noprefix.safetensors 2>&1 >/dev/full); rc=$?
    check stdout_full_exit_4 [ "$rc" = 4 ]
    check stdout_full_message has "$err" "model-inspect: standard output: write error: No space left on device"
fi
