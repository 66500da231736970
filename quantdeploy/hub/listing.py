"""`pull --list`: what a repo offers (the detected backend's variants, e.g. GGUF quants with sizes, or the files a
pull fetches) and its branches; nothing fetched beyond the small config files format detection reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backends.base import PullOffer
from ..registry import check_requested, get_backend, identify
from .plan import remote_files, resolve_tag
from .remote import Hub
from .store import parse_name


@dataclass
class RepoListing:
    repo_id: str
    revision: str
    commit: str
    format: str
    offers: list[PullOffer] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)


def list_repo(hub: Hub, name: str, *, revision: str | None = None, fmt: str | None = None) -> RepoListing:
    fmt = check_requested(fmt)
    repo_id, tag = parse_name(name)
    repo, _ = resolve_tag(hub, hub.repo(repo_id, revision), tag, revision)
    files = remote_files(hub, repo)
    detected = identify(files, fmt)
    offers = get_backend(detected).pull_offers(files)
    return RepoListing(repo.repo_id, repo.revision, repo.commit, detected, offers, hub.branches(repo.repo_id))
