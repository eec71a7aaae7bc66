"""Training on 2 CPU processes (torchrun, gloo) against one process, on tiny sizes.

Each launch runs tests/distributed_worker.py under ``python -m torch.distributed.run --standalone`` (which
picks a free port), with one torch thread per process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distributed_worker import tiny_config, tiny_data
from seqgan.checkpoint import load_bundle
from seqgan.distributed import SINGLE, DistContext, setup_from_env
from seqgan.errors import ConfigError
from seqgan.runs import RunDir
from seqgan.train import Trainer

WORKER = Path(__file__).with_name("distributed_worker.py")


def launch(out: Path, config: dict, *options: str, ranks: int = 2) -> list[dict]:
    """Run the worker on ``ranks`` processes; return what each rank saved, in rank order."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(WORKER), "--out", str(out), "--config", json.dumps(config), *options]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(ranks)]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_mle_on_two_ranks_gives_the_weights_of_one_process(tmp_path):
    # batch_size 15: the global batch splits 8 + 7, so unequal shards must be weighted right as well
    overrides = dict(mle_epochs=3, d_pretrain_rounds=0, adv_iters=0, batch_size=15)
    ranks = launch(tmp_path / "two", overrides)
    config = tiny_config(**overrides)
    train, _ = tiny_data(config)
    single_events = []
    single = Trainer(config, train, callback=single_events.append)
    assert single.run() == "finished"

    assert [r["state"] for r in ranks] == ["finished", "finished"]
    assert_same_state(ranks[0]["generator"], ranks[1]["generator"])  # DDP keeps the ranks identical
    for key, expected in single.generator.state_dict().items():
        torch.testing.assert_close(ranks[0]["generator"][key], expected, rtol=0, atol=1e-5, msg=key)
    # the events (rank 0's only) carry the global batch's loss
    losses = [e["mle_loss"] for e in ranks[0]["events"] if e["phase"] == "mle"]
    assert len(losses) == 3 and ranks[1]["events"] == []
    assert losses == pytest.approx([e["mle_loss"] for e in single_events if e["phase"] == "mle"], abs=1e-5)


@pytest.fixture(scope="module")
def adversarial_launch(tmp_path_factory):
    """MLE, one discriminator round and the first of two adversarial iterations on 2 ranks; then rank 1 gets
    SIGTERM. Each rank is given its own run directory (run-0, run-1) to show which ranks write."""
    out = tmp_path_factory.mktemp("adversarial")
    overrides = dict(mle_epochs=2, d_pretrain_rounds=1, adv_iters=2)
    stop_unit = tiny_config(**overrides).units().index(("adversarial", 0))
    ranks = launch(out, overrides, "--run-dir", str(out), "--stop-rank", "1", "--stop-unit", str(stop_unit))
    return out, overrides, stop_unit, ranks


def test_an_adversarial_iteration_on_two_ranks_checkpoints_and_resumes_in_one_process(adversarial_launch, tmp_path):
    out, overrides, stop_unit, ranks = adversarial_launch
    # SIGTERM reached rank 1 only; both ranks stopped after the same unit
    assert [(r["state"], r["unit"]) for r in ranks] == [("stopped", stop_unit + 1)] * 2
    assert_same_state(ranks[0]["generator"], ranks[1]["generator"])
    assert_same_state(ranks[0]["discriminator"], ranks[1]["discriminator"])
    run = RunDir(out / "run-0")
    events = run.events()
    assert [e["unit"] for e in events] == list(range(-1, stop_unit + 1))
    adversarial = events[-1]
    assert adversarial["phase"] == "adversarial"
    assert {"pg_loss", "reward_mean", "d_loss", "d_acc", "nll_oracle"} <= adversarial.keys()
    assert 0 <= adversarial["reward_mean"] <= 1 and 0 <= adversarial["d_acc"] <= 1
    assert run.read_json(run.status)["state"] == "stopped"

    # The checkpoint holds plain (unwrapped) networks and resumes in a single process (in a copy of the run,
    # which the other test reads as the ranks left it).
    run = RunDir(shutil.copytree(run.path, tmp_path / "resumed"))
    bundle = load_bundle(run.checkpoint("latest"))
    assert bundle["position"]["unit"] == stop_unit + 1
    assert_same_state(bundle["generator"], ranks[0]["generator"])
    assert_same_state(bundle["discriminator"], ranks[0]["discriminator"])
    config = tiny_config(**overrides)
    train, evaluate = tiny_data(config)
    resumed = Trainer(config, train, run, evaluate)
    resumed.restore(bundle)
    assert resumed.run() == "finished"
    assert [e["unit"] for e in run.events()] == list(range(-1, len(config.units())))
    assert run.read_json(run.status)["state"] == "finished"
    assert load_bundle(run.checkpoint("seqgan"))["position"]["unit"] == len(config.units())


