"""The engine: sampler, Monte-Carlo rollout rewards, the training schedule, resume, configuration and checkpoints.

Everything runs the real code on tiny sizes (vocabulary 6-20, length 4-6, a few D filters), seeded.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import chi_square_z
from seqgan import flops
from seqgan.checkpoint import FORMAT, bundle_bytes, load_bundle, save_bundle
from seqgan.errors import ConfigError, InputError
from seqgan.kernels import plain_kernels
from seqgan.models import Discriminator, Generator, sample_from_logits
from seqgan.oracle import nll_under, oracle_evaluator, random_oracle
from seqgan.rollout import batched_rollout, discriminator_reward, naive_rollout_rewards, rollout_rewards
from seqgan.runs import RunDir, RunInUse
from seqgan.train import TrainConfig, Trainer, run_to_end

REPO = Path(__file__).resolve().parents[1]
Z_MAX = 4.5  # chi-square z bound: p < ~3e-6 for a correct sampler


# ----- helpers ------------------------------------------------------------------------------------------------
def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def peaky_generator(vocab: int, seed: int, dim: int = 12) -> Generator:
    """A generator whose next-token distributions differ a lot between contexts (N(0, 1) weights), so that a
    continuation drawn from the wrong state or the wrong row shows up in the statistics."""
    torch.manual_seed(seed)
    return Generator(vocab, dim, dim, start_token=0, init_std=1.0).eval()


def encode(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """Base-``vocab`` code of each row: a unique integer per sequence."""
    code = torch.zeros(tokens.shape[0], dtype=torch.long)
    for j in range(tokens.shape[1]):
        code = code * vocab + tokens[:, j]
    return code


def all_continuations(vocab: int, length: int) -> torch.Tensor:
    """Every sequence of ``length`` tokens, in the order of ``encode``."""
    return torch.tensor(list(itertools.product(range(vocab), repeat=length)), dtype=torch.long).view(-1, length)


@torch.no_grad()
def exact_continuation_probs(G: Generator, prefix: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All completions of ``prefix`` [t] to ``seq_len`` tokens and their exact probabilities under G."""
    t = len(prefix)
    conts = all_continuations(G.vocab_size, seq_len - t)
    full = torch.cat([prefix.expand(len(conts), t), conts], dim=1)
    logp = G.log_probs(full).double()[:, t:].sum(dim=1)
    return full, logp.exp()


def tiny_config(**overrides) -> TrainConfig:
    settings = dict(vocab_size=20, seq_len=6, g_emb_dim=8, g_hidden_dim=8, batch_size=16, mle_epochs=3,
                    d_emb_dim=8, d_filter_sizes=[2, 3], d_num_filters=[4, 4], d_batch_size=32,
                    d_pretrain_rounds=2, d_epochs=1, num_negatives=32, adv_iters=3, d_steps=1, rollouts=2,
                    eval_every=2, eval_samples=32, seed=5, device="cpu", checkpoint_seconds=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def tiny_task(config: TrainConfig, seed: int = 11):
    """Training data, held-out data and an evaluator from a small random oracle."""
    oracle = random_oracle(seed, config.vocab_size, 8, 8)
    train = oracle.sample(64, config.seq_len, generator=seeded(seed))
    heldout = oracle.sample(32, config.seq_len, generator=seeded(seed + 1))
    return train, heldout, oracle_evaluator(oracle, config.eval_samples, config.seq_len, heldout)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_times(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("time", "seconds", "mfu")} for e in events]


# ----- 1. the sampler -----------------------------------------------------------------------------------------
SAMPLER_ROWS = torch.tensor([
    [0.3, -1.2, 2.0, 0.0, 0.7, -0.4, 1.1, -2.5, 0.9, 0.1],
    [1.5, 0.2, -0.8, 2.2, -1.0, 0.6, -0.3, 1.9, -2.0, 0.4],
    [9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],              # very peaked
    [-math.inf, 0.5, 1.0, -math.inf, 0.0, 2.0, -0.5, 1.0, -math.inf, -math.inf],  # zero-probability tokens
])


def test_a_tiny_temperature_draws_the_most_likely_token():
    for temperature in (1e-3, 1e-39):  # the second would take logits / temperature to inf, its softmax to nan
        tokens = sample_from_logits(SAMPLER_ROWS, temperature, generator=seeded(1))
        assert torch.equal(tokens, SAMPLER_ROWS.argmax(dim=1)), temperature


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sample_from_logits_draws_the_tempered_softmax(temperature):
    draws_per_row = 40_000
    rows, vocab = SAMPLER_ROWS.shape
    logits = SAMPLER_ROWS.repeat_interleave(draws_per_row, dim=0)
    tokens = sample_from_logits(logits, temperature, generator=seeded(int(temperature * 10)))
    assert tokens.shape == (rows * draws_per_row,) and tokens.dtype == torch.long
    exact = torch.softmax(SAMPLER_ROWS.double() / temperature, dim=-1)
    for r in range(rows):
        counts = torch.bincount(tokens[r * draws_per_row:(r + 1) * draws_per_row], minlength=vocab).double()
        assert len(counts) == vocab
        freq = counts / draws_per_row
        bound = 5 * (exact[r] * (1 - exact[r]) / draws_per_row).sqrt() + 3 / draws_per_row
        assert ((freq - exact[r]).abs() <= bound).all(), (r, freq, exact[r])
        assert chi_square_z(counts, exact[r]) < Z_MAX, (r, counts, exact[r])
        impossible = torch.isinf(SAMPLER_ROWS[r])
        assert counts[impossible].sum() == 0, f"row {r}: a token with logit -inf was drawn"


def test_sample_from_logits_never_draws_minus_infinity_tokens_at_the_edges():
    # Only the middle token is possible; the impossible ones include the first and the last (the clamp).
    logits = torch.full((50_000, 7), -math.inf)
    logits[:, 3] = 0.0
    assert torch.equal(sample_from_logits(logits, generator=seeded(0)), torch.full((50_000,), 3))
    logits[:, 5] = -40.0  # possible but rarer than any draw here: must still come from tokens 3 and 5 only
    tokens = sample_from_logits(logits, 2.0, generator=seeded(1))
    assert set(tokens.unique().tolist()) <= {3, 5}


def test_sample_from_logits_across_blocks_of_the_two_level_sampler():
    """A vocabulary of several sampler blocks and a partial last one: rows whose mass sits in one block, in the
    partial block only, across a block boundary, or with a whole block impossible."""
    from seqgan.models import SAMPLER_BLOCK

    vocab, draws_per_row = 2 * SAMPLER_BLOCK + 22, 30_000
    rows = torch.randn(5, vocab, generator=seeded(7))
    rows[1, :SAMPLER_BLOCK] = -math.inf                          # the first block impossible
    rows[2, :2 * SAMPLER_BLOCK] = -math.inf                      # only the partial last block
    rows[3] = -math.inf
    rows[3, SAMPLER_BLOCK - 2:SAMPLER_BLOCK + 2] = torch.tensor([0.0, 1.0, 0.5, -0.5])  # across a boundary
    rows[4, 5] = 12.0                                            # nearly all mass on one token
    tokens = sample_from_logits(rows.repeat_interleave(draws_per_row, dim=0), generator=seeded(8))
    exact = torch.softmax(rows.double(), dim=-1)
    for r in range(len(rows)):
        counts = torch.bincount(tokens[r * draws_per_row:(r + 1) * draws_per_row], minlength=vocab).double()
        assert len(counts) == vocab
        assert counts[torch.isinf(rows[r])].sum() == 0, f"row {r}: a token with logit -inf was drawn"
        possible = exact[r] > 0
        assert chi_square_z(counts[possible], exact[r][possible]) < Z_MAX, (r, counts, exact[r])


def test_draw_from_probs_draws_each_row_many_times_from_its_distribution():
    """The rollout's first step: N draws per row sharing the row's block sums, across blocks as above."""
    from seqgan.models import SAMPLER_BLOCK, draw_from_probs

    vocab, draws = 2 * SAMPLER_BLOCK + 22, 30_000
    logits = torch.randn(4, vocab, generator=seeded(9))
    logits[1, :SAMPLER_BLOCK] = -math.inf
    logits[2, :2 * SAMPLER_BLOCK] = -math.inf
    logits[3, 5] = 12.0
    exact = torch.softmax(logits.double(), dim=-1)
    tokens = draw_from_probs(torch.softmax(logits, dim=-1), draws, generator=seeded(10))
    assert tokens.shape == (4, draws) and tokens.dtype == torch.long
    for r in range(len(logits)):
        counts = torch.bincount(tokens[r], minlength=vocab).double()
        assert len(counts) == vocab and counts[torch.isinf(logits[r])].sum() == 0
        possible = exact[r] > 0
        assert chi_square_z(counts[possible], exact[r][possible]) < Z_MAX, (r, counts, exact[r])


