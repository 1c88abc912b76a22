#!/usr/bin/python3
"""Writes the small fuzzing seeds in tests/fuzz/seeds/<harness>/ (committed).

Run from the repository root with Debian's python3 (numpy; torch optional):
    /usr/bin/python3 tests/fuzz/make_seeds.py
Seeds are small on purpose: libFuzzer mutates fastest on inputs of a few KB.
The real files in fixtures/ are added to the corpus by tests/fuzz/run.sh when
they are small; the big real LoRAs are cut down here to their first modules
(bytes copied, names and metadata kept) so their structure reaches the fuzzer.
"""
import json
import os
import pickle
import struct
import sys

import numpy as np

OUT = "tests/fuzz/seeds"
DT = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
      "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def st_bytes(tensors, meta=None, raw=None):
    """tensors: list of (name, dtype name, shape, bytes). Offsets in list order."""
    header, data, off = {}, b"", 0
    if meta is not None:
        header["__metadata__"] = meta
    for name, dt, shape, b in tensors:
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        data += b
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def arr(dt, shape, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(int(np.prod(shape)) if shape else 1).astype(np.float32) * 0.1
    return a.astype(DT.get(dt, np.float32)).reshape(shape if shape else ()).tobytes()


def write(harness, name, b):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(b)


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        base = 8 + n
        f.seek(0)
        blob = f.read()
    return h, blob, base


def cut_lora(path, n_modules):
    """First n_modules modules of a real LoRA file, data copied byte for byte."""
    h, blob, base = read_st(path)
    meta = h.pop("__metadata__", None)
    if meta:
        meta = dict(list(meta.items())[:4])
    mods, out = [], []
    for k in h:
        m = k.split(".")[0] if k.startswith("lora_") else k.rsplit(".", 3)[0]
        if m not in mods:
            if len(mods) == n_modules:
                continue
            mods.append(m)
        e = h[k]
        a, b = e["data_offsets"]
        out.append((k, e["dtype"], e["shape"], blob[base + a: base + b]))
    return st_bytes(out, meta)


def safetensors_seeds():
    H = "fuzz_safetensors"
    write(H, "empty", st_bytes([]))
    write(H, "meta_only", st_bytes([], {"format": "pt", "note": "x"}))
    for dt in ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL",
               "U16", "U32", "U64", "F8_E4M3", "F8_E5M2"]:
        size = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4,
                "F16": 2, "BF16": 2, "I16": 2, "U16": 2}.get(dt, 1)
        write(H, "dtype_" + dt, st_bytes([("t", dt, [2, 3], bytes(range(6 * size)))]))
    write(H, "scalar_and_empty", st_bytes([("s", "F32", [], arr("F32", [])),
                                           ("z", "F16", [0, 4], b""),
                                           ("v", "F32", [3], arr("F32", [3]))]))
    write(H, "four_dims", st_bytes([("w", "F16", [2, 2, 3, 3], arr("F16", [2, 2, 3, 3]))], {"a": "b"}))
    # header not padded, unaligned data (as old writers did)
    h = json.dumps({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}).encode()
    # base-checkpoint names (key map, layout conversion) with tiny data
    man = json.load(open("fixtures/golden/sd15/sd15_ldm_manifest.json"))["tensors"]
    pick = [t for t in man if t["name"].startswith("model.diffusion_model.input_blocks.1.")][:24]
    pick += [t for t in man if t["name"].startswith(("first_stage_model.decoder.mid", "cond_stage_model.transformer.text_model.encoder.layers.0."))][:24]
    write(H, "ldm_names", st_bytes([(t["name"], "F16", [1], arr("F16", [1])) for t in pick]))
    write(H, "diffusers_names", st_bytes([(t["diffusers"]["name"], "F16", [1], arr("F16", [1])) for t in pick if "diffusers" in t]))
    write(H, "unpadded", struct.pack("<Q", len(h)) + h + arr("F32", [3]))


