"""GGUF quant tags: read them from file names, group split parts, pick the one the user asked for (a pull's
`org/repo:QUANT`, or the default when none is named)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from ..errors import ModelNotFound
from ..units import human_bytes
from .base import ModelFiles, PullChoice, PullOffer


class RepoFile(Protocol):
    """A file of a repo listing: the hub's RemoteFile, or any object with a path and a size."""

    path: str
    size: int

DEFAULT_QUANT = "Q4_K_M"
# No tag given: the first of these the repo has (Unsloth's `UD-` variants count as their plain tag). 4-bit first
# (the best quality for the size, then the smaller and the legacy 4-bit quants), then more bits (better, bigger),
# then fewer (smaller, worse), full precision last.
DEFAULT_PREFERENCE = (
    DEFAULT_QUANT, "Q4_K_S", "Q4_K_XL", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_1",
    "Q5_K_M", "Q5_K_S", "Q5_K_XL", "Q5_0", "Q5_1", "Q6_K", "Q6_K_XL", "Q8_0", "Q8_K_XL",
    "Q3_K_XL", "Q3_K_L", "Q3_K_M", "IQ3_M", "Q3_K_S", "IQ3_S", "IQ3_XS", "IQ3_XXS",
    "Q2_K_XL", "Q2_K", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S",
    "BF16", "F16", "F32",
)

_QUANT = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:"
    r"I?Q[1-8]_(?:K|[0-9])(?:_[0-9]_[0-9])?(?:_(?:XXS|XS|XL|S|M|L|NL))?"
    r"|IQ[1-4]_(?:XXS|XS|NL|S|M|L)"
    r"|TQ[12]_0|MXFP4(?:_MOE)?|BF16|FP16|F16|F32))(?![A-Za-z0-9])",
    re.IGNORECASE)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_NOT_MODELS = ("mmproj", "imatrix")  # vision projectors and importance matrices are not the language model


def quant_tag(path: str) -> str | None:
    """The quant tag in a GGUF file name (or its folder), normalised: 'gemma-q4_k_m.gguf' -> 'Q4_K_M'."""
    p = PurePosixPath(path)
    stem = _SPLIT.sub("", p.name)
    stem = stem[:-5] if stem.lower().endswith(".gguf") else stem
    for text in (stem, p.parent.name):
        found = _QUANT.findall(text)
        if found:
            tag = found[-1].upper()
            return "F16" if tag == "FP16" else tag
    return None


def is_model_gguf(path: str) -> bool:
    name = PurePosixPath(path).name.lower()
    return name.endswith(".gguf") and not name.startswith(_NOT_MODELS)


def _core(tag: str) -> str:
    return tag[3:] if tag.startswith("UD-") else tag


@dataclass(frozen=True)
class GGUFQuant:
    tag: str
    files: tuple[RepoFile, ...]
    missing_parts: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def model_file(self) -> str:
        """The file llama.cpp opens: the single file, or the first part of a split set."""
        return self.files[0].path


def _sort_key(f: RepoFile) -> tuple:
    m = _SPLIT.search(f.path)
    return (_SPLIT.sub("", f.path), int(m.group(1)) if m else 0)


def _missing_parts(files: list[RepoFile]) -> tuple[str, ...]:
    sets: dict[str, tuple[int, set[int]]] = {}
    for f in files:
        m = _SPLIT.search(f.path)
        if m:
            total, parts = sets.setdefault(_SPLIT.sub("", f.path), (int(m.group(2)), set()))
            parts.add(int(m.group(1)))
    return tuple(f"{base}-{i:05d}-of-{total:05d}.gguf" for base, (total, parts) in sets.items()
                 for i in range(1, total + 1) if i not in parts)


