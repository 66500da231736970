"""The one kernel chooser for GPTQ and AWQ models, kept apart from the format (as vLLM's mixed-precision kernels are).

A kernel is what multiplies the quantized weights, and the engine that runs the model follows from it: the fast_*
kernels run on quantdeploy's fast engine (engine/), the others are gptqmodel's, loaded through transformers. The
chooser walks KERNELS in order; each kernel answers can_implement(layer, target) -> (ok, reason) and the first that
can run the model here wins; when none can, one error gives every kernel's reason. QUANTDEPLOY_DISABLED_KERNELS
skips kernels, --kernel (or QUANTDEPLOY_KERNEL) forces one, --engine keeps one engine's kernels only. The choice and
its reasons are logged and shown by the kernel report, `quantdeploy inspect` and `quantdeploy backends`.

gptqmodel's own AUTO is never used on CUDA: on Hopper it picks Machete, which downloads CUTLASS on first use and
fails offline. No torch import at module level: `backends` lists these on machines without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..checkpoint import PER_CHANNEL, QuantConfig
from ..errors import BackendUnavailable, UsageError
from .base import KernelStatus

# What runs a model whose kernel is of this engine (`--engine` names the keys).
ENGINES = {"fast": "quantdeploy fast engine", "hf": "transformers + gptqmodel"}
DISABLED_BY = "QUANTDEPLOY_DISABLED_KERNELS"
CPU_KERNEL_GROUPS = (32, 64, 128, 256)  # what gptqmodel's CPU kernels (ATen int4pack, AVX-512) take


@dataclass(frozen=True)
class LayerConfig:
    """What a kernel must know of a checkpoint's quantized linears, from its config files (no weights read)."""

    format: str  # gptq | awq
    bits: int
    group_size: int  # PER_CHANNEL (-1): one group per output channel
    desc_act: bool
    model_type: str | None
    checkpoint_format: str | None = None  # gptq | gptq_v2 (GPTQ), gemm | gemv (AWQ)
    in_features: tuple[int, ...] = ()  # K of the model's linears: hidden, attention output, intermediate
    config: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # config.json, for the engine

    @classmethod
    def from_checkpoint(cls, fmt: str, config: dict[str, Any], quant: QuantConfig) -> "LayerConfig":
        text = config.get("text_config") or config
        hidden, heads = text.get("hidden_size"), text.get("num_attention_heads")
        head_dim = text.get("head_dim") or (hidden // heads if hidden and heads else None)
        ks = (hidden, heads * head_dim if heads and head_dim else None, text.get("intermediate_size"))
        return cls(format=fmt, bits=quant.bits, group_size=quant.group_size, desc_act=bool(quant.desc_act),
                   model_type=config.get("model_type"), checkpoint_format=quant.checkpoint_format, config=config,
                   in_features=tuple(sorted({int(k) for k in ks if isinstance(k, int) and k > 0})))

    def groups(self) -> list[tuple[int, int]]:
        """(K, group size) of each linear (per channel: the group is all of K)."""
        return [(k, k if self.group_size == PER_CHANNEL else self.group_size) for k in self.in_features]


@dataclass(frozen=True)
class Target:
    """Where the model would run: a torch device name and, on CUDA, its compute capability."""

    device: str
    capability: tuple[int, int] | None = None

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @classmethod
    def of(cls, device: str) -> "Target":
        if not device.startswith("cuda"):
            return cls(device)
        import torch

        return cls(device, tuple(torch.cuda.get_device_capability(torch.device(device))))


def _sm(cap: tuple[int, int]) -> str:
    return ".".join(map(str, cap))


@dataclass(frozen=True)
class Kernel:
    name: str  # what users type (--kernel)
    engine: str  # a key of ENGINES
    note: str = ""  # what it is, for `backends`
    auto: str = "always"  # chosen automatically: always, "cpu" (on the CPU only) or "never" (only when forced)

    def can_implement(self, layer: LayerConfig | None, target: Target) -> tuple[bool, str]:
        """(True, "") when this kernel can run `layer` (None: any model) on `target`; else (False, why not)."""
        raise NotImplementedError


@dataclass(frozen=True)
class GptqmodelKernel(Kernel):
    """One of gptqmodel's QuantLinear kernels, which transformers installs when GPTQConfig / AwqConfig names it."""

    backend_value: str = ""  # the `backend` transformers' GPTQConfig / AwqConfig takes
    cuda: bool = True  # a GPU kernel
    min_capability: tuple[int, int] = (0, 0)
    engine: str = "hf"

    def can_implement(self, layer: LayerConfig | None, target: Target) -> tuple[bool, str]:
        if self.cuda and not target.cuda:
            return False, f"needs a CUDA GPU (device is {target.device})"
        if not self.cuda and target.cuda and self.name != "torch":
            return False, "a CPU kernel"
        if self.cuda and target.capability and target.capability < self.min_capability:
            return False, (f"needs compute capability {_sm(self.min_capability)}+ (this GPU is "
                           f"{_sm(target.capability)})")
        if layer is not None and not target.cuda:
            if layer.format == "awq" and layer.checkpoint_format == "gemv":
                return False, "gptqmodel runs AWQ's GEMV layout on CUDA GPUs only; --engine fast runs it on this device"
            if self.name == "cpu" and layer.group_size not in CPU_KERNEL_GROUPS:  # e.g. per channel (-1)
                return False, (f"takes groups of {'/'.join(map(str, CPU_KERNEL_GROUPS))}; this model's is "
                               f"{layer.group_size}")
        return True, ""


@dataclass(frozen=True)
class FastKernel(Kernel):
    """A linear of quantdeploy's fast engine; `gemv` is what the engine calls it (engine/model.py)."""

    gemv: str = "auto"  # cuda (the CUDA GEMV), triton (the Triton GEMV), auto on the CPU (dequantize + matmul)
    min_capability: tuple[int, int] = (0, 0)
    engine: str = "fast"

    def can_implement(self, layer: LayerConfig | None, target: Target) -> tuple[bool, str]:
        if layer is not None:
            from ..engine.capability import engine_supports

            ok, why = engine_supports(layer.config or {"model_type": layer.model_type}, layer.bits)
            if not ok:
                return False, why
        if self.gemv == "auto":  # dequantize + matmul: the engine's path on the CPU
            return (True, "") if not target.cuda else (False, "dequantizes every weight at every step on a GPU")
        if not target.cuda:
            return False, f"needs a CUDA GPU (device is {target.device})"
        if target.capability and target.capability < self.min_capability:
            return False, f"needs compute capability {_sm(self.min_capability)}+ (this GPU is {_sm(target.capability)})"
        if layer is not None:
            bad = ", ".join(str(k) for k, g in layer.groups() if not self._fits(k, g))
            if bad:
                groups = "per-channel groups" if layer.group_size == PER_CHANNEL else f"group size {layer.group_size}"
                return False, f"cannot take {groups} with K {bad} ({self._shapes()})"
        return self._probe(target)

    def _fits(self, k: int, g: int) -> bool:
        if self.gemv == "cuda":  # the NK layout: K and the group in chunks of 32 weights, a power of two per group
            return k % 32 == 0 and g % 32 == 0 and (g // 32) & (g // 32 - 1) == 0 and k % g == 0
        return g >= 8 and g & (g - 1) == 0 and k % g == 0  # Triton tiles: a power-of-two group

    def _shapes(self) -> str:
        return "needs K and the group size in multiples of 32, the group 32 x a power of two" \
            if self.gemv == "cuda" else "needs a power-of-two group size that divides K"

    def _probe(self, target: Target) -> tuple[bool, str]:
        if self.gemv == "cuda":
            from ..engine import cuda_gemv

            ok, why = cuda_gemv.available(target.device)
            return (True, "") if ok else (False, f"its kernels do not build or load here ({why})")
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return False, f"needs triton ({e})"
        return True, ""


FAST_CUDA = FastKernel("fast_cuda", note="quantdeploy's CUDA W4A16 GEMV for one token, a Triton W4A16 GEMM for "
                       "2-256, dequantize + cuBLAS for prompts", gemv="cuda", min_capability=(7, 0))
FAST_TRITON = FastKernel("fast_triton", note="the engine's Triton W4A16 GEMV: where the CUDA GEMV cannot run (no "
                         "NVRTC, its group sizes)", gemv="triton", min_capability=(7, 0))
FAST_TORCH = FastKernel("fast_torch", note="the engine on the CPU: dequantize + matmul in float32 (the correctness "
                        "reference)", gemv="auto")
_CPU = GptqmodelKernel("cpu", backend_value="auto", cuda=False, note="gptqmodel's CPU kernels (AVX512 / fused torch)")
_NOTE_MARLIN = "gptqmodel's fastest batch-1 GEMV on Ampere and newer"
_NOTE_MACHETE = "downloads CUTLASS at first use: fails offline"
_NOTE_TORCH = "dequantize + matmul in torch: slow on a GPU"

# The chooser's order, per format. machete runs only when forced; torch is chosen on the CPU only (slow on a GPU).
KERNELS: dict[str, tuple[Kernel, ...]] = {
    "gptq": (
        FAST_CUDA, FAST_TRITON,
        GptqmodelKernel("marlin", backend_value="gptq_marlin", min_capability=(8, 0), note=_NOTE_MARLIN),
        GptqmodelKernel("exllama_v2", backend_value="gptq_exllama_v2", min_capability=(6, 0)),
        GptqmodelKernel("triton", backend_value="gptq_triton", min_capability=(6, 0)),
        _CPU, FAST_TORCH,
        GptqmodelKernel("machete", backend_value="gptq_machete", min_capability=(9, 0), note=_NOTE_MACHETE,
                        auto="never"),
        GptqmodelKernel("torch", backend_value="gptq_torch", cuda=False, note=_NOTE_TORCH, auto="cpu"),
    ),
    "awq": (
        FAST_CUDA, FAST_TRITON,
        GptqmodelKernel("marlin", backend_value="marlin", min_capability=(8, 0), note=_NOTE_MARLIN),
        GptqmodelKernel("exllama_v2", backend_value="exllama_v2", min_capability=(6, 0)),
        GptqmodelKernel("gemm", backend_value="gemm", min_capability=(6, 0)),
        _CPU, FAST_TORCH,
        GptqmodelKernel("machete", backend_value="machete", min_capability=(9, 0), note=_NOTE_MACHETE, auto="never"),
        GptqmodelKernel("torch", backend_value="torch_awq", cuda=False, note=_NOTE_TORCH, auto="cpu"),
    ),
}


def kernel_names(fmt: str) -> list[str]:
    return [k.name for k in KERNELS[fmt]]


@dataclass(frozen=True)
class Choice:
    """The chooser's answer: the kernel, why it, and what it said of every kernel it asked."""

    kernel: Kernel
    reason: str
    statuses: tuple[KernelStatus, ...] = field(default=())
    summary: str = ""  # the reason without the kernels skipped before it (the line chat prints at load)

    @property
    def engine(self) -> str:
        return self.kernel.engine


def _status(k: Kernel, ok: bool, reason: str, chosen: bool = False) -> KernelStatus:
    return KernelStatus(k.name, ENGINES[k.engine], ok, reason, chosen)


def choose(fmt: str, layer: LayerConfig | None, target: Target, *, forced: str | None = None,
           forced_by: str = "--kernel", disabled: tuple[str, ...] = (), engine: str = "auto") -> Choice:
    """The kernel for `layer` on `target`. forced: a kernel name (from `forced_by`); disabled: names never chosen
    automatically; engine: auto, or a key of ENGINES to keep that engine's kernels only."""
    _check_disabled(disabled)
    table = KERNELS[fmt]
    if forced:
        return _forced(fmt, table, layer, target, forced.lower(), forced_by, engine)
    chosen, statuses, reasons = _walk(table, layer, target, disabled, engine)
    if chosen is None:
        raise BackendUnavailable(f"no {fmt} kernel can run this model on {target.device}: " + "; ".join(reasons))
    why = f"first kernel in order that can run it on {target.device}"
    # the one-line summary says why the engine first in the order cannot run it, when none of its kernels can
    first = [s for s in statuses if s.engine == statuses[0].engine]
    summary = why if first[0].engine == ENGINES[chosen.engine] or any(s.ok for s in first) else \
        f"{why}; not the {first[0].engine}: {first[0].reason}"
    return Choice(chosen, why + (f" (skipped {'; '.join(reasons)})" if reasons else ""), tuple(statuses), summary)


def survey(fmt: str, layer: LayerConfig | None, target: Target, *, forced: str | None = None,
           disabled: tuple[str, ...] = (), engine: str = "auto") -> list[KernelStatus]:
    """What every kernel says of `layer` (None: any model) on `target`, in the chooser's order, the one it would
    choose marked: `quantdeploy inspect` and `quantdeploy backends`."""
    _check_disabled(disabled)
    statuses = _walk(KERNELS[fmt], layer, target, disabled, engine)[1]
    if forced:  # the forced kernel is the one chosen, when it can run
        statuses = [replace(s, chosen=s.ok and s.name == forced.lower(),
                            reason="forced" if s.ok and s.name == forced.lower() else
                            "not forced" if s.chosen else s.reason) for s in statuses]
    return statuses


def _check_disabled(disabled: tuple[str, ...]) -> None:
    names = {k.name for t in KERNELS.values() for k in t}
    unknown = sorted(set(disabled) - names)
    if unknown:
        raise UsageError(f"{DISABLED_BY}: unknown kernel '{unknown[0]}'; choose from: {', '.join(sorted(names))}")


def _walk(table, layer, target, disabled, engine):
    """(the first kernel that fits or None, a status per kernel asked, the reasons of those skipped before it)."""
    statuses: list[KernelStatus] = []
    reasons: list[str] = []
    chosen = None
    for k in table:
        if engine != "auto" and k.engine != engine:
            statuses.append(_status(k, False, f"runs on the {ENGINES[k.engine]}, not --engine {engine}"))
            continue
        if k.name in disabled:
            statuses.append(_status(k, False, f"disabled by {DISABLED_BY}"))
            reasons.append(f"{k.name}: disabled by {DISABLED_BY}")
            continue
        ok, why = k.can_implement(layer, target)
        if k.auto == "never" or (k.auto == "cpu" and target.cuda):  # not a candidate here: its status only
            statuses.append(_status(k, ok, "only when forced (--kernel)" if ok else why))
        elif ok and chosen is None:
            chosen = k
            statuses.append(_status(k, True, "chosen", chosen=True))
        else:
            statuses.append(_status(k, ok, why))
            if not ok and chosen is None:
                reasons.append(f"{k.name}: {why}")
    return chosen, statuses, reasons


def _forced(fmt, table, layer, target, name, forced_by, engine) -> Choice:
    match = [k for k in table if k.name == name]
    if not match:
        raise UsageError(f"unknown kernel '{name}' for {fmt}; choose one of: {', '.join(kernel_names(fmt))}")
    k = match[0]
    if engine != "auto" and k.engine != engine:
        other = next(e for e in ENGINES if e != engine)
        raise UsageError(f"{forced_by} {name} runs on the {ENGINES[k.engine]} (--engine {other}), not --engine "
                         f"{engine}")
    ok, why = k.can_implement(layer, target)
    if not ok:
        raise BackendUnavailable(f"{forced_by} {name} cannot run this model on {target.device}: {why}")
    return Choice(k, f"forced with {forced_by}", (_status(k, True, f"forced with {forced_by}", chosen=True),),
                  f"forced with {forced_by}")