def lora_seeds():
    H = "fuzz_lora"
    real = "fixtures/real"
    for f, n in [("sd15_lora_attnproc_noprefix.safetensors", 1),
                 ("sd15_lora_diffusers_bf16.safetensors", 4),
                 ("sd15_lycoris_lokr_fp16.safetensors", 6)]:
        p = os.path.join(real, f)
        if os.path.exists(p):
            write(H, "cut_" + f, cut_lora(p, n))
    r = 2
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    pin = "lora_unet_down_blocks_0_attentions_0_proj_in"
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    alpha = lambda v: np.array(v, np.float16).tobytes()
    # kohya LoRA / LoCon: linear, 1x1 conv, 3x3 conv, text encoder
    write(H, "kohya_locon", st_bytes([
        (q + ".alpha", "F16", [], alpha(1.0)),
        (q + ".lora_down.weight", "F16", [r, 320], arr("F16", [r, 320], 1)),
        (q + ".lora_up.weight", "F16", [320, r], arr("F16", [320, r], 2)),
        (pin + ".alpha", "F16", [], alpha(2.0)),
        (pin + ".lora_down.weight", "F16", [r, 320, 1, 1], arr("F16", [r, 320, 1, 1], 3)),
        (pin + ".lora_up.weight", "F16", [320, r, 1, 1], arr("F16", [320, r, 1, 1], 4)),
        (conv + ".alpha", "F16", [], alpha(1.0)),
        (conv + ".lora_down.weight", "F16", [r, 320, 3, 3], arr("F16", [r, 320, 3, 3], 5)),
        (conv + ".lora_up.weight", "F16", [320, r, 1, 1], arr("F16", [320, r, 1, 1], 6)),
        (te + ".alpha", "F32", [], np.array(1.0, np.float32).tobytes()),
        (te + ".lora_down.weight", "F32", [r, 768], arr("F32", [r, 768], 7)),
        (te + ".lora_up.weight", "F32", [768, r], arr("F32", [768, r], 8)),
    ], {"ss_network_module": "networks.lora", "ss_network_dim": "2", "ss_network_alpha": "1.0"}))
    # Tucker (lora_mid)
    write(H, "kohya_tucker", st_bytes([
        (conv + ".alpha", "F16", [], alpha(2.0)),
        (conv + ".lora_down.weight", "F16", [r, 320, 1, 1], arr("F16", [r, 320, 1, 1], 1)),
        (conv + ".lora_mid.weight", "F16", [r, r, 3, 3], arr("F16", [r, r, 3, 3], 2)),
        (conv + ".lora_up.weight", "F16", [320, r, 1, 1], arr("F16", [320, r, 1, 1], 3)),
    ]))
    # LoHa, with and without Tucker cores
    write(H, "loha", st_bytes([
        (q + ".alpha", "F32", [], np.array(2.0, np.float32).tobytes()),
        (q + ".hada_w1_a", "F32", [320, r], arr("F32", [320, r], 1)),
        (q + ".hada_w1_b", "F32", [r, 320], arr("F32", [r, 320], 2)),
        (q + ".hada_w2_a", "F32", [320, r], arr("F32", [320, r], 3)),
        (q + ".hada_w2_b", "F32", [r, 320], arr("F32", [r, 320], 4)),
        (conv + ".alpha", "F32", [], np.array(2.0, np.float32).tobytes()),
        (conv + ".hada_t1", "F32", [r, r, 3, 3], arr("F32", [r, r, 3, 3], 5)),
        (conv + ".hada_w1_a", "F32", [r, 320], arr("F32", [r, 320], 6)),
        (conv + ".hada_w1_b", "F32", [r, 320], arr("F32", [r, 320], 7)),
        (conv + ".hada_t2", "F32", [r, r, 3, 3], arr("F32", [r, r, 3, 3], 8)),
        (conv + ".hada_w2_a", "F32", [r, 320], arr("F32", [r, 320], 9)),
        (conv + ".hada_w2_b", "F32", [r, 320], arr("F32", [r, 320], 10)),
    ]))
    # LoKr: full w1, factored w2; full diff with bias; DoRA magnitude
    write(H, "lokr_full_dora", st_bytes([
        (q + ".lokr_w1", "F16", [4, 4], arr("F16", [4, 4], 1)),
        (q + ".lokr_w2_a", "F16", [80, r], arr("F16", [80, r], 2)),
        (q + ".lokr_w2_b", "F16", [r, 80], arr("F16", [r, 80], 3)),
        (q + ".alpha", "F16", [], alpha(2.0)),
        ("lora_unet_conv_in.diff", "F16", [320, 4, 3, 3], arr("F16", [320, 4, 3, 3], 4)),
        ("lora_unet_conv_in.diff_b", "F16", [320], arr("F16", [320], 5)),
        (te + ".lora_down.weight", "F16", [r, 768], arr("F16", [r, 768], 6)),
        (te + ".lora_up.weight", "F16", [768, r], arr("F16", [768, r], 7)),
        (te + ".dora_scale", "F16", [768, 1], arr("F16", [768, 1], 8)),
    ]))
    # diffusers / PEFT spellings
    d = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    write(H, "diffusers_unet", st_bytes([
        (d + ".lora.down.weight", "F32", [r, 768], arr("F32", [r, 768], 1)),
        (d + ".lora.up.weight", "F32", [320, r], arr("F32", [320, r], 2)),
        ("text_encoder.text_model.encoder.layers.0.self_attn.k_proj.lora_linear_layer.down.weight", "F32", [r, 768], arr("F32", [r, 768], 3)),
        ("text_encoder.text_model.encoder.layers.0.self_attn.k_proj.lora_linear_layer.up.weight", "F32", [768, r], arr("F32", [768, r], 4)),
    ]))
    p = "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v"
    write(H, "peft", st_bytes([
        (p + ".lora_A.weight", "F32", [r, 320], arr("F32", [r, 320], 1)),
        (p + ".lora_B.weight", "F32", [320, r], arr("F32", [320, r], 2)),
    ]))
    # a checkpoint-like file (not a LoRA)
    write(H, "not_a_lora", st_bytes([("model.diffusion_model.out.2.bias", "F32", [4], arr("F32", [4]))]))


