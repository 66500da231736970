"""quantdeploy's CUDA W4A16 GEMV (engine/cuda_gemv.py, kernels/w4a16.cu).

On the CPU: the repacked NK layout holds exactly the checkpoint's weights (GPTQ, act-order GPTQ, AWQ), and every
kernel variant compiles for sm_90 with NVRTC (what the engine does at load on a GPU). On a GPU: the kernels against
the layout's reference. Speed: benchmarks/gpu/gemv_tune.py."""

from __future__ import annotations

import json

import pytest
import torch

from quantdeploy.engine import cuda_gemv as C
from quantdeploy.engine import nk_layout as L
from quantdeploy.engine.arch_ops import gate_up_act
from quantdeploy.engine.nk_layout import MetaForm
from quantdeploy.engine.quant import dequantize, from_awq, from_gptq, pack_cols_k

from test_engine import _pack_awq, _random_case


def _weight(layout, k=512, n=192, seed=0, g=128):
    """layout: gptq, act (act-order GPTQ), awq (zero points random per group), sym (GPTQ sym=True: every zero 8)."""
    q, z, s, g_idx, ref, qz = _random_case(k, n, g, act_order=layout == "act", seed=seed)
    if layout == "sym":
        z = torch.full_like(z, 8)
        ref = (q.float() - 8.0) * s.half().float()[g_idx]
        qz = pack_cols_k((z - 1).t().contiguous()).t().contiguous()
    if layout == "awq":
        return from_awq(_pack_awq(q), _pack_awq(z), s.half(), g), ref
    return from_gptq(pack_cols_k(q), qz, s.half(), g_idx, g, 1), ref


def _unpermute(dense_nk, perm):
    if perm is None:
        return dense_nk
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return dense_nk[:, inv]


