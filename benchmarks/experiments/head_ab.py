"""The 8B lm_head's batch-1 product alone: the fp16 weight through cuBLAS (the default) against the int8 head's
Triton GEMV (QUANTDEPLOY_LM_HEAD=int8) in a few block shapes. Each is timed as 50 calls in one CUDA graph (no launch
gaps), best of 5 replays; GB/s counts the weight bytes read.

    python benchmarks/experiments/head_ab.py [N] [K]        (default 128256 4096: Llama-3-8B)
"""
import sys

import torch

from quantdeploy.engine.head import Int8Head
from quantdeploy.engine.triton_head import int8_gemv

N, K = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (128256, 4096)
CALLS = 50


def timed(fn) -> float:
    """ms per call."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(CALLS):
            fn()
    best = float("inf")
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) / CALLS)
    return best


with torch.inference_mode():
    w = (torch.randn(N, K, device="cuda") * 0.02).half()
    x = torch.randn(1, K, device="cuda", dtype=torch.float16)
    h = Int8Head(w)
    want = (x.float() @ h.q.float().t()) * h.scale
    ms = timed(lambda: torch.nn.functional.linear(x, w))
    print(f"fp16 cuBLAS              {ms * 1e3:7.1f} us  {N * K * 2 / ms / 1e6:6.0f} GB/s")
    for bn in (16, 32, 64):
        for bk in (128, 256, 512):
            for warps in (4, 8):
                got = int8_gemv(x, h.q, h.scale, bn, bk, warps)
                err = float((got - want).norm() / want.norm())
                ms = timed(lambda: int8_gemv(x, h.q, h.scale, bn, bk, warps))
                print(f"int8 N{bn:<3d} K{bk:<4d} w{warps}    {ms * 1e3:7.1f} us  {h.nbytes() / ms / 1e6:6.0f} GB/s"
                      f"  rel err {err:.1e}", flush=True)
