"""transformers' own model of a quantized checkpoint, in float32 with the checkpoint's weights dequantized: the
reference the fast engine is compared with.

Comparing with transformers' quantized kernels instead would compare two roundings: their bf16 / fp16 products
flip greedy near-ties that fp32 on the same weights does not. Dequantization is the engine's (engine/quant.py),
itself checked against gptqmodel's in the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

# transformers' fused projections and the parts a quantizer may store apart (gptqmodel splits Phi-3's gate_up_proj)
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def dequantized_state(path: Path) -> dict:
    """Every tensor of a GPTQ / AWQ checkpoint as float32, the quantized linears as `<name>.weight` [out, in]."""
    import torch

    from ..checkpoint import LocalFiles
    from ..engine.model import load_tensors, module_quant
    from ..engine.quant import dequantize, dequantize_gptq, from_awq, from_awq_gemv

    tensors = load_tensors(path)
    q = LocalFiles(path).quant
    out = {}
    for name, t in tensors.items():
        if name.endswith(".qweight"):
            base = name[: -len(".qweight")]
            qz, sc = tensors[base + ".qzeros"], tensors[base + ".scales"]
            if q.method == "awq":
                awq = from_awq_gemv if q.checkpoint_format == "gemv" else from_awq
                dense = dequantize(awq(t, qz, sc, q.group_size), torch.float32)
            else:
                bits, group = module_quant(q, base) or (q.bits, q.group_size)
                zero_offset = 1 if q.checkpoint_format == "gptq" else 0  # v1 files store zero - 1
                dense = dequantize_gptq(t, qz, sc, tensors.get(base + ".g_idx"), bits, group, zero_offset)
            out[base + ".weight"] = dense.t().contiguous()
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            out[name] = t.float()
    return out


def reference_model(path: Path, state: dict | None = None):
    """transformers' float32 model of the checkpoint at `path`, its weights from `state` (default: the checkpoint
    dequantized). Parts stored apart are joined into transformers' fused projections."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = json.loads((path / "config.json").read_text())
    fields = {k: v for k, v in cfg.items() if k not in ("model_type", "quantization_config")}
    hf_cfg = AutoConfig.for_model(cfg["model_type"], **fields)
    model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32).eval()
    state = dict(dequantized_state(path) if state is None else state)
    want = model.state_dict()
    for name in list(want):
        if name in state:
            continue
        base, _, leaf = name.rpartition(".")
        prefix, _, proj = base.rpartition(".")
        if proj in FUSED:
            parts = [f"{prefix}.{p}.{leaf}" for p in FUSED[proj]]
            if all(p in state for p in parts):
                state[name] = torch.cat([state.pop(p) for p in parts], 0)
        elif base.endswith(".experts") and leaf in FUSED_EXPERTS:  # transformers 5 keeps experts in 3-D tensors
            parts = [f"{base}.{e}.{p}.weight" for e in range(want[name].shape[0]) for p in FUSED_EXPERTS[leaf]]
            if all(p in state for p in parts):
                state[name] = _stack_experts(state, base, leaf, want[name].shape)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path.name}: the reference does not take the checkpoint's weights "
                         f"(missing {sorted(set(missing) - tied)[:4]}, unexpected {sorted(unexpected)[:4]})")
    if tied:
        model.tie_weights()
    return model


# transformers 5's fused expert tensors [experts, out, in] and the per-expert projections they hold, in order
FUSED_EXPERTS = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}


def _stack_experts(state: dict, base: str, leaf: str, shape) -> "object":
    import torch

    per = [[state.pop(f"{base}.{e}.{p}.weight") for p in FUSED_EXPERTS[leaf]] for e in range(shape[0])]
    stacked = torch.stack([torch.cat(ws, 0) for ws in per])
    return stacked if stacked.shape == shape else stacked.transpose(1, 2).contiguous()


def greedy(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens after `ids`, one full forward per token (no cache: the plainest reference)."""
    import torch

    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


def gguf_state(gguf: Path, like: Path) -> dict:
    """A GGUF file's tensors dequantized by transformers' GGUF reader (llama.cpp's Q/K permutation and Gemma's
    norm shift undone), float32, named as in the float checkpoint `like`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    cfg = json.loads((like / "config.json").read_text())
    mt = "llama" if cfg["model_type"] == "mistral" else cfg["model_type"]  # llama.cpp writes Mistral as llama
    fields = {k: v for k, v in cfg.items() if k not in ("model_type", "quantization_config", "sliding_window")}
    with torch.device("meta"):
        names = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **fields))
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=names)["tensors"]
    return {k: v.float() for k, v in tensors.items()}
