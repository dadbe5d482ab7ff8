"""The one place rich progress bars are built: counted items (files, clips) or downloaded bytes."""

from __future__ import annotations

from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def progress_bar(
    *,
    enabled: bool = True,
    console: Console | None = None,
    transient: bool = True,
    kind: Literal["items", "bytes"] = "items",
) -> Progress:
    """A progress bar on stderr (or ``console``): ``description  ━━━━  12/40  0:00:03`` for counted
    items, or size / speed / time left for downloads. ``enabled=False`` draws nothing (the bar's
    tasks still count, so callers need no second code path)."""
    columns: tuple[ProgressColumn, ...]
    if kind == "bytes":
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
    else:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(
        *columns,
        console=console or Console(stderr=True),
        transient=transient,
        disable=not enabled,
    )
