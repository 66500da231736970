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


def test_source_tree_fallback_matches_the_entry_points():
    """registry._BUILTIN (used when the package runs from a source tree never pip-installed) is pyproject's
    entry point table, not a second list kept by hand."""
    import re

    from quantdeploy import registry

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    section = text.split('[project.entry-points."quantdeploy.backends"]', 1)[1].split("\n[", 1)[0]
    declared = dict(re.findall(r'^(\w+)\s*=\s*"([^"]+)"', section, re.M))
    assert declared == registry._BUILTIN


@pytest.mark.parametrize("files, needles", [
    ({"config.json": {"quantization_config": {"quant_method": "hqq"}}}, ["quant_method 'hqq' is not supported",
                                                                         "awq, gguf, gptq"]),
    ({"config.json": {"model_type": "llama"}}, ["not quantized", "awq, gguf, gptq"]),
    ({"README.md": "hello"}, ["holds no model", ".gguf", "quant_method gptq", "quant_method awq"]),
])
def test_unrecognized_models_say_what_loads(tmp_path, files, needles):
    from quantdeploy.errors import QuantDeployError

    _write(tmp_path, files)
    with pytest.raises(QuantDeployError) as e:
        detect_format(tmp_path)
    for n in needles:
        assert n in str(e.value)


def test_a_registered_fourth_format_is_detected_and_accepted_by_format(tmp_path):
    """A backend registered at run time owns its detection: --format reaches it, nothing else changes."""
    from quantdeploy.backends.base import Backend, Confidence

    class EXL2(Backend):
        name = "exl2-demo"
        formats = ("exl2",)

        def check_environment(self):
            return True, ""

        def detect(self, files):
            q = files.quant
            return Confidence.DECLARED if q is not None and q.method == "exl2" else None

        def load(self, spec):
            raise AssertionError("not loaded here")

    _write(tmp_path, {"config.json": {"quantization_config": {"quant_method": "exl2", "bits": 5}}})
    with pytest.raises(UnsupportedFormat, match="quant_method 'exl2' is not supported"):
        detect_format(tmp_path)
    register_backend("exl2", EXL2)
    try:
        assert detect_format(tmp_path) == "exl2"
        assert check_format(tmp_path, "exl2") == "exl2"
        with pytest.raises(UsageError, match="it is a EXL2 model"):
            check_format(tmp_path, "gptq")
    finally:
        from quantdeploy import registry

        registry._registry.pop("exl2", None)
