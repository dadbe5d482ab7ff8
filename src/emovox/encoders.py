"""Pretrained speech encoders (Whisper; wav2vec2 / HuBERT / WavLM / data2vec) as a frame front end.

:class:`SpeechEncoder` plays the role :class:`~emovox.features.FeatureExtractor` plays for the
hand-made features: ``forward(wave [B, T], lengths [B]) -> (feats [B, C, F], frames [B])`` on a
zero-padded batch of 16 kHz waveforms, where ``C = len(layers) * hidden_size`` stacks the chosen
hidden states (``0`` = the embeddings before the first transformer layer, ``i`` = the output of
layer ``i``) and frames past each clip's length are zeroed. The models come from Hugging Face
``transformers``; nothing is re-implemented but the glue:

* **Whisper** runs on the clip's real length, not padded to Whisper's 30 s window
  (``WhisperEncoder.forward`` refuses shorter inputs, transformers#25744): our short forward drives
  the encoder's own submodules (``conv1``, ``conv2``, ``embed_positions``, ``layers``) with the
  positional embeddings sliced to the clip's frames and an attention mask over the padded frames.
  Clips longer than 30 s are encoded in 30 s chunks. The log-mel front end is computed in torch
  (a windowed-DFT convolution, exportable to ONNX) and matches ``WhisperFeatureExtractor``'s numbers
  on every frame of the clip (``tests/test_encoders.py``).
* **wav2vec2-style** models run through ``AutoModel`` with their own input normalisation
  (zero mean / unit variance per clip when the model's feature extractor asks for it) and an
  attention mask; models whose convolutional front end uses group normalisation over time
  (wav2vec2-base, HuBERT-base) are run one clip at a time, because for them padding changes the
  result.

A clip therefore gives the same features alone and inside a padded batch, for every kind.

:func:`load_encoder` loads weights from a local Hugging Face folder (``config.json`` +
``model.safetensors``) or a hub name (needs a network), keeps only the layers up to the deepest one
used, and freezes them. :meth:`SpeechEncoder.config` is JSON-able and holds the model's full
Hugging Face configuration, so a bundle rebuilds the encoder offline from it and its own weights
file (``encoder.safetensors``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from emovox.errors import ConfigError, EmovoxError
from emovox.jsonutil import jsonable

#: Bump whenever a change in this module changes encoder outputs, so caches keyed on it go stale.
ENCODERS_VERSION = "1"

SAMPLE_RATE = 16_000
# Whisper's front end (WhisperFeatureExtractor defaults)
_W_NFFT = 400
_W_HOP = 160
_W_CHUNK = 30 * SAMPLE_RATE  # samples in one Whisper window
_W_MIN_SAMPLES = _W_NFFT  # reflect padding of n_fft // 2 needs at least this much audio


class EncoderError(EmovoxError):
    """A pretrained encoder could not be loaded (missing model, no network, unsupported kind)."""


@dataclass
class EncoderConfig:
    """Everything that determines an encoder's outputs, JSON-able (saved in bundles, hashed in cache keys).

    ``source`` is what the user named (hub name or folder; informational once loaded), ``kind``
    ``"whisper"`` or ``"hf"`` (any ``AutoModel`` speech encoder), ``model_config`` the Hugging Face
    configuration (``to_dict()``) with the layers above ``max(layers)`` removed, ``layers`` the hidden
    states stacked on channels, ``weights`` a SHA-256 of the weights, ``normalize`` whether each clip
    is standardised before a wav2vec2-style model.
    """

    source: str
    kind: str
    model_config: dict[str, Any]
    layers: tuple[int, ...]
    weights: str = ""
    normalize: bool = False
    sample_rate: int = SAMPLE_RATE
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "model_config": jsonable(self.model_config),
            "layers": list(self.layers),
            "weights": self.weights,
            "normalize": self.normalize,
            "sample_rate": self.sample_rate,
            "code_version": ENCODERS_VERSION,
        }

    def cache_dict(self) -> dict[str, Any]:
        """What determines the outputs (cache keys): everything but where the weights were read from."""
        d = self.to_dict()
        del d["source"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderConfig:
        try:
            layers = tuple(int(i) for i in d["layers"])
            return cls(
                source=str(d["source"]),
                kind=str(d["kind"]),
                model_config=dict(d["model_config"]),
                layers=layers,
                weights=str(d.get("weights", "")),
                normalize=bool(d.get("normalize", False)),
                sample_rate=int(d.get("sample_rate", SAMPLE_RATE)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"encoder config: invalid or missing entry ({exc})") from None


# ------------------------------------------------------------------------------------ Whisper front end
class WhisperLogMel(nn.Module):
    """Whisper's log-mel spectrogram in torch: ``(wave [B, T], lengths [B]) -> (mel [B, n_mels, F], F [B])``.

    Same numbers as ``WhisperFeatureExtractor`` on the clip's frames (``F = length // 160``; the
    feature extractor pads the clip with zeros to 30 s, which is why zeros follow each clip here
    too): centred 400-sample periodic Hann frames every 160 samples (reflect padding at the start),
    power spectrum, Slaney mel filterbank, ``log10`` floored at 1e-10, clamped to 8 below the clip's
    maximum, then ``(x + 4) / 4``. Frames past each clip's length are zero.
    """

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        window = np.hanning(_W_NFFT + 1)[:-1]  # periodic Hann, as torch.hann_window(400)
        k = np.arange(_W_NFFT // 2 + 1)
        angle = 2 * np.pi * np.outer(k, np.arange(_W_NFFT)) / _W_NFFT
        basis = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])[:, None, :]
        self.register_buffer("dft", torch.tensor(basis, dtype=torch.float32), persistent=False)
        mel = mel_filter_bank(
            num_frequency_bins=_W_NFFT // 2 + 1,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer("mel_fb", torch.tensor(mel.T, dtype=torch.float32), persistent=False)

    def forward(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        half = _W_NFFT // 2
        wave = wave.float()
        # centre frames: reflect at the start (as torch.stft / numpy), zeros after the clip (as the
        # feature extractor's padding to 30 s), so a clip's frames do not depend on the batch
        x = torch.cat([wave[:, 1 : half + 1].flip(-1), wave, wave.new_zeros(wave.shape[0], half)], dim=1)
        spec = nnf.conv1d(x[:, None, :], self.dft, stride=_W_HOP)  # [B, 2 * bins, frames]
        bins = _W_NFFT // 2 + 1
        power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2
        frames = torch.div(lengths.to(torch.int64), _W_HOP, rounding_mode="floor")
        n = wave.shape[1] // _W_HOP
        power = power[:, :, :n]
        logmel = torch.log10(torch.clamp(torch.matmul(self.mel_fb, power), min=1e-10))
        valid = (torch.arange(n, device=wave.device)[None, :] < frames[:, None])[:, None, :]
        peak = torch.where(valid, logmel, torch.full_like(logmel, -1e4)).amax(dim=(1, 2), keepdim=True)
        logmel = (torch.maximum(logmel, peak - 8.0) + 4.0) / 4.0
        return logmel * valid.to(logmel.dtype), frames


def _frame_mask(lengths: Tensor, frames: int) -> Tensor:
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


class _WhisperShort(nn.Module):
    """A Whisper encoder run on real-length input; returns the requested hidden states stacked."""

    def __init__(self, model_config: Mapping[str, Any], layers: Sequence[int]) -> None:
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig(**_clean_config(model_config))
        config._attn_implementation = "eager"  # exports to ONNX; sdpa gives the same numbers
        self.frontend = WhisperLogMel(config.num_mel_bins)
        self.encoder = WhisperEncoder(config)
        self.layers = list(layers)
        self.hidden = config.d_model
        self.max_positions = config.max_source_positions

    def forward(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mel, mel_frames = self.frontend(wave, lengths)
        enc = self.encoder
        h = nnf.gelu(enc.conv1(mel))
        h = h * _frame_mask(mel_frames, h.shape[-1]).unsqueeze(1).to(h.dtype)  # as zero padding alone
        h = nnf.gelu(enc.conv2(h))
        frames = torch.div(mel_frames + 1, 2, rounding_mode="floor")
        h = h.permute(0, 2, 1)
        t = h.shape[1]
        h = h + enc.embed_positions.weight[:t].to(h.dtype)
        valid = _frame_mask(frames, t)
        bias = torch.zeros(valid.shape, dtype=h.dtype, device=h.device)
        bias = bias.masked_fill(~valid, torch.finfo(h.dtype).min)[:, None, None, :]
        states = [h]
        for layer in enc.layers[: max(self.layers)]:
            h = layer(h, bias)
            states.append(h)
        out = torch.cat([states[i] for i in self.layers], dim=-1)  # [B, F, L * D]
        out = out * valid.unsqueeze(-1).to(out.dtype)
        return out.transpose(1, 2), frames


class _HFShort(nn.Module):
    """An ``AutoModel`` speech encoder (wav2vec2, HuBERT, WavLM, data2vec-audio)."""

    def __init__(self, model_config: Mapping[str, Any], layers: Sequence[int], normalize: bool) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        cfg = dict(_clean_config(model_config))
        model_type = cfg.pop("model_type", None)
        if not model_type:
            raise EncoderError("encoder config has no model_type")
        config = AutoConfig.for_model(model_type, **cfg)
        config._attn_implementation = "eager"
        config.apply_spec_augment = False  # training-time masking of the encoder: never wanted here
        self.model = AutoModel.from_config(config)
        for attr in ("masked_spec_embed",):  # training-only parameters: not needed, not stored
            if hasattr(self.model, attr):
                delattr(self.model, attr)
        self.layers = list(layers)
        self.hidden = config.hidden_size
        self.normalize = normalize
        # group norm over time in the conv front end: padding changes results, run clips one by one
        self.per_clip = getattr(config, "feat_extract_norm", "layer") == "group"

    def _encode(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mask = _frame_mask(lengths, wave.shape[1])
        if self.normalize:
            m = mask.to(wave.dtype)
            n = m.sum(1, keepdim=True).clamp(min=1)
            mean = (wave * m).sum(1, keepdim=True) / n
            var = (((wave - mean) * m) ** 2).sum(1, keepdim=True) / n
            wave = (wave - mean) / torch.sqrt(var + 1e-7) * m
        out = self.model(
            input_values=wave,
            attention_mask=None if self.per_clip else mask.long(),
            output_hidden_states=True,
        )
        frames = self.model._get_feat_extract_output_lengths(lengths).to(torch.int64)
        states = out.hidden_states
        h = torch.cat([states[i] for i in self.layers], dim=-1)
        return h, frames

    def forward(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if self.per_clip and wave.shape[0] > 1:
            parts = [
                self._encode(wave[i : i + 1, : int(lengths[i])], lengths[i : i + 1]) for i in range(len(wave))
            ]
            t = max(p[0].shape[1] for p in parts)
            h = torch.cat([nnf.pad(p[0], (0, 0, 0, t - p[0].shape[1])) for p in parts])
            frames = torch.cat([p[1] for p in parts])
        else:
            h, frames = self._encode(wave, lengths)
        h = h * _frame_mask(frames, h.shape[1]).unsqueeze(-1).to(h.dtype)
        return h.transpose(1, 2), frames


def _clean_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """A Hugging Face config dict without the keys that describe a checkpoint rather than the model."""
    drop = {"transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype"}
    return {k: v for k, v in model_config.items() if k not in drop}


class SpeechEncoder(nn.Module):
    """A frozen pretrained speech encoder as a frame front end (see the module docstring).

    ``cfg`` (an :class:`EncoderConfig`) rebuilds it without weights; ``num_channels`` is
    ``len(layers) * hidden_size``; ``frames_per_second`` is 50 for Whisper and wav2vec2-style models.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        if not cfg.layers or min(cfg.layers) < 0:
            raise ConfigError(
                f"model.params.layers: expected hidden-state indices >= 0, got {list(cfg.layers)}"
            )
        self.cfg = cfg
        if cfg.kind == "whisper":
            depth = int(cfg.model_config.get("encoder_layers", 0))
            self.net: nn.Module = _WhisperShort(cfg.model_config, cfg.layers)
        elif cfg.kind == "hf":
            depth = int(cfg.model_config.get("num_hidden_layers", 0))
            self.net = _HFShort(cfg.model_config, cfg.layers, cfg.normalize)
        else:
            raise ConfigError(f"encoder kind: expected 'whisper' or 'hf', got {cfg.kind!r}")
        if max(cfg.layers) > depth:
            raise ConfigError(
                f"model.params.layers: {cfg.source} has {depth} layers (hidden states 0-{depth}), "
                f"asked for {max(cfg.layers)}"
            )
        self.hidden = int(self.net.hidden)
        self.num_channels = self.hidden * len(cfg.layers)
        self.frames_per_second = 50
        self.cache_dtype = np.float16  # hidden states are cached in half precision (half the disk / RAM)
        self.freeze()

    def freeze(self, finetune_top: int = 0) -> None:
        """Freeze every weight, except the top ``finetune_top`` transformer layers used."""
        for p in self.parameters():
            p.requires_grad_(False)
        if finetune_top > 0:
            for layer in self.transformer_layers()[-finetune_top:]:
                for p in layer.parameters():
                    p.requires_grad_(True)

    def train(self, mode: bool = True) -> SpeechEncoder:
        """Frozen weights stay in eval mode (no dropout / layer drop) unless some are being fine-tuned."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.parameters()):
            self.net.eval()
        return self

    def transformer_layers(self) -> list[nn.Module]:
        if isinstance(self.net, _WhisperShort):
            return list(self.net.encoder.layers)
        return list(self.net.model.encoder.layers)

    def forward(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        lengths = lengths.to(torch.int64)
        if isinstance(self.net, _WhisperShort):
            if wave.shape[1] < _W_MIN_SAMPLES:
                wave = nnf.pad(wave, (0, _W_MIN_SAMPLES - wave.shape[1]))
            lengths = lengths.clamp(min=_W_MIN_SAMPLES)
            if wave.shape[1] > _W_CHUNK:
                return self._chunked(wave, lengths)
        return self.net(wave, lengths)

    def _chunked(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Whisper on clips over 30 s: each 30 s chunk encoded alone, frames concatenated."""
        feats, frames = [], torch.zeros_like(lengths)
        for start in range(0, int(wave.shape[1]), _W_CHUNK):
            part = (lengths - start).clamp(min=0, max=_W_CHUNK)
            keep = part >= _W_MIN_SAMPLES
            chunk_len = torch.where(keep, part, torch.full_like(part, _W_MIN_SAMPLES))
            f, fr = self.net(wave[:, start : start + _W_CHUNK], chunk_len)
            fr = torch.where(keep, fr, torch.zeros_like(fr))
            f = f * _frame_mask(fr, f.shape[-1]).unsqueeze(1).to(f.dtype)
            feats.append((f, fr))
            frames = frames + fr
        total = int(frames.max())
        out = wave.new_zeros(wave.shape[0], self.num_channels, total)
        for b in range(wave.shape[0]):
            pos = 0
            for f, fr in feats:
                n = int(fr[b])
                out[b, :, pos : pos + n] = f[b, :, :n]
                pos += n
        return out, frames

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()


