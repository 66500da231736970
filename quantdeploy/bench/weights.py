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
    own = model.weight_bytes_per_token() if hasattr(model, "weight_bytes_per_token") else None
    if own is not None:
        return own
    if getattr(model, "format", "") == "gguf" and hasattr(model, "path"):
        n_vocab = model.llm.n_vocab() if getattr(model, "llm", None) is not None else None
        return gguf_bytes_per_token(Path(model.path), n_vocab)
    module = getattr(model, "model", None)
    if module is not None and hasattr(module, "parameters"):
        return torch_bytes_per_token(module)
    path = Path(getattr(getattr(model, "spec", None), "path", ""))
    if path.is_dir() and list(path.glob("*.safetensors")):  # an engine with its own weight layout
        return safetensors_bytes_per_token(path)
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


def safetensors_tensors(path: Path) -> dict[str, tuple[list[int], int]]:
    """name -> (shape, bytes) of every tensor in a checkpoint directory's *.safetensors, from the headers."""
    import json
    import struct

    out: dict[str, tuple[list[int], int]] = {}
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                start, end = meta["data_offsets"]
                out[name] = (list(meta["shape"]), end - start)
    return out


def safetensors_bytes_per_token(path: Path) -> dict[str, Any]:
    """For models whose runtime holds weights outside an nn.Module: the checkpoint's tensors as stored."""
    tensors = safetensors_tensors(path)
    emb = next((k for k in tensors if k.endswith(("embed_tokens.weight", "wte.weight"))), None)
    tied = not any(k.endswith("lm_head.weight") for k in tensors)
    total = sum(b for _, b in tensors.values())
    detail: dict[str, Any] = {"all_weights": total, "tied_lm_head": tied}
    if emb:
        shape, table = tensors[emb]
        row = table // shape[0] if shape else 0
        detail.update(embedding_table=table, embedding_row=row)
        total += row if tied else row - table
    return {"bytes": int(total), "method": "tensor sizes from the checkpoint's safetensors headers "
            "(the runtime's own layout may differ)", "detail": detail}
