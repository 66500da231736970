"""The batching benchmarks' scripts run on the CPU as they do on a GPU (benchmarks/gpu/llama_batched.py: llama.cpp's
own batched decode, the baseline; batch_decode.py over a GGUF: llama.cpp behind quantdeploy's scheduler), so that a
record on a GPU machine is one command that is known to work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"benchmarks/gpu/{script}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_llama_batched_decodes_b_sequences_per_step(default_gguf_path, tmp_path):
    out = tmp_path / "llama.json"
    proc = _run("llama_batched.py", str(default_gguf_path), "--batches", "1,3", "--prompt", "12", "--out", "6",
                "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert [r["batch"] for r in rec["rows"]] == [1, 3]
    assert all(r["decode_tok_s"] > 0 and r["decode_s"] > 0 for r in rec["rows"])
    assert rec["prompt_tokens"] == 12 and rec["output_tokens"] == 6 and "gpu" in rec


@pytest.mark.slow
def test_batch_decode_runs_a_gguf_behind_the_scheduler(default_gguf_path, tmp_path):
    """A .gguf goes to llama.cpp's batched decode (no fast engine, no torch); each row counts every token."""
    out = tmp_path / "gguf.json"
    proc = _run("batch_decode.py", str(default_gguf_path), "--batches", "1,3", "--prompt", "12", "--out", "6",
                "--check", "0", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert [(r["batch"], r["tokens"]) for r in rec["rows"]] == [(1, 6), (3, 18)]
    assert rec["kernel"] and rec["greedy_check"] is None


@pytest.mark.slow
def test_batch_decode_runs_the_fast_engine_with_a_profile_request(gptq_path, tmp_path):
    """A GPTQ checkpoint goes to the fast engine's batching; --profile adds a profile per row (None without a GPU:
    there are no kernels to count), and the greedy check compares each sequence in the batch with it alone."""
    out = tmp_path / "gptq.json"
    proc = _run("batch_decode.py", str(gptq_path), "--batches", "1,2", "--prompt", "8", "--out", "4",
                "--check", "3", "--profile", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert [(r["batch"], r["tokens"]) for r in rec["rows"]] == [(1, 4), (2, 8)]
    assert all("profile" in r for r in rec["rows"])
    assert rec["greedy_check"]["sequences"] == 2 and len(rec["greedy_check"]["same_prefix_len"]) == 2
