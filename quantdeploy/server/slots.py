"""Generation permits and the bounded FIFO queue in front of them.

The server holds one model, which decodes up to `max_sequences` generations together (its own scheduler batches
them); it hands out that many permits. A request holds one while its generation runs on a worker thread; beyond
that, requests wait in FIFO order, and when `max_queue` are already waiting `acquire()` raises QueueFull with a
Retry-After estimate from recent generation times. Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque


class QueueFull(Exception):
    def __init__(self, retry_after: int, waiting: int):
        super().__init__(f"{waiting} requests are already waiting")
        self.retry_after = retry_after
        self.waiting = waiting


class Permits:
    def __init__(self, size: int, max_queue: int):
        self.size = size
        self.max_queue = max_queue
        self._free = size
        self._waiters: deque[asyncio.Future] = deque()
        self._avg_s = 0.0  # moving average of how long a request holds its permit

    @property
    def busy(self) -> int:
        return self.size - self._free

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def retry_after(self) -> int:
        per_request = self._avg_s or 1.0
        return max(1, min(60, math.ceil(per_request * (self.waiting + 1) / self.size)))

    async def acquire(self) -> None:
        if self._free and not self.waiting:
            self._free -= 1
            return
        if self.waiting >= self.max_queue:
            raise QueueFull(self.retry_after(), self.waiting)
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # a permit was handed over just as the waiter left: pass it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self, busy_s: float | None = None) -> None:
        if busy_s is not None:
            self._avg_s = busy_s if not self._avg_s else 0.8 * self._avg_s + 0.2 * busy_s
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the permit goes straight to the next waiter
                return
        self._free += 1

    def reject_waiters(self, error: Exception) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(error)
        self._waiters.clear()

    def shutdown(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
