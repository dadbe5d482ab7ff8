"""The emovox web service: a FastAPI app with a web page, a JSON API and live WebSocket streaming.

``create_app()`` builds the app around one :class:`~emovox.predict.Recognizer` loaded at start-up.
Endpoints (all errors are JSON ``{"error": code, "detail": message}`` with a 4xx status naming what
was wrong; user input never causes a 500):

* ``GET /`` - the web page (upload, record, live microphone); everything is served by the app, no CDN.
* ``POST /api/v1/predict`` - multipart field ``file``; ``?timeline=true`` adds VAD segments.
* ``POST /api/v1/predict/batch`` - multipart fields ``files``; one result or error per file.
* ``GET /api/v1/model`` - labels, training data, scores and the model card.
* ``GET /healthz`` - liveness and the loaded model.
* ``WS /api/v1/stream`` - 16 kHz mono PCM in, one JSON result every ``hop`` seconds out.
* ``GET /docs`` (offline API reference) and ``GET /openapi.json``.

Uploads are parsed by a streaming multipart parser (python-multipart) while the body arrives, so
an upload over the size limit is refused as soon as the limit is crossed, never buffered whole.
Decoding and inference run in worker threads behind a capacity limiter, so the event loop keeps
answering and N simultaneous requests never oversubscribe the CPU cores.

No single client can take the server down: decoding is bounded by what the file's header says it
holds (:func:`emovox.audio.load_audio`: 413 for too long or too large), the stream is analysed at
most in real time with bounded windows, frames and connections, stalled connections time out
(request headers, body, idle WebSocket), and a client that leaves mid-upload is one log line.
Browsers may only use the service from its own origin (or those in ``cors_origins``): cross-origin
POSTs get 403 and cross-origin WebSockets are closed with 1008. The page and its files carry a
strict Content-Security-Policy, and the page renders every server-provided string as text.

The service is built from one module per concern; this module assembles the app, runs it under
uvicorn and re-exports the public names of the parts:

* :mod:`emovox.serve_settings` - :class:`ServeSettings`, the limits and options.
* :mod:`emovox.serve_errors` - :class:`ApiError` and the JSON error handlers.
* :mod:`emovox.serve_security` - origin checks (:class:`OriginGuard`) and security headers.
* :mod:`emovox.serve_uploads` - streaming multipart uploads and bounded decoding.
* :mod:`emovox.serve_model` - the served recognizer, its worker threads and JSON results.
* :mod:`emovox.serve_api` - the REST routes; :mod:`emovox.serve_stream` - the WebSocket stream.
* :mod:`emovox.serve_page` - the web page, its static files and the offline API reference.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from emovox.serve_api import predict_upload, predict_uploads, register_api_routes
from emovox.serve_errors import ApiError, ClientGone, register_error_handlers
from emovox.serve_model import RecognizerLike, Service, model_info, prediction_dict, segment_dict
from emovox.serve_page import STATIC_DIR, STATIC_FILES, register_page_routes, render_docs
from emovox.serve_security import (
    CONTENT_SECURITY_POLICY,
    SECURITY_HEADERS,
    OriginGuard,
    SecurityHeaders,
    add_security_middleware,
    normalise_origin,
    origin_allowed,
)
from emovox.serve_settings import API, ServeSettings
from emovox.serve_stream import (
    StreamConfig,
    StreamConnection,
    analyse_window,
    json_too_deep,
    register_stream_route,
)
from emovox.serve_uploads import Upload, decode_upload, read_uploads

__all__ = [
    "API",
    "CONTENT_SECURITY_POLICY",
    "SECURITY_HEADERS",
    "STATIC_DIR",
    "STATIC_FILES",
    "ApiError",
    "ClientGone",
    "OriginGuard",
    "RecognizerLike",
    "SecurityHeaders",
    "ServeSettings",
    "StreamConfig",
    "StreamConnection",
    "Upload",
    "analyse_window",
    "create_app",
    "decode_upload",
    "header_timeout_protocol",
    "json_too_deep",
    "model_info",
    "normalise_origin",
    "origin_allowed",
    "predict_upload",
    "predict_uploads",
    "prediction_dict",
    "read_uploads",
    "render_docs",
    "run_server",
    "segment_dict",
    "uvicorn_config",
]

log = logging.getLogger("emovox.serve")


def create_app(
    recognizer: RecognizerLike | None = None,
    *,
    model: str = "default",
    settings: ServeSettings | None = None,
) -> FastAPI:
    """Build the service around ``recognizer``, or load ``model`` ("default" or a bundle path) at start-up."""
    from emovox._version import __version__

    settings = settings or ServeSettings()
    name = model if recognizer is None else getattr(recognizer, "name", model)
    service = Service(recognizer, name, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.load()
        log.info("emovox model %s loaded (%d labels)", service.model, len(service.get().labels))
        yield

    app = FastAPI(
        title="emovox",
        version=__version__,
        description="Speech emotion recognition service.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    add_security_middleware(app, settings.cors_origins)
    register_error_handlers(app)
    # the order of registration is the order of the API reference
    register_page_routes(app)
    register_api_routes(app, service)
    register_stream_route(app, service)
    return app


def header_timeout_protocol(timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing connections whose request headers take over ``timeout`` s.

    uvicorn times out idle keep-alive connections but not a connection that opens and then sends
    nothing, or sends its headers a byte at a time, so 1,000 such clients could hold 1,000
    sockets indefinitely. The timer starts when the connection opens and again after each
    response; a request whose headers arrived in time (or a WebSocket it became) is left alone.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _emovox_timer: asyncio.TimerHandle | None = None
        _emovox_cycle: Any = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._emovox_arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._emovox_arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._emovox_timer is not None:
                self._emovox_timer.cancel()
            super().connection_lost(exc)

        def _emovox_arm(self) -> None:
            if self._emovox_timer is not None:
                self._emovox_timer.cancel()
            self._emovox_cycle = self.cycle
            self._emovox_timer = asyncio.get_running_loop().call_later(timeout, self._emovox_expire)

        def _emovox_expire(self) -> None:
            self._emovox_timer = None
            transport = self.transport
            if transport is None or transport.is_closing() or transport.get_protocol() is not self:
                return  # closed already, or upgraded to a WebSocket
            cycle = self.cycle
            if cycle is not self._emovox_cycle or (cycle is not None and not cycle.response_complete):
                return  # a request's headers arrived in time; body and handler have their own limits
            log.debug("closing a connection whose request headers did not arrive within %g s", timeout)
            transport.close()

    return HeaderTimeoutProtocol


def uvicorn_config(app: Any, settings: ServeSettings, **options: Any) -> Any:
    """The uvicorn.Config that enforces ``settings`` at the connection level (``options`` go to it)."""
    import uvicorn

    # uvicorn's websockets implementation stops reading a connection until the app has taken its
    # last message, so per-connection buffering is one message of at most ws_max_size; the app
    # answers frames between its own limit and this one with a close reason of its own
    ws_max = max(settings.stream_max_frame_bytes, settings.stream_max_text_bytes) + 64 * 1024
    return uvicorn.Config(
        app,
        http=header_timeout_protocol(settings.header_timeout_s),
        ws_max_size=ws_max,
        ws_per_message_deflate=False,  # PCM does not compress, and inflating is a bomb vector
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
        **options,
    )


def run_server(
    recognizer: RecognizerLike,
    *,
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``recognizer`` with uvicorn until interrupted (what ``emovox serve`` calls)."""
    import uvicorn

    settings = settings or ServeSettings()
    _limit_torch_threads(settings.workers)
    app = create_app(recognizer, model=model, settings=settings)
    uvicorn.Server(uvicorn_config(app, settings, host=host, port=port, log_level=log_level)).run()


def _limit_torch_threads(workers: int) -> None:
    """Give each inference worker its share of the cores, so concurrent requests don't oversubscribe them."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, onnxruntime backends still benefit
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
