"""What `quantdeploy serve` itself costs a streaming client, with the device taken out: the real server (HTTP, slot
threads, event loop, server-sent events), the real batching scheduler and the real streaming clients of
`quantdeploy bench --concurrency`, over a stepper that only waits as a GPU would.

    python benchmarks/serve_overhead.py [--levels 1,8,32,64] [--json OUT] [--md OUT]

A simulated step takes STEP + PER_SEQ x decode rows + PER_PROMPT_TOKEN x prompt tokens (by default the H200's
in-process GPTQ steps: 1.83 / 2.86 / 6.72 / 10.14 ms at 1 / 8 / 32 / 64 sequences, benchmarks/results/gpu/
h200-batching-gptq.json) and is waited for with the GIL released, as a CUDA event is. Its tokens are one word
repeated. The model behind the server is the default GGUF model (its tokenizer and its batched generation path),
its scheduler's stepper swapped for the simulated one. An inter-token gap above the simulated step is the serving
path's own cost; a time to first token above the prompt chunks' steps is its queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = 504  # the word every simulated step samples


class SimulatedStepper:
    """batching.Stepper: launch() returns at once, collect() sleeps until the step would have ended."""

    prefix_caching = False

    def __init__(self, max_seqs: int, step_s: float, per_seq_s: float, per_prompt_token_s: float):
        self.max_seqs, self.num_blocks, self.block_size, self.max_len = max_seqs, 4096, 32, 8192
        self.chunk_tokens = 512
        self.step_s, self.per_seq_s, self.per_prompt_token_s = step_s, per_seq_s, per_prompt_token_s
        self.busy_until = 0.0
        self.peak_batch = 0

    def begin(self, seq) -> None:
        pass

    def end(self, seq) -> None:
        pass

    def launch(self, decodes, prefills):
        from quantdeploy.batching import Sampled

        start = max(time.perf_counter(), self.busy_until)  # steps queue behind each other, as on a stream
        prompt = sum(len(w.tokens) for w in prefills)
        self.busy_until = start + self.step_s + self.per_seq_s * len(decodes) + self.per_prompt_token_s * prompt
        self.peak_batch = max(self.peak_batch, len(decodes))
        return self.busy_until, [Sampled(TOKEN) if w.sample else None for w in decodes + prefills]

    def collect(self, handle):
        until, sampled = handle
        wait = until - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        return sampled


def step_ms(a, n: int) -> float:
    return a.step_ms + a.per_seq_ms * n


def serve(a, port: int) -> None:
    import quantdeploy
    from quantdeploy.batching import Scheduler
    from quantdeploy.models import default_model_path
    from quantdeploy.server.config import ServerSettings
    from quantdeploy.server.run import serve as run_server

    top = max(2, *a.levels)  # one sequence would load the model unbatched
    model = quantdeploy.load(str(default_model_path()), max_seqs=top, n_ctx=256 * top)
    model._sched.close()  # the llama.cpp scheduler goes; the same generation path reads the simulated one
    model._sched = Scheduler(SimulatedStepper(top, a.step_ms / 1e3, a.per_seq_ms / 1e3, a.prompt_token_ms / 1e3))
    run_server(ServerSettings(model_name="simulated", max_concurrency=top, max_queue=top), port=port,
               loader=lambda: model, log_level="warning")


def measure(a) -> list[dict]:
    from quantdeploy.bench.concurrency import run_level
    from quantdeploy.server.process import free_port

    port = free_port()
    cmd = [sys.executable, __file__, "--serve", str(port), "--levels", ",".join(map(str, a.levels)),
           "--step-ms", str(a.step_ms), "--per-seq-ms", str(a.per_seq_ms), "--prompt-token-ms", str(a.prompt_token_ms)]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                log.seek(0)
                last = (log.read().strip().splitlines() or ["no output"])[-1]
                sys.exit(f"serve_overhead.py: the server exited with {server.returncode}: {last}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit("serve_overhead.py: the server did not answer /health in 120 s")
            time.sleep(0.2)
        words = (ROOT / "quantdeploy/bench/eval_text.txt").read_text().split()
        prompts = iter([" ".join(words[(i * 7 + j) % len(words)] for j in range(a.prompt_words)) for i in range(4096)])
        top = max(a.levels)
        asyncio.run(run_level(url, [next(prompts) for _ in range(top)], top, 1, 8, {}))  # warm-up wave
        rows = []
        for n in a.levels:
            r = asyncio.run(run_level(url, [next(prompts) for _ in range(n)], n, 1, a.new_tokens, {}))
            r["simulated_step_ms"] = round(step_ms(a, n), 3)
            rows.append(r)
            print(json.dumps(r), flush=True)
        return rows
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def markdown(rows: list[dict], command: str, env: dict) -> str:
    out = ["# The serving path's own cost (simulated device)", "", "```", command, "```", "",
           "`quantdeploy serve` and the batching scheduler over a stepper that only waits as a GPU would (see the "
           "script's docstring); N streaming clients, one request each, greedy, EOS ignored. An inter-token gap "
           "(ITL) above the simulated step is the serving path's own cost.", "",
           f"Machine: {env['cores']} cores ({env['cpu']}), Python {env['python']}, load average at the end "
           f"{', '.join(f'{x:.2f}' for x in env['load_average'])}.", "",
           "| clients | prompt tokens | simulated step ms | ITL p50 ms | ITL p95 ms | TPOT p50 ms | TTFT p50 ms | "
           "TTFT p95 ms | output tok/s | failed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['concurrency']} | {r['prompt_tokens_mean']} | {r['simulated_step_ms']} | "
                   f"{r['itl_ms']['p50']} | {r['itl_ms']['p95']} | "
                   f"{r['tpot_ms']['p50']} | {r['ttft_ms']['p50']} | {r['ttft_ms']['p95']} | {r['output_tok_s']} | "
                   f"{r['failed']} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 64])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-words", type=int, default=118, help="words per prompt (about 128 tokens)")
    ap.add_argument("--step-ms", type=float, default=1.75)
    ap.add_argument("--per-seq-ms", type=float, default=0.131)
    ap.add_argument("--prompt-token-ms", type=float, default=0.04)
    ap.add_argument("--json")
    ap.add_argument("--md")
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        return serve(a, a.serve)
    command = "python benchmarks/serve_overhead.py " + " ".join(sys.argv[1:])
    rows = measure(a)
    env = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "python": platform.python_version(), "load_average": os.getloadavg()}
    if a.json:
        Path(a.json).write_text(json.dumps({"command": command.strip(), "environment": env, "levels": rows},
                                           indent=1) + "\n")
    if a.md:
        Path(a.md).write_text(markdown(rows, command.strip(), env))


if __name__ == "__main__":
    main()
