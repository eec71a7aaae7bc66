"""Melody reading, the event/token encoding, and MIDI / WAV / piano-roll output (seqgan/music.py).

Fixtures are made here with pretty_midi and music21; the Nottingham corpus is read from shared/ beside the
repository when it is there.
"""

import io
import random
import re
import wave
import zipfile
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from seqgan import music
from seqgan.errors import ConfigError, InputError
from seqgan.music import (HOLD, REST, Melody, MelodyTokenizer, builtin_melodies, canonical_events,
                          events_to_midi, events_to_stream, events_to_wav, fit_to_range, melody_windows,
                          midi_to_wav, piano_roll_png, read_melodies)

NOTTINGHAM = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "nottingham"
H, R = HOLD, REST


def midi_file(*tracks, key_number=None) -> bytes:
    """A MIDI file at 120 bpm; each track is ``(is_drum, [(pitch, start_quarter, end_quarter), ...])``."""
    midi = pretty_midi.PrettyMIDI(initial_tempo=120)
    if key_number is not None:
        midi.key_signature_changes.append(pretty_midi.KeySignature(key_number, 0.0))
    for is_drum, notes in tracks:
        instrument = pretty_midi.Instrument(program=0, is_drum=is_drum)
        for pitch, start, end in notes:
            instrument.notes.append(pretty_midi.Note(90, pitch, start * 0.5, end * 0.5))
        midi.instruments.append(instrument)
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()


SCALE = [(60 + step, i, i + 1) for i, step in enumerate([0, 2, 4, 5, 7, 9, 11, 12])]  # C major, quarters
SCALE_EVENTS = [p for p, _, _ in SCALE for p in (p, H, H, H)]

GOOD_ABC = """X:1
T:Good One
M:4/4
L:1/8
K:C
CDEF GABc|cBAG FEDC|]

X:2
T:Broken
M:4/4
L:1/8
K:C
|: [[[ ((( }}} :|

X:3
T:Good Two
M:4/4
L:1/8
K:C
E2G2 c4|c2G2 E4|]
"""


def read_one(name, data, **options) -> Melody:
    melodies, problems = read_melodies([(name, data)], **options)
    assert problems == [] and len(melodies) == 1
    return melodies[0]


def problem_for(name, data, **options) -> str:
    melodies, problems = read_melodies([(name, data)], **options)
    assert melodies == [] and len(problems) == 1
    assert isinstance(problems[0], InputError)
    return str(problems[0])


# --- events and tokens -------------------------------------------------------------------------------------

def test_ids_are_rest_hold_then_pitches():
    tokenizer = MelodyTokenizer()
    assert (tokenizer.kind, tokenizer.vocab_size, tokenizer.low, tokenizer.high) == ("music", 39, 48, 84)
    assert tokenizer.encode([R, H, 48, 84]) == [0, 1, 2, 38]
    assert tokenizer.decode([0, 1, 2, 38]) == [R, H, 48, 84]
    assert [tokenizer.token_name(i) for i in (0, 1, 2)] == ["rest", "hold", "C3"]


def test_encode_and_decode_reject_what_is_outside_the_vocabulary():
    tokenizer = MelodyTokenizer()
    with pytest.raises(InputError, match="outside the tokenizer's pitch range 48..84"):
        tokenizer.encode([47])
    with pytest.raises(InputError, match="id 39 at position 1"):
        tokenizer.decode([0, 39])


def test_canonical_events_start_with_rest_and_continue_silence_with_hold():
    assert canonical_events([H, H, 60, R, R, H, 62, 62]) == [R, H, 60, R, H, H, 62, 62]


def random_canonical_ids(rng: random.Random, tokenizer: MelodyTokenizer, steps: int = 32) -> list[int]:
    ids = [rng.choice([1, 1, 1, 0, rng.randrange(2, tokenizer.vocab_size)]) for _ in range(steps)]
    ids[3], ids[9], ids[10] = 2, tokenizer.vocab_size - 1, tokenizer.vocab_size - 1  # range ends, re-struck
    return tokenizer.encode(canonical_events(tokenizer.decode(ids)))


