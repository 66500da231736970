"""The text bench ships with: prompts for the speed runs and the corpus for perplexity / KL (--quality).

It is original prose written for this purpose, kept apart from the calibration text the test fixtures are
quantized with (scoring a model on its own calibration data would flatter it).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import UsageError

TEXT_FILE = Path(__file__).with_name("eval_text.txt")


@lru_cache(maxsize=1)
def shipped_text() -> str:
    return TEXT_FILE.read_text(encoding="utf-8")


def text_ids(model, n: int) -> list[int]:
    """The first n tokens (BOS included) of the shipped text in this model's tokenizer; the text repeats when
    n is longer than it."""
    if n < 2:
        raise UsageError(f"need at least 2 tokens of text, got {n}")
    ids = model.tokenize(shipped_text(), add_bos=True)
    body = model.tokenize("\n\n" + shipped_text(), add_bos=False)
    while len(ids) < n:
        ids += body
    return ids[:n]
