"""The audio loader: any format or layout -> mono float32 16 kHz; bad input -> AudioError naming it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import synth_speech
from emovox.audio import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    AudioTooLarge,
    AudioTooLong,
    is_audio_file,
    load_audio,
    load_many,
    prepare_waveform,
    trim_silence,
)
from emovox.errors import AudioError

FORMATS = [
    ("wav", "WAV", "PCM_16", 44_100),
    ("flac", "FLAC", "PCM_24", 22_050),
    ("ogg", "OGG", "VORBIS", 32_000),
    ("opus", "OGG", "OPUS", 48_000),
    ("mp3", "MP3", "MPEG_LAYER_III", 44_100),
]


def _write(path: Path, fmt: str, subtype: str, sr: int, channels: int, seconds: float = 1.0) -> np.ndarray:
    wave = synth_speech(seconds, sr=sr)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}")
    sf.write(path, data, sr, format=fmt, subtype=subtype)
    return wave


@pytest.mark.parametrize("ext,fmt,subtype,sr", FORMATS, ids=[f[0] for f in FORMATS])
@pytest.mark.parametrize("channels", [1, 2])
def test_every_format_decodes_to_mono_16k(tmp_path, ext, fmt, subtype, sr, channels):
    path = tmp_path / f"clip.{ext}"
    original = _write(path, fmt, subtype, sr, channels)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    # lossy codecs add encoder delay/padding; the duration must still be about one second
    assert abs(wave.size - SAMPLE_RATE) < 0.06 * SAMPLE_RATE
    assert np.isfinite(wave).all()
    ref_rms = np.sqrt(np.mean(original**2))
    assert np.sqrt(np.mean(wave**2)) == pytest.approx(ref_rms, rel=0.25)


def test_lossless_resampling_preserves_the_signal(tmp_path):
    sr = 44_100
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(tmp_path / "tone.flac", tone, sr, subtype="PCM_24")
    wave = load_audio(tmp_path / "tone.flac")
    assert wave.size == SAMPLE_RATE
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    # away from the edges the resampled tone matches the analytic one closely
    assert np.max(np.abs(wave[200:-200] - expected[200:-200])) < 1e-3


def test_other_target_rate_and_sources(tmp_path, speech_wav):
    assert load_audio(speech_wav, sr=8_000).size == pytest.approx(1.5 * 8_000, abs=2)
    raw = speech_wav.read_bytes()
    from_bytes = load_audio(raw)
    with speech_wav.open("rb") as fh:
        from_file = load_audio(fh)
    np.testing.assert_allclose(from_bytes, load_audio(speech_wav))
    np.testing.assert_allclose(from_file, from_bytes)
    with pytest.raises(AudioError, match="upload.wav"):
        load_audio(io.BytesIO(b"not audio at all" * 10), name="upload.wav")


def test_stereo_is_averaged(tmp_path):
    left = synth_speech(0.5)
    sf.write(tmp_path / "st.wav", np.stack([left, np.zeros_like(left)], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "st.wav"), left / 2, atol=1e-6)


@pytest.mark.parametrize(
    "dtype,scale", [(np.int16, 32768), (np.int32, 2**31), (np.uint8, 128), (np.float64, 1.0)]
)
def test_integer_pcm_is_scaled_to_unit_range(dtype, scale):
    wave = synth_speech(0.5)
    if dtype == np.uint8:
        pcm = np.round(wave * 127 + 128).astype(dtype)
        expected = (pcm.astype(np.float64) - 128) / 128
    elif np.issubdtype(dtype, np.integer):
        pcm = np.round(wave * (scale - 1)).astype(dtype)
        expected = pcm.astype(np.float64) / scale
    else:
        pcm, expected = wave.astype(dtype), wave
    out = prepare_waveform(pcm, SAMPLE_RATE)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.abs(out).max() <= 1.0


def test_channels_first_arrays_and_resampling():
    wave = synth_speech(1.0, sr=22_050)
    out = prepare_waveform(np.stack([wave, wave]), 22_050)  # channels x samples
    assert out.shape == (SAMPLE_RATE,)
    out2 = prepare_waveform(np.stack([wave, wave], axis=1), 22_050)  # samples x channels
    np.testing.assert_allclose(out, out2)


def test_trim_removes_leading_and_trailing_silence(tmp_path):
    speech = synth_speech(1.0)
    padded = np.concatenate([np.zeros(SAMPLE_RATE), speech, np.zeros(2 * SAMPLE_RATE)]).astype(np.float32)
    sf.write(tmp_path / "padded.wav", padded, SAMPLE_RATE)
    untrimmed = load_audio(tmp_path / "padded.wav")
    trimmed = load_audio(tmp_path / "padded.wav", trim=True)
    assert untrimmed.size == 4 * SAMPLE_RATE
    assert 0.9 * SAMPLE_RATE < trimmed.size < 1.2 * SAMPLE_RATE
    assert trim_silence(speech).size >= 0.9 * speech.size  # speech alone is (almost) untouched
    quiet = np.full(1000, 1e-3, np.float32)
    np.testing.assert_array_equal(trim_silence(quiet), quiet)


def test_duration_limits(tmp_path):
    sf.write(tmp_path / "one.wav", synth_speech(1.0), SAMPLE_RATE)
    assert load_audio(tmp_path / "one.wav", min_duration=0.5, max_duration=2.0).size == SAMPLE_RATE
    with pytest.raises(AudioError, match=r"one\.wav.*shorter than the minimum of 1.5 s"):
        load_audio(tmp_path / "one.wav", min_duration=1.5)
    with pytest.raises(AudioError, match=r"one\.wav.*over the limit of 0.5 s"):
        load_audio(tmp_path / "one.wav", max_duration=0.5)
    sf.write(tmp_path / "long.wav", synth_speech(5.0), SAMPLE_RATE)
    with pytest.raises(AudioError, match=r"long\.wav.*over the limit of 2 s"):
        load_audio(tmp_path / "long.wav", max_duration=2.0)


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected message fragment) for every kind of unusable file."""
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp / "missing.wav", "file not found")
    (tmp / "folder.wav").mkdir()
    cases["folder"] = (tmp / "folder.wav", "is a folder")
    (tmp / "empty.wav").write_bytes(b"")
    cases["empty"] = (tmp / "empty.wav", "0 bytes")
    (tmp / "text.wav").write_text("this is a text file, not a recording\n" * 20)
    cases["text"] = (tmp / "text.wav", "not a readable audio file")
    (tmp / "text.mp3").write_text("this is a text file, not a recording\n" * 20)
    cases["text-mp3"] = (tmp / "text.mp3", "not a readable audio file")
    sf.write(tmp / "whole.wav", synth_speech(1.0), SAMPLE_RATE, subtype="PCM_16")
    data = (tmp / "whole.wav").read_bytes()
    (tmp / "cut.wav").write_bytes(data[: len(data) // 2])
    cases["truncated-wav"] = (tmp / "cut.wav", "truncated")
    (tmp / "header.wav").write_bytes(data[:30])
    cases["truncated-header"] = (tmp / "header.wav", "not a readable audio file")
    sf.write(tmp / "whole.flac", synth_speech(1.0), SAMPLE_RATE)
    flac = (tmp / "whole.flac").read_bytes()
    (tmp / "cut.flac").write_bytes(flac[: len(flac) // 2])
    cases["truncated-flac"] = (tmp / "cut.flac", "not a readable audio file")
    sf.write(tmp / "nosamples.wav", np.zeros((0, 1), np.float32), SAMPLE_RATE)
    cases["zero-samples"] = (tmp / "nosamples.wav", "no samples")
    sf.write(tmp / "nosamples2.wav", np.zeros((0, 2), np.float32), SAMPLE_RATE)
    cases["zero-samples-stereo"] = (tmp / "nosamples2.wav", "no samples")
    sf.write(tmp / "silent.wav", np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    cases["all-zero"] = (tmp / "silent.wav", "digital silence")
    nan = synth_speech(0.5)
    nan[100] = np.nan
    sf.write(tmp / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    cases["nan"] = (tmp / "nan.wav", "NaN or infinite")
    inf = synth_speech(0.5)
    inf[100] = np.inf
    sf.write(tmp / "inf.wav", inf, SAMPLE_RATE, subtype="FLOAT")
    cases["inf"] = (tmp / "inf.wav", "NaN or infinite")
    return cases


def test_every_bad_file_raises_audio_error_naming_it(tmp_path):
    for kind, (path, fragment) in _bad_files(tmp_path).items():
        with pytest.raises(AudioError) as info:
            load_audio(path)
        message = str(info.value)
        assert str(path) in message, kind
        assert fragment in message, f"{kind}: {message}"


def test_bad_arrays_raise_audio_error_naming_them():
    with pytest.raises(AudioError, match="clip: audio has no samples"):
        prepare_waveform(np.zeros(0, np.float32), SAMPLE_RATE, name="clip")
    with pytest.raises(AudioError, match="clip: .*NaN"):
        prepare_waveform(np.array([0.1, np.nan], np.float32), SAMPLE_RATE, name="clip")
    with pytest.raises(AudioError, match="clip: invalid sample rate"):
        prepare_waveform(np.ones(10, np.float32), 0, name="clip")
    with pytest.raises(AudioError, match="clip: audio must be numeric"):
        prepare_waveform(np.array(["a", "b"]), SAMPLE_RATE, name="clip")
    with pytest.raises(AudioError, match="clip: expected a 1-D or 2-D array"):
        prepare_waveform(np.ones((2, 2, 2), np.float32), SAMPLE_RATE, name="clip")
    with pytest.raises(AudioError, match="0 bytes"):
        load_audio(b"")


def test_load_many_skips_and_lists_failures(tmp_path, speech_wav):
    bad = _bad_files(tmp_path)
    paths = [speech_wav, bad["text"][0], speech_wav, bad["missing"][0]]
    waves, skipped = load_many(paths, min_duration=0.1)
    assert [w is None for w in waves] == [False, True, False, True]
    assert [p for p, _ in skipped] == [bad["text"][0], bad["missing"][0]]
    assert all(str(p) in reason for p, reason in skipped)


@pytest.mark.parametrize("workers", [1, 3])
def test_load_many_threads_keep_order_and_results(tmp_path, speech_wav, workers):
    """Threaded decoding returns the same arrays in input order, past the look-ahead window."""
    bad = _bad_files(tmp_path)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(30):  # more than 4 * workers files, so the bounded queue refills
        if i % 7 == 3:
            paths.append(bad["text"][0])
            continue
        path = tmp_path / f"tone{i:02d}.wav"
        sf.write(path, (0.1 * rng.standard_normal(1600 + 160 * i)).astype(np.float32), SAMPLE_RATE)
        paths.append(path)
    waves, skipped = load_many(paths, workers=workers)
    sequential = [None if p == bad["text"][0] else load_audio(p) for p in paths]
    assert len(waves) == len(paths)
    for got, want in zip(waves, sequential, strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            np.testing.assert_array_equal(got, want)
    assert [p for p, _ in skipped] == [p for p in paths if p == bad["text"][0]]


def test_is_audio_file(tmp_path, speech_wav):
    assert is_audio_file(speech_wav)
    (tmp_path / ".hidden.wav").write_bytes(speech_wav.read_bytes())
    (tmp_path / "notes.txt").write_text("x")
    assert not is_audio_file(tmp_path / ".hidden.wav")
    assert not is_audio_file(tmp_path / "notes.txt")
    assert not is_audio_file(tmp_path)
    assert {".wav", ".flac", ".ogg", ".opus", ".mp3"} <= AUDIO_EXTENSIONS


# --------------------------------------------------------------------------- decoding limits


def _constant_flac(path: Path, sr: int, channels: int, seconds: float) -> Path:
    """A file that compresses to almost nothing and decodes to sr x channels x seconds samples."""
    with sf.SoundFile(path, "w", sr, channels, format="FLAC", subtype="PCM_16") as f:
        block = np.full((sr // 2, channels), 0.25, np.float32)
        for _ in range(int(seconds * 2)):
            f.write(block)
    return path


def _peak_python_memory(fn) -> tuple[object, int]:
    """Run ``fn``; return its result (or the exception it raised) and the peak traced allocation in bytes.

    NumPy reports its array buffers to tracemalloc, so this measures what decoding holds at once.
    """
    import tracemalloc

    tracemalloc.start()
    try:
        try:
            result: object = fn()
        except Exception as exc:  # noqa: BLE001 - returned for the caller to check
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_decode_bomb_is_refused_from_the_header(tmp_path):
    """The issue's bomb (655,350 Hz x 8 channels) in miniature: refused before any decoding."""
    bomb = _constant_flac(tmp_path / "bomb.flac", 655_350, 8, 2.0)  # 10.5 M samples, ~40 KB on disk
    assert bomb.stat().st_size < 200_000
    result, peak = _peak_python_memory(lambda: load_audio(bomb, max_duration=600))
    assert isinstance(result, AudioTooLarge), result
    assert str(bomb) in str(result) and "655350 Hz" in str(result) and "384000 Hz" in str(result)
    assert peak < 2 * 2**20, f"refusing the bomb allocated {peak / 2**20:.1f} MB"
    with pytest.raises(AudioTooLarge, match="bomb.flac: sample rate 655350"):
        load_audio(bomb.read_bytes(), name="bomb.flac")  # no max_duration: still refused
    with pytest.raises(AudioError, match=r"clip: sample rate 1 Hz is below the minimum of 4000 Hz"):
        prepare_waveform(np.ones(600, np.float32), 1, name="clip")  # would upsample 16000x
    with pytest.raises(AudioTooLarge, match="clip: sample rate 500000 Hz"):
        prepare_waveform(np.ones(600, np.float32), 500_000, name="clip")


def test_too_many_samples_for_the_duration_limit_is_refused(tmp_path):
    """96 kHz x 8 channels x 3 s is within a 2.5 s limit's duration slack but over its decoding budget."""
    path = _constant_flac(tmp_path / "wide.flac", 96_000, 8, 3.0)
    result, peak = _peak_python_memory(lambda: load_audio(path, max_duration=2.5))
    assert isinstance(result, AudioTooLarge), result
    assert "wide.flac" in str(result) and "8-channel" in str(result) and "M samples" in str(result)
    assert peak < 2 * 2**20
    long = _constant_flac(tmp_path / "long.flac", 16_000, 1, 8.0)
    result, peak = _peak_python_memory(lambda: load_audio(long, max_duration=2.0))
    assert isinstance(result, AudioTooLong) and "8.0 s long, over the limit of 2 s" in str(result)
    assert peak < 2**20  # refused from the header, nothing decoded
    assert load_audio(path, max_duration=10).size == 3 * SAMPLE_RATE  # within both limits


def test_many_channels_decode_in_memory_proportional_to_the_mono_output(tmp_path):
    """Blocks are mixed down and resampled as they are decoded: 8 channels at 48 kHz never sit in memory."""
    sr, seconds, channels = 48_000, 8.0, 8
    t = np.arange(int(sr * seconds)) / sr
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    data = np.stack([tone * (1 - 0.1 * c) for c in range(channels)], axis=1)
    path = tmp_path / "eight.flac"
    sf.write(path, data, sr, subtype="PCM_24")
    input_bytes = data.size * 4  # 12.3 MB decoded at once by a whole-file read
    wave, peak = _peak_python_memory(lambda: load_audio(path, max_duration=600))
    assert isinstance(wave, np.ndarray) and wave.size == seconds * SAMPLE_RATE
    output_bytes = wave.nbytes  # 0.5 MB
    assert peak < 3 * output_bytes + 2 * 2**20, (peak, output_bytes)
    assert peak < input_bytes / 3
    # the same numbers as downmixing and resampling the whole file at once
    import soxr

    whole, _ = sf.read(path, dtype="float32", always_2d=True)
    expected = soxr.resample(whole.mean(axis=1), sr, SAMPLE_RATE, quality="HQ")
    np.testing.assert_array_equal(wave, expected)