def test_sample_from_logits_uses_only_the_given_generator():
    logits = torch.randn(500, 12, generator=seeded(3))
    torch.manual_seed(0)
    a = sample_from_logits(logits, 0.7, generator=seeded(42))
    torch.manual_seed(99)
    b = sample_from_logits(logits, 0.7, generator=seeded(42))
    c = sample_from_logits(logits, 0.7, generator=seeded(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_sample_keeps_the_prefix_and_is_reproducible():
    G = peaky_generator(vocab=9, seed=1)
    prefix = torch.tensor([4, 7, 1])
    a = G.sample(50, 6, prefix=prefix, generator=seeded(5))
    b = G.sample(50, 6, prefix=prefix, generator=seeded(5))
    c = G.sample(50, 6, prefix=prefix, generator=seeded(6))
    assert a.shape == (50, 6)
    assert (a[:, :3] == prefix).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 9
    # A prefix per row, across several internal batches: every row keeps its own prefix.
    prefixes = torch.randint(0, 9, (10, 2), generator=seeded(7))
    rows = G.sample(10, 5, prefix=prefixes, generator=seeded(8), batch_size=4)
    assert torch.equal(rows[:, :2], prefixes)
    # A prefix as long as the sequence is returned as it is.
    assert torch.equal(G.sample(3, 3, prefix=prefix), prefix.expand(3, 3))


def test_generator_sample_continues_from_the_prefix_state():
    """The draws after a prefix follow G(. | prefix): the prefix must be fed to the LSTM, not only copied."""
    G = peaky_generator(vocab=6, seed=2)
    prefix = torch.tensor([5, 2])
    n = 20_000
    samples = G.sample(n, 4, prefix=prefix, generator=seeded(9))
    full, probs = exact_continuation_probs(G, prefix, 4)
    counts = torch.bincount(encode(samples[:, 2:], 6), minlength=36)
    assert chi_square_z(counts, probs) < Z_MAX
    # and at temperature 2 the next token follows softmax(logits / 2)
    hot = G.sample(n, 3, temperature=2.0, prefix=prefix, generator=seeded(10))
    with torch.no_grad():
        logits = G(torch.cat([prefix, torch.zeros(1, dtype=torch.long)]).unsqueeze(0))[0, 2]
    counts = torch.bincount(hot[:, 2], minlength=6)
    assert chi_square_z(counts, torch.softmax(logits.double() / 2.0, dim=-1)) < Z_MAX


# ----- 2. reward layout (TextGAN-PyTorch issue #62) -----------------------------------------------------------
def test_rewards_of_a_first_token_discriminator_are_constant_along_each_sequence():
    vocab, B, T, N = 10, 5, 6, 3
    G = peaky_generator(vocab, seed=3)
    sequences = G.sample(B, T, generator=seeded(1))
    sequences[:, 0] = torch.tensor([1, 3, 5, 7, 9])  # a distinct first token for every sequence

    def first_token(tokens):
        return tokens[:, 0].float() / vocab

    rewards = rollout_rewards(G, sequences, N, first_token, generator_rng=seeded(2))
    assert rewards.shape == (B, T)
    expected = (sequences[:, 0].float() / vocab).unsqueeze(1).expand(B, T)
    torch.testing.assert_close(rewards, expected, rtol=0, atol=1e-6)


def test_rewards_of_a_third_token_discriminator_are_exact_once_the_token_is_in_the_prefix():
    """A time-axis mix-up shows here: Q_t for prefixes that contain token 3 must be exactly f(token 3)."""
    vocab, B, T, N = 10, 4, 6, 4
    G = peaky_generator(vocab, seed=4)
    sequences = G.sample(B, T, generator=seeded(3))
    sequences[:, 2] = torch.tensor([2, 4, 6, 8])

    def third_token(tokens):
        return tokens[:, 2].float() / vocab

    rewards = rollout_rewards(G, sequences, N, third_token, generator_rng=seeded(4))
    expected = (sequences[:, 2].float() / vocab).unsqueeze(1).expand(B, T - 2)
    torch.testing.assert_close(rewards[:, 2:], expected, rtol=0, atol=1e-6)  # prefix lengths 3..T and Q_T
    assert ((rewards >= 0) & (rewards <= (vocab - 1) / vocab)).all()


# ----- 3. batched rollout against exact probabilities and the naive reference -----------------------------------
@pytest.mark.parametrize("T", [2, 5])
def test_batched_rollout_shape_and_prefixes(T):
    vocab, B, N = 7, 3, 4
    G = peaky_generator(vocab, seed=5)
    sequences = G.sample(B, T, generator=seeded(T))
    completions = batched_rollout(G, sequences, N, generator_rng=seeded(1))
    assert completions.shape == (T - 1, N, B, T)
    for t in range(1, T):
        assert torch.equal(completions[t - 1, :, :, :t], sequences[:, :t].expand(N, B, t))
    assert int(completions.min()) >= 0 and int(completions.max()) < vocab


def test_batched_rollout_completions_follow_the_generator_exactly():
    vocab, T, N = 6, 4, 6_000
    G = peaky_generator(vocab, seed=6)
    sequences = torch.tensor([[0, 1, 2, 3], [5, 5, 0, 1], [2, 4, 4, 0]])
    completions = batched_rollout(G, sequences, N, generator_rng=seeded(7))
    for t in range(1, T):
        for b in range(len(sequences)):
            rows = completions[t - 1, :, b]
            assert torch.equal(rows[:, :t], sequences[b, :t].expand(N, t))
            _, probs = exact_continuation_probs(G, sequences[b, :t], T)
            counts = torch.bincount(encode(rows[:, t:], vocab), minlength=vocab ** (T - t))
            z = chi_square_z(counts, probs)
            assert z < Z_MAX, f"prefix length {t} of sequence {b}: completions do not follow G (z = {z:.1f})"


def test_naive_reference_completions_follow_the_generator_as_the_batched_ones_do():
    """The reference (a loop over roll-outs and prefixes, multinomial draws) completes each prefix from G too, so
    the two rollouts draw the same distribution of completions (the batched one: the test above)."""
    vocab, T, N = 6, 4, 800
    G = peaky_generator(vocab, seed=6)
    sequences = torch.tensor([[0, 1, 2, 3], [5, 5, 0, 1], [2, 4, 4, 0]])
    B = len(sequences)
    scored = []

    def recording_reward(tokens):
        scored.append(tokens.clone())
        return torch.zeros(len(tokens))

    torch.manual_seed(12)
    naive_rollout_rewards(G, sequences, N, recording_reward)
    calls = torch.stack(scored).view(N, T, B, T)  # each roll-out scores prefix lengths 1..T-1, then Y itself
    assert torch.equal(calls[:, T - 1], sequences.expand(N, B, T))
    for t in range(1, T):
        for b in range(B):
            rows = calls[:, t - 1, b]
            assert torch.equal(rows[:, :t], sequences[b, :t].expand(N, t))
            _, probs = exact_continuation_probs(G, sequences[b, :t], T)
            counts = torch.bincount(encode(rows[:, t:], vocab), minlength=vocab ** (T - t))
            z = chi_square_z(counts, probs)
            assert z < Z_MAX, f"prefix length {t} of sequence {b}: the reference's completions (z = {z:.1f})"


@torch.no_grad()
def test_batched_and_naive_rollout_rewards_agree_with_the_exact_expectation():
    vocab, T = 6, 4
    G = peaky_generator(vocab, seed=8)
    table = torch.rand(vocab ** T, generator=seeded(9))  # D = a fixed random function of the whole sequence

    def reward_fn(tokens):
        return table[encode(tokens, vocab)]

    sequences = torch.tensor([[3, 0, 5, 2], [1, 1, 4, 4], [5, 2, 0, 3]])
    B = len(sequences)
    mean = torch.zeros(B, T, dtype=torch.float64)
    var = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(1, T):
            full, probs = exact_continuation_probs(G, sequences[b, :t], T)
            values = reward_fn(full).double()
            mean[b, t - 1] = (probs * values).sum()
            var[b, t - 1] = (probs * (values - mean[b, t - 1]) ** 2).sum()
        mean[b, T - 1] = float(reward_fn(sequences[b:b + 1]))

    n_batched, n_naive = 4_000, 300
    batched = rollout_rewards(G, sequences, n_batched, reward_fn, generator_rng=seeded(10)).double()
    torch.manual_seed(11)
    naive = naive_rollout_rewards(G, sequences, n_naive, reward_fn).double()
    for name, q, n in (("batched", batched, n_batched), ("naive", naive, n_naive)):
        assert q.shape == (B, T)
        # Q_T = D(Y) itself (the naive reference sums it once per roll-out, hence the rounding allowance)
        torch.testing.assert_close(q[:, -1].float(), reward_fn(sequences), rtol=0, atol=1e-4 if n == n_naive else 0)
        err = (q - mean).abs()
        assert (err <= 5 * (var / n).sqrt() + 1e-4).all(), f"{name} rewards are off:\n{q}\nexact:\n{mean}"
    assert ((batched - naive).abs() <= 5 * (var / n_batched + var / n_naive).sqrt() + 1e-4).all()


def test_discriminator_reward_shares_prefix_windows_without_changing_the_rewards():
    """The fast D reward (prefix windows computed once) scores every completion as D itself does."""
    vocab, B, T, N = 9, 4, 6, 3
    G = peaky_generator(vocab, seed=12)
    torch.manual_seed(13)
    D = Discriminator(vocab, T, emb_dim=8, filter_sizes=(1, 2, 3, 6), num_filters=(3, 4, 5, 2), dropout_keep=0.5)
    D.train()  # the reward has to switch dropout off by itself, and leave the mode as it found it
    sequences = G.sample(B, T, generator=seeded(14))
    completions = batched_rollout(G, sequences, N, generator_rng=seeded(15))
    with torch.no_grad():
        D.eval()
        expected = D.prob_real(completions.reshape(-1, T)).view(T - 1, N, B)
        torch.testing.assert_close(D.prob_real_completions(completions, sequences), expected, rtol=1e-5, atol=1e-6)
        D.train()
    reward = discriminator_reward(D)
    scores = reward.score_completions(completions, sequences)
    assert D.training
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reward.score_completions(completions, sequences), scores, rtol=0, atol=0)

    def plain(tokens):  # the reward as a plain function: no sharing, no dropout
        D.eval()
        try:
            return D.prob_real(tokens)
        finally:
            D.train()

    q_fast = rollout_rewards(G, sequences, N, reward, generator_rng=seeded(16))
    q_unshared = rollout_rewards(G, sequences, N, discriminator_reward(D, share_prefix_windows=False),
                                 generator_rng=seeded(16))
    q_plain = rollout_rewards(G, sequences, N, plain, generator_rng=seeded(16))
    torch.testing.assert_close(q_fast, q_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q_unshared, q_plain, rtol=1e-5, atol=1e-6)
    assert ((q_fast > 0) & (q_fast < 1)).all()


# ----- 4. the networks and the schedule are the original's ---------------------------------------------------------
def test_the_highway_gate_has_no_constant_bias_and_biases_start_glorot_uniform():
    """The original's discriminator calls highway(..., bias=0): with zero weights and biases the gate is 1/2."""
    from seqgan.models import Highway

    torch.manual_seed(0)
    highway = Highway(300)
    for layer in (highway.transform, highway.gate):
        limit = math.sqrt(3.0 / 300)  # TensorFlow's Glorot uniform for a vector of 300: fan-in = fan-out = 300
        assert layer.bias.abs().max() <= limit and layer.bias.abs().max() > 0.9 * limit
    for p in highway.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(5, 300)
    assert torch.allclose(highway(x), 0.5 * x)


def test_a_version_1_checkpoint_scores_as_it_did(tmp_path):
    """Version 1 added a constant -2 inside the highway gate; its discriminator loads into version 2 unchanged."""
    config = tiny_config()
    D = Trainer(config, torch.zeros(4, 6, dtype=torch.long)).discriminator.eval()
    with torch.no_grad():
        D.highway.gate.bias.normal_()
    tokens = torch.randint(0, config.vocab_size, (7, config.seq_len))
    with torch.no_grad():  # version 1's forward pass, written out
        x = D.features(tokens)
        h = D.highway
        gate = torch.sigmoid(x @ h.gate.weight.T + h.gate.bias - 2.0)
        version_1 = D.output(torch.lerp(x, torch.relu(x @ h.transform.weight.T + h.transform.bias), gate))
    old = {"format": "seqgan-studio/1", "kind": "tokens", "config": config.to_dict(), "generator": {},
           "discriminator": {k: v.clone() for k, v in D.state_dict().items()}}
    loaded = load_bundle(bundle_bytes(old))
    assert loaded["format"] == FORMAT
    D.load_state_dict(loaded["discriminator"])
    with torch.no_grad():
        assert torch.allclose(D(tokens), version_1, atol=1e-5)
    assert torch.allclose(old["discriminator"]["highway.gate.bias"] - 2.0, D.highway.gate.bias.detach())
    # It samples and scores, but training does not continue networks that version 1 trained differently.
    with pytest.raises(ConfigError, match="earlier version"):
        Trainer(config, torch.zeros(4, 6, dtype=torch.long)).restore(loaded, weights_only=True)
    broken = {**old, "discriminator": {"embedding.weight": torch.zeros(2, 2)}}
    with pytest.raises(InputError, match="highway.gate.bias"):
        load_bundle(bundle_bytes(broken))


def test_discriminator_epochs_of_a_round_repeat_one_shuffled_batch_order(monkeypatch):
    """The original shuffles positives + negatives once per round and its 3 epochs read the same batches."""
    config = tiny_config(d_epochs=3)
    train, _, _ = tiny_task(config)
    trainer = Trainer(config, train)
    seen = []
    original = Discriminator.loss

    def recording(self, logits, labels):
        seen.append(labels.clone())
        return original(self, logits, labels)

    monkeypatch.setattr(Discriminator, "loss", recording)
    trainer.discriminator_round()
    per_epoch = len(seen) // 3
    assert per_epoch > 1 and len(seen) == 3 * per_epoch
    assert all(torch.equal(a, b) for a, b in zip(seen[:per_epoch], seen[per_epoch:2 * per_epoch]))
    assert all(torch.equal(a, b) for a, b in zip(seen[:per_epoch], seen[2 * per_epoch:]))
    assert not all(torch.equal(seen[0], s) for s in seen[1:per_epoch])  # shuffled: batches differ


@pytest.mark.parametrize("order", ["fixed", "reshuffle"])
def test_mle_epochs_read_one_fixed_order_or_reshuffle_on_request(monkeypatch, order):
    """The original reads its training file in the same order every epoch; ``reshuffle`` draws a new one."""
    config = tiny_config(mle_order=order, batch_size=8)
    train, _, _ = tiny_task(config)
    trainer = Trainer(config, train)
    seen = []
    original = Generator.nll

    def recording(self, tokens, *args, **kwargs):
        seen.append(tokens.clone())
        return original(self, tokens, *args, **kwargs)

    monkeypatch.setattr(Generator, "nll", recording)
    trainer.mle_epoch(0)
    trainer.mle_epoch(1)
    per_epoch = len(train) // 8
    assert len(seen) == 2 * per_epoch
    first, second = torch.cat(seen[:per_epoch]), torch.cat(seen[per_epoch:])
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, train.tolist()))  # every row once an epoch
    assert not torch.equal(first, train)  # an order drawn from the seed, not the rows as given
    assert torch.equal(first, second) == (order == "fixed")


