"""The Streamlit app through streamlit.testing's AppTest: every page, with real data and tiny real runs.

Runs go to a temporary ``SEQGAN_RUNS_DIR``; built-in demo runs are tiny real runs in a temporary
``SEQGAN_DEMO_DIR`` (made by ``seqgan train`` in a few seconds). Training jobs are real background processes.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from e2e_helpers import APP, REPO, TINY, abc_tunes, make_runs, melody_zip, poem_lines
from seqgan import cli, flops, jobs, studio
from seqgan.checkpoint import bundle_bytes, load_bundle, save_bundle
from seqgan.errors import SeqGANError
from seqgan.runs import RunDir
from seqgan.train import TrainConfig

AppTest = pytest.importorskip("streamlit.testing.v1", reason="streamlit is not installed").AppTest


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def runs_dir(tmp_path, monkeypatch, demo_runs):
    monkeypatch.setenv("SEQGAN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SEQGAN_DEMO_DIR", str(demo_runs))
    yield tmp_path / "runs"
    for run, _ in jobs.active_runs(tmp_path / "runs"):  # never leave a job behind
        jobs.stop(run, force=True)


@pytest.fixture
def no_demos(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQGAN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SEQGAN_DEMO_DIR", str(tmp_path / "no-demos"))


def open_page(page: str, **query) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update(query)
    at.run()
    if page:
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    """All text on the page: markdown, captions, messages, metrics."""
    parts = [e.value for kind in ("markdown", "caption", "info", "success", "warning", "error", "title", "subheader",
                                  "header") for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


def elements(at: AppTest, kind: str) -> list:
    return [e for e in at.get(kind)]


def user_run(runs_dir, demo_runs, name: str = "melodies") -> str:
    """A finished run of the user's (a copy of a tiny demo run)."""
    shutil.copytree(demo_runs / name, runs_dir / f"mine-{name}")
    return f"mine-{name}"


# ----- Start ----------------------------------------------------------------------------------------------------
def test_start_page_plays_a_demo_melody_and_shows_demo_verse(runs_dir):
    at = open_page("")
    assert len(elements(at, "audio")) == 1 and len(elements(at, "image")) == 1
    assert at.get("download_button")[0].label == "Download MIDI"
    verse = next(m.value for m in at.markdown if m.value.startswith(">"))
    assert verse.count("\n") == 5
    at.button[0].click().run()  # "Generate others": the next seed
    assert next(m.value for m in at.markdown if m.value.startswith(">")) != verse


def test_start_page_without_demos_says_how_to_get_them(no_demos, tmp_path):
    at = open_page("")
    shown = texts(at)
    assert f"SeqGAN model is not in {tmp_path / 'no-demos' / 'melodies'}" in shown and not elements(at, "audio")
    assert "Train one on the Train page" in shown


# ----- Data -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, data, problem", [
    ("empty.txt", b"", "file is empty"),
    ("binary.txt", bytes(range(256)) * 8, "binary file"),
    ("latin1.txt", "caf\xe9 cr\xe8me\nna\xefve line\n".encode("latin-1"), "not valid UTF-8"),
    ("one.txt", b"just one line\n", "only 1 non-empty line"),
    ("broken.mid", b"MThd\x00\x00\x00\x06garbage", "no melody could be read"),
], ids=["empty", "binary", "latin-1", "one-line", "corrupt-midi"])
def test_data_page_names_the_file_and_the_problem(runs_dir, name, data, problem):
    at = open_page("data")
    at.file_uploader[0].upload(name, data)
    at.run()
    next(b for b in at.button if b.label == "Read the corpus").click().run()
    assert not at.exception, [e.value for e in at.exception]
    message = " ".join(e.value for e in at.error)
    assert name in message and problem in message, message
    assert not (runs_dir / "corpora").exists()  # nothing kept of a corpus that cannot be used


def test_data_page_refuses_a_text_file_mixed_with_melodies(runs_dir):
    at = open_page("data")
    at.file_uploader[0].upload("poems.txt", poem_lines(20)).upload("tunes.abc", abc_tunes(2))
    at.run()
    next(b for b in at.button if b.label == "Read the corpus").click().run()
    assert "a text corpus is one .txt file" in at.error[0].value and "poems.txt" in at.error[0].value


def test_data_page_summarises_a_text_upload_and_keeps_it_for_training(runs_dir):
    at = open_page("data")
    at.file_uploader[0].upload("poems.txt", poem_lines(200))
    at.run()
    next(b for b in at.button if b.label == "Read the corpus").click().run()
    shown = texts(at)
    assert "Training sequences" in shown and "SentencePiece" in shown and not at.error
    assert elements(at, "arrow_vega_lite_chart") or elements(at, "vega_lite_chart") or "Lengths" in shown
    lines = poem_lines(200).decode().splitlines()
    examples = re.sub(r"\\(.)", r"\1", next(m.value for m in at.markdown if m.value.startswith(">")))
    assert sum(line in examples for line in lines) >= 3  # decoded examples are lines of the corpus
    choice = at.session_state["train_corpus"]
    assert choice.startswith("upload:") and (runs_dir / "corpora" / choice.split(":", 1)[1] / "poems.txt").exists()
    # the Train page offers it, preselected
    at.switch_page("app_pages/train.py").run()
    assert at.selectbox[0].value == choice


