"""ONNX export: waveform -> probabilities in onnxruntime alone, parity with PyTorch on real clips.

Two families are exported once each (module fixtures, through the CLI): an ``mlp`` over pooled
MFCC statistics into its bundle, and a ``cnn2d`` over log-mel to a separate file with --onnx.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from emovox.audio import load_audio
from emovox.bundle import ONNX_FILE, load_bundle, read_meta, save_bundle, sha256_file
from emovox.cli import app
from emovox.errors import BundleError
from emovox.export import ExportError, _probability_model, verify_onnx
from emovox.features import FeatureConfig
from emovox.models import EmotionNet
from emovox.predict import Recognizer

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.flac"))
LABELS = ["angry", "calm", "happy", "sad"]
CARD = {"data": "none (random weights, for tests)", "protocol": "none", "licence": "CC0-1.0"}
ATOL = 1e-4

FAMILIES = {
    "mlp": (FeatureConfig(sets=("mfcc",), n_mfcc=20, stats=("mean", "std", "max")), {"hidden": [16]}),
    "cnn2d": (FeatureConfig(sets=("logmel",), n_mels=32), {"channels": [4, 8]}),
    # GRU: torch's dynamo exporter cannot decompose aten.gru, so this one takes the TorchScript path
    "crnn": (FeatureConfig(sets=("logmel",), n_mels=32), {"channels": [4, 8], "rnn": "gru", "hidden": 8}),
}


def make_bundle(root: Path, family: str) -> Path:
    torch.manual_seed(1)
    cfg, params = FAMILIES[family]
    net = EmotionNet(cfg, family, params, LABELS)
    net.set_normalization(torch.randn(net.input_dim), torch.rand(net.input_dim) + 0.5)
    return save_bundle(net, root / family, metrics={"ua": 0.25}, card=CARD)


def export_cli(*args: str) -> tuple[str, float]:
    result = CliRunner().invoke(app, ["export", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    match = re.search(r"max \|onnxruntime - PyTorch\| = ([0-9.e+-]+) \(allowed 0\.0001\)", result.stdout)
    assert match and "8 example clips" in result.stdout, result.stdout
    return result.stdout, float(match.group(1))


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlp bundle with model.onnx added by `emovox export BUNDLE`."""
    path = make_bundle(tmp_path_factory.mktemp("export"), "mlp")
    out, diff = export_cli(str(path))
    assert f"wrote {path / ONNX_FILE} (opset 18" in out and diff <= ATOL
    return path


@pytest.fixture(scope="module")
def cnn2d_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle, exported file) for a cnn2d exported with `emovox export BUNDLE --onnx OUT`."""
    root = tmp_path_factory.mktemp("export")
    path = make_bundle(root, "cnn2d")
    target = root / "out" / "cnn2d.onnx"
    out, diff = export_cli(str(path), "--onnx", str(target))
    assert f"wrote {target}" in out and diff <= ATOL
    return path, target


def ort_probabilities(onnx_path: Path, waves: list[np.ndarray]) -> np.ndarray:
    """onnxruntime alone, as docs/bundles.md shows it: one padded batch in, probabilities out."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    lengths = np.array([w.size for w in waves], dtype=np.int64)
    batch = np.zeros((len(waves), lengths.max()), dtype=np.float32)
    for i, w in enumerate(waves):
        batch[i, : w.size] = w
    return session.run(["probabilities"], {"wave": batch, "lengths": lengths})[0]


def torch_probabilities(bundle: Path, waves: list[np.ndarray]) -> np.ndarray:
    net, _ = load_bundle(bundle)
    with torch.inference_mode():
        return np.stack(
            [
                torch.softmax(net(torch.from_numpy(w)[None], torch.tensor([w.size])), -1)[0].numpy()
                for w in waves
            ]
        )


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [load_audio(p) for p in EXAMPLES]


@pytest.mark.parametrize("family", ["mlp", "cnn2d"])
def test_onnxruntime_matches_pytorch_on_real_clips(
    family: str, mlp_bundle: Path, cnn2d_onnx: tuple[Path, Path], clips: list[np.ndarray]
) -> None:
    bundle, onnx_path = (mlp_bundle, mlp_bundle / ONNX_FILE) if family == "mlp" else cnn2d_onnx
    expected = torch_probabilities(bundle, clips)
    batched = ort_probabilities(onnx_path, clips)  # padded batch of 8 different lengths
    assert np.abs(batched - expected).max() <= ATOL
    for wave, row in zip(clips[:3], expected, strict=False):  # and one at a time
        assert np.abs(ort_probabilities(onnx_path, [wave])[0] - row).max() <= ATOL
    # a 0.6 s clip and a 7 s one: the time axis is really dynamic, not fixed by the trace
    odd = [clips[0][8000:17600], np.concatenate([clips[1], clips[2]])]
    assert np.abs(ort_probabilities(onnx_path, odd) - torch_probabilities(bundle, odd)).max() <= ATOL
    assert np.allclose(batched.sum(1), 1, atol=1e-5)


