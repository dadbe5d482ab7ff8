"""Training: Lightning for the neural families, scikit-learn for the SVM baseline.

:func:`fit` trains one model on ``train`` utterances, selects/early-stops on ``val`` utterances
(speakers disjoint from training, chosen by the caller with
:func:`emovox.splits.validation_speakers`) and returns a classifier loaded from the best
checkpoint. The waveform -> logits network that is trained is the exact one that is bundled,
exported and served. With waveform augmentation on, features are computed inside the training step
(on whatever device the batch is on, so a GPU run extracts them on the GPU). Without it the frame
features are deterministic, so they are extracted once per clip through the on-disk feature cache
(:func:`emovox.cache.cached_features`, keyed by audio content and feature parameters) and the
training step only crops, normalises and runs the backbone: every epoch after the first, and every
later fold or run over the same clips, skips the front end.

Recipe: random crops of ``data.max_seconds`` from each training clip every epoch (whole clips at
validation), waveform augmentation in the dataset, SpecAugment on the normalised features,
mixup, label smoothing, optional class weights, Adam/AdamW with a warm-up + cosine (or one-cycle)
schedule, checkpoints on the best validation unweighted accuracy (``val_ua``, macro recall) and
early stopping on it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as nnf
from torch.utils.data import DataLoader, Dataset

from emovox.augment import SpecAugment, WaveAugment
from emovox.config import RunConfig
from emovox.corpora import EMOTIONS, Utterance
from emovox.errors import ConfigError, CorpusError, EmovoxError
from emovox.features import FeatureConfig, FeatureExtractor, egemaps_many, pad_batch, pool_stats
from emovox.models import EmotionNet, frame_mask

CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"


class Classifier(Protocol):
    """What evaluation consumes: ``labels`` and ``predict_proba(waves) -> [N, K]``."""

    labels: list[str]

    def predict_proba(self, waves: Sequence[np.ndarray]) -> np.ndarray: ...


@dataclass
class FitResult:
    """A trained classifier, its best validation UA (NaN without validation), per-epoch history and
    the checkpoint it was loaded from (None for the SVM, which is not checkpointed)."""

    model: Any
    best_val_ua: float
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: ``checkpoint`` (``checkpoints/last.ckpt``) holds the state to resume
    from with ``fit(..., resume=True)`` (``emovox train --resume RUN_DIR``); None if nothing was saved."""

    def __init__(self, run_dir: Path, checkpoint: Path | None) -> None:
        super().__init__(f"training interrupted; resumable checkpoint: {checkpoint}")
        self.run_dir = run_dir
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------- classifiers


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


class SVMClassifier:
    """StandardScaler + SVC (Platt-scaled probabilities) on eGeMAPS or pooled frame statistics.

    Not bundled (bundles never pickle); it is a baseline for reports and cross-validation.
    """

    def __init__(
        self, labels: Sequence[str], pipeline: Any, features: str, feature_cfg: FeatureConfig
    ) -> None:
        self.labels = list(labels)
        self.pipeline = pipeline
        self.features = features
        self.feature_cfg = feature_cfg

    def predict_proba(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        proba = self.pipeline.predict_proba(
            svm_features(waves, self.features, self.feature_cfg, progress=False)
        )
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float64)
        out[:, self.pipeline.classes_] = proba
        return out


