"""One generation's grammar, followed token by token: which tokens may come next (a bitmask), and whether the
grammar is complete. Backends apply the mask inside their sampling step (numpy for llama.cpp's logits, one torch
op on the device for the torch engines); nothing here loops over the vocabulary in Python."""

from __future__ import annotations

from typing import Any

from ..errors import QuantDeployError


class GrammarState:
    def __init__(self, tokenizer: Any, grammar: str, vocab_size: int):
        import llguidance
        import numpy as np

        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise QuantDeployError(f"the grammar could not be compiled: {self.matcher.get_error()}")
        self.vocab_size = vocab_size
        self.bitmask = np.full((1, (vocab_size + 31) // 32), -1, dtype=np.int32)  # bit t set: token t allowed

    @property
    def done(self) -> bool:
        """The grammar is complete: nothing but the end of the reply may follow."""
        return self.matcher.is_stopped()

    def fill(self):
        """Compute the allowed tokens into self.bitmask ([1, ceil(vocab/32)] int32) and return it."""
        self.matcher.unsafe_compute_mask_ptr(self.bitmask.ctypes.data, self.bitmask.nbytes)
        return self.bitmask

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise QuantDeployError(f"the sampled token {token} does not match the grammar "
                                   f"({self.matcher.get_error() or 'rejected'}); the mask was not applied")

    def mask_numpy(self, logits) -> None:
        """Fill the mask and set every forbidden token's logit to -inf, in place (a 1-D float32 numpy array)."""
        import numpy as np

        allowed = np.unpackbits(self.fill().view(np.uint8), bitorder="little")[:logits.shape[-1]]
        logits[allowed == 0] = -np.inf
