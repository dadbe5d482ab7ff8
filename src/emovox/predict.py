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
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from emovox import limits
from emovox.audio import SAMPLE_RATE, load_audio, prepare_waveform, trim_silence
from emovox.bundle import ONNX_FILE, WEIGHTS_FILE, load_bundle, read_meta, verify_checksum
from emovox.errors import AudioError, BundleError, ConfigError, EmovoxError
from emovox.speaker_stats import MIN_GROUP_CLIPS, RunningStats

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


@dataclass
class Segment:
    """The emotion predicted for one stretch of speech in a longer recording (times in seconds)."""

    start: float
    end: float
    emotion: str
    confidence: float
    probabilities: dict[str, float]

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
#: Models whose weights are at most this many bytes run on one thread by default (see
#: :func:`default_threads`); every shipped model is far below it.
SMALL_MODEL_BYTES = 20_000_000


@dataclass
class FileResult:
    """What :meth:`Recognizer.predict_files` yields for one file: a prediction (and its timeline
    segments when asked), or the error that made the file unusable."""

    path: str
    prediction: Prediction | None = None
    segments: list[Segment] | None = None
    error: EmovoxError | None = None


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
            import torch

            net, meta = load_bundle(model)
            net.to(torch.device(device))
            n_values = sum(p.numel() for p in net.parameters())
            chosen = threads if threads is not None else default_threads(4 * n_values)
            return cls(meta, net=net, device=device, batch_size=batch_size, threads=chosen)
        meta = read_meta(model)
        bundle = Path(meta["path"])
        if not (bundle / ONNX_FILE).is_file():
            raise BundleError(
                f"{bundle}: has no {ONNX_FILE}; run `emovox export {bundle}` to add one, "
                "or use the torch backend"
            )
        onnx_path = verify_checksum(bundle, meta, ONNX_FILE)
        try:
            weights = (bundle / WEIGHTS_FILE).stat().st_size
        except OSError:
            weights = onnx_path.stat().st_size
        chosen = threads if threads is not None else default_threads(weights)
        session = onnx_session(onnx_path, threads=chosen, device=device)
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
            _check_rate(sr, "<array>")
            return _clip(prepare_waveform(x, sr, target_sr=self.sample_rate)), None
        if isinstance(x, (str, Path)):
            return _clip(_load_path(x, self.sample_rate)), str(x)
        if isinstance(x, (bytes, bytearray, memoryview)):
            return _clip(load_audio(bytes(x), sr=self.sample_rate, name="<bytes>")), None
        if hasattr(x, "read"):
            return _clip(load_audio(x, sr=self.sample_rate)), None
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
        return _stream_file(path, self.sample_rate)

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
        _check_top_k(top_k)
        self._check_normalize(normalize)
        items = x if isinstance(x, list) else [x]
        out: list[Prediction | None] = [None] * len(items)
        short: list[int] = []
        waves, durations, paths = [], [], []
        for i, item in enumerate(items):
            if isinstance(item, (str, Path)) and self.is_long(_header_seconds(item)):
                out[i] = self._predict_stream(self.stream(item), str(item), str(item), top_k)[0]
                continue
            wave, path = self.decode(item, sr)
            name = path or _name(item)
            if self.is_long(wave.size / self.sample_rate):
                out[i] = self._predict_stream(_slices(wave, self.sample_rate), name, path, top_k)[0]
                continue
            short.append(i)
            waves.append(self.preprocess(wave, name=name))
            durations.append(wave.size / self.sample_rate)
            paths.append(path)
        names = [paths[j] or _name(items[i]) for j, i in enumerate(short)]
        probs = self._probabilities(waves, names)
        if normalize is not None:
            groups = [
                "all" if normalize == "speaker" else str(Path(p).parent) if p else "<arrays>" for p in paths
            ]
            self._group_probabilities(waves, groups, probs)
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
        _check_top_k(top_k)
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
        files as one speaker, ``"folder"`` the files of each folder (consecutive paths with the same
        parent: list folders in order, as ``emovox predict`` does). Each group's short files are
        standardised over the group, holding one statistics vector per file, not the audio;
        long files keep their windowed plain prediction; timeline segments use a running estimate
        over the group's recordings (:class:`SpeakerSession`).
        """
        _check_top_k(top_k)
        self._check_normalize(normalize)
        if timeline and self.sample_rate != SAMPLE_RATE:
            raise BundleError(
                f"{self.meta['path']}: timeline needs a {SAMPLE_RATE} Hz model, "
                f"this one uses {self.sample_rate} Hz"
            )
        quiet = _native_stderr_silenced if quiet_decoder else contextlib.nullcontext
        if normalize is not None:

            def key(p: str | Path) -> str:
                return "all" if normalize == "speaker" else str(Path(p).parent)

            for _, group in itertools.groupby(paths, key=key):
                yield from self._predict_group(list(group), top_k, timeline, quiet)
            return
        pending: list[tuple[str, np.ndarray, np.ndarray]] = []  # path, decoded wave, preprocessed clip
        pending_samples = 0
        for raw in paths:
            path = str(raw)
            try:
                with quiet():
                    if self.is_long(_header_seconds(raw)):
                        prediction, segments = self._predict_stream(
                            self.stream(raw), path, path, top_k, timeline=timeline
                        )
                        long = FileResult(path, prediction, segments)
                    else:
                        wave, _ = self.decode(raw)
                        clip = self.preprocess(wave, name=path)
                        long = None
            except EmovoxError as exc:
                yield from self._flush(pending, top_k, timeline)
                pending, pending_samples = [], 0
                yield FileResult(path, error=exc)
                continue
            if long is not None:
                yield from self._flush(pending, top_k, timeline)
                pending, pending_samples = [], 0
                yield long
                continue
            pending.append((path, wave, clip))
            pending_samples += wave.size
            if pending_samples >= BATCH_AUDIO_S * self.sample_rate or len(pending) >= 4 * self.batch_size:
                yield from self._flush(pending, top_k, timeline)
                pending, pending_samples = [], 0
        yield from self._flush(pending, top_k, timeline)

    def _predict_group(
        self, paths: Sequence[str | Path], top_k: int | None, timeline: bool, quiet: Any
    ) -> Iterator[FileResult]:
        """:meth:`predict_files` for the files of one speaker (``normalize``): see there."""
        import torch

        session = self.speaker_session() if timeline else None
        results: list[FileResult] = []
        members: list[tuple[int, float]] = []  # (index in results, duration) of the short files
        vectors = []
        for raw in paths:
            path = str(raw)
            try:
                with quiet():
                    if self.is_long(_header_seconds(raw)):
                        prediction, segments = self._predict_stream(
                            self.stream(raw), path, path, top_k, timeline=timeline, session=session
                        )
                        results.append(FileResult(path, prediction, segments))
                        continue
                    wave, _ = self.decode(raw)
                    clip = self.preprocess(wave, name=path)
                with self._lock, torch.inference_mode(), _torch_threads(self.threads):
                    vector = self._raw_stats([clip])[0].cpu()
                if not torch.isfinite(vector).all():
                    raise AudioError(f"{path}: the model's statistics of this audio are not finite numbers")
                segments = None
                if session is not None:
                    segments = self._timeline_blocks(_slices(wave, self.sample_rate), path, 0.5, 4.0, session)
            except EmovoxError as exc:
                results.append(FileResult(path, error=exc))
                continue
            members.append((len(results), wave.size / self.sample_rate))
            vectors.append(vector)
            results.append(FileResult(path, None, segments))
        if vectors:
            with self._lock, torch.inference_mode(), _torch_threads(self.threads):
                x = torch.stack(vectors).to(self.device)
                if len(vectors) >= MIN_GROUP_CLIPS:
                    logits = self.net.speaker_logits(x)
                else:
                    logits = self.net.head(self.net.normalize(x, None), None)
                probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            for (i, duration), row in zip(members, probs, strict=True):
                r = results[i]
                results[i] = FileResult(r.path, self._prediction(row, duration, r.path, top_k), r.segments)
        yield from results

    def _flush(
        self, pending: list[tuple[str, np.ndarray, np.ndarray]], top_k: int | None, timeline: bool
    ) -> Iterator[FileResult]:
        """Classify the decoded short files of :meth:`predict_files` together, then their timelines."""
        if not pending:
            return
        clips = [clip for _, _, clip in pending]
        names = [path for path, _, _ in pending]
        try:
            probs = self._probabilities(clips, names)
            rows: list[np.ndarray | EmovoxError] = list(probs)
        except EmovoxError:  # one bad clip: find it, the others still get their prediction
            rows = []
            for clip, name in zip(clips, names, strict=True):
                try:
                    rows.append(self._probabilities([clip], [name])[0])
                except EmovoxError as exc:
                    rows.append(exc)
        for (path, wave, _), row in zip(pending, rows, strict=True):
            if isinstance(row, EmovoxError):
                yield FileResult(path, error=row)
                continue
            prediction = self._prediction(row, wave.size / self.sample_rate, path, top_k)
            segments = None
            if timeline:
                try:
                    segments = self._timeline_blocks(_slices(wave, self.sample_rate), path, 0.5, 4.0)
                except EmovoxError as exc:
                    yield FileResult(path, error=AudioError(f"{path}: timeline failed ({exc})"))
                    continue
            yield FileResult(path, prediction, segments)

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

    def _group_probabilities(
        self, waves: Sequence[np.ndarray], groups: Sequence[str], out: np.ndarray
    ) -> None:
        """Rows of ``out`` for groups of at least MIN_GROUP_CLIPS clips from the speaker head."""
        import torch

        keys = np.asarray(groups)
        with self._lock, torch.inference_mode(), _torch_threads(self.threads):
            x = self._raw_stats(waves)
            for g in np.unique(keys):
                idx = np.flatnonzero(keys == g)
                if len(idx) >= MIN_GROUP_CLIPS:
                    logits = self.net.speaker_logits(x[torch.from_numpy(idx)])
                    out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def _raw_stats(self, waves: Sequence[np.ndarray]) -> Any:
        """Raw pooled statistics ``[N, D]`` of preprocessed waves (a speaker-normalised torch model;
        call with the lock held, in inference mode)."""
        import torch

        from emovox.features import pad_batch

        rows = []
        for start in range(0, len(waves), self.batch_size):
            wave, lengths = pad_batch(list(waves[start : start + self.batch_size]))
            rows.append(self.net.raw_inputs(wave.to(self.device), lengths.to(self.device))[0])
        return torch.cat(rows) if rows else torch.zeros(0, self.net.input_dim, device=self.device)

    def _running_probabilities(
        self, waves: Sequence[np.ndarray], stats: RunningStats, names: Sequence[str]
    ) -> np.ndarray:
        """Probabilities of consecutive clips of one speaker, each standardised with the running
        estimate ``stats`` after adding it (the plain head until ``stats`` is ready)."""
        import torch

        with self._lock, torch.inference_mode(), _torch_threads(self.threads):
            x = self._raw_stats(waves)
            logits = self.net.head(self.net.normalize(x, None), None)
            for i in range(x.shape[0]):
                stats.update(x[i])
                if stats.ready:
                    logits[i] = self.net.speaker_head(stats.standardize(x[i : i + 1]))[0]
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        bad = ~np.isfinite(probs).all(axis=1)
        if bad.any():
            raise AudioError(
                f"{names[int(np.flatnonzero(bad)[0])]}: the model's output for this audio is not a number "
                f"(NaN or infinite); the model {self.meta.get('path', '')} cannot classify it"
            )
        return probs

    def speaker_session(self) -> SpeakerSession:
        """A running speaker normalisation for one speaker or session (a live stream, a long
        recording): see :class:`SpeakerSession`. Needs a speaker-normalised model on torch."""
        return SpeakerSession(self)

    def _run(self, batch: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One padded batch through the model -> probabilities."""
        if self.session is not None:
            return self.session.run(None, {"wave": batch, "lengths": lengths})[0]
        import torch

        with self._lock, torch.inference_mode(), _torch_threads(self.threads):
            wave = torch.from_numpy(batch).to(self.device)
            lens = torch.from_numpy(lengths).to(self.device)
            return torch.softmax(self.net(wave, lens).float(), dim=-1).cpu().numpy()

    def _prediction(
        self, probs: np.ndarray, duration: float, path: str | None, top_k: int | None
    ) -> Prediction:
        _check_top_k(top_k)
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
        trimmed duration. With ``timeline`` the same pass also yields the VAD segments.
        """
        window = int(WINDOW_S * self.sample_rate)
        total = np.zeros(len(self.labels), dtype=np.float64)
        weight = 0
        seen = 0
        batch: list[np.ndarray] = []
        batch_names: list[str] = []
        parts: list[np.ndarray] = []
        buffered = 0
        stream = _TimelineStream(self, path, min_speech, max_segment, session) if timeline else None
        segments: list[Segment] = []

        def classify() -> None:
            nonlocal weight
            if batch:
                probs = self._probabilities(batch, batch_names)
                sizes = np.array([c.size for c in batch], dtype=np.float64)
                total[:] += sizes @ probs.astype(np.float64)
                weight += int(sizes.sum())
                batch.clear()
                batch_names.clear()

        def take(piece: np.ndarray, start: int) -> None:
            sr = self.sample_rate
            label = f"{name} ({start / sr:.0f}-{(start + piece.size) / sr:.0f} s)"
            try:
                clip = self.preprocess(piece, name=label)
            except AudioError:  # a silent or too short window: nothing to classify there
                return
            batch.append(clip)
            batch_names.append(label)
            if sum(c.size for c in batch) >= BATCH_AUDIO_S * sr:
                classify()

        for block in blocks:
            if not block.size:
                continue
            if stream is not None:
                segments.extend(stream.push(block))
            parts.append(block)
            buffered += block.size
            while buffered >= window:
                joined = np.concatenate(parts) if len(parts) > 1 else parts[0]
                take(joined[:window], seen)
                seen += window
                rest = joined[window:]
                parts, buffered = ([rest] if rest.size else []), rest.size
        if buffered:
            take(np.concatenate(parts), seen)
            seen += buffered
        classify()
        if stream is not None:
            segments.extend(stream.finish())
        if not weight:
            raise AudioError(
                f"{name}: no part of this {seen / self.sample_rate:.0f} s recording is usable "
                "(silence, or sounds shorter than the model's minimum duration)"
            )
        prediction = self._prediction(
            (total / weight).astype(np.float32), seen / self.sample_rate, path, top_k
        )
        return prediction, (segments if timeline else None)

    # ------------------------------------------------------------------ speech activity

    def is_speech(self, wave: np.ndarray, sr: int = SAMPLE_RATE, *, min_speech: float = 0.25) -> bool:
        """True if ``wave`` holds at least ``min_speech`` seconds of speech (for streaming windows)."""
        arr = np.asarray(wave)
        if arr.size == 0 or not np.any(arr):
            return False
        audio = _clip(prepare_waveform(arr, sr, target_sr=SAMPLE_RATE))
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
        _check_timeline(min_speech, max_segment)
        self._check_normalize(normalize, ("speaker",))
        session = self.speaker_session() if normalize else None
        if self.sample_rate != SAMPLE_RATE:
            raise BundleError(
                f"{self.meta['path']}: timeline needs a 16 kHz model, this one uses {self.sample_rate} Hz"
            )
        if isinstance(x, (str, Path)) and self.is_long(_header_seconds(x)):
            return self._timeline_blocks(self.stream(x), str(x), min_speech, max_segment, session)
        wave, path = self.decode(x, sr)
        return self._timeline_blocks(_slices(wave, SAMPLE_RATE), path, min_speech, max_segment, session)

    def _timeline_blocks(
        self,
        blocks: Iterable[np.ndarray],
        path: str | None,
        min_speech: float,
        max_segment: float,
        session: SpeakerSession | None = None,
    ) -> list[Segment]:
        stream = _TimelineStream(self, path, min_speech, max_segment, session)
        segments: list[Segment] = []
        for block in blocks:
            segments.extend(stream.push(block))
        return segments + stream.finish()

    def _classify_spans(
        self,
        wave: np.ndarray,
        offset: int,
        regions: Sequence[tuple[int, int]],
        path: str | None,
        min_speech: float,
        max_segment: float,
        session: SpeakerSession | None = None,
    ) -> list[Segment]:
        spans = plan_segments(
            regions, min_speech=max(min_speech, self.min_duration), max_segment=max_segment, sr=SAMPLE_RATE
        )
        chosen, clips = [], []
        for start, end in spans:
            clip = wave[start:end]
            if self.trim:
                clip = trim_silence(clip, SAMPLE_RATE)
            if clip.size >= self.min_duration * SAMPLE_RATE and np.any(clip):
                chosen.append((start + offset, end + offset))
                clips.append(clip)
        names = [f"{path or '<audio>'} ({a / SAMPLE_RATE:.2f}-{b / SAMPLE_RATE:.2f} s)" for a, b in chosen]
        if session is not None:
            probs = session.probabilities(clips, names)
        else:
            probs = self._probabilities(clips, names)
        segments = []
        for (start, end), p in zip(chosen, probs, strict=True):
            pred = self._prediction(p, (end - start) / SAMPLE_RATE, path, None)
            segments.append(
                Segment(
                    start=round(start / SAMPLE_RATE, 3),
                    end=round(end / SAMPLE_RATE, 3),
                    emotion=pred.emotion,
                    confidence=pred.confidence,
                    probabilities=pred.probabilities,
                )
            )
        return segments


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 1):
        raise ConfigError(f"top_k must be a whole number of at least 1, got {top_k!r}")


def _name(item: Any) -> str:
    if isinstance(item, np.ndarray):
        return "<array>"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(getattr(item, "name", None) or "<audio>")


class _TimelineStream:
    """The VAD timeline of a recording fed block by block, holding at most ``TIMELINE_CHUNK_S`` +
    ``TIMELINE_TAIL_S`` seconds (plus a block).

    Once that much is buffered the VAD runs on the buffer; speech regions that end before its last
    ``TIMELINE_TAIL_S`` seconds are final and classified, and the buffer is cut in the pause after
    the last of them (in speech that does not pause, at the tail: :func:`_final_regions`). A
    recording up to that length is analysed in one piece, exactly as a whole.
    """

    def __init__(
        self,
        rec: Recognizer,
        path: str | None,
        min_speech: float,
        max_segment: float,
        session: SpeakerSession | None = None,
    ) -> None:
        self.rec, self.path, self.session = rec, path, session
        self.min_speech, self.max_segment = min_speech, max_segment
        self.parts: list[np.ndarray] = []
        self.size = 0
        self.offset = 0

    def _regions(self, buffer: np.ndarray) -> list[tuple[int, int]]:
        return vad().regions(buffer, min_speech=min(self.min_speech, 0.25))

    def push(self, block: np.ndarray) -> list[Segment]:
        self.parts.append(block)
        self.size += block.size
        chunk, tail = int(TIMELINE_CHUNK_S * SAMPLE_RATE), int(TIMELINE_TAIL_S * SAMPLE_RATE)
        if self.size < chunk + tail:
            return []
        buffer = np.concatenate(self.parts)
        final, cut = _final_regions(self._regions(buffer), buffer.size - tail, chunk // 2)
        segments = self.rec._classify_spans(
            buffer, self.offset, final, self.path, self.min_speech, self.max_segment, self.session
        )
        rest = buffer[cut:].copy()
        self.parts, self.size = [rest], rest.size
        self.offset += cut
        return segments

    def finish(self) -> list[Segment]:
        if not self.size:
            return []
        buffer = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.parts, self.size = [], 0
        regions = self._regions(buffer)
        return self.rec._classify_spans(
            buffer, self.offset, regions, self.path, self.min_speech, self.max_segment, self.session
        )


def _final_regions(
    regions: Sequence[tuple[int, int]], limit: int, early: int
) -> tuple[list[tuple[int, int]], int]:
    """Which speech regions of a buffer are final, and where to cut it: ``(final regions, cut)``.

    Regions ending by ``limit`` are final. The cut goes in the pause between the last of them and
    the region running past ``limit`` (at ``limit`` if none does). A region running past ``limit``
    with no final region before it is cut just before its start if it starts after ``early``,
    else (continuous speech) split at ``limit``, its first part final.
    """
    final = [(a, b) for a, b in regions if b <= limit]
    crossing = next(((a, b) for a, b in regions if b > limit and a < limit), None)
    if crossing is None:
        return final, limit
    if final:
        return final, (final[-1][1] + crossing[0]) // 2
    if crossing[0] > early:
        return [], max(1, crossing[0] - SAMPLE_RATE // 4)
    return [(crossing[0], limit)], limit


def _check_timeline(min_speech: Any, max_segment: Any) -> None:
    for key, value in (("timeline.min_speech", min_speech), ("timeline.max_segment", max_segment)):
        limits.check(key, value, key.split(".")[1])
    if min_speech > max_segment:
        raise ConfigError(
            f"timeline: need 0 < min_speech <= max_segment, "
            f"got min_speech={min_speech}, max_segment={max_segment}"
        )


def _check_rate(sr: Any, name: str) -> None:
    rule = limits.RANGES["predict.sample_rate"]
    if isinstance(sr, bool) or not isinstance(sr, Integral) or not rule.contains(sr):
        raise AudioError(
            f"{name}: invalid sample rate {sr!r} (expected a whole number of Hz from "
            f"{int(rule.lo)} to {int(rule.hi)})"
        )


def _clip(wave: np.ndarray) -> np.ndarray:
    """``wave`` with samples beyond [-1, 1] clipped (a new array only when some are)."""
    if wave.size and (float(wave.max()) > 1.0 or float(wave.min()) < -1.0):
        return np.clip(wave, -1.0, 1.0)
    return wave


def _unreadable(path: str | Path, exc: OSError) -> AudioError:
    return AudioError(f"{path}: cannot be read ({exc.strerror or exc})")


# libsndfile's message when no decoder recognises a file's content, whatever the file is
_UNRECOGNISED = "does not exist or is not a regular file"


def _load_path(path: str | Path, sr: int) -> np.ndarray:
    """:func:`load_audio` for a path, with errors that say what is wrong with the file."""
    try:
        return load_audio(path, sr=sr)
    except OSError as exc:  # a folder on the way that may not be read (PermissionError) and the like
        raise _unreadable(path, exc) from None
    except AudioError as exc:
        if _UNRECOGNISED in str(exc) and Path(path).is_file():
            raise AudioError(f"{path}: not a readable audio file (not a format emovox can decode)") from None
        raise


def _header_seconds(path: str | Path) -> float:
    """Duration of a file from its header (0 when the header does not say; decoding tells the rest)."""
    import soundfile as sf

    try:
        if not Path(path).is_file():
            return 0.0
        info = sf.info(str(path))
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except (RuntimeError, TypeError, ValueError, EOFError):
        return 0.0  # not audio: load_audio gives the error
    if not info.samplerate or info.frames <= 0:
        return 0.0
    return info.frames / info.samplerate


def _slices(wave: np.ndarray, sr: int) -> Iterator[np.ndarray]:
    """An in-memory wave as the blocks a stream would give."""
    step = int(BLOCK_S * sr)
    for start in range(0, wave.size, step):
        yield wave[start : start + step]


def _stream_file(path: str | Path, sr: int) -> Iterator[np.ndarray]:
    """Decode a file in :data:`BLOCK_S` blocks, mixed down to mono and resampled to ``sr`` as a
    stream (soxr keeps its state between blocks, so the samples equal a whole-file decode)."""
    import soundfile as sf
    import soxr

    from emovox.audio import _truncation

    try:
        f = sf.SoundFile(str(path))
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except (RuntimeError, TypeError, ValueError, EOFError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({str(exc).splitlines()[0][:200]})") from None
    with f:
        truncated = _truncation(f.extra_info)
        if truncated:
            raise AudioError(f"{path}: file is truncated ({truncated})")
        rate = f.samplerate
        _check_rate(rate, str(path))
        resampler = soxr.ResampleStream(rate, sr, 1, dtype="float32", quality="HQ") if rate != sr else None
        got = 0
        try:
            for block in f.blocks(blocksize=int(BLOCK_S * rate), dtype="float32", always_2d=True):
                mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                if not np.isfinite(mono).all():
                    raise AudioError(f"{path}: audio contains NaN or infinite samples")
                got += mono.size
                out = resampler.resample_chunk(mono) if resampler is not None else mono
                if out.size:
                    yield _clip(np.ascontiguousarray(out, dtype=np.float32))
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise AudioError(
                f"{path}: not a readable audio file ({str(exc).splitlines()[0][:200]})"
            ) from None
        if resampler is not None:
            out = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if out.size:
                yield _clip(np.ascontiguousarray(out, dtype=np.float32))
        if not got:
            raise AudioError(f"{path}: audio has no samples")


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
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


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads, restoring the previous setting afterwards."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if before != threads:
            torch.set_num_threads(before)


def default_threads(model_bytes: int) -> int:
    """Inference threads when none are asked for: 1 for a small model (weights up to
    :data:`SMALL_MODEL_BYTES`, every shipped one), else the cores, at most 4.

    A small network on a clip of a few seconds gains little from more threads and loses a lot
    when the cores are busy (measured on a loaded 2-core machine: 7 ms with one thread against
    124-189 ms with two for the shipped cnn1d); ``--threads`` / ``threads=`` override it.
    """
    if model_bytes <= SMALL_MODEL_BYTES:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def check_device(device: Any, backend: str = "torch") -> None:
    """Raise :class:`ConfigError` unless ``device`` names a device this machine has for ``backend``."""
    if not isinstance(device, str) or not device.strip():
        raise ConfigError(f"device: expected a device name such as cpu, cuda, cuda:1 or mps, got {device!r}")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()) or (index and kind != "cuda"):
        raise ConfigError(f"device {device!r}: unknown device (use cpu, cuda, cuda:N or mps)")
    if kind == "cpu":
        return
    if backend == "onnx":
        if kind == "mps":
            raise ConfigError(f"device {device!r}: the onnx backend runs on cpu or cuda")
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                f"device {device!r}: this onnxruntime has no CUDA support (install onnxruntime-gpu), "
                "use --device cpu"
            )
        return
    import torch

    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {device!r}: no Apple GPU (MPS) is available here; use --device cpu")
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"device {device!r}: not available ({build}); use --device cpu")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError(
            f"device {device!r}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
        )


def plan_segments(
    regions: Sequence[tuple[int, int]],
    *,
    min_speech: float,
    max_segment: float,
    sr: int = SAMPLE_RATE,
    max_gap: float = 0.3,
) -> list[tuple[int, int]]:
    """Turn VAD speech regions (sample ranges) into classification segments.

    Regions closer than ``max_gap`` seconds are joined while the result stays within
    ``max_segment``; regions longer than ``max_segment`` are split into equal parts; segments
    shorter than ``min_speech`` are dropped.
    """
    limit, gap = int(max_segment * sr), int(max_gap * sr)
    merged: list[list[int]] = []
    for start, end in sorted(regions):
        if merged and start - merged[-1][1] <= gap and end - merged[-1][0] <= limit:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out: list[tuple[int, int]] = []
    for start, end in merged:
        n = max(1, math.ceil((end - start) / limit))
        bounds = np.linspace(start, end, n + 1).round().astype(int)
        out.extend((int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    return [(a, b) for a, b in out if b - a >= min_speech * sr]


# --------------------------------------------------------------------------- onnxruntime


def onnx_session(path: Path, *, threads: int | None = None, device: str = "cpu") -> Any:
    """An onnxruntime session tuned for this model: full graph optimisation, ``threads`` intra-op
    threads (default: :func:`default_threads` for the model file's size), sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or default_threads(path.stat().st_size)
    opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        raise BundleError(
            f"{path}: onnxruntime cannot load this model ({str(exc).splitlines()[0]})"
        ) from None


# --------------------------------------------------------------------------- voice activity detection


class VoiceActivityDetector:
    """Speech regions in 16 kHz audio.

    Uses Silero VAD's sequence ONNX model through onnxruntime (no torch.jit, no per-call state,
    so it is thread-safe); falls back to webrtcvad if Silero cannot be loaded.
    """

    def __init__(self) -> None:
        self.name: str
        try:
            self._silero = _load_silero()
            self.name = "silero"
        except Exception:  # any failure to import/load silero: use webrtcvad instead
            import webrtcvad

            self._silero = None
            self._webrtc = webrtcvad.Vad(2)
            self.name = "webrtcvad"

    def regions(
        self, wave: np.ndarray, *, min_speech: float = 0.25, min_silence: float = 0.1, threshold: float = 0.5
    ) -> list[tuple[int, int]]:
        """Speech regions ``(start, end)`` in samples of a 16 kHz mono float32 wave."""
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        if self._silero is not None:
            from silero_vad.sequence_vad import get_speech_timestamps_sequence

            stamps = get_speech_timestamps_sequence(
                wave,
                self._silero,
                threshold=threshold,
                sampling_rate=SAMPLE_RATE,
                min_speech_duration_ms=int(min_speech * 1000),
                min_silence_duration_ms=int(min_silence * 1000),
            )
            return [(int(s["start"]), int(s["end"])) for s in stamps]
        return self._webrtc_regions(wave, min_speech=min_speech, min_silence=min_silence)

    def _webrtc_regions(
        self, wave: np.ndarray, *, min_speech: float, min_silence: float
    ) -> list[tuple[int, int]]:
        frame = SAMPLE_RATE * 30 // 1000
        pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2")
        flags = [
            self._webrtc.is_speech(pcm[i : i + frame].tobytes(), SAMPLE_RATE)
            for i in range(0, pcm.size - frame + 1, frame)
        ]
        regions: list[list[int]] = []
        for k, speech in enumerate(flags):
            if not speech:
                continue
            start, end = k * frame, (k + 1) * frame
            if regions and start - regions[-1][1] <= min_silence * SAMPLE_RATE:
                regions[-1][1] = end
            else:
                regions.append([start, end])
        return [(a, b) for a, b in regions if b - a >= min_speech * SAMPLE_RATE]


def _load_silero() -> Any:
    """Silero's sequence ONNX model. Importing silero_vad sets torch to one thread, so restore it."""
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    finally:
        torch.set_num_threads(threads)
    return load_silero_vad(sequence=True)


_VAD: VoiceActivityDetector | None = None
_VAD_LOCK = threading.Lock()


def vad() -> VoiceActivityDetector:
    """The process-wide voice activity detector, loaded on first use."""
    global _VAD
    with _VAD_LOCK:
        if _VAD is None:
            _VAD = VoiceActivityDetector()
        return _VAD


__all__ = [
    "FileResult",
    "Prediction",
    "Recognizer",
    "Segment",
    "VoiceActivityDetector",
    "check_device",
    "default_threads",
    "plan_segments",
    "vad",
]


class SpeakerSession:
    """Running speaker normalisation for clips of one speaker or session, in the order they come:
    a live stream's windows, a long recording's timeline segments, a WebSocket connection.

    Each clip is added to a running estimate of the speaker's encoder statistics
    (:class:`~emovox.speaker_stats.RunningStats`) and classified by the model's speaker head on its
    statistics standardised with everything seen so far; the first clip (fewer than
    :data:`~emovox.speaker_stats.MIN_GROUP_CLIPS`) gets the plain model. Memory does not grow with
    the session. Not shared between threads: one session per stream.
    """

    def __init__(self, rec: Recognizer) -> None:
        if not rec.speaker_normalized:
            raise EmovoxError(
                f"{rec.meta['path']}: this model has no speaker-normalised head on the "
                f"{rec.backend} backend; speaker normalisation needs model.params.speaker_norm: true "
                "and the torch backend"
            )
        self.rec = rec
        self.stats = RunningStats(rec.net.speaker_prior_var)

    @property
    def clips(self) -> int:
        """Clips seen so far."""
        return self.stats.n

    def probabilities(self, waves: Sequence[np.ndarray], names: Sequence[str] | None = None) -> np.ndarray:
        """``[N, K]`` probabilities of consecutive preprocessed 16 kHz clips, each added in turn."""
        names = list(names) if names is not None else [f"<wave {i}>" for i in range(len(waves))]
        return self.rec._running_probabilities(waves, self.stats, names)

    def predict(self, x: Input, sr: int | None = None, top_k: int | None = None) -> Prediction:
        """Decode, preprocess and classify one clip of this speaker (see :meth:`Recognizer.predict`)."""
        _check_top_k(top_k)
        wave, path = self.rec.decode(x, sr)
        name = path or _name(x)
        clip = self.rec.preprocess(wave, name=name)
        probs = self.probabilities([clip], [name])[0]
        return self.rec._prediction(probs, wave.size / self.rec.sample_rate, path, top_k)
