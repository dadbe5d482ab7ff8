"""Recognizer: inputs of every kind, agreement with evaluation, VAD timeline; the `emovox predict` CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- garbage in, no garbage out


def test_float_audio_far_beyond_full_scale_is_clipped_not_nan(rec: Recognizer, tmp_path: Path) -> None:
    """A float WAV of speech scaled by 1e20 overflowed the features: confidence NaN (JSON null)."""
    wave = load_audio(EXAMPLES[2])
    loud = tmp_path / "loud.wav"
    sf.write(loud, wave * 1e20, SR, subtype="FLOAT")
    clipped = _probs(rec.predict(np.clip(wave * 1e20, -1, 1), sr=SR))
    for p in (rec.predict(loud), rec.predict(wave * 1e20, sr=SR), rec.predict(loud.read_bytes())):
        assert np.isfinite(p.confidence) and np.isfinite(_probs(p)).all()
        np.testing.assert_allclose(_probs(p), clipped, atol=1e-6)
    segments = rec.timeline(loud)
    assert segments and all(np.isfinite(s.confidence) for s in segments)


def test_non_finite_model_output_is_an_error_naming_the_input(bundle: Path) -> None:
    broken = Recognizer.load(bundle)
    with torch.no_grad():
        broken.net.mean[0] = float("nan")
    with pytest.raises(
        AudioError, match=rf"{EXAMPLES[0].name}: the model's output for this audio is not a number"
    ):
        broken.predict(EXAMPLES[0])
    with pytest.raises(AudioError, match=r"<wave 1>: the model's output"):
        broken.predict_proba([load_audio(EXAMPLES[0])[:4000], load_audio(EXAMPLES[1])])
    results = list(broken.predict_files([EXAMPLES[0], EXAMPLES[1]]))
    assert [r.prediction for r in results] == [None, None]
    assert all("not a number" in str(r.error) for r in results)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_segment": float("nan")}, "max_segment"),
        ({"max_segment": float("inf")}, "max_segment"),
        ({"max_segment": 1e-6, "min_speech": 1e-7}, "max_segment"),
        ({"min_speech": -1.0}, "min_speech"),
        ({"min_speech": float("nan")}, "min_speech"),
        ({"max_segment": "4"}, "max_segment"),
    ],
)
def test_timeline_arguments_are_checked(rec: Recognizer, kwargs: dict, message: str) -> None:
    """NaN / inf / 1e-6 ended in ValueError, OverflowError or ZeroDivisionError deep inside."""
    with pytest.raises(ConfigError, match=rf"^{message}: (must be|expected) a number in"):
        rec.timeline(load_audio(EXAMPLES[0]), sr=SR, **kwargs)


def test_batch_size_threads_and_sample_rate_are_checked(bundle: Path, rec: Recognizer) -> None:
    for kwargs, message in (
        ({"batch_size": 0}, "batch_size: must be an integer in"),
        ({"batch_size": 2.5}, "batch_size: expected an integer"),
        ({"threads": 0}, "threads: must be an integer in"),
    ):
        with pytest.raises(ConfigError, match=message):
            Recognizer.load(bundle, **kwargs)
    with pytest.raises(ConfigError, match="batch_size"):
        Recognizer(rec.meta, net=rec.net, batch_size=0)
    for sr in (0, 1, 10**9, 16000.5, True):
        with pytest.raises(AudioError, match=r"<array>: invalid sample rate"):
            rec.predict(np.ones(1000, np.float32), sr=sr)  # sr=1 would have resampled 16000-fold


@pytest.mark.parametrize("device", ["bogus", "cuda", "cuda:7", "mps", "cpu:0", ""])
def test_devices_that_do_not_exist_are_a_clear_error(bundle: Path, device: str) -> None:
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that many CUDA devices")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ConfigError, match=r"device"):
        Recognizer.load(bundle, device=device)
    result = invoke("--model", str(bundle), "--device", device, str(EXAMPLES[0]))
    assert (
        result.exit_code == 2
        and result.stderr.startswith("error: device")
        and "Traceback" not in result.output
    )
    assert len(result.stderr.strip().splitlines()) == 1


def test_small_models_run_on_one_thread_and_restore_torch_setting(bundle: Path) -> None:
    from emovox.predict import default_threads

    rec = Recognizer.load(bundle)
    assert rec.threads == 1 and default_threads(10**9) == max(1, min(4, __import__("os").cpu_count() or 1))
    seen = []
    forward = rec.net.forward
    rec.net.forward = lambda *a: (seen.append(torch.get_num_threads()), forward(*a))[1]  # type: ignore[method-assign]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rec.predict(EXAMPLES[0])
        assert seen == [1] and torch.get_num_threads() == 2
        assert Recognizer.load(bundle, threads=2).threads == 2
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- long audio


def _long_recording(seconds: float, seed: int = 0) -> np.ndarray:
    """Example utterances, trimmed, separated by 1.5-3 s of faint noise, up to ``seconds``."""
    rng = np.random.default_rng(seed)
    speech = [trim_silence(load_audio(p)) for p in EXAMPLES]
    parts, total, i = [], 0, 0
    while total < seconds * SR:
        gap = (1e-4 * rng.standard_normal(int(rng.uniform(1.5, 3.0) * SR))).astype(np.float32)
        parts += [gap, speech[i % len(speech)]]
        total += gap.size + speech[i % len(speech)].size
        i += 1
    return np.concatenate(parts)[: int(seconds * SR)]


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long-audio constants scaled down 10x, so a 2-minute file exercises what an hour would."""
    from emovox import predict as predict_mod

    for name, value in (
        ("LONG_AUDIO_S", 6.0),
        ("WINDOW_S", 3.0),
        ("BATCH_AUDIO_S", 12.0),
        ("BLOCK_S", 1.0),
        ("TIMELINE_CHUNK_S", 6.0),
        ("TIMELINE_TAIL_S", 2.0),
    ):
        monkeypatch.setattr(predict_mod, name, value)


