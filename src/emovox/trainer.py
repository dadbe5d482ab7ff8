"""Lightning trainer plumbing for :func:`emovox.fitting.fit_torch`: callbacks, loggers, the Trainer,
a Ctrl-C-safe ``trainer.fit`` and the checks before resuming a run.

:func:`build_callbacks` sets up checkpoints (``best.ckpt`` on the best validation UA,
``last.ckpt`` after every epoch and on Ctrl-C, for resuming), resume state, early stopping and the
progress bar; :func:`build_trainer` the Trainer with its CSV (and TensorBoard) logs;
:func:`run_trainer` turns the first Ctrl-C into a stop at the end of the batch and any interruption
into :class:`TrainingInterrupted`, keeping the CSV log rows from before a resume
(:func:`read_csv`, :func:`write_csv`). :func:`check_resumable` refuses a ``last.ckpt`` that cannot
continue a run. Lightning is imported only inside these functions.
"""

from __future__ import annotations

import csv
import signal
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from emovox.config import RunConfig
from emovox.errors import ConfigError, EmovoxError
from emovox.models import EmotionNet

CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"
CSV_LOG = "logs/metrics.csv"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`~emovox.fitting.fit`: ``checkpoint`` (``checkpoints/last.ckpt``) holds the
    state to resume from with ``fit(..., resume=True)`` (``emovox train --resume RUN_DIR``); None if
    nothing was saved."""

    def __init__(self, run_dir: Path, checkpoint: Path | None) -> None:
        super().__init__(f"training interrupted; resumable checkpoint: {checkpoint}")
        self.run_dir = run_dir
        self.checkpoint = checkpoint


def build_callbacks(
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


def build_loggers(run_dir: Path) -> list[Any]:
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


def build_trainer(
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
            logger=build_loggers(run_dir),
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


QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*number of training batches.*",
    ".*LeafSpec.*",
    ".*module\\(s\\) in eval mode.*",  # a frozen pretrained encoder stays in eval mode
    ".*resuming from a checkpoint that ended before.*",
    ".*defined a `validation_step` but have no `val_dataloader`.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*Experiment logs directory .* exists and is not empty.*",
)


def run_trainer(
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
            for message in QUIET_WARNINGS:
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
            write_csv(csv_log, earlier_log + read_csv(csv_log))


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
    # a frozen pretrained encoder is not in checkpoints (it is rebuilt from model.params.encoder)
    frozen = (
        "net.extractor." if net.family == "encoder" and not cfg.model.params.get("finetune_top") else None
    )
    expected = {
        f"net.{k}": tuple(v.shape)
        for k, v in net.state_dict().items()
        if not (frozen and f"net.{k}".startswith(frozen))
    }
    found = {k: tuple(v.shape) for k, v in state["state_dict"].items() if k.startswith("net.")}
    if found != expected:
        raise EmovoxError(f"{path}: cannot resume: its weights do not fit the model of this run's config")


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV log (none when the file does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    """Write ``rows`` under the union of their columns (the training log before and after a resume)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
