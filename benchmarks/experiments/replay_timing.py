"""Timing the greedy decode graph's replays, for the graph-state probes (state_trigger.py)."""
import time

import torch


def replay_ms(eng, g, n: int = 100, pos: int = 600) -> float:
    """Mean ms per replay of `n` replays of the greedy graph `g`, queued back to back from position `pos` (one sync
    before, one after)."""
    eng.g_pos.fill_(pos)
    torch.cuda.synchronize()
    a = time.perf_counter()
    for _ in range(n):
        g.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - a) / n * 1e3
