"""Training-time augmentation: waveform transforms (audiomentations) and SpecAugment (torch).

Acted corpora are small (RAVDESS has 60 clips per actor), so models overfit voices quickly.
:class:`WaveAugment` perturbs training waveforms (noise at a chosen SNR, background noise, pitch,
tempo, time shift, gain) and :class:`SpecAugment` masks random time and frequency bands of the
normalised features. Both are applied to training data only; evaluation, export and serving never
see them. Mixup lives in the training config (``train.mixup``) because it mixes labels too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from emovox.errors import ConfigError

_RANGES = {
    "noise_snr_db": (None, None),
    "background_snr_db": (None, None),
    "pitch_semitones": (-24.0, 24.0),
    "stretch_rate": (0.1, 10.0),
    "shift_seconds": (-10.0, 10.0),
    "gain_db": (-60.0, 60.0),
    "speed_range": (0.5, 2.0),
}


@dataclass
class AugmentConfig:
    """Probabilities (``*_p``, 0 = off) and ``[min, max]`` ranges of each augmentation.

    Waveform: Gaussian noise at an SNR in dB; background noise from the audio files under
    ``background_dir`` (None = off); pitch shift in semitones; time stretch by a rate (> 1 =
    faster); time shift in seconds (no roll-over: audio shifted out is dropped, silence shifted in);
    gain in dB. SpecAugment: ``time_masks`` masks of up to ``time_mask_width`` frames and
    ``freq_masks`` masks of up to ``freq_mask_width`` channels, on frame features only.
    ``copies`` (encoder family with cached features): K degraded copies of every training clip,
    each copy of a speaker's clips through one channel drawn from ``channels``
    (:func:`emovox.degrade.random_channel`), seeded by the training seed, speaker and copy, so the
    copies' features are cached and reused by every later fold and run.
    ``val_copies``: K degraded copies of every validation clip join validation (checkpoint choice,
    temperature, the reported validation UA), through channels drawn from all of
    :data:`emovox.degrade.DEGRADATIONS` whatever ``channels`` says, so configurations that train on
    different channel mixes are chosen on the same degraded validation audio.
    ``speed_range``: the factors a ``speed`` copy draws from (one per session; below 1 a slower,
    lower voice with a longer vocal tract: a crude vocal tract length perturbation).
    """

    noise_p: float = 0.0
    noise_snr_db: tuple[float, float] = (15.0, 40.0)
    background_dir: str | None = None
    background_p: float = 0.0
    background_snr_db: tuple[float, float] = (5.0, 25.0)
    pitch_p: float = 0.0
    pitch_semitones: tuple[float, float] = (-2.0, 2.0)
    stretch_p: float = 0.0
    stretch_rate: tuple[float, float] = (0.9, 1.1)
    shift_p: float = 0.0
    shift_seconds: tuple[float, float] = (-0.2, 0.2)
    gain_p: float = 0.0
    gain_db: tuple[float, float] = (-6.0, 6.0)
    time_masks: int = 0
    time_mask_width: int = 20
    freq_masks: int = 0
    freq_mask_width: int = 8
    copies: int = 0
    val_copies: int = 0
    channels: tuple[str, ...] = ("telephone", "noise", "babble", "codec", "gain", "reverb")
    speed_range: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field (``augment.<field>``)."""
        for f in fields(self):
            value = getattr(self, f.name)
            key = f"augment.{f.name}"
            if f.name.endswith("_p"):
                if not _is_number(value) or not 0.0 <= value <= 1.0:
                    raise ConfigError(f"{key}: must be a probability between 0 and 1, got {value!r}")
            elif f.name in _RANGES:
                if (
                    not isinstance(value, (list, tuple))
                    or len(value) != 2
                    or not all(_is_number(v) for v in value)
                ):
                    raise ConfigError(f"{key}: must be a [min, max] pair of numbers, got {value!r}")
                lo, hi = float(value[0]), float(value[1])
                if lo > hi:
                    raise ConfigError(f"{key}: min {lo:g} is above max {hi:g}")
                low_limit, high_limit = _RANGES[f.name]
                if (low_limit is not None and lo < low_limit) or (high_limit is not None and hi > high_limit):
                    raise ConfigError(
                        f"{key}: must lie within [{low_limit:g}, {high_limit:g}], got {[lo, hi]}"
                    )
                setattr(self, f.name, (lo, hi))
            elif f.name == "channels":
                from emovox.degrade import CHANNELS

                if not isinstance(value, (list, tuple)) or not value or not set(value) <= set(CHANNELS):
                    known = ", ".join(CHANNELS)
                    raise ConfigError(f"{key}: must be a list drawn from {known}, got {value!r}")
                setattr(self, f.name, tuple(value))
            elif f.name in _COUNTS:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigError(f"{key}: must be a non-negative integer, got {value!r}")
        if self.background_p > 0 and not self.background_dir:
            raise ConfigError("augment.background_dir: needed when augment.background_p > 0")
        if self.background_dir is not None and not Path(self.background_dir).is_dir():
            raise ConfigError(f"augment.background_dir: {self.background_dir} is not a folder")

    @property
    def wave_enabled(self) -> bool:
        """True when at least one waveform augmentation has a non-zero probability."""
        return any(getattr(self, f.name) > 0 for f in fields(self) if f.name.endswith("_p"))

    @property
    def spec_enabled(self) -> bool:
        """True when SpecAugment masks at least one band."""
        return (self.time_masks > 0 and self.time_mask_width > 0) or (
            self.freq_masks > 0 and self.freq_mask_width > 0
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able dict (pairs become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


_COUNTS = ("time_masks", "time_mask_width", "freq_masks", "freq_mask_width", "copies", "val_copies")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def channel_copies(
    waves: Sequence[np.ndarray], groups: Sequence[str], cfg: AugmentConfig, seed: int
) -> tuple[list[np.ndarray], list[int], list[str]]:
    """``cfg.copies`` degraded copies of ``waves``: ``(copies, source index of each, group of each)``.

    Copy ``k`` of speaker (group) ``g`` goes through one channel drawn for ``(seed, g, k)``, with
    per-clip parameters drawn for ``(seed, g, k, clip)``; babble uses other speakers' clips. The
    copies are therefore the same in every run, and their cached features are reused."""
    import zlib

    from emovox.degrade import random_channel

    keys = list(groups)
    out: list[np.ndarray] = []
    source: list[int] = []
    out_groups: list[str] = []
    for k in range(cfg.copies):
        for g in sorted(set(keys)):
            rng = np.random.default_rng(zlib.crc32(f"{seed}:{g}:{k}".encode()))
            name, degrade = random_channel(cfg.channels, rng, speed_range=cfg.speed_range)
            others = [waves[i] for i in range(len(waves)) if keys[i] != g][:: max(1, len(waves) // 64)]
            for i in (i for i in range(len(waves)) if keys[i] == g):
                clip_rng = np.random.default_rng(zlib.crc32(f"{seed}:{g}:{k}:{i}".encode()))
                out.append(
                    np.asarray(
                        degrade(np.asarray(waves[i], dtype=np.float32), clip_rng, others), dtype=np.float32
                    )
                )
                source.append(i)
                out_groups.append(f"{g}#{name}{k}")
    return out, source, out_groups


def validation_copies(
    waves: Sequence[np.ndarray], groups: Sequence[str], cfg: AugmentConfig, seed: int
) -> tuple[list[np.ndarray], list[int], list[str]]:
    """``cfg.val_copies`` degraded copies of the validation clips, as :func:`channel_copies` returns
    them, each (speaker, copy) through a channel drawn from every family of
    :data:`emovox.degrade.DEGRADATIONS` (never from ``cfg.channels``: candidates that train on
    different mixes are validated on the same audio)."""
    from dataclasses import replace

    from emovox.degrade import DEGRADATIONS

    return channel_copies(waves, groups, replace(cfg, copies=cfg.val_copies, channels=DEGRADATIONS), seed)


class WaveAugment:
    """Random waveform perturbations for training clips (an audiomentations ``Compose``).

    ``WaveAugment(cfg, sr)(wave)`` returns a new float32 1-D array; with every probability at 0 it
    returns the input unchanged. Randomness comes from NumPy's and Python's global generators,
    which Lightning's ``seed_everything(..., workers=True)`` seeds per worker.
    """

    def __init__(self, cfg: AugmentConfig, sr: int = 16_000) -> None:
        import audiomentations as am

        self.cfg = cfg
        self.sr = sr
        transforms: list[Any] = []
        if cfg.gain_p > 0:
            transforms.append(am.Gain(min_gain_db=cfg.gain_db[0], max_gain_db=cfg.gain_db[1], p=cfg.gain_p))
        if cfg.pitch_p > 0:
            transforms.append(
                am.PitchShift(
                    min_semitones=cfg.pitch_semitones[0], max_semitones=cfg.pitch_semitones[1], p=cfg.pitch_p
                )
            )
        if cfg.stretch_p > 0:
            transforms.append(
                am.TimeStretch(
                    min_rate=cfg.stretch_rate[0],
                    max_rate=cfg.stretch_rate[1],
                    leave_length_unchanged=False,
                    p=cfg.stretch_p,
                )
            )
        if cfg.shift_p > 0:
            transforms.append(
                am.Shift(
                    min_shift=cfg.shift_seconds[0],
                    max_shift=cfg.shift_seconds[1],
                    shift_unit="seconds",
                    rollover=False,
                    p=cfg.shift_p,
                )
            )
        if cfg.background_p > 0 and cfg.background_dir:
            transforms.append(
                am.AddBackgroundNoise(
                    sounds_path=cfg.background_dir,
                    min_snr_db=cfg.background_snr_db[0],
                    max_snr_db=cfg.background_snr_db[1],
                    p=cfg.background_p,
                )
            )
        if cfg.noise_p > 0:
            transforms.append(
                am.AddGaussianSNR(
                    min_snr_db=cfg.noise_snr_db[0], max_snr_db=cfg.noise_snr_db[1], p=cfg.noise_p
                )
            )
        self._compose = am.Compose(transforms, p=1.0) if transforms else None

    @property
    def enabled(self) -> bool:
        """True when any transform can fire."""
        return self._compose is not None

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        if self._compose is None:
            return wave
        out = self._compose(samples=np.asarray(wave, dtype=np.float32), sample_rate=self.sr)
        out = np.asarray(out, dtype=np.float32).reshape(-1)
        if out.size == 0:  # a shift can push everything out of a very short clip
            return wave
        return np.nan_to_num(out, copy=False)


class SpecAugment(nn.Module):
    """Time and frequency masking (Park et al., 2019) of ``x [B, C, F]`` inside each item's valid frames.

    Masked cells are set to 0, the per-channel mean of normalised features. Active only in training
    mode; in eval mode (and for pooled ``[B, D]`` inputs) it returns ``x`` unchanged.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.time_masks = cfg.time_masks
        self.time_width = cfg.time_mask_width
        self.freq_masks = cfg.freq_masks
        self.freq_width = cfg.freq_mask_width

    @staticmethod
    def _bands(n: int, width: int, size: Tensor, extent: int, device: torch.device) -> Tensor:
        """Boolean [B, n, extent]: ``n`` random bands of width <= ``width`` inside ``[0, size[b])``."""
        batch = size.shape[0]
        widths = torch.floor(torch.rand(batch, n, device=device) * (width + 1))
        widths = torch.minimum(widths, size[:, None].to(widths.dtype))
        starts = torch.floor(torch.rand(batch, n, device=device) * (size[:, None] - widths + 1))
        pos = torch.arange(extent, device=device)[None, None, :]
        return (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        if not self.training or x.dim() != 3:
            return x
        batch, channels, frames = x.shape
        valid = torch.arange(frames, device=x.device)[None, :] < lengths[:, None]  # [B, F]
        drop = torch.zeros(batch, channels, frames, dtype=torch.bool, device=x.device)
        if self.time_masks > 0 and self.time_width > 0:
            bands = self._bands(self.time_masks, self.time_width, lengths, frames, x.device).any(1)
            drop |= bands[:, None, :]
        if self.freq_masks > 0 and self.freq_width > 0:
            full = torch.full((batch,), channels, device=x.device)
            bands = self._bands(self.freq_masks, self.freq_width, full, channels, x.device).any(1)
            drop |= bands[:, :, None]
        drop &= valid[:, None, :]  # padding frames are left exactly as they are
        return x.masked_fill(drop, 0.0)
