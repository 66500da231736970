"""What the user types: line editing and a history file (GNU readline), and multi-line blocks between \"\"\" lines."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

PROMPT = ">>> "
MORE = "... "
FENCE = '"""'
HISTORY_LENGTH = 2000


@dataclass
class Typed:
    text: str
    block: bool = False  # came from a \"\"\" block: always a message, never a /command


class LineReader:
    """input() with readline editing when stdin is a terminal; the history survives sessions in `history_file`."""

    def __init__(self, history_file: Path | None = None):
        self.history_file = history_file
        self._rl = None
        if sys.stdin.isatty():
            try:
                import readline
            except ImportError:  # no readline (Windows without pyreadline): plain input still works
                readline = None
            self._rl = readline
        if self._rl is not None and history_file is not None:
            try:
                history_file.parent.mkdir(parents=True, exist_ok=True)
                if history_file.is_file():
                    self._rl.read_history_file(str(history_file))
                else:
                    history_file.touch()  # readline appends only to a file that exists
                self._rl.set_history_length(HISTORY_LENGTH)
            except OSError:
                self.history_file = None  # an unreadable history is no reason to refuse to chat

    def read_line(self, prompt: str) -> str:
        """One line; raises EOFError on Ctrl-D and KeyboardInterrupt on Ctrl-C, like input()."""
        line = input(prompt)
        if self._rl is not None and self.history_file is not None and line.strip():
            try:
                self._rl.append_history_file(1, str(self.history_file))
            except OSError:
                self.history_file = None
        return line

    def read(self) -> Typed:
        """One message: a line, or the lines between an opening and a closing \"\"\"."""
        line = self.read_line(PROMPT)
        head = line.strip()
        if not head.startswith(FENCE):
            return Typed(line)
        body = head[len(FENCE):]
        if len(body) >= len(FENCE) and body.endswith(FENCE):  # \"\"\"one line\"\"\"
            return Typed(body[:-len(FENCE)], block=True)
        lines = [body] if body else []
        while True:
            nxt = self.read_line(MORE)
            if nxt.rstrip().endswith(FENCE):
                last = nxt.rstrip()[:-len(FENCE)]
                if last:
                    lines.append(last)
                return Typed("\n".join(lines), block=True)
            lines.append(nxt)

    def close(self) -> None:
        if self._rl is not None and self.history_file is not None:
            try:  # keep the file bounded; lines were appended as they were typed
                self._rl.write_history_file(str(self.history_file))
            except OSError:
                pass
