"""AWQ checkpoints (AutoAWQ GEMM/GEMV layouts): transformers + gptqmodel's AWQ kernels."""

from __future__ import annotations

from .hf_quant import HFQuantBackend


class AWQBackend(HFQuantBackend):
    name = "gptqmodel-awq"
    formats = ("awq",)
    install_hint = "pip install 'quantdeploy[awq]'"
    expects = "config.json with quantization_config.quant_method awq (or AutoAWQ's quant_config.json)"

    def _config_class(self):
        from transformers import AwqConfig

        return AwqConfig
