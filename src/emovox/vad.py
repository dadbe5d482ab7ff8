"""Voice activity detection: speech regions in 16 kHz audio (Silero VAD, else webrtcvad).

:func:`vad` gives the process-wide :class:`VoiceActivityDetector`, loaded on first use. It runs
Silero VAD's sequence ONNX model through onnxruntime, or webrtcvad if Silero cannot be loaded;
:mod:`emovox.timeline` and the live stream's speech check use it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from emovox.audio import SAMPLE_RATE


class VoiceActivityDetector:
    """Speech regions in 16 kHz audio.

    Uses Silero VAD's sequence ONNX model through onnxruntime (no torch.jit, no per-call state,
    so it is thread-safe); falls back to webrtcvad if Silero cannot be loaded.
    """

    def __init__(self) -> None:
        self.name: str
        try:
            self._silero = _load_silero()
            self.name = "silero"
        except Exception:  # any failure to import/load silero: use webrtcvad instead
            import webrtcvad

            self._silero = None
            self._webrtc = webrtcvad.Vad(2)
            self.name = "webrtcvad"

    def regions(
        self, wave: np.ndarray, *, min_speech: float = 0.25, min_silence: float = 0.1, threshold: float = 0.5
    ) -> list[tuple[int, int]]:
        """Speech regions ``(start, end)`` in samples of a 16 kHz mono float32 wave."""
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        if self._silero is not None:
            from silero_vad.sequence_vad import get_speech_timestamps_sequence

            stamps = get_speech_timestamps_sequence(
                wave,
                self._silero,
                threshold=threshold,
                sampling_rate=SAMPLE_RATE,
                min_speech_duration_ms=int(min_speech * 1000),
                min_silence_duration_ms=int(min_silence * 1000),
            )
            return [(int(s["start"]), int(s["end"])) for s in stamps]
        return self._webrtc_regions(wave, min_speech=min_speech, min_silence=min_silence)

    def _webrtc_regions(
        self, wave: np.ndarray, *, min_speech: float, min_silence: float
    ) -> list[tuple[int, int]]:
        frame = SAMPLE_RATE * 30 // 1000
        pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2")
        flags = [
            self._webrtc.is_speech(pcm[i : i + frame].tobytes(), SAMPLE_RATE)
            for i in range(0, pcm.size - frame + 1, frame)
        ]
        regions: list[list[int]] = []
        for k, speech in enumerate(flags):
            if not speech:
                continue
            start, end = k * frame, (k + 1) * frame
            if regions and start - regions[-1][1] <= min_silence * SAMPLE_RATE:
                regions[-1][1] = end
            else:
                regions.append([start, end])
        return [(a, b) for a, b in regions if b - a >= min_speech * SAMPLE_RATE]


def _load_silero() -> Any:
    """Silero's sequence ONNX model. Importing silero_vad sets torch to one thread, so restore it."""
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    finally:
        torch.set_num_threads(threads)
    return load_silero_vad(sequence=True)


_VAD: VoiceActivityDetector | None = None
_VAD_LOCK = threading.Lock()


def vad() -> VoiceActivityDetector:
    """The process-wide voice activity detector, loaded on first use."""
    global _VAD
    with _VAD_LOCK:
        if _VAD is None:
            _VAD = VoiceActivityDetector()
        return _VAD
