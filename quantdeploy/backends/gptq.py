"""GPTQ checkpoints: transformers + optimum + gptqmodel, kernel chosen explicitly (never Machete offline)."""

from __future__ import annotations

from .hf_quant import HFQuantBackend


class GPTQBackend(HFQuantBackend):
    name = "gptqmodel"
    formats = ("gptq",)
    expects = "config.json with quantization_config.quant_method gptq (or AutoGPTQ's quantize_config.json)"
    _needs = ("torch", "transformers", "gptqmodel", "optimum")

    def _config_class(self):
        from transformers import GPTQConfig

        return GPTQConfig
