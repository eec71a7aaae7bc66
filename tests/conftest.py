"""Shared fixtures: one torch thread (the machine is small and shared), the reference material beside the
checkout, and a statistics helper the sampling tests use (no scipy: it is not a dependency)."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE_DIR = SHARED_DIR / "seqgan-reference"


def require_shared(*relative: str) -> Path:
    """The path under ../shared, or skip the test: the reference material is not part of the checkout."""
    path = SHARED_DIR.joinpath(*relative)
    if not path.exists():
        pytest.skip(f"../shared not found: the reference material sits beside the checkout (looked for {path})")
    return path


@pytest.fixture
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(params=["target_params.pkl", "target_params_py3.pkl"])
def paper_oracle_params(request) -> Path:
    """Both pickles of the paper's oracle (Python 2 and Python 3)."""
    return require_shared("seqgan-reference", request.param)


@pytest.fixture
def restore_sigterm():
    """``seqgan train`` installs a SIGTERM handler; put the test process's own back afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def chi_square_z(counts, probs, min_expected: float = 5.0) -> float:
    """Pearson's chi-square of ``counts`` against ``probs``, as a standard-normal z (Wilson-Hilferty).

    Cells expected fewer than ``min_expected`` times are pooled into one. z > 4.5 means p < ~3e-6, so a correct
    sampler fails this essentially never (and the tests are seeded), while a wrong distribution fails by far.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
    probs = torch.as_tensor(probs, dtype=torch.float64).flatten()
    total = counts.sum()
    expected = probs / probs.sum() * total
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    if exp[-1] == 0:
        # nothing expected in the pooled cell: any count there is impossible under ``probs``
        if obs[-1] > 0:
            return math.inf
        obs, exp = obs[:-1], exp[:-1]
    df = len(exp) - 1
    if df < 1:
        return 0.0
    x2 = float(((obs - exp) ** 2 / exp).sum())
    a = 2.0 / (9.0 * df)
    return ((x2 / df) ** (1.0 / 3.0) - (1.0 - a)) / math.sqrt(a)
