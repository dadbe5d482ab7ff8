"""Confidence calibration: temperature scaling and how well probabilities match accuracy.

:func:`fit_temperature` finds the single temperature ``T`` that minimises the negative
log-likelihood of ``softmax(logits / T)`` on held-out (validation-speaker) clips, Guo et al. (2017).
It changes no prediction (the argmax is the same), only how confident the probabilities are.
:func:`expected_calibration_error` and :func:`reliability` measure the result: in each confidence
bin, the gap between the mean confidence and the accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Temperatures are searched in [1/4, 10]: a validation set the model separates perfectly would
#: otherwise drive T to 0 (certainty) on the strength of a few hundred clips.
T_MIN, T_MAX = 0.25, 10.0


def _nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)`` (golden-section search on log T).

    ``logits [N, K]``, ``targets [N]`` class indices. Returns 1.0 when there is nothing to fit on.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if logits.ndim != 2 or len(targets) == 0 or not np.isfinite(logits).all():
        return 1.0
    lo, hi = np.log(T_MIN), np.log(T_MAX)
    ratio = (np.sqrt(5.0) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(logits, targets, np.exp(a)), _nll(logits, targets, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(logits, targets, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(logits, targets, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def reliability(probs: np.ndarray, targets: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Per equal-width confidence bin: ``lo``, ``hi``, ``n``, mean ``confidence``, ``accuracy``."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    return reliability_of(probs.max(axis=1), probs.argmax(axis=1) == targets, bins)


def reliability_of(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """:func:`reliability` from each prediction's confidence and whether it was right (e.g. the
    pooled predictions of every cross-validation fold)."""
    conf = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "n": n,
                "confidence": float(conf[sel].mean()) if n else None,
                "accuracy": float(correct[sel].mean()) if n else None,
            }
        )
    return out


def ece_of(table: list[dict[str, Any]]) -> float:
    """ECE of a :func:`reliability` table: the clip-weighted mean |accuracy - confidence| (0 = perfect)."""
    total = sum(row["n"] for row in table)
    if total == 0:
        return float("nan")
    return float(
        sum(row["n"] * abs(row["accuracy"] - row["confidence"]) for row in table if row["n"]) / total
    )


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 10) -> float:
    """ECE: the clip-weighted mean |accuracy - confidence| over :func:`reliability` bins (0 = perfect)."""
    return ece_of(reliability(probs, targets, bins))


__all__ = ["ece_of", "expected_calibration_error", "fit_temperature", "reliability", "reliability_of"]
