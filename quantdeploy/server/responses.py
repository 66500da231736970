"""OpenAI response shapes: whole bodies and server-sent-event chunks, for chat and completions, with several
choices, logprobs and tool calls. What the generation thread hands over is a `Delta` per event; its logprobs are
already plain (token text, bytes, logprob, alternatives), so nothing here touches the model."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .errors import APIError


@dataclass
class TokenInfo:
    """A generated token as the API reports it."""

    token: str
    logprob: float
    bytes: list[int]
    top: list["TokenInfo"] = field(default_factory=list)


@dataclass
class Delta:
    """One event of one choice: text (with the logprobs of its tokens), then at its end the tool calls and the
    finish reason."""

    index: int
    text: str = ""
    logprobs: list[TokenInfo] | None = None
    tool_calls: list[dict] | None = None
    finish_reason: str | None = None


@dataclass
class Choice:
    """One finished choice, for a non-streamed body."""

    text: str = ""
    finish_reason: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    logprobs: list[TokenInfo] | None = None


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _lp_entry(t: TokenInfo) -> dict[str, Any]:
    return {"token": t.token, "logprob": t.logprob, "bytes": t.bytes}


def chat_logprobs(tokens: list[TokenInfo] | None) -> dict | None:
    if tokens is None:
        return None
    return {"content": [{**_lp_entry(t), "top_logprobs": [_lp_entry(a) for a in t.top]} for t in tokens],
            "refusal": None}


def completion_logprobs(tokens: list[TokenInfo] | None, offset: int) -> dict | None:
    """The legacy completions shape; `offset` is where the first token's text starts in the choice's text."""
    if tokens is None:
        return None
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": [t.token for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{a.token: a.logprob for a in t.top} for t in tokens], "text_offset": offsets}


def _message(c: Choice) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": c.text if c.text or not c.tool_calls else None}
    if c.tool_calls:
        msg["tool_calls"] = c.tool_calls
    return msg


def full_response(kind: str, rid: str, model: str, choices: list[Choice], usage: dict, *,
                  logprobs: bool, fingerprint: str = "") -> dict:
    created = int(time.time())
    if kind == "chat":
        out = [{"index": i, "message": _message(c), "logprobs": chat_logprobs(c.logprobs) if logprobs else None,
                "finish_reason": c.finish_reason} for i, c in enumerate(choices)]
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": fingerprint, "choices": out, "usage": usage}
    out = [{"index": i, "text": c.text, "logprobs": completion_logprobs(c.logprobs, 0) if logprobs else None,
            "finish_reason": c.finish_reason} for i, c in enumerate(choices)]
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": fingerprint, "choices": out, "usage": usage}


class ChunkWriter:
    """Server-sent events for one streamed response, in the OpenAI chunk format."""

    def __init__(self, kind: str, rid: str, model: str, *, n: int = 1, logprobs: bool = False,
                 include_usage: bool = False, fingerprint: str = ""):
        self.kind = kind
        self.n = n
        self.logprobs = logprobs
        self.include_usage = include_usage
        self.base = {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                     "created": int(time.time()), "model": model, "system_fingerprint": fingerprint}
        self._offsets = [0] * n  # completions: where each choice's next text starts

    def _event(self, choices: list[dict], **extra) -> bytes:
        body = {**self.base, "choices": choices, **extra}
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    def start(self) -> bytes:
        """Chat streams open each choice with its role."""
        if self.kind != "chat":
            return b""
        return b"".join(self._event([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                      "finish_reason": None}]) for i in range(self.n))

    def deltas(self, deltas: list[Delta]) -> bytes:
        return b"".join(self._delta(d) for d in deltas)

    def _delta(self, d: Delta) -> bytes:
        out = b""
        if d.text or d.logprobs:
            out += self._event([self._text_choice(d)])
        if d.tool_calls:
            out += self._tool_calls(d.index, d.tool_calls)
        if d.finish_reason is not None:
            if self.kind == "chat":
                choice = {"index": d.index, "delta": {}, "logprobs": None, "finish_reason": d.finish_reason}
            else:
                choice = {"index": d.index, "text": "", "logprobs": None, "finish_reason": d.finish_reason}
            out += self._event([choice])
        return out

    def _text_choice(self, d: Delta) -> dict:
        lp = d.logprobs if self.logprobs else None
        if self.kind == "chat":
            return {"index": d.index, "delta": {"content": d.text}, "logprobs": chat_logprobs(lp),
                    "finish_reason": None}
        offset = self._offsets[d.index]
        self._offsets[d.index] += len(d.text)
        return {"index": d.index, "text": d.text, "logprobs": completion_logprobs(lp, offset), "finish_reason": None}

    def _tool_calls(self, index: int, calls: list[dict]) -> bytes:
        """Each call as OpenAI streams it: its id, type and name with empty arguments, then the arguments."""
        out = b""
        for k, c in enumerate(calls):
            head = {"index": k, "id": c["id"], "type": "function", "function": {"name": c["function"]["name"],
                                                                                "arguments": ""}}
            args = {"index": k, "function": {"arguments": c["function"]["arguments"]}}
            for tc in (head, args):
                out += self._event([{"index": index, "delta": {"tool_calls": [tc]}, "logprobs": None,
                                     "finish_reason": None}])
        return out

    def finish(self, usage: dict) -> bytes:
        out = self._event([], usage=usage) if self.include_usage else b""
        return out + b"data: [DONE]\n\n"

    @staticmethod
    def error(e: APIError) -> bytes:
        return b"data: " + json.dumps(e.body()).encode() + b"\n\n"
