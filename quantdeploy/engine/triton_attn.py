"""A batch-1 decode step's whole attention in one Triton kernel: rope (and q/k norm) of the new token, its k and v
into the cache, split-K attention over the cache, and the combine of the splits.

triton_ops does the same in three kernels (rope_cache, _attn_split, _attn_combine). In a batch-1 step each kernel
boundary is a dependent wait of about a microsecond, all latency; this kernel has none:
- every split program rotates its q heads itself (a few hundred values), so there is no rope kernel before it;
- the new k and v are used from registers in the split that holds the position (and written to the cache for
  the next steps), so no program waits for the cache write;
- the last split program of a kv head to finish (an atomic counter per kv head, reset by that program) combines
  the splits, so there is no combine kernel after it. A split beyond the position (or before a sliding window)
  does nothing at all.
QUANTDEPLOY_ATTN_FUSED=0 goes back to the three kernels (for A/B measurements). Rounding is the three kernels'
(the same q, k and output bits); tests/interp/fused_ops_check.py compares them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .triton_ops import _attn_combine, _pdl, _pdl_enter, _sms, attention_plan


def enabled() -> bool:
    return os.environ.get("QUANTDEPLOY_ATTN_FUSED", "1") != "0"


@triton.jit
def _rotate(x, xr, sign, c, s, w, wr, eps, D: tl.constexpr, QK_NORM: tl.constexpr, GEMMA: tl.constexpr,
            dt: tl.constexpr):
    """Rope of rows x [.., D] (xr: each element's partner d ^ HALF, sign: -1 in the first half), after the q/k
    norm (weights w, wr at d and its partner), rounded as rope_cache rounds."""
    if QK_NORM:
        inv = tl.rsqrt(tl.sum(x * x, -1, keep_dims=True) / D + eps)
        if GEMMA:
            x = (x * inv * (1.0 + w)).to(dt).to(tl.float32)
            xr = (xr * inv * (1.0 + wr)).to(dt).to(tl.float32)
        else:
            x = ((x * inv).to(dt).to(tl.float32) * w).to(dt).to(tl.float32)
            xr = ((xr * inv).to(dt).to(tl.float32) * wr).to(dt).to(tl.float32)
    return ((x * c).to(dt).to(tl.float32) + (sign * xr * s).to(dt).to(tl.float32)).to(dt)


@triton.jit
def _attn_decode(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, kc_ptr, vc_ptr, po_ptr, pm_ptr, pl_ptr,
                 lock_ptr, out_ptr, H, KVH, max_len, chunk, window, scale, eps,
                 G: tl.constexpr, GP: tl.constexpr, GQ: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
                 SPLITS: tl.constexpr, SP: tl.constexpr, QK_NORM: tl.constexpr, GEMMA: tl.constexpr,
                 COMBINE: tl.constexpr, PDL: tl.constexpr):
    _pdl_enter(PDL)
    kvh = tl.program_id(0)
    sp = tl.program_id(1)
    pos = tl.load(pos_ptr).to(tl.int32)
    s_lo = pos * 0
    if window > 0:
        s_lo = tl.maximum(pos - window + 1, 0) // chunk
    s_hi = pos // chunk
    dt: tl.constexpr = kc_ptr.dtype.element_ty
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    row = (kvh * SPLITS + sp) * GP + g
    if (sp >= s_lo) & (sp <= s_hi):
        gm = (g < G)[:, None]
        pd = (d + D // 2) % D  # each element's rope partner
        sign = tl.where(d < D // 2, -1.0, 1.0)
        c = tl.load(cos_ptr + pos * D + d % (D // 2)).to(tl.float32)
        s = tl.load(sin_ptr + pos * D + d % (D // 2)).to(tl.float32)
        w = c  # unused without the q/k norm
        wr = c
        kw = c
        kwr = c
        if QK_NORM:
            w = tl.load(qw_ptr + d).to(tl.float32)
            wr = tl.load(qw_ptr + pd).to(tl.float32)
            kw = tl.load(kw_ptr + d).to(tl.float32)
            kwr = tl.load(kw_ptr + pd).to(tl.float32)
        qrow = qkv_ptr + (kvh * G + g)[:, None] * D
        q = _rotate(tl.load(qrow + d[None, :], mask=gm, other=0.0).to(tl.float32),
                    tl.load(qrow + pd[None, :], mask=gm, other=0.0).to(tl.float32),
                    sign, c, s, w, wr, eps, D, QK_NORM, GEMMA, dt)
        krow = qkv_ptr + (H + kvh) * D
        k_new = _rotate(tl.load(krow + d).to(tl.float32), tl.load(krow + pd).to(tl.float32),
                        sign, c, s, kw, kwr, eps, D, QK_NORM, GEMMA, dt)
        v_new = tl.load(qkv_ptr + (H + KVH + kvh) * D + d)
        base = kvh * max_len * D
        mine = sp == s_hi  # this split holds the position: it writes the new k, v for the steps after this one
        tl.store(kc_ptr + base + pos * D + d, k_new, mask=(d < D) & mine)
        tl.store(vc_ptr + base + pos * D + d, v_new, mask=(d < D) & mine)

        lo = sp * chunk
        hi = tl.minimum(lo + chunk, pos + 1)
        if window > 0:
            lo = tl.maximum(lo, pos - window + 1)
        m_i = tl.full((GP,), float("-inf"), tl.float32)
        l_i = tl.zeros((GP,), tl.float32)
        acc = tl.zeros((GP, D), tl.float32)
        for start in range(lo, hi, BLOCK):
            j = start + tl.arange(0, BLOCK)
            jm = j < hi
            now = (j == pos)[:, None]  # the new token's slot: from registers, not the cache being written
            k = tl.load(kc_ptr + base + j[:, None] * D + d[None, :], mask=(jm & (j != pos))[:, None], other=0.0)
            k = tl.where(now, k_new[None, :], k)
            sc = tl.dot(q, tl.trans(k)) * scale
            sc = tl.where(jm[None, :], sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 1))
            p = tl.exp(sc - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            v = tl.load(vc_ptr + base + j[:, None] * D + d[None, :], mask=(jm & (j != pos))[:, None], other=0.0)
            v = tl.where(now, v_new[None, :], v)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        if COMBINE and s_lo == s_hi:  # one split: it is the result
            tl.store(out_ptr + (kvh * G + g)[:, None] * D + d[None, :], (acc / l_i[:, None]).to(dt), mask=gm)
        else:
            tl.store(po_ptr + row[:, None] * D + d[None, :], acc)
            tl.store(pm_ptr + row, m_i)
            tl.store(pl_ptr + row, l_i)
            if COMBINE:
                tl.debug_barrier()  # every thread's partials are written before the count says so (release)
                done = tl.atomic_add(lock_ptr + kvh, 1, sem="acq_rel", scope="gpu")
                if done == s_hi - s_lo:  # the last split of this kv head: combine them all
                    _combine(po_ptr, pm_ptr, pl_ptr, out_ptr, kvh, s_lo, s_hi, G, GP, GQ, D, SPLITS, SP, dt)
                    tl.store(lock_ptr + kvh, 0)  # ready for the next (stream-ordered) launch
    elif not COMBINE:  # the combine kernel reads every split: an empty one weighs nothing
        tl.store(po_ptr + row[:, None] * D + d[None, :], tl.zeros((GP, D), tl.float32))
        tl.store(pm_ptr + row, tl.full((GP,), float("-inf"), tl.float32))
        tl.store(pl_ptr + row, tl.zeros((GP,), tl.float32))


@triton.jit
def _combine(po_ptr, pm_ptr, pl_ptr, out_ptr, kvh, s_lo, s_hi, G: tl.constexpr, GP: tl.constexpr,
             GQ: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr, SP: tl.constexpr, dt: tl.constexpr):
    """All G heads of kv head kvh from splits s_lo..s_hi, in one round of loads (L2: other programs wrote them)."""
    ss = tl.arange(0, SP)
    gg = tl.arange(0, GQ)
    d = tl.arange(0, D)
    rows = (kvh * SPLITS + ss[:, None]) * GP + gg[None, :]
    msk = ((ss >= s_lo) & (ss <= s_hi))[:, None] & (gg < G)[None, :]
    m = tl.load(pm_ptr + rows, mask=msk, other=float("-inf"), cache_modifier=".cg")
    ls = tl.load(pl_ptr + rows, mask=msk, other=0.0, cache_modifier=".cg")
    a = tl.load(po_ptr + rows[:, :, None] * D + d[None, None, :], mask=msk[:, :, None], other=0.0,
                cache_modifier=".cg")
    mx = tl.max(m, 0)
    wt = tl.where(m > float("-inf"), tl.exp(m - mx[None, :]), 0.0)
    o = tl.sum(a * wt[:, :, None], 0) / tl.sum(ls * wt, 0)[:, None]
    tl.store(out_ptr + (kvh * G + gg)[:, None] * D + d[None, :], o.to(dt), mask=(gg < G)[:, None])


_LOCKS: dict = {}


def locks(device: torch.device, n: int) -> torch.Tensor:
    """The per-kv-head counters (zero between launches). Made outside any CUDA-graph capture: the engine's
    warm-up runs the step eagerly first."""
    key = (str(device), n)
    if key not in _LOCKS:
        _LOCKS[key] = torch.zeros(n, dtype=torch.int32, device=device)
    return _LOCKS[key]


def rope_attention(qkv, pos, cos, sin, k_cache, v_cache, heads: int, kv_heads: int, eps: float, kv_len: int,
                   scale: float, window: int = 0, q_norm=None, k_norm=None, gemma: bool = False):
    """qkv [1, (H + 2 KVH) D] of the token at pos [1] (on the device) -> attention output [1, H*D]; its k and v
    are written into the caches [KVH, max_len, D]. Equal to rope_cache + decode_attention."""
    kvh, max_len, d = k_cache.shape
    g = heads // kvh
    gp = max(16, triton.next_power_of_2(g))
    block, chunk, splits = attention_plan(kv_len, kvh, d, _sms(qkv.device))
    po = torch.empty((kvh * splits * gp, d), dtype=torch.float32, device=qkv.device)
    pm = torch.empty((kvh * splits * gp,), dtype=torch.float32, device=qkv.device)
    pl = torch.empty_like(pm)
    out = torch.empty((1, heads * d), dtype=k_cache.dtype, device=qkv.device)
    combine = os.environ.get("QUANTDEPLOY_ATTN_FUSED", "1") != "2"  # 2: the combine in its own kernel (A/B)
    _attn_decode[(kvh, splits)](
        qkv, pos, cos, sin, q_norm if q_norm is not None else cos, k_norm if k_norm is not None else cos,
        k_cache, v_cache, po, pm, pl, locks(qkv.device, kvh), out, heads, kvh, max_len, chunk, window, scale, eps,
        G=g, GP=gp, GQ=triton.next_power_of_2(g), D=d, BLOCK=block, SPLITS=splits, SP=triton.next_power_of_2(splits),
        QK_NORM=q_norm is not None, GEMMA=gemma, COMBINE=combine, num_warps=4, **_pdl(qkv.device))
    if not combine:
        _attn_combine[(heads,)](po, pm, pl, out, G=g, GP=gp, D=d, SPLITS=splits, SP=triton.next_power_of_2(splits),
                                num_warps=1 if d <= 128 else 2, **_pdl(qkv.device))
    return out
