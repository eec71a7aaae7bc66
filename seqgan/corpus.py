"""Corpora as the trainer sees them: fixed-length token ids, the tokenizer that made them, and back.

Three kinds, one shape ([N, seq_len] int64 ids):

    text    a UTF-8 file, one sequence (poem, line, sentence) a line -> SentencePiece ids (``seqgan.text``).
            Each sequence is its ids, then eos, then pad up to ``seq_len``; decoding stops at the first eos or
            pad, so a generated sequence decodes to clean text. Lines longer than ``seq_len - 1`` ids are left
            out (counted in ``notes``), never cut: a cut line would teach the generator lines with no end.
    music   MIDI / MusicXML / ABC / kern files, folders or zips -> melodies -> windows of ``steps`` sixteenth-
            note events (``seqgan.music``); fixed length already, no padding, no end token.
    tokens  a token-id file (the original repository's format): one sequence a line, ids separated by spaces.

The generator's start token (its first input) is bos for text and REST (id 0) for music, like the original
code's start token 0 that is also an ordinary token.

Held-out data (NLL-test, and the references of BLEU) is a fraction of the lines (text) or of whole tunes
(music: windows of one tune are never split between training and held-out data).

Metrics of a generator on a corpus (``corpus_evaluator``): NLL-test on the held-out sequences (per token, up
to and including eos for text); BLEU-2..4 of generated sequences against the held-out set (tokens are the
whitespace-separated words of the decoded text, so characters for the space-separated Chinese quatrains as in
the paper, and event ids for melodies); Self-BLEU-4 among the generated sequences; distinct-2; for melodies
the paper's MSE (``seqgan.music.melody_mse``) and the share of generated windows without a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import atomic_write_bytes
from .errors import ConfigError, InputError
from .kernels import rows_per_chunk

KINDS = ("text", "music")
BUILTIN = {"poems": "text", "melodies": "music"}
BUILTIN_POEMS = Path(__file__).resolve().parent.parent / "data" / "poems" / "gutenberg-poetry-lines.txt"
TEXT_LENGTH_QUANTILE = 0.99  # the default text seq_len keeps this share of lines whole
MAX_TEXT_SEQ_LEN = 128
MAX_SEQ_LEN = 4096  # the longest sequences any corpus lays out


# ----- token-id files ---------------------------------------------------------------------------------------
def read_token_file(path: str | Path, vocab_size: int | None = None) -> torch.Tensor:
    """Sequences of token ids, one a line; every line must have the same length."""
    from .text import split_lines

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        lines = [line.split() for line in split_lines(path.read_text(encoding="utf-8")) if line.strip()]
    except UnicodeDecodeError:
        raise InputError(path, "not a text file of token ids (not UTF-8)") from None
    if not lines:
        raise InputError(path, "the file has no sequences")
    lengths = {len(line) for line in lines}
    if len(lengths) != 1:
        raise InputError(path, f"sequences have different lengths ({sorted(lengths)[:5]}...); one length expected")
    try:
        tokens = torch.tensor([[int(x) for x in line] for line in lines], dtype=torch.long)
    except ValueError as exc:
        raise InputError(path, f"every token must be an integer id ({exc})") from None
    if int(tokens.min()) < 0:
        raise InputError(path, f"token ids must not be negative (found {int(tokens.min())})")
    if vocab_size is not None and int(tokens.max()) >= vocab_size:
        raise InputError(path, f"token ids must be within 0..{vocab_size - 1} (found {int(tokens.max())})")
    return tokens


def write_token_file(tokens: torch.Tensor, path: str | Path) -> None:
    text = "".join(" ".join(map(str, row)) + "\n" for row in tokens.tolist())
    atomic_write_bytes(path, text.encode())


def checkpoint_seq_len(bundle: dict, name: str) -> int:
    """The sequence length a checkpoint's generator samples, checked (an upload may have been edited)."""
    try:
        seq_len = int(bundle["config"]["seq_len"])
    except (KeyError, TypeError, ValueError):
        raise InputError(name, "the checkpoint's configuration has no usable seq_len") from None
    if not 1 <= seq_len <= MAX_SEQ_LEN:
        raise InputError(name, f"the checkpoint's seq_len {seq_len} is out of range")
    return seq_len


