"""Temporary names for atomic writes, and cleaning up the ones a killed process left behind.

Bundles, ONNX exports and feature-cache entries are written under a temporary name beside their
target and renamed into place when complete. A process killed mid-write (``kill -9``, power loss)
leaves that temporary behind; :func:`remove_stale` deletes such leftovers on the next write to the
same folder. A temporary is stale when the process that made it (its name records host and pid) is
gone, or when it has not been modified for :data:`STALE_AFTER_S` seconds (names without that
record, another host's, or a reused pid); a recent one whose writer still runs is never removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

#: A temporary not modified for this long is stale whoever made it (a save takes seconds).
STALE_AFTER_S = 15 * 60

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_OWNER = re.compile(r"\.(?:tmp|old)-([0-9a-f]{8})-(\d+)-")


def temp_prefix(name: str) -> str:
    """``.<name>.tmp-<host>-<pid>-``: prefix of the temporaries for ``name`` (for ``tempfile.mkdtemp``)."""
    return f".{name}.tmp-{_HOST}-{os.getpid()}-"


def temp_name(name: str, kind: str = "tmp") -> str:
    """The hidden temporary name for ``name`` in the same folder: ``.<name>.<kind>-<host>-<pid>-<random>``
    (``kind`` "tmp" for a file being written, "old" for a previous version moved aside)."""
    return f".{name}.{kind}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True
    return True


def is_stale(path: Path, *, now: float | None = None, max_age: float = STALE_AFTER_S) -> bool:
    """True if the temporary ``path`` was left by a process that is gone, or is older than ``max_age``."""
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except OSError:
        return False
    if age >= max_age:
        return True
    match = _OWNER.search(path.name)
    return bool(match and match.group(1) == _HOST and not _alive(int(match.group(2))))


def remove_stale(folder: Path, pattern: str, *, max_age: float = STALE_AFTER_S) -> int:
    """Delete the stale temporaries (files or folders) matching ``pattern`` in ``folder``; return how many.

    Never raises: a leftover that cannot be removed stays for the next attempt.
    """
    removed = 0
    try:
        candidates = list(folder.glob(pattern))
    except OSError:
        return 0
    now = time.time()
    for path in candidates:
        if not is_stale(path, now=now, max_age=max_age):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
        except OSError:
            continue
    return removed


__all__ = ["STALE_AFTER_S", "is_stale", "remove_stale", "temp_name", "temp_prefix"]
