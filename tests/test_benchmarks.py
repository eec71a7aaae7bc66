"""The engine benchmark still runs (small sizes) and prints one row of figures per piece."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_engine_quick_prints_a_row_per_piece():
    done = subprocess.run([sys.executable, "benchmarks/bench_engine.py", "--quick", "--skip-naive",
                           "--pieces", "g", "sample"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"matmul rate .*torch\.mm \d+\.\d GFLOP/s", done.stdout)
    lines = done.stdout.splitlines()
    rows = {line.split("  ")[0]: line for line in lines if line.startswith(("adversarial", "sample"))}
    assert set(rows) == {"adversarial G step (N=4)", "sample 640"}, done.stdout
    assert re.search(r"softmax rate \d+\.\d+ G logits/s.*memory bandwidth \d+\.\d GB/s", done.stdout)
    for line in rows.values():  # ours, plain, naive ("-"), vs plain, vs naive ("-"), GFLOP, floor, ours/floor,
        cells = line.split()[-12:]  # G logits, GB, full floor, ours/full
        assert float(cells[0]) > 0 and float(cells[1]) > 0 and cells[2] == "-", line
        assert cells[7].endswith("x") and float(cells[7][:-1]) > 0, line
        assert float(cells[8]) > 0 and float(cells[10]) > float(cells[6]), line  # softmaxes add to the floor
        assert cells[11].endswith("x") and float(cells[11][:-1]) < float(cells[7][:-1]), line
