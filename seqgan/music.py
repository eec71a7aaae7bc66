"""Melodies in, token ids out, and back to MIDI, audio and a picture.

The melody encoding follows Magenta note-seq's monophonic melody encoding: time runs on a fixed grid and
every grid step holds exactly one event.

Events (what this module passes around, a plain ``list[int]``)
    ``p`` in 0..127   note-on: a note of MIDI pitch ``p`` starts at this step (any sounding note stops)
    ``REST`` (-1)     note-off: silence starts at this step
    ``HOLD`` (-2)     no event: whatever sounded at the previous step (a note or silence) goes on

Grid
    ``steps_per_quarter`` steps per quarter note, 4 by default: one step is a sixteenth note (Magenta's melody
    grid; the SeqGAN paper instead sampled the pitch every 0.4 s), so a window of 32 steps is two bars of 4/4.

Token ids (``MelodyTokenizer``), dense and small
    0 = REST, 1 = HOLD, 2 + (p - low) = note-on of pitch p for low <= p <= high.
    The default range is MIDI 48..84 (C3..C6, Magenta's default), so ``vocab_size`` is 2 + 37 = 39.
    Windows have a fixed length (``steps``, 32 by default), so there is no padding and no end token.

Canonical form (what reading produces, and what ``canonical_events`` turns any event list into)
    A sequence never starts with HOLD (it becomes REST), and a REST while nothing sounds is a HOLD: after a
    note, one REST then HOLDs until the next note-on. A note-on of the pitch that already sounds is a new
    attack (two notes), not a continuation. On canonical sequences tokens -> MIDI -> tokens is the identity, up
    to trailing rests (a MIDI file lasts the whole sequence, but reading ends a melody with its last note).

From a score or MIDI file to events
    * Which notes: one melody per tune. Drum parts (MIDI channel 10, unpitched percussion) are never used,
      nor a part in which every onset is a chord of three or more pitches ("no melody line: every note is
      part of a chord"). Of a score, the first other part from the top staff is taken; of a MIDI file, whose
      tracks come in no meaningful order (a bass track often precedes the tune), the part with the highest
      mean pitch among those with at least half as many notes as the busiest (so a bell's two notes are not
      the tune). Two-note double stops (a tune in thirds) are a melody: their top notes are taken.
    * Chords and overlaps: of the notes starting on one step, the highest wins (chords -> top note). A later
      note ends the sounding one, except a lower note that starts and ends while a higher note is held: that
      is an inner voice and is ignored. When a note ends, notes still held below it are not resumed.
    * Quantising: note starts and ends are rounded to the nearest step (halves round up); a very short note
      still lasts one step.
    * Ties: tied notes are one note (one note-on, then HOLDs).
    * Grace notes take no time in the score and are dropped.
    * Triplets and other durations off the grid are rounded like everything else: eighth-note triplets
      become 1 + 2 + 1 sixteenths; of two notes that round to the same step the higher one is kept.
    * Repeats (scores only) are played out as a player would: ``|: A :| B :|`` becomes A A B B, with 1st and
      2nd endings; a ``:|`` without its ``|:`` goes back to the previous ``:|`` or the start
      (``expand_repeats=False`` keeps the written order). MIDI files are taken as they are. ABC's ``P:`` play
      order (parts played in another order than written, e.g. ``P:ABCBC``) is not followed.
    * ABC chord symbols ("G7") and annotations are not melody and are dropped before parsing. (music21 reads
      an ABC tune with fewer than two plain bar lines without measures: bars then run from step 0 and such a
      tune's pickup and repeats are taken as written.)
    * Anacrusis: a pickup is kept, padded with rests in front so that it fills the end of a first bar; step 0
      is then always a bar line, like in the Nottingham MIDI files. Leading rests in a MIDI file are kept.
    * The melody ends with its last note: trailing rests are dropped.
    * Transposition (``transpose=True``, the default): the melody is moved by -6..+5 semitones so that its
      key signature has no sharps or flats (C major, A minor, D dorian, ...). The key signature is the
      file's (the first one of the melody part, or the first MIDI key-signature event); a file without one
      gets music21's key analysis of the melody (major -> C major, minor -> A minor).
    * Pitch range: before tokenising, the whole melody is moved by the number of octaves that puts most of
      its notes inside low..high (the smallest move on a tie); notes still outside are folded by octaves into
      the range.

Windows (the training sequences)
    A melody is cut into windows of ``steps`` steps that start on bar lines. The next window starts at the
    last bar line at most ``stride`` (default ``steps``) steps after the previous start, so no music is
    skipped (bars that do not divide ``steps`` give a few steps of overlap). A window that starts inside a
    note starts with that note's note-on (the note is struck again); inside a rest, with REST. The last window
    is padded with rests; windows without any note are dropped.

Reading (``read_melodies``): MIDI (.mid, .midi) with pretty_midi, for its tick-exact timing and drum flag;
MusicXML (.xml, .musicxml, .mxl), ABC (.abc, one melody per ``X:`` tune) and Humdrum kern (.krn) with
music21; .zip archives and folders of such files. Each bad file or tune, and each other file in a folder or
zip, becomes one ``InputError`` in the returned problems, and the rest is read (hidden files and folders, such as
macOS's ``._x.mid`` and ``__MACOSX/``, are skipped).

Output: ``events_to_midi`` (MIDI bytes), ``events_to_wav`` / ``midi_to_wav`` (FluidSynth with a General MIDI
SoundFont when pyfluidsynth and libfluidsynth are installed, else sine waves), ``piano_roll_png`` and
``events_to_stream`` (a music21 part, for notation). ``builtin_melodies`` is a corpus that needs no network.
"""

from __future__ import annotations

import bisect
import gzip
import io
import json
import math
import os
import re
import tempfile
import warnings
import wave
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Sequence

import music21
import numpy as np
import pretty_midi
from music21 import bar, chord, harmony, instrument, key, meter, note, spanner, stream

from .errors import ConfigError, InputError

REST = -1
HOLD = -2

STEPS_PER_QUARTER = 4
DEFAULT_STEPS = 32
DEFAULT_LOW = 48   # C3
DEFAULT_HIGH = 84  # C6
DEFAULT_TEMPO_BPM = 120.0
MAX_FILE_BYTES = 20 * 1024 * 1024

MIDI_SUFFIXES = (".mid", ".midi")
MUSICXML_SUFFIXES = (".xml", ".musicxml", ".mxl")
ABC_SUFFIXES = (".abc",)
KERN_SUFFIXES = (".krn",)
ZIP_SUFFIXES = (".zip",)
MUSIC_SUFFIXES = MIDI_SUFFIXES + MUSICXML_SUFFIXES + ABC_SUFFIXES + KERN_SUFFIXES

