#!/usr/bin/env bash
# lcm-verify vae-decode on a standalone LDM-layout VAE (bare encoder.…/decoder.… names, as
# vae-ft-mse-840000 and sdxl_vae ship): the golden vae_ldm.safetensors with its
# "first_stage_model." prefix stripped (made here with standard-library python3; same data
# area) must decode exactly as the prefixed file does. Prints one PASS/FAIL per check.
set -u
BIN=${BIN:-bin}
LV="$BIN/lcm-verify"
G=fixtures/golden/sd15
T=$(mktemp -d "${TMPDIR:-/tmp}/lm_vl.XXXXXX")
trap 'rm -rf "$T"' EXIT
PY=$(command -v python3 || echo /usr/bin/python3)

ok() { echo "PASS lcm_verify_vae_ldm_$1"; }
bad() { echo "FAIL lcm_verify_vae_ldm_$1: $2"; }

renamed=$("$PY" - "$G/vae_ldm.safetensors" "$T/vae_bare.safetensors" <<'PYEOF'
import json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    hdr = json.loads(f.read(n))
    data = f.read()
p = "first_stage_model."
out = {}
for k, v in hdr.items():
    if k != "__metadata__":
        assert k.startswith(p), k
        k = k[len(p):]
    out[k] = v
h = json.dumps(out, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + data)
print(sum(1 for k in out if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))))
PYEOF
)

# all 244 tensors of the tiny VAE now carry bare LDM names
[ "$renamed" = 244 ] && ok fixture_has_bare_names || bad fixture_has_bare_names "renamed '$renamed' of 244 tensors"
for f in ldm bare; do
    m=$G/vae_ldm.safetensors; [ $f = bare ] && m=$T/vae_bare.safetensors
    if "$LV" vae-decode "$m" --input "$G/vae_io.safetensors" --latent-name z -o "$T/img_$f.safetensors" 2>"$T/err_$f"; then
        ok "decode_$f"
    else
        bad "decode_$f" "$(head -c 300 "$T/err_$f")"
    fi
done
if [ -s "$T/img_bare.safetensors" ] && cmp -s "$T/img_ldm.safetensors" "$T/img_bare.safetensors"; then
    ok bare_equals_prefixed
else
    bad bare_equals_prefixed "the bare-name VAE decodes differently from the prefixed one"
fi
