"""The synthetic oracle: the paper's equations, its files, its safety, token files, and the Table 1 experiment."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch

from seqgan.errors import ConfigError, InputError, Stopped
from seqgan.oracle_experiment import MODELS, run_oracle_experiment, seed_summary, write_report
from seqgan.runs import RunDir
from seqgan.train import STOP
from seqgan.corpus import read_token_file, write_token_file
from seqgan.oracle import (ARRAY_NAMES, load_oracle, load_oracle_arrays, nll_under, oracle_arrays, random_oracle,
                           save_oracle)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_arrays(path) -> list[np.ndarray]:
    """The README's own recipe (a trusted file, so plain pickle is fine here)."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def numpy_log_probs(arrays, tokens: np.ndarray) -> np.ndarray:
    """log p(token_t | tokens before t) by the README's equations, in float64."""
    E, Wi, Ui, bi, Wf, Uf, bf, Wog, Uog, bog, Wc, Uc, bc, Wo, bo = (np.asarray(a, dtype=np.float64) for a in arrays)

    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    n, T = tokens.shape
    h = np.zeros((n, Ui.shape[0]))
    c = np.zeros_like(h)
    x = np.repeat(E[0:1], n, axis=0)
    out = np.zeros((n, T))
    for t in range(T):
        i = sigmoid(x @ Wi + h @ Ui + bi)
        f = sigmoid(x @ Wf + h @ Uf + bf)
        o = sigmoid(x @ Wog + h @ Uog + bog)
        c = f * c + i * np.tanh(x @ Wc + h @ Uc + bc)
        h = o * np.tanh(c)
        logits = h @ Wo + bo
        top = logits.max(axis=1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        out[:, t] = logp[np.arange(n), tokens[:, t]]
        x = E[tokens[:, t]]
    return out


# ----- the paper's oracle -------------------------------------------------------------------------------------
def test_paper_oracle_follows_the_readme_equations(paper_oracle_params):
    arrays = reference_arrays(paper_oracle_params)
    assert [a.shape for a in arrays[:2]] == [(5000, 32), (32, 32)]
    oracle = load_oracle(paper_oracle_params)
    assert oracle.vocab_size == 5000
    tokens = torch.cat([torch.randint(0, 5000, (4, 20), generator=seeded(0)),
                        oracle.sample(4, 20, generator=seeded(1))])
    expected = numpy_log_probs(arrays, tokens.numpy())
    got = oracle.log_probs(tokens).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_paper_oracle_samples_score_about_5_75(paper_oracle_params):
    oracle = load_oracle(paper_oracle_params)
    samples = oracle.sample(500, 20, generator=seeded(2024))
    assert 5.5 < nll_under(oracle, samples) < 6.0
    uniform = torch.randint(0, 5000, (200, 20), generator=seeded(1))
    assert 11.0 < nll_under(oracle, uniform) < 11.8  # README: uniformly random tokens about 11.4


def test_both_paper_pickles_hold_the_same_oracle(shared_dir):
    reference = shared_dir / "seqgan-reference"
    a = load_oracle_arrays(reference / "target_params.pkl")
    b = load_oracle_arrays(reference / "target_params_py3.pkl")
    assert len(a) == len(b) == len(ARRAY_NAMES)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_the_paper_oracle_is_recognised_in_tables(paper_oracle_params):
    from seqgan.oracle_experiment import PAPER_ORACLE_SHA256, oracle_digest
    assert oracle_digest(load_oracle(paper_oracle_params)) == PAPER_ORACLE_SHA256


def test_save_and_load_oracle_round_trip(tmp_path, paper_oracle_params):
    oracle = load_oracle(paper_oracle_params)
    path = tmp_path / "oracle.pt"
    save_oracle(oracle, path)
    again = load_oracle(path)
    original, loaded = oracle.state_dict(), again.state_dict()
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    assert all(np.array_equal(x, y) for x, y in zip(load_oracle_arrays(path), reference_arrays(paper_oracle_params)))


# ----- random oracles -----------------------------------------------------------------------------------------
def test_random_oracle_is_deterministic_per_seed_and_standard_normal(tmp_path):
    a, b, c = random_oracle(7, 200, 32, 32), random_oracle(7, 200, 32, 32), random_oracle(8, 200, 32, 32)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embedding.weight"], sc["embedding.weight"])
    assert torch.equal(sa["lstm.bias_hh_l0"], torch.zeros_like(sa["lstm.bias_hh_l0"]))
    drawn = torch.cat([v.flatten() for k, v in sa.items() if k != "lstm.bias_hh_l0"])
    assert abs(float(drawn.mean())) < 0.05 and 0.95 < float(drawn.std()) < 1.05  # N(0, 1) as in the paper
    save_oracle(a, tmp_path / "a.pt")
    loaded = load_oracle(tmp_path / "a.pt")
    tokens = a.sample(16, 8, generator=seeded(0))
    torch.testing.assert_close(loaded.log_probs(tokens), a.log_probs(tokens), rtol=0, atol=1e-6)


# ----- hostile and broken oracle files ------------------------------------------------------------------------
class _RunsACommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_oracle_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "code-ran"
    command = _RunsACommand(f"touch {marker}")
    pickled = tmp_path / "hostile.pkl"
    pickled.write_bytes(pickle.dumps([np.zeros(2, np.float32)] * 3 + [command] + [np.zeros(2, np.float32)] * 11))
    zipped = tmp_path / "hostile.pt"
    torch.save({name: command for name in ARRAY_NAMES}, zipped)
    for path in (pickled, zipped):
        with pytest.raises(InputError) as info:
            load_oracle(path)
        assert str(path) in str(info.value) and "system" in str(info.value)  # refused for the right reason
    assert not marker.exists(), "loading an oracle file ran code from it"


def good_arrays(vocab=7, emb=5, hidden=4, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(vocab, emb)] + [(emb, hidden), (hidden, hidden), (hidden,)] * 4 + [(hidden, vocab), (vocab,)]
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def test_a_small_oracle_pickle_loads_and_follows_the_equations(tmp_path):
    arrays = good_arrays()
    path = tmp_path / "small.pkl"
    path.write_bytes(pickle.dumps(arrays))
    oracle = load_oracle(path)
    tokens = torch.randint(0, 7, (6, 9), generator=seeded(3))
    np.testing.assert_allclose(oracle.log_probs(tokens).double().numpy(), numpy_log_probs(arrays, tokens.numpy()),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("broken", ["fourteen arrays", "embedding is 1-D", "a gate of the wrong size", "not a list"])
def test_oracle_files_that_do_not_fit_the_equations_are_input_errors(tmp_path, broken):
    arrays = good_arrays()
    if broken == "fourteen arrays":
        arrays = arrays[:14]
    elif broken == "embedding is 1-D":
        arrays[0] = arrays[0][0]
    elif broken == "a gate of the wrong size":
        arrays[5] = np.zeros((3, 3), np.float32)  # Uf
    else:
        arrays = {"E": arrays[0]}
    path = tmp_path / "broken.pkl"
    path.write_bytes(pickle.dumps(arrays))
    with pytest.raises(InputError) as info:
        load_oracle(path)
    assert str(path) in str(info.value)


# ----- token files --------------------------------------------------------------------------------------------
def test_token_file_round_trip(tmp_path):
    tokens = torch.randint(0, 50, (12, 7), generator=seeded(4))
    path = tmp_path / "tokens.txt"
    write_token_file(tokens, path)
    assert torch.equal(read_token_file(path, 50), tokens)


@pytest.mark.parametrize("content, problem", [
    ("1 2 3\n4 5\n", "different lengths"),
    ("1 2 3\n4 five 6\n", "integer"),
    ("1 2 3\n4 5.5 6\n", "integer"),
    ("", "no sequences"),
    ("\n  \n", "no sequences"),
    ("1 2 3\n4 -1 6\n", "must not be negative (found -1)"),
    ("1 2 3\n4 50 6\n", "0..49 (found 50)"),
    (b"1 2 \xff\n", "UTF-8"),
])
def test_bad_token_files_are_input_errors_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "bad tokens.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InputError) as info:
        read_token_file(path, 50)
    assert info.value.source == str(path)
    assert str(path) in str(info.value) and problem in str(info.value)
    with pytest.raises(InputError):
        read_token_file(tmp_path / "missing.txt")


# ----- 9. the Table 1 experiment on a tiny schedule -------------------------------------------------------------
TINY = dict(device="cpu", num_train=128, batch_size=32, mle_epochs=2, d_pretrain_rounds=1, d_epochs=1, adv_iters=2,
            d_steps=1, eval_every=1, eval_samples=64, rollouts=2, num_negatives=64, d_filter_sizes=[2, 3],
            d_num_filters=[4, 4], checkpoint_seconds=0)


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    out, logs = tmp_path_factory.mktemp("oracle_experiment"), []
    table = run_oracle_experiment("cpu", [1], out, log=logs.append, **TINY)
    return out, table, logs


def test_table1_averages_each_seed_once_and_only_seeds_of_one_setting(tiny_experiment, tmp_path):
    source, table, _ = tiny_experiment
    out = tmp_path / "out"
    shutil.copytree(source / "seed1", out / "seed1")
    assert write_report(out, [1, 1]) == table  # named twice, counted once
    assert json.loads((out / "table1.json").read_text())["seeds"] == [1]
    shutil.copytree(out / "seed1", out / "seed2")
    meta = json.loads((out / "seed2" / "seed.json").read_text())
    meta["seed"], meta["config"] = 2, {**meta["config"], "seed": 2, "mle_epochs": 3}
    (out / "seed2" / "seed.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="seed 2 was trained with other settings than seed 1 \\(mle_epochs\\)"):
        write_report(out, [1, 2])


def test_oracle_experiment_writes_table1_and_figure2(tiny_experiment):
    out, table, logs = tiny_experiment
    assert list(table) == list(MODELS)
    for row in table.values():
        for metric in ("nll_oracle", "nll_test"):
            assert math.isfinite(row[metric]["mean"]) and row[metric]["sd"] == 0.0
    assert table["MLE"]["nll_oracle"]["mean"] < table["Random"]["nll_oracle"]["mean"]  # two epochs beat untrained G

    saved = json.loads((out / "table1.json").read_text())
    assert saved["seeds"] == [1] and list(saved["table"]) == list(MODELS)
    assert saved["table"]["SeqGAN"]["nll_oracle"]["mean"] == pytest.approx(table["SeqGAN"]["nll_oracle"]["mean"])
    markdown = (out / "table1.md").read_text()
    for model in MODELS:
        o, t = table[model]["nll_oracle"]["mean"], table[model]["nll_test"]["mean"]
        assert f"| {model} | {o:.3f} | {t:.3f} |" in markdown  # one seed: no spread to show
    assert "a random oracle per seed, not the paper's" in markdown and "paper NLL-oracle (its oracle)" in markdown
    assert markdown.startswith("Preset `cpu` with adv_iters=2, batch_size=32, checkpoint_seconds=0, d_epochs=1, "
                               "d_filter_sizes=[2, 3], ")  # what differs from the preset
    png = (out / "figure2.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000

    curves = seed_summary(out / "seed1")["curves"]
    assert set(curves) == set(MODELS)
    assert [p[:2] for p in curves["Random"]] == [[0, table["Random"]["nll_oracle"]["mean"]]]
    assert [p[0] for p in curves["MLE"]] == [0, 1, 2]  # before training, then every MLE epoch
    assert curves["MLE"][-1][1] == table["MLE"]["nll_oracle"]["mean"]
    assert curves["SeqGAN"][-1][1] == table["SeqGAN"]["nll_oracle"]["mean"]
    assert curves["PG-BLEU"][-1][2] == table["PG-BLEU"]["nll_test"]["mean"]
    assert len(curves["SS"]) == 3
    assert any("PG-BLEU" in line for line in logs)
    assert any("SeqGAN  d_pretrain     1/1" in line and "d_acc=" in line for line in logs)  # a silent phase no more
    timed = [line for line in logs if "nll_oracle=" in line and " init " not in line]
    assert timed and all(re.search(r"\(\d+ s, [\d.e-]+% of peak\)$", line) for line in timed), logs


def test_figure2_puts_seqgan_and_pg_bleu_on_the_same_axis(tiny_experiment):
    """Figure 2's x axis is "MLE epochs, then adversarial iterations" (discriminator pre-training not shown):
    SeqGAN and PG-BLEU both continue from the MLE generator at x = 2 and are evaluated at x = 3 and 4."""
    out, _, _ = tiny_experiment
    curves = seed_summary(out / "seed1")["curves"]
    assert [p[0] for p in curves["PG-BLEU"]] == [3, 4]
    assert [p[0] for p in curves["SeqGAN"]] == [2, 3, 4]


class Interrupted(Exception):
    pass


def test_an_interrupted_experiment_run_again_resumes_and_ends_as_one_never_interrupted(tiny_experiment, tmp_path):
    """Stopped in SeqGAN's adversarial phase (after a checkpoint), then run again into the same folder: SeqGAN
    resumes from its latest checkpoint, PG-BLEU and SS run, and every figure equals the uninterrupted run's."""
    _, table, _ = tiny_experiment

    def log_until_adversarial(line):
        if "SeqGAN  adversarial" in line:
            raise Interrupted(line)

    with pytest.raises(Interrupted):
        run_oracle_experiment("cpu", [1], tmp_path, log=log_until_adversarial, **TINY)
    assert not (tmp_path / "seed1" / "pg_bleu").exists()
    logs = []
    assert run_oracle_experiment("cpu", [1], tmp_path, log=logs.append, **TINY) == table
    assert "[seed 1] SeqGAN: units 3..5" in logs  # 2 MLE epochs and 1 D round were kept

    # Again: everything finished is kept, nothing is trained.
    events = (tmp_path / "seed1" / "seqgan" / "metrics.jsonl").read_text()
    logs.clear()
    assert run_oracle_experiment("cpu", [1], tmp_path, log=logs.append, **TINY) == table
    assert not any("units" in line for line in logs)
    assert (tmp_path / "seed1" / "seqgan" / "metrics.jsonl").read_text() == events

    with pytest.raises(ConfigError, match=r"seqgan holds a run with other settings \(adv_iters\)"):
        run_oracle_experiment("cpu", [1], tmp_path, log=logs.append, **{**TINY, "adv_iters": 3})
    # how often checkpoints are written changes nothing trained: accepted
    assert run_oracle_experiment("cpu", [1], tmp_path, log=logs.append, **{**TINY, "checkpoint_seconds": 60}) == table
    # another task in the same folder would resume on other data: refused
    with pytest.raises(ConfigError, match=r"seed1 holds runs of another task \(num_train differ"):
        run_oracle_experiment("cpu", [1], tmp_path, log=logs.append, **{**TINY, "num_train": 96})
    other = tmp_path / "other-oracle.pt"
    save_oracle(random_oracle(2), other)
    with pytest.raises(ConfigError, match=r"another task \(the oracle \(--oracle-params\) differ"):
        run_oracle_experiment("cpu", [1], tmp_path, str(other), log=logs.append, **TINY)


def test_a_stop_requested_between_models_starts_no_more_training(tmp_path):
    STOP.set()
    try:
        with pytest.raises(Stopped, match="seqgan not started; the same command run again continues"):
            run_oracle_experiment("cpu", [1], tmp_path, log=print, **TINY)
    finally:
        STOP.clear()
    assert RunDir(tmp_path / "seed1" / "seqgan").events() == []


@pytest.mark.parametrize("protocol", [2, 4])
def test_oracle_pickles_written_by_python3_load(tmp_path, protocol):
    """Protocol 2 from Python 3 stores array bytes through _codecs.encode: allowed, and nothing else is."""
    arrays = [a.numpy() for a in oracle_arrays(random_oracle(3, vocab_size=40, emb_dim=4, hidden_dim=5)).values()]
    path = tmp_path / f"oracle-p{protocol}.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=protocol))
    assert all((a == b).all() for a, b in zip(arrays, load_oracle_arrays(path)))
