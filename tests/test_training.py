"""Training: fit (Lightning + SVM), checkpoints, resume, seeding, the speaker split and `emovox train`."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import synth_speech
from emovox.config import RunConfig, load_config
from emovox.corpora import Utterance, load_corpus
from emovox.errors import ConfigError, CorpusError, EmovoxError
from emovox.evaluation import evaluate_model, load_waves
from emovox.training import (
    TorchClassifier,
    fit,
    training_split,
)


@pytest.fixture(scope="module", autouse=True)
def _one_cpu_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a CPU shared with other jobs, two-thread OpenMP
    regions wait on each other (recurrent layers by orders of magnitude)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SR = 16_000
# each emotion is a different pitch, so even a tiny model can learn it in a few epochs
PITCH = {"neutral": 110.0, "happy": 220.0, "angry": 330.0}


def make_corpus(root: Path, speakers: int = 4, per_emotion: int = 4, seconds: float = 0.5) -> Path:
    """``root/spk<i>/<emotion>/NN.wav`` (the folder-per-emotion layout with speaker folders)."""
    for s in range(speakers):
        for emotion, f0 in PITCH.items():
            folder = root / f"spk{s}" / emotion
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_emotion):
                wave = synth_speech(seconds + 0.05 * k, SR, f0=f0 * (1 + 0.03 * s), seed=100 * s + k)
                sf.write(folder / f"{k:02d}.wav", wave, SR)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def utts(corpus: Path) -> list[Utterance]:
    return load_corpus(corpus, "folder").utterances


@pytest.fixture(scope="module")
def waves(utts: list[Utterance]) -> dict[Path, np.ndarray]:
    return load_waves(utts, progress=False)[0]


def config(*overrides: str) -> RunConfig:
    """A tiny, fast configuration; overrides as on the command line."""
    base = [
        "features.n_mels=16",
        "model.family=mlp",
        "model.params.hidden=[16]",
        "train.batch_size=8",
        "train.lr=0.01",
        "train.epochs=3",
        "train.patience=null",
        "data.trim_silence=false",
        "data.max_seconds=0.4",
    ]
    return load_config(None, [*base, *overrides])


def by_speaker(utts: list[Utterance], *speakers: int) -> list[Utterance]:
    wanted = {f"folder:spk{s}" for s in speakers}
    return [u for u in utts if u.speaker in wanted]


@pytest.fixture(scope="module")
def mlp_run(
    tmp_path_factory: pytest.TempPathFactory, utts: list[Utterance], waves: dict[Path, np.ndarray]
) -> tuple[Any, Path]:
    run_dir = tmp_path_factory.mktemp("mlp")
    result = fit(config(), by_speaker(utts, 0, 1), by_speaker(utts, 2), run_dir, waves=waves, progress=False)
    return result, run_dir


# --------------------------------------------------------------------------- fit


def test_fit_learns_and_keeps_the_best_validation_checkpoint(
    mlp_run: tuple[Any, Path], utts: list[Utterance], waves: dict[Path, np.ndarray]
) -> None:
    result, run_dir = mlp_run
    assert isinstance(result.model, TorchClassifier)
    assert result.model.labels == list(PITCH)
    train_scores = evaluate_model(result.model, by_speaker(utts, 0, 1), waves, progress=False)
    assert train_scores["ua"] > 0.6  # chance is 1/3
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_ua", "val_wa", "lr", "seconds"} <= set(history[0])
    assert result.best_val_ua == pytest.approx(max(h["val_ua"] for h in history))
    assert result.checkpoint == run_dir / "checkpoints" / "best.ckpt" and result.checkpoint.is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_dir / "history.json").read_text()) == history
    assert (run_dir / "logs" / "metrics.csv").is_file()
    # the returned model is the best checkpoint's, not the last epoch's
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in result.model.net.state_dict().items():
        if key == "temperature":  # fitted on the validation speakers after the best checkpoint
            calibration = json.loads((run_dir / "calibration.json").read_text())
            assert float(value) == pytest.approx(calibration["temperature"])
            continue
        torch.testing.assert_close(value, state[f"net.{key}"])
    # the validation speaker really scores what the checkpoint recorded
    val_scores = evaluate_model(result.model, by_speaker(utts, 2), waves, progress=False)
    assert val_scores["ua"] == pytest.approx(result.best_val_ua, abs=1e-6)


def test_probabilities_are_normalised_and_batch_independent(
    mlp_run: tuple[Any, Path], utts: list[Utterance], waves: dict[Path, np.ndarray]
) -> None:
    clf = mlp_run[0].model
    clips = [waves[u.path] for u in by_speaker(utts, 3)]
    probs = clf.predict_proba(clips)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    one_by_one = np.concatenate([clf.predict_proba([c]) for c in clips[:5]])
    np.testing.assert_allclose(one_by_one, probs[:5], atol=1e-5)


def test_same_seed_same_run_other_seed_other_run(
    tmp_path: Path, utts: list[Utterance], waves: dict[Path, np.ndarray]
) -> None:
    """Waveform augmentation, crops, SpecAugment and mixup all draw from the seeded generators."""
    overrides = (
        "model.family=cnn1d",
        "model.params={channels: [8], kernel: 3}",
        "augment.noise_p=0.5",
        "augment.gain_p=0.5",
        "augment.time_masks=1",
        "augment.time_mask_width=4",
        "train.epochs=1",
    )
    train, val, probe = by_speaker(utts, 0), by_speaker(utts, 1), [waves[u.path] for u in by_speaker(utts, 3)]
    runs = [
        fit(
            config(*overrides, f"train.seed={seed}"), train, val, tmp_path / name, waves=waves, progress=False
        )
        for name, seed in (("a", 3), ("b", 3), ("c", 4))
    ]
    a, b, c = (r.model.predict_proba(probe) for r in runs)
    np.testing.assert_array_equal(a, b)
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"]
    assert not np.allclose(a, c)


class _StopIn:
    """Lightning callback raising KeyboardInterrupt (what Ctrl-C does) at a given epoch and batch."""

    def __new__(cls, epoch: int, batch: int) -> Any:
        import lightning

        class Stop(lightning.pytorch.Callback):
            def on_train_batch_end(
                self, trainer: Any, module: Any, outputs: Any, batch_: Any, idx: int
            ) -> None:
                if trainer.current_epoch == epoch and idx == batch:
                    raise KeyboardInterrupt

        return Stop()


def test_resume_without_a_checkpoint_is_a_clear_error(
    tmp_path: Path, utts: list[Utterance], waves: dict[Path, np.ndarray]
) -> None:
    with pytest.raises(EmovoxError, match=r"nothing to resume \(.*last.ckpt not found\)"):
        fit(config(), by_speaker(utts, 0), [], tmp_path, waves=waves, resume=True, progress=False)


class _CrashIn:
    """Lightning callback raising a RuntimeError (like a kill -9, nothing is saved on the way out)."""

    def __new__(cls, epoch: int, batch: int) -> Any:
        import lightning

        class Crash(lightning.pytorch.Callback):
            def on_train_batch_end(
                self, trainer: Any, module: Any, outputs: Any, batch_: Any, idx: int
            ) -> None:
                if trainer.current_epoch == epoch and idx == batch:
                    raise RuntimeError("simulated crash")

        return Crash()


class _CtrlCIn:
    """Lightning callback sending this process a real SIGINT (Ctrl-C) as a batch starts."""

    def __new__(cls, epoch: int, batch: int) -> Any:
        import signal

        import lightning

        class CtrlC(lightning.pytorch.Callback):
            def on_train_batch_start(self, trainer: Any, module: Any, batch_: Any, idx: int) -> None:
                if trainer.current_epoch == epoch and idx == batch:
                    signal.raise_signal(signal.SIGINT)

        return CtrlC()


def test_resumed_run_is_the_uninterrupted_run(
    tmp_path: Path, utts: list[Utterance], waves: dict[Path, np.ndarray]
) -> None:
    """Ctrl-C mid-epoch (last.ckpt saved there; a real SIGINT arriving mid-batch finishes that
    batch first) or a crash (only the epoch-end last.ckpt survives), then resume: the same weights
    and history as a run never interrupted, with every source of randomness on (crops, waveform
    augmentation, SpecAugment, mixup, dropout, shuffling)."""
    cfg = config(
        "model.family=cnn1d",
        "model.params={channels: [8], kernel: 3, dropout: 0.3}",
        "augment.noise_p=0.5",
        "augment.gain_p=0.5",
        "augment.time_masks=1",
        "augment.time_mask_width=4",
        "train.mixup=0.4",
    )
    train, val = by_speaker(utts, 0, 1), by_speaker(utts, 2)
    reference = fit(cfg, train, val, tmp_path / "straight", waves=waves, progress=False)
    for name, stop, raised in (
        ("interrupt", _StopIn(epoch=1, batch=0), KeyboardInterrupt),
        ("sigint", _CtrlCIn(epoch=1, batch=1), KeyboardInterrupt),
        ("crash", _CrashIn(epoch=1, batch=1), RuntimeError),
    ):
        with pytest.raises(raised):
            fit(cfg, train, val, tmp_path / name, waves=waves, progress=False, callbacks=[stop])
        resumed = fit(cfg, train, val, tmp_path / name, waves=waves, progress=False, resume=True)
        assert [h["epoch"] for h in resumed.history] == [1, 2, 3], name
        for key in ("train_loss", "val_ua", "val_loss"):
            assert [h[key] for h in resumed.history] == [h[key] for h in reference.history], (name, key)
        want, got = reference.model.net.state_dict(), resumed.model.net.state_dict()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=f"{name}: {key}")


def test_no_validation_trains_all_epochs_and_keeps_the_last(
    tmp_path: Path, utts: list[Utterance], waves: dict[Path, np.ndarray]
) -> None:
    result = fit(config("train.epochs=2"), by_speaker(utts, 0), [], tmp_path, waves=waves, progress=False)
    assert math.isnan(result.best_val_ua)
    assert [h["epoch"] for h in result.history] == [1, 2] and "val_ua" not in result.history[0]
    assert result.checkpoint is not None and result.checkpoint.is_file()


def test_svm_family_selects_c_on_validation_and_predicts(
    tmp_path: Path, utts: list[Utterance], waves: dict[Path, np.ndarray]
) -> None:
    cfg = config("model.family=svm", "model.params={features: stats, C: [0.01, 10.0]}")
    result = fit(cfg, by_speaker(utts, 0, 1), by_speaker(utts, 2), tmp_path, waves=waves, progress=False)
    selection = json.loads((tmp_path / "model_selection.json").read_text())
    assert selection["C"] in (0.01, 10.0) and set(selection["val_ua_by_C"]) == {"0.01", "10.0"}
    assert result.best_val_ua == max(selection["val_ua_by_C"].values())
    assert result.checkpoint is None and result.history == []
    probs = result.model.predict_proba([waves[u.path] for u in by_speaker(utts, 3)])
    assert probs.shape == (12, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert evaluate_model(result.model, by_speaker(utts, 3), waves, progress=False)["ua"] > 0.6
    with pytest.raises(ConfigError, match="needs validation"):
        fit(cfg, by_speaker(utts, 0), [], tmp_path / "noval", waves=waves, progress=False)


def test_fit_refuses_a_single_emotion(
    tmp_path: Path, utts: list[Utterance], waves: dict[Path, np.ndarray]
) -> None:
    happy = [u for u in utts if u.emotion == "happy"]
    with pytest.raises(CorpusError, match="1 emotion"):
        fit(config(), happy, [], tmp_path, waves=waves, progress=False)


def test_unusable_hardware_flags_are_config_errors(
    tmp_path: Path, utts: list[Utterance], waves: dict[Path, np.ndarray]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="train.accelerator/devices/strategy/precision: Lightning rejected"):
        fit(config("train.accelerator=gpu"), by_speaker(utts, 0), [], tmp_path, waves=waves, progress=False)


# --------------------------------------------------------------------------- the speaker split


def test_holdout_split_is_speaker_independent(corpus: Path) -> None:
    cfg = config(
        f"data.path={corpus}", "data.corpus=folder", "split.protocol=holdout", "split.test_speakers=[spk3]"
    )
    split = training_split(cfg)
    assert split.speakers("test") == ["folder:spk3"]
    assert len(split.speakers("val")) == 1 and split.validation == "speakers"
    assert not set(split.speakers("val")) & set(split.speakers("train"))
    assert set(split.speakers("train")) | set(split.speakers("val")) == {f"folder:spk{i}" for i in range(3)}
    assert len(split.train) + len(split.val) + len(split.test) == 48


def test_single_training_speaker_validates_on_its_own_clips(corpus: Path) -> None:
    cfg = config(f"data.path={corpus}", "split.protocol=holdout", "split.test_speakers=[spk1, spk2, spk3]")
    split = training_split(cfg)
    assert split.validation == "clips of the single training speaker"
    assert split.speakers("train") == split.speakers("val") == ["folder:spk0"]
    assert not {u.path for u in split.train} & {u.path for u in split.val}
    # stratified: every emotion keeps training clips
    assert {u.emotion for u in split.train} == set(PITCH)


def test_protocol_none_extra_corpora_and_cross_corpus(corpus: Path, tmp_path: Path) -> None:
    extra = make_corpus(tmp_path / "extra", speakers=1, per_emotion=1)
    (extra / "spk0").rename(extra / "guest")
    none = training_split(config(f"data.path={corpus}", f"data.extra=[{extra}]", "train.val_fraction=0"))
    assert none.test == [] and none.val == [] and none.validation == "none"
    assert "folder:guest" in none.speakers("train") and len(none.train) == 51
    # extra corpora join the training side only, and may not bring a test speaker along
    held = training_split(
        config(
            f"data.path={corpus}",
            f"data.extra=[{extra}]",
            "split.protocol=holdout",
            "split.test_speakers=[spk3]",
        )
    )
    assert "folder:guest" in held.speakers("train") + held.speakers("val")
    assert "folder:guest" not in held.speakers("test")
    with pytest.raises(CorpusError, match="extra training corpus has test speaker"):
        training_split(
            config(
                f"data.path={corpus}",
                f"data.extra=[{corpus}]",
                "split.protocol=holdout",
                "split.test_speakers=[spk3]",
            )
        )
    # cross-corpus: test on another corpus over the shared emotions only
    other = tmp_path / "other"
    for emotion in ("happy", "sad"):
        (other / "x1" / emotion).mkdir(parents=True)
        sf.write(other / "x1" / emotion / "a.wav", synth_speech(0.5, SR), SR)
    (other / "x1" / "angry").mkdir()
    sf.write(other / "x1" / "angry" / "a.wav", synth_speech(0.5, SR), SR)
    cross = training_split(
        config(f"data.path={corpus}", "split.protocol=cross_corpus", f"split.test_path={other}")
    )
    assert cross.shared_emotions == ["happy", "angry"]
    assert (
        {u.emotion for u in cross.train + cross.val} == {u.emotion for u in cross.test} == {"happy", "angry"}
    )


def test_cross_validation_protocols_point_to_emovox_cv(corpus: Path) -> None:
    for protocol in ("kfold", "loso"):
        with pytest.raises(ConfigError, match=f"split.protocol is {protocol}.*emovox cv"):
            training_split(config(f"data.path={corpus}", f"split.protocol={protocol}"), source="x.yaml")
    with pytest.raises(ConfigError, match="data.path is not set"):
        training_split(config())
    with pytest.raises(CorpusError, match="unknown or ambiguous speaker 'spk9'"):
        training_split(config(f"data.path={corpus}", "split.protocol=holdout", "split.test_speakers=[spk9]"))


# --------------------------------------------------------------------------- emovox train


def _write_config(tmp_path: Path, corpus: Path, family: str = "crnn", extra: str = "") -> Path:
    params = {
        "crnn": "{channels: [4], hidden: 8}",
        "mlp": "{hidden: [16]}",
        "svm": "{features: stats, C: 1.0}",
    }[family]
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"name: tiny\ndata: {{path: {corpus}, corpus: folder, trim_silence: false, max_seconds: 0.4}}\n"
        f"features: {{sets: [logmel], n_mels: 16}}\nmodel: {{family: {family}, params: {params}}}\n"
        "augment: {time_masks: 1, time_mask_width: 4}\n"
        "train: {epochs: 1, batch_size: 8, lr: 0.01}\n"
        f"split: {{protocol: holdout, test_speakers: [spk3]}}\n{extra}"
    )
    return path


def _image_links(report: Path) -> list[Path]:
    return [report.parent / m for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())]


def test_cli_train_writes_the_run_folder_and_a_loadable_bundle(corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from emovox.bundle import load_bundle
    from emovox.cli import app
    from emovox.predict import Recognizer

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "-c", str(_write_config(tmp_path, corpus)), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "UA" in result.output and "macro-F1" in result.output and str(out) in result.output
    for name in ("config.yaml", "history.json", "metrics.json", "report.md", "predictions.csv"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "logs" / "metrics.csv").is_file()
    for plot in ("history_training.png", "confusion.png", "confusion_validation.png"):
        assert (out / "plots" / plot).is_file(), plot
    assert all(p.is_file() for p in _image_links(out / "report.md"))
    assert load_config(out / "config.yaml").train.epochs == 1  # the resolved config

    metrics = json.loads((out / "metrics.json").read_text())
    training = metrics["training"]
    assert training["test_speakers"] == ["folder:spk3"] and list(metrics["per_speaker"]) == ["folder:spk3"]
    assert not set(training["test_speakers"]) & set(training["train_speakers"] + training["val_speakers"])
    assert metrics["validation"]["n"] == training["n_val"] == 12 and metrics["n"] == 12

    net, meta = load_bundle(out / "model")
    assert meta["model"]["labels"] == list(PITCH) and meta["model"]["family"] == "crnn"
    assert meta["training"]["test_speakers"] == ["folder:spk3"]
    assert sorted(meta["training"]["speakers"]) == sorted(
        training["train_speakers"] + training["val_speakers"]
    )
    assert meta["metrics"]["ua"] == pytest.approx(metrics["ua"])
    card = (out / "model" / "README.md").read_text()
    assert "folder:spk3" in card and "holdout" in card
    # the bundle reproduces the run's test predictions
    rec = Recognizer.load(out / "model")
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    for row in rows[:4]:
        path, _, _, pred, _ = row.split(",")
        assert rec.predict(path).emotion == pred
    assert isinstance(net, torch.nn.Module)

    again = CliRunner().invoke(app, ["train", "-c", str(_write_config(tmp_path, corpus)), "-o", str(out)])
    assert again.exit_code == 2 and "--resume" in again.output  # never trains over an existing run


def test_cli_train_svm_and_protocol_none(corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from emovox.cli import app

    runner = CliRunner()
    svm = runner.invoke(
        app, ["train", "-c", str(_write_config(tmp_path, corpus, "svm")), "-o", str(tmp_path / "s")]
    )
    assert svm.exit_code == 0, svm.output
    assert "not bundled" in svm.output and not (tmp_path / "s" / "model").exists()
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["training"]["bundle"] is None

    cfg = _write_config(tmp_path, corpus, "svm")
    none = runner.invoke(app, ["train", "-c", str(cfg), "-o", str(tmp_path / "n"), "split.protocol=none"])
    assert none.exit_code == 0, none.output
    assert "no test speakers" in none.output
    metrics = json.loads((tmp_path / "n" / "metrics.json").read_text())
    assert metrics["test"] is None and metrics["training"]["test_speakers"] == []
    assert all(p.is_file() for p in _image_links(tmp_path / "n" / "report.md"))


def test_cli_train_user_errors_are_one_line(corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from emovox.cli import app

    runner = CliRunner()
    cfg = _write_config(tmp_path, corpus)
    cases = [
        (["train", "-c", str(cfg), "train.epochz=3"], "train.epochz: unknown key"),
        (["train", "-c", str(cfg), "split.protocol=kfold"], "emovox cv"),
        (["train", "-c", str(tmp_path / "nope.yaml")], "nope.yaml: config file not found"),
        (["train", "-c", str(cfg), "--precision", "8-bit"], "train.precision"),
        (["train"], "pass --config"),
        (["train", "--resume", str(tmp_path), "-c", str(cfg)], "leave out --config"),
        (["train", "--resume", str(tmp_path / "empty")], "not an emovox train run folder"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) <= 2, result.output


class _Payload:
    """Unpickling this would create ``path`` (what a malicious checkpoint could do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def test_resume_refuses_a_truncated_pickled_or_foreign_checkpoint(corpus: Path, tmp_path: Path) -> None:
    """--resume with a last.ckpt that cannot continue this run: one clear error line, exit 2, and
    nothing in a pickled checkpoint is executed."""
    from typer.testing import CliRunner

    from emovox.cli import app

    out = tmp_path / "run"
    cfg = _write_config(tmp_path, corpus, "mlp")
    assert CliRunner().invoke(app, ["train", "-c", str(cfg), "-o", str(out)]).exit_code == 0
    last = out / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    marker = tmp_path / "executed"

    def resume(*overrides: str) -> Any:
        result = CliRunner().invoke(app, ["train", "--resume", str(out), "train.epochs=2", *overrides])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2, (
            result.output
        )
        return result.output

    last.write_bytes(good[: len(good) // 2])
    assert "cannot resume" in resume()
    torch.save({"state_dict": {}, "emovox_model": _Payload(marker)}, last)
    assert "not a readable emovox training checkpoint" in resume()
    assert not marker.exists()
    last.write_bytes(good)
    assert "another model (params changed" in resume("model.params.hidden=[32]")


def test_cli_ctrl_c_saves_last_checkpoint_and_resume_finishes(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C mid-epoch (Lightning sees a KeyboardInterrupt) writes last.ckpt and ends with exit 130
    and the resume command; --resume continues that state in the same run folder."""
    import signal

    from typer.testing import CliRunner

    import emovox.fitting as fitting
    from emovox.cli import app

    out = tmp_path / "run"
    real_fit = fitting.fit

    def interrupted_fit(cfg: RunConfig, train: Any, val: Any, run_dir: Path, **kwargs: Any) -> Any:
        kwargs["callbacks"] = [_StopIn(epoch=1, batch=1)]  # during the second epoch
        return real_fit(cfg, train, val, run_dir, **kwargs)

    monkeypatch.setattr(fitting, "fit", interrupted_fit)
    handler = signal.getsignal(signal.SIGINT)
    cfg = _write_config(tmp_path, corpus, "mlp")
    first = CliRunner().invoke(app, ["train", "-c", str(cfg), "-o", str(out), "train.epochs=3"])
    assert first.exit_code == 130, first.output
    assert f"continue with: emovox train --resume {out}" in first.output
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C works again afterwards
    last = out / "checkpoints" / "last.ckpt"
    assert not (out / "metrics.json").exists()
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1 and saved["global_step"] == 5  # 3 steps per epoch: mid-epoch 2
    assert [h["epoch"] for h in saved["emovox_history"]] == [1]

    monkeypatch.setattr(fitting, "fit", real_fit)
    # resume with its saved config; an override may extend the run
    resumed = CliRunner().invoke(app, ["train", "--resume", str(out), "train.epochs=4"])
    assert resumed.exit_code == 0, resumed.output
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[0] == saved["emovox_history"][0]  # the first epoch comes from the checkpoint
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["epoch"] == 3 and final["global_step"] == 12  # no epoch was repeated
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["best_val_ua"] == pytest.approx(max(h["val_ua"] for h in history))
    assert load_config(out / "config.yaml").train.epochs == 4
    assert (out / "model" / "model.safetensors").is_file()
    # the CSV log keeps the rows written before the interruption
    with (out / "logs" / "metrics.csv").open() as f:
        epochs = {row["epoch"] for row in csv.DictReader(f)}
    assert {"0", "1", "2", "3"} <= epochs


@pytest.mark.corpus
@pytest.mark.slow
def test_one_epoch_on_three_ravdess_actors(ravdess_dir: Path, tmp_path: Path) -> None:
    from emovox.training import run_training

    data = tmp_path / "ravdess3"
    data.mkdir()
    for actor in ("Actor_01", "Actor_02", "Actor_03"):  # links to the shared clips, no copies
        (data / actor).mkdir()
        for clip in (ravdess_dir / actor).iterdir():
            (data / actor / clip.name).symlink_to(clip)
    cfg = load_config(
        None,
        [
            f"data.path={data}",
            "data.corpus=ravdess",
            "model.family=mlp",
            "model.params.hidden=[32]",
            "features.sets=[mfcc]",
            "train.epochs=1",
            "split.protocol=holdout",
            "split.test_speakers=['03']",
        ],
    )
    metrics = run_training(cfg, tmp_path / "run", progress=False)
    assert metrics is not None
    assert metrics["training"]["test_speakers"] == ["ravdess:03"] and metrics["n"] == 60
    assert len(metrics["training"]["val_speakers"]) == 1
    assert len(metrics["labels"]) == 8 and 0.0 <= metrics["ua"] <= 1.0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- multi-corpus label masks


def test_masked_cross_entropy_ignores_classes_a_corpus_never_labels() -> None:
    import torch.nn.functional as nnf

    from emovox.lightning_module import masked_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    weight = torch.rand(4, generator=g) + 0.5
    everything = torch.ones(6, 4, dtype=torch.bool)
    torch.testing.assert_close(
        masked_cross_entropy(logits, target, everything, weight, 0.1),
        nnf.cross_entropy(logits, target, weight=weight, label_smoothing=0.1),
    )
    no_last = everything.clone()
    no_last[:, 3] = False
    moved = logits.clone()
    moved[:, 3] += 50.0  # whatever the model says about a class the corpus lacks costs nothing
    a = masked_cross_entropy(logits, target, no_last, weight, 0.1)
    torch.testing.assert_close(a, masked_cross_entropy(moved, target, no_last, weight, 0.1))
    torch.testing.assert_close(
        a, nnf.cross_entropy(logits[:, :3], target, weight=weight[:3], label_smoothing=0.1)
    )


def test_a_corpus_missing_an_emotion_trains_over_its_own_emotions(
    utts: list[Utterance], waves: dict[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two corpora, the second without "angry" (as TESS lacks "calm"): its clips get a label mask."""
    import dataclasses

    from emovox.fitting import label_domains

    first = by_speaker(utts, 0, 1)
    second = [dataclasses.replace(u, corpus="other") for u in by_speaker(utts, 2) if u.emotion != "angry"]
    labels = list(PITCH)
    domains, masks = label_domains([*first, *second], [], labels)
    assert masks == [[True] * len(labels), [label != "angry" for label in labels]]
    assert domains == [0] * len(first) + [1] * len(second)
    assert label_domains(first, [], labels) == ([], [])  # one corpus with every label: no masks

    from emovox import lightning_module

    seen: list[torch.Tensor] = []
    real = lightning_module.masked_cross_entropy

    def spy(logits, target, allowed, weight, smoothing):  # type: ignore[no-untyped-def]
        seen.append(allowed.detach().clone())
        return real(logits, target, allowed, weight, smoothing)

    monkeypatch.setattr(lightning_module, "masked_cross_entropy", spy)
    result = fit(config(), [*first, *second], by_speaker(utts, 3), tmp_path, waves=waves, progress=False)
    assert result.model.labels == labels and np.isfinite(result.best_val_ua)
    rows = torch.cat(seen)  # every training batch went through the mask; the second corpus' rows lack angry
    assert rows.shape[1] == len(labels) and (~rows[:, labels.index("angry")]).any() and rows.all(1).any()
    assert result.model.predict_proba([waves[u.path] for u in by_speaker(utts, 3)]).shape[1] == len(labels)
