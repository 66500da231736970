"""GGUF copies of the tiny float checkpoints, made with llama.cpp's own converter and quantizer.

The converter (convert_hf_to_gguf.py, its conversion/ package and gguf-py) is the one vendored in the sdist of the
installed llama-cpp-python, so it writes what that llama.cpp reads. It is not part of quantdeploy: the sdist is
fetched once with pip (`pip download --no-binary :all: --no-deps llama-cpp-python==VERSION`, kept under
$QUANTDEPLOY_HOME/sdist) and the converter extracted next to it. Each float model becomes an F32 GGUF (its weights
exactly) and a Q8_0 one (llama_cpp.llama_model_quantize), cached with the tiny checkpoints.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

from ..settings import get_settings
from .fixtures import _atomic_build
from .tiny import _quiet, float_model, tiny_dir
from .tiny_configs import ARCHS

QUANT_TYPES = ("F32", "Q8_0")
# Not converted: llama.cpp's converter reads Qwen3-MoE's tokenizer only as a GPT-2 BPE whose pre-tokenizer it
# recognizes by hash (the real Qwen one); the tiny models share a SentencePiece tokenizer.
NOT_CONVERTED = {"qwen3_moe": "llama.cpp's converter takes only Qwen's own BPE tokenizer for qwen3_moe"}
_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def _sdist() -> Path:
    v = version("llama_cpp_python")
    where = get_settings().home / "sdist"
    found = sorted(where.glob(f"llama_cpp_python-{v}.tar.gz"))
    if found:
        return found[0]
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                           "--disable-pip-version-check", "-d", str(where), f"llama-cpp-python=={v}"],
                          capture_output=True, text=True)
    found = sorted(where.glob(f"llama_cpp_python-{v}.tar.gz"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"pip could not download the llama-cpp-python {v} sdist (llama.cpp's converter is in it): "
                           f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return found[0]


def converter_dir() -> Path:
    """llama.cpp's converter from the installed llama-cpp-python's sdist, extracted once."""
    v = version("llama_cpp_python")

    def extract(out: Path) -> None:
        prefix = f"llama_cpp_python-{v}/vendor/llama.cpp/"
        with tarfile.open(_sdist()) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].startswith(_MEMBERS) and (m.isfile() or m.isdir())]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(out, members=members, filter="data")
        if not (out / "convert_hf_to_gguf.py").is_file():
            raise RuntimeError(f"the llama-cpp-python {v} sdist has no vendor/llama.cpp/convert_hf_to_gguf.py")

    return _atomic_build(get_settings().home / "llama.cpp-convert" / v, extract)


_DRIVER = r"""
import sys
sys.path.insert(0, sys.argv[1])
import convert_hf_to_gguf as c
for model, out in zip(sys.argv[2::2], sys.argv[3::2]):
    sys.argv = ["convert_hf_to_gguf.py", model, "--outfile", out, "--outtype", "f32"]
    c.main()
"""


def convert(models: list[tuple[Path, Path]], log_path: Path) -> None:
    """(float checkpoint, output .gguf) pairs through the converter, in one process (torch imports once)."""
    args = [str(a) for pair in models for a in pair]
    with open(log_path, "a") as log:
        proc = subprocess.run([sys.executable, "-c", _DRIVER, str(converter_dir()), *args], stdout=log,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp's converter failed (exit {proc.returncode}); see {log_path}")


def quantize(src: Path, dst: Path, qtype: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise RuntimeError(f"llama_model_quantize {src.name} -> {qtype} failed ({rc})")


def gguf_models() -> dict[str, dict[str, Path]]:
    """arch -> {quant type -> .gguf file} for every tiny architecture, built together (one converter run)."""
    archs = [a for a in ARCHS if a not in NOT_CONVERTED]
    out_dir = tiny_dir() / "gguf"

    def build(tmp: Path) -> None:
        todo = [(float_model(a), tmp / f"{a}-F32.gguf") for a in archs]
        convert(todo, tiny_dir() / "build.log")
        with _quiet(tiny_dir() / "build.log"):  # llama.cpp logs every tensor
            for a in archs:
                for q in QUANT_TYPES[1:]:
                    quantize(tmp / f"{a}-F32.gguf", tmp / f"{a}-{q}.gguf", q)

    path = _atomic_build(out_dir, build)
    return {a: {q: path / f"{a}-{q}.gguf" for q in QUANT_TYPES} for a in archs}