def test_long_audio_is_the_duration_weighted_mean_of_its_windows(
    rec: Recognizer, tmp_path: Path, small_windows: None
) -> None:
    wave = _long_recording(20.0)
    path = tmp_path / "long.flac"
    sf.write(path, wave, SR, subtype="PCM_24")
    decoded = load_audio(path)
    windows = [decoded[i : i + 3 * SR] for i in range(0, decoded.size, 3 * SR)]
    clips = []
    for w in windows:
        try:
            clips.append(rec.preprocess(w))
        except AudioError:
            continue
    sizes = np.array([c.size for c in clips], dtype=np.float64)
    expected = (sizes @ rec.predict_proba(clips)) / sizes.sum()
    from_file, from_array = rec.predict(path), rec.predict(decoded, sr=SR)
    np.testing.assert_allclose(_probs(from_file), expected, atol=1e-5)
    np.testing.assert_allclose(_probs(from_array), expected, atol=1e-5)
    assert from_file.duration == pytest.approx(20.0, abs=1e-3) and from_file.path == str(path)
    click = np.zeros(20 * SR, np.float32)
    click[5 * SR] = 0.5  # silence and one click, too short for the model's 0.25 s minimum
    with pytest.raises(AudioError, match=r"no part of this 20 s recording is usable"):
        rec.predict(click, sr=SR)


def test_long_timeline_is_cut_in_pauses_like_the_whole(rec: Recognizer, small_windows: None) -> None:
    from emovox import predict as predict_mod

    wave = _long_recording(40.0, seed=3)
    chunked = rec.timeline(wave, sr=SR)  # VAD on 6 + 2 s buffers, cut in pauses
    predict_mod.TIMELINE_CHUNK_S = 1000.0  # the whole recording at once
    whole = rec.timeline(wave, sr=SR)
    assert len(chunked) == len(whole) >= 8
    for a, b in zip(chunked, whole, strict=True):
        assert abs(a.start - b.start) < 0.1 and abs(a.end - b.end) < 0.1, (a, b)
        assert a.emotion == b.emotion or abs(a.confidence - b.confidence) < 0.05


