"""Errors leave the server as OpenAI-shaped JSON: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import QuantDeployError

log = logging.getLogger("quantdeploy.server")


class APIError(Exception):
    """An error answer: HTTP status plus the OpenAI error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_quantdeploy(e: QuantDeployError, param: str | None = None) -> APIError:
    """A library error raised while preparing a request is the caller's input problem: 400 (naming the field when
    the error knows it: RequestError)."""
    return APIError(400, str(e), param=getattr(e, "param", None) or param)


def internal(e: BaseException, *, log_it: bool = True) -> APIError:
    if log_it:
        log.error("internal error: %s: %s", type(e).__name__, e, exc_info=e)
    return APIError(500, f"internal error ({type(e).__name__}); see the server log", type="server_error",
                    code="internal_error")


_HTTP_CODES = {404: ("not_found", "invalid_request_error"), 405: ("method_not_allowed", "invalid_request_error")}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, typ = _HTTP_CODES.get(exc.status_code, (None, "invalid_request_error"))
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/chat/completions, " \
                      "POST /v1/completions"
        return JSONResponse(error_body(message, type=typ, code=code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal(exc, log_it=False).response()  # Starlette re-raises it to uvicorn, which logs it
