"""Grammars from OpenAI's `response_format` and from JSON schemas, checked before any token is generated.

A schema feature llguidance cannot enforce (`uniqueItems`, `not`, `patternProperties` where it matters, ...) is
refused with a RequestError that names it, never silently dropped: the caller asked for output that satisfies
the schema, and an unenforced keyword would break that promise.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import RequestError

# How generated JSON is laid out: one space after ',' and ':' (as models write it), no other whitespace. Free
# whitespace lets a small model pad with newlines until max_tokens; a schema's "x-guidance" may override this.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Integers without bounds stay within the range RFC 7493 (I-JSON) says JSON integers are exchanged in without loss
# (JavaScript's safe integers): a small model otherwise writes 0s until max_tokens and the JSON never closes.
SAFE_INTEGER = 2 ** 53 - 1


def _llg():
    try:
        import llguidance
    except ImportError:
        from ..errors import BackendUnavailable

        raise BackendUnavailable("structured output needs llguidance: pip install llguidance") from None
    return llguidance


def check(grammar: str, param: str) -> str:
    """The grammar, if llguidance can enforce it; else a RequestError naming `param` and what is wrong."""
    is_error, messages = _llg().LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        msg = messages[0].strip().splitlines()[0] if messages else "invalid grammar"
        m = re.match(r'Unimplemented keys: \[(.*)\]', msg)
        if m:
            keys = ", ".join(k.strip().strip('"') for k in m.group(1).split(","))
            raise RequestError(f"{param} uses JSON Schema keywords the server cannot enforce: {keys}; remove them "
                               "(see docs/serving.md, structured output)", param)
        raise RequestError(f"{param} is not a usable JSON schema: {msg}", param)
    return grammar


def closed(schema: Any, *, inside_all_of: bool = False) -> Any:
    """The schema as the grammar enforces it, bounded where JSON Schema leaves things open and a small model would
    not stop: `additionalProperties: false` on every object schema that lists its properties and says nothing
    about others (as in OpenAI's strict mode and xgrammar's default), so objects hold the listed properties only;
    and integers without bounds kept to ±SAFE_INTEGER. Objects that allow other properties explicitly keep them;
    branches of an allOf are left open (closing them would conflict). Every reply still validates against the
    schema as given."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains", "prefixItems", "anyOf",
                "oneOf"):
        if key in out and isinstance(out[key], (dict, list)):
            out[key] = closed(out[key])
    if isinstance(out.get("allOf"), list):
        out["allOf"] = [closed(s, inside_all_of=True) for s in out["allOf"]]
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {k: closed(v) for k, v in out[key].items()}
    opens = ("additionalProperties", "patternProperties", "unevaluatedProperties")
    if "properties" in out and not inside_all_of and not any(k in out for k in opens):
        out["additionalProperties"] = False
    kinds = out.get("type") if isinstance(out.get("type"), list) else [out.get("type")]
    if "integer" in kinds:
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -SAFE_INTEGER
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = SAFE_INTEGER
    return out


def json_schema_grammar(schema: Any, param: str = "schema") -> str:
    """A grammar for JSON documents valid against `schema` (a dict, or True for any JSON value); see closed()."""
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise RequestError(f"{param} must be a JSON schema object, not {type(schema).__name__}", param)
    try:
        grammar = _llg().LLMatcher.grammar_from_json_schema(json.dumps(closed(schema)), defaults=JSON_LAYOUT)
    except (ValueError, TypeError) as e:
        raise RequestError(f"{param} is not a usable JSON schema: {e}", param) from None
    return check(grammar, param)


def lark_grammar(lark: str, param: str = "grammar") -> str:
    return check(_llg().LLMatcher.grammar_from_lark(lark), param)


def gbnf_grammar(gbnf: Any, param: str = "grammar") -> str:
    """A grammar from GBNF text, llama.cpp's grammar format (llguidance converts it)."""
    if not isinstance(gbnf, str) or not gbnf.strip():
        raise RequestError(f"{param} must be a GBNF grammar (text such as 'root ::= \"yes\" | \"no\"')", param)
    try:
        grammar = _llg().grammar_from("gbnf", gbnf)
    except ValueError as e:
        raise RequestError(f"{param} is not a usable GBNF grammar: {str(e).splitlines()[0]}", param) from None
    return check(grammar, param)


def response_format_grammar(rf: Any, param: str = "response_format") -> str | None:
    """OpenAI's response_format -> a grammar, or None for plain text."""
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise RequestError(f"{param} must be an object such as {{\"type\": \"json_object\"}}", param)
    kind = rf.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":  # with "schema": the extension of llama.cpp's server, Together and Fireworks
        if "schema" in rf:
            return json_schema_grammar(rf["schema"], f"{param}.schema")
        return json_schema_grammar({"type": "object"}, param)
    if kind != "json_schema":
        raise RequestError(f"{param}.type must be text, json_object or json_schema, not {json.dumps(kind)}",
                           f"{param}.type")
    js = rf.get("json_schema")
    where = f"{param}.json_schema"
    if not isinstance(js, dict):
        raise RequestError(f"{where} is required with type json_schema: {{\"name\": ..., \"schema\": {{...}}}}", where)
    name = js.get("name", "response")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RequestError(f"{where}.name must be 1-64 letters, digits, '_' or '-'", f"{where}.name")
    if not isinstance(js.get("strict", False), bool):
        raise RequestError(f"{where}.strict must be true or false", f"{where}.strict")
    schema = js.get("schema", {"type": "object"})
    return json_schema_grammar(schema, f"{where}.schema")
