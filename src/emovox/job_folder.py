"""A job's output folder: committed Parquet part files plus ``_emovox.json`` (local or fsspec URL).

The folder is resumable: :class:`ResultStore` checks that an existing folder holds results of the
same job, removes the temporaries of batches in flight when a run stopped, lists the paths already
done and commits each batch's part atomically. pyarrow is imported only inside.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emovox.errors import ConfigError
from emovox.job_inputs import is_url, local_path, url_fs

__all__ = ["FORMAT_VERSION", "META_FILE", "ResultStore", "read_results"]

META_FILE = "_emovox.json"  # the job description; "_" so Parquet readers skip it
FORMAT_VERSION = 1


class ResultStore:
    """The output: a folder of ``part-*.parquet`` files plus ``_emovox.json`` (local or fsspec URL).

    Part files are written under a hidden temporary name and renamed into place, so a reader, a
    resuming run or a crash never sees half a part. The part name is a hash of the batch's paths,
    so a batch that Ray retries overwrites its own part instead of duplicating rows.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = os.fspath(out)
        self.remote = is_url(self.out)
        self.root = self.out.rstrip("/") if self.remote else os.path.abspath(local_path(self.out))

    def _fs(self) -> tuple[Any, str]:
        if self.remote:
            return url_fs(self.root)
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
