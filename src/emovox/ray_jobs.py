"""The generic per-file job runner on Ray: an actor pool over the files not yet done, one
committed Parquet part per batch, error rows for bad files (see :func:`run_job`).

Ray is imported only inside the functions that need it; without the ``ray`` extra,
:func:`require_ray` raises :class:`~emovox.errors.ConfigError` with the install command.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emovox.errors import ConfigError, EmovoxError
from emovox.job_folder import ResultStore
from emovox.job_inputs import INSTALL_HINT

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "BatchWorker",
    "JobError",
    "JobResult",
    "Process",
    "Rows",
    "Setup",
    "error_row",
    "is_ray_address",
    "require_ray",
    "run_job",
]

DEFAULT_BATCH_SIZE = 64

Rows = list[dict[str, Any]]
Setup = Callable[[], Any]
Process = Callable[[Any, list[str]], Rows]


class JobError(EmovoxError):
    """A Ray job that could not run (cluster unreachable, workers failing to start)."""


@dataclass
class JobResult:
    """What a run did. ``failed`` counts the files of this run that got an error row."""

    out: str
    files: int  # distinct input files
    already_done: int  # found in ``out`` and skipped
    processed: int  # processed by this run
    failed: int
    parts: int  # part files written by this run
    seconds: float


# --------------------------------------------------------------------------- optional dependencies


def require_ray() -> Any:
    """The ``ray`` module (with Ray Data and pyarrow), or :class:`ConfigError` saying how to install it."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"running on Ray needs the ray extra, which is not installed ({exc}); "
            f"install it with: {INSTALL_HINT}"
        ) from None
    return ray


_HOST_PORT = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}$")


def is_ray_address(text: str) -> bool:
    """True for what ``ray.init`` takes as an address: ``auto``, ``local``, ``ray://...`` or ``HOST:PORT``."""
    return text in ("auto", "local") or text.startswith("ray://") or bool(_HOST_PORT.match(text))


def error_row(path: str, exc: BaseException | str) -> dict[str, Any]:
    """The row of a file that could not be processed: its path and one line saying why."""
    if isinstance(exc, str):
        message = f"{path}: {exc}"
    elif isinstance(exc, EmovoxError):
        message = str(exc)  # already names the input
    else:
        message = f"{path}: {type(exc).__name__}: {exc}"
    return {"path": path, "error": message}


def _process_guarded(process: Process, state: Any, paths: list[str]) -> Rows:
    """``process(state, paths)``; if it raises, each file alone, so only the bad ones get error rows."""
    try:
        rows = list(process(state, paths))
    except Exception as exc:  # a bad file must never fail the job
        if len(paths) == 1:
            return [error_row(paths[0], exc)]
        return [row for path in paths for row in _process_guarded(process, state, [path])]
    seen = {row.get("path") for row in rows}
    return rows + [error_row(p, "the job produced no result for this file") for p in paths if p not in seen]


class BatchWorker:
    """The Ray Data actor: ``setup()`` once, then per batch ``process`` + one committed part file."""

    def __init__(self, setup: Setup, process: Process, schema: Any, store: ResultStore) -> None:
        self.state = setup()
        self.process = process
        self.schema = schema
        self.store = store

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        rows = _process_guarded(self.process, self.state, paths)
        table = pa.Table.from_pylist(rows, schema=self.schema)
        name = self.store.write_part(table, paths)
        failed = len({row["path"] for row in rows if row.get("error")})
        return {"part": np.array([name]), "files": np.array([len(paths)]), "failed": np.array([failed])}


def _connect(
    ray: Any, address: str | None, runtime_env: Mapping[str, Any] | None, init: Mapping[str, Any]
) -> bool:
    """Connect to (or start) a cluster unless this process already is; True if we did."""
    if ray.is_initialized():
        return False
    kwargs = {"address": address or None, **init}
    if runtime_env:
        kwargs["runtime_env"] = dict(runtime_env)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        where = address or "RAY_ADDRESS / a local cluster"
        raise JobError(f"ray {where}: cannot connect to a Ray cluster ({_first_line(exc)})") from None
    return True


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


