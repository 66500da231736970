"""Options shared by commands that load a model (chat, serve, bench), and their translation to a ModelSpec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..backends.base import ModelSpec
from ..errors import UsageError
from ..registry import formats

FORMATS_TEXT = ", ".join(formats())  # the registered formats (built-ins and plugins), for help texts

ModelArg = Annotated[Optional[str], typer.Argument(
    help="A model directory, a .gguf file, a pulled name or org/repo[:QUANT]. Default: SmolLM2-135M-Instruct "
         "(a 98 MB Q4_1 GGUF that ./install.sh installs).",
    show_default=False)]
FormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", help=f"Expected format: {FORMATS_TEXT}.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
KernelOpt = Annotated[Optional[str], typer.Option(
    "--kernel", help="GPTQ/AWQ: the kernel, and with it the engine (fast_cuda, fast_triton, fast_torch: quantdeploy's "
                     "engine; marlin, exllama_v2, ...: gptqmodel's). Default: the first that can run the model; "
                     "`quantdeploy backends` lists them in order.")]
CtxOpt = Annotated[Optional[int], typer.Option("--ctx", help="Context window to allocate (tokens).", min=16)]
PromptChunkOpt = Annotated[Optional[int], typer.Option(
    "--prompt-chunk", min=16, show_default=False,
    help="Prompt tokens a batching step takes beside its decodes (default 2048 for the engine on a GPU, else 512): "
         "more serves a wave of new requests "
         "their first token sooner, fewer keeps the running streams' gaps shorter.")]
PickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Load *.bin/*.pt weights (can run code).")]
RemoteOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Run model code shipped in the repo.")]
EngineOpt = Annotated[str, typer.Option("--engine", help="GPTQ/AWQ: only this engine's kernels: auto, fast "
                                                        "(quantdeploy's engine) or hf (transformers + gptqmodel).")]
TensorSplitOpt = Annotated[Optional[str], typer.Option(
    "--tensor-split", help="GGUF on several GPUs: a proportion per GPU, e.g. 3,1 (default: by free memory).",
    show_default=False)]
SplitModeOpt = Annotated[Optional[str], typer.Option(
    "--split-mode", help="GGUF on several GPUs: layer (whole layers per GPU), row (each layer split) or none.",
    show_default=False)]


def build_spec(model: str | None, fmt: str | None, *, device: str = "auto", kernel: str | None = None,
               ctx: int | None = None, allow_pickle: bool = False, trust_remote_code: bool = False,
               engine: str = "auto") -> ModelSpec:
    from ..models import resolve_model

    if engine not in ("auto", "hf", "fast"):
        raise UsageError(f"unknown engine '{engine}'; choose one of: auto, hf, fast")
    if device != "auto":
        from ..backends.hw import pick_torch_device

        pick_torch_device(device)  # an unknown device, or cuda without a GPU, fails before anything loads
    return resolve_model(model, fmt=fmt, device=device, kernel=kernel, n_ctx=ctx, allow_pickle=allow_pickle,
                         trust_remote_code=trust_remote_code, engine=engine)


def apply_split(spec: ModelSpec, tensor_split: str | None, split_mode: str | None) -> ModelSpec:
    """--tensor-split / --split-mode into the spec (llama.cpp's own multi-GPU split; GGUF only)."""
    if tensor_split is None and split_mode is None:
        return spec
    from ..backends.gguf_split import check_split_mode, parse_tensor_split

    flag = "--tensor-split" if tensor_split is not None else "--split-mode"
    if spec.format != "gguf":
        raise UsageError(f"{flag} applies to GGUF models (llama.cpp's split); {spec.display_name} is "
                         f"{spec.format.upper()}")
    if tensor_split is not None:
        spec.extra["tensor_split"] = parse_tensor_split(tensor_split)
    if split_mode is not None:
        spec.extra["split_mode"] = check_split_mode(split_mode)
    return spec


def existing_path(p: str) -> Path:
    path = Path(p).expanduser()
    if not path.exists():
        raise UsageError(f"no such file or directory: {path}")
    return path
