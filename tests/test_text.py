"""Text corpora -> ids -> text: reading, tokenizer training, exact round trips, serialization."""

from pathlib import Path

import pytest

from seqgan.errors import ConfigError, InputError
from seqgan.text import (
    TextTokenizer,
    is_spaced_characters,
    read_text_corpus,
    read_text_lines,
)

QUATRAINS = (Path(__file__).parents[1] / ".." / "shared" / "corpora" / "chinese-quatrains-shi.txt").resolve()

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello,  world!  Two spaces after punctuation are kept.",
    "It's a \"quoted\" phrase -- with dashes; and (parentheses)?",
    "Numbers like 3.14, 42 and 1,000,000 stay as they are.",
    "Tabs\tinside\ta line survive too.",
    "Curly ‘quotes’, an em dash — and an ellipsis…",
    "Shall I compare thee to a summer's day?",
    "Thou art more lovely and more temperate:",
    "Rough winds do shake the darling buds of May,",
    "And summer's lease hath all too short a date.",
    "e-mail: someone@example.org, cost: $5 (50% off!)",
    "naïve café résumé Ünïcödé",
]
CJK = [
    "床前明月光，疑是地上霜。",
    "举头望明月，低头思故乡。",
    "日本語のテキスト、全角の句読点！ＡＢＣ１２３",
    "한국어 문장도 공백과 함께 그대로 돌아옵니다.",
]


@pytest.fixture(scope="module")
def quatrains():
    if not QUATRAINS.exists():
        pytest.skip(f"shared corpus {QUATRAINS} is absent (it lives outside the project)")
    return read_text_corpus(QUATRAINS)


@pytest.fixture(scope="module")
def english_tokenizer():
    return TextTokenizer.train(ENGLISH, vocab_size=120)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["unigram", "bpe", "char"])
def test_english_round_trips_exactly(model_type):
    tokenizer = TextTokenizer.train(ENGLISH, model_type=model_type)
    assert not tokenizer.spaced_chars
    for line in ENGLISH:
        ids = tokenizer.encode(line)
        assert tokenizer.unk_id not in ids
        assert all(i >= 4 for i in ids)  # no specials inside a line's ids
        assert tokenizer.decode(ids) == line


def test_cjk_round_trips_exactly():
    tokenizer = TextTokenizer.train(CJK)
    assert not tokenizer.spaced_chars
    assert [tokenizer.decode(tokenizer.encode(line)) for line in CJK] == CJK


def test_unseen_characters_become_unk(english_tokenizer):
    ids = english_tokenizer.encode("fox 漢")
    assert ids[-1] == english_tokenizer.unk_id
    assert english_tokenizer.decode(ids) == "fox ⁇"


def test_quatrains_are_detected_and_round_trip_exactly(quatrains):
    assert len(quatrains) == 16_394
    assert is_spaced_characters(quatrains)
    tokenizer = TextTokenizer.train(quatrains, source="quatrains")
    assert tokenizer.model_type == "char" and tokenizer.spaced_chars
    assert any("space-separated" in note for note in tokenizer.notes)
    for line in quatrains:
        ids = tokenizer.encode(line)
        assert len(ids) == len(line.split())  # one id per character
        assert tokenizer.decode(ids) == line
    assert tokenizer.unk_id not in {i for line in quatrains[:200] for i in tokenizer.encode(line)}


def test_spaced_detection():
    assert is_spaced_characters(["秦 川 雄 帝 宅 ，", "函 谷 壮 皇 居 。"])
    assert is_spaced_characters(["A C G T T A", "G G C A"])
    assert not is_spaced_characters(ENGLISH)
    assert not is_spaced_characters(CJK)
    assert not is_spaced_characters(["a", "b"])  # no separating spaces at all


def test_spaced_corpus_decodes_with_single_spaces():
    lines = ["秦 川 雄 帝 宅 ，", "函 谷 壮 皇 居 。"]
    tokenizer = TextTokenizer.train(lines)
    assert tokenizer.decode(tokenizer.encode("秦  川雄")) == "秦 川 雄"


# --- decode of generated sequences -------------------------------------------------------------


def test_decode_skips_bos_and_stops_at_eos_or_pad(english_tokenizer):
    t = english_tokenizer
    line = "The lazy dog."
    ids = t.encode(line)
    assert t.decode([t.bos_id, *ids, t.eos_id, *ids, t.pad_id]) == line
    assert t.decode([*ids, t.pad_id, t.pad_id, *ids]) == line
    assert t.decode([t.bos_id, t.eos_id, *ids]) == ""
    assert t.decode([]) == ""


def test_decode_rejects_ids_outside_the_vocabulary(english_tokenizer):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        english_tokenizer.decode([english_tokenizer.vocab_size])


def test_special_ids():
    t = TextTokenizer
    assert (t.pad_id, t.bos_id, t.eos_id, t.unk_id) == (0, 1, 2, 3)
    assert t.kind == "text"


# --- vocabulary size ---------------------------------------------------------------------------


def test_vocabulary_is_clamped_with_a_note():
    tokenizer = TextTokenizer.train(ENGLISH, vocab_size=8000, source="sonnets.txt")
    assert tokenizer.vocab_size < 8000
    assert any("clamped" in note and "8000" in note and "sonnets.txt" in note for note in tokenizer.notes)


