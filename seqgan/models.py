"""The two networks of SeqGAN: an LSTM generator (the policy) and a CNN discriminator.

Both follow the original release (LantaoYu/SeqGAN): the generator's parameters are drawn from N(0, 0.1); its
first input is the embedding of ``start_token`` (token 0, also an ordinary token in the oracle task) with
h = c = 0. The discriminator is the paper's CNN: filter widths 1..10, 15, 20 with 100..160 maps, ReLU,
max-over-time pooling, one highway layer (gate bias -2), dropout (keep 0.75) and a 2-way output whose weights
carry an L2 penalty of 0.2. Its convolutions are Conv1d over the embedding (measured faster than Conv2d on CPU).

The same network also serves as a Wasserstein-style critic (an option; see ``train.critic_loss``): its score is
the difference of the two output logits, so that the classifier's P(real) is sigmoid(score) and the critic's
reward is the unbounded score itself.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

PAPER_FILTER_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20)
PAPER_NUM_FILTERS = (100, 200, 200, 200, 200, 100, 100, 100, 100, 100, 160, 160)

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [1, rows, hidden] as nn.LSTM wants


def sample_from_logits(logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None):
    """Draw one token per row by inverse-CDF sampling, exactly from softmax(logits / temperature).

    One uniform number per row and a binary search in the cumulative sum: on CPU this is about 8x faster
    than ``torch.multinomial`` for a whole generation step, and draws the same distribution (tested).
    """
    cdf = torch.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
    cdf = torch.cumsum(cdf, dim=-1, out=cdf)
    u = torch.rand(cdf.shape[:-1] + (1,), device=cdf.device, dtype=cdf.dtype, generator=generator) * cdf[..., -1:]
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return tokens.clamp_(max=logits.shape[-1] - 1)  # u * total can round up to total itself


class LinearCrossEntropy(torch.autograd.Function):
    """sum_r w_r * -log softmax(h_r W^T + b)[y_r], with its gradient computed in the same pass, chunk by chunk.

    Autograd would keep the whole [rows, V] logits and run log-softmax forward and backward over it, out of
    cache; this computes each chunk's logits, loss and gradient while they are in cache. Same three matrix
    products, fewer passes over memory (the MLE-epoch figure in BENCHMARKS.md measures the difference).
    """

    CHUNK = 128

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, row_weights):
        needs_grad = any(ctx.needs_input_grad[:3])
        total = hidden.new_zeros(())
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight) if needs_grad else None
        grad_bias = torch.zeros_like(bias) if needs_grad else None
        for i in range(0, len(hidden), LinearCrossEntropy.CHUNK):
            h, y, w = (x[i:i + LinearCrossEntropy.CHUNK] for x in (hidden, targets, row_weights))
            logits = torch.addmm(bias, h, weight.t())
            lse = torch.logsumexp(logits, dim=1)
            total += (w * (lse - logits.gather(1, y.unsqueeze(1)).squeeze(1))).sum()
            if needs_grad:  # d/dlogits = w * (softmax - onehot)
                grad = logits.sub_(lse.unsqueeze(1)).exp_().mul_(w.unsqueeze(1))
                grad.scatter_add_(1, y.unsqueeze(1), -w.unsqueeze(1))
                torch.mm(grad, weight, out=grad_hidden[i:i + LinearCrossEntropy.CHUNK])
                grad_weight.addmm_(grad.t(), h)
                grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, grad_bias * grad_output, None, None


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

    def inputs_for(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing inputs: the start token, then every token but the last."""
        start = torch.full_like(tokens[:, :1], self.start_token)
        return torch.cat([start, tokens[:, :-1]], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, T, V]: row t scores token t given tokens before it."""
        hidden, _ = self.lstm(self.embedding(self.inputs_for(tokens)))
        return self.output(hidden)

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
             chunk: int = 1024) -> torch.Tensor:
        """Next token for each row of LSTM output, computing logits a chunk of rows at a time.

        Chunks keep the [rows, V] logits in cache instead of allocating hundreds of MB per step.
        """
        return torch.cat([sample_from_logits(self.output(hidden[i:i + chunk]), temperature, generator)
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
        return self.output(h).transpose(0, 1), h, c

    @torch.no_grad()
    def sample(self, num: int, seq_len: int, temperature: float = 1.0, prefix: torch.Tensor | None = None,
               generator: torch.Generator | None = None, batch_size: int = 4096) -> torch.Tensor:
        """Draw ``num`` sequences of length ``seq_len`` (optionally continuing ``prefix`` [P] or [num, P])."""
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
        return torch.cat(chunks)


class Highway(nn.Module):
    """y = t * relu(W_h x) + (1 - t) * x with gate t = sigmoid(W_t x + bias), bias -2 as in the original."""

    def __init__(self, size: int, gate_bias: float = -2.0):
        super().__init__()
        self.transform = nn.Linear(size, size)
        self.gate = nn.Linear(size, size)
        self.gate_bias = gate_bias
        for layer in (self.transform, self.gate):
            nn.init.xavier_uniform_(layer.weight)  # TensorFlow's default for the original's linear()
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        t = torch.sigmoid(self.gate(x) + self.gate_bias)
        return t * F.relu(self.transform(x)) + (1.0 - t) * x


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
        x = embedded.transpose(1, 2)  # [B, E, T]
        return torch.cat([F.relu(conv(x)).amax(dim=2) for conv in self.convs], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits [B, 2]; class 1 is 'real'."""
        return self.classify(self.features(tokens))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.output(self.dropout(self.highway(features)))

    @staticmethod
    def reward_of(logits: torch.Tensor, critic: bool = False) -> torch.Tensor:
        """The reward from class logits [B, 2]: P(real), or for a critic the score logit(real) - logit(fake)."""
        return logits[:, 1] - logits[:, 0] if critic else F.softmax(logits, dim=1)[:, 1]

    def prob_real_completions(self, completions: torch.Tensor, sequences: torch.Tensor,
                              critic: bool = False) -> torch.Tensor:
        """D(Y) = P(real) (``critic``: the critic's score) of Monte-Carlo completions [T-1, N, B, T] of ``sequences`` [B, T]: [T-1, N, B].

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
            x = self.embedding(completions[p].reshape(N * B, T)).transpose(1, 2)  # [N*B, E, T]
            pooled = []
            for conv, width, pmax in zip(self.convs, self.filter_sizes, prefix_max):
                start = max(0, t - width + 1)  # first window that reaches position t
                drawn = F.relu(conv(x[:, :, start:])).amax(dim=2)  # [N*B, n]
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
