"""What doctor looks at, one function per fact. Checks only ever call these through a Probes object, so a
test replaces any of them (dataclasses.replace(Probes(), nvidia=lambda: {...})) to fake an environment.

Every probe returns plain data and never raises: a probe that cannot tell returns None (or an "error" key).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Any, Callable

from ..settings import Settings, get_settings

JIT_EXTENSIONS = ("marlin_fp16", "marlin_bf16", "exllamav2", "exllamav2_awq", "awq", "machete")
SMOKE_CODE = ("import quantdeploy as q; m = q.load(device='cpu'); "
              "g = m.generate('Hello', q.GenerationParams(max_tokens=2, temperature=0)); list(g); m.close()")


def torch_info() -> dict[str, Any] | None:
    """torch's version, the CUDA it was built for, and the GPUs it can use; None when torch is missing."""
    try:
        import torch
    except ImportError:
        return None
    except Exception as e:  # a broken install (missing shared library) is a finding, not a crash
        return {"version": None, "error": f"{type(e).__name__}: {e}", "cuda": None, "cuda_available": False,
                "devices": []}
    out: dict[str, Any] = {"version": torch.__version__.split("+")[0], "cuda": torch.version.cuda,
                           "cuda_available": False, "devices": []}
    try:
        out["cuda_available"] = bool(torch.cuda.is_available())
        for i in range(torch.cuda.device_count() if out["cuda_available"] else 0):
            p = torch.cuda.get_device_properties(i)
            out["devices"].append({"name": p.name, "capability": [p.major, p.minor]})
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def engine_gemv() -> dict[str, Any] | None:
    """Whether NVRTC compiles the fast engine's CUDA GEMV for GPU 0 (compiled only, nothing launched); None when
    torch sees no GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        from ..engine import cuda_gemv

        major, minor = torch.cuda.get_device_capability(0)
    except Exception as e:
        return {"ok": False, "arch": None, "error": f"{type(e).__name__}: {e}"}
    try:
        cuda_gemv.compile_cubin(cuda_gemv.kernel_name(2, 4, 1), f"{major}{minor}")
        return {"ok": True, "arch": f"{major}{minor}"}
    except Exception as e:  # no libnvrtc, an arch this NVRTC does not know
        return {"ok": False, "arch": f"{major}{minor}", "error": f"{type(e).__name__}: {str(e).strip()[:300]}"}


def nvidia_smi() -> dict[str, Any] | None:
    """The driver's view: {"driver", "cuda" (highest CUDA it supports), "gpus": [{"name", "capability"}]};
    None when there is no NVIDIA driver."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        if q.returncode != 0:  # drivers before 510 do not know compute_cap
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if q.returncode != 0:
        return None
    gpus, driver = [], None
    for line in q.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2:
            driver = parts[1]
            cap = None
            if len(parts) >= 3 and re.fullmatch(r"\d+\.\d+", parts[2]):
                cap = [int(x) for x in parts[2].split(".")]
            gpus.append({"name": parts[0], "capability": cap})
    m = re.search(r"CUDA Version:\s*([\d.]+)", head.stdout or "")
    return {"driver": driver, "cuda": m.group(1) if m else None, "gpus": gpus}


def nvcc() -> dict[str, Any] | None:
    """{"path", "version"} of the CUDA compiler gptqmodel's JIT kernels need; None when absent."""
    path = shutil.which("nvcc")
    if path is None:
        for cand in ("/usr/local/cuda/bin/nvcc",):
            if Path(cand).is_file():
                path = cand
                break
    if path is None:
        return None
    try:
        r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return {"path": path, "version": None}
    m = re.search(r"release (\d+\.\d+)", r.stdout)
    return {"path": path, "version": m.group(1) if m else None}


def jit_kernels() -> dict[str, bool]:
    """gptqmodel's JIT-compiled CUDA extensions -> already compiled (a cached .so) or not."""
    from ..extras import gptqmodel_jit_compiled

    return {name: gptqmodel_jit_compiled(name) for name in JIT_EXTENSIONS}


