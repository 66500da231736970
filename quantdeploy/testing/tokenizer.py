"""A small SentencePiece tokenizer for the tiny test checkpoints, trained on the shipped calibration text.

One BPE model with byte fallback (every string encodes; as Llama's and Gemma's tokenizers do) and the chat
templates' turn markers as single tokens, written as `tokenizer.model` (what llama.cpp's converter reads) plus the
transformers files converted from it (`tokenizer.json`, `tokenizer_config.json`). Training takes well under a
second, so no real tokenizer (and no 150k-row embedding) is needed to test an architecture.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

VOCAB_SIZE = 640  # a multiple of 128: the quantized lm_head variant splits it into whole groups
CORPUS = (Path(__file__).with_name("calibration.txt"), Path(__file__).parents[1] / "bench" / "eval_text.txt")
# <unk> <s> </s> <pad> first, as in Llama's SentencePiece model; then the turn markers of the built-in templates
SPECIALS = ("<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<|user|>", "<|assistant|>", "<|end|>", "[INST]", "[/INST]",
            "<|endoftext|>")  # llama.cpp looks <|endoftext|> up in every Phi-3 vocabulary
BOS, EOS, PAD = 1, 2, 3


def corpus_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in CORPUS)


def train_sentencepiece() -> bytes:
    import sentencepiece as spm

    lines = [line for line in corpus_text().splitlines() if line.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=VOCAB_SIZE, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=BOS, eos_id=EOS, pad_id=PAD, user_defined_symbols=list(SPECIALS), num_threads=1,
        minloglevel=2)
    return buf.getvalue()


def special_id(token: str) -> int:
    return 4 + SPECIALS.index(token)


def write_tokenizer(out: Path, model: bytes, *, end_of_turn: str | None, chat_template: str | None) -> None:
    """tokenizer.model + the transformers files converted from it (LlamaTokenizer: the SentencePiece BPE model
    as a fast tokenizer), with the family's end-of-turn token as a special token."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model)
    cfg = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
           "add_prefix_space": False, "model_max_length": 4096}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = AutoTokenizer.from_pretrained(str(out))
    if end_of_turn:
        tok.add_special_tokens({"additional_special_tokens": [end_of_turn]})
    if chat_template:
        tok.chat_template = chat_template
    tok.save_pretrained(str(out))
