"""Audio loading: any file or array -> mono float32 at 16 kHz, validated.

soundfile (libsndfile) decodes wav, flac, ogg/vorbis, ogg/opus and mp3; soxr resamples. Every
failure a user can cause raises :class:`~emovox.errors.AudioError` with the input's name in the
message, and :func:`load_many` turns those into a list of skipped files so batch jobs go on.
"""

from __future__ import annotations

import io
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from emovox.errors import AudioError

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff"})

# Sample rates accepted from files and arrays. Below 4 kHz there is no speech band left to classify
# (and resampling up would multiply the input: a 1 Hz file 600 frames long becomes 9.6 M samples);
# above 384 kHz (the highest rate in common use, DXD) is no recording of speech, only a way to make
# a small compressed file decode to gigabytes.
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 384_000
# Decoding work allowed per second of max_duration, in samples (frames x channels) at the file's
# rate: 8 channels at 48 kHz, or 2 channels at 192 kHz. A 600 s limit allows 230 M samples.
DECODE_SAMPLES_PER_SECOND = 384_000
# Samples (frames x channels) decoded per block: about 1 MB of float32 whatever the layout.
_BLOCK_SAMPLES = 1 << 18

AudioSource = str | Path | bytes | BinaryIO


class AudioTooLarge(AudioError):
    """Audio over a limit on what decoding may produce: too long, too many samples, too high a rate.

    The web service answers it with 413; everything else treats it as any :class:`AudioError`.
    """


class AudioTooLong(AudioTooLarge):
    """Audio longer than the caller's ``max_duration``."""


