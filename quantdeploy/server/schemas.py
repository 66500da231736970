"""OpenAI request parsing. OpenAI types live at the edge only (here and in responses.py); the rest of the server
works with `Job` (what to generate) and `Generation` (what came out).

Everything that can be checked without the model is checked here, on the event loop, before the request waits
for a slot: a bad tool schema, a tool message without its call or an n that is too large get their 400 at once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..backends.base import MAX_LOGPROBS, GenerationParams
from ..errors import RequestError
from .errors import bad_request
from .fields import QUIET, REFUSED, refuse_unhonoured

log = logging.getLogger("quantdeploy.server")

MAX_STOP = 256  # stop strings per request (OpenAI allows 4; editors such as Continue send a few dozen)
MAX_N = 16  # choices per request
MAX_COMPLETION_LOGPROBS = 5  # /v1/completions `logprobs`, as at OpenAI
ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class Job:
    """One request, parsed: a chat (messages) or a raw completion (prompt text)."""

    kind: Literal["chat", "completion"]
    model: str | None
    params: GenerationParams
    max_tokens: int | None  # None: as many as the context window holds after the prompt
    stream: bool = False
    include_usage: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    n: int = 1
    logprobs: bool = False  # answer with logprobs (params.logprobs says how many alternatives)
    tools: list[dict] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = False  # a forced reply holds one call unless the request sets it to true
    response_format: dict | None = None


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
    json_schema: Any = None  # extension (as in llama.cpp's server): the output follows this JSON schema
    grammar: Any = None  # extension (as in llama.cpp's server): the output follows this GBNF grammar


class _Chat(_Common):
    messages: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class _Completion(_Common):
    prompt: Any = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None
    response_format: Any = None  # extension (as in vLLM): structured output for raw completions


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


def _constraint(req: "_Common") -> tuple[dict | None, str | None]:
    """The output constraint a request asks for: (response_format, GBNF grammar); at most one of response_format,
    json_schema and grammar."""
    from ..structured.grammar import gbnf_grammar

    given = [k for k in ("response_format", "json_schema", "grammar") if getattr(req, k, None) is not None
             and not (k == "response_format" and isinstance(req.response_format, dict)
                      and req.response_format.get("type") in (None, "text"))]
    if len(given) > 1:
        raise bad_request(f"send one of {', '.join(given)}: each constrains the whole output", param=given[1])
    if req.json_schema is not None:
        return {"type": "json_schema", "json_schema": {"name": "json_schema", "schema": req.json_schema}}, None
    if req.grammar is not None:
        return None, _checked(gbnf_grammar, req.grammar)
    return getattr(req, "response_format", None), None


def _checked(fn, *args):
    """Run a model-independent check of chat/ or structured/; its RequestError becomes a 400 naming the field."""
    try:
        return fn(*args)
    except RequestError as e:
        raise bad_request(str(e), param=e.param) from None


def parse_chat(raw: bytes) -> Job:
    from ..chat.tools import check_history, check_tool_choice, check_tools
    from ..structured.grammar import response_format_grammar

    req = _validate(_Chat, load_json(raw))
    messages = _messages(req.messages)
    tools = _checked(check_tools, req.tools)
    tool_choice = _checked(check_tool_choice, req.tool_choice, tools)
    _checked(check_history, messages)
    response_format, gbnf = _constraint(req)
    try:
        response_format_grammar(response_format)
    except RequestError as e:
        raise bad_request(str(e), param="json_schema" if req.json_schema is not None else e.param) from None
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_LOGPROBS:
        raise bad_request(f"top_logprobs must be between 0 and {MAX_LOGPROBS}, got {req.top_logprobs}",
                          param="top_logprobs")
    if req.top_logprobs and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    params, max_tokens = _params(req, default_max_tokens=None,
                                 logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    params.grammar = gbnf
    return Job(kind="chat", model=req.model, params=params, max_tokens=max_tokens, stream=bool(req.stream),
               include_usage=_include_usage(req), messages=messages, n=_n(req), logprobs=bool(req.logprobs),
               tools=tools or None, tool_choice=tool_choice if tools else None,
               parallel_tool_calls=req.parallel_tool_calls is True, response_format=response_format)


def parse_completion(raw: bytes) -> Job:
    from ..structured.grammar import response_format_grammar

    req = _validate(_Completion, load_json(raw))
    if req.echo:
        raise bad_request("echo is not supported by this server", param="echo")
    if req.suffix:
        raise bad_request("suffix is not supported by this server", param="suffix")
    if req.best_of not in (None, 1) and req.best_of != req.n:
        raise bad_request("best_of must be 1 or equal to n (each choice is one sample; none is discarded)",
                          param="best_of")
    if req.logprobs is not None and not 0 <= req.logprobs <= MAX_COMPLETION_LOGPROBS:
        raise bad_request(f"logprobs must be between 0 and {MAX_COMPLETION_LOGPROBS}, got {req.logprobs}",
                          param="logprobs")
    prompt = _prompt(req.prompt)
    response_format, gbnf = _constraint(req)
    try:
        grammar = gbnf or response_format_grammar(response_format)
    except RequestError as e:
        raise bad_request(str(e), param="json_schema" if req.json_schema is not None else e.param) from None
    params, max_tokens = _params(req, default_max_tokens=16, logprobs=req.logprobs)  # OpenAI's default: 16
    params.grammar = grammar
    return Job(kind="completion", model=req.model, params=params, max_tokens=max_tokens, stream=bool(req.stream),
               include_usage=_include_usage(req), prompt=prompt, n=_n(req), logprobs=req.logprobs is not None)


def _messages(raw: Any) -> list[dict[str, Any]]:
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
            raise bad_request(f"{where}.role must be one of {', '.join(ROLES)} (got {json.dumps(role)})",
                              param=f"{where}.role")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role}
        if role == "assistant" and m.get("tool_calls"):
            if not isinstance(m["tool_calls"], list):
                raise bad_request(f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
            msg["tool_calls"] = m["tool_calls"]
            msg["content"] = None if m.get("content") is None else _content(m["content"], f"{where}.content")
        else:
            msg["content"] = _content(m.get("content"), f"{where}.content")
        if role == "tool":
            msg["tool_call_id"] = m.get("tool_call_id")
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        out.append(msg)
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
        return tuple(dict.fromkeys(x for x in s if x))
    raise bad_request(f"'stop' must be a string or a list of at most {MAX_STOP} strings", param="stop")


def _n(req: _Common) -> int:
    n = 1 if req.n is None else req.n
    if not 1 <= n <= MAX_N:
        raise bad_request(f"n must be between 1 and {MAX_N}, got {n}", param="n")
    return n


def _include_usage(req: _Common) -> bool:
    so = req.stream_options
    if so is None:
        return False
    if not isinstance(so, dict) or not isinstance(so.get("include_usage", False), bool):
        raise bad_request("'stream_options' must be {\"include_usage\": true|false}", param="stream_options")
    return bool(so.get("include_usage"))


def _params(req: _Common, *, default_max_tokens: int | None, logprobs: int | None
            ) -> tuple[GenerationParams, int | None]:
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
    if max_tokens is None:
        max_tokens = default_max_tokens
    params = GenerationParams(max_tokens=max_tokens or 1, temperature=t, top_p=top_p, top_k=top_k, seed=req.seed,
                              stop=_stop(req.stop), ignore_eos=bool(req.ignore_eos), logprobs=logprobs)
    return params, max_tokens
