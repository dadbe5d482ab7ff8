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
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import math
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import numpy as np

from emovox.audio import AUDIO_EXTENSIONS, load_audio
from emovox.errors import AudioError, BundleError, ConfigError, CorpusError, EmovoxError

INSTALL_HINT = 'pip install "emovox[ray]"'
META_FILE = "_emovox.json"  # the job description; "_" so Parquet readers skip it
FORMAT_VERSION = 1
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


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise ConfigError(f"URL inputs and outputs need fsspec; install it with: {INSTALL_HINT}") from None
    return fsspec


# --------------------------------------------------------------------------- addresses, URLs, inputs

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_HOST_PORT = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}$")
_GLOB = re.compile(r"[*?[]")


def is_ray_address(text: str) -> bool:
    """True for what ``ray.init`` takes as an address: ``auto``, ``local``, ``ray://...`` or ``HOST:PORT``."""
    return text in ("auto", "local") or text.startswith("ray://") or bool(_HOST_PORT.match(text))


def is_url(text: str) -> bool:
    """True for ``scheme://...`` other than ``file://`` (which is a local path)."""
    return bool(_URL.match(text)) and not text.startswith("file://")


def _local(text: str) -> Path:
    if text.startswith("file://"):
        return Path(unquote(urlparse(text).path))
    return Path(text).expanduser()


def _is_audio_name(name: str) -> bool:
    base = posixpath.basename(name.rstrip("/"))
    return not base.startswith(".") and posixpath.splitext(base)[1].lower() in AUDIO_EXTENSIONS


