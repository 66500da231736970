"""Continuous batching: one thread decodes every live sequence of a model together, step by step.

Callers (any thread) `submit()` a prompt and iterate the returned handle for sampled tokens. Each step the
scheduler plans one batch: a decode for every running sequence, plus prompt chunks (at most `chunk_tokens`
prompt tokens per step, so a long prompt delays the others by one chunk at a time) from sequences still
prefilling and from new ones admitted while KV blocks and slots last. Sequences leave when they stop, reach
max_tokens or the context, or are cancelled; their blocks go back to the pool at once.

The model side is a `Stepper` (engine/stepper.py for the torch engine, backends/gguf_batch.py for llama.cpp).
Steps are pipelined: step i+1 is launched before step i's tokens are read back, so the host's bookkeeping runs
while the accelerator computes. A stepper keeps each slot's last sampled token on its side (on the device) and
feeds it to the slot's next decode, so planning never waits for a token. The price is one step of lag: a sequence
that stopped at step i was already planned into step i+1, whose result for it is dropped. What a step read back
reaches the callers only after the next step is launched (unless that step carries prompt chunks, whose eager
launch takes a while): their threads wake and take the GIL while the accelerator computes, not while the host
prepares the next step (at 64 sequences the host's share of a step, not the GPU's, set the pace). With many
sequences running, a sequence's tokens go out every few steps together (one wake-up of its caller for several
tokens; at most MAX_STREAM_STEPS steps apart, one step per SEQS_PER_STREAM_STEP running sequences); a sequence's
first token and its end go out at once.

When a decode needs a block and none is free, the most recently admitted sequence is preempted: its blocks are
freed and it goes back to the head of the queue, to be recomputed from its tokens later (nothing it already
streamed changes).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from .blocks import BlockPool

log = logging.getLogger("quantdeploy.batching")

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"
_END = object()
SEQS_PER_STREAM_STEP = 16  # running sequences per step between two hand-outs of a sequence's tokens
MAX_STREAM_STEPS = 4


@dataclass
class Sampled:
    """One generated token, with what the request asked to know about it."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None  # (token, logprob) of the most likely alternatives
    final: bool = False  # the sequence's constraint is complete after this token: it ends here
    error: str | None = None  # this sequence failed at this token (its constraint rejected it): it ends here


class Sequence:
    def __init__(self, sid: int, prompt: list[int], params: Any, stop_ids: frozenset[int], max_new: int,
                 max_len: int, constraint: Any = None):
        self.id = sid
        # a grammar the stepper masks each sample with (fill() / accept(token) / done): the mask of a step depends
        # on the token before it, so such a sequence is never planned while a token of it is in flight
        self.constraint = constraint
        self.prompt_len = len(prompt)
        self.tokens = list(prompt)  # the prompt, then every generated token read back so far
        self.params = params  # the backend's sampling parameters (GenerationParams), read by the stepper
        self.stop_ids = stop_ids
        self.max_new = max_new
        self.max_len = max_len
        self.pos = 0  # positions whose KV is written or being written
        self.prefill_end = len(prompt)  # positions computed from tokens on the host (the prompt; after a
        # preemption every token so far); past it, each decode feeds the slot's last sampled token
        self.pending = 0  # tokens sampled by launched steps, not yet read back
        self.generated = 0
        self.blocks: list[int] = []
        self.hashes: list[int] = []  # the prompt's full-block hashes (prefix caching)
        self.cached_tokens = 0  # prompt tokens served from the prefix cache
        self.slot: int | None = None
        self.state = WAITING
        self.epoch = 0  # bumped on preemption: results of steps launched before it are dropped
        self.finish_reason: str | None = None
        self.cancelled = False
        self.out: queue.SimpleQueue = queue.SimpleQueue()  # lists of tokens (Sampled), errors, _END
        self.streamed = False  # a token of it was handed out
        self.t_submit = time.perf_counter()

    @property
    def prefilling(self) -> bool:
        return self.pos < self.prefill_end

    def can_sample(self) -> bool:
        if self.constraint is not None and self.pending:
            return False
        return self.generated + self.pending < self.max_new and len(self.tokens) + self.pending < self.max_len


