"""The per-app state: loading the model in the background, the slots, and running one request's generation."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any, Callable

from ..backends.base import LoadedModel
from .config import ServerSettings
from .errors import APIError
from .metrics import Metrics
from .runner import Running, run_job
from .schemas import Job
from .slots import QueueFull, Slot, SlotPool

log = logging.getLogger("quantdeploy.server")
Loader = Callable[[], LoadedModel]


class ServerState:
    def __init__(self, settings: ServerSettings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.status = "loading"  # loading | ready | failed
        self.load_error: str | None = None
        self.pool: SlotPool | None = None
        self.info: dict[str, Any] = {}
        self.fingerprint = ""  # OpenAI's system_fingerprint: what serves the model (changes may change seeded replies)
        self.started = int(time.time())
        self.stopping = False
        self._owned: list[LoadedModel] = []
        self._active: set[Running] = set()

    # --- loading --------------------------------------------------------------------------------
    def start_loading(self, loader: Loader, on_error: Callable[[BaseException], None] | None) -> None:
        """Load `max_concurrency` copies on a daemon thread; /health answers 503 meanwhile."""
        loop = asyncio.get_running_loop()

        def work() -> None:
            models: list[LoadedModel] = []
            try:
                for _ in range(self.settings.max_concurrency):
                    models.append(loader())
                warm_up(models[0], self.settings.template)
            except BaseException as e:  # noqa: BLE001  reported to the loop, which decides what to do
                for m in models:
                    m.close()
                loop.call_soon_threadsafe(self._failed, e, on_error)
                return
            loop.call_soon_threadsafe(self.set_models, models, True)

        threading.Thread(target=work, name="quantdeploy-load", daemon=True).start()

    def _failed(self, e: BaseException, on_error) -> None:
        self.status, self.load_error = "failed", str(e) or type(e).__name__
        log.error("loading the model failed: %s", self.load_error)
        if on_error is not None:
            on_error(e)

    def set_models(self, models: list[LoadedModel], owned: bool) -> None:
        if owned:
            self._owned = list(models)
        self.pool = SlotPool([Slot(i, m) for i, m in enumerate(models)], self.settings.max_queue)
        self.metrics.bind(lambda: self.pool.busy, lambda: self.pool.waiting)
        self.info = model_info(self.settings.model_name, models[0], self.started)
        self.fingerprint = fingerprint(self.info)
        self.metrics.set_model(self.info)
        self.status = "ready"
        load_s = sum(m.load_time_s for m in models)
        log.info("ready: %s (%s, %s on %s) in %.1fs", self.info["id"], self.info["format"], self.info["kernel"],
                 self.info["device"], load_s)

    def answer_id(self, requested: str | None) -> str:
        """The model id to report for a request's `model`; 404 when this server does not serve it."""
        answer = self.settings.answer_id(requested)
        if answer is None:
            served = "', '".join(self.settings.served_ids())
            raise APIError(404, f"the model '{requested}' is not served here; this server serves '{served}' (see GET "
                                "/v1/models; `quantdeploy serve --alias ID` adds a name, --alias '*' accepts any)",
                           param="model", code="model_not_found")
        return answer

    def require_ready(self) -> SlotPool:
        if self.stopping:
            raise shutting_down()
        if self.status == "ready" and self.pool is not None:
            return self.pool
        if self.status == "failed":
            raise APIError(503, f"the model failed to load: {self.load_error}", type="server_error",
                           code="model_load_failed")
        raise APIError(503, "the model is still loading; retry when GET /health answers 200", type="server_error",
                       code="model_loading", headers={"Retry-After": "2"})

    # --- one request ----------------------------------------------------------------------------
    async def start(self, job: Job, arrived: float) -> Running:
        """Wait for a slot (bounded queue), start the generation on its thread, wait until it is ready.

        Raises APIError (429 when the queue is full, 4xx when the request does not fit the model). If the caller
        is cancelled (the client went away), the generation is told to stop and the slot comes back by itself.
        """
        pool = self.require_ready()
        try:
            slot = await pool.acquire()
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e.waiting} requests are already waiting; retry after "
                                f"{e.retry_after}s", type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(e.retry_after)}) from None
        loop = asyncio.get_running_loop()
        running = Running(loop)
        running.on_end = lambda r: self.metrics.generation(r, arrived)
        try:
            fut = loop.run_in_executor(slot.executor, run_job, slot.model, job, running, self.settings.template)
        except BaseException:
            pool.release(slot)
            raise
        self._active.add(running)
        fut.add_done_callback(lambda f: self._finished(pool, slot, running))
        try:
            await running.ready
        except asyncio.CancelledError:
            running.cancelled.set()
            raise
        return running

    def _finished(self, pool: SlotPool, slot: Slot, running: Running) -> None:
        self._active.discard(running)
        busy_s = (running.t_end - running.t_start) if running.t_end and running.t_start else None
        pool.release(slot, busy_s)

    def stop_all(self) -> None:
        """The server is going down: end running generations at their next token, turn the queue away (503)."""
        self.stopping = True
        for r in list(self._active):
            r.stopped_by_server = True
            r.cancelled.set()
        if self.pool is not None:
            self.pool.reject_waiters(shutting_down())

    async def shutdown(self) -> None:
        self.stop_all()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown)
        for m in self._owned:
            m.close()
        self._owned = []


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down; retry in a moment or on another instance", type="server_error",
                    code="server_shutting_down")


def warm_up(model: LoadedModel, template: str | None) -> None:
    """Render the chat template once so the first request does not pay for importing the renderer."""
    model.render_chat([{"role": "user", "content": "hi"}], template=template)


def fingerprint(info: dict[str, Any]) -> str:
    """OpenAI's system_fingerprint: a short hash of what generates (model, format, backend, kernel, device,
    quantdeploy's version). A seeded request reproduces its reply while the fingerprint stays the same."""
    import hashlib

    from ..version import __version__

    keys = ("format", "quantization", "backend", "kernel", "device", "context_length")
    text = json.dumps([info["id"], *(info.get(k) for k in keys), __version__])
    return "fp_" + hashlib.sha256(text.encode()).hexdigest()[:10]


def model_info(name: str, model: LoadedModel, created: int) -> dict[str, Any]:
    d = model.describe()
    rep = model.kernel_report()
    q = rep.get("quant")
    if isinstance(q, dict):
        quant = f"{q.get('method', model.format)} {q.get('bits')}-bit" + \
            (f" g{q['group_size']}" if q.get("group_size") not in (None, -1) else "")
    else:
        quant = str(q) if q else model.format
    return {"id": name, "object": "model", "created": created, "owned_by": "quantdeploy", "format": model.format,
            "quantization": quant, "backend": d["backend"], "kernel": d["kernel"], "device": d["device"],
            "context_length": d["context_length"], "max_model_len": d["context_length"]}
