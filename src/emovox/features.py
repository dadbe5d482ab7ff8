"""Batched frame features in PyTorch (CPU or GPU) and utterance pooling; re-exports eGeMAPS.

:class:`FeatureExtractor` turns a zero-padded batch of 16 kHz waveforms into frame features
``[B, C, F]`` in one pass: one STFT (a 1-D convolution with a windowed DFT basis) feeds log-mel,
MFCC (+ deltas), chroma and spectral contrast; RMS, zero-crossing rate and a YIN pitch track are
computed from the same framing. The filterbanks and bases are built with librosa once, in
``__init__``, and kept as non-persistent buffers, so the numbers follow librosa (see
``docs/features.md`` for the few deliberate differences) and model bundles store only learned
weights: the :class:`FeatureConfig` saved with a model rebuilds the front end exactly.

The forward pass uses only convolutions, matrix products, gathers and element-wise ops, with no
data-dependent Python control flow, so it exports to ONNX (opset 17/18, dynamic batch and time)
as part of the waveform -> probabilities model.

Framing is librosa's ``center=True`` with zero padding: frame ``t`` is centred on sample
``t * hop_length``, a clip of ``L`` samples has ``1 + L // hop_length`` frames, and frames past
each clip's length are zeroed. Because padding is zeros on both sides, a clip's features are the
same alone or inside a padded batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from emovox import limits
from emovox.egemaps import (
    EGEMAPS_DIM,
    _smile,  # noqa: F401 (the cached openSMILE extractor: features._smile.cache_clear())
    egemaps,
    egemaps_many,
    egemaps_names,
)
from emovox.errors import AudioError, ConfigError

#: Bump whenever a change in this module changes feature values, so caches keyed on it go stale.
FEATURES_VERSION = "1"

#: Frame feature sets, in the order they may be listed in ``FeatureConfig.sets``.
FEATURE_SETS = ("logmel", "mfcc", "chroma", "contrast", "rms", "zcr", "f0")
#: Utterance statistics understood by :func:`pool_stats`.
POOL_STATS = ("mean", "std", "min", "max", "skew", "kurtosis")

# librosa.power_to_db defaults (ref=1.0, amin=1e-10, top_db=80)
_AMIN = 1e-10
_TOP_DB = 80.0
# librosa.feature.spectral_contrast defaults
_CONTRAST_FMIN = 200.0
_CONTRAST_QUANTILE = 0.02
# librosa.yin default trough threshold
_YIN_THRESHOLD = 0.1
# a frame whose energy is this far below the utterance's loudest frame is never voiced
_VOICING_FLOOR_DB = 60.0
# librosa.feature.delta default width
_DELTA_WIDTH = 9
_TINY32 = float(np.finfo(np.float32).tiny)


@dataclass
class FeatureConfig:
    """Every parameter of the frame front end, in one JSON-able object saved with each model.

    ``sets`` picks the frame features (concatenated on channels in this order, see
    :data:`FEATURE_SETS`); ``stats`` the utterance statistics for :func:`pool_stats`.
    ``fmax=None`` means ``sample_rate / 2``. ``n_contrast_bands`` octave bands start at 200 Hz
    (librosa's default) and give ``n_contrast_bands + 1`` channels.
    """

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = 8000.0
    n_mfcc: int = 40
    deltas: bool = True
    n_chroma: int = 12
    n_contrast_bands: int = 6
    f0_min: float = 65.0
    f0_max: float = 500.0
    sets: tuple[str, ...] = ("logmel",)
    stats: tuple[str, ...] = ("mean", "std")

    def __post_init__(self) -> None:
        if isinstance(self.sets, str):
            self.sets = (self.sets,)
        if isinstance(self.stats, str):
            self.stats = (self.stats,)
        self.sets = tuple(self.sets)
        self.stats = tuple(self.stats)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        self._check_numbers()
        self._check_names()
        self._check_set_limits()
        self._check_size()

    def _check_numbers(self) -> None:
        """Types and ranges of every numeric field."""
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "n_mfcc", "n_chroma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ConfigError(f"features.{name}: must be a positive integer, got {value!r}")
        if (
            isinstance(self.n_contrast_bands, bool)
            or not isinstance(self.n_contrast_bands, int)
            or (self.n_contrast_bands < 1)
        ):
            raise ConfigError(
                f"features.n_contrast_bands: must be an integer >= 1, got {self.n_contrast_bands!r}"
            )
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "n_mfcc", "n_chroma"):
            limits.check(f"features.{name}", getattr(self, name))
        limits.check("features.n_contrast_bands", self.n_contrast_bands)
        if not isinstance(self.deltas, bool):
            raise ConfigError(f"features.deltas: must be true or false, got {self.deltas!r}")
        if self.n_fft < self.win_length:
            raise ConfigError(f"features.n_fft: must be >= win_length ({self.win_length}), got {self.n_fft}")
        for name in ("fmin", "f0_min", "f0_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"features.{name}: must be a number, got {value!r}")
        if self.fmax is not None and (
            isinstance(self.fmax, bool)
            or not isinstance(self.fmax, (int, float))
            or not math.isfinite(self.fmax)
        ):
            raise ConfigError(f"features.fmax: must be a number or null, got {self.fmax!r}")
        for name in ("fmin", "f0_min", "f0_max"):
            limits.check(f"features.{name}", getattr(self, name))
        limits.check_optional("features.fmax", self.fmax)

    def _check_names(self) -> None:
        """The feature sets and pooling statistics are known, each listed once."""
        if not self.sets:
            raise ConfigError(f"features.sets: pick at least one of {', '.join(FEATURE_SETS)}")
        for name in self.sets:
            if name not in FEATURE_SETS:
                raise ConfigError(
                    f"features.sets: unknown feature set {name!r} (known: {', '.join(FEATURE_SETS)})"
                )
        if len(set(self.sets)) != len(self.sets):
            raise ConfigError(f"features.sets: a feature set is listed twice in {list(self.sets)}")
        if not self.stats:
            raise ConfigError(f"features.stats: pick at least one of {', '.join(POOL_STATS)}")
        for name in self.stats:
            if name not in POOL_STATS:
                raise ConfigError(
                    f"features.stats: unknown statistic {name!r} (known: {', '.join(POOL_STATS)})"
                )

    def _check_set_limits(self) -> None:
        """Limits of the sets in use only (e.g. an 8 kHz logmel-only config)."""
        sets = set(self.sets)
        nyquist = self.sample_rate / 2
        if sets & {"logmel", "mfcc"}:
            if self.fmin < 0:
                raise ConfigError(f"features.fmin: must be >= 0, got {self.fmin}")
            if self.fmax is not None and self.fmax > nyquist:
                raise ConfigError(
                    f"features.fmax: {self.fmax} Hz is above the Nyquist frequency ({nyquist:g} Hz at "
                    f"sample_rate {self.sample_rate})"
                )
            if self.fmin >= self.mel_fmax:
                raise ConfigError(
                    f"features.fmin: must be below fmax ({self.mel_fmax:g} Hz), got {self.fmin}"
                )
        if "mfcc" in sets:
            if self.n_mfcc > self.n_mels:
                raise ConfigError(f"features.n_mfcc: must be <= n_mels ({self.n_mels}), got {self.n_mfcc}")
        if "contrast" in sets:
            top_edge = _CONTRAST_FMIN * 2 ** (self.n_contrast_bands - 1)
            if top_edge >= nyquist:
                raise ConfigError(
                    f"features.n_contrast_bands: {self.n_contrast_bands} octave bands from "
                    f"{_CONTRAST_FMIN:g} Hz exceed the Nyquist frequency ({nyquist:g} Hz)"
                )
        if self.f0_min <= 0:
            raise ConfigError(f"features.f0_min: must be > 0, got {self.f0_min}")
        if self.f0_max <= self.f0_min:
            raise ConfigError(f"features.f0_max: must be above f0_min ({self.f0_min:g}), got {self.f0_max}")
        if "f0" in sets:
            if self.f0_max > nyquist:
                raise ConfigError(
                    f"features.f0_max: {self.f0_max} Hz is above the Nyquist frequency ({nyquist:g} Hz)"
                )

    def _check_size(self) -> None:
        """What building the front end would allocate, refused above the limit."""
        sets = set(self.sets)
        values = self.front_end_values()
        if values > limits.MAX_FRONT_END_VALUES:
            raise ConfigError(
                f"features: this front end would build {values / 1e6:.0f} million filterbank values "
                f"(n_fft {self.n_fft}, win_length {self.win_length}"
                + (f", f0_min {self.f0_min:g} Hz at {self.sample_rate} Hz" if "f0" in sets else "")
                + f"), over the limit of {limits.MAX_FRONT_END_VALUES / 1e6:.0f} million; use a smaller "
                "n_fft / win_length" + (" or a higher f0_min" if "f0" in sets else "")
            )

    def front_end_values(self) -> int:
        """How many values the filterbanks and DFT bases of :class:`FeatureExtractor` hold for this
        config (what building it allocates, before any audio), so a config can be refused first."""
        sets = set(self.sets)
        bins = self.n_fft // 2 + 1
        total = 0
        if sets & {"logmel", "mfcc", "chroma", "contrast"}:
            total += 2 * bins * self.win_length + self.win_length
        if sets & {"logmel", "mfcc", "chroma"}:
            total += self.n_mels * bins
        if "mfcc" in sets:
            total += self.n_mfcc * self.n_mels
        if "chroma" in sets:
            total += self.n_chroma * bins
        if "zcr" in sets:
            total += self.n_fft
        if "f0" in sets:
            n = self.f0_frame_length
            max_period = min(math.ceil(self.sample_rate / self.f0_min), n - 1)
            n_dft = 1 << (n + max_period).bit_length()
            total += (n_dft + 2) * n + (max_period + 1) * (n_dft // 2 + 1) + max_period * max_period
        return total

    # ------------------------------------------------------------------ derived values
    @property
    def mel_fmax(self) -> float:
        """Upper edge of the mel filterbank in Hz (``fmax`` or the Nyquist frequency)."""
        return float(self.sample_rate / 2 if self.fmax is None else self.fmax)

    @property
    def f0_frame_length(self) -> int:
        """YIN frame length: the smallest power of two holding two periods of ``f0_min`` (512 at defaults)."""
        need = 2 * (math.ceil(self.sample_rate / self.f0_min) + 1)
        return max(self.n_fft, 1 << (need - 1).bit_length())

    def channels_of(self, name: str) -> int:
        """Number of channels the feature set ``name`` contributes."""
        return {
            "logmel": self.n_mels,
            "mfcc": self.n_mfcc * (3 if self.deltas else 1),
            "chroma": self.n_chroma,
            "contrast": self.n_contrast_bands + 1,
            "rms": 1,
            "zcr": 1,
            "f0": 2,
        }[name]

    @property
    def num_channels(self) -> int:
        """C of the concatenated frame features."""
        return sum(self.channels_of(name) for name in self.sets)

    def channel_names(self) -> list[str]:
        """One readable name per frame-feature channel, e.g. ``mfcc3``, ``mfcc_d3``, ``f0_voicing``."""
        names: list[str] = []
        for s in self.sets:
            if s == "mfcc":
                kinds = ("mfcc", "mfcc_d", "mfcc_dd") if self.deltas else ("mfcc",)
                names += [f"{k}{i}" for k in kinds for i in range(self.n_mfcc)]
            elif s == "f0":
                names += ["f0_log2", "f0_voicing"]
            elif s in ("rms", "zcr"):
                names.append(s)
            else:
                names += [f"{s}{i}" for i in range(self.channels_of(s))]
        return names

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists); :meth:`from_dict` inverts it."""
        d = dataclasses.asdict(self)
        d["sets"] = list(self.sets)
        d["stats"] = list(self.stats)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureConfig:
        """Build and validate a config; unknown keys raise :class:`ConfigError` naming them."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"features: expected a mapping of parameters, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"features.{unknown[0]}: unknown parameter (known: {', '.join(sorted(known))})")
        kwargs = dict(d)
        for key in ("sets", "stats"):
            if key in kwargs:
                value = kwargs[key]
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, (list, tuple)):
                    raise ConfigError(f"features.{key}: expected a list of names, got {value!r}")
                kwargs[key] = tuple(value)
        for key in ("fmin", "fmax", "f0_min", "f0_max"):
            # JSON/YAML may hand integers for float fields
            if isinstance(kwargs.get(key), int) and not isinstance(kwargs.get(key), bool):
                kwargs[key] = float(kwargs[key])
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------- helpers
def _power_to_db(power: Tensor, mask: Tensor) -> Tensor:
    """``librosa.power_to_db(ref=1, amin=1e-10, top_db=80)`` for ``[B, C, F]``, floor per utterance.

    The 80 dB floor is relative to each utterance's maximum over its valid frames (``mask`` is
    ``[B, 1, F]``), which is what librosa computes on the clip alone.
    """
    db = 10.0 * torch.log10(torch.clamp(power, min=_AMIN))
    peak = torch.where(mask, db, torch.full_like(db, -1.0e4)).amax(dim=(1, 2), keepdim=True)
    return torch.maximum(db, peak - _TOP_DB)


def _savgol_matrix(order: int) -> np.ndarray:
    """Rows ``t`` of the 9x9 linear map of ``scipy.signal.savgol_filter(mode="interp")`` on 9 frames.

    Row 4 is the interior filter, rows 0-3 / 5-8 the polynomial fits used for the first / last
    four frames: exactly what ``librosa.feature.delta(width=9, order=order)`` applies.
    """
    from scipy.signal import savgol_filter

    eye = np.eye(_DELTA_WIDTH)
    return savgol_filter(eye, _DELTA_WIDTH, polyorder=order, deriv=order, axis=0, mode="interp").astype(
        np.float32
    )


def _delta(x: Tensor, frame_lengths: Tensor, sg: Tensor) -> Tensor:
    """``librosa.feature.delta`` (width 9, ``mode="interp"``) per utterance of a padded batch.

    ``x`` is ``[B, C, F]`` with zeros past each ``frame_lengths``; ``sg`` the 9x9 map of
    :func:`_savgol_matrix`. Interior frames use a convolution; each utterance's first and last
    four frames use the polynomial-fit rows, gathered at its own end, so no per-item loop is needed.
    """
    b, c, f = x.shape
    half = _DELTA_WIDTH // 2
    interior = nnf.conv1d(x.reshape(b * c, 1, f), sg[half].reshape(1, 1, _DELTA_WIDTH), padding=half)
    interior = interior.reshape(b, c, f)
    xp = nnf.pad(x, (0, _DELTA_WIDTH - 1))
    start = torch.einsum("bcj,tj->bct", xp[:, :, :_DELTA_WIDTH], sg[:half])
    base = torch.clamp(frame_lengths - _DELTA_WIDTH, min=0)
    win_idx = base[:, None] + torch.arange(_DELTA_WIDTH, device=x.device)[None, :]
    tail = xp.gather(2, win_idx[:, None, :].expand(b, c, _DELTA_WIDTH))
    end = torch.einsum("bcj,tj->bct", tail, sg[half + 1 :])
    t = torch.arange(f, device=x.device)
    start_full = start.index_select(2, torch.clamp(t, max=half - 1))
    pos = t[None, :] - (frame_lengths[:, None] - half)
    end_full = end.gather(2, torch.clamp(pos, 0, half - 1)[:, None, :].expand(b, c, f))
    out = torch.where((t < half)[None, None, :], start_full, interior)
    return torch.where(((pos >= 0) & (pos < half))[:, None, :], end_full, out)


def pad_batch(waves: Sequence[np.ndarray | Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-pad 1-D waveforms into ``(wave [B, T] float32, lengths [B] int64)``."""
    if not waves:
        raise AudioError("<batch>: no waveforms to pad")
    tensors = [torch.as_tensor(np.asarray(w, dtype=np.float32)).reshape(-1) for w in waves]
    lengths = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    wave = torch.zeros(len(tensors), int(lengths.max()), dtype=torch.float32)
    for i, t in enumerate(tensors):
        wave[i, : t.numel()] = t
    return wave, lengths


