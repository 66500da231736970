"""What a server instance is configured with. Built by the CLI (or a test) and handed to create_app()."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..backends.base import BATCH_CAP, ModelSpec
from ..errors import UsageError

DEFAULT_MAX_QUEUE = 32
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
ANY_MODEL = "*"  # the alias that makes the server answer to any model id


@dataclass(frozen=True)
class ServerSettings:
    """One served model. `spec` is what to load (None when the caller passes a loaded model to create_app)."""

    model_name: str
    spec: ModelSpec | None = None
    api_key: str | None = None  # every /v1 request needs `Authorization: Bearer KEY` when set
    # generations at once, all on the one model, which decodes them together; None: as many as the model batches
    max_concurrency: int | None = None
    max_queue: int = DEFAULT_MAX_QUEUE  # requests waiting for a slot; beyond: 429 + Retry-After
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    template: str | None = None  # chat template override (built-in name or Jinja file)
    aliases: tuple[str, ...] = ()  # more ids clients may send as `model`; "*" accepts any id
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API ("*": any); none by default

    @property
    def accepts_any_model(self) -> bool:
        return ANY_MODEL in self.aliases

    def served_ids(self) -> list[str]:
        """The ids /v1/models lists: the name, then each alias (the wildcard is not an id)."""
        return list(dict.fromkeys([self.model_name, *(a for a in self.aliases if a != ANY_MODEL)]))

    def answer_id(self, requested: str | None) -> str | None:
        """The id a response reports for a request's `model`: the one asked for when served under it, the served
        name for none (or any id, with the wildcard alias); None when this server does not serve that id."""
        if requested is None:
            return self.model_name
        if requested in self.served_ids():
            return requested
        return self.model_name if self.accepts_any_model else None

    def validate(self) -> "ServerSettings":
        if not self.model_name or not self.model_name.strip():
            raise UsageError("the served model name must not be empty (--name)")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise UsageError(f"--max-concurrency must be at least 1, got {self.max_concurrency}")
        if self.max_queue < 0:
            raise UsageError(f"--max-queue must be 0 or more, got {self.max_queue}")
        if self.max_body_bytes < 1024:
            raise UsageError(f"the request body limit must be at least 1024 bytes, got {self.max_body_bytes}")
        for a in self.aliases:
            if not a or not a.strip() or a != a.strip():
                raise UsageError(f"--alias {a!r}: an alias must be a non-empty id without surrounding spaces")
        for o in self.cors_origins:
            if o != "*" and not (o.startswith(("http://", "https://")) and "/" not in o.split("://", 1)[1]):
                raise UsageError(f"--cors-origin {o!r}: give an origin such as http://localhost:3000 (scheme, host "
                                 "and port, no path) or '*' for any")
        if self.api_key is not None and not self.api_key.strip():
            raise UsageError("the API key must not be empty (--api-key or QUANTDEPLOY_API_KEY)")
        return self

    @property
    def sequences(self) -> int:
        """Generations served at once at most: --max-concurrency, or what the model batches (at most BATCH_CAP)."""
        return self.max_concurrency or BATCH_CAP

    def spec_to_load(self) -> ModelSpec | None:
        """settings.spec, sized for the sequences the server will decode together."""
        if self.spec is None:
            return None
        return replace(self.spec, max_seqs=self.sequences)
