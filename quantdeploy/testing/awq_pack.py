"""Pack an HF float checkpoint into an AWQ-format checkpoint (GEMM layout, as AutoAWQ writes it).

Per group of `group_size` input channels: asymmetric int4 with a zero point and an fp16 scale, the clip range
chosen per group by a small search that minimises the reconstruction error (AWQ's clip search, weight-only).
Layout (AutoAWQ WQLinear_GEMM): qweight int32 [in, out/8] and qzeros int32 [in/g, out/8], packed along the
output dim in the order [0, 2, 4, 6, 1, 3, 5, 7]; scales fp16 [in/g, out]. W[in, out] = (q - z) * s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantize_rtn(w, bits: int = 4, group_size: int = 128, grid: int = 10):
    """w: [out, in] float. Returns (q int32 [out, in], zeros int32 [out, in/g], scales float [out, in/g])."""
    import torch

    out_f, in_f = w.shape
    qmax = 2 ** bits - 1
    wg = w.float().reshape(out_f, in_f // group_size, group_size)
    best_err = best = None
    for i in range(grid):
        shrink = 1.0 - i * 0.02
        wmax, wmin = wg.amax(-1) * shrink, wg.amin(-1) * shrink
        wmax, wmin = torch.maximum(wmax, torch.zeros_like(wmax)), torch.minimum(wmin, torch.zeros_like(wmin))
        scales = ((wmax - wmin) / qmax).clamp(min=1e-8)
        scales = scales.half().float()  # stored in fp16: choose with the rounded value
        zeros = torch.round(-wmin / scales).clamp(0, qmax)
        q = torch.clamp(torch.round(wg / scales[..., None]) + zeros[..., None], 0, qmax)
        err = ((q - zeros[..., None]) * scales[..., None] - wg).pow(2).sum(-1)
        if best_err is None:
            best_err, best = err, (q, zeros, scales)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = tuple(torch.where(better[..., None] if t.dim() == 3 else better, t, b)
                         for t, b in zip((q, zeros, scales), best))
    q, zeros, scales = best
    return q.reshape(out_f, in_f).int(), zeros.int(), scales


def pack_int4(x, order=AWQ_ORDER):
    """x: int32 [rows, cols] of 4-bit values -> int32 [rows, cols/8] in AWQ order."""
    import torch

    rows, cols = x.shape
    x = x.reshape(rows, cols // 8, 8)
    packed = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for i, src in enumerate(order):
        packed |= (x[..., src].to(torch.int64) & 0xF) << (4 * i)
    return packed.to(torch.int32) if packed.max() < 2 ** 31 else (packed - (packed >= 2 ** 31) * 2 ** 32).to(torch.int32)


def pack_awq_checkpoint(src: Path, out: Path, *, bits: int = 4, group_size: int = 128) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    assert bits == 4, "only 4-bit AWQ is packed here"
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    result = {}
    for name, t in tensors.items():
        base = name[: -len(".weight")] if name.endswith(".weight") else None
        if base and base.split(".")[-1] in LINEARS and t.dim() == 2 and t.shape[1] % group_size == 0:
            q, zeros, scales = quantize_rtn(t, bits, group_size)
            result[base + ".qweight"] = pack_int4(q.t().contiguous())
            result[base + ".qzeros"] = pack_int4(zeros.t().contiguous())
            result[base + ".scales"] = scales.t().contiguous().half()
        else:
            result[name] = t.to(torch.float16) if t.is_floating_point() else t
    save_file(result, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True,
                                  "version": "gemm", "format": "gemm", "modules_to_not_convert": None}
    cfg["torch_dtype"] = cfg["dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in src.iterdir():
        if f.name not in ("config.json",) and not f.name.endswith(".safetensors") and f.is_file() \
                and f.name != "model.safetensors.index.json" and not f.name.startswith("."):
            shutil.copy2(f, out / f.name)


def _gemv_width(groups: int, group_size: int) -> int:
    """Packed zero-point words per row in the GEMV layout (AutoAWQ's calculate_zeros_width)."""
    mult = {128: 1, 64: 2, 32: 4, 16: 8}[min(group_size, 128)]
    base = -(-groups // 8)
    return -(-base // mult) * mult


def gemm_to_gemv(ckpt: Path) -> None:
    """Rewrite an AWQ GEMM checkpoint in place as AutoAWQ's GEMV layout: per output row, qweight [N, K/8] packed
    along K in plain order, qzeros [N, W] and fp16 scales [N, 8W] along the groups (zero-padded to W words)."""
    import torch
    from safetensors.torch import load_file, save_file

    from ..engine.quant import unpack_rows

    files = sorted(ckpt.glob("*.safetensors"))
    cfg = json.loads((ckpt / "config.json").read_text())
    qc = cfg["quantization_config"]
    for f in files:
        t = load_file(str(f))
        for name in [n for n in t if n.endswith(".qweight")]:
            base = name[: -len(".qweight")]
            q = unpack_rows(t[name], AWQ_ORDER)  # [K, N]
            k = q.shape[0]
            group = qc["group_size"] if qc["group_size"] > 0 else k
            zeros = unpack_rows(t[base + ".qzeros"], AWQ_ORDER)  # [G, N]
            scales = t[base + ".scales"]
            g, n = scales.shape
            width = _gemv_width(g, group)
            zpad = torch.zeros(n, width * 8, dtype=torch.int32)
            zpad[:, :g] = zeros.t()
            spad = torch.zeros(n, width * 8, dtype=torch.float16)
            spad[:, :g] = scales.t().half()
            t[name] = pack_int4(q.t().contiguous(), order=tuple(range(8)))
            t[base + ".qzeros"] = pack_int4(zpad, order=tuple(range(8)))
            t[base + ".scales"] = spad
        save_file(t, str(f), metadata={"format": "pt"})
    qc["version"] = qc["format"] = qc["checkpoint_format"] = "gemv"
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=2))
