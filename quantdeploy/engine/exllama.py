"""gptqmodel's ExLlamaV2 GEMM/GEMV as a linear for the fast engine (CUDA, fp16, graph-capturable).

Built straight from a fused QuantWeight (GPTQ v2 layout: qweight packed along K, true zero points packed along
N, fp16 scales); AWQ weights arrive here already repacked. Chosen over our Triton GEMV on CUDA when it loads.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("quantdeploy.engine")


def available() -> tuple[bool, str]:
    try:
        from gptqmodel.nn_modules.qlinear.exllamav2 import ExllamaV2Linear

        ok, err = ExllamaV2Linear.validate_once()
        return (True, "") if ok else (False, str(err))
    except Exception as e:  # missing package, no CUDA toolkit for the JIT build, ...
        return False, f"{type(e).__name__}: {e}"


class ExllamaLinears:
    """Owns the shared scratch space; makes one ExllamaV2Linear per fused weight."""

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
