"""The files of `quantdeploy generate`: the input (one request per line) and the output, which is only ever
appended to in whole lines, so that a run killed at any moment leaves a file the next run can resume from.

A line is written with one `write()` of its bytes, newline included, to a file opened for appending; a line cut
off anyway (a full disk, a kill inside a huge write) can only be the last one, and the next run repairs it: kept
(newline added) when it is a complete result, dropped otherwise. Rewrites (reordering, --retry-errors) go to a
temporary file that replaces the output in one rename.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import UsageError
from .requests import id_key, line_id, valid_id


def input_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line) for every line that is not blank."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                yield lineno, raw


def scan_input(path: Path) -> list[str]:
    """The id key of every request, in input order; an input whose ids repeat is refused before anything runs."""
    seen: dict[str, int] = {}
    for lineno, raw in input_lines(path):
        key = id_key(line_id(raw, lineno))
        if key in seen:
            raise UsageError(f"{path}: line {lineno} has the id {key}, like line {seen[key]}; ids must be unique "
                             "(the output is matched to the input by id)")
        seen[key] = lineno
    if not seen:
        raise UsageError(f"{path} holds no requests; write one JSON object per line, e.g. "
                         '{"prompt": "Once upon a time"} or {"messages": [{"role": "user", "content": "Hi"}]}')
    return list(seen)


@dataclass
class OutputState:
    done: dict[str, bool] = field(default_factory=dict)  # id key -> the line is an error
    repaired: str | None = None  # what was done to a cut-off last line


def _result_line(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and valid_id(obj.get("id")) and ("error" in obj or "text" in obj) else None


def scan_output(path: Path) -> OutputState:
    """What an earlier run wrote (nothing when the file does not exist); repairs a cut-off last line."""
    state = OutputState()
    if not path.exists():
        return state
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # the last line has no newline
        tail = data[end:]
        if tail.strip() and _result_line(tail) is not None:
            with open(path, "ab") as f:
                f.write(b"\n")
            state.repaired = "completed its last line (a newline was missing)"
            end = len(data)
        else:
            with open(path, "r+b") as f:
                f.truncate(end)
            state.repaired = f"dropped a cut-off last line ({len(tail)} bytes) from an interrupted run"
    for lineno, raw in enumerate(data[:end].splitlines(), 1):
        if not raw.strip():
            continue
        obj = _result_line(raw)
        if obj is None:
            raise UsageError(f"{path}: line {lineno} is not a result of `quantdeploy generate`; pass another "
                             "--output (the output file is appended to, and a rerun resumes from it)")
        state.done.setdefault(id_key(obj["id"]), "error" in obj)
    return state


class Appender:
    """Appends whole JSON lines; a failed write is undone, so the file never ends in half a line."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"cannot write {path}: {e.strerror}") from None

    def write(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        start = os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            os.ftruncate(self._fd, start)
            raise UsageError(f"cannot write {self.path}: {e.strerror}") from None

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1


def _rewrite(path: Path, lines: list[bytes]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot rewrite {path}: {e.strerror}") from None


def _lines(path: Path) -> list[tuple[str, bool, bytes]]:
    """(id key, is an error, raw line) of every line of an output that scan_output accepted."""
    out = []
    for raw in path.read_bytes().splitlines(keepends=True):
        obj = _result_line(raw)
        if obj is not None:
            out.append((id_key(obj["id"]), "error" in obj, raw))
    return out


def drop_errors(path: Path, keys: list[str]) -> int:
    """Remove the error lines of these ids (to run them again); returns how many were removed."""
    if not path.exists():
        return 0
    wanted = set(keys)
    lines = _lines(path)
    keep = [raw for key, err, raw in lines if not (err and key in wanted)]
    if len(keep) != len(lines):
        _rewrite(path, keep)
    return len(lines) - len(keep)


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    missing: int = 0
    reordered: bool = False


def finalize(path: Path, keys: list[str]) -> Tally:
    """Put the output in input order (lines of ids not in the input last) if it is not already, and count."""
    tally = Tally()
    lines = _lines(path) if path.exists() else []
    rank = {k: i for i, k in enumerate(keys)}
    order = sorted(range(len(lines)), key=lambda i: (rank.get(lines[i][0], len(rank)), i))
    if order != list(range(len(lines))):
        _rewrite(path, [lines[i][2] for i in order])
        tally.reordered = True
    found: dict[str, bool] = {}
    for key, err, _ in lines:
        if key in rank:
            found.setdefault(key, err)
    tally.errors = sum(found.values())
    tally.ok = len(found) - tally.errors
    tally.missing = len(keys) - len(found)
    return tally
