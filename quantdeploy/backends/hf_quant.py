"""Shared loader for HF-format quantized checkpoints (GPTQ and AWQ).

The kernel chooser (backends/kernels.py) picks the kernel, and with it the engine: quantdeploy's fast engine
(fast.py) or transformers + gptqmodel (HFQuantModel here, the kernel passed to transformers explicitly; the report
reads back the QuantLinear class gptqmodel really installed in each layer).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

from ..errors import BackendUnavailable, InvalidModel, QuantDeployError, UnsupportedFormat
from ..settings import get_settings, prepare_process_env
from . import hf_files
from .base import (Backend, Confidence, GenerationParams, KernelStatus, LoadedModel, ModelFiles, ModelSpec,
                   PullChoice, TemplateSource)
from .hw import pick_torch_device
from .kernels import ENGINES, Choice, Kernel, LayerConfig, Target, choose, survey

log = logging.getLogger("quantdeploy.hf")
DEFAULT_CTX = 8192
_GPU_CLASSES = ("Marlin", "ExllamaV2", "Exllama", "Triton", "Machete", "Gemm", "Gemv", "BitBLAS", "Cuda")


class HFQuantBackend(Backend):
    """Base for gptq.py and awq.py: they set name, formats and _config_class."""

    install_hint = "pip install 'quantdeploy[gptq]'"
    _needs = ("torch", "transformers", "gptqmodel")
    # gptqmodel's Marlin, Machete, ExLlama, Triton, BitBLAS and AWQ kernels, and the fast engine's W4A16 GEMV
    kernel_patterns = ("marlin", "machete", "exllama", "gemm_half_q_half", "gptq_gemm", "gptq_gemv", "gptq", "awq",
                       "gemm_forward_4bit", "gemv_forward", "quant_matmul", "bitblas", "qgemm", "w4a16")

    def detect(self, files: ModelFiles) -> Confidence | None:
        quant = files.quant
        return Confidence.DECLARED if quant is not None and quant.method in self.formats else None

    def inspect(self, spec: ModelSpec) -> dict[str, Any]:
        return hf_files.describe_checkpoint(spec)

    def pull_choice(self, files: ModelFiles, tag: str | None) -> PullChoice:
        return hf_files.pull_choice(files)

    def pull_check(self, files: ModelFiles, choice: PullChoice, selected: list[str]) -> None:
        hf_files.pull_check(files, selected)

    def check_environment(self) -> tuple[bool, str]:
        import importlib.util

        missing = [m for m in self._needs if importlib.util.find_spec(m) is None]
        if missing:
            return False, f"missing {', '.join(missing)}: {self.install_hint}"
        return True, ""

    def kernels(self, spec: ModelSpec | None = None) -> list[KernelStatus]:
        engine = get_settings().engine
        target = Target.of(pick_torch_device(spec.device if spec is not None else "auto"))
        if spec is None:
            return survey(self.formats[0], None, target, forced=engine.kernel, disabled=engine.disabled_kernels)
        return survey(spec.format, self._layer(spec), target, forced=spec.kernel or engine.kernel,
                      disabled=engine.disabled_kernels, engine=spec.engine)

    def choose(self, spec: ModelSpec) -> Choice:
        """The kernel for this model here (--kernel, QUANTDEPLOY_KERNEL, QUANTDEPLOY_DISABLED_KERNELS, --engine)."""
        engine = get_settings().engine
        forced, by = (spec.kernel, "--kernel") if spec.kernel else (engine.kernel, "QUANTDEPLOY_KERNEL")
        target = Target.of(pick_torch_device(spec.device))
        return choose(spec.format, self._layer(spec), target, forced=forced, forced_by=by,
                      disabled=engine.disabled_kernels, engine=spec.engine)

    @staticmethod
    def _layer(spec: ModelSpec) -> LayerConfig:
        cfg, quant = hf_files.require_config(spec.model_files(), spec.format)
        return LayerConfig.from_checkpoint(spec.format, cfg, quant)

    def check_files(self, spec: ModelSpec) -> None:
        from .hf_check import check_checkpoint

        check_checkpoint(spec.path, spec.format, allow_pickle=spec.allow_pickle, files=spec.model_files())

    def _config_class(self):
        raise NotImplementedError

    def load(self, spec: ModelSpec) -> LoadedModel:
        prepare_process_env()
        choice = self.choose(spec)
        log.info("kernel %s on the %s (%s)", choice.kernel.name, choice.kernel.engine, choice.reason)
        if choice.engine == "fast":
            from .fast import FastQuantModel

            return FastQuantModel(spec, choice)
        return HFQuantModel(spec, self, choice)

    def runs_on(self, spec: ModelSpec) -> tuple[str, str]:
        """What runs the model here and why: the engine of the kernel the chooser picks (backends/kernels.py)."""
        env_ok, missing = self.check_environment()
        if not env_ok:
            return ENGINES["hf"], f"not installed here: {missing}"
        c = self.choose(spec)
        return f"{ENGINES[c.engine]} ({c.kernel.name} kernel)", c.summary


class HFTokenizerModel(LoadedModel):
    """What every HF-format quantized model shares: config, quantization, device, tokenizer, stop tokens, template.
    Subclasses run the weights: HFQuantModel (transformers + gptqmodel) and fast.FastQuantModel."""

    def _init_common(self, spec: ModelSpec) -> dict:
        from transformers import AutoTokenizer

        self.format = spec.format
        path = spec.path
        cfg, self.quant_config = hf_files.require_config(spec.model_files(), spec.format)
        hf_files.weight_files(path, spec.allow_pickle)
        self.quant = self.quant_config.summary()
        self._device = pick_torch_device(spec.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=spec.trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InvalidModel(f"{path.name}: the tokenizer could not be loaded ({str(e)[:200]}); "
                               "re-download the model") from None
        text_cfg = cfg.get("text_config") or cfg
        self._model_type = str(cfg.get("model_type", ""))
        self._config_eos = cfg.get("eos_token_id")
        model_ctx = int(text_cfg.get("max_position_embeddings") or 4096)
        self._ctx = min(model_ctx, spec.n_ctx or DEFAULT_CTX)
        self._gen_eos = (spec.model_files().json("generation_config.json") or {}).get("eos_token_id")
        self._eog = self._find_eog()
        return cfg

    @property
    def device(self) -> str:
        return self._device

    @property
    def context_length(self) -> int:
        return self._ctx

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(token_id) or ""

    def eog_token_ids(self) -> set[int]:
        return set(self._eog)

    def _find_eog(self) -> set[int]:
        from ..chat.templates import END_OF_TURN_TOKENS

        ids: set[int] = set()
        for v in (self._gen_eos, self._config_eos):
            ids.update(v if isinstance(v, (list, tuple)) else [v] if v is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        for t in END_OF_TURN_TOKENS:
            if t in vocab and t in (self.tokenizer.all_special_tokens + list(self.tokenizer.get_added_vocab())):
                ids.add(vocab[t])
        return {int(i) for i in ids}

    def _logits_width(self) -> int:
        """Tokens the model's logits cover (may exceed the tokenizer's vocabulary: padded rows)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    def _build_grammar_tokenizer(self) -> Any:
        from ..structured.vocab import from_hf

        return from_hf(self.tokenizer, self._logits_width(), self._eog)

    def chat_template_info(self) -> TemplateSource:
        t = self.tokenizer
        return TemplateSource(template=getattr(t, "chat_template", None), architecture=self._model_type,
                              bos_token=t.bos_token or "", eos_token=t.eos_token or "")

    @staticmethod
    def _pick_dtype(cfg: dict, spec: ModelSpec, torch):
        want = spec.extra.get("dtype")
        if want:
            return getattr(torch, want)
        # Gemma activations overflow fp16; CPU kernels run bf16 best; GPU kernels default to fp16.
        if not spec.device.startswith("cuda") and spec.device != "auto":
            return torch.bfloat16
        if str(cfg.get("model_type", "")).startswith("gemma") or cfg.get("torch_dtype") == "bfloat16":
            return torch.bfloat16
        from .hw import cuda_device_count

        return torch.float16 if cuda_device_count() else torch.bfloat16


class HFQuantModel(HFTokenizerModel):
    def __init__(self, spec: ModelSpec, backend: HFQuantBackend, choice: Choice):
        super().__init__(spec)
        import torch
        from transformers import AutoModelForCausalLM

        self.backend = "transformers+gptqmodel"
        cfg = self._init_common(spec)
        path = spec.path
        self.kernel, self.kernel_why = choice.kernel, choice.reason
        dtype = self._pick_dtype(cfg, spec, torch)
        qcfg = backend._config_class()(bits=self.quant["bits"], group_size=self.quant["group_size"],
                                       backend=self.kernel.backend_value)
        from .hf_layout import gptqmodel_backend, layout_mismatch, missing_weights, unfilled_layers

        apart = layout_mismatch(path, cfg, spec.trust_remote_code)
        self.loader, missing = "transformers", []
        try:
            if apart:  # a layout transformers' model has no place for: gptqmodel's loader knows it
                from gptqmodel import GPTQModel

                self.loader = f"gptqmodel's loader ({apart} has no layer in transformers' {self._model_type})"
                self.model = GPTQModel.load(str(path), device=self._device, dtype=dtype,
                                            backend=gptqmodel_backend(spec.format, self.kernel.backend_value),
                                            trust_remote_code=spec.trust_remote_code).model
            else:
                self.model, info = AutoModelForCausalLM.from_pretrained(
                    str(path), quantization_config=qcfg, device_map=self._device, dtype=dtype,
                    use_safetensors=not spec.allow_pickle, trust_remote_code=spec.trust_remote_code,
                    output_loading_info=True)
                missing = missing_weights(info, bool(getattr(self.model.config, "tie_word_embeddings", False)))
            empty, unused = unfilled_layers(self.model, path)
            if missing or empty or unused:
                what = f"no weights for {(missing or empty)[0]}" if missing or empty else \
                    f"no layer for the checkpoint's {unused[0]}"
                raise InvalidModel(f"{path.name}: the loaded {self._model_type} model has {what} (names that do not "
                                   "match its layers); it would run uninitialized memory")
        except QuantDeployError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError, ImportError, TypeError, AttributeError) as e:
            raise _explain_load_error(e, path, self.kernel, self._model_type) from None
        self.model.eval()
        self.dtype = str(dtype).replace("torch.", "")
        self.config = self.model.config

    def _generate_tokens(self, prompt_ids: list[int], params: GenerationParams) -> Iterator[tuple[int, str]]:
        from ..engine.hf_loop import stream_tokens

        return stream_tokens(self.model, self.tokenizer, prompt_ids, params, self._eog, self._ctx,
                             grammar=self.grammar_state(params))

    def layer_classes(self) -> dict[str, str]:
        """Linear layer type (q_proj, ...) -> class that runs it."""
        seen: dict[str, set[str]] = {}
        for name, mod in self.model.named_modules():
            cls = type(mod)
            if "gptqmodel" in cls.__module__ or "QuantLinear" in cls.__name__ or cls.__name__.endswith("Linear") \
                    and name.endswith(("proj", "lm_head", "fc1", "fc2", "dense")):
                seen.setdefault(name.split(".")[-1], set()).add(cls.__name__)
        return {k: ", ".join(sorted(v)) for k, v in sorted(seen.items())}

    def kernel_report(self) -> dict[str, Any]:
        layers = self.layer_classes()
        quant_classes = sorted({c for k, c in layers.items() if k != "lm_head"})
        on_gpu = self._device.startswith("cuda")
        gpu_kernel = on_gpu and any(any(g in c for g in _GPU_CLASSES) for c in quant_classes) \
            and not any(c.startswith("Torch") for c in quant_classes)
        return {"backend": self.backend, "format": self.format, "device": self._device,
                "kernel": self.kernel.name, "kernel_reason": self.kernel_why, "requested_backend":
                self.kernel.backend_value, "quant_linear_classes": quant_classes, "layers": layers,
                "gpu": gpu_kernel, "dtype": self.dtype, "quant": self.quant, "loader": self.loader}

    def logits(self, token_ids: list[int]) -> Any:
        """Next-token logits after each position (one forward over the whole input), float32 numpy."""
        import torch

        with torch.inference_mode():
            ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self._device)
            out = self.model(input_ids=ids, use_cache=False, logits_to_keep=0)
        return out.logits[0].float().cpu().numpy()

    def close(self) -> None:
        self.model = None
        try:
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass


