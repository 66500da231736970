"""Incremental detokenization: emit text as soon as it is stable (no half UTF-8 characters, correct spaces)."""

from __future__ import annotations


def backend_decode(tokenizer):
    """The `tokenizers` decode behind a transformers fast tokenizer, where transformers' decode adds nothing to it
    (its own `_decode`, no clean-up of spaces): it skips transformers' per-call overhead, which every streamed
    token pays twice (benchmarks/stream_cost.py). None otherwise (the tokenizer's own decode is used)."""
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    if (not isinstance(tokenizer, PreTrainedTokenizerFast) or backend is None
            or getattr(type(tokenizer), "_decode", None) is not PreTrainedTokenizerFast._decode
            or getattr(tokenizer, "clean_up_tokenization_spaces", True)):
        return None
    return backend.decode


class IncrementalDetokenizer:
    """The prefix-offset method (as in TGI / vLLM): decode a short window and emit what changed."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.decode = backend_decode(tokenizer) or tokenizer.decode
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        dec = self.decode
        prefix = dec(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=self.skip)
        full = dec(self.ids[self.prefix_offset:], skip_special_tokens=self.skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new
        return ""
