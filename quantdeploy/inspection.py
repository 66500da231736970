"""`quantdeploy inspect`: what a model is, read from its files (no weights loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .backends.base import ModelSpec
from .backends.gguf_check import validate_gguf
from .registry import get_backend


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def inspect_model(spec: ModelSpec) -> dict[str, Any]:
    info: dict[str, Any] = {"name": spec.display_name, "path": str(spec.path), "format": spec.format,
                            "size_bytes": _size(spec.path)}
    backend = get_backend(spec.format)
    backend.check_files(spec)
    info["backend"] = backend.name
    ok, reason = backend.check_environment()
    info["backend_available"] = ok
    if reason:
        info["backend_reason"] = reason
    info["kernel_candidates"] = backend.kernel_candidates(spec)
    info.update(_inspect_gguf(spec) if spec.format == "gguf" else _inspect_hf(spec))
    return info


def _inspect_gguf(spec: ModelSpec) -> dict[str, Any]:
    from .backends.gguf import gguf_main_file

    f = gguf_main_file(spec)
    md = validate_gguf(f)
    out = {"file": f.name, "architecture": md.get("architecture"), "context_length": md.get("context_length"),
           "quantization": {"type": md.get("file_type_name"), "bits": _gguf_bits(md.get("file_type_name"))},
           "layers": md.get("block_count"), "chat_template": md.get("has_chat_template", False)}
    out["stop_tokens"] = _gguf_stop_tokens(f, md)
    return out


def _gguf_bits(name: str | None) -> float | None:
    table = {"Q2_K": 2.6, "Q3_K_S": 3.4, "Q3_K_M": 3.9, "Q3_K_L": 4.3, "Q4_0": 4.5, "Q4_1": 5.0, "Q4_K_S": 4.6,
             "Q4_K_M": 4.8, "Q5_0": 5.5, "Q5_1": 6.0, "Q5_K_S": 5.5, "Q5_K_M": 5.7, "Q6_K": 6.6, "Q8_0": 8.5,
             "F16": 16, "BF16": 16, "F32": 32}
    return table.get(name or "")


def _gguf_stop_tokens(f: Path, md: dict) -> list[str]:
    """Read the vocabulary with llama.cpp (vocab_only: no weights) to name the stop tokens."""
    try:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=str(f), vocab_only=True, verbose=False)
    except Exception:
        return []
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        ids = {md.get("tokenizer.ggml.eos_token_id"), md.get("tokenizer.ggml.eot_token_id")}
        for t in ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>"):
            toks = llm.tokenize(t.encode(), add_bos=False, special=True)
            if len(toks) == 1 and llama_cpp.llama_vocab_is_eog(vocab, toks[0]):
                ids.add(toks[0])
        names = {llm.detokenize([i], special=True).decode("utf-8", "replace") for i in ids if isinstance(i, int)}
        return sorted(n for n in names if n)
    finally:
        llm.close()


def _read(path: Path) -> dict:
    from .backends.hf_check import read_json_object

    return read_json_object(path) if path.is_file() else {}


def _inspect_hf(spec: ModelSpec) -> dict[str, Any]:
    from .backends.hf_quant import quant_config, read_config

    p = spec.path
    cfg = read_config(p)
    qc = quant_config(p)
    tok_cfg = _read(p / "tokenizer_config.json")
    gen_cfg = _read(p / "generation_config.json")
    template = bool(tok_cfg.get("chat_template")) or (p / "chat_template.jinja").is_file() \
        or (p / "chat_template.json").is_file()
    text_cfg = cfg.get("text_config") or cfg
    return {
        "architecture": (cfg.get("architectures") or [cfg.get("model_type")])[0],
        "model_type": cfg.get("model_type"),
        "context_length": text_cfg.get("max_position_embeddings"),
        "layers": text_cfg.get("num_hidden_layers"),
        "quantization": {"method": spec.format, "bits": qc.get("bits", qc.get("w_bit")),
                         "group_size": qc.get("group_size", qc.get("q_group_size")), "desc_act": qc.get("desc_act"),
                         "sym": qc.get("sym"), "zero_point": qc.get("zero_point"),
                         "version": qc.get("version") or qc.get("format") or qc.get("checkpoint_format")},
        "chat_template": template,
        "stop_tokens": _hf_stop_tokens(p, cfg, gen_cfg, tok_cfg),
        "weights": sorted(f.name for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt")),
    }


def _hf_stop_tokens(p: Path, cfg: dict, gen_cfg: dict, tok_cfg: dict) -> list[str]:
    from .chat.templates import END_OF_TURN_TOKENS

    ids: set[int] = set()
    for src in (gen_cfg, cfg):
        v = src.get("eos_token_id")
        ids.update(v if isinstance(v, list) else [v] if isinstance(v, int) else [])
    tok_json = _read(p / "tokenizer.json")
    added = {t.get("id"): t.get("content") for t in tok_json.get("added_tokens") or [] if isinstance(t, dict)}
    names = {added[i] for i in ids if i in added}
    eos = tok_cfg.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    if eos:
        names.add(eos)
    names.update(t for t in added.values() if t in END_OF_TURN_TOKENS)
    return sorted(names)
