"""The one door to torch's private CUDA helpers and the driver's launch ABI, which the CUDA GEMV (cuda_gemv.py) needs.

torch ships NVRTC and a way to load a cubin and reach the driver, but only as private functions of
`torch.cuda._utils`: `_nvrtc_compile` (source -> cubin), `_cuda_load_module` (cubin -> CUfunction) and
`_get_gpu_runtime_library` (libcuda through ctypes, for cuLaunchKernel / cuLaunchKernelEx). They may change in any
torch release, so nothing else in quantdeploy touches them: `check()` says, in one line, what this torch lacks, and
the kernel chooser then takes the Triton GEMV with that reason (backends/kernels.py).

The launch structs mirror cuda.h (CUDA 12 and 13): CUlaunchAttribute (72 bytes, value at 8) and CUlaunchConfig
(56 bytes); a CPU test checks the layout. TORCH_TESTED is the torch range these were checked against.
"""

from __future__ import annotations

import ctypes
import functools
import inspect

TORCH_TESTED = ((2, 9), (2, 14))  # first and last torch minor versions the CUDA GEMV ran with
# what cuda_gemv calls, and how many positional arguments it passes each
_PRIVATE = {"_nvrtc_compile": 5, "_cuda_load_module": 2, "_get_gpu_runtime_library": 0}
PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


class LaunchAttr(ctypes.Structure):  # CUlaunchAttribute
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(LaunchAttr)), ("num_attrs", ctypes.c_uint)]


def torch_version() -> tuple[int, int]:
    import torch

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


@functools.lru_cache(maxsize=1)
def check() -> tuple[bool, str]:
    """(True, "") when this torch has the private helpers and they take the arguments the CUDA GEMV passes; else
    (False, what is missing and which torch versions have them)."""
    try:
        from torch.cuda import _utils
    except ImportError as e:
        return False, f"torch.cuda._utils does not import ({e})"
    lo, hi = TORCH_TESTED
    have = ".".join(map(str, torch_version()))
    tested = f"tested with torch {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}, this is {have}"
    for name, n_args in _PRIVATE.items():
        fn = getattr(_utils, name, None)
        if fn is None:
            return False, f"torch.cuda._utils.{name} is gone ({tested})"
        try:
            inspect.signature(fn).bind(*range(n_args))
        except TypeError:
            return False, f"torch.cuda._utils.{name}{inspect.signature(fn)} no longer takes {n_args} arguments ({tested})"
        except ValueError:  # no signature to read: try the call
            pass
    return True, ""


def _require() -> None:
    ok, why = check()
    if not ok:
        raise RuntimeError(why)


def compile_cubin(source: str, name: str, arch: str, include_dirs: list[str], options: list[str]) -> tuple[bytes, str]:
    """(cubin, mangled name) of the kernel `name` (a template instance, e.g. "k<4, 2>") of `source` for sm_`arch`,
    compiled by the NVRTC that ships with torch. Needs no GPU."""
    _require()
    from torch.cuda._utils import _nvrtc_compile

    return _nvrtc_compile(source, name, arch, include_dirs, options)


def load_function(cubin: bytes, mangled: str):
    """The CUfunction of `mangled` in `cubin`, loaded into the current device's context."""
    _require()
    from torch.cuda._utils import _cuda_load_module

    return _cuda_load_module(cubin, [mangled])[mangled].func


def driver():
    """libcuda through ctypes (cuLaunchKernel, cuLaunchKernelEx)."""
    _require()
    from torch.cuda._utils import _get_gpu_runtime_library

    return _get_gpu_runtime_library()