def test_vocabulary_smaller_than_the_alphabet_is_a_config_error():
    with pytest.raises(ConfigError, match="too small.*at least"):
        TextTokenizer.train(ENGLISH, vocab_size=20)


def test_small_char_vocabulary_keeps_frequent_characters():
    tokenizer = TextTokenizer.train(ENGLISH, model_type="char", vocab_size=20)
    assert tokenizer.vocab_size == 20
    assert any("<unk>" in note for note in tokenizer.notes)


@pytest.mark.parametrize("settings", [{"model_type": "wordpiece"}, {"vocab_size": 3}, {"vocab_size": "big"}])
def test_bad_settings_are_config_errors(settings):
    with pytest.raises(ConfigError):
        TextTokenizer.train(ENGLISH, **settings)


def test_training_is_deterministic():
    assert TextTokenizer.train(ENGLISH).to_bytes() == TextTokenizer.train(ENGLISH).to_bytes()


# --- serialization -----------------------------------------------------------------------------


def test_bytes_round_trip(english_tokenizer):
    data = english_tokenizer.to_bytes()
    loaded = TextTokenizer.from_bytes(data)
    assert loaded.to_bytes() == data
    assert loaded.vocab_size == english_tokenizer.vocab_size
    assert [loaded.encode(line) for line in ENGLISH] == [english_tokenizer.encode(line) for line in ENGLISH]


def test_bytes_round_trip_keeps_the_spaced_format():
    loaded = TextTokenizer.from_bytes(TextTokenizer.train(["秦 川 雄", "函 谷 壮"]).to_bytes())
    assert loaded.spaced_chars and loaded.decode(loaded.encode("秦 川")) == "秦 川"


def _foreign_sentencepiece_model() -> bytes:
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(ENGLISH), model_writer=model, vocab_size=200,
                                   hard_vocab_limit=False, minloglevel=2)
    return model.getvalue()


def test_from_bytes_rejects_garbage(english_tokenizer):
    good = english_tokenizer.to_bytes()
    magic, header, _ = good.split(b"\n", 2)
    bad_blobs = [
        b"",
        b"garbage",
        "not bytes",
        magic + b"\n{not json\n" + b"x",
        magic + b'\n{"format": 99, "model_type": "char", "spaced_chars": false}\n' + good,
        magic + b'\n{"format": 1, "model_type": "char"}\n',
        magic + b"\n" + header + b"\n",  # no model
        magic + b"\n" + header + b"\n" + b"\x08\x96\x01garbage",
        good[: len(good) // 2],  # truncated
        magic + b"\n" + header + b"\n" + _foreign_sentencepiece_model(),  # other special ids
    ]
    for blob in bad_blobs:
        with pytest.raises(InputError, match="run-42.ckpt"):
            TextTokenizer.from_bytes(blob, source="run-42.ckpt")


# --- reading corpora ---------------------------------------------------------------------------


def test_reads_lines_stripped_without_blanks_bom_and_crlf(tmp_path):
    path = tmp_path / "poems.txt"
    path.write_bytes("\ufeff  first line \r\n\r\n\tsecond line\r\n   \n".encode("utf-8"))
    assert read_text_corpus(path) == ["first line", "second line"]
    assert read_text_lines(b"a\nb\n", "upload.txt") == ["a", "b"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"\n  \n\t\n", "blank"),
        (b"only one line\n\n", "at least 2 lines"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (bytes(range(1, 32)) * 3, "binary"),
        ("first line\ncaf\u00e9 au lait\n".encode("latin-1"), r"UTF-8.*offset 14 \(line 2\).*re-save"),
        ("line one\nline two\n".encode("utf-16"), "UTF-16"),
        ("line one\nline two\n".encode("utf-16-le"), "UTF-16 text without a byte-order mark"),
        ("床前明月光\n疑是地上霜\n".encode("utf-16-be"), "UTF-16 text without a byte-order mark"),
        (b"x" * 200 + b"\ny\n", "more than the limit"),
    ],
)
def test_bad_corpus_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "my corpus.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as caught:
        read_text_corpus(path, max_bytes=100)
    assert str(path) in str(caught.value)
    with pytest.raises(InputError, match=message) as caught:
        read_text_lines(content, "upload.txt", max_bytes=100)
    assert "upload.txt" in str(caught.value)


def test_lines_end_only_at_line_breaks():
    text = "first half\u2028second half\r\nform\x0cfeed\rnext\x85line\n"
    assert read_text_lines(text.encode(), "x.txt") == ["first half\u2028second half", "form\x0cfeed", "next\x85line"]


def test_missing_file_and_directory_name_the_path(tmp_path):
    for path, message in [(tmp_path / "nope.txt", "not found"), (tmp_path, "not a file")]:
        with pytest.raises(InputError, match=message) as caught:
            read_text_corpus(path)
        assert str(path) in str(caught.value)


def test_empty_training_text_is_an_input_error():
    with pytest.raises(InputError, match="pasted"):
        TextTokenizer.train(["", ""], source="pasted")
