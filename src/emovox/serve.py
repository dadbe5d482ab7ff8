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
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import anyio
import numpy as np
import soundfile as sf
import soxr
from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState

from emovox.audio import SAMPLE_RATE, AudioTooLarge, AudioTooLong, load_audio
from emovox.errors import AudioError, ConfigError, EmovoxError
from emovox.jsonutil import jsonable

log = logging.getLogger("emovox.serve")

API = "/api/v1"
STATIC_DIR = Path(str(resources.files("emovox") / "static"))
STATIC_FILES = {"index.html", "app.js", "style.css", "pcm-worklet.js", "docs.css", "example.flac"}
_MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries allowed on top of the file size limit

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
_MAX_JSON_DEPTH = 4  # a stream config is one flat object

T = TypeVar("T")


class RecognizerLike(Protocol):
    """What the service needs from :class:`emovox.predict.Recognizer` (tests inject fakes)."""

    labels: Sequence[str]

    def predict(self, x: Any, sr: int | None = None) -> Any: ...

    def timeline(self, x: Any, sr: int | None = None) -> list[Any]: ...

    def is_speech(self, wave: np.ndarray) -> bool: ...


@dataclass(frozen=True)
class ServeSettings:
    """Limits and options of the service; every limit is checked before work is spent on the input."""

    max_upload_mb: float = 20.0  # per uploaded file
    max_duration_s: float = 600.0  # per decoded clip
    max_batch_files: int = 16
    max_batch_mb: float = 100.0  # whole batch request body
    workers: int = field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)))  # inference threads
    # browser origins (scheme://host[:port]) allowed besides the page's own, for CORS, form posts
    # and WebSockets; "*" allows any
    cors_origins: tuple[str, ...] = ()
    # connections
    max_connections: int = 256  # open HTTP + WebSocket connections; more are answered 503
    header_timeout_s: float = 10.0  # a request's headers must arrive within this
    body_timeout_s: float = 30.0  # longest pause while an upload's body streams in (408)
    # the WebSocket stream
    stream_max_connections: int = 8  # live streams at once (each may use ~0.2 core); more: 1013
    stream_max_frame_bytes: int = 256 * 1024  # one binary frame (8 s of 16 kHz s16le)
    stream_max_text_bytes: int = 4096  # one text (config) message
    stream_max_window_s: float = 10.0
    stream_min_hop_s: float = 0.1
    stream_max_overlap: float = 20.0  # window / hop: how often each second of audio is analysed
    stream_burst_s: float = 5.0  # audio analysed ahead of real time before windows are dropped
    stream_max_ahead_s: float = 60.0  # audio read ahead of real time before reading pauses
    stream_idle_timeout_s: float = 30.0  # a stream that sends nothing for this long is closed

    def __post_init__(self) -> None:
        positive = {
            "max_upload_mb": self.max_upload_mb,
            "max_duration_s": self.max_duration_s,
            "max_batch_files": self.max_batch_files,
            "max_batch_mb": self.max_batch_mb,
            "workers": self.workers,
            "max_connections": self.max_connections,
            "header_timeout_s": self.header_timeout_s,
            "body_timeout_s": self.body_timeout_s,
            "stream_max_connections": self.stream_max_connections,
            "stream_max_frame_bytes": self.stream_max_frame_bytes,
            "stream_max_text_bytes": self.stream_max_text_bytes,
            "stream_max_window_s": self.stream_max_window_s,
            "stream_min_hop_s": self.stream_min_hop_s,
            "stream_max_overlap": self.stream_max_overlap,
            "stream_burst_s": self.stream_burst_s,
            "stream_max_ahead_s": self.stream_max_ahead_s,
            "stream_idle_timeout_s": self.stream_idle_timeout_s,
        }
        for name, value in positive.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(f"serve setting {name}={value!r}: must be a positive number")
        if self.stream_min_hop_s > self.stream_max_window_s:
            raise ConfigError(
                f"serve setting stream_min_hop_s={self.stream_min_hop_s!r}: must not exceed "
                f"stream_max_window_s={self.stream_max_window_s!r}"
            )
        for origin in self.cors_origins:
            if origin != "*" and normalise_origin(origin) is None:
                raise ConfigError(
                    f"serve setting cors_origins: {origin!r} is not an origin like http://host:port"
                )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_batch_bytes(self) -> int:
        return int(self.max_batch_mb * 1024 * 1024)


