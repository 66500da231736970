"""Decide what a pull fetches: the format (from the remote config, or GGUF files), the quant, and the files."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Callable

from ..errors import ModelNotFound, QuantDeployError, UnsupportedFormat, UsageError
from .quants import DEFAULT_QUANT, gguf_quants, select_quant
from .remote import Hub, RemoteFile, RemoteRepo
from .store import DEFAULT_REVISION

FORMATS = ("gptq", "awq", "gguf")
# What transformers / gptqmodel read to load a GPTQ or AWQ checkpoint; everything else stays on the hub.
LOAD_FILES = frozenset({
    "config.json", "generation_config.json", "quantize_config.json", "quant_config.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "chat_template.jinja", "chat_template.json",
})
LOAD_SUFFIXES = (".safetensors", ".safetensors.index.json", ".tiktoken")
# The model card and the license terms travel with the weights (upper-case globs on the base name).
CARD_FILES = ("README*", "LICENSE*", "LICENCE*", "NOTICE*", "USE_POLICY*")
CONFIG_FILES = ("config.json", "quantize_config.json", "quant_config.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class Plan:
    repo: RemoteRepo
    format: str
    quant: str | None  # GGUF quant tag
    tag: str | None  # the part after ':' in the pulled name (quant, or a non-main revision)
    variant: str  # directory name in the store
    files: list[RemoteFile]
    model_file: str | None  # GGUF: the file to load (first split part); GPTQ/AWQ: None, the directory
    note: str | None = None  # one line to tell the user before fetching (a default the pull chose for them)

    @property
    def name(self) -> str:
        return f"{self.repo.repo_id}:{self.tag}" if self.tag else self.repo.repo_id

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def _matches(path: str, patterns: list[str]) -> bool:
    name = PurePosixPath(path).name
    return any(fnmatch(path, p) or fnmatch(name, p) for p in patterns)


def _apply_globs(repo: RemoteRepo, chosen: list[RemoteFile], include: list[str],
                 exclude: list[str]) -> list[RemoteFile]:
    """--include adds files (and wins over --exclude); --exclude drops files from the default selection."""
    keep = {f.path for f in chosen if not _matches(f.path, exclude)}
    keep |= {f.path for f in repo.files if include and _matches(f.path, include)}
    return [f for f in repo.files if f.path in keep]


def _variant(revision: str) -> str:
    return revision.replace("/", "--")


Local = Callable[[str, RemoteFile], "Path | None"]  # (variant, file) -> a verified local copy, if one exists


def plan_pull(hub: Hub, repo: RemoteRepo, *, tag: str | None, revision: str | None, fmt: str | None,
              include: list[str], exclude: list[str], local: Local | None = None) -> Plan:
    if fmt is not None and fmt.lower() not in FORMATS:
        raise UsageError(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    fmt = fmt.lower() if fmt else None
    quants = gguf_quants(list(repo.files))
    if quants and fmt in (None, "gguf"):
        return _plan_gguf(repo, quants, tag, include, exclude)
    if fmt == "gguf":
        raise UnsupportedFormat(f"--format gguf, but {repo.repo_id} has no GGUF files")
    if quants and not any(repo.file(name) for name in CONFIG_FILES):
        raise UsageError(f"--format {fmt} does not match {repo.repo_id}: it is a GGUF repo "
                         "(drop --format or pass --format gguf)")
    if tag is not None:
        if revision is not None and revision != tag:
            raise UsageError(f"{repo.repo_id}:{tag} and --revision {revision} disagree; pass one of them")
        if revision is None:
            repo = hub.repo(repo.repo_id, tag)  # GPTQ/AWQ: the tag names a branch, e.g. gptq-4bit-32g-actorder_True
    return _plan_checkpoint(hub, repo, fmt, include, exclude, local or (lambda variant, f: None))


def _plan_gguf(repo: RemoteRepo, quants, tag: str | None, include: list[str], exclude: list[str]) -> Plan:
    quant = select_quant(quants, tag, repo.repo_id)
    files = _apply_globs(repo, list(quant.files), include, exclude)
    dropped = [f.path for f in quant.files if f not in files]
    if dropped:
        raise UsageError(f"--exclude would drop {', '.join(dropped)}, needed to load {repo.repo_id}:{quant.tag}")
    note = None
    if tag is None and quant.tag.upper() != DEFAULT_QUANT:
        note = (f"{repo.repo_id} has no {DEFAULT_QUANT}: pulling {quant.tag}, the first of the default order it has "
                f"(name another as {repo.repo_id}:QUANT; --list shows them)")
    return Plan(repo=repo, format="gguf", quant=quant.tag, tag=quant.tag, variant=quant.tag, files=files,
                model_file=quant.model_file, note=note)


def _plan_checkpoint(hub: Hub, repo: RemoteRepo, fmt: str | None, include: list[str], exclude: list[str],
                     local: Local) -> Plan:
    root = [f for f in repo.files if "/" not in f.path]
    chosen = [f for f in root if f.path in LOAD_FILES or f.path.endswith(LOAD_SUFFIXES)
              or any(fnmatch(f.path.upper(), p) for p in CARD_FILES)]
    if not any(f.path in CONFIG_FILES for f in chosen):
        raise UnsupportedFormat(f"{repo.repo_id} has neither GGUF files nor a config.json: quantdeploy pulls GPTQ, "
                                "AWQ and GGUF repos")
    detected = detect_remote_format(hub, repo, lambda f: local(_variant(repo.revision), f))
    if fmt and fmt != detected:
        raise UsageError(f"--format {fmt} does not match {repo.repo_id}: it is a {detected.upper()} repo "
                         f"(drop --format or pass --format {detected})")
    files = _apply_globs(repo, chosen, include, exclude)
    if not any(f.path.endswith(".safetensors") for f in files):
        pickles = [f.path for f in root if f.path.endswith(PICKLE_SUFFIXES)]
        if pickles and not any(f.path in pickles for f in files):
            raise UnsupportedFormat(
                f"{repo.repo_id} ships only pickle weights ({', '.join(pickles[:3])}), which can run code when "
                "loaded; fetch them with --include '*.bin' and load with --allow-pickle if you trust the repo")
        if not pickles:
            raise ModelNotFound(f"{repo.repo_id}@{repo.revision} has no weights (*.safetensors)")
    tag = None if repo.revision == DEFAULT_REVISION else _variant(repo.revision)
    return Plan(repo=repo, format=detected, quant=None, tag=tag, variant=_variant(repo.revision), files=files,
                model_file=None)


def detect_remote_format(hub: Hub, repo: RemoteRepo, local: Callable[[RemoteFile], Path | None]) -> str:
    """GPTQ or AWQ, read from the repo's config files by the same detector that checks local models. Config files
    an earlier pull already verified (same git blob id) are read from disk instead of fetched again."""
    from ..registry import detect_format
    from .download import fetch

    with tempfile.TemporaryDirectory(prefix="quantdeploy-config-") as tmp:
        for name in CONFIG_FILES:
            f = repo.file(name)
            if f is None:
                continue
            copy = local(f)
            if copy is not None:
                shutil.copyfile(copy, Path(tmp, name))
            else:
                part = Path(tmp, "partial", name)
                fetch(hub, repo, f, part)
                part.rename(Path(tmp, name))
        try:
            return detect_format(Path(tmp))
        except QuantDeployError as e:
            raise type(e)(str(e).replace(str(Path(tmp)), f"{repo.repo_id}@{repo.revision}")) from None
