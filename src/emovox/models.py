"""Model families and the end-to-end :class:`EmotionNet` (waveform -> logits).

Every backbone maps ``(x [B, C, F], lengths [B]) -> logits [B, K]`` (``mlp`` takes pooled statistics
``[B, D]`` instead) and masks padded frames at every stage, so an utterance gets exactly the same
prediction alone or zero-padded inside a batch. Nothing uses ``pack_padded_sequence``: recurrent
layers run the backward direction over a per-item reversed sequence (a gather), which keeps the
graph a plain tensor program that ``torch.onnx.export`` turns into ONNX with dynamic batch and time.

Families (``MODELS``):

* ``mlp``   - dense + ReLU + dropout over utterance statistics (``pool_stats`` of the frame features);
* ``cnn1d`` - 1-D convolutions over time with the feature channels as input channels (MFCC + deltas);
* ``cnn2d`` - 2-D convolutions over the [C, F] feature map as an image (log-mel);
* ``crnn``  - 2-D conv front end -> bidirectional LSTM or GRU -> attention pooling;
* ``lstm``  - stacked (bi)LSTM over frames -> attention or mean pooling;
* ``encoder`` - a frozen pretrained speech encoder (:mod:`emovox.encoders`: Whisper, wav2vec2,
  HuBERT, WavLM) as the front end; the backbone is :class:`EncoderHead`, a learned softmax-weighted
  sum of the encoder's hidden layers, attentive statistics pooling and a small classifier.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from emovox import limits
from emovox.errors import ConfigError
from emovox.features import FeatureConfig, FeatureExtractor, pool_stats
from emovox.jsonutil import jsonable
from emovox.speaker_stats import group_standardize

# --------------------------------------------------------------------------- masking helpers


def frame_mask(lengths: Tensor, frames: int) -> Tensor:
    """Boolean mask [B, F]: True for the first ``lengths[b]`` frames of item ``b``."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def _pooled_lengths(lengths: Tensor) -> Tensor:
    """Frame count after :func:`_halve` (ceil of half, so it never reaches 0)."""
    return torch.div(lengths + 1, 2, rounding_mode="floor")


def masked_mean(h: Tensor, lengths: Tensor) -> Tensor:
    """Mean of ``h [B, F, D]`` over each item's valid frames -> [B, D]."""
    mask = frame_mask(lengths, h.shape[1]).unsqueeze(-1).to(h.dtype)
    return (h * mask).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(h.dtype)


def _halve(x: Tensor, dims: int) -> Tensor:
    """Max-pool by 2 over the last ``dims`` axes, rounding the size up (a ceil-mode pool).

    Pads one zero at the end instead of using ``ceil_mode`` (which makes torch.export specialise
    the time axis). Inputs are post-ReLU (>= 0) with padding zeroed, so the extra zero never wins.
    """
    if dims == 1:  # as a 2-D pool: max_pool1d also makes torch.export specialise the time axis
        return nn.functional.max_pool2d(nn.functional.pad(x, (0, 1)).unsqueeze(2), (1, 2)).squeeze(2)
    return nn.functional.max_pool2d(nn.functional.pad(x, (0, 1, 0, 1)), 2)


