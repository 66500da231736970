"""Backend registry: formats -> backends, and format detection from files.

Built-in backends register through the same `quantdeploy.backends` entry point group a plugin uses; backends
are imported lazily so `quantdeploy backends` works when an optional dependency is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

from .backends.base import Backend
from .errors import InvalidModel, ModelNotFound, UnsupportedFormat, UsageError

FORMATS = ("gptq", "awq", "gguf")
ENTRY_POINT_GROUP = "quantdeploy.backends"
# Used when the package is imported from a source tree that was never pip-installed (no entry points).
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


def list_backends() -> list[BackendStatus]:
    _ensure_entry_points()
    out = []
    for fmt in sorted(_registry):
        try:
            b = _resolve(fmt)
            ok, reason = b.check_environment()
            out.append(BackendStatus(fmt, b.name, ok, reason))
        except Exception as e:  # a broken plugin must not break the listing
            out.append(BackendStatus(fmt, str(_registry[fmt]), False, f"failed to import: {e}"))
    return out


# --- format detection ------------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModel(f"{path} is not valid JSON ({e}); re-download the model") from None
    if not isinstance(data, dict):
        raise InvalidModel(f"{path} is not a JSON object; re-download the model")
    return data


def _quant_method(cfg: dict, source: Path) -> str | None:
    qc = cfg.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise InvalidModel(f"{source}: quantization_config is not an object")
    method = str(qc.get("quant_method", "")).lower()
    if not method:
        raise InvalidModel(f"{source}: quantization_config has no quant_method")
    return method


def detect_format(path: str | Path) -> str:
    """Return 'gptq', 'awq' or 'gguf' for a model directory or file, or raise with what was found."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFound(f"no such file or directory: {p}")
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            return "gguf"
        with open(p, "rb") as f:
            if f.read(4) == GGUF_MAGIC:
                return "gguf"
        raise UnsupportedFormat(f"{p} is not a GGUF file; pass a model directory or a .gguf file")
    cfg_path = p / "config.json"
    method = None
    if cfg_path.is_file():
        method = _quant_method(_read_json(cfg_path), cfg_path)
    if method is None and (p / "quantize_config.json").is_file():  # AutoGPTQ legacy
        qc = _read_json(p / "quantize_config.json")
        method = str(qc.get("quant_method", "gptq")).lower()
    if method is None and (p / "quant_config.json").is_file():  # AutoAWQ legacy
        qc = _read_json(p / "quant_config.json")
        method = str(qc.get("quant_method", "awq")).lower()
    if method is not None:
        if method in ("gptq", "awq"):
            return method
        raise UnsupportedFormat(f"{p}: quant_method '{method}' is not supported; quantdeploy loads gptq, awq and gguf")
    if list(p.glob("*.gguf")):
        return "gguf"
    if cfg_path.is_file():
        raise UnsupportedFormat(f"{p} is not quantized (config.json has no quantization_config); "
                                "quantdeploy loads GPTQ, AWQ and GGUF models")
    raise InvalidModel(f"{p} holds no model: expected config.json with quantization_config, "
                       "quantize_config.json, quant_config.json or *.gguf files")


def check_format(path: Path, requested: str | None) -> str:
    """The detected format, or an error when the user asked for a different one."""
    detected = detect_format(path)
    if requested:
        req = requested.lower()
        if req not in FORMATS:
            raise UsageError(f"unknown format '{requested}'; choose one of: {', '.join(FORMATS)}")
        if req != detected:
            raise UsageError(f"--format {req} does not match {path}: it is a {detected.upper()} model "
                             f"(drop --format or pass --format {detected})")
    return detected
