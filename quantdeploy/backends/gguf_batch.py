"""Continuous batching over llama.cpp: a batching.Stepper that decodes every live sequence in one `llama_batch`.

One llama.cpp context with `n_seq_max` = the number of slots and a unified KV cache: its n_ctx cells are one pool
shared by every sequence (llama.cpp places a sequence's tokens in any free cells), so the scheduler's block pool
covers exactly those cells (num_blocks x block_size <= n_ctx) and a sequence may grow to the whole context. The
slot number is the llama.cpp sequence id; a sequence leaving its slot has its cells removed at once.

Each step is one `llama_decode`: a decode row per running sequence (fed the slot's last sampled token) plus prompt
chunks. A plain greedy row (no logprobs, no grammar) takes its argmax in llama.cpp's graph (a greedy sampler per
slot on the backend), so no logits come to the host for it. The other rows that sample are read back with
llama_get_logits_ith: greedy rows by numpy's argmax (llama.cpp's own greedy picks the same first maximum), the
others by a llama.cpp sampler chain per sequence (top-k, top-p, temperature, then a distribution seeded per
sequence, so what runs beside it never takes its draws). As in the unbatched path, a row's logprobs are read
before anything changes its logits, and a sequence's grammar masks them in place before its sampler reads them;
the grammar then follows the sampled token.

Steps are pipelined as the scheduler expects: a step's rows are sampled when the next step is launched (their
tokens feed it) or when the scheduler collects it, whichever comes first. With layers on a GPU, llama_decode
returns once the work is queued; on the CPU it computes the step before it returns, so there it runs on a worker
thread of its own (ctypes lets go of the GIL): either way the scheduler's bookkeeping and the callers' text
handling overlap the step, and a step's tokens reach their callers as soon as it is computed and sampled.

Prefix caching is off: sharing cells between sequences (llama_memory_seq_cp) would need the pool's cached blocks to
outlive their sequences under a sequence id of their own; not done.
"""

from __future__ import annotations

import ctypes
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from ..batching import Sampled, Sequence, Work
from ..errors import InvalidModel, QuantDeployError
from .base import GenerationParams
from .np_logits import StepLogprobs

log = logging.getLogger("quantdeploy.gguf")

BLOCK_SIZE = 16  # the scheduler's KV accounting unit, in llama.cpp cells (tokens)
CHUNK_TOKENS = 512  # prompt tokens per step (llama-cpp-python's default n_batch)
UBATCH = 512  # tokens llama.cpp computes at once (a step of more is split)
SEQ_TOKENS = 256  # context cells per sequence at least, when the model picks how many sequences to decode together
POOL_TOKENS_PER_SEQ = 1024  # the pool's cells per sequence when the layers are on a GPU and --ctx does not set it


def pool_cells(seq_ctx: int, wanted: int, offloaded: bool) -> int:
    """The shared pool's cells where --ctx does not set them: one sequence's context on the CPU; with the layers on a
    GPU, also POOL_TOKENS_PER_SEQ per sequence asked for (64 sequences: 65,536 cells, 8.6 GB of KV for an 8B
    Llama-3), so that they all decode together as the fast engine's pool lets them."""
    return max(seq_ctx, wanted * POOL_TOKENS_PER_SEQ) if offloaded and wanted > 1 else seq_ctx


