"""Honest evaluation: metrics, model evaluation, speaker-grouped cross-validation and reports.

Speech-emotion corpora are small and acted by few speakers, so a random utterance split lets the
model recognise *voices* rather than emotions. Everything here is speaker-independent: test
speakers never appear in training or validation data (:func:`cross_validate` checks it per fold
and records the speaker lists), and scores are reported as

* **WA** (weighted accuracy): plain accuracy over utterances;
* **UA** (unweighted accuracy, balanced accuracy): the mean per-class recall over the emotions
  present in the test data, the standard headline number because corpora are imbalanced;
* **macro-F1** over the same emotions;

plus per-class precision/recall/F1, a confusion matrix (rows = true emotion, columns = predicted,
in label order) and per-speaker accuracy.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from emovox.audio import iter_load
from emovox.errors import AudioError, CorpusError, EmovoxError

if TYPE_CHECKING:
    from emovox.corpora import Utterance
    from emovox.splits import Split

METRIC_NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1"}
LEAK_WARNING = "speakers leak: not a valid result"


class Classifier(Protocol):
    """What evaluation consumes: labels plus batched class probabilities for 16 kHz waveforms."""

    labels: list[str]

    def predict_proba(self, waves: Sequence[np.ndarray]) -> np.ndarray: ...


FitFunction = Callable[..., Any]


def _progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=True,
    )


# --------------------------------------------------------------------------- metrics


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


# --------------------------------------------------------------------------- audio


def load_waves(
    utts: Sequence[Utterance],
    *,
    trim: bool = False,
    min_duration: float = 0.0,
    progress: bool = True,
    description: str = "loading audio",
    workers: int | None = None,
) -> tuple[dict[Path, np.ndarray], list[tuple[Path, str]]]:
    """Decode every utterance once (16 kHz mono): ``({path: wave}, [(path, reason) skipped])``.

    ``trim`` / ``min_duration`` are the preprocessing the model is trained or was trained with. A
    file that cannot be used (unreadable, silent, too short) is skipped with its reason rather than
    ending a long evaluation; callers report the skipped list. Files are decoded on ``workers``
    threads (default: one per core, see :func:`emovox.audio.iter_load`).
    """
    waves: dict[Path, np.ndarray] = {}
    skipped: list[tuple[Path, str]] = []
    paths = list(dict.fromkeys(u.path for u in utts))
    with _progress() as bar:
        task = bar.add_task(description, total=len(paths), visible=progress)
        for path, result in iter_load(paths, workers=workers, trim=trim, min_duration=min_duration):
            if isinstance(result, AudioError):
                skipped.append((Path(path), str(result)))
            else:
                waves[path] = result
            bar.advance(task)
    return waves, skipped


# --------------------------------------------------------------------------- evaluate


def _ordered(labels: Sequence[str], reference: Sequence[str]) -> list[str]:
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
    utts = list(utts)
    if not utts:
        raise CorpusError("no test utterances to evaluate")
    test_labels = _ordered([u.emotion for u in utts], model_labels)
    unknown = [lab for lab in test_labels if lab not in model_labels]
    shared: list[str] | None = None
    dropped: dict[str, int] = {}
    eval_labels = model_labels
    if unknown and not shared_only:
        raise CorpusError(
            f"test data has emotion(s) the model does not know: {', '.join(unknown)} "
            f"(model labels: {', '.join(model_labels)}); evaluate on the shared emotions only "
            "(cross-corpus mode) to leave them out"
        )
    if shared_only:
        shared = [lab for lab in model_labels if lab in set(test_labels)]
        if not shared:
            raise CorpusError(
                f"the model ({', '.join(model_labels)}) and the test data ({', '.join(test_labels)}) "
                "share no emotion"
            )
        for u in utts:
            if u.emotion not in shared:
                dropped[u.emotion] = dropped.get(u.emotion, 0) + 1
        utts = [u for u in utts if u.emotion in shared]
        eval_labels = shared

    skipped: list[tuple[Path, str]] = []
    loaded: Mapping[Path, np.ndarray] = waves if waves is not None else {}
    missing = [u for u in utts if u.path not in loaded]
    if missing:
        extra, skipped = load_waves(missing, trim=trim, min_duration=min_duration, progress=progress)
        loaded = {**loaded, **extra}
    utts = [u for u in utts if u.path in loaded]
    if not utts:
        raise CorpusError("none of the test files could be loaded: " + "; ".join(r for _, r in skipped[:3]))

    probs = np.empty((len(utts), len(model_labels)), dtype=np.float64)
    with _progress() as bar:
        task = bar.add_task("predicting", total=len(utts), visible=progress)
        for start in range(0, len(utts), batch_size):
            chunk = utts[start : start + batch_size]
            out = np.asarray(clf.predict_proba([loaded[u.path] for u in chunk]), dtype=np.float64)
            if out.shape != (len(chunk), len(model_labels)):
                raise ValueError(
                    f"predict_proba returned shape {out.shape}, expected {(len(chunk), len(model_labels))}"
                )
            probs[start : start + len(chunk)] = out
            bar.advance(task, len(chunk))

    if eval_labels != model_labels:
        columns = [model_labels.index(lab) for lab in eval_labels]
        probs = probs[:, columns]
        probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
    best = probs.argmax(axis=1)
    y_pred = [eval_labels[i] for i in best]
    y_true = [u.emotion for u in utts]
    speakers = [u.speaker for u in utts]
    metrics = compute_metrics(y_true, y_pred, eval_labels, speakers)
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


def resolve_model_path(model: str | Path) -> str | Path:
    """A bundle folder, a run folder (its ``model/`` bundle) or ``"default"``, for ``load_bundle``."""
    from emovox.bundle import CONFIG_FILE

    if str(model) == "default":
        return "default"
    path = Path(model)
    if not (path / CONFIG_FILE).is_file() and (path / "model" / CONFIG_FILE).is_file():
        return path / "model"
    return path


def _training_speakers(meta: Mapping[str, Any]) -> set[str] | None:
    """The speakers a bundle was trained on, when its ``training`` summary records them."""
    speakers = (meta.get("training") or {}).get("speakers")
    if isinstance(speakers, Mapping):
        return {str(s) for s in speakers}
    if isinstance(speakers, list):
        return {str(s) for s in speakers}
    return None


def evaluate_bundle(
    model: str | Path,
    utts: Sequence[Utterance],
    *,
    shared_only: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a saved model (bundle folder, run folder or ``"default"``) on ``utts``.

    Audio is loaded with the bundle's recorded preprocessing (silence trimming, minimum duration),
    exactly as in training. When the bundle records its training speakers, any test speaker among
    them is listed under ``leaked_speakers`` and the result is flagged ``speaker_leak``, because
    such a score is not speaker-independent.
    """
    from emovox.predict import Recognizer

    rec = Recognizer.load(resolve_model_path(model), device=device)
    metrics = evaluate_model(
        rec, utts, shared_only=shared_only, trim=rec.trim, min_duration=rec.min_duration, progress=progress
    )
    trained_on = _training_speakers(rec.meta)
    leaked = sorted(set(metrics["per_speaker"]) & trained_on) if trained_on is not None else []
    metrics["model"] = {
        "path": rec.meta["path"],
        "family": rec.meta["model"].get("family"),
        "labels": rec.labels,
        "preprocessing": rec.meta["preprocessing"],
        "training_speakers": sorted(trained_on) if trained_on is not None else None,
    }
    metrics["leaked_speakers"] = leaked
    metrics["speaker_leak"] = bool(leaked)
    return metrics


