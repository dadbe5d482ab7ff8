"""`emovox train`, `emovox cv` and `emovox evaluate`: the commands that write run folders.

The work is done by emovox.runs (train, evaluate) and emovox.crossval (cv); these functions parse
options, call them and print the scores. Registered on the app in :mod:`emovox.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from emovox.cli_output import console, err_console, fail
from emovox.errors import ConfigError, EmovoxError

if TYPE_CHECKING:
    from emovox.config import RunConfig
    from emovox.fitting import TrainingInterrupted
    from emovox.runs import TrainingSplit


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
    from emovox.runs import resolve_model_path, run_evaluation
    from emovox.runtime import check_device

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
    _evaluation_notes(metrics, report)
    console.print(_scores_table(f"{Path(str(metrics['model']['path'])).name} on {data_path}", metrics))
    console.print(f"report: {report}", highlight=False)


def _evaluation_notes(metrics: dict[str, Any], report: Path) -> None:
    """Before the scores: the cross-corpus restriction, a speaker leak (or that it cannot be ruled
    out) and how many files were skipped."""
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
    from emovox.fitting import TrainingInterrupted
    from emovox.runs import is_global_zero, run_training, training_split

    worker = not is_global_zero()  # a DDP worker process re-running this command line
    flags = {"devices": devices, "strategy": strategy, "precision": precision, "accelerator": accelerator}
    extra = _train_overrides(overrides, flags)
    _check_train_options(config, out, resume)
    try:
        config_path = _train_config_path(config, resume)
        cfg = load_config(config_path, extra)
        split = training_split(cfg, source=str(config_path))
        run_dir = _train_run_folder(cfg, split, out, resume, worker=worker)
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
        raise _interrupted(exc) from None
    except EmovoxError as exc:
        raise fail(str(exc)) from None
    if metrics is not None:  # None in a DDP worker: rank 0 reports
        _train_summary(cfg, metrics, run_dir)


def _train_config_path(config: Path | None, resume: Path | None) -> Path:
    """The config to train from: --config, or RUN_DIR/config.yaml with --resume RUN_DIR."""
    if resume is None:
        assert config is not None
        return config
    config_path = resume / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{resume}: not an emovox train run folder (no config.yaml)")
    return config_path


def _train_run_folder(
    cfg: RunConfig, split: TrainingSplit, out: Path | None, resume: Path | None, *, worker: bool
) -> Path:
    """Where the run goes: RUN_DIR itself when resuming (after checking it fits), the folder rank 0
    chose for a DDP worker, else a new one under --out."""
    import os

    from emovox.runs import check_resume, train_run_dir

    if resume is not None:
        check_resume(cfg, split, resume)
        return resume
    if worker and os.environ.get("EMOVOX_RUN_DIR"):
        return Path(os.environ["EMOVOX_RUN_DIR"])
    return train_run_dir(cfg, out)


def _interrupted(exc: TrainingInterrupted) -> typer.Exit:
    """Ctrl-C during training: say where the state was saved and how to resume; exit status 130."""
    if exc.checkpoint is None:
        err_console.print("interrupted before the first training step; nothing to resume")
    else:
        err_console.print(
            f"interrupted: training state saved to {exc.checkpoint}\n"
            f"continue with: emovox train --resume {exc.run_dir}",
            highlight=False,
            soft_wrap=True,
        )
    return typer.Exit(130)


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
