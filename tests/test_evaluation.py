"""Metrics, model evaluation, speaker-grouped cross-validation and reports (synthetic, fast)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from conftest import synth_speech
from emovox.corpora import Utterance, load_corpus
from emovox.errors import CorpusError
from emovox.evaluation import compute_metrics, cross_validate, evaluate_model, write_report
from emovox.splits import leave_one_speaker_out, speaker_kfold

SR = 16_000
# each synthetic emotion is a different pitch, so a pitch-reading fake model can recognise it
PITCH = {"neutral": 110.0, "happy": 220.0, "angry": 330.0}


def make_corpus(root: Path, speakers: int = 6, per_emotion: int = 2, seconds: float = 0.4) -> Path:
    """``root/<speaker>/<emotion>/NN.wav``: the folder-per-emotion layout with speaker folders."""
    for s in range(speakers):
        for emotion, f0 in PITCH.items():
            folder = root / f"spk{s}" / emotion
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_emotion):
                wave = synth_speech(seconds, SR, f0=f0 * (1 + 0.02 * s), seed=100 * s + k)
                sf.write(folder / f"{k:02d}.wav", wave, SR)
    return root


def dominant_pitch(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    freqs = np.fft.rfftfreq(wave.size, 1 / SR)
    band = (freqs > 60) & (freqs < 400)
    return float(freqs[band][spectrum[band].argmax()])


@dataclass
class PitchClassifier:
    """Fake model: probability mass on the label whose pitch is nearest the clip's dominant pitch."""

    labels: list[str]
    calls: list[int] = field(default_factory=list)

    def predict_proba(self, waves: list[np.ndarray]) -> np.ndarray:
        self.calls.append(len(waves))
        out = np.full((len(waves), len(self.labels)), 0.1 / max(1, len(self.labels) - 1))
        for i, w in enumerate(waves):
            pitch = dominant_pitch(w)
            out[i, int(np.argmin([abs(PITCH.get(lab, 1e4) - pitch) for lab in self.labels]))] = 0.9
        return out / out.sum(axis=1, keepdims=True)


@dataclass
class FakeFit:
    model: Any
    best_val_ua: float
    history: list[dict[str, float]]
    checkpoint: Path


@pytest.fixture(scope="module")
def corpus_utts(tmp_path_factory: pytest.TempPathFactory) -> list[Utterance]:
    root = make_corpus(tmp_path_factory.mktemp("corpus"))
    return load_corpus(root, "folder").utterances


# --------------------------------------------------------------------------- compute_metrics


def test_imbalanced_ua_differs_from_wa() -> None:
    m = compute_metrics(["a", "a", "a", "a", "b"], ["a"] * 5, ["a", "b"])
    assert m["wa"] == pytest.approx(0.8)
    assert m["ua"] == pytest.approx(0.5)  # recall a = 1, recall b = 0
    f1_a = 2 * 0.8 * 1.0 / 1.8
    assert m["macro_f1"] == pytest.approx(f1_a / 2)
    assert m["per_class"]["a"] == {"precision": 0.8, "recall": 1.0, "f1": pytest.approx(f1_a), "support": 4}
    assert m["per_class"]["b"]["support"] == 1 and m["per_class"]["b"]["recall"] == 0.0


def test_confusion_rows_are_true_labels_in_label_order() -> None:
    m = compute_metrics(["a", "a", "b", "c"], ["b", "b", "b", "a"], ["c", "b", "a"])
    # rows/cols in the given order c, b, a
    assert m["labels"] == ["c", "b", "a"]
    assert m["confusion"] == [[0, 0, 1], [0, 1, 0], [0, 2, 0]]


def test_ua_and_f1_ignore_classes_absent_from_test() -> None:
    m = compute_metrics(["a", "b"], ["a", "c"], ["a", "b", "c"])
    assert m["ua"] == pytest.approx(0.5)  # mean of recall(a)=1, recall(b)=0; c has no support
    assert m["macro_f1"] == pytest.approx(0.5)  # f1(a)=1, f1(b)=0
    assert m["per_class"]["c"]["precision"] == 0.0


