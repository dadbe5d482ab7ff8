"""Speaker-independent protocols: no speaker is ever on both sides."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from emovox.corpora import EMOTIONS, Utterance, load_corpus
from emovox.errors import CorpusError
from emovox.splits import (
    Split,
    cross_corpus,
    holdout_speakers,
    leave_one_speaker_out,
    random_split_leaks_speakers,
    speaker_kfold,
    validation_speakers,
)


def _synthetic(n_speakers: int = 10, per_emotion: int = 3, emotions=EMOTIONS, corpus: str = "syn"):
    """Speakers alternate male/female; every speaker has every emotion."""
    utts = []
    for s in range(n_speakers):
        for e in emotions:
            for k in range(per_emotion):
                utts.append(
                    Utterance(
                        path=Path(f"/{corpus}/{s}/{e}{k}.wav"),
                        emotion=e,
                        speaker=f"{corpus}:{s:02d}",
                        corpus=corpus,
                        label=e,
                        gender="male" if s % 2 else "female",
                    )
                )
    return utts


def _speakers(utts, idx) -> set[str]:
    return {utts[i].speaker for i in idx}


def _assert_disjoint(utts, split: Split) -> None:
    assert _speakers(utts, split.train).isdisjoint(_speakers(utts, split.test)), split.name
    assert np.intersect1d(split.train, split.test).size == 0


@pytest.fixture(scope="module")
def ravdess(request):
    return load_corpus(request.getfixturevalue("ravdess_dir")).utterances


@pytest.mark.corpus
def test_ravdess_five_folds_of_four_actors(ravdess):
    splits = speaker_kfold(ravdess, k=5, seed=0)
    assert len(splits) == 5
    tested: list[str] = []
    for split in splits:
        _assert_disjoint(ravdess, split)
        test_speakers = _speakers(ravdess, split.test)
        assert len(test_speakers) == 4 and split.test.size == 240
        assert split.train.size + split.test.size == 1200
        tested += sorted(test_speakers)
        fit, val = validation_speakers(ravdess, split.train, fraction=0.2, seed=0)
        assert _speakers(ravdess, fit).isdisjoint(_speakers(ravdess, val))
        assert _speakers(ravdess, val).isdisjoint(test_speakers)
        assert sorted(np.concatenate([fit, val]).tolist()) == split.train.tolist()
        genders = Counter(ravdess[i].gender for i in val)
        assert genders["male"] == genders["female"] > 0  # gender-balanced validation
    assert sorted(tested) == sorted({u.speaker for u in ravdess})  # each actor tested exactly once


@pytest.mark.corpus
def test_ravdess_loso_and_holdout(ravdess):
    loso = leave_one_speaker_out(ravdess)
    assert len(loso) == 20 and all(s.test.size == 60 for s in loso)
    for split in loso:
        _assert_disjoint(ravdess, split)
    holdout = holdout_speakers(ravdess, ["ravdess:19", "20"])
    assert _speakers(ravdess, holdout.test) == {"ravdess:19", "ravdess:20"}
    assert holdout.test.size == 120 and holdout.train.size == 1080
    _assert_disjoint(ravdess, holdout)


@pytest.mark.corpus
def test_cross_corpus_tess_ravdess(ravdess, tess_dir):
    tess = load_corpus(tess_dir).utterances
    train_idx, test_idx, shared = cross_corpus(tess, ravdess)
    assert shared == [e for e in EMOTIONS if e != "calm"]
    assert train_idx.size == 2800 and test_idx.size == 1200 - 160
    assert all(ravdess[i].emotion != "calm" for i in test_idx)


def test_kfold_on_synthetic_speakers_is_deterministic_and_stratified():
    utts = _synthetic(n_speakers=10)
    a = speaker_kfold(utts, k=5, seed=3)
    b = speaker_kfold(utts, k=5, seed=3)
    c = speaker_kfold(utts, k=5, seed=4)
    assert [s.test.tolist() for s in a] == [s.test.tolist() for s in b]
    assert [s.test.tolist() for s in a] != [s.test.tolist() for s in c]
    for split in a:
        _assert_disjoint(utts, split)
        assert len(_speakers(utts, split.test)) == 2
        assert set(Counter(utts[i].emotion for i in split.test).values()) == {6}
    assert sorted(np.concatenate([s.test for s in a]).tolist()) == list(range(len(utts)))


def test_kfold_needs_enough_speakers():
    with pytest.raises(CorpusError, match="at least 5 speakers, found 3"):
        speaker_kfold(_synthetic(n_speakers=3), k=5)
    with pytest.raises(CorpusError, match="k >= 2"):
        speaker_kfold(_synthetic(), k=1)


def test_loso_counts():
    utts = _synthetic(n_speakers=4, per_emotion=1)
    splits = leave_one_speaker_out(utts)
    assert [s.name for s in splits] == [f"loso:syn:{i:02d}" for i in range(4)]
    for split in splits:
        _assert_disjoint(utts, split)
        assert split.test.size == len(EMOTIONS) and split.train.size == 3 * len(EMOTIONS)
    with pytest.raises(CorpusError, match="at least 2 speakers"):
        leave_one_speaker_out(_synthetic(n_speakers=1))


def test_holdout_errors():
    utts = _synthetic(n_speakers=3)
    with pytest.raises(CorpusError, match="unknown or ambiguous speaker 'zz'"):
        holdout_speakers(utts, ["zz"])
    with pytest.raises(CorpusError, match="no training speakers"):
        holdout_speakers(utts, ["00", "01", "02"])
    mixed = utts + _synthetic(n_speakers=1, corpus="other")
    with pytest.raises(CorpusError, match="ambiguous speaker '00'"):
        holdout_speakers(mixed, ["00"])
    assert _speakers(mixed, holdout_speakers(mixed, ["other:00"]).test) == {"other:00"}


def test_cross_corpus_keeps_shared_emotions_only():
    a = _synthetic(4, emotions=("neutral", "calm", "happy", "sad"), corpus="a")
    b = _synthetic(4, emotions=("happy", "sad", "angry", "neutral"), corpus="b")
    train_idx, test_idx, shared = cross_corpus(a, b)
    assert shared == ["neutral", "happy", "sad"]
    assert {a[i].emotion for i in train_idx} == {b[i].emotion for i in test_idx} == set(shared)
    assert train_idx.size == 4 * 3 * 3
    with pytest.raises(CorpusError, match="share speakers"):
        cross_corpus(a, a)
    with pytest.raises(CorpusError, match="at least 2 shared emotions"):
        cross_corpus(_synthetic(2, emotions=("calm", "sad"), corpus="c"), b)


def test_validation_speakers_balanced_disjoint_and_deterministic():
    utts = _synthetic(n_speakers=20)
    train = np.arange(len(utts))
    fit, val = validation_speakers(utts, train, fraction=0.2, seed=1)
    assert Counter(utts[i].gender for i in val) == Counter(male=2 * 24, female=2 * 24)
    assert _speakers(utts, fit).isdisjoint(_speakers(utts, val))
    again = validation_speakers(utts, train, fraction=0.2, seed=1)
    assert np.array_equal(val, again[1])
    # two speakers: one each side; unknown genders still split by speaker
    two = _synthetic(n_speakers=2)
    fit2, val2 = validation_speakers(two, np.arange(len(two)))
    assert len(_speakers(two, fit2)) == len(_speakers(two, val2)) == 1
    unknown = [Utterance(u.path, u.emotion, u.speaker, u.corpus, u.label) for u in _synthetic(10)]
    fit3, val3 = validation_speakers(unknown, np.arange(len(unknown)), fraction=0.3)
    assert len(_speakers(unknown, val3)) == 3 and _speakers(unknown, fit3).isdisjoint(
        _speakers(unknown, val3)
    )
    with pytest.raises(CorpusError, match="at least 2 training speakers"):
        validation_speakers(two, np.flatnonzero([u.speaker == "syn:00" for u in two]))
    with pytest.raises(CorpusError, match="between 0 and 1"):
        validation_speakers(utts, train, fraction=1.5)


def test_random_split_leaks_and_warns():
    utts = _synthetic(n_speakers=4)
    with pytest.warns(UserWarning, match="same speakers"):
        split = random_split_leaks_speakers(utts, test_fraction=0.25, seed=0)
    assert split.test.size == len(utts) // 4
    assert _speakers(utts, split.train) & _speakers(utts, split.test)  # it does leak, as named
    import emovox.splits as splits_module

    assert not hasattr(splits_module, "random_split")


def test_validation_speakers_come_from_each_corpus_by_its_own_share() -> None:
    """RAVDESS-like 16 actors + a TESS-like corpus of 2 speakers with many clips each: the small
    corpus gives no validation speaker (not half of itself); the first gives its usual share."""
    big = _synthetic(16, corpus="big")
    small = [u for u in _synthetic(2, per_emotion=20, corpus="small") if u.emotion != "calm"]
    utts = [*big, *small]
    fit, val = validation_speakers(utts, np.arange(len(utts)), fraction=0.2, seed=0)
    val_speakers = {utts[i].speaker for i in val}
    assert val_speakers and all(s.startswith("big:") for s in val_speakers)
    alone, alone_val = validation_speakers(big, np.arange(len(big)), fraction=0.2, seed=0)
    assert val_speakers == {big[i].speaker for i in alone_val}  # one corpus: the choice is unchanged


@pytest.mark.parametrize(("n_speakers", "expected"), [(3, "syn:02"), (4, "syn:02"), (5, "syn:00")])
def test_small_corpora_keep_their_validation_speaker(n_speakers: int, expected: str) -> None:
    """The fallback (no gender can spare a speaker) draws from the same random stream as before
    validation became per corpus: pinned to the choice of the single-corpus code."""
    utts = _synthetic(n_speakers)
    _, val = validation_speakers(utts, np.arange(len(utts)), fraction=0.1, seed=0)
    assert {utts[i].speaker for i in val} == {expected}


def test_the_fallback_never_gives_a_small_corpus_away() -> None:
    big = _synthetic(3, corpus="big")
    small = _synthetic(2, per_emotion=20, corpus="small")
    utts = [*big, *small]
    _, val = validation_speakers(utts, np.arange(len(utts)), fraction=0.1, seed=0)
    assert {utts[i].corpus for i in val} == {"big"}
