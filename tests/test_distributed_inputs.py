"""emovox.distributed without a Ray cluster: input listing, the CLI's --ray options, the message
when the ray extra is missing, and that Ray is never imported without --ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import REPO, synth_speech
from emovox import distributed
from emovox.cli import app
from emovox.errors import ConfigError, CorpusError

runner = CliRunner()


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, synth_speech(0.5), 16_000)
    return path


def test_list_inputs_folders_globs_manifests_and_missing_files(tmp_path: Path, monkeypatch) -> None:
    a = _wav(tmp_path / "corpus" / "spk1" / "a.wav")
    b = _wav(tmp_path / "corpus" / "b.flac")
    _wav(tmp_path / "corpus" / ".hidden" / "h.wav")
    (tmp_path / "corpus" / "notes.txt").write_text("not audio")
    c = _wav(tmp_path / "other" / "c.wav")
    (tmp_path / "empty").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"Path,emotion\n../other/c.wav,happy\n{a},sad\n,\nmissing.wav,angry\n")
    monkeypatch.chdir(tmp_path)

    files, warnings = distributed.list_inputs(["corpus", "other/*.wav", str(manifest), "empty", "nope/*.wav"])
    # folders sorted, then inputs in order, each file once
    assert files == [str(b), str(a), str(c), str(tmp_path / "lists" / "missing.wav")]
    assert warnings == [f"{Path('empty')}: no audio files in this folder", "nope/*.wav: matches no file"]

    # a missing or non-audio file named explicitly is kept: the job gives it an error row
    files, _ = distributed.list_inputs([tmp_path / "corpus" / "notes.txt", "gone.wav"])
    assert files == [str(tmp_path / "corpus" / "notes.txt"), str(tmp_path / "gone.wav")]
    assert distributed.list_inputs(f"file://{tmp_path}/corpus/b.flac")[0] == [str(b)]

    bad = tmp_path / "bad.csv"
    bad.write_text("file,emotion\nx.wav,sad\n")
    with pytest.raises(CorpusError, match=r"bad\.csv: a manifest needs a header with a 'path' column"):
        distributed.list_inputs([bad])


def test_list_inputs_fsspec_urls_use_one_spelling_per_file() -> None:
    fs = fsspec.filesystem("memory")
    for name in ("corp/a/x.wav", "corp/b/y.flac", "corp/.hid/z.wav", "corp/readme.txt"):
        fs.pipe(f"/emovox-test/{name}", b"data")
    fs.pipe("/emovox-test/corp/list.csv", b"path\na/x.wav\nmemory://emovox-test/corp/b/y.flac\n")
    try:
        x, y = "memory:///emovox-test/corp/a/x.wav", "memory:///emovox-test/corp/b/y.flac"
        assert distributed.list_inputs("memory://emovox-test/corp") == ([x, y], [])
        assert distributed.list_inputs("memory://emovox-test/corp/*/*.wav") == ([x], [])
        assert distributed.list_inputs("memory://emovox-test/corp/list.csv") == ([x, y], [])
        files, warnings = distributed.list_inputs(
            ["memory://emovox-test/corp/a/x.wav", "memory://none/*.wav"]
        )
        assert files == [x] and warnings == ["memory://none/*.wav: matches no file"]
    finally:
        fs.rm("/emovox-test", recursive=True)


def test_ray_addresses_are_recognised() -> None:
    for address in ("auto", "local", "ray://head:10001", "10.0.0.5:6379", "head-node:6379"):
        assert distributed.is_ray_address(address), address
    for other in ("clips/", "a.wav", "s3://bucket/x.wav", "results.parquet", "C:/x.wav", ""):
        assert not distributed.is_ray_address(other), other


def _capture(monkeypatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake(inputs: list[str], out: str, **kwargs: Any) -> distributed.JobResult:
        calls.append({"inputs": inputs, "out": out, **kwargs})
        return distributed.JobResult(out, 3, 1, 2, 1, 1, 0.1)

    monkeypatch.setattr(distributed, "predict_files", fake)
    return calls


def test_cli_ray_takes_an_optional_address(monkeypatch) -> None:
    calls = _capture(monkeypatch)
    cases = {
        ("clips/", "--ray", "--out", "r.parquet"): (None, ["clips/"]),
        ("--ray", "clips/", "s3://b/x.wav", "-o", "r.parquet"): (None, ["clips/", "s3://b/x.wav"]),
        ("clips/", "--ray", "auto", "--out", "r.parquet"): ("auto", ["clips/"]),
        ("clips/", "--ray", "ray://head:10001", "--out", "r.parquet"): ("ray://head:10001", ["clips/"]),
        ("clips/", "--out", "r.parquet", "--ray"): (None, ["clips/"]),
        ("clips/", "--ray=10.0.0.5:6379", "--out", "r.parquet"): ("10.0.0.5:6379", ["clips/"]),
    }
    for argv, (address, inputs) in cases.items():
        result = runner.invoke(app, ["predict", *argv])
        assert result.exit_code == 1, (argv, result.output)  # the fake job had one failed file
        assert calls[-1]["address"] == address and calls[-1]["inputs"] == inputs, argv
        assert calls[-1]["out"] == "r.parquet"
    assert "3 files -> r.parquet: 1 predicted now, 1 already there, 1 could not be used" in result.output

    result = runner.invoke(
        app, ["predict", "a.wav", "--ray", "--out", "o", "--timeline", "--workers", "3", "--batch-size", "8"]
    )
    assert calls[-1]["timeline"] is True and calls[-1]["workers"] == 3 and calls[-1]["batch_size"] == 8


def test_cli_ray_option_errors_are_one_line(monkeypatch) -> None:
    calls = _capture(monkeypatch)
    for argv, message in (
        (["a.wav", "--ray"], "--ray needs --out RESULTS"),
        (["a.wav", "--ray", "--out", "o", "--json"], "--json and --top-k do not apply with --ray"),
        (["a.wav", "--out", "o"], "--out, --workers and --batch-size go with --ray"),
        (["a.wav", "--workers", "2"], "--out, --workers and --batch-size go with --ray"),
    ):
        result = runner.invoke(app, ["predict", *argv])
        assert result.exit_code == 2, (argv, result.output)
        assert message in result.output and "Traceback" not in result.output
    assert calls == []
    assert '"emovox[ray]"' in runner.invoke(app, ["predict", "--help"]).output  # not eaten as markup


def test_missing_ray_extra_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    clip = _wav(tmp_path / "a.wav")
    with pytest.raises(ConfigError, match=r'pip install "emovox\[ray\]"'):
        distributed.predict_files([clip], tmp_path / "out")
    result = runner.invoke(app, ["predict", str(clip), "--ray", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert 'install it with: pip install "emovox[ray]"' in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_cli_and_plain_predict_never_import_ray() -> None:
    code = (
        "import sys\n"
        "import emovox.cli\n"
        "assert 'ray' not in sys.modules, 'import emovox.cli imported ray'\n"
        "from typer.testing import CliRunner\n"
        f"r = CliRunner().invoke(emovox.cli.app, ['predict', {str(REPO / 'examples')!r}, '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert r.output.count('emotion') == 8, r.output\n"
        "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules, 'plain predict imported ray'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_a_failing_batch_is_retried_file_by_file() -> None:
    def process(state: str, paths: list[str]) -> list[dict[str, Any]]:
        if any("bad" in p for p in paths):
            raise ValueError("cannot handle this one")
        return [{"path": p, "value": state} for p in paths if "lost" not in p]

    rows = distributed._process_guarded(process, "ok", ["a", "bad", "lost", "b"])
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == 4 and by_path["a"] == {"path": "a", "value": "ok"} and by_path["b"]["value"] == "ok"
    assert by_path["bad"]["error"] == "bad: ValueError: cannot handle this one"
    assert by_path["lost"]["error"] == "lost: the job produced no result for this file"


@pytest.mark.parametrize("where", ["local", "memory"])
def test_result_store_commits_parts_atomically_and_checks_the_job(tmp_path: Path, monkeypatch, where) -> None:
    pa = pytest.importorskip("pyarrow", reason='pyarrow is not installed (pip install "emovox[ray]")')
    out = str(tmp_path / "results") if where == "local" else f"memory://emovox-test-{tmp_path.name}/results"
    store = distributed.ResultStore(out)
    schema = pa.schema([("path", pa.string()), ("error", pa.string())])
    job = {"kind": "test", "columns": schema.names}
    store.prepare(job)
    assert store.done_paths() == set()
    store.write_part(
        pa.Table.from_pylist([{"path": "a"}, {"path": "b", "error": "b: bad"}], schema), ["a", "b"]
    )
    store.write_part(pa.Table.from_pylist([{"path": "c"}], schema), ["c"])
    assert store.done_paths() == {"a", "b", "c"} and len(store.parts()) == 2
    assert sorted(distributed.read_results(out).column("path").to_pylist()) == ["a", "b", "c"]

    if where == "local":  # a crash between writing and renaming leaves no visible part

        def crash(src: str, dst: str) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(distributed.os, "replace", crash)
        with pytest.raises(OSError, match="disk full"):
            store.write_part(pa.Table.from_pylist([{"path": "d"}], schema), ["d"])
        monkeypatch.undo()
        assert store.done_paths() == {"a", "b", "c"}
        assert [p.name for p in (tmp_path / "results").iterdir() if p.name.startswith(".")] == []

    distributed.ResultStore(out).prepare(job)  # the same job resumes
    with pytest.raises(ConfigError, match="holds results of a different job"):
        distributed.ResultStore(out).prepare({"kind": "other", "columns": schema.names})
