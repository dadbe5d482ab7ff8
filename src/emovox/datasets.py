"""Training data for the neural families: waveform or precomputed-feature datasets, their collate
functions, and the normaliser statistics of the backbone inputs.

Training items are random crops (of ``data.max_seconds``) drawn with torch's generator, so a run
seeded once (and a resumed run restoring the generator state) sees the same crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from emovox.augment import WaveAugment
from emovox.features import pad_batch, pool_stats
from emovox.models import EmotionNet, frame_mask


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
