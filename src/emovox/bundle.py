"""Model bundles: a trained :class:`~emovox.models.EmotionNet` as a self-describing folder.

A bundle is a directory holding

* ``model.safetensors``: the network's ``state_dict`` (weights and normaliser buffers). Bundles
  never contain pickles, so loading one cannot run code;
* ``config.json``: ``format_version``, the emovox version that wrote it, ``EmotionNet.config()``
  (feature parameters, family, hyper-parameters, labels), the audio preprocessing used in training
  (so prediction sees exactly what evaluation saw), a summary of the training data and the
  sha256 of every weight file (to detect corruption);
* ``metrics.json``: the speaker-independent scores measured for the model;
* ``README.md``: a model card (data, protocol, scores, licence, intended use and limits);
* optionally ``model.onnx``, added by :func:`emovox.export.export_onnx`, which lets
  :class:`emovox.predict.Recognizer` run on onnxruntime alone.

:func:`save_bundle` is atomic: the bundle is written into a temporary folder beside the target and
swapped in only when complete, so an interrupted save leaves the previous bundle (or nothing) in
place, never half a bundle. :func:`load_bundle` checks everything it reads and raises
:class:`~emovox.errors.BundleError` naming the bundle and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import emovox.limits as limits
import emovox.tmpfiles as tmpfiles
from emovox._version import __version__
from emovox.errors import BundleError, ConfigError, EmovoxError
from emovox.jsonutil import jsonable
from emovox.model_card import DEFAULT_INTENDED_USE, DEFAULT_LIMITATIONS, ModelCard, render_card

if TYPE_CHECKING:
    from emovox.models import EmotionNet

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
ONNX_FILE = "model.onnx"
#: Frozen pretrained encoder weights (encoder family), kept apart from the head's weights so a
#: retrained head leaves this file byte-identical (one copy in git history, not one per retrain).
ENCODER_FILE = "encoder.safetensors"
ENCODER_PREFIX = "extractor."
REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE)

#: The shipped default model, inside the installed package.
DEFAULT_BUNDLE: Path = Path(str(resources.files("emovox").joinpath("assets", "default_model")))
#: The shipped fast model (a small cnn1d on MFCCs, for latency-critical use), ``Recognizer.load("fast")``.
FAST_BUNDLE: Path = Path(str(resources.files("emovox").joinpath("assets", "fast_model")))

#: Audio preprocessing applied before the network, recorded in every bundle. Training passes
#: the values it used; prediction applies the same ones so its outputs equal evaluation's.
DEFAULT_PREPROCESSING: dict[str, Any] = {"trim_silence": True, "min_duration": 0.25}


# --------------------------------------------------------------------------- saving


def save_bundle(
    model: EmotionNet,
    path: str | Path,
    *,
    metrics: Mapping[str, Any],
    card: ModelCard | Mapping[str, Any],
    training: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    encoder_dtype: str = "float16",
) -> Path:
    """Write ``model`` as a bundle at ``path``, atomically, and return the path.

    Weights of a pretrained encoder (encoder family) go to ``encoder.safetensors``, stored as
    ``encoder_dtype`` (``"float16"`` halves the file; loading casts back to float32).
    ``metrics`` goes to metrics.json and into the card; ``training`` is a JSON-able summary of the
    training data (corpora, utterances, speakers, per-emotion counts); ``preprocessing`` holds the
    ``trim_silence`` / ``min_duration`` used to load training audio (default
    :data:`DEFAULT_PREPROCESSING`). An existing bundle at ``path`` is replaced only once the new
    one is complete; a folder there that is not a bundle is never overwritten.
    """
    import torch
    from safetensors.torch import save_file

    target = Path(path)
    model_card = ModelCard.coerce(card)
    prep = _preprocessing(preprocessing)
    if target.exists() and not _replaceable(target):
        raise BundleError(f"{target}: exists and is not a model bundle; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(target)
    model_config = model.config()
    tmp = Path(tempfile.mkdtemp(prefix=tmpfiles.temp_prefix(target.name), dir=target.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        encoder = {k: state.pop(k) for k in [k for k in state if k.startswith(ENCODER_PREFIX)]}
        file_meta = {"format": "pt", "emovox_format": str(FORMAT_VERSION)}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata=file_meta)
        sums = {WEIGHTS_FILE: sha256_file(tmp / WEIGHTS_FILE)}
        if encoder:
            if encoder_dtype not in ("float16", "float32"):
                raise BundleError(f"encoder_dtype: expected 'float16' or 'float32', got {encoder_dtype!r}")
            dtype = getattr(torch, encoder_dtype)
            encoder = {k: v.to(dtype) if v.is_floating_point() else v for k, v in encoder.items()}
            # one metadata key: safetensors writes a metadata map in no fixed order, and this file
            # must come out byte-identical whenever the same encoder is saved again
            save_file(encoder, str(tmp / ENCODER_FILE), metadata={"format": "pt"})
            sums[ENCODER_FILE] = sha256_file(tmp / ENCODER_FILE)
        config = {
            "format_version": FORMAT_VERSION,
            "emovox_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": model_config,
            "sample_rate": int(model_config["features"]["sample_rate"]),
            "preprocessing": prep,
            "training": jsonable(dict(training or {})),
            "sha256": sums,
        }
        config["sha256"][CONFIG_FILE] = config_digest(config)
        metrics_json = jsonable(dict(metrics))
        _write_text(tmp / METRICS_FILE, json.dumps(metrics_json, indent=2) + "\n")
        _write_text(
            tmp / CARD_FILE,
            render_card(config, metrics_json, model_card, weight_files=(WEIGHTS_FILE, ENCODER_FILE)),
        )
        _write_text(tmp / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        for name in sums:
            _fsync(tmp / name)
        _publish_modes(tmp)
        _fsync(tmp)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _clean_leftovers(target: Path) -> None:
    """Remove what killed saves to ``target`` left beside it (``.<name>.tmp-*`` folders, and
    ``.<name>.old*`` copies of the previous bundle, which are put back when the bundle itself is gone)."""
    folder = target.parent
    if not target.exists():
        olds = sorted(
            (
                p
                for p in folder.glob(f".{target.name}.old*")
                if tmpfiles.is_stale(p) and (p / CONFIG_FILE).is_file()
            ),
            key=lambda p: p.stat().st_mtime,
        )
        if olds:
            try:
                os.replace(olds[-1], target)  # the swap was interrupted between its two renames
            except OSError:
                pass
    tmpfiles.remove_stale(folder, f".{target.name}.tmp-*")
    tmpfiles.remove_stale(folder, f".{target.name}.old*")


def _replaceable(target: Path) -> bool:
    """A bundle (has config.json) or an empty folder may be replaced; anything else may not."""
    return target.is_dir() and ((target / CONFIG_FILE).is_file() or not any(target.iterdir()))


def _swap_in(tmp: Path, target: Path) -> None:
    """Move the complete bundle ``tmp`` to ``target``, keeping the old one until the new one is in place."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(tmpfiles.temp_name(target.name, "old"))
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    """The process umask (read from /proc where possible, so the process-wide value is never changed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_modes(folder: Path) -> None:
    """Give the bundle ordinary permissions (``mkdtemp`` makes the folder 0700 and safetensors writes
    0600), so a bundle installed for several users, like the shipped default model, is readable."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for file in folder.iterdir():
        os.chmod(file, 0o666 & ~mask)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    """Flush a file or a directory entry to disk (directories only where the OS allows it)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def config_digest(config: Mapping[str, Any]) -> str:
    """The sha256 config.json records for itself: of its content without that one entry, as canonical
    JSON (sorted keys), so whitespace and key order do not matter but every value does."""
    content = dict(config)
    sums = dict(content.get("sha256") or {})
    sums.pop(CONFIG_FILE, None)
    content["sha256"] = sums
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _preprocessing(preprocessing: Mapping[str, Any] | None) -> dict[str, Any]:
    prep = dict(DEFAULT_PREPROCESSING)
    if preprocessing:
        unknown = sorted(set(preprocessing) - set(DEFAULT_PREPROCESSING))
        if unknown:
            raise ConfigError(f"bundle preprocessing: unknown key(s) {', '.join(unknown)}")
        prep.update(preprocessing)
    trim = prep["trim_silence"]
    if not isinstance(trim, bool) and type(trim).__name__ != "bool_":  # numpy bools too
        raise ConfigError(f"preprocessing.trim_silence: expected true or false, got {trim!r}")
    limits.check("preprocessing.min_duration", prep["min_duration"])
    return {"trim_silence": bool(trim), "min_duration": float(prep["min_duration"])}


# --------------------------------------------------------------------------- loading


def resolve_bundle(path: str | Path) -> Path:
    """``"default"`` / ``"fast"`` -> the shipped bundles; a run folder -> its ``model/`` bundle;
    anything else -> that folder. Raises :class:`BundleError` if there is no bundle there."""
    if str(path) == "fast":
        if not (FAST_BUNDLE / CONFIG_FILE).is_file():
            raise BundleError(f"the fast model is not installed (no bundle at {FAST_BUNDLE})")
        return FAST_BUNDLE
    if str(path) == "default":
        if not (DEFAULT_BUNDLE / CONFIG_FILE).is_file():
            raise BundleError(
                f"the default model is not installed (no bundle at {DEFAULT_BUNDLE}). Train one, e.g. "
                "`emovox train --config configs/ravdess_crnn.yaml`, and pass its run folder with "
                "--model runs/<run> (Python: Recognizer.load('runs/<run>'))"
            )
        return DEFAULT_BUNDLE
    bundle = Path(path)
    if not bundle.exists():
        raise BundleError(f"{bundle}: model bundle not found")
    if bundle.is_dir() and not (bundle / CONFIG_FILE).exists() and (bundle / "model" / CONFIG_FILE).is_file():
        return bundle / "model"  # a run directory: its bundle is model/
    if not bundle.is_dir():
        raise BundleError(
            f"{bundle}: a model bundle is a folder (with {', '.join(REQUIRED_FILES)}), not a file"
        )
    return bundle


def read_meta(path: str | Path) -> dict[str, Any]:
    """Read and validate a bundle's config.json and metrics.json (no weights).

    Returns config.json's content plus ``metrics`` and ``path``. Checks the files are present,
    parse, and have a format version this emovox reads.
    """
    bundle = resolve_bundle(path)
    missing = [name for name in REQUIRED_FILES if not (bundle / name).is_file()]
    if missing:
        raise BundleError(f"{bundle}: incomplete model bundle, missing {', '.join(missing)}")
    config = _read_json(bundle / CONFIG_FILE)
    metrics = _read_json(bundle / METRICS_FILE)
    if not isinstance(config, dict):
        raise BundleError(f"{bundle / CONFIG_FILE}: expected a JSON object")
    if not isinstance(metrics, dict):
        raise BundleError(f"{bundle / METRICS_FILE}: expected a JSON object")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{bundle / CONFIG_FILE}: missing or invalid format_version ({version!r})")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{bundle}: bundle format {version} was written by emovox {config.get('emovox_version', '?')}; "
            f"this emovox ({__version__}) reads format {FORMAT_VERSION} or older, please upgrade emovox"
        )
    if version < 1:
        raise BundleError(f"{bundle}: unknown bundle format_version {version}")
    for key in ("model", "sha256", "preprocessing"):
        if not isinstance(config.get(key), dict):
            raise BundleError(f"{bundle / CONFIG_FILE}: missing or invalid {key!r} section")
    model = config["model"]
    if not model.get("labels"):
        raise BundleError(f"{bundle / CONFIG_FILE}: the model section lists no labels")
    _check_config_digest(bundle, config)
    _check_values(bundle, config)
    config["preprocessing"] = _preprocessing_from(bundle, config["preprocessing"])
    config["metrics"] = metrics
    config["path"] = str(bundle)
    return config


def _check_config_digest(bundle: Path, config: Mapping[str, Any]) -> None:
    """config.json's own checksum (``sha256["config.json"]``), when it records one.

    Bundles written before emovox recorded it (such as the shipped default model) have none and
    are read as before; their values are still validated like every bundle's.
    """
    expected = config["sha256"].get(CONFIG_FILE)
    if expected is None:
        return
    actual = config_digest(config)
    if actual != expected:
        raise BundleError(
            f"{bundle / CONFIG_FILE}: checksum mismatch (sha256 {actual[:12]}..., the file records "
            f"{str(expected)[:12]}...); config.json was modified or is corrupted, re-export or "
            "re-download the bundle"
        )


def _check_values(bundle: Path, config: Mapping[str, Any]) -> None:
    """Labels, sample rate and every number of the model section against :mod:`emovox.limits`, before
    anything is built from them (the onnx backend builds nothing, so this is its only check)."""
    where = bundle / CONFIG_FILE
    model = config["model"]
    try:
        limits.check_labels(model["labels"], "model.labels")
        features = model.get("features")
        if not isinstance(features, dict):
            raise ConfigError(f"model.features: expected a mapping of feature parameters, got {features!r}")
        params = model.get("params")
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"model.params: expected a mapping of hyper-parameters, got {params!r}")
        if not isinstance(model.get("family"), str):
            raise ConfigError(f"model.family: expected a model family name, got {model.get('family')!r}")
        limits.check_section("features", features)
        limits.check_section("model.params", params or {})
        rate = config.get("sample_rate", features.get("sample_rate"))
        limits.check("bundle.sample_rate", rate, "sample_rate")
        if "sample_rate" in features and features["sample_rate"] != rate:
            raise ConfigError(
                f"sample_rate: {rate} differs from the model's features.sample_rate {features['sample_rate']}"
            )
    except ConfigError as exc:
        raise BundleError(f"{where}: {exc}") from None
    for name, value in config["sha256"].items():
        if not isinstance(value, str) or len(value) != 64:
            raise BundleError(f"{where}: sha256 of {name!r} is not a sha256 hex digest ({str(value)[:20]!r})")


def _preprocessing_from(bundle: Path, prep: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return _preprocessing(prep)
    except (ConfigError, TypeError, ValueError) as exc:
        raise BundleError(f"{bundle / CONFIG_FILE}: invalid preprocessing section ({exc})") from None


def verify_checksum(
    bundle: Path, meta: Mapping[str, Any], name: str, *, max_bytes: int | None = None
) -> Path:
    """Check a file of the bundle against the sha256 recorded in config.json; return its path.

    ``max_bytes`` (default: what :func:`max_file_bytes` allows for that file) is checked first, so a
    huge (or sparse) file is refused at once instead of hashed for minutes.
    """
    file = bundle / name
    if not file.is_file():
        raise BundleError(f"{bundle}: incomplete model bundle, missing {name}")
    expected = meta["sha256"].get(name)
    if not expected:
        raise BundleError(f"{bundle / CONFIG_FILE}: records no sha256 for {name}")
    limit = max_file_bytes(bundle, name) if max_bytes is None else max_bytes
    size = file.stat().st_size
    if size > limit:
        raise BundleError(
            f"{file}: is {_mb(size)}, more than the {_mb(limit)} the model in config.json can need; "
            "the file is corrupted or was replaced"
        )
    actual = sha256_file(file)
    if actual != expected:
        raise BundleError(
            f"{file}: checksum mismatch (sha256 {actual[:12]}..., config.json records {expected[:12]}...); "
            "the file is corrupted or was modified, re-export or re-download the bundle"
        )
    return file


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def max_file_bytes(bundle: Path, name: str) -> int:
    """Largest size a file of ``bundle`` may have before it is hashed.

    model.safetensors: :func:`weights_bytes_limit` of the largest network allowed; model.onnx: twice
    the weights (graph constants) plus the largest feature front end. :func:`load_bundle` checks the
    weights against the actual network of config.json instead, which is much tighter.
    """
    if name == ONNX_FILE:
        weights = 0
        for part, widen in ((WEIGHTS_FILE, 1), (ENCODER_FILE, 2)):  # encoder weights may be stored fp16
            try:
                weights += widen * (bundle / part).stat().st_size
            except OSError:
                pass
        weights = min(weights, weights_bytes_limit(limits.MAX_PARAMETERS, 1000))
        return 2 * weights + 4 * limits.MAX_FRONT_END_VALUES + (64 << 20)
    return weights_bytes_limit(limits.MAX_PARAMETERS, 1000)


def weights_bytes_limit(values: int, tensors: int) -> int:
    """Largest model.safetensors holding ``values`` numbers in ``tensors`` tensors: 8 bytes a value
    (float64 at most) plus the JSON header (names, shapes, offsets; generously 1 KiB a tensor + 1 MiB)."""
    return 8 * values + 1024 * tensors + (1 << 20)


def load_bundle(path: str | Path = "default") -> tuple[EmotionNet, dict[str, Any]]:
    """Load a bundle (``"default"`` or a folder) -> ``(EmotionNet in eval mode, meta)``.

    ``meta`` is config.json plus ``metrics`` and ``path``. Weights are read with safetensors (no
    pickle). Raises :class:`BundleError` for a missing folder or file, unreadable JSON, an unknown
    or newer format, a checksum mismatch, or weights that do not fit the configured network.
    """
    from emovox.models import EmotionNet

    meta = read_meta(path)
    bundle = Path(meta["path"])
    try:  # parameters are range-checked before anything is allocated (emovox.limits)
        net = EmotionNet.from_config(meta["model"])
    except (EmovoxError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{bundle / CONFIG_FILE}: cannot build the model it describes ({exc})") from None
    state_now = net.state_dict()
    head = {k: v for k, v in state_now.items() if not k.startswith(ENCODER_PREFIX)}
    needed = weights_bytes_limit(sum(t.numel() for t in head.values()), len(head))
    state = _load_weights(verify_checksum(bundle, meta, WEIGHTS_FILE, max_bytes=needed))
    if ENCODER_FILE in meta["sha256"]:
        encoder_state = {k: v for k, v in state_now.items() if k.startswith(ENCODER_PREFIX)}
        needed = weights_bytes_limit(sum(t.numel() for t in encoder_state.values()), len(encoder_state))
        encoder = _load_weights(verify_checksum(bundle, meta, ENCODER_FILE, max_bytes=needed))
        state.update({k: v.float() if v.is_floating_point() else v for k, v in encoder.items()})
    if "temperature" not in state:  # bundles from before calibration: uncalibrated logits
        import torch

        state["temperature"] = torch.ones(())
    _check_state(bundle, state_now, state)
    net.load_state_dict(state, strict=True)
    net.eval()
    return net, meta


def _load_weights(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable safetensors file ({exc})") from None


def _check_state(bundle: Path, expected: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """Explain, by tensor name, how stored weights differ from what the configured network needs."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing tensors {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_some(unexpected)}")
    shapes = [
        f"{k} {tuple(found[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    if shapes:
        problems.append(f"shape mismatch for {_some(shapes)}")
    if problems:
        raise BundleError(
            f"{bundle / WEIGHTS_FILE}: weights do not match the model in config.json: " + "; ".join(problems)
        )


def _some(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


#: Largest config.json / metrics.json read (a bundle's are a few KB; per-clip predictions of a large
#: corpus in metrics.json a few MB).
MAX_JSON_BYTES = 16 << 20
_TOO_DEEP = object()


def _read_json(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise BundleError(
                f"{path}: is {_mb(size)}, over the {_mb(MAX_JSON_BYTES)} a bundle's JSON may have"
            )
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        value = _TOO_DEEP
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot be read ({exc})") from None
    if value is _TOO_DEEP or limits.json_depth_exceeds(value):
        raise BundleError(
            f"{path}: nested more than {limits.MAX_JSON_DEPTH} levels deep; not an emovox bundle file"
        )
    return value


def update_config(bundle: Path, changes: Mapping[str, Any]) -> None:
    """Merge top-level ``changes`` into a bundle's config.json, atomically (used to register model.onnx)."""
    config = _read_json(bundle / CONFIG_FILE)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    if isinstance(config.get("sha256"), dict):
        config["sha256"][CONFIG_FILE] = config_digest(config)
    tmpfiles.remove_stale(bundle, f".{CONFIG_FILE}.tmp-*")
    tmp = bundle / tmpfiles.temp_name(CONFIG_FILE)
    try:
        _write_text(tmp, json.dumps(config, indent=2) + "\n")
        os.replace(tmp, bundle / CONFIG_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(bundle)


__all__ = [
    "DEFAULT_BUNDLE",
    "DEFAULT_INTENDED_USE",
    "DEFAULT_LIMITATIONS",
    "FAST_BUNDLE",
    "FORMAT_VERSION",
    "ModelCard",
    "load_bundle",
    "read_meta",
    "render_card",
    "save_bundle",
    "verify_checksum",
]
