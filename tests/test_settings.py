"""quantdeploy/settings.py: every QUANTDEPLOY_* variable is parsed there, once (EngineConfig for the engines), a
value it does not know is a UsageError naming the variable, nothing else in the package reads one, and the docs
name exactly the variables that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quantdeploy.errors import UsageError
from quantdeploy.settings import ENGINE_VARIABLES, EngineConfig, Settings

ROOT = Path(__file__).resolve().parents[1]
HOME = "/srv/qd"


@pytest.mark.parametrize("env,want", [
    ({}, EngineConfig(tuned_dir=Path(HOME) / "gemv")),
    ({"QUANTDEPLOY_KERNEL": "Marlin"}, {"kernel": "marlin"}),
    ({"QUANTDEPLOY_KERNEL": ""}, {"kernel": None}),
    ({"QUANTDEPLOY_DISABLED_KERNELS": " marlin, ,exllama_v2 "}, {"disabled_kernels": ("marlin", "exllama_v2")}),
    ({"QUANTDEPLOY_FUSED": "0"}, {"fused_ops": False}),
    ({"QUANTDEPLOY_FUSED": "1"}, {"fused_ops": True}),
    ({"QUANTDEPLOY_FUSED": ""}, {"fused_ops": None}),
    ({"QUANTDEPLOY_LM_HEAD": "int8"}, {"lm_head": "int8"}),
    ({"QUANTDEPLOY_MARLIN": "0"}, {"marlin": False}),
    ({"QUANTDEPLOY_MARLIN": "auto"}, {"marlin": None}),
    ({"QUANTDEPLOY_MARLIN": "on"}, {"marlin": True}),
    ({"QUANTDEPLOY_MARLIN": "always"}, "QUANTDEPLOY_MARLIN=always: use 1 or 0"),
    ({"QUANTDEPLOY_ONE_COPY": "1"}, {"one_copy": True}),
    ({"QUANTDEPLOY_ONE_COPY": "auto"}, "QUANTDEPLOY_ONE_COPY=auto: use 1 or 0"),
    ({"QUANTDEPLOY_LM_HEAD": ""}, {"lm_head": "checkpoint"}),
    ({"QUANTDEPLOY_TUNED_GEMV": "0"}, {"tuned_dir": None}),
    ({"QUANTDEPLOY_TUNED_GEMV": "1"}, {"tuned_dir": Path(HOME) / "gemv"}),
    ({"QUANTDEPLOY_FUSED": "maybe"}, "QUANTDEPLOY_FUSED=maybe: use 1 or 0"),
    ({"QUANTDEPLOY_TUNED_GEMV": "no thanks"}, "QUANTDEPLOY_TUNED_GEMV=no thanks: use 1 or 0"),
    ({"QUANTDEPLOY_LM_HEAD": "int4"}, "QUANTDEPLOY_LM_HEAD=int4: use int8"),
])
def test_engine_config_from_the_environment(env, want):
    env = {"QUANTDEPLOY_HOME": HOME, **env}
    if isinstance(want, str):
        with pytest.raises(UsageError, match=re.escape(want)):
            Settings.from_env(env)
        return
    got = Settings.from_env(env).engine
    if isinstance(want, dict):
        for field, value in want.items():
            assert getattr(got, field) == value, field
    else:
        assert got == want


def test_engine_config_is_frozen():
    with pytest.raises(AttributeError):
        EngineConfig().kernel = "marlin"


def test_only_settings_reads_quantdeploy_variables():
    """No module but settings.py reads the environment for a QUANTDEPLOY_* variable (passing one on to a child
    process is fine)."""
    read = re.compile(r"""(environ(\.get)?\s*[\[(]|getenv\s*\()\s*["']QUANTDEPLOY_""")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "quantdeploy").rglob("*.py")
                 if p.name != "settings.py" and read.search(p.read_text())]
    assert offenders == []


def test_docs_name_only_variables_that_exist():
    """Every QUANTDEPLOY_* variable the docs mention is one settings.py reads, and every engine variable is in the
    engine's documentation."""
    source = (ROOT / "quantdeploy" / "settings.py").read_text()
    known = set(re.findall(r'"(QUANTDEPLOY_[A-Z_]+)"', source))
    assert set(ENGINE_VARIABLES) <= known
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named = set(re.findall(r"QUANTDEPLOY_[A-Z_]+[A-Z]", doc.read_text()))
        assert named <= known, (doc.name, named - known)
    engine_doc = (ROOT / "docs" / "engine.md").read_text()
    assert [v for v in ENGINE_VARIABLES if v not in engine_doc] == []
