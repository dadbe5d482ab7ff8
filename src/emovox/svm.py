"""The SVM baseline: StandardScaler + SVC on eGeMAPS functionals or pooled frame statistics.

Not bundled (bundles hold safetensors weights and never pickle): it is a baseline for reports and
cross-validation. ``C`` is chosen on the validation speakers by unweighted accuracy.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovox.classifier import FitData, FitResult
from emovox.config import RunConfig
from emovox.egemaps import egemaps_many
from emovox.errors import ConfigError
from emovox.features import FeatureConfig, FeatureExtractor, pad_batch, pool_stats


class SVMClassifier:
    """StandardScaler + SVC (Platt-scaled probabilities) on eGeMAPS or pooled frame statistics.

    Not bundled (bundles never pickle); it is a baseline for reports and cross-validation.
    """

    def __init__(
        self, labels: Sequence[str], pipeline: Any, features: str, feature_cfg: FeatureConfig
    ) -> None:
        self.labels = list(labels)
        self.pipeline = pipeline
        self.features = features
        self.feature_cfg = feature_cfg

    def predict_proba(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        proba = self.pipeline.predict_proba(
            svm_features(waves, self.features, self.feature_cfg, progress=False)
        )
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float64)
        out[:, self.pipeline.classes_] = proba
        return out


def svm_features(
    waves: Sequence[np.ndarray], kind: str, feature_cfg: FeatureConfig, *, progress: bool = True
) -> np.ndarray:
    """``[N, D]`` utterance vectors: 88 eGeMAPS functionals or ``pool_stats`` of the frame features."""
    if kind == "egemaps":
        return egemaps_many(waves, progress=progress)
    extractor = FeatureExtractor(feature_cfg)
    order = sorted(range(len(waves)), key=lambda i: np.asarray(waves[i]).size)
    out = np.zeros((len(waves), extractor.num_channels * len(feature_cfg.stats)), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            wave, lengths = pad_batch([waves[i] for i in idx])
            feats, frames = extractor(wave, lengths)
            out[idx] = pool_stats(feats, frames, feature_cfg.stats).numpy()
    return out


def _ignore_probability_deprecation() -> None:
    """scikit-learn 1.9 deprecates SVC's ``probability`` argument (Platt scaling still works until 1.11)."""
    warnings.filterwarnings("ignore", message=".*`probability` parameter", category=FutureWarning)


def fit_svm(
    cfg: RunConfig,
    data: FitData,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    label: str | None = None,
) -> FitResult:
    """Choose C on the validation speakers (unweighted accuracy), then fit with Platt probabilities.

    Nothing is checkpointed, so there is nothing to ``resume``; ``callbacks`` (Lightning's) and
    ``label`` (of the epoch progress line) do not apply.
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    params = cfg.svm_params
    grid = [float(c) for c in (params["C"] if isinstance(params["C"], list) else [params["C"]])]
    weight = "balanced" if cfg.train.class_weights else None
    x_train = svm_features(data.train_waves, params["features"], cfg.features, progress=progress)

    def make(c: float, probability: bool) -> Any:
        svc = SVC(
            C=c,
            kernel=params["kernel"],
            class_weight=weight,
            probability=probability,
            random_state=cfg.train.seed,
        )
        return make_pipeline(StandardScaler(), svc)

    scores: dict[float, float] = {}
    if data.val_waves:
        x_val = svm_features(data.val_waves, params["features"], cfg.features, progress=progress)
        for c in grid:
            with warnings.catch_warnings():
                _ignore_probability_deprecation()
                pred = make(c, False).fit(x_train, data.train_y).predict(x_val)
            scores[c] = float(balanced_accuracy_score(data.val_y, pred))
        best_c = max(grid, key=lambda c: (scores[c], -abs(math.log10(c))))
    elif len(grid) == 1:
        best_c = grid[0]
    else:
        raise ConfigError(
            "model.params.C: choosing C among several values needs validation speakers "
            "(train.val_fraction > 0); give a single C"
        )
    with warnings.catch_warnings():
        _ignore_probability_deprecation()
        pipeline = make(best_c, True).fit(x_train, data.train_y)
    (run_dir / "model_selection.json").write_text(
        json.dumps({"C": best_c, "val_ua_by_C": {str(c): s for c, s in scores.items()}}, indent=2)
    )
    return FitResult(
        model=SVMClassifier(data.labels, pipeline, params["features"], cfg.features),
        best_val_ua=scores.get(best_c, math.nan),
        history=[],
        checkpoint=None,
    )
