"""Fused Triton kernels for the engine's CUDA decode step: each replaces a chain of small torch kernels.

A batch-1 decode step is bandwidth-bound in its GEMVs and latency-bound everywhere else: one CUDA-graph node
costs a few microseconds however little it does, so the step's non-GEMV work is written as few kernels:
- add_rmsnorm: residual add (optionally of a normed branch, Gemma-3) + RMSNorm, 1 kernel instead of ~10;
- rope_cache: per-head q/k norm (Gemma-3, Qwen3) + rotary embedding + writing k, v into the static cache;
- decode_attention: split-K (flash-decoding) attention of one query over the cache, GQA heads of one kv head
  together, the length read from the device (no mask tensor), then a small combine kernel;
- act_mul: SiLU / GELU-tanh of the gate times the up projection.
On compute capability 9.0+ they are launched with programmatic dependent launch (pdl.py): each waits for the
kernel before it (gdc_wait) first thing, then lets the next one launch.
Rounding follows the torch path (values are rounded to the model dtype where torch rounds them), so the two
paths agree to the last bit or two; tests run these kernels under Triton's interpreter on the CPU.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import pdl

_HAS_GDC = hasattr(getattr(getattr(tl, "extra", None), "cuda", None), "gdc_wait")


@triton.jit
def _pdl_enter(PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


def _pdl(device) -> dict:
    """The launch keywords: PDL on where the GPU and this Triton support it."""
    on = _HAS_GDC and pdl.enabled(device)
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


@triton.jit
def _add_rmsnorm(x_ptr, r_ptr, rw_ptr, w_ptr, out_ptr, N, eps,
                 HAS_RES: tl.constexpr, NORM_RES: tl.constexpr, GEMMA: tl.constexpr, BLOCK: tl.constexpr,
                 PDL: tl.constexpr):
    _pdl_enter(PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    dt = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * N + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(r_ptr + row * N + offs, mask=mask, other=0.0).to(tl.float32)
        if NORM_RES:
            rw = tl.load(rw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            r = r * tl.rsqrt(tl.sum(r * r, 0) / N + eps)
            if GEMMA:
                r = (r * (1.0 + rw)).to(dt).to(tl.float32)
            else:
                r = (r.to(dt).to(tl.float32) * rw).to(dt).to(tl.float32)
        x = (x + r).to(dt).to(tl.float32)
        tl.store(x_ptr + row * N + offs, x.to(dt), mask=mask)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, 0) / N + eps)
    if GEMMA:
        y = y * (1.0 + w)
    else:
        y = y.to(dt).to(tl.float32) * w
    tl.store(out_ptr + row * N + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm(x, w, eps: float, gemma: bool, res=None, res_w=None, out=None):
    """x [M, N] (the residual stream, updated in place when res is given: x += norm?(res)); returns norm(x)*w."""
    m, n = x.shape
    out = torch.empty_like(x) if out is None else out
    block = triton.next_power_of_2(n)
    _add_rmsnorm[(m,)](x, res if res is not None else x, res_w if res_w is not None else w, w, out, n, eps,
                       HAS_RES=res is not None, NORM_RES=res_w is not None, GEMMA=gemma, BLOCK=block,
                       num_warps=min(16, max(1, block // 256)), **_pdl(x.device))
    return out


@triton.jit
def _rope_cache(qkv_ptr, pos_ptr, slot_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, q_ptr, kc_ptr, vc_ptr,
                H, KVH, max_len, stride, eps,
                D: tl.constexpr, HALF: tl.constexpr, QK_NORM: tl.constexpr, GEMMA: tl.constexpr,
                PAGED: tl.constexpr, PDL: tl.constexpr):
    _pdl_enter(PDL)
    t = tl.program_id(0)
    hh = tl.program_id(1)
    pos = tl.load(pos_ptr + t)
    if PAGED:  # caches [blocks, KVH, max_len (the block size), D]; the token's slot = block * max_len + offset
        slot = tl.load(slot_ptr + t)
        row = (slot // max_len) * KVH * max_len + slot % max_len
    else:  # caches [KVH, max_len, D]
        row = pos
    offs = tl.arange(0, HALF)
    src = qkv_ptr + t * stride + hh * D
    dt = q_ptr.dtype.element_ty
    x1 = tl.load(src + offs)
    x2 = tl.load(src + HALF + offs)
    if hh < H + KVH:
        a = x1.to(tl.float32)
        b = x2.to(tl.float32)
        if QK_NORM:
            is_q = hh < H
            w1 = tl.where(is_q, tl.load(qw_ptr + offs), tl.load(kw_ptr + offs)).to(tl.float32)
            w2 = tl.where(is_q, tl.load(qw_ptr + HALF + offs), tl.load(kw_ptr + HALF + offs)).to(tl.float32)
            inv = tl.rsqrt((tl.sum(a * a, 0) + tl.sum(b * b, 0)) / D + eps)
            if GEMMA:
                a = (a * inv * (1.0 + w1)).to(dt).to(tl.float32)
                b = (b * inv * (1.0 + w2)).to(dt).to(tl.float32)
            else:
                a = ((a * inv).to(dt).to(tl.float32) * w1).to(dt).to(tl.float32)
                b = ((b * inv).to(dt).to(tl.float32) * w2).to(dt).to(tl.float32)
        c = tl.load(cos_ptr + pos * D + offs).to(tl.float32)
        s = tl.load(sin_ptr + pos * D + offs).to(tl.float32)
        # rounded like torch's x * cos + rotate(x) * sin in the model dtype
        o1 = (a * c).to(dt).to(tl.float32) + (-b * s).to(dt).to(tl.float32)
        o2 = (b * c).to(dt).to(tl.float32) + (a * s).to(dt).to(tl.float32)
        if hh < H:
            dst = q_ptr + (t * H + hh) * D
        else:
            dst = kc_ptr + ((hh - H) * max_len + row) * D
        tl.store(dst + offs, o1.to(dt))
        tl.store(dst + HALF + offs, o2.to(dt))
    else:
        dst = vc_ptr + ((hh - H - KVH) * max_len + row) * D
        tl.store(dst + offs, x1)
        tl.store(dst + HALF + offs, x2)


def rope_cache(qkv, positions, cos, sin, k_cache, v_cache, heads: int, kv_heads: int, eps: float,
               q_norm=None, k_norm=None, gemma: bool = False, slots=None):
    """qkv [M, (H + 2 KVH) D] -> q [M, H, D] (normed?, rotated); k (normed?, rotated) and v written into the
    caches [KVH, max_len, D] at `positions` [M], or, with `slots` [M], into paged caches [blocks, KVH,
    block_size, D] at slot = block * block_size + offset."""
    m = qkv.shape[0]
    d = k_cache.shape[-1]
    rows = k_cache.shape[-2]  # max_len, or the block size
    q = torch.empty((m, heads, d), dtype=qkv.dtype, device=qkv.device)
    _rope_cache[(m, heads + 2 * kv_heads)](
        qkv, positions, slots if slots is not None else positions, cos, sin,
        q_norm if q_norm is not None else cos, k_norm if k_norm is not None else cos,
        q, k_cache, v_cache, heads, kv_heads, rows, qkv.stride(0), eps, D=d, HALF=d // 2,
        QK_NORM=q_norm is not None, GEMMA=gemma, PAGED=slots is not None, num_warps=1 if d <= 128 else 2,
        **_pdl(qkv.device))
    return q


@triton.jit
def _attend_tile(q, k_base, v_base, rows, d, D: tl.constexpr, jm, scale, m_i, l_i, acc):
    """One tile of keys in the online softmax of q [GP, D]: K and V rows `rows` (those where jm) after k_base and
    v_base. Returns the updated (max, sum, output)."""
    k = tl.load(k_base + rows[:, None] * D + d[None, :], mask=jm[:, None], other=0.0)
    s = tl.dot(q, tl.trans(k)) * scale
    s = tl.where(jm[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp(s - m_new[:, None])
    alpha = tl.exp(m_i - m_new)
    v = tl.load(v_base + rows[:, None] * D + d[None, :], mask=jm[:, None], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    l_i = l_i * alpha + tl.sum(p, 1)
    return m_new, l_i, acc


@triton.jit
def _attn_split(q_ptr, kc_ptr, vc_ptr, pos_ptr, po_ptr, pm_ptr, pl_ptr, scale, window, max_len, chunk,
                G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, SPLITS: tl.constexpr,
                PDL: tl.constexpr):
    _pdl_enter(PDL)
    kvh = tl.program_id(0)
    sp = tl.program_id(1)
    pos = tl.load(pos_ptr).to(tl.int32)
    lo = sp * chunk
    hi = tl.minimum(lo + chunk, pos + 1)
    if window > 0:
        lo = tl.maximum(lo, pos - window + 1)
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + (kvh * G + g)[:, None] * D + d[None, :], mask=(g < G)[:, None], other=0.0)
    m_i = tl.full((GP,), float("-inf"), tl.float32)
    l_i = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, D), tl.float32)
    base = kvh * max_len * D
    for start in range(lo, hi, BLOCK):
        j = start + tl.arange(0, BLOCK)
        jm = j < hi
        m_i, l_i, acc = _attend_tile(q, kc_ptr + base, vc_ptr + base, j, d, D, jm, scale, m_i, l_i, acc)
    row = (kvh * SPLITS + sp) * GP + g
    tl.store(po_ptr + row[:, None] * D + d[None, :], acc)
    tl.store(pm_ptr + row, m_i)
    tl.store(pl_ptr + row, l_i)


@triton.jit
def _attn_combine(po_ptr, pm_ptr, pl_ptr, out_ptr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                  SPLITS: tl.constexpr, SP: tl.constexpr, PDL: tl.constexpr):
    _pdl_enter(PDL)
    h = tl.program_id(0)
    kvh = h // G
    g = h % G
    s = tl.arange(0, SP)
    sm = s < SPLITS
    row = (kvh * SPLITS + s) * GP + g
    m = tl.load(pm_ptr + row, mask=sm, other=float("-inf"))
    ls = tl.load(pl_ptr + row, mask=sm, other=0.0)
    mx = tl.max(m, 0)
    wt = tl.where(m > float("-inf"), tl.exp(m - mx), 0.0)
    d = tl.arange(0, D)
    acc = tl.load(po_ptr + row[:, None] * D + d[None, :], mask=sm[:, None], other=0.0)
    o = tl.sum(acc * wt[:, None], 0) / tl.sum(ls * wt, 0)
    tl.store(out_ptr + h * D + d, o.to(out_ptr.dtype.element_ty))


def attention_plan(kv_len: int, kv_heads: int, d: int, sms: int) -> tuple[int, int, int]:
    """(block, chunk, splits): about two programs per multiprocessor over the kv_len bucket."""
    block = 64 if d <= 128 else 32
    splits = max(1, min(triton.cdiv(kv_len, block), (2 * sms) // max(1, kv_heads)))
    chunk = triton.cdiv(triton.cdiv(kv_len, splits), block) * block
    return block, chunk, triton.cdiv(kv_len, chunk)


def decode_attention(q, k_cache, v_cache, pos, kv_len: int, scale: float, window: int = 0):
    """One query token: q [1, H, D] over cache slots max(0, pos-window+1)..pos (pos [1] on the device);
    kv_len bounds the slots any position in this bucket can reach. Returns [1, H*D]."""
    heads, d = q.shape[1], q.shape[2]
    kvh, max_len, _ = k_cache.shape
    g = heads // kvh
    gp = max(16, triton.next_power_of_2(g))
    block, chunk, splits = attention_plan(kv_len, kvh, d, _sms(q.device))
    po = torch.empty((kvh * splits * gp, d), dtype=torch.float32, device=q.device)
    pm = torch.empty((kvh * splits * gp,), dtype=torch.float32, device=q.device)
    pl = torch.empty_like(pm)
    _attn_split[(kvh, splits)](q, k_cache, v_cache, pos, po, pm, pl, scale, window, max_len, chunk,
                               G=g, GP=gp, D=d, BLOCK=block, SPLITS=splits, num_warps=4, **_pdl(q.device))
    out = torch.empty((1, heads * d), dtype=q.dtype, device=q.device)
    _attn_combine[(heads,)](po, pm, pl, out, G=g, GP=gp, D=d, SPLITS=splits,
                            SP=triton.next_power_of_2(splits), num_warps=1 if d <= 128 else 2,
                            **_pdl(q.device))
    return out


@triton.jit
def _paged_attn_split(q_ptr, kc_ptr, vc_ptr, pos_ptr, tab_ptr, po_ptr, pm_ptr, pl_ptr, scale, window, chunk,
                      tab_stride, KVH, BS,
                      G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
                      SPLITS: tl.constexpr, PDL: tl.constexpr):
    """_attn_split for many sequences in a paged cache [blocks, KVH, BS, D]: program (b, kv head, split) reads
    sequence b's positions of its split through b's block table; BLOCK divides BS, so a tile is in one block."""
    _pdl_enter(PDL)
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    sp = tl.program_id(2)
    pos = tl.load(pos_ptr + b).to(tl.int32)
    lo = sp * chunk
    hi = tl.minimum(lo + chunk, pos + 1)
    if window > 0:
        lo = tl.maximum(lo, pos - window + 1)
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    H = KVH * G
    q = tl.load(q_ptr + (b * H + kvh * G + g)[:, None] * D + d[None, :], mask=(g < G)[:, None], other=0.0)
    m_i = tl.full((GP,), float("-inf"), tl.float32)
    l_i = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, D), tl.float32)
    for start in range((lo // BLOCK) * BLOCK, hi, BLOCK):
        j = start + tl.arange(0, BLOCK)
        jm = (j >= lo) & (j < hi)
        blk = tl.load(tab_ptr + b * tab_stride + start // BS).to(tl.int64)
        base = ((blk * KVH + kvh) * BS + start % BS) * D
        m_i, l_i, acc = _attend_tile(q, kc_ptr + base, vc_ptr + base, tl.arange(0, BLOCK), d, D, jm, scale, m_i,
                                     l_i, acc)
    row = ((b * KVH + kvh) * SPLITS + sp) * GP + g
    tl.store(po_ptr + row[:, None] * D + d[None, :], acc)
    tl.store(pm_ptr + row, m_i)
    tl.store(pl_ptr + row, l_i)


def paged_attention_plan(kv_len: int, batch: int, kv_heads: int, d: int, block_size: int, sms: int
                         ) -> tuple[int, int, int]:
    """(tile, chunk, splits) for a batch of decode rows: about two programs per multiprocessor in all."""
    tile = min(64 if d <= 128 else 32, block_size)
    splits = max(1, min(triton.cdiv(kv_len, tile), (2 * sms) // max(1, kv_heads * batch)))
    chunk = triton.cdiv(triton.cdiv(kv_len, splits), tile) * tile
    return tile, chunk, triton.cdiv(kv_len, chunk)


def paged_decode_attention(q, k_cache, v_cache, positions, tables, kv_len: int, scale: float, window: int = 0):
    """One query per sequence: q [B, H, D] over each sequence's positions max(0, pos-window+1)..pos (positions
    [B] on the device) in paged caches [blocks, KVH, BS, D] through block tables [B, max_blocks] (int32);
    kv_len bounds every sequence's length (the plan's bucket). Returns [B, H*D]."""
    bsz, heads, d = q.shape
    _, kvh, bs, _ = k_cache.shape
    g = heads // kvh
    gp = max(16, triton.next_power_of_2(g))
    tile, chunk, splits = paged_attention_plan(kv_len, bsz, kvh, d, bs, _sms(q.device))
    rows = bsz * kvh * splits * gp
    po = torch.empty((rows, d), dtype=torch.float32, device=q.device)
    pm = torch.empty((rows,), dtype=torch.float32, device=q.device)
    pl = torch.empty_like(pm)
    _paged_attn_split[(bsz, kvh, splits)](q, k_cache, v_cache, positions, tables, po, pm, pl, scale, window, chunk,
                                          tables.stride(0), kvh, bs, G=g, GP=gp, D=d, BLOCK=tile, SPLITS=splits,
                                          num_warps=4, **_pdl(q.device))
    out = torch.empty((bsz, heads * d), dtype=q.dtype, device=q.device)
    _attn_combine[(bsz * heads,)](po, pm, pl, out, G=g, GP=gp, D=d, SPLITS=splits,
                                  SP=triton.next_power_of_2(splits), num_warps=1 if d <= 128 else 2,
                                  **_pdl(q.device))
    return out


@triton.jit
def _act_mul(gu_ptr, out_ptr, I, GELU: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    _pdl_enter(PDL)
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < I
    dt = out_ptr.dtype.element_ty
    g = tl.load(gu_ptr + t * 2 * I + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + t * 2 * I + I + offs, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        y = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        a = 0.5 * g * (2.0 - 2.0 / (tl.exp(2.0 * y) + 1.0))  # 1 + tanh(y)
    else:
        a = g / (1.0 + tl.exp(-g))
    tl.store(out_ptr + t * I + offs, (a.to(dt).to(tl.float32) * u).to(dt), mask=mask)


def act_mul(gate_up, gelu: bool):
    """[M, 2I] (gate | up) -> act(gate) * up, [M, I]."""
    m, two_i = gate_up.shape
    i = two_i // 2
    out = torch.empty((m, i), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _act_mul[(m, triton.cdiv(i, block))](gate_up, out, i, GELU=gelu, BLOCK=block, num_warps=4,
                                        **_pdl(gate_up.device))
    return out


@functools.lru_cache(maxsize=8)
def _sms(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