@pytest.mark.parametrize("layout", ["gptq", "act", "awq", "sym"])
def test_nk_layout_holds_the_checkpoint_weights(layout):
    w, ref = _weight(layout)
    nk = L.repack(w, cols=64)  # several column chunks
    groups = w.k // 128
    assert nk.q.dtype == torch.int32 and nk.q.shape == (w.n, w.k // 8)
    assert nk.meta.shape == ((w.n * groups,) if layout == "sym" else (w.n, groups + groups // 2))
    # one zero point for the whole weight: the scales alone, 2 bytes per group; else the zero points a byte each, 3
    want = (MetaForm.SCALES_ONLY, 8) if layout == "sym" else (MetaForm.ZERO_BYTES, 0)
    assert (nk.form, nk.zero_point, nk.meta.dtype) == (*want, torch.int16)
    assert nk.z == (8 if layout == "sym" else -5)  # the kernels' template argument
    assert nk.nbytes() == w.n * w.k // 2 + w.n * (w.k // 128) * (2 if layout == "sym" else 3)
    ours = _unpermute(L.reference(nk), nk.perm).t()
    assert torch.equal(ours, ref)  # exactly (q - zero) * fp16 scale: the checkpoint's own numbers
    assert torch.allclose(ours, dequantize(w, torch.float32), atol=2e-4)


def test_zero_point_bytes_in_place():
    """Row n's meta: its G scales, then zero point g at byte 2 G + g (little-endian int16 pairs)."""
    meta, form, _ = L.meta_layout(torch.rand(6, 3).half(), torch.arange(18).reshape(6, 3) % 16)
    assert form is MetaForm.ZERO_BYTES and meta.shape == (3, 6 + 3)
    assert meta[:, 6:].contiguous().view(torch.uint8).tolist() == [[0, 3, 6, 9, 12, 15], [1, 4, 7, 10, 13, 0],
                                                                    [2, 5, 8, 11, 14, 1]]


@pytest.mark.parametrize("layout", ["sym", "awq"])
def test_words_hold_every_form(layout):
    """The 4-byte words (the form of an odd group count) hold any weight: the GPU tests compare the others with it."""
    w, ref = _weight(layout)
    nk = L.repack(w, words=True)
    assert nk.form is MetaForm.WORDS and nk.z == -1 and nk.meta.dtype == torch.int32
    assert torch.equal(L.reference(nk).t(), ref)


def test_one_zero_point_only_when_all_are_equal():
    """A single group with another zero point: the zero points are kept, a byte each (asymmetric GPTQ checkpoints)."""
    q, z, s, g_idx, _, _ = _random_case()
    z = torch.full_like(z, 8)
    z[1, 5] = 9
    w = from_gptq(pack_cols_k(q), pack_cols_k((z - 1).t().contiguous()).t().contiguous(), s.half(), g_idx, 128, 1)
    nk = L.repack(w)
    assert nk.form is MetaForm.ZERO_BYTES
    assert torch.equal(L.reference(nk).t(), (q.float() - z.float()[g_idx]) * s.half().float()[g_idx])


def test_symmetric_scales_in_blocks_of_eight_rows():
    """One zero point: the scales of 8 rows of one group lie together ([N/8, G, 8]); an odd group count is fine
    (K / group size = 5, Gemma-3-270M's 640)."""
    w, ref = _weight("sym", k=640)
    nk = L.repack(w)
    assert (nk.form, nk.zero_point) == (MetaForm.SCALES_ONLY, 8) and nk.meta.shape == (w.n * 5,)
    assert torch.equal(L.reference(nk).t(), ref)
    scales = w.scales.half().view(torch.int16)  # [G, N]
    assert torch.equal(nk.meta[8 * 3:8 * 4], scales[3, :8])  # block 0, group 3: rows 0-7
    assert torch.equal(nk.meta[8 * 5 + 8 * 2:8 * 5 + 8 * 3], scales[2, 8:16])  # block 1, group 2


def test_zero_points_per_group_pack_only_for_an_even_group_count():
    """Zero points per group (AWQ) go a byte each after each row's scales when G is even; K / group size = 5
    (Gemma-3-270M's 640) keeps the words."""
    w, ref = _weight("awq", k=640)
    nk = L.repack(w)
    assert nk.form is MetaForm.WORDS and nk.meta.shape == (w.n, 5)
    assert torch.equal(L.reference(nk).t(), ref)


def test_rows_not_in_blocks_of_eight_keep_rows():
    """N = 12: a symmetric weight's scales take the per-row form, with its zero points (G = 4) or words."""
    meta, form, _ = L.meta_layout(torch.rand(4, 12).half(), torch.full((4, 12), 8))
    assert form is MetaForm.ZERO_BYTES and meta.shape == (12, 6) and meta.dtype == torch.int16
    meta, form, _ = L.meta_layout(torch.rand(5, 12).half(), torch.full((5, 12), 8))
    assert form is MetaForm.WORDS and meta.shape == (12, 5) and meta.dtype == torch.int32


def test_interleaved_gate_up_rows():
    """The gate|up weight for the GEMV with the activation: rows gate 0, up 0, gate 1, ... and `split` says where
    the up rows start in the original order (the prompt path's dequantization writes them back there)."""
    w, _ = _weight("gptq", n=192)
    plain, inter = L.repack(w), L.repack(w, cols=64, interleave=True)
    assert inter.split == 96 and plain.split == 0
    order = torch.stack([torch.arange(96), torch.arange(96) + 96], 1).flatten()
    assert torch.equal(L.reference(inter), L.reference(plain)[order])


def test_unsupported_group_size_is_refused_with_the_reason():
    w, _ = _weight("gptq", k=384, n=64)
    w.group_size = 96  # 3 chunks of 32 per group: not a power of two
    with pytest.raises(ValueError, match="CUDA GEMV needs"):
        L.repack(w)


def _nvrtc_or_skip():
    try:
        from torch.cuda._utils import _get_gpu_rtc_library

        _get_gpu_rtc_library()
    except Exception as e:  # a CPU-only torch
        pytest.skip(f"no NVRTC in this torch build: {e}")


def test_every_kernel_variant_compiles_for_hopper():
    """NVRTC compiles the source for sm_90 without a GPU: type and syntax errors show up in CI, not on the H200."""
    _nvrtc_or_skip()
    names = {C.kernel_name(*v) for v in C.VARIANTS} | {C.dequant_name(-1), C.dequant_name(8)}
    names |= {C.kernel_name(*v, a) for v in C.VARIANTS if v[0] % 2 == 0 for a in C.ACTS.values()}
    names |= {C.dequant_name(-5)}
    names |= {C.kernel_name(*v, a, z) for v in C.VARIANTS[::3] for a in (0, 1) for z in (8, -5)
              if v[0] % 2 == 0 or a == 0}
    assert any(n.endswith(", 4, 8>") for n in names) and any(n.endswith(", 1, -5>") for n in names)
    assert any("_ps<" in n for n in names) and any("_sk<" in n for n in names)
    for name in sorted(names):
        cubin, mangled = C.compile_cubin(name, "90")
        assert len(cubin) > 1000 and mangled.startswith("_Z"), name


def test_default_variants_divide_the_rows():
    for k, n in ((4096, 6144), (4096, 28672), (14336, 4096), (640, 1000), (640, 1536)):
        assert C.default_variant(k, n) in C.VARIANTS
        for v in C.VARIANTS:
            r, u, s = C.fit_variant(v, k, n)
            assert n % r == 0 and (s == 1 or (s > 1 and (k // 32) % s == 0) or (s < 0 and (k // 32) % (32 * u) == 0))
    assert C.fit_variant((8, 1, 4), 4128, 64) == (2, 4, 1)  # K / 32 = 129: no split
    assert C.fit_variant((8, 1, 14), 14336, 4096) == (8, 1, 14)  # K / 32 = 448 = 14 * 32: one chunk per lane
    assert C.fit_variant((8, 1, 14), 4096, 4096) == (8, 1, 4)  # 128 chunks do not split 14 ways: 4 warps
    assert C.fit_variant((8, 1, 7), 4128, 64) == (2, 4, 1)
    assert C.fit_variant((4, 1, -2), 640, 1536) == (2, 4, 1)  # K / 32 = 20: no whole batches per row for persistence
    assert C.fit_variant((4, 2, -2), 4096, 4096) == (4, 2, -2)


def test_grid_sizes():
    assert C.grid(4096, 4, 4, 132) == 1024  # split K: a block per 4 rows
    assert C.grid(4096, 8, 14, 132) == 512  # ... of 14 warps here
    assert C.kernel_name(8, 1, 4) == "qd_w4a16_gemv_sk<8, 1, 0>"  # the names of 4 warps, as in earlier results
    assert C.kernel_name(8, 1, 14) == "qd_w4a16_gemv_sk<8, 1, 0, 14>"
    assert C.kernel_name(8, 1, 4, 0, 8) == "qd_w4a16_gemv_sk<8, 1, 0, 4, 8>"  # one zero point, 8, for the weight
    assert C.kernel_name(2, 4, 1, 0, MetaForm.WORDS) == "qd_w4a16_gemv<2, 4, 0>"  # the template's default form
    assert C.dequant_name(MetaForm.ZERO_BYTES) == "qd_w4a16_dequant<-5>"
    assert C.kernel_name(4, 1, -4, 1, 8) == "qd_w4a16_gemv_ps<4, 1, 1, 8>"
    assert C.kernel_name(4, 1, 1, 1, -5) == "qd_w4a16_gemv<4, 1, 1, -5>"  # zero points a byte each
    assert C.grid(4096, 2, 1, 132) == 512  # a warp per 2 rows, 4 warps a block
    assert C.grid(28672, 4, -2, 132) == 264  # persistent: 2 blocks per SM
    assert C.grid(64, 4, -2, 132) == 4  # ... or fewer, when there are fewer row groups
    assert C.fit_variant((2, 4), 4096, 64) == (2, 4, 1)  # a tuned file of the earlier (rows, chunks) form


def test_tuned_variants_apply_to_their_meta_form_only(tmp_path):
    """A sweep on GPTQ (blocked scales, form 8) saves "KxN:8" keys: AWQ's zero point bytes (-5) keep the defaults,
    and a file of the earlier form ("KxN") no longer applies to any."""
    from quantdeploy.engine import tuning

    cpu = torch.device("cpu")
    path = tuning.tuned_file(tmp_path, cpu, "cuda")
    assert tuning.tuned_file(None, cpu, "cuda") is None  # QUANTDEPLOY_TUNED_GEMV=0
    path.write_text('{"4096x6144:8": [4, 1, 2], "4096x4096": [2, 2, 1]}')
    tuning.read.cache_clear()
    try:
        tuned = tuning.read(path)
        assert C.variant_for(4096, 6144, 8, tuned) == (4, 1, 2)
        assert C.variant_for(4096, 6144, -5, tuned) == C.default_variant(4096, 6144) != (4, 1, 2)
        assert C.variant_for(4096, 4096, 8, tuned) == C.default_variant(4096, 4096)
        # a sweep on AWQ adds its keys, keeps GPTQ's and drops the earlier form's
        tuning.save(tmp_path, cpu, "cuda", {C.tuned_key(4096, 6144, -5): [2, 2, 1]})
        assert json.loads(path.read_text()) == {"4096x6144:8": [4, 1, 2], "4096x6144:-5": [2, 2, 1]}
        tuned = tuning.read(path)
        assert C.variant_for(4096, 6144, -5, tuned) == (2, 2, 1) and C.variant_for(4096, 6144, 8, tuned) == (4, 1, 2)
    finally:
        tuning.read.cache_clear()


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["gptq", "act", "awq", "sym"])
def test_cuda_kernels_match_the_reference_on_the_gpu(layout):
    dev = torch.device("cuda")
    ok, why = C.available(dev)
    assert ok, why
    for k in (1024, 1792):  # K / 32 = 56 = 7 * 8: splits over 7 and 14 warps too
        w, _ = _weight(layout, k=k, n=320)
        nk = L.repack(w.to(dev, torch.float16))
        ref = _unpermute(L.reference(nk), nk.perm)  # [N, K] in x's order
        for v in C.VARIANTS:
            lin = C.CudaLinear(nk, dev, v)
            for m in (1, 8):  # the GEMV, and dequantize + matmul
                x = torch.randn(m, w.k, device=dev).half()
                want = x.float() @ ref.t()
                err = float((lin(x).float() - want).norm() / want.norm())
                assert err < 3e-3, (k, v, lin.variant, m, err)


@pytest.mark.gpu
@pytest.mark.parametrize("layout,form,k", [("sym", 8, 1792), ("awq", -5, 3584), ("sym", 8, 640)])
def test_compact_meta_kernels_equal_the_word_ones_on_the_gpu(layout, form, k):
    """The compact meta forms compute exactly what the scale | zero words compute: bit for bit, every variant
    (K / 32 = 56 or 112: the splits over 7 and 14 warps run too; 3584 / 128 = 28 groups, their zero points a byte
    each; 640: 5 groups, Gemma-3-270M's K)."""
    dev = torch.device("cuda")
    w, _ = _weight(layout, k=k, n=320)
    w = w.to(dev, torch.float16)
    compact = L.repack(w)
    words = L.repack(w, words=True)
    assert (compact.z, words.form) == (form, MetaForm.WORDS)
    x = torch.randn(1, w.k, device=dev).half()
    x8 = torch.randn(8, w.k, device=dev).half()
    for v in C.VARIANTS:
        a, b = C.CudaLinear(compact, dev, v), C.CudaLinear(words, dev, v)
        assert (a.label, b.label) == (C.kernel_name(*a.variant, 0, form), C.kernel_name(*b.variant)), v
        assert torch.equal(a(x), b(x)), (v, a.label)
        assert torch.equal(a(x8), b(x8)), (v, "prompt")


@pytest.mark.gpu
@pytest.mark.parametrize("act,layout", [("silu", "gptq"), ("gelu_tanh", "gptq"), ("silu", "sym")])
def test_gate_up_gemv_applies_the_activation_on_the_gpu(act, layout):
    dev = torch.device("cuda")
    w, _ = _weight(layout, k=1024, n=320)
    nk = L.repack(w.to(dev, torch.float16), interleave=True)
    ref = L.reference(L.repack(w.to(dev, torch.float16)))  # [N, K], original row order
    for r, u, s in ((2, 4, 1), (8, 2, 1), (8, 1, 4), (16, 1, 4), (4, 1, 8), (4, 1, -2)):
        lin = C.CudaLinear(nk, dev, (r, u, s), act=act)
        x = torch.randn(1, w.k, device=dev).half()
        want = gate_up_act((x.float() @ ref.t()).half(), act)
        got = lin(x)
        assert got.shape == (1, 160)
        assert float((got.float() - want.float()).norm() / want.float().norm()) < 3e-3, (r, u)
        x8 = torch.randn(8, w.k, device=dev).half()  # prompts: the plain projection, gate rows then up rows
        assert float((lin(x8).float() - x8.float() @ ref.t()).norm() / (x8.float() @ ref.t()).norm()) < 3e-3


@pytest.mark.parametrize("layout", ["gptq", "awq", "sym"])
def test_the_gemv_source_computes_the_reference_on_the_cpu(layout):
    """kernels/w4a16.cu's GEMV itself on the CPU emulation of CUDA (quantdeploy/testing/cuda_emu.py), every kernel
    kind: a warp per rows, K split over 4 and 8 warps, persistent blocks striding over the rows (2 multiprocessors),
    gate|up with SiLU and GELU-tanh; and the prompts' dequantization into the original row order."""
    from quantdeploy.testing import cuda_emu

    ok, why = cuda_emu.available()
    if not ok:
        pytest.skip(f"no CPU emulation of CUDA: {why}")
    w, _ = _weight(layout, k=1024, n=160)
    x = torch.randn(1024, generator=torch.Generator().manual_seed(2)).half()
    ref = L.reference(L.repack(w))  # [N, K]
    gshift = 2  # groups of 128: 4 chunks of 32
    for act in (None, "silu", "gelu_tanh"):
        nk = L.repack(w, interleave=act is not None)
        want = x.float() @ ref.t()
        if act:
            want = gate_up_act(want.half(), act).float()
        variants = ((4, 1, 1), (2, 4, 1), (8, 2, 1), (8, 1, 4), (4, 1, 8), (4, 1, -2)) if act is None else \
            ((2, 4, 1), (4, 1, -2)) if act == "silu" else ((8, 1, 4),)
        for v in variants:
            r, u, sk = C.fit_variant(v, nk.k, nk.n)
            assert (r, u, sk) == v
            name = C.kernel_name(r, u, sk, C.ACTS[act] if act else 0, nk.z)
            (y,) = cuda_emu.run(C.SOURCE, name, C.grid(nk.n, r, sk, 2), 32 * sk if sk > 1 else C.THREADS,
                                [nk.q, nk.meta, x, cuda_emu.Out(torch.float16, want.numel()), nk.n, nk.k,
                                 nk.k // nk.group_size, gshift])
            err = float((y.float() - want).norm() / want.norm())
            assert err < 2e-3, (name, err)
    nk = L.repack(w, interleave=True)
    words = nk.n * nk.k // 8
    (dense,) = cuda_emu.run(C.SOURCE, C.dequant_name(nk.z), -(-words // C.THREADS), C.THREADS,
                            [nk.q, nk.meta, cuda_emu.Out(torch.float16, nk.n * nk.k), nk.n, nk.k,
                             nk.k // nk.group_size, nk.split])
    assert torch.allclose(dense.reshape(nk.n, nk.k).float(), ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("layout", ["gptq", "sym"])
def test_the_batched_kernel_source_computes_the_reference_on_the_cpu(layout):
    """kernels/w4a16.cu's tensor-core kernel (qd_w4a16_mma) on the CPU emulation, whose mma.sync follows PTX's
    m16n8k16 fragment layout: one and two tiles of 8 tokens with a ragged last one, K over 2 and 4 warps, 1 and 2
    tiles of rows per block, the weights in registers and through the shared-memory ring, a gate|up weight's
    interleaved rows written back in the original order."""
    from quantdeploy.testing import cuda_emu

    ok, why = cuda_emu.available()
    if not ok:
        pytest.skip(f"no CPU emulation of CUDA: {why}")
    w, _ = _weight(layout, k=512, n=64)
    ref = L.reference(L.repack(w))  # [N, K], rows in the original order
    gen = torch.Generator().manual_seed(3)
    for interleave in (False, True):
        nk = L.repack(w, interleave=interleave)
        for m, warps, rows, stages in ((3, 2, 1, 0), (8, 4, 2, 0), (16, 2, 2, 2), (13, 4, 1, 2)):
            x = torch.randn(m, nk.k, generator=gen).half()
            want = x.float() @ ref.t()
            name = C.mma_name(C.mma_tiles(m), warps, nk.z, rows, stages)
            (y,) = cuda_emu.run(C.SOURCE, name, nk.n // (16 * rows), 32 * warps,
                                [nk.q, nk.meta, x, cuda_emu.Out(torch.float16, m * nk.n), m, nk.n, nk.k,
                                 nk.k // nk.group_size, 2, nk.split])
            err = float((y.reshape(m, nk.n).float() - want).norm() / want.norm())
            assert err < 1e-3, (name, interleave, m, err)


def test_pdl_launch_structs_match_the_driver_abi():
    """cuLaunchKernelEx reads these through a pointer: sizes and offsets of CUlaunchAttribute / CUlaunchConfig
    (cuda.h, CUDA 12 and 13)."""
    import ctypes

    from quantdeploy.engine.cuda_driver import LaunchAttr, LaunchConfig

    assert ctypes.sizeof(LaunchAttr) == 72 and LaunchAttr.value.offset == 8
    assert ctypes.sizeof(LaunchConfig) == 56
    assert (LaunchConfig.stream.offset, LaunchConfig.attrs.offset, LaunchConfig.num_attrs.offset) == (32, 40, 48)


@pytest.mark.parametrize("arch", ["80", "86", "89", "90", "100", "120"])
def test_the_kernels_build_for_every_gpu_generation(arch):
    """A100, RTX 30xx / A10, RTX 40xx / L4, H100 / H200, B200, RTX 50xx: the default variants and the prompt
    dequantizer compile for each with the NVRTC torch ships (no GPU needed)."""
    _nvrtc_or_skip()
    names = {C.kernel_name(*C.default_variant(k, n)) for k, n in ((4096, 6144), (4096, 28672), (14336, 4096))}
    for name in sorted(names) + [C.dequant_name(-1)]:
        cubin, mangled = C.compile_cubin(name, arch)
        assert len(cubin) > 1000 and mangled.startswith("_Z"), (arch, name)


def test_a_torch_without_the_private_helpers_is_a_reason_not_a_crash(monkeypatch):
    """torch's NVRTC and module loader are private (torch.cuda._utils): when a torch release renames or reshapes one,
    the CUDA GEMV says so in one line and the kernel chooser takes the Triton GEMV with that reason."""
    from torch.cuda import _utils

    from quantdeploy.engine import cuda_driver

    def reshaped(kernel_source):  # a release that takes fewer arguments
        raise AssertionError("never called")

    for patch, needle in ((lambda: monkeypatch.delattr(_utils, "_cuda_load_module"), "_cuda_load_module is gone"),
                          (lambda: monkeypatch.setattr(_utils, "_nvrtc_compile", reshaped),
                           "_nvrtc_compile(kernel_source) no longer takes 5 arguments")):
        monkeypatch.undo()
        patch()
        cuda_driver.check.cache_clear()
        try:
            ok, why = cuda_driver.check()
            assert not ok and needle in why and "tested with torch 2.9 to 2.14" in why and "\n" not in why, why
            with pytest.raises(RuntimeError, match=needle.split("(")[0]):
                C.compile_cubin(C.dequant_name(-1), "90")
        finally:
            monkeypatch.undo()
            cuda_driver.check.cache_clear()
    assert cuda_driver.check() == (True, "")


def test_pdl_is_off_on_the_cpu():
    from quantdeploy.engine import pdl

    assert not pdl.enabled("cpu")


def test_batched_kernel_buckets():
    """Tokens go in tiles of 8, a power of two of them per batch bucket; K is split over 8 warps, fewer for a short
    K; the kernel takes up to 32 tokens of a weight with the scales alone, 64 with zero points."""
    assert [C.mma_tiles(m) for m in (1, 2, 8, 9, 16, 17, 32, 33, 64)] == [1, 1, 1, 2, 2, 4, 4, 8, 8]
    assert [C.mma_warps(k) for k in (14336, 4096, 1024, 640, 128)] == [8, 8, 4, 2, 1]
    assert C.mma_name(8, 4, MetaForm.ZERO_BYTES) == "qd_w4a16_mma<8, 4, -5>"
    assert C.mma_name(8, 4, MetaForm.ZERO_BYTES, 2) == "qd_w4a16_mma<8, 4, -5, 2>"
    assert C.mma_name(8, 4, MetaForm.ZERO_BYTES, 1, 2) == "qd_w4a16_mma<8, 4, -5, 1, 2>"
    # the weights' ring only where a block's static shared memory holds it beside the partial sums
    assert C.fit_mma_stages(8, 4, 4, 2) == 2 and C.fit_mma_stages(8, 8, 2, 2) == 2
    assert C.fit_mma_stages(8, 8, 4, 2) == 0 and C.fit_mma_stages(8, 8, 2, 0) == 0
    assert [C.fit_mma_rows(4, n) for n in (6144, 320, 96, 48, 16)] == [4, 4, 2, 1, 1]
    assert C.mma_max_tokens(MetaForm.SCALES_ONLY) == C.mma_max_tokens(MetaForm.ZERO_BYTES) == C.MMA_TOKENS == 64


def test_batched_kernel_defaults_share_x_from_16_tokens_on():
    """Without a tuned file: one tile per block up to 8 tokens; from 16 on, x feeds 2-4 tiles, a wide gate|up with K
    over fewer warps; at 64 tokens a gate|up's and a down's weights go through the ring; every choice is legal for the
    weight (rows divide N, warps 1-8, the ring fits the block's shared memory)."""
    assert C.mma_default(1, 4096, 28672) == (8, 1, 0)
    assert C.mma_default(4, 4096, 28672) == (2, 4, 0) and C.mma_default(8, 4096, 28672) == (4, 4, 2)
    assert C.mma_default(8, 14336, 4096) == (8, 2, 2) and C.mma_default(8, 4096, 4096) == (8, 2, 0)
    assert C.mma_default(4, 4096, 6144) == (8, 4, 0) and C.mma_default(8, 4096, 6144) == (4, 2, 0)
    for k, n in ((4096, 6144), (4096, 28672), (14336, 4096), (640, 1536), (576, 960), (1024, 1000), (128, 48)):
        for tiles in (1, 2, 4, 8):
            warps, rows, stages = C.mma_default(tiles, k, n)
            assert 1 <= warps <= 8 and rows in (1, 2, 4) and stages in (0, 2), (k, n, tiles)
            assert C.fit_mma_stages(tiles, warps, rows, stages) == stages, (k, n, tiles)
            r = C.fit_mma_rows(rows, n)
            assert n % (16 * r) == 0 or r == 1, (k, n, tiles)


def test_batched_kernel_tuned_keys_name_the_meta_form():
    """A tuned (warps, rows) is keyed by shape, meta form and tile count; a scales-only weight's zero point (7 or 8,
    as stored) does not split its keys, and the two zero point forms do not share them."""
    key = C.mma_tuned_key(4096, 6144, MetaForm.SCALES_ONLY, 8)
    assert key == "mma:4096x6144:scales_only:8"
    assert key != C.mma_tuned_key(4096, 6144, MetaForm.ZERO_BYTES, 8) != C.mma_tuned_key(4096, 6144, MetaForm.WORDS, 8)


@pytest.mark.parametrize("arch", ["80", "90", "120"])
def test_the_batched_kernel_builds(arch):
    """Every batched-decode instance the engine can launch compiles with NVRTC (no GPU needed)."""
    _nvrtc_or_skip()
    for tiles in (1, 2, 4, 8):
        for warps in (1, 2, 4, 8):
            for z in (-1, -5, 8):
                for rows in (1, 2, 4) if warps in (2, 4, 8) and z != -1 else (1,):
                    cubin, mangled = C.compile_cubin(C.mma_name(tiles, warps, z, rows), arch)
                    assert len(cubin) > 1000 and mangled.startswith("_Z"), (arch, tiles, warps, z, rows)
        for warps, rows in ((8, 2), (4, 4), (2, 4), (1, 1)):  # the weights' ring (tiles 8: the 64-token defaults)
            for z in (-1, -5, 8):
                if C.fit_mma_stages(tiles, warps, rows, 2):
                    cubin, mangled = C.compile_cubin(C.mma_name(tiles, warps, z, rows, 2), arch)
                    assert len(cubin) > 1000 and mangled.startswith("_Z"), (arch, tiles, warps, z, rows)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["gptq", "act", "awq", "sym"])
def test_batched_kernel_matches_the_reference_on_the_gpu(layout):
    """The tensor-core kernel for 2..100 tokens (two launches past 64), every K split, 1, 2 and 4 tiles of 16 rows
    per block, against the layout's reference; K = 1792 (14 steps of 128) and 1056 (33 chunks: a last step past the
    end of K); a gate|up weight's rows come back in the original order."""
    dev = torch.device("cuda")
    if torch.cuda.get_device_capability(dev) < (8, 0):
        pytest.skip("the batched kernel needs compute capability 8.0+")
    for k, inter in ((1792, False), (1056, False), (1024, True)):
        w, _ = _weight(layout, k=k, n=320, g=32 if k == 1056 else 128)
        w = w.to(dev, torch.float16)
        nk = L.repack(w, interleave=inter)
        ref = _unpermute(L.reference(L.repack(w)), nk.perm)  # [N, K] in x's order, rows in the original order
        lin = C.CudaLinear(nk, dev)
        assert lin.mma_ok
        for warps, rows, stages in [(1, 1, 0), (2, 1, 0), (4, 1, 0), (8, 1, 0), (2, 2, 0), (8, 2, 0), (4, 4, 0),
                                    (8, 4, 0), (1, 1, 2), (8, 2, 2), (4, 4, 2), (2, 4, 2)]:
            for m in (2, 3, 8, 9, 17, 33, 64, 100):
                x = torch.randn(m, w.k, device=dev).half()
                want = x.float() @ ref.t()
                got = lin.mma(x if nk.perm is None else x.index_select(-1, nk.perm), warps, rows, stages)  # K order
                err = float((got.float() - want).norm() / want.norm())
                assert got.shape == (m, w.n) and err < 3e-3, (k, warps, rows, stages, m, err)

