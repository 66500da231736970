"""What the fast engine can run (architectures, weight widths), asked by the kernel chooser (backends/kernels.py)
before it picks one of the engine's kernels; no torch import here."""

from __future__ import annotations

ENGINE_BITS = 4  # the weight width every engine kernel unpacks


def engine_supports(config: dict, bits: int) -> tuple[bool, str]:
    """(True, "") when the fast engine runs a checkpoint of this config.json and weight width; else (False, why in
    one line)."""
    if bits != ENGINE_BITS:
        return False, (f"the fast engine's kernels unpack {ENGINE_BITS}-bit weights; this model has {bits}-bit "
                       "weights")
    from .arch import check_supported

    return check_supported(config)
