"""The per-app state: loading the one model in the background, its permits, and running one request's generation.

The model is shared by every request: each generation runs on a worker thread of its own and calls the model
concurrently, and a model that batches (max_sequences > 1) decodes those generations together. The server gives
out as many permits as the model decodes at once; more requests wait in the queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ..backends.base import LoadedModel
from .config import ServerSettings
from .errors import APIError
from .metrics import Metrics
from .runner import Running, run_job
from .schemas import Job
from .slots import Permits, QueueFull

log = logging.getLogger("quantdeploy.server")
Loader = Callable[[], LoadedModel]


class ServerState:
    def __init__(self, settings: ServerSettings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.status = "loading"  # loading | ready | failed
        self.load_error: str | None = None
        self.model: LoadedModel | None = None
        self.permits: Permits | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.info: dict[str, Any] = {}
        self.fingerprint = ""  # OpenAI's system_fingerprint: what serves the model (changes may change seeded replies)
        self.started = int(time.time())
        self.stopping = False
        self._owned = False
        self._active: set[Running] = set()

    # --- loading --------------------------------------------------------------------------------
    def start_loading(self, loader: Loader, on_error: Callable[[BaseException], None] | None) -> None:
        """Load the model on a daemon thread; /health answers 503 meanwhile."""
        loop = asyncio.get_running_loop()

        def work() -> None:
            model = None
            try:
                model = loader()
                warm_up(model, self.settings.template)
            except BaseException as e:  # noqa: BLE001  reported to the loop, which decides what to do
                if model is not None:
                    model.close()
                loop.call_soon_threadsafe(self._failed, e, on_error)
                return
            loop.call_soon_threadsafe(self.set_model, model, True)

        threading.Thread(target=work, name="quantdeploy-load", daemon=True).start()

    def _failed(self, e: BaseException, on_error) -> None:
        self.status, self.load_error = "failed", str(e) or type(e).__name__
        log.error("loading the model failed: %s", self.load_error)
        if on_error is not None:
            on_error(e)

    def set_model(self, model: LoadedModel, owned: bool) -> None:
        self.model, self._owned = model, owned
        n = concurrency(self.settings.max_concurrency, model)
        self.permits = Permits(n, self.settings.max_queue)
        self.executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix="quantdeploy-gen")
        self.metrics.bind(lambda: self.permits.busy, lambda: self.permits.waiting, model.batch_stats)
        self.info = model_info(self.settings.model_name, model, self.started)
        self.fingerprint = fingerprint(self.info)
        self.metrics.set_model(self.info)
        self.status = "ready"
        log.info("ready: %s (%s, %s on %s) in %.1fs; up to %d generation%s at once", self.info["id"],
                 self.info["format"], self.info["kernel"], self.info["device"], model.load_time_s, n,
                 "" if n == 1 else "s")

    def answer_id(self, requested: str | None) -> str:
        """The model id to report for a request's `model`; 404 when this server does not serve it."""
        answer = self.settings.answer_id(requested)
        if answer is None:
            served = "', '".join(self.settings.served_ids())
            raise APIError(404, f"the model '{requested}' is not served here; this server serves '{served}' (see GET "
                                "/v1/models; `quantdeploy serve --alias ID` adds a name, --alias '*' accepts any)",
                           param="model", code="model_not_found")
        return answer

    def require_ready(self) -> Permits:
        if self.stopping:
            raise shutting_down()
        if self.status == "ready" and self.permits is not None:
            return self.permits
        if self.status == "failed":
            raise APIError(503, f"the model failed to load: {self.load_error}", type="server_error",
                           code="model_load_failed")
        raise APIError(503, "the model is still loading; retry when GET /health answers 200", type="server_error",
                       code="model_loading", headers={"Retry-After": "2"})

    # --- one request ----------------------------------------------------------------------------
    async def start(self, job: Job, arrived: float) -> Running:
        """Wait for a permit (bounded queue), start the generation on a worker thread, wait until it is ready.

        Raises APIError (429 when the queue is full, 4xx when the request does not fit the model). If the caller
        is cancelled (the client went away), the generation is told to stop and the permit comes back by itself.
        """
        permits = self.require_ready()
        try:
            await permits.acquire()
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e.waiting} requests are already waiting; retry after "
                                f"{e.retry_after}s", type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(e.retry_after)}) from None
        loop = asyncio.get_running_loop()
        running = Running(loop)
        running.on_end = lambda r: self.metrics.generation(r, arrived)
        try:
            fut = loop.run_in_executor(self.executor, run_job, self.model, job, running, self.settings.template)
        except BaseException:
            permits.release()
            raise
        self._active.add(running)
        fut.add_done_callback(lambda f: self._finished(permits, running))
        try:
            await running.ready
        except asyncio.CancelledError:
            running.cancelled.set()
            raise
        return running

    def _finished(self, permits: Permits, running: Running) -> None:
        self._active.discard(running)
        busy_s = (running.t_end - running.t_start) if running.t_end and running.t_start else None
        permits.release(busy_s)

    def stop_all(self) -> None:
        """The server is going down: end running generations at their next token, turn the queue away (503)."""
        self.stopping = True
        for r in list(self._active):
            r.stopped_by_server = True
            r.cancelled.set()
        if self.permits is not None:
            self.permits.reject_waiters(shutting_down())

    async def shutdown(self) -> None:
        self.stop_all()
        if self.permits is not None:
            self.permits.shutdown()
        if self.executor is not None:
            await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)
        if self.model is not None and self._owned:
            self.model.close()
        self.model, self._owned = None, False


def concurrency(asked: int | None, model: LoadedModel) -> int:
    """Generations served at once: what the model decodes together, or fewer if --max-concurrency says so. One
    warning line when more was asked than the model can batch."""
    n = model.max_sequences if asked is None else min(asked, model.max_sequences)
    if asked is not None and asked > n:
        log.warning("%s decodes %d sequence%s at once: serving %d at a time (--max-concurrency %d asked)",
                    model.spec.display_name, n, "" if n == 1 else "s", n, asked)
    return n


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
