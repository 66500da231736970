"""Batch-1 W4A16 GEMV on the GPU for Llama-3-8B shapes: gptqmodel's ExLlamaV2 kernel (our stream-safe build)
against our Triton GEMV (fp32 math, and fp16 math within a group) over launch configurations; GB/s of weight
bytes read, CUDA-graph timing, four copies of each weight rotated so L2 does not help.

    python benchmarks/gpu/gemv_tune.py [--save]   (--save: best Triton config per shape for this GPU)
"""

from __future__ import annotations

import itertools
import json
import sys

import torch
import triton

from quantdeploy.engine.quant import QuantWeight, dequantize
from quantdeploy.engine.triton_gemv import tuned_file, w4a16_gemv

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}


def weight(k, n, dev):
    q = torch.randint(-2 ** 31, 2 ** 31 - 1, (k // 8, n), dtype=torch.int32, device=dev)
    qz = torch.randint(-2 ** 31, 2 ** 31 - 1, (k // 128, n // 8), dtype=torch.int32, device=dev)
    s = (torch.rand(k // 128, n, device=dev) * 1e-2).half()
    z = (torch.rand(k // 128, n, device=dev) * 1e-2).half()
    return QuantWeight(q, s, z, 128, None, qz)


def bench(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=20)


def main():
    dev = torch.device("cuda")
    ws = {name: [weight(k, n, dev) for _ in range(4)] for name, (k, n) in SHAPES.items()}
    xs = {name: torch.randn(k, device=dev).half() for name, (k, n) in SHAPES.items()}
    nbytes = {name: ws[name][0].nbytes() for name in SHAPES}
    from quantdeploy.engine import exllama

    ok, why = exllama.available()
    if ok:
        maker = exllama.ExllamaLinears(dev)
        mods = {name: [maker.make(QuantWeight(w.qweight.clone(), w.scales, w.szeros, 128, None, w.qzeros.clone()))
                       for w in ws[name]] for name in SHAPES}
        maker.finish(16)
        row = []
        for name in SHAPES:
            i = [0]
            x2 = xs[name].view(1, -1)

            def fn():
                i[0] = (i[0] + 1) % 4
                mods[name][i[0]](x2)
            row.append(nbytes[name] / bench(fn) / 1e6)
        print("exllamav2 (stream-safe build)", " ".join(f"{v:7.0f}" for v in row), flush=True)
    else:
        print("exllamav2 unavailable:", why)
    for name, (k, n) in SHAPES.items():  # correctness once, both math modes
        w = ws[name][0]
        ref = xs[name].float() @ dequantize(w, torch.float32)
        for half in (False, True):
            out = torch.zeros(n, device=dev)
            w4a16_gemv(xs[name], w, out, {"block_n": 128, "num_warps": 4, "programs_per_sm": 4, "half": half})
            print(f"{name} half={half}: rel err {float((out - ref).norm() / ref.norm()):.2e}")
    best = {}
    for half, bn, nw, per_sm in itertools.product((False, True), (64, 128, 256), (4, 8), (4, 8, 16)):
        cfg = {"block_n": bn, "num_warps": nw, "programs_per_sm": per_sm, "half": half}
        row = []
        for name, (k, n) in SHAPES.items():
            out = torch.zeros(n, device=dev)
            i = [0]

            def fn():
                i[0] = (i[0] + 1) % 4
                out.zero_()
                w4a16_gemv(xs[name], ws[name][i[0]], out, cfg)

            try:
                gbs = nbytes[name] / bench(fn) / 1e6
            except Exception:  # a config that does not compile
                row.append(None)
                continue
            row.append(gbs)
            if gbs > best.get(name, (0,))[0]:
                best[name] = (gbs, cfg)
        print(cfg, " ".join(f"{v:7.0f}" if v else "   fail" for v in row), flush=True)
    for name, (gbs, cfg) in best.items():
        print(f"best {name}: {gbs:.0f} GB/s with {cfg}")
    if "--save" in sys.argv:
        path = tuned_file(dev)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({f"{k}x{n}": best[name][1] for name, (k, n) in SHAPES.items() if name in best},
                                   indent=1))
        print("saved", path)


if __name__ == "__main__":
    main()
