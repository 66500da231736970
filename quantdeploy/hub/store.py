"""The local model store: $QUANTDEPLOY_HOME/models/<org>/<repo>/<variant>/, one manifest per pulled model.

A variant is a GGUF quant (`Q4_K_M`) or, for GPTQ/AWQ, a revision (`main`, `gptq-4bit-32g-actorder_True`).
Each variant directory holds the model files as the repo lays them out, plus `.quantdeploy/`:
  manifest.json   written last, only after every file was verified: its presence means "complete"
  pull.json       what an unfinished pull is fetching and which files it already verified
  partial/        bytes of files still downloading (kept across Ctrl-C and kills: the next pull resumes)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import ModelNotFound, UsageError
from .safety import check_repo_id, check_tag, inside

META = ".quantdeploy"
MANIFEST = "manifest.json"
PENDING = "pull.json"
DEFAULT_REVISION = "main"


def parse_name(name: str) -> tuple[str, str | None]:
    """`org/repo` or `org/repo:TAG` -> (repo id, tag), both checked for anything that could escape the store."""
    repo_id, sep, tag = name.partition(":")
    check_repo_id(repo_id)
    if sep:
        check_tag(tag, "tag")
    return repo_id, (tag or None)


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one. (No fsync: on ext4 it would flush
    the whole download's dirty pages; after a power loss a truncated manifest reads as "incomplete" and the next
    pull re-verifies.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Entry:
    root: Path
    manifest: dict | None
    pending: dict | None

    @property
    def info(self) -> dict:
        return self.manifest or self.pending or {}

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    @property
    def name(self) -> str:
        return self.info.get("name") or self.root.name

    @property
    def repo_id(self) -> str:
        return self.info.get("repo", "")

    @property
    def tag(self) -> str | None:
        return self.info.get("tag")

    @property
    def model_path(self) -> Path:
        rel = self.info.get("model_file")
        return inside(self.root, PurePosixPath(rel)) if rel else self.root

    @property
    def size(self) -> int:
        return sum(int(f.get("size", 0)) for f in self.info.get("files", []))

    def missing_files(self) -> list[str]:
        """Files the manifest lists that are gone or changed size since the pull (a cheap check, no hashing)."""
        out = []
        for f in (self.manifest or {}).get("files", []):
            p = self.root / f["path"]
            if not p.is_file() or p.stat().st_size != f["size"]:
                out.append(f["path"])
        return out

    def as_dict(self) -> dict:
        d = {"name": self.name, "complete": self.complete, "path": str(self.model_path), "dir": str(self.root),
             "size_bytes": self.size}
        for k in ("repo", "revision", "commit", "format", "quant", "pulled_at", "source"):
            d[k] = self.info.get(k)
        if not self.complete:
            d["status"] = "incomplete: run `quantdeploy pull` with the same name to resume"
        elif self.missing_files():
            d["status"] = "damaged: files are missing or changed; pull it again"
        else:
            d["status"] = "ok"
        d["files"] = self.info.get("files", [])
        return d


def entry_at(root: Path) -> Entry | None:
    meta = root / META
    manifest, pending = read_json(meta / MANIFEST), read_json(meta / PENDING)
    if manifest is None and pending is None:
        return None
    return Entry(root, manifest, pending)


class Store:
    def __init__(self, home: Path):
        self.home = Path(home)
        self.models = self.home / "models"

    def variant_dir(self, repo_id: str, variant: str) -> Path:
        check_repo_id(repo_id)
        check_tag(variant, "variant")
        org, name = repo_id.split("/")
        return inside(self.models, PurePosixPath(org, name, variant))

    def entries(self) -> list[Entry]:
        if not self.models.is_dir():
            return []
        found = (entry_at(d) for d in sorted(self.models.glob("*/*/*")) if d.is_dir())
        return [e for e in found if e is not None]

    def lookup(self, name: str, *, complete_only: bool = True) -> Entry | None:
        """The entry a pulled name means. `org/repo` alone picks its only variant, `main`, or Q4_K_M."""
        from ..backends.gguf_quants import DEFAULT_QUANT

        repo_id, tag = parse_name(name)
        same = [e for e in self.entries() if e.repo_id.lower() == repo_id.lower()
                and (e.complete or not complete_only)]
        if tag is not None:
            want = tag.upper()
            hits = [e for e in same if (e.tag or DEFAULT_REVISION).upper() == want]
            hits = hits or [e for e in same if (e.tag or "").upper().removeprefix("UD-") == want.removeprefix("UD-")]
            return hits[0] if hits else None
        if len(same) <= 1:
            return same[0] if same else None
        for e in same:
            if e.tag is None or e.tag == DEFAULT_QUANT:
                return e
        names = ", ".join(e.name for e in same)
        raise UsageError(f"{repo_id} is pulled in several variants ({names}); name one of them")

    def remove(self, name: str) -> Entry:
        entry = self.lookup(name, complete_only=False)
        if entry is None:
            pulled = ", ".join(e.name for e in self.entries()) or "none"
            raise ModelNotFound(f"no pulled model named {name} (pulled: {pulled}); `quantdeploy list` shows them")
        shutil.rmtree(entry.root)
        for parent in (entry.root.parent, entry.root.parent.parent):
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
        return entry


def store_from_settings() -> Store:
    from ..settings import get_settings

    return Store(get_settings().home)


def resolve_or_pull(name: str, fmt: str | None = None) -> Path:
    """The local path of a pulled model name (`org/repo` or `org/repo:Q4_K_M`), pulling it first if needed.

    Called by `quantdeploy.models.resolve_model` for every command that takes MODEL. Progress goes to stderr.
    """
    store = store_from_settings()
    entry = store.lookup(name)
    if entry is not None:
        if entry.missing_files():
            raise ModelNotFound(f"{entry.name} is damaged (missing or changed files: "
                                f"{', '.join(entry.missing_files()[:3])}); run `quantdeploy pull {entry.name}` again")
        return entry.model_path
    from .pull import PullRequest, pull

    return pull(PullRequest(name=name, fmt=fmt)).model_path
