"""Does the decode graph's step time change with what the process did before? (Eighth session: A/B tables that ran
first in a process were ~2 % faster.) Greedy-decodes a 512-token prompt on the 8B model, then times replays of that
greedy graph (100 from position 600, three rounds) after each of a few actions: an eager step on the current
stream, one on a side stream, a tiny graph in a new pool and in the engine's pool, a second decode graph.

    python benchmarks/gpu/graph_state.py MODEL_DIR

Run nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active -lms 50 beside it to see the
clocks; each line starts with the wall time.
"""
import sys
import time
from pathlib import Path

import torch
from replay_timing import replay_ms  # this directory

from quantdeploy.engine.runner import FastEngine

eng = FastEngine(Path(sys.argv[1]), "cuda", torch.float16, 1024, gemv="cuda")
ids = [1000 + i for i in range(512)]
kw = dict(max_new=256, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set())


def gen(label):
    ts = [time.perf_counter() for _ in eng.generate(ids, **kw)]
    print(f"{time.time():.2f} {label:36s} generate {(ts[-1] - ts[0]) / 255 * 1e3:.3f} ms/token", flush=True)


def replays(label, n=100, rounds=3):
    out = [replay_ms(eng, eng.greedy_graphs[1024], n) for _ in range(rounds)]
    print(f"{time.time():.2f} {label:36s} greedy replays", " ".join(f"{x:.3f}" for x in out), "ms", flush=True)


with torch.inference_mode():
    gen("run 1 (captures the greedy graph)")
    gen("run 2")
    replays("first graph")
    tok, pos = torch.tensor([42], device="cuda"), torch.tensor([640], device="cuda")
    eng._step_eager(tok, pos, 1024)
    torch.cuda.synchronize()
    replays("a: after an eager step")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        eng._step_eager(tok, pos, 1024)
    torch.cuda.synchronize()
    replays("b: after an eager step, side stream")
    x = torch.zeros(1024, device="cuda")
    g1 = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g1):
        x.add_(1)
    g1.replay()
    torch.cuda.synchronize()
    replays("c: after a tiny graph, new pool")
    g2 = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g2, pool=eng.pool):
        y = x * 2
    g2.replay()
    torch.cuda.synchronize()
    replays("d: after a tiny graph, same pool")
    del g1, g2
    torch.cuda.synchronize()
    replays("d2: tiny graphs destroyed")
    eng.step(tok, pos, 640)
    torch.cuda.synchronize()
    replays("e: after a step graph, same pool")
    gen("run 3")
    eng.graphs = {}
    torch.cuda.synchronize()
    replays("f: step graph destroyed")
    gen("run 4")
