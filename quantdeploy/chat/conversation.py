"""Conversation state: the system prompt, the turns, fitting them into the context window, and JSON save/load."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError

FILE_KIND = "quantdeploy.chat"
FILE_VERSION = 1
_ROLES = ("system", "user", "assistant")


class ContextFull(UsageError):
    """Even the newest message alone (with the system prompt) does not fit the context window."""


@dataclass
class Conversation:
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)  # user / assistant messages, oldest first

    def messages(self) -> list[dict[str, str]]:
        """What the chat template renders: the system prompt (if any), then the turns."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.turns]

    def add(self, role: str, content: str) -> None:
        self.turns.append({"role": role, "content": content})

    def undo_user(self) -> None:
        """Take back the newest user message (its reply failed or was empty and interrupted)."""
        if self.turns and self.turns[-1]["role"] == "user":
            self.turns.pop()

    def reset(self) -> None:
        self.turns.clear()

    def user_turns(self) -> int:
        return sum(1 for m in self.turns if m["role"] == "user")

    # --- context window ------------------------------------------------------------------------
    def fit(self, count_tokens: Callable[[list[dict[str, str]]], int], context_length: int, reserve: int) -> "Fit":
        """Drop the oldest turns (never the system prompt, never the newest message) until the rendered prompt
        leaves `reserve` tokens for the reply. Raise ContextFull if the newest message cannot fit at all."""
        trial = Conversation(self.system, list(self.turns))  # nothing changes unless the newest message fits
        n = count_tokens(trial.messages())
        dropped = 0
        while n + reserve > context_length and len(trial.turns) > 1:
            trial.turns.pop(0)
            while len(trial.turns) > 1 and trial.turns[0]["role"] != "user":  # a turn is a user message + reply
                trial.turns.pop(0)
            dropped += 1
            n = count_tokens(trial.messages())
        if n >= context_length - 1:
            what = "the system prompt and your message" if self.system else "your message"
            raise ContextFull(f"{what} take {n} tokens but the context window holds {context_length}; "
                              "shorten it, /system a shorter prompt, or restart with a larger --ctx")
        self.turns = trial.turns
        return Fit(prompt_tokens=n, dropped_turns=dropped)

    # --- files ---------------------------------------------------------------------------------
    def to_json(self, **extra: Any) -> dict[str, Any]:
        return {"kind": FILE_KIND, "version": FILE_VERSION, **extra, "messages": self.messages()}

    @classmethod
    def from_json(cls, data: Any, *, source: str = "the file") -> "Conversation":
        """Accept a file written by /save, or a bare list of {"role", "content"} messages (OpenAI style)."""
        messages = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(messages, list):
            raise UsageError(f"{source} is not a saved chat: expected a list of messages or an object with "
                             '"messages"; write one with /save FILE')
        conv = cls()
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
                raise UsageError(f"{source}: message {i + 1} needs a role (system, user or assistant) and a "
                                 "string content")
            if m["role"] == "system":
                if conv.turns or conv.system is not None:
                    raise UsageError(f"{source}: message {i + 1} is a system prompt; only the first message may be")
                conv.system = m["content"]
            else:
                conv.add(m["role"], m["content"])
        return conv

    def save(self, path: Path, **extra: Any) -> Path:
        """Write atomically: a failed save never leaves a half-written file."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise UsageError(f"{path} is a directory; give a file name, e.g. /save chat.json")
        if not path.parent.is_dir():
            raise UsageError(f"cannot save to {path}: the folder {path.parent} does not exist")
        text = json.dumps(self.to_json(**extra), indent=2, ensure_ascii=False) + "\n"
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as e:
            raise UsageError(f"cannot save to {path} ({e.strerror}); choose a folder you can write to") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise UsageError(f"cannot save to {path} ({e.strerror}); choose a folder you can write to") from None
        return path

    @classmethod
    def load(cls, path: Path) -> "Conversation":
        path = Path(path).expanduser()
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"{path} is not a saved chat (not valid JSON: {e}); write one with /save FILE") from None
        return cls.from_json(data, source=str(path))


@dataclass
class Fit:
    prompt_tokens: int
    dropped_turns: int
