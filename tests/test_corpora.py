"""Corpus adapters, layout detection, summaries and `emovox data summary`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import REPO
from emovox.cli import app
from emovox.corpora import ADAPTERS, EMOTIONS, Corpus, canonical_emotion, load_corpus, summarize
from emovox.errors import CorpusError

EXAMPLES = REPO / "examples"
_CLIP = (0.1 * np.sin(2 * np.pi * 200 * np.arange(1600) / 8000)).astype(np.float32)


def _touch(root: Path, *names: str, sr: int = 8000) -> None:
    """Write a 0.2 s tone at each relative path (tiny, but real audio for sf.info)."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".opus":
            sf.write(path, _CLIP, sr, format="OGG", subtype="OPUS")
        else:
            sf.write(path, _CLIP, sr)


# --------------------------------------------------------------------------- shared corpora


@pytest.mark.corpus
def test_ravdess_on_shared_corpus(ravdess_dir):
    corpus = load_corpus(ravdess_dir)
    assert corpus.name == "ravdess" and len(corpus) == 1200 and corpus.skipped == []
    assert len(corpus.speakers) == 20 and corpus.speakers[0] == "ravdess:01"
    counts = {e: sum(u.emotion == e for u in corpus.utterances) for e in EMOTIONS}
    assert counts["neutral"] == 80 and all(counts[e] == 160 for e in EMOTIONS if e != "neutral")
    first = corpus.utterances[0]
    assert first.path.name == "03-01-01-01-01-01-01.flac"
    assert (first.emotion, first.speaker, first.gender, first.label) == (
        "neutral",
        "ravdess:01",
        "male",
        "01",
    )
    assert dict(first.extra) == {"intensity": "normal", "statement": "01", "repetition": "01"}
    assert {u.gender for u in corpus.utterances if u.speaker == "ravdess:02"} == {"female"}
    assert sum(u.extra["intensity"] == "strong" for u in corpus.utterances) == 7 * 80


@pytest.mark.corpus
def test_tess_on_shared_corpus(tess_dir):
    corpus = load_corpus(tess_dir)
    assert corpus.name == "tess" and len(corpus) == 2800 and corpus.skipped == []
    assert corpus.speakers == ["tess:OAF", "tess:YAF"]
    assert set(corpus.emotions) == set(EMOTIONS) - {"calm"}
    assert all(u.gender == "female" for u in corpus.utterances)
    oddity = [u for u in corpus.utterances if u.path.stem == "OA_bite_neutral"]
    assert len(oddity) == 1 and oddity[0].speaker == "tess:OAF" and oddity[0].extra["word"] == "bite"
    surprised = [u for u in corpus.utterances if u.emotion == "surprised"]
    assert len(surprised) == 400 and {u.label for u in surprised} == {"ps"}
    assert {u.label for u in corpus.utterances if u.emotion == "fearful"} == {"fear"}


@pytest.mark.corpus
def test_summary_reads_headers_only(ravdess_dir):
    summary = summarize(load_corpus(ravdess_dir, "ravdess", emotions=["anger", "happy"]))
    assert summary["clips"] == 320 and summary["per_emotion"] == {"happy": 160, "angry": 160}
    assert summary["sample_rates"] == {16000: 320} and summary["channels"] == {1: 320}
    assert 3.0 < summary["mean_duration_s"] < 4.5
    assert summary["total_duration_s"] == pytest.approx(320 * summary["mean_duration_s"], rel=1e-3)
    assert len(summary["per_speaker"]) == 20 and summary["per_gender"] == {"female": 160, "male": 160}
    json.dumps(summary)  # JSON-able


# --------------------------------------------------------------------------- tiny fixtures


