"""Model slots and the bounded FIFO queue in front of them.

A model generates one sequence at a time, so each slot is one loaded model plus the one thread that runs it.
Requests wait in FIFO order for a free slot; when `max_queue` are already waiting, `acquire()` raises QueueFull
with a Retry-After estimate from recent generation times. Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ..backends.base import LoadedModel


class Slot:
    def __init__(self, index: int, model: LoadedModel):
        self.index = index
        self.model = model
        # one thread per slot: every call into this model (tokenize, render, decode) happens on it
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"quantdeploy-slot{index}")


class QueueFull(Exception):
    def __init__(self, retry_after: int, waiting: int):
        super().__init__(f"{waiting} requests are already waiting")
        self.retry_after = retry_after
        self.waiting = waiting


class SlotPool:
    def __init__(self, slots: list[Slot], max_queue: int):
        self.slots = list(slots)
        self.max_queue = max_queue
        self._free: deque[Slot] = deque(self.slots)
        self._waiters: deque[asyncio.Future] = deque()
        self._avg_s = 0.0  # moving average of how long a slot stays busy per request

    @property
    def busy(self) -> int:
        return len(self.slots) - len(self._free)

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def retry_after(self) -> int:
        per_request = self._avg_s or 1.0
        return max(1, min(60, math.ceil(per_request * (self.waiting + 1) / len(self.slots))))

    async def acquire(self) -> Slot:
        if self._free and not self.waiting:
            return self._free.popleft()
        if self.waiting >= self.max_queue:
            raise QueueFull(self.retry_after(), self.waiting)
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # a slot was handed over just as the waiter left: pass it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self, slot: Slot, busy_s: float | None = None) -> None:
        if busy_s is not None:
            self._avg_s = busy_s if not self._avg_s else 0.8 * self._avg_s + 0.2 * busy_s
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(slot)
                return
        self._free.append(slot)

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
        for slot in self.slots:
            slot.executor.shutdown(wait=True, cancel_futures=True)
