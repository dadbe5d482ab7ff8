"""The model behind the web service: what it must offer, loading it, running it, its answers as JSON.

:class:`Service` holds the one recognizer an app serves (loaded at start-up) and the capacity
limiter that runs decoding and inference in worker threads, so the event loop keeps answering and
N simultaneous requests never oversubscribe the CPU cores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import numpy as np

from emovox.audio import SAMPLE_RATE
from emovox.jsonutil import jsonable
from emovox.serve_errors import ApiError
from emovox.serve_settings import ServeSettings

T = TypeVar("T")


class RecognizerLike(Protocol):
    """What the service needs from :class:`emovox.predict.Recognizer` (tests inject fakes)."""

    labels: Sequence[str]

    def predict(self, x: Any, sr: int | None = None) -> Any: ...

    def timeline(self, x: Any, sr: int | None = None) -> list[Any]: ...

    def is_speech(self, wave: np.ndarray) -> bool: ...


class Service:
    """The loaded recognizer and the limiter shared by every request of one app."""

    def __init__(self, recognizer: RecognizerLike | None, model: str, settings: ServeSettings) -> None:
        self.recognizer = recognizer
        self.model = model
        self.settings = settings
        self._limiter: anyio.CapacityLimiter | None = None
        self._info: dict[str, Any] | None = None
        self.streams = 0  # open WebSocket streams (the event loop is single-threaded: no lock)

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # created inside the event loop on first use
            self._limiter = anyio.CapacityLimiter(self.settings.workers)
        return self._limiter

    def info(self) -> dict[str, Any]:
        """The model description of ``GET /api/v1/model``, built once."""
        if self._info is None:
            self._info = model_info(self.get(), self.model, self.settings)
        return self._info

    def get(self) -> RecognizerLike:
        if self.recognizer is None:
            raise ApiError(503, "model_not_loaded", "the model is still loading; retry in a moment")
        return self.recognizer

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (decoding, inference) in a worker thread, at most ``workers`` at a time."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def load(self) -> None:
        if self.recognizer is None:
            from emovox.predict import Recognizer

            self.recognizer = await anyio.to_thread.run_sync(Recognizer.load, self.model)


def model_info(recognizer: RecognizerLike, model: str, settings: ServeSettings) -> dict[str, Any]:
    """Labels, training data, scores and model card of the loaded model, plus the service's limits.

    Reads the bundle metadata of :class:`emovox.predict.Recognizer` (config.json + ``metrics``
    + ``path``) and the model card (README.md) from the bundle folder.
    """
    meta = getattr(recognizer, "meta", None) or {}
    card = ""
    if meta.get("path"):
        readme = Path(meta["path"]) / "README.md"
        card = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    return jsonable(
        {
            "model": model,
            "labels": list(recognizer.labels),
            "sample_rate": SAMPLE_RATE,
            "backend": getattr(recognizer, "backend", None),
            "speaker_normalized": bool(getattr(recognizer, "speaker_normalized", False)),
            "emovox_version": meta.get("emovox_version"),
            "created": meta.get("created"),
            "architecture": meta.get("model"),
            "preprocessing": meta.get("preprocessing"),
            "training": meta.get("training") or {},
            "metrics": meta.get("metrics") or {},
            "card": card,
            "limits": {
                "max_upload_mb": settings.max_upload_mb,
                "max_duration_s": settings.max_duration_s,
                "max_batch_files": settings.max_batch_files,
            },
        }
    )


def _as_dict(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(vars(obj))


def prediction_dict(prediction: Any) -> dict[str, Any]:
    """The public fields of a Prediction: emotion, confidence, probabilities, duration."""
    return {
        "emotion": prediction.emotion,
        "confidence": float(prediction.confidence),
        "probabilities": {k: float(v) for k, v in prediction.probabilities.items()},
        "duration": float(prediction.duration),
    }


def segment_dict(segment: Any) -> dict[str, Any]:
    """The public fields of a timeline segment (start, end, emotion, ...; not the file path)."""
    d = jsonable(_as_dict(segment))
    return {k: v for k, v in d.items() if k != "path"}
