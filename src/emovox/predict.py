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
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from emovox.audio import SAMPLE_RATE, load_audio, prepare_waveform, trim_silence
from emovox.bundle import ONNX_FILE, load_bundle, read_meta, verify_checksum
from emovox.errors import AudioError, BundleError, ConfigError

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


class Recognizer:
    """Emotion recognition with a model bundle; safe to call from several threads.

    Build with :meth:`load`. ``predict`` takes a path, raw file bytes, a binary file object, a
    NumPy array (with ``sr``) or a list of those (decoded one by one, then classified in
    length-sorted padded batches). ``predict_proba`` is the classifier protocol used by
    :mod:`emovox.evaluation` (already-loaded 16 kHz waves in, ``[N, K]`` probabilities out).
    """

    def __init__(
        self,
        meta: dict[str, Any],
        *,
        net: Any = None,
        session: Any = None,
        device: str = "cpu",
        batch_size: int = 16,
    ) -> None:
        if (net is None) == (session is None):
            raise ValueError("Recognizer needs exactly one of a torch network or an onnxruntime session")
        self.meta = meta
        self.labels: list[str] = list(meta["model"]["labels"])
        self.sample_rate: int = int(meta.get("sample_rate", SAMPLE_RATE))
        self.trim: bool = bool(meta["preprocessing"]["trim_silence"])
        self.min_duration: float = float(meta["preprocessing"]["min_duration"])
        self.backend: Backend = "torch" if net is not None else "onnx"
        self.device = device
        self.batch_size = batch_size
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
        onnxruntime alone; ``threads`` sets its intra-op threads (default: all cores, up to 4).
        """
        if backend == "torch":
            import torch

            net, meta = load_bundle(model)
            net.to(torch.device(device))
            return cls(meta, net=net, device=device, batch_size=batch_size)
        if backend == "onnx":
            meta = read_meta(model)
            bundle = Path(meta["path"])
            if not (bundle / ONNX_FILE).is_file():
                raise BundleError(
                    f"{bundle}: has no {ONNX_FILE}; run `emovox export {bundle}` to add one, "
                    "or use the torch backend"
                )
            onnx_path = verify_checksum(bundle, meta, ONNX_FILE)
            session = onnx_session(onnx_path, threads=threads, device=device)
            return cls(meta, session=session, device=device, batch_size=batch_size)
        raise ConfigError(f"backend: unknown backend {backend!r} (choose torch or onnx)")

    # ------------------------------------------------------------------ inputs

    def decode(self, x: Input, sr: int | None = None) -> tuple[np.ndarray, str | None]:
        """Decode one input to a 16 kHz mono float32 waveform (untrimmed) and its path, if any."""
        if isinstance(x, np.ndarray):
            if sr is None:
                raise AudioError("<array>: pass the sample rate (sr=...) together with a NumPy array")
            return prepare_waveform(x, sr, target_sr=self.sample_rate), None
        if isinstance(x, (str, Path)):
            return load_audio(x, sr=self.sample_rate), str(x)
        if isinstance(x, (bytes, bytearray, memoryview)):
            return load_audio(bytes(x), sr=self.sample_rate, name="<bytes>"), None
        if hasattr(x, "read"):
            return load_audio(x, sr=self.sample_rate), None
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

    # ------------------------------------------------------------------ prediction

    def predict(
        self, x: Input | list[Input], sr: int | None = None, top_k: int | None = None
    ) -> Prediction | list[Prediction]:
        """Predict the emotion of one input, or of each input of a list (batched).

        ``sr`` is the sample rate of NumPy array inputs. Raises :class:`AudioError` naming the input
        that cannot be used (for lists: the first one).
        """
        _check_top_k(top_k)
        items = x if isinstance(x, list) else [x]
        waves, durations, paths = [], [], []
        for item in items:
            wave, path = self.decode(item, sr)
            waves.append(self.preprocess(wave, name=path or _name(item)))
            durations.append(wave.size / self.sample_rate)
            paths.append(path)
        probs = self.predict_proba(waves)
        out = [
            self._prediction(p, d, path, top_k) for p, d, path in zip(probs, durations, paths, strict=True)
        ]
        return out if isinstance(x, list) else out[0]

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
        probs = self.predict_proba(waves)
        durations = durations if durations is not None else [w.size / self.sample_rate for w in waves]
        paths = paths if paths is not None else [None] * len(waves)
        return [
            self._prediction(p, d, path, top_k) for p, d, path in zip(probs, durations, paths, strict=True)
        ]

    def predict_proba(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Classifier protocol: 16 kHz mono float32 waves -> ``[N, K]`` probabilities (rows sum to 1).

        Waves are sorted by length and run in zero-padded batches of ``batch_size``; the network
        masks the padding, so each clip's result does not depend on its batch mates.
        """
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float32)
        if not waves:
            return out
        order = np.argsort([-w.size for w in waves], kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            lengths = np.array([waves[i].size for i in idx], dtype=np.int64)
            batch = np.zeros((len(idx), int(lengths.max())), dtype=np.float32)
            for row, i in enumerate(idx):
                batch[row, : lengths[row]] = waves[i]
            out[idx] = self._run(batch, lengths)
        return out

    def _run(self, batch: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One padded batch through the model -> probabilities."""
        if self.session is not None:
            return self.session.run(None, {"wave": batch, "lengths": lengths})[0]
        import torch

        with self._lock, torch.inference_mode():
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

    # ------------------------------------------------------------------ speech activity

    def is_speech(self, wave: np.ndarray, sr: int = SAMPLE_RATE, *, min_speech: float = 0.25) -> bool:
        """True if ``wave`` holds at least ``min_speech`` seconds of speech (for streaming windows)."""
        arr = np.asarray(wave)
        if arr.size == 0 or not np.any(arr):
            return False
        audio = prepare_waveform(arr, sr, target_sr=SAMPLE_RATE)
        return bool(vad().regions(audio, min_speech=min_speech))

    def timeline(
        self, x: Input, sr: int | None = None, *, min_speech: float = 0.5, max_segment: float = 4.0
    ) -> list[Segment]:
        """Emotion over time: speech regions found by the VAD, cut into segments of at most
        ``max_segment`` seconds (longer regions are split evenly, nearby short ones joined), each
        classified. Speech shorter than ``min_speech`` seconds and silence give no segment."""
        if min_speech <= 0 or max_segment <= 0 or min_speech > max_segment:
            raise ConfigError(
                f"timeline: need 0 < min_speech <= max_segment, "
                f"got min_speech={min_speech}, max_segment={max_segment}"
            )
        wave, path = self.decode(x, sr)
        if self.sample_rate != SAMPLE_RATE:
            raise BundleError(
                f"{self.meta['path']}: timeline needs a 16 kHz model, this one uses {self.sample_rate} Hz"
            )
        spans = plan_segments(
            vad().regions(wave, min_speech=min(min_speech, 0.25)),
            min_speech=max(min_speech, self.min_duration),
            max_segment=max_segment,
            sr=SAMPLE_RATE,
        )
        chosen, clips = [], []
        for start, end in spans:
            clip = wave[start:end]
            if self.trim:
                clip = trim_silence(clip, SAMPLE_RATE)
            if clip.size >= self.min_duration * SAMPLE_RATE and np.any(clip):
                chosen.append((start, end))
                clips.append(clip)
        probs = self.predict_proba(clips)
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
    threads (default: the machine's cores, at most 4), sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
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


__all__ = ["Prediction", "Recognizer", "Segment", "VoiceActivityDetector", "plan_segments", "vad"]
