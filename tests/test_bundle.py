"""Model bundles: round trip, no pickle, every way a bundle can be broken, atomic save, model card."""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from emovox import bundle as bundle_mod
from emovox.audio import load_audio
from emovox.bundle import (
    CARD_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    METRICS_FILE,
    WEIGHTS_FILE,
    ModelCard,
    load_bundle,
    read_meta,
    save_bundle,
)
from emovox.errors import BundleError, ConfigError
from emovox.features import FeatureConfig
from emovox.models import EmotionNet

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.flac"))
LABELS = ["angry", "happy", "neutral", "sad"]
CARD = {
    "data": "RAVDESS speech (test fixture, random weights)",
    "protocol": "5-fold speaker-independent cross-validation",
    "licence": "CC BY-NC-SA 4.0 (RAVDESS)",
}
CV_METRICS = {"mean": {"ua": 0.6123, "wa": 0.6351, "macro_f1": 0.601}, "std": {"ua": 0.041, "wa": 0.03}}


def make_net(family: str = "cnn2d", seed: int = 0) -> EmotionNet:
    """A tiny random network with a non-trivial normaliser (so the buffers must round-trip too)."""
    torch.manual_seed(seed)
    if family == "mlp":
        net = EmotionNet(
            FeatureConfig(sets=("mfcc",), n_mfcc=20, stats=("mean", "std")), "mlp", {"hidden": [16]}, LABELS
        )
    else:
        net = EmotionNet(FeatureConfig(sets=("logmel",), n_mels=32), "cnn2d", {"channels": [4, 8]}, LABELS)
    net.set_normalization(torch.randn(net.input_dim) * 3, torch.rand(net.input_dim) * 5 + 0.5)
    return net.eval()


def probabilities(net: EmotionNet, waves: list[np.ndarray]) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for w in waves:
            wave = torch.from_numpy(w)[None]
            out.append(torch.softmax(net(wave, torch.tensor([w.size])), -1)[0].numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [load_audio(p) for p in EXAMPLES[:3]]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, EmotionNet]:
    net = make_net()
    path = save_bundle(
        net,
        tmp_path / "model",
        metrics=CV_METRICS,
        card=CARD,
        training={"corpora": ["ravdess"], "utterances": 960, "speakers": ["ravdess:01", "ravdess:02"]},
        preprocessing={"trim_silence": True, "min_duration": 0.3},
    )
    return path, net


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("family", ["cnn2d", "mlp"])
def test_round_trip_gives_the_same_probabilities(
    tmp_path: Path, clips: list[np.ndarray], family: str
) -> None:
    net = make_net(family, seed=3)
    path = save_bundle(net, tmp_path / "b", metrics={"ua": 0.5}, card=CARD)
    loaded, meta = load_bundle(path)
    assert not loaded.training
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    np.testing.assert_array_equal(probabilities(net, clips), probabilities(loaded, clips))
    assert meta["model"] == json.loads(json.dumps(net.config()))
    assert meta["format_version"] == FORMAT_VERSION and meta["emovox_version"]
    assert meta["metrics"] == {"ua": 0.5} and meta["path"] == str(path)


def test_meta_records_preprocessing_training_and_checksums(saved: tuple[Path, EmotionNet]) -> None:
    path, _ = saved
    meta = read_meta(path)
    assert meta["preprocessing"] == {"trim_silence": True, "min_duration": 0.3}
    assert meta["training"]["speakers"] == ["ravdess:01", "ravdess:02"]
    assert meta["sample_rate"] == 16000
    assert meta["sha256"][WEIGHTS_FILE] == bundle_mod.sha256_file(path / WEIGHTS_FILE)
    assert json.loads((path / METRICS_FILE).read_text()) == CV_METRICS


def test_metrics_from_numpy_serialise(tmp_path: Path) -> None:
    metrics = {"ua": np.float32(0.5), "confusion": np.eye(2, dtype=np.int64), "labels": ("a", "b")}
    path = save_bundle(make_net(), tmp_path / "b", metrics=metrics, card=CARD)
    assert read_meta(path)["metrics"] == {"ua": 0.5, "confusion": [[1, 0], [0, 1]], "labels": ["a", "b"]}


def test_run_folder_resolves_to_its_model(saved: tuple[Path, EmotionNet]) -> None:
    path, net = saved  # saved at <tmp>/model, i.e. <tmp> looks like a run directory
    loaded, meta = load_bundle(path.parent)
    assert meta["path"] == str(path)
    assert torch.equal(loaded.mean, net.mean)


