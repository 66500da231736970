"""Bad input through the real CLI: one `error:` line, non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import json
import os

import pytest

from conftest import assert_clean_error, run_cli


@pytest.fixture()
def bad_models(tmp_path, gguf_path):
    d = {}
    d["empty"] = tmp_path / "empty"
    d["empty"].mkdir()
    d["badjson"] = tmp_path / "badjson"
    d["badjson"].mkdir()
    (d["badjson"] / "config.json").write_text("{ this is not json")
    d["unknown"] = tmp_path / "unknown"
    d["unknown"].mkdir()
    (d["unknown"] / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "hqq"}}))
    d["noweights"] = tmp_path / "noweights"
    d["noweights"].mkdir()
    (d["noweights"] / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "quant_method": "gptq", "bits": 4, "group_size": 128}}))
    d["pickle"] = tmp_path / "pickle"
    d["pickle"].mkdir()
    (d["pickle"] / "config.json").write_text((d["noweights"] / "config.json").read_text())
    (d["pickle"] / "pytorch_model.bin").write_bytes(b"\x80\x04junk")
    d["truncated"] = tmp_path / "truncated.gguf"
    with open(gguf_path, "rb") as f:
        d["truncated"].write_bytes(f.read(150_000_000))
    d["garbage"] = tmp_path / "garbage.gguf"
    d["garbage"].write_bytes(b"GGUF" + os.urandom(4096))
    return d


@pytest.mark.parametrize("case,args,needles", [
    ("missing", ["/no/such/model"], ["no such"]),
    ("empty", ["{empty}"], ["holds no model"]),
    ("badjson", ["{badjson}"], ["not valid JSON"]),
    ("unknown", ["{unknown}"], ["hqq", "not supported"]),
    ("noweights", ["{noweights}"], ["no weights"]),
    ("pickle", ["{pickle}"], ["--allow-pickle"]),
    ("truncated", ["{truncated}"], ["truncated", "re-download"]),
    ("garbage", ["{garbage}"], ["re-download"]),
    ("wrongformat", ["{gguf}", "--format", "awq"], ["GGUF", "--format"]),
    ("badformat", ["{gguf}", "--format", "awk"], ["unknown format"]),
    ("baddevice", ["{gguf}", "--device", "tpu"], ["unknown device"]),
    ("badtemp", ["{gguf}", "--temperature", "-1"], ["temperature"]),
    ("badmax", ["{gguf}", "--max-tokens", "0"], ["max_tokens"]),
    ("cuda_without_gpu", ["{gguf}", "--device", "cuda"], ["GPU"]),
])
def test_chat_bad_input(bad_models, gguf_path, case, args, needles):
    paths = {k: str(v) for k, v in bad_models.items()} | {"gguf": str(gguf_path)}
    argv = ["chat", *[a.format(**paths) for a in args], "--prompt", "hi", "--max-tokens" if "--max-tokens" not in
            args else "--seed", "4" if "--max-tokens" not in args else "1"]
    before = sorted(p.name for p in bad_models["empty"].parent.iterdir())
    proc = run_cli(*argv, timeout=300)
    assert_clean_error(proc, *needles)
    assert proc.stdout.strip() == ""
    assert sorted(p.name for p in bad_models["empty"].parent.iterdir()) == before


def test_inspect_bad_input(bad_models):
    assert_clean_error(run_cli("inspect", str(bad_models["badjson"])), "not valid JSON")
    assert_clean_error(run_cli("inspect", str(bad_models["truncated"])), "truncated")


def test_missing_optional_dependency_names_pip(tmp_path, gguf_path):
    # Hide llama_cpp from this one process, as on a machine where it was never installed.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['llama_cpp'] = None\n")
    env = {"PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = run_cli("chat", str(gguf_path), "--prompt", "hi", env=env)
    assert_clean_error(proc, "llama-cpp-python is not installed", "./install.sh", "pip install 'quantdeploy[gguf]'")
    listing = run_cli("backends", env=env)
    assert listing.returncode == 0 and "llama-cpp-python" in listing.stdout


def test_unknown_kernel(gptq_path):
    proc = run_cli("chat", str(gptq_path), "--kernel", "warp9", "--prompt", "hi", "-n", "2")
    assert_clean_error(proc, "unknown kernel", "marlin")


@pytest.mark.parametrize("var,value,needles", [
    ("QUANTDEPLOY_FUSED", "yes please", ["QUANTDEPLOY_FUSED=yes please", "use 1 or 0"]),
    ("QUANTDEPLOY_LM_HEAD", "int4", ["QUANTDEPLOY_LM_HEAD=int4", "int8"]),
    ("QUANTDEPLOY_MARLIN", "always", ["QUANTDEPLOY_MARLIN=always", "use 1 or 0"]),
])
def test_unknown_engine_setting(gptq_path, var, value, needles):
    """The engine's environment settings: a value they do not know is one error line (exit 2) before any work, not
    a silent default."""
    proc = run_cli("chat", str(gptq_path), "--engine", "fast", "--prompt", "hi", "-n", "2", env={var: value})
    assert_clean_error(proc, *needles)
    assert proc.returncode == 2
