"""A model's files as detection and loading read them, and the one parser of HF-style quantization configs.

`ModelFiles` answers what a backend's `detect()` asks (file names, the head of a file, config.json, the
quantization config) and reads each config file once: the same object travels from detection to the backend's
`load()` in `ModelSpec.files`, and a pull's planner hands detection a remote one that fetches only the small files
a detector reads.

`QuantConfig` is `quantization_config` from config.json, or the legacy AutoGPTQ `quantize_config.json` / AutoAWQ
`quant_config.json`, in one typed object, whatever spelling the quantizer used (`bits` / `w_bit`, `group_size` /
`q_group_size`, `checkpoint_format` / `format` / `version`).
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Mapping

from .errors import InvalidModel

CONFIG_FILE = "config.json"
# Legacy quantizer files, read when config.json declares no quantization_config, and the method each implies.
LEGACY_QUANT_FILES = {"quantize_config.json": "gptq", "quant_config.json": "awq"}
DEFAULT_BITS = 4
DEFAULT_GROUP_SIZE = 128
PER_CHANNEL = -1  # group_size of a checkpoint with one scale per output channel
# checkpoint_format when the config names none: what each method's quantizers wrote before the key existed
DEFAULT_CHECKPOINT_FORMAT = {"gptq": "gptq", "awq": "gemm"}


@dataclass(frozen=True)
class QuantConfig:
    """An HF-style quantization config, parsed and checked."""

    method: str  # quant_method, lower case: gptq, awq, or a plugin's (anything else a config declares)
    bits: int = DEFAULT_BITS
    group_size: int = DEFAULT_GROUP_SIZE  # PER_CHANNEL (-1): one group per output channel
    sym: bool | None = None  # GPTQ: symmetric weights (None: not stated)
    desc_act: bool | None = None  # GPTQ: activation order (g_idx)
    zero_point: bool | None = None  # AWQ: asymmetric weights with zero points
    checkpoint_format: str | None = None  # gptq | gptq_v2 (GPTQ), gemm | gemv | ... (AWQ); lower case
    lm_head: bool = False  # the lm_head is quantized too
    source: str = CONFIG_FILE  # the file it came from
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # every key, for plugins

    def summary(self) -> dict[str, Any]:
        """What `inspect` and kernel reports show."""
        return {"method": self.method, "bits": self.bits, "group_size": self.group_size, "desc_act": self.desc_act,
                "sym": self.sym, "zero_point": self.zero_point, "checkpoint_format": self.checkpoint_format,
                "lm_head": self.lm_head}


def _int(qc: Mapping, keys: tuple[str, ...], default: int, where: str, *, minimum: int) -> int:
    for key in keys:
        if key in qc:  # present: it must be right (a null is not "use the default")
            value = qc[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InvalidModel(f"{where}: {key} must be an integer >= {minimum}, got {value!r}; "
                                   "re-download the model or fix its config")
            return value
    return default


def _flag(qc: Mapping, key: str, where: str) -> bool | None:
    value = qc.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidModel(f"{where}: {key} must be true or false, got {value!r}; re-download the model or fix its config")


def _name(qc: Mapping, keys: tuple[str, ...], where: str) -> str | None:
    for key in keys:
        value = qc.get(key)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise InvalidModel(f"{where}: {key} must be a name, got {value!r}")
            return value.lower()
    return None


def parse_quant_config(qc: Any, source: str = CONFIG_FILE, *, default_method: str | None = None,
                       where: str | None = None) -> QuantConfig:
    """One quantization config (the object under `quantization_config`, or a legacy file's whole content) to a
    QuantConfig; InvalidModel, naming the file and the key, when a value cannot be right. `default_method`: what a
    legacy file implies when it names no quant_method; `where`: the file's location for messages."""
    where = where or source
    if source == CONFIG_FILE:
        where += ": quantization_config"
    if not isinstance(qc, Mapping):
        raise InvalidModel(f"{where} is not an object; re-download the model")
    method = _name(qc, ("quant_method",), where) or default_method
    if method is None:
        raise InvalidModel(f"{where} has no quant_method; re-download the model")
    bits = _int(qc, ("bits", "w_bit"), DEFAULT_BITS, where, minimum=1)
    group = _int(qc, ("group_size", "q_group_size"), DEFAULT_GROUP_SIZE, where, minimum=PER_CHANNEL)
    if group == 0:
        raise InvalidModel(f"{where}: group_size must be positive or -1 (per channel), got 0")
    fmt = _name(qc, ("checkpoint_format", "format", "version"), where) or DEFAULT_CHECKPOINT_FORMAT.get(method)
    return QuantConfig(method=method, bits=bits, group_size=group, sym=_flag(qc, "sym", where),
                       desc_act=_flag(qc, "desc_act", where), zero_point=_flag(qc, "zero_point", where),
                       checkpoint_format=fmt, lm_head=bool(_flag(qc, "lm_head", where)), source=source,
                       raw=dict(qc))


def parse_json(data: bytes, where: str) -> dict:
    """A JSON object from a config file, or InvalidModel saying to re-download."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModel(f"{where} is not valid JSON ({e}); re-download the model") from None
    if not isinstance(value, dict):
        raise InvalidModel(f"{where} is not a JSON object; re-download the model")
    return value


class ModelFiles(abc.ABC):
    """The files of one model (a directory, a single file, or a repo on a hub), each config file read at most once."""

    where: str  # for messages: the path, or repo@revision
    name: str  # for messages: the path, or the repo id
    noun = "model"  # for messages: "it is a GGUF model" / "... repo"

    def __init__(self) -> None:
        self._json: dict[str, dict | None] = {}
        self._quant: tuple[QuantConfig | None] | None = None

    # --- what a kind of location provides -----------------------------------------------------------------
    @property
    @abc.abstractmethod
    def single_file(self) -> str | None:
        """The file name when the model is one file (a .gguf passed directly), else None."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Paths relative to the model's root (a directory's top level; a repo's whole listing)."""

    @abc.abstractmethod
    def sizes(self) -> dict[str, int]:
        """Path -> size in bytes, for every name."""

    @abc.abstractmethod
    def read(self, name: str, limit: int | None = None) -> bytes:
        """A file's bytes (the first `limit` bytes when given). Remote kinds fetch small files only."""

    # --- shared -----------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.names()

    def glob(self, pattern: str) -> list[str]:
        return [n for n in self.names() if fnmatch(n, pattern)]

    def json(self, name: str) -> dict | None:
        """A JSON config file (parsed once), None when absent, InvalidModel when broken."""
        if name not in self._json:
            self._json[name] = parse_json(self.read(name), f"{self.where}/{name}") if self.has(name) else None
        return self._json[name]

    @property
    def config(self) -> dict | None:
        """config.json, or None when there is none."""
        return None if self.single_file else self.json(CONFIG_FILE)

    @property
    def quant(self) -> QuantConfig | None:
        """The quantization config: config.json's quantization_config, else a legacy quantizer file; None when the
        model declares none."""
        if self._quant is None:
            self._quant = (self._read_quant(),)
        return self._quant[0]

    def _read_quant(self) -> QuantConfig | None:
        cfg = self.config
        if cfg is not None and cfg.get("quantization_config") is not None:
            return parse_quant_config(cfg["quantization_config"], CONFIG_FILE, where=f"{self.where}/{CONFIG_FILE}")
        for name, method in LEGACY_QUANT_FILES.items():
            if not self.single_file and self.has(name):
                return parse_quant_config(self.json(name), name, default_method=method, where=f"{self.where}/{name}")
        return None


class LocalFiles(ModelFiles):
    """A model directory, or a single model file."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path).expanduser()
        self.where = self.name = str(self.path)
        self._names: list[str] | None = None

    @property
    def single_file(self) -> str | None:
        return self.path.name if self.path.is_file() else None

    def names(self) -> list[str]:
        if self._names is None:
            if self.path.is_file():
                self._names = [self.path.name]
            else:
                self._names = sorted(p.name for p in self.path.iterdir() if p.is_file()) if self.path.is_dir() \
                    else []
        return self._names

    def sizes(self) -> dict[str, int]:
        base = self.path.parent if self.path.is_file() else self.path
        return {n: (base / n).stat().st_size for n in self.names()}

    def read(self, name: str, limit: int | None = None) -> bytes:
        p = self.path if self.path.is_file() and name == self.path.name else self.path / name
        try:
            with open(p, "rb") as f:
                return f.read(-1 if limit is None else limit)
        except OSError as e:
            raise InvalidModel(f"cannot read {p} ({e.strerror or e}); check its permissions, or re-download the "
                               "model") from None
