"""How much floating-point work SeqGAN's pieces do, and how much of the machine's peak a run uses.

Work is counted from the networks' sizes, as nanoGPT counts its model's: a multiply-add is 2 FLOPs, and a
backward pass is twice its forward (the gradients of the inputs and of the weights). Only the products are
counted (LSTM gates, output projection, convolutions, highway); softmaxes, sampling draws, Adam and the like are
not, so 100% is out of reach; nor is the extra work of some options (scheduled sampling's draws, a Wasserstein
critic's gradient penalty), whose runs show a lower share than they use. Counts are of the whole (global) batch;
the benchmark's floors and the trainer's ``mfu`` (model FLOPs utilisation: the share of the peak that a unit's
work over its time implies) use them.

The peak is measured, not looked up: an fp32 matrix product on the training device at the start of a run
(``matmul_peak``), with the threads the run uses, so a shared or throttled machine shows as it is. Where work
runs faster than fp32 products (a GPU's TF32 convolutions in cuDNN, ``d_precision=bf16``) the share can be
overstated, even above 1.
"""

from __future__ import annotations

import time

import torch

from . import kernels


def generator_step(vocab_size: int, emb_dim: int, hidden_dim: int) -> float:
    """One row advanced one step: the LSTM's four gates and the projection to the vocabulary."""
    return 2 * 4 * hidden_dim * (emb_dim + hidden_dim) + 2 * hidden_dim * vocab_size


def discriminator_forward(seq_len: int, emb_dim: int, filter_sizes, num_filters) -> float:
    """One sequence scored: the convolutions at every position, the highway's two layers, the output layer."""
    conv = sum(2 * (seq_len - w + 1) * w * emb_dim * n for w, n in zip(filter_sizes, num_filters))
    maps = sum(num_filters)
    return conv + 2 * 2 * maps * maps + 2 * maps * 2


def discriminator_completion(seq_len: int, emb_dim: int, filter_sizes, num_filters) -> float:
    """One rollout completion scored, averaged over prefix lengths: the convolution windows that lie inside the
    prefix are computed once per prefix and shared by its completions (``rollout.rollout_rewards``)."""
    T, maps = seq_len, sum(num_filters)
    conv = 0.0
    for t in range(1, T):
        conv += sum(2 * ((T - w + 1) - max(0, t - w + 1)) * w * emb_dim * n for w, n in zip(filter_sizes, num_filters))
    return conv / (T - 1) + 2 * 2 * maps * maps + 2 * maps * 2


def _sizes(config) -> tuple[float, float]:
    step = generator_step(config.vocab_size, config.g_emb_dim, config.g_hidden_dim)
    d = discriminator_forward(config.seq_len, config.d_emb_dim, config.d_filter_sizes, config.d_num_filters)
    return step, d


def mle_epoch(config, num_train: int) -> float:
    """Teacher-forced forward and backward over the epoch's whole batches (the last, partial one is dropped)."""
    step, _ = _sizes(config)
    rows = num_train // min(config.batch_size, num_train) * min(config.batch_size, num_train)
    return 3 * rows * config.seq_len * step


def discriminator_round(config, num_train: int) -> float:
    """Sampling the negatives, then ``d_epochs`` epochs of forward and backward over positives + negatives."""
    step, d = _sizes(config)
    tokens = min(num_train, config.num_negatives) + config.num_negatives
    batch = min(config.d_batch_size, tokens)
    return config.num_negatives * config.seq_len * step + config.d_epochs * 3 * (tokens // batch * batch) * d


def rollout_rows(batch: int, seq_len: int, rollouts: int) -> int:
    """Generator steps (rows times steps) of one rollout: one teacher-forced pass over the batch gives every
    prefix's state and its first drawn token, then completing a t-token prefix takes T - t - 1 more steps
    (``rollout.batched_rollout``)."""
    return batch * seq_len + rollouts * batch * (seq_len - 1) * (seq_len - 2) // 2


def generator_pg_step(config) -> float:
    """A batch sampled, every prefix completed ``rollouts`` times, the completions scored by the discriminator
    (when it gives the rewards), and the weighted likelihood's forward and backward."""
    step, d = _sizes(config)
    B, T, N = config.batch_size, config.seq_len, config.rollouts
    work = (B * T + rollout_rows(B, T, N) + 3 * B * T) * step  # sampling, rollout, the weighted likelihood
    if config.reward == "discriminator":
        shared = discriminator_completion(T, config.d_emb_dim, config.d_filter_sizes, config.d_num_filters)
        work += N * B * (T - 1) * shared + 2 * B * d  # completions; whole sequences and their prefix windows
    return work


def unit(config, phase: str, num_train: int) -> float:
    """The work of one unit of the schedule (``TrainConfig.units``)."""
    if phase == "mle":
        return mle_epoch(config, num_train)
    if phase == "d_pretrain":
        return discriminator_round(config, num_train)
    work = config.g_steps * generator_pg_step(config)
    if config.reward == "discriminator":
        work += config.d_steps * discriminator_round(config, num_train)
    return work


_measured: dict[tuple, float] = {}


def matmul_peak(device: torch.device, n: int | None = None) -> float:
    """FLOP/s of an fp32 n×n×n product on ``device`` (on CPU through ``kernels.linear``, as training's products
    go, with the threads torch has now), the fastest of a few after a warm-up; measured once per process (0.1 s
    on one core here; 1,024³ runs within 3% of 2,048³). Draws no random numbers: a run's random stream is
    untouched."""
    n = n or (1024 if device.type == "cpu" else 4096)
    key = (str(device), n, torch.get_num_threads())
    if key not in _measured:
        _measured[key] = _measure_matmul(device, n)
    return _measured[key]


def _measure_matmul(device: torch.device, n: int) -> float:
    a = torch.ones(n, n, device=device)
    b = torch.full((n, n), 0.5, device=device)

    def product():
        kernels.linear(a, b, None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    product()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def percent(share: float) -> str:
    """A share as a percentage: 41%, 3.1%, 0.012%."""
    value = 100 * share
    return f"{value:.0f}%" if value >= 10 else f"{value:.1f}%" if value >= 0.1 else f"{value:.2g}%"