class AttentionPool(nn.Module):
    """Additive attention over valid time steps: ``h [B, F, D] -> [B, D]``; padded steps get weight 0."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, h: Tensor, lengths: Tensor) -> Tensor:
        scores = self.score(h).squeeze(-1)
        mask = frame_mask(lengths, h.shape[1])
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1).unsqueeze(-1)
        return (weights * h).sum(1)


def _pool(kind: str, dim: int) -> nn.Module | None:
    if kind == "attention":
        return AttentionPool(dim)
    if kind == "mean":
        return None
    raise ConfigError(f"model.params.pooling: expected 'attention' or 'mean', got {kind!r}")


class _Head(nn.Module):
    """Dropout + linear classifier."""

    def __init__(self, dim: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_classes))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MaskedRNN(nn.Module):
    """Stacked (bi)directional LSTM/GRU that ignores padding without packed sequences.

    The backward direction reads each item's valid frames reversed (padding stays at the end), so
    padded frames never reach a valid output. Works on ``x [B, F, D]`` -> ``[B, F, H * dirs]``.
    """

    def __init__(
        self, input_size: int, hidden: int, layers: int, *, cell: str, bidirectional: bool, dropout: float
    ) -> None:
        super().__init__()
        rnn_cls: type[nn.RNNBase]
        if cell == "lstm":
            rnn_cls = nn.LSTM
        elif cell == "gru":
            rnn_cls = nn.GRU
        else:
            raise ConfigError(f"model.params.rnn: expected 'lstm' or 'gru', got {cell!r}")
        self.bidirectional = bidirectional
        dirs = 2 if bidirectional else 1
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        for i in range(layers):
            size = input_size if i == 0 else hidden * dirs
            self.forward_layers.append(rnn_cls(size, hidden, batch_first=True))
            if bidirectional:
                self.backward_layers.append(rnn_cls(size, hidden, batch_first=True))
        self.dropout = nn.Dropout(dropout)
        self.output_size = hidden * dirs

    @staticmethod
    def _reverse_index(lengths: Tensor, frames: int) -> Tensor:
        """Index [B, F] that reverses the valid part of each item and leaves padding in place."""
        t = torch.arange(frames, device=lengths.device)[None, :]
        rev = lengths[:, None] - 1 - t
        return torch.where(rev >= 0, rev, t)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        mask = frame_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        idx = None
        if self.bidirectional:
            idx = self._reverse_index(lengths, x.shape[1]).unsqueeze(-1)
        h = x
        for i, fwd in enumerate(self.forward_layers):
            if i > 0:
                h = self.dropout(h)
            out = fwd(h)[0]
            if idx is not None:
                gather = idx.expand(-1, -1, h.shape[2])
                rev_in = torch.gather(h, 1, gather)
                rev_out = self.backward_layers[i](rev_in)[0]
                rev_out = torch.gather(rev_out, 1, idx.expand(-1, -1, rev_out.shape[2]))
                out = torch.cat([out, rev_out], dim=-1)
            h = out * mask
        return h


# --------------------------------------------------------------------------- backbones


class MLP(nn.Module):
    """Dense + LayerNorm + ReLU + dropout layers over a pooled utterance vector ``[B, D]``.

    ``hidden`` lists the layer widths (an integer = one layer, ``[]`` = a linear classifier);
    ``lengths`` is unused (the statistics are already pooled over the valid frames).
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        *,
        hidden: Sequence[int] | int = (256, 128),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if isinstance(hidden, int):  # one hidden layer
            hidden = (hidden,)
        layers: list[nn.Module] = []
        size = in_channels
        for width in hidden:
            layers += [nn.Linear(size, int(width)), nn.LayerNorm(int(width)), nn.ReLU(), nn.Dropout(dropout)]
            size = int(width)
        layers.append(nn.Linear(size, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.net(x)


class _ConvBlock1d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.BatchNorm1d(cout)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        # zero padding before the conv == the conv's own zero padding of an item alone
        x = x * frame_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
        x = torch.relu(self.norm(self.conv(x)))
        # after ReLU every value is >= 0, so zeroed padding never wins the max of a window
        x = x * frame_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
        return _halve(x, 1), _pooled_lengths(lengths)


class CNN1D(nn.Module):
    """1-D conv blocks (conv, batch norm, ReLU, max-pool 2) over time, then attention/mean pooling."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        *,
        channels: Sequence[int] = (64, 128, 128),
        kernel: int = 5,
        dropout: float = 0.3,
        pooling: str = "attention",
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        size = in_channels
        for width in channels:
            self.blocks.append(_ConvBlock1d(size, int(width), kernel))
            size = int(width)
        self.pool = _pool(pooling, size)
        self.head = _Head(size, n_classes, dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        for block in self.blocks:
            x, lengths = block(x, lengths)
        h = x.transpose(1, 2)
        z = self.pool(h, lengths) if self.pool is not None else masked_mean(h, lengths)
        return self.head(z)


class _ConvBlock2d(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = x * frame_mask(lengths, x.shape[-1])[:, None, None, :].to(x.dtype)
        x = torch.relu(self.norm(self.conv(x)))
        x = x * frame_mask(lengths, x.shape[-1])[:, None, None, :].to(x.dtype)
        return _halve(x, 2), _pooled_lengths(lengths)


class _ConvFrontEnd2d(nn.Module):
    """2-D conv blocks over ``[B, C, F]`` as a one-channel image -> ``([B, F', D], lengths')``."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        size = 1
        height = in_channels
        for width in channels:
            self.blocks.append(_ConvBlock2d(size, int(width)))
            size = int(width)
            height = (height + 1) // 2
        self.channels = size
        self.height = height

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        h = x.unsqueeze(1)
        for block in self.blocks:
            h, lengths = block(h, lengths)
        return h, lengths


class CNN2D(nn.Module):
    """2-D conv blocks over the feature map, mean over frequency, attention/mean pooling over time."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        *,
        channels: Sequence[int] = (32, 64, 128, 128),
        dropout: float = 0.3,
        pooling: str = "attention",
    ) -> None:
        super().__init__()
        self.front = _ConvFrontEnd2d(in_channels, channels)
        self.pool = _pool(pooling, self.front.channels)
        self.head = _Head(self.front.channels, n_classes, dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        h, lengths = self.front(x, lengths)
        h = h.mean(dim=2).transpose(1, 2)  # [B, F', D]
        z = self.pool(h, lengths) if self.pool is not None else masked_mean(h, lengths)
        return self.head(z)


class CRNN(nn.Module):
    """2-D conv front end -> bidirectional LSTM/GRU over time -> attention pooling over valid steps."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        *,
        channels: Sequence[int] = (32, 64),
        rnn: str = "lstm",
        hidden: int = 128,
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.3,
        pooling: str = "attention",
    ) -> None:
        super().__init__()
        self.front = _ConvFrontEnd2d(in_channels, channels)
        self.rnn = MaskedRNN(
            self.front.channels * self.front.height,
            hidden,
            layers,
            cell=rnn,
            bidirectional=bidirectional,
            dropout=dropout,
        )
        self.pool = _pool(pooling, self.rnn.output_size)
        self.head = _Head(self.rnn.output_size, n_classes, dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        h, lengths = self.front(x, lengths)
        h = h.flatten(1, 2).transpose(1, 2)  # [B, F', D * C']
        h = self.rnn(h, lengths)
        z = self.pool(h, lengths) if self.pool is not None else masked_mean(h, lengths)
        return self.head(z)


class LSTMNet(nn.Module):
    """Linear input projection -> stacked (bi)LSTM over frames -> attention/mean pooling."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        *,
        hidden: int = 128,
        layers: int = 2,
        bidirectional: bool = True,
        dropout: float = 0.3,
        pooling: str = "attention",
    ) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU())
        self.rnn = MaskedRNN(
            hidden, hidden, layers, cell="lstm", bidirectional=bidirectional, dropout=dropout
        )
        self.pool = _pool(pooling, self.rnn.output_size)
        self.head = _Head(self.rnn.output_size, n_classes, dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        h = self.rnn(self.proj(x.transpose(1, 2)), lengths)
        z = self.pool(h, lengths) if self.pool is not None else masked_mean(h, lengths)
        return self.head(z)


class AttentiveStatsPool(nn.Module):
    """Attention-weighted mean and standard deviation over valid frames: ``h [B, F, D] -> [B, 2D]``."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, h: Tensor, lengths: Tensor) -> Tensor:
        scores = self.score(h).squeeze(-1)
        scores = scores.masked_fill(~frame_mask(lengths, h.shape[1]), torch.finfo(scores.dtype).min)
        w = torch.softmax(scores, dim=1).unsqueeze(-1)
        mean = (w * h).sum(1)
        var = (w * (h - mean.unsqueeze(1)) ** 2).sum(1)
        return torch.cat([mean, torch.sqrt(var.clamp(min=1e-6))], dim=-1)


class EncoderHead(nn.Module):
    """Head over stacked encoder hidden states ``x [B, L * D, F]`` (normalised per channel).

    A softmax-weighted sum of the ``L`` layers (weights learned, start equal), attentive statistics
    pooling over the clip's real frames, then dropout -> linear -> GELU -> dropout -> linear.
    ``pooling: stats`` instead reads each layer's plain mean and std over the clip (``x [B, 2 * L * D]``,
    :func:`~emovox.features.pool_stats` of the stacked states) and weighs layers the same way: no
    frame-level work at all in training, and pooled statistics are what speaker normalisation
    standardises.
    ``head: linear`` replaces the MLP by dropout + one linear layer. ``speaker_norm`` adds a second
    head for speaker-normalised statistics (see :meth:`EmotionNet.group_normalize`).
    ``encoder`` / ``encoder_layers`` / ``finetune_top`` describe the front end
    (:class:`emovox.encoders.SpeechEncoder`) and are kept here so one ``model.params`` holds the
    whole family; ``encoder_layers`` is the list of hidden-state indices once the encoder is loaded.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        *,
        encoder: str = "",
        encoder_layers: Any = "all",
        finetune_top: int = 0,
        hidden: int = 256,
        dropout: float = 0.2,
        attention: int = 128,
        pooling: str = "attentive",
        head: str = "mlp",
        speaker_norm: bool = False,
    ) -> None:
        super().__init__()
        if head not in ("mlp", "linear"):
            raise ConfigError(f"model.params.head: expected 'mlp' or 'linear', got {head!r}")
        if pooling not in ("attentive", "stats"):
            raise ConfigError(f"model.params.pooling: expected 'attentive' or 'stats', got {pooling!r}")
        n_layers = len(encoder_layers) if isinstance(encoder_layers, (list, tuple)) else 1
        blocks = n_layers * (2 if pooling == "stats" else 1)
        if in_channels % blocks:
            raise ValueError(f"{in_channels} input channels do not split into {n_layers} layers")
        self.n_layers = n_layers
        self.stats = pooling == "stats"
        self.dim = in_channels // blocks
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))
        self.pool = None if self.stats else AttentiveStatsPool(self.dim, attention)
        if head == "linear":
            self.head: nn.Module = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * self.dim, n_classes))
        else:
            self.head = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(2 * self.dim, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, n_classes),
            )

    def layer_weights(self) -> Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        if self.pool is None:  # per-layer [mean; std] pooled over the clip: x [B, 2 * L * D]
            h = x.reshape(x.shape[0], 2, self.n_layers, self.dim)
            return self.head(torch.einsum("l,bsld->bsd", self.layer_weights(), h).flatten(1))
        b, _, f = x.shape
        h = x.reshape(b, self.n_layers, self.dim, f)
        h = torch.einsum("l,bldf->bfd", self.layer_weights(), h)
        return self.head(self.pool(h, lengths))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn1d": CNN1D,
    "cnn2d": CNN2D,
    "crnn": CRNN,
    "lstm": LSTMNet,
    "encoder": EncoderHead,
}


def build_backbone(family: str, in_channels: int, n_classes: int, **params: Any) -> nn.Module:
    """Instantiate a registered backbone; unknown family or parameter raises :class:`ConfigError`."""
    if family not in MODELS:
        raise ConfigError(f"model.family: unknown model family {family!r} (choose from {', '.join(MODELS)})")
    cls = MODELS[family]
    allowed = [
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"model.params: unknown parameter(s) {', '.join(unknown)} for family {family!r} "
            f"(allowed: {', '.join(allowed)})"
        )
    _check_params(params)
    try:
        # built first on the meta device (shapes only, no memory) so that an oversized network is
        # refused before its weights are allocated
        with torch.device("meta"):
            shape_only = cls(in_channels, n_classes, **params)
        count = sum(p.numel() for p in shape_only.parameters())
        if count > limits.MAX_PARAMETERS:
            raise ConfigError(
                f"model.params: a {family} with these parameters has {count / 1e6:.1f} million weights, "
                f"over the limit of {limits.MAX_PARAMETERS / 1e6:.0f} million"
            )
        return cls(in_channels, n_classes, **params)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"model.params: invalid value for family {family!r}: {exc}") from None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_params(params: dict[str, Any]) -> None:
    """Type- and range-check the shared hyper-parameters (ranges: :data:`emovox.limits.RANGES`), so a
    bad value is named instead of failing deep in torch or allocating gigabytes."""
    for key, value in params.items():
        where = f"model.params.{key}"
        if key in ("channels", "hidden") and isinstance(value, (list, tuple)):
            if not all(_positive_int(v) for v in value):
                raise ConfigError(f"{where}: expected a list of positive integers, got {value!r}")
            limits.check_list(where, value)
        elif key == "channels":
            raise ConfigError(f"{where}: expected a list of positive integers (one per block), got {value!r}")
        elif key in ("hidden", "layers", "kernel") and not _positive_int(value):
            raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
        elif key == "dropout" and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1
        ):
            raise ConfigError(f"{where}: expected a number in [0, 1), got {value!r}")
        elif key == "bidirectional" and not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        if key in ("hidden", "layers", "kernel", "dropout") and not isinstance(value, (list, tuple)):
            limits.check(where, value)


# --------------------------------------------------------------------------- end-to-end network


class EmotionNet(nn.Module):
    """Waveform -> logits: :class:`FeatureExtractor`, per-channel normaliser, backbone.

    The normaliser's ``mean``/``std`` are persistent buffers (so they travel in the safetensors
    bundle) sized to the backbone input: feature channels for frame models, the pooled statistics
    vector for ``mlp``. :meth:`set_normalization` sets them from training features.
    """

    def __init__(
        self,
        feature_cfg: FeatureConfig,
        family: str,
        params: dict[str, Any] | None,
        labels: Sequence[str],
        *,
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if isinstance(labels, (list, tuple)) and len(labels) < 2:
            raise ConfigError(f"need at least two emotion labels to train a classifier, got {list(labels)}")
        limits.check_labels(labels, "model.labels")
        self.feature_cfg = feature_cfg
        self.family = family
        self.params = dict(params or {})
        self.labels = list(labels)
        self.extractor: nn.Module
        if family == "encoder":
            self.extractor = encoder if encoder is not None else _load_encoder(self.params)
            self.params["encoder_layers"] = list(self.extractor.cfg.layers)
            self.params.setdefault("encoder", self.extractor.cfg.source)
        else:
            self.extractor = FeatureExtractor(feature_cfg)
        channels = self.extractor.num_channels
        self.pooled = family == "mlp" or (family == "encoder" and self.params.get("pooling") == "stats")
        dim = channels * len(feature_cfg.stats) if self.pooled else channels
        self.input_dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        # temperature scaling of the logits (emovox.calibration), fitted on validation speakers
        self.register_buffer("temperature", torch.ones(()))
        self.backbone = build_backbone(family, dim, len(self.labels), **self.params)
        # speaker normalisation (encoder family, pooling: stats): a second head reads statistics
        # standardised over a group of clips from one speaker; a lone clip uses the plain head
        self.speaker_norm = bool(self.params.get("speaker_norm", False))
        if self.speaker_norm:
            if not self.pooled or family != "encoder":
                raise ConfigError("model.params.speaker_norm: needs family encoder with pooling: stats")
            self.speaker_backbone = build_backbone(family, dim, len(self.labels), **self.params)
            self.register_buffer("speaker_temperature", torch.ones(()))
            self.register_buffer("speaker_prior_var", torch.ones(dim))  # within-speaker variance

    def set_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Set the normaliser from training statistics (std is floored to avoid division by ~0)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.input_dim or std.numel() != self.input_dim:
            raise ValueError(f"normalisation stats must have {self.input_dim} values, got {mean.numel()}")
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-5))

    def raw_inputs(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone inputs before normalisation: frame features ``[B, C, F]`` or pooled ``[B, D]``."""
        feats, frames = self.extractor(wave, lengths)
        if self.pooled:
            return pool_stats(feats, frames, self.feature_cfg.stats), frames
        return feats, frames

    def normalize(self, x: Tensor, frames: Tensor) -> Tensor:
        """Apply the normaliser; frame features get padded frames zeroed."""
        if self.pooled:
            return (x - self.mean) / self.std
        x = (x - self.mean[:, None]) / self.std[:, None]
        return x * frame_mask(frames, x.shape[-1]).unsqueeze(1).to(x.dtype)

    def inputs(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised backbone inputs and frame lengths."""
        x, frames = self.raw_inputs(wave, lengths)
        return self.normalize(x, frames), frames

    def group_normalize(self, x: Tensor) -> Tensor:
        """Standardise raw pooled statistics ``x [N, D]`` of one speaker's clips over that group
        (:func:`emovox.speaker_stats.group_standardize`, shrunk towards the training speakers'
        within-speaker variance)."""
        return group_standardize(x, self.speaker_prior_var)

    def speaker_head(self, z: Tensor) -> Tensor:
        """Calibrated logits of the speaker head from already standardised statistics ``z [N, D]``."""
        return self.speaker_backbone(z, None) / self.speaker_temperature

    def speaker_logits(self, x: Tensor) -> Tensor:
        """Calibrated logits of the speaker head from raw pooled statistics of one group ``[N, D]``."""
        return self.speaker_head(self.group_normalize(x))

    def head(self, x: Tensor, frames: Tensor) -> Tensor:
        """Calibrated logits from normalised backbone inputs: ``backbone(x) / temperature``."""
        return self.backbone(x, frames) / self.temperature

    def forward(self, wave: Tensor, lengths: Tensor) -> Tensor:
        x, frames = self.inputs(wave, lengths)
        return self.head(x, frames)

    def config(self) -> dict[str, Any]:
        """JSON-able description that :meth:`from_config` rebuilds the (untrained) network from."""
        out = {
            "features": self.feature_cfg.to_dict(),
            "family": self.family,
            "params": jsonable(self.params),
            "labels": list(self.labels),
        }
        if self.family == "encoder":
            out["encoder"] = self.extractor.config()
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EmotionNet:
        """Rebuild a network from :meth:`config` output (weights are loaded separately)."""
        try:
            encoder = None
            if config["family"] == "encoder":
                from emovox.encoders import encoder_from_config

                encoder = encoder_from_config(config["encoder"])
            return cls(
                FeatureConfig.from_dict(config["features"]),
                config["family"],
                config.get("params", {}),
                config["labels"],
                encoder=encoder,
            )
        except KeyError as exc:
            raise ConfigError(f"model config is missing the key {exc.args[0]!r}") from None


def _load_encoder(params: dict[str, Any]) -> nn.Module:
    from emovox.encoders import load_encoder

    source = params.get("encoder")
    if not source or not isinstance(source, str):
        raise ConfigError("model.params.encoder: name a pretrained encoder (hub name or local folder)")
    return load_encoder(source, params.get("encoder_layers", "all"))