# --------------------------------------------------------------------------- cross-validation


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for a single fold) of per-fold scores."""
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "values": [float(v) for v in arr]}


def _validation_split(
    utts: Sequence[Utterance], train_idx: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Carve validation data from a fold's training side: whole speakers when there are two or more.

    With a single training speaker (e.g. TESS: train on one actress, test on the other) no speaker
    can be spared, so an emotion-stratified ``fraction`` of that speaker's clips validates instead;
    the test speakers stay unseen either way. ``fraction`` 0 means no validation data (the model
    trains for its full epochs; the last weights are kept). Returns ``(fit_idx, val_idx, description)``.
    """
    from sklearn.model_selection import train_test_split

    from emovox.splits import validation_speakers

    if fraction <= 0:
        return np.asarray(train_idx), np.asarray([], dtype=np.int64), "none"
    if len({utts[i].speaker for i in train_idx}) >= 2:
        fit_idx, val_idx = validation_speakers(utts, train_idx, fraction=fraction, seed=seed)
        return fit_idx, val_idx, "speakers"
    labels = [utts[i].emotion for i in train_idx]
    fit_idx, val_idx = train_test_split(train_idx, test_size=fraction, random_state=seed, stratify=labels)
    return np.sort(fit_idx), np.sort(val_idx), "clips of the single training speaker"


