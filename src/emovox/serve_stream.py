"""The live WebSocket stream: 16 kHz mono PCM in, one JSON result every ``hop`` seconds out.

A client may first send a JSON config (:class:`StreamConfig`), then binary frames of PCM. With
``"normalize": "session"`` (a speaker-normalised model) the stream is taken as one speaker: each
analysed window is standardised with a running estimate of that voice's statistics over the
session so far (:class:`emovox.predict.SpeakerSession`; the first window gets the plain model). The
stream is analysed at most in real time, with bounded windows, frames, messages and connections:
windows of audio sent faster than real time (beyond a burst) are dropped, audio far ahead of real
time is read only as real time catches up, and a stream idle too long is closed. Everything one
connection holds is in :class:`StreamConnection`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
import soxr
from fastapi import FastAPI, WebSocket
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect, WebSocketState

from emovox.audio import SAMPLE_RATE
from emovox.errors import AudioError, EmovoxError
from emovox.serve_errors import ApiError, close_reason
from emovox.serve_model import RecognizerLike, Service, prediction_dict
from emovox.serve_settings import API, ServeSettings
from emovox.speaker_stats import MIN_GROUP_CLIPS

_MAX_JSON_DEPTH = 4  # a stream config is one flat object


@dataclass
class StreamConfig:
    """Client-chosen stream parameters (initial JSON message); validated against the settings."""

    sample_rate: int = SAMPLE_RATE
    format: str = "s16le"
    window: float = 2.0
    hop: float = 0.5
    normalize: str | None = None

    @classmethod
    def parse(cls, raw: Any, settings: ServeSettings) -> StreamConfig:
        if not isinstance(raw, Mapping):
            raise ValueError("config must be a JSON object")
        unknown = set(raw) - {"sample_rate", "format", "window", "hop", "normalize", "type"}
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        cfg = cls(
            sample_rate=raw.get("sample_rate", SAMPLE_RATE),
            format=raw.get("format", "s16le"),
            window=raw.get("window", 2.0),
            hop=raw.get("hop", 0.5),
            normalize=raw.get("normalize"),
        )
        if cfg.normalize not in (None, "session"):
            raise ValueError(f"normalize {cfg.normalize!r} is not supported; use 'session' or leave it out")
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
        """The config as the client is told it (``normalize`` only when asked for)."""
        out = dataclasses.asdict(self)
        if out["normalize"] is None:
            del out["normalize"]
        return out


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


def analyse_window(
    recognizer: RecognizerLike, t: float, window: np.ndarray, speaker: Any = None, learn: bool = True
) -> dict[str, Any]:
    """One stream message: VAD, then the emotion of the window if it holds speech (through the
    running ``speaker`` normalisation, a :class:`~emovox.predict.SpeakerSession`, when given; the
    window joins its estimate when ``learn``)."""
    rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64)))) if window.size else 0.0
    message: dict[str, Any] = {"t": round(t, 3), "level": round(20 * math.log10(max(rms, 1e-6)), 1)}
    if float(np.abs(window).max(initial=0.0)) == 0.0 or not recognizer.is_speech(window):
        message["speech"] = False
        return message
    try:
        if speaker is not None:
            prediction = speaker.predict(window, sr=SAMPLE_RATE, learn=learn)
        else:
            prediction = recognizer.predict(window, sr=SAMPLE_RATE)
    except AudioError:  # the speech left after the model's silence trimming is too short to classify
        message["speech"] = False
        return message
    message["speech"] = True
    message.update({k: v for k, v in prediction_dict(prediction).items() if k != "duration"})
    if speaker is not None:
        message["normalized"] = speaker.clips >= MIN_GROUP_CLIPS  # the speaker head answered
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


class StreamConnection:
    """One live stream: all that a WebSocket connection holds, and how it answers each message.

    Per-connection state lives here and only here: the recognizer the stream was opened with, its
    window buffer and analysis budget (a :class:`_StreamSession`, replaced by a config message
    before the first audio frame), the running speaker normalisation when the config asks for
    it, and when the first audio came (real time for reading ahead).
    """

    def __init__(self, websocket: WebSocket, service: Service) -> None:
        self.websocket = websocket
        self.service = service
        self.settings = service.settings
        self.recognizer = service.get()
        self.session = _StreamSession(StreamConfig(), self.settings.stream_burst_s)
        self.speaker: Any = None  # a SpeakerSession with normalize: session
        self.learned_until: float | None = None  # end of the last window added to its estimate
        self.started = False  # audio has arrived: the config is fixed from now on
        self.first_audio = 0.0  # time.monotonic() of the first audio frame

    async def run(self) -> None:
        """Answer messages until the client leaves; raises :class:`_StreamClosed` to close with a reason."""
        while True:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                return
            text, data = message.get("text"), message.get("bytes")
            if text is not None:
                await self._on_text(text)
            elif data is not None:
                await self._on_frame(data)

    async def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message to the client."""
        await self.websocket.send_text(json.dumps(message))

    async def _receive(self) -> Message:
        timeout = self.settings.stream_idle_timeout_s
        try:
            with anyio.fail_after(timeout):
                return await self.websocket.receive()
        except TimeoutError:
            raise _StreamClosed(1008, "idle_timeout", f"no data for {timeout:g} s; stream closed") from None

    async def _on_text(self, text: str) -> None:
        """A config message: checked for size and depth before parsing, accepted before audio only."""
        settings = self.settings
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
            await self.send({"error": "bad_message", "detail": "text messages must be a JSON config object"})
            return
        if self.started:
            await self.send(
                {"error": "bad_message", "detail": "config must be sent before the first audio frame"}
            )
            return
        try:
            self.session = _StreamSession(StreamConfig.parse(raw, settings), settings.stream_burst_s)
        except ValueError as exc:
            raise _StreamClosed(1007, "bad_config", str(exc)) from None
        self.speaker = None
        if self.session.cfg.normalize == "session":
            if not getattr(self.recognizer, "speaker_normalized", False):
                raise _StreamClosed(
                    1007,
                    "bad_config",
                    "normalize 'session' needs a speaker-normalised model on the torch backend; "
                    "this server's model has none (leave normalize out)",
                )
            self.speaker = self.recognizer.speaker_session()  # type: ignore[attr-defined]
        await self.send({"config": self.session.cfg.public(), "labels": list(self.recognizer.labels)})

    async def _on_frame(self, data: bytes) -> None:
        """A binary frame of PCM: decoded, its windows analysed, then reading paced to real time."""
        settings = self.settings
        if len(data) > settings.stream_max_frame_bytes:
            raise _StreamClosed(
                1009,
                "frame_too_large",
                f"binary frame of {len(data)} bytes is over the limit of "
                f"{settings.stream_max_frame_bytes} bytes; send smaller chunks",
            )
        try:
            samples = self.session.decode(data)
        except ValueError as exc:
            await self.send({"error": "bad_frame", "detail": str(exc)})
            return
        if not self.started:
            self.started, self.first_audio = True, time.monotonic()
        await self._analyse(samples)
        await self._pace()

    async def _analyse(self, samples: np.ndarray) -> None:
        # at most one analysis per hop of wall-clock time (plus a burst): audio sent faster than
        # real time has its older windows dropped, never queued
        session = self.session
        allowed = session.rate_limit.take(session.boundaries(samples.size))
        for t, window in session.push(samples, analyse=allowed):
            try:
                # windows overlap (window > hop): only non-overlapping ones join the running
                # estimate, as the speaker head was trained on distinct clips; all are classified
                learn = self.learned_until is None or t - self.learned_until >= session.cfg.window - 1e-6
                result = await self.service.run(
                    analyse_window, self.recognizer, t, window, self.speaker, learn
                )
                if self.speaker is not None and learn and result.get("speech"):
                    self.learned_until = t
            except EmovoxError as exc:
                result = {"t": round(t, 3), "error": "inference_failed", "detail": str(exc)}
            if session.dropped:
                result["dropped"] = session.dropped  # windows skipped since the previous message
                session.dropped = 0
            await self.send(result)

    async def _pace(self) -> None:
        # the audio itself is read at most stream_max_ahead_s ahead of real time: a client
        # flooding PCM waits (TCP backpressure) instead of keeping the decoder and resampler busy
        ahead = self.session.total / SAMPLE_RATE - (time.monotonic() - self.first_audio)
        if ahead > self.settings.stream_max_ahead_s:
            await anyio.sleep(ahead - self.settings.stream_max_ahead_s)


