"""create_app(settings): a fresh FastAPI app per call; all state hangs off app.state.qd."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from ..backends.base import LoadedModel
from .config import ServerSettings
from .errors import install_handlers
from .metrics import Metrics
from .middleware import BodyLimit, CountResponses
from .routes import probes, v1
from .state import Loader, ServerState


def create_app(settings: ServerSettings, *, model: LoadedModel | None = None, loader: Loader | None = None,
               on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """Serve `model` (already loaded; the caller closes it) or load one with `loader` (default: the registry, from
    settings.spec sized for settings.max_concurrency) in the background; /health is 503 until then. Every request
    shares the one model."""
    settings.validate()
    if model is None and loader is None:
        spec = settings.spec_to_load()
        if spec is None:
            raise ValueError("create_app needs settings.spec, a model or a loader")
        from ..models import load_model

        loader = lambda: load_model(spec)  # noqa: E731
    state = ServerState(settings, Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if model is not None:
            state.set_model(model, owned=False)
        else:
            state.start_loading(loader, on_load_error)
        yield
        await state.shutdown()

    app = FastAPI(title="quantdeploy", summary="OpenAI-compatible server for GPTQ, AWQ and GGUF models",
                  lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.qd = state
    install_handlers(app)
    app.include_router(v1, prefix="/v1")
    app.include_router(v1)  # the same routes without /v1, for base URLs given without it
    app.include_router(probes)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(CountResponses, metrics=state.metrics)
    if settings.cors_origins:  # outermost, so that error answers (401, 413, ...) carry the CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"],  # the browser openai SDK adds its own x-stainless-* headers
                           expose_headers=["Retry-After"], max_age=600)
    return app
