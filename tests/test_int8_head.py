"""The opt-in int8 lm_head (QUANTDEPLOY_LM_HEAD=int8, quantdeploy/engine/head.py): its logits against the fp16
lm_head on the engine's Llama path (CPU), its batch-1 Triton GEMV against torch (Triton's interpreter, and on a
GPU), and a clear error for an unknown value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from test_engine import _tiny_llama_gptq

from quantdeploy.engine.runner import FastEngine
from quantdeploy.errors import UsageError
from quantdeploy.settings import Settings


def _engine(path, mode):
    """The engine with QUANTDEPLOY_LM_HEAD=mode (None: unset), as the settings parse it."""
    env = {"QUANTDEPLOY_LM_HEAD": mode} if mode else {}
    return FastEngine(path, "cpu", torch.float32, 256, config=Settings.from_env(env).engine)


def test_int8_head_logits_are_close_to_the_fp16_head(tmp_path):
    path = _tiny_llama_gptq(tmp_path / "m")
    ref, q = _engine(path, None), _engine(path, "int8")
    assert ref.dec.head is None and q.dec.lm_head is None and q.dec.head.q.dtype == torch.int8
    fp = ref.dec.lm_head
    assert q.dec.head.nbytes() < fp.numel() * fp.element_size() // 3  # int8 + a scale per row, against fp32 here
    ids = [1] + list(range(10, 40))
    with torch.inference_mode():
        a, b = ref.prefill(ids, all_logits=True), q.prefill(ids, all_logits=True)
    err = float((a - b).norm() / a.norm())
    assert 0 < err < 1e-2, err  # quantized (not the same numbers), and close
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_unknown_lm_head_mode_is_a_usage_error():
    with pytest.raises(UsageError, match="QUANTDEPLOY_LM_HEAD=int4: use int8"):
        Settings.from_env({"QUANTDEPLOY_LM_HEAD": "int4"})


CHECK = """
import torch
from quantdeploy.engine.head import Int8Head
torch.manual_seed(0)
w = torch.randn(300, 520)
h = Int8Head(w)
x = torch.randn(1, 520)
from quantdeploy.engine.triton_head import int8_gemv
got = int8_gemv(x, h.q, h.scale)
want = (x @ h.q.float().t()) * h.scale
err = float((got - want).norm() / want.norm())
assert err < 1e-5, err
assert float((want - x @ w.t()).norm() / (x @ w.t()).norm()) < 1e-2
print("ok", err)
"""


def test_int8_head_gemv_under_the_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.getcwd())
    p = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stdout + p.stderr[-2000:]


@pytest.mark.gpu
def test_int8_head_gemv_on_the_gpu():
    from quantdeploy.engine.head import Int8Head
    from quantdeploy.engine.triton_head import int8_gemv

    w = torch.randn(128256, 4096, device="cuda", dtype=torch.float16)
    h = Int8Head(w)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.float16)
    want = (x.float() @ h.q.float().t()) * h.scale
    got = int8_gemv(x, h.q, h.scale)
    assert float((got - want).norm() / want.norm()) < 1e-4
