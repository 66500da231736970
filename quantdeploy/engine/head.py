"""An 8-bit lm_head (opt-in: QUANTDEPLOY_LM_HEAD=int8, EngineConfig.lm_head), for checkpoints whose lm_head is fp16
and untied.

An 8B model's fp16 lm_head is 1.05 GB of the ~4.7 GB a decode step reads (0.25 ms of its 1.8 ms on an H200).
Quantized at load to int8 per output row (symmetric, scale = the row's absmax / 127) it is half that; llama.cpp's
Q4_K_M keeps its output matrix in Q6_K for the same reason. Logits move by ~0.7 % relative (the CPU test), so
greedy tokens can differ where two logits nearly tie: it is off by default, and the reference tests run without it.
The fp16 weight is dropped once quantized (no second copy). One Triton GEMV serves the batch-1 step on CUDA; longer
inputs (prompts, the CPU) dequantize a slice of rows at a time.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("quantdeploy.engine")

ROWS = 8192  # rows quantized / dequantized at a time: bounds the temporary memory


def wanted(mode: str, tied: bool) -> bool:
    """mode (EngineConfig.lm_head) "int8" asks for it; a tied lm_head (the embedding table, still needed in full)
    keeps its checkpoint dtype, with a warning."""
    if mode == "int8" and tied:
        log.warning("QUANTDEPLOY_LM_HEAD=int8 ignored: this model's lm_head is its embedding table")
    return mode == "int8" and not tied


class Int8Head:
    def __init__(self, w: torch.Tensor):
        n, k = w.shape
        self.q = torch.empty((n, k), dtype=torch.int8, device=w.device)
        self.scale = torch.empty(n, dtype=torch.float32, device=w.device)
        for i in range(0, n, ROWS):
            part = w[i:i + ROWS].float()
            s = part.abs().amax(1).clamp_min(1e-8) / 127
            self.q[i:i + ROWS] = torch.round(part / s[:, None]).clamp_(-127, 127).to(torch.int8)
            self.scale[i:i + ROWS] = s
        self.shape = (n, k)

    def nbytes(self) -> int:
        return self.q.numel() + self.scale.numel() * 4

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] -> fp32 logits [M, N]."""
        if x.shape[0] == 1 and x.is_cuda:
            from .triton_head import int8_gemv

            return int8_gemv(x, self.q, self.scale)
        out = torch.empty((x.shape[0], self.shape[0]), dtype=torch.float32, device=x.device)
        for i in range(0, self.shape[0], ROWS):
            w = self.q[i:i + ROWS].to(x.dtype) * self.scale[i:i + ROWS, None].to(x.dtype)
            out[:, i:i + ROWS] = (x @ w.t()).float()
        return out
