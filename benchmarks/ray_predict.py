"""Batch prediction throughput: the local `emovox predict` vs `emovox predict --ray` with N workers.

For ``--files`` audio files of ``--corpus`` (default: the first 1200 RAVDESS clips in path order
from ../shared/corpora/ravdess) this measures, in one run, files per second of:

* **local emovox predict**: ``python -m emovox.cli predict FILES --json --model M`` in a fresh
  process, as a user runs it (torch's default threads, i.e. all cores; decoding, features and the
  model in one process, chunks of 32 files). Its wall time includes the interpreter start, the
  torch import and the model load;
* **ray N workers** for each N of ``--workers`` (default ``1,2``): :func:`emovox.distributed.
  predict_files` into a fresh Parquet folder with ``workers=N`` actors of one CPU (one torch thread)
  each and ``--batch-size`` files per batch. The wall time covers listing the files, starting the
  actors, loading the model in each, predicting and committing the part files; the Ray cluster's
  own start-up (``ray.init``) is timed separately as ``ray_startup_s``. One local cluster with
  ``max(--workers)`` CPUs is started, unless ``--address`` names a running cluster (or this process
  is already connected).

Every Ray run is checked against the local run's JSON: the share of files given the same emotion
(``agreement_with_local``, 1.0 expected) and the largest probability difference.

    python benchmarks/ray_predict.py                                   # 1200 clips, local vs 1 and 2 workers
    python benchmarks/ray_predict.py --files 40 --json-out ray.json    # a smoke run
    python benchmarks/ray_predict.py --address auto --workers 4,8,16  # on a running cluster
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from emovox.errors import EmovoxError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this is run
from _common import DEFAULT_CORPUS, audio_files, load_average, machine  # noqa: E402

console = Console(stderr=True)


def local_predict(files: list[str], model: str) -> tuple[float, dict[str, dict[str, Any]]]:
    """Wall seconds of `emovox predict FILES --json` in a fresh process, and its records by path."""
    cmd = [sys.executable, "-m", "emovox.cli", "predict", *files, "--json", "--model", model]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1):  # 1: some files skipped, still a run
        raise EmovoxError(f"emovox predict failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return seconds, {r["path"]: r for r in records}


def compare(rows: list[dict[str, Any]], local: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """Share of files with the local emotion, and the largest |probability difference|."""
    same, diff, n = 0, 0.0, 0
    for row in rows:
        ref = local.get(row["path"])
        if ref is None or row["error"] is not None:
            continue
        n += 1
        same += row["emotion"] == ref["emotion"]
        diff = max(diff, *(abs(row[f"prob_{k}"] - v) for k, v in ref["probabilities"].items()))
    return (same / n if n else float("nan")), diff


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import ray
    import torch

    from emovox.distributed import predict_files, read_results

    load_before = load_average()
    files = [str(p.absolute()) for p in audio_files(args.corpus, args.files)]
    if not files:
        raise EmovoxError(f"{args.corpus}: no audio files (use --corpus)")
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if not workers or min(workers) < 1:
        raise EmovoxError(f"--workers: expected a comma-separated list of counts >= 1, got {args.workers!r}")
    console.print(f"{len(files)} files of {args.corpus}; local emovox predict...")
    seconds, local = local_predict(files, args.model)
    results: dict[str, dict[str, Any]] = {
        "local emovox predict": {
            "wall_s": round(seconds, 2),
            "files_per_s": round(len(files) / seconds, 2),
            "failed": len(files) - len(local),
            "agreement_with_local": 1.0,
            "max_abs_prob_diff": 0.0,
        }
    }
    startup = None
    started_here = False
    if not ray.is_initialized():
        t0 = time.perf_counter()
        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(address="local", num_cpus=max(workers), include_dashboard=False)
        startup = round(time.perf_counter() - t0, 2)
        started_here = True
    try:
        cluster_cpus = ray.cluster_resources().get("CPU", 0)
        for n in workers:
            console.print(f"ray, {n} worker(s)...")
            out = work / f"ray-{n}.parquet"
            t0 = time.perf_counter()
            res = predict_files(files, out, model=args.model, workers=n, batch_size=args.batch_size)
            seconds = time.perf_counter() - t0
            agreement, diff = compare(read_results(out).to_pylist(), local)
            results[f"ray {n} worker{'s' if n > 1 else ''}"] = {
                "wall_s": round(seconds, 2),
                "files_per_s": round(len(files) / seconds, 2),
                "failed": res.failed,
                "parts": res.parts,
                "agreement_with_local": agreement,
                "max_abs_prob_diff": float(f"{diff:.2e}"),
            }
    finally:
        if started_here:
            ray.shutdown()
    return {
        "date": date.today().isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(load_before),
        "versions": {"torch": torch.__version__, "ray": ray.__version__},
        "corpus": str(args.corpus),
        "files": len(files),
        "model": args.model,
        "batch_size": args.batch_size,
        "ray_cluster_cpus": cluster_cpus,
        "ray_startup_s": startup,
        "results": results,
    }


def report(data: dict[str, Any]) -> Table:
    table = Table(title=f"batch prediction of {data['files']} files ({data['machine']['cores']} cores)")
    for column in ("path", "wall s", "files/s", "failed", "same emotion as local", "max |Δp|"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, r in data["results"].items():
        table.add_row(
            name,
            f"{r['wall_s']:.1f}",
            f"{r['files_per_s']:.1f}",
            str(r["failed"]),
            f"{r['agreement_with_local']:.3f}",
            f"{r['max_abs_prob_diff']:.1e}",
        )
    if data["ray_startup_s"] is not None:
        table.caption = f"Ray cluster start-up (not in the Ray rows): {data['ray_startup_s']:.1f} s"
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="audio folder (recursive)")
    parser.add_argument("--files", type=int, default=1200, help="files to predict (first in path order)")
    parser.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts")
    parser.add_argument("--batch-size", type=int, default=64, help="files per Ray batch (part file)")
    parser.add_argument("--model", default="default", help="bundle folder, run folder or 'default'")
    parser.add_argument("--address", help="a running Ray cluster (default: start a local one)")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        console.print('[red]error:[/] this benchmark needs Ray: pip install "emovox\\[ray]"')
        return 2
    with tempfile.TemporaryDirectory(prefix="emovox-ray-bench-") as tmp:
        try:
            data = run(args, Path(tmp))
        except EmovoxError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
            return 2
    Console().print(report(data))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(data, indent=2) + "\n")
        Console().print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
