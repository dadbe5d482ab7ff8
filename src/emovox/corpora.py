"""Corpus adapters: a folder of emotional speech -> one list of :class:`Utterance` with canonical labels.

Every corpus names its emotions, speakers and files differently. An adapter parses one layout
(RAVDESS, TESS, CREMA-D, Berlin EmoDB, SAVEE, a folder per emotion, or a CSV manifest) into the
same :class:`Utterance` records, with emotions mapped onto :data:`EMOTIONS` and speakers made
globally unique (``"<corpus>:<id>"``) so speaker-independent splits work across corpora.

Adapters only parse names (and small metadata CSVs); no audio is decoded by them. Files that do
not fit the layout are kept in :attr:`Corpus.skipped` with the reason, so a summary can show why a
clip was left out instead of silently dropping it. :func:`load_waves` decodes a list of
utterances (once each, threaded) for training and evaluation.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from emovox.audio import AUDIO_EXTENSIONS, iter_load
from emovox.errors import AudioError, CorpusError
from emovox.progress import progress_bar

EMOTIONS: tuple[str, ...] = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")

# Label spellings found in corpora and in users' folder names -> canonical emotion.
SYNONYMS: Mapping[str, str] = {
    **{e: e for e in EMOTIONS},
    "neu": "neutral",
    "happiness": "happy",
    "joy": "happy",
    "hap": "happy",
    "sadness": "sad",
    "anger": "angry",
    "ang": "angry",
    "fear": "fearful",
    "afraid": "fearful",
    "fea": "fearful",
    "disgusted": "disgust",
    "dis": "disgust",
    "surprise": "surprised",
    "sur": "surprised",
    "ps": "surprised",
    "pleasant_surprise": "surprised",
    "pleasant_surprised": "surprised",
}

GENDERS: Mapping[str, str] = {
    "m": "male",
    "male": "male",
    "man": "male",
    "f": "female",
    "female": "female",
    "woman": "female",
}


def canonical_emotion(label: str) -> str | None:
    """The canonical emotion for a corpus or folder label (case, spaces and dashes ignored), or None."""
    key = re.sub(r"[\s\-]+", "_", label.strip().lower())
    return SYNONYMS.get(key)


@dataclass(frozen=True)
class Utterance:
    """One clip: where it is, its canonical emotion, who speaks, and the corpus' own label."""

    path: Path
    emotion: str
    speaker: str
    corpus: str
    label: str
    gender: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Corpus:
    """All usable clips of one corpus folder, plus the files that were left out and why."""

    name: str
    root: Path
    utterances: list[Utterance]
    skipped: list[tuple[Path, str]]

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def speakers(self) -> list[str]:
        """Sorted distinct speakers."""
        return sorted({u.speaker for u in self.utterances})

    @property
    def emotions(self) -> list[str]:
        """Emotions present, in :data:`EMOTIONS` order."""
        present = {u.emotion for u in self.utterances}
        return [e for e in EMOTIONS if e in present]


Scan = tuple[list[Utterance], list[tuple[Path, str]]]


@dataclass(frozen=True)
class Adapter:
    """A corpus layout: ``scan(root, audio_files)`` parses the files it recognises."""

    name: str
    description: str
    scan: Callable[[Path, list[Path]], Scan]


# --------------------------------------------------------------------------- RAVDESS

RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def _scan_ravdess(root: Path, files: list[Path]) -> Scan:
    """``Actor_XX/MM-VV-EE-II-SS-RR-AA.wav``: speech only (vocal channel 01); odd actors are male."""
    utts: list[Utterance] = []
    skipped: list[tuple[Path, str]] = []
    for path in files:
        m = _RAVDESS_NAME.match(path.stem)
        if not m:
            skipped.append((path, "name does not match RAVDESS MM-VV-EE-II-SS-RR-AA"))
            continue
        _modality, channel, emo, intensity, statement, repetition, actor = m.groups()
        if channel == "02":
            skipped.append((path, "RAVDESS song (vocal channel 02), not speech"))
            continue
        if channel != "01" or emo not in RAVDESS_EMOTIONS or intensity not in ("01", "02"):
            skipped.append((path, "RAVDESS name with an unknown vocal channel, emotion or intensity code"))
            continue
        utts.append(
            Utterance(
                path=path,
                emotion=RAVDESS_EMOTIONS[emo],
                speaker=f"ravdess:{actor}",
                corpus="ravdess",
                label=emo,
                gender="male" if int(actor) % 2 else "female",
                extra={
                    "intensity": "normal" if intensity == "01" else "strong",
                    "statement": statement,
                    "repetition": repetition,
                },
            )
        )
    return utts, skipped


# --------------------------------------------------------------------------- TESS

_TESS_NAME = re.compile(r"^(OAF|YAF|OA)_([A-Za-z']+)_([A-Za-z_]+)$", re.IGNORECASE)


def _scan_tess(root: Path, files: list[Path]) -> Scan:
    """``{OAF,YAF}_<emotion>/<SPK>_<word>_<emotion>.wav``; two actresses; ``OA_bite_neutral`` is OAF."""
    utts: list[Utterance] = []
    skipped: list[tuple[Path, str]] = []
    for path in files:
        m = _TESS_NAME.match(path.stem)
        if not m:
            skipped.append((path, "name does not match TESS <OAF|YAF>_<word>_<emotion>"))
            continue
        speaker, word, label = m.groups()
        emotion = canonical_emotion(label)
        if emotion is None:
            skipped.append((path, f"unknown TESS emotion {label!r}"))
            continue
        speaker = "OAF" if speaker.upper() == "OA" else speaker.upper()
        utts.append(
            Utterance(
                path=path,
                emotion=emotion,
                speaker=f"tess:{speaker}",
                corpus="tess",
                label=label,
                gender="female",
                extra={"word": word.lower()},
            )
        )
    return utts, skipped


# --------------------------------------------------------------------------- CREMA-D

CREMAD_EMOTIONS = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fearful",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
CREMAD_LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
_CREMAD_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")


def _cremad_genders(root: Path, files: list[Path]) -> dict[str, str]:
    """ActorID -> gender from ``VideoDemographics.csv`` in the root or beside the clips, if present."""
    candidates = {root / "VideoDemographics.csv"} | {f.parent / "VideoDemographics.csv" for f in files}
    genders: dict[str, str] = {}
    for csv_path in sorted(c for c in candidates if c.is_file()):
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                actor = (row.get("ActorID") or "").strip()
                sex = GENDERS.get((row.get("Sex") or "").strip().lower())
                if actor and sex:
                    genders[actor] = sex
    return genders


def _scan_cremad(root: Path, files: list[Path]) -> Scan:
    """``1001_DFA_ANG_XX.wav``: actor, sentence, emotion, level; gender only with VideoDemographics.csv."""
    genders = _cremad_genders(root, files)
    utts: list[Utterance] = []
    skipped: list[tuple[Path, str]] = []
    for path in files:
        m = _CREMAD_NAME.match(path.stem)
        if not m:
            skipped.append((path, "name does not match CREMA-D <actor>_<sentence>_<emotion>_<level>"))
            continue
        actor, sentence, emo, level = m.groups()
        if emo not in CREMAD_EMOTIONS:
            skipped.append((path, f"unknown CREMA-D emotion code {emo!r}"))
            continue
        utts.append(
            Utterance(
                path=path,
                emotion=CREMAD_EMOTIONS[emo],
                speaker=f"crema-d:{actor}",
                corpus="crema-d",
                label=emo,
                gender=genders.get(actor),
                extra={"sentence": sentence, "level": CREMAD_LEVELS.get(level, level)},
            )
        )
    return utts, skipped


# --------------------------------------------------------------------------- Berlin EmoDB

