"""quantdeploy's CUDA W4A16 GEMV (engine/cuda_gemv.py, kernels/w4a16.cu).

On the CPU: the repacked NK layout holds exactly the checkpoint's weights (GPTQ, act-order GPTQ, AWQ), and every
kernel variant compiles for sm_90 with NVRTC (what the GPU machine does at load). On a GPU: the kernels against
the layout's reference. Speed: benchmarks/gpu/gemv_tune.py."""

from __future__ import annotations

import pytest
import torch

from quantdeploy.engine import cuda_gemv as C
from quantdeploy.engine.quant import dequantize, from_awq, from_gptq, pack_cols_k

from test_engine import _pack_awq, _random_case


def _weight(layout, k=512, n=192, seed=0):
    q, z, s, g_idx, ref, qz = _random_case(k, n, act_order=layout == "act", seed=seed)
    if layout == "awq":
        return from_awq(_pack_awq(q), _pack_awq(z), s.half(), 128), ref
    return from_gptq(pack_cols_k(q), qz, s.half(), g_idx, 128, 1), ref


def _unpermute(dense_nk, perm):
    if perm is None:
        return dense_nk
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return dense_nk[:, inv]


@pytest.mark.parametrize("layout", ["gptq", "act", "awq"])
def test_nk_layout_holds_the_checkpoint_weights(layout):
    w, ref = _weight(layout)
    nk = C.repack(w, cols=64)  # several column chunks
    assert nk.q.dtype == torch.int32 and nk.q.shape == (w.n, w.k // 8) and nk.meta.shape == (w.n, w.k // 128)
    ours = _unpermute(C.reference(nk), nk.perm).t()
    assert torch.equal(ours, ref)  # exactly (q - zero) * fp16 scale: the checkpoint's own numbers
    assert torch.allclose(ours, dequantize(w, torch.float32), atol=2e-4)


def test_unsupported_group_size_is_refused_with_the_reason():
    w, _ = _weight("gptq", k=384, n=64)
    w.group_size = 96  # 3 chunks of 32 per group: not a power of two
    with pytest.raises(ValueError, match="CUDA GEMV needs"):
        C.repack(w)


def _nvrtc_or_skip():
    try:
        from torch.cuda._utils import _get_gpu_rtc_library

        _get_gpu_rtc_library()
    except Exception as e:  # a CPU-only torch
        pytest.skip(f"no NVRTC in this torch build: {e}")


def test_every_kernel_variant_compiles_for_hopper():
    """NVRTC compiles the source for sm_90 without a GPU: type and syntax errors show up in CI, not on the H200."""
    _nvrtc_or_skip()
    names = [f"qd_w4a16_gemv<{r}, {u}>" for r, u in C.VARIANTS] + ["qd_w4a16_dequant"]
    for name in names:
        cubin, mangled = C.compile_cubin(name, "90")
        assert len(cubin) > 1000 and mangled.startswith("_Z"), name


def test_default_variants_divide_the_rows():
    for k, n in ((4096, 6144), (4096, 28672), (14336, 4096), (640, 1000), (640, 1536)):
        r, u = C.default_variant(k, n)
        assert (r, u) in C.VARIANTS


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["gptq", "act", "awq"])
def test_cuda_kernels_match_the_reference_on_the_gpu(layout):
    dev = torch.device("cuda")
    ok, why = C.available(dev)
    assert ok, why
    w, _ = _weight(layout, k=1024, n=320)
    nk = C.repack(w.to(dev, torch.float16))
    ref = _unpermute(C.reference(nk), nk.perm)  # [N, K] in x's order
    for r, u in C.VARIANTS:
        if nk.n % r:
            continue
        lin = C.CudaLinear(nk, dev, (r, u))
        for m in (1, 8):  # the GEMV, and dequantize + matmul
            x = torch.randn(m, w.k, device=dev).half()
            want = x.float() @ ref.t()
            err = float((lin(x).float() - want).norm() / want.norm())
            assert err < 3e-3, (r, u, m, err)
