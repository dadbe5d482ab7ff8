"""Scores of predictions against true emotions: WA, UA, macro-F1, per class, per speaker, confusion.

Speech-emotion corpora are small and imbalanced, so the headline number is

* **UA** (unweighted accuracy, balanced accuracy): the mean per-class recall over the emotions
  present in the test data;
* **WA** (weighted accuracy): plain accuracy over utterances;
* **macro-F1** over the same emotions;

plus per-class precision/recall/F1, a confusion matrix (rows = true emotion, columns = predicted,
in label order) and per-speaker accuracy. Nothing here knows how the predictions were made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emovox.errors import CorpusError

METRIC_NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1"}
"""The headline metrics, in report order, with their display names."""


def compute_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    speakers: Sequence[str] | None = None,
) -> dict[str, Any]:
    """WA, UA, macro-F1, per-class scores, confusion matrix and per-speaker accuracy.

    UA and macro-F1 average over the classes present in ``y_true`` only: a class the test set does
    not contain has no recall, and counting it as 0 would punish the model for the data. Predictions
    of such a class still count as errors (they lower the recall of the true class). The confusion
    matrix has rows = true and columns = predicted, both in ``labels`` order.
    """
    from sklearn.metrics import classification_report, confusion_matrix

    labels = list(labels)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if speakers is not None and len(speakers) != len(y_true):
        raise ValueError(f"{len(y_true)} true labels but {len(speakers)} speakers")
    if not y_true:
        raise ValueError("no utterances to score")
    unknown = sorted((set(y_true) | set(y_pred)) - set(labels))
    if unknown:
        raise CorpusError(f"label(s) {', '.join(unknown)} not in the label set ({', '.join(labels)})")

    cm = confusion_matrix(list(y_true), list(y_pred), labels=labels)
    support = cm.sum(axis=1)
    present = support > 0
    recall = np.divide(np.diag(cm), support, out=np.zeros(len(labels)), where=present)
    report = classification_report(
        list(y_true), list(y_pred), labels=labels, output_dict=True, zero_division=0
    )
    per_class = {
        lab: {
            "precision": float(report[lab]["precision"]),
            "recall": float(report[lab]["recall"]),
            "f1": float(report[lab]["f1-score"]),
            "support": int(report[lab]["support"]),
        }
        for lab in labels
    }
    f1 = np.array([per_class[lab]["f1"] for lab in labels])
    metrics: dict[str, Any] = {
        "n": len(y_true),
        "wa": float(np.trace(cm) / cm.sum()),
        "ua": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "labels": labels,
        "per_class": per_class,
        "confusion": cm.astype(int).tolist(),
        "per_speaker": {},
    }
    if speakers is not None:
        hits: dict[str, list[int]] = {}
        for t, p, s in zip(y_true, y_pred, speakers, strict=True):
            hits.setdefault(s, []).append(int(t == p))
        metrics["per_speaker"] = {
            s: {"accuracy": float(np.mean(h)), "n": len(h)} for s, h in sorted(hits.items())
        }
    return metrics


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for a single fold) of per-fold scores."""
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "values": [float(v) for v in arr]}
