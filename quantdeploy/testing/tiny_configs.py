"""The tiny test checkpoints: each architecture's config.json as its popular Hub repos write it (the same field names
and kinds of values: rope_scaling dicts, sliding_window, attention_bias, tie_word_embeddings, head_dim,
query_pre_attn_scalar, softcapping, torch_dtype, ...), scaled down to a few hundred thousand weights, and the
quantizations of them the tests need.

Sizes are chosen so every group size divides every linear's input (multiples of 128), and so that the features
under test act within a short test: sliding windows of 16-48 tokens, softcaps small enough to bite on a random
model, a Phi-3 head of 48 (not a power of two, as Phi-3-mini's 96).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from .tokenizer import BOS, EOS, PAD, VOCAB_SIZE, special_id

_COMMON = {"bos_token_id": BOS, "eos_token_id": EOS, "vocab_size": VOCAB_SIZE, "hidden_act": "silu",
           "initializer_range": 0.1, "attention_dropout": 0.0, "use_cache": True}


def _factors(n: int, lo: float, hi: float) -> list[float]:
    """Phi-3's longrope factors: one per rotary frequency, rising from lo to hi (geometrically)."""
    return [round(lo * (hi / lo) ** (i / (n - 1)), 4) for i in range(n)]


# model_type -> (Hub repo the fields follow, config.json without the size fields, sizes, end-of-turn token)
ARCHS: dict[str, dict] = {
    # meta-llama/Llama-3.1-8B-Instruct: llama3 rope scaling, untied head, bf16
    "llama": dict(_COMMON, architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=128,
                  intermediate_size=384, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                  max_position_embeddings=131072, rms_norm_eps=1e-05, rope_theta=500000.0, attention_bias=False,
                  mlp_bias=False, pretraining_tp=1, tie_word_embeddings=False, torch_dtype="bfloat16",
                  rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
    # mistralai/Mistral-7B-v0.1: a sliding window on every layer (4096 there)
    "mistral": dict(_COMMON, architectures=["MistralForCausalLM"], model_type="mistral", hidden_size=128,
                    intermediate_size=384, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                    max_position_embeddings=32768, rms_norm_eps=1e-05, rope_theta=10000.0, sliding_window=24,
                    tie_word_embeddings=False, torch_dtype="bfloat16"),
    # Qwen/Qwen2.5-0.5B-Instruct: q/k/v biases (no attention_bias field), tied embeddings, a sliding window
    # declared but off (use_sliding_window false); the vendor's GPTQ/AWQ repos are float16
    "qwen2": dict(_COMMON, architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=128,
                  intermediate_size=384, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                  max_position_embeddings=32768, max_window_layers=21, rms_norm_eps=1e-06, rope_theta=1000000.0,
                  sliding_window=32768, use_sliding_window=False, tie_word_embeddings=True,
                  torch_dtype="float16"),
    # Qwen/Qwen3-0.6B: q/k RMSNorm per head, head_dim set apart from hidden_size / heads, tied embeddings
    "qwen3": dict(_COMMON, architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_size=128,
                  intermediate_size=384, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                  num_hidden_layers=2, max_position_embeddings=40960, max_window_layers=28, rms_norm_eps=1e-06,
                  rope_scaling=None, rope_theta=1000000, sliding_window=None, use_sliding_window=False,
                  attention_bias=False, tie_word_embeddings=True, torch_dtype="bfloat16"),
    # google/gemma-2-2b-it: logit and attention soft-capping, sliding window on every other layer,
    # query_pre_attn_scalar (= head_dim, as llama.cpp assumes below 27B), (1 + w) norms around both blocks, tied
    # embeddings. Caps scaled to a random model.
    "gemma2": dict(_COMMON, architectures=["Gemma2ForCausalLM"], model_type="gemma2", hidden_size=128,
                   intermediate_size=384, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                   num_hidden_layers=2, max_position_embeddings=8192, rms_norm_eps=1e-06, rope_theta=10000.0,
                   attention_bias=False, attn_logit_softcapping=1.0, final_logit_softcapping=0.5,
                   query_pre_attn_scalar=64, sliding_window=16, cache_implementation="hybrid",
                   hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh", pad_token_id=PAD,
                   torch_dtype="bfloat16"),
    # google/gemma-3-1b-it with the 4b+ text config's linear rope scaling on global layers: 5 local layers
    # (own rope base, window) to 1 global; q/k norms
    "gemma3_text": dict(_COMMON, architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", hidden_size=128,
                        intermediate_size=384, num_attention_heads=4, num_key_value_heads=1, head_dim=64,
                        num_hidden_layers=6, max_position_embeddings=32768, rms_norm_eps=1e-06,
                        rope_local_base_freq=10000, rope_theta=1000000, attention_bias=False,
                        rope_scaling={"factor": 8.0, "rope_type": "linear"}, query_pre_attn_scalar=64,
                        sliding_window=16, sliding_window_pattern=6, attn_logit_softcapping=None,
                        final_logit_softcapping=None, cache_implementation="hybrid",
                        hidden_activation="gelu_pytorch_tanh", pad_token_id=PAD, torch_dtype="bfloat16"),
    # microsoft/Phi-3.5-mini-instruct: fused qkv_proj and gate_up_proj, longrope ("su" in older repos) with
    # original_max_position_embeddings at the top level (4096 there; 256 here, llama.cpp's smallest context: it
    # takes the long factors when its context exceeds it), a sliding window, head_dim 96 there (48 here)
    "phi3": dict(_COMMON, architectures=["Phi3ForCausalLM"], model_type="phi3", hidden_size=384,
                 intermediate_size=512, num_attention_heads=8, num_key_value_heads=8, num_hidden_layers=2,
                 max_position_embeddings=4096, original_max_position_embeddings=256, rms_norm_eps=1e-05,
                 rope_theta=10000.0, sliding_window=48, attention_bias=False, embd_pdrop=0.0, resid_pdrop=0.0,
                 tie_word_embeddings=False, pad_token_id=PAD, torch_dtype="bfloat16",
                 rope_scaling={"type": "longrope", "short_factor": _factors(24, 1.0, 1.3),
                               "long_factor": _factors(24, 1.0, 24.0)}),
    # Qwen/Qwen3-30B-A3B: mixture of experts with q/k norms
    "qwen3_moe": dict(_COMMON, architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", hidden_size=128,
                      intermediate_size=384, moe_intermediate_size=128, num_experts=4, num_experts_per_tok=2,
                      norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, num_hidden_layers=2, max_position_embeddings=40960,
                      max_window_layers=48, rms_norm_eps=1e-06, rope_scaling=None, rope_theta=1000000.0,
                      sliding_window=None, use_sliding_window=False, attention_bias=False,
                      router_aux_loss_coef=0.001, output_router_logits=False, tie_word_embeddings=False,
                      torch_dtype="bfloat16"),
    # mistralai/Mixtral-8x7B-Instruct-v0.1: mixture of experts
    "mixtral": dict(_COMMON, architectures=["MixtralForCausalLM"], model_type="mixtral", hidden_size=128,
                    intermediate_size=256, num_local_experts=4, num_experts_per_tok=2, num_attention_heads=4,
                    num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=32768, rms_norm_eps=1e-05,
                    rope_theta=1000000.0, sliding_window=None, router_aux_loss_coef=0.02,
                    output_router_logits=False, tie_word_embeddings=False, torch_dtype="bfloat16"),
}

# Random weights (initializer_range 0.1 above: 0.02 gives near-uniform logits) decode something other than one
# token over and over, except where scaled, tied embeddings dominate the residual stream (Gemma): those start
# smaller by this factor.
EMBED_SCALE = {"gemma2": 0.1, "gemma3_text": 0.1}

END_OF_TURN = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "qwen3_moe": "<|im_end|>",
               "gemma2": "<end_of_turn>", "gemma3_text": "<end_of_turn>", "phi3": "<|end|>"}


