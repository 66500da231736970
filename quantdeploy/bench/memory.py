"""Peak memory while one model loads and runs: host RSS high-water mark and GPU memory.

Host: Linux keeps the peak RSS in /proc/self/status (VmHWM) and resets it when "5" is written to
/proc/self/clear_refs, so each model gets its own peak. The peak is the whole process's (libraries, and what
an earlier model or --quality's reference left behind), so the rise over the RSS at the start is reported too.
Elsewhere the process-lifetime peak is reported.
GPU (all visible GPUs together): torch's allocator peak for transformers models; llama.cpp allocates outside torch, so for it the device's
used memory (cudaMemGetInfo) is sampled and its rise over the baseline reported.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _torch_cuda():
    """torch when a GPU is usable (hw.cuda_device_count imports torch only when a GPU device exists)."""
    from ..backends.hw import cuda_device_count

    return sys.modules.get("torch") if cuda_device_count() else None


def _status_mb(key: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakMemory:
    """start() before loading; sample() now and then (after load, after each run); result() at the end."""

    def __init__(self):
        self.resettable = False
        self.host_baseline: float | None = None
        self.gpu_baseline: float | None = None
        self.gpu_used_peak: float | None = None

    def start(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        self.host_baseline = _status_mb("VmRSS")
        torch = _torch_cuda()
        if torch is not None:
            try:
                for i in range(torch.cuda.device_count()):
                    torch.cuda.reset_peak_memory_stats(i)
                self.gpu_baseline = self._gpu_used(torch)
            except Exception:
                self.gpu_baseline = None

    @staticmethod
    def _gpu_used(torch) -> float:
        """MiB in use on all GPUs together (llama.cpp splits a model over every visible GPU)."""
        used = 0
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            used += total - free
        return used / 2**20

    def sample(self) -> None:
        torch = _torch_cuda()
        if torch is None:
            return
        try:
            used = self._gpu_used(torch)
            self.gpu_used_peak = max(self.gpu_used_peak or 0.0, used)
        except Exception:
            pass

    def result(self, device: str, backend: str) -> dict[str, Any]:
        self.sample()
        host = _status_mb("VmHWM")
        method = "VmHWM (reset per model)" if self.resettable else "VmHWM (process lifetime)"
        if host is None:
            import resource

            host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            method = "ru_maxrss (process lifetime)"
        base = self.host_baseline if self.resettable else None
        out: dict[str, Any] = {"host": round(host, 1), "host_over_baseline": round(host - base, 1) if base else None,
                               "host_method": method, "gpu": None, "gpu_method": None}
        torch = _torch_cuda()
        if torch is None or not device.startswith("cuda"):
            return out
        try:
            if backend == "llama.cpp":
                if self.gpu_used_peak is not None:
                    out["gpu"] = round(self.gpu_used_peak - (self.gpu_baseline or 0.0), 1)
                    out["gpu_method"] = "device used memory over the baseline (cudaMemGetInfo, sampled)"
            else:
                peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
                out["gpu"] = round(peak / 2**20, 1)
                out["gpu_method"] = "torch.cuda.max_memory_allocated"
        except Exception as e:  # a report without the number beats no report
            out["gpu_method"] = f"unavailable ({type(e).__name__})"
        return out
