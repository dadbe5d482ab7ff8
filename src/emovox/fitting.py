"""Fitting: train one model of any family on training clips and select it on validation clips.

:func:`fit` trains ``cfg.model.family`` on ``train`` utterances, selects/early-stops on ``val``
utterances (speakers disjoint from training, chosen by the caller with
:func:`emovox.splits.validation_split`) and returns a classifier loaded from the best checkpoint.
It dispatches on the family through :data:`FITTERS`, one entry per family: a new family plugs in
with one entry there (and its name in :data:`emovox.config.FAMILIES`), nothing else.

The neural families (:func:`fit_torch`) train with Lightning: the waveform -> logits network that
is trained is the exact one that is bundled, exported and served. With waveform augmentation on,
features are computed inside the training step (on whatever device the batch is on, so a GPU run
extracts them on the GPU). Without it the frame features are deterministic, so they are extracted
once per clip through the on-disk feature cache (:func:`emovox.cache.cached_features`, keyed by
audio content and feature parameters) and the training step only crops, normalises and runs the
backbone: every epoch after the first, and every later fold or run over the same clips, skips the
front end.

Recipe: random crops of ``data.max_seconds`` from each training clip every epoch (whole clips at
validation), waveform augmentation in the dataset, SpecAugment on the normalised features,
mixup, label smoothing, optional class weights, Adam/AdamW with a warm-up + cosine (or one-cycle)
schedule, checkpoints on the best validation unweighted accuracy (``val_ua``, macro recall) and
early stopping on it. Fitting writes checkpoints, logs and ``history.json``; it knows nothing of
test data or reports.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from emovox.augment import WaveAugment
from emovox.classifier import FitData, FitFunction, FitResult
from emovox.config import RunConfig
from emovox.corpora import EMOTIONS, Utterance, load_waves
from emovox.datasets import (
    EpochSampler,
    FeatureDataset,
    ResumableLoader,
    WaveDataset,
    collate,
    collate_features,
    normalization_stats,
)
from emovox.errors import ConfigError, CorpusError, EmovoxError
from emovox.features import pad_batch
from emovox.models import MODELS, EmotionNet
from emovox.svm import fit_svm

CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"
CSV_LOG = "logs/metrics.csv"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: ``checkpoint`` (``checkpoints/last.ckpt``) holds the state to resume
    from with ``fit(..., resume=True)`` (``emovox train --resume RUN_DIR``); None if nothing was saved."""

    def __init__(self, run_dir: Path, checkpoint: Path | None) -> None:
        super().__init__(f"training interrupted; resumable checkpoint: {checkpoint}")
        self.run_dir = run_dir
        self.checkpoint = checkpoint


