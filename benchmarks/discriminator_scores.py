"""What a synthetic-oracle run's discriminator has learned: its P(real) of training positives, of real sequences
it never saw, and of the generator's samples.

Reads a seed folder of ``seqgan oracle run`` (``train.txt``, ``heldout.txt``, ``oracle.pt`` and the SeqGAN run's
checkpoint) and scores, with the checkpoint's discriminator in eval mode (as rewards are computed): 2,000 of the
training positives, the held-out oracle samples, 2,000 fresh oracle samples and 2,000 samples of the checkpoint's
generator. A discriminator that has learned the oracle scores the three real sets alike; one that has learned
its training set scores only the first high.

Run:  OMP_NUM_THREADS=1 python benchmarks/discriminator_scores.py --run results/oracle-paper/seed1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqgan.checkpoint import generator_from_bundle, load_bundle  # noqa: E402
from seqgan.models import Discriminator  # noqa: E402
from seqgan.oracle import load_oracle  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a seed folder of `seqgan oracle run`")
    parser.add_argument("--checkpoint", default="latest", help="name in seqgan/checkpoints (default latest)")
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(args.run / "seqgan" / "checkpoints" / f"{args.checkpoint}.pt")
    config = bundle["config"]
    D = Discriminator(config["vocab_size"], config["seq_len"], config["d_emb_dim"], config["d_filter_sizes"],
                      config["d_num_filters"])
    D.load_state_dict(bundle["discriminator"])
    G = generator_from_bundle(bundle)
    oracle = load_oracle(args.run / "oracle.pt")
    rng = torch.Generator().manual_seed(1)
    n, T = args.count, config["seq_len"]
    sets = {
        "training positives": torch.from_numpy(np.loadtxt(args.run / "train.txt", dtype=np.int64)[:n]),
        "held-out oracle samples": torch.from_numpy(np.loadtxt(args.run / "heldout.txt", dtype=np.int64)[:n]),
        "fresh oracle samples": oracle.sample(n, T, generator=rng),
        "generated": G.sample(n, T, generator=rng),
    }
    print(f"{args.run}, checkpoint {args.checkpoint} at unit {bundle['position']['unit']} of "
          f"{bundle['position']['total']}; the discriminator's P(real):")
    print(f"  {'':24s} {'mean':>8s} {'median':>9s} {'> 0.5':>7s}")
    D.eval()
    with torch.no_grad():
        for name, tokens in sets.items():
            p = D.prob_real(tokens)
            print(f"  {name:24s} {p.mean():8.4f} {p.median():9.2e} {(p > 0.5).float().mean():7.3f}")


if __name__ == "__main__":
    main()
