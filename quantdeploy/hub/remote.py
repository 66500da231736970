"""What a hub says about a repo, through huggingface_hub, with its errors turned into ones that say what to do."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import DownloadError, ModelNotFound, QuantDeployError
from .safety import check_remote_path

DEFAULT_ENDPOINT = "https://huggingface.co"
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
T = TypeVar("T")


class RevisionNotFound(ModelNotFound):
    """The repo exists; the branch, tag or commit does not."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str | None = None  # git object id: of the file, or of its LFS pointer
    sha256: str | None = None  # LFS files: the content hash the hub publishes

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class RemoteRepo:
    repo_id: str  # as the hub spells it
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]

    def file(self, path: str) -> RemoteFile | None:
        return next((f for f in self.files if f.path == path), None)


def public_endpoint(endpoint: str) -> str:
    """The endpoint without any user:password@ part, for messages and manifests."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")


def unresolvable_host(e: BaseException) -> bool:
    """The hub's host name did not resolve (no network, no DNS, or a typo in the endpoint). Not worth retrying:
    on an offline machine it fails the same way every time, and "temporary failure" (EAI_AGAIN) is what a machine
    without a reachable DNS server says, every time."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return True
        e = e.__cause__ or e.__context__
    return False


def is_retryable(e: BaseException) -> bool:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if unresolvable_host(e):
        return False
    if isinstance(e, HfHubHTTPError):
        return e.response is not None and e.response.status_code in RETRY_STATUS
    return isinstance(e, httpx2.TransportError) and not isinstance(e, httpx2.ProxyError)


def with_backoff(fn: Callable[[], T], *, attempts: int = 5, base: float = 1.0, cap: float = 8.0,
                 on_retry: Callable[[BaseException, float], None] | None = None,
                 retry_if: Callable[[BaseException], bool] = is_retryable) -> T:
    """Call fn, retrying 5xx/429/408 answers and dropped or refused connections with exponential backoff."""
    delay = base
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if attempt == attempts or not retry_if(e):
                raise
            if on_retry:
                on_retry(e, delay)
            time.sleep(delay)
            delay = min(cap, delay * 2)
    raise AssertionError("unreachable")


def explain(e: BaseException, *, repo_id: str, endpoint: str, revision: str | None = None,
            path: str | None = None) -> QuantDeployError:
    """A huggingface_hub / httpx error as one line for users. Never includes request headers (the token)."""
    import httpx2
    from huggingface_hub import errors as hf

    where = public_endpoint(endpoint)
    status = getattr(getattr(e, "response", None), "status_code", None)
    auth = f"{repo_id} is gated or private: pass --token or set HF_TOKEN (and accept its terms on the hub page)"
    if isinstance(e, QuantDeployError):
        return e
    if isinstance(e, hf.OfflineModeIsEnabled):
        return DownloadError(f"HF_HUB_OFFLINE is set, so {repo_id} cannot be fetched; unset it to pull")
    if isinstance(e, hf.GatedRepoError) or status in (401, 403):
        if isinstance(e, hf.RepositoryNotFoundError) and not isinstance(e, hf.GatedRepoError):
            return DownloadError(f"{repo_id} was not found at {where}, or it is gated or private: "
                                 "pass --token or set HF_TOKEN")
        return DownloadError(auth)
    if isinstance(e, hf.RepositoryNotFoundError):
        return ModelNotFound(f"no repo {repo_id} at {where} (check the name; private repos need --token or HF_TOKEN)")
    if isinstance(e, hf.RevisionNotFoundError):
        return RevisionNotFound(f"{repo_id} has no revision '{revision}' at {where} (check the branch or commit)")
    if isinstance(e, hf.RemoteEntryNotFoundError):
        return ModelNotFound(f"{repo_id}@{revision} has no file {path}")
    if isinstance(e, hf.HfHubHTTPError):
        return DownloadError(f"{where} answered HTTP {status} for {repo_id}{f' {path}' if path else ''}; "
                             "try again later, or point HF_ENDPOINT / --endpoint at a mirror")
    if unresolvable_host(e):
        host = urlsplit(endpoint).hostname or where
        return DownloadError(f"cannot reach {where}: the host name {host} does not resolve (offline, or no DNS); "
                             "check your connection, point HF_ENDPOINT / --endpoint at a reachable mirror, or set "
                             "HF_HUB_OFFLINE=1 to use pulled models only")
    if isinstance(e, (httpx2.ConnectError, httpx2.ConnectTimeout)):
        return DownloadError(f"cannot reach {where}: check your connection, or point HF_ENDPOINT / --endpoint at "
                             "a reachable mirror")
    if isinstance(e, httpx2.HTTPError):
        return DownloadError(f"the connection to {where} failed while fetching {path or repo_id} "
                             f"({type(e).__name__}); run the same pull again to resume")
    raise e


class Hub:
    """One endpoint + token. The token is handed to huggingface_hub and never formatted into text."""

    def __init__(self, endpoint: str | None, token: str | None):
        from huggingface_hub import HfApi

        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self._token = token or None
        self.api = HfApi(endpoint=self.endpoint, token=self._token)

    @property
    def where(self) -> str:
        return public_endpoint(self.endpoint)

    def repo(self, repo_id: str, revision: str | None, on_retry=None) -> RemoteRepo:
        """The file listing (sizes, git ids, LFS sha256) of repo_id at revision, pinned to its commit."""
        try:
            info = with_backoff(lambda: self.api.model_info(repo_id, revision=revision, files_metadata=True),
                                on_retry=on_retry)
        except Exception as e:
            raise explain(e, repo_id=repo_id, endpoint=self.endpoint, revision=revision) from None
        files = []
        for s in info.siblings or []:
            check_remote_path(s.rfilename, repo_id)
            if s.size is None and s.lfs is None:
                raise DownloadError(f"{self.where} listed {repo_id} without file sizes and hashes (model info with "
                                    "blobs=true): it is not a fully Hub-compatible endpoint, so downloads could not "
                                    "be verified; use another mirror")
            lfs = s.lfs
            files.append(RemoteFile(path=s.rfilename, size=int(lfs.size if lfs else (s.size or 0)), blob_id=s.blob_id,
                                    sha256=(lfs.sha256.lower() if lfs else None)))
        if not info.sha:
            raise DownloadError(f"{self.where} did not say which commit {repo_id}@{revision or 'main'} is; "
                                "is it a Hugging Face Hub endpoint?")
        return RemoteRepo(repo_id=info.id or repo_id, revision=revision or "main", commit=info.sha,
                          files=tuple(files))

    def branches(self, repo_id: str) -> list[str]:
        try:
            refs = with_backoff(lambda: self.api.list_repo_refs(repo_id))
        except Exception as e:
            raise explain(e, repo_id=repo_id, endpoint=self.endpoint) from None
        return [b.name for b in refs.branches]

    def locate(self, repo: RemoteRepo, path: str) -> tuple[str, dict[str, str]]:
        """The URL to GET for one file (after the hub's redirect to its CDN) and the headers to send there."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(repo.repo_id, path, revision=repo.commit, endpoint=self.endpoint)
        meta = get_hf_file_metadata(url, token=self._token, endpoint=self.endpoint)  # the caller retries
        headers = build_hf_headers(token=self._token)
        location = meta.location or url
        if _origin(location) != _origin(url):
            headers.pop("authorization", None)  # a signed CDN URL: the token stays on the hub
        return location, headers


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    return (p.scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(p.scheme))
