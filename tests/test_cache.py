"""Feature cache: content + parameter keys, atomic .npy entries, corruption recovery, speed-up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import synth_speech
from emovox.cache import FeatureCache, cached_features, content_hash, default_cache_dir, feature_key
from emovox.features import FeatureConfig, FeatureExtractor


def test_hit_miss_and_key_parts(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    wave = synth_speech(0.5)
    params = feature_key(FeatureConfig())
    first = cache.get_or_compute([wave, params], compute)
    second = cache.get_or_compute([wave, params], compute)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, second)
    # a parameter change and a content change are both misses
    cache.get_or_compute([wave, feature_key(FeatureConfig(n_mels=40))], compute)
    changed = wave.copy()
    changed[100] += 1e-3
    cache.get_or_compute([changed, params], compute)
    assert len(calls) == 3
    # only .npy entries, no temporary leftovers
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 3 and all(f.endswith(".npy") and not f.startswith(".") for f in files)


def test_keys_distinguish_types_and_dtypes() -> None:
    a = np.zeros(4, dtype=np.float32)
    assert content_hash([a]) != content_hash([a.astype(np.float64)])
    assert content_hash([a]) != content_hash([a.reshape(2, 2)])
    assert content_hash([b"12"]) != content_hash(["12"]) != content_hash([12])
    assert content_hash([{"a": 1, "b": 2}]) == content_hash([{"b": 2, "a": 1}])
    assert feature_key(FeatureConfig())["code_version"]


def test_corrupted_entry_is_recomputed(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    parts = [b"audio bytes", {"p": 1}]
    cache.get_or_compute(parts, lambda: np.ones(3))
    path = cache.path_for(cache.key(parts))
    path.write_bytes(b"\x93NUMPY garbage")
    out = cache.get_or_compute(parts, lambda: np.full(3, 7.0))
    np.testing.assert_array_equal(out, np.full(3, 7.0))
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), np.full(3, 7.0))


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = cache.key(["x"])
    path = cache.path_for(key)
    path.parent.mkdir(parents=True)
    np.save(path, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    assert cache.get(key) is None and not path.exists()


def test_default_location_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EMOVOX_CACHE", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "emovox" / "features"
    monkeypatch.setenv("EMOVOX_CACHE", str(tmp_path / "c"))
    assert FeatureCache().root == tmp_path / "c"


def test_cached_features_second_run_is_faster_and_identical(tmp_path: Path) -> None:
    cfg = FeatureConfig(sets=("logmel", "mfcc", "chroma", "contrast"))
    extractor = FeatureExtractor(cfg).eval()
    waves = [synth_speech(1.0 + 0.1 * i, seed=i) for i in range(12)]
    cache = FeatureCache(tmp_path)
    t0 = time.perf_counter()
    first = cached_features(waves, extractor, cache, batch_size=4, progress=False)
    t1 = time.perf_counter()
    second = cached_features(waves, extractor, cache, batch_size=4, progress=False)
    t2 = time.perf_counter()
    assert (cache.misses, cache.hits) == (12, 12)
    assert (t2 - t1) < (t1 - t0) / 3
    for a, b, w in zip(first, second, waves, strict=True):
        assert a.shape == (cfg.num_channels, 1 + w.size // cfg.hop_length)
        np.testing.assert_array_equal(a, b)
    # another configuration never reuses these entries
    other = FeatureExtractor(FeatureConfig(sets=("logmel",), n_mels=32)).eval()
    third = cached_features(waves[:2], other, cache, progress=False)
    assert cache.misses == 14 and third[0].shape[0] == 32
    assert cache.clear() == 14


def test_temporaries_of_killed_writers_are_removed_when_the_cache_opens(tmp_path: Path) -> None:
    """kill -9 during put() left ``.*.tmp`` files in the cache forever."""
    import subprocess
    import sys

    from emovox import tmpfiles

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    shard = tmp_path / "ab"
    shard.mkdir(parents=True)
    dead = shard / f".abcdef12.tmp-{tmpfiles._HOST}-{child.pid}-x1y2z3.tmp"  # its writer is gone
    old = shard / ".abcdef12-q1w2e3.tmp"  # written before writers were recorded, an hour ago
    recent = shard / ".abcdef12-r4t5y6.tmp"  # may still be written (by another host): kept
    live = shard / (tmpfiles.temp_name("abcdef12") + ".tmp")  # this process: still writing
    entry = shard / ("ab" + "0" * 62 + ".npy")
    for path in (dead, old, recent, live):
        path.write_bytes(b"partial")
    np.save(entry, np.zeros(3))
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    cache = FeatureCache(tmp_path)
    assert cache.removed_stale == 2
    assert sorted(p.name for p in shard.iterdir()) == sorted([recent.name, live.name, entry.name])
    np.testing.assert_array_equal(cache.get("ab" + "0" * 62), np.zeros(3))
