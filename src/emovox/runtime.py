"""Where inference runs: device checks, thread counts, torch thread scoping, onnxruntime sessions.

What :class:`emovox.predict.Recognizer` (and ``emovox evaluate``'s ``--device``) rely on to run a
model on this machine: :func:`check_device` refuses a device that is not here before anything is
loaded, :func:`default_threads` picks the inference threads for a model of a given size,
:func:`torch_threads` scopes torch's intra-op threads to one call, :func:`onnx_session` opens a
bundle's ``model.onnx`` tuned for it, and :func:`load_torch` / :func:`load_onnx` bring a bundle onto
a device for either backend. Torch and onnxruntime are imported only inside.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emovox.bundle import ONNX_FILE, WEIGHTS_FILE, load_bundle, read_meta, verify_checksum
from emovox.errors import BundleError, ConfigError

#: Models whose weights are at most this many bytes run on one thread by default (see
#: :func:`default_threads`); every shipped model is far below it.
SMALL_MODEL_BYTES = 20_000_000


def default_threads(model_bytes: int) -> int:
    """Inference threads when none are asked for: 1 for a small model (weights up to
    :data:`SMALL_MODEL_BYTES`, every shipped one), else the cores, at most 4.

    A small network on a clip of a few seconds gains little from more threads and loses a lot
    when the cores are busy (measured on a loaded 2-core machine: 7 ms with one thread against
    124-189 ms with two for the shipped cnn1d); ``--threads`` / ``threads=`` override it.
    """
    if model_bytes <= SMALL_MODEL_BYTES:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads, restoring the previous setting afterwards."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if before != threads:
            torch.set_num_threads(before)


def check_device(device: Any, backend: str = "torch") -> None:
    """Raise :class:`ConfigError` unless ``device`` names a device this machine has for ``backend``."""
    if not isinstance(device, str) or not device.strip():
        raise ConfigError(f"device: expected a device name such as cpu, cuda, cuda:1 or mps, got {device!r}")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()) or (index and kind != "cuda"):
        raise ConfigError(f"device {device!r}: unknown device (use cpu, cuda, cuda:N or mps)")
    if kind == "cpu":
        return
    if backend == "onnx":
        _check_onnx_device(device, kind)
    else:
        _check_torch_device(device, kind, index)


def _check_onnx_device(device: str, kind: str) -> None:
    """:func:`check_device` for onnxruntime: CUDA needs an onnxruntime built with it; no MPS."""
    if kind == "mps":
        raise ConfigError(f"device {device!r}: the onnx backend runs on cpu or cuda")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError(
            f"device {device!r}: this onnxruntime has no CUDA support (install onnxruntime-gpu), "
            "use --device cpu"
        )


def _check_torch_device(device: str, kind: str, index: str) -> None:
    """:func:`check_device` for torch: the Apple GPU or the CUDA device (by index) must be visible."""
    import torch

    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {device!r}: no Apple GPU (MPS) is available here; use --device cpu")
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"device {device!r}: not available ({build}); use --device cpu")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError(
            f"device {device!r}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
        )


def onnx_session(path: Path, *, threads: int | None = None, device: str = "cpu") -> Any:
    """An onnxruntime session tuned for this model: full graph optimisation, ``threads`` intra-op
    threads (default: :func:`default_threads` for the model file's size), sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or default_threads(path.stat().st_size)
    opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        raise BundleError(
            f"{path}: onnxruntime cannot load this model ({str(exc).splitlines()[0]})"
        ) from None


def load_torch(model: str | Path, *, threads: int | None, device: str) -> tuple[Any, dict[str, Any], int]:
    """A bundle's network on ``device``: ``(EmotionNet, meta, threads)``, ``threads`` defaulting to
    :func:`default_threads` for the size of its weights (float32)."""
    import torch

    net, meta = load_bundle(model)
    net.to(torch.device(device))
    n_values = sum(p.numel() for p in net.parameters())
    chosen = threads if threads is not None else default_threads(4 * n_values)
    return net, meta, chosen


def load_onnx(model: str | Path, *, threads: int | None, device: str) -> tuple[dict[str, Any], Any, int]:
    """A bundle's ``model.onnx`` (checksum verified) as an onnxruntime session: ``(meta, session,
    threads)``, ``threads`` defaulting to :func:`default_threads` for the size of its weights.

    Raises :class:`BundleError` when the bundle has no ONNX model (``emovox export`` adds one).
    """
    meta = read_meta(model)
    bundle = Path(meta["path"])
    if not (bundle / ONNX_FILE).is_file():
        raise BundleError(
            f"{bundle}: has no {ONNX_FILE}; run `emovox export {bundle}` to add one, or use the torch backend"
        )
    onnx_path = verify_checksum(bundle, meta, ONNX_FILE)
    try:
        weights = (bundle / WEIGHTS_FILE).stat().st_size
    except OSError:
        weights = onnx_path.stat().st_size
    chosen = threads if threads is not None else default_threads(weights)
    return meta, onnx_session(onnx_path, threads=chosen, device=device), chosen
