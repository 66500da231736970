"""The install as a user has it: the package wins from any folder, the light core needs no torch, the optional parts
name the extra that brings them, install.sh explains what it cannot do, the fixture step prints a line per fixture."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, assert_clean_error, run_cli

HEAVY = ("torch", "transformers", "optimum", "gptqmodel")


def installed_env(**extra) -> dict:
    """The environment without this checkout on PYTHONPATH: what is imported is what is installed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QUANTDEPLOY_DEBUG")}
    env.update(extra)
    return env


def readme_python_snippet() -> str:
    (block,) = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return block


@pytest.fixture()
def clone_parent(tmp_path) -> Path:
    """A folder holding the clone as `quantdeploy/` (the clone's root has no __init__.py): from here, Python finds
    that folder first, as a namespace package named quantdeploy."""
    parent = tmp_path / "home"
    parent.mkdir()
    (parent / "quantdeploy").symlink_to(REPO, target_is_directory=True)
    return parent


def test_readme_snippet_runs_from_the_folder_holding_the_clone(clone_parent, tmp_path):
    proc = subprocess.run([sys.executable, "-c", readme_python_snippet()], cwd=clone_parent, capture_output=True,
                          text=True, timeout=300, env=installed_env(QUANTDEPLOY_HOME=str(tmp_path / "qd")),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert proc.stdout.strip(), proc.stderr


def test_doctor_smoke_check_from_the_folder_holding_the_clone(clone_parent, tmp_path):
    script = Path(sys.executable).with_name("quantdeploy")  # the console script pip installed
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "quantdeploy"]
    proc = subprocess.run([*cmd, "doctor", "--json", "--check", "gguf-smoke"], cwd=clone_parent, capture_output=True,
                          text=True, timeout=300, env=installed_env(QUANTDEPLOY_HOME=str(tmp_path / "qd")),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    (check,) = json.loads(proc.stdout)["checks"]
    assert check["status"] == "ok", check


def hide(tmp_path: Path, *modules: str) -> dict:
    """An environment whose Python cannot import `modules`, as on a light install that never had them."""
    site = tmp_path / "hide"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nfor m in {modules!r}:\n    sys.modules[m] = None\n")
    return {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_light_core_chats_and_names_the_extras(tmp_path):
    env = hide(tmp_path, *HEAVY, "fastapi", "uvicorn")
    proc = run_cli("chat", "--prompt", "What is the capital of France? Answer in one sentence.", "-t", "0", "-n", "24",
                   env=env, timeout=300)
    assert proc.returncode == 0 and "Paris" in proc.stdout, proc.stdout + proc.stderr
    listing = run_cli("backends", "--json", env=env)
    rows = {r["format"]: r for r in json.loads(listing.stdout)}
    assert rows["gguf"]["available"], rows
    for fmt in ("gptq", "awq"):
        assert not rows[fmt]["available"] and f"pip install 'quantdeploy[{fmt}]'" in rows[fmt]["reason"], rows[fmt]
    table = run_cli("backends", env=env).stdout
    assert "quantdeploy[gptq]" in table  # not eaten as markup by the table
    doctor = run_cli("doctor", "--json", "--check", "torch-cuda", "--check", "backends", env=env)
    by = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert by["torch-cuda"]["status"] == "skip" and "quantdeploy[gptq]" in by["torch-cuda"]["summary"], by
    assert "quantdeploy[awq]" in by["backends"]["fix"], by


def test_serve_without_the_serve_extra_names_it(monkeypatch, capsys):
    import quantdeploy.extras as extras
    from quantdeploy.cli import main

    # quantdeploy's metadata as pip leaves it when the [serve] extra was not asked for: listed, not installed
    monkeypatch.setattr(extras, "requires", lambda name: ["typer>=0.12", 'fastapi-not-installed>=1; extra == "serve"'])
    with pytest.raises(SystemExit) as e:
        main(["serve", "--port", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1, err
    assert "fastapi-not-installed" in err and "pip install 'quantdeploy[serve]'" in err, err


def test_extras_follow_nested_extras():
    from quantdeploy.extras import _extra_requirements

    if _extra_requirements("gguf") is None:
        pytest.skip("quantdeploy is not pip-installed here (no metadata)")
    assert "llama-cpp-python" in _extra_requirements("gguf")
    assert {"torch", "gptqmodel"} <= set(_extra_requirements("awq"))  # awq = quantdeploy[gptq]
    assert {"fastapi", "llama-cpp-python", "torch"} <= set(_extra_requirements("all"))


def repo_copy(tmp_path: Path) -> Path:
    """The checkout's tracked files, as a fresh clone has them (no .venv)."""
    dest = tmp_path / "clone"
    dest.mkdir()
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    return dest


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the checkout's files")
def test_install_sh_without_venv_support_says_which_package_to_install(tmp_path):
    # Debian/Ubuntu's python3 without python3-venv: `python3 -m venv` cannot bootstrap pip (no ensurepip)
    clone = repo_copy(tmp_path)
    bin_dir, block = tmp_path / "bin", tmp_path / "block"
    bin_dir.mkdir()
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['ensurepip'] = None\n")
    python3 = bin_dir / "python3"
    python3.write_text(f"#!/bin/sh\nPYTHONPATH={block} exec {sys.executable} \"$@\"\n")
    python3.chmod(0o755)
    env = installed_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHON", None)
    proc = subprocess.run(["./install.sh"], cwd=clone, capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "apt install python3-venv" in errors[0], proc.stderr
    assert not (clone / ".venv").exists()  # nothing half-made


def test_fixture_step_prints_a_line_per_fixture(tmp_path):
    code = textwrap.dedent("""
        import os, subprocess, sys
        from quantdeploy.testing import fixtures

        def noisy():
            for i in range(2000):
                print(f"Quantizing layer {i}: 100%|##########|", flush=True)
                print(f"progress {i}", file=sys.stderr)
            os.write(2, b"native library banner\\n")
            subprocess.run([sys.executable, "-c", "print('a child process talking')"])
            return fixtures.fixtures_dir() / "noisy"

        fixtures.FIXTURES = {"noisy": noisy}
        fixtures._is_built = lambda name: False
        sys.exit(fixtures.main())
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, QUANTDEPLOY_HOME=str(tmp_path)), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    out = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(out) == 3 and re.search(r"noisy\s+built in \dm\d\ds", out[-1]), out
    (log,) = (tmp_path / "fixtures").glob("*-noisy.log")
    text = log.read_text()
    assert "Quantizing layer 1999" in text and "native library banner" in text and "a child process" in text


def test_llama_build_progress_is_a_line_per_ten_percent(tmp_path):
    # install.sh's filter over `pip wheel -v` (which indents the build's ninja or make lines): ten lines, whole log
    script = (REPO / "install.sh").read_text()
    (func,) = re.findall(r"^build_progress\(\) \{.*?^\}\n", script, re.S | re.M)
    build = "noise\n" + "".join(f"  [{i}/193] /usr/bin/g++ -c ggml{i}.c\n" for i in range(1, 194)) + "[100%] Linking\n"
    log = tmp_path / "build.log"
    shell = "SECONDS=0\nelapsed() { printf '%dm%02ds' $((SECONDS / 60)) $((SECONDS % 60)); }\n" + func + \
        f'build_progress "{log}"\n'
    proc = subprocess.run(["bash", "-c", shell], input=build, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert [int(re.search(r"built +(\d+) %", l)[1]) for l in lines] == list(range(10, 101, 10)), lines
    assert log.read_text() == build
