"""Per-GPU tuned GEMV choices under $QUANTDEPLOY_HOME/gemv/: <gpu name>.json for the Triton GEMV (written by
`benchmarks/gpu/gemv_tune.py --save`), <gpu name>-cuda.json for the CUDA GEMV (by `benchmarks/gpu/graph_ab.py
--sweep --save`, tuned in the decode graph); keys "KxN" (Triton) and "KxN:Z", Z the meta form swept on (CUDA)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

SUFFIX = {"triton": "", "cuda": "-cuda"}


def tuned_file(device, kind: str) -> Path:
    import torch

    from ..settings import get_settings

    name = torch.cuda.get_device_name(device).replace(" ", "-") if device.type == "cuda" else "cpu"
    return get_settings().home / "gemv" / f"{name}{SUFFIX[kind]}.json"


@functools.lru_cache(maxsize=16)
def tuned(device, kind: str) -> dict:
    try:
        data = json.loads(tuned_file(device, kind).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save(device, kind: str, keys: dict) -> Path:
    """Adds `keys` to the device's tuned file (other keys kept; for the CUDA GEMV those of other meta forms, and
    the earlier "KxN" keys, which it no longer reads, dropped) and writes it whole or not at all."""
    path = tuned_file(device, kind)
    old = {k: v for k, v in tuned(device, kind).items() if kind != "cuda" or ":" in k}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**old, **keys}, indent=1))
    tmp.replace(path)
    tuned.cache_clear()
    return path
