"""Shared fixtures: real models of all three formats (built once, cached under ~/.cache/quantdeploy/fixtures)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quantdeploy.settings import prepare_process_env

prepare_process_env()
REPO = Path(__file__).resolve().parents[1]


def has_cuda() -> bool:
    from quantdeploy.backends.hw import cuda_device_count

    return cuda_device_count() > 0


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is usable here (`make test-gpu` on a machine with one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    """Gemma-3-270M Q4_K_M: the base model the fixtures of all three formats are built from."""
    from quantdeploy.testing.fixtures import gemma_gguf

    return gemma_gguf()


@pytest.fixture(scope="session")
def default_gguf_path() -> Path:
    """The default model (SmolLM2-135M-Instruct Q4_1), what `chat` and `serve` load when no MODEL is named."""
    from quantdeploy.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def reference_path() -> Path:
    from quantdeploy.testing.fixtures import reference_model

    return reference_model()


@pytest.fixture(scope="session")
def gptq_path() -> Path:
    from quantdeploy.testing.fixtures import gptq_model

    return gptq_model()


@pytest.fixture(scope="session")
def awq_path() -> Path:
    from quantdeploy.testing.fixtures import awq_model

    return awq_model()


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """Every tiny checkpoint (quantdeploy/testing/tiny_configs.py): name -> directory, built once and cached."""
    from quantdeploy.testing.tiny import build_all

    return build_all(log=lambda line: print(line, file=sys.stderr))


@pytest.fixture(scope="session")
def model_paths(gguf_path, gptq_path, awq_path) -> dict[str, Path]:
    return {"gguf": gguf_path, "gptq": gptq_path, "awq": awq_path}


@pytest.fixture(scope="session")
def gguf_model(gguf_path):
    """One loaded Gemma GGUF model shared by the tests that only read from it."""
    import quantdeploy

    m = quantdeploy.load(str(gguf_path))
    yield m
    m.close()


@pytest.fixture()
def qd_home(tmp_path, monkeypatch) -> Path:
    """An empty QUANTDEPLOY_HOME for tests that write to the store (fixtures stay in the real cache)."""
    home = tmp_path / "qdhome"
    home.mkdir()
    monkeypatch.setenv("QUANTDEPLOY_HOME", str(home))
    return home


def run_cli(*args: str, input: str | None = None, env: dict | None = None, timeout: float = 600,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m quantdeploy ARGS` as a user would, capturing stdout and stderr."""
    e = dict(os.environ)
    e.pop("QUANTDEPLOY_DEBUG", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "quantdeploy", *args], input=input, capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=cwd or REPO, stdin=None if input is not None else subprocess.DEVNULL)


@pytest.fixture()
def cli():
    return run_cli


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A user-facing failure: non-zero exit, one 'error: ...' line, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])


def tool_exists(name: str) -> bool:
    return shutil.which(name) is not None


def in_threads(fn, n: int, timeout: float = 600) -> list:
    """[fn(0), ..., fn(n - 1)], each called on a thread of its own, all at once (concurrent requests to one model)."""
    import threading

    out: list = [None] * n

    def one(i: int) -> None:
        out[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return out


def openai_client(server, *, api_key: str = "unused", timeout: float = 300):
    """The real `openai` client against a ServerProcess (no retries: a test sees every failure)."""
    import openai

    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0, timeout=timeout)
