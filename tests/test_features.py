"""Feature front end: config, librosa parity (synthetic + real speech), batching, ONNX, pooling, eGeMAPS."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.stats
import torch

from conftest import synth_speech
from emovox import features
from emovox.audio import load_audio
from emovox.errors import AudioError, ConfigError
from emovox.features import (
    FEATURE_SETS,
    FeatureConfig,
    FeatureExtractor,
    egemaps,
    egemaps_many,
    extract_batched,
    pad_batch,
    pool_stats,
)

SR = 16_000
ALL = FeatureConfig(sets=FEATURE_SETS)
STFT = dict(n_fft=512, hop_length=160, win_length=400)


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(ALL).eval()


def _blocks(cfg: FeatureConfig, feats: np.ndarray) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name in cfg.sets:
        n = cfg.channels_of(name)
        out[name] = feats[start : start + n]
        start += n
    return out


def _librosa_reference(y: np.ndarray) -> dict[str, np.ndarray]:
    """The same features computed clip by clip with librosa, at the FeatureConfig defaults."""
    mfcc = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=40, n_mels=64, fmax=8000, **STFT)
    return {
        "logmel": librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=SR, n_mels=64, **STFT)),
        "mfcc": np.concatenate([mfcc, librosa.feature.delta(mfcc), librosa.feature.delta(mfcc, order=2)]),
        "chroma": librosa.feature.chroma_stft(y=y, sr=SR, tuning=0.0, **STFT),
        "contrast": librosa.feature.spectral_contrast(y=y, sr=SR, **STFT),
        "rms": librosa.feature.rms(y=y, frame_length=512, hop_length=160),
        "zcr": librosa.feature.zero_crossing_rate(y, frame_length=512, hop_length=160),
        "f0": librosa.yin(y, fmin=65.0, fmax=500.0, sr=SR, frame_length=512, hop_length=160)[None],
    }


def _min_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest per-row Pearson correlation over time (rows constant in both count as 1)."""
    corrs = []
    for x, y in zip(a, b, strict=True):
        if np.ptp(x) == 0 and np.ptp(y) == 0:
            corrs.append(1.0)
        else:
            corrs.append(np.corrcoef(x, y)[0, 1])
    return float(np.min(corrs))


def _check_parity(extractor: FeatureExtractor, clips: list[np.ndarray]) -> None:
    wave, lengths = pad_batch(clips)
    with torch.no_grad():
        feats, frames = extractor(wave, lengths)
    for i, y in enumerate(clips):
        n = int(frames[i])
        assert n == 1 + y.size // 160
        ours = _blocks(ALL, feats[i, :, :n].numpy())
        ref = _librosa_reference(y)
        for name in ("logmel", "mfcc", "chroma", "contrast", "rms", "zcr"):
            assert ours[name].shape == ref[name].shape, name
            assert _min_corr(ours[name], ref[name]) > 0.999, name
        assert np.abs(ours["logmel"] - ref["logmel"]).max() < 0.01  # dB
        assert np.abs(ours["mfcc"] - ref["mfcc"]).max() < 0.01
        assert np.abs(ours["chroma"] - ref["chroma"]).max() < 1e-4
        # dB of a valley of 1-2 near-silent bins amplifies float32 rounding in a rare frame
        contrast_err = np.abs(ours["contrast"] - ref["contrast"])
        assert np.quantile(contrast_err, 0.999) < 0.1 and contrast_err.max() < 1.0
        assert np.abs(ours["rms"] - ref["rms"]).max() < 1e-5
        assert np.abs(ours["zcr"] - ref["zcr"]).max() < 1e-6
        # f0: the same YIN as librosa.yin, so the tracks agree to a small fraction of a semitone
        f0 = ALL.f0_min * 2 ** ours["f0"][0]
        semitones = 12 * np.abs(np.log2(f0 / ref["f0"][0]))
        assert np.mean(semitones < 0.1) > 0.99


def test_parity_with_librosa_on_synthetic_speech(extractor: FeatureExtractor) -> None:
    clips = [synth_speech(1.5, seed=0), synth_speech(0.9, f0=210.0, seed=1)]
    _check_parity(extractor, clips)


@pytest.mark.corpus
def test_parity_with_librosa_on_ravdess(extractor: FeatureExtractor, ravdess_dir: Path) -> None:
    paths = sorted(ravdess_dir.glob("Actor_0[12]/*.flac"))[::20][:4]
    assert paths, f"no RAVDESS clips under {ravdess_dir}"
    _check_parity(extractor, [load_audio(p) for p in paths])


