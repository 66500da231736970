"""GPTQ / AWQ repos: format from the remote config, only the files loading needs, branches via --revision."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli
from hubserver import AWQ_REPO, GPTQ_BRANCH, GPTQ_REPO, HubServer, checkpoint_repo, synthetic_gguf
from quantdeploy.registry import detect_format

LOAD_FILES = ["config.json", "generation_config.json", "model.safetensors", "quantize_config.json", "tokenizer.json",
              "tokenizer_config.json"]
PICKLE_REPO = "test-org/pickle-only"
PLAIN_REPO = "test-org/not-quantized"


@pytest.fixture(scope="module")
def hub(gguf_path, gptq_path, awq_path):
    with HubServer() as h:
        h.add_repo(GPTQ_REPO, checkpoint_repo(gptq_path))
        branch = {k: v for k, v in checkpoint_repo(gptq_path).items() if k != "pytorch_model.bin"}
        h.add_repo(GPTQ_REPO, branch, revision=GPTQ_BRANCH)
        h.add_repo(AWQ_REPO, checkpoint_repo(awq_path))
        h.add_repo(PICKLE_REPO, {"config.json": (gptq_path / "config.json").read_bytes(),
                                 "pytorch_model.bin": b"PK\x03\x04" + bytes(64)})
        h.add_repo(PLAIN_REPO, {"config.json": b'{"model_type": "gemma3_text"}',
                                "model.safetensors": synthetic_gguf("plain", 1024)})
        yield h


@pytest.fixture(autouse=True)
def _fresh(hub):
    hub.clear()


def pull_cli(hub, *args):
    return run_cli("pull", *args, "--endpoint", hub.url)


def visible(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".quantdeploy" not in p.parts)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_gptq_pulls_only_what_loading_needs(hub, qd_home, gptq_path):
    proc = pull_cli(hub, GPTQ_REPO)
    assert proc.returncode == 0, proc.stderr
    root = Path(proc.stdout.strip().splitlines()[-1])
    assert root == qd_home / "models" / "test-org" / "gemma-3-270m-GPTQ" / "main"
    assert visible(root) == sorted(LOAD_FILES + ["README.md"])  # the card; no *.bin, quant_log.csv, original/
    assert detect_format(root) == "gptq"
    for name in LOAD_FILES:
        assert sha256(root / name) == sha256(gptq_path / name)
    listed = run_cli("list", "--json")
    [entry] = __import__("json").loads(listed.stdout)
    assert entry["name"] == GPTQ_REPO and entry["format"] == "gptq" and entry["complete"]
    assert {f["path"] for f in entry["files"]} == set(LOAD_FILES + ["README.md"])

    # pickle weights only when asked; what is already verified is not fetched again
    hub.clear()
    proc = pull_cli(hub, GPTQ_REPO, "--include", "*.bin")
    assert proc.returncode == 0, proc.stderr
    assert visible(root) == sorted(LOAD_FILES + ["README.md", "pytorch_model.bin"])
    assert {h.path for h in hub.body_hits()} == {"pytorch_model.bin"}


def test_branch_revision(hub, qd_home):
    proc = pull_cli(hub, GPTQ_REPO, "--revision", GPTQ_BRANCH)
    assert proc.returncode == 0, proc.stderr
    root = Path(proc.stdout.strip().splitlines()[-1])
    assert root.name == GPTQ_BRANCH
    manifest = __import__("json").loads((root / ".quantdeploy" / "manifest.json").read_text())
    assert manifest["name"] == f"{GPTQ_REPO}:{GPTQ_BRANCH}"
    assert manifest["revision"] == GPTQ_BRANCH
    assert manifest["commit"] == hub.repos[GPTQ_REPO].revisions[GPTQ_BRANCH].commit
    # the same branch named as a tag is the same pulled model: nothing fetched again
    hub.clear()
    again = pull_cli(hub, f"{GPTQ_REPO}:{GPTQ_BRANCH}")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(root)
    assert hub.body_hits() == []
    assert_clean_error(pull_cli(hub, GPTQ_REPO, "--revision", "gptq-8bit-nope"), "no revision", "gptq-8bit-nope")


def test_awq_detected_and_format_mismatch(hub, qd_home):
    assert_clean_error(pull_cli(hub, AWQ_REPO, "--format", "gptq"), "--format gptq", "AWQ")
    assert {h.path for h in hub.body_hits()} <= {"config.json"}  # format detection reads the config only
    proc = pull_cli(hub, AWQ_REPO, "--format", "awq")
    assert proc.returncode == 0, proc.stderr
    root = Path(proc.stdout.strip().splitlines()[-1])
    assert detect_format(root) == "awq"
    assert "model.safetensors" in visible(root) and "pytorch_model.bin" not in visible(root)


def test_list_shows_files_and_branches(hub, qd_home):
    proc = pull_cli(hub, GPTQ_REPO, "--list")
    assert proc.returncode == 0, proc.stderr
    assert "GPTQ" in proc.stdout and "model.safetensors" in proc.stdout
    assert GPTQ_BRANCH in proc.stdout and "main" in proc.stdout
    assert "pytorch_model.bin" not in proc.stdout
    assert not (qd_home / "models").exists()


@pytest.mark.parametrize("repo, needles", [
    (PICKLE_REPO, ["pickle", "--include", "--allow-pickle"]),
    (PLAIN_REPO, ["not quantized"]),
])
def test_repos_we_cannot_load_are_refused_before_downloading(hub, qd_home, repo, needles):
    assert_clean_error(pull_cli(hub, repo), *needles)
    assert not (qd_home / "models").exists()


@pytest.mark.slow
def test_pulled_awq_chats(hub, qd_home):
    """A pulled name is a MODEL for every command: pulled on first use (progress on stderr), then loaded."""
    proc = run_cli("chat", AWQ_REPO, "--prompt", "Hello", "-n", "4", "-t", "0", "-v", env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    assert f"pulling {AWQ_REPO}" in proc.stderr
    assert "awq" in proc.stderr  # the stats line names the backend that ran
    assert proc.stdout.strip()
