"""Speaker-independent evaluation protocols.

Acted corpora have few speakers and many clips each; a model tested on a speaker it was trained on
scores far higher than it will on a new voice. Every protocol here therefore splits by *speaker*:
whole speakers go to one side, and each function checks that no speaker ends up on both sides.
The one exception, :func:`random_split_leaks_speakers`, exists for comparison only, says so in its
name and warns when called.

All functions take a sequence of :class:`~emovox.corpora.Utterance` and return index arrays into it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from emovox.corpora import EMOTIONS, Utterance
from emovox.errors import CorpusError


@dataclass(frozen=True)
class Split:
    """Indices of the training and test utterances of one fold, and a name for reports."""

    train: np.ndarray
    test: np.ndarray
    name: str


def _speakers(utts: Sequence[Utterance]) -> np.ndarray:
    return np.array([u.speaker for u in utts], dtype=object)


def _ensure_disjoint(utts: Sequence[Utterance], train: np.ndarray, test: np.ndarray, what: str) -> None:
    """Raise if any speaker has utterances on both sides (an invariant of every protocol here)."""
    shared = {utts[i].speaker for i in train} & {utts[i].speaker for i in test}
    if shared:
        raise AssertionError(f"{what}: speakers on both sides: {', '.join(sorted(shared))}")


def _index(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask).astype(np.int64)


def speaker_kfold(utts: Sequence[Utterance], k: int = 5, seed: int = 0) -> list[Split]:
    """``k`` folds with disjoint test speakers, emotion-stratified (scikit-learn StratifiedGroupKFold).

    Every speaker is in exactly one test fold. Raises :class:`CorpusError` when there are fewer
    speakers than folds.
    """
    speakers = _speakers(utts)
    distinct = sorted(set(speakers))
    if k < 2:
        raise CorpusError(f"speaker k-fold needs k >= 2, got k={k}")
    if len(distinct) < k:
        raise CorpusError(
            f"{k}-fold speaker cross-validation needs at least {k} speakers, found {len(distinct)} "
            f"({', '.join(distinct[:10])})"
        )
    y = np.array([u.emotion for u in utts])
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    splits = []
    for fold, (train, test) in enumerate(splitter.split(np.zeros(len(utts)), y, groups=speakers)):
        train, test = np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)
        name = f"fold{fold + 1}of{k}"
        _ensure_disjoint(utts, train, test, name)
        splits.append(Split(train=train, test=test, name=name))
    return splits


def leave_one_speaker_out(utts: Sequence[Utterance]) -> list[Split]:
    """One split per speaker: test on that speaker, train on all others."""
    speakers = _speakers(utts)
    distinct = sorted(set(speakers))
    if len(distinct) < 2:
        raise CorpusError(f"leave-one-speaker-out needs at least 2 speakers, found {len(distinct)}")
    splits = []
    for speaker in distinct:
        test_mask = speakers == speaker
        split = Split(train=_index(~test_mask), test=_index(test_mask), name=f"loso:{speaker}")
        _ensure_disjoint(utts, split.train, split.test, split.name)
        splits.append(split)
    return splits


def _match_speakers(utts: Sequence[Utterance], wanted: Iterable[str]) -> set[str]:
    """Map user-given speakers (``ravdess:05`` or an unambiguous bare id such as ``05``) to speakers."""
    known = sorted({u.speaker for u in utts})
    by_id: dict[str, list[str]] = {}
    for s in known:
        by_id.setdefault(s.split(":", 1)[-1], []).append(s)
    matched: set[str] = set()
    for name in wanted:
        if name in known:
            matched.add(name)
        elif len(by_id.get(name, [])) == 1:
            matched.add(by_id[name][0])
        else:
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            raise CorpusError(f"unknown or ambiguous speaker {name!r} (known: {shown})")
    return matched


def select_speakers(utts: Sequence[Utterance], speakers: Iterable[str]) -> list[Utterance]:
    """The utterances of ``speakers`` (``ravdess:05`` or an unambiguous bare id such as ``05``), e.g.
    the test speakers to evaluate a saved model on; unknown or ambiguous names are a CorpusError."""
    chosen = _match_speakers(utts, speakers)
    if not chosen:
        raise CorpusError("no speaker chosen")
    return [u for u in utts if u.speaker in chosen]


def holdout_speakers(utts: Sequence[Utterance], test_speakers: Iterable[str]) -> Split:
    """Train on every speaker except ``test_speakers``; test on those."""
    chosen = _match_speakers(utts, test_speakers)
    if not chosen:
        raise CorpusError("holdout needs at least one test speaker")
    test_mask = np.isin(_speakers(utts), sorted(chosen))
    name = "holdout:" + "+".join(sorted(chosen))
    split = Split(train=_index(~test_mask), test=_index(test_mask), name=name)
    if split.train.size == 0:
        raise CorpusError("holdout leaves no training speakers: every speaker is a test speaker")
    _ensure_disjoint(utts, split.train, split.test, split.name)
    return split


def cross_corpus(
    train_utts: Sequence[Utterance], test_utts: Sequence[Utterance]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Train on one corpus, test on another, restricted to the emotions both contain.

    Returns ``(train_idx into train_utts, test_idx into test_utts, shared emotions in EMOTIONS order)``.
    """
    train_emotions = {u.emotion for u in train_utts}
    test_emotions = {u.emotion for u in test_utts}
    shared = [e for e in EMOTIONS if e in train_emotions and e in test_emotions]
    if len(shared) < 2:
        raise CorpusError(
            f"cross-corpus evaluation needs at least 2 shared emotions, found {shared or 'none'}"
        )
    overlap = {u.speaker for u in train_utts} & {u.speaker for u in test_utts}
    if overlap:
        raise CorpusError(f"cross-corpus sides share speakers: {', '.join(sorted(overlap)[:10])}")
    train_idx = _index(np.isin([u.emotion for u in train_utts], shared))
    test_idx = _index(np.isin([u.emotion for u in test_utts], shared))
    return train_idx, test_idx, shared


