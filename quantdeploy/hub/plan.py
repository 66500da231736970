"""Decide what a pull fetches. The backends decide, as for local models: the registry detects the format from the
repo's listing and the small config files a detector reads (fetched on demand), and the detected backend chooses
the variant (a GGUF quant) and the files loading needs. This module knows no format."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Callable

from ..checkpoint import ModelFiles
from ..errors import InvalidModel, ModelNotFound, UsageError
from ..registry import check_requested, get_backend, identify
from ..units import human_bytes
from .remote import Hub, RemoteFile, RemoteRepo, RevisionNotFound
from .store import DEFAULT_REVISION

# Detection reads config files; a file this large is not one (and is not fetched to find out).
DETECT_READ_LIMIT = 4 << 20


@dataclass
class Plan:
    repo: RemoteRepo
    format: str
    quant: str | None  # the variant `org/repo:TAG` names inside the revision (a GGUF quant), if the format has them
    tag: str | None  # the part after ':' in the pulled name (variant, or a non-main revision)
    variant: str  # directory name in the store
    files: list[RemoteFile]
    model_file: str | None  # the file to load (a GGUF's first split part); None: the directory
    note: str | None = None  # one line to tell the user before fetching (a default the pull chose for them)

    @property
    def name(self) -> str:
        return f"{self.repo.repo_id}:{self.tag}" if self.tag else self.repo.repo_id

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


Local = Callable[[str, RemoteFile], "Path | None"]  # (variant, file) -> a verified local copy, if one exists


class RemoteFiles(ModelFiles):
    """A repo at one revision, as detection sees it: the listing, and the small files a detector reads, fetched
    when first read (or read from a verified copy an earlier pull left)."""

    noun = "repo"

    def __init__(self, hub: Hub, repo: RemoteRepo, local: Callable[[RemoteFile], Path | None]):
        super().__init__()
        self.hub, self.repo, self.local = hub, repo, local
        self.where, self.name = f"{repo.repo_id}@{repo.revision}", repo.repo_id

    @property
    def single_file(self) -> str | None:
        return None

    def names(self) -> list[str]:
        return [f.path for f in self.repo.files]

    def sizes(self) -> dict[str, int]:
        return {f.path: f.size for f in self.repo.files}

    def read(self, name: str, limit: int | None = None) -> bytes:
        from .download import fetch

        f = self.repo.file(name)
        if f is None:
            raise ModelNotFound(f"{self.where} has no file {name}")
        copy = self.local(f)
        if copy is not None:
            data = copy.read_bytes()
        elif f.size > DETECT_READ_LIMIT:
            raise InvalidModel(f"{self.where}/{name} is {human_bytes(f.size)}: too large to read for detection")
        else:
            with tempfile.TemporaryDirectory(prefix="quantdeploy-detect-") as tmp:
                part = Path(tmp, "file.part")
                fetch(self.hub, self.repo, f, part)
                data = part.read_bytes()
        return data if limit is None else data[:limit]


def _matches(path: str, patterns: list[str]) -> bool:
    name = PurePosixPath(path).name
    return any(fnmatch(path, p) or fnmatch(name, p) for p in patterns)


def _apply_globs(repo: RemoteRepo, chosen: list[str], include: list[str], exclude: list[str]) -> list[RemoteFile]:
    """--include adds files (and wins over --exclude); --exclude drops files from the default selection."""
    keep = {p for p in chosen if not _matches(p, exclude)}
    keep |= {f.path for f in repo.files if include and _matches(f.path, include)}
    return [f for f in repo.files if f.path in keep]


def _variant(revision: str) -> str:
    return revision.replace("/", "--")


def resolve_tag(hub: Hub, repo: RemoteRepo, tag: str | None, revision: str | None) -> tuple[RemoteRepo, str | None]:
    """`org/repo:TAG` names a branch, tag or commit when the repo has one; otherwise a variant inside the revision
    (a GGUF quant), which the detected backend picks. Returns the repo at the right revision and the variant tag."""
    if tag is None or revision is not None:
        return repo, tag
    try:
        return hub.repo(repo.repo_id, tag), None
    except RevisionNotFound:
        return repo, tag


def remote_files(hub: Hub, repo: RemoteRepo, local: Local | None = None) -> RemoteFiles:
    local = local or (lambda variant, f: None)
    return RemoteFiles(hub, repo, lambda f: local(_variant(repo.revision), f))


def plan_pull(hub: Hub, repo: RemoteRepo, *, tag: str | None, revision: str | None, fmt: str | None,
              include: list[str], exclude: list[str], local: Local | None = None) -> Plan:
    fmt = check_requested(fmt)
    repo, wanted = resolve_tag(hub, repo, tag, revision)
    files = remote_files(hub, repo, local)
    detected = identify(files, fmt)
    backend = get_backend(detected)
    choice = backend.pull_choice(files, wanted)
    if wanted is not None and choice.variant is None and wanted != revision:
        if revision is not None:
            raise UsageError(f"{repo.repo_id}:{tag} and --revision {revision} disagree; pass one of them")
        raise ModelNotFound(f"{repo.repo_id} has no revision '{tag}' at {hub.where} (check the branch or commit)")
    selected = _apply_globs(repo, choice.files, include, exclude)
    backend.pull_check(files, choice, [f.path for f in selected])
    if choice.variant is not None:
        tag = variant = choice.variant
    else:
        variant = _variant(repo.revision)
        tag = None if repo.revision == DEFAULT_REVISION else variant
    return Plan(repo=repo, format=detected, quant=choice.variant, tag=tag, variant=variant, files=selected,
                model_file=choice.model_file, note=choice.note)
