"""Hardware probes shared by backends, bench and doctor."""

from __future__ import annotations

import functools
import glob
import shutil


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """GPUs torch can use; 0 without a driver. Cheap when there is obviously no GPU."""
    if not glob.glob("/dev/nvidia[0-9]*") and not shutil.which("nvidia-smi"):
        return 0
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def pick_torch_device(requested: str) -> str:
    """'auto' -> cuda:0 when a GPU is usable, else cpu. An explicit cuda without a GPU is an error."""
    from ..errors import UsageError

    req = (requested or "auto").lower()
    if req == "auto":
        return "cuda:0" if cuda_device_count() else "cpu"
    if req.startswith("cuda"):
        if not cuda_device_count():
            raise UsageError(f"--device {requested}: no CUDA GPU is usable here (torch sees none); use --device cpu")
        return "cuda:0" if req == "cuda" else req
    if req == "cpu":
        return "cpu"
    raise UsageError(f"unknown device '{requested}'; choose one of: auto, cpu, cuda, cuda:N")
