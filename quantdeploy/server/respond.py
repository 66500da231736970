"""Turn a parsed Job into an HTTP answer: one JSON body, or a stream of server-sent events.

A client that goes away is noticed while it waits in the queue, during prefill, while a non-streamed reply is
generated, and mid-stream; each time its generation is told to stop so the slot frees up for the next request.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .runner import Running
from .responses import ChunkWriter, full_response, new_id, usage_body
from .schemas import Job
from .state import ServerState, shutting_down

CLIENT_GONE = 499  # nobody reads it; it is what the access log shows (nginx's "client closed request")


async def respond(request: Request, state: ServerState, job: Job, arrived: float) -> Response:
    name = state.answer_id(job.model)
    rid = new_id(job.kind)
    running = await until_disconnected(request, state.start(job, arrived), on_abandon=_cancel)
    if running is None:
        return Response(status_code=CLIENT_GONE)
    if job.stream:
        writer = ChunkWriter(job.kind, rid, name, n=job.n, logprobs=job.logprobs, include_usage=job.include_usage,
                             fingerprint=state.fingerprint)
        return EventStream(sse_body(running, writer), running)
    finished = await until_disconnected(request, _drain(running))
    if finished is None:
        running.cancelled.set()
        return Response(status_code=CLIENT_GONE)
    if running.error is not None:
        raise running.error
    if running.stopped_by_server:
        raise shutting_down()
    usage = usage_body(running.usage.prompt_tokens, running.usage.completion_tokens)
    return JSONResponse(full_response(job.kind, rid, name, running.choices, usage, logprobs=job.logprobs,
                                      fingerprint=state.fingerprint))


def _cancel(result: Any) -> None:
    if isinstance(result, Running):
        result.cancelled.set()


async def _drain(running: Running) -> bool:
    async for _ in running.batches():
        pass
    return True


async def sse_body(running: Running, writer: ChunkWriter) -> AsyncIterator[bytes]:
    first = writer.start()
    if first:
        yield first
    async for deltas in running.batches():
        yield writer.deltas(deltas)
    if running.error is not None or running.stopped_by_server:
        yield writer.error(running.error or shutting_down())
        return
    yield writer.finish(usage_body(running.usage.prompt_tokens, running.usage.completion_tokens))


class EventStream(StreamingResponse):
    """SSE response that stops its generation when it ends for any reason (done, client gone, error)."""

    def __init__(self, body: AsyncIterator[bytes], running: Running):
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.running = running

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.running.cancelled.set()  # a no-op once the generation has ended


async def until_disconnected(request: Request, aw: Awaitable, on_abandon: Callable[[Any], None] | None = None):
    """Await `aw`, or return None if the client disconnects first (then `aw` is cancelled)."""
    task = asyncio.ensure_future(aw)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watch.cancel()
        raise
    if task.done():
        watch.cancel()
        return task.result()
    task.cancel()
    try:
        result = await task  # it may have finished just before the cancel landed
    except BaseException:  # noqa: BLE001  cancelled, or failed: either way nobody is listening
        return None
    if on_abandon is not None:
        on_abandon(result)
    return None


async def _disconnected(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return
