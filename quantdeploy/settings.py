"""One settings object. Nothing else in quantdeploy reads os.environ for its own variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _default_cpu_workers() -> str:
    # gptqmodel spawns CPU workers per core; on 2-core machines its default oversubscribes and stalls.
    # its model loader asks for a pool of 2 workers: fewer fails ("requests 2 workers but parent only has 1").
    return str(max(2, min(8, os.cpu_count() or 2)))


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path.home() / ".cache" / "quantdeploy")
    debug: bool = False
    api_key: str | None = None
    hf_endpoint: str | None = None
    hf_token: str | None = None
    hf_offline: bool = False
    kernel: str | None = None
    disabled_kernels: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        home = env.get("QUANTDEPLOY_HOME")
        return cls(
            home=Path(home).expanduser() if home else Path.home() / ".cache" / "quantdeploy",
            debug=env.get("QUANTDEPLOY_DEBUG", "") not in ("", "0", "false"),
            api_key=env.get("QUANTDEPLOY_API_KEY") or None,
            hf_endpoint=env.get("HF_ENDPOINT") or None,
            hf_token=env.get("HF_TOKEN") or None,
            hf_offline=env.get("HF_HUB_OFFLINE", "") not in ("", "0", "false"),
            kernel=env.get("QUANTDEPLOY_KERNEL") or None,
            disabled_kernels=tuple(
                k.strip() for k in env.get("QUANTDEPLOY_DISABLED_KERNELS", "").split(",") if k.strip()
            ),
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
