"""Where a step's KV goes and how its queries attend: the decoder's layers call one of these contexts.

- StaticCache: one sequence in the decoder's own cache [KVH, max_len, D] per layer (a chat, `bench`): the
  single-user path, with its CUDA graphs (runner.py).
- PagedBatch: many sequences in a paged pool [blocks, KVH, block_size, D] per layer (batching.Scheduler's
  steps, stepper.py): `n_decode` decode rows (one token each, oldest first) followed by prompt chunks.

Each offers the torch path (store + attend, the CPU reference) and the fused path (rope_store + attend_fused:
Triton kernels on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def sdpa(q, k, v, mask, causal: bool, scale: float, gqa: bool, cap: float | None = None):
    """q [M, H, D], k / v [KVH, L, D] -> [M, H*D]; cap: Gemma-2's attention soft-cap (arch.attention)."""
    from .arch_ops import attention

    m, h, d = q.shape
    att = attention(q.transpose(0, 1).unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), mask, causal, scale, cap, gqa)
    return att[0].transpose(0, 1).reshape(m, h * d)


class StaticCache:
    def __init__(self, dec, positions: torch.Tensor, masks: dict, kv_len: int, causal_from_zero: bool):
        self.dec, self.positions, self.masks, self.kv_len = dec, positions, masks, kv_len
        self.causal_from_zero = causal_from_zero
        self.k, self.v = dec.static_cache()

    def store(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[i].index_copy_(1, self.positions, k.transpose(0, 1))
        self.v[i].index_copy_(1, self.positions, v.transpose(0, 1))

    def attend(self, i: int, q: torch.Tensor) -> torch.Tensor:
        """q [M, H, D] (rotated; this layer's k, v already stored) -> [M, H*D]."""
        cfg = self.dec.cfg
        m = q.shape[0]
        window = cfg.window[i]
        if self.causal_from_zero and (window == 0 or window >= m):  # a prompt from position 0: flash attention
            k, v, mask, causal = self.k[i][:, :m], self.v[i][:, :m], None, True
        else:
            kv = self.kv_len
            k, v, mask, causal = self.k[i][:, :kv], self.v[i][:, :kv], self.masks[window], False
        return sdpa(q, k, v, mask, causal, cfg.scale, cfg.kv_heads != q.shape[1], cfg.attn_softcap)

    def rope_store(self, i: int, qkv, cos, sin, q_norm, k_norm):
        from . import triton_ops as T

        cfg = self.dec.cfg
        return T.rope_cache(qkv, self.positions, cos, sin, self.k[i], self.v[i], cfg.heads, cfg.kv_heads, cfg.eps,
                            q_norm, k_norm, cfg.gemma)

    def attend_fused(self, i: int, q: torch.Tensor) -> torch.Tensor:
        from . import triton_ops as T

        if q.shape[0] == 1:
            cfg = self.dec.cfg
            return T.decode_attention(q, self.k[i], self.v[i], self.positions, self.kv_len, cfg.scale, cfg.window[i])
        return self.attend(i, q)


class PagedKV:
    """The KV pool of a batching engine: per layer, K and V as [num_blocks, KVH, block_size, D]."""

    def __init__(self, layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype, device):
        shape = (num_blocks, kv_heads, block_size, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.block_size = block_size
        self.num_blocks = num_blocks

    @staticmethod
    def bytes_per_block(layers: int, block_size: int, kv_heads: int, head_dim: int, dtype) -> int:
        return 2 * layers * block_size * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


@dataclass
class Chunk:
    """A prompt chunk in a PagedBatch: tokens [first, first + n) of the step, at positions [start, start + n) of a
    sequence whose blocks are `table` (device int32)."""

    first: int
    n: int
    start: int
    table: torch.Tensor


class PagedBatch:
    def __init__(self, dec, kv: PagedKV, positions: torch.Tensor, slots: torch.Tensor, n_decode: int,
                 tables: torch.Tensor | None, chunks: list[Chunk], kv_len: int):
        """positions, slots [T]: each token's position and KV slot (block * block_size + offset); tables
        [n_decode, max_blocks] int32: the decode rows' block tables; kv_len: a bound on every decode row's length
        (the attention plan's bucket)."""
        self.dec, self.kv = dec, kv
        self.positions, self.slots, self.n_decode, self.tables = positions, slots, n_decode, tables
        self.chunks, self.kv_len = chunks, kv_len
        bs = kv.block_size
        self._blk, self._off = slots // bs, slots % bs

    def store(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.kv.k[i][self._blk, :, self._off] = k
        self.kv.v[i][self._blk, :, self._off] = v

    def _gather(self, cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
        """One sequence's first `length` positions as [KVH, length, D]."""
        blocks = cache.index_select(0, table[:-(-length // self.kv.block_size)].long())  # [nb, KVH, bs, D]
        return blocks.transpose(0, 1).reshape(cache.shape[1], -1, cache.shape[3])[:, :length]

    def _window_mask(self, qpos: torch.Tensor, length: int, window: int) -> torch.Tensor:
        j = torch.arange(length, device=qpos.device)[None, :]
        p = qpos[:, None]
        mask = j <= p
        return mask & (j > p - window) if window else mask

    def attend(self, i: int, q: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """Decode rows through the paged decode kernel (fused) or its torch reference; each prompt chunk through
        SDPA over its sequence's gathered blocks."""
        cfg = self.dec.cfg
        gqa = cfg.kv_heads != q.shape[1]
        window = cfg.window[i]
        out = []
        nd = self.n_decode
        if nd and fused:
            from . import triton_ops as T

            out.append(T.paged_decode_attention(q[:nd], self.kv.k[i], self.kv.v[i], self.positions[:nd],
                                                self.tables, self.kv_len, cfg.scale, window))
        elif nd:
            out.append(self._decode_rows(i, q[:nd], gqa, window))
        for c in self.chunks:
            length = c.start + c.n
            k, v = self._gather(self.kv.k[i], c.table, length), self._gather(self.kv.v[i], c.table, length)
            qc = q[c.first:c.first + c.n]
            if c.start == 0 and (window == 0 or window >= c.n):
                out.append(sdpa(qc, k, v, None, True, cfg.scale, gqa, cfg.attn_softcap))
            else:
                mask = self._window_mask(self.positions[c.first:c.first + c.n], length, window)
                out.append(sdpa(qc, k, v, mask, False, cfg.scale, gqa, cfg.attn_softcap))
        return torch.cat(out) if len(out) > 1 else out[0]

    def _decode_rows(self, i: int, q: torch.Tensor, gqa: bool, window: int) -> torch.Tensor:
        """One query per sequence over its blocks (the torch reference of the paged decode kernel)."""
        cfg = self.dec.cfg
        nd, h, d = q.shape
        kc, vc = self.kv.k[i], self.kv.v[i]
        nb = -(-self.kv_len // self.kv.block_size)
        table = self.tables[:, :nb].long()
        k = kc[table].permute(0, 2, 1, 3, 4).reshape(nd, kc.shape[1], -1, d)  # [B, KVH, nb*bs, D]
        v = vc[table].permute(0, 2, 1, 3, 4).reshape(nd, kc.shape[1], -1, d)
        j = torch.arange(k.shape[2], device=q.device)[None, :]
        p = self.positions[:nd, None]
        mask = (j <= p) & (j > p - window) if window else j <= p
        from .arch_ops import attention

        att = attention(q.unsqueeze(2), k, v, mask[:, None, None, :], False, cfg.scale, cfg.attn_softcap, gqa)
        return att.reshape(nd, h * d)

    def rope_store(self, i: int, qkv, cos, sin, q_norm, k_norm):
        from . import triton_ops as T

        cfg = self.dec.cfg
        return T.rope_cache(qkv, self.positions, cos, sin, self.kv.k[i], self.kv.v[i], cfg.heads, cfg.kv_heads,
                            cfg.eps, q_norm, k_norm, cfg.gemma, slots=self.slots)

    def attend_fused(self, i: int, q: torch.Tensor) -> torch.Tensor:
        return self.attend(i, q, fused=True)