def test_bundle_is_readable_by_everyone(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = save_bundle(make_net(), tmp_path / "b", metrics={}, card=CARD)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()} == {0o644}


# --------------------------------------------------------------------------- never pickle


def test_bundle_holds_no_pickle_and_loads_without_unpickling(
    saved: tuple[Path, EmotionNet], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, net = saved
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE, CARD_FILE]
    )
    for file in path.iterdir():
        assert not file.read_bytes().startswith(b"\x80"), f"{file.name} looks like a pickle"
        assert not file.name.endswith((".pt", ".pth", ".ckpt", ".pkl", ".bin"))
    raw = (path / WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])  # safetensors: 8-byte length + JSON header + raw tensors
    assert set(header) - {"__metadata__"} == set(net.state_dict())

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a bundle must load without unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded, _ = load_bundle(path)
    assert torch.equal(loaded.std, net.std)


def test_no_module_of_the_bundle_path_can_unpickle() -> None:
    """Belt and braces for the test above: no torch.load / pickle / np.load(allow_pickle) in the code."""
    pattern = re.compile(r"torch\.load\(|import pickle|from pickle|allow_pickle=True|weights_only=False")
    for name in ("bundle.py", "predict.py", "runtime.py", "export.py"):
        source = (REPO / "src" / "emovox" / name).read_text()
        assert not pattern.search(source), name


# --------------------------------------------------------------------------- broken bundles


def test_missing_bundle_folder_or_a_file_instead(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"nope: model bundle not found"):
        load_bundle(tmp_path / "nope")
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(BundleError, match="is a folder"):
        load_bundle(file)


@pytest.mark.parametrize("name", [WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE])
def test_missing_file_is_named(saved: tuple[Path, EmotionNet], name: str) -> None:
    path, _ = saved
    (path / name).unlink()
    with pytest.raises(BundleError, match=rf"incomplete model bundle, missing {name}"):
        load_bundle(path)