def list_inputs(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> tuple[list[str], list[str]]:
    """The audio files named by ``inputs``, in order, without duplicates, and warnings.

    Each input is a file (taken as given, even if it is missing or not audio: it gets an error
    row), a folder (searched recursively for audio files, hidden ones skipped), a glob (``*``,
    ``?``, ``[``; ``**`` recurses; matching folders are searched, other non-audio matches
    ignored) or a manifest CSV (``.csv``, a ``path`` column; relative paths are from the CSV's
    folder). Each can be a local path or an fsspec URL (``s3://``, ``gs://``, ``memory://``...).
    Local paths are returned absolute and normalised (``a/../b`` -> ``b``), URLs in one canonical
    spelling (:func:`canonical_url`). Warnings name folders without audio and globs that match nothing.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files: list[str] = []
    warnings: list[str] = []
    for item in items:
        text = os.fspath(item)
        if is_url(text):
            _list_url(text, files, warnings)
        else:
            _list_local(text, files, warnings)
    return list(dict.fromkeys(files)), warnings


def _list_local(text: str, files: list[str], warnings: list[str]) -> None:
    path = _local(text)
    if _GLOB.search(str(path)) and not path.exists():
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            warnings.append(f"{text}: matches no file")
        for match in matches:
            found = Path(match)
            if found.is_dir():
                _walk_local(found, files, warnings)
            elif _is_audio_name(found.name):
                files.append(os.path.abspath(found))
        return
    if path.is_dir():
        _walk_local(path, files, warnings)
    elif path.suffix.lower() == ".csv" and path.is_file():
        files.extend(read_manifest(str(path)))
    else:
        files.append(os.path.abspath(path))


def _walk_local(folder: Path, files: list[str], warnings: list[str]) -> None:
    found = sorted(
        p
        for p in folder.rglob("*")
        if _is_audio_name(p.name)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )
    if not found:
        warnings.append(f"{folder}: no audio files in this folder")
    files.extend(os.path.abspath(p) for p in found)


def _url_fs(url: str) -> tuple[Any, str]:
    fsspec = _fsspec()
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ConfigError(
            f"{url}: cannot open this URL ({exc}); install the fsspec backend for its scheme "
            "(s3fs for s3://, gcsfs for gs://, adlfs for az://)"
        ) from None


def canonical_url(url: str) -> str:
    """One spelling per remote file (``memory://a/b`` and ``memory:///a/b`` are the same), so
    results found through a folder, a glob or a manifest match when a job resumes."""
    fs, root = _url_fs(url)
    return fs.unstrip_protocol(root)


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def _list_url(url: str, files: list[str], warnings: list[str]) -> None:
    fs, root = _url_fs(url)
    try:
        if _GLOB.search(root):
            matches = sorted(m for m in fs.glob(root) if not _hidden(m))
            if not matches:
                warnings.append(f"{url}: matches no file")
            for match in matches:
                if fs.isdir(match):
                    _walk_url(fs, match, url, files, warnings)
                elif _is_audio_name(match):
                    files.append(fs.unstrip_protocol(match))
        elif fs.isdir(root):
            _walk_url(fs, root, url, files, warnings)
        elif root.lower().endswith(".csv") and fs.isfile(root):
            files.extend(read_manifest(url))
        else:
            files.append(fs.unstrip_protocol(root))
    except OSError as exc:
        raise ConfigError(f"{url}: cannot list ({exc})") from None


def _walk_url(fs: Any, root: str, url: str, files: list[str], warnings: list[str]) -> None:
    prefix = root.rstrip("/") + "/"
    found = sorted(p for p in fs.find(root) if _is_audio_name(p) and not _hidden(p[len(prefix) :]))
    if not found:
        warnings.append(f"{url}: no audio files in this folder")
    files.extend(fs.unstrip_protocol(p) for p in found)


def read_manifest(source: str) -> list[str]:
    """The ``path`` column of a CSV (local path or URL); relative paths are from the CSV's folder."""
    fs, root = _url_fs(source) if is_url(source) else (None, source)
    try:
        if fs is not None:
            with fs.open(root, "rb") as fh:
                text = fh.read().decode("utf-8-sig")
        else:
            text = _local(source).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{source}: cannot read this manifest ({exc})") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if "path" not in header:
        raise CorpusError(f"{source}: a manifest needs a header with a 'path' column (found: {header})")
    col = header.index("path")
    paths: list[str] = []
    for values in reader:
        value = values[col].strip() if col < len(values) else ""
        if not value:
            continue
        if is_url(value):
            paths.append(canonical_url(value))
        elif fs is not None:
            paths.append(fs.unstrip_protocol(posixpath.join(posixpath.dirname(root), value)))
        else:
            path = _local(value)
            path = path if path.is_absolute() else _local(source).parent / path
            paths.append(os.path.abspath(path))
    return paths


def read_audio(path: str, sr: int) -> np.ndarray:
    """Decode a local path or an fsspec URL to mono float32 at ``sr`` (:func:`emovox.audio.load_audio`)."""
    if not is_url(path):
        return load_audio(_local(path), sr=sr, name=path)
    fs, root = _url_fs(path)
    try:
        with fs.open(root, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot be read ({exc})") from None
    return load_audio(data, sr=sr, name=path)


# --------------------------------------------------------------------------- the output folder


class ResultStore:
    """The output: a folder of ``part-*.parquet`` files plus ``_emovox.json`` (local or fsspec URL).

    Part files are written under a hidden temporary name and renamed into place, so a reader, a
    resuming run or a crash never sees half a part. The part name is a hash of the batch's paths,
    so a batch that Ray retries overwrites its own part instead of duplicating rows.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = os.fspath(out)
        self.remote = is_url(self.out)
        self.root = self.out.rstrip("/") if self.remote else os.path.abspath(_local(self.out))

    def _fs(self) -> tuple[Any, str]:
        if self.remote:
            return _url_fs(self.root)
        return None, self.root

    def prepare(self, job: Mapping[str, Any]) -> None:
        """Create the folder, or check that an existing one holds results of the same ``job``."""
        fs, root = self._fs()
        meta_path = posixpath.join(root, META_FILE) if fs else os.path.join(root, META_FILE)
        if fs is None:
            if os.path.isfile(root):
                raise ConfigError(
                    f"{self.out}: is a file; results are written as a Parquet dataset folder, "
                    "choose a name that does not exist yet"
                )
            os.makedirs(root, exist_ok=True)
            entries = [e for e in os.listdir(root) if not e.startswith(".")]
            meta = _read_json_file(meta_path) if os.path.isfile(meta_path) else None
        else:
            fs.makedirs(root, exist_ok=True)
            entries = [posixpath.basename(p) for p in fs.ls(root, detail=False)]
            entries = [e for e in entries if not e.startswith(".")]
            meta = None
            if fs.isfile(meta_path):
                with fs.open(meta_path, "rb") as fh:
                    meta = _parse_json(fh.read(), meta_path)
        if meta is None:
            if entries:
                raise ConfigError(
                    f"{self.out}: exists and is not an emovox results folder (no {META_FILE}); "
                    "choose a new --out"
                )
            self._write_meta(job)
        elif meta.get("job") != dict(job):
            raise ConfigError(
                f"{self.out}: holds results of a different job ({_describe_job(meta.get('job'))}); "
                f"this one is {_describe_job(job)}. Choose another --out to keep both"
            )
        self._remove_temporaries()

    def _write_meta(self, job: Mapping[str, Any]) -> None:
        from emovox._version import __version__

        meta = {
            "format_version": FORMAT_VERSION,
            "emovox_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "job": dict(job),
        }
        self._commit(META_FILE, json.dumps(meta, indent=2).encode())

    def _commit(self, name: str, data: bytes) -> None:
        fs, root = self._fs()
        tmp = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
        if fs is None:
            tmp_path = os.path.join(root, tmp)
            try:
                with open(tmp_path, "wb") as fh:
                    fh.write(data)
                os.replace(tmp_path, os.path.join(root, name))
            finally:
                if os.path.exists(tmp_path):
                    os.unlink(tmp_path)
        else:
            tmp_path = posixpath.join(root, tmp)
            with fs.open(tmp_path, "wb") as fh:
                fh.write(data)
            fs.mv(tmp_path, posixpath.join(root, name))

    def _remove_temporaries(self) -> None:
        """Delete the temporary files of batches that were in flight when a previous run stopped."""
        fs, root = self._fs()
        if fs is None:
            for name in os.listdir(root):
                if name.startswith(".") and name.endswith(".tmp"):
                    Path(root, name).unlink(missing_ok=True)
        else:
            for path in fs.ls(root, detail=False):
                name = posixpath.basename(path)
                if name.startswith(".") and name.endswith(".tmp"):
                    fs.rm(path)

    def parts(self) -> list[str]:
        """The committed part files (paths within the store's filesystem)."""
        fs, root = self._fs()
        if fs is None:
            if not os.path.isdir(root):
                return []
            names = sorted(n for n in os.listdir(root) if n.startswith("part-") and n.endswith(".parquet"))
            return [os.path.join(root, n) for n in names]
        if not fs.isdir(root):
            return []
        return sorted(
            p
            for p in fs.ls(root, detail=False)
            if posixpath.basename(p).startswith("part-") and p.endswith(".parquet")
        )

    def done_paths(self) -> set[str]:
        """Every path that has a row in a committed part (error rows included)."""
        import pyarrow.parquet as pq

        fs, _ = self._fs()

        def read(part: str) -> list[str]:
            if fs is None:
                return pq.read_table(part, columns=["path"]).column("path").to_pylist()
            with fs.open(part, "rb") as fh:
                return pq.read_table(fh, columns=["path"]).column("path").to_pylist()

        parts = self.parts()
        if not parts:
            return set()
        done: set[str] = set()
        with ThreadPoolExecutor(max_workers=min(16, len(parts))) as pool:
            for paths in pool.map(read, parts):
                done.update(paths)
        return done

    def write_part(self, table: Any, paths: Sequence[str]) -> str:
        """Write one batch's rows atomically; returns the part's file name."""
        import pyarrow.parquet as pq

        digest = hashlib.sha1("\n".join(paths).encode()).hexdigest()[:24]
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        name = f"part-{digest}.parquet"
        self._commit(name, buffer.getvalue())
        return name


def _read_json_file(path: str) -> dict[str, Any]:
    with open(path, "rb") as fh:
        return _parse_json(fh.read(), path)


def _parse_json(data: bytes, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc}); is this an emovox results folder?") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    return meta


def _describe_job(job: Any) -> str:
    if not isinstance(job, Mapping):
        return "unknown"
    details = [f"kind {job.get('kind')}"]
    if job.get("model_sha256"):
        details.append(f"model sha256 {str(job['model_sha256'])[:12]}...")
    if job.get("params"):
        details.append(f"params {json.dumps(job['params'], sort_keys=True)}")
    return ", ".join(details)


def read_results(out: str | os.PathLike[str]) -> Any:
    """All rows of an output folder as one ``pyarrow.Table`` (as ``pandas.read_parquet(out)`` reads it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = ResultStore(out)
    parts = store.parts()
    if not parts:
        raise ConfigError(f"{out}: holds no results yet")
    fs, _ = store._fs()
    if fs is None:
        return pa.concat_tables([pq.read_table(p) for p in parts])
    tables = []
    for part in parts:
        with fs.open(part, "rb") as fh:
            tables.append(pq.read_table(fh))
    return pa.concat_tables(tables)


# --------------------------------------------------------------------------- the generic runner


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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: need a whole number of at least 1, got {batch_size!r}")
    if cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise ConfigError(
            f"need cpus_per_worker > 0 and gpus_per_worker >= 0, got {cpus_per_worker}, {gpus_per_worker}"
        )
    names = getattr(schema, "names", [])
    if "path" not in names or "error" not in names:
        raise ValueError("run_job: the schema needs 'path' and 'error' columns")
    files = list(dict.fromkeys(str(f) for f in files))
    store = ResultStore(out)
    store.prepare(job)
    done = store.done_paths()
    todo = [f for f in files if f not in done]
    result = JobResult(store.out, len(files), len(files) - len(todo), 0, 0, 0, 0.0)
    if todo:
        connected = _connect(ray, address, runtime_env, ray_init or {})
        try:
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
        finally:
            if connected:
                ray.shutdown()
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _from_items(ray: Any, items: list[dict[str, Any]], blocks: int) -> Any:
    try:
        return ray.data.from_items(items, override_num_blocks=blocks)
    except TypeError:  # Ray < 2.10 calls it parallelism
        return ray.data.from_items(items, parallelism=blocks)


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
    files, warnings = list_inputs(inputs)
    for message in warnings:
        (warn or (lambda m: None))(message)
    if not files:
        raise ConfigError("no audio files to predict on in " + ", ".join(_names(inputs)))
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


def _names(inputs: Any) -> list[str]:
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    return [os.fspath(i) for i in inputs]


# --------------------------------------------------------------------------- embeddings


class Embedder(Protocol):
    """What :func:`extract_embeddings` runs: waves at ``sample_rate`` in, one array per wave out.

    An optional ``prepare(wave, name) -> wave`` runs on each decoded clip before its cache key is
    taken (the preprocessing training applies, so the keys are the ones training looks up)."""

    sample_rate: int

    def __call__(self, waves: Sequence[np.ndarray]) -> Sequence[np.ndarray]: ...


class EncoderEmbedder:
    """The encoder family's cached front end as a Ray embedder: frozen encoder hidden states
    ``[C, F]`` (float16), keyed exactly as :func:`emovox.cache.cached_features` keys them in
    training (``params`` = :func:`encoder_embedding_params`), so ``emovox train`` / ``cv`` over the
    same clips and cache finds them all. Clips are trimmed (``trim``) and checked like training's."""

    def __init__(
        self, encoder: str, layers: Any = "all", *, trim: bool = True, min_duration: float = 0.0
    ) -> None:
        from emovox.encoders import load_encoder

        self.encoder = load_encoder(encoder, layers).eval()
        self.sample_rate = self.encoder.cfg.sample_rate
        self.trim = trim
        self.min_duration = min_duration

    def prepare(self, wave: np.ndarray, name: str) -> np.ndarray:
        from emovox.audio import prepare_waveform

        return prepare_waveform(
            wave, self.sample_rate, trim=self.trim, min_duration=self.min_duration, name=name
        )

    def __call__(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        from emovox.features import extract_batched

        feats = extract_batched(self.encoder, list(waves), batch_size=16, progress=False)
        return [f.astype(self.encoder.cache_dtype) for f in feats]


def encoder_embedding_params(encoder: str, layers: Any = "all") -> dict[str, Any]:
    """``params`` for :func:`extract_embeddings` with an :class:`EncoderEmbedder` of the same
    ``encoder`` / ``layers``: the parameter part of the training cache key."""
    from emovox.cache import feature_key
    from emovox.encoders import load_encoder

    return feature_key(load_encoder(encoder, layers).cfg)


def embedding_key(wave: np.ndarray, params: Mapping[str, Any]) -> str:
    """The feature-cache key of a wave's embedding: its float32 samples plus ``params`` (the
    embedder's identity: encoder, revision, layer, pooling...), the recipe of
    :func:`~emovox.cache.cached_features`."""
    from emovox.cache import content_hash

    return content_hash([np.asarray(wave, dtype=np.float32).reshape(-1), dict(params)])


def embedding_schema() -> Any:
    """Columns of :func:`extract_embeddings`' output: ``path``, ``key`` (the cache key),
    ``shape``, ``duration``, ``cached`` (already in the cache before this run) and ``error``."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("path", pa.string()),
            pa.field("key", pa.string()),
            pa.field("shape", pa.list_(pa.int64())),
            pa.field("duration", pa.float64()),
            pa.field("cached", pa.bool_()),
            pa.field("error", pa.string()),
        ]
    )


@dataclass
class EmbedderSetup:
    """Per-worker factory: the user's embedder factory plus the feature cache it fills."""

    make_embedder: Callable[[], Embedder]
    cache_root: str

    def __call__(self) -> tuple[Embedder, Any]:
        from emovox.cache import FeatureCache

        return self.make_embedder(), FeatureCache(self.cache_root)


def embed_batch(state: tuple[Embedder, Any], paths: list[str], *, params: Mapping[str, Any]) -> Rows:
    """One batch of :func:`extract_embeddings`: decode, look up the cache, embed the misses together."""
    embedder, cache = state
    rows: Rows = []
    misses: list[tuple[str, str, np.ndarray, float]] = []
    for path in paths:
        try:
            wave = read_audio(path, embedder.sample_rate)
        except Exception as exc:  # a bad file never fails the job
            rows.append(error_row(path, exc))
            continue
        prepare = getattr(embedder, "prepare", None)  # e.g. silence trimming, as training loads clips
        if prepare is not None:
            try:
                wave = prepare(wave, path)
            except Exception as exc:
                rows.append(error_row(path, exc))
                continue
        key = embedding_key(wave, params)
        duration = round(wave.size / embedder.sample_rate, 4)
        cached = cache.get(key)
        if cached is not None:
            rows.append(
                {"path": path, "key": key, "shape": list(cached.shape), "duration": duration, "cached": True}
            )
        else:
            misses.append((path, key, wave, duration))
    if misses:
        vectors = list(embedder([wave for _, _, wave, _ in misses]))
        if len(vectors) != len(misses):
            raise ValueError(f"the embedder returned {len(vectors)} arrays for {len(misses)} waves")
        for (path, key, _, duration), vector in zip(misses, vectors, strict=True):
            array = np.asarray(vector)
            cache.put(key, array)
            rows.append(
                {"path": path, "key": key, "shape": list(array.shape), "duration": duration, "cached": False}
            )
    return rows


def extract_embeddings(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    embedder: Callable[[], Embedder],
    params: Mapping[str, Any],
    cache_dir: str | os.PathLike[str] | None = None,
    address: str | None = None,
    workers: int | tuple[int, int] | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    runtime_env: Mapping[str, Any] | None = None,
    ray_init: Mapping[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
) -> JobResult:
    """Compute an embedding of every audio file of ``inputs`` on Ray and store it in the feature cache.

    ``embedder()`` runs once per worker and returns an :class:`Embedder` (load the encoder
    there); ``params`` (JSON-able) identifies what it computes and enters every cache key
    (:func:`embedding_key`). Arrays go to ``FeatureCache(cache_dir)`` (default ``$EMOVOX_CACHE``),
    which must be a folder every worker can write (a shared filesystem on a multi-machine
    cluster); ``out`` records one row per file (:func:`embedding_schema`) and makes a re-run
    skip the files done. Ray arguments as for :func:`run_job`.
    """
    from emovox.cache import FeatureCache

    files, warnings = list_inputs(inputs)
    for message in warnings:
        (warn or (lambda m: None))(message)
    if not files:
        raise ConfigError("no audio files to embed in " + ", ".join(_names(inputs)))
    try:
        json.dumps(dict(params), sort_keys=True)
    except TypeError as exc:
        raise ConfigError(f"params: must be JSON-able ({exc})") from None
    cache_root = os.path.abspath(FeatureCache(cache_dir).root)
    schema = embedding_schema()
    job = {"kind": "embeddings", "params": dict(params), "cache": cache_root, "columns": schema.names}
    return run_job(
        files,
        out,
        setup=EmbedderSetup(embedder, cache_root),
        process=partial(embed_batch, params=dict(params)),
        schema=schema,
        job=job,
        address=address,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        batch_size=batch_size,
        runtime_env=runtime_env,
        ray_init=ray_init,
    )


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "BatchWorker",
    "Embedder",
    "JobError",
    "JobResult",
    "ResultStore",
    "embedding_key",
    "extract_embeddings",
    "is_ray_address",
    "list_inputs",
    "predict_files",
    "prediction_schema",
    "read_manifest",
    "read_results",
    "require_ray",
    "run_job",
]
