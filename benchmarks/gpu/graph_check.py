"""Does a CUDA-graph replay of the engine's decode step compute what the eager step does? Per layer count, the fused
step against the torch-ops step; then graph replays timed, with the number of kernels a replay runs.

    python benchmarks/gpu/graph_check.py MODEL_DIR [GEMV]   (GEMV: auto, cuda, triton)

Exits 1 when the fused step is not finite or differs from the torch step by more than 1 % (relative).
"""
import sys
import time

import torch
from pathlib import Path
from quantdeploy.engine.runner import FastEngine
M = Path(sys.argv[1])
def rel(a, b): return float((a.float() - b.float()).norm() / b.float().norm())
GEMV = sys.argv[2] if len(sys.argv) > 2 else "auto"
eng = FastEngine(M, "cuda", torch.float16, 1024, gemv=GEMV)
print("fused", eng.dec.fused, eng.dec.gemv)
eng.prefill_graph = False  # prompts eagerly: a prompt graph captured for one layer count would replay for the next
ids = list(range(1000, 1016))
layers = eng.dec.layers
ok = True
with torch.inference_mode():
    for n in (1, 2, 4, 32):
        eng.dec.layers = layers[:n]
        eng.dec.fused = False
        c = eng.prefill(ids + [42]).clone()
        eng.prefill(ids)
        tok = torch.tensor([42], device="cuda"); pos = torch.tensor([16], device="cuda")
        b = eng._step_eager(tok, pos, 256).clone()
        eng.dec.fused = True
        eng.prefill(ids)
        a = eng._step_eager(tok, pos, 256).clone()
        ok = ok and bool(a.isfinite().all()) and rel(a, b) < 1e-2
        print(n, "layers: finite fused/torch/prefill", bool(a.isfinite().all()), bool(b.isfinite().all()),
              bool(c.isfinite().all()), "max", float(a.abs().max()), float(b.abs().max()), float(c.abs().max()),
              "rel fused-torch", rel(a, b), "torch-prefill", rel(b, c))
    eng.dec.layers = layers
    for fused in (True, False):
        eng.dec.fused, eng.graphs = fused, {}
        eng.prefill(ids)
        eng.step(tok, pos, 16)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(600):
            eng.step(tok, pos, 16)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / 600
        g, out = eng.graphs[256]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            g.replay(); torch.cuda.synchronize()
        n = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")
        print("fused" if fused else "torch", f"graph step {dt*1e3:.3f} ms ({1/dt:.0f} tok/s), kernels in replay {n},",
              "finite", bool(out.isfinite().all()))
        if fused:  # where one replay's GPU time goes (kernel durations; gaps between them are not counted)
            rows = sorted((e for e in prof.key_averages() if e.device_type.name == "CUDA"),
                          key=lambda e: -e.device_time_total)
            total = sum(e.device_time_total for e in rows)
            print(f"  kernel time in one replay {total:.0f} us of {dt*1e6:.0f} us per step")
            for e in rows[:14]:
                avg = e.device_time_total / e.count
                print(f"  {e.device_time_total:8.1f} us {e.count:4d}x {avg:6.2f} us  {e.key[:90]}")
with torch.inference_mode():  # greedy with the argmax inside the graph = the argmax after it, across a new bucket
    kw = dict(max_new=300, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set())
    eng.close()
    a = list(eng.generate(list(range(2000, 2100)), **kw))
    eng.greedy_graph = False
    eng.close()
    b = list(eng.generate(list(range(2000, 2100)), **kw))
    eng.greedy_graph = True
print("greedy graph: 300 tokens equal to the argmax outside the graph:", a == b, "graphs", eng.graph_kind)
ok = ok and a == b
sys.exit(0 if ok else 1)
