"""What a streamed token costs its caller's thread in Python: the incremental detokenizer and the Generation
wrapper, fed a fixed token stream (no model), with the tokenizers decode called directly (the default where
transformers' decode adds nothing) and through transformers' decode.

    python benchmarks/stream_cost.py [TOKENIZER_DIR] [--tokens 20000] [--json OUT]

TOKENIZER_DIR: a transformers tokenizer (default: the GPTQ test fixture's, Gemma-3's, built on first use).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def per_token_us(tok, ids: list[int], direct: bool) -> float:
    from quantdeploy.backends.base import GenerationParams
    from quantdeploy.backends.generation import Generation
    from quantdeploy.engine.detok import IncrementalDetokenizer

    detok = IncrementalDetokenizer(tok)
    if not direct:
        detok.decode = tok.decode
    params = GenerationParams(max_tokens=len(ids), temperature=0, ignore_eos=True)
    pieces = ((i, detok.push(i)) for i in ids)
    t = time.perf_counter()
    for _ in Generation(pieces, prompt_tokens=1, params=params, eog_ids=set()):
        pass
    return 1e6 * (time.perf_counter() - t) / len(ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer", nargs="?")
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--json")
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from quantdeploy.engine.detok import backend_decode

    name = a.tokenizer or "the GPTQ test fixture's (Gemma-3)"
    if a.tokenizer is None:
        from quantdeploy.testing.fixtures import gptq_model

        a.tokenizer = str(gptq_model())
    if not (Path(a.tokenizer) / "tokenizer.json").is_file():
        sys.exit(f"stream_cost.py: no tokenizer.json in {a.tokenizer} (pass a transformers tokenizer directory)")
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    if backend_decode(tok) is None:
        sys.exit(f"stream_cost.py: {a.tokenizer}'s tokenizer has no direct decode path (not a transformers fast "
                 "tokenizer, or it cleans up spaces); nothing to compare")
    rng = random.Random(0)
    ids = [rng.randrange(1000, min(30000, len(tok))) for _ in range(a.tokens)]
    per_token_us(tok, ids[:1000], True)  # warm-up
    rows = {name: round(min(per_token_us(tok, ids, direct) for _ in range(3)), 2)
            for name, direct in (("direct_us_per_token", True), ("transformers_us_per_token", False))}
    out = {"command": "python benchmarks/stream_cost.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
           "tokenizer": name, "tokens": a.tokens, "python": platform.python_version(),
           "machine": platform.machine(), **rows}
    print(json.dumps(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
