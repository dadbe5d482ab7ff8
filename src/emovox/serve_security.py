"""What keeps other web sites and hostile pages from using the service through a visitor's browser.

Browsers may only use the service from its own origin (or those in ``cors_origins``): cross-origin
POSTs get 403 and cross-origin WebSockets are closed with 1008 (:class:`OriginGuard`). Every HTTP
response carries a strict Content-Security-Policy and its companions (:class:`SecurityHeaders`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emovox.serve_errors import close_reason, error_response

log = logging.getLogger("emovox.serve")

# Sent with every HTTP response. The page loads only its own script, styles, worklet and example
# clip, talks only to its own origin (fetch + WebSocket), has no inline script or style attribute,
# and may not be framed; so even a string that slipped into the DOM as HTML could not run script.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; worker-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def normalise_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case, or None when ``origin`` is not an http(s) origin."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def origin_allowed(headers: Headers, allowed: Sequence[str]) -> bool:
    """Whether a browser request may act on this server: same origin, an allowed one, or no browser.

    Browsers send ``Origin`` with every POST and WebSocket handshake; a request without one (curl,
    scripts) is not a cross-site request. The page's own origin is the one whose host:port is the
    request's ``Host``. ``Origin: null`` (sandboxed frames, file:// pages) is cross-origin.
    """
    origin = headers.get("origin")
    if origin is None:
        return headers.get("sec-fetch-site", "") != "cross-site"
    if "*" in allowed:
        return True
    normal = normalise_origin(origin)
    if normal is None:
        return origin in allowed
    if normal in {normalise_origin(a) for a in allowed}:
        return True
    host = headers.get("host")
    return host is not None and urlsplit(normal).netloc == host.strip().lower()


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` (the Content-Security-Policy among them) to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class OriginGuard:
    """Refuses what another web site could make a visitor's browser do to this server.

    A cross-origin POST (or any method but GET/HEAD/OPTIONS) gets 403 before its body is read; a
    cross-origin WebSocket handshake is closed with 1008 before it is accepted. Same-origin
    requests, requests without ``Origin`` (not from a browser) and origins in ``allowed`` pass.
    """

    def __init__(self, app: ASGIApp, allowed: Sequence[str] = ()) -> None:
        self.app, self.allowed = app, tuple(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" or (kind == "http" and scope["method"] not in _SAFE_METHODS):
            headers = Headers(scope=scope)
            if not origin_allowed(headers, self.allowed):
                origin = headers.get("origin", "another site")
                what = "WebSocket" if kind == "websocket" else scope["method"]
                detail = (
                    f"{what} {scope['path']} from origin {origin} refused: cross-origin requests "
                    "are not allowed (start the server with --cors-origin ORIGIN to allow one)"
                )
                log.info("refused cross-origin %s %s from %s", what, scope["path"], origin)
                if kind == "websocket":
                    await receive()  # websocket.connect
                    await send({"type": "websocket.close", "code": 1008, "reason": close_reason(detail)})
                    return
                response = error_response(403, "cross_origin", detail, close=True)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def add_security_middleware(app: FastAPI, cors_origins: Sequence[str]) -> None:
    """CORS for ``cors_origins`` (when any), inside :class:`OriginGuard`, inside :class:`SecurityHeaders`."""
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(OriginGuard, allowed=cors_origins)  # type: ignore[arg-type]
    app.add_middleware(SecurityHeaders)  # type: ignore[arg-type]
