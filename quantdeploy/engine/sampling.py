"""Token sampling on the device: greedy, temperature, top-k, top-p, with a seeded generator."""

from __future__ import annotations


def make_generator(device, seed: int | None):
    import torch

    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def sample(logits, temperature: float, top_p: float, top_k: int, generator=None):
    """logits: [vocab] or [1, vocab] float. Returns a 0-d int64 tensor on the same device (no host sync)."""
    import torch

    logits = logits.reshape(-1).float()
    if temperature <= 0:
        return torch.argmax(logits)
    logits = logits / temperature
    if top_k and 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        cum = torch.cumsum(probs, -1)
        remove = cum - probs > top_p  # keep the smallest set whose mass reaches top_p (always >= 1 token)
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, idx, sorted_logits)
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator)[0]