def test_ravdess_names_song_and_strays(tmp_path):
    _touch(
        tmp_path,
        "Actor_01/03-01-05-02-01-02-01.wav",
        "Actor_02/03-01-08-01-02-01-02.mp3",
        "Actor_01/03-02-05-01-01-01-01.wav",  # song
        "Actor_01/03-01-09-01-01-01-01.wav",  # no emotion 09
        "Actor_01/not-a-ravdess-name.wav",
    )
    (tmp_path / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "Actor_01" / "._03-01-05-02-01-02-01.wav").write_bytes(b"junk")  # macOS resource fork
    (tmp_path / "README.txt").write_text("notes")
    corpus = load_corpus(tmp_path)
    assert corpus.name == "ravdess"
    assert [(u.emotion, u.speaker, u.gender) for u in corpus.utterances] == [
        ("angry", "ravdess:01", "male"),
        ("surprised", "ravdess:02", "female"),
    ]
    assert corpus.utterances[0].extra["intensity"] == "strong"
    reasons = {p.name: r for p, r in corpus.skipped}
    assert "song" in reasons["03-02-05-01-01-01-01.wav"]
    assert "unknown" in reasons["03-01-09-01-01-01-01.wav"]
    assert "does not match" in reasons["not-a-ravdess-name.wav"]
    assert reasons["README.txt"] == "not audio"
    assert ".DS_Store" not in reasons and "._03-01-05-02-01-02-01.wav" not in reasons


def test_tess_original_layout_and_spellings(tmp_path):
    _touch(
        tmp_path,
        "TESS Toronto emotional speech set data/OAF_Fear/OAF_back_fear.wav",
        "TESS Toronto emotional speech set data/OAF_Pleasant_surprise/OAF_bar_ps.wav",
        "TESS Toronto emotional speech set data/YAF_pleasant_surprised/YAF_bar_ps.wav",
        "TESS Toronto emotional speech set data/OAF_neutral/OA_bite_neutral.wav",
        "TESS Toronto emotional speech set data/YAF_angry/YAF_dog_angry.ogg",
    )
    corpus = load_corpus(tmp_path, "tess")
    got = sorted((u.speaker, u.emotion, u.label) for u in corpus.utterances)
    assert got == [
        ("tess:OAF", "fearful", "fear"),
        ("tess:OAF", "neutral", "neutral"),
        ("tess:OAF", "surprised", "ps"),
        ("tess:YAF", "angry", "angry"),
        ("tess:YAF", "surprised", "ps"),
    ]
    assert load_corpus(tmp_path).name == "tess"


def test_cremad_gender_only_with_demographics(tmp_path):
    _touch(
        tmp_path,
        "AudioWAV/1001_DFA_ANG_XX.wav",
        "AudioWAV/1002_IEO_HAP_HI.wav",
        "AudioWAV/1003_IEO_XYZ_LO.wav",
    )
    corpus = load_corpus(tmp_path)
    assert corpus.name == "crema-d"
    assert [(u.speaker, u.emotion, u.gender) for u in corpus.utterances] == [
        ("crema-d:1001", "angry", None),
        ("crema-d:1002", "happy", None),
    ]
    assert corpus.utterances[1].extra == {"sentence": "IEO", "level": "high"}
    assert "unknown CREMA-D emotion" in dict((p.name, r) for p, r in corpus.skipped)["1003_IEO_XYZ_LO.wav"]
    (tmp_path / "VideoDemographics.csv").write_text(
        "ActorID,Age,Sex,Race,Ethnicity\n"
        "1001,51,Male,Caucasian,Not Hispanic\n"
        "1002,21,Female,Caucasian,Not Hispanic\n"
    )
    corpus = load_corpus(tmp_path, "cremad")
    assert [u.gender for u in corpus.utterances] == ["male", "female"]
    assert all(p.name != "VideoDemographics.csv" for p, _ in corpus.skipped)


def test_emodb_mapping_and_boredom(tmp_path):
    _touch(
        tmp_path,
        "wav/03a01Wa.wav",
        "wav/08b02Ab.wav",
        "wav/16a05Tc.wav",
        "wav/11b09Lc.wav",
        "wav/09a01Nc.wav",
    )
    corpus = load_corpus(tmp_path)
    assert corpus.name == "emodb"
    got = [(u.speaker, u.emotion, u.gender, u.label) for u in corpus.utterances]
    assert got == [
        ("emodb:03", "angry", "male", "W"),
        ("emodb:08", "fearful", "female", "A"),
        ("emodb:09", "neutral", "female", "N"),
        ("emodb:16", "sad", "female", "T"),
    ]
    assert corpus.skipped == [(tmp_path / "wav/11b09Lc.wav", corpus.skipped[0][1])]
    assert "boredom" in corpus.skipped[0][1]


