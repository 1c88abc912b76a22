#!/usr/bin/env bash
# lcm-verify vae-decode --tile N (exact banded decoding) as a user runs it, on the tiny golden
# VAE: bands of 1 and 3 latent rows on an odd 13x9 latent give the untiled image (F32 max
# |diff| <= 1e-4, PNG within +-1); bad --tile values (and render's --vae-tile) are usage
# errors (exit 2) that leave no output; an unusable TMPDIR is one line naming it, exit 4, no
# output; SIGINT during a banded decode exits 130 and leaves nothing in TMPDIR (the activation
# files are unlinked).
# Standard-library python3 only. Prints one PASS/FAIL per check.
set -u
BIN=${BIN:-bin}
LV="$BIN/lcm-verify"
V=fixtures/golden/sd15/vae_ldm.safetensors
T=$(mktemp -d "${TMPDIR:-/tmp}/lm_vt.XXXXXX")
trap 'rm -rf "$T"' EXIT
PY=$(command -v python3 || echo /usr/bin/python3)

ok() { echo "PASS lcm_verify_vae_tile_$1"; }
bad() { echo "FAIL lcm_verify_vae_tile_$1: $2"; }

# latent [1,4,h,w] F32, a smooth deterministic pattern
mklat() {
    "$PY" - "$1" "$2" "$3" <<'PYEOF'
import json, math, struct, sys
p, h, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
v = [0.8 * math.sin(0.31 * x + 0.7 * c) * math.cos(0.23 * y - 0.4 * c) + 0.1 * c
     for c in range(4) for y in range(h) for x in range(w)]
d = struct.pack("<%df" % len(v), *v)
hd = json.dumps({"latent": {"dtype": "F32", "shape": [1, 4, h, w], "data_offsets": [0, len(d)]}}).encode()
hd += b" " * (-len(hd) % 8)
open(p, "wb").write(struct.pack("<Q", len(hd)) + hd + d)
PYEOF
}

mklat "$T/lat.safetensors" 13 9
fails=""
for t in -1 1 3; do
    for ext in safetensors png; do
        "$LV" vae-decode "$V" --input "$T/lat.safetensors" --tile $t -o "$T/img_$t.$ext" 2>"$T/err" ||
            fails="$fails --tile $t .$ext: $(head -c 200 "$T/err");"
    done
