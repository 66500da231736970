"""`quantdeploy generate`: offline batch generation from a JSONL file of prompts into a JSONL file of results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..backends.base import GenerationParams
from ..models import load_spec
from .common import (CtxOpt, DeviceOpt, EngineOpt, FormatOpt, KernelOpt, ModelArg, PickleOpt, PromptChunkOpt,
                     RemoteOpt, build_spec)

HELP = ("Generate for every request of a JSONL file (one {\"prompt\"} or {\"messages\"} object per line, optional "
        "sampling fields and id) into a JSONL file of results in input order. Rerun the same command to resume: "
        "ids already in the output are skipped. Exit 1 when some requests failed (their errors are in the output).")


def register(app: typer.Typer) -> None:
    app.command("generate", help=HELP)(generate)


def generate(
    model: ModelArg = None,
    fmt: FormatOpt = None,
    input: Annotated[Optional[Path], typer.Option(
        "--input", "-i", help="JSONL file of requests (required).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="JSONL file of results (required); appended to, and resumed from on a rerun.",
        show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", "-n", help="Default for lines without max_tokens (cut to what the context holds).")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="Default; 0 = greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", help="Default for lines without top_p.")] = 0.95,
    top_k: Annotated[int, typer.Option("--top-k", help="Default for lines without top_k (0 = off).", min=0)] = 0,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Default for lines without seed.")] = None,
    stop: Annotated[Optional[List[str]], typer.Option(
        "--stop", help="Default stop string for lines without stop. Repeatable.")] = None,
    max_concurrency: Annotated[Optional[int], typer.Option(
        "--max-concurrency", min=1, help="Requests generated at once (default: what the model decodes together).",
        show_default=False)] = None,
    prompt_chunk: PromptChunkOpt = None,
    retry_errors: Annotated[bool, typer.Option(
        "--retry-errors", help="Run the requests whose output line is an error again.")] = False,
    template: Annotated[Optional[str], typer.Option(
        "--template", help="Chat template for messages: gemma, llama3, chatml, mistral, or a Jinja file.")] = None,
    device: DeviceOpt = "auto",
    kernel: KernelOpt = None,
    ctx: CtxOpt = None,
    allow_pickle: PickleOpt = False,
    trust_remote_code: RemoteOpt = False,
    engine: EngineOpt = "auto",
) -> None:
    from ..errors import UsageError
    from ..offline.job import JobOptions, run_file
    from ..chat.templates import check_template

    if input is None or output is None:
        raise UsageError(f"--{'input' if input is None else 'output'} is required: quantdeploy generate MODEL "
                         "--input prompts.jsonl --output results.jsonl")
    defaults = GenerationParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                                stop=tuple(stop or ())).validate()
    check_template(template)
    opts = JobOptions(input=input.expanduser(), output=output.expanduser(), defaults=defaults,
                      max_concurrency=max_concurrency, template=template, retry_errors=retry_errors)

    def resolve():
        spec = build_spec(model, fmt, device=device, kernel=kernel, ctx=ctx, allow_pickle=allow_pickle,
                          trust_remote_code=trust_remote_code, engine=engine)
        spec.prompt_chunk = prompt_chunk
        return spec

    run_file(opts, resolve, load=load_spec, log=lambda msg: print(msg, file=sys.stderr, flush=True))