def sequences_for(n_ctx: int, wanted: int, llama_max: int) -> int:
    """How many sequences one context of n_ctx cells decodes together: what was asked, at most one per SEQ_TOKENS
    cells of the pool and what llama.cpp allows."""
    return max(1, min(wanted, n_ctx // SEQ_TOKENS, llama_max))


@dataclass
class Request:
    """One sequence's sampling, as the scheduler hands it to the stepper (Sequence.params). The grammar is followed
    on the scheduler's thread; the caller learns from `done_at` / `error_at` how many tokens in it ended it."""

    params: GenerationParams
    grammar: Any = None  # structured.GrammarState, or None
    accepted: int = 0  # tokens the grammar followed so far
    done_at: int | None = None  # the grammar was complete after this many tokens
    error_at: tuple[int, Exception] | None = None  # the grammar refused this token (1-based) with this error


@dataclass
class _Live:
    """A sequence in a slot: its request, sampler chain (None for greedy) and the epoch it was admitted with."""

    seq: Sequence
    epoch: int
    chain: Any = None

    @property
    def request(self) -> Request:
        return self.seq.params


@dataclass
class _Step:
    works: list[Work]
    rows: list[int | None]  # the batch row each work item samples from (None: no sample)
    results: list[Sampled | None] | None = None
    done: Future | None = None  # the decode on the worker thread (CPU); None once computed in launch()


@dataclass
class _Batch:
    """A llama_batch over numpy arrays: a step fills them with slice assignments, no per-token ctypes calls."""

    size: int
    lc: Any

    def __post_init__(self) -> None:
        import numpy as np

        n = self.size
        self.token = np.zeros(n, np.int32)
        self.pos = np.zeros(n, np.int32)
        self.n_seq_id = np.ones(n, np.int32)
        self.seq_id = np.zeros(n, np.int32)
        self.logits = np.zeros(n, np.int8)
        i32 = ctypes.POINTER(ctypes.c_int32)
        base = self.seq_id.ctypes.data
        self._seq_ptrs = (i32 * n)(*(ctypes.cast(base + 4 * i, i32) for i in range(n)))  # row i -> &seq_id[i]
        self.c = self.lc.llama_batch(n_tokens=0, token=self.token.ctypes.data_as(i32), embd=None,
                                     pos=self.pos.ctypes.data_as(i32), n_seq_id=self.n_seq_id.ctypes.data_as(i32),
                                     seq_id=self._seq_ptrs,
                                     logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)))