def test_tokens_to_midi_to_tokens_is_the_identity_on_the_grid():
    tokenizer = MelodyTokenizer()
    rng = random.Random(3)
    for trial, tempo in enumerate([120, 80, 150, 97.5, 200, 60]):
        ids = random_canonical_ids(rng, tokenizer)
        midi = events_to_midi(tokenizer.decode(ids), tempo_bpm=tempo)
        melodies, problems = read_melodies([(f"sample{trial}.mid", midi)], transpose=False)
        assert problems == []
        assert tokenizer.encode_melodies(melodies) == [ids], f"tempo {tempo}"


def test_fit_to_range_moves_octaves_then_folds_outliers():
    assert fit_to_range([96, H, 100, R], 48, 84) == [72, H, 76, R]   # whole melody down two octaves
    assert fit_to_range([60, 62, 64, 30, 100], 48, 84) == [60, 62, 64, 54, 76]  # outliers folded in


def test_windows_start_on_bar_lines_restrike_held_notes_and_pad_with_rests():
    events = [60] + [H] * 19 + [R] + [H] * 3 + [62] + [H] * 5   # a note held across the bar line at 16
    melody = Melody("m", events, bar_starts=[0, 16])
    assert melody_windows(melody, steps=16) == [events[:16], [60, H, H, H, R, H, H, H, 62, H, H, H, H, H, R, H]]


def test_windows_overlap_when_bars_do_not_divide_them():
    waltz = Melody("w", [60] + [H] * 11 + [62] + [H] * 11 + [R] + [H] * 11 + [64, H], bar_starts=[0, 12, 24, 36])
    assert [w[0] for w in melody_windows(waltz, steps=16)] == [60, 62, R]  # starts at steps 0, 12 and 24


def test_windows_without_notes_are_dropped():
    gap = Melody("g", [60, H, H, H, R] + [H] * 43 + [62, H], bar_starts=[0, 16, 32, 48])
    assert [w[0] for w in melody_windows(gap, steps=16)] == [60, 62]


# --- tokenizer bytes --------------------------------------------------------------------------------------

def test_tokenizer_bytes_round_trip():
    tokenizer = MelodyTokenizer(low=40, high=90, steps=48)
    data = tokenizer.to_bytes()
    assert len(data) < 200
    assert MelodyTokenizer.from_bytes(data) == tokenizer


@pytest.mark.parametrize("data, problem", [
    (b"\x00\xff garbage", "not JSON"),
    (b'{"format": "something else"}', "not a melody tokenizer"),
    (b'[1, 2]', "not a melody tokenizer"),
    (b'{"format": "seqgan-studio/melody-tokenizer/1", "low": 48, "high": 84, "steps": 32}', "missing"),
    (b'{"format": "seqgan-studio/melody-tokenizer/1", "low": 80, "high": 84, "steps": 32, '
     b'"steps_per_quarter": 4}', "at least an octave"),
])
def test_tokenizer_garbage_is_rejected(data, problem):
    with pytest.raises(InputError, match=problem):
        MelodyTokenizer.from_bytes(data, source="upload.json")


def test_bad_tokenizer_settings_are_config_errors():
    with pytest.raises(ConfigError):
        MelodyTokenizer(low=60, high=50)


# --- reading MIDI -----------------------------------------------------------------------------------------

def test_midi_melody_is_read_on_the_grid():
    melody = read_one("scale.mid", midi_file((False, SCALE)), transpose=False)
    assert melody.events == SCALE_EVENTS
    assert melody.bar_starts == [0, 16]


def test_chords_give_their_top_note_and_inner_voices_are_ignored():
    notes = [(60, 0, 1), (64, 0, 1), (67, 0, 1),   # chord -> G4
             (72, 1, 3), (55, 1.5, 2),             # a low note under a held high one -> ignored
             (62, 3, 4)]
    melody = read_one("chords.mid", midi_file((False, notes)), transpose=False)
    assert melody.events == [67, H, H, H, 72, H, H, H, H, H, H, H, 62, H, H, H]


