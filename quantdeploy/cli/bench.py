"""`quantdeploy bench`: time one or more models side by side and prove which kernels ran."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import UsageError
from ..models import load_spec
from .common import (FORMATS_TEXT, CtxOpt, DeviceOpt, EngineOpt, KernelOpt, PickleOpt, PromptChunkOpt, RemoteOpt,
                     SplitModeOpt, TensorSplitOpt, apply_split, build_spec)

HELP = ("Benchmark models (speed, memory, GB/s vs the roofline, kernel evidence, optional quality) in one report. "
        "Exit 3 when --require-gpu / --require-kernel is not met.")


def register(app: typer.Typer) -> None:
    app.command("bench", help=HELP)(bench)


def pair_models(models: list[str | None], formats: list[str]) -> list[tuple[str | None, str | None]]:
    """No --format: detect each. One: for every model. One model, several: that model in each format (a pulled
    name). As many as models: pairwise."""
    if not formats:
        return [(m, None) for m in models]
    if len(formats) == 1:
        return [(m, formats[0]) for m in models]
    if len(models) == 1:
        return [(models[0], f) for f in formats]
    if len(formats) == len(models):
        return list(zip(models, formats))
    raise UsageError(f"{len(formats)} --format values for {len(models)} models; give one --format for all, "
                     "one per model, or several for a single pulled model")


def bench(
    models: Annotated[Optional[List[str]], typer.Argument(
        help="Model directories, .gguf files, pulled names or org/repo[:QUANT]. Default: the embedded model.",
        show_default=False)] = None,
    fmt: Annotated[Optional[List[str]], typer.Option(
        "--format", "-f", help=f"{FORMATS_TEXT}: once for all models, once per model, or several for one.")] = None,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", help="Prompt length of each run.")] = 128,
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="Tokens decoded per run (EOS ignored).")] = 64,
    repeat: Annotated[int, typer.Option("--repeat", help="Measured runs per model (after one warm-up).")] = 3,
    device: DeviceOpt = "auto",
    kernel: KernelOpt = None,
    gpu_layers: Annotated[Optional[int], typer.Option(
        "--gpu-layers", help="GGUF: layers to offload (-1 all, 0 none). Default: all when a GPU is usable.")] = None,
    require_gpu: Annotated[bool, typer.Option(
        "--require-gpu", help="Exit 3 unless every model runs on GPU kernels.")] = False,
    require_kernel: Annotated[Optional[List[str]], typer.Option(
        "--require-kernel", help="Exit 3 unless NAME (e.g. marlin, gptq_marlin_gemm) shows in every model's "
        "kernel evidence. Repeatable.")] = None,
    quality: Annotated[bool, typer.Option("--quality", help="Also measure perplexity and KL vs --reference.")] = False,
    reference: Annotated[Optional[Path], typer.Option(
        "--reference", help="Full-precision HF checkpoint for the KL divergence (with --quality).")] = None,
    quality_tokens: Annotated[int, typer.Option("--quality-tokens", help="Tokens of text scored.")] = 256,
    output: Annotated[Optional[List[Path]], typer.Option(
        "--output", "-o", help="Write the report: .json, .md or .html by suffix. Repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report instead of the table.")] = False,
    no_warm_load: Annotated[bool, typer.Option("--no-warm-load", help="Skip the second (warm) load.")] = False,
    refresh_roofline: Annotated[bool, typer.Option(
        "--refresh-roofline", help="Measure the device's copy bandwidth again instead of using the cache.")] = False,
    concurrency: Annotated[Optional[str], typer.Option(
        "--concurrency", help="Also serve each model (quantdeploy serve) to N concurrent streaming clients per "
        "level, e.g. 1,8,32,64: aggregate tok/s, TTFT and inter-token latency per N.", show_default=False)] = None,
    requests_per_client: Annotated[int, typer.Option(
        "--requests-per-client", help="With --concurrency: streamed requests each client sends per level.")] = 2,
    prompt_chunk: PromptChunkOpt = None,
    ctx: CtxOpt = None,
    allow_pickle: PickleOpt = False,
    trust_remote_code: RemoteOpt = False,
    engine: EngineOpt = "auto",
    tensor_split: TensorSplitOpt = None,
    split_mode: SplitModeOpt = None,
) -> None:
    from ..bench import BenchConfig, RequirementFailed, run_bench
    from ..bench.concurrency import parse_levels
    from ..bench.report import check_output_path, render, write_report

    outputs = [check_output_path(p) for p in output or []]
    if reference is not None and not quality:
        raise UsageError("--reference is used by --quality; add --quality (or drop --reference)")
    cfg = BenchConfig(prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeat=repeat, quality=quality,
                      quality_tokens=quality_tokens, reference=reference, warm_load=not no_warm_load,
                      refresh_roofline=refresh_roofline, requests_per_client=requests_per_client,
                      concurrency=parse_levels(concurrency) if concurrency is not None else []).validate()
    specs = []
    for model, f in pair_models(list(models or [None]), list(fmt or [])):
        spec = build_spec(model, f, device=device, kernel=kernel, ctx=ctx, allow_pickle=allow_pickle,
                          trust_remote_code=trust_remote_code, engine=engine)
        apply_split(spec, tensor_split, split_mode)
        spec.prompt_chunk = prompt_chunk  # the server of --concurrency batches with it
        if gpu_layers is not None:
            if cfg.concurrency:
                raise UsageError("--gpu-layers does not apply with --concurrency (the server offloads every layer "
                                 "it can); drop one of them")
            if spec.format != "gguf":
                raise UsageError(f"--gpu-layers applies to GGUF models; {spec.display_name} is {spec.format.upper()}")
            spec.extra["n_gpu_layers"] = gpu_layers
        specs.append(spec)
    command = "quantdeploy " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "quantdeploy bench"
    report = run_bench(specs, cfg, command=command, require_gpu=require_gpu, require_kernels=require_kernel or [],
                       load=load_spec)
    for p in outputs:
        write_report(report, p)
        print(f"wrote {p}", file=sys.stderr)
    sys.stdout.write(render(report, ".json" if as_json else ".md"))
    sys.stdout.flush()
    failures = report["requirements"]["failures"]
    if failures:
        raise RequirementFailed("requirement not met: " + "; ".join(failures))
