"""The interactive chat: read a message, stream the reply, keep the history inside the context window.

Replies go to stdout as they are generated; notes, errors and stats go to stderr. Ctrl-C while a reply is being
written stops that reply (the Generation is closed) and the session goes on; at the prompt it leaves.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass, replace
from typing import TextIO

from ..backends.base import Generation, GenerationParams, LoadedModel, ModelSpec
from ..errors import QuantDeployError
from .commands import EXIT_WORDS, is_command, run_command
from .conversation import Conversation
from .lineinput import LineReader
from .templates import END_OF_TURN_TOKENS, TURN_START_TOKENS, resolve_template, template_notice

EMPTY_REPLY = "(the model returned an empty reply; rephrase, /reset, or /set temperature higher)"
HISTORY_FILE = "chat_history"


@dataclass
class ReplyStats:
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    decode_tok_s: float
    elapsed_s: float
    finish: str  # stop | length | interrupted

    @classmethod
    def of(cls, gen: Generation, interrupted: bool) -> "ReplyStats":
        u = gen.usage
        return cls(u.prompt_tokens, u.completion_tokens, u.ttft_s, u.decode_tok_s, u.elapsed_s,
                   "interrupted" if interrupted else (gen.finish_reason or "stop"))

    def line(self) -> str:
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "-"
        return (f"{self.prompt_tokens} prompt + {self.completion_tokens} reply tokens · TTFT {ttft} · "
                f"{self.decode_tok_s:.1f} tok/s · finish {self.finish}")


class ChatSession:
    """One conversation with one loaded model. The REPL drives it; the commands in commands.py act on it."""

    def __init__(self, model: LoadedModel, params: GenerationParams, *, system: str | None = None,
                 template: str | None = None, verbose: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None):
        self.model = model
        self.params = params.validate()
        self.template = template
        self.verbose = verbose
        self.conv = Conversation(system or None)
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.last: ReplyStats | None = None
        self.response_format: dict | None = None  # /json: replies are JSON (matching a schema, if given)
        source, self.template_source = resolve_template(model, template)
        model.render_chat(self.conv.messages() + [{"role": "user", "content": "hi"}], template=template)  # fail now
        self._stops = self._stop_strings(source)

    @property
    def model_name(self) -> str:
        return self.model.spec.display_name

    def say(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    # --- one turn ------------------------------------------------------------------------------
    def send(self, text: str) -> ReplyStats | None:
        """Add a user message, stream the reply to `out`, record it. Errors become a line on `err`."""
        self.conv.add("user", text)
        with _InterruptFlag() as stop:  # from here on, Ctrl-C stops this reply, not the session
            try:
                gen = self._start(stop)
            except QuantDeployError as e:
                self.conv.undo_user()
                self.say(f"error: {e}")
                return None
            except KeyboardInterrupt:
                gen = None
            if gen is None:
                self.conv.undo_user()
                self.say("[reply stopped]")
                return None
            try:
                shown = self._stream(gen, stop)
            except Exception as e:  # a backend failure mid-reply: report it, keep the conversation
                from ..settings import get_settings

                if get_settings().debug:
                    raise
                self.conv.undo_user()
                self.say(f"error: the backend failed while generating ({type(e).__name__}: {str(e)[:200]}); the "
                         "conversation is kept — rerun with QUANTDEPLOY_DEBUG=1 for the traceback and report it")
                return None
        stats = self.last = ReplyStats.of(gen, stop.hit)
        if stop.hit and not shown.strip():
            self.conv.undo_user()
        else:
            self.conv.add("assistant", shown)
        self._after_reply(shown, stats)
        return stats

    def _start(self, stop: "_InterruptFlag") -> Generation | None:
        """Fit the history into the window and start the reply (None if Ctrl-C came first)."""
        fit = self.conv.fit(self._count, self.model.context_length, self._reserve())
        if fit.dropped_turns:
            k = fit.dropped_turns
            self.say(f"note: the conversation outgrew the {self.model.context_length}-token context window; "
                     f"dropped the {k} oldest turn{'s' if k != 1 else ''}"
                     f"{' (the system prompt is kept)' if self.conv.system else ''}")
        if stop.hit:
            return None
        params = replace(self.params, stop=tuple(dict.fromkeys([*self.params.stop, *self._stops])))
        return self.model.chat(self.conv.messages(), params, template=self.template,
                               response_format=self.response_format)

    def _stream(self, gen: Generation, stop: "_InterruptFlag") -> str:
        shown = ""
        try:
            for piece in gen:
                if stop.hit:
                    break
                self.out.write(piece)
                self.out.flush()
                shown += piece
                if stop.hit:
                    break
        except KeyboardInterrupt:  # a second Ctrl-C while the backend was busy
            stop.hit = True
        finally:
            gen.close()
        if shown and not shown.endswith("\n"):
            self.out.write("\n")
        self.out.flush()
        return shown

    def _after_reply(self, shown: str, stats: ReplyStats) -> None:
        if stats.finish == "interrupted":
            self.say("[reply stopped]")
        elif not shown.strip():
            self.say(EMPTY_REPLY)
        elif stats.finish == "length":
            if stats.completion_tokens >= self.params.max_tokens:
                self.say(f"[reply cut at max_tokens={self.params.max_tokens}; /set max_tokens N for longer replies]")
            else:
                self.say(f"[reply cut: the {self.model.context_length}-token context window is full; older turns "
                         "will be dropped on the next message, or restart with a larger --ctx]")
        if self.verbose:
            self.say(f"[{stats.line()}]")

    def _count(self, messages: list[dict[str, str]]) -> int:
        return self.model.count_tokens(self.model.render_chat(messages, template=self.template))

    def _reserve(self) -> int:
        """Tokens kept free for the reply when fitting the history: max_tokens, at most a quarter of the window."""
        return max(1, min(self.params.max_tokens, self.model.context_length // 4))

    def _stop_strings(self, template_source: str) -> list[str]:
        """End-of-turn markers as text: a model that spells one out (not as its special token) still stops."""
        marks = [t for t in (*END_OF_TURN_TOKENS, *TURN_START_TOKENS) if t in template_source]
        return list(dict.fromkeys(marks + self.model.stop_tokens()))

    # --- what /stats and --verbose show ---------------------------------------------------------
    def describe(self) -> str:
        rep = self.model.kernel_report()
        return (f"{self.model_name} · {self.model.format} · backend {rep.get('backend', self.model.backend)} · "
                f"kernel {rep.get('kernel')} · device {self.model.device} · ctx {self.model.context_length}")

    def stats_text(self) -> str:
        if self.last is None:
            return f"no reply yet · {self.describe()}"
        return f"last reply: {self.last.line()}\nmodel: {self.describe()}"


def run_repl(spec: ModelSpec, params: GenerationParams, *, system: str | None = None, template: str | None = None,
             verbose: bool = False) -> None:
    from ..models import load_spec
    from ..settings import get_settings

    _take_ctrl_c()
    model = load_spec(spec, verbose=verbose)
    try:
        session = ChatSession(model, params, system=system, template=template, verbose=verbose)
        note = template_notice(model, template)
        if note:
            session.say(note)
        if verbose:
            session.say(f"[loaded in {model.load_time_s:.1f} s · {session.describe()}]")
            session.say(f"[template: {session.template_source}]")
        session.say(f"quantdeploy chat · {session.model_name} ({model.format}, "
                    f"{model.kernel_report().get('kernel')} on {model.device}) · /help for commands, "
                    '""" for several lines, /bye or Ctrl-D to leave')
        reader = LineReader(get_settings().home / HISTORY_FILE)
        try:
            loop(session, reader)
        finally:
            reader.close()
    finally:
        model.close()


