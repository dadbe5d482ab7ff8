"""Cost of extracting frozen-encoder hidden states (what the encoder family caches), per clip.

    python benchmarks/encoder_extraction.py     # needs models/whisper-base and models/whisper-tiny.en

96 RAVDESS clips of actors 01-02 (trimmed as in training), batches of 16, 1 and 2 torch threads,
after an untimed warm-up batch.
"""

from __future__ import annotations

import glob
import time

import torch

from emovox.audio import load_audio
from emovox.encoders import load_encoder
from emovox.features import extract_batched

files = sorted(glob.glob("../shared/corpora/ravdess/Actor_0[12]/*.flac"))[:96]
waves = [load_audio(f, trim=True) for f in files]
secs = sum(w.size for w in waves) / 16000
for name in ("whisper-base", "whisper-tiny.en"):
    enc = load_encoder(f"models/{name}", "all")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        extract_batched(enc, waves[:8], batch_size=16, progress=False)
        t = time.perf_counter()
        extract_batched(enc, waves, batch_size=16, progress=False)
        dt = time.perf_counter() - t
        per_clip = 1000 * dt / len(waves)
        print(f"{name} threads {threads}: {len(waves)} clips ({secs:.0f} s audio) in {dt:.1f} s")
        print(f"    {per_clip:.0f} ms per clip, real-time factor {dt / secs:.4f}")
