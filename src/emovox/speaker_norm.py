"""Speaker normalisation at prediction: a speaker-normalised model's speaker head on clips of one
speaker, standardised over the whole group or with a running estimate.

:meth:`Recognizer.predict(..., normalize=...) <emovox.predict.Recognizer.predict>` and
``emovox predict --normalize`` know the whole group (:func:`group_probabilities`,
:func:`pooled_probabilities` over :func:`speaker_vector` statistics); a live stream or a long
recording's timeline grows one clip at a time (:class:`SpeakerSession`). The statistics themselves
are :mod:`emovox.speaker_stats`; torch is imported only inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from emovox import limits
from emovox.audio_stream import input_name
from emovox.errors import AudioError, EmovoxError
from emovox.runtime import torch_threads
from emovox.speaker_stats import MIN_GROUP_CLIPS, RunningStats

if TYPE_CHECKING:
    from emovox.predict import Input, Prediction, Recognizer


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

    def probabilities(
        self, waves: Sequence[np.ndarray], names: Sequence[str] | None = None, *, learn: bool = True
    ) -> np.ndarray:
        """``[N, K]`` probabilities of consecutive preprocessed 16 kHz clips, each added in turn
        (``learn=False``: classified with the estimate so far, not added: e.g. a live window that
        overlaps one already added)."""
        names = list(names) if names is not None else [f"<wave {i}>" for i in range(len(waves))]
        return running_probabilities(self.rec, waves, self.stats, names, learn=learn)

    def predict(
        self, x: Input, sr: int | None = None, top_k: int | None = None, *, learn: bool = True
    ) -> Prediction:
        """Decode, preprocess and classify one clip of this speaker (see :meth:`Recognizer.predict`;
        ``learn`` as in :meth:`probabilities`)."""
        limits.check_top_k(top_k)
        wave, path = self.rec.decode(x, sr)
        name = path or input_name(x)
        clip = self.rec.preprocess(wave, name=name)
        probs = self.probabilities([clip], [name], learn=learn)[0]
        return self.rec._prediction(probs, wave.size / self.rec.sample_rate, path, top_k)


def raw_stats(rec: Recognizer, waves: Sequence[np.ndarray]) -> Any:
    """Raw pooled statistics ``[N, D]`` of preprocessed waves (a speaker-normalised torch model;
    call with the recognizer's lock held, in inference mode)."""
    import torch

    from emovox.features import pad_batch

    net, device = rec.net, rec.device
    rows = []
    for start in range(0, len(waves), rec.batch_size):
        wave, lengths = pad_batch(list(waves[start : start + rec.batch_size]))
        rows.append(net.raw_inputs(wave.to(device), lengths.to(device))[0])
    return torch.cat(rows) if rows else torch.zeros(0, net.input_dim, device=device)


def group_probabilities(
    rec: Recognizer, waves: Sequence[np.ndarray], groups: Sequence[str], out: np.ndarray
) -> None:
    """Rows of ``out`` for groups of at least MIN_GROUP_CLIPS clips from the speaker head."""
    import torch

    keys = np.asarray(groups)
    with rec._lock, torch.inference_mode(), torch_threads(rec.threads):
        x = raw_stats(rec, waves)
        for g in np.unique(keys):
            idx = np.flatnonzero(keys == g)
            if len(idx) >= MIN_GROUP_CLIPS:
                logits = rec.net.speaker_logits(x[torch.from_numpy(idx)])
                out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()


def speaker_vector(rec: Recognizer, clip: np.ndarray, name: str) -> Any:
    """One preprocessed clip's raw pooled statistics ``[D]`` on the CPU, for :func:`pooled_probabilities`.

    Raises :class:`AudioError` naming the clip when they are not finite.
    """
    import torch

    with rec._lock, torch.inference_mode(), torch_threads(rec.threads):
        vector = raw_stats(rec, [clip])[0].cpu()
    if not torch.isfinite(vector).all():
        raise AudioError(f"{name}: the model's statistics of this audio are not finite numbers")
    return vector


def pooled_probabilities(rec: Recognizer, vectors: Sequence[Any]) -> np.ndarray:
    """``[N, K]`` probabilities of one speaker's clips from their :func:`speaker_vector` statistics:
    the speaker head, standardised over the group (the plain model for fewer than MIN_GROUP_CLIPS)."""
    import torch

    with rec._lock, torch.inference_mode(), torch_threads(rec.threads):
        x = torch.stack(list(vectors)).to(rec.device)
        if len(vectors) >= MIN_GROUP_CLIPS:
            logits = rec.net.speaker_logits(x)
        else:
            logits = rec.net.head(rec.net.normalize(x, None), None)
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()


def running_probabilities(
    rec: Recognizer,
    waves: Sequence[np.ndarray],
    stats: RunningStats,
    names: Sequence[str],
    *,
    learn: bool = True,
) -> np.ndarray:
    """Probabilities of consecutive clips of one speaker, each standardised with the running
    estimate ``stats`` after adding it (the plain head until ``stats`` is ready)."""
    import torch

    net = rec.net
    with rec._lock, torch.inference_mode(), torch_threads(rec.threads):
        x = raw_stats(rec, waves)
        logits = net.head(net.normalize(x, None), None)
        finite = torch.isfinite(x).all(dim=1)
        for i in range(x.shape[0]):
            if not finite[i]:  # never let one bad clip poison the session: reported below
                continue
            if learn:
                stats.update(x[i])
            if stats.ready:
                logits[i] = net.speaker_head(stats.standardize(x[i : i + 1]))[0]
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise AudioError(
            f"{names[int(np.flatnonzero(bad)[0])]}: the model's output for this audio is not a number "
            f"(NaN or infinite); the model {rec.meta.get('path', '')} cannot classify it"
        )
    return probs