def test_the_train_page_starts_from_the_data_page_s_tokenizer_and_length_settings(runs_dir):
    at = open_page("data")
    at.file_uploader[0].upload("poems.txt", poem_lines(200))
    at.selectbox[0].set_value("bpe")
    at.number_input[0].set_value(300)
    at.number_input[1].set_value(40)
    at.run()
    next(b for b in at.button if b.label == "Read the corpus").click().run()
    assert not at.error, [e.value for e in at.error]
    choice = at.session_state["train_corpus"]
    at.switch_page("app_pages/train.py").run()
    assert at.selectbox[0].value == choice
    assert next(b for b in at.selectbox if b.label == "Text tokenizer").value == "bpe"
    assert at.number_input(key=f"opt-quick-text-vocab_size-{choice}").value == 300
    assert at.number_input(key=f"opt-quick-text-seq_len-{choice}").value == 40


def test_only_settings_typed_on_the_data_page_replace_the_preset_s():
    def defaults(kind, settings):
        return {s.name: s.default for s in studio.option_specs("quick", kind, settings)}
    assert defaults("text", {"vocab_size": None, "seq_len": None})["vocab_size"] == 2000  # auto: the preset's
    assert defaults("text", {"vocab_size": 300, "seq_len": 40})["vocab_size"] == 300
    music = defaults("music", {"vocab_size": 300, "seq_len": 16})
    assert music["vocab_size"] is None and music["seq_len"] == 16  # a melody's vocabulary is fixed


def test_a_corpus_with_nothing_held_out_says_so_on_the_data_and_compare_pages(runs_dir, tmp_path):
    at = open_page("data")
    at.file_uploader[0].upload("one.abc", abc_tunes(1))  # held out by whole tune: one tune leaves none
    at.run()
    next(b for b in at.button if b.label == "Read the corpus").click().run()
    shown = texts(at)
    assert "Nothing is held out" in shown and "fewer than one batch of 64" in shown, shown
    assert re.search(r"\b1 tune, \d+ windows", shown), shown

    from seqgan.cli import main
    (tmp_path / "poems.txt").write_bytes(poem_lines(100))
    assert main(["train", "--run-dir", str(runs_dir / "no-heldout"), "--corpus", str(tmp_path / "poems.txt"),
                 "--test-fraction", "0", "--vocab-size", "100", *TINY]) == 0
    at = open_page("compare", run="no-heldout")
    assert "its corpus had nothing held out" in at.info[0].value, at.info[0].value


def test_upload_names_keep_their_letters(runs_dir):
    choice = studio.save_corpus_files([("ünïcode name (1).txt", poem_lines(20))])
    assert choice.label.endswith("ünïcode-name-1.txt"), choice.label
    assert studio.save_corpus_files([("唐诗 三百首.txt", poem_lines(20))]).label.endswith("唐诗-三百首.txt")
    assert studio.save_corpus_files([("../../x.txt", poem_lines(20))]).source.startswith(str(runs_dir / "corpora"))


def test_uploads_that_share_a_name_are_all_kept_and_read_as_the_preview_read_them(runs_dir):
    from seqgan.corpus import load_corpus

    files = [("tune.abc", abc_tunes(2)), ("tune-1.abc", abc_tunes(3)), ("tune (1).abc", abc_tunes(1)),
             ("tune.abc", abc_tunes(4))]
    choice = studio.save_corpus_files(files)
    kept = sorted(p.name for p in Path(choice.source).iterdir())
    assert kept == ["tune-1-2.abc", "tune-1.abc", "tune-2.abc", "tune.abc"], kept
    preview, saved = load_corpus(studio.upload_source(files)), load_corpus(choice.source)
    assert torch.equal(preview.train, saved.train) and torch.equal(preview.heldout, saved.heldout)
    assert studio.save_corpus_files(list(reversed(files))).source == choice.source  # the same upload: one copy


def test_data_page_lists_bad_melody_files_and_plays_the_good_ones(runs_dir):
    at = open_page("data")
    at.file_uploader[0].upload("tunes.zip", melody_zip())
    at.run()
    next(b for b in at.button if b.label == "Read the corpus").click().run()
    assert not at.error and "left out" in texts(at)
    problems = at.dataframe[0].value
    assert list(problems["file or tune"]) == ["tunes.zip/tunes/broken.mid"]
    assert len(elements(at, "audio")) == 3 and len(at.get("download_button")) == 3


# ----- Train ----------------------------------------------------------------------------------------------------
def wait_for(run_id: str, states, timeout: float = 60.0) -> str:
    deadline, state = time.monotonic() + timeout, "not there yet"
    while time.monotonic() < deadline:
        try:
            state = studio.get_run(run_id).state.state
        except studio.InputError:  # a terminal run before the trainer wrote config.json
            state = "not there yet"
        if state in states:
            return state
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not reach {states} in {timeout} s (it is {state})")


