"""`quantdeploy backends` and `quantdeploy inspect`."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .common import FormatOpt, ModelArg, build_spec


def register(app: typer.Typer) -> None:
    app.command("backends", help="List the backends, the formats they load, whether they can run here, and the "
                "kernels each could use, in the order they are tried.")(backends)
    app.command("inspect", help="Show a model's format, quantization, architecture, context and stop tokens.")(
        inspect)


def backends(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    from ..registry import list_backends

    rows = list_backends()
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    from rich.markup import escape

    t = Table("format", "backend", "engines", "available", "reason")
    for r in rows:  # reasons name extras in brackets (quantdeploy[gptq]), which rich would take for markup
        t.add_row(r.format, r.backend, ", ".join(r.engines), "yes" if r.available else "no", escape(r.reason))
    k = Table("format", "kernel", "engine", "here", "why not", title="Kernels, in the order they are tried")
    for r in rows:
        for s in r.kernels:
            here = "chosen" if s["chosen"] else "yes" if s["ok"] else "no"
            k.add_row(r.format, s["name"], s["engine"], here, "" if s["chosen"] else escape(s["reason"]))
    console = Console()
    console.print(t)
    if k.rows:
        console.print(k)


def inspect(model: ModelArg = None, fmt: FormatOpt = None,
            as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    from ..inspection import inspect_model

    info = inspect_model(build_spec(model, fmt))
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    rows = []
    for k, v in info.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items() if b is not None)
        elif isinstance(v, list):
            v = ", ".join(map(str, v))
        elif k == "size_bytes":
            k, v = "size", f"{v / 1e6:.1f} MB"
        rows.append((k, str(v)))
    if not sys.stdout.isatty():  # a pipe or a file: whole values, one row a line, whatever the width
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
        return
    t = Table(show_header=False, box=None)
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")  # a long path wraps on a terminal; it is never cut
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t, markup=False, highlight=False)
