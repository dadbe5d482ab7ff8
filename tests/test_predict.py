"""Recognizer: inputs of every kind, agreement with evaluation, VAD timeline; the `emovox predict` CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from typer.testing import CliRunner

from emovox import bundle as bundle_mod
from emovox.audio import load_audio, trim_silence
from emovox.bundle import save_bundle
from emovox.cli import app
from emovox.corpora import EMOTIONS, load_corpus
from emovox.errors import AudioError, BundleError, ConfigError
from emovox.evaluation import evaluate_bundle, evaluate_model
from emovox.features import FeatureConfig
from emovox.models import EmotionNet
from emovox.predict import Prediction, Recognizer, plan_segments

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.flac"))
SR = 16_000
CARD = {"data": "none (random weights, for tests)", "protocol": "none", "licence": "CC0-1.0"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random cnn2d over the 8 RAVDESS emotions, its normaliser fitted to the example clips
    (so inputs are in range and outputs vary from clip to clip)."""
    torch.manual_seed(0)
    net = EmotionNet(
        FeatureConfig(sets=("logmel",), n_mels=32), "cnn2d", {"channels": [4, 8]}, list(EMOTIONS)
    )
    with torch.inference_mode():
        feats = [net.raw_inputs(torch.from_numpy(w)[None], torch.tensor([w.size]))[0][0] for w in _examples()]
        frames = torch.cat(feats, dim=1)
    net.set_normalization(frames.mean(1), frames.std(1))
    path = tmp_path_factory.mktemp("predict") / "model"
    return save_bundle(net, path, metrics={"ua": 0.125}, card=CARD)


def _examples() -> list[np.ndarray]:
    return [load_audio(p) for p in EXAMPLES]


@pytest.fixture(scope="module")
def rec(bundle: Path) -> Recognizer:
    return Recognizer.load(bundle)


def _probs(p: Prediction) -> np.ndarray:
    return np.array([p.probabilities[label] for label in EMOTIONS])


# --------------------------------------------------------------------------- inputs


def test_import_is_lazy_and_exports_recognizer() -> None:
    code = (
        "import sys, emovox; assert 'torch' not in sys.modules; "
        "from emovox import Recognizer; print(Recognizer)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "emovox.predict.Recognizer" in out


def test_predict_path(rec: Recognizer) -> None:
    path = EXAMPLES[0]
    p = rec.predict(path)
    assert isinstance(p, Prediction) and p.path == str(path)
    assert p.emotion in EMOTIONS and p.emotion == next(iter(p.probabilities))
    assert p.confidence == max(p.probabilities.values())
    assert list(p.probabilities.values()) == sorted(p.probabilities.values(), reverse=True)
    assert set(p.probabilities) == set(EMOTIONS) and sum(p.probabilities.values()) == pytest.approx(
        1, abs=1e-5
    )
    assert p.duration == pytest.approx(sf.info(path).duration, abs=1e-3)
    assert json.loads(json.dumps(p.to_dict()))["emotion"] == p.emotion


def test_array_bytes_file_object_and_path_agree(rec: Recognizer) -> None:
    path = EXAMPLES[1]
    data, sr = sf.read(path, dtype="float32")
    raw = path.read_bytes()
    results = [
        rec.predict(path),
        rec.predict(data, sr=sr),
        rec.predict(raw),
        rec.predict(io.BytesIO(raw)),
        rec.predict((data * 32767).astype(np.int16), sr=sr),
    ]
    for other in results[1:4]:
        np.testing.assert_array_equal(_probs(other), _probs(results[0]))
        assert other.path is None and other.duration == results[0].duration
    np.testing.assert_allclose(_probs(results[4]), _probs(results[0]), atol=1e-3)  # 16-bit quantisation


def test_list_is_batched_and_keeps_order(rec: Recognizer) -> None:
    out = rec.predict(list(EXAMPLES))
    assert isinstance(out, list) and [p.path for p in out] == [str(p) for p in EXAMPLES]
    for path, batched in zip(EXAMPLES, out, strict=True):
        np.testing.assert_allclose(_probs(batched), _probs(rec.predict(path)), atol=1e-5)
    assert rec.predict([]) == []


def test_top_k(rec: Recognizer) -> None:
    full = rec.predict(EXAMPLES[0])
    top2 = rec.predict(EXAMPLES[0], top_k=2)
    assert list(top2.probabilities.items()) == list(full.probabilities.items())[:2]
    assert top2.emotion == full.emotion and top2.confidence == full.confidence
    with pytest.raises(ConfigError, match="top_k"):
        rec.predict(EXAMPLES[0], top_k=0)


def test_bad_inputs_are_named(rec: Recognizer, tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"<array>: pass the sample rate"):
        rec.predict(np.zeros(SR, np.float32))
    with pytest.raises(AudioError, match="digital silence"):
        rec.predict(np.zeros(SR, np.float32), sr=SR)
    with pytest.raises(AudioError, match=r"shorter than the minimum of 0.25 s"):
        rec.predict(load_audio(EXAMPLES[0])[SR : SR + 1600], sr=SR)
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioError, match=r"notes\.wav: not a readable audio file"):
        rec.predict([EXAMPLES[0], bad])
    with pytest.raises(TypeError, match="cannot predict on a dict"):
        rec.predict({"a": 1})  # type: ignore[arg-type]


