"""seqgan.metrics checked against nltk's sentence_bleu (the reference definition)."""

import random

import numpy as np
import pytest
import torch
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from seqgan.metrics import BleuScorer, bleu, distinct_n, self_bleu

SMOOTH = SmoothingFunction().method1


def nltk_bleu(references, hypothesis, n):
    return sentence_bleu(references, hypothesis, weights=(1 / n,) * n,
                         smoothing_function=SMOOTH)


def nltk_corpus(references, hypotheses, n):
    return sum(nltk_bleu(references, h, n) for h in hypotheses) / len(hypotheses)


def nltk_self_bleu_per_hyp(hyps, n):
    """Brute force: hypothesis i against every hypothesis except index i."""
    return [nltk_bleu(hyps[:i] + hyps[i + 1:], h, n) for i, h in enumerate(hyps)]


def random_seqs(rng, count, vocab, min_len, max_len):
    return [[rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))]
            for _ in range(count)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("vocab", [3, 8, 1000])
def test_bleu_matches_nltk_on_random_data(seed, vocab):
    rng = random.Random(seed * 1000 + vocab)
    references = random_seqs(rng, 25, vocab, 0, 12)
    # Lengths 0..7 cover the empty hypothesis, length 1 and lengths below n.
    hypotheses = random_seqs(rng, 25, vocab, 0, 7)
    scorer = BleuScorer(references, max_n=5)
    for n in range(1, 6):
        expected = [nltk_bleu(references, h, n) for h in hypotheses]
        got = scorer.sentences(hypotheses, n)
        assert got == pytest.approx(expected, abs=1e-9, rel=0)
        assert scorer.corpus(hypotheses, n) == pytest.approx(
            sum(expected) / len(expected), abs=1e-9, rel=0)


def test_bleu_with_string_tokens():
    rng = random.Random(7)
    words = "the a cat dog sat on mat hat".split()
    references = [[rng.choice(words) for _ in range(rng.randint(1, 10))] for _ in range(20)]
    hypotheses = [[rng.choice(words) for _ in range(rng.randint(1, 10))] for _ in range(20)]
    for n in range(1, 5):
        assert bleu(references, hypotheses, n) == pytest.approx(
            nltk_corpus(references, hypotheses, n), abs=1e-9, rel=0)


@pytest.mark.parametrize("references, hypothesis", [
    ([[1, 2, 3, 4]], [7, 8, 9]),            # no unigram match: exactly 0
    ([[1, 2, 3, 4]], []),                   # empty hypothesis
    ([[1, 2, 3, 4]], [1]),                  # length 1, shorter than n
    ([[1, 2, 3, 4], [2, 3]], [2, 3]),       # shorter than n, full match
    ([[1, 2, 3, 4]], [4, 3, 2, 1]),         # unigram matches, no bigram match
    ([[1, 1, 2], [1, 2, 2]], [1, 1, 1, 2, 2, 2]),  # clipping per reference
    ([[1, 2], [1, 2, 3, 4]], [1, 2, 3]),    # length tie goes to shorter ref
    ([[], [5]], [5, 5]),                    # empty reference
])
@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_bleu_special_cases_match_nltk(references, hypothesis, n):
    got = BleuScorer(references, max_n=5).sentence(hypothesis, n)
    assert got == pytest.approx(nltk_bleu(references, hypothesis, n), abs=1e-9, rel=0)


def test_no_unigram_match_is_zero():
    assert BleuScorer([[1, 2, 3]]).sentence([4, 5, 6]) == 0.0


def test_arrays_and_tensors_score_like_lists():
    scorer = BleuScorer([[1, 2, 3, 4], [2, 3, 4, 5]])
    expected = scorer.sentence([1, 2, 3, 5])
    assert scorer.sentence(np.array([1, 2, 3, 5])) == expected
    assert scorer.sentences(torch.tensor([[1, 2, 3, 5]])) == [expected]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("vocab", [3, 6])
def test_self_bleu_matches_brute_force_excluding_own_index(seed, vocab):
    rng = random.Random(seed)
    hyps = random_seqs(rng, 20, vocab, 1, 8)
    hyps += [list(hyps[0]), list(hyps[1]), list(hyps[1])]  # duplicates
    hyps.append([vocab + 1] * 3)  # unique length-3 sequence with no matches
    rng.shuffle(hyps)
    for n in range(1, 5):
        expected = nltk_self_bleu_per_hyp(hyps, n)
        assert self_bleu(hyps, n) == pytest.approx(
            sum(expected) / len(expected), abs=1e-9, rel=0)


def test_self_bleu_excludes_self_unlike_texygen():
    hyps = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [2, 3, 4, 5, 6], [1, 2, 3, 5, 6]]
    expected = nltk_self_bleu_per_hyp(hyps, 4)
    texygen = nltk_corpus(hyps, hyps, 4)  # every hypothesis among its references
    ours = self_bleu(hyps, 4)
    assert texygen == 1.0
    assert ours == pytest.approx(sum(expected) / len(expected), abs=1e-9, rel=0)
    assert ours < 0.9


def test_self_bleu_sampling():
    rng = random.Random(3)
    hyps = random_seqs(rng, 30, 5, 2, 8)
    per_hyp = nltk_self_bleu_per_hyp(hyps, 3)
    assert self_bleu(hyps, 3, sample_size=100) == self_bleu(hyps, 3)
    assert self_bleu(hyps, 3, sample_size=10, seed=1) == self_bleu(hyps, 3, sample_size=10, seed=1)
    one = self_bleu(hyps, 3, sample_size=1, seed=5)
    assert any(abs(one - s) < 1e-9 for s in per_hyp)


def test_distinct_n_hand_example():
    seqs = [[1, 2, 3, 1, 2], [2, 3]]
    # unigrams: 1 2 3 1 2 2 3 -> 3 distinct of 7
    assert distinct_n(seqs, 1) == pytest.approx(3 / 7)
    # bigrams: (1,2) (2,3) (3,1) (1,2) (2,3) -> 3 distinct of 5
    assert distinct_n(seqs, 2) == pytest.approx(3 / 5)
    assert distinct_n(seqs, 6) == 0.0
    assert distinct_n([], 2) == 0.0


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="at least one reference"):
        BleuScorer([])
    with pytest.raises(ValueError, match="at least one reference"):
        bleu([], [[1, 2]])
    with pytest.raises(ValueError, match="at least one hypothesis"):
        BleuScorer([[1, 2]]).corpus([])
    with pytest.raises(ValueError, match="at least one hypothesis"):
        bleu([[1, 2]], [])
    with pytest.raises(ValueError, match="at least two hypotheses"):
        self_bleu([[1, 2]])
    with pytest.raises(ValueError, match="exceeds"):
        BleuScorer([[1, 2]], max_n=2).sentence([1, 2], n=3)
    with pytest.raises(ValueError, match="positive integer"):
        distinct_n([[1, 2]], 0)


def test_figures_over_seeds_show_the_spread_only_when_there_is_one():
    from seqgan.metrics import mean_sd, over_seeds

    assert mean_sd(over_seeds([1.0, 2.0])) == "1.500 ± 0.707"
    assert mean_sd(over_seeds([0.61234]), 4) == "0.6123"
