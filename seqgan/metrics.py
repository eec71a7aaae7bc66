"""Sequence-quality metrics: BLEU, Self-BLEU and distinct-n.

BLEU-n (as in the SeqGAN paper and Texygen): every hypothesis is scored with
nltk's ``sentence_bleu(references, hyp, weights=(1/n,)*n,
smoothing_function=SmoothingFunction().method1)`` against the *whole*
reference set, and the corpus score is the mean over hypotheses.  That is:

* p_k = clipped k-gram matches / max(1, hypothesis k-grams), where a k-gram's
  count is clipped to its largest count in any single reference;
  a p_k with zero matches becomes 0.1 / max(1, hypothesis k-grams) (method1);
* BP = 1 if len(hyp) > r else exp(1 - r / len(hyp)), where r is the reference
  length closest to len(hyp), ties going to the shorter one;
* BLEU = BP * exp(sum_k log(p_k) / n), except that it is 0 when there is not
  a single unigram match (this includes the empty hypothesis).

The result equals nltk's to floating-point rounding, without nltk and without
re-reading every reference for every hypothesis: the clipping counts and the
reference lengths are precomputed once.

Self-BLEU: each hypothesis is scored by BLEU against all the *other*
hypotheses.  Texygen's published Self-BLEU also keeps the hypothesis itself
among its references, which makes every sentence score exactly 1.0; we exclude
only the hypothesis's own index (a duplicate elsewhere in the set is a
legitimate reference).

distinct-n: number of distinct n-grams / number of n-grams over all sequences.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from collections import Counter
from typing import Hashable, Iterable, Sequence

Tokens = tuple  # a sequence converted to a tuple of hashable tokens

_EPSILON = 0.1  # nltk SmoothingFunction().method1 default


def _as_tokens(sequence) -> Tokens:
    # numpy arrays and torch tensors: turn elements into plain Python numbers,
    # because tensor elements hash by identity.
    if hasattr(sequence, "tolist"):
        sequence = sequence.tolist()
    return tuple(sequence)


def _ngrams(tokens: Tokens, k: int) -> list[tuple]:
    return list(zip(*[tokens[i:] for i in range(k)]))


def _closest_length(sorted_lengths: Sequence[int], hyp_len: int) -> int:
    """Reference length closest to hyp_len; a tie goes to the shorter one."""
    i = bisect.bisect_left(sorted_lengths, hyp_len)
    if i == len(sorted_lengths):
        return sorted_lengths[-1]
    if i == 0 or sorted_lengths[i] == hyp_len:
        return sorted_lengths[i]
    shorter, longer = sorted_lengths[i - 1], sorted_lengths[i]
    return shorter if hyp_len - shorter <= longer - hyp_len else longer


def _bleu_from_counts(matches: list[int], totals: list[int], hyp_len: int,
                      ref_len: int) -> float:
    """nltk's sentence BLEU with uniform weights and method1 smoothing.

    matches[k] / totals[k] are the clipped matches and the number of
    hypothesis (k+1)-grams; the order n is len(matches).
    """
    if matches[0] == 0:
        return 0.0
    weight = 1 / len(matches)
    log_precisions = [
        weight * math.log((m if m else _EPSILON) / max(t, 1))
        for m, t in zip(matches, totals)
    ]
    if hyp_len > ref_len:
        brevity_penalty = 1.0
    else:
        brevity_penalty = math.exp(1 - ref_len / hyp_len)
    return brevity_penalty * math.exp(math.fsum(log_precisions))


def _check_order(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n-gram order must be a positive integer, got {n!r}")


class BleuScorer:
    """BLEU of hypotheses against one fixed reference set (see module doc).

    Build it once per reference set; scoring a hypothesis then costs
    O(its length * n) regardless of the number of references.
    """

    def __init__(self, references: Sequence[Sequence[Hashable]], max_n: int = 4):
        _check_order(max_n)
        references = [_as_tokens(r) for r in references]
        if not references:
            raise ValueError("BLEU needs at least one reference sequence; "
                             "got an empty reference set")
        self.max_n = max_n
        self._sorted_lengths = sorted({len(r) for r in references})
        self._closest_cache: dict[int, int] = {}
        # _max_counts[k-1][gram]: largest count of the k-gram in any single
        # reference (nltk's clipping count).
        self._max_counts: list[dict[tuple, int]] = []
        for k in range(1, max_n + 1):
            per_ref = [_ngrams(r, k) for r in references]
            max_counts = dict.fromkeys(
                (g for grams in per_ref for g in grams), 1)
            # Most references have no repeated k-gram; only the others can
            # raise a count above 1.
            for grams in per_ref:
                if len(set(grams)) < len(grams):
                    for g, c in Counter(grams).items():
                        if c > max_counts[g]:
                            max_counts[g] = c
            self._max_counts.append(max_counts)

    def _order(self, n: int | None) -> int:
        if n is None:
            return self.max_n
        _check_order(n)
        if n > self.max_n:
            raise ValueError(f"n={n} exceeds this scorer's max_n={self.max_n}")
        return n

    def _closest_ref_length(self, hyp_len: int) -> int:
        ref_len = self._closest_cache.get(hyp_len)
        if ref_len is None:
            ref_len = _closest_length(self._sorted_lengths, hyp_len)
            self._closest_cache[hyp_len] = ref_len
        return ref_len

    def _score(self, tokens: Tokens, n: int) -> float:
        matches, totals = [], []
        for k in range(1, n + 1):
            grams = _ngrams(tokens, k)
            max_counts = self._max_counts[k - 1]
            if len(set(grams)) == len(grams):
                # No repeated k-gram in the hypothesis: each clips to 1.
                matched = sum(map(max_counts.__contains__, grams))
            else:
                matched = sum(min(c, max_counts.get(g, 0))
                              for g, c in Counter(grams).items())
            matches.append(matched)
            totals.append(len(grams))
            if k == 1 and matched == 0:
                return 0.0
        return _bleu_from_counts(matches, totals, len(tokens),
                                 self._closest_ref_length(len(tokens)))

    def sentence(self, hypothesis: Sequence[Hashable], n: int | None = None) -> float:
        """BLEU-n of one hypothesis against all references."""
        return self._score(_as_tokens(hypothesis), self._order(n))

    def sentences(self, hypotheses: Iterable[Sequence[Hashable]],
                  n: int | None = None) -> list[float]:
        """BLEU-n of each hypothesis (e.g. per-sequence rewards)."""
        n = self._order(n)
        scores: dict[Tokens, float] = {}  # identical hypotheses scored once
        result = []
        for hypothesis in hypotheses:
            tokens = _as_tokens(hypothesis)
            score = scores.get(tokens)
            if score is None:
                score = scores[tokens] = self._score(tokens, n)
            result.append(score)
        return result

    def corpus(self, hypotheses: Iterable[Sequence[Hashable]],
               n: int | None = None) -> float:
        """Mean sentence BLEU-n over the hypotheses."""
        scores = self.sentences(hypotheses, n)
        if not scores:
            raise ValueError("BLEU needs at least one hypothesis; "
                             "got an empty hypothesis set")
        return math.fsum(scores) / len(scores)


def bleu(references: Sequence[Sequence[Hashable]],
         hypotheses: Sequence[Sequence[Hashable]], n: int = 4) -> float:
    """Mean sentence BLEU-n of hypotheses against the whole reference set."""
    return BleuScorer(references, max_n=n).corpus(hypotheses)


def self_bleu(hypotheses: Sequence[Sequence[Hashable]], n: int = 4,
              sample_size: int | None = None, seed: int = 0) -> float:
    """Mean BLEU-n of each hypothesis against all the other hypotheses.

    sample_size: score only this many hypotheses, drawn at random with `seed`
    (each still against all the others), as Texygen does with 500.
    """
    _check_order(n)
    hyps = [_as_tokens(h) for h in hypotheses]
    if len(hyps) < 2:
        raise ValueError("Self-BLEU needs at least two hypotheses "
                         f"(each is scored against the others); got {len(hyps)}")

    # Per k-gram: [largest count in one hypothesis, index of a hypothesis
    # holding it, largest count among all the other hypotheses]. Excluding
    # hypothesis i then means using the second value where i is the holder.
    tops: list[dict[tuple, list[int]]] = []
    for k in range(1, n + 1):
        table: dict[tuple, list[int]] = {}
        for i, h in enumerate(hyps):
            for g, c in Counter(_ngrams(h, k)).items():
                entry = table.get(g)
                if entry is None:
                    table[g] = [c, i, 0]
                elif c > entry[0]:
                    entry[:] = [c, i, entry[0]]
                elif c > entry[2]:
                    entry[2] = c
        tops.append(table)

    length_counts = Counter(len(h) for h in hyps)
    sorted_lengths = sorted(length_counts)
    closest_cache: dict[int, int] = {}

    def closest_other_length(hyp_len: int) -> int:
        # Depends only on hyp_len: its own length is the one to drop.
        if hyp_len not in closest_cache:
            others = sorted_lengths
            if length_counts[hyp_len] == 1:
                others = [L for L in sorted_lengths if L != hyp_len]
            closest_cache[hyp_len] = _closest_length(others, hyp_len)
        return closest_cache[hyp_len]

    def score(i: int) -> float:
        h = hyps[i]
        matches, totals = [], []
        for k in range(1, n + 1):
            grams = _ngrams(h, k)
            matched = 0
            for g, c in Counter(grams).items():
                top, holder, second = tops[k - 1][g]
                matched += min(c, second if holder == i else top)
            matches.append(matched)
            totals.append(len(grams))
        return _bleu_from_counts(matches, totals, len(h),
                                 closest_other_length(len(h)))

    indices = range(len(hyps))
    if sample_size is not None:
        if sample_size < 1:
            raise ValueError(f"sample_size must be positive, got {sample_size}")
        if sample_size < len(hyps):
            indices = random.Random(seed).sample(indices, sample_size)
    scores = [score(i) for i in indices]
    return math.fsum(scores) / len(scores)


def distinct_n(sequences: Iterable[Sequence[Hashable]], n: int) -> float:
    """Distinct n-grams / total n-grams over all sequences (0.0 if none)."""
    _check_order(n)
    all_grams = [g for s in sequences for g in _ngrams(_as_tokens(s), n)]
    if not all_grams:
        return 0.0
    return len(set(all_grams)) / len(all_grams)


def diversity(sequences: Sequence[Sequence[Hashable]], self_bleu_samples: int = 500) -> dict:
    """Self-BLEU-4 of the first ``self_bleu_samples`` non-empty sequences (0.0 when fewer than two) and distinct-2
    of all of them: the two diversity figures every evaluation reports."""
    kept = [s for s in sequences[:self_bleu_samples] if len(s)]
    return {"self_bleu4": self_bleu(kept, 4) if len(kept) >= 2 else 0.0, "distinct2": distinct_n(sequences, 2)}


def over_seeds(values: Sequence[float]) -> dict:
    """A figure over seeds: mean, sample standard deviation (0 for one seed) and the values themselves."""
    values = list(values)
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def mean_sd(cell: dict, digits: int = 3) -> str:
    """An ``over_seeds`` figure as text: 'mean ± sd', or the value alone when there was one seed."""
    if len(cell.get("values", ())) == 1:
        return f"{cell['mean']:.{digits}f}"
    return f"{cell['mean']:.{digits}f} ± {cell['sd']:.{digits}f}"
