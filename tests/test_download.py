"""`emovox data fetch` against a real HTTP server on 127.0.0.1 (with Range support)."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from emovox.cli import app
from emovox.corpora import load_corpus
from emovox.download import COMPLETE_MARKER, SOURCES, DownloadError, Source, extract_zip, fetch, get_source


def _corpus_zip() -> bytes:
    """A zip of four RAVDESS-named clips under a top folder, as the real archives have one."""
    buf = io.BytesIO()
    tone = (0.2 * np.sin(2 * np.pi * 180 * np.arange(4000) / 16000)).astype(np.float32)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in (
            "Actor_01/03-01-05-01-01-01-01.wav",
            "Actor_01/03-01-03-02-02-01-01.wav",
            "Actor_02/03-01-01-01-01-01-02.wav",
            "Actor_02/03-01-08-02-01-02-02.wav",
        ):
            wav = io.BytesIO()
            sf.write(
                wav,
                tone + np.float32(0.01) * np.random.default_rng(len(name)).standard_normal(4000),
                16000,
                format="WAV",
            )
            zf.writestr(f"speech/{name}", wav.getvalue())
    return buf.getvalue()


class _Server:
    """Serves one payload at /corpus.zip; can ignore Range or cut the connection after some bytes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.ranges: list[str | None] = []
        self.ignore_range = False
        self.cut_after: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path != "/corpus.zip":
                    self.send_error(404, "Not Found")
                    return
                requested = self.headers.get("Range")
                server.ranges.append(requested)
                start = 0
                if requested and not server.ignore_range:
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(server.payload):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(server.payload)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}"
                    )
                else:
                    self.send_response(200)
                body = server.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[: server.cut_after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/corpus.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def payload() -> bytes:
    return _corpus_zip()


@pytest.fixture
def server(payload) -> Iterator[_Server]:
    with _Server(payload) as s:
        yield s


def _source(url: str, payload: bytes, **checksums: str) -> Source:
    return Source(
        name="ravdess",
        url=url,
        filename="corpus.zip",
        description="test corpus",
        citation="test",
        license="test",
        **checksums,
    )


def test_full_download_verifies_extracts_and_loads(tmp_path, server, payload):
    md5 = hashlib.md5(payload).hexdigest()
    result = fetch(_source(server.url, payload, md5=md5), tmp_path, progress=False)
    assert result.downloaded and result.verified and result.resumed_from == 0
    assert result.path == tmp_path / "ravdess" and result.sha256 == hashlib.sha256(payload).hexdigest()
    assert server.ranges == [None]
    assert not (tmp_path / "corpus.zip").exists() and not (tmp_path / "corpus.zip.part").exists()
    assert (result.path / COMPLETE_MARKER).is_file()
    corpus = load_corpus(result.path)
    assert corpus.name == "ravdess" and len(corpus) == 4 and corpus.speakers == ["ravdess:01", "ravdess:02"]
    # a second call finds it present and does not download again
    again = fetch(_source(server.url, payload, md5=md5), tmp_path, progress=False)
    assert not again.downloaded and server.ranges == [None]
    # --force downloads again
    assert fetch(_source(server.url, payload, md5=md5), tmp_path, force=True, progress=False).downloaded
    assert len(server.ranges) == 2


def test_resume_from_partial_file(tmp_path, server, payload):
    half = len(payload) // 2
    (tmp_path / "corpus.zip.part").write_bytes(payload[:half])
    result = fetch(
        _source(server.url, payload, sha256=hashlib.sha256(payload).hexdigest()), tmp_path, progress=False
    )
    assert server.ranges == [f"bytes={half}-"]
    assert result.resumed_from == half and result.verified
    assert len(load_corpus(result.path)) == 4


def test_interrupted_download_resumes_on_the_next_run(tmp_path, server, payload):
    source = _source(server.url, payload, md5=hashlib.md5(payload).hexdigest())
    server.cut_after = 1000
    with pytest.raises(DownloadError, match="interrupted after 1000 .*run the command again to resume"):
        fetch(source, tmp_path, progress=False)
    assert (tmp_path / "corpus.zip.part").stat().st_size == 1000
    server.cut_after = None
    result = fetch(source, tmp_path, progress=False)
    assert server.ranges[-1] == "bytes=1000-" and result.resumed_from == 1000 and result.verified


def test_server_ignoring_range_restarts_cleanly(tmp_path, server, payload):
    (tmp_path / "corpus.zip.part").write_bytes(b"stale bytes that are not the start of the file")
    server.ignore_range = True
    result = fetch(
        _source(server.url, payload, md5=hashlib.md5(payload).hexdigest()), tmp_path, progress=False
    )
    assert result.verified and len(load_corpus(result.path)) == 4


def test_complete_part_file_gets_416_and_is_verified(tmp_path, server, payload):
    (tmp_path / "corpus.zip.part").write_bytes(payload)
    result = fetch(
        _source(server.url, payload, md5=hashlib.md5(payload).hexdigest()), tmp_path, progress=False
    )
    assert server.ranges == [f"bytes={len(payload)}-"] and result.verified


def test_checksum_mismatch_deletes_the_part(tmp_path, server, payload):
    with pytest.raises(DownloadError, match=rf"{server.url}: md5 of the download is \w+, expected 0+"):
        fetch(_source(server.url, payload, md5="0" * 32), tmp_path, progress=False)
    assert not (tmp_path / "corpus.zip.part").exists() and not (tmp_path / "ravdess").exists()
    with pytest.raises(DownloadError, match="sha256 of the download"):
        fetch(_source(server.url, payload), tmp_path, sha256="ab" * 32, progress=False)


def test_unreachable_host_and_http_errors(tmp_path, server, payload):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/corpus.zip"
    with pytest.raises(DownloadError, match=rf"{url}: cannot reach the host"):
        fetch(_source(url, payload), tmp_path, progress=False, timeout=5)
    missing = server.url.replace("corpus.zip", "missing.zip")
    with pytest.raises(DownloadError, match=rf"{missing}: server answered HTTP 404"):
        fetch(_source(missing, payload), tmp_path, progress=False)


def test_unsafe_and_broken_archives(tmp_path):
    for bad in ("../evil.txt", "/abs/evil.txt", "speech/../../evil.txt"):
        archive = tmp_path / "bad.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("speech/ok.txt", "fine")
            zf.writestr(bad, "evil")
        with pytest.raises(DownloadError, match="refusing unsafe path"):
            extract_zip(archive, tmp_path / "out")
        assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()
    link = zipfile.ZipInfo("speech/link")
    link.external_attr = (0o120777 << 16) | 0
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DownloadError, match="refusing symbolic link"):
        extract_zip(tmp_path / "link.zip", tmp_path / "out")
    (tmp_path / "notzip.zip").write_bytes(b"this is not a zip")
    with pytest.raises(DownloadError, match="not a valid zip archive"):
        extract_zip(tmp_path / "notzip.zip", tmp_path / "out")