def test_corrupted_config_json(saved: tuple[Path, EmotionNet]) -> None:
    path, _ = saved
    (path / CONFIG_FILE).write_text('{"format_version": 1, "model": ')
    with pytest.raises(BundleError, match=r"config\.json: not valid JSON \(line 1"):
        load_bundle(path)
    (path / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(BundleError, match="expected a JSON object"):
        load_bundle(path)


def test_checksum_mismatch(saved: tuple[Path, EmotionNet]) -> None:
    path, _ = saved
    raw = bytearray((path / WEIGHTS_FILE).read_bytes())
    raw[-5] ^= 0xFF  # one flipped byte inside a tensor: still a valid safetensors file
    (path / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(
        BundleError, match=r"model\.safetensors: checksum mismatch .*corrupted or was modified"
    ):
        load_bundle(path)


def _write_config(path: Path, config: dict[str, Any]) -> None:
    """Write an edited config.json with its own checksum updated, as a tool that writes bundles
    would: what is tested is the validation of its content, not the checksum."""
    digest = getattr(bundle_mod, "config_digest", None)  # (absent before config.json was covered)
    if isinstance(config.get("sha256"), dict) and digest is not None:
        config["sha256"][CONFIG_FILE] = digest(config)
    (path / CONFIG_FILE).write_text(json.dumps(config))


def _edit_config(path: Path, **changes: Any) -> None:
    config = json.loads((path / CONFIG_FILE).read_text())
    config.update(changes)
    _write_config(path, config)


def test_unreadable_weights_with_matching_checksum(saved: tuple[Path, EmotionNet]) -> None:
    path, _ = saved
    (path / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    _edit_config(path, sha256={WEIGHTS_FILE: bundle_mod.sha256_file(path / WEIGHTS_FILE)})
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        load_bundle(path)


def test_newer_format_version_asks_to_upgrade(saved: tuple[Path, EmotionNet]) -> None:
    path, _ = saved
    _edit_config(path, format_version=FORMAT_VERSION + 1, emovox_version="9.0.0")
    with pytest.raises(
        BundleError, match=r"bundle format 2 was written by emovox 9\.0\.0.*please upgrade emovox"
    ):
        load_bundle(path)


@pytest.mark.parametrize("version", ["1", None, 0, True])
def test_invalid_format_version(saved: tuple[Path, EmotionNet], version: Any) -> None:
    path, _ = saved
    _edit_config(path, format_version=version)
    with pytest.raises(BundleError, match="format_version"):
        read_meta(path)


def test_config_that_does_not_describe_a_model(saved: tuple[Path, EmotionNet]) -> None:
    path, _ = saved
    config = json.loads((path / CONFIG_FILE).read_text())
    config["model"]["family"] = "transformer"
    _write_config(path, config)
    with pytest.raises(BundleError, match=r"cannot build the model it describes.*transformer"):
        load_bundle(path)
    config["model"]["labels"] = []
    _write_config(path, config)
    with pytest.raises(BundleError, match="lists no labels"):
        load_bundle(path)


def test_weights_that_do_not_fit_the_config(saved: tuple[Path, EmotionNet]) -> None:
    path, _ = saved
    config = json.loads((path / CONFIG_FILE).read_text())
    config["model"]["params"]["channels"] = [4, 16]
    _write_config(path, config)
    with pytest.raises(BundleError, match=r"weights do not match the model in config\.json: shape mismatch"):
        load_bundle(path)


def test_missing_default_model_says_how_to_train_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bundle_mod, "DEFAULT_BUNDLE", tmp_path / "assets" / "default_model")
    with pytest.raises(BundleError, match=r"default model is not installed.*emovox train.*--model"):
        load_bundle("default")


def test_default_model_when_installed() -> None:
    if not (bundle_mod.DEFAULT_BUNDLE / CONFIG_FILE).is_file():
        pytest.skip(
            f"the default model is not installed at {bundle_mod.DEFAULT_BUNDLE} (the lead commits it)"
        )
    net, meta = load_bundle("default")
    assert len(meta["model"]["labels"]) >= 2 and meta["metrics"]
    assert (Path(meta["path"]) / CARD_FILE).is_file()


# --------------------------------------------------------------------------- atomic save


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_failed_save_leaves_the_old_bundle_intact(
    saved: tuple[Path, EmotionNet], monkeypatch: pytest.MonkeyPatch, clips: list[np.ndarray]
) -> None:
    path, old_net = saved
    before = _snapshot(path)
    real_write = bundle_mod._write_text

    def crash_on_config(file: Path, text: str) -> None:
        if file.name == CONFIG_FILE:  # weights, metrics and card are already written by then
            raise OSError(28, "No space left on device")
        real_write(file, text)

    monkeypatch.setattr(bundle_mod, "_write_text", crash_on_config)
    with pytest.raises(OSError, match="No space left"):
        save_bundle(make_net(seed=9), path, metrics={"ua": 0.9}, card=CARD)
    assert _snapshot(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model"]  # no temporary folder left
    loaded, _ = load_bundle(path)
    np.testing.assert_array_equal(probabilities(loaded, clips), probabilities(old_net, clips))


def test_failed_swap_restores_the_old_bundle(
    saved: tuple[Path, EmotionNet], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = saved
    before = _snapshot(path)
    real_replace = os.replace

    def crash_moving_new_bundle(src: Any, dst: Any) -> None:
        if ".tmp-" in Path(src).name:  # the old bundle has been moved aside already
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(bundle_mod.os, "replace", crash_moving_new_bundle)
    with pytest.raises(OSError, match="Input/output"):
        save_bundle(make_net(seed=9), path, metrics={"ua": 0.9}, card=CARD)
    monkeypatch.undo()
    assert _snapshot(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model"]
    load_bundle(path)


def test_save_replaces_a_bundle_but_never_another_folder(
    saved: tuple[Path, EmotionNet], tmp_path: Path
) -> None:
    path, _ = saved
    save_bundle(make_net(seed=5), path, metrics={"ua": 0.7}, card=CARD)
    assert read_meta(path)["metrics"] == {"ua": 0.7}
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(BundleError, match="photos: exists and is not a model bundle"):
        save_bundle(make_net(), other, metrics={}, card=CARD)
    assert [p.name for p in other.iterdir()] == ["cat.jpg"]


# --------------------------------------------------------------------------- model card


def test_model_card_content(saved: tuple[Path, EmotionNet]) -> None:
    path, _ = saved
    card = (path / CARD_FILE).read_text()
    meta = read_meta(path)
    assert card.startswith("# emovox speech emotion model")
    assert "angry, happy, neutral, sad" in card and "`cnn2d`" in card and "`channels=[4, 8]`" in card
    assert "logmel frame sequences, 16000 Hz input" in card and "pooled" not in card
    assert "trim silence: yes, minimum duration: 0.3 s" in card
    assert meta["sha256"][WEIGHTS_FILE][:16] in card
    assert CARD["data"] in card and CARD["protocol"] in card
    assert "CC BY-NC-SA 4.0 (RAVDESS)." in card and "inherits its licence" in card
    assert "| UA (unweighted accuracy) | 0.612 ± 0.041 |" in card
    assert "| WA (weighted accuracy) | 0.635 ± 0.030 |" in card
    assert "| macro-F1 | 0.601 |" in card
    assert "| speakers | ravdess:01, ravdess:02 |" in card
    assert "## Intended use" in card and "## Limitations" in card and "high-stakes decisions" in card
    assert 'Recognizer.load("path/to/this/folder")' in card


def test_model_card_without_scores_and_custom_text(tmp_path: Path) -> None:
    card = ModelCard(title="Demo", citation="Livingstone & Russo (2018)", measured="Telephone 0.7.", **CARD)
    path = save_bundle(make_net(), tmp_path / "b", metrics={}, card=card)
    text = (path / CARD_FILE).read_text()
    assert text.startswith("# Demo") and "No scores were recorded" in text
    assert "## References\n\nLivingstone & Russo (2018)" in text
    assert "## Measured beyond the cross-validation\n\nTelephone 0.7.\n\n## Intended use" in text
    plain = (save_bundle(make_net(), tmp_path / "c", metrics={}, card=CARD) / CARD_FILE).read_text()
    assert "Measured beyond" not in plain


def test_model_card_fields_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown field.*author"):
        save_bundle(make_net(), tmp_path / "b", metrics={}, card={**CARD, "author": "me"})
    with pytest.raises(ConfigError, match="missing required field.*licence"):
        save_bundle(make_net(), tmp_path / "b", metrics={}, card={"data": "x", "protocol": "y"})
    with pytest.raises(ConfigError, match="preprocessing: unknown key.*normalise"):
        save_bundle(make_net(), tmp_path / "b", metrics={}, card=CARD, preprocessing={"normalise": True})
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- tampered bundles


def test_config_json_is_covered_by_its_own_checksum(saved: tuple[Path, EmotionNet]) -> None:
    path, _ = saved
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["sha256"][CONFIG_FILE] == bundle_mod.config_digest(config)
    # layout does not matter (re-indented, keys reordered), content does
    (path / CONFIG_FILE).write_text(json.dumps(dict(reversed(list(config.items())))))
    read_meta(path)
    config["model"]["labels"][0] = "furious"
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    with pytest.raises(BundleError, match=r"config\.json: checksum mismatch .*config\.json was modified"):
        load_bundle(path)
    # a deliberate edit is sealed again by update_config (what `emovox export` uses)
    bundle_mod.update_config(path, {})
    assert read_meta(path)["model"]["labels"][0] == "furious"
    # bundles written before config.json recorded its checksum (the shipped default) still load
    del config["sha256"][CONFIG_FILE]
    (path / CONFIG_FILE).write_text(json.dumps(config))
    load_bundle(path)


def _tamper(path: Path, edit: Any) -> None:
    config = json.loads((path / CONFIG_FILE).read_text())
    edit(config)
    _write_config(path, config)  # resealed: the content itself is what must be refused


TAMPERED = {
    "dict labels": (lambda c: c["model"].__setitem__("labels", {"a": 1, "b": 2}), r"model\.labels"),
    "label not a string": (lambda c: c["model"]["labels"].__setitem__(1, {"x": 1}), r"labels\[1\]"),
    "markup label": (
        lambda c: c["model"]["labels"].__setitem__(0, "<img src=x onerror=alert(document.domain)>"),
        r"labels\[0\]: must be 1 to 48 characters|labels\[0\]: may hold only printable",
    ),
    "control character": (lambda c: c["model"]["labels"].__setitem__(0, "sad\x1b[31m"), r"labels\[0\]"),
    "duplicate labels": (lambda c: c["model"]["labels"].__setitem__(1, c["model"]["labels"][0]), "unique"),
    "sample rate 16k": (lambda c: c.__setitem__("sample_rate", "16k"), "sample_rate"),
    "sample rate 0": (lambda c: c.__setitem__("sample_rate", 0), "sample_rate"),
    "sample rate differs": (lambda c: c.__setitem__("sample_rate", 8000), "sample_rate: 8000 differs"),
    "n_mels 1e5": (lambda c: c["model"]["features"].__setitem__("n_mels", 100_000), r"features\.n_mels"),
    "channels 2000": (lambda c: c["model"]["params"].__setitem__("channels", [2000, 2000]), r"channels\[0\]"),
    "trim not a bool": (lambda c: c["preprocessing"].__setitem__("trim_silence", "no"), "trim_silence"),
    "min_duration nan": (
        lambda c: c["preprocessing"].__setitem__("min_duration", float("nan")),
        "min_duration",
    ),
    "bad checksum entry": (lambda c: c["sha256"].__setitem__(WEIGHTS_FILE, 12), "not a sha256"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_bundles_end_in_one_bundle_error(saved: tuple[Path, EmotionNet], case: str) -> None:
    """Each used to end in a TypeError / ValueError traceback, or allocate what the numbers asked."""
    path, _ = saved
    edit, message = TAMPERED[case]
    _tamper(path, edit)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(path)
    assert str(info.value).startswith(str(path / CONFIG_FILE)) and "\n" not in str(info.value)
    with pytest.raises(BundleError, match=message):
        read_meta(path)  # what the onnx backend relies on: it builds no network


def test_deeply_nested_json_is_a_bundle_error(saved: tuple[Path, EmotionNet]) -> None:
    """json.loads raises RecursionError on deep nesting; the CLI showed a traceback."""
    from typer.testing import CliRunner

    from emovox.cli import app

    path, _ = saved
    (path / CONFIG_FILE).write_text('{"format_version": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(BundleError, match=r"config\.json: nested more than 32 levels"):
        load_bundle(path)
    (path / CONFIG_FILE).write_text('{"format_version": 1, "x": ' + "[" * 200 + "]" * 200 + "}")
    with pytest.raises(BundleError, match="nested more than 32 levels"):
        read_meta(path)
    result = CliRunner().invoke(app, ["predict", "--model", str(path), str(EXAMPLES[0])])
    assert result.exit_code == 2 and "nested more than 32 levels" in result.stderr
    assert "Traceback" not in result.output


def test_huge_weights_file_is_refused_before_hashing(saved: tuple[Path, EmotionNet]) -> None:
    """A 50 GB sparse model.safetensors was hashed for 117 s before anything looked at its size."""
    import time

    path, _ = saved
    with open(path / WEIGHTS_FILE, "r+b") as f:
        f.truncate(4 << 30)  # sparse: no disk space used
    started = time.perf_counter()
    with pytest.raises(BundleError, match=r"model\.safetensors: is 4295\.0 MB, more than the .* can need"):
        load_bundle(path)
    assert time.perf_counter() - started < 3
    (path / "model.onnx").touch()
    with open(path / "model.onnx", "r+b") as f:
        f.truncate(4 << 30)
    meta = {"sha256": {"model.onnx": "0" * 64}}
    with pytest.raises(BundleError, match=r"model\.onnx: is 4295\.0 MB, more than"):
        bundle_mod.verify_checksum(path, meta, "model.onnx")


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_a_killed_save_are_cleaned_on_the_next_save(tmp_path: Path) -> None:
    """kill -9 during a save left a .model.tmp-* folder behind for good."""
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "model"
    code = f"""
import time, torch
from emovox import bundle
from emovox.features import FeatureConfig
from emovox.models import EmotionNet
real = bundle._write_text
def stall(path, text):
    real(path, text)
    if path.name == "metrics.json":
        print("writing", flush=True)
        time.sleep(60)
bundle._write_text = stall
net = EmotionNet(FeatureConfig(sets=("logmel",), n_mels=32), "cnn2d", {{"channels": [4, 8]}}, ["a", "b"])
bundle.save_bundle(net, {str(target)!r}, metrics={{}}, card={CARD!r})
"""
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".model.tmp-"), left
    # an old-style leftover (no writer recorded) is removed once it is old, kept while recent
    old_style, recent = tmp_path / ".model.tmp-abc123", tmp_path / ".model.tmp-def456"
    old_style.mkdir()
    recent.mkdir()
    os.utime(old_style, (time.time() - 3600, time.time() - 3600))
    live = tmp_path / bundle_mod.tmpfiles.temp_name("model")  # this process: still writing
    live.mkdir()
    save_bundle(make_net(), target, metrics={}, card=CARD)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", recent.name, live.name])
    load_bundle(target)


def test_a_swap_interrupted_between_its_renames_is_undone(saved: tuple[Path, EmotionNet]) -> None:
    """Killed after moving the old bundle aside, before moving the new one in: the next save puts
    the old one back first (and then replaces it as asked)."""
    path, _ = saved
    aside = path.with_name(f".model.old-{bundle_mod.tmpfiles._HOST}-{_dead_pid()}-0000abcd")
    os.replace(path, aside)
    bundle_mod._clean_leftovers(path)
    assert (path / CONFIG_FILE).is_file() and not aside.exists()
    load_bundle(path)
