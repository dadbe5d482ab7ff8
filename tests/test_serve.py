"""The web service: endpoints, refused inputs (right 4xx + JSON), upload limits, WebSocket, concurrency.

Most tests inject a small deterministic fake recognizer (fast, no model needed); the integration
tests at the end use the real :class:`emovox.predict.Recognizer` with a random-weight bundle.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from conftest import synth_speech
from emovox.audio import prepare_waveform
from emovox.errors import AudioError, ConfigError
from emovox.serve import ServeSettings, create_app

SR = 16_000


@dataclass
class FakeSegment:
    start: float
    end: float
    emotion: str
    confidence: float
    probabilities: dict[str, float]


@dataclass
class FakePrediction:
    emotion: str
    confidence: float
    probabilities: dict[str, float]
    duration: float
    path: str | None = None


class FakeRecognizer:
    """Deterministic stand-in for Recognizer: loud clips are 'angry', quiet ones 'sad'.

    Records how many predictions run at once, and can be told to fail or be slow.
    """

    labels = ["angry", "happy", "neutral", "sad"]
    meta: dict[str, Any] = {"training": {"corpora": ["synthetic"]}, "metrics": {"ua": 0.5}}

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self._lock = threading.Lock()

    def _wave(self, x: Any, sr: int | None) -> np.ndarray:
        return prepare_waveform(np.asarray(x), sr or SR)

    def predict(self, x: Any, sr: int | None = None) -> FakePrediction:
        with self._lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            wave = self._wave(x, sr)
            if wave.size < 0.25 * SR:
                raise AudioError("<array>: audio is too short")
            if abs(float(wave[0]) - 0.123) < 1e-6:  # marker sample: simulate an inference bug
                raise RuntimeError("simulated model failure")
            rms = float(np.sqrt(np.mean(wave**2)))
            logits = np.array([rms * 40, 1.0, 0.5, 2.0 - rms * 10])
            p = np.exp(logits - logits.max())
            p /= p.sum()
            probs = {label: float(v) for label, v in zip(self.labels, p, strict=True)}
            best = max(probs, key=probs.__getitem__)
            return FakePrediction(best, probs[best], probs, wave.size / SR)
        finally:
            with self._lock:
                self.active -= 1

    def is_speech(self, wave: np.ndarray) -> bool:
        return float(np.sqrt(np.mean(np.square(wave)))) > 0.01

    def timeline(self, x: Any, sr: int | None = None) -> list[FakeSegment]:
        wave = self._wave(x, sr)
        out = []
        for start in range(0, wave.size - SR // 2 + 1, SR):
            chunk = wave[start : start + SR]
            if self.is_speech(chunk):
                p = self.predict(chunk, sr=SR)
                out.append(
                    FakeSegment(
                        start / SR, (start + chunk.size) / SR, p.emotion, p.confidence, p.probabilities
                    )
                )
        return out


def wav_bytes(wave: np.ndarray, sr: int = SR, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def loud_speech(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    return np.clip(synth_speech(seconds, seed=seed) * 2.5, -1, 1)


@pytest.fixture
def fake() -> FakeRecognizer:
    return FakeRecognizer()


@pytest.fixture
def client(fake: FakeRecognizer):
    settings = ServeSettings(
        max_upload_mb=0.5, max_duration_s=30.0, max_batch_files=4, stream_max_frame_bytes=64_000
    )
    with TestClient(create_app(fake, settings=settings), raise_server_exceptions=False) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str, mentions: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    if mentions:
        assert mentions in body["detail"], body["detail"]


# --------------------------------------------------------------------------- endpoints


def test_healthz_model_and_docs(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["labels"] == FakeRecognizer.labels
    info = client.get("/api/v1/model").json()
    assert info["labels"] == FakeRecognizer.labels
    assert info["training"] == {"corpora": ["synthetic"]} and info["metrics"] == {"ua": 0.5}
    assert info["limits"] == {"max_upload_mb": 0.5, "max_duration_s": 30.0, "max_batch_files": 4}
    schema = client.get("/openapi.json").json()
    assert {"/api/v1/predict", "/api/v1/predict/batch", "/api/v1/model", "/healthz"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/api/v1/predict" in docs.text
    assert "cdn" not in docs.text.lower() and "https://" not in docs.text  # works offline


def test_web_page_and_static_files_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/", "/static/app.js", "/static/style.css", "/static/pcm-worklet.js"):
        response = client.get(asset)
        assert response.status_code == 200, asset
        hosts = set(re.findall(r"https?://([^/\"'\s]+)", response.text)) - {
            "www.w3.org"
        }  # SVG namespace only
        assert not hosts, f"{asset} refers to {hosts}: the page must work offline"
    assert_error(client.get("/static/../serve.py"), 404, "not_found")
    assert_error(client.get("/static/nope.js"), 404, "not_found")


def test_predict_returns_emotion_and_probabilities(client: TestClient, speech_wav: Path) -> None:
    r = client.post("/api/v1/predict", files={"file": ("speech.wav", speech_wav.read_bytes(), "audio/wav")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["emotion"] in FakeRecognizer.labels and body["filename"] == "speech.wav"
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert body["duration"] == pytest.approx(1.5, abs=0.01)
    assert "segments" not in body


def test_predict_reads_flac_and_ogg(client: TestClient) -> None:
    wave = loud_speech(1.0)
    for fmt, subtype in (("FLAC", "PCM_16"), ("OGG", "VORBIS")):
        data = wav_bytes(wave, fmt=fmt, subtype=subtype)
        r = client.post("/api/v1/predict", files={"file": (f"clip.{fmt.lower()}", data)})
        assert r.status_code == 200, (fmt, r.text)
        assert r.json()["emotion"] == "angry"


def test_predict_timeline_segments(client: TestClient) -> None:
    wave = np.concatenate([loud_speech(2.0), np.zeros(SR, np.float32), loud_speech(2.0, seed=1)])
    r = client.post("/api/v1/predict?timeline=true", files={"file": ("long.wav", wav_bytes(wave))})
    assert r.status_code == 200, r.text
    segments = r.json()["segments"]
    assert [(s["start"], s["end"]) for s in segments] == [(0.0, 1.0), (1.0, 2.0), (3.0, 4.0), (4.0, 5.0)]
    assert all(
        s["emotion"] == "angry" and set(s["probabilities"]) == set(FakeRecognizer.labels) for s in segments
    )
    assert_error(
        client.post("/api/v1/predict?timeline=maybe", files={"file": ("a.wav", wav_bytes(wave))}),
        422,
        "invalid_request",
        "timeline",
    )


def test_batch_reports_each_file(client: TestClient) -> None:
    files = [
        ("files", ("good.wav", wav_bytes(loud_speech(1.0)), "audio/wav")),
        ("files", ("empty.wav", b"", "audio/wav")),
        ("files", ("notes.txt", b"this is not audio at all", "text/plain")),
        ("files", ("short.wav", wav_bytes(loud_speech(0.1)), "audio/wav")),
    ]
    r = client.post("/api/v1/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["ok"], body["failed"]) == (1, 3)
    good, empty, text, short = body["results"]
    assert good["ok"] and good["filename"] == "good.wav" and good["emotion"] == "angry"
    assert (empty["status"], empty["error"]) == (400, "empty_file") and "empty.wav" in empty["detail"]
    assert (text["status"], text["error"]) == (415, "not_audio") and "notes.txt" in text["detail"]
    assert (short["status"], short["error"]) == (422, "unusable_audio")


def test_batch_oversized_file_fails_alone(client: TestClient) -> None:
    big = wav_bytes(
        np.random.default_rng(0).uniform(-0.5, 0.5, 20 * SR).astype(np.float32)
    )  # ~640 kB > 0.5 MB
    files = [("files", ("big.wav", big)), ("files", ("good.wav", wav_bytes(loud_speech(1.0))))]
    body = client.post("/api/v1/predict/batch", files=files).json()
    assert [r["ok"] for r in body["results"]] == [False, True]
    assert body["results"][0]["status"] == 413 and body["results"][0]["error"] == "file_too_large"
    too_many = [("files", (f"f{i}.wav", wav_bytes(loud_speech(0.5)))) for i in range(5)]
    assert_error(client.post("/api/v1/predict/batch", files=too_many), 413, "too_many_files", "4")
    assert_error(
        client.post("/api/v1/predict/batch", files={"other": ("a.wav", b"x")}), 422, "missing_file", "files"
    )


# --------------------------------------------------------------------------- refused inputs


def test_bad_uploads_get_the_right_4xx(client: TestClient) -> None:
    post = client.post
    url = "/api/v1/predict"
    assert_error(
        post(url, files={"other": ("a.wav", wav_bytes(loud_speech(1.0)))}), 422, "missing_file", "file"
    )
    assert_error(post(url, data={"x": "1"}), 415, "unsupported_media_type", "multipart")
    assert_error(post(url, json={"file": "a.wav"}), 415, "unsupported_media_type", "application/json")
    assert_error(post(url), 415, "unsupported_media_type")
    assert_error(post(url, files={"file": ("empty.wav", b"")}), 400, "empty_file", "empty.wav")
    assert_error(
        post(url, files={"file": ("photo.jpg", b"\xff\xd8\xff\xe0" + bytes(2000))}),
        415,
        "not_audio",
        "photo.jpg",
    )
    silence = wav_bytes(np.zeros(SR, np.float32))
    assert_error(post(url, files={"file": ("silence.wav", silence)}), 422, "unusable_audio", "silence")
    assert_error(
        post(url, files={"file": ("tiny.wav", wav_bytes(loud_speech(0.1)))}),
        422,
        "unusable_audio",
        "tiny.wav",
    )
    truncated = wav_bytes(loud_speech(2.0))[:20_000]
    assert_error(post(url, files={"file": ("cut.wav", truncated)}), 422, "unusable_audio", "truncated")
    two = [("file", ("a.wav", wav_bytes(loud_speech(0.5)))), ("file", ("b.wav", wav_bytes(loud_speech(0.5))))]
    assert_error(post(url, files=two), 413, "too_many_files")


def test_size_and_duration_limits(client: TestClient) -> None:
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 20 * SR).astype(np.float32)  # 640 kB as WAV
    r = client.post("/api/v1/predict", files={"file": ("big.wav", wav_bytes(noise))})
    assert_error(r, 413, "request_too_large", "limit of 0.5 MB")  # refused from its Content-Length
    tone = 0.3 * np.sin(2 * np.pi * 200 * np.arange(40 * 8000) / 8000)
    long_flac = wav_bytes(tone.astype(np.float32), sr=8000, fmt="FLAC")  # 40 s, small as FLAC
    assert len(long_flac) < 0.5 * 2**20
    assert_error(
        client.post("/api/v1/predict", files={"file": ("long.flac", long_flac)}),
        413,
        "audio_too_long",
        "40.0 s",
    )
    headers = {"content-type": "multipart/form-data; boundary=xyz", "content-length": str(50 * 2**20)}
    assert_error(
        client.post("/api/v1/predict", content=b"--xyz--\r\n", headers=headers), 413, "request_too_large"
    )


def test_malformed_multipart_is_400(client: TestClient) -> None:
    url = "/api/v1/predict"
    assert_error(
        client.post(url, content=b"abc", headers={"content-type": "multipart/form-data"}),
        400,
        "malformed_multipart",
        "boundary",
    )
    garbage = b"this is not multipart at all\r\n" * 10
    headers = {"content-type": "multipart/form-data; boundary=BOUNDARY"}
    assert_error(client.post(url, content=garbage, headers=headers), 400, "malformed_multipart")
    cut = (
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        + wav_bytes(loud_speech(0.5))[:3000]
    )
    assert_error(
        client.post(url, content=cut, headers=headers), 400, "malformed_multipart", "closing boundary"
    )


def test_unknown_routes_and_methods_are_json(client: TestClient) -> None:
    assert_error(client.get("/api/v1/nothing"), 404, "not_found", "/api/v1/nothing")
    assert_error(client.get("/api/v1/predict"), 405, "method_not_allowed")


def test_oversized_upload_is_refused_before_the_body_is_read(fake: FakeRecognizer) -> None:
    """A chunked upload over the limit is answered 413 while most of it is still unsent."""
    app = create_app(fake, settings=ServeSettings(max_upload_mb=100 / 1024))  # 100 kB
    chunk, n_chunks = 16 * 1024, 200  # 3.2 MB offered
    pulled = 0

    async def body():
        nonlocal pulled
        head = b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        yield head
        for _ in range(n_chunks):
            pulled += 1
            yield bytes(chunk)
        yield b"\r\n--B--\r\n"

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post(
                "/api/v1/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=B"}
            )

    response = asyncio.run(run())
    assert_error(response, 413, "file_too_large", "big.wav")
    assert response.headers["connection"] == "close"
    assert pulled * chunk < 100 * 1024 + 3 * chunk, f"server read {pulled * chunk} bytes before refusing"
    assert pulled < n_chunks // 10


# --------------------------------------------------------------------------- robustness


def test_keeps_answering_after_bad_requests(client: TestClient) -> None:
    good = {"file": ("ok.wav", wav_bytes(loud_speech(1.0)))}
    for bad in ({"file": ("e.wav", b"")}, {"file": ("x.bin", b"\x00\x01garbage")}, {"nofile": ("a", b"a")}):
        assert 400 <= client.post("/api/v1/predict", files=bad).status_code < 500
        assert client.post("/api/v1/predict", files=good).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_failing_inference_is_500_json_and_does_not_stall_others(client: TestClient) -> None:
    broken = loud_speech(1.0)
    broken[0] = 0.123  # the fake raises RuntimeError on this marker: a bug, not user input
    r = client.post("/api/v1/predict", files={"file": ("bug.wav", wav_bytes(broken, subtype="FLOAT"))})
    assert_error(r, 500, "internal_error", "RuntimeError")
    assert (
        client.post("/api/v1/predict", files={"file": ("ok.wav", wav_bytes(loud_speech(1.0)))}).status_code
        == 200
    )


def test_concurrent_requests_complete_with_bounded_inference_threads() -> None:
    fake = FakeRecognizer(delay=0.05)
    app = create_app(fake, settings=ServeSettings(workers=2))
    data = wav_bytes(loud_speech(1.0))

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            jobs = [c.post("/api/v1/predict", files={"file": (f"c{i}.wav", data)}) for i in range(12)]
            jobs.append(c.get("/healthz"))
            return await asyncio.gather(*jobs)

    started = time.perf_counter()
    responses = asyncio.run(run())
    elapsed = time.perf_counter() - started
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert {r.json()["filename"] for r in responses[:-1]} == {f"c{i}.wav" for i in range(12)}
    assert fake.max_active == 2  # parallel, but never more than the configured workers
    assert elapsed < 12 * 0.05 * 0.9  # faster than one at a time


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_upload_mb"):
        ServeSettings(max_upload_mb=0)
    with pytest.raises(ConfigError, match="workers"):
        ServeSettings(workers=-1)


# --------------------------------------------------------------------------- WebSocket stream


def pcm16(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def receive_results(ws: Any, n: int) -> list[dict[str, Any]]:
    return [ws.receive_json() for _ in range(n)]


def test_stream_speech_and_silence(client: TestClient) -> None:
    speech, silence = loud_speech(2.0), np.zeros(2 * SR, np.float32)
    with client.websocket_connect("/api/v1/stream") as ws:
        ws.send_text(json.dumps({"sample_rate": 16000, "format": "s16le", "window": 1.0, "hop": 0.5}))
        ack = ws.receive_json()
        assert ack["config"] == {"sample_rate": 16000, "format": "s16le", "window": 1.0, "hop": 0.5}
        assert ack["labels"] == FakeRecognizer.labels
        for part in np.array_split(speech, 8):  # 0.25 s frames
            ws.send_bytes(pcm16(part))
        first = receive_results(ws, 4)
        assert [m["t"] for m in first] == [0.5, 1.0, 1.5, 2.0]
        assert all(m["speech"] and m["emotion"] == "angry" for m in first)
        assert sum(first[-1]["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        ws.send_bytes(pcm16(silence))
        after = receive_results(ws, 4)
        assert after[0]["speech"]  # the 1 s window still holds 0.5 s of speech
        assert not after[-1]["speech"] and "emotion" not in after[-1] and after[-1]["t"] == 4.0


def test_stream_float32_and_resampling(client: TestClient) -> None:
    speech48k = np.clip(synth_speech(1.0, sr=48_000) * 2.5, -1, 1).astype("<f4")
    with client.websocket_connect("/api/v1/stream") as ws:
        ws.send_text(json.dumps({"sample_rate": 48000, "format": "f32le", "window": 0.5, "hop": 0.25}))
        assert "config" in ws.receive_json()
        for part in np.array_split(speech48k, 8):
            ws.send_bytes(part.tobytes())
        messages = receive_results(ws, 3)  # soxr holds back a few ms, so the 4th hop comes later
        assert [m["t"] for m in messages] == [0.25, 0.5, 0.75]
        assert messages[-1]["speech"]


def test_stream_garbage_gets_errors_and_stream_continues(client: TestClient) -> None:
    with client.websocket_connect("/api/v1/stream") as ws:
        ws.send_bytes(b"\x01\x02\x03")  # odd byte count for s16le
        assert ws.receive_json()["error"] == "bad_frame"
        ws.send_text("hello, not json")
        assert ws.receive_json()["error"] == "bad_message"
        ws.send_bytes(pcm16(loud_speech(0.5)))  # default config: 2 s window, 0.5 s hop
        message = ws.receive_json()
        assert message["t"] == 0.5 and message["speech"]
        ws.send_text(json.dumps({"hop": 0.25}))
        assert "before the first audio" in ws.receive_json()["detail"]


@pytest.mark.parametrize(
    "config, detail",
    [
        ({"format": "mp3"}, "format"),
        ({"window": 0.5, "hop": 1.0}, "hop"),
        ({"sample_rate": 12.5}, "sample_rate"),
        ({"window": 3600}, "window"),
        ({"volume": 11}, "volume"),
        ([1, 2], "JSON object"),
        ({"sample_rate": 8000, "window": 10, "hop": 0.05}, "hop 0.05 s must be between 0.1 s"),
        ({"window": 10, "hop": 0.2}, "window / hop = 50 is over the limit of 20"),
    ],
)
def test_stream_bad_config_closes_1007(client: TestClient, config: Any, detail: str) -> None:
    with client.websocket_connect("/api/v1/stream") as ws:
        ws.send_text(json.dumps(config))
        error = ws.receive_json()
        assert error["error"] == "bad_config" and detail in error["detail"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1007
        assert detail[:40] in closed.value.reason  # the close reason says what was wrong


def test_stream_oversized_frame_closes_1009(client: TestClient) -> None:
    with client.websocket_connect("/api/v1/stream") as ws:
        ws.send_bytes(bytes(64_002))  # stream_max_frame_bytes is 64 000 in this client
        assert ws.receive_json()["error"] == "frame_too_large"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1009 and "64002 bytes" in closed.value.reason


def test_stream_amplification_is_capped_to_real_time() -> None:
    """The issue's attack: window 10 s, then one 1 MiB frame of 8 kHz PCM (65 s of audio at once).

    Before: one 10 s analysis per 0.05 s hop, 1,310 of them queued at once (~750 MB, 138 s). Now
    the hop is at least 0.1 s and window / hop at most 20, and audio sent faster than real time
    is analysed at most once per hop of wall-clock time plus a burst: the rest is dropped (and
    counted), newest audio first.
    """
    fake = FakeRecognizer()
    settings = ServeSettings(stream_max_frame_bytes=1 << 20, stream_burst_s=2.0, stream_max_ahead_s=120)
    with TestClient(create_app(fake, settings=settings)) as c, c.websocket_connect("/api/v1/stream") as ws:
        ws.send_text(json.dumps({"sample_rate": 8000, "window": 10, "hop": 0.5}))
        assert ws.receive_json()["config"]["hop"] == 0.5
        rng = np.random.default_rng(0)
        frame = (rng.uniform(-0.5, 0.5, (1 << 20) // 2) * 32767).astype("<i2").tobytes()  # 65.5 s
        started = time.monotonic()
        ws.send_bytes(frame)
        boundaries = int(65.536 * 2)  # hop boundaries in the frame; the resampler may hold one back
        results: list[dict[str, Any]] = []
        while sum(1 + r.get("dropped", 0) for r in results) < boundaries - 1:
            results.append(ws.receive_json())
        elapsed = time.monotonic() - started
        allowed = 2.0 / 0.5 + elapsed / 0.5 + 1  # the burst plus real time
        assert len(results) <= allowed, f"{len(results)} windows analysed in {elapsed:.1f} s"
        assert fake.calls == len(results)
        assert results[0]["dropped"] >= boundaries - 1 - allowed  # the oldest windows were dropped
        assert results[-1]["t"] == pytest.approx(65.5, abs=0.6)  # and the newest audio analysed
        assert all(r["speech"] and r["emotion"] in FakeRecognizer.labels for r in results)
        time.sleep(0.6)  # real time catches up: one more hop may be analysed
        ws.send_bytes(pcm16(loud_speech(0.5)))  # 1 s at 8 kHz: two more hops, newest analysed
        last = ws.receive_json()
        assert last["speech"] and results[-1]["t"] + 1.0 <= last["t"] <= 66.6


def test_stream_audio_is_read_at_most_a_little_ahead_of_real_time(fake: FakeRecognizer) -> None:
    """A client flooding PCM is paced by the server (it stops reading) instead of being decoded at once."""
    settings = ServeSettings(stream_max_ahead_s=0.5, stream_burst_s=10.0)
    with TestClient(create_app(fake, settings=settings)) as c, c.websocket_connect("/api/v1/stream") as ws:
        started = time.monotonic()
        for seed in range(3):  # 3 s of audio sent at once
            ws.send_bytes(pcm16(loud_speech(1.0, seed=seed)))
        results = receive_results(ws, 6)
        elapsed = time.monotonic() - started
    assert [r["t"] for r in results] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]  # nothing dropped within the burst
    assert elapsed >= 3.0 - 1.0 - 0.5 - 0.2  # the third second was read only ~1.5 s in


def test_stream_big_or_deeply_nested_text_closes_with_a_reason(client: TestClient) -> None:
    """A deeply nested JSON frame used to raise RecursionError and drop the connection with no code."""
    with client.websocket_connect("/api/v1/stream") as ws:
        ws.send_text("[" * 3000)  # within the 4 KiB text limit, far beyond the parser's recursion limit
        error = ws.receive_json()
        assert error["error"] == "bad_message" and "deeper than 4 levels" in error["detail"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1007 and "deeper" in closed.value.reason
    with client.websocket_connect("/api/v1/stream") as ws:
        ws.send_text(json.dumps({"window": 2.0, "pad": "x" * 10_000}))
        assert ws.receive_json()["error"] == "message_too_large"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1009 and "4096" in closed.value.reason
    assert client.get("/healthz").status_code == 200


def test_stream_connections_are_limited_and_idle_streams_closed(fake: FakeRecognizer) -> None:
    settings = ServeSettings(stream_max_connections=2, stream_idle_timeout_s=0.3)
    with TestClient(create_app(fake, settings=settings)) as c:
        with c.websocket_connect("/api/v1/stream") as a, c.websocket_connect("/api/v1/stream") as b:
            with c.websocket_connect("/api/v1/stream") as third:
                assert third.receive_json()["error"] == "too_many_streams"
                with pytest.raises(WebSocketDisconnect) as closed:
                    third.receive_json()
                assert closed.value.code == 1013 and "2 live streams" in closed.value.reason
            for ws in (a, b):
                ws.send_bytes(pcm16(loud_speech(0.5)))
                assert ws.receive_json()["speech"]
            time.sleep(0.5)  # both idle past the timeout
            for ws in (a, b):
                assert ws.receive_json()["error"] == "idle_timeout"
                with pytest.raises(WebSocketDisconnect) as closed:
                    ws.receive_json()
                assert closed.value.code == 1008 and "no data for 0.3 s" in closed.value.reason
        with c.websocket_connect("/api/v1/stream") as ws:  # the slots were given back
            ws.send_bytes(pcm16(loud_speech(0.5)))
            assert ws.receive_json()["speech"]


def test_stream_client_disconnect_mid_stream_is_clean(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with client.websocket_connect("/api/v1/stream") as ws:
        ws.send_bytes(pcm16(loud_speech(1.0)))  # two hops of work queued, then the client leaves
    with client.websocket_connect("/api/v1/stream") as ws:
        ws.send_bytes(pcm16(loud_speech(0.5)))
        assert ws.receive_json()["speech"]
    assert client.get("/healthz").status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


# --------------------------------------------------------------------------- decoding bombs


def constant_flac(sr: int, channels: int, seconds: float) -> bytes:
    """A FLAC that is tiny on disk and decodes to sr x channels x seconds samples."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sr, channels, format="FLAC", subtype="PCM_16") as f:
        block = np.full((sr // 2, channels), 0.25, np.float32)
        for _ in range(int(seconds * 2)):
            f.write(block)
    return buf.getvalue()


def test_decode_bombs_are_413_before_decoding(client: TestClient) -> None:
    """The issue's 655,350 Hz x 8 channel FLAC in miniature, and one over the decoding budget."""
    bomb = constant_flac(655_350, 8, 2.0)  # 10.5 M samples in ~40 KB
    assert len(bomb) < 0.5 * 2**20
    r = client.post("/api/v1/predict", files={"file": ("bomb.flac", bomb)})
    assert_error(r, 413, "audio_too_large", "bomb.flac: sample rate 655350 Hz is over the limit")
    wide = constant_flac(192_000, 8, 25.0)  # 25 s (within 30 s) but 38 M samples over 8 channels
    r = client.post("/api/v1/predict", files={"file": ("wide.flac", wide)})
    assert_error(r, 413, "audio_too_large", "wide.flac")
    assert "8-channel" in r.json()["detail"]
    batch = client.post("/api/v1/predict/batch", files=[("files", ("bomb.flac", bomb))]).json()
    assert batch["results"][0]["status"] == 413 and batch["results"][0]["error"] == "audio_too_large"


# --------------------------------------------------------------------------- browsers: origin, CSP, page


EVIL = "http://evil.example"


def test_cross_origin_posts_and_websockets_are_refused(client: TestClient) -> None:
    clip = {"file": ("ok.wav", wav_bytes(loud_speech(1.0)))}
    r = client.post("/api/v1/predict", files=clip, headers={"origin": EVIL})
    assert_error(r, 403, "cross_origin", "from origin http://evil.example refused")
    assert_error(
        client.post("/api/v1/predict/batch", files=[("files", clip["file"])], headers={"origin": "null"}),
        403,
        "cross_origin",
    )
    assert_error(
        client.post("/api/v1/predict", files=clip, headers={"sec-fetch-site": "cross-site"}),
        403,
        "cross_origin",
    )
    with pytest.raises(WebSocketDisconnect) as closed:
        with client.websocket_connect("/api/v1/stream", headers={"origin": EVIL}) as ws:
            ws.receive_json()
    assert closed.value.code == 1008 and "cross-origin" in closed.value.reason
    # same origin (the Host the page was served from) and non-browser clients are served
    assert (
        client.post("/api/v1/predict", files=clip, headers={"origin": "http://testserver"}).status_code == 200
    )
    assert client.post("/api/v1/predict", files=clip).status_code == 200
    assert client.get("/api/v1/model", headers={"origin": EVIL}).status_code == 200  # reads are harmless
    with client.websocket_connect("/api/v1/stream", headers={"origin": "http://testserver"}) as ws:
        ws.send_bytes(pcm16(loud_speech(0.5)))
        assert ws.receive_json()["speech"]


def test_allowed_origins_are_served(fake: FakeRecognizer) -> None:
    allowed = "https://app.example:8443"
    with TestClient(create_app(fake, settings=ServeSettings(cors_origins=(allowed,)))) as c:
        clip = {"file": ("ok.wav", wav_bytes(loud_speech(1.0)))}
        r = c.post("/api/v1/predict", files=clip, headers={"origin": allowed})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == allowed
        assert c.post("/api/v1/predict", files=clip, headers={"origin": EVIL}).status_code == 403
        with c.websocket_connect("/api/v1/stream", headers={"origin": allowed}) as ws:
            ws.send_bytes(pcm16(loud_speech(0.5)))
            assert ws.receive_json()["speech"]
    with pytest.raises(ConfigError, match="cors_origins"):
        ServeSettings(cors_origins=("evil.example",))


def test_page_and_static_files_carry_a_strict_csp(client: TestClient) -> None:
    for url in ("/", "/static/app.js", "/static/style.css", "/static/pcm-worklet.js", "/docs", "/healthz"):
        headers = client.get(url).headers
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp, url
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"


def test_docs_render_code_spans(client: TestClient) -> None:
    docs = client.get("/docs").text
    assert "`" not in docs, "raw Markdown backticks in /docs"
    assert "Multipart field <code>file</code>" in docs
    assert "<code>?timeline=true</code>" in docs


def test_page_renders_server_strings_as_text(client: TestClient) -> None:
    page = client.get("/").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "inline script"
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", page), "inline event handler"
    assert not re.search(r"<[^>]*\sstyle\s*=", page), "inline style attribute"
    app_js = client.get("/static/app.js").text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in app_js, f"app.js uses {sink}: server strings must be rendered as text"
    assert 'setAttribute("style"' not in app_js and "style:" not in app_js  # CSP forbids inline styles


def test_an_example_clip_is_served_for_the_page(client: TestClient) -> None:
    example = client.get("/static/example.flac")
    assert example.status_code == 200 and example.headers["content-type"] == "audio/flac"
    info = sf.info(io.BytesIO(example.content))
    assert info.samplerate == SR and 1.0 < info.duration < 10.0
    r = client.post("/api/v1/predict", files={"file": ("example.flac", example.content)})
    assert r.status_code == 200, r.text
    assert 'id="example-btn"' in client.get("/").text


def test_stalled_upload_body_is_408(fake: FakeRecognizer) -> None:
    app = create_app(fake, settings=ServeSettings(body_timeout_s=0.2))

    async def body():
        yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="slow.wav"\r\n\r\n'
        await asyncio.sleep(1.0)  # the client stalls mid-body
        yield b"\r\n--B--\r\n"

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post(
                "/api/v1/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=B"}
            )

    started = time.monotonic()
    assert_error(asyncio.run(run()), 408, "request_timeout", "no data for 0.2 s")
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- under uvicorn


@contextmanager
def live_server(app: Any, settings: ServeSettings) -> Iterator[int]:
    """``app`` under real uvicorn (with emovox's connection limits) on a free loopback port."""
    import uvicorn

    from emovox.serve import uvicorn_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn_config(app, settings, host="127.0.0.1", port=port, log_config=None, log_level="info")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_client_leaving_mid_upload_is_one_short_log_line(
    fake: FakeRecognizer, caplog: pytest.LogCaptureFixture
) -> None:
    """Used to log "internal error" plus two ~106-line tracebacks per disconnect."""
    caplog.set_level(logging.INFO)
    with live_server(create_app(fake), ServeSettings()) as port:
        head = (
            b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n\r\n"
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        )
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(head + bytes(5000))
                time.sleep(0.1)  # the server is reading the body when the client leaves
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(_server_records(caplog)) < 3:
            time.sleep(0.05)
        time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    records = _server_records(caplog)
    assert len(records) == 3, [r.getMessage() for r in records]
    for record in records:
        assert record.exc_info is None and record.levelno <= logging.INFO
        assert "disconnected during POST /api/v1/predict" in record.getMessage()
        assert "\n" not in record.getMessage() and len(record.getMessage()) < 120


def _server_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the app and uvicorn logged, minus uvicorn's start/stop and access lines."""
    return [
        r
        for r in caplog.records
        if r.name.startswith(("emovox", "uvicorn.error")) and not r.getMessage().startswith(_UVICORN_CHATTER)
    ]


_UVICORN_CHATTER = (
    "Started server",
    "Waiting for",
    "Application startup",
    "Uvicorn running",
    "Shutting",
    "Finished server",
    "Application shutdown",
    "emovox model",
)


def test_stalled_connections_are_closed(fake: FakeRecognizer) -> None:
    """Connections that send nothing, or headers that never finish, used to stay open indefinitely."""
    settings = ServeSettings(header_timeout_s=0.5)
    with live_server(create_app(fake), settings) as port:
        silent = socket.create_connection(("127.0.0.1", port))
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        started = time.monotonic()
        for sock in (silent, partial):
            sock.settimeout(5)
            assert sock.recv(1024) == b"", "the server should close a stalled connection"
            sock.close()
        assert time.monotonic() - started < 3
        # a WebSocket lives past the header timeout; keep-alive requests still work
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{port}/api/v1/stream") as ws:
            time.sleep(0.8)
            ws.send(pcm16(loud_speech(0.5)))
            assert json.loads(ws.recv(timeout=5))["speech"]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/healthz").status_code == 200


# --------------------------------------------------------------------------- the real Recognizer

LABELS = ["angry", "happy", "neutral", "sad"]


def make_random_bundle(path: Path) -> Path:
    """A small random-weight bundle: exercises the real load/predict/VAD path in seconds."""
    from emovox.bundle import save_bundle
    from emovox.features import FeatureConfig
    from emovox.models import EmotionNet

    net = EmotionNet(FeatureConfig(), "mlp", None, LABELS)
    card = {"data": "none (random weights, for tests)", "protocol": "none", "licence": "CC0"}
    return save_bundle(net, path, metrics={"ua": 0.25}, card=card, training={"corpora": ["none"]})


@pytest.fixture(scope="module")
def real_client(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("emovox.predict")
    bundle = make_random_bundle(tmp_path_factory.mktemp("bundle") / "model")
    with TestClient(create_app(model=str(bundle))) as c:  # loaded by the app's start-up
        yield c


def test_real_recognizer_endpoints(real_client: TestClient) -> None:
    info = real_client.get("/api/v1/model").json()
    assert info["labels"] == LABELS and info["backend"] == "torch"
    assert info["training"] == {"corpora": ["none"]} and info["metrics"]["ua"] == 0.25
    assert "random weights" in info["card"]
    wave = np.concatenate([loud_speech(2.0), np.zeros(SR, np.float32), loud_speech(2.0, seed=1)])
    r = real_client.post(
        "/api/v1/predict?timeline=true", files={"file": ("clip.flac", wav_bytes(wave, fmt="FLAC"))}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["emotion"] in LABELS and set(body["probabilities"]) == set(LABELS)
    assert body["duration"] == pytest.approx(5.0, abs=0.01)
    assert all(s["emotion"] in LABELS and 0 <= s["start"] < s["end"] <= 5.0 for s in body["segments"])
    batch = real_client.post(
        "/api/v1/predict/batch", files=[("files", ("a.wav", wav_bytes(wave))), ("files", ("b.txt", b"text"))]
    ).json()
    assert [x["ok"] for x in batch["results"]] == [True, False]


def test_real_recognizer_stream_speech_and_silence(real_client: TestClient) -> None:
    with real_client.websocket_connect("/api/v1/stream") as ws:
        ws.send_text(json.dumps({"window": 1.0, "hop": 0.5}))
        ws.receive_json()
        ws.send_bytes(pcm16(np.zeros(SR, np.float32)))
        silent = receive_results(ws, 2)
        assert [m["speech"] for m in silent] == [False, False] and "emotion" not in silent[1]
        ws.send_bytes(pcm16(loud_speech(1.0)))
        speech = receive_results(ws, 2)
        assert speech[-1]["speech"] and speech[-1]["emotion"] in LABELS


def test_default_model_serves() -> None:
    from emovox.bundle import DEFAULT_BUNDLE

    if not (DEFAULT_BUNDLE / "config.json").is_file():
        pytest.skip(f"the default model is not installed at {DEFAULT_BUNDLE} (the lead commits it)")
    with TestClient(create_app()) as c:
        assert c.get("/healthz").json()["model"] == "default"
        r = c.post("/api/v1/predict", files={"file": ("s.wav", wav_bytes(loud_speech(2.0)))})
        assert r.status_code == 200 and r.json()["emotion"] in c.get("/api/v1/model").json()["labels"]


def test_stream_session_normalisation_adapts_to_one_voice(tmp_path: Path) -> None:
    """normalize: session with the shipped default (speaker-normalised): the first speech window
    gets the plain model, later ones the speaker head over a running estimate of the
    non-overlapping windows, which equals a SpeakerSession fed the same windows; a model without
    the head refuses the config (1007)."""
    from emovox.audio import load_audio
    from emovox.predict import Recognizer
    from emovox.serve_stream import analyse_window

    rec = Recognizer.load("default")
    speech = np.concatenate(
        [load_audio(p) for p in sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.flac"))[:2]]
    )
    speech = speech[: 6 * SR]
    with TestClient(create_app(rec)) as c, c.websocket_connect("/api/v1/stream") as ws:
        ws.send_text(json.dumps({"window": 2.0, "hop": 1.0, "normalize": "session"}))
        assert ws.receive_json()["config"]["normalize"] == "session"
        ws.send_bytes(pcm16(speech))
        messages = receive_results(ws, 5)  # 6 hops; the burst allowance (5 windows) drops the first
    assert [m["t"] for m in messages] == [2.0, 3.0, 4.0, 5.0, 6.0]
    spoken = [m for m in messages if m["speech"]]
    assert len(spoken) >= 3 and not spoken[0]["normalized"] and spoken[-1]["normalized"]
    # the same windows through a SpeakerSession directly; only windows that do not overlap one
    # already added (2 s apart here) join the estimate
    session = rec.speaker_session()
    pcm = np.frombuffer(pcm16(speech), dtype="<i2").astype(np.float32) / 32768.0
    direct, learned = [], None
    for m in messages:
        learn = learned is None or m["t"] - learned >= 2.0
        direct.append(
            analyse_window(rec, m["t"], pcm[int(m["t"] * SR) - 2 * SR : int(m["t"] * SR)], session, learn)
        )
        if learn and direct[-1]["speech"]:
            learned = m["t"]
    assert session.clips == sum(1 for m in direct if m["speech"]) - 1  # t = 3 overlapped t = 2
    for got, want in zip(messages, direct, strict=True):
        assert got["speech"] == want["speech"]
        if got["speech"]:
            assert got["emotion"] == want["emotion"]
            assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)

    with TestClient(create_app(FakeRecognizer())) as c, c.websocket_connect("/api/v1/stream") as ws:
        ws.send_text(json.dumps({"normalize": "session"}))
        closed = ws.receive_json()
        assert closed["error"] == "bad_config" and "speaker-normalised" in closed["detail"]
