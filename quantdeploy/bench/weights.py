"""Bytes of weights read per decoded token, counted from the loaded model (not from a parameter count).

At batch 1 every decode step reads each weight once: the quantized matrices with their scales / zeros, the
norms, the lm_head, and one row of the embedding table. Tied embeddings are read in full by the lm_head.
The KV cache read (it grows with the context) is not counted: the number is the weights' share alone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def bytes_per_token(model) -> dict[str, Any]:
    """{"bytes": int, "method": str, "detail": {...}} for a LoadedModel of any backend."""
    if getattr(model, "format", "") == "gguf" and hasattr(model, "path"):
        n_vocab = model.llm.n_vocab() if getattr(model, "llm", None) is not None else None
        return gguf_bytes_per_token(Path(model.path), n_vocab)
    if hasattr(model, "model"):
        return torch_bytes_per_token(model.model)
    raise TypeError(f"cannot count the weights of {type(model).__name__}")


def torch_bytes_per_token(module) -> dict[str, Any]:
    """Parameters and buffers of a transformers model, each storage counted once, the input embedding table as
    one row unless the output head shares it."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = (t.data_ptr(), t.numel())
        if key in seen or t.numel() == 0:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    emb = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
    out = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    detail: dict[str, Any] = {"all_weights": total}
    if emb is not None and getattr(emb, "weight", None) is not None:
        w = emb.weight
        table = w.numel() * w.element_size()
        row = w.shape[-1] * w.element_size()
        tied = out is not None and getattr(out, "weight", None) is not None and out.weight.data_ptr() == w.data_ptr()
        detail.update(embedding_table=table, embedding_row=row, tied_lm_head=tied)
        total += row if tied else row - table
    return {"bytes": int(total), "method": "parameters+buffers of the loaded model", "detail": detail}


def gguf_tensors(path: Path) -> list[tuple[str, int]]:
    """(name, bytes) of every tensor in a GGUF file (all parts of a split one), from the headers only."""
    from ..backends.gguf_check import _parse  # the bounds-checked header parser the loader already trusts

    parts = [path]
    m = _SPLIT.search(path.name)
    if m:
        n = int(m.group(2))
        parts = [path.with_name(_SPLIT.sub(f"-{i:05d}-of-{n:05d}.gguf", path.name)) for i in range(1, n + 1)]
    out: list[tuple[str, int]] = []
    for p in parts:
        _, tensors = _parse(p, p.stat().st_size)
        out += [(name, n_bytes) for name, _, n_bytes in tensors]
    return out


def gguf_bytes_per_token(path: Path, n_vocab: int | None) -> dict[str, Any]:
    tensors = dict(gguf_tensors(path))
    emb = tensors.get("token_embd.weight", 0)
    tied = "output.weight" not in tensors
    row = emb // n_vocab if n_vocab else 0
    total = sum(tensors.values()) + (row if tied else row - emb)
    return {"bytes": int(total), "method": "tensor sizes from the GGUF header",
            "detail": {"all_weights": sum(tensors.values()), "embedding_table": emb, "embedding_row": row,
                       "tied_lm_head": tied, "n_tensors": len(tensors)}}
