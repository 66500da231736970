"""A local stand-in for the Hugging Face Hub that speaks the HTTP API huggingface_hub 2.x really calls.

Endpoints (as on huggingface.co, pre-Xet):
  GET  /api/models/{org}/{name}[/revision/{rev}][?blobs=true]   model info: sha, siblings (+ size, blobId, lfs)
  GET  /api/models/{org}/{name}/refs                            branches / tags
  HEAD|GET /{org}/{name}/resolve/{rev}/{path}                   small files: 200 + ETag (git blob id) + X-Repo-Commit
                                                                LFS files: 302 to the CDN + X-Linked-Etag (sha256),
                                                                X-Linked-Size, X-Repo-Commit
  HEAD|GET /cdn/{sha256} on a second port (another origin)      the LFS bytes, with Range / 206 / 416
Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) like the Hub's.

Faults for tests: drop the connection after N bytes, reset it, answer 5xx, corrupt bytes, throttle. Every body
served is logged (file, Range start, bytes sent) so tests can measure what a resume re-fetched.

Run standalone (the benchmark does): python tests/hubserver.py --repo org/name=PATH [--repo ...] [--port N]
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

CACHE = Path.home() / ".cache" / "quantdeploy" / "fixtures" / "hubserver"
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".onnx")
LFS_MIN_SIZE = 10 << 20
_CHUNK = 1 << 20


# --- content --------------------------------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    """sha256 of a fixture file, cached on disk by (path, size, mtime) so big fixtures are hashed once."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    CACHE.mkdir(parents=True, exist_ok=True)
    db_path = CACHE / "sha256.json"
    try:
        db = json.loads(db_path.read_text())
    except (OSError, ValueError):
        db = {}
    if key not in db:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        db[key] = h.hexdigest()
        tmp = db_path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(db))
        tmp.replace(db_path)
    return db[key]


def synthetic_gguf(seed: str, size: int) -> bytes:
    """Deterministic bytes that start like a GGUF file: for quant-selection tests, never loaded."""
    return b"GGUF" + struct.pack("<I", 3) + random.Random(seed).randbytes(max(0, size - 8))


