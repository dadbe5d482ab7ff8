"""The run report: ``report.md`` + ``metrics.json`` + ``predictions.csv`` + ``plots/*.png``.

:func:`write_report` is the one writer that ``emovox train``, ``emovox cv`` and ``emovox evaluate``
(and their Python functions in :mod:`emovox.runs`) call. It takes the plain result dicts those
produce (kind ``"train"``, ``"cross_validation"`` or an evaluation) and knows nothing of how the
models were fitted. Each section of the report is one function below.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emovox.corpora import Utterance, load_waves
from emovox.jsonutil import jsonable
from emovox.metrics import METRIC_NAMES
from emovox.progress import progress_bar

LEAK_WARNING = "speakers leak: not a valid result"

Lines = list[str]


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
    plots: bool = True,
    progress: bool = False,
) -> Path:
    """Write ``metrics.json``, ``predictions.csv``, ``plots/*.png`` and ``report.md`` into ``run_dir``.

    ``metrics`` is an :func:`~emovox.scoring.evaluate_model` / :func:`~emovox.runs.evaluate_bundle`,
    :func:`~emovox.runs.cross_validate` or :func:`~emovox.runs.run_training` result (a training run
    without test speakers has no test scores; its report says so). ``history`` (per-epoch dicts or
    a Lightning ``metrics.csv``) adds training curves; for cross-validation each fold's own history
    is plotted. ``data_utts`` (with ``waves`` if already loaded) adds example spectrograms and
    per-emotion feature distributions. ``protocol`` is a sentence describing the split; the report
    always lists the held-out speakers. ``config`` is appended as YAML. ``plots=False`` draws no
    figure (the tables stay); ``progress`` shows which figure is being drawn. Returns ``report.md``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    is_cv = metrics.get("kind") == "cross_validation"
    headline = metrics["pooled"] if is_cv else metrics
    scored = "confusion" in headline  # a training run without test speakers has no test scores

    with _Figures(run_dir / "plots", enabled=plots, progress=progress) as figs:
        lines = [f"# {title}", ""]
        lines += _leak_warning(metrics, is_cv)
        lines += _scores_section(metrics, figs, is_cv, scored)
        if scored:
            lines += _protocol_section(metrics, protocol, is_cv)
        lines += _skipped_lines(metrics)
        if scored:
            lines += _result_sections(metrics, figs, is_cv)
        lines += _curves_section(metrics, history, figs, is_cv)
        if data_utts:
            lines += _data_section(data_utts, waves, figs)
        predictions = metrics.get("predictions") or []
        if predictions:
            _write_predictions(run_dir / "predictions.csv", predictions)
            lines += ["Per-utterance predictions: [predictions.csv](predictions.csv).", ""]
        if metrics.get("kind") == "train":
            lines += _training_section(metrics, figs)
        if config:
            lines += _config_section(config)

    stored = {k: v for k, v in metrics.items() if k != "predictions"}
    (run_dir / "metrics.json").write_text(json.dumps(jsonable(stored), indent=2))
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


# --------------------------------------------------------------------------- figures


class _Figures:
    """Draws the report's figures into ``plot_dir`` (unless disabled), one progress stage each.

    :meth:`draw` returns the markdown image lines for the figure (none when figures are off).
    """

    def __init__(self, plot_dir: Path, *, enabled: bool, progress: bool) -> None:
        self.plot_dir = plot_dir
        self.enabled = enabled
        self.progress = progress and enabled
        self._bar = progress_bar(enabled=self.progress)
        self._task: Any = None

    def __enter__(self) -> _Figures:
        if self.enabled:
            self.plot_dir.mkdir(parents=True, exist_ok=True)
        self._bar.__enter__()
        self._task = self._bar.add_task("report: figures", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def draw(self, alt: str, name: str, plot: Callable[..., Path], *args: Any, **kwargs: Any) -> Lines:
        """``plot(*args, plot_dir / name, **kwargs)`` under the stage ``alt``; ``![alt](plots/name)``."""
        if not self.enabled:
            return []
        self._bar.update(self._task, description=f"report: {alt}")
        png = plot(*args, self.plot_dir / name, **kwargs)
        self._bar.advance(self._task)
        return [f"![{alt}](plots/{png.name})", ""]


def _score_title(kind: str, m: Mapping[str, Any]) -> str:
    """``"test: UA 0.418, WA 0.450, macro-F1 0.401 (120 clips)"``: what a confusion matrix scores."""
    scores = f"UA {fmt_score(m['ua'])}, WA {fmt_score(m['wa'])}, macro-F1 {fmt_score(m['macro_f1'])}"
    return f"{kind}: {scores} ({m['n']} clips)"


# --------------------------------------------------------------------------- formatting


def fmt_score(x: float | None) -> str:
    """Three decimals; ``-`` for a score that does not exist (no validation data: None or NaN)."""
    if x is None or x != x:
        return "-"
    return f"{x:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Lines:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _per_class_table(m: Mapping[str, Any]) -> Lines:
    rows = [
        [lab, fmt_score(c["precision"]), fmt_score(c["recall"]), fmt_score(c["f1"]), c["support"]]
        for lab, c in m["per_class"].items()
    ]
    return _table(["emotion", "precision", "recall", "F1", "support"], rows)


def _per_speaker_table(m: Mapping[str, Any]) -> Lines:
    rows = [[s, fmt_score(v["accuracy"]), v["n"]] for s, v in m["per_speaker"].items()]
    return _table(["speaker", "accuracy", "n"], rows)


def _write_predictions(path: Path, predictions: Sequence[Mapping[str, Any]]) -> None:
    columns = ["path", "speaker", "true", "pred", "confidence"]
    if predictions and "fold" in predictions[0]:
        columns.append("fold")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(predictions)


# --------------------------------------------------------------------------- sections


def _leak_warning(metrics: Mapping[str, Any], is_cv: bool) -> Lines:
    leak = metrics.get("protocol", {}).get("speaker_leak") if is_cv else metrics.get("speaker_leak")
    if not leak:
        return []
    return [
        f"> **WARNING — {LEAK_WARNING}.** Test speakers also appear in the training data, so "
        "these scores measure speaker memorisation, not emotion recognition.",
        "",
    ]


def _scores_section(metrics: Mapping[str, Any], figs: _Figures, is_cv: bool, scored: bool) -> Lines:
    from emovox import plots

    lines = ["## Scores", ""]
    if not scored:
        return lines + [
            "No test speakers (split.protocol: none): there is no speaker-independent score for this "
            "run. Validation scores below are optimistic, since validation chose the checkpoint.",
            "",
        ]
    if not is_cv:
        lines += _table(["metric", "value"], [[METRIC_NAMES[k], fmt_score(metrics[k])] for k in METRIC_NAMES])
        return lines + [f"{metrics['n']} test utterances.", ""]
    s, pooled = metrics["summary"], metrics["pooled"]
    lines += _table(
        ["metric", "mean ± std over folds", "pooled over all folds"],
        [
            [METRIC_NAMES[k], f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}", fmt_score(pooled[k])]
            for k in METRIC_NAMES
        ],
    )
    for key, what in (
        ("best_val_ua", "mean best validation UA (validation speakers; what model selection reads)"),
        ("ece", "expected calibration error of the test folds (10 bins; 0 = perfectly calibrated)"),
        (
            "plain_ua",
            "UA without speaker normalisation (each clip alone; the scores above standardise "
            "statistics over each test speaker's clips)",
        ),
        ("corpus_ua", "UA with statistics standardised over each test corpus instead (speakers unknown)"),
    ):
        if key in s and s[key].get("values") and math.isfinite(s[key]["mean"]):
            lines += [f"- {what}: {s[key]['mean']:.3f} ± {s[key]['std']:.3f}"]
    if pooled.get("ece") is not None and math.isfinite(pooled["ece"]):
        lines += [f"- expected calibration error of all test predictions pooled: {pooled['ece']:.3f}"]
    lines += ["", "Per fold:", ""]
    lines += _table(
        ["fold", "test speakers", "n test", "WA", "UA", "macro-F1", "best val UA", "train time (s)"],
        [
            [
                f["fold"],
                ", ".join(f["test_speakers"]),
                f["n_test"],
                fmt_score(f["wa"]),
                fmt_score(f["ua"]),
                fmt_score(f["macro_f1"]),
                fmt_score(f["best_val_ua"]),
                f"{f['train_seconds']:.1f}",
            ]
            for f in metrics["folds"]
        ],
    )
    return lines + figs.draw("scores per fold", "fold_scores.png", plots.plot_fold_scores, metrics["folds"])


def _protocol_section(metrics: Mapping[str, Any], protocol: str | None, is_cv: bool) -> Lines:
    lines = ["## Protocol", ""]
    if protocol:
        lines += [protocol, ""]
    headline = metrics["pooled"] if is_cv else metrics
    lines += _cv_protocol(metrics) if is_cv else _evaluation_protocol(metrics)
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
    return lines


def _cv_protocol(metrics: Mapping[str, Any]) -> Lines:
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
    lines = [f"{p['name']}. In every fold the test speakers are held out entirely; {held}", ""]
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
    return lines + _table(
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


def _evaluation_protocol(metrics: Mapping[str, Any]) -> Lines:
    lines = [f"Test speakers: {', '.join(metrics['per_speaker']) or 'unknown'}.", ""]
    model = metrics.get("model")
    if not model:
        return lines
    lines += [
        f"Model: `{model['path']}` ({model.get('family') or 'unknown family'}), "
        f"labels {', '.join(model['labels'])}.",
        "",
    ]
    check = metrics.get("leak_check") or {}
    if metrics.get("leaked_speakers"):
        leaked = ", ".join(metrics["leaked_speakers"])
        lines += [f"Test speakers also in the model's training data: **{leaked}**.", ""]
    elif model.get("training_speakers") is not None:
        lines += ["None of the test speakers is among the model's training speakers.", ""]
    elif check.get("status") == "clean":
        lines += [f"Speaker independence: {check['reason']}.", ""]
    else:
        reason = check.get("reason") or "the bundle does not record its training speakers"
        lines += [
            f"{reason[0].upper()}{reason[1:]}, so speaker independence could not be checked: "
            "leakage cannot be ruled out; make sure none of the test speakers was used in training.",
            "",
        ]
    return lines


def _skipped_lines(metrics: Mapping[str, Any]) -> Lines:
    skipped = metrics.get("skipped") or []
    if not skipped:
        return []
    lines = [f"{len(skipped)} file(s) could not be loaded and were skipped:", ""]
    return lines + [f"- {s['reason']}" for s in skipped[:20]] + [""]


def _result_sections(metrics: Mapping[str, Any], figs: _Figures, is_cv: bool) -> Lines:
    """Confusion matrix, per-emotion and per-speaker scores of the test predictions."""
    from emovox import plots

    headline = metrics["pooled"] if is_cv else metrics
    scope = " (pooled over all folds)" if is_cv else ""
    kind = f"test, pooled over {len(metrics['folds'])} folds" if is_cv else "test"
    lines = [f"## Confusion matrix{scope}", "", "Rows: true emotion; columns: predicted.", ""]
    lines += figs.draw(
        "confusion matrix",
        "confusion.png",
        plots.plot_confusion,
        headline["confusion"],
        headline["labels"],
        title=_score_title(kind, headline),
    )
    lines += [f"## Per emotion{scope}", ""] + _per_class_table(headline)
    if headline["per_speaker"]:
        lines += [f"## Per speaker{scope}", ""]
        lines += figs.draw(
            "accuracy per speaker", "per_speaker.png", plots.plot_per_speaker, headline["per_speaker"]
        )
        lines += _per_speaker_table(headline)
    return lines


def _curves_section(
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]] | str | Path | None,
    figs: _Figures,
    is_cv: bool,
) -> Lines:
    from emovox import plots

    histories: list[tuple[str, Any]] = []
    if is_cv:
        histories = [(f["fold"], f["history"]) for f in metrics["folds"] if f.get("history")]
    elif history:
        histories = [("training", history)]
    if not histories or not figs.enabled:
        return []
    lines = ["## Training curves", ""]
    for name, h in histories:
        lines += figs.draw(
            f"training curves {name}", f"history_{name}.png", plots.plot_history, h, title=name
        )
    return lines


def _data_section(
    data_utts: Sequence[Utterance], waves: Mapping[Path, np.ndarray] | None, figs: _Figures
) -> Lines:
    """Clips per emotion, one example per emotion and per-emotion feature distributions."""
    from emovox import plots

    lines = ["## Data", ""]
    counts: dict[str, int] = {}
    for u in data_utts:
        counts[u.emotion] = counts.get(u.emotion, 0) + 1
    lines += _table(["emotion", "utterances"], sorted(counts.items()))
    if not figs.enabled:
        return lines
    data_waves = waves
    if data_waves is None:
        data_waves, _ = load_waves(data_sample(data_utts), progress=False)
    extra = {"progress": figs.progress}
    lines += figs.draw(
        "one example per emotion", "examples.png", plots.plot_examples, data_utts, data_waves, **extra
    )
    lines += figs.draw(
        "per-emotion feature distributions",
        "feature_distributions.png",
        plots.plot_feature_distributions,
        data_utts,
        data_waves,
        **extra,
    )
    return lines


def data_sample(utts: Sequence[Utterance], per_emotion: int = 24, seed: int = 0) -> list[Utterance]:
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


def _training_section(metrics: Mapping[str, Any], figs: _Figures) -> Lines:
    """Who trained and validated, the validation scores and confusion, and the files of the run."""
    from emovox import plots

    training = metrics["training"]
    lines = ["## Training", ""]
    lines += [
        "| | speakers | clips |",
        "|---|---|---|",
        f"| train | {', '.join(training['train_speakers'])} | {training['n_train']} |",
        f"| validation ({training['validation']}) | {', '.join(training['val_speakers']) or '-'} | "
        f"{training['n_val']} |",
        f"| test | {', '.join(training['test_speakers']) or '-'} | {training['n_test']} |",
        "",
        f"{training['epochs']} epoch(s) in {training['train_seconds']:.1f} s; best validation UA "
        f"{fmt_score(training['best_val_ua'])}.",
        "",
    ]
    val = metrics.get("validation")
    if val:
        lines += [
            "### Validation (model selection)",
            "",
            f"WA {val['wa']:.3f}, UA {val['ua']:.3f}, macro-F1 {val['macro_f1']:.3f} on {val['n']} clips "
            "(optimistic: these clips chose the checkpoint).",
            "",
        ]
        lines += figs.draw(
            "validation confusion matrix",
            "confusion_validation.png",
            plots.plot_confusion,
            val["confusion"],
            val["labels"],
            title=_score_title("validation (chose the checkpoint)", val),
        )
    return lines + _files_section(training)


def _files_section(training: Mapping[str, Any]) -> Lines:
    files = ["config.yaml (resolved configuration)", "history.json", "logs/ (Lightning CSV log)"]
    if training["checkpoint"]:
        files.insert(1, f"checkpoints/ (used: {Path(training['checkpoint']).name}; last.ckpt resumes)")
    if training["bundle"]:
        bundle = Path(training["bundle"])
        files.append(f"{bundle.name}/ (model bundle: `emovox predict --model {bundle} clip.wav`)")
    else:
        files.append(
            f"no bundle: the {training['family']} family is not bundled "
            "(bundles hold safetensors weights, never pickles)"
        )
    return ["### Files", ""] + [f"- {f}" for f in files] + [""]


def _config_section(config: Mapping[str, Any]) -> Lines:
    import yaml

    return [
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(jsonable(config), sort_keys=False).rstrip(),
        "```",
        "",
    ]
