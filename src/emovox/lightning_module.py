"""The Lightning side of training the neural families: :class:`EmotionModule`, the LightningModule
around an :class:`~emovox.models.EmotionNet` (cross-entropy, SpecAugment, mixup, label smoothing,
class weights, Adam/AdamW with a warm-up + cosine or one-cycle schedule), and
:class:`SaveOnInterrupt`, the callback that saves a resumable ``last.ckpt`` on Ctrl-C.

Importing this module imports Lightning; :mod:`emovox.fitting` imports it only when a neural
family is trained.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as nnf
from lightning.pytorch.callbacks import RichProgressBar
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from emovox.augment import SpecAugment
from emovox.config import RunConfig
from emovox.errors import EmovoxError
from emovox.features import pool_stats
from emovox.models import EmotionNet


class EmotionModule(L.LightningModule):
    """Cross-entropy training of an :class:`EmotionNet` with SpecAugment and mixup.

    ``class_weights`` weight the loss per class (None: equal); ``steps_per_epoch`` is the fallback
    for the schedule length when Lightning cannot estimate the optimiser steps.
    """

    def __init__(
        self,
        net: EmotionNet,
        cfg: RunConfig,
        class_weights: torch.Tensor | None = None,
        steps_per_epoch: int = 1,
        *,
        label_masks: list[list[bool]] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.tcfg = cfg.train
        self.steps_per_epoch = steps_per_epoch
        n_classes = len(net.labels)
        self.spec = SpecAugment(cfg.augment) if cfg.augment.spec_enabled and not net.pooled else None
        self.register_buffer(
            "class_weights",
            class_weights if class_weights is not None else torch.ones(n_classes),
            persistent=False,
        )
        # multi-corpus training: targets are (class, domain) pairs and a domain's clips are trained
        # over the classes its corpus labels (FitData.label_masks)
        masks = (
            torch.tensor(label_masks, dtype=torch.bool) if label_masks else torch.ones(1, n_classes).bool()
        )
        self.register_buffer("label_masks", masks, persistent=False)
        self.val_ua = MulticlassAccuracy(num_classes=n_classes, average="macro")
        self.val_wa = MulticlassAccuracy(num_classes=n_classes, average="micro")
        self.val_loss = MeanMetric()
        self.train_loss = MeanMetric()
        self.history: list[dict[str, float]] = []
        # frozen pretrained encoder weights are rebuilt from model.params.encoder on resume, so the
        # checkpoints saved every epoch hold only what training changes
        frozen = net.family == "encoder" and not any(p.requires_grad for p in net.extractor.parameters())
        self.frozen_prefix = "net.extractor." if frozen else ""
        self.strict_loading = not frozen
        self.prepooled = net.pooled and net.family == "encoder"  # whole-clip statistics from the cache

    def _inputs(self, batch: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised backbone inputs from waveforms ``[B, T]`` or precomputed features ``[B, C, F]``."""
        # features in float32 even under mixed precision: log-power in fp16 loses the quiet frames
        with torch.autocast(device_type=self.device.type, enabled=False):
            if batch.dim() == 2:
                return self.net.inputs(batch.float(), lengths)
            x = batch.float()
            if self.prepooled and x.shape[-1] == 1:
                x = x[..., 0]
            elif self.net.pooled:
                x = pool_stats(x, lengths, self.net.feature_cfg.stats)
            return self.net.normalize(x, lengths), lengths

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 2:  # (class, domain) pairs
            return masked_cross_entropy(
                logits.float(),
                target[:, 0],
                self.label_masks[target[:, 1]],
                self.class_weights,
                self.tcfg.label_smoothing,
            )
        return nnf.cross_entropy(
            logits.float(), target, weight=self.class_weights, label_smoothing=self.tcfg.label_smoothing
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        wave, lengths, target = batch
        x, frames = self._inputs(wave, lengths)
        if self.spec is not None:
            x = self.spec(x, frames)
        if self.tcfg.mixup > 0 and x.shape[0] > 1:
            lam = float(np.random.beta(self.tcfg.mixup, self.tcfg.mixup))
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
        if self.frozen_prefix:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(self.frozen_prefix)]:
                del state[key]
        checkpoint["emovox_history"] = [dict(h) for h in self.history]
        checkpoint["emovox_model"] = self.net.config()
        # the running mean of the epoch's training loss, so an epoch resumed mid-way reports the
        # same train_loss as an uninterrupted one
        checkpoint["emovox_train_loss"] = {
            "mean_value": self.train_loss.mean_value.detach().cpu().clone(),
            "weight": self.train_loss.weight.detach().cpu().clone(),
            "updates": int(self.train_loss.update_count),
        }

    def load_trained(self, state: dict[str, Any], source: Path) -> None:
        """Load a checkpoint's ``state_dict``; only the frozen encoder's weights may be absent from it."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (self.frozen_prefix and k.startswith(self.frozen_prefix))]
        if missing or unexpected:
            raise EmovoxError(
                f"{source}: checkpoint does not match the model "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [dict(h) for h in checkpoint.get("emovox_history", [])]
        loss = checkpoint.get("emovox_train_loss")
        if loss and loss["updates"]:
            self.train_loss.mean_value = loss["mean_value"].to(self.train_loss.mean_value.device)
            self.train_loss.weight = loss["weight"].to(self.train_loss.weight.device)
            self.train_loss._update_count = int(loss["updates"])

    def configure_optimizers(self) -> Any:
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if self.tcfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(params, lr=self.tcfg.lr, weight_decay=self.tcfg.weight_decay)
        # optimiser steps of this process (DDP shards batches; Lightning knows the real count)
        estimated = float(self.trainer.estimated_stepping_batches)
        fallback = self.tcfg.epochs * self.steps_per_epoch
        total = max(1, int(estimated) if math.isfinite(estimated) else fallback)
        per_epoch = total / max(1, self.tcfg.epochs)
        warmup = min(total - 1, int(round(self.tcfg.warmup_epochs * per_epoch)))
        if self.tcfg.scheduler == "none":
            return optimizer
        if self.tcfg.scheduler == "onecycle":
            scheduler: Any = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=self.tcfg.lr, total_steps=total, pct_start=max(warmup, 1) / total
            )
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def masked_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    allowed: torch.Tensor,
    weight: torch.Tensor,
    smoothing: float,
) -> torch.Tensor:
    """Cross-entropy of each row over its ``allowed`` classes only (``[B, K]`` bool), with label
    smoothing spread over those classes and per-class ``weight``; where every class is allowed it
    equals ``nnf.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)``."""
    logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    logp = torch.where(allowed, logp, torch.zeros_like(logp))
    picked = -logp.gather(1, target[:, None])[:, 0]
    w_target = weight[target]
    smooth = -(logp * weight * allowed).sum(-1) / allowed.sum(-1)
    per_row = (1 - smoothing) * w_target * picked + smoothing * smooth
    return per_row.sum() / w_target.sum()


def warmup_cosine(warmup: int, total: int) -> Any:
    """LR factor per step: linear warm-up to 1, then cosine decay to 1% of the peak."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def quiet_lightning() -> None:
    """Drop Lightning's per-run info lines (hardware summary, tips); warnings and errors still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


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


# --------------------------------------------------------------------------- resuming: the same run


def rng_states() -> dict[str, Any]:
    """The global torch (CPU and CUDA), NumPy and Python random states, as checkpoint-safe values
    (tensors, ints, lists: loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "internal": [int(x) for x in internal], "gauss_next": gauss_next},
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


