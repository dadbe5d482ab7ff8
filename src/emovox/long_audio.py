"""Long recordings classified in windows: the duration-weighted mean of fixed-length windows.

:class:`WindowedMean` takes a recording block by block, cuts it into windows of a fixed length from
its start, gives each the bundle's preprocessing (a window that is silence or too short after
trimming is left out), classifies them in batches bounded by seconds of audio, and averages their
probabilities weighted by their trimmed duration. It holds at most a window and a batch of windows,
so memory does not grow with the recording (see :data:`emovox.predict.LONG_AUDIO_S`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from emovox.errors import AudioError

if TYPE_CHECKING:
    from emovox.predict import Recognizer


class WindowedMean:
    """The probabilities of one long recording, fed as consecutive blocks at the model's rate.

    ``window_s``: window length in seconds; ``batch_s``: most seconds of windows classified at once.
    ``name`` names the recording in errors (each window's name adds its seconds).
    """

    def __init__(self, rec: Recognizer, name: str, *, window_s: float, batch_s: float) -> None:
        self.rec, self.name = rec, name
        self.window = int(window_s * rec.sample_rate)
        self.batch_samples = batch_s * rec.sample_rate
        self.total = np.zeros(len(rec.labels), dtype=np.float64)
        self.weight = 0  # trimmed samples classified
        self.seen = 0  # samples of the recording cut into windows so far
        self.parts: list[np.ndarray] = []
        self.buffered = 0
        self.batch: list[np.ndarray] = []
        self.batch_names: list[str] = []

    def push(self, block: np.ndarray) -> None:
        """Add the next block; every window it completes is queued (and classified per batch)."""
        self.parts.append(block)
        self.buffered += block.size
        while self.buffered >= self.window:
            joined = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
            self._take(joined[: self.window])
            rest = joined[self.window :]
            self.parts, self.buffered = ([rest] if rest.size else []), rest.size

    def finish(self) -> None:
        """End of the recording: the last, shorter window and the queued batch are classified."""
        if self.buffered:
            self._take(np.concatenate(self.parts))
            self.parts, self.buffered = [], 0
        self._classify()

    @property
    def seconds(self) -> float:
        """Seconds of the recording taken so far."""
        return self.seen / self.rec.sample_rate

    def mean(self) -> np.ndarray:
        """The windows' duration-weighted mean probabilities (after :meth:`finish`).

        Raises :class:`AudioError` when no window was usable.
        """
        if not self.weight:
            raise AudioError(
                f"{self.name}: no part of this {self.seconds:.0f} s recording is usable "
                "(silence, or sounds shorter than the model's minimum duration)"
            )
        return (self.total / self.weight).astype(np.float32)

    def _take(self, piece: np.ndarray) -> None:
        sr, start = self.rec.sample_rate, self.seen
        self.seen += piece.size
        label = f"{self.name} ({start / sr:.0f}-{(start + piece.size) / sr:.0f} s)"
        try:
            clip = self.rec.preprocess(piece, name=label)
        except AudioError:  # a silent or too short window: nothing to classify there
            return
        self.batch.append(clip)
        self.batch_names.append(label)
        if sum(c.size for c in self.batch) >= self.batch_samples:
            self._classify()

    def _classify(self) -> None:
        if not self.batch:
            return
        probs = self.rec._probabilities(self.batch, self.batch_names)
        sizes = np.array([c.size for c in self.batch], dtype=np.float64)
        self.total += sizes @ probs.astype(np.float64)
        self.weight += int(sizes.sum())
        self.batch.clear()
        self.batch_names.clear()
