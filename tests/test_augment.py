"""Augmentation: validation of AugmentConfig, waveform transforms, SpecAugment, training-only use."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import synth_speech
from emovox.augment import AugmentConfig, SpecAugment, WaveAugment
from emovox.errors import ConfigError


@pytest.fixture(scope="module", autouse=True)
def _one_cpu_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a CPU shared with other jobs, two-thread OpenMP
    regions wait on each other (recurrent layers by orders of magnitude)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SR = 16_000
WAVE = synth_speech(1.0, SR, seed=7)


# --------------------------------------------------------------------------- config


def test_defaults_are_off() -> None:
    cfg = AugmentConfig()
    assert not cfg.wave_enabled and not cfg.spec_enabled
    assert AugmentConfig(gain_p=0.1).wave_enabled
    assert AugmentConfig(freq_masks=1).spec_enabled
    assert not AugmentConfig(time_masks=2, time_mask_width=0).spec_enabled


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_p": 1.5}, "augment.noise_p: must be a probability"),
        ({"gain_p": -0.1}, "augment.gain_p: must be a probability"),
        ({"pitch_p": True}, "augment.pitch_p: must be a probability"),
        ({"gain_db": [6, -6]}, "augment.gain_db: min 6 is above max -6"),
        ({"stretch_rate": [0.01, 1.0]}, r"augment.stretch_rate: must lie within \[0.1, 10\]"),
        ({"noise_snr_db": [10]}, "augment.noise_snr_db: must be a \\[min, max\\] pair"),
        ({"time_masks": -1}, "augment.time_masks: must be a non-negative integer"),
        ({"freq_mask_width": 2.5}, "augment.freq_mask_width: must be a non-negative integer"),
        ({"background_p": 0.3}, "augment.background_dir: needed"),
        ({"background_dir": "/no/such/folder"}, "augment.background_dir: /no/such/folder is not a folder"),
    ],
)
def test_invalid_settings_name_the_field(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AugmentConfig(**kwargs)


def test_to_dict_round_trip() -> None:
    cfg = AugmentConfig(noise_p=0.3, pitch_semitones=[-1, 1], time_masks=2)
    again = AugmentConfig(**cfg.to_dict())
    assert again == cfg and again.to_dict()["pitch_semitones"] == [-1.0, 1.0]


# --------------------------------------------------------------------------- waveform


def test_all_probabilities_zero_is_identity() -> None:
    aug = WaveAugment(AugmentConfig(), SR)
    assert not aug.enabled
    out = aug(WAVE)
    assert out is WAVE


def test_each_transform_changes_the_wave_when_it_fires() -> None:
    np.random.seed(0)
    for kwargs in (
        {"noise_p": 1.0},
        {"gain_p": 1.0, "gain_db": [3.0, 6.0]},
        {"pitch_p": 1.0, "pitch_semitones": [1.0, 2.0]},
        {"shift_p": 1.0, "shift_seconds": [0.05, 0.1]},
    ):
        out = WaveAugment(AugmentConfig(**kwargs), SR)(WAVE)
        assert out.dtype == np.float32 and out.shape == WAVE.shape, kwargs
        assert np.isfinite(out).all()
        assert not np.allclose(out, WAVE, atol=1e-4), kwargs
    stretched = WaveAugment(AugmentConfig(stretch_p=1.0, stretch_rate=[1.25, 1.25]), SR)(WAVE)
    assert abs(stretched.size - WAVE.size / 1.25) < 0.02 * WAVE.size  # faster = shorter


def test_gain_range_is_respected() -> None:
    np.random.seed(1)
    aug = WaveAugment(AugmentConfig(gain_p=1.0, gain_db=[-6.0, -3.0]), SR)
    for _ in range(20):
        ratio_db = 20 * np.log10(np.abs(aug(WAVE)).max() / np.abs(WAVE).max())
        assert -6.01 <= ratio_db <= -2.99


def test_probability_controls_how_often_a_transform_fires() -> None:
    np.random.seed(2)
    aug = WaveAugment(AugmentConfig(gain_p=0.3, gain_db=[3.0, 6.0]), SR)
    fired = sum(not np.array_equal(aug(WAVE), WAVE) for _ in range(300))
    assert 60 <= fired <= 120  # binomial(300, 0.3): mean 90, sd 7.9


def test_noise_snr_is_in_range() -> None:
    np.random.seed(3)
    aug = WaveAugment(AugmentConfig(noise_p=1.0, noise_snr_db=[20.0, 20.0]), SR)
    noise = aug(WAVE) - WAVE
    snr = 10 * np.log10(np.mean(WAVE**2) / np.mean(noise**2))
    assert 19.0 < snr < 21.0


def test_background_noise_from_a_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "hum.wav", (0.1 * rng.standard_normal(SR)).astype(np.float32), SR)
    aug = WaveAugment(AugmentConfig(background_p=1.0, background_dir=str(tmp_path)), SR)
    out = aug(WAVE)
    assert out.shape == WAVE.shape and not np.allclose(out, WAVE)


def test_seeded_augmentation_is_reproducible() -> None:
    aug = WaveAugment(AugmentConfig(noise_p=0.5, gain_p=0.5, shift_p=0.5), SR)
    runs = []
    for _ in range(2):
        np.random.seed(11)  # audiomentations draws from NumPy's and Python's global generators
        random.seed(11)
        runs.append([aug(WAVE) for _ in range(5)])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- SpecAugment


def test_spec_augment_masks_only_inside_each_items_frames() -> None:
    torch.manual_seed(0)
    cfg = AugmentConfig(time_masks=3, time_mask_width=6, freq_masks=2, freq_mask_width=3)
    spec = SpecAugment(cfg).train()
    lengths = torch.tensor([50, 20, 7])
    x = torch.rand(3, 10, 50) + 1.0  # strictly positive, so masked cells are exactly the zeros
    valid = torch.arange(50)[None, :] < lengths[:, None]
    for _ in range(50):
        out = spec(x, lengths)
        masked = out == 0
        # padding frames are never touched and values that survive are unchanged
        assert torch.equal(out[~valid[:, None, :].expand_as(x)], x[~valid[:, None, :].expand_as(x)])
        assert torch.equal(out[~masked], x[~masked])
        for b in range(3):
            cells = masked[b][:, : lengths[b]]
            full_frames = cells.all(dim=0)  # time masks blank every channel of a frame
            full_channels = cells.all(dim=1)  # frequency masks blank a channel on every valid frame
            assert torch.equal(cells, full_frames[None, :] | full_channels[:, None])
            # at most 3 bands of <= 6 frames and 2 bands of <= 3 channels
            assert int(full_frames.sum()) <= 18 or bool(full_channels.all())
            assert int(full_channels.sum()) <= 6 or bool(full_frames.all())


def test_spec_augment_mask_widths_and_counts() -> None:
    torch.manual_seed(1)
    spec = SpecAugment(AugmentConfig(time_masks=1, time_mask_width=5)).train()
    x = torch.ones(64, 4, 40)
    out = spec(x, torch.full((64,), 40))
    widths = (out[:, 0, :] == 0).sum(dim=1)
    assert int(widths.max()) <= 5 and int(widths.min()) >= 0
    assert len(set(widths.tolist())) > 2  # widths drawn at random, not fixed
    # one contiguous band per item
    for row in out[:, 0, :] == 0:
        idx = torch.nonzero(row).flatten()
        if idx.numel():
            assert int(idx[-1] - idx[0]) + 1 == idx.numel()


def test_spec_augment_is_identity_in_eval_and_for_pooled_inputs() -> None:
    spec = SpecAugment(AugmentConfig(time_masks=2, freq_masks=2))
    x = torch.rand(2, 8, 30)
    lengths = torch.tensor([30, 12])
    assert spec.eval()(x, lengths) is x
    pooled = torch.rand(2, 16)
    assert spec.train()(pooled, lengths) is pooled
    assert torch.equal(SpecAugment(AugmentConfig()).train()(x, lengths), x)


# --------------------------------------------------------------------------- only training data


def _two_emotion_clips(
    tmp_path: Path, *, speakers: int, per_emotion: int
) -> tuple[list[Any], dict[Path, np.ndarray]]:
    """Synthetic "neutral" / "happy" clips of speakers ``t:0``, ``t:1``, ...: (utterances, waves by path)."""
    from emovox.corpora import Utterance

    rng = np.random.default_rng(0)
    waves: dict[Path, np.ndarray] = {}
    utts = []
    for s in range(speakers):
        for e, emotion in enumerate(("neutral", "happy")):
            for k in range(per_emotion):
                path = tmp_path / f"{s}_{emotion}_{k}.wav"
                waves[path] = synth_speech(0.4 + 0.05 * k, SR, f0=120.0 + 90 * e, seed=int(rng.integers(1e6)))
                utts.append(Utterance(path, emotion, f"t:{s}", "folder", emotion))
    return utts, waves


def test_fit_augments_training_batches_only(tmp_path: Path) -> None:
    """With waveform augmentation on, training batches are perturbed and validation batches are the
    untouched clips; the returned classifier is deterministic (no augmentation at inference)."""
    import lightning

    from emovox.config import load_config
    from emovox.training import fit

    utts, waves = _two_emotion_clips(tmp_path, speakers=2, per_emotion=3)
    train = [u for u in utts if u.speaker == "t:0"]
    val = [u for u in utts if u.speaker == "t:1"]
    seen: dict[str, list[np.ndarray]] = {"train": [], "val": []}

    class Spy(lightning.pytorch.Callback):
        def _record(self, part: str, batch: Any) -> None:
            wave, lengths, _ = batch
            seen[part] += [wave[i, : int(n)].numpy().copy() for i, n in enumerate(lengths)]

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            self._record("train", batch)

        def on_validation_batch_start(self, trainer: Any, module: Any, batch: Any, *args: Any) -> None:
            self._record("val", batch)

    cfg = load_config(
        None,
        [
            "model.family=mlp",
            "model.params.hidden=[8]",
            "features.n_mels=16",
            "data.max_seconds=null",
            "augment.noise_p=1.0",
            "augment.gain_p=0.5",
            "train.epochs=1",
            "train.batch_size=3",
        ],
    )
    result = fit(cfg, train, val, tmp_path / "run", waves=waves, progress=False, callbacks=[Spy()])
    originals = [waves[u.path] for u in train]
    assert len(seen["train"]) == 6
    for w in seen["train"]:
        same_length = [o for o in originals if o.size == w.size]
        assert same_length and not any(np.allclose(w, o, atol=1e-5) for o in same_length)
    val_originals = [waves[u.path] for u in val]
    assert len(seen["val"]) == len(val)
    for w in seen["val"]:
        assert any(o.size == w.size and np.array_equal(w, o) for o in val_originals)
    probs = result.model.predict_proba(val_originals)
    np.testing.assert_array_equal(probs, result.model.predict_proba(val_originals))


def test_channel_copies_are_seeded_per_speaker_and_copy() -> None:
    from emovox.augment import AugmentConfig, channel_copies
    from emovox.errors import ConfigError

    waves = [synth_speech(0.6, 16_000, f0=120 + 10 * i, seed=i) for i in range(6)]
    groups = ["a", "a", "a", "b", "b", "b"]
    cfg = AugmentConfig(copies=2, channels=("noise", "gain", "telephone"))
    first = channel_copies(waves, groups, cfg, seed=0)
    again = channel_copies(waves, groups, cfg, seed=0)
    copies, source, out_groups = first
    assert len(copies) == 12 and sorted(source) == sorted(list(range(6)) * 2)
    assert all(np.array_equal(x, y) for x, y in zip(copies, again[0], strict=True))  # same every run
    assert len({g for g in out_groups}) == 4  # one channel per (speaker, copy): a session
    assert all(
        c.shape == waves[i].shape and not np.array_equal(c, waves[i])
        for c, i in zip(copies, source, strict=True)
    )
    other = channel_copies(waves, groups, cfg, seed=1)[0]
    assert not all(np.array_equal(x, y) for x, y in zip(copies, other, strict=True))
    with pytest.raises(ConfigError, match="augment.channels"):
        AugmentConfig(copies=1, channels=("bogus",))


def test_validation_copies_draw_from_every_channel_whatever_training_uses() -> None:
    """augment.val_copies: the same degraded validation audio for candidates with different mixes."""
    from emovox.augment import AugmentConfig, validation_copies

    waves = [synth_speech(0.5, 16_000, f0=120 + 10 * i, seed=i) for i in range(8)]
    groups = [f"s{i // 2}" for i in range(8)]
    narrow = AugmentConfig(copies=1, val_copies=3, channels=("gain",))
    wide = AugmentConfig(copies=4, val_copies=3, channels=("noise", "babble"))
    a, source, out_groups = validation_copies(waves, groups, narrow, seed=0)
    b = validation_copies(waves, groups, wide, seed=0)[0]
    assert len(a) == 24 and sorted(source) == sorted(list(range(8)) * 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # training mix is irrelevant
    channels = {g.split("#")[1].rstrip("0123456789") for g in out_groups}
    assert len(channels) > 1  # not only "gain"
    speedy = validation_copies(waves, groups, AugmentConfig(val_copies=4, channels=("speed",)), seed=0)[2]
    assert not any("#speed" in g for g in speedy)  # validation hears channels, not other voices


def test_validation_copies_join_validation(tmp_path: Path) -> None:
    """fit with augment.val_copies=2 validates on the clips plus two degraded copies of each."""
    import lightning

    from emovox.config import load_config
    from emovox.training import fit

    utts, waves = _two_emotion_clips(tmp_path, speakers=3, per_emotion=2)
    seen: list[int] = []

    class Spy(lightning.pytorch.Callback):
        def on_validation_batch_start(self, trainer: Any, module: Any, batch: Any, *args: Any) -> None:
            seen.extend(int(y) for y in batch[-1])

    cfg = load_config(None, [
        "model.family=mlp", "model.params.hidden=[8]", "features.n_mels=16", "data.max_seconds=null",
        "augment.val_copies=2", "train.epochs=1", "train.batch_size=4",
    ])  # fmt: skip
    train = [u for u in utts if u.speaker != "t:2"]
    val = [u for u in utts if u.speaker == "t:2"]
    fit(cfg, train, val, tmp_path / "run", waves=waves, progress=False, callbacks=[Spy()])
    # 4 clips + 2 x 4 copies, one epoch (no sanity pass), each copy labelled as its source clip
    assert len(seen) == 3 * len(val) and sorted(seen) == [0] * 6 + [1] * 6


def test_speed_copies_are_pseudo_speakers() -> None:
    """channels [speed]: one factor per (speaker, copy): every clip of a session changes length alike."""
    from emovox.augment import AugmentConfig, channel_copies

    waves = [synth_speech(0.5 + 0.1 * i, 16_000, f0=150, seed=i) for i in range(4)]
    copies, source, groups = channel_copies(
        waves, ["a"] * 4, AugmentConfig(copies=2, channels=("speed",)), seed=0
    )
    assert all(g.startswith("a#speed") for g in groups)
    for k in range(2):
        ratios = {
            round(waves[i].size / copies[4 * k + j].size, 2) for j, i in enumerate(source[4 * k : 4 * k + 4])
        }
        assert len(ratios) == 1 and 0.89 <= ratios.pop() <= 1.11
    slow = AugmentConfig(copies=1, channels=("speed",), speed_range=(0.7, 0.75))
    copies = channel_copies(waves, ["a"] * 4, slow, seed=0)[0]
    assert all(1.3 <= c.size / w.size <= 1.45 for c, w in zip(copies, waves, strict=True))
