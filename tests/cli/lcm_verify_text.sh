#!/usr/bin/env bash
# lcm-verify tokenize / text-encode / vae-decode / render against the goldens
# (fixtures/golden/clip, fixtures/golden/sd15). Tolerances: CLIP hidden states
# max-abs <= 1e-4 (reached 1.3e-6), VAE decode <= 1e-4 (reached 4.3e-6),
# token ids exact; render: deterministic per seed, A1111 parameters in the PNG.
set -u
cd "$(dirname "$0")/../.."
BIN=${BIN:-bin}
LV="$BIN/lcm-verify"
CMPROW="${BUILD:-build}/tests/test_clip cmprow"
C=fixtures/golden/clip
G=fixtures/golden/sd15
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT

ok() { echo "PASS $1"; }
no() { echo "FAIL $1: $2"; }

# tokenize: the well-known ids, 77 of them, SD1.5 padding (vocabulary found next to bin/)
out=$("$LV" tokenize --prompt "a photo of a cat" 2>"$T/err")
case "$out" in "[49406, 320, 1125, 539, 320, 2368, 49407, 49407,"*) ok tokenize_cat;; *) no tokenize_cat "got '$out' $(cat "$T/err")";; esac
n=$(echo "$out" | tr ',' '\n' | wc -l)
[ "$n" -eq 77 ] && ok tokenize_77_ids || no tokenize_77_ids "$n ids"
out=$("$LV" tokenize --prompt "a photo of a cat" --pad 0)
case "$out" in *"2368, 49407, 0, 0,"*", 0]") ok tokenize_pad_zero;; *) no tokenize_pad_zero "got '$out'";; esac
long=$(printf 'cat %.0s' $(seq 100))
out=$("$LV" tokenize --prompt "$long")
case "$out" in "[49406, 2368, "*", 2368, 49407]") ok tokenize_truncates;; *) no tokenize_truncates "got '$out'";; esac
out=$("$LV" tokenize --prompt "caf$(printf '\xc3\x83\xc2\xa9') ﬁne" --content)
[ "$out" = "$("$LV" tokenize --prompt "café fine" --content)" ] && ok tokenize_ftfy_fixes || no tokenize_ftfy_fixes "got '$out'"
LIBMERGE_CLIP_VOCAB=/nonexistent "$LV" tokenize --prompt x >/dev/null 2>&1; rc=$?
[ $rc -eq 4 ] && ok tokenize_missing_vocab || no tokenize_missing_vocab "exit $rc, expected 4"
"$LV" tokenize --prompt "$(printf 'a\xffb')" >/dev/null 2>"$T/err"; rc=$?
[ $rc -eq 3 ] && grep -q "UTF-8" "$T/err" && ok tokenize_bad_utf8 || no tokenize_bad_utf8 "exit $rc"

# text-encode: tiny CLIP (LDM names), prompt row 0 of the goldens
if "$LV" text-encode "$C/clip_tiny.safetensors" --prompt "a photo of a cat" -o "$T/te.safetensors" 2>"$T/err"; then
  d=$($CMPROW "$T/te.safetensors" context "$C/clip_tiny_goldens.safetensors" last_hidden_state 0 1e-4) \
    && ok text_encode_last || no text_encode_last "max abs $d"
  d=$($CMPROW "$T/te.safetensors" tokens "$C/clip_tiny_goldens.safetensors" input_ids 0 0) \
    && ok text_encode_tokens || no text_encode_tokens "ids differ ($d)"
else no text_encode_last "exit $?: $(cat "$T/err")"; fi
if "$LV" text-encode "$C/clip_tiny.safetensors" --prompt "a photo of a cat" --clip-skip 2 -o "$T/te2.safetensors" 2>"$T/err"; then
  d=$($CMPROW "$T/te2.safetensors" context "$C/clip_tiny_goldens.safetensors" penultimate_final_ln 0 1e-4) \
    && ok text_encode_clip_skip_2 || no text_encode_clip_skip_2 "max abs $d"
