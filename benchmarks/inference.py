"""Inference speed on CPU: emovox (PyTorch and ONNX Runtime) vs the classic librosa pipeline.

For one model bundle (``--model``, default ``default``) this measures, in one run:

* **single-clip latency** of the whole pipeline for one 3 s clip stored as a 48 kHz 16-bit WAV
  (as RAVDESS is distributed): decode the file, resample to 16 kHz, trim, features, model,
  probabilities. ``Recognizer.predict(path)``; median and p95 over ``--runs`` calls after
  ``--warmup`` calls, for the ``torch`` and ``onnx`` backends;
* **batched throughput** over ``--clips`` RAVDESS files (decode included): clips/s and the
  real-time factor RTF = processing seconds / audio seconds, ``Recognizer.predict(list)``;
* **live stream windows**: what the service's WebSocket stream does every ``hop`` (0.5 s) for the
  last 2 s of audio, ``emovox.serve_stream.analyse_window`` (voice activity detection, then the
  model when there is speech), on consecutive 2 s windows of real speech; with a
  speaker-normalised model also through a running :meth:`Recognizer.speaker_session`. It keeps up
  in real time when the p95 is under the hop;
* the **classic librosa pipeline** the popular notebooks use, for comparison: ``librosa.load``
  (resampling to 16 kHz), the means over time of 40 MFCCs, 12 chroma and 128 mel bands (180
  values) and an MLP of the same size as emovox's ``mlp`` family (hidden 256, 128) in PyTorch,
  clip by clip for latency and for throughput (with the MLP run on the whole batch).

Threads: ``--threads`` (default 2) for both torch (``torch.set_num_threads``) and onnxruntime
(intra-op threads, one inter-op thread, sequential execution). When the bundle has no
``model.onnx``, a copy of it is exported to a temporary folder first (the bundle is not modified).
If the default model is not installed, or with ``--random FAMILY``, a random-weight bundle of that
family with default hyper-parameters is benchmarked: speed does not depend on the weights.

    python benchmarks/inference.py                                  # the default model
    python benchmarks/inference.py --model runs/<run>/model --json-out inference.json
    python benchmarks/inference.py --random crnn --runs 200 --clips 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch
from rich.console import Console
from rich.table import Table

from emovox.audio import SAMPLE_RATE, load_audio
from emovox.bundle import ONNX_FILE, save_bundle
from emovox.errors import EmovoxError
from emovox.predict import Recognizer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this is run
from _common import DEFAULT_CORPUS, audio_files, cpu_model, load_average, machine  # noqa: E402

console = Console(stderr=True)

TARGET_ORT_MEDIAN_MS = 15.0
TARGET_RTF = 0.005


# --------------------------------------------------------------------------- inputs


def random_bundle(family: str, folder: Path) -> Path:
    """A random-weight bundle of ``family`` with the default features and hyper-parameters."""
    from emovox.corpora import EMOTIONS
    from emovox.features import FeatureConfig
    from emovox.models import EmotionNet

    torch.manual_seed(0)
    cfg = FeatureConfig() if family != "mlp" else FeatureConfig(sets=("mfcc", "chroma", "logmel"))
    net = EmotionNet(cfg, family, None, list(EMOTIONS))
    card = {"data": "none (random weights, for speed only)", "protocol": "none", "licence": "CC0-1.0"}
    return save_bundle(net, folder / f"random-{family}", metrics={}, card=card)


def ensure_onnx(bundle: Path, work: Path) -> Path:
    """``bundle`` if it has model.onnx, else a copy of it with one exported into it."""
    if (bundle / ONNX_FILE).is_file():
        return bundle
    from emovox.export import export_bundle

    copy = work / f"{bundle.name}-onnx"
    shutil.copytree(bundle, copy)
    console.print(f"exporting {bundle} to ONNX in a temporary copy (the bundle is not modified)...")
    started = time.perf_counter()
    result = export_bundle(copy)[0]
    console.print(
        f"  exported in {time.perf_counter() - started:.0f} s, "
        f"max |onnxruntime - PyTorch| = {result.max_abs_diff:.1e}"
    )
    return copy


def three_second_wav(source: Path, work: Path, sr: int = 48_000) -> Path:
    """The first 3 s of ``source`` (padded if shorter) as a 16-bit WAV at ``sr``, as users' files are."""
    wave = load_audio(source)
    wave = np.pad(wave, (0, max(0, 3 * SAMPLE_RATE - wave.size)))[: 3 * SAMPLE_RATE]
    path = work / "clip_3s_48k.wav"
    sf.write(path, soxr.resample(wave, SAMPLE_RATE, sr), sr, subtype="PCM_16")
    return path