class GGUFStepper:
    """Implements batching.Stepper over one llama.cpp context of `n_ctx` cells and `max_seqs` sequences."""

    prefix_caching = False

    def __init__(self, lc, model, *, n_ctx: int, max_seqs: int, n_threads: int, offloaded: bool, n_vocab: int,
                 sampler_chain: Callable[[Any], Any], chunk_tokens: int = CHUNK_TOKENS, backend_greedy: bool = True,
                 seq_ctx: int | None = None):
        """sampler_chain(params): a llama.cpp sampler chain for one sequence's sampling parameters (the one the
        unbatched path uses, so that a seed gives the same tokens either way). backend_greedy: greedy rows take
        their argmax inside llama.cpp's graph (backend sampling), so a step whose rows are all greedy copies no
        logits to the host. seq_ctx: the most positions one sequence takes (default: the whole pool)."""
        self.lc = lc
        self._chain_for = sampler_chain
        self.n_vocab = n_vocab
        self.max_seqs = max_seqs
        self.chunk_tokens = chunk_tokens
        p = lc.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_seq_max = max_seqs
        p.kv_unified = True
        p.n_batch = chunk_tokens + max_seqs  # one step is one llama_decode
        p.n_ubatch = min(UBATCH, p.n_batch)
        p.n_threads = p.n_threads_batch = n_threads
        p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if offloaded else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._greedy = [self._greedy_chain(lc) for _ in range(max_seqs)] if backend_greedy else []
        if self._greedy:  # every slot starts greedy on the backend; a slot whose sequence needs logits leaves it
            configs = (lc.llama_sampler_seq_config * max_seqs)()
            for slot, chain in enumerate(self._greedy):
                configs[slot].seq_id = slot
                configs[slot].sampler = ctypes.cast(chain, ctypes.c_void_p)
            p.samplers, p.n_samplers = configs, max_seqs
        self._on_backend = set(range(len(self._greedy)))  # slots whose greedy sampler is in the graph
        self._want: dict[int, bool] = {}  # slot -> on the backend or not, from the next step on
        self.ctx = lc.llama_init_from_model(model, p)
        if not self.ctx:
            for chain in self._greedy:
                lc.llama_sampler_free(chain)
            raise InvalidModel(f"llama.cpp could not create a context of {n_ctx} tokens for {max_seqs} sequences "
                               "(out of memory?); lower --ctx or --max-concurrency")
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_ctx = int(lc.llama_n_ctx(self.ctx))
        self.block_size = BLOCK_SIZE
        self.num_blocks = self.n_ctx // BLOCK_SIZE
        self.max_len = min(self.num_blocks * BLOCK_SIZE, seq_ctx or self.n_ctx)
        self._batch = _Batch(p.n_batch, lc)
        self._live: dict[int, _Live] = {}  # slot -> the sequence in it
        self._last = [0] * max_seqs  # slot -> its last sampled token (the next decode's input)
        self._pending: _Step | None = None  # launched, not yet sampled
        self._stale: list[int] = []  # slots whose sequence left while a step computed: their cells go next
        self._worker = None if offloaded else ThreadPoolExecutor(1, thread_name_prefix="quantdeploy-llama-decode")
        self.peak_batch = 0  # the most sequences decoded in one step so far

    # --- batching.Stepper ----------------------------------------------------------------------------
    def begin(self, seq: Sequence) -> None:
        """seq.params is a Request. A sequence recomputed after preemption starts a fresh sampler chain: a seed
        reproduces its tokens only when the KV pool never ran out under it."""
        params = seq.params.params
        self._live[seq.slot] = _Live(seq, seq.epoch, None if params.temperature <= 0 else self._chain_for(params))
        if self._greedy:  # only a plain greedy row samples in the graph: the others read the logits
            self._want[seq.slot] = (params.temperature <= 0 and params.logprobs is None
                                    and seq.params.grammar is None)

    @staticmethod
    def _greedy_chain(lc):
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        return chain

    def _apply_samplers(self) -> None:
        """Attach or detach the slots' backend greedy samplers that begin() changed (between steps: llama.cpp
        re-plans its graph at the next decode)."""
        lc = self.lc
        for slot, on in self._want.items():
            if on == (slot in self._on_backend):
                continue
            if on:
                if lc.llama_set_sampler(self.ctx, slot, self._greedy[slot]):
                    self._on_backend.add(slot)
                continue
            lc.llama_synchronize(self.ctx)  # no step in flight still uses the chain
            lc.llama_set_sampler(self.ctx, slot, None)
            self._on_backend.discard(slot)
            lc.llama_sampler_free(self._greedy[slot])  # a chain goes to the backend once: the next one is new
            self._greedy[slot] = self._greedy_chain(lc)
        self._want.clear()

    def end(self, seq: Sequence) -> None:
        """Free the slot's KV cells: now, or (while a step computes on the worker) before the next step."""
        live = self._live.pop(seq.slot, None)
        if live is not None and live.chain is not None:
            self.lc.llama_sampler_free(live.chain)
        self._stale.append(seq.slot)
        if not self._computing():
            self._free_stale()

    def _computing(self) -> bool:
        step = self._pending
        return step is not None and step.done is not None and not step.done.done()

    def _free_stale(self) -> None:
        for slot in self._stale:
            self.lc.llama_memory_seq_rm(self.mem, slot, -1, -1)
        self._stale.clear()

    def launch(self, decodes: list[Work], prefills: list[Work]) -> _Step:
        import numpy as np

        self._sample_pending()  # their tokens are this step's decode inputs
        if self._want:
            self._apply_samplers()
        b = self._batch
        self.peak_batch = max(self.peak_batch, len(decodes))
        rows: list[int | None] = []
        n = 0
        for w in decodes:
            slot = w.seq.slot
            b.token[n], b.pos[n], b.seq_id[n], b.logits[n] = self._last[slot], w.start, slot, 1
            rows.append(n)
            n += 1
        for w in prefills:
            k = len(w.tokens)
            b.token[n:n + k] = w.tokens
            b.pos[n:n + k] = np.arange(w.start, w.start + k, dtype=np.int32)
            b.seq_id[n:n + k] = w.seq.slot
            b.logits[n:n + k] = 0
            if w.sample:
                b.logits[n + k - 1] = 1
            rows.append(n + k - 1 if w.sample else None)
            n += k
        b.c.n_tokens = n
        step = _Step(decodes + prefills, rows)
        step.done = self._worker.submit(self._decode, n) if self._worker is not None else self._decode(n)
        self._pending = step
        return step

    def _decode(self, n: int) -> None:
        rc = self.lc.llama_decode(self.ctx, self._batch.c)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for a step of {n} tokens "
                               f"({'no free KV cells' if rc == 1 else 'see the llama.cpp log'})")

    def collect(self, handle: _Step) -> list[Sampled | None]:
        if handle is self._pending:
            self._sample_pending()
        return handle.results or []

    def reset(self) -> None:
        """After a failed step: forget every sequence (the scheduler failed them all)."""
        step, self._pending = self._pending, None
        if step is not None and step.done is not None:
            step.done.exception()  # wait for it: llama.cpp's memory is not touched while a step computes
        self.lc.llama_synchronize(self.ctx)  # a step queued on a GPU is done too
        self._stale.clear()
        self.lc.llama_memory_clear(self.mem, True)
        for live in self._live.values():
            if live.chain is not None:
                self.lc.llama_sampler_free(live.chain)
        self._live.clear()

    def close(self) -> None:
        self.reset()
        if self._worker is not None:
            self._worker.shutdown()
        if self.ctx:
            self.lc.llama_free(self.ctx)
            self.ctx = None
        for chain in self._greedy:
            self.lc.llama_sampler_free(chain)
        self._greedy = []

    # --- sampling ------------------------------------------------------------------------------------
    def _sample_pending(self) -> None:
        step, self._pending = self._pending, None
        if step is None:
            self._free_stale()
            return
        if step.done is not None:
            step.done.result()  # the step is computed (raises what llama_decode raised)
        self._free_stale()
        out: list[Sampled | None] = []
        for w, row in zip(step.works, step.rows):
            live = self._live.get(w.seq.slot) if row is not None else None
            if live is None or live.seq is not w.seq or live.epoch != w.epoch:
                out.append(None)  # no sample asked, or the sequence left its slot since: the scheduler drops it
                continue
            out.append(self._sample_row(row, live))
            self._last[w.seq.slot] = out[-1].token
        step.results = out

    def _sample_row(self, row: int, live: _Live) -> Sampled:
        req = live.request
        grammar = req.grammar if req.grammar is not None and req.done_at is None and req.error_at is None else None
        k = req.params.logprobs
        step = None
        if grammar is not None or k is not None:
            logits = self._logits(row)  # llama.cpp's own buffer: the sampler below reads the masked logits
            step = StepLogprobs(logits, k) if k is not None else None
            if grammar is not None:
                grammar.mask_numpy(logits)
        if live.chain is not None:
            token = int(self.lc.llama_sampler_sample(live.chain, self.ctx, row))
        elif live.seq.slot in self._on_backend and grammar is None and k is None:
            token = int(self.lc.llama_get_sampled_token_ith(self.ctx, row))  # the graph's argmax
            if token < 0:  # not sampled there after all: the logits are on the host
                token = int(self._logits(row).argmax())
        else:
            token = int(self._logits(row).argmax())  # the first maximum, as llama.cpp's greedy sampler
        if grammar is not None:
            req.accepted += 1
            try:
                grammar.accept(token)
            except QuantDeployError as e:  # this sequence's failure, not the batch's
                req.error_at = (req.accepted, e)
            else:
                if grammar.done:
                    req.done_at = req.accepted
        if step is None:
            return Sampled(token)
        lp = step.of(token)
        return Sampled(token, lp.logprob, list(lp.top))

    def _logits(self, row: int):
        import numpy as np

        return np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
