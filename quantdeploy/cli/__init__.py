"""The `quantdeploy` command. Each command group lives in its own module; this file wires them and turns
QuantDeployError into one line on stderr and a non-zero exit (QUANTDEPLOY_DEBUG=1 shows the traceback)."""

from __future__ import annotations

import sys

import typer

from ..errors import QuantDeployError
from ..settings import debug_enabled, get_settings, prepare_process_env

HELP_OPTIONS = ["-h", "--help"]
HELP = "Pull, chat with, serve and benchmark quantized LLMs ({formats})."  # the registered formats, at run time
app = typer.Typer(name="quantdeploy",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": HELP_OPTIONS})


def _register() -> None:
    from ..registry import formats
    from . import bench, chat, core, doctor, generate, hub, serve

    app.info.help = HELP.format(formats=", ".join(f.upper() for f in formats()))

    for mod in (core, chat, hub, serve, generate, bench, doctor):
        mod.register(app)


def main(argv: list[str] | None = None) -> None:
    _interruptible()
    try:
        _main(argv)
        code: int | str | None = 0
    except SystemExit as e:
        code = e.code
    _exit(code)


def _interruptible() -> None:
    """Ctrl-C stops every command, also in a process started with SIGINT ignored (a background job of a script, some
    CI runners and test harnesses pass that on): Python then installs no KeyboardInterrupt handler of its own, and
    a pull or a generate would ignore Ctrl-C and run to the end."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _click_error(name: str) -> type[Exception]:
    """click's exception classes, as typer raises them (its own copy of click, or click itself in older typers)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


UsageError = _click_error("UsageError")
ClickException = _click_error("ClickException")


def _command():
    """The click command tree typer builds from `app`, with help that shows no type for flags (a flag takes no
    value, so typer's `<bool>` there only misleads)."""
    command = typer.main.get_command(app)
    todo = [command]
    while todo:
        cmd = todo.pop()
        # -h/--help too: click makes that option on first use and keeps it
        ctx = typer.Context(cmd, help_option_names=HELP_OPTIONS)
        for param in cmd.get_params(ctx):
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        todo.extend(getattr(cmd, "commands", {}).values())
    return command


def _usage_line(e, args: list[str], commands) -> str:
    """A click/typer usage error (bad option value, unknown option or command, missing argument) as one line."""
    msg = " ".join(e.format_message().split()).rstrip(".")
    msg = msg[:1].lower() + msg[1:]
    if e.ctx is not None:
        where = e.ctx.command_path
    else:  # the parser failed before the command's context existed
        where = f"quantdeploy {args[0]}" if args and args[0] in commands else "quantdeploy"
    return f"error: {msg}; see `{where} --help`"


def _main(argv: list[str] | None) -> None:
    prepare_process_env()
    _register()
    debug = debug_enabled()
    command = _command()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        get_settings()  # every QUANTDEPLOY_* value checked once, before any work: a bad one is a usage error
        code = command.main(args=args, prog_name="quantdeploy", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(N) raised by a command
            sys.exit(code)
    except UsageError as e:
        if type(e).__name__ != "NoArgsIsHelpError":  # no arguments: the help was printed, exit 2 as click does
            print(_usage_line(e, args, command.commands), file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except ClickException as e:
        print(f"error: {' '.join(e.format_message().split())}", file=sys.stderr)
        sys.exit(e.exit_code)
    except QuantDeployError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug: still one line, with the way to see more
        if debug:
            raise
        print(f"error: internal error ({type(e).__name__}: {str(e)[:300]}); rerun with QUANTDEPLOY_DEBUG=1 "
              "for the traceback and report it", file=sys.stderr)
        sys.exit(70)


def _exit(code: int | str | None) -> None:
    """sys.exit(code), except after a CUDA profile (bench's kernel evidence): then the process ends at once, output
    flushed, without the exit-time teardown. There, CUDA's primary-context release calls back into CUPTI, which
    hands torch's profiler (kineto) buffers it already freed: "double free or corruption" / "free(): invalid
    pointer" and SIGABRT after a finished run (native backtrace on an H200, 2026-12-01; pytorch/pytorch#195207)."""
    kernels = sys.modules.get("quantdeploy.bench.kernels")
    if not getattr(kernels, "CUPTI_USED", False):
        sys.exit(code)
    import logging
    import os

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
