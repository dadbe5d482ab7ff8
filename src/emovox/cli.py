"""The `emovox` command (typer + rich).

Each command is a thin layer: parse options, call the module that owns the concern, print. Any
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
import typer.core
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

    from emovox.audio import AUDIO_EXTENSIONS

    clips = summary["clips"]
    # files with a non-audio extension (README.md, a notes.txt) are not skipped audio: counted only
    other = [p for p in summary["skipped"] if Path(p["path"]).suffix.lower() not in AUDIO_EXTENSIONS]
    skipped_audio = [p for p in summary["skipped"] if Path(p["path"]).suffix.lower() in AUDIO_EXTENSIONS]
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
    overview.add_row("skipped audio files", str(len(skipped_audio)))
    if other:
        overview.add_row("other files", f"{len(other)} (not audio, ignored)")
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
    problems = [*skipped_audio, *summary["unreadable"]]
    if problems:
        by_reason = Counter(p["reason"] for p in problems)
        example = {p["reason"]: p["path"] for p in reversed(problems)}
        skipped = Table(title="skipped files, by reason")
        skipped.add_column("reason")
        skipped.add_column("files", justify="right", no_wrap=True)
        skipped.add_column("example", overflow="fold")
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
    manifest (CSV with path, emotion[, speaker[, gender]]). Files that are not audio (README.md,
    notes) are counted, not listed.
    """
    from emovox.corpora import load_corpus, summarize

    try:
        summary = summarize(load_corpus(path, corpus))
    except EmovoxError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(_strict_json(summary, indent=2))
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
    from emovox.bundle import read_meta
    from emovox.predict import check_device
    from emovox.runs import resolve_model_path, run_evaluation

    try:
        check_device(device)  # a --device this machine lacks, or a bad --model, fail before the scan
        read_meta(resolve_model_path(model))
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


def _strict_json(value: Any, indent: int | None = None) -> str:
    """Strict JSON (one line unless ``indent``): non-finite floats (NaN, inf), which JSON has no
    spelling for, become null, so every consumer can parse it."""
    import json
    import math

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False, indent=indent)


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


class _PredictCommand(typer.core.TyperCommand):
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


@app.command("predict", cls=_PredictCommand)
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
            "Standardises the model's statistics over each group (speaker-normalised models).",
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from emovox.audio import SAMPLE_RATE
    from emovox.predict import Recognizer

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
    files, problems, empty = _expand_audio_inputs([Path(item) for item in inputs])
    for folder in empty:
        err_console.print(f"[yellow]warning:[/] {folder}: no audio files in this folder", highlight=False)
    if not files and not problems:
        raise fail("no audio files to predict on in " + ", ".join(str(p) for p in inputs))
    for problem in problems:
        err_console.print(f"[bold red]skipped:[/] {problem}", highlight=False, soft_wrap=True)
    if not files:
        raise fail(f"nothing to predict: {len(problems)} input(s) skipped, 0 predicted")
    try:
        recognizer = Recognizer.load(model, backend=backend, device=device, threads=threads)  # type: ignore[arg-type]
    except EmovoxError as exc:
        raise fail(str(exc)) from None
    if timeline and recognizer.sample_rate != SAMPLE_RATE:
        raise fail(f"--timeline needs a {SAMPLE_RATE} Hz model; {model} uses {recognizer.sample_rate} Hz")
    k = min(top_k or 3, len(recognizer.labels))  # no "top 20" column for 8 emotions

    failed = len(problems)
    rows: list[tuple[Any, list[Any] | None]] = []
    if normalize is not None:
        if timeline:
            raise fail("--normalize and --timeline do not go together yet: normalise whole files")
        try:
            predictions = recognizer.predict([str(f) for f in files], normalize=normalize)
        except EmovoxError as exc:
            raise fail(str(exc)) from None
        for prediction in predictions:
            if as_json:
                sys.stdout.write(_strict_json(_prediction_record(prediction, None)) + "\n")
            rows.append((prediction, None))
        if not as_json:
            title = f"{Path(str(recognizer.meta['path'])).name} ({backend}, normalised per {normalize})"
            for renderable in _prediction_tables(rows, title, k):
                console.print(renderable, highlight=False)
        if failed:
            err_console.print(f"[yellow]{failed} input(s) skipped, {len(rows)} predicted[/]", highlight=False)
            raise typer.Exit(1)
        return
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
            files, top_k=top_k and min(top_k, len(recognizer.labels)), timeline=timeline, quiet_decoder=True
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
                        sys.stdout.write(
                            _strict_json(_prediction_record(result.prediction, result.segments)) + "\n"
                        )
                        sys.stdout.flush()
                    rows.append((result.prediction, result.segments))
                progress.advance(task)
                progress.refresh()
        except EmovoxError as exc:
            raise fail(str(exc)) from None

    if not as_json and rows:
        title = f"{Path(str(recognizer.meta['path'])).name} ({backend})"
        for renderable in _prediction_tables(rows, title, k):
            console.print(renderable, highlight=False)
    if failed:
        summary = f"{failed} input(s) skipped, {len(rows)} predicted"
        if not rows:
            raise fail(f"nothing predicted: {summary}")
        err_console.print(f"[yellow]{summary}[/]", highlight=False)
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
