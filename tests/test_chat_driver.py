"""Drive `quantdeploy chat` in a pseudo-terminal the way a person does (pexpect): type, wait for the prompt, read."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
from pathlib import Path

import pexpect

REPO = Path(__file__).resolve().parents[1]
PROMPT = ">>> "
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[=>]")
TIMEOUT = 300  # generous: other test runs share the 2 CPU cores


def clean(text: str) -> str:
    return _ANSI.sub("", text or "").replace("\r\n", "\n").replace("\r", "")


class Chat:
    """One REPL session. `say(line)` types a line and returns what was printed before the next prompt."""

    def __init__(self, *args: str, home: Path, env: dict | None = None, timeout: float = TIMEOUT,
                 sigint_ignored: bool = False):
        """sigint_ignored: start it as a background job or a CI runner does, with SIGINT ignored (inherited)."""
        e = dict(os.environ)
        e.pop("QUANTDEPLOY_DEBUG", None)
        e.update({"QUANTDEPLOY_HOME": str(home), "TERM": "xterm"}, **(env or {}))
        self.transcript = io.StringIO()
        ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        self.p = pexpect.spawn(sys.executable, ["-m", "quantdeploy", "chat", *args], encoding="utf-8",
                               timeout=timeout, env=e, cwd=str(REPO), dimensions=(50, 4000), preexec_fn=ignore)
        self.p.logfile_read = self.transcript
        self.banner = self.wait_prompt()

    def wait_prompt(self) -> str:
        self.p.expect_exact(PROMPT)
        return clean(self.p.before)

    def say(self, line: str) -> str:
        self.p.sendline(line)
        out = self.wait_prompt()
        first, _, rest = out.partition("\n")  # the terminal echoes what was typed
        return rest if first.strip() == line.strip() else out

    def type_line(self, line: str, more: bool = False) -> None:
        """Type a line that does not end in a reply (inside a \"\"\" block: wait for the continuation prompt)."""
        self.p.sendline(line)
        if more:
            self.p.expect_exact("... ")

    def start_reply(self, line: str) -> None:
        """Type a message and wait until the reply starts to appear (streaming)."""
        self.p.sendline(line)
        self.p.expect_exact(line)
        self.p.expect(r"\r\n")
        self.p.expect(r"\S")

    def stats(self) -> dict:
        out = self.say("/stats")
        m = re.search(r"(\d+) prompt \+ (\d+) reply tokens .* finish (\w+)", out)
        assert m, out
        return {"prompt": int(m[1]), "reply": int(m[2]), "finish": m[3], "text": out}

    def save(self, path: Path) -> list[dict]:
        out = self.say(f"/save {path}")
        assert "saved" in out, out
        return json.loads(path.read_text())["messages"]

    def leave(self, how: str = "quit") -> int:
        if how == "ctrl-d":
            self.p.sendcontrol("d")
        elif how == "ctrl-c":
            self.p.sendintr()
        else:
            self.p.sendline(how)
        self.p.expect(pexpect.EOF)
        self.p.close()
        return self.p.exitstatus

    def text(self) -> str:
        return clean(self.transcript.getvalue())

    def close(self) -> None:
        if self.p.isalive():
            self.p.terminate(force=True)