def hub_config(arch: str) -> dict:
    """A fresh copy (transformers' config classes edit the rope dicts they are given)."""
    cfg = copy.deepcopy(ARCHS[arch])
    eot = END_OF_TURN.get(arch)
    if eot:
        cfg["eos_token_id"] = [EOS, special_id(eot)]
    return cfg


@dataclass(frozen=True)
class Quant:
    """One quantized checkpoint of a tiny model: what the tests load by `name`."""

    name: str
    arch: str
    method: str = "gptq"  # gptq | awq
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    desc_act: bool = False
    lm_head: bool = False
    awq_format: str = "gemm"  # gemm | gemv
    notes: str = field(default="", compare=False)


# Every architecture in GPTQ 4-bit g128 (the common Hub form), and the variants on Llama.
QUANTS: tuple[Quant, ...] = tuple(Quant(f"{a}-gptq", a) for a in ARCHS) + (
    Quant("llama-gptq-act-order", "llama", group_size=32, desc_act=True, notes="desc_act, g_idx (g32)"),
    Quant("llama-gptq-asym", "llama", group_size=64, sym=False, notes="sym=false (g64)"),
    Quant("llama-gptq-g32", "llama", group_size=32),
    Quant("llama-gptq-g64", "llama", group_size=64),
    Quant("llama-gptq-per-channel", "llama", group_size=-1),
    Quant("llama-gptq-8bit", "llama", bits=8),
    Quant("llama-gptq-lm-head", "llama", lm_head=True, notes="quantized lm_head"),
    Quant("llama-awq", "llama", method="awq", sym=False),
    Quant("llama-awq-gemv", "llama", method="awq", sym=False, awq_format="gemv"),
    Quant("qwen2-awq", "qwen2", method="awq", sym=False),
)


def quant(name: str) -> Quant:
    for q in QUANTS:
        if q.name == name:
            return q
    raise KeyError(f"no tiny checkpoint {name!r}; choose one of: {', '.join(q.name for q in QUANTS)}")
