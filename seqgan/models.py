"""The two networks of SeqGAN: an LSTM generator (the policy) and a CNN discriminator.

Both follow the original release (LantaoYu/SeqGAN): the generator's parameters are drawn from N(0, 0.1), with
one bias per LSTM gate; its first input is the embedding of ``start_token`` (token 0, also an ordinary token in
the oracle task) with h = c = 0. The discriminator is the paper's CNN: filter widths 1..10, 15, 20 with 100..200
maps, ReLU, max-over-time pooling, one highway layer (gate bias 0, as the original calls it), dropout (keep 0.75)
and a 2-way output whose weights carry an L2 penalty of 0.2. Its convolutions are 1-D over the embedding (Conv1d,
measured faster than the original's Conv2d form; on CPU im2col products, see ``kernels``).

The same network also serves as a Wasserstein-style critic (an option; see ``train.critic_loss``): its score is
the difference of the two output logits, so that the classifier's P(real) is sigmoid(score) and the critic's
reward is the unbounded score itself.

The products run through ``kernels`` (oneDNN on CPU); the sampler is a two-level inverse CDF.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError
from .kernels import (LinearCrossEntropy, PooledConv, linear, needs_grad, onednn_applies, pooled_windows,
                      rows_per_chunk, window_weight)

PAPER_FILTER_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20)
PAPER_NUM_FILTERS = (100, 200, 200, 200, 200, 100, 100, 100, 100, 100, 160, 160)

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [1, rows, hidden] as nn.LSTM wants


SAMPLER_BLOCK = 64  # tokens per block of the two-level sampler (measured best of 32..256 at V = 5,000)


def inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """For each row of cumulative sums cdf [..., V], the first index whose cumulative sum exceeds u * total
    (u [..., k] in [0, 1)): an index of positive mass. The value is kept below the total, which u * total can
    round up to (then searchsorted would give V, or a zero-mass index clamped back into range)."""
    total = cdf[..., -1:]
    value = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, value, right=True)


def sample_from_logits(logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None):
    """Draw one token per row exactly from softmax(logits / temperature) (``draw_from_probs``)."""
    rows, vocab = logits.shape[:-1].numel(), logits.shape[-1]
    if temperature != 1.0:  # shifted first: a tiny temperature would take the logits to inf, the softmax to nan
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    probs = torch.softmax(logits, dim=-1).reshape(rows, vocab)
    return draw_from_probs(probs, 1, generator).view(logits.shape[:-1])


def draw_from_probs(probs: torch.Tensor, draws: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``draws`` tokens from each row of probabilities [rows, V], independently: [rows, draws]. Exact up to fp32
    rounding, by two-level inverse-CDF sampling.

    The vocabulary is cut into blocks of ``SAMPLER_BLOCK`` tokens. A first uniform number picks a block by
    binary search in the cumulative sum of the block probabilities, a second picks a token inside that block
    by binary search in its cumulative sum: P(token) = P(block) * P(token | block). A cumulative sum is a
    sequential pass, so this replaces one over all V tokens by one over V/64 block sums and one over 64: with
    the softmax, 2x faster than a single inverse CDF over V on CPU (and sampling as a whole 19x faster than
    with ``torch.multinomial``), drawing the same distribution (tested). The block sums are shared by a row's
    draws (the rollout's N completions of one prefix), and summing within blocks keeps the rounding of the
    cumulative sums to a block's scale.
    """
    rows, vocab = probs.shape
    block = SAMPLER_BLOCK
    full = vocab // block
    block_probs = probs[:, :full * block].view(rows, full, block).sum(2)
    if vocab > full * block:
        block_probs = torch.cat([block_probs, probs[:, full * block:].sum(1, keepdim=True)], dim=1)
    u = torch.rand(rows, draws, 2, device=probs.device, dtype=probs.dtype, generator=generator)
    chosen = inverse_cdf(block_probs.cumsum_(1), u[..., 0])  # [rows, draws]
    index = chosen.unsqueeze(-1) * block + torch.arange(block, device=probs.device)  # [rows, draws, block]
    inside = probs.gather(1, index.view(rows, -1).clamp(max=vocab - 1)).view(rows, draws, block)
    inside = inside.masked_fill_(index >= vocab, 0.0)
    return chosen * block + inverse_cdf(inside.cumsum_(-1), u[..., 1:]).squeeze(-1)