# --------------------------------------------------------------------------- classic pipeline


def librosa_vector(path: Path) -> np.ndarray:
    """The classic 180-value summary: mean MFCC (40), chroma (12) and mel (128) over time."""
    import librosa

    y, sr = librosa.load(path, sr=SAMPLE_RATE)
    stft = np.abs(librosa.stft(y))
    return np.concatenate(
        [
            librosa.feature.mfcc(y=y, sr=sr, n_mfcc=40).mean(axis=1),
            librosa.feature.chroma_stft(S=stft, sr=sr).mean(axis=1),
            librosa.feature.melspectrogram(y=y, sr=sr).mean(axis=1),
        ]
    ).astype(np.float32)


def classic_mlp(n_labels: int = 8) -> torch.nn.Module:
    from emovox.models import MLP

    torch.manual_seed(0)
    return MLP(180, n_labels).eval()


# --------------------------------------------------------------------------- timing


def latency(fn: Callable[[], Any], runs: int, warmup: int) -> dict[str, float]:
    """Median / p95 / mean milliseconds of ``fn()`` over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return {
        "median_ms": statistics.median(times),
        "p95_ms": float(np.percentile(times, 95)),
        "mean_ms": statistics.fmean(times),
        "runs": runs,
    }


def throughput(fn: Callable[[], Any], n_clips: int, audio_s: float, repeats: int) -> dict[str, float]:
    """Best of ``repeats`` timed calls of ``fn()`` (one warm-up first) as clips/s and RTF."""
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return {"seconds": best, "clips_per_s": n_clips / best, "rtf": best / audio_s, "clips": n_clips}


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    load_before = load_average()
    paths = audio_files(args.corpus, args.clips)
    if not paths:
        raise EmovoxError(f"{args.corpus}: no audio files (use --corpus)")
    if args.random:
        console.print(f"benchmarking a random-weight {args.random} bundle (speed does not depend on weights)")
        bundle = random_bundle(args.random, work)
    else:
        try:
            bundle = Path(Recognizer.load(args.model).meta["path"])
        except EmovoxError as exc:
            if args.model != "default":
                raise
            console.print(
                f"[yellow]{exc}[/]\n[yellow]falling back to a random-weight crnn bundle with default "
                "hyper-parameters (same speed as a trained one); pass --model to time a real bundle[/]"
            )
            bundle = random_bundle("crnn", work)
    onnx_bundle = ensure_onnx(bundle, work)
    recognizers = {
        "torch": Recognizer.load(bundle, backend="torch", threads=args.threads, batch_size=args.batch_size),
        "onnx": Recognizer.load(
            onnx_bundle, backend="onnx", threads=args.threads, batch_size=args.batch_size
        ),
    }
    meta = recognizers["torch"].meta
    clip = three_second_wav(paths[0], work)
    audio_s = sum(sf.info(p).duration for p in paths)
    console.print(
        f"model {bundle} ({meta['model']['family']}, {len(meta['model']['labels'])} labels); "
        f"{len(paths)} clips, {audio_s:.0f} s of audio from {args.corpus}; {args.threads} threads; "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}; {cpu_model()}"
    )

    results: dict[str, Any] = {}
    for name, rec in recognizers.items():
        console.print(f"timing emovox {name}...")
        results[f"emovox {name}"] = {
            "single": latency(lambda rec=rec: rec.predict(clip), args.runs, args.warmup),
            "batch": throughput(lambda rec=rec: rec.predict(list(paths)), len(paths), audio_s, args.repeats),
        }
    live = live_windows(recognizers["torch"], paths, args.runs)
    console.print("timing the librosa pipeline...")
    mlp = classic_mlp(len(meta["model"]["labels"]))

    def classic_one() -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(mlp(torch.from_numpy(librosa_vector(clip))[None]), -1).numpy()

    def classic_batch() -> np.ndarray:
        features = np.stack([librosa_vector(p) for p in paths])
        with torch.inference_mode():
            return torch.softmax(mlp(torch.from_numpy(features)), -1).numpy()

    results["librosa + MLP"] = {
        "single": latency(classic_one, max(10, args.runs // 4), min(args.warmup, 3)),
        "batch": throughput(classic_batch, len(paths), audio_s, 1),
    }
    return {
        "date": date.today().isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(load_before),
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "threads": args.threads,
        "model": {
            "path": "random " + (args.random or "crnn") if bundle.parent == work else str(bundle),
            "family": meta["model"]["family"],
            "params": meta["model"].get("params"),
            "features": meta["model"]["features"].get("sets"),
        },
        "single_clip": {"file": "3.0 s, 48 kHz 16-bit WAV", "source": str(paths[0])},
        "batch": {"clips": len(paths), "audio_s": audio_s, "batch_size": args.batch_size},
        "results": results,
        "live": live,
    }


def live_windows(rec: Recognizer, paths: Sequence[Path], runs: int, window_s: float = 2.0) -> dict[str, Any]:
    """Latency of the live stream's per-hop work on ``runs`` consecutive 2 s windows of speech."""
    from emovox.serve_stream import analyse_window

    console.print("timing live stream windows...")
    audio = np.concatenate([load_audio(p) for p in paths])
    size = int(window_s * SAMPLE_RATE)
    windows = [audio[i : i + size] for i in range(0, audio.size - size, size // 4)][: max(runs, 8)]
    out: dict[str, Any] = {"window_s": window_s, "hop_s": 0.5, "windows": len(windows)}
    ways: dict[str, Callable[[], Any]] = {"plain": lambda: None}
    if rec.speaker_normalized:
        ways["session"] = rec.speaker_session
    for way, make in ways.items():
        session = make()
        times, spoken = [], 0
        for k, w in enumerate(windows):
            t0 = time.perf_counter()
            message = analyse_window(rec, k * 0.5 + window_s, w, session)
            times.append(1000 * (time.perf_counter() - t0))
            spoken += bool(message.get("speech"))
        out[way] = {
            "median_ms": statistics.median(times),
            "p95_ms": float(np.percentile(times, 95)),
            "max_ms": max(times),
            "speech_windows": spoken,
        }
    return out


def report(data: dict[str, Any]) -> Table:
    table = Table(title=f"inference on CPU ({data['threads']} threads), model {data['model']['path']}")
    for column in ("pipeline", "3 s clip median", "p95", f"{data['batch']['clips']} clips", "RTF"):
        table.add_column(column, justify="left" if column == "pipeline" else "right")
    for name, r in data["results"].items():
        table.add_row(
            name,
            f"{r['single']['median_ms']:.1f} ms",
            f"{r['single']['p95_ms']:.1f} ms",
            f"{r['batch']['clips_per_s']:.1f} clips/s",
            f"{r['batch']['rtf']:.4f}",
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="bundle folder, run folder or 'default'")
    parser.add_argument(
        "--random", metavar="FAMILY", help="benchmark a random-weight bundle of FAMILY instead"
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="audio folder (recursive)")
    parser.add_argument("--clips", type=int, default=64, help="clips for the throughput test")
    parser.add_argument("--runs", type=int, default=100, help="timed single-clip calls per backend")
    parser.add_argument("--warmup", type=int, default=10, help="untimed single-clip calls first")
    parser.add_argument("--repeats", type=int, default=3, help="batched passes per backend (best is kept)")
    parser.add_argument("--batch-size", type=int, default=16, help="Recognizer batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="emovox-bench-") as tmp:
        try:
            data = run(args, Path(tmp))
        except EmovoxError as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
    Console().print(report(data))
    live = data["live"]
    for way in ("plain", "session"):
        if way in live:
            r = live[way]
            Console().print(
                f"live {live['window_s']:g} s window every {live['hop_s']:g} s ({way}, "
                f"{live['windows']} windows, {r['speech_windows']} with speech): median "
                f"{r['median_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, max {r['max_ms']:.1f} ms: "
                f"keeps up in real time: {r['p95_ms'] < 1000 * live['hop_s']}"
            )
    ort_ms = data["results"]["emovox onnx"]["single"]["median_ms"]
    best_rtf = min(r["batch"]["rtf"] for k, r in data["results"].items() if k.startswith("emovox"))
    verdict = {True: "[green]met[/]", False: "[red]missed[/]"}
    Console().print(
        f"targets: ONNX median < {TARGET_ORT_MEDIAN_MS:g} ms: {verdict[ort_ms < TARGET_ORT_MEDIAN_MS]} "
        f"({ort_ms:.1f} ms); batched RTF < {TARGET_RTF:g}: {verdict[best_rtf < TARGET_RTF]} ({best_rtf:.4f})"
    )
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(data, indent=2) + "\n")
        Console().print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
