"""One request's generation (its n choices, one after the other), run on its slot's thread and read from the
event loop.

The thread prepares the generation (chat template, tools, grammar, tokenize, context check), reports `ready` (or
a 4xx), then pushes Deltas: text with its logprobs, and each choice's end (tool calls, finish reason). The loop
reads them in batches. Setting `cancelled` (the client went away) makes the thread stop at the next token and
close the Generation, which stops the backend's decode loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from typing import AsyncIterator

from ..backends.base import Generation, LoadedModel, Usage
from ..errors import QuantDeployError
from .errors import APIError, bad_request, from_quantdeploy, internal
from .responses import Choice, Delta, TokenInfo
from .schemas import Job


class Running:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.cancelled = threading.Event()
        self.stopped_by_server = False  # cancelled because the server is shutting down, not by the client
        self.ready: asyncio.Future = loop.create_future()  # -> prompt tokens, or raises APIError
        self.finish_reason: str | None = None
        self.usage = Usage()
        self.error: APIError | None = None
        self.choices: list[Choice] = []  # finished choices, in order
        self.t_start: float | None = None  # perf_counter when the generation began (queue wait is over)
        self.t_end: float | None = None
        self._lock = threading.Lock()
        self._pieces: list[Delta] = []
        self._ended = False  # set by the slot thread
        self._ended_loop = False  # set on the event loop, after on_end: what waiters go by
        self._wake_pending = False
        self._event = asyncio.Event()
        self.on_end = None  # called on the event loop when the generation has ended, before anyone is woken

    @property
    def ended(self) -> bool:
        return self._ended

    # --- slot thread side -----------------------------------------------------------------------
    def _call(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancelled.set()

    def _resolve(self, result: int | None, error: APIError | None) -> None:
        if self.ready.done():
            return
        if error is not None:
            self.ready.set_exception(error)
            self.ready.exception()  # mark retrieved: nobody may be waiting any more
        else:
            self.ready.set_result(result)

    def set_ready(self, prompt_tokens: int) -> None:
        self._call(self._resolve, prompt_tokens, None)

    def push(self, piece: Delta) -> None:
        with self._lock:
            self._pieces.append(piece)
            if self._wake_pending:
                return
            self._wake_pending = True
        self._call(self._wake)

    def end(self, usage: Usage | None, error: APIError | None) -> None:
        with self._lock:
            self.t_end = time.perf_counter()
            if usage is not None:
                self.usage = usage
                self.finish_reason = self.choices[0].finish_reason if self.choices else None
            self.error = error
            self._ended = True
        self._call(self._resolve, None, error)
        self._call(self._ended_on_loop)

    # --- event loop side ------------------------------------------------------------------------
    def _ended_on_loop(self) -> None:
        if self.on_end is not None:  # metrics count the generation before its response can go out
            self.on_end(self)
        self._ended_loop = True
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._event.set()

    async def batches(self) -> AsyncIterator[list[Delta]]:
        """Deltas as they come, in batches (everything that arrived since the last wake-up)."""
        while True:
            await self._event.wait()
            self._event.clear()
            ended = self._ended_loop  # read first: every piece was pushed before it was set
            with self._lock:
                pieces, self._pieces = self._pieces, []
            if pieces:
                yield pieces
            if ended:
                return


def run_job(model: LoadedModel, job: Job, running: Running, template: str | None) -> None:
    """Runs on the slot thread, start to end: every model call of this request happens here."""
    running.t_start = time.perf_counter()
    try:
        start = start_generation(model, job, template)
        gen = start(0)
    except APIError as e:
        return running.end(None, e)
    except QuantDeployError as e:
        return running.end(None, from_quantdeploy(e, "messages" if job.kind == "chat" else "prompt"))
    except Exception as e:
        return running.end(None, internal(e))
    running.set_ready(gen.usage.prompt_tokens)
    error, usage = None, Usage(prompt_tokens=gen.usage.prompt_tokens)
    for index in range(job.n):
        if index:
            try:
                gen = start(index)
            except Exception as e:
                error = internal(e)
                break
        try:
            _stream_choice(model, job, gen, index, running)
        except Exception as e:
            error = internal(e)
        finally:
            gen.close()
        _add_usage(usage, gen.usage)
        running.choices.append(Choice(gen.text, gen.finish_reason, gen.tool_calls,
                                      [token_info(model, t) for t in gen.logprobs] if job.logprobs else None))
        if error is not None or running.cancelled.is_set():
            break
        running.push(Delta(index, tool_calls=gen.tool_calls or None, finish_reason=gen.finish_reason))
    running.end(usage, error)


def _stream_choice(model: LoadedModel, job: Job, gen: Generation, index: int, running: Running) -> None:
    for piece in gen:
        if running.cancelled.is_set():
            return
        lps = [token_info(model, t) for t in gen.take_logprobs()] if job.logprobs else None
        running.push(Delta(index, piece, lps))


def _add_usage(total: Usage, u: Usage) -> None:
    """Usage of n choices: the prompt counted once, the completions summed, timings of the first choice."""
    if total.ttft_s is None:
        total.ttft_s, total.decode_s = u.ttft_s, u.decode_s
    total.completion_tokens += u.completion_tokens
    total.elapsed_s += u.elapsed_s


def token_info(model: LoadedModel, t) -> TokenInfo:
    """A TokenLogprob as the API reports it: the token's text and bytes, and its alternatives'."""
    def one(tok: int, lp: float) -> TokenInfo:
        raw = model.token_bytes(tok)
        return TokenInfo(raw.decode("utf-8", "replace"), lp, list(raw))

    info = one(t.token, t.logprob)
    info.top = [one(tok, lp) for tok, lp in t.top]
    return info


def start_generation(model: LoadedModel, job: Job, template: str | None):
    """Prepare the request (its 4xx errors come from here) and return start(index) -> the Generation of choice
    `index`; choices differ by their seed (seed + index) when the request gives one."""
    ctx = model.context_length
    prompt = None
    if job.kind == "chat":
        from ..chat.prepare import prepare_chat

        prompt = prepare_chat(model, job.messages, template=template, tools=job.tools, tool_choice=job.tool_choice,
                              parallel_tool_calls=job.parallel_tool_calls, response_format=job.response_format)
        ids = prompt.ids
        what = "messages"
    else:
        ids = model.tokenize(job.prompt, add_bos=True)
        what = "prompt"
    n = len(ids)
    if n >= ctx:
        raise bad_request(f"the {what} take {n} tokens but the context window holds {ctx}; shorten them",
                          param=what, code="context_length_exceeded")
    max_tokens = job.max_tokens if job.max_tokens is not None else ctx - n
    if n + max_tokens > ctx:
        raise bad_request(f"this model's context window holds {ctx} tokens; the {what} take {n} and max_tokens asks "
                          f"for {max_tokens} more; lower max_tokens to at most {ctx - n}", param="max_tokens",
                          code="context_length_exceeded")
    params = replace(job.params, max_tokens=max_tokens)

    def start(index: int) -> Generation:
        p = params if index == 0 or params.seed is None else replace(params, seed=params.seed + index)
        return model.start_chat(prompt, p) if prompt is not None else model.generate(ids, p)

    return start
