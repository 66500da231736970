"""The board: a small Ray actor, owned by the front, where replicas report what the front cannot ask them for.

Ray Serve routes each request to some replica; nothing routes a request to one chosen replica. So each replica
sends its metrics here every few seconds, and a replica whose model fails to load says so here at once: the front
reads its /metrics from the board and ends a failed start with the replica's own error instead of waiting for
Serve's constructor retries.
"""

from __future__ import annotations

import time
from typing import Any

import ray

STALE_S = 10.0  # a replica that has not reported for this long is gone (killed, or its node lost)


@ray.remote(num_cpus=0)
class Board:
    def __init__(self) -> None:
        self._replicas: dict[str, tuple[float, dict[str, Any]]] = {}
        self._failure: str | None = None
        self._started = False

    def report(self, replica: str, info: dict[str, Any]) -> None:
        self._replicas[replica] = (time.monotonic(), info)

    def gone(self, replica: str) -> None:
        self._replicas.pop(replica, None)

    def started(self) -> None:
        """Every replica of the first deployment is up: a failure from now on no longer ends the server."""
        self._started = True

    def failed(self, replica: str, message: str) -> bool:
        """A replica could not load the model. True while the server is starting (it will stop on this)."""
        if self._failure is None and not self._started:
            self._failure = message
        return not self._started

    def read(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """(replica id -> its last report, for those heard from lately; the first load failure, if any)"""
        now = time.monotonic()
        for r in [r for r, (t, _) in self._replicas.items() if now - t > STALE_S]:
            del self._replicas[r]
        return {r: info for r, (_, info) in self._replicas.items()}, self._failure
