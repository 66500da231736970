"""One settings object. Nothing else in quantdeploy reads os.environ for its own variables.

Every QUANTDEPLOY_* variable is declared here once, with its parser and what it means (the way vLLM's envs.py
declares its own); the rest of the code imports the parsed values. The GPTQ/AWQ engines get theirs as one frozen
EngineConfig, passed down to them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UsageError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _default_cpu_workers() -> str:
    # gptqmodel spawns CPU workers per core; on 2-core machines its default oversubscribes and stalls.
    # its model loader asks for a pool of 2 workers: fewer fails ("requests 2 workers but parent only has 1").
    return str(max(2, min(8, os.cpu_count() or 2)))


def _flag(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE or v in _FALSE:
        return v in _TRUE
    raise UsageError(f"{name}={value}: use 1 or 0")


def _kernel(name: str, value: str) -> str | None:
    return value.strip().lower() or None


def _kernel_list(name: str, value: str) -> tuple[str, ...]:
    return tuple(k.strip().lower() for k in value.split(",") if k.strip())


def _auto_flag(name: str, value: str) -> bool | None:
    return None if value.strip().lower() in ("", "auto") else _flag(name, value)


def _lm_head(name: str, value: str) -> str:
    v = value.strip().lower() or "checkpoint"
    if v not in ("checkpoint", "int8"):
        raise UsageError(f"{name}={value}: use int8 (or leave it unset for the checkpoint's lm_head)")
    return v


def _tuned(name: str, value: str) -> bool:
    return value.strip() == "" or _flag(name, value)


@dataclass(frozen=True)
class EngineConfig:
    """How GPTQ and AWQ models run: which kernel, and the few switches a user may need.

    Built once from the variables in ENGINE_VARIABLES (from_env) and passed down to the engine, which reads no
    environment. A switch is here only because a user needs it (each says why); the ones that only compared
    variants of a kernel went with the variant that lost (CHANGELOG.md). To compare kernels, disable one
    (disabled_kernels) or force one (kernel).
    """

    kernel: str | None = None
    """QUANTDEPLOY_KERNEL: the kernel every GPTQ/AWQ model runs, as `--kernel` (which wins) names it: one of the fast
    engine's (fast_cuda, fast_triton, fast_torch) or one of gptqmodel's (marlin, exllama_v2, ...); the engine follows
    from it. Unset: the first kernel that can run the model here (backends/kernels.py)."""

    disabled_kernels: tuple[str, ...] = ()
    """QUANTDEPLOY_DISABLED_KERNELS=a,b: kernels the chooser skips, for a kernel that fails on this machine or to
    measure the next one in line."""

    fused_ops: bool | None = None
    """QUANTDEPLOY_FUSED: the fast engine's fused Triton kernels around the linears (norms, RoPE and the KV write,
    decode attention, the MLP activation). Unset: on CUDA. 0: torch ops instead, for a GPU or Triton release on
    which they fail to compile (slower). 1: also on the CPU, under TRITON_INTERPRET=1 (how the tests check them)."""

    lm_head: str = "checkpoint"
    """QUANTDEPLOY_LM_HEAD=int8: quantize an untied fp16 lm_head to int8 per row at load (an 8B model decodes ~5 %
    faster; logits move by ~0.7 % relative, so greedy tokens can differ at near-ties). Opt-in: it changes outputs."""

    marlin: bool | None = None
    """QUANTDEPLOY_MARLIN: gptqmodel's Marlin GEMM for the batched gate|up and down products (from 2 tokens), from a
    second copy of those weights in Marlin's layout (2.7 GiB for an 8B model, half its checkpoint). Unset: on CUDA for
    a model loaded to decode more than 8 sequences together, where gptqmodel's Marlin kernels build (else the
    engine's own, with the reason in the kernel report). 0: never (one copy of the weights). 1: on CUDA whatever the
    batch, an error where it cannot run."""

    one_copy: bool = False
    """QUANTDEPLOY_ONE_COPY=1: where the engine makes Marlin's copy of gate|up and down (QUANTDEPLOY_MARLIN), it keeps
    that copy only, so a batching model holds its weights once (2.7 GiB more for the KV pool of an 8B model): one
    token runs quantdeploy's GEMV over Marlin's layout (engine/marlin_gemv.py), 2 tokens and more Marlin. Opt-in
    until that GEMV's batch-1 speed is measured against the engine's own (docs/engine.md)."""

    tuned_dir: Path | None = None
    """Where the fast engine reads per-GPU tuned GEMV variants ($QUANTDEPLOY_HOME/gemv, written by
    benchmarks/gpu/graph_ab.py --sweep --save); None: the built-in variants. QUANTDEPLOY_TUNED_GEMV=0 ignores the
    tuned files, e.g. to compare with the defaults. The kernel report and bench say which file was used."""

    @classmethod
    def from_env(cls, env: dict[str, str], home: Path) -> "EngineConfig":
        values: dict[str, Any] = {}
        for name, (attr, parse) in ENGINE_VARIABLES.items():
            if name in env:
                values[attr] = parse(name, env[name])
        tuned = values.pop("tuned_dir", True)
        return cls(**values, tuned_dir=home / "gemv" if tuned else None)


# Every variable EngineConfig reads: name -> (field, parser(name, value)). A parser raises UsageError on a value it
# does not know, which the CLI prints as one line (exit 2). docs/engine.md documents the same names.
ENGINE_VARIABLES: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "QUANTDEPLOY_KERNEL": ("kernel", _kernel),
    "QUANTDEPLOY_DISABLED_KERNELS": ("disabled_kernels", _kernel_list),
    "QUANTDEPLOY_FUSED": ("fused_ops", _auto_flag),
    "QUANTDEPLOY_LM_HEAD": ("lm_head", _lm_head),
    "QUANTDEPLOY_MARLIN": ("marlin", _auto_flag),
    "QUANTDEPLOY_ONE_COPY": ("one_copy", _flag),
    "QUANTDEPLOY_TUNED_GEMV": ("tuned_dir", _tuned),
}


def debug_enabled(env: dict[str, str] | None = None) -> bool:
    """QUANTDEPLOY_DEBUG=1: errors show their traceback (read apart from the rest, so that a bad value elsewhere is
    still reported as one line)."""
    env = os.environ if env is None else env
    return env.get("QUANTDEPLOY_DEBUG", "") not in ("", "0", "false")


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path.home() / ".cache" / "quantdeploy")  # QUANTDEPLOY_HOME
    debug: bool = False  # QUANTDEPLOY_DEBUG
    api_key: str | None = None  # QUANTDEPLOY_API_KEY: serve's default --api-key
    hf_endpoint: str | None = None
    hf_token: str | None = None
    hf_offline: bool = False
    engine: EngineConfig = field(default_factory=EngineConfig)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        home = env.get("QUANTDEPLOY_HOME")
        home_path = Path(home).expanduser() if home else Path.home() / ".cache" / "quantdeploy"
        return cls(
            home=home_path,
            debug=debug_enabled(env),
            api_key=env.get("QUANTDEPLOY_API_KEY") or None,
            hf_endpoint=env.get("HF_ENDPOINT") or None,
            hf_token=env.get("HF_TOKEN") or None,
            hf_offline=env.get("HF_HUB_OFFLINE", "") not in ("", "0", "false"),
            engine=EngineConfig.from_env(env, home_path),
        )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


def prepare_process_env() -> None:
    """Defaults for third-party libraries, set once before they are imported."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", _default_cpu_workers())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # transformers / gptqmodel print progress bars and banners that are noise in a chat.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# Read by third-party libraries when they are imported: their warnings, log lines and progress bars, off.
THIRD_PARTY_QUIET_ENV = {
    "TORCH_LOGS": "-all",  # torch's own loggers at ERROR (pytree and cpp_extension warnings at import)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar goes through huggingface_hub's switch
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def quiet_third_party_env() -> None:
    """Quiet defaults for the libraries a GPTQ/AWQ load imports (a value the user set wins)."""
    for key, value in THIRD_PARTY_QUIET_ENV.items():
        os.environ.setdefault(key, value)


def get_settings() -> Settings:
    return Settings.from_env()
