"""Sane ranges for every number a run config or a model bundle holds, checked before allocating.

A config or a bundle's ``config.json`` is input: a typo (``n_mels: 64000``) or a tampered file
(``n_fft: 1e8``, ``channels: [20000, 20000]``) must end in one clear
:class:`~emovox.errors.ConfigError` naming the key, not in gigabytes of filterbanks or weights.
:data:`RANGES` is the one table of limits; :mod:`emovox.features` (``FeatureConfig.validate``),
:mod:`emovox.models` (hyper-parameters), :mod:`emovox.config` (training settings) and
:mod:`emovox.bundle` (``config.json``) all check against it, so loading a config and loading a
bundle refuse the same values. The limits are far above anything a speech model needs and far
below anything that could exhaust a machine.

This module imports nothing heavy (no torch), so the onnx backend and the CLI can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

from emovox.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Allowed values of one setting: ``lo <= value <= hi`` (``lo`` / ``hi`` excluded when ``open_*``)."""

    lo: float
    hi: float
    integer: bool = False
    open_lo: bool = False
    open_hi: bool = False

    def contains(self, value: float) -> bool:
        above = value > self.lo if self.open_lo else value >= self.lo
        below = value < self.hi if self.open_hi else value <= self.hi
        return above and below

    def describe(self) -> str:
        left = "(" if self.open_lo else "["
        right = ")" if self.open_hi else "]"
        kind = "an integer" if self.integer else "a number"
        return f"{kind} in {left}{_fmt(self.lo)}, {_fmt(self.hi)}{right}"


def _fmt(value: float) -> str:
    return f"{int(value)}" if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


#: Every numeric setting, by its dotted key. List settings (``model.params.channels``) apply the
#: range to each element; :data:`LIST_LENGTHS` bounds how many elements they may have.
RANGES: dict[str, Range] = {
    # front end (emovox.features.FeatureConfig): buffers grow with n_fft x win_length and the
    # filterbank sizes, feature maps with the channels and frames per second
    "features.sample_rate": Range(1000, 192_000, integer=True),
    "features.n_fft": Range(16, 4096, integer=True),
    "features.win_length": Range(16, 4096, integer=True),
    "features.hop_length": Range(8, 8192, integer=True),
    "features.n_mels": Range(1, 512, integer=True),
    "features.n_mfcc": Range(1, 256, integer=True),
    "features.n_chroma": Range(1, 120, integer=True),
    "features.n_contrast_bands": Range(1, 12, integer=True),
    "features.fmin": Range(0, 96_000),
    "features.fmax": Range(0, 96_000, open_lo=True),
    "features.f0_min": Range(20, 4000),
    "features.f0_max": Range(20, 96_000),
    # backbones (emovox.models): widths, depths, kernel sizes
    "model.params.channels": Range(1, 1024, integer=True),
    "model.params.hidden": Range(1, 4096, integer=True),
    "model.params.layers": Range(1, 8, integer=True),
    "model.params.kernel": Range(1, 63, integer=True),
    "model.params.dropout": Range(0, 1, open_hi=True),
    # training (emovox.config.TrainConfig and friends)
    "data.max_seconds": Range(0, 3600, open_lo=True),
    "train.lr": Range(0, 10, open_lo=True),
    "train.weight_decay": Range(0, 10),
    "train.epochs": Range(1, 100_000, integer=True),
    "train.batch_size": Range(1, 4096, integer=True),
    "train.label_smoothing": Range(0, 1, open_hi=True),
    "train.mixup": Range(0, 100),
    "train.warmup_epochs": Range(0, 100_000),
    "train.patience": Range(1, 100_000, integer=True),
    "train.grad_clip": Range(0, 1e6, open_lo=True),
    "train.val_fraction": Range(0, 1, open_hi=True),
    "train.seed": Range(0, 2**32 - 1, integer=True),
    "train.num_workers": Range(0, 256, integer=True),
    "train.threads": Range(1, 1024, integer=True),
    "split.folds": Range(2, 1000, integer=True),
    "augment.time_masks": Range(0, 100, integer=True),
    "augment.time_mask_width": Range(0, 10_000, integer=True),
    "augment.freq_masks": Range(0, 100, integer=True),
    "augment.freq_mask_width": Range(0, 1024, integer=True),
    "augment.copies": Range(0, 16, integer=True),
    "augment.val_copies": Range(0, 16, integer=True),
    # bundles (config.json) and prediction
    "bundle.sample_rate": Range(1000, 192_000, integer=True),
    "preprocessing.min_duration": Range(0, 60),
    "predict.batch_size": Range(1, 4096, integer=True),
    "predict.threads": Range(1, 1024, integer=True),
    "predict.sample_rate": Range(1000, 768_000, integer=True),
    "timeline.min_speech": Range(0, 600, open_lo=True),
    "timeline.max_segment": Range(0.1, 600),
}

#: How many elements list settings may have.
LIST_LENGTHS: dict[str, tuple[int, int]] = {
    "model.params.channels": (1, 8),
    "model.params.hidden": (0, 8),
}

