"""Whether transformers' own model of a checkpoint has a place for every quantized weight in it.

transformers builds the model from config.json and swaps its Linear layers for gptqmodel's quantized ones; a
weight with no matching layer is dropped and the layer it should have filled keeps uninitialized memory (an
IndexError far inside a kernel, or silent garbage). Quantizers do not always write transformers' layout:
gptqmodel stores Phi-3's fused gate_up_proj as gate_proj and up_proj, and the experts of MoE models (Mixtral,
Qwen3-MoE) one by one where transformers 5 keeps them fused in 3-D tensors. gptqmodel's own loader knows those
layouts (it splits transformers' modules the way it quantized them), so such checkpoints load through it.
"""

from __future__ import annotations

import json
from pathlib import Path

QUANT_SUFFIXES = (".qweight", ".weight_packed")


def quantized_modules(path: Path) -> list[str]:
    """The module names with quantized weights in a checkpoint (read from the safetensors headers only)."""
    names: set[str] = set()
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        names.update(k[: -len(s)] for k in header for s in QUANT_SUFFIXES if k.endswith(s))
    return sorted(names)


def linear_modules(cfg: dict, trust_remote_code: bool = False) -> set[str]:
    """The Linear layers of the decoder blocks in transformers' model of this config (built on the meta device):
    the layers transformers' GPTQ / AWQ loading swaps for quantized ones (not the lm_head)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in cfg.items() if k not in ("model_type", "quantization_config")}
    hf_cfg = AutoConfig.for_model(cfg["model_type"], **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_cfg, trust_remote_code=trust_remote_code)
    return {name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) and ".layers." in name}


def layout_mismatch(path: Path, cfg: dict, trust_remote_code: bool = False) -> str | None:
    """The first quantized module of the checkpoint that transformers' model has no Linear layer for, or None."""
    quantized = quantized_modules(path)
    if not quantized or "model_type" not in cfg:
        return None
    try:
        linears = linear_modules(cfg, trust_remote_code)
    except Exception:  # transformers cannot build it: its own load will say why
        return None
    return next((m for m in quantized if m not in linears), None)


def gptqmodel_backend(fmt: str, backend_value: str) -> str:
    """transformers' kernel names (GPTQConfig / AwqConfig `backend`) -> gptqmodel's BACKEND values."""
    if backend_value == "auto" or fmt != "awq" or backend_value.startswith("awq_"):
        return backend_value
    return "awq_torch" if backend_value == "torch_awq" else f"awq_{backend_value}"


def missing_weights(info: dict, tied: bool) -> list[str]:
    """The parameters a load left uninitialized, from transformers' loading info (a tied lm_head is not missing)."""
    missing = info.get("missing_keys") or []
    return sorted(k for k in missing if not (tied and k == "lm_head.weight"))


def unfilled_layers(model, path: Path) -> tuple[list[str], list[str]]:
    """(quantized layers of the loaded model the checkpoint has no weights for, quantized weights of the
    checkpoint no layer took): both empty when every quantized layer was filled from the file."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    loaded = {name for name, mod in model.named_modules() if isinstance(mod, BaseQuantLinear)}
    stored = set(quantized_modules(path))
    return sorted(loaded - stored), sorted(stored - loaded)
