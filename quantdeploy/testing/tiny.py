"""Build the tiny test checkpoints (tiny_configs.py): float models from transformers' own config classes, then
GPTQ / AWQ quantizations of them made by gptqmodel on the CPU.

Each float model is random (seeded), its norms and biases perturbed so that a `w` / `1 + w` mix-up shows, saved in
its torch_dtype with the Hub's config.json field names (transformers would rewrite rope_scaling / torch_dtype
into its own names on save). Quantized copies keep those names too, plus gptqmodel's quantization_config.
Everything is cached under $QUANTDEPLOY_HOME/fixtures/tiny-<key>/<name>; `python -m quantdeploy.testing.tiny`
builds what is missing, gptqmodel's output going to build.log there.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

from ..settings import get_settings, prepare_process_env
from .fixtures import _atomic_build, _calibration
from .tiny_configs import ARCHS, QUANTS, Quant, hub_config, quant
from .tokenizer import train_sentencepiece, write_tokenizer

# The cache key: the tools' versions, what the checkpoints are (these files) and how they are built (bump it
# when a change below makes different files)
BUILD_VERSION = "1"
_SOURCES = ("tiny_configs.py", "tokenizer.py", "awq_pack.py", "calibration.txt")


@functools.lru_cache(maxsize=1)
def _key() -> str:
    here = Path(__file__).parent
    parts = [BUILD_VERSION] + [version(p) for p in ("transformers", "gptqmodel", "torch", "sentencepiece")]
    parts += [hashlib.sha256((here / f).read_bytes()).hexdigest()[:12] for f in _SOURCES]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def tiny_dir() -> Path:
    return get_settings().home / "fixtures" / f"tiny-{_key()}"


def float_model(arch: str) -> Path:
    """The float checkpoint of one architecture (the reference the quantizations and GGUF files come from)."""
    if arch not in ARCHS:
        raise KeyError(f"no tiny architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    return _atomic_build(tiny_dir() / f"{arch}-float", lambda out: _build_float(arch, out))


def quantized_model(name: str) -> Path:
    q = quant(name)
    src = float_model(q.arch)
    return _atomic_build(tiny_dir() / name, lambda out: _quantize(q, src, out))


def build_all(log=print) -> dict[str, Path]:
    """Every float and quantized tiny checkpoint, building the missing ones (a few lines on `log`)."""
    out: dict[str, Path] = {}
    t0 = time.perf_counter()
    for arch in ARCHS:
        out[f"{arch}-float"] = _timed(log, f"{arch}-float", lambda a=arch: float_model(a))
    for q in QUANTS:
        out[q.name] = _timed(log, q.name, lambda n=q.name: quantized_model(n))
    log(f"tiny checkpoints ready in {time.perf_counter() - t0:.0f} s: {tiny_dir()}")
    return out


def is_built(gguf: bool = False) -> bool:
    """Whether every tiny checkpoint (or, with gguf, their GGUF copies) is in the cache."""
    names = [f"{a}-float" for a in ARCHS] + [q.name for q in QUANTS]
    return (tiny_dir() / "gguf" / ".complete").exists() if gguf else \
        all((tiny_dir() / n / ".complete").exists() for n in names)


def _timed(log, name: str, fn) -> Path:
    done = (tiny_dir() / name / ".complete").exists()
    t = time.perf_counter()
    path = fn()
    if not done:
        log(f"built {name} in {time.perf_counter() - t:.1f} s")
    return path


# --- float models ------------------------------------------------------------------------------------------

_TOKENIZER: bytes | None = None


def _tokenizer_model() -> bytes:
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = train_sentencepiece()
    return _TOKENIZER


def _build_float(arch: str, out: Path) -> None:
    prepare_process_env()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ..chat.templates import FALLBACKS, fallback_name
    from .tiny_configs import EMBED_SCALE, END_OF_TURN

    hub = hub_config(arch)
    fields = {k: v for k, v in hub_config(arch).items() if k not in ("architectures", "model_type")}
    cfg = AutoConfig.for_model(hub["model_type"], **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(EMBED_SCALE.get(arch, 1.0))
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):  # ones / zeros at init: perturb them
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    dtype = getattr(torch, hub["torch_dtype"])
    hf_logging.disable_progress_bar()
    model.to(dtype).save_pretrained(str(out), safe_serialization=True)
    (out / "config.json").write_text(json.dumps(hub, indent=2))
    write_tokenizer(out, _tokenizer_model(), end_of_turn=END_OF_TURN.get(arch),
                    chat_template=FALLBACKS[fallback_name(hub["model_type"])])


# --- quantization ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet(log_path: Path):
    """gptqmodel prints banners, progress bars and tables to stdout and stderr: into log_path instead."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _quantize(q: Quant, src: Path, out: Path) -> None:
    prepare_process_env()
    os.environ.setdefault("GPTQMODEL_LOG_LEVEL", "ERROR")
    log_path = tiny_dir() / "build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(log_path):
        from gptqmodel import GPTQModel, QuantizeConfig

        if q.method == "awq":
            qcfg = QuantizeConfig(quant_method="awq", format="gemm", bits=q.bits, group_size=q.group_size,
                                  sym=q.sym)
        else:
            # gptqmodel's group-aware reordering (its default) needs groups and excludes desc_act
            gar = {} if q.group_size > 0 and not q.desc_act else {"act_group_aware": False}
            qcfg = QuantizeConfig(bits=q.bits, group_size=q.group_size, sym=q.sym, desc_act=q.desc_act,
                                  lm_head=q.lm_head, **gar)
        model = GPTQModel.load(str(src), qcfg, device="cpu")
        model.quantize(_calibration(model.tokenizer, n=16), batch_size=4)
        model.save(str(out))
    saved = json.loads((out / "config.json").read_text())
    hub = json.loads((src / "config.json").read_text())
    hub["quantization_config"] = {k: v for k, v in saved["quantization_config"].items() if k != "meta"}
    (out / "config.json").write_text(json.dumps(hub, indent=2))
    if q.method == "awq" and q.awq_format == "gemv":
        from .awq_pack import gemm_to_gemv

        gemm_to_gemv(out)
    for extra in ("tokenizer.model",):
        (out / extra).write_bytes((src / extra).read_bytes())


if __name__ == "__main__":
    names = sys.argv[1:]
    if names:
        for n in names:
            print(n, quantized_model(n) if not n.endswith("-float") else float_model(n[:-len("-float")]))
    else:
        build_all()