# German initials: Wut, Langeweile, Ekel, Angst, Freude, Trauer, Neutral. Boredom (L) has no
# canonical emotion, so those clips are skipped with this reason rather than mislabelled.
EMODB_EMOTIONS: Mapping[str, str | None] = {
    "W": "angry",
    "L": None,
    "E": "disgust",
    "A": "fearful",
    "F": "happy",
    "T": "sad",
    "N": "neutral",
}
# Speaker genders as documented on the EmoDB site (emodb.bilderbar.info).
EMODB_GENDERS = {
    "03": "male",
    "10": "male",
    "11": "male",
    "12": "male",
    "15": "male",
    "08": "female",
    "09": "female",
    "13": "female",
    "14": "female",
    "16": "female",
}
_EMODB_NAME = re.compile(r"^(\d\d)([ab]\d\d)([WLEAFTN])([a-z])$")


def _scan_emodb(root: Path, files: list[Path]) -> Scan:
    """``03a01Fa.wav``: speaker, text code, emotion initial (German), version letter."""
    utts: list[Utterance] = []
    skipped: list[tuple[Path, str]] = []
    for path in files:
        m = _EMODB_NAME.match(path.stem)
        if not m:
            skipped.append((path, "name does not match EmoDB <speaker><text><emotion><version>"))
            continue
        speaker, text, letter, version = m.groups()
        emotion = EMODB_EMOTIONS[letter]
        if emotion is None:
            skipped.append((path, "EmoDB boredom (L) is not in the canonical emotion vocabulary"))
            continue
        utts.append(
            Utterance(
                path=path,
                emotion=emotion,
                speaker=f"emodb:{speaker}",
                corpus="emodb",
                label=letter,
                gender=EMODB_GENDERS.get(speaker),
                extra={"text": text, "version": version},
            )
        )
    return utts, skipped


# --------------------------------------------------------------------------- SAVEE

SAVEE_EMOTIONS = {
    "a": "angry",
    "d": "disgust",
    "f": "fearful",
    "h": "happy",
    "n": "neutral",
    "sa": "sad",
    "su": "surprised",
}
SAVEE_SPEAKERS = ("DC", "JE", "JK", "KL")
_SAVEE_NAME = re.compile(r"^(?:(DC|JE|JK|KL)_)?(sa|su|a|d|f|h|n)(\d+)$", re.IGNORECASE)


def _scan_savee(root: Path, files: list[Path]) -> Scan:
    """``DC/a01.wav`` or ``DC_a01.wav``: four male speakers, emotion prefix a/d/f/h/n/sa/su."""
    utts: list[Utterance] = []
    skipped: list[tuple[Path, str]] = []
    for path in files:
        m = _SAVEE_NAME.match(path.stem)
        speaker = (m.group(1) if m and m.group(1) else path.parent.name).upper()
        if not m or speaker not in SAVEE_SPEAKERS:
            skipped.append((path, "name does not match SAVEE <DC|JE|JK|KL>/<emotion><number>"))
            continue
        label = m.group(2).lower()
        utts.append(
            Utterance(
                path=path,
                emotion=SAVEE_EMOTIONS[label],
                speaker=f"savee:{speaker}",
                corpus="savee",
                label=label,
                gender="male",
                extra={"number": m.group(3)},
            )
        )
    return utts, skipped


# --------------------------------------------------------------------------- folder per emotion


def _scan_folder(root: Path, files: list[Path]) -> Scan:
    """``root/<emotion>/*`` (speaker unknown) or ``root/<speaker>/<emotion>/*``; label synonyms accepted."""
    utts: list[Utterance] = []
    skipped: list[tuple[Path, str]] = []
    for path in files:
        parts = path.relative_to(root).parts
        emotion = canonical_emotion(parts[-2]) if len(parts) in (2, 3) else None
        if emotion is None:
            skipped.append((path, "not under a folder named after an emotion (root/[speaker/]emotion/file)"))
            continue
        speaker = parts[0] if len(parts) == 3 else "unknown"
        utts.append(
            Utterance(
                path=path, emotion=emotion, speaker=f"folder:{speaker}", corpus="folder", label=parts[-2]
            )
        )
    return utts, skipped


