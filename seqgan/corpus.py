"""Corpora as token tensors: [N, seq_len] int64 ids, and the token-id file format.

A token-id file holds one sequence a line, ids separated by spaces (the original SeqGAN repository's format);
every line has the same length.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import atomic_write_bytes
from .errors import InputError


def read_token_file(path: str | Path, vocab_size: int | None = None) -> torch.Tensor:
    """Sequences of token ids, one a line; every line must have the same length."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
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
    if int(tokens.min()) < 0 or (vocab_size is not None and int(tokens.max()) >= vocab_size):
        raise InputError(path, f"token ids must be within 0..{(vocab_size or 1) - 1}")
    return tokens


def write_token_file(tokens: torch.Tensor, path: str | Path) -> None:
    text = "".join(" ".join(map(str, row)) + "\n" for row in tokens.tolist())
    atomic_write_bytes(path, text.encode())