Progress = Callable[[int, int, str], None]


@dataclass
class Melody:
    """One monophonic melody on the grid, in canonical form."""

    name: str                  # where it came from, e.g. "jigs.abc X:12 The Butterfly"
    events: list[int]          # one event per step (REST, HOLD or a pitch)
    bar_starts: list[int]      # the steps where bars begin; always starts with 0
    steps_per_quarter: int = STEPS_PER_QUARTER
    transposition: int = 0     # semitones added to every pitch when it was read

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Melody":
        return cls(**data)


# ---------------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------------

def canonical_events(events: Sequence[int]) -> list[int]:
    """The canonical spelling of ``events``: no leading HOLD, and silence continued with HOLD, not REST."""
    result = []
    sounding = False
    for event in events:
        if event == HOLD and not result:
            event = REST
        if event == REST and not sounding and result:
            event = HOLD
        if event >= 0:
            sounding = True
        elif event == REST:
            sounding = False
        result.append(int(event))
    return result


def events_to_notes(events: Sequence[int]) -> list[tuple[int, int, int]]:
    """The notes of an event list as ``(pitch, start_step, end_step)``, end exclusive."""
    notes = []
    current = None  # [pitch, start]
    for step, event in enumerate(events):
        if event == HOLD:
            continue
        if current is not None:
            notes.append((current[0], current[1], step))
            current = None
        if event >= 0:
            current = [int(event), step]
        elif event != REST:
            raise InputError("melody events", f"event {event} at step {step} is not a pitch, REST or HOLD")
    if current is not None:
        notes.append((current[0], current[1], len(events)))
    return notes


def pitch_contour(events: Sequence[int]) -> list[int]:
    """The pitch heard (or last heard) at every step: a note-on sets it, HOLD and REST keep it; steps before
    the first note take the first note's pitch. This is the "pitch sampled at a fixed rate" view of a melody
    that the SeqGAN paper's Nottingham sequences use (no rest or hold symbols). A melody without notes is 0s."""
    contour, current = [], None
    for event in events:
        if event >= 0:
            current = int(event)
        contour.append(current)
    first = next((p for p in contour if p is not None), 0)
    return [first if p is None else p for p in contour]


def melody_mse(generated: Sequence[Sequence[int]], references: Sequence[Sequence[int]], chunk: int = 1024) -> float:
    """The paper's MSE for melodies, as we define it (the paper names the metric but not its pairing): for each
    generated melody, the mean over steps of the squared pitch difference (semitones^2) between its
    ``pitch_contour`` and that of the closest reference melody of the same length; averaged over the generated
    melodies. Lower is closer to real music; like BLEU, each sequence is scored against the whole reference set.
    Melodies without a note have no pitch to compare and are left out (``silent_share`` counts them);
    NaN if every generated melody is silent."""
    refs = np.asarray([pitch_contour(r) for r in references if any(e >= 0 for e in r)], dtype=np.float64)
    hyps = np.asarray([pitch_contour(g) for g in generated if any(e >= 0 for e in g)], dtype=np.float64)
    if len(hyps) == 0:
        return float("nan")
    if refs.ndim != 2 or hyps.ndim != 2 or len(refs) == 0 or refs.shape[1] != hyps.shape[1]:
        raise ValueError("melody_mse needs reference melodies with notes, all as long as the generated ones")
    ref_norms = (refs ** 2).sum(1)
    best = []
    for i in range(0, len(hyps), chunk):
        h = hyps[i:i + chunk]
        distances = (h ** 2).sum(1)[:, None] + ref_norms[None, :] - 2.0 * h @ refs.T
        best.append(np.maximum(distances.min(1), 0.0))
    return float(np.concatenate(best).mean() / hyps.shape[1])


def silent_share(melodies: Sequence[Sequence[int]]) -> float:
    """The share of melodies without a single note (a generator failure that ``melody_mse`` leaves out)."""
    return sum(not any(e >= 0 for e in m) for m in melodies) / max(1, len(melodies))


def fit_to_range(events: Sequence[int], low: int = DEFAULT_LOW, high: int = DEFAULT_HIGH) -> list[int]:
    """Move the melody by whole octaves into low..high, then fold the notes still outside into it."""
    pitches = [e for e in events if e >= 0]
    if not pitches:
        return list(events)

    def inside(shift: int) -> int:
        return sum(low <= p + shift <= high for p in pitches)

    shifts = sorted((12 * k for k in range(-10, 11)), key=abs)  # smallest move wins a tie
    best = max(shifts, key=inside)
    return [e if e < 0 else _fold_into(e + best, low, high) for e in events]


def _fold_into(pitch: int, low: int, high: int) -> int:
    while pitch < low:
        pitch += 12
    while pitch > high:
        pitch -= 12
    return pitch


def melody_windows(melody: Melody, steps: int = DEFAULT_STEPS, stride: int | None = None) -> list[list[int]]:
    """Cut a melody into canonical windows of ``steps`` events that start on bar lines (see module doc)."""
    events = melody.events
    windows = []
    for start in _window_starts(melody.bar_starts, len(events), steps, stride or steps):
        window = list(events[start:start + steps])
        window[0] = _event_sounding_at(events, start)
        window += [REST] * (steps - len(window))
        if any(e >= 0 for e in window):
            windows.append(canonical_events(window))
    return windows


def _window_starts(bar_starts: Sequence[int], length: int, steps: int, stride: int) -> list[int]:
    if steps < 1 or stride < 1:
        raise ConfigError(f"window steps and stride must be at least 1 (got {steps} and {stride})")
    starts = []
    start = bar_starts[0] if bar_starts else 0
    while start < length:
        starts.append(start)
        if start + steps >= length:  # this window reaches the end
            break
        reachable = [b for b in bar_starts if start < b <= start + stride]
        start = max(reachable) if reachable else start + stride
    return starts


def _event_sounding_at(events: Sequence[int], step: int) -> int:
    """The event that explains what sounds at ``step``: its own, or the last note-on/REST before it."""
    for event in reversed(events[:step + 1]):
        if event != HOLD:
            return event
    return REST


# ---------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------

TOKENIZER_FORMAT = "seqgan-studio/melody-tokenizer/1"


