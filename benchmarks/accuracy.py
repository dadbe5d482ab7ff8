"""Accuracy benchmark: speaker-independent scores of baselines and every emovox family on RAVDESS.

One command runs 5-fold actor-grouped cross-validation on ``../shared/corpora/ravdess`` (8
emotions, 20 actors), with the *same folds* (fixed seed) for every method:

* ``egemaps-svm``: the openSMILE eGeMAPSv02 functionals (88) -> standardised RBF SVM, the
  reference baseline of the paralinguistics literature;
* ``notebook-mlp``: the recipe of the popular tutorial notebooks: per clip, the mean of 40 MFCCs,
  12 chroma and 128 mel bands (librosa defaults) -> scikit-learn ``MLPClassifier(300)``; the
  notebooks score it on a random split, here it gets the same actor-grouped folds as everything else;
* each emovox family with its shipped config ``configs/ravdess_<family>.yaml``.

For each method it prints WA, UA and macro-F1 (mean ± std over folds) and the training time per
fold, then a markdown table; everything (per-method report.md, metrics.json, plots, the table)
goes into one run folder. Options shrink it for a smoke test (``--families``, ``--folds``,
``--epochs-scale``), add TESS to every training fold (``--extra-tess``) or run the TESS
cross-speaker protocol (``--tess-cross-speaker``: train on OAF, test on YAF, and back).

    python benchmarks/accuracy.py                                 # full run (GPU recommended)
    python benchmarks/accuracy.py --families egemaps-svm,mlp --folds 2 --epochs-scale 0.05
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from emovox.corpora import Utterance, load_corpus
from emovox.errors import EmovoxError
from emovox.evaluation import METRIC_NAMES, cross_validate, load_waves, write_report
from emovox.splits import Split, holdout_speakers, speaker_kfold

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
BASELINES = ("egemaps-svm", "notebook-mlp")
console = Console()


# --------------------------------------------------------------------------- baselines


@dataclass
class FeatureMemo:
    """Per-clip feature vectors computed once per waveform object and reused across folds.

    The benchmark loads every clip once and passes the same arrays to every fold, so the array's
    identity is a valid key for the lifetime of the run (the memo keeps a reference to each array,
    so an id is never reused).
    """

    compute: Callable[[np.ndarray], np.ndarray]
    _store: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __call__(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        rows = []
        for w in waves:
            hit = self._store.get(id(w))
            if hit is None or hit[0] is not w:
                hit = (w, self.compute(w))
                self._store[id(w)] = hit
            rows.append(hit[1])
        return np.stack(rows)


def notebook_features(wave: np.ndarray, sr: int = 16_000) -> np.ndarray:
    """The tutorial recipe: mean MFCC (40), mean chroma_stft (12), mean mel spectrogram (128)."""
    import librosa

    mfcc = librosa.feature.mfcc(y=wave, sr=sr, n_mfcc=40).mean(axis=1)
    chroma = librosa.feature.chroma_stft(S=np.abs(librosa.stft(wave)), sr=sr).mean(axis=1)
    mel = librosa.feature.melspectrogram(y=wave, sr=sr).mean(axis=1)
    return np.concatenate([mfcc, chroma, mel]).astype(np.float32)


def egemaps_features(wave: np.ndarray, sr: int = 16_000) -> np.ndarray:
    from emovox.features import egemaps

    return egemaps(wave, sr)


@dataclass
class SklearnClassifier:
    """Classifier protocol around a fitted scikit-learn estimator and a feature function."""

    labels: list[str]
    estimator: Any
    features: FeatureMemo

    def predict_proba(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        probs = self.estimator.predict_proba(self.features(waves))
        # estimator.classes_ is sorted; reorder columns to self.labels
        order = [list(self.estimator.classes_).index(lab) for lab in self.labels]
        return probs[:, order]


@dataclass
class BaselineFit:
    """What ``training.fit`` returns, for the scikit-learn baselines (no epochs, no checkpoint)."""

    model: SklearnClassifier
    best_val_ua: float
    history: list[dict[str, float]]
    checkpoint: Path


def baseline_fit(name: str, memo: FeatureMemo, seed: int) -> Callable[..., BaselineFit]:
    """A ``fit(cfg, train, val, run_dir, *, waves)`` for a scikit-learn baseline.

    Neither baseline selects anything on the validation speakers, so it trains on training and
    validation speakers together (the test speakers stay unseen) and reports validation UA as NaN.
    """
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    def fit(
        cfg: Any, train: Sequence[Utterance], val: Sequence[Utterance], run_dir: Path, *, waves: Mapping
    ) -> BaselineFit:
        utts = [*train, *val]
        x = memo([waves[u.path] for u in utts])
        y = np.array([u.emotion for u in utts])
        if name == "egemaps-svm":
            estimator = make_pipeline(
                StandardScaler(),
                SVC(C=1.0, kernel="rbf", class_weight="balanced", probability=True, random_state=seed),
            )
        else:  # notebook-mlp, exactly as the tutorials: unscaled features
            estimator = MLPClassifier(
                alpha=0.01,
                batch_size=256,
                epsilon=1e-08,
                hidden_layer_sizes=(300,),
                learning_rate="adaptive",
                max_iter=500,
                random_state=seed,
            )
        estimator.fit(x, y)
        labels = sorted(set(y))
        return BaselineFit(SklearnClassifier(labels, estimator, memo), float("nan"), [], Path(run_dir))

    return fit


# --------------------------------------------------------------------------- emovox families


def family_configs(families: Sequence[str] | None) -> dict[str, Path]:
    """``{family: configs/ravdess_<family>.yaml}`` for the requested (default: all shipped) families."""
    shipped = {p.stem.removeprefix("ravdess_"): p for p in sorted((REPO / "configs").glob("ravdess_*.yaml"))}
    if families is None:
        return shipped
    missing = [f for f in families if f not in shipped]
    if missing:
        known = ", ".join(shipped) or "none"
        raise EmovoxError(
            f"no config configs/ravdess_<family>.yaml for {', '.join(missing)} (shipped: {known})"
        )
    return {f: shipped[f] for f in families}


def load_family_config(path: Path, *, epochs_scale: float, device: str | None) -> Any:
    """Load a shipped config, scaling its epoch budget and choosing the accelerator."""
    from emovox.config import load_config

    cfg = load_config(path)
    overrides = []
    if epochs_scale != 1.0:
        overrides.append(f"train.epochs={max(1, round(cfg.train.epochs * epochs_scale))}")
    if device:
        overrides.append(f"train.accelerator={device}")
    return load_config(path, overrides) if overrides else cfg


# --------------------------------------------------------------------------- protocols


def ravdess_splits(
    ravdess: list[Utterance], folds: int, seed: int, extra: list[Utterance]
) -> tuple[list[Utterance], list[Split]]:
    """Actor-grouped folds on RAVDESS; ``extra`` (TESS) utterances join every training side."""
    splits = speaker_kfold(ravdess, k=folds, seed=seed)
    if not extra:
        return ravdess, splits
    utts = [*ravdess, *extra]
    extra_idx = np.arange(len(ravdess), len(utts))
    return utts, [Split(np.concatenate([s.train, extra_idx]), s.test, f"{s.name}+tess") for s in splits]


def tess_cross_speaker(tess: list[Utterance]) -> list[Split]:
    """Train on one TESS actress, test on the other, both ways."""
    speakers = sorted({u.speaker for u in tess})
    return [holdout_speakers(tess, [s]) for s in speakers]


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    started = datetime.now()
    out = Path(args.out) if args.out else REPO / "runs" / f"benchmark-accuracy-{started:%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    corpora = Path(args.corpora)

    requested = [f.strip() for f in args.families.split(",")] if args.families else None
    baselines = [b for b in BASELINES if requested is None or b in requested]
    families = family_configs(None if requested is None else [f for f in requested if f not in BASELINES])

    if args.tess_cross_speaker:
        utts = load_corpus(corpora / "tess", "tess").utterances
        splits = tess_cross_speaker(utts)
        protocol = "TESS cross-speaker: train on one actress, test on the other (both directions)"
    else:
        ravdess = load_corpus(corpora / "ravdess", "ravdess").utterances
        tess = load_corpus(corpora / "tess", "tess").utterances if args.extra_tess else []
        utts, splits = ravdess_splits(ravdess, args.folds, args.seed, tess)
        protocol = (
            f"RAVDESS {args.folds}-fold actor-grouped cross-validation (seed {args.seed}, "
            "same folds for every method)" + ("; all of TESS added to every training fold" if tess else "")
        )
    console.print(f"[bold]{protocol}[/]: {len(utts)} clips, {len({u.speaker for u in utts})} speakers")

    waves_by_trim: dict[bool, dict[Path, np.ndarray]] = {}

    def waves_for(trim: bool) -> dict[Path, np.ndarray]:
        if trim not in waves_by_trim:
            waves, skipped = load_waves(utts, trim=trim, description=f"loading audio (trim={trim})")
            for path, reason in skipped:
                console.print(f"[yellow]skipped[/] {path}: {reason}")
            waves_by_trim[trim] = waves
        return waves_by_trim[trim]

    results: dict[str, dict[str, Any]] = {}
    methods: list[tuple[str, Any, Callable[..., Any] | None, bool]] = []
    for name in baselines:
        memo = FeatureMemo(egemaps_features if name == "egemaps-svm" else notebook_features)
        methods.append((name, None, baseline_fit(name, memo, args.seed), True))
    for family, path in families.items():
        cfg = load_family_config(path, epochs_scale=args.epochs_scale, device=args.device)
        methods.append((family, cfg, None, bool(cfg.data.trim_silence)))

    for name, cfg, fit, trim in methods:
        console.rule(name)
        t0 = time.perf_counter()
        res = cross_validate(
            cfg, utts, splits, out / name, waves=waves_for(trim), fit=fit, seed=args.seed, protocol=protocol
        )
        res["wall_seconds"] = time.perf_counter() - t0
        write_report(
            out / name, res, title=f"{name}: {protocol}", config=cfg.to_dict() if cfg is not None else None
        )
        results[name] = res
        console.print(_row_text(name, res))

    table_md = markdown_table(results, protocol)
    (out / "results.md").write_text(table_md)
    (out / "results.json").write_text(
        json.dumps({name: _summary(res) for name, res in results.items()} | {"protocol": protocol}, indent=2)
    )
    console.print(rich_table(results, protocol))
    console.print(table_md)
    console.print(f"run folder: {out}")
    return 0


def _summary(res: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **{k: {"mean": res["summary"][k]["mean"], "std": res["summary"][k]["std"]} for k in METRIC_NAMES},
        "train_seconds_per_fold": float(np.mean([f["train_seconds"] for f in res["folds"]])),
        "folds": len(res["folds"]),
    }


def _row_text(name: str, res: Mapping[str, Any]) -> str:
    s = _summary(res)
    scores = "  ".join(f"{METRIC_NAMES[k]} {s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in METRIC_NAMES)
    return f"{name}: {scores}  train {s['train_seconds_per_fold']:.1f} s/fold"


def markdown_table(results: Mapping[str, Mapping[str, Any]], protocol: str) -> str:
    lines = [
        f"{protocol}.",
        "",
        "| method | WA | UA | macro-F1 | train time / fold (s) |",
        "|---|---|---|---|---|",
    ]
    for name, res in results.items():
        s = _summary(res)
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in METRIC_NAMES]
        lines.append(f"| {name} | {' | '.join(cells)} | {s['train_seconds_per_fold']:.1f} |")
    return "\n".join(lines) + "\n"


def rich_table(results: Mapping[str, Mapping[str, Any]], protocol: str) -> Table:
    table = Table(title=protocol)
    for column in ("method", "WA", "UA", "macro-F1", "train s/fold"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, res in results.items():
        s = _summary(res)
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in METRIC_NAMES]
        table.add_row(name, *cells, f"{s['train_seconds_per_fold']:.1f}")
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", default=str(CORPORA), help="folder holding ravdess/ and tess/")
    parser.add_argument(
        "--families",
        help=f"comma-separated methods: {', '.join(BASELINES)} and emovox families (default: all)",
    )
    parser.add_argument("--folds", type=int, default=5, help="actor-grouped folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="fold and model seed (default 0)")
    parser.add_argument(
        "--device", "--accelerator", dest="device", help="Lightning accelerator: cpu, gpu, auto"
    )
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every config's epochs")
    parser.add_argument("--extra-tess", action="store_true", help="add all of TESS to every training fold")
    parser.add_argument(
        "--tess-cross-speaker",
        action="store_true",
        help="TESS protocol: train on OAF -> test on YAF, and back",
    )
    parser.add_argument("--out", help="run folder (default runs/benchmark-accuracy-<time>/)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except EmovoxError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
