"""The front: the one HTTP endpoint in front of a model's replicas.

It answers /health and /metrics for the whole deployment and hands every other request, as it arrived (method,
path, headers, body), to a replica through a Ray Serve deployment handle; the replica's app does everything else
(auth, parsing, generation, the error bodies), so the API is exactly the one-process server's. Serve's router
picks the replica (the one with the shortest queue of two sampled) and holds requests while every replica is busy.

A replica that dies: requests it had not yet taken go to another replica; a response already streaming ends with
an error event (`replica_failed`); one that had not started answers 503 with the same code, which the openai client
retries by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import ServerSettings
from ..errors import APIError
from ..responses import ChunkWriter
from ..state import shutting_down
from .metrics import FrontMetrics

log = logging.getLogger("quantdeploy.server")
SPEC_VERSION = "2.3"  # before 2.4 a streaming app also watches receive() for the disconnect: the replica needs it
MAX_ROUTES = 8  # a request no replica took after this many died under it fails (503) instead of going round again
RETRY_AFTER_MAX_S = 60
_SCOPE_KEYS = ("type", "http_version", "method", "scheme", "path", "raw_path", "root_path", "query_string",
               "headers", "client", "server")


@dataclass
class ClusterView:
    """What the front knows about the deployment; launch.py's watcher keeps it current."""

    phase: str = "loading"  # loading | ready | failed | stopping
    healthy: int = 0  # replicas running
    target: int = 0  # replicas wanted (for --autoscale: Serve's current decision)
    error: str | None = None  # why it failed to start
    message: str | None = None  # what Serve says while replicas are not all up (e.g. waiting for resources)
    replicas: dict[str, dict[str, Any]] = field(default_factory=dict)  # the board: replica id -> last report
    dead: set[str] = field(default_factory=set)  # replicas seen dying under a request, before Serve says so
    handle: Any = None  # the Serve deployment handle, streaming the replicas' `handle` method

    def update(self, running: int, replicas: dict[str, dict[str, Any]]) -> None:
        """Serve's count of running replicas and the board's reports; a replica the front saw die counts as gone
        at once (Serve notices a few seconds later)."""
        self.replicas = {r: info for r, info in replicas.items() if r not in self.dead}
        self.healthy = min(running, len(self.replicas))

    def lost(self, replica: str) -> None:
        self.dead.add(replica)
        self.update(self.healthy, self.replicas)


class ReplicaLost(Exception):
    """The replica running a request died (its process, its node) or became unreachable."""


