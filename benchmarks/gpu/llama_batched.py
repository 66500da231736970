"""llama.cpp's own batched decode, without quantdeploy: B sequences in one context (n_seq_max = B, a unified KV
cache, flash attention, every layer offloaded), all B prompts in one llama_batch, then one llama_batch of B rows per
step, each row's next token by argmax of its logits. The baseline the batching engine is measured against, with the
same prompt and output lengths as batch_decode.py; decode tok/s counts the B x (O - 1) tokens after the first.

    python benchmarks/gpu/llama_batched.py MODEL.gguf [--batches 1,8,32,64] [--prompt 128] [--out 256] [--json F]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

import llama_cpp as lc  # before numpy: a process that loaded numpy's native stack first crashed loading a CUDA GGUF
from batch_decode import gpu_name


def run(model, n_vocab: int, batch: int, prompt: int, out: int) -> dict:
    import numpy as np

    p = lc.llama_context_default_params()
    p.n_ctx = batch * (prompt + out)
    p.n_seq_max = batch
    p.kv_unified = True
    p.n_batch = p.n_ubatch = max(512, batch)
    p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = lc.llama_init_from_model(model, p)
    if not ctx:
        raise SystemExit(f"llama_batched.py: no context of {p.n_ctx} tokens for {batch} sequences")
    rng = np.random.default_rng(0)
    prompts = rng.integers(1000, min(n_vocab, 30000), (batch, prompt))
    b = lc.llama_batch_init(max(p.n_batch, batch * prompt), 0, batch)

    def put(i: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
        b.seq_id[i][0] = seq

    def decode(n: int) -> None:
        b.n_tokens = n
        if lc.llama_decode(ctx, b) != 0:
            raise SystemExit("llama_batched.py: llama_decode failed")

    def argmax(i: int) -> int:
        return int(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), (n_vocab,)).argmax())

    t0 = time.perf_counter()
    last = []
    for s in range(batch):  # prompts in chunks of n_batch tokens, each prompt's last row sampled
        for j in range(0, prompt, p.n_batch):
            n = min(p.n_batch, prompt - j)
            for i in range(n):
                put(i, int(prompts[s, j + i]), j + i, s, j + i == prompt - 1)
            decode(n)
        last.append(argmax(n - 1))
    lc.llama_synchronize(ctx)
    t1 = time.perf_counter()
    for step in range(1, out):
        for s in range(batch):
            put(s, last[s], prompt + step - 1, s, True)
        decode(batch)  # the B rows' logits, in row order, as one array
        last = np.ctypeslib.as_array(lc.llama_get_logits(ctx), (batch, n_vocab)).argmax(1).tolist()
    t2 = time.perf_counter()
    lc.llama_batch_free(b)
    lc.llama_free(ctx)
    return {"batch": batch, "prompt_s": round(t1 - t0, 3), "decode_s": round(t2 - t1, 3),
            "decode_tok_s": round(batch * (out - 1) / (t2 - t1), 1), "tok_s": round(batch * out / (t2 - t0), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--out", type=int, default=256)
    ap.add_argument("--json")
    a = ap.parse_args()
    lc.llama_backend_init()
    mp = lc.llama_model_default_params()
    mp.n_gpu_layers = 999
    model = lc.llama_model_load_from_file(a.model.encode(), mp)
    if not model:
        raise SystemExit(f"llama_batched.py: llama.cpp could not load {a.model}")
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    rows = []
    for batch in (int(x) for x in a.batches.split(",")):
        run(model, n_vocab, batch, a.prompt, 16)  # warm-up: this batch size's kernels and graphs
        r = run(model, n_vocab, batch, a.prompt, a.out)
        rows.append(r)
        print(json.dumps(r), flush=True)
    info = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "model": a.model,
            "gpu": gpu_name(),
            "gpu_offload": bool(lc.llama_supports_gpu_offload()), "prompt_tokens": a.prompt,
            "output_tokens": a.out, "rows": rows}
    lc.llama_model_free(model)
    if a.json:
        Path(a.json).write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    sys.exit(main())
