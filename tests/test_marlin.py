"""gptqmodel's Marlin GEMM as the batched engine's kernel for gate|up and down (engine/marlin.py).

On the CPU: which products and weights it takes, and when the engine makes its copy. On a GPU: its product on the
engine's weights (GPTQ's symmetric form, zero points, AWQ) against the reference, and the linear routing 2..256 tokens
to it. Speed: benchmarks/gpu/gemm_ab.py --marlin, benchmarks/gpu/batch_decode.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from quantdeploy.engine import cuda_gemv as C
from quantdeploy.engine import marlin
from quantdeploy.engine.arch_ops import gate_up_act
from quantdeploy.engine import nk_layout as L
from quantdeploy.errors import BackendUnavailable

from test_cuda_gemv import _weight


def test_marlin_takes_gate_up_and_down_only():
    """The 8B shapes: gate|up (4096 x 28672) and down (14336 x 4096) go to Marlin; qkv and o stay on the engine's
    kernel, which was as fast or faster there up to 64 tokens."""
    assert [marlin.product(k, n) for k, n in ((4096, 28672), (14336, 4096), (4096, 6144), (4096, 4096))] == [
        "gate|up", "down", None, None]


@pytest.mark.parametrize("layout,k,n,g,why", [
    ("gptq", 1024, 2048, 128, None),
    ("awq", 1024, 2048, 32, None),
    ("sym", 1024, 2048, 64, None),
    ("act", 1024, 2048, 128, "act-order weights"),
    ("gptq", 1024, 2048, 256, "group size 256"),
    ("gptq", 1024, 2080, 128, "shape 1024 x 2080"),
    ("gptq", 1056, 2048, 32, "shape 1056 x 2048"),
])
def test_which_weights_marlin_can_take(layout, k, n, g, why):
    w, _ = _weight(layout, k=k, n=n, g=g)
    got = marlin.fits(w)
    assert got == why if why is None else got.startswith(why), got


def test_per_channel_weights_and_missing_zero_points():
    w, _ = _weight("gptq", k=1024, n=2048, g=128)
    assert marlin.fits(dataclasses.replace(w, group_size=1024)) is None
    assert marlin.fits(dataclasses.replace(w, qzeros=None)) == "no integer zero points"


@pytest.mark.parametrize("setting,batch,want", [
    (False, 64, "off (QUANTDEPLOY_MARLIN=0)"),
    (None, 8, "off (up to 8 sequences together: the engine's own batched kernel)"),
    (None, 64, "off (not a CUDA device)"),
])
def test_when_the_engine_makes_marlin_copies(setting, batch, want):
    assert marlin.choose(setting, torch.device("cpu"), batch) == (False, want)


def test_marlin_required_where_it_cannot_run_is_an_error_naming_the_way_out():
    with pytest.raises(BackendUnavailable, match=r"QUANTDEPLOY_MARLIN=1, but gptqmodel's Marlin cannot run here "
                                                 r"\(not a CUDA device\); unset it"):
        marlin.choose(True, torch.device("cpu"), 1)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["gptq", "awq", "sym"])
def test_marlin_copy_matches_the_reference_on_the_gpu(layout):
    """Marlin on the engine's QuantWeight of a gate|up weight (groups of 128 and 32) against the reference, and the
    linear (its rows interleaved for the GEMV's activation): one token on the GEMV, 2..256 on Marlin, 257 past it,
    every one in the original column order."""
    dev = torch.device("cuda")
    ok, why = marlin.available(dev)
    if not ok:
        pytest.skip(f"gptqmodel's Marlin cannot run here: {why}")
    for g in (128, 32):
        w, _ = _weight(layout, k=1024, n=2048, g=g)
        w = w.to(dev, torch.float16)
        ref = L.reference(L.repack(w))  # [N, K], rows and columns in the checkpoint's order
        maker = C.CudaLinears(dev, None, use_marlin=True)
        lin = maker.make(w, act="silu")
        assert lin.marlin is not None and "gate|up from 2 to 256 tokens" in maker.batched_note()
        for m in (1, 2, 8, 9, 16, 64, 100, 256, 257):
            x = torch.randn(m, w.k, device=dev).half()
            want = x.float() @ ref.t()
            if m == 1:  # the GEMV applies the activation
                want = gate_up_act(want.half(), "silu").float()
            got = lin(x)
            err = float((got.float() - want).norm() / want.norm())
            assert got.shape == want.shape and err < 3e-3, (g, m, err)
            if marlin.FROM_TOKENS <= m <= 256:
                assert torch.equal(got, lin.marlin(x)), m


def test_whether_marlin_is_compiled_reads_gptqmodel_s_jit_cache(tmp_path, monkeypatch):
    """A batching load warns before gptqmodel compiles Marlin (minutes) only where its cache holds no library."""
    monkeypatch.setenv("GPTQMODEL_TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert not marlin.compiled()
    lib = tmp_path / "marlin_fp16" / "fingerprint" / "gptqmodel_marlin_fp16_ops.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    assert marlin.compiled()
