"""FastEngine: a prompt from a CUDA graph of every layer but the last (then that layer and the head eagerly), then
one token per CUDA-graph replay (all eager on the CPU).

The sampled token never leaves the device between steps: it is written into the graph's input buffer, and
copied to pinned host memory asynchronously; the host reads token t while the GPU already runs step t+1. Greedy
decoding takes its argmax and the position's increment inside the graph.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import torch

from ..checkpoint import LocalFiles, ModelFiles
from ..settings import EngineConfig
from .model import Decoder, DecoderConfig, load_tensors
from .sampling import Rows, make_generator, sample, sample_rows, token_logprob

log = logging.getLogger("quantdeploy.engine")


def _capture_checked(device, fn, pool, on_warmup_stream: bool = False, reset=None):
    """(graph, its output, the replay's relative error against the eager result) for fn. fn runs twice on a side
    stream first (compiles Triton kernels, initialises cuBLAS) outside the capture. A kernel launched on another
    stream than the capture's runs once and is missing from every replay, so the first replay must reproduce the
    eager result; fn's side effects (KV writes) are the same each time, so the check is safe. reset: restores the
    inputs that fn itself advances, before each run."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(2):
            if reset:
                reset()
            want = fn().clone()
    torch.cuda.current_stream(device).wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool, stream=s if on_warmup_stream else None):
        out = fn()
    if reset:
        reset()
    g.replay()
    err = float((out - want).norm() / want.norm().clamp_min(1e-6)) if bool(out.isfinite().all()) else float("inf")
    return g, out, err