def test_16k_mono_and_44k_stereo_agree(rec: Recognizer) -> None:
    mono = load_audio(EXAMPLES[4])
    up = soxr.resample(mono, SR, 44_100, quality="VHQ")
    stereo = np.stack([up * 0.8, up * 1.2], axis=1)  # channels differ, their mean is the clip
    a = _probs(rec.predict(mono, sr=SR))
    b = _probs(rec.predict(stereo, sr=44_100))
    other = _probs(rec.predict(EXAMPLES[5]))
    diff = np.abs(a - b).max()
    assert diff < 0.01, diff
    assert np.abs(a - other).max() > 5 * diff  # the tolerance is far below what another clip changes


def test_prediction_equals_evaluation(rec: Recognizer, bundle: Path) -> None:
    utts = load_corpus(REPO / "examples").utterances
    assert len(utts) == len(EXAMPLES)
    preds = {p.path: p for p in rec.predict([u.path for u in utts])}  # type: ignore[union-attr]
    evaluated = evaluate_model(rec, utts, trim=rec.trim, min_duration=rec.min_duration, progress=False)
    via_bundle = evaluate_bundle(bundle, utts, progress=False)  # what `emovox evaluate` runs
    for metrics in (evaluated, via_bundle):
        assert len(metrics["predictions"]) == len(utts)
        for row in metrics["predictions"]:
            p = preds[row["path"]]
            assert row["pred"] == p.emotion
            assert row["confidence"] == pytest.approx(p.confidence, abs=1e-5)


def test_thread_safe(rec: Recognizer) -> None:
    expected = [_probs(rec.predict(p)) for p in EXAMPLES[:4]]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: _probs(rec.predict(EXAMPLES[i % 4])), range(12)))
    for i, probs in enumerate(got):
        np.testing.assert_allclose(probs, expected[i % 4], atol=1e-5)


# --------------------------------------------------------------------------- timeline


