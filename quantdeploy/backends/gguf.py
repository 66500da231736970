"""GGUF through llama-cpp-python: every layer on the GPU when the build can offload, loudly on the CPU otherwise."""

from __future__ import annotations

import codecs
import functools
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import BackendUnavailable, InvalidModel, UsageError
from . import gguf_quants
from .base import (GRAMMAR_END, Backend, Confidence, GenerationParams, KernelStatus, LoadedModel, ModelFiles,
                   ModelSpec, PullChoice, PullOffer, TemplateSource, TokenLogprob)
from .gguf_check import GGUF_MAGIC, describe_gguf, validate_gguf
from .gguf_split import device_map, llama_kwargs
from .hw import cuda_device_count, pick_torch_device
from .np_logits import StepLogprobs

log = logging.getLogger("quantdeploy.gguf")
DEFAULT_CTX = 8192  # allocated when the model's own context is larger (KV cache memory); --ctx overrides
IDLE_CTX = 256  # the tokenizing context's size when a batching context of its own decodes
INSTALL_HINT = ("./install.sh builds it for this machine, or: CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON "
                "-DGGML_FMA=ON -DGGML_F16C=ON\" pip install 'quantdeploy[gguf]'")


def _llama_cpp():
    import llama_cpp

    _quiet_llama_log(llama_cpp)
    return llama_cpp


_log_callback = None


def _quiet_llama_log(llama_cpp) -> None:
    """Route llama.cpp's own log lines to our logger (DEBUG) instead of stderr: users see our messages only."""
    global _log_callback
    if _log_callback is not None:
        return
    import ctypes

    @llama_cpp.llama_log_callback
    def _cb(level, text, user_data):
        log.debug("llama.cpp[%d]: %s", level, text.decode("utf-8", "replace").rstrip())

    _log_callback = _cb
    llama_cpp.llama_log_set(_cb, ctypes.c_void_p(0))


def gpu_offload_supported() -> bool:
    try:
        return bool(_llama_cpp().llama_supports_gpu_offload())
    except Exception:
        return False


class GGUFBackend(Backend):
    name = "llama.cpp"
    formats = ("gguf",)
    install_hint = INSTALL_HINT
    expects = "a .gguf file, or a directory of them"
    kernel_patterns = ("mul_mat_vec_q", "mul_mat_q", "mmvq")  # llama.cpp's quantized matmuls (ggml CUDA)

    def detect(self, files: ModelFiles) -> Confidence | None:
        """A .gguf file or one starting with the GGUF magic; a directory (or repo) holding model .gguf files."""
        single = files.single_file
        if single:
            return Confidence.EXACT if single.lower().endswith(".gguf") or files.read(single, 4) == GGUF_MAGIC \
                else None
        return Confidence.FILES if any(gguf_quants.is_model_gguf(n) for n in files.names()) else None

    def pull_choice(self, files: ModelFiles, tag: str | None) -> PullChoice:
        return gguf_quants.pull_choice(files, tag)

    def pull_check(self, files: ModelFiles, choice: PullChoice, selected: list[str]) -> None:
        dropped = [p for p in choice.files if p not in selected]
        if dropped:
            raise UsageError(f"--exclude would drop {', '.join(dropped)}, needed to load {files.name}:{choice.variant}")

    def pull_offers(self, files: ModelFiles) -> list[PullOffer]:
        return gguf_quants.pull_offers(files)

    def check_environment(self) -> tuple[bool, str]:
        try:
            import diskcache  # noqa: F401  llama_cpp imports it for its cache
            import llama_cpp  # noqa: F401
        except ImportError as e:
            return False, f"llama-cpp-python is not installed ({e.name}); {INSTALL_HINT}"
        return True, ""

    def kernels(self, spec: ModelSpec | None = None) -> list[KernelStatus]:
        build, gpus = gpu_offload_supported(), cuda_device_count() > 0
        why = "" if build and gpus else "no GPU here" if build else "llama-cpp-python is a CPU build"
        gpu = build and gpus and (spec is None or spec.device != "cpu")
        return [KernelStatus("llama.cpp-cuda", "llama.cpp", build and gpus, "chosen" if gpu else why or "--device cpu",
                             chosen=gpu),
                KernelStatus("llama.cpp-cpu", "llama.cpp", True, "the layers not offloaded" if gpu else "chosen",
                             chosen=not gpu)]

    def check_files(self, spec: ModelSpec) -> None:
        _validated(gguf_main_file(spec))

    def runs_on(self, spec: ModelSpec) -> tuple[str, str]:
        cuda = self.kernels(spec)[0]
        if cuda.chosen:
            return "llama.cpp (CUDA)", "its layers offloaded to the GPU (--gpu-layers; default: all)"
        return "llama.cpp (CPU)", cuda.reason

    def inspect(self, spec: ModelSpec) -> dict[str, Any]:
        f = gguf_main_file(spec)
        return describe_gguf(f, _validated(f))

    def load(self, spec: ModelSpec) -> LoadedModel:
        path = gguf_main_file(spec)
        info = _validated(path)  # never hand llama.cpp a truncated or garbage file
        return GGUFModel(spec, path, info)


