"""Speaker / session normalisation statistics: the one place that standardises a speaker's pooled
encoder statistics, over a whole group of clips or as a running estimate.

A speaker-normalised model (:class:`~emovox.models.EmotionNet` with ``speaker_norm``) has a second
head that reads pooled statistics standardised over clips of one speaker or session. Offline the
group is known in full (:func:`group_standardize`: a folder of one speaker's recordings, a test
actor in cross-validation). Live, it grows one window or segment at a time: :class:`RunningStats`
keeps the count, mean and summed squared deviations (Chan et al.'s parallel update, float64) and
standardises each new clip with everything seen so far, itself included. After the same clips the
two agree: the running estimate of the last clip equals the group standardisation of that clip.

The spread is shrunk towards the training speakers' mean within-speaker variance with the weight
of :data:`SPEAKER_PRIOR_CLIPS` clips, so a handful of clips already gives a stable estimate; fewer
than :data:`MIN_GROUP_CLIPS` clips use the plain head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where the statistics are used: importing this module stays light
    from torch import Tensor

#: Weight (in clips) of the training speakers' within-speaker variance in the standardisation.
SPEAKER_PRIOR_CLIPS = 10
#: Fewest clips a group needs before speaker normalisation is used (fewer: the plain head).
MIN_GROUP_CLIPS = 2


def shrunk_std(m2: Tensor, n: int, prior_var: Tensor) -> Tensor:
    """Standard deviation from ``n`` clips' summed squared deviations ``m2``, shrunk towards ``prior_var``."""
    import torch

    var = (m2 + SPEAKER_PRIOR_CLIPS * prior_var) / (n + SPEAKER_PRIOR_CLIPS)
    return torch.sqrt(var.clamp(min=1e-10))


def group_standardize(x: Tensor, prior_var: Tensor) -> Tensor:
    """Standardise raw pooled statistics ``x [N, D]`` of one speaker's clips over that group."""
    mean = x.mean(0)
    m2 = ((x - mean) ** 2).sum(0)
    return (x - mean) / shrunk_std(m2, x.shape[0], prior_var.to(x.dtype))


class RunningStats:
    """Running mean and spread of one speaker's or session's raw pooled statistics.

    ``prior_var`` is the model's ``speaker_prior_var`` (``[D]``). :meth:`update` adds clips,
    :meth:`standardize` applies the current estimate. Memory is three ``[D]`` vectors whatever the
    length of the session.
    """

    def __init__(self, prior_var: Tensor) -> None:
        import torch

        self.prior_var = prior_var.detach().to("cpu", torch.float64).reshape(-1)
        dim = self.prior_var.numel()
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.m2 = torch.zeros(dim, dtype=torch.float64)

    def update(self, x: Tensor) -> None:
        """Add the statistics ``x`` (``[D]`` or ``[N, D]``) of clips of this speaker."""
        import torch

        x = x.detach().to("cpu", torch.float64).reshape(-1, self.prior_var.numel())
        k = x.shape[0]
        if not k:
            return
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        total = self.n + k
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.n * k / total)
        self.n = total

    def standardize(self, x: Tensor) -> Tensor:
        """``x`` standardised with the clips seen so far (in ``x``'s dtype and device)."""
        std = shrunk_std(self.m2, self.n, self.prior_var)
        return ((x.double().cpu() - self.mean) / std).to(dtype=x.dtype, device=x.device)

    @property
    def ready(self) -> bool:
        """Whether enough clips were seen for the speaker head (:data:`MIN_GROUP_CLIPS`)."""
        return self.n >= MIN_GROUP_CLIPS
