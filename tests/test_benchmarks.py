"""Smoke runs of the benchmark scripts on tiny synthetic data, so they keep working between full runs.

Each script is run end to end with its smallest settings (a few synthetic clips, a fraction of an
epoch); the numbers are meaningless here, only that every code path runs and writes its outputs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, synth_speech

SR = 16_000
# RAVDESS emotion codes 01..08 and a pitch per emotion, so the tiny corpus is learnable
CODES = {f"{i:02d}": 90.0 + 20.0 * i for i in range(1, 9)}


def _script(name: str) -> ModuleType:
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fake_ravdess(root: Path, actors: int = 4, seconds: float = 0.6) -> Path:
    """``root/ravdess/Actor_NN/03-01-EE-01-01-01-NN.wav``: RAVDESS naming, synthetic speech."""
    for a in range(1, actors + 1):
        folder = root / "ravdess" / f"Actor_{a:02d}"
        folder.mkdir(parents=True)
        for code, f0 in CODES.items():
            for statement in ("01", "02"):
                wave = synth_speech(seconds, SR, f0=f0 * (1 + 0.02 * a), seed=10 * a + int(statement))
                sf.write(folder / f"03-01-{code}-01-{statement}-01-{a:02d}.wav", wave, SR)
    return root


def test_accuracy_benchmark_runs_baselines_and_a_family(tmp_path: Path) -> None:
    corpora = _fake_ravdess(tmp_path / "corpora")
    out = tmp_path / "acc"
    argv = ["--corpora", str(corpora), "--families", "notebook-mlp,mlp", "--folds", "2"]
    assert _script("accuracy").main([*argv, "--epochs-scale", "0.05", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"notebook-mlp", "mlp", "protocol"}
    for name in ("notebook-mlp", "mlp"):
        assert results[name]["folds"] == 2 and 0.0 <= results[name]["ua"]["mean"] <= 1.0
        assert (out / name / "report.md").is_file()
    assert "| mlp |" in (out / "results.md").read_text()


def test_features_benchmark_runs(tmp_path: Path, capsys) -> None:
    corpora = _fake_ravdess(tmp_path / "corpora", actors=1)
    argv = ["--corpus", str(corpora / "ravdess"), "--limit", "6", "--device", "cpu", "--batch-size", "4"]
    assert _script("features").main([*argv, "--threads", "1", "--decode-workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "6 files of ravdess" in out and "emovox cpu" in out


def test_inference_benchmark_runs_with_the_default_model(tmp_path: Path) -> None:
    corpora = _fake_ravdess(tmp_path / "corpora", actors=1)
    out = tmp_path / "inference.json"
    argv = ["--corpus", str(corpora / "ravdess"), "--clips", "4", "--runs", "2", "--warmup", "1"]
    assert _script("inference").main([*argv, "--repeats", "1", "--threads", "1", "--json-out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"emovox torch", "emovox onnx", "librosa + MLP"}
    for r in results.values():
        assert r["single"]["median_ms"] > 0 and np.isfinite(r["batch"]["rtf"])
    live = json.loads(out.read_text())["live"]  # the stream's per-hop work, plain and per session
    assert live["windows"] >= 1 and live["plain"]["median_ms"] > 0 and live["session"]["p95_ms"] > 0


def test_robustness_benchmark_runs_and_feeds_the_model_card(tmp_path: Path) -> None:
    """benchmarks/robustness.py end to end on a tiny corpus; scripts/train_default.py turns its JSON
    into the model card's "measured beyond the cross-validation" text."""
    corpora = _fake_ravdess(tmp_path / "corpora")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "name: tiny\nfeatures: {n_mels: 16, sets: [logmel]}\nmodel: {family: mlp, params: {hidden: [8]}}\n"
        "train: {epochs: 1, batch_size: 8, val_fraction: 0.5}\ndata: {trim_silence: false}\n"
    )
    out = tmp_path / "robustness.json"
    argv = ["--configs", str(config), "--corpus", str(corpora / "ravdess"), "--folds", "2"]
    argv += [
        "--conditions",
        "clean",
        "telephone",
        "babble10",
        "--out",
        str(out),
        "--work",
        str(tmp_path / "w"),
    ]
    assert _script("robustness").main(argv) == 0
    conds = json.loads(out.read_text())["results"]["tiny"]["conditions"]
    assert set(conds) == {"clean", "telephone", "babble10"}
    assert all(0 <= c["ua_mean"] <= 1 and len(c["folds"]) == 2 for c in conds.values())

    spec = importlib.util.spec_from_file_location("train_default", REPO / "scripts" / "train_default.py")
    assert spec is not None and spec.loader is not None
    train_default = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_default)
    text = " ".join(train_default._benchmark_text("tiny", 2, out, None))
    assert "every test clip degraded" in text
    assert f"telephone band {conds['telephone']['ua_mean']:.3f}" in text
    assert f"babble 10 dB {conds['babble10']['ua_mean']:.3f}" in text
    assert f"(clean {conds['clean']['ua_mean']:.3f})" in text
    metrics = {"pooled": {"ece": 0.0423, "n": 64}, "cv": {"ece": {"mean": 0.05}}}
    calibration = train_default._calibration_text(metrics)
    assert "error 0.042 over all 64 test predictions pooled (0.050 as the mean" in calibration

    # a cross-corpus run's metrics.json (one fold), as emovox cv writes it
    fold = {"ua": 0.684, "plain_ua": 0.478, "corpus_ua": 0.679, "test_speakers": ["tess:OAF", "tess:YAF"]}
    fold["metrics"] = {
        "n": 2800,
        "labels": ["angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised"],
    }
    cross = tmp_path / "cross.json"
    cross.write_text(json.dumps({"kind": "cross_validation", "folds": [fold]}))
    (sentence,) = train_default._benchmark_text("tiny", 2, None, cross)
    assert "(tess, 2800 clips of 7 shared emotions)" in sentence and "0.684 UA speaker-normalised" in sentence
    assert "0.478 lone clip, 0.679 with statistics standardised" in sentence
    # the wrong files are one clear error each, before any training
    from emovox.errors import EmovoxError

    wrong = tmp_path / "wrong.json"
    for content, message in [
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"benchmark": "inference", "results": {}}), "not the JSON of benchmarks/robustness.py"),
    ]:
        wrong.write_text(content)
        with pytest.raises(EmovoxError, match=message):
            train_default._benchmark_text("tiny", 2, wrong, None)
    with pytest.raises(EmovoxError, match="no results for config 'other'"):
        train_default._benchmark_text("other", 2, out, None)
    with pytest.raises(EmovoxError, match="measured over 2 folds, this run uses 5"):
        train_default._benchmark_text("tiny", 5, out, None)
    wrong.write_text(json.dumps({"kind": "cross_validation", "folds": [fold, fold]}))
    with pytest.raises(EmovoxError, match="cross-corpus `emovox cv` run"):
        train_default._benchmark_text("tiny", 2, None, wrong)
