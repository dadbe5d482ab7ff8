"""On-disk feature cache keyed by audio content and feature parameters.

A cached array is found by a SHA-256 of everything that determines it: the audio's content
(decoded samples or file bytes, never its path, so a renamed file still hits and an edited one
misses), the full :class:`~emovox.features.FeatureConfig` and the feature code's version string.
Any parameter or code change therefore produces a different key; stale features are never reused.

Arrays are stored as ``.npy`` (read with ``allow_pickle=False``), written to a temporary file and
moved into place with :func:`os.replace`, so a crash or a concurrent writer never leaves a
half-written entry under a valid name. An unreadable entry is treated as a miss and rewritten.
Temporary files a killed writer left behind are deleted when the cache is next opened
(:mod:`emovox.tmpfiles`: once their process is gone, or after a quarter of an hour).

Default location: ``$EMOVOX_CACHE`` or ``~/.cache/emovox/features``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emovox import tmpfiles
from emovox.errors import ConfigError

KeyPart = str | bytes | int | float | bool | None | np.ndarray | Mapping[str, Any] | Sequence[Any]


def default_cache_dir() -> Path:
    """``$EMOVOX_CACHE`` if set, else ``~/.cache/emovox/features``."""
    env = os.environ.get("EMOVOX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "emovox" / "features"


def content_hash(parts: Iterable[KeyPart]) -> str:
    """SHA-256 hex digest of ``parts``, each tagged with its type so different inputs never collide.

    Arrays hash their dtype, shape and bytes; mappings and sequences hash as canonical JSON
    (sorted keys), so a ``FeatureConfig.to_dict()`` hashes the same in every process.
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            arr = np.ascontiguousarray(part)
            h.update(b"A" + f"{arr.dtype.str}{arr.shape}".encode() + b"\0")
            h.update(arr.tobytes())
        elif isinstance(part, (bytes, bytearray, memoryview)):
            data = bytes(part)
            h.update(b"B" + str(len(data)).encode() + b"\0" + data)
        else:
            try:
                text = json.dumps(part, sort_keys=True, separators=(",", ":"), allow_nan=True)
            except TypeError as exc:
                raise ConfigError(f"cache key: cannot hash a {type(part).__name__} ({exc})") from None
            h.update(b"J" + text.encode() + b"\0")
    return h.hexdigest()


class FeatureCache:
    """A folder of ``<key[:2]>/<key>.npy`` arrays; see the module docstring for the keying rules."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0  # time spent computing misses in cached_features
        self.removed_stale = _clean_once(self.root)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    def key(self, key_parts: Iterable[KeyPart]) -> str:
        """The cache key (hex SHA-256) of ``key_parts``."""
        return content_hash(key_parts)

    def path_for(self, key: str) -> Path:
        """Where the array for ``key`` lives (it may not exist yet)."""
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The stored array, or None if absent or unreadable (a corrupt entry is deleted)."""
        path = self.path_for(key)
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, array: np.ndarray) -> Path:
        """Store ``array`` under ``key`` atomically (temporary file + ``os.replace``)."""
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=tmpfiles.temp_prefix(key[:8]), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.asarray(array), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def get_or_compute(self, key_parts: Iterable[KeyPart], fn: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``key_parts``, computing it with ``fn()`` and storing it on a miss."""
        key = self.key(key_parts)
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        value = np.asarray(fn())
        self.put(key, value)
        return value

    def clear(self) -> int:
        """Delete every cached array; returns how many were removed."""
        removed = 0
        if self.root.is_dir():
            for path in self.root.glob("*/*.npy"):
                path.unlink(missing_ok=True)
                removed += 1
        return removed


_CLEANED: set[Path] = set()
_CLEANED_LOCK = threading.Lock()


def _clean_once(root: Path) -> int:
    """Delete the ``.tmp`` files killed writers left in the cache (once per folder and process)."""
    with _CLEANED_LOCK:
        if root in _CLEANED:
            return 0
        _CLEANED.add(root)
    if not root.is_dir():
        return 0
    try:
        shards = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return 0
    return sum(tmpfiles.remove_stale(shard, ".*.tmp") for shard in shards)


def feature_key(cfg: Any) -> dict[str, Any]:
    """The parameter part of a feature cache key: the config's dict plus the feature code version."""
    from emovox.features import FEATURES_VERSION

    params = cfg.cache_dict() if hasattr(cfg, "cache_dict") else cfg.to_dict()
    return {"features": params, "code_version": FEATURES_VERSION}


def cached_features(
    waves: Sequence[np.ndarray],
    extractor: Any,
    cache: FeatureCache | None = None,
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> list[np.ndarray]:
    """Frame features ``[C, F_i]`` of each waveform, from ``cache`` where present.

    Misses are computed by :func:`emovox.features.extract_batched` (length-sorted padded batches on
    the extractor's device) a block at a time under one progress bar, and each block is stored as
    soon as it is done, so an interrupted extraction resumes where it stopped. Each clip's key is the
    hash of its float32 samples plus :func:`feature_key` of ``extractor.cfg``; an extractor with a
    ``cache_dtype`` (the pretrained encoders: float16) is stored in that dtype. The time spent
    extracting is added to ``cache.seconds`` (with ``cache.misses`` it gives the cost per clip).
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from emovox.features import extract_batched

    cache = cache if cache is not None else FeatureCache()
    params = feature_key(extractor.cfg)
    keys = [cache.key([np.asarray(w, dtype=np.float32).reshape(-1), params]) for w in waves]
    out: list[np.ndarray | None] = [cache.get(k) for k in keys]
    missing = [i for i, arr in enumerate(out) if arr is None]
    cache.hits += len(waves) - len(missing)
    cache.misses += len(missing)
    if not missing:
        return out  # type: ignore[return-value]
    dtype = getattr(extractor, "cache_dtype", None)
    missing.sort(key=lambda i: int(np.asarray(waves[i]).size))  # similar lengths share a batch
    block = max(batch_size * 4, 64)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    started = time.perf_counter()
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("extracting features", total=len(missing))
        for start in range(0, len(missing), block):
            part = missing[start : start + block]
            computed = extract_batched(
                extractor, [waves[i] for i in part], batch_size=batch_size, progress=False
            )
            for i, arr in zip(part, computed, strict=True):
                arr = arr.astype(dtype) if dtype is not None else arr
                cache.put(keys[i], arr)
                out[i] = arr
            bar.advance(task, len(part))
    cache.seconds = getattr(cache, "seconds", 0.0) + time.perf_counter() - started
    return out  # type: ignore[return-value]


__all__ = ["FeatureCache", "cached_features", "content_hash", "default_cache_dir", "feature_key"]
