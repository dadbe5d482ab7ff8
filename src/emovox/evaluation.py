"""Evaluation, the public import path: ``from emovox.evaluation import evaluate_model, cross_validate``.

The code lives one concern per module (docs/architecture.md): :mod:`emovox.metrics` (WA, UA,
macro-F1, ...), :mod:`emovox.scoring` (``evaluate_model``: one classifier on labelled clips),
:mod:`emovox.crossval` (``cross_validate``), :mod:`emovox.runs` (``evaluate_bundle``) and
:mod:`emovox.reports` (``write_report``). This module only re-exports their public names; nothing
inside emovox imports it.
"""

from __future__ import annotations

from emovox.classifier import Classifier
from emovox.corpora import load_waves
from emovox.crossval import cross_validate
from emovox.metrics import METRIC_NAMES, compute_metrics
from emovox.reports import LEAK_WARNING, write_report
from emovox.runs import evaluate_bundle, resolve_model_path
from emovox.scoring import evaluate_model

__all__ = [
    "LEAK_WARNING",
    "METRIC_NAMES",
    "Classifier",
    "compute_metrics",
    "cross_validate",
    "evaluate_bundle",
    "evaluate_model",
    "load_waves",
    "resolve_model_path",
    "write_report",
]
