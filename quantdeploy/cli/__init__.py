"""The `quantdeploy` command. Each command group lives in its own module; this file wires them and turns
QuantDeployError into one line on stderr and a non-zero exit (QUANTDEPLOY_DEBUG=1 shows the traceback)."""

from __future__ import annotations

import sys

import typer

from ..errors import QuantDeployError
from ..settings import get_settings, prepare_process_env

app = typer.Typer(name="quantdeploy", help="Pull, chat with, serve and benchmark quantized LLMs (GPTQ, AWQ, GGUF).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _register() -> None:
    from . import bench, chat, core, doctor, hub, serve

    for mod in (core, chat, hub, serve, bench, doctor):
        mod.register(app)


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
        code: int | str | None = 0
    except SystemExit as e:
        code = e.code
    _exit(code)


def _main(argv: list[str] | None) -> None:
    prepare_process_env()
    _register()
    debug = get_settings().debug
    try:
        app(args=argv, prog_name="quantdeploy")
    except QuantDeployError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug: still one line, with the way to see more
        if debug:
            raise
        print(f"error: internal error ({type(e).__name__}: {str(e)[:300]}); rerun with QUANTDEPLOY_DEBUG=1 "
              "for the traceback and report it", file=sys.stderr)
        sys.exit(70)


def _exit(code: int | str | None) -> None:
    """sys.exit(code), except after a CUDA profile (bench's kernel evidence): then the process ends at once, output
    flushed, without the exit-time teardown. There, CUDA's primary-context release calls back into CUPTI, which
    hands torch's profiler (kineto) buffers it already freed: "double free or corruption" / "free(): invalid
    pointer" and SIGABRT after a finished run (native backtrace on an H200, 2026-12-01; pytorch/pytorch#195207)."""
    kernels = sys.modules.get("quantdeploy.bench.kernels")
    if not getattr(kernels, "CUPTI_USED", False):
        sys.exit(code)
    import logging
    import os

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
