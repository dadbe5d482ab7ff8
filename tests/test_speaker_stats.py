"""Speaker normalisation statistics: the running estimate agrees with the whole-group one."""

from __future__ import annotations

import torch

from emovox.speaker_stats import MIN_GROUP_CLIPS, SPEAKER_PRIOR_CLIPS, RunningStats, group_standardize


def test_running_estimate_equals_group_standardisation_after_the_same_clips() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=g) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0]) + 4.0
    prior = torch.rand(5, generator=g) + 0.5
    stats = RunningStats(prior)
    for n in range(1, x.shape[0] + 1):
        stats.update(x[n - 1])
        assert stats.n == n and stats.ready == (n >= MIN_GROUP_CLIPS)
        expected = group_standardize(x[:n].double(), prior.double())[-1]
        torch.testing.assert_close(stats.standardize(x[n - 1 : n].double())[0], expected)


def test_batched_updates_equal_one_at_a_time() -> None:
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(1))
    one, batched = RunningStats(torch.ones(3)), RunningStats(torch.ones(3))
    for row in x:
        one.update(row)
    batched.update(x[:5])
    batched.update(x[5:])
    torch.testing.assert_close(one.mean, batched.mean)
    torch.testing.assert_close(one.m2, batched.m2)


def test_few_clips_lean_on_the_prior_spread() -> None:
    """Two identical clips have no spread of their own: the prior keeps the scale finite."""
    prior = torch.full((4,), 2.0)
    z = group_standardize(torch.ones(2, 4) * 3.0, prior)
    assert torch.isfinite(z).all() and torch.equal(z, torch.zeros(2, 4))
    x = torch.tensor([[0.0], [2.0]])
    expected = (x - 1.0) / ((2.0 + SPEAKER_PRIOR_CLIPS * 2.0) / (2 + SPEAKER_PRIOR_CLIPS)) ** 0.5
    torch.testing.assert_close(group_standardize(x, prior[:1]), expected)