# ------------------------------------------------------------------------------------------ loading
def parse_layers(layers: Any, depth: int) -> tuple[int, ...]:
    """``"all"`` -> 0..depth; an int ``k`` -> 1..k; a list -> itself (validated)."""
    if layers in (None, "all"):
        return tuple(range(depth + 1))
    if isinstance(layers, int) and not isinstance(layers, bool):
        if not 1 <= layers <= depth:
            raise ConfigError(f"model.params.layers: expected 1..{depth} (the encoder's depth), got {layers}")
        return tuple(range(1, layers + 1))
    if isinstance(layers, (list, tuple)) and layers and all(isinstance(i, int) for i in layers):
        bad = [i for i in layers if not 0 <= i <= depth]
        if bad:
            raise ConfigError(f"model.params.layers: the encoder has hidden states 0..{depth}, got {bad}")
        return tuple(sorted(set(layers)))
    raise ConfigError(
        f"model.params.layers: expected 'all', a depth or a list of layer indices, got {layers!r}"
    )


def _weights_digest(state: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to(torch.float32).contiguous().cpu()
        h.update(name.encode() + str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _from_pretrained(cls: Any, source: str) -> Any:
    """``cls.from_pretrained(source)``, with a clear error when the model cannot be had."""
    local = Path(source).expanduser()
    try:
        if local.exists():
            if not (local / "config.json").is_file():
                raise EncoderError(
                    f"encoder {source!r}: {local} is not a Hugging Face model folder (no config.json)"
                )
            return cls.from_pretrained(str(local), local_files_only=True)
        return cls.from_pretrained(source)
    except EncoderError:
        raise
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EncoderError(
            f"encoder {source!r}: could not load it ({first}). A hub name needs a network connection "
            "to the Hugging Face hub; offline, download the model elsewhere (`hf download NAME`) or "
            "convert a CTranslate2 Whisper model with `python scripts/convert_whisper_ct2.py`, then pass "
            "the local folder as model.params.encoder"
        ) from None


def load_encoder(source: str | Path, layers: Any = "all") -> SpeechEncoder:
    """Load a pretrained encoder by hub name or local Hugging Face folder, frozen, truncated to ``layers``."""
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is a dependency
        raise EncoderError(
            "pretrained encoders need the transformers package: pip install transformers"
        ) from None
    source = str(source)
    _quiet_transformers()
    config = _from_pretrained(transformers.AutoConfig, source)
    model_type = getattr(config, "model_type", "")
    if model_type == "whisper":
        model = _from_pretrained(transformers.WhisperModel, source).get_encoder()
        depth = int(config.encoder_layers)
        chosen = parse_layers(layers, depth)
        config.encoder_layers = max(max(chosen), 1)
        state = {f"net.encoder.{k}": v for k, v in model.state_dict().items()}
        state = {k: v for k, v in state.items() if _keep_layer(k, "net.encoder.layers.", max(chosen))}
        cfg = EncoderConfig(source, "whisper", config.to_dict(), chosen)
    elif model_type in (
        "wav2vec2",
        "hubert",
        "wavlm",
        "data2vec-audio",
        "wav2vec2-conformer",
        "unispeech",
        "unispeech-sat",
        "sew",
        "sew-d",
    ):
        model = _from_pretrained(transformers.AutoModel, source)
        depth = int(config.num_hidden_layers)
        chosen = parse_layers(layers, depth)
        if not getattr(
            config, "do_stable_layer_norm", False
        ):  # post-norm: lower states do not depend on depth
            config.num_hidden_layers = max(max(chosen), 1)
        normalize = _wants_normalisation(source, config)
        state = {f"net.model.{k}": v for k, v in model.state_dict().items()}
        state = {
            k: v
            for k, v in state.items()
            if _keep_layer(k, "net.model.encoder.layers.", config.num_hidden_layers)
        }
        cfg = EncoderConfig(source, "hf", config.to_dict(), chosen, normalize=normalize)
    else:
        raise EncoderError(
            f"encoder {source!r}: model type {model_type!r} is not a supported speech encoder "
            "(whisper, wav2vec2, hubert, wavlm, data2vec-audio)"
        )
    cfg.weights = _weights_digest(state)
    encoder = SpeechEncoder(cfg)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if "masked_spec_embed" not in k]
    if missing:
        raise EncoderError(f"encoder {source!r}: weights missing for {missing[:3]}")
    encoder.eval()
    return encoder


def _quiet_transformers() -> None:
    """transformers' per-load progress bars and config warnings are noise in emovox's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _keep_layer(key: str, prefix: str, depth: int) -> bool:
    if not key.startswith(prefix):
        return "masked_spec_embed" not in key
    return int(key[len(prefix) :].split(".", 1)[0]) < depth


def _wants_normalisation(source: str, config: Any) -> bool:
    """Whether the model's feature extractor standardises each clip (read from its preprocessor config)."""
    try:
        from transformers import AutoFeatureExtractor

        fe = _from_pretrained(AutoFeatureExtractor, source)
        return bool(getattr(fe, "do_normalize", True))
    except EncoderError:
        # no preprocessor_config.json: models with layer-norm front ends were trained on standardised input
        return getattr(config, "feat_extract_norm", "layer") == "layer"


def encoder_from_config(config: Mapping[str, Any]) -> SpeechEncoder:
    """Rebuild an (untrained, weightless) encoder from :meth:`SpeechEncoder.config` output."""
    _quiet_transformers()
    return SpeechEncoder(EncoderConfig.from_dict(config))


__all__ = [
    "ENCODERS_VERSION",
    "EncoderConfig",
    "EncoderError",
    "SpeechEncoder",
    "WhisperLogMel",
    "encoder_from_config",
    "load_encoder",
    "parse_layers",
]
