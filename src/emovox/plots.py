"""Figures for reports: training curves, confusion matrices, per-speaker scores, data examples.

Every function draws with matplotlib's non-interactive Agg backend, writes one PNG and returns its
path, so reports can be produced on a headless server or in CI. Functions take plain Python data
(lists, dicts, NumPy arrays) rather than model objects so they can also redraw a finished run from
its ``metrics.json``.
"""

from __future__ import annotations

import csv
import functools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from emovox.audio import SAMPLE_RATE  # noqa: E402
from emovox.errors import EmovoxError  # noqa: E402

if TYPE_CHECKING:
    from emovox.corpora import Utterance

DPI = 110

History = Sequence[Mapping[str, Any]]

# history keys: "<split>_<metric>" with optional Lightning suffix, e.g. train_loss_epoch, val/ua
_KEY = re.compile(r"^(?P<split>train|val|valid|validation|test)[_/](?P<metric>.+?)(?:_epoch)?$")
_ACCURACY_METRICS = ("ua", "uar", "wa", "acc", "accuracy", "f1", "macro_f1", "balanced_accuracy")


def _save(fig: plt.Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return out


def history_from_csv(path: str | Path) -> list[dict[str, float]]:
    """Read Lightning's ``CSVLogger`` ``metrics.csv`` into one dict per epoch.

    Lightning writes one row per logging call with empty cells for the other columns; this keeps,
    per epoch, the last value seen for each column and drops per-step columns (``*_step``, ``step``).
    """
    path = Path(path)
    if not path.is_file():
        raise EmovoxError(f"{path}: training log not found")
    per_epoch: dict[int, dict[str, float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            epoch_cell = row.get("epoch", "")
            if not epoch_cell:
                continue
            epoch = int(float(epoch_cell))
            entry = per_epoch.setdefault(epoch, {"epoch": float(epoch)})
            for key, cell in row.items():
                if key in ("epoch", "step") or key.endswith("_step") or cell in ("", None):
                    continue
                entry[key] = float(cell)
    return [per_epoch[e] for e in sorted(per_epoch)]


def _series(
    history: History,
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[tuple[float, float]]]]:
    """Split a history into loss curves and accuracy-like curves, keyed by their history key."""
    losses: dict[str, list[tuple[float, float]]] = {}
    scores: dict[str, list[tuple[float, float]]] = {}
    for i, entry in enumerate(history):
        epoch = float(entry.get("epoch", i))
        for key, value in entry.items():
            match = _KEY.match(key)
            if not match or value is None or not isinstance(value, (int, float)) or math.isnan(value):
                continue
            metric = match.group("metric").lower()
            if "loss" in metric:
                losses.setdefault(key, []).append((epoch, float(value)))
            elif metric in _ACCURACY_METRICS:
                scores.setdefault(key, []).append((epoch, float(value)))
    return losses, scores


def plot_history(history: History | str | Path, out: str | Path, *, title: str | None = None) -> Path:
    """Loss (left) and UA / accuracy (right) per epoch for training and validation.

    ``history`` is a list of per-epoch dicts (``{"epoch": 0, "train_loss": .., "val_loss": ..,
    "val_ua": ..}``, the form ``training.fit`` returns) or the path of a Lightning ``metrics.csv``.
    Keys are recognised by their ``train_`` / ``val_`` prefix, so extra metrics appear automatically.
    """
    if isinstance(history, (str, Path)):
        history = history_from_csv(history)
    losses, scores = _series(history)
    if not losses and not scores:
        raise EmovoxError("training history has no train_/val_ loss or accuracy values to plot")
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, curves, ylabel in ((ax_loss, losses, "loss"), (ax_score, scores, "score")):
        for key, points in sorted(curves.items()):
            xs, ys = zip(*points, strict=True)
            style = "--" if key.startswith("train") else "-"
            ax.plot(xs, ys, style, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
    ax_loss.set_title("loss")
    ax_score.set_title("UA / accuracy")
    if scores:
        ax_score.set_ylim(0, 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, Path(out))


def plot_confusion(
    confusion: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[str],
    out: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Confusion matrix as counts (left) and row-normalised recall (right); rows are true emotions."""
    counts = np.asarray(confusion, dtype=float)
    if counts.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {len(labels)} labels")
    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    size = max(4.5, 0.75 * len(labels) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    panels = (
        (axes[0], counts, "counts", "{:.0f}", counts.max() or 1.0),
        (axes[1], normalised, "row-normalised (recall)", "{:.2f}", 1.0),
    )
    for ax, matrix, name, fmt, vmax in panels:
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
        for i in range(len(labels)):
            for j in range(len(labels)):
                value = matrix[i, j]
                colour = "white" if value > 0.6 * vmax else "black"
                ax.text(j, i, fmt.format(value), ha="center", va="center", color=colour, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, Path(out))


def plot_per_speaker(
    per_speaker: Mapping[str, Mapping[str, float]], out: str | Path, *, title: str | None = None
) -> Path:
    """Bar chart of accuracy per test speaker (``{speaker: {"accuracy": a, "n": n}}``), with the mean line."""
    if not per_speaker:
        raise ValueError("no per-speaker results to plot")
    speakers = sorted(per_speaker)
    acc = [float(per_speaker[s]["accuracy"]) for s in speakers]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(speakers) + 2), 3.8))
    ax.bar(range(len(speakers)), acc, color="#4c72b0")
    ax.axhline(float(np.mean(acc)), color="#c44e52", linestyle="--", label=f"mean {np.mean(acc):.3f}")
    ax.set_xticks(range(len(speakers)), speakers, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title or "accuracy per test speaker")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(out))


def plot_fold_scores(
    folds: Sequence[Mapping[str, Any]], out: str | Path, *, title: str | None = None
) -> Path:
    """WA, UA and macro-F1 of each cross-validation fold as grouped bars."""
    if not folds:
        raise ValueError("no folds to plot")
    metrics = (("wa", "WA"), ("ua", "UA"), ("macro_f1", "macro-F1"))
    x = np.arange(len(folds))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(folds) + 2), 3.8))
    for k, (key, name) in enumerate(metrics):
        ax.bar(x + (k - 1) * width, [float(f[key]) for f in folds], width, label=name)
    ax.set_xticks(x, [str(f.get("fold", i + 1)) for i, f in enumerate(folds)], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title(title or "scores per fold")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(out))


def _one_per_emotion(utts: Sequence[Utterance], waves: Mapping[Path, np.ndarray]) -> list[Utterance]:
    """The first utterance (in corpus order) of each emotion whose audio is available."""
    chosen: dict[str, Utterance] = {}
    for u in utts:
        if u.emotion not in chosen and u.path in waves:
            chosen[u.emotion] = u
    return list(chosen.values())


_FRAME_SETS = ("logmel", "mfcc", "rms", "f0")


@functools.lru_cache(maxsize=1)
def _extractor() -> Any:
    """The emovox front end with default parameters (what the models see), built once."""
    from emovox.features import FeatureConfig, FeatureExtractor

    return FeatureExtractor(FeatureConfig(sets=_FRAME_SETS, deltas=False)).eval()


def _named_blocks(x: np.ndarray) -> dict[str, np.ndarray]:
    """Split one clip's frame features ``[C, F]`` from :func:`_extractor` into named blocks."""
    cfg = _extractor().cfg
    blocks: dict[str, np.ndarray] = {}
    start = 0
    for name in _FRAME_SETS:
        width = cfg.channels_of(name)
        blocks[name] = x[start : start + width]
        start += width
    f0_block = blocks.pop("f0")
    blocks["f0"] = cfg.f0_min * np.exp2(f0_block[0])
    blocks["voicing"] = f0_block[1]
    blocks["rms"] = blocks["rms"][0]
    return blocks


def frame_features(wave: np.ndarray) -> dict[str, np.ndarray]:
    """Frame features of one clip by name: ``logmel`` [64, F] (dB), ``mfcc`` [40, F], ``rms`` [F],
    ``f0`` [F] (Hz) and ``voicing`` [F] (0..1), from :class:`emovox.features.FeatureExtractor`."""
    import torch

    extractor = _extractor()
    with torch.no_grad():
        feats, frames = extractor(
            torch.from_numpy(wave[None, :].astype(np.float32)), torch.tensor([wave.size])
        )
    return _named_blocks(feats[0, :, : int(frames[0])].numpy())


def frame_features_many(
    waves: Sequence[np.ndarray], *, progress: bool = False
) -> list[dict[str, np.ndarray]]:
    """:func:`frame_features` of many clips: computed in padded batches, once per clip, through the
    on-disk feature cache (:func:`emovox.cache.cached_features`), so redrawing a report or
    evaluating the same clips again recomputes nothing."""
    from emovox.cache import cached_features

    return [_named_blocks(x) for x in cached_features(list(waves), _extractor(), progress=progress)]


def mfcc_for_display(mfcc: np.ndarray) -> np.ndarray:
    """MFCCs 1.. (c0, the log energy, dropped) each standardised over time, for an image whose colour
    shows the spectral shape; raw, c0 alone spans the colour scale and the rest is one flat colour."""
    rest = np.asarray(mfcc[1:], dtype=np.float64)
    std = rest.std(axis=1, keepdims=True)
    return (rest - rest.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)


def _envelope(wave: np.ndarray, sr: int, points: int = 1500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(time, min, max)`` of ``wave`` over ``points`` equal stretches: what a waveform plot shows at
    report size, drawn far faster than every sample."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.size <= 2 * points:
        t = np.arange(wave.size) / sr
        return t, wave, wave
    edges = np.linspace(0, wave.size, points + 1).astype(int)
    low = np.minimum.reduceat(wave, edges[:-1])
    high = np.maximum.reduceat(wave, edges[:-1])
    return edges[:-1] / sr, low, high


def plot_examples(
    utts: Sequence[Utterance],
    waves: Mapping[Path, np.ndarray],
    out: str | Path,
    *,
    sr: int = SAMPLE_RATE,
    progress: bool = False,
) -> Path:
    """One example per emotion: waveform, log-mel spectrogram and MFCCs 1.. (per coefficient
    standardised, see :func:`mfcc_for_display`), one row per emotion."""
    examples = _one_per_emotion(utts, waves)
    if not examples:
        raise ValueError("no utterance with loaded audio to plot")
    hop = _extractor().cfg.hop_length
    features = frame_features_many([waves[u.path] for u in examples], progress=progress)
    fig, axes = plt.subplots(len(examples), 3, figsize=(14, 2.1 * len(examples) + 0.6), squeeze=False)
    for row, u, feats in zip(axes, examples, features, strict=True):
        wave = waves[u.path]
        t, low, high = _envelope(wave, sr)
        row[0].fill_between(t, low, high, linewidth=0.4, color="#4c72b0")
        row[0].set_xlim(0, max(wave.size / sr, 1 / sr))
        row[0].set_ylabel(u.emotion, fontsize=11, fontweight="bold")
        logmel, mfcc = feats["logmel"], mfcc_for_display(feats["mfcc"])
        extent = (0, logmel.shape[1] * hop / sr)
        row[1].imshow(
            logmel, origin="lower", aspect="auto", cmap="magma", extent=(*extent, 0, logmel.shape[0])
        )
        row[2].imshow(
            mfcc,
            origin="lower",
            aspect="auto",
            cmap="coolwarm",
            vmin=-3,
            vmax=3,
            extent=(*extent, 1, mfcc.shape[0] + 1),
        )
        row[1].set_ylabel("mel band", fontsize=8)
        row[2].set_ylabel("MFCC", fontsize=8)
        row[0].text(
            0.01, 0.97, f"{Path(u.path).name} ({u.speaker})", transform=row[0].transAxes, fontsize=7, va="top"
        )
    titles = ("waveform", "log-mel spectrogram (dB)", "MFCC 1.. (each standardised over time)")
    for ax, name in zip(axes[0], titles, strict=True):
        ax.set_title(name, fontsize=10)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    fig.tight_layout()
    return _save(fig, Path(out))


def utterance_descriptors(
    wave: np.ndarray, sr: int = SAMPLE_RATE, *, feats: Mapping[str, np.ndarray] | None = None
) -> dict[str, float]:
    """Interpretable per-utterance descriptors: mean F0 of voiced frames, mean energy, MFCC1, duration.

    F0 is the YIN track of :func:`frame_features` over frames with voicing above 0.5 and energy
    within 30 dB of the loudest frame (so silence and noise do not drag the mean); energy is the
    mean frame RMS in dB over the frames within 30 dB of the loudest. ``feats`` are the clip's
    :func:`frame_features` when already computed.
    """
    feats = feats if feats is not None else frame_features(wave)
    rms_db = 20 * np.log10(feats["rms"] + 1e-8)
    loud = rms_db > rms_db.max() - 30
    voiced = loud & (feats["voicing"] > 0.5)
    return {
        "mean F0 (Hz)": float(np.mean(feats["f0"][voiced])) if voiced.any() else float("nan"),
        "energy (dB RMS)": float(np.mean(rms_db[loud])),
        "MFCC 1 (mean)": float(np.mean(feats["mfcc"][1])),
        "duration (s)": wave.size / sr,
    }


def plot_feature_distributions(
    utts: Sequence[Utterance],
    waves: Mapping[Path, np.ndarray],
    out: str | Path,
    *,
    per_emotion: int = 24,
    seed: int = 0,
    sr: int = SAMPLE_RATE,
    progress: bool = False,
) -> Path:
    """Box plots of mean F0, energy, MFCC1 and duration per emotion (up to ``per_emotion`` clips each).

    Shows whether emotions differ along the prosodic dimensions the literature relies on (e.g.
    angry/happy louder and higher than sad) before any model is trained. The clips' features are
    computed together, through the feature cache (:func:`frame_features_many`).
    """
    rng = np.random.default_rng(seed)
    by_emotion: dict[str, list[Utterance]] = {}
    for u in utts:
        if u.path in waves:
            by_emotion.setdefault(u.emotion, []).append(u)
    if not by_emotion:
        raise ValueError("no utterance with loaded audio to plot")
    emotions = list(by_emotion)
    picked: list[tuple[str, Utterance]] = []
    for emotion in emotions:
        pool = by_emotion[emotion]
        chosen = rng.choice(len(pool), size=min(per_emotion, len(pool)), replace=False)
        picked += [(emotion, pool[i]) for i in sorted(chosen)]
    features = frame_features_many([waves[u.path] for _, u in picked], progress=progress)
    values: dict[str, dict[str, list[float]]] = {}
    for (emotion, u), feats in zip(picked, features, strict=True):
        for name, value in utterance_descriptors(waves[u.path], sr, feats=feats).items():
            if not math.isnan(value):
                values.setdefault(name, {}).setdefault(emotion, []).append(value)
    names = list(values)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        present = [e for e in emotions if values[name].get(e)]
        ax.boxplot([values[name][e] for e in present], showfliers=False)
        ax.set_xticks(range(1, len(present) + 1), present, rotation=45, ha="right")
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"per-emotion descriptors (up to {per_emotion} clips per emotion)")
    fig.tight_layout()
    return _save(fig, Path(out))
