"""Names that become paths: repo ids, tags, revisions and the file names a hub returns.

Everything a user typed or a server sent is checked here before it is joined to a local path, so that nothing
(`..`, an absolute path, a backslash, a control character) can write outside the store.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from ..errors import DownloadError, UsageError

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _show(text: str) -> str:
    """Quote a rejected value for an error message without echoing control characters to the terminal."""
    return repr(text)[1:-1] if _CONTROL.search(text) else text


def check_repo_id(repo_id: str) -> str:
    """`org/name` with hub-legal characters; raises UsageError naming the problem."""
    problem = None
    if _CONTROL.search(repo_id):
        problem = "control characters"
    elif "\\" in repo_id:
        problem = "a backslash"
    elif repo_id.startswith("/"):
        problem = "an absolute path"
    elif ".." in repo_id:
        problem = "'..'"
    elif repo_id.count("/") != 1:
        problem = "not of the form org/name"
    else:
        org, name = repo_id.split("/")
        if not (_REPO_PART.match(org) and _REPO_PART.match(name)):
            problem = "characters other than letters, digits, '-', '_' and '.'"
        elif name.endswith(".git") or "--" in repo_id:
            problem = "'--' or a '.git' suffix"
    if problem:
        raise UsageError(f"invalid repo id '{_show(repo_id)}': {problem}; expected org/name, e.g. "
                         "unsloth/gemma-3-270m-it-GGUF")
    return repo_id


def check_tag(tag: str, what: str = "tag") -> str:
    """A quant tag or a revision used as a directory name."""
    if not _TAG.match(tag) or ".." in tag:
        raise UsageError(f"invalid {what} '{_show(tag)}': use letters, digits, '-', '_' and '.' "
                         "(e.g. Q4_K_M or gptq-4bit-32g-actorder_True)")
    return tag


def check_revision(revision: str) -> str:
    """A branch, tag or commit; `refs/pr/1` style slashes are fine, traversal and odd characters are not."""
    parts = revision.split("/")
    if (_CONTROL.search(revision) or "\\" in revision or not revision or revision.startswith("/")
            or any(p in ("", ".", "..") for p in parts) or not all(_TAG.match(p) for p in parts)):
        raise UsageError(f"invalid revision '{_show(revision)}': expected a branch, tag or commit "
                         "(letters, digits, '-', '_', '.', '/')")
    return revision


def check_remote_path(path: str, repo_id: str) -> PurePosixPath:
    """A file name from the hub's file listing, as a safe relative path (the hub is not trusted blindly)."""
    p = PurePosixPath(path)
    bad = (not path or _CONTROL.search(path) or "\\" in path or path.startswith("/") or re.match(r"^[A-Za-z]:", path)
           or p.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")))
    if bad:
        raise DownloadError(f"{repo_id}: the hub listed an unsafe file name '{_show(path)}' (absolute, '..', "
                            "backslash or control characters); refusing to pull this repo")
    return p


def inside(base: Path, relative: PurePosixPath) -> Path:
    """`base / relative`, refusing anything that resolves outside `base` (symlinks included)."""
    target = (base / Path(*relative.parts)).resolve()
    root = base.resolve()
    if target != root and root not in target.parents:
        raise DownloadError(f"refusing to write {relative}: it resolves outside {root}")
    return target
