"""How the web service refuses a request: one JSON shape, a 4xx naming what was wrong, never a 500.

Every error answers ``{"error": code, "detail": message}``. :class:`ApiError` is what the handlers
raise; :func:`register_error_handlers` maps it, FastAPI's own errors (validation, 404, 405) and
clients that left mid-request onto that shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

log = logging.getLogger("emovox.serve")


class ApiError(Exception):
    """A request the service refuses: HTTP ``status``, a short machine-readable ``code`` and a sentence."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail}


class ClientGone(Exception):
    """The client closed the connection before its request was read: nobody to answer."""


def close_reason(text: str) -> str:
    """A WebSocket close reason: at most 123 bytes of UTF-8."""
    data = text.encode("utf-8")
    if len(data) <= 123:
        return text
    return data[:120].decode("utf-8", "ignore") + "..."


def error_response(status: int, code: str, detail: str, *, close: bool = False) -> JSONResponse:
    """The JSON error response; ``close`` also closes the connection."""
    # closing the connection is what lets the server stop reading an upload it has refused
    headers = {"Connection": "close"} if close else None
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def register_error_handlers(app: FastAPI) -> None:
    """Answer every refusal, framework error and unexpected failure of ``app`` as a JSON error."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        # a refused upload may still be streaming in: close the connection instead of reading it
        return error_response(exc.status, exc.code, exc.detail, close=exc.status in (400, 413, 415))

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: Exception) -> Response:
        # nobody is left to read an answer: one short line, no traceback
        client = f"{request.client.host}:{request.client.port}" if request.client else "client"
        log.info("%s disconnected during %s %s", client, request.method, request.url.path)
        return Response(status_code=400, headers={"Connection": "close"})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), detail)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while serving %s %s", request.method, request.url.path)
        return error_response(
            500, "internal_error", f"the server failed on this request ({type(exc).__name__})"
        )
