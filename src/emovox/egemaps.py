"""eGeMAPS: the 88 eGeMAPSv02 functionals of a clip, computed by openSMILE (optional extra).

openSMILE (``pip install 'emovox[egemaps]'``) is imported on first use and its extractor kept; a
missing install is a :class:`~emovox.errors.ConfigError` that gives the command. The SVM baseline
(:mod:`emovox.svm`) trains on these; :mod:`emovox.features` re-exports them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from emovox.errors import AudioError, ConfigError

#: Number of eGeMAPSv02 functionals.
EGEMAPS_DIM = 88


@functools.lru_cache(maxsize=1)
def _smile() -> Any:
    """openSMILE's eGeMAPSv02 functionals extractor, built once."""
    try:
        import opensmile
    except ImportError:
        raise ConfigError(
            "egemaps: the eGeMAPS features need openSMILE, which is not installed; "
            "install it with: pip install 'emovox[egemaps]'"
        ) from None
    return opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals
    )


def egemaps_names() -> list[str]:
    """The 88 eGeMAPSv02 functional names, in the order :func:`egemaps` returns them."""
    return list(_smile().feature_names)


def egemaps(wave: np.ndarray, sr: int = 16000) -> np.ndarray:
    """The 88 eGeMAPSv02 functionals of one mono waveform (openSMILE ``process_signal``), float32.

    Raises :class:`ConfigError` when openSMILE (the optional extra ``emovox[egemaps]``) is
    missing, :class:`AudioError` for an empty or non-finite signal.
    """
    arr = np.asarray(wave, dtype=np.float32).reshape(-1)
    if arr.size == 0:
        raise AudioError("<array>: audio has no samples")
    if not np.isfinite(arr).all():
        raise AudioError("<array>: audio contains NaN or infinite samples")
    frame = _smile().process_signal(arr, sr)
    values = frame.to_numpy(dtype=np.float32).reshape(-1)
    if values.size != EGEMAPS_DIM:
        raise ConfigError(f"egemaps: openSMILE returned {values.size} values instead of {EGEMAPS_DIM}")
    return values


def egemaps_many(waves: Sequence[np.ndarray], sr: int = 16000, *, progress: bool = True) -> np.ndarray:
    """``[N, 88]`` eGeMAPS functionals for many waveforms, with a progress bar (openSMILE is per clip)."""
    from emovox.progress import progress_bar

    out = np.zeros((len(waves), EGEMAPS_DIM), dtype=np.float32)
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("eGeMAPS", total=len(waves))
        for i, w in enumerate(waves):
            out[i] = egemaps(w, sr)
            bar.advance(task)
    return out
