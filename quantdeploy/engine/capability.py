"""What the fast engine can run (architectures, weight widths) and the kernels `--kernel` picks with it. Asked by
the GPTQ/AWQ backends before they hand a checkpoint to the engine; no torch import here."""

from __future__ import annotations

from ..checkpoint import QuantConfig

ENGINE_BITS = 4  # the weight width every engine kernel unpacks
# --kernel with --engine fast: auto (the CUDA GEMV, else the Triton GEMV), cuda, triton
ENGINE_KERNELS = ("auto", "cuda", "triton")


def engine_supports(config: dict, quant: QuantConfig) -> tuple[bool, str]:
    """(True, "") when the fast engine runs this checkpoint (config.json and its parsed quantization config)."""
    from .model import SUPPORTED

    mt = config.get("model_type")
    if mt not in SUPPORTED:
        return False, f"the fast engine does not implement {mt} (supported: {', '.join(SUPPORTED)})"
    if quant.bits != ENGINE_BITS:
        return False, f"the fast engine runs {ENGINE_BITS}-bit weights only (this model has {quant.bits})"
    return True, ""
