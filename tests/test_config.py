"""Run configuration: YAML loading, key=value overrides, validation errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emovox.config import RunConfig, apply_override, config_from_dict, load_config
from emovox.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))
FAMILIES = ("mlp", "cnn1d", "cnn2d", "crnn", "lstm", "svm")


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- shipped configs


def test_every_family_is_shipped_for_ravdess_and_tess() -> None:
    names = {p.stem for p in SHIPPED}
    for corpus in ("ravdess", "tess"):
        assert {f"{corpus}_{family}" for family in FAMILIES} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_loads_and_validates_without_data(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.path and cfg.data.path.startswith("../shared/corpora/")
    assert cfg.split.protocol in ("holdout", "none", "kfold", "loso", "cross_corpus")
    # round trip through the resolved config.yaml a run writes
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))).to_dict() == cfg.to_dict()


FAMILY_CONFIGS = [p for p in SHIPPED if p.stem.split("_")[0] in ("ravdess", "tess")]


@pytest.mark.parametrize("path", FAMILY_CONFIGS, ids=[p.stem for p in FAMILY_CONFIGS])
def test_family_configs_hold_out_test_speakers(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem
    corpus, family = path.stem.split("_", 1)
    assert cfg.model.family == family
    assert cfg.data.corpus == corpus
    assert cfg.data.path == f"../shared/corpora/{corpus}"
    # speaker-independent by default: a held-out test speaker set, never a leaky split
    assert cfg.split.protocol == "holdout"
    expected = ["17", "18", "19", "20"] if corpus == "ravdess" else ["YAF"]
    assert cfg.split.test_speakers == expected
    assert 0 < cfg.train.val_fraction < 1


def test_ravdess_configs_point_to_cross_validation() -> None:
    for path in SHIPPED:
        if path.stem.startswith("ravdess_"):
            assert "emovox cv -c" in path.read_text(), path


# --------------------------------------------------------------------------- loading and overrides


def test_defaults_without_a_file() -> None:
    cfg = load_config(None)
    assert cfg == RunConfig() or cfg.to_dict() == RunConfig().to_dict()
    assert cfg.split.protocol == "none" and cfg.model.family == "crnn"


def test_yaml_values_and_name_from_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "data: {path: corpus, emotions: [happy, sad]}\n"
        "features: {sets: [mfcc], n_mfcc: 20}\n"
        "model: {family: cnn1d, params: {channels: [8, 16], kernel: 3}}\n"
        "augment: {noise_p: 0.5, noise_snr_db: [10, 20], time_masks: 1}\n"
        "train: {lr: 1e-3, epochs: 4, devices: [0, 1]}\n"
        "split: {protocol: holdout, test_speakers: ['01', 2]}\n",
        name="my_run.yaml",
    )
    cfg = load_config(path)
    assert cfg.name == "my_run"
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string; converted
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.devices == [0, 1]
    assert cfg.features.sets == ("mfcc",) and cfg.features.n_mfcc == 20
    assert cfg.augment.noise_snr_db == (10.0, 20.0)
    assert cfg.split.test_speakers == ["01", "2"]  # speaker ids become strings
    assert cfg.model.params == {"channels": [8, 16], "kernel": 3}


def test_overrides_nested_lists_and_null(tmp_path: Path) -> None:
    path = write(tmp_path, "name: base\ntrain: {epochs: 30}\ndata: {emotions: [happy, sad]}\n")
    cfg = load_config(
        path,
        [
            "train.epochs=2",
            "train.lr=0.01",
            "model.family=lstm",
            "model.params.hidden=16",
            "split.test_speakers=['17','18']",
            "split.protocol=holdout",
            "data.emotions=null",
            "name=renamed",
        ],
    )
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.01
    assert cfg.model.family == "lstm" and cfg.model.params == {"hidden": 16}
    assert cfg.split.test_speakers == ["17", "18"]
    assert cfg.data.emotions is None
    assert cfg.name == "renamed"


def test_override_helper_rejects_malformed_items() -> None:
    raw: dict = {"train": 3}
    for item in ("train.epochs", "=3", "train..epochs=3"):
        with pytest.raises(ConfigError, match="expected section.key=value"):
            apply_override(raw, item)
    with pytest.raises(ConfigError, match="train is not a section"):
        apply_override(raw, "train.epochs=3")


def test_empty_sections_and_bare_extra_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "train:\ndata:\n  extra: [other/corpus]\n"))
    assert cfg.train.epochs == RunConfig().train.epochs
    assert cfg.data.extra[0].path == "other/corpus" and cfg.data.extra[0].corpus is None


def test_dump_then_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.family=svm", "model.params.C=[1, 10]", "augment.gain_p=0.3"])
    again = load_config(cfg.dump(tmp_path / "run" / "config.yaml"))
    assert again.to_dict() == {**cfg.to_dict(), "name": "config"}  # name defaults to the file stem


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ("trian: {epochs: 3}\n", "trian", "unknown key"),
        ("train: {epochz: 3}\n", "train.epochz", "unknown key"),
        ("train: {epochs: ten}\n", "train.epochs", "expected an integer"),
        ("train: {epochs: 2.5}\n", "train.epochs", "expected an integer"),
        ("train: {lr: fast}\n", "train.lr", "expected a number"),
        ("train: {lr: -1}\n", "train.lr", "must be > 0"),
        ("train: {class_weights: 1}\n", "train.class_weights", "true or false"),
        ("train: {optimizer: sgd}\n", "train.optimizer", "expected one of adam, adamw"),
        ("train: {precision: 8-bit}\n", "train.precision", "must be one of"),
        ("train: {val_fraction: 1.0}\n", "train.val_fraction", "[0, 1)"),
        ("train: 5\n", "train", "expected a mapping"),
        ("data: {max_seconds: 0}\n", "data.max_seconds", "> 0"),
        ("data: {emotions: [happy, joyous]}\n", "data.emotions[1]", "unknown emotion"),
        ("data: {corpus: ravdes}\n", "data.corpus", "unknown corpus"),
        ("data: {extra: [{corpus: tess}]}\n", "data.extra[0].path", "missing"),
        ("features: {n_ftt: 512}\n", "features.n_ftt", "unknown"),
        ("features: {n_mels: -4}\n", "features.n_mels", "positive integer"),
        ("augment: {noise_p: 2}\n", "augment.noise_p", "probability"),
        ("augment: {pitch_semitones: [3, 1]}\n", "augment.pitch_semitones", "above max"),
        ("augment: {noize_p: 0.1}\n", "augment.noize_p", "unknown key"),
        ("augment: {background_p: 0.5}\n", "augment.background_dir", "needed"),
        ("model: {family: transformer}\n", "model.family", "must be one of"),
        ("model: {family: cnn2d, params: {hiden: 3}}\n", "model.params.hiden", "unknown parameter"),
        ("model: {family: cnn1d, params: {channels: 32}}\n", "model.params.channels", "list"),
        ("model: {family: lstm, params: {layers: 0}}\n", "model.params.layers", "positive integer"),
        ("model: {family: crnn, params: {dropout: 1.5}}\n", "model.params.dropout", "[0, 1)"),
        ("model: {family: crnn, params: {rnn: rnn}}\n", "model.params.rnn", "'lstm' or 'gru'"),
        ("model: {family: svm, params: {kernel: poly}}\n", "model.params.kernel", "rbf or linear"),
        ("model: {family: svm, params: {C: [1, -1]}}\n", "model.params.C", "positive number"),
        ("model: {family: svm, params: {gamma: 1}}\n", "model.params.gamma", "unknown SVM parameter"),
        ("split: {protocol: random}\n", "split.protocol", "expected one of"),
        ("split: {protocol: holdout}\n", "split.test_speakers", "at least one test speaker"),
        ("split: {protocol: cross_corpus}\n", "split.test_path", "test corpus folder"),
        ("split: {folds: 1}\n", "split.folds", ">= 2"),
    ],
)
def test_invalid_values_name_file_and_key(tmp_path: Path, text: str, key: str, detail: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}"), message
    assert detail in message
    assert "\n" not in message


def test_invalid_override_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^<defaults>: train.batch_size: expected an integer, got 'big'$"):
        load_config(None, ["train.batch_size=big"])


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: {epochs: [\n", "broken.yaml"))
    with pytest.raises(ConfigError, match="expected a mapping of sections at the top level, got list"):
        load_config(write(tmp_path, "- a\n- b\n", "list.yaml"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="binary.yaml"):
        load_config(binary)


def test_svm_params_filled_with_defaults() -> None:
    cfg = load_config(None, ["model.family=svm", "model.params.features=stats"])
    assert cfg.svm_params == {"features": "stats", "kernel": "rbf", "C": [0.1, 1.0, 10.0, 100.0]}


# --------------------------------------------------------------------------- sane ranges (emovox.limits)

# Each of these allocated gigabytes (or raised MemoryError) before anything checked its size:
# n_mels=10000000 took 19.7 GB, channels [20000, 20000] 8 GB. They must fail at once, naming the key.
MEMORY_BOMBS = [
    (["features.n_mels=10000000"], "features.n_mels: must be an integer in [1, 512]"),
    (["features.n_fft=100000000"], "features.n_fft: must be an integer in [16, 4096]"),
    (
        ["features.win_length=4096", "features.n_fft=4096", "features.hop_length=100000"],
        "features.hop_length",
    ),
    (["model.family=cnn1d", "model.params.channels=[20000,20000]"], "model.params.channels[0]"),
    (["model.family=lstm", "model.params.hidden=4096", "model.params.layers=8"], "million weights"),
    (["model.family=mlp", "model.params.hidden=[4096,4096,4096,4096]"], "million weights"),
    (
        ["features.sets=[f0]", "features.sample_rate=192000", "features.fmax=null", "features.f0_min=20"],
        "million filterbank values",
    ),
    (["train.batch_size=100000000"], "train.batch_size: must be an integer in [1, 4096]"),
    (["augment.time_masks=1000000"], "augment.time_masks"),
    (["split.folds=100000000"], "split.folds"),
]


def test_oversized_numbers_are_refused_before_allocating() -> None:
    """Run in a child process limited to 3 GB of address space, so a regression fails (MemoryError)
    instead of taking the machine down; each case must be refused in well under a second."""
    import subprocess
    import sys

    code = f"""
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from emovox.config import load_config
from emovox.errors import ConfigError
for overrides, expected in {MEMORY_BOMBS!r}:
    started = time.perf_counter()
    try:
        load_config(None, overrides)
    except ConfigError as exc:
        assert expected in str(exc), (overrides, str(exc))
        assert time.perf_counter() - started < 2, (overrides, time.perf_counter() - started)
    else:
        sys.exit(f"accepted: {{overrides}}")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr[-2000:]


def test_every_range_is_inside_what_the_shipped_configs_use() -> None:
    """The limits refuse nothing a shipped config uses (they are far above any real model)."""
    for path in SHIPPED:
        load_config(path)  # raises if a shipped value fell outside a range


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=1000", "train.lr"),
        ("train.seed=-1", "train.seed"),
        ("train.epochs=10000000", "train.epochs"),
        ("train.threads=100000", "train.threads"),
        ("data.max_seconds=1000000", "data.max_seconds"),
        ("model.params.kernel=1001", "model.params.kernel"),
    ],
)
def test_out_of_range_settings_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^<defaults>: {key}: must be an? \w+ in "):
        load_config(None, ["model.family=cnn1d", override] if "kernel" in key else [override])
