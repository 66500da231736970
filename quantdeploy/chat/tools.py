"""Tool calling: the tools a request offers, how the prompt shows them, and the grammar that forces a call.

The model's own chat template shows the tools when it knows how (it reads `tools`, as Qwen 2.5, Llama 3.1+,
Mistral and Hermes templates do); the model then calls them in its family's syntax. A template without tool
support (Gemma, most base models) gets the tools described in the system prompt, with the generic JSON reply
`{"tool_calls": [{"name": ..., "arguments": {...}}]}`, and the history's tool calls and results rewritten as
plain turns it can render.

With `tool_choice` "required" or a named function the reply is generated under a grammar of the family's call
syntax whose arguments follow each function's JSON schema: the calls always parse and validate. With "auto" the
model chooses, and the grammar is lazy: text is free until the model writes the opening of a call in its family's
syntax (`<tool_call>`, `[TOOL_CALLS]`, `{"tool_calls": [`), and from there on the call must be well-formed too.
chat/toolcalls.py finds the calls in what it wrote.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import RequestError

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_PARALLEL_CALLS = 8  # calls one forced reply may hold (the grammar's bound; a small model may not stop by itself)


@dataclass(frozen=True)
class CallSyntax:
    """How a model family writes tool calls: prefix, each call opened / closed, separators, suffix. `args` is the
    key that holds the arguments object."""

    family: str
    prefix: str = ""
    open: str = ""
    close: str = ""
    sep: str = ", "
    suffix: str = ""
    args: str = "arguments"
    hold_on: tuple[str, ...] = ()  # text that starts a call anywhere in a reply (streaming holds it back)


SYNTAX = {
    "hermes": CallSyntax("hermes", open="<tool_call>\n", close="\n</tool_call>", sep="\n",
                         hold_on=("<tool_call>",)),
    "llama3": CallSyntax("llama3", sep="; ", args="parameters"),
    "mistral": CallSyntax("mistral", prefix="[TOOL_CALLS][", suffix="]", hold_on=("[TOOL_CALLS]",)),
    "generic": CallSyntax("generic", prefix='{"tool_calls": [', suffix="]}"),
}
# markers that may appear in a template's text and name its family (first match wins)
_FAMILY_MARKERS = (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|python_tag|>", "llama3"),
                   ("<|start_header_id|>", "llama3"))


@dataclass
class ToolPlan:
    """What a chat with tools needs: the messages to render, extra render variables, the grammar (forced calls)
    and what the reply parser looks for."""

    tools: list[dict]
    choice: str  # none | auto | required | the forced function's name
    parallel: bool
    syntax: CallSyntax
    native: bool  # the template renders `tools` itself
    messages: list[dict] = field(default_factory=list)
    grammar: str | None = None

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    @property
    def forced(self) -> bool:
        return self.choice not in ("none", "auto")

    @property
    def render_kwargs(self) -> dict[str, Any]:
        return {"tools": self.tools} if self.native and self.tools else {}


# --- validating what the request sent --------------------------------------------------------------------

def check_tools(tools: Any, param: str = "tools") -> list[dict]:
    """OpenAI's tools list, checked (each function's parameters must be a schema the grammar can enforce)."""
    from ..structured.grammar import json_schema_grammar

    if tools is None:
        return []
    if not isinstance(tools, list):
        raise RequestError(f"{param} must be a list of {{\"type\": \"function\", \"function\": {{...}}}}", param)
    out, seen = [], set()
    for i, t in enumerate(tools):
        where = f"{param}.{i}"
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(t.get("function"), dict):
            raise RequestError(f"{where} must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                               "\"parameters\": {...}}}}; only function tools are supported", where)
        f = t["function"]
        name = f.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RequestError(f"{where}.function.name must be 1-64 letters, digits, '_', '.' or '-'",
                               f"{where}.function.name")
        if name in seen:
            raise RequestError(f"{where}.function.name: two tools are called '{name}'", f"{where}.function.name")
        seen.add(name)
        if f.get("description") is not None and not isinstance(f["description"], str):
            raise RequestError(f"{where}.function.description must be a string", f"{where}.function.description")
        params = f.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise RequestError(f"{where}.function.parameters must be a JSON schema of type object",
                               f"{where}.function.parameters")
        json_schema_grammar(params, f"{where}.function.parameters")
        clean = {"name": name, "parameters": params}
        if f.get("description"):
            clean["description"] = f["description"]
        out.append({"type": "function", "function": clean})
    return out


def check_tool_choice(choice: Any, tools: list[dict], param: str = "tool_choice") -> str:
    """'none' | 'auto' | 'required' | the name of the one function to call."""
    if choice is None:
        return "auto" if tools else "none"
    names = [t["function"]["name"] for t in tools]
    if isinstance(choice, str) and choice not in ("none", "auto", "required") and choice in names:
        return choice  # a function's name (the Python API's short form)
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise RequestError(f"{param} must be none, auto, required or {{\"type\": \"function\", \"function\": "
                               f"{{\"name\": ...}}}}, not {json.dumps(choice)}", param)
        if choice == "required" and not tools:
            raise RequestError(f"{param} is required but no tools were given", param)
        return choice
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise RequestError(f"{param} must name a function: {{\"type\": \"function\", \"function\": {{\"name\": "
                           "...}}}", param)
    if name not in names:
        raise RequestError(f"{param} names the function '{name}', which is not among the tools", param)
    return name


def check_history(messages: list[dict], param: str = "messages") -> None:
    """Assistant tool calls and tool results must pair up: every `tool` message answers an earlier call."""
    calls: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"{param}.{i}"
        if m.get("role") == "assistant" and m.get("tool_calls"):
            for j, c in enumerate(m["tool_calls"]):
                cw = f"{where}.tool_calls.{j}"
                f = c.get("function") if isinstance(c, dict) else None
                if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(c.get("id"), str):
                    raise RequestError(f"{cw} must be {{\"id\": ..., \"type\": \"function\", \"function\": "
                                       "{\"name\": ..., \"arguments\": \"{...}\"}}", cw)
                args = f.get("arguments", "{}")
                if isinstance(args, str):
                    try:
                        json.loads(args or "{}")
                    except json.JSONDecodeError:
                        raise RequestError(f"{cw}.function.arguments is not valid JSON", f"{cw}.function.arguments") \
                            from None
                elif not isinstance(args, dict):
                    raise RequestError(f"{cw}.function.arguments must be a JSON string", f"{cw}.function.arguments")
                calls[c["id"]] = f["name"]
        elif m.get("role") == "tool":
            tid = m.get("tool_call_id")
            if not isinstance(tid, str) or not tid:
                raise RequestError(f"{where}.tool_call_id is required on a tool message", f"{where}.tool_call_id")
            if tid not in calls:
                raise RequestError(f"{where}.tool_call_id '{tid}' answers no earlier assistant tool call",
                                   f"{where}.tool_call_id")


# --- the prompt -----------------------------------------------------------------------------------------

def family_of(template: str) -> str:
    for marker, family in _FAMILY_MARKERS:
        if marker in template:
            return family
    return "generic"


def renders_tools(template: str) -> bool:
    return re.search(r"\btools\b", template) is not None


def plan(template: str, messages: list[dict], tools: list[dict], choice: str, parallel: bool,
         special_id: Callable[[str], int | None]) -> ToolPlan:
    native = renders_tools(template)
    syntax = SYNTAX[family_of(template) if native else "generic"]
    p = ToolPlan(tools=tools, choice=choice, parallel=parallel, syntax=syntax, native=native)
    p.messages = _native_history(messages) if native else _generic_history(messages, tools if choice != "none"
                                                                          else [], syntax)
    if p.forced:
        p.grammar = call_grammar(p, special_id)
    elif choice == "auto" and tools:
        p.grammar = auto_grammar(p, special_id)
    return p


def _args_dict(args: Any) -> Any:
    if isinstance(args, str):
        try:
            return json.loads(args or "{}")
        except json.JSONDecodeError:
            return args
    return args


def _native_history(messages: list[dict]) -> list[dict]:
    """Templates read tool calls' arguments as objects (they `tojson` them) and expect text where content is null."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _args_dict(c["function"].get(
                "arguments", "{}"))}} for c in m["tool_calls"]]
        out.append(m)
    return out