@pytest.mark.corpus
def test_f0_against_pyin_on_ravdess(extractor: FeatureExtractor, ravdess_dir: Path) -> None:
    y = load_audio(sorted(ravdess_dir.glob("Actor_03/*.flac"))[10])[8000:40000]  # pyin is slow: 2 s of speech
    with torch.no_grad():
        feats, frames = extractor(*pad_batch([y]))
    ours = _blocks(ALL, feats[0, :, : int(frames[0])].numpy())["f0"]
    f0_ref, voiced_ref, _ = librosa.pyin(y, fmin=65.0, fmax=500.0, sr=SR, frame_length=512, hop_length=160)
    voiced = ours[1] > 0.5
    assert np.mean(voiced == voiced_ref) > 0.8
    both = voiced & voiced_ref
    assert both.sum() > 50
    semitones = 12 * np.abs(np.log2(ALL.f0_min * 2 ** ours[0][both] / f0_ref[both]))
    assert np.median(semitones) < 0.3
    assert np.mean(semitones < 1.0) > 0.85  # octave errors of plain YIN, which pyin's HMM smooths


def test_f0_tracks_a_known_pitch(extractor: FeatureExtractor) -> None:
    t = np.arange(SR) / SR
    tone = sum(np.sin(2 * np.pi * 180.0 * k * t) / k for k in range(1, 6)).astype(np.float32) * 0.2
    with torch.no_grad():
        feats, frames = extractor(*pad_batch([tone]))
    f0 = _blocks(ALL, feats[0].numpy())["f0"]
    inner = slice(5, int(frames[0]) - 5)
    np.testing.assert_allclose(ALL.f0_min * 2 ** f0[0, inner], 180.0, rtol=0.01)
    assert f0[1, inner].min() > 0.9  # strongly periodic