#: Largest network (learned parameters) a config or bundle may describe: 50 M float32 values are
#: 200 MB of weights, many times the shipped models (the default cnn1d has 0.14 M).
MAX_PARAMETERS = 50_000_000
#: Values of every filterbank / basis the feature front end builds, together (32 M float32 = 128 MB;
#: the default front end builds 0.3 M).
MAX_FRONT_END_VALUES = 32_000_000
#: Deepest nesting of JSON objects and lists a bundle's config.json / metrics.json may have.
MAX_JSON_DEPTH = 32
#: Labels: how many, and how long each may be.
MAX_LABELS = 256
MAX_LABEL_LENGTH = 48
#: Characters a label may not contain (markup, quotes), besides control characters.
LABEL_FORBIDDEN = frozenset("<>&\"'`\\")


def is_number(value: Any) -> bool:
    """A real int or float (not a bool), finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check(key: str, value: Any, where: str | None = None) -> None:
    """Raise :class:`ConfigError` if ``value`` is not a number inside ``RANGES[key]``.

    ``where`` is the name shown in the message (default ``key``), e.g. ``model.params.channels[1]``.
    ``key`` must be in :data:`RANGES` (a missing key is a bug in emovox).
    """
    rule = RANGES[key]
    shown = where or key
    integral = isinstance(value, int) or (
        hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"
    )
    if isinstance(value, bool) or not (is_number(value) or integral):
        raise ConfigError(f"{shown}: expected {rule.describe()}, got {value!r}")
    if rule.integer and not integral:
        raise ConfigError(f"{shown}: expected {rule.describe()}, got {value!r}")
    if not rule.contains(value):
        raise ConfigError(f"{shown}: must be {rule.describe()}, got {value!r}")


def check_optional(key: str, value: Any, where: str | None = None) -> None:
    """:func:`check`, allowing ``None`` (settings whose null means "off" or "default")."""
    if value is not None:
        check(key, value, where)


def check_list(key: str, value: Any, where: str | None = None) -> None:
    """Check a list setting: its length against :data:`LIST_LENGTHS`, each element against ``RANGES``."""
    shown = where or key
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{shown}: expected a list of numbers, got {value!r}")
    lo, hi = LIST_LENGTHS.get(key, (0, 64))
    if not lo <= len(value) <= hi:
        raise ConfigError(f"{shown}: must have {lo} to {hi} elements, got {len(value)}")
    for i, item in enumerate(value):
        check(key, item, f"{shown}[{i}]")


def check_section(prefix: str, values: Mapping[str, Any]) -> None:
    """Check every key of ``values`` that :data:`RANGES` knows as ``<prefix>.<key>``.

    Numbers are range-checked, lists element by element; keys without a range are left to the
    owner's own validation. Used on raw dicts (a bundle's ``config.json``) before any object is built.
    """
    for name, value in values.items():
        key = f"{prefix}.{name}"
        if key not in RANGES or value is None:
            continue
        if isinstance(value, (list, tuple)):
            check_list(key, value)
        else:
            check(key, value)


def check_labels(labels: Any, where: str = "labels") -> list[str]:
    """A list of 2 to :data:`MAX_LABELS` unique, short, printable strings without markup characters.

    Labels are shown in tables, JSON and the web page, so a tampered bundle must not be able to
    smuggle markup, control characters or megabytes of text through them. Returns them as a list.
    """
    if not isinstance(labels, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of label strings, got {type(labels).__name__}")
    if not 2 <= len(labels) <= MAX_LABELS:
        raise ConfigError(f"{where}: needs 2 to {MAX_LABELS} labels, got {len(labels)}")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise ConfigError(f"{where}[{i}]: expected a string, got {type(label).__name__}")
        shown = label if len(label) <= MAX_LABEL_LENGTH else label[:MAX_LABEL_LENGTH] + "..."
        if not label.strip() or label != label.strip() or len(label) > MAX_LABEL_LENGTH:
            raise ConfigError(
                f"{where}[{i}]: must be 1 to {MAX_LABEL_LENGTH} characters without leading or "
                f"trailing spaces, got {shown!r}"
            )
        if not label.isprintable() or any(c in LABEL_FORBIDDEN for c in label):
            raise ConfigError(
                f"{where}[{i}]: may hold only printable characters other than "
                f"{' '.join(sorted(LABEL_FORBIDDEN))}, got {shown!r}"
            )
    if len(set(labels)) != len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise ConfigError(f"{where}: labels must be unique, {', '.join(map(repr, twice))} appears twice")
    return list(labels)


def check_top_k(top_k: Any) -> None:
    """Raise :class:`ConfigError` unless ``top_k`` (how many of the most likely labels to report) is
    ``None`` or a whole number of at least 1."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 1):
        raise ConfigError(f"top_k must be a whole number of at least 1, got {top_k!r}")


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if parsed JSON ``value`` nests objects/lists deeper than ``limit`` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Sequence[Any] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


__all__ = [
    "LIST_LENGTHS",
    "MAX_FRONT_END_VALUES",
    "MAX_JSON_DEPTH",
    "MAX_LABELS",
    "MAX_LABEL_LENGTH",
    "MAX_PARAMETERS",
    "RANGES",
    "Range",
    "check",
    "check_labels",
    "check_list",
    "check_optional",
    "check_section",
    "is_number",
]