def test_the_critic_and_reward_normalisation_on_two_ranks(tmp_path):
    """The critic's gradient penalty (a second-order gradient) and the global reward statistics under DDP."""
    overrides = dict(mle_epochs=1, d_pretrain_rounds=1, adv_iters=2, critic="wasserstein", reward_norm="std")
    ranks = launch(tmp_path, overrides)
    assert [r["state"] for r in ranks] == ["finished", "finished"]
    assert_same_state(ranks[0]["generator"], ranks[1]["generator"])
    assert_same_state(ranks[0]["discriminator"], ranks[1]["discriminator"])
    adversarial = [e for e in ranks[0]["events"] if e["phase"] == "adversarial"]
    assert len(adversarial) == 2 and all(torch.isfinite(torch.tensor([e["pg_loss"], e["d_gap"]])).all()
                                         for e in adversarial)


def test_only_rank_0_writes(adversarial_launch):
    out, _, _, ranks = adversarial_launch
    assert not (out / "run-1").exists(), "rank 1 wrote into its run directory"
    run = RunDir(out / "run-0")
    assert run.read_json(run.status)["pid"] == ranks[0]["pid"]
    assert {p.name for p in run.checkpoints.iterdir()} == {"latest.pt", "mle.pt"}
    assert (run.samples / "init.txt").exists()
    assert ranks[1]["events"] == [], "rank 1 called the callback"
    assert sorted(p.name for p in out.iterdir()) == ["rank0.pt", "rank1.pt", "run-0"]


def test_without_torchrun_there_is_one_process_and_no_process_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dist = setup_from_env()
    assert dist is SINGLE and dist.is_main and not dist.distributed and dist.device is None
    assert not torch.distributed.is_initialized()
    rows = torch.arange(5)
    assert dist.shard(rows) is rows and dist.shard_size(5) == 5 and dist.per_rank(7) == 7
    assert dist.sum(1.5, 2) == [1.5, 2] and dist.mean(0.25) == 0.25 and dist.any(True)
    module = torch.nn.Linear(2, 2)
    assert dist.wrap(module) is module


def test_splitting_work_across_ranks():
    ranks = [DistContext(rank, 3, rank, torch.device("cpu")) for rank in range(3)]
    rows = torch.arange(10)
    assert [d.shard(rows).tolist() for d in ranks] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [d.shard_size(10) for d in ranks] == [4, 3, 3]
    assert [d.equal_shard(rows).tolist() for d in ranks] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert ranks[0].per_rank(10) == 4
    gpus = DistContext(0, 4, 0, torch.device("cuda", 0), local_world_size=2)  # two machines of two GPUs
    assert gpus.node_devices("cuda:0") == ["cuda:0", "cuda:1"] and gpus.node_devices("cpu") == ["cpu"]
    assert SINGLE.node_devices("cuda:1") == ["cuda:1"]
    with pytest.raises(ConfigError, match="3 ranks"):  # refused before any process group is needed
        Trainer(tiny_config(batch_size=2), torch.zeros(8, 8, dtype=torch.long), dist=ranks[0])


def test_seqgan_train_under_torchrun_on_a_text_corpus(tmp_path):
    """The command users type: `torchrun --nproc_per_node=2 -m seqgan train --corpus ...`, then a one-process resume."""
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(f"the {a} cat sat on the {b} mat" for a in "abcdefgh" for b in "ijkl") + "\n")
    run = tmp_path / "run"
    tiny = ["--mle-epochs", "2", "--d-pretrain-rounds", "1", "--num-negatives", "40", "--adv-iters", "1",
            "--d-steps", "1", "--rollouts", "2", "--eval-samples", "20", "--batch-size", "8", "--d-batch-size", "8",
            "--g-emb-dim", "8", "--g-hidden-dim", "8", "--d-emb-dim", "8", "--d-filter-sizes", "1", "2",
            "--d-num-filters", "4", "4", "--tokenizer-model", "char", "--quiet"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "seqgan", "train", "--corpus", str(corpus), "--run-dir", str(run), *tiny]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"finished: {run}") == 1  # rank 0 alone reports
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["unit"] == status["units"] == 4
    assert status["device"] == "cpu" and status["devices"] == ["cpu"]  # gloo ranks share the CPU
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["unit"] for e in events] == [-1, 0, 1, 2, 3] and "bleu2" in events[-1]
    assert load_bundle(run / "checkpoints" / "seqgan.pt")["tokenizer"] is not None
