"""The `emovox` command (typer + rich).

Each command is a thin layer: parse options, call the module that owns the concern, print. Any
:class:`~emovox.errors.EmovoxError` ends in one red line naming the input and exit status 2 (1 for
"some inputs failed" in batch commands), never a traceback. Heavy imports (torch) happen inside
commands so `emovox --help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

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


def _summary_tables(summary: dict[str, Any], *, max_skipped_reasons: int = 20) -> list[Any]:
    """Rich renderables for `data summary`: overview, emotions, speakers, skipped files by reason."""
    from collections import Counter

    from rich.table import Table

    clips = summary["clips"]
    overview = Table(title=f"{summary['name']} corpus at {summary['root']}", show_header=False)
    overview.add_column("", style="bold")
    overview.add_column("")
    overview.add_row("clips", str(clips))
    overview.add_row("speakers", str(len(summary["per_speaker"])))
    overview.add_row("genders", ", ".join(f"{g} {n}" for g, n in summary["per_gender"].items()))
    overview.add_row(
        "duration",
        f"{summary['total_duration_s'] / 60:.1f} min total, {summary['mean_duration_s']:.2f} s mean "
        f"({summary['min_duration_s']:.2f}-{summary['max_duration_s']:.2f} s)",
    )
    overview.add_row("sample rates", ", ".join(f"{sr} Hz: {n}" for sr, n in summary["sample_rates"].items()))
    overview.add_row("channels", ", ".join(f"{c}: {n}" for c, n in summary["channels"].items()))
    overview.add_row("skipped files", str(len(summary["skipped"])))
    if summary["unreadable"]:
        overview.add_row("unreadable headers", str(len(summary["unreadable"])))

    emotions = Table(title="clips per emotion")
    emotions.add_column("emotion")
    emotions.add_column("clips", justify="right")
    emotions.add_column("share", justify="right")
    for emotion, n in summary["per_emotion"].items():
        emotions.add_row(emotion, str(n), f"{100 * n / max(clips, 1):.1f}%")

    speakers = Table(title="clips per speaker")
    speakers.add_column("speaker")
    speakers.add_column("gender")
    speakers.add_column("clips", justify="right")
    for speaker, n in summary["per_speaker"].items():
        speakers.add_row(speaker, summary["speaker_gender"].get(speaker) or "unknown", str(n))

    tables: list[Any] = [overview, emotions, speakers]
    problems = [*summary["skipped"], *summary["unreadable"]]
    if problems:
        by_reason = Counter(p["reason"] for p in problems)
        example = {p["reason"]: p["path"] for p in reversed(problems)}
        skipped = Table(title="skipped files, by reason")
        skipped.add_column("reason")
        skipped.add_column("files", justify="right")
        skipped.add_column("example")
        for reason, n in by_reason.most_common(max_skipped_reasons):
            skipped.add_row(reason, str(n), example[reason])
        if len(by_reason) > max_skipped_reasons:
            skipped.caption = f"{len(by_reason) - max_skipped_reasons} more reasons; use --json for all"
        tables.append(skipped)
    return tables


@data_app.command("summary")
def data_summary(
    path: Annotated[Path, typer.Argument(help="Corpus folder or CSV manifest.", show_default=False)],
    corpus: Annotated[
        str | None,
        typer.Option("--corpus", "-c", help="Corpus layout (default: detect from file names)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Count clips per emotion and speaker, durations and sample rates; list skipped files with reasons.

    Layouts: ravdess, tess, crema-d, emodb, savee, folder (root/[speaker/]emotion/*.wav) and
    manifest (CSV with path, emotion[, speaker[, gender]]).
    """
    import json

    from emovox.corpora import load_corpus, summarize

    try:
        summary = summarize(load_corpus(path, corpus))
    except EmovoxError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for table in _summary_tables(summary):
        console.print(table)


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="Dataset to download: ravdess or tess.", show_default=False)],
    to: Annotated[Path, typer.Option("--to", help="Folder to put the corpus in (as <to>/<name>).")] = Path(
        "data"
    ),
    force: Annotated[bool, typer.Option("--force", help="Download again even if already present.")] = False,
    sha256: Annotated[
        str | None,
        typer.Option("--sha256", help="Expected SHA-256 of the archive (checked besides any published one)."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Download from this mirror instead of the official host."),
    ] = None,
) -> None:
    """Download a public corpus, verify its checksum, unpack it; resumes an interrupted download."""
    from emovox.corpora import load_corpus
    from emovox.download import fetch, get_source

    try:
        source = get_source(name, url)
        console.print(f"[bold]{source.name}[/]: {source.description}", highlight=False)
        console.print(f"licence {source.license}; cite {source.citation}", highlight=False)
        result = fetch(source, to, force=force, sha256=sha256)
        if not result.downloaded:
            console.print(f"already present at {result.path} (use --force to download again)")
            return
        if result.resumed_from:
            console.print(f"resumed from {result.resumed_from} bytes")
        if result.verified:
            console.print("[green]checksum verified[/]")
        else:
            console.print(
                f"no published checksum for {source.name}; sha256 of this download: {result.sha256} "
                "(pass it with --sha256 to verify future downloads)",
                highlight=False,
            )
        corpus = load_corpus(result.path, source.name)
    except EmovoxError as exc:
        raise fail(str(exc)) from None
    console.print(
        f"[green]{len(corpus)} clips from {len(corpus.speakers)} speakers ready at {result.path}[/]",
        highlight=False,
    )


