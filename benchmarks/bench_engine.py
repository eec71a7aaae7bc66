"""Engine benchmark at the paper's sizes: ours against the naive original algorithm, in one process.

For each piece it prints wall time for our code, for our code with plain torch kernels (torch's own layers and
the unfused Adam: ``plain_torch``) and for a naive reference, the floating-point work our code does, and the
floor that work implies at the best fp32 matmul rate measured at the start of the same run (a 2048^3 GEMM
through torch.mm and, on CPU, oneDNN); the naive reference does more work for the G step (no windows shared).

A second floor, "full", adds what a matmul rate does not count, each at a rate measured in the same run:
- one softmax over every logit (exact sampling and the likelihood's normaliser need every exponential), at
  the rate of torch.softmax over a cache-sized [128, 5000] block;
- where the parameters do not fit in cache (the discriminator's 7 million), the memory traffic they imply at
  the measured memory bandwidth: forward and backward read the weights and write their gradients (3 passes,
  which can overlap the products), then Adam reads parameters, gradients and two moments and writes three
  (7 passes, a phase of its own).
full = max(matmul floor + softmax floor, forward/backward traffic) + optimizer traffic.

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
import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqgan import cli, flops, kernels, train  # noqa: E402
from seqgan.models import Discriminator, Generator  # noqa: E402
from seqgan.rollout import discriminator_reward, naive_rollout_rewards, rollout_rewards  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat=1):
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def matmul_rates(device, n=2048) -> dict[str, float]:
    """fp32 rate of an n^3 GEMM: torch.mm (MKL on CPU, cuBLAS on GPU) and, on CPU, oneDNN's linear kernel."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    repeat = 5 if device.type == "cpu" else 50
    rates = {"torch.mm": 2 * n ** 3 / timed(lambda: a @ b, device, repeat)}
    if device.type == "cpu" and kernels._onednn_linear_works():
        rates["oneDNN"] = 2 * n ** 3 / timed(lambda: kernels._onednn_linear(a, b, None), device, repeat)
    return rates


def fastest(fn, device, trials) -> float:
    """The fastest of ``trials`` timed calls: a peak rate, as far as this shared machine lets it show."""
    return min(timed(fn, device) for _ in range(trials))


def softmax_rate(device) -> float:
    """Logits per second through torch.softmax over a cache-sized block (faster than torch.exp alone here)."""
    x = torch.randn(128, 5000, device=device)
    return x.numel() / fastest(lambda: torch.softmax(x, dim=1), device, 200)


