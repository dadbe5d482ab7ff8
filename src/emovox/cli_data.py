"""`emovox data summary` and `emovox data fetch`: the corpus commands (emovox.corpora / emovox.download).

Registered on the `data` group in :mod:`emovox.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from emovox.cli_output import console, fail, strict_json
from emovox.errors import EmovoxError


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
        typer.echo(strict_json(summary, indent=2))
        return
    for table in _summary_tables(summary):
        console.print(table)


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
