"""Per-GPU tuned GEMV choices, in the directory EngineConfig.tuned_dir names ($QUANTDEPLOY_HOME/gemv unless
QUANTDEPLOY_TUNED_GEMV=0): <gpu name>.json for the Triton GEMV (written by `benchmarks/gpu/gemv_tune.py --save`),
<gpu name>-cuda.json for the CUDA GEMV (by `benchmarks/gpu/graph_ab.py --sweep --save`, tuned in the decode graph);
keys "KxN" (Triton) and "KxN:Z", Z the meta form swept on (CUDA). The engine reports the file it read."""

from __future__ import annotations

import functools
import json
from pathlib import Path

SUFFIX = {"triton": "", "cuda": "-cuda"}


def tuned_file(directory: Path | None, device, kind: str) -> Path | None:
    """The tuned file for this GPU and kernel kind in `directory` (None: tuned files are off)."""
    if directory is None:
        return None
    import torch

    name = torch.cuda.get_device_name(device).replace(" ", "-") if device.type == "cuda" else "cpu"
    return Path(directory) / f"{name}{SUFFIX[kind]}.json"


@functools.lru_cache(maxsize=16)
def read(path: Path | None) -> dict:
    """The file's choices ({} when there is none, or it is unreadable)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save(directory: Path, device, kind: str, keys: dict) -> Path:
    """Adds `keys` to the device's tuned file (other keys kept; for the CUDA GEMV those of other meta forms, and
    the earlier "KxN" keys, which it no longer reads, dropped) and writes it whole or not at all."""
    path = tuned_file(directory, device, kind)
    old = {k: v for k, v in read(path).items() if kind != "cuda" or ":" in k}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**old, **keys}, indent=1))
    tmp.replace(path)
    read.cache_clear()
    return path