class MelodyTokenizer:
    """Events <-> token ids: 0 = REST, 1 = HOLD, 2.. = pitches low..high. Serialises to a small JSON."""

    kind = "music"
    rest_id = 0
    hold_id = 1
    first_pitch_id = 2  # the id of pitch ``low``; pitch p is ``first_pitch_id + p - low``
    pad_id = None  # fixed-length windows need neither padding nor an end token
    eos_id = None

    def __init__(self, low: int = DEFAULT_LOW, high: int = DEFAULT_HIGH, steps: int = DEFAULT_STEPS,
                 steps_per_quarter: int = STEPS_PER_QUARTER):
        for label, value in (("low", low), ("high", high), ("steps", steps),
                             ("steps_per_quarter", steps_per_quarter)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"melody tokenizer: {label} must be a whole number (got {value!r})")
        if not 0 <= low < high <= 127:
            raise ConfigError(f"melody tokenizer: pitch range must lie in 0..127 (got {low}..{high})")
        if high - low < 11:
            raise ConfigError(f"melody tokenizer: pitch range {low}..{high} must span at least an octave")
        if not 1 <= steps <= 4096:
            raise ConfigError(f"melody tokenizer: steps must be 1..4096 (got {steps})")
        if not 1 <= steps_per_quarter <= 96:
            raise ConfigError(f"melody tokenizer: steps_per_quarter must be 1..96 (got {steps_per_quarter})")
        self.low, self.high = low, high
        self.steps, self.steps_per_quarter = steps, steps_per_quarter

    @property
    def vocab_size(self) -> int:
        return self.first_pitch_id + self.high - self.low + 1

    def encode(self, events: Sequence[int]) -> list[int]:
        ids = []
        for step, event in enumerate(events):
            if event == REST:
                ids.append(self.rest_id)
            elif event == HOLD:
                ids.append(self.hold_id)
            elif self.low <= event <= self.high:
                ids.append(self.first_pitch_id + event - self.low)
            else:
                raise InputError("melody events", f"event {event} at step {step} is outside the tokenizer's "
                                                  f"pitch range {self.low}..{self.high} (use fit_to_range)")
        return ids

    def decode(self, ids: Iterable[int]) -> list[int]:
        events = []
        for position, token in enumerate(ids):
            token = int(token)
            if not 0 <= token < self.vocab_size:
                raise InputError("token ids", f"id {token} at position {position} is not in 0..{self.vocab_size - 1}")
            if token == self.rest_id:
                events.append(REST)
            elif token == self.hold_id:
                events.append(HOLD)
            else:
                events.append(self.low + token - self.first_pitch_id)
        return events

    def encode_melodies(self, melodies: Iterable[Melody], stride: int | None = None) -> list[list[int]]:
        """Every melody fitted to the pitch range and cut into windows of ``self.steps`` token ids."""
        windows = []
        for melody in melodies:
            if melody.steps_per_quarter != self.steps_per_quarter:
                raise InputError(melody.name, f"melody has {melody.steps_per_quarter} steps per quarter, "
                                              f"the tokenizer {self.steps_per_quarter}")
            fitted = replace(melody, events=fit_to_range(melody.events, self.low, self.high))
            windows.extend(self.encode(w) for w in melody_windows(fitted, self.steps, stride))
        return windows

    def token_name(self, token: int) -> str:
        """A label for one id, e.g. 'rest', 'hold', 'C4'."""
        event = self.decode([token])[0]
        return "rest" if event == REST else "hold" if event == HOLD else pretty_midi.note_number_to_name(event)

    def to_dict(self) -> dict:
        return {"format": TOKENIZER_FORMAT, "kind": self.kind, "low": self.low, "high": self.high,
                "steps": self.steps, "steps_per_quarter": self.steps_per_quarter}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "melody tokenizer") -> "MelodyTokenizer":
        try:
            fields = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, TypeError):
            raise InputError(source, "not a melody tokenizer (the data is not JSON)") from None
        if not isinstance(fields, dict) or fields.get("format") != TOKENIZER_FORMAT:
            raise InputError(source, f"not a melody tokenizer (expected format {TOKENIZER_FORMAT!r})")
        try:
            return cls(fields["low"], fields["high"], fields["steps"], fields["steps_per_quarter"])
        except KeyError as missing:
            raise InputError(source, f"melody tokenizer is missing {missing}") from None
        except ConfigError as exc:
            raise InputError(source, str(exc)) from None

    def __eq__(self, other) -> bool:
        return isinstance(other, MelodyTokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"MelodyTokenizer(low={self.low}, high={self.high}, steps={self.steps}, "
                f"steps_per_quarter={self.steps_per_quarter})")


# ---------------------------------------------------------------------------------------------------------
# Reading: files, zips and folders
# ---------------------------------------------------------------------------------------------------------

def read_melodies(sources, *, transpose: bool = True, expand_repeats: bool = True,
                  steps_per_quarter: int = STEPS_PER_QUARTER, max_bytes: int = MAX_FILE_BYTES,
                  progress: Progress | None = None) -> tuple[list[Melody], list[InputError]]:
    """Read melodies from a path (file or folder), a ``(filename, bytes)`` pair, or a list of these.

    Zip archives are opened. Returns the good melodies and one ``InputError`` per bad file or tune: a few
    bad files never stop the rest. ``progress(done, total, message)`` is called after each file or ABC tune.
    Files larger than ``max_bytes`` are refused.
    """
    files, problems = _collect_files(_as_list(sources), max_bytes)
    jobs = []
    for name, data in files:
        try:
            jobs.extend(_jobs_for_file(name, data))
        except InputError as problem:
            problems.append(problem)

    melodies = []
    for done, job in enumerate(jobs, start=1):
        try:
            melodies.append(job.read(job.name, job.data, transpose=transpose, expand_repeats=expand_repeats,
                                     steps_per_quarter=steps_per_quarter))
        except InputError as problem:
            problems.append(problem)
        if progress:
            progress(done, len(jobs), f"read {job.name}")
    return melodies, problems


@dataclass
class _Job:
    """One melody to read: a whole file, or one tune of an ABC file."""

    name: str
    data: bytes | str
    read: Callable[..., Melody]  # _read_midi, _read_abc_tune or _read_notation_file


def _as_list(sources) -> list:
    if isinstance(sources, (str, os.PathLike)) or _is_named_bytes(sources):
        return [sources]
    return list(sources)


def _is_named_bytes(item) -> bool:
    return (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], (bytes, bytearray, memoryview)))


def _collect_files(sources: list, max_bytes: int) -> tuple[list[tuple[str, bytes]], list[InputError]]:
    """Every source as ``(name, bytes)``: folders listed, zips opened, sizes checked."""
    files, problems = [], []
    for source in sources:
        try:
            for name, data in _source_files(source, max_bytes, problems):
                try:  # one bad file (a broken zip in a folder) leaves the others to be read
                    _check_size(name, len(data), max_bytes)
                    if name.lower().endswith(ZIP_SUFFIXES):
                        files.extend(_zip_members(name, data, max_bytes, problems))
                    else:
                        files.append((name, data))
                except InputError as problem:
                    problems.append(problem)
        except InputError as problem:
            problems.append(problem)
    return files, problems