def test_adam_takes_tensorflow_1s_update_and_torchs_on_request():
    """TensorFlow 1's Adam: lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), eps before the bias correction
    (the original's). Gradients from 1e-2 down to 0, where the placement of eps decides the update."""
    train, _, _ = tiny_task(tiny_config())
    grads = torch.tensor([1e-2, 1e-5, 1e-7, 3e-8, 1e-9, 0.0], dtype=torch.float64)
    finals = {}
    for placement in ("tf1", "torch"):
        trainer = Trainer(tiny_config(adam_epsilon=placement), train)
        weight = torch.nn.Parameter(torch.zeros(len(grads)))
        optimizer = torch.optim.Adam([weight], lr=0.01)
        m, v, tf1 = (torch.zeros(len(grads), dtype=torch.float64) for _ in range(3))
        for t in range(1, 6):
            g = grads * (1 + 0.25 * t)
            trainer._step(optimizer, (weight * g.float()).sum())
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            tf1 -= 0.01 * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (v.sqrt() + 1e-8)
            if placement == "tf1":
                assert torch.allclose(weight.detach().double(), tf1, rtol=1e-5, atol=1e-12), t
        finals[placement] = weight.detach().double()
    assert not torch.allclose(finals["torch"][1:5], tf1[1:5], rtol=0.01)  # torch's epsilon: larger steps there
    assert torch.allclose(finals["torch"][:1], tf1[:1], rtol=1e-3)  # and the same where gradients are large


