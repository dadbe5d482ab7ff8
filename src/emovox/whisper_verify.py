"""Check a converted Whisper directory against CTranslate2 itself on one clip.

Needs ``transformers`` and ``ctranslate2`` (the ``encoders`` and ``convert`` extras), imported
only inside :func:`verify_conversion`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emovox.ct2_source import ConversionError, CT2Source, assemble_ct2_dir, find_source, read_vocabulary

__all__ = ["verify_conversion"]


def _prompt(tokens: Sequence[str], language: str = "en") -> list[str]:
    if "<|transcribe|>" in tokens and f"<|{language}|>" in tokens and len(tokens) >= 51865:
        return ["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"]
    return ["<|startoftranscript|>", "<|notimestamps|>"]


def _run_ct2(
    src: CT2Source, feats: np.ndarray, prompt: list[str], max_new_tokens: int
) -> tuple[np.ndarray, list[int], np.ndarray | None]:
    """The original model through ``ctranslate2`` (CPU, float32): encoder output, greedy token ids
    and the logits of each step (None when this ctranslate2 cannot return them)."""
    import ctranslate2

    with tempfile.TemporaryDirectory(prefix="ct2-") as tmp:
        ct2 = ctranslate2.models.Whisper(
            str(assemble_ct2_dir(src, tmp)), device="cpu", compute_type="float32", inter_threads=1
        )
        sv = ctranslate2.StorageView.from_array(feats)
        enc_ct2 = np.array(ct2.encode(sv, to_cpu=True))
        kwargs: dict[str, object] = {"beam_size": 1, "max_length": max_new_tokens}
        try:
            res = ct2.generate(sv, [prompt], return_logits_vocab=True, **kwargs)[0]
            logits_ct2 = np.stack([np.array(step).reshape(-1) for step in res.logits[0]])
        except TypeError:  # ctranslate2 older than return_logits_vocab
            res = ct2.generate(sv, [prompt], **kwargs)[0]
            logits_ct2 = None
        del ct2
    return enc_ct2, list(res.sequences_ids[0]), logits_ct2


def verify_conversion(
    hf_dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | Sequence[str] | CT2Source,
    audio: str | os.PathLike[str],
    *,
    language: str = "en",
    max_new_tokens: int = 64,
) -> dict[str, object]:
    """Check a conversion against CTranslate2 itself on one clip.

    The same 30 s log-mel input (``WhisperFeatureExtractor`` of the converted directory) goes to
    the converted model through ``transformers`` and to the original through
    ``ctranslate2.models.Whisper`` (CPU, float32 compute). Compared: the greedy transcripts, the
    encoder outputs and the decoder logits along CTranslate2's greedy sequence (tokens CTranslate2
    suppresses, logit -FLT_MAX, are left out).

    Returns a JSON-able dict: ``audio``, ``hf_text``, ``ct2_text``, ``same_text``, ``same_tokens``,
    ``encoder_max_abs_diff``, ``encoder_max_abs``, ``encoder_shape``, ``decoder_logits_max_abs_diff``
    (None when this ctranslate2 cannot return logits), ``decoder_logits_max_abs``.
    Needs ``transformers`` and ``ctranslate2``.
    """
    try:
        import ctranslate2  # noqa: F401 - checked here, used by _run_ct2
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor
    except ImportError as exc:
        raise ConversionError(
            f"verifying a conversion needs transformers and ctranslate2 ({exc}); "
            "pip install 'emovox[encoders,convert]'"
        ) from exc
    from emovox.audio import load_audio

    src = source if isinstance(source, CT2Source) else find_source(source)
    wave = load_audio(Path(audio))
    processor = WhisperProcessor.from_pretrained(str(hf_dir))
    model = WhisperForConditionalGeneration.from_pretrained(str(hf_dir)).float().eval()
    feats = processor.feature_extractor(wave, sampling_rate=16000, return_tensors="np").input_features
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    prompt = _prompt(read_vocabulary(src) or list(processor.tokenizer.get_vocab()), language)
    prompt_ids = processor.tokenizer.convert_tokens_to_ids(prompt)

    enc_ct2, ct2_ids, logits_ct2 = _run_ct2(src, feats, prompt, max_new_tokens)

    with torch.inference_mode():
        x = torch.from_numpy(feats)
        enc_hf = model.model.encoder(x).last_hidden_state.numpy()
        gen_kwargs: dict[str, object] = {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens}
        if getattr(model.generation_config, "is_multilingual", False):
            gen_kwargs.update(language=language, task="transcribe")
        out = model.generate(x, **gen_kwargs)
        hf_ids = [int(t) for t in out[0] if int(t) not in prompt_ids and int(t) != model.config.eos_token_id]
        decoder_diff = decoder_max = None
        if logits_ct2 is not None:
            teacher = torch.tensor([prompt_ids + ct2_ids])
            logits_hf = model(input_features=x, decoder_input_ids=teacher).logits[0].numpy()
            logits_hf = logits_hf[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(logits_ct2)]
            kept = logits_ct2 > -1e30
            decoder_diff = float(np.max(np.abs(logits_hf - logits_ct2)[kept]))
            decoder_max = float(np.max(np.abs(logits_hf[kept])))
    hf_text = processor.tokenizer.decode(out[0], skip_special_tokens=True).strip()
    ct2_text = processor.tokenizer.decode(ct2_ids, skip_special_tokens=True).strip()
    return {
        "audio": str(audio),
        "hf_text": hf_text,
        "ct2_text": ct2_text,
        "same_text": hf_text == ct2_text,
        "same_tokens": hf_ids == [t for t in ct2_ids if t != model.config.eos_token_id],
        "encoder_max_abs_diff": float(np.max(np.abs(enc_hf.astype(np.float64) - enc_ct2))),
        "encoder_max_abs": float(np.max(np.abs(enc_ct2))),
        "encoder_shape": list(enc_ct2.shape),
        "decoder_logits_max_abs_diff": decoder_diff,
        "decoder_logits_max_abs": decoder_max,
    }
