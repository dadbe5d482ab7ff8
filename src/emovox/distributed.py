"""Per-file jobs over a Ray cluster, resumable, into a Parquet dataset: batch prediction, embeddings.

Ray (and pyarrow) are imported only inside the functions that need them, so ``import
emovox.distributed`` is cheap and works without the ``ray`` extra; running a job without it raises
:class:`~emovox.errors.ConfigError` with the install command. See docs/distributed.md.

The runner (:func:`run_job`) is generic: it takes the list of files, a per-worker ``setup()``
factory (run once in each Ray actor: load a model) and a per-batch ``process(state, paths) ->
rows`` function, and does the rest:

* the files already in the output are read first and skipped, so a re-run resumes;
* the others go through Ray Data ``map_batches`` on an actor pool (``setup`` runs once per actor);
* each batch's rows are written as one Parquet part file, committed atomically (temporary name,
  then rename), so an interrupted job loses at most the batches in flight;
* a file whose processing raises gets a row with ``error`` set; a bad file never fails the job.

Two jobs are built on it: :func:`predict_files` (``emovox predict --ray``: the emotion of every
file, or per-segment rows with ``timeline=True``) and :func:`extract_embeddings` (an
:class:`Embedder`'s vectors for every file, stored in the :class:`~emovox.cache.FeatureCache`).

This module is the public import path of all of it and holds the prediction job; the pieces live
in ``emovox.job_inputs`` (listing and reading the files), ``emovox.job_folder`` (the resumable
output folder), ``emovox.ray_jobs`` (the runner) and ``emovox.embedding_jobs`` (embeddings).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from emovox.embedding_jobs import (
    Embedder,
    EmbedderSetup,
    EncoderEmbedder,
    embed_batch,
    embedding_key,
    embedding_schema,
    encoder_embedding_params,
    extract_embeddings,
)
from emovox.errors import BundleError, ConfigError
from emovox.job_folder import FORMAT_VERSION, META_FILE, ResultStore, read_results
from emovox.job_inputs import (
    INSTALL_HINT,
    canonical_url,
    is_url,
    job_files,
    list_inputs,
    read_audio,
    read_manifest,
)
from emovox.ray_jobs import (
    DEFAULT_BATCH_SIZE,
    BatchWorker,
    JobError,
    JobResult,
    Process,
    Rows,
    Setup,
    error_row,
    is_ray_address,
    require_ray,
    run_job,
)
from emovox.ray_jobs import (
    _process_guarded as _process_guarded,  # tests call it here
)

# --------------------------------------------------------------------------- batch prediction


def prediction_schema(labels: Sequence[str], *, timeline: bool = False) -> Any:
    """Columns of :func:`predict_files`' output.

    ``path``, [``segment``, ``start``, ``end`` with ``timeline``], ``emotion``, ``confidence``, one
    ``prob_<label>`` column per label (model order), ``duration`` (seconds of the whole file)
    and ``error``. A file that cannot be used has one row with ``error`` set and null
    predictions; with ``timeline``, a file without speech has one row with a null ``segment``.
    """
    import pyarrow as pa

    fields = [pa.field("path", pa.string())]
    if timeline:
        fields += [
            pa.field("segment", pa.int32()),
            pa.field("start", pa.float64()),
            pa.field("end", pa.float64()),
        ]
    fields += [pa.field("emotion", pa.string()), pa.field("confidence", pa.float32())]
    fields += [pa.field(f"prob_{label}", pa.float32()) for label in labels]
    fields += [pa.field("duration", pa.float64()), pa.field("error", pa.string())]
    return pa.schema(fields)


@dataclass
class RecognizerSetup:
    """Per-worker factory: a :class:`~emovox.predict.Recognizer` from bundle files sent by the driver.

    ``bundle`` holds the bundle's files (name -> bytes); Ray Data puts the actor's constructor
    arguments in the object store once, so workers on other machines need neither the bundle's
    folder nor the same default model installed.
    """

    bundle: dict[str, bytes] = field(repr=False)
    backend: str = "torch"
    device: str = "cpu"
    threads: int = 1
    batch_size: int = 16

    def __call__(self) -> Any:
        from emovox.predict import Recognizer

        if self.backend == "torch":
            import torch

            torch.set_num_threads(self.threads)
        folder = Path(tempfile.mkdtemp(prefix="emovox-bundle-"))
        try:
            for name, data in self.bundle.items():
                (folder / name).write_bytes(data)
            return Recognizer.load(
                folder,
                backend=self.backend,  # type: ignore[arg-type]
                device=self.device,
                threads=self.threads,
                batch_size=self.batch_size,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # everything is in memory once loaded


def _decode(rec: Any, path: str) -> np.ndarray:
    """The file's 16 kHz wave, untrimmed: what ``Recognizer.decode`` gives for a path."""
    if is_url(path):
        return read_audio(path, rec.sample_rate)
    return rec.decode(path)[0]


def _probability_columns(probabilities: Mapping[str, float]) -> dict[str, float]:
    return {f"prob_{label}": p for label, p in probabilities.items()}


