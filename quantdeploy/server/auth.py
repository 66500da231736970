"""API key check for /v1: `Authorization: Bearer KEY`, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import APIError


def check_api_key(expected: str | None, authorization: str | None) -> None:
    if expected is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())
    if not ok:
        what = "no API key was sent" if not authorization else "the API key is not valid"
        raise APIError(401, f"{what}: send the header 'Authorization: Bearer <key>' with the key the server was "
                            "started with", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(request: Request) -> None:
    check_api_key(request.app.state.qd.settings.api_key, request.headers.get("authorization"))
