"""The Hugging Face tokenizer and preprocessor files of a converted Whisper model.

From CTranslate2's ``tokenizer.json`` (byte-level BPE) and ``vocabulary.txt``: ``tokenizer.json``
completed with the timestamp tokens the vocabulary has, ``vocab.json``, ``merges.txt``,
``tokenizer_config.json``, ``special_tokens_map.json``; and ``preprocessor_config.json`` (the
30 s log-mel front end). Used by :func:`emovox.whisper_convert.convert`.
"""

from __future__ import annotations

import json
from pathlib import Path

from emovox.ct2_source import ConversionError, CT2Source, read_vocabulary

__all__ = ["write_json", "write_tokenizer_files"]


def _preprocessor_config(n_mels: int) -> dict[str, object]:
    """``preprocessor_config.json``: Whisper's 30 s log-mel front end."""
    return {
        "chunk_length": 30,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": n_mels,
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": 16000,
    }


def _read_tokenizer(path: Path) -> dict:
    """The parsed ``tokenizer.json``, refused unless it is a byte-level BPE one (Whisper's kind)."""
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: not readable JSON ({exc})") from exc
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
        raise ConversionError(f"{path}: not a byte-level BPE tokenizer.json (Whisper's kind)")
    return tok


def _with_vocabulary_tokens(source: CT2Source, vocab: dict[str, int], added: list[dict]) -> list[dict] | None:
    """``added`` plus the tokens of CTranslate2's vocabulary the tokenizer lacks (the timestamp
    tokens), checking that both agree on every id; None when the source has no vocabulary."""
    tokens = read_vocabulary(source)
    if tokens is None:
        return None
    by_id = {t: i for t, i in vocab.items()}
    by_id.update({a["content"]: a["id"] for a in added})
    n_known = len(by_id)  # ids 0..n_known-1 when the tokenizer is consistent
    for i, t in enumerate(tokens):
        if t in by_id:
            if by_id[t] != i:
                raise ConversionError(
                    f"{source.tokenizer}: token {t!r} has id {by_id[t]} "
                    f"but {source.vocabulary} puts it at {i}"
                )
            continue
        if i < n_known:
            raise ConversionError(f"{source.tokenizer}: token {i} ({t!r}) of {source.vocabulary} is missing")
        # The timestamp tokens <|0.00|> ... <|30.00|>: plain added tokens, as in OpenAI's tokenizer.
        added.append(
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": False,
            }
        )
        by_id[t] = i
    return added


def _special_tokens(specials: list[str]) -> dict[str, object]:
    """``special_tokens_map.json``: Whisper uses <|endoftext|> for bos, eos, unk and pad."""
    eot = "<|endoftext|>"
    return {
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "pad_token": eot,
        "additional_special_tokens": specials,
    }


def _tokenizer_config(specials: list[str]) -> dict[str, object]:
    """``tokenizer_config.json`` for ``WhisperTokenizer`` / ``WhisperProcessor``."""
    eot = "<|endoftext|>"
    return {
        "tokenizer_class": "WhisperTokenizer",
        "processor_class": "WhisperProcessor",
        "model_max_length": 1024,
        "errors": "replace",
        "add_prefix_space": False,
        "add_bos_token": False,
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "pad_token": eot,
        "additional_special_tokens": specials,
        "clean_up_tokenization_spaces": True,
    }


def write_tokenizer_files(source: CT2Source, out: Path, n_mels: int) -> list[str]:
    """Write tokenizer.json (with the timestamp tokens CTranslate2's vocabulary has), vocab.json,
    merges.txt, tokenizer_config.json, special_tokens_map.json and preprocessor_config.json.
    Returns the names written."""
    write_json(out / "preprocessor_config.json", _preprocessor_config(n_mels))
    written = ["preprocessor_config.json"]
    if source.tokenizer is None:
        return written
    tok = _read_tokenizer(source.tokenizer)
    vocab: dict[str, int] = tok["model"]["vocab"]
    added = list(tok.get("added_tokens") or [])
    completed = _with_vocabulary_tokens(source, vocab, added)
    if completed is not None:
        tok["added_tokens"] = completed
    write_json(out / "tokenizer.json", tok, indent=None)
    write_json(out / "vocab.json", vocab, indent=None)
    with open(out / "merges.txt", "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
        for m in tok["model"]["merges"]:
            fh.write((m if isinstance(m, str) else " ".join(m)) + "\n")
    specials = [a["content"] for a in added if a.get("special") and a["content"] != "<|endoftext|>"]
    write_json(out / "tokenizer_config.json", _tokenizer_config(specials))
    write_json(out / "special_tokens_map.json", _special_tokens(specials))
    written += [
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ]
    return written


def write_json(path: Path, obj: object, indent: int | None = 2) -> None:
    """``obj`` as UTF-8 JSON (non-ASCII kept), with a final newline, as the Hugging Face files are written."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent, ensure_ascii=False)
        fh.write("\n")
