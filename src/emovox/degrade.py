"""Channel and noise degradations of 16 kHz mono float32 waveforms.

One implementation serves two purposes: the test conditions of ``benchmarks/robustness.py``
(:data:`CONDITIONS`, :func:`apply_condition`) and training augmentation
(:class:`emovox.augment.WaveAugment` draws from the same functions with random parameters).

* :func:`add_noise`: white, pink or brown noise at an exact SNR (noise shaped in the frequency
  domain, power ``1 / f ** alpha``);
* :func:`add_babble`: a sum of other talkers' clips at an exact SNR;
* :func:`telephone`: band-pass 300-3400 Hz, an 8 kHz round trip (soxr), optional 8-bit mu-law;
* :func:`codec`: MP3 or Opus encoded and decoded in memory by libsndfile at about a target bit rate;
* :func:`gain`: a level change in dB, clipped to [-1, 1] as a real device clips;
* :func:`reverb`: convolution with a synthetic room impulse response (exponentially decaying noise);
* :func:`speed`: speed perturbation (tempo and pitch together, by resampling).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence

import numpy as np

SR = 16_000
_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _mix_at_snr(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    signal, level = _rms(wave), _rms(noise)
    if signal == 0.0 or level == 0.0:
        return wave.astype(np.float32, copy=True)
    scale = signal / (level * 10.0 ** (snr_db / 20.0))
    return (wave + scale * noise).astype(np.float32)


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of white / pink / brown noise (unit-free; callers scale it)."""
    if color not in _COLORS:
        raise ValueError(f"noise colour: expected one of {', '.join(_COLORS)}, got {color!r}")
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    spectrum /= freqs ** (_COLORS[color] / 2.0)
    return np.fft.irfft(spectrum, n=n)


def add_noise(
    wave: np.ndarray, snr_db: float, color: str = "white", *, rng: np.random.Generator
) -> np.ndarray:
    """``wave`` plus ``color`` noise at ``snr_db`` dB SNR (relative to the clip's RMS)."""
    return _mix_at_snr(wave, colored_noise(wave.size, color, rng), snr_db)


def add_babble(
    wave: np.ndarray,
    others: Sequence[np.ndarray],
    snr_db: float,
    *,
    talkers: int = 4,
    rng: np.random.Generator,
) -> np.ndarray:
    """``wave`` plus babble at ``snr_db``: ``talkers`` other clips, each looped to length, RMS-equalised."""
    if not others:
        return wave.astype(np.float32, copy=True)
    babble = np.zeros(wave.size, dtype=np.float64)
    for j in rng.choice(len(others), size=min(talkers, len(others)), replace=False):
        other = np.asarray(others[int(j)], dtype=np.float64)
        if other.size == 0 or _rms(other) == 0.0:
            continue
        start = int(rng.integers(0, other.size))
        talker = np.resize(np.roll(other, -start), wave.size)
        babble += talker / _rms(talker)
    return _mix_at_snr(wave, babble, snr_db)


@functools.lru_cache(maxsize=4)
def _bandpass(low: float, high: float, sr: int) -> np.ndarray:
    from scipy.signal import butter

    return butter(4, [low, high], btype="bandpass", fs=sr, output="sos")


def telephone(wave: np.ndarray, *, mulaw: bool = True, sr: int = SR) -> np.ndarray:
    """Narrow-band telephone channel: 300-3400 Hz band-pass, 8 kHz round trip, optional 8-bit mu-law."""
    import soxr
    from scipy.signal import sosfilt

    narrow = soxr.resample(sosfilt(_bandpass(300.0, 3400.0, sr), wave).astype(np.float32), sr, 8000)
    if mulaw:
        mu = 255.0
        x = np.clip(narrow, -1.0, 1.0)
        code = np.round((np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu) + 1) / 2 * mu)
        y = 2 * code / mu - 1
        narrow = np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu
    out = soxr.resample(narrow.astype(np.float32), 8000, sr)
    return _fit_length(out.astype(np.float32), wave.size)


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if x.size >= n else np.pad(x, (0, n - x.size))


