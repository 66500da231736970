"""llguidance's view of a model's vocabulary: every token's bytes, which tokens are special, which end a reply.

Built once per loaded model (about a second per 100k tokens) and cached on it by LoadedModel.grammar_tokenizer().
"""

from __future__ import annotations

from typing import Any, Iterable


def from_llama_cpp(llm: Any, eog_ids: Iterable[int]) -> Any:
    """From a llama_cpp.Llama's own vocabulary (the GGUF's), so no Hugging Face tokenizer is needed. As
    llguidance.llamacpp.lltokenizer_from_vocab does, through llama.cpp's current vocabulary calls: control tokens
    (and user-defined <...> tokens) are special, which llguidance marks with a leading 0xff byte."""
    import ctypes

    import llama_cpp
    from llguidance import LLTokenizer

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    size = 16 * 1024
    buf = ctypes.create_string_buffer(size + 1)
    control, user = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL, llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    to_piece, get_attr = llama_cpp.llama_token_to_piece, llama_cpp.llama_vocab_get_attr
    tokens: list[bytes] = []
    for t in range(n):
        k = to_piece(vocab, t, buf, size, 0, True)
        if k < 0:
            raise ValueError(f"token {t} of the vocabulary is longer than {size} bytes")
        piece = buf.raw[:k]
        attr = get_attr(vocab, t)
        if attr & control or (attr & user and piece.startswith(b"<") and piece.endswith(b">")):
            piece = b"\xff" + piece
        tokens.append(piece)
    tokens += [b""] * (llm.n_vocab() - len(tokens))
    fptr = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return LLTokenizer.from_llamacpp(tokens=tokens, vocab_ptr=vocab, tokenize_fptr=fptr, eos_token=sorted(eog_ids),
                                     slices=None)


def from_hf(tokenizer: Any, vocab_size: int, eog_ids: Iterable[int]) -> Any:
    """From a fast Hugging Face tokenizer; vocab_size is the width of the model's logits (may exceed the
    tokenizer's: padded embedding rows are never allowed)."""
    from llguidance.hf import from_tokenizer

    return from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=sorted(eog_ids))
