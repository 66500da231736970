"""Kernel choice for HF-format quantized models, kept apart from the format (as vLLM does).

Each kernel answers can_implement(device, capability) -> (ok, reason); the chooser walks an ordered list and
logs the pick and why. gptqmodel's own AUTO is never used on CUDA: on Hopper it picks Machete, which downloads
CUTLASS on first use and fails offline.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BackendUnavailable, UsageError


@dataclass(frozen=True)
class Kernel:
    name: str  # what users type (--kernel)
    backend_value: str  # the value transformers' GPTQConfig / AwqConfig takes as `backend`
    cuda: bool  # a GPU kernel
    min_capability: tuple[int, int] = (0, 0)
    note: str = ""

    def can_implement(self, device: str, capability: tuple[int, int] | None) -> tuple[bool, str]:
        on_cuda = device.startswith("cuda")
        if self.cuda and not on_cuda:
            return False, f"{self.name} needs a CUDA GPU (device is {device})"
        if not self.cuda and on_cuda and self.name != "torch":
            return False, f"{self.name} is a CPU kernel"
        if self.cuda and capability and capability < self.min_capability:
            have, need = ".".join(map(str, capability)), ".".join(map(str, self.min_capability))
            return False, f"{self.name} needs compute capability {need}+ (this GPU is {have})"
        return True, ""


KERNELS: dict[str, tuple[Kernel, ...]] = {
    "gptq": (
        Kernel("marlin", "gptq_marlin", True, (8, 0), "fastest batch-1 GEMV on Ampere/Hopper"),
        Kernel("exllama_v2", "gptq_exllama_v2", True, (6, 0)),
        Kernel("triton", "gptq_triton", True, (6, 0)),
        Kernel("machete", "gptq_machete", True, (9, 0), "downloads CUTLASS at first use: fails offline"),
        Kernel("cpu", "auto", False, note="gptqmodel's CPU kernels (AVX512 / fused torch / torch)"),
        Kernel("torch", "gptq_torch", False, note="dequantize + matmul in torch: slow on a GPU"),
    ),
    "awq": (
        Kernel("marlin", "marlin", True, (8, 0), "fastest batch-1 GEMV on Ampere/Hopper"),
        Kernel("exllama_v2", "exllama_v2", True, (6, 0)),
        Kernel("gemm", "gemm", True, (6, 0)),
        Kernel("machete", "machete", True, (9, 0), "downloads CUTLASS at first use: fails offline"),
        Kernel("cpu", "auto", False, note="gptqmodel's CPU kernels (AVX512 / fused torch / torch)"),
        Kernel("torch", "torch_awq", False, note="dequantize + matmul in torch: slow on a GPU"),
    ),
}
# Not chosen automatically (the user may still force them).
_EXPLICIT_ONLY = {"machete", "torch"}


def kernel_names(fmt: str) -> list[str]:
    return [k.name for k in KERNELS[fmt]]


def choose_kernel(fmt: str, device: str, capability: tuple[int, int] | None, forced: str | None,
                  disabled: tuple[str, ...] = ()) -> tuple[Kernel, str]:
    """(kernel, why). A forced kernel that cannot run is an error; otherwise the first that fits wins."""
    table = KERNELS[fmt]
    if forced:
        match = [k for k in table if k.name == forced.lower()]
        if not match:
            raise UsageError(f"unknown kernel '{forced}' for {fmt}; choose one of: {', '.join(kernel_names(fmt))}")
        ok, reason = match[0].can_implement(device, capability)
        if not ok:
            raise UsageError(f"--kernel {forced}: {reason}")
        return match[0], "forced with --kernel"
    reasons = []
    for k in table:
        if k.name in _EXPLICIT_ONLY:
            continue
        if k.name in disabled:
            reasons.append(f"{k.name}: disabled by QUANTDEPLOY_DISABLED_KERNELS")
            continue
        ok, reason = k.can_implement(device, capability)
        if ok:
            why = f"first kernel that fits {device}" + (f" (skipped: {'; '.join(reasons)})" if reasons else "")
            return k, why
        reasons.append(reason)
    raise BackendUnavailable(f"no {fmt} kernel can run on {device}: " + "; ".join(reasons))
