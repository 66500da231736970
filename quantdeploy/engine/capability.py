"""What the fast engine can run (architectures, weight widths), asked by the kernel chooser (backends/kernels.py)
before it picks one of the engine's kernels; no torch import here."""

from __future__ import annotations

ENGINE_BITS = 4  # the weight width every engine kernel unpacks


def engine_supports(model_type: str | None, bits: int) -> tuple[bool, str]:
    """(True, "") when the fast engine runs a checkpoint of this architecture (config.json's model_type) and
    weight width; else (False, why)."""
    from .model import SUPPORTED

    if model_type not in SUPPORTED:
        return False, f"the fast engine does not implement {model_type} (supported: {', '.join(SUPPORTED)})"
    if bits != ENGINE_BITS:
        return False, f"the fast engine runs {ENGINE_BITS}-bit weights only (this model has {bits})"
    return True, ""
