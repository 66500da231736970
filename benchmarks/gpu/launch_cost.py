"""Is the decode graph's replay bound by the host's launch of it? Times the greedy graph's g.replay() call on the
host (GPU idle; GPU busy so the launches queue), and the GPU time per replay when 60 replays were queued behind a
sleeping kernel before the GPU reached them (no host in the loop), against replays launched one after another.

    python benchmarks/gpu/launch_cost.py MODEL_DIR      (QUANTDEPLOY_PDL=0 for the same without PDL)
"""
import statistics
import sys
import time
from pathlib import Path

import torch

from quantdeploy.engine.runner import FastEngine

eng = FastEngine(Path(sys.argv[1]), "cuda", torch.float16, 1024, gemv="cuda")
ids = [1000 + i for i in range(512)]


def ms(xs):
    return f"median {statistics.median(xs) * 1e3:.3f} min {min(xs) * 1e3:.3f} max {max(xs) * 1e3:.3f} ms"


def gpu_per_replay(n, queued):
    g = eng.greedy_graphs[1024]
    eng.g_pos.fill_(600)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host = []
    if queued:
        torch.cuda._sleep(2_000_000_000)  # ~1 s of one spinning SM: every launch below is queued behind it
    a.record()
    for _ in range(n):
        t = time.perf_counter()
        g.replay()
        host.append(time.perf_counter() - t)
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / n, host


with torch.inference_mode():
    for _ in range(2):
        list(eng.generate(ids, max_new=256, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set()))
    g = eng.greedy_graphs[1024]
    idle = []
    for _ in range(20):
        torch.cuda.synchronize()
        t = time.perf_counter()
        g.replay()
        idle.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    print("host time of one replay() call, GPU idle:", ms(idle), flush=True)
    for r in range(2):
        per, host = gpu_per_replay(60, queued=False)
        print(f"{r}: 60 replays launched in a loop: GPU {per:.3f} ms per replay; host replay() {ms(host)}", flush=True)
        per, host = gpu_per_replay(60, queued=True)
        print(f"{r}: 60 replays queued behind a sleep: GPU {per:.3f} ms per replay (the sleep is outside); "
              f"host replay() {ms(host)}", flush=True)
