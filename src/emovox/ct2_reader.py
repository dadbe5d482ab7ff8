"""Read a CTranslate2 ``model.bin`` (one file or ordered parts, streamed) into NumPy arrays.

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

Truncated or malformed files, unknown versions and models of another kind raise
:class:`~emovox.ct2_source.ConversionError` naming the file and the byte.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from emovox.ct2_source import ConversionError, CT2Source

__all__ = ["CT2_DTYPES", "MAX_BINARY_VERSION", "MAX_WHISPER_REVISION", "CT2Model", "read_ct2_model"]

CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
MAX_BINARY_VERSION = 6
MAX_WHISPER_REVISION = 3


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


def _read_header(r: _ChainedReader, expect_spec: str | None) -> tuple[int, str, int]:
    """The binary version, spec name and spec revision, checked against what this reader knows."""
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
    return version, spec, revision


def _read_variable(r: _ChainedReader, version: int, i: int) -> tuple[str, np.ndarray]:
    """Variable ``i``: its name and its array (bfloat16 widened to float32)."""
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
            f"{r.name}: variable {name!r} of shape {tuple(shape)} has an invalid payload size {nbytes}"
        )
    data = r.read(nbytes, f"the data of {name!r}")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    if is_bf16:  # bfloat16 = the top half of a float32
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return name, arr


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
        version, spec, revision = _read_header(r, expect_spec)
        count = _u32(r, "the number of variables")
        variables: dict[str, np.ndarray] = dict(_read_variable(r, version, i) for i in range(count))
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
