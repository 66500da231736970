"""Token sampling on the device, row-wise: one call samples a whole batch of logits [B, vocab], each row with its own
temperature, top-k, top-p, seeded generator, grammar bitmask and logprobs request.

Everything is tensor ops over the batch; the only Python loop is over the rows that carry their own seeded
generator (their noise must come from that generator, so that a seed reproduces its row whatever else is in the
batch). Sampling is the exponential race (argmax of p / q, q ~ Exp(1)), which picks each token with probability p
exactly as torch.multinomial does, and lets each row draw its noise from its own generator.

Logprobs describe the model's own distribution: the raw logits' log-softmax, before temperature, top-k/top-p and
the grammar mask (vLLM's and OpenAI's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


def to_device(values, dtype, device):
    """Host values (a list, a numpy array or a CPU tensor) as a tensor on `device`, without waiting for the device:
    on CUDA through pinned memory and an asynchronous copy. A plain `torch.tensor(values, device="cuda")`
    synchronizes the stream, so the host would wait for every step already queued."""
    import torch

    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=dtype)
    if torch.device(device).type != "cuda":
        return t.to(device=device, dtype=dtype)
    return t.to(dtype).pin_memory().to(device, non_blocking=True)


def make_generator(device, seed: int | None):
    import torch

    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


@dataclass
class Rows:
    """Per-row sampling parameters of a batch (host values: building them never waits for the device)."""

    temperature: Sequence[float]
    top_p: Sequence[float]
    top_k: Sequence[int]
    generators: Sequence[Any] | None = None  # a torch.Generator per row, or None (the global one)
    logprobs: int | None = None  # top alternatives to return per row (0: the sampled token's only); None: off

    @classmethod
    def of(cls, params: Sequence[Any], generators: Sequence[Any] | None = None) -> "Rows":
        """From GenerationParams (one per row)."""
        want = [p.logprobs for p in params if p.logprobs is not None]
        return cls([p.temperature for p in params], [p.top_p for p in params], [p.top_k for p in params],
                   generators, max(want) if want else None)


@dataclass
class Sampled:
    tokens: Any  # [B] int64 on the device
    logprobs: Any = None  # [B] float32: each sampled token's log-probability (raw distribution)
    top_ids: Any = None  # [B, k] int64: the k likeliest tokens, most likely first
    top_logprobs: Any = None  # [B, k] float32


def apply_bitmask(logits, bitmask):
    """The logits with every forbidden token at -inf (a new tensor). bitmask: [B, ceil(vocab/32)] int32 on the
    device, bit t of row b set when token t is allowed (llguidance's layout; a row of -1 allows everything). One
    broadcast op over the batch, no loop over the vocabulary."""
    import torch

    vocab = logits.shape[-1]
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).view(bitmask.shape[0], -1)[:, :vocab].bool()
    return logits.masked_fill(~allowed, float("-inf"))


def _per_row(values: Sequence[float], logits, default) -> Any:
    """A scalar when every row agrees (no host-to-device copy), else a [B, 1] tensor."""
    import torch

    if all(v == values[0] for v in values):
        return values[0] if values else default
    return to_device(list(values), logits.dtype, logits.device).unsqueeze(1)


def sample_rows(logits, rows: Rows, bitmask=None) -> Sampled:
    """logits: [B, vocab] float. Returns the sampled tokens (and logprobs) on the device, no host sync."""
    import torch

    logits = logits.reshape(logits.shape[0], -1).float()
    out = Sampled(tokens=None)
    if rows.logprobs is not None:
        raw = torch.log_softmax(logits, -1)
    if bitmask is not None:
        logits = apply_bitmask(logits, bitmask)
    greedy = [t <= 0 for t in rows.temperature]
    if all(greedy):
        out.tokens = torch.argmax(logits, -1)
    else:
        temps = [t if t > 0 else 1.0 for t in rows.temperature]
        scaled = logits / _per_row(temps, logits, 1.0)
        scaled = _top_k_top_p(scaled, rows.top_k, rows.top_p)
        probs = torch.softmax(scaled, -1)
        noise = torch.empty_like(probs)
        gens = rows.generators or [None] * len(temps)
        if all(g is None for g in gens):
            noise.exponential_()
        else:
            for i, g in enumerate(gens):
                noise[i].exponential_(generator=g)
        tokens = torch.argmax(probs / noise, -1)
        if any(greedy):
            mask = to_device(greedy, torch.bool, logits.device)
            tokens = torch.where(mask, torch.argmax(logits, -1), tokens)
        out.tokens = tokens
    if rows.logprobs is not None:
        out.logprobs = raw.gather(-1, out.tokens.unsqueeze(-1)).squeeze(-1)
        if rows.logprobs > 0:
            out.top_logprobs, out.top_ids = torch.topk(raw, rows.logprobs, -1)
    return out


def _top_k_top_p(scaled, top_k: Sequence[int], top_p: Sequence[float]):
    """Keep, per row, the top_k likeliest tokens (0: all) and the smallest set whose mass reaches top_p (>= 1 token)."""
    import torch

    vocab = scaled.shape[-1]
    ks = [k if 0 < k < vocab else 0 for k in top_k]
    if not any(p < 1.0 for p in top_p):
        if not any(ks):
            return scaled
        if all(k == ks[0] for k in ks):  # one top-k for the batch: no sort of the whole vocabulary
            kth = torch.topk(scaled, ks[0], -1).values[:, -1:]
            return scaled.masked_fill(scaled < kth, float("-inf"))
    sorted_logits, idx = torch.sort(scaled, -1, descending=True)
    remove = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if any(ks):
        limit = _per_row([k or vocab for k in ks], scaled, vocab)
        ranks = torch.arange(vocab, device=scaled.device)
        remove |= ranks >= (limit if isinstance(limit, int) else limit.long())
    if any(p < 1.0 for p in top_p):
        ps = _per_row([p if p < 1.0 else 2.0 for p in top_p], scaled, 2.0)  # 2.0: a row that keeps everything
        probs = torch.softmax(sorted_logits.masked_fill(remove, float("-inf")), -1)
        remove |= (torch.cumsum(probs, -1) - probs) > ps
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(scaled, float("-inf")).scatter(-1, idx, sorted_logits)


def sample(logits, temperature: float, top_p: float, top_k: int, generator=None):
    """One row: logits [vocab] or [1, vocab]. Returns a 0-d int64 tensor on the same device (no host sync)."""
    rows = Rows([temperature], [top_p], [top_k], [generator])
    return sample_rows(logits.reshape(1, -1), rows).tokens[0]


def token_logprob(s: Sampled, row: int):
    """Row `row` of a Sampled with logprobs, read back to the host as a TokenLogprob."""
    from ..backends.base import TokenLogprob

    top = ()
    if s.top_ids is not None:
        top = tuple(zip(s.top_ids[row].tolist(), s.top_logprobs[row].tolist()))
    return TokenLogprob(int(s.tokens[row]), float(s.logprobs[row]), top)
