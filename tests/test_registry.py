"""Format detection and the backend registry (table-driven, on files the tests write)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantdeploy.errors import InvalidModel, ModelNotFound, UnsupportedFormat, UsageError
from quantdeploy.registry import check_format, detect_format, get_backend, list_backends, register_backend

CASES = [
    # (files to write, expected format or error class)
    ({"config.json": {"quantization_config": {"quant_method": "gptq", "bits": 4}}}, "gptq"),
    ({"config.json": {"quantization_config": {"quant_method": "awq", "bits": 4}}}, "awq"),
    ({"config.json": {"quantization_config": {"quant_method": "GPTQ"}}}, "gptq"),
    ({"config.json": {"model_type": "llama"}, "quantize_config.json": {"bits": 4, "group_size": 128}}, "gptq"),
    ({"config.json": {"model_type": "llama"}, "quant_config.json": {"w_bit": 4, "q_group_size": 128}}, "awq"),
    ({"model-Q4_K_M.gguf": b"GGUF\x03\x00\x00\x00"}, "gguf"),
    ({"config.json": {"quantization_config": {"quant_method": "bitsandbytes"}}}, UnsupportedFormat),
    ({"config.json": {"quantization_config": {"bits": 4}}}, InvalidModel),
    ({"config.json": {"quantization_config": "gptq"}}, InvalidModel),
    ({"config.json": "{not json"}, InvalidModel),
    ({"config.json": [1, 2]}, InvalidModel),
    ({"config.json": {"model_type": "llama"}}, UnsupportedFormat),
    ({"README.md": "hello"}, InvalidModel),
    ({}, InvalidModel),
]


def _write(root: Path, files: dict) -> None:
    for name, content in files.items():
        p = root / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif isinstance(content, str):
            p.write_text(content)
        else:
            p.write_text(json.dumps(content))


@pytest.mark.parametrize("files,expected", CASES, ids=[str(i) for i in range(len(CASES))])
def test_detect_format_table(tmp_path, files, expected):
    _write(tmp_path, files)
    if isinstance(expected, str):
        assert detect_format(tmp_path) == expected
    else:
        with pytest.raises(expected):
            detect_format(tmp_path)


def test_detect_gguf_file_by_suffix_and_magic(tmp_path, gguf_path):
    assert detect_format(gguf_path) == "gguf"
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(b"GGUF" + b"\0" * 60)
    assert detect_format(renamed) == "gguf"
    other = tmp_path / "weights.safetensors"
    other.write_bytes(b"\0" * 64)
    with pytest.raises(UnsupportedFormat):
        detect_format(other)


def test_missing_path():
    with pytest.raises(ModelNotFound):
        detect_format("/nonexistent/model")


def test_check_format_mismatch_names_both(gguf_path):
    with pytest.raises(UsageError, match="GGUF"):
        check_format(gguf_path, "awq")
    with pytest.raises(UsageError, match="unknown format"):
        check_format(gguf_path, "awk")
    assert check_format(gguf_path, "GGUF") == "gguf"


def test_builtin_backends_come_from_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="quantdeploy.backends")}
    assert {"gptq", "awq", "gguf"} <= names
    rows = {r.format: r for r in list_backends()}
    assert set(rows) >= {"gptq", "awq", "gguf"}
    assert all(r.available for r in rows.values()), [r.reason for r in rows.values()]


def test_unknown_format_lists_choices():
    with pytest.raises(UnsupportedFormat, match="awq, gguf, gptq"):
        get_backend("awk")


def test_plugin_registers_like_builtins(gguf_path):
    from quantdeploy.backends.base import Backend

    class Broken(Backend):
        name = "demo"
        formats = ("demo",)

        def check_environment(self):
            return False, "pip install demo-backend"

        def load(self, spec):
            raise AssertionError("never loaded")

    register_backend("demo", Broken)
    try:
        row = [r for r in list_backends() if r.format == "demo"][0]
        assert not row.available and "pip install demo-backend" in row.reason
        assert get_backend("demo").name == "demo"
    finally:
        from quantdeploy import registry

        registry._registry.pop("demo", None)