def test_drum_tracks_are_ignored():
    drums = [(36, i, i + 0.5) for i in range(8)]
    melody = read_one("band.mid", midi_file((True, drums), (False, SCALE)), transpose=False)
    assert melody.events == SCALE_EVENTS


def test_a_melody_s_midi_file_lasts_the_whole_melody_with_its_trailing_rests():
    import mido

    for events in ([60, H, H, H, R] + [H] * 27, [R] + [H] * 31):  # 32 sixteenths at 120 bpm: 4 seconds
        assert mido.MidiFile(file=io.BytesIO(events_to_midi(events))).length == pytest.approx(4.0, abs=0.01)
    assert read_one("x.mid", events_to_midi([60, H, H, H, R] + [H] * 27), transpose=False).events == [60, H, H, H]


def test_of_a_midi_file_s_tracks_the_highest_melody_line_is_the_tune():
    bass = [(36 + step, i, i + 1) for i, step in enumerate([0, 7, 5, 7, 0, 7, 5, 7])]
    drums = [(36, i, i + 0.5) for i in range(8)]
    band = midi_file((True, drums), (False, bass), (False, SCALE))  # the bass track comes first
    assert read_one("band.mid", band, transpose=False).events == SCALE_EVENTS
    assert read_one("bass.mid", midi_file((False, bass)), transpose=False).events[0] == 36  # alone, it is read
    bell = [(96, 0, 1), (98, 7, 8)]  # two high notes: too few to be the tune
    assert read_one("bell.mid", midi_file((False, SCALE), (False, bell)), transpose=False).events == SCALE_EVENTS


def test_block_chord_part_is_skipped_for_a_melody_part():
    triads = [(p, i * 2, i * 2 + 2) for i in range(4) for p in (48, 52, 55)]
    melody = read_one("song.mid", midi_file((False, triads), (False, SCALE)), transpose=False)
    assert melody.events == SCALE_EVENTS


def test_midi_key_signature_sets_the_transposition():
    g_major_scale = [(p + 7, s, e) for p, s, e in SCALE]
    melody = read_one("g.mid", midi_file((False, g_major_scale), key_number=7))
    assert melody.transposition == 5 and melody.events[0] == 72


def test_midi_without_key_signature_is_transposed_by_key_analysis():
    d_major_scale = [(p + 2, s, e) for p, s, e in SCALE]
    melody = read_one("d.mid", midi_file((False, d_major_scale)))
    assert melody.transposition == -2 and melody.events[0] == 60


# --- reading scores ---------------------------------------------------------------------------------------

def test_abc_pickup_grace_triplet_tie_chord_and_repeats():
    tune = b"""X:1
T:Test
M:4/4
L:1/8
K:G
d|:{c}B2 (3ABc d4-|d2 G2 [GBd]4|B2 A2 G4:|
|:g2 f2 e2 d2|[1 c8:|[2 B8||
"""
    events = read_one("test.abc", tune, transpose=False).events
    pickup = [R] + [H] * 13 + [74, H]                                  # the pickup ends the first bar
    a_part = ([71, H, H, H, 69, 71, H, 72, 74] + [H] * 11 +            # no grace note; triplet 1+2+1; tie
              [67, H, H, H, 74] + [H] * 7 + [71, H, H, H, 69, H, H, H, 67] + [H] * 7)
    b_part = [79, H, H, H, 78, H, H, H, 76, H, H, H, 74, H, H, H]
    assert events == pickup + a_part + a_part + b_part + [72] + [H] * 15 + b_part + [71] + [H] * 15


def test_a_repeat_without_its_start_goes_back_to_the_previous_end():
    tune = b"X:1\nT:AABB\nM:4/4\nL:1/4\nK:C\n|C4|D4:|E4|F4:|\n"
    events = read_one("aabb.abc", tune, transpose=False).events
    assert [e for e in events if e >= 0] == [60, 62, 60, 62, 64, 65, 64, 65]
    written = read_one("aabb.abc", tune, transpose=False, expand_repeats=False).events
    assert [e for e in written if e >= 0] == [60, 62, 64, 65]


