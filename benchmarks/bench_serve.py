"""Load test of `quantdeploy serve` on loopback with the embedded Gemma-3-270M Q4_K_M GGUF.

    python benchmarks/bench_serve.py [--levels 1,4,16] [--level-seconds 30] [--memory-seconds 120]

Measures, against a real server subprocess (the default concurrency: concurrent clients are decoded together,
greedy decoding, ignore_eos so every request makes exactly --max-tokens tokens):
  overhead   per-token latency seen by one streaming HTTP client vs streaming the same model directly in this
             process (LoadedModel.generate), interleaved A/B rounds, medians compared
  load       for 1, 4 and 16 concurrent streaming clients, each looping for --level-seconds: throughput
             (completion tokens/s, server wide) and client-side TTFT p50/p99 (queue wait included)
  memory     server RSS sampled every 2 s while 4 clients stream for --memory-seconds
Writes benchmarks/results/serve.json and serve.md. The clients run on the same machine as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
PROMPT = "Write a long story about a lighthouse keeper and the sea."


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def stream_once(client, url: str, max_tokens: int) -> dict:
    """One streaming chat request; times measured at the client."""
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = None
    usage = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"error": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    n = usage["completion_tokens"] if usage else 0
    return {"ttft": (first - t0) if first else None, "tokens": n, "end": time.perf_counter(),
            "per_token": (last - first) / (n - 1) if first and n > 1 else None}


def direct_once(model, max_tokens: int) -> dict:
    from quantdeploy.backends.base import GenerationParams

    gen = model.chat([{"role": "user", "content": PROMPT}],
                     GenerationParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    t0 = time.perf_counter()
    first = last = None
    for piece in gen:
        if piece:
            last = time.perf_counter()
            first = first or last
    n = gen.usage.completion_tokens
    return {"ttft": first - t0, "tokens": n, "per_token": (last - first) / (n - 1)}


async def overhead(model, url: str, rounds: int, max_tokens: int) -> dict:
    import httpx

    direct, served = [], []
    async with httpx.AsyncClient(timeout=600) as client:
        await stream_once(client, url, 8)  # warm-up both paths
        direct_once(model, 8)
        for i in range(rounds):
            direct.append(direct_once(model, max_tokens)["per_token"])
            served.append((await stream_once(client, url, max_tokens))["per_token"])
            print(f"  round {i + 1}/{rounds}: direct {direct[-1] * 1000:.2f} ms/token, "
                  f"served {served[-1] * 1000:.2f} ms/token", file=sys.stderr)
    d, s = statistics.median(direct), statistics.median(served)
    return {"rounds": rounds, "max_tokens": max_tokens, "direct_ms_per_token": d * 1000,
            "served_ms_per_token": s * 1000, "overhead_pct": (s / d - 1) * 100,
            "direct_all_ms": [round(x * 1000, 3) for x in direct], "served_all_ms": [round(x * 1000, 3) for x in served]}


async def load_level(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    import httpx

    results: list[dict] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                results.append(await stream_once(client, url, max_tokens))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": clients, "requests": len(ok), "errors": len(results) - len(ok), "wall_s": round(wall, 2),
            "completion_tokens": tokens, "throughput_tok_s": round(tokens / wall, 2),
            "requests_per_s": round(len(ok) / wall, 3),
            "ttft_p50_s": round(pct(ttfts, 0.5), 4), "ttft_p99_s": round(pct(ttfts, 0.99), 4),
            "per_token_p50_ms": round(pct([r["per_token"] for r in ok if r["per_token"]], 0.5) * 1000, 3)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def memory(url: str, pid: int, seconds: float, clients: int, max_tokens: int) -> dict:
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def sampler() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, rss_mb(pid)))
            try:
                await asyncio.wait_for(stop.wait(), 2)
            except asyncio.TimeoutError:
                pass

    task = asyncio.create_task(sampler())
    level = await load_level(url, clients, seconds, max_tokens)
    stop.set()
    await task
    xs, ys = [t for t, _ in samples], [m for _, m in samples]
    half = len(ys) // 2
    slope = statistics.linear_regression(xs[half:], ys[half:]).slope * 60 if len(ys) - half >= 2 else 0.0
    return {"seconds": seconds, "clients": clients, "requests": level["requests"], "errors": level["errors"],
            "rss_first_mb": round(ys[0], 1), "rss_last_mb": round(ys[-1], 1), "rss_max_mb": round(max(ys), 1),
            "rss_min_mb": round(min(ys), 1), "second_half_slope_mb_per_min": round(slope, 3),
            "samples": [(round(t, 1), round(m, 1)) for t, m in samples]}


def _load(avg) -> str:
    return ", ".join(f"{x:.1f}" for x in avg)


def write_report(res: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(res, indent=2))
    o, m = res["overhead"], res.get("memory")
    lines = [
        "# `quantdeploy serve` load test", "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']}; model: {res['model']} ({res['kernel']} on {res['device']}); one slot; "
        f"greedy, ignore_eos, {res['max_tokens']} tokens per request; clients on the same machine. "
        f"Load average before/after (other work on the machine): {_load(res['loadavg_before'])} / "
        f"{_load(res['loadavg_after'])}.", "",
        "## Server overhead per token (concurrency 1)", "",
        "| path | median ms/token |", "|---|---|",
        f"| direct `LoadedModel.chat` streaming | {o['direct_ms_per_token']:.2f} |",
        f"| HTTP SSE through the server | {o['served_ms_per_token']:.2f} |", "",
        f"Overhead: **{o['overhead_pct']:+.1f} %** (median of {o['rounds']} interleaved rounds, "
        f"{o['max_tokens']} tokens each).", "",
        "## Load (streaming clients)", "",
        "| clients | requests | errors | tokens/s | TTFT p50 (s) | TTFT p99 (s) | ms/token p50 |",
        "|---|---|---|---|---|---|---|"]
    for lv in res["levels"]:
        lines.append(f"| {lv['clients']} | {lv['requests']} | {lv['errors']} | {lv['throughput_tok_s']} | "
                     f"{lv['ttft_p50_s']} | {lv['ttft_p99_s']} | {lv['per_token_p50_ms']} |")
    lines += ["", "TTFT is measured at the client from sending the request to the first content chunk; with one "
              "slot it includes the time waiting in the queue behind the other clients."]
    if m:
        lines += ["", f"## Memory over {m['seconds']:.0f} s ({m['clients']} streaming clients, {m['requests']} requests)",
                  "", f"Server RSS: first {m['rss_first_mb']} MB, last {m['rss_last_mb']} MB, min {m['rss_min_mb']} MB, "
                  f"max {m['rss_max_mb']} MB; slope over the second half {m['second_half_slope_mb_per_min']} MB/min."]
    (RESULTS / "serve.md").write_text("\n".join(lines) + "\n")


async def main_async(args) -> dict:
    import quantdeploy
    from quantdeploy.server.process import ServerProcess
    from quantdeploy.testing.fixtures import gemma_gguf

    model = quantdeploy.load(str(gemma_gguf()))
    info = model.describe()
    res = {"command": " ".join(["python", "benchmarks/bench_serve.py", *sys.argv[1:]]),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
                      f"{platform.python_version()}",
           "model": info["name"], "kernel": info["kernel"], "device": info["device"], "max_tokens": args.max_tokens,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_before": os.getloadavg()}
    with ServerProcess(str(gemma_gguf()), "--max-queue", "64", "--log-level", "warning") as server:
        url = server.base_url
        print("overhead ...", file=sys.stderr)
        res["overhead"] = await overhead(model, url, args.rounds, args.overhead_tokens)
        print(json.dumps({k: v for k, v in res["overhead"].items() if not k.endswith("_all_ms")}), file=sys.stderr)
        model.close()  # from here on only the server generates
        res["levels"] = []
        for c in args.levels:
            print(f"load: {c} clients for {args.level_seconds:.0f}s ...", file=sys.stderr)
            lv = await load_level(url, c, args.level_seconds, args.max_tokens)
            print(json.dumps(lv), file=sys.stderr)
            res["levels"].append(lv)
        if args.memory_seconds > 0:
            print(f"memory: 4 clients for {args.memory_seconds:.0f}s ...", file=sys.stderr)
            res["memory"] = await memory(url, server.pid, args.memory_seconds, 4, args.max_tokens)
            print(json.dumps({k: v for k, v in res["memory"].items() if k != "samples"}), file=sys.stderr)
    res["loadavg_after"] = os.getloadavg()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,4,16", help="concurrent clients per level, comma separated")
    ap.add_argument("--level-seconds", type=float, default=20.0, help="how long each level sends new requests")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per request in the load levels")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved A/B rounds for the overhead")
    ap.add_argument("--overhead-tokens", type=int, default=64, help="tokens per overhead round")
    ap.add_argument("--memory-seconds", type=float, default=120.0, help="0 skips the memory run")
    args = ap.parse_args()
    args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the server subprocess is stopped too
    res = asyncio.run(main_async(args))
    write_report(res)
    print((RESULTS / "serve.md").read_text())


if __name__ == "__main__":
    main()
