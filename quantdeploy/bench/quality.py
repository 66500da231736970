"""--quality: perplexity on the shipped text, and KL divergence from a full-precision reference.

Every model scores the same first N tokens of bench/eval_text.txt in one forward pass (no sliding window).
KL(reference || model) is averaged over positions; top-1 agreement is the share of positions where both
predict the same next token. The reference is an HF checkpoint in full precision (e.g. the model the
quantized files were made from); its logits are computed once per report and reused for every format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidModel, UsageError
from .text import shipped_text, text_ids

DEFAULT_TOKENS = 256


def log_softmax(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    top = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - top).sum(-1, keepdims=True, dtype=np.float64)).astype(np.float32) + top
    return x - lse


@dataclass
class Reference:
    path: Path
    ids: list[int]
    logprobs: Any  # float32 [n - 1, vocab]: log-softmax of the next-token logits at positions 0..n-2
    perplexity: float


def load_reference(path: Path, n_tokens: int) -> Reference:
    """Run the full-precision model once over the text (GPU when one is usable) and keep its log-probs."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..backends.hw import pick_torch_device

    path = Path(path).expanduser()
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UsageError(f"--reference {path}: not an HF model directory (no config.json)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InvalidModel(f"{cfg_file} is not valid JSON ({e})") from None
    if isinstance(cfg, dict) and cfg.get("quantization_config"):
        raise UsageError(f"--reference {path} is quantized; pass the full-precision checkpoint the quantized "
                         "models were made from")
    device = pick_torch_device("auto")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto", device_map=device)
    except (OSError, ValueError, KeyError) as e:
        raise InvalidModel(f"--reference {path} could not be loaded: {str(e).splitlines()[0][:200]}") from None
    ids = tok(shipped_text(), add_special_tokens=False)["input_ids"]
    if tok.bos_token_id is not None:
        ids = [tok.bos_token_id] + ids
    ids = ids[:n_tokens]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False, logits_to_keep=0).logits[0]
        logits = logits[:-1].float().cpu().numpy()
    del model
    lp = log_softmax(logits)
    return Reference(path=path, ids=ids, logprobs=lp, perplexity=_perplexity(lp, ids))


def _perplexity(logprobs, ids: list[int]) -> float:
    import numpy as np

    picked = logprobs[np.arange(len(ids) - 1), np.asarray(ids[1:], dtype=np.int64)]
    return float(math.exp(-float(picked.mean())))


def measure_quality(model, n_tokens: int, reference: Reference | None) -> dict[str, Any]:
    """{"perplexity", "kl_divergence", "top1_agreement", "tokens", "reference", "note"} for a loaded model."""
    import numpy as np

    n = min(n_tokens, model.context_length)
    ids = text_ids(model, n)
    lp = log_softmax(model.logits(ids)[:-1])
    out: dict[str, Any] = {"tokens": len(ids), "perplexity": round(_perplexity(lp, ids), 4),
                           "kl_divergence": None, "top1_agreement": None,
                           "reference": str(reference.path) if reference else None, "note": None}
    if reference is None:
        out["note"] = "no --reference given: perplexity only"
        return out
    out["reference_perplexity"] = round(reference.perplexity, 4)
    if reference.ids != ids:
        same = next((i for i, (a, b) in enumerate(zip(reference.ids, ids)) if a != b), min(len(ids),
                                                                                          len(reference.ids)))
        out["note"] = (f"the reference tokenizes the text differently (first difference at token {same}): "
                       "KL needs the same tokens, so it is left out")
        return out
    ref = reference.logprobs
    if ref.shape[-1] != lp.shape[-1]:  # padded vocabularies: compare the shared part, renormalized
        v = min(ref.shape[-1], lp.shape[-1])
        out["note"] = f"vocabularies differ ({ref.shape[-1]} vs {lp.shape[-1]}): KL over the first {v} tokens"
        ref, lp = log_softmax(ref[:, :v]), log_softmax(lp[:, :v])
    kl = (np.exp(ref) * (ref - lp)).sum(-1, dtype=np.float64)
    out["kl_divergence"] = round(float(kl.mean()), 6)
    out["kl_divergence_max"] = round(float(kl.max()), 6)
    out["top1_agreement"] = round(float((ref.argmax(-1) == lp.argmax(-1)).mean()), 4)
    return out