def score_with_drums_first():
    from music21 import chord, instrument, meter, note, stream, tie

    melody = stream.Part([instrument.Flute()])
    first = stream.Measure(number=1)
    first.append([meter.TimeSignature("4/4"), note.Note("G4", quarterLength=1),
                  chord.Chord(["C4", "E4", "C5"], quarterLength=1), note.Note("A4", quarterLength=2)])
    first.notes.last().tie = tie.Tie("start")
    second = stream.Measure(number=2)
    second.append([note.Note("A4", quarterLength=1), note.Note("B4", quarterLength=1), note.Rest(quarterLength=2)])
    second.notes.first().tie = tie.Tie("stop")
    melody.append([first, second])
    drums = stream.Part([instrument.BassDrum()])
    drum_bar = stream.Measure(number=1)
    drum_bar.append([meter.TimeSignature("4/4")] + [note.Unpitched(quarterLength=1) for _ in range(4)])
    drums.append(drum_bar)
    score = stream.Score()
    score.insert(0, drums)
    score.insert(0, melody)
    return score


@pytest.mark.parametrize("suffix", [".musicxml", ".mxl"])
def test_musicxml_melody_part_is_read_past_a_drum_part(tmp_path, suffix):
    path = tmp_path / f"tune{suffix}"
    score_with_drums_first().write("mxl" if suffix == ".mxl" else "musicxml", fp=path)
    melodies, problems = read_melodies([path], transpose=False)
    assert problems == []
    assert melodies[0].events == [67, H, H, H, 72, H, H, H, 69] + [H] * 11 + [71, H, H, H]


def test_humdrum_kern_is_read_and_transposed_by_its_key_signature():
    kern = "**kern\n*M4/4\n*k[f#]\n=1\n4g\n8a\n8b\n2cc\n=2\n1d\n*-\n"
    melody = read_one("tune.krn", kern.encode())
    assert melody.transposition == 5
    assert melody.events == [72, H, H, H, 74, H, 76, H, 77] + [H] * 7 + [67] + [H] * 15


# --- bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, data, problem", [
    ("empty.mid", b"", "the file is empty"),
    ("blank.abc", b"  \n\n", "the file is empty"),
    ("noise.abc", bytes(range(256)) * 4, "binary data, not an ABC text file"),
    ("noise.mid", bytes(range(256)) * 4, "not a MIDI file"),
    ("cut.mid", midi_file((False, SCALE))[:30], "not a readable MIDI file"),
    ("silent.mid", midi_file((False, [])), "no notes"),
    ("header.mid", b"MThd\x00\x00\x00\x06\x00\x01\x00\x00\x00\x60", "holds no MIDI events"),
    ("drums.mid", midi_file((True, [(36, 0, 1), (38, 1, 2)])), "only drum parts"),
    ("pads.mid", midi_file((False, [(p, 0, 4) for p in (48, 52, 55)] + [(p, 4, 8) for p in (50, 53, 57)])),
     "no melody line: every note is part of a chord"),
    ("notes.txt", b"hello", "unsupported file type '.txt'"),
    ("not.xml", b"<html><body>hi</body></html>", "not a readable MusicXML file"),
    ("bad.zip", b"PK\x03\x04 broken", "not a readable zip archive"),
    ("song.abc", b"T:No tune here\nM:4/4\n", "no ABC tune found"),
])
def test_each_bad_input_gets_a_message_naming_the_file(name, data, problem):
    message = problem_for(name, data)
    assert message.startswith(f"{name}: ") and problem in message


def test_files_over_the_size_limit_are_refused(tmp_path):
    message = problem_for("big.mid", midi_file((False, SCALE)), max_bytes=10)
    assert message.startswith("big.mid: ") and "limit" in message
    missing = tmp_path / "missing.abc"
    _, problems = read_melodies(missing)
    assert str(problems[0]) == f"{missing}: no such file or folder"


