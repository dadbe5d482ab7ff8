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

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from emovox.augment import WaveAugment
from emovox.cache import FeatureCache
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
    frame_stats,
    normalization_stats,
    pooled_columns,
)
from emovox.errors import ConfigError, CorpusError
from emovox.features import pad_batch, pool_stats
from emovox.models import MODELS, EmotionNet
from emovox.runtime import torch_threads
from emovox.svm import fit_svm
from emovox.trainer import (
    BEST_CHECKPOINT,  # noqa: F401 (re-exported: emovox.fitting.BEST_CHECKPOINT)
    CHECKPOINT_DIR,
    CSV_LOG,
    LAST_CHECKPOINT,
    TrainingInterrupted,  # noqa: F401 (re-exported: emovox.fitting.TrainingInterrupted)
    build_callbacks,
    build_trainer,
    check_resumable,
    read_csv,
    run_trainer,
)


class TorchClassifier:
    """Batched, length-sorted inference with an :class:`EmotionNet` (``.net``)."""

    def __init__(
        self,
        net: EmotionNet,
        *,
        batch_size: int = 16,
        device: str | torch.device | None = None,
        cache: Any = None,
    ) -> None:
        self.net = net.eval()
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.net.to(self.device)
        self.cache = cache  # a FeatureCache: front-end features of clips seen before are not recomputed

    @property
    def labels(self) -> list[str]:
        return list(self.net.labels)

    @property
    def groupable(self) -> bool:
        """Whether :meth:`predict_proba` can use ``groups`` (a speaker-normalised model)."""
        return bool(getattr(self.net, "speaker_norm", False))

    def predict_proba(self, waves: Sequence[np.ndarray], groups: Sequence[str] | None = None) -> np.ndarray:
        """Class probabilities ``[N, K]`` (rows sum to 1) for 16 kHz mono waveforms.

        ``groups`` (one key per clip, e.g. the speaker) switches a speaker-normalised model to its
        speaker head for every group of at least :data:`~emovox.speaker_stats.MIN_GROUP_CLIPS` clips."""
        logits = torch.from_numpy(self.predict_logits(waves, groups))
        return torch.softmax(logits, dim=-1).numpy().astype(np.float64)

    @torch.inference_mode()
    def _raw_stats(self, waves: Sequence[np.ndarray], progress: bool = False) -> torch.Tensor:
        """Raw pooled statistics ``[N, D]`` of a pooled model (from the cache when it has one)."""
        if self.cache is not None:
            from emovox.cache import cached_features

            feats = cached_features(
                waves, self.net.extractor, self.cache, batch_size=self.batch_size, progress=progress
            )
            x = pooled_columns(feats, self.net.feature_cfg.stats)
            return torch.from_numpy(np.stack([c[:, 0] for c in x]))
        from emovox.progress import progress_bar

        rows = []
        with progress_bar(enabled=progress) as bar:
            task = bar.add_task("encoding", total=len(waves))
            for start in range(0, len(waves), self.batch_size):
                wave, lengths = pad_batch(list(waves[start : start + self.batch_size]))
                rows.append(self.net.raw_inputs(wave.to(self.device), lengths.to(self.device))[0].cpu())
                bar.advance(task, wave.shape[0])
        return torch.cat(rows)

    @torch.inference_mode()
    def _grouped_logits(self, raw: torch.Tensor, groups: Sequence[str], out: np.ndarray) -> None:
        from emovox.speaker_stats import MIN_GROUP_CLIPS

        if len(groups) != len(out):
            raise ValueError(f"groups: {len(groups)} keys for {len(out)} clips")
        keys = np.asarray(list(groups))
        for g in np.unique(keys):
            idx = np.flatnonzero(keys == g)
            if len(idx) >= MIN_GROUP_CLIPS:
                out[idx] = self.net.speaker_logits(raw[idx].to(self.device)).double().cpu().numpy()

    @torch.inference_mode()
    def _pooled_logits(self, raw: torch.Tensor) -> np.ndarray:
        """Calibrated logits of the plain head from raw pooled statistics ``[N, D]``."""
        out = np.zeros((len(raw), len(self.labels)), dtype=np.float64)
        for start in range(0, len(raw), 256):  # pooled heads ignore the frame counts
            x = raw[start : start + 256].to(self.device)
            frames = torch.ones(len(x), dtype=torch.long, device=self.device)
            out[start : start + len(x)] = (
                self.net.head(self.net.normalize(x, frames), frames).double().cpu().numpy()
            )
        return out

    @torch.inference_mode()
    def predict_proba_groupings(
        self,
        waves: Sequence[np.ndarray],
        groupings: Sequence[Sequence[str] | None],
        *,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """:meth:`predict_proba` under several groupings (``None`` = each clip alone) of the same
        clips, with the encoder run once: scoring a speaker-normalised model plain, per speaker and
        per corpus costs one extraction, not five."""
        for groups in groupings:
            if groups is not None and len(groups) != len(waves):
                raise ValueError(f"groups: {len(groups)} keys for {len(waves)} clips")
        if not waves:
            return [np.zeros((0, len(self.labels)), dtype=np.float64) for _ in groupings]
        if not self.groupable:  # groups change nothing: one prediction
            probs = self.predict_proba(waves)
            return [probs.copy() for _ in groupings]
        raw = self._raw_stats(waves, progress)
        plain = self._pooled_logits(raw)
        out = []
        for groups in groupings:
            logits = plain.copy()
            if groups is not None:
                self._grouped_logits(raw, groups, logits)
            out.append(torch.softmax(torch.from_numpy(logits), dim=-1).numpy().astype(np.float64))
        return out

    @torch.inference_mode()
    def predict_logits(self, waves: Sequence[np.ndarray], groups: Sequence[str] | None = None) -> np.ndarray:
        """Calibrated logits ``[N, K]`` (``softmax`` of them is :meth:`predict_proba`)."""
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float64)
        if groups is not None and self.groupable:  # pooled statistics once, for both heads
            if len(groups) != len(waves):
                raise ValueError(f"groups: {len(groups)} keys for {len(waves)} clips")
            if not waves:
                return out
            raw = self._raw_stats(waves)
            out = self._pooled_logits(raw)
            self._grouped_logits(raw, groups, out)
            return out
        order = sorted(range(len(waves)), key=lambda i: np.asarray(waves[i]).size)
        feats = None
        if self.cache is not None:
            from emovox.cache import cached_features

            feats = cached_features(waves, self.net.extractor, self.cache, batch_size=self.batch_size)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if feats is None:
                wave, lengths = pad_batch([waves[i] for i in idx])
                logits = self.net(wave.to(self.device), lengths.to(self.device))
            else:
                x, frames, _ = collate_features([(feats[i], 0) for i in idx])
                x, frames = x.to(self.device), frames.to(self.device)
                if self.net.pooled:
                    x = pool_stats(x, frames, self.net.feature_cfg.stats)
                logits = self.net.head(self.net.normalize(x, frames), frames)  # calibrated
            out[idx] = logits.double().cpu().numpy()
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


