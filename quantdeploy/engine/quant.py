"""Quantized weights in one layout for the fast engine, read straight from GPTQ / AWQ safetensors.

Layout (GPTQ-like, packed along K): qweight int32 [K/8, N] with value k in bits 4*(k%8) of row k//8; scales
[G, N] and szeros [G, N] (zero point times scale) in the compute dtype, G = K / group_size, so that
W[k, n] = q[k, n] * scales[g, n] - szeros[g, n] and y = x @ W. AWQ (packed along N, interleaved order) is
unpacked and repacked at load; GPTQ act-order (g_idx) becomes a permutation of x.
"""

from __future__ import annotations

from dataclasses import dataclass

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


@dataclass
class QuantWeight:
    qweight: "object"  # torch.int32 [K/8, N]
    scales: "object"  # [G, N]
    szeros: "object"  # [G, N]
    group_size: int
    perm: "object | None" = None  # int64 [K]: x[perm] before the product (act-order)
    qzeros: "object | None" = None  # int32 [G, N/8]: true zero points packed along N (GPTQ v2), for the NK layout

    @property
    def k(self) -> int:
        return self.qweight.shape[0] * 8

    @property
    def n(self) -> int:
        return self.qweight.shape[1]

    def to(self, device, dtype) -> "QuantWeight":
        return QuantWeight(self.qweight.to(device), self.scales.to(device, dtype), self.szeros.to(device, dtype),
                           self.group_size, None if self.perm is None else self.perm.to(device),
                           None if self.qzeros is None else self.qzeros.to(device))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.szeros))


def unpack_rows(packed, order=None):
    """int32 [R, C] -> int32 [R, C*8]: 8 nibbles per word along the last dim (AWQ order if given)."""
    import torch

    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int32)
    vals = (packed.unsqueeze(-1) >> shifts) & 0xF  # [R, C, 8]: nibble i of each word
    if order is not None:
        inv = [0] * 8
        for i, src in enumerate(order):
            inv[src] = i  # nibble i holds column src
        vals = vals[..., inv]
    return vals.reshape(packed.shape[0], -1)


