"""Uploaded audio: multipart bodies parsed while they stream in, and decoding within the limits.

Uploads are parsed by a streaming multipart parser (python-multipart) while the body arrives, so
an upload over the size limit is refused as soon as the limit is crossed, never buffered whole; a
body that stalls is refused with 408 and a client that leaves is :class:`ClientGone`. Decoding
is bounded by what the file's header says it holds (:func:`emovox.audio.load_audio`: 413 for too
long or too large), and each failure maps to the 4xx that names it.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import numpy as np
import soundfile as sf
from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from emovox.audio import AudioTooLarge, AudioTooLong, load_audio
from emovox.errors import AudioError
from emovox.serve_errors import ApiError, ClientGone

MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries allowed on top of the file size limit


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