def test_configurations_saved_before_an_option_keep_the_behaviour_of_their_time():
    assert (TrainConfig().adam_epsilon, TrainConfig().mle_order) == ("tf1", "fixed")
    saved = TrainConfig(vocab_size=50, seq_len=8).to_dict()
    assert TrainConfig.from_dict(saved) == TrainConfig(vocab_size=50, seq_len=8)
    del saved["adam_epsilon"], saved["mle_order"]
    old = TrainConfig.from_dict(saved)
    assert (old.adam_epsilon, old.mle_order) == ("torch", "reshuffle")
    with pytest.raises(ConfigError, match="adam_epsilon must be one of tf1, torch"):
        TrainConfig(vocab_size=50, seq_len=8, adam_epsilon="tf2").validate()
    with pytest.raises(ConfigError, match="mle_order must be one of fixed, reshuffle"):
        TrainConfig(vocab_size=50, seq_len=8, mle_order="file").validate()


# ----- 5. a tiny run through every phase ------------------------------------------------------------------------
def test_tiny_run_through_all_phases(tmp_path):
    config = tiny_config()
    train, heldout, evaluate = tiny_task(config)
    seen = []
    trainer = Trainer(config, train, tmp_path / "run", evaluate, seen.append)
    assert trainer.run() == "finished"
    run = RunDir(tmp_path / "run")

    events = run.events()
    assert without_times(events) == without_times(json.loads(json.dumps(seen)))  # callback == metrics.jsonl
    assert [e["unit"] for e in events] == list(range(-1, len(config.units())))
    init, rest = events[0], events[1:]
    assert init["phase"] == "init" and {"nll_oracle", "nll_test"} <= init.keys()
    totals = {"mle": config.mle_epochs, "d_pretrain": config.d_pretrain_rounds, "adversarial": config.adv_iters}
    assert [e["phase"] for e in rest] == [p for p, _ in config.units()]
    for e in rest:
        phase, step, total = e["phase"], e["step"], e["total"]
        assert total == totals[phase] and 1 <= step <= total
        if phase == "mle":
            assert math.isfinite(e["mle_loss"]) and e["mle_loss"] > 0 and "pg_loss" not in e
        if phase == "adversarial":
            assert math.isfinite(e["pg_loss"]) and "mle_loss" not in e
        if phase in ("d_pretrain", "adversarial"):
            assert math.isfinite(e["d_loss"]) and e["d_loss"] > 0
            assert 0.0 <= e["d_acc"] <= 1.0
        if phase == "adversarial":
            assert 0.0 <= e["reward_mean"] <= 1.0
        assert 0.0 < e["mfu"] < 1.0  # the share of the measured matmul peak (tiny networks: a small one)
        evaluated = phase != "d_pretrain" and ((step - 1) % config.eval_every == 0 or step == total)
        assert ({"nll_oracle", "nll_test"} <= e.keys()) == evaluated, e
        if evaluated:
            assert 0 < e["nll_test"] < 10 and 0 < e["nll_oracle"] < 10
    assert [e["step"] for e in rest if e["phase"] == "mle"] == list(range(1, config.mle_epochs + 1))

    bundles = {role: load_bundle(run.checkpoint(role)) for role in ("mle", "seqgan", "latest")}
    units = len(config.units())
    for role, bundle in bundles.items():
        assert bundle["format"] == FORMAT and bundle["role"] == role and bundle["kind"] == "tokens"
        assert bundle["config"] == config.to_dict()
        assert {"discriminator", "optimizers", "rng", "position"} <= bundle.keys()
    assert bundles["mle"]["position"] == {"unit": config.mle_epochs, "total": units}
    assert bundles["seqgan"]["position"] == bundles["latest"]["position"] == {"unit": units, "total": units}
    assert state_equal(bundles["latest"]["generator"], trainer.generator.state_dict())
    assert state_equal(bundles["latest"]["discriminator"], trainer.discriminator.state_dict())
    assert state_equal(bundles["seqgan"]["generator"], bundles["latest"]["generator"])
    assert not state_equal(bundles["mle"]["generator"], bundles["seqgan"]["generator"])
    # The original's LSTM has one bias per gate: nn.LSTM's second bias stays zero through MLE and policy gradient.
    for role in ("mle", "seqgan"):
        assert not bundles[role]["generator"]["lstm.bias_hh_l0"].any()
        assert bundles[role]["generator"]["lstm.bias_ih_l0"].std() > 0
    # mle.pt is the generator at the end of MLE: it reproduces that evaluation's NLL-test.
    G = Generator(config.vocab_size, config.g_emb_dim, config.g_hidden_dim)
    G.load_state_dict(bundles["mle"]["generator"])
    last_mle = [e for e in rest if e["phase"] == "mle"][-1]
    assert nll_under(G, heldout) == pytest.approx(last_mle["nll_test"], abs=1e-6)

    status = run.read_json(run.status)
    assert status["state"] == "finished" and status["device"] == "cpu"
    assert status["unit"] == status["units"] == units
    assert status["peak_flops"] == trainer.peak_flops > 1e8


def test_adversarial_evaluations_score_held_out_data_with_the_discriminator(tmp_path):
    """Given held-out data, adversarial evaluations add D's mean P(real) of training positives, held-out sequences
    and fresh samples; scoring them changes neither training nor the other metrics."""
    config = tiny_config()
    train, heldout, evaluate = tiny_task(config)
    plain = Trainer(config, train, tmp_path / "plain", evaluate)
    assert plain.run() == "finished"
    scored = Trainer(config, train, tmp_path / "scored", evaluate, heldout=heldout)  # seeds torch's RNG again
    assert scored.run() == "finished"
    keys = {"d_train_real", "d_heldout_real", "d_generated"}
    plain_events, scored_events = RunDir(tmp_path / "plain").events(), RunDir(tmp_path / "scored").events()
    assert not any(keys & e.keys() for e in plain_events)
    for e in scored_events:
        assert (keys <= e.keys()) == (e["phase"] == "adversarial" and "nll_oracle" in e), e
        assert all(0.0 <= e[k] <= 1.0 for k in keys & e.keys())
    assert without_times(plain_events) == without_times([{k: v for k, v in e.items() if k not in keys}
                                                         for e in scored_events])
    assert state_equal(plain.generator.state_dict(), scored.generator.state_dict())
    assert state_equal(plain.discriminator.state_dict(), scored.discriminator.state_dict())
    # As in the original, an adversarial evaluation comes after the generator's step and before the iteration's
    # discriminator rounds: its scores are those of the D that one iteration fewer ends with, not the final D.
    shorter = Trainer(tiny_config(adv_iters=config.adv_iters - 1), train, heldout=heldout)
    assert shorter.run() == "finished"
    last, before, after = scored_events[-1], shorter.discriminator.eval(), scored.discriminator.eval()
    with torch.no_grad():
        for D, match in ((before, True), (after, False)):
            assert (last["d_train_real"] == pytest.approx(float(D.prob_real(train[:len(heldout)]).mean()),
                                                          abs=1e-6)) == match
            assert (last["d_heldout_real"] == pytest.approx(float(D.prob_real(heldout).mean()), abs=1e-6)) == match
    with pytest.raises(ConfigError, match="held-out data must be"):
        Trainer(config, train, heldout=heldout[:, :3])
    with pytest.raises(ConfigError, match="held-out data has token ids outside"):
        Trainer(config, train, heldout=heldout + config.vocab_size)