def build_q8_0(src: Path) -> Path:
    """A real Q8_0 GGUF, requantized by llama.cpp from the embedded Q4_K_M (~2 s, cached). It loads and chats;
    its weights carry Q4_K_M's rounding (there is no higher-precision GGUF offline to quantize from)."""
    st = src.stat()
    out = CACHE / f"gemma-3-270m-Q8_0-{st.st_size}-{st.st_mtime_ns}.gguf"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    code = ("import ctypes, sys, llama_cpp as L\n"
            "p = L.llama_model_quantize_default_params()\n"
            "p.ftype = L.LLAMA_FTYPE_MOSTLY_Q8_0; p.allow_requantize = True; p.nthread = 2\n"
            "sys.exit(L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))\n")
    subprocess.run([sys.executable, "-c", code, str(src), str(tmp)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=600)
    tmp.replace(out)
    return out


@dataclass
class HubFile:
    path: str
    size: int
    sha256: str
    lfs: bool
    source: Path | None = None
    data: bytes | None = None
    git_sha1: str | None = None  # small files: git blob id of the content

    @classmethod
    def make(cls, path: str, content: Path | bytes) -> "HubFile":
        if isinstance(content, bytes):
            size, source, data = len(content), None, content
            sha = hashlib.sha256(content).hexdigest()
        else:
            size, source, data = content.stat().st_size, Path(content), None
            sha = _sha256_file(content)
        lfs = path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
        git = None
        if not lfs:
            body = data if data is not None else Path(content).read_bytes()
            git = hashlib.sha1(b"blob %d\0" % size + body).hexdigest()
        return cls(path, size, sha, lfs, source, data, git)

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def blob_id(self) -> str:
        if not self.lfs:
            return self.git_sha1
        return hashlib.sha1(b"blob %d\0" % len(self.pointer) + self.pointer).hexdigest()

    def sibling(self, advertised_size: int | None = None) -> dict:
        size = advertised_size if advertised_size is not None else self.size
        d = {"rfilename": self.path, "size": size, "blobId": self.blob_id}
        if self.lfs:
            d["lfs"] = {"size": size, "sha256": self.sha256, "pointerSize": len(self.pointer)}
        return d


@dataclass
class Revision:
    commit: str
    files: dict[str, HubFile]


@dataclass
class Repo:
    repo_id: str
    revisions: dict[str, Revision] = field(default_factory=dict)
    token: str | None = None  # gated: resolve needs "Authorization: Bearer <token>"
    private: bool = False  # private: even model info needs the token
    advertise: dict[str, int] = field(default_factory=dict)  # path -> size to claim in model info

    def revision(self, rev: str) -> Revision | None:
        if rev in self.revisions:
            return self.revisions[rev]
        return next((r for r in self.revisions.values() if r.commit == rev), None)


@dataclass
class Fault:
    pattern: str  # glob on the file path in the repo
    kind: str  # drop | reset | status | corrupt | throttle
    times: int | None  # None = every time
    value: int = 0  # drop/reset: after N bytes; status: the code; corrupt: the offset; throttle: bytes/s


@dataclass
class Hit:
    repo_id: str
    path: str
    status: int
    start: int
    sent: int = 0


# --- the server -------------------------------------------------------------------------------------------

class HubServer:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.faults: list[Fault] = []
        self.hits: list[Hit] = []
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization present?)
        self.lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self.url = self.cdn_url = ""

    # setup
    def add_repo(self, repo_id: str, files: dict[str, Path | bytes], *, revision: str = "main",
                 token: str | None = None, private: bool = False) -> str:
        hub_files = {p: HubFile.make(p, c) for p, c in files.items()}
        listing = "\n".join(f"{p} {f.blob_id}" for p, f in sorted(hub_files.items()))
        commit = hashlib.sha1(f"{repo_id}@{revision}\n{listing}".encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        repo.revisions[revision] = Revision(commit, hub_files)
        repo.token = token if token is not None else repo.token
        repo.private = private or repo.private
        return commit

    def fault(self, pattern: str, kind: str, value: int = 0, times: int | None = 1) -> None:
        with self.lock:
            self.faults.append(Fault(pattern, kind, times, value))

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.hits.clear()
            self.requests.clear()

    def body_hits(self, pattern: str = "*") -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if fnmatch.fnmatch(h.path, pattern)]

    def bytes_sent(self, pattern: str = "*") -> int:
        return sum(h.sent for h in self.body_hits(pattern))

    def _take_faults(self, path: str) -> list[Fault]:
        out = []
        with self.lock:
            for f in self.faults:
                if fnmatch.fnmatch(path, f.pattern) and (f.times is None or f.times > 0):
                    if f.times is not None:
                        f.times -= 1
                    out.append(f)
        return out

    # lifecycle
    def start(self) -> "HubServer":
        for role in ("hub", "cdn"):
            handler = type(f"{role}Handler", (_Handler,), {"hub": self, "role": role})
            srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
            self._servers.append(srv)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers.clear()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def find_lfs(self, sha256: str) -> tuple[Repo, HubFile] | None:
        for repo in self.repos.values():
            for rev in repo.revisions.values():
                for f in rev.files.values():
                    if f.lfs and f.sha256 == sha256:
                        return repo, f
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer
    role: str

    def log_message(self, *args) -> None:
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, OSError):
            pass  # the client went away, or a fault closed the socket

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    # -- responses -----------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False,
              ctype: str = "application/json") -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, head: bool, extra: dict | None = None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head)

    def _authorized(self, repo: Repo) -> bool | None:
        """True if no token is needed or the right one came; None if none came; False if a wrong one came."""
        if repo.token is None:
            return True
        got = self.headers.get("Authorization")
        if got is None:
            return None
        return got == f"Bearer {repo.token}"

    # -- routing -------------------------------------------------------------------------------------------
    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        parts = url.path.split("/")
        with self.hub.lock:
            self.hub.requests.append((self.command, url.path, self.headers.get("Authorization") is not None))
        if self.role == "cdn":
            if len(parts) == 3 and parts[1] == "cdn":
                return self._cdn(parts[2], head)
            return self._error(404, None, "not found", head)
        if url.path.startswith("/api/models/") and len(parts) >= 5:
            repo_id = f"{unquote(parts[3])}/{unquote(parts[4])}"
            tail = [unquote(p) for p in parts[5:]]
            query = parse_qs(url.query)
            if tail == []:
                return self._info(repo_id, "main", query, head)
            if len(tail) == 2 and tail[0] == "revision":
                return self._info(repo_id, tail[1], query, head)
            if tail == ["refs"]:
                return self._refs(repo_id, head)
        if len(parts) >= 6 and parts[3] == "resolve":
            repo_id = f"{unquote(parts[1])}/{unquote(parts[2])}"
            return self._resolve(repo_id, unquote(parts[4]), unquote("/".join(parts[5:])), head)
        return self._error(404, None, f"no route for {url.path}", head)

    def _repo(self, repo_id: str, head: bool, *, listing: bool) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", head)
            return None
        if repo.private and listing and self._authorized(repo) is not True:
            self._error(401, "RepoNotFound", "Invalid username or password.", head)
            return None
        return repo

    def _info(self, repo_id: str, rev: str, query: dict, head: bool) -> None:
        repo = self._repo(repo_id, head, listing=True)
        if repo is None:
            return
        revision = repo.revision(rev)
        if revision is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = [f.sibling(repo.advertise.get(p)) if blobs else {"rfilename": p}
                    for p, f in sorted(revision.files.items())]
        body = {"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
                "author": repo_id.split("/")[0], "sha": revision.commit, "lastModified": "2025-01-01T00:00:00.000Z",
                "createdAt": "2025-01-01T00:00:00.000Z", "private": repo.private,
                "gated": "manual" if repo.token else False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": [], "siblings": siblings}
        self._send(200, json.dumps(body).encode(), head=head)

    def _refs(self, repo_id: str, head: bool) -> None:
        repo = self._repo(repo_id, head, listing=True)
        if repo is None:
            return
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": r.commit} for n, r in repo.revisions.items()]
        self._send(200, json.dumps({"branches": branches, "converts": [], "tags": []}).encode(), head=head)

    def _resolve(self, repo_id: str, rev: str, path: str, head: bool) -> None:
        repo = self._repo(repo_id, head, listing=False)
        if repo is None:
            return
        revision = repo.revision(rev)
        if revision is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        auth = self._authorized(repo)
        if auth is not True:
            msg = (f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                   "to access it. Please log in." if auth is None else
                   f"Access to model {repo_id} is restricted and you are not in the authorized list.")
            return self._error(401 if auth is None else 403, "GatedRepo", msg, head)
        f = revision.files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on \"{rev}\"", head,
                               {"X-Repo-Commit": revision.commit})
        common = {"X-Repo-Commit": revision.commit, "Accept-Ranges": "bytes"}
        if f.lfs:
            location = f"{self.hub.cdn_url}/cdn/{f.sha256}?repo={quote(repo_id, safe='')}&file={quote(path)}"
            headers = {**common, "Location": location, "ETag": f'"{f.blob_id}"', "X-Linked-Etag": f'"{f.sha256}"',
                       "X-Linked-Size": f.size}
            return self._send(302, b"", headers, head, ctype="text/plain")
        self._body(repo_id, f, head, {**common, "ETag": f'"{f.git_sha1}"'})

    def _cdn(self, sha256: str, head: bool) -> None:
        found = self.hub.find_lfs(sha256)
        if found is None:
            return self._error(404, None, "no such object", head)
        repo, f = found
        self._body(repo.repo_id, f, head, {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes"})

    # -- bodies, with Range and faults ---------------------------------------------------------------------
    def _range(self, size: int) -> tuple[int, int] | None:
        header = self.headers.get("Range")
        if not header:
            return 0, size
        try:
            unit, spec = header.split("=", 1)
            a, b = spec.split("-", 1)
            start, end = int(a), (int(b) + 1 if b else size)
        except ValueError:
            return 0, size
        if unit.strip() != "bytes" or start >= size or end <= start:
            return None
        return start, min(end, size)

    def _body(self, repo_id: str, f: HubFile, head: bool, headers: dict) -> None:
        rng = self._range(f.size)
        if rng is None:
            return self._error(416, None, "Range Not Satisfiable", head, {"Content-Range": f"bytes */{f.size}"})
        start, end = rng
        faults = [] if head else self.hub._take_faults(f.path)
        for fault in faults:
            if fault.kind == "status":
                return self._error(fault.value, None, "injected server error", head)
        partial = self.headers.get("Range") is not None
        self.send_response(206 if partial else 200)
        for k, v in headers.items():
            self.send_header(k, str(v))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if head:
            return
        hit = Hit(repo_id, f.path, 206 if partial else 200, start)
        with self.hub.lock:
            self.hub.hits.append(hit)
        self._stream(f, start, end, faults, hit)

    def _stream(self, f: HubFile, start: int, end: int, faults: list[Fault], hit: Hit) -> None:
        cut = min((x.value for x in faults if x.kind in ("drop", "reset")), default=None)
        cut_kind = next((x.kind for x in faults if x.kind in ("drop", "reset") and x.value == cut), None)
        rate = min((x.value for x in faults if x.kind == "throttle"), default=None)
        corrupt = [x.value for x in faults if x.kind == "corrupt"]
        stop = end if cut is None else min(end, start + cut)
        if cut is None and rate is None and not corrupt and f.source is not None:
            with open(f.source, "rb") as src:
                self.wfile.flush()
                hit.sent = self.connection.sendfile(src, offset=start, count=end - start) or 0
            return
        chunk = 64 << 10 if rate else _CHUNK
        src = open(f.source, "rb") if f.source is not None else None
        try:
            pos = start
            while pos < stop:
                n = min(chunk, stop - pos)
                if src is not None:
                    src.seek(pos)
                    data = bytearray(src.read(n))
                else:
                    data = bytearray(f.data[pos:pos + n])
                for off in corrupt:
                    if pos <= off < pos + n:
                        data[off - pos] ^= 0xFF
                self.wfile.write(data)
                pos += n
                hit.sent += n
                if rate:
                    time.sleep(n / rate)
        finally:
            if src is not None:
                src.close()
        if cut is not None and stop < end:
            self.close_connection = True
            if cut_kind == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)


# --- the repos the pull tests serve -----------------------------------------------------------------------

GGUF_REPO = "test-org/gemma-3-270m-GGUF"
GPTQ_REPO = "test-org/gemma-3-270m-GPTQ"
AWQ_REPO = "test-org/gemma-3-270m-AWQ"
GPTQ_BRANCH = "gptq-4bit-32g-actorder_True"
_KB = 1024


def gguf_repo(gguf: Path) -> dict[str, Path | bytes]:
    """A GGUF repo like unsloth's or bartowski's. Q4_K_M is the embedded model and Q8_0 a real requantization of it
    (both load); the other quants are small synthetic files for selection tests (never loaded)."""
    files: dict[str, Path | bytes] = {
        "README.md": b"# gemma-3-270m GGUF (quantdeploy test repo)\n",
        "gemma-3-270m-Q4_K_M.gguf": gguf,
        "gemma-3-270m-Q8_0.gguf": build_q8_0(gguf),
        "gemma-3-270m-Q2_K.gguf": synthetic_gguf("Q2_K", 96 * _KB),
        "gemma-3-270m-IQ4_XS.gguf": synthetic_gguf("IQ4_XS", 112 * _KB),
        "gemma-3-270m-UD-Q4_K_XL.gguf": synthetic_gguf("UD-Q4_K_XL", 120 * _KB),
        "gemma-3-270m-bf16.gguf": synthetic_gguf("BF16", 160 * _KB),
        "mmproj-F16.gguf": synthetic_gguf("mmproj", 40 * _KB),
    }
    for i in (1, 2, 3):  # a split quant in its own folder, as large repos do
        files[f"Q6_K/gemma-3-270m-Q6_K-{i:05d}-of-00003.gguf"] = synthetic_gguf(f"Q6_K-{i}", (50 + i) * _KB)
    files["Q5_K_M/gemma-3-270m-Q5_K_M-00001-of-00002.gguf"] = synthetic_gguf("Q5_K_M-1", 64 * _KB)  # part 2 missing
    return files


def checkpoint_repo(model_dir: Path) -> dict[str, Path | bytes]:
    """A GPTQ/AWQ repo from a real checkpoint directory, plus what a pull must leave behind by default."""
    files: dict[str, Path | bytes] = {p.name: p for p in sorted(model_dir.iterdir()) if p.is_file()}
    files["README.md"] = b"# quantized gemma-3-270m (quantdeploy test repo)\n"
    files["pytorch_model.bin"] = b"PK\x03\x04 not loaded unless asked" * 64
    files["original/params.json"] = b"{}"
    return files


def standard_hub(gguf: Path, gptq: Path | None = None, awq: Path | None = None) -> HubServer:
    """The server the pull tests start: the GGUF repo, and the GPTQ (with a branch) / AWQ repos when given."""
    hub = HubServer()
    hub.add_repo(GGUF_REPO, gguf_repo(gguf))
    if gptq is not None:
        hub.add_repo(GPTQ_REPO, checkpoint_repo(gptq))
        branch = {k: v for k, v in checkpoint_repo(gptq).items() if k != "pytorch_model.bin"}
        branch["README.md"] = b"# the gptq-4bit-32g-actorder_True branch\n"
        hub.add_repo(GPTQ_REPO, branch, revision=GPTQ_BRANCH)
    if awq is not None:
        hub.add_repo(AWQ_REPO, checkpoint_repo(awq))
    return hub


# --- standalone -----------------------------------------------------------------------------------------

def _files_of(path: Path) -> dict[str, Path]:
    if path.is_file():
        return {path.name: path}
    return {str(p.relative_to(path)): p for p in sorted(path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", action="append", default=[], help="ORG/NAME=PATH (a file or a directory)")
    args = ap.parse_args(argv)
    hub = HubServer()
    for spec in args.repo:
        repo_id, _, path = spec.partition("=")
        hub.add_repo(repo_id, _files_of(Path(path)))
    hub.start()
    print(hub.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
