"""Fetch one file into a partial file that survives a restart, then verify it against the hub's hashes.

huggingface_hub does the HTTP: the HEAD that finds the CDN location (`get_hf_file_metadata`) and the streamed,
Range-resuming GET with its in-process retries (`http_get`). What it lacks, added here: the partial file is ours
and is kept on failure, Ctrl-C or kill, so the next run continues where this one stopped; 5xx answers and reset
connections are retried with backoff; and the bytes are hashed as they arrive and checked against the LFS sha256
(or the git blob id for small files) before anything calls them complete.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DownloadError
from .remote import Hub, RemoteFile, RemoteRepo, explain, is_retryable, with_backoff

_READ = 8 << 20


class _Incomplete(Exception):
    """The stream ended before the file was complete; the next attempt resumes from the partial file."""


@dataclass(frozen=True)
class Fetched:
    sha256: str
    size: int
    resumed_from: int  # bytes already on disk from an earlier, interrupted pull
    fetched: int  # bytes that came over the network in this call
    seconds: float


class _Digests:
    """sha256 of the content, and the git blob id for files that are not in LFS."""

    def __init__(self, f: RemoteFile):
        self.sha256 = hashlib.sha256()
        self.git = None if f.lfs else hashlib.sha1(b"blob %d\0" % f.size)

    def update(self, data) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)

    def update_from(self, path: Path, size: int) -> None:
        with open(path, "rb") as f:
            left = size
            while left > 0:
                chunk = f.read(min(_READ, left))
                if not chunk:
                    break
                self.update(chunk)
                left -= len(chunk)


class _HashingWriter:
    """The file object handed to `http_get`: every byte written is hashed on the way to disk."""

    def __init__(self, f, digests: _Digests):
        self._f, self._digests, self.rewound = f, digests, False

    def write(self, data) -> int:
        n = self._f.write(data)
        self._digests.update(data)
        return n

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, *args) -> int:  # http_get rewinds when a server ignores Range: rehash from disk then
        self.rewound = True
        return self._f.seek(*args)

    def truncate(self, *args) -> int:
        self.rewound = True
        return self._f.truncate(*args)

    def flush(self) -> None:
        self._f.flush()


def _retry_if(e: BaseException) -> bool:
    return isinstance(e, _Incomplete) or is_retryable(e)


def fetch(hub: Hub, repo: RemoteRepo, f: RemoteFile, part: Path, *, bar=None, on_retry=None) -> Fetched:
    """Download f to `part` (resuming what is there) and verify it. On a hash mismatch `part` is deleted."""
    from huggingface_hub.file_download import http_get

    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > f.size:
        part.unlink()
        have = 0
    digests = _Digests(f)
    if have:
        digests.update_from(part, have)
    t0 = time.perf_counter()

    def attempt() -> None:
        nonlocal digests
        location, headers = hub.locate(repo, f.path)
        with open(part, "ab") as out:
            writer = _HashingWriter(out, digests)
            try:
                http_get(location, writer, resume_size=out.tell(), headers=headers, expected_size=f.size,
                         displayed_filename=f.path, tqdm_class=bar)
            except OSError as e:
                if "Consistency check failed" not in str(e):
                    raise
        if writer.rewound:
            digests = _Digests(f)
            digests.update_from(part, part.stat().st_size)
        if part.stat().st_size < f.size:
            raise _Incomplete(f"{f.path}: {part.stat().st_size} of {f.size} bytes")

    try:
        with_backoff(attempt, retry_if=_retry_if, on_retry=on_retry)
    except _Incomplete:
        raise DownloadError(f"{f.path}: the server kept closing the connection early; run the same pull again "
                            "to resume") from None
    except DownloadError:
        raise
    except Exception as e:
        raise explain(e, repo_id=repo.repo_id, endpoint=hub.endpoint, revision=repo.revision, path=f.path) from None
    seconds = time.perf_counter() - t0
    size = part.stat().st_size
    sha256 = digests.sha256.hexdigest()
    problem = None
    if size != f.size:
        problem = f"size {size} instead of {f.size}"
    elif f.sha256 and sha256 != f.sha256:
        problem = f"sha256 {sha256[:16]}… instead of {f.sha256[:16]}…"
    elif digests.git is not None and f.blob_id and digests.git.hexdigest() != f.blob_id:
        problem = f"git blob id {digests.git.hexdigest()[:16]}… instead of {f.blob_id[:16]}…"
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{f.path} is corrupted ({problem}); the bad copy was deleted and nothing was kept as "
                            "good. Run the same pull again; if it fails again, the server or mirror is serving a "
                            "bad file")
    return Fetched(sha256=sha256, size=size, resumed_from=have, fetched=size - have, seconds=seconds)
