"""The fast engine's decoder: Llama-family and Gemma-3 text models over QuantWeight linears.

One decode step = embedding, every layer, final norm and lm_head, written so it can be captured in a CUDA graph:
static KV cache, the position in a device tensor, no host syncs and no shape changes. Prefill runs eagerly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import QuantConfig
from ..errors import BackendUnavailable
from ..settings import EngineConfig
from . import head
from .attention import StaticCache
from .quant import QuantWeight, concat_n, dequantize, from_awq, from_gptq

log = logging.getLogger("quantdeploy.engine")

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3")


@dataclass
class DecoderConfig:
    arch: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    eps: float
    rope_theta: list[float]  # per layer
    rope_scaling: dict | None
    window: list[int]  # per layer: 0 = global attention
    tie: bool
    gemma: bool
    act: str
    scale: float
    max_position: int
    qk_norm: bool
    bias: bool

    @classmethod
    def from_hf(cls, cfg: dict) -> "DecoderConfig":
        cfg = dict(cfg.get("text_config") or cfg) | {"model_type": cfg.get("model_type")}
        mt = cfg.get("model_type") or "llama"
        if mt not in SUPPORTED:
            raise NotImplementedError(f"the fast engine does not implement {mt} yet")
        gemma = mt.startswith("gemma3")
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or hidden // heads
        n = cfg["num_hidden_layers"]
        types = cfg.get("layer_types") or ["full_attention"] * n
        rp = cfg.get("rope_parameters") or {}
        base = cfg.get("rope_theta") or rp.get("rope_theta") or 10000.0

        def theta(t):
            sub = rp.get(t) if isinstance(rp.get(t), dict) else None
            return float((sub or {}).get("rope_theta", base if not gemma else (10000.0 if "sliding" in t else base)))

        scaling = cfg.get("rope_scaling") or (rp if rp.get("rope_type") not in (None, "default") else None)
        sw = cfg.get("sliding_window") or 0
        return cls(
            arch=mt, hidden=hidden, layers=n, heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim, inter=cfg["intermediate_size"], vocab=cfg["vocab_size"],
            eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=[theta(t) for t in types],
            rope_scaling=scaling if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type"))
            not in (None, "default") else None,
            window=[sw if "sliding" in t and sw else 0 for t in types],
            tie=bool(cfg.get("tie_word_embeddings", gemma)), gemma=gemma,
            act="gelu_tanh" if gemma else "silu",
            scale=(cfg.get("query_pre_attn_scalar") or head_dim) ** -0.5 if gemma else head_dim ** -0.5,
            max_position=int(cfg.get("max_position_embeddings", 4096)), qk_norm=gemma or mt == "qwen3",
            bias=bool(cfg.get("attention_bias", mt == "qwen2")))


def _inv_freq(dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind == "llama3":
        factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        mid = (wavelen <= old / lo) & (wavelen >= old / hi)
        inv = torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif kind == "linear":
        inv = inv / scaling["factor"]
    return inv.float()


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
                 max_len: int, gemv: str = "auto", config: EngineConfig | None = None):
        self.cfg, self.device, self.dtype, self.max_len = cfg, torch.device(device), dtype, max_len
        self.config = config = config or EngineConfig()
        cache_dense = self.device.type == "cpu"
        fmt, group = quant.method, quant.group_size
        # GPTQ's v1 checkpoints store zero points minus one (gptq_v2 and AWQ store them as they are)
        zero_offset = 1 if fmt == "gptq" and quant.checkpoint_format == "gptq" else 0

        def t(name):
            return tensors[name].to(self.device, dtype)

        def raw(name):  # repack on the target device: the GPU does it in milliseconds
            v = tensors.get(name)
            return None if v is None else v.to(self.device)

        def qw(prefix) -> QuantWeight:
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

        self.embed = t("model.embed_tokens.weight")
        self.lm_head = self.embed if cfg.tie or "lm_head.weight" not in tensors else t("lm_head.weight")
        self.head = None  # the int8 lm_head (head.py), opt-in
        if head.wanted(config.lm_head, self.lm_head is self.embed):
            self.head, self.lm_head = head.Int8Head(self.lm_head), None
        self.final_norm = t("model.norm.weight")
        self.layers: list[Layer] = []
        ext = self._gemv_maker(gemv) if self.device.type == "cuda" else None
        for i in range(cfg.layers):
            p = f"model.layers.{i}"
            a, m = p + ".self_attn", p + ".mlp"
            norms = {k: t(f"{p}.{k}.weight") for k in ("input_layernorm", "post_attention_layernorm",
                                                       "pre_feedforward_layernorm", "post_feedforward_layernorm")
                     if f"{p}.{k}.weight" in tensors}
            if cfg.qk_norm:
                norms["q_norm"], norms["k_norm"] = t(a + ".q_norm.weight"), t(a + ".k_norm.weight")
            layer = Layer(qkv=fused([a + ".q_proj", a + ".k_proj", a + ".v_proj"]), o=fused([a + ".o_proj"]),
                          gate_up=fused([m + ".gate_proj", m + ".up_proj"]), down=fused([m + ".down_proj"]),
                          norms=norms)
            if ext is not None:
                self._hand_over(ext, layer)
            self.layers.append(layer)
        self.gemv = "torch-dequant-matmul"
        self.tuning = "none"  # which tuned file chose the GEMV's variants (kernel reports)
        if self.device.type == "cuda":
            self.gemv = self._finish_kernels(ext, max_len) if ext is not None else self._triton_gemv()
        d = cfg.head_dim
        pos = torch.arange(max_len, dtype=torch.float32)
        self.rope = {}
        for th in sorted(set(cfg.rope_theta)):
            freqs = torch.outer(pos, _inv_freq(d, th, cfg.rope_scaling))
            emb = torch.cat([freqs, freqs], -1)
            self.rope[th] = (emb.cos().to(self.device, dtype), emb.sin().to(self.device, dtype))
        self._static: tuple[list, list] | None = None  # the single-sequence KV cache, made on first use
        self.embed_scale = torch.tensor(cfg.hidden ** 0.5, dtype=dtype, device=self.device) if cfg.gemma else None
        self.arange = torch.arange(max_len, device=self.device)
        self.fused = fused_ops_enabled(self.device, config.fused_ops)

    def __repr__(self) -> str:
        return f"Decoder({self.cfg.arch}, {self.cfg.layers} layers, {self.device}, gemv={self.gemv})"

    def linears(self) -> list[QLinear]:
        return [q for L in self.layers for q in (L.qkv, L.o, L.gate_up, L.down)]

    def _gemv_maker(self, gemv: str):
        """The linears' kernels on CUDA, as the kernel chooser (backends/kernels.py) picked them: "triton", our
        Triton GEMV (None here); "cuda" or "auto", quantdeploy's CUDA GEMV (cuda_gemv). The engine never picks
        another kernel itself: one that cannot run here is an error naming the way to the next."""
        from . import cuda_gemv

        if gemv == "triton":
            return None
        ok, why = cuda_gemv.available(self.device)
        if not ok:
            raise BackendUnavailable(f"the CUDA GEMV cannot run here ({why}); QUANTDEPLOY_DISABLED_KERNELS=fast_cuda "
                                     "runs the next kernel")
        return cuda_gemv.CudaLinears(self.device, self.config.tuned_dir)

    def _hand_over(self, maker, layer: Layer) -> None:
        """Layer by layer, so the GPU never holds two copies of the weights: the maker repacks ours and our
        QuantWeight is dropped."""
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
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.eps)
        if self.cfg.gemma:
            return (xf * (1.0 + w.float())).to(x.dtype)
        return w * xf.to(x.dtype)

    def act(self, g):
        return F.gelu(g, approximate="tanh") if self.cfg.act == "gelu_tanh" else F.silu(g)

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
            cos, sin = self.rope[cfg.rope_theta[i]]
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
                g, u = L.gate_up(y).chunk(2, -1)
                y = L.down(self.act(g) * u)
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
            cos, sin = self.rope[cfg.rope_theta[i]]
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
        """Normed hidden states [M, hidden] -> fp32 logits [M, vocab]."""
        return self.head(x) if self.head is not None else (x @ self.lm_head.t()).float()

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


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors
