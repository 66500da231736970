"""FastQuantModel: a GPTQ / AWQ checkpoint served by quantdeploy's own decode engine (engine/runner.py), with the
tokenizer, stop tokens and template every HF-format model shares (hf_quant.HFTokenizerModel)."""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

from ..engine.detok import IncrementalDetokenizer
from ..errors import BackendUnavailable, UsageError
from ..settings import get_settings
from .base import GenerationParams, ModelSpec
from .hf_quant import HFTokenizerModel
from .kernels import Choice, FastKernel

log = logging.getLogger("quantdeploy.engine")


class FastQuantModel(HFTokenizerModel):
    backend = "quantdeploy-engine"

    def __init__(self, spec: ModelSpec, choice: Choice):
        """choice: the kernel chooser's, one of the engine's kernels (backends/kernels.py FastKernel)."""
        super().__init__(spec)
        import torch

        from ..engine.runner import FastEngine

        assert isinstance(choice.kernel, FastKernel), choice  # the chooser hands the engine its own kernels only
        self.choice = choice
        cfg = self._init_common(spec)
        on_cuda = self._device.startswith("cuda")
        want = spec.extra.get("dtype")
        if want:
            dtype = getattr(torch, want)
        elif not on_cuda:
            dtype = torch.float32  # the CPU path is the correctness reference: dequantized fp32
        else:
            dtype = self._pick_dtype(cfg, spec, torch)
        self.dtype = str(dtype).replace("torch.", "")
        from ..engine.arch import Unsupported

        try:
            self.engine = FastEngine(spec.path, self._device, dtype, self._ctx, gemv=choice.kernel.gemv,
                                     files=spec.model_files(), config=get_settings().engine, batch=spec.max_seqs)
        except Unsupported as e:  # found only in the weights (a module quantized apart, missing projections)
            raise BackendUnavailable(f"the fast engine cannot run this model: {e}; --engine hf runs it on "
                                     "transformers + gptqmodel") from None
        self._ctx = self.engine.max_len
        self.scheduler = None
        if spec.max_seqs > 1:  # many sequences at once: the paged engine behind the batching scheduler
            from ..batching import Scheduler
            from ..engine.stepper import FastStepper

            chunk = {"chunk_tokens": spec.prompt_chunk} if spec.prompt_chunk else {}
            self.stepper = FastStepper(self.engine.dec, max_seqs=spec.max_seqs, max_len=self._ctx,
                                       memory_fraction=spec.gpu_memory_utilization, **chunk)
            t0 = time.perf_counter()
            if self.stepper.warm():
                log.info("batching: %d decode graphs captured, prompt chunks of %s tokens run, in %.1f s",
                         len(self.stepper.graphs), "/".join(map(str, self.stepper.warmed_prompts)),
                         time.perf_counter() - t0)
            self.scheduler = Scheduler(self.stepper)

    @property
    def max_sequences(self) -> int:
        return self.spec.max_seqs if self.scheduler is not None else 1

    def batch_stats(self) -> dict[str, Any] | None:
        return self.scheduler.stats() if self.scheduler is not None else None

    def _generate_tokens(self, prompt_ids: list[int], params: GenerationParams) -> Iterator[tuple]:
        detok = IncrementalDetokenizer(self.tokenizer)
        stop = set() if params.ignore_eos else self._eog
        if self.scheduler is not None:
            yield from self._batched(prompt_ids, params, stop, detok)
            return
        if params.grammar or params.logprobs is not None:
            yield from self._generate_stepwise(prompt_ids, params, detok, stop)
            return
        for tok in self.engine.generate(prompt_ids, max_new=params.max_tokens + 1, temperature=params.temperature,
                                        top_p=params.top_p, top_k=params.top_k, seed=params.seed,
                                        stop_ids=stop):
            if tok in stop:
                yield tok, ""
                return
            yield tok, detok.push(tok)

    def _batched(self, prompt_ids, params, stop, detok) -> Iterator[tuple]:
        from ..backends.base import GRAMMAR_END, TokenLogprob

        try:
            handle = self.scheduler.submit(prompt_ids, params, stop_ids=stop,
                                           max_new=min(params.max_tokens + 1, self._ctx - len(prompt_ids)),
                                           constraint=self.grammar_state(params))
        except ValueError as e:
            raise UsageError(str(e)) from None
        try:
            for s in handle:
                if s.token in stop:
                    yield s.token, ""
                    return
                piece = detok.push(s.token)
                if s.logprob is None:
                    yield s.token, piece
                else:
                    yield s.token, piece, TokenLogprob(s.token, s.logprob, tuple(s.top or ()))
                if s.final:
                    yield GRAMMAR_END, ""
                    return
        finally:
            handle.cancel()

    def _generate_stepwise(self, prompt_ids: list[int], params: GenerationParams, detok, stop: set[int]
                           ) -> Iterator[tuple]:
        from ..backends.base import GRAMMAR_END
        from ..engine.sampling import Rows, make_generator

        rows = Rows.of([params], [make_generator(self.engine.device, params.seed)])
        for tok, lp in self.engine.generate_stepwise(prompt_ids, max_new=params.max_tokens + 1, rows=rows,
                                                     stop_ids=stop, grammar=self.grammar_state(params)):
            if tok == GRAMMAR_END or tok in stop:
                yield tok, ""
                return
            piece = detok.push(tok)
            yield (tok, piece) if lp is None else (tok, piece, lp)

    def _logits_width(self) -> int:
        return int(self.engine.cfg.vocab)

    def kernel_report(self) -> dict[str, Any]:
        on_cuda = self._device.startswith("cuda")
        linear = self.engine.dec.gemv  # what the engine's linears run: qd-w4a16-gemv, triton-w4a16-gemv, ...
        label = {"qd-w4a16-gemv": "W4A16 GEMV (quantdeploy CUDA)",
                 "triton-w4a16-gemv": "W4A16 GEMV (Triton)"}.get(
            linear, "dequantized matmul")
        layers = {name: f"{label}, fused {name}" for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")}
        return {"backend": self.backend, "format": self.format, "device": self._device,
                "kernel": self.choice.kernel.name, "kernel_reason": self.choice.reason,
                "quant_linear_classes": [linear], "layers": layers, "gpu": on_cuda, "dtype": self.dtype,
                "quant": self.quant, "engine": "fast", "decode_graph": self.engine.graph_kind,
                "prompt_graph": self.engine.prompt_kind, "gemv_tuning": self.engine.dec.tuning,
                "batched_marlin": self.engine.dec.marlin,
                "lm_head": "int8 (QUANTDEPLOY_LM_HEAD)" if self.engine.dec.head is not None else "checkpoint"}

    def logits(self, token_ids: list[int]) -> Any:
        import torch

        with torch.inference_mode():
            return self.engine.prefill(list(token_ids), all_logits=True).float().cpu().numpy()

    def close(self) -> None:
        if getattr(self, "scheduler", None) is not None:
            self.scheduler.close()
            self.scheduler = None
        if self.engine is not None:
            self.engine.close()
        self.engine = None
