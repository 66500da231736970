"""The GPU benchmark of record (issues 6 and 7): quantdeploy's fast engine, the transformers + gptqmodel Marlin
path and llama.cpp, side by side in one run on 8B-shape synthetic GPTQ / AWQ / GGUF Q4_K_M models (and the
embedded Gemma-3-270M), against the device's measured copy roofline.

    python benchmarks/gpu/bench_all.py --models DIR --out benchmarks/results   (DIR from synth.py)
    python benchmarks/gpu/bench_all.py --out DIR --embedded-fixtures --only embedded,embedded-gptq,embedded-awq

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
    ap.add_argument("--models", type=Path, help="DIR from synth.py (the 8B-shape rows)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--embedded", type=Path, help="the embedded Gemma-3-270M GGUF (assembled on the GPU machine)")
    ap.add_argument("--embedded-fixtures", action="store_true",
                    help="rows for the embedded model's GGUF and the GPTQ / AWQ test fixtures built from it")
    ap.add_argument("--require-gpu", action="store_true", help="passed to each bench (exit 3 rows are kept)")
    ap.add_argument("--only", help="comma-separated row keys (gptq, awq, gptq-pdl-off, gguf, hf-gptq, embedded, ...)")
    a = ap.parse_args()
    d = a.models
    e = ["--engine", "fast"]
    rows = [] if d is None else [  # (key, model, options, name, extra environment)
        ("gptq", d / "gptq", e, "llama-8b GPTQ · quantdeploy engine", {}),
        ("awq", d / "awq", e, "llama-8b AWQ · quantdeploy engine", {}),
        ("gptq-greedy-outside", d / "gptq", e, "llama-8b GPTQ · quantdeploy engine, greedy argmax outside the graph",
         {"QUANTDEPLOY_GREEDY_GRAPH": "0"}),
        ("gptq-pdl-off", d / "gptq", e, "llama-8b GPTQ · quantdeploy engine, PDL off", {"QUANTDEPLOY_PDL": "0"}),
        ("gptq-meta-words", d / "gptq", e, "llama-8b GPTQ · quantdeploy engine, 4-byte scale | zero per group",
         {"QUANTDEPLOY_GEMV_META": "words"}),
        ("awq-meta-words", d / "awq", e, "llama-8b AWQ · quantdeploy engine, 4-byte scale | zero per group",
         {"QUANTDEPLOY_GEMV_META": "words"}),
        ("gptq-int8-head", d / "gptq", e, "llama-8b GPTQ · quantdeploy engine, int8 lm_head (opt-in)",
         {"QUANTDEPLOY_LM_HEAD": "int8"}),
        ("gptq-exllama", d / "gptq", e + ["--kernel", "exllama_v2"], "llama-8b GPTQ · quantdeploy engine, ExLlamaV2",
         {}),
        ("gptq-triton", d / "gptq", e + ["--kernel", "triton"], "llama-8b GPTQ · quantdeploy engine, Triton GEMV", {}),
        ("gguf", d / "gguf" / "llama-8b-Q4_K_M.gguf", [], "llama-8b GGUF Q4_K_M · llama.cpp", {}),
    ]
    if a.embedded_fixtures:
        from quantdeploy.models import embedded_model_path
        from quantdeploy.testing.fixtures import awq_model, gptq_model

        a.embedded = embedded_model_path()
        rows += [("embedded-gptq", gptq_model(), e, "gemma-3-270m GPTQ (fixture) · quantdeploy engine", {}),
                 ("embedded-awq", awq_model(), e, "gemma-3-270m AWQ (fixture) · quantdeploy engine", {})]
    if a.embedded and a.embedded.is_file():
        rows.append(("embedded", a.embedded, [], "gemma-3-270m GGUF Q4_K_M (embedded) · llama.cpp", {}))
    if not a.skip_hf and d is not None:
        hf = ["--engine", "hf", "--kernel", "marlin"]
        rows += [("hf-gptq", d / "gptq", hf, "llama-8b GPTQ · transformers+gptqmodel marlin", {}),
                 ("hf-awq", d / "awq", hf, "llama-8b AWQ · transformers+gptqmodel marlin", {})]
    if a.only:
        keep = a.only.split(",")
        rows = [r for r in rows if r[0] in keep]
    # One process per model: llama.cpp's CUDA build and torch's CUDA libraries crash when they share one.
    report = None
    for _, path, opts, name, env in rows:
        cmd = [sys.executable, "-m", "quantdeploy", "bench", str(path), *opts, "--device", "cuda", "--json",
               "--no-warm-load", "--prompt-tokens", str(a.prompt_tokens), "--new-tokens", str(a.new_tokens),
               "--repeat", str(a.repeat)] + (["--require-gpu"] if a.require_gpu else [])
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        env = {**os.environ, **env}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode == 3:  # measured, but a --require-* check failed: keep the row, say so
            print(f"{name}: exit 3, a --require-gpu check failed (see the row's kernels)", file=sys.stderr)
        elif proc.returncode != 0:
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
        write(report, a.out)  # after every row: a run cut short keeps what it measured
    if report is None:
        sys.exit("no row was measured")
    print(render(report, ".md"))


def write(report: dict, out: Path) -> None:
    gpus = report["environment"].get("gpus") or [{"name": "gpu"}]
    name = str(gpus[0]["name"])
    stem = f"{datetime.date.today()}-{name.replace('NVIDIA ', '').replace(' ', '-').lower()}"
    out.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".md", ".html"):
        write_report(report, out / (stem + suffix))


if __name__ == "__main__":
    main()
