"""Where a discriminator training batch spends its time: each oneDNN product timed directly, at the paper's sizes.

Trains the paper's 1,720-map discriminator on random tokens (batch 64, length 20, vocabulary 5,000), timing every
call of ``kernels._onednn_linear`` with ``time.perf_counter`` (torch's profiler distorts the largest products:
it attributed 4.3-4.9 ms to the highway's weight gradient, which takes ~1.7 ms timed this way), and prints the
products by shape, their sum per batch, and the whole batch without the timing wrapper.

Run:  OMP_NUM_THREADS=1 python benchmarks/d_batch_products.py [--batches 60]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqgan import cli, kernels, train  # noqa: E402
from seqgan.models import Discriminator  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cli.keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    D = Discriminator(5000, 20).train()
    optimizer = train.adam(D.parameters(), 1e-4)
    tokens = torch.randint(0, 5000, (64 * args.batches, 20))
    labels = torch.randint(0, 2, (64 * args.batches,))

    def run(batches):
        for i in range(batches):
            rows = slice(64 * i, 64 * (i + 1))
            loss, _ = train.discriminator_loss(D, tokens[rows], labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    run(10)  # warm-up
    seconds, calls = collections.defaultdict(float), collections.Counter()
    product = kernels._onednn_linear

    def timed_product(x, weight, bias, activation="none"):
        start = time.perf_counter()
        y = product(x, weight, bias, activation)
        shapes = (tuple(x.shape), tuple(weight.shape))
        seconds[shapes] += time.perf_counter() - start
        calls[shapes] += 1
        return y

    kernels._onednn_linear = timed_product
    try:
        run(args.batches)
    finally:
        kernels._onednn_linear = product
    start = time.perf_counter()
    run(args.batches)
    whole = (time.perf_counter() - start) / args.batches

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch of 64; the 8 costliest shapes:")
    print(f"  {'x':14s}   {'weight':14s} calls/batch  ms/call  ms/batch")
    for shapes, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:8]:
        x, w = map(str, shapes)
        print(f"  {x:14s} x {w:14s} {calls[shapes] / args.batches:11.0f} {s / calls[shapes] * 1e3:8.2f}"
              f" {s / args.batches * 1e3:9.2f}")
    products = sum(seconds.values()) / args.batches
    print(f"all products {products * 1e3:.2f} ms of a {whole * 1e3:.2f} ms batch ({products / whole:.0%})")


if __name__ == "__main__":
    main()
