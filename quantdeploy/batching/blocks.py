"""The KV cache as a pool of fixed-size blocks, with prefix caching.

A sequence holds a list of block ids (its block table); position p lives in block table[p // block_size] at
offset p % block_size. Blocks are reference-counted: two sequences whose prompts start with the same full blocks
share them (a system prompt, the n choices of one request). A block whose reference count drops to zero goes
back to the free list but keeps its contents and its hash until it is handed out again, so a later prompt with
the same prefix finds it (least recently freed blocks are reused first).
"""

from __future__ import annotations

from collections import OrderedDict


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("a block pool needs at least one block of at least one token")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}  # block hash -> block id
        self.hits = 0  # prompt tokens served from the prefix cache
        self.queries = 0  # prompt tokens looked up

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def allocate(self) -> int:
        """A fresh block (reference count 1); raises IndexError when none is free."""
        if not self._free:
            raise IndexError("the KV block pool is exhausted")
        b, _ = self._free.popitem(last=False)
        h = self._hash[b]
        if h is not None:
            if self._cached.get(h) == b:
                del self._cached[h]
            self._hash[b] = None
        self._ref[b] = 1
        return b

    def release(self, blocks: list[int]) -> None:
        """Drop one reference to each block; the table's tail is freed first so that it is reused first."""
        for b in reversed(blocks):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._free[b] = None
            elif self._ref[b] < 0:
                raise RuntimeError(f"KV block {b} released more often than taken")

    # --- prefix caching --------------------------------------------------------------------------------
    @staticmethod
    def chain_hashes(tokens: list[int], block_size: int) -> list[int]:
        """A hash per full block of `tokens`, each covering every token before it too."""
        out, h = [], 0
        for i in range(0, len(tokens) - block_size + 1, block_size):
            h = hash((h, tuple(tokens[i:i + block_size])))
            out.append(h)
        return out

    def match_prefix(self, tokens: list[int]) -> list[int]:
        """Blocks that already hold the KV of `tokens`' leading full blocks, each taken (reference + 1). At least
        the last token is always left to compute, so that its logits exist."""
        if not self.prefix_caching:
            return []
        usable = (len(tokens) - 1) // self.block_size * self.block_size
        found = []
        for h in self.chain_hashes(tokens[:usable], self.block_size):
            b = self._cached.get(h)
            if b is None:
                break
            if self._ref[b] == 0:
                del self._free[b]
            self._ref[b] += 1
            found.append(b)
        self.queries += len(tokens)
        self.hits += len(found) * self.block_size
        return found

    def commit(self, block: int, block_hash: int) -> None:
        """`block` now holds the KV that `block_hash` names: later prompts may share it."""
        if not self.prefix_caching or self._hash[block] is not None:
            return
        if block_hash not in self._cached:
            self._cached[block_hash] = block
            self._hash[block] = block_hash
