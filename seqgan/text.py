"""Text corpora as token ids, and back.

The encoding:

* Ids 0-3 are special: 0 = <pad>, 1 = <s> (bos), 2 = </s> (eos), 3 = <unk>. Ids from 4 up are
  SentencePiece pieces, trained in-process on the corpus (never downloaded).
* A corpus is a UTF-8 text file, one sequence (poem, line, sentence) a line; lines are stripped and
  empty ones dropped (`read_text_corpus`).
* `TextTokenizer.encode(line)` gives the line's piece ids, without bos or eos. Nothing is normalised
  (identity rule, no dummy prefix, runs of spaces kept), so decode(encode(line)) == line for every line
  made of characters seen in training. A run of unseen characters becomes one <unk>, decoded as "⁇";
  a literal "▁" (U+2581, SentencePiece's space mark) decodes as a space.
* Corpora of space-separated characters, like the SeqGAN paper's Chinese poems
  ("秦 川 雄 帝 宅 ， 函 谷 壮 皇 居 。"), are detected (`is_spaced_characters`): the spaces are dropped
  before encoding, so with the default char model every character is one id, and decoding puts one space
  between characters again. A rare token longer than one character comes back split into characters.
* `TextTokenizer.decode(ids)` skips bos, stops at the first eos or pad and ignores what follows, so a
  generated fixed-length sequence (line ids, eos, then pads) decodes to clean text.
"""

from __future__ import annotations

import codecs
import io
import json
from pathlib import Path

import sentencepiece as spm

from .errors import ConfigError, InputError

DEFAULT_MAX_BYTES = 50_000_000
# Two lines is the least that is a corpus rather than one string to memorise; more is better.
MIN_LINES = 2

MODEL_TYPES = ("unigram", "bpe", "char")
DEFAULT_VOCAB_SIZE = 8000  # for unigram and bpe; the char model defaults to every character
SPECIAL_IDS = {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3}
MIN_VOCAB_SIZE = len(SPECIAL_IDS) + 1  # the special pieces and at least one of the text's own
MAX_PIECE_LENGTH = 16  # characters in one piece at most (SentencePiece's default, set explicitly)

# A corpus is "space-separated characters" when at least this share of its tokens is one character.
SPACED_CHARS_SHARE = 0.99

# SentencePiece's result depends on its thread count, so it is fixed: same corpus, same model, any machine.
_TRAIN_THREADS = 4
_UNK_SURFACE = "\u2047"  # "⁇", what an unknown character decodes to
_HEADER_MAGIC = b"seqgan-text-tokenizer\n"
_FORMAT_VERSION = 1

# ASCII control bytes other than tab, newline, vertical tab, form feed and carriage return.
_CONTROL_BYTES = bytes([*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F])
_MAX_CONTROL_SHARE = 0.05


def read_text_corpus(path, max_bytes: int = DEFAULT_MAX_BYTES, min_lines: int = MIN_LINES) -> list[str]:
    """Read a UTF-8 text file, one sequence a line; return its stripped non-empty lines."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "is not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(path, f"is {size:,} bytes, more than the limit of {max_bytes:,} bytes")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(path, f"cannot be read ({error.strerror or error})") from error
    return read_text_lines(data, str(path), max_bytes=max_bytes, min_lines=min_lines)


def _looks_like_utf16(data: bytes) -> bool:
    """Text of lines in UTF-16 (either byte order): it decodes, has a line break every 200 characters or more
    often, and hardly any control characters. (Binary data decoded so has a line break once in ~65,000.)"""
    if len(data) < 4 or len(data) % 2:
        return False
    for encoding in ("utf-16-le", "utf-16-be"):
        try:  # the first 64 KB say enough (a large binary file would take seconds); final=False: a pair cut at
            text = codecs.getincrementaldecoder(encoding)().decode(data[:1 << 16], final=False)  # the end waits
        except UnicodeDecodeError:
            continue
        controls = sum(1 for ch in text if ch < " " and ch not in "\t\n\r")
        if 200 * text.count("\n") >= len(text) and 100 * controls <= len(text):
            return True
    return False


def split_lines(text: str) -> list[str]:
    """Lines ending at \\n, \\r\\n or \\r only: ``str.splitlines`` would also cut a line at U+2028, NEL, a form
    feed ... inside it. Every file of lines the project reads (corpora, token ids, BLEU's hypotheses) splits so."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_text_lines(
    data: bytes, source: str, max_bytes: int = DEFAULT_MAX_BYTES, min_lines: int = MIN_LINES
) -> list[str]:
    """Like `read_text_corpus`, for the bytes of an uploaded file; `source` names it in error messages."""
    if len(data) > max_bytes:
        raise InputError(source, f"is {len(data):,} bytes, more than the limit of {max_bytes:,} bytes")
    if not data:
        raise InputError(source, "file is empty")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(source, "is UTF-16 text; re-save it as UTF-8")
    if b"\x00" in data:
        if _looks_like_utf16(data):
            raise InputError(source, "looks like UTF-16 text without a byte-order mark; re-save it as UTF-8")
        raise InputError(source, "looks like a binary file (it contains NUL bytes), not a UTF-8 .txt file")
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    if controls > _MAX_CONTROL_SHARE * len(data):
        raise InputError(source, "looks like a binary file (many control bytes), not a UTF-8 .txt file")
    try:
        text = data.decode("utf-8-sig")  # -sig: accept and drop a UTF-8 byte-order mark
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise InputError(
            source,
            f"is not valid UTF-8: byte 0x{data[error.start]:02X} at offset {error.start} (line {line}) "
            "cannot be decoded; re-save the file as UTF-8",
        ) from error

    lines = [line.strip() for line in split_lines(text)]
    lines = [line for line in lines if line]
    if not lines:
        raise InputError(source, "contains only blank lines")
    if len(lines) < min_lines:
        plural = "" if len(lines) == 1 else "s"
        raise InputError(
            source,
            f"has only {len(lines)} non-empty line{plural}; "
            f"at least {min_lines} lines (one sequence a line) are needed to train",
        )
    return lines


