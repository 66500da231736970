"""The few pieces of math that differ between the fast engine's architectures (arch.py says which applies), written
for tensors of any leading shape so the single-sequence and the batched paths share them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, gemma: bool) -> torch.Tensor:
    """RMSNorm as transformers rounds it: Gemma's x * (1 + w) in float32, Llama's w * x in the model dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if gemma:
        return (xf * (1.0 + w.float())).to(x.dtype)
    return w * xf.to(x.dtype)


def act(g: torch.Tensor, kind: str) -> torch.Tensor:
    return F.gelu(g, approximate="tanh") if kind == "gelu_tanh" else F.silu(g)


def gate_up_act(gate_up: torch.Tensor, kind: str) -> torch.Tensor:
    """act(gate) * up of a [gate | up] projection, in its dtype: in fp16 it rounds as the GEMVs that fuse the
    activation do (the projections, act and the product each to fp16)."""
    g, u = gate_up.chunk(2, -1)
    return act(g, kind) * u


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma-2's soft-capping: cap * tanh(x / cap)."""
    return x if cap is None else torch.tanh(x / cap) * cap


def attention(q, k, v, mask, causal: bool, scale: float, cap: float | None, gqa: bool) -> torch.Tensor:
    """q [B, H, M, D], k/v [B, KVH, N, D]; mask bool [M, N] (True = attend) or causal. With a soft cap (Gemma-2)
    the scores are capped before the mask, in the order of transformers' eager attention; otherwise SDPA."""
    if cap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              enable_gqa=gqa)
    if gqa:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = softcap(q @ k.transpose(-1, -2) * scale, cap)
    if causal:
        m, n = s.shape[-2:]
        mask = torch.ones(m, n, dtype=torch.bool, device=s.device).tril(n - m)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
    return p @ v
