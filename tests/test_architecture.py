"""The module layering of docs/architecture.md holds: no import cycle, imports only go down."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "emovox"

# docs/architecture.md, "Layers": a module may import modules of its own layer or below, never above
LAYERS: dict[str, int] = {
    **dict.fromkeys(["errors", "jsonutil", "progress", "_version", "limits", "tmpfiles"], 0),
    **dict.fromkeys(["audio", "features", "egemaps", "augment", "encoders", "degrade", "speaker_stats"], 1),
    **dict.fromkeys(["audio_stream", "vad"], 1),  # audio read for prediction, voice activity
    **dict.fromkeys(["corpora", "splits", "cache", "models", "download", "metrics", "calibration"], 2),
    **dict.fromkeys(["config", "classifier", "model_card", "bundle"], 3),
    **dict.fromkeys(
        [
            "datasets",
            "svm",
            "lightning_module",
            "fitting",
            "predict",
            "export",
            "plots",
            "ct2_source",
            "ct2_reader",
            "whisper_tokenizer",
            "whisper_verify",
            "whisper_convert",
        ],
        4,
    ),
    "trainer": 4,  # the Lightning plumbing of fitting
    **dict.fromkeys(  # the parts of predict
        ["runtime", "timeline", "long_audio", "speaker_norm", "file_batches"], 4
    ),
    **dict.fromkeys(["scoring", "reports"], 5),
    **dict.fromkeys(
        ["runs", "crossval", "job_inputs", "job_folder", "ray_jobs", "embedding_jobs", "distributed"], 6
    ),
    **dict.fromkeys(["cli", "serve", "training", "evaluation", "__init__"], 7),
    **dict.fromkeys(["cli_output", "cli_data", "cli_runs", "cli_predict"], 7),  # the commands of cli
    **dict.fromkeys(
        [
            "serve_settings",
            "serve_errors",
            "serve_security",
            "serve_uploads",
            "serve_model",
            "serve_api",
            "serve_stream",
            "serve_page",
        ],
        7,
    ),
}
FACADES = {"training", "evaluation", "__init__"}  # public import paths that only re-export


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def emovox_imports(path: Path, modules: set[str]) -> set[str]:
    """The emovox modules ``path`` imports anywhere (inside functions too), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for n in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "emovox":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "emovox":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from emovox import x: a submodule, or a name of the package __init__
                found.update(a.name if a.name in modules else "__init__" for a in node.names)
    return found - {path.stem}


def import_graph() -> dict[str, set[str]]:
    files = {p.stem: p for p in SRC.glob("*.py")}
    return {name: emovox_imports(path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_emovox() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_layer_and_imports_only_downwards() -> None:
    graph = import_graph()
    assert set(graph) == set(LAYERS), f"modules without a layer / gone: {set(graph) ^ set(LAYERS)}"
    upward = [
        f"{mod} (layer {LAYERS[mod]}) imports {dep} (layer {LAYERS[dep]})"
        for mod, deps in sorted(graph.items())
        for dep in sorted(deps)
        if LAYERS[dep] > LAYERS[mod]
    ]
    assert not upward, "\n".join(upward)


def test_facades_are_imported_by_no_emovox_module() -> None:
    graph = import_graph()
    users = {f"{mod} imports {dep}" for mod, deps in graph.items() for dep in deps & (FACADES - {"__init__"})}
    assert not users, users


def test_fitting_knows_nothing_of_scoring_reports_or_runs() -> None:
    graph = import_graph()
    above = {"scoring", "reports", "plots", "runs", "crossval"}
    for mod in ("classifier", "datasets", "svm", "lightning_module", "fitting"):
        assert not graph[mod] & above, (mod, graph[mod] & above)
    assert graph["metrics"] <= {"errors"}, graph["metrics"]


def test_fit_registry_covers_every_configurable_family() -> None:
    from emovox.config import FAMILIES
    from emovox.fitting import FITTERS

    assert set(FITTERS) == set(FAMILIES)
