"""Serving under load (`bench --concurrency 1,8,32,64`): a real `quantdeploy serve` in a child process, driven by
N concurrent streaming clients per level.

Every request is a raw completion of about `prompt_tokens` tokens (greedy, end-of-sequence ignored, exactly
`new_tokens` new tokens), streamed; each client sends `requests_per_client` requests one after the other. No two
requests share a prompt, nor the prompt's first words, so a prefix cache cannot flatter the numbers. Per level:
aggregate output tokens/s (every token of the successful requests over the level's wall time), time to first
token and inter-token latency percentiles, measured at the client, and the requests that failed.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any, Callable

from ..backends.base import LoadedModel, ModelSpec
from ..errors import QuantDeployError, UsageError
from .text import shipped_text

WARMUP_TOKENS = 8  # new tokens of each warm-up request (one wave at the highest concurrency, not measured)
REQUEST_TIMEOUT_S = 600.0  # longest silence tolerated on one connection
ERRORS_KEPT = 3  # distinct error messages kept per level
SERVER_START_TIMEOUT_S = 900.0  # loading a large model (and capturing its graphs) before /health answers


def parse_levels(text: str) -> list[int]:
    """'1,8,32,64' -> [1, 8, 32, 64]."""
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or any(n < 1 for n in levels):
        raise UsageError(f"--concurrency {text!r}: give positive integers separated by commas, e.g. 1,8,32,64")
    return sorted(set(levels))


def prompt_count(levels: list[int], per_client: int) -> int:
    return max(levels) + sum(n * per_client for n in levels)  # the warm-up wave, then every level


def make_prompts(model: LoadedModel, count: int, n_tokens: int) -> list[str]:
    """`count` distinct prompts of at most `n_tokens` tokens (BOS included) in this model's tokenizer, each as
    many whole words of the shipped text as fit: request i starts with its number, then the text from word i on."""
    words = shipped_text().split()
    out = []
    for i in range(count):
        def text(k: int) -> str:
            return f"{i}. " + " ".join(words[(i + j) % len(words)] for j in range(k))

        lo, hi = 0, n_tokens  # a word is at least one token
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(model.tokenize(text(mid), add_bos=True)) <= n_tokens:
                lo = mid
            else:
                hi = mid - 1
        out.append(text(lo))
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def serve_args(spec: ModelSpec, max_concurrency: int, max_queue: int) -> list[str]:
    """`quantdeploy serve` arguments that load what `spec` names, batching up to `max_concurrency` sequences."""
    args = [str(spec.path), "--format", spec.format, "--device", spec.device, "--engine", spec.engine,
            "--max-concurrency", str(max_concurrency), "--max-queue", str(max_queue), "--log-level", "warning"]
    if spec.kernel:
        args += ["--kernel", spec.kernel]
    if spec.n_ctx:
        args += ["--ctx", str(spec.n_ctx)]
    if spec.prompt_chunk:
        args += ["--prompt-chunk", str(spec.prompt_chunk)]
    if spec.allow_pickle:
        args.append("--allow-pickle")
    if spec.trust_remote_code:
        args.append("--trust-remote-code")
    if spec.extra.get("tensor_split"):
        from ..backends.gguf_split import format_tensor_split

        args += ["--tensor-split", format_tensor_split(spec.extra["tensor_split"])]
    if spec.extra.get("split_mode"):
        args += ["--split-mode", spec.extra["split_mode"]]
    return args


async def stream_request(client, url: str, prompt: str, max_tokens: int, headers: dict[str, str]) -> dict[str, Any]:
    """One streamed completion; times are taken at the client when each chunk with text arrives."""
    import httpx

    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    times: list[float] = []
    usage = None
    try:
        async with client.stream("POST", url + "/v1/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                raw = await r.aread()
                try:
                    msg = json.loads(raw)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    msg = raw[:200].decode("utf-8", "replace")
                return {"error": f"HTTP {r.status_code}: {msg}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": f"error event: {chunk['error'].get('message')}"}
                if chunk.get("usage"):
                    usage = chunk["usage"]
                choices = chunk.get("choices") or []
                if choices and choices[0].get("text"):
                    times.append(time.perf_counter())
    except httpx.HTTPError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    n = (usage or {}).get("completion_tokens", 0)
    if n != max_tokens or not times:
        return {"error": f"{n} of {max_tokens} tokens came back"}
    return {"ttft": times[0] - t0, "gaps": [b - a for a, b in zip(times, times[1:])], "tokens": n,
            "prompt_tokens": usage.get("prompt_tokens"),
            "tpot": (times[-1] - times[0]) / (n - 1) if n > 1 else None}


async def run_level(url: str, prompts: list[str], clients: int, per_client: int, max_tokens: int,
                    headers: dict[str, str]) -> dict[str, Any]:
    import httpx

    results: list[dict[str, Any]] = []
    source = iter(prompts)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S), limits=limits) as client:
        async def one_client() -> None:
            for _ in range(per_client):
                results.append(await stream_request(client, url, next(source), max_tokens, headers))

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return level_stats(clients, results, wall)


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 2)


def level_stats(clients: int, results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    ok = [r for r in results if "error" not in r]
    errors = list(dict.fromkeys(r["error"] for r in results if "error" in r))
    ttft = [r["ttft"] for r in ok]
    gaps = [g for r in ok for g in r["gaps"]]
    tpot = [r["tpot"] for r in ok if r["tpot"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    prompts = [r["prompt_tokens"] for r in ok if r.get("prompt_tokens")]
    return {"concurrency": clients, "requests": len(results), "failed": len(results) - len(ok),
            "errors": errors[:ERRORS_KEPT], "wall_s": round(wall, 3), "output_tokens": tokens,
            "output_tok_s": round(tokens / wall, 2) if wall > 0 else None,
            "prompt_tokens_mean": round(statistics.mean(prompts), 1) if prompts else None,
            "ttft_ms": {"p50": _ms(percentile(ttft, 0.5)), "p95": _ms(percentile(ttft, 0.95))},
            "itl_ms": {"p50": _ms(percentile(gaps, 0.5)), "p95": _ms(percentile(gaps, 0.95))},
            "tpot_ms": {"p50": _ms(percentile(tpot, 0.5))}}


def serve_bench(spec: ModelSpec, levels: list[int], per_client: int, prompts: list[str], new_tokens: int, *,
                api_key: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Start `quantdeploy serve` for spec, warm it up, run every level, stop it."""
    from ..server.process import ServerProcess

    top = max(levels)
    args = serve_args(spec, top, top * per_client)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    name = spec.display_name
    log(f"[{name}] serving: quantdeploy serve {' '.join(args)}")
    out: dict[str, Any] = {"server_args": args, "max_concurrency": top, "requests_per_client": per_client,
                           "new_tokens": new_tokens, "levels": []}
    server = ServerProcess(*args)
    try:
        try:
            server.start(timeout=SERVER_START_TIMEOUT_S)
        except RuntimeError as e:
            lines = str(e).strip().splitlines()
            raise QuantDeployError(f"{name}: `quantdeploy serve` did not start for --concurrency: "
                                   f"{lines[0].rstrip(':')}; its last line: {lines[-1]}") from None
        source = iter(prompts)
        warm = [next(source) for _ in range(top)]
        log(f"[{name}] serving: warm-up, {top} requests at once")
        asyncio.run(run_level(server.base_url, warm, top, 1, min(WARMUP_TOKENS, new_tokens), headers))
        for n in levels:
            batch = [next(source) for _ in range(n * per_client)]
            level = asyncio.run(run_level(server.base_url, batch, n, per_client, new_tokens, headers))
            log(f"[{name}] serving: {n} clients: {level['output_tok_s']} tok/s, TTFT p50 {level['ttft_ms']['p50']} "
                f"ms, ITL p50 {level['itl_ms']['p50']} ms, {level['failed']} failed")
            out["levels"].append(level)
    finally:
        server.__exit__(None, None, None)  # stop it and remove its log file, as a `with` block would
    return out
