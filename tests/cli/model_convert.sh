#!/usr/bin/env bash
# model-convert(1): exit statuses, --json, refusals that leave no output.
# Run from the repository root; prints one PASS/FAIL line per check.
set -u
BIN=${BIN:-bin}
MC="$BIN/model-convert"
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT

check() { # name, expected status, command...
  local name=$1 want=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ "$rc" -eq "$want" ]; then echo "PASS $name"; else echo "FAIL $name: status $rc, expected $want: $(head -c 300 "$T/err")"; fi
}

check model_convert_fp16_ok 0 "$MC" fixtures/torch/zip_dtypes.pt -o "$T/a.safetensors" --dtype fp16
if grep -q '5 tensors (3 converted' "$T/out"; then echo "PASS model_convert_summary"; else echo "FAIL model_convert_summary: $(cat "$T/out")"; fi

check model_convert_json 0 "$MC" fixtures/torch/sd_like.ckpt -o "$T/b.safetensors" --prune --use-ema --dtype fp16 --json
if /usr/bin/env python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["ok"] and d["tensors_out"]==4 and d["ema_used"]==2 and d["overflow_total"]==1 and d["overflows"][0]["tensor"].startswith("cond_stage_model") else 1)' "$T/out" 2>/dev/null; then
  echo "PASS model_convert_json_report"; else echo "FAIL model_convert_json_report: $(head -c 300 "$T/out")"; fi

check model_convert_bad_dtype_usage 2 "$MC" fixtures/torch/zip_dtypes.pt -o "$T/c.safetensors" --dtype int8
check model_convert_missing_output_usage 2 "$MC" fixtures/torch/zip_dtypes.pt

check model_convert_hostile_refused 3 "$MC" fixtures/torch/hostile_os_system.pt -o "$T/h.safetensors"
if grep -q 'os.system: .*refusing global os.system' "$T/err" && [ ! -e "$T/h.safetensors" ] && [ -z "$(ls -A "$T" | grep -v '^out$\|^err$\|^a.safetensors$\|^b.safetensors$')" ]; then
  echo "PASS model_convert_hostile_no_output"; else echo "FAIL model_convert_hostile_no_output: $(cat "$T/err")"; fi

check model_convert_not_a_checkpoint 3 "$MC" fixtures/torch/not_torch.zip -o "$T/z.safetensors"
check model_convert_input_is_output 2 "$MC" "$T/a.safetensors" -o "$T/a.safetensors"
check model_convert_unwritable_dir 4 "$MC" fixtures/torch/zip_dtypes.pt -o "$T/no/such/dir/x.safetensors"

check model_convert_layout 0 "$MC" fixtures/golden/sd15/vae_ldm.safetensors -o "$T/vae.safetensors" --layout diffusers
if grep -q 'layout ldm -> diffusers' "$T/out"; then echo "PASS model_convert_layout_summary"; else echo "FAIL model_convert_layout_summary: $(cat "$T/out")"; fi
# --json with --layout: from_layout/to_layout (model-convert(1) lists them); absent without --layout
check model_convert_layout_json 0 "$MC" fixtures/golden/sd15/vae_ldm.safetensors -o "$T/vae2.safetensors" --layout diffusers --json
if /usr/bin/env python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["from_layout"]=="ldm" and d["to_layout"]=="diffusers" else 1)' "$T/out" 2>/dev/null; then
  echo "PASS model_convert_layout_json_fields"; else echo "FAIL model_convert_layout_json_fields: $(head -c 300 "$T/out")"; fi
check model_convert_json_no_layout 0 "$MC" fixtures/torch/zip_dtypes.pt -o "$T/nl.safetensors" --json
if /usr/bin/env python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if "from_layout" not in d and "to_layout" not in d else 1)' "$T/out" 2>/dev/null; then
  echo "PASS model_convert_json_no_layout_fields"; else echo "FAIL model_convert_json_no_layout_fields: $(head -c 300 "$T/out")"; fi
# --json on failure: error and exit_status (lm_cli_json_error)
check model_convert_json_missing 4 "$MC" "$T/none.pt" -o "$T/none.safetensors" --json
if /usr/bin/env python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["ok"] is False and "none.pt" in d["error"] and d["exit_status"]==4 else 1)' "$T/out" 2>/dev/null; then
  echo "PASS model_convert_json_error_fields"; else echo "FAIL model_convert_json_error_fields: $(head -c 300 "$T/out")"; fi

# the report on stdout is part of the result: a full stdout is an I/O error (exit 4), named
if [ -w /dev/full ]; then
  "$MC" fixtures/torch/zip_dtypes.pt -o "$T/full.safetensors" --json >/dev/full 2>"$T/err"; rc=$?
  if [ "$rc" = 4 ] && grep -q 'model-convert: standard output: write error: No space left on device' "$T/err"; then
    echo "PASS model_convert_stdout_full"; else echo "FAIL model_convert_stdout_full: status $rc: $(head -c 300 "$T/err")"; fi
fi

# OpenCLIP text encoders (SDXL's second here): packed in_proj split into q/k/v_proj, logit_scale
# left out and listed under "dropped"; back to LDM re-packs them; an incomplete q/k/v set is refused
check model_convert_openclip_split 0 "$MC" fixtures/convert/sdxl_te_ldm.safetensors -o "$T/te.safetensors" --layout diffusers
if grep -q '41 tensors (0 converted, layout ldm -> diffusers, 1 without a diffusers name left out)' "$T/out"; then
  echo "PASS model_convert_openclip_split_summary"; else echo "FAIL model_convert_openclip_split_summary: $(cat "$T/out")"; fi