def _take_ctrl_c() -> None:
    """Ctrl-C leaves at the prompt and stops a reply, whatever SIGINT disposition the process inherited. A process
    started with SIGINT ignored (by a shell running it as a background job, a CI runner, nohup-like wrappers) keeps
    it ignored across exec, and Python then installs no KeyboardInterrupt handler: Ctrl-C at the prompt would do
    nothing. Someone typing at this prompt is at a terminal and means it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def loop(session: ChatSession, reader: LineReader) -> None:
    """Read and answer until the user leaves (exit, quit, /bye, Ctrl-D, or Ctrl-C at the prompt)."""
    while True:
        try:
            typed = reader.read()
        except (EOFError, KeyboardInterrupt):
            print(file=session.out, flush=True)
            return
        text = typed.text
        if not typed.block:
            if text.strip().lower() in EXIT_WORDS:
                return
            if not text.strip():
                continue
            if is_command(text):
                try:
                    if run_command(session, text):
                        return
                except QuantDeployError as e:
                    session.say(f"error: {e}")
                continue
        elif not text.strip():
            continue
        session.send(text)


class _InterruptFlag:
    """While a reply streams, the first Ctrl-C sets a flag the loop checks between tokens (the backend stops at
    a clean point); a second one raises KeyboardInterrupt as usual, for a backend stuck in a long step."""

    def __init__(self):
        self.hit = False
        self._prev = None

    def _handler(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __enter__(self) -> "_InterruptFlag":
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)