@dataclass
class Work:
    """One sequence's share of a step: a prompt chunk (`tokens`), or a decode (no tokens: the stepper feeds the
    slot's last sampled token) at position `start`."""

    seq: Sequence
    start: int
    tokens: list[int] = field(default_factory=list)
    sample: bool = True
    epoch: int = 0

    @property
    def n(self) -> int:
        return len(self.tokens) or 1


class Stepper(Protocol):
    max_seqs: int  # sequences decoded together at most (slots)
    num_blocks: int
    block_size: int
    max_len: int  # positions per sequence
    chunk_tokens: int  # prompt tokens per step
    prefix_caching: bool

    def begin(self, seq: Sequence) -> None:
        """seq got slot seq.slot (set its sampling state up)."""

    def end(self, seq: Sequence) -> None:
        """seq left its slot (its blocks are already free)."""

    def launch(self, decodes: list[Work], prefills: list[Work]) -> Any:
        """Queue one step; return a handle for collect()."""

    def collect(self, handle: Any) -> list[Sampled | None]:
        """Wait for a launched step: one entry per work item, decodes first, then prefills (None: no sample)."""


class QueueFull(Exception):
    pass


class Handle:
    """What a caller holds: iterate for Sampled tokens (ends when the sequence does); cancel() to stop early."""

    def __init__(self, seq: Sequence, scheduler: "Scheduler"):
        self._seq = seq
        self._sched = scheduler

    @property
    def finish_reason(self) -> str | None:
        return self._seq.finish_reason

    @property
    def cached_tokens(self) -> int:
        return self._seq.cached_tokens

    def __iter__(self) -> Iterator[Sampled]:
        while True:
            for item in self._seq.out.get():
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

    def cancel(self) -> None:
        if self._seq.state != FINISHED:
            self._sched.cancel(self._seq)