class FastEngine:
    def __init__(self, path: Path, device: str, dtype: torch.dtype, max_len: int, use_graph: bool | None = None,
                 gemv: str = "auto", files: ModelFiles | None = None, config: EngineConfig | None = None,
                 batch: int = 1):
        """files: what detection already parsed (None: read from path); config: the user's engine settings
        (Settings.engine; None: the built-in defaults); batch: the most sequences decoded together (the batched
        products' kernels follow from it: engine/marlin.py)."""
        files = files or LocalFiles(path)
        cfg = DecoderConfig.from_hf(files.config or {})
        self.cfg = cfg
        self.max_len = min(max_len, cfg.max_position)
        self.device = torch.device(device)
        self.dtype = dtype
        quant = files.quant
        if quant is None:
            from ..errors import InvalidModel

            raise InvalidModel(f"{path} declares no quantization config; the fast engine runs GPTQ / AWQ checkpoints")
        self.dec = Decoder(cfg, load_tensors(path), quant, device, dtype, self.max_len, gemv, config, batch)
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self.graphs: dict[int, tuple] = {}
        self.greedy_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.greedy_graph = True  # False once its capture failed: the argmax after the step's graph instead
        self.prefill_graphs: dict[int, tuple] = {}
        self.p_tok = self.pool = None
        self.prefill_graph = True  # False once a capture failed: prompts eagerly
        self.prefill_tail = self.dec.fused and len(self.dec.layers) > 1
        self.arange = torch.arange(self.max_len, device=self.device)
        self.graph_kind = "none"

    def close(self) -> None:
        """Drop the CUDA graphs and their memory pools (the weights go with the engine)."""
        if self.device.type == "cuda" and (self.graphs or self.greedy_graphs or self.prefill_graphs):
            torch.cuda.synchronize(self.device)
        self.graphs, self.greedy_graphs, self.prefill_graphs, self.p_tok = {}, {}, {}, None
        self.pool = self.p_pool = None

    # --- decode step -------------------------------------------------------------------------------
    def bucket(self, pos: int) -> int:
        """Attention reads a power-of-two prefix of the cache (>= 256 slots): short chats don't pay for a long
        context. Each bucket gets its own CUDA graph, captured the first time a position reaches it."""
        b = 256
        while b < pos + 1:
            b *= 2
        return min(b, self.max_len)

    def _step_eager(self, tok: torch.Tensor, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        masks = {} if self.dec.fused else self.dec.masks(pos, kv_len)  # the fused step masks by position
        return self.dec.forward(tok, pos, masks, kv_len)

    def _capture(self, kv_len: int) -> None:
        g, out, err = _capture_checked(self.device, lambda: self._step_eager(self.g_tok, self.g_pos, kv_len),
                                       self.pool)
        if not err < 1e-2:
            self.use_graph = False
            self.graph_kind = "none (a kernel escaped CUDA-graph capture)"
            log.warning("the CUDA graph replay does not reproduce the eager step (rel err %.3g): a kernel runs "
                        "outside the graph; decoding eagerly (slow)", err)
            return
        self.graphs[kv_len] = (g, out)
        self.graph_kind = "cuda-graph"

    def _graph_inputs(self) -> None:
        if self.pool is None:
            self.g_tok = torch.zeros(1, dtype=torch.long, device=self.device)
            self.g_pos = torch.zeros(1, dtype=torch.long, device=self.device)
            self.pool = torch.cuda.graph_pool_handle()

    def _step_greedy(self, pos_host: int) -> bool:
        """One step from the graph inputs (g_tok at g_pos) in a CUDA graph that also takes the greedy token into
        g_tok and advances g_pos: per token only the replay and the token's copy to the host leave the graph.
        False (inputs unchanged) when its capture fails; the caller steps another way."""
        kv_len = self.bucket(pos_host)
        g = self.greedy_graphs.get(kv_len)
        if g is not None:
            g.replay()
            return True
        t0, p0 = self.g_tok.clone(), self.g_pos.clone()

        def reset():
            self.g_tok.copy_(t0)
            self.g_pos.copy_(p0)

        def fn():
            logits = self._step_eager(self.g_tok, self.g_pos, kv_len)
            self.g_tok.copy_(torch.argmax(logits).view(1))
            self.g_pos.add_(1)
            return logits

        g, _, err = _capture_checked(self.device, fn, self.pool, reset=reset)
        if not err < 1e-2:  # its check replay was this step; undo it
            reset()
            self.greedy_graph = False
            log.warning("the greedy decode graph does not reproduce the eager step (rel err %.3g); taking the "
                        "argmax after the step's graph instead", err)
            return False
        self.greedy_graphs[kv_len] = g
        self.graph_kind = "cuda-graph"
        return True

    def step(self, tok: torch.Tensor, pos: torch.Tensor, pos_host: int) -> torch.Tensor:
        kv_len = self.bucket(pos_host)
        if not self.use_graph:
            return self._step_eager(tok.view(1), pos.view(1), kv_len)
        self._graph_inputs()
        self.g_tok.copy_(tok.view(1))
        self.g_pos.copy_(pos.view(1))
        if kv_len not in self.graphs:  # the warm-up runs this very step, so the KV it writes is the right one
            self._capture(kv_len)
            if not self.use_graph:
                return self._step_eager(tok.view(1), pos.view(1), kv_len)
        g, out = self.graphs[kv_len]
        g.replay()
        return out

    def prefill(self, ids: list[int], all_logits: bool = False) -> torch.Tensor:
        m = self.prefill_bucket(len(ids))
        if self.use_graph and self.prefill_graph and not all_logits and m:
            return self._prefill_graph(ids, m)
        toks = torch.tensor(ids, dtype=torch.long, device=self.device)
        return self._prefill_eager(toks, len(ids), all_logits)

    def _prefill_eager(self, toks: torch.Tensor, m: int, all_logits: bool = False,
                       last: torch.Tensor | None = None) -> torch.Tensor:
        pos = self.arange[:m]
        kv_len = self.bucket(m - 1)
        return self.dec.forward(toks, pos, self.dec.masks(pos, kv_len), kv_len, all_logits=all_logits,
                                causal_from_zero=True, last=last)

    # --- prompts in CUDA graphs -------------------------------------------------------------------------------
    # A prompt's eager prefill is bound by the host (~420 kernel launches; TTFT 17-35 ms for 512 tokens on an H200,
    # where the GPU's work takes ~17): prompts are padded to a power of two and replayed from a graph per length. The
    # padding comes after the prompt, so causal attention never lets a prompt token see it; its KV slots are
    # overwritten by the decode steps before any of them reads that far. With the fused step (prefill_tail) the graph
    # holds every layer but the last, which runs eagerly with the head: the decode graph that follows then replays in
    # its fast state, as after an eager prompt, whose last launches are PDL kernels; after a whole-prompt graph it
    # does not, and decodes 0.5-1.5 % slower (docs/engine.md). TTFT 17-18 ms, steady. The exit aborts once blamed on
    # prompt graphs were the profiler's (cli._exit). Captured on the warm-up's stream.
    PREFILL_GRAPH_MAX = 2048

    @property
    def prompt_kind(self) -> str:
        """How prompts ran: from CUDA graphs (their last layer eagerly, or not), or eagerly."""
        if not (self.use_graph and self.prefill_graph and self.prefill_graphs):
            return "eager"
        return "cuda-graph, last layer eager" if self.prefill_tail else "cuda-graph"

    def prefill_bucket(self, n: int) -> int:
        """The padded length of an n-token prompt's graph, or 0 for eager (too long for a graph or the cache)."""
        m = 16
        while m < n:
            m *= 2
        return m if m <= min(self.PREFILL_GRAPH_MAX, self.max_len) else 0

    def _prefill_graph(self, ids: list[int], m: int) -> torch.Tensor:
        if self.p_tok is None:  # static inputs shared by every prompt graph, and one memory pool for them all
            self.p_tok = torch.zeros(min(self.PREFILL_GRAPH_MAX, self.max_len), dtype=torch.long, device=self.device)
            self.p_last = torch.zeros(1, dtype=torch.long, device=self.device)
            self.p_pool = torch.cuda.graph_pool_handle()
        self.p_tok[:len(ids)].copy_(torch.tensor(ids, dtype=torch.long))
        self.p_last.fill_(len(ids) - 1)
        if m not in self.prefill_graphs:
            if not self._capture_prefill(m):
                return self._prefill_eager(self.p_tok[:m], m, last=self.p_last)
        g, out = self.prefill_graphs[m]
        g.replay()
        if not self.prefill_tail:
            return out
        pos, kv_len = self.arange[:m], self.bucket(m - 1)
        return self.dec.prompt_rest(out, pos, self.dec.masks(pos, kv_len), kv_len, len(self.dec.layers) - 1,
                                    last=self.p_last)

    def _prefill_layers(self, m: int) -> torch.Tensor:
        """The graph's part of a padded prompt (prefill_tail): every layer but the last."""
        pos, kv_len = self.arange[:m], self.bucket(m - 1)
        return self.dec.prompt_layers(self.p_tok[:m], pos, self.dec.masks(pos, kv_len), kv_len,
                                      len(self.dec.layers) - 1)

    def _capture_prefill(self, m: int) -> bool:
        # captured on the warm-up's stream: a stream's first cuBLAS call allocates its workspace, and one allocated
        # during a capture lands in that graph's pool (the suspected cause of the exit aborts, gone since)
        def fn():
            return self._prefill_layers(m) if self.prefill_tail else \
                self._prefill_eager(self.p_tok[:m], m, last=self.p_last)

        g, out, err = _capture_checked(self.device, fn, self.p_pool, on_warmup_stream=True)
        if not err < 1e-2:
            self.prefill_graph = False
            log.warning("the CUDA graph of a prompt does not reproduce the eager prefill (rel err %.3g); prompts "
                        "run eagerly", err)
            return False
        self.prefill_graphs[m] = (g, out)
        return True

    # --- generation --------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, ids: list[int], *, max_new: int, temperature: float, top_p: float, top_k: int,
                 seed: int | None, stop_ids: set[int]) -> Iterator[int]:
        """Yield token ids; stops at a stop id (yielded), after max_new tokens, or when the cache is full."""
        if len(ids) >= self.max_len:
            return
        gen = make_generator(self.device, seed)
        logits = self.prefill(ids)
        tok = sample(logits, temperature, top_p, top_k, gen).view(1)
        pos = torch.tensor([len(ids)], dtype=torch.long, device=self.device)
        room = min(max_new, self.max_len - len(ids))
        if self.device.type != "cuda":
            for i in range(room):
                t = int(tok)
                yield t
                if t in stop_ids or i + 1 >= room:
                    return
                tok = sample(self.step(tok, pos, len(ids) + i), temperature, top_p, top_k, gen).view(1)
                pos += 1
            return
        host = torch.empty(2, dtype=torch.long, pin_memory=True)
        events = [torch.cuda.Event(), torch.cuda.Event()]
        host[0:1].copy_(tok, non_blocking=True)
        events[0].record()
        greedy = temperature <= 0 and self.use_graph and self.greedy_graph
        if greedy:
            self._graph_inputs()
            self.g_tok.copy_(tok)
            self.g_pos.copy_(pos)
        for i in range(room):
            if i + 1 < room:  # queue step i+1 before reading token i
                if greedy and not self._step_greedy(len(ids) + i):
                    greedy, tok, pos = False, self.g_tok.clone(), self.g_pos.clone()
                if greedy:
                    nxt = self.g_tok  # the next replay overwrites it, after this copy to the host
                else:
                    nxt = sample(self.step(tok, pos, len(ids) + i), temperature, top_p, top_k, gen).view(1)
                    pos += 1
                slot = (i + 1) % 2
                host[slot:slot + 1].copy_(nxt, non_blocking=True)
                events[slot].record()
            events[i % 2].synchronize()
            t = int(host[i % 2])
            yield t
            if t in stop_ids or i + 1 >= room:
                return
            tok = nxt

    @torch.inference_mode()
    def generate_stepwise(self, ids: list[int], *, max_new: int, rows: Rows, stop_ids: set[int],
                          grammar=None) -> Iterator[tuple[int, object]]:
        """generate() for requests that need the host between steps: yields (token, TokenLogprob or None), and
        GRAMMAR_END when `grammar` (a structured.GrammarState) is complete. Each token is read back before the
        next one is sampled, because the grammar's mask for a step depends on the token before it; the step's
        forward pass is queued first, so llguidance computes the mask while the GPU runs it."""
        from ..backends.base import GRAMMAR_END

        if len(ids) >= self.max_len:
            return
        logits = self.prefill(ids)
        pos = torch.tensor([len(ids)], dtype=torch.long, device=self.device)
        room = min(max_new, self.max_len - len(ids))
        for i in range(room):
            if grammar is not None and grammar.done:
                yield GRAMMAR_END, None
                return
            mask = None if grammar is None else torch.from_numpy(grammar.fill()).to(self.device, non_blocking=True)
            s = sample_rows(logits.view(1, -1), rows, mask)
            t = int(s.tokens[0])
            if grammar is not None:
                grammar.accept(t)
            yield t, (token_logprob(s, 0) if s.logprobs is not None else None)
            if t in stop_ids or i + 1 >= room:
                return
            logits = self.step(s.tokens.view(1), pos, len(ids) + i)
            pos += 1
