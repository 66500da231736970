"""Streaming detokenization: the pieces concatenate to the text, whichever decode runs underneath."""

from __future__ import annotations

from quantdeploy.engine.detok import IncrementalDetokenizer, backend_decode

TEXT = ("Paris is the capital of France. Ünïcödé, 日本語のテキスト, emoji 🚀🎉, bytes 𓀀ꙮ and   spaces;\n"
        "code: def f(x):\n    return x ** 2  # ok")


def pieces(detok, ids):
    return [detok.push(i) for i in ids]


def test_the_backend_decode_streams_the_same_pieces_as_the_tokenizers_own(gptq_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gptq_path))
    assert backend_decode(tok) is not None  # a fast tokenizer without space clean-up: the direct path is taken
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    fast = pieces(IncrementalDetokenizer(tok), ids)
    slow_detok = IncrementalDetokenizer(tok)
    slow_detok.decode = tok.decode
    assert fast == pieces(slow_detok, ids)
    assert "".join(fast) == TEXT
    assert "" in fast  # some tokens end inside a character: nothing is emitted until it is whole


def test_a_tokenizer_that_cleans_up_spaces_keeps_its_own_decode(gptq_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gptq_path))
    tok.clean_up_tokenization_spaces = True
    assert backend_decode(tok) is None
    assert IncrementalDetokenizer(tok).decode == tok.decode