def test_gru_crnn_exports_and_matches_pytorch(tmp_path: Path, clips: list[np.ndarray]) -> None:
    """A bidirectional-GRU crnn (the shipped crnn configs) exports, dynamic in batch and time."""
    path = make_bundle(tmp_path, "crnn")
    out, diff = export_cli(str(path))
    assert f"wrote {path / ONNX_FILE}" in out and diff <= ATOL
    onnx_path = path / ONNX_FILE
    assert np.abs(ort_probabilities(onnx_path, clips) - torch_probabilities(path, clips)).max() <= ATOL
    odd = [clips[0][8000:17600], np.concatenate([clips[1], clips[2]])]
    assert np.abs(ort_probabilities(onnx_path, odd) - torch_probabilities(path, odd)).max() <= ATOL


def test_export_into_bundle_is_registered(mlp_bundle: Path) -> None:
    meta = read_meta(mlp_bundle)
    assert meta["sha256"][ONNX_FILE] == sha256_file(mlp_bundle / ONNX_FILE)
    assert meta["onnx"]["opset"] == 18 and meta["onnx"]["max_abs_diff"] <= ATOL
    assert not list(mlp_bundle.glob(".*tmp*"))  # no temporary file left behind
    load_bundle(mlp_bundle)  # the torch side still loads


def test_export_to_a_file_leaves_the_bundle_alone(cnn2d_onnx: tuple[Path, Path]) -> None:
    bundle, target = cnn2d_onnx
    assert target.is_file() and not (bundle / ONNX_FILE).exists()
    assert ONNX_FILE not in read_meta(bundle)["sha256"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["cnn2d.onnx"]


def test_recognizer_onnx_backend_matches_torch(mlp_bundle: Path) -> None:
    torch_rec = Recognizer.load(mlp_bundle)
    onnx_rec = Recognizer.load(mlp_bundle, backend="onnx", threads=1)
    assert onnx_rec.backend == "onnx" and onnx_rec.net is None
    a = torch_rec.predict(list(EXAMPLES))
    b = onnx_rec.predict(list(EXAMPLES))
    for x, y in zip(a, b, strict=True):  # type: ignore[arg-type]
        assert x.emotion == y.emotion
        for label in LABELS:
            assert abs(x.probabilities[label] - y.probabilities[label]) <= ATOL
    segments = onnx_rec.timeline(EXAMPLES[0])
    assert len(segments) == 1 and segments[0].emotion in LABELS


def test_cli_predict_with_onnx_backend(mlp_bundle: Path) -> None:
    result = CliRunner().invoke(
        app, ["predict", str(EXAMPLES[0]), "--model", str(mlp_bundle), "--backend", "onnx", "--json"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    expected = Recognizer.load(mlp_bundle).predict(EXAMPLES[0])
    assert record["emotion"] == expected.emotion
    assert record["confidence"] == pytest.approx(expected.confidence, abs=ATOL)


def test_tampered_onnx_file_is_refused(mlp_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(mlp_bundle, copy)
    with open(copy / ONNX_FILE, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(BundleError, match=r"model\.onnx: checksum mismatch"):
        Recognizer.load(copy, backend="onnx")
    (copy / ONNX_FILE).unlink()
    with pytest.raises(BundleError, match=r"has no model\.onnx; run `emovox export"):
        Recognizer.load(copy, backend="onnx")


def test_verification_rejects_an_export_that_differs(mlp_bundle: Path, clips: list[np.ndarray]) -> None:
    net, _ = load_bundle(mlp_bundle)
    with torch.no_grad():
        net.backbone.net[-1].bias[0] += 0.5  # PyTorch now favours "angry" more than the exported file
    with pytest.raises(ExportError, match=r"differs from PyTorch by up to .*not faithful"):
        verify_onnx(_probability_model(net), mlp_bundle / ONNX_FILE, clips[:2])


def test_verification_fails_on_nan(mlp_bundle: Path, clips: list[np.ndarray]) -> None:
    """max(worst, nan) is worst: a model that outputs NaN must not pass as a difference of 0."""
    net, _ = load_bundle(mlp_bundle)
    with torch.no_grad():
        net.mean[0] = float("nan")  # NaN features from a broken normaliser: PyTorch predicts NaN
    with pytest.raises(
        ExportError, match=r"PyTorch gives non-finite probabilities \(NaN or inf\) on check clip 1"
    ):
        verify_onnx(_probability_model(net), mlp_bundle / ONNX_FILE, clips[:2])


def test_cli_export_errors_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "model bundle not found" in result.stderr
    assert "Traceback" not in result.output


def test_docs_onnxruntime_snippet_runs(
    mlp_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The onnxruntime-only example in docs/bundles.md works and agrees with emovox."""
    text = (REPO / "docs" / "bundles.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "onnxruntime as ort" in b)
    monkeypatch.chdir(REPO)
    namespace: dict[str, object] = {}
    exec(snippet.replace("runs/my-run/model", str(mlp_bundle)), namespace)
    printed = capsys.readouterr().out.splitlines()
    clips = namespace["clips"]
    expected = Recognizer.load(mlp_bundle).predict_proba(clips)  # type: ignore[arg-type]
    assert np.abs(namespace["probabilities"] - expected).max() <= ATOL  # type: ignore[operator]
    assert [line.split()[0] for line in printed] == [LABELS[int(i)] for i in expected.argmax(1)]
