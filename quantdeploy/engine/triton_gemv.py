"""Batch-1 W4A16 GEMV in Triton for the QuantWeight layout.

Each program owns BLOCK_N output columns and a slice of the K groups (split-K): it dequantizes in registers
(w = q * scale - scale*zero, one FMA) and accumulates w * x in a 2-D register tile, reducing across K once at
the end, so the inner loop has no cross-thread reductions. Partial sums go to an fp32 buffer with atomics
(zeroed by the caller); with a single split the program stores directly.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

@triton.jit
def _w4a16_gemv(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, N, K, groups_per_split,
                GROUP: tl.constexpr, BLOCK_N: tl.constexpr, ATOMIC: tl.constexpr, HALF: tl.constexpr):
    """HALF: half-precision math inside a group: nibbles become fp16 through the exponent trick (0x6400 | n is
    1024 + n exactly, no int-to-float conversion), dequantize and multiply in fp16 (packed half2 on the GPU),
    each group's partial sums join the fp32 accumulator. Else fp32 math throughout."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_groups = K // GROUP
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.arange(0, GROUP // 8)
    acc = tl.zeros((GROUP // 8, BLOCK_N), dtype=tl.float32)
    g0 = pid_k * groups_per_split
    g_end = tl.minimum(g0 + groups_per_split, n_groups)
    for g in range(g0, g_end):
        qrow = g * (GROUP // 8) + rows
        q = tl.load(q_ptr + qrow[:, None] * N + offs_n[None, :], mask=mask_n[None, :], other=0,
                    eviction_policy="evict_first")
        s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0)[None, :]
        z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0)[None, :]
        if HALF:
            s, z = s.to(tl.float16), z.to(tl.float16)
            part = tl.zeros((GROUP // 8, BLOCK_N), dtype=tl.float16)
            for j in tl.static_range(8):
                xj = tl.load(x_ptr + g * GROUP + rows * 8 + j).to(tl.float16)[:, None]
                v = (((q >> (4 * j)) & 0xF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
                part += ((v - 1024.0) * s - z) * xj
            acc += part.to(tl.float32)
        else:
            s, z = s.to(tl.float32), z.to(tl.float32)
            for j in tl.static_range(8):
                xj = tl.load(x_ptr + g * GROUP + rows * 8 + j).to(tl.float32)[:, None]
                acc += (((q >> (4 * j)) & 0xF).to(tl.float32) * s - z) * xj
    out = tl.sum(acc, axis=0)
    if ATOMIC:
        tl.atomic_add(y_ptr + offs_n, out, mask=mask_n)
    else:
        tl.store(y_ptr + offs_n, out, mask=mask_n)


# Tuned on an H200 with benchmarks/gpu/gemv_tune.py (block columns, warps, programs per SM); a tuned file for
# this GPU (gemv_tune.py --save: <gpu name>.json in EngineConfig.tuned_dir, best config per KxN) wins over it.
CONFIG = {"block_n": 128, "num_warps": 4, "programs_per_sm": 4}


def config_for(k: int, n: int, tuned: dict) -> dict:
    """The launch configuration for a K x N weight: the tuned file's (its choices, `tuned`), else CONFIG."""
    return tuned.get(f"{k}x{n}") or CONFIG


@functools.lru_cache(maxsize=None)
def plan(n: int, k: int, group: int, sms: int, block_n: int, per_sm: int) -> tuple[int, int]:
    """(splits, groups per split) so that about per_sm programs run on each multiprocessor."""
    n_blocks = triton.cdiv(n, block_n)
    n_groups = k // group
    split = max(1, min(n_groups, (per_sm * sms) // max(1, n_blocks)))
    gps = triton.cdiv(n_groups, split)
    return triton.cdiv(n_groups, gps), gps


@functools.lru_cache(maxsize=8)
def _sms(device) -> int:
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


def w4a16_gemv(x, w, out, config: dict | None = None):
    """x: [K] contiguous; out: fp32 [N], ZEROED by the caller (split-K partial sums are added into it)."""
    c = config or CONFIG
    if w.perm is not None:
        x = x.index_select(0, w.perm)
    n, k = w.n, w.k
    split, gps = plan(n, k, w.group_size, _sms(x.device), c["block_n"], c["programs_per_sm"])
    _w4a16_gemv[(triton.cdiv(n, c["block_n"]), split)](
        x, w.qweight, w.scales, w.szeros, out, n, k, gps, GROUP=w.group_size, BLOCK_N=c["block_n"],
        ATOMIC=split > 1, HALF=bool(c.get("half", False)), num_warps=c["num_warps"])
    return out