def label_domains(
    train: Sequence[Utterance], val: Sequence[Utterance], labels: Sequence[str]
) -> tuple[list[int], list[list[bool]]]:
    """``(domain of each training clip, label mask of each domain)`` when some corpus among the
    training clips lacks one of ``labels`` (it is never labelled there, e.g. TESS has no "calm");
    ``([], [])`` when every corpus has every label. A corpus' emotions are those of its clips in
    ``train`` and ``val``."""
    present: dict[str, set[str]] = {}
    for u in [*train, *val]:
        present.setdefault(u.corpus, set()).add(u.emotion)
    corpora = sorted({u.corpus for u in train})
    if all(present[c] >= set(labels) for c in corpora):
        return [], []
    index = {c: i for i, c in enumerate(corpora)}
    masks = [[label in present[c] for label in labels] for c in corpora]
    return [index[u.corpus] for u in train], masks


def _gather(
    utts: Sequence[Utterance], waves: Mapping[Path, np.ndarray], labels: Sequence[str]
) -> tuple[list[Utterance], list[np.ndarray], list[int], list[str]]:
    """The utterances that can be used (audio loaded, emotion among ``labels``), their waves,
    class indices and speakers."""
    index = {label: i for i, label in enumerate(labels)}
    kept = [u for u in utts if u.path in waves and u.emotion in index]
    return kept, [waves[u.path] for u in kept], [index[u.emotion] for u in kept], [u.speaker for u in kept]


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
    train_kept, train_waves, train_y, train_groups = _gather(train, waves, labels)
    val_kept, val_waves, val_y, val_groups = _gather(val, waves, labels)
    domains, masks = label_domains(train_kept, val_kept, labels)
    if cfg.augment.val_copies and val_waves:  # degraded validation speakers (augment.val_copies)
        from emovox.augment import validation_copies

        copies, source, groups = validation_copies(val_waves, val_groups, cfg.augment, cfg.train.seed)
        val_waves, val_y = [*val_waves, *copies], [*val_y, *(val_y[i] for i in source)]
        val_groups = [*val_groups, *groups]  # each (speaker, copy) is a session of its own
    data = FitData(labels, train_waves, train_y, val_waves, val_y, train_groups, val_groups, domains, masks)
    with cpu_threads(cfg.train.threads):
        return fitter.fit(
            cfg, data, run_dir, resume=resume, progress=progress, callbacks=callbacks, label=label
        )


