"""What every `emovox` command shares: the stdout / stderr consoles, the one-line error, strict JSON.

Light on purpose (rich only): every command module imports it at start, and `emovox --help` must
stay instant.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear error line and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def strict_json(value: Any, indent: int | None = None) -> str:
    """Strict JSON (one line unless ``indent``): non-finite floats (NaN, inf), which JSON has no
    spelling for, become null, so every consumer can parse it."""
    import json

    from emovox.jsonutil import jsonable

    return json.dumps(jsonable(value), allow_nan=False, indent=indent)
