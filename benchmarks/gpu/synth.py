"""Synthetic 8B-shape models (Llama-3-8B shapes, random weights) in GPTQ, AWQ and GGUF Q4_K_M, for speed only.

    python benchmarks/gpu/synth.py --out DIR [--layers 32] [--only gptq --only awq] [--vocab-gguf FILE]

Writes DIR/gptq, DIR/awq (safetensors + config + the real Llama-3 tokenizer) and DIR/gguf/llama-8b-Q4_K_M.gguf;
a format already written is kept. The tokenizer comes from llama.cpp's ggml-vocab-llama-bpe.gguf: --vocab-gguf, or
fetched once with pip from the source package of the installed llama-cpp-python, which ships it (DIR/vocab/).
Random int4 weights with small scales: the bytes and shapes are real, the text is nonsense. GGUF blocks are
random bytes with valid fp16 block scales, laid out with the tensor types llama.cpp's Q4_K_M recipe picks (Q6_K
for output, and for attn_v / ffn_down in the layers use_more_bits() selects). Generation runs on the GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

SHAPE = dict(hidden=4096, inter=14336, heads=32, kv_heads=8, vocab=128256, head_dim=128)


def llama_config(layers: int) -> dict:
    s = SHAPE
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": s["hidden"],
            "intermediate_size": s["inter"], "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"],
            "num_hidden_layers": layers, "vocab_size": s["vocab"], "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "bos_token_id": 128000,
            "eos_token_id": 128001, "hidden_act": "silu", "torch_dtype": "float16", "attention_bias": False}


def linears(layers: int):
    s = SHAPE
    kv = s["kv_heads"] * s["head_dim"]
    for i in range(layers):
        p = f"model.layers.{i}"
        yield f"{p}.self_attn.q_proj", s["hidden"], s["hidden"]
        yield f"{p}.self_attn.k_proj", s["hidden"], kv
        yield f"{p}.self_attn.v_proj", s["hidden"], kv
        yield f"{p}.self_attn.o_proj", s["hidden"], s["hidden"]
        yield f"{p}.mlp.gate_proj", s["hidden"], s["inter"]
        yield f"{p}.mlp.up_proj", s["hidden"], s["inter"]
        yield f"{p}.mlp.down_proj", s["inter"], s["hidden"]


def _rand_i32(shape, dev):
    return torch.randint(-2 ** 31, 2 ** 31 - 1, shape, dtype=torch.int32, device=dev)


def dense_tensors(layers: int, dev) -> dict:
    s = SHAPE
    t = {"model.embed_tokens.weight": (torch.randn(s["vocab"], s["hidden"], device=dev) * 0.02).half(),
         "lm_head.weight": (torch.randn(s["vocab"], s["hidden"], device=dev) * 0.02).half(),
         "model.norm.weight": torch.ones(s["hidden"], dtype=torch.float16, device=dev)}
    for i in range(layers):
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[f"model.layers.{i}.{n}.weight"] = torch.ones(s["hidden"], dtype=torch.float16, device=dev)
    return t


def write_hf(out: Path, fmt: str, layers: int, tokenizer_dir: Path, dev) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    shard, n_shard, index = {}, 0, {}

    def flush():
        nonlocal shard, n_shard
        if shard:
            name = f"model-{n_shard:05d}.safetensors"
            save_file({k: v.cpu() for k, v in shard.items()}, str(out / name), metadata={"format": "pt"})
            index.update({k: name for k in shard})
            shard, n_shard = {}, n_shard + 1

    shard.update(dense_tensors(layers, dev))
    g = 128
    for name, k, n in linears(layers):
        if fmt == "gptq":
            shard[name + ".qweight"] = _rand_i32((k // 8, n), dev)
            shard[name + ".qzeros"] = torch.full((k // g, n // 8), 0x77777777, dtype=torch.int32, device=dev)
            shard[name + ".scales"] = (torch.rand(k // g, n, device=dev) * 2e-3 + 1e-3).half()
            shard[name + ".g_idx"] = (torch.arange(k, device=dev) // g).int()
        else:
            shard[name + ".qweight"] = _rand_i32((k, n // 8), dev)
            # AWQ is asymmetric: its zero points differ per group (random here), unlike GPTQ sym=True's all-8
            shard[name + ".qzeros"] = _rand_i32((k // g, n // 8), dev)
            shard[name + ".scales"] = (torch.rand(k // g, n, device=dev) * 2e-3 + 1e-3).half()
        if name.endswith("down_proj"):
            flush()
    flush()
    cfg = llama_config(layers)
    cfg["quantization_config"] = ({"quant_method": "gptq", "bits": 4, "group_size": g, "desc_act": False,
                                   "sym": True, "checkpoint_format": "gptq"} if fmt == "gptq" else
                                  {"quant_method": "awq", "bits": 4, "group_size": g, "zero_point": True,
                                   "version": "gemm"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": 128001}))
    for f in tokenizer_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())


VOCAB = "ggml-vocab-llama-bpe.gguf"  # the Llama-3 tokenizer, among llama.cpp's test vocabularies


def fetch_vocab(dest_dir: Path) -> Path:
    """llama.cpp's Llama-3 vocabulary GGUF from the source package of the installed llama-cpp-python (once)."""
    dest = dest_dir / VOCAB
    if dest.is_file():
        return dest
    try:
        spec = f"llama-cpp-python=={version('llama-cpp-python')}"
    except PackageNotFoundError:
        sys.exit(f"synth.py: llama-cpp-python is not installed, so its source package cannot be chosen: pass "
                 f"--vocab-gguf FILE (VOCAB_GGUF=FILE for run.sh and make test-gpu) with llama.cpp's {VOCAB}, "
                 "or run ./install.sh")
    print(f"fetching {VOCAB} from the {spec} source package (pip download, ~75 MB)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp,
                        spec], check=True)
        with tarfile.open(next(Path(tmp).glob("*.tar.gz"))) as sdist:
            member = next(m for m in sdist.getmembers() if m.name.endswith(f"/vendor/llama.cpp/models/{VOCAB}"))
            data = sdist.extractfile(member).read()
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(".part")
    part.write_bytes(data)
    part.replace(dest)
    return dest


