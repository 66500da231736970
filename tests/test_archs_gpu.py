"""Every architecture and variant the fast engine runs, on CUDA (fp16, the kernel the chooser picks, CUDA graphs)
against the engine's float32 CPU result (itself equal to transformers: test_archs_engine.py): prompt logits within
2e-2 (relative; fp16 activations) with the same top token at 95 % of the prompt's positions, and 16 greedy tokens
each of which the float32 reference also takes, or ranks within a near-tie of its top token (fp16 rounding may flip
a tie between two tokens of a random tiny model; the reference then decodes the CUDA tokens, so one flip is not
counted again); the greedy tokens with and without the CUDA graphs equal. And the transformers path on CUDA decodes
each architecture it loads."""

from __future__ import annotations

import pytest
import torch

from quantdeploy.testing.tiny_configs import QUANTS

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

PROMPT = [1] + list(range(300, 330))
GPU_RTOL = 2e-2
ENGINE = sorted(q.name for q in QUANTS if q.bits == 4 and q.arch not in ("qwen3_moe", "mixtral"))


def _decode(eng, n):
    return list(eng.generate(PROMPT, max_new=n, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set()))


def _cuda_gemv(path) -> str:
    """The GEMV the kernel chooser gives this checkpoint on CUDA (the CUDA GEMV, or Triton's where it cannot); a
    checkpoint neither can take (per-channel groups over a K of 384) runs on the transformers path, tested below."""
    from quantdeploy.backends.base import ModelSpec
    from quantdeploy.errors import BackendUnavailable
    from quantdeploy.registry import detect_format, get_backend

    fmt = detect_format(path)
    try:
        choice = get_backend(fmt).choose(ModelSpec(path=path, format=fmt, device="cuda", engine="fast"))
    except BackendUnavailable as e:
        pytest.skip(f"not the fast engine's on CUDA: {e}")
    return choice.kernel.gemv


@pytest.mark.parametrize("name", ENGINE)
def test_engine_on_cuda_equals_its_cpu_reference(tiny_models, name):
    from quantdeploy.engine.runner import FastEngine

    path = tiny_models[name]
    cpu = FastEngine(path, "cpu", torch.float32, 256)
    gpu = FastEngine(path, "cuda", torch.float16, 1024, gemv=_cuda_gemv(path))
    with torch.inference_mode():
        want = cpu.prefill(PROMPT, all_logits=True).float()
        got = gpu.prefill(PROMPT, all_logits=True).float().cpu()
    assert float((got - want).norm() / want.norm()) < GPU_RTOL
    assert float((got.argmax(-1) == want.argmax(-1)).float().mean()) >= 0.95
    graph = _decode(gpu, 16)
    assert gpu.graph_kind == "cuda-graph"
    with torch.inference_mode():  # the reference's logits along the CUDA tokens
        ref = cpu.prefill(PROMPT + graph[:-1], all_logits=True).float()[len(PROMPT) - 1:]
    top = ref.max(-1).values
    picked = ref.gather(-1, torch.tensor(graph).unsqueeze(-1)).squeeze(-1)
    tie = GPU_RTOL * ref.abs().max(-1).values  # a near-tie at fp16's precision
    assert bool((picked >= top - tie).all()), (graph, (top - picked).tolist(), tie.tolist())
    assert sum(int(p < t) for p, t in zip(picked, top)) <= 2  # flips stay rare
    gpu.use_graph = False
    gpu.close()
    assert _decode(gpu, 16) == graph


@pytest.mark.parametrize("name", sorted(q.name for q in QUANTS))
def test_transformers_path_on_cuda_decodes(tiny_models, name):
    import quantdeploy
    from quantdeploy import GenerationParams

    model = quantdeploy.load(str(tiny_models[name]), engine="hf", device="cuda")
    try:
        gen = model.generate("The capital of France is", GenerationParams(max_tokens=8, temperature=0,
                                                                          ignore_eos=True))
        assert "".join(gen).strip() and gen.usage.completion_tokens == 8
        assert model.kernel_report()["device"].startswith("cuda")
    finally:
        model.close()
