"""The files a job runs over: local paths or fsspec URLs, folders, globs, manifest CSVs; reading them.

Local paths come back absolute and normalised, URLs in one canonical spelling, so the results a
job finds in its output folder match the listing when it resumes. ``fsspec`` (the ``ray`` extra)
is imported only for URLs.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import posixpath
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from emovox.audio import AUDIO_EXTENSIONS, load_audio
from emovox.errors import AudioError, ConfigError, CorpusError

__all__ = [
    "INSTALL_HINT",
    "canonical_url",
    "is_url",
    "job_files",
    "list_inputs",
    "local_path",
    "read_audio",
    "read_manifest",
    "url_fs",
]

INSTALL_HINT = 'pip install "emovox[ray]"'


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise ConfigError(f"URL inputs and outputs need fsspec; install it with: {INSTALL_HINT}") from None
    return fsspec


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB = re.compile(r"[*?[]")


def is_url(text: str) -> bool:
    """True for ``scheme://...`` other than ``file://`` (which is a local path)."""
    return bool(_URL.match(text)) and not text.startswith("file://")


def local_path(text: str) -> Path:
    if text.startswith("file://"):
        return Path(unquote(urlparse(text).path))
    return Path(text).expanduser()


def _is_audio_name(name: str) -> bool:
    base = posixpath.basename(name.rstrip("/"))
    return not base.startswith(".") and posixpath.splitext(base)[1].lower() in AUDIO_EXTENSIONS


def list_inputs(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> tuple[list[str], list[str]]:
    """The audio files named by ``inputs``, in order, without duplicates, and warnings.

    Each input is a file (taken as given, even if it is missing or not audio: it gets an error
    row), a folder (searched recursively for audio files, hidden ones skipped), a glob (``*``,
    ``?``, ``[``; ``**`` recurses; matching folders are searched, other non-audio matches
    ignored) or a manifest CSV (``.csv``, a ``path`` column; relative paths are from the CSV's
    folder). Each can be a local path or an fsspec URL (``s3://``, ``gs://``, ``memory://``...).
    Local paths are returned absolute and normalised (``a/../b`` -> ``b``), URLs in one canonical
    spelling (:func:`canonical_url`). Warnings name folders without audio and globs that match nothing.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files: list[str] = []
    warnings: list[str] = []
    for item in items:
        text = os.fspath(item)
        if is_url(text):
            _list_url(text, files, warnings)
        else:
            _list_local(text, files, warnings)
    return list(dict.fromkeys(files)), warnings


def _list_local(text: str, files: list[str], warnings: list[str]) -> None:
    path = local_path(text)
    if _GLOB.search(str(path)) and not path.exists():
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            warnings.append(f"{text}: matches no file")
        for match in matches:
            found = Path(match)
            if found.is_dir():
                _walk_local(found, files, warnings)
            elif _is_audio_name(found.name):
                files.append(os.path.abspath(found))
        return
    if path.is_dir():
        _walk_local(path, files, warnings)
    elif path.suffix.lower() == ".csv" and path.is_file():
        files.extend(read_manifest(str(path)))
    else:
        files.append(os.path.abspath(path))


def _walk_local(folder: Path, files: list[str], warnings: list[str]) -> None:
    found = sorted(
        p
        for p in folder.rglob("*")
        if _is_audio_name(p.name)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )
    if not found:
        warnings.append(f"{folder}: no audio files in this folder")
    files.extend(os.path.abspath(p) for p in found)


def url_fs(url: str) -> tuple[Any, str]:
    fsspec = _fsspec()
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ConfigError(
            f"{url}: cannot open this URL ({exc}); install the fsspec backend for its scheme "
            "(s3fs for s3://, gcsfs for gs://, adlfs for az://)"
        ) from None


def canonical_url(url: str) -> str:
    """One spelling per remote file (``memory://a/b`` and ``memory:///a/b`` are the same), so
    results found through a folder, a glob or a manifest match when a job resumes."""
    fs, root = url_fs(url)
    return fs.unstrip_protocol(root)


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def _list_url(url: str, files: list[str], warnings: list[str]) -> None:
    fs, root = url_fs(url)
    try:
        if _GLOB.search(root):
            matches = sorted(m for m in fs.glob(root) if not _hidden(m))
            if not matches:
                warnings.append(f"{url}: matches no file")
            for match in matches:
                if fs.isdir(match):
                    _walk_url(fs, match, url, files, warnings)
                elif _is_audio_name(match):
                    files.append(fs.unstrip_protocol(match))
        elif fs.isdir(root):
            _walk_url(fs, root, url, files, warnings)
        elif root.lower().endswith(".csv") and fs.isfile(root):
            files.extend(read_manifest(url))
        else:
            files.append(fs.unstrip_protocol(root))
    except OSError as exc:
        raise ConfigError(f"{url}: cannot list ({exc})") from None


def _walk_url(fs: Any, root: str, url: str, files: list[str], warnings: list[str]) -> None:
    prefix = root.rstrip("/") + "/"
    found = sorted(p for p in fs.find(root) if _is_audio_name(p) and not _hidden(p[len(prefix) :]))
    if not found:
        warnings.append(f"{url}: no audio files in this folder")
    files.extend(fs.unstrip_protocol(p) for p in found)


def read_manifest(source: str) -> list[str]:
    """The ``path`` column of a CSV (local path or URL); relative paths are from the CSV's folder."""
    fs, root = url_fs(source) if is_url(source) else (None, source)
    try:
        if fs is not None:
            with fs.open(root, "rb") as fh:
                text = fh.read().decode("utf-8-sig")
        else:
            text = local_path(source).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{source}: cannot read this manifest ({exc})") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if "path" not in header:
        raise CorpusError(f"{source}: a manifest needs a header with a 'path' column (found: {header})")
    col = header.index("path")
    paths: list[str] = []
    for values in reader:
        value = values[col].strip() if col < len(values) else ""
        if not value:
            continue
        if is_url(value):
            paths.append(canonical_url(value))
        elif fs is not None:
            paths.append(fs.unstrip_protocol(posixpath.join(posixpath.dirname(root), value)))
        else:
            path = local_path(value)
            path = path if path.is_absolute() else local_path(source).parent / path
            paths.append(os.path.abspath(path))
    return paths


def read_audio(path: str, sr: int) -> np.ndarray:
    """Decode a local path or an fsspec URL to mono float32 at ``sr`` (:func:`emovox.audio.load_audio`)."""
    if not is_url(path):
        return load_audio(local_path(path), sr=sr, name=path)
    fs, root = url_fs(path)
    try:
        with fs.open(root, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot be read ({exc})") from None
    return load_audio(data, sr=sr, name=path)


def job_files(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    what: str,
    warn: Callable[[str], None] | None = None,
) -> list[str]:
    """:func:`list_inputs` for a job: its warnings go to ``warn``, and no file at all is a
    :class:`ConfigError` ("no audio files to ``what`` in ...")."""
    files, warnings = list_inputs(inputs)
    for message in warnings:
        (warn or (lambda m: None))(message)
    if not files:
        raise ConfigError(f"no audio files to {what} in " + ", ".join(_names(inputs)))
    return files


def _names(inputs: Any) -> list[str]:
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    return [os.fspath(i) for i in inputs]
