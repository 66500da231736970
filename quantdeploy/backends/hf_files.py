"""What an HF-format quantized checkpoint (GPTQ, AWQ) consists of: the files loading reads, hence the files a pull
fetches, and its weights (safetensors; pickles only when the user trusts them)."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from ..chat.templates import END_OF_TURN_TOKENS
from ..checkpoint import QuantConfig
from ..errors import InvalidModel, ModelNotFound, UnsupportedFormat, UsageError
from .base import ModelFiles, ModelSpec, PullChoice
from .hf_check import read_json_object

# What transformers / gptqmodel read to load a GPTQ or AWQ checkpoint; everything else stays on the hub.
LOAD_FILES = frozenset({
    "config.json", "generation_config.json", "quantize_config.json", "quant_config.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "chat_template.jinja", "chat_template.json",
})
LOAD_SUFFIXES = (".safetensors", ".safetensors.index.json", ".tiktoken")
# The model card and the license terms travel with the weights (upper-case globs on the base name).
CARD_FILES = ("README*", "LICENSE*", "LICENCE*", "NOTICE*", "USE_POLICY*")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_SUFFIX = ".safetensors"


def pull_choice(files: ModelFiles) -> PullChoice:
    """The repo's top-level files that loading reads, plus its card and license."""
    root = [n for n in files.names() if "/" not in n]
    return PullChoice(files=[n for n in root if n in LOAD_FILES or n.endswith(LOAD_SUFFIXES)
                             or any(fnmatch(n.upper(), p) for p in CARD_FILES)])


def pull_check(files: ModelFiles, selected: list[str]) -> None:
    """Refuse a pull that would fetch no loadable weights: safetensors, or pickles the user asked for."""
    if any(n.endswith(WEIGHT_SUFFIX) for n in selected):
        return
    pickles = [n for n in files.names() if "/" not in n and n.endswith(PICKLE_SUFFIXES)]
    if pickles and not any(n in pickles for n in selected):
        raise UnsupportedFormat(
            f"{files.name} ships only pickle weights ({', '.join(pickles[:3])}), which can run code when loaded; "
            "fetch them with --include '*.bin' and load with --allow-pickle if you trust the repo")
    if not pickles:
        raise ModelNotFound(f"{files.where} has no weights (*{WEIGHT_SUFFIX})")


def weight_files(path: Path, allow_pickle: bool) -> list[Path]:
    """The checkpoint's weight files; pickles only with allow_pickle (they can run code when loaded)."""
    st = sorted(path.glob(f"*{WEIGHT_SUFFIX}"))
    if st:
        return st
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES) if path.is_dir() else []
    if pickles and not allow_pickle:
        raise InvalidModel(f"{path} has only pickle weights ({pickles[0].name}), which can run code when loaded; "
                           "pass --allow-pickle if you trust the source")
    if not pickles:
        raise InvalidModel(f"{path} has no weights (*{WEIGHT_SUFFIX}); the download may be incomplete")
    return pickles


def require_config(files: ModelFiles, fmt: str) -> tuple[dict, QuantConfig]:
    """(config.json, QuantConfig) of a checkpoint the registry detected, or the error that says what is missing."""
    if files.single_file:
        raise InvalidModel(f"{files.where}: a {fmt.upper()} model is a directory with config.json and weights")
    cfg = files.config
    if cfg is None:
        raise InvalidModel(f"{files.where} has no config.json; re-download the model")
    quant = files.quant
    if quant is None or quant.method != fmt:
        found = f"quant_method '{quant.method}'" if quant else "no quantization config"
        raise UsageError(f"{files.where} is not a {fmt.upper()} checkpoint ({found}); drop --format")
    return cfg, quant


# --- inspect --------------------------------------------------------------------------------------------

def describe_checkpoint(spec: ModelSpec) -> dict[str, Any]:
    """What `quantdeploy inspect` shows of a GPTQ / AWQ checkpoint: read from its config files, no weights."""
    p, files = spec.path, spec.model_files()
    cfg, quant = require_config(files, spec.format)
    tok_cfg = files.json("tokenizer_config.json") or {}
    gen_cfg = files.json("generation_config.json") or {}
    template = bool(tok_cfg.get("chat_template")) or (p / "chat_template.jinja").is_file() \
        or (p / "chat_template.json").is_file()
    text_cfg = cfg.get("text_config") or cfg
    return {
        "architecture": (cfg.get("architectures") or [cfg.get("model_type")])[0],
        "model_type": cfg.get("model_type"),
        "context_length": text_cfg.get("max_position_embeddings"),
        "layers": text_cfg.get("num_hidden_layers"),
        "quantization": quant.summary(),
        "chat_template": template,
        "stop_tokens": _hf_stop_tokens(p, cfg, gen_cfg, tok_cfg),
        "weights": sorted(f.name for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt")),
    }


def _hf_stop_tokens(p: Path, cfg: dict, gen_cfg: dict, tok_cfg: dict) -> list[str]:
    ids: set[int] = set()
    for src in (gen_cfg, cfg):
        v = src.get("eos_token_id")
        ids.update(v if isinstance(v, list) else [v] if isinstance(v, int) else [])
    tok_json = read_json_object(p / "tokenizer.json") if (p / "tokenizer.json").is_file() else {}
    added = {t.get("id"): t.get("content") for t in tok_json.get("added_tokens") or [] if isinstance(t, dict)}
    names = {added[i] for i in ids if i in added}
    eos = tok_cfg.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    if eos:
        names.add(eos)
    names.update(t for t in added.values() if t in END_OF_TURN_TOKENS)
    return sorted(names)
