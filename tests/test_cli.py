"""The ``seqgan`` command line, called in-process through ``seqgan.cli.main`` (a subprocess only to signal one)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqgan import checkpoint
from seqgan.checkpoint import bundle_bytes, load_bundle
from seqgan.cli import main
from seqgan.metrics import bleu
from seqgan.models import Generator
from seqgan.corpus import read_token_file, write_token_file
from seqgan.oracle import load_oracle, nll_under, random_oracle, save_oracle
from seqgan.runs import RunDir
from seqgan.train import STOP

REPO = Path(__file__).resolve().parents[1]

# A tiny synthetic-oracle run: 3 MLE epochs, 2 D rounds, 40 adversarial iterations; a checkpoint after every unit.
TINY = ["--vocab-size", "20", "--seq-len", "6", "--num-train", "64", "--g-emb-dim", "8", "--g-hidden-dim", "8",
        "--batch-size", "16", "--mle-epochs", "3", "--d-emb-dim", "8", "--d-filter-sizes", "2", "3",
        "--d-num-filters", "4", "4", "--d-pretrain-rounds", "2", "--d-epochs", "1", "--d-batch-size", "32",
        "--num-negatives", "32", "--adv-iters", "40", "--d-steps", "1", "--rollouts", "2", "--eval-every", "5",
        "--eval-samples", "32", "--seed", "3", "--device", "cpu", "--checkpoint-seconds", "0", "--quiet"]
TINY_UNITS = 3 + 2 + 40


def run_cli(capsys, *argv) -> tuple[int, list[str], str]:
    """Exit status, stdout lines and stderr of ``seqgan ARGV``."""
    capsys.readouterr()
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_times(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("time", "seconds", "mfu")} for e in events]


def assert_error(status: int, err: str, *names: str) -> None:
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for name in names:
        assert name in err or name.replace("_", "-") in err, f"the error does not name {name}: {err}"


# ----- a small trained run from a token file (seqgan train --data) ---------------------------------------------
@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("token_run")
    data = random_oracle(9, 15, 8, 8).sample(40, 5, generator=torch.Generator().manual_seed(0))
    write_token_file(data, root / "data.txt")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        status = main(["train", "--run-dir", str(root / "run"), "--data", str(root / "data.txt"), "--quiet",
                       "--test-fraction", "0.25", "--g-emb-dim", "8", "--g-hidden-dim", "8", "--batch-size", "10",
                       "--mle-epochs", "2", "--d-filter-sizes", "2", "3", "--d-num-filters", "4", "4",
                       "--d-pretrain-rounds", "0", "--adv-iters", "0", "--seed", "1", "--device", "cpu"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == 0
    return root, data


def test_train_from_a_token_file(token_run, capsys):
    root, data = token_run
    run = RunDir(root / "run")
    assert run.read_json(run.status)["state"] == "finished"
    config = run.read_json(run.config)["config"]
    assert config["seq_len"] == 5 and config["vocab_size"] == int(data.max()) + 1
    train, heldout = read_token_file(root / "run" / "train.txt"), read_token_file(root / "run" / "heldout.txt")
    assert (len(train), len(heldout)) == (30, 10)
    assert sorted(map(tuple, torch.cat([train, heldout]).tolist())) == sorted(map(tuple, data.tolist()))
    assert all("nll_test" in e for e in run.events() if e["phase"] == "mle")
    status, _, err = run_cli(capsys, "train", "--run-dir", root / "run", "--data", root / "data.txt")
    assert_error(status, err, "already holds a run")


def test_train_from_a_short_token_file_with_the_default_discriminator(tmp_path, capsys, restore_sigterm):
    """No filter options: the paper's widths that fit the file's sequence length (5) are used."""
    write_token_file(torch.randint(0, 12, (20, 5), generator=torch.Generator().manual_seed(2)), tmp_path / "data.txt")
    status, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "run", "--data", tmp_path / "data.txt",
                             "--quiet", "--g-emb-dim", "8", "--g-hidden-dim", "8", "--batch-size", "8",
                             "--mle-epochs", "1", "--d-pretrain-rounds", "0", "--adv-iters", "0", "--device", "cpu")
    assert status == 0, err
    config = RunDir(tmp_path / "run").read_json(RunDir(tmp_path / "run").config)["config"]
    assert config["seq_len"] == 5 and config["d_filter_sizes"] == [1, 2, 3, 4, 5]


def test_bad_paths_and_values_are_one_line_errors(token_run, tmp_path, capsys):
    root, _ = token_run
    checkpoint = root / "run" / "checkpoints" / "latest.pt"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "negative.txt").write_text("1 2 3\n4 -5 6\n")
    bundle = load_bundle(checkpoint)
    (tmp_path / "odd-tokenizer.pt").write_bytes(bundle_bytes({**bundle, "tokenizer": "words"}))
    data = checkpoint.read_bytes()  # one byte flipped inside the generator's output bias (torch does not notice)
    at = data.index(bundle["generator"]["output.bias"].numpy().tobytes()) + 1
    (tmp_path / "flipped.pt").write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
    for argv, problem in [
        (["export", "--run-dir", root / "run", "--out", a_file], "not a folder"),
        (["train", "--run-dir", a_file / "run", "--data", root / "data.txt"], str(a_file)),
        (["--threads", "0", "sample", "--checkpoint", checkpoint], "--threads (or SEQGAN_THREADS) must be at least 1"),
        (["train", "--run-dir", tmp_path / "neg", "--data", tmp_path / "negative.txt"],
         "must not be negative (found -5)"),
        (["sample", "--checkpoint", checkpoint, "--prefix", " ".join(["1"] * 6)], "more than the model's length 5"),
        (["sample", "--checkpoint", checkpoint, "-n", "100000000"], "-n must be at most 1,000,000"),
        (["sample", "--checkpoint", checkpoint, "--seed", "99999999999999999999"], "--seed must be within"),
        (["sample", "--checkpoint", tmp_path / "odd-tokenizer.pt"], "is not what SeqGAN Studio writes"),
        (["sample", "--checkpoint", tmp_path / "flipped.pt"], "changed or damaged after it was saved"),
        (["oracle", "nll", "--params", checkpoint, root / "data.txt"], "not oracle parameters"),
    ]:
        status, _, err = run_cli(capsys, *argv)
        assert_error(status, err, problem)
    assert not (tmp_path / "neg").exists()


def test_export_checks_the_checkpoints_before_writing_anything(token_run, tmp_path, capsys):
    root, _ = token_run
    source = tmp_path / "run"
    shutil.copytree(root / "run", source)
    (source / "checkpoints" / "mle.pt").write_bytes((root / "run" / "checkpoints" / "mle.pt").read_bytes()[:500])
    status, _, err = run_cli(capsys, "export", "--run-dir", source, "--out", tmp_path / "out")
    assert_error(status, err, "mle.pt")
    assert not (tmp_path / "out").exists()


def test_an_export_is_a_record_made_whole_or_not_at_all_and_never_inside_its_run(token_run, tmp_path, capsys,
                                                                                 monkeypatch):
    root, _ = token_run
    source = RunDir(tmp_path / "run")
    shutil.copytree(root / "run", source.path)
    source.write_json(source.status, {**source.read_status(), "state": "running", "pid": os.getpid()})
    for inside in (source.path, source.path / "samples" / "copy", source.path / "sub"):
        status, _, err = run_cli(capsys, "export", "--run-dir", source.path, "--out", inside)
        assert_error(status, err, "is the run directory")
    assert not (source.path / "sub").exists() and not (source.path / "samples" / "copy").exists()
    status, _, err = run_cli(capsys, "export", "--run-dir", source.path, "--out", tmp_path / "out")
    assert status == 0, err
    exported = RunDir(tmp_path / "out")
    assert exported.read_status()["state"] == "stopped" and "pid" not in exported.read_status()  # no process to find
    assert not (exported.path / "train.txt").exists() and exported.events() == source.events()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the staging folder went
    # a failure part-way (the disk full at the last checkpoint) leaves nothing at --out, nor beside it
    def disk_full(bundle, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "save_bundle", disk_full)
    status, _, err = run_cli(capsys, "export", "--run-dir", source.path, "--out", tmp_path / "partial")
    assert status != 0 and "No space left on device" in err
    assert not (tmp_path / "partial").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_oracle_parameters_that_are_not_finite_are_refused(tmp_path, capsys):
    oracle = random_oracle(1, 20, 4, 4)
    save_oracle(oracle, tmp_path / "oracle.pt")
    saved = torch.load(tmp_path / "oracle.pt", weights_only=True)
    saved["E"][0, 0] = float("nan")
    torch.save(saved, tmp_path / "nan.pt")
    write_token_file(torch.zeros(2, 3, dtype=torch.long), tmp_path / "ids.txt")
    status, _, err = run_cli(capsys, "oracle", "nll", "--params", tmp_path / "nan.pt", tmp_path / "ids.txt")
    assert_error(status, err, "array E holds numbers that are not finite")


def test_reports_of_runs_that_are_not_there_name_the_missing_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv, problem in [(["oracle", "table", "--out", tmp_path / "none", "--seeds", "1"],
                           "seed 1 has not finished here"),
                          (["study", "stability", "--report-only", "--out", tmp_path / "empty", "--seeds", "1"],
                           "no finished run here"),
                          (["study", "lengths", "--report-only", "--out", tmp_path / "empty", "--seeds", "1"],
                           "no finished runs of lengths")]:
        status, _, err = run_cli(capsys, *argv)
        assert_error(status, err, problem)
    assert not list((tmp_path / "empty").iterdir())


def test_running_out_of_memory_is_a_one_line_error_and_other_runtime_errors_are_not_hidden(monkeypatch, capsys):
    import seqgan.cli

    def allocation_fails(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 26214400000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(seqgan.cli, "cmd_bleu", allocation_fails)
    status, _, err = run_cli(capsys, "bleu", "--refs", "r", "--hyps", "h")
    assert_error(status, err, "out of memory", "smaller sizes (--batch-size")
    monkeypatch.setattr(seqgan.cli, "cmd_bleu", lambda args: [][1])
    with pytest.raises(IndexError):
        main(["bleu", "--refs", "r", "--hyps", "h"])
    monkeypatch.setattr(seqgan.cli, "cmd_bleu", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["bleu", "--refs", "r", "--hyps", "h"])


def test_a_plain_pickle_as_checkpoint_gives_one_line_without_torchs_warning(tmp_path):
    """Outside pytest (which captures warnings) torch printed a two-line UserWarning about the pickle protocol."""
    import pickle

    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"format": "seqgan-studio/2"}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "seqgan", "sample", "--checkpoint", str(tmp_path / "raw.pt")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "not a SeqGAN Studio checkpoint or the file is damaged" in done.stderr


# ----- seqgan sample -------------------------------------------------------------------------------------------
def test_sample_prints_reproducible_sequences_from_the_checkpoint(token_run, capsys):
    root, _ = token_run
    checkpoint = root / "run" / "checkpoints" / "latest.pt"
    status, lines, _ = run_cli(capsys, "sample", "--checkpoint", checkpoint, "-n", 7, "--seed", 3)
    assert status == 0 and len(lines) == 7
    rows = [[int(x) for x in line.split()] for line in lines]
    bundle = load_bundle(checkpoint)
    vocab, seq_len = bundle["config"]["vocab_size"], bundle["config"]["seq_len"]
    assert all(len(row) == seq_len and all(0 <= x < vocab for x in row) for row in rows)

    assert run_cli(capsys, "sample", "--checkpoint", checkpoint, "-n", 7, "--seed", 3)[1] == lines
    assert run_cli(capsys, "sample", "--checkpoint", checkpoint, "-n", 7, "--seed", 4)[1] != lines
    # the lines are the checkpoint's generator's draws with that seed (not a freshly initialised one)
    G = Generator(vocab, bundle["config"]["g_emb_dim"], bundle["config"]["g_hidden_dim"])
    G.load_state_dict(bundle["generator"])
    assert G.sample(7, seq_len, generator=torch.Generator().manual_seed(3)).tolist() == rows

    status, lines, _ = run_cli(capsys, "sample", "--checkpoint", checkpoint, "-n", 5, "--prefix", "3 1")
    assert status == 0 and len(lines) == 5 and all(line.split()[:2] == ["3", "1"] for line in lines)
    assert run_cli(capsys, "sample", "--checkpoint", checkpoint, "-n", 0)[:2] == (0, [])


@pytest.mark.parametrize("options, message", [
    (["--temperature", "0"], "temperature"), (["--temperature", "nan"], "temperature"),
    (["--temperature", "-1"], "temperature"), (["--prefix", "99 1"], "prefix token ids must lie in 0.."),
    (["--prefix", "3 x"], "--prefix"), (["-n", "-2"], "-2 sequences"),
])
def test_sample_with_a_bad_option_prints_an_error_and_exits_2(token_run, capsys, options, message):
    checkpoint = token_run[0] / "run" / "checkpoints" / "latest.pt"
    status, _, err = run_cli(capsys, "sample", "--checkpoint", checkpoint, *options)
    assert_error(status, err, message)


def test_sample_refuses_a_damaged_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(300))
    status, _, err = run_cli(capsys, "sample", "--checkpoint", bad)
    assert_error(status, err, str(bad))
    status, _, err = run_cli(capsys, "sample", "--checkpoint", tmp_path / "missing.pt")
    assert_error(status, err, "missing.pt")


# ----- seqgan oracle nll and seqgan bleu -----------------------------------------------------------------------
def test_oracle_nll_prints_the_nll_last(tmp_path, capsys):
    oracle = random_oracle(3, 30, 8, 8)
    save_oracle(oracle, tmp_path / "oracle.pt")
    tokens = oracle.sample(50, 10, generator=torch.Generator().manual_seed(1))
    write_token_file(tokens, tmp_path / "tokens.txt")
    status, lines, _ = run_cli(capsys, "oracle", "nll", "--params", tmp_path / "oracle.pt", tmp_path / "tokens.txt")
    assert status == 0
    assert float(lines[-1]) == pytest.approx(nll_under(oracle, tokens), abs=1e-6)

    write_token_file(torch.full((2, 10), 30), tmp_path / "outside.txt")  # ids beyond the oracle's vocabulary
    status, _, err = run_cli(capsys, "oracle", "nll", "--params", tmp_path / "oracle.pt", tmp_path / "outside.txt")
    assert_error(status, err, "outside.txt")


def test_oracle_nll_with_the_paper_pickle(tmp_path, capsys, paper_oracle_params):
    oracle = load_oracle(paper_oracle_params)
    tokens = oracle.sample(20, 20, generator=torch.Generator().manual_seed(2))
    write_token_file(tokens, tmp_path / "tokens.txt")
    status, lines, _ = run_cli(capsys, "oracle", "nll", "--params", paper_oracle_params, tmp_path / "tokens.txt")
    assert status == 0
    assert float(lines[-1]) == pytest.approx(nll_under(oracle, tokens), abs=1e-6)


def test_bleu_prints_seqgan_metrics_bleu_last(tmp_path, capsys):
    g = torch.Generator().manual_seed(5)
    words = "the a cat dog sat on mat hat".split()

    def lines(count):
        return [[words[i] for i in torch.randint(0, 8, (int(n),), generator=g)]
                for n in torch.randint(3, 9, (count,), generator=g)]

    refs, hyps = lines(30), lines(12)
    (tmp_path / "refs.txt").write_text("".join(" ".join(r) + "\n" for r in refs))
    (tmp_path / "hyps.txt").write_text("".join(" ".join(h) + "\n" for h in hyps))
    status, lines, _ = run_cli(capsys, "bleu", "--refs", tmp_path / "refs.txt", "--hyps", tmp_path / "hyps.txt",
                               "-n", 2)
    assert status == 0
    expected = bleu(refs, hyps, 2)
    assert 0 < expected < 1 and float(lines[-1]) == pytest.approx(expected, abs=1e-6)
    # a line separator or form feed inside a line separates tokens, not lines (as in corpora)
    (tmp_path / "hyps.txt").write_text("".join(" ".join(h[:2]) + "\u2028" + " ".join(h[2:]) + "\f\n" for h in hyps),
                                       encoding="utf-8")
    status, lines, _ = run_cli(capsys, "bleu", "--refs", tmp_path / "refs.txt", "--hyps", tmp_path / "hyps.txt",
                               "-n", 2)
    assert status == 0 and float(lines[-1]) == pytest.approx(expected, abs=1e-6)
    status, _, err = run_cli(capsys, "bleu", "--refs", tmp_path / "nope.txt", "--hyps", tmp_path / "hyps.txt")
    assert_error(status, err, "nope.txt")
    longest = max(len(h) for h in hyps)
    status, _, err = run_cli(capsys, "bleu", "--refs", tmp_path / "refs.txt", "--hyps", tmp_path / "hyps.txt",
                             "-n", longest + 1)
    assert_error(status, err, f"has {longest} tokens, so it has no {longest + 1}-grams")


# ----- bad options ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, name", [
    (["--seq-len", "1"], "seq_len"),
    (["--mle-epochs", "-1"], "mle_epochs"),
    (["--seq-len", "4", "--d-filter-sizes", "2", "5", "--d-num-filters", "3", "3"], "d_filter_sizes"),
    (["--d-filter-sizes", "2", "3", "--d-num-filters", "4"], "d_num_filters"),
    (["--baseline", "max"], "baseline"),
    (["--d-dropout-keep", "0"], "d_dropout_keep"),
    (["--mle-lr", "nan"], "mle_lr"),
    (["--num-train", "0"], "--num-train"),
    (["--test-fraction", "-0.5"], "--test-fraction"),
    (["--seed", str(2 ** 64)], "seed must be within 0..4,294,967,295"),
])
def test_train_with_a_bad_option_prints_an_error_and_exits_2(tmp_path, capsys, restore_sigterm, options, name):
    status, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "run", *options)
    assert_error(status, err, name)
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("command", [["experiment", "poems"], ["study", "stability"], ["oracle", "run"],
                                     ["train", "--run-dir", "never-made"]])
def test_commands_refuse_options_they_decide_themselves(capsys, command):
    """Seeds come from --seeds, the data's sizes from the corpus or oracle, the reward from the experiment: such an
    option was silently dropped, or crashed, before it was refused."""
    from seqgan.train import OPTION_HELP, TrainConfig

    option = {"train": "--reward", "oracle": "--vocab-size"}.get(command[0], "--seq-len")
    with pytest.raises(SystemExit) as exited:
        main([*command, option, "7"])
    assert exited.value.code == 2 and f"unrecognized arguments: {option} 7" in capsys.readouterr().err
    assert OPTION_HELP.keys() == TrainConfig().to_dict().keys()  # every option has its help


def test_a_bad_thread_count_in_the_environment_is_an_error_not_a_traceback(capsys, monkeypatch):
    monkeypatch.setenv("SEQGAN_THREADS", "two")
    status, _, err = run_cli(capsys, "bleu", "--refs", "r.txt", "--hyps", "h.txt")
    assert_error(status, err, "SEQGAN_THREADS")


def test_threads_can_come_before_or_after_the_command():
    from seqgan.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["--threads", "3", "train", "--run-dir", "r"]).threads == 3
    assert parse(["train", "--run-dir", "r", "--threads", "2"]).threads == 2
    assert parse(["oracle", "nll", "--params", "p", "f", "--threads", "2"]).threads == 2
    assert parse(["train", "--run-dir", "r"]).threads is None


def test_train_with_a_missing_data_file_exits_2(tmp_path, capsys, restore_sigterm):
    missing = tmp_path / "no such data.txt"
    status, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "run", "--data", missing)
    assert_error(status, err, str(missing))
    status, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "other", "--resume")
    assert_error(status, err, "config.json")
    status, _, err = run_cli(capsys, "train", "--run-dir", tmp_path, "--resume")  # a folder, but not a run
    assert_error(status, err, "config.json")
    assert not (tmp_path / ".lock").exists()  # nothing left behind in it


def signal_at_unit(argv, status_file: Path, unit: int, signum: int, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``seqgan ARGV`` in a subprocess, send it ``signum`` as soon as ``status_file`` reports ``unit`` or a
    later one, and return its exit status, stdout and stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    proc = subprocess.Popen([sys.executable, "-m", "seqgan", *map(str, argv)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert proc.poll() is None, f"the run ended before the signal: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, f"the run never reached unit {unit} to signal it there"
            try:
                reached = json.loads(status_file.read_text())["unit"]
            except (OSError, ValueError, KeyError):
                reached = -1
            if reached >= unit:
                proc.send_signal(signum)
                break
            time.sleep(0.002)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


# ----- 6. a real kill, then --resume ---------------------------------------------------------------------------
def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, capsys, restore_sigterm):
    killed, kill_at = tmp_path / "killed", 8
    returncode, _, _ = signal_at_unit(["train", "--run-dir", killed, *TINY], killed / "status.json", kill_at,
                                      signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    stopped_at = load_bundle(killed / "checkpoints" / "latest.pt")["position"]["unit"]
    assert kill_at <= stopped_at < TINY_UNITS, "the kill came too late to test resuming"

    status, lines, err = run_cli(capsys, "train", "--run-dir", killed, "--resume")
    assert status == 0, err
    assert f"resuming at unit {stopped_at} of {TINY_UNITS}" in lines
    status, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "whole", *TINY)
    assert status == 0, err

    for role in ("mle", "seqgan", "latest"):
        ours = load_bundle(killed / "checkpoints" / f"{role}.pt")
        theirs = load_bundle(tmp_path / "whole" / "checkpoints" / f"{role}.pt")
        assert state_equal(ours["generator"], theirs["generator"]), role
        assert state_equal(ours["discriminator"], theirs["discriminator"]), role
    events = RunDir(killed).events()
    assert [e["unit"] for e in events] == list(range(-1, TINY_UNITS))  # none twice, none missing
    assert without_times(events) == without_times(RunDir(tmp_path / "whole").events())
    assert RunDir(killed).read_json(RunDir(killed).status)["state"] == "finished"


def test_ctrl_c_finishes_the_unit_and_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, capsys,
                                                                                           restore_sigterm):
    stopped = tmp_path / "stopped"
    returncode, out, err = signal_at_unit(["train", "--run-dir", stopped, *TINY], stopped / "status.json", 8,
                                          signal.SIGINT)
    assert returncode == 1 and f"stopped: {stopped}" in out, err
    assert "SIGINT: stopping after the unit in progress" in err
    stopped_at = load_bundle(stopped / "checkpoints" / "latest.pt")["position"]["unit"]
    assert 8 <= stopped_at < TINY_UNITS and RunDir(stopped).read_status()["state"] == "stopped"

    status, lines, err = run_cli(capsys, "train", "--run-dir", stopped, "--resume")
    assert status == 0 and f"resuming at unit {stopped_at} of {TINY_UNITS}" in lines, err
    status, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "whole", *TINY)
    assert status == 0, err
    ours, theirs = (load_bundle(d / "checkpoints" / "latest.pt") for d in (stopped, tmp_path / "whole"))
    assert state_equal(ours["generator"], theirs["generator"])
    assert state_equal(ours["discriminator"], theirs["discriminator"])
    assert without_times(RunDir(stopped).events()) == without_times(RunDir(tmp_path / "whole").events())


def tiny_with(**changes) -> list[str]:
    """TINY with some options' values changed."""
    argv = list(TINY)
    for name, value in changes.items():
        argv[argv.index(f"--{name.replace('_', '-')}") + 1] = str(value)
    return argv


