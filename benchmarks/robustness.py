"""Robustness: RAVDESS 5-fold actor CV, each test fold scored clean and degraded.

    python benchmarks/robustness.py --out runs/robustness.json              # default + fast configs
    python benchmarks/robustness.py --configs configs/default.yaml --per-fold 48   # a quicker subset

For every fold the config is trained on the other actors (validation actors carved from them, as
in ``emovox cv``), then the fold's test clips are scored as recorded and under each condition of
:data:`emovox.degrade.CONDITIONS` (telephone band, white noise and babble at 10 dB SNR, -20 dB
gain, MP3 ~64 kbit/s, Opus ~24 kbit/s). Degradations are seeded per clip, so every config sees the
same degraded audio. A speaker-normalised model is scored both ways: each test actor's clips as a
group (``normalize=speaker``) and each clip alone (``plain``). Encoder features of degraded clips go
through the feature cache (``EMOVOX_CACHE``), so an interrupted run resumes cheaply.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _degraded(name: str, wave: np.ndarray, key: str, others: list[np.ndarray]) -> np.ndarray:
    from emovox.degrade import apply_condition

    rng = np.random.default_rng(zlib.crc32(f"{name}:{key}".encode()))
    return apply_condition(name, wave, rng=rng, others=others)


def run(
    configs: list[Path],
    corpus: Path,
    folds: int,
    per_fold: int | None,
    conditions: list[str],
    work: Path = REPO / "runs" / "robustness",
) -> dict:
    from emovox.config import load_config
    from emovox.corpora import load_corpus, load_waves
    from emovox.fitting import fit
    from emovox.scoring import evaluate_model
    from emovox.splits import speaker_kfold, validation_speakers

    utts = load_corpus(corpus, "ravdess").utterances
    results: dict = {}
    for config in configs:
        cfg = load_config(config, [])
        waves, _ = load_waves(utts, trim=cfg.data.trim_silence, progress=False)
        rows: dict[str, list] = {}
        started = time.time()
        for k, split in enumerate(speaker_kfold(utts, k=folds, seed=cfg.train.seed)):
            fit_idx, val_idx = validation_speakers(
                utts, split.train, fraction=cfg.train.val_fraction, seed=cfg.train.seed
            )
            result = fit(
                cfg, [utts[i] for i in fit_idx], [utts[i] for i in val_idx],
                work / f"{cfg.name}-fold{k + 1}", waves=waves, progress=False,
            )  # fmt: skip
            test = [utts[i] for i in split.test]
            if per_fold:
                rng = np.random.default_rng(k)
                test = [
                    test[i] for i in sorted(rng.choice(len(test), min(per_fold, len(test)), replace=False))
                ]
            others = [waves[utts[i].path] for i in split.train[:: max(1, len(split.train) // 40)]]
            for name in conditions:
                degraded = {u.path: _degraded(name, waves[u.path], u.path.name, others) for u in test}
                m = evaluate_model(result.model, test, degraded, progress=False)
                rows.setdefault(name, []).append(
                    {
                        "ua": m["ua"],
                        "wa": m["wa"],
                        "ece": m["ece"],
                        "plain_ua": (m.get("plain") or {}).get("ua"),
                    }
                )
            print(
                f"{cfg.name} fold {k + 1}: " + ", ".join(f"{n} {rows[n][-1]['ua']:.3f}" for n in conditions),
                flush=True,
            )
        summary = {}
        for name, per in rows.items():
            ua = [r["ua"] for r in per]
            entry = {"ua_mean": float(np.mean(ua)), "ua_std": float(np.std(ua, ddof=1)), "folds": per}
            if per[0]["plain_ua"] is not None:
                entry["plain_ua_mean"] = float(np.mean([r["plain_ua"] for r in per]))
            entry["ece_mean"] = float(np.mean([r["ece"] for r in per]))
            summary[name] = entry
        results[cfg.name] = {
            "config": str(config),
            "seconds": round(time.time() - started, 1),
            "conditions": summary,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    from emovox.degrade import CONDITIONS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--configs",
        nargs="+",
        type=Path,
        default=[REPO / "configs" / "default.yaml", REPO / "configs" / "fast.yaml"],
    )
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpora" / "ravdess")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--per-fold", type=int, default=None, help="score a seeded subset of each test fold")
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "robustness.json")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "robustness", help="fold run folders")
    args = ap.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"error: {args.corpus}: RAVDESS not found (pass --corpus)", file=sys.stderr)
        return 2
    results = run(args.configs, args.corpus, args.folds, args.per_fold, args.conditions, args.work)
    report = {
        "benchmark": "robustness",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, python {platform.python_version()}",
        "corpus": str(args.corpus),
        "folds": args.folds,
        "per_fold": args.per_fold,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in results.items():
        print(name, {c: round(v["ua_mean"], 3) for c, v in r["conditions"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