def svm_features(
    waves: Sequence[np.ndarray], kind: str, feature_cfg: FeatureConfig, *, progress: bool = True
) -> np.ndarray:
    """``[N, D]`` utterance vectors: 88 eGeMAPS functionals or ``pool_stats`` of the frame features."""
    if kind == "egemaps":
        return egemaps_many(waves, progress=progress)
    extractor = FeatureExtractor(feature_cfg)
    order = sorted(range(len(waves)), key=lambda i: np.asarray(waves[i]).size)
    out = np.zeros((len(waves), extractor.num_channels * len(feature_cfg.stats)), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            wave, lengths = pad_batch([waves[i] for i in idx])
            feats, frames = extractor(wave, lengths)
            out[idx] = pool_stats(feats, frames, feature_cfg.stats).numpy()
    return out


# --------------------------------------------------------------------------- data


class WaveDataset(Dataset):
    """Decoded waveforms and class indices; training items get a random crop and augmentation."""

    def __init__(
        self,
        waves: Sequence[np.ndarray],
        targets: Sequence[int],
        *,
        crop: int | None = None,
        augment: WaveAugment | None = None,
    ) -> None:
        self.waves = list(waves)
        self.targets = list(targets)
        self.crop = crop
        self.augment = augment

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        wave = self.waves[i]
        if self.crop is not None and wave.size > self.crop:
            # torch's generator: seeded by seed_everything in the main process and in each worker
            start = int(torch.randint(0, wave.size - self.crop + 1, (1,)))
            wave = wave[start : start + self.crop]
        if self.augment is not None:
            wave = self.augment(wave)
        return np.ascontiguousarray(wave, dtype=np.float32), self.targets[i]


def collate(batch: Sequence[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-pad a list of ``(wave, target)`` into ``(wave [B, T], lengths [B], targets [B])``."""
    wave, lengths = pad_batch([w for w, _ in batch])
    return wave, lengths, torch.tensor([t for _, t in batch], dtype=torch.int64)


class FeatureDataset(Dataset):
    """Precomputed frame features ``[C, F_i]`` and class indices; training items get a random crop.

    ``crop`` is in frames: the feature-domain equivalent of cropping the waveform (it differs from
    features of a cropped waveform only in the centred frames at the crop's two edges).
    """

    def __init__(
        self, feats: Sequence[np.ndarray], targets: Sequence[int], *, crop: int | None = None
    ) -> None:
        self.feats = list(feats)
        self.targets = list(targets)
        self.crop = crop

    def __len__(self) -> int:
        return len(self.feats)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        x = self.feats[i]
        if self.crop is not None and x.shape[1] > self.crop:
            start = int(torch.randint(0, x.shape[1] - self.crop + 1, (1,)))
            x = x[:, start : start + self.crop]
        return x, self.targets[i]


def collate_features(
    batch: Sequence[tuple[np.ndarray, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-pad ``(feats [C, F_i], target)`` items into ``(feats [B, C, F], frames [B], targets [B])``."""
    frames = torch.tensor([x.shape[1] for x, _ in batch], dtype=torch.int64)
    out = torch.zeros(len(batch), batch[0][0].shape[0], int(frames.max()), dtype=torch.float32)
    for i, (x, _) in enumerate(batch):
        out[i, :, : x.shape[1]] = torch.from_numpy(np.asarray(x, dtype=np.float32))
    return out, frames, torch.tensor([t for _, t in batch], dtype=torch.int64)


@torch.inference_mode()
def normalization_stats(
    net: EmotionNet, waves: Sequence[np.ndarray], *, batch_size: int = 32, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the backbone inputs over the (non-augmented, whole) training clips.

    Frame features: per channel over every valid frame. Pooled statistics (``mlp``): per dimension
    over utterances. Accumulated in float64 so long corpora do not lose precision.
    """
    net = net.to(device)
    total = torch.zeros(net.input_dim, dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    count = 0.0
    order = sorted(range(len(waves)), key=lambda i: waves[i].size)
    for start in range(0, len(order), batch_size):
        wave, lengths = pad_batch([waves[i] for i in order[start : start + batch_size]])
        x, frames = net.raw_inputs(wave.to(device), lengths.to(device))
        x = x.double()
        if net.pooled:
            total += x.sum(0)
            squares += (x**2).sum(0)
            count += x.shape[0]
        else:
            mask = frame_mask(frames, x.shape[-1]).unsqueeze(1).double()
            total += (x * mask).sum((0, 2))
            squares += (x**2 * mask).sum((0, 2))
            count += float(mask.sum())
    mean = total / count
    std = (squares / count - mean**2).clamp(min=0).sqrt()
    return mean.float().cpu(), std.float().cpu()


# --------------------------------------------------------------------------- lightning module


def _lightning() -> Any:
    import lightning

    return lightning


def _make_module(
    net: EmotionNet, cfg: RunConfig, class_weights: torch.Tensor | None, steps_per_epoch: int
) -> Any:
    """Build the LightningModule (defined lazily so importing this module does not import Lightning)."""
    L = _lightning()
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy

    tcfg = cfg.train
    n_classes = len(net.labels)

    class EmotionModule(L.LightningModule):
        """Cross-entropy training of an :class:`EmotionNet` with SpecAugment and mixup."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.spec = SpecAugment(cfg.augment) if cfg.augment.spec_enabled and not net.pooled else None
            self.register_buffer(
                "class_weights",
                class_weights if class_weights is not None else torch.ones(n_classes),
                persistent=False,
            )
            self.val_ua = MulticlassAccuracy(num_classes=n_classes, average="macro")
            self.val_wa = MulticlassAccuracy(num_classes=n_classes, average="micro")
            self.val_loss = MeanMetric()
            self.train_loss = MeanMetric()
            self.history: list[dict[str, float]] = []

        def _inputs(self, batch: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Normalised backbone inputs from waveforms ``[B, T]`` or precomputed features ``[B, C, F]``."""
            # features in float32 even under mixed precision: log-power in fp16 loses the quiet frames
            with torch.autocast(device_type=self.device.type, enabled=False):
                if batch.dim() == 2:
                    return self.net.inputs(batch.float(), lengths)
                x = batch.float()
                if self.net.pooled:
                    x = pool_stats(x, lengths, self.net.feature_cfg.stats)
                return self.net.normalize(x, lengths), lengths

        def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return nnf.cross_entropy(
                logits.float(), target, weight=self.class_weights, label_smoothing=tcfg.label_smoothing
            )

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            wave, lengths, target = batch
            x, frames = self._inputs(wave, lengths)
            if self.spec is not None:
                x = self.spec(x, frames)
            if tcfg.mixup > 0 and x.shape[0] > 1:
                lam = float(np.random.beta(tcfg.mixup, tcfg.mixup))
                perm = torch.randperm(x.shape[0], device=x.device)
                x = lam * x + (1 - lam) * x[perm]
                frames = torch.maximum(frames, frames[perm])
                logits = self.net.backbone(x, frames)
                loss = lam * self._loss(logits, target) + (1 - lam) * self._loss(logits, target[perm])
            else:
                loss = self._loss(self.net.backbone(x, frames), target)
            self.train_loss.update(loss.detach())
            self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=x.shape[0])
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            wave, lengths, target = batch
            x, frames = self._inputs(wave, lengths)
            logits = self.net.backbone(x, frames).float()
            self.val_loss.update(nnf.cross_entropy(logits, target), weight=target.shape[0])
            preds = logits.argmax(-1)
            self.val_ua.update(preds, target)
            self.val_wa.update(preds, target)

        def _entry(self) -> dict[str, float]:
            epoch = int(self.current_epoch) + 1
            if not self.history or self.history[-1]["epoch"] != epoch:
                self.history.append({"epoch": epoch})
            return self.history[-1]

        def on_validation_epoch_end(self) -> None:
            ua, wa, vloss = self.val_ua.compute(), self.val_wa.compute(), self.val_loss.compute()
            self.val_ua.reset()
            self.val_wa.reset()
            self.val_loss.reset()
            # already reduced over processes by torchmetrics; sync_dist keeps Lightning's DDP check quiet
            self.log_dict({"val_wa": wa, "val_loss": vloss}, sync_dist=True)
            self.log("val_ua", ua, prog_bar=True, sync_dist=True)
            if not self.trainer.sanity_checking:
                self._entry().update(val_ua=float(ua), val_wa=float(wa), val_loss=float(vloss))

        def on_train_start(self) -> None:
            self._epoch_started = time.perf_counter()  # a run resumed mid-epoch starts timing here

        def on_train_epoch_start(self) -> None:
            self._epoch_started = time.perf_counter()

        def on_train_epoch_end(self) -> None:
            loss = float(self.train_loss.compute()) if self.train_loss.update_count else math.nan
            self.train_loss.reset()
            lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])
            self.log_dict({"train_loss": loss, "lr": lr}, sync_dist=True)
            # wall time of the epoch, training and validation (Lightning validates before this hook)
            seconds = time.perf_counter() - self._epoch_started
            self._entry().update(train_loss=loss, lr=lr, seconds=seconds)

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["emovox_history"] = [dict(h) for h in self.history]
            checkpoint["emovox_model"] = self.net.config()

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self.history = [dict(h) for h in checkpoint.get("emovox_history", [])]

        def configure_optimizers(self) -> Any:
            params = [p for p in self.net.parameters() if p.requires_grad]
            opt_cls = torch.optim.AdamW if tcfg.optimizer == "adamw" else torch.optim.Adam
            optimizer = opt_cls(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
            # optimiser steps of this process (DDP shards batches; Lightning knows the real count)
            estimated = float(self.trainer.estimated_stepping_batches)
            total = max(1, int(estimated) if math.isfinite(estimated) else tcfg.epochs * steps_per_epoch)
            per_epoch = total / max(1, tcfg.epochs)
            warmup = min(total - 1, int(round(tcfg.warmup_epochs * per_epoch)))
            if tcfg.scheduler == "none":
                return optimizer
            if tcfg.scheduler == "onecycle":
                scheduler: Any = torch.optim.lr_scheduler.OneCycleLR(
                    optimizer, max_lr=tcfg.lr, total_steps=total, pct_start=max(warmup, 1) / total
                )
            else:
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(warmup, total))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    return EmotionModule()


def _warmup_cosine(warmup: int, total: int) -> Any:
    """LR factor per step: linear warm-up to 1, then cosine decay to 1% of the peak."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# --------------------------------------------------------------------------- fit


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
) -> FitResult:
    """Train ``cfg.model.family`` on ``train``, select on ``val``; write checkpoints and logs to ``run_dir``.

    ``waves`` maps ``Utterance.path`` to decoded audio (loaded here, once, when None). ``resume``
    continues from ``run_dir/checkpoints/last.ckpt``. Utterances whose audio could not be loaded,
    and validation utterances of an emotion absent from training, are left out. Returns the model
    loaded from the best checkpoint (the last one when ``val`` is empty). ``callbacks`` are extra
    Lightning callbacks (neural families only).

    Ctrl-C saves the training state to ``checkpoints/last.ckpt`` and raises
    :class:`TrainingInterrupted` (a ``KeyboardInterrupt``); ``resume=True`` continues from it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not train:
        raise CorpusError("no training utterances")
    if waves is None:
        from emovox.evaluation import load_waves

        waves, _ = load_waves([*train, *val], trim=cfg.data.trim_silence, progress=progress)
    labels = label_set([u for u in train if u.path in waves])
    if len(labels) < 2:
        raise CorpusError(
            f"training data has {len(labels)} emotion(s) ({', '.join(labels)}); need at least 2"
        )
    train_waves, train_y = _gather(train, waves, labels)
    val_waves, val_y = _gather(val, waves, labels)
    with cpu_threads(cfg.train.threads):
        if cfg.model.family == "svm":
            return _fit_svm(cfg, labels, train_waves, train_y, val_waves, val_y, run_dir, progress=progress)
        return _fit_torch(
            cfg,
            labels,
            train_waves,
            train_y,
            val_waves,
            val_y,
            run_dir,
            resume=resume,
            progress=progress,
            callbacks=callbacks,
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


def _fit_torch(
    cfg: RunConfig,
    labels: list[str],
    train_waves: list[np.ndarray],
    train_y: list[int],
    val_waves: list[np.ndarray],
    val_y: list[int],
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    callbacks: Sequence[Any] = (),
) -> FitResult:
    L = _lightning()
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    tcfg = cfg.train
    L.seed_everything(tcfg.seed, workers=True, verbose=False)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    last = ckpt_dir / LAST_CHECKPOINT
    if resume and not last.is_file():
        raise EmovoxError(f"{run_dir}: nothing to resume ({last} not found)")

    net = EmotionNet(cfg.features, cfg.model.family, cfg.model.params, labels)
    device = "cuda" if tcfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    if not resume:  # a resumed run restores the normaliser from its checkpoint
        mean, std = normalization_stats(net, train_waves, batch_size=tcfg.batch_size, device=device)
        net.set_normalization(mean, std)
    net.cpu()

    class_weights = None
    if tcfg.class_weights:
        counts = np.bincount(train_y, minlength=len(labels)).astype(np.float64)
        class_weights = torch.tensor(
            len(train_y) / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32
        )

    crop = int(cfg.data.max_seconds * cfg.features.sample_rate) if cfg.data.max_seconds else None
    if cfg.augment.wave_enabled:
        augment = WaveAugment(cfg.augment, cfg.features.sample_rate)
        train_ds: Dataset = WaveDataset(train_waves, train_y, crop=crop, augment=augment)
        batches = collate
    else:  # deterministic front end: extract once (disk cache), train on feature crops
        from emovox.cache import cached_features

        net.extractor.to(device)
        feats = cached_features([*train_waves, *val_waves], net.extractor, progress=progress)
        net.extractor.cpu()
        train_feats, val_feats = feats[: len(train_waves)], feats[len(train_waves) :]
        frames = None if crop is None else 1 + crop // cfg.features.hop_length
        train_ds = FeatureDataset(train_feats, train_y, crop=frames)
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
    train_loader = DataLoader(train_ds, shuffle=True, drop_last=drop_last, **loader_args)
    val_loader = None
    if val_waves:
        order = np.argsort([w.size for w in val_waves], kind="stable")
        if cfg.augment.wave_enabled:
            val_ds: Dataset = WaveDataset([val_waves[i] for i in order], [val_y[i] for i in order])
        else:
            val_ds = FeatureDataset([val_feats[i] for i in order], [val_y[i] for i in order])
        val_loader = DataLoader(val_ds, shuffle=False, **loader_args)

    module = _make_module(net, cfg, class_weights, steps_per_epoch)
    # last.ckpt after every epoch, for resuming (Lightning's save_last only refreshes it when a new
    # best is saved, which would make a resumed run repeat every epoch since the best one)
    latest = ModelCheckpoint(
        dirpath=ckpt_dir, filename=Path(LAST_CHECKPOINT).stem, save_top_k=1, enable_version_counter=False
    )
    all_callbacks: list[Any] = [latest, _save_on_interrupt(last), *callbacks]
    best: Any = None
    if val_loader is not None:
        best = ModelCheckpoint(
            dirpath=ckpt_dir,
            filename=Path(BEST_CHECKPOINT).stem,
            monitor="val_ua",
            mode="max",
            save_top_k=1,
            enable_version_counter=False,
        )
        all_callbacks.insert(0, best)
    if val_loader is not None and tcfg.patience:
        all_callbacks.append(EarlyStopping(monitor="val_ua", mode="max", patience=tcfg.patience))
    if progress:
        all_callbacks.append(RichProgressBar(leave=True))
    loggers: list[Any] = [CSVLogger(save_dir=run_dir, name="logs", version="")]
    csv_log = run_dir / "logs" / "metrics.csv"
    earlier_log = _read_csv(csv_log) if resume else []  # Lightning's CSV logger starts the file afresh
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=run_dir, name="logs", version="tensorboard"))
    except ImportError:
        pass

    _quiet_lightning()
    try:
        trainer = L.Trainer(
            max_epochs=tcfg.epochs,
            accelerator=tcfg.accelerator,
            devices=tcfg.devices,
            strategy=tcfg.strategy,
            precision=tcfg.precision,
            callbacks=all_callbacks,
            logger=loggers,
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
    in_main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before.*")
            warnings.filterwarnings(
                "ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*"
            )
            warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
            warnings.filterwarnings(
                "ignore", message=".*Experiment logs directory .* exists and is not empty.*"
            )
            # weights_only: resuming unpickles nothing but tensors and plain containers
            trainer.fit(
                module, train_loader, val_loader, ckpt_path=str(last) if resume else None, weights_only=True
            )
    except SystemExit:
        # Lightning turns Ctrl-C into on_exception callbacks (see _SaveOnInterrupt) + sys.exit(1)
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


def _quiet_lightning() -> None:
    """Drop Lightning's per-run info lines (hardware summary, tips); warnings and errors still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _save_on_interrupt(path: Path) -> Any:
    """A Lightning callback that saves the whole training state to ``path`` when Ctrl-C stops a fit."""
    L = _lightning()

    class SaveOnInterrupt(L.pytorch.Callback):
        """On Ctrl-C, write the full training state to ``last.ckpt`` so ``resume`` continues from here.

        Without it an interrupt mid-epoch would lose everything since the last epoch end (or the
        whole run during the first epoch). Multi-process runs keep their epoch-end ``last.ckpt``:
        saving is collective there and the other processes are being torn down.
        """

        def __init__(self, path: Path) -> None:
            self.path = path

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            if not isinstance(exception, KeyboardInterrupt) or trainer.world_size > 1:
                return
            if trainer.global_step == 0 and trainer.current_epoch == 0:
                return  # nothing trained yet: keep whatever last.ckpt there is
            self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.path, weights_only=False)  # the full state: resumable

    return SaveOnInterrupt(path)


def _ignore_probability_deprecation() -> None:
    """scikit-learn 1.9 deprecates SVC's ``probability`` argument (Platt scaling still works until 1.11)."""
    warnings.filterwarnings("ignore", message=".*`probability` parameter", category=FutureWarning)


def _fit_svm(
    cfg: RunConfig,
    labels: list[str],
    train_waves: list[np.ndarray],
    train_y: list[int],
    val_waves: list[np.ndarray],
    val_y: list[int],
    run_dir: Path,
    *,
    progress: bool,
) -> FitResult:
    """Choose C on the validation speakers (unweighted accuracy), then fit with Platt probabilities."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    params = cfg.svm_params
    grid = [float(c) for c in (params["C"] if isinstance(params["C"], list) else [params["C"]])]
    weight = "balanced" if cfg.train.class_weights else None
    x_train = svm_features(train_waves, params["features"], cfg.features, progress=progress)

    def make(c: float, probability: bool) -> Any:
        svc = SVC(
            C=c,
            kernel=params["kernel"],
            class_weight=weight,
            probability=probability,
            random_state=cfg.train.seed,
        )
        return make_pipeline(StandardScaler(), svc)

    scores: dict[float, float] = {}
    if val_waves:
        x_val = svm_features(val_waves, params["features"], cfg.features, progress=progress)
        for c in grid:
            with warnings.catch_warnings():
                _ignore_probability_deprecation()
                pred = make(c, False).fit(x_train, train_y).predict(x_val)
            scores[c] = float(balanced_accuracy_score(val_y, pred))
        best_c = max(grid, key=lambda c: (scores[c], -abs(math.log10(c))))
    elif len(grid) == 1:
        best_c = grid[0]
    else:
        raise ConfigError(
            "model.params.C: choosing C among several values needs validation speakers "
            "(train.val_fraction > 0); give a single C"
        )
    with warnings.catch_warnings():
        _ignore_probability_deprecation()
        pipeline = make(best_c, True).fit(x_train, train_y)
    (run_dir / "model_selection.json").write_text(
        json.dumps({"C": best_c, "val_ua_by_C": {str(c): s for c, s in scores.items()}}, indent=2)
    )
    return FitResult(
        model=SVMClassifier(labels, pipeline, params["features"], cfg.features),
        best_val_ua=scores.get(best_c, math.nan),
        history=[],
        checkpoint=None,
    )


# --------------------------------------------------------------------------- emovox train: one run

BUNDLE_DIR = "model"  # the run folder's bundle (docs/architecture.md, run directory)


@dataclass
class TrainingSplit:
    """Who trains, validates and tests in an ``emovox train`` run (speaker-independent by construction)."""

    train: list[Utterance]
    val: list[Utterance]
    test: list[Utterance]
    protocol: str
    """One sentence for reports and the model card."""
    validation: str
    """``"speakers"``, ``"clips of the single training speaker"`` or ``"none"``."""
    shared_emotions: list[str] | None = None
    """Cross-corpus: the emotions both corpora have (training and scoring are restricted to them)."""
    corpora: list[dict[str, Any]] = field(default_factory=list)
    """``{"name", "path", "clips", "role"}`` per corpus used (role: train, extra or test)."""

    def speakers(self, part: str) -> list[str]:
        """Sorted speakers of ``"train"``, ``"val"`` or ``"test"``."""
        return sorted({u.speaker for u in getattr(self, part)})


def _short(speakers: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(speakers[:limit])
    return shown + (f" and {len(speakers) - limit} more" if len(speakers) > limit else "")


def training_split(cfg: RunConfig, *, source: str = "config") -> TrainingSplit:
    """Load ``cfg.data`` (plus ``data.extra``) and split it by ``cfg.split.protocol`` for one run.

    ``holdout``: test on ``split.test_speakers``; ``none``: every speaker trains (no test);
    ``cross_corpus``: train on ``data``, test on ``split.test_path`` over the emotions both share.
    ``data.extra`` corpora only ever join the training side (a speaker of theirs among the test
    speakers is an error). Validation data is carved from the training side with
    :func:`emovox.splits.validation_speakers` (whole speakers), or, with a single training speaker,
    a stratified ``train.val_fraction`` of its clips (as in cross-validation); 0 = no validation.
    ``kfold`` / ``loso`` are cross-validation protocols: :class:`ConfigError` pointing to ``emovox cv``.
    """
    from emovox import splits as sp
    from emovox.corpora import load_corpus
    from emovox.evaluation import _validation_split

    d, s = cfg.data, cfg.split
    if s.protocol in ("kfold", "loso"):
        raise ConfigError(
            f"{source}: split.protocol is {s.protocol}, a cross-validation protocol; run "
            f"`emovox cv --config {source}` for it (emovox train takes holdout, none or cross_corpus)"
        )
    if not d.path:
        raise ConfigError(f"{source}: data.path is not set (the corpus folder to train on)")
    corpus = load_corpus(d.path, d.corpus, emotions=d.emotions)
    utts = list(corpus.utterances)
    corpora = [{"name": corpus.name, "path": str(d.path), "clips": len(utts), "role": "train"}]
    shared: list[str] | None = None
    if s.protocol == "holdout":
        split = sp.holdout_speakers(utts, s.test_speakers)
        train = [utts[i] for i in split.train]
        test = [utts[i] for i in split.test]
        tested = sorted({u.speaker for u in test})
        protocol = f"speaker-independent holdout on {corpus.name}: test speakers {_short(tested)}"
    elif s.protocol == "cross_corpus":
        assert s.test_path is not None  # validate() requires it
        other = load_corpus(s.test_path, s.test_corpus, emotions=d.emotions)
        train_idx, test_idx, shared = sp.cross_corpus(utts, other.utterances)
        train = [utts[i] for i in train_idx]
        test = [other.utterances[i] for i in test_idx]
        corpora.append({"name": other.name, "path": str(s.test_path), "clips": len(test), "role": "test"})
        protocol = (
            f"cross-corpus: train on {corpus.name}, test on {other.name} "
            f"over the shared emotions ({', '.join(shared)})"
        )
    else:
        train, test = utts, []
        protocol = f"all {corpus.name} speakers train; no test speakers (split.protocol: none)"

    test_speakers = {u.speaker for u in test}
    for src in d.extra:
        extra = load_corpus(src.path, src.corpus, emotions=d.emotions)
        clash = sorted({u.speaker for u in extra.utterances} & test_speakers)
        if clash:
            raise CorpusError(
                f"{src.path}: extra training corpus has test speaker(s) {_short(clash)}; "
                "extra corpora may only add training speakers"
            )
        kept = [u for u in extra.utterances if shared is None or u.emotion in shared]
        train += kept
        corpora.append({"name": extra.name, "path": str(src.path), "clips": len(kept), "role": "extra"})
    if d.extra:
        protocol += f"; extra training corpora: {', '.join(str(src.path) for src in d.extra)}"
    if not train:
        raise CorpusError(f"{d.path}: no training utterances left after the split")

    fraction = cfg.train.val_fraction
    if fraction > 0:
        fit_idx, val_idx, validation = _validation_split(
            train, np.arange(len(train)), fraction, cfg.train.seed
        )
        fit_utts, val_utts = [train[i] for i in fit_idx], [train[i] for i in val_idx]
    else:
        fit_utts, val_utts, validation = train, [], "none"
    return TrainingSplit(
        train=fit_utts,
        val=val_utts,
        test=test,
        protocol=protocol,
        validation=validation,
        shared_emotions=shared,
        corpora=corpora,
    )


def is_global_zero() -> bool:
    """False in the extra processes of a multi-process (DDP) run, which must not write results."""
    import os

    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _card_licence(split: TrainingSplit) -> str:
    from emovox.download import SOURCES

    parts = []
    for c in split.corpora:
        if c["role"] == "test":
            continue
        source = SOURCES.get(c["name"])
        text = (
            f"{source.license} ({c['name']})"
            if source
            else f"Not recorded by emovox for the {c['name']} data at {c['path']}: check its licence"
        )
        if text not in parts:
            parts.append(text)
    return "; ".join(parts)


def _without_predictions(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if metrics is None else {k: v for k, v in metrics.items() if k != "predictions"}


def run_training(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    split: TrainingSplit | None = None,
    resume: bool = False,
    progress: bool = True,
    source: str = "config",
    callbacks: Sequence[Any] = (),
) -> dict[str, Any] | None:
    """Everything ``emovox train`` does after parsing: split, fit, evaluate, report, bundle.

    Writes into ``run_dir``: ``config.yaml`` (resolved), ``checkpoints/``, ``logs/``,
    ``history.json``, ``metrics.json`` (test scores plus ``training`` and ``validation``
    sections), ``predictions.csv``, ``plots/*.png``, ``report.md`` and, for the neural families,
    the bundle ``model/`` (:func:`emovox.bundle.save_bundle`; the SVM is not bundled since bundles
    never pickle). Returns the metrics dict, or None in the non-zero ranks of a DDP run.
    """

    with cpu_threads(cfg.train.threads):
        return _run_training(
            cfg,
            Path(run_dir),
            split=split,
            resume=resume,
            progress=progress,
            source=source,
            callbacks=callbacks,
        )


def _run_training(
    cfg: RunConfig,
    run_dir: Path,
    *,
    split: TrainingSplit | None,
    resume: bool,
    progress: bool,
    source: str,
    callbacks: Sequence[Any],
) -> dict[str, Any] | None:
    from emovox.bundle import DEFAULT_PREPROCESSING, ModelCard, save_bundle
    from emovox.evaluation import evaluate_model, load_waves

    run_dir.mkdir(parents=True, exist_ok=True)
    split = split if split is not None else training_split(cfg, source=source)
    if is_global_zero():
        cfg.dump(run_dir / "config.yaml")
    min_duration = float(DEFAULT_PREPROCESSING["min_duration"])
    waves, skipped = load_waves(
        [*split.train, *split.val, *split.test],
        trim=cfg.data.trim_silence,
        min_duration=min_duration,
        progress=progress,
    )
    started = time.perf_counter()
    result = fit(
        cfg,
        split.train,
        split.val,
        run_dir,
        waves=waves,
        resume=resume,
        progress=progress,
        callbacks=callbacks,
    )
    train_seconds = time.perf_counter() - started
    if not is_global_zero():
        return None

    model = result.model
    known = set(model.labels)
    val_utts = [u for u in split.val if u.path in waves and u.emotion in known]
    val_metrics = (
        _without_predictions(evaluate_model(model, val_utts, waves, progress=False)) if val_utts else None
    )
    test_utts = [u for u in split.test if u.path in waves]
    test_metrics = (
        evaluate_model(
            model, test_utts, waves, shared_only=split.shared_emotions is not None, progress=progress
        )
        if test_utts
        else None
    )
    training = {
        "config": cfg.name,
        "family": cfg.model.family,
        "protocol": split.protocol,
        "validation": split.validation,
        "corpora": split.corpora,
        "train_speakers": split.speakers("train"),
        "val_speakers": split.speakers("val"),
        "test_speakers": split.speakers("test"),
        "n_train": sum(u.path in waves for u in split.train),
        "n_val": len(val_utts),
        "n_test": len(test_utts),
        "labels": list(model.labels),
        "epochs": len(result.history),
        "best_val_ua": result.best_val_ua,
        "train_seconds": train_seconds,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "bundle": None,
    }
    bundled = cfg.model.family != "svm"
    if bundled:
        training["bundle"] = str(run_dir / BUNDLE_DIR)
    metrics: dict[str, Any] = dict(test_metrics) if test_metrics is not None else {"test": None}
    metrics.update(
        kind="train",
        training=training,
        validation=val_metrics,
        skipped=[{"path": str(p), "reason": r} for p, r in skipped],
    )
    _write_run_report(run_dir, cfg, split, metrics, result.history)
    if bundled:
        per_emotion: dict[str, int] = {}
        for u in split.train:
            per_emotion[u.emotion] = per_emotion.get(u.emotion, 0) + 1
        summary = {
            "corpora": ", ".join(f"{c['name']} ({c['role']}, {c['clips']} clips)" for c in split.corpora),
            "protocol": split.protocol,
            "utterances": training["n_train"],
            "per_emotion": per_emotion,
            # every speaker the model saw, validation included (it chose the checkpoint), so that
            # `emovox evaluate` can flag a test set that is not speaker-independent for this model
            "speakers": sorted({*training["train_speakers"], *training["val_speakers"]}),
            "train_speakers": training["train_speakers"],
            "val_speakers": training["val_speakers"],
            "test_speakers": training["test_speakers"],
            "epochs": training["epochs"],
            "best_val_ua": result.best_val_ua,
            "config": cfg.name,
        }
        if test_metrics is not None:
            scored = (
                f"Scores are on the {len(training['test_speakers'])} test speaker(s) "
                f"({_short(training['test_speakers'])}), none of whom was used for training or validation."
            )
            bundle_metrics: Mapping[str, Any] = _without_predictions(test_metrics) or {}
        else:
            ua = f"{val_metrics['ua']:.3f}" if val_metrics else "n/a"
            scored = (
                "No test speakers were held out, so no unbiased score exists for this model; the "
                f"validation UA ({ua}) is optimistic because validation chose the checkpoint."
            )
            bundle_metrics = {"test": None, "validation": val_metrics}
        card = ModelCard(
            data=(
                f"{training['n_train']} clips from {len(training['train_speakers'])} speakers "
                f"({_short(training['train_speakers'])}); validation: {training['n_val']} clips "
                f"({split.validation}: {_short(training['val_speakers']) or 'none'})."
            ),
            protocol=f"{split.protocol[0].upper()}{split.protocol[1:]}. {scored}",
            licence=_card_licence(split),
            title=f"emovox {cfg.model.family} model ({cfg.name or 'unnamed run'})",
        )
        save_bundle(
            model.net,
            run_dir / BUNDLE_DIR,
            metrics=bundle_metrics,
            card=card,
            training=summary,
            preprocessing={"trim_silence": cfg.data.trim_silence, "min_duration": min_duration},
        )
    return metrics


def _write_run_report(
    run_dir: Path,
    cfg: RunConfig,
    split: TrainingSplit,
    metrics: dict[str, Any],
    history: Sequence[Mapping[str, Any]],
) -> Path:
    """report.md + metrics.json + plots: :func:`emovox.evaluation.write_report` when there is a test
    set, then a training section (speakers, validation scores and confusion, files of the run)."""
    from emovox import plots
    from emovox.evaluation import _jsonable, write_report

    training = metrics["training"]
    title = f"{cfg.name or cfg.model.family}: {cfg.model.family} — {split.protocol}"
    report = run_dir / "report.md"
    if "confusion" not in metrics:  # no test set: write_report needs test scores
        plot_dir = run_dir / "plots"
        plot_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"# {title}", "", "## Scores", ""]
        lines += [
            "No test speakers (split.protocol: none): there is no speaker-independent score for this "
            "run. Validation scores below are optimistic, since validation chose the checkpoint.",
            "",
        ]
        skipped = metrics.get("skipped") or []
        if skipped:
            lines += [f"{len(skipped)} file(s) could not be loaded and were skipped:", ""]
            lines += [f"- {s['reason']}" for s in skipped[:20]] + [""]
        if history:
            png = plots.plot_history(history, plot_dir / "history_training.png", title="training")
            lines += ["## Training curves", "", f"![training curves](plots/{png.name})", ""]
        (run_dir / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2))
        report.write_text("\n".join(lines))
    else:
        write_report(
            run_dir, metrics, history=list(history) or None, title=title, config=None, protocol=split.protocol
        )
    lines = ["## Training", ""]
    lines += [
        "| | speakers | clips |",
        "|---|---|---|",
        f"| train | {', '.join(training['train_speakers'])} | {training['n_train']} |",
        f"| validation ({split.validation}) | {', '.join(training['val_speakers']) or '-'} | "
        f"{training['n_val']} |",
        f"| test | {', '.join(training['test_speakers']) or '-'} | {training['n_test']} |",
        "",
        f"{training['epochs']} epoch(s) in {training['train_seconds']:.1f} s; best validation UA "
        f"{_fmt_score(training['best_val_ua'])}.",
        "",
    ]
    val = metrics.get("validation")
    if val:
        png = plots.plot_confusion(
            val["confusion"], val["labels"], run_dir / "plots" / "confusion_validation.png"
        )
        lines += [
            "### Validation (model selection)",
            "",
            f"WA {val['wa']:.3f}, UA {val['ua']:.3f}, macro-F1 {val['macro_f1']:.3f} on {val['n']} clips "
            "(optimistic: these clips chose the checkpoint).",
            "",
            f"![validation confusion matrix](plots/{png.name})",
            "",
        ]
    files = ["config.yaml (resolved configuration)", "history.json", "logs/ (Lightning CSV log)"]
    if training["checkpoint"]:
        files.insert(1, f"checkpoints/ (used: {Path(training['checkpoint']).name}; last.ckpt resumes)")
    if training["bundle"]:
        files.append(
            f"{BUNDLE_DIR}/ (model bundle: `emovox predict --model {run_dir / BUNDLE_DIR} clip.wav`)"
        )
    else:
        files.append(
            "no bundle: the svm family is not bundled (bundles hold safetensors weights, never pickles)"
        )
    lines += ["### Files", ""] + [f"- {f}" for f in files] + [""]
    import yaml

    lines += [
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    with report.open("a") as f:
        f.write("\n" + "\n".join(lines))
    return report


def _fmt_score(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"
