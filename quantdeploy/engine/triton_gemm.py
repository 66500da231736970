"""W4A16 GEMM in Triton for a few to a few hundred tokens (batched decode), on the CUDA GEMV's own weights.

The batch-1 GEMV (cuda_gemv.py) owns the weights in the "NK" layout (nk_layout.py): int32 [N, K/8], eight 4-bit
values per word in nibble order SLOT, and the group scales / zero points in one of the meta forms (MetaForm).
This kernel reads the same tensors, so batching keeps one copy of the weights: each program dequantizes a [BLOCK_N,
BLOCK_K] tile in registers and feeds the tensor cores (tl.dot) with the [BLOCK_M, BLOCK_K] activations. K is
split over SPLIT_K programs whose fp32 partial sums meet with atomics. A gate|up weight stored with its rows
interleaved (gate j, up j) is written back in the original order (gate columns, then up columns).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .nk_layout import MetaForm

# the meta forms as the kernel's FORM (constexpr) compares them
SCALES_ONLY = tl.constexpr(MetaForm.SCALES_ONLY.value)
ZERO_BYTES = tl.constexpr(MetaForm.ZERO_BYTES.value)


@triton.jit
def _w4a16_gemm(x_ptr, q_ptr, meta_ptr, y_ptr, M, N, K, G, ZVAL, split,
                FORM: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, INTERLEAVED: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # nibble j of a word holds k offset SLOT^-1(j): SLOT = (0, 4, 1, 5, 2, 6, 3, 7), so offset i sits at 4 * SLOT[i]
    i8 = tl.arange(0, 8)
    shifts = 4 * ((i8 % 2) * 4 + i8 // 2)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_per = tl.cdiv(K // BLOCK_K, SPLIT_K) * BLOCK_K
    k_lo = pid_k * k_per
    k_hi = tl.minimum(k_lo + k_per, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * K + offs_k[None, :], mask=mask_m[:, None], other=0.0)
        words = tl.load(q_ptr + offs_n[:, None] * (K // 8) + (k0 // 8 + tl.arange(0, BLOCK_K // 8))[None, :],
                        mask=mask_n[:, None], other=0)
        q = (words[:, :, None] >> shifts[None, None, :]) & 0xF
        q = tl.reshape(q, (BLOCK_N, BLOCK_K)).to(tl.float32)
        g = k0 // GROUP
        if FORM == SCALES_ONLY:
            bits = tl.load(meta_ptr + (offs_n // 8) * (G * 8) + g * 8 + offs_n % 8, mask=mask_n, other=0)
            scale = bits.to(tl.float16, bitcast=True).to(tl.float32)
            zero = ZVAL * 1.0
        elif FORM == ZERO_BYTES:
            row = offs_n * (G + G // 2)
            bits = tl.load(meta_ptr + row + g, mask=mask_n, other=0)
            scale = bits.to(tl.float16, bitcast=True).to(tl.float32)
            zb = tl.load(meta_ptr + row + G + g // 2, mask=mask_n, other=0).to(tl.int32)
            zero = ((zb >> (8 * (g % 2))) & 0xFF).to(tl.float32)
        else:
            word = tl.load(meta_ptr + offs_n * G + g, mask=mask_n, other=0)
            scale = (word & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            zero = ((word >> 16) & 0xFFFF).to(tl.float32)
        if FORM == SCALES_ONLY:
            w = ((q - zero) * scale[:, None]).to(tl.float16)
        else:
            w = ((q - zero[:, None]) * scale[:, None]).to(tl.float16)
        acc += tl.dot(x.to(tl.float16), tl.trans(w))
    if INTERLEAVED:  # row 2j is gate j, row 2j + 1 is up j
        out_n = (offs_n % 2) * split + offs_n // 2
    else:
        out_n = offs_n
    ptrs = y_ptr + offs_m[:, None] * N + out_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K > 1:
        tl.atomic_add(ptrs, acc, mask=mask)
    else:
        tl.store(ptrs, acc, mask=mask)


def config(m: int, n: int, k: int, group: int, sms: int) -> dict:
    """Tile sizes for an [m, k] x [k, n] product: BLOCK_M covers every row (m <= 256 here), BLOCK_K stays inside
    one group, and K is split until there are about two programs per multiprocessor."""
    block_m = max(16, triton.next_power_of_2(m))
    block_n = 64 if block_m <= 64 else 32
    block_k = min(128 if block_m <= 64 else 64, group)
    programs = triton.cdiv(n, block_n)
    split = 1
    while programs * split < 2 * sms and k // block_k >= 2 * split * 2:
        split *= 2
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split,
                num_warps=4 if block_m <= 64 else 8, num_stages=3)


def gemm(x: torch.Tensor, w, sms: int) -> torch.Tensor:
    """x [M, K] fp16 (columns already in the weight's order) @ the NKWeight w -> [M, N] fp16, columns in the
    original order (a gate|up weight de-interleaved)."""
    m, k = x.shape
    n, group = w.n, w.group_size
    c = config(m, n, k, group, sms)
    g = k // group
    form = w.form
    meta = w.meta.view(torch.int16) if form in (MetaForm.SCALES_ONLY, MetaForm.ZERO_BYTES) else w.meta
    y = (torch.zeros if c["SPLIT_K"] > 1 else torch.empty)((m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, c["BLOCK_N"]), c["SPLIT_K"])
    _w4a16_gemm[grid](x.contiguous(), w.q, meta, y, m, n, k, g, w.zero_point, w.split, FORM=int(form), GROUP=group,
                      INTERLEAVED=w.split > 0, **c)
    return y.to(torch.float16)
