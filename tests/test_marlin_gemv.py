"""The batch-1 GEMV over Marlin's weight layout (engine/marlin_gemv.py, kernels/marlin_gemv.cu), which lets a batching
model hold gate|up and down once (QUANTDEPLOY_ONE_COPY=1).

On the CPU: the layout as the kernel reads it (lane, word, nibble; permuted scales; packed zero points) holds exactly
the weights gptqmodel's Marlin packing was given, and every kernel instance compiles with NVRTC. On a GPU: our packing
against gptq_marlin_repack, the kernel against the reference, and the one-copy linear at 1 to 300 tokens. Speed:
benchmarks/gpu/marlin_gemv_ab.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantdeploy.engine import cuda_gemv as C
from quantdeploy.engine import marlin
from quantdeploy.engine import marlin_gemv as M
from quantdeploy.engine.arch_ops import gate_up_act
from quantdeploy.testing import cuda_emu

from test_cuda_gemv import _nvrtc_or_skip, _weight

gm = pytest.importorskip("gptqmodel.utils.marlin", reason="gptqmodel (the [gptq] extra) packs Marlin's scales")


def _case(k, n, g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (k // g, n), generator=gen)
    s = (torch.rand(k // g, n, generator=gen) + 0.5).half()
    return q, z, s


@pytest.mark.parametrize("k,n,g", [(256, 128, 128), (512, 256, 32), (384, 192, 64), (1024, 640, 128)])
def test_the_kernels_reading_of_marlins_layout_gives_back_the_weights(k, n, g):
    """q through our packing, scales and zero points through gptqmodel's marlin_permute_scales and
    marlin_zero_points (what the engine's Marlin copy holds): decoded lane by lane, exactly (q - z) * s."""
    q, z, s = _case(k, n, g)
    mq = M.repack_reference(q)
    ms = gm.marlin_permute_scales(s, k, n, g)
    mz = gm.marlin_zero_points(z, k // g, n, 4)
    assert mq.shape == (k // 16, 2 * n) and mz.shape == (k // g, n // 8)
    rows = torch.arange(k) // g
    assert torch.equal(M.reference(mq, ms, mz, k, n, g), (q.float() - z[rows].float()) * s[rows].float())
    # Marlin's uint4b8 (GPTQ's symmetric form): no zero point words, every zero point 8
    assert torch.equal(M.reference(mq, ms, None, k, n, g), (q.float() - 8) * s[rows].float())


def _classic_marlin_pack(q: torch.Tensor) -> torch.Tensor:
    """Marlin's packing as its Python reference writes it (16 x 16 blocks, then a 1,024-entry permutation per 16 x 64
    tile, then 8 nibbles a word), from the permutation gptqmodel's Marlin module builds."""
    from gptqmodel.nn_modules.qlinear.marlin import _get_perms

    perm = _get_perms()[0]
    k, n = q.shape
    w = q.reshape(k // 16, 16, n // 16, 16).permute(0, 2, 1, 3).reshape(k // 16, n * 16)
    w = w.reshape(-1, perm.numel())[:, perm].reshape(w.shape).numpy().astype(np.uint32)
    out = np.zeros((w.shape[0], w.shape[1] // 8), dtype=np.uint32)
    for i in range(8):
        out |= w[:, i::8] << (4 * i)
    return torch.from_numpy(out.astype(np.int32))


def test_our_packing_is_marlins():
    q, _, _ = _case(512, 384, 128, seed=1)
    assert torch.equal(M.repack_reference(q), _classic_marlin_pack(q))


def test_a_lanes_16_bytes_hold_4_rows_of_8_columns():
    """Lane 5 (c = 1, r0 = 2) of the first tile: word j's nibbles (t, t + 4) are rows (2 + 8 (t % 2), + 1) of column
    16 j + 1 + 8 (t // 2)."""
    k, n = 16, 64
    q = torch.zeros(k, n, dtype=torch.int64)
    q[3, 16 * 2 + 1 + 8] = 0xA  # row r0 + 1 of word 2's column b = 1: nibble t + 4 with t = 2
    q[10, 16 * 3 + 1] = 0x5  # row r0 + 8 of word 3's column b = 0: nibble t = 1
    words = M.repack_reference(q).reshape(32, 4)[5] & 0xFFFFFFFF
    assert int(words[2]) == 0xA << 24 and int(words[3]) == 0x5 << 4
    assert int(M.repack_reference(q).count_nonzero()) == 2


def test_what_the_gemv_takes():
    w, _ = _weight("gptq", k=1024, n=2048, g=128)
    assert M.fits(w) is None
    w.group_size = 1024  # one group per output channel: Marlin's scales are permuted another way there
    assert M.fits(w).startswith("group size 1024")


def test_the_default_split_is_the_h100_records_fastest_for_the_8b_shapes():
    """gate|up with its activation (4096 x 28672: 224 blocks of gate and up columns) splits K over 4 warps, down
    (14336 x 4096: 64 blocks) over 16; every split leaves whole steps of 8 tiles per warp, with blocks splitting K
    too (down: 896 tiles = 4 blocks x 4 warps x 7 steps of 8)."""
    assert M.default_split(4096, 28672, 128, True, 132) == 4
    assert M.default_split(14336, 4096, 128, False, 132) == 16
    assert M.legal_splits(14336, 128) == [1, 2, 4, 7, 8, 14, 16, 28]
    assert M.legal_splits(14336, 128, ks=4) == [2, 4, 7, 14, 28]
    assert M.legal_splits(640, 32) == [1]  # 40 tiles: 5 steps of 8, for one warp
    assert M.kernel_name(128, 4, 0, 8, ks=4) == "qd_marlin_gemv<8, 1, 4, 1, 0, 8, 4>"
    with pytest.raises(ValueError, match="not a multiple of 128"):
        M.default_split(600, 640, 32, False, 132)


@pytest.mark.parametrize("arch", ["80", "90", "120"])
def test_every_instance_compiles(arch):
    """Each group size, activation and zero point form, and the splits the defaults choose, compile with the NVRTC
    torch ships (no GPU needed)."""
    _nvrtc_or_skip()
    names = {M.kernel_name(g, s, a, z) for g in (32, 64, 128) for s in (1, 8, 28) for a in (0, 1, 2)
             for z in (M.MARLIN_ZP, 8) if arch == "90" or (s == 8 and z == M.MARLIN_ZP)}
    names |= {M.kernel_name(128, 4, a, M.MARLIN_ZP, ks) for a in (0, 1) for ks in (2, 4)}
    assert "qd_marlin_gemv<8, 1, 28, 1, 0, -2>" in names or arch != "90"
    for name in sorted(names):
        cubin, mangled = C.compile_cubin(name, arch, M.SOURCE)
        assert len(cubin) > 1000 and mangled.startswith("_Z"), (arch, name)


@pytest.mark.parametrize("k,n,g,split,act,sym,ks", [
    (256, 128, 128, 2, None, False, 1),
    (512, 256, 128, 4, "silu", False, 1),
    (256, 192, 128, 1, None, True, 1),
    (256, 128, 32, 2, None, False, 1),
    (256, 256, 64, 2, "gelu_tanh", False, 1),
    (512, 256, 128, 4, "silu", True, 1),
    (256, 256, 32, 1, "silu", False, 1),
    (1024, 128, 128, 2, None, False, 4),
    (512, 256, 64, 2, "silu", True, 2),
])
def test_the_kernel_source_computes_the_reference_on_the_cpu(k, n, g, split, act, sym, ks):
    """kernels/marlin_gemv.cu itself, run on the CPU emulation of CUDA (quantdeploy/testing/cuda_emu.py): one token
    through every group size, with and without the activation (gate and up super tiles), K split over 1-4 warps and
    over 2 or 4 blocks per super tile (the last block adds them; the counters are left at zero for the next launch),
    zero points or Marlin's uint4b8, against the reference's product (the activation rounded like the NK GEMV's)."""
    ok, why = cuda_emu.available()
    if not ok:
        pytest.skip(f"no CPU emulation of CUDA: {why}")
    q, z, s = _case(k, n, g, seed=k + n + g)
    s = (s.float() * 0.02).half()
    if sym:
        z = torch.full_like(z, 8)
    mq = M.repack_reference(q)
    ms = gm.marlin_permute_scales(s, k, n, g)
    mz = gm.marlin_zero_points(z, k // g, n, 4)
    x = torch.randn(k, generator=torch.Generator().manual_seed(1)).half()
    want = x.float() @ M.reference(mq, ms, None if sym else mz, k, n, g)
    if act:
        want = gate_up_act(want.half(), act).float()
    name = M.kernel_name(g, split, M.ACTS.get(act, 0), 8 if sym else M.MARLIN_ZP, ks)
    tiles = n // 64 // (2 if act else 1)
    y, _, counters = cuda_emu.run(M.SOURCE, name, grid=tiles * ks, threads=32 * split,
                                  args=[mq, ms, mz, x, cuda_emu.Out(torch.float16, want.numel()),
                                        cuda_emu.Out(torch.float32, n * ks), cuda_emu.Out(torch.int32, tiles), n, k])
    err = float((y.float() - want).norm() / want.norm())
    assert err < 2e-3, (name, err)
    assert int(counters.abs().sum()) == 0


# --- on a GPU ---------------------------------------------------------------------------------------------------
def _gpu_marlin_or_skip():
    dev = torch.device("cuda")
    ok, why = marlin.available(dev)
    if not ok:
        pytest.skip(f"gptqmodel's Marlin cannot run here: {why}")
    return dev


@pytest.mark.gpu
def test_our_packing_is_gptq_marlin_repack():
    dev = _gpu_marlin_or_skip()
    w, _ = _weight("gptq", k=1024, n=2048, g=128)
    got = gm.gptq_marlin_repack(w.qweight.to(dev), perm=torch.empty(0, dtype=torch.int, device=dev), size_k=w.k,
                                size_n=w.n, num_bits=4, dtype=torch.float16)
    assert torch.equal(got.cpu(), M.repack_qweight(w.qweight))


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["gptq", "awq", "sym"])
def test_the_gemv_matches_the_reference_on_the_gpu(layout):
    """Every legal split of a gate|up shape (with SiLU and GELU-tanh) and of a down shape, with 1, 2 and 4 blocks per
    super tile, groups of 128, 64 and 32, against the reference product; the activation rounded like the engine's own
    GEMV."""
    dev = _gpu_marlin_or_skip()
    for g in (128, 64, 32):
        for k, n, act in ((1024, 2048, "silu"), (1024, 2048, "gelu_tanh"), (2048, 1024, None)):
            w, _ = _weight(layout, k=k, n=n, g=g)
            w = w.to(dev, torch.float16)
            ml = marlin.MarlinLinear(w, dev)
            dense = M.reference(ml.q.cpu(), ml.s.cpu(), ml.zp.cpu() if ml.zp.numel() else None, k, n, g).to(dev)
            x = torch.randn(1, k, device=dev).half()
            y = x.float() @ dense
            if act:
                y = gate_up_act(y.half(), act).float()
            for ks in (1, 2, 4):
                for split in M.legal_splits(k, g, ks):
                    gemv = M.MarlinGemv(ml, g, dev, act, split=split, ks=ks, pdl_launch=False)
                    for _ in range(2):  # the second launch finds the counters back at zero
                        got = gemv(x)
                        err = float((got.float() - y).norm() / y.norm())
                        assert got.shape == y.shape and err < 3e-3, (layout, g, k, n, act, split, ks, err)


@pytest.mark.gpu
def test_one_copy_runs_every_token_count_from_marlins_copy():
    """CudaLinears with one_copy: gate|up (with its activation) and down become a OneCopyLinear (no NK copy); one
    token through the GEMV, 2..300 through Marlin, each against the reference; the kernel report says so."""
    dev = _gpu_marlin_or_skip()
    from quantdeploy.engine import nk_layout as L

    maker = C.CudaLinears(dev, None, use_marlin=True, one_copy=True)
    for k, n, act in ((1024, 2048, "silu"), (2048, 1024, None)):
        w, _ = _weight("awq", k=k, n=n, g=128)
        w = w.to(dev, torch.float16)
        ref = L.reference(L.repack(w))  # [N, K]
        lin = maker.make(w, act=act)
        assert isinstance(lin, M.OneCopyLinear) and lin.act == act
        for m in (1, 2, 9, 300):
            x = torch.randn(m, k, device=dev).half()
            want = x.float() @ ref.t()
            if m == 1 and act:
                want = gate_up_act(want.half(), act).float()
            err = float((lin(x).float() - want).norm() / want.norm())
            assert err < 3e-3, (k, n, m, err)
    assert "one copy of those weights" in maker.batched_note()
    assert "down, gate|up from 2 tokens" in maker.batched_note()
