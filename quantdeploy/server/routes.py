"""Endpoints: the OpenAI-compatible routes (behind the API key) and the /health and /metrics probes.

The app mounts the OpenAI routes under /v1, and again without it (as llama.cpp's server does) for clients whose
base URL was given without /v1."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from .auth import require_api_key
from .metrics import CONTENT_TYPE
from .respond import respond
from .schemas import parse_chat, parse_completion
from .state import ServerState

v1 = APIRouter(dependencies=[Depends(require_api_key)])
probes = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.qd


@v1.get("/models")
async def list_models(request: Request) -> dict:
    state = _state(request)
    state.require_ready()
    return {"object": "list", "data": [{**state.info, "id": i} for i in state.settings.served_ids()]}


@v1.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    state = _state(request)
    state.require_ready()
    return {**state.info, "id": state.answer_id(model_id)}


@v1.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    arrived = time.perf_counter()
    state = _state(request)
    state.require_ready()
    return await respond(request, state, parse_chat(await request.body()), arrived)


@v1.post("/completions")
async def completions(request: Request) -> Response:
    arrived = time.perf_counter()
    state = _state(request)
    state.require_ready()
    return await respond(request, state, parse_completion(await request.body()), arrived)


@probes.get("/health")
async def health(request: Request) -> JSONResponse:
    state = _state(request)
    if state.status == "ready":
        return JSONResponse({"status": "ok", "model": state.info["id"]})
    body = {"status": state.status}
    if state.load_error:
        body["error"] = state.load_error
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"} if state.status == "loading" else None)


@probes.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)