def tools_prompt(tools: list[dict]) -> str:
    lines = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return ("You can call these tools:\n" + lines + "\n\nTo call tools, reply with this JSON and nothing else:\n"
            '{"tool_calls": [{"name": "<tool name>", "arguments": {<the arguments>}}]}\n'
            "Tool results come back in the next user turn. To answer without a tool, reply in plain text.")


def _generic_history(messages: list[dict], tools: list[dict], syntax: CallSyntax) -> list[dict]:
    """Rewrite tool turns for a template that knows only system / user / assistant: calls become the JSON the
    model is told to write, results become user turns; neighbouring turns of one role are joined."""
    out: list[dict] = []
    names: dict[str, str] = {}
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                names[c["id"]] = c["function"]["name"]
                calls.append({"name": c["function"]["name"], "arguments": _args_dict(c["function"].get("arguments"))})
            content = (content + "\n" if content else "") + json.dumps({"tool_calls": calls}, ensure_ascii=False)
        elif role == "tool":
            role = "user"
            content = f"Result of the tool {names.get(m['tool_call_id'], '?')} (call {m['tool_call_id']}):\n{content}"
        if out and out[-1]["role"] == role and role != "system":
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    if tools:
        if out and out[0]["role"] == "system":
            out[0]["content"] = out[0]["content"] + "\n\n" + tools_prompt(tools)
        else:
            out.insert(0, {"role": "system", "content": tools_prompt(tools)})
    return out