def _source_files(source, max_bytes: int, problems: list) -> Iterable[tuple[str, bytes]]:
    if _is_named_bytes(source):
        yield source[0], bytes(source[1])
        return
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(repr(source)[:80], "not a path or a (filename, bytes) pair")
    path = Path(source)
    if path.is_dir():
        others = []
        for member in sorted(path.rglob("*")):
            inside = member.relative_to(path).parts
            if not member.is_file() or _not_a_user_file(inside):
                continue
            if not member.name.lower().endswith(MUSIC_SUFFIXES + ZIP_SUFFIXES):
                others.append("/".join(inside))
                continue
            try:
                yield str(member), _read_path(member, max_bytes)
            except InputError as problem:
                problems.append(problem)
        if others:
            problems.append(_not_read(str(path), others, MUSIC_SUFFIXES + ZIP_SUFFIXES))
    elif path.is_file():
        yield str(path), _read_path(path, max_bytes)
    else:
        raise InputError(str(path), "no such file or folder")


def _read_path(path: Path, max_bytes: int) -> bytes:
    try:
        _check_size(str(path), path.stat().st_size, max_bytes)
        return path.read_bytes()
    except OSError as exc:
        raise InputError(str(path), f"cannot be read ({exc.strerror or exc})") from None


def _not_a_user_file(parts: tuple[str, ...]) -> bool:
    """Hidden files and folders (``.git/``, macOS's ``._x.mid``) and ``__MACOSX/``: not the user's tunes."""
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _not_read(container: str, names: list[str], suffixes: tuple[str, ...]) -> InputError:
    """One problem for all the files of a folder or zip that are not music: their names, or when there are many
    (a whole music library of .mp3 files), how many of each type."""
    if len(names) <= 5:
        which = ", ".join(names)
    else:
        types = Counter(Path(name).suffix.lower() or "(no extension)" for name in names)
        which = ", ".join(f"{count:,} {suffix}" for suffix, count in types.most_common())
    plural = "s" if len(names) > 1 else ""
    return InputError(container, f"{len(names):,} file{plural} not read, not of a music type ({which}; "
                                 f"expected one of {', '.join(suffixes)})")


