"""The batch-1 GEMV of the int8 lm_head (head.py): logits[n] = scale[n] * sum_k q[n, k] * x[k], in fp32."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_ops import _pdl, _pdl_enter

BLOCK_N, BLOCK_K, WARPS = 16, 256, 4  # the fastest of 18 shapes on an H200 (head_ab.py, head-ab-h200.txt)


@triton.jit
def _int8_gemv(x_ptr, q_ptr, s_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               PDL: tl.constexpr):
    _pdl_enter(PDL)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = rows < N
    base = q_ptr + rows.to(tl.int64)[:, None] * K
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        km = kk < K
        w = tl.load(base + kk[None, :], mask=rm[:, None] & km[None, :], other=0)
        x = tl.load(x_ptr + kk, mask=km, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, 1) * tl.load(s_ptr + rows, mask=rm, other=0.0)
    tl.store(out_ptr + rows, y, mask=rm)


def int8_gemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, block_n: int = BLOCK_N,
              block_k: int = BLOCK_K, warps: int = WARPS) -> torch.Tensor:
    """x [1, K] (fp16/fp32), q [N, K] int8, scale [N] fp32 -> [1, N] fp32. The block shape's keywords are for
    benchmarks/gpu/head_ab.py."""
    n, k = q.shape
    out = torch.empty((1, n), dtype=torch.float32, device=x.device)
    _int8_gemv[(triton.cdiv(n, block_n),)](x.reshape(-1), q, scale, out, n, k, BLOCK_N=block_n, BLOCK_K=block_k,
                                           num_warps=warps, **_pdl(x.device))
    return out