class ResumeState(L.pytorch.Callback):
    """Makes a resumed run continue the interrupted one exactly.

    Every checkpoint stores the random state of the training steps (dropout, SpecAugment and mixup
    draw from the global generators; the data's randomness comes from the
    :class:`~emovox.datasets.EpochSampler`) and the position of the training
    :class:`~emovox.datasets.ResumableLoader` in its epoch. Loading one makes the loader skip the
    batches already trained on and restores the random state right before the first training step
    after the resume. The sampler is told the epoch at every epoch start (also where Lightning
    wraps it, e.g. under DDP).
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self._pending: dict[str, Any] | None = None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.loader.sampler.set_epoch(trainer.current_epoch)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states(), "loader": self.loader.position()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # called while the checkpoint is restored, before any batch is drawn
        self._pending = state_dict.get("rng")
        if state_dict.get("loader"):
            self.loader.resume_at(state_dict["loader"])


class StopRequest(L.pytorch.Callback):
    """Ends training at the end of the current batch once :meth:`request` was called (the first
    Ctrl-C): the KeyboardInterrupt then comes where the training state is whole, so the saved
    ``last.ckpt`` resumes into exactly the uninterrupted run."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.requested:
            raise KeyboardInterrupt


class EpochBar(RichProgressBar):
    """Lightning's rich progress bar, counting epochs from 1 like ``history.json`` and prefixed with
    ``label`` (e.g. the cross-validation fold)."""

    def __init__(self, label: str | None = None) -> None:
        super().__init__(leave=True)
        self.label = label

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            text += f"/{self.trainer.max_epochs}"
        if self.label:
            text = f"{self.label} {text}"
        if len(self.validation_description) > len(text):
            text = f"{text:{len(self.validation_description)}}"
        return text
