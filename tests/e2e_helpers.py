"""Real data and real runs for the app's tests: a slice of the built-in poems, a few O'Neill tunes, and tiny
training runs made by the real ``seqgan train`` (in-process, a few seconds). Nothing here is mocked."""

from __future__ import annotations

import io
import re
import signal
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"

# A tiny but complete schedule: 2 MLE epochs, 1 discriminator round, 2 adversarial iterations, small networks.
TINY = ["--g-emb-dim", "8", "--g-hidden-dim", "8", "--batch-size", "16", "--mle-epochs", "2", "--d-emb-dim", "8",
        "--d-filter-sizes", "2", "3", "--d-num-filters", "4", "4", "--d-pretrain-rounds", "1", "--d-epochs", "1",
        "--num-negatives", "32", "--adv-iters", "2", "--d-steps", "1", "--rollouts", "2", "--eval-every", "1",
        "--eval-samples", "32", "--device", "cpu", "--quiet"]


def poem_lines(count: int = 200) -> bytes:
    """The first ``count`` lines of the built-in poems corpus."""
    from seqgan.corpus import BUILTIN_POEMS

    with open(BUILTIN_POEMS, encoding="utf-8") as f:
        return "".join(next(f) for _ in range(count)).encode()


def abc_tunes(count: int = 8) -> bytes:
    """The first ``count`` tunes of O'Neill's Music of Ireland (music21's corpus, as the built-in melodies)."""
    from seqgan.music import builtin_corpus_files

    text = builtin_corpus_files()[0].read_text(encoding="latin-1")
    tunes = [t for t in re.split(r"(?m)^(?=X:)", text) if t.startswith("X:")]
    return "".join(tunes[:count]).encode()


def melody_zip() -> bytes:
    """A zip of good tunes and a damaged MIDI file (the app must list the bad one and read the rest)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tunes/oneill.abc", abc_tunes(6))
        archive.writestr("tunes/broken.mid", b"MThd\x00\x00\x00\x06garbage")
    return buffer.getvalue()


def make_runs(root: Path) -> Path:
    """``root/poems`` and ``root/melodies``: tiny finished runs, the layout of the built-in demo runs."""
    from seqgan.cli import main

    root.mkdir(parents=True, exist_ok=True)
    (root / "poems.txt").write_bytes(poem_lines())
    (root / "tunes.abc").write_bytes(abc_tunes())
    previous = signal.getsignal(signal.SIGTERM)
    try:
        for name, corpus, extra in [("poems", "poems.txt", ["--vocab-size", "200"]), ("melodies", "tunes.abc", [])]:
            status = main(["train", "--run-dir", str(root / "runs" / name), "--corpus", str(root / corpus)]
                          + extra + TINY)
            assert status == 0, f"the tiny {name} run failed"
    finally:
        signal.signal(signal.SIGTERM, previous)
    return root / "runs"