done
if [ -z "$fails" ]; then
    cmpres=$("$PY" - "$T" <<'PYEOF'
import json, struct, sys, zlib
T = sys.argv[1]
def st(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; e = json.loads(b[8:8 + n])["image"]
    s, t = e["data_offsets"]; return e["shape"], struct.unpack("<%df" % ((t - s) // 4), b[8 + n + s:8 + n + t])
def png(p):   # 8-bit RGB, non-interlaced, as lm_png_write makes it
    b = open(p, "rb").read(); i = 8; idat = b""; W = H = 0
    while i < len(b):
        n, k = struct.unpack(">I4s", b[i:i + 8])
        if k == b"IHDR": W, H = struct.unpack(">II", b[i + 8:i + 16])
        if k == b"IDAT": idat += b[i + 8:i + 8 + n]
        i += 12 + n
    raw = zlib.decompress(idat); s = 3 * W; out = []; prev = bytearray(s)
    for y in range(H):
        f = raw[y * (s + 1)]; row = bytearray(raw[y * (s + 1) + 1:(y + 1) * (s + 1)])
        for x in range(s):
            a = row[x - 3] if x >= 3 else 0; u = prev[x]; c = prev[x - 3] if x >= 3 else 0
            if f == 1: row[x] = (row[x] + a) & 255
            elif f == 2: row[x] = (row[x] + u) & 255
            elif f == 3: row[x] = (row[x] + (a + u) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(u - c), abs(a - c), abs(a + u - 2 * c)
                row[x] = (row[x] + (a if pa <= pb and pa <= pc else u if pb <= pc else c)) & 255
        out += row; prev = row
    return (H, W), out
sa, a = st(T + "/img_-1.safetensors"); pa_, pa = png(T + "/img_-1.png")
for t in ("1", "3"):
    sb, b = st(T + "/img_%s.safetensors" % t); pb_, pb = png(T + "/img_%s.png" % t)
    d = max(abs(x - y) for x, y in zip(a, b)); dp = max(abs(x - y) for x, y in zip(pa, pb))
    print(t, sb == sa == [1, 3, 104, 72], "%.3g" % d, d <= 1e-4, pb_ == pa_ == (104, 72), dp, dp <= 1)
PYEOF
)
    if [ "$(echo "$cmpres" | awk '$2 == "True" && $4 == "True" && $5 == "True" && $7 == "True"' | wc -l)" = 2 ]; then
        ok banded_equals_untiled
    else
        bad banded_equals_untiled "tile shape maxdiff ok pngshape pngdiff ok: $cmpres"
    fi
else
    bad banded_equals_untiled "$fails"
fi

# bad --tile: exit 2 (usage), one line, no output (4294967297 must not wrap to 1)
fails=""
for t in 0 -5 4097 4294967297 -4294967295 abc 2x ""; do
    "$LV" vae-decode "$V" --input "$T/lat.safetensors" --tile "$t" -o "$T/bad.safetensors" 2>"$T/err"
    rc=$?
    [ $rc = 2 ] && [ "$(wc -l <"$T/err")" = 1 ] && [ ! -e "$T/bad.safetensors" ] || fails="$fails '$t' (exit $rc, $(wc -l <"$T/err") lines);"
    rm -f "$T/bad.safetensors"
done
[ -z "$fails" ] && ok bad_tile_is_usage_error || bad bad_tile_is_usage_error "$fails"
# render --vae-tile: the same rule, refused before anything is loaded
fails=""
for t in 0 -5 4097 4294967297; do
    "$LV" render "$V" --prompt x --seed 1 --steps 1 --vae-tile "$t" -o "$T/r.png" 2>"$T/err"
    rc=$?
    [ $rc = 2 ] && grep -q -- "--vae-tile '$t'" "$T/err" && [ ! -e "$T/r.png" ] || fails="$fails '$t' (exit $rc);"
done
[ -z "$fails" ] && ok render_bad_vae_tile_is_usage_error || bad render_bad_vae_tile_is_usage_error "$fails"

# a latent side over 4096: bad input (exit 3), the shape and the limit in the message
mklat "$T/wide.safetensors" 1 4097
"$LV" vae-decode "$V" --input "$T/wide.safetensors" -o "$T/wide.png" 2>"$T/err"
rc=$?
if [ $rc = 3 ] && grep -q "latent \[1, 4, 1, 4097\] out of range (N >= 1, h and w 1..4096)" "$T/err" && [ ! -e "$T/wide.png" ]; then
    ok latent_over_4096_is_bad_input
else
    bad latent_over_4096_is_bad_input "exit $rc, $(head -c 200 "$T/err")"
fi

# unusable TMPDIR: exit 4, one line naming the directory and the reason, no output
: >"$T/afile"
fails=""
for d in "$T/missing" "$T/afile"; do
    TMPDIR="$d" "$LV" vae-decode "$V" --input "$T/lat.safetensors" --tile 2 -o "$T/out.safetensors" 2>"$T/err"
    rc=$?
    [ $rc = 4 ] && [ "$(wc -l <"$T/err")" = 1 ] && grep -q "$d: .*temporary activations: " "$T/err" &&
        [ ! -e "$T/out.safetensors" ] || fails="$fails $d: exit $rc, '$(head -c 200 "$T/err")';"
    rm -f "$T/out.safetensors"
done
[ -z "$fails" ] && ok bad_tmpdir_is_io_error || bad bad_tmpdir_is_io_error "$fails"

# SIGINT once the banded sweeps hold their two temporary files: exit 130, TMPDIR empty, no output
mkdir "$T/td"
mklat "$T/long.safetensors" 16 160
TMPDIR="$T/td" "$LV" vae-decode "$V" --input "$T/long.safetensors" --tile 1 -o "$T/sig.safetensors" 2>"$T/err" &
pid=$!
seen=0
for _ in $(seq 200); do
    seen=$(find "/proc/$pid/fd" -lname "$T/td/*" 2>/dev/null | wc -l)
    [ "$seen" -ge 2 ] && break
    sleep 0.05
done
kill -INT $pid 2>/dev/null
wait $pid
rc=$?
left=$(ls -A "$T/td" | wc -l)
if [ "$seen" -ge 2 ] && [ $rc = 130 ] && [ "$left" = 0 ] && [ ! -e "$T/sig.safetensors" ]; then
    ok sigint_leaves_no_temp_file
else
    bad sigint_leaves_no_temp_file "temp fds seen $seen, exit $rc, $left entries left in TMPDIR, $(head -c 200 "$T/err")"
fi
