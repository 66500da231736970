"""The GPU benchmark of record (issues 6 and 7): quantdeploy's fast engine, the transformers + gptqmodel Marlin
path and llama.cpp, side by side in one run on 8B-shape synthetic GPTQ / AWQ / GGUF Q4_K_M models (and the
embedded Gemma-3-270M), against the device's measured copy roofline.

    python benchmarks/gpu/bench_all.py --models DIR --out benchmarks/results   (DIR from synth.py)

Writes <date>-<gpu>.{json,md,html} in --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from quantdeploy.bench.report import render, write_report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--embedded", type=Path, help="the embedded Gemma-3-270M GGUF (assembled on the GPU machine)")
    a = ap.parse_args()
    d = a.models
    rows = [
        (d / "gptq", ["--engine", "fast"], "llama-8b GPTQ · quantdeploy engine"),
        (d / "awq", ["--engine", "fast"], "llama-8b AWQ · quantdeploy engine"),
        (d / "gptq", ["--engine", "fast"], "llama-8b GPTQ · quantdeploy engine, 2026-11-30 settings",
         {"QUANTDEPLOY_PDL_EARLY": "0", "QUANTDEPLOY_FUSE_ATTN": "0", "QUANTDEPLOY_L2_PREFETCH": "0"}),
        (d / "gptq", ["--engine", "fast"], "llama-8b GPTQ · quantdeploy engine, PDL off",
         {"QUANTDEPLOY_PDL": "0"}),
        (d / "gptq", ["--engine", "fast", "--kernel", "exllama_v2"], "llama-8b GPTQ · quantdeploy engine, ExLlamaV2"),
        (d / "gptq", ["--engine", "fast", "--kernel", "triton"], "llama-8b GPTQ · quantdeploy engine, Triton GEMV"),
        (d / "gguf" / "llama-8b-Q4_K_M.gguf", [], "llama-8b GGUF Q4_K_M · llama.cpp"),
    ]
    if a.embedded and a.embedded.is_file():
        rows.append((a.embedded, [], "gemma-3-270m GGUF Q4_K_M (embedded) · llama.cpp"))
    if not a.skip_hf:
        rows += [(d / "gptq", ["--engine", "hf", "--kernel", "marlin"], "llama-8b GPTQ · transformers+gptqmodel marlin"),
                 (d / "awq", ["--engine", "hf", "--kernel", "marlin"], "llama-8b AWQ · transformers+gptqmodel marlin")]
    # One process per model: llama.cpp's CUDA build and torch's CUDA libraries crash when they share one.
    report = None
    for path, opts, name, *env in rows:
        cmd = [sys.executable, "-m", "quantdeploy", "bench", str(path), *opts, "--device", "cuda", "--json",
               "--no-warm-load", "--prompt-tokens", str(a.prompt_tokens), "--new-tokens", str(a.new_tokens),
               "--repeat", str(a.repeat)]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        env = {**os.environ, **(env[0] if env else {})}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{name}: failed ({proc.returncode}): {proc.stderr[-3000:]}", file=sys.stderr)
            continue
        one = json.loads(proc.stdout)
        for r in one["results"]:
            r["model"] = name
        if report is None:
            report = one
            report["command"] = "python " + " ".join(sys.argv)
        else:
            report["results"] += one["results"]
            report["rooflines"].update(one.get("rooflines") or {})
    gpus = report["environment"].get("gpus") or [{"name": "gpu"}]
    name = str(gpus[0]["name"])
    stem = f"{datetime.date.today()}-{name.replace('NVIDIA ', '').replace(' ', '-').lower()}"
    a.out.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".md", ".html"):
        write_report(report, a.out / (stem + suffix))
    print(render(report, ".md"))


if __name__ == "__main__":
    main()