def validation_speakers(
    utts: Sequence[Utterance], train_idx: Sequence[int] | np.ndarray, fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``train_idx`` into (fit, validation) by whole speakers, for early stopping.

    About ``fraction`` of the speakers go to validation, the same number from each known gender
    (so RAVDESS folds, whose training actors are not always 8 + 8, still get a gender-balanced
    validation set) and ``round(fraction * n)`` of the speakers of unknown gender. A gender never
    loses all its speakers to validation, and at least one speaker is always on each side. With
    several corpora (``data.extra``) each corpus gives its own share, so a corpus of few speakers
    with many clips each (TESS: 2 actresses, 1400 clips each) gives none rather than half of
    itself, and validation measures the voices of every corpus that can spare them.
    """
    if not 0.0 < fraction < 1.0:
        raise CorpusError(f"validation fraction must be between 0 and 1, got {fraction}")
    train_idx = np.asarray(train_idx, dtype=np.int64)
    speakers = sorted({utts[i].speaker for i in train_idx})
    if len(speakers) < 2:
        raise CorpusError(
            f"a speaker-independent validation set needs at least 2 training speakers, found {len(speakers)}"
        )
    gender_of = {utts[i].speaker: utts[i].gender or "unknown" for i in train_idx}
    corpus_of = {utts[i].speaker: utts[i].corpus for i in train_idx}
    rng = np.random.default_rng(seed)  # one stream: a single corpus draws exactly as it always did
    corpora = sorted(set(corpus_of.values()))
    val: list[str] = []
    for corpus in corpora:
        val += _gender_balanced([s for s in speakers if corpus_of[s] == corpus], gender_of, fraction, rng)
    if not val:  # one speaker from the largest gender of the corpus with the most speakers
        main = max(corpora, key=lambda c: sum(corpus_of[s] == c for s in speakers))
        groups: dict[str, list[str]] = {}
        for s in speakers:
            if corpus_of[s] == main:
                groups.setdefault(gender_of[s], []).append(s)
        largest = max(sorted(groups), key=lambda g: len(groups[g]))
        val = [str(rng.choice(groups[largest]))]
    if len(val) == len(speakers):
        val = val[:-1]
    val_mask = np.isin([utts[i].speaker for i in train_idx], val)
    fit, held = train_idx[~val_mask], train_idx[val_mask]
    _ensure_disjoint(utts, fit, held, "validation split")
    return fit, held


def _gender_balanced(
    speakers: Sequence[str], gender_of: dict[str, str], fraction: float, rng: np.random.Generator
) -> list[str]:
    """About ``fraction`` of ``speakers`` for validation, the same number from each known gender."""
    groups: dict[str, list[str]] = {}
    for s in speakers:
        groups.setdefault(gender_of[s], []).append(s)
    known = [g for g in sorted(groups) if g != "unknown"]
    per_gender = int(round(fraction * sum(len(groups[g]) for g in known) / len(known))) if known else 0
    val: list[str] = []
    for gender in sorted(groups):
        members = [str(s) for s in rng.permutation(groups[gender])]
        if gender == "unknown":
            take = int(round(fraction * len(members)))
        else:
            take = min(per_gender, len(members) - 1)
        val += members[:take]
    return val


def validation_split(
    utts: Sequence[Utterance], train_idx: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Carve validation data from a fold's training side: whole speakers when there are two or more.

    With a single training speaker (e.g. TESS: train on one actress, test on the other) no speaker
    can be spared, so an emotion-stratified ``fraction`` of that speaker's clips validates instead;
    the test speakers stay unseen either way. ``fraction`` 0 means no validation data (the model
    trains for its full epochs; the last weights are kept). Returns ``(fit_idx, val_idx, description)``.
    """
    if fraction <= 0:
        return np.asarray(train_idx), np.asarray([], dtype=np.int64), "none"
    if len({utts[i].speaker for i in train_idx}) >= 2:
        fit_idx, val_idx = validation_speakers(utts, train_idx, fraction=fraction, seed=seed)
        return fit_idx, val_idx, "speakers"
    labels = [utts[i].emotion for i in train_idx]
    fit_idx, val_idx = train_test_split(train_idx, test_size=fraction, random_state=seed, stratify=labels)
    return np.sort(fit_idx), np.sort(val_idx), "clips of the single training speaker"


def random_split_leaks_speakers(
    utts: Sequence[Utterance], test_fraction: float = 0.2, seed: int = 0
) -> Split:
    """A random, emotion-stratified split that ignores speakers: the same voices are on both sides.

    Only for showing how much speaker leakage inflates scores; never the default anywhere.
    """
    warnings.warn(
        "random_split_leaks_speakers puts the same speakers in training and test data; "
        "its scores overstate performance on new speakers",
        UserWarning,
        stacklevel=2,
    )
    idx = np.arange(len(utts))
    y = np.array([u.emotion for u in utts])
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    return Split(
        train=np.sort(train).astype(np.int64), test=np.sort(test).astype(np.int64), name="random-leaky"
    )
