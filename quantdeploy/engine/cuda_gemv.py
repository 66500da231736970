"""quantdeploy's batch-1 W4A16 GEMV in CUDA C (kernels/w4a16.cu), compiled at run time with NVRTC.

NVRTC ships with torch's CUDA wheels (libnvrtc): no nvcc, no C++ extension build, a fraction of a second per
kernel. Launches go through the driver (cuLaunchKernel) on torch's current stream, so CUDA-graph capture records
them. The weights are repacked once at load into the "NK" layout the kernel streams with 16-byte loads (see the
.cu header); prompts dequantize one weight at a time into a scratch fp16 matrix and run one cuBLAS matmul.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import tuning

log = logging.getLogger("quantdeploy.engine")

SOURCE = Path(__file__).with_name("kernels") / "w4a16.cu"
SLOT = (0, 4, 1, 5, 2, 6, 3, 7)  # k offset i within a word lives in nibble SLOT[i]
# (rows per warp, chunks loaded ahead per lane); tuned per GPU by benchmarks/gpu/gemv_tune.py --save
VARIANTS = ((1, 4), (1, 8), (2, 2), (2, 4), (4, 1), (4, 2), (4, 4), (8, 1), (8, 2))
THREADS = 128  # the kernels' __launch_bounds__


@dataclass
class NKWeight:
    q: torch.Tensor  # int32 [N, K/8]
    meta: torch.Tensor  # int32 [N, G]: fp16 scale bits | zero << 16
    group_size: int
    perm: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.q.shape[0]

    @property
    def k(self) -> int:
        return self.q.shape[1] * 8

    def nbytes(self) -> int:
        return self.q.numel() * 4 + self.meta.numel() * 4


def supports(w) -> str | None:
    """Why a QuantWeight cannot use these kernels, or None."""
    g = w.group_size
    if w.qzeros is None:
        return "the CUDA GEMV needs integer zero points (qzeros)"
    if w.k % 32 or g % 32 or (g // 32) & (g // 32 - 1) or w.k % g:
        return f"group size {g} / K {w.k}: the CUDA GEMV needs K and the group size in 32-multiples (powers of 2)"
    return None


def unpack_zeros(qzeros: torch.Tensor, n: int) -> torch.Tensor:
    """int32 [G, N/8] zero points packed along N (sequential order) -> int32 [G, N]."""
    from .quant import unpack_rows

    return unpack_rows(qzeros)[:, :n]


def repack(w, cols: int = 4096) -> NKWeight:
    """QuantWeight (qweight [K/8, N] packed along K) -> NKWeight, `cols` output rows at a time (small temporaries)."""
    why = supports(w)
    if why:
        raise ValueError(why)
    zeros = unpack_zeros(w.qzeros, w.n)
    scale_bits = w.scales.to(torch.float16).view(torch.int16).to(torch.int32) & 0xFFFF
    meta = (scale_bits | (zeros.to(torch.int32) << 16)).t().contiguous()
    parts = []
    for c in range(0, w.n, cols):
        t = w.qweight[:, c:c + cols].t().to(torch.int64)  # [n_c, K/8]
        out = torch.zeros_like(t)
        for i in range(8):
            out |= ((t >> (4 * i)) & 0xF) << (4 * SLOT[i])
        parts.append(torch.where(out >= 2 ** 31, out - 2 ** 32, out).to(torch.int32))
    return NKWeight(torch.cat(parts).contiguous(), meta, w.group_size, w.perm)


def reference(w: NKWeight) -> torch.Tensor:
    """Dense fp32 [N, K] from the NK layout (columns in the permuted order, like the kernel reads x): what the
    kernels must compute, written with torch ops so that the CPU tests can check the layout."""
    shifts = torch.tensor([4 * s for s in SLOT], dtype=torch.int64, device=w.q.device)
    q = ((w.q.to(torch.int64).unsqueeze(-1) >> shifts) & 0xF).reshape(w.n, w.k).float()
    meta = w.meta.to(torch.int64) & 0xFFFFFFFF
    scale = (meta & 0xFFFF).to(torch.int16).view(torch.float16).float()
    zero = (meta >> 16).float()
    g = torch.arange(w.k, device=w.q.device) // w.group_size
    return (q - zero[:, g]) * scale[:, g]


# --- compilation and launch ---------------------------------------------------------------------------------
def _include_dirs() -> list[str]:
    import nvidia

    dirs = []
    for base in getattr(nvidia, "__path__", []):
        dirs += [str(p) for p in Path(base).glob("*/include") if (p / "cuda_fp16.h").is_file()]
    return dirs


def compile_cubin(name: str, arch: str) -> tuple[bytes, str]:
    """(cubin, mangled name) of one kernel, e.g. name="qd_w4a16_gemv<4, 2>", arch="90"."""
    from torch.cuda._utils import _nvrtc_compile

    try:
        inc = _include_dirs()
    except ImportError:
        inc = []
    return _nvrtc_compile(SOURCE.read_text(), name, arch, inc, ["-std=c++17"])


@functools.lru_cache(maxsize=None)
def _kernel(name: str, device_index: int):
    from torch.cuda._utils import _cuda_load_module

    major, minor = torch.cuda.get_device_capability(device_index)
    with torch.cuda.device(device_index):
        cubin, mangled = compile_cubin(name, f"{major}{minor}")
        return _cuda_load_module(cubin, [mangled])[mangled].func


class _Launch:
    """One kernel with its argument block kept alive: per call only the pointers change (a few microseconds of
    Python, not the ~30 of building ctypes arguments each time)."""

    def __init__(self, name: str, device: torch.device, n_ptr: int, ints: tuple[int, ...]):
        from torch.cuda._utils import _get_gpu_runtime_library

        self.lib = _get_gpu_runtime_library()
        self.func = _kernel(name, device.index or 0)
        self.ptrs = [ctypes.c_void_p() for _ in range(n_ptr)]
        self.ints = [ctypes.c_int(v) for v in ints]
        self.argv = (ctypes.c_void_p * (n_ptr + len(ints)))(
            *[ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in self.ptrs + self.ints])

    def __call__(self, grid: int, *tensors: torch.Tensor) -> None:
        for p, t in zip(self.ptrs, tensors):
            p.value = t.data_ptr()
        stream = ctypes.c_void_p(torch.cuda.current_stream(tensors[0].device).cuda_stream)
        err = self.lib.cuLaunchKernel(self.func, grid, 1, 1, THREADS, 1, 1, 0, stream, self.argv, None)
        if err:
            raise RuntimeError(f"cuLaunchKernel failed with CUDA error {err}")


def available(device) -> tuple[bool, str]:
    """Whether the kernels compile and load on this device (NVRTC present, compute capability 7.0+)."""
    try:
        device = torch.device(device)
        if device.type != "cuda":
            return False, "not a CUDA device"
        if torch.cuda.get_device_capability(device) < (7, 0):
            return False, "needs compute capability 7.0+"
        _kernel("qd_w4a16_gemv<2, 4>", device.index or 0)
        _kernel("qd_w4a16_dequant", device.index or 0)
        return True, ""
    except Exception as e:  # no NVRTC, a driver too old for the cubin, ...
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def tuned_file(device) -> Path:
    return tuning.tuned_file(device, "cuda")


def default_variant(k: int, n: int) -> tuple[int, int]:
    """Without a tuned file: the best on an H200 for the Llama-3-8B shapes (benchmarks/results/gpu/gemv-tune-h200.txt):
    8 rows per warp for a wide gate|up (x reused 8 times, plenty of warps), else 2 rows with 4 chunks in flight."""
    return (8, 2) if n >= 16384 else (2, 4)


def variant_for(k: int, n: int, device) -> tuple[int, int]:
    v = tuning.tuned(device, "cuda").get(f"{k}x{n}")
    r, u = tuple(v) if v else default_variant(k, n)
    while n % r:  # a warp's rows must divide N
        r //= 2
    return r, u


class CudaLinear:
    """y = x @ W for one NKWeight on CUDA: the GEMV for one token, dequantize + cuBLAS for prompts."""

    def __init__(self, w: NKWeight, device, variant: tuple[int, int] | None = None):
        self.w = w
        self.device = torch.device(device)
        r, u = variant or variant_for(w.k, w.n, self.device)
        g = w.k // w.group_size
        gshift = (w.group_size // 32).bit_length() - 1
        self.rows = r
        self.gemv = _Launch(f"qd_w4a16_gemv<{r}, {u}>", self.device, 4, (w.n, w.k, g, gshift))
        self.deq = _Launch("qd_w4a16_dequant", self.device, 3, (w.n, w.k, g))
        self.label = f"qd_w4a16_gemv<{r}, {u}>"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        if w.perm is not None:
            x = x.index_select(-1, w.perm)
        if x.shape[0] == 1:
            x1 = x.reshape(-1)
            if x1.data_ptr() % 16:
                x1 = x1.clone()
            y = torch.empty(w.n, dtype=torch.float16, device=x.device)
            warps = w.n // self.rows
            self.gemv((warps * 32 + THREADS - 1) // THREADS, w.q, w.meta, x1, y)
            return y.unsqueeze(0)
        return F.linear(x, self.dense())

    def dense(self) -> torch.Tensor:
        w = self.w
        out = torch.empty(w.n, w.k, dtype=torch.float16, device=self.device)
        words = w.n * w.k // 8
        self.deq((words + THREADS - 1) // THREADS, w.q, w.meta, out)
        return out


class CudaLinears:
    """The engine's maker: ExLlama's interface (make one linear per fused weight, finish)."""

    kernel = "qd-w4a16-gemv"  # the name kernel reports show

    def __init__(self, device):
        self.device = torch.device(device)
        self.labels = set()

    def make(self, w) -> CudaLinear:
        lin = CudaLinear(repack(w), self.device)
        self.labels.add(lin.label)
        return lin

    def finish(self, max_tokens: int) -> None:
        log.info("CUDA W4A16 GEMV variants in use: %s", ", ".join(sorted(self.labels)))
