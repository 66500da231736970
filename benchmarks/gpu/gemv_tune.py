"""Batch-1 W4A16 GEMV on the GPU for Llama-3-8B shapes: quantdeploy's CUDA GEMV (every variant) and our Triton
GEMV (fp32 and fp16 math) over launch configurations.
GB/s of weight bytes read, CUDA-graph timing, enough copies of each weight rotated (>= 256 MB) that L2 cannot help.
Each kernel is checked against the dequantized reference first.

    python benchmarks/gpu/gemv_tune.py [--save] [--kernels cuda,triton]
      --save: the best CUDA variant and the best Triton config per shape for this GPU, under $QUANTDEPLOY_HOME/gemv.
      Best alone is not always best in the decode step, where kernels overlap (PDL): on the H200 the saved
      down_proj pick decoded at 482 tok/s, the engine's default at 516. Check with graph_check.py before saving.
The CUDA GEMVs launch without PDL here: with it, consecutive GEMVs of the timing loop would overlap each other.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton

from quantdeploy.engine import cuda_gemv, nk_layout, tuning
from quantdeploy.engine.quant import QuantWeight, dequantize
from quantdeploy.engine.triton_gemv import w4a16_gemv
from quantdeploy.settings import get_settings

TUNED = get_settings().home / "gemv"  # where the engine reads tuned files (unless QUANTDEPLOY_TUNED_GEMV=0)
SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}


def weight(k, n, dev, group=128):
    q = torch.randint(-2 ** 31, 2 ** 31 - 1, (k // 8, n), dtype=torch.int32, device=dev)
    qz = torch.randint(-2 ** 31, 2 ** 31 - 1, (k // group, n // 8), dtype=torch.int32, device=dev)
    s = (torch.rand(k // group, n, device=dev) * 1e-2).half()
    z = nk_layout.unpack_zeros(qz, n).half() * s
    return QuantWeight(q, s, z, group, None, qz)


def rotated_weights(dev) -> dict:
    """Per shape, enough random weights (>= 4, >= 256 MB) that a rotation through them never hits L2."""
    out = {}
    for name, (k, n) in SHAPES.items():
        out[name] = [weight(k, n, dev)]
        out[name] += [weight(k, n, dev) for _ in range(max(4, -(-256 * 2 ** 20 // out[name][0].nbytes())) - 1)]
    return out


def bench(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=20)


def rotating(fn_of, items):
    i = [0]

    def fn():
        i[0] = (i[0] + 1) % len(items)
        fn_of(items[i[0]])
    return fn


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def check_cuda(dev):
    """Every variant and the dense dequantization against the reference, on the 8B shapes and odd ones (a
    Gemma-3-270M shape with group 32, an act-order permutation with N = 1000)."""
    cases = dict(SHAPES, gemma_qkv=(640, 1536), gemma_down=(2048, 640), perm=(1024, 1000))
    for name, (k, n) in cases.items():
        group = 32 if name.startswith("gemma") else 128
        w = weight(k, n, dev, group)
        if name == "perm":
            w.perm = torch.randperm(k, device=dev)
        nk = nk_layout.repack(w)
        x = torch.randn(1, k, device=dev).half()
        xp = x if w.perm is None else x[:, w.perm]
        ref = xp.float() @ nk_layout.reference(nk).t()
        errs = []
        for v in cuda_gemv.VARIANTS:
            errs.append(rel(cuda_gemv.CudaLinear(nk, dev, v, pdl_launch=False)(x), ref))
        lin = cuda_gemv.CudaLinear(nk, dev, pdl_launch=False)
        dense_err = rel(lin.dense(), nk_layout.reference(nk))
        x8 = torch.randn(8, k, device=dev).half()
        x8p = x8 if w.perm is None else x8[:, w.perm]
        prompt_err = rel(lin(x8), x8p.float() @ nk_layout.reference(nk).t())
        layout_err = rel(nk_layout.reference(nk).t(), dequantize(QuantWeight(
            w.qweight, w.scales, w.szeros, group, None, w.qzeros), torch.float32))
        print(f"check {name} {k}x{n} g{group}: gemv rel err max {max(errs):.2e} over {len(errs)} variants, "
              f"dense {dense_err:.2e}, 8-token prompt {prompt_err:.2e}, layout vs fp16 szeros {layout_err:.2e}",
              flush=True)
        assert max(errs) < 5e-3 and dense_err < 1e-3 and prompt_err < 5e-3 and layout_err < 2e-3, name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--kernels", default="cuda,triton")
    args = ap.parse_args()
    kinds = args.kernels.split(",")
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(dev), "GB/s for", " ".join(f"{n}({k}x{m})" for n, (k, m) in SHAPES.items()))
    ws = rotated_weights(dev)
    one = {name: ws[name][0] for name in SHAPES}
    xs = {name: torch.randn(k, device=dev).half() for name, (k, n) in SHAPES.items()}
    nbytes = {name: one[name].nbytes() for name in SHAPES}
    if "cuda" in kinds:
        ok, why = cuda_gemv.available(dev)
        if not ok:
            raise SystemExit(f"CUDA GEMV unavailable: {why}")
        check_cuda(dev)
        best = {}
        packed = {name: [nk_layout.repack(w) for w in ws[name]] for name in SHAPES}
        for v in cuda_gemv.VARIANTS:
            row = []
            for name in SHAPES:
                lins = [cuda_gemv.CudaLinear(nk, dev, v, pdl_launch=False) for nk in packed[name]]
                x2 = xs[name].view(1, -1)
                gbs = packed[name][0].nbytes() / bench(rotating(lambda lin: lin(x2), lins)) / 1e6
                row.append(gbs)
                if gbs > best.get(name, (0,))[0]:
                    best[name] = (gbs, list(v))
            print(f"cuda {cuda_gemv.kernel_name(*v):30s}", " ".join(f"{g:7.0f}" for g in row), flush=True)
        print("cuda best:", {name: f"{v[0]:.0f} GB/s {v[1]}" for name, v in best.items()}, flush=True)
        if args.save:
            keys = {cuda_gemv.tuned_key(k, n, packed[name][0].z): best[name][1] for name, (k, n) in SHAPES.items()}
            print("saved", tuning.save(TUNED, dev, "cuda", keys))
        del packed
    if "triton" in kinds:
        triton_sweep(ws, xs, nbytes, dev, args.save)


def triton_sweep(ws, xs, nbytes, dev, save):
    for name, (k, n) in SHAPES.items():  # correctness once, both math modes
        w = ws[name][0]
        ref = xs[name].float() @ dequantize(w, torch.float32)
        for half in (False, True):
            out = torch.zeros(n, device=dev)
            w4a16_gemv(xs[name], w, out, {"block_n": 128, "num_warps": 4, "programs_per_sm": 4, "half": half})
            print(f"triton {name} half={half}: rel err {rel(out, ref):.2e}")
    best = {}
    for half, bn, nw, per_sm in itertools.product((False, True), (64, 128, 256), (4, 8), (4, 8, 16)):
        cfg = {"block_n": bn, "num_warps": nw, "programs_per_sm": per_sm, "half": half}
        row = []
        for name, (k, n) in SHAPES.items():
            out = torch.zeros(n, device=dev)

            def one(w):
                out.zero_()
                w4a16_gemv(xs[name], w, out, cfg)

            try:
                gbs = nbytes[name] / bench(rotating(one, ws[name])) / 1e6
            except Exception:  # a config that does not compile
                row.append(None)
                continue
            row.append(gbs)
            if gbs > best.get(name, (0,))[0]:
                best[name] = (gbs, cfg)
        print("triton", cfg, " ".join(f"{v:7.0f}" if v else "   fail" for v in row), flush=True)
    for name, (gbs, cfg) in best.items():
        print(f"triton best {name}: {gbs:.0f} GB/s with {cfg}")
    if save:
        keys = {f"{k}x{n}": best[name][1] for name, (k, n) in SHAPES.items() if name in best}
        print("saved", tuning.save(TUNED, dev, "triton", keys))


if __name__ == "__main__":
    main()