# --------------------------------------------------------------------------- train / evaluate / cv
# (owned by emovox.runs / emovox.crossval: run folders, splits from config, fit, score, report)


def _scores_table(title: str, metrics: dict[str, Any]) -> Any:
    """Rich table: WA/UA/macro-F1, then per-emotion precision/recall/F1/support."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("emotion", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "emotion" else "right")
    for label, c in metrics["per_class"].items():
        if c["support"]:
            scores = (f"{c[k]:.3f}" for k in ("precision", "recall", "f1"))
            table.add_row(label, *scores, str(c["support"]))
    table.add_section()
    table.add_row("[bold]WA[/]", "", f"[bold]{metrics['wa']:.3f}[/]", "", str(metrics["n"]))
    table.add_row("[bold]UA[/]", "", f"[bold]{metrics['ua']:.3f}[/]", "", "")
    table.add_row("[bold]macro-F1[/]", "", "", f"[bold]{metrics['macro_f1']:.3f}[/]", "")
    return table


def _speaker_list(values: list[str] | None) -> list[str]:
    """``--speakers 01,02 --speakers 03`` -> ["01", "02", "03"]."""
    return [s.strip() for v in values or [] for s in v.split(",") if s.strip()]


@app.command("evaluate")
def evaluate(
    data_path: Annotated[
        Path, typer.Argument(help="Test corpus folder or CSV manifest.", show_default=False)
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Bundle folder, run folder (uses its model/) or 'default'.")
    ] = "default",
    corpus: Annotated[
        str | None, typer.Option("--corpus", "-c", help="Corpus layout (default: detect).")
    ] = None,
    speakers: Annotated[
        list[str] | None,
        typer.Option("--speakers", "-s", help="Test only these speakers (repeat or comma-separate: 01,02)."),
    ] = None,
    shared_emotions: Annotated[
        bool,
        typer.Option(
            "--shared-emotions",
            help="Cross-corpus: score only the emotions both the model and the data know.",
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder (default runs/eval-<time>/).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1, mps.")] = "cpu",
    plots: Annotated[
        bool,
        typer.Option(
            "--plots/--no-plots",
            help="Draw the report's figures (confusion, per speaker, examples, feature distributions).",
        ),
    ] = True,
) -> None:
    """Evaluate a saved model on a labelled test set: metrics.json, report.md, plots, predictions.csv."""
    from emovox.runs import run_evaluation

    try:
        metrics, report = run_evaluation(
            model,
            data_path,
            corpus=corpus,
            speakers=_speaker_list(speakers),
            shared_only=shared_emotions,
            device=device,
            out=out,
            plots=plots,
        )
    except EmovoxError as exc:
        raise fail(str(exc)) from None
    if metrics["shared_emotions"]:
        shared = ", ".join(metrics["shared_emotions"])
        console.print(f"cross-corpus: scored on the shared emotions only ({shared})")
    if metrics["speaker_leak"]:
        err_console.print(
            f"[bold yellow]warning:[/] test speaker(s) {', '.join(metrics['leaked_speakers'])} were in the "
            "model's training data; this score is not speaker-independent"
        )
    elif metrics["leak_check"]["status"] == "unknown":
        err_console.print(
            f"[bold yellow]warning:[/] {metrics['leak_check']['reason']}: speaker leakage cannot be ruled "
            "out; make sure none of the test speakers was used to train it",
            highlight=False,
            soft_wrap=True,
        )
    if metrics["skipped"]:
        err_console.print(f"[yellow]{len(metrics['skipped'])} file(s) skipped (see {report})[/]")
    console.print(_scores_table(f"{Path(str(metrics['model']['path'])).name} on {data_path}", metrics))
    console.print(f"report: {report}", highlight=False)


def _cv_table(res: dict[str, Any]) -> Any:
    """Rich table: one row per fold (test speakers, WA/UA/macro-F1, train time), then mean ± std."""
    from rich.table import Table

    table = Table(title=res["protocol"]["name"])
    for column in ("fold", "test speakers", "n", "WA", "UA", "macro-F1", "train s"):
        table.add_column(column, justify="left" if column in ("fold", "test speakers") else "right")
    for f in res["folds"]:
        speakers = ", ".join(f["test_speakers"])
        scores = (f"{f[k]:.3f}" for k in ("wa", "ua", "macro_f1"))
        table.add_row(f["fold"], speakers, str(f["n_test"]), *scores, f"{f['train_seconds']:.1f}")
    table.add_section()
    s = res["summary"]
    means = (f"[bold]{s[k]['mean']:.3f} ± {s[k]['std']:.3f}[/]" for k in ("wa", "ua", "macro_f1"))
    table.add_row("[bold]mean ± std[/]", "", str(res["pooled"]["n"]), *means, "")
    return table


@app.command("cv")
def cv(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config YAML (configs/*.yaml).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.epochs=5.")
    ] = None,
    folds: Annotated[
        int | None, typer.Option("--folds", "-k", help="Speaker-grouped k-fold (default: split.folds, 5).")
    ] = None,
    loso: Annotated[bool, typer.Option("--loso", help="Leave-one-speaker-out instead of k-fold.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder (default runs/cv-<name>-<time>/).")
    ] = None,
    leaky_random_split: Annotated[
        bool,
        typer.Option(
            "--leaky-random-split",
            help="Random utterance split ignoring speakers (INVALID: speakers leak; for comparison only).",
        ),
    ] = False,
) -> None:
    """Cross-validate a config speaker-independently: per-fold and mean ± std WA / UA / macro-F1.

    Protocol: speaker-grouped k-fold (default), --loso, or train-on-A / test-on-B when the config's
    split.protocol is cross_corpus (scored on the emotions both corpora share).
    """
    from emovox.config import load_config
    from emovox.crossval import cv_splits, run_cv
    from emovox.reports import LEAK_WARNING
    from emovox.runs import new_run_dir

    if folds is not None and loso:
        raise fail("--folds and --loso are alternatives; pass one")
    try:
        cfg = load_config(config, list(overrides or []))
        plan = cv_splits(
            cfg, folds=folds, loso=loso, leaky_random_split=leaky_random_split, source=str(config)
        )
        if leaky_random_split:
            err_console.print(f"[bold yellow]warning:[/] --leaky-random-split: {LEAK_WARNING}")
        run_dir = new_run_dir(out, f"cv-{cfg.name or cfg.model.family}", kind="cv")
        res, report = run_cv(cfg, plan, run_dir)
    except EmovoxError as exc:
        raise fail(str(exc)) from None
    console.print(_cv_table(res))
    if leaky_random_split:
        err_console.print(f"[bold yellow]warning:[/] {LEAK_WARNING}")
    console.print(f"report: {report}", highlight=False)


# train: emovox.runs (run_training does the work: split, fit, evaluate, report, bundle)


def _devices_value(devices: str) -> str:
    """``--devices`` as a YAML value for train.devices: ``2`` -> 2, ``auto``, ``0,1`` -> [0, 1]."""
    text = devices.strip()
    if "," in text:
        return "[" + ", ".join(part.strip() for part in text.split(",") if part.strip()) + "]"
    return text


def _train_overrides(overrides: list[str] | None, flags: dict[str, str | None]) -> list[str]:
    """``section.key=value`` overrides plus the hardware flags as ``train.<flag>=<value>``."""
    extra = list(overrides or [])
    for key, value in flags.items():
        if value is not None:
            extra.append(f"train.{key}={_devices_value(value) if key == 'devices' else value}")
    return extra


def _check_train_options(config: Path | None, out: Path | None, resume: Path | None) -> None:
    """--config, --out and --resume combinations that make no sense end here with one line."""
    if resume is not None and config is not None:
        raise fail(
            "--resume continues RUN_DIR with its own config.yaml; leave out --config "
            "(overrides such as train.epochs=40 still apply)"
        )
    if resume is not None and out is not None and out.resolve() != resume.resolve():
        raise fail("--resume writes into RUN_DIR itself; leave out --out")
    if resume is None and config is None:
        raise fail("pass --config CONFIG.yaml (e.g. configs/ravdess_crnn.yaml), or --resume RUN_DIR")


def _train_header(cfg: Any, split: Any, run_dir: Path) -> None:
    """What is about to be trained, on whom, and where it goes."""
    from rich.table import Table

    table = Table(title=f"training {cfg.name or cfg.model.family} ({cfg.model.family})", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("protocol", split.protocol)
    for part, label in (("train", "train"), ("val", f"validation ({split.validation})"), ("test", "test")):
        speakers = split.speakers(part)
        shown = ", ".join(speakers[:10]) + (f" (+{len(speakers) - 10})" if len(speakers) > 10 else "")
        table.add_row(label, f"{len(getattr(split, part))} clips, {len(speakers)} speakers: {shown or '-'}")
    t = cfg.train
    table.add_row(
        "hardware", f"accelerator {t.accelerator}, devices {t.devices}, strategy {t.strategy}, {t.precision}"
    )
    table.add_row("run folder", str(run_dir))
    console.print(table)


@app.command("train")
def train(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Run config YAML (configs/*.yaml).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.epochs=5.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder (default <out>/<name>-<time>/, out: runs).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume", help="Continue the interrupted run in this folder (its config.yaml, last.ckpt)."
        ),
    ] = None,
    devices: Annotated[
        str | None, typer.Option("--devices", help="Devices: a count (2), auto, or device ids (0,1).")
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option("--strategy", help="Lightning strategy: auto, ddp, ddp_find_unused_parameters_true."),
    ] = None,
    precision: Annotated[
        str | None, typer.Option("--precision", help="32-true (default), 16-mixed (GPU), bf16-mixed.")
    ] = None,
    accelerator: Annotated[
        str | None, typer.Option("--accelerator", help="auto (default), cpu, gpu, mps.")
    ] = None,
) -> None:
    """Train one model from a config: speaker-independent split, checkpoints, report, model bundle.

    split.protocol holdout tests on split.test_speakers, none trains on every speaker, cross_corpus
    tests on split.test_path; validation speakers come from the training speakers. Writes one run
    folder (config.yaml, checkpoints/, logs/, history.json, metrics.json, plots/, report.md, model/).
    Ctrl-C saves checkpoints/last.ckpt; --resume RUN_DIR continues it.
    """
    import os

    from emovox.config import load_config
    from emovox.errors import ConfigError
    from emovox.fitting import TrainingInterrupted
    from emovox.runs import check_resume, is_global_zero, run_training, train_run_dir, training_split

    worker = not is_global_zero()  # a DDP worker process re-running this command line
    flags = {"devices": devices, "strategy": strategy, "precision": precision, "accelerator": accelerator}
    extra = _train_overrides(overrides, flags)
    _check_train_options(config, out, resume)
    try:
        if resume is not None:
            config_path = resume / "config.yaml"
            if not config_path.is_file():
                raise ConfigError(f"{resume}: not an emovox train run folder (no config.yaml)")
        else:
            assert config is not None
            config_path = config
        cfg = load_config(config_path, extra)
        split = training_split(cfg, source=str(config_path))
        if resume is not None:
            check_resume(cfg, split, resume)
            run_dir = resume
        elif worker and os.environ.get("EMOVOX_RUN_DIR"):
            run_dir = Path(os.environ["EMOVOX_RUN_DIR"])
        else:
            run_dir = train_run_dir(cfg, out)
        if not worker:
            _train_header(cfg, split, run_dir)
        os.environ["EMOVOX_RUN_DIR"] = str(run_dir)  # DDP workers re-run this command: same folder
        try:
            metrics = run_training(
                cfg, run_dir, split=split, resume=resume is not None, source=str(config_path)
            )
        finally:
            os.environ.pop("EMOVOX_RUN_DIR", None)
    except TrainingInterrupted as exc:
        if exc.checkpoint is None:
            err_console.print("interrupted before the first training step; nothing to resume")
        else:
            err_console.print(
                f"interrupted: training state saved to {exc.checkpoint}\n"
                f"continue with: emovox train --resume {exc.run_dir}",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(130) from None
    except EmovoxError as exc:
        raise fail(str(exc)) from None
    if metrics is not None:  # None in a DDP worker: rank 0 reports
        _train_summary(cfg, metrics, run_dir)


def _train_summary(cfg: Any, metrics: dict[str, Any], run_dir: Path) -> None:
    """What a finished training run scored and where its files are."""
    if metrics["skipped"]:
        err_console.print(
            f"[yellow]{len(metrics['skipped'])} file(s) skipped (see {run_dir / 'report.md'})[/]"
        )
    training = metrics["training"]
    if "confusion" in metrics:
        title = f"{cfg.name or cfg.model.family}: test speakers {', '.join(training['test_speakers'])}"
        console.print(_scores_table(title, metrics))
    elif metrics.get("validation"):
        console.print(
            _scores_table(
                "validation speakers (optimistic: they chose the checkpoint)", metrics["validation"]
            )
        )
        err_console.print("[yellow]no test speakers (split.protocol: none): no speaker-independent score[/]")
    if training["bundle"]:
        console.print(f"model bundle: {training['bundle']}", highlight=False)
    else:
        console.print(
            f"no model bundle: the {cfg.model.family} family is not bundled (bundles hold safetensors "
            "weights, never pickles); its scores and report are in the run folder",
            highlight=False,
        )
    console.print(f"report: {run_dir / 'report.md'}", highlight=False)
    console.print(f"run folder: {run_dir}", highlight=False)


# --------------------------------------------------------------------------- predict / export
# (owned by emovox.predict / emovox.bundle / emovox.export)

PREDICT_CHUNK = 32  # files decoded and classified together: bounded memory, --json streams per chunk


def _expand_audio_inputs(inputs: list[Path]) -> tuple[list[Path], list[str], list[Path]]:
    """Files to predict on: files as given, folders walked recursively (sorted) for audio files.

    Returns ``(files, problems, empty_folders)``: ``problems`` are one-line messages for inputs
    that do not exist.
    """
    from emovox.audio import is_audio_file

    files: list[Path] = []
    problems: list[str] = []
    empty: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if is_audio_file(p))
            if not found:
                empty.append(item)
            files.extend(found)
        elif item.exists():
            files.append(item)
        else:
            problems.append(f"{item}: file not found")
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


def _top_k_cell(probabilities: dict[str, float], k: int) -> str:
    return ", ".join(f"{label} {p:.2f}" for label, p in list(probabilities.items())[:k])


def _prediction_tables(rows: list[tuple[Any, list[Any] | None]], title: str, k: int) -> list[Any]:
    """Rich tables: one row per file; with --timeline, one table of segments per file."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("file", overflow="fold")
    table.add_column("emotion")
    table.add_column("confidence", justify="right")
    table.add_column(f"top {k}")
    for p, _ in rows:
        table.add_row(p.path, f"[bold]{p.emotion}[/]", f"{p.confidence:.2f}", _top_k_cell(p.probabilities, k))
    out: list[Any] = [table]
    for p, segments in rows:
        if segments is None:
            continue
        if not segments:
            out.append(f"timeline of {p.path}: no speech found")
            continue
        seg = Table(title=f"timeline of {p.path}")
        for column, justify in (("start (s)", "right"), ("end (s)", "right"), ("emotion", "left")):
            seg.add_column(column, justify=justify)  # type: ignore[arg-type]
        seg.add_column("confidence", justify="right")
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


