"""Bind the socket, warn about exposed servers, run uvicorn, and turn startup failures into QuantDeployError."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
from types import FrameType
from typing import Callable

import uvicorn

from ..errors import QuantDeployError, UsageError
from .config import ServerSettings
from .state import Loader

log = logging.getLogger("quantdeploy.server")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def serve(settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, *, loader: Loader,
          log_level: str = "info") -> None:
    """Run until Ctrl-C / SIGTERM. Raises QuantDeployError if the port is taken or the model fails to load."""
    from .app import create_app

    settings.validate()
    if log_level not in LOG_LEVELS:
        raise UsageError(f"unknown log level '{log_level}'; choose one of: {', '.join(LOG_LEVELS)}")
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    if not is_loopback(bound_host) and settings.api_key is None:
        print(f"warning: serving on {host} without an API key: anyone who can reach port {bound_port} can use the "
              "model. Set QUANTDEPLOY_API_KEY (or --api-key), or bind to 127.0.0.1", file=sys.stderr)
    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_error(e: BaseException) -> None:
        failure.append(e)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, loader=loader, on_load_error=on_load_error)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, lifespan="on", ws="none",
                            server_header=False)
    server = Server(config, on_exit=app.state.qd.stop_all)
    log_to_stderr(log_level)
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"serving {settings.model_name} at http://{shown}:{bound_port}/v1 "
          f"({'API key required' if settings.api_key else 'no API key'}); loading the model, "
          "GET /health answers 200 when ready", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failure:
        e = failure[0]
        if isinstance(e, QuantDeployError):
            raise e
        raise QuantDeployError(f"the model failed to load: {type(e).__name__}: {e}")


class Server(uvicorn.Server):
    """uvicorn waits for open responses before it shuts down: end the generations first, so it need not wait."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        super().__init__(config)
        self._on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_exit)  # signal-safe: the loop runs it next
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once it has shut down, so the process would die of it (143 after SIGTERM,
        # 130 after Ctrl-C). A shutdown that finished cleanly is a success: the server exits 0.
        getattr(self, "_captured_signals", []).clear()


def bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"cannot resolve --host {host} ({e.strerror}); pass an IP address such as 127.0.0.1") \
            from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port, or stop what is "
                         "using it") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def log_to_stderr(level: str) -> None:
    from uvicorn.logging import DefaultFormatter

    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False
