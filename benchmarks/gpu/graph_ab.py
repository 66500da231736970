"""A/B of the decode step's settings where they count: in the captured CUDA graph of the whole 8B step (the GEMV
variants alone mislead once kernels overlap under PDL). One model load; each setting recaptures the graph, is timed
over 600 replays in two interleaved rounds (the faster kept), and its logits are checked against the torch-ops step.

    python benchmarks/gpu/graph_ab.py MODEL_DIR [--old-source W4A16.cu] [--sweep] [--save]

Settings: QUANTDEPLOY_PDL_EARLY, QUANTDEPLOY_FUSE_ATTN, QUANTDEPLOY_L2_PREFETCH (see docs/getting-started.md), and
--old-source: an earlier kernels/w4a16.cu with today's settings. --sweep: then each projection's GEMV variant
in turn, in the graph, from the defaults; --save writes the best to the per-GPU tuned file the engine reads.
"""
import argparse
import json
import os
import time
from pathlib import Path

import torch

from quantdeploy.engine import cuda_gemv, pdl
from quantdeploy.engine.runner import FastEngine

DEFAULTS = {"QUANTDEPLOY_PDL_EARLY": "1", "QUANTDEPLOY_FUSE_ATTN": "2", "QUANTDEPLOY_L2_PREFETCH": "32"}
SETTINGS = [
    ("2026-11-30 settings (PDL late, 3 attention kernels, no L2 prefetch)",
     {"QUANTDEPLOY_PDL_EARLY": "0", "QUANTDEPLOY_FUSE_ATTN": "0", "QUANTDEPLOY_L2_PREFETCH": "0"}),
    ("+ PDL early", {"QUANTDEPLOY_FUSE_ATTN": "0", "QUANTDEPLOY_L2_PREFETCH": "0"}),
    ("+ rope into attention (2 kernels)", {"QUANTDEPLOY_FUSE_ATTN": "1", "QUANTDEPLOY_L2_PREFETCH": "0"}),
    ("+ splits combined in it (1 kernel)", {"QUANTDEPLOY_L2_PREFETCH": "0"}),
    ("+ L2 prefetch 32 chunks/row = defaults", {}),
    ("defaults, L2 prefetch 64", {"QUANTDEPLOY_L2_PREFETCH": "64"}),
    ("defaults, L2 prefetch all", {"QUANTDEPLOY_L2_PREFETCH": "100000"}),
    ("defaults, PDL late", {"QUANTDEPLOY_PDL_EARLY": "0"}),
]
CANDIDATES = {  # variants tried per projection by --sweep (gate_up: even rows, it carries the activation)
    "qkv": [(4, 2, 4), (4, 1, 4), (8, 1, 4), (2, 2, 4), (2, 2, 1), (4, 1, 1)],
    "o": [(4, 2, 4), (4, 1, 4), (8, 1, 4), (2, 2, 4), (2, 2, 1), (4, 1, 1)],
    "gate_up": [(4, 1, 1), (4, 2, 1), (2, 2, 1), (2, 4, 1), (8, 1, 1), (4, 1, 4)],
    "down": [(8, 1, 4), (4, 2, 4), (16, 1, 4), (8, 2, 4), (2, 2, 1), (4, 2, 1)],
}


def linears(eng, role):
    return [getattr(L, role).ext for L in eng.dec.layers]