def long_recording(gap: float = 2.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Three trimmed example utterances separated by `gap` s of faint noise: (wave, speech spans in s)."""
    rng = np.random.default_rng(0)
    parts, spans, t = [], [], 0
    for path in EXAMPLES[:3]:
        silence = (1e-4 * rng.standard_normal(int(gap * SR))).astype(np.float32)
        speech = trim_silence(load_audio(path))
        parts += [silence, speech]
        spans.append(((t + silence.size) / SR, (t + silence.size + speech.size) / SR))
        t += silence.size + speech.size
    parts.append((1e-4 * rng.standard_normal(int(gap * SR))).astype(np.float32))
    return np.concatenate(parts), spans


def test_timeline_finds_the_speech_and_skips_silence(rec: Recognizer) -> None:
    wave, spans = long_recording()
    segments = rec.timeline(wave, sr=SR)
    assert len(segments) == len(spans), segments
    for seg, (start, end) in zip(segments, spans, strict=True):
        assert abs(seg.start - start) < 0.3 and abs(seg.end - end) < 0.3, (seg, start, end)
        assert seg.emotion in EMOTIONS and seg.confidence == max(seg.probabilities.values())
    # a segment is classified like the same stretch predicted on its own
    first = segments[0]
    alone = rec.predict(wave[int(first.start * SR) : int(first.end * SR)], sr=SR)
    assert first.emotion == alone.emotion and first.confidence == pytest.approx(alone.confidence, abs=1e-5)


def test_timeline_of_noise_only_is_empty_and_long_speech_is_split(rec: Recognizer) -> None:
    noise = (1e-4 * np.random.default_rng(1).standard_normal(5 * SR)).astype(np.float32)
    assert rec.timeline(noise, sr=SR) == []
    assert not rec.is_speech(noise) and rec.is_speech(load_audio(EXAMPLES[0]))
    speech = np.concatenate([trim_silence(load_audio(p)) for p in EXAMPLES[:2]])
    segments = rec.timeline(speech, sr=SR, max_segment=1.0)
    assert len(segments) >= 3 and all(s.end - s.start <= 1.0 + 1e-3 for s in segments)
    assert all(b.start >= a.end for a, b in zip(segments, segments[1:], strict=False))
    with pytest.raises(ConfigError, match="min_speech <= max_segment"):
        rec.timeline(speech, sr=SR, min_speech=2.0, max_segment=1.0)


def test_plan_segments() -> None:
    sec = SR
    regions = [(0, sec), (int(1.2 * sec), 2 * sec), (5 * sec, 5 * sec + 1600), (8 * sec, 17 * sec)]
    spans = plan_segments(regions, min_speech=0.5, max_segment=4.0)
    assert spans[0] == (0, 2 * sec)  # joined across the 0.2 s gap
    assert (5 * sec, 5 * sec + 1600) not in spans  # 0.1 s: too short
    long = [s for s in spans if s[0] >= 8 * sec]
    assert len(long) == 3 and long[0][0] == 8 * sec and long[-1][1] == 17 * sec  # 9 s -> 3 x 3 s
    assert all(b - a <= 4 * sec for a, b in spans)


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/ copied as a.flac, b.flac, ... with one in a sub-folder, plus files that are not audio."""
    root = tmp_path_factory.mktemp("audio")
    (root / "sub").mkdir()
    for name, src in zip("abc", EXAMPLES[:3], strict=True):
        shutil.copy(src, root / ("sub" if name == "c" else ".") / f"{name}.flac")
    (root / "notes.txt").write_text("not audio")
    (root / ".hidden.wav").write_bytes(b"")
    return root


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["predict", *args], env={"COLUMNS": "200"})


def test_cli_table(bundle: Path, audio_dir: Path) -> None:
    result = invoke(str(audio_dir / "a.flac"), str(audio_dir / "b.flac"), "--model", str(bundle))
    assert result.exit_code == 0, result.output
    assert "a.flac" in result.stdout and "b.flac" in result.stdout and "top 3" in result.stdout
    expected = Recognizer.load(bundle).predict(audio_dir / "a.flac")
    row = next(line for line in result.stdout.splitlines() if "a.flac" in line)
    assert expected.emotion in row and f"{expected.confidence:.2f}" in row
    assert len([label for label in EMOTIONS if f"{label} 0." in row]) == 3
    narrow = invoke(str(audio_dir / "a.flac"), "--model", str(bundle), "--top-k", "2")
    assert narrow.exit_code == 0 and "top 2" in narrow.stdout


