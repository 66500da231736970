"""gptqmodel's ExLlamaV2 GEMM/GEMV as a linear for the fast engine (CUDA, fp16, graph-capturable).

Built straight from a fused QuantWeight (GPTQ v2 layout: qweight packed along K, true zero points packed along
N, fp16 scales); AWQ weights arrive here already repacked. Chosen over our Triton GEMV on CUDA when it loads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

import torch

log = logging.getLogger("quantdeploy.engine")


_LAUNCH = re.compile(r"<<<\s*(\w+)\s*,\s*(\w+)\s*>>>")


def stream_safe_sources(root: Path, cache: Path) -> Path:
    """A copy of gptqmodel's ExLlamaV2 sources whose kernels launch on torch's current stream.

    Upstream launches `kernel<<<grid, block>>>` on the legacy default stream: under CUDA-graph capture (a side
    stream) those launches run once, outside the graph, and every replay silently skips the quantized GEMVs
    (garbage logits, impossible tokens/s). Patched copies are cached by the sources' hash."""
    h = hashlib.sha256()
    files = sorted(f for f in root.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    for f in files:
        h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    dst = cache / f"src-{h.hexdigest()[:16]}"
    if (dst / ".complete").is_file():
        return dst
    tmp = cache / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(root, tmp, ignore=shutil.ignore_patterns("__pycache__"))
    patched = 0
    for f in tmp.rglob("*.cu"):
        text = f.read_text()
        new, n = _LAUNCH.subn(r"<<<\1, \2, 0, at::cuda::getCurrentCUDAStream()>>>", text)
        if n:
            f.write_text("#include <ATen/cuda/CUDAContext.h>\n" + new)
            patched += n
    if not patched:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"no kernel launch found to patch in {root}")
    (tmp / ".complete").write_text(str(patched))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def _use_stream_safe_build() -> None:
    """Point gptqmodel's ExLlamaV2 JIT build at the patched sources, in a build root of our own (set before the
    extension first loads in this process)."""
    from gptqmodel.utils import exllamav2 as ex

    from ..settings import get_settings

    if getattr(ex, "_quantdeploy_patched", False):
        return
    cache = get_settings().home / "exllamav2"
    src = stream_safe_sources(ex._exllamav2_root(), cache)
    ex._exllamav2_root = lambda: src
    os.environ["GPTQMODEL_EXLLAMAV2_BUILD_ROOT"] = str(cache / "build")
    ex._quantdeploy_patched = True


def available() -> tuple[bool, str]:
    try:
        from gptqmodel.nn_modules.qlinear.exllamav2 import ExllamaV2Linear

        _use_stream_safe_build()

        ok, err = ExllamaV2Linear.validate_once()
        return (True, "") if ok else (False, str(err))
    except Exception as e:  # missing package, no CUDA toolkit for the JIT build, ...
        return False, f"{type(e).__name__}: {e}"


class ExllamaLinears:
    """Owns the shared scratch space; makes one ExllamaV2Linear per fused weight."""

    kernel = "exllamav2-gemm"  # the name kernel reports show

    def __init__(self, device):
        self.device = device
        self.mods = []

    def make(self, w):
        from gptqmodel.nn_modules.qlinear.exllamav2 import ExllamaV2Linear

        if w.perm is not None or w.qzeros is None:
            raise ValueError("ExLlamaV2 path needs trivial g_idx and integer zero points")
        mod = ExllamaV2Linear(bits=4, group_size=w.group_size, desc_act=False, sym=False, in_features=w.k,
                              out_features=w.n, bias=False)
        # ExLlama shuffles qweight in place when it builds its matrix: the caller hands it over (drops its own)
        mod.qweight = w.qweight.to(self.device)
        mod.qzeros = w.qzeros.to(self.device)
        mod.scales = w.scales.to(self.device, torch.float16)
        mod.g_idx = (torch.arange(w.k, device=self.device, dtype=torch.int32) // w.group_size)
        self.mods.append(mod)
        return mod

    def finish(self, max_tokens: int):
        from gptqmodel.utils.exllamav2 import ScratchSpace

        size = max(m.scratch_space_fixed(max_input_len=max_tokens, max_batch_size=1) for m in self.mods)
        self.scratch = ScratchSpace(size, self.device)
        for m in self.mods:
            m.post_init(self.scratch)