def _check_size(name: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InputError(name, f"the file is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB")


def _zip_members(zip_name: str, data: bytes, max_bytes: int, problems: list) -> list[tuple[str, bytes]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(zip_name, f"not a readable zip archive ({_first_line(exc)})") from None
    members, others = [], []
    for info in infos:
        if info.is_dir() or _not_a_user_file(Path(info.filename).parts):
            continue
        name = f"{zip_name}/{info.filename}"
        if not name.lower().endswith(MUSIC_SUFFIXES + ZIP_SUFFIXES):
            others.append(info.filename)
            continue
        try:
            _check_size(name, info.file_size, max_bytes)  # checked before inflating: no zip bombs
            if name.lower().endswith(ZIP_SUFFIXES):
                raise InputError(name, "a zip inside a zip is not unpacked: put its files in the outer zip")
            members.append((name, archive.read(info)))
        except InputError as problem:
            problems.append(problem)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
            problems.append(InputError(name, f"cannot be unpacked ({_first_line(exc)})"))
    if others:
        problems.append(_not_read(zip_name, others, MUSIC_SUFFIXES))
    return members


def _jobs_for_file(name: str, data: bytes) -> list[_Job]:
    if not data.strip():
        raise InputError(name, "the file is empty")
    suffix = Path(name).suffix.lower()
    if suffix in MIDI_SUFFIXES:
        return [_Job(name, data, _read_midi)]
    if suffix in ABC_SUFFIXES:
        text = _decode_text(name, data, "ABC")
        return [_Job(tune_name, tune_text, _read_abc_tune) for tune_name, tune_text in _split_abc(name, text)]
    if suffix in KERN_SUFFIXES or suffix in MUSICXML_SUFFIXES:
        if suffix != ".mxl":  # a text format: refuse binary garbage here, with a clear message
            _decode_text(name, data, "Humdrum kern" if suffix in KERN_SUFFIXES else "MusicXML")
        return [_Job(name, data, _read_notation_file)]
    raise InputError(name, f"unsupported file type {suffix or '(no extension)'!r} "
                           f"(expected one of {', '.join(MUSIC_SUFFIXES + ZIP_SUFFIXES)})")


def _decode_text(name: str, data: bytes, kind: str) -> str:
    if b"\x00" in data[:4096]:
        raise InputError(name, f"binary data, not {'an' if kind[0] in 'AEIOU' else 'a'} {kind} text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # older ABC collections are Latin-1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


# ---------------------------------------------------------------------------------------------------------
# Reading: formats
# ---------------------------------------------------------------------------------------------------------

@dataclass
class _PartNotes:
    """One part of a file on the quarter-note timeline, before quantising."""

    notes: list[tuple[int, Fraction, Fraction]]  # (pitch, start, end) in quarter notes
    bar_lines: list[Fraction] = field(default_factory=list)
    major_tonic: int | None = None               # pitch class of the major key with this key signature


def _read_midi(name: str, data: bytes, *, transpose: bool, steps_per_quarter: int, **_) -> Melody:
    if not data.startswith(b"MThd"):
        raise InputError(name, "not a MIDI file (it does not start with 'MThd')")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            midi = pretty_midi.PrettyMIDI(io.BytesIO(data))
            downbeats = midi.get_downbeats()
    except Exception as exc:  # pretty_midi/mido raise many types on damaged files
        if isinstance(exc, ValueError) and "empty sequence" in str(exc):  # pretty_midi's max() over no events
            raise InputError(name, "holds no MIDI events (a header without tracks, or empty tracks)") from None
        raise InputError(name, f"not a readable MIDI file, it may be damaged ({_first_line(exc)})") from None

    def quarters(seconds: float) -> Fraction:
        return Fraction(int(midi.time_to_tick(seconds)), midi.resolution)

    bar_lines = [quarters(t) for t in downbeats]
    major_tonic = None
    if midi.key_signature_changes:
        key_number = midi.key_signature_changes[0].key_number  # 0-11 major, 12-23 minor
        major_tonic = key_number % 12 if key_number < 12 else (key_number + 3) % 12
    parts, drums = [], 0
    for track in midi.instruments:
        if track.is_drum:
            drums += len(track.notes)
            continue
        notes = [(n.pitch, quarters(n.start), quarters(n.end)) for n in track.notes]
        parts.append(_PartNotes(notes, bar_lines, major_tonic))
    return _melody_from_parts(name, parts, has_drums=drums > 0, transpose=transpose,
                              steps_per_quarter=steps_per_quarter, highest_part=True)


def _split_abc(name: str, text: str) -> list[tuple[str, str]]:
    """An ABC file's tunes as ``(tune name, text)``; the file header's fields are copied into each tune."""
    chunks = re.split(r"(?m)^(?=X:)", text)
    header, tunes = ("", chunks) if chunks[0].startswith("X:") else (chunks[0], chunks[1:])
    if not tunes:
        if re.search(r"(?m)^K:", text):
            return [(name, "X:1\n" + text)]  # a single tune without an X: line
        raise InputError(name, "no ABC tune found (no 'X:' line)")
    header_fields = "".join(line + "\n" for line in header.splitlines() if re.match(r"[A-Za-z]:", line))
    named = []
    for tune in tunes:
        first_line, _, rest = tune.partition("\n")
        number = first_line[2:].strip()
        title = re.search(r"(?m)^T:\s*(.*)$", rest)
        label = f"{name} X:{number}" + (f" {title.group(1).strip()}" if title else "")
        named.append((label, f"{first_line}\n{header_fields}{rest}"))
    return named


def _read_abc_tune(name: str, text: str, **options) -> Melody:
    """One tune of an ABC file (see ``_split_abc``)."""
    try:
        score = _parse_abc_tune(text)
    except Exception as exc:  # music21's ABC parser raises many types on broken tunes
        first_sentence = _first_line(exc).split(". ")[0]  # music21 goes on with reprs of its parser's tokens
        raise InputError(name, f"broken ABC tune ({first_sentence})") from None
    return _melody_from_score(name, score, **options)


def _parse_abc_tune(text: str):
    text = _without_chord_symbols(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return music21.converter.parse(text, format="abc", forceSource=True)


def _without_chord_symbols(text: str) -> str:
    """Drop "quoted" chord symbols and annotations from the music lines: they are not melody, and music21
    spends half its ABC parsing time spelling out their chords."""
    return "\n".join(line if re.match(r"[A-Za-z]:|%", line) else re.sub(r'"[^"\n]*"', " ", line)
                     for line in text.splitlines())


def _read_notation_file(name: str, data: bytes, **options) -> Melody:
    """MusicXML or kern: music21 reads them from a temporary file with the right extension."""
    suffix = Path(name).suffix.lower()
    try:
        with tempfile.TemporaryDirectory(prefix="seqgan-music-") as folder:
            path = Path(folder) / f"upload{suffix}"
            path.write_bytes(data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = music21.converter.parse(path, forceSource=True)
    except Exception as exc:  # music21 raises many types on damaged files
        kind = "Humdrum kern" if suffix in KERN_SUFFIXES else "MusicXML"
        raise InputError(name, f"not a readable {kind} file ({_first_line(exc)})") from None
    if isinstance(parsed, stream.Opus):
        parsed = parsed.scores[0] if parsed.scores else stream.Score()
    return _melody_from_score(name, parsed, **options)


def _melody_from_score(name: str, score, *, transpose: bool, expand_repeats: bool, steps_per_quarter: int) -> Melody:
    if isinstance(score, stream.Opus):  # an ABC text with several tunes in one X: block
        score = score.scores[0]
    parts = list(score.parts) if isinstance(score, stream.Score) else [score]
    candidates, has_drums = [], False
    try:
        for part in parts:
            if _is_drum_part(part):
                has_drums = True
                continue
            candidates.append(_part_notes(part, expand_repeats))
    except Exception as exc:  # music21 objects can be inconsistent in odd files
        raise InputError(name, f"cannot read the notes ({_first_line(exc)})") from None
    return _melody_from_parts(name, candidates, has_drums=has_drums, transpose=transpose,
                              steps_per_quarter=steps_per_quarter)


def _is_drum_part(part) -> bool:
    found = part.getInstrument(returnDefault=False)
    return isinstance(found, instrument.UnpitchedPercussion) or getattr(found, "midiChannel", None) == 9


def _pitched_elements(part) -> list:
    """Notes and chords that sound and take time: no chord symbols, grace notes or unpitched notes."""
    return [e for e in part.flatten().notes
            if isinstance(e, (note.Note, chord.Chord)) and not isinstance(e, harmony.ChordSymbol)
            and e.quarterLength > 0 and e.pitches]


def _part_notes(part, expand_repeats: bool) -> _PartNotes:
    """A music21 part as notes in playing order, with its bar lines (see module doc: repeats, pickup)."""
    signature = next(iter(part.recurse().getElementsByClass(key.KeySignature)), None)
    major_tonic = None if signature is None else (7 * signature.sharps) % 12
    measures = list(part.getElementsByClass(stream.Measure))
    elements = _pitched_elements(part)
    if not measures:
        notes, bar_lines = _unmeasured_notes(part, elements)
        return _PartNotes(_merge_ties(notes), bar_lines, major_tonic)

    measure_offsets = [Fraction(m.offset) for m in measures]
    by_measure: list[list] = [[] for _ in measures]
    for e in elements:
        offset = Fraction(e.offset)
        index = max(bisect.bisect_right(measure_offsets, offset) - 1, 0)
        by_measure[index].append((e, offset - measure_offsets[index]))

    order = _playing_order(measures) if expand_repeats else list(range(len(measures)))
    notes, bar_lines, time = [], [], Fraction(0)
    for position, index in enumerate(order):
        measure = measures[index]
        bar_lines.append(time)
        padding = _pickup_padding(measure) if position == 0 else Fraction(0)
        notes.extend(_timed_note(e, time + padding + offset) for e, offset in by_measure[index])
        time += padding + Fraction(measure.duration.quarterLength)
    return _PartNotes(_merge_ties(notes), bar_lines, major_tonic)


def _unmeasured_notes(part, elements) -> tuple[list[tuple], list[Fraction]]:
    """Notes as written, with a bar line every bar of the first time signature (4/4 if there is none)."""
    time_signature = next(iter(part.recurse().getElementsByClass(meter.TimeSignature)), None)
    bar_length = Fraction(time_signature.barDuration.quarterLength if time_signature else 4)
    notes = [_timed_note(e, Fraction(e.offset)) for e in elements]
    end = max((n[2] for n in notes), default=Fraction(0))
    return notes, [bar_length * i for i in range(int(end / bar_length) + 1)]


def _timed_note(element, start: Fraction) -> tuple:
    """``(pitch, start, end, tie)`` of a note or chord (its top note) placed at ``start``."""
    top = max(p.midi for p in element.pitches)
    return top, start, start + Fraction(element.quarterLength), element.tie


def _pickup_padding(first_measure) -> Fraction:
    """Rests that make a pickup measure a full bar (music21 says so in paddingLeft, or the bar is short)."""
    if first_measure.paddingLeft:
        return Fraction(first_measure.paddingLeft)
    try:
        shortfall = Fraction(first_measure.barDuration.quarterLength) - Fraction(first_measure.duration.quarterLength)
    except Exception:  # no time signature in reach
        return Fraction(0)
    return max(shortfall, Fraction(0))


def _playing_order(measures: list) -> list[int]:
    """Measure indexes in the order a player plays them: |: ... :| twice (or ``times``), with endings.

    Falls back to the written order when the repeat marks would loop without end.
    """
    def endings(measure) -> set[int]:
        numbers = set()
        for site in measure.getSpannerSites():
            if isinstance(site, spanner.RepeatBracket):
                numbers.update(site.numberRange or [])
        return numbers

    def ends_repeat(measure) -> int:
        barline = measure.rightBarline
        if isinstance(barline, bar.Repeat) and barline.direction == "end":
            return barline.times or 2
        return 0

    def starts_repeat(measure) -> bool:
        barline = measure.leftBarline
        return isinstance(barline, bar.Repeat) and barline.direction == "start"

    order = []            # measure indexes as played
    index = 0             # the measure we are at
    section_start = 0     # where the next :| jumps back to
    passes = 1            # which time through the current section this is (picks the 1st/2nd ending)
    in_ending = False     # whether the last played measure was under an ending bracket
    while index < len(measures):
        if len(order) > 8 * len(measures):
            return list(range(len(measures)))
        measure = measures[index]
        numbers = endings(measure)
        if numbers and passes not in numbers:
            index += 1
            continue
        if not numbers and in_ending:  # just left the last ending: a new section starts here
            section_start, passes = index, 1
        in_ending = bool(numbers)
        if starts_repeat(measure) and index != section_start:
            section_start, passes = index, 1
        order.append(index)
        times = ends_repeat(measure)
        if times and passes < times:
            passes += 1
            index = section_start
            in_ending = False
            continue
        if times:
            section_start, passes = index + 1, 1
        index += 1
    return order


def _merge_ties(notes: list[tuple]) -> list[tuple[int, Fraction, Fraction]]:
    """Join each tied note to the next one of the same pitch that starts where it ends."""
    merged, open_ties = [], {}  # pitch -> index in merged of a note whose tie goes on
    for pitch, start, end, tie in sorted(notes, key=lambda n: (n[1], -n[0])):
        held = open_ties.pop(pitch, None)
        if held is not None and merged[held][2] == start:
            merged[held] = (pitch, merged[held][1], end)
            index = held
        else:
            merged.append((pitch, start, end))
            index = len(merged) - 1
        if tie is not None and tie.type in ("start", "continue"):
            open_ties[pitch] = index
    return merged


# ---------------------------------------------------------------------------------------------------------
# From notes to a melody on the grid
# ---------------------------------------------------------------------------------------------------------

def _melody_from_parts(name: str, parts: list[_PartNotes], *, has_drums: bool, transpose: bool,
                       steps_per_quarter: int, highest_part: bool = False) -> Melody:
    """The first part with a melody line (``highest_part``: the one with the highest mean pitch), quantised,
    made monophonic and transposed (see module doc)."""
    quantised = [(part, _quantise(part.notes, steps_per_quarter)) for part in parts]
    quantised = [(part, notes) for part, notes in quantised if notes]
    if not quantised:
        raise InputError(name, "only drum parts (MIDI channel 10 or percussion), no melody" if has_drums
                         else "no notes")
    melodic = [(part, notes) for part, notes in quantised if not _every_onset_is_chord(notes)]
    if not melodic:
        raise InputError(name, "no melody line: every note is part of a chord")
    if highest_part:
        busiest = max(len(notes) for _, notes in melodic)
        candidates = [(part, notes) for part, notes in melodic if 2 * len(notes) >= busiest]
        part, notes = max(candidates, key=lambda pair: sum(p for p, _, _ in pair[1]) / len(pair[1]))  # ties: first
    else:
        part, notes = melodic[0]
    events = _events_from_line(_melody_line(notes))
    bar_starts = sorted({0} | {_round_half_up(b * steps_per_quarter) for b in part.bar_lines})
    bar_starts = [b for b in bar_starts if 0 <= b < len(events)]
    shift = _transposition(part.major_tonic, events, steps_per_quarter) if transpose else 0
    events = [e + shift if e >= 0 else e for e in events]
    if any(not 0 <= e <= 127 for e in events if e >= 0):
        raise InputError(name, "transposed notes fall outside MIDI's 0..127")
    return Melody(name, events, bar_starts, steps_per_quarter, shift)


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def _quantise(notes, steps_per_quarter: int) -> list[tuple[int, int, int]]:
    """Notes as ``(pitch, start_step, end_step)``; every note keeps at least one step."""
    result = []
    for pitch, start, end in notes:
        first = _round_half_up(Fraction(start) * steps_per_quarter)
        last = max(_round_half_up(Fraction(end) * steps_per_quarter), first + 1)
        if first >= 0:
            result.append((int(pitch), first, last))
    return result


def _every_onset_is_chord(notes: list[tuple[int, int, int]]) -> bool:
    """True for block chords only: two notes at once (a melody in thirds) still has a top line."""
    pitches_at: dict[int, set[int]] = {}
    for pitch, start, _ in notes:
        pitches_at.setdefault(start, set()).add(pitch)
    return all(len(pitches) >= 3 for pitches in pitches_at.values())


def _melody_line(notes: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """One note at a time: the top note of each onset; a later onset cuts the sounding note."""
    top_at: dict[int, tuple[int, int, int]] = {}
    for candidate in notes:
        start = candidate[1]
        if start not in top_at or candidate[0] > top_at[start][0]:
            top_at[start] = candidate
    line: list[tuple[int, int, int]] = []
    for pitch, start, end in sorted(top_at.values(), key=lambda n: n[1]):
        if line and line[-1][2] > start:
            held_pitch, held_start, held_end = line[-1]
            if held_pitch > pitch and held_end >= end:
                continue  # an inner voice under a held higher note
            line[-1] = (held_pitch, held_start, start)
        line.append((pitch, start, end))
    return line


def _events_from_line(line: list[tuple[int, int, int]]) -> list[int]:
    length = line[-1][2]
    events = [HOLD] * length
    events[0] = REST
    for _, _, end in line:
        if end < length:
            events[end] = REST
    for pitch, start, _ in line:
        events[start] = pitch
    return events


def _transposition(major_tonic: int | None, events: list[int], steps_per_quarter: int) -> int:
    """Semitones (-6..5) that move the key signature to no sharps or flats."""
    if major_tonic is None:
        major_tonic = _estimated_major_tonic(events, steps_per_quarter)
    return (-major_tonic + 6) % 12 - 6


def _estimated_major_tonic(events: list[int], steps_per_quarter: int) -> int:
    """music21's key analysis of the melody; a minor key gives its relative major."""
    melody = stream.Stream()
    for pitch, start, end in events_to_notes(events):
        melody.insert(start / steps_per_quarter, note.Note(pitch, quarterLength=(end - start) / steps_per_quarter))
    found = melody.analyze("key")
    tonic = found.tonic.pitchClass
    return tonic if found.mode != "minor" else (tonic + 3) % 12


# ---------------------------------------------------------------------------------------------------------
# Output: music21 stream, MIDI, WAV, piano roll
# ---------------------------------------------------------------------------------------------------------

def events_to_stream(events: Sequence[int], steps_per_quarter: int = STEPS_PER_QUARTER):
    """A music21 part in 4/4 (notes and rests), e.g. to show or export as notation."""
    part = stream.Part()
    part.append(meter.TimeSignature("4/4"))
    time = 0
    for pitch, start, end in events_to_notes(events):
        if start > time:
            part.append(note.Rest(quarterLength=Fraction(start - time, steps_per_quarter)))
        part.append(note.Note(pitch, quarterLength=Fraction(end - start, steps_per_quarter)))
        time = end
    if len(events) > time:
        part.append(note.Rest(quarterLength=Fraction(len(events) - time, steps_per_quarter)))
    return part.makeMeasures()


def events_to_midi(events: Sequence[int], *, tempo_bpm: float = DEFAULT_TEMPO_BPM,
                   steps_per_quarter: int = STEPS_PER_QUARTER, program: int = 0, velocity: int = 90) -> bytes:
    """A standard MIDI file (4/4, one instrument, General MIDI ``program``) of the melody."""
    midi = _pretty_midi(events, tempo_bpm, steps_per_quarter, program, velocity)
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()


def _pretty_midi(events, tempo_bpm, steps_per_quarter, program, velocity) -> pretty_midi.PrettyMIDI:
    if not 1 <= tempo_bpm <= 1000:
        raise ConfigError(f"tempo must be 1..1000 bpm (got {tempo_bpm})")
    if not 0 <= program <= 127 or not 1 <= velocity <= 127:
        raise ConfigError(f"MIDI program must be 0..127 and velocity 1..127 (got {program}, {velocity})")
    seconds_per_step = 60.0 / tempo_bpm / steps_per_quarter
    midi = pretty_midi.PrettyMIDI(initial_tempo=tempo_bpm)
    midi.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    track = pretty_midi.Instrument(program=program)
    for pitch, start, end in events_to_notes(events):
        if not 0 <= pitch <= 127:
            raise InputError("melody events", f"pitch {pitch} is outside MIDI's 0..127")
        track.notes.append(pretty_midi.Note(velocity, pitch, start * seconds_per_step, end * seconds_per_step))
    if events:  # a controller event (sustain off) at the end: the file lasts the whole melody, trailing rests too
        track.control_changes.append(pretty_midi.ControlChange(64, 0, len(events) * seconds_per_step))
    midi.instruments.append(track)
    return midi


def synthesizer() -> str:
    """'fluidsynth' when FluidSynth (library and pyfluidsynth) can be used, else 'sine'."""
    try:
        import fluidsynth  # noqa: F401  (pyfluidsynth; fails if libfluidsynth is missing)
    except (ImportError, OSError):
        return "sine"
    return "fluidsynth"


def midi_to_wav(midi_bytes: bytes, *, sample_rate: int = 22050, soundfont: str | None = None,
                min_seconds: float = 0.0) -> bytes:
    """16-bit mono WAV of a MIDI file, peak-normalised to -1 dBFS.

    FluidSynth with a General MIDI SoundFont (pretty_midi's TimGM6mb.sf2 unless ``soundfont`` is given) when
    available, else pretty_midi's sine-wave synthesis.
    """
    if sample_rate not in (22050, 44100):
        raise ConfigError(f"sample rate must be 22050 or 44100 Hz (got {sample_rate})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            midi = pretty_midi.PrettyMIDI(io.BytesIO(midi_bytes))
    except Exception as exc:
        raise InputError("MIDI data", f"not a readable MIDI file ({_first_line(exc)})") from None
    return _wav_bytes(_render(midi, sample_rate, soundfont), sample_rate, min_seconds)


def events_to_wav(events: Sequence[int], *, tempo_bpm: float = DEFAULT_TEMPO_BPM,
                  steps_per_quarter: int = STEPS_PER_QUARTER, program: int = 0, sample_rate: int = 22050,
                  soundfont: str | None = None) -> bytes:
    """The melody as WAV bytes (see ``midi_to_wav``); at least as long as the events, rests included."""
    midi_bytes = events_to_midi(events, tempo_bpm=tempo_bpm, steps_per_quarter=steps_per_quarter, program=program)
    seconds = len(events) * 60.0 / tempo_bpm / steps_per_quarter
    return midi_to_wav(midi_bytes, sample_rate=sample_rate, soundfont=soundfont, min_seconds=seconds)


def _render(midi: pretty_midi.PrettyMIDI, sample_rate: int, soundfont: str | None) -> np.ndarray:
    if not any(track.notes for track in midi.instruments):
        return np.zeros(0)
    if synthesizer() == "fluidsynth":
        try:
            return midi.fluidsynth(fs=sample_rate, sf2_path=soundfont)
        except Exception:  # a broken SoundFont or library: the sine fallback still gives sound
            pass
    return midi.synthesize(fs=sample_rate)


def _wav_bytes(audio: np.ndarray, sample_rate: int, min_seconds: float) -> bytes:
    audio = np.asarray(audio, dtype=np.float64)
    missing = int(math.ceil(min_seconds * sample_rate)) - len(audio)
    if missing > 0:
        audio = np.concatenate([audio, np.zeros(missing)])
    peak = np.max(np.abs(audio)) if len(audio) else 0.0
    if peak > 0:
        audio = audio * (10 ** (-1 / 20) / peak)  # -1 dBFS
    samples = np.round(audio * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def piano_roll_png(sequence: Sequence[int], *, tokenizer: MelodyTokenizer | None = None,
                   steps_per_quarter: int = STEPS_PER_QUARTER, title: str | None = None,
                   width: float = 8.0, height: float = 3.0, dpi: int = 100) -> bytes:
    """A piano-roll picture (PNG bytes) of events, or of token ids when ``tokenizer`` is given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    events = tokenizer.decode(sequence) if tokenizer is not None else list(sequence)
    notes = events_to_notes(events)
    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for pitch, start, end in notes:
        axes.add_patch(_note_rectangle(pitch, start, end))
    low, high = _roll_pitch_limits(notes, tokenizer)
    axes.set_xlim(0, max(len(events), 1))
    axes.set_ylim(low - 0.5, high + 0.5)
    bar_length = 4 * steps_per_quarter
    for step in range(0, len(events) + 1, steps_per_quarter):
        downbeat = step % bar_length == 0
        axes.axvline(step, color="0.55" if downbeat else "0.88", linewidth=1.0 if downbeat else 0.5, zorder=0)
    labelled = [p for p in range(low, high + 1) if high - low <= 24 or p % 12 == 0]
    axes.set_yticks(labelled, [pretty_midi.note_number_to_name(p) for p in labelled], fontsize=7)
    axes.set_xticks(range(0, len(events) + 1, bar_length))
    axes.set_xlabel(f"step ({steps_per_quarter} per quarter note, bars of 4/4)")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _note_rectangle(pitch: int, start: int, end: int):
    from matplotlib.patches import Rectangle

    return Rectangle((start, pitch - 0.4), end - start, 0.8, facecolor="tab:blue", edgecolor="navy", linewidth=0.6,
                     zorder=2)


def _roll_pitch_limits(notes, tokenizer) -> tuple[int, int]:
    if notes:
        pitches = [n[0] for n in notes]
        return min(pitches) - 2, max(pitches) + 2
    if tokenizer is not None:
        return tokenizer.low, tokenizer.high
    return 60, 72


# ---------------------------------------------------------------------------------------------------------
# The built-in corpus
# ---------------------------------------------------------------------------------------------------------

# O'Neill's "Music of Ireland" (1903) as shipped in music21's corpus: 1,838 dance tunes and airs, public
# domain, and jigs, reels and hornpipes like the Nottingham database the SeqGAN paper used. (The Essen
# collection in the same corpus is licensed for non-commercial use only and holds other styles.)
BUILTIN_COLLECTION = "oneills1850"
CACHE_VERSION = 1


def builtin_corpus_files() -> list[Path]:
    folder = Path(music21.__file__).parent / "corpus" / BUILTIN_COLLECTION
    return sorted(folder.glob("*.abc"))


def _builtin_tunes() -> list[tuple[str, str]]:
    """The collection's tunes in file order, each O'Neill number once: some files overlap and 171 tunes
    are transcribed twice; the first transcription is kept."""
    tunes, seen_numbers = [], set()
    for path in builtin_corpus_files():
        for name, text in _split_abc(path.name, path.read_text(encoding="latin-1")):
            number = name.split(" X:")[1].split(" ")[0]
            if number not in seen_numbers:
                seen_numbers.add(number)
                tunes.append((name, text))
    return tunes


def default_cache_dir() -> Path:
    """``$SEQGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/seqgan-studio``, else ``~/.cache/seqgan-studio``."""
    if os.environ.get("SEQGAN_CACHE_DIR"):
        return Path(os.environ["SEQGAN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "seqgan-studio"


def builtin_melodies(limit: int | None = None, *, cache_dir: str | os.PathLike | None = None,
                     progress: Progress | None = None, transpose: bool = True) -> list[Melody]:
    """Melodies of O'Neill's Music of Ireland from music21's corpus (no network), cached after the first use.

    ``limit`` reads only the first ``limit`` tunes (in file order); tunes that do not parse are skipped.
    The whole collection takes about a minute to parse. The cache (gzipped JSON, ~0.2 MB for all tunes) lives
    in ``cache_dir``, else ``$SEQGAN_CACHE_DIR``, else ``~/.cache/seqgan-studio``; it grows as larger limits
    are asked for and is reused across calls and processes.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be at least 0 (got {limit})")
    cache_path = Path(cache_dir or default_cache_dir()) / f"{BUILTIN_COLLECTION}-v{CACHE_VERSION}-" \
                                                          f"{'c' if transpose else 'original'}.json.gz"
    items, complete = _load_builtin_cache(cache_path)
    if not (complete or (limit is not None and len(items) >= limit)):
        items, complete = _parse_builtin(items, limit, progress, transpose)
        _save_builtin_cache(cache_path, items, complete)
    elif progress:
        count = len(items) if limit is None else min(limit, len(items))
        progress(count, count, f"read {count} tunes from the cache {cache_path}")
    chosen = items if limit is None else items[:limit]
    return [Melody.from_dict(item) for item in chosen if "problem" not in item]


def _parse_builtin(items: list[dict], limit: int | None, progress: Progress | None,
                   transpose: bool) -> tuple[list[dict], bool]:
    """Parse the tunes after the ``len(items)`` already cached, up to ``limit``."""
    tunes = _builtin_tunes()
    wanted = len(tunes) if limit is None else min(limit, len(tunes))
    items = list(items[:wanted])
    for index in range(len(items), wanted):
        name, text = tunes[index]
        try:
            melody = _read_abc_tune(name, text, transpose=transpose, expand_repeats=True,
                                    steps_per_quarter=STEPS_PER_QUARTER)
            items.append(melody.to_dict())
        except InputError as problem:
            items.append({"name": name, "problem": str(problem)})
        if progress:
            progress(index + 1, wanted, f"parsed {name}")
    return items, wanted == len(tunes)


def _load_builtin_cache(path: Path) -> tuple[list[dict], bool]:
    try:
        cached = json.loads(gzip.decompress(path.read_bytes()))
        if cached["version"] == CACHE_VERSION and cached["music21"] == music21.__version__:
            return cached["items"], cached["complete"]
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        pass  # no cache yet, or a damaged one: parse again
    return [], False


def _save_builtin_cache(path: Path, items: list[dict], complete: bool) -> None:
    data = {"version": CACHE_VERSION, "music21": music21.__version__, "collection": BUILTIN_COLLECTION,
            "complete": complete, "items": items}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(gzip.compress(json.dumps(data, separators=(",", ":")).encode("utf-8")))
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only cache folder only costs a new parse next time
