"""`pull`: resolve a name on the hub, plan the files, fetch what is missing, verify, and write the manifest."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from ..errors import DownloadError, UsageError
from .plan import Plan, plan_pull
from .progress import Progress, make_progress
from .remote import Hub, RemoteFile, public_endpoint
from .safety import check_revision, inside
from .store import MANIFEST, META, PENDING, Entry, Store, entry_at, parse_name, read_json, write_json
from ..units import human_bytes

SPACE_MARGIN = 64 << 20  # keep this much free beyond the files themselves


@dataclass
class PullRequest:
    name: str  # org/repo or org/repo:TAG
    fmt: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    revision: str | None = None
    endpoint: str | None = None  # default: HF_ENDPOINT, then huggingface.co
    token: str | None = None  # default: HF_TOKEN, then huggingface_hub's saved login
    local_dir: Path | None = None  # pull here instead of into the store


@dataclass
class PullResult:
    name: str
    root: Path
    model_path: Path
    manifest: dict
    fetched_bytes: int = 0
    up_to_date: bool = False


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _result(entry: Entry, up_to_date: bool = True) -> PullResult:
    return PullResult(entry.name, entry.root, entry.model_path, entry.manifest or {}, 0, up_to_date)


def pull(req: PullRequest, *, progress: Progress | None = None) -> PullResult:
    """Pull req.name into the store (or req.local_dir). Idempotent: what is verified is never fetched again."""
    from ..settings import get_settings

    settings = get_settings()
    repo_id, tag = parse_name(req.name)
    revision = check_revision(req.revision) if req.revision else None
    store = Store(settings.home)
    try:
        have = None if req.local_dir else store.lookup(req.name)
    except UsageError:  # several variants pulled and none named: the hub decides which one this pull means
        have = None
    progress = progress or make_progress()
    if settings.hf_offline:
        if have is not None and not have.missing_files():
            progress.say(f"HF_HUB_OFFLINE is set: using the pulled {have.name} without checking for updates")
            return _result(have)
        raise DownloadError(f"HF_HUB_OFFLINE is set and {req.name} is not pulled; unset HF_HUB_OFFLINE to pull it")
    hub = Hub(req.endpoint or settings.hf_endpoint, req.token or settings.hf_token)
    progress.say(f"pulling {req.name} from {hub.where}")
    try:
        repo = hub.repo(repo_id, revision, on_retry=progress.retrying)
    except DownloadError as e:
        if have is not None and "cannot reach" in str(e):
            progress.say(f"warning: {e}; using the pulled {have.name}")
            return _result(have)
        raise

    def root_for(variant: str) -> Path:
        if req.local_dir:
            return Path(req.local_dir).expanduser().resolve()
        return store.variant_dir(repo.repo_id, variant)

    def local(variant: str, f: RemoteFile) -> Path | None:
        return verified_copy(root_for(variant), f)

    plan = plan_pull(hub, repo, tag=tag, revision=revision, fmt=req.fmt, include=req.include, exclude=req.exclude,
                     local=local)
    if plan.note:
        progress.say(plan.note)
    return _Puller(hub, plan, root_for(plan.variant), progress).run()


def _records(root: Path) -> dict[str, dict]:
    """What earlier pulls into root verified (complete or not), for files still there with the same size."""
    out = {}
    for source in (read_json(root / META / MANIFEST), read_json(root / META / PENDING)):
        for f in (source or {}).get("files", []):
            p = root / f["path"]
            if p.is_file() and p.stat().st_size == f["size"]:
                out[f["path"]] = f
    return out


def same_content(record: dict, f: RemoteFile) -> bool:
    if record.get("size") != f.size:
        return False
    if f.lfs:
        return record.get("sha256") == f.sha256
    return bool(f.blob_id) and record.get("blob_id") == f.blob_id


def verified_copy(root: Path, f: RemoteFile) -> Path | None:
    record = _records(root).get(f.path)
    return inside(root, PurePosixPath(f.path)) if record and same_content(record, f) else None


class _Puller:
    def __init__(self, hub: Hub, plan: Plan, root: Path, progress: Progress):
        self.hub, self.plan, self.root, self.progress = hub, plan, root, progress
        self.meta = root / META
        self.partial = self.meta / "partial"

    def _part(self, f: RemoteFile) -> Path:
        key = f.sha256 or f.blob_id or PurePosixPath(f.path).name
        return self.partial / f"{key}.part"

    # -- the pull -------------------------------------------------------------------------------------------
    def _state(self) -> tuple[list[RemoteFile], dict[str, dict], int, bool]:
        """(files to fetch, verified records of the others, bytes still to download, already complete?)"""
        plan = self.plan
        verified = _records(self.root)
        todo = [f for f in plan.files if not (f.path in verified and same_content(verified[f.path], f))]
        done = {f.path: verified[f.path] for f in plan.files if f not in todo}
        on_disk = sum(self._part(f).stat().st_size for f in todo if self._part(f).exists())
        manifest = read_json(self.meta / MANIFEST)
        complete = not todo and bool(manifest) and manifest.get("commit") == plan.repo.commit
        return todo, done, sum(f.size for f in todo) - on_disk, complete

    def _up_to_date(self) -> PullResult:
        self.progress.say(f"{self.plan.name} is up to date ({human_bytes(self.plan.size)} at {self.root})")
        return _result(entry_at(self.root))

    def run(self) -> PullResult:
        from huggingface_hub.utils import WeakFileLock

        for f in self.plan.files:
            inside(self.root, PurePosixPath(f.path))  # nothing is written outside root
        todo, done, need, complete = self._state()
        if complete:
            return self._up_to_date()
        self._check_space(need)  # before creating anything
        created = self.root if not self.root.exists() else (self.meta if not self.meta.exists() else None)
        self.meta.mkdir(parents=True, exist_ok=True)
        try:
            with WeakFileLock(self.meta / "lock"):  # a second pull of the same model waits, then finds it done
                todo, done, need, complete = self._state()
                if complete:
                    return self._up_to_date()
                return self._fetch_all(todo, done, need)
        except BaseException:
            self._forget_if_empty(created)
            raise

    def _forget_if_empty(self, created: Path | None) -> None:
        """A pull that failed before keeping a single byte leaves nothing behind (not even an 'incomplete' entry)."""
        if created is None or any(self.partial.glob("*.part")) or (read_json(self.meta / PENDING) or {}).get("files"):
            return
        shutil.rmtree(created, ignore_errors=True)
        for parent in (created.parent, created.parent.parent):
            try:
                parent.rmdir()  # the store's org/ and repo/ folders, when now empty
            except OSError:
                break

    def _check_space(self, need: int) -> None:
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if need + SPACE_MARGIN > free:
            raise DownloadError(f"not enough disk space for {self.plan.name}: it needs {human_bytes(need)} more, "
                                f"{human_bytes(free)} is free at {probe}; free some space, or pull elsewhere with "
                                "--local-dir or QUANTDEPLOY_HOME")

    def _pending(self, done: dict[str, dict]) -> dict:
        plan = self.plan
        return {
            "schema": 1, "name": plan.name, "repo": plan.repo.repo_id, "tag": plan.tag,
            "revision": plan.repo.revision, "commit": plan.repo.commit, "format": plan.format, "quant": plan.quant,
            "model_file": plan.model_file, "source": public_endpoint(self.hub.endpoint),
            "files": [done[f.path] for f in plan.files if f.path in done],
        }

    def _fetch_all(self, todo: list[RemoteFile], done: dict[str, dict], need: int) -> PullResult:
        from .download import fetch

        plan, progress = self.plan, self.progress
        old = read_json(self.meta / MANIFEST)
        before = old or read_json(self.meta / PENDING) or {}
        old_paths = {f["path"] for f in before.get("files", [])} if before.get("repo") == plan.repo.repo_id else set()
        write_json(self.meta / PENDING, self._pending(done))
        title = f"{plan.name} ({plan.format}): {len(todo)} of {len(plan.files)} files, {human_bytes(need)} to fetch"
        progress.start(title, total=plan.size, have=plan.size - need)
        fetched = 0
        try:
            for f in todo:
                part = self._part(f)
                already = part.stat().st_size if part.exists() else 0
                progress.begin_file(f, already)
                got = fetch(self.hub, plan.repo, f, part, on_retry=progress.retrying,
                            advance=lambda completed, step, f=f: progress.advance(f, completed, step))
                fetched += got.fetched
                dest = inside(self.root, PurePosixPath(f.path))
                dest.parent.mkdir(parents=True, exist_ok=True)
                if old is not None:  # an update replaces files: the entry is incomplete until it finishes
                    (self.meta / MANIFEST).unlink(missing_ok=True)
                    old = None
                os.chmod(part, 0o644)
                os.replace(part, dest)
                done[f.path] = {"path": f.path, "size": f.size, "sha256": got.sha256, "blob_id": f.blob_id,
                                "lfs": f.lfs}
                write_json(self.meta / PENDING, self._pending(done))
                progress.end_file(f, got.fetched, got.seconds)
        finally:
            progress.close()
        return self._finish(done, fetched, old_paths)

    def _finish(self, done: dict[str, dict], fetched: int, old_paths: set[str]) -> PullResult:
        plan = self.plan
        manifest = self._pending(done)
        manifest["pulled_at"] = _now()
        manifest["size_bytes"] = plan.size
        write_json(self.meta / MANIFEST, manifest)
        (self.meta / PENDING).unlink(missing_ok=True)
        shutil.rmtree(self.partial, ignore_errors=True)
        keep = {f.path for f in plan.files}
        for path in old_paths - keep:  # files an older commit had and this one dropped
            inside(self.root, PurePosixPath(path)).unlink(missing_ok=True)
        entry = Entry(self.root, manifest, None)
        return PullResult(plan.name, self.root, entry.model_path, manifest, fetched, up_to_date=False)
