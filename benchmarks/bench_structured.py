"""What constrained decoding costs: decode tok/s at batch 1 with and without a JSON schema, per backend.

    python3 benchmarks/bench_structured.py [--models gguf,gptq,awq] [--engine hf|fast] [--device cpu|cuda]
                                           [--tokens 128] [--rounds 5]

Each round generates `--tokens` tokens greedily from the same chat prompt twice, in-process: once free (ignore_eos,
so exactly that many tokens) and once under a JSON schema that cannot finish sooner (an array of at least 200
objects with a string, an integer, an enum and a nested list: keys, numbers and strings, as real schemas mix them).
Both runs decode the same number of tokens; the schema run's tok/s includes computing llguidance's mask on the host
and applying it in the sampling step (numpy for llama.cpp; one torch op for the torch engines, whose fast engine
also gives up pipelining the next step behind the host's read of the token, because the mask depends on it).
The mask's own host time per token is measured apart (the matcher replaying the schema run's tokens).
Rounds alternate free / schema so that load from other processes hits both alike; the headline compares the best
round of each (other processes only ever slow a round down), medians are recorded too.

Results go to benchmarks/results/structured_<device>.json and .md with the command that produced them. The CPU
fixtures are the tests' Gemma-3-270M GGUF (262k-token vocabulary: the mask is as large as vocabularies get) and its
GPTQ / AWQ checkpoints, `default` the default model (SmolLM2-135M, 49k tokens); on a GPU pass your own models'
paths with --models (a path, or gguf / gptq / awq / default).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT = [{"role": "user", "content": "List the people in the town register as JSON: name, age, job, pets."}]
SCHEMA = {"type": "array", "minItems": 200, "items": {
    "type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"},
        "job": {"type": "string", "enum": ["baker", "smith", "farmer", "teacher", "doctor"]},
        "pets": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "job", "pets"]}}


def fixture(name: str) -> str:
    from quantdeploy.models import default_model_path
    from quantdeploy.testing.fixtures import awq_model, gemma_gguf, gptq_model

    return str({"gguf": gemma_gguf, "gptq": gptq_model, "awq": awq_model, "default": default_model_path}[name]())


def one(model, params, rf=None) -> tuple[dict, list[int] | None]:
    from quantdeploy.chat.prepare import prepare_chat

    prompt = prepare_chat(model, PROMPT, response_format=rf)
    gen = model.start_chat(prompt, params)
    text = "".join(gen)
    u = gen.usage
    ids = model.tokenize(text, add_bos=False) if rf else None
    return {"tokens": u.completion_tokens, "tok_s": round(u.decode_tok_s, 2), "finish": gen.finish_reason}, ids


def mask_ms(model, grammar: str, ids: list[int]) -> float:
    """Host time per token of computing the mask and advancing the matcher, over a schema run's own tokens."""
    import numpy as np

    from quantdeploy import GenerationParams

    state = model.grammar_state(GenerationParams(grammar=grammar))
    logits = np.zeros(state.vocab_size, dtype=np.float32)
    t0 = time.perf_counter()
    n = 0
    for tok in ids:
        state.mask_numpy(logits)
        if not state.matcher.consume_token(tok):
            break
        n += 1
    return round((time.perf_counter() - t0) / max(n, 1) * 1000, 3)


def run(path: str, args) -> dict:
    import quantdeploy
    from quantdeploy import GenerationParams
    from quantdeploy.structured import response_format_grammar

    model = quantdeploy.load(path, device=args.device, engine=args.engine)
    rf = {"type": "json_schema", "json_schema": {"name": "register", "schema": SCHEMA}}
    grammar = response_format_grammar(rf)
    free_p = GenerationParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    schema_p = GenerationParams(max_tokens=args.tokens, temperature=0)
    one(model, free_p)  # warm-up: graphs, kernels, and the grammar's vocabulary index
    _, ids = one(model, schema_p, rf)
    free, constrained = [], []
    for _ in range(args.rounds):
        free.append(one(model, free_p)[0])
        r, ids = one(model, schema_p, rf)
        constrained.append(r)
    best_free = max(r["tok_s"] for r in free)
    best_schema = max(r["tok_s"] for r in constrained)
    out = {"model": path, "format": model.format, "backend": model.backend, "device": model.device,
           "kernel": model.kernel_report().get("kernel"), "vocab": model.grammar_tokenizer().vocab_size,
           "free_tok_s": best_free, "schema_tok_s": best_schema,
           "slowdown_pct": round(100 * (1 - best_schema / best_free), 1) if best_free else None,
           "free_median": statistics.median(r["tok_s"] for r in free),
           "schema_median": statistics.median(r["tok_s"] for r in constrained),
           "mask_ms_per_token": mask_ms(model, grammar, ids or []), "rounds": {"free": free, "schema": constrained}}
    # the host's grammar work as a share of a free token's time: what the mask costs where the rounds are noisy
    out["mask_pct_of_token"] = round(out["mask_ms_per_token"] * best_free / 10, 1) if best_free else None
    model.close()
    return out


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Constrained decoding cost (batch 1, greedy)", "", f"`{command}`", "",
             "| model | backend | device | vocab | free tok/s | schema tok/s | slower | mask ms/token | mask / token |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {Path(r['model']).name} ({r['format']}) | {r['backend']} ({r['kernel']}) | {r['device']} | "
                     f"{r['vocab']} | {r['free_tok_s']} | {r['schema_tok_s']} | {r['slowdown_pct']} % | "
                     f"{r['mask_ms_per_token']} | {r['mask_pct_of_token']} % |")
    lines += ["", "Best round of each; free: ignore_eos, same token count. Medians and every round: the JSON file.",
              "mask ms/token: llguidance's mask and matcher step per token on the host, measured alone over the "
              "schema run's tokens; mask / token: that time as a share of a free token's (best round)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gguf,gptq,awq",
                    help="comma-separated: gguf, gptq, awq (the fixtures), default (the default model) or paths")
    ap.add_argument("--engine", default="auto", help="GPTQ/AWQ decode loop: auto, hf or fast")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    results = []
    for m in args.models.split(","):
        path = fixture(m) if m in ("gguf", "gptq", "awq", "default") else m
        r = run(path, args)
        print(json.dumps({k: v for k, v in r.items() if k != "rounds"}), flush=True)
        results.append(r)
    command = "python3 benchmarks/bench_structured.py " + shlex.join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.device.split(":")[0] + ("" if args.engine == "auto" else f"_{args.engine}")
    (out / f"structured_{tag}.json").write_text(json.dumps({"command": command, "results": results}, indent=1) + "\n")
    (out / f"structured_{tag}.md").write_text(markdown(results, command))
    print(markdown(results, command))


if __name__ == "__main__":
    main()
