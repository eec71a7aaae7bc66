"""One rank of a small training run under torchrun, for tests/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_worker.py \
        --out OUT --config '{"mle_epochs": 2, ...}' [--run-dir DIR] [--stop-rank R --stop-unit U]

Every rank trains on the same tiny oracle data (``tiny_data``) on the CPU (gloo) and saves what the test
compares into OUT/rank<R>.pt, outside the run directory. ``--run-dir DIR`` gives rank R the run directory
DIR/run-<R>, so that a test can see that only rank 0 wrote one. ``--stop-rank/--stop-unit`` sends SIGTERM to
that rank once it has finished that unit, as a cluster scheduler would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's seqgan, even when not installed

from seqgan.distributed import setup_from_env
from seqgan.oracle import oracle_evaluator, random_oracle
from seqgan.train import TrainConfig, Trainer


def tiny_config(**overrides) -> TrainConfig:
    settings = dict(vocab_size=20, seq_len=8, g_emb_dim=8, g_hidden_dim=8, batch_size=16, mle_epochs=3,
                    d_emb_dim=8, d_filter_sizes=[2, 3], d_num_filters=[4, 4], d_batch_size=16,
                    d_pretrain_rounds=1, d_epochs=1, num_negatives=32, adv_iters=2, d_steps=1, rollouts=2,
                    eval_every=1, eval_samples=32, seed=5, device="cpu", checkpoint_seconds=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def tiny_data(config: TrainConfig, seed: int = 11):
    """64 training sequences from a small random oracle, and the oracle's evaluator."""
    oracle = random_oracle(seed, config.vocab_size, 8, 8)
    train = oracle.sample(64, config.seq_len, generator=torch.Generator().manual_seed(seed))
    heldout = oracle.sample(32, config.seq_len, generator=torch.Generator().manual_seed(seed + 1))
    return train, oracle_evaluator(oracle, config.eval_samples, config.seq_len, heldout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="{}", help="TrainConfig overrides as JSON")
    parser.add_argument("--run-dir")
    parser.add_argument("--stop-rank", type=int)
    parser.add_argument("--stop-unit", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)

    dist = setup_from_env("cpu")
    config = tiny_config(**json.loads(args.config))
    train, evaluate = tiny_data(config)
    run_dir = Path(args.run_dir) / f"run-{dist.rank}" if args.run_dir else None
    events = []
    trainer = Trainer(config, train, run_dir, evaluate, events.append, dist=dist)
    signal.signal(signal.SIGTERM, lambda *_: trainer.request_stop())
    if dist.rank == args.stop_rank:
        emit = trainer.emit

        def emit_then_stop(event):  # every rank calls emit (only rank 0's writes anything)
            emit(event)
            if event["unit"] == args.stop_unit:
                os.kill(os.getpid(), signal.SIGTERM)

        trainer.emit = emit_then_stop
    state = trainer.run()
    torch.save({"rank": dist.rank, "world_size": dist.world_size, "pid": os.getpid(), "state": state,
                "unit": trainer.unit, "events": events,
                "generator": trainer.generator.state_dict(), "discriminator": trainer.discriminator.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in trainer.optimizers.items()}},
               Path(args.out) / f"rank{dist.rank}.pt")
    dist.close()
    dist.exit(0)


if __name__ == "__main__":
    main()
