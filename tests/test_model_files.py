"""Broken model directories, as a download or a hand copy leaves them: every missing or malformed file is one
`error:` line naming it, from `inspect`, `chat` and `serve`, found before any weight loads or torch is imported.
Also what fails without a model (a bad --template) fails before the model loads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli

# Each row: a copy of the real GPTQ fixture with one thing broken, and what the error line must say.
# Big files are symlinked; a row that breaks a file writes its own (None: no such file; a dict: config.json with
# these keys set, at the top level or in quantization_config, DROP removing one).
DROP = object()
CASES = {
    "no-tokenizer": ({"tokenizer.json": None}, ["has no tokenizer", "tokenizer.json"]),
    "tokenizer-truncated": ({"tokenizer.json": "HEAD:100000"}, ["tokenizer.json", "not a complete JSON"]),
    "tokenizer-config-not-json": ({"tokenizer_config.json": "{oops"}, ["tokenizer_config.json", "not valid JSON"]),
    "generation-config-not-json": ({"generation_config.json": "{oops"}, ["generation_config.json", "not valid JSON"]),
    "generation-config-a-list": ({"generation_config.json": "[1, 2]"}, ["generation_config.json", "JSON object"]),
    "no-config": ({"config.json": None}, ["has no config.json"]),
    "config-not-json": ({"config.json": "{oops"}, ["config.json", "not valid JSON"]),
    "config-without-model-type": ({"config.json": {"model_type": DROP}}, ["config.json", "model_type"]),
    "bits-not-a-number": ({"config.json": {"bits": "four"}}, ["config.json", "bits", "'four'"]),
    "group-size-missing-value": ({"config.json": {"group_size": None}}, ["config.json", "group_size"]),
    "legacy-quantize-config-not-json": ({"config.json": {"quantization_config": DROP},
                                         "quantize_config.json": "{oops"}, ["quantize_config.json", "not valid JSON"]),
    "no-weights": ({"model.safetensors": None}, ["no weights", "safetensors"]),
    "weights-garbage": ({"model.safetensors": "\xff" * 4096}, ["model.safetensors", "not a safetensors file"]),
    "weights-empty": ({"model.safetensors": ""}, ["model.safetensors", "0 bytes"]),
    "weights-truncated": ({"model.safetensors": "HEAD:50000000"}, ["model.safetensors", "truncated", "of"]),
    "index-not-json": ({"model.safetensors.index.json": "{oops"}, ["model.safetensors.index.json", "JSON"]),
    "index-names-a-missing-shard": ({"model.safetensors.index.json": json.dumps(
        {"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})},
        ["model.safetensors.index.json", "model-00002-of-00002.safetensors"]),
}


def _break(src: Path, dst: Path, changes: dict) -> None:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith(".") and f.name not in changes:
            os.symlink(f, dst / f.name)
    for name, change in changes.items():
        if change is None:
            continue
        if isinstance(change, dict):  # edit config.json: top level, or inside quantization_config
            cfg = json.loads((src / name).read_text())
            for k, v in change.items():
                where = cfg if k in cfg or k == "quantization_config" else cfg["quantization_config"]
                if v is DROP:
                    where.pop(k, None)
                else:
                    where[k] = v
            (dst / name).write_text(json.dumps(cfg))
        elif change.startswith("HEAD:"):
            with open(src / name, "rb") as f:
                (dst / name).write_bytes(f.read(int(change[5:])))
        else:
            (dst / name).write_bytes(change.encode("latin-1"))


@pytest.fixture(scope="module")
def broken(tmp_path_factory, gptq_path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    out = {}
    for name, (changes, _) in CASES.items():
        _break(gptq_path, root / name, changes)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> dict[str, str]:
    """An environment where importing torch, transformers or gptqmodel fails: a check that passes here ran before
    any of them (the load path imports them first thing)."""
    d = tmp_path_factory.mktemp("no-torch")
    (d / "sitecustomize.py").write_text("import sys\nfor m in ('torch', 'transformers', 'gptqmodel'):\n"
                                        "    sys.modules[m] = None\n")
    return {"PYTHONPATH": str(d) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _one_line(proc, *needles) -> None:
    assert_clean_error(proc, *needles)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), repr(proc.stderr)
    assert proc.stdout == ""


@pytest.mark.parametrize("case", list(CASES))
def test_inspect_names_the_broken_file(broken, case):
    _one_line(run_cli("inspect", str(broken[case])), *CASES[case][1])


@pytest.mark.parametrize("case", list(CASES))
def test_chat_names_the_broken_file_before_loading(broken, no_torch, case):
    _one_line(run_cli("chat", str(broken[case]), "--prompt", "hi", env=no_torch), *CASES[case][1])


def test_serve_names_the_broken_file_before_binding(broken, no_torch):
    _one_line(run_cli("serve", str(broken["weights-truncated"]), "--port", "1", env=no_torch, timeout=120), "truncated")


def test_a_good_checkpoint_passes_the_checks(gptq_path, awq_path):
    from quantdeploy.backends.hf_check import check_checkpoint

    check_checkpoint(gptq_path, "gptq", allow_pickle=False)
    check_checkpoint(awq_path, "awq", allow_pickle=False)


# --- what fails without a model, fails before it loads ---------------------------------------------------------

@pytest.fixture(scope="module")
def no_llama(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("no-llama")
    (d / "sitecustomize.py").write_text("import sys\nsys.modules['llama_cpp'] = None\n")
    return {"PYTHONPATH": str(d) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_unknown_template_fails_before_the_model_loads(gguf_path, no_llama, command):
    args = ["--prompt", "hi"] if command == "chat" else ["--port", "1"]
    _one_line(run_cli(command, str(gguf_path), "--template", "nosuch", *args, env=no_llama, timeout=120),
              "unknown template", "chatml")


def test_template_file_that_cannot_render_fails_before_the_model_loads(gguf_path, no_llama, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content }")
    _one_line(run_cli("chat", str(gguf_path), "--template", str(bad), "--prompt", "hi", env=no_llama),
              "chat template failed to render")


def test_checkpoint_without_weights_fails_before_torch_loads(gptq_path, no_torch, tmp_path):
    d = tmp_path / "no-weights"
    d.mkdir()
    for f in gptq_path.glob("*.json"):
        shutil.copy(f, d / f.name)
    _one_line(run_cli("chat", str(d), "--prompt", "hi", env=no_torch), "no weights")


def test_gguf_errors_are_one_line(tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    _one_line(run_cli("chat", str(bad), "--prompt", "hi"), "garbage.gguf")


@pytest.mark.slow
@pytest.mark.parametrize("change, needles", [
    ({"model_type": "nosuchmodel", "architectures": ["NoSuchForCausalLM"]},
     ["does not know the architecture 'nosuchmodel'", "--trust-remote-code"]),
    ({"intermediate_size": 4096}, ["weights do not match config.json", "re-download"]),
], ids=["unknown-architecture", "shapes-differ"])
def test_what_only_the_load_finds_is_one_line_too(gptq_path, tmp_path, change, needles):
    """Files that pass the checks but that transformers refuses: still one line that says what is wrong."""
    d = tmp_path / "model"
    _break(gptq_path, d, {"config.json": change})
    _one_line(run_cli("chat", str(d), "--prompt", "hi", "-n", "2"), *needles)