def torch_seeds():
    H = "fuzz_torch"
    for name, b in [("global_os_system", b"cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."),
                    ("proto0_list", b"(lp0\nI1\naF2.5\naS'x'\np1\na."),
                    ("ordered_dict", b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aK\x01s."),
                    ("deep_lists", b"\x80\x02" + b"]" * 50 + b"a" * 49 + b"."),
                    ("memo_p5", pickle.dumps([[1, 2], [1, 2]] * 3, protocol=5))]:
        write("fuzz_pickle", name, b)
    # hostile and odd pickles, handcrafted (no torch needed)
    write(H, "global_os_system", b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    write(H, "stack_global_posix", b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x04true\x94\x85\x94R\x94.")
    write(H, "memo_out_of_range", b"\x80\x02}q\x00h\x07.")
    write(H, "plain_dict", pickle.dumps({"a": 1, "b": [1.5, "x", (2, 3)], "c": None}, protocol=2))
    write(H, "plain_dict_p4", pickle.dumps({"a": 1, "b": {"c": b"xy"}}, protocol=4))
    try:
        import io
        import torch
    except ImportError:
        print("torch not available: torch seeds from torch.save skipped", file=sys.stderr)
        return
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    sd = {"w": base, "h": base.half(), "b": torch.randn(3).bfloat16(), "i": torch.arange(5),
          "view": base[1:3], "t": base.t(), "s": torch.tensor(2.5)}
    nested = {"state_dict": {"model.diffusion_model.x.weight": torch.randn(2, 2)}, "global_step": 7, "epoch": 1}
    for name, obj in [("zip_flat", sd), ("zip_nested", nested)]:
        b = io.BytesIO()
        torch.save(obj, b)
        write(H, name, b.getvalue())
        import zipfile
        z = zipfile.ZipFile(io.BytesIO(b.getvalue()))
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
        write("fuzz_pickle", name + ".pkl", z.read(pkl))
    for name, obj in [("legacy_flat", sd), ("legacy_nested", nested)]:
        b = io.BytesIO()
        torch.save(obj, b, _use_new_zipfile_serialization=False)
        write(H, name, b.getvalue())


def tokenizer_seeds():
    H = "fuzz_tokenizer"
    g = json.load(open("fixtures/golden/clip/tokenizer_goldens.json"))
    for c in g["cases"]:
        write(H, "golden_%02d" % int(c["id"]) if str(c["id"]).isdigit() else "golden_" + str(c["id"]),
              c["prompt"].encode("utf-8"))
    write(H, "specials", "<|startoftext|>a photo<|endoftext|> of a cat".encode())
    write(H, "mojibake", "cafÃ© &amp; ﬁsh　ＦＵＬＬ “quoted” \x1b[31mred".encode())
    write(H, "invalid_utf8", b"a \xff\xfe b \xc3")
    write(H, "long_word", b"a" * 300)


if __name__ == "__main__":
    safetensors_seeds()
    lora_seeds()
    torch_seeds()
    tokenizer_seeds()
