"""Backend registry: formats -> backends, and format detection from files.

Built-in backends register through the same `quantdeploy.backends` entry point group a plugin uses; backends
are imported lazily so `quantdeploy backends` works when an optional dependency is missing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

from .backends.base import Backend, Confidence
from .checkpoint import LocalFiles, ModelFiles
from .errors import InvalidModel, ModelNotFound, QuantDeployError, UnsupportedFormat, UsageError

log = logging.getLogger("quantdeploy.registry")
ENTRY_POINT_GROUP = "quantdeploy.backends"
# Used when the package is imported from a source tree that was never pip-installed (no entry points); a test
# checks it is pyproject.toml's entry point table.
_BUILTIN = {
    "gptq": "quantdeploy.backends.gptq:GPTQBackend",
    "awq": "quantdeploy.backends.awq:AWQBackend",
    "gguf": "quantdeploy.backends.gguf:GGUFBackend",
}

_registry: dict[str, str | type[Backend] | Backend] = {}
_loaded_entry_points = False


def register_backend(name: str, backend: str | type[Backend] | Backend) -> None:
    """Register a backend (an instance, a class, or "module:Class") under a format name."""
    _registry[name] = backend


def _ensure_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for name, target in _BUILTIN.items():
        _registry.setdefault(name, target)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _registry[ep.name] = ep.value


def _resolve(name: str) -> Backend:
    target = _registry[name]
    if isinstance(target, str):
        mod, _, attr = target.partition(":")
        target = getattr(import_module(mod), attr)
    if isinstance(target, type):
        target = target()
    _registry[name] = target
    return target


def get_backend(fmt: str) -> Backend:
    _ensure_entry_points()
    fmt = (fmt or "").lower()
    if fmt not in _registry:
        raise UnsupportedFormat(f"unknown format '{fmt}'; choose one of: {', '.join(sorted(_registry))}")
    return _resolve(fmt)


@dataclass
class BackendStatus:
    format: str
    backend: str
    available: bool
    reason: str
    engines: list[str] = field(default_factory=list)  # what runs this format's models, in the chooser's order
    kernels: list[dict] = field(default_factory=list)  # KernelStatus of each kernel on this machine (any model)


def list_backends() -> list[BackendStatus]:
    _ensure_entry_points()
    out = []
    for fmt in sorted(_registry):
        try:
            b = _resolve(fmt)
            ok, reason = b.check_environment()
            status = BackendStatus(fmt, b.name, ok, reason)
        except Exception as e:  # a broken plugin must not break the listing
            out.append(BackendStatus(fmt, str(_registry[fmt]), False, f"failed to import: {e}"))
            continue
        if ok:
            try:
                kernels = b.kernels(None)
            except QuantDeployError as e:  # e.g. a bad QUANTDEPLOY_DISABLED_KERNELS: say so, list the rest
                status.reason = str(e)
                kernels = []
            status.kernels = [asdict(k) for k in kernels]
            status.engines = list(dict.fromkeys(k.engine for k in kernels))
        out.append(status)
    return out


# --- format detection ------------------------------------------------------------------------------

def formats() -> list[str]:
    """Every registered format name (built-ins and plugins), sorted: what --format accepts."""
    _ensure_entry_points()
    return sorted(_registry)


def check_requested(requested: str | None) -> str | None:
    """--format, lower case, or a usage error naming the registered formats."""
    if not requested:
        return None
    req = requested.lower()
    if req not in formats():
        raise UsageError(f"unknown format '{requested}'; choose one of: {', '.join(formats())}")
    return req


def _detectors() -> list[tuple[str, Backend]]:
    """(format, backend) for every backend that imports; a broken plugin is skipped (backends lists why)."""
    out = []
    for fmt in formats():
        try:
            out.append((fmt, _resolve(fmt)))
        except Exception as e:
            log.warning("backend %s failed to import (%s); not used for detection", fmt, e)
    return out


def kernel_patterns() -> tuple[str, ...]:
    """Every backend's kernel_patterns: the names (lower-case substrings) of quantized matmul kernels."""
    return tuple(sorted({p.lower() for _, backend in _detectors() for p in backend.kernel_patterns}))


def claims(files: ModelFiles) -> dict[str, Confidence]:
    """Format -> how surely its backend recognizes `files`, for every backend that does."""
    out = {}
    for fmt, backend in _detectors():
        try:
            found = backend.detect(files)
        except QuantDeployError:
            raise  # a broken config file: the same error whichever backend read it first
        except Exception as e:  # a plugin's bug must not make every model unloadable
            log.warning("backend %s failed to detect %s (%s: %s)", fmt, files.where, type(e).__name__, e)
            continue
        if found:
            out[fmt] = Confidence(found)
    return out


def identify(files: ModelFiles, requested: str | None = None) -> str:
    """The format of `files`: the surest claim, or `requested` (--format) when its backend recognizes them too."""
    req = check_requested(requested)
    found = claims(files)
    if not found:
        raise _unrecognized(files)
    best = max(found.values())
    top = sorted(f for f, c in found.items() if c == best)
    if req is not None:
        if req in found:
            return req
        raise UsageError(f"--format {req} does not match {files.where}: it is a {top[0].upper()} {files.noun} "
                         f"(drop --format or pass --format {top[0]})")
    if len(top) > 1:
        raise UsageError(f"{files.where} looks like {' and '.join(f.upper() for f in top)} alike; pass --format "
                         f"({', '.join(top)})")
    return top[0]


def _unrecognized(files: ModelFiles) -> QuantDeployError:
    """Why no backend took the files, and what quantdeploy does load."""
    names = ", ".join(formats())
    if files.single_file:
        return UnsupportedFormat(f"{files.where} is not a model file quantdeploy can load ({names}); pass a model "
                                 "directory or a model file")
    quant = files.quant
    if quant is not None:
        return UnsupportedFormat(f"{files.where}: quant_method '{quant.method}' is not supported; quantdeploy loads "
                                 f"{names} (a backend plugin can add more; `quantdeploy backends` lists them)")
    if files.config is not None:
        return UnsupportedFormat(f"{files.where} is not quantized (config.json has no quantization_config); "
                                 f"quantdeploy loads {names}")
    expected = "; ".join(b.expects for _, b in _detectors() if b.expects)
    return InvalidModel(f"{files.where} holds no model" + (f": expected {expected}" if expected else ""))


def detect_format(path: str | Path) -> str:
    """The format of a model directory or file (e.g. 'gptq', 'awq', 'gguf'), or an error saying what was found."""
    return identify(local_files(path))


def local_files(path: str | Path) -> LocalFiles:
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFound(f"no such file or directory: {p}")
    return LocalFiles(p)


def check_format(path: Path, requested: str | None) -> str:
    """The detected format, or an error when the user asked for a different one."""
    return identify(local_files(path), requested)
