"""One replica: the single-model server that `quantdeploy serve` runs, inside a Ray Serve replica.

The replica builds the same app as a one-process server (create_app: auth, parsing, the queue, streaming,
cancel-on-disconnect, metrics) around its own loaded model and runs each request through it in-process: the front
(front.py) sends the request's ASGI scope and body, the replica streams back the ASGI messages the app sends.
The first item of every stream is the replica's id, sent when the request may start: at most as many
generation requests run as the model decodes at once, the others wait here without it. Until the front has the
id, the request has not started anywhere, so the front hands it to another replica if this one dies.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from typing import Any, AsyncIterator

from ...backends.base import ModelSpec
from ...errors import QuantDeployError
from ..config import ServerSettings

LOAD_POLL_S = 0.1  # how often the constructor looks whether the model has loaded
FAILED_WAIT_S = 120.0  # how long a replica whose model failed to load waits for the starting server to stop
METRICS_PUSH_S = 1.0  # how often a replica sends its metrics to the front's board (the lag /metrics may show)


class Replica:
    """The Ray Serve deployment class (launch.py wraps it with serve.deployment)."""

    async def __init__(self, settings: ServerSettings, model: str | None, board: tuple[str, str]):
        import ray
        from ray import serve

        from ..app import create_app
        from ...models import load_spec

        self.id = serve.get_replica_context().replica_tag
        self.node = ray.get_runtime_context().get_node_id()
        self.board = ray.get_actor(board[0], namespace=board[1])
        self._pusher: asyncio.Task | None = None
        self.lifespan: Lifespan | None = None
        try:
            spec = spec_on_this_node(model, settings.spec)
            # the front keeps the queue (--max-queue); the app's own only bridges the moment between a finished
            # request leaving and its permit coming back
            settings = replace(settings, spec=spec, max_queue=settings.sequences)
            self.app = create_app(settings, loader=lambda: load_spec(settings.spec_to_load()))
            self.lifespan = Lifespan(self.app)
            await self.lifespan.startup()
            await self._loaded()
        except Exception as e:
            await self._failed(e)
            raise
        self.sequences = self.app.state.qd.permits.size  # what the model decodes at once (<= --max-concurrency)
        self._admit = asyncio.Semaphore(self.sequences)
        self._pusher = asyncio.get_running_loop().create_task(self._push_metrics())

    async def _loaded(self) -> None:
        state = self.app.state.qd
        while state.status == "loading":
            await asyncio.sleep(LOAD_POLL_S)
        if state.status != "ready":
            raise QuantDeployError(state.load_error or "unknown error")

    async def _failed(self, e: Exception) -> None:
        """Tell the front. While the server is starting, it stops with this one error line and deletes the
        deployment; the replica waits for that instead of raising at once into Serve's constructor retries, whose
        tracebacks would end up in the server's output. Later (a replica restarted after a failure) it raises."""
        message = str(e) if isinstance(e, QuantDeployError) else f"{type(e).__name__}: {e}"
        try:
            starting = await self.board.failed.remote(self.id, message)
        except Exception:  # noqa: BLE001  the front is gone: nobody will delete the deployment
            return
        if starting:
            await asyncio.sleep(FAILED_WAIT_S)

    async def handle(self, scope: dict[str, Any], body: bytes) -> AsyncIterator[Any]:
        """Run one HTTP request through the app: yields this replica's id once the request may start (a POST waits
        for one of the model's sequences), then the app's ASGI messages."""
        admitted = False
        try:
            if scope.get("method") == "POST":  # the generating endpoints; GETs never wait
                await self._admit.acquire()
                admitted = True
            yield self.id
            async for message in run_asgi(self.app, scope, body):
                yield message
        finally:
            if admitted:
                self._admit.release()

    async def check_health(self) -> None:
        """Ray Serve calls this periodically; raising marks the replica unhealthy and Serve replaces it."""
        state = self.app.state.qd
        if state.status != "ready":
            raise RuntimeError(f"the replica's model is {state.status}")

    async def _push_metrics(self) -> None:
        while True:
            self.board.report.remote(self.id, {"pid": os.getpid(), "node": self.node, "sequences": self.sequences,
                                               "metrics": self.app.state.qd.metrics.render()})
            await asyncio.sleep(METRICS_PUSH_S)

    async def __del__(self) -> None:
        """Serve's graceful shutdown: stop pushing, end the app (its running generations stop), close the model."""
        if self._pusher is not None:
            self._pusher.cancel()
        self.board.gone.remote(self.id)
        if self.lifespan is not None:
            await self.lifespan.shutdown()


def spec_on_this_node(model: str | None, spec: ModelSpec | None) -> ModelSpec:
    """The front resolved MODEL on its own node. Here the same path is used when it exists (one host, or storage
    every node shares); otherwise MODEL is resolved again on this node: the embedded model from this node's install,
    a pulled name from this node's store, pulling it first if needed (the store's lock makes a second replica on the
    node wait for the first one's download instead of downloading again)."""
    from ...models import resolve_model

    if spec is None:
        raise QuantDeployError("the replica was started without a model")
    if spec.path.exists():
        return spec
    try:
        here = resolve_model(model, fmt=spec.format)
    except QuantDeployError as e:
        raise type(e)(f"{spec.path} does not exist on this node ({os.uname().nodename}) and {e}; put the model on "
                      "storage every node shares, or serve a pulled name (org/repo) so that each node pulls it")
    return replace(spec, path=here.path)


async def run_asgi(app: Any, scope: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
    """Call an ASGI app with one request and yield what it sends. When the consumer stops (the front cancelled the
    request: its client went away), the app sees the client disconnect, as it would from uvicorn."""
    sent: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    body_taken = False

    async def receive() -> dict[str, Any]:
        nonlocal body_taken
        if not body_taken:
            body_taken = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    done = object()

    def ended(t: asyncio.Task) -> None:
        sent.put_nowait(done)
        if not t.cancelled():
            t.exception()  # retrieved here: after a disconnect nobody else looks

    task = asyncio.get_running_loop().create_task(app(scope, receive, sent.put))
    task.add_done_callback(ended)
    try:
        while (message := await sent.get()) is not done:
            yield message
        task.result()
    finally:
        gone.set()  # a no-op once the app has answered; else it stops the request's generation


class Lifespan:
    """Drive an ASGI app's lifespan (startup: the model starts loading; shutdown: generations end, models close)."""

    def __init__(self, app: Any):
        self.app = app
        self._to_app: asyncio.Queue = asyncio.Queue()
        self._from_app: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def _call(self, kind: str) -> None:
        await self._to_app.put({"type": f"lifespan.{kind}"})
        reply = await self._from_app.get()
        if reply["type"] != f"lifespan.{kind}.complete":
            raise QuantDeployError(f"the server's {kind} failed: {reply.get('message') or reply['type']}")

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self._task = asyncio.get_running_loop().create_task(self.app(scope, self._to_app.get, self._from_app.put))
        await self._call("startup")

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._call("shutdown")
        await self._task
