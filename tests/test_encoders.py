"""The encoder family: Whisper / wav2vec2 front ends from transformers (tiny random models built from
configs here, no download), masks and batch-vs-alone equality, EmotionNet + bundle round trip offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import make_tiny_whisper  # noqa: E402
from emovox.bundle import ENCODER_FILE, WEIGHTS_FILE, load_bundle, save_bundle  # noqa: E402
from emovox.encoders import EncoderError, WhisperLogMel, load_encoder, parse_layers  # noqa: E402
from emovox.errors import ConfigError  # noqa: E402
from emovox.features import FeatureConfig, pad_batch  # noqa: E402
from emovox.models import EmotionNet  # noqa: E402

SR = 16_000
CARD = {"data": "synthetic", "protocol": "none", "licence": "test"}


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    wave = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SR) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper-tiny-random"))


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 16), conv_kernel=(10, 8, 16),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
        do_stable_layer_norm=True, vocab_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wav2vec2-tiny-random")
    transformers.Wav2Vec2Model(cfg).save_pretrained(path)
    return path


def test_whisper_logmel_matches_feature_extractor() -> None:
    wave = _speechlike(2.3, 0)
    ref = transformers.WhisperFeatureExtractor()(wave, sampling_rate=SR, return_tensors="np").input_features[
        0
    ]
    mel, frames = WhisperLogMel()(torch.from_numpy(wave)[None], torch.tensor([wave.size]))
    n = int(frames[0])
    assert n == wave.size // 160
    np.testing.assert_allclose(mel[0, :, :n].numpy(), ref[:, :n], atol=1e-4)
    assert torch.all(mel[0, :, n:] == 0)


def test_whisper_short_forward_equals_transformers_on_a_full_window(tiny_whisper: Path) -> None:
    """On a 30 s clip (no padding, so no mask) our short forward is exactly WhisperEncoder's forward."""
    enc = load_encoder(tiny_whisper, [0, 1, 2])
    wave = _speechlike(30.0, 1)
    wave[-400:] = 0  # the feature extractor reflects at 30 s where emovox sees zeros: make them agree
    feats = transformers.WhisperFeatureExtractor()(wave, sampling_rate=SR, return_tensors="pt").input_features
    hf = transformers.WhisperModel.from_pretrained(tiny_whisper).get_encoder().eval()
    with torch.no_grad():
        ref = hf(feats, output_hidden_states=True).hidden_states
        mine, frames = enc(torch.from_numpy(wave)[None], torch.tensor([wave.size]))
    assert int(frames[0]) == 1500
    for j, layer in enumerate([0, 1, 2]):
        np.testing.assert_allclose(mine[0, j * 32 : (j + 1) * 32].T.numpy(), ref[layer][0].numpy(), atol=2e-4)


@pytest.mark.parametrize("kind", ["whisper", "wav2vec2"])
def test_clip_alone_equals_clip_in_padded_batch(kind: str, tiny_whisper: Path, tiny_wav2vec2: Path) -> None:
    enc = load_encoder(tiny_whisper if kind == "whisper" else tiny_wav2vec2, "all")
    waves = [_speechlike(s, i) for i, s in enumerate((0.7, 2.9, 1.6))]
    wave, lengths = pad_batch(waves)
    with torch.no_grad():
        batch, frames = enc(wave, lengths)
        for i, w in enumerate(waves):
            alone, n = enc(torch.from_numpy(w)[None], torch.tensor([w.size]))
            assert int(n[0]) == int(frames[i])
            k = int(n[0])
            np.testing.assert_allclose(batch[i, :, :k].numpy(), alone[0, :, :k].numpy(), atol=2e-5)
            assert torch.all(batch[i, :, k:] == 0)


def test_whisper_long_clip_is_chunked(tiny_whisper: Path) -> None:
    enc = load_encoder(tiny_whisper, [1])
    wave = _speechlike(31.0, 2)
    with torch.no_grad():
        feats, frames = enc(torch.from_numpy(wave)[None], torch.tensor([wave.size]))
    assert int(frames[0]) == 1500 + 50
    assert torch.isfinite(feats).all()


def test_layers_are_truncated_and_validated(tiny_whisper: Path) -> None:
    enc = load_encoder(tiny_whisper, 2)
    assert enc.cfg.layers == (1, 2)
    assert len(enc.net.encoder.layers) == 2  # the third layer is never run nor stored
    assert enc.num_channels == 64
    assert all(not p.requires_grad for p in enc.parameters())
    assert parse_layers("all", 3) == (0, 1, 2, 3)
    with pytest.raises(ConfigError, match="layers"):
        parse_layers([0, 7], 3)


def test_missing_encoder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="not a Hugging Face model folder"):
        load_encoder(tmp_path, "all")
    with pytest.raises(EncoderError, match="no-such-org/no-such-model.*network"):
        load_encoder("no-such-org/no-such-model", "all")


