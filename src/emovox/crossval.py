"""Orchestration of ``emovox cv``: splits chosen from the config, one fit + score per fold, pooling.

Same layer as :mod:`emovox.runs` (the train and evaluate flows): above fitting, scoring and
reports. :func:`cross_validate` is the Python API; :func:`cv_splits` + :func:`run_cv` are what
the command does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emovox import fitting
from emovox import splits as sp
from emovox.calibration import ece_of, reliability_of
from emovox.classifier import FitResult
from emovox.config import RunConfig
from emovox.corpora import Utterance, load_corpus, load_waves
from emovox.errors import ConfigError, CorpusError, EmovoxError
from emovox.jsonutil import jsonable
from emovox.metrics import METRIC_NAMES, compute_metrics, mean_std
from emovox.reports import LEAK_WARNING, write_report
from emovox.runs import mark_run_dir
from emovox.scoring import evaluate_model, ordered_labels, without_predictions


@dataclass
class CVPlan:
    """The utterances and splits of an ``emovox cv`` run, chosen from its config."""

    utts: list[Utterance]
    splits: list[sp.Split]
    protocol: str
    """One sentence for the report."""
    shared_only: bool = False
    """Cross-corpus: score only the emotions both corpora have."""
    leaky: bool = False
    """The explicitly requested random utterance split (speakers leak; for comparison only)."""


def cv_splits(
    cfg: RunConfig,
    *,
    folds: int | None = None,
    loso: bool = False,
    leaky_random_split: bool = False,
    source: str = "config",
) -> CVPlan:
    """Load ``cfg.data`` and choose the cross-validation splits.

    Speaker-grouped k-fold (``folds``, default ``split.folds``), leave-one-speaker-out (``loso`` or
    ``split.protocol: loso``), train-on-A / test-on-B when ``split.protocol`` is ``cross_corpus``
    (and neither ``folds`` nor ``loso`` is given), or, only on explicit request, one random
    utterance split that leaks speakers. ``data.extra`` corpora join every training side.
    """
    import warnings

    if folds is not None and loso:
        raise ConfigError("--folds and --loso are alternatives; pass one")
    if not cfg.data.path:
        raise ConfigError(f"{source}: data.path is not set (the corpus to cross-validate on)")
    utts = load_corpus(cfg.data.path, cfg.data.corpus, emotions=cfg.data.emotions).utterances
    shared_only = False
    if leaky_random_split:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            splits = [sp.random_split_leaks_speakers(utts, 0.2, cfg.train.seed)]
        protocol = f"random utterance split, 20% test ({LEAK_WARNING})"
    elif cfg.split.protocol == "cross_corpus" and not (folds or loso):
        if not cfg.split.test_path:
            raise ConfigError(f"{source}: split.protocol is cross_corpus but split.test_path is not set")
        test = load_corpus(cfg.split.test_path, cfg.split.test_corpus, emotions=cfg.data.emotions).utterances
        train_idx, test_idx, shared = sp.cross_corpus(utts, test)
        splits = [sp.Split(train_idx, test_idx + len(utts), "cross-corpus")]
        utts = [*utts, *test]
        shared_only = True
        protocol = (
            f"cross-corpus: train on {cfg.data.path}, test on {cfg.split.test_path} ({', '.join(shared)})"
        )
    elif loso or (cfg.split.protocol == "loso" and folds is None):
        splits = sp.leave_one_speaker_out(utts)
        protocol = f"leave-one-speaker-out cross-validation, {len(splits)} folds"
    else:
        k = folds or cfg.split.folds
        splits = sp.speaker_kfold(utts, k=k, seed=cfg.train.seed)
        protocol = f"speaker-grouped {k}-fold cross-validation (seed {cfg.train.seed})"
    if cfg.data.extra:  # extra corpora only ever add training speakers
        extra = [
            u
            for src in cfg.data.extra
            for u in load_corpus(src.path, src.corpus, emotions=cfg.data.emotions).utterances
        ]
        extra_idx = np.arange(len(utts), len(utts) + len(extra))
        splits = [sp.Split(np.concatenate([s.train, extra_idx]), s.test, s.name) for s in splits]
        utts = [*utts, *extra]
        protocol += f"; {len(extra)} clips of extra corpora added to every training side"
    return CVPlan(list(utts), list(splits), protocol, shared_only=shared_only, leaky=leaky_random_split)


def run_cv(
    cfg: RunConfig, plan: CVPlan, run_dir: str | Path, *, progress: bool = True
) -> tuple[dict[str, Any], Path]:
    """Everything ``emovox cv`` does after choosing the splits: config.yaml, every fold, the report.

    Returns ``(cross_validate result, report.md)``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_run_dir(run_dir, "cv")
    cfg.dump(run_dir / "config.yaml")
    res = cross_validate(
        cfg,
        plan.utts,
        plan.splits,
        run_dir,
        val_fraction=cfg.train.val_fraction,
        seed=cfg.train.seed,
        trim=cfg.data.trim_silence,
        shared_only=plan.shared_only,
        allow_speaker_leak=plan.leaky,
        protocol=plan.protocol,
        progress=progress,
    )
    title = f"{cfg.name or cfg.model.family}: {plan.protocol}"
    return res, write_report(run_dir, res, title=title, config=cfg.to_dict())