def save_tokenizer(vocab_gguf: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(vocab_gguf.parent), gguf_file=vocab_gguf.name)
    tok.save_pretrained(str(out))


# --- GGUF --------------------------------------------------------------------------------------------
def _use_more_bits(i: int, n: int) -> bool:  # llama.cpp's rule for the Q4_K_M mix
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _blocks(rows: int, cols: int, qtype, rng) -> np.ndarray:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[qtype]
    nb = rows * cols // block
    data = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    d = np.array([1e-3], dtype=np.float16).view(np.uint8)
    if qtype == GGMLQuantizationType.Q4_K:
        data[:, 0:2] = d
        data[:, 2:4] = np.array([5e-4], dtype=np.float16).view(np.uint8)
    elif qtype == GGMLQuantizationType.Q6_K:
        data[:, size - 2:size] = d
    return data.reshape(rows, cols // block * size)


def write_gguf(path: Path, layers: int, vocab_gguf: Path) -> None:
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    s = SHAPE
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), "llama")
    w.add_name("synthetic llama-3-8b shape")
    w.add_context_length(8192)
    w.add_embedding_length(s["hidden"])
    w.add_block_count(layers)
    w.add_feed_forward_length(s["inter"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(15)  # MOSTLY_Q4_K_M
    w.add_vocab_size(s["vocab"])
    w.add_rope_dimension_count(s["head_dim"])
    reader = GGUFReader(str(vocab_gguf))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
        w.add_key_value(key, field.contents(), vtype, sub)
    kv = s["kv_heads"] * s["head_dim"]
    ones = np.ones(s["hidden"], dtype=np.float32)
    w.add_tensor("token_embd.weight", _blocks(s["vocab"], s["hidden"], T.Q4_K, rng), raw_dtype=T.Q4_K)
    for i in range(layers):
        more = _use_more_bits(i, layers)
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", ones)
        w.add_tensor(f"{p}.attn_q.weight", _blocks(s["hidden"], s["hidden"], T.Q4_K, rng), raw_dtype=T.Q4_K)
        w.add_tensor(f"{p}.attn_k.weight", _blocks(kv, s["hidden"], T.Q4_K, rng), raw_dtype=T.Q4_K)
        vt = T.Q6_K if more else T.Q4_K
        w.add_tensor(f"{p}.attn_v.weight", _blocks(kv, s["hidden"], vt, rng), raw_dtype=vt)
        w.add_tensor(f"{p}.attn_output.weight", _blocks(s["hidden"], s["hidden"], T.Q4_K, rng), raw_dtype=T.Q4_K)
        w.add_tensor(f"{p}.ffn_norm.weight", ones)
        w.add_tensor(f"{p}.ffn_gate.weight", _blocks(s["inter"], s["hidden"], T.Q4_K, rng), raw_dtype=T.Q4_K)
        w.add_tensor(f"{p}.ffn_up.weight", _blocks(s["inter"], s["hidden"], T.Q4_K, rng), raw_dtype=T.Q4_K)
        dt = T.Q6_K if more else T.Q4_K
        w.add_tensor(f"{p}.ffn_down.weight", _blocks(s["hidden"], s["inter"], dt, rng), raw_dtype=dt)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", _blocks(s["vocab"], s["hidden"], T.Q6_K, rng), raw_dtype=T.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--vocab-gguf", type=Path, help=f"llama.cpp's {VOCAB} (default: fetched into OUT/vocab/)")
    ap.add_argument("--only", choices=["gptq", "awq", "gguf"], action="append")
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    a.out.mkdir(parents=True, exist_ok=True)
    formats = a.only or ["gptq", "awq", "gguf"]
    if all((a.out / fmt / ".complete").exists() for fmt in formats):
        print(f"{', '.join(formats)}: cached in {a.out}")
        return
    vocab = a.vocab_gguf or fetch_vocab(a.out / "vocab")
    tok_dir = a.out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        save_tokenizer(vocab, tok_dir)
    for fmt in formats:
        t0 = time.time()
        target = a.out / fmt
        done = target / ".complete"
        if done.exists():
            print(f"{fmt}: cached at {target}")
            continue
        if fmt == "gguf":
            target.mkdir(parents=True, exist_ok=True)
            write_gguf(target / "llama-8b-Q4_K_M.gguf", a.layers, vocab)
        else:
            write_hf(target, fmt, a.layers, tok_dir, dev)
        done.write_text("ok")
        print(f"{fmt}: wrote {target} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
