"""Embeddings on Ray: an :class:`Embedder`'s arrays for every file, stored in the
:class:`~emovox.cache.FeatureCache` under the keys training looks up (:func:`extract_embeddings`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np

from emovox.errors import ConfigError
from emovox.job_inputs import job_files, read_audio
from emovox.ray_jobs import DEFAULT_BATCH_SIZE, JobResult, Rows, error_row, run_job

__all__ = [
    "Embedder",
    "EmbedderSetup",
    "EncoderEmbedder",
    "embed_batch",
    "embedding_key",
    "embedding_schema",
    "encoder_embedding_params",
    "extract_embeddings",
]


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

    files = job_files(inputs, "embed", warn)
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