class Front:
    def __init__(self, settings: ServerSettings, view: ClusterView, metrics: FrontMetrics,
                 lost: tuple[type[BaseException], ...]):
        self.settings = settings
        self.view = view
        self.metrics = metrics
        self.lost = lost  # the exception types that mean "the replica is gone"
        self.pending = 0  # requests handed to the router that no replica has taken yet
        self.active = 0  # requests a replica is running
        self._avg_s = 0.0  # moving average of how long a replica spends on a request (for Retry-After)
        self._stops: set[asyncio.Event] = set()
        metrics.bind(lambda: self.waiting, lambda: self.active)

    @property
    def capacity(self) -> int:
        """Requests the healthy replicas run at once (each: what its model decodes together, as it reports)."""
        reported = [int(r["sequences"]) for r in self.view.replicas.values() if r.get("sequences")]
        return self.view.healthy * (min(reported) if reported else self.settings.sequences)

    @property
    def waiting(self) -> int:
        """Requests the router holds because every replica is full."""
        return max(0, self.pending - max(0, self.capacity - self.active))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            await _send_json(send, *self.health())
        elif scope["path"] == "/metrics":
            body = self.metrics.render(self.view.healthy, self.view.target, self.view.replicas)
            await _send(send, 200, body, b"text/plain; version=0.0.4; charset=utf-8")
        else:
            await self.forward(scope, receive, send)

    def health(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        """200 ok (every replica up), 200 degraded (some up: serving with less capacity while Ray restarts or adds
        the others), 503 loading / unavailable (none up yet, or none any more) / failed (could not start)."""
        v = self.view
        body: dict[str, Any] = {"status": v.phase, "model": self.settings.model_name,
                                "replicas": {"healthy": v.healthy, "target": v.target}}
        if v.phase == "failed":
            return 503, {**body, "error": v.error}, {}
        if v.phase == "ready" and v.healthy > 0:
            body["status"] = "ok" if v.healthy >= v.target else "degraded"
            return 200, body, {}
        if v.phase == "ready":
            body["status"] = "unavailable"
        if v.message:
            body["message"] = v.message
        return 503, body, {"Retry-After": "2"}

    # --- one request ------------------------------------------------------------------------------------------
    async def forward(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            body = await _read_body(receive)
        except APIError as e:  # over the body limit (server.middleware.BodyLimit)
            return await _send_error(send, e)
        if body is None:
            return  # the client went away while sending
        refusal = self.refusal()
        if refusal is not None:
            return await _send_error(send, refusal)
        request = {k: scope[k] for k in _SCOPE_KEYS if k in scope}
        request["asgi"] = {"version": "3.0", "spec_version": SPEC_VERSION}
        stop = asyncio.Event()
        self._stops.add(stop)
        gone = asyncio.ensure_future(_disconnected(receive))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await self._route(request, body, send, gone, stopped)
        finally:
            self._stops.discard(stop)
            gone.cancel()
            stopped.cancel()

    def refusal(self) -> APIError | None:
        v = self.view
        if v.phase == "stopping":
            return shutting_down()
        if v.phase == "failed":
            return APIError(503, f"the model failed to load: {v.error}", type="server_error",
                            code="model_load_failed")
        if v.phase == "loading":
            return APIError(503, "the model is still loading; retry when GET /health answers 200",
                            type="server_error", code="model_loading", headers={"Retry-After": "2"})
        free = max(0, self.capacity - self.active)
        if self.pending >= free and self.pending - free >= self.settings.max_queue:  # it would wait; the queue is full
            retry = max(1, min(RETRY_AFTER_MAX_S, math.ceil((self._avg_s or 1.0) * (self.waiting + 1)
                                                            / max(1, self.capacity))))
            return APIError(429, f"the server is busy: {self.waiting} requests are already waiting; retry after "
                                 f"{retry}s", type="rate_limit_error", code="queue_full",
                            headers={"Retry-After": str(retry)})
        return None

    async def _route(self, request: dict, body: bytes, send: Callable, gone: asyncio.Future,
                     stopped: asyncio.Future) -> None:
        for _ in range(MAX_ROUTES):
            stream = self.view.handle.remote(request, body)
            self.pending += 1
            try:
                kind, first = await _next(stream, gone, stopped, self.lost)
            finally:
                self.pending -= 1
            if kind == "item":
                break
            if kind == "lost":  # it died before taking the request: another replica gets it
                self.metrics.failures.labels("rerouted").inc()
                log.warning("a replica went away before it took a request; routing the request to another one")
                continue
            stream.cancel()
            if kind == "stopped":
                return await _send_error(send, shutting_down())
            if kind == "error":
                return await _send_error(send, _internal(first))
            return  # the client went away while its request waited
        else:
            return await _send_error(send, replica_failed("no replica could take the request"))
        self.metrics.routed.labels(str(first)).inc()
        self.active += 1
        t0 = time.perf_counter()
        try:
            await self._relay(stream, str(first), send, gone, stopped)
        finally:
            self.active -= 1
            busy = time.perf_counter() - t0
            self._avg_s = busy if not self._avg_s else 0.8 * self._avg_s + 0.2 * busy

    async def _relay(self, stream: Any, replica: str, send: Callable, gone: asyncio.Future,
                     stopped: asyncio.Future) -> None:
        started = sse = False
        while True:
            kind, message = await _next(stream, gone, stopped, self.lost)
            if kind == "end":
                return
            if kind == "item":
                if message["type"] == "http.response.start":
                    started = True
                    sse = b"text/event-stream" in dict(message.get("headers") or ()).get(b"content-type", b"")
                await send(message)
                continue
            stream.cancel()
            if kind == "gone":
                return
            if kind == "lost":
                self.view.lost(replica)
                self.metrics.failures.labels("failed").inc()
                log.warning("a replica went away while running a request; that request ends with an error")
                error = replica_failed("the replica running this request stopped")
            else:
                error = shutting_down() if kind == "stopped" else _internal(message)
            if not started:
                return await _send_error(send, error)
            await send({"type": "http.response.body", "body": ChunkWriter.error(error) if sse else b"",
                        "more_body": False})
            return

    def stop_all(self) -> None:
        """The server is going down: refuse new requests, end running ones (an error event or a 503)."""
        self.view.phase = "stopping"
        for stop in list(self._stops):
            stop.set()


def replica_failed(what: str) -> APIError:
    return APIError(503, f"{what} (it is being restarted); retry the request", type="server_error",
                    code="replica_failed", headers={"Retry-After": "1"})


def _internal(e: Any) -> APIError:
    log.error("a replica failed a request: %s", e)
    return APIError(500, "internal error in a replica; see the server log", type="server_error",
                    code="internal_error")


async def _next(stream: Any, gone: asyncio.Future, stopped: asyncio.Future,
                lost: tuple[type[BaseException], ...]) -> tuple[str, Any]:
    """The stream's next item, or why there is none: ("item", x), ("end", None), ("lost", e), ("error", e),
    ("gone", None) when the client disconnected, ("stopped", None) when the server is stopping."""
    nxt = asyncio.ensure_future(stream.__anext__())
    await asyncio.wait({nxt, gone, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not nxt.done():
        nxt.cancel()
        nxt.add_done_callback(_retrieve)  # Serve turns the cancel into RequestCancelledError: nobody wants it
        return ("gone", None) if gone.done() else ("stopped", None)
    try:
        return "item", nxt.result()
    except StopAsyncIteration:
        return "end", None
    except lost as e:
        return "lost", e
    except Exception as e:  # noqa: BLE001  a replica's bug: logged, answered 500
        return "error", e


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


async def _read_body(receive: Callable) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _disconnected(receive: Callable) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_error(send: Callable, e: APIError) -> None:
    await _send_json(send, e.status, e.body(), e.headers)


async def _send_json(send: Callable, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    await _send(send, status, json.dumps(body).encode(), b"application/json", headers)


async def _send(send: Callable, status: int, body: bytes, content_type: bytes,
                headers: dict[str, str] | None = None) -> None:
    head = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})