def test_sources_are_real_and_named():
    ravdess = SOURCES["ravdess"]
    assert "zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip" in ravdess.url
    assert ravdess.md5 == "bc696df654c87fed845eb13823edef8a"
    assert "10.5683/SP2/E8H2MF" in SOURCES["tess"].url and SOURCES["tess"].md5 is None
    assert get_source("TESS", "http://mirror/x.zip").url == "http://mirror/x.zip"
    with pytest.raises(DownloadError, match="unknown dataset 'iemocap' \\(known: ravdess, tess\\)"):
        get_source("iemocap")


def test_cli_fetch_through_a_mirror(tmp_path, server, payload):
    runner = CliRunner()
    args = ["data", "fetch", "tess", "--to", str(tmp_path), "--url", server.url]
    result = runner.invoke(app, args)
    # the zip holds RAVDESS-named clips, so the TESS adapter finds nothing: a clear error, no traceback
    assert result.exit_code == 2 and "no files match the tess layout" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        app, ["data", "fetch", "tess", "--to", str(tmp_path / "x"), "--url", server.url, "--sha256", "0" * 64]
    )
    assert result.exit_code == 2 and "sha256 of the download" in result.output


def test_cli_fetch_prints_computed_checksum(tmp_path, server, payload, monkeypatch):
    monkeypatch.setitem(SOURCES, "ravdess", _source(server.url, payload))
    result = CliRunner().invoke(app, ["data", "fetch", "ravdess", "--to", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(payload).hexdigest() in result.output.replace("\n", "")
    assert "4 clips from 2 speakers" in result.output
    result = CliRunner().invoke(app, ["data", "fetch", "ravdess", "--to", str(tmp_path)])
    assert result.exit_code == 0 and "already present" in result.output
