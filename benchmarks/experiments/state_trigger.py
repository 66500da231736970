"""What puts the decode graph back in its fast state? (graph_trace.py: ~300 replays at ~1.858 ms after an eager decode
step, ~1.898 otherwise; state_kernels.py: in the slow state the kernels launched with PDL start later.) Drives the
graph into the slow state (400 replays), times 100 replays, runs one candidate on the current stream, then times
3 x 100 replays; candidates: a whole eager step, one Triton RMSNorm with and without PDL, one CUDA GEMV (PDL),
one cuBLAS GEMV (the fp16 lm_head), nothing.

    python benchmarks/experiments/state_trigger.py MODEL_DIR
"""
import sys
from pathlib import Path

import torch
import triton
from replay_timing import replay_ms  # this directory

from quantdeploy.engine import triton_ops as T
from quantdeploy.engine.runner import FastEngine

eng = FastEngine(Path(sys.argv[1]), "cuda", torch.float16, 1024, gemv="cuda")
ids = [1000 + i for i in range(512)]
dec = eng.dec
hidden = dec.cfg.hidden if hasattr(dec.cfg, "hidden") else dec.final_norm.shape[0]
x = torch.randn(1, hidden, device="cuda", dtype=torch.float16)
g = None


def replays(n=100):
    return replay_ms(eng, g, n)


def no_pdl_norm():
    """T.add_rmsnorm's launch, without PDL."""
    n = x.shape[1]
    block = triton.next_power_of_2(n)
    out = torch.empty_like(x)
    T._add_rmsnorm[(1,)](x, x, dec.final_norm, dec.final_norm, out, n, dec.cfg.eps, HAS_RES=False, NORM_RES=False,
                         GEMMA=dec.cfg.gemma, BLOCK=block, num_warps=min(16, max(1, block // 256)), PDL=False)


CANDIDATES = {
    "nothing": lambda: None,
    "eager decode step": lambda: eng._step_eager(torch.tensor([42], device="cuda"), torch.tensor([640], device="cuda"),
                                                 1024),
    "Triton RMSNorm, PDL": lambda: T.add_rmsnorm(x, dec.final_norm, dec.cfg.eps, dec.cfg.gemma, None, None),
    "Triton RMSNorm, no PDL": no_pdl_norm,
    "CUDA GEMV (qkv), PDL": lambda: dec.layers[0].qkv(x),
    "cuBLAS GEMV (lm_head)": lambda: dec.logits(x),
    "eager decode step again": lambda: eng._step_eager(torch.tensor([42], device="cuda"),
                                                       torch.tensor([640], device="cuda"), 1024),
}

with torch.inference_mode():
    for _ in range(2):
        list(eng.generate(ids, max_new=256, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set()))
    g = eng.greedy_graphs[1024]
    for name, fn in CANDIDATES.items():
        fn()  # compile / warm it outside the measurement
        for _ in range(4):
            replays()
        before = replays()
        fn()
        after = [replays() for _ in range(3)]
        print(f"{name:26s} before {before:.3f}  after", " ".join(f"{a:.3f}" for a in after), "ms per replay",
              flush=True)