def test_memory_stays_flat_however_long_the_file(
    rec: Recognizer, tmp_path: Path, small_windows: None
) -> None:
    """Whole-file decoding held ~2.2 GB per hour of audio; streamed windows hold a few seconds' worth.

    tracemalloc sees NumPy's allocations (decoded audio, windows, batches); with the constants
    scaled down 10x, a 4-minute file must peak no higher than a 2-minute one, and far below the
    15 MB its samples alone take as float32 (what decoding it whole allocated, before features)."""
    import tracemalloc

    peaks = {}
    list(rec.predict_files([EXAMPLES[0]], timeline=True))  # load the VAD first: not the file's cost
    for minutes in (2, 4):
        path = tmp_path / f"long{minutes}.flac"
        sf.write(path, _long_recording(60.0 * minutes), SR, subtype="PCM_16")
        tracemalloc.start()
        results = list(rec.predict_files([path], timeline=True))
        peaks[minutes] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert results[0].error is None and results[0].segments, results[0]
        assert results[0].prediction.duration == pytest.approx(60.0 * minutes, abs=1e-3)
    assert peaks[4] < 6e6 and peaks[4] < 1.3 * peaks[2] + 1e6, peaks


def test_batches_are_bounded_by_audio_duration_not_file_count(rec: Recognizer, small_windows: None) -> None:
    sizes = []
    run = rec._run
    rec._run = lambda batch, lengths: (sizes.append(batch.size), run(batch, lengths))[1]  # type: ignore[method-assign]
    try:
        waves = [load_audio(p) for p in EXAMPLES] * 3  # 24 clips of ~3.6 s, 86 s in all
        rec.predict_proba(waves)
    finally:
        del rec._run
    assert len(sizes) > 6 and max(sizes) <= 12 * SR  # not 2 batches of 16 clips: 7 of <= 12 s


# --------------------------------------------------------------------------- CLI: errors and polish


def test_cli_nothing_predicted_exits_2_with_the_summary(bundle: Path, tmp_path: Path) -> None:
    """`emovox predict nonexist.wav` exited 1 with no summary while the help promised 2."""
    result = invoke("--model", str(bundle), str(tmp_path / "nonexist.wav"))
    assert result.exit_code == 2, result.output
    assert f"skipped: {tmp_path / 'nonexist.wav'}: file not found" in result.stderr
    assert "error: nothing to predict: 1 input(s) skipped, 0 predicted" in result.stderr
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    result = invoke("--model", str(bundle), str(text))
    assert (
        result.exit_code == 2 and "error: nothing predicted: 1 input(s) skipped, 0 predicted" in result.stderr
    )


def test_cli_text_file_named_mp3_is_not_audio_and_decoder_notes_stay_quiet(
    bundle: Path, tmp_path: Path
) -> None:
    """libsndfile said 'does not exist or is not a regular file (possibly a pipe?)' and mpg123
    printed 'Note: Illegal Audio-MPEG-Header' on the terminal (fd 2: only a real process shows it)."""
    fake = tmp_path / "fake.mp3"
    fake.write_text("this is a text file, not an mp3\n" * 20)
    cmd = [sys.executable, "-m", "emovox.cli", "predict", "--model", str(bundle), str(fake), str(EXAMPLES[0])]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**__import__("os").environ, "COLUMNS": "200"}
    )
    assert result.returncode == 1, result.stderr
    assert f"skipped: {fake}: not a readable audio file (not a format emovox can decode)" in result.stderr
    for noise in ("possibly a pipe", "Illegal Audio-MPEG-Header", "Note:", "Traceback"):
        assert noise not in result.stderr, result.stderr
    assert "1 input(s) skipped, 1 predicted" in result.stderr and EXAMPLES[0].name in result.stdout