# --------------------------------------------------------------------------- CSV manifest


_MANIFEST_COLUMNS = frozenset({"path", "emotion", "speaker", "gender"})


def _manifest_columns(csv_path: Path) -> list[str] | None:
    """The lower-cased header of a CSV that has ``path`` and ``emotion`` columns, else None."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    cols = [c.strip().lower() for c in header]
    return cols if {"path", "emotion"} <= set(cols) else None


def _find_manifest(root: Path) -> Path | None:
    """The CSV manifest for ``root``: the file itself if it is a CSV, else the one manifest CSV in it."""
    if root.is_file():
        return root if root.suffix.lower() == ".csv" else None
    found = [p for p in sorted(root.glob("*.csv")) if _manifest_columns(p)]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise CorpusError(f"{root}: several manifest CSVs ({names}); pass the one to use")
    return found[0] if found else None


def _scan_manifest(root: Path, files: list[Path]) -> Scan:
    """A CSV with columns ``path, emotion[, speaker[, gender]]``; relative paths are from the CSV's folder.

    A speaker value that already contains ``:`` (e.g. ``ravdess:05``) is kept as is, so clips taken
    from a known corpus keep their identity; others become ``manifest:<speaker>``. Any other
    columns are kept in :attr:`Utterance.extra`.
    """
    csv_path = _find_manifest(root)
    if csv_path is None:
        return [], []
    cols = _manifest_columns(csv_path)
    if cols is None:
        raise CorpusError(f"{csv_path}: a manifest needs a header with 'path' and 'emotion' columns")
    base = csv_path.parent
    utts: list[Utterance] = []
    skipped: list[tuple[Path, str]] = []
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        next(reader)
        for line_no, values in enumerate(reader, start=2):
            if not any(v.strip() for v in values):
                continue
            row = {c: (values[i].strip() if i < len(values) else "") for i, c in enumerate(cols)}
            where = f"{csv_path} line {line_no}"
            if not row["path"]:
                raise CorpusError(f"{where}: empty path")
            path = Path(row["path"]).expanduser()
            path = path if path.is_absolute() else base / path
            emotion = canonical_emotion(row["emotion"])
            if emotion is None:
                raise CorpusError(
                    f"{where}: unknown emotion {row['emotion']!r} (known: {', '.join(EMOTIONS)})"
                )
            gender_value = row.get("gender", "")
            gender = GENDERS.get(gender_value.lower()) if gender_value else None
            if gender_value and gender is None:
                raise CorpusError(f"{where}: unknown gender {gender_value!r} (use male/female or m/f)")
            if not path.is_file():
                skipped.append((path, f"listed in {csv_path.name} line {line_no} but not found"))
                continue
            if path.suffix.lower() not in AUDIO_EXTENSIONS:
                skipped.append((path, "not audio"))
                continue
            speaker = row.get("speaker") or "unknown"
            utts.append(
                Utterance(
                    path=path,
                    emotion=emotion,
                    speaker=speaker if ":" in speaker else f"manifest:{speaker}",
                    corpus="manifest",
                    label=row["emotion"],
                    gender=gender,
                    extra={k: v for k, v in row.items() if k not in _MANIFEST_COLUMNS and v},
                )
            )
    return utts, skipped


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter("manifest", "CSV with columns path, emotion[, speaker[, gender]]", _scan_manifest),
        Adapter("ravdess", "RAVDESS speech: Actor_XX/03-01-EE-II-SS-RR-AA.wav", _scan_ravdess),
        Adapter("tess", "Toronto Emotional Speech Set: OAF_angry/OAF_back_angry.wav", _scan_tess),
        Adapter("crema-d", "CREMA-D: 1001_DFA_ANG_XX.wav", _scan_cremad),
        Adapter("emodb", "Berlin EmoDB: 03a01Fa.wav", _scan_emodb),
        Adapter("savee", "SAVEE: DC/a01.wav or DC_a01.wav", _scan_savee),
        Adapter("folder", "one folder per emotion: root/[speaker/]emotion/*.wav", _scan_folder),
    )
}
_ALIASES = {"cremad": "crema-d", "crema": "crema-d", "emo-db": "emodb", "berlin": "emodb", "csv": "manifest"}


def _resolve_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in ADAPTERS:
        raise CorpusError(f"unknown corpus {name!r} (known: {', '.join(ADAPTERS)})")
    return key


def _walk(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Audio files under ``root`` (sorted) and other visible files as ``(path, 'not audio')``.

    Hidden files and folders (``.DS_Store``, ``.git``) are ignored entirely.
    """
    audio: list[Path] = []
    other: list[tuple[Path, str]] = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or not path.is_file():
            continue
        if path.suffix.lower() in AUDIO_EXTENSIONS:
            audio.append(path)
        else:
            other.append((path, "not audio"))
    return audio, other