def cross_validate(
    cfg: Any,
    utts: Sequence[Utterance],
    splits: Sequence[sp.Split],
    run_dir: str | Path,
    *,
    waves: Mapping[Path, np.ndarray] | None = None,
    fit: Callable[..., FitResult] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    trim: bool = False,
    shared_only: bool = False,
    allow_speaker_leak: bool = False,
    protocol: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and test once per split; per-fold metrics, mean ± std, pooled confusion/per-speaker.

    For each split, validation speakers are carved from the split's training speakers
    (:func:`emovox.splits.validation_split`, for early stopping / model selection), ``fit``
    (default :func:`emovox.fitting.fit`) trains into ``run_dir/fold_XX/`` and the model is scored on
    the held-out speakers with :func:`~emovox.scoring.evaluate_model`. Each waveform is loaded once
    (or taken from ``waves``) and shared by all folds. A fold whose test speakers also appear in its
    training or validation data raises ``ValueError`` unless ``allow_speaker_leak`` (only for the
    explicitly requested leaky random split), in which case the result is flagged ``speaker_leak``.

    Returns ``{"kind": "cross_validation", "protocol": {...}, "folds": [...], "summary": {wa, ua,
    macro_f1: {mean, std, values}}, "pooled": compute_metrics over all folds' predictions,
    "predictions": [...], "skipped": [...]}``; each fold records its train/val/test speakers.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    utts = list(utts)
    if not splits:
        raise EmovoxError("cross-validation needs at least one split")
    skipped: list[tuple[Path, str]] = []
    if waves is None:
        waves, skipped = load_waves(utts, trim=trim, progress=progress)
    usable = np.array([u.path in waves for u in utts], dtype=bool)
    folds: list[dict[str, Any]] = []
    for number, split in enumerate(splits, start=1):
        fold = _run_fold(
            _Fold(f"fold_{number:02d}", split, usable, val_fraction, seed),
            cfg,
            utts,
            waves,
            run_dir,
            fit=fit if fit is not None else _labelled_fit(f"fold_{number:02d}"),
            shared_only=shared_only,
            allow_speaker_leak=allow_speaker_leak,
            progress=progress,
        )
        folds.append(fold)
    return _cv_result(folds, protocol, val_fraction, seed, shared_only, skipped)


def _labelled_fit(label: str) -> Callable[..., FitResult]:
    """:func:`emovox.fitting.fit` with its progress output labelled by the fold."""

    def fit(*args: Any, **kwargs: Any) -> FitResult:
        return fitting.fit(*args, label=label, **kwargs)

    return fit


@dataclass
class _Fold:
    name: str
    split: sp.Split
    usable: np.ndarray
    val_fraction: float
    seed: int


def _run_fold(
    fold: _Fold,
    cfg: Any,
    utts: list[Utterance],
    waves: Mapping[Path, np.ndarray],
    run_dir: Path,
    *,
    fit: Callable[..., FitResult],
    shared_only: bool,
    allow_speaker_leak: bool,
    progress: bool,
) -> dict[str, Any]:
    """Fit and score one fold into ``run_dir/<fold>/`` (its own metrics.json); returns the fold record
    with its predictions under ``metrics["predictions"]`` labelled by fold."""
    split, name = fold.split, fold.name
    train_idx = np.asarray(split.train, dtype=int)
    test_idx = np.asarray(split.test, dtype=int)
    train_idx = train_idx[fold.usable[train_idx]]
    test_idx = test_idx[fold.usable[test_idx]]
    if test_idx.size == 0 or train_idx.size == 0:
        raise CorpusError(f"{name} ({split.name}): no usable training or test utterances")
    fit_idx, val_idx, validation = sp.validation_split(utts, train_idx, fold.val_fraction, fold.seed)
    fit_utts = [utts[i] for i in fit_idx]
    val_utts = [utts[i] for i in val_idx]
    test_utts = [utts[i] for i in test_idx]
    train_speakers = sorted({u.speaker for u in fit_utts})
    val_speakers = sorted({u.speaker for u in val_utts})
    test_speakers = sorted({u.speaker for u in test_utts})
    leaked = sorted(set(test_speakers) & (set(train_speakers) | set(val_speakers)))
    if leaked and not allow_speaker_leak:
        raise ValueError(f"{name} ({split.name}): test speaker(s) {', '.join(leaked)} also in training data")

    fold_dir = run_dir / name
    started = time.perf_counter()
    result = fit(cfg, fit_utts, val_utts, fold_dir, waves=waves)
    train_seconds = time.perf_counter() - started
    m = evaluate_model(result.model, test_utts, waves, shared_only=shared_only, progress=progress)
    for p in m["predictions"]:
        p["fold"] = name
    record = {
        "fold": name,
        "name": split.name,
        "train_speakers": train_speakers,
        "val_speakers": val_speakers,
        "test_speakers": test_speakers,
        "leaked_speakers": leaked,
        "validation": validation,
        "n_train": len(fit_utts),
        "n_val": len(val_utts),
        "n_test": len(test_utts),
        "best_val_ua": float(result.best_val_ua),
        "train_seconds": train_seconds,
        "history": list(result.history),
        "wa": m["wa"],
        "ua": m["ua"],
        "macro_f1": m["macro_f1"],
        "ece": m.get("ece"),
        # a speaker-normalised model: the same folds without normalisation (lone clips)
        "plain_ua": (m.get("plain") or {}).get("ua"),
        "corpus_ua": (m.get("corpus_normalized") or {}).get("ua"),
        "metrics": m,
    }
    fold_dir.mkdir(parents=True, exist_ok=True)
    stored = {**record, "metrics": without_predictions(m)}
    (fold_dir / "metrics.json").write_text(json.dumps(jsonable(stored), indent=2))
    return record


def _cv_result(
    folds: list[dict[str, Any]],
    protocol: str | None,
    val_fraction: float,
    seed: int,
    shared_only: bool,
    skipped: list[tuple[Path, str]],
) -> dict[str, Any]:
    """Pool the folds' predictions: the cross_validate result."""
    predictions: list[dict[str, Any]] = []
    pooled_labels: list[str] = []
    for fold in folds:
        predictions.extend(fold["metrics"].pop("predictions"))
        labels = [*pooled_labels, *fold["metrics"]["labels"]]
        pooled_labels = ordered_labels(labels, labels)
    pooled = compute_metrics(
        [p["true"] for p in predictions],
        [p["pred"] for p in predictions],
        pooled_labels,
        [p["speaker"] for p in predictions],
    )
    # calibration of every test prediction together (a fold's few hundred clips bias ECE upwards)
    table = reliability_of(
        [p["confidence"] for p in predictions], [p["true"] == p["pred"] for p in predictions]
    )
    pooled["ece"], pooled["reliability"] = ece_of(table), table
    tested = [s for f in folds for s in f["test_speakers"]]
    description = protocol or f"speaker-grouped cross-validation, {len(folds)} fold(s)"
    return {
        "kind": "cross_validation",
        "protocol": {
            "name": description,
            "n_folds": len(folds),
            "speaker_leak": any(f["leaked_speakers"] for f in folds),
            "test_speakers_once": len(tested) == len(set(tested)),
            "val_fraction": val_fraction,
            "seed": seed,
            "shared_emotions": shared_only,
        },
        "labels": pooled_labels,
        "folds": folds,
        "summary": {
            **{key: mean_std([f[key] for f in folds]) for key in METRIC_NAMES},
            # model selection reads best_val_ua (validation speakers only), never the test scores
            "best_val_ua": mean_std([f["best_val_ua"] for f in folds]),
            **{
                key: mean_std([f[key] for f in folds])
                for key in ("ece", "plain_ua", "corpus_ua")
                if all(f.get(key) is not None for f in folds)
            },
        },
        "pooled": pooled,
        "predictions": predictions,
        "skipped": [{"path": str(p), "reason": r} for p, r in skipped],
    }
