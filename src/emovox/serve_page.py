"""The web page, its static files and the offline API reference, all served by the app (no CDN).

The page (upload, record, live microphone) and its files carry the strict Content-Security-Policy
of :mod:`emovox.serve_security`, and the page renders every server-provided string as text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC_DIR = Path(str(resources.files("emovox") / "static"))
STATIC_FILES = {"index.html", "app.js", "style.css", "pcm-worklet.js", "docs.css", "example.flac"}

_CODE_SPAN = re.compile(r"`([^`]+)`")


def _prose(text: str) -> str:
    """Escaped text with Markdown code spans (`x`) rendered as <code>x</code>."""
    return _CODE_SPAN.sub(r"<code>\1</code>", html.escape(text or ""))


def render_docs(schema: Mapping[str, Any]) -> str:
    """A self-contained HTML reference of the OpenAPI schema (Swagger UI would need a CDN).

    Descriptions are written in Markdown's inline-code style; backticks become <code>, the rest
    is escaped text.
    """
    rows = []
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            params = "".join(
                f"<li><code>{html.escape(p['name'])}</code> ({html.escape(p.get('in', ''))}) "
                f"{_prose(p.get('description', '') or p.get('schema', {}).get('type', ''))}</li>"
                for p in op.get("parameters", [])
            )
            body = op.get("requestBody", {}).get("content", {})
            body_html = "".join(f"<li>body: <code>{html.escape(ct)}</code></li>" for ct in body)
            responses = ", ".join(
                f"<code>{html.escape(code)}</code> {_prose(r.get('description', ''))}"
                for code, r in op.get("responses", {}).items()
            )
            rows.append(
                f"<section><h2><span class='m {html.escape(method)}'>{html.escape(method.upper())}</span> "
                f"<code>{html.escape(path)}</code></h2><p>{_prose(op.get('summary', ''))}</p>"
                f"<p>{_prose(op.get('description', ''))}</p>"
                f"<ul>{params}{body_html}</ul><p class='r'>Responses: {responses}</p></section>"
            )
    ws = (
        "<section><h2><span class='m ws'>WS</span> <code>/api/v1/stream</code></h2>"
        '<p>Send an optional JSON config <code>{"sample_rate":16000,"format":"s16le"|"f32le",'
        '"window":2.0,"hop":0.5,"normalize":"session"}</code>, then binary frames of mono PCM. Every '
        '<code>hop</code> seconds the server answers <code>{"t", "speech", "emotion", "confidence", '
        '"probabilities"}</code> for the last <code>window</code> seconds (no emotion when '
        "<code>speech</code> is false). With <code>normalize: session</code> (a speaker-normalised model: "
        "<code>speaker_normalized</code> in <code>/api/v1/model</code>) the stream is one voice: each "
        "window is standardised with a running estimate over the session's speech so far (non-overlapping "
        "windows join it), and "
        '<code>"normalized"</code> says whether that head answered (the first window gets the plain '
        "model). Audio is "
        "analysed at most in real time: windows of audio sent faster than that are skipped, and the next "
        'result says how many in <code>"dropped"</code>; audio more than a minute ahead of real time is '
        "read only as real time catches up. Bad frames get "
        '<code>{"error", "detail"}</code>; '
        "an invalid or too deeply nested config closes with 1007, an oversized frame or message with "
        "1009, a cross-origin page with 1008, a stream idle too long with 1008, a full server with 1013 "
        "(the close reason says why).</p></section>"
    )
    title = html.escape(schema.get("info", {}).get("title", "API"))
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title} reference</title>"
        "<link rel='stylesheet' href='/static/docs.css'></head><body><main>"
        f"<h1>{title} <small>{html.escape(schema.get('info', {}).get('version', ''))}</small></h1>"
        '<p>Errors are JSON <code>{"error": code, "detail": message}</code>. Machine-readable schema: '
        "<a href='/openapi.json'>/openapi.json</a>.</p>"
        f"{''.join(rows)}{ws}</main></body></html>"
    )


def register_page_routes(app: FastAPI) -> None:
    """``GET /`` (the page), ``GET /static/{name}`` (its files) and ``GET /docs`` on ``app``."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise StarletteHTTPException(404, "no such file")
        return FileResponse(STATIC_DIR / name)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(render_docs(app.openapi()))
