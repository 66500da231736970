"""Run under TRITON_INTERPRET=1 by tests/test_fused_ops.py: the batched W4A16 GEMM (triton_gemm) on every meta
form of the CUDA GEMV's NK layout, against the layout's torch reference."""
import torch
from quantdeploy.engine import nk_layout as L
from quantdeploy.engine import triton_gemm as TG
from quantdeploy.engine.quant import QuantWeight
torch.manual_seed(0)

def weight(k, n, group, zeros):
    qw = torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int64).to(torch.int32)
    qz = torch.zeros(k // group, n // 8, dtype=torch.int32)
    for i in range(8):
        qz |= (zeros[:, i::8].to(torch.int32) << (4 * i))
    sc = (torch.rand(k // group, n) * 0.02 + 0.001).half()
    return QuantWeight(qweight=qw, scales=sc, szeros=None, group_size=group, qzeros=qz)

for (k, n, group, form) in ((256, 64, 64, "sym"), (256, 64, 128, "bytes"), (320, 64, 64, "words"), (256, 128, 64, "split")):
    g = k // group
    zeros = torch.full((g, n), 8) if form in ("sym", "split") else torch.randint(0, 16, (g, n))
    w = weight(k, n, group, zeros)
    nk = L.repack(w, interleave=form == "split")
    want_form = {"sym": L.MetaForm.SCALES_ONLY, "bytes": L.MetaForm.ZERO_BYTES, "words": L.MetaForm.WORDS,
                 "split": L.MetaForm.SCALES_ONLY}[form]
    assert nk.form is want_form, (form, nk.form)
    dense = L.reference(nk)  # [N, K], rows in the NK order
    for m in (2, 5, 17):
        x = (torch.randn(m, k) * 0.5).half()
        y = TG.gemm(x, nk, sms=4).float()
        ref = x.float() @ dense.t()
        if nk.split:
            half = n // 2
            ref = torch.cat([ref[:, 0::2], ref[:, 1::2]], 1)
        err = float((y - ref).norm() / ref.norm())
        print(form, m, err)
        assert err < 2e-3, (form, m, err)
print("ok")