def test_cli_unreadable_folders_are_reported(
    bundle: Path, audio_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PermissionError traceback for a file in an unreadable folder; an unreadable sub-folder was
    skipped without a word. (Simulated: root reads everything.)"""
    import os

    real_scandir, real_stat = os.scandir, Path.stat
    locked = tmp_path / "locked"

    def scandir(path: Any = ".") -> Any:
        if Path(path) == audio_dir / "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    def stat(self: Path, **kwargs: Any) -> Any:
        if locked in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(Path, "stat", stat)
    result = invoke("--model", str(bundle), str(audio_dir), str(locked / "x.wav"), "--json")
    assert result.exit_code == 1, result.output
    assert (
        f"skipped: {audio_dir / 'sub'}: folder cannot be read (Permission denied); not searched"
        in result.stderr
    )
    assert f"skipped: {locked / 'x.wav'}: cannot be read (Permission denied)" in result.stderr
    assert [Path(json.loads(line)["path"]).name for line in result.stdout.splitlines()] == [
        "a.flac",
        "b.flac",
    ]
    assert "2 input(s) skipped, 2 predicted" in result.stderr and "Traceback" not in result.output


def test_unreadable_file_is_an_audio_error(rec: Recognizer, monkeypatch: pytest.MonkeyPatch) -> None:
    from emovox import predict as predict_mod

    def denied(path: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(predict_mod, "load_audio", denied)
    with pytest.raises(AudioError, match=r"x\.wav: cannot be read \(Permission denied\)"):
        rec.decode("x.wav")


def test_cli_top_k_is_clamped_to_the_labels_and_json_is_strict(bundle: Path, audio_dir: Path) -> None:
    """`--top-k 20` titled a column "top 20" for 8 emotions; --json must never print NaN."""
    table = invoke(str(audio_dir / "a.flac"), "--model", str(bundle), "--top-k", "20")
    assert table.exit_code == 0 and "top 8" in table.stdout and "top 20" not in table.stdout
    lines = invoke(str(audio_dir), "--model", str(bundle), "--json", "-k", "20").stdout.splitlines()

    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    for line in lines:
        assert len(json.loads(line, parse_constant=refuse)["probabilities"]) == 8


def test_cli_file_names_are_not_broken_at_80_columns(bundle: Path) -> None:
    """At 80 columns names wrapped mid-word (ravdess_angry_a / ctor05.flac)."""
    result = CliRunner().invoke(
        app, ["predict", str(REPO / "examples"), "--model", str(bundle)], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    for path in EXAMPLES:
        assert path.name in result.stdout, result.stdout  # whole, on one line
    assert f"files in {REPO / 'examples'}" in result.stdout


def test_cli_normalize_streams_per_folder_with_timelines_and_skips_bad_files(
    bundle: Path, tmp_path: Path
) -> None:
    """--normalize with the shipped (speaker-normalised) default: per folder, with --timeline, and a
    file that cannot be read is skipped (exit 1) instead of ending the command."""
    folder = tmp_path / "speaker"
    folder.mkdir()
    for path in EXAMPLES[:3]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.wav").write_bytes(b"RIFF....not audio")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(folder), "--normalize", "folder", "--timeline", "--json"])
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and all(isinstance(r["segments"], list) for r in rows)
    assert "broken.wav" in result.stderr
    expected = Recognizer.load("default").predict(
        [str(folder / p.name) for p in EXAMPLES[:3]], normalize="folder"
    )
    assert [r["emotion"] for r in rows] == [p.emotion for p in expected]
    plain = runner.invoke(app, ["predict", "--model", str(bundle), str(folder), "--normalize", "speaker"])
    assert plain.exit_code == 2 and "speaker-normalised" in plain.output


def test_normalize_folder_groups_each_folder_wherever_its_files_come(tmp_path: Path) -> None:
    """Interleaved inputs (a, b, a, b; or a folder with a sub-folder in between) still make one
    group per folder, with results in input order, as Recognizer.predict does."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    paths = []
    for i, src in enumerate(EXAMPLES[:4]):
        dest = (a if i % 2 == 0 else b) / src.name
        shutil.copy(src, dest)
        paths.append(str(dest))
    rec = Recognizer.load("default")
    expected = rec.predict(paths, normalize="folder")
    streamed = list(rec.predict_files(paths, normalize="folder"))
    assert [r.path for r in streamed] == paths
    assert [r.prediction.emotion for r in streamed] == [p.emotion for p in expected]
    np.testing.assert_allclose(
        [r.prediction.confidence for r in streamed], [p.confidence for p in expected], atol=1e-5
    )
