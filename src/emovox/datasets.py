"""Training data for the neural families: waveform or precomputed-feature datasets, their collate
functions, the resumable shuffling of training clips, and the normaliser statistics.

Randomness of the data is a function of the run's seed alone, never of the global generators:
:class:`EpochSampler` shuffles each epoch from ``(seed, epoch)`` and hands every item its own seed,
which draws that item's crop and waveform augmentation. So whatever else consumes random numbers
(the training step, a DataLoader worker, an interruption), epoch ``e`` sees the same clips in the
same order with the same crops, and :class:`ResumableLoader` knows how far into the epoch a run
got, so a resumed run continues with exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from emovox.augment import WaveAugment
from emovox.features import pad_batch, pool_stats
from emovox.models import EmotionNet, frame_mask

Key = int | tuple[int, int]
"""A dataset key: an index, or ``(index, item_seed)`` from :class:`EpochSampler`."""


def _split_key(key: Key) -> tuple[int, int | None]:
    return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), None)


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """NumPy's and Python's global generators seeded with ``seed`` inside the block, restored after
    (audiomentations draws from them), so an item's augmentation leaves the run's streams alone."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _random_start(size: int, crop: int, seed: int | None) -> int:
    """Start of a random ``crop`` inside ``size``: from the item's seed, else torch's global generator."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return int(torch.randint(0, size - crop + 1, (1,), generator=generator))


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

    def __getitem__(self, key: Key) -> tuple[np.ndarray, int]:
        i, seed = _split_key(key)
        wave = self.waves[i]
        if self.crop is not None and wave.size > self.crop:
            start = _random_start(wave.size, self.crop, seed)
            wave = wave[start : start + self.crop]
        if self.augment is not None:
            with seeded_globals(seed) if seed is not None else contextlib.nullcontext():
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

    def __getitem__(self, key: Key) -> tuple[np.ndarray, int]:
        i, seed = _split_key(key)
        x = self.feats[i]
        if self.crop is not None and x.shape[1] > self.crop:
            start = _random_start(x.shape[1], self.crop, seed)
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


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffles ``n`` items anew every epoch from ``(seed, epoch)`` alone, yielding ``(index, item_seed)``.

    Lightning calls :meth:`set_epoch` before each epoch. :meth:`resume` makes the next pass over
    ``epoch`` start ``start`` items in (the ones an interrupted run had already trained on).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, epoch: int, start: int) -> None:
        self.epoch = int(epoch)
        self._resume = (int(epoch), int(start))

    def order(self, epoch: int) -> tuple[list[int], list[int]]:
        """The item order and the item seeds of ``epoch``."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        order = torch.randperm(self.n, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (self.n,), generator=generator).tolist()
        return order, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        start = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume = None
        order, seeds = self.order(epoch)
        return iter(list(zip(order, seeds, strict=True))[start:])

    def __len__(self) -> int:
        return self.n


class ResumableLoader(DataLoader):
    """A training DataLoader over an :class:`EpochSampler` that knows how far into the epoch it is.

    :meth:`position` is ``{"epoch", "batches"}`` (batches handed out in that epoch, which a
    checkpoint stores); :meth:`resume_at` makes the next pass skip those batches.
    """

    def __init__(self, dataset: Dataset, *, sampler: EpochSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._batches = 0
        self._resumed_batches = 0

    def __iter__(self) -> Iterator[Any]:
        self._batches, self._resumed_batches = self._resumed_batches, 0
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def position(self) -> dict[str, int]:
        assert isinstance(self.sampler, EpochSampler)
        return {"epoch": self.sampler.epoch, "batches": self._batches}

    def resume_at(self, position: dict[str, int]) -> None:
        assert isinstance(self.sampler, EpochSampler) and self.batch_size is not None
        epoch, batches = int(position["epoch"]), int(position["batches"])
        if batches >= len(self):  # that epoch was complete: the next one starts from its beginning
            epoch, batches = epoch + 1, 0
        self.sampler.resume(epoch, batches * self.batch_size)
        self._resumed_batches = batches


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


def pooled_columns(feats: Sequence[np.ndarray], stats: Sequence[str]) -> list[np.ndarray]:
    """Whole-clip :func:`~emovox.features.pool_stats` of each ``[C, F_i]`` array as a ``[C * S, 1]`` column
    (the encoder family's ``pooling: stats`` trains on these and never touches frames)."""
    out = []
    for x in feats:
        t = torch.from_numpy(np.asarray(x, dtype=np.float32))[None]
        out.append(pool_stats(t, torch.tensor([t.shape[-1]]), stats)[0].numpy()[:, None])
    return out


def frame_stats(feats: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over every frame of ``[C, F_i]`` feature arrays (float64 sums): the
    normaliser's statistics straight from cached features, without another front-end pass."""
    total = np.zeros(feats[0].shape[0], dtype=np.float64)
    squares = np.zeros_like(total)
    count = 0
    for x in feats:
        x64 = np.asarray(x, dtype=np.float64)
        total += x64.sum(1)
        squares += (x64**2).sum(1)
        count += x64.shape[1]
    mean = total / max(count, 1)
    std = np.sqrt(np.clip(squares / max(count, 1) - mean**2, 0, None))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()