def test_per_speaker_accuracy() -> None:
    m = compute_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"], speakers=["x", "x", "y", "y"])
    assert m["per_speaker"] == {"x": {"accuracy": 0.5, "n": 2}, "y": {"accuracy": 1.0, "n": 2}}


def test_unknown_label_and_length_mismatch() -> None:
    with pytest.raises(CorpusError, match="zzz"):
        compute_metrics(["a", "zzz"], ["a", "a"], ["a", "b"])
    with pytest.raises(ValueError):
        compute_metrics(["a"], ["a", "b"], ["a", "b"])


# --------------------------------------------------------------------------- evaluate_model


def test_evaluate_model_scores_and_predictions(corpus_utts: list[Utterance]) -> None:
    clf = PitchClassifier(labels=list(PITCH))
    m = evaluate_model(clf, corpus_utts, batch_size=8, progress=False)
    assert m["n"] == len(corpus_utts) == 36
    assert m["wa"] == pytest.approx(1.0) and m["ua"] == pytest.approx(1.0)
    assert sum(clf.calls) == 36 and max(clf.calls) == 8  # batched
    assert len(m["predictions"]) == 36
    p = m["predictions"][0]
    assert set(p) == {"path", "speaker", "true", "pred", "confidence"}
    assert p["confidence"] == pytest.approx(0.9)
    assert set(m["per_speaker"]) == {f"folder:spk{s}" for s in range(6)}
    assert m["shared_emotions"] is None and m["dropped"] == {}


def test_evaluate_model_unknown_emotion_is_named(corpus_utts: list[Utterance]) -> None:
    clf = PitchClassifier(labels=["neutral", "happy"])
    with pytest.raises(CorpusError, match="angry"):
        evaluate_model(clf, corpus_utts, progress=False)


def test_evaluate_model_cross_corpus_restricts_to_shared(corpus_utts: list[Utterance]) -> None:
    # the model knows "sad" (absent from the test data) and not "angry" (present)
    clf = PitchClassifier(labels=["sad", "neutral", "happy"])
    m = evaluate_model(clf, corpus_utts, shared_only=True, progress=False)
    assert m["shared_emotions"] == ["neutral", "happy"]
    assert m["labels"] == ["neutral", "happy"]
    assert m["dropped"] == {"angry": 12}
    assert m["n"] == 24
    assert {p["pred"] for p in m["predictions"]} <= {"neutral", "happy"}  # argmax restricted


# --------------------------------------------------------------------------- cross_validate


