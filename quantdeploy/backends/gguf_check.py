"""Validate a GGUF file with the `gguf` reader before llama.cpp sees it (a bad file must never segfault us)."""

from __future__ import annotations

import mmap
import re
import struct
from pathlib import Path
from typing import Any

from ..errors import InvalidModel

_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
               12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
               19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
               26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16"}


GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file
# GGUF value types: sizes of the fixed-width ones (gguf spec: uint8..float64, bool), 8 = string, 9 = array
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_SIZES = {k: struct.calcsize(v) for k, v in _SCALAR.items()}


class _Corrupt(Exception):
    pass


class _Reader:
    """A bounds-checked cursor over an mmap: reading past the end is corruption, never a crash."""

    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos = buf, size, 0

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.size:
            raise _Corrupt(f"header runs past the end of the file at byte {self.pos}")
        p = self.pos
        self.pos += n
        return p

    def unpack(self, fmt: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def string(self, keep: bool = True) -> str | None:
        n = self.unpack("<Q")
        if n > 1 << 24:
            raise _Corrupt(f"string of {n} bytes at byte {self.pos}")
        p = self.take(n)
        return bytes(self.buf[p:p + n]).decode("utf-8", "replace") if keep else None

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, n = self.unpack("<I"), self.unpack("<Q")
            if etype in _SIZES:
                self.take(_SIZES[etype] * n)
            elif etype == 8:
                for _ in range(n):
                    self.string(keep=False)
            else:
                raise _Corrupt(f"array of unknown type {etype}")
            return None  # arrays (the vocabulary) are not needed here
        raise _Corrupt(f"unknown value type {vtype}")


def _parse(path: Path, size: int) -> tuple[dict[str, Any], list[tuple[str, int, int]]]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        r = _Reader(buf, size)
        r.take(4)
        version = r.unpack("<I")
        if version not in (2, 3):
            raise _Corrupt(f"unsupported GGUF version {version}")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise _Corrupt("absurd tensor or key count")
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            kv[key] = r.value(r.unpack("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("<I")
            if n_dims > 8:
                raise _Corrupt(f"tensor {name} has {n_dims} dimensions")
            n_el = 1
            for _ in range(n_dims):
                n_el *= r.unpack("<Q")
            ttype, offset = r.unpack("<I"), r.unpack("<Q")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            except (ValueError, KeyError):
                raise _Corrupt(f"tensor {name} has unknown type {ttype}") from None
            tensors.append((name, offset, n_el // block * type_size))
        align = kv.get("general.alignment", 32) or 32
        data_start = (r.pos + align - 1) // align * align
        return kv, [(n, data_start + o, nb) for n, o, nb in tensors]


def validate_gguf(path: Path) -> dict[str, Any]:
    """Check header, metadata and that every tensor lies inside the file(s); return the metadata we use."""
    parts = [path]
    m = _SPLIT.search(path.name)
    if m:
        n = int(m.group(2))
        parts = [path.with_name(_SPLIT.sub(f"-{i:05d}-of-{n:05d}.gguf", path.name)) for i in range(1, n + 1)]
        missing = [p.name for p in parts if not p.is_file()]
        if missing:
            raise InvalidModel(f"split GGUF is incomplete: missing {', '.join(missing)}; pull it again")
    info: dict[str, Any] = {}
    for p in parts:
        info_p = _validate_one(p)
        if p == parts[0]:
            info = info_p
    return info


def _validate_one(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise InvalidModel(f"cannot read {path}: {e.strerror}") from None
    if head[:4] != GGUF_MAGIC:
        raise InvalidModel(f"{path.name} is not a GGUF file (bad magic); re-download it")
    size = path.stat().st_size
    try:
        kv, tensors = _parse(path, size)
    except _Corrupt as e:
        raise InvalidModel(f"{path.name} is corrupt or truncated ({e}); re-download it") from None
    for name, start, n_bytes in tensors:
        if start + n_bytes > size:
            raise InvalidModel(f"{path.name} is truncated: tensor {name} ends at byte {start + n_bytes} but the file "
                               f"has {size}; re-download it")
    arch = kv.get("general.architecture") or ""
    info: dict[str, Any] = {"architecture": arch, "file_size": size, "n_tensors": len(tensors)}
    for key in ("context_length", "block_count", "embedding_length"):
        if f"{arch}.{key}" in kv:
            info[key] = int(kv[f"{arch}.{key}"])
    for k in ("general.name", "general.file_type", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
              "tokenizer.ggml.eom_token_id", "tokenizer.ggml.bos_token_id", "general.quantization_version"):
        if k in kv:
            info[k] = kv[k]
    info["has_chat_template"] = "tokenizer.chat_template" in kv
    ft = info.get("general.file_type")
    info["file_type_name"] = _FILE_TYPES.get(int(ft)) if isinstance(ft, (int, float)) else None
    if arch == "":
        raise InvalidModel(f"{path.name} has no general.architecture; it is not a model GGUF")
    return info


# --- inspect --------------------------------------------------------------------------------------------

def describe_gguf(f: Path, md: dict[str, Any]) -> dict[str, Any]:
    """What `quantdeploy inspect` shows of a GGUF file, from its validated metadata (validate_gguf) and vocabulary;
    no weights are read."""
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
