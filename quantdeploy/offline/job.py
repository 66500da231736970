"""`quantdeploy generate`: an input file of requests through one model into an output file, resumably, with a
progress bar (lines, tokens/s) on stderr."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.text import Text

from ..backends.base import BATCH_CAP, GenerationParams, LoadedModel, ModelSpec
from ..errors import QuantDeployError, UsageError
from .jsonl import Appender, drop_errors, finalize, input_lines, scan_input, scan_output
from .requests import BadRequest, id_key, line_id, parse_line
from .runner import BatchResult, Request, effective_concurrency, failed, run_in_order


class SomeFailed(QuantDeployError):
    """The run finished, but some lines have an error object in the output."""


class Interrupted(QuantDeployError):
    exit_code = 130


@dataclass
class JobOptions:
    input: Path
    output: Path
    defaults: GenerationParams
    max_concurrency: int | None = None
    template: str | None = None
    retry_errors: bool = False


def check_paths(opts: JobOptions) -> None:
    if not opts.input.is_file():
        raise UsageError(f"--input {opts.input}: no such file" if not opts.input.exists() else
                         f"--input {opts.input} is not a file")
    if opts.output.is_dir():
        raise UsageError(f"--output {opts.output} is a directory; give a file name such as out.jsonl")
    if not opts.output.parent.is_dir():
        raise UsageError(f"--output {opts.output}: directory {opts.output.parent} does not exist; create it first")
    if opts.output.exists() and os.path.samefile(opts.input, opts.output):
        raise UsageError("--output is the --input file; results go to a file of their own")


class TokenRate(ProgressColumn):
    """Generated tokens per second since the start, counted as they come (not when a line finishes)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = 0
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.tokens += n

    @property
    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.tokens / dt if dt > 0 else 0.0

    def render(self, task) -> Text:
        return Text(f"{self.rate:.1f} tok/s", style="progress.data.speed")


def _requests(opts: JobOptions, done: set[str]) -> Iterator[Request | BatchResult]:
    for lineno, raw in input_lines(opts.input):
        rid = line_id(raw, lineno)
        if id_key(rid) in done:
            continue
        try:
            yield parse_line(raw, lineno, opts.defaults)
        except BadRequest as e:
            yield failed(rid, f"line {lineno}: {e}")


def run_file(opts: JobOptions, resolve: Callable[[], ModelSpec], load: Callable[[ModelSpec], LoadedModel],
             log: Callable[[str], None]) -> None:
    """The files are checked before the model is resolved and loaded (not at all when every id is done);
    finished lines are never run twice."""
    check_paths(opts)
    keys = scan_input(opts.input)
    state = scan_output(opts.output)
    if state.repaired:
        log(f"{opts.output}: {state.repaired}")
    if opts.retry_errors:
        dropped = drop_errors(opts.output, keys)
        if dropped:
            log(f"{opts.output}: {dropped} error line(s) removed, to run them again")
        state = scan_output(opts.output)
    done = set(state.done) & set(keys)
    todo = len(keys) - len(done)
    written = tokens_s = 0.0
    if done:
        log(f"{opts.output}: {len(done)} of {len(keys)} ids already there (skipped)")
    if todo:
        spec = resolve()
        spec.max_seqs = opts.max_concurrency or BATCH_CAP
        written, tokens_s = _run(spec, opts, done, todo, load, log)
    tally = finalize(opts.output, keys)
    if tally.reordered:
        log(f"{opts.output}: put back in input order")
    rate = f" ({tokens_s:.1f} tok/s)" if written else ""
    log(f"{opts.output}: {tally.ok} results, {tally.errors} errors; {int(written)} written by this run{rate}")
    if tally.errors:
        raise SomeFailed(f"{tally.errors} of {len(keys)} requests failed; each has an error object in "
                         f"{opts.output} (fix those lines and rerun with --retry-errors)")


def _run(spec: ModelSpec, opts: JobOptions, done: set[str], todo: int, load, log) -> tuple[int, float]:
    model = load(spec)
    out = Appender(opts.output)
    rate = TokenRate()
    written = 0
    try:
        concurrency = effective_concurrency(model, opts.max_concurrency)
        if opts.max_concurrency and opts.max_concurrency > concurrency:
            log(f"{spec.display_name} decodes {model.max_sequences} sequence(s) at a time; running {concurrency} "
                "at once")
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), rate,
                            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                            refresh_per_second=4)
        task = progress.add_task(f"generating ({concurrency} at once)", total=todo)

        def done_one(_: BatchResult) -> None:
            progress.update(task, advance=1)

        def emit(r: BatchResult) -> None:
            nonlocal written
            out.write(r.to_json())
            written += 1

        with progress:
            run_in_order(model, _requests(opts, done), emit, concurrency=concurrency, template=opts.template,
                         on_tokens=rate.add, on_done=done_one)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {written} of {todo} results written to {opts.output}; run the same command "
                          "again to resume") from None
    finally:
        out.close()
        model.close()
    return written, rate.rate
