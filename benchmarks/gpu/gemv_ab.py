"""A/B kernel sources for the CUDA GEMV: the same variants timed (CUDA graphs, weights rotated past L2, PDL off) with
each source file in turn, on the Llama-3-8B shapes.

    QUANTDEPLOY_PDL=0 python benchmarks/gpu/gemv_ab.py SOURCE.cu [SOURCE.cu ...] [--variants 2,4,1 8,2,1 ...]
"""
import argparse
from pathlib import Path

import torch

from gemv_tune import SHAPES, bench, rotated_weights, rotating
from quantdeploy.engine import cuda_gemv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--variants", nargs="+", default=["2,4,1", "4,1,1", "8,2,1"])
    args = ap.parse_args()
    dev = torch.device("cuda")
    packed = {name: [cuda_gemv.repack(w) for w in ws] for name, ws in rotated_weights(dev).items()}
    xs = {name: torch.randn(1, k, device=dev).half() for name, (k, n) in SHAPES.items()}
    print("GB/s", " ".join(SHAPES))
    for v in args.variants:
        v = tuple(int(t) for t in v.split(","))
        for src in args.sources:
            cuda_gemv.SOURCE = Path(src)
            cuda_gemv._kernel.cache_clear()
            row = []
            for name in SHAPES:
                lins = [cuda_gemv.CudaLinear(nk, dev, v) for nk in packed[name]]
                want = xs[name].float() @ cuda_gemv.reference(packed[name][0]).t()
                err = float((lins[0](xs[name]).float() - want).norm() / want.norm())
                assert err < 5e-3, (src, v, name, err)
                row.append(packed[name][0].nbytes() / bench(rotating(lambda lin: lin(xs[name]), lins)) / 1e6)
            print(f"{cuda_gemv.kernel_name(*v):28s} {Path(src).name:24s}", " ".join(f"{g:6.0f}" for g in row),
                  flush=True)


if __name__ == "__main__":
    main()