def _pool(ray: Any, workers: int | tuple[int, int] | None, cpus: float, gpus: float, batches: int) -> Any:
    """The actor pool: ``workers`` actors (a (min, max) pair autoscales), by default one per
    ``cpus`` CPUs (and ``gpus`` GPUs) of the cluster as it is now, never more than there are batches."""
    if isinstance(workers, tuple):
        low, high = workers
        if not (1 <= low <= high):
            raise ConfigError(f"workers: need 1 <= min <= max, got {workers}")
        return ray.data.ActorPoolStrategy(min_size=low, max_size=high)
    if workers is None:
        resources = ray.cluster_resources()
        workers = int(resources.get("CPU", 1) // cpus) if cpus > 0 else batches
        if gpus > 0:
            workers = min(workers, int(resources.get("GPU", 0) // gpus))
        if workers < 1:
            raise JobError(
                f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs, "
                f"not enough for one worker ({cpus:g} CPUs, {gpus:g} GPUs each)"
            )
        workers = min(workers, batches)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: need a whole number of at least 1, got {workers!r}")
    return ray.data.ActorPoolStrategy(size=workers)


def run_job(
    files: Sequence[str],
    out: str | os.PathLike[str],
    *,
    setup: Setup,
    process: Process,
    schema: Any,
    job: Mapping[str, Any],
    address: str | None = None,
    workers: int | tuple[int, int] | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    runtime_env: Mapping[str, Any] | None = None,
    ray_init: Mapping[str, Any] | None = None,
) -> JobResult:
    """Run ``process`` over ``files`` on Ray; rows go to the Parquet dataset folder ``out``.

    ``setup()`` runs once in each worker actor and returns its state (a loaded model);
    ``process(state, paths)`` returns the rows of one batch (dicts with at least ``path``; an
    ``error`` column holds why a file failed), at least one row per path. Both must be picklable
    (module-level functions, :func:`functools.partial` of them, or small classes). ``schema`` is
    the ``pyarrow.Schema`` of the rows and must have string columns ``path`` and ``error``;
    ``job`` (JSON-able) says what the rows are: a re-run on the same ``out`` must have the same
    ``job`` and skips the files already in it.

    Ray: ``address`` is given to ``ray.init`` (None: ``RAY_ADDRESS``, else a cluster started on
    this machine, else a new local one; an existing connection in this process is used as it is);
    ``workers`` actors (an ``(min, max)`` pair autoscales; default one per ``cpus_per_worker``
    CPUs of the cluster) each reserve ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs;
    ``batch_size`` files per batch (one part file each). ``runtime_env`` (e.g. ``{"pip":
    ["emovox[ray]"]}``) and ``ray_init`` (other ``ray.init`` arguments) apply when this call connects.
    """
    started = time.perf_counter()
    ray = require_ray()
    _check_run_arguments(schema, batch_size, cpus_per_worker, gpus_per_worker)
    files = list(dict.fromkeys(str(f) for f in files))
    store = ResultStore(out)
    store.prepare(job)
    done = store.done_paths()
    todo = [f for f in files if f not in done]
    result = JobResult(store.out, len(files), len(files) - len(todo), 0, 0, 0, 0.0)
    if todo:
        connected = _connect(ray, address, runtime_env, ray_init or {})
        try:
            _run_batches(
                ray,
                store,
                todo,
                result,
                setup=setup,
                process=process,
                schema=schema,
                workers=workers,
                cpus_per_worker=cpus_per_worker,
                gpus_per_worker=gpus_per_worker,
                batch_size=batch_size,
            )
        finally:
            if connected:
                ray.shutdown()
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _check_run_arguments(schema: Any, batch_size: int, cpus: float, gpus: float) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: need a whole number of at least 1, got {batch_size!r}")
    if cpus <= 0 or gpus < 0:
        raise ConfigError(f"need cpus_per_worker > 0 and gpus_per_worker >= 0, got {cpus}, {gpus}")
    names = getattr(schema, "names", [])
    if "path" not in names or "error" not in names:
        raise ValueError("run_job: the schema needs 'path' and 'error' columns")


def _run_batches(
    ray: Any,
    store: ResultStore,
    todo: list[str],
    result: JobResult,
    *,
    setup: Setup,
    process: Process,
    schema: Any,
    workers: int | tuple[int, int] | None,
    cpus_per_worker: float,
    gpus_per_worker: float,
    batch_size: int,
) -> None:
    """Ray Data ``map_batches`` of :class:`BatchWorker` over ``todo``, counted into ``result``."""
    batches = math.ceil(len(todo) / batch_size)
    compute = _pool(ray, workers, cpus_per_worker, gpus_per_worker, batches)
    ds = _from_items(ray, [{"path": p} for p in todo], batches)
    remote: dict[str, Any] = {"num_cpus": cpus_per_worker}
    if gpus_per_worker:
        remote["num_gpus"] = gpus_per_worker
    ds = ds.map_batches(
        BatchWorker,
        fn_constructor_kwargs={"setup": setup, "process": process, "schema": schema, "store": store},
        batch_size=batch_size,
        batch_format="numpy",
        compute=compute,
        **remote,
    )
    try:
        for row in ds.iter_rows():
            result.processed += int(row["files"])
            result.failed += int(row["failed"])
            result.parts += 1
    except ray.exceptions.RayError as exc:
        raise JobError(
            f"{store.out}: the Ray job stopped ({_first_line(exc)}); {result.parts} batches "
            "are saved; fix the cause and run it again to resume"
        ) from None


def _from_items(ray: Any, items: list[dict[str, Any]], blocks: int) -> Any:
    try:
        return ray.data.from_items(items, override_num_blocks=blocks)
    except TypeError:  # Ray < 2.10 calls it parallelism
        return ray.data.from_items(items, parallelism=blocks)