def test_resume_without_latest_starts_again_and_keeps_one_copy_of_each_event(tmp_path, capsys, restore_sigterm):
    """latest.pt deleted (or never written): --resume says so and trains from the beginning, and the earlier
    attempt's events go (else every curve would hold them twice)."""
    run = tmp_path / "run"
    status, _, err = run_cli(capsys, "train", "--run-dir", run, *tiny_with(adv_iters=2))
    assert status == 0, err
    (run / "checkpoints" / "latest.pt").unlink()
    status, lines, err = run_cli(capsys, "train", "--run-dir", run, "--resume")
    assert status == 0, err
    assert f"{run / 'checkpoints' / 'latest.pt'} does not exist: the run starts again from the beginning" in lines
    assert [e["unit"] for e in RunDir(run).events()] == list(range(-1, 3 + 2 + 2))
    assert (run / "checkpoints" / "latest.pt").exists() and RunDir(run).read_status()["state"] == "finished"


def test_resume_refuses_what_is_not_this_runs_to_continue(tmp_path, capsys, restore_sigterm):
    run, other = tmp_path / "run", tmp_path / "other"
    for folder, argv in ((run, tiny_with(adv_iters=2)), (other, tiny_with(adv_iters=2, seed=4))):
        status, _, err = run_cli(capsys, "train", "--run-dir", folder, *argv)
        assert status == 0, err
    latest = run / "checkpoints" / "latest.pt"
    own = latest.read_bytes()
    # another run's checkpoint
    latest.write_bytes((other / "checkpoints" / "latest.pt").read_bytes())
    status, _, err = run_cli(capsys, "train", "--run-dir", run, "--resume")
    assert_error(status, err, "other settings than this run's config.json (seed)")
    # a slim (exported) checkpoint
    status, _, err = run_cli(capsys, "export", "--run-dir", run, "--out", tmp_path / "slim")
    assert status == 0, err
    latest.write_bytes((tmp_path / "slim" / "checkpoints" / "seqgan.pt").read_bytes())
    status, _, err = run_cli(capsys, "train", "--run-dir", run, "--resume")
    assert_error(status, err, "cannot continue training")
    status, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "slim", "--resume")  # the exported folder
    assert_error(status, err, "an exported run samples but cannot continue training")
    latest.write_bytes(own)
    # options that would change the saved settings
    status, _, err = run_cli(capsys, "train", "--run-dir", run, "--resume", "--mle-epochs", "50", "--seed", "1",
                             "--num-train", "5")
    assert_error(status, err, "--mle-epochs, --num-train, --seed would change them")
    status, _, err = run_cli(capsys, "train", "--run-dir", run, "--resume", "--device", "cpu")
    assert status == 0, err


