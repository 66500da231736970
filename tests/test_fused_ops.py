"""The engine's fused Triton kernels (quantdeploy/engine/triton_ops.py), run by Triton's interpreter on the CPU:
each kernel against the torch ops it replaces (fp32 and fp16, Llama and Gemma-3 variants, GQA, sliding window),
and the whole fused decode step against the torch step on the real GPTQ fixture (same greedy tokens).
Fresh processes: the interpreter must be switched on before triton is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "interp"


def _interpret(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, env=env,
                          timeout=900)


def test_fused_kernels_match_torch_ops():
    proc = _interpret("fused_ops_check.py")
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("ok"), proc.stdout[-1500:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_fused_decode_gives_the_torch_path_tokens(model_paths):
    proc = _interpret("fused_engine_check.py", str(model_paths["gptq"]))
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-1500:] + proc.stderr[-2000:]