class TorchClassifier:
    """Batched, length-sorted inference with an :class:`EmotionNet` (``.net``)."""

    def __init__(
        self, net: EmotionNet, *, batch_size: int = 16, device: str | torch.device | None = None
    ) -> None:
        self.net = net.eval()
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.net.to(self.device)

    @property
    def labels(self) -> list[str]:
        return list(self.net.labels)

    @torch.inference_mode()
    def predict_proba(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities ``[N, K]`` (rows sum to 1) for 16 kHz mono waveforms."""
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float64)
        order = sorted(range(len(waves)), key=lambda i: np.asarray(waves[i]).size)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            wave, lengths = pad_batch([waves[i] for i in idx])
            logits = self.net(wave.to(self.device), lengths.to(self.device))
            out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return out


# --------------------------------------------------------------------------- fit: dispatch


@dataclass(frozen=True)
class Fitter:
    """How one model family is trained, and what its trained model supports."""

    fit: FitFunction
    resumable: bool
    """It writes ``checkpoints/last.ckpt`` that ``fit(..., resume=True)`` continues."""
    bundled: bool
    """Its classifier has ``.net``, an :class:`EmotionNet` that a run saves as its model bundle."""


def label_set(utts: Sequence[Utterance]) -> list[str]:
    """Emotions present in ``utts``, in the canonical :data:`EMOTIONS` order."""
    present = {u.emotion for u in utts}
    return [e for e in EMOTIONS if e in present] + sorted(present - set(EMOTIONS))


def _gather(
    utts: Sequence[Utterance], waves: Mapping[Path, np.ndarray], labels: Sequence[str]
) -> tuple[list[np.ndarray], list[int]]:
    index = {label: i for i, label in enumerate(labels)}
    kept = [u for u in utts if u.path in waves and u.emotion in index]
    return [waves[u.path] for u in kept], [index[u.emotion] for u in kept]


def fit(
    cfg: RunConfig,
    train: Sequence[Utterance],
    val: Sequence[Utterance],
    run_dir: str | Path,
    *,
    waves: Mapping[Path, np.ndarray] | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    label: str | None = None,
) -> FitResult:
    """Train ``cfg.model.family`` on ``train``, select on ``val``; write checkpoints and logs to ``run_dir``.

    ``waves`` maps ``Utterance.path`` to decoded audio (loaded here, once, when None). ``resume``
    continues from ``run_dir/checkpoints/last.ckpt``. Utterances whose audio could not be loaded,
    and validation utterances of an emotion absent from training, are left out. Returns the model
    loaded from the best checkpoint (the last one when ``val`` is empty). ``callbacks`` are extra
    Lightning callbacks (neural families only); ``label`` names the run in progress output (e.g.
    the cross-validation fold).

    Ctrl-C saves the training state to ``checkpoints/last.ckpt`` and raises
    :class:`TrainingInterrupted` (a ``KeyboardInterrupt``); ``resume=True`` continues from it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fitter = FITTERS.get(cfg.model.family)
    if fitter is None:
        known = ", ".join(FITTERS)
        raise ConfigError(f"model.family: no fit function for {cfg.model.family!r} (known: {known})")
    if not train:
        raise CorpusError("no training utterances")
    if waves is None:
        waves, _ = load_waves([*train, *val], trim=cfg.data.trim_silence, progress=progress)
    labels = label_set([u for u in train if u.path in waves])
    if len(labels) < 2:
        raise CorpusError(
            f"training data has {len(labels)} emotion(s) ({', '.join(labels)}); need at least 2"
        )
    train_waves, train_y = _gather(train, waves, labels)
    val_waves, val_y = _gather(val, waves, labels)
    data = FitData(labels, train_waves, train_y, val_waves, val_y)
    with cpu_threads(cfg.train.threads):
        return fitter.fit(
            cfg, data, run_dir, resume=resume, progress=progress, callbacks=callbacks, label=label
        )


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` PyTorch CPU threads (None = leave the setting alone)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- fit: neural families


def _device(cfg: RunConfig) -> str:
    """Where the normaliser statistics and cached features are computed (training itself: Lightning)."""
    wants_gpu = cfg.train.accelerator in ("auto", "gpu", "cuda")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def _class_weights(cfg: RunConfig, data: FitData) -> torch.Tensor | None:
    """Inverse-frequency loss weights (``train.class_weights``), or None."""
    if not cfg.train.class_weights:
        return None
    counts = np.bincount(data.train_y, minlength=len(data.labels)).astype(np.float64)
    weights = len(data.train_y) / (len(data.labels) * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def _loaders(
    cfg: RunConfig, net: EmotionNet, data: FitData, device: str, *, progress: bool
) -> tuple[DataLoader, DataLoader | None, int]:
    """``(train_loader, val_loader or None, steps_per_epoch)``.

    With waveform augmentation the loaders yield waveforms; otherwise frame features extracted once
    through the disk cache (train items are random feature-domain crops).
    """
    tcfg = cfg.train
    crop = int(cfg.data.max_seconds * cfg.features.sample_rate) if cfg.data.max_seconds else None
    if cfg.augment.wave_enabled:
        augment = WaveAugment(cfg.augment, cfg.features.sample_rate)
        train_ds: Dataset = WaveDataset(data.train_waves, data.train_y, crop=crop, augment=augment)
        batches = collate
    else:  # deterministic front end: extract once (disk cache), train on feature crops
        from emovox.cache import cached_features

        net.extractor.to(device)
        feats = cached_features([*data.train_waves, *data.val_waves], net.extractor, progress=progress)
        net.extractor.cpu()
        train_feats, val_feats = feats[: len(data.train_waves)], feats[len(data.train_waves) :]
        frames = None if crop is None else 1 + crop // cfg.features.hop_length
        train_ds = FeatureDataset(train_feats, data.train_y, crop=frames)
        batches = collate_features
    drop_last = len(train_ds) > tcfg.batch_size
    steps_per_epoch = len(train_ds) // tcfg.batch_size if drop_last else 1
    loader_args: dict[str, Any] = {
        "batch_size": tcfg.batch_size,
        "collate_fn": batches,
        "num_workers": tcfg.num_workers,
        "persistent_workers": tcfg.num_workers > 0,
        "pin_memory": device == "cuda",
    }
    # the loaders' own generators: creating their iterators draws no number from the global ones
    sampler = EpochSampler(len(train_ds), tcfg.seed)
    train_loader = ResumableLoader(
        train_ds,
        sampler=sampler,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(tcfg.seed),
        **loader_args,
    )
    val_loader = None
    if data.val_waves:
        order = np.argsort([w.size for w in data.val_waves], kind="stable")
        val_y = [data.val_y[i] for i in order]
        if cfg.augment.wave_enabled:
            val_ds: Dataset = WaveDataset([data.val_waves[i] for i in order], val_y)
        else:
            val_ds = FeatureDataset([val_feats[i] for i in order], val_y)
        val_loader = DataLoader(
            val_ds, shuffle=False, generator=torch.Generator().manual_seed(tcfg.seed), **loader_args
        )
    return train_loader, val_loader, steps_per_epoch


def _callbacks(
    cfg: RunConfig,
    ckpt_dir: Path,
    train_loader: DataLoader,
    *,
    validate: bool,
    progress: bool,
    label: str | None,
    extra: Sequence[Any],
) -> tuple[list[Any], Any, Any]:
    """Lightning callbacks (checkpoints, resume state, early stopping, progress bar), the
    best-checkpoint one and the one that stops at the end of a batch on request (Ctrl-C)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from emovox.lightning_module import EpochBar, ResumeState, SaveOnInterrupt, StopRequest

    # last.ckpt after every epoch, for resuming (Lightning's save_last only refreshes it when a new
    # best is saved, which would make a resumed run repeat every epoch since the best one)
    latest = ModelCheckpoint(
        dirpath=ckpt_dir, filename=Path(LAST_CHECKPOINT).stem, save_top_k=1, enable_version_counter=False
    )
    stop = StopRequest()
    callbacks: list[Any] = [
        latest,
        ResumeState(train_loader),
        SaveOnInterrupt(ckpt_dir / LAST_CHECKPOINT),
        stop,
        *extra,
    ]
    best: Any = None
    if validate:
        best = ModelCheckpoint(
            dirpath=ckpt_dir,
            filename=Path(BEST_CHECKPOINT).stem,
            monitor="val_ua",
            mode="max",
            save_top_k=1,
            enable_version_counter=False,
        )
        callbacks.insert(0, best)
        if cfg.train.patience:
            callbacks.append(EarlyStopping(monitor="val_ua", mode="max", patience=cfg.train.patience))
    if progress:
        callbacks.append(EpochBar(label))
    return callbacks, best, stop


def _loggers(run_dir: Path) -> list[Any]:
    """Lightning's CSV log under ``logs/`` and, when tensorboard is installed, TensorBoard's."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=run_dir, name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=run_dir, name="logs", version="tensorboard"))
    except ImportError:
        pass
    return loggers


def _trainer(
    cfg: RunConfig, run_dir: Path, callbacks: list[Any], steps_per_epoch: int, progress: bool
) -> Any:
    """The Lightning Trainer for ``cfg.train``; hardware settings Lightning rejects are a ConfigError."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    tcfg = cfg.train
    try:
        return L.Trainer(
            max_epochs=tcfg.epochs,
            accelerator=tcfg.accelerator,
            devices=tcfg.devices,
            strategy=tcfg.strategy,
            precision=tcfg.precision,
            callbacks=callbacks,
            logger=_loggers(run_dir),
            gradient_clip_val=tcfg.grad_clip,
            num_sanity_val_steps=0,
            log_every_n_steps=max(1, min(50, steps_per_epoch)),
            enable_model_summary=False,
            enable_progress_bar=progress,
            default_root_dir=run_dir,
        )
    except (ValueError, RuntimeError, TypeError, MisconfigurationException) as exc:
        raise ConfigError(
            f"train.accelerator/devices/strategy/precision: Lightning rejected "
            f"{tcfg.accelerator!r}/{tcfg.devices!r}/{tcfg.strategy!r}/{tcfg.precision!r}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


_QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*number of training batches.*",
    ".*LeafSpec.*",
    ".*resuming from a checkpoint that ended before.*",
    ".*defined a `validation_step` but have no `val_dataloader`.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*Experiment logs directory .* exists and is not empty.*",
)


def _run_trainer(
    trainer: Any,
    module: Any,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    run_dir: Path,
    *,
    resume: bool,
    earlier_log: list[dict[str, str]],
    stop: Any,
) -> None:
    """``trainer.fit`` with Ctrl-C turned into :class:`TrainingInterrupted`, the SIGINT handler
    restored, and (on resume) ``earlier_log``, the CSV log rows from before the interruption, kept.

    The first Ctrl-C asks ``stop`` (a :class:`~emovox.lightning_module.StopRequest`) to end at the
    end of the current batch, where ``last.ckpt`` resumes into exactly the uninterrupted run; a
    second one interrupts at once.
    """
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    csv_log = run_dir / CSV_LOG
    in_main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if in_main_thread else None

    def first_ctrl_c(signum: int, frame: Any) -> None:
        stop.request()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next one interrupts at once
        sys.stderr.write("\nstopping at the end of this batch (Ctrl-C again to stop now)\n")

    if in_main_thread:
        signal.signal(signal.SIGINT, first_ctrl_c)
    try:
        with warnings.catch_warnings():
            for message in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            # weights_only: resuming unpickles nothing but tensors and plain containers
            trainer.fit(
                module, train_loader, val_loader, ckpt_path=str(last) if resume else None, weights_only=True
            )
    except SystemExit:
        # Lightning turns Ctrl-C into on_exception callbacks (see SaveOnInterrupt) + sys.exit(1)
        if trainer.interrupted:
            raise TrainingInterrupted(run_dir, last if last.is_file() else None) from None
        raise
    except KeyboardInterrupt:
        raise TrainingInterrupted(run_dir, last if last.is_file() else None) from None
    finally:
        if in_main_thread and sigint is not None:
            signal.signal(signal.SIGINT, sigint)  # Lightning leaves Ctrl-C ignored after an interrupt
        if earlier_log and trainer.is_global_zero:
            _write_csv(csv_log, earlier_log + _read_csv(csv_log))


def fit_torch(
    cfg: RunConfig,
    data: FitData,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    label: str | None = None,
) -> FitResult:
    """Train an :class:`EmotionNet` of ``cfg.model.family`` with Lightning (see the module docstring).

    ``resume`` continues ``checkpoints/last.ckpt`` as the same run: weights, optimiser, schedule,
    the position in the epoch's shuffled batches and the random state all come back from it.
    ``label`` prefixes the progress bar's epoch line (e.g. the cross-validation fold).
    """
    import lightning as L

    from emovox.lightning_module import EmotionModule, quiet_lightning

    tcfg = cfg.train
    ckpt_dir = run_dir / CHECKPOINT_DIR
    last = ckpt_dir / LAST_CHECKPOINT
    if resume:
        check_resumable(last, cfg, data.labels)
    else:
        # a resumed run does not start the random streams again: they come back from last.ckpt
        L.seed_everything(tcfg.seed, workers=True, verbose=False)

    net = EmotionNet(cfg.features, cfg.model.family, cfg.model.params, data.labels)
    if not resume:  # a resumed run's normaliser comes back from the checkpoint, with the weights
        device = _device(cfg)
        mean, std = normalization_stats(net, data.train_waves, batch_size=tcfg.batch_size, device=device)
        net.set_normalization(mean, std)
    net.cpu()
    train_loader, val_loader, steps_per_epoch = _loaders(cfg, net, data, _device(cfg), progress=progress)
    module = EmotionModule(net, cfg, _class_weights(cfg, data), steps_per_epoch)
    all_callbacks, best, stop = _callbacks(
        cfg,
        ckpt_dir,
        train_loader,
        validate=val_loader is not None,
        progress=progress,
        label=label,
        extra=callbacks,
    )
    # Lightning's CSV logger starts metrics.csv afresh: keep the rows from before an interruption
    earlier_log = _read_csv(run_dir / CSV_LOG) if resume else []
    quiet_lightning()
    trainer = _trainer(cfg, run_dir, all_callbacks, steps_per_epoch, progress)
    _run_trainer(
        trainer,
        module,
        train_loader,
        val_loader,
        run_dir,
        resume=resume,
        earlier_log=earlier_log,
        stop=stop,
    )

    best_path = Path(best.best_model_path) if best is not None and best.best_model_path else None
    chosen = best_path or last
    state = torch.load(chosen, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    history = [dict(h) for h in module.history]
    if trainer.is_global_zero:
        (run_dir / "history.json").write_text(json.dumps(history, indent=2))
    best_ua = float(best.best_model_score) if best_path and best.best_model_score is not None else math.nan
    return FitResult(
        model=TorchClassifier(module.net.cpu().eval(), batch_size=tcfg.batch_size),
        best_val_ua=best_ua,
        history=history,
        checkpoint=chosen,
    )


def check_resumable(path: str | Path, cfg: RunConfig, labels: Sequence[str]) -> None:
    """Refuse, with one clear :class:`EmovoxError`, a ``last.ckpt`` that cannot continue a run of
    ``cfg`` on ``labels``: missing, unreadable or truncated, holding more than tensors and plain
    containers (a pickle: never unpickled), not written by emovox, or written for another model
    (family, parameters, features or labels changed)."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise EmovoxError(f"{path.parent.parent}: nothing to resume ({path} not found)")
    net = EmotionNet(cfg.features, cfg.model.family, cfg.model.params, list(labels))

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmovoxError(
            f"{path}: cannot resume from this checkpoint: it is not a readable emovox training "
            f"checkpoint ({first[:200]}); train again into a new --out"
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state or "emovox_model" not in state:
        raise EmovoxError(
            f"{path}: cannot resume: not an emovox training checkpoint; train again into a new --out"
        )
    saved = state["emovox_model"]
    wanted = net.config()
    if saved != wanted:
        changed = sorted(k for k in {*saved, *wanted} if saved.get(k) != wanted.get(k))
        raise EmovoxError(
            f"{path}: cannot resume: the checkpoint was trained with another model ({', '.join(changed)} "
            "changed since); resume with the run's own config, or train again into a new --out"
        )
    expected = {f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state["state_dict"].items() if k.startswith("net.")}
    if found != expected:
        raise EmovoxError(f"{path}: cannot resume: its weights do not fit the model of this run's config")


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    """Write ``rows`` under the union of their columns (the training log before and after a resume)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------- the family registry

FITTERS: dict[str, Fitter] = {
    **{family: Fitter(fit_torch, resumable=True, bundled=True) for family in MODELS},
    "svm": Fitter(fit_svm, resumable=False, bundled=False),
}
"""Model family -> how it is trained. A new family is one entry here (plus its name in
:data:`emovox.config.FAMILIES`, which config validation uses)."""