# ----- tokenizers --------------------------------------------------------------------------------------------
def tokenizer_from_bytes(data: bytes, source: str = "tokenizer"):
    """The text or melody tokenizer serialised in ``data`` (as stored in checkpoints and run directories)."""
    from .music import MelodyTokenizer
    from .text import TextTokenizer

    data = bytes(data)
    if data.startswith(b"seqgan-text-tokenizer\n"):
        return TextTokenizer.from_bytes(data, source)
    if data.startswith(b"{"):
        return MelodyTokenizer.from_bytes(data, source)
    raise InputError(source, "not a tokenizer of SeqGAN Studio (unknown format)")


def start_token(tokenizer) -> int:
    return tokenizer.bos_id if tokenizer.kind == "text" else tokenizer.rest_id


def decode(tokenizer, ids):
    """Text (str) of a text sequence, events (list[int]) of a melody."""
    return tokenizer.decode([int(i) for i in ids])


def bleu_tokens(tokenizer, ids) -> list[str]:
    """The units BLEU counts: words of the decoded text (characters of spaced-character text); melody ids."""
    if tokenizer.kind == "text":
        return tokenizer.decode([int(i) for i in ids]).split()
    return [str(int(i)) for i in ids]


# ----- corpora -----------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    kind: str                      # "text" or "music"
    name: str                      # where it came from, for messages
    tokenizer: object              # TextTokenizer or MelodyTokenizer
    train: torch.Tensor            # [N, seq_len] ids
    heldout: torch.Tensor          # [M, seq_len] ids, not in train
    notes: list[str] = field(default_factory=list)
    problems: list[InputError] = field(default_factory=list)  # files, tunes or lines that were left out

    @property
    def seq_len(self) -> int:
        return self.train.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def start_token(self) -> int:
        return start_token(self.tokenizer)

    def decode(self, ids):
        return decode(self.tokenizer, ids)

    def write(self, folder: str | Path) -> None:
        """The corpus as a run directory holds it: train.txt, heldout.txt (token ids) and tokenizer.bin."""
        folder = Path(folder)
        write_token_file(self.train, folder / "train.txt")
        write_token_file(self.heldout, folder / "heldout.txt")
        atomic_write_bytes(folder / "tokenizer.bin", self.tokenizer.to_bytes())

    def summary(self) -> dict:
        return {"kind": self.kind, "name": self.name, "train": len(self.train), "heldout": len(self.heldout),
                "seq_len": self.seq_len, "vocab_size": self.vocab_size, "notes": list(self.notes),
                "problems": [str(p) for p in self.problems]}


def split_heldout(groups: list[list[list[int]]], test_fraction: float, seed: int):
    """Shuffle groups (lines, or the windows of one tune) and hold out about ``test_fraction`` of the sequences,
    whole groups at a time: a group is held out when that brings the held-out count nearer the target (so one
    long tune cannot take far more than asked), and the training part is never left empty. When every group is
    too large for that, the smallest is held out if it is at most three times the share."""
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be within [0, 1) (got {test_fraction})")
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    total = sum(len(g) for g in groups)
    wanted = math.ceil(total * test_fraction) if test_fraction > 0 and len(groups) > 1 else 0
    held, kept = [], []
    count = 0
    for index in order:
        if wanted and abs(count + len(groups[index]) - wanted) <= abs(count - wanted):
            held.append(index)
            count += len(groups[index])
        else:
            kept.append(index)
    if not kept and held:  # everything went to the held-out side: the last group trains instead
        kept.append(held.pop())
    if wanted and not held and len(kept) > 1:  # every group is large: the smallest, if at most 3x the share
        smallest = min(kept, key=lambda i: len(groups[i]))
        if len(groups[smallest]) <= 3 * wanted:
            kept.remove(smallest)
            held.append(smallest)
    return [row for i in kept for row in groups[i]], [row for i in held for row in groups[i]]


