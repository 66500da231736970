"""What a generation hands back: text pieces as they come, then the finish reason, usage, logprobs and tool calls.

Backends produce tokens (LoadedModel._generate_tokens); Generation turns them into text, cuts stop strings,
counts usage and, for a chat with tools, reads the tool calls out of the reply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from .base import GenerationParams

# A backend yields (GRAMMAR_END, "") when the grammar in GenerationParams.grammar is complete: the reply ends there.
GRAMMAR_END = -1


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log-probability and, when asked, the likeliest tokens at that step (most likely first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None  # time to first token
    elapsed_s: float = 0.0  # from start of the call to the last token
    decode_s: float = 0.0  # from the first to the last token

    @property
    def decode_tok_s(self) -> float:
        n = self.completion_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


class Generation:
    """An iterator of text pieces; after it ends, `finish_reason` and `usage` are set.

    `finish_reason` is "stop" (an end-of-turn token, a stop string or the end of the grammar) or "length"
    (max_tokens reached). Closing it early (break / .close()) stops the backend's work. With params.logprobs set,
    `logprobs` holds a TokenLogprob per token whose text was emitted (tokens of a matched stop string are not), and
    `take_logprobs()` returns those added since its last call (for streaming).

    A chat with tools reads its reply through a filter (chat/toolcalls.py): text that may be a tool call is held
    back, and the calls land in `tool_calls` (OpenAI's shape) with finish_reason "tool_calls"; the pieces and
    `text` are the rest of the reply.

    Backends yield (token_id, text_piece) or (token_id, text_piece, TokenLogprob).
    """

    def __init__(self, tokens: Iterator[tuple], *, prompt_tokens: int, params: GenerationParams,
                 eog_ids: set[int], reply_filter: Any = None):
        self._tokens = tokens
        self._params = params
        self._eog = set() if params.ignore_eos else set(eog_ids)
        self.finish_reason: str | None = None
        self.usage = Usage(prompt_tokens=prompt_tokens)
        self.text = ""  # what the pieces said (the reply without its tool calls)
        self.raw_text = ""  # everything the model wrote
        self.tool_calls: list[dict] = []
        self._filter = reply_filter
        self.logprobs: list[TokenLogprob] = []
        self._new_logprobs: list[TokenLogprob] = []
        self._held: list[tuple[int, TokenLogprob]] = []  # (where its text starts in the held-back text, logprobs)
        self._t0 = time.perf_counter()
        self._it = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._it

    def __next__(self) -> str:
        return next(self._it)

    def close(self) -> None:
        self._it.close()

    def take_logprobs(self) -> list[TokenLogprob]:
        out, self._new_logprobs = self._new_logprobs, []
        return out

    def _release(self, n: int | None, *, drop_rest: bool = False) -> None:
        """The first n characters of the held-back text went out: so do the logprobs of the tokens they start."""
        keep = []
        for start, lp in self._held:
            if n is None or start < n:
                self.logprobs.append(lp)
                self._new_logprobs.append(lp)
            elif not drop_rest:
                keep.append((start - n, lp))
        self._held = keep

    def _run(self) -> Iterator[str]:
        pieces = self._pieces()
        try:
            for piece in pieces:
                out = piece if self._filter is None else self._filter.feed(piece)
                if out:
                    self.text += out
                    yield out
            if self._filter is not None:
                out = self._filter.finish()
                self.tool_calls = list(self._filter.tool_calls)
                if self.tool_calls and self.finish_reason == "stop":
                    self.finish_reason = "tool_calls"
                if out:
                    self.text += out
                    yield out
        finally:
            pieces.close()

    def _pieces(self) -> Iterator[str]:
        stops = [s for s in (self._params.stop or ()) if s]
        hold = max((len(s) for s in stops), default=1) - 1
        pending = ""  # text not yet emitted because it could be the start of a stop string
        first = None
        try:
            for item in self._tokens:
                tok, piece = item[0], item[1]
                now = time.perf_counter()
                if first is None:
                    first = now
                    self.usage.ttft_s = now - self._t0
                self.usage.elapsed_s = now - self._t0
                self.usage.decode_s = now - first
                if tok == GRAMMAR_END or tok in self._eog:
                    self.finish_reason = "stop"
                    break
                self.usage.completion_tokens += 1
                if len(item) > 2 and item[2] is not None:
                    self._held.append((len(pending), item[2]))
                pending += piece
                if stops:
                    cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
                    if cut >= 0:
                        out, pending = pending[:cut], ""
                        self._release(cut, drop_rest=True)
                        if out:
                            self.raw_text += out
                            yield out
                        self.finish_reason = "stop"
                        break
                    safe = len(pending) - hold
                    if safe <= 0:
                        if self.usage.completion_tokens >= self._params.max_tokens:  # held text still counts
                            self.finish_reason = "length"
                            break
                        continue
                    out, pending = pending[:safe], pending[safe:]
                else:
                    out, pending = pending, ""
                self._release(len(out))
                if out:
                    self.raw_text += out
                    yield out
                if self.usage.completion_tokens >= self._params.max_tokens:
                    self.finish_reason = "length"
                    break
            else:  # the backend ran out (context full) before max_tokens or a stop
                self.finish_reason = "length"
            self._release(None)  # what is still held (a stop string's tokens were dropped at the cut)
            if pending:  # held back as a possible stop-string prefix that never completed
                self.raw_text += pending
                yield pending
        finally:
            close = getattr(self._tokens, "close", None)
            if close:
                close()