def test_a_folder_is_read_with_its_music_files_and_lists_the_others_as_a_zip_does(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "scale.mid").write_bytes(midi_file((False, SCALE)))
    (tmp_path / "tunes.abc").write_text(GOOD_ABC)
    (tmp_path / "README.txt").write_text("not music")
    (tmp_path / "._scale.mid").write_bytes(b"macOS metadata")  # hidden files and folders are not the user's
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in ("README.txt", "._scale.mid", ".git/HEAD", "__MACOSX/tunes.abc"):
            zipped.writestr(name, "not music")
    (tmp_path / "more.zip").write_bytes(archive.getvalue())
    (tmp_path / "a-broken.zip").write_bytes(b"PK\x03\x04 broken")  # listed first: the files after it still count
    melodies, problems = read_melodies(tmp_path, transpose=False)
    assert len(melodies) == 3
    assert [(p.source, p.problem.split(" (")[0]) for p in problems] == [
        (str(tmp_path / "a-broken.zip"), "not a readable zip archive"),
        (str(tmp_path / "more.zip"), "1 file not read, not of a music type"),
        (str(tmp_path), "1 file not read, not of a music type"),
        (f"{tmp_path / 'tunes.abc'} X:2 Broken", "broken ABC tune")]
    assert "(README.txt; expected one of .mid," in str(problems[2])


def test_the_files_of_a_folder_that_are_not_music_are_one_problem_however_many():
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("tune.abc", GOOD_ABC)
        for i in range(2000):
            zipped.writestr(f"audio/{i}.mp3", b"ID3")
        for name in ("cover.jpg", "back.JPG", "LICENSE"):
            zipped.writestr(name, b"x")
    melodies, problems = read_melodies([("library.zip", archive.getvalue())], transpose=False)
    assert len(melodies) == 2 and [p.source for p in problems] == ["library.zip", "library.zip/tune.abc X:2 Broken"]
    assert problems[0].problem.startswith("2,003 files not read, not of a music type (2,000 .mp3, 2 .jpg, "
                                          "1 (no extension); expected one of .mid,")


def test_a_batch_with_bad_files_and_a_broken_tune_imports_the_rest():
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("inner/scale.mid", midi_file((False, SCALE)))
        zipped.writestr("inner/empty.krn", "")
        zipped.writestr("inner/nested.zip", b"PK\x05\x06" + bytes(18))
    calls = []
    melodies, problems = read_melodies(
        [("tunes.abc", GOOD_ABC.encode()), ("bad.mid", b"MThd garbage"), ("more.zip", archive.getvalue())],
        transpose=False, progress=lambda done, total, message: calls.append((done, total, message)))
    assert [m.name for m in melodies] == ["tunes.abc X:1 Good One", "tunes.abc X:3 Good Two",
                                          "more.zip/inner/scale.mid"]
    assert sorted(p.source for p in problems) == ["bad.mid", "more.zip/inner/empty.krn", "more.zip/inner/nested.zip",
                                                  "tunes.abc X:2 Broken"]
    broken = str(next(p for p in problems if p.source == "tunes.abc X:2 Broken"))
    assert "broken ABC tune" in broken and "music21" not in broken
    assert "a zip inside a zip" in str(next(p for p in problems if p.source.endswith("nested.zip")))
    assert [c[:2] for c in calls] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


# --- the Nottingham corpus --------------------------------------------------------------------------------

def nottingham_tune(number: int) -> bytes:
    if not NOTTINGHAM.is_dir():
        pytest.skip(f"the Nottingham corpus is not at {NOTTINGHAM} (shared/ beside the repository)")
    text = (NOTTINGHAM / "abc" / "ashover.abc").read_text(encoding="latin-1")
    return re.search(rf"(?ms)^X: {number}\n.*?(?=^X:|\Z)", text).group(0).encode()


@pytest.mark.parametrize("number", [1, 2, 9])  # 9 is played in thirds: its top line is the melody
def test_nottingham_abc_tune_matches_its_midi_file(number):
    from_abc = read_one(f"ashover X:{number}.abc", nottingham_tune(number), transpose=False)
    midi = (NOTTINGHAM / "midi-melody" / f"ashover{number}.mid").read_bytes()
    from_midi = read_one(f"ashover{number}.mid", midi, transpose=False)
    assert from_abc.events == from_midi.events and from_abc.bar_starts == from_midi.bar_starts