@pytest.mark.parametrize("kind", ["whisper", "wav2vec2"])
def test_encoder_net_bundle_round_trip_offline(
    kind: str, tiny_whisper: Path, tiny_wav2vec2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tiny_whisper if kind == "whisper" else tiny_wav2vec2
    params = {"encoder": str(source), "encoder_layers": "all", "hidden": 16}
    net = EmotionNet(FeatureConfig(), "encoder", params, ["angry", "happy", "sad"]).eval()
    waves = [_speechlike(1.2, 3), _speechlike(0.8, 4)]
    wave, lengths = pad_batch(waves)
    with torch.no_grad():
        before = net(wave, lengths)
    bundle = save_bundle(net, tmp_path / "b", metrics={}, card=CARD, encoder_dtype="float32")
    assert (bundle / ENCODER_FILE).is_file() and (bundle / WEIGHTS_FILE).is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source.rename(source.with_name(source.name + "-gone"))  # the bundle must not need the original
    try:
        loaded, meta = load_bundle(bundle)
        with torch.no_grad():
            after = loaded(wave, lengths)
    finally:
        source.with_name(source.name + "-gone").rename(source)
    torch.testing.assert_close(before, after)
    assert meta["model"]["encoder"]["kind"] == ("whisper" if kind == "whisper" else "hf")


# ------------------------------------------------------------------ training, speaker normalisation


def test_speaker_normalised_encoder_model_trains_predicts_and_round_trips(
    tiny_whisper: Path, tmp_path: Path
) -> None:
    """fit (stats pooling + speaker head, calibrated), grouped vs lone predictions, bundle, Recognizer."""
    from emovox.config import load_config
    from emovox.corpora import load_corpus, load_waves
    from emovox.fitting import fit
    from emovox.predict import Recognizer
    from test_training import by_speaker, make_corpus

    utts = load_corpus(make_corpus(tmp_path / "corpus", per_emotion=3), "folder").utterances
    waves = load_waves(utts, progress=False)[0]
    cfg = load_config(None, [
        "model.family=encoder", f"model.params.encoder={tiny_whisper}", "model.params.pooling=stats",
        "model.params.head=linear", "model.params.speaker_norm=true", "train.batch_size=8", "train.lr=0.01",
        "train.epochs=3", "train.patience=null", "data.trim_silence=false", "augment.time_masks=0",
    ])  # fmt: skip
    result = fit(
        cfg, by_speaker(utts, 0, 1), by_speaker(utts, 2), tmp_path / "run", waves=waves, progress=False
    )
    clf = result.model
    assert clf.groupable and (tmp_path / "run" / "speaker_head" / "summary.json").is_file()
    assert float(clf.net.temperature) > 0 and float(clf.net.speaker_temperature) > 0
    test = by_speaker(utts, 3)
    clips = [waves[u.path] for u in test]
    plain = clf.predict_proba(clips)
    grouped = clf.predict_proba(clips, groups=["spk3"] * len(clips))
    assert grouped.shape == plain.shape and np.allclose(grouped.sum(1), 1)
    assert not np.allclose(grouped, plain)  # the speaker head answered
    lone = clf.predict_proba(clips[:2], groups=["a", "b"])  # groups of one clip: the plain head
    np.testing.assert_allclose(lone, plain[:2], atol=1e-6)
    from emovox.scoring import evaluate_model

    m = evaluate_model(clf, test, waves, progress=False)  # grouped per speaker, plain, per corpus
    assert m["normalization"] == "speaker" and 0 <= m["plain"]["ua"] <= 1
    assert m["corpus_normalized"]["ua"] == pytest.approx(m["ua"])  # one test speaker = one corpus here

    bundle = save_bundle(clf.net, tmp_path / "bundle", metrics={}, card=CARD, encoder_dtype="float32")
    rec = Recognizer.load(bundle)
    clf.cache = None  # the live front end, as the Recognizer runs it (the cache holds float16)
    grouped = clf.predict_proba(clips, groups=["spk3"] * len(clips))
    # several groupings of the same clips (how evaluate_model scores): one pass of the encoder
    passes: list[int] = []
    encode = clf.net.raw_inputs
    clf.net.raw_inputs = lambda w, n: (passes.append(len(w)), encode(w, n))[1]  # type: ignore[method-assign]
    lone_again, grouped_again = clf.predict_proba_groupings(clips, [None, ["spk3"] * len(clips)])
    del clf.net.raw_inputs
    assert sum(passes) == len(clips)
    np.testing.assert_allclose(grouped_again, grouped, atol=1e-5)
    np.testing.assert_allclose(lone_again, clf.predict_proba(clips), atol=1e-5)
    small = ["spk3"] * (len(clips) - 1) + ["alone"]  # a group of one clip gets the plain head
    np.testing.assert_allclose(
        clf.predict_proba_groupings(clips, [small])[0], clf.predict_proba(clips, small), atol=1e-5
    )
    assert [p.shape for p in clf.predict_proba_groupings([], [None, []])] == [(0, len(clf.labels))] * 2
    with pytest.raises(ValueError, match="groups: 1 keys"):
        clf.predict_proba_groupings(clips, [None, ["spk3"]])
    from emovox.cache import FeatureCache

    clf.cache = FeatureCache(tmp_path / "states")  # the cached path (float16 states) agrees too
    cached = clf.predict_proba_groupings(clips, [None, ["spk3"] * len(clips)])
    np.testing.assert_allclose(cached[0], clf.predict_proba(clips), atol=1e-5)
    np.testing.assert_allclose(cached[1], clf.predict_proba(clips, ["spk3"] * len(clips)), atol=1e-5)
    clf.cache = None
    assert rec.speaker_normalized
    names = [str(u.path) for u in test]
    by_rec = rec.predict(names, normalize="speaker")
    assert [p.emotion for p in by_rec] == [clf.labels[i] for i in grouped.argmax(1)]
    np.testing.assert_allclose([p.confidence for p in by_rec], grouped.max(1), atol=1e-4)
    with pytest.raises(EncoderError.__mro__[1], match="normalize"):
        rec.predict(names, normalize="bogus")

    # a running session (live stream, timeline): the first clip gets the plain model, the last one
    # the same answer as standardising over the whole group
    session = rec.speaker_session()
    running = [session.predict(name) for name in names]
    assert session.clips == len(names)
    assert running[0].probabilities == pytest.approx(rec.predict(names[0]).probabilities, abs=1e-6)
    assert running[-1].probabilities == pytest.approx(by_rec[-1].probabilities, abs=1e-5)
    # predict_files streams groups: one statistics vector per file, the same answers as predict()
    streamed = list(rec.predict_files(names, normalize="speaker"))
    assert [r.prediction.emotion for r in streamed] == [p.emotion for p in by_rec]
    np.testing.assert_allclose(
        [r.prediction.confidence for r in streamed], [p.confidence for p in by_rec], atol=1e-5
    )
    with_timeline = list(rec.predict_files(names, normalize="folder", timeline=True))
    assert all(r.segments is not None for r in with_timeline)
    assert isinstance(rec.timeline(names[0], normalize="speaker"), list)
    with pytest.raises(EncoderError.__mro__[1], match="normalize"):
        rec.timeline(names[0], normalize="folder")


def test_cached_and_live_predictions_are_both_calibrated(tiny_whisper: Path, tmp_path: Path) -> None:
    """TorchClassifier reads cached encoder states in evaluation: the temperature applies there too."""
    from emovox.cache import FeatureCache
    from emovox.fitting import TorchClassifier

    params = {"encoder": str(tiny_whisper), "encoder_layers": "all", "pooling": "stats", "hidden": 8}
    net = EmotionNet(FeatureConfig(), "encoder", params, ["angry", "happy", "sad"]).eval()
    net.temperature.fill_(3.0)
    waves = [_speechlike(1.0, 5), _speechlike(0.7, 6), _speechlike(1.3, 7)]
    live = TorchClassifier(net).predict_proba(waves)
    cached = TorchClassifier(net, cache=FeatureCache(tmp_path / "cache")).predict_proba(waves)
    np.testing.assert_allclose(cached, live, atol=2e-3)  # the cache holds float16 states


@pytest.mark.slow
def test_encoder_model_exports_to_onnx_and_matches_pytorch(tiny_whisper: Path, tmp_path: Path) -> None:
    """The whole waveform -> probabilities path (log-mel, Whisper layers, head) in onnxruntime."""
    import onnxruntime as ort

    from emovox.export import export_onnx

    net = EmotionNet(
        FeatureConfig(), "encoder", {"encoder": str(tiny_whisper), "hidden": 16}, ["a", "b", "c"]
    )
    result = export_onnx(net.eval(), tmp_path / "m.onnx")  # verified alone and batched inside
    assert result.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    waves = [_speechlike(2.7, 7), _speechlike(1.1, 8)]  # lengths the export never saw
    wave, lengths = pad_batch(waves)
    got = session.run(None, {"wave": wave.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        expected = torch.softmax(net(wave, lengths), dim=-1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_retrained_head_leaves_encoder_safetensors_byte_identical(
    tiny_whisper: Path, tmp_path: Path
) -> None:
    params = {"encoder": str(tiny_whisper), "pooling": "stats", "hidden": 8}
    first = EmotionNet(FeatureConfig(), "encoder", params, ["a", "b"])
    second = EmotionNet(FeatureConfig(), "encoder", params, ["a", "b"])  # another head, same encoder
    torch.nn.init.normal_(second.backbone.head[-1].weight)
    saved = [
        save_bundle(net, tmp_path / f"b{i}", metrics={}, card=CARD) for i, net in enumerate((first, second))
    ]
    for _ in range(3):  # safetensors orders a metadata map arbitrarily: one key keeps the file stable
        saved.append(save_bundle(first, tmp_path / f"b{len(saved)}", metrics={}, card=CARD))
    blobs = {(b / ENCODER_FILE).read_bytes() for b in saved}
    assert len(blobs) == 1
    assert (saved[0] / WEIGHTS_FILE).read_bytes() != (saved[1] / WEIGHTS_FILE).read_bytes()