class ApiError(Exception):
    """A request the service refuses: HTTP ``status``, a short machine-readable ``code`` and a sentence."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail}


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


def _close_reason(text: str) -> str:
    """A WebSocket close reason: at most 123 bytes of UTF-8."""
    data = text.encode("utf-8")
    if len(data) <= 123:
        return text
    return data[:120].decode("utf-8", "ignore") + "..."


def _error_response(status: int, code: str, detail: str, *, close: bool = False) -> JSONResponse:
    # closing the connection is what lets the server stop reading an upload it has refused
    headers = {"Connection": "close"} if close else None
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


# --------------------------------------------------------------------------- streaming multipart upload


@dataclass
class Upload:
    """One file part of a multipart request: its bytes, or the reason it was refused."""

    filename: str
    data: bytearray = field(default_factory=bytearray)
    error: ApiError | None = None


class _UploadReader:
    """Feeds python-multipart with the body as it arrives, keeping only the parts named ``field``.

    A part larger than ``file_limit`` raises a 413 at once (``strict``) or, in a batch, is marked
    as refused and its remaining bytes are discarded, so one bad file never fails the others.
    """

    def __init__(
        self, boundary: bytes, field_name: str, file_limit: int, max_files: int, strict: bool
    ) -> None:
        self.field_name, self.file_limit, self.max_files, self.strict = (
            field_name,
            file_limit,
            max_files,
            strict,
        )
        self.uploads: list[Upload] = []
        self.finished = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._current: Upload | None = None
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field_data,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def write(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def _part_begin(self) -> None:
        self._headers = {}
        self._current = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name", b"").decode("utf-8", "replace") != self.field_name:
            return  # other form fields are read past and ignored
        if len(self.uploads) >= self.max_files:
            raise ApiError(
                413,
                "too_many_files",
                f"more than {self.max_files} files in one request; send fewer at a time",
            )
        filename = (
            options.get(b"filename", b"").decode("utf-8", "replace") or f"upload-{len(self.uploads) + 1}"
        )
        self._current = Upload(filename=Path(filename.replace("\\", "/")).name or filename)
        self.uploads.append(self._current)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self._current
        if upload is None or upload.error is not None:
            return
        if len(upload.data) + (end - start) > self.file_limit:
            error = ApiError(
                413,
                "file_too_large",
                f"{upload.filename}: upload is over the size limit of {self.file_limit / 2**20:g} MB",
            )
            if self.strict:
                raise error
            upload.error, upload.data = error, bytearray()
            return
        upload.data += data[start:end]

    def _part_end(self) -> None:
        self._current = None

    def _end(self) -> None:
        self.finished = True


class ClientGone(Exception):
    """The client closed the connection before its request was read: nobody to answer."""


async def _chunks(request: Request, idle_timeout: float) -> AsyncIterator[bytes]:
    """The request body as it arrives; 408 when no byte comes for ``idle_timeout`` seconds."""
    stream = request.stream().__aiter__()
    while True:
        try:
            with anyio.fail_after(idle_timeout):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(
                408, "request_timeout", f"the request body stalled: no data for {idle_timeout:g} s"
            ) from None
        except ClientDisconnect:
            raise ClientGone() from None
        yield chunk


async def read_uploads(
    request: Request,
    field_name: str,
    *,
    file_limit: int,
    body_limit: int,
    shown_limit_mb: float,
    max_files: int,
    strict: bool,
    idle_timeout: float = 30.0,
) -> list[Upload]:
    """Parse the multipart body of ``request`` while it streams in, refusing it as soon as it is too big.

    ``body_limit`` bounds the whole body (files plus multipart framing); ``shown_limit_mb`` is the
    limit users know (e.g. the per-file size) and is what error messages quote. A body that
    stalls for ``idle_timeout`` seconds is refused with 408; a client that disconnects raises
    :class:`ClientGone`.
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        shown = content_type.decode("latin-1") or "none"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"request content type is {shown}; send the audio as multipart/form-data field '{field_name}'",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "malformed_multipart", "multipart/form-data content type has no boundary")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise ApiError(
            413,
            "request_too_large",
            f"request body of {int(declared) / 2**20:.1f} MB is over the limit of {shown_limit_mb:g} MB",
        )
    try:
        reader = _UploadReader(boundary, field_name, file_limit, max_files, strict)
    except (MultipartParseError, ValueError) as exc:
        raise ApiError(400, "malformed_multipart", f"invalid multipart boundary ({exc})") from None
    received = 0
    try:
        async for chunk in _chunks(request, idle_timeout):
            received += len(chunk)
            if received > body_limit:
                raise ApiError(
                    413, "request_too_large", f"request body is over the limit of {shown_limit_mb:g} MB"
                )
            reader.write(chunk)
    except MultipartParseError as exc:
        raise ApiError(400, "malformed_multipart", f"could not parse the multipart body ({exc})") from None
    if not reader.finished:
        raise ApiError(400, "malformed_multipart", "multipart body ended before its closing boundary")
    if not reader.uploads:
        raise ApiError(
            422,
            "missing_file",
            f"no file in the request; send the audio as multipart/form-data field '{field_name}'",
        )
    return reader.uploads


