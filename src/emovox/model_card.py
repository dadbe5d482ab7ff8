"""The model card of a bundle: what its ``README.md`` says (data, protocol, scores, licence,
intended use and limits), from the bundle's config and metrics and a :class:`ModelCard`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from emovox.errors import ConfigError

__all__ = ["DEFAULT_INTENDED_USE", "DEFAULT_LIMITATIONS", "ModelCard", "render_card"]

DEFAULT_INTENDED_USE = (
    "Research, teaching and prototyping of speech emotion recognition: estimating which of a fixed "
    "set of acted emotion categories a short utterance most resembles."
)
DEFAULT_LIMITATIONS = (
    "Trained on acted emotional speech from a small number of speakers recorded in a studio; "
    "accuracy on spontaneous speech, other languages, accents, ages, microphones and noisy rooms is "
    "lower and has not been measured. Emotion labels are the actors' intended categories, not "
    "anyone's inner state. Do not use it for high-stakes decisions about people (hiring, health, "
    "education, policing, credit, surveillance)."
)


@dataclass(frozen=True)
class ModelCard:
    """What the generated README.md says about a model beyond its configuration and scores."""

    data: str
    """Training data, e.g. "RAVDESS speech (English, 20 actors, 1200 clips, 8 emotions)"."""
    protocol: str
    """How the scores were measured, e.g. "5-fold speaker-independent cross-validation"."""
    licence: str
    """Licence of the training data, which the bundle inherits (e.g. "CC BY-NC-SA 4.0 (RAVDESS)")."""
    title: str = "emovox speech emotion model"
    intended_use: str = DEFAULT_INTENDED_USE
    limitations: str = DEFAULT_LIMITATIONS
    citation: str = ""
    """References for the data and method (markdown)."""
    measured: str = ""
    """Scores measured beyond the cross-validation (degraded audio, other corpora; markdown), shown
    under their own heading when given."""

    @classmethod
    def coerce(cls, card: ModelCard | Mapping[str, Any]) -> ModelCard:
        """Accept a ModelCard or a mapping of its fields (e.g. from a YAML config)."""
        if isinstance(card, ModelCard):
            return card
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(card) - known)
        if unknown:
            raise ConfigError(
                f"model card: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(known)})"
            )
        missing = [f for f in ("data", "protocol", "licence") if not card.get(f)]
        if missing:
            raise ConfigError(f"model card: missing required field(s) {', '.join(missing)}")
        return cls(**{k: str(v) for k, v in card.items()})


_CARD_TEMPLATE = """\
# {title}

Speech emotion recognition model trained with [emovox](https://github.com/emovox/emovox)
{emovox_version} on {created}. It maps a recording of speech to one of {n_labels} emotion
categories: {labels}.

## Model

| | |
|---|---|
| family | `{family}` |
| hyper-parameters | {params} |
| features | {features_desc}, {sample_rate} Hz input |
| preprocessing | trim silence: {trim}, minimum duration: {min_duration:g} s |
| weights | {weights_desc} |

## Training data

{data}
{training_table}
**Licence.** {licence} The model is derived from this data and inherits its licence terms.

## Evaluation

{protocol}

{scores}{measured}
## Intended use

{intended_use}

## Limitations

{limitations}

## Usage

```python
from emovox import Recognizer

rec = Recognizer.load("path/to/this/folder")
print(rec.predict("speech.wav"))
```

or `emovox predict speech.wav --model path/to/this/folder`.
{citation}"""

_SCORE_NAMES = {"ua": "UA (unweighted accuracy)", "wa": "WA (weighted accuracy)", "macro_f1": "macro-F1"}


def _describe_features(family: str, features: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """What the model reads, for the card: frame sequences, pooled statistics or eGeMAPS."""
    sets = [
        f"{name} (+ deltas)" if name == "mfcc" and features.get("deltas") else name
        for name in features.get("sets", [])
    ]
    names = ", ".join(sets) or "-"
    if family == "svm" and params.get("features") == "egemaps":
        return "eGeMAPS functionals (openSMILE, 88 values per clip)"
    if family == "encoder":
        layers = params.get("encoder_layers", "all")
        what = f"hidden states {layers} of a frozen pretrained encoder (`{params.get('encoder', '?')}`)"
        if params.get("pooling") == "stats":
            what += ", per-layer mean and std over the clip"
        if params.get("speaker_norm"):
            what += "; a second head reads them standardised over a speaker's clips (normalize=speaker)"
        return what
    if family in ("mlp", "svm"):
        stats = ", ".join(features.get("stats", [])) or "-"
        return f"{names}, pooled per clip ({stats})"
    return f"{names} frame sequences"


def render_card(
    config: Mapping[str, Any], metrics: Mapping[str, Any], card: ModelCard, *, weight_files: Sequence[str]
) -> str:
    """Fill the model-card template from a bundle's config, metrics and card text; the card names
    the ``weight_files`` (in this order) that the config records a sha256 for."""
    model = config["model"]
    features = model.get("features", {})
    params = model.get("params") or {}
    training = config.get("training") or {}
    return _CARD_TEMPLATE.format(
        title=card.title,
        emovox_version=config["emovox_version"],
        created=config["created"][:10],
        n_labels=len(model["labels"]),
        labels=", ".join(model["labels"]),
        family=model["family"],
        params=", ".join(f"`{k}={v}`" for k, v in params.items()) or "defaults",
        features_desc=_describe_features(model["family"], features, params),
        sample_rate=config["sample_rate"],
        trim="yes" if config["preprocessing"]["trim_silence"] else "no",
        min_duration=config["preprocessing"]["min_duration"],
        weights_desc=", ".join(
            f"`{name}` (sha256 `{config['sha256'][name][:16]}`)"
            for name in weight_files
            if name in config["sha256"]
        ),
        data=card.data,
        training_table=_table(training) if training else "",
        licence=card.licence.rstrip(".") + ".",
        protocol=card.protocol,
        scores=_scores(metrics),
        measured=f"\n## Measured beyond the cross-validation\n\n{card.measured.strip()}\n"
        if card.measured
        else "",
        intended_use=card.intended_use,
        limitations=card.limitations,
        citation=f"\n## References\n\n{card.citation}\n" if card.citation else "",
    )


def _table(summary: Mapping[str, Any]) -> str:
    rows = [f"| {k} | {_fmt(v)} |" for k, v in summary.items()]
    return "\n| | |\n|---|---|\n" + "\n".join(rows) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _scores(metrics: Mapping[str, Any]) -> str:
    """A markdown table of the headline scores: plain values, or mean ± std over folds."""
    mean = metrics.get("mean") if isinstance(metrics.get("mean"), Mapping) else None
    std = metrics.get("std") if isinstance(metrics.get("std"), Mapping) else {}
    source = mean if mean is not None else metrics
    rows = []
    for key, name in _SCORE_NAMES.items():
        value = source.get(key)
        if isinstance(value, (int, float)):
            spread = std.get(key) if std else None
            cell = f"{value:.3f}" + (f" ± {spread:.3f}" if isinstance(spread, (int, float)) else "")
            rows.append(f"| {name} | {cell} |")
    if not rows:
        return "No scores were recorded for this model.\n"
    return "| metric | score |\n|---|---|\n" + "\n".join(rows) + "\n\nAll scores: `metrics.json`.\n"
