"""What differs between the architectures the fast engine decodes, in one place: the config (read through
transformers' own config classes, so every field name and legacy form the Hub uses is understood the way
transformers understands it) and the rotary tables; the few pieces of per-architecture math (norms, soft-capping,
attention with a cap) are in arch_ops.py. model.py's decoder and any batched path call these; nothing here keeps
state, and importing it imports neither torch nor transformers.

Architectures (model_type): llama, mistral, qwen2, qwen3, gemma2, gemma3 / gemma3_text, phi3. Mixture-of-experts
models (mixtral, qwen3_moe, ...) run on the transformers path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

# model_type -> the family whose decoder layer it has
FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "phi3": "llama",
            "gemma2": "gemma", "gemma3": "gemma", "gemma3_text": "gemma"}
SUPPORTED = tuple(FAMILIES)
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


class Unsupported(ValueError):
    """The fast engine cannot run this config; the message says why in one line."""


@dataclass
class DecoderConfig:
    arch: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    eps: float
    rope_key: list[str]  # per layer: which rotary table (a layer type, or "default")
    window: list[int]  # per layer: 0 = global attention, else the number of positions a query sees
    tie: bool
    gemma: bool  # (1 + w) norms, scaled embeddings, norms after the attention and MLP blocks too
    act: str  # silu | gelu_tanh
    scale: float  # attention scale
    max_position: int
    qk_norm: bool
    bias: bool  # q/k/v biases
    attn_softcap: float | None = None
    final_softcap: float | None = None
    hf: Any = field(default=None, repr=False)  # the transformers config the rotary tables are computed from

    @classmethod
    def from_hf(cls, cfg: dict) -> "DecoderConfig":
        """A config.json dict -> DecoderConfig, or Unsupported (one line: what and why)."""
        hf = hf_text_config(cfg)
        mt = hf.model_type
        if mt not in FAMILIES:
            moe = " (a mixture-of-experts model)" if any(getattr(hf, k, None) for k in MOE_KEYS) else ""
            raise Unsupported(f"the fast engine does not implement {mt}{moe}; it runs {', '.join(SUPPORTED)}")
        gemma = FAMILIES[mt] == "gemma"
        n, heads = hf.num_hidden_layers, hf.num_attention_heads
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
        rp = hf.rope_parameters or {}
        partial = rp.get("partial_rotary_factor", getattr(hf, "partial_rotary_factor", None)) or 1.0
        if partial != 1.0:
            raise Unsupported(f"the fast engine rotates whole heads; this {mt} rotates {partial:g} of each")
        has_types = getattr(hf, "layer_types", None) is not None  # else a window applies to every layer
        types = list(hf.layer_types if has_types else ["full_attention"] * n)
        per_type = all(isinstance(rp.get(t), dict) for t in set(types))
        sw = getattr(hf, "sliding_window", None) or 0
        act = getattr(hf, "hidden_activation", None) or getattr(hf, "hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise Unsupported(f"the fast engine does not implement the activation {act}")
        return cls(
            arch=mt, hidden=hf.hidden_size, layers=n, heads=heads, kv_heads=hf.num_key_value_heads or heads,
            head_dim=head_dim, inter=hf.intermediate_size, vocab=hf.vocab_size, eps=float(hf.rms_norm_eps),
            rope_key=[t if per_type else "default" for t in types],
            window=[sw if sw and (not has_types or t == "sliding_attention") else 0 for t in types],
            tie=bool(getattr(hf, "tie_word_embeddings", False)), gemma=gemma,
            act="gelu_tanh" if act == "gelu_pytorch_tanh" else "silu",
            scale=(getattr(hf, "query_pre_attn_scalar", None) or head_dim) ** -0.5,
            max_position=int(hf.max_position_embeddings), qk_norm=mt in ("qwen3", "gemma3", "gemma3_text"),
            bias=bool(getattr(hf, "attention_bias", False)) or mt == "qwen2",
            attn_softcap=getattr(hf, "attn_logit_softcapping", None) or None,
            final_softcap=getattr(hf, "final_logit_softcapping", None) or None, hf=hf)

    def rope_params(self, key: str) -> dict:
        rp = self.hf.rope_parameters
        return dict(rp if key == "default" else rp[key])


def hf_text_config(cfg: dict):
    """The transformers config of a config.json dict (its text part for a multimodal model), normalized by
    transformers: rope_scaling -> rope_parameters, legacy rope types, layer_types, sliding windows."""
    from transformers import AutoConfig

    fields = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in ("model_type", "quantization_config")}
    mt = cfg.get("model_type") or "llama"
    try:
        hf = AutoConfig.for_model(mt, **fields)
    except Exception as e:  # unknown model types, and configs transformers' validation rejects
        raise Unsupported(f"transformers cannot read this {mt} config ({str(e).splitlines()[0][:160]})") from None
    return getattr(hf, "text_config", None) or hf


# --- rotary embeddings --------------------------------------------------------------------------------------

def inv_freq(cfg: DecoderConfig, key: str, long: bool = False) -> tuple["torch.Tensor", float]:
    """(inverse frequencies [head_dim / 2] float32, the cos/sin scale) as transformers computes them for this
    layer type; long: longrope's long factors (a sequence past original_max_position_embeddings)."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rp = cfg.rope_params(key)
    kind = rp.get("rope_type", "default")
    if kind == "default":
        dim = cfg.head_dim
        base = rp["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), 1.0
    if kind not in ROPE_INIT_FUNCTIONS:
        raise Unsupported(f"the fast engine does not implement {kind} rotary scaling")
    layer_type = None if key == "default" else key
    seq_len = None
    if kind == "longrope" and long:
        seq_len = int(rp["original_max_position_embeddings"]) + 1
    if kind == "dynamic":
        raise Unsupported("the fast engine does not implement dynamic NTK rotary scaling (it depends on the length)")
    inv, scale = ROPE_INIT_FUNCTIONS[kind](cfg.hf, torch.device("cpu"), seq_len=seq_len, layer_type=layer_type)
    return inv.float(), float(scale)


def rope_table(cfg: DecoderConfig, key: str, max_len: int, long: bool | None = None
               ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """cos, sin [max_len, head_dim] float32 for positions 0..max_len-1.

    longrope (Phi-3): transformers uses the short factors while the sequence fits original_max_position_embeddings
    and the long ones after, and the keys already cached keep theirs; so by default a position below it gets the
    short factors and one at or past it the long ones (what incremental decoding in transformers computes).
    long=True: the long factors everywhere (a single prompt longer than original_max_position_embeddings)."""
    import torch

    pos = torch.arange(max_len, dtype=torch.float32)

    def table(lng: bool):
        inv, scale = inv_freq(cfg, key, lng)
        freqs = torch.outer(pos, inv)
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos() * scale, emb.sin() * scale

    rp = cfg.rope_params(key)
    if rp.get("rope_type") != "longrope":
        return table(False)
    if long:
        return table(True)
    (cs, ss), (cl, sl) = table(False), table(True)
    orig = int(rp["original_max_position_embeddings"])
    return torch.cat([cs[:orig], cl[orig:]]), torch.cat([ss[:orig], sl[orig:]])


def long_prompt_threshold(cfg: DecoderConfig) -> int | None:
    """The prompt length past which longrope computes a whole prompt with the long factors (None: no longrope)."""
    for key in set(cfg.rope_key):
        rp = cfg.rope_params(key)
        if rp.get("rope_type") == "longrope":
            return int(rp["original_max_position_embeddings"])
    return None


def check_supported(cfg: dict) -> tuple[bool, str]:
    """(ok, reason) for a config.json dict, read through transformers as a load reads it (no weights)."""
    try:
        dc = DecoderConfig.from_hf(cfg)
        for key in set(dc.rope_key):
            inv_freq(dc, key)
    except Unsupported as e:
        return False, str(e)
    except (KeyError, TypeError, AttributeError) as e:
        return False, f"the fast engine cannot read this config ({type(e).__name__}: {e})"
    return True, ""
