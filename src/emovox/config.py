"""Run configuration: one YAML file (plus ``section.key=value`` overrides) describes a whole run.

A config has the sections ``data``, ``features``, ``model``, ``augment``, ``train`` and ``split``
and the top-level keys ``name`` and ``out``::

    name: ravdess_crnn
    data: {corpus: ravdess, path: ../shared/corpora/ravdess, trim_silence: true, max_seconds: 3.0}
    features: {sets: [logmel], n_mels: 64}
    model: {family: crnn, params: {channels: [32, 64], hidden: 128}}
    augment: {noise_p: 0.3, time_masks: 2, freq_masks: 2}
    train: {epochs: 30, lr: 0.002, mixup: 0.2}
    split: {protocol: holdout, test_speakers: ["17", "18", "19", "20"]}

Relative paths (``data.path``, ``data.extra[].path``, ``split.test_path``,
``augment.background_dir``, ``out``) resolve against the current working directory, not the
config file's folder, so the shipped configs work when run from the repository root. Speaker ids
that look like numbers must be quoted (``"01"``), since YAML reads ``01`` as the integer 1.

:func:`load_config` validates everything up front: an unknown key, a value of the wrong type or
out of range raises :class:`~emovox.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from emovox import limits
from emovox.augment import AugmentConfig
from emovox.errors import ConfigError
from emovox.features import FeatureConfig

FAMILIES = ("mlp", "cnn1d", "cnn2d", "crnn", "lstm", "encoder", "svm")
PROTOCOLS = ("holdout", "kfold", "loso", "cross_corpus", "none")
PRECISIONS = (
    "64-true",
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64",
    "32",
    "16",
    "bf16",
)

# the SVM baseline's parameters and their defaults (see emovox.svm.SVMClassifier)
SVM_PARAMS: dict[str, Any] = {
    "features": "egemaps",  # "egemaps" (88 openSMILE functionals) or "stats" (pool_stats of features)
    "kernel": "rbf",  # "rbf" or "linear"
    "C": [0.1, 1.0, 10.0, 100.0],  # candidates, chosen on the validation speakers
}


@dataclass
class CorpusSource:
    """An additional training corpus: adapter name (None = detect) and folder."""

    path: str
    corpus: str | None = None


@dataclass
class DataConfig:
    """Which audio to train on and how to load it.

    ``max_seconds`` is the length of the random crops taken from training clips each epoch
    (None = whole clips); validation and test always use whole clips. ``extra`` corpora only ever
    add training (and validation) speakers, never test speakers.
    """

    path: str | None = None
    corpus: str | None = None
    extra: list[CorpusSource] = field(default_factory=list)
    emotions: list[str] | None = None
    trim_silence: bool = True
    max_seconds: float | None = 3.0


@dataclass
class ModelConfig:
    """Model family (``mlp``, ``cnn1d``, ``cnn2d``, ``crnn``, ``lstm`` or ``svm``) and its parameters."""

    family: str = "crnn"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation, regularisation, early stopping and Lightning hardware flags.

    ``val_fraction`` of the *training* speakers are held out for early stopping and checkpoint
    selection (0 = no validation: train ``epochs`` epochs and keep the last weights, for corpora
    with a single training speaker). ``mixup`` is the Beta(alpha, alpha) parameter (0 = off).
    ``warmup_epochs`` of linear warm-up precede the cosine decay. ``threads`` sets PyTorch's CPU
    threads for the run (None = PyTorch's default, one per core; on a CPU shared with other jobs 1
    is often several times faster, recurrent layers especially). ``calibrate`` fits a temperature on the
    validation speakers after training (:mod:`emovox.calibration`), so confidences are calibrated.
    """

    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-2
    epochs: int = 30
    batch_size: int = 32
    label_smoothing: float = 0.1
    class_weights: bool = False
    mixup: float = 0.2
    scheduler: Literal["cosine", "onecycle", "none"] = "cosine"
    warmup_epochs: float = 1.0
    patience: int | None = 10
    grad_clip: float | None = 5.0
    val_fraction: float = 0.2
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    threads: int | None = None
    calibrate: bool = True


@dataclass
class SplitConfig:
    """Speaker-independent evaluation protocol.

    ``holdout``: test on ``test_speakers`` (``"ravdess:17"`` or a bare ``"17"``), train on the rest;
    ``none``: train on every speaker (no test set); ``kfold`` / ``loso``: cross-validation (run with
    ``emovox cv``); ``cross_corpus``: train on ``data``, test on ``test_path`` (adapter
    ``test_corpus``) on the emotions both share.
    """

    protocol: Literal["holdout", "kfold", "loso", "cross_corpus", "none"] = "none"
    folds: int = 5
    test_speakers: list[str] = field(default_factory=list)
    test_corpus: str | None = None
    test_path: str | None = None