def test_nottingham_tune_survives_tokens_and_midi():
    tokenizer = MelodyTokenizer()
    tune = read_one("ashover X:1.abc", nottingham_tune(1))
    assert tune.transposition == 5  # K:G -> C
    windows = tokenizer.encode_melodies([tune])
    assert len(windows) >= 8
    for index, ids in enumerate(windows):
        midi = events_to_midi(tokenizer.decode(ids), tempo_bpm=100)
        assert tokenizer.encode_melodies([read_one(f"window{index}.mid", midi, transpose=False)]) == [ids]
    first_notes = [e for e in tokenizer.decode(windows[0]) if e >= 0]
    assert first_notes[:5] == [81, 79, 76, 74, 76]  # e d B A B, a fourth up


# --- output -----------------------------------------------------------------------------------------------

def wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2"), wav.getframerate()


@pytest.mark.parametrize("synth", ["installed", "sine"])
def test_wav_is_normalised_pcm_with_sound(monkeypatch, synth):
    if synth == "sine":
        monkeypatch.setattr(music, "synthesizer", lambda: "sine")
    samples, rate = wav_samples(events_to_wav(SCALE_EVENTS + [R, H, H, H], tempo_bpm=120, sample_rate=22050))
    assert rate == 22050
    assert len(samples) / rate >= 4.5                               # 36 sixteenths at 120 bpm
    assert abs(int(np.abs(samples.astype(int)).max()) - 29204) < 50  # peak at -1 dBFS
    assert np.sqrt(np.mean(samples.astype(float) ** 2)) > 1000       # not silent


def test_silent_events_give_silence_of_their_length_and_midi_to_wav_reads_bytes():
    samples, rate = wav_samples(events_to_wav([R] + [H] * 15, tempo_bpm=120))
    assert len(samples) == rate * 2 and not samples.any()
    samples, rate = wav_samples(midi_to_wav(midi_file((False, SCALE)), sample_rate=44100))
    assert rate == 44100 and samples.any()
    with pytest.raises(InputError, match="not a readable MIDI file"):
        midi_to_wav(b"nonsense")


def test_piano_roll_is_a_png_for_events_and_for_ids():
    signature = b"\x89PNG\r\n\x1a\n"
    assert piano_roll_png(SCALE_EVENTS, title="scale").startswith(signature)
    tokenizer = MelodyTokenizer()
    assert piano_roll_png(tokenizer.encode([R, H] * 16), tokenizer=tokenizer).startswith(signature)


def test_events_to_stream_spells_notes_and_rests():
    part = events_to_stream([60, H, H, H, R, H, H, H, 67, H, H, H, H, H, H, H])
    assert [(n.name, n.quarterLength) for n in part.flatten().notesAndRests] == [("C", 1), ("rest", 1), ("G", 2)]


# --- built-in corpus --------------------------------------------------------------------------------------

def test_builtin_corpus_is_cached_grown_and_reused(tmp_path, monkeypatch):
    calls = []
    first = builtin_melodies(limit=2, cache_dir=tmp_path, progress=lambda *call: calls.append(call))
    assert len(first) == 2 and all(m.events for m in first)
    assert first[0].name.startswith("0001-0050.abc X:1")
    assert calls[-1][:2] == (2, 2)
    assert len(list(tmp_path.glob("*.json.gz"))) == 1

    parsed = []
    real_parser = music._parse_abc_tune
    monkeypatch.setattr(music, "_parse_abc_tune", lambda text: parsed.append(text) or real_parser(text))
    grown = builtin_melodies(limit=3, cache_dir=tmp_path)
    assert len(parsed) == 1 and [m.to_dict() for m in grown[:2]] == [m.to_dict() for m in first]

    def no_parsing(_text):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(music, "_parse_abc_tune", no_parsing)
    monkeypatch.setenv("SEQGAN_CACHE_DIR", str(tmp_path))
    assert [m.to_dict() for m in builtin_melodies(limit=3)] == [m.to_dict() for m in grown]
