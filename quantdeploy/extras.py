"""The optional parts of quantdeploy (pyproject.toml's extras) and whether this install has them.

The extras' package lists live in one place, the package metadata pyproject.toml produces; this module reads
them back so that an error can name the exact `pip install 'quantdeploy[EXTRA]'` that fixes it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

from .errors import BackendUnavailable


def _extra_requirements(extra: str) -> list[str] | None:
    """Distribution names the extra lists (nested extras of quantdeploy itself followed); None without metadata."""
    from packaging.requirements import Requirement

    try:
        lines = requires("quantdeploy") or []
    except PackageNotFoundError:
        return None
    names: list[str] = []
    for line in lines:
        r = Requirement(line)
        if r.marker is None or not r.marker.evaluate({"extra": extra}):
            continue
        if r.name == "quantdeploy":
            for inner in sorted(r.extras):
                names += _extra_requirements(inner) or []
        else:
            names.append(r.name)
    return list(dict.fromkeys(names))


def missing(extra: str) -> list[str]:
    """The extra's packages that are not installed ([] when all are, or when quantdeploy runs uninstalled from a
    source tree, where there is no metadata to read)."""
    out = []
    for name in _extra_requirements(extra) or []:
        try:
            version(name)
        except PackageNotFoundError:
            out.append(name)
    return out


def require(extra: str, what: str) -> None:
    """Raise BackendUnavailable naming the pip command when the extra is not installed."""
    gone = missing(extra)
    if gone:
        raise BackendUnavailable(f"{what} needs {', '.join(gone)}, which this install lacks: "
                                 f"pip install 'quantdeploy[{extra}]' (./install.sh installs it)")


def gptqmodel_jit_compiled(extension: str) -> bool:
    """Whether gptqmodel's JIT cache already holds a compiled library of `extension` ("marlin_fp16", "machete", ...):
    its first use on this machine compiles it otherwise (minutes). GPTQMODEL_TORCH_EXTENSIONS_DIR is honoured."""
    try:
        from gptqmodel.utils.cpp import default_torch_ops_build_root

        root = Path(default_torch_ops_build_root(extension))
    except Exception:  # gptqmodel missing or broken: where it caches by default
        root = Path.home() / ".cache" / "gptqmodel" / "torch_extensions" / extension
    return any(root.glob("*/*.so"))
