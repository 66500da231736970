"""bench on the real GPTQ and AWQ fixtures, side by side with the GGUF, speed and quality in one report."""

from __future__ import annotations

import json

import pytest

from conftest import has_cuda, run_cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(has_cuda(), reason="asserts the CPU kernel map; GPU runs: docs/bench.md")]


@pytest.fixture(scope="module")
def report(tmp_path_factory, gguf_path, gptq_path, awq_path, reference_path):
    home = tmp_path_factory.mktemp("qdhome")
    out = tmp_path_factory.mktemp("bench") / "formats.json"
    proc = run_cli("bench", str(gguf_path), str(gptq_path), str(awq_path), "--prompt-tokens", "16",
                   "--new-tokens", "3", "--repeat", "1", "--no-warm-load", "--quality", "--quality-tokens", "32",
                   "--reference", str(reference_path), "--output", str(out), env={"QUANTDEPLOY_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_formats_side_by_side(report):
    assert [r["format"] for r in report["results"]] == ["gguf", "gptq", "awq"]
    assert {r["device"] for r in report["results"]} == {"cpu"} and list(report["rooflines"]) == ["cpu"]
    for r in report["results"]:
        assert r["decode_tok_s"] > 0 and r["achieved_gbps"] > 0 and 0 < r["roofline_fraction"]


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_hf_kernel_map_names_the_quant_linear_class(report, fmt):
    """One gptqmodel CPU QuantLinear class for every projection, named in the map and the reason. Which class
    depends on the CPU: TorchCpuAvx512Linear / TorchCpuAvx512AwqLinear on AVX-512 Xeons, TorchAtenLinear /
    AwqTorchLinear-style classes elsewhere (an AMD EPYC without AVX-512)."""
    r = next(r for r in report["results"] if r["format"] == fmt)
    assert r["backend"] == "transformers+gptqmodel" and r["kernel"] == "cpu"
    classes = r["kernels"]["quant_linear_classes"]
    assert len(classes) == 1, classes
    cls = classes[0]
    assert "Torch" in cls and cls.endswith("Linear") and cls != "Linear", cls
    assert ("Awq" in cls) == (fmt == "awq"), cls
    assert r["kernels"]["map"]["q_proj"] == cls and r["kernels"]["map"]["down_proj"] == cls
    assert r["gpu_kernels_in_use"] is False and cls in r["gpu_kernels_reason"]
    detail = r["bytes_per_token_detail"]["detail"]
    # Gemma ties lm_head to the bf16 embedding: read whole by the head, so it dominates the bytes per token
    assert detail["tied_lm_head"] is True and detail["embedding_table"] == 262144 * 640 * 2
    assert detail["embedding_table"] < r["bytes_per_token"] < detail["all_weights"] + detail["embedding_row"] + 1


def test_quality_per_format(report):
    q = {r["format"]: r["quality"] for r in report["results"]}
    for fmt, v in q.items():
        assert v["tokens"] == 32 and 1 < v["perplexity"] < 10_000, fmt
        assert v["kl_divergence"] is not None and v["kl_divergence"] >= 0, fmt
        assert v["reference_perplexity"] == q["gguf"]["reference_perplexity"]
    # the reference is the GGUF's own dequantization; GPTQ and AWQ re-quantized it, so they drift further
    assert q["gguf"]["kl_divergence"] < min(q["gptq"]["kl_divergence"], q["awq"]["kl_divergence"])