# --------------------------------------------------------------------------- decoding and results


def decode_upload(upload: Upload, max_duration: float) -> np.ndarray:
    """Decode an uploaded file to 16 kHz mono float32, mapping each failure to the right 4xx."""
    if upload.error is not None:
        raise upload.error
    name = upload.filename
    if not upload.data:
        raise ApiError(400, "empty_file", f"{name}: file is empty (0 bytes)")
    data = bytes(upload.data)
    try:  # the header alone tells "not audio" (415) from audio the model cannot use (422)
        sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError):
        raise ApiError(
            415,
            "not_audio",
            f"{name}: not a readable audio file (wav, flac, ogg/vorbis, ogg/opus, mp3, aiff)",
        ) from None
    try:  # load_audio checks the header's rate, duration and size before decoding anything
        return load_audio(data, name=name, max_duration=max_duration)
    except AudioTooLong as exc:
        raise ApiError(413, "audio_too_long", str(exc)) from None
    except AudioTooLarge as exc:
        raise ApiError(413, "audio_too_large", str(exc)) from None
    except AudioError as exc:
        raise ApiError(422, "unusable_audio", str(exc)) from None


def _as_dict(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(vars(obj))


def prediction_dict(prediction: Any) -> dict[str, Any]:
    """The public fields of a Prediction: emotion, confidence, probabilities, duration."""
    return {
        "emotion": prediction.emotion,
        "confidence": float(prediction.confidence),
        "probabilities": {k: float(v) for k, v in prediction.probabilities.items()},
        "duration": float(prediction.duration),
    }


def segment_dict(segment: Any) -> dict[str, Any]:
    d = jsonable(_as_dict(segment))
    return {k: v for k, v in d.items() if k != "path"}


# --------------------------------------------------------------------------- app state


class _Service:
    """The loaded recognizer and the limiter shared by every request of one app."""

    def __init__(self, recognizer: RecognizerLike | None, model: str, settings: ServeSettings) -> None:
        self.recognizer = recognizer
        self.model = model
        self.settings = settings
        self._limiter: anyio.CapacityLimiter | None = None
        self._info: dict[str, Any] | None = None
        self.streams = 0  # open WebSocket streams (the event loop is single-threaded: no lock)

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # created inside the event loop on first use
            self._limiter = anyio.CapacityLimiter(self.settings.workers)
        return self._limiter

    def info(self) -> dict[str, Any]:
        """The model description of ``GET /api/v1/model``, built once."""
        if self._info is None:
            self._info = model_info(self.get(), self.model, self.settings)
        return self._info

    def get(self) -> RecognizerLike:
        if self.recognizer is None:
            raise ApiError(503, "model_not_loaded", "the model is still loading; retry in a moment")
        return self.recognizer

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (decoding, inference) in a worker thread, at most ``workers`` at a time."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def load(self) -> None:
        if self.recognizer is None:
            from emovox.predict import Recognizer

            self.recognizer = await anyio.to_thread.run_sync(Recognizer.load, self.model)


def model_info(recognizer: RecognizerLike, model: str, settings: ServeSettings) -> dict[str, Any]:
    """Labels, training data, scores and model card of the loaded model, plus the service's limits.

    Reads the bundle metadata of :class:`emovox.predict.Recognizer` (config.json + ``metrics``
    + ``path``) and the model card (README.md) from the bundle folder.
    """
    meta = getattr(recognizer, "meta", None) or {}
    card = ""
    if meta.get("path"):
        readme = Path(meta["path"]) / "README.md"
        card = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    return jsonable(
        {
            "model": model,
            "labels": list(recognizer.labels),
            "sample_rate": SAMPLE_RATE,
            "backend": getattr(recognizer, "backend", None),
            "emovox_version": meta.get("emovox_version"),
            "created": meta.get("created"),
            "architecture": meta.get("model"),
            "preprocessing": meta.get("preprocessing"),
            "training": meta.get("training") or {},
            "metrics": meta.get("metrics") or {},
            "card": card,
            "limits": {
                "max_upload_mb": settings.max_upload_mb,
                "max_duration_s": settings.max_duration_s,
                "max_batch_files": settings.max_batch_files,
            },
        }
    )


# --------------------------------------------------------------------------- WebSocket stream


@dataclass
class StreamConfig:
    """Client-chosen stream parameters (initial JSON message); validated against the settings."""

    sample_rate: int = SAMPLE_RATE
    format: str = "s16le"
    window: float = 2.0
    hop: float = 0.5

    @classmethod
    def parse(cls, raw: Any, settings: ServeSettings) -> StreamConfig:
        if not isinstance(raw, Mapping):
            raise ValueError("config must be a JSON object")
        unknown = set(raw) - {"sample_rate", "format", "window", "hop", "type"}
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        cfg = cls(
            sample_rate=raw.get("sample_rate", SAMPLE_RATE),
            format=raw.get("format", "s16le"),
            window=raw.get("window", 2.0),
            hop=raw.get("hop", 0.5),
        )
        if isinstance(cfg.sample_rate, bool) or not isinstance(cfg.sample_rate, int):
            raise ValueError(f"sample_rate must be an integer, got {cfg.sample_rate!r}")
        if not 8000 <= cfg.sample_rate <= 192_000:
            raise ValueError(f"sample_rate {cfg.sample_rate} is outside 8000..192000 Hz")
        if cfg.format not in ("s16le", "f32le"):
            raise ValueError(f"format {cfg.format!r} is not supported; use 's16le' or 'f32le'")
        for name in ("window", "hop"):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a number of seconds, got {value!r}")
        if not 0.25 <= cfg.window <= settings.stream_max_window_s:
            raise ValueError(f"window {cfg.window:g} s is outside 0.25..{settings.stream_max_window_s:g} s")
        if not settings.stream_min_hop_s <= cfg.hop <= cfg.window:
            raise ValueError(
                f"hop {cfg.hop:g} s must be between {settings.stream_min_hop_s:g} s and the window "
                f"({cfg.window:g} s)"
            )
        if cfg.window / cfg.hop > settings.stream_max_overlap:
            raise ValueError(
                f"window / hop = {cfg.window / cfg.hop:g} is over the limit of "
                f"{settings.stream_max_overlap:g} (each second of audio would be analysed that often); "
                "use a longer hop or a shorter window"
            )
        return cfg

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _RealTime:
    """Token bucket capping a stream's analyses at one per ``hop`` of wall-clock time.

    Starts full with ``burst_s`` seconds' worth of hops, so a client may send a few seconds ahead
    (a recorded clip, a network hiccup) and still have every window analysed; beyond that, audio
    sent faster than real time is dropped window by window instead of queueing work.
    """

    def __init__(self, hop_s: float, burst_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = 1.0 / hop_s
        self.capacity = max(1.0, burst_s / hop_s)
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` analyses; returns how many are allowed now."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        return granted


class _StreamSession:
    """Ring buffer of the last ``window`` seconds at 16 kHz; yields a window every ``hop`` seconds."""

    def __init__(self, cfg: StreamConfig, burst_s: float = 5.0) -> None:
        self.cfg = cfg
        self.rate_limit = _RealTime(cfg.hop, burst_s)
        self.window = int(round(cfg.window * SAMPLE_RATE))
        self.hop = int(round(cfg.hop * SAMPLE_RATE))
        self.ring = np.zeros(self.window, dtype=np.float32)
        self.filled = 0  # valid samples in the ring (< window only at the start)
        self.total = 0  # samples received since the start, at 16 kHz
        self.since_hop = 0
        self.dropped = 0  # windows skipped by the rate limit since the last one analysed
        self.resampler = (
            soxr.ResampleStream(cfg.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            if cfg.sample_rate != SAMPLE_RATE
            else None
        )

    def decode(self, frame: bytes) -> np.ndarray:
        """Raw frame -> float32 samples at 16 kHz; ValueError names what is wrong with it."""
        width = 2 if self.cfg.format == "s16le" else 4
        if len(frame) % width:
            raise ValueError(
                f"binary frame of {len(frame)} bytes is not a whole number of {self.cfg.format} samples "
                f"({width} bytes each)"
            )
        if width == 2:
            samples = np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768.0
        else:
            samples = np.frombuffer(frame, dtype="<f4").astype(np.float32)
            if not np.isfinite(samples).all():
                raise ValueError("f32le frame contains NaN or infinite samples")
            samples = np.clip(samples, -1.0, 1.0)
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        return samples

    def boundaries(self, n_samples: int) -> int:
        """How many hop boundaries appending ``n_samples`` (at 16 kHz) will cross."""
        return (self.since_hop + n_samples) // self.hop

    def push(self, samples: np.ndarray, analyse: int | None = None) -> Iterator[tuple[float, np.ndarray]]:
        """Append samples; yield ``(end time s, window)`` at the hop boundaries crossed.

        Only the last ``analyse`` boundaries (all when None) yield a window; the earlier ones are
        counted in ``dropped``, so the most recent audio is what gets analysed. Windows are copied
        one at a time as the caller iterates: memory is one window, however long ``samples`` is.
        """
        crossing = self.boundaries(samples.size)
        skip = 0 if analyse is None else max(0, crossing - analyse)
        pos = 0
        if skip:  # the audio up to the last dropped boundary goes into the ring in one step
            pos = skip * self.hop - self.since_hop
            self._append(samples[:pos])
            self.total += pos
            self.since_hop = 0
            self.dropped += skip
        while pos < samples.size:
            take = min(samples.size - pos, self.hop - self.since_hop)
            self._append(samples[pos : pos + take])
            pos += take
            self.since_hop += take
            self.total += take
            if self.since_hop == self.hop:
                self.since_hop = 0
                yield self.total / SAMPLE_RATE, self.ring[self.window - self.filled :].copy()

    def _append(self, chunk: np.ndarray) -> None:
        n = chunk.size
        if n == 0:
            return
        if n >= self.window:
            self.ring[:] = chunk[-self.window :]
        else:
            self.ring[:-n] = self.ring[n:]
            self.ring[-n:] = chunk
        self.filled = min(self.window, self.filled + n)


def analyse_window(recognizer: RecognizerLike, t: float, window: np.ndarray) -> dict[str, Any]:
    """One stream message: VAD, then the emotion of the window if it holds speech."""
    rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64)))) if window.size else 0.0
    message: dict[str, Any] = {"t": round(t, 3), "level": round(20 * math.log10(max(rms, 1e-6)), 1)}
    if float(np.abs(window).max(initial=0.0)) == 0.0 or not recognizer.is_speech(window):
        message["speech"] = False
        return message
    try:
        prediction = recognizer.predict(window, sr=SAMPLE_RATE)
    except AudioError:  # the speech left after the model's silence trimming is too short to classify
        message["speech"] = False
        return message
    message["speech"] = True
    message.update({k: v for k, v in prediction_dict(prediction).items() if k != "duration"})
    return message


def json_too_deep(text: str, limit: int = _MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``text`` nests arrays/objects deeper than ``limit`` (checked before parsing)."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


class _StreamClosed(Exception):
    """Close the stream with ``code`` after telling the client why (``error`` / ``detail``)."""

    def __init__(self, code: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.error, self.detail = code, error, detail


async def _stream(websocket: WebSocket, service: _Service) -> None:
    settings = service.settings
    recognizer = service.get()
    session = _StreamSession(StreamConfig(), settings.stream_burst_s)
    started, first_audio = False, 0.0

    async def send(message: dict[str, Any]) -> None:
        await websocket.send_text(json.dumps(message))

    while True:
        try:
            with anyio.fail_after(settings.stream_idle_timeout_s):
                message = await websocket.receive()
        except TimeoutError:
            raise _StreamClosed(
                1008, "idle_timeout", f"no data for {settings.stream_idle_timeout_s:g} s; stream closed"
            ) from None
        if message["type"] == "websocket.disconnect":
            return
        text, data = message.get("text"), message.get("bytes")
        if text is not None:
            if len(text) > settings.stream_max_text_bytes:
                raise _StreamClosed(
                    1009,
                    "message_too_large",
                    f"text message of {len(text)} characters is over the limit of "
                    f"{settings.stream_max_text_bytes}; the config is one small JSON object",
                )
            if json_too_deep(text):
                raise _StreamClosed(
                    1007,
                    "bad_message",
                    f"text message nests JSON deeper than {_MAX_JSON_DEPTH} levels; "
                    "the config is one flat JSON object",
                )
            try:
                raw = json.loads(text)
            except ValueError:
                await send({"error": "bad_message", "detail": "text messages must be a JSON config object"})
                continue
            if started:
                await send(
                    {"error": "bad_message", "detail": "config must be sent before the first audio frame"}
                )
                continue
            try:
                session = _StreamSession(StreamConfig.parse(raw, settings), settings.stream_burst_s)
            except ValueError as exc:
                raise _StreamClosed(1007, "bad_config", str(exc)) from None
            await send({"config": session.cfg.public(), "labels": list(recognizer.labels)})
            continue
        if data is None:
            continue
        if len(data) > settings.stream_max_frame_bytes:
            raise _StreamClosed(
                1009,
                "frame_too_large",
                f"binary frame of {len(data)} bytes is over the limit of "
                f"{settings.stream_max_frame_bytes} bytes; send smaller chunks",
            )
        try:
            samples = session.decode(data)
        except ValueError as exc:
            await send({"error": "bad_frame", "detail": str(exc)})
            continue
        if not started:
            started, first_audio = True, time.monotonic()
        # at most one analysis per hop of wall-clock time (plus a burst): audio sent faster than
        # real time has its older windows dropped, never queued
        allowed = session.rate_limit.take(session.boundaries(samples.size))
        for t, window in session.push(samples, analyse=allowed):
            try:
                result = await service.run(analyse_window, recognizer, t, window)
            except EmovoxError as exc:
                result = {"t": round(t, 3), "error": "inference_failed", "detail": str(exc)}
            if session.dropped:
                result["dropped"] = session.dropped  # windows skipped since the previous message
                session.dropped = 0
            await send(result)
        # and the audio itself is read at most stream_max_ahead_s ahead of real time: a client
        # flooding PCM waits (TCP backpressure) instead of keeping the decoder and resampler busy
        ahead = session.total / SAMPLE_RATE - (time.monotonic() - first_audio)
        if ahead > settings.stream_max_ahead_s:
            await anyio.sleep(ahead - settings.stream_max_ahead_s)


# --------------------------------------------------------------------------- offline API docs


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
        '"window":2.0,"hop":0.5}</code>, then binary frames of mono PCM. Every <code>hop</code> seconds '
        'the server answers <code>{"t", "speech", "emotion", "confidence", "probabilities"}</code> '
        "for the last <code>window</code> seconds (no emotion when <code>speech</code> is false). Audio is "
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


# --------------------------------------------------------------------------- the app

_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}
_BATCH_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}
_ERRORS = {
    code: {"description": text}
    for code, text in {
        400: "empty file or malformed multipart",
        413: "file, request or audio over the limit",
        415: "not audio / not multipart",
        422: "no file, or audio the model cannot use",
    }.items()
}


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
                    await send({"type": "websocket.close", "code": 1008, "reason": _close_reason(detail)})
                    return
                response = _error_response(403, "cross_origin", detail, close=True)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    recognizer: RecognizerLike | None = None,
    *,
    model: str = "default",
    settings: ServeSettings | None = None,
) -> FastAPI:
    """Build the service around ``recognizer``, or load ``model`` ("default" or a bundle path) at start-up."""
    from emovox._version import __version__

    settings = settings or ServeSettings()
    service = _Service(
        recognizer, model if recognizer is None else getattr(recognizer, "name", model), settings
    )

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
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(OriginGuard, allowed=settings.cors_origins)  # type: ignore[arg-type]
    app.add_middleware(SecurityHeaders)  # type: ignore[arg-type]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        # a refused upload may still be streaming in: close the connection instead of reading it
        return _error_response(exc.status, exc.code, exc.detail, close=exc.status in (400, 413, 415))

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
        return _error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = f"{request.method} {request.url.path}: {exc.detail}"
        return _error_response(exc.status_code, codes.get(exc.status_code, "http_error"), detail)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while serving %s %s", request.method, request.url.path)
        return _error_response(
            500, "internal_error", f"the server failed on this request ({type(exc).__name__})"
        )

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

    @app.get("/healthz", summary="Liveness: the service is up and its model loaded")
    async def healthz() -> dict[str, Any]:
        rec = service.get()
        return {"status": "ok", "model": service.model, "labels": list(rec.labels)}

    @app.get(f"{API}/model", summary="The loaded model: labels, training data, scores, model card")
    async def model_endpoint() -> dict[str, Any]:
        return service.info()

    @app.post(
        f"{API}/predict",
        summary="Emotion of one audio file",
        description="Multipart field `file` (wav, flac, ogg, opus, mp3, aiff). `?timeline=true` adds "
        "per-segment emotions over the speech found by voice activity detection.",
        openapi_extra=_UPLOAD_SCHEMA,
        responses=_ERRORS,
    )
    async def predict(
        request: Request, timeline: bool = Query(False, description="add VAD segments with their emotions")
    ) -> dict[str, Any]:
        rec = service.get()
        (upload,) = await read_uploads(
            request,
            "file",
            file_limit=settings.max_upload_bytes,
            body_limit=settings.max_upload_bytes + _MULTIPART_OVERHEAD,
            shown_limit_mb=settings.max_upload_mb,
            max_files=1,
            strict=True,
            idle_timeout=settings.body_timeout_s,
        )

        def work() -> dict[str, Any]:
            wave = decode_upload(upload, settings.max_duration_s)
            try:
                result = {"filename": upload.filename, **prediction_dict(rec.predict(wave, sr=SAMPLE_RATE))}
                if timeline:
                    result["segments"] = [segment_dict(s) for s in rec.timeline(wave, sr=SAMPLE_RATE)]
            except EmovoxError as exc:
                raise ApiError(422, "unusable_audio", f"{upload.filename}: {exc}") from None
            return result

        return await service.run(work)

    @app.post(
        f"{API}/predict/batch",
        summary="Emotions of several audio files",
        description="Multipart fields `files`. Each file gets its own result or error; one bad file never "
        "fails the batch.",
        openapi_extra=_BATCH_SCHEMA,
        responses=_ERRORS,
    )
    async def predict_batch(request: Request) -> dict[str, Any]:
        rec = service.get()
        uploads = await read_uploads(
            request,
            "files",
            file_limit=settings.max_upload_bytes,
            body_limit=settings.max_batch_bytes,
            shown_limit_mb=settings.max_batch_mb,
            max_files=settings.max_batch_files,
            strict=False,
            idle_timeout=settings.body_timeout_s,
        )

        def work() -> list[dict[str, Any]]:
            results: list[dict[str, Any]] = []
            waves: list[tuple[int, np.ndarray]] = []
            for upload in uploads:
                try:
                    waves.append((len(results), decode_upload(upload, settings.max_duration_s)))
                    results.append({"filename": upload.filename, "ok": True})
                except ApiError as exc:
                    results.append(
                        {"filename": upload.filename, "ok": False, "status": exc.status, **exc.body()}
                    )
            for index, wave in waves:
                try:
                    results[index].update(prediction_dict(rec.predict(wave, sr=SAMPLE_RATE)))
                except EmovoxError as exc:
                    results[index].update(ok=False, status=422, error="unusable_audio", detail=str(exc))
            return results

        results = await service.run(work)
        return {
            "results": results,
            "ok": sum(r["ok"] for r in results),
            "failed": sum(not r["ok"] for r in results),
        }

    @app.websocket(f"{API}/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        if service.streams >= settings.stream_max_connections:
            detail = (
                f"the server already has {settings.stream_max_connections} live streams open; try again later"
            )
            await websocket.send_text(json.dumps({"error": "too_many_streams", "detail": detail}))
            await websocket.close(code=1013, reason=_close_reason(detail))
            return
        service.streams += 1
        try:
            await _stream(websocket, service)
        except WebSocketDisconnect:
            return  # the client went away mid-stream: nothing to clean up
        except _StreamClosed as exc:
            await websocket.send_text(json.dumps({"error": exc.error, "detail": exc.detail}))
            await websocket.close(code=exc.code, reason=_close_reason(exc.detail))
            return
        except ApiError as exc:
            await websocket.send_text(json.dumps(exc.body()))
            await websocket.close(code=1011, reason=_close_reason(exc.detail))
            return
        finally:
            service.streams -= 1
        if (
            websocket.application_state == WebSocketState.CONNECTED
            and websocket.client_state == WebSocketState.CONNECTED
        ):
            await websocket.close(code=1000)

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
