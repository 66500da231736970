"""Where an eager 512-token prefill spends the host's time: the eager forward's own time (launches only; the GPU
work queued behind a ~1 s sleeping kernel, so no launch waits on it), the GPU time of the same prefill, and a
cProfile of the queued prefills by own time. The token ids are copied to the GPU before the sleep (prefill()'s own
copy, torch.tensor(ids, device=...), would wait for it: prefill-host-h200.txt).

    python benchmarks/gpu/prefill_host.py MODEL_DIR [N_PROMPT]
"""
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

from quantdeploy.engine.runner import FastEngine

eng = FastEngine(Path(sys.argv[1]), "cuda", torch.float16, 1024, gemv="cuda")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 512
ids = [1000 + i for i in range(n)]
toks = torch.tensor(ids, device="cuda")


def prefill():
    return eng._prefill_eager(toks, n)


def queued_prefill():
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # ~1 s of one spinning SM: every launch below is queued behind it
    t = time.perf_counter()
    prefill()
    host = time.perf_counter() - t
    torch.cuda.synchronize()
    return host


with torch.inference_mode():
    for _ in range(3):
        prefill()
    torch.cuda.synchronize()
    hosts = [queued_prefill() for _ in range(5)]
    print(f"host time of prefill({n}) with the GPU busy: median {statistics.median(hosts) * 1e3:.2f} "
          f"min {min(hosts) * 1e3:.2f} ms", flush=True)
    gpu, wall = [], []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        torch.cuda._sleep(2_000_000_000)
        a.record()
        prefill()
        b.record()
        torch.cuda.synchronize()
        gpu.append(a.elapsed_time(b))
        torch.cuda.synchronize()
        t = time.perf_counter()
        prefill()
        torch.cuda.synchronize()
        wall.append((time.perf_counter() - t) * 1e3)
    print(f"GPU time of prefill({n}) (launches queued ahead): median {statistics.median(gpu):.2f} "
          f"min {min(gpu):.2f} ms; wall from idle: median {statistics.median(wall):.2f} min {min(wall):.2f} ms",
          flush=True)
    prof = cProfile.Profile()
    torch.cuda.synchronize()
    torch.cuda._sleep(4_000_000_000)
    prof.enable()
    for _ in range(3):
        prefill()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