def test_train_page_starts_stops_and_resumes_a_real_job(runs_dir):
    choice = studio.save_corpus_files([("poems.txt", poem_lines(200))])
    at = open_page("train")
    at.selectbox[0].set_value(choice.id)
    at.radio[0].set_value("smoke")
    at.run()
    # many short MLE epochs: the job is still running when it is stopped
    at.number_input(key="opt-smoke-text-mle_epochs").set_value(3000)
    at.number_input(key="opt-smoke-text-checkpoint_seconds").set_value(0.0)
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.error, [e.value for e in at.error]
    run_id = at.session_state["train_run"]
    info = studio.get_run(run_id)
    job = jobs.read_job(info.run)
    assert job["command"][2:6] == ["seqgan", "--threads", "1", "train"] and job["device"] in jobs.device_slots()
    assert wait_for(run_id, ("running",)) == "running"

    # one job per machine (or per GPU): a second start is refused with the reason
    if jobs.device_slots() == ["cpu"]:
        folders = sorted(runs_dir.iterdir())
        next(b for b in at.button if b.label == "Start training").click().run()
        assert "already training" in at.error[0].value
        assert sorted(runs_dir.iterdir()) == folders  # the refused run left no folder

    at = open_page("train", run=run_id)  # a new session (a browser refresh) finds the job again
    assert "state **running**" in texts(at)
    next(b for b in at.button if b.label == "Stop").click().run()
    assert wait_for(run_id, ("stopped",)) == "stopped"
    stopped = RunDir(runs_dir / run_id)
    bundle = load_bundle(stopped.checkpoint("latest"))
    assert 0 < bundle["position"]["unit"] < bundle["position"]["total"]

    at.run()
    assert "state **stopped**" in texts(at)
    next(b for b in at.button if b.label == "Resume").click().run()
    assert wait_for(run_id, ("running",)) == "running"
    assert jobs.read_job(stopped)["resumed"] is True
    studio.stop_training(run_id)
    assert wait_for(run_id, ("stopped",)) == "stopped"

    # without latest.pt the run can only start again: the deletion says so, and so does the button
    at = open_page("checkpoints")
    at.selectbox[0].set_value(f"{run_id}/latest").run()
    next(b for b in at.button if b.label == "Delete checkpoint…").click().run()
    assert "cannot resume without it" in at.warning[0].value
    next(b for b in at.button if b.label == "Yes, delete").click().run()
    at = open_page("train", run=run_id)
    assert not any(b.label == "Resume" for b in at.button)
    assert max(e["unit"] for e in stopped.events()) > 0
    next(b for b in at.button if b.label == "Start again").click().run()
    assert not [e for e in stopped.events() if e["unit"] > 0]  # the old attempt's progress is gone at once
    assert wait_for(run_id, ("running",)) == "running"
    studio.stop_training(run_id)
    assert wait_for(run_id, ("stopped",)) == "stopped"
    units = [e["unit"] for e in stopped.events()]
    assert units == list(range(-1, len(units) - 1))  # the earlier attempts' events are gone


def test_an_exported_run_is_a_record_never_offered_to_resume_and_never_emptied(runs_dir, demo_runs):
    run = RunDir(runs_dir / user_run(runs_dir, demo_runs, "poems"))
    run.write_json(run.status, {**run.read_status(), "state": "stopped"})  # as if stopped part-way, then exported
    assert cli.main(["export", "--run-dir", str(run.path), "--out", str(runs_dir / "exported")]) == 0
    exported = studio.get_run("exported")
    events = exported.run.events()
    assert exported.state.state == "stopped" and not exported.resumable
    at = open_page("train", run="exported")
    assert not any(b.label in ("Resume", "Start again") for b in at.button)
    with pytest.raises(SeqGANError, match="has no train.txt"):
        studio.resume_training("exported")
    assert exported.run.events() == events and len(events) > 1  # its record is untouched


def test_runs_with_a_config_this_version_cannot_read_or_no_units_do_not_break_the_train_page(runs_dir, demo_runs):
    odd = RunDir(runs_dir / user_run(runs_dir, demo_runs, "poems"))
    saved = odd.read_config()
    odd.write_json(odd.config, {**saved, "config": {**saved["config"], "from_a_newer_version": 1}})
    odd.write_json(odd.status, {**odd.read_status(), "state": "stopped", "unit": 1, "phase": "mle", "step": 1})
    odd.truncate_events(1)  # stopped after its first unit
    empty = RunDir(runs_dir / user_run(runs_dir, demo_runs, "melodies"))  # a schedule of no units, finished
    saved = empty.read_config()
    empty.write_json(empty.config, {**saved, "config": {**saved["config"], "mle_epochs": 0, "d_pretrain_rounds": 0,
                                                        "adv_iters": 0}})
    empty.write_json(empty.status, {**empty.read_status(), "units": 0, "unit": 0})
    at = open_page("train", run=odd.name)
    assert odd.name in texts(at)
    assert studio.progress_line(studio.run_progress(studio.get_run(odd.name))).startswith(
        "MLE pre-training of the generator: unit 1 of 5 · time left unknown")
    progress = studio.run_progress(studio.get_run(empty.name))
    assert studio.progress_line(progress).startswith("done: 0 units in ") and progress.fraction == 1.0


def test_train_page_follows_a_smoke_run_to_the_end(runs_dir):
    choice = studio.save_corpus_files([("tunes.abc", abc_tunes(8))])
    run_id = studio.start_training(choice.id, "smoke", {s.name: s.default for s in studio.option_specs("smoke",
                                                                                                       "music")})
    assert wait_for(run_id, ("finished", "failed")) == "finished", studio.get_run(run_id).state.message
    at = open_page("train")
    shown = texts(at)
    assert "state **finished**" in shown
    bar = at.get("progress")[0].proto
    assert bar.value == 100 and bar.text.startswith("done: 3 units in")
    for label in ("MLE loss", "PG loss", "D loss", "D accuracy", "NLL-test", "BLEU-4", "Self-BLEU-4", "distinct-2"):
        assert label in shown, label
    assert len(elements(at, "arrow_vega_lite_chart") or elements(at, "vega_lite_chart")) >= 6
    assert [h.value for h in at.subheader][-2:] == ["Training", "Quality against diversity"]
    assert any(b.label == "Compare its models" for b in at.button)


