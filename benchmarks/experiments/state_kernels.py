"""Which kernels are slower when the decode graph is in its slow state? (graph_trace.py: replays run at ~1.858 ms
for ~300 replays after an eager step, then at ~1.898.) Profiles 30 greedy-graph replays right after an eager step
(fast) and 30 after 400 more replays (slow), and prints each kernel's device time per replay in both, largest
difference first.

    python benchmarks/experiments/state_kernels.py MODEL_DIR
"""
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from quantdeploy.engine.runner import FastEngine

eng = FastEngine(Path(sys.argv[1]), "cuda", torch.float16, 1024, gemv="cuda")
ids = [1000 + i for i in range(512)]
N = 30


def window():
    g = eng.greedy_graphs[1024]
    eng.g_pos.fill_(600)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        a.record()
        for _ in range(N):
            g.replay()
        b.record()
        torch.cuda.synchronize()
    per = defaultdict(float)
    for e in prof.events():
        if str(e.device_type).endswith("CUDA"):
            per[e.name[:70]] += e.device_time_total / N if hasattr(e, "device_time_total") else e.cuda_time_total / N
    return a.elapsed_time(b) / N, per


def eager():
    eng._step_eager(torch.tensor([42], device="cuda"), torch.tensor([640], device="cuda"), 1024)


def spin(n):
    g = eng.greedy_graphs[1024]
    for i in range(n):
        if i % 100 == 0:
            eng.g_pos.fill_(600)
        g.replay()
    torch.cuda.synchronize()


with torch.inference_mode():
    for _ in range(2):
        list(eng.generate(ids, max_new=256, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set()))
    eager()
    fast_ms, fast = window()
    spin(400)
    slow_ms, slow = window()
    eager()
    fast2_ms, fast2 = window()
    print(f"ms per replay under the profiler: after an eager step {fast_ms:.3f}, after 400 more replays {slow_ms:.3f},"
          f" after another eager step {fast2_ms:.3f}")
    print(f"kernel device time per replay, us: fast / slow / fast again  (sums {sum(fast.values()):.1f} / "
          f"{sum(slow.values()):.1f} / {sum(fast2.values()):.1f})")
    for k in sorted(set(fast) | set(slow), key=lambda k: -abs(slow.get(k, 0) - fast.get(k, 0)))[:14]:
        print(f"{fast.get(k, 0):9.1f} {slow.get(k, 0):9.1f} {fast2.get(k, 0):9.1f}  {k}")
