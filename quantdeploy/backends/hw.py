"""Hardware probes shared by backends, bench and doctor."""

from __future__ import annotations

import ctypes
import functools
import glob
import shutil
import sys


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Usable CUDA GPUs; 0 without a driver. Asks the driver directly (libcuda), not torch: importing torch's
    CUDA libraries before llama.cpp's CUDA build crashes the process (free(): invalid pointer, seen on H200)."""
    if not glob.glob("/dev/nvidia[0-9]*") and not shutil.which("nvidia-smi"):
        return 0
    if "torch" in sys.modules:
        try:
            torch = sys.modules["torch"]
            return torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:
            return 0
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        if cuda.cuInit(0) != 0:
            return 0
        n = ctypes.c_int(0)
        return n.value if cuda.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0
    except OSError:
        return 0


def pick_torch_device(requested: str) -> str:
    """'auto' -> cuda:0 when a GPU is usable, else cpu. An explicit cuda without a GPU is an error."""
    from ..errors import UsageError

    req = (requested or "auto").lower()
    if req == "auto":
        return "cuda:0" if cuda_device_count() else "cpu"
    if req.startswith("cuda"):
        if not cuda_device_count():
            raise UsageError(f"--device {requested}: no CUDA GPU is usable here; use --device cpu")
        return "cuda:0" if req == "cuda" else req
    if req == "cpu":
        return "cpu"
    raise UsageError(f"unknown device '{requested}'; choose one of: auto, cpu, cuda, cuda:N")
