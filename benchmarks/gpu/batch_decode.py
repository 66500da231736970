"""The batching engine's throughput at each batch size, driven in-process (no HTTP): N threads each generate from a
P-token prompt for O tokens (ignore_eos), all at once; aggregate output tok/s, the decode phase's tok/s, the
scheduler's host time per step, the GPU's own time per step (the step's CUDA graph replayed alone) and the weights'
GB/s per step. MODEL: a GPTQ / AWQ checkpoint (the fast engine) or a .gguf file (llama.cpp's batched decode behind
the same scheduler). Also checks that each sequence's greedy tokens in a batch equal the same sequence decoded
alone.

    python benchmarks/gpu/batch_decode.py MODEL [--batches 1,8,32,64] [--prompt 128] [--out 256] [--json F]
        [--prompt-chunk N] [--check 32] [--check-seqs 8]
        [--triton-gemm]   (decode rows through the Triton GEMM instead of the batched kernel, for its A/B)
        [--profile]       (per batch size, kernels per decode step and GPU time per step by kernel; not for GGUF)
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path


def weight_bytes(model: Path) -> int:
    """The bytes a decode step reads for the weights: the GGUF file, or the checkpoint's safetensors."""
    if model.is_file():
        return model.stat().st_size
    return sum(f.stat().st_size for f in model.glob("*.safetensors"))


def gpu_name() -> str:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "no GPU"
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else "no GPU"


def vocab_size(model) -> int:
    engine = getattr(model, "engine", None)
    return engine.cfg.vocab if engine is not None else model.llm.n_vocab()


def run_batch(model, prompts: list[list[int]], out_tokens: int) -> dict:
    from quantdeploy import GenerationParams

    params = GenerationParams(max_tokens=out_tokens, temperature=0, ignore_eos=True)
    first: list[float] = [0.0] * len(prompts)
    counts = [0] * len(prompts)
    t0 = time.perf_counter()

    def one(i: int) -> None:
        g = model.generate(prompts[i], params)
        for _ in g:
            if not counts[i]:
                first[i] = time.perf_counter() - t0
            counts[i] += 1
        counts[i] = g.usage.completion_tokens

    s0 = dict(model.batch_stats() or {})
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    s1 = model.batch_stats() or {}
    steps = s1.get("steps", 0) - s0.get("steps", 0)
    total = sum(counts)
    decode_s = wall - max(first)
    host_s = s1.get("host_s", 0.0) - s0.get("host_s", 0.0)
    prompt_steps = s1.get("prompt_steps", 0) - s0.get("prompt_steps", 0)
    prompt_host_s = s1.get("prompt_host_s", 0.0) - s0.get("prompt_host_s", 0.0)

    def ms(seconds: float, n: int) -> float | None:
        return round(1e3 * seconds / n, 3) if n else None

    # host time per step, and apart: steps that carried prompt chunks (eager launches that may wait for the GPU)
    # and decode-only steps (the scheduler's and the stepper's own cost, which must stay below the GPU's step)
    return {"batch": len(prompts), "tokens": total, "wall_s": round(wall, 3), "tok_s": round(total / wall, 1),
            "decode_tok_s": round((total - len(prompts)) / decode_s, 1) if decode_s > 0 else None,
            "ttft_max_s": round(max(first), 3), "steps": steps, "host_ms_per_step": ms(host_s, steps),
            "prompt_steps": prompt_steps, "host_ms_per_prompt_step": ms(prompt_host_s, prompt_steps),
            "host_ms_per_decode_step": ms(host_s - prompt_host_s, steps - prompt_steps)}


def graph_ms(model, batch: int, kv_tokens: int, replays: int = 20) -> float | None:
    """The GPU's own time per decode step at this batch size: the step's CUDA graph (its row bucket, the context
    bucket of `kv_tokens`) replayed back to back between two events, with no host work between replays. The
    replays repeat the last step's inputs (sequences that have finished: they write only their own freed blocks).
    None where there is no such graph (GGUF, the CPU, a batch above the graphs)."""
    stepper = getattr(model, "stepper", None)
    if stepper is None or not getattr(stepper, "graphs", None):
        return None
    import torch

    key = (stepper.row_bucket(batch), stepper.kv_bucket(kv_tokens))
    if key not in stepper.graphs:
        return None
    graph = stepper.graphs[key][0]
    torch.cuda.synchronize()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return round(start.elapsed_time(end) / replays, 3)


