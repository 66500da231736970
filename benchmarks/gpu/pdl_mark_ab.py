"""A/B of QUANTDEPLOY_PDL_MARK (one tiny PDL-launched kernel before the decode loop: "once", or before every
replay: "each") on the 8B engine's generate(), 512-token prompt, 256 tokens, settings interleaved, 4 rounds.

    python benchmarks/gpu/pdl_mark_ab.py MODEL_DIR
"""
import os
import sys
import time
from pathlib import Path

import torch

from quantdeploy.engine.runner import FastEngine

eng = FastEngine(Path(sys.argv[1]), "cuda", torch.float16, 1024, gemv="cuda")
ids = [1000 + i for i in range(512)]
res = {"": [], "once": [], "each": []}
with torch.inference_mode():
    for r in range(5):
        for mode in (["", "once", "each"] if r % 2 else ["each", "once", ""]):
            os.environ["QUANTDEPLOY_PDL_MARK"] = mode
            ts = [time.perf_counter() for _ in eng.generate(ids, max_new=256, temperature=0, top_p=1, top_k=0,
                                                            seed=None, stop_ids=set())]
            if r:  # round 0 captures the graphs
                res[mode].append(255 / (ts[-1] - ts[0]))
for mode, v in res.items():
    print(f"{mode or 'off':5s}", " ".join(f"{x:.1f}" for x in v), "tok/s")
