"""The one interface every backend implements, and the pieces they share.

A backend turns a ModelSpec into a LoadedModel. A LoadedModel streams text for a chat (messages) or a raw
prompt, knows its stop tokens, and says which kernels really run (`kernel_report()`).
"""

from __future__ import annotations

import abc
import enum
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..chat.templates import TURN_START_TOKENS, TemplateSource, render_chat
from ..checkpoint import LocalFiles, ModelFiles
from ..errors import UsageError
from .generation import GRAMMAR_END, Generation, TokenLogprob, Usage

__all__ = ["GRAMMAR_END", "Backend", "Confidence", "Generation", "GenerationParams", "LoadedModel", "ModelFiles",
           "ModelSpec", "PullChoice", "PullOffer", "TemplateSource", "TokenLogprob", "Usage"]


BATCH_CAP = 64  # max_seqs that asks for as many sequences as the model can decode together (it may batch fewer)


@dataclass
class ModelSpec:
    """What to load. `path` is a model directory or a .gguf file; `format` is gptq, awq or gguf."""

    path: Path
    format: str
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    kernel: str | None = None  # force one kernel (gptq/awq: fast_cuda, marlin, ...; the engine follows from it)
    n_ctx: int | None = None  # context window to allocate; None = model's own (capped)
    allow_pickle: bool = False  # load *.bin / *.pt weights (arbitrary code on load): opt-in only
    trust_remote_code: bool = False
    name: str | None = None  # display name (pulled name or file name)
    gguf_file: str | None = None  # GGUF: which file in a directory
    engine: str = "auto"  # auto | hf | fast (GPTQ/AWQ decode loop)
    max_seqs: int = 1  # sequences decoded together (serve: --max-concurrency); backends that batch size for it
    gpu_memory_utilization: float | None = None  # share of the GPU's memory for weights + KV pool (None: default)
    prompt_chunk: int | None = None  # prompt tokens one batching step takes beside its decodes (None: the default)
    extra: dict[str, Any] = field(default_factory=dict)
    files: ModelFiles | None = field(default=None, repr=False, compare=False)  # what detection already read

    @property
    def display_name(self) -> str:
        return self.name or self.path.name

    def model_files(self) -> ModelFiles:
        """The model's files with the config files detection parsed (each file is read once per load)."""
        if self.files is None:
            self.files = LocalFiles(self.path)
        return self.files


@dataclass
class GenerationParams:
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: Sequence[str] = ()
    ignore_eos: bool = False  # benchmarks: generate exactly max_tokens
    # None: off; 0: each sampled token's log-probability; k: also the k likeliest tokens at each step. Taken from the
    # model's own distribution, before temperature, top-k/top-p and the grammar (as vLLM and OpenAI report them).
    logprobs: int | None = None
    # an llguidance grammar (quantdeploy.structured) the output must match; the backend masks the tokens it forbids
    grammar: str | None = None

    def validate(self) -> "GenerationParams":
        if self.max_tokens is None or int(self.max_tokens) <= 0:
            raise UsageError(f"max_tokens must be a positive integer, got {self.max_tokens}")
        if self.temperature is None or self.temperature < 0:
            raise UsageError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is None or not (0 < self.top_p <= 1):
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.logprobs is not None and not 0 <= int(self.logprobs) <= MAX_LOGPROBS:
            raise UsageError(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}")
        return self