def test_resume_refuses_a_run_another_process_is_training(tmp_path, capsys, restore_sigterm):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "seqgan", "train", "--run-dir", str(run),
                                *tiny_with(adv_iters=100000)], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 60
        while (RunDir(run).read_status() or {}).get("state") != "running":
            assert process.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        status, _, err = run_cli(capsys, "train", "--run-dir", run, "--resume")
        assert_error(status, err, f"another process (pid {process.pid}) is training this run")
    finally:
        process.kill()
        process.wait()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_new_run_refused_for_its_device_or_vocabulary_leaves_no_folder(tmp_path, capsys, restore_sigterm):
    data = tmp_path / "ids.txt"
    data.write_text("1 2 3 4\n5 4 3 2\n" * 10)
    for argv, problem in [([*TINY, "--device", "cuda"], "CUDA is not available"),
                          (["--data", data, "--vocab-size", "3", "--device", "cpu"], "has token id 5")]:
        status, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "run", *argv)
        assert_error(status, err, problem)
        assert not (tmp_path / "run").exists()


# A tiny Table 1 run (the oracle keeps the paper's 5,000 tokens; length 6): 1 MLE epoch, 1 D round, 30 iterations.
TINY_ORACLE = ["--models", "Random", "MLE", "SeqGAN", "--preset", "demo", "--seeds", "1", "--seq-len", "6",
               "--g-emb-dim", "8", "--g-hidden-dim", "8", "--mle-epochs", "1", "--d-pretrain-rounds", "1",
               "--num-negatives", "64", "--d-emb-dim", "8", "--d-filter-sizes", "2", "3", "--d-num-filters", "4", "4",
               "--d-epochs", "1", "--adv-iters", "30", "--d-steps", "1", "--rollouts", "2", "--eval-every", "10",
               "--eval-samples", "64", "--checkpoint-seconds", "0"]


