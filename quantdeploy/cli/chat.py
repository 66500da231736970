"""`quantdeploy chat`: one-shot (--prompt), piped stdin, or the interactive REPL."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ..backends.base import GenerationParams
from ..models import DEFAULT_MODEL
from .common import (CtxOpt, DeviceOpt, EngineOpt, FormatOpt, KernelOpt, ModelArg, PickleOpt, RemoteOpt,
                     SplitModeOpt, TensorSplitOpt, apply_split, build_spec)


def register(app: typer.Typer) -> None:
    app.command("chat", help="Chat with a model: interactive (streaming, /help for commands), one-shot with "
                "--prompt, or a prompt piped on stdin.")(
        chat)


def chat(
    model: ModelArg = None,
    fmt: FormatOpt = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this once and exit.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens per reply.")] = 512,
    temperature: Annotated[Optional[float], typer.Option(
        "--temperature", "-t", help=f"0 = greedy. Default: {GenerationParams.temperature}, or what the model's "
        f"authors recommend (the default model: {DEFAULT_MODEL.sampling['temperature']}).", show_default=False)] = None,
    top_p: Annotated[Optional[float], typer.Option(
        "--top-p", help=f"Default: {GenerationParams.top_p}, or the model's recommended value (the default model: "
        f"{DEFAULT_MODEL.sampling['top_p']}).", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    template: Annotated[Optional[str], typer.Option(
        "--template", help="Chat template instead of the model's: gemma, llama3, chatml, mistral, or a Jinja file.")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="With --prompt: no chat template, plain completion.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print load time, kernel and speed.")] = False,
    device: DeviceOpt = "auto",
    kernel: KernelOpt = None,
    ctx: CtxOpt = None,
    allow_pickle: PickleOpt = False,
    trust_remote_code: RemoteOpt = False,
    engine: EngineOpt = "auto",
    tensor_split: TensorSplitOpt = None,
    split_mode: SplitModeOpt = None,
) -> None:
    from ..chat.templates import check_template

    given = {k: v for k, v in (("temperature", temperature), ("top_p", top_p)) if v is not None}
    GenerationParams(max_tokens=max_tokens, seed=seed, **given).validate()  # bad values fail before any load
    if not raw:
        check_template(template)  # everything that can fail without the model fails before it loads (or pulls)
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
        if not prompt.strip():
            from ..errors import UsageError

            raise UsageError("stdin was empty: pipe a prompt, or pass --prompt TEXT")
    spec = apply_split(build_spec(model, fmt, device=device, kernel=kernel, ctx=ctx, allow_pickle=allow_pickle,
                                  trust_remote_code=trust_remote_code, engine=engine), tensor_split, split_mode)
    params = GenerationParams(max_tokens=max_tokens, seed=seed, **{**spec.extra.get("sampling", {}), **given})
    if prompt is not None:
        from ..chat.oneshot import answer_once

        answer_once(spec, prompt, params, system=system, template=template, raw=raw, verbose=verbose)
        return
    from ..chat.repl import run_repl

    run_repl(spec, params, system=system, template=template, verbose=verbose)
