"""Finding the tool calls in what a model wrote, whichever family's syntax it used.

One parser reads them all: Hermes / Qwen `<tool_call>{...}</tool_call>`, Llama 3.x `{"name", "parameters"}`
(optionally after `<|python_tag|>`, several joined by `;`), Mistral `[TOOL_CALLS][{...}]` and
`[TOOL_CALLS]name[ARGS]{...}`, and the generic `{"tool_calls": [...]}` that prompts without a native format ask
for. Markers may be missing from the text (special tokens are not shown), so calls are recognised by their
JSON: an object naming one of the offered tools, with an object of arguments.

ToolCallFilter sits between a Generation's text and its reader: text that may be the start of a call is held
back; at the end the held text is parsed, and calls become `tool_calls` while anything else is shown as text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .tools import SYNTAX, ToolPlan, new_call_id

_MARKERS = re.compile(r"<tool_call>|</tool_call>|\[TOOL_CALLS\]|<\|python_tag\|>|```(?:json)?")
_V11 = re.compile(r"([A-Za-z0-9_.-]{1,64})\s*(?:\[ARGS\])?\s*(?=\{)")


def parse_calls(text: str, names: list[str]) -> tuple[str, list[dict]]:
    """(the text that is not a call, the calls in OpenAI's shape). A call must name one of `names`."""
    original = text
    text = _MARKERS.sub(lambda m: " " * len(m.group(0)), text)  # keep offsets; markers never end up as content
    dec = json.JSONDecoder()
    calls: list[dict] = []
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(text):
        m = _V11.match(text, i) if text[i].isalnum() and (i == 0 or not text[i - 1].isalnum()) else None
        if m and m.group(1) in names:
            try:
                args, end = dec.raw_decode(text, m.end())
            except json.JSONDecodeError:
                args = None
            if isinstance(args, dict):
                calls.append(_call(m.group(1), args))
                spans.append((i, end))
                i = end
                continue
        if text[i] in "{[":
            try:
                value, end = dec.raw_decode(text, i)
            except json.JSONDecodeError:
                i += 1
                continue
            found = _calls_in(value, names)
            if found:
                calls += found
                spans.append((i, end))
                i = end
                continue
            i = end
            continue
        i += 1
    if not calls:
        return original, []
    rest, last = [], 0
    for a, b in spans:
        rest.append(text[last:a])
        last = b
    rest.append(text[last:])
    return re.sub(r"^[\s;,]+|[\s;,]+$", "", "".join(rest)), calls


def _calls_in(value: Any, names: list[str]) -> list[dict]:
    if isinstance(value, list):
        found = [c for v in value for c in _calls_in(v, names)]
        return found if found and len(found) == len(value) else []
    if not isinstance(value, dict):
        return []
    for key in ("tool_calls", "tool_call", "function_call"):
        if key in value and len(value) == 1:
            return _calls_in(value[key], names)
    if "function" in value and isinstance(value["function"], dict):
        return _calls_in(value["function"], names)
    name = value.get("name")
    args = value.get("arguments", value.get("parameters", {} if set(value) == {"name"} else None))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return []
    if name in names and isinstance(args, dict):
        return [_call(name, args)]
    return []


def _call(name: str, args: dict) -> dict:
    return {"id": new_call_id(), "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


class ToolCallFilter:
    """Passes text through until it may be a tool call; holds the rest; parses at the end."""

    def __init__(self, plan: ToolPlan):
        self.names = plan.names
        self.forced = plan.forced
        self.holding = plan.forced  # a forced reply is nothing but calls
        self.lead = "" if not plan.forced else None  # text seen while the reply could still start with a call
        self.held = ""
        self.hold_on = plan.syntax.hold_on + SYNTAX["hermes"].hold_on + SYNTAX["mistral"].hold_on
        self.tool_calls: list[dict] = []

    def feed(self, text: str) -> str:
        if self.holding:
            self.held += text
            return ""
        if self.lead is not None:  # the start of the reply: a call opens with '{', '[' or a marker
            self.lead += text
            start = self.lead.lstrip()
            if not start:
                return ""
            if start[0] in "{[" or any(start.startswith(m) for m in self.hold_on):
                self.holding, self.held, self.lead = True, self.lead, None
                return ""
            if any(m.startswith(start) for m in self.hold_on):
                return ""  # may still become a marker
            text, self.lead = self.lead, None
        out, self.held = _split_at_marker(self.held + text, self.hold_on)
        self.holding = any(self.held.startswith(m) for m in self.hold_on)
        return out

    def finish(self) -> str:
        text = (self.lead or "") + self.held
        self.lead, self.held = None, ""
        if not text:
            return ""
        content, calls = parse_calls(text, self.names)
        self.tool_calls = calls
        if not calls:
            return text
        return "" if self.forced else content  # a forced reply's leftovers are syntax (or a cut-off last call)


def _split_at_marker(text: str, markers: tuple[str, ...]) -> tuple[str, str]:
    """(text safe to show, text held back): from the first marker on, or a tail that may begin one."""
    cut = min((i for i in (text.find(m) for m in markers) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], text[cut:]
    for k in range(min(len(text), max((len(m) for m in markers), default=0) - 1), 0, -1):
        if any(m.startswith(text[-k:]) for m in markers):
            return text[:-k], text[-k:]
    return text, ""