def test_sigterm_stops_an_experiment_after_the_unit_and_the_same_command_continues(tmp_path, capsys):
    out = tmp_path / "table1"
    status_file = out / "seed1" / "seqgan" / "status.json"
    # signalled once 1 MLE epoch, 1 D round and 1 adversarial iteration are done
    returncode, _, err = signal_at_unit(["oracle", "run", *TINY_ORACLE, "--out", out], status_file, 3,
                                        signal.SIGTERM, timeout=120)
    assert returncode == 1, err
    assert "SIGTERM: stopping after the unit in progress" in err
    assert "stopped: " in err and "latest.pt saved; the same command run again continues" in err
    stopped_at = load_bundle(out / "seed1" / "seqgan" / "checkpoints" / "latest.pt")["position"]["unit"]
    assert 3 <= stopped_at < 32 and json.loads(status_file.read_text())["state"] == "stopped"
    assert not (out / "table1.md").exists()
    status, _, err = run_cli(capsys, "oracle", "table", "--out", out, "--seeds", "1")  # no table of a half run
    assert_error(status, err, "seed 1 has not finished here")
    assert not (out / "table1.md").exists()

    status, lines, err = run_cli(capsys, "oracle", "run", *TINY_ORACLE, "--out", out)
    assert status == 0, err
    assert f"[seed 1] SeqGAN: units {stopped_at}..32" in lines
    events = RunDir(out / "seed1" / "seqgan").events()
    assert [e["unit"] for e in events] == list(range(-1, 32))  # none twice, none missing
    assert (out / "table1.md").exists()
    finished = status_file.read_text()
    status_file.write_text(json.dumps({**json.loads(finished), "state": "stopped"}))
    status, _, err = run_cli(capsys, "oracle", "table", "--out", out, "--seeds", "1")
    assert_error(status, err, "the SeqGAN run of seed 1 has not finished")
    status_file.write_text(finished)
    # the in-process command gave this process its signal handlers back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and not STOP.is_set()


def test_freed_logits_chunks_stay_with_the_process_on_glibc():
    """MLE steps at the paper's vocabulary in a fresh process: by default glibc hands the freed chunks of logits
    back to the system and every batch faults in new pages; after ``keep_freed_memory`` it reuses them."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc" or os.environ.get("LD_PRELOAD"):
        pytest.skip("the allocator limits are glibc's malloc's")
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" in thp.read_text():
        pytest.skip("with transparent huge pages always on, a fresh 2.5 MB block faults in a few huge pages")
    script = """
import resource, sys, torch
from seqgan.cli import keep_freed_memory
from seqgan.models import Generator
from seqgan.train import adam
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
G = Generator(5000)
optimizer = adam(G.parameters(), lr=0.01)
data = torch.randint(0, 5000, (64 * 10, 20))
def epoch():
    for i in range(0, len(data), 64):
        optimizer.zero_grad(set_to_none=True)
        G.nll(data[i:i + 64]).backward()
        optimizer.step()
epoch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
epoch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    faults = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                       check=True, env=dict(env, OMP_NUM_THREADS="1")).stdout)
              for mode in ("keep", "default")}
    assert faults["default"] > 10_000 and faults["default"] > 20 * faults["keep"], faults
