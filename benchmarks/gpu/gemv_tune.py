"""Sweep the W4A16 GEMV's launch configuration on the GPU for Llama-3-8B shapes; print GB/s per config.

    python benchmarks/gpu/gemv_tune.py
"""

from __future__ import annotations

import itertools

import torch
import triton

from quantdeploy.engine.quant import QuantWeight, dequantize
from quantdeploy.engine.triton_gemv import w4a16_gemv

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}


def weight(k, n, dev):
    q = torch.randint(-2 ** 31, 2 ** 31 - 1, (k // 8, n), dtype=torch.int32, device=dev)
    s = (torch.rand(k // 128, n, device=dev) * 1e-2).half()
    z = (torch.rand(k // 128, n, device=dev) * 1e-2).half()
    return QuantWeight(q, s, z, 128)


def main():
    dev = torch.device("cuda")
    ws = {name: [weight(k, n, dev) for _ in range(4)] for name, (k, n) in SHAPES.items()}  # rotate: beat L2
    xs = {name: torch.randn(k, device=dev).half() for name, (k, n) in SHAPES.items()}
    # correctness once
    for name, (k, n) in SHAPES.items():
        w = ws[name][0]
        out = torch.zeros(n, device=dev)
        w4a16_gemv(xs[name], w, out)
        ref = xs[name].float() @ dequantize(w, torch.float32)
        print(f"{name}: rel err {float((out - ref).norm() / ref.norm()):.2e}")
    best = {}
    for bn, nw, per_sm in itertools.product((64, 128, 256), (2, 4, 8), (2, 4, 8, 16)):
        cfg = {"block_n": bn, "num_warps": nw, "programs_per_sm": per_sm}
        row = []
        for name, (k, n) in SHAPES.items():
            out = torch.zeros(n, device=dev)
            i = [0]

            def fn():
                i[0] = (i[0] + 1) % 4
                w4a16_gemv(xs[name], ws[name][i[0]], out, cfg)

            try:
                ms = triton.testing.do_bench_cudagraph(fn, rep=20)
            except Exception as e:  # a config that does not compile
                row.append(None)
                continue
            gbs = ws[name][0].nbytes() / ms / 1e6
            row.append(gbs)
            if gbs > best.get(name, (0,))[0]:
                best[name] = (gbs, cfg)
        print(cfg, " ".join(f"{v:7.0f}" if v else "   fail" for v in row), flush=True)
    for name, (gbs, cfg) in best.items():
        print(f"best {name}: {gbs:.0f} GB/s with {cfg}")


if __name__ == "__main__":
    main()
