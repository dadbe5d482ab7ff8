"""Many files predicted in bounded batches: what :meth:`Recognizer.predict_files
<emovox.predict.Recognizer.predict_files>` (``emovox predict``) runs.

Short files are decoded and classified together in batches of at most a number of seconds of
audio (not a number of files); long ones are streamed through windows (and the VAD timeline); a
file that cannot be used gives its error as its :class:`FileResult` and the others go on. With
speaker normalisation the files of each group (one speaker, or one folder) are classified together
by the model's speaker head, holding one statistics vector per file, not the audio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emovox.audio_stream import header_seconds
from emovox.errors import AudioError, EmovoxError
from emovox.speaker_norm import pooled_probabilities, speaker_vector

if TYPE_CHECKING:
    from emovox.predict import Prediction, Recognizer
    from emovox.timeline import Segment

Quiet = Callable[[], AbstractContextManager[object]]

#: Segments of the timeline of a short file: the Recognizer.timeline defaults.
_MIN_SPEECH, _MAX_SEGMENT = 0.5, 4.0


@dataclass
class FileResult:
    """What :meth:`Recognizer.predict_files <emovox.predict.Recognizer.predict_files>` yields for one
    file: a prediction (and its timeline segments when asked), or the error that made the file unusable."""

    path: str
    prediction: Prediction | None = None
    segments: list[Segment] | None = None
    error: EmovoxError | None = None


def predict_files(
    rec: Recognizer,
    paths: Sequence[str | Path],
    *,
    top_k: int | None,
    timeline: bool,
    quiet: Quiet,
    normalize: str | None,
    batch_s: float,
) -> Iterator[FileResult]:
    """One :class:`FileResult` per path, in input order (see :meth:`Recognizer.predict_files`).

    ``quiet`` wraps each file's decoding; ``batch_s`` is the most seconds of short files' audio
    held and classified at once; ``normalize`` groups the files by speaker (``"speaker"``: all of
    them, ``"folder"``: the files of each folder, wherever they come in the input). Results come
    in input order: a group's are held until its last file is done.
    """
    if normalize is not None:
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            groups.setdefault("all" if normalize == "speaker" else str(Path(p).parent), []).append(i)
        done: dict[int, FileResult] = {}
        following = 0  # the next index to yield
        for members in groups.values():
            results = _predict_group(rec, [paths[i] for i in members], top_k, timeline, quiet)
            done.update(zip(members, results, strict=True))
            while following in done:
                yield done.pop(following)
                following += 1
        return
    pending = _Pending(rec, top_k, timeline)
    for raw in paths:
        path = str(raw)
        done: FileResult | None = None
        try:
            with quiet():
                if rec.is_long(header_seconds(raw)):
                    prediction, segments = rec._predict_stream(
                        rec.stream(raw), path, path, top_k, timeline=timeline
                    )
                    done = FileResult(path, prediction, segments)
                else:
                    wave, _ = rec.decode(raw)
                    clip = rec.preprocess(wave, name=path)
        except EmovoxError as exc:
            done = FileResult(path, error=exc)
        if done is not None:
            yield from pending.flush()
            yield done
            continue
        pending.add(path, wave, clip)
        if pending.samples >= batch_s * rec.sample_rate or len(pending.files) >= 4 * rec.batch_size:
            yield from pending.flush()
    yield from pending.flush()


class _Pending:
    """The decoded short files of :func:`predict_files` waiting to be classified together."""

    def __init__(self, rec: Recognizer, top_k: int | None, timeline: bool) -> None:
        self.rec, self.top_k, self.timeline = rec, top_k, timeline
        self.files: list[tuple[str, np.ndarray, np.ndarray]] = []  # path, decoded wave, preprocessed clip
        self.samples = 0

    def add(self, path: str, wave: np.ndarray, clip: np.ndarray) -> None:
        self.files.append((path, wave, clip))
        self.samples += wave.size

    def flush(self) -> Iterator[FileResult]:
        """Classify the waiting files together, then their timelines; the batch is empty after."""
        pending, self.files, self.samples = self.files, [], 0
        if not pending:
            return
        rec = self.rec
        rows = self._rows([clip for _, _, clip in pending], [path for path, _, _ in pending])
        for (path, wave, _), row in zip(pending, rows, strict=True):
            if isinstance(row, EmovoxError):
                yield FileResult(path, error=row)
                continue
            prediction = rec._prediction(row, wave.size / rec.sample_rate, path, self.top_k)
            segments = None
            if self.timeline:
                try:
                    segments = rec._timeline_blocks(rec._blocks(wave), path, _MIN_SPEECH, _MAX_SEGMENT)
                except EmovoxError as exc:
                    yield FileResult(path, error=AudioError(f"{path}: timeline failed ({exc})"))
                    continue
            yield FileResult(path, prediction, segments)

    def _rows(self, clips: list[np.ndarray], names: list[str]) -> list[np.ndarray | EmovoxError]:
        """Each clip's probabilities, or the error of a clip the model cannot classify."""
        try:
            return list(self.rec._probabilities(clips, names))
        except EmovoxError:  # one bad clip: find it, the others still get their prediction
            rows: list[np.ndarray | EmovoxError] = []
            for clip, name in zip(clips, names, strict=True):
                try:
                    rows.append(self.rec._probabilities([clip], [name])[0])
                except EmovoxError as exc:
                    rows.append(exc)
            return rows


def _predict_group(
    rec: Recognizer, paths: Sequence[str | Path], top_k: int | None, timeline: bool, quiet: Quiet
) -> Iterator[FileResult]:
    """:func:`predict_files` for the files of one speaker (``normalize``): the short files are
    classified together by the speaker head (the plain model for a lone file), long files keep
    their windowed plain prediction, timelines use a running estimate over the group."""
    session = rec.speaker_session() if timeline else None
    results: list[FileResult] = []
    members: list[tuple[int, float]] = []  # (index in results, duration) of the short files
    vectors = []
    for raw in paths:
        path = str(raw)
        try:
            with quiet():
                if rec.is_long(header_seconds(raw)):
                    prediction, segments = rec._predict_stream(
                        rec.stream(raw), path, path, top_k, timeline=timeline, session=session
                    )
                    results.append(FileResult(path, prediction, segments))
                    continue
                wave, _ = rec.decode(raw)
                clip = rec.preprocess(wave, name=path)
            vector = speaker_vector(rec, clip, path)
            segments = None
            if session is not None:
                segments = rec._timeline_blocks(rec._blocks(wave), path, _MIN_SPEECH, _MAX_SEGMENT, session)
        except EmovoxError as exc:
            results.append(FileResult(path, error=exc))
            continue
        members.append((len(results), wave.size / rec.sample_rate))
        vectors.append(vector)
        results.append(FileResult(path, None, segments))
    if vectors:
        probs = pooled_probabilities(rec, vectors)
        for (i, duration), row in zip(members, probs, strict=True):
            r = results[i]
            results[i] = FileResult(r.path, rec._prediction(row, duration, r.path, top_k), r.segments)
    yield from results
