"""Check a GPTQ/AWQ checkpoint's files before anything heavy is imported or loaded: a missing or malformed file is
one InvalidModel that names it and says what to do. Reads JSON files and safetensors headers only, never weights,
so a broken download fails in a fraction of a second instead of after torch, transformers and gptqmodel load."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from ..checkpoint import LocalFiles, ModelFiles
from ..errors import InvalidModel

REDOWNLOAD = "re-download the model"
# Any one of these is a tokenizer transformers can load (vocab.json goes with merges.txt).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
TOKENIZER_SUFFIXES = (".tiktoken",)
# Read when present; each must be a JSON object.
OPTIONAL_JSON = ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "chat_template.json")
QUANT_BITS = (2, 3, 4, 8)
MAX_JSON_BYTES = 256 << 20  # larger than any tokenizer.json; a bigger "JSON" file is not one
MAX_SAFETENSORS_HEADER = 100 << 20
JSON_PROBE = 4096  # bytes read at each end of a large JSON file  # the limit the safetensors library itself enforces


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from path, or InvalidModel naming the file."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise InvalidModel(f"{path} is not a JSON file ({size} bytes); {REDOWNLOAD}")
        data = json.loads(path.read_bytes().decode("utf-8"))
    except IsADirectoryError:
        raise InvalidModel(f"{path} is a directory, not a JSON file; {REDOWNLOAD}") from None
    except OSError as e:
        raise InvalidModel(f"cannot read {path} ({e.strerror}); check its permissions, or {REDOWNLOAD}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModel(f"{path} is not valid JSON ({e}); {REDOWNLOAD}") from None
    if not isinstance(data, dict):
        raise InvalidModel(f"{path} is not a JSON object; {REDOWNLOAD}")
    return data


def check_checkpoint(path: Path, fmt: str, *, allow_pickle: bool, files: ModelFiles | None = None) -> None:
    """Every file a GPTQ/AWQ load reads, checked in the order the load reads them. `files`: the model's files as
    detection read them (the config files are parsed once, here and in the load)."""
    from .hf_files import weight_files

    files = files or LocalFiles(path)
    if not path.is_dir():
        raise InvalidModel(f"{path}: a {fmt.upper()} model is a directory with config.json, a tokenizer and "
                           "*.safetensors weights")
    config = path / "config.json"
    if not config.is_file():
        raise InvalidModel(f"{path} has no config.json (the model's architecture); copy it from the model's "
                           f"original repo, or {REDOWNLOAD}")
    cfg = files.config or {}
    if not isinstance(cfg.get("model_type"), str) or not cfg["model_type"]:
        raise InvalidModel(f"{config} has no model_type, so the architecture is unknown; {REDOWNLOAD}")
    _check_quant_config(path, files)
    for name in OPTIONAL_JSON:
        if (path / name).exists():
            files.json(name)
    for f in weight_files(path, allow_pickle):
        if f.suffix == ".safetensors":
            check_safetensors(f)
    index = path / "model.safetensors.index.json"
    if index.exists():
        _check_index(index)
    _check_tokenizer(path)


def _check_quant_config(path: Path, files: ModelFiles) -> None:
    """The parsed quantization config (checkpoint.py checks every value's type) has a width GPTQ/AWQ use."""
    quant = files.quant
    if quant is None:
        raise InvalidModel(f"{path} declares no quantization config (config.json quantization_config, "
                           f"quantize_config.json or quant_config.json); {REDOWNLOAD}")
    if quant.bits not in QUANT_BITS:
        raise InvalidModel(f"{path / quant.source}: bits is {quant.bits!r}; a GPTQ/AWQ checkpoint has "
                           f"{', '.join(map(str, QUANT_BITS[:-1]))} or {QUANT_BITS[-1]}-bit weights. Fix the file "
                           f"or {REDOWNLOAD}")


def _check_tokenizer(path: Path) -> None:
    found = [path / n for n in TOKENIZER_FILES if (path / n).is_file()]
    found += [f for f in path.iterdir() if f.suffix in TOKENIZER_SUFFIXES and f.is_file()]
    if not found:
        raise InvalidModel(f"{path} has no tokenizer ({', '.join(TOKENIZER_FILES)}); copy the tokenizer files from "
                           f"the model's original repo, or {REDOWNLOAD}")
    for name in ("tokenizer.json", "vocab.json"):
        if (path / name).is_file():
            _check_json_ends(path / name)
    if (path / "vocab.json").is_file():
        if not (path / "merges.txt").is_file() and not (path / "tokenizer.json").is_file():
            raise InvalidModel(f"{path} has vocab.json but no merges.txt (the BPE merges go with it); {REDOWNLOAD}")
    for f in found:
        if f.stat().st_size == 0:
            raise InvalidModel(f"{f} is empty; {REDOWNLOAD}")


def _check_json_ends(path: Path) -> None:
    """A large JSON object (tokenizer.json is tens of MB: parsing it takes seconds, and the tokenizer parses it
    again) checked by its ends: `{` first and `}` last catch an empty, truncated or non-JSON file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(JSON_PROBE).lstrip()
        f.seek(max(0, size - JSON_PROBE))
        tail = f.read().rstrip()
    if not head.startswith(b"{") or not tail.endswith(b"}"):
        raise InvalidModel(f"{path} is not a complete JSON file ({size} bytes); {REDOWNLOAD}")


def check_safetensors(f: Path) -> None:
    """The header of a .safetensors file: its length, its JSON, and that the file holds every byte it describes."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or n == 0 or n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise InvalidModel(f"{f} is not a safetensors file, or it is truncated ({size} bytes); {REDOWNLOAD}")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidModel(f"{f} has a damaged safetensors header; {REDOWNLOAD}") from None
    if not isinstance(header, dict):
        raise InvalidModel(f"{f} has a damaged safetensors header; {REDOWNLOAD}")
    try:
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (KeyError, IndexError, TypeError, ValueError):
        raise InvalidModel(f"{f} has a damaged safetensors header; {REDOWNLOAD}") from None
    if not ends:
        raise InvalidModel(f"{f} holds no tensors; {REDOWNLOAD}")
    need = 8 + n + max(ends)
    if need > size:
        raise InvalidModel(f"{f} is truncated ({size} of {need} bytes); {REDOWNLOAD}")


def _check_index(index: Path) -> None:
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidModel(f"{index} has no weight_map; {REDOWNLOAD}")
    missing = sorted({str(v) for v in weight_map.values()} - {p.name for p in index.parent.iterdir()})
    if missing:
        raise InvalidModel(f"{index} lists shards that are missing: {', '.join(missing[:3])}; {REDOWNLOAD}")