class Generator(nn.Module):
    """LSTM policy G(y_t | y_1..y_t-1): embedding -> LSTM -> linear to the vocabulary."""

    def __init__(self, vocab_size: int, emb_dim: int = 32, hidden_dim: int = 32, start_token: int = 0,
                 init_std: float = 0.1):
        super().__init__()
        self.vocab_size, self.emb_dim, self.hidden_dim = vocab_size, emb_dim, hidden_dim
        self.start_token = start_token
        self.embedding = nn.Embedding(vocab_size, emb_dim)
        self.lstm = nn.LSTM(emb_dim, hidden_dim, batch_first=True)
        self.output = nn.Linear(hidden_dim, vocab_size)
        for p in self.parameters():
            nn.init.normal_(p, 0.0, init_std)
        # The original's LSTM has one bias per gate; nn.LSTM adds bias_ih and bias_hh. Trained together they would
        # start at sd 0.14 instead of 0.1 and move twice as fast under Adam, so bias_hh stays at zero.
        nn.init.zeros_(self.lstm.bias_hh_l0).requires_grad_(False)

    def inputs_for(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing inputs: the start token, then every token but the last."""
        start = torch.full_like(tokens[:, :1], self.start_token)
        return torch.cat([start, tokens[:, :-1]], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, T, V]: row t scores token t given tokens before it."""
        hidden, _ = self.lstm(self.embedding(self.inputs_for(tokens)))
        return self.logits(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer on LSTM outputs [..., H]: [..., V] (through ``kernels.linear``)."""
        return linear(hidden, self.output.weight, self.output.bias)

    def log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """log G(tokens[:, t] | tokens[:, :t]) for every t: [B, T]."""
        logp = F.log_softmax(self(tokens), dim=-1)
        return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def weighted_nll(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum over b, t of -weights[b, t] * log G(tokens[b, t] | tokens[b, :t]), fused with its gradient.

        With weights 1/(B*T) this is the MLE loss; with weights Q it is the policy-gradient loss -sum log G * Q.
        """
        hidden, _ = self.lstm(self.embedding(self.inputs_for(tokens)))
        return LinearCrossEntropy.apply(hidden.reshape(-1, self.hidden_dim), self.output.weight, self.output.bias,
                                        tokens.reshape(-1), weights.reshape(-1).to(hidden.dtype))

    def nll(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per token (the MLE loss)."""
        return self.weighted_nll(tokens, torch.full(tokens.shape, 1.0 / tokens.numel(), device=tokens.device))

    def step(self, token: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
        """Feed one token per row; return the LSTM output [rows, H] (not yet logits) and the new state."""
        hidden, state = self.lstm(self.embedding(token).unsqueeze(1), state)
        return hidden.squeeze(1), state

    def draw(self, hidden: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
             chunk: int | None = None) -> torch.Tensor:
        """Next token for each row of LSTM output, computing logits a chunk of rows at a time.

        On CPU chunks keep the [rows, V] logits in cache instead of allocating hundreds of MB per step (256 rows
        measured fastest at V = 5,000); see ``kernels.rows_per_chunk``.
        """
        chunk = chunk or rows_per_chunk(hidden, 256, self.vocab_size)
        return torch.cat([sample_from_logits(self.logits(hidden[i:i + chunk]), temperature, generator)
                          for i in range(0, len(hidden), chunk)])

    def prefix_states(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced pass that keeps every state.

        Returns logits [B, T, V] and h, c [T, B, H]: after step t the model has read the start token and
        tokens[:, :t], so logits[:, t] is the distribution of token t and (h[t], c[t]) continue from there.
        """
        inputs = self.inputs_for(tokens)
        hs, cs, state = [], [], None
        for t in range(tokens.shape[1]):
            _, state = self.lstm(self.embedding(inputs[:, t:t + 1]), state)
            hs.append(state[0][0])
            cs.append(state[1][0])
        h, c = torch.stack(hs), torch.stack(cs)
        return self.logits(h).transpose(0, 1), h, c

    @torch.no_grad()
    def sample(self, num: int, seq_len: int, temperature: float = 1.0, prefix: torch.Tensor | None = None,
               generator: torch.Generator | None = None, batch_size: int = 4096) -> torch.Tensor:
        """Draw ``num`` sequences of length ``seq_len`` (optionally continuing ``prefix`` [P] or [num, P])."""
        if num < 0 or seq_len < 1:
            raise ConfigError(f"cannot draw {num} sequences of length {seq_len}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature must be a positive number (got {temperature})")
        if prefix is not None and len(prefix) and not (0 <= int(prefix.min()) and int(prefix.max()) < self.vocab_size):
            raise ConfigError(f"prefix token ids must lie in 0..{self.vocab_size - 1} (got {prefix.tolist()})")
        device = self.output.weight.device
        chunks = []
        for start in range(0, num, batch_size):
            rows = min(batch_size, num - start)
            out = torch.empty(rows, seq_len, dtype=torch.long, device=device)
            known = 0
            if prefix is not None:
                p = prefix.to(device)
                p = p.expand(rows, -1) if p.dim() == 1 else p[start:start + rows]
                known = min(p.shape[1], seq_len)
                out[:, :known] = p[:, :known]
            token = torch.full((rows,), self.start_token, dtype=torch.long, device=device)
            state = None
            for t in range(seq_len):
                hidden, state = self.step(token, state)
                token = out[:, t] if t < known else self.draw(hidden, temperature, generator)
                out[:, t] = token
            chunks.append(out)
        return torch.cat(chunks) if chunks else torch.empty(0, seq_len, dtype=torch.long, device=device)


class Highway(nn.Module):
    """y = t * relu(W_h x + b_h) + (1 - t) * x with gate t = sigmoid(W_t x + b_t).

    As the original: its ``highway`` function adds a constant bias (default -2) to the gate, but the discriminator
    calls it with 0. Weights and biases start as TensorFlow's default for the original's ``linear`` variables,
    Glorot uniform (a bias vector of length n counts fan-in = fan-out = n).
    """

    def __init__(self, size: int):
        super().__init__()
        self.transform = nn.Linear(size, size)
        self.gate = nn.Linear(size, size)
        for layer in (self.transform, self.gate):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.uniform_(layer.bias, -math.sqrt(3.0 / size), math.sqrt(3.0 / size))

    def forward(self, x):
        t = linear(x, self.gate.weight, self.gate.bias, "sigmoid")
        return torch.lerp(x, linear(x, self.transform.weight, self.transform.bias, "relu"), t)


class Discriminator(nn.Module):
    """CNN classifier D(Y) = P(Y is real) over fixed-length token sequences."""

    def __init__(self, vocab_size: int, seq_len: int, emb_dim: int = 64,
                 filter_sizes=PAPER_FILTER_SIZES, num_filters=PAPER_NUM_FILTERS,
                 dropout_keep: float = 0.75, l2_reg: float = 0.2):
        super().__init__()
        if len(filter_sizes) != len(num_filters):
            raise ValueError("filter_sizes and num_filters must have the same length")
        if max(filter_sizes) > seq_len:
            raise ValueError(f"filter width {max(filter_sizes)} is longer than the sequence length {seq_len}")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.filter_sizes, self.num_filters = tuple(filter_sizes), tuple(num_filters)
        self.l2_reg = l2_reg
        self.embedding = nn.Embedding(vocab_size, emb_dim)
        nn.init.uniform_(self.embedding.weight, -1.0, 1.0)  # the original's embedding init
        self.convs = nn.ModuleList(nn.Conv1d(emb_dim, n, w) for w, n in zip(filter_sizes, num_filters))
        for conv in self.convs:
            nn.init.trunc_normal_(conv.weight, std=0.1, a=-0.2, b=0.2)
            nn.init.constant_(conv.bias, 0.1)
        total = sum(num_filters)
        self.highway = Highway(total)
        self.dropout = nn.Dropout(1.0 - dropout_keep)
        self.output = nn.Linear(total, 2)
        nn.init.trunc_normal_(self.output.weight, std=0.1, a=-0.2, b=0.2)
        nn.init.constant_(self.output.bias, 0.1)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Max-over-time pooled ReLU feature maps, concatenated: [B, sum(num_filters)]."""
        return self.embedded_features(self.embedding(tokens))

    def embedded_features(self, embedded: torch.Tensor) -> torch.Tensor:
        """``features`` of already embedded sequences [B, T, E] (the critic's gradient penalty needs them)."""
        return torch.cat([self.pooled_conv(conv, embedded) for conv in self.convs], dim=1)

    @staticmethod
    def pooled_conv(conv: nn.Conv1d, x: torch.Tensor, rows: int = 256) -> torch.Tensor:
        """max over window positions of relu(conv(x)) for embedded x [rows, T', E]: [rows, maps].

        On CPU each window is a contiguous run of width*E numbers of x, so the convolution is one matrix product
        over those runs (im2col) through oneDNN with the ReLU fused: with autograd (training) ``PooledConv``;
        without (rewards, evaluation), 256 rows at a time to stay in cache, 1.2-8x faster than Conv1d on the
        benchmark CPU, depending on the width. Elsewhere (GPU, bf16, ``plain_kernels()``) it is the Conv1d.
        """
        _, emb, width = conv.weight.shape
        if not (onednn_applies(x) and x.stride(2) == 1 and x.stride(1) == emb and x.shape[1] >= width):
            return F.relu(conv(x.transpose(1, 2))).amax(dim=2)
        if needs_grad(x, conv.weight, conv.bias):
            return PooledConv.apply(x, conv.weight, conv.bias)
        weight = window_weight(conv.weight)
        return torch.cat([pooled_windows(x[i:i + rows], weight, conv.bias, width)
                          for i in range(0, len(x), rows)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits [B, 2]; class 1 is 'real'."""
        return self.classify(self.features(tokens))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.output(self.dropout(self.highway(features)))

    @staticmethod
    def reward_of(logits: torch.Tensor, critic: bool = False) -> torch.Tensor:
        """The reward from class logits [B, 2]: P(real), or for a critic the score logit(real) - logit(fake).
        In fp32 also when D ran in bf16."""
        logits = logits.float()
        return logits[:, 1] - logits[:, 0] if critic else F.softmax(logits, dim=1)[:, 1]

    def prob_real_completions(self, completions: torch.Tensor, sequences: torch.Tensor,
                              critic: bool = False) -> torch.Tensor:
        """D(Y) = P(real) (``critic``: the critic's score) of Monte-Carlo completions [T-1, N, B, T] of
        ``sequences`` [B, T]: [T-1, N, B].

        Completion [t-1, n, b] shares its first t tokens with sequence b, so every convolution window that lies
        inside that prefix has the same output as in sequence b itself: those windows are computed once for the
        B sequences (a running max over window positions), and only windows that reach into the drawn part are
        computed per completion. Equal to ``prob_real(completions)`` up to float rounding, with ~40% fewer
        convolution FLOPs at the paper's sizes. One prefix length at a time, so intermediates stay small.
        """
        P, N, B, T = completions.shape
        own = self.embedding(sequences).transpose(1, 2)  # [B, E, T]
        # prefix_max[k][b, :, j] = max over windows starting at 0..j of sequence b, for width k (ReLU >= 0)
        prefix_max = [torch.cummax(F.relu(conv(own)), dim=2).values for conv in self.convs]
        probs = []
        for p in range(P):
            t = p + 1  # prefix length
            x = self.embedding(completions[p].reshape(N * B, T))  # [N*B, T, E]
            pooled = []
            for conv, width, pmax in zip(self.convs, self.filter_sizes, prefix_max):
                start = max(0, t - width + 1)  # first window that reaches position t
                drawn = self.pooled_conv(conv, x[:, start:])  # [N*B, n]
                if t >= width:  # some windows lie inside the prefix
                    drawn = torch.maximum(drawn, pmax[:, :, t - width].repeat(N, 1))
                pooled.append(drawn)
            probs.append(self.reward_of(self.classify(torch.cat(pooled, dim=1)), critic))
        return torch.stack(probs).view(P, N, B)

    def prob_real(self, tokens: torch.Tensor, batch_size: int = 4096, critic: bool = False) -> torch.Tensor:
        """D(Y) = P(real) (``critic``: the critic's score) for each row, in chunks (call eval() first for the
        deterministic reward)."""
        return torch.cat([self.reward_of(self(tokens[i:i + batch_size]), critic)
                          for i in range(0, len(tokens), batch_size)])

    def l2_penalty(self) -> torch.Tensor:
        """The original's L2 term on the output layer, before its weight: (|W|^2 + |b|^2) / 2."""
        return 0.5 * (self.output.weight.pow(2).sum() + self.output.bias.pow(2).sum())

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy plus the original's L2 term on the output layer: l2 * (|W|^2 + |b|^2) / 2."""
        return F.cross_entropy(logits, labels) + self.l2_reg * self.l2_penalty()
