"""Monte-Carlo search rewards for partial sequences (SeqGAN, section 3, equation 4).

For a batch of B sequences of length T, every prefix Y_1..t (t = 1..T-1) is completed N times by the roll-out
policy (here the current generator, as in effect in the original code) and the completions are scored:

    Q_t = mean over n of reward(completion_n of Y_1..t)   for t < T
    Q_T = reward(Y_1..T)                                  the sequence itself

``batched_rollout`` generates the completions without a Python loop over prefixes and without re-reading any
prefix: one teacher-forced pass keeps the LSTM state after every prefix, and then all B*N*(T-1) continuations
advance together in one loop of at most T-1 steps. (Scoring them, ``Discriminator.prob_real_completions`` does
loop over the T-1 prefix lengths, to compute the convolution windows inside each prefix once for its N
completions.) Rows are ordered by prefix length, so at step s the continuations
still running are a leading slice of the batch and finished ones cost nothing.

``naive_rollout_rewards`` is the original algorithm (a loop over prefixes and roll-outs, each re-reading its
prefix and drawing with ``torch.multinomial``), kept as the reference for tests and benchmarks.
"""

from __future__ import annotations

from typing import Callable

import torch

from .kernels import bf16_autocast
from .models import Generator, draw_from_probs

RewardFn = Callable[[torch.Tensor], torch.Tensor]  # [M, T] token ids -> [M] rewards


@torch.no_grad()
def batched_rollout(generator: Generator, sequences: torch.Tensor, num_rollouts: int,
                    generator_rng: torch.Generator | None = None) -> torch.Tensor:
    """All completions of all proper prefixes: [T-1, N, B, T]; entry [t-1, n] completes sequences[:, :t]."""
    B, T = sequences.shape
    N, P = num_rollouts, T - 1
    logits, h, c = generator.prefix_states(sequences)
    # Row r = ((t - 1) * N + n) * B + b continues prefix length t of sequence b.
    rows = P * N * B
    generated = torch.empty(rows, max(P, 1), dtype=torch.long, device=sequences.device)

    # Step 0: token t of every prefix-t continuation comes from the teacher-forced logits already computed.
    # One softmax and one set of block sums per (prefix, sequence) serve its N draws.
    probs = torch.softmax(logits[:, 1:].transpose(0, 1), dim=-1)  # [P, B, V]
    first = draw_from_probs(probs.reshape(P * B, -1), N, generator_rng).view(P, B, N)
    generated[:, 0] = first.permute(0, 2, 1).reshape(rows)

    def expand_state(s):  # [T, B, H] -> [1, P*N*B, H] for prefixes 1..T-1
        return s[1:].unsqueeze(1).expand(P, N, B, s.shape[-1]).reshape(1, rows, s.shape[-1])

    state = (expand_state(h), expand_state(c))
    for step in range(1, P):
        active = (P - step) * N * B  # prefixes t <= T-1-step still have tokens to draw
        state = (state[0][:, :active], state[1][:, :active])
        hidden, state = generator.step(generated[:active, step - 1], state)
        generated[:active, step] = generator.draw(hidden, generator=generator_rng)

    # Completion position j is the real token for j < t, else generated[step = j - t].
    prefix_len = torch.arange(1, T, device=sequences.device).repeat_interleave(N * B).unsqueeze(1)  # [rows, 1]
    positions = torch.arange(T, device=sequences.device).unsqueeze(0)
    real = sequences.unsqueeze(0).expand(P * N, B, T).reshape(rows, T)
    drawn = generated.gather(1, (positions - prefix_len).clamp(min=0))
    return torch.where(positions < prefix_len, real, drawn).view(P, N, B, T)


@torch.no_grad()
def rollout_rewards(generator: Generator, sequences: torch.Tensor, num_rollouts: int, reward_fn: RewardFn,
                    generator_rng: torch.Generator | None = None) -> torch.Tensor:
    """Q [B, T] for a batch of sequences (see the module docstring)."""
    B, T = sequences.shape
    completions = batched_rollout(generator, sequences, num_rollouts, generator_rng)
    if hasattr(reward_fn, "score_completions"):  # knows how to share work across a prefix's completions
        scores = reward_fn.score_completions(completions, sequences)
    else:
        scores = reward_fn(completions.view(-1, T)).view(T - 1, num_rollouts, B)
    partial = scores.mean(dim=1).transpose(0, 1)  # [B, T-1]
    whole = reward_fn(sequences).view(B, 1)
    return torch.cat([partial, whole], dim=1)


@torch.no_grad()
def naive_rollout_rewards(generator: Generator, sequences: torch.Tensor, num_rollouts: int,
                          reward_fn: RewardFn) -> torch.Tensor:
    """The original algorithm: for each roll-out and prefix, re-read the prefix, then sample with multinomial."""
    B, T = sequences.shape
    rewards = torch.zeros(B, T, device=sequences.device)
    for _ in range(num_rollouts):
        for t in range(1, T):
            token = torch.full((B,), generator.start_token, dtype=torch.long, device=sequences.device)
            state, out = None, sequences.clone()
            for j in range(T):
                hidden, state = generator.step(token, state)
                if j >= t:
                    probs = torch.softmax(generator.output(hidden), dim=-1)
                    out[:, j] = torch.multinomial(probs, 1).squeeze(1)
                token = out[:, j]
            rewards[:, t - 1] += reward_fn(out)
        rewards[:, T - 1] += reward_fn(sequences)
    return rewards / num_rollouts


class DiscriminatorReward:
    """D(Y) = probability of 'real', the reward SeqGAN uses (dropout off, as the original feeds keep=1.0);
    with ``critic``, the Wasserstein critic's score instead."""

    def __init__(self, discriminator, share_prefix_windows: bool = True, critic: bool = False, bf16: bool = False):
        self.discriminator = discriminator
        self.share_prefix_windows = share_prefix_windows
        self.critic = critic
        self.bf16 = bf16  # D under bfloat16 autocast (TrainConfig.d_precision); rewards are fp32 (reward_of)

    def _eval(self, fn):
        was_training = self.discriminator.training
        self.discriminator.eval()
        device = next(self.discriminator.parameters()).device.type
        try:
            with torch.no_grad(), bf16_autocast(device, self.bf16):
                return fn()
        finally:
            self.discriminator.train(was_training)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._eval(lambda: self.discriminator.prob_real(tokens, critic=self.critic))

    def score_completions(self, completions: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """Rewards [T-1, N, B] of ``batched_rollout``'s completions."""
        if not self.share_prefix_windows:
            return self(completions.reshape(-1, sequences.shape[1])).view(completions.shape[:3])

        return self._eval(lambda: self.discriminator.prob_real_completions(completions, sequences, self.critic))


def discriminator_reward(discriminator, share_prefix_windows: bool = True, critic: bool = False, bf16: bool = False):
    return DiscriminatorReward(discriminator, share_prefix_windows, critic, bf16)
