"""The contracts between fitting and evaluation.

A fit function (one per model family, registered in :data:`emovox.fitting.FITTERS`) receives a
:class:`FitData` and returns a :class:`FitResult` whose ``model`` is a :class:`Classifier`: the
only thing evaluation, cross-validation and reports need from a trained model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from emovox.config import RunConfig


class Classifier(Protocol):
    """What evaluation consumes: ``labels`` plus batched class probabilities for 16 kHz waveforms.

    ``predict_proba(waves)`` takes 16 kHz mono float32 waveforms and returns ``[N, K]`` (rows sum
    to 1, columns in ``labels`` order).
    """

    labels: list[str]

    def predict_proba(self, waves: Sequence[np.ndarray]) -> np.ndarray: ...


@dataclass
class FitData:
    """The decoded training and validation clips a fit function trains and selects on.

    ``labels`` are the class names (canonical emotion order); ``train_y`` / ``val_y`` index them.
    """

    labels: list[str]
    train_waves: list[np.ndarray]
    train_y: list[int]
    val_waves: list[np.ndarray]
    val_y: list[int]
    train_groups: list[str] = field(default_factory=list)
    """Speaker of each training clip (for speaker-normalised heads); empty when not known."""
    val_groups: list[str] = field(default_factory=list)
    train_domains: list[int] = field(default_factory=list)
    """Per training clip, a row of ``label_masks`` (its corpus' emotions); empty: every clip may be
    any class. A multi-corpus run where a corpus lacks an emotion (TESS has no "calm") trains that
    corpus' clips over its own emotions only, so the model never learns "these voices are never calm"."""
    label_masks: list[list[bool]] = field(default_factory=list)
    """``[domains][classes]``: which classes each domain (corpus) labels."""

    def targets(self, y: Sequence[int], domains: Sequence[int] | None = None) -> list[Any]:
        """Dataset targets: class indices, or ``(class, domain)`` pairs when some corpus lacks a class."""
        if not self.label_masks:
            return list(y)
        return [
            (int(c), int(d))
            for c, d in zip(y, domains if domains is not None else self.train_domains, strict=True)
        ]


@dataclass
class FitResult:
    """A trained classifier, its best validation UA (NaN without validation), per-epoch history and
    the checkpoint it was loaded from (None for families that are not checkpointed, e.g. the SVM)."""

    model: Any
    best_val_ua: float
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


class FitFunction(Protocol):
    """The signature every family's fit function has (see :data:`emovox.fitting.FITTERS`)."""

    def __call__(
        self,
        cfg: RunConfig,
        data: FitData,
        run_dir: Path,
        *,
        resume: bool,
        progress: bool,
        callbacks: Sequence[Any],
        label: str | None,
    ) -> FitResult: ...
