"""ONNX export of a whole :class:`~emovox.models.EmotionNet`: waveform -> probabilities.

The exported graph takes ``wave`` (float32 ``[batch, time]``, zero padded, 16 kHz) and
``lengths`` (int64 ``[batch]``, samples) and returns ``probabilities`` (``[batch, labels]``, softmax
included), with dynamic batch and time axes, so onnxruntime alone reproduces the PyTorch model:
feature extraction, normaliser and backbone. Every export is verified: onnxruntime and PyTorch
must agree to ``atol`` (1e-4 by default) on real or synthetic clips, padded batch included, or
:class:`ExportError` is raised and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emovox import tmpfiles
from emovox.bundle import ONNX_FILE, load_bundle, sha256_file, update_config
from emovox.errors import AudioError, EmovoxError

if TYPE_CHECKING:
    import torch

    from emovox.models import EmotionNet

# 18 is the oldest opset torch's exporter implements; asking for less makes it convert afterwards.
DEFAULT_OPSET = 18
INPUT_NAMES = ("wave", "lengths")
OUTPUT_NAME = "probabilities"
# Length (samples) of the two clips the graph is traced with. Short, because torch.export unrolls
# recurrent layers over the example's frames while tracing (a 3 s example makes a crnn export take
# minutes); the axes stay dynamic and every export is verified on whole clips afterwards.
TRACE_SAMPLES = (4800, 4000)
#: The repository's example clips (RAVDESS, 16 kHz FLAC) used to verify exports when present.
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


class ExportError(EmovoxError):
    """The model could not be exported to ONNX, or the export does not reproduce PyTorch."""


@dataclass(frozen=True)
class ExportResult:
    """Where the ONNX model went and how closely onnxruntime matched PyTorch on the check clips."""

    path: Path
    opset: int
    """The opset of the written model (what the exporter produced, not only what was asked)."""
    max_abs_diff: float
    n_check_clips: int


def _probability_model(net: EmotionNet) -> torch.nn.Module:
    import torch

    class Probabilities(torch.nn.Module):
        """EmotionNet followed by softmax, the graph that is exported."""

        def __init__(self, inner: EmotionNet) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.inner(wave, lengths), dim=-1)

    return Probabilities(net).eval()


def synthetic_clips(sr: int = 16_000) -> list[np.ndarray]:
    """Three speech-like check clips of different lengths (harmonic voice, vibrato, syllables, noise)."""
    rng = np.random.default_rng(0)
    clips = []
    for seconds, f0 in ((3.0, 120.0), (1.7, 210.0), (0.9, 160.0)):
        t = np.arange(int(seconds * sr)) / sr
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / sr
        voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
        envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
        clips.append((0.3 * voiced * envelope + 0.005 * rng.standard_normal(t.size)).astype(np.float32))
    return clips


def default_check_waves() -> tuple[list[np.ndarray], str]:
    """Clips to verify an export on, and what they are: the repository's ``examples/*.flac`` (real
    speech) when this is a source checkout, else :func:`synthetic_clips`."""
    from emovox.audio import load_audio

    paths = sorted(EXAMPLES_DIR.glob("*.flac")) if EXAMPLES_DIR.is_dir() else []
    waves = []
    for path in paths:
        try:
            waves.append(load_audio(path))
        except AudioError:
            continue
    if waves:
        return waves, f"{len(waves)} example clips ({EXAMPLES_DIR}/*.flac)"
    clips = synthetic_clips()
    return clips, f"{len(clips)} synthetic speech-like clips"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence torch.onnx's progress prints, log lines and warnings (they are not the user's business;
    a failure still raises)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _written_opset(path: Path, asked: int) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), asked)


def _pad(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([w.size for w in waves], dtype=np.int64)
    batch = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
    for i, w in enumerate(waves):
        batch[i, : w.size] = w
    return batch, lengths


def _export_dynamo(model: torch.nn.Module, args: tuple[Any, ...], path: Path, opset: int) -> None:
    """torch.export-based exporter, dynamic batch and time axes."""
    import torch

    batch, time = torch.export.Dim("batch", min=1), torch.export.Dim("time", min=1024)
    with _quiet_exporter():
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"wave": {0: batch, 1: time}, "lengths": {0: batch}},
            external_data=False,
            verbose=False,
        )
        program.save(str(path))


def _export_torchscript(model: torch.nn.Module, args: tuple[Any, ...], path: Path, opset: int) -> None:
    """The TorchScript (tracing) exporter, dynamic batch and time axes: the fallback."""
    import torch

    with _quiet_exporter():
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                "wave": {0: "batch", 1: "time"},
                "lengths": {0: "batch"},
                OUTPUT_NAME: {0: "batch"},
            },
        )


def export_onnx(
    net: EmotionNet,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    check_waves: Sequence[np.ndarray] | None = None,
    atol: float = 1e-4,
) -> ExportResult:
    """Export ``net`` (waveform + lengths -> probabilities) to ``out`` and verify it with onnxruntime.

    ``check_waves`` are 16 kHz clips to compare on (default: :func:`synthetic_clips`); each is run
    alone and all together as one padded batch. The file is written beside ``out`` and moved into
    place only after it passed the check. ``net`` is moved to the CPU and put in eval mode.
    """
    import torch

    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise ExportError("ONNX export needs the onnxscript package: pip install onnxscript") from None
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{out}: cannot create its folder ({exc.strerror or exc})") from None
    clips = list(check_waves) if check_waves else synthetic_clips()
    model = _probability_model(net.cpu().eval())
    tmpfiles.remove_stale(out.parent, f".{out.name}.tmp-*")  # left by an export that was killed
    tmp = out.with_name(tmpfiles.temp_name(out.name))
    try:
        trace = synthetic_clips()[:2]
        example = _pad([clip[:n] for clip, n in zip(trace, TRACE_SAMPLES, strict=True)])
        args = (torch.from_numpy(example[0]), torch.from_numpy(example[1]))
        try:
            _export_dynamo(model, args, tmp, opset)
        except OSError as exc:
            raise ExportError(f"{out}: cannot write the ONNX model ({exc.strerror or exc})") from None
        except Exception as exc:  # the exporter raises many internal error types
            # torch 2.13's dynamo exporter cannot decompose aten.gru (GRU crnn/lstm models); the
            # TorchScript exporter maps it to ONNX's GRU op. The result is verified the same way.
            try:
                _export_torchscript(model, args, tmp, opset)
            except OSError as exc2:
                raise ExportError(f"{out}: cannot write the ONNX model ({exc2.strerror or exc2})") from None
            except Exception:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ExportError(f"ONNX export of the {net.family} model failed: {first}") from exc
        diff = verify_onnx(model, tmp, clips, atol=atol)
        written = _written_opset(tmp, opset)
        try:
            os.replace(tmp, out)
        except OSError as exc:
            raise ExportError(f"{out}: cannot write the ONNX model ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(path=out, opset=written, max_abs_diff=diff, n_check_clips=len(clips))


def verify_onnx(
    model: torch.nn.Module, onnx_path: Path, clips: Sequence[np.ndarray], *, atol: float = 1e-4
) -> float:
    """Max abs difference between onnxruntime and PyTorch probabilities over ``clips`` (singly and
    as a padded batch); raises :class:`ExportError` if it exceeds ``atol``."""
    import onnxruntime as ort
    import torch

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{onnx_path.name}: onnxruntime cannot load the exported model ({first})") from exc
    cases = [(f"check clip {i + 1}", *_pad([c])) for i, c in enumerate(clips)]
    if len(clips) > 1:
        cases.append((f"the {len(clips)} check clips as one padded batch", *_pad(clips)))
    worst = 0.0
    for what, batch, lengths in cases:
        with torch.inference_mode():
            expected = model(torch.from_numpy(batch), torch.from_numpy(lengths)).numpy()
        got = session.run([OUTPUT_NAME], {"wave": batch, "lengths": lengths})[0]
        # NaN never compares greater, so max() would silently drop it: non-finite output is a failure
        for name, out in (("PyTorch", expected), ("onnxruntime", got)):
            if not np.isfinite(out).all():
                raise ExportError(
                    f"{onnx_path.name}: {name} gives non-finite probabilities (NaN or inf) on {what}; "
                    "the model is broken and the export was discarded"
                )
        if got.shape != expected.shape:
            raise ExportError(
                f"{onnx_path.name}: onnxruntime output has shape {got.shape}, PyTorch {expected.shape} "
                f"on {what}; the export was discarded"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
    if not worst <= atol:
        raise ExportError(
            f"{onnx_path.name}: onnxruntime output differs from PyTorch by up to {worst:.2e} "
            f"(allowed {atol:g}); the export is not faithful and was discarded"
        )
    return worst


def export_bundle(
    bundle: str | Path,
    out: str | Path | None = None,
    *,
    into_bundle: bool = True,
    opset: int = DEFAULT_OPSET,
    check_waves: Sequence[np.ndarray] | None = None,
    atol: float = 1e-4,
) -> list[ExportResult]:
    """Export a bundle's model to ``out`` and/or into the bundle as ``model.onnx``.

    Storing it in the bundle records its sha256 in config.json, which lets
    ``Recognizer.load(bundle, backend="onnx")`` run without PyTorch model code.
    """
    if out is None and not into_bundle:
        raise ExportError("nothing to do: give an output path or store the model in the bundle")
    net, meta = load_bundle(bundle)
    bundle_dir = Path(meta["path"])
    results = []
    if into_bundle:
        result = export_onnx(net, bundle_dir / ONNX_FILE, opset=opset, check_waves=check_waves, atol=atol)
        try:
            update_config(
                bundle_dir,
                {
                    "sha256": {ONNX_FILE: sha256_file(result.path)},
                    "onnx": {"file": ONNX_FILE, "opset": result.opset, "max_abs_diff": result.max_abs_diff},
                },
            )
        except OSError as exc:
            raise ExportError(f"{bundle_dir}: cannot update config.json ({exc.strerror or exc})") from None
        results.append(result)
    if out is not None:
        if results:
            try:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(results[0].path, out)
            except OSError as exc:
                raise ExportError(f"{out}: cannot write the ONNX model ({exc.strerror or exc})") from None
            first = results[0]
            results.append(ExportResult(Path(out), first.opset, first.max_abs_diff, first.n_check_clips))
        else:
            results.append(export_onnx(net, out, opset=opset, check_waves=check_waves, atol=atol))
    return results


__all__ = [
    "ExportError",
    "ExportResult",
    "default_check_waves",
    "export_bundle",
    "export_onnx",
    "synthetic_clips",
    "verify_onnx",
]