def gguf_quants(files: list[RepoFile]) -> dict[str, GGUFQuant]:
    """Quant tag -> its files, for every model GGUF in a repo listing (smallest quant first)."""
    groups: dict[str, list[RepoFile]] = {}
    for f in files:
        if is_model_gguf(f.path):
            tag = quant_tag(f.path) or _SPLIT.sub("", PurePosixPath(f.path).name)[:-5]
            groups.setdefault(tag, []).append(f)
    quants = {t: GGUFQuant(t, tuple(sorted(fs, key=_sort_key)), _missing_parts(fs)) for t, fs in groups.items()}
    return dict(sorted(quants.items(), key=lambda kv: (kv[1].size, kv[0])))


def describe(quants: dict[str, GGUFQuant]) -> str:
    return ", ".join(f"{t} ({human_bytes(q.size)})" for t, q in quants.items())


def default_quant(quants: dict[str, GGUFQuant]) -> GGUFQuant | None:
    """The quant a pull without a tag takes: the first of DEFAULT_PREFERENCE the repo has (a plain tag before its
    `UD-` variant), or the repo's only quant; None if that leaves a choice the user must make. Quants the hub
    holds only some parts of are never picked."""
    complete = {t: q for t, q in quants.items() if not q.missing_parts}
    by_core: dict[str, list[GGUFQuant]] = {}
    for t, q in complete.items():
        by_core.setdefault(_core(t.upper()), []).append(q)
    for want in DEFAULT_PREFERENCE:
        if want in by_core:
            return min(by_core[want], key=lambda q: q.tag.upper().startswith("UD-"))
    return next(iter(complete.values())) if len(complete) == 1 else None


def select_quant(quants: dict[str, GGUFQuant], requested: str | None, repo_id: str) -> GGUFQuant:
    """The quant for `repo:TAG` (case and `UD-` insensitive), or default_quant() when no tag was given."""
    if not quants:
        raise ModelNotFound(f"{repo_id} has no GGUF model files")
    if requested is None:
        hit = default_quant(quants)
        if hit is None:
            raise ModelNotFound(f"{repo_id} has no quant quantdeploy picks by default; name one, e.g. {repo_id}:"
                                f"{next(iter(quants))}. Available: {describe(quants)}")
    else:
        want = requested.upper()
        by_upper = {t.upper(): q for t, q in quants.items()}
        hit = by_upper.get(want)
        if hit is None:
            cores = [q for t, q in quants.items() if _core(t.upper()) == _core(want)]
            hit = min(cores, key=lambda q: q.tag.upper().startswith("UD-")) if cores else None
        if hit is None:
            raise ModelNotFound(f"{repo_id} has no quant '{requested}'. Available: {describe(quants)}")
    if hit.missing_parts:
        raise ModelNotFound(f"{repo_id}:{hit.tag} is incomplete on the hub: missing {', '.join(hit.missing_parts)}")
    return hit


# --- what a pull fetches ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ListedFile:
    path: str
    size: int


def repo_quants(files: ModelFiles) -> dict[str, GGUFQuant]:
    return gguf_quants([ListedFile(p, n) for p, n in files.sizes().items()])


def pull_choice(files: ModelFiles, tag: str | None) -> PullChoice:
    """The quant `org/repo:TAG` names (or the default one) and its files, the first split part to load."""
    quant = select_quant(repo_quants(files), tag, files.name)
    note = None
    if tag is None and quant.tag.upper() != DEFAULT_QUANT:
        note = (f"{files.name} has no {DEFAULT_QUANT}: pulling {quant.tag}, the first of the default order it has "
                f"(name another as {files.name}:QUANT; --list shows them)")
    return PullChoice(files=[f.path for f in quant.files], model_file=quant.model_file, variant=quant.tag, note=note)


def pull_offers(files: ModelFiles) -> list[PullOffer]:
    quants = repo_quants(files)
    default = default_quant(quants)
    return [PullOffer(t if not q.missing_parts else f"{t} (incomplete on the hub)", q.size, [f.path for f in q.files],
                      q is default) for t, q in quants.items()]