def _validated(path: Path) -> dict:
    """validate_gguf(path), read once per file version (check_files and load both ask)."""
    st = path.stat()
    return dict(_validate_cached(str(path), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _validate_cached(path: str, size: int, mtime_ns: int) -> dict:
    return validate_gguf(Path(path))


def gguf_main_file(spec: ModelSpec) -> Path:
    p = spec.path
    if p.is_file():
        return p
    files = sorted(p.glob("*.gguf"))
    if spec.gguf_file:
        f = p / spec.gguf_file
        if not f.is_file():
            raise InvalidModel(f"{f} does not exist; files here: {', '.join(x.name for x in files) or 'none'}")
        return f
    firsts = [f for f in files if "-of-" not in f.name or "-00001-of-" in f.name]
    if len(firsts) == 1:
        return firsts[0]
    if not firsts:
        raise InvalidModel(f"{p} holds no .gguf file")
    raise UsageError(f"{p} holds several GGUF models ({', '.join(f.name for f in firsts)}); pass one file as MODEL")


class GGUFModel(LoadedModel):
    format = "gguf"
    backend = "llama.cpp"

    def __init__(self, spec: ModelSpec, path: Path, info: dict[str, Any]):
        super().__init__(spec)
        llama_cpp = _llama_cpp()  # before anything imports torch: see hw.cuda_device_count
        self.path = path
        self.info = info
        pick_torch_device(spec.device)  # validates the name; cuda without a usable GPU is an error
        want_gpu = spec.device != "cpu"
        gpus = cuda_device_count()
        self.gpu_build = gpu_offload_supported()
        self.warning = None
        if spec.device.startswith("cuda") and not self.gpu_build:
            raise BackendUnavailable("--device cuda asked, but this llama-cpp-python build cannot offload to a GPU; "
                                     'rebuild it: CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall '
                                     "--no-cache-dir llama-cpp-python (or ./install.sh)")
        if gpus and not self.gpu_build and want_gpu:
            self.warning = (f"{gpus} GPU(s) present but llama-cpp-python was built without GPU offload: "
                            "GGUF runs on the CPU. Fix: ./install.sh (CUDA build) or "
                            'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python')
            log.warning(self.warning)
        self.n_gpu_layers = -1 if (want_gpu and self.gpu_build and (gpus or spec.device.startswith("cuda"))) else 0
        if "n_gpu_layers" in spec.extra:
            self.n_gpu_layers = int(spec.extra["n_gpu_layers"])
        train_ctx = int(info.get("context_length") or 2048)
        n_ctx = spec.n_ctx or min(train_ctx, DEFAULT_CTX)
        # half the cores, as llama-cpp-python does: all of them spin-wait badly when anything else runs
        threads = spec.extra.get("n_threads") or max(1, (os.cpu_count() or 2) // 2)
        self._max_seqs, pool = 1, n_ctx
        if spec.max_seqs > 1:
            from .gguf_batch import pool_cells, sequences_for

            pool = spec.n_ctx or pool_cells(n_ctx, spec.max_seqs, bool(self.n_gpu_layers))
            self._max_seqs = sequences_for(pool, spec.max_seqs, llama_cpp.llama_max_parallel_sequences())
        # batching decodes in a context of its own (below): Llama's then only tokenizes, so keep it small
        own_ctx = n_ctx if self._max_seqs == 1 else IDLE_CTX
        self._split = split = llama_kwargs(llama_cpp, spec.extra, gpus, self.gpu_build)  # --tensor-split/--split-mode
        self._gpus = gpus if self.n_gpu_layers else 0
        try:
            self.llm = llama_cpp.Llama(model_path=str(path), n_gpu_layers=self.n_gpu_layers, n_ctx=own_ctx,
                                       n_threads=threads, n_batch=min(512, own_ctx), verbose=False,
                                       flash_attn=bool(self.n_gpu_layers), seed=spec.extra.get("seed", 0xFFFFFFFF),
                                       **split)
        except (ValueError, RuntimeError) as e:
            raise InvalidModel(f"llama.cpp could not load {path.name}: {e}") from None
        # llama.cpp may round n_ctx up (128 -> 256) but llama-cpp-python sizes its token buffer by the request
        self._n_ctx = min(self.llm.n_ctx(), len(self.llm.input_ids))
        self._eog = self._find_eog()
        self._n_batch = min(512, self._n_ctx)
        self._cached: list[int] = []  # tokens whose KV entries the context holds
        self._sched = None
        if self._max_seqs > 1:
            self._start_batching(llama_cpp, pool, n_ctx, threads)

    def _start_batching(self, llama_cpp, pool: int, seq_ctx: int, threads: int) -> None:
        """One llama.cpp context whose KV cells every sequence shares, and the scheduler that fills its steps."""
        from ..batching import Scheduler
        from .gguf_batch import CHUNK_TOKENS, GGUFStepper

        def stepper_of(cells: int, seqs: int) -> GGUFStepper:
            return GGUFStepper(llama_cpp, self.llm.model, n_ctx=cells, seq_ctx=seq_ctx, max_seqs=seqs,
                               n_threads=threads, offloaded=bool(self.n_gpu_layers), n_vocab=self.llm.n_vocab(),
                               chunk_tokens=self.spec.prompt_chunk or CHUNK_TOKENS,
                               sampler_chain=lambda params: self._sampler_chain(llama_cpp, params),
                               # backend sampling crashed llama.cpp on several CUDA GPUs (ggml-org/llama.cpp#18721)
                               backend_greedy=self._gpus <= 1)

        try:
            stepper = stepper_of(pool, self._max_seqs)
        except InvalidModel:
            if pool <= seq_ctx:
                raise
            # the grown pool (gguf_batch.pool_cells) did not fit the GPU: one context's cells, as many as they hold
            from .gguf_batch import sequences_for

            seqs = sequences_for(seq_ctx, self._max_seqs, self._max_seqs)
            log.warning("a KV pool of %d cells for %d sequences did not fit the GPU; batching %d sequences in %d "
                        "cells (--ctx sets the pool)", pool, self._max_seqs, seqs, seq_ctx)
            stepper = stepper_of(seq_ctx, seqs)
            self._max_seqs = seqs
        self._n_ctx = stepper.max_len
        self._sched = Scheduler(stepper, name="quantdeploy-gguf-batch")

    # --- LoadedModel -------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return "cuda:0" if self.n_gpu_layers != 0 else "cpu"

    @property
    def context_length(self) -> int:
        return self._n_ctx

    @property
    def max_sequences(self) -> int:
        return self._max_seqs

    def batch_stats(self) -> dict[str, Any] | None:
        if self._sched is None:
            return None
        return {**self._sched.stats(), "peak_batch": self._sched.stepper.peak_batch}

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def token_text(self, token_id: int) -> str:
        return self.llm.detokenize([token_id], special=True).decode("utf-8", "replace")

    def eog_token_ids(self) -> set[int]:
        return set(self._eog)

    def token_bytes(self, token_id: int) -> bytes:
        import ctypes

        lc = _llama_cpp()
        vocab = lc.llama_model_get_vocab(self.llm.model)
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_token_to_piece(vocab, int(token_id), buf, len(buf), 0, True)
        if n < 0:  # a longer piece: ask again with the size llama.cpp says it needs (-n)
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(vocab, int(token_id), buf, len(buf), 0, True)
        return bytes(buf[:max(0, n)])

    def _find_eog(self) -> set[int]:
        llama_cpp = _llama_cpp()
        ids = {self.llm.token_eos()}
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        n_vocab = self.llm.n_vocab()
        for name in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            v = self.info.get(name)
            if isinstance(v, int) and 0 <= v < n_vocab:
                ids.add(v)
        for text in ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "<|end_of_text|>"):
            toks = self.llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(toks) == 1 and llama_cpp.llama_vocab_is_eog(vocab, toks[0]):
                ids.add(toks[0])
            elif len(toks) == 1 and text in ("<end_of_turn>", "<|eot_id|>", "<|im_end|>"):
                ids.add(toks[0])
        return {i for i in ids if i is not None and i >= 0}

    def chat_template_info(self) -> TemplateSource:
        md = self.llm.metadata or {}
        bos = self.token_text(self.llm.token_bos()) if self.llm.token_bos() >= 0 else ""
        eos = self.token_text(self.llm.token_eos()) if self.llm.token_eos() >= 0 else ""
        return TemplateSource(template=md.get("tokenizer.chat_template"), architecture=self.info.get("architecture", ""),
                              bos_token=bos, eos_token=eos)

    # greedy without the sampler chain (see _argmax); False runs llama.cpp's greedy sampler (tests compare the two)
    fast_greedy = True

    def _generate_tokens(self, prompt_ids: list[int], params: GenerationParams) -> Iterator[tuple]:
        """llama.cpp's own decode + sampler chain, a few ctypes calls per token (no per-token Python sampling).
        The KV cache keeps the longest common prefix with the previous call (multi-turn chats re-use it),
        except for seeded runs, which always prefill in full so their result does not depend on history.
        Logprobs and a grammar work on llama.cpp's logits in place, with numpy, before its sampler reads them.

        A batching model (max_sequences > 1) hands the sequence to its scheduler instead."""
        if self._sched is not None:
            yield from self._generate_batched(prompt_ids, params)
            return
        lc = _llama_cpp()
        ctx = self.llm._ctx.ctx
        mem = lc.llama_get_memory(ctx)
        keep = 0 if params.seed is not None else _common_prefix(self._cached, prompt_ids)
        keep = min(keep, len(prompt_ids) - 1)  # always decode at least the last prompt token (fresh logits)
        lc.llama_memory_seq_rm(mem, -1, keep, -1)
        self._cached = list(prompt_ids[:keep])
        grammar = self.grammar_state(params)
        chain = self._sampler_chain(lc, params)
        greedy = params.temperature <= 0 and self.fast_greedy
        n_vocab = self.llm.n_vocab()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        lc.llama_perf_context_reset(ctx)
        room = self._n_ctx - len(prompt_ids)
        step_logits = grammar is not None or params.logprobs is not None
        try:
            todo = prompt_ids[keep:]
            for i in range(0, len(todo), self._n_batch):
                self._decode(lc, ctx, todo[i:i + self._n_batch])
            self._cached = list(prompt_ids)
            buf = (lc.llama_token * 1)()
            for i in range(room):
                lp = None
                if grammar is not None and grammar.done:
                    yield GRAMMAR_END, ""
                    return
                if step_logits:
                    import numpy as np

                    logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
                    step = StepLogprobs(logits, params.logprobs) if params.logprobs is not None else None
                    if grammar is not None:
                        grammar.mask_numpy(logits)  # the sampler below reads these very logits
                tok = _argmax(lc, ctx, n_vocab) if greedy else lc.llama_sampler_sample(chain, ctx, -1)
                if step_logits and step is not None:
                    lp = step.of(tok)
                if grammar is not None:
                    grammar.accept(tok)
                if tok in self._eog and not params.ignore_eos:
                    yield tok, ""
                    return
                if i + 1 < room:
                    # queue the next step before the caller sees this token: on a GPU llama_decode returns once
                    # the work is queued (the next sample waits for it), so the caller's per-token Python runs
                    # while the GPU computes instead of between steps
                    buf[0] = tok
                    if lc.llama_decode(ctx, lc.llama_batch_get_one(buf, 1)) != 0:
                        raise InvalidModel("llama.cpp failed to decode (context full or out of memory)")
                    self._cached.append(tok)
                piece = decoder.decode(self.llm.detokenize([tok], special=False))
                yield (tok, piece) if lp is None else (tok, piece, lp)
        finally:
            lc.llama_sampler_free(chain)
            self._perf = lc.llama_perf_context(ctx)

    def _build_grammar_tokenizer(self) -> Any:
        from ..structured.vocab import from_llama_cpp

        return from_llama_cpp(self.llm, self._eog)

    def _generate_batched(self, prompt_ids: list[int], params: GenerationParams) -> Iterator[tuple]:
        """One sequence of the batch: submitted to the scheduler, its tokens read back as they come (with their
        logprobs, and under its grammar, as in the unbatched path). Closing the generator (the caller stopped early)
        cancels the sequence, which frees its slot and KV cells."""
        from .gguf_batch import Request

        stop = frozenset() if params.ignore_eos else frozenset(self._eog)
        room = self._n_ctx - len(prompt_ids)
        req = Request(params, self.grammar_state(params))
        try:
            handle = self._sched.submit(prompt_ids, req, stop_ids=stop, max_new=min(params.max_tokens, room))
        except ValueError as e:
            raise UsageError(str(e)) from None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            for n, s in enumerate(handle, 1):
                if req.error_at is not None and n >= req.error_at[0]:
                    raise req.error_at[1]
                if s.token in stop:
                    yield s.token, ""
                    return
                piece = decoder.decode(self.llm.detokenize([s.token], special=False))
                if s.logprob is None:
                    yield s.token, piece
                else:
                    yield s.token, piece, TokenLogprob(s.token, s.logprob, tuple(s.top or ()))
                if req.done_at is not None and n >= req.done_at:
                    yield GRAMMAR_END, ""
                    return
        finally:
            handle.cancel()

    def _decode(self, lc, ctx, tokens: list[int]) -> None:
        arr = (lc.llama_token * len(tokens))(*tokens)
        if lc.llama_decode(ctx, lc.llama_batch_get_one(arr, len(tokens))) != 0:
            raise InvalidModel("llama.cpp failed to decode the prompt (context full or out of memory)")

    @staticmethod
    def _sampler_chain(lc, params: GenerationParams):
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if params.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        if params.top_k:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(int(params.top_k)))
        if params.top_p < 1.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(float(params.top_p), 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(float(params.temperature)))
        seed = int(params.seed) & 0xFFFFFFFF if params.seed is not None else lc.LLAMA_DEFAULT_SEED
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def native_timings(self) -> dict[str, Any] | None:
        """llama.cpp's own timers for the last generation: its eval speed, without any Python around it."""
        p = getattr(self, "_perf", None)
        if p is None or p.n_eval <= 0 or p.t_eval_ms <= 0:
            return None
        return {"decode_tok_s": round(p.n_eval / (p.t_eval_ms / 1e3), 2), "n_eval": p.n_eval,
                "prefill_tok_s": round(p.n_p_eval / (p.t_p_eval_ms / 1e3), 2) if p.t_p_eval_ms > 0 else None}

    def kernel_report(self) -> dict[str, Any]:
        n_layers = int(self.info.get("block_count") or 0)
        offloaded = (n_layers + 1 if self.n_gpu_layers < 0 else min(self.n_gpu_layers, n_layers + 1)) \
            if self.n_gpu_layers else 0
        return {
            "backend": "llama.cpp", "format": "gguf", "device": self.device,
            "kernel": "llama.cpp-cuda" if offloaded else "llama.cpp-cpu",
            "gpu_build": self.gpu_build, "gpu": bool(offloaded),
            "layers_total": n_layers + 1, "layers_offloaded": offloaded,
            "quant": self.info.get("file_type_name"),
            "layers": {"all": "ggml " + ("CUDA" if offloaded else "CPU")},
            "warning": self.warning, "llama_cpp_native": self.native_timings(),
            "device_map": device_map(n_layers, self.n_gpu_layers, self._gpus, self.spec.extra.get("tensor_split"),
                                     self.spec.extra.get("split_mode")),
        }

    def logits(self, token_ids: list[int]) -> Any:
        """Next-token logits after each position, from a second llama.cpp context with logits_all=True sized to
        the input (one of the default size would hold n_ctx x vocab floats)."""
        import numpy as np

        n = len(token_ids)
        if not 0 < n <= self._n_ctx:
            raise UsageError(f"logits: need 1 to {self._n_ctx} tokens, got {n}")
        llm = _llama_cpp().Llama(model_path=str(self.path), n_gpu_layers=self.n_gpu_layers, n_ctx=n,
                                 n_batch=min(512, n), n_threads=self.llm.n_threads if self.llm else None,
                                 logits_all=True, verbose=False, **self._split)
        try:
            llm.eval(list(token_ids))
            return np.array(llm.scores[:n], dtype=np.float32)
        finally:
            llm.close()

    def close(self) -> None:
        sched = getattr(self, "_sched", None)
        if sched is not None:
            sched.close()
            sched.stepper.close()
            self._sched = None
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None


def _argmax(lc, ctx, n_vocab: int) -> int:
    """The greedy token, read in place from llama.cpp's logits. llama_sampler_sample first copies all n_vocab logits
    into a candidate array (a 128k-262k vocabulary), and that copy sits between two GPU steps; numpy's argmax
    takes the first maximum, as llama.cpp's greedy sampler does."""
    import numpy as np

    return int(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).argmax())


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
