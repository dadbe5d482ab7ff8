"""The `emovox` command (typer + rich).

Each command is a thin layer: parse options, call the module that owns the concern, print. Any
:class:`~emovox.errors.EmovoxError` ends in one red line naming the input and exit status 2 (1 for
"some inputs failed" in batch commands), never a traceback. Heavy imports (torch) happen inside
commands so `emovox --help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from emovox.errors import EmovoxError

app = typer.Typer(
    name="emovox",
    help="Speech emotion recognition: data, features, training, honest evaluation, prediction, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and download emotional speech corpora.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear error line and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


# --------------------------------------------------------------------------- data
# (owned by the corpora concern: emovox.corpora / emovox.download)

# --------------------------------------------------------------------------- train / evaluate / cv
# (owned by emovox.training / emovox.evaluation)

# --------------------------------------------------------------------------- predict / export
# (owned by emovox.predict / emovox.bundle / emovox.export)

# --------------------------------------------------------------------------- serve
# (owned by emovox.serve)


def main() -> None:
    """Entry point: run the app, turning user errors into one message instead of a traceback."""
    try:
        app()
    except EmovoxError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