def test_shapes_channels_and_masking(extractor: FeatureExtractor) -> None:
    clips = [synth_speech(1.0), synth_speech(0.3, seed=3)]
    wave, lengths = pad_batch(clips)
    feats, frames = extractor(wave, lengths)
    assert extractor.num_channels == ALL.num_channels == feats.shape[1] == len(ALL.channel_names())
    assert feats.shape[2] == 1 + wave.shape[1] // 160
    assert frames.tolist() == [1 + c.size // 160 for c in clips]
    assert torch.all(feats[1, :, frames[1] :] == 0)
    assert torch.isfinite(feats).all()


def test_batching_invariance_and_determinism(extractor: FeatureExtractor) -> None:
    short, long = synth_speech(0.7, seed=5), synth_speech(2.0, f0=180.0, seed=6)
    with torch.no_grad():
        alone, n_alone = extractor(*pad_batch([short]))
        batch, n_batch = extractor(*pad_batch([long, short]))
        again, _ = extractor(*pad_batch([long, short]))
    n = int(n_alone[0])
    assert int(n_batch[1]) == n
    torch.testing.assert_close(batch[1, :, :n], alone[0, :, :n], atol=1e-4, rtol=1e-3)
    assert torch.equal(batch, again)


def test_buffers_are_not_in_the_state_dict(extractor: FeatureExtractor) -> None:
    assert extractor.state_dict() == {}
    assert len(list(extractor.buffers())) > 0


def test_config_round_trip_and_validation() -> None:
    cfg = FeatureConfig(sets=("mfcc", "f0"), n_mfcc=20, deltas=False, stats=("mean", "kurtosis"))
    again = FeatureConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.sets == ("mfcc", "f0")
    assert FeatureExtractor(again).num_channels == 22
    bad = {
        "sets": ("logmel", "spectrogram"),
        "n_fft": 256,
        "fmax": 9000.0,
        "n_mfcc": 80,
        "f0_max": 40.0,
        "n_contrast_bands": 7,
        "stats": ("median",),
        "hop_length": 0,
    }
    for field, value in bad.items():
        with pytest.raises(ConfigError, match=f"features.{field}"):
            FeatureConfig(**{"sets": FEATURE_SETS, field: value})
    # limits of sets not in use are not enforced: an 8 kHz log-mel front end is fine
    assert FeatureConfig(sample_rate=8000, fmax=None, n_mels=32).mel_fmax == 4000.0
    with pytest.raises(ConfigError, match="features.n_ftt"):
        FeatureConfig.from_dict({"n_ftt": 512})


def _export_and_compare(cfg: FeatureConfig, tmp_path: Path, dynamo: bool) -> None:
    import onnxruntime as ort

    model = FeatureExtractor(cfg).eval()
    path = tmp_path / "features.onnx"
    example = pad_batch([synth_speech(1.0), synth_speech(0.6, seed=2)])
    if dynamo:
        dim_b, dim_t = torch.export.Dim("batch"), torch.export.Dim("time")
        torch.onnx.export(
            model, example, path, input_names=["wave", "lengths"], output_names=["feats", "frames"],
            opset_version=18, dynamic_shapes={"wave": {0: dim_b, 1: dim_t}, "lengths": {0: dim_b}},
        )  # fmt: skip
    else:
        torch.onnx.export(
            model, example, path, input_names=["wave", "lengths"], output_names=["feats", "frames"],
            opset_version=17, dynamo=False,
            dynamic_axes={"wave": {0: "b", 1: "t"}, "lengths": {0: "b"}, "feats": {0: "b", 2: "f"}},
        )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # other batch size and length than at export time
    shapes = [(2.2, 120.0), (0.4, 250.0), (1.3, 160.0)]
    clips = [synth_speech(s, f0=f, seed=i) for i, (s, f) in enumerate(shapes)]
    wave, lengths = pad_batch(clips)
    with torch.no_grad():
        ref, ref_frames = model(wave, lengths)
    got, got_frames = session.run(None, {"wave": wave.numpy(), "lengths": lengths.numpy()})
    np.testing.assert_array_equal(got_frames, ref_frames.numpy())
    for name, ours in _blocks(cfg, got.transpose(1, 0, 2)).items():
        want = _blocks(cfg, ref.numpy().transpose(1, 0, 2))[name]
        # dB-valued sets: 1e-4 relative; contrast's valleys (few tiny bins) carry float32 rounding
        atol = 0.05 if name == "contrast" else 1e-4
        np.testing.assert_allclose(ours, want, rtol=1e-4, atol=atol, err_msg=name)


def test_onnx_export_all_sets_torchscript_exporter(tmp_path: Path) -> None:
    _export_and_compare(ALL, tmp_path, dynamo=False)


@pytest.mark.slow
def test_onnx_export_logmel_mfcc_dynamo_exporter(tmp_path: Path) -> None:
    _export_and_compare(FeatureConfig(sets=("logmel", "mfcc")), tmp_path, dynamo=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(extractor: FeatureExtractor) -> None:
    batch = pad_batch([synth_speech(1.2), synth_speech(0.5, seed=4)])
    with torch.no_grad():
        cpu, _ = extractor(*batch)
        gpu, _ = FeatureExtractor(ALL).cuda()(batch[0].cuda(), batch[1].cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-2, rtol=1e-3)


def test_extract_batched_keeps_order(extractor: FeatureExtractor) -> None:
    clips = [synth_speech(s, seed=i) for i, s in enumerate([1.0, 0.3, 1.6, 0.5, 0.8])]
    out = extract_batched(extractor, clips, batch_size=2, progress=False)
    for clip, arr in zip(clips, out, strict=True):
        with torch.no_grad():
            alone, n = extractor(*pad_batch([clip]))
        assert arr.shape == (ALL.num_channels, 1 + clip.size // 160)
        np.testing.assert_allclose(arr, alone[0, :, : int(n[0])].numpy(), atol=1e-4, rtol=1e-3)


def test_pool_stats_match_numpy() -> None:
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.standard_normal((2, 3, 50)).astype(np.float32) ** 3)
    frames = torch.tensor([50, 17])
    stats = ("mean", "std", "min", "max", "skew", "kurtosis")
    pooled = pool_stats(feats, frames, stats).numpy()
    assert pooled.shape == (2, 3 * len(stats))
    for b, n in enumerate(frames.tolist()):
        x = feats[b, :, :n].numpy().astype(np.float64)
        moments = [scipy.stats.skew(x, axis=1), scipy.stats.kurtosis(x, axis=1)]
        want = np.concatenate([x.mean(1), x.std(1), x.min(1), x.max(1), *moments])
        np.testing.assert_allclose(pooled[b], want, rtol=1e-3, atol=1e-3)
    with pytest.raises(ConfigError, match="median"):
        pool_stats(feats, frames, ("median",))


def test_egemaps_gives_88_functionals() -> None:
    pytest.importorskip("opensmile")
    out = egemaps_many([synth_speech(1.0), synth_speech(1.2, f0=220.0, seed=1)], progress=False)
    assert out.shape == (2, features.EGEMAPS_DIM) and np.isfinite(out).all()
    assert len(features.egemaps_names()) == 88
    # F0 semitone mean (from 27.5 Hz) follows the synthetic pitch: 140 Hz < 220 Hz
    assert out[0, 0] < out[1, 0]
    with pytest.raises(AudioError):
        egemaps(np.zeros(0, dtype=np.float32))


def test_egemaps_without_opensmile_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    features._smile.cache_clear()
    monkeypatch.setitem(sys.modules, "opensmile", None)
    try:
        with pytest.raises(ConfigError, match=r"emovox\[egemaps\]"):
            egemaps(synth_speech(0.5))
    finally:
        features._smile.cache_clear()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_mels", 10_000_000),
        ("n_fft", 100_000_000),
        ("win_length", 10**9),
        ("n_mfcc", 10**6),
    ],
)
def test_oversized_parameters_are_refused_before_building(field: str, value: float) -> None:
    """The same ranges as configs (emovox.limits), checked by FeatureConfig itself, so a bundle's
    config.json cannot ask for gigabytes of filterbanks either (n_mels=1e7 used to take 19.7 GB)."""
    with pytest.raises(ConfigError, match=f"features.{field}: "):
        FeatureConfig.from_dict({"sets": ["logmel", "mfcc"], field: value})
    assert FeatureConfig(n_fft=4096, win_length=4096).front_end_values() <= 32_000_000
