"""The environment block of a report: enough to reproduce (or distrust) the numbers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("quantdeploy", "torch", "transformers", "gptqmodel", "optimum", "llama-cpp-python", "gguf", "numpy",
            "huggingface_hub")
_CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cpu_info() -> dict[str, Any]:
    from .roofline import cpu_name

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"name": cpu_name(), "cores": os.cpu_count(), "flags": [f for f in _CPU_FLAGS if f in flags]}


def gpu_info() -> dict[str, Any]:
    """GPUs as torch sees them, the driver from nvidia-smi, torch's CUDA; empty lists without a GPU."""
    from ..backends.hw import cuda_device_count

    out: dict[str, Any] = {"gpus": [], "driver": None, "cuda": None}
    if not cuda_device_count():
        return out
    if "torch" not in sys.modules:  # a llama.cpp process: torch's CUDA beside it crashes; ask nvidia-smi
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=index,name,compute_cap,memory.total,driver_version",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
            for line in r.stdout.strip().splitlines():
                i, name, cap, mib, drv = [x.strip() for x in line.split(",")]
                out["gpus"].append({"index": int(i), "name": name, "capability": cap,
                                    "memory_gb": round(int(mib) * 2**20 / 1e9, 1)})
                out["driver"] = drv
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
        return out
    try:
        import torch

        out["cuda"] = torch.version.cuda
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["gpus"].append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                                "memory_gb": round(p.total_memory / 1e9, 1)})
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        out["driver"] = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def git_commit() -> dict[str, Any] | None:
    """The commit of the quantdeploy source tree, when it is a git checkout (None for an installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def llama_gpu_offload() -> bool | None:
    try:
        from ..backends.gguf import gpu_offload_supported

        return gpu_offload_supported()
    except ImportError:
        return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(load_at_start: list[float] | None = None) -> dict[str, Any]:
    """load_at_start: os.getloadavg() when the benchmark began; a busy machine explains a wide spread."""
    gpu = gpu_info()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "gpus": gpu["gpus"],
        "driver": gpu["driver"],
        "cuda": gpu["cuda"],
        "llama_cpp_gpu_offload": llama_gpu_offload(),
        "versions": package_versions(),
        "git": git_commit(),
        "load_average": {"start": load_at_start, "end": load_average()},
    }