def pack_cols_k(q):
    """int32 [K, N] of 4-bit values -> int32 [K/8, N] packed along K."""
    import torch

    k, n = q.shape
    q = q.reshape(k // 8, 8, n).to(torch.int64)
    out = torch.zeros(k // 8, n, dtype=torch.int64, device=q.device)
    for i in range(8):
        out |= (q[:, i, :] & 0xF) << (4 * i)
    out = torch.where(out >= 2 ** 31, out - 2 ** 32, out)
    return out.to(torch.int32)


def from_gptq(qweight, qzeros, scales, g_idx, group_size: int, zero_offset: int) -> QuantWeight:
    """GPTQ: qweight [K/8, N] along K; qzeros [G, N/8] along N; zero = stored + zero_offset (1 for v1 files)."""
    import torch

    k = qweight.shape[0] * 8
    group_size = group_size if group_size > 0 else k  # -1: one group per output channel
    izeros = unpack_rows(qzeros) + zero_offset  # [G, N]
    zeros = izeros.float()
    sc = scales.float()
    perm = None
    if g_idx is not None:
        g_idx = g_idx.to(torch.int64)
        trivial = torch.arange(k, dtype=torch.int64, device=g_idx.device) // group_size
        if not torch.equal(g_idx, trivial):
            counts = torch.bincount(g_idx)
            if not bool((counts == group_size).all()):
                raise ValueError("g_idx groups of unequal size are not supported by the fast engine")
            perm = torch.argsort(g_idx, stable=True)
            q = unpack_rows(qweight.t().contiguous()).t()  # [K, N]
            qweight = pack_cols_k(q[perm].contiguous())
    return QuantWeight(qweight.contiguous(), sc, zeros * sc, group_size, perm, _pack_n(izeros))


def from_awq(qweight, qzeros, scales, group_size: int) -> QuantWeight:
    """AWQ GEMM: qweight [K, N/8] and qzeros [G, N/8] packed along N in AWQ order; W = (q - z) * s."""
    import torch

    # repacked 1024 rows at a time: the int64 intermediates of a whole 4096 x 14336 weight would be ~1 GB
    packed = torch.cat([pack_cols_k(unpack_rows(qweight[r:r + 1024], AWQ_ORDER))
                        for r in range(0, qweight.shape[0], 1024)])
    izeros = unpack_rows(qzeros, AWQ_ORDER)
    sc = scales.float()
    group_size = group_size if group_size > 0 else qweight.shape[0]
    return QuantWeight(packed, sc, izeros.float() * sc, group_size, None, _pack_n(izeros))


def from_awq_gemv(qweight, qzeros, scales, group_size: int) -> QuantWeight:
    """AWQ GEMV: qweight [N, K/8] packed along K in sequential order; qzeros [N, >= G/8] and scales [N, >= G]
    along the groups (padded); W = (q - z) * s."""
    k = qweight.shape[1] * 8
    group_size = group_size if group_size > 0 else k
    g = k // group_size
    q = unpack_rows(qweight)  # [N, K]
    packed = pack_cols_k(q.t().contiguous())
    izeros = unpack_rows(qzeros)[:, :g].t().contiguous()  # [G, N]
    sc = scales[:, :g].t().float().contiguous()
    return QuantWeight(packed, sc, izeros.float() * sc, group_size, None, _pack_n(izeros))


def _pack_n(z):
    """int [G, N] of 4-bit values -> int32 [G, N/8] packed along N in sequential order (GPTQ qzeros layout)."""
    return pack_cols_k(z.t().contiguous()).t().contiguous()


def dequantize(w: QuantWeight, dtype=None):
    """[K, N] dense weight (rows in x's order): the reference the kernels are checked against."""
    import torch

    q = unpack_rows(w.qweight.t().contiguous()).t().float()  # [K, N], rows in permuted order
    g = torch.arange(w.k, device=q.device) // w.group_size
    dense = q * w.scales.float()[g] - w.szeros.float()[g]
    if w.perm is not None:
        inv = torch.empty_like(w.perm)
        inv[w.perm] = torch.arange(w.k, device=w.perm.device)
        dense = dense[inv]
    return dense.to(dtype or w.scales.dtype)


def concat_n(ws: list[QuantWeight]) -> QuantWeight:
    """Fuse projections that read the same input (q|k|v, gate|up) into one weight along N."""
    import torch

    assert len({w.group_size for w in ws}) == 1 and len({w.k for w in ws}) == 1
    perms = [w.perm for w in ws]
    if any(p is not None for p in perms) and not all(p is not None and torch.equal(p, perms[0]) for p in perms):
        raise ValueError("cannot fuse act-order weights with different permutations")
    zs = None if any(w.qzeros is None for w in ws) else torch.cat([w.qzeros for w in ws], 1)
    return QuantWeight(torch.cat([w.qweight for w in ws], 1), torch.cat([w.scales for w in ws], 1),
                       torch.cat([w.szeros for w in ws], 1), ws[0].group_size, perms[0], zs)


def unpack_bits(packed, bits: int):
    """int32 [R, C] -> int32 [R, C * 32 / bits]: the values packed low bits first along the last dim."""
    import torch

    shifts = torch.arange(0, 32, bits, device=packed.device, dtype=torch.int32)
    return ((packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(packed.shape[0], -1)


def dequantize_gptq(qweight, qzeros, scales, g_idx, bits: int, group_size: int, zero_offset: int):
    """Any GPTQ weight of 2, 4 or 8 bits -> dense float32 [K, N] (the engine's kernels take 4 bits; this is for
    weights it runs dense, such as a quantized lm_head, and for references)."""
    import torch

    if 32 % bits:
        raise ValueError(f"{bits}-bit GPTQ packing is not supported")
    q = unpack_bits(qweight.t().contiguous(), bits).t()  # [K, N]
    k = q.shape[0]
    group_size = group_size if group_size > 0 else k
    z = unpack_bits(qzeros, bits)[:, :q.shape[1]] + zero_offset  # [G, N]
    g = g_idx.long() if g_idx is not None else torch.arange(k, device=q.device) // group_size
    return (q.float() - z.float()[g]) * scales.float()[g]