MAX_LOGPROBS = 20  # the most alternatives per token a caller may ask for (OpenAI's top_logprobs limit)
class LoadedModel(abc.ABC):
    """A model ready to generate. Backends subclass it and implement the abstract methods."""

    format: str = ""
    backend: str = ""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.load_time_s: float = 0.0

    # --- what a backend implements -------------------------------------------------------------
    @property
    @abc.abstractmethod
    def device(self) -> str:
        """Where the weights live: "cpu", "cuda:0"."""

    @property
    @abc.abstractmethod
    def context_length(self) -> int:
        """Tokens the loaded context window holds."""

    @abc.abstractmethod
    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids; special-token text (<bos>, <start_of_turn>) maps to its id. add_bos=False for text
        rendered by a chat template, which already starts with the BOS token."""

    @abc.abstractmethod
    def _generate_tokens(self, prompt_ids: list[int], params: GenerationParams) -> Iterator[tuple[int, str]]:
        """Yield (token_id, text_piece) for each new token; text pieces concatenate to the reply."""

    @abc.abstractmethod
    def chat_template_info(self) -> TemplateSource:
        """The model's own chat template (or None) and what the fallback needs (architecture, special tokens)."""

    @abc.abstractmethod
    def eog_token_ids(self) -> set[int]:
        """Every end-of-generation / end-of-turn token id the model declares."""

    @abc.abstractmethod
    def kernel_report(self) -> dict[str, Any]:
        """What really runs: {"backend", "device", "kernel", "layers": {layer_type: class}, "gpu": bool, ...}."""

    def close(self) -> None:  # free memory; backends override when they hold native handles
        pass

    def weight_bytes_per_token(self) -> dict[str, Any] | None:
        """{"bytes", "method", "detail"}: the weight bytes one decode step reads, for the bench's GB/s. None: the
        bench counts them itself (a torch module's parameters, a GGUF's tensors, the safetensors files)."""
        return None

    @property
    def max_sequences(self) -> int:
        """Sequences this model decodes together. Above 1, generate() / chat() may be called from that many
        threads at once and the backend batches them (one copy of the weights); at 1, one call at a time."""
        return 1

    def batch_stats(self) -> dict[str, Any] | None:
        """For a batching model: running / waiting sequences, KV pool use, prefix-cache hits (batching.Scheduler)."""
        return None

    _grammar_lock = threading.Lock()

    def grammar_tokenizer(self) -> Any:
        """llguidance's view of this model's vocabulary (structured/vocab.py), built on first use and cached."""
        with LoadedModel._grammar_lock:
            tok = getattr(self, "_grammar_tok", None)
            if tok is None:
                tok = self._grammar_tok = self._build_grammar_tokenizer()
            return tok

    def _build_grammar_tokenizer(self) -> Any:
        from ..errors import BackendUnavailable

        raise BackendUnavailable(f"the {self.backend or type(self).__name__} backend cannot constrain its output "
                                 "(structured output, tool calls with tool_choice required)")

    def grammar_state(self, params: GenerationParams) -> Any:
        """A GrammarState following params.grammar for one generation, or None without a grammar."""
        if not params.grammar:
            return None
        from ..structured import GrammarState

        tok = self.grammar_tokenizer()
        return GrammarState(tok, params.grammar, tok.vocab_size)

    def logits(self, token_ids: list[int]) -> Any:
        """Next-token logits after each position: float32 numpy array [len(token_ids), vocab] (bench --quality)."""
        from ..errors import BackendUnavailable

        raise BackendUnavailable(f"the {self.backend or type(self).__name__} backend cannot return logits")

    def score(self, token_ids: list[int]) -> list[float]:
        """Log-probability of each token given the ones before it; the first token (no context) gets 0.0."""
        import numpy as np

        lg = np.asarray(self.logits(token_ids)[:-1], dtype=np.float32)
        top = lg.max(-1)
        lse = np.log(np.exp(lg - top[:, None]).sum(-1, dtype=np.float64)) + top
        picked = lg[np.arange(len(lg)), np.asarray(token_ids[1:], dtype=np.int64)]
        return [0.0] + (picked - lse).tolist()

    # --- shared behaviour ----------------------------------------------------------------------
    def stop_tokens(self) -> list[str]:
        return sorted({self.token_text(t) for t in self.eog_token_ids()} - {""})

    def token_text(self, token_id: int) -> str:
        return ""

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token adds to the text (logprobs report them); special tokens give their name."""
        raw = self.grammar_tokenizer().decode_bytes([int(token_id)])
        return raw[1:] if raw.startswith(b"\xff") else raw  # llguidance marks special tokens with 0xff

    def count_tokens(self, text: str, *, add_bos: bool = False) -> int:
        return len(self.tokenize(text, add_bos=add_bos))

    def generate(self, prompt: str | list[int], params: GenerationParams | None = None, *, add_bos: bool = True
                 ) -> Generation:
        """Stream a continuation of a raw prompt (text or token ids), no chat template."""
        params = (params or self.default_params()).validate()
        ids = list(prompt) if isinstance(prompt, list) else self.tokenize(prompt, add_bos=add_bos)
        self._check_fits(len(ids), params)
        self.check_params(params)
        return Generation(self._generate_tokens(ids, params), prompt_tokens=len(ids), params=params,
                          eog_ids=self.eog_token_ids())

    def chat(self, messages: list[dict[str, Any]], params: GenerationParams | None = None, *,
             template: str | None = None, tools: list[dict] | None = None, tool_choice: Any = None,
             parallel_tool_calls: bool = False, response_format: dict | None = None) -> Generation:
        """Stream the assistant's reply to a conversation, rendered with the model's chat template.

        tools: OpenAI's [{"type": "function", "function": {"name", "description", "parameters"}}]; tool_choice:
        "auto" (the default with tools), "none", "required" or a function's name (a forced reply holds one call,
        or up to 8 with parallel_tool_calls: small models repeat a call when allowed); the calls come back in
        `Generation.tool_calls` (finish_reason "tool_calls"), the pieces are the rest of the text. History may
        hold assistant `tool_calls` and `tool` results. response_format: OpenAI's {"type": "json_object"} or
        {"type": "json_schema", "json_schema": {"name", "schema"}}: the reply is JSON that matches it."""
        from ..chat.prepare import prepare_chat

        params = (params or self.default_params()).validate()
        prompt = prepare_chat(self, messages, template=template, tools=tools, tool_choice=tool_choice,
                              parallel_tool_calls=parallel_tool_calls, response_format=response_format)
        return self.start_chat(prompt, params)

    def start_chat(self, prompt: Any, params: GenerationParams) -> Generation:
        """Generate the reply to a prepared chat (chat.prepare.ChatPrompt)."""
        if prompt.grammar:
            params = replace(params, grammar=prompt.grammar)
        self._check_fits(len(prompt.ids), params)
        self.check_params(params)
        # A model that opens a new turn has ended its own: stop there too (base models often do).
        eog = self.eog_token_ids() | self.turn_start_ids()
        return Generation(self._generate_tokens(prompt.ids, params), prompt_tokens=len(prompt.ids), params=params,
                          eog_ids=eog, reply_filter=prompt.reply_filter())

    def generate_batch(self, prompts: list[Any], params: GenerationParams | list[GenerationParams] | None = None, *,
                       max_concurrency: int | None = None, template: str | None = None,
                       return_errors: bool = False) -> list[Any]:
        """Generate for many prompts at once; one `offline.BatchResult` (id, text, finish_reason, usage) per
        prompt, in order. A prompt is a str (raw completion), a list of messages (chat), or a dict with `prompt` or
        `messages` and any of max_tokens, temperature, top_p, top_k, seed, stop, ignore_eos, id, metadata
        (overriding `params`, which is one GenerationParams for all or one per prompt). Up to `max_concurrency`
        (default and at most: max_sequences) run at once, batched by the backend. A prompt that cannot run raises
        QuantDeployError naming it, unless return_errors=True, which sets that result's `error` instead."""
        from ..offline.runner import generate_batch

        return generate_batch(self, prompts, params, max_concurrency=max_concurrency, template=template,
                              return_errors=return_errors)

    def default_params(self) -> GenerationParams:
        """What a call without params uses: GenerationParams' defaults with the sampling the model's authors
        recommend, where the spec carries it (the default model does)."""
        return GenerationParams(**self.spec.extra.get("sampling", {}))

    def turn_start_ids(self) -> set[int]:
        out = set()
        for t in TURN_START_TOKENS:
            ids = self.tokenize(t, add_bos=False)
            if len(ids) == 1 and self.token_text(ids[0]) == t:
                out.add(ids[0])
        return out

    def render_chat(self, messages: list[dict[str, str]], *, template: str | None = None) -> str:
        return render_chat(self, messages, template=template)

    def check_params(self, params: GenerationParams) -> None:
        """Raise QuantDeployError when this model cannot honour `params` (checked before generating)."""

    def _check_fits(self, n_prompt: int, params: GenerationParams) -> None:
        if n_prompt >= self.context_length:
            raise UsageError(f"the prompt has {n_prompt} tokens but the context window holds {self.context_length}; "
                             "shorten it or load with a larger context (--ctx)")

    def describe(self) -> dict[str, Any]:
        rep = self.kernel_report()
        return {"name": self.spec.display_name, "format": self.format, "backend": self.backend,
                "device": self.device, "kernel": rep.get("kernel"), "context_length": self.context_length}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Confidence(enum.IntEnum):
    """How surely a backend recognizes a model's files as its format; the registry takes the surest claim."""

    FILES = 1  # files of the format's kind are there (a directory holding *.gguf files)
    DECLARED = 2  # the model's config declares the format (quantization_config.quant_method)
    EXACT = 3  # the path is itself a file of the format (a .gguf file, the GGUF magic)


