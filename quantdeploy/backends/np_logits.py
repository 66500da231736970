"""Log-probabilities from one step's logits with numpy (llama.cpp hands us its logits as a float32 array).

Read before anything changes the logits (temperature, grammar mask): they describe the model's own distribution.
A vocabulary-sized exp and an argpartition: well under a millisecond per token for 262k tokens.
"""

from __future__ import annotations

from .base import TokenLogprob


class StepLogprobs:
    """The normaliser and the top-k of one step, taken before sampling; `of(token)` after it."""

    def __init__(self, logits, k: int):
        import numpy as np

        self.logits = logits
        top = float(logits.max())
        self.lse = top + float(np.log(np.exp(logits - top, dtype=np.float32).sum(dtype=np.float64)))
        self.top: tuple[tuple[int, float], ...] = ()
        if k:
            idx = np.argpartition(-logits, k)[:k]
            idx = idx[np.argsort(-logits[idx], kind="stable")]
            raw = logits[idx].astype(np.float64)  # copied now: a grammar mask may overwrite the logits in place
            self.top = tuple((int(i), float(v) - self.lse) for i, v in zip(idx, raw))

    def of(self, token: int) -> TokenLogprob:
        """Call before the logits change again; a grammar mask only lowers forbidden tokens, never the sampled one."""
        return TokenLogprob(int(token), float(self.logits[token]) - self.lse, self.top)
