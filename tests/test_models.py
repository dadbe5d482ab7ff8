"""Model families: padding invariance, ONNX export, EmotionNet config round trip, parameter errors."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from conftest import synth_speech
from emovox.errors import ConfigError
from emovox.features import FeatureConfig, pad_batch
from emovox.models import MODELS, EmotionNet, MaskedRNN, build_backbone, frame_mask, masked_mean


@pytest.fixture(scope="module", autouse=True)
def _one_cpu_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a CPU shared with other jobs, two-thread OpenMP
    regions wait on each other (recurrent layers by orders of magnitude)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LABELS = ["neutral", "happy", "angry"]
# tiny instances of every family (and the non-default variants worth covering)
TINY: dict[str, dict] = {
    "mlp": {"hidden": [16, 8]},
    "cnn1d": {"channels": [8, 8], "kernel": 3},
    "cnn2d": {"channels": [4, 8]},
    "crnn": {"channels": [4], "hidden": 8},
    "lstm": {"hidden": 8, "layers": 1},
}
VARIANTS: dict[str, dict] = {
    **TINY,
    "cnn1d-mean": {"channels": [8], "kernel": 5, "pooling": "mean"},
    "crnn-gru-uni": {"channels": [4, 4], "hidden": 8, "rnn": "gru", "bidirectional": False},
    "lstm-mean": {"hidden": 8, "layers": 2, "pooling": "mean"},
}


def family(name: str) -> str:
    return name.split("-")[0]


def tiny_net(name: str, seed: int = 0) -> EmotionNet:
    torch.manual_seed(seed)
    cfg = FeatureConfig(sets=("mfcc",), n_mfcc=13, n_mels=32) if family(name) == "cnn1d" else None
    cfg = cfg or FeatureConfig(sets=("logmel",), n_mels=16)
    net = EmotionNet(cfg, family(name), VARIANTS[name], LABELS)
    # non-trivial normaliser so the test also covers it
    net.set_normalization(torch.randn(net.input_dim) * 0.1 - 3.0, torch.rand(net.input_dim) + 0.5)
    return net.eval()


CLIPS = [synth_speech(0.7, f0=150.0, seed=1), synth_speech(1.9, f0=220.0, seed=2), synth_speech(0.3, seed=3)]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_emotionnet_same_output_alone_and_padded(name: str) -> None:
    net = tiny_net(name)
    wave, lengths = pad_batch(CLIPS)
    with torch.no_grad():
        batched = net(wave, lengths)
        for i, clip in enumerate(CLIPS):
            alone = net(*pad_batch([clip]))
            torch.testing.assert_close(batched[i : i + 1], alone, atol=2e-5, rtol=1e-4)
        # extra zero padding at the end of the whole batch changes nothing either
        longer = torch.nn.functional.pad(wave, (0, 4000))
        torch.testing.assert_close(net(longer, lengths), batched, atol=2e-5, rtol=1e-4)
    assert batched.shape == (3, len(LABELS))


@pytest.mark.parametrize("name", [n for n in VARIANTS if family(n) != "mlp"])  # mlp: no frames
def test_backbone_ignores_whatever_is_in_the_padding(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(family(name), 12, 4, **VARIANTS[name]).eval()
    lengths = torch.tensor([37, 20, 9])
    x = torch.randn(3, 12, 37)
    noisy = x.clone()
    noisy[frame_mask(lengths, 37).logical_not().unsqueeze(1).expand_as(x)] = 1e3
    with torch.no_grad():
        torch.testing.assert_close(net(noisy, lengths), net(x, lengths), atol=1e-5, rtol=1e-4)
        for i in range(3):
            alone = net(x[i : i + 1, :, : int(lengths[i])], lengths[i : i + 1])
            torch.testing.assert_close(net(x, lengths)[i : i + 1], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(TINY))
def test_onnx_export_dynamic_batch_and_time(name: str) -> None:
    """Every family exports (TorchScript exporter, dynamic axes) and onnxruntime reproduces PyTorch
    on a batch size and lengths other than the export example. (`emovox export` uses the dynamo
    exporter; its own tests cover that path.)"""
    import onnxruntime as ort

    net = tiny_net(name)
    example = pad_batch([synth_speech(0.5), synth_speech(0.4, seed=5)])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, example, buffer, dynamo=False, opset_version=17,
            input_names=["wave", "lengths"], output_names=["logits"],
            dynamic_axes={"wave": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    wave, lengths = pad_batch(CLIPS)
    got = session.run(None, {"wave": wave.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        want = net(wave, lengths).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(TINY))
def test_emotionnet_config_round_trip(name: str) -> None:
    net = tiny_net(name, seed=1)
    config = json.loads(json.dumps(net.config()))  # JSON-able
    assert config["family"] == family(name) and config["labels"] == LABELS
    rebuilt = EmotionNet.from_config(config)
    assert rebuilt.feature_cfg == net.feature_cfg and rebuilt.params == net.params
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    rebuilt.eval()
    wave, lengths = pad_batch(CLIPS[:2])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(wave, lengths), net(wave, lengths))
    # the normaliser travels in the state dict
    assert {"mean", "std"} <= set(net.state_dict())


def test_mlp_consumes_pooled_statistics() -> None:
    net = tiny_net("mlp")
    wave, lengths = pad_batch(CLIPS)
    x, frames = net.inputs(wave, lengths)
    assert net.pooled and x.shape == (3, net.extractor.num_channels * len(net.feature_cfg.stats))
    assert net.input_dim == x.shape[1]


def test_every_registered_family_builds_with_defaults() -> None:
    for name, cls in MODELS.items():
        net = build_backbone(name, 40, 5)
        assert isinstance(net, cls)
        x = torch.randn(2, 40) if name == "mlp" else torch.randn(2, 40, 30)
        with torch.no_grad():
            assert net.eval()(x, torch.tensor([30, 12])).shape == (2, 5)


def test_parameter_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="model.family: unknown model family 'resnet'"):
        build_backbone("resnet", 8, 2)
    with pytest.raises(ConfigError, match="unknown parameter.*hiden.*allowed: hidden, layers"):
        build_backbone("lstm", 8, 2, hiden=3)
    with pytest.raises(ConfigError, match="model.params.channels: expected a list"):
        build_backbone("cnn2d", 8, 2, channels=16)
    with pytest.raises(ConfigError, match="model.params.pooling"):
        build_backbone("cnn1d", 8, 2, pooling="max")
    with pytest.raises(ConfigError, match="at least two emotion labels"):
        EmotionNet(FeatureConfig(), "mlp", {}, ["happy"])
    with pytest.raises(ConfigError, match="missing the key 'family'"):
        EmotionNet.from_config({"features": {}, "labels": LABELS})
    with pytest.raises(ValueError, match="must have"):
        tiny_net("mlp").set_normalization(torch.zeros(3), torch.ones(3))


def test_mlp_hidden_integer_is_one_layer_and_empty_is_linear() -> None:
    assert sum(isinstance(m, torch.nn.Linear) for m in build_backbone("mlp", 10, 3, hidden=7).modules()) == 2
    assert sum(isinstance(m, torch.nn.Linear) for m in build_backbone("mlp", 10, 3, hidden=[]).modules()) == 1


def test_masking_helpers() -> None:
    lengths = torch.tensor([3, 1])
    assert frame_mask(lengths, 4).tolist() == [[True, True, True, False], [True, False, False, False]]
    h = torch.arange(16, dtype=torch.float32).reshape(2, 4, 2)
    torch.testing.assert_close(masked_mean(h, lengths), torch.tensor([[2.0, 3.0], [8.0, 9.0]]))
    # reverse the valid part of each item, leave the padding where it is
    index = MaskedRNN._reverse_index(lengths, 4)
    assert index.tolist() == [[2, 1, 0, 3], [0, 1, 2, 3]]


def test_oversized_networks_are_refused_without_allocating_them() -> None:
    """Widths and depths are range-checked and the parameter count is taken on torch's meta device
    (shapes only), so a tampered bundle cannot make emovox allocate gigabytes of weights."""
    cases = [
        (
            "cnn1d",
            {"channels": [20000, 20000]},
            r"model.params.channels\[0\]: must be an integer in \[1, 1024\]",
        ),
        ("lstm", {"hidden": 1024, "layers": 4}, r"lstm with these parameters has \d+\.\d million weights"),
        ("cnn1d", {"channels": [64] * 9}, r"model.params.channels: must have 1 to 8 elements"),
        ("crnn", {"dropout": float("nan")}, r"model.params.dropout"),
    ]
    for family, params, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_backbone(family, 40, 4, **params)
    with pytest.raises(ConfigError, match=r"model.labels\[0\]: may hold only printable characters"):
        EmotionNet(FeatureConfig(), "mlp", {}, ["<img src=x onerror=alert(1)>", "sad"])
    with pytest.raises(ConfigError, match="labels must be unique"):
        EmotionNet(FeatureConfig(), "mlp", {}, ["sad", "sad"])
