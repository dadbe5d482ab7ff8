"""Audio files read for prediction: duration from the header, block-wise decoding, plain errors.

:func:`stream_file` decodes a file block by block (mono, resampled as a stream), so a recording of
any length is classified without holding it; :func:`header_seconds` tells from the header whether a
file is long enough to need that; :func:`wave_blocks` walks an in-memory wave as the same blocks.
Errors name the file and say what is wrong with it (:func:`unreadable`), samples beyond [-1, 1] are
clipped (:func:`clip_samples`) and :func:`native_stderr_silenced` quiets what C decoders print.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from emovox import limits
from emovox.audio import _truncation
from emovox.errors import AudioError

#: libsndfile's message when no decoder recognises a file's content, whatever the file is
UNRECOGNISED = "does not exist or is not a regular file"


def check_rate(sr: Any, name: str) -> None:
    """Raise :class:`AudioError` unless ``sr`` is a whole number of Hz within ``predict.sample_rate``."""
    rule = limits.RANGES["predict.sample_rate"]
    if isinstance(sr, bool) or not isinstance(sr, Integral) or not rule.contains(sr):
        raise AudioError(
            f"{name}: invalid sample rate {sr!r} (expected a whole number of Hz from "
            f"{int(rule.lo)} to {int(rule.hi)})"
        )


def clip_samples(wave: np.ndarray) -> np.ndarray:
    """``wave`` with samples beyond [-1, 1] clipped (a new array only when some are)."""
    if wave.size and (float(wave.max()) > 1.0 or float(wave.min()) < -1.0):
        return np.clip(wave, -1.0, 1.0)
    return wave


def input_name(item: Any) -> str:
    """How errors name an input that is not a path: ``<array>``, ``<bytes>``, a file object's name."""
    if isinstance(item, np.ndarray):
        return "<array>"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(getattr(item, "name", None) or "<audio>")


def unreadable(path: str | Path, exc: OSError) -> AudioError:
    """The :class:`AudioError` for a file the operating system would not let us read."""
    return AudioError(f"{path}: cannot be read ({exc.strerror or exc})")


def header_seconds(path: str | Path) -> float:
    """Duration of a file from its header (0 when the header does not say; decoding tells the rest)."""
    import soundfile as sf

    try:
        if not Path(path).is_file():
            return 0.0
        info = sf.info(str(path))
    except OSError as exc:
        raise unreadable(path, exc) from None
    except (RuntimeError, TypeError, ValueError, EOFError):
        return 0.0  # not audio: load_audio gives the error
    if not info.samplerate or info.frames <= 0:
        return 0.0
    return info.frames / info.samplerate


def wave_blocks(wave: np.ndarray, sr: int, block_s: float) -> Iterator[np.ndarray]:
    """An in-memory wave as the ``block_s``-second blocks a stream would give."""
    step = int(block_s * sr)
    for start in range(0, wave.size, step):
        yield wave[start : start + step]


def stream_file(path: str | Path, sr: int, block_s: float) -> Iterator[np.ndarray]:
    """Decode a file in ``block_s``-second blocks, mixed down to mono and resampled to ``sr`` as a
    stream (soxr keeps its state between blocks, so the samples equal a whole-file decode)."""
    import soundfile as sf
    import soxr

    try:
        f = sf.SoundFile(str(path))
    except OSError as exc:
        raise unreadable(path, exc) from None
    except (RuntimeError, TypeError, ValueError, EOFError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({str(exc).splitlines()[0][:200]})") from None
    with f:
        truncated = _truncation(f.extra_info)
        if truncated:
            raise AudioError(f"{path}: file is truncated ({truncated})")
        rate = f.samplerate
        check_rate(rate, str(path))
        resampler = soxr.ResampleStream(rate, sr, 1, dtype="float32", quality="HQ") if rate != sr else None
        got = 0
        try:
            for block in f.blocks(blocksize=int(block_s * rate), dtype="float32", always_2d=True):
                mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                if not np.isfinite(mono).all():
                    raise AudioError(f"{path}: audio contains NaN or infinite samples")
                got += mono.size
                out = resampler.resample_chunk(mono) if resampler is not None else mono
                if out.size:
                    yield clip_samples(np.ascontiguousarray(out, dtype=np.float32))
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise AudioError(
                f"{path}: not a readable audio file ({str(exc).splitlines()[0][:200]})"
            ) from None
        if resampler is not None:
            out = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if out.size:
                yield clip_samples(np.ascontiguousarray(out, dtype=np.float32))
        if not got:
            raise AudioError(f"{path}: audio has no samples")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (what C decoders print goes there;
    Python's own stderr is flushed first). Process-wide, so only for a single-purpose CLI."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