def heldout_note(corpus_kind: str, heldout_rows: int, test_fraction: float) -> list[str]:
    """What a corpus's notes say when it holds nothing out although a share was asked for."""
    if heldout_rows or test_fraction == 0:
        return []
    unit = "tunes" if corpus_kind == "music" else "lines"
    return [f"Nothing is held out: with so few {unit}, training will measure no NLL-test, BLEU or diversity. "
            f"More {unit} give a held-out share."]


def _tensor(rows: list[list[int]], seq_len: int) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long) if rows else torch.zeros(0, seq_len, dtype=torch.long)


def text_corpus(lines: list[str], name: str, *, vocab_size: int | None = None, model_type: str | None = None,
                seq_len: int | None = None, test_fraction: float = 0.1, seed: int = 0) -> Corpus:
    """Train a SentencePiece tokenizer on ``lines`` and lay them out as fixed-length sequences."""
    from .text import MAX_PIECE_LENGTH, TextTokenizer

    if seq_len is not None and not 2 <= seq_len <= MAX_SEQ_LEN:
        raise ConfigError(f"seq_len must be within 2..{MAX_SEQ_LEN} (got {seq_len})")
    # A line longer than this cannot fit in the longest sequence, whatever the tokenizer (a line of spaced
    # characters is twice its characters): left out before the tokenizer trains, which on a few huge lines
    # would take minutes.
    longest = 2 * MAX_PIECE_LENGTH * ((seq_len or MAX_TEXT_SEQ_LEN) - 1)
    fitting = [line for line in lines if len(line) <= longest]
    if not fitting:
        raise InputError(name, f"every line is longer than {longest:,} characters, more than fits in "
                               f"{(seq_len or MAX_TEXT_SEQ_LEN) - 1} tokens; raise seq_len (up to {MAX_SEQ_LEN})")
    tokenizer = TextTokenizer.train(fitting, vocab_size=vocab_size, model_type=model_type, source=name)
    encoded = [tokenizer.encode(line) for line in fitting]
    if seq_len is None:
        lengths = sorted(len(ids) + 1 for ids in encoded)
        seq_len = min(MAX_TEXT_SEQ_LEN, lengths[min(len(lengths) - 1, int(TEXT_LENGTH_QUANTILE * len(lengths)))])
    rows = [ids + [tokenizer.eos_id] + [tokenizer.pad_id] * (seq_len - 1 - len(ids))
            for ids in encoded if len(ids) < seq_len]
    notes = list(tokenizer.notes)
    if len(rows) < len(lines):
        notes.append(f"{len(lines) - len(rows):,} of {len(lines):,} lines are longer than {seq_len - 1} "
                     f"tokens and were left out (seq_len {seq_len} includes the end token)")
    if len(rows) < 2:
        advice = "raise seq_len" if seq_len < MAX_SEQ_LEN else f"{MAX_SEQ_LEN} is the longest seq_len"
        raise InputError(name, f"fewer than two lines fit in {seq_len - 1} tokens; {advice}")
    train, heldout = split_heldout([[row] for row in rows], test_fraction, seed)
    notes += heldout_note("text", len(heldout), test_fraction)
    return Corpus("text", name, tokenizer, _tensor(train, seq_len), _tensor(heldout, seq_len), notes)


def read_text_source(source) -> tuple[list[str], str]:
    """Lines of a text corpus given as a path or as a (filename, bytes) pair (an upload)."""
    from .text import read_text_corpus, read_text_lines

    if isinstance(source, tuple):
        name, data = source
        return read_text_lines(bytes(data), name), name
    return read_text_corpus(source), str(source)


