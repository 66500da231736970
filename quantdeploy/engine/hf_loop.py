"""The plain decode loop over a transformers model: prefill, then one forward per token with a KV cache.

Works on CPU and CUDA; it is the reference the fast engine is checked against. Sampling stays on the device;
the only host sync per token is reading the sampled id (needed to stop at end-of-turn tokens).
"""

from __future__ import annotations

from typing import Iterator

from ..backends.base import GRAMMAR_END, GenerationParams
from .detok import IncrementalDetokenizer
from .sampling import Rows, make_generator, sample_rows, token_logprob


def stream_tokens(model, tokenizer, prompt_ids: list[int], params: GenerationParams, eog: set[int],
                  max_context: int, grammar=None) -> Iterator[tuple]:
    """Yield (token, text piece), or (token, text piece, TokenLogprob) with params.logprobs; `grammar` (a
    structured.GrammarState) restricts each step's tokens through sampling's bitmask."""
    import torch

    device = next(model.parameters()).device
    gen = make_generator(device, params.seed)
    if params.seed is not None:
        torch.manual_seed(int(params.seed))
    rows = Rows.of([params], [gen])
    detok = IncrementalDetokenizer(tokenizer)
    room = max_context - len(prompt_ids)
    with torch.inference_mode():
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = out.logits[:, -1]
        for _ in range(max(0, room)):
            if grammar is not None and grammar.done:
                yield GRAMMAR_END, ""
                return
            mask = None if grammar is None else torch.from_numpy(grammar.fill()).to(device, non_blocking=True)
            s = sample_rows(logits, rows, mask)
            tok_t = s.tokens[0]
            tok = int(tok_t)
            if grammar is not None:
                grammar.accept(tok)
            if tok in eog and not params.ignore_eos:
                yield tok, ""
                return
            piece = detok.push(tok)
            yield (tok, piece) if s.logprobs is None else (tok, piece, token_logprob(s, 0))
            out = model(input_ids=tok_t.view(1, 1), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1]

