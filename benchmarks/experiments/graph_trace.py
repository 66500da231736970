"""When does the decode graph switch between its fast and slow state? (The same greedy graph
replays at ~1.856 or ~1.896 ms per step on an H200.) Times every replay with CUDA events, 4 passes of 100 from
position 600, and prints the mean of each 25 replays, for: replays right after the capture; the same with the same
input token in every pass (are the data the cause?); a 1 ms idle GPU every 10 replays (power?); a tiny eager kernel on the
stream every 10 replays; replays after one eager decode step.

    python benchmarks/experiments/graph_trace.py MODEL_DIR

Run nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw.instant,temperature.gpu,temperature.memory,
clocks_event_reasons.active --format=csv,noheader -lms 20 beside it; each line here starts with the wall time.
"""
import sys
import time
from pathlib import Path

import torch

from quantdeploy.engine.runner import FastEngine

eng = FastEngine(Path(sys.argv[1]), "cuda", torch.float16, 1024, gemv="cuda")
ids = [1000 + i for i in range(512)]


def trace(label, fixed=False, idle_ms=0.0, nudge=False):
    g = eng.greedy_graphs[1024]
    x = torch.zeros(256, device="cuda")
    times = []
    t0 = time.time()
    for _ in range(4):
        eng.g_pos.fill_(600)
        if fixed:
            eng.g_tok.fill_(1234)
        torch.cuda.synchronize()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(101)]
        ev[0].record()
        for i in range(100):
            if i and i % 10 == 0 and (idle_ms or nudge):
                if idle_ms:
                    torch.cuda.synchronize()
                    time.sleep(idle_ms / 1e3)
                else:
                    x.add_(1)
                ev[i] = torch.cuda.Event(enable_timing=True)  # the gap is not the step's
                ev[i].record()
            g.replay()
            ev[i + 1].record()
        torch.cuda.synchronize()
        times += [ev[i].elapsed_time(ev[i + 1]) for i in range(100)]
    blocks = [sum(times[i:i + 25]) / 25 for i in range(0, 400, 25)]
    print(f"{t0:.2f} {label:30s}", " ".join(f"{b:.3f}" for b in blocks), flush=True)


with torch.inference_mode():
    for _ in range(2):
        list(eng.generate(ids, max_new=256, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set()))
    print("ms per replay, mean of each 25 (4 passes of 100 from position 600)", flush=True)
    for r in range(2):
        trace(f"plain {r}")
        trace(f"same input token {r}", fixed=True)
        trace(f"1 ms idle every 10 {r}", idle_ms=1)
        trace(f"tiny kernel every 10 {r}", nudge=True)
        eng._step_eager(torch.tensor([42], device="cuda"), torch.tensor([640], device="cuda"), 1024)
        trace(f"after an eager step {r}")