check model_convert_openclip_merge_json 0 "$MC" "$T/te.safetensors" -o "$T/te_ldm.safetensors" --layout ldm --json
if /usr/bin/env python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["tensors_out"]==33 and d["unmapped"]==0 and d["dropped"]==[] else 1)' "$T/out" 2>/dev/null; then
  echo "PASS model_convert_openclip_merge_report"; else echo "FAIL model_convert_openclip_merge_report: $(head -c 300 "$T/out")"; fi
check model_convert_openclip_drop_json 0 "$MC" fixtures/convert/sdxl_te_ldm.safetensors -o "$T/te2.safetensors" --layout diffusers --json
if /usr/bin/env python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); x=d["dropped"]; sys.exit(0 if d["unmapped"]==1 and len(x)==1 and x[0]["tensor"]=="conditioner.embedders.1.model.logit_scale" and "diffusers" in x[0]["why"] else 1)' "$T/out" 2>/dev/null; then
  echo "PASS model_convert_openclip_logit_scale_reported"; else echo "FAIL model_convert_openclip_logit_scale_reported: $(head -c 400 "$T/out")"; fi
check model_convert_openclip_incomplete 3 "$MC" fixtures/convert/sdxl_te_diffusers_no_v.safetensors -o "$T/nov.safetensors" --layout ldm
if grep -q 'sdxl_te_diffusers_no_v.safetensors: text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj.weight: missing: the q/k/v set of .* is incomplete' "$T/err" && [ ! -e "$T/nov.safetensors" ]; then
  echo "PASS model_convert_openclip_incomplete_message"; else echo "FAIL model_convert_openclip_incomplete_message: $(cat "$T/err")"; fi

# --standalone-vae: a VAE alone, with the bare names of a standalone LDM VAE file
# (vae-ft-mse-840000, sdxl_vae); from diffusers, from a prefixed LDM VAE, and extracted
# from a checkpoint (the rest left out and reported), all with the golden's tensor data
G=fixtures/golden/sd15
/usr/bin/env python3 - "$G/unet_ldm.safetensors" "$G/vae_ldm.safetensors" "$T/ckpt.safetensors" <<'PY'
import json, struct, sys
def read(p):
    f = open(p, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); d = f.read()
    return {k: (v['dtype'], v['shape'], d[v['data_offsets'][0]:v['data_offsets'][1]]) for k, v in h.items() if k != '__metadata__'}
t = read(sys.argv[1]); t.update(read(sys.argv[2]))
hdr, data, off = {}, b'', 0
for k in sorted(t):
    dt, sh, b = t[k]; hdr[k] = {'dtype': dt, 'shape': sh, 'data_offsets': [off, off + len(b)]}; data += b; off += len(b)
h = json.dumps(hdr).encode(); h += b' ' * (-len(h) % 8)
open(sys.argv[3], 'wb').write(struct.pack('<Q', len(h)) + h + data)
PY
check model_convert_standalone_vae_from_diffusers 0 "$MC" "$G/vae_diffusers.safetensors" -o "$T/v1.safetensors" --layout ldm --standalone-vae
check model_convert_standalone_vae_from_ldm 0 "$MC" "$G/vae_ldm.safetensors" -o "$T/v2.safetensors" --layout ldm --standalone-vae
check model_convert_standalone_vae_extract 0 "$MC" "$T/ckpt.safetensors" -o "$T/v3.safetensors" --layout ldm --standalone-vae --json
if /usr/bin/env python3 - "$G/vae_ldm.safetensors" "$T/v1.safetensors" "$T/v2.safetensors" "$T/v3.safetensors" "$T/out" <<'PY'
import json, struct, sys
def read(p):
    f = open(p, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); d = f.read()
    return {k: d[v['data_offsets'][0]:v['data_offsets'][1]] for k, v in h.items() if k != '__metadata__'}
g = {k[len('first_stage_model.'):]: v for k, v in read(sys.argv[1]).items()}
ok = len(g) == 244 and all(read(p) == g for p in sys.argv[2:5])
r = json.load(open(sys.argv[5]))
ok = ok and r['tensors_out'] == 244 and r['unmapped'] == len(r['dropped']) > 0 and \
     all(x['tensor'].startswith('model.diffusion_model.') and 'VAE' in x['why'] for x in r['dropped'])
sys.exit(0 if ok else 1)
PY
then echo "PASS model_convert_standalone_vae_names_and_data"; else echo "FAIL model_convert_standalone_vae_names_and_data: $(head -c 300 "$T/out")"; fi
check model_convert_standalone_vae_no_vae 3 "$MC" "$G/unet_ldm.safetensors" -o "$T/v4.safetensors" --layout ldm --standalone-vae
if grep -q 'no VAE tensors to write' "$T/err" && [ ! -e "$T/v4.safetensors" ]; then
  echo "PASS model_convert_standalone_vae_no_vae_message"; else echo "FAIL model_convert_standalone_vae_no_vae_message: $(cat "$T/err")"; fi
check model_convert_standalone_vae_needs_ldm 2 "$MC" "$G/vae_ldm.safetensors" -o "$T/v5.safetensors" --standalone-vae
