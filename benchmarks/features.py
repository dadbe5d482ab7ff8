"""Feature extraction speed: librosa file by file (the classic notebooks) vs emovox batched.

Both sides compute the same features for every clip of a corpus (default: RAVDESS, 1200 FLAC
files at 16 kHz): 40 MFCCs + delta + delta-delta, 12 chroma, spectral contrast (6 octave bands)
and a 64-band log-mel spectrogram, with n_fft 512, 25 ms windows, 10 ms hop.

* **librosa**: per file ``librosa.load(sr=16000)`` then ``feature.mfcc`` + ``feature.delta`` (x2),
  ``feature.chroma_stft``, ``feature.spectral_contrast`` and ``feature.melspectrogram`` +
  ``power_to_db``, as the popular notebooks do;
* **emovox**: decode with ``emovox.audio.iter_load`` (``load_audio`` on ``--decode-workers``
  threads, as ``emovox`` itself loads a corpus), then one ``FeatureExtractor`` with sets
  ``logmel, mfcc, chroma, contrast`` over length-sorted padded batches (one shared STFT), on CPU
  and, when available, CUDA.

Decoding is timed on both sides; the run also prints the ceiling decoding puts on the ratio (the
librosa time over emovox's decoding time alone). Both get one warm-up clip first (librosa's numba
JIT, torch's kernel selection). Prints files/s, the speed-up and a markdown line for BENCHMARKS.md.

    python benchmarks/features.py                       # whole corpus, CPU (+ CUDA when present)
    python benchmarks/features.py --limit 100 --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from emovox.audio import default_workers, iter_load, load_audio
from emovox.features import FeatureConfig, FeatureExtractor, extract_batched

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this is run
from _common import DEFAULT_CORPUS, audio_files, cpu_model  # noqa: E402

SETS = ("logmel", "mfcc", "chroma", "contrast")
console = Console()


def librosa_features(path: Path, cfg: FeatureConfig) -> list[np.ndarray]:
    """The classic per-file recipe, with the same parameters as ``cfg``."""
    import librosa

    y, sr = librosa.load(path, sr=cfg.sample_rate)
    stft = dict(n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length)
    mel = dict(n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=cfg.n_mfcc, **mel, **stft)
    return [
        mfcc,
        librosa.feature.delta(mfcc),
        librosa.feature.delta(mfcc, order=2),
        librosa.feature.chroma_stft(y=y, sr=sr, n_chroma=cfg.n_chroma, **stft),
        librosa.feature.spectral_contrast(y=y, sr=sr, n_bands=cfg.n_contrast_bands, **stft),
        librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, **mel, **stft)),
    ]


def run_librosa(paths: list[Path], cfg: FeatureConfig) -> float:
    """Seconds for the librosa recipe over ``paths`` (after one warm-up file)."""
    librosa_features(paths[0], cfg)
    start = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("librosa", total=len(paths))
        for path in paths:
            librosa_features(path, cfg)
            bar.advance(task)
    return time.perf_counter() - start


def run_emovox(
    paths: list[Path], cfg: FeatureConfig, device: str, batch_size: int, workers: int
) -> tuple[float, float]:
    """(total seconds, of which decoding) for emovox on ``device`` (after one warm-up batch)."""
    extractor = FeatureExtractor(cfg).eval().to(device)
    extract_batched(
        extractor, [load_audio(p) for p in paths[:batch_size]], batch_size=batch_size, progress=False
    )
    _sync(device)
    start = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"decode ({device}, {workers} threads)", total=len(paths))
        waves = []
        for _path, wave in iter_load(paths, workers=workers):
            if isinstance(wave, Exception):
                raise wave
            waves.append(wave)
            bar.advance(task)
    decoded = time.perf_counter()
    feats = extract_batched(extractor, waves, batch_size=batch_size, description=f"emovox ({device})")
    _sync(device)
    end = time.perf_counter()
    assert len(feats) == len(paths) and feats[0].shape[0] == cfg.num_channels
    return end - start, decoded - start


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help="folder of audio files (recursive)"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N files")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda or auto (CPU, plus CUDA when torch.cuda.is_available())"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument(
        "--decode-workers", type=int, default=default_workers(), help="emovox decoding threads"
    )
    args = parser.parse_args(argv)

    if not args.corpus.is_dir():
        console.print(f"[red]error:[/] corpus folder not found: {args.corpus} (use --corpus)")
        return 2
    paths = audio_files(args.corpus, args.limit)
    if not paths:
        console.print(f"[red]error:[/] no audio files under {args.corpus}")
        return 2
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    torch.set_num_threads(args.threads)
    cfg = FeatureConfig(sets=SETS)
    audio_s = sum(load_audio(p).size for p in paths) / cfg.sample_rate
    console.print(
        f"{len(paths)} files ({audio_s / 60:.1f} min of audio) from {args.corpus}; sets {', '.join(SETS)} "
        f"({cfg.num_channels} channels); torch {torch.__version__}, {args.threads} CPU threads; {cpu_model()}"
    )

    lib_s = run_librosa(paths, cfg)
    lib_rate = len(paths) / lib_s
    console.print(f"librosa, file by file: {lib_s:7.1f} s  {lib_rate:8.1f} files/s")
    cells = [f"librosa {lib_rate:.1f} files/s"]
    for device in devices:
        total, decode = run_emovox(paths, cfg, device, args.batch_size, args.decode_workers)
        rate = len(paths) / total
        console.print(
            f"emovox batched ({device:4s}): {total:7.1f} s  {rate:8.1f} files/s  "
            f"({rate / lib_rate:.1f}x librosa; "
            f"decoding {decode:.1f} s of it on {args.decode_workers} threads; "
            f"with free features the ratio could reach at most {lib_s / decode:.1f}x)"
        )
        cells.append(f"emovox {device} {rate:.1f} files/s (**{rate / lib_rate:.1f}x**)")
    machine = (
        cpu_model()
        + f", {args.threads} torch threads, {args.decode_workers} decoding threads"
        + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else "")
    )
    console.print("\nmarkdown:")
    print(
        f"| features: MFCC+Δ+ΔΔ, chroma, contrast, log-mel; {len(paths)} files of {args.corpus.name} "
        f"| {' | '.join(cells)} | {machine} | batch {args.batch_size} | {date.today().isoformat()} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