def cutlass_cached() -> bool | None:
    """Whether gptqmodel already has the CUTLASS source Machete builds from (it downloads it otherwise)."""
    try:
        from gptqmodel.utils import machete

        return bool(machete._cutlass_checkout_complete(machete._cutlass_cache_dir()))
    except Exception:
        return None


def llama_cpp_info() -> dict[str, Any] | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    except Exception as e:
        return {"version": None, "gpu_offload": False, "error": f"{type(e).__name__}: {e}"}
    try:
        offload = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:
        offload = False
    return {"version": getattr(llama_cpp, "__version__", None), "gpu_offload": offload}


def gguf_smoke(timeout: float = 300) -> dict[str, Any]:
    """Evaluate the embedded Q4_K_M GGUF in a child process: a native-build crash (the AMX segfault) kills the
    child, not doctor. {"returncode", "signal", "seconds", "stderr"}."""
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", SMOKE_CODE], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "signal": None, "seconds": timeout, "timeout": True, "stderr": ""}
    sig = None
    if r.returncode < 0:
        try:
            sig = signal.Signals(-r.returncode).name
        except ValueError:
            sig = f"signal {-r.returncode}"
    return {"returncode": r.returncode, "signal": sig, "seconds": round(time.perf_counter() - t0, 1),
            "timeout": False, "stderr": (r.stderr or "").strip()[-2000:]}


def installed_versions(names: tuple[str, ...] = ("torch", "transformers", "optimum", "gptqmodel", "huggingface_hub",
                                                 "gguf", "llama-cpp-python", "numpy")) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def declared_requirements() -> list[str]:
    """quantdeploy's own dependency specifiers (pyproject.toml, extras included): the one list of versions
    known to work together."""
    try:
        return list(requires("quantdeploy") or [])
    except PackageNotFoundError:
        return []


def disk_free(path: Path) -> tuple[Path, int] | None:
    """(the existing directory measured, free bytes) for path or its nearest existing parent."""
    p = Path(path).expanduser()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return p, shutil.disk_usage(p).free
    except OSError:
        return None


def http_reachable(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """(reachable, detail). Any HTTP answer counts as reachable; only network failures do not."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "quantdeploy-doctor"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return True, f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        return True, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return False, str(reason)[:200] or type(e).__name__


def hf_token_source(settings: Settings) -> str | None:
    """Where a Hugging Face token would come from ("HF_TOKEN", "saved login"), never the token itself."""
    if settings.hf_token:
        return "HF_TOKEN"
    try:
        from huggingface_hub import get_token

        return "saved login (huggingface-cli login)" if get_token() else None
    except Exception:
        return None


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def backend_statuses() -> list[dict[str, Any]]:
    from ..registry import list_backends

    return [s.__dict__ for s in list_backends()]


@dataclass
class Probes:
    """The environment as doctor sees it. Replace any field to fake a machine."""

    settings: Callable[[], Settings] = get_settings
    torch: Callable[[], dict | None] = torch_info
    nvidia: Callable[[], dict | None] = nvidia_smi
    nvcc: Callable[[], dict | None] = nvcc
    engine_gemv: Callable[[], dict | None] = engine_gemv
    jit_kernels: Callable[[], dict[str, bool]] = jit_kernels
    cutlass_cached: Callable[[], bool | None] = cutlass_cached
    llama_cpp: Callable[[], dict | None] = llama_cpp_info
    gguf_smoke: Callable[[], dict] = gguf_smoke
    versions: Callable[[], dict[str, str | None]] = installed_versions
    requirements: Callable[[], list[str]] = declared_requirements
    disk_free: Callable[[Path], tuple[Path, int] | None] = disk_free
    reachable: Callable[[str, float], tuple[bool, str]] = http_reachable
    hf_token: Callable[[Settings], str | None] = hf_token_source
    backends: Callable[[], list[dict]] = backend_statuses
    cpu_flags: Callable[[], list[str]] = cpu_flags
    cache: dict = field(default_factory=dict)

    def get(self, name: str, *args):
        """Call a probe once per doctor run (several checks read the GPU list)."""
        key = (name,) + args
        if key not in self.cache:
            self.cache[key] = getattr(self, name)(*args)
        return self.cache[key]
