"""A batch-1 GEMV that reads Marlin's weight layout (kernels/marlin_gemv.cu), so that a weight Marlin runs in batches
can drop the engine's own copy.

Marlin's layout (gptqmodel's gptq_marlin_repack, marlin_permute_scales, marlin_zero_points; groups of 32-128):
  q   int32 [K/16, 2N]: per 16 x 64 tile (k-tile kt, super tile st) 32 lanes x 4 words, lane l's 16 bytes the uint4
      at kt * N/2 + st * 32 + l. With c = l // 4 and r0 = 2 (l % 4), word j holds the columns st*64 + 16j + c + 8b
      (b = 0, 1; the lane's column m = 2j + b is column st*64 + c + 8m) at the rows r0, r0 + 1, r0 + 8, r0 + 9 of
      the tile: nibbles (t, t + 4) are rows (r0 + 8 (t % 2), + 1) of column b = t // 2. So a lane holds 4 rows of 8
      columns, and nibbles t and t + 4 are a k pair that one AND/OR turns into a half2, as in the NK GEMV.
  s   fp16 [G, N]: position st*64 + 8c + m holds column st*64 + c + 8m's scale: a lane's 8 scales in one 16 bytes.
  zp  int32 [G, N/8] (or none, every zero point 8): word st*8 + c holds the lane's 8 zero points, column m's in
      nibble (m >> 1) + 4 (m & 1).
The 4 lanes of one c hold a column's 16 rows per tile; two shuffles sum them. reference() decodes the layout with
exactly that lane arithmetic, on torch ops, so that the CPU tests check it; repack_reference() is the packing
gptq_marlin_repack does (the GPU test checks the two agree).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

TILE_K, TILE_N = 16, 64


@functools.lru_cache(maxsize=1)
def _lane_map() -> tuple[torch.Tensor, torch.Tensor]:
    """(row in the tile, column in the super tile) of (lane, word, nibble), each int64 [32, 4, 8]."""
    rows = torch.empty(32, 4, 8, dtype=torch.int64)
    cols = torch.empty(32, 4, 8, dtype=torch.int64)
    for lane in range(32):
        c, r0 = lane // 4, 2 * (lane % 4)
        for j in range(4):
            for i in range(8):
                t, second = i % 4, i // 4
                rows[lane, j, i] = r0 + 8 * (t % 2) + second
                cols[lane, j, i] = 16 * j + c + 8 * (t // 2)
    return rows, cols


def repack_reference(qint: torch.Tensor) -> torch.Tensor:
    """int [K, N] 4-bit values -> int32 [K/16, 2N] in Marlin's layout (what gptq_marlin_repack makes of them), on
    the values' device."""
    k, n = qint.shape
    rows, cols = (t.to(qint.device) for t in _lane_map())
    tiles = qint.to(torch.int64).reshape(k // TILE_K, TILE_K, n // TILE_N, TILE_N).transpose(1, 2)
    vals = tiles[:, :, rows, cols]  # [K/16, N/64, 32, 4, 8]
    words = torch.zeros(vals.shape[:-1], dtype=torch.int64, device=qint.device)
    for i in range(8):
        words |= (vals[..., i] & 0xF) << (4 * i)
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)
    return words.reshape(k // TILE_K, 2 * n)


def repack_qweight(qweight: torch.Tensor) -> torch.Tensor:
    """A QuantWeight's qweight (int32 [K/8, N], packed along K) in Marlin's layout, by repack_reference."""
    from .quant import unpack_rows

    return repack_reference(unpack_rows(qweight.t().contiguous()).t())


def reference(q: torch.Tensor, s: torch.Tensor, zp: torch.Tensor | None, k: int, n: int,
              group_size: int) -> torch.Tensor:
    """Dense fp32 [K, N] from Marlin's layout (zp None: every zero point 8), read the way the kernel reads it."""
    rows, cols = _lane_map()
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    words = q.to(torch.int64).reshape(k // TILE_K, n // TILE_N, 32, 4) & 0xFFFFFFFF
    vals = (words.unsqueeze(-1) >> shifts) & 0xF  # [K/16, N/64, 32, 4, 8]
    dense = torch.empty(k // TILE_K, n // TILE_N, TILE_K, TILE_N, dtype=torch.int64)
    dense[:, :, rows, cols] = vals
    qd = dense.transpose(1, 2).reshape(k, n).float()
    groups = k // group_size
    m = torch.arange(8)
    c = torch.arange(8)
    # column st*64 + c + 8m <- position st*64 + 8c + m (scales), nibble (m >> 1) + 4 (m & 1) of word st*8 + c (zp)
    col = (c.view(8, 1) + 8 * m.view(1, 8)).flatten()  # [c, m] -> column in the super tile
    pos = (8 * c.view(8, 1) + m.view(1, 8)).flatten()
    scale = torch.empty(groups, n)
    s4 = s.float().reshape(groups, n // TILE_N, TILE_N)
    scale.view(groups, n // TILE_N, TILE_N)[:, :, col] = s4[:, :, pos]
    if zp is None:
        zero = torch.full((groups, n), 8.0)
    else:
        zw = zp.to(torch.int64).reshape(groups, n // TILE_N, 8) & 0xFFFFFFFF  # [g, st, c]
        nib = ((m >> 1) + 4 * (m & 1)).view(1, 1, 1, 8)
        z = (zw.unsqueeze(-1) >> (4 * nib)) & 0xF  # [g, st, c, m]
        zero = torch.empty(groups, n)
        zero.view(groups, n // TILE_N, TILE_N)[:, :, col] = z.reshape(groups, n // TILE_N, TILE_N).float()
    g = torch.arange(k) // group_size
    return (qd - zero[g]) * scale[g]


# --- the kernel ----------------------------------------------------------------------------------------------
SOURCE = Path(__file__).with_name("kernels") / "marlin_gemv.cu"
MARLIN_ZP = -2  # the kernel's Z for zero points in Marlin's packed words (else Z >= 0: every zero point Z)
ACTS = {"silu": 1, "gelu_tanh": 2}
SPLITS = (1, 2, 4, 7, 8, 14, 16, 28, 32)  # warps per block splitting K (32 at most: 1,024 threads)
DEFAULT_SPLITS = (1, 2, 4, 8, 16)  # past 16 warps a block the registers run out and spill (H100 record)
TILES_PER_STEP = 8  # 16-row tiles a lane loads per step: 128 bytes of weights in flight per super tile
# The default split aims at this many warps per multiprocessor: on an H100 the fastest split was 4 for gate|up (224
# blocks: 6.8 warps per SM) and 16 for down with zero points (64 blocks: 7.8; with the scales alone 28 was),
# benchmarks/results/gpu/h100-80gb-hbm3-marlin-gemv-ab.json
WARPS_PER_SM = 6


def fits(w) -> str | None:
    """Why the GEMV cannot read Marlin's copy of this QuantWeight (marlin.fits holds too), or None: it takes groups
    of 32 to 128 rows, not one group per output channel (Marlin's scales are permuted differently there)."""
    if w.group_size not in (32, 64, 128) or w.group_size >= w.k:
        return f"group size {w.group_size} (the Marlin-layout GEMV takes groups of 32, 64 or 128 within K)"
    return None


def kernel_name(group: int, split: int, act: int, z: int, ks: int = 1, steps_of: int = TILES_PER_STEP) -> str:
    """The kernel's template instance: tiles per group, groups per step, warps per block, super tiles per block (2
    with an activation: gate and up), the activation, the zero point form, and (ks > 1) blocks per super tile."""
    gt = group // TILE_K
    gp = max(1, steps_of // gt)
    return f"qd_marlin_gemv<{gt}, {gp}, {split}, {2 if act else 1}, {act}, {z}{f', {ks}' if ks > 1 else ''}>"


def legal_splits(k: int, group: int, ks: int = 1, steps_of: int = TILES_PER_STEP) -> list[int]:
    """Warps per block that, with ks blocks per super tile, divide K's tiles into whole steps (of `steps_of` tiles,
    at least one group); with ks > 1 at least 2 warps (the last block adds a column per thread)."""
    step = max(steps_of, group // TILE_K)
    return [s for s in SPLITS if (k // TILE_K) % (s * ks * step) == 0 and (ks == 1 or s >= 2)]


def default_split(k: int, n: int, group: int, act: bool, sms: int) -> int:
    """Warps per block splitting K (one block per super tile): of DEFAULT_SPLITS, the fewest that give every
    multiprocessor WARPS_PER_SM warps (fewer warps per block: longer slices, less to add up), else the most."""
    splits = [s for s in legal_splits(k, group) if s in DEFAULT_SPLITS]
    if not splits:
        raise ValueError(f"K = {k} is not a multiple of {TILE_K * max(TILE_K // 2, group // TILE_K)}")
    blocks = n // TILE_N // (2 if act else 1)
    return next((s for s in splits if blocks * s >= WARPS_PER_SM * sms), splits[-1])


class MarlinGemv:
    """y = x @ W for one token, reading a MarlinLinear's copy (engine/marlin.py). act (a [gate | up] weight): y is
    act(gate) * up [1, N/2]. ks > 1: that many blocks per super tile split K (a scratch of N ks floats and a counter
    per super tile)."""

    def __init__(self, m, group_size: int, device, act: str | None = None, split: int | None = None, ks: int = 1,
                 pdl_launch: bool | None = None):
        from . import cuda_gemv, pdl

        self.m, self.k, self.n, self.group = m, m.k, m.n, group_size
        self.device = torch.device(device)
        self.act = act if act in ACTS and self.n % (2 * TILE_N) == 0 else None
        self.z = 8 if m.zp.numel() == 0 else MARLIN_ZP
        sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        self.split = split or default_split(self.k, self.n, group_size, self.act is not None, sms)
        if self.split not in legal_splits(self.k, group_size, ks):
            raise ValueError(f"split {self.split} x {ks} blocks does not divide K = {self.k} into whole steps")
        self.ks = ks
        self.label = kernel_name(group_size, self.split, ACTS.get(self.act, 0), self.z, ks)
        tiles = self.n // TILE_N // (2 if self.act else 1)
        self.blocks = tiles * ks
        self.scratch = torch.empty(self.n * ks if ks > 1 else 1, dtype=torch.float32, device=self.device)
        self.counters = torch.zeros(tiles if ks > 1 else 1, dtype=torch.int32, device=self.device)
        use_pdl = pdl.enabled(self.device) if pdl_launch is None else pdl_launch
        self.launch = cuda_gemv._Launch(self.label, self.device, 7, (self.n, self.k), pdl=use_pdl,
                                        threads=32 * self.split, source=SOURCE)
        self.zp = m.zp if m.zp.numel() else m.s  # Z = 8: the kernel never reads it

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x1 = x.reshape(-1).half()
        if x1.data_ptr() % 16:
            x1 = x1.clone()
        y = torch.empty(self.n // 2 if self.act else self.n, dtype=torch.float16, device=x1.device)
        self.launch(self.blocks, self.m.q, self.m.s, self.zp, x1, y, self.scratch, self.counters)
        return y.unsqueeze(0)


class OneCopyLinear:
    """A weight held once, in Marlin's layout: one token through MarlinGemv, more through Marlin (its output
    [M, N] in the original column order; the caller applies a gate|up weight's activation). The engine's linear
    interface (engine/model.py QLinear.ext): __call__, act, label."""

    def __init__(self, m, group_size: int, device, act: str | None = None):
        self.marlin = m
        self.gemv = MarlinGemv(m, group_size, device, act)
        self.act = self.gemv.act
        self.label = self.gemv.label

    def nbytes(self) -> int:
        return self.marlin.nbytes()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.gemv(x) if x.shape[0] == 1 else self.marlin(x)
