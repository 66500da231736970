"""The "NK" weight layout that quantdeploy's CUDA GEMV (cuda_gemv.py) and the batched W4A16 GEMM (triton_gemm.py)
both read: one copy of the weights for one token and for a batch.

Per output row n, K contiguous, so that a lane streams 16-byte loads:
  q     int32 [N, K/8], word j holds k = 8j..8j+7, k offset i in nibble SLOT[i] (one AND/OR turns them into fp16
        pairs; see kernels/w4a16.cu);
  meta  the groups' fp16 scales and integer zero points, in the smallest of the MetaForm forms the checkpoint
        allows: at batch 1 every byte read is time.
Repacked once at load from a QuantWeight (quant.py); reference() is the dense matrix the kernels must compute,
written with torch ops so that the CPU tests check the layout.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

SLOT = (0, 4, 1, 5, 2, 6, 3, 7)  # k offset i within a word lives in nibble SLOT[i]


class MetaForm(enum.IntEnum):
    """How an NKWeight stores its groups' scales and zero points. The value is the kernels' template argument Z
    (kernels/w4a16.cu names the same constants; triton_gemm.py's FORM), but for SCALES_ONLY, whose Z is the weight's
    one zero point (>= 0)."""

    SCALES_ONLY = 0
    """Every zero point of the weight is one value (GPTQ sym=True: 8) and N % 8 == 0: the fp16 scales alone, in
    blocks of 8 rows, int16 [N/8, G, 8] flattened (a warp's rows of one group are one vector load); 2 bytes a group."""
    ZERO_BYTES = -5
    """Per row its G fp16 scales, then its G zero points (0..15) a byte each, int16 [N, G + G/2] (G even: AWQ,
    asymmetric GPTQ); 3 bytes a group."""
    WORDS = -1
    """A scale | zero << 16 word per group, int32 [N, G]: any weight (an odd group count); 4 bytes a group."""


@dataclass
class NKWeight:
    q: torch.Tensor  # int32 [N, K/8]
    meta: torch.Tensor  # laid out as `form` says
    group_size: int
    perm: torch.Tensor | None = None
    split: int = 0  # > 0: rows interleaved (gate j, up j), the up rows starting at `split` in the original order
    form: MetaForm = MetaForm.WORDS
    zero_point: int = 0  # SCALES_ONLY: the weight's one zero point

    @property
    def z(self) -> int:
        """The kernels' template argument Z for this weight's meta (MetaForm)."""
        return self.zero_point if self.form is MetaForm.SCALES_ONLY else int(self.form)

    @property
    def n(self) -> int:
        return self.q.shape[0]

    @property
    def k(self) -> int:
        return self.q.shape[1] * 8

    def nbytes(self) -> int:
        return self.q.numel() * 4 + self.meta.numel() * self.meta.element_size()


def supports(w) -> str | None:
    """Why a QuantWeight cannot take this layout, or None."""
    g = w.group_size
    if w.qzeros is None:
        return "the CUDA GEMV needs integer zero points (qzeros)"
    if w.k % 32 or g % 32 or (g // 32) & (g // 32 - 1) or w.k % g:
        return f"group size {g} / K {w.k}: the CUDA GEMV needs K and the group size in 32-multiples (powers of 2)"
    return None


def unpack_zeros(qzeros: torch.Tensor, n: int) -> torch.Tensor:
    """int32 [G, N/8] zero points packed along N (sequential order) -> int32 [G, N]."""
    from .quant import unpack_rows

    return unpack_rows(qzeros)[:, :n]


def _int16(bits16: torch.Tensor) -> torch.Tensor:
    """Values 0..65535 as the int16 with those bits."""
    return torch.where(bits16 >= 2 ** 15, bits16 - 2 ** 16, bits16).to(torch.int16)


def meta_layout(scales: torch.Tensor, zeros: torch.Tensor, words: bool = False
                ) -> tuple[torch.Tensor, MetaForm, int]:
    """(meta, form, zero point) from fp16 scales and integer zero points [G, N]: SCALES_ONLY when all zero points are
    one value and N % 8 == 0, ZERO_BYTES when they fit a byte and G is even, else (or with `words`, which the GPU
    tests compare the other forms with) WORDS."""
    bits = scales.to(torch.float16).view(torch.int16).t()  # [N, G]
    z = zeros.t().to(torch.int32)
    n, g = bits.shape
    if not words:
        first = int(z.flatten()[0])
        if n % 8 == 0 and bool((z == first).all()):
            return bits.reshape(n // 8, 8, g).transpose(1, 2).flatten().contiguous(), MetaForm.SCALES_ONLY, first
        if int(z.max()) <= 15 and g % 2 == 0:
            packed = z[:, 0::2] | (z[:, 1::2] << 8)  # group g's byte at byte g (little-endian int16 pairs)
            return torch.cat([bits, _int16(packed)], 1).contiguous(), MetaForm.ZERO_BYTES, 0
    return ((bits.to(torch.int32) & 0xFFFF) | (z << 16)).contiguous(), MetaForm.WORDS, 0


def repack(w, cols: int = 4096, interleave: bool = False, words: bool = False) -> NKWeight:
    """QuantWeight (qweight [K/8, N] packed along K) -> NKWeight, `cols` output rows at a time (small temporaries).
    interleave: a gate|up weight whose rows become gate 0, up 0, gate 1, ... (for the GEMV with the activation).
    The group scales and zero points take 2, 3 or 4 bytes per group (meta_layout; 4 with `words`)."""
    why = supports(w)
    if why:
        raise ValueError(why)
    scales, zeros = w.scales, unpack_zeros(w.qzeros, w.n)
    if interleave:
        half = w.n // 2
        rows = torch.stack([torch.arange(half), torch.arange(half) + half], 1).flatten().to(w.qweight.device)
        scales, zeros = scales[:, rows], zeros[:, rows]
    meta, form, zero_point = meta_layout(scales, zeros, words)
    parts = []
    for c in range(0, w.n, cols):
        t = w.qweight[:, c:c + cols].t().to(torch.int64)  # [n_c, K/8]
        out = torch.zeros_like(t)
        for i in range(8):
            out |= ((t >> (4 * i)) & 0xF) << (4 * SLOT[i])
        parts.append(torch.where(out >= 2 ** 31, out - 2 ** 32, out).to(torch.int32))
    q = torch.cat(parts)
    if not interleave:
        return NKWeight(q.contiguous(), meta, w.group_size, w.perm, form=form, zero_point=zero_point)
    return NKWeight(q[rows].contiguous(), meta, w.group_size, w.perm, split=half, form=form, zero_point=zero_point)


def reference(w: NKWeight) -> torch.Tensor:
    """Dense fp32 [N, K] from the NK layout (columns in the permuted order, like the kernels read x): what the
    kernels must compute."""
    shifts = torch.tensor([4 * s for s in SLOT], dtype=torch.int64, device=w.q.device)
    q = ((w.q.to(torch.int64).unsqueeze(-1) >> shifts) & 0xF).reshape(w.n, w.k).float()
    groups = w.k // w.group_size
    if w.form is MetaForm.SCALES_ONLY:
        scale = w.meta.view(torch.float16).reshape(w.n // 8, groups, 8).transpose(1, 2).reshape(w.n, groups).float()
        zero = torch.full_like(scale, float(w.zero_point))
    elif w.form is MetaForm.ZERO_BYTES:
        scale = w.meta[:, :groups].contiguous().view(torch.float16).float()
        zero = w.meta[:, groups:].contiguous().view(torch.uint8)[:, :groups].float()
    else:
        meta = w.meta.to(torch.int64) & 0xFFFFFFFF
        scale = (meta & 0xFFFF).to(torch.int16).view(torch.float16).float()
        zero = (meta >> 16).float()
    g = torch.arange(w.k, device=w.q.device) // w.group_size
    return (q - zero[:, g]) * scale[:, g]
