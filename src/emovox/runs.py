"""Orchestration of runs: ``emovox train``, ``emovox cv`` and ``emovox evaluate`` end to end.

A run is one folder (see :func:`new_run_dir`); this module chooses the utterances from the config
(:func:`training_split`, :func:`cv_splits`), calls :func:`emovox.fitting.fit` and
:func:`emovox.scoring.evaluate_model`, checks speaker independence, and writes the outputs
(:func:`emovox.reports.write_report`, the model bundle). It sits above fitting, scoring and
reports; nothing below imports it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emovox import fitting
from emovox import splits as sp
from emovox.classifier import FitResult
from emovox.config import RunConfig
from emovox.corpora import Utterance, load_corpus, load_waves
from emovox.errors import ConfigError, CorpusError
from emovox.fitting import FITTERS, cpu_threads
from emovox.reports import write_report
from emovox.scoring import evaluate_model, without_predictions

BUNDLE_DIR = "model"  # the run folder's bundle (docs/architecture.md, run directory)


# --------------------------------------------------------------------------- run folders


RUN_MARKER = ".emovox-run"
"""A JSON file (``{"kind", "emovox_version"}``) that marks a folder as an emovox run folder."""
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_run_name(name: str) -> str:
    """``name`` if it can name a run folder: letters, digits, ``.``, ``_``, ``-`` (no path separators,
    no ``..``, at most 100 characters); else a :class:`ConfigError`."""
    if not _RUN_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"name: {name!r} cannot name a run folder (use letters, digits, '.', '_' and '-'; "
            "no '/' or '..'); pass --out to choose the folder itself"
        )
    return name


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder emovox wrote a run into (its marker, or, for runs from before
    the marker, both ``report.md`` and ``metrics.json``)."""
    path = Path(path)
    return (path / RUN_MARKER).is_file() or (
        (path / "report.md").is_file() and (path / "metrics.json").is_file()
    )