def test_savee_both_layouts(tmp_path):
    _touch(tmp_path, "AudioData/DC/a01.wav", "AudioData/JE/sa03.wav", "AudioData/KL/su15.wav")
    _touch(tmp_path / "flat", "JK_f02.wav", "DC_n10.wav", "XX_a01.wav")
    corpus = load_corpus(tmp_path / "AudioData")
    assert corpus.name == "savee"
    assert [(u.speaker, u.emotion) for u in corpus.utterances] == [
        ("savee:DC", "angry"),
        ("savee:JE", "sad"),
        ("savee:KL", "surprised"),
    ]
    flat = load_corpus(tmp_path / "flat", "savee")
    assert [(u.speaker, u.emotion, u.gender) for u in flat.utterances] == [
        ("savee:DC", "neutral", "male"),
        ("savee:JK", "fearful", "male"),
    ]
    assert [p.name for p, _ in flat.skipped] == ["XX_a01.wav"]


def test_folder_layouts_and_synonyms(tmp_path):
    _touch(
        tmp_path / "flat",
        "anger/x1.wav",
        "Happiness/x2.flac",
        "fear/x3.opus",
        "surprise/x4.wav",
        "misc/x5.wav",
    )
    corpus = load_corpus(tmp_path / "flat")
    assert corpus.name == "folder"
    assert sorted(u.emotion for u in corpus.utterances) == ["angry", "fearful", "happy", "surprised"]
    assert {u.speaker for u in corpus.utterances} == {"folder:unknown"}
    assert [p.name for p, _ in corpus.skipped] == ["x5.wav"]
    _touch(tmp_path / "nested", "alice/sad/1.wav", "alice/neutral/2.wav", "bob/sad/3.wav")
    nested = load_corpus(tmp_path / "nested", "folder")
    assert sorted((u.speaker, u.emotion) for u in nested.utterances) == [
        ("folder:alice", "neutral"),
        ("folder:alice", "sad"),
        ("folder:bob", "sad"),
    ]


def test_manifest(tmp_path):
    _touch(tmp_path, "clips/a.wav", "clips/b.flac", "elsewhere/c.wav", "clips/unlisted.wav")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "list.csv").write_text(
        "path,emotion,speaker,gender,session\n"
        "clips/a.wav,Anger,s1,F,morning\n"
        f"{tmp_path / 'elsewhere/c.wav'},neutral,corpus:x,,\n"
        "clips/b.flac,happy,,,\n"
        "clips/gone.wav,sad,s1,,\n"
    )
    corpus = load_corpus(tmp_path)
    assert corpus.name == "manifest"
    got = [(u.path.name, u.emotion, u.speaker, u.gender, dict(u.extra)) for u in corpus.utterances]
    assert got == [
        ("a.wav", "angry", "manifest:s1", "female", {"session": "morning"}),
        ("b.flac", "happy", "manifest:unknown", None, {}),
        ("c.wav", "neutral", "corpus:x", None, {}),
    ]
    reasons = {p.name: r for p, r in corpus.skipped}
    assert "not found" in reasons["gone.wav"]
    assert reasons["unlisted.wav"] == "not listed in the manifest"
    assert reasons["notes.txt"] == "not audio" and "list.csv" not in reasons
    assert len(load_corpus(tmp_path / "list.csv")) == 3  # the CSV itself works too