def predict_batch(rec: Any, paths: list[str], *, timeline: bool = False) -> Rows:
    """One batch of :func:`predict_files`: decode, preprocess and classify (length-sorted batches),
    or with ``timeline`` one row per segment of :meth:`~emovox.predict.Recognizer.timeline`."""
    rows: Rows = []
    waves, durations, good = [], [], []
    for path in paths:
        try:
            wave = _decode(rec, path)
        except Exception as exc:  # a bad file never fails the job
            rows.append(error_row(path, exc))
            continue
        duration = round(wave.size / rec.sample_rate, 4)
        if timeline:
            try:
                segments = rec.timeline(wave, sr=rec.sample_rate)
            except Exception as exc:
                rows.append({**error_row(path, exc), "duration": duration})
                continue
            if not segments:
                rows.append({"path": path, "duration": duration})
            for i, s in enumerate(segments):
                rows.append(
                    {
                        "path": path,
                        "segment": i,
                        "start": s.start,
                        "end": s.end,
                        "emotion": s.emotion,
                        "confidence": s.confidence,
                        **_probability_columns(s.probabilities),
                        "duration": duration,
                    }
                )
            continue
        try:
            waves.append(rec.preprocess(wave, name=path))
        except Exception as exc:
            rows.append({**error_row(path, exc), "duration": duration})
            continue
        durations.append(duration)
        good.append(path)
    for p in rec.predict_waves(waves, durations=durations, paths=good) if waves else []:
        rows.append(
            {
                "path": p.path,
                "emotion": p.emotion,
                "confidence": p.confidence,
                **_probability_columns(p.probabilities),
                "duration": p.duration,
            }
        )
    return rows


def _bundle_files(bundle: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bundle.iterdir()) if p.is_file()}


def predict_files(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] = "default",
    backend: str = "torch",
    device: str = "cpu",
    timeline: bool = False,
    address: str | None = None,
    workers: int | tuple[int, int] | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    runtime_env: Mapping[str, Any] | None = None,
    ray_init: Mapping[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
) -> JobResult:
    """Predict the emotion of every audio file of ``inputs`` on a Ray cluster into the folder ``out``.

    ``inputs``: files, folders, globs, manifest CSVs, local or fsspec URLs (:func:`list_inputs`).
    ``out``: a Parquet dataset folder (local or URL) with the columns of
    :func:`prediction_schema`; read it with ``pandas.read_parquet(out)`` or :func:`read_results`.
    Re-running with the same ``out`` (and model) skips the files already in it. The model is
    checked here first (a broken bundle fails before the cluster starts), then shipped to every
    worker. ``threads`` per worker = ``cpus_per_worker``; ``gpus_per_worker`` defaults to 1 for a
    cuda ``device``. Ray arguments as for :func:`run_job`; ``warn`` receives the listing's warnings.
    """
    from emovox.audio import SAMPLE_RATE
    from emovox.predict import Recognizer

    require_ray()
    if backend not in ("torch", "onnx"):
        raise ConfigError(f"backend: unknown backend {backend!r} (choose torch or onnx)")
    local = Recognizer.load(model, backend=backend, device="cpu")  # type: ignore[arg-type]
    if timeline and local.sample_rate != SAMPLE_RATE:
        raise BundleError(
            f"{model}: timeline needs a {SAMPLE_RATE} Hz model, this one uses {local.sample_rate} Hz"
        )
    files = job_files(inputs, "predict on", warn)
    meta = local.meta
    labels = list(local.labels)
    schema = prediction_schema(labels, timeline=timeline)
    job = {  # what the rows mean: the same model (by checksum, wherever its folder is) and columns
        "kind": "timeline" if timeline else "predict",
        "model_sha256": meta["sha256"].get("model.safetensors"),
        "labels": labels,
        "columns": schema.names,
    }
    gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if device.startswith("cuda") else 0.0)
    setup = RecognizerSetup(
        bundle=_bundle_files(Path(meta["path"])),
        backend=backend,
        device=device,
        threads=max(1, int(cpus_per_worker)),
    )
    return run_job(
        files,
        out,
        setup=setup,
        process=partial(predict_batch, timeline=timeline),
        schema=schema,
        job=job,
        address=address,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus,
        batch_size=batch_size,
        runtime_env=runtime_env,
        ray_init=ray_init,
    )


__all__ = [  # the public names of the distributed jobs, wherever they are defined
    "DEFAULT_BATCH_SIZE",
    "FORMAT_VERSION",
    "INSTALL_HINT",
    "META_FILE",
    "BatchWorker",
    "Embedder",
    "EmbedderSetup",
    "EncoderEmbedder",
    "JobError",
    "JobResult",
    "Process",
    "RecognizerSetup",
    "ResultStore",
    "Rows",
    "Setup",
    "canonical_url",
    "embed_batch",
    "embedding_key",
    "embedding_schema",
    "encoder_embedding_params",
    "error_row",
    "extract_embeddings",
    "is_ray_address",
    "is_url",
    "list_inputs",
    "predict_batch",
    "predict_files",
    "prediction_schema",
    "read_audio",
    "read_manifest",
    "read_results",
    "require_ray",
    "run_job",
]