else no text_encode_clip_skip_2 "exit $?: $(cat "$T/err")"; fi
"$LV" text-encode "$C/clip_tiny.safetensors" --prompt x --clip-skip 3 -o "$T/x.safetensors" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && [ ! -e "$T/x.safetensors" ] && ok text_encode_bad_clip_skip || no text_encode_bad_clip_skip "exit $rc"
"$LV" text-encode "$G/vae_ldm.safetensors" --prompt x -o "$T/x.safetensors" 2>"$T/err"; rc=$?
[ $rc -eq 3 ] && grep -q "text encoder" "$T/err" && ok text_encode_not_clip || no text_encode_not_clip "exit $rc: $(cat "$T/err")"

# vae-decode: the golden z, as the pipeline decodes it (z / 0.18215) and raw
for layout in ldm diffusers; do
  if "$LV" vae-decode "$G/vae_$layout.safetensors" --input "$G/vae_io.safetensors" --latent-name z -o "$T/img_$layout.safetensors" 2>"$T/err"; then
    d=$($CMPROW "$T/img_$layout.safetensors" image "$G/vae_io.safetensors" decode_scaled.decoded 0 1e-4) \
      && ok vae_decode_$layout || no vae_decode_$layout "max abs $d"
  else no vae_decode_$layout "exit $?: $(cat "$T/err")"; fi
done
if "$LV" vae-decode "$G/vae_ldm.safetensors" --input "$G/vae_io.safetensors" --latent-name z --no-scale -o "$T/raw.safetensors" 2>"$T/err"; then
  d=$($CMPROW "$T/raw.safetensors" image "$G/vae_io.safetensors" decode.decoded 0 1e-4) \
    && ok vae_decode_no_scale || no vae_decode_no_scale "max abs $d"
