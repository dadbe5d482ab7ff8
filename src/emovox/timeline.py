"""The VAD timeline: a recording's speech cut into segments of a few seconds, each classified.

:class:`TimelineStream` takes a recording block by block, runs the voice activity detector
(:func:`emovox.vad.vad`) on bounded chunks cut in pauses (:func:`final_regions`), turns the speech
regions into classification segments (:func:`plan_segments`) and classifies them with a
:class:`~emovox.predict.Recognizer` (or a running :class:`~emovox.predict.SpeakerSession`), giving
:class:`Segment` records. Memory does not grow with the recording. :meth:`Recognizer.timeline
<emovox.predict.Recognizer.timeline>` is the public entry point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from emovox import limits
from emovox.audio import SAMPLE_RATE, trim_silence
from emovox.errors import ConfigError
from emovox.vad import vad

if TYPE_CHECKING:
    from emovox.predict import Recognizer, SpeakerSession


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


def check_timeline(min_speech: Any, max_segment: Any) -> None:
    """Raise :class:`ConfigError` unless ``0 < min_speech <= max_segment`` within their ranges."""
    for key, value in (("timeline.min_speech", min_speech), ("timeline.max_segment", max_segment)):
        limits.check(key, value, key.split(".")[1])
    if min_speech > max_segment:
        raise ConfigError(
            f"timeline: need 0 < min_speech <= max_segment, "
            f"got min_speech={min_speech}, max_segment={max_segment}"
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


def final_regions(
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


class TimelineStream:
    """The VAD timeline of a recording fed block by block, holding at most ``chunk_s`` +
    ``tail_s`` seconds (plus a block).

    Once that much is buffered the VAD runs on the buffer; speech regions that end before its last
    ``tail_s`` seconds are final and classified, and the buffer is cut in the pause after the last
    of them (in speech that does not pause, at the tail: :func:`final_regions`). A recording up to
    that length is analysed in one piece, exactly as a whole.
    """

    def __init__(
        self,
        rec: Recognizer,
        path: str | None,
        min_speech: float,
        max_segment: float,
        session: SpeakerSession | None = None,
        *,
        chunk_s: float,
        tail_s: float,
    ) -> None:
        self.rec, self.path, self.session = rec, path, session
        self.min_speech, self.max_segment = min_speech, max_segment
        self.chunk, self.tail = int(chunk_s * SAMPLE_RATE), int(tail_s * SAMPLE_RATE)
        self.parts: list[np.ndarray] = []
        self.size = 0
        self.offset = 0

    def _regions(self, buffer: np.ndarray) -> list[tuple[int, int]]:
        return vad().regions(buffer, min_speech=min(self.min_speech, 0.25))

    def push(self, block: np.ndarray) -> list[Segment]:
        """Add the next block; the segments that became final (often none)."""
        self.parts.append(block)
        self.size += block.size
        if self.size < self.chunk + self.tail:
            return []
        buffer = np.concatenate(self.parts)
        final, cut = final_regions(self._regions(buffer), buffer.size - self.tail, self.chunk // 2)
        segments = self.classify(buffer, self.offset, final)
        rest = buffer[cut:].copy()
        self.parts, self.size = [rest], rest.size
        self.offset += cut
        return segments

    def finish(self) -> list[Segment]:
        """The segments of what is still buffered, at the end of the recording."""
        if not self.size:
            return []
        buffer = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.parts, self.size = [], 0
        return self.classify(buffer, self.offset, self._regions(buffer))

    def classify(self, wave: np.ndarray, offset: int, regions: Sequence[tuple[int, int]]) -> list[Segment]:
        """Segments of the speech ``regions`` of ``wave`` (which starts ``offset`` samples into the
        recording), preprocessed as the model was trained, each classified."""
        rec = self.rec
        spans = plan_segments(
            regions,
            min_speech=max(self.min_speech, rec.min_duration),
            max_segment=self.max_segment,
            sr=SAMPLE_RATE,
        )
        chosen, clips = [], []
        for start, end in spans:
            clip = wave[start:end]
            if rec.trim:
                clip = trim_silence(clip, SAMPLE_RATE)
            if clip.size >= rec.min_duration * SAMPLE_RATE and np.any(clip):
                chosen.append((start + offset, end + offset))
                clips.append(clip)
        where = self.path or "<audio>"
        names = [f"{where} ({a / SAMPLE_RATE:.2f}-{b / SAMPLE_RATE:.2f} s)" for a, b in chosen]
        if self.session is not None:
            probs = self.session.probabilities(clips, names)
        else:
            probs = rec._probabilities(clips, names)
        segments = []
        for (start, end), p in zip(chosen, probs, strict=True):
            pred = rec._prediction(p, (end - start) / SAMPLE_RATE, self.path, None)
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
