"""The `emovox` command as a whole: start-up imports, help text, data summary output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emovox.cli import app

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "matplotlib", "transformers", "ray", "librosa", "sklearn", "onnxruntime")


def test_importing_the_cli_imports_no_heavy_library() -> None:
    """`emovox --help` took 6-8 s when the CLI module pulled in torch & co; commands import them."""
    code = f"import sys, emovox.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom emovox.cli import app\n"
        "helps = (['--help'], ['predict', '--help'], ['train', '--help'], ['data', 'summary', '--help'])\n"
        "for args in helps:\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


COMMANDS = [
    [],
    ["predict"],
    ["evaluate"],
    ["train"],
    ["cv"],
    ["export"],
    ["serve"],
    ["data", "summary"],
    ["data", "fetch"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "emovox")
def test_help_has_no_bool_placeholders_and_no_broken_sentences(command: list[str]) -> None:
    """Help showed `<bool>` beside every flag and kept the docstrings' line breaks mid-sentence."""
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    lines = [line.strip() for line in result.output.splitlines()]
    for prose, following in zip(lines, lines[1:], strict=False):
        if prose and following and not prose.startswith(("│", "╭", "╰", "Usage")):
            # a line of prose is only followed by more prose when it is full (the terminal wrapped it)
            assert len(prose) > 50, (prose, following)


def test_help_reflows_paragraphs_and_keeps_square_brackets() -> None:
    result = CliRunner().invoke(app, ["data", "summary", "--help"], env={"COLUMNS": "200"})
    assert "folder (root/[speaker/]emotion/*.wav) and manifest" in result.output  # was eaten as markup
    result = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert (
        "Exit status: 0 when every input was predicted, 1 when some were skipped, 2 when nothing"
        in result.output
    )


def test_data_summary_counts_files_that_are_not_audio_without_listing_them() -> None:
    """examples/README.md was listed as a skipped audio file."""
    result = CliRunner().invoke(app, ["data", "summary", str(REPO / "examples")], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "README.md" not in result.output and "skipped files, by reason" not in result.output
    assert "other files" in result.output and "1 (not audio, ignored)" in result.output
    assert "skipped audio files │ 0" in result.output
    data = json.loads(CliRunner().invoke(app, ["data", "summary", str(REPO / "examples"), "--json"]).stdout)
    assert data["clips"] == 8  # --json still lists everything, with reasons