# --- the grammar of a forced call -----------------------------------------------------------------------

def _call_schema(p: ToolPlan) -> dict:
    """One call object, {"name": ..., "arguments": {...}}, for any of the tools this reply may call."""
    from ..structured.grammar import JSON_LAYOUT, closed

    tools = [t for t in p.tools if p.choice in ("required", "auto") or t["function"]["name"] == p.choice]
    schemas = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                  p.syntax.args: closed(t["function"]["parameters"])},
                "required": ["name", p.syntax.args], "additionalProperties": False, "x-guidance": JSON_LAYOUT}
               for t in tools]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas, "x-guidance": JSON_LAYOUT}


# what opens a call in each family's syntax, for the lazy grammar of tool_choice "auto" (Llama 3's bare JSON has no
# opening of its own: its calls are only parsed)
AUTO_TRIGGER = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]", "generic": '{"tool_calls": ['}


def auto_grammar(p: ToolPlan, special_id: Callable[[str], int | None]) -> str | None:
    """Free text, in which each opening of a call starts a call that must be well-formed (llguidance's lazy
    lexemes, as its StructTag builds them)."""
    from ..structured.grammar import lark_grammar

    s = p.syntax
    trigger = AUTO_TRIGGER.get(s.family)
    if trigger is None:
        return None
    if s.open:  # each call wrapped on its own (Hermes): a tag per call
        body = f"{_lit(s.open[len(trigger):], special_id)} call {_lit(s.close, special_id)}"
    else:  # a list of calls (Mistral, generic)
        more = f"({_lit(s.sep, special_id)} call){{0,{MAX_PARALLEL_CALLS - 1}}}"
        body = f"{_lit(s.prefix[len(trigger):], special_id)} call {more} {_lit(s.suffix, special_id)}"
    tid = special_id(trigger) if trigger in _MARKERS else None
    if tid is not None:  # a special token cannot occur inside free text: it opens the call by itself
        tag = f"tag: TAG_TEXT <[{tid}]> {body}\n"
    else:
        tag = f"tag_open[lazy]: TAG_TEXT {json.dumps(trigger)}\ntag: tag_open {body}\n"
    lark = ("%llguidance {}\nstart: tag* TAG_TEXT\nTAG_TEXT: /(.|\\n)*/\n" + tag +
            f"call: %json {json.dumps(_call_schema(p))}\n")
    return lark_grammar(lark, "tools")


def call_grammar(p: ToolPlan, special_id: Callable[[str], int | None]) -> str:
    from ..structured.grammar import lark_grammar

    call_schema = _call_schema(p)
    s = p.syntax
    one = f"{_lit(s.open, special_id)} call {_lit(s.close, special_id)}".strip()
    more = f" ({_lit(s.sep, special_id)} {one}){{0,{MAX_PARALLEL_CALLS - 1}}}" if p.parallel and \
        p.choice == "required" else ""
    lark = (f"start: {_lit(s.prefix, special_id)} {one}{more} {_lit(s.suffix, special_id)}\n"
            f"call: %json {json.dumps(call_schema)}\n")
    return lark_grammar(lark, "tools")


_MARKERS = ("<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>")


def _lit(text: str, special_id: Callable[[str], int | None]) -> str:
    """Lark for a literal piece of call syntax: a marker the tokenizer has as one special token becomes that token
    (<[id]>); the rest are quoted strings."""
    if not text:
        return ""
    parts = []
    for piece in re.split("(" + "|".join(re.escape(m) for m in _MARKERS) + ")", text):
        if not piece:
            continue
        tid = special_id(piece) if piece in _MARKERS else None
        parts.append(f"<[{tid}]>" if tid is not None else json.dumps(piece))
    return " ".join(parts)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]