def memory_bandwidth(device, megabytes=512) -> float:
    """Bytes per second to and from memory, far beyond any cache: the faster of a copy (a read and a write per
    number) and our Adam step (4 reads, 3 writes) over parameters whose state totals ``megabytes``."""
    src = torch.ones(megabytes * 2 ** 20 // 4, device=device)
    dst = torch.empty_like(src)
    copy = 2 * src.numel() * 4 / fastest(lambda: dst.copy_(src), device, 5)
    parameter = nn.Parameter(torch.ones(megabytes * 2 ** 20 // 16, device=device))
    parameter.grad = torch.ones_like(parameter)
    optimizer = train.adam([parameter], lr=1e-4)
    step = 7 * parameter.numel() * 4 / fastest(optimizer.step, device, 5)
    return max(copy, step)


@contextlib.contextmanager
def plain_torch():
    """torch's own layers and the unfused Adam: the baseline for the CPU kernels of ``seqgan.kernels``."""
    saved = train.adam
    train.adam = lambda parameters, lr: torch.optim.Adam(parameters, lr=lr)
    try:
        with kernels.plain_kernels():
            yield
    finally:
        train.adam = saved


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


def d_epoch(model, tokens, labels, optimizer, batch=64, bf16=False):
    for i in range(0, len(tokens) - batch + 1, batch):
        with torch.autocast(tokens.device.type, torch.bfloat16, enabled=bf16):  # as Trainer.d_precision
            logits = model(tokens[i:i + batch]).float()
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
    parser.add_argument("--bf16", action="store_true",
                        help="also time the G step and D epoch with the discriminator in bf16 (d_precision=bf16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cli.keep_freed_memory()  # as `seqgan` does: without it the MLE epoch depends on what was freed before
    torch.manual_seed(0)
    device = torch.device(args.device)

    V, T, B, N = 5000, 20, 64, 16
    n_real, n_samples = 10_000, 10_000
    if args.quick:
        n_real, n_samples, N = 640, 640, 4
    G = Generator(V).to(device)
    D = Discriminator(V, T).to(device)
    E, H = G.emb_dim, G.hidden_dim
    step_flops = flops.generator_step(V, E, H)
    d_flops = flops.discriminator_forward(T, D.embedding.embedding_dim, D.filter_sizes, D.num_filters)

    rates = matmul_rates(device)
    rate = max(rates.values())
    megabytes = 64 if args.quick else 512
    softmax_per_s, bandwidth = softmax_rate(device), memory_bandwidth(device, megabytes)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("measured fp32 matmul rate (2048^3 GEMM): "
          + ", ".join(f"{name} {r / 1e9:.1f} GFLOP/s" for name, r in rates.items())
          + f"; floors use the best, {rate / 1e9:.1f}")
    print(f"measured softmax rate {softmax_per_s / 1e9:.2f} G logits/s (cache-sized block), "
          f"memory bandwidth {bandwidth / 1e9:.1f} GB/s (the faster of a copy and an Adam step, {megabytes} MB)\n")
    header = (f"{'piece':28s} {'ours s':>8s} {'plain s':>8s} {'naive s':>8s} {'vs plain':>8s} {'vs naive':>8s} "
              f"{'GFLOP':>8s} {'floor s':>8s} {'ours/floor':>10s} {'Glogit':>6s} {'GB':>6s} {'full s':>7s} "
              f"{'ours/full':>9s}")
    print(header)
    print("-" * len(header))

    def measure(name, make_piece, work, make_naive=None, logits=0, params_beyond_cache=0, batches=0):
        """Time ours, ours with plain torch kernels (``plain_torch``), and the naive reference (plain kernels
        too: it stands for the original algorithm as the original ran it)."""
        ours = timed(make_piece(), device)
        with plain_torch():
            plain = timed(make_piece(), device)
            naive = timed(make_naive(), device) if make_naive and not args.skip_naive else None
        floor = work / rate
        one_pass = 4 * params_beyond_cache * batches  # bytes: every fp32 parameter once per batch
        traffic = 10 * one_pass  # 3 passes in forward/backward (they overlap the products), 7 in Adam (they do not)
        full = max(floor + logits / softmax_per_s, 3 * one_pass / bandwidth) + 7 * one_pass / bandwidth
        cells = [f"{ours:8.2f}", f"{plain:8.2f}", f"{naive:8.2f}" if naive else f"{'-':>8s}",
                 f"{plain / ours:7.1f}x", f"{naive / ours:7.1f}x" if naive else f"{'-':>8s}",
                 f"{work / 1e9:8.1f}", f"{floor:8.2f}", f"{ours / floor:9.2f}x",
                 f"{logits / 1e9:6.2f}", f"{traffic / 1e9:6.1f}", f"{full:7.2f}", f"{ours / full:8.2f}x"]
        print(f"{name:28s} " + " ".join(cells), flush=True)

    # adversarial generator step
    def g_step(rollout, bf16=False):
        def make():
            reward, g_opt = discriminator_reward(D, bf16=bf16), train.adam(G.parameters(), lr=0.01)

            def step():
                samples = G.sample(B, T)
                rewards = rollout(G, samples, N, reward)
                loss = -(G.log_probs(samples) * rewards).sum()
                g_opt.zero_grad(set_to_none=True)
                loss.backward()
                g_opt.step()
            return step
        return make

    rollout_rows = flops.rollout_rows(B, T, N)
    d_shared = flops.discriminator_completion(T, D.embedding.embedding_dim, D.filter_sizes, D.num_filters)
    print(f"D forward per sequence: {d_flops / 1e6:.1f} MFLOP; per rollout completion with prefix windows "
          f"shared: {d_shared / 1e6:.1f} MFLOP")
    g_flops = flops.generator_pg_step(train.TrainConfig(vocab_size=V, seq_len=T, batch_size=B, rollouts=N,
                                                        d_filter_sizes=list(D.filter_sizes),
                                                        d_num_filters=list(D.num_filters)))
    if "g" in args.pieces:
        measure(f"adversarial G step (N={N})", g_step(rollout_rewards), g_flops, g_step(naive_rollout_rewards),
                logits=(2 * B * T + rollout_rows) * V)  # sampling, rollouts, log-probabilities

    # discriminator epoch
    real = torch.randint(0, V, (n_real, T), device=device)
    fake = G.sample(n_real, T)
    tokens = torch.cat([real, fake])
    labels = torch.cat([torch.ones(n_real), torch.zeros(n_real)]).long().to(device)
    order = torch.randperm(len(tokens), device=device)
    tokens, labels = tokens[order], labels[order]
    D.train()

    def d_epoch_of(model, bf16=False):
        def make():
            d_opt = train.adam(D.parameters(), lr=1e-4)
            return lambda: d_epoch(model, tokens, labels, d_opt, bf16=bf16)
        return make

    if "d" in args.pieces:
        d_params = sum(p.numel() for p in D.parameters())
        measure(f"D epoch ({2 * n_real} seqs)", d_epoch_of(D), 3 * len(tokens) * d_flops,
                d_epoch_of(Conv2dDiscriminator(D)), params_beyond_cache=d_params, batches=len(tokens) // 64)

    if "sample" in args.pieces:
        measure(f"sample {n_samples}", lambda: lambda: G.sample(n_samples, T), n_samples * T * step_flops,
                lambda: lambda: naive_sample(G, n_samples, T), logits=n_samples * T * V)

    # MLE epoch
    data = torch.randint(0, V, (n_real // B * B, T), device=device)

    def mle_epoch():
        mle_opt = train.adam(G.parameters(), lr=0.01)

        def epoch():
            for i in range(0, len(data), B):
                loss = G.nll(data[i:i + B])
                mle_opt.zero_grad(set_to_none=True)
                loss.backward()
                mle_opt.step()
        return epoch

    def naive_mle():
        mle_opt = torch.optim.Adam(G.parameters(), lr=0.01)
        return lambda: naive_mle_epoch(G, data, mle_opt)

    if "mle" in args.pieces:
        measure(f"MLE epoch ({len(data)} seqs)", mle_epoch, 3 * len(data) * T * step_flops, naive_mle,
                logits=len(data) * T * V)

    if args.bf16:
        a, b = (torch.randn(2048, 2048, device=device, dtype=torch.bfloat16) for _ in range(2))
        bf16_rate = 2 * 2048 ** 3 / timed(lambda: a @ b, device, 5 if device.type == "cpu" else 50)
        print(f"\nDiscriminator in bf16 (d_precision=bf16; G stays fp32), against ours in fp32 in this process; "
              f"bf16 matmul rate {bf16_rate / 1e9:.1f} GFLOP/s")
        print(f"{'piece':28s} {'fp32 s':>8s} {'bf16 s':>8s} {'speed-up':>8s}")
        rows = [("g", f"adversarial G step (N={N})", g_step(rollout_rewards), g_step(rollout_rewards, bf16=True)),
                ("d", f"D epoch ({2 * n_real} seqs)", d_epoch_of(D), d_epoch_of(D, bf16=True))]
        for piece, name, fp32_piece, bf16_piece in rows:
            if piece in args.pieces:
                fp32, bf16 = timed(fp32_piece(), device), timed(bf16_piece(), device)
                print(f"{name:28s} {fp32:8.2f} {bf16:8.2f} {fp32 / bf16:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