def test_the_stability_options_reach_the_job_command():
    specs = {s.name: s for s in studio.option_specs("quick", "text")}
    assert specs["critic"].choices == ["classifier", "wasserstein"] and specs["critic"].default == "classifier"
    assert specs["reward_norm"].choices == ["none", "std"] and specs["baseline"].choices == ["none", "mean"]
    assert {specs[n].group for n in ("baseline", "reward_norm", "critic", "gp_weight")} == {
        "Beyond the paper (stability options, off by default)"}
    choice = studio.corpus_choice("builtin:poems")
    options = {name: spec.default for name, spec in specs.items()}
    assert "--critic" not in studio.training_args(choice, options)  # defaults stay off the command
    args = studio.training_args(choice, {**options, "critic": "wasserstein", "reward_norm": "std", "gp_weight": 5.0})
    assert args[args.index("--critic") + 1] == "wasserstein" and args[args.index("--reward-norm") + 1] == "std"
    assert args[args.index("--gp-weight") + 1] == "5.0"


def test_train_page_shows_why_a_job_failed(runs_dir):
    choice = studio.save_corpus_files([("poems.txt", poem_lines(50))])
    options = {s.name: s.default for s in studio.option_specs("smoke", "text")}
    run_id = studio.start_training(choice.id, "smoke", {**options, "seq_len": 3})  # no line fits in 2 tokens
    assert wait_for(run_id, ("failed", "finished")) == "failed"
    at = open_page("train")
    assert "fewer than two lines fit" in at.error[0].value


def test_a_failed_run_can_be_tried_again_and_a_full_disk_is_a_failure_not_an_interruption(runs_dir, demo_runs):
    run = RunDir(runs_dir / user_run(runs_dir, demo_runs, "poems"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run.write_json(run.job, {"pid": dead.pid, "started": 1.0, "command": []})
    # the trainer died on an error it could not record: status.json still says running
    run.write_json(run.status, {**run.read_status(), "state": "running", "pid": dead.pid, "updated": 2.0})
    run.output.write_text("--- 2026-11-25 06:00:00 -m seqgan train\nunit 3\nerror: No space left on device\n")
    info = studio.get_run(run.name)
    assert (info.state.state, info.state.message) == ("failed", "No space left on device") and info.resumable
    at = open_page("train", run=run.name)
    assert "No space left on device" in at.error[0].value
    assert any(b.label == "Resume" for b in at.button)  # tried again once the cause is mended
    run.output.write_text("--- 2026-11-25 06:00:00 -m seqgan train\nunit 3\n")  # killed: no error printed
    assert studio.get_run(run.name).state.state == "interrupted"
    # Start again (no latest.pt) while another run holds the machine's one slot: refused, its record kept
    run.write_json(run.status, {**run.read_status(), "state": "failed", "error": "x"})
    run.checkpoint("latest").unlink()
    events = run.events()
    busy = RunDir(runs_dir / "busy").create()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(busy.path)])
    try:
        busy.write_json(busy.job, {"pid": holder.pid, "device": "cpu", "started": time.time(), "command": []})
        if jobs.device_slots() == ["cpu"]:
            with pytest.raises(SeqGANError, match="already"):
                studio.resume_training(run.name)
            assert run.events() == events and len(events) > 1
    finally:
        holder.kill()
        holder.wait()


def test_runs_started_in_the_same_second_get_their_own_folders(runs_dir):
    ids = [studio.new_run_id("poems-smoke") for _ in range(3)]
    assert len(set(ids)) == 3 and all((runs_dir / i).is_dir() for i in ids)


def test_a_corpus_deleted_after_it_was_chosen_is_not_silently_replaced(runs_dir):
    choice = studio.save_corpus_files([("poems.txt", poem_lines(50))])
    at = open_page("train")
    at.selectbox[0].set_value(choice.id).run()
    shutil.rmtree(Path(choice.source).parent if Path(choice.source).is_file() else choice.source)  # deleted elsewhere
    next(b for b in at.button if b.label == "Start training").click().run()
    assert "is no longer there" in at.warning[0].value and not studio.list_runs(include_demos=False)
    next(b for b in at.button if b.label == "Start training").click().run()  # still not: nothing was chosen
    assert "is no longer there" in at.warning[0].value and not studio.list_runs(include_demos=False)