def _explain_load_error(e: Exception, path: Path, kernel: Kernel, model_type: str) -> QuantDeployError:
    msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    if isinstance(e, ImportError):
        return BackendUnavailable(f"loading {path.name} needs a missing package ({msg}); "
                                  "pip install 'gptqmodel==7.7.0' optimum")
    if "CUTLASS" in msg or "urlopen" in msg.lower() or "URLError" in msg:
        return BackendUnavailable(f"kernel {kernel.name} tried to download code and this machine is offline; "
                                  "pass --kernel marlin")
    if "does not recognize this architecture" in msg:
        import transformers

        return UnsupportedFormat(f"{path}: transformers {transformers.__version__} does not know the architecture "
                                 f"'{model_type}' (config.json model_type); upgrade transformers, or pass "
                                 "--trust-remote-code if the repo ships the model's code")
    if "size mismatch" in msg or "mismatched_sizes" in msg:
        return InvalidModel(f"{path}: the weights do not match config.json (tensor shapes differ), so they come from "
                            "another model or a file is damaged; re-download the model")
    if isinstance(e, (KeyError, ValueError, TypeError)) or "safetensor" in msg.lower():
        return InvalidModel(f"{path.name} could not be loaded ({type(e).__name__}: {msg}); "
                            "the files may be corrupt or not match config.json — re-download the model")
    return InvalidModel(f"{path.name} could not be loaded with kernel {kernel.name}: {msg}")
