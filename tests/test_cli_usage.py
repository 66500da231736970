"""The command line itself: bad option values and unknown options are one `error:` line (exit 2), the help reads
right, `inspect` prints whole values into a pipe, and `serve` exits 0 after a clean shutdown on SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal

import pytest

from conftest import assert_clean_error, run_cli
from quantdeploy.server.process import ServerProcess

BOX = "╭│╰─"


@pytest.mark.parametrize("args, needles", [
    (["chat", "--max-tokens", "abc"], ["--max-tokens", "integer", "quantdeploy chat --help"]),
    (["chat", "-n", "1.5"], ["--max-tokens", "integer"]),
    (["chat", "--ctx", "5"], ["--ctx", "16"]),
    (["chat", "--temperature", "hot"], ["--temperature"]),
    (["chat", "-n"], ["-n", "requires an argument", "quantdeploy chat --help"]),
    (["chat", "--nosuch"], ["no such option", "--nosuch"]),
    (["chat", "a", "b"], ["unexpected extra argument"]),
    (["serve", "--port", "abc"], ["--port", "integer", "quantdeploy serve --help"]),
    (["serve", "--port", "70000"], ["--port", "65535"]),
    (["serve", "--gpu-memory-utilization", "2"], ["--gpu-memory-utilization", "1"]),
    (["serve", "--max-concurrency", "0"], ["--max-concurrency"]),
    (["serve", "--prompt-chunk", "8"], ["--prompt-chunk", "16"]),
    (["pull"], ["missing argument", "name", "quantdeploy pull --help"]),
    (["bench", "--repeat", "x"], ["--repeat", "integer"]),
    (["nosuchcommand"], ["no such command", "nosuchcommand", "quantdeploy --help"]),
])
def test_usage_errors_are_one_line(args, needles):
    proc = run_cli(*args, timeout=120)
    assert_clean_error(proc, *needles)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr  # nothing but the error line
    assert not any(c in proc.stderr for c in BOX), proc.stderr
    assert proc.stdout == ""


def test_no_arguments_prints_the_help():
    proc = run_cli()
    assert proc.returncode == 2
    assert "Usage: quantdeploy" in proc.stdout + proc.stderr and "error:" not in proc.stderr


@pytest.mark.parametrize("command", [[], ["chat"], ["serve"], ["pull"], ["bench"], ["doctor"], ["list"]])
def test_help_shows_no_type_for_flags(command):
    proc = run_cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--help" in proc.stdout
    assert "<bool>" not in proc.stdout, proc.stdout
    if command == ["chat"]:
        assert "<int>" in proc.stdout  # options that take a value still say what it is


def test_inspect_prints_whole_values_into_a_pipe(tmp_path, gguf_path):
    deep = tmp_path.joinpath(*(["a-rather-long-folder-name"] * 6))
    deep.mkdir(parents=True)
    model = deep / "model.gguf"
    model.symlink_to(gguf_path)
    proc = run_cli("inspect", str(model), env={"COLUMNS": "60"})
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert rows["path"] == str(model)
    assert rows["format"] == "gguf"
    assert "…" not in proc.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_serve_exits_zero_after_a_clean_shutdown(sig):
    s = ServerProcess().start()
    try:
        s.proc.send_signal(sig)
        rc = s.proc.wait(60)
    finally:
        s.__exit__(None, None, None)
    assert rc == 0, s.logs()[-2000:]
    assert "Application shutdown complete" in s.logs()
    assert "Traceback" not in s.logs()