async def serve_stream(websocket: WebSocket, service: Service) -> None:
    """Accept one stream (or refuse it when the server is full), run it, close it with a reason."""
    settings = service.settings
    await websocket.accept()
    if service.streams >= settings.stream_max_connections:
        detail = (
            f"the server already has {settings.stream_max_connections} live streams open; try again later"
        )
        await websocket.send_text(json.dumps({"error": "too_many_streams", "detail": detail}))
        await websocket.close(code=1013, reason=close_reason(detail))
        return
    service.streams += 1
    try:
        await StreamConnection(websocket, service).run()
    except WebSocketDisconnect:
        return  # the client went away mid-stream: nothing to clean up
    except _StreamClosed as exc:
        await websocket.send_text(json.dumps({"error": exc.error, "detail": exc.detail}))
        await websocket.close(code=exc.code, reason=close_reason(exc.detail))
        return
    except ApiError as exc:
        await websocket.send_text(json.dumps(exc.body()))
        await websocket.close(code=1011, reason=close_reason(exc.detail))
        return
    finally:
        service.streams -= 1
    if (
        websocket.application_state == WebSocketState.CONNECTED
        and websocket.client_state == WebSocketState.CONNECTED
    ):
        await websocket.close(code=1000)


def register_stream_route(app: FastAPI, service: Service) -> None:
    """``WS /api/v1/stream`` on ``app``, served by ``service``'s recognizer."""

    @app.websocket(f"{API}/stream")
    async def stream(websocket: WebSocket) -> None:
        await serve_stream(websocket, service)
