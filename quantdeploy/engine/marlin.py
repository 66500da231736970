"""gptqmodel's Marlin GEMM as the batched engine's kernel for the products where it measures faster than ours.

Marlin reads its own layout, so a weight it runs is held twice: ours (the batch-1 GEMV) and Marlin's, unless
QUANTDEPLOY_ONE_COPY keeps Marlin's alone (engine/marlin_gemv.py). The engine makes Marlin's copy only for a model
loaded to decode more than 8 sequences together and only where Marlin wins (H100, benchmarks/gpu/gemm_ab.py
--marlin): a gate|up weight (N >= 2 K) and a down weight (K > N), from 2 tokens up to cuda_gemv.GEMM_MAX_TOKENS. gptqmodel JIT-compiles its kernels at first use (minutes, once per
machine) and caches them under ~/.cache/gptqmodel.
"""

from __future__ import annotations

import logging

import torch

from ..errors import BackendUnavailable
from .quant import QuantWeight

log = logging.getLogger("quantdeploy.engine")

# Marlin from 2 tokens where there is a copy: at 2-8 tokens on an H100 it took down in 17.2-17.9 us against the
# batched kernel's 19.5-20.4, gate|up within 2 % of it up to 4 tokens and 29.1-30.0 against 32.5-32.6 at 8
# (benchmarks/results/gpu/h100-80gb-hbm3-gemm-ab-small.json)
FROM_TOKENS = 2
MIN_BATCH = 9  # auto: the copy only for a model loaded to decode more than 8 sequences together
GROUPS = (32, 64, 128)
ZEROS_8 = -0x77777778  # 0x88888888 as an int32: eight zero points of 8, GPTQ's symmetric form once loaded


def product(k: int, n: int) -> str | None:
    """The product Marlin takes a K x N weight for: "gate|up" (N >= 2 K), "down" (K > N), else None (a square o and
    qkv, where the engine's batched kernel was as fast or faster up to 64 tokens)."""
    return "gate|up" if n >= 2 * k else "down" if k > n else None


def choose(setting: bool | None, device, batch: int) -> tuple[bool, str]:
    """(whether the engine makes Marlin copies, why: for the kernel report). setting: EngineConfig.marlin; batch:
    the most sequences the model decodes together."""
    if setting is False:
        return False, "off (QUANTDEPLOY_MARLIN=0)"
    if setting is None and batch < MIN_BATCH:
        return False, f"off (up to {batch} sequences together: the engine's own batched kernel)"
    ok, why = available(device)
    if ok:
        return True, ""
    if setting:
        raise BackendUnavailable(f"QUANTDEPLOY_MARLIN=1, but gptqmodel's Marlin cannot run here ({why}); unset it to "
                                 "run the engine's own batched kernel")
    log.warning("gptqmodel's Marlin is not available (%s): batches run on the engine's own kernel", why)
    return False, f"off ({why})"


def fits(w: QuantWeight) -> str | None:
    """Why Marlin cannot take this weight, or None: no act-order, a group of 32-128 (or per channel), K a multiple of
    128 and N of 64 (Marlin's tiles, no padding)."""
    if w.perm is not None:
        return "act-order weights"
    if w.group_size not in GROUPS and w.group_size != w.k:
        return f"group size {w.group_size}"
    if w.k % 128 or w.n % 64:
        return f"shape {w.k} x {w.n} (Marlin's tiles need K % 128 == 0 and N % 64 == 0)"
    if w.qzeros is None:
        return "no integer zero points"
    return None


def available(device) -> tuple[bool, str]:
    """(whether gptqmodel's Marlin kernels load on this device, why not). Compiles them the first time."""
    if torch.device(device).type != "cuda":
        return False, "not a CUDA device"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return False, "compute capability below 8.0"
    try:
        from gptqmodel.utils import marlin as gm
    except Exception as e:  # gptqmodel missing or broken: the engine's own kernels run
        return False, f"gptqmodel does not import ({type(e).__name__}: {e})"
    if not compiled():
        log.warning("gptqmodel compiles its Marlin kernels for the batched gate|up and down products, once on this "
                    "machine: a few minutes (QUANTDEPLOY_MARLIN=0 skips them; batches then run on the engine's own "
                    "kernel)")
    try:
        if gm.marlin_runtime_available(torch.float16):
            return True, ""
        return False, gm.marlin_runtime_error(torch.float16) or "its kernels did not build"
    except Exception as e:
        return False, f"its kernels did not build ({type(e).__name__}: {e})"


def compiled() -> bool:
    """Whether gptqmodel already holds Marlin's fp16 kernels compiled (a library in its JIT cache)."""
    from ..extras import gptqmodel_jit_compiled

    return gptqmodel_jit_compiled("marlin_fp16")


class MarlinLinear:
    """y = x @ W through Marlin for one QuantWeight (columns in the original order: a gate|up weight's output is
    [gate | up], as the batched kernel returns it). Zero points all 8 (GPTQ's symmetric form): uint4b8, the scales
    alone; else uint4 with the zero points."""

    def __init__(self, w: QuantWeight, device, q: torch.Tensor | None = None):
        """q: the weights already in Marlin's layout (marlin_gemv.repack_qweight: no gptqmodel kernel compiled)."""
        from gptqmodel.utils import marlin as gm
        from gptqmodel.utils.marlin_scalar_type import scalar_types

        self._gm = gm
        self.k, self.n = w.k, w.n
        group = -1 if w.group_size == w.k else w.group_size
        groups = w.k // w.group_size
        self.empty = torch.empty(0, dtype=torch.int, device=device)
        self.q = q if q is not None else gm.gptq_marlin_repack(w.qweight.to(device), perm=self.empty, size_k=w.k,
                                                               size_n=w.n, num_bits=4, dtype=torch.float16)
        self.s = gm.marlin_permute_scales(w.scales.to(device, torch.float16), size_k=w.k, size_n=w.n,
                                          group_size=group)
        self.workspace = gm.marlin_make_workspace_new(device)
        zeros = w.qzeros.to(device)
        if bool((zeros == ZEROS_8).all()):
            self.type, self.zp = scalar_types.uint4b8, self.empty
        else:
            self.type = scalar_types.uint4
            self.zp = gm.marlin_zero_points(gm.unpack_cols(zeros, 4, groups, w.n), groups, w.n, 4).to(device)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.s, self.zp))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.half().contiguous()
        return self._gm.gptq_marlin_gemm(x, None, self.q, None, self.s, None, self.zp, self.empty, self.empty,
                                         self.workspace, self.type, size_m=x.shape[0], size_n=self.n,
                                         size_k=self.k, is_k_full=True, use_atomic_add=False,
                                         use_fp32_reduce=True, is_zp_float=False)