def test_a_job_killed_from_outside_says_it_was_killed(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQGAN_CACHE_DIR", str(tmp_path / "empty-cache"))  # the built-in melodies parse for a while
    run = RunDir(runs_dir / "killed")
    state = jobs.start(run, ["--corpus", "builtin:melodies", "--mle-epochs", "1"])
    os.kill(state.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    state = jobs.wait(run, ("failed", "stopped", "finished"))
    assert state.state == "failed" and state.message.startswith("the process was killed (SIGKILL, perhaps for lack "
                                                                "of memory)"), state.message


def test_a_bad_option_is_refused_before_anything_starts(runs_dir):
    choice = studio.save_corpus_files([("poems.txt", poem_lines(50))])
    at = open_page("train")
    at.selectbox[0].set_value(choice.id)
    at.run()
    counts = at.text_input(key="opt-quick-text-d_num_filters")
    saved = counts.value
    counts.set_value("10 10")
    next(b for b in at.button if b.label == "Start training").click().run()
    assert "d_num_filters needs one count per width of d_filter_sizes" in at.error[0].value
    at.text_input(key="opt-quick-text-d_num_filters").set_value(saved)
    for name, value, problem in [("vocab_size", 0, "vocab_size must be at least 5 for a text corpus"),
                                 ("seq_len", 5000, "seq_len must be at most 4,096"),
                                 ("batch_size", 10 ** 8, "batch_size must be at most 65,536")]:
        box = at.number_input(key=f"opt-quick-text-{name}")
        saved = box.value
        box.set_value(value)
        next(b for b in at.button if b.label == "Start training").click().run()
        assert problem in at.error[0].value, (name, at.error[0].value)
        at.number_input(key=f"opt-quick-text-{name}").set_value(saved)
    assert not studio.list_runs(include_demos=False)


# ----- Compare --------------------------------------------------------------------------------------------------
def test_compare_opens_on_the_demo_melodies_with_players_for_both_models(runs_dir):
    at = open_page("compare")
    assert at.selectbox[0].value == "demo:melodies"
    headers = [m.value for m in at.markdown if m.value.startswith("**") and "demo melodies" in m.value]
    assert headers == ["**MLE — demo melodies**", "**SeqGAN — demo melodies**"]
    assert len(elements(at, "audio")) == 6 and len(at.get("download_button")) == 6 and len(elements(at, "image")) == 6
    table = at.dataframe[0].value
    assert {"NLL-test", "BLEU-2", "BLEU-3", "BLEU-4", "Self-BLEU-4", "distinct-2", "MSE (melody)",
            "silent windows (melody)"} <= set(table.index)
    assert list(table.columns) == ["better", "MLE — demo melodies", "SeqGAN — demo melodies"]
    diversity = at.dataframe[1].value
    assert set(diversity.index) == {"Self-BLEU-4", "distinct-2"}


def test_compare_samples_follow_temperature_and_seed_and_a_second_run(runs_dir, demo_runs):
    user = user_run(runs_dir, demo_runs, "poems")
    at = open_page("compare", run="demo:poems")
    assert at.selectbox[0].value == "demo:poems"

    def samples():
        return [m.value for m in at.markdown if m.value.startswith("1. ")]

    first = samples()
    assert len(first) == 2 and all(s.count("\n") == 7 for s in first)  # 8 lines per model
    at.number_input[0].set_value(1).run()
    assert samples() != first
    at.number_input[0].set_value(0).run()
    assert samples() == first  # the same seed gives the same samples
    at.slider[1].set_value(0.3).run()
    assert samples() != first
    at.selectbox[1].set_value(user).run()
    assert len(samples()) == 4 and list(at.dataframe[0].value.columns)[-1] == f"SeqGAN — {user}"


def test_compare_without_models_says_what_to_do(no_demos):
    at = open_page("compare")
    assert "Nothing to compare yet" in at.info[0].value


# ----- Checkpoints ----------------------------------------------------------------------------------------------
class Payload:
    def __reduce__(self):
        return (print, ("this would run when unpickled",))


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name, make, problem", [
    ("empty.pt", lambda bundle: b"", "the file is empty"),
    ("noise.pt", lambda bundle: bytes(range(256)) * 10, "not a SeqGAN Studio checkpoint or the file is damaged"),
    ("pickled-code.pt", lambda bundle: torch_bytes({**bundle, "extra": Payload()}), "never loaded"),
    ("plain-pickle.pt", lambda bundle: pickle.dumps(bundle["config"]), "the file is damaged"),
    ("foreign.pt", lambda bundle: torch_bytes(torch.nn.Linear(2, 2).state_dict()), "expected format"),
    ("mismatched.pt", lambda bundle: bundle_bytes({**bundle, "config": {**bundle["config"], "g_hidden_dim": 9}}),
     "output.weight is [200, 8], but the configuration says [200, 9]"),
    ("huge-vocab.pt", lambda bundle: bundle_bytes({**bundle, "config": {**bundle["config"], "vocab_size": 10 ** 9}}),
     "embedding.weight is [200, 8], but the configuration says [1000000000, 8]"),
    ("start-token.pt", lambda bundle: bundle_bytes({**bundle, "config": {**bundle["config"], "start_token": 200}}),
     "start_token 200 is outside the vocabulary 0..199"),
    ("nan.pt", lambda bundle: bundle_bytes({**bundle, "generator": {
        **bundle["generator"], "output.bias": torch.full_like(bundle["generator"]["output.bias"], float("nan"))}}),
     "output.bias holds numbers that are not finite"),
    ("role.pt", lambda bundle: bundle_bytes({**bundle, "role": "../../etc"}), "unknown checkpoint role"),
    ("kind.pt", lambda bundle: bundle_bytes({**bundle, "kind": "<script>"}), "unknown checkpoint kind '<script>'"),
    ("tokens-with-tokenizer.pt", lambda bundle: bundle_bytes({**bundle, "kind": "tokens"}),
     "a tokens checkpoint has no tokenizer, but this one carries a text one"),
    ("position.pt", lambda bundle: bundle_bytes({**bundle, "position": 3}), "position in the schedule"),
    ("unit.pt", lambda bundle: bundle_bytes({**bundle, "position": {"unit": -4, "total": 5}}),
     "position in the schedule"),
    ("edited.pt", lambda bundle: torch_bytes({**bundle, "role": "mle"}), "changed or damaged after it was saved"),
], ids=["empty", "noise", "pickled-code", "plain-pickle", "foreign", "mismatched", "huge-vocab", "start-token", "nan",
        "role", "kind", "tokens-with-tokenizer", "position", "unit", "edited"])
