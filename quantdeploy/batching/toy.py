"""A stepper over a toy model, for testing the scheduler without weights.

The toy model's next token depends on every token whose KV the sequence's block table points at, so a wrong
block table, a shared block overwritten, or a recomputation that differs shows up as a different token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .scheduler import Sampled, Sequence, Work

VOCAB = 1000


def next_token(history: list[int]) -> int:
    acc = 0
    for i, t in enumerate(history):
        acc = (acc * 31 + t * (i + 7)) % 1_000_003
    return acc % VOCAB


def solo(prompt: list[int], n: int, stop: set[int] = frozenset()) -> list[int]:
    """What one sequence decoded alone gives."""
    seq = list(prompt)
    out = []
    for _ in range(n):
        t = next_token(seq)
        out.append(t)
        seq.append(t)
        if t in stop:
            break
    return out


@dataclass
class ToyStepper:
    max_seqs: int = 4
    num_blocks: int = 64
    block_size: int = 4
    max_len: int = 256
    chunk_tokens: int = 16
    prefix_caching: bool = True
    delay: float = 0.0  # seconds per step, as if a device computed it
    kv: dict = field(default_factory=dict)  # (block, offset) -> token
    last: dict = field(default_factory=dict)  # slot -> last sampled token
    steps: list = field(default_factory=list)  # (decodes, prefill tokens) per step, for assertions

    def begin(self, seq: Sequence) -> None:
        self.last.pop(seq.slot, None)

    def end(self, seq: Sequence) -> None:
        self.last.pop(seq.slot, None)

    def _write(self, seq: Sequence, pos: int, tok: int) -> None:
        b = seq.blocks[pos // self.block_size]
        self.kv[(b, pos % self.block_size)] = tok

    def _read(self, seq: Sequence, upto: int) -> list[int]:
        return [self.kv[(seq.blocks[p // self.block_size], p % self.block_size)] for p in range(upto)]

    def launch(self, decodes: list[Work], prefills: list[Work]):
        self.steps.append((len(decodes), sum(len(w.tokens) for w in prefills)))
        if self.delay:
            time.sleep(self.delay)
        out = []
        for w in decodes + prefills:
            toks = w.tokens or [self.last[w.seq.slot]]
            for i, t in enumerate(toks):
                self._write(w.seq, w.start + i, t)
            if w.sample:
                t = next_token(self._read(w.seq, w.start + len(toks)))
                self.last[w.seq.slot] = t
                out.append(Sampled(t))
            else:
                out.append(None)
        return out

    def collect(self, handle):
        return handle
