"""Training, the public import path: ``from emovox.training import fit, run_training, training_split``.

The code lives one concern per module (docs/architecture.md): :mod:`emovox.fitting` (``fit``, the
family registry, Lightning training), :mod:`emovox.svm` (the SVM baseline), :mod:`emovox.datasets`
and :mod:`emovox.lightning_module`, and :mod:`emovox.runs` (the whole ``emovox train`` run). This
module only re-exports their public names; nothing inside emovox imports it.
"""

from __future__ import annotations

from emovox.classifier import Classifier, FitResult
from emovox.fitting import FITTERS, TorchClassifier, TrainingInterrupted, cpu_threads, fit, label_set
from emovox.runs import BUNDLE_DIR, TrainingSplit, is_global_zero, run_training, training_split
from emovox.svm import SVMClassifier, svm_features

__all__ = [
    "BUNDLE_DIR",
    "FITTERS",
    "Classifier",
    "FitResult",
    "SVMClassifier",
    "TorchClassifier",
    "TrainingInterrupted",
    "TrainingSplit",
    "cpu_threads",
    "fit",
    "is_global_zero",
    "label_set",
    "run_training",
    "svm_features",
    "training_split",
]