def is_spaced_characters(lines: list[str]) -> bool:
    """True for corpora like "秦 川 雄 帝 宅 ，": nearly every whitespace-separated token is one character."""
    tokens = single = 0
    for line in lines:
        words = line.split()
        tokens += len(words)
        single += sum(len(word) == 1 for word in words)
    # tokens > len(lines): some line has several tokens, otherwise there are no separating spaces at all.
    return tokens > len(lines) and single >= SPACED_CHARS_SHARE * tokens


def _join_characters(line: str) -> str:
    return "".join(line.split())


class TextTokenizer:
    """SentencePiece model plus the few settings that say how lines map to its input (see module docstring)."""

    kind = "text"
    pad_id = SPECIAL_IDS["pad_id"]
    bos_id = SPECIAL_IDS["bos_id"]
    eos_id = SPECIAL_IDS["eos_id"]
    unk_id = SPECIAL_IDS["unk_id"]

    def __init__(self, model_proto: bytes, *, model_type: str, spaced_chars: bool, notes: list[str] | None = None):
        """Wrap a serialized SentencePiece model; raises ValueError if it is not one of ours."""
        processor = spm.SentencePieceProcessor()
        if not model_proto:
            raise ValueError("empty SentencePiece model")
        processor.LoadFromSerializedProto(model_proto)  # RuntimeError on bytes that do not parse
        actual = {name: getattr(processor, name)() for name in SPECIAL_IDS}
        if actual != SPECIAL_IDS or processor.get_piece_size() <= len(SPECIAL_IDS):
            raise ValueError(f"SentencePiece model has special ids {actual}, expected {SPECIAL_IDS}")
        self._processor = processor
        self._model_proto = bytes(model_proto)
        self.model_type = model_type
        self.spaced_chars = spaced_chars
        self.notes: list[str] = list(notes or [])

    @classmethod
    def train(
        cls,
        lines: list[str],
        vocab_size: int | None = None,
        model_type: str | None = None,
        source: str = "corpus",
    ) -> TextTokenizer:
        """Train on `lines` (e.g. from `read_text_corpus`).

        model_type: "unigram", "bpe" or "char"; None picks "char" for space-separated characters, else "unigram".
        vocab_size: all ids, specials included. None means 8000 for unigram/bpe and every character for char.
        A request larger than the corpus supports is clamped, with a message in `notes`.
        """
        lines = list(lines)
        spaced = is_spaced_characters(lines)
        if model_type is None:
            model_type = "char" if spaced else "unigram"
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
        if vocab_size is not None and (not isinstance(vocab_size, int) or isinstance(vocab_size, bool)
                                       or vocab_size < MIN_VOCAB_SIZE):
            raise ConfigError(f"vocab_size must be an integer of at least {MIN_VOCAB_SIZE}, got {vocab_size!r}")

        texts = [_join_characters(line) for line in lines] if spaced else lines
        texts = [text for text in texts if text]
        if not texts:
            raise InputError(source, "has no text to train a tokenizer on")
        notes = []
        if spaced:
            notes.append(f"{source} is space-separated characters: spaces are dropped before encoding, "
                         "and decoded text has one space between characters.")

        # Every distinct character needs an id of its own (character_coverage=1.0); a space counts as one.
        n_chars = len(set().union(*map(set, texts)))
        needed = n_chars + len(SPECIAL_IDS)
        if model_type == "char":
            requested = needed if vocab_size is None else vocab_size
            if requested < needed:
                notes.append(f"vocab_size {requested} keeps the {requested - len(SPECIAL_IDS)} most frequent of "
                             f"the {n_chars} characters in {source}; the other "
                             f"{needed - requested} encode as <unk> and decode as {_UNK_SURFACE}.")
        else:
            if vocab_size is not None and vocab_size < needed:
                raise ConfigError(
                    f"vocab_size {vocab_size} is too small for {source}: its {n_chars} distinct characters "
                    f"plus {len(SPECIAL_IDS)} special ids need at least {needed}; "
                    "choose a larger vocab_size or model_type 'char'"
                )
            requested = vocab_size if vocab_size is not None else max(DEFAULT_VOCAB_SIZE, needed)

        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=model,
                model_type=model_type,
                vocab_size=requested,
                hard_vocab_limit=False,  # a smaller vocabulary than requested is fine; we report it below
                character_coverage=1.0,
                normalization_rule_name="identity",  # the default nmt_nfkc rewrites full-width punctuation
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                max_sentence_length=max(4192, max(len(text.encode()) for text in texts) + 1),
                max_sentencepiece_length=MAX_PIECE_LENGTH,
                unk_surface=_UNK_SURFACE,
                **SPECIAL_IDS,
                num_threads=_TRAIN_THREADS,
                minloglevel=2,
            )
        except RuntimeError as error:
            raise InputError(source, f"SentencePiece could not train a tokenizer on it ({error})") from error

        tokenizer = cls(model.getvalue(), model_type=model_type, spaced_chars=spaced, notes=notes)
        if tokenizer.vocab_size < requested:
            asked = f"{requested} ids requested" if vocab_size is not None else f"the default of {requested} ids"
            tokenizer.notes.append(
                f"Vocabulary clamped: {asked}, but {source} supports only "
                f"{tokenizer.vocab_size} with the {model_type} model; using {tokenizer.vocab_size}."
            )
        return tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included; valid ids are 0 .. vocab_size - 1."""
        return self._processor.get_piece_size()

    def encode(self, line: str) -> list[int]:
        """Piece ids of one line; no bos or eos is added."""
        if not isinstance(line, str):
            raise TypeError(f"encode takes one line of text (str), got {type(line).__name__}")
        if self.spaced_chars:
            line = _join_characters(line)
        return self._processor.encode(line)

    def decode(self, ids) -> str:
        """Text of `ids` (any iterable of ints): bos skipped, stops at the first eos or pad."""
        kept = []
        for token in ids:
            token = int(token)
            if token in (self.eos_id, self.pad_id):
                break
            if token == self.bos_id:
                continue
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"token id {token} is outside the vocabulary 0..{self.vocab_size - 1}")
            kept.append(token)
        text = self._processor.decode(kept)
        return " ".join(text) if self.spaced_chars else text

    def to_bytes(self) -> bytes:
        """Magic line, one line of JSON settings, then the serialized SentencePiece model."""
        header = {"format": _FORMAT_VERSION, "model_type": self.model_type, "spaced_chars": self.spaced_chars}
        return _HEADER_MAGIC + json.dumps(header).encode() + b"\n" + self._model_proto

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "tokenizer bytes") -> TextTokenizer:
        """Inverse of `to_bytes`; anything else raises InputError naming `source` (e.g. the checkpoint)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError(source, f"tokenizer data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not data.startswith(_HEADER_MAGIC):
            raise InputError(source, "is not a SeqGAN text tokenizer (unknown header)")
        header_line, _, model_proto = data[len(_HEADER_MAGIC):].partition(b"\n")
        try:
            header = json.loads(header_line)
            version, model_type, spaced = header["format"], header["model_type"], header["spaced_chars"]
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(source, "has a damaged text tokenizer header") from error
        if version != _FORMAT_VERSION:
            raise InputError(source, f"has text tokenizer format {version!r}; this version reads {_FORMAT_VERSION}")
        if model_type not in MODEL_TYPES or not isinstance(spaced, bool):
            raise InputError(source, "has a damaged text tokenizer header")
        try:
            return cls(model_proto, model_type=model_type, spaced_chars=spaced)
        except (RuntimeError, ValueError) as error:
            raise InputError(source, "has a damaged SentencePiece model in its text tokenizer") from error

    def __repr__(self) -> str:
        return (f"TextTokenizer(model_type={self.model_type!r}, vocab_size={self.vocab_size}, "
                f"spaced_chars={self.spaced_chars})")
