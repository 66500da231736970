"""The device's memory-bandwidth roofline: a copy benchmark, measured once per device and cached.

Decode at batch 1 reads every weight once per token, so tokens/s can never beat bandwidth / bytes-per-token.
The roofline is the best bandwidth a plain copy reaches, counted as bytes read + bytes written (as STREAM's
"copy" counts it). CPU: numpy copies of a 256 MiB buffer, one thread and one thread per core, best of both.
CUDA: device-to-device copies of a 1 GiB buffer timed with CUDA events.
The cache lives in $QUANTDEPLOY_HOME/bench/roofline.json, keyed by the device's name; --refresh-roofline
measures again.
"""

from __future__ import annotations

import json
import os
import sys
import subprocess
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..settings import get_settings

METHOD_VERSION = 1
CPU_BUFFER = 256 << 20
CUDA_BUFFER = 1 << 30


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_key(device: str) -> str:
    """A name that stays the same for the same hardware: the cache key."""
    if device.startswith("cuda") and "torch" not in sys.modules:  # a llama.cpp process: keep torch out
        idx = int(device.split(":")[1]) if ":" in device else 0
        try:
            out = subprocess.run(["nvidia-smi", "-i", str(idx), "--query-gpu=name,memory.total",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
            name, mib = [x.strip() for x in out.stdout.strip().splitlines()[0].split(",")]
            return f"cuda|{name}|{round(int(mib) / 1024)}GiB"
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return f"cuda|unknown|{idx}"
    if device.startswith("cuda"):
        import torch

        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        return f"cuda|{props.name}|{round(props.total_memory / 2**30)}GiB"
    return f"cpu|{cpu_name()}|{os.cpu_count()} cores"


def cache_file() -> Path:
    return get_settings().home / "bench" / "roofline.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only home only costs a new measurement next time


def roofline(device: str, *, refresh: bool = False) -> dict[str, Any]:
    """{"device", "key", "gbps", "method", "measured_at", "cached"} for "cpu" or "cuda[:N]"."""
    key = device_key(device)
    path = cache_file()
    cache = _read_cache(path)
    hit = cache.get(key)
    if not refresh and isinstance(hit, dict) and hit.get("version") == METHOD_VERSION and hit.get("gbps"):
        return {**hit, "device": device, "key": key, "cached": True}
    if device.startswith("cuda") and "torch" not in sys.modules:
        # torch's CUDA beside llama.cpp's CUDA build aborts the process: measure in a child process
        entry = measure_in_child(device)
        if entry is None:
            return {"device": device, "key": key, "gbps": None, "cached": False,
                    "method": "the copy benchmark failed in a child process; run a GPTQ/AWQ bench on this GPU"}
    else:
        entry = measure_cuda(device) if device.startswith("cuda") else measure_cpu()
    entry.update(version=METHOD_VERSION, measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    cache[key] = entry
    _write_cache(path, cache)
    return {**entry, "device": device, "key": key, "cached": False}


def measure_in_child(device: str) -> dict[str, Any] | None:
    code = ("import json, sys; from quantdeploy.bench.roofline import measure_cuda; "
            "print(json.dumps(measure_cuda(sys.argv[1])))")
    try:
        p = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True, timeout=300)
        return json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def measure_cpu(size: int = CPU_BUFFER, repeats: int = 5) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    src = np.ones(size, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    threads = max(1, os.cpu_count() or 1)
    chunks = [slice(i * size // threads, (i + 1) * size // threads) for i in range(threads)]

    def best(run) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return 2 * size / min(times) / 1e9

    single = best(lambda: np.copyto(dst, src))
    with ThreadPoolExecutor(threads) as pool:
        multi = best(lambda: list(pool.map(lambda s: np.copyto(dst[s], src[s]), chunks)))
    return {"gbps": round(max(single, multi), 2), "method": f"numpy copy of {size >> 20} MiB, read+write bytes, "
            f"best of {repeats}: 1 thread {single:.1f} GB/s, {threads} threads {multi:.1f} GB/s"}


def measure_cuda(device: str, size: int = CUDA_BUFFER, repeats: int = 20) -> dict[str, Any]:
    import torch

    dev = torch.device(device)
    src = torch.ones(size, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    try:
        dst.copy_(src)
        torch.cuda.synchronize(dev)
        best = float("inf")
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
    finally:
        del src, dst
        torch.cuda.empty_cache()
    return {"gbps": round(2 * size / best / 1e9, 1),
            "method": f"device-to-device copy of {size >> 20} MiB, read+write bytes, CUDA events, best of {repeats}"}
