"""Scoring one trained classifier on labelled utterances: predictions, then :mod:`emovox.metrics`.

Everything is speaker-independent only if the caller's utterances are: :func:`evaluate_model`
scores whatever it is given and records per-speaker accuracy, so the run (:mod:`emovox.runs`)
can check the test speakers against the training speakers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emovox.calibration import expected_calibration_error, reliability
from emovox.classifier import Classifier
from emovox.corpora import Utterance, load_waves
from emovox.errors import CorpusError
from emovox.metrics import compute_metrics
from emovox.progress import progress_bar


def ordered_labels(labels: Sequence[str], reference: Sequence[str]) -> list[str]:
    """``labels`` in ``reference`` order, anything else after, alphabetically."""
    rank = {lab: i for i, lab in enumerate(reference)}
    return sorted(set(labels), key=lambda lab: (rank.get(lab, len(rank)), lab))


def evaluate_model(
    clf: Classifier,
    utts: Sequence[Utterance],
    waves: Mapping[Path, np.ndarray] | None = None,
    *,
    shared_only: bool = False,
    trim: bool = False,
    min_duration: float = 0.0,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``clf`` on ``utts``: :func:`compute_metrics` plus per-utterance predictions.

    ``waves`` maps ``Utterance.path`` to an already-loaded waveform; missing ones are loaded with
    ``trim`` / ``min_duration`` (pass the preprocessing the model was trained with). A test
    emotion the model does not know raises :class:`CorpusError` naming it, unless ``shared_only``
    (cross-corpus): then only utterances of emotions both sides know are scored, and the model's
    decision is restricted to those emotions (argmax over the shared columns, renormalised), which
    the result records under ``shared_emotions`` / ``dropped`` so the report can say so.

    Returns the metrics dict with extra keys ``predictions`` (``[{path, speaker, true, pred,
    confidence}]``), ``model_labels``, ``shared_emotions`` (None unless restricted), ``dropped``
    (test utterances per emotion left out) and ``skipped`` (files that could not be loaded).
    """
    model_labels = list(clf.labels)
    utts, eval_labels, shared, dropped = _scored_emotions(list(utts), model_labels, shared_only)
    skipped: list[tuple[Path, str]] = []
    loaded: Mapping[Path, np.ndarray] = waves if waves is not None else {}
    missing = [u for u in utts if u.path not in loaded]
    if missing:
        extra, skipped = load_waves(missing, trim=trim, min_duration=min_duration, progress=progress)
        loaded = {**loaded, **extra}
    utts = [u for u in utts if u.path in loaded]
    if not utts:
        raise CorpusError("none of the test files could be loaded: " + "; ".join(r for _, r in skipped[:3]))

    clips = [loaded[u.path] for u in utts]
    plain = by_corpus = None
    if getattr(clf, "groupable", False):  # speaker-normalised model: each test speaker is a group
        # each clip alone, per corpus (all test clips of a corpus as one group: when speakers are
        # unknown) and per speaker, from one pass of the encoder
        groupings = [None, [u.corpus for u in utts], [u.speaker for u in utts]]
        if hasattr(clf, "predict_proba_groupings"):
            lone, corpus_probs, probs = clf.predict_proba_groupings(clips, groupings, progress=progress)
        else:
            lone, corpus_probs, probs = (clf.predict_proba(clips, groups=g) for g in groupings)
        plain = _summary(np.asarray(lone, dtype=np.float64), utts, eval_labels, model_labels)
        by_corpus = _summary(np.asarray(corpus_probs, dtype=np.float64), utts, eval_labels, model_labels)
        probs = np.asarray(probs, dtype=np.float64)
    else:
        probs = predict_all(clf, clips, batch_size=batch_size, progress=progress)
    probs = _restrict(probs, eval_labels, model_labels)
    best = probs.argmax(axis=1)
    y_pred = [eval_labels[i] for i in best]
    y_true = [u.emotion for u in utts]
    speakers = [u.speaker for u in utts]
    metrics = compute_metrics(y_true, y_pred, eval_labels, speakers)
    true_idx = np.array([eval_labels.index(t) for t in y_true])
    metrics["ece"] = expected_calibration_error(probs, true_idx)
    metrics["reliability"] = reliability(probs, true_idx)
    metrics["normalization"] = "speaker" if plain is not None else None
    metrics["plain"] = plain  # the same model without speaker normalisation (lone clips)
    metrics["corpus_normalized"] = by_corpus  # standardised over each test corpus instead of speaker
    metrics["model_labels"] = model_labels
    metrics["shared_emotions"] = shared if shared is not None and shared != model_labels else None
    metrics["dropped"] = dropped
    metrics["skipped"] = [{"path": str(p), "reason": r} for p, r in skipped]
    metrics["predictions"] = [
        {
            "path": str(u.path),
            "speaker": u.speaker,
            "true": t,
            "pred": p,
            "confidence": float(probs[i, best[i]]),
        }
        for i, (u, t, p) in enumerate(zip(utts, y_true, y_pred, strict=True))
    ]
    return metrics


