"""Slash commands of the chat REPL: one table, each entry a name, its arguments, a help line and a handler."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import QuantDeployError, UsageError
from .conversation import Conversation

if TYPE_CHECKING:
    from .repl import ChatSession

EXIT_WORDS = ("exit", "quit", "/bye")


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    help: str
    run: Callable[["ChatSession", str], bool]  # True: leave the chat


COMMANDS: dict[str, Command] = {}


def command(name: str, args: str, help: str):
    def wrap(fn):
        COMMANDS[name] = Command(name, args, help, fn)
        return fn

    return wrap


def is_command(text: str) -> bool:
    return text.strip().startswith("/")


def run_command(session: "ChatSession", text: str) -> bool:
    """Run one /command line. Returns True when the user asked to leave. Bad input raises UsageError."""
    name, _, arg = text.strip().partition(" ")
    cmd = COMMANDS.get(name.lower())
    if cmd is None:
        raise UsageError(f"unknown command {name}; type /help for the list")
    return bool(cmd.run(session, arg.strip()))


@command("/help", "", "show this help")
def _help(s: "ChatSession", arg: str) -> bool:
    width = max(len(f"{c.name} {c.args}".strip()) for c in COMMANDS.values())
    lines = [f"  {f'{c.name} {c.args}'.strip():<{width}}  {c.help}" for c in COMMANDS.values()]
    lines += ["", '  """ ... """   type several lines: open and close the block with a line of """',
              "  Ctrl-C         stop the reply being written (at the prompt: leave)",
              "  Ctrl-D, exit, quit   leave"]
    s.say("\n".join(lines))
    return False


@command("/reset", "", "forget the conversation (the system prompt stays)")
def _reset(s: "ChatSession", arg: str) -> bool:
    n = s.conv.user_turns()
    s.conv.reset()
    s.say(f"conversation cleared ({n} turn{'s' if n != 1 else ''} forgotten"
          f"{'; system prompt kept' if s.conv.system else ''})")
    return False


@command("/system", "[TEXT|--clear]", "set the system prompt (no TEXT: show it; --clear: remove it)")
def _system(s: "ChatSession", arg: str) -> bool:
    if not arg:
        s.say(f"system prompt: {s.conv.system}" if s.conv.system else "no system prompt (set one: /system TEXT)")
    elif arg == "--clear":
        s.conv.system = None
        s.say("system prompt removed")
    else:
        s.conv.system = arg
        s.say("system prompt set")
    return False


SETTABLE = {"temperature": float, "top_p": float, "max_tokens": int, "seed": int}
_SET_ALIASES = {"temp": "temperature", "top-p": "top_p", "topp": "top_p", "max-tokens": "max_tokens",
                "max_new_tokens": "max_tokens", "n": "max_tokens"}


@command("/set", "temperature|top_p|max_tokens|seed VALUE", "change a generation setting (no VALUE: show all)")
def _set(s: "ChatSession", arg: str) -> bool:
    if not arg:
        p = s.params
        s.say(f"temperature {p.temperature} · top_p {p.top_p} · max_tokens {p.max_tokens} · "
              f"seed {'none' if p.seed is None else p.seed}")
        return False
    key, _, value = arg.partition(" ")
    key = _SET_ALIASES.get(key.lower(), key.lower())
    value = value.strip()
    if key not in SETTABLE:
        raise UsageError(f"cannot set '{key}'; choose one of: {', '.join(SETTABLE)}")
    if not value:
        raise UsageError(f"usage: /set {key} VALUE")
    if key == "seed" and value.lower() in ("none", "random", "off"):
        parsed = None
    else:
        try:
            parsed = SETTABLE[key](value)
        except ValueError:
            kind = "an integer" if SETTABLE[key] is int else "a number"
            raise UsageError(f"{key} must be {kind}, got '{value}'") from None
    s.params = replace(s.params, **{key: parsed}).validate()
    s.say(f"{key} = {'none' if parsed is None else parsed}")
    return False


@command("/json", "[on|off|SCHEMA.json]", "answer in JSON (always valid); with a JSON schema file, matching it")
def _json(s: "ChatSession", arg: str) -> bool:
    import json

    from ..structured.grammar import response_format_grammar

    if arg.lower() in ("off", "no", "0"):
        s.response_format = None
        s.say("JSON replies off")
        return False
    if arg.lower() in ("", "on", "yes", "1"):
        if not arg and s.response_format is not None:
            s.response_format = None
            s.say("JSON replies off")
            return False
        s.response_format = {"type": "json_object"}
        s.say("JSON replies on: every reply is a JSON object (/json off to stop)")
        return False
    path = Path(arg).expanduser()
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); pass a JSON schema file, on or off") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not JSON ({e}); pass a JSON schema file") from None
    rf = {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
    try:
        response_format_grammar(rf, str(path))
    except QuantDeployError as e:
        raise UsageError(str(e)) from None
    s.response_format = rf
    s.say(f"JSON replies on: every reply matches the schema in {path} (/json off to stop)")
    return False


@command("/save", "FILE", "write the conversation to FILE (JSON)")
def _save(s: "ChatSession", arg: str) -> bool:
    if not arg:
        raise UsageError("usage: /save FILE (for example /save chat.json)")
    p = s.params
    path = s.conv.save(Path(arg), model=s.model_name, params={
        "temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens, "seed": p.seed})
    n = len(s.conv.messages())
    s.say(f"saved {n} message{'s' if n != 1 else ''} to {path}")
    return False


@command("/load", "FILE", "replace the conversation with one saved by /save")
def _load(s: "ChatSession", arg: str) -> bool:
    if not arg:
        raise UsageError("usage: /load FILE (a file written by /save)")
    conv = Conversation.load(Path(arg))
    s.conv = conv
    n = len(conv.messages())
    s.say(f"loaded {n} message{'s' if n != 1 else ''} from {Path(arg).expanduser()}"
          f"{' (with a system prompt)' if conv.system else ''}")
    return False


@command("/stats", "", "speed, backend, kernel and device of the last reply")
def _stats(s: "ChatSession", arg: str) -> bool:
    s.say(s.stats_text())
    return False


@command("/bye", "", "leave (so do exit, quit and Ctrl-D)")
def _bye(s: "ChatSession", arg: str) -> bool:
    return True
