"""A fourth format is one plugin: the toy `toyq` backend (tests/plugins/qd_toyformat), a separate package that
pip installs with its entry point, is detected, pulled from the local hub, inspected, loaded, chatted with and
benched by the real CLI with no change to quantdeploy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, assert_clean_error, run_cli
from hubserver import HubServer

PLUGIN = REPO / "tests" / "plugins" / "qd_toyformat"
TOY_REPO = "test-org/toy-TOYQ"
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
CONFIG = {"model_type": "toy", "quantization_config": {"quant_method": "toyq", "bits": 2, "group_size": 16}}


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """pip installs the plugin package (its dist-info carries the entry point) into a directory the CLI processes
    put on their path: the test environment gains the plugin, the shared one stays as it was. It builds from a
    copy, so the build leaves nothing in the source tree."""
    import importlib.util
    import shutil

    source = tmp_path_factory.mktemp("toy-src") / PLUGIN.name
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path_factory.mktemp("toy-site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(site), str(source)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd[4:4] = ["--no-build-isolation", "--no-index"]  # build offline with the setuptools already installed
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert list(site.glob("qd_toyformat-*.dist-info/entry_points.txt"))
    return site


@pytest.fixture(scope="module")
def env(plugin_site) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(plugin_site), os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy-model")
    (root / "config.json").write_text(json.dumps(CONFIG))
    (root / "model.toyq").write_text(json.dumps({"words": WORDS}))
    (root / "notes.txt").write_text("the pull leaves this on the hub\n")
    return root


@pytest.fixture(scope="module")
def hub(toy_dir):
    with HubServer() as h:
        h.add_repo(TOY_REPO, {p.name: p for p in toy_dir.iterdir()})
        yield h


def expected_reply(prompt_ids: list[int], n: int) -> str:
    """What the toy decoder says, computed here from its rule (the plugin module, imported from its source)."""
    sys.path.insert(0, str(PLUGIN))
    try:
        from qd_toyformat import SPECIAL, next_token
    finally:
        sys.path.remove(str(PLUGIN))
    vocab = list(SPECIAL) + WORDS
    ids, out = list(prompt_ids), []
    for _ in range(n):
        ids.append(next_token(ids, len(vocab)))
        out.append(vocab[ids[-1]])
    return " ".join(out)


def test_backends_and_help_list_the_plugin(env):
    rows = {r["format"]: r for r in json.loads(run_cli("backends", "--json", env=env).stdout)}
    assert rows["toyq"]["available"] and rows["toyq"]["backend"] == "toy"
    assert {"gptq", "awq", "gguf"} <= set(rows)
    help_text = run_cli("chat", "--help", env=env).stdout
    assert "toyq" in help_text and "gguf" in help_text  # --format lists the registered formats


def test_without_the_plugin_the_format_is_refused_by_name(toy_dir):
    assert_clean_error(run_cli("chat", str(toy_dir), "--prompt", "hi"), "quant_method 'toyq' is not supported")
    assert_clean_error(run_cli("chat", str(toy_dir), "--format", "toyq", "--prompt", "hi"), "unknown format 'toyq'")


def test_pull_inspect_chat_and_bench(env, hub, qd_home):
    proc = run_cli("pull", TOY_REPO, "--endpoint", hub.url, env=env)
    assert proc.returncode == 0, proc.stderr
    root = Path(proc.stdout.strip().splitlines()[-1])
    pulled = sorted(p.name for p in root.iterdir() if p.is_file())
    assert pulled == ["config.json", "model.toyq"]  # the backend's file choice: notes.txt stays on the hub
    assert json.loads((root / ".quantdeploy" / "manifest.json").read_text())["format"] == "toyq"

    info = json.loads(run_cli("inspect", str(root), "--json", env=env).stdout)
    assert info["format"] == "toyq" and info["backend"] == "toy" and info["words"] == len(WORDS) + 4
    assert info["quantization"]["method"] == "toyq" and info["quantization"]["bits"] == 2

    # --raw: the prompt goes in as typed; one word per token
    chat = run_cli("chat", TOY_REPO, "--prompt", "alpha beta", "--raw", "-n", "6", "-t", "0", "-v", env=env)
    assert chat.returncode == 0, chat.stderr
    vocab = ["<eos>", "<unk>", "<|im_start|>", "<|im_end|>"] + WORDS
    assert chat.stdout.strip() == expected_reply([vocab.index("alpha"), vocab.index("beta")], 6)
    assert "toyq" in chat.stderr and "toy_lookup" in chat.stderr  # the stats line: the plugin's backend ran

    bench = run_cli("bench", TOY_REPO, "--json", "--repeat", "1", "--prompt-tokens", "16", "--new-tokens", "8",
                    "--no-warm-load", env=env)
    assert bench.returncode == 0, bench.stderr
    [r] = json.loads(bench.stdout)["results"]
    assert r["format"] == "toyq" and r["backend"] == "toy" and r["kernel"] == "toy_lookup"
    assert r["bytes_per_token"] == (root / "model.toyq").stat().st_size  # the plugin's own weight count
    assert r["decode_tok_s"] > 0 and r["kernels"]["map"] == {"lookup": "ToyLookup"}
