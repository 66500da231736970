"""One token through gate|up (with its activation) and down of the Llama-3-8B shape: the engine's batch-1 GEMV on
its own NK layout against the GEMV over Marlin's layout (engine/marlin_gemv.py) at every legal K split (warps per
block; with --ks, also blocks per super tile), and
gptqmodel's Marlin GEMM at one token, on the same weights. The one-copy configuration (QUANTDEPLOY_ONE_COPY=1) is
worth making the default where the Marlin-layout GEMV is within a few percent of the NK GEMV.
Each kernel is checked against the reference first (GPTQ's symmetric form and zero points per group). Times are
CUDA-graph replays over enough copies of each weight (>= 256 MB) that L2 cannot help; GB/s counts the bytes of the
layout each kernel reads (Marlin's and ours hold the same weights, their scales and zero points alike).

    python benchmarks/gpu/marlin_gemv_ab.py [--json OUT] [--forms sym,zeros] [--splits 4,8,16,28] [--ks 1,2,4]
                                            [--no-marlin]

--no-marlin packs Marlin's layout with the engine's reference packing (marlin_gemv.repack_reference, which the GPU
tests check against gptq_marlin_repack) and does not time Marlin, so gptqmodel need not compile its kernels first.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from quantdeploy.engine import cuda_gemv, marlin, marlin_gemv, nk_layout
from quantdeploy.engine.arch_ops import gate_up_act

from gemm_ab import weight
from gemv_tune import bench, rel, rotating

SHAPES = {"gate_up": (4096, 28672, "silu"), "down": (14336, 4096, None)}


def reference_y(w, x, act):
    y = x.float() @ nk_layout.reference(nk_layout.repack(w)).t()
    return gate_up_act(y.half(), act).float() if act else y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--forms", default="sym,zeros", help="meta forms: sym (scales only), zeros (zero points)")
    ap.add_argument("--splits", help="K splits of the Marlin-layout GEMV to time (default: every legal one)")
    ap.add_argument("--ks", default="1", help="blocks per super tile to time (default: %(default)s)")
    ap.add_argument("--no-marlin", action="store_true",
                    help="pack Marlin's layout with the reference packing; do not time Marlin (no gptqmodel JIT)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    ok, why = (True, "") if args.no_marlin else marlin.available(dev)
    if not ok:
        raise SystemExit(f"marlin_gemv_ab.py: gptqmodel's Marlin cannot run here ({why})")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(torch.cuda.get_device_name(dev), flush=True)
    rows, matches = [], True
    for form in args.forms.split(","):
        sym = form == "sym"
        for name, (k, n, act) in SHAPES.items():
            w0 = weight(k, n, dev, sym)
            count = max(4, -(-256 * 2 ** 20 // w0.nbytes()))
            ws = [w0] + [weight(k, n, dev, sym) for _ in range(count - 1)]
            nk_lins = [cuda_gemv.CudaLinear(nk_layout.repack(w, interleave=act is not None), dev, act=act,
                                            pdl_launch=False) for w in ws]
            mls = [marlin.MarlinLinear(w, dev, marlin_gemv.repack_qweight(w.qweight) if args.no_marlin else None)
                   for w in ws]
            x = torch.randn(1, k, device=dev).half()
            want = reference_y(w0, x, act)
            wanted = [int(s) for s in args.splits.split(",")] if args.splits else None
            cases = [(s, ks) for ks in (int(v) for v in args.ks.split(","))
                     for s in marlin_gemv.legal_splits(k, 128, ks) if wanted is None or s in wanted]
            default = marlin_gemv.default_split(k, n, 128, act is not None, sms)
            row = dict(shape=name, k=k, n=n, form=form, act=act, default_split=default,
                       nk_bytes=nk_lins[0].w.nbytes(), marlin_bytes=mls[0].nbytes())
            err = rel(nk_lins[0](x), want)
            row["nk_gemv_err"] = float(f"{err:.1e}")
            row["nk_gemv_us"] = round(bench(rotating(lambda lin: lin(x), nk_lins)) * 1e3, 2)
            row["nk_gemv_label"] = nk_lins[0].label
            for s, ks in cases:
                key = f"marlin_gemv_s{s}" + (f"_k{ks}" if ks > 1 else "")
                gemvs = [marlin_gemv.MarlinGemv(m, 128, dev, act, split=s, ks=ks, pdl_launch=False) for m in mls]
                err = rel(gemvs[0](x), want)
                row[f"{key}_err"] = float(f"{err:.1e}")
                matches &= err < 3e-3
                row[f"{key}_us"] = round(bench(rotating(lambda g: g(x), gemvs)) * 1e3, 2)
                row[f"{key}_resources"] = cuda_gemv.resources(gemvs[0].label, dev.index or 0, marlin_gemv.SOURCE)
            if not args.no_marlin:
                row["marlin_gemm_m1_us"] = round(bench(rotating(lambda m: m(x), mls)) * 1e3, 2)
            best = min((v, key[len("marlin_gemv_"):-len("_us")]) for key, v in row.items()
                       if key.startswith("marlin_gemv_s") and key.endswith("_us"))
            row["best_split"], row["best_vs_nk"] = best[1], round(row["nk_gemv_us"] / best[0], 3)
            row["best_gbs"] = round(row["marlin_bytes"] / best[0] / 1e3)
            row["nk_gbs"] = round(row["nk_bytes"] / row["nk_gemv_us"] / 1e3)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del nk_lins, mls, ws
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(dev), date=time.strftime("%Y-%m-%d"),
                           command="python benchmarks/gpu/marlin_gemv_ab.py " + " ".join(sys.argv[1:]),
                           torch=torch.__version__, python=platform.python_version(), matches_reference=matches,
                           rows=rows), f, indent=1)
    if not matches:
        raise SystemExit("marlin_gemv_ab.py: the Marlin-layout GEMV does not match the reference (see _err above)")


if __name__ == "__main__":
    main()
