"""`quantdeploy inspect`: what a model is, read from its files (no weights loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .backends.base import ModelSpec
from .registry import get_backend


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def inspect_model(spec: ModelSpec) -> dict[str, Any]:
    info: dict[str, Any] = {"name": spec.display_name, "path": str(spec.path), "format": spec.format,
                            "size_bytes": _size(spec.path)}
    backend = get_backend(spec.format)
    backend.check_files(spec)
    info["backend"] = backend.name
    ok, reason = backend.check_environment()
    info["backend_available"] = ok
    if reason:
        info["backend_reason"] = reason
    kernels = backend.kernels(spec) if ok else []
    chosen = [k for k in kernels if k.chosen]
    if chosen:
        info["kernel"] = f"{chosen[0].name} ({chosen[0].engine})"
    info["kernels"] = [f"{k.name} ({k.engine}): {k.reason or 'can run here'}" for k in kernels]
    info.update(backend.inspect(spec))
    info["runs_on"], info["runs_on_why"] = backend.runs_on(spec)  # after the files' checks: it may import torch
    return info
