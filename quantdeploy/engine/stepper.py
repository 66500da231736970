"""The batching engine's Stepper: runs the scheduler's steps (batching/scheduler.py) on the decoder, with the KV
of every sequence in one paged pool (attention.PagedKV).

A step's decode rows go through a CUDA graph per (batch bucket, context bucket) on CUDA: the rows are padded to
a power of two with rows that write into a scratch block and a scratch slot. Prompt chunks run eagerly. Each
slot's last sampled token stays on the device (`self.last`): a decode reads its input from there, so the host
never waits for a token before launching the next step; the sampled ids are copied to pinned memory behind the
step and read by collect().

The host's share of a decode step is kept to a few CUDA calls, because at 64 sequences it, not the GPU, set the
pace: the rows' slots, positions and KV slots go over in one copy from a pinned staging buffer; the block tables
live on the device (a row is copied when its sequence gains a block) and the graph gathers the rows' tables; the
graph also takes each row's greedy token and writes it into `self.last`, so a step whose sequences all decode
greedily (no logprobs, no grammar) samples nothing outside the graph and only copies the tokens back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..batching import Sampled, Sequence, Work
from .attention import Chunk, PagedBatch, PagedKV
from .sampling import Rows, make_generator, sample_rows, to_device

log = logging.getLogger("quantdeploy.engine")

BLOCK_SIZE = 32
GREEDY = SimpleNamespace(temperature=0.0, top_p=1.0, top_k=0, logprobs=None)  # a sequence submitted without params
MAX_GRAPH_BATCH = 256
CPU_POOL_SHARE = 0.25  # of the RAM available at load: the KV pool's cap off the GPU
RING = 3  # pinned staging buffers per kind, in turn: a step's are reused three steps later; the scheduler reads each
# step back before it launches the second after it, so no copy of that step is pending by then


def pool_blocks(dec, max_seqs: int, max_len: int, block_size: int, memory_fraction: float | None) -> int:
    """KV blocks to allocate: on CUDA what `memory_fraction` of the GPU leaves after the weights (less a margin for
    activations and graphs); elsewhere every slot at full context, but at most a quarter of the memory available
    now (64 slots of 8k tokens would take most of a small machine's RAM; a pool that runs full makes new sequences
    wait) and at least one sequence."""
    cfg = dec.cfg
    per_block = PagedKV.bytes_per_block(cfg.layers, block_size, cfg.kv_heads, cfg.head_dim, dec.dtype)
    one = -(-max_len // block_size)
    full = max_seqs * one
    if dec.device.type != "cuda":
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return max(one, min(full, int(available * CPU_POOL_SHARE // per_block)))
    free, total = torch.cuda.mem_get_info(dec.device)
    used = total - free
    margin = 1.5 * 2 ** 30 + max_seqs * (cfg.vocab * 4 * 3 + cfg.hidden * 64)
    budget = (memory_fraction or 0.9) * total - used - margin
    blocks = int(budget // per_block)
    if blocks < -(-max_len // block_size):
        from ..errors import UsageError

        raise UsageError(f"the GPU has room for {max(0, blocks)} KV blocks of {block_size} tokens after the weights, "
                         f"less than one sequence of {max_len} tokens; lower --ctx or raise "
                         "--gpu-memory-utilization")
    return min(blocks, full)


@dataclass
class _Step:
    event: Any
    host: torch.Tensor | None  # sampled ids, one per sampling row
    rows: list[int | None]  # per work item: its row in `host`, or None
    works: list[Work]  # the sampling rows' work items
    logprobs: tuple | None = None  # host (logprob [R], top ids [R, k], top logprobs [R, k]) when asked for


def default_chunk_tokens(device) -> int:
    """Prompt tokens per batched step unless --prompt-chunk says: 2048 on a GPU, where such a step costs tens of
    milliseconds (H100, 8B GPTQ through serve, 64 clients: TTFT p95 491 ms against 967 with 512, the gaps' p95 13.0
    against 14.3 ms); 512 on the CPU, where every prompt token costs the running streams far more."""
    return 2048 if torch.device(device).type == "cuda" else 512


class FastStepper:
    def __init__(self, dec, *, max_seqs: int, max_len: int, chunk_tokens: int | None = None,
                 block_size: int = BLOCK_SIZE,
                 num_blocks: int | None = None, memory_fraction: float | None = None, use_graph: bool | None = None,
                 prefix_caching: bool = True):
        self.dec = dec
        cfg = dec.cfg
        self.device = dec.device
        self.max_seqs, self.max_len = max_seqs, max_len
        self.chunk_tokens = chunk_tokens or default_chunk_tokens(self.device)
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.num_blocks = num_blocks or pool_blocks(dec, max_seqs, max_len, block_size, memory_fraction)
        # one block and one slot more: where padded rows of a graph write
        self.kv = PagedKV(cfg.layers, self.num_blocks + 1, block_size, cfg.kv_heads, cfg.head_dim, dec.dtype,
                          self.device)
        self.scratch_block, self.scratch_slot = self.num_blocks, max_seqs
        self.max_blocks = -(-max_len // block_size)
        self.last = torch.zeros(max_seqs + 1, dtype=torch.long, device=self.device)
        cuda = self.device.type == "cuda"
        # block tables of every slot, kept up to date as sequences gain blocks (the scheduler only appends while a
        # sequence holds its slot); the host writes `tables` (pinned on CUDA), and a changed row is copied to
        # d_tables, where a decode step gathers its rows (off CUDA they are one tensor). A copy reads the host row
        # when it runs, perhaps after the host appended more blocks for a later step: the blocks a step uses are
        # never changed while their sequence holds the slot. A row rewritten for a new sequence can only reach a
        # stale row of the step in flight (the old sequence's last decode), whose result is dropped.
        host = torch.full((max_seqs + 1, self.max_blocks), self.scratch_block, dtype=torch.int32, pin_memory=cuda)
        self.tables = host.numpy()
        self._h_tables = host
        self.d_tables = host.to(self.device) if cuda else host
        self.table_len = [0] * (max_seqs + 1)
        self._dirty: set[int] = set()
        self.plain: dict[int, bool] = {}  # slot -> its sequence decodes greedily, without logprobs or a grammar
        rows = max(max_seqs, self.row_bucket(min(max_seqs, MAX_GRAPH_BATCH)))
        self._inputs = torch.zeros((RING, 3 * rows), dtype=torch.long, pin_memory=cuda)  # slots, positions, KV slots
        self._tokens = torch.zeros((RING, rows), dtype=torch.long, pin_memory=cuda)  # the sampled ids, read back
        self._events = [torch.cuda.Event() for _ in range(RING)] if cuda else []
        self._turn = 0
        self.gens: dict[int, Any] = {}
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self.graphs: dict[tuple[int, int], tuple] = {}
        self._pool = None
        self.warmed_prompts: list[int] = []  # the prompt-chunk sizes warm() ran
        log.info("batching: %d slots, KV pool of %d blocks x %d tokens (%.2f GiB)", max_seqs, self.num_blocks,
                 block_size, self.num_blocks * PagedKV.bytes_per_block(cfg.layers, block_size, cfg.kv_heads,
                                                                        cfg.head_dim, dec.dtype) / 2 ** 30)

    # --- sequences --------------------------------------------------------------------------------------
    def begin(self, seq: Sequence) -> None:
        self.tables[seq.slot] = self.scratch_block
        self.table_len[seq.slot] = 0
        self._dirty.add(seq.slot)
        p = seq.params or GREEDY
        seed = getattr(p, "seed", None)
        self.gens[seq.slot] = make_generator(self.device, seed) if seed is not None else None
        self.plain[seq.slot] = p.temperature <= 0 and getattr(p, "logprobs", None) is None and seq.constraint is None

    def end(self, seq: Sequence) -> None:
        self.gens.pop(seq.slot, None)
        self.plain.pop(seq.slot, None)

    def reset(self) -> None:
        """After a failed step (the scheduler read nothing back): wait for the device, so that no copy of a dropped
        step still reads the staging buffers, and drop the graphs."""
        if self.device.type == "cuda":
            try:
                torch.cuda.synchronize(self.device)
            except RuntimeError:  # the device itself failed: its next step says so
                pass
        self.graphs.clear()
        self._pool = None

    # --- one step -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def launch(self, decodes: list[Work], prefills: list[Work]) -> _Step:
        turn = self._turn  # this turn's buffers were last used RING steps ago, a step the scheduler has read back
        self._turn = (turn + 1) % RING
        works = decodes + prefills
        works_sampled = [w for w in works if w.sample]  # decodes always sample
        rows, r = [], 0  # each work item's row among the sampled ones
        for w in works:
            rows.append(r if w.sample else None)
            r += w.sample
        if decodes and not prefills and all(self.plain[w.seq.slot] for w in decodes):
            tokens = self._decode(decodes, turn)[1]  # the graph's greedy tokens, already in self.last
            out = None
        else:
            logits_parts = [self._decode(decodes, turn)[0]] if decodes else []
            if prefills:
                lg = self._prefill(prefills)
                if lg is not None:
                    logits_parts.append(lg)
            if not works_sampled:
                return _Step(None, None, rows, [])
            logits = torch.cat(logits_parts) if len(logits_parts) > 1 else logits_parts[0]
            out = self._sample(logits, works_sampled)
            tokens = out.tokens
            slots = to_device([w.seq.slot for w in works_sampled], torch.long, self.device)
            self.last.index_copy_(0, slots, tokens)
        extra = () if out is None or out.logprobs is None else (out.logprobs, out.top_ids, out.top_logprobs)
        if self.device.type == "cuda":  # read back behind the step, into pinned memory
            def host(t):
                return None if t is None else torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(
                    t, non_blocking=True)

            toks = self._tokens[turn, :tokens.shape[0]]
            toks.copy_(tokens, non_blocking=True)
            extra = tuple(host(t) for t in extra)
            event = self._events[turn]
            event.record()
            return _Step(event, toks, rows, works_sampled, extra or None)
        return _Step(None, tokens, rows, works_sampled, extra or None)

    def collect(self, step: _Step) -> list[Sampled | None]:
        if step.event is not None:
            step.event.synchronize()
        ids = step.host.tolist() if step.host is not None else []
        lps = [t.tolist() if t is not None else None for t in step.logprobs] if step.logprobs else None
        sampled = []
        for r, (w, tok) in enumerate(zip(step.works, ids)):
            s = Sampled(tok)
            want = getattr(w.seq.params, "logprobs", None)
            if lps is not None and want is not None:
                s.logprob = lps[0][r]
                s.top = list(zip(lps[1][r], lps[2][r]))[:want] if lps[1] is not None else []
            c = w.seq.constraint
            if c is not None:
                try:
                    c.accept(tok)
                    s.final = c.done
                except Exception as e:  # this sequence's grammar broke: it alone fails
                    s.error = str(e)
            sampled.append(s)
        return [sampled[r] if r is not None else None for r in step.rows]

    # --- decode rows ----------------------------------------------------------------------------------------
    def _sync_tables(self, seqs: list[Sequence]) -> None:
        """Bring the block tables of seqs up to date on the host, and every changed row on the device."""
        for s in seqs:
            have, n = self.table_len[s.slot], len(s.blocks)
            if have < n:
                self.tables[s.slot, have:n] = s.blocks[have:n]
                self.table_len[s.slot] = n
                self._dirty.add(s.slot)
        if self.d_tables is not self._h_tables:
            for slot in self._dirty:
                self.d_tables[slot].copy_(self._h_tables[slot], non_blocking=True)
        self._dirty.clear()

    def _kv_slot(self, seq: Sequence, pos: int) -> int:
        bs = self.block_size
        return seq.blocks[pos // bs] * bs + pos % bs

    def kv_bucket(self, longest: int) -> int:
        b = 256
        while b < longest:
            b *= 2
        return min(b, self.max_blocks * self.block_size)

    @staticmethod
    def row_bucket(n: int) -> int:
        """The rows of the graph that decodes n sequences: the power of two that holds them."""
        return 1 << max(0, n - 1).bit_length()

    def graph_buckets(self) -> list[tuple[int, int]]:
        """Every (rows, kv_len) a decode step can run as a graph: each row bucket up to the one that holds
        max_seqs, each context bucket up to max_len."""
        rows = [1]
        while rows[-1] < self.row_bucket(min(self.max_seqs, MAX_GRAPH_BATCH)):
            rows.append(rows[-1] * 2)
        kv = [self.kv_bucket(1)]
        while kv[-1] < self.max_blocks * self.block_size:
            kv.append(self.kv_bucket(kv[-1] + 1))
        return [(r, k) for r in rows for k in kv]

    def prompt_warm_sizes(self) -> list[int]:
        """The prompt-chunk token counts warm() runs once: each power of two up to chunk_tokens and the count just
        below it, and chunk_tokens and one less (at most max_len). Between them they take every path a product can
        take (the GEMV, each tile count of the batched kernel, each row block of the Triton GEMM, dequantize +
        cuBLAS) and both of Triton's specializations of a row count (a multiple of 16 or not)."""
        top = min(self.chunk_tokens, self.max_len)
        sizes, p = {top, max(1, top - 1)}, 1
        while p <= top:
            sizes |= {p, max(1, p - 1)}
            p *= 2
        return sorted(sizes)

    def warm(self, prompts: bool | None = None) -> int:
        """Capture every decode graph now (graph_buckets), so that no step pays for a capture, and the Triton
        compiles behind it, while sequences stream: a capture mid-stream stalls every sequence for tens to
        hundreds of milliseconds. prompts (default: on CUDA): also run a prompt chunk of every size in
        prompt_warm_sizes and sample from it, so that the kernels prompts take are compiled and loaded before the
        first request, not inside its time to first token. Returns the graphs captured; none off CUDA."""
        try:
            for rows, kv_len in self.graph_buckets():
                if not self.use_graph:
                    break
                if (rows, kv_len) not in self.graphs:
                    self._capture(rows, kv_len)
            if (self.device.type == "cuda") if prompts is None else prompts:
                self._warm_prompts()
        except torch.OutOfMemoryError:
            self.reset()
            from ..errors import UsageError

            raise UsageError(f"the GPU ran out of memory warming up (decode graphs, prompt chunks of up to "
                             f"{self.chunk_tokens} tokens) for {self.max_seqs} sequences of up to {self.max_len} "
                             "tokens; lower --max-concurrency, --ctx, --prompt-chunk or --gpu-memory-utilization"
                             ) from None
        return len(self.graphs)

    @torch.inference_mode()
    def _warm_prompts(self) -> None:
        sizes = self.prompt_warm_sizes()
        for m in sizes:
            logits = self._scratch_chunk(m, 0)
        if self.max_len >= 2 * sizes[-1]:  # a later chunk of a long prompt attends through a mask
            self._scratch_chunk(sizes[-1], sizes[-1])
        sample_rows(logits.expand(2, -1), Rows([0.0, 0.7], [1.0, 0.9], [0, 40], logprobs=2))
        self.warmed_prompts = sizes

    def _scratch_chunk(self, m: int, start: int) -> torch.Tensor:
        """One prompt chunk of m dummy tokens from position `start` that writes and reads the scratch block only
        (every position wraps into it): it runs every kernel a real chunk of that size runs and touches no
        sequence's KV. Returns its last token's logits [1, vocab]."""
        bs, dev = self.block_size, self.device
        pos = torch.arange(start, start + m, device=dev)
        table = torch.full((-(-(start + m) // bs),), self.scratch_block, dtype=torch.int32, device=dev)
        ctx = PagedBatch(self.dec, self.kv, pos, self.scratch_block * bs + pos % bs, 0, None,
                         [Chunk(0, m, start, table)], 0)
        return self.dec.run(torch.zeros(m, dtype=torch.long, device=dev), pos, ctx, rows=pos[-1:] - start)

    def _stage(self, decodes: list[Work], rows: int, turn: int) -> torch.Tensor:
        """The rows' slots, positions and KV slots [3, rows] in this turn's staging buffer; padded rows name the
        scratch slot and write into the scratch block."""
        n = len(decodes)
        buf = self._inputs[turn, :3 * rows].view(3, rows)
        a = buf.numpy()
        a[0, :n] = [w.seq.slot for w in decodes]
        a[1, :n] = [w.start for w in decodes]
        a[2, :n] = [self._kv_slot(w.seq, w.start) for w in decodes]
        a[:, n:] = ((self.scratch_slot,), (0,), (self.scratch_block * self.block_size,))
        return buf

    def _decode(self, decodes: list[Work], turn: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [n, vocab], greedy tokens [n]) of the decode rows; their greedy tokens are in self.last."""
        n = len(decodes)
        kv_len = self.kv_bucket(max(w.start for w in decodes) + 1)
        self._sync_tables([w.seq for w in decodes])
        if self.use_graph and n <= MAX_GRAPH_BATCH:
            rows = self.row_bucket(n)
            g = self.graphs.get((rows, kv_len)) or self._capture(rows, kv_len)
            if g is not None:
                graph, inputs, logits, greedy = g
                inputs.copy_(self._stage(decodes, rows, turn), non_blocking=True)
                graph.replay()
                return logits[:n], greedy[:n]
        inputs = self._stage(decodes, n, turn).to(self.device, non_blocking=True)
        return self._decode_body(inputs, kv_len)

    def _decode_body(self, inputs: torch.Tensor, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        slots, pos, kvs = inputs[0], inputs[1], inputs[2]
        ctx = PagedBatch(self.dec, self.kv, pos, kvs, len(pos), self.d_tables.index_select(0, slots), [], kv_len)
        logits = self.dec.run(self.last.index_select(0, slots), pos, ctx, all_rows=True)
        greedy = torch.argmax(logits, -1)
        self.last.index_copy_(0, slots, greedy)  # padded rows all write the scratch slot
        return logits, greedy

    def _capture(self, rows: int, kv_len: int):
        from .runner import _capture_checked

        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        inputs = torch.tensor([[self.scratch_slot], [0], [self.scratch_block * self.block_size]],
                              dtype=torch.long, device=self.device).expand(3, rows).contiguous()
        made = {}

        def body():
            made["logits"], made["greedy"] = self._decode_body(inputs, kv_len)
            return made["logits"]

        def reset():  # the step writes its greedy token into the slot it reads: each run must read the same one
            self.last[self.scratch_slot] = 0

        g, out, err = _capture_checked(self.device, body, self._pool, reset=reset)
        if not err < 1e-2:
            log.warning("the batched decode graph does not reproduce the eager step (rel err %.3g); decoding "
                        "batches eagerly", err)
            self.use_graph = False
            return None
        self.graphs[(rows, kv_len)] = (g, inputs, out, made["greedy"])  # the capture's tensors (body's last run)
        return self.graphs[(rows, kv_len)]

    # --- prompt chunks ----------------------------------------------------------------------------------------
    def _prefill(self, works: list[Work]) -> torch.Tensor | None:
        toks, pos, kvs, chunks, rows = [], [], [], [], []
        for w in works:
            first = len(toks)
            toks += w.tokens
            pos += range(w.start, w.start + len(w.tokens))
            kvs += [self._kv_slot(w.seq, p) for p in range(w.start, w.start + len(w.tokens))]
            table = to_device(w.seq.blocks, torch.int32, self.device)
            chunks.append(Chunk(first, len(w.tokens), w.start, table))
            if w.sample:
                rows.append(len(toks) - 1)
        dev = self.device
        as_long = lambda v: to_device(v, torch.long, dev)  # noqa: E731
        positions = as_long(pos)
        ctx = PagedBatch(self.dec, self.kv, positions, as_long(kvs), 0, None, chunks, 0)
        if not rows:
            self.dec.run(as_long(toks), positions, ctx, rows=as_long([len(toks) - 1]))
            return None
        return self.dec.run(as_long(toks), positions, ctx, rows=as_long(rows))

    # --- sampling -----------------------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, works: list[Work]):
        """Every row at once (engine/sampling.py): each with its sequence's parameters, seeded generator and, for a
        sequence under a grammar, its mask of allowed tokens."""
        params = [w.seq.params or GREEDY for w in works]
        rows = Rows.of(params, [self.gens.get(w.seq.slot) for w in works])
        bitmask = None
        if any(w.seq.constraint is not None for w in works):
            masks = [w.seq.constraint.fill() if w.seq.constraint is not None else None for w in works]
            width = next(m for m in masks if m is not None).shape[-1]
            full = np.full((len(works), width), -1, dtype=np.int32)
            for i, m in enumerate(masks):
                if m is not None:
                    full[i] = m[0]
            bitmask = to_device(full, torch.int32, self.device)
        return sample_rows(logits, rows, bitmask)
