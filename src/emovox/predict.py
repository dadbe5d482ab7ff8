"""Prediction: a bundle turned into a :class:`Recognizer` for files, bytes, arrays and timelines.

Every input goes through exactly the pipeline used for training and evaluation: decode and
resample to 16 kHz mono (:func:`emovox.audio.load_audio` / :func:`~emovox.audio.prepare_waveform`),
trim and length checks with the bundle's recorded preprocessing, then the bundle's
:class:`~emovox.models.EmotionNet` (feature extraction, normaliser, backbone) in PyTorch, or the
same network exported to ONNX and run by onnxruntime. So a clip gets the same probabilities here
as in the evaluation that produced the bundle's scores.

:meth:`Recognizer.timeline` runs a voice activity detector (Silero VAD's ONNX model through
onnxruntime, or webrtcvad if Silero cannot be loaded) over a recording, cuts its speech into
segments of at most a few seconds and classifies each one; silence yields no segment.

Memory does not grow with the input: audio longer than :data:`LONG_AUDIO_S` is classified in
:data:`WINDOW_S` windows (their duration-weighted mean), long files are decoded as a stream, the
VAD runs chunk by chunk, and batches are bounded by seconds of audio (:meth:`Recognizer.predict_files`
is what ``emovox predict`` runs). Float input beyond [-1, 1] is clipped, and a non-finite model
output is an :class:`~emovox.errors.AudioError` naming the input, never a NaN result.

This module is the public API (``Recognizer``, ``Prediction``, ``Segment``, ``FileResult``,
``SpeakerSession``, ...); the work is shared with its parts: :mod:`emovox.runtime` (devices,
threads, loading a bundle for a backend), :mod:`emovox.audio_stream` (headers, streamed decoding),
:mod:`emovox.long_audio` (windows of long audio), :mod:`emovox.timeline` and :mod:`emovox.vad`
(the VAD timeline), :mod:`emovox.speaker_norm` (speaker normalisation) and
:mod:`emovox.file_batches` (:meth:`Recognizer.predict_files`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from emovox import limits
from emovox.audio import SAMPLE_RATE, load_audio, prepare_waveform
from emovox.audio_stream import (
    UNRECOGNISED,
    check_rate,
    clip_samples,
    header_seconds,
    input_name,
    native_stderr_silenced,
    stream_file,
    unreadable,
    wave_blocks,
)
from emovox.errors import AudioError, BundleError, ConfigError, EmovoxError
from emovox.file_batches import FileResult, predict_files
from emovox.long_audio import WindowedMean
from emovox.runtime import (
    SMALL_MODEL_BYTES,  # noqa: F401 (re-exported: emovox.predict.SMALL_MODEL_BYTES)
    check_device,
    default_threads,
    load_onnx,
    load_torch,
    onnx_session,  # noqa: F401 (re-exported: emovox.predict.onnx_session)
    torch_threads,
)
from emovox.speaker_norm import SpeakerSession, group_probabilities
from emovox.timeline import Segment, TimelineStream, check_timeline, plan_segments
from emovox.vad import VoiceActivityDetector, vad

Input = str | Path | bytes | bytearray | BinaryIO | np.ndarray
Backend = Literal["torch", "onnx"]


@dataclass
class Prediction:
    """The emotion predicted for one input.

    ``probabilities`` maps labels to probabilities, most likely first (only the ``top_k`` most
    likely when asked); ``duration`` is the decoded input's length in seconds, before trimming;
    ``path`` is the file's path for path inputs, else None.
    """

    emotion: str
    confidence: float
    probabilities: dict[str, float]
    duration: float
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


#: Audio longer than this (seconds) is classified in windows (:data:`WINDOW_S`) whose probabilities
#: are averaged, and files that long are decoded as a stream: memory does not grow with the length.
LONG_AUDIO_S = 60.0
#: Window length (seconds) for long audio.
WINDOW_S = 30.0
#: Most audio (seconds, padding included) run through the network in one batch, and decoded short
#: files held at once by :meth:`Recognizer.predict_files`.
BATCH_AUDIO_S = 120.0
#: Block length (seconds) in which long files are decoded and long arrays walked.
BLOCK_S = 10.0
#: The timeline's voice activity detector runs on at most this much audio at once (plus the tail).
TIMELINE_CHUNK_S = 60.0
TIMELINE_TAIL_S = 15.0


class Recognizer:
    """Emotion recognition with a model bundle; safe to call from several threads.

    Build with :meth:`load`. ``predict`` takes a path, raw file bytes, a binary file object, a
    NumPy array (with ``sr``) or a list of those (decoded one by one, then classified in
    length-sorted padded batches). ``predict_proba`` is the classifier protocol used by
    :mod:`emovox.evaluation` (already-loaded 16 kHz waves in, ``[N, K]`` probabilities out).

    Audio longer than :data:`LONG_AUDIO_S` is classified in windows of :data:`WINDOW_S` seconds
    whose probabilities are averaged (weighted by their duration), and long files are decoded as
    a stream, so memory stays flat however long a recording is.
    """

    def __init__(
        self,
        meta: dict[str, Any],
        *,
        net: Any = None,
        session: Any = None,
        device: str = "cpu",
        batch_size: int = 16,
        threads: int | None = None,
    ) -> None:
        if (net is None) == (session is None):
            raise ValueError("Recognizer needs exactly one of a torch network or an onnxruntime session")
        limits.check("predict.batch_size", batch_size, "batch_size")
        limits.check_optional("predict.threads", threads, "threads")
        self.meta = meta
        self.labels: list[str] = list(meta["model"]["labels"])
        self.sample_rate: int = int(meta.get("sample_rate", SAMPLE_RATE))
        self.trim: bool = bool(meta["preprocessing"]["trim_silence"])
        self.min_duration: float = float(meta["preprocessing"]["min_duration"])
        self.backend: Backend = "torch" if net is not None else "onnx"
        self.device = device
        self.batch_size = batch_size
        self.threads = threads  # torch threads while the network runs (None: torch's own setting)
        self.net = net
        self.session = session
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(
        cls,
        model: str | Path = "default",
        backend: Backend = "torch",
        device: str = "cpu",
        *,
        threads: int | None = None,
        batch_size: int = 16,
    ) -> Recognizer:
        """Load ``model`` (``"default"`` or a bundle folder) for the ``torch`` or ``onnx`` backend.

        The onnx backend needs the bundle's ``model.onnx`` (``emovox export BUNDLE``) and runs on
        onnxruntime alone. ``threads`` sets the inference threads (torch intra-op threads while
        this recognizer runs, onnxruntime intra-op threads); by default :func:`default_threads`:
        one for small models such as the shipped ones (on a busy CPU one thread is many times
        faster than several), up to 4 for large ones. ``device`` (``cpu``, ``cuda``, ``cuda:1``,
        ``mps``) must exist on this machine, else :class:`ConfigError`.
        """
        if backend not in ("torch", "onnx"):
            raise ConfigError(f"backend: unknown backend {backend!r} (choose torch or onnx)")
        limits.check("predict.batch_size", batch_size, "batch_size")
        limits.check_optional("predict.threads", threads, "threads")
        check_device(device, backend)
        if backend == "torch":
            net, meta, chosen = load_torch(model, threads=threads, device=device)
            return cls(meta, net=net, device=device, batch_size=batch_size, threads=chosen)
        meta, session, chosen = load_onnx(model, threads=threads, device=device)
        return cls(meta, session=session, device=device, batch_size=batch_size, threads=chosen)

    # ------------------------------------------------------------------ inputs

    def decode(self, x: Input, sr: int | None = None) -> tuple[np.ndarray, str | None]:
        """Decode one input to a 16 kHz mono float32 waveform (untrimmed) and its path, if any.

        Float samples beyond [-1, 1] (a float WAV scaled far too loud) are clipped, as the live
        stream does, so they cannot overflow the features into NaN.
        """
        if isinstance(x, np.ndarray):
            if sr is None:
                raise AudioError("<array>: pass the sample rate (sr=...) together with a NumPy array")
            check_rate(sr, "<array>")
            return clip_samples(prepare_waveform(x, sr, target_sr=self.sample_rate)), None
        if isinstance(x, (str, Path)):
            return clip_samples(_load_path(x, self.sample_rate)), str(x)
        if isinstance(x, (bytes, bytearray, memoryview)):
            return clip_samples(load_audio(bytes(x), sr=self.sample_rate, name="<bytes>")), None
        if hasattr(x, "read"):
            return clip_samples(load_audio(x, sr=self.sample_rate)), None
        raise TypeError(
            f"cannot predict on a {type(x).__name__}: pass a path, bytes, a file object or a NumPy array"
        )

    def preprocess(self, wave: np.ndarray, name: str = "<array>") -> np.ndarray:
        """Apply the bundle's training preprocessing (silence trimming, minimum duration) to a 16 kHz wave."""
        return prepare_waveform(
            wave,
            self.sample_rate,
            target_sr=self.sample_rate,
            trim=self.trim,
            min_duration=self.min_duration,
            name=name,
        )

    def is_long(self, seconds: float) -> bool:
        """True if audio of this duration is classified in windows (see :data:`LONG_AUDIO_S`)."""
        return seconds > LONG_AUDIO_S

    def stream(self, path: str | Path) -> Iterator[np.ndarray]:
        """Decode a file block by block: consecutive mono float32 blocks at the model's rate."""
        return stream_file(path, self.sample_rate, BLOCK_S)

    # ------------------------------------------------------------------ prediction

    def predict(
        self,
        x: Input | list[Input],
        sr: int | None = None,
        top_k: int | None = None,
        *,
        normalize: str | None = None,
    ) -> Prediction | list[Prediction]:
        """Predict the emotion of one input, or of each input of a list (batched).

        ``sr`` is the sample rate of NumPy array inputs. Raises :class:`AudioError` naming the input
        that cannot be used (for lists: the first one). ``normalize`` (speaker-normalised models,
        torch backend): ``"speaker"`` when all inputs come from one speaker or session, ``"folder"``
        to treat the files of each folder as one speaker; the model's statistics are then
        standardised over each group of at least two clips (a lone clip keeps the plain model).
        """
        limits.check_top_k(top_k)
        self._check_normalize(normalize)
        items = x if isinstance(x, list) else [x]
        out: list[Prediction | None] = [None] * len(items)
        short: list[int] = []
        waves, durations, paths = [], [], []
        for i, item in enumerate(items):
            if isinstance(item, (str, Path)) and self.is_long(header_seconds(item)):
                out[i] = self._predict_stream(self.stream(item), str(item), str(item), top_k)[0]
                continue
            wave, path = self.decode(item, sr)
            name = path or input_name(item)
            if self.is_long(wave.size / self.sample_rate):
                out[i] = self._predict_stream(self._blocks(wave), name, path, top_k)[0]
                continue
            short.append(i)
            waves.append(self.preprocess(wave, name=name))
            durations.append(wave.size / self.sample_rate)
            paths.append(path)
        names = [paths[j] or input_name(items[i]) for j, i in enumerate(short)]
        probs = self._probabilities(waves, names)
        if normalize is not None:
            groups = [
                "all" if normalize == "speaker" else str(Path(p).parent) if p else "<arrays>" for p in paths
            ]
            group_probabilities(self, waves, groups, probs)
        for j, i in enumerate(short):
            out[i] = self._prediction(probs[j], durations[j], paths[j], top_k)
        results = [p for p in out if p is not None]
        return results if isinstance(x, list) else results[0]

    def predict_waves(
        self,
        waves: Sequence[np.ndarray],
        *,
        durations: Sequence[float] | None = None,
        paths: Sequence[str | None] | None = None,
        top_k: int | None = None,
    ) -> list[Prediction]:
        """Predictions for already preprocessed 16 kHz waves (what :meth:`preprocess` returns)."""
        limits.check_top_k(top_k)
        names = [p or f"<wave {i}>" for i, p in enumerate(paths or [None] * len(waves))]
        probs = self._probabilities(waves, names)
        durations = durations if durations is not None else [w.size / self.sample_rate for w in waves]
        paths = paths if paths is not None else [None] * len(waves)
        return [
            self._prediction(p, d, path, top_k) for p, d, path in zip(probs, durations, paths, strict=True)
        ]

    def predict_files(
        self,
        paths: Sequence[str | Path],
        *,
        top_k: int | None = None,
        timeline: bool = False,
        quiet_decoder: bool = False,
        normalize: str | None = None,
    ) -> Iterator[FileResult]:
        """Predict every file, yielding one :class:`FileResult` per path, in input order.

        What ``emovox predict`` runs. Memory does not grow with the input: short files are decoded
        and classified in batches of at most :data:`BATCH_AUDIO_S` seconds of audio (not a number
        of files), long ones (:data:`LONG_AUDIO_S`) are streamed through windows and, with
        ``timeline``, the voice activity detector. A file that cannot be used yields its error
        instead and the others go on. ``quiet_decoder`` silences what native decoders print on
        the process's stderr (mpg123's "Illegal Audio-MPEG-Header" notes; only for a CLI).

        ``normalize`` (speaker-normalised models, see :meth:`predict`): ``"speaker"`` treats all
        files as one speaker, ``"folder"`` the files of each folder (wherever they come in the
        input). Each group's short files are standardised over the group, holding one statistics
        vector per file, not the audio (results still come in input order);
        long files keep their windowed plain prediction; timeline segments use a running estimate
        over the group's recordings (:class:`SpeakerSession`).
        """
        limits.check_top_k(top_k)
        self._check_normalize(normalize)
        if timeline and self.sample_rate != SAMPLE_RATE:
            raise BundleError(
                f"{self.meta['path']}: timeline needs a {SAMPLE_RATE} Hz model, "
                f"this one uses {self.sample_rate} Hz"
            )
        quiet = native_stderr_silenced if quiet_decoder else contextlib.nullcontext
        yield from predict_files(
            self,
            paths,
            top_k=top_k,
            timeline=timeline,
            quiet=quiet,
            normalize=normalize,
            batch_s=BATCH_AUDIO_S,
        )

    def predict_proba(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Classifier protocol: 16 kHz mono float32 waves -> ``[N, K]`` probabilities (rows sum to 1).

        Waves are sorted by length and run in zero-padded batches of at most ``batch_size`` clips
        and :data:`BATCH_AUDIO_S` seconds of padded audio; the network masks the padding, so each
        clip's result does not depend on its batch mates. Raises :class:`AudioError` naming the
        clip (by position) if the model's output for it is not finite.
        """
        return self._probabilities(waves, [f"<wave {i}>" for i in range(len(waves))])

    def _probabilities(self, waves: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float32)
        if not len(waves):
            return out
        order = [int(i) for i in np.argsort([-w.size for w in waves], kind="stable")]
        budget = int(BATCH_AUDIO_S * self.sample_rate)
        start = 0
        while start < len(order):
            longest = max(1, waves[order[start]].size)  # sorted: the first clip of a batch is its longest
            count = max(1, min(self.batch_size, budget // longest))
            idx = order[start : start + count]
            start += count
            lengths = np.array([waves[i].size for i in idx], dtype=np.int64)
            batch = np.zeros((len(idx), int(lengths.max())), dtype=np.float32)
            for row, i in enumerate(idx):
                batch[row, : lengths[row]] = waves[i]
            np.clip(batch, -1.0, 1.0, out=batch)  # as decode does, for waves that did not come through it
            probs = self._run(batch, lengths)
            bad = ~np.isfinite(probs).all(axis=1)
            if bad.any():
                name = names[idx[int(np.flatnonzero(bad)[0])]]
                raise AudioError(
                    f"{name}: the model's output for this audio is not a number (NaN or infinite); "
                    f"the model {self.meta.get('path', '')} cannot classify it"
                )
            out[idx] = probs
        return out

    def _check_normalize(
        self, normalize: str | None, allowed: tuple[str, ...] = ("speaker", "folder")
    ) -> None:
        if normalize is not None and normalize not in allowed:
            expected = " or ".join(repr(a) for a in allowed)
            raise EmovoxError(f"normalize: expected {expected}, got {normalize!r}")
        if normalize is not None and not self.speaker_normalized:
            raise EmovoxError(
                f"{self.meta['path']}: this model has no speaker-normalised head (normalize={normalize!r}); "
                "train one with model.params.speaker_norm: true (encoder family, pooling: stats) "
                "and use the torch backend"
            )

    @property
    def speaker_normalized(self) -> bool:
        """Whether ``predict(..., normalize=...)`` is available (a speaker-normalised model on torch)."""
        return self.net is not None and bool(getattr(self.net, "speaker_norm", False))

    def speaker_session(self) -> SpeakerSession:
        """A running speaker normalisation for one speaker or session (a live stream, a long
        recording): see :class:`SpeakerSession`. Needs a speaker-normalised model on torch."""
        return SpeakerSession(self)

    def _run(self, batch: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One padded batch through the model -> probabilities."""
        if self.session is not None:
            return self.session.run(None, {"wave": batch, "lengths": lengths})[0]
        import torch

        with self._lock, torch.inference_mode(), torch_threads(self.threads):
            wave = torch.from_numpy(batch).to(self.device)
            lens = torch.from_numpy(lengths).to(self.device)
            return torch.softmax(self.net(wave, lens).float(), dim=-1).cpu().numpy()

    def _prediction(
        self, probs: np.ndarray, duration: float, path: str | None, top_k: int | None
    ) -> Prediction:
        limits.check_top_k(top_k)
        order = np.argsort(-probs, kind="stable")[: top_k or None]
        best = int(order[0])
        return Prediction(
            emotion=self.labels[best],
            confidence=float(probs[best]),
            probabilities={self.labels[i]: float(probs[i]) for i in order},
            duration=round(duration, 4),
            path=path,
        )

    # ------------------------------------------------------------------ long audio

    def _blocks(self, wave: np.ndarray) -> Iterator[np.ndarray]:
        """An in-memory wave as the blocks :meth:`stream` would give."""
        return wave_blocks(wave, self.sample_rate, BLOCK_S)

    def _predict_stream(
        self,
        blocks: Iterable[np.ndarray],
        name: str,
        path: str | None,
        top_k: int | None,
        *,
        timeline: bool = False,
        min_speech: float = 0.5,
        max_segment: float = 4.0,
        session: SpeakerSession | None = None,
    ) -> tuple[Prediction, list[Segment] | None]:
        """Classify a long recording from consecutive 16 kHz blocks, holding at most a window, a
        batch of windows and (with ``timeline``) a VAD chunk at once.

        The recording is cut into windows of :data:`WINDOW_S` seconds from its start; each window
        gets the bundle's preprocessing (windows that are silence or too short after trimming are
        left out) and the recording's probabilities are the windows' mean, weighted by their
        trimmed duration (:class:`~emovox.long_audio.WindowedMean`). With ``timeline`` the same
        pass also yields the VAD segments.
        """
        windows = WindowedMean(self, name, window_s=WINDOW_S, batch_s=BATCH_AUDIO_S)
        stream = self._timeline_stream(path, min_speech, max_segment, session) if timeline else None
        segments: list[Segment] = []
        for block in blocks:
            if not block.size:
                continue
            if stream is not None:
                segments.extend(stream.push(block))
            windows.push(block)
        windows.finish()
        if stream is not None:
            segments.extend(stream.finish())
        prediction = self._prediction(windows.mean(), windows.seconds, path, top_k)
        return prediction, (segments if timeline else None)

    # ------------------------------------------------------------------ speech activity

    def is_speech(self, wave: np.ndarray, sr: int = SAMPLE_RATE, *, min_speech: float = 0.25) -> bool:
        """True if ``wave`` holds at least ``min_speech`` seconds of speech (for streaming windows)."""
        arr = np.asarray(wave)
        if arr.size == 0 or not np.any(arr):
            return False
        audio = clip_samples(prepare_waveform(arr, sr, target_sr=SAMPLE_RATE))
        return bool(vad().regions(audio, min_speech=min_speech))

    def timeline(
        self,
        x: Input,
        sr: int | None = None,
        *,
        min_speech: float = 0.5,
        max_segment: float = 4.0,
        normalize: str | None = None,
    ) -> list[Segment]:
        """Emotion over time: speech regions found by the VAD, cut into segments of at most
        ``max_segment`` seconds (longer regions are split evenly, nearby short ones joined), each
        classified. Speech shorter than ``min_speech`` seconds and silence give no segment.

        Long recordings are processed chunk by chunk (files decoded as a stream), cutting between
        chunks in a pause, so memory does not grow with the recording's length.

        ``normalize="speaker"`` (a speaker-normalised model; the recording is one speaker or
        session): each segment is standardised with a running estimate over the segments so far
        (:class:`SpeakerSession`; the first segment gets the plain model).
        """
        check_timeline(min_speech, max_segment)
        self._check_normalize(normalize, ("speaker",))
        session = self.speaker_session() if normalize else None
        if self.sample_rate != SAMPLE_RATE:
            raise BundleError(
                f"{self.meta['path']}: timeline needs a 16 kHz model, this one uses {self.sample_rate} Hz"
            )
        if isinstance(x, (str, Path)) and self.is_long(header_seconds(x)):
            return self._timeline_blocks(self.stream(x), str(x), min_speech, max_segment, session)
        wave, path = self.decode(x, sr)
        return self._timeline_blocks(self._blocks(wave), path, min_speech, max_segment, session)

    def _timeline_stream(
        self, path: str | None, min_speech: float, max_segment: float, session: SpeakerSession | None
    ) -> TimelineStream:
        return TimelineStream(
            self,
            path,
            min_speech,
            max_segment,
            session,
            chunk_s=TIMELINE_CHUNK_S,
            tail_s=TIMELINE_TAIL_S,
        )

    def _timeline_blocks(
        self,
        blocks: Iterable[np.ndarray],
        path: str | None,
        min_speech: float,
        max_segment: float,
        session: SpeakerSession | None = None,
    ) -> list[Segment]:
        stream = self._timeline_stream(path, min_speech, max_segment, session)
        segments: list[Segment] = []
        for block in blocks:
            segments.extend(stream.push(block))
        return segments + stream.finish()


def _load_path(path: str | Path, sr: int) -> np.ndarray:
    """:func:`load_audio` for a path, with errors that say what is wrong with the file."""
    try:
        return load_audio(path, sr=sr)
    except OSError as exc:  # a folder on the way that may not be read (PermissionError) and the like
        raise unreadable(path, exc) from None
    except AudioError as exc:
        if UNRECOGNISED in str(exc) and Path(path).is_file():
            raise AudioError(f"{path}: not a readable audio file (not a format emovox can decode)") from None
        raise


__all__ = [
    "FileResult",
    "Prediction",
    "Recognizer",
    "Segment",
    "SpeakerSession",
    "VoiceActivityDetector",
    "check_device",
    "default_threads",
    "plan_segments",
    "vad",
]
