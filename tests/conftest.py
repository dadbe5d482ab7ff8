"""Shared fixtures. Corpus tests skip with a reason when ../shared/corpora is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("EMOVOX_CORPORA", REPO.parent / "shared" / "corpora"))


def _corpus_dir(name: str) -> Path:
    path = CORPORA / name
    if not path.is_dir():
        pytest.skip(
            f"corpus {name!r} not found at {path} "
            "(set EMOVOX_CORPORA or place ../shared/corpora beside the repo)"
        )
    return path


@pytest.fixture(scope="session", autouse=True)
def _feature_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Keep the on-disk feature cache (training, cached_features) out of the user's home during tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOVOX_CACHE", str(tmp_path_factory.mktemp("feature-cache")))
        yield


@pytest.fixture(scope="session")
def ravdess_dir() -> Path:
    return _corpus_dir("ravdess")


@pytest.fixture(scope="session")
def tess_dir() -> Path:
    return _corpus_dir("tess")


def synth_speech(seconds: float = 1.5, sr: int = 16_000, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A voiced, speech-like test signal: a harmonic tone with vibrato and a syllable envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = (
        0.5 * (1 - np.cos(2 * np.pi * 4 * t)) * np.minimum(1, 10 * t) * np.minimum(1, 10 * (seconds - t))
    )
    wave = 0.3 * voiced * envelope + 0.003 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


@pytest.fixture
def speech_wav(tmp_path: Path) -> Path:
    """A synthetic 1.5 s speech-like clip written as 16-bit WAV at 22.05 kHz stereo."""
    wave = synth_speech(sr=22_050)
    path = tmp_path / "speech.wav"
    sf.write(path, np.stack([wave, 0.5 * wave], axis=1), 22_050, subtype="PCM_16")
    return path


def make_tiny_whisper(path: Path, *, d_model: int = 32, layers: int = 3, seed: int = 0) -> Path:
    """A tiny randomly initialised Whisper (Hugging Face folder) built from a config: no download."""
    import torch
    import transformers

    cfg = transformers.WhisperConfig(
        d_model=d_model, encoder_layers=layers, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model, num_mel_bins=80,
        vocab_size=64, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.WhisperModel(cfg).save_pretrained(path)
    return path