def test_checkpoint_uploads_that_are_not_ours_get_a_clear_error(runs_dir, demo_runs, name, make, problem):
    bundle = load_bundle(demo_runs / "poems" / "checkpoints" / "seqgan.pt")
    at = open_page("checkpoints")
    at.file_uploader[0].upload(name, make(bundle))
    at.run()
    assert not at.exception
    assert name in at.error[0].value and problem in at.error[0].value, at.error[0].value
    assert not list((runs_dir / "uploaded").glob("*.pt")) if (runs_dir / "uploaded").exists() else True


def test_compare_shows_a_latest_checkpoint_with_the_metrics_of_its_own_unit(runs_dir, demo_runs):
    run = RunDir(runs_dir / user_run(runs_dir, demo_runs, "poems"))
    bundle = load_bundle(run.checkpoint("mle"))  # MLE ended at unit mle_epochs; pretend latest.pt was saved at 1
    save_bundle({**bundle, "role": "latest", "position": {**bundle["position"], "unit": 1}}, run.checkpoint("latest"))
    run.checkpoint("mle").unlink()
    run.checkpoint("seqgan").unlink()  # as in a run killed during MLE, whose later units were logged, not saved
    [ref] = studio.models_of(run.name)
    [first] = [e for e in run.events() if e["unit"] == 0]  # the one unit latest.pt had trained
    assert ref.measured == "after MLE epoch 1" and ref.metrics["nll_test"] == first["nll_test"]
    assert [e for e in run.events() if e["unit"] >= 1 and "nll_test" in e]  # what it showed before


def test_an_uploaded_checkpoint_is_kept_listed_and_compared(runs_dir, demo_runs):
    data = (demo_runs / "melodies" / "checkpoints" / "seqgan.pt").read_bytes()
    at = open_page("checkpoints")
    at.file_uploader[0].upload("my model.pt", data)
    at.run()
    assert "a music checkpoint (seqgan)" in at.success[0].value
    assert at.selectbox[0].value == "upload:my-model.pt"
    at.run()  # the same upload is not kept twice
    assert len(list((runs_dir / "uploaded").glob("*.pt"))) == 1
    next(b for b in at.button if b.label == "Open in Compare").click().run()
    assert at.selectbox[0].value == "upload:my-model.pt"
    assert len(elements(at, "audio")) == 3 and "No training metrics" in at.info[0].value


def test_a_deletion_question_goes_with_the_selection_it_was_asked_for(runs_dir, demo_runs):
    run_id = user_run(runs_dir, demo_runs)
    at = open_page("checkpoints")
    at.selectbox[0].set_value(f"{run_id}/mle").run()
    next(b for b in at.button if b.label == "Delete checkpoint…").click().run()
    assert f"{run_id}/mle" in at.warning[0].value
    at.selectbox[0].set_value(f"{run_id}/seqgan").run()  # another checkpoint: the question about mle.pt is gone
    assert not at.warning and not any(b.label == "Yes, delete" for b in at.button)
    assert (runs_dir / run_id / "checkpoints" / "mle.pt").exists()


def test_checkpoints_download_and_delete_with_confirmation(runs_dir, demo_runs):
    run_id = user_run(runs_dir, demo_runs)
    at = open_page("checkpoints")
    at.selectbox[0].set_value(f"{run_id}/mle").run()
    download = at.get("download_button")[0]
    assert download.label == f"Download {run_id}-mle.pt" and download.proto.url
    next(b for b in at.button if b.label == "Delete checkpoint…").click().run()
    assert "cannot be undone" in at.warning[0].value
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert (runs_dir / run_id / "checkpoints" / "mle.pt").exists() and not at.warning
    next(b for b in at.button if b.label == "Delete checkpoint…").click().run()
    next(b for b in at.button if b.label == "Yes, delete").click().run()
    assert not (runs_dir / run_id / "checkpoints" / "mle.pt").exists()
    assert f"{run_id}/mle" not in at.selectbox[0].options
    at.selectbox[0].set_value(f"{run_id}/seqgan").run()
    next(b for b in at.button if b.label == "Delete the whole run…").click().run()
    next(b for b in at.button if b.label == "Yes, delete").click().run()
    assert not (runs_dir / run_id).exists()


def test_demo_checkpoints_are_read_only(runs_dir):
    at = open_page("checkpoints")
    assert at.selectbox[0].value.startswith("demo:")
    assert not any(b.label.startswith("Delete") for b in at.button)
    with pytest.raises(studio.SeqGANError, match="read-only"):
        studio.delete_checkpoint(at.selectbox[0].value)


def test_every_pick_in_the_page_selectors_takes_effect(runs_dir, demo_runs):
    """A selectbox whose ``index`` follows the last pick drops every second pick (Streamlit sees a new widget)."""
    users = [user_run(runs_dir, demo_runs, "poems"), user_run(runs_dir, demo_runs, "melodies")]

    def picks_hold(at, label, choices, also=lambda at, choice: None):
        for choice in choices:
            box = next(b for b in at.selectbox if b.label == label)
            box.set_value(choice).run()
            assert next(b for b in at.selectbox if b.label == label).value == choice, (label, choice)
            also(at, choice)

    at = open_page("checkpoints")
    ids = at.selectbox[0].options
    assert len(ids) >= 4

    def downloads(at, choice):
        assert at.get("download_button")[0].label == f"Download {studio.download_name(studio.get_checkpoint(choice))}"

    picks_hold(at, "Checkpoint", [ids[1], ids[2], ids[3], ids[0], ids[2]], downloads)
    at = open_page("compare")
    picks_hold(at, "Run or checkpoint", [users[0], "demo:poems", users[1], "demo:melodies", users[0]])
    at.switch_page("app_pages/train.py").run()
    at.switch_page("app_pages/compare.py").run()
    assert next(b for b in at.selectbox if b.label == "Run or checkpoint").value == users[0]  # back from a page
    at = open_page("train")
    picks_hold(at, "Watch run", [users[1], users[0], users[1], users[0]])


