"""Figures: each function writes a readable PNG of sensible size (synthetic data, fast)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import synth_speech
from emovox import plots
from emovox.corpora import Utterance
from emovox.errors import EmovoxError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_width: int = 400, min_height: int = 250) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        width, height = im.size
        assert min_width <= width <= 4000 and min_height <= height <= 4000
        # not a blank canvas: the figure has drawn content
        assert np.asarray(im.convert("L")).std() > 5


def test_history_from_list(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "train_loss": 2 / (e + 1), "val_loss": 2.2 / (e + 1), "val_ua": 0.1 * e, "lr": 1e-3}
        for e in range(6)
    ]
    assert_png(plots.plot_history(history, tmp_path / "h.png", title="run"))


def test_history_from_lightning_csv(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train_loss_step", "train_loss_epoch", "val_loss", "val_ua"])
        for epoch in range(3):
            w.writerow([epoch, epoch * 10 + 5, 1.5, "", "", ""])
            w.writerow([epoch, epoch * 10 + 9, "", "", 1.2 - 0.1 * epoch, 0.4 + 0.1 * epoch])
            w.writerow([epoch, epoch * 10 + 9, "", 1.4 - 0.2 * epoch, "", ""])
    rows = plots.history_from_csv(path)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[1] == {
        "epoch": 1.0,
        "train_loss_epoch": pytest.approx(1.2),
        "val_loss": pytest.approx(1.1),
        "val_ua": pytest.approx(0.5),
    }
    assert_png(plots.plot_history(path, tmp_path / "h.png"))


def test_history_without_metrics_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EmovoxError, match="no train_/val_"):
        plots.plot_history([{"epoch": 0, "lr": 0.1}], tmp_path / "h.png")
    with pytest.raises(EmovoxError, match="not found"):
        plots.plot_history(tmp_path / "missing.csv", tmp_path / "h.png")


def test_confusion(tmp_path: Path) -> None:
    labels = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    cm = np.random.default_rng(0).integers(0, 20, size=(8, 8))
    cm[1] = 0  # a class absent from the test set must not divide by zero
    assert_png(plots.plot_confusion(cm, labels, tmp_path / "cm.png"), min_width=800)
    with pytest.raises(ValueError):
        plots.plot_confusion(cm, labels[:3], tmp_path / "bad.png")


def test_per_speaker_and_folds(tmp_path: Path) -> None:
    per_speaker = {f"ravdess:{i:02d}": {"accuracy": 0.3 + 0.03 * i, "n": 60} for i in range(1, 21)}
    assert_png(plots.plot_per_speaker(per_speaker, tmp_path / "spk.png"))
    folds = [{"fold": f"fold_0{i}", "wa": 0.5, "ua": 0.45 + 0.01 * i, "macro_f1": 0.44} for i in range(1, 6)]
    assert_png(plots.plot_fold_scores(folds, tmp_path / "folds.png"))


def test_data_plots(tmp_path: Path) -> None:
    utts, waves = [], {}
    for k, (emotion, f0) in enumerate({"neutral": 110.0, "angry": 260.0, "sad": 90.0}.items()):
        for j in range(3):
            path = tmp_path / f"{emotion}_{j}.wav"
            utts.append(
                Utterance(path=path, emotion=emotion, speaker=f"x:{j}", corpus="folder", label=emotion)
            )
            waves[path] = synth_speech(0.8, f0=f0, seed=10 * k + j)
    assert_png(plots.plot_examples(utts, waves, tmp_path / "ex.png"), min_width=1000, min_height=400)
    assert_png(plots.plot_feature_distributions(utts, waves, tmp_path / "dist.png"), min_width=1000)
    d = plots.utterance_descriptors(waves[utts[3].path])  # angry at 260 Hz
    assert d["mean F0 (Hz)"] == pytest.approx(260, rel=0.1)
    assert d["duration (s)"] == pytest.approx(0.8)


def test_mfcc_panel_shows_the_coefficients_not_one_flat_colour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raw MFCCs put c0 (log energy, hundreds of units) on the same colour scale as the rest, so
    everything but c0 was one colour: the panel now drops c0 and standardises each coefficient."""
    import matplotlib.axes

    shown: list[tuple[np.ndarray, float | None, float | None]] = []
    real_imshow = matplotlib.axes.Axes.imshow

    def imshow(self: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
        shown.append((np.asarray(data), kwargs.get("vmin"), kwargs.get("vmax")))
        return real_imshow(self, data, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", imshow)
    path = tmp_path / "a.wav"
    utts = [Utterance(path=path, emotion="angry", speaker="x:0", corpus="folder", label="angry")]
    wave = synth_speech(1.0, f0=200.0)
    plots.plot_examples(utts, {path: wave}, tmp_path / "ex.png")
    mfcc, vmin, vmax = shown[1]  # waveform, log-mel, MFCC
    raw = plots.frame_features(wave)["mfcc"]
    assert mfcc.shape == (raw.shape[0] - 1, raw.shape[1])  # c0 dropped
    low, high = (vmin, vmax) if vmin is not None else (mfcc.min(), mfcc.max())
    # every coefficient uses a real part of the colour scale (raw: c1.. span a few % of it)
    spans = (mfcc.max(axis=1) - mfcc.min(axis=1)) / (high - low)
    assert np.median(spans) > 0.4
    raw_spans = (raw[1:].max(axis=1) - raw[1:].min(axis=1)) / (raw.max() - raw.min())
    assert np.median(raw_spans) < np.median(spans)
    np.testing.assert_allclose(plots.mfcc_for_display(raw).mean(axis=1), 0.0, atol=1e-6)


def test_frame_features_many_matches_one_by_one_and_uses_the_cache(tmp_path: Path) -> None:
    from emovox.cache import FeatureCache, feature_key

    waves = [synth_speech(s, f0=f) for s, f in ((0.6, 120.0), (1.1, 240.0), (0.9, 180.0))]
    many = plots.frame_features_many(waves)
    for wave, feats in zip(waves, many, strict=True):
        single = plots.frame_features(wave)
        for name, values in single.items():
            np.testing.assert_allclose(feats[name], values, rtol=1e-4, atol=1e-3)
    cache = FeatureCache()
    params = feature_key(plots._extractor().cfg)
    assert all(cache.get(cache.key([np.asarray(w, dtype=np.float32), params])) is not None for w in waves)