@dataclass
class RunConfig:
    """Everything that defines a run; :meth:`to_dict` is what goes into the run folder's config.yaml."""

    name: str | None = None
    out: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, no tuples) that :func:`config_from_dict` turns back into this config."""
        out: dict[str, Any] = {"name": self.name, "out": self.out}
        out["data"] = _plain(dataclasses.asdict(self.data))
        out["features"] = self.features.to_dict()
        out["model"] = _plain(dataclasses.asdict(self.model))
        out["augment"] = self.augment.to_dict()
        out["train"] = _plain(dataclasses.asdict(self.train))
        out["split"] = _plain(dataclasses.asdict(self.split))
        return out

    def dump(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (the run folder's ``config.yaml``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False))
        return path

    @property
    def svm_params(self) -> dict[str, Any]:
        """The SVM baseline's parameters with defaults filled in."""
        return {**SVM_PARAMS, **self.model.params}


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (None = all defaults), apply ``section.key=value`` overrides, validate.

    Override values are parsed as YAML (``train.lr=1e-3``, ``split.test_speakers=["17","18"]``,
    ``data.emotions=null``); nested keys work (``model.params.hidden=64``). Raises
    :class:`ConfigError` naming the file (or the override) and the key.
    """
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{p}: not a text file") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{p}: expected a mapping of sections at the top level, got {type(loaded).__name__}"
            )
        raw = loaded
        if raw.get("name") is None:  # absent or null: the file's stem names the run
            raw["name"] = p.stem
    for item in overrides:
        apply_override(raw, item)
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in the nested dict ``raw`` (value parsed as a YAML scalar or list)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.lr=0.001")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: value is not valid YAML") from None
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"override {item!r}: {where} is not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a plain dict (e.g. a run's config.yaml)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    features = raw.pop("features", None) or {}
    augment = raw.pop("augment", None) or {}
    cfg = _build(RunConfig, raw, "", skip={"features", "augment"})
    cfg.features = FeatureConfig.from_dict(features)
    if not isinstance(augment, dict):
        raise ConfigError(f"augment: expected a mapping, got {augment!r}")
    known = {f.name for f in dataclasses.fields(AugmentConfig)}
    for key in augment:
        if key not in known:
            raise ConfigError(f"augment.{key}: unknown key (known: {', '.join(sorted(known))})")
    cfg.augment = AugmentConfig(**augment)
    validate(cfg)
    return cfg


def _build(cls: type, raw: Any, prefix: str, skip: set[str] | frozenset[str] = frozenset()) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(names)})")
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in raw:
            raise ConfigError(f"{prefix}{f.name}: missing (required)")
    kwargs = {key: _convert(v, hints[key], f"{prefix}{key}") for key, v in raw.items() if key not in skip}
    return cls(**kwargs)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float, etc.)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty YAML section (``train:`` with nothing under it) = all defaults
            value = {}
        elif tp is CorpusSource and isinstance(value, str):  # ``extra: [path/to/tess]``
            value = {"path": value}
        return _build(tp, value, f"{key}.")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad
        return str(value)
    raise ConfigError(f"{key}: unsupported setting type {tp!r}")  # a bug in this module, not user input


def _check(condition: bool, key: str, message: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}, got {value!r}")


def validate(cfg: RunConfig) -> None:
    """Cross-field and range checks beyond types; raises :class:`ConfigError` naming the key."""
    d, t, s, m = cfg.data, cfg.train, cfg.split, cfg.model
    _check(
        d.max_seconds is None or d.max_seconds > 0, "data.max_seconds", "must be > 0 or null", d.max_seconds
    )
    _check(
        d.emotions is None or len(d.emotions) >= 2, "data.emotions", "needs at least two emotions", d.emotions
    )
    _check(m.family in FAMILIES, "model.family", f"must be one of {', '.join(FAMILIES)}", m.family)
    _validate_params(m)
    _validate_backbone(cfg)
    _check(t.lr > 0, "train.lr", "must be > 0", t.lr)
    _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0", t.weight_decay)
    _check(t.epochs >= 1, "train.epochs", "must be >= 1", t.epochs)
    _check(t.batch_size >= 1, "train.batch_size", "must be >= 1", t.batch_size)
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)", t.label_smoothing)
    _check(t.mixup >= 0, "train.mixup", "must be >= 0 (0 = off)", t.mixup)
    _check(t.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0", t.warmup_epochs)
    _check(t.patience is None or t.patience >= 1, "train.patience", "must be >= 1 or null", t.patience)
    _check(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", "must be > 0 or null", t.grad_clip)
    _check(0 <= t.val_fraction < 1, "train.val_fraction", "must be in [0, 1)", t.val_fraction)
    _check(t.num_workers >= 0, "train.num_workers", "must be >= 0", t.num_workers)
    _check(t.threads is None or t.threads >= 1, "train.threads", "must be >= 1 or null", t.threads)
    _check(
        t.precision in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)}", t.precision
    )
    _check(s.folds >= 2, "split.folds", "must be >= 2", s.folds)
    _validate_corpus_names(cfg)
    if d.emotions is not None:
        from emovox.corpora import EMOTIONS, canonical_emotion

        for i, label in enumerate(d.emotions):
            _check(
                canonical_emotion(label) is not None,
                f"data.emotions[{i}]",
                f"unknown emotion (known: {', '.join(EMOTIONS)})",
                label,
            )
    if s.protocol == "holdout":
        _check(bool(s.test_speakers), "split.test_speakers", "holdout needs at least one test speaker", [])
    if s.protocol == "cross_corpus":
        _check(bool(s.test_path), "split.test_path", "cross_corpus needs the test corpus folder", s.test_path)
    _check_ranges(cfg)


def _check_ranges(cfg: RunConfig) -> None:
    """Every number of the data, train, split and augment sections against :data:`emovox.limits.RANGES`
    (features and model parameters are checked where they are built, for configs and bundles alike)."""
    for section in ("data", "train", "split", "augment"):
        values = getattr(cfg, section)
        for f in dataclasses.fields(values):
            key = f"{section}.{f.name}"
            if key in limits.RANGES:
                limits.check_optional(key, getattr(values, f.name))


def _validate_params(m: ModelConfig) -> None:
    if m.family == "svm":
        for key in m.params:
            _check(
                key in SVM_PARAMS,
                f"model.params.{key}",
                f"unknown SVM parameter (known: {', '.join(SVM_PARAMS)})",
                key,
            )
        params = {**SVM_PARAMS, **m.params}
        _check(
            params["features"] in ("egemaps", "stats"),
            "model.params.features",
            "must be egemaps or stats",
            params["features"],
        )
        _check(
            params["kernel"] in ("rbf", "linear"),
            "model.params.kernel",
            "must be rbf or linear",
            params["kernel"],
        )
        grid = params["C"] if isinstance(params["C"], list) else [params["C"]]
        _check(
            bool(grid)
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 for c in grid),
            "model.params.C",
            "must be a positive number or a list of them",
            params["C"],
        )
        return
    from emovox.models import MODELS

    allowed = [
        name for name, p in inspect.signature(MODELS[m.family]).parameters.items() if p.kind is p.KEYWORD_ONLY
    ]
    for key in m.params:
        _check(
            key in allowed,
            f"model.params.{key}",
            f"unknown parameter for {m.family} (known: {', '.join(allowed)})",
            key,
        )


def _validate_backbone(cfg: RunConfig) -> None:
    """Build the backbone and run it on a dummy batch, so a bad ``model.params`` value (a number where
    a list belongs, a negative width, a dropout above 1) fails at load time, not after feature extraction."""
    import torch

    from emovox.models import build_backbone

    m = cfg.model
    if m.family == "svm":
        return
    channels = cfg.features.num_channels
    pooled = m.family == "mlp"
    dim = channels * len(cfg.features.stats) if pooled else channels
    params = dict(m.params)
    if m.family == "encoder":  # the head on a stand-in: loading the encoder itself waits for training
        source = params.get("encoder")
        _check(isinstance(source, str) and bool(source), "model.params.encoder",
               "must name a pretrained encoder (hub name or local folder)", source)  # fmt: skip
        top = params.get("finetune_top", 0)
        _check(isinstance(top, int) and not isinstance(top, bool) and top >= 0,
               "model.params.finetune_top", "must be an integer >= 0", top)  # fmt: skip
        params["encoder_layers"], dim = [0, 1], 16
        pooled = params.get("pooling") == "stats"
        dim = 2 * dim if pooled else dim
    try:
        net = build_backbone(m.family, dim, 2, **params).eval()
        x = torch.zeros(2, dim) if pooled else torch.zeros(2, dim, 12)
        with torch.no_grad():
            out = net(x, torch.tensor([12, 5]))
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model.params: invalid parameters for {m.family} ({message})") from None
    if tuple(out.shape) != (2, 2):
        raise ConfigError(f"model.params: {m.family} with these parameters does not produce class scores")


def _validate_corpus_names(cfg: RunConfig) -> None:
    """Adapter names (``data.corpus``, ``data.extra[].corpus``, ``split.test_corpus``) must be known."""
    from emovox.corpora import ADAPTERS, _resolve_name
    from emovox.errors import CorpusError

    names = [("data.corpus", cfg.data.corpus), ("split.test_corpus", cfg.split.test_corpus)]
    names += [(f"data.extra[{i}].corpus", src.corpus) for i, src in enumerate(cfg.data.extra)]
    for key, name in names:
        if name is None:
            continue
        try:
            _resolve_name(name)
        except CorpusError:
            raise ConfigError(f"{key}: unknown corpus {name!r} (known: {', '.join(ADAPTERS)})") from None