def test_a_slim_checkpoint_cannot_continue_training_wherever_it_is_resumed(tmp_path):
    """run_to_end (the experiments) and seqgan train --resume both go through Trainer.restore."""
    from seqgan.checkpoint import slim_bundle

    config = tiny_config(adv_iters=1)
    train, _, evaluate = tiny_task(config)
    trainer = Trainer(config, train, tmp_path / "run", evaluate)
    assert trainer.run() == "finished"
    latest = RunDir(tmp_path / "run").checkpoint("latest")
    save_bundle(slim_bundle(load_bundle(latest)), latest)
    with pytest.raises(InputError, match=r"latest.pt: has no discriminator, optimizers, rng: a slim"):
        Trainer(config, train).restore(load_bundle(latest), name=str(latest))
    (tmp_path / "run" / "status.json").unlink()  # as if it had not finished: run_to_end resumes it
    with pytest.raises(InputError, match="cannot continue training"):
        run_to_end(Trainer(config, train, tmp_path / "run", evaluate))


def test_the_work_counted_for_the_hardware_share_is_that_of_the_networks_products():
    """``flops`` counts what torch's FLOP counter counts for the same networks (plain layers, forward and
    backward): the discriminator exactly, the generator's step as an LSTM cell and the output projection."""
    V, E, H, T, B = 50, 8, 16, 7, 12
    D = Discriminator(V, T, 8, [2, 3, 7], [4, 5, 3], 0.75, 0.2)
    tokens = torch.randint(0, V, (B, T), generator=seeded(3))
    with plain_kernels(), FlopCounterMode(display=False) as counter:
        D(tokens).sum().backward()
    assert counter.get_total_flops() == 3 * B * flops.discriminator_forward(T, 8, [2, 3, 7], [4, 5, 3])
    cell, projection = torch.nn.LSTMCell(E, H), torch.nn.Linear(H, V)
    with FlopCounterMode(display=False) as counter:
        projection(cell(torch.zeros(B, E))[0])
    assert counter.get_total_flops() == B * flops.generator_step(V, E, H)
    # a unit's work is its pieces': an adversarial iteration is its generator steps and discriminator rounds
    config = tiny_config(g_steps=2, d_steps=3)
    assert flops.unit(config, "adversarial", 100) == pytest.approx(
        2 * flops.generator_pg_step(config) + 3 * flops.unit(config, "d_pretrain", 100))
    assert flops.unit(replace(config, reward="bleu"), "adversarial", 100) == 2 * flops.generator_pg_step(
        replace(config, reward="bleu")) < 2 * flops.generator_pg_step(config)


@pytest.mark.parametrize("num_train, overrides", [(25, {}), (70, dict(d_batch_size=30)), (70, dict(reward="bleu"))])
def test_the_work_counted_for_each_piece_is_what_the_trainer_does(num_train, overrides):
    """An MLE epoch, a discriminator round and a policy-gradient step, counted as they run (torch's FLOP counter
    with plain layers, plus the LSTM's gates, which it does not see), against ``flops``: corpora smaller and
    larger than num_negatives, partial batches dropped, the rollout's shared first step, PG-BLEU without D."""
    config = tiny_config(**{"batch_size": 16, "num_negatives": 40, "d_batch_size": 32, "d_epochs": 2,
                            "rollouts": 3, **overrides})
    train = random_oracle(11, config.vocab_size, 8, 8).sample(num_train, config.seq_len, generator=seeded(11))
    bleu = (lambda tokens: torch.ones(len(tokens))) if config.reward == "bleu" else None
    trainer = Trainer(config, train, reward_fn=bleu)
    lstm, gates = trainer.generator.lstm, 2 * 4 * config.g_hidden_dim * (config.g_emb_dim + config.g_hidden_dim)
    lstm_work = [0]

    def counted_lstm(x, state=None, forward=lstm.forward):
        lstm_work[0] += x.shape[0] * x.shape[1] * gates * (3 if torch.is_grad_enabled() else 1)
        return forward(x, state)

    lstm.forward = counted_lstm

    def work_of(piece) -> float:
        lstm_work[0] = 0
        with plain_kernels(), FlopCounterMode(display=False) as counter:
            piece()
        return counter.get_total_flops() + lstm_work[0]

    assert work_of(lambda: trainer.mle_epoch(0)) == pytest.approx(flops.mle_epoch(config, num_train), rel=0.01)
    if config.reward == "discriminator":
        assert work_of(trainer.discriminator_round) == pytest.approx(flops.discriminator_round(config, num_train),
                                                                    rel=0.01)
    assert work_of(trainer.generator_pg_step) == pytest.approx(flops.generator_pg_step(config), rel=0.01)


# ----- 6. stop and resume give exactly the weights of an uninterrupted run ---------------------------------------
def test_stop_and_resume_is_exactly_an_uninterrupted_run(tmp_path):
    config = tiny_config(mle_epochs=4, d_pretrain_rounds=2, adv_iters=4, eval_every=3)
    train, _, evaluate = tiny_task(config)
    units = config.units()
    mid_mle = units.index(("mle", 1))
    mid_adv = units.index(("adversarial", 1))

    reference = Trainer(config, train, tmp_path / "reference", evaluate)
    assert reference.run() == "finished"

    def stop_at(unit):
        def callback(event):
            if event["unit"] == unit:
                holder[0].request_stop()
        holder = []
        return holder, callback

    run_dir = tmp_path / "resumed"
    latest = RunDir(run_dir).checkpoint("latest")
    positions = []
    for stop in (mid_mle, mid_adv, None):  # each leg is a new Trainer, as after a restart
        holder, callback = stop_at(stop)
        trainer = Trainer(config, train, run_dir, evaluate, callback)
        holder.append(trainer)
        if latest.exists():
            trainer.restore(load_bundle(latest))
        positions.append(trainer.unit)
        assert trainer.run() == ("finished" if stop is None else "stopped")
    assert positions == [0, mid_mle + 1, mid_adv + 1]

    assert state_equal(trainer.generator.state_dict(), reference.generator.state_dict())
    assert state_equal(trainer.discriminator.state_dict(), reference.discriminator.state_dict())
    for name, opt in trainer.optimizers.items():
        ours, theirs = opt.state_dict()["state"], reference.optimizers[name].state_dict()["state"]
        assert all(state_equal(ours[k], theirs[k]) for k in theirs), f"optimizer {name} differs"
    events, expected = RunDir(run_dir).events(), RunDir(tmp_path / "reference").events()
    assert [e["unit"] for e in events] == list(range(-1, len(units)))  # no unit twice, none missing
    assert without_times(events) == without_times(expected)
    assert RunDir(run_dir).read_json(RunDir(run_dir).status)["state"] == "finished"


