"""What the benchmark scripts share: where the corpora are, which clips to time, the machine record.

The scripts import it as ``_common`` (their own folder is put on ``sys.path`` first, so this works
however a script is run: ``python benchmarks/x.py`` or loaded by the smoke tests).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from emovox.audio import is_audio_file

REPO = Path(__file__).resolve().parents[1]
#: RAVDESS in the shared corpora folder beside the repository (``--corpus`` overrides it).
DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "ravdess"


def cpu_model() -> str:
    """The ``lscpu`` model name (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def audio_files(corpus: Path, limit: int | None = None) -> list[Path]:
    """The audio files under ``corpus`` (recursive), in path order, the first ``limit`` of them."""
    return sorted(p for p in corpus.rglob("*") if is_audio_file(p))[:limit]


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine(load_before: list[float] | None) -> dict[str, Any]:
    """The ``machine`` record of a benchmark's JSON: CPU, cores, load before and after, platform."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before": load_before,  # other processes compete for the cores
        "load_average_after": load_average(),
        "platform": platform.platform(),
    }
