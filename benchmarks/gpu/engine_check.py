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
    torch.cuda.reset_peak_memory_stats()
    m = quantdeploy.load(path, engine="fast", device="cuda")
    eng = m.engine
    print(f"{path}: loaded in {time.time() - t0:.1f}s, {torch.cuda.memory_allocated() / 1e9:.2f} GB allocated, "
          f"peak while loading {torch.cuda.max_memory_allocated() / 1e9:.2f} GB; fused step: {eng.dec.fused}")
    kv = sum(c.numel() * c.element_size() for c in eng.dec.k_cache + eng.dec.v_cache)
    print(f"  KV cache {kv / 1e9:.2f} GB for {eng.max_len} positions")
    ids = list(range(1000, 1512))
    print(f"  linear kernel: {eng.dec.gemv}")
    if eng.dec.gemv == "exllamav2-gemm":  # check it against our Triton GEMV on the same weights
        from quantdeploy.engine.runner import FastEngine

        ref = FastEngine(eng.dec.__dict__.get("path") or m.spec.path, "cuda", eng.dtype, 1024, gemv="triton")
        with torch.inference_mode():
            for name in ("qkv", "down"):
                a, b = getattr(eng.dec.layers[0], name), getattr(ref.dec.layers[0], name)
                x = torch.randn(1, b.w.k, device="cuda", dtype=eng.dtype) * 0.1
                print(f"  {name} {b.w.k}x{b.w.n}: ExLlama vs Triton rel err {rel(a(x), b(x)):.2e}; M=16: "
                      f"{rel(a(x.repeat(16, 1)), x.repeat(16, 1).float() @ __import__('quantdeploy.engine.quant', fromlist=['dequantize']).dequantize(b.w, torch.float32)):.2e}")
            short = ids[:8]
            print(f"  logits after 8 tokens, ExLlama engine vs Triton engine: rel err "
                  f"{rel(eng.prefill(short), ref.prefill(short)):.2e}")
        del ref
        torch.cuda.empty_cache()
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
    print(f"  graph: TTFT(512) {g.usage.ttft_s * 1e3:.1f} ms, decode {g.usage.decode_tok_s:.1f} tok/s, "
          f"peak {torch.cuda.max_memory_allocated() / 1e9:.2f} GB")
    if eng.dec.fused:  # the same graph step with torch ops instead of the fused kernels
        eng.dec.fused, eng.graphs = False, {}
        g = m.generate(ids, p)
        list(g)
        print(f"  graph, torch ops (QUANTDEPLOY_FUSED=0): decode {g.usage.decode_tok_s:.1f} tok/s")
        with torch.inference_mode():
            unfused = eng.prefill(ids + [42])
        eng.dec.fused, eng.graphs = True, {}
        print(f"  prefill logits fused vs torch ops: rel err {rel(full, unfused):.2e}")
    eng.use_graph = False
    g = m.generate(ids, GenerationParams(max_tokens=32, temperature=0, ignore_eos=True))
    list(g)
    print(f"  eager: decode {g.usage.decode_tok_s:.1f} tok/s")
    with torch.inference_mode():  # eager decode steps (the graph's kernels, under their names)
        eng.prefill(ids[:64])
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for i in range(8):
                eng.step(tok, torch.tensor([64 + i], device="cuda"), 64 + i)
            torch.cuda.synchronize()
    rows = sorted(((e.key, e.device_time_total, e.count) for e in prof.key_averages()), key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    print(f"  profile of 8 eager decode steps: {total / 8e3:.2f} ms GPU time per step, "
          f"{sum(r[2] for r in rows) // 8} kernels per step")
    eng.use_graph = True
    for k, t, c in rows[:16]:
        print(f"    {t / 8e3:7.3f} ms/step {c // 8:5d}x  {k[:90]}")
    m.close()
    del m
    torch.cuda.empty_cache()


if __name__ == "__main__":
    for p in sys.argv[1:]:
        check(p)
