"""Batch-1 W4A16 GEMV in Triton for the QuantWeight layout (split-K, fp32 atomics into a zeroed buffer).

y[n] = sum_g ( scales[g, n] * sum_{k in g} x[k] q[k, n]  -  szeros[g, n] * sum_{k in g} x[k] )
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl


@triton.jit
def _w4a16_gemv(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, N, K, groups_per_split,
                GROUP: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_groups = K // GROUP
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.arange(0, GROUP // 8)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    g0 = pid_k * groups_per_split
    for i in range(groups_per_split):
        g = g0 + i
        if g < n_groups:
            qrow = g * (GROUP // 8) + rows  # packed rows of this group
            q = tl.load(q_ptr + qrow[:, None] * N + offs_n[None, :], mask=mask_n[None, :], other=0)
            part = tl.zeros((BLOCK_N,), dtype=tl.float32)
            xsum = 0.0
            for j in tl.static_range(8):
                xj = tl.load(x_ptr + g * GROUP + rows * 8 + j).to(tl.float32)  # [GROUP/8]
                wj = ((q >> (4 * j)) & 0xF).to(tl.float32)
                part += tl.sum(wj * xj[:, None], axis=0)
                xsum += tl.sum(xj, axis=0)
            s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            acc += s * part - z * xsum
    tl.atomic_add(y_ptr + offs_n, acc, mask=mask_n)


@functools.lru_cache(maxsize=None)
def _plan(n: int, k: int, group: int, sms: int) -> tuple[int, int, int]:
    block_n = 128 if n >= 128 else 64
    n_blocks = triton.cdiv(n, block_n)
    n_groups = k // group
    split = max(1, min(n_groups, (8 * sms) // max(1, n_blocks)))
    gps = triton.cdiv(n_groups, split)
    split = triton.cdiv(n_groups, gps)
    return block_n, split, gps


def w4a16_gemv(x, w, out):
    """x: [K] (fp16/bf16/fp32, contiguous); out: fp32 [N], ZEROED by the caller (the kernel accumulates)."""
    import torch

    if w.perm is not None:
        x = x.index_select(0, w.perm)
    n, k = w.n, w.k
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 8
    block_n, split, gps = _plan(n, k, w.group_size, sms)
    _w4a16_gemv[(triton.cdiv(n, block_n), split)](x, w.qweight, w.scales, w.szeros, out, n, k, gps,
                                                  GROUP=w.group_size, BLOCK_N=block_n, num_warps=4)
    return out