# ----- jobs and runs without the pages --------------------------------------------------------------------------
def test_a_run_whose_process_died_is_interrupted_and_resumable(runs_dir, demo_runs):
    run_id = user_run(runs_dir, demo_runs)
    run = RunDir(runs_dir / run_id)
    run.update_status(state="running")  # as if the machine had restarted mid-run: the pid is this test's
    status = run.read_status()
    run.write_json(run.status, {**status, "pid": 999_999_999})
    assert studio.get_run(run_id).state.state == "interrupted"
    assert studio.get_run(run_id).state.resumable


def test_a_job_reports_only_its_own_attempts_output(tmp_path):
    """output.txt holds every attempt, each headed by a "--- " line: a new attempt that failed silently must not
    be reported with the previous attempt's error."""
    run = RunDir(tmp_path / "run").create()
    run.write_json(run.status, {"state": "failed", "updated": 1.0, "pid": 1})
    run.write_json(run.job, {"pid": 2 ** 22 + 7, "started": 2.0, "command": []})  # no such process
    run.output.write_text("--- 1 seqgan train\nerror: the old problem\n--- 2 seqgan train --resume\n")
    state = jobs.job_state(run)
    assert state.state == "failed" and state.message == "the process ended before writing anything"
    with open(run.output, "a") as f:
        f.write("error: the new problem\n")
    assert jobs.job_state(run).message == "the new problem"


def test_progress_estimates_the_time_left_from_measured_units(runs_dir, demo_runs):
    run_id = user_run(runs_dir, demo_runs, "poems")
    run = RunDir(runs_dir / run_id)
    events = [e for e in run.events() if e["unit"] < 1]  # only the first MLE epoch happened
    run.truncate_events(1)
    run.write_json(run.status, {**run.read_status(), "state": "stopped", "unit": 1})
    assert len(run.events()) == len(events)
    progress = studio.run_progress(studio.get_run(run_id))
    mle_seconds = events[-1]["seconds"]
    assert (progress.unit, progress.units, progress.phase) == (1, 5, "mle")
    assert studio.progress_line(progress).startswith("MLE pre-training of the generator: 1/2 · unit 1 of 5")
    assert 0 < progress.mfu < 1  # the trainer's share of the device's measured matmul peak, shown as a percentage
    # One MLE epoch left, timed; the phases not timed yet take their work at that share of the measured peak.
    config, peak = TrainConfig.from_dict(run.read_config()["config"]), run.read_status()["peak_flops"]
    train_lines = len((run.path / "train.txt").read_text().splitlines())
    untimed = {"d_pretrain": config.d_pretrain_rounds, "adversarial": config.adv_iters}
    guessed = sum(n * flops.unit(config, p, train_lines) / (peak * progress.mfu) for p, n in untimed.items())
    assert progress.eta_seconds == pytest.approx(mle_seconds + guessed)
    assert progress.eta_note == "pre-training the discriminator and adversarial training estimated from their work"
    run.metrics.write_text("".join(json.dumps({**e, "mfu": 0.0123} if e["unit"] >= 0 else e) + "\n" for e in events))
    assert studio.progress_line(studio.run_progress(studio.get_run(run_id))).endswith(
        " · 1.2% of the device's matmul peak")
    run.metrics.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "mfu"}) + "\n" for e in events))
    progress = studio.run_progress(studio.get_run(run_id))  # runs made before mfu: no share, no estimate
    assert "peak" not in studio.progress_line(progress) and progress.eta_seconds == pytest.approx(mle_seconds)
    assert progress.eta_note.startswith("not counting pre-training the discriminator and adversarial training")


def test_a_run_that_has_not_written_its_configuration_is_starting_or_not_started_and_can_be_deleted(runs_dir):
    run = RunDir(runs_dir / "new").create()
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(run.path)])  # names the run
    try:
        run.write_json(run.job, {"pid": job.pid, "started": 1.0, "command": []})
        progress = studio.run_progress(studio.get_run("new"))
        assert progress.phase == "starting" and progress.fraction == 0.0
        assert studio.progress_line(progress).startswith("starting:")
    finally:
        job.kill()
        job.wait()
    progress = studio.run_progress(studio.get_run("new"))  # it ended before it read its data
    assert studio.progress_line(progress).startswith("not started:")
    at = open_page("train", run="new")
    assert not any(b.label in ("Resume", "Start again") for b in at.button)
    next(b for b in at.button if b.label == "Delete run…").click().run()
    next(b for b in at.button if b.label == "Yes, delete").click().run()
    assert not (runs_dir / "new").exists()


