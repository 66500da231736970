"""Run many requests through one loaded model, up to `concurrency` at once, and hand the results back in input
order.

Concurrency comes from the model: a model whose `max_sequences` is above 1 accepts that many `generate()` /
`chat()` calls from different threads and batches them itself; at 1, requests run one after the other on one
thread. Requests are handed to a thread pool in input order, at most `LOOKAHEAD` × concurrency beyond the oldest
result not yet handed back, so one long request at the head never lets the results waiting behind it grow
without bound.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from ..backends.base import Generation, GenerationParams, LoadedModel, Usage
from ..errors import QuantDeployError, UsageError
from .requests import BadRequest, Request, parse_item

LOOKAHEAD = 4  # requests queued per concurrent sequence beyond the oldest result not yet handed back


@dataclass
class BatchResult:
    """One request's outcome: `text`, `finish_reason` ("stop" or "length") and `usage`, or `error`."""

    id: Any
    text: str = ""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    metadata: Any = None
    has_metadata: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            out: dict[str, Any] = {"id": self.id, "error": self.error}
        else:
            u = self.usage
            out = {"id": self.id, "text": self.text, "finish_reason": self.finish_reason,
                   "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                             "total_tokens": u.prompt_tokens + u.completion_tokens}}
        if self.has_metadata:
            out["metadata"] = self.metadata
        return out


def failed(rid: Any, message: str, *, metadata: Any = None, has_metadata: bool = False) -> BatchResult:
    return BatchResult(id=rid, error=message, metadata=metadata, has_metadata=has_metadata)


def effective_concurrency(model: LoadedModel, requested: int | None) -> int:
    """What was asked for (default: all the model batches), never more than the model decodes together."""
    cap = max(1, model.max_sequences)
    return cap if requested is None else max(1, min(int(requested), cap))


def start(model: LoadedModel, req: Request, template: str | None) -> Generation:
    """Tokenize, check the request fits the context (a default max_tokens is cut to what is left), start it."""
    ctx = model.context_length
    if req.messages is not None:
        n = len(model.tokenize(model.render_chat(req.messages, template=template), add_bos=False))
        what = "the messages take"
    else:
        ids = model.tokenize(req.prompt, add_bos=True)
        n = len(ids)
        what = "the prompt takes"
    if n >= ctx:
        raise BadRequest(f"{what} {n} tokens but the context window holds {ctx}; shorten it or load the model with "
                         "a larger --ctx")
    params = req.params
    if n + params.max_tokens > ctx:
        if req.max_tokens_given:
            raise BadRequest(f"{what} {n} tokens and max_tokens asks for {params.max_tokens} more, beyond the "
                             f"{ctx}-token context; lower max_tokens to at most {ctx - n}")
        params = replace(params, max_tokens=ctx - n)
    if req.messages is not None:
        return model.chat(req.messages, params, template=template)
    return model.generate(ids, params)


def run_one(model: LoadedModel, req: Request, template: str | None, stop: threading.Event,
            on_tokens: Callable[[int], None]) -> BatchResult | None:
    """One request, start to end, on the calling thread; None when `stop` ended it early."""
    meta = {"metadata": req.metadata, "has_metadata": req.has_metadata}
    if stop.is_set():
        return None
    try:
        gen = start(model, req, template)
    except (BadRequest, QuantDeployError) as e:
        return failed(req.id, str(e), **meta)
    except Exception as e:  # a backend bug must not sink the other requests
        return failed(req.id, f"internal error ({type(e).__name__}: {str(e)[:300]})", **meta)
    seen = 0
    try:
        for _ in gen:
            n = gen.usage.completion_tokens
            if n != seen:
                on_tokens(n - seen)
                seen = n
            if stop.is_set():
                return None
        if gen.usage.completion_tokens != seen:
            on_tokens(gen.usage.completion_tokens - seen)
    except Exception as e:
        return failed(req.id, f"generation failed ({type(e).__name__}: {str(e)[:300]})", **meta)
    finally:
        gen.close()
    return BatchResult(id=req.id, text=gen.text, finish_reason=gen.finish_reason, usage=gen.usage, **meta)


def run_in_order(model: LoadedModel, items: Iterable[Request | BatchResult], emit: Callable[[BatchResult], None], *,
                 concurrency: int, template: str | None = None, on_tokens: Callable[[int], None] = lambda n: None,
                 on_done: Callable[[BatchResult], None] = lambda r: None) -> None:
    """Run every Request (a BatchResult passes straight through: a request that failed to parse) and call
    `emit` with each result in input order. `on_done` sees results as they finish (any order), `on_tokens` the
    generated tokens as they come. An exception from `emit` (or Ctrl-C) stops the work in flight and propagates."""
    stop = threading.Event()
    window = max(1, concurrency) * LOOKAHEAD
    queue: deque[Future] = deque()
    source = iter(items)

    def work(req: Request) -> BatchResult | None:
        result = run_one(model, req, template, stop, on_tokens)
        if result is not None:
            on_done(result)
        return result

    def ready(result: BatchResult) -> Future:
        fut: Future = Future()
        fut.set_result(result)
        on_done(result)
        return fut

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="quantdeploy-generate")
    try:
        exhausted = False
        while True:
            while not exhausted and len(queue) < window:
                item = next(source, None)
                if item is None:
                    exhausted = True
                else:
                    queue.append(ready(item) if isinstance(item, BatchResult) else pool.submit(work, item))
            if not queue:
                break
            result = queue.popleft().result()
            if result is not None:
                emit(result)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def generate_batch(model: LoadedModel, items: list[Any], params: GenerationParams | list[GenerationParams] | None
                   = None, *, max_concurrency: int | None = None, template: str | None = None,
                   return_errors: bool = False) -> list[BatchResult]:
    """See LoadedModel.generate_batch."""
    items = list(items)
    if isinstance(params, (list, tuple)):
        if len(params) != len(items):
            raise UsageError(f"{len(params)} GenerationParams for {len(items)} prompts; pass one for all or one each")
        per_item = [p.validate() for p in params]
    else:
        per_item = [(params or model.default_params()).validate()] * len(items)
    reqs: list[Request | BatchResult] = []
    for i, (item, p) in enumerate(zip(items, per_item)):
        try:
            reqs.append(parse_item(item, p, i))
        except BadRequest as e:
            if not return_errors:
                raise UsageError(f"prompt {i}: {e}") from None
            reqs.append(failed(i, str(e)))
    out: list[BatchResult] = []

    def emit(r: BatchResult) -> None:
        if r.error is not None and not return_errors:
            raise QuantDeployError(f"prompt {len(out)} (id {r.id!r}): {r.error}")
        out.append(r)

    run_in_order(model, reqs, emit, concurrency=effective_concurrency(model, max_concurrency), template=template)
    return out
