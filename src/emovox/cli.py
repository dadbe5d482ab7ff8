"""The `emovox` command (typer + rich): the app, its small commands (export, serve), the entry point.

Each command is a thin layer: parse options, call the module that owns the concern, print. The
bigger commands live beside this module, one module per concern: :mod:`emovox.cli_data` (data
summary / fetch), :mod:`emovox.cli_runs` (train, cv, evaluate), :mod:`emovox.cli_predict`
(predict); :mod:`emovox.cli_output` holds the consoles and the one-line error they share. Any
:class:`~emovox.errors.EmovoxError` ends in one red line naming the input and exit status 2 (1 for
"some inputs failed" in batch commands), never a traceback. Heavy imports (torch) happen inside
commands so `emovox --help` is instant.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from emovox import cli_data, cli_predict, cli_runs
from emovox.cli_output import console, err_console, fail
from emovox.errors import EmovoxError

__all__ = ["app", "console", "data_app", "err_console", "fail", "main"]

app = typer.Typer(
    name="emovox",
    help="Speech emotion recognition: data, features, training, honest evaluation, prediction, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and download emotional speech corpora.", no_args_is_help=True)
app.add_typer(data_app, name="data")


# --------------------------------------------------------------------------- export
# (owned by emovox.export)


def export(
    bundle: Annotated[
        str,
        typer.Argument(help="Bundle folder, run folder (uses its model/) or 'default'.", show_default=False),
    ],
    onnx: Annotated[
        Path | None,
        typer.Option("--onnx", help="Write the ONNX model to this file instead of into the bundle."),
    ] = None,
    opset: Annotated[int, typer.Option("--opset", min=18, help="ONNX opset.")] = 18,
    atol: Annotated[
        float, typer.Option("--atol", min=0.0, help="Largest allowed |onnxruntime - PyTorch| probability.")
    ] = 1e-4,
) -> None:
    """Export a model to ONNX (waveform -> probabilities, features included) and verify it.

    By default the model goes into the bundle as model.onnx, which `--backend onnx` and
    `Recognizer.load(..., backend="onnx")` use. Every export is checked with onnxruntime against
    PyTorch on real clips (the repository's examples/*.flac, else synthetic speech).
    """
    from emovox.bundle import read_meta
    from emovox.export import default_check_waves, export_bundle

    try:
        meta = read_meta(bundle)
        waves, described = default_check_waves()
        with err_console.status(f"exporting {meta['model']['family']} model {meta['path']} to ONNX..."):
            results = export_bundle(
                bundle, onnx, into_bundle=onnx is None, opset=opset, check_waves=waves, atol=atol
            )
    except EmovoxError as exc:
        raise fail(str(exc)) from None
    result = results[-1]
    size_mb = result.path.stat().st_size / 1e6
    console.print(f"wrote {result.path} (opset {result.opset}, {size_mb:.1f} MB)", highlight=False)
    console.print(
        f"verified with onnxruntime on {described}, alone and as one padded batch: "
        f"max |onnxruntime - PyTorch| = {result.max_abs_diff:.2e} (allowed {atol:g})",
        highlight=False,
    )
    if onnx is None:
        console.print(f"use it: emovox predict FILES --model {meta['path']} --backend onnx", highlight=False)


# --------------------------------------------------------------------------- serve
# (owned by emovox.serve)


def serve(
    model: Annotated[str, typer.Option(help='Model bundle: "default" or a bundle folder.')] = "default",
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest upload per file (MB).")] = 20.0,
    max_duration_s: Annotated[float, typer.Option(min=0.1, help="Longest audio accepted (s).")] = 600.0,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="Allow browser requests from this origin (repeatable); default: none."),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="Inference backend: torch or onnx (see `emovox export`).")
    ] = "torch",
    workers: Annotated[
        int | None, typer.Option(min=1, help="Inferences run at once (threads) (default: cores, at most 2).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the web service: the page at /, the JSON API under /api/v1, live streaming, docs at /docs."""
    import socket

    from emovox.predict import Recognizer
    from emovox.serve import ServeSettings, run_server

    settings = ServeSettings(
        max_upload_mb=max_upload_mb,
        max_duration_s=max_duration_s,
        cors_origins=tuple(cors_origin or ()),
        **({"workers": workers} if workers is not None else {}),
    )
    try:  # a clear line now rather than a uvicorn traceback once the model is loaded
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    with console.status(f"loading model {model}..."):
        recognizer = Recognizer.load(model, backend=backend)  # type: ignore[arg-type]
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]warning:[/] listening on {host}: the service has no authentication")
    console.print(
        f"emovox serving model [bold]{model}[/] ({len(recognizer.labels)} emotions) at http://{host}:{port}/",
        highlight=False,
    )
    run_server(recognizer, model=model, host=host, port=port, settings=settings, log_level=log_level)


# --------------------------------------------------------------------------- commands


def _register_commands() -> None:
    """Every command on its group, in the order `emovox --help` lists them."""
    data_app.command("summary")(cli_data.data_summary)
    data_app.command("fetch")(cli_data.data_fetch)
    app.command("evaluate")(cli_runs.evaluate)
    app.command("cv")(cli_runs.cv)
    app.command("train")(cli_runs.train)
    app.command("predict", cls=cli_predict.PredictCommand)(cli_predict.predict)
    app.command("export")(export)
    app.command("serve")(serve)


# --------------------------------------------------------------------------- help text


def _reflow(text: str) -> str:
    """A docstring as help: paragraphs joined into single lines (the terminal wraps them, not the
    source's line breaks) and square brackets escaped (``root/[speaker/]emotion`` is not markup)."""
    from rich.markup import escape

    paragraphs = [" ".join(line.strip() for line in part.splitlines()) for part in text.split("\n\n")]
    return escape("\n\n".join(p for p in paragraphs if p))


def _tidy_help(*typers: typer.Typer) -> None:
    for group in typers:
        for info in group.registered_commands:
            doc = info.help or inspect.getdoc(info.callback) or ""
            info.help = _reflow(doc)


def _flag_type_hidden() -> None:
    """Show no ``<bool>`` type for on/off flags (``--json``, ``--help``) in this typer's help panels."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_emovox", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._emovox = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_register_commands()
_tidy_help(app, data_app)
_flag_type_hidden()


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