def set_variant(lin, v) -> str:
    w = lin.w
    r, u, s = cuda_gemv.fit_variant(v, w.k, w.n)
    if lin.act and r % 2:
        r = 2
    name = cuda_gemv.kernel_name(r, u, s, cuda_gemv.ACTS[lin.act] if lin.act else 0)
    g = w.k // w.group_size
    gshift = (w.group_size // 32).bit_length() - 1
    lin.gemv = cuda_gemv._Launch(name, lin.device, 4, (w.n, w.k, g, gshift, cuda_gemv.l2_prefetch()),
                                 pdl=pdl.enabled(lin.device))
    lin.rows, lin.split_k, lin.variant, lin.label = r, s, (r, u, s), name
    return name


def apply(eng, env: dict, variants: dict) -> None:
    os.environ.update({**DEFAULTS, **env})
    for role, v in variants.items():
        for lin in linears(eng, role):
            set_variant(lin, v)
    pf = cuda_gemv.l2_prefetch()
    for q in eng.dec.linears():
        q.ext.gemv.ints[4].value = pf
    eng.close()


def timed(eng, tok, pos, ref, n=600) -> tuple[float, float, bool]:
    out = eng.step(tok, pos, 16)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        eng.step(tok, pos, 16)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / n
    err = float((out.float() - ref).norm() / ref.norm())
    return dt, err, bool(out.argmax() == ref.argmax())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--old-source", type=Path)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--save", action="store_true")
    a = ap.parse_args()
    os.environ.update(DEFAULTS)
    eng = FastEngine(a.model, "cuda", torch.float16, 1024, gemv="cuda")
    ids = list(range(1000, 1016))
    tok, pos = torch.tensor([42], device="cuda"), torch.tensor([16], device="cuda")
    with torch.inference_mode():
        eng.prefill(ids)
        eng.dec.fused = False
        ref = eng._step_eager(tok, pos, 256).float().clone()
        eng.dec.fused = True
        default = {role: linears(eng, role)[0].variant for role in CANDIDATES}
        print(torch.cuda.get_device_name(), "default variants", default, flush=True)
        rows = [(name, env, {}) for name, env in SETTINGS]
        best = {}
        for rnd in range(2):
            for name, env, var in rows:
                apply(eng, env, var)
                dt, err, same = timed(eng, tok, pos, ref)
                best[name] = min(best.get(name, (9,))[0], dt), err, same
        if a.old_source:
            cuda_gemv.SOURCE, new_source = a.old_source, cuda_gemv.SOURCE
            cuda_gemv._kernel.cache_clear()
            apply(eng, {}, default)
            runs = [timed(eng, tok, pos, ref) for _ in range(2)]
            best[f"defaults with {a.old_source.name}"] = min(r[0] for r in runs), runs[0][1], runs[0][2]
            cuda_gemv.SOURCE = new_source
            cuda_gemv._kernel.cache_clear()
            apply(eng, {}, default)
        for name, (dt, err, same) in best.items():
            print(f"{dt * 1e3:7.3f} ms/step {1 / dt:6.0f} tok/s  rel err {err:.1e} argmax {'same' if same else 'DIFFERS'}"
                  f"  {name}", flush=True)
        if not a.sweep:
            return
        chosen = dict(default)
        for role, cands in CANDIDATES.items():
            times = {}
            for rnd in range(2):
                for v in cands:
                    apply(eng, {}, {**chosen, role: v})
                    dt, err, same = timed(eng, tok, pos, ref)
                    if not same or err > 1e-2:
                        raise SystemExit(f"{role} {v}: rel err {err:.1e}, argmax same {same}")
                    times[v] = min(times.get(v, 9), dt)
            chosen[role] = min(times, key=times.get)
            print(f"{role:8s}", "  ".join(f"{v}: {t * 1e3:.3f}" for v, t in times.items()), "->", chosen[role],
                  flush=True)
        apply(eng, {}, chosen)
        dt, err, same = min(timed(eng, tok, pos, ref) for _ in range(2))
        print(f"{dt * 1e3:7.3f} ms/step {1 / dt:6.0f} tok/s  swept variants {chosen}", flush=True)
        if a.save:
            path = cuda_gemv.tuned_file(torch.device("cuda"))
            path.parent.mkdir(parents=True, exist_ok=True)
            keys = {f"{lin.w.k}x{lin.w.n}": list(chosen[role]) for role in CANDIDATES
                    for lin in linears(eng, role)[:1]}
            path.write_text(json.dumps(keys, indent=1))
            print("saved", path, keys)


if __name__ == "__main__":
    main()
