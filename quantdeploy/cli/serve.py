"""`quantdeploy serve`: an OpenAI-compatible HTTP server for one model (GPTQ, AWQ or GGUF)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..backends.base import BATCH_CAP
from ..models import load_spec
from .common import (CtxOpt, DeviceOpt, EngineOpt, FormatOpt, KernelOpt, ModelArg, PickleOpt, PromptChunkOpt,
                     RemoteOpt, SplitModeOpt, TensorSplitOpt, apply_split, build_spec)


def register(app: typer.Typer) -> None:
    app.command("serve", help="Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, "
                              "/v1/completions, /v1/models, /health, /metrics).")(serve)


def serve(
    model: ModelArg = None,
    fmt: FormatOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind. Anything but loopback exposes the model: "
                                                     "set an API key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0 = any free port).", min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", help="Require 'Authorization: Bearer KEY' on /v1 (default: $QUANTDEPLOY_API_KEY; prefer the "
                          "env var, a flag shows in the process list).", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option(
        "--name", help="Model id clients send as 'model' (default: the model's name).", show_default=False)] = None,
    alias: Annotated[Optional[list[str]], typer.Option(
        "--alias", help="Another model id clients may send (repeatable), e.g. gpt-4o-mini; '*' accepts any id.",
        show_default=False)] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        "--cors-origin", help="A browser origin allowed to call the API (repeatable), e.g. http://localhost:3000; "
                              "'*' allows any. Default: none (web pages cannot call the server).",
        show_default=False)] = None,
    max_concurrency: Annotated[Optional[int], typer.Option(
        "--max-concurrency", min=1, help="Generations at once, decoded together by the one loaded model (default: "
                                         f"as many as it can batch, at most {BATCH_CAP}).",
        show_default=False)] = None,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", min=0, help="Requests waiting for a free slot; beyond this the server answers 429.")] = 32,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option(
        "--gpu-memory-utilization", min=0.05, max=1.0,
        help="GPTQ/AWQ on a GPU: the share of the GPU's memory for the weights and the KV cache pool "
             "(default 0.9); the pool gets what the weights leave.", show_default=False)] = None,
    prompt_chunk: PromptChunkOpt = None,
    template: Annotated[Optional[str], typer.Option(
        "--template", help="Chat template: gemma, llama3, chatml, mistral, or a Jinja file.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="critical, error, warning, info or debug.")] = "info",
    device: DeviceOpt = "auto",
    kernel: KernelOpt = None,
    ctx: CtxOpt = None,
    allow_pickle: PickleOpt = False,
    trust_remote_code: RemoteOpt = False,
    engine: EngineOpt = "auto",
    tensor_split: TensorSplitOpt = None,
    split_mode: SplitModeOpt = None,
    replicas: Annotated[Optional[str], typer.Option(
        "--replicas", help="Run N copies of the model (or 'auto': one per GPU) as Ray Serve replicas behind this "
                           "one endpoint; needs the cluster extra.", show_default=False)] = None,
    autoscale: Annotated[Optional[str], typer.Option(
        "--autoscale", help="MIN:MAX replicas, added and removed with the queue length (instead of --replicas).",
        show_default=False)] = None,
    gpus_per_replica: Annotated[Optional[float], typer.Option(
        "--gpus-per-replica", help="GPUs each replica holds (default: 1 when the Ray cluster has GPUs, else 0).",
        show_default=False)] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="Join this Ray cluster (head node IP:6379) instead of starting a local Ray instance.",
        show_default=False)] = None,
) -> None:
    from ..chat.templates import check_template
    from ..extras import require
    from ..models import check_model
    from ..settings import get_settings

    require("serve", "serve")  # before anything imports fastapi
    # what can fail without the model fails before the server's libraries load and the port is bound
    check_template(template)
    cluster = None
    if replicas is not None or autoscale is not None or ray_address is not None or gpus_per_replica is not None:
        require("cluster", "serve --replicas")
        from ..server.cluster import ClusterSettings

        cluster = ClusterSettings.from_options(replicas, autoscale, gpus_per_replica, ray_address)
    spec = build_spec(model, fmt, device=device, kernel=kernel, ctx=ctx, allow_pickle=allow_pickle,
                      trust_remote_code=trust_remote_code, engine=engine)
    spec.gpu_memory_utilization = gpu_memory_utilization
    spec.prompt_chunk = prompt_chunk
    apply_split(spec, tensor_split, split_mode)
    check_model(spec)
    from ..server import ServerSettings
    from ..server.run import serve as run_server

    settings = ServerSettings(model_name=name if name is not None else spec.display_name, spec=spec,
                              api_key=api_key if api_key is not None else get_settings().api_key,
                              max_concurrency=max_concurrency, max_queue=max_queue, template=template,
                              aliases=tuple(alias or ()), cors_origins=tuple(cors_origin or ())).validate()
    if cluster is not None:
        from ..server.cluster import serve_cluster

        return serve_cluster(settings, cluster, model=model, host=host, port=port, log_level=log_level.lower())
    verbose = log_level.lower() == "debug"
    run_server(settings, host, port, loader=lambda: load_spec(settings.spec_to_load(), verbose=verbose),
               log_level=log_level.lower())
