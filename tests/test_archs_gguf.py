"""llama.cpp (through quantdeploy's GGUF backend) on GGUF copies of the tiny checkpoints, made by llama.cpp's own
converter (from the installed llama-cpp-python's sdist) and quantizer, against transformers in float32:

- F32, the weights exactly: logits within 2e-3 (relative) of transformers on the float checkpoint, and the same
  greedy tokens;
- Q8_0 (llama_model_quantize): against transformers with the GGUF's own weights, dequantized by transformers' GGUF
  reader: logits within 5e-2 (llama.cpp rounds the activations to 8 bits for its dot products) and the same top
  token at 75 % of the positions or more (the tiny models' random weights have near-ties that 8-bit activations
  flip).

llama.cpp runs Mistral (as its llama architecture) and Phi-3 without their sliding windows, so those two are
compared only inside the window. Qwen3-MoE is not converted (gguf_convert.NOT_CONVERTED says why).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import quantdeploy
from quantdeploy import GenerationParams
from quantdeploy.testing.gguf_convert import NOT_CONVERTED
from quantdeploy.testing.reference import greedy, gguf_state, reference_model
from quantdeploy.testing.tiny_configs import ARCHS, hub_config

pytestmark = pytest.mark.slow

F32_RTOL = 2e-3
Q8_RTOL = 5e-2
Q8_TOP1 = 0.75  # random weights have near-ties that 8-bit activations flip
ARCHS_CONVERTED = [a for a in ARCHS if a not in NOT_CONVERTED]
NO_WINDOW = {"mistral", "phi3"}  # llama.cpp ignores their sliding window
MOE = {"mixtral"}  # transformers' GGUF reader does not map Mixtral's experts: F32 only


def _horizon(arch: str) -> tuple[list[int], int]:
    """(prompt, new tokens): 31 + 32, or within the window where llama.cpp has none."""
    if arch in NO_WINDOW:
        w = hub_config(arch)["sliding_window"]
        return [1] + list(range(300, 300 + w // 2 - 1)), w // 2
    return [1] + list(range(300, 330)), 32


@pytest.fixture(scope="module")
def ggufs(tiny_models):
    from quantdeploy.testing.gguf_convert import gguf_models

    return gguf_models()


def _llama_cpp(path, ids, new):
    model = quantdeploy.load(str(path), device="cpu", n_ctx=256)  # llama.cpp's smallest
    try:
        logits = torch.from_numpy(np.asarray(model.logits(ids), dtype=np.float32))
        params = GenerationParams(max_tokens=new, temperature=0, ignore_eos=True)
        tokens = [t for t, _ in model._generate_tokens(ids, params)][:new]
    finally:
        model.close()
    return logits, tokens


@pytest.mark.parametrize("arch", ARCHS_CONVERTED)
def test_f32_gguf_equals_transformers(tiny_models, ggufs, arch):
    from transformers import AutoModelForCausalLM

    ids, new = _horizon(arch)
    ref = AutoModelForCausalLM.from_pretrained(str(tiny_models[f"{arch}-float"]), dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    got, tokens = _llama_cpp(ggufs[arch]["F32"], ids, new)
    assert float((got - want).norm() / want.norm()) < F32_RTOL
    assert tokens == greedy(ref, ids, new)


@pytest.mark.parametrize("arch", [a for a in ARCHS_CONVERTED if a not in MOE])
def test_q8_gguf_equals_transformers_on_its_weights(tiny_models, ggufs, arch):
    ids, _ = _horizon(arch)
    path = ggufs[arch]["Q8_0"]
    ref = reference_model(tiny_models[f"{arch}-float"], state=gguf_state(path, tiny_models[f"{arch}-float"]))
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    got, _ = _llama_cpp(path, ids, 1)
    assert float((got - want).norm() / want.norm()) < Q8_RTOL
    assert float((got.argmax(-1) == want.argmax(-1)).float().mean()) >= Q8_TOP1
