"""The web page in a real browser: headless Debian Chromium driven by Playwright against uvicorn.

Checks that an uploaded clip renders an emotion and probability bars, that a server refusal is
shown as a readable message (and replaces the previous result), that recording from the (fake)
microphone posts a WAV, that live mode streams the microphone over the WebSocket and draws
updates, that the page is readable on a 390 px phone screen (the example clip analysed, label
sizes, no horizontal overflow, a screenshot), and that a model whose labels are HTML/script is
shown as text and runs nothing. Skips when /usr/bin/chromium or Playwright is missing
(scripts/test.sh installs both).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def _serve(app: object) -> Iterator[str]:
    """``app`` under uvicorn (with the service's connection limits) on a free loopback port."""
    import uvicorn

    from emovox.serve import ServeSettings, uvicorn_config

    port = _free_port()
    config = uvicorn_config(app, ServeSettings(), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app (default model, else a random-weight bundle) under uvicorn, in a background thread."""
    from emovox.bundle import DEFAULT_BUNDLE
    from emovox.serve import create_app
    from test_serve import make_random_bundle

    if (DEFAULT_BUNDLE / "config.json").is_file():
        model = "default"
    else:
        model = str(make_random_bundle(tmp_path_factory.mktemp("bundle") / "model"))
    with _serve(create_app(model=model)) as url:
        yield url


XSS = "<img src=x onerror=alert(document.domain)>"


@pytest.fixture(scope="module")
def xss_server() -> Iterator[str]:
    """A service whose model labels are HTML that runs script if written into the page as markup.

    A fake recognizer stands in for a tampered bundle (whether bundles may carry such labels is
    the bundle loader's business; the page must be safe whatever the server sends).
    """
    from emovox.serve import create_app
    from test_serve import FakeRecognizer

    class XssRecognizer(FakeRecognizer):
        labels = [XSS, "happy", "<b>bold</b>", "sad"]  # loud clips get labels[0]

    with _serve(create_app(XssRecognizer())) as url:
        yield url


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


# Predicates are passed as functions ("() => ..."): Playwright evaluates a bare expression with
# eval(), which the page's Content-Security-Policy (rightly) forbids.


@contextmanager
def _open(browser, url: str, **context_options) -> Iterator[object]:
    """A fresh page on ``url`` once the model badge is filled; fails on any JavaScript error,
    Content-Security-Policy violation or dialog (alert/confirm/prompt)."""
    context = browser.new_context(**context_options)
    context.grant_permissions(["microphone"], origin=url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("dialog", lambda d: (errors.append(f"dialog {d.type}: {d.message}"), d.dismiss()))
    response = page.goto(url)
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_function("() => document.getElementById('model-badge').textContent.startsWith('model:')")
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors, CSP violations or dialogs on the page: {errors}"


@pytest.fixture
def page(browser, server: str):
    with _open(browser, server, viewport={"width": 1280, "height": 900}) as page:
        yield page


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
    page.click("#example-btn")  # a first, good result ...
    page.wait_for_selector("#result:not([hidden])")
    notes = tmp_path / "notes.txt"
    notes.write_text("definitely not audio")
    page.set_input_files("#file-input", str(notes))
    page.wait_for_selector("#error:not([hidden])")
    assert "415" in page.inner_text("#error-title")
    assert "notes.txt" in page.inner_text("#error-detail")
    assert "not a readable audio file" in page.inner_text("#error-detail")
    # ... is not left under the error about the next file, as if it were that file's result
    page.wait_for_selector("#result", state="hidden")


def test_record_posts_a_wav(page) -> None:
    page.click("#record-btn")
    page.wait_for_function("() => parseFloat(document.getElementById('record-time').textContent) >= 1.5")
    page.click("#record-btn")
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#result-source").startswith("Recording")
    assert page.text_content("#result-emotion") in _labels(page)


def test_live_mode_streams_and_draws(page, tmp_path: Path) -> None:
    page.click("#live-btn")
    page.wait_for_function(
        "() => Number(document.getElementById('live-canvas').dataset.updates) >= 6", timeout=30_000
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


# label sizes as rendered: an SVG scaled down to fit a narrow screen shrinks its text with it
_TEXT_SIZES = """() => {
  const out = [];
  const add = (el, kind) => {
    if (!el.getClientRects().length) return;  // not displayed
    let px = parseFloat(getComputedStyle(el).fontSize);
    if (el instanceof SVGElement) {
      const m = el.getScreenCTM();
      px *= Math.min(Math.abs(m.a), Math.abs(m.d));
    }
    out.push({kind, text: el.textContent.trim().slice(0, 30), px});
  };
  document.querySelectorAll('#bars text, #timeline text').forEach((el) => add(el, 'svg'));
  const html = '#result td, #result th, #model-badge, #result-meta, #result-source, #limits, .hint';
  document.querySelectorAll(html).forEach((el) => add(el, 'html'));
  return out;
}"""


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def test_phone_layout_is_readable(browser, server: str, tmp_path: Path) -> None:
    """At 390 x 844 the charts used to shrink to a quarter (4 px labels) and the badge wrapped."""
    with _open(browser, server, viewport={"width": 390, "height": 844}, device_scale_factor=2) as page:
        assert page.is_visible("#example-btn")  # the empty first screen offers something to try
        page.click("#example-btn")
        page.wait_for_selector("#result:not([hidden])")
        page.wait_for_selector("#timeline-block:not([hidden])")
        assert page.text_content("#result-source").startswith("Example")
        sizes = page.evaluate(_TEXT_SIZES)
        assert {s["kind"] for s in sizes} == {"svg", "html"} and len(sizes) > 12
        small = [s for s in sizes if s["px"] < 11]
        assert not small, f"text under 11 px at 390 px wide: {small}"
        bars = page.eval_on_selector("#bars", "e => e.getBoundingClientRect().width")
        card = page.eval_on_selector("#result", "e => e.clientWidth")
        assert bars > 0.8 * (card - 40), "the probability chart does not use the card's width"
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than the screen"
        badge = page.eval_on_selector(
            "#model-badge", "e => e.getBoundingClientRect().height / parseFloat(getComputedStyle(e).fontSize)"
        )
        assert badge < 2.5, "the model badge wraps onto several lines"
        shot = tmp_path / "phone.png"
        page.screenshot(path=str(shot), full_page=True)
        width, height = _png_size(shot)
        assert width == 390 * 2 and height >= 844 * 2  # full page: no horizontal overflow either
        # live mode's canvas draws in CSS pixels too (its 11 px axis labels stay 11 px)
        page.click("#live-btn")
        page.wait_for_function(
            "() => Number(document.getElementById('live-canvas').dataset.updates) >= 2", timeout=30_000
        )
        ratio = page.eval_on_selector("#live-canvas", "c => c.width / c.getBoundingClientRect().width")
        assert ratio == pytest.approx(2.0, abs=0.05)
        page.click("#live-btn")


def test_html_labels_are_shown_as_text_and_run_nothing(browser, xss_server: str, tmp_path: Path) -> None:
    """A label written into the legend with innerHTML used to run script on page load."""
    with _open(browser, xss_server, viewport={"width": 1280, "height": 900}) as page:
        legend = page.text_content("#legend")
        assert XSS in legend and "<b>bold</b>" in legend  # the characters themselves, as text
        assert "document.domain" in page.get_attribute("#model-badge", "title")
        wave = np.clip(synth_speech(2.0) * 2.5, -1, 1)
        clip = tmp_path / "loud.wav"
        sf.write(clip, wave, 16_000, subtype="PCM_16")
        page.set_input_files("#file-input", str(clip))
        page.wait_for_selector("#result:not([hidden])")
        assert page.text_content("#result-emotion") == XSS
        assert XSS in page.text_content("#bars") and XSS in page.text_content("#segments")
        page.wait_for_timeout(300)  # time for an injected onerror to fire
        assert page.evaluate("document.querySelectorAll('img, b').length") == 0, "labels became elements"
        page.screenshot(path=str(tmp_path / "xss.png"), full_page=True)
