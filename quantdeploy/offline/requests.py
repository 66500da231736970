"""One offline request (a line of the input file, or an item of `generate_batch`), parsed and checked before it
reaches the model. Anything wrong with it is a `BadRequest` whose message names the field and what to do."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from ..backends.base import GenerationParams

ROLES = ("system", "user", "assistant")
MAX_TEMPERATURE = 2.0  # as the OpenAI API (and `serve`) accept


class BadRequest(Exception):
    """A request that cannot run; the message is what the output's `error` says."""


@dataclass
class Request:
    id: Any
    params: GenerationParams
    prompt: str | None = None  # a raw completion...
    messages: list[dict[str, str]] | None = None  # ...or a chat
    max_tokens_given: bool = False  # False: params.max_tokens is a default, cut to what the context holds
    metadata: Any = None
    has_metadata: bool = False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _max_tokens(v: Any) -> dict:
    if not _is_int(v) or v < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {json.dumps(v)}")
    return {"max_tokens": v}


def _temperature(v: Any) -> dict:
    if not _is_number(v) or not 0 <= v <= MAX_TEMPERATURE:
        raise BadRequest(f"temperature must be a number from 0 (greedy) to {MAX_TEMPERATURE:g}, got {json.dumps(v)}")
    return {"temperature": float(v)}


def _top_p(v: Any) -> dict:
    if not _is_number(v) or not 0 < v <= 1:
        raise BadRequest(f"top_p must be a number in (0, 1], got {json.dumps(v)}")
    return {"top_p": float(v)}


def _top_k(v: Any) -> dict:
    if not _is_int(v) or v < 0:
        raise BadRequest(f"top_k must be 0 (off) or a positive integer, got {json.dumps(v)}")
    return {"top_k": v}


def _seed(v: Any) -> dict:
    if not _is_int(v):
        raise BadRequest(f"seed must be an integer, got {json.dumps(v)}")
    return {"seed": v}


def _stop(v: Any) -> dict:
    if isinstance(v, str):
        return {"stop": (v,) if v else ()}
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return {"stop": tuple(s for s in v if s)}
    raise BadRequest(f"stop must be a string or a list of strings, got {json.dumps(v)}")


def _ignore_eos(v: Any) -> dict:
    if not isinstance(v, bool):
        raise BadRequest(f"ignore_eos must be true or false, got {json.dumps(v)}")
    return {"ignore_eos": v}


SAMPLING = {"max_tokens": _max_tokens, "temperature": _temperature, "top_p": _top_p, "top_k": _top_k,
            "seed": _seed, "stop": _stop, "ignore_eos": _ignore_eos}
FIELDS = ("id", "prompt", "messages", *SAMPLING, "metadata")


def valid_id(v: Any) -> bool:
    return isinstance(v, str) or _is_int(v)


def id_key(v: Any) -> str:
    """How ids are compared: 7 and "7" are different ids."""
    return json.dumps(v, ensure_ascii=False)


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest('messages must be a non-empty list of {"role", "content"} objects')
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise BadRequest(f'messages[{i}] must be an object {{"role", "content"}}')
        role = m.get("role")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {json.dumps(role)}")
        content = m.get("content")
        if isinstance(content, list) and content and all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            content = "\n".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadRequest(f'messages[{i}].content must be a string (or a list of {{"type": "text", "text"}} '
                             "parts)")
        out.append({"role": role, "content": content})
    return out


def parse_item(item: Any, defaults: GenerationParams, default_id: Any) -> Request:
    """A str (a raw prompt), a list (chat messages) or a dict with the fields of an input line."""
    if isinstance(item, str):
        item = {"prompt": item}
    elif isinstance(item, list):
        item = {"messages": item}
    if not isinstance(item, dict):
        raise BadRequest(f"expected a JSON object with 'prompt' or 'messages', got {type(item).__name__}")
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field {', '.join(repr(k) for k in unknown)}; the fields are: {', '.join(FIELDS)} "
                         "(put anything else under 'metadata', which is copied to the output)")
    rid = item.get("id", default_id)
    if not valid_id(rid):
        raise BadRequest(f"id must be a string or an integer, got {json.dumps(rid)}")
    has_prompt, has_messages = item.get("prompt") is not None, item.get("messages") is not None
    if has_prompt == has_messages:
        raise BadRequest("give exactly one of 'prompt' (a raw completion) and 'messages' (a chat)" if has_prompt else
                         "missing 'prompt' (a raw completion) or 'messages' (a chat)")
    prompt = messages = None
    if has_prompt:
        prompt = item["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("prompt must be a non-empty string")
    else:
        messages = _messages(item["messages"])
    changes: dict[str, Any] = {}
    for name, check in SAMPLING.items():
        if name in item:
            if item[name] is None:
                continue  # null: the default
            changes.update(check(item[name]))
    return Request(id=rid, params=replace(defaults, **changes), prompt=prompt, messages=messages,
                   max_tokens_given="max_tokens" in changes, metadata=item.get("metadata"),
                   has_metadata="metadata" in item)


def line_id(text: str, lineno: int) -> Any:
    """The id a line answers under: its own valid `id`, else its line number (also for lines that do not parse)."""
    try:
        obj = json.loads(text)
    except ValueError:
        return lineno
    rid = obj.get("id", lineno) if isinstance(obj, dict) else lineno
    return rid if valid_id(rid) else lineno


def parse_line(text: str, lineno: int, defaults: GenerationParams) -> Request:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise BadRequest(f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"expected a JSON object with 'prompt' or 'messages', got {type(obj).__name__}")
    return parse_item(obj, defaults, lineno)
