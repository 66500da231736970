"""The quantization-config parser (table-driven: config -> QuantConfig, or the error line) and ModelFiles, which
reads each config file once per load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantdeploy.checkpoint import LocalFiles, QuantConfig, parse_quant_config
from quantdeploy.errors import InvalidModel

GPTQMODEL = {"bits": 4, "group_size": 128, "desc_act": False, "sym": True, "lm_head": False, "quant_method": "gptq",
             "format": "gptq", "checkpoint_format": "gptq", "pack_dtype": "int32", "meta": {"damp_percent": 0.05}}
AUTOAWQ_LEGACY = {"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"}

PARSED = [
    # (quantization config, source file, expected fields)
    (GPTQMODEL, "config.json",
     dict(method="gptq", bits=4, group_size=128, sym=True, desc_act=False, checkpoint_format="gptq", lm_head=False)),
    ({"quant_method": "GPTQ", "bits": 8, "group_size": -1, "desc_act": True, "sym": False,
      "checkpoint_format": "gptq_v2", "lm_head": True}, "config.json",
     dict(method="gptq", bits=8, group_size=-1, sym=False, desc_act=True, checkpoint_format="gptq_v2", lm_head=True)),
    ({"quant_method": "gptq", "format": "gptq_v2"}, "config.json",  # older gptqmodel: `format`
     dict(bits=4, group_size=128, checkpoint_format="gptq_v2", sym=None, desc_act=None)),
    ({"quant_method": "gptq"}, "config.json", dict(checkpoint_format="gptq")),  # v1 when nothing says otherwise
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
      "modules_to_not_convert": None}, "config.json",
     dict(method="awq", zero_point=True, checkpoint_format="gemm", sym=None)),
    (AUTOAWQ_LEGACY, "quant_config.json", dict(method="awq", bits=4, group_size=128, checkpoint_format="gemm")),
    ({"bits": 3, "group_size": 64, "desc_act": True}, "quantize_config.json",  # AutoGPTQ legacy: no quant_method
     dict(method="gptq", bits=3, group_size=64, desc_act=True)),
    ({"quant_method": "exl2", "bits": 5}, "config.json", dict(method="exl2", bits=5, checkpoint_format=None)),
]

ERRORS = [
    # (quantization config, source file, the error line must say)
    ("gptq", "config.json", "quantization_config is not an object"),
    ({"bits": 4}, "config.json", "quantization_config has no quant_method"),
    ({"quant_method": "gptq", "bits": "four"}, "config.json", "bits must be an integer >= 1, got 'four'"),
    ({"quant_method": "gptq", "bits": 0}, "config.json", "bits must be an integer >= 1, got 0"),
    ({"quant_method": "gptq", "bits": True}, "config.json", "bits must be an integer"),
    ({"quant_method": "gptq", "group_size": 0}, "config.json", "group_size must be positive or -1"),
    ({"quant_method": "gptq", "group_size": -2}, "config.json", "group_size must be an integer >= -1"),
    ({"quant_method": "gptq", "group_size": None}, "config.json", "group_size must be an integer >= -1, got None"),
    ({"quant_method": "gptq", "desc_act": "yes"}, "config.json", "desc_act must be true or false"),
    ({"quant_method": "gptq", "checkpoint_format": 2}, "config.json", "checkpoint_format must be a name"),
    ({"quant_method": ""}, "config.json", "quant_method must be a name"),
    ([1, 2], "quant_config.json", "quant_config.json is not an object"),
]


@pytest.mark.parametrize("qc, source, expected", PARSED, ids=[str(i) for i in range(len(PARSED))])
def test_parse(qc, source, expected):
    legacy = {"quantize_config.json": "gptq", "quant_config.json": "awq"}
    got = parse_quant_config(qc, source, default_method=legacy.get(source))
    assert isinstance(got, QuantConfig) and got.source == source
    for key, value in expected.items():
        assert getattr(got, key) == value, key
    assert got.raw == qc  # a plugin reads its own keys


@pytest.mark.parametrize("qc, source, needle", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_parse_errors_name_the_file_and_key(qc, source, needle):
    with pytest.raises(InvalidModel) as e:
        parse_quant_config(qc, source, where=f"/models/m/{source}")
    line = str(e.value)
    assert needle in line and f"/models/m/{source}" in line and "\n" not in line


def _model(root: Path, files: dict) -> Path:
    root.mkdir(exist_ok=True)
    for name, content in files.items():
        (root / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return root


@pytest.mark.parametrize("files, method, source", [
    ({"config.json": {"quantization_config": GPTQMODEL}, "quantize_config.json": {"bits": 8}}, "gptq", "config.json"),
    ({"config.json": {"model_type": "llama"}, "quantize_config.json": {"bits": 8}}, "gptq", "quantize_config.json"),
    ({"config.json": {"model_type": "llama"}, "quant_config.json": AUTOAWQ_LEGACY}, "awq", "quant_config.json"),
    ({"quant_config.json": AUTOAWQ_LEGACY}, "awq", "quant_config.json"),
    ({"config.json": {"model_type": "llama"}}, None, None),
])
def test_model_files_find_the_quant_config(tmp_path, files, method, source):
    q = LocalFiles(_model(tmp_path / "m", files)).quant
    assert (q.method, q.source) == (method, source) if method else q is None


@pytest.fixture()
def reads(monkeypatch) -> list[str]:
    """The names of the files LocalFiles reads from here on, in order."""
    names: list[str] = []
    real = LocalFiles.read

    def counting(self, name, limit=None):
        names.append(name)
        return real(self, name, limit)

    monkeypatch.setattr(LocalFiles, "read", counting)
    return names


def test_each_config_file_is_read_once(tmp_path, reads):
    root = _model(tmp_path / "m", {"config.json": {"model_type": "llama", "quantization_config": GPTQMODEL}})
    files = LocalFiles(root)
    for _ in range(3):
        assert files.config["model_type"] == "llama" and files.quant.method == "gptq"
    assert reads == ["config.json"]


def test_broken_config_json_is_one_line(tmp_path):
    files = LocalFiles(_model(tmp_path / "m", {"config.json": "{not json"}))
    with pytest.raises(InvalidModel, match="config.json is not valid JSON .*re-download"):
        files.quant


def test_a_load_reads_config_json_once(gptq_path, reads):
    """Detection, the backend and the engine check share one parse: config.json is read once per load."""
    import quantdeploy
    from quantdeploy.models import resolve_model

    spec = resolve_model(str(gptq_path), device="cpu", engine="hf")
    model = quantdeploy.load_model(spec)
    try:
        assert model.quant["method"] == "gptq" and model.quant["checkpoint_format"] == "gptq"
    finally:
        model.close()
    assert reads.count("config.json") == 1, reads
