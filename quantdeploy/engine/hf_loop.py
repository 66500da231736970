"""The plain decode loop over a transformers model: prefill, then one forward per token with a KV cache.

Works on CPU and CUDA; it is the reference the fast engine is checked against. Sampling stays on the device;
the only host sync per token is reading the sampled id (needed to stop at end-of-turn tokens).
"""

from __future__ import annotations

from typing import Iterator

from ..backends.base import GenerationParams
from .detok import IncrementalDetokenizer
from .sampling import make_generator, sample


def stream_tokens(model, tokenizer, prompt_ids: list[int], params: GenerationParams, eog: set[int],
                  max_context: int) -> Iterator[tuple[int, str]]:
    import torch

    device = next(model.parameters()).device
    gen = make_generator(device, params.seed)
    if params.seed is not None:
        torch.manual_seed(int(params.seed))
    detok = IncrementalDetokenizer(tokenizer)
    room = max_context - len(prompt_ids)
    with torch.inference_mode():
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = out.logits[:, -1]
        for _ in range(max(0, room)):
            tok_t = sample(logits, params.temperature, params.top_p, params.top_k, gen)
            tok = int(tok_t)
            if tok in eog and not params.ignore_eos:
                yield tok, ""
                return
            yield tok, detok.push(tok)
            out = model(input_ids=tok_t.view(1, 1), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1]
