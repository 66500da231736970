"""`pull --list`: what a repo offers (GGUF quants with sizes, or the GPTQ/AWQ files and branches), nothing fetched
beyond the small config files format detection reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from .plan import plan_pull
from .quants import default_quant, gguf_quants
from .remote import Hub
from .store import parse_name


@dataclass
class Offer:
    label: str  # quant tag, or file name
    size: int
    files: list[str]
    default: bool = False


@dataclass
class RepoListing:
    repo_id: str
    revision: str
    commit: str
    format: str
    offers: list[Offer] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)


def list_repo(hub: Hub, name: str, *, revision: str | None = None, fmt: str | None = None) -> RepoListing:
    repo_id, tag = parse_name(name)
    repo = hub.repo(repo_id, revision)
    quants = gguf_quants(list(repo.files))
    if quants and fmt in (None, "gguf"):
        default = default_quant(quants)
        offers = [Offer(t if not q.missing_parts else f"{t} (incomplete on the hub)", q.size,
                        [f.path for f in q.files], q is default) for t, q in quants.items()]
        return RepoListing(repo.repo_id, repo.revision, repo.commit, "gguf", offers)
    plan = plan_pull(hub, repo, tag=tag, revision=revision, fmt=fmt, include=[], exclude=[])
    offers = [Offer(f.path, f.size, [f.path]) for f in plan.files]
    return RepoListing(plan.repo.repo_id, plan.repo.revision, plan.repo.commit, plan.format, offers,
                       hub.branches(repo.repo_id))
