"""Run folders: names that cannot escape runs/, --out that never overwrites what is not a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import synth_speech
from emovox.cli import app
from emovox.config import load_config
from emovox.errors import ConfigError
from emovox.runs import RUN_MARKER, check_run_name, new_run_dir, train_run_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for s in range(3):
        for k, emotion in enumerate(("neutral", "happy", "angry")):
            folder = root / f"spk{s}" / emotion
            folder.mkdir(parents=True)
            sf.write(folder / "00.wav", synth_speech(0.3, 16_000, f0=110.0 * (k + 1), seed=s), 16_000)
    return root


@pytest.fixture(scope="module")
def config(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "svm.yaml"
    path.write_text(
        f"data: {{path: {corpus}, corpus: folder}}\n"
        "model: {family: svm, params: {features: stats, C: 1.0}}\nsplit: {protocol: none}\n"
    )
    return path


def _one_error_line(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    return result.output


@pytest.mark.parametrize("name", ["../../escaped_run", "a/b", "..", "/abs", ".hidden", "x" * 101, ""])
def test_run_names_that_are_not_one_folder_name_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="cannot name a run folder"):
        check_run_name(name)


def test_cli_train_name_cannot_create_a_folder_outside_runs(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    out = _one_error_line(["train", "-c", str(config), "name=../../escaped_run"])
    assert "cannot name a run folder" in out
    assert not list(tmp_path.rglob("escaped_run*")) and not (work / "runs").exists()
    cfg = load_config(None, ["name=../../escaped_run"])
    with pytest.raises(ConfigError, match="cannot name a run folder"):
        train_run_dir(cfg, None)


def test_out_at_a_file_or_a_folder_that_is_not_a_run_is_refused(
    config: Path, corpus: Path, tmp_path: Path
) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    out = _one_error_line(["train", "-c", str(config), "-o", str(a_file)])
    assert "is a file, not a folder" in out and a_file.read_text() == "mine"

    project = tmp_path / "project"
    project.mkdir()
    (project / "report.md").write_text("my own report")
    out = _one_error_line(["train", "-c", str(config), "-o", str(project)])
    assert "is not an emovox run folder" in out
    assert (project / "report.md").read_text() == "my own report"
    assert sorted(p.name for p in project.iterdir()) == ["report.md"]

    # evaluate checks --out before scanning the corpus or loading audio
    out = _one_error_line(["evaluate", str(corpus), "-o", str(a_file)])
    assert "is a file, not a folder" in out
    out = _one_error_line(["evaluate", str(corpus), "-o", str(project)])
    assert "is not an emovox run folder" in out and (project / "report.md").read_text() == "my own report"


def test_out_may_be_new_empty_or_an_earlier_run_of_the_same_kind(tmp_path: Path) -> None:
    fresh = new_run_dir(tmp_path / "new" / "run", "eval", kind="evaluate")
    assert (fresh / RUN_MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert new_run_dir(empty, "eval", kind="evaluate") == empty
    assert new_run_dir(fresh, "eval", kind="evaluate") == fresh  # evaluate again into it
    with pytest.raises(ConfigError, match="holds an emovox evaluate run, not a cv run"):
        new_run_dir(fresh, "cv", kind="cv")
    legacy = tmp_path / "legacy"  # a run folder written before the marker existed
    legacy.mkdir()
    (legacy / "report.md").write_text("# run")
    (legacy / "metrics.json").write_text("{}")
    assert new_run_dir(legacy, "eval", kind="evaluate") == legacy
    default = new_run_dir(None, "eval", kind="evaluate", parent=tmp_path / "runs")
    assert default.parent == tmp_path / "runs" and default.name.startswith("eval-")


# --------------------------------------------------------------------------- speaker leakage


def test_leak_check_uses_speaker_lists_and_is_honest_about_counts() -> None:
    from emovox.bundle import read_meta
    from emovox.runs import leak_check

    listed = {"training": {"speakers": ["ravdess:01", "ravdess:02"]}}
    assert leak_check(listed, ["ravdess:02", "ravdess:03"])["leaked"] == ["ravdess:02"]
    assert leak_check(listed, ["ravdess:03"])["status"] == "clean"

    default = read_meta("fast")  # records a count (16) and its validation speakers as a string
    assert default["training"]["speakers"] == 16
    unknown = leak_check(default, ["ravdess:17", "ravdess:18"])
    assert unknown["status"] == "unknown" and unknown["training_speaker_count"] == 16
    assert "only how many speakers it was trained on (16)" in unknown["reason"]
    found = leak_check(default, ["ravdess:05", "ravdess:17"])
    assert found["status"] == "leak" and found["leaked"] == ["ravdess:05"]  # a validation speaker
    assert leak_check(default, ["tess:OAF"])["status"] == "clean"  # another corpus: no shared speaker
    assert leak_check(default, ["folder:spk1"])["status"] == "unknown"  # ids that are not global
    assert leak_check({}, ["ravdess:01"])["status"] == "unknown"


def test_cli_evaluate_fast_model_warns_that_leakage_cannot_be_ruled_out(tmp_path: Path) -> None:
    """The shipped fast model records only a speaker count: evaluating it on RAVDESS actors it may
    have trained on must say so in the terminal, not only in report.md."""
    data = tmp_path / "ravdess"
    for actor in (17, 18):
        folder = data / f"Actor_{actor}"
        folder.mkdir(parents=True)
        for code, f0 in (("01", 110.0), ("03", 220.0), ("05", 330.0)):
            name = f"03-01-{code}-01-01-01-{actor}.wav"
            sf.write(folder / name, synth_speech(0.8, 16_000, f0=f0, seed=actor), 16_000)
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(data),
            "--model",
            "fast",
            "--speakers",
            "17,18",
            "-o",
            str(tmp_path / "run"),
            "--no-plots",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "speaker leakage cannot be ruled out" in " ".join(result.output.split())
    report = (tmp_path / "run" / "report.md").read_text()
    assert "leakage cannot be ruled out" in report and "(16), not which" in report


def test_cli_evaluate_default_model_names_its_training_speakers(tmp_path: Path) -> None:
    """The default model records its speaker ids: testing it on its own training actors is a leak."""
    data = tmp_path / "ravdess"
    folder = data / "Actor_17"
    folder.mkdir(parents=True)
    for code, f0 in (("01", 110.0), ("03", 220.0), ("05", 330.0)):
        sf.write(folder / f"03-01-{code}-01-01-01-17.wav", synth_speech(0.8, 16_000, f0=f0, seed=17), 16_000)
    result = CliRunner().invoke(app, ["evaluate", str(data), "-o", str(tmp_path / "run"), "--no-plots"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "ravdess:17 were in the model's training data" in text and "not speaker-independent" in text
