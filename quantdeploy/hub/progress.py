"""Pull progress on stderr: rich bars (per file and overall, bytes/s, ETA) on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import TextIO

from .remote import RemoteFile
from ..units import human_bytes


class Progress:
    """Plain lines: what is fetched, resumed, retried and verified. Used when stderr is not a terminal."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, title: str, total: int, have: int) -> None:
        self.say(title)

    def begin_file(self, f: RemoteFile, have: int) -> None:
        resumed = f" (resuming at {human_bytes(have)})" if have else ""
        self.say(f"  {f.path}: {human_bytes(f.size)}{resumed}")

    def end_file(self, f: RemoteFile, fetched: int, seconds: float) -> None:
        rate = f", {human_bytes(fetched / seconds)}/s" if seconds > 0 and fetched else ""
        self.say(f"  {f.path}: verified{rate}")

    def advance(self, f: RemoteFile, completed: int | None = None, step: int = 0) -> None:
        pass

    def retrying(self, error: BaseException, delay: float) -> None:
        status = getattr(getattr(error, "response", None), "status_code", None)
        why = f"the server answered HTTP {status}" if status else f"the connection failed ({type(error).__name__})"
        self.say(f"  {why}; retrying in {delay:.0f}s")

    def close(self) -> None:
        pass


class Quiet(Progress):
    def say(self, text: str) -> None:
        pass


class RichProgress(Progress):
    """Bars for a terminal: one per file being fetched plus an overall one."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__(stream)
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress as Bars, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.bars = Bars(TextColumn("{task.description}", style="bold"), BarColumn(), DownloadColumn(),
                         TransferSpeedColumn(), TimeRemainingColumn(), console=Console(file=self.stream),
                         transient=False)
        self.tasks: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.overall = None

    def say(self, text: str) -> None:
        self.bars.console.print(text, markup=False, highlight=False)

    def start(self, title: str, total: int, have: int) -> None:
        self.bars.start()
        self.say(title)
        self.overall = self.bars.add_task("total", total=total, completed=have)

    def begin_file(self, f: RemoteFile, have: int) -> None:
        name = f.path if len(f.path) <= 40 else "…" + f.path[-39:]
        self.tasks[f.path] = self.bars.add_task(name, total=f.size, completed=have)
        self.done[f.path] = have

    def advance(self, f: RemoteFile, completed: int | None = None, step: int = 0) -> None:
        task = self.tasks.get(f.path)
        if task is None:
            return
        before = self.done[f.path]
        now = completed if completed is not None else before + step
        self.done[f.path] = now
        self.bars.update(task, completed=now)
        if self.overall is not None:
            self.bars.advance(self.overall, now - before)

    def end_file(self, f: RemoteFile, fetched: int, seconds: float) -> None:
        task = self.tasks.get(f.path)
        if task is not None:
            self.bars.update(task, completed=f.size)

    def close(self) -> None:
        self.bars.stop()


def make_progress(quiet: bool = False, stream: TextIO | None = None) -> Progress:
    stream = stream or sys.stderr
    if quiet:
        return Quiet(stream)
    return RichProgress(stream) if stream.isatty() else Progress(stream)
