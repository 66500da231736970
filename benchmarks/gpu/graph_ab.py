"""A/B of the decode step's GEMV variants where they count: in the captured CUDA graph of the whole 8B step (the
variants alone mislead once kernels overlap under PDL). One model load; each choice recaptures the graph, is timed
over 600 replays in two passes (the faster kept), and its logits are checked against the torch-ops step.

    python benchmarks/gpu/graph_ab.py MODEL_DIR [--old-source W4A16.cu] [--sweep] [--save]

Starts from the variants the engine would run (this GPU's tuned file, as the CLI reads it); --old-source: the same
with another kernels/w4a16.cu. --sweep: each projection's GEMV variant in turn, in the graph (coordinate descent from
the current variants); --save writes the variants to the per-GPU tuned file the engine reads.
"""
import argparse
import time
from pathlib import Path

import torch

from quantdeploy.engine import cuda_gemv, tuning
from quantdeploy.engine.runner import FastEngine
from quantdeploy.settings import get_settings

PS = [(4, 1, -2), (8, 1, -2), (4, 1, -4)]  # persistent variants, tried on every projection
CANDIDATES = {  # variants tried per projection by --sweep (gate_up: even rows, it carries the activation)
    "qkv": [(2, 2, 1), (4, 2, 4), (8, 1, 4), (4, 1, 2), (8, 1, 2)] + PS,
    "o": [(2, 2, 1), (4, 2, 4), (8, 1, 4), (4, 1, 2), (8, 1, 2)] + PS,
    "gate_up": [(4, 2, 1), (4, 1, 1), (4, 1, 4)] + PS,
    "down": [(8, 1, 4), (4, 2, 4), (8, 1, 7), (4, 1, 14), (8, 1, 8)] + PS,
}


def linears(eng, role):
    return [getattr(L, role).ext for L in eng.dec.layers]


def apply(eng, variants: dict) -> None:
    for role, v in variants.items():
        for lin in linears(eng, role):
            lin.use(v)
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


def time_variants(eng, tok, pos, ref, variants: dict, label: str = "") -> None:
    """The step with these variants in the graph, two passes (the faster kept)."""
    dt = 9.0
    for _ in range(2):
        apply(eng, variants)
        t, err, same = timed(eng, tok, pos, ref)
        dt = min(dt, t)
    print(f"{dt * 1e3:7.3f} ms/step {1 / dt:6.0f} tok/s  rel err {err:.1e} argmax {'same' if same else 'DIFFERS'}"
          f"  {label or 'these variants'}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--old-source", type=Path)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--save", action="store_true")
    a = ap.parse_args()
    eng = FastEngine(a.model, "cuda", torch.float16, 1024, gemv="cuda", config=get_settings().engine)
    ids = list(range(1000, 1016))
    tok, pos = torch.tensor([42], device="cuda"), torch.tensor([16], device="cuda")
    with torch.inference_mode():
        eng.prefill(ids)
        eng.dec.fused = False
        ref = eng._step_eager(tok, pos, 256).float().clone()
        eng.dec.fused = True
        chosen = {role: linears(eng, role)[0].variant for role in CANDIDATES}
        print(torch.cuda.get_device_name(), "variants", chosen, "tuning:", eng.dec.tuning, flush=True)
        time_variants(eng, tok, pos, ref, chosen, "the engine's variants")
        if a.old_source:
            cuda_gemv.SOURCE, new_source = a.old_source, cuda_gemv.SOURCE
            cuda_gemv._kernel.cache_clear()
            time_variants(eng, tok, pos, ref, chosen, f"the engine's variants with {a.old_source}")
            cuda_gemv.SOURCE = new_source
            cuda_gemv._kernel.cache_clear()
        if a.sweep:
            for role, cands in CANDIDATES.items():
                times = {}
                for _ in range(2):
                    for v in cands:
                        apply(eng, {**chosen, role: v})
                        dt, err, same = timed(eng, tok, pos, ref)
                        if not same or err > 1e-2:  # a wrong kernel is reported and never chosen
                            print(f"{role} {v}: WRONG, rel err {err:.1e}, argmax same {same}", flush=True)
                            dt = 9
                        times[v] = min(times.get(v, 9), dt)
                chosen[role] = min(times, key=times.get)
                print(f"{role:8s}", "  ".join(f"{v}: {t * 1e3:.3f}" for v, t in times.items()), "->", chosen[role],
                      flush=True)
            print("swept variants", chosen, flush=True)
            time_variants(eng, tok, pos, ref, chosen, "the swept variants")
        if a.save:
            keys = {cuda_gemv.tuned_key(lin.w.k, lin.w.n, lin.w.z): list(chosen[role]) for role in CANDIDATES
                    for lin in linears(eng, role)[:1]}
            print("saved", tuning.save(get_settings().home / "gemv", torch.device("cuda"), "cuda", keys), keys)


if __name__ == "__main__":
    main()
