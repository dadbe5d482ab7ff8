"""The web page in a real browser: headless Debian Chromium driven by Playwright against uvicorn.

Checks that an uploaded clip renders an emotion and probability bars, that a server refusal is
shown as a readable message, that recording from the (fake) microphone posts a WAV, and that live
mode streams the microphone over the WebSocket and draws updates. Skips when /usr/bin/chromium or
Playwright is missing (scripts/test.sh installs both).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, synth_speech

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("EMOVOX_CHROMIUM", "/usr/bin/chromium"))
EXAMPLE = REPO / "examples" / "ravdess_happy_actor03.flac"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _speech_clip() -> tuple[np.ndarray, int]:
    """A real example clip when the repo has one, else synthetic speech."""
    if EXAMPLE.is_file():
        wave, sr = sf.read(EXAMPLE, dtype="float32")
        return wave, sr
    return np.clip(synth_speech(3.0) * 2.5, -1, 1), 16_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app under uvicorn on a free loopback port, in a background thread."""
    import uvicorn

    from emovox.bundle import DEFAULT_BUNDLE
    from emovox.serve import create_app
    from test_serve import make_random_bundle

    if (DEFAULT_BUNDLE / "config.json").is_file():
        model = "default"
    else:
        model = str(make_random_bundle(tmp_path_factory.mktemp("bundle") / "model"))
    port = _free_port()
    config = uvicorn.Config(create_app(model=model), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def fake_mic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16-bit WAV that Chromium plays as the microphone (looped)."""
    wave, sr = _speech_clip()
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    sf.write(path, np.concatenate([wave, np.zeros(sr // 2, np.float32)]), sr, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(fake_mic: Path) -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (install Debian's chromium: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={fake_mic}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["microphone"], origin=server)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    page.wait_for_function("document.getElementById('model-badge').textContent.startsWith('model:')")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _labels(page) -> list[str]:
    return page.evaluate("fetch('/api/v1/model').then(r => r.json()).then(m => m.labels)")


def test_upload_shows_emotion_bars_and_timeline(page, tmp_path: Path) -> None:
    wave, sr = _speech_clip()
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.concatenate([wave, np.zeros(sr, np.float32), wave]), sr, subtype="PCM_16")
    page.set_input_files("#file-input", str(clip))
    page.wait_for_selector("#result:not([hidden])")
    labels = _labels(page)
    assert page.text_content("#result-emotion") in labels
    assert "confident" in page.inner_text("#result-confidence")
    bars = page.query_selector_all("svg#bars rect.bar")
    assert sorted(b.get_attribute("data-label") for b in bars) == sorted(labels)
    assert sum(float(b.get_attribute("data-p")) for b in bars) == pytest.approx(1.0, abs=1e-3)
    assert page.is_visible("#timeline-block")
    assert len(page.query_selector_all("svg#timeline rect.segment")) >= 1
    page.screenshot(path=str(tmp_path / "upload.png"), full_page=True)


def test_server_refusal_is_shown(page, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("definitely not audio")
    page.set_input_files("#file-input", str(notes))
    page.wait_for_selector("#error:not([hidden])")
    assert "415" in page.inner_text("#error-title")
    assert "notes.txt" in page.inner_text("#error-detail")
    assert "not a readable audio file" in page.inner_text("#error-detail")


def test_record_posts_a_wav(page) -> None:
    page.click("#record-btn")
    page.wait_for_function("parseFloat(document.getElementById('record-time').textContent) >= 1.5")
    page.click("#record-btn")
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#result-source").startswith("Recording")
    assert page.text_content("#result-emotion") in _labels(page)


def test_live_mode_streams_and_draws(page, tmp_path: Path) -> None:
    page.click("#live-btn")
    page.wait_for_function(
        "Number(document.getElementById('live-canvas').dataset.updates) >= 6", timeout=30_000
    )
    status = page.inner_text("#live-status")
    assert "speech" in status or "silence" in status
    assert page.text_content("#live-emotion") in [*_labels(page), "silence"]
    # the canvas has been painted (not blank)
    painted = page.evaluate(
        """() => { const c = document.getElementById('live-canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"""
    )
    assert painted > 1000
    page.screenshot(path=str(tmp_path / "live.png"), full_page=True)
    page.click("#live-btn")
    assert page.inner_text("#live-status") == "stopped"