def music_corpus(melodies, name: str, *, problems=(), steps: int = 32, test_fraction: float = 0.1,
                 seed: int = 0) -> Corpus:
    """Cut melodies into windows of ``steps`` events; held-out windows come from held-out tunes. A tune whose
    windows are those of an earlier one (the same file twice, e.g. in two folders) is left out, or it could be
    held out and trained on at once."""
    from .music import MelodyTokenizer

    tokenizer = MelodyTokenizer(steps=steps)
    groups, seen, duplicates = [], set(), 0
    for melody in melodies:
        windows = tokenizer.encode_melodies([melody])
        key = tuple(map(tuple, windows))
        if key in seen:
            duplicates += 1
        elif windows:
            seen.add(key)
            groups.append(windows)
    if sum(len(g) for g in groups) < 2:
        raise InputError(name, f"has fewer than two windows of {steps} steps with notes; nothing to train on")
    train, heldout = split_heldout(groups, test_fraction, seed)
    windows = len(train) + len(heldout)
    notes = [f"{len(groups):,} tune{'s' * (len(groups) != 1)}, {windows:,} window{'s' * (windows != 1)} of {steps} "
             f"sixteenth-note steps"] + heldout_note("music", len(heldout), test_fraction)
    if duplicates:
        notes.append(f"{duplicates:,} tune{'s' * (duplicates != 1)} identical to an earlier one left out")
    return Corpus("music", name, tokenizer, _tensor(train, steps), _tensor(heldout, steps), notes, list(problems))


def load_corpus(source, kind: str | None = None, *, vocab_size: int | None = None, model_type: str | None = None,
                seq_len: int | None = None, test_fraction: float = 0.1, seed: int = 0, limit: int | None = None,
                progress=None) -> Corpus:
    """A corpus from ``source``: ``builtin:poems``, ``builtin:melodies``, a path (file, folder or zip), a
    ``(filename, bytes)`` upload, or a list of paths/uploads (melodies). ``kind`` is guessed from the names
    (.txt is text; music suffixes, folders and zips are music) unless given. ``limit`` caps the number of
    built-in tunes read (the whole collection takes about a minute to parse the first time)."""
    from .music import builtin_melodies, read_melodies

    if isinstance(source, str) and source.startswith("builtin:"):
        which = source.split(":", 1)[1]
        if which not in BUILTIN:
            raise ConfigError(f"unknown built-in corpus {which!r}; choose one of {', '.join(BUILTIN)}")
        if which == "poems":
            lines, _ = read_text_source(BUILTIN_POEMS)
            return text_corpus(lines, source, vocab_size=vocab_size, model_type=model_type, seq_len=seq_len,
                               test_fraction=test_fraction, seed=seed)
        melodies = builtin_melodies(limit, progress=progress)
        return music_corpus(melodies, source, steps=seq_len or 32, test_fraction=test_fraction, seed=seed)

    kind = kind or guess_kind(source)
    if kind not in KINDS:
        raise ConfigError(f"corpus kind must be one of {', '.join(KINDS)} (got {kind!r})")
    if kind == "text":
        if isinstance(source, list):
            raise ConfigError("a text corpus is one file")
        lines, name = read_text_source(source)
        return text_corpus(lines, name, vocab_size=vocab_size, model_type=model_type, seq_len=seq_len,
                           test_fraction=test_fraction, seed=seed)
    melodies, problems = read_melodies(source, progress=progress)
    name = _source_name(source)
    if not melodies:
        reasons = "; ".join(str(p) for p in problems[:3]) or "no music files found"
        raise InputError(name, f"no melody could be read ({reasons})")
    return music_corpus(melodies, name, problems=problems, steps=seq_len or 32, test_fraction=test_fraction,
                        seed=seed)


def _source_name(source) -> str:
    if isinstance(source, tuple):
        return source[0]
    if isinstance(source, list):
        return f"{len(source)} files" if len(source) != 1 else _source_name(source[0])
    return str(source)


def guess_kind(source) -> str:
    """'text' for a .txt file, 'music' for music files, zips, folders and lists of files."""
    from .music import MUSIC_SUFFIXES, ZIP_SUFFIXES

    if isinstance(source, list):
        return "music"
    name = source[0] if isinstance(source, tuple) else str(source)
    suffix = Path(name).suffix.lower()
    if suffix in MUSIC_SUFFIXES + ZIP_SUFFIXES or (not isinstance(source, tuple) and Path(name).is_dir()):
        return "music"
    if suffix in (".txt", ".text", ""):
        return "text"
    raise InputError(name, f"unknown corpus type {suffix!r}: expected .txt (text) or "
                           f"{', '.join(MUSIC_SUFFIXES + ZIP_SUFFIXES)} (melodies)")


