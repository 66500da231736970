"""Programmatic dependent launch (PDL, compute capability 9.0+) for the decode step's kernels.

Launched with PDL, a kernel may start while the previous kernel in the stream is still running; it must
`griddepcontrol.wait` before it reads that kernel's output or writes anything. The decode step's kernels (the CUDA
GEMV, the fused Triton ops) all do, so each one's launch, and the GEMV's first weight loads, overlap the kernel
before it: a batch-1 step is ~300 small kernels, and their gaps are a large share of its time (15 % on an H200).
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=8)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def enabled(device) -> bool:
    device = torch.device(device)
    if device.type != "cuda":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())