def load_corpus(
    path: str | Path, corpus: str | None = None, *, emotions: Sequence[str] | None = None
) -> Corpus:
    """Read a corpus folder (or a CSV manifest) into a :class:`Corpus`.

    ``corpus`` names the adapter (see :data:`ADAPTERS`); ``None`` tries them all and keeps the
    one that recognises the most files (a manifest CSV in the folder wins). ``emotions`` keeps only
    those emotions (canonical names or synonyms). Raises :class:`CorpusError` naming the path.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CorpusError(f"{root}: not found")
    if root.is_file() and root.suffix.lower() != ".csv":
        raise CorpusError(f"{root}: expected a corpus folder or a CSV manifest, got a file")
    wanted = _resolve_emotions(emotions)
    if root.is_file():
        audio, other = [], []
        names = ["manifest"] if corpus is None else [_resolve_name(corpus)]
    else:
        audio, other = _walk(root)
        names = list(ADAPTERS) if corpus is None else [_resolve_name(corpus)]

    best: tuple[str, Scan] | None = None
    for name in names:
        utts, skipped = ADAPTERS[name].scan(root, audio)
        if name == "manifest" and utts and corpus is None:
            best = (name, (utts, skipped))
            break
        if best is None or len(utts) > len(best[1][0]):
            best = (name, (utts, skipped))
    assert best is not None
    name, (utts, skipped) = best
    if not utts:
        if corpus is None:
            raise CorpusError(
                f"{root}: no clips of a known corpus layout found among {len(audio)} audio files "
                f"(tried {', '.join(ADAPTERS)}; pass --corpus or write a manifest CSV)"
            )
        why = f"; e.g. {skipped[0][0].name}: {skipped[0][1]}" if skipped else ""
        raise CorpusError(f"{root}: no files match the {name} layout ({len(audio)} audio files{why})")

    consumed = {u.path for u in utts} | {p for p, _ in skipped}
    skipped = skipped + [(p, r) for p, r in other if p not in consumed and not _is_metadata(p)]
    if name == "manifest" and root.is_dir():
        # audio files beside the manifest that it does not list are not errors, just unused
        listed = {u.path.resolve() for u in utts} | {p.resolve() for p, _ in skipped}
        skipped += [(p, "not listed in the manifest") for p in audio if p.resolve() not in listed]
    if wanted is not None:
        utts = [u for u in utts if u.emotion in wanted]
        if not utts:
            raise CorpusError(f"{root}: none of the requested emotions ({', '.join(sorted(wanted))}) found")
    utts.sort(key=lambda u: str(u.path))
    skipped.sort(key=lambda s: str(s[0]))
    return Corpus(name=name, root=root, utterances=utts, skipped=skipped)


def _is_metadata(path: Path) -> bool:
    """A CSV an adapter reads (a manifest or CREMA-D's demographics), not a stray file."""
    return path.suffix.lower() == ".csv" and (
        path.name == "VideoDemographics.csv" or _manifest_columns(path) is not None
    )


def _resolve_emotions(emotions: Sequence[str] | None) -> set[str] | None:
    if emotions is None:
        return None
    wanted: set[str] = set()
    for label in emotions:
        emotion = canonical_emotion(label)
        if emotion is None:
            raise CorpusError(f"unknown emotion {label!r} (known: {', '.join(EMOTIONS)})")
        wanted.add(emotion)
    return wanted


def summarize(corpus: Corpus) -> dict[str, Any]:
    """Counts and durations of a corpus, read from file headers (``soundfile.info``; nothing is decoded).

    Returns a JSON-able dict: ``name``, ``root``, ``clips``, ``per_emotion`` (in :data:`EMOTIONS`
    order), ``per_speaker``, ``per_gender``, ``speaker_gender``, ``total_duration_s``, ``mean_duration_s``,
    ``min_duration_s``, ``max_duration_s``, ``sample_rates`` ({rate: clips}), ``channels``
    ({count: clips}), ``unreadable`` and ``skipped`` (lists of ``{"path", "reason"}``).
    """
    per_emotion = Counter(u.emotion for u in corpus.utterances)
    durations: list[float] = []
    rates: Counter[int] = Counter()
    channels: Counter[int] = Counter()
    unreadable: list[dict[str, str]] = []
    for u in corpus.utterances:
        try:
            info = sf.info(str(u.path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            unreadable.append({"path": str(u.path), "reason": str(exc).splitlines()[0]})
            continue
        durations.append(info.frames / info.samplerate if info.samplerate else 0.0)
        rates[info.samplerate] += 1
        channels[info.channels] += 1
    total = sum(durations)
    return {
        "name": corpus.name,
        "root": str(corpus.root),
        "clips": len(corpus.utterances),
        "per_emotion": {e: per_emotion[e] for e in EMOTIONS if per_emotion[e]},
        "per_speaker": dict(sorted(Counter(u.speaker for u in corpus.utterances).items())),
        "per_gender": dict(sorted(Counter(u.gender or "unknown" for u in corpus.utterances).items())),
        "speaker_gender": {u.speaker: u.gender for u in sorted(corpus.utterances, key=lambda u: u.speaker)},
        "total_duration_s": round(total, 3),
        "mean_duration_s": round(total / len(durations), 3) if durations else 0.0,
        "min_duration_s": round(min(durations), 3) if durations else 0.0,
        "max_duration_s": round(max(durations), 3) if durations else 0.0,
        "sample_rates": dict(sorted(rates.items())),
        "channels": dict(sorted(channels.items())),
        "unreadable": unreadable,
        "skipped": [{"path": str(p), "reason": r} for p, r in corpus.skipped],
    }


# --------------------------------------------------------------------------- audio of utterances


def load_waves(
    utts: Sequence[Utterance],
    *,
    trim: bool = False,
    min_duration: float = 0.0,
    progress: bool = True,
    description: str = "loading audio",
    workers: int | None = None,
) -> tuple[dict[Path, np.ndarray], list[tuple[Path, str]]]:
    """Decode every utterance once (16 kHz mono): ``({path: wave}, [(path, reason) skipped])``.

    ``trim`` / ``min_duration`` are the preprocessing the model is trained or was trained with. A
    file that cannot be used (unreadable, silent, too short) is skipped with its reason rather than
    ending a long evaluation; callers report the skipped list. Files are decoded on ``workers``
    threads (default: one per core, see :func:`emovox.audio.iter_load`).
    """
    waves: dict[Path, np.ndarray] = {}
    skipped: list[tuple[Path, str]] = []
    paths = list(dict.fromkeys(u.path for u in utts))
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task(description, total=len(paths))
        for path, result in iter_load(paths, workers=workers, trim=trim, min_duration=min_duration):
            if isinstance(result, AudioError):
                skipped.append((Path(path), str(result)))
            else:
                waves[path] = result
            bar.advance(task)
    return waves, skipped