# ----- metrics of a generator on a corpus --------------------------------------------------------------------
@torch.no_grad()
def sequence_nll(generator, tokens: torch.Tensor, eos_id: int | None = None, batch_size: int = 2048,
                 temperature: float = 1.0) -> float:
    """Mean per-token NLL of ``tokens`` under ``generator`` (sampled at ``temperature``); with ``eos_id``, tokens
    after the first eos are not counted (the padding of text sequences)."""
    import torch.nn.functional as F

    device = generator.output.weight.device
    # The logits of a batch are rows x T x V numbers: on CPU at most ~16M (64 MB, cache-friendlier), elsewhere
    # the ~256 MB of kernels.rows_per_chunk, whatever the vocabulary and length.
    width = max(1, tokens.shape[-1] * generator.vocab_size)
    batch_size = min(batch_size, rows_per_chunk(generator.output.weight, max(1, (1 << 24) // width), width))
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i:i + batch_size].to(device)
        logits = generator(batch) if temperature == 1.0 else generator(batch) / temperature
        nll = F.cross_entropy(logits.transpose(1, 2), batch, reduction="none")
        mask = torch.ones_like(nll)
        if eos_id is not None:
            after_eos = (batch == eos_id).long().cumsum(1) - (batch == eos_id).long()
            mask = (after_eos == 0).to(nll.dtype)
        total += float((nll * mask).sum())
        count += float(mask.sum())
    return total / max(count, 1.0)


class SampleScorer:
    """Scores of generated (or real) sequences against the held-out set: BLEU-n, Self-BLEU-4, distinct-2, and
    for melodies MSE. Built once per corpus: the reference n-gram counts are computed here."""

    def __init__(self, tokenizer, heldout: torch.Tensor, bleu_orders=(2, 3, 4), self_bleu_samples: int = 500):
        from .metrics import BleuScorer

        if len(heldout) == 0:
            raise ConfigError("the corpus has no held-out sequences to evaluate on (test_fraction is 0)")
        self.tokenizer, self.bleu_orders, self.self_bleu_samples = tokenizer, tuple(bleu_orders), self_bleu_samples
        rows = heldout.tolist()
        self.bleu = BleuScorer([bleu_tokens(tokenizer, row) for row in rows], max_n=max(self.bleu_orders))
        self.reference_events = [tokenizer.decode(row) for row in rows] if tokenizer.kind == "music" else None

    def score(self, samples: list[list[int]]) -> dict:
        from .metrics import diversity
        from .music import melody_mse, silent_share

        hypotheses = [bleu_tokens(self.tokenizer, row) for row in samples]
        metrics = {f"bleu{n}": self.bleu.corpus(hypotheses, n) for n in self.bleu_orders}
        metrics.update(diversity(hypotheses, self.self_bleu_samples))
        if self.reference_events is not None:
            melodies = [self.tokenizer.decode(row) for row in samples]
            metrics["mse"] = melody_mse(melodies, self.reference_events)
            metrics["silent"] = silent_share(melodies)
        return metrics


def corpus_evaluator(tokenizer, heldout: torch.Tensor, seq_len: int, num_samples: int = 2000):
    """Trainer evaluation for real data: NLL-test of the held-out set, and ``SampleScorer`` scores of
    ``num_samples`` generated sequences (see the module docstring for what each metric is)."""
    scorer = SampleScorer(tokenizer, heldout)
    eos = tokenizer.eos_id if tokenizer.kind == "text" else None

    def evaluate(generator, rng: torch.Generator) -> dict:
        samples = generator.sample(num_samples, seq_len, generator=rng).cpu().tolist()
        return {"nll_test": sequence_nll(generator, heldout, eos), **scorer.score(samples)}

    return evaluate