@dataclass
class PullChoice:
    """What a pull fetches for one format, before --include / --exclude."""

    files: list[str]  # repo paths a default pull fetches
    model_file: str | None = None  # the file to load; None: the pulled directory
    variant: str | None = None  # the `org/repo:TAG` variant this choice is (a GGUF quant); None: TAG is a revision
    note: str | None = None  # one line for the user before fetching (a default chosen for them)


@dataclass
class PullOffer:
    """One line of `pull --list`: a variant or a file, its size, its files."""

    label: str
    size: int
    files: list[str]
    default: bool = False


@dataclass(frozen=True)
class KernelStatus:
    """One kernel as a backend's chooser sees it, for a model or for this machine (`inspect`, `backends`)."""

    name: str  # what --kernel takes
    engine: str  # what runs a model with this kernel
    ok: bool  # it can run here
    reason: str  # why not; "chosen" for the one the chooser picks
    chosen: bool = False


class Backend(abc.ABC):
    """A loader for one format. Register it under the `quantdeploy.backends` entry point group, named by the format.

    Everything about the format lives here: how to recognize its files (`detect`), which files of a repo a pull
    needs (`pull_choice`, `pull_offers`), which kernel names prove its quantized matmuls ran (`kernel_patterns`),
    how to load it (`load`).
    """

    name: str = ""
    formats: tuple[str, ...] = ()
    install_hint: str = ""
    # Substrings (lower case) of CUDA kernel / op names that are this format's quantized matrix multiplies: the
    # bench's profiler evidence that the quantized path really ran.
    kernel_patterns: tuple[str, ...] = ()
    # What the files of this format look like, for the message when no backend recognizes a model.
    expects: str = ""

    @abc.abstractmethod
    def check_environment(self) -> tuple[bool, str]:
        """(True, "") when the dependencies import; else (False, what to install)."""

    def can_load(self, spec: ModelSpec) -> tuple[bool, str]:
        if spec.format not in self.formats:
            return False, f"{self.name} loads {', '.join(self.formats)}, not {spec.format}"
        return self.check_environment()

    def check_files(self, spec: ModelSpec) -> None:
        """Check the model's files without loading weights or importing heavy libraries (headers, JSON): raise
        InvalidModel naming the missing or malformed file and what to do. Runs before load() and inspect."""

    @abc.abstractmethod
    def load(self, spec: ModelSpec) -> LoadedModel:
        """Load weights and return a ready model; raise QuantDeployError with a fix on failure."""

    def kernels(self, spec: ModelSpec | None = None) -> list[KernelStatus]:
        """The kernels that could run this format, in the order they are tried, each with whether it can run `spec`
        (None: any model of the format) on this machine and why not; the one a load would use marked chosen."""
        return []

    def runs_on(self, spec: ModelSpec) -> tuple[str, str]:
        """(what will run this model, why), without loading it: `inspect` shows it, chat / serve / bench print it
        as they load."""
        return self.name, ""

    def inspect(self, spec: ModelSpec) -> dict[str, Any]:
        """What `quantdeploy inspect` shows beyond the common fields, read from the files (no weights loaded):
        architecture, context_length, quantization, chat_template, stop_tokens, ..."""
        return {}

    def detect(self, files: ModelFiles) -> Confidence | None:
        """How surely `files` (a directory, a single file, or a repo listing) are in this backend's format; None
        when they are not. Read only small files (`files.json`, `files.quant`, `files.read(name, limit)`): a
        repo's are fetched on demand. A broken config file raises InvalidModel."""
        return None

    def pull_choice(self, files: ModelFiles, tag: str | None) -> PullChoice:
        """Which files of a repo (already detected as this format) a pull fetches. `tag` is the part after ':' in
        `org/repo:TAG` when it names no revision of the repo: a backend with variants (GGUF quants) picks one and
        sets PullChoice.variant; the others leave it None, and the pull reports an unknown revision."""
        return PullChoice(files=files.names())

    def pull_check(self, files: ModelFiles, choice: PullChoice, selected: list[str]) -> None:
        """Raise when the files a pull would fetch (its choice after --include / --exclude) cannot load."""

    def pull_offers(self, files: ModelFiles) -> list[PullOffer]:
        """What `pull --list` shows: by default each file a pull would fetch."""
        sizes = files.sizes()
        return [PullOffer(name, sizes.get(name, 0), [name]) for name in self.pull_choice(files, None).files]