# libsndfile's "compression level" -> bit rate is codec- and rate-specific: measured once per target
_FORMATS = {"mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}


def _encode(wave: np.ndarray, fmt: str, level: float, sr: int) -> bytes:
    import soundfile as sf

    container, subtype = _FORMATS[fmt]
    buf = io.BytesIO()
    mode = "CONSTANT" if fmt == "mp3" else None  # libsndfile: Opus has no constant-rate mode
    sf.write(buf, np.clip(wave, -1.0, 1.0), sr, format=container, subtype=subtype, compression_level=level,
             bitrate_mode=mode)  # fmt: skip
    return buf.getvalue()


@functools.lru_cache(maxsize=32)
def codec_level(fmt: str, kbps: float, sr: int = SR) -> tuple[float, float]:
    """The libsndfile compression level giving about ``kbps`` for ``fmt``, and the rate it gives.

    Found by bisection on 4 s of pink noise (a stand-in with speech-like spectrum tilt)."""
    if fmt not in _FORMATS:
        raise ValueError(f"codec: expected mp3 or opus, got {fmt!r}")
    probe = colored_noise(4 * sr, "pink", np.random.default_rng(0))
    probe = (0.1 * probe / _rms(probe)).astype(np.float32)

    def rate(level: float) -> float:
        return len(_encode(probe, fmt, level, sr)) * 8 / 4.0 / 1000.0

    lo, hi = 0.0, 0.99  # rate falls as the level rises
    for _ in range(12):
        mid = (lo + hi) / 2
        if rate(mid) > kbps:
            lo = mid
        else:
            hi = mid
    level = (lo + hi) / 2
    return level, rate(level)


def codec(wave: np.ndarray, fmt: str, kbps: float, *, sr: int = SR) -> np.ndarray:
    """``wave`` encoded as MP3 or Opus at about ``kbps`` kbit/s and decoded back, in memory."""
    import soundfile as sf

    level, _ = codec_level(fmt, float(kbps), sr)
    data, rate = sf.read(io.BytesIO(_encode(wave, fmt, level, sr)), dtype="float32")
    if data.ndim > 1:
        data = data.mean(axis=1)
    if rate != sr:
        import soxr

        data = soxr.resample(data, rate, sr)
    return _fit_length(np.asarray(data, dtype=np.float32), wave.size)


def gain(wave: np.ndarray, db: float) -> np.ndarray:
    """Level change by ``db`` dB, clipped to [-1, 1] (a loud talker on a device that clips)."""
    return np.clip(wave * np.float32(10.0 ** (db / 20.0)), -1.0, 1.0).astype(np.float32)


def reverb(wave: np.ndarray, rt60: float, *, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """Convolution with a synthetic impulse response: direct path + noise decaying 60 dB in ``rt60`` s."""
    from scipy.signal import fftconvolve

    n = max(1, int(rt60 * sr))
    t = np.arange(n) / sr
    ir = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60) * 0.3
    ir[: int(0.003 * sr)] = 0.0  # 3 ms before the first reflection
    ir[0] = 1.0
    out = fftconvolve(wave, ir)[: wave.size]
    peak = np.abs(out).max()
    ref = np.abs(wave).max()
    if peak > 0 and ref > 0:
        out *= ref / peak
    return out.astype(np.float32)


def speed(wave: np.ndarray, factor: float, *, sr: int = SR) -> np.ndarray:
    """Speed perturbation: ``factor`` > 1 is faster and higher (resampling, Kaldi-style)."""
    import soxr

    return soxr.resample(wave, sr * factor, sr).astype(np.float32)


#: Degradations of the recording channel (what validation copies draw from, ``augment.val_copies``).
DEGRADATIONS = ("telephone", "noise", "babble", "codec", "gain", "reverb")
#: Families :func:`random_channel` draws from (training copies of the encoder family): the
#: degradations plus ``speed``, a perturbation of the voice itself (one speed factor per session
#: makes a pseudo-speaker, Kaldi-style).
CHANNELS = (*DEGRADATIONS, "speed")


def random_channel(
    channels: Sequence[str], rng: np.random.Generator, *, speed_range: tuple[float, float] = (0.9, 1.1)
) -> tuple[str, Callable[[np.ndarray, np.random.Generator, Sequence[np.ndarray]], np.ndarray]]:
    """One channel, drawn once per recording session: its name and a function of (wave, rng, others)
    that degrades each clip with per-clip random parameters in the issue's ranges (noise 0-20 dB SNR
    white/pink/brown, babble 0-20 dB, telephone with or without mu-law, MP3 32-96 / Opus 12-32
    kbit/s, gain -30..+10 dB clipped, reverberation RT60 0.2-0.8 s; ``speed``: one factor in
    ``speed_range`` for the whole session)."""
    name = str(rng.choice(list(channels)))
    if name not in CHANNELS:
        raise ValueError(f"channel: expected one of {', '.join(CHANNELS)}, got {name!r}")
    if name == "telephone":
        mulaw = bool(rng.integers(2))
        return name, lambda w, r, o: telephone(w, mulaw=mulaw)
    if name == "noise":
        color = str(rng.choice(list(_COLORS)))
        return name, lambda w, r, o: add_noise(w, float(r.uniform(0, 20)), color, rng=r)
    if name == "babble":
        return name, lambda w, r, o: add_babble(w, o, float(r.uniform(0, 20)), rng=r)
    if name == "codec":
        fmt = str(rng.choice(["mp3", "opus"]))
        rates = [32, 48, 64, 96] if fmt == "mp3" else [12, 16, 24, 32]  # a few rates: one bisection each
        kbps = int(rng.choice(rates))
        return name, lambda w, r, o: codec(w, fmt, kbps)
    if name == "gain":
        return name, lambda w, r, o: gain(w, float(r.uniform(-30, 10)))
    if name == "speed":
        factor = float(rng.uniform(*speed_range))
        return name, lambda w, r, o: speed(w, factor)
    return name, lambda w, r, o: reverb(w, float(r.uniform(0.2, 0.8)), rng=r)


#: Test conditions of the robustness benchmark: name -> (description, function(wave, rng, others)).
CONDITIONS: dict[str, tuple[str, Callable[..., np.ndarray]]] = {
    "clean": ("as recorded", lambda w, rng, others: w),
    "telephone": ("300-3400 Hz, 8 kHz, mu-law", lambda w, rng, others: telephone(w)),
    "white10": ("white noise, 10 dB SNR", lambda w, rng, others: add_noise(w, 10.0, "white", rng=rng)),
    "babble10": ("4-talker babble, 10 dB SNR", lambda w, rng, others: add_babble(w, others, 10.0, rng=rng)),
    "gain-20": ("-20 dB gain", lambda w, rng, others: gain(w, -20.0)),
    "mp3_64": ("MP3 ~64 kbit/s", lambda w, rng, others: codec(w, "mp3", 64)),
    "opus24": ("Opus ~24 kbit/s", lambda w, rng, others: codec(w, "opus", 24)),
}


def apply_condition(
    name: str, wave: np.ndarray, *, rng: np.random.Generator, others: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """``wave`` under the named test condition (:data:`CONDITIONS`)."""
    if name not in CONDITIONS:
        raise ValueError(f"condition: expected one of {', '.join(CONDITIONS)}, got {name!r}")
    return np.asarray(CONDITIONS[name][1](np.asarray(wave, dtype=np.float32), rng, others), dtype=np.float32)


__all__ = [
    "CHANNELS",
    "CONDITIONS",
    "DEGRADATIONS",
    "random_channel",
    "add_babble",
    "add_noise",
    "apply_condition",
    "codec",
    "codec_level",
    "colored_noise",
    "gain",
    "reverb",
    "speed",
    "telephone",
]
