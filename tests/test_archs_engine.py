"""The fast engine on every architecture and quantization variant it runs, against transformers' own model of
each tiny checkpoint (quantdeploy/testing/tiny_configs.py) in float32 with the checkpoint's dequantized weights:
logits within 1e-4 (relative, every position of a 31-token prompt) and the same 32 greedy tokens, on the CPU.

Not against transformers' quantized kernels: their bf16 products flip greedy near-ties that fp32 on the same
weights does not. The dequantization itself is checked against gptqmodel's below.
"""

from __future__ import annotations

import json

import pytest
import torch

import quantdeploy
from quantdeploy.engine.arch import DecoderConfig, Unsupported
from quantdeploy.engine.runner import FastEngine
from quantdeploy.errors import BackendUnavailable
from quantdeploy.testing.reference import greedy, reference_model
from quantdeploy.testing.tiny_configs import QUANTS, hub_config

pytestmark = pytest.mark.slow

LOGITS_RTOL = 1e-4  # relative L2 error of all logits, fp32 against fp32
PROMPT = [1] + list(range(300, 330))  # 31 tokens: past every tiny sliding window but Phi-3's (48)
NEW = 32
ENGINE = sorted(q.name for q in QUANTS if q.bits == 4 and q.arch not in ("qwen3_moe", "mixtral"))


_LOADED: dict = {}


def _pair(path):
    """(transformers' reference, the engine) of a checkpoint, loaded once per test session."""
    if path not in _LOADED:
        _LOADED[path] = reference_model(path), FastEngine(path, "cpu", torch.float32, 256)
    return _LOADED[path]


def _decode(eng: FastEngine, ids, n=NEW) -> list[int]:
    return list(eng.generate(ids, max_new=n, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set()))


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ENGINE)
def test_engine_equals_transformers(tiny_models, name):
    path = tiny_models[name]
    ref, eng = _pair(path)
    with torch.no_grad():
        want_logits = ref(torch.tensor([PROMPT])).logits[0]
        got_logits = eng.prefill(PROMPT, all_logits=True).float()
    assert _rel(got_logits, want_logits) < LOGITS_RTOL
    want = greedy(ref, PROMPT, NEW)
    assert _decode(eng, PROMPT) == want
    assert len(set(want)) > 8  # a model that says something, not one token over and over


def _without(eng: FastEngine, **fields) -> torch.Tensor:
    """The engine's prompt logits with some config fields changed (to show that a feature is exercised)."""
    saved = {k: getattr(eng.dec.cfg, k) for k in fields}
    for k, v in fields.items():
        setattr(eng.dec.cfg, k, v)
    try:
        return eng.prefill(PROMPT, all_logits=True).float()
    finally:
        for k, v in saved.items():
            setattr(eng.dec.cfg, k, v)


@pytest.mark.parametrize("name, fields", [
    ("gemma2-gptq", {"attn_softcap": None}), ("gemma2-gptq", {"final_softcap": None}),
    ("gemma2-gptq", {"window": [0, 0]}), ("mistral-gptq", {"window": [0, 0]}),
    ("gemma3_text-gptq", {"window": [0] * 6}), ("qwen2-gptq", {"bias": False}),
])
def test_each_feature_changes_the_logits(tiny_models, name, fields):
    """The tiny models are built so that soft-capping, sliding windows and biases act within the test's prompt:
    the engine without one is far from transformers (so the equality above tests it)."""
    path = tiny_models[name]
    ref, eng = _pair(path)
    with torch.no_grad():
        want = ref(torch.tensor([PROMPT])).logits[0]
        if "bias" in fields:  # biases live in the linears: drop them there, for this one prefill
            saved = [L.qkv.bias for L in eng.dec.layers]
            for L in eng.dec.layers:
                L.qkv.bias = None
            got = eng.prefill(PROMPT, all_logits=True).float()
            for L, b in zip(eng.dec.layers, saved):
                L.qkv.bias = b
        else:
            got = _without(eng, **fields)
    assert _rel(got, want) > 100 * LOGITS_RTOL


def test_phi3_longrope_past_the_original_context(tiny_models):
    """Phi-3's longrope: a prompt longer than original_max_position_embeddings (256 here) uses the long factors for
    every position, as transformers does; a shorter one the short factors (the test above)."""
    from quantdeploy.engine.runner import FastEngine

    path = tiny_models["phi3-gptq"]
    ref, eng = _pair(path)[0], FastEngine(path, "cpu", torch.float32, 512)
    ids = [1] + [300 + (i * 7) % 200 for i in range(269)]
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
        got = eng.prefill(ids, all_logits=True).float()
    assert _rel(got, want) < LOGITS_RTOL


