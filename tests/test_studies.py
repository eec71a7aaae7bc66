"""The studies beyond the paper (seqgan/studies.py): stability variants and sequence lengths, on tiny sizes."""

from __future__ import annotations

import json

import pytest
import torch

from seqgan.checkpoint import load_bundle
from seqgan.cli import main
from seqgan.corpus import read_token_file
from seqgan.runs import RunDir
from seqgan.studies import TEMPERATURES, run_lengths, run_stability, study_config
from seqgan.train import Trainer

TINY = dict(num_train=64, mle_epochs=2, d_pretrain_rounds=1, num_negatives=48, adv_iters=2, rollouts=2,
            batch_size=16, eval_samples=40, eval_every=1, d_filter_sizes=[2, 3], d_num_filters=[4, 4],
            checkpoint_seconds=0)


@pytest.fixture(scope="module")
def stability(tmp_path_factory):
    out = tmp_path_factory.mktemp("stability")
    lines = []
    summary = run_stability("cpu", [1], out, ["plain", "norm", "wasserstein"], device="cpu", log=lines.append,
                            **TINY)
    return out, summary, lines


def test_stability_writes_a_table_a_figure_and_curves_for_every_variant(stability):
    out, summary, _ = stability
    assert list(summary) == ["plain", "norm", "wasserstein"]
    table = (out / "stability.md").read_text()
    for variant in summary:
        assert f"| {variant} |" in table
        curves = summary[variant]["curves"][0]
        assert [step for step, _ in curves["nll_oracle"]] == [0, 1, 2]  # 0: the MLE generator
        assert {"nll_test", "self_bleu4", "distinct2", "d_acc", "reward_mean"} <= curves.keys()
    assert (out / "stability.png").stat().st_size > 10_000
    assert (out / "quality-coverage.png").stat().st_size > 10_000
    data = json.loads((out / "stability.json").read_text())
    assert data["summary"]["plain"]["nll_oracle"]["values"] == [summary["plain"]["final"]["nll_oracle"]["mean"]]
    # the MLE generator at temperature 1 is the MLE generator: the NLL-test of its last evaluation
    temperatures = data["mle_temperatures"]
    assert [row["temperature"] for row in temperatures] == list(TEMPERATURES)
    mle_test = summary["plain"]["curves"][0]["nll_test"][0][1]
    assert temperatures[0]["nll_test"]["mean"] == pytest.approx(mle_test, abs=1e-5)
    assert "| 0.8 |" in table
    seed_dir = out / "L20" / "seed1"
    assert sorted(p.name for p in seed_dir.iterdir() if p.is_dir()) == [
        "dpre-classifier", "dpre-wasserstein", "mle", "norm", "plain", "wasserstein"]


def test_a_branched_variant_ends_exactly_where_one_uninterrupted_run_ends(stability):
    """mle -> dpre-classifier -> plain, each a new Trainer continuing from the last one's checkpoint, gives the
    weights of one run through the whole schedule: every variant starts from the very same state."""
    out, _, _ = stability
    seed_dir = out / "L20" / "seed1"
    config, _ = study_config("stability", "cpu", 1, 20, "cpu", **TINY)
    whole = Trainer(config, read_token_file(seed_dir / "train.txt", config.vocab_size))
    assert whole.run() == "finished"
    branched = load_bundle(RunDir(seed_dir / "plain").checkpoint("seqgan"))
    for name, tensor in whole.generator.state_dict().items():
        assert torch.equal(branched["generator"][name], tensor), name
    norm = load_bundle(RunDir(seed_dir / "norm").checkpoint("seqgan"))
    assert not torch.equal(norm["generator"]["output.weight"], branched["generator"]["output.weight"])
    assert load_bundle(RunDir(seed_dir / "wasserstein").checkpoint("seqgan"))["config"]["critic"] == "wasserstein"


def test_running_a_study_again_keeps_finished_runs(stability):
    out, summary, lines = stability
    assert any("plain" in line for line in lines)
    before = (out / "L20" / "seed1" / "plain" / "metrics.jsonl").read_text()
    again = []
    run_stability("cpu", [1], out, ["plain", "norm", "wasserstein"], device="cpu", log=again.append, **TINY)
    assert again == []  # nothing retrained
    assert (out / "L20" / "seed1" / "plain" / "metrics.jsonl").read_text() == before


def test_lengths_reports_the_gap_at_each_length(tmp_path):
    summary = run_lengths("cpu", [1], tmp_path, [8, 12], device="cpu", log=lambda m: None, **TINY)
    assert list(summary) == [8, 12]
    for length, row in summary.items():
        assert row["gap"]["mean"] == pytest.approx(row["mle"]["mean"] - row["seqgan"]["mean"])
        assert 0 < row["oracle"]["mean"] < row["mle"]["mean"]
        config = load_bundle(RunDir(tmp_path / f"L{length}" / "seed1" / "plain").checkpoint("seqgan"))["config"]
        assert config["seq_len"] == length and config["rollouts"] == 2
    table = (tmp_path / "lengths.md").read_text()
    assert "| 8 |" in table and "| 12 |" in table
    assert (tmp_path / "lengths.png").exists()


def test_study_command_line(tmp_path, capsys):
    tiny = ["--mle-epochs", "1", "--d-pretrain-rounds", "1", "--num-negatives", "32", "--adv-iters", "1",
            "--rollouts", "2", "--eval-samples", "32", "--d-filter-sizes", "2", "--d-num-filters", "4"]
    assert main(["study", "lengths", "--lengths", "8", "--seeds", "3", "--out", str(tmp_path), *tiny]) == 0
    out = capsys.readouterr().out
    assert "| 8 |" in out and "lengths.md" in out
    assert (tmp_path / "L8" / "seed3" / "plain" / "checkpoints").is_dir()
    (tmp_path / "lengths.md").unlink()
    assert main(["study", "lengths", "--lengths", "8", "16", "--seeds", "3", "4", "--out", str(tmp_path),
                 "--report-only"]) == 0  # only what has finished: length 8, seed 3
    assert "| 8 | 3 |" in (tmp_path / "lengths.md").read_text() and "| 16 |" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["study", "stability", "--variants", "sharp", "--out", str(tmp_path)])
    assert main(["train", "--run-dir", str(tmp_path / "bad"), "--critic", "wasserstein", "--gp-weight", "-1",
                 "--num-train", "64", "--mle-epochs", "1"]) == 2
    assert "gp_weight" in capsys.readouterr().err
