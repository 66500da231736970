"""The GPU benchmark of record: quantdeploy's fast engine, the transformers + gptqmodel Marlin path and llama.cpp,
side by side in one run on 8B-shape synthetic GPTQ / AWQ / GGUF Q4_K_M models (and the embedded Gemma-3-270M),
against the device's measured copy roofline. benchmarks/gpu/run.sh runs it after the checks.

    python benchmarks/gpu/bench_all.py --models build/gpu-models --out benchmarks/results/gpu   (models: synth.py)
    python benchmarks/gpu/bench_all.py --out benchmarks/results/gpu --embedded-fixtures --name h200-embedded \
        --only embedded,embedded-gptq,embedded-awq --require-gpu

Writes NAME.json and NAME.md in --out (NAME: the GPU's model, e.g. h200), after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from quantdeploy.bench.report import render, write_report


class Row(NamedTuple):
    key: str  # what --only selects
    path: Path  # the model
    options: list[str]  # quantdeploy bench options
    name: str  # the model column of the report
    env: dict[str, str]  # extra environment


def rows(models: Path | None, embedded: Path | None = None, embedded_fixtures: bool = False,
         skip_hf: bool = False) -> list[Row]:
    d = models
    e = ["--engine", "fast"]
    out = [] if d is None else [
        Row("gptq", d / "gptq", e, "llama-8b GPTQ · quantdeploy engine", {}),
        Row("awq", d / "awq", e, "llama-8b AWQ · quantdeploy engine", {}),
        Row("gptq-int8-head", d / "gptq", e, "llama-8b GPTQ · quantdeploy engine, int8 lm_head (opt-in)",
            {"QUANTDEPLOY_LM_HEAD": "int8"}),
        Row("gptq-triton", d / "gptq", e + ["--kernel", "fast_triton"],
            "llama-8b GPTQ · quantdeploy engine, Triton GEMV", {}),
        Row("gguf", d / "gguf" / "llama-8b-Q4_K_M.gguf", [], "llama-8b GGUF Q4_K_M · llama.cpp", {}),
    ]
    if embedded_fixtures:
        from quantdeploy.testing.fixtures import awq_model, gemma_gguf, gptq_model

        embedded = gemma_gguf()
        out += [Row("embedded-gptq", gptq_model(), e, "gemma-3-270m GPTQ (fixture) · quantdeploy engine", {}),
                Row("embedded-awq", awq_model(), e, "gemma-3-270m AWQ (fixture) · quantdeploy engine", {})]
    if embedded and embedded.is_file():
        out.append(Row("embedded", embedded, [], "gemma-3-270m GGUF Q4_K_M (embedded) · llama.cpp", {}))
    if not skip_hf and d is not None:
        hf = ["--engine", "hf", "--kernel", "marlin"]
        out += [Row("hf-gptq", d / "gptq", hf, "llama-8b GPTQ · transformers+gptqmodel marlin", {}),
                Row("hf-awq", d / "awq", hf, "llama-8b AWQ · transformers+gptqmodel marlin", {})]
    return out


def bench(row: Row, prompt_tokens: int, new_tokens: int, repeat: int, require_gpu: bool = False) -> dict | None:
    """One row in its own process (llama.cpp's CUDA build and torch's CUDA libraries crash when they share one):
    the bench's JSON report, or None when it failed."""
    cmd = [sys.executable, "-m", "quantdeploy", "bench", str(row.path), *row.options, "--device", "cuda", "--json",
           "--no-warm-load", "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens),
           "--repeat", str(repeat)] + (["--require-gpu"] if require_gpu else [])
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **row.env})
    if proc.returncode == 3:  # measured, but a --require-* check failed: keep the row, say so
        print(f"{row.name}: exit 3, a --require-gpu check failed (see the row's kernels)", file=sys.stderr)
    elif proc.returncode != 0:
        print(f"{row.name}: failed ({proc.returncode}): {proc.stderr[-3000:]}", file=sys.stderr)
        return None
    one = json.loads(proc.stdout)
    for r in one["results"]:
        r["model"] = row.name
    return one


def slug(gpu_name: str) -> str:
    """A GPU model as a file name: NVIDIA H200 -> h200, NVIDIA H100 80GB HBM3 -> h100-80gb-hbm3."""
    return gpu_name.replace("NVIDIA ", "").replace(" ", "-").lower()


def gpu_slug(report: dict) -> str:
    gpus = report["environment"].get("gpus") or [{"name": "gpu"}]
    return slug(str(gpus[0]["name"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, help="DIR from synth.py (the 8B-shape rows)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", help="file name of the report, without suffix (default: the GPU's model, e.g. h200)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--embedded", type=Path, help="the embedded Gemma-3-270M GGUF")
    ap.add_argument("--embedded-fixtures", action="store_true",
                    help="rows for the embedded model's GGUF and the GPTQ / AWQ test fixtures built from it")
    ap.add_argument("--require-gpu", action="store_true", help="passed to each bench (exit 3 rows are kept)")
    ap.add_argument("--only", help="comma-separated row keys (gptq, awq, gptq-pdl-off, gguf, hf-gptq, embedded, ...)")
    a = ap.parse_args()
    todo = rows(a.models, a.embedded, a.embedded_fixtures, a.skip_hf)
    if a.only:
        keep = a.only.split(",")
        todo = [r for r in todo if r.key in keep]
    report = None
    for row in todo:
        one = bench(row, a.prompt_tokens, a.new_tokens, a.repeat, a.require_gpu)
        if one is None:
            continue
        if report is None:
            report = one
            report["command"] = "python " + " ".join(sys.argv)
        else:
            report["results"] += one["results"]
            report["rooflines"].update(one.get("rooflines") or {})
        a.out.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".md"):  # after every row: a run cut short keeps what it measured
            write_report(report, a.out / ((a.name or gpu_slug(report)) + suffix))
    if report is None:
        sys.exit("no row was measured")
    print(render(report, ".md"))


if __name__ == "__main__":
    main()
