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
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar

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
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect, WebSocketState

from emovox.audio import SAMPLE_RATE, load_audio
from emovox.errors import AudioError, ConfigError, EmovoxError
from emovox.jsonutil import jsonable

log = logging.getLogger("emovox.serve")

API = "/api/v1"
STATIC_DIR = Path(str(resources.files("emovox") / "static"))
STATIC_FILES = {"index.html", "app.js", "style.css", "pcm-worklet.js", "docs.css"}
_MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries allowed on top of the file size limit

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
    cors_origins: tuple[str, ...] = ()
    stream_max_frame_bytes: int = 1 << 20  # one WebSocket binary frame (~32 s of s16le)
    stream_max_window_s: float = 10.0

    def __post_init__(self) -> None:
        positive = {
            "max_upload_mb": self.max_upload_mb,
            "max_duration_s": self.max_duration_s,
            "max_batch_files": self.max_batch_files,
            "max_batch_mb": self.max_batch_mb,
            "workers": self.workers,
            "stream_max_frame_bytes": self.stream_max_frame_bytes,
            "stream_max_window_s": self.stream_max_window_s,
        }
        for name, value in positive.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"serve setting {name}={value!r}: must be a positive number")

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


async def read_uploads(
    request: Request,
    field_name: str,
    *,
    file_limit: int,
    body_limit: int,
    shown_limit_mb: float,
    max_files: int,
    strict: bool,
) -> list[Upload]:
    """Parse the multipart body of ``request`` while it streams in, refusing it as soon as it is too big.

    ``body_limit`` bounds the whole body (files plus multipart framing); ``shown_limit_mb`` is the
    limit users know (e.g. the per-file size) and is what error messages quote.
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
        async for chunk in request.stream():
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
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError):
        raise ApiError(
            415,
            "not_audio",
            f"{name}: not a readable audio file (wav, flac, ogg/vorbis, ogg/opus, mp3, aiff)",
        ) from None
    seconds = info.frames / info.samplerate if info.samplerate > 0 else 0.0
    if seconds > max_duration:
        detail = f"{name}: audio is {seconds:.1f} s long, over the limit of {max_duration:g} s"
        raise ApiError(413, "audio_too_long", detail)
    try:
        return load_audio(data, name=name, max_duration=max_duration)
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
            raise ValueError(f"window {cfg.window} s is outside 0.25..{settings.stream_max_window_s:g} s")
        if not 0.05 <= cfg.hop <= cfg.window:
            raise ValueError(f"hop {cfg.hop} s must be between 0.05 s and the window ({cfg.window} s)")
        return cfg

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _StreamSession:
    """Ring buffer of the last ``window`` seconds at 16 kHz; yields a window every ``hop`` seconds."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        self.window = int(round(cfg.window * SAMPLE_RATE))
        self.hop = int(round(cfg.hop * SAMPLE_RATE))
        self.ring = np.zeros(self.window, dtype=np.float32)
        self.filled = 0  # valid samples in the ring (< window only at the start)
        self.total = 0  # samples received since the start, at 16 kHz
        self.since_hop = 0
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

    def push(self, samples: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """Append samples; return ``(end time s, window)`` for every hop boundary crossed."""
        out: list[tuple[float, np.ndarray]] = []
        pos = 0
        while pos < samples.size:
            take = min(samples.size - pos, self.hop - self.since_hop)
            self._append(samples[pos : pos + take])
            pos += take
            self.since_hop += take
            self.total += take
            if self.since_hop == self.hop:
                self.since_hop = 0
                out.append((self.total / SAMPLE_RATE, self.ring[self.window - self.filled :].copy()))
        return out

    def _append(self, chunk: np.ndarray) -> None:
        n = chunk.size
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


async def _stream(websocket: WebSocket, service: _Service) -> None:
    settings = service.settings
    recognizer = service.get()
    session = _StreamSession(StreamConfig())
    started = False

    async def send(message: dict[str, Any]) -> None:
        await websocket.send_text(json.dumps(message))

    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text, data = message.get("text"), message.get("bytes")
        if text is not None:
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
                session = _StreamSession(StreamConfig.parse(raw, settings))
            except ValueError as exc:
                await send({"error": "bad_config", "detail": str(exc)})
                await websocket.close(code=1007, reason="invalid stream config")
                return
            await send({"config": session.cfg.public(), "labels": list(recognizer.labels)})
            continue
        if data is None:
            continue
        if len(data) > settings.stream_max_frame_bytes:
            await send(
                {
                    "error": "frame_too_large",
                    "detail": f"binary frame of {len(data)} bytes is over the limit of "
                    f"{settings.stream_max_frame_bytes} bytes; send smaller chunks",
                }
            )
            await websocket.close(code=1009, reason="frame too large")
            return
        try:
            samples = session.decode(data)
        except ValueError as exc:
            await send({"error": "bad_frame", "detail": str(exc)})
            continue
        started = True
        for t, window in session.push(samples):
            try:
                result = await service.run(analyse_window, recognizer, t, window)
            except EmovoxError as exc:
                result = {"t": round(t, 3), "error": "inference_failed", "detail": str(exc)}
            await send(result)


# --------------------------------------------------------------------------- offline API docs


def render_docs(schema: Mapping[str, Any]) -> str:
    """A self-contained HTML reference of the OpenAPI schema (Swagger UI would need a CDN)."""
    rows = []
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            params = "".join(
                f"<li><code>{html.escape(p['name'])}</code> ({html.escape(p.get('in', ''))}) "
                f"{html.escape(p.get('description', '') or p.get('schema', {}).get('type', ''))}</li>"
                for p in op.get("parameters", [])
            )
            body = op.get("requestBody", {}).get("content", {})
            body_html = "".join(f"<li>body: <code>{html.escape(ct)}</code></li>" for ct in body)
            responses = ", ".join(
                f"<code>{html.escape(code)}</code> {html.escape(r.get('description', ''))}"
                for code, r in op.get("responses", {}).items()
            )
            rows.append(
                f"<section><h2><span class='m {html.escape(method)}'>{html.escape(method.upper())}</span> "
                f"<code>{html.escape(path)}</code></h2><p>{html.escape(op.get('summary', ''))}</p>"
                f"<p>{html.escape(op.get('description', '') or '')}</p>"
                f"<ul>{params}{body_html}</ul><p class='r'>Responses: {responses}</p></section>"
            )
    ws = (
        "<section><h2><span class='m ws'>WS</span> <code>/api/v1/stream</code></h2>"
        '<p>Send an optional JSON config <code>{"sample_rate":16000,"format":"s16le"|"f32le",'
        '"window":2.0,"hop":0.5}</code>, then binary frames of mono PCM. Every <code>hop</code> seconds '
        'the server answers <code>{"t", "speech", "emotion", "confidence", "probabilities"}</code> '
        "for the last <code>window</code> seconds (no emotion when <code>speech</code> is false). Bad frames "
        'get <code>{"error", "detail"}</code>; an invalid config closes with 1007, an oversized frame '
        "with 1009.</p></section>"
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

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        # a refused upload may still be streaming in: close the connection instead of reading it
        return _error_response(exc.status, exc.code, exc.detail, close=exc.status in (400, 413, 415))

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
        try:
            await _stream(websocket, service)
        except WebSocketDisconnect:
            return  # the client went away mid-stream: nothing to clean up
        except ApiError as exc:
            await websocket.send_text(json.dumps(exc.body()))
            await websocket.close(code=1011)
        if (
            websocket.application_state == WebSocketState.CONNECTED
            and websocket.client_state == WebSocketState.CONNECTED
        ):
            await websocket.close(code=1000)

    return app


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
    ws_max = settings.stream_max_frame_bytes + 1024  # the app answers oversized frames itself (1009 + reason)
    uvicorn.run(app, host=host, port=port, log_level=log_level, ws_max_size=max(ws_max, 16 * 2**20))


def _limit_torch_threads(workers: int) -> None:
    """Give each inference worker its share of the cores, so concurrent requests don't oversubscribe them."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, onnxruntime backends still benefit
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
