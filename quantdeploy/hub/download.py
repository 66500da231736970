"""Fetch one file into a partial file that survives a restart, then verify it against the hub's hashes.

huggingface_hub does the HTTP: the HEAD that finds the CDN location and the auth headers (`get_hf_file_metadata`,
`build_hf_headers`), the shared session (`http_stream_backoff`), and the error mapping (`hf_raise_for_status`).
What it lacks, added here:

* the partial file is ours and is kept on failure, Ctrl-C or kill (hf's `http_get` writes to a per-process temp
  file that is deleted on error), so the next run continues where this one stopped, with a Range request;
* a refused, dropped or reset connection and a 5xx / 429 answer are retried from the bytes on disk, with
  exponential backoff, and the retry budget is refilled whenever a try made progress;
* every byte is hashed as it arrives (on a helper thread) and checked against the LFS sha256, or the git blob id
  for small files, before anything calls the file complete.

The body loop reads the socket's chunks as they come (`iter_raw`) instead of `http_get`'s 10 MB re-chunking: that
copy cost more CPU than the sha256 (benchmarks/bench_pull.py), and a dropped connection lost up to 10 MB that had
arrived but was not yet written.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DownloadError
from .remote import Hub, RemoteFile, RemoteRepo, explain, is_retryable

_READ = 8 << 20
ATTEMPTS = 5  # tries without progress before giving up; progress refills them
BACKOFF = (1.0, 8.0)  # first wait, cap (doubling)


class _Incomplete(Exception):
    """The stream ended before the file was complete; the next try resumes from the partial file."""


@dataclass(frozen=True)
class Fetched:
    sha256: str
    size: int
    resumed_from: int  # bytes already on disk from an earlier, interrupted pull
    fetched: int  # bytes that came over the network in this call
    seconds: float


class _Digests:
    """sha256 of the content (on a helper thread for LFS files, so hashing overlaps the network), and the git blob
    id for small files that are not in LFS."""

    def __init__(self, f: RemoteFile):
        self._sha256 = hashlib.sha256()
        self.git = None if f.lfs else hashlib.sha1(b"blob %d\0" % f.size)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def update(self, data: bytes) -> None:
        if self.git is not None:
            self._sha256.update(data)
            self.git.update(data)
            return
        if self._thread is None:
            self._queue = queue.Queue(maxsize=512)
            self._thread = threading.Thread(target=self._drain, name="quantdeploy-sha256", daemon=True)
            self._thread.start()
        self._queue.put(data)

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            self._sha256.update(data)  # hashlib releases the GIL on large buffers

    def sha256(self) -> str:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        return self._sha256.hexdigest()

    def update_from(self, path: Path, size: int) -> None:
        with open(path, "rb") as f:
            left = size
            while left > 0:
                chunk = f.read(min(_READ, left))
                if not chunk:
                    break
                self.update(chunk)
                left -= len(chunk)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _resumable(e: BaseException) -> bool:
    """Worth another try from the bytes on disk: a connection refused, dropped, reset or timed out, or a 5xx / 429
    answer. (Retried here rather than inside huggingface_hub so that every retry resumes, and says so in one line
    without printing the signed CDN URL.)"""
    return isinstance(e, _Incomplete) or is_retryable(e)


class _Transfer:
    """One file's download state across tries: the partial file and the running digests of what it holds."""

    def __init__(self, hub: Hub, repo: RemoteRepo, f: RemoteFile, part: Path,
                 advance: Callable[[int | None, int], None] | None):
        self.hub, self.repo, self.f, self.part = hub, repo, f, part
        self.advance = advance or (lambda completed, step: None)
        self.digests = _Digests(f)
        have = _size(part)
        if have > f.size:
            part.unlink()
            have = 0
        if have:
            self.digests.update_from(part, have)
        self.resumed_from = have

    def restart(self) -> None:
        self.digests.sha256()  # stops its thread
        self.digests = _Digests(self.f)
        self.part.unlink(missing_ok=True)
        self.advance(0, 0)

    def attempt(self) -> None:
        from huggingface_hub import constants
        from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

        have = _size(self.part)
        if have >= self.f.size:
            return
        location, headers = self.hub.locate(self.repo, self.f.path)
        headers = {**headers, "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        # no retries inside: a body that breaks mid-way must reach run(), which resumes from what is on disk
        with http_stream_backoff("GET", location, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                                 retry_on_exceptions=(), retry_on_status_codes=()) as r:
            if r.status_code == 416 and have:  # the server disagrees about what we hold: start over
                self.restart()
                raise _Incomplete("range not satisfiable")
            hf_raise_for_status(r)
            if have and (r.status_code != 206 or not r.headers.get("Content-Range", "").startswith(f"bytes {have}-")):
                self.restart()  # Range ignored: the body starts at byte 0
            identity = r.headers.get("Content-Encoding", "identity").lower() == "identity"
            with open(self.part, "ab") as out:
                for chunk in (r.iter_raw() if identity else r.iter_bytes()):
                    out.write(chunk)
                    self.digests.update(chunk)
                    self.advance(None, len(chunk))
        if _size(self.part) < self.f.size:
            raise _Incomplete(f"{self.f.path}: {_size(self.part)} of {self.f.size} bytes")

    def run(self, on_retry) -> None:
        left, delay = ATTEMPTS, BACKOFF[0]
        while True:
            before = _size(self.part)
            try:
                return self.attempt()
            except Exception as e:
                if not _resumable(e):
                    raise
                if _size(self.part) > before:  # it moved: a flaky link, not a dead one
                    left, delay = ATTEMPTS, BACKOFF[0]
                left -= 1
                if left == 0:
                    raise
                if on_retry:
                    on_retry(e, delay)
                time.sleep(delay)
                delay = min(BACKOFF[1], delay * 2)

    def verify(self) -> str:
        f, size = self.f, _size(self.part)
        sha256 = self.digests.sha256()
        problem = None
        if size != f.size:
            problem = f"size {size} instead of {f.size}"
        elif f.sha256 and sha256 != f.sha256:
            problem = f"sha256 {sha256[:16]}… instead of {f.sha256[:16]}…"
        elif self.digests.git is not None and f.blob_id and self.digests.git.hexdigest() != f.blob_id:
            problem = f"git blob id {self.digests.git.hexdigest()[:16]}… instead of {f.blob_id[:16]}…"
        if problem:
            self.part.unlink(missing_ok=True)
            raise DownloadError(f"{f.path} is corrupted ({problem}); the bad copy was deleted and nothing was kept "
                                "as good. Run the same pull again; if it fails again, the server or mirror is "
                                "serving a bad file")
        return sha256


def fetch(hub: Hub, repo: RemoteRepo, f: RemoteFile, part: Path, *, advance=None, on_retry=None) -> Fetched:
    """Download f to `part` (resuming what is there) and verify it. On a hash mismatch `part` is deleted.

    advance(completed, step) is called as bytes arrive (completed=None: add step); on_retry(error, delay) before
    each retry."""
    part.parent.mkdir(parents=True, exist_ok=True)
    t = _Transfer(hub, repo, f, part, advance)
    t0 = time.perf_counter()
    try:
        t.run(on_retry)
    except _Incomplete:
        raise DownloadError(f"{f.path}: the server kept closing the connection early; run the same pull again "
                            "to resume") from None
    except DownloadError:
        raise
    except Exception as e:
        raise explain(e, repo_id=repo.repo_id, endpoint=hub.endpoint, revision=repo.revision, path=f.path) from None
    seconds = time.perf_counter() - t0
    sha256 = t.verify()
    return Fetched(sha256=sha256, size=f.size, resumed_from=t.resumed_from, fetched=f.size - t.resumed_from,
                   seconds=seconds)