def test_manifest_errors_name_the_row(tmp_path):
    _touch(tmp_path, "a.wav")
    (tmp_path / "m.csv").write_text("path,emotion\na.wav,happy\na.wav,bored\n")
    with pytest.raises(CorpusError, match=r"m\.csv line 3: unknown emotion 'bored'"):
        load_corpus(tmp_path)
    (tmp_path / "m.csv").write_text("path,emotion,gender\na.wav,happy,x\n")
    with pytest.raises(CorpusError, match=r"m\.csv line 2: unknown gender 'x'"):
        load_corpus(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("file,label\na.wav,happy\n")
    with pytest.raises(CorpusError, match="'path' and 'emotion'"):
        load_corpus(tmp_path / "m.csv")


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(tmp_path / "nope")
    _touch(tmp_path / "junk", "random/one.wav", "two.wav")
    with pytest.raises(CorpusError, match=r"junk: no clips of a known corpus layout.*2 audio files"):
        load_corpus(tmp_path / "junk")
    with pytest.raises(CorpusError, match=r"junk: no files match the ravdess layout"):
        load_corpus(tmp_path / "junk", "ravdess")
    with pytest.raises(CorpusError, match=r"unknown corpus 'iemocap' \(known: manifest, ravdess, tess"):
        load_corpus(tmp_path / "junk", "iemocap")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="empty: no clips"):
        load_corpus(tmp_path / "empty")
    with pytest.raises(CorpusError, match="got a file"):
        load_corpus(tmp_path / "junk" / "two.wav")
    with pytest.raises(CorpusError, match="unknown emotion 'boredom'"):
        load_corpus(tmp_path / "junk", emotions=["boredom"])


def test_vocabulary_and_registry():
    assert EMOTIONS == ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    assert set(ADAPTERS) == {"ravdess", "tess", "crema-d", "emodb", "savee", "folder", "manifest"}
    assert canonical_emotion("Pleasant Surprise") == "surprised"
    assert canonical_emotion(" Anger ") == "angry" and canonical_emotion("boredom") is None


def test_summary_of_examples_and_unreadable(tmp_path):
    summary = summarize(load_corpus(EXAMPLES))
    assert summary["clips"] == 8 and list(summary["per_emotion"]) == list(EMOTIONS)
    assert all(n == 1 for n in summary["per_speaker"].values()) and summary["per_gender"] == {
        "female": 4,
        "male": 4,
    }
    _touch(tmp_path, "angry/a.wav", sr=22050)
    (tmp_path / "angry" / "broken.wav").write_text("not audio")
    summary = summarize(load_corpus(tmp_path))
    assert summary["clips"] == 2 and summary["sample_rates"] == {22050: 1}
    assert summary["mean_duration_s"] == pytest.approx(1600 / 22050, abs=1e-3)
    assert [Path(u["path"]).name for u in summary["unreadable"]] == ["broken.wav"]


def test_examples_folder_is_small_and_attributed():
    clips = sorted(EXAMPLES.glob("*.flac"))
    assert len(clips) == 8
    assert sum(p.stat().st_size for p in EXAMPLES.iterdir()) < 1_000_000
    readme = (EXAMPLES / "README.md").read_text()
    for needed in ("Livingstone", "e0196391", "CC BY-NC-SA 4.0", "01-20"):
        assert needed in readme
    for clip in clips:
        assert clip.name in readme


# --------------------------------------------------------------------------- CLI


def test_cli_data_summary_examples():
    result = CliRunner().invoke(app, ["data", "summary", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    for text in ("clips per emotion", "clips per speaker", "surprised", "ravdess:08", "16000 Hz: 8"):
        assert text in result.output
    result = CliRunner().invoke(app, ["data", "summary", str(EXAMPLES), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["clips"] == 8


def test_cli_data_summary_bad_path(tmp_path):
    bad = tmp_path / "no-such-corpus"
    result = CliRunner().invoke(app, ["data", "summary", str(bad)])
    assert result.exit_code == 2
    assert str(bad) in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, CorpusError)
    result = CliRunner().invoke(app, ["data", "summary", str(EXAMPLES), "--corpus", "nonsense"])
    assert result.exit_code == 2 and "unknown corpus 'nonsense'" in result.output


def test_corpus_dataclass_helpers(tmp_path):
    _touch(tmp_path, "sad/1.wav", "neutral/2.wav")
    corpus = load_corpus(tmp_path)
    assert isinstance(corpus, Corpus) and corpus.emotions == ["neutral", "sad"] and len(corpus) == 2
