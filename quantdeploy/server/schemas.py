"""OpenAI request parsing and response shapes. OpenAI types live here only; the rest of the server works
with `Job` (what to generate) and `Generation` (what came out)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..backends.base import GenerationParams
from .errors import APIError, bad_request
from .fields import QUIET, REFUSED, refuse_unhonoured

log = logging.getLogger("quantdeploy.server")

MAX_STOP = 16
ROLES = ("system", "developer", "user", "assistant")


@dataclass
class Job:
    """One request, parsed: a chat (messages) or a raw completion (prompt text)."""

    kind: Literal["chat", "completion"]
    model: str | None
    params: GenerationParams
    max_tokens: int | None  # None: as many as the context window holds after the prompt
    stream: bool = False
    include_usage: bool = False
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str = ""


class _Common(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # extension (as in vLLM)
    seed: int | None = None
    stream: bool | None = False
    n: int | None = None
    ignore_eos: bool | None = False  # extension (as in vLLM): benchmarks generate exactly max_tokens
    stop: Any = None
    stream_options: Any = None
    logprobs: Any = None


class _Chat(_Common):
    messages: Any = None
    tools: Any = None
    response_format: Any = None


class _Completion(_Common):
    prompt: Any = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None


def load_json(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, not {type(data).__name__}")
    return data


_warned: set[str] = set()


def _validate(cls: type[BaseModel], data: dict[str, Any]) -> Any:
    refuse_unhonoured(data)
    for name in sorted(set(data) - set(cls.model_fields) - QUIET - set(REFUSED) - _warned):
        _warned.add(name)
        log.warning("ignoring the request field '%s', which this server does not know (said once per field)", name)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        param = ".".join(str(x) for x in err["loc"]) or None
        msg = f"'{param}' is required" if err["type"] == "missing" else f"{param}: {err['msg'].lower()}"
        raise bad_request(msg, param=param) from None


def parse_chat(raw: bytes) -> Job:
    req = _validate(_Chat, load_json(raw))
    if req.tools:
        raise bad_request("tools and function calling are not supported by this server", param="tools")
    rf = req.response_format
    if rf is not None and not (isinstance(rf, dict) and rf.get("type") in (None, "text")):
        raise bad_request("only response_format {\"type\": \"text\"} is supported", param="response_format")
    if req.logprobs:
        raise bad_request("logprobs are not supported by this server", param="logprobs")
    messages = _messages(req.messages)
    params, max_tokens = _params(req, default_max_tokens=None)
    return Job(kind="chat", model=req.model, params=params, max_tokens=max_tokens, stream=bool(req.stream),
               include_usage=_include_usage(req), messages=messages)


def parse_completion(raw: bytes) -> Job:
    req = _validate(_Completion, load_json(raw))
    if req.echo:
        raise bad_request("echo is not supported by this server", param="echo")
    if req.suffix:
        raise bad_request("suffix is not supported by this server", param="suffix")
    if req.best_of not in (None, 1):
        raise bad_request("best_of must be 1 (one completion per request)", param="best_of")
    if req.logprobs:
        raise bad_request("logprobs are not supported by this server", param="logprobs")
    prompt = _prompt(req.prompt)
    params, max_tokens = _params(req, default_max_tokens=16)  # the OpenAI default for /v1/completions
    return Job(kind="completion", model=req.model, params=params, max_tokens=max_tokens, stream=bool(req.stream),
               include_usage=_include_usage(req), prompt=prompt)


def _messages(raw: Any) -> list[dict[str, str]]:
    if raw is None:
        raise bad_request("'messages' is required: a list of {\"role\", \"content\"} objects", param="messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object with role and content", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role must be one of system, user, assistant (got {json.dumps(role)}); "
                              "tool messages are not supported", param=f"{where}.role")
        out.append({"role": "system" if role == "developer" else role,
                    "content": _content(m.get("content"), f"{where}.content")})
    return out


def _content(c: Any, where: str) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c:
        parts = []
        for j, p in enumerate(c):
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise bad_request(f"{where}.{j} must be {{\"type\": \"text\", \"text\": ...}}; only text content is "
                                  "supported", param=f"{where}.{j}")
            parts.append(p["text"])
        return "\n".join(parts)
    raise bad_request(f"{where} must be a string or a list of text parts", param=where)


def _prompt(p: Any) -> str:
    if isinstance(p, list) and len(p) == 1:
        p = p[0]
    if isinstance(p, str) and p:
        return p
    if p is None:
        raise bad_request("'prompt' is required", param="prompt")
    if isinstance(p, list) and len(p) > 1 and all(isinstance(x, str) for x in p):
        raise bad_request("one prompt per request: send a string, not a list of several", param="prompt")
    raise bad_request("'prompt' must be a non-empty string (token-id prompts are not supported)", param="prompt")


def _stop(s: Any) -> tuple[str, ...]:
    if s is None:
        return ()
    if isinstance(s, str):
        return (s,)
    if isinstance(s, list) and len(s) <= MAX_STOP and all(isinstance(x, str) for x in s):
        return tuple(x for x in s if x)
    raise bad_request(f"'stop' must be a string or a list of at most {MAX_STOP} strings", param="stop")


def _include_usage(req: _Common) -> bool:
    so = req.stream_options
    if so is None:
        return False
    if not isinstance(so, dict) or not isinstance(so.get("include_usage", False), bool):
        raise bad_request("'stream_options' must be {\"include_usage\": true|false}", param="stream_options")
    return bool(so.get("include_usage"))


def _params(req: _Common, *, default_max_tokens: int | None) -> tuple[GenerationParams, int | None]:
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    param = "max_tokens" if req.max_tokens is not None else "max_completion_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise bad_request(f"{param} must be at least 1, got {max_tokens}", param=param)
    t = 1.0 if req.temperature is None else req.temperature
    if not 0 <= t <= 2:
        raise bad_request(f"temperature must be between 0 and 2, got {t}", param="temperature")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not 0 < top_p <= 1:
        raise bad_request(f"top_p must be in (0, 1], got {top_p}", param="top_p")
    top_k = req.top_k or 0
    if top_k < 0:
        raise bad_request(f"top_k must be 0 (off) or more, got {top_k}", param="top_k")
    if req.n not in (None, 1):
        raise bad_request("n must be 1 (one choice per request)", param="n")
    if max_tokens is None:
        max_tokens = default_max_tokens
    params = GenerationParams(max_tokens=max_tokens or 1, temperature=t, top_p=top_p, top_k=top_k, seed=req.seed,
                              stop=_stop(req.stop), ignore_eos=bool(req.ignore_eos))
    return params, max_tokens


# --- responses ---------------------------------------------------------------------------------------

def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def full_response(job: Job, rid: str, model: str, text: str, finish_reason: str | None, usage: dict) -> dict:
    created = int(time.time())
    if job.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
        return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": [choice],
                "usage": usage}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice],
            "usage": usage}


class ChunkWriter:
    """Server-sent events for one streamed response, in the OpenAI chunk format."""

    def __init__(self, job: Job, rid: str, model: str):
        self.job = job
        self.base = {"id": rid, "object": "chat.completion.chunk" if job.kind == "chat" else "text_completion",
                     "created": int(time.time()), "model": model}

    def _event(self, choices: list[dict], **extra) -> bytes:
        return b"data: " + json.dumps({**self.base, "choices": choices, **extra}, ensure_ascii=False).encode() + \
            b"\n\n"

    def _choice(self, text: str | None, finish_reason: str | None, role: bool = False) -> dict:
        if self.job.kind == "chat":
            delta: dict[str, str] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    def start(self) -> bytes:
        return self._event([self._choice("", None, role=True)]) if self.job.kind == "chat" else b""

    def pieces(self, pieces: list[str]) -> bytes:
        return b"".join(self._event([self._choice(p, None)]) for p in pieces if p)

    def finish(self, finish_reason: str | None, usage: dict) -> bytes:
        out = self._event([self._choice(None if self.job.kind == "chat" else "", finish_reason)])
        if self.job.include_usage:
            out += self._event([], usage=usage)
        return out + b"data: [DONE]\n\n"

    @staticmethod
    def error(e: APIError) -> bytes:
        return b"data: " + json.dumps(e.body()).encode() + b"\n\n"
