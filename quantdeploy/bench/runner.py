"""Timings for one model, and a whole report for several: load (cold / warm), TTFT, prefill and decode
tokens/s over repeats (median and spread, warm-up apart), peak memory, bytes per token, achieved GB/s against
the device's roofline, kernel evidence and (optionally) quality.

Every run decodes exactly `new_tokens` tokens (EOS ignored, greedy, fresh context: seeded runs reset
llama.cpp's prefix cache, so every run pays its full prefill). On CUDA the device is synchronized before and
after each run; the HF decode loop syncs every token when it reads the sampled id, so wall time is GPU time.
"""

from __future__ import annotations

import gc
import statistics
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..backends.base import GenerationParams, LoadedModel, ModelSpec
from ..errors import QuantDeployError, UsageError
from .kernels import kernel_map, kernel_required, profile_decode, verify
from .memory import PeakMemory
from .text import text_ids
from .weights import bytes_per_token

SCHEMA = "quantdeploy.bench/1"


class RequirementFailed(QuantDeployError):
    """--require-gpu / --require-kernel not satisfied, or served requests failed (the report is still written)."""

    exit_code = 3


@dataclass
class BenchConfig:
    prompt_tokens: int = 128
    new_tokens: int = 64
    repeat: int = 3
    warmup_tokens: int = 16  # decode tokens of the warm-up run (same prompt)
    warm_load: bool = True  # load a second time to report a warm load
    profile_tokens: int = 16  # decode steps under torch.profiler (CUDA only)
    quality: bool = False
    quality_tokens: int = 256
    reference: Path | None = None
    refresh_roofline: bool = False
    concurrency: list[int] = field(default_factory=list)  # serving levels: N concurrent streaming clients
    requests_per_client: int = 2  # streamed requests each client sends, one after the other, per level

    def validate(self) -> "BenchConfig":
        for name in ("prompt_tokens", "new_tokens", "repeat", "quality_tokens", "requests_per_client"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
        if self.prompt_tokens < 2:
            raise UsageError("--prompt-tokens must be at least 2")
        if self.new_tokens < 2:
            raise UsageError("--new-tokens must be at least 2 (decode speed needs two tokens)")
        if any(not isinstance(n, int) or n < 1 for n in self.concurrency):
            raise UsageError(f"--concurrency must list positive integers, got {self.concurrency}")
        if self.quality_tokens < 2:
            raise UsageError("--quality-tokens must be at least 2")
        if self.reference is not None:
            ref = Path(self.reference).expanduser()
            if not ref.is_dir():
                raise UsageError(f"--reference {ref}: no such directory")
            if not (ref / "config.json").is_file():
                raise UsageError(f"--reference {ref}: not an HF model directory (no config.json); pass the "
                                 "full-precision checkpoint the quantized models were made from")
        return self


def spread(values: list[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {"median": round(statistics.median(vals), 3), "min": round(min(vals), 3), "max": round(max(vals), 3),
            "stdev": round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0,
            "values": [round(v, 3) for v in vals]}


def _sync(model: LoadedModel) -> None:
    """Wait for the GPU (torch models). Never in a llama.cpp process: its generate returns when the GPU is done,
    and initialising torch's CUDA beside llama.cpp's CUDA build aborts the process (free(): invalid pointer)."""
    if str(model.device).startswith("cuda") and getattr(model, "format", "") != "gguf":
        import torch

        torch.cuda.synchronize()


def run_once(model: LoadedModel, ids: list[int], new_tokens: int) -> dict[str, Any]:
    params = GenerationParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, seed=0)
    _sync(model)
    gen = model.generate(list(ids), params)
    for _ in gen:
        pass
    _sync(model)
    u = gen.usage
    ttft = u.ttft_s or 0.0
    return {"ttft_ms": ttft * 1e3, "prefill_tok_s": len(ids) / ttft if ttft > 0 else 0.0,
            "decode_tok_s": u.decode_tok_s, "tokens": u.completion_tokens, "elapsed_s": u.elapsed_s}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _default_load(spec: ModelSpec) -> LoadedModel:
    from ..models import load_model

    return load_model(spec)


def bench_model(spec: ModelSpec, cfg: BenchConfig, *, load: Callable[[ModelSpec], LoadedModel] = _default_load,
                log: Callable[[str], None] = _log, before_close: Callable[[LoadedModel], None] | None = None
                ) -> dict[str, Any]:
    """Benchmark one model's speed; the returned dict is one entry of report["results"] (quality: None).
    `before_close` gets the loaded model after the runs (the serving bench makes its prompts with it)."""
    from ..backends.hw import cuda_device_count

    name = spec.display_name
    mem = PeakMemory()
    log(f"[{name}] loading ({spec.format})")
    if not cfg.warm_load:
        mem.start()
    model = load(spec)
    load_s = {"cold": round(model.load_time_s, 3), "warm": None}
    if cfg.warm_load:
        model.close()
        del model
        gc.collect()
        mem.start()
        model = load(spec)
        load_s["warm"] = round(model.load_time_s, 3)
    try:
        mem.sample()
        need = cfg.prompt_tokens + cfg.new_tokens
        if need > model.context_length:
            raise UsageError(f"{name}: --prompt-tokens {cfg.prompt_tokens} + --new-tokens {cfg.new_tokens} = {need} "
                             f"do not fit the {model.context_length}-token context; lower them or pass --ctx {need}")
        ids = text_ids(model, cfg.prompt_tokens)
        log(f"[{name}] {model.device}, kernel {model.kernel_report().get('kernel')}: warm-up")
        warm = run_once(model, ids, min(cfg.warmup_tokens, cfg.new_tokens) if cfg.warmup_tokens else 2)
        runs = []
        for i in range(cfg.repeat):
            r = run_once(model, ids, cfg.new_tokens)
            if r["tokens"] != cfg.new_tokens:
                raise QuantDeployError(f"{name}: run {i + 1} generated {r['tokens']} of {cfg.new_tokens} tokens "
                                       "although EOS was ignored; the backend stopped early")
            mem.sample()
            log(f"[{name}] run {i + 1}/{cfg.repeat}: TTFT {r['ttft_ms']:.0f} ms, "
                f"decode {r['decode_tok_s']:.1f} tok/s")
            runs.append(r)
        report = model.kernel_report()
        profile = profile_decode(model, ids[: min(len(ids), 32)], cfg.profile_tokens)
        mem.sample()
        gpus = cuda_device_count()
        verdict = verify(report, device=model.device, gpus=gpus, profile=profile)
        weights = bytes_per_token(model)
        peak = mem.result(model.device, model.backend)
        result = _result(spec, model, report, verdict, profile, load_s, warm, runs, peak, weights, cfg)
        if before_close is not None:
            before_close(model)
    finally:
        model.close()
        del model
        gc.collect()
    return result


def _result(spec, model, report, verdict, profile, load_s, warm, runs, peak, weights, cfg) -> dict[str, Any]:
    ttft, prefill, decode = (spread([r[k] for r in runs]) for k in ("ttft_ms", "prefill_tok_s", "decode_tok_s"))
    kernels = {k: v for k, v in report.items() if k not in ("backend", "format", "device", "layers", "device_map")}
    kernels.update(map=kernel_map(report), layers=report.get("layers"), profile=profile)
    return {
        "model": spec.display_name,
        "path": str(spec.path),
        "format": model.format,
        "backend": model.backend,
        "device": model.device,
        "device_map": report.get("device_map"),  # a model over several GPUs (GGUF --tensor-split): where it sits
        "kernel": report.get("kernel"),
        "kernels": kernels,
        "gpu_kernels_in_use": verdict["gpu_kernels_in_use"],
        "gpu_kernels_reason": verdict["reason"],
        "fallbacks": verdict["fallbacks"],
        "prompt_tokens": cfg.prompt_tokens,
        "new_tokens": cfg.new_tokens,
        "repeat": cfg.repeat,
        "load_s": load_s,
        "ttft_ms": ttft["median"],
        "prefill_tok_s": prefill["median"],
        "decode_tok_s": decode["median"],
        "spread": {"ttft_ms": ttft, "prefill_tok_s": prefill, "decode_tok_s": decode},
        "warmup": {k: round(v, 3) for k, v in warm.items()},
        "peak_memory_mb": peak,
        "bytes_per_token": weights["bytes"],
        "bytes_per_token_detail": weights,
        "achieved_gbps": round(weights["bytes"] * decode["median"] / 1e9, 3),
        "roofline_gbps": None,
        "roofline_fraction": None,
        "quality": None,
    }


def quality_pass(specs: list[ModelSpec], results: list[dict[str, Any]], cfg: BenchConfig, *,
                 load: Callable[[ModelSpec], LoadedModel] = _default_load, log: Callable[[str], None] = _log) -> None:
    """After every speed run (so neither the reference's memory nor its caches touch the timings): score each
    model on the shipped text against the reference, one model in memory at a time."""
    from .quality import load_reference, measure_quality

    reference = None
    if cfg.reference:
        log(f"[reference] {cfg.reference}: {cfg.quality_tokens} tokens")
        reference = load_reference(Path(cfg.reference), cfg.quality_tokens)
        gc.collect()
    for spec, result in zip(specs, results):
        log(f"[{spec.display_name}] quality: {cfg.quality_tokens} tokens")
        model = load(spec)
        try:
            result["quality"] = measure_quality(model, cfg.quality_tokens, reference)
        except QuantDeployError as e:  # one backend without logits must not sink the others' numbers
            result["quality"] = {"error": str(e), "perplexity": None, "kl_divergence": None}
            log(f"[{spec.display_name}] quality: {e}")
        finally:
            model.close()
            del model
            gc.collect()


def requirement_failures(results: list[dict[str, Any]], require_gpu: bool, require_kernels: list[str]) -> list[str]:
    out = []
    for r in results:
        if require_gpu and not r["gpu_kernels_in_use"]:
            out.append(f"{r['model']} ({r['format']}): no GPU kernel in use: {r['gpu_kernels_reason']}")
        for k in require_kernels:
            if not kernel_required(k, r):
                out.append(f"{r['model']} ({r['format']}): kernel '{k}' did not run (ran: {r['kernel']})")
        for lv in (r.get("serving") or {}).get("levels", []):
            if lv["failed"]:
                out.append(f"{r['model']} ({r['format']}): {lv['failed']} of {lv['requests']} requests failed with "
                           f"{lv['concurrency']} concurrent clients: {'; '.join(lv['errors'])}")
    return out


def _release_gpu_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # never initialise CUDA here (llama.cpp processes)
        torch.cuda.empty_cache()


def _bench_one(spec: ModelSpec, cfg: BenchConfig, load, log) -> dict[str, Any]:
    """The single-stream runs, then (--concurrency) the same model served to N concurrent clients."""
    if not cfg.concurrency:
        return bench_model(spec, cfg, load=load, log=log)
    from ..settings import get_settings
    from .concurrency import make_prompts, prompt_count, serve_bench

    prompts: list[str] = []
    count = prompt_count(cfg.concurrency, cfg.requests_per_client)
    result = bench_model(spec, cfg, load=load, log=log,
                         before_close=lambda m: prompts.extend(make_prompts(m, count, cfg.prompt_tokens)))
    _release_gpu_cache()  # the server sizes its KV pool from the GPU memory it finds free
    result["serving"] = serve_bench(spec, cfg.concurrency, cfg.requests_per_client, prompts, cfg.new_tokens,
                                    api_key=get_settings().api_key, log=log)
    return result


def run_bench(specs: list[ModelSpec], cfg: BenchConfig, *, command: str = "", require_gpu: bool = False,
              require_kernels: list[str] | None = None, load: Callable[[ModelSpec], LoadedModel] = _default_load,
              log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Benchmark every spec in turn (one model in memory at a time) and build the report."""
    from .environment import environment, load_average
    from .roofline import roofline

    cfg.validate()
    if any(s.format == "gguf" for s in specs):
        try:  # llama.cpp's CUDA libraries must load before torch's (a crash otherwise: see backends/hw.py)
            import llama_cpp  # noqa: F401
        except ImportError:
            pass
    load_at_start = load_average()
    results = [_bench_one(s, cfg, load, log) for s in specs]
    if cfg.quality:
        quality_pass(specs, results, cfg, load=load, log=log)
    rooflines: dict[str, Any] = {}
    for r in results:
        dev = r["device"]
        if dev not in rooflines:
            log(f"[roofline] {dev}")
            rooflines[dev] = roofline(dev, refresh=cfg.refresh_roofline)
        gbps = rooflines[dev].get("gbps")
        r["roofline_gbps"] = gbps
        r["roofline_fraction"] = round(r["achieved_gbps"] / gbps, 4) if gbps else None
    failures = requirement_failures(results, require_gpu, list(require_kernels or []))
    conf = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": conf,
        "environment": environment(load_at_start),
        "rooflines": rooflines,
        "results": results,
        "requirements": {"require_gpu": require_gpu, "require_kernel": list(require_kernels or []),
                         "satisfied": not failures, "failures": failures},
    }
