"""AWQ checkpoints (AutoAWQ GEMM/GEMV layouts): transformers + gptqmodel's AWQ kernels."""

from __future__ import annotations

from .hf_quant import HFQuantBackend


class AWQBackend(HFQuantBackend):
    name = "gptqmodel-awq"
    formats = ("awq",)
    install_hint = "pip install 'quantdeploy[awq]'"

    def _config_class(self):
        from transformers import AwqConfig

        return AwqConfig