def test_cli_json_folder(bundle: Path, audio_dir: Path, rec: Recognizer) -> None:
    result = invoke(str(audio_dir), "--model", str(bundle), "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).relative_to(audio_dir).as_posix() for r in records] == [
        "a.flac",
        "b.flac",
        "sub/c.flac",
    ]
    for r in records:
        assert set(r) == {"path", "emotion", "confidence", "probabilities", "duration"}
        assert len(r["probabilities"]) == 8 and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        p = rec.predict(r["path"])
        assert r["emotion"] == p.emotion and r["confidence"] == pytest.approx(p.confidence, abs=1e-6)
    top = invoke(str(audio_dir / "a.flac"), "--model", str(bundle), "--json", "-k", "2")
    assert list(json.loads(top.stdout)["probabilities"]) == list(records[0]["probabilities"])[:2]


def test_cli_timeline(bundle: Path, tmp_path: Path) -> None:
    wave, spans = long_recording()
    path = tmp_path / "long.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    result = invoke(str(path), "--model", str(bundle), "--json", "--timeline")
    assert result.exit_code == 0, result.output
    segments = json.loads(result.stdout)["segments"]
    assert len(segments) == len(spans)
    assert all(set(s) == {"start", "end", "emotion", "confidence"} for s in segments)
    assert all(
        abs(s["start"] - a) < 0.3 and abs(s["end"] - b) < 0.3
        for s, (a, b) in zip(segments, spans, strict=True)
    )
    table = invoke(str(path), "--model", str(bundle), "--timeline")
    assert table.exit_code == 0 and f"timeline of {path}" in table.stdout and "start (s)" in table.stdout


def test_cli_bad_files_are_skipped_with_exit_1(bundle: Path, audio_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    missing = tmp_path / "missing.flac"
    result = invoke(str(bad), str(audio_dir / "a.flac"), str(missing), "--model", str(bundle), "--json")
    assert result.exit_code == 1
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == [str(audio_dir / "a.flac")]
    errors = [line for line in result.stderr.splitlines() if line.startswith("skipped:")]
    assert len(errors) == 2
    assert any(str(bad) in line and "not a readable audio file" in line for line in errors)
    assert any(str(missing) in line and "file not found" in line for line in errors)
    assert "2 input(s) skipped, 1 predicted" in result.stderr
    assert "Traceback" not in result.output


def test_cli_usage_errors_exit_2(
    bundle: Path, audio_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = str(audio_dir / "a.flac")
    cases = {
        "model bundle not found": ["--model", str(tmp_path / "nope"), clip],
        "emovox export": ["--model", str(bundle), "--backend", "onnx", clip],
        "unknown backend": ["--model", str(bundle), "--backend", "tflite", clip],
    }
    empty = tmp_path / "empty"
    empty.mkdir()
    cases["no audio files to predict on"] = ["--model", str(bundle), str(empty)]
    for expected, args in cases.items():
        result = invoke(*args)
        assert result.exit_code == 2, (expected, result.output)
        assert expected in result.stderr and "Traceback" not in result.output
    assert invoke("--model", str(bundle), "-k", "0", clip).exit_code == 2
    assert invoke("--model", str(bundle)).exit_code == 2  # no inputs at all

    monkeypatch.setattr(bundle_mod, "DEFAULT_BUNDLE", tmp_path / "no_default")
    result = invoke(clip)
    assert result.exit_code == 2 and "default model is not installed" in result.stderr
    assert "emovox train" in result.stderr


def test_cli_broken_bundle_exit_2(bundle: Path, audio_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with open(broken / "model.safetensors", "r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x00\x01\x02")
    result = invoke("--model", str(broken), str(audio_dir / "a.flac"))
    assert result.exit_code == 2 and "checksum mismatch" in result.stderr
    with pytest.raises(BundleError, match="checksum mismatch"):
        Recognizer.load(broken)
