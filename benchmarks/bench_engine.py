"""Engine benchmark at the paper's sizes: ours against the naive original algorithm, in one process.

For each piece it prints wall time for our code and for a naive reference, the floating-point work our code
does, and the floor that work implies at the matmul rate measured at the start of the same run (a large fp32
GEMM); the naive reference does more work for the G step (no windows shared), so its floor is higher:

    adversarial G step   sample 64, 16 rollouts of every prefix, D scores every completion, PG update
                         reference: per-prefix rollouts that re-read the prefix and draw with torch.multinomial
    D epoch              10,000 real + 10,000 generated, batch 64, the paper's 1,720-map CNN
                         reference: the same network in the original's Conv2d form
    sample 10,000        ours: inverse-CDF; reference: torch.multinomial
    MLE epoch            9,984 sequences, batch 64; reference: an LSTMCell step loop

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_engine.py [--threads 1] [--device cpu] [--quick]
Threads are set explicitly (default 1): on a 2-core machine 2 threads were up to 14x slower when the other
core was busy. --quick shrinks the sizes to check that the script runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqgan.models import Discriminator, Generator  # noqa: E402
from seqgan.rollout import discriminator_reward, naive_rollout_rewards, rollout_rewards  # noqa: E402
from seqgan.train import adam  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=1):
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def matmul_rate(device, n=2048) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = timed(lambda: a @ b, device, repeat=5 if device.type == "cpu" else 50)
    return 2 * n ** 3 / seconds


# ----- floating-point work --------------------------------------------------------------------------------
def lstm_step_flops(E, H, V):
    return 2 * 4 * H * (E + H) + 2 * H * V  # gates + output projection, per row and step


def d_forward_flops(T, E, sizes, counts):
    conv = sum(2 * (T - w + 1) * w * E * n for w, n in zip(sizes, counts))
    F_ = sum(counts)
    return conv + 2 * 2 * F_ * F_ + 2 * F_ * 2  # convolutions, highway (two linears), output


def d_completion_flops(T, E, sizes, counts):
    """Per completion, averaged over prefix lengths, with the windows inside the prefix shared (our rollout)."""
    F_ = sum(counts)
    conv = 0.0
    for t in range(1, T):
        conv += sum(2 * ((T - w + 1) - max(0, t - w + 1)) * w * E * n for w, n in zip(sizes, counts))
    return conv / (T - 1) + 2 * 2 * F_ * F_ + 2 * F_ * 2


class Conv2dDiscriminator(nn.Module):
    """The original TensorFlow form: conv2d over a [B, 1, T, E] 'image', same weights as ``Discriminator``."""

    def __init__(self, d: Discriminator):
        super().__init__()
        self.d = d

    def forward(self, tokens):
        x = self.d.embedding(tokens).unsqueeze(1)  # [B, 1, T, E]
        pooled = [F.relu(F.conv2d(x, conv.weight.unsqueeze(1).transpose(2, 3), conv.bias)).amax(dim=(2, 3))
                  for conv in self.d.convs]  # kernels [n, 1, w, E]
        return self.d.output(self.d.dropout(self.d.highway(torch.cat(pooled, 1))))


def d_epoch(model, tokens, labels, optimizer, batch=64):
    for i in range(0, len(tokens) - batch + 1, batch):
        logits = model(tokens[i:i + batch])
        loss = F.cross_entropy(logits, labels[i:i + batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def naive_sample(G: Generator, num, T, batch=4096):
    out = []
    for s in range(0, num, batch):
        rows = min(batch, num - s)
        token = torch.full((rows,), G.start_token, dtype=torch.long, device=G.output.weight.device)
        state, seq = None, []
        for _ in range(T):
            hidden, state = G.step(token, state)
            token = torch.multinomial(torch.softmax(G.output(hidden), -1), 1).squeeze(1)
            seq.append(token)
        out.append(torch.stack(seq, 1))
    return torch.cat(out)


def naive_mle_epoch(G: Generator, data, optimizer, batch=64):
    cell = nn.LSTMCell(G.emb_dim, G.hidden_dim).to(data.device)
    cell.weight_ih, cell.weight_hh = G.lstm.weight_ih_l0, G.lstm.weight_hh_l0
    cell.bias_ih, cell.bias_hh = G.lstm.bias_ih_l0, G.lstm.bias_hh_l0
    for i in range(0, len(data) - batch + 1, batch):
        x = data[i:i + batch]
        inputs = G.inputs_for(x)
        h = c = torch.zeros(len(x), G.hidden_dim, device=data.device)
        loss = 0.0
        for t in range(x.shape[1]):
            h, c = cell(G.embedding(inputs[:, t]), (h, c))
            loss = loss + F.cross_entropy(G.output(h), x[:, t])
        optimizer.zero_grad(set_to_none=True)
        (loss / x.shape[1]).backward()
        optimizer.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    parser.add_argument("--skip-naive", action="store_true", help="only our code (the reference is slow)")
    parser.add_argument("--pieces", nargs="+", default=["g", "d", "sample", "mle"],
                        choices=["g", "d", "sample", "mle"], help="which figures to measure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    V, T, B, N = 5000, 20, 64, 16
    n_real, n_samples = 10_000, 10_000
    if args.quick:
        n_real, n_samples, N = 640, 640, 4
    G = Generator(V).to(device)
    D = Discriminator(V, T).to(device)
    E, H = G.emb_dim, G.hidden_dim
    step_flops = lstm_step_flops(E, H, V)
    d_flops = d_forward_flops(T, D.embedding.embedding_dim, D.filter_sizes, D.num_filters)

    rate = matmul_rate(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"measured fp32 matmul rate (2048^3 GEMM): {rate / 1e9:.1f} GFLOP/s\n")
    header = f"{'piece':28s} {'ours s':>8s} {'naive s':>8s} {'speed-up':>8s} {'GFLOP':>8s} {'floor s':>8s} {'ours/floor':>10s}"
    print(header)
    print("-" * len(header))

    def report(name, ours, naive, flops):
        floor = flops / rate
        naive_s = f"{naive:8.2f}" if naive else f"{'-':>8s}"
        speed = f"{naive / ours:7.1f}x" if naive else f"{'-':>8s}"
        print(f"{name:28s} {ours:8.2f} {naive_s} {speed} {flops / 1e9:8.1f} {floor:8.2f} {ours / floor:9.2f}x",
              flush=True)

    # adversarial generator step
    reward = discriminator_reward(D)
    g_opt = adam(G.parameters(), lr=0.01)

    def g_step(rollout):
        samples = G.sample(B, T)
        rewards = rollout(G, samples, N, reward)
        loss = -(G.log_probs(samples) * rewards).sum()
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()

    completions = N * B * (T - 1) + B
    rollout_rows = N * B * T * (T - 1) // 2
    d_shared = d_completion_flops(T, D.embedding.embedding_dim, D.filter_sizes, D.num_filters)
    print(f"D forward per sequence: {d_flops / 1e6:.1f} MFLOP; per rollout completion with prefix windows "
          f"shared: {d_shared / 1e6:.1f} MFLOP")
    g_flops = (B * T + rollout_rows) * step_flops + (completions - B) * d_shared + 2 * B * d_flops \
        + 3 * B * T * step_flops
    if "g" in args.pieces:
        ours = timed(lambda: g_step(rollout_rewards), device)
        naive = None if args.skip_naive else timed(lambda: g_step(naive_rollout_rewards), device, repeat=1)
        report(f"adversarial G step (N={N})", ours, naive, g_flops)

    # discriminator epoch
    real = torch.randint(0, V, (n_real, T), device=device)
    fake = G.sample(n_real, T)
    tokens = torch.cat([real, fake])
    labels = torch.cat([torch.ones(n_real), torch.zeros(n_real)]).long().to(device)
    order = torch.randperm(len(tokens), device=device)
    tokens, labels = tokens[order], labels[order]
    D.train()
    d_opt = adam(D.parameters(), lr=1e-4)
    if "d" in args.pieces:
        ours = timed(lambda: d_epoch(D, tokens, labels, d_opt), device)
        conv2d = Conv2dDiscriminator(D)
        naive = None if args.skip_naive else timed(lambda: d_epoch(conv2d, tokens, labels, d_opt), device)
        report(f"D epoch ({2 * n_real} seqs)", ours, naive, 3 * len(tokens) * d_flops)

    if "sample" in args.pieces:
        ours = timed(lambda: G.sample(n_samples, T), device)
        naive = None if args.skip_naive else timed(lambda: naive_sample(G, n_samples, T), device)
        report(f"sample {n_samples}", ours, naive, n_samples * T * step_flops)

    # MLE epoch
    data = torch.randint(0, V, (n_real // B * B, T), device=device)
    mle_opt = adam(G.parameters(), lr=0.01)

    def mle_epoch():
        for i in range(0, len(data), B):
            loss = G.nll(data[i:i + B])
            mle_opt.zero_grad(set_to_none=True)
            loss.backward()
            mle_opt.step()

    if "mle" in args.pieces:
        ours = timed(mle_epoch, device)
        naive = None if args.skip_naive else timed(lambda: naive_mle_epoch(G, data, mle_opt), device)
        report(f"MLE epoch ({len(data)} seqs)", ours, naive, 3 * len(data) * T * step_flops)


if __name__ == "__main__":
    main()
