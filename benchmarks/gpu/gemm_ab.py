"""Batched W4A16 products on the GPU for Llama-3-8B shapes, M = 2..64 decode rows: quantdeploy's tensor-core kernel
(qd_w4a16_mma, every K split and rows per block, the weights in registers or through a 2-step ring in shared
memory) against the Triton W4A16 GEMM, the batch-1 GEMV and, with --marlin, gptqmodel's Marlin GEMM, on the same
weights (Marlin's copy repacked to its own layout).
Each kernel is checked against the dequantized reference first (both meta forms: GPTQ's one zero point, AWQ's zero
point per group; a gate|up weight with interleaved rows). Times are CUDA-graph replays over enough copies of each
weight (>= 256 MB) that L2 cannot help; GB/s counts the weight bytes read once per product.

    python benchmarks/gpu/gemm_ab.py [--json OUT] [--save] [--tokens 32,64] [--shapes qkv,o] [--forms sym]
                                     [--variants 8:2,8:2:2,4:4:2] [--marlin]

--save writes the fastest (warps, rows[, stages]) per shape, meta form and tile count, where it is not the default,
to the per-GPU tuned file the engine reads (tuning.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from quantdeploy.engine import cuda_gemv, marlin, nk_layout, tuning
from quantdeploy.engine.quant import QuantWeight
from quantdeploy.engine.triton_gemm import gemm

from gemv_tune import SHAPES, bench, rel, rotating

TOKENS = (2, 8, 16, 32, 64, 128)
# (warps splitting K, tiles of 16 rows per block, stages of the weights' ring in shared memory: 0 none)
SWEEP = [(w, r, p) for p in (0, 2) for r in (1, 2, 4) for w in (2, 4, 8)]


def weight(k, n, dev, sym: bool, group=128):
    q = torch.randint(-2 ** 31, 2 ** 31 - 1, (k // 8, n), dtype=torch.int32, device=dev)
    if sym:  # every zero point 8, as the engine holds a GPTQ checkpoint's (stored there as 7): the scales alone
        qz = torch.full((k // group, n // 8), marlin.ZEROS_8, dtype=torch.int32, device=dev)
    else:
        qz = torch.randint(-2 ** 31, 2 ** 31 - 1, (k // group, n // 8), dtype=torch.int32, device=dev)
    s = (torch.rand(k // group, n, device=dev) * 1e-2).half()
    z = nk_layout.unpack_zeros(qz, n).half() * s
    return QuantWeight(q, s, z, group, None, qz)


def check_marlin(dev) -> bool:
    """Whether the engine's Marlin linear (gptqmodel's kernel) computes the reference's product on an 8B shape, both
    meta forms (scales only: uint4b8; zero points: uint4 with them)."""
    bad = []
    for sym in (True, False):
        w = weight(4096, 6144, dev, sym)
        ref = nk_layout.reference(nk_layout.repack(w))
        fn = marlin.MarlinLinear(w, dev)
        errs = [rel(fn(x), x.float() @ ref.t()) for x in (torch.randn(m, 4096, device=dev).half() for m in (1, 8, 64))]
        bad.append(max(errs) >= 3e-3)
        print(f"check marlin 4096x6144 {'sym' if sym else 'zeros'}: {'MISMATCH' if bad[-1] else 'ok'}, relative "
              f"error at M = 1, 8, 64: {', '.join(f'{e:.1e}' for e in errs)}", flush=True)
    return not any(bad)


def check(dev, sweep=SWEEP) -> bool:
    """Whether the batched kernel matches the reference on every case (each case's errors are printed): the default
    warps with 1, 2 and 4 tiles per block, and each ring variant of the sweep."""
    bad = []
    kinds = [(None, r, None) for r in (1, 2, 4)] + [v for v in sweep if v[2]]
    cases = [(4096, 6144, False), (640, 1536, False), (576, 960, False), (2048, 640, True)]
    for sym in (True, False):
        for k, n, inter in cases + [(1024, 512, True)]:
            group = 32 if k in (640, 2048) else 64 if k == 576 else 128
            w = weight(k, n, dev, sym, group)
            nk = nk_layout.repack(w, interleave=inter)
            ref = nk_layout.reference(nk_layout.repack(w))  # [N, K], rows in the original order
            lin = cuda_gemv.CudaLinear(nk, dev, pdl_launch=False)
            assert lin.mma_ok, (k, n)
            errs = []
            for m in (1, 2, 3, 8, 9, 16, 31, 64, 100):
                x = torch.randn(m, k, device=dev).half()
                errs.append(max(rel(lin.mma(x, s, r, p), x.float() @ ref.t()) for s, r, p in kinds))
            verdict = "ok" if max(errs) < 3e-3 else "MISMATCH"
            bad.append(verdict != "ok")
            print(f"check {k}x{n} g{group} form {nk.z} interleaved={inter}: mma {verdict}, relative error at "
                  f"M = 1, 2, 3, 8, 9, 16, 31, 64, 100: {', '.join(f'{e:.1e}' for e in errs)}", flush=True)
    return not any(bad)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--save", action="store_true", help="write the fastest choices to the per-GPU tuned file")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="token counts (default: %(default)s)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="8B shapes (default: %(default)s)")
    ap.add_argument("--forms", default="sym,zeros", help="meta forms: sym (scales only), zeros (zero points)")
    ap.add_argument("--variants", help="warps:rows[:stages] to time, comma-separated (default: the whole sweep)")
    ap.add_argument("--marlin", action="store_true",
                    help="time gptqmodel's Marlin GEMM too (compiled by gptqmodel at its first use)")
    args = ap.parse_args()
    tokens = [int(v) for v in args.tokens.split(",")]
    shapes = {name: SHAPES[name] for name in args.shapes.split(",")}
    forms = [f == "sym" for f in args.forms.split(",")]
    try:
        sweep = [tuple(int(v) for v in (p + ":0").split(":")[:3]) for p in args.variants.split(",")] \
            if args.variants else SWEEP
    except ValueError:
        ap.error(f"--variants: warps:rows[:stages] pairs separated by commas, got {args.variants!r}")
    tuned = {}
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(torch.cuda.get_device_name(dev), flush=True)
    ok = check(dev, sweep)
    marlin_ok = args.marlin and check_marlin(dev)
    for tiles in (4, 8):  # registers per thread, and bytes spilled to local memory (a kernel that spills waits on it)
        for s, r, p in sweep:
            if cuda_gemv.fit_mma_stages(tiles, s, r, p) == p:
                name = cuda_gemv.mma_name(tiles, s, 8, r, p)
                print(name, json.dumps(cuda_gemv.resources(name, dev.index or 0)), flush=True)
    rows = []
    for sym in forms:
        for name, (k, n) in shapes.items():
            w0 = weight(k, n, dev, sym)
            count = max(4, -(-256 * 2 ** 20 // w0.nbytes()))
            nks = [nk_layout.repack(w0)] + [nk_layout.repack(weight(k, n, dev, sym)) for _ in range(count - 1)]
            nbytes = nks[0].nbytes()
            lins = [cuda_gemv.CudaLinear(nk, dev, pdl_launch=False) for nk in nks]
            marlins = [marlin.MarlinLinear(w0, dev)] + [marlin.MarlinLinear(weight(k, n, dev, sym), dev)
                                                         for _ in range(count - 1)] if marlin_ok else []
            x1 = torch.randn(1, k, device=dev).half()
            t1 = bench(rotating(lambda lin: lin(x1), lins))
            for m in tokens:
                x = torch.randn(m, k, device=dev).half()
                row = dict(shape=name, k=k, n=n, form=nks[0].z, m=m, gemv_us=round(t1 * 1e3, 1))
                row["triton_us"] = round(bench(rotating(lambda lin: gemm(x, lin.w, sms), lins)) * 1e3, 1)
                row["mma_default_us"] = round(bench(rotating(lambda lin: lin.mma(x), lins)) * 1e3, 1)
                if marlins:
                    row["marlin_us"] = round(bench(rotating(lambda fn: fn(x), marlins)) * 1e3, 1)
                if m <= cuda_gemv.MMA_TOKENS:
                    for s, r, p in sweep:
                        if cuda_gemv.fit_mma_stages(cuda_gemv.mma_tiles(m), s, r, p) != p:
                            continue  # the ring does not fit the block's shared memory
                        for lin in lins:  # compile and load outside the graph capture
                            lin.mma(x, s, r, p)
                        row[f"mma_s{s}_r{r}{f'_p{p}' if p else ''}_us"] = round(
                            bench(rotating(lambda lin, s=s, r=r, p=p: lin.mma(x, s, r, p), lins)) * 1e3, 1)
                best = min(v for key, v in row.items() if key.startswith("mma_"))
                row["mma_best"] = next(key for key, v in row.items() if key.startswith("mma_") and v == best)
                row["mma_best_gbs"] = round(nbytes / best / 1e3)
                row["gemv_gbs"] = round(nbytes / row["gemv_us"] / 1e3)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if m in (8, 16, 32, 64) and row["mma_best"] != "mma_default_us":
                    choice = [int(v[1:]) for v in row["mma_best"].split("_")[1:-1]]  # warps, rows[, stages]
                    tuned[cuda_gemv.mma_tuned_key(k, n, nks[0].form, cuda_gemv.mma_tiles(m))] = choice
            del lins, nks, marlins
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(dev), date=time.strftime("%Y-%m-%d"),
                           command="python benchmarks/gpu/gemm_ab.py " + " ".join(sys.argv[1:]),
                           torch=torch.__version__,
                           python=platform.python_version(), matches_reference=ok,
                           marlin_matches_reference=marlin_ok if args.marlin else None, rows=rows), f, indent=1)
    if args.save and ok:
        from quantdeploy.settings import get_settings

        print("saved", tuning.save(get_settings().home / "gemv", dev, "cuda", tuned), json.dumps(tuned), flush=True)
    if not ok:
        raise SystemExit("gemm_ab.py: the batched kernel does not match the reference (MISMATCH above)")


if __name__ == "__main__":
    main()
