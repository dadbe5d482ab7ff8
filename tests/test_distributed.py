"""Batch jobs on a real Ray cluster: one local cluster on 127.0.0.1 per module (2 CPUs, no
dashboard, a small object store), one worker per job so the tests stay fast on 2 cores.

Prediction over a folder of good and bad files must equal the local Recognizer's; bad files get
error rows; a re-run skips what is done; a killed job resumes; embeddings fill the cache.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import REPO, make_tiny_whisper, synth_speech

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "emovox[ray]")')
pa = pytest.importorskip("pyarrow")

from emovox import distributed  # noqa: E402
from emovox.cache import FeatureCache  # noqa: E402
from emovox.cli import app  # noqa: E402
from emovox.errors import ConfigError  # noqa: E402
from emovox.predict import Recognizer  # noqa: E402

EXAMPLES = sorted((REPO / "examples").glob("*.flac"))
SR = 16_000


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster bound to 127.0.0.1 (Ray picks the machine's address unless told not to)."""
    from ray._private import ray_constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # its processes, too, stay on loopback
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=100 * 2**20,
            log_to_driver=False,
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            address = ray.get_runtime_context().gcs_address
            assert address.startswith("127.0.0.1:"), address
            yield address
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.load("default")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The example clips in nested folders plus files that cannot be used."""
    root = tmp_path_factory.mktemp("clips")
    good = []
    for i, src in enumerate(EXAMPLES):
        dest = root / f"speaker{i % 2}" / src.name
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(src, dest)
        good.append(dest)
    bad = [root / "corrupt.wav", root / "empty.flac", root / "silent.wav", root / "short.wav"]
    bad[0].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    bad[1].write_bytes(b"")
    sf.write(bad[2], np.zeros(SR, dtype=np.float32), SR)
    sf.write(bad[3], synth_speech(0.1), SR)  # shorter than the model's minimum duration
    return {"root": [root], "good": sorted(good), "bad": bad}


@pytest.fixture(scope="module")
def first_run(cluster, clips, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run") / "results.parquet"
    result = distributed.predict_files(clips["root"], out, workers=1, batch_size=4)
    return out, result, distributed.read_results(out).to_pylist()


def test_rows_equal_the_local_recognizer_and_bad_files_get_error_rows(first_run, clips, recognizer) -> None:
    out, result, rows = first_run
    labels = recognizer.labels
    assert (result.files, result.already_done, result.processed, result.failed) == (12, 0, 12, 4)
    assert result.parts == len(list(out.glob("part-*.parquet"))) >= 3  # batches of 4 files
    by_path = {row["path"]: row for row in rows}
    assert len(rows) == len(by_path) == 12

    expected = recognizer.predict([str(p) for p in clips["good"]])
    for pred in expected:
        row = by_path[pred.path]
        assert row["error"] is None and row["emotion"] == pred.emotion
        assert row["duration"] == pytest.approx(pred.duration)
        assert row["confidence"] == pytest.approx(pred.confidence, abs=1e-6)
        got = np.array([row[f"prob_{label}"] for label in labels])
        np.testing.assert_allclose(got, [pred.probabilities[label] for label in labels], atol=1e-5)
        assert got.sum() == pytest.approx(1.0, abs=1e-5)

    for path in clips["bad"]:
        row = by_path[str(path)]
        assert row["error"] and str(path) in row["error"], row
        assert row["emotion"] is None and row["confidence"] is None and row[f"prob_{labels[0]}"] is None
    assert "file is empty" in by_path[str(clips["bad"][1])]["error"]
    assert "digital silence" in by_path[str(clips["bad"][2])]["error"]
    assert by_path[str(clips["bad"][3])]["duration"] == pytest.approx(0.1)  # decoded, then refused
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_rerun_through_the_cli_predicts_only_new_files(first_run, clips, tmp_path: Path) -> None:
    out, _, first_rows = first_run
    resumed = tmp_path / "results.parquet"
    shutil.copytree(out, resumed)
    before = {p.name: p.read_bytes() for p in resumed.glob("part-*.parquet")}
    new = tmp_path / "new" / "extra.flac"
    new.parent.mkdir()
    shutil.copy(EXAMPLES[0], new)
    argv = ["predict", str(clips["root"][0]), str(new.parent), "--ray", "--out", str(resumed)]
    result = CliRunner().invoke(app, [*argv, "--workers", "1", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert f"13 files -> {resumed}: 1 predicted now, 12 already there, 0 could not be used" in result.output
    rows = distributed.read_results(resumed).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted([*(r["path"] for r in first_rows), str(new)])
    assert {p.name: p.read_bytes() for p in resumed.glob("part-*.parquet") if p.name in before} == before
    twin = next(r for r in rows if r["path"] == str(clips["good"][0]))  # same audio as the new file
    extra = next(r for r in rows if r["path"] == str(new))
    assert extra["emotion"] == twin["emotion"] and extra["confidence"] == pytest.approx(twin["confidence"])


def test_timeline_rows_are_the_recognizer_segments(cluster, clips, recognizer, tmp_path: Path) -> None:
    files = clips["good"][:2] + clips["bad"][:1]
    out = tmp_path / "timeline"
    result = distributed.predict_files(files, out, timeline=True, workers=1)
    assert (result.processed, result.failed) == (3, 1)
    rows = distributed.read_results(out).to_pylist()
    for path in clips["good"][:2]:
        segments = recognizer.timeline(str(path))
        got = sorted((r for r in rows if r["path"] == str(path)), key=lambda r: r["segment"])
        assert segments and len(got) == len(segments)
        for row, seg in zip(got, segments, strict=True):
            assert (row["start"], row["end"], row["emotion"]) == (seg.start, seg.end, seg.emotion)
            probs = [row[f"prob_{label}"] for label in recognizer.labels]
            np.testing.assert_allclose(probs, [seg.probabilities[k] for k in recognizer.labels], atol=1e-5)
    assert [r["error"] is not None for r in rows if r["path"] == str(clips["bad"][0])] == [True]

    with pytest.raises(ConfigError, match="holds results of a different job .*kind timeline"):
        distributed.predict_files(files, out, workers=1)  # not a timeline: refused, nothing mixed


DRIVER = textwrap.dedent(
    """
    import glob, os, sys, time

    import pyarrow as pa

    from emovox.distributed import run_job

    out, address = sys.argv[1], sys.argv[2]

    def setup():
        return out

    def process(out, paths):
        if len(glob.glob(os.path.join(out, "part-*.parquet"))) >= 2:
            time.sleep(600)  # the third batch never ends: the driver is killed meanwhile
        return [{"path": p, "value": len(p)} for p in paths]

    schema = pa.schema([("path", pa.string()), ("value", pa.int64()), ("error", pa.string())])
    files = [f"item-{i:03d}" for i in range(23)]
    run_job(files, out, setup=setup, process=process, schema=schema, job={"kind": "test"},
            address=address, workers=1, batch_size=5)
    """
)


def test_killed_job_loses_only_batches_in_flight_and_resumes(cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    log = tmp_path / "driver.log"
    with log.open("wb") as sink:
        driver = subprocess.Popen([sys.executable, str(script), str(out), cluster], stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("part-*.parquet"))) < 2:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the job did not commit two batches in time"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        driver.send_signal(signal.SIGKILL)  # no chance to clean up: as a crash or a lost machine
        driver.wait(timeout=60)
    committed = sorted(p.name for p in out.glob("part-*.parquet"))
    assert len(committed) == 2  # the batch in flight (and those queued) are lost, nothing else
    done = sorted(r["path"] for r in distributed.read_results(out).to_pylist())
    assert len(done) == 10

    def setup() -> None:
        return None

    def process(state: None, paths: list[str]) -> list[dict]:
        return [{"path": p, "value": len(p)} for p in paths]

    schema = pa.schema([("path", pa.string()), ("value", pa.int64()), ("error", pa.string())])
    files = [f"item-{i:03d}" for i in range(23)]
    job = {"kind": "test"}
    kw = {"setup": setup, "process": process, "schema": schema, "job": job, "workers": 1, "batch_size": 5}
    result = distributed.run_job(files, out, **kw)
    assert (result.already_done, result.processed, result.failed) == (10, 13, 0)
    rows = distributed.read_results(out).to_pylist()
    assert sorted(r["path"] for r in rows) == files  # each file exactly once
    assert all(r["value"] == len(r["path"]) for r in rows)
    assert set(committed) <= {p.name for p in out.glob("part-*.parquet")}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_embeddings_fill_the_feature_cache_and_resume(cluster, clips, tmp_path: Path) -> None:
    def make_embedder():
        class MeanStd:  # defined inside: Ray pickles it by value (the tests are not importable there)
            sample_rate = 16_000  # a literal: a class body cannot see the test module's globals there

            def __call__(self, waves):
                return [np.array([w.mean(), w.std(), w.size], dtype=np.float32) for w in waves]

        return MeanStd()

    params = {"encoder": "mean-std", "version": 1}
    files = [*clips["good"][:3], clips["bad"][0]]
    cache_dir = tmp_path / "cache"
    kw = {"embedder": make_embedder, "params": params, "cache_dir": cache_dir, "workers": 1, "batch_size": 2}
    result = distributed.extract_embeddings(files, tmp_path / "emb", **kw)
    assert (result.processed, result.failed) == (4, 1)
    rows = {r["path"]: r for r in distributed.read_results(tmp_path / "emb").to_pylist()}
    cache = FeatureCache(cache_dir)
    for path in clips["good"][:3]:
        wave = distributed.read_audio(str(path), SR)
        row = rows[str(path)]
        assert row["key"] == distributed.embedding_key(wave, params) and row["cached"] is False
        np.testing.assert_allclose(cache.get(row["key"]), [wave.mean(), wave.std(), wave.size], rtol=1e-6)
        assert row["shape"] == [3]
    assert rows[str(clips["bad"][0])]["error"] and rows[str(clips["bad"][0])]["key"] is None

    again = distributed.extract_embeddings(files, tmp_path / "emb", **kw)
    assert (again.already_done, again.processed) == (4, 0)
    fresh = distributed.extract_embeddings(files[:3], tmp_path / "emb2", **kw)
    assert all(r["cached"] for r in distributed.read_results(tmp_path / "emb2").to_pylist())
    assert fresh.failed == 0


def test_an_existing_folder_that_is_not_a_result_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not an emovox results folder"):
        distributed.predict_files(EXAMPLES[:1], tmp_path, workers=1)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_ray_predict_benchmark_runs(cluster, tmp_path: Path) -> None:
    corpus = tmp_path / "ravdess" / "Actor_01"
    corpus.mkdir(parents=True)
    for src in EXAMPLES[:4]:
        shutil.copy(src, corpus / src.name)
    spec = importlib.util.spec_from_file_location("bench_ray_predict", REPO / "benchmarks" / "ray_predict.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    argv = ["--corpus", str(corpus.parent), "--files", "4", "--workers", "1", "--json-out", str(out)]
    assert bench.main(argv) == 0
    results = json.loads(out.read_text())
    assert results["files"] == 4 and set(results["results"]) == {"local emovox predict", "ray 1 worker"}
    for r in results["results"].values():
        assert r["files_per_s"] > 0 and r["agreement_with_local"] == 1.0


def test_encoder_embeddings_on_ray_are_the_cache_entries_training_reads(
    cluster, clips, tmp_path: Path
) -> None:
    """extract_embeddings + EncoderEmbedder fills the cache under training's keys (trimmed clips)."""
    pytest.importorskip("transformers")
    from emovox.cache import cached_features
    from emovox.corpora import Utterance, load_waves
    from emovox.encoders import load_encoder

    source = make_tiny_whisper(tmp_path / "tiny-whisper", d_model=16, layers=2)
    files = clips["good"][:3]
    cache_dir = tmp_path / "cache"
    result = distributed.extract_embeddings(
        files,
        tmp_path / "emb",
        embedder=lambda: distributed.EncoderEmbedder(str(source), "all", trim=True),
        params=distributed.encoder_embedding_params(str(source), "all"),
        cache_dir=cache_dir,
        workers=1,
        batch_size=2,
    )
    assert (result.processed, result.failed) == (3, 0)
    utts = [Utterance(path=Path(f), emotion="neutral", speaker="x:1", corpus="x", label="n") for f in files]
    waves, _ = load_waves(utts, trim=True, progress=False)
    cache = FeatureCache(cache_dir)
    feats = cached_features(
        [waves[u.path] for u in utts], load_encoder(str(source), "all"), cache, progress=False
    )
    assert cache.hits == 3 and cache.misses == 0  # training finds every clip prepared on the cluster
    assert all(f.dtype == np.float16 and f.shape[0] == 3 * 16 for f in feats)