class Scheduler:
    def __init__(self, stepper: Stepper, *, max_waiting: int | None = None, name: str = "quantdeploy-batch"):
        self.stepper = stepper
        self.pool = BlockPool(stepper.num_blocks, stepper.block_size, stepper.prefix_caching)
        self.max_waiting = max_waiting
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order (the newest is preempted first)
        self._free_slots = list(range(stepper.max_seqs - 1, -1, -1))
        self._ids = itertools.count()
        self._cv = threading.Condition()
        self._inbox: list[Sequence] = []
        self._cancels: list[Sequence] = []
        self._outbox: dict[Sequence, list] = {}  # per sequence: [hand-out count when held, tokens / errors / end..]
        self._hand_outs = 0
        self._closed = False
        self.steps = 0
        self.step_tokens = 0
        self.preemptions = 0
        self.host_s = 0.0  # time spent planning, launching and handing tokens out (not waiting for the device)
        # the part of it in steps that carried prompt chunks (their eager launches can wait for the device), and
        # how many such steps there were: the rest is the decode steps' own cost
        self.prompt_host_s = 0.0
        self.prompt_steps = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # --- callers ------------------------------------------------------------------------------------
    def submit(self, prompt: list[int], params: Any, *, stop_ids: set[int] | frozenset[int] = frozenset(),
               max_new: int, constraint: Any = None) -> Handle:
        if not prompt:
            raise ValueError("an empty prompt has nothing to continue")
        if len(prompt) >= self.stepper.max_len:
            raise ValueError(f"the prompt has {len(prompt)} tokens; the context holds {self.stepper.max_len}")
        need = self.pool.blocks_for(min(len(prompt) + max_new, self.stepper.max_len))
        if need > self.pool.num_blocks:
            raise ValueError(f"a sequence of {len(prompt)} + {max_new} tokens needs {need} KV blocks; the pool "
                             f"holds {self.pool.num_blocks}")
        seq = Sequence(next(self._ids), prompt, params, frozenset(stop_ids), max_new, self.stepper.max_len,
                       constraint)
        with self._cv:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            if self.max_waiting is not None and len(self.waiting) + len(self._inbox) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting) + len(self._inbox)} sequences are already waiting")
            self._inbox.append(seq)
            self._cv.notify()
        return Handle(seq, self)

    def cancel(self, seq: Sequence) -> None:
        with self._cv:
            seq.cancelled = True
            self._cancels.append(seq)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def stats(self) -> dict[str, Any]:
        return {"running": len(self.running), "waiting": len(self.waiting) + len(self._inbox),
                "kv_blocks_used": self.pool.used, "kv_blocks_total": self.pool.num_blocks,
                "prefix_cache_hit_tokens": self.pool.hits, "prefix_cache_query_tokens": self.pool.queries,
                "steps": self.steps, "preemptions": self.preemptions, "host_s": round(self.host_s, 6),
                "host_ms_per_step": round(1e3 * self.host_s / self.steps, 3) if self.steps else None,
                "prompt_steps": self.prompt_steps, "prompt_host_s": round(self.prompt_host_s, 6)}

    # --- the loop -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        inflight: deque[tuple[Any, list[Work]]] = deque()
        while True:
            with self._cv:
                while not (self._closed or self._inbox or self._cancels or self.running or self.waiting
                           or inflight):
                    self._cv.wait()
                if self._closed:
                    break
                self.waiting.extend(self._inbox)
                self._inbox.clear()
                cancels, self._cancels = self._cancels, []
            t0 = time.perf_counter()
            for seq in cancels:
                self._finish(seq, "cancelled")
            decodes, prefills = [], []
            try:
                decodes, prefills = self._plan()
                if prefills:  # a step with prompt chunks launches them eagerly, a while: hand the last step out first
                    self._deliver()
                if decodes or prefills:
                    inflight.append((self.stepper.launch(decodes, prefills), decodes + prefills))
                    self.steps += 1
                    self.step_tokens += sum(w.n for w in decodes + prefills)
                self._deliver()  # the last step's tokens, now that this one is queued
                # read the previous step back while this one runs; with nothing new launched, drain
                while inflight and (len(inflight) > 1 or not (decodes or prefills)):
                    handle, works = inflight.popleft()
                    t1 = time.perf_counter()
                    sampled = self.stepper.collect(handle)  # waits for the device: not host time
                    t0 += time.perf_counter() - t1
                    self._absorb(works, sampled)
                if not (decodes or prefills):
                    self._deliver(everything=True)
            except Exception as e:  # a failed step fails the sequences in it, not the server
                log.exception("a batched step failed")
                inflight.clear()
                self._fail_all(e)
                self._deliver(everything=True)
            spent = time.perf_counter() - t0
            self.host_s += spent
            if prefills:
                self.prompt_host_s += spent
                self.prompt_steps += 1
        for seq in list(self.running) + list(self.waiting) + self._inbox:
            self._finish(seq, "cancelled")
        self._deliver(everything=True)

    def _plan(self) -> tuple[list[Work], list[Work]]:
        decodes: list[Work] = []
        for seq in list(self.running):
            if seq.state != RUNNING or seq.prefilling or not seq.can_sample():
                continue
            if not self._reserve(seq, seq.pos + 1):
                continue  # seq itself was preempted
            decodes.append(Work(seq, seq.pos, epoch=seq.epoch))
            seq.pos += 1
            seq.pending += 1
        budget = self.stepper.chunk_tokens
        prefills: list[Work] = []
        for seq in self.running:
            if budget <= 0:
                break
            if seq.state == RUNNING and seq.prefilling:
                budget -= self._chunk(seq, budget, prefills)
        while budget > 0 and self.waiting and self._free_slots and self._admit(self.waiting[0]):
            seq = self.waiting.popleft()
            budget -= self._chunk(seq, budget, prefills)
        return decodes, prefills

    def _chunk(self, seq: Sequence, budget: int, out: list[Work]) -> int:
        end = min(seq.prefill_end, seq.pos + budget)
        last = end == seq.prefill_end
        out.append(Work(seq, seq.pos, seq.tokens[seq.pos:end], sample=last, epoch=seq.epoch))
        bs = self.pool.block_size
        for i in range(seq.pos // bs, min(end // bs, len(seq.hashes))):  # full prompt blocks computed by now
            self.pool.commit(seq.blocks[i], seq.hashes[i])
        n = end - seq.pos
        seq.pos = end
        if last:
            seq.pending += 1
        return n

    def _admit(self, seq: Sequence) -> bool:
        """Give seq a slot and its prompt's blocks (shared ones from the prefix cache first), if they fit with a
        block to spare for every running sequence's next decode. Its prompt's blocks are taken now, so that
        its chunks never wait for memory (only decodes do, and they can preempt)."""
        bs = self.pool.block_size
        if not seq.hashes and self.pool.prefix_caching:
            seq.hashes = BlockPool.chain_hashes(seq.tokens[:seq.prompt_len], bs)
        shared = self.pool.match_prefix(seq.tokens)
        need = self.pool.blocks_for(len(seq.tokens)) - len(shared)
        if need + 1 + len(self.running) > self.pool.free:
            self.pool.release(shared)
            return False
        seq.blocks = shared + [self.pool.allocate() for _ in range(need)]
        seq.pos = len(shared) * bs
        seq.prefill_end = len(seq.tokens)
        if seq.epoch == 0:
            seq.cached_tokens = seq.pos
        seq.slot = self._free_slots.pop()
        seq.state = RUNNING
        self.running.append(seq)
        self.stepper.begin(seq)
        return True

    def _reserve(self, seq: Sequence, end: int) -> bool:
        """Blocks for positions [0, end) of seq; preempts the newest sequences (seq itself last) if needed. Decodes
        are planned oldest first, so a victim has no work in the step being planned."""
        need = self.pool.blocks_for(end) - len(seq.blocks)
        while need > self.pool.free:
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        for _ in range(max(0, need)):
            seq.blocks.append(self.pool.allocate())
        return True

    def _preempt(self, seq: Sequence) -> None:
        log.info("KV pool full: sequence %d goes back to the queue (recomputed later)", seq.id)
        self.preemptions += 1
        self._leave(seq)
        seq.state, seq.pos, seq.pending = WAITING, 0, 0
        seq.epoch += 1
        self.waiting.appendleft(seq)

    def _leave(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks = []
        if seq.slot is not None:
            self.stepper.end(seq)
            self._free_slots.append(seq.slot)
            seq.slot = None

    def _absorb(self, works: list[Work], results: list[Sampled | None]) -> None:
        for w, r in zip(works, results):
            seq = w.seq
            if r is None or seq.state != RUNNING or w.epoch != seq.epoch:
                continue
            if r.error is not None:
                self._send(seq, RuntimeError(r.error))
                self._finish(seq, "error")
                continue
            seq.pending -= 1
            seq.tokens.append(r.token)
            seq.generated += 1
            self._send(seq, r)
            if r.token in seq.stop_ids or r.final:
                self._finish(seq, "stop")
            elif seq.generated >= seq.max_new or len(seq.tokens) >= seq.max_len:
                self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.state == FINISHED:
            return
        if seq.state == WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self._leave(seq)
        seq.state, seq.finish_reason = FINISHED, reason
        self._send(seq, _END)

    def _send(self, seq: Sequence, item: Any) -> None:
        if seq not in self._outbox:
            self._outbox[seq] = [self._hand_outs]  # when its oldest item came, then the items
        self._outbox[seq].append(item)

    def _deliver(self, everything: bool = False) -> None:
        """Hand out what the sequences got: every few steps when many run (see the module's docstring), a first
        token and an end at once."""
        self._hand_outs += 1
        every = max(1, min(MAX_STREAM_STEPS, len(self.running) // SEQS_PER_STREAM_STEP))
        turn = self._hand_outs % every
        out, keep = self._outbox, {}
        for seq, held in out.items():  # a sequence's turn comes every `every` hand-outs, the sequences' staggered
            if (everything or seq.id % every == turn or not seq.streamed or seq.state == FINISHED
                    or self._hand_outs - held[0] >= MAX_STREAM_STEPS):  # (`every` changed: at most that late)
                seq.streamed = True
                seq.out.put(held[1:])
            else:
                keep[seq] = held
        self._outbox = keep

    def _fail_all(self, error: Exception) -> None:
        for seq in list(self.running):
            self._send(seq, RuntimeError(f"the batched step failed: {type(error).__name__}: {error}"))
            self._finish(seq, "error")
        self.pool = BlockPool(self.pool.num_blocks, self.pool.block_size, self.pool.prefix_caching)
        reset = getattr(self.stepper, "reset", None)
        if reset is not None:
            reset()