cpu_threads = torch_threads
"""Run the block with ``threads`` PyTorch CPU threads (None = leave the setting alone): the one
helper of :mod:`emovox.runtime`, under the name training code has always imported."""


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


def uses_cache(cfg: RunConfig) -> bool:
    """Whether training reads front-end features from the disk cache (a deterministic, frozen front
    end: no waveform augmentation, no encoder layers being fine-tuned) instead of waveforms."""
    finetune = cfg.model.family == "encoder" and int(cfg.model.params.get("finetune_top", 0)) > 0
    return not cfg.augment.wave_enabled and not finetune


def _crop_frames(net: EmotionNet, crop: int, features: Any) -> int:
    """A training crop of ``crop`` samples, in the front end's frames."""
    per_second = getattr(net.extractor, "frames_per_second", None)
    if per_second:
        return max(1, int(crop * per_second // features.sample_rate))
    return 1 + crop // features.hop_length


def _feature_datasets(
    cfg: RunConfig,
    net: EmotionNet,
    data: FitData,
    device: str,
    *,
    crop: int | None,
    progress: bool,
    resume: bool,
) -> tuple[FeatureDataset, list[Any], dict[str, Any] | None]:
    """:func:`_loaders` with a deterministic front end: ``(train dataset, val features, pooled)``.

    The clips' frame features are extracted once through the disk cache (degraded copies too, for
    the encoder family's ``augment.copies``); the encoder family's ``pooling: stats`` turns them into
    whole-clip statistics (``pooled``, else None). Sets the normaliser of ``net`` unless ``resume``.
    """
    from emovox.cache import cached_features

    tcfg = cfg.train
    pooled = None
    net.extractor.to(device)
    feats = cached_features(
        [*data.train_waves, *data.val_waves], net.extractor, FeatureCache(),
        batch_size=tcfg.batch_size, progress=progress,
    )  # fmt: skip
    train_feats, val_feats = feats[: len(data.train_waves)], feats[len(data.train_waves) :]
    train_y, train_groups = data.targets(data.train_y), list(data.train_groups)
    if cfg.augment.copies and net.family == "encoder":  # degraded copies, cached like the clips
        from emovox.augment import channel_copies

        copies, source, groups = channel_copies(data.train_waves, train_groups, cfg.augment, tcfg.seed)
        train_feats = [
            *train_feats,
            *cached_features(
                copies, net.extractor, FeatureCache(), batch_size=tcfg.batch_size, progress=progress
            ),
        ]
        train_y += [train_y[i] for i in source]
        train_groups += groups
    net.extractor.cpu()
    prepooled = net.pooled and net.family == "encoder"
    if prepooled:  # whole-clip statistics once per clip: training never touches frames
        train_feats = pooled_columns(train_feats, cfg.features.stats)
        val_feats = pooled_columns(val_feats, cfg.features.stats)
        pooled = {
            "train": train_feats,
            "val": val_feats,
            "train_y": train_y,
            "train_groups": train_groups,
        }
    if not resume and (prepooled or not net.pooled):  # normaliser statistics from the cache
        net.set_normalization(*frame_stats(train_feats))
    elif not resume:
        net.set_normalization(
            *normalization_stats(net, data.train_waves, batch_size=tcfg.batch_size, device=device)
        )
    frames = None if crop is None or prepooled else _crop_frames(net, crop, cfg.features)
    return FeatureDataset(train_feats, train_y, crop=frames), val_feats, pooled


def _loaders(
    cfg: RunConfig, net: EmotionNet, data: FitData, device: str, *, progress: bool, resume: bool
) -> tuple[DataLoader, DataLoader | None, int, Any]:
    """``(train_loader, val_loader or None, steps_per_epoch, pooled)``; sets the normaliser of ``net``
    (unless ``resume``: the checkpoint restores it).

    With waveform augmentation (or encoder layers being fine-tuned) the loaders yield waveforms;
    otherwise frame features extracted once through the disk cache (train items are random
    feature-domain crops; the encoder family's ``pooling: stats`` trains on whole-clip statistics,
    returned as ``pooled = (train_columns, val_columns)``, else None).
    """
    tcfg = cfg.train
    crop = int(cfg.data.max_seconds * cfg.features.sample_rate) if cfg.data.max_seconds else None
    cached = uses_cache(cfg)
    pooled = None
    val_feats: list[Any] = []
    if not cached:
        augment = WaveAugment(cfg.augment, cfg.features.sample_rate) if cfg.augment.wave_enabled else None
        train_ds: Dataset = WaveDataset(
            data.train_waves, data.targets(data.train_y), crop=crop, augment=augment
        )
        batches = collate
        if not resume:  # a resumed run restores the normaliser from its checkpoint
            net.set_normalization(
                *normalization_stats(net, data.train_waves, batch_size=tcfg.batch_size, device=device)
            )
    else:  # deterministic front end: extract once (disk cache), train on feature crops
        train_ds, val_feats, pooled = _feature_datasets(
            cfg, net, data, device, crop=crop, progress=progress, resume=resume
        )
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
        if not cached:
            val_ds: Dataset = WaveDataset([data.val_waves[i] for i in order], val_y)
        else:
            val_ds = FeatureDataset([val_feats[i] for i in order], val_y)
        val_loader = DataLoader(
            val_ds, shuffle=False, generator=torch.Generator().manual_seed(tcfg.seed), **loader_args
        )
    return train_loader, val_loader, steps_per_epoch, pooled


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
    if net.family == "encoder":
        net.extractor.freeze(int(cfg.model.params.get("finetune_top", 0)))
    device = _device(cfg)
    train_loader, val_loader, steps_per_epoch, pooled = _loaders(
        cfg, net, data, device, progress=progress, resume=resume
    )
    net.cpu()
    module = EmotionModule(net, cfg, _class_weights(cfg, data), steps_per_epoch, label_masks=data.label_masks)
    all_callbacks, best, stop = build_callbacks(
        cfg,
        ckpt_dir,
        train_loader,
        validate=val_loader is not None,
        progress=progress,
        label=label,
        extra=callbacks,
    )
    # Lightning's CSV logger starts metrics.csv afresh: keep the rows from before an interruption
    earlier_log = read_csv(run_dir / CSV_LOG) if resume else []
    quiet_lightning()
    trainer = build_trainer(cfg, run_dir, all_callbacks, steps_per_epoch, progress)
    run_trainer(
        trainer,
        module,
        train_loader,
        val_loader,
        run_dir,
        resume=resume,
        earlier_log=earlier_log,
        stop=stop,
    )

    chosen, best_ua = _load_best(module, best, last)
    history = [dict(h) for h in module.history]
    if trainer.is_global_zero:
        (run_dir / "history.json").write_text(json.dumps(history, indent=2))
    clf = TorchClassifier(
        module.net.cpu().eval(), batch_size=tcfg.batch_size, cache=FeatureCache() if uses_cache(cfg) else None
    )
    if data.val_waves and tcfg.calibrate:
        _calibrate(clf, data, run_dir if trainer.is_global_zero else None)
    if net.speaker_norm:
        if pooled is None or not data.train_groups:
            raise ConfigError(
                "model.params.speaker_norm: needs cached statistics and speaker ids of training clips"
            )
        _fit_speaker_head(cfg, clf.net, data, pooled, run_dir, progress=progress)
    return FitResult(
        model=clf,
        best_val_ua=best_ua,
        history=history,
        checkpoint=chosen,
    )


def _load_best(module: Any, best: Any, last: Path) -> tuple[Path, float]:
    """Load the best checkpoint (``last.ckpt`` when nothing was validated) into ``module``:
    ``(the checkpoint, its validation UA or NaN)``."""
    best_path = Path(best.best_model_path) if best is not None and best.best_model_path else None
    chosen = best_path or last
    state = torch.load(chosen, map_location="cpu", weights_only=True)
    module.load_trained(state["state_dict"], chosen)
    best_ua = float(best.best_model_score) if best_path and best.best_model_score is not None else math.nan
    return chosen, best_ua


def _group_columns(net: EmotionNet, columns: Sequence[np.ndarray], groups: Sequence[str]) -> list[np.ndarray]:
    """Pooled statistics of each clip standardised over its speaker's clips (group_normalize)."""
    x = torch.from_numpy(np.stack([np.asarray(c, dtype=np.float32)[:, 0] for c in columns]))
    out = torch.empty_like(x)
    keys = np.asarray(groups)
    with torch.no_grad():
        for g in np.unique(keys):
            idx = torch.from_numpy(np.flatnonzero(keys == g))
            out[idx] = net.group_normalize(x[idx])
    return [row.numpy()[:, None] for row in out]


def _fit_speaker_head(
    cfg: RunConfig, net: EmotionNet, data: FitData, pooled: Any, run_dir: Path, *, progress: bool
) -> None:
    """Train ``net.speaker_backbone`` on per-speaker standardised statistics (validation speakers
    standardised the same way), with the main head's recipe, in ``run_dir/speaker_head/``; then fit
    its temperature on the validation speakers."""
    from emovox.calibration import fit_temperature
    from emovox.lightning_module import EmotionModule

    train_cols, val_cols = pooled["train"], pooled["val"]
    train_y, train_groups = pooled["train_y"], pooled["train_groups"]
    x = np.stack([c[:, 0] for c in train_cols]).astype(np.float64)
    keys = np.asarray(train_groups)
    within = np.mean([x[keys == g].var(0) for g in np.unique(keys)], axis=0)
    net.speaker_prior_var.copy_(torch.from_numpy(within).float().clamp(min=1e-10))
    train_norm = _group_columns(net, train_cols, train_groups)
    val_norm = _group_columns(net, val_cols, data.val_groups) if val_cols else []
    params = {k: v for k, v in net.params.items() if k != "speaker_norm"}
    shadow = EmotionNet(net.feature_cfg, net.family, params, net.labels, encoder=net.extractor)
    shadow.set_normalization(torch.zeros(shadow.input_dim), torch.ones(shadow.input_dim))
    tcfg = cfg.train
    loader_args: dict[str, Any] = {"batch_size": tcfg.batch_size, "collate_fn": collate_features}
    drop_last = len(train_norm) > tcfg.batch_size
    train_ds = FeatureDataset(train_norm, train_y)
    train_loader = ResumableLoader(
        train_ds,
        sampler=EpochSampler(len(train_ds), tcfg.seed),
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(tcfg.seed),
        **loader_args,
    )
    val_loader = DataLoader(FeatureDataset(val_norm, data.val_y), **loader_args) if val_norm else None
    steps = len(train_norm) // tcfg.batch_size if drop_last else 1
    head_dir = run_dir / "speaker_head"
    module = EmotionModule(shadow, cfg, _class_weights(cfg, data), steps, label_masks=data.label_masks)
    callbacks, best, stop = build_callbacks(
        cfg,
        head_dir / CHECKPOINT_DIR,
        train_loader,
        validate=val_loader is not None,
        progress=progress,
        label="speaker head",
        extra=(),
    )
    trainer = build_trainer(cfg, head_dir, callbacks, steps, progress)
    run_trainer(trainer, module, train_loader, val_loader, head_dir, resume=False, earlier_log=[], stop=stop)
    chosen = (
        Path(best.best_model_path)
        if best is not None and best.best_model_path
        else head_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    )
    module.load_trained(torch.load(chosen, map_location="cpu", weights_only=True)["state_dict"], chosen)
    net.speaker_backbone.load_state_dict(shadow.backbone.state_dict())
    if val_norm and tcfg.calibrate:
        with torch.no_grad():
            v = torch.from_numpy(np.stack([c[:, 0] for c in val_norm]))
            logits = net.speaker_backbone.eval()(v, None).double().numpy()
        net.speaker_temperature.fill_(fit_temperature(logits, np.asarray(data.val_y)))
    best_ua = (
        float(best.best_model_score) if best is not None and best.best_model_score is not None else math.nan
    )
    (head_dir / "summary.json").write_text(
        json.dumps({"best_val_ua": best_ua, "temperature": float(net.speaker_temperature)}, indent=2) + "\n"
    )
    net.speaker_best_val_ua = best_ua


def _calibrate(clf: TorchClassifier, data: FitData, run_dir: Path | None) -> None:
    """Temperature scaling on the validation speakers (``train.calibrate``): sets ``clf.net.temperature``
    and writes ``calibration.json`` (temperature, validation ECE before and after)."""
    from emovox.calibration import expected_calibration_error, fit_temperature

    clf.net.temperature.fill_(1.0)
    logits = clf.predict_logits(data.val_waves)
    y = np.asarray(data.val_y)
    t = fit_temperature(logits, y)
    clf.net.temperature.fill_(t)

    def probs(temp: float) -> np.ndarray:
        return torch.softmax(torch.from_numpy(logits / temp), dim=-1).numpy()

    report = {
        "temperature": t,
        "fitted_on": f"{len(y)} validation clips (validation speakers)",
        "val_ece_before": expected_calibration_error(probs(1.0), y),
        "val_ece_after": expected_calibration_error(probs(t), y),
    }
    if run_dir is not None:
        (run_dir / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")


# --------------------------------------------------------------------------- the family registry

FITTERS: dict[str, Fitter] = {
    **{family: Fitter(fit_torch, resumable=True, bundled=True) for family in MODELS},
    "svm": Fitter(fit_svm, resumable=False, bundled=False),
}
"""Model family -> how it is trained. A new family is one entry here (plus its name in
:data:`emovox.config.FAMILIES`, which config validation uses)."""
