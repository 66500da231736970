"""The fast engine's decoder: Llama-family and Gemma-2/3 text models over QuantWeight linears (arch.py: what differs).

One decode step = embedding, every layer, final norm and lm_head, written so it can be captured in a CUDA graph:
static KV cache, the position in a device tensor, no host syncs and no shape changes. Prefill runs eagerly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import QuantConfig
from ..errors import BackendUnavailable
from ..settings import EngineConfig
from . import head
from .arch import SUPPORTED, DecoderConfig, Unsupported, long_prompt_threshold, rope_table
from .arch_ops import gate_up_act, rms_norm, softcap
from .attention import StaticCache
from .quant import QuantWeight, concat_n, dequantize, dequantize_gptq, from_awq, from_awq_gemv, from_gptq

log = logging.getLogger("quantdeploy.engine")


class QLinear:
    """y = x @ W (+ b) for a QuantWeight: on CUDA the attached kernel (self.ext: our CUDA GEMV), else our Triton GEMV
    for one token; dequantize + matmul otherwise (the CPU)."""

    def __init__(self, w: QuantWeight, bias: torch.Tensor | None, cache_dense: bool):
        self.w, self.bias, self.cache_dense = w, bias, cache_dense
        self._dense = None
        self.ext = None
        self.triton_config = None  # the Triton GEMV's launch configuration (None: its default)

    def dense(self, dtype):
        if self._dense is not None:
            return self._dense
        d = dequantize(self.w, dtype)
        if self.cache_dense:
            self._dense = d
        return d

    @property
    def act_fused(self) -> bool:
        """For one token, the kernel returns act(gate) * up (a gate|up weight on the CUDA GEMV)."""
        return getattr(self.ext, "act", None) is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.ext is not None:
            y = self.ext(x.half()).to(x.dtype)
        elif x.is_cuda and x.shape[0] == 1:
            from .triton_gemv import w4a16_gemv

            out = torch.zeros(self.w.n, dtype=torch.float32, device=x.device)
            y = w4a16_gemv(x.reshape(-1), self.w, out, self.triton_config).to(x.dtype).unsqueeze(0)
        else:
            y = x @ self.dense(x.dtype)
        return y + self.bias if self.bias is not None else y


@dataclass
class Layer:
    qkv: QLinear
    o: QLinear
    gate_up: QLinear
    down: QLinear
    norms: dict = field(default_factory=dict)


class Decoder:
    """Weights + static KV cache + the math of one step. Not an nn.Module: nothing here needs autograd."""

    def __init__(self, cfg: DecoderConfig, tensors: dict, quant: QuantConfig, device: str, dtype: torch.dtype,
                 max_len: int, gemv: str = "auto", config: EngineConfig | None = None, batch: int = 1):
        self.cfg, self.device, self.dtype, self.max_len = cfg, torch.device(device), dtype, max_len
        self.config = config = config or EngineConfig()
        cache_dense = self.device.type == "cpu"
        fmt, group = quant.method, quant.group_size
        # GPTQ's v1 checkpoints store zero points minus one (gptq_v2 and AWQ store them as they are)
        zero_offset = 1 if fmt == "gptq" and quant.checkpoint_format == "gptq" else 0
        awq_gemv = fmt == "awq" and quant.checkpoint_format == "gemv"

        def t(name):
            return tensors[name].to(self.device, dtype)

        def raw(name):  # repack on the target device: the GPU does it in milliseconds
            v = tensors.get(name)
            return None if v is None else v.to(self.device)

        def qw(prefix) -> QuantWeight:
            if module_quant(quant, prefix) != (4, group):
                raise Unsupported(f"{prefix} is quantized apart from the rest ({module_quant(quant, prefix)} bits and "
                                  "group); the fast engine runs one 4-bit layout")
            if awq_gemv:
                return from_awq_gemv(raw(prefix + ".qweight"), raw(prefix + ".qzeros"), raw(prefix + ".scales"),
                                     group)
            if fmt == "awq":
                return from_awq(raw(prefix + ".qweight"), raw(prefix + ".qzeros"), raw(prefix + ".scales"), group)
            return from_gptq(raw(prefix + ".qweight"), raw(prefix + ".qzeros"), raw(prefix + ".scales"),
                             raw(prefix + ".g_idx"), group, zero_offset)

        def fused(prefixes) -> QLinear:
            ws = [qw(p) for p in prefixes]
            biases = [tensors.get(p + ".bias") for p in prefixes]
            bias = torch.cat([b.to(self.device, dtype) for b in biases]) if all(b is not None for b in biases) \
                else None
            return QLinear(concat_n(ws).to(self.device, dtype), bias, cache_dense)

        def one_of(*forms):  # the projections as the checkpoint stores them: fused (Phi-3) or apart
            for form in forms:
                if all(p + ".qweight" in tensors for p in form):
                    return fused(form)
            raise Unsupported(f"the checkpoint has no quantized weights for {forms[-1][0]} (or {forms[0][0]}); "
                              "the fast engine reads GPTQ / AWQ linears")

        self.embed = t("model.embed_tokens.weight")
        if "lm_head.qweight" in tensors:  # a quantized head (8-bit from gptqmodel): dequantized once, runs dense
            if fmt != "gptq":
                raise Unsupported("the fast engine reads a quantized lm_head in GPTQ checkpoints only")
            bits, hgroup = module_quant(quant, "lm_head") or (quant.bits, group)
            self.lm_head = dequantize_gptq(raw("lm_head.qweight"), raw("lm_head.qzeros"), raw("lm_head.scales"),
                                           raw("lm_head.g_idx"), bits, hgroup, zero_offset).t().to(dtype).contiguous()
        elif cfg.tie or "lm_head.weight" not in tensors:
            self.lm_head = self.embed
        else:
            self.lm_head = t("lm_head.weight")
        self.head = None  # the int8 lm_head (head.py), opt-in
        if head.wanted(config.lm_head, self.lm_head is self.embed):
            self.head, self.lm_head = head.Int8Head(self.lm_head), None
        self.final_norm = t("model.norm.weight")
        self.layers: list[Layer] = []
        ext = self._gemv_maker(gemv, batch) if self.device.type == "cuda" else None
        for i in range(cfg.layers):
            p = f"model.layers.{i}"
            a, m = p + ".self_attn", p + ".mlp"
            norms = {k: t(f"{p}.{k}.weight") for k in ("input_layernorm", "post_attention_layernorm",
                                                       "pre_feedforward_layernorm", "post_feedforward_layernorm")
                     if f"{p}.{k}.weight" in tensors}
            if cfg.qk_norm:
                norms["q_norm"], norms["k_norm"] = t(a + ".q_norm.weight"), t(a + ".k_norm.weight")
            layer = Layer(qkv=one_of([a + ".qkv_proj"], [a + ".q_proj", a + ".k_proj", a + ".v_proj"]),
                          o=fused([a + ".o_proj"]), down=fused([m + ".down_proj"]), norms=norms,
                          gate_up=one_of([m + ".gate_up_proj"], [m + ".gate_proj", m + ".up_proj"]))
            if ext is not None:
                self._hand_over(ext, layer)
            self.layers.append(layer)
        self.gemv = "torch-dequant-matmul"
        self.tuning = "none"  # which tuned file chose the GEMV's variants (kernel reports)
        self.marlin = "off"  # which products run on Marlin in batches, or why none (kernel reports)
        if self.device.type == "cuda":
            self.gemv = self._finish_kernels(ext, max_len) if ext is not None else self._triton_gemv()
        # rotary tables per key (layer type); longrope also all-long ones, for a prompt past its original length
        self.rope = {k: tuple(x.to(self.device, dtype) for x in rope_table(cfg, k, max_len))
                     for k in sorted(set(cfg.rope_key))}
        self.long_prompt = long_prompt_threshold(cfg)
        self.rope_long = {} if self.long_prompt is None else {
            k: tuple(x.to(self.device, dtype) for x in rope_table(cfg, k, max_len, long=True)) for k in self.rope}
        self._static: tuple[list, list] | None = None  # the single-sequence KV cache, made on first use
        self.embed_scale = torch.tensor(cfg.hidden ** 0.5, dtype=dtype, device=self.device) if cfg.gemma else None
        self.arange = torch.arange(max_len, device=self.device)
        self.fused = fused_ops_enabled(self.device, config.fused_ops) and fused_ops_cover(cfg)

    def __repr__(self) -> str:
        return f"Decoder({self.cfg.arch}, {self.cfg.layers} layers, {self.device}, gemv={self.gemv})"

    def linears(self) -> list[QLinear]:
        return [q for L in self.layers for q in (L.qkv, L.o, L.gate_up, L.down)]

    def _gemv_maker(self, gemv: str, batch: int):
        """The linears' kernels on CUDA, as the kernel chooser (backends/kernels.py) picked them: "triton", our
        Triton GEMV (None here); "cuda" or "auto", quantdeploy's CUDA GEMV (cuda_gemv), with Marlin copies for
        batches where EngineConfig.marlin and `batch` (the most sequences decoded together) ask for them. The engine
        never picks another kernel itself: one that cannot run here is an error naming the way to the next."""
        from . import cuda_gemv, marlin

        if gemv == "triton":
            return None
        ok, why = cuda_gemv.available(self.device)
        if not ok:
            raise BackendUnavailable(f"the CUDA GEMV cannot run here ({why}); QUANTDEPLOY_DISABLED_KERNELS=fast_cuda "
                                     "runs the next kernel")
        use, note = marlin.choose(self.config.marlin, self.device, batch)
        return cuda_gemv.CudaLinears(self.device, self.config.tuned_dir, use_marlin=use, marlin_note=note,
                                     one_copy=self.config.one_copy)

    def _hand_over(self, maker, layer: Layer) -> None:
        """Layer by layer, so the GPU never holds two copies of the weights in one layout: the maker repacks ours
        (and, for a batching model, adds Marlin's copy of gate|up and down: engine/marlin.py) and our QuantWeight is
        dropped."""
        qs = (layer.qkv, layer.o, layer.gate_up, layer.down)
        act = self.cfg.act if getattr(maker, "fuses_act", False) and layer.gate_up.bias is None else None
        try:
            exts = [maker.make(q.w, act=act) if q is layer.gate_up and act else maker.make(q.w) for q in qs]
        except ValueError as e:  # what the chooser cannot see in config.json (e.g. no integer zero points)
            raise BackendUnavailable(f"the CUDA GEMV cannot take these weights ({e}); "
                                     "QUANTDEPLOY_DISABLED_KERNELS=fast_cuda runs the next kernel") from None
        for q, e in zip(qs, exts):
            q.ext, q.w = e, None

    def _finish_kernels(self, maker, max_len: int) -> str:
        maker.finish(min(max_len, 2048))
        self._kernels = maker
        self.tuning = maker.tuning_note() if hasattr(maker, "tuning_note") else "none"
        self.marlin = maker.batched_note() if hasattr(maker, "batched_note") else "off"
        torch.cuda.empty_cache()
        return maker.kernel

    def _triton_gemv(self) -> str:
        """The linears on our Triton GEMV, each with its launch configuration (a tuned file's, else the default)."""
        from . import triton_gemv, tuning

        path = tuning.tuned_file(self.config.tuned_dir, self.device, "triton")
        tuned = tuning.read(path)
        used = set()
        for q in self.linears():
            q.triton_config = triton_gemv.config_for(q.w.k, q.w.n, tuned)
            if f"{q.w.k}x{q.w.n}" in tuned:
                used.add(f"{q.w.k}x{q.w.n}")
        self.tuning = f"{path} ({', '.join(sorted(used))})" if used else \
            "off (QUANTDEPLOY_TUNED_GEMV=0): built-in configurations" if path is None else \
            f"built-in configurations ({'no shape of this model in' if tuned else 'no tuned file'}: {path})"
        return "triton-w4a16-gemv"

    # --- math ------------------------------------------------------------------------------------
    def norm(self, x, w):
        return rms_norm(x, w, self.cfg.eps, self.cfg.gemma)

    def rope_for(self, i: int, m: int, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's (cos, sin) tables: longrope's long ones for a whole single prompt past its original length."""
        key = self.cfg.rope_key[i]
        if self.long_prompt is not None and getattr(ctx, "causal_from_zero", False) and m > self.long_prompt:
            return self.rope_long[key]
        return self.rope[key]

    @staticmethod
    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    def static_cache(self) -> tuple[list, list]:
        """The single-sequence KV cache: per layer K and V [KVH, max_len, D] (allocated on first use)."""
        if self._static is None:
            cfg = self.cfg
            shape = (cfg.kv_heads, self.max_len, cfg.head_dim)
            self._static = ([torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(cfg.layers)],
                            [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(cfg.layers)])
        return self._static

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, masks: dict, kv_len: int,
                all_logits: bool = False, causal_from_zero: bool = False, last: torch.Tensor | None = None
                ) -> torch.Tensor:
        """One sequence in the static cache. tokens, positions: [M] on device; attention reads the first kv_len
        cache slots (> every position). masks: window -> bool [M, kv_len] (True = attend); causal_from_zero:
        positions are 0..M-1. Returns the last position's logits (float32 [vocab]) (or position `last`, a device
        index [1], for a padded prompt), or every position's with all_logits."""
        ctx = StaticCache(self, positions, masks, kv_len, causal_from_zero)
        rows = None if all_logits else last
        logits = self.run(tokens, positions, ctx, rows=rows, all_rows=all_logits)
        return logits if all_logits else logits[0]

    def run(self, tokens: torch.Tensor, positions: torch.Tensor, ctx, rows: torch.Tensor | None = None,
            all_rows: bool = False) -> torch.Tensor:
        """The decoder over tokens [M] at positions [M], KV through `ctx` (attention.StaticCache or PagedBatch).
        Returns float32 logits [R, vocab] for the token indices `rows` (device [R]), every token (all_rows), or the
        last token."""
        x = self.embed_tokens(tokens)
        if self.fused:
            return self._forward_fused(x, ctx, rows, all_rows)
        cfg = self.cfg
        m = tokens.shape[0]
        h, kvh, d = cfg.heads, cfg.kv_heads, cfg.head_dim
        for i, L in enumerate(self.layers):
            n = L.norms
            res = x
            y = self.norm(x, n["input_layernorm"])
            qkv = L.qkv(y)
            q, k, v = qkv.split([h * d, kvh * d, kvh * d], -1)
            q, k, v = q.view(m, h, d), k.view(m, kvh, d), v.view(m, kvh, d)
            if cfg.qk_norm:
                q, k = self.norm(q, n["q_norm"]), self.norm(k, n["k_norm"])
            cos, sin = self.rope_for(i, m, ctx)
            c, s = cos.index_select(0, positions)[:, None], sin.index_select(0, positions)[:, None]
            q, k = self.rotate(q, c, s), self.rotate(k, c, s)
            ctx.store(i, k, v)
            y = L.o(ctx.attend(i, q))
            if "pre_feedforward_layernorm" in n:  # gemma: norms after each block too
                y = self.norm(y, n["post_attention_layernorm"])
                x = res + y
                res = x
                y = self.norm(x, n["pre_feedforward_layernorm"])
            else:
                x = res + y
                res = x
                y = self.norm(x, n["post_attention_layernorm"])
            if m == 1 and L.gate_up.act_fused:
                y = L.down(L.gate_up(y))
            else:
                y = L.down(gate_up_act(L.gate_up(y), self.cfg.act))
            if "post_feedforward_layernorm" in n:
                y = self.norm(y, n["post_feedforward_layernorm"])
            x = res + y
        x = self.norm(x if all_rows else x[-1:] if rows is None else x.index_select(0, rows), self.final_norm)
        return self.logits(x)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        x = F.embedding(tokens, self.embed)
        return x * self.embed_scale if self.embed_scale is not None else x

    def prompt_layers(self, tokens, positions, masks, kv_len: int, stop: int) -> torch.Tensor:
        """A prompt from position 0 through layers [0, stop) of the fused path: [2, M, hidden], the residual stream
        and the last block's output not yet added into it (what prompt_rest continues from)."""
        ctx = StaticCache(self, positions, masks, kv_len, True)
        x, pending = self._forward_fused(self.embed_tokens(tokens), ctx, layers=range(stop))
        return torch.stack([x, pending])

    def prompt_rest(self, state, positions, masks, kv_len: int, start: int, last=None) -> torch.Tensor:
        """prompt_layers' state through layers [start, end) and the head: forward()'s logits (state[0] changes)."""
        ctx = StaticCache(self, positions, masks, kv_len, True)
        return self._forward_fused(state[0], ctx, last, layers=range(start, len(self.layers)),
                                   pending=state[1])[0]

    def _forward_fused(self, x, ctx, rows=None, all_rows=False, layers=None, pending=None):
        """run() in Triton kernels around the linears: ~10 kernels per layer instead of ~70 (see triton_ops).
        x (the residual stream) is updated in place. layers: a range of layers only, then (x, pending) for the
        rest (a prompt graph's part); pending: the last block's output, not yet added into x."""
        from . import triton_ops as T

        cfg = self.cfg
        m = x.shape[0]
        eps, gemma = cfg.eps, cfg.gemma
        span = range(len(self.layers)) if layers is None else layers
        pending_w = None  # pending: the last block's output, added into x by the next norm (with this norm first)
        if pending is not None:
            pending_w = self.layers[span.start - 1].norms.get("post_feedforward_layernorm")
        for i in span:
            L = self.layers[i]
            n = L.norms
            y = T.add_rmsnorm(x, n["input_layernorm"], eps, gemma, pending, pending_w)
            cos, sin = self.rope_for(i, m, ctx)
            q = ctx.rope_store(i, L.qkv(y), cos, sin, n.get("q_norm"), n.get("k_norm"))
            o = L.o(ctx.attend_fused(i, q))
            if "pre_feedforward_layernorm" in n:  # gemma: x += norm(o); y = norm(x)
                y = T.add_rmsnorm(x, n["pre_feedforward_layernorm"], eps, gemma, o, n["post_attention_layernorm"])
            else:
                y = T.add_rmsnorm(x, n["post_attention_layernorm"], eps, gemma, o)
            gu = L.gate_up(y)
            pending = L.down(gu if m == 1 and L.gate_up.act_fused else T.act_mul(gu, cfg.act == "gelu_tanh"))
            pending_w = n.get("post_feedforward_layernorm")
        if span.stop < len(self.layers):
            return x, pending
        if not all_rows and rows is not None:
            x, pending = x.index_select(0, rows), pending.index_select(0, rows)
        elif not all_rows:
            x, pending = x[-1:].contiguous(), pending[-1:].contiguous()
        y = T.add_rmsnorm(x, self.final_norm, eps, gemma, pending, pending_w)
        return self.logits(y)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normed hidden states [M, hidden] -> fp32 logits [M, vocab] (soft-capped for Gemma-2)."""
        logits = self.head(x) if self.head is not None else (x @ self.lm_head.t()).float()
        return softcap(logits, self.cfg.final_softcap)

    def masks(self, positions: torch.Tensor, kv_len: int) -> dict:
        """Causal (and sliding-window) masks over the first kv_len cache slots for queries at `positions`."""
        j = self.arange[None, :kv_len]
        p = positions[:, None]
        out = {0: j <= p}
        for w in set(self.cfg.window) - {0}:
            out[w] = (j <= p) & (j > p - w)
        return out


def fused_ops_enabled(device: torch.device, flag: bool | None) -> bool:
    """The Triton-fused step: on CUDA unless flag (EngineConfig.fused_ops) is False; also elsewhere when it is True
    (e.g. under Triton's interpreter on the CPU, for tests)."""
    if flag is False or (flag is None and device.type != "cuda"):
        return False
    try:
        from . import triton_ops  # noqa: F401
    except Exception as e:  # no triton
        log.warning("fused Triton kernels unavailable (%s); using torch ops", e)
        return False
    return True


def fused_ops_cover(cfg: DecoderConfig) -> bool:
    """Whether the fused Triton step implements this architecture: it has no attention soft-capping (Gemma-2) and
    takes power-of-two head sizes (Phi-3's 96 is not). Otherwise the step runs torch ops around the GEMV kernels."""
    why = "attention soft-capping" if cfg.attn_softcap else \
        f"head size {cfg.head_dim}" if cfg.head_dim & (cfg.head_dim - 1) else ""
    if why:
        log.info("fused Triton step off for %s (%s); torch ops around the linears", cfg.arch, why)
    return not why


def module_quant(quant: QuantConfig, name: str) -> tuple[int, int] | None:
    """Module `name`'s (bits, group size): the checkpoint's, or the first of gptqmodel's `dynamic` rules whose regex
    matches it ("-:" rules: the module is left unquantized, None)."""
    import re

    for key, over in (quant.raw.get("dynamic") or {}).items():
        pattern = key[2:] if key.startswith(("+:", "-:")) else key
        if re.match(pattern, name):
            if key.startswith("-:"):
                return None
            return int(over.get("bits", quant.bits)), int(over.get("group_size", quant.group_size))
    return quant.bits, quant.group_size


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors
