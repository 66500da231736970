"""GPTQ checkpoints: transformers + optimum + gptqmodel, kernel chosen explicitly (never Machete offline)."""

from __future__ import annotations

from .hf_quant import HFQuantBackend


class GPTQBackend(HFQuantBackend):
    name = "gptqmodel"
    formats = ("gptq",)
    _needs = ("torch", "transformers", "gptqmodel", "optimum")

    def _config_class(self):
        from transformers import GPTQConfig

        return GPTQConfig
