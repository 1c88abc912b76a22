#!/usr/bin/python3
"""The make-demo bake done the plain numpy way, as the baseline of bench/bake.sh:
load the base, W += λ·scale·(up @ down) in fp32 for every LoRA module, cast back, save
(fsync'd, like lcm-bake). Usage: bake_numpy.py BASE OUT LORA:λ [LORA:λ …]
Module names → LDM tensor names through fixtures/golden/manifests/unet_module_map_sd15.json."""
import json, os, struct, sys
import numpy as np

DT = {'F16': np.float16, 'F32': np.float32, 'BF16': None, 'I64': np.int64}
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')

def read(path):
    b = np.fromfile(path, dtype=np.uint8)
    n = int(b[:8].view(np.uint64)[0])
    h = json.loads(b[8:8 + n].tobytes())
    meta = h.pop('__metadata__', {})
    t = {}
    for k, v in h.items():
        s, e = v['data_offsets']
        raw = b[8 + n + s:8 + n + e]
        if v['dtype'] == 'BF16':
            a = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = raw.view(DT[v['dtype']])
        t[k] = a.reshape(v['shape'])
    return t, meta

def write(path, t, meta):
    hdr, off = {'__metadata__': meta}, 0
    for k, a in t.items():
        hdr[k] = {'dtype': {np.dtype(np.float16): 'F16', np.dtype(np.float32): 'F32', np.dtype(np.int64): 'I64'}[a.dtype],
                  'shape': list(a.shape), 'data_offsets': [off, off + a.nbytes]}
        off += a.nbytes
    h = json.dumps(hdr, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h)
        for a in t.values():
            f.write(np.ascontiguousarray(a).tobytes())
        f.flush()
        os.fsync(f.fileno())

def modules(lora):
    """(module key, up, down, alpha) for kohya and diffusers attention-processor names."""
    mods = {}
    for k, a in lora.items():
        for suf, part in (('.lora_up.weight', 'up'), ('.lora_down.weight', 'down'), ('.alpha', 'alpha'),
                          ('_lora.up.weight', 'up'), ('_lora.down.weight', 'down')):
            if k.endswith(suf):
                name = k[:-len(suf)]
                if suf.startswith('_lora'):
                    name = name.replace('.processor.', '.').replace('to_out', 'to_out.0') + ''
                    name = 'lora_unet_' + name.replace('.', '_')
                mods.setdefault(name, {})[part] = a
    return mods

def main():
    base, out, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
    W, meta = read(base)
    m = json.load(open(os.path.join(ROOT, 'fixtures/golden/manifests/unet_module_map_sd15.json')))['modules']
    target = {'lora_unet_' + e['diffusers'].replace('.', '_'): 'model.diffusion_model.' + e['original'] + '.weight' for e in m}
    W = {k: np.array(v) for k, v in W.items()}          # own the arrays
    for spec in specs:
        path, lam = spec.rsplit(':', 1)
        lam = float(lam)
        lora, _ = read(path)
        for name, f in modules(lora).items():
            t = target[name]
            up = f['up'].astype(np.float32).reshape(f['up'].shape[0], -1)
            down = f['down'].astype(np.float32).reshape(f['down'].shape[0], -1)
            r = down.shape[0]
            scale = float(f['alpha']) / r if 'alpha' in f else 1.0
            w = W[t].astype(np.float32)
            w += (lam * scale) * (up @ down).reshape(w.shape)
            W[t] = w.astype(W[t].dtype)
    write(out, W, meta)

main()
