"""What the fast engine can run (architectures, weight widths) and the kernels `--kernel` picks with it. Asked by
the GPTQ/AWQ backends before they hand a checkpoint to the engine; no torch import here."""

from __future__ import annotations

from pathlib import Path

# --kernel with --engine fast: auto (the CUDA GEMV, then ExLlamaV2), cuda, exllama_v2, triton
ENGINE_KERNELS = ("auto", "cuda", "exllama_v2", "triton")


def engine_supports(path: Path) -> tuple[bool, str]:
    import json

    from .model import SUPPORTED

    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False, "no readable config.json"
    mt = cfg.get("model_type")
    if mt not in SUPPORTED:
        return False, f"the fast engine does not implement {mt} (supported: {', '.join(SUPPORTED)})"
    q = cfg.get("quantization_config") or {}
    if int(q.get("bits", 4)) != 4:
        return False, f"the fast engine runs 4-bit weights only (this model has {q.get('bits')})"
    return True, ""
