"""`emovox predict`: files and folders in, a table / JSON lines / timelines out, or a job on Ray.

The work is done by emovox.predict (``Recognizer``) and, with ``--ray``, emovox.distributed; this
module finds the audio files, reports the unusable ones, and renders the results. Registered on the
app in :mod:`emovox.cli` (with :class:`PredictCommand`, for the optional value of ``--ray``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core

from emovox.cli_output import console, err_console, fail, strict_json
from emovox.errors import EmovoxError

if TYPE_CHECKING:
    from emovox.predict import Recognizer


def _expand_audio_inputs(inputs: list[Path]) -> tuple[list[Path], list[str], list[Path]]:
    """Files to predict on: files as given, folders walked recursively (sorted) for audio files.

    Returns ``(files, problems, empty_folders)``: ``problems`` are one-line messages for inputs
    that do not exist or cannot be read, and for folders inside the inputs that cannot be
    searched (never skipped silently).
    """
    import os
    import stat

    from emovox.audio import is_audio_file

    files: list[Path] = []
    problems: list[str] = []
    empty: list[Path] = []
    for item in inputs:
        try:
            mode = item.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            problems.append(f"{item}: file not found")
            continue
        except OSError as exc:
            problems.append(f"{item}: cannot be read ({exc.strerror or exc})")
            continue
        if not stat.S_ISDIR(mode):
            files.append(item)
            continue
        unreadable: list[str] = []

        def report(exc: OSError, unreadable: list[str] = unreadable) -> None:
            unreadable.append(f"{exc.filename}: folder cannot be read ({exc.strerror or exc}); not searched")

        found = []
        for folder, _, names in os.walk(item, onerror=report):
            for name in names:
                path = Path(folder) / name
                try:
                    if is_audio_file(path):
                        found.append(path)
                except OSError as exc:
                    unreadable.append(f"{path}: cannot be read ({exc.strerror or exc})")
        problems.extend(sorted(unreadable))
        if not found and not unreadable:
            empty.append(item)
        files.extend(sorted(found))
    return list(dict.fromkeys(files)), problems, empty


def _prediction_record(prediction: Any, segments: list[Any] | None) -> dict[str, Any]:
    """The JSON object ``emovox predict --json`` prints for one file."""
    record: dict[str, Any] = {
        "path": prediction.path,
        "emotion": prediction.emotion,
        "confidence": round(prediction.confidence, 6),
        "probabilities": {k: round(v, 6) for k, v in prediction.probabilities.items()},
        "duration": prediction.duration,
    }
    if segments is not None:
        record["segments"] = [
            {"start": s.start, "end": s.end, "emotion": s.emotion, "confidence": round(s.confidence, 6)}
            for s in segments
        ]
    return record


def _top_k_cell(probabilities: dict[str, float], k: int, separator: str = ", ") -> str:
    return separator.join(f"{label} {p:.2f}" for label, p in list(probabilities.items())[:k])


def _path_layout(
    paths: list[str], labels: list[str], k: int, width: int
) -> tuple[list[str], str, int | None, int | None]:
    """How to lay out the predict table in ``width`` columns without breaking file names.

    Returns ``(shown paths, title note, file column width, top-k column width)`` (None: natural
    width). Paths are shown as given when they fit beside the other columns, with the top-k
    entries one per line when the row is too narrow for them side by side; otherwise relative to
    the folder all files share (named in the title) when that fits; else folded at the width left.
    """
    import os

    longest_label = max((len(label) for label in labels), default=7)
    emotion, confidence = max(7, longest_label), len("confidence")
    top_one_line = len(", ".join(["x" * longest_label + " 0.00"] * k))
    top_min = longest_label + 5  # "surprised 0.26", one per line
    fixed = emotion + confidence + 13  # 13: borders and padding of 4 columns
    longest = max((len(p) for p in paths), default=0)
    if longest + fixed + top_one_line <= width:
        return paths, "", None, None  # one line per file
    if longest + fixed + top_min <= width:
        return paths, "", None, width - longest - fixed
    try:
        common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    except ValueError:  # absolute and relative paths mixed
        common = ""
    shown, note = paths, ""
    if common and common not in paths:
        shown = [os.path.relpath(p, common) for p in paths]
        note = f", files in {common}{os.sep}"
        longest = max(len(p) for p in shown)
        if longest + fixed + top_min <= width:
            return shown, note, None, width - longest - fixed
    return shown, note, max(8, width - fixed - top_min), top_min


def _prediction_tables(rows: list[tuple[Any, list[Any] | None]], title: str, k: int) -> list[Any]:
    """Rich tables: one row per file; with --timeline, one table of segments per file.

    File names, emotions and numbers are never broken mid-word when they can fit (see
    :func:`_path_layout`): the top-k column goes to one entry per line first.
    """
    from rich.table import Table

    labels = sorted({label for p, _ in rows for label in p.probabilities})
    shown, note, file_width, top_width = _path_layout(
        [str(p.path) for p, _ in rows], labels, k, console.width
    )
    stacked = top_width is not None
    table = Table(title=title + note)
    table.add_column("file", no_wrap=file_width is None, overflow="fold", width=file_width)
    table.add_column("emotion", no_wrap=True)
    table.add_column("confidence", justify="right", no_wrap=True)
    table.add_column(f"top {k}", width=top_width)
    for (p, _), name in zip(rows, shown, strict=True):
        top = _top_k_cell(p.probabilities, k, "\n" if stacked else ", ")
        table.add_row(name, f"[bold]{p.emotion}[/]", f"{p.confidence:.2f}", top)
    out: list[Any] = [table]
    for p, segments in rows:
        if segments is None:
            continue
        if not segments:
            out.append(f"timeline of {p.path}: no speech found")
            continue
        seg = Table(title=f"timeline of {p.path}")
        for column, justify in (("start (s)", "right"), ("end (s)", "right"), ("emotion", "left")):
            seg.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        seg.add_column("confidence", justify="right", no_wrap=True)
        seg.add_column(f"top {k}")
        for s in segments:
            seg.add_row(
                f"{s.start:.2f}",
                f"{s.end:.2f}",
                s.emotion,
                f"{s.confidence:.2f}",
                _top_k_cell(s.probabilities, k),
            )
        out.append(seg)
    return out


class PredictCommand(typer.core.TyperCommand):
    """`predict` whose --ray takes an optional ADDRESS: a bare --ray (followed by an option, an
    input or nothing) gets "" (Ray's own cluster lookup). Typer options cannot have optional values."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        head = args[: args.index("--")] if "--" in args else args
        if "--ray" in head:
            from emovox.distributed import is_ray_address

            at = head.index("--ray") + 1
            if at == len(head) or not is_ray_address(head[at]):
                args = [*args[:at], "", *args[at:]]
        return super().parse_args(ctx, args)


def _predict_on_ray(inputs: list[str], address: str, out: str | None, **options: Any) -> None:
    """`emovox predict --ray`: emovox.distributed.predict_files, one summary line, exit 1 if files failed."""
    from rich.markup import escape

    from emovox.distributed import predict_files

    if not out:
        raise fail("--ray needs --out RESULTS (a folder for the Parquet results, reused to resume)")

    def warn(message: str) -> None:
        err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    try:
        result = predict_files(inputs, out, address=address or None, warn=warn, **options)
    except EmovoxError as exc:  # escaped: the install hint's [ray] is not markup
        raise fail(escape(str(exc))) from None
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: finished batches are kept in {out}; run the same command to resume",
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    console.print(
        f"{result.files} files -> {result.out}: {result.processed - result.failed} predicted now, "
        f"{result.already_done} already there, {result.failed} could not be used (see the error column)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if result.failed:
        raise typer.Exit(1)


def predict(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Audio files and/or folders (searched for audio files); with --ray also globs, "
            "manifest CSVs (a 'path' column) and fsspec URLs (s3://...).",
            show_default=False,
        ),
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Bundle folder, run folder (uses its model/) or 'default'.")
    ] = "default",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per file on stdout instead of a table.")
    ] = False,
    timeline: Annotated[
        bool, typer.Option("--timeline", help="Also classify each stretch of speech (voice activity).")
    ] = False,
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k", "-k", min=1, help="The K most likely emotions (table: 3 by default, JSON: all)."
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option("--backend", help="torch, or onnx (after `emovox export BUNDLE`).")
    ] = "torch",
    device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1, mps.")] = "cpu",
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="[ADDRESS]",
            help="Run on a Ray cluster, writing --out: ADDRESS is auto, local, HOST:PORT or ray://HOST:PORT; "
            "bare --ray: RAY_ADDRESS, else this machine's cluster, else a new local one. "
            'Needs pip install "emovox\\[ray]".',  # \\[: not rich markup
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out", "-o", help="With --ray: Parquet results folder; a re-run skips the files already in it."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="With --ray: model copies (default: one per cluster CPU)."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="With --ray: files per batch and part file (default 64)."),
    ] = None,
    normalize: Annotated[
        str | None,
        typer.Option(
            "--normalize",
            help="speaker: all inputs are one speaker or session; folder: each folder is one speaker. "
            "Standardises the model's statistics over each group (speaker-normalised models); "
            "--timeline segments use a running estimate.",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="Inference threads (default: 1 for small models such as the shipped ones, else up to 4).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Predict the emotion of speech recordings: a table, or JSON lines with --json.

    Files that cannot be used are reported on stderr, one line each, and skipped. Exit status: 0
    when every input was predicted, 1 when some were skipped, 2 when nothing was predicted (no
    usable input, a missing or broken model, bad options). Recordings longer than a minute are
    read as a stream and classified in 30 s windows, so memory stays flat however long they are.
    With --ray the work is spread over a Ray cluster and every file gets a row in the --out Parquet
    table (see docs/distributed.md).
    """
    if backend not in ("torch", "onnx"):
        raise fail(f"--backend: unknown backend {backend!r} (choose torch or onnx)")
    if ray is not None:
        if as_json or top_k is not None:
            raise fail("--json and --top-k do not apply with --ray: all probabilities go to the --out table")
        _predict_on_ray(
            inputs,
            ray,
            out,
            model=model,
            backend=backend,
            device=device,
            timeline=timeline,
            workers=workers,
            **({"batch_size": batch_size} if batch_size is not None else {}),
        )
        return
    if out is not None or workers is not None or batch_size is not None:
        raise fail("--out, --workers and --batch-size go with --ray (batch prediction on a Ray cluster)")
    files, skipped = _files_to_predict(inputs)
    recognizer = _load_recognizer(model, backend=backend, device=device, threads=threads, timeline=timeline)
    name = Path(str(recognizer.meta["path"])).name
    rows, failed = _predict_each(
        recognizer, files, top_k=top_k, timeline=timeline, as_json=as_json, normalize=normalize
    )
    skipped += failed
    title = f"{name} ({backend}" + (f", normalised per {normalize})" if normalize else ")")
    if not as_json and rows:
        k = min(top_k or 3, len(recognizer.labels))  # no "top 20" column for 8 emotions
        for renderable in _prediction_tables(rows, title, k):
            console.print(renderable, highlight=False)
    _exit_for_skipped(skipped, len(rows))


def _files_to_predict(inputs: list[str]) -> tuple[list[Path], int]:
    """The audio files among ``inputs`` (folders searched) and how many inputs were skipped.

    Warns about empty folders and reports each unusable input on stderr, one line each; ends the
    command (status 2) when nothing usable is left.
    """
    files, problems, empty = _expand_audio_inputs([Path(item) for item in inputs])
    for folder in empty:
        err_console.print(f"[yellow]warning:[/] {folder}: no audio files in this folder", highlight=False)
    if not files and not problems:
        raise fail("no audio files to predict on in " + ", ".join(str(p) for p in inputs))
    for problem in problems:
        err_console.print(f"[bold red]skipped:[/] {problem}", highlight=False, soft_wrap=True)
    if not files:
        raise fail(f"nothing to predict: {len(problems)} input(s) skipped, 0 predicted")
    return files, len(problems)


def _load_recognizer(
    model: str, *, backend: str, device: str, threads: int | None, timeline: bool
) -> Recognizer:
    """``Recognizer.load`` with its errors as one line; --timeline needs a 16 kHz model."""
    from emovox.audio import SAMPLE_RATE
    from emovox.predict import Recognizer

    try:
        recognizer = Recognizer.load(model, backend=backend, device=device, threads=threads)  # type: ignore[arg-type]
    except EmovoxError as exc:
        raise fail(str(exc)) from None
    if timeline and recognizer.sample_rate != SAMPLE_RATE:
        raise fail(f"--timeline needs a {SAMPLE_RATE} Hz model; {model} uses {recognizer.sample_rate} Hz")
    return recognizer


def _print_json_line(prediction: Any, segments: list[Any] | None) -> None:
    """One ``--json`` line, flushed so a reader sees each file as soon as it is done."""
    sys.stdout.write(strict_json(_prediction_record(prediction, segments)) + "\n")
    sys.stdout.flush()


def _predict_each(
    recognizer: Recognizer,
    files: list[Path],
    *,
    top_k: int | None,
    timeline: bool,
    as_json: bool,
    normalize: str | None = None,
) -> tuple[list[tuple[Any, list[Any] | None]], int]:
    """File by file, with a progress bar on a terminal: ``(rows, files that could not be used)``.

    An unusable file is reported on stderr and skipped; with --json each result is printed as it
    comes (with --normalize, when its group, all inputs or its folder, is done).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    failed = 0
    rows: list[tuple[Any, list[Any] | None]] = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        auto_refresh=False,  # drawn between files only: nothing writes while decoders are silenced
        disable=len(files) < 2 or not err_console.is_terminal,
    )
    with progress:
        task = progress.add_task("predicting", total=len(files))
        results = recognizer.predict_files(
            files,
            top_k=top_k and min(top_k, len(recognizer.labels)),
            timeline=timeline,
            quiet_decoder=True,
            normalize=normalize,
        )
        try:
            for result in results:
                if result.error is not None:
                    failed += 1
                    progress.console.print(
                        f"[bold red]skipped:[/] {result.error}", highlight=False, soft_wrap=True
                    )
                else:
                    if as_json:
                        _print_json_line(result.prediction, result.segments)
                    rows.append((result.prediction, result.segments))
                progress.advance(task)
                progress.refresh()
        except EmovoxError as exc:
            raise fail(str(exc)) from None
    return rows, failed


def _exit_for_skipped(skipped: int, predicted: int) -> None:
    """Exit status 1 when some inputs were skipped, 2 when nothing was predicted; 0 (return) else."""
    if not skipped:
        return
    summary = f"{skipped} input(s) skipped, {predicted} predicted"
    if not predicted:
        raise fail(f"nothing predicted: {summary}")
    err_console.print(f"[yellow]{summary}[/]", highlight=False)
    raise typer.Exit(1)