def _scored_emotions(
    utts: list[Utterance], model_labels: list[str], shared_only: bool
) -> tuple[list[Utterance], list[str], list[str] | None, dict[str, int]]:
    """``(utterances to score, labels to score over, shared emotions or None, dropped per emotion)``.

    A test emotion the model does not know is a :class:`CorpusError` unless ``shared_only``.
    """
    if not utts:
        raise CorpusError("no test utterances to evaluate")
    test_labels = ordered_labels([u.emotion for u in utts], model_labels)
    unknown = [lab for lab in test_labels if lab not in model_labels]
    if unknown and not shared_only:
        raise CorpusError(
            f"test data has emotion(s) the model does not know: {', '.join(unknown)} "
            f"(model labels: {', '.join(model_labels)}); evaluate on the shared emotions only "
            "(cross-corpus mode) to leave them out"
        )
    if not shared_only:
        return utts, model_labels, None, {}
    shared = [lab for lab in model_labels if lab in set(test_labels)]
    if not shared:
        raise CorpusError(
            f"the model ({', '.join(model_labels)}) and the test data ({', '.join(test_labels)}) "
            "share no emotion"
        )
    dropped: dict[str, int] = {}
    for u in utts:
        if u.emotion not in shared:
            dropped[u.emotion] = dropped.get(u.emotion, 0) + 1
    return [u for u in utts if u.emotion in shared], shared, shared, dropped


def _restrict(probs: np.ndarray, eval_labels: list[str], model_labels: list[str]) -> np.ndarray:
    """``probs`` (model columns) restricted to ``eval_labels`` and renormalised (cross-corpus)."""
    if eval_labels == model_labels:
        return probs
    probs = probs[:, [model_labels.index(lab) for lab in eval_labels]]
    return probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)


def _summary(
    probs: np.ndarray, utts: Sequence[Utterance], eval_labels: list[str], model_labels: list[str]
) -> dict[str, Any]:
    """WA / UA / macro-F1 / ECE of ``probs`` (model columns) restricted to ``eval_labels``."""
    probs = _restrict(probs, eval_labels, model_labels)
    y_true = [u.emotion for u in utts]
    m = compute_metrics(y_true, [eval_labels[i] for i in probs.argmax(axis=1)], eval_labels)
    true_idx = np.array([eval_labels.index(t) for t in y_true])
    return {k: m[k] for k in ("wa", "ua", "macro_f1")} | {"ece": expected_calibration_error(probs, true_idx)}


def predict_all(
    clf: Classifier,
    waves: Sequence[np.ndarray],
    *,
    batch_size: int = 64,
    progress: bool = True,
    description: str = "predicting",
) -> np.ndarray:
    """``clf.predict_proba`` over ``waves`` in batches of ``batch_size``, with a progress bar: ``[N, K]``."""
    n_labels = len(clf.labels)
    probs = np.empty((len(waves), n_labels), dtype=np.float64)
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task(description, total=len(waves))
        for start in range(0, len(waves), batch_size):
            chunk = waves[start : start + batch_size]
            out = np.asarray(clf.predict_proba(chunk), dtype=np.float64)
            if out.shape != (len(chunk), n_labels):
                expected = (len(chunk), n_labels)
                raise ValueError(f"predict_proba returned shape {out.shape}, expected {expected}")
            probs[start : start + len(chunk)] = out
            bar.advance(task, len(chunk))
    return probs


def without_predictions(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``metrics`` without its per-utterance ``predictions`` (what metrics.json files and bundles keep)."""
    return None if metrics is None else {k: v for k, v in metrics.items() if k != "predictions"}