# ---------------------------------------------------------------------------------------- extractor
class FeatureExtractor(nn.Module):
    """Batched frame features: ``forward(wave [B, T], lengths [B]) -> (feats [B, C, F], frame_lengths [B])``.

    Runs on whatever device its buffers are on (``.to("cuda")``). Channel blocks follow
    ``cfg.sets``; ``num_channels`` is C. See the module docstring and ``docs/features.md``.
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        import librosa

        self.cfg = cfg
        self.num_channels = cfg.num_channels
        sets = set(cfg.sets)
        self._needs_power = bool(sets & {"logmel", "mfcc", "chroma"})
        self._needs_stft = self._needs_power or "contrast" in sets
        sr, n_fft, win = cfg.sample_rate, cfg.n_fft, cfg.win_length

        if self._needs_stft:
            # Windowed real-DFT basis over the win_length non-zero samples of librosa's
            # n_fft-long zero-padded periodic Hann window: rows [cos; sin] for bins 0..n_fft/2.
            window = librosa.filters.get_window("hann", win, fftbins=True).astype(np.float64)
            offset = (n_fft - win) // 2
            n = np.arange(win) + offset
            k = np.arange(n_fft // 2 + 1)
            angle = 2 * np.pi * np.outer(k, n) / n_fft
            basis = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])
            self.register_buffer("stft_basis", _f32(basis[:, None, :]), persistent=False)
            self.register_buffer("stft_window", _f32(window), persistent=False)
            # frame t starts win//2 ... relative to its centre, like librosa's centred n_fft frame
            self._stft_left = n_fft // 2 - offset
        if self._needs_power:
            mel = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.mel_fmax)
            self.register_buffer("mel_fb", _f32(mel), persistent=False)
        if "mfcc" in sets:
            from scipy.fft import dct

            dct_m = dct(np.eye(cfg.n_mels), type=2, norm="ortho", axis=0)[: cfg.n_mfcc]
            self.register_buffer("dct_m", _f32(dct_m), persistent=False)
            if cfg.deltas:
                self.register_buffer("sg1", torch.from_numpy(_savgol_matrix(1)), persistent=False)
                self.register_buffer("sg2", torch.from_numpy(_savgol_matrix(2)), persistent=False)
        if "chroma" in sets:
            chroma = librosa.filters.chroma(sr=sr, n_fft=n_fft, n_chroma=cfg.n_chroma, tuning=0.0)
            self.register_buffer("chroma_fb", _f32(chroma), persistent=False)
        if "contrast" in sets:
            self._contrast_bands = _contrast_bands(cfg)
        if "zcr" in sets:
            # frame of n_fft samples holds n_fft - 1 sign transitions; librosa divides by n_fft
            kernel = np.ones(n_fft)
            kernel[0] = 0.0
            self.register_buffer("zcr_kernel", _f32(kernel[None, None, :] / n_fft), persistent=False)
        if "f0" in sets:
            self._init_yin(cfg)

    def _init_yin(self, cfg: FeatureConfig) -> None:
        n = cfg.f0_frame_length
        sr = cfg.sample_rate
        self._yin_n = n
        self._yin_min_period = int(np.floor(sr / cfg.f0_max))
        self._yin_max_period = min(int(np.ceil(sr / cfg.f0_min)), n - 1)
        n_dft = 1 << (n + self._yin_max_period).bit_length()
        k = np.arange(n_dft // 2 + 1)
        angle = 2 * np.pi * np.outer(k, np.arange(n)) / n_dft
        self.register_buffer(
            "yin_dft", _f32(np.concatenate([np.cos(angle), -np.sin(angle)])[:, None, :]), persistent=False
        )
        # inverse real DFT of a power spectrum (even, real) at lags 0..max_period
        weights = np.full(k.size, 2.0)
        weights[0] = weights[-1] = 1.0
        lags = np.arange(self._yin_max_period + 1)
        inv = weights[None, :] * np.cos(2 * np.pi * np.outer(lags, k) / n_dft) / n_dft
        self.register_buffer("yin_idft", _f32(inv), persistent=False)
        # prefix energies sum_{m<=j} y_m^2 for j = 0..max_period-1 of each frame
        tri = np.tril(np.ones((self._yin_max_period, self._yin_max_period)))
        self.register_buffer("yin_prefix", _f32(tri[:, None, :]), persistent=False)

    # ------------------------------------------------------------------ forward
    def forward(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``wave [B, T]``, ``lengths [B]`` samples -> ``(feats [B, C, F], frame_lengths [B])``."""
        cfg = self.cfg
        hop = cfg.hop_length
        wave = wave.to(self._dtype())
        n_frames = wave.shape[-1] // hop + 1
        frame_lengths = torch.div(lengths.to(torch.int64), hop, rounding_mode="floor") + 1
        mask = (torch.arange(n_frames, device=wave.device)[None, :] < frame_lengths[:, None])[:, None, :]
        x = wave[:, None, :]

        power = magnitude = logmel = None
        if self._needs_stft:
            power = self._power_spectrum(wave, n_frames)
            if "contrast" in cfg.sets:
                magnitude = torch.sqrt(power)
        if "logmel" in cfg.sets or "mfcc" in cfg.sets:
            logmel = _power_to_db(torch.matmul(self.mel_fb, power), mask)

        blocks: list[Tensor] = []
        for name in cfg.sets:
            if name == "logmel":
                blocks.append(logmel)
            elif name == "mfcc":
                blocks.append(self._mfcc(logmel, frame_lengths))
            elif name == "chroma":
                raw = torch.matmul(self.chroma_fb, power)
                norm = raw.amax(dim=1, keepdim=True)
                blocks.append(raw / torch.where(norm < _TINY32, torch.ones_like(norm), norm))
            elif name == "contrast":
                blocks.append(self._contrast(magnitude, mask))
            elif name == "rms":
                blocks.append(self._rms(x, n_frames))
            elif name == "zcr":
                blocks.append(self._zcr(wave, lengths, n_frames))
            elif name == "f0":
                blocks.append(self._f0(x, n_frames, mask))
        feats = torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]
        return feats * mask.to(feats.dtype), frame_lengths

    def _power_spectrum(self, wave: Tensor, n_frames: int) -> Tensor:
        """``|STFT|^2`` ``[B, n_fft/2 + 1, F]``, centred frames with zero padding (librosa's stft).

        Eagerly this is ``torch.stft`` (an FFT, about 3x faster than the DFT product on CPU); while
        exporting to ONNX it is a 1-D convolution with the windowed DFT basis, which every
        runtime supports. Both compute the same spectrum up to float32 rounding.
        """
        cfg = self.cfg
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            left = self._stft_left
            padded = nnf.pad(wave[:, None, :], (left, cfg.win_length - left))
            spec = nnf.conv1d(padded, self.stft_basis, stride=cfg.hop_length)[..., :n_frames]
            n_bins = cfg.n_fft // 2 + 1
            return spec[:, :n_bins] ** 2 + spec[:, n_bins:] ** 2
        spec = torch.stft(
            wave, cfg.n_fft, cfg.hop_length, cfg.win_length, window=self.stft_window,
            center=True, pad_mode="constant", return_complex=True,
        )  # fmt: skip
        return spec.real**2 + spec.imag**2

    def _dtype(self) -> torch.dtype:
        for buf in self.buffers():
            return buf.dtype
        return torch.float32

    def _mfcc(self, logmel: Tensor, frame_lengths: Tensor) -> Tensor:
        mfcc = torch.matmul(self.dct_m, logmel)
        if not self.cfg.deltas:
            return mfcc
        # deltas are taken on the clip's own frames: zero what lies past its end first
        f = mfcc.shape[-1]
        valid = (torch.arange(f, device=mfcc.device)[None, :] < frame_lengths[:, None])[:, None, :]
        mfcc = mfcc * valid.to(mfcc.dtype)
        return torch.cat(
            [mfcc, _delta(mfcc, frame_lengths, self.sg1), _delta(mfcc, frame_lengths, self.sg2)], 1
        )

    def _contrast(self, magnitude: Tensor, mask: Tensor) -> Tensor:
        peaks, valleys = [], []
        for lo, hi, q in self._contrast_bands:
            band = magnitude[:, lo:hi]
            if q == 1:  # most bands: plain min / max, much cheaper than top-k
                valleys.append(band.amin(dim=1, keepdim=True))
                peaks.append(band.amax(dim=1, keepdim=True))
            else:
                valleys.append(torch.topk(band, q, dim=1, largest=False).values.mean(dim=1, keepdim=True))
                peaks.append(torch.topk(band, q, dim=1, largest=True).values.mean(dim=1, keepdim=True))
        # librosa applies power_to_db (80 dB floor from the array's max) to peak and valley separately
        return _power_to_db(torch.cat(peaks, 1), mask) - _power_to_db(torch.cat(valleys, 1), mask)

    def _rms(self, x: Tensor, n_frames: int) -> Tensor:
        half = self.cfg.n_fft // 2
        energy = nnf.avg_pool1d(nnf.pad(x * x, (half, half)), self.cfg.n_fft, stride=self.cfg.hop_length)
        return torch.sqrt(energy[..., :n_frames])

    def _zcr(self, wave: Tensor, lengths: Tensor, n_frames: int) -> Tensor:
        # librosa: |y| <= 1e-10 counts as zero (positive); edge padding adds no crossings, so only
        # transitions between two samples inside the clip count
        negative = (wave < -1e-10).to(wave.dtype)
        change = torch.abs(negative[:, 1:] - negative[:, :-1])
        idx = torch.arange(1, wave.shape[-1], device=wave.device)
        change = change * (idx[None, :] < lengths[:, None]).to(wave.dtype)
        change = nnf.pad(change, (1, 0))[:, None, :]
        half = self.cfg.n_fft // 2
        rate = nnf.conv1d(nnf.pad(change, (half, half)), self.zcr_kernel, stride=self.cfg.hop_length)
        return rate[..., :n_frames]

    def _f0(self, x: Tensor, n_frames: int, mask: Tensor) -> Tensor:
        """Batched ``librosa.yin`` (frame ``f0_frame_length``) -> ``[log2(f0 / f0_min), voicing]``."""
        cfg = self.cfg
        hop, n = cfg.hop_length, self._yin_n
        lo, hi = self._yin_min_period, self._yin_max_period
        xp = nnf.pad(x, (n // 2, n // 2))
        spec = nnf.conv1d(xp, self.yin_dft, stride=hop)[..., :n_frames]
        bins = spec.shape[1] // 2
        acf = torch.matmul(self.yin_idft, spec[:, :bins] ** 2 + spec[:, bins:] ** 2)  # [B, hi+1, F]
        prefix = nnf.conv1d(xp * xp, self.yin_prefix, stride=hop)[..., :n_frames]  # [B, hi, F]
        # d(k) = 2 (acf(0) - acf(k)) - sum_{m<k} y_m^2 for k = 1..hi, as librosa 0.11
        diff = 2.0 * (acf[:, :1] - acf[:, 1:]) - prefix
        cum_mean = (
            torch.cumsum(diff, dim=1) / torch.arange(1, hi + 1, device=x.device, dtype=x.dtype)[:, None]
        )
        cmnd = diff[:, lo - 1 :] / (cum_mean[:, lo - 1 :] + _TINY32)  # lags lo..hi
        # first trough below the threshold, else the global minimum (librosa.yin)
        edge = torch.cat([cmnd[:, :1], cmnd, cmnd[:, -1:]], dim=1)
        trough = (cmnd < edge[:, :-2]) & (cmnd <= edge[:, 2:])
        trough = torch.cat([cmnd[:, :1] < cmnd[:, 1:2], trough[:, 1:]], dim=1)
        below = trough & (cmnd < _YIN_THRESHOLD)
        first = torch.argmax(below.to(x.dtype), dim=1, keepdim=True)
        best = torch.where(below.any(dim=1, keepdim=True), first, torch.argmin(cmnd, dim=1, keepdim=True))
        # parabolic refinement (librosa._parabolic_interpolation: 0 at the edges or when it leaves the bin)
        prev, cur, nxt = cmnd[:, :-2], cmnd[:, 1:-1], cmnd[:, 2:]
        a = nxt + prev - 2 * cur
        b = (nxt - prev) / 2
        safe_a = torch.where(a == 0, torch.ones_like(a), a)
        shift = torch.where(torch.abs(b) >= torch.abs(a), torch.zeros_like(a), -b / safe_a)
        zero = torch.zeros_like(cmnd[:, :1])
        shift = torch.cat([zero, shift, zero], dim=1)
        period = lo + best.to(x.dtype) + shift.gather(1, best)
        f0 = cfg.sample_rate / period
        aperiodicity = cmnd.gather(1, best)
        energy_db = 10 * torch.log10(torch.clamp(acf[:, :1], min=_AMIN))
        loudest = torch.where(mask, energy_db, torch.full_like(energy_db, -1.0e4)).amax(dim=2, keepdim=True)
        audible = (energy_db > loudest - _VOICING_FLOOR_DB).to(x.dtype)
        voicing = torch.clamp(1.0 - aperiodicity, 0.0, 1.0) * audible
        return torch.cat([torch.log2(f0 / cfg.f0_min), voicing], dim=1)


def _f32(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _contrast_bands(cfg: FeatureConfig) -> list[tuple[int, int, int]]:
    """``(first_bin, end_bin, n_quantile_bins)`` per octave band, as librosa spectral_contrast picks."""
    freq = np.fft.rfftfreq(cfg.n_fft, 1.0 / cfg.sample_rate)
    n_bands = cfg.n_contrast_bands
    octa = np.zeros(n_bands + 2)
    octa[1:] = _CONTRAST_FMIN * (2.0 ** np.arange(0, n_bands + 1))
    bands = []
    for k, (f_low, f_high) in enumerate(zip(octa[:-1], octa[1:], strict=True)):
        current = np.logical_and(freq >= f_low, freq <= f_high)
        idx = np.flatnonzero(current)
        if k > 0:
            current[idx[0] - 1] = True
        if k == n_bands:
            current[idx[-1] + 1 :] = True
        sel = np.flatnonzero(current)
        q = max(int(np.rint(_CONTRAST_QUANTILE * current.sum())), 1)
        end = (
            int(sel[-1]) + 1 if k == n_bands else int(sel[-1])
        )  # librosa drops the top bin below the last band
        bands.append((int(sel[0]), end, q))
    return bands


# ---------------------------------------------------------------------------------------- batching
def extract_batched(
    extractor: FeatureExtractor,
    waves: Sequence[np.ndarray],
    *,
    batch_size: int = 32,
    progress: bool = True,
    description: str = "features",
) -> list[np.ndarray]:
    """Frame features ``[C, F_i]`` (float32 NumPy) for each waveform, computed in length-sorted batches.

    Sorting by length keeps padding (wasted compute) small; results come back in input order.
    Runs on the extractor's device.
    """
    from emovox.progress import progress_bar

    if batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
    out: list[np.ndarray | None] = [None] * len(waves)
    order = sorted(range(len(waves)), key=lambda i: int(np.asarray(waves[i]).size))
    device = next(iter(extractor.buffers()), torch.empty(0)).device
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task(description, total=len(waves))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                wave, lengths = pad_batch([waves[i] for i in idx])
                feats, frames = extractor(wave.to(device), lengths.to(device))
                feats_np, frames_np = feats.cpu().numpy(), frames.cpu().numpy()
                for j, i in enumerate(idx):
                    out[i] = np.ascontiguousarray(feats_np[j, :, : frames_np[j]])
                bar.advance(task, len(idx))
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- pooling
def pool_stats(feats: Tensor, frame_lengths: Tensor, stats: Sequence[str] = ("mean", "std")) -> Tensor:
    """Utterance statistics of ``feats [B, C, F]`` over each item's valid frames -> ``[B, C * len(stats)]``.

    Blocks follow ``stats`` (all channels of the first statistic, then the next): ``mean``;
    ``std`` (population, ddof=0); ``min``; ``max``; ``skew`` (third standardised moment,
    m3 / m2^1.5); ``kurtosis`` (excess, m4 / m2^2 - 3, as scipy.stats.kurtosis). A constant channel
    has std 0, skew 0 and kurtosis -3 (a tiny variance floor avoids 0/0).
    """
    for name in stats:
        if name not in POOL_STATS:
            raise ConfigError(f"features.stats: unknown statistic {name!r} (known: {', '.join(POOL_STATS)})")
    f = feats.shape[-1]
    valid = torch.arange(f, device=feats.device)[None, :] < frame_lengths[:, None]
    m = valid[:, None, :].to(feats.dtype)
    count = torch.clamp(m.sum(dim=2), min=1.0)
    mean = (feats * m).sum(dim=2) / count
    centred = (feats - mean[..., None]) * m
    m2 = (centred**2).sum(dim=2) / count
    var = torch.clamp(m2, min=1e-12)
    out: list[Tensor] = []
    for name in stats:
        if name == "mean":
            out.append(mean)
        elif name == "std":
            out.append(torch.sqrt(var))
        elif name == "min":
            out.append(
                torch.where(valid[:, None, :], feats, torch.full_like(feats, float("inf"))).amin(dim=2)
            )
        elif name == "max":
            out.append(
                torch.where(valid[:, None, :], feats, torch.full_like(feats, float("-inf"))).amax(dim=2)
            )
        elif name == "skew":
            out.append(((centred**3).sum(dim=2) / count) / var**1.5)
        else:
            out.append(((centred**4).sum(dim=2) / count) / var**2 - 3.0)
    return torch.cat(out, dim=1)


__all__ = [
    "EGEMAPS_DIM",
    "FEATURES_VERSION",
    "FEATURE_SETS",
    "POOL_STATS",
    "FeatureConfig",
    "FeatureExtractor",
    "egemaps",
    "egemaps_many",
    "egemaps_names",
    "extract_batched",
    "pad_batch",
    "pool_stats",
]