else no vae_decode_no_scale "exit $?: $(cat "$T/err")"; fi
if "$LV" vae-decode "$G/vae_ldm.safetensors" --input "$G/vae_io.safetensors" --latent-name z -o "$T/img.png" 2>"$T/err"; then
  [ "$(head -c 8 "$T/img.png" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] && ok vae_decode_png || no vae_decode_png "not a PNG"
else no vae_decode_png "exit $?: $(cat "$T/err")"; fi
"$LV" vae-decode "$G/unet_ldm.safetensors" --input "$G/vae_io.safetensors" --latent-name z -o "$T/x.png" 2>"$T/err"; rc=$?
[ $rc -eq 3 ] && [ ! -e "$T/x.png" ] && ok vae_decode_not_a_vae || no vae_decode_not_a_vae "exit $rc: $(cat "$T/err")"
"$LV" vae-decode "$G/vae_ldm.safetensors" --input "$G/vae_io.safetensors" -o "$T/x.png" 2>"$T/err"; rc=$?
[ $rc -eq 3 ] && grep -q latent "$T/err" && ok vae_decode_no_latent || no vae_decode_no_latent "exit $rc"

# render: tiny text encoder + UNet + VAE, seeded
R=("$LV" render "$G/unet_ldm.safetensors" --vae "$G/vae_ldm.safetensors" --text-encoder "$C/clip_tiny.safetensors"
   --prompt "a photo of a cat" --negative-prompt "blurry" --steps 2 --size 64x64)
if "${R[@]}" --seed 42 -o "$T/a.png" --latents "$T/a.safetensors" 2>"$T/err" && "${R[@]}" --seed 42 -o "$T/b.png" 2>>"$T/err"; then
  cmp -s "$T/a.png" "$T/b.png" && ok render_deterministic || no render_deterministic "same seed, different files"
  hash=$(sha256sum "$G/unet_ldm.safetensors" | cut -c1-10)
  grep -aq "Steps: 2, Sampler: LCM, CFG scale: 1, Seed: 42, Size: 64x64, Model hash: $hash, Model: unet_ldm" "$T/a.png" \
    && grep -aq "Negative prompt: blurry" "$T/a.png" && ok render_a1111_parameters || no render_a1111_parameters "parameters text missing or wrong"
  # the PNG's pixels are the vae-decode of the saved latents
  "$LV" vae-decode "$G/vae_ldm.safetensors" --input "$T/a.safetensors" -o "$T/c.png" 2>"$T/err" \
    && ${BUILD:-build}/tests/test_png samepixels "$T/a.png" "$T/c.png" \
    && ok render_latents_saved || no render_latents_saved "decoded latents differ from the PNG $(cat "$T/err")"
  "${R[@]}" --seed 43 -o "$T/d.png" 2>"$T/err"
  cmp -s "$T/a.png" "$T/d.png" && no render_seed_matters "seeds 42 and 43 gave the same file" || ok render_seed_matters
else no render_deterministic "exit $?: $(cat "$T/err")"; fi
"${R[@]}" -o "$T/x.png" 2>/dev/null; rc=$?
[ $rc -eq 2 ] && ok render_needs_seed || no render_needs_seed "exit $rc"
"${R[@]}" --seed 1 -o "$G/unet_ldm.safetensors" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && ok render_refuses_overwriting_input || no render_refuses_overwriting_input "exit $rc: $(cat "$T/err")"
"${R[@]}" --seed 1 --size 60x64 -o "$T/x.png" 2>/dev/null; rc=$?
[ $rc -eq 2 ] && [ ! -e "$T/x.png" ] && ok render_bad_size || no render_bad_size "exit $rc"
# sides need be multiples of 8 only (the message once said "64 for SD1.x"): 72x56 renders
"${R[@]}" --seed 1 --size 60x64 -o "$T/x.png" 2>"$T/err"
grep -q "bad --size '60x64' (WxH, sides multiples of 8)" "$T/err" && ! grep -q "64 for" "$T/err" \
  && ok render_bad_size_message || no render_bad_size_message "$(cat "$T/err")"
if "${R[@]}" --seed 1 --size 72x56 -o "$T/s.png" 2>"$T/err"; then
  grep -aq "Size: 72x56" "$T/s.png" && ok render_size_multiple_of_8 || no render_size_multiple_of_8 "no 'Size: 72x56' in the PNG"
else no render_size_multiple_of_8 "exit $?: $(cat "$T/err")"; fi

# outputs are checked before any work (lm_output_check, writer.h): a FIFO, a
# directory, a LoRA or the vocabulary given as an output is refused (exit 2) and left as it was
mkfifo "$T/fifo"; mkdir "$T/dir"
cp fixtures/bake/lora_a_kohya.safetensors "$T/lora.safetensors"
cp "$C/bpe_simple_vocab_16e6.txt.gz" "$T/vocab.txt.gz"
timeout 60 "${R[@]}" --seed 1 -o "$T/fifo" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && [ -p "$T/fifo" ] && grep -q "FIFO" "$T/err" && ok render_refuses_fifo || no render_refuses_fifo "exit $rc: $(cat "$T/err")"
timeout 60 "${R[@]}" --seed 1 -o "$T/dir" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && [ -d "$T/dir" ] && ok render_refuses_directory || no render_refuses_directory "exit $rc: $(cat "$T/err")"
timeout 60 "${R[@]}" --seed 1 -l "$T/lora.safetensors:0.5" -o "$T/y.png" --latents "$T/lora.safetensors" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && cmp -s "$T/lora.safetensors" fixtures/bake/lora_a_kohya.safetensors && [ ! -e "$T/y.png" ] \
  && ok render_refuses_latents_over_lora || no render_refuses_latents_over_lora "exit $rc: $(cat "$T/err")"
timeout 60 "${R[@]}" --seed 1 --vocab "$T/vocab.txt.gz" -o "$T/vocab.txt.gz" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && cmp -s "$T/vocab.txt.gz" "$C/bpe_simple_vocab_16e6.txt.gz" \
  && ok render_refuses_vocab_output || no render_refuses_vocab_output "exit $rc: $(cat "$T/err")"
mkfifo "$T/fifo.png"
timeout 60 "$LV" vae-decode "$G/vae_ldm.safetensors" --input "$G/vae_io.safetensors" --latent-name z -o "$T/fifo.png" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && [ -p "$T/fifo.png" ] && ok vae_decode_refuses_fifo || no vae_decode_refuses_fifo "exit $rc: $(cat "$T/err")"
timeout 60 "$LV" text-encode "$C/clip_tiny.safetensors" --prompt "a cat" --vocab "$T/vocab.txt.gz" -o "$T/vocab.txt.gz" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && cmp -s "$T/vocab.txt.gz" "$C/bpe_simple_vocab_16e6.txt.gz" \
  && ok text_encode_refuses_vocab_output || no text_encode_refuses_vocab_output "exit $rc: $(cat "$T/err")"