@app.command("predict")
def predict(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Audio files and/or folders (searched for audio files).", show_default=False),
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
            "--top-k", "-k", min=1, help="The K most likely emotions (table: 3 by default, JSON: all)"
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option("--backend", help="torch, or onnx (after `emovox export BUNDLE`).")
    ] = "torch",
    device: Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1, mps.")] = "cpu",
) -> None:
    """Predict the emotion of speech recordings: a table, or JSON lines with --json.

    Files that cannot be used are reported on stderr and skipped (exit status 1); a missing or
    broken model, or nothing to work on, ends with exit status 2.
    """
    import json

    from emovox.audio import SAMPLE_RATE
    from emovox.predict import Recognizer
    from emovox.progress import progress_bar

    if backend not in ("torch", "onnx"):
        raise fail(f"--backend: unknown backend {backend!r} (choose torch or onnx)")
    files, problems, empty = _expand_audio_inputs(inputs)
    for folder in empty:
        err_console.print(f"[yellow]warning:[/] {folder}: no audio files in this folder", highlight=False)
    if not files and not problems:
        raise fail("no audio files to predict on in " + ", ".join(str(p) for p in inputs))
    for problem in problems:
        err_console.print(f"[bold red]skipped:[/] {problem}", highlight=False, soft_wrap=True)
    if not files:
        raise typer.Exit(1)
    try:
        recognizer = Recognizer.load(model, backend=backend, device=device)  # type: ignore[arg-type]
    except EmovoxError as exc:
        raise fail(str(exc)) from None
    if timeline and recognizer.sample_rate != SAMPLE_RATE:
        raise fail(f"--timeline needs a {SAMPLE_RATE} Hz model; {model} uses {recognizer.sample_rate} Hz")

    failed = len(problems)
    rows: list[tuple[Any, list[Any] | None]] = []
    progress = progress_bar(enabled=len(files) >= 2 and err_console.is_terminal, console=err_console)

    def skip(message: str) -> None:
        nonlocal failed
        failed += 1
        progress.console.print(f"[bold red]skipped:[/] {message}", highlight=False, soft_wrap=True)

    with progress:
        task = progress.add_task("predicting", total=len(files))
        for start in range(0, len(files), PREDICT_CHUNK):
            waves, durations, paths, decoded = [], [], [], []
            for path in files[start : start + PREDICT_CHUNK]:
                try:
                    wave, _ = recognizer.decode(path)
                    waves.append(recognizer.preprocess(wave, name=str(path)))
                except EmovoxError as exc:
                    skip(str(exc))
                    progress.advance(task)
                    continue
                decoded.append(wave)
                durations.append(wave.size / recognizer.sample_rate)
                paths.append(str(path))
            predictions = recognizer.predict_waves(waves, durations=durations, paths=paths, top_k=top_k)
            for prediction, wave in zip(predictions, decoded, strict=True):
                segments = None
                if timeline:
                    try:
                        segments = recognizer.timeline(wave, sr=recognizer.sample_rate)
                    except EmovoxError as exc:
                        skip(f"{prediction.path}: timeline failed ({exc})")
                        progress.advance(task)
                        continue
                if as_json:
                    sys.stdout.write(json.dumps(_prediction_record(prediction, segments)) + "\n")
                    sys.stdout.flush()
                rows.append((prediction, segments))
                progress.advance(task)

    if not as_json and rows:
        title = f"{Path(str(recognizer.meta['path'])).name} ({backend})"
        for renderable in _prediction_tables(rows, title, top_k or 3):
            console.print(renderable, highlight=False)
    if failed:
        err_console.print(f"[yellow]{failed} input(s) skipped, {len(rows)} predicted[/]", highlight=False)
        raise typer.Exit(1)


@app.command("export")
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


@app.command("serve")
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