def test_a_run_started_in_a_terminal_is_seen_and_stopped_by_the_app(runs_dir, tmp_path):
    """``seqgan train --run-dir runs/x`` from a shell (relative path, no job.json): listed as running, stoppable."""
    (tmp_path / "poems.txt").write_bytes(poem_lines(100))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "seqgan", "train", "--run-dir", "runs/terminal", "--corpus",
                                "poems.txt", "--vocab-size", "300", "--mle-epochs", "3000", "--eval-every", "1000",
                                "--d-filter-sizes", "2", "--d-num-filters", "4", "--device", "cpu", "--quiet"],
                               cwd=tmp_path, env=env)
    try:
        assert wait_for("terminal", ("running", "failed")) == "running"
        at = open_page("train")
        assert "state **running**" in texts(at)
        next(b for b in at.button if b.label == "Stop").click().run()
        assert process.wait(timeout=60) == 1  # stopped: exit status 1
        assert wait_for("terminal", ("stopped",)) == "stopped"
    finally:
        if process.poll() is None:
            process.kill()

    # The same run resumed from a shell whose pipeline (`| cat`) shares the trainer's process group, while the app's
    # job.json names an earlier, dead process: the app sees the trainer by the run's .lock, offers neither Resume
    # nor Delete, and its Stop reaches the trainer alone (a signal to the group would stop `cat`, and the trainer's
    # last lines would break the pipe).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    RunDir(runs_dir / "terminal").write_json(RunDir(runs_dir / "terminal").job, {"pid": dead.pid, "started": 1.0})
    command = (f"set -m; {shlex.quote(sys.executable)} -m seqgan train --run-dir runs/terminal --resume 2>&1 "
               "| cat > out.txt")
    shell = subprocess.Popen(["bash", "-c", command], cwd=tmp_path, env=env)
    try:
        assert wait_for("terminal", ("running",)) == "running"
        info = studio.get_run("terminal")
        trainer = info.state.pid
        assert trainer != dead.pid and os.getpgid(trainer) == trainer and not info.resumable
        with pytest.raises(SeqGANError, match="still running"):
            studio.delete_run("terminal")
        studio.stop_training("terminal")
        assert shell.wait(timeout=60) == 0  # the pipeline's status is cat's: it read to the end, not killed
    finally:
        if shell.poll() is None:
            shell.kill()
    assert wait_for("terminal", ("stopped",)) == "stopped"
    assert "stopping after the unit in progress" in (tmp_path / "out.txt").read_text()


def test_one_job_per_gpu_on_a_machine_with_two(tmp_path, monkeypatch):
    """The GPU slots, without a GPU: torch is told there are two; a busy slot is a live process whose command
    line names its run directory, as a real job's does."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert jobs.device_slots() == ["cuda:0", "cuda:1"]
    root = tmp_path / "runs"
    assert jobs.free_device(root) == "cuda:0"
    busy = RunDir(root / "busy").create()
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(busy.path)])
    try:
        busy.write_json(busy.job, {"pid": process.pid, "device": "cuda:0", "started": time.time()})
        assert jobs.job_state(busy).active
        assert jobs.free_device(root) == "cuda:1"
        assert jobs.free_device(root, "cuda:1") == "cuda:1"
        with pytest.raises(jobs.JobError, match="busy on cuda:0"):
            jobs.free_device(root, "cuda")  # plain "cuda" means cuda:0
        with pytest.raises(jobs.JobError, match="cuda:3 was asked for but this machine has cuda:0, cuda:1"):
            jobs.free_device(root, "cuda:3")
    finally:
        process.kill()
        process.wait()
    assert jobs.free_device(root) == "cuda:0"  # the slot is free again once the job has gone
    # A run started from a terminal (no job.json) holds the device its trainer writes into status.json.
    terminal = RunDir(root / "terminal").create()
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(terminal.path)])
    try:
        terminal.write_json(terminal.config, {"config": {}, "task": {}})
        terminal.write_json(terminal.status, {"state": "running", "pid": process.pid, "device": "cuda:0",
                                              "updated": time.time()})
        assert jobs.job_state(terminal).active and jobs.free_device(root) == "cuda:1"
        # under torchrun the status names every local rank's GPU: both are busy
        terminal.write_json(terminal.status, {"state": "running", "pid": process.pid, "device": "cuda:0",
                                              "devices": ["cuda:0", "cuda:1"], "updated": time.time()})
        assert jobs.job_state(terminal).slots == ("cuda:0", "cuda:1")
        with pytest.raises(jobs.JobError, match="every device is busy"):
            jobs.free_device(root)
    finally:
        process.kill()
        process.wait()


def test_charts_read_metrics_written_before_the_losses_had_their_own_names(tmp_path, no_demos):
    """Runs (the shipped demo runs among them) whose metrics.jsonl names both generator losses g_loss chart them
    as the MLE loss and the policy-gradient loss, as newer runs name them."""
    for name, key in (("old", "g_loss"), ("new", None)):
        run = RunDir(tmp_path / "runs" / name).create()
        run.write_json(run.config, {"config": {"seq_len": 8}, "task": {"kind": "oracle"}})
        for unit, (phase, loss) in enumerate([("mle", 3.5), ("mle", 3.0), ("adversarial", -0.25)]):
            run.append_event({"unit": unit, "phase": phase, "step": 1, "total": 1,
                              (key or ("mle_loss" if phase == "mle" else "pg_loss")): loss})
        frames = studio.metric_frames(studio.get_run(name))
        assert frames["Generator loss (MLE: NLL per token)"]["mle_loss"].tolist() == [3.5, 3.0], name
        assert frames["Policy-gradient loss (adversarial)"]["pg_loss"].tolist() == [-0.25], name
