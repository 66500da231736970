"""`quantdeploy serve` in a child process, ready when /health says so: for tests, benchmarks and scripts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, *args: str, host: str = "127.0.0.1", port: int | None = None, env: dict | None = None,
                 cwd: str | Path | None = None):
        self.args = list(args)
        self.host = host
        self.port = port or free_port()
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="quantdeploy-serve-", suffix=".log", delete=False)
        self._final_logs: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    def start(self, timeout: float = 300) -> "ServerProcess":
        env = dict(os.environ)
        env.pop("QUANTDEPLOY_DEBUG", None)
        env.update(self.env or {})
        cmd = [sys.executable, "-m", "quantdeploy", "serve", *self.args, "--host", self.host, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server {self._exit_status()}:\n{self.logs()[-3000:]}")
            if self.health() == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server was not ready after {timeout:.0f}s:\n{self.logs()[-3000:]}")

    def _exit_status(self) -> str:
        """'exited with 2', or 'was killed by SIGSEGV' (a crash in native code leaves no Python traceback)."""
        code = self.proc.returncode
        try:
            return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        except ValueError:
            return f"exited with {code}"

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def logs(self) -> str:
        """Everything the server printed (stdout and stderr), also after the context manager exited."""
        if self._final_logs is not None:
            return self._final_logs
        return Path(self._log.name).read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._final_logs = self.logs()
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass
