"""Quick look at the fast engine on a GPU: decode speed with and without the CUDA graph, TTFT for a 512-token
prompt, and agreement of the graph step with an eager step and with a batched prefill.

    python benchmarks/gpu/engine_check.py DIR/gptq [DIR/awq ...]
"""

from __future__ import annotations

import sys
import time

import torch

import quantdeploy
from quantdeploy import GenerationParams


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def check(path: str) -> None:
    t0 = time.time()
    m = quantdeploy.load(path, engine="fast", device="cuda")
    eng = m.engine
    print(f"{path}: loaded in {time.time() - t0:.1f}s, {torch.cuda.memory_allocated() / 1e9:.2f} GB allocated")
    ids = list(range(1000, 1512))
    from quantdeploy.engine.quant import dequantize
    print(f"  linear kernel: {eng.dec.gemv}")
    with torch.inference_mode():
        for q in (eng.dec.layers[0].qkv, eng.dec.layers[0].down):
            x = torch.randn(1, q.w.k, device="cuda", dtype=eng.dtype)
            want = x.float() @ dequantize(q.w, torch.float32)
            print(f"  linear {q.w.k}x{q.w.n}: rel err vs dequantized reference {rel(q(x), want):.2e}")
    # correctness on the device: graph step == eager step == batched prefill (same position)
    with torch.inference_mode():
        full = eng.prefill(ids + [42], all_logits=False)
        eng.prefill(ids)
        tok, pos = torch.tensor([42], device="cuda"), torch.tensor([len(ids)], device="cuda")
        eager = eng._step_eager(tok, pos, eng.bucket(len(ids))).clone()
        graph = eng.step(tok, pos, len(ids)).clone()
    print(f"  rel err graph vs eager {rel(graph, eager):.2e}, step vs prefill {rel(graph, full):.2e}")
    p = GenerationParams(max_tokens=256, temperature=0, ignore_eos=True)
    for _ in range(2):
        g = m.generate(ids, p)
        list(g)
    print(f"  graph: TTFT(512) {g.usage.ttft_s * 1e3:.1f} ms, decode {g.usage.decode_tok_s:.1f} tok/s")
    eng.use_graph = False
    g = m.generate(ids, GenerationParams(max_tokens=32, temperature=0, ignore_eos=True))
    list(g)
    print(f"  eager: decode {g.usage.decode_tok_s:.1f} tok/s")
    eng.use_graph = True
    with torch.inference_mode():  # decode steps only (graph replays), after a prefill
        eng.prefill(ids[:64])
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for i in range(8):
                eng.step(tok, torch.tensor([64 + i], device="cuda"), 64 + i)
            torch.cuda.synchronize()
    rows = sorted(((e.key, e.device_time_total, e.count) for e in prof.key_averages()), key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    print(f"  profile of 8 decode steps: {total / 8e3:.2f} ms GPU time per step, {sum(r[2] for r in rows) // 8} "
          "kernels per step")
    for k, t, c in rows[:12]:
        print(f"    {t / 8e3:7.3f} ms/step {c // 8:5d}x  {k[:90]}")
    m.close()
    del m
    torch.cuda.empty_cache()


if __name__ == "__main__":
    for p in sys.argv[1:]:
        check(p)
