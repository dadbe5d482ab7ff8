"""``emovox data fetch``: download a public corpus, verify it, unpack it safely.

Downloads stream to ``<archive>.part`` and resume with an HTTP ``Range`` request when run again
after an interruption. The finished file is checked against the checksum its publisher lists
(Zenodo lists an MD5 for RAVDESS) or one the user passes; a mismatch deletes the partial file so
the next run starts clean. Hosts that publish no checksum (Borealis builds the TESS zip on the fly)
get their SHA-256 printed so the user can pin it next time with ``--sha256``.

Only the standard library talks to the network (``urllib``), so there is no extra dependency.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from rich import get_console

from emovox._version import __version__
from emovox.errors import EmovoxError
from emovox.progress import progress_bar

CHUNK = 1 << 16
COMPLETE_MARKER = ".emovox-complete"


class DownloadError(EmovoxError):
    """A download that cannot be completed: host unreachable, HTTP error, checksum mismatch, bad archive."""


@dataclass(frozen=True)
class Source:
    """Where a corpus archive lives and how to check it.

    ``md5`` / ``sha256`` are the publisher's checksums when it lists one; ``None`` means none is
    published and the download is verified only against a checksum the user passes.
    """

    name: str
    url: str
    filename: str
    description: str
    citation: str
    license: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None


SOURCES: dict[str, Source] = {
    "ravdess": Source(
        name="ravdess",
        url="https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1",
        filename="Audio_Speech_Actors_01-24.zip",
        description="RAVDESS speech, audio only: 24 actors, 1440 clips, 48 kHz WAV (Zenodo record 1188976)",
        citation="Livingstone & Russo (2018), PLoS ONE 13(5): e0196391, doi:10.1371/journal.pone.0196391",
        license="CC BY-NC-SA 4.0",
        md5="bc696df654c87fed845eb13823edef8a",  # as listed on the Zenodo record
        size=208_468_073,
    ),
    "tess": Source(
        name="tess",
        url=("https://borealisdata.ca/api/access/dataset/:persistentId/?persistentId=doi:10.5683/SP2/E8H2MF"),
        filename="TESS.zip",
        description="Toronto Emotional Speech Set: 2 actresses, 2800 clips, 24.4 kHz WAV (Borealis)",
        citation="Pichora-Fuller & Dupuis (2020), Toronto emotional speech set (TESS), "
        "Borealis, doi:10.5683/SP2/E8H2MF",
        license="CC BY-NC-ND 4.0",
    ),
}


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch` did: where the corpus is and the archive's checksums."""

    path: Path
    sha256: str | None
    md5: str | None
    downloaded: bool
    resumed_from: int = 0
    verified: bool = False


def get_source(name: str, url: str | None = None) -> Source:
    """The :class:`Source` called ``name`` (case-insensitive), optionally at a mirror ``url``."""
    source = SOURCES.get(name.strip().lower())
    if source is None:
        raise DownloadError(f"unknown dataset {name!r} (known: {', '.join(SOURCES)})")
    return replace(source, url=url) if url else source


def fetch(
    source: str | Source,
    dest: str | Path,
    *,
    force: bool = False,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> FetchResult:
    """Download, verify and unpack ``source`` into ``dest/<name>``; returns where the corpus is.

    An already unpacked corpus is left alone unless ``force``. ``sha256`` (hex) is checked in
    addition to any published checksum. Raises :class:`DownloadError` naming the URL or file.
    """
    src = get_source(source) if isinstance(source, str) else source
    dest = Path(dest).expanduser()
    target = dest / src.name
    if (target / COMPLETE_MARKER).is_file() and not force:
        return FetchResult(path=target, sha256=None, md5=None, downloaded=False)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{dest}: cannot create the download folder ({exc.strerror})") from None

    archive = dest / src.filename
    part = archive.with_name(archive.name + ".part")
    if force:
        part.unlink(missing_ok=True)
    resumed_from = part.stat().st_size if part.is_file() else 0
    _download(src.url, part, timeout=timeout, progress=progress, label=src.name, expected_size=src.size)

    digests = _digests(part)
    expected = {"md5": src.md5, "sha256": (sha256 or src.sha256)}
    for algo, want in expected.items():
        if want and digests[algo] != want.strip().lower():
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{src.url}: {algo} of the download is {digests[algo]}, expected {want}; "
                "the partial file was deleted, run the command again to download afresh"
            )
    os.replace(part, archive)
    try:
        extract_zip(archive, target)
    finally:
        archive.unlink(missing_ok=True)
    (target / COMPLETE_MARKER).write_text(f"{src.url}\nsha256 {digests['sha256']}\n")
    return FetchResult(
        path=target,
        sha256=digests["sha256"],
        md5=digests["md5"],
        downloaded=True,
        resumed_from=resumed_from,
        verified=any(expected.values()),
    )


def _download(
    url: str, part: Path, *, timeout: float, progress: bool, label: str, expected_size: int | None
) -> None:
    """Stream ``url`` into ``part``, resuming from its current size with a Range request."""
    have = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and have == expected_size:
        return
    headers = {"User-Agent": f"emovox/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return  # the partial file is already complete; the checksum decides
        raise DownloadError(f"{url}: server answered HTTP {exc.code} {exc.reason}") from None
    except (OSError, HTTPException) as exc:  # URLError, timeouts and refused connections are OSErrors
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"{url}: cannot reach the host ({reason}); "
            "check the network connection or pass --url with a mirror"
        ) from None
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored Range: start again from the beginning
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        mode = "ab" if have else "wb"
        received = have
        bar = progress_bar(enabled=progress, kind="bytes", transient=False, console=get_console())
        with bar, part.open(mode) as out:
            task = bar.add_task(label, total=total, completed=have)
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(task, completed=received)
            except (OSError, HTTPException) as exc:
                raise DownloadError(
                    f"{url}: download interrupted after {received} bytes ({exc}); "
                    "run the command again to resume"
                ) from None
    if total is not None and received < total:
        raise DownloadError(
            f"{url}: download interrupted after {received} of {total} bytes; run the command again to resume"
        )


def _digests(path: Path) -> dict[str, str]:
    """MD5 and SHA-256 of a file, read once."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            md5.update(block)
            sha.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def extract_zip(archive: Path, target: Path) -> None:
    """Unpack ``archive`` into ``target`` refusing absolute paths, ``..``, and symbolic links.

    Extraction goes to a temporary sibling folder that replaces ``target`` only when complete.
    """
    tmp = target.with_name(target.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                _check_member(archive, member)
            tmp.mkdir(parents=True)
            for member in zf.infolist():
                zf.extract(member, tmp)
    except zipfile.BadZipFile as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(f"{archive}: not a valid zip archive ({exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _check_member(archive: Path, member: zipfile.ZipInfo) -> None:
    name = member.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and parts[0].endswith(":")) or ".." in parts:
        raise DownloadError(f"{archive}: refusing unsafe path {member.filename!r} in the archive")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise DownloadError(f"{archive}: refusing symbolic link {member.filename!r} in the archive")