def cross_validate(
    cfg: Any,
    utts: Sequence[Utterance],
    splits: Sequence[Split],
    run_dir: str | Path,
    *,
    waves: Mapping[Path, np.ndarray] | None = None,
    fit: FitFunction | None = None,
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
    (:func:`emovox.splits.validation_speakers`, for early stopping / model selection), ``fit``
    (default :func:`emovox.training.fit`) trains into ``run_dir/fold_XX/`` and the model is scored on
    the held-out speakers with :func:`evaluate_model`. Each waveform is loaded once (or taken from
    ``waves``) and shared by all folds. A fold whose test speakers also appear in its training or
    validation data raises ``ValueError`` unless ``allow_speaker_leak`` (only for the explicitly
    requested leaky random split), in which case the result is flagged ``speaker_leak``.

    Returns ``{"kind": "cross_validation", "protocol": {...}, "folds": [...], "summary": {wa, ua,
    macro_f1: {mean, std, values}}, "pooled": compute_metrics over all folds' predictions,
    "predictions": [...], "skipped": [...]}``; each fold records its train/val/test speakers.
    """
    if fit is None:
        from emovox.training import fit as fit_fn
    else:
        fit_fn = fit
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
    predictions: list[dict[str, Any]] = []
    pooled_labels: list[str] = []
    any_leak = False
    for number, split in enumerate(splits, start=1):
        fold_name = f"fold_{number:02d}"
        train_idx = np.asarray(split.train, dtype=int)
        test_idx = np.asarray(split.test, dtype=int)
        train_idx = train_idx[usable[train_idx]]
        test_idx = test_idx[usable[test_idx]]
        if test_idx.size == 0 or train_idx.size == 0:
            raise CorpusError(f"{fold_name} ({split.name}): no usable training or test utterances")
        fit_idx, val_idx, validation = _validation_split(utts, train_idx, val_fraction, seed)
        fit_utts = [utts[i] for i in fit_idx]
        val_utts = [utts[i] for i in val_idx]
        test_utts = [utts[i] for i in test_idx]
        train_speakers = sorted({u.speaker for u in fit_utts})
        val_speakers = sorted({u.speaker for u in val_utts})
        test_speakers = sorted({u.speaker for u in test_utts})
        leaked = sorted(set(test_speakers) & (set(train_speakers) | set(val_speakers)))
        if leaked and not allow_speaker_leak:
            raise ValueError(
                f"{fold_name} ({split.name}): test speaker(s) {', '.join(leaked)} also in training data"
            )
        any_leak = any_leak or bool(leaked)

        fold_dir = run_dir / fold_name
        started = time.perf_counter()
        result = fit_fn(cfg, fit_utts, val_utts, fold_dir, waves=waves)
        train_seconds = time.perf_counter() - started
        m = evaluate_model(result.model, test_utts, waves, shared_only=shared_only, progress=progress)
        fold_predictions = m.pop("predictions")
        for p in fold_predictions:
            p["fold"] = fold_name
        predictions.extend(fold_predictions)
        pooled_labels = _ordered([*pooled_labels, *m["labels"]], [*pooled_labels, *m["labels"]])
        fold = {
            "fold": fold_name,
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
            "metrics": m,
        }
        fold_dir.mkdir(parents=True, exist_ok=True)
        (fold_dir / "metrics.json").write_text(json.dumps(_jsonable(fold), indent=2))
        folds.append(fold)

    pooled = compute_metrics(
        [p["true"] for p in predictions],
        [p["pred"] for p in predictions],
        pooled_labels,
        [p["speaker"] for p in predictions],
    )
    tested = [s for f in folds for s in f["test_speakers"]]
    description = protocol or f"speaker-grouped cross-validation, {len(folds)} fold(s)"
    return {
        "kind": "cross_validation",
        "protocol": {
            "name": description,
            "n_folds": len(folds),
            "speaker_leak": any_leak,
            "test_speakers_once": len(tested) == len(set(tested)),
            "val_fraction": val_fraction,
            "seed": seed,
            "shared_emotions": shared_only,
        },
        "labels": pooled_labels,
        "folds": folds,
        "summary": {key: _mean_std([f[key] for f in folds]) for key in METRIC_NAMES},
        "pooled": pooled,
        "predictions": predictions,
        "skipped": [{"path": str(p), "reason": r} for p, r in skipped],
    }


# --------------------------------------------------------------------------- report


def _jsonable(obj: Any) -> Any:
    """Convert NumPy scalars/arrays, Paths and NaN to plain JSON values."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(x: float | None) -> str:
    """Three decimals; ``-`` for a score that does not exist (no validation data: None or NaN)."""
    if x is None or x != x:
        return "-"
    return f"{x:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _per_class_table(m: Mapping[str, Any]) -> list[str]:
    rows = [
        [lab, _fmt(c["precision"]), _fmt(c["recall"]), _fmt(c["f1"]), c["support"]]
        for lab, c in m["per_class"].items()
    ]
    return _table(["emotion", "precision", "recall", "F1", "support"], rows)


def _per_speaker_table(m: Mapping[str, Any]) -> list[str]:
    rows = [[s, _fmt(v["accuracy"]), v["n"]] for s, v in m["per_speaker"].items()]
    return _table(["speaker", "accuracy", "n"], rows)


def _write_predictions(path: Path, predictions: Sequence[Mapping[str, Any]]) -> None:
    columns = ["path", "speaker", "true", "pred", "confidence"]
    if predictions and "fold" in predictions[0]:
        columns.append("fold")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(predictions)


def write_report(
    run_dir: str | Path,
    metrics: Mapping[str, Any],
    *,
    history: Sequence[Mapping[str, Any]] | str | Path | None = None,
    title: str = "emovox evaluation",
    config: Mapping[str, Any] | None = None,
    data_utts: Sequence[Utterance] | None = None,
    waves: Mapping[Path, np.ndarray] | None = None,
    protocol: str | None = None,
) -> Path:
    """Write ``metrics.json``, ``predictions.csv``, ``plots/*.png`` and ``report.md`` into ``run_dir``.

    ``metrics`` is an :func:`evaluate_model` or :func:`cross_validate` result. ``history`` (per-epoch
    dicts or a Lightning ``metrics.csv``) adds training curves; for cross-validation each fold's own
    history is plotted. ``data_utts`` (with ``waves`` if already loaded) adds example spectrograms
    and per-emotion feature distributions. ``protocol`` is a sentence describing the split; the
    report always lists the held-out speakers. Returns the path of ``report.md``.
    """
    from emovox import plots

    run_dir = Path(run_dir)
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    is_cv = metrics.get("kind") == "cross_validation"
    headline = metrics["pooled"] if is_cv else metrics
    leak = (
        bool(metrics.get("protocol", {}).get("speaker_leak")) if is_cv else bool(metrics.get("speaker_leak"))
    )

    lines = [f"# {title}", ""]
    if leak:
        lines += [
            f"> **WARNING — {LEAK_WARNING}.** Test speakers also appear in the training data, so "
            "these scores measure speaker memorisation, not emotion recognition.",
            "",
        ]

    # scores
    lines += ["## Scores", ""]
    if is_cv:
        s = metrics["summary"]
        lines += _table(
            ["metric", "mean ± std over folds", "pooled over all folds"],
            [
                [METRIC_NAMES[k], f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}", _fmt(headline[k])]
                for k in METRIC_NAMES
            ],
        )
        lines += ["Per fold:", ""]
        lines += _table(
            ["fold", "test speakers", "n test", "WA", "UA", "macro-F1", "best val UA", "train time (s)"],
            [
                [
                    f["fold"],
                    ", ".join(f["test_speakers"]),
                    f["n_test"],
                    _fmt(f["wa"]),
                    _fmt(f["ua"]),
                    _fmt(f["macro_f1"]),
                    _fmt(f["best_val_ua"]),
                    f"{f['train_seconds']:.1f}",
                ]
                for f in metrics["folds"]
            ],
        )
        folds_png = plots.plot_fold_scores(metrics["folds"], plot_dir / "fold_scores.png")
        lines += [f"![scores per fold](plots/{folds_png.name})", ""]
    else:
        lines += _table(["metric", "value"], [[METRIC_NAMES[k], _fmt(headline[k])] for k in METRIC_NAMES])
        lines += [f"{headline['n']} test utterances.", ""]

    # protocol
    lines += ["## Protocol", ""]
    if protocol:
        lines += [protocol, ""]
    if is_cv:
        p = metrics["protocol"]
        by_clips = [f["fold"] for f in metrics["folds"] if f.get("validation") not in ("speakers", "none")]
        if p["val_fraction"] > 0:
            held = (
                f"validation speakers (fraction {p['val_fraction']:g} of the training speakers, seed "
                f"{p['seed']}) are carved from the training speakers for model selection and are never "
                "tested on in that fold."
            )
        else:
            held = "there is no validation data (val_fraction 0): each model trains for its full epochs."
        lines += [f"{p['name']}. In every fold the test speakers are held out entirely; {held}", ""]
        if by_clips:
            lines += [
                f"Folds {', '.join(by_clips)} have a single training speaker, so a stratified fraction "
                f"{p['val_fraction']:g} of that speaker's clips validates instead (the test speaker "
                "stays unseen).",
                "",
            ]
        lines += [
            f"- speaker leak between training and test: **{'YES' if p['speaker_leak'] else 'no'}**",
            f"- every speaker tested exactly once: {'yes' if p['test_speakers_once'] else 'no'}",
            "",
        ]
        lines += _table(
            ["fold", "train speakers", "validation speakers", "test speakers"],
            [
                [
                    f["fold"],
                    ", ".join(f["train_speakers"]),
                    ", ".join(f["val_speakers"]),
                    ", ".join(f["test_speakers"]),
                ]
                for f in metrics["folds"]
            ],
        )
    else:
        lines += [f"Test speakers: {', '.join(headline['per_speaker']) or 'unknown'}.", ""]
        model = metrics.get("model")
        if model:
            lines += [
                f"Model: `{model['path']}` ({model.get('family') or 'unknown family'}), "
                f"labels {', '.join(model['labels'])}.",
                "",
            ]
            if model.get("training_speakers") is None:
                lines += [
                    "The bundle does not record its training speakers, so speaker independence "
                    "could not be checked: make sure none of the test speakers was used in training.",
                    "",
                ]
            elif metrics.get("leaked_speakers"):
                lines += [
                    f"Test speakers also in the model's training data: "
                    f"**{', '.join(metrics['leaked_speakers'])}**.",
                    "",
                ]
            else:
                lines += ["None of the test speakers is among the model's training speakers.", ""]
    shared = headline.get("shared_emotions") or (
        metrics["folds"][0]["metrics"].get("shared_emotions") if is_cv else None
    )
    if shared:
        lines += [
            f"Cross-corpus: scored on the emotions shared by the model and the test data only "
            f"({', '.join(shared)}); the model's decision was restricted to these emotions.",
            "",
        ]
    dropped = headline.get("dropped") or {}
    if dropped:
        lines += [
            "Test utterances left out (emotion unknown to the model): "
            + ", ".join(f"{e}: {n}" for e, n in sorted(dropped.items())),
            "",
        ]
    skipped = metrics.get("skipped") or []
    if skipped:
        lines += [f"{len(skipped)} file(s) could not be loaded and were skipped:", ""]
        lines += [f"- {s['reason']}" for s in skipped[:20]] + [""]

    # confusion / per class / per speaker
    scope = " (pooled over all folds)" if is_cv else ""
    cm_png = plots.plot_confusion(headline["confusion"], headline["labels"], plot_dir / "confusion.png")
    lines += [
        f"## Confusion matrix{scope}",
        "",
        "Rows: true emotion; columns: predicted.",
        "",
        f"![confusion matrix](plots/{cm_png.name})",
        "",
    ]
    lines += [f"## Per emotion{scope}", ""] + _per_class_table(headline)
    if headline["per_speaker"]:
        spk_png = plots.plot_per_speaker(headline["per_speaker"], plot_dir / "per_speaker.png")
        lines += [f"## Per speaker{scope}", "", f"![accuracy per speaker](plots/{spk_png.name})", ""]
        lines += _per_speaker_table(headline)

    # training curves
    histories: list[tuple[str, Any]] = []
    if is_cv:
        histories = [(f["fold"], f["history"]) for f in metrics["folds"] if f.get("history")]
    elif history:
        histories = [("training", history)]
    if histories:
        lines += ["## Training curves", ""]
        for name, h in histories:
            png = plots.plot_history(h, plot_dir / f"history_{name}.png", title=name)
            lines += [f"![training curves {name}](plots/{png.name})", ""]

    # data
    if data_utts:
        data_waves = waves
        if data_waves is None:
            sample = _data_sample(data_utts)
            data_waves, _ = load_waves(sample, progress=False)
        lines += ["## Data", ""]
        counts: dict[str, int] = {}
        for u in data_utts:
            counts[u.emotion] = counts.get(u.emotion, 0) + 1
        lines += _table(["emotion", "utterances"], sorted(counts.items()))
        ex_png = plots.plot_examples(data_utts, data_waves, plot_dir / "examples.png")
        dist_png = plots.plot_feature_distributions(
            data_utts, data_waves, plot_dir / "feature_distributions.png"
        )
        lines += [
            f"![one example per emotion](plots/{ex_png.name})",
            "",
            f"![per-emotion feature distributions](plots/{dist_png.name})",
            "",
        ]

    if config:
        import yaml

        lines += [
            "## Configuration",
            "",
            "```yaml",
            yaml.safe_dump(_jsonable(config), sort_keys=False).rstrip(),
            "```",
            "",
        ]

    predictions = metrics.get("predictions") or []
    stored = {k: v for k, v in metrics.items() if k != "predictions"}
    if predictions:
        _write_predictions(run_dir / "predictions.csv", predictions)
        lines += ["Per-utterance predictions: [predictions.csv](predictions.csv).", ""]
    (run_dir / "metrics.json").write_text(json.dumps(_jsonable(stored), indent=2))
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


def _data_sample(utts: Sequence[Utterance], per_emotion: int = 40, seed: int = 0) -> list[Utterance]:
    """Up to ``per_emotion`` utterances of each emotion (corpus-order first one always included)."""
    rng = np.random.default_rng(seed)
    by_emotion: dict[str, list[Utterance]] = {}
    for u in utts:
        by_emotion.setdefault(u.emotion, []).append(u)
    sample: list[Utterance] = []
    for group in by_emotion.values():
        rest = rng.permutation(len(group) - 1)[: per_emotion - 1] + 1
        sample += [group[0]] + [group[i] for i in sorted(rest)]
    return sample