def test_cross_validate_no_leak_each_speaker_once(corpus_utts: list[Utterance], tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def fake_fit(
        cfg: Any, train: list[Utterance], val: list[Utterance], run_dir: Path, *, waves: Any
    ) -> FakeFit:
        calls.append({"train": train, "val": val, "run_dir": run_dir, "waves": waves})
        history = [
            {"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1), "val_ua": 0.3 + 0.1 * e}
            for e in range(3)
        ]
        return FakeFit(
            PitchClassifier(sorted({u.emotion for u in train})), 0.5, history, run_dir / "best.ckpt"
        )

    splits = speaker_kfold(corpus_utts, k=3, seed=0)
    res = cross_validate(None, corpus_utts, splits, tmp_path, fit=fake_fit, progress=False)

    assert len(calls) == 3
    assert all(c["waves"] is calls[0]["waves"] for c in calls)  # loaded once, shared by all folds
    assert [c["run_dir"].name for c in calls] == ["fold_01", "fold_02", "fold_03"]
    tested: list[str] = []
    for call, fold in zip(calls, res["folds"], strict=True):
        train_spk = {u.speaker for u in call["train"]}
        val_spk = {u.speaker for u in call["val"]}
        assert val_spk and not train_spk & val_spk
        assert not set(fold["test_speakers"]) & (train_spk | val_spk)
        assert sorted(train_spk) == fold["train_speakers"] and sorted(val_spk) == fold["val_speakers"]
        tested += fold["test_speakers"]
        assert (
            json.loads((tmp_path / fold["fold"] / "metrics.json").read_text())["test_speakers"]
            == fold["test_speakers"]
        )
    assert sorted(tested) == sorted({u.speaker for u in corpus_utts})  # each speaker tested exactly once
    assert res["protocol"]["speaker_leak"] is False and res["protocol"]["test_speakers_once"] is True

    for key in ("wa", "ua", "macro_f1"):
        values = [f[key] for f in res["folds"]]
        assert res["summary"][key]["mean"] == pytest.approx(np.mean(values))
        assert res["summary"][key]["std"] == pytest.approx(np.std(values, ddof=1))
    pooled = np.array(res["pooled"]["confusion"])
    assert pooled.sum() == len(corpus_utts)
    assert np.array_equal(pooled, sum(np.array(f["metrics"]["confusion"]) for f in res["folds"]))
    assert len(res["pooled"]["per_speaker"]) == 6 and len(res["predictions"]) == 36
    # calibration of all test predictions pooled: |accuracy - confidence| per bin, clip-weighted
    conf = np.array([p["confidence"] for p in res["predictions"]])
    right = np.array([p["true"] == p["pred"] for p in res["predictions"]])
    bins = np.clip(np.digitize(conf, np.linspace(0, 1, 11)[1:-1], right=True), 0, 9)
    gaps = [
        abs(right[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum() for b in np.unique(bins)
    ]
    assert res["pooled"]["ece"] == pytest.approx(sum(gaps) / len(conf))
    assert sum(row["n"] for row in res["pooled"]["reliability"]) == 36


def test_cross_validate_rejects_leaky_split_unless_allowed(
    corpus_utts: list[Utterance], tmp_path: Path
) -> None:
    from emovox.splits import Split

    leaky = Split(train=np.arange(0, 36, 2), test=np.arange(1, 36, 2), name="leaky")

    def fake_fit(
        cfg: Any, train: list[Utterance], val: list[Utterance], run_dir: Path, *, waves: Any
    ) -> FakeFit:
        return FakeFit(PitchClassifier(list(PITCH)), 1.0, [], run_dir)

    with pytest.raises(ValueError, match="also in training"):
        cross_validate(None, corpus_utts, [leaky], tmp_path / "a", fit=fake_fit, progress=False)
    res = cross_validate(
        None, corpus_utts, [leaky], tmp_path / "b", fit=fake_fit, allow_speaker_leak=True, progress=False
    )
    assert res["protocol"]["speaker_leak"] is True
    report = write_report(tmp_path / "b", res, title="leaky").read_text()
    assert "speakers leak: not a valid result" in report


# --------------------------------------------------------------------------- reports


def _image_links(report: Path) -> list[Path]:
    return [report.parent / link for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())]


def test_write_report_single_evaluation(corpus_utts: list[Utterance], tmp_path: Path) -> None:
    m = evaluate_model(PitchClassifier(list(PITCH)), corpus_utts, progress=False)
    history = [
        {"epoch": e, "train_loss": 1 - 0.1 * e, "val_loss": 1.1 - 0.1 * e, "val_ua": 0.2 * e}
        for e in range(4)
    ]
    report = write_report(
        tmp_path,
        m,
        history=history,
        title="synthetic",
        config={"model": {"family": "mlp"}},
        data_utts=corpus_utts,
    )
    text = report.read_text()
    links = _image_links(report)
    assert {p.name for p in links} == {
        "confusion.png",
        "per_speaker.png",
        "history_training.png",
        "examples.png",
        "feature_distributions.png",
    }
    assert all(p.is_file() and p.stat().st_size > 5000 for p in links)
    assert "| UA | 1.000 |" in text and "folder:spk3" in text and "family: mlp" in text
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["ua"] == 1.0 and "predictions" not in stored
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 37


def test_write_report_cross_validation(corpus_utts: list[Utterance], tmp_path: Path) -> None:
    def fake_fit(
        cfg: Any, train: list[Utterance], val: list[Utterance], run_dir: Path, *, waves: Any
    ) -> FakeFit:
        history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_ua": 0.5} for e in range(2)]
        return FakeFit(PitchClassifier(list(PITCH)), 0.5, history, run_dir)

    res = cross_validate(
        None, corpus_utts, leave_one_speaker_out(corpus_utts), tmp_path, fit=fake_fit, progress=False
    )
    assert len(res["folds"]) == 6 and res["summary"]["ua"]["std"] == 0.0
    report = write_report(tmp_path, res, title="LOSO")
    text = report.read_text()
    assert "1.000 ± 0.000" in text and "validation speakers" in text
    assert all(p.is_file() for p in _image_links(report))
    assert len([p for p in _image_links(report) if p.name.startswith("history_fold_")]) == 6


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) mlp bundle over the three synthetic emotions, trained-on speaker spk0 recorded."""
    from emovox.bundle import save_bundle
    from emovox.features import FeatureConfig
    from emovox.models import EmotionNet

    net = EmotionNet(FeatureConfig(sets=("logmel",)), "mlp", {}, list(PITCH))
    card = {"data": "synthetic tones", "protocol": "none", "licence": "CC0-1.0"}
    path = tmp_path_factory.mktemp("bundle") / "model"
    return save_bundle(net, path, metrics={}, card=card, training={"speakers": ["folder:spk0"]})


def test_cli_evaluate_writes_run_dir(tiny_bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from emovox.cli import app

    data = make_corpus(tmp_path / "data", speakers=3, per_emotion=1)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(tiny_bundle.parent), str(data), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "UA" in result.output and "macro-F1" in result.output
    assert "were in the model's training data" in result.output  # spk0 was a training speaker
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 9 and metrics["leaked_speakers"] == ["folder:spk0"]
    assert "speakers leak: not a valid result" in (out / "report.md").read_text()
    assert all(p.is_file() for p in _image_links(out / "report.md"))

    held_out = CliRunner().invoke(
        app,
        [
            "evaluate",
            "-m",
            str(tiny_bundle),
            str(data),
            "-s",
            "spk1,spk2",
            "-o",
            str(tmp_path / "r2"),
            "--no-plots",
        ],
    )
    assert held_out.exit_code == 0, held_out.output
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["speaker_leak"] is False
    assert "![" not in (tmp_path / "r2" / "report.md").read_text()


def test_confusion_plots_say_test_or_validation_and_show_the_score(
    corpus_utts: list[Utterance], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emovox import plots

    titles: dict[str, str | None] = {}
    real = plots.plot_confusion

    def record(confusion: Any, labels: Any, out: Path, *, title: str | None = None) -> Path:
        titles[Path(out).name] = title
        return real(confusion, labels, out, title=title)

    monkeypatch.setattr(plots, "plot_confusion", record)
    m = evaluate_model(PitchClassifier(list(PITCH)), corpus_utts, progress=False)
    write_report(tmp_path / "eval", m)
    assert (
        titles["confusion.png"]
        == f"test: UA {m['ua']:.3f}, WA {m['wa']:.3f}, macro-F1 {m['macro_f1']:.3f} (36 clips)"
    )
    train = {**m, "kind": "train", "validation": dict(m, n=12), "training": _training_record()}
    write_report(tmp_path / "train", train)
    assert titles["confusion_validation.png"].startswith("validation (chose the checkpoint): UA 1.000")


def _training_record() -> dict[str, Any]:
    return {
        "train_speakers": ["a"],
        "val_speakers": ["b"],
        "test_speakers": ["c"],
        "validation": "speakers",
        "n_train": 1,
        "n_val": 1,
        "n_test": 1,
        "epochs": 1,
        "train_seconds": 1.0,
        "best_val_ua": 1.0,
        "checkpoint": None,
        "bundle": None,
        "family": "svm",
    }


def test_evaluate_decodes_each_clip_once_reports_its_stages_and_can_skip_figures(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """emovox evaluate used to decode the data twice (scoring, then the report's data figures) and
    compute each figure clip's features one at a time while the bar still said "predicting"."""
    import emovox.corpora
    import emovox.reports
    from emovox.progress import progress_bar
    from emovox.runs import run_evaluation

    data = make_corpus(tmp_path / "data", speakers=3, per_emotion=2)
    decoded: list[Path] = []
    real_iter_load = emovox.corpora.iter_load

    def counting(paths: Any, **kwargs: Any) -> Any:
        paths = list(paths)
        decoded.extend(Path(p) for p in paths)
        return real_iter_load(paths, **kwargs)

    stages: list[str] = []

    def recording_bar(**kwargs: Any) -> Any:
        bar = progress_bar(**kwargs)
        real_update = bar.update

        def update(task: Any, **kw: Any) -> None:
            if "description" in kw:
                stages.append(kw["description"])
            real_update(task, **kw)

        bar.update = update  # type: ignore[method-assign]
        return bar

    monkeypatch.setattr(emovox.corpora, "iter_load", counting)
    monkeypatch.setattr(emovox.reports, "progress_bar", recording_bar)
    metrics, report = run_evaluation(tiny_bundle, data, out=tmp_path / "run", progress=True)
    assert metrics["n"] == 18 and len(decoded) == len(set(decoded)) == 18
    assert {"report: confusion matrix", "report: per-emotion feature distributions"} <= set(stages)
    assert (tmp_path / "run" / "plots" / "feature_distributions.png").is_file()

    _, bare = run_evaluation(tiny_bundle, data, out=tmp_path / "bare", plots=False, progress=False)
    text = bare.read_text()
    assert "![" not in text and not (tmp_path / "bare" / "plots").exists()
    assert "| UA |" in text and "## Data" in text


def test_cli_evaluate_errors_are_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from emovox.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["evaluate", "-m", str(tmp_path / "nope"), str(tmp_path)])
    assert missing.exit_code == 2 and "nope" in missing.output and "Traceback" not in missing.output
    data = tmp_path / "data"
    (data / "sad").mkdir(parents=True)
    sf.write(data / "sad" / "a.wav", synth_speech(0.5, SR), SR)
    unknown = runner.invoke(app, ["evaluate", "-m", str(tiny_bundle), str(data), "-o", str(tmp_path / "r")])
    assert unknown.exit_code == 2 and "sad" in unknown.output


def test_cross_validate_single_training_speaker_validates_on_its_clips(tmp_path: Path) -> None:
    from emovox.splits import holdout_speakers

    utts = load_corpus(make_corpus(tmp_path / "two", speakers=2, per_emotion=5), "folder").utterances
    seen: list[tuple[set[str], set[str]]] = []

    def fake_fit(
        cfg: Any, train: list[Utterance], val: list[Utterance], run_dir: Path, *, waves: Any
    ) -> FakeFit:
        seen.append(({u.speaker for u in train}, {u.speaker for u in val}))
        assert not {u.path for u in train} & {u.path for u in val}
        return FakeFit(PitchClassifier(list(PITCH)), 1.0, [], run_dir)

    splits = [holdout_speakers(utts, ["spk0"]), holdout_speakers(utts, ["spk1"])]
    res = cross_validate(None, utts, splits, tmp_path / "run", fit=fake_fit, progress=False)
    assert seen == [({"folder:spk1"}, {"folder:spk1"}), ({"folder:spk0"}, {"folder:spk0"})]
    assert [f["validation"] for f in res["folds"]] == ["clips of the single training speaker"] * 2
    assert res["folds"][0]["n_val"] == 3 and res["folds"][0]["test_speakers"] == ["folder:spk0"]
    assert "single training speaker" in write_report(tmp_path / "run", res, title="tess-like").read_text()


def _cv_config(tmp_path: Path, data: Path) -> Path:
    """A fast config: SVM on pooled log-mel statistics, one C (no model selection loop)."""
    cfg = tmp_path / "cv.yaml"
    cfg.write_text(
        f"name: tiny\ndata: {{path: {data}, corpus: folder, trim_silence: false}}\n"
        "model: {family: svm, params: {features: stats, C: 1.0}}\n"
        "features: {sets: [logmel], n_mels: 32}\n"
    )
    return cfg


def test_cli_cv_kfold_and_leaky_flag(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from emovox.cli import app

    data = make_corpus(tmp_path / "data", speakers=4, per_emotion=2)
    cfg = _cv_config(tmp_path, data)
    runner = CliRunner()
    out = tmp_path / "cv"
    result = runner.invoke(
        app, ["cv", "--config", str(cfg), "--folds", "2", "--out", str(out), "train.seed=1"]
    )
    assert result.exit_code == 0, result.output
    assert "mean ± std" in result.output and "fold_02" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["folds"]) == 2 and metrics["protocol"]["speaker_leak"] is False
    tested = sorted(s for f in metrics["folds"] for s in f["test_speakers"])
    assert tested == [f"folder:spk{i}" for i in range(4)]
    assert (out / "config.yaml").is_file() and (out / "fold_01" / "metrics.json").is_file()
    assert all(p.is_file() for p in _image_links(out / "report.md"))

    leaky = runner.invoke(app, ["cv", "-c", str(cfg), "--leaky-random-split", "-o", str(tmp_path / "leaky")])
    assert leaky.exit_code == 0, leaky.output
    assert "speakers leak: not a valid result" in leaky.output
    assert json.loads((tmp_path / "leaky" / "metrics.json").read_text())["protocol"]["speaker_leak"] is True
    assert "speakers leak: not a valid result" in (tmp_path / "leaky" / "report.md").read_text()

    bad = runner.invoke(app, ["cv", "-c", str(cfg), "--folds", "9", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "at least 9 speakers" in bad.output


def test_cli_cv_epoch_lines_name_the_fold_and_count_from_one(tmp_path: Path) -> None:
    """A neural cv run prints one epoch line per epoch and fold: labelled with the fold, counted
    1..epochs as history.json counts them (not 0..epochs-1)."""
    from typer.testing import CliRunner

    from emovox.cli import app

    data = make_corpus(tmp_path / "data", speakers=4, per_emotion=2)
    cfg = tmp_path / "mlp.yaml"
    cfg.write_text(
        f"name: tiny\ndata: {{path: {data}, corpus: folder, trim_silence: false}}\n"
        "model: {family: mlp, params: {hidden: [8]}}\nfeatures: {sets: [logmel], n_mels: 16}\n"
        "train: {epochs: 2, batch_size: 8, threads: 1}\n"
    )
    result = CliRunner().invoke(app, ["cv", "-c", str(cfg), "--folds", "2", "-o", str(tmp_path / "cv")])
    assert result.exit_code == 0, result.output
    for fold in ("fold_01", "fold_02"):
        assert re.search(rf"{fold} Epoch 1/2\b", result.output), result.output
        assert re.search(rf"{fold} Epoch 2/2\b", result.output), result.output
    assert "Epoch 0/" not in result.output
    history = json.loads((tmp_path / "cv" / "fold_01" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_cli_cv_without_validation(tmp_path: Path) -> None:
    """train.val_fraction=0: every training speaker fits, no validation speakers, report says so."""
    from typer.testing import CliRunner

    from emovox.cli import app

    data = make_corpus(tmp_path / "data", speakers=4, per_emotion=2)
    cfg = _cv_config(tmp_path, data)
    out = tmp_path / "cv"
    result = CliRunner().invoke(
        app, ["cv", "-c", str(cfg), "--folds", "2", "-o", str(out), "train.val_fraction=0"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for fold in metrics["folds"]:
        assert fold["val_speakers"] == [] and fold["n_val"] == 0 and fold["validation"] == "none"
        assert len(fold["train_speakers"]) == 2
        assert not set(fold["train_speakers"]) & set(fold["test_speakers"])
    report = (out / "report.md").read_text()
    assert "there is no validation data" in report and "nan" not in report
