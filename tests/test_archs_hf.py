"""The transformers + gptqmodel path (`--engine hf`, the fallback) on every tiny architecture and quantization
variant: it loads each checkpoint, its logits are close to transformers' float32 model with the checkpoint's
dequantized weights (its kernels compute in bf16 on the CPU: relative error under 6e-2, 1e-1 for mixture-of-experts
models, the same top token at 80 % of positions or more), and it decodes text; or it refuses in one line that says
why."""

from __future__ import annotations

import pytest
import torch

import quantdeploy
from quantdeploy import GenerationParams
from quantdeploy.errors import BackendUnavailable
from quantdeploy.testing.reference import reference_model
from quantdeploy.testing.tiny_configs import QUANTS

pytestmark = pytest.mark.slow

PROMPT = [1] + list(range(300, 330))
HF_RTOL = 6e-2  # bf16 kernels against float32
MOE_RTOL = 1e-1  # and in mixture-of-experts models a near-tie of the router picks another expert in bf16
HF_TOP1 = 0.8
LOADS = sorted(q.name for q in QUANTS if not (q.method == "awq" and q.awq_format == "gemv"))
# checkpoints whose layout transformers' model has no place for: gptqmodel's loader takes them
GPTQMODEL_LOADER = {"phi3-gptq", "qwen3_moe-gptq", "mixtral-gptq", "llama-gptq-lm-head"}


@pytest.mark.parametrize("name", LOADS)
def test_transformers_path_loads_and_decodes(tiny_models, name):
    path = tiny_models[name]
    model = quantdeploy.load(str(path), engine="hf", device="cpu")
    try:
        got = torch.from_numpy(model.logits(PROMPT))
        with torch.no_grad():
            want = reference_model(path)(torch.tensor([PROMPT])).logits[0]
        moe = tiny_models[name].name.split("-")[0] in ("mixtral", "qwen3_moe")
        assert float((got - want).norm() / want.norm()) < (MOE_RTOL if moe else HF_RTOL)
        assert float((got.argmax(-1) == want.argmax(-1)).float().mean()) >= HF_TOP1
        gen = model.generate("The capital of France is", GenerationParams(max_tokens=8, temperature=0, ignore_eos=True))
        text = "".join(gen)
        assert gen.usage.completion_tokens == 8 and text.strip(), (gen.finish_reason, text)
        rep = model.kernel_report()
        assert rep["loader"].startswith("gptqmodel" if name in GPTQMODEL_LOADER else "transformers"), rep["loader"]
    finally:
        model.close()


def test_awq_gemv_on_the_cpu_is_refused_with_the_way_out(tiny_models):
    """gptqmodel runs the AWQ GEMV layout on CUDA only; the fast engine runs it anywhere."""
    with pytest.raises(BackendUnavailable, match="GEMV layout.*--engine fast") as e:
        quantdeploy.load(str(tiny_models["llama-awq-gemv"]), engine="hf", device="cpu")
    assert "\n" not in str(e.value)


def test_missing_weights_are_refused_not_run(tiny_models, tmp_path):
    """A checkpoint whose weights transformers' model does not take (here: q_proj renamed) is refused in one line
    instead of running the uninitialized memory of the layer it should have filled."""
    import shutil

    from safetensors.torch import load_file, save_file

    from quantdeploy.errors import InvalidModel

    src = tiny_models["llama-gptq"]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    t = load_file(str(bad / "model.safetensors"))
    renamed = {k.replace("layers.1.self_attn.q_proj", "layers.1.self_attn.query"): v for k, v in t.items()}
    save_file(renamed, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises((InvalidModel, BackendUnavailable)) as e:
        quantdeploy.load(str(bad), engine="hf", device="cpu")
    assert "q_proj" in str(e.value) or "query" in str(e.value)