def test_dequantization_equals_gptqmodel(tiny_models):
    """The reference's weights (engine/quant.py) against gptqmodel's own dequantization, for every GPTQ layout the
    tests use (act-order, asymmetric, per-channel, 8-bit, the 8-bit lm_head)."""
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module
    from safetensors.torch import load_file

    from quantdeploy.checkpoint import LocalFiles
    from quantdeploy.engine.model import module_quant
    from quantdeploy.testing.reference import dequantized_state

    for name in ("llama-gptq-act-order", "llama-gptq-asym", "llama-gptq-per-channel", "llama-gptq-8bit",
                 "llama-gptq-lm-head", "phi3-gptq"):
        path = tiny_models[name]
        tensors = load_file(str(path / "model.safetensors"))
        ours = dequantized_state(path)
        quant = LocalFiles(path).quant
        for base in ("model.layers.0.self_attn." + ("qkv_proj" if "phi3" in name else "q_proj"),
                     "model.layers.1.mlp.down_proj", "lm_head"):
            if base + ".qweight" not in tensors:
                continue
            bits, group = module_quant(quant, base)
            k, n = ours[base + ".weight"].shape[1], ours[base + ".weight"].shape[0]
            lin = TorchLinear(bits=bits, group_size=group, sym=quant.sym is not False,
                              desc_act=bool(quant.desc_act), in_features=k, out_features=n, bias=False)
            for buf in ("qweight", "qzeros", "scales", "g_idx"):
                getattr(lin, buf).copy_(tensors[base + "." + buf])
            convert_gptq_v1_to_v2_format_module(lin, bits, torch.int32)  # as its loader does
            lin.post_init()
            theirs = lin.dequantize_weight().float().t()  # gptqmodel's is [in, out]
            assert torch.allclose(theirs, ours[base + ".weight"], atol=1e-3, rtol=1e-3), (name, base)


@pytest.mark.parametrize("name, reason", [
    ("llama-gptq-8bit", "4-bit weights; this model has 8-bit"),
    ("qwen3_moe-gptq", "mixture-of-experts"), ("mixtral-gptq", "mixture-of-experts"),
])
def test_the_engine_refuses_what_it_does_not_run(tiny_models, name, reason):
    with pytest.raises(BackendUnavailable, match=reason) as e:
        quantdeploy.load(str(tiny_models[name]), engine="fast", device="cpu")
    assert "\n" not in str(e.value)


# config.json as the Hub writes it -> what the engine makes of it (the fields transformers normalizes)
CONFIGS = [
    ("llama", dict(window=[0, 0], rope_key=["default"] * 2, scale=32 ** -0.5, bias=False, tie=False)),
    ("mistral", dict(window=[24, 24], bias=False)),
    ("qwen2", dict(window=[0, 0], bias=True, tie=True)),  # use_sliding_window false: no window
    ("qwen3", dict(head_dim=64, qk_norm=True, scale=64 ** -0.5, tie=True)),
    ("gemma2", dict(window=[16, 0], attn_softcap=1.0, final_softcap=0.5, scale=64 ** -0.5, gemma=True,
                    act="gelu_tanh", qk_norm=False)),
    ("gemma3_text", dict(window=[16] * 5 + [0], rope_key=["sliding_attention"] * 5 + ["full_attention"],
                         qk_norm=True, scale=64 ** -0.5, final_softcap=None)),
    ("phi3", dict(window=[48, 48], head_dim=48, kv_heads=8)),
]


@pytest.mark.parametrize("arch, want", CONFIGS)
def test_hub_configs_read_as_transformers_reads_them(arch, want):
    cfg = DecoderConfig.from_hf(hub_config(arch))
    assert {k: getattr(cfg, k) for k in want} == want


def test_legacy_and_odd_config_fields():
    phi = hub_config("phi3")
    phi["rope_scaling"] = dict(phi["rope_scaling"], type="su")  # the first Phi-3 repos' name for longrope
    assert DecoderConfig.from_hf(phi).rope_params("default")["rope_type"] == "longrope"
    big = dict(hub_config("gemma2"), query_pre_attn_scalar=144)  # gemma-2-27b: hidden / heads, not head_dim
    assert DecoderConfig.from_hf(big).scale == 144 ** -0.5
    gemma3 = {"model_type": "gemma3", "text_config": dict(hub_config("gemma3_text"), model_type="gemma3_text")}
    assert DecoderConfig.from_hf(gemma3).window == [16] * 5 + [0]  # the multimodal repos' nesting
    partial = dict(hub_config("phi3"), partial_rotary_factor=0.75)  # Phi-4-mini: 36 of 48 dims rotate
    partial["rope_scaling"] = {k: v[:18] if isinstance(v, list) else v for k, v in partial["rope_scaling"].items()}
    with pytest.raises(Unsupported, match="rotates 0.75"):
        DecoderConfig.from_hf(partial)
    with pytest.raises(Unsupported, match="does not implement falcon"):
        DecoderConfig.from_hf({"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4})
    assert json.dumps(hub_config("llama")["rope_scaling"])  # the tiny configs keep the Hub's rope_scaling dict