def kernel_profile(model, prompts: list[list[int]], window: int = 16) -> dict | None:
    """GPU kernels per decode step at this batch size, and the GPU time per step by kernel: a profiler window of
    `window` steps in the middle of the decode phase (every sequence past its prompt). None where torch sees no
    GPU. Kernels inside CUDA-graph replays count where the profiler traces graph nodes (CUPTI of CUDA 12 and
    later); a kernels_per_step far below the graph's kernel count means it did not."""
    import torch

    if not torch.cuda.is_available():
        return None
    from torch.profiler import ProfilerActivity, profile

    from quantdeploy import GenerationParams

    params = GenerationParams(max_tokens=8 + 4 * window, temperature=0, ignore_eos=True)
    seen = [0] * len(prompts)

    def one(i: int) -> None:
        for _ in model.generate(prompts[i], params):
            seen[i] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    while min(seen) < 8 and any(t.is_alive() for t in threads):
        time.sleep(0.001)
    s0 = model.batch_stats()["steps"]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        while model.batch_stats()["steps"] - s0 < window and any(t.is_alive() for t in threads):
            time.sleep(0.0005)
        torch.cuda.synchronize()
    steps = model.batch_stats()["steps"] - s0
    for t in threads:
        t.join()
    if not steps:
        return None
    kernels = [e for e in prof.key_averages() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    us = lambda e: (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0))  # noqa: E731
    top = sorted(kernels, key=us, reverse=True)[:8]
    return {"steps": steps, "kernels_per_step": round(sum(e.count for e in kernels) / steps, 1),
            "gpu_ms_per_step": round(sum(us(e) for e in kernels) / steps / 1e3, 3),
            "top_us_per_step": {e.key.split("(")[0][:60]: round(us(e) / steps, 1) for e in top}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--out", type=int, default=256)
    ap.add_argument("--check", type=int, default=32, help="greedy tokens compared with each sequence alone")
    ap.add_argument("--check-seqs", type=int, default=8, help="sequences decoded together for that check")
    ap.add_argument("--json")
    ap.add_argument("--prompt-chunk", type=int, help="prompt tokens per batched step (default: the engine's, 512)")
    ap.add_argument("--profile", action="store_true",
                    help="also a profiler window per batch size: kernels per decode step, GPU time per kernel")
    ap.add_argument("--triton-gemm", action="store_true",
                    help="decode rows through the Triton W4A16 GEMM, not qd_w4a16_mma (the batched kernel's A/B)")
    a = ap.parse_args()
    import random

    import quantdeploy
    from quantdeploy import GenerationParams

    if a.triton_gemm:
        from quantdeploy.engine import cuda_gemv

        cuda_gemv.mma_max_tokens = lambda form: 0

    batches = [int(b) for b in a.batches.split(",")]
    path = Path(a.model)
    gguf = path.suffix == ".gguf"  # llama.cpp's batched decode behind the same scheduler, for the side-by-side
    engine = {} if gguf else {"engine": "fast"}  # (no torch in a GGUF run: its CUDA stack and llama.cpp's can clash)
    model = quantdeploy.load(str(path), max_seqs=max(batches), prompt_chunk=a.prompt_chunk, **engine)
    vocab = vocab_size(model)
    rng = random.Random(0)
    low, high = min(1000, vocab // 2), min(vocab, 30000)
    prompts = [[rng.randrange(low, high) for _ in range(a.prompt)] for _ in range(max(batches))]
    wbytes = weight_bytes(path)
    rows = []
    run_batch(model, prompts[:2], 8)  # warm-up: graph captures for the small buckets, Triton compiles
    for b in batches:
        run_batch(model, prompts[:b], 16)  # this batch size's graphs
        r = run_batch(model, prompts[:b], a.out)
        if r["decode_tok_s"]:
            r["weight_gb_s"] = round(wbytes * r["decode_tok_s"] / b / 1e9, 1)
        if not gguf:  # the GPU's own step (the graph alone) beside the host's: which of the two sets the pace
            r["gpu_ms_per_step"] = graph_ms(model, b, a.prompt + a.out)
        if a.profile and not gguf:
            r["profile"] = kernel_profile(model, prompts[:b])
        rows.append(r)
        print(json.dumps(r), flush=True)
    check = None
    if a.check:
        solo = quantdeploy.load(str(path), **engine)
        p = GenerationParams(max_tokens=a.check, temperature=0, ignore_eos=True)
        n = min(a.check_seqs, max(batches))
        alone = [[t for t in _ids(solo, prompts[i], p)] for i in range(n)]
        solo.close()
        together: list = [None] * n

        def one(i: int) -> None:
            together[i] = _ids(model, prompts[i], p)

        ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        agree = [next((j for j, (x, y) in enumerate(zip(u, v)) if x != y), len(u)) for u, v in zip(alone, together)]
        check = {"sequences": n, "tokens": a.check, "same_prefix_len": agree}
        print(json.dumps({"greedy_check": check}), flush=True)
    out = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
           "model": str(path), "gpu": gpu_name(), "prompt_tokens": a.prompt,
           "output_tokens": a.out, "kernel": model.kernel_report().get("kernel"),
           "batched_marlin": model.kernel_report().get("batched_marlin"), "rows": rows, "greedy_check": check}
    model.close()
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


def _ids(model, prompt, params) -> list[int]:
    """The generated token ids (through the backend's token loop)."""
    ids = []
    for tok, _ in model._generate_tokens(list(prompt), params):
        ids.append(tok)
        if len(ids) >= params.max_tokens:
            break
    return ids


if __name__ == "__main__":
    sys.exit(main())