def is_audio_file(path: Path) -> bool:
    """True for a visible file whose extension is one the loader reads."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in AUDIO_EXTENSIONS


def _describe(source: AudioSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return getattr(source, "name", None) or "<uploaded audio>"


def load_audio(
    source: AudioSource,
    *,
    sr: int = SAMPLE_RATE,
    trim: bool = False,
    min_duration: float = 0.0,
    max_duration: float | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Decode ``source`` (a path, raw bytes or a binary file object) to mono float32 at ``sr``.

    ``trim`` removes leading and trailing silence. ``min_duration`` / ``max_duration`` (seconds,
    measured after trimming) reject clips the model cannot use. Raises :class:`AudioError`.

    The header is checked before anything is decoded: a sample rate outside
    ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE``, or, with ``max_duration``, more than ``max_duration``
    (+1 s) of audio or more than ``DECODE_SAMPLES_PER_SECOND * (max_duration + 1)`` samples over all
    channels, raises :class:`AudioTooLarge` (also while decoding, in case the header lies). The file
    is then decoded in blocks of about 1 MB, each mixed down to mono and fed through a streaming
    resampler, so memory is proportional to the mono output, never to the input's channels or rate.
    """
    label = _describe(source, name)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{label}: file not found")
        if path.is_dir():
            raise AudioError(f"{label}: is a folder, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"{label}: file is empty (0 bytes)")
        opened: str | BinaryIO = str(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(f"{label}: file is empty (0 bytes)")
        opened = io.BytesIO(bytes(source))
    else:
        opened = source
    try:
        with sf.SoundFile(opened) as f:
            truncated = _truncation(f.extra_info)
            if truncated:
                raise AudioError(f"{label}: file is truncated ({truncated})")
            file_sr = f.samplerate
            check_sample_rate(file_sr, label)
            limit = _DecodeLimit(label, file_sr, f.channels, max_duration, trim)
            limit.check(f.frames)  # from the header, before decoding anything
            data = _decode_mono(f, sr, limit)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as exc:
        raise AudioError(f"{label}: not a readable audio file ({_short(exc)})") from None
    return prepare_waveform(
        data,
        sr,
        target_sr=sr,
        trim=trim,
        min_duration=min_duration,
        max_duration=max_duration,
        name=label,
    )


def check_sample_rate(sample_rate: object, name: str) -> None:
    """Refuse a sample rate that is not a positive integer in ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE``."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {sample_rate!r}")
    if sample_rate > MAX_SAMPLE_RATE:
        raise AudioTooLarge(f"{name}: sample rate {sample_rate} Hz is over the limit of {MAX_SAMPLE_RATE} Hz")
    if sample_rate < MIN_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {sample_rate} Hz is below the minimum of {MIN_SAMPLE_RATE} Hz")


class _DecodeLimit:
    """How much a file may decode to, from the caller's ``max_duration`` (no limit without one)."""

    def __init__(
        self, name: str, sample_rate: int, channels: int, max_duration: float | None, trim: bool
    ) -> None:
        self.name, self.sample_rate, self.channels = name, sample_rate, max(1, channels)
        self.max_duration = max_duration
        # duration is measured after trimming, so with trim only the decoding budget applies
        self.max_frames = None if max_duration is None or trim else (max_duration + 1.0) * sample_rate
        self.max_samples = None if max_duration is None else DECODE_SAMPLES_PER_SECOND * (max_duration + 1.0)

    def check(self, frames: int) -> None:
        if self.max_frames is not None and frames > self.max_frames:
            assert self.max_duration is not None
            raise AudioTooLong(
                f"{self.name}: audio is {frames / self.sample_rate:.1f} s long, over the limit of "
                f"{self.max_duration:g} s"
            )
        if self.max_samples is not None and frames * self.channels > self.max_samples:
            assert self.max_duration is not None
            raise AudioTooLarge(
                f"{self.name}: {frames / self.sample_rate:.1f} s of {self.channels}-channel audio at "
                f"{self.sample_rate} Hz ({frames * self.channels / 1e6:.0f} M samples) is more than "
                f"{self.max_samples / 1e6:.0f} M samples, the most decoded for a limit of "
                f"{self.max_duration:g} s"
            )


def _decode_mono(f: sf.SoundFile, sr: int, limit: _DecodeLimit) -> np.ndarray:
    """Decode an open file block by block, each mixed to mono and resampled to ``sr`` as it comes."""
    channels = max(1, f.channels)
    block = max(1024, _BLOCK_SAMPLES // channels)
    resampler = (
        soxr.ResampleStream(f.samplerate, sr, 1, dtype="float32", quality="HQ")
        if f.samplerate != sr
        else None
    )
    parts: list[np.ndarray] = []
    frames = 0
    while True:
        data = f.read(block, dtype="float32", always_2d=True)
        if data.shape[0] == 0:
            break
        frames += data.shape[0]
        limit.check(frames)
        # soundfile returns frames x channels; mix down here so a very short multichannel file is
        # never mistaken for channels x frames by prepare_waveform's layout guess
        mono = data[:, 0] if channels == 1 else data.mean(axis=1)
        if not np.isfinite(mono).all():
            raise AudioError(f"{limit.name}: audio contains NaN or infinite samples")
        mono = np.ascontiguousarray(mono)
        parts.append(resampler.resample_chunk(mono) if resampler is not None else mono)
    if resampler is not None and frames:
        parts.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    if not parts:
        return np.zeros(0, np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def prepare_waveform(
    wave: np.ndarray,
    sample_rate: int,
    *,
    target_sr: int = SAMPLE_RATE,
    trim: bool = False,
    min_duration: float = 0.0,
    max_duration: float | None = None,
    name: str = "<array>",
) -> np.ndarray:
    """Validate an in-memory signal and bring it to mono float32 at ``target_sr``.

    ``wave`` is 1-D (samples) or 2-D (samples x channels, as soundfile returns; a 2-D array with
    fewer rows than columns is taken as channels x samples). Integer PCM is scaled to [-1, 1].
    """
    arr = np.asarray(wave)
    if arr.dtype.kind not in "fiu":
        raise AudioError(f"{name}: audio must be numeric, got dtype {arr.dtype}")
    check_sample_rate(sample_rate, name)
    if arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        arr = (arr.astype(np.float32) - (info.max + info.min + 1) / 2) / (info.max - info.min + 1) * 2
    arr = arr.astype(np.float32, copy=False)
    if arr.size == 0:
        raise AudioError(f"{name}: audio has no samples")
    if arr.ndim == 2:
        if arr.shape[0] < arr.shape[1] and arr.shape[0] <= 8:
            arr = arr.T
        arr = arr.mean(axis=1)
    elif arr.ndim != 1:
        raise AudioError(f"{name}: expected a 1-D or 2-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if max_duration is not None and not trim and arr.size > (max_duration + 1.0) * sample_rate:
        # refused before resampling, which is the costly part
        raise AudioTooLong(
            f"{name}: audio is {arr.size / sample_rate:.1f} s long, over the limit of {max_duration:g} s"
        )
    if sample_rate != target_sr:
        arr = soxr.resample(arr, sample_rate, target_sr, quality="HQ").astype(np.float32, copy=False)
    if trim:
        arr = trim_silence(arr, target_sr)
    duration = arr.size / target_sr
    if float(np.abs(arr).max(initial=0.0)) == 0.0:
        raise AudioError(f"{name}: audio is digital silence (all samples are zero)")
    if duration < min_duration:
        raise AudioError(
            f"{name}: audio is {duration:.2f} s long, shorter than the minimum of {min_duration:g} s"
        )
    if max_duration is not None and duration > max_duration:
        raise AudioTooLong(f"{name}: audio is {duration:.1f} s long, over the limit of {max_duration:g} s")
    return np.ascontiguousarray(arr)


def trim_silence(
    wave: np.ndarray, sr: int = SAMPLE_RATE, *, top_db: float = 40.0, frame: float = 0.025, pad: float = 0.05
) -> np.ndarray:
    """Cut leading and trailing frames more than ``top_db`` below the loudest frame (keeps ``pad`` s)."""
    hop = max(1, int(sr * frame / 2))
    win = max(hop, int(sr * frame))
    if wave.size <= win:
        return wave
    n_frames = 1 + (wave.size - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n_frames)[:, None]
    rms = np.sqrt(np.mean(wave[idx] ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms / rms.max())
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return wave
    start = max(0, loud[0] * hop - int(pad * sr))
    end = min(wave.size, loud[-1] * hop + win + int(pad * sr))
    return wave[start:end]


def default_workers() -> int:
    """Decoding threads for batch loads: one per CPU core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def load_many(
    paths: Iterable[str | Path], *, workers: int | None = None, **kwargs: object
) -> tuple[list[np.ndarray | None], list[tuple[Path, str]]]:
    """Load every path; a file that fails becomes ``None`` plus an entry ``(path, reason)`` in ``skipped``.

    Files are decoded by ``workers`` threads (default :func:`default_workers`; libsndfile and soxr
    release the GIL, so two cores decode about twice as fast); results keep the input order.
    """
    waves: list[np.ndarray | None] = []
    skipped: list[tuple[Path, str]] = []
    for path, result in iter_load(paths, workers=workers, **kwargs):
        if isinstance(result, AudioError):
            waves.append(None)
            skipped.append((Path(path), str(result)))
        else:
            waves.append(result)
    return waves, skipped


def iter_load(
    paths: Iterable[str | Path], *, workers: int | None = None, **kwargs: object
) -> Iterator[tuple[str | Path, np.ndarray | AudioError]]:
    """Yield ``(path, wave or the AudioError it raised)`` in input order, decoding on ``workers`` threads.

    At most a few files per worker are decoded ahead of the consumer, so memory stays bounded on
    a corpus of any size. ``kwargs`` go to :func:`load_audio`.
    """

    def one(path: str | Path) -> np.ndarray | AudioError:
        try:
            return load_audio(path, **kwargs)  # type: ignore[arg-type]
        except AudioError as exc:
            return exc

    n = default_workers() if workers is None else workers
    if n <= 1:
        for path in paths:
            yield path, one(path)
        return
    with ThreadPoolExecutor(n, thread_name_prefix="emovox-decode") as pool:
        pending: deque[tuple[str | Path, Future[np.ndarray | AudioError]]] = deque()
        for path in paths:
            pending.append((path, pool.submit(one, path)))
            if len(pending) >= 4 * n:
                head, fut = pending.popleft()
                yield head, fut.result()
        while pending:
            head, fut = pending.popleft()
            yield head, fut.result()


# libsndfile notes a WAV/AIFF whose audio chunk is shorter than its header declares as
# "data : 176400 (should be 88178)"; 0 and 0xFFFFFFFF are placeholders written by streaming recorders.
_CHUNK_LENGTH = re.compile(r"^(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMING_PLACEHOLDERS = {0, 0xFFFFFFFF, 0x7FFFFFFF}


def _truncation(extra_info: str) -> str | None:
    """Describe the truncation libsndfile found in a file's header, or None if the file is whole."""
    for match in _CHUNK_LENGTH.finditer(extra_info):
        declared, present = int(match.group(2)), int(match.group(3))
        if declared not in _STREAMING_PLACEHOLDERS and present < declared:
            return f"header declares {declared} bytes of audio, only {present} are present"
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