def test_a_checkpoint_from_another_optimizer_implementation_resumes_with_this_machines(tmp_path):
    """A bundle written with the unfused Adam (another machine or an older version) resumes with the
    implementation ``train.adam`` chose here, and the same numbers as an uninterrupted unfused run."""
    config = tiny_config(mle_epochs=3, d_pretrain_rounds=0, adv_iters=0)
    train, _, evaluate = tiny_task(config)

    def unfused_trainer(name, callback=None):
        trainer = Trainer(config, train, tmp_path / name, evaluate, callback)
        trainer.optimizers = {key: torch.optim.Adam(opt.param_groups[0]["params"], lr=opt.param_groups[0]["lr"])
                              for key, opt in trainer.optimizers.items()}  # as saved elsewhere
        return trainer

    reference = unfused_trainer("reference")
    assert reference.run() == "finished"
    first = unfused_trainer("run", lambda event: event["unit"] == 1 and first.request_stop())
    assert first.run() == "stopped"
    bundle = load_bundle(RunDir(tmp_path / "run").checkpoint("latest"))
    assert all(not g.get("fused") for g in bundle["optimizers"]["mle"]["param_groups"])

    resumed = Trainer(config, train, tmp_path / "run", evaluate)
    chosen = resumed.optimizers["mle"].param_groups[0].get("fused")
    resumed.restore(bundle)
    assert resumed.optimizers["mle"].param_groups[0].get("fused") == chosen
    assert resumed.run() == "finished"
    for a, b in zip(resumed.generator.parameters(), reference.generator.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resume_from_an_earlier_checkpoint_drops_later_events_and_repeats_them_exactly(tmp_path):
    config = tiny_config(mle_epochs=2, d_pretrain_rounds=1, adv_iters=2, eval_every=1)
    train, _, evaluate = tiny_task(config, seed=13)
    first = Trainer(config, train, tmp_path / "run", evaluate)
    assert first.run() == "finished"
    run = RunDir(tmp_path / "run")
    finished_events = without_times(run.events())

    again = Trainer(config, train, run, evaluate)
    again.restore(load_bundle(run.checkpoint("mle")))  # the end of MLE: units after it are to be redone
    assert again.unit == config.mle_epochs
    assert [e["unit"] for e in run.events()] == list(range(-1, config.mle_epochs))
    assert again.run() == "finished"
    assert without_times(run.events()) == finished_events
    assert state_equal(again.generator.state_dict(), first.generator.state_dict())
    assert state_equal(again.discriminator.state_dict(), first.discriminator.state_dict())


def test_a_run_directory_another_process_trains_is_refused_until_that_process_ends(tmp_path):
    config = tiny_config(mle_epochs=1, d_pretrain_rounds=1, adv_iters=1)
    train, _, evaluate = tiny_task(config)
    run = RunDir(tmp_path / "run").create()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from seqgan.runs import RunDir; "
                               f"RunDir({str(run.path)!r}).claim(); print('claimed', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(RunInUse, match=f"another process \\(pid {holder.pid}\\) is training this run"):
            Trainer(config, train, run.path, evaluate)
        assert not run.metrics.exists() and not run.status.exists()  # the refused trainer wrote nothing
    finally:
        holder.kill()
        holder.wait()
    trainer = Trainer(config, train, run.path, evaluate)  # the lock went with the process
    assert Trainer(config, train, run.path, evaluate).run() == "finished"  # the same process may claim it again
    assert trainer.run_dir.finished()
    # a folder deleted and made again is another run: this process holds it only once it claims it anew
    shutil.rmtree(run.path)
    Trainer(config, train, run.path, evaluate)
    other = subprocess.run([sys.executable, "-c", f"from seqgan.runs import RunDir; RunDir({str(run.path)!r}).claim()"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert other.returncode != 0 and f"another process (pid {os.getpid()}) is training this run" in other.stderr


# ----- 7. configuration errors and tampered checkpoints ----------------------------------------------------------
@pytest.mark.parametrize("overrides, option", [
    (dict(seq_len=1), "seq_len"),
    (dict(mle_epochs=-1), "mle_epochs"),
    (dict(adv_iters=-2), "adv_iters"),
    (dict(seq_len=4, d_filter_sizes=[2, 5], d_num_filters=[3, 3]), "d_filter_sizes"),
    (dict(d_filter_sizes=[2, 3], d_num_filters=[4]), "d_num_filters"),
    (dict(d_filter_sizes=[2, 3], d_num_filters=[4, 0]), "d_num_filters"),
    (dict(reward="foo"), "reward"),
    (dict(baseline="max"), "baseline"),
    (dict(reward_norm="minmax"), "reward_norm"),
    (dict(critic="hinge"), "critic"),
    (dict(gp_weight=-1.0), "gp_weight"),
    (dict(d_dropout_keep=0.0), "d_dropout_keep"),
    (dict(mle_lr=float("nan")), "mle_lr"),
    (dict(pg_lr=float("inf")), "pg_lr"),
    (dict(d_lr=-1e-4), "d_lr"),
    (dict(scheduled_sampling=1.5), "scheduled_sampling"),
    (dict(start_token=20), "start_token"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(rollouts=0), "rollouts"),
    (dict(checkpoint_seconds=-1.0), "checkpoint_seconds"),
    (dict(device="tpu"), "device"),
    (dict(d_precision="fp16"), "d_precision"),
])
def test_bad_configuration_values_name_the_option(overrides, option):
    config = tiny_config(**overrides)
    with pytest.raises(ConfigError) as info:
        config.validate()
    assert option in str(info.value), f"the message does not name {option}: {info.value}"
    with pytest.raises(ConfigError):  # the trainer refuses it as well, before any work
        Trainer(config, torch.zeros(4, max(config.seq_len, 1), dtype=torch.long))


def test_trainer_refuses_data_that_does_not_fit_the_config():
    config = tiny_config()
    with pytest.raises(ConfigError, match="0..19"):
        Trainer(config, torch.full((4, 6), 20))
    with pytest.raises(ConfigError, match="6"):
        Trainer(config, torch.zeros(4, 5, dtype=torch.long))


def test_devices_this_machine_lacks_are_configuration_errors(monkeypatch):
    """A bad device string, or a GPU index beyond the GPUs there are, is a ConfigError naming the device (here
    torch is told it has one GPU: this machine has none)."""
    from seqgan.train import bf16_capable, resolve_device

    with pytest.raises(ConfigError, match="cuda:x"):
        resolve_device("cuda:x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"'cuda:1'.* 1 GPU\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:1")
    # bf16 is native from compute capability 8.0 (Ampere); the question is asked of the run's own GPU
    capability = {0: (7, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability[device.index])
    assert not bf16_capable(torch.device("cuda", 0)) and bf16_capable(torch.device("cuda", 1))
    assert bf16_capable(torch.device("cpu"))


def test_checkpoints_hold_cpu_tensors_and_state_dicts_keep_their_metadata():
    from seqgan.kernels import rows_per_chunk
    from seqgan.train import on_cpu

    state = torch.nn.Linear(3, 2).state_dict()
    moved = on_cpu({"g": state, "opt": [torch.ones(2), (torch.zeros(1), 5)], "n": 3})
    assert type(moved["g"]) is type(state) and moved["g"]._metadata == state._metadata
    assert isinstance(moved["opt"][1], tuple) and moved["n"] == 3 and torch.equal(moved["opt"][0], torch.ones(2))
    # chunks of rows: cache-sized on CPU; on other devices (here the meta device stands for a GPU) ~256 MB
    assert rows_per_chunk(torch.empty(10, device="cpu"), 256, 5000) == 256
    assert rows_per_chunk(torch.empty(10, device="meta"), 256, 5000) == (1 << 26) // 5000


class _RunsACommand:
    """Unpickling this runs a shell command: a hostile checkpoint or oracle file."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture
def small_bundle(tmp_path):
    config = tiny_config()
    trainer = Trainer(config, torch.zeros(4, 6, dtype=torch.long))
    path = tmp_path / "good.pt"
    save_bundle(trainer.bundle("latest"), path)
    return path


def test_a_good_bundle_loads(small_bundle):
    bundle = load_bundle(small_bundle)
    assert bundle["format"] == FORMAT
    assert load_bundle(small_bundle.read_bytes())["config"] == bundle["config"]


def test_tampered_checkpoints_are_refused_without_running_code(tmp_path, small_bundle):
    marker = tmp_path / "code-ran"
    good = small_bundle.read_bytes()
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": FORMAT, "kind": "tokens", "config": {}, "generator": {},
                "extra": _RunsACommand(f"touch {marker}")}, hostile)
    garbage = bytes(torch.randint(0, 256, (4096,), generator=seeded(1), dtype=torch.uint8).tolist())
    cases = {
        "random.pt": garbage,
        "truncated.pt": good[:len(good) // 2],
        "empty.pt": b"",
        "hostile.pt": hostile.read_bytes(),
        "foreign.pt": bundle_bytes({"weights": torch.zeros(3)}),
        "incomplete.pt": bundle_bytes({"format": FORMAT, "kind": "tokens"}),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError) as info:
            load_bundle(path)
        assert str(path) in str(info.value), name
        with pytest.raises(InputError):
            load_bundle(data, name="upload")
    with pytest.raises(InputError, match="no such"):
        load_bundle(tmp_path / "missing.pt")
    assert not marker.exists(), "loading a checkpoint ran code from it"



def test_fused_weighted_nll_matches_autograd_loss_and_gradients():
    """Generator.weighted_nll (loss and gradient in one chunked pass) equals -sum(log G * w) through autograd."""
    from seqgan.kernels import LinearCrossEntropy

    torch.manual_seed(0)
    G = Generator(37, emb_dim=6, hidden_dim=5)
    tokens = torch.randint(0, 37, (9, 7))
    weights = torch.randn(9, 7)  # rewards may be negative once a baseline is subtracted
    reference = -(G.log_probs(tokens) * weights).sum()
    trained = [p for p in G.parameters() if p.requires_grad]
    expected = torch.autograd.grad(reference, trained)
    for chunk in (4, LinearCrossEntropy.CHUNK):  # several chunks, and one chunk holding every row
        old, LinearCrossEntropy.CHUNK = LinearCrossEntropy.CHUNK, chunk
        try:
            fused = G.weighted_nll(tokens, weights)
            got = torch.autograd.grad(fused, trained)
        finally:
            LinearCrossEntropy.CHUNK = old
        assert torch.allclose(fused, reference, rtol=1e-5, atol=1e-5)
        for g, e in zip(got, expected):
            assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)
    assert torch.allclose(G.nll(tokens), torch.nn.functional.cross_entropy(G(tokens).reshape(-1, 37),
                                                                           tokens.reshape(-1)), atol=1e-6)


@pytest.mark.parametrize("leaders", [1, 3])  # the top token alone, or three sharing the top (probability 1/3)
def test_fused_loss_is_exact_where_a_probability_underflows(leaders):
    """Targets 60 to 200 nats below the top logits: probs[y] is tiny or 0 in fp32, yet each row's loss is the
    float64 log-softmax (those rows' losses come from the logits' logsumexp, not from log(probs[y]))."""
    from seqgan.kernels import LinearCrossEntropy, target_log_probs

    torch.manual_seed(0)
    hidden = torch.randn(7, 4)
    weight, bias = torch.randn(11, 4) * 1e-3, torch.zeros(11)
    bias[:leaders] = 200.0
    bias[8] = 140.0  # the last row's target: probability ~1e-26, a normal float, log(probs[y]) is exact
    targets = torch.tensor([3, 4, 5, 6, 7, 0, 8])
    row_weights = torch.tensor([1.0, 0.5, 2.0, 1.0, 1.0, 3.0, 1.0])
    logits = hidden.double() @ weight.double().t() + bias.double()
    expected_logp = torch.log_softmax(logits, 1).gather(1, targets.unsqueeze(1)).squeeze(1)
    expected = -(row_weights.double() * expected_logp)
    for row in range(7):  # one row at a time: an error in one would hide in a sum of ~1,000
        loss = LinearCrossEntropy.apply(hidden[row:row + 1], weight, bias, targets[row:row + 1],
                                        row_weights[row:row + 1])
        assert loss.item() == pytest.approx(expected[row].item(), rel=1e-6, abs=1e-4), row  # fp32 logits near 200
    fp32_logits = logits.float()
    for find_rows in (True, False):  # the CPU's way and the GPU's, on the CPU
        got = target_log_probs(fp32_logits, torch.softmax(fp32_logits, 1), targets, find_rows=find_rows)
        assert torch.allclose(got.double(), expected_logp, rtol=1e-6, atol=1e-4), find_rows


@pytest.mark.parametrize("rows", [0, 5, 300])  # none (the plain layers then run), one chunk of pooled_conv, several
def test_cpu_fast_paths_give_what_the_plain_layers_give(rows, monkeypatch):
    """On CPU, linear layers run through oneDNN and the convolutions as im2col products, forward and gradients:
    each gives what the plain torch layers give."""
    from seqgan import kernels

    if not kernels._onednn_linear_works():
        pytest.skip("this torch build has no oneDNN linear kernel: only the plain path exists")
    torch.manual_seed(0)
    D = Discriminator(30, 12, emb_dim=8, filter_sizes=(1, 3, 12), num_filters=(5, 6, 7)).eval()
    tokens = torch.randint(0, 30, (rows, 12))
    x = torch.randn(rows, 9)
    weight, bias = torch.randn(4, 9), torch.randn(4)

    def outputs():
        with torch.no_grad():
            embedded = D.embedding(tokens)
            return [D(tokens), D.pooled_conv(D.convs[1], embedded[:, 4:]),  # a view that starts mid-sequence
                    *(kernels.linear(x, weight, bias, a) for a in ("none", "relu", "sigmoid")),
                    kernels.linear(x.view(rows, 1, 9).expand(rows, 3, 9), weight, bias, "relu")]  # [..., in]

    fast = outputs()
    monkeypatch.setattr(kernels, "USE_ONEDNN", False)
    plain = outputs()
    for f, p in zip(fast, plain):
        torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-5)
    # the discriminator's gradients (oneDNN linears in the highway)
    upstream = torch.randn(rows, 2)
    grads = []
    for use_onednn in (True, False):
        monkeypatch.setattr(kernels, "USE_ONEDNN", use_onednn)
        grads.append(torch.autograd.grad(D(tokens), list(D.parameters()), upstream))
    for (name, _), f, p in zip(D.named_parameters(), *grads):
        torch.testing.assert_close(f, p, rtol=1e-4, atol=1e-5, msg=name)
    for params in ((x, weight, bias), (x, weight, None)):
        params = [p.clone().requires_grad_(True) if p is not None else None for p in params]
        upstream = torch.randn(rows, 4)
        for activation in ("none", "relu", "sigmoid"):
            grads = []
            for use_onednn in (True, False):
                monkeypatch.setattr(kernels, "USE_ONEDNN", use_onednn)
                out = kernels.linear(*params, activation)
                grads.append(torch.autograd.grad(out, [p for p in params if p is not None], upstream))
            for f, p in zip(*grads):
                torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "starts mid-sequence", "every other row", "one row expanded"])
def test_pooled_conv_gradients_equal_conv1d_relu_amax_on_views(layout):
    """PooledConv's output and gradients (x, weight, bias) against Conv1d -> ReLU -> amax with autograd, on the
    views the discriminator can pass it: rows [b, T', E] with any row stride and a storage offset."""
    from seqgan import kernels

    if not kernels._onednn_linear_works():
        pytest.skip("this torch build has no oneDNN linear kernel: only the plain path exists")
    torch.manual_seed(1)
    base = torch.randn(8, 12, 6)
    x = {"contiguous": base, "starts mid-sequence": base[:, 4:], "every other row": base[::2],
         "one row expanded": base[:1].expand(5, 12, 6)}[layout]
    conv = torch.nn.Conv1d(6, 7, 3)
    upstream = torch.randn(len(x), 7)
    results = []
    for fast in (True, False):
        leaf = x.detach().requires_grad_(True)  # the view itself, strides and offset kept
        out = (kernels.PooledConv.apply(leaf, conv.weight, conv.bias) if fast
               else torch.nn.functional.relu(conv(leaf.transpose(1, 2))).amax(dim=2))
        results.append((out, *torch.autograd.grad(out, (leaf, conv.weight, conv.bias), upstream)))
    for f, p, name in zip(*results, ("output", "x", "weight", "bias")):
        torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-5, msg=name)


def test_pooled_conv_shares_the_gradient_of_equal_windows_evenly_as_amax_does():
    """A sequence of one repeated token: every window of a width is the same, so each map's maximum is reached at
    every position, and its gradient is shared evenly among them (amax's rule); maps the ReLU zeroes get none."""
    from seqgan import kernels

    if not kernels._onednn_linear_works():
        pytest.skip("this torch build has no oneDNN linear kernel: only the plain path exists")
    torch.manual_seed(0)
    T, E, width, maps = 7, 4, 3, 5
    # small integers: every window's sum is exact in any order of addition, so the ties are exact on any CPU
    x = torch.randint(-2, 3, (1, 1, E)).float().expand(2, T, E).contiguous().requires_grad_(True)
    weight = torch.randint(-2, 3, (maps, E, width)).float().requires_grad_(True)
    bias = torch.randint(-2, 3, (maps,)).float().requires_grad_(True)
    upstream = torch.randn(2, maps)
    pooled = kernels.PooledConv.apply(x, weight, bias)
    grad_x, grad_weight, grad_bias = torch.autograd.grad(pooled, (x, weight, bias), upstream)

    live = upstream * (pooled > 0)  # maps the ReLU left above zero
    assert 0 < (pooled > 0).sum() < pooled.numel()  # some of each, so both rules are tested
    positions = T - width + 1
    expected_x = torch.zeros(2, T, E)
    for k in range(width):  # each window's share, back to the positions it covers
        expected_x[:, k:k + positions] += ((live / positions) @ weight[:, :, k].detach()).unsqueeze(1)
    torch.testing.assert_close(grad_x, expected_x)
    torch.testing.assert_close(grad_bias, live.sum(0))
    torch.testing.assert_close(grad_weight, live.sum(0)[:, None, None] * x[0, :width].detach().t())  # [maps, E, width]


# ----- 8. options beyond the paper: reward baseline and normalisation, the Wasserstein critic -------------------
def test_reward_baseline_and_normalisation_work_at_each_step_over_the_batch():
    trainer = Trainer(tiny_config(batch_size=8), tiny_task(tiny_config())[0])
    rewards = torch.rand(8, 6, generator=seeded(3)) * torch.arange(1.0, 7.0)  # a different spread at each step
    centred = trainer._standardize(rewards, divide=False)
    torch.testing.assert_close(centred, rewards - rewards.mean(dim=0))
    normalised = trainer._standardize(rewards, divide=True)
    torch.testing.assert_close(normalised.mean(dim=0), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(normalised.std(dim=0, unbiased=False), torch.ones(6), atol=1e-5, rtol=0)
    same = trainer._standardize(torch.full((8, 6), 0.3), divide=True)  # no spread: zeros, not NaN
    assert same.abs().max() < 1e-6


def tiny_discriminator(seed: int = 21, vocab: int = 9, T: int = 6) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(vocab, T, emb_dim=8, filter_sizes=(1, 2, 3), num_filters=(4, 4, 4), dropout_keep=1.0)


def test_critic_loss_is_the_score_gap_plus_the_gradient_penalty():
    from seqgan.train import critic_loss

    D = tiny_discriminator()
    tokens = torch.randint(0, 9, (10, 6), generator=seeded(4))
    labels = torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 0, 0])  # 4 real, 6 generated: 4 pairs for the penalty
    score = D(tokens)[:, 1] - D(tokens)[:, 0]
    gap = score[labels == 0].mean() - score[labels == 1].mean() + D.l2_reg * D.l2_penalty()
    loss, logits = critic_loss(D, tokens, labels, gp_weight=0.0)
    torch.testing.assert_close(loss, gap)
    torch.testing.assert_close(logits, D(tokens))

    torch.manual_seed(7)
    with_penalty, _ = critic_loss(D, tokens, labels, gp_weight=10.0)
    torch.manual_seed(7)  # the same interpolation weights, computed here by hand
    alpha = torch.rand(4, 1, 1)
    real, fake = D.embedding(tokens[labels == 1]), D.embedding(tokens[labels == 0][:4])
    mixed = (alpha * real + (1 - alpha) * fake).detach().requires_grad_(True)
    with plain_kernels():  # as critic_loss: equal windows (a token repeated) tie, and Conv1d breaks ties its own way
        logits_mixed = D.output(D.highway(D.embedded_features(mixed)))
        [grad] = torch.autograd.grad((logits_mixed[:, 1] - logits_mixed[:, 0]).sum(), mixed)
    penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(with_penalty, gap + 10.0 * penalty)
    with_penalty.backward()  # the penalty is differentiable in D's weights (a second-order gradient)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.convs.parameters())


def test_the_critic_learns_to_score_real_sequences_above_generated_ones():
    from seqgan.train import critic_loss

    D = tiny_discriminator()
    real = torch.randint(0, 3, (64, 6), generator=seeded(5))      # real data uses tokens 0-2 only
    fake = torch.randint(3, 9, (64, 6), generator=seeded(6))      # the "generator" uses 3-8
    tokens, labels = torch.cat([real, fake]), torch.cat([torch.ones(64), torch.zeros(64)]).long()
    optimizer = torch.optim.Adam(D.parameters(), lr=1e-2)
    for _ in range(60):
        loss, _ = critic_loss(D, tokens, labels, gp_weight=10.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    reward = discriminator_reward(D, critic=True)
    assert reward(real).min() > reward(fake).max()
    assert reward(real).mean() - reward(fake).mean() > 1.0  # an unbounded score, not a probability
    assert (reward(fake) < 0).all() or (reward(real) > 1).all()


def test_critic_rewards_of_completions_share_prefix_windows_exactly():
    vocab, B, T, N = 9, 4, 6, 3
    G = peaky_generator(vocab, seed=12)
    D = tiny_discriminator()
    sequences = G.sample(B, T, generator=seeded(14))
    completions = batched_rollout(G, sequences, N, generator_rng=seeded(15))
    with torch.no_grad():
        logits = D(completions.reshape(-1, T))
        expected = (logits[:, 1] - logits[:, 0]).view(T - 1, N, B)
    shared = discriminator_reward(D, critic=True).score_completions(completions, sequences)
    torch.testing.assert_close(shared, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", [dict(baseline="mean"), dict(reward_norm="std"),
                                    dict(critic="wasserstein", baseline="mean"), dict(d_precision="bf16"),
                                    dict(d_precision="bf16", critic="wasserstein")])
def test_tiny_runs_with_each_option_beyond_the_paper(tmp_path, option):
    config = tiny_config(**option)
    train, _, evaluate = tiny_task(config)
    plain = Trainer(tiny_config(), train, tmp_path / "plain")
    plain.run()
    trainer = Trainer(config, train, tmp_path / "run", evaluate)
    assert trainer.run() == "finished"
    events = RunDir(tmp_path / "run").events()
    for e in events:
        assert all(math.isfinite(v) for v in e.values() if isinstance(v, float)), e
    adversarial = [e for e in events if e["phase"] == "adversarial"]
    assert len(adversarial) == config.adv_iters and all(0 <= e["d_acc"] <= 1 for e in adversarial)
    assert all(("d_gap" in e) == (config.critic == "wasserstein") for e in events if "d_loss" in e)
    assert {"self_bleu4", "distinct2", "nll_oracle", "nll_test"} <= adversarial[-1].keys()  # quality and diversity
    # MLE is the same as the plain run's; the option changes only what follows
    assert state_equal(load_bundle(RunDir(tmp_path / "run").checkpoint("mle"))["generator"],
                       load_bundle(RunDir(tmp_path / "plain").checkpoint("mle"))["generator"])
    assert not state_equal(trainer.generator.state_dict(), plain.generator.state_dict())


def test_a_bf16_discriminator_trains_and_scores_in_bf16_with_fp32_weights_and_rewards():
    config = tiny_config(d_precision="bf16", d_emb_dim=16, d_num_filters=[24, 24])
    train, _, _ = tiny_task(config)
    trainer = Trainer(config, train)
    D = trainer.discriminator
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, out: seen.append(out.dtype)) for m in (*D.convs, D.output)]
    trainer.discriminator_round()
    for hook in hooks:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # convolutions and output layer ran in bf16
    assert all(p.dtype == torch.float32 for p in D.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.optimizers["d"].state.values())

    sequences = trainer.generator.sample(8, config.seq_len)
    completions = batched_rollout(trainer.generator, sequences, 3)
    fp32_rewards = discriminator_reward(D)
    for bf16, fp32 in [(trainer.reward_fn(sequences), fp32_rewards(sequences)),
                       (trainer.reward_fn.score_completions(completions, sequences),
                        fp32_rewards.score_completions(completions, sequences))]:
        assert bf16.dtype == torch.float32
        torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.02)  # bf16 keeps 8 bits of mantissa
        assert not torch.equal(bf16, fp32)


def test_stop_and_resume_with_the_critic_is_exactly_an_uninterrupted_run(tmp_path):
    config = tiny_config(critic="wasserstein", reward_norm="std", mle_epochs=2, d_pretrain_rounds=2, adv_iters=3)
    train, _, evaluate = tiny_task(config)
    reference = Trainer(config, train, tmp_path / "reference", evaluate)
    reference.run()
    stop = config.units().index(("adversarial", 0))
    first = Trainer(config, train, tmp_path / "run", evaluate,
                    lambda e: e["unit"] == stop and first.request_stop())
    assert first.run() == "stopped"
    second = Trainer(config, train, tmp_path / "run", evaluate)
    second.restore(load_bundle(RunDir(tmp_path / "run").checkpoint("latest")))
    assert second.run() == "finished"
    assert state_equal(second.generator.state_dict(), reference.generator.state_dict())
    assert state_equal(second.discriminator.state_dict(), reference.discriminator.state_dict())