def check_out_dir(out: str | Path, kind: str) -> Path:
    """Refuse an ``--out`` that would overwrite something that is not an emovox run: a file, or a
    folder that is neither empty nor a run folder (nor one of another kind of run)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: is a file, not a folder; --out needs a new, empty or run folder")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    if not is_run_dir(path):
        shown = ", ".join(sorted(p.name for p in path.iterdir())[:3])
        raise ConfigError(
            f"{path}: exists and is not an emovox run folder (it holds {shown}, ...); choose a new or "
            "empty folder for --out, so that nothing in it is overwritten"
        )
    marker = path / RUN_MARKER
    found = _marker_kind(marker) if marker.is_file() else None
    if found is not None and found != kind:
        raise ConfigError(f"{path}: holds an emovox {found} run, not a {kind} run; choose another --out")
    return path


def _marker_kind(marker: Path) -> str | None:
    try:
        return str(json.loads(marker.read_text()).get("kind"))
    except (OSError, ValueError, AttributeError):
        return None


def new_run_dir(
    out: str | Path | None, name: str, *, kind: str = "evaluate", parent: str | Path = "runs"
) -> Path:
    """``out`` if given, else ``<parent>/<name>-<YYYYmmdd-HHMMSS>/`` (the run-directory contract):
    checked (:func:`check_run_name`, :func:`check_out_dir`), created and marked as a ``kind`` run."""
    from datetime import datetime

    if out is None:
        path = Path(parent) / f"{check_run_name(name)}-{datetime.now():%Y%m%d-%H%M%S}"
    else:
        path = check_out_dir(out, kind)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the run folder ({exc.strerror or exc})") from None
    mark_run_dir(path, kind)
    return path


def mark_run_dir(path: str | Path, kind: str) -> None:
    """Write the run marker into ``path`` (unless there is one already)."""
    from emovox._version import __version__

    marker = Path(path) / RUN_MARKER
    if not marker.is_file():
        marker.write_text(json.dumps({"kind": kind, "emovox_version": __version__}) + "\n")


def train_run_dir(cfg: RunConfig, out: str | Path | None) -> Path:
    """The folder of a new ``emovox train`` run: ``out``, else ``<cfg.out>/<name>-<time>/``.

    A folder that already holds a training run (checkpoints) is refused: continue it with ``--resume``.
    """
    name = check_run_name(cfg.name or cfg.model.family)
    if out is not None and any((Path(out) / fitting.CHECKPOINT_DIR).glob("*.ckpt")):
        raise ConfigError(
            f"{out}: already holds a training run; continue it with --resume {out} or choose another --out"
        )
    return new_run_dir(out, name, kind="train", parent=cfg.out)


# --------------------------------------------------------------------------- emovox train


@dataclass
class TrainingSplit:
    """Who trains, validates and tests in an ``emovox train`` run (speaker-independent by construction)."""

    train: list[Utterance]
    val: list[Utterance]
    test: list[Utterance]
    protocol: str
    """One sentence for reports and the model card."""
    validation: str
    """``"speakers"``, ``"clips of the single training speaker"`` or ``"none"``."""
    shared_emotions: list[str] | None = None
    """Cross-corpus: the emotions both corpora have (training and scoring are restricted to them)."""
    corpora: list[dict[str, Any]] = field(default_factory=list)
    """``{"name", "path", "clips", "role"}`` per corpus used (role: train, extra or test)."""

    def speakers(self, part: str) -> list[str]:
        """Sorted speakers of ``"train"``, ``"val"`` or ``"test"``."""
        return sorted({u.speaker for u in getattr(self, part)})


def _short(speakers: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(speakers[:limit])
    return shown + (f" and {len(speakers) - limit} more" if len(speakers) > limit else "")


def training_split(cfg: RunConfig, *, source: str = "config") -> TrainingSplit:
    """Load ``cfg.data`` (plus ``data.extra``) and split it by ``cfg.split.protocol`` for one run.

    ``holdout``: test on ``split.test_speakers``; ``none``: every speaker trains (no test);
    ``cross_corpus``: train on ``data``, test on ``split.test_path`` over the emotions both share.
    ``data.extra`` corpora only ever join the training side (a speaker of theirs among the test
    speakers is an error). Validation data is carved from the training side with
    :func:`emovox.splits.validation_speakers` (whole speakers), or, with a single training speaker,
    a stratified ``train.val_fraction`` of its clips (as in cross-validation); 0 = no validation.
    ``kfold`` / ``loso`` are cross-validation protocols: :class:`ConfigError` pointing to ``emovox cv``.
    """
    d, s = cfg.data, cfg.split
    if s.protocol in ("kfold", "loso"):
        raise ConfigError(
            f"{source}: split.protocol is {s.protocol}, a cross-validation protocol; run "
            f"`emovox cv --config {source}` for it (emovox train takes holdout, none or cross_corpus)"
        )
    if not d.path:
        raise ConfigError(f"{source}: data.path is not set (the corpus folder to train on)")
    corpus = load_corpus(d.path, d.corpus, emotions=d.emotions)
    utts = list(corpus.utterances)
    corpora = [{"name": corpus.name, "path": str(d.path), "clips": len(utts), "role": "train"}]
    shared: list[str] | None = None
    if s.protocol == "holdout":
        split = sp.holdout_speakers(utts, s.test_speakers)
        train = [utts[i] for i in split.train]
        test = [utts[i] for i in split.test]
        tested = sorted({u.speaker for u in test})
        protocol = f"speaker-independent holdout on {corpus.name}: test speakers {_short(tested)}"
    elif s.protocol == "cross_corpus":
        assert s.test_path is not None  # validate() requires it
        other = load_corpus(s.test_path, s.test_corpus, emotions=d.emotions)
        train_idx, test_idx, shared = sp.cross_corpus(utts, other.utterances)
        train = [utts[i] for i in train_idx]
        test = [other.utterances[i] for i in test_idx]
        corpora.append({"name": other.name, "path": str(s.test_path), "clips": len(test), "role": "test"})
        protocol = (
            f"cross-corpus: train on {corpus.name}, test on {other.name} "
            f"over the shared emotions ({', '.join(shared)})"
        )
    else:
        train, test = utts, []
        protocol = f"all {corpus.name} speakers train; no test speakers (split.protocol: none)"

    test_speakers = {u.speaker for u in test}
    for src in d.extra:
        extra = load_corpus(src.path, src.corpus, emotions=d.emotions)
        clash = sorted({u.speaker for u in extra.utterances} & test_speakers)
        if clash:
            raise CorpusError(
                f"{src.path}: extra training corpus has test speaker(s) {_short(clash)}; "
                "extra corpora may only add training speakers"
            )
        kept = [u for u in extra.utterances if shared is None or u.emotion in shared]
        train += kept
        corpora.append({"name": extra.name, "path": str(src.path), "clips": len(kept), "role": "extra"})
    if d.extra:
        protocol += f"; extra training corpora: {', '.join(str(src.path) for src in d.extra)}"
    if not train:
        raise CorpusError(f"{d.path}: no training utterances left after the split")

    fraction = cfg.train.val_fraction
    if fraction > 0:
        fit_idx, val_idx, validation = sp.validation_split(
            train, np.arange(len(train)), fraction, cfg.train.seed
        )
        fit_utts, val_utts = [train[i] for i in fit_idx], [train[i] for i in val_idx]
    else:
        fit_utts, val_utts, validation = train, [], "none"
    return TrainingSplit(
        train=fit_utts,
        val=val_utts,
        test=test,
        protocol=protocol,
        validation=validation,
        shared_emotions=shared,
        corpora=corpora,
    )


def check_resume(cfg: RunConfig, split: TrainingSplit, run_dir: str | Path) -> None:
    """Before a resumed run loads audio: its ``last.ckpt`` can continue ``cfg`` on ``split``
    (:func:`emovox.fitting.check_resumable`), and its family writes checkpoints at all."""
    if not FITTERS[cfg.model.family].resumable:
        raise ConfigError(f"{run_dir}: {cfg.model.family} runs have no checkpoints to resume; train again")
    last = Path(run_dir) / fitting.CHECKPOINT_DIR / fitting.LAST_CHECKPOINT
    fitting.check_resumable(last, cfg, fitting.label_set(split.train))


def is_global_zero() -> bool:
    """False in the extra processes of a multi-process (DDP) run, which must not write results."""
    import os

    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _card_licence(split: TrainingSplit) -> str:
    from emovox.download import SOURCES

    parts = []
    for c in split.corpora:
        if c["role"] == "test":
            continue
        source = SOURCES.get(c["name"])
        text = (
            f"{source.license} ({c['name']})"
            if source
            else f"Not recorded by emovox for the {c['name']} data at {c['path']}: check its licence"
        )
        if text not in parts:
            parts.append(text)
    return "; ".join(parts)


def run_training(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    split: TrainingSplit | None = None,
    resume: bool = False,
    progress: bool = True,
    source: str = "config",
    callbacks: Sequence[Any] = (),
) -> dict[str, Any] | None:
    """Everything ``emovox train`` does after parsing: split, fit, evaluate, report, bundle.

    Writes into ``run_dir``: ``config.yaml`` (resolved), ``checkpoints/``, ``logs/``,
    ``history.json``, ``metrics.json`` (test scores plus ``training`` and ``validation``
    sections), ``predictions.csv``, ``plots/*.png``, ``report.md`` and, for the neural families,
    the bundle ``model/`` (:func:`emovox.bundle.save_bundle`; the SVM is not bundled since bundles
    never pickle). Returns the metrics dict, or None in the non-zero ranks of a DDP run.
    """

    with cpu_threads(cfg.train.threads):
        return _run_training(
            cfg,
            Path(run_dir),
            split=split,
            resume=resume,
            progress=progress,
            source=source,
            callbacks=callbacks,
        )


def _run_training(
    cfg: RunConfig,
    run_dir: Path,
    *,
    split: TrainingSplit | None,
    resume: bool,
    progress: bool,
    source: str,
    callbacks: Sequence[Any],
) -> dict[str, Any] | None:
    from emovox.bundle import DEFAULT_PREPROCESSING

    run_dir.mkdir(parents=True, exist_ok=True)
    split = split if split is not None else training_split(cfg, source=source)
    if is_global_zero():
        mark_run_dir(run_dir, "train")
        cfg.dump(run_dir / "config.yaml")
    min_duration = float(DEFAULT_PREPROCESSING["min_duration"])
    waves, skipped = load_waves(
        [*split.train, *split.val, *split.test],
        trim=cfg.data.trim_silence,
        min_duration=min_duration,
        progress=progress,
    )
    started = time.perf_counter()
    result = fitting.fit(
        cfg,
        split.train,
        split.val,
        run_dir,
        waves=waves,
        resume=resume,
        progress=progress,
        callbacks=callbacks,
    )
    train_seconds = time.perf_counter() - started
    if not is_global_zero():
        return None

    val_metrics, test_metrics = _score_run(result, split, waves, progress=progress)
    training = _training_record(cfg, split, waves, result, train_seconds, run_dir)
    metrics: dict[str, Any] = dict(test_metrics) if test_metrics is not None else {"test": None}
    metrics.update(
        kind="train",
        training=training,
        validation=val_metrics,
        skipped=[{"path": str(p), "reason": r} for p, r in skipped],
    )
    write_report(
        run_dir,
        metrics,
        history=list(result.history) or None,
        title=f"{cfg.name or cfg.model.family}: {cfg.model.family} — {split.protocol}",
        config=cfg.to_dict(),
        protocol=split.protocol,
    )
    if training["bundle"]:
        _save_run_bundle(
            cfg,
            split,
            result,
            training,
            val_metrics,
            test_metrics,
            run_dir / BUNDLE_DIR,
            min_duration=min_duration,
        )
    return metrics


def _score_run(
    result: FitResult, split: TrainingSplit, waves: Mapping[Path, np.ndarray], *, progress: bool
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(validation metrics without predictions, test metrics)`` of a trained model (None: no data)."""
    model = result.model
    known = set(model.labels)
    val_utts = [u for u in split.val if u.path in waves and u.emotion in known]
    val_metrics = (
        without_predictions(evaluate_model(model, val_utts, waves, progress=False)) if val_utts else None
    )
    test_utts = [u for u in split.test if u.path in waves]
    test_metrics = (
        evaluate_model(
            model, test_utts, waves, shared_only=split.shared_emotions is not None, progress=progress
        )
        if test_utts
        else None
    )
    return val_metrics, test_metrics


def _training_record(
    cfg: RunConfig,
    split: TrainingSplit,
    waves: Mapping[Path, np.ndarray],
    result: FitResult,
    train_seconds: float,
    run_dir: Path,
) -> dict[str, Any]:
    """The ``training`` section of a train run's metrics.json: who trained, validated and tested."""
    known = set(result.model.labels)
    return {
        "config": cfg.name,
        "family": cfg.model.family,
        "protocol": split.protocol,
        "validation": split.validation,
        "corpora": split.corpora,
        "train_speakers": split.speakers("train"),
        "val_speakers": split.speakers("val"),
        "test_speakers": split.speakers("test"),
        "n_train": sum(u.path in waves for u in split.train),
        "n_val": sum(u.path in waves and u.emotion in known for u in split.val),
        "n_test": sum(u.path in waves for u in split.test),
        "labels": list(result.model.labels),
        "epochs": len(result.history),
        "best_val_ua": result.best_val_ua,
        "train_seconds": train_seconds,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "bundle": str(run_dir / BUNDLE_DIR) if FITTERS[cfg.model.family].bundled else None,
    }


def _save_run_bundle(
    cfg: RunConfig,
    split: TrainingSplit,
    result: FitResult,
    training: Mapping[str, Any],
    val_metrics: Mapping[str, Any] | None,
    test_metrics: Mapping[str, Any] | None,
    path: Path,
    *,
    min_duration: float,
) -> None:
    """The run's model bundle, with a training summary (speaker lists) and a model card."""
    from emovox.bundle import ModelCard, save_bundle

    per_emotion: dict[str, int] = {}
    for u in split.train:
        per_emotion[u.emotion] = per_emotion.get(u.emotion, 0) + 1
    summary = {
        "corpora": ", ".join(f"{c['name']} ({c['role']}, {c['clips']} clips)" for c in split.corpora),
        "protocol": split.protocol,
        "utterances": training["n_train"],
        "per_emotion": per_emotion,
        # every speaker the model saw, validation included (it chose the checkpoint), so that
        # `emovox evaluate` can flag a test set that is not speaker-independent for this model
        "speakers": sorted({*training["train_speakers"], *training["val_speakers"]}),
        "train_speakers": training["train_speakers"],
        "val_speakers": training["val_speakers"],
        "test_speakers": training["test_speakers"],
        "epochs": training["epochs"],
        "best_val_ua": result.best_val_ua,
        "config": cfg.name,
    }
    if test_metrics is not None:
        scored = (
            f"Scores are on the {len(training['test_speakers'])} test speaker(s) "
            f"({_short(training['test_speakers'])}), none of whom was used for training or validation."
        )
        bundle_metrics: Mapping[str, Any] = without_predictions(test_metrics) or {}
    else:
        ua = f"{val_metrics['ua']:.3f}" if val_metrics else "n/a"
        scored = (
            "No test speakers were held out, so no unbiased score exists for this model; the "
            f"validation UA ({ua}) is optimistic because validation chose the checkpoint."
        )
        bundle_metrics = {"test": None, "validation": val_metrics}
    card = ModelCard(
        data=(
            f"{training['n_train']} clips from {len(training['train_speakers'])} speakers "
            f"({_short(training['train_speakers'])}); validation: {training['n_val']} clips "
            f"({split.validation}: {_short(training['val_speakers']) or 'none'})."
        ),
        protocol=f"{split.protocol[0].upper()}{split.protocol[1:]}. {scored}",
        licence=_card_licence(split),
        title=f"emovox {cfg.model.family} model ({cfg.name or 'unnamed run'})",
    )
    save_bundle(
        result.model.net,
        path,
        metrics=bundle_metrics,
        card=card,
        training=summary,
        preprocessing={"trim_silence": cfg.data.trim_silence, "min_duration": min_duration},
    )


# --------------------------------------------------------------------------- emovox evaluate


def resolve_model_path(model: str | Path) -> str | Path:
    """A bundle folder, a run folder (its ``model/`` bundle) or ``"default"``, for ``load_bundle``."""
    from emovox.bundle import CONFIG_FILE

    if str(model) == "default":
        return "default"
    path = Path(model)
    if not (path / CONFIG_FILE).is_file() and (path / "model" / CONFIG_FILE).is_file():
        return path / "model"
    return path


def _speaker_set(value: Any) -> set[str] | None:
    """Speaker ids recorded as a list / mapping (or a comma-separated string); None otherwise."""
    if isinstance(value, (Mapping, list, tuple)):
        return {str(s) for s in value}
    if isinstance(value, str) and value.strip():
        return {s.strip() for s in value.split(",") if s.strip()}
    return None


# corpora whose speaker ids are not global: "folder:spk1" could be anyone
_LOCAL_SPEAKER_IDS = {"folder", "manifest", "unknown"}


def leak_check(meta: Mapping[str, Any], test_speakers: Sequence[str]) -> dict[str, Any]:
    """Were any of ``test_speakers`` among the speakers the bundle (``meta``) was trained on?

    Returns ``{"status": "leak" | "clean" | "unknown", "leaked": [...], "reason": str,
    "training_speakers": [...] | None, "training_speaker_count": int | None}``. Bundles written by
    ``emovox train`` record every speaker id they saw; an older bundle may record only a count
    (the shipped default model: 16), so that leakage can be ruled out only when the test speakers
    come from a corpus the model was not trained on.
    """
    training = meta.get("training") or {}
    tested = set(test_speakers)
    recorded = training.get("speakers")
    known = _speaker_set(recorded)
    count = int(recorded) if isinstance(recorded, int) and not isinstance(recorded, bool) else None
    out: dict[str, Any] = {"training_speakers": None, "training_speaker_count": count}
    if known is not None:
        leaked = sorted(tested & known)
        out.update(training_speakers=sorted(known), training_speaker_count=len(known), leaked=leaked)
        reason = "the bundle records its training speakers"
        return {**out, "status": "leak" if leaked else "clean", "reason": reason}
    partial: set[str] = set()
    for key in ("train_speakers", "val_speakers", "validation speakers"):
        partial |= _speaker_set(training.get(key)) or set()
    if tested & partial:
        reason = "some of the model's training / validation speakers are recorded"
        return {**out, "status": "leak", "leaked": sorted(tested & partial), "reason": reason}
    what = (
        f"the model records only how many speakers it was trained on ({count}), not which"
        if count is not None
        else "the model does not record which speakers it was trained on"
    )
    corpora = training.get("corpora")
    prefixes = {s.split(":", 1)[0] for s in tested}
    if (
        isinstance(corpora, list)
        and corpora
        and all(isinstance(c, str) for c in corpora)
        and not prefixes & (set(corpora) | _LOCAL_SPEAKER_IDS)
    ):
        reason = f"{what}, but it was trained on {', '.join(corpora)} and the test speakers are not"
        return {**out, "status": "clean", "leaked": [], "reason": reason}
    return {**out, "status": "unknown", "leaked": [], "reason": what}


def run_evaluation(
    model: str | Path,
    data_path: str | Path,
    *,
    corpus: str | None = None,
    speakers: Sequence[str] = (),
    shared_only: bool = False,
    device: str = "cpu",
    out: str | Path | None = None,
    plots: bool = True,
    progress: bool = True,
) -> tuple[dict[str, Any], Path]:
    """Everything ``emovox evaluate`` does: score a saved model on a labelled corpus (optionally only
    ``speakers``) into a run folder (``out``, else ``runs/eval-<time>/``). Each clip is decoded once,
    for scoring and for the report's data figures; ``plots=False`` leaves the figures out.

    Returns ``(metrics, report.md)``.
    """
    from emovox.bundle import read_meta

    meta = read_meta(resolve_model_path(model))  # a bad model or --out fails before the corpus is scanned
    if out is not None:
        check_out_dir(out, "evaluate")
    utts = load_corpus(data_path, corpus).utterances
    if speakers:
        utts = sp.select_speakers(utts, speakers)  # every speaker of the corpus may be a test speaker
    prep = meta["preprocessing"]
    waves, skipped = load_waves(
        utts, trim=bool(prep["trim_silence"]), min_duration=float(prep["min_duration"]), progress=progress
    )
    metrics = evaluate_bundle(
        model, utts, waves=waves, shared_only=shared_only, device=device, progress=progress
    )
    metrics["skipped"] = [{"path": str(p), "reason": r} for p, r in skipped]
    run_dir = new_run_dir(out, "eval", kind="evaluate")
    title = f"Evaluation of {metrics['model']['path']} on {data_path}"
    report = write_report(
        run_dir, metrics, title=title, data_utts=utts, waves=waves, plots=plots, progress=progress
    )
    return metrics, report


def evaluate_bundle(
    model: str | Path,
    utts: Sequence[Utterance],
    *,
    waves: Mapping[Path, np.ndarray] | None = None,
    shared_only: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a saved model (bundle folder, run folder or ``"default"``) on ``utts``.

    Audio is loaded with the bundle's recorded preprocessing (silence trimming, minimum duration),
    exactly as in training, unless ``waves`` (path -> waveform, loaded that way) has it; utterances
    missing from ``waves`` are then left out (they could not be loaded). When the bundle records
    its training speakers, any test speaker among them is listed under ``leaked_speakers`` and the
    result is flagged ``speaker_leak``, because such a score is not speaker-independent;
    ``leak_check`` says whether leakage was ruled out, found, or cannot be ruled out (a bundle
    that records only a count of speakers, see :func:`leak_check`).
    """
    from emovox.predict import Recognizer

    rec = Recognizer.load(resolve_model_path(model), device=device)
    if waves is not None:
        utts = [u for u in utts if u.path in waves]
        if not utts:
            raise CorpusError("none of the test files could be loaded")
    metrics = evaluate_model(
        rec,
        utts,
        waves,
        shared_only=shared_only,
        trim=rec.trim,
        min_duration=rec.min_duration,
        progress=progress,
    )
    check = leak_check(rec.meta, list(metrics["per_speaker"]))
    metrics["model"] = {
        "path": rec.meta["path"],
        "family": rec.meta["model"].get("family"),
        "labels": rec.labels,
        "preprocessing": rec.meta["preprocessing"],
        "training_speakers": check["training_speakers"],
        "training_speaker_count": check["training_speaker_count"],
    }
    metrics["leak_check"] = {"status": check["status"], "reason": check["reason"]}
    metrics["leaked_speakers"] = check["leaked"]
    metrics["speaker_leak"] = check["status"] == "leak"
    return metrics
