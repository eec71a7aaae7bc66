"""Corpora as fixed-length sequences (text and melodies), their evaluation, and `seqgan train --corpus`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import require_shared
from seqgan.checkpoint import load_bundle
from seqgan.cli import main
from seqgan.corpus import (SampleScorer, load_corpus, read_token_file, sequence_nll, split_heldout,
                           text_corpus, tokenizer_from_bytes)
from seqgan.errors import ConfigError, InputError
from seqgan.models import Generator
from seqgan.music import HOLD, REST, events_to_midi, melody_mse, pitch_contour, silent_share

LINES = [f"the {c} cat sat on the {d} mat" for c in ("red", "blue", "old", "fat") for d in ("warm", "cold", "big")]
TINY = ["--mle-epochs", "1", "--d-pretrain-rounds", "1", "--num-negatives", "40", "--adv-iters", "1",
        "--d-steps", "1", "--rollouts", "2", "--eval-samples", "20", "--batch-size", "8", "--d-batch-size", "8",
        "--g-emb-dim", "8", "--g-hidden-dim", "8", "--d-emb-dim", "8", "--d-filter-sizes", "1", "2",
        "--d-num-filters", "4", "4", "--quiet"]


def melody_file(name: str, pitches: list[int]) -> tuple[str, bytes]:
    """A MIDI upload of quarter notes (4 steps each) with a rest bar in between, long enough for windows."""
    events = []
    for pitch in pitches:
        events += [pitch, HOLD, HOLD, HOLD]
    return name, events_to_midi(events)


# ----- text ------------------------------------------------------------------------------------------------
def test_text_sequences_end_with_eos_then_pad_and_decode_to_the_lines():
    corpus = text_corpus(LINES, "cats", model_type="char", test_fraction=0.25, seed=3)
    tok = corpus.tokenizer
    assert corpus.seq_len == max(len(tok.encode(line)) for line in LINES) + 1
    assert len(corpus.train) + len(corpus.heldout) == len(LINES) and len(corpus.heldout) == 3
    for row in torch.cat([corpus.train, corpus.heldout]).tolist():
        end = row.index(tok.eos_id)
        assert all(t == tok.pad_id for t in row[end + 1:])
        assert tok.eos_id not in row[:end] and tok.pad_id not in row[:end]
    decoded = sorted(corpus.decode(row) for row in torch.cat([corpus.train, corpus.heldout]).tolist())
    assert decoded == sorted(LINES)
    assert corpus.start_token == tok.bos_id


def test_lines_longer_than_seq_len_are_left_out_with_a_note():
    lines = LINES + ["a much longer line than any of the others in this little corpus"]
    corpus = text_corpus(lines, "cats", model_type="char", seq_len=40, test_fraction=0)
    assert len(corpus.train) == len(LINES) and len(corpus.heldout) == 0
    assert any("1 of 13 lines are longer than 39 tokens" in note for note in corpus.notes)


def test_lines_too_long_for_any_sequence_are_left_out_before_the_tokenizer_trains():
    """Three lines of 200,000 words took SentencePiece minutes, only to be left out afterwards."""
    huge = "word " * 200_000
    corpus = text_corpus(LINES + [huge] * 3, "cats", model_type="unigram", test_fraction=0)
    assert len(corpus.train) == len(LINES)
    assert any("3 of 15 lines are longer than" in note for note in corpus.notes)
    with pytest.raises(InputError, match="every line is longer than 4,064 characters"):
        text_corpus([huge] * 3, "huge", model_type="char")


def test_heldout_split_is_seeded_and_keeps_groups_whole():
    groups = [[[g, i] for i in range(g + 1)] for g in range(10)]  # group g has g + 1 sequences
    train, heldout = split_heldout(groups, 0.2, seed=5)
    assert split_heldout(groups, 0.2, seed=5) == (train, heldout)
    assert len(train) + len(heldout) == 55 and abs(len(heldout) - math.ceil(55 * 0.2)) <= 5  # half a group
    held_groups = {g for g, _ in heldout}
    assert not held_groups & {g for g, _ in train}


def test_one_long_tune_is_not_held_out_for_a_tenth_and_training_is_never_empty():
    short, long = [[0, i] for i in range(8)], [[1, i] for i in range(1000)]
    for seed in range(6):  # whichever comes first, the long tune trains and the short one is held out
        assert split_heldout([short, long], 0.1, seed) == (long, short)
        train, heldout = split_heldout([short[:5], long[:5]], 0.9, seed)  # asked for nearly everything
        assert len(train) == 5 and len(heldout) == 5
    assert split_heldout([[[i]] for i in range(30)], 0.1, seed=2)[1].__len__() == 3  # lines: exactly the share
    # every tune too long to come near the share: the smallest is held out if at most 3x the share, else none
    assert split_heldout([long[:15], short], 0.1, seed=0) == (long[:15], short)
    assert split_heldout([long[:500], long[500:]], 0.1, seed=0)[1] == []


def test_quatrains_become_25_character_sequences_that_decode_to_the_poems():
    path = require_shared("corpora", "chinese-quatrains-shi.txt")
    corpus = load_corpus(str(path))
    poems = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert corpus.kind == "text" and corpus.seq_len == 25
    assert len(corpus.train) + len(corpus.heldout) == len(poems) == 16_394
    assert len(corpus.heldout) == math.ceil(0.1 * len(poems))
    assert {corpus.decode(row) for row in corpus.heldout[:200].tolist()} <= set(poems)


# ----- melodies --------------------------------------------------------------------------------------------
def test_music_windows_of_a_tune_stay_on_one_side_of_the_split():
    patterns = [[60, 62, 64, 65], [60, 64, 67, 72], [67, 65, 64, 62], [72, 71, 69, 67], [64, 64, 65, 67],
                [60, 67, 64, 67]]
    uploads = [melody_file(f"tune{i}.mid", pattern * 8) for i, pattern in enumerate(patterns)]
    corpus = load_corpus(uploads, test_fraction=0.3, seed=1)
    assert corpus.kind == "music" and corpus.seq_len == 32 and corpus.vocab_size == 39
    # each tune is 32 quarters = 4 windows
    assert len(corpus.train) + len(corpus.heldout) == 24 and len(corpus.heldout) == 8
    train, heldout = {tuple(r) for r in corpus.train.tolist()}, {tuple(r) for r in corpus.heldout.tolist()}
    assert not train & heldout
    assert corpus.start_token == 0  # REST


def test_a_tune_given_twice_is_read_once():
    """The same file in two folders, or the same tune in another key (both train as the same windows), would be
    held out and trained on at once."""
    tune, other = [60, 62, 64, 65] * 8, [67, 65, 64, 62] * 8
    uploads = [melody_file("a/tune.mid", tune), melody_file("b/tune.mid", tune),
               melody_file("up.mid", [p + 2 for p in tune]), melody_file("other.mid", other)]
    corpus = load_corpus(uploads)
    assert len(corpus.train) + len(corpus.heldout) == 8  # two tunes of four windows
    assert "2 tunes identical to an earlier one left out" in corpus.notes


def test_a_batch_with_a_corrupt_midi_file_imports_the_rest_and_names_the_bad_one():
    uploads = [melody_file("good.mid", [60, 62, 64, 65] * 8), ("broken.mid", b"MThd\x00\x00\x00\x06garbage"),
               melody_file("good2.mid", [67, 65, 64, 62] * 8)]
    corpus = load_corpus(uploads)
    assert len(corpus.train) + len(corpus.heldout) == 8
    assert [p.source for p in corpus.problems] == ["broken.mid"]
    assert "broken.mid" in corpus.summary()["problems"][0]


def test_nothing_readable_is_one_error_naming_the_files():
    with pytest.raises(InputError, match="no melody could be read.*empty.mid"):
        load_corpus([("empty.mid", b""), ("x.mid", b"not midi")])


def test_pitch_contour_and_melody_mse():
    assert pitch_contour([REST, 60, HOLD, REST, HOLD, 62]) == [60, 60, 60, 60, 60, 62]
    assert pitch_contour([REST, HOLD]) == [0, 0]
    silent = [REST, HOLD, HOLD, HOLD]
    assert math.isnan(melody_mse([silent], [[60, HOLD, HOLD, HOLD]]))  # nothing to compare
    assert melody_mse([silent, [62, HOLD, HOLD, HOLD]], [[60, HOLD, HOLD, HOLD]]) == pytest.approx(4.0)
    assert silent_share([silent, [62, HOLD, HOLD, HOLD]]) == 0.5
    a = [[60, HOLD, 62, HOLD], [64, HOLD, HOLD, HOLD]]
    assert melody_mse(a, a) == 0.0
    shifted = [[e + 2 if e >= 0 else e for e in m] for m in a]
    assert melody_mse(shifted[:1], a[:1]) == pytest.approx(4.0)  # 2 semitones at every step
    assert melody_mse(shifted, a) == pytest.approx((2.0 + 4.0) / 2)  # [62 62 64 64] is closest to [64 64 64 64]
    assert melody_mse([[60, 62, 60, 62]], a) == pytest.approx(min((0 + 4 + 4 + 0) / 4, (16 + 4 + 16 + 4) / 4))


def test_music_scores_include_mse_and_real_data_scores_itself_perfectly():
    uploads = [melody_file(f"tune{i}.mid", [60 + i, 64, 67, 72 - i] * 8) for i in range(4)]
    corpus = load_corpus(uploads, test_fraction=0.5, seed=0)
    scores = SampleScorer(corpus.tokenizer, corpus.heldout).score(corpus.heldout.tolist())
    assert scores["bleu4"] == pytest.approx(1.0) and scores["mse"] == 0.0
    assert set(scores) == {"bleu2", "bleu3", "bleu4", "self_bleu4", "distinct2", "mse", "silent"}
    assert scores["silent"] == 0.0


# ----- shared machinery ------------------------------------------------------------------------------------
def test_sequence_nll_counts_tokens_up_to_the_first_eos():
    torch.manual_seed(0)
    g = Generator(7, 4, 4, start_token=1)
    tokens = torch.tensor([[4, 5, 2, 0, 0], [6, 2, 0, 0, 0]])
    with torch.no_grad():
        logp = torch.log_softmax(g(tokens), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    kept = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert sequence_nll(g, tokens, eos_id=2) == pytest.approx(float(-logp[kept].mean()), abs=1e-6)
    assert sequence_nll(g, tokens) == pytest.approx(float(-logp.mean()), abs=1e-6)


def test_tokenizer_bytes_dispatch_and_garbage():
    corpus = text_corpus(LINES, "cats", model_type="char")
    again = tokenizer_from_bytes(corpus.tokenizer.to_bytes())
    assert again.kind == "text" and again.vocab_size == corpus.vocab_size
    with pytest.raises(InputError, match="not a tokenizer"):
        tokenizer_from_bytes(b"\x80PK garbage")


@pytest.mark.parametrize("content, problem", [
    (b"", "file is empty"),
    (b"\x00\x01\x02binary\x00" * 10, "binary"),
    ("caf\u00e9 au lait\nd\u00e9j\u00e0 vu\n".encode("latin-1"), "not valid UTF-8"),
    (b"just one line\n", "only 1 non-empty line"),
])
def test_bad_text_corpora_name_the_file(tmp_path, content, problem):
    path = tmp_path / "poems.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem) as error:
        load_corpus(str(path))
    assert "poems.txt" in str(error.value)


def test_unknown_corpus_type_and_unknown_builtin():
    with pytest.raises(InputError, match="unknown corpus type '.pdf'"):
        load_corpus(("paper.pdf", b"%PDF"))
    with pytest.raises(ConfigError, match="unknown built-in corpus"):
        load_corpus("builtin:novels")


def test_a_vocabulary_larger_than_the_corpus_supports_is_clamped_with_a_note():
    corpus = text_corpus(LINES * 3, "cats", vocab_size=5000, model_type="unigram")
    assert corpus.vocab_size < 5000 and any("clamped" in note for note in corpus.notes)


# ----- the command line ------------------------------------------------------------------------------------
def test_train_on_a_text_corpus_then_sample_text_and_resume(tmp_path, capsys, restore_sigterm):
    corpus_file = tmp_path / "cats.txt"
    corpus_file.write_text("\n".join(LINES * 4) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--corpus", str(corpus_file), "--run-dir", str(run), "--tokenizer-model", "char",
                 "--eval-every", "1", *TINY]) == 0
    assert capsys.readouterr().out.strip().endswith(f"finished: {run}")
    for name in ("train.txt", "heldout.txt", "tokenizer.bin", "checkpoints/mle.pt", "checkpoints/seqgan.pt"):
        assert (run / name).is_file()
    events = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert '"bleu2"' in events[-1] and '"self_bleu4"' in events[-1] and '"nll_test"' in events[-1]

    assert main(["sample", "--checkpoint", str(run / "checkpoints" / "seqgan.pt"), "-n", "4", "--seed", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(set(line) <= set("".join(LINES)) for line in lines)
    assert main(["sample", "--checkpoint", str(run / "checkpoints" / "seqgan.pt"), "-n", "2", "--ids"]) == 0
    ids = capsys.readouterr().out.splitlines()
    assert len(ids[0].split()) == read_token_file(run / "train.txt").shape[1]

    assert main(["train", "--run-dir", str(run), "--resume", "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"finished: {run}")

    shared = tmp_path / "shared-run"
    assert main(["export", "--run-dir", str(run), "--out", str(shared)]) == 0
    slim = load_bundle(shared / "checkpoints" / "seqgan.pt")
    assert "optimizers" not in slim and "discriminator" not in slim
    assert (shared / "checkpoints" / "seqgan.pt").stat().st_size < (run / "checkpoints" / "seqgan.pt").stat().st_size
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(shared / "checkpoints" / "seqgan.pt"), "-n", "4", "--seed", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == lines  # the same generator and tokenizer
    assert main(["export", "--run-dir", str(run), "--out", str(shared)]) == 2  # never over an existing export


def test_train_on_melody_files_writes_midi_samples(tmp_path, capsys, restore_sigterm):
    folder = tmp_path / "tunes"
    folder.mkdir()
    for i in range(4):
        name, data = melody_file(f"t{i}.mid", [60 + i, 62, 64, 67 - i] * 8)
        (folder / name).write_bytes(data)
    (folder / "bad.mid").write_bytes(b"this is not a MIDI file")
    run = tmp_path / "run"
    assert main(["train", "--corpus", str(folder), "--run-dir", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "finished" in out
    assert "bad.mid" in (run / "log.txt").read_text()  # the bad file is reported, the rest trained on
    assert main(["sample", "--checkpoint", str(run / "checkpoints" / "mle.pt"), "-n", "2",
                 "--midi", str(tmp_path / "midi")]) == 0
    assert sorted(p.name for p in (tmp_path / "midi").iterdir()) == ["sample-000.mid", "sample-001.mid"]
    assert load_corpus(str(tmp_path / "midi"), test_fraction=0).seq_len == 32  # what we wrote reads back


def test_train_on_a_bad_corpus_exits_2_naming_the_file(tmp_path, capsys, restore_sigterm):
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"\xff\xfe\x00h\x00i")
    assert main(["train", "--corpus", str(bad), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "UTF-16" in err
    assert not (tmp_path / "run").exists()


def test_experiment_poems_on_a_small_corpus_writes_the_table(tmp_path, capsys, restore_sigterm):
    corpus_file = tmp_path / "cats.txt"
    corpus_file.write_text("\n".join(LINES * 4) + "\n", encoding="utf-8")
    out = tmp_path / "exp"
    args = ["experiment", "poems", "--preset", "demo", "--corpus", str(corpus_file), "--out", str(out),
            *[a for a in TINY if a != "--quiet"]]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| MLE |" in text and "| SeqGAN |" in text and "| Real data |" in text and "BLEU-2" in text
    assert "| MLE at τ=0.8 |" in text  # the MLE generator sampled colder, beside SeqGAN
    assert (out / "table.json").is_file() and (out / "seed1" / "checkpoints" / "seqgan.pt").is_file()
    final = json.loads((out / "seed1" / "final.json").read_text())["final"]
    for cold in ("MLE at τ=0.9", "MLE at τ=0.8", "MLE at τ=0.7"):  # same generator, same seed, colder sampling
        assert final[cold].keys() == final["MLE"].keys()
        assert final[cold]["nll_test"] != final["MLE"]["nll_test"] and final[cold]["bleu2"] != final["MLE"]["bleu2"]


@pytest.mark.parametrize("seq_len", [8, 25])
def test_experiment_presets_fit_the_discriminator_to_the_corpus_length(seq_len):
    """The cpu and demo presets use the paper's discriminator at a quarter of its maps, with the widths that fit
    the corpus: a corpus of 8 tokens gets widths 1..8 (widths 15 and 20 would not fit), one of 25 all twelve."""
    from seqgan.models import PAPER_FILTER_SIZES
    from seqgan.realdata import PRESETS
    from seqgan.train import TrainConfig, resolve_d_scale

    for preset in ("cpu", "demo"):
        for task, settings in PRESETS[preset].items():
            settings = {k: v for k, v in settings.items() if k != "final_samples"}
            config = TrainConfig(seq_len=seq_len, **resolve_d_scale(settings, seq_len)).validate()
            assert config.d_filter_sizes == [w for w in PAPER_FILTER_SIZES if w <= seq_len], (preset, task)
            assert config.d_num_filters[:2] == [25, 50], (preset, task)  # 100 and 200 maps, a quarter
    explicit = resolve_d_scale({"d_scale": 0.25, "d_filter_sizes": [1, 2], "d_num_filters": [4, 4]}, seq_len)
    assert explicit == {"d_filter_sizes": [1, 2], "d_num_filters": [4, 4]}  # what a command line says wins


class Interrupted(Exception):
    pass


def test_an_interrupted_experiment_seed_resumes_with_the_same_command(tmp_path):
    """Stopped in the adversarial phase (after a checkpoint), the same experiment run again resumes the seed from
    its latest checkpoint and scores it exactly as a seed never interrupted; other settings are refused."""
    from seqgan.errors import ConfigError
    from seqgan.realdata import run_experiment

    corpus_file = tmp_path / "cats.txt"
    corpus_file.write_text("\n".join(LINES * 4) + "\n", encoding="utf-8")
    settings = dict(mle_epochs=2, d_pretrain_rounds=1, num_negatives=40, adv_iters=3, d_steps=1, rollouts=2,
                    eval_samples=20, eval_every=1, batch_size=8, d_batch_size=8, g_emb_dim=8, g_hidden_dim=8,
                    d_emb_dim=8, d_filter_sizes=[1, 2], d_num_filters=[4, 4], checkpoint_seconds=0)
    whole = run_experiment("poems", "demo", [1], tmp_path / "whole", str(corpus_file), "cpu", log=print, **settings)

    def log_until_adversarial(line):
        if "adversarial    2/3" in line:
            raise Interrupted(line)

    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        run_experiment("poems", "demo", [1], out, str(corpus_file), "cpu", log=log_until_adversarial, **settings)
    saved = json.loads((out / "seed1" / "config.json").read_text())  # as if the seed had begun on a GPU:
    saved["config"]["device"] = "cuda:0"                               # it continues where this call says
    (out / "seed1" / "config.json").write_text(json.dumps(saved))
    logs = []
    assert run_experiment("poems", "demo", [1], out, str(corpus_file), "cpu", log=logs.append, **settings) == whole
    assert "[poems seed 1]: units 4..6" in logs  # 2 MLE epochs, 1 D round and 1 iteration were kept
    with pytest.raises(ConfigError, match=r"seed1 holds a run with other settings \(adv_iters\)"):
        (out / "seed1" / "final.json").unlink()
        run_experiment("poems", "demo", [1], out, str(corpus_file), "cpu", log=print, **{**settings, "adv_iters": 4})


def test_the_paper_corpora_are_found_from_any_working_directory(tmp_path, monkeypatch):
    from seqgan.realdata import paper_corpus

    poems = require_shared("corpora", "chinese-quatrains-shi.txt")
    monkeypatch.chdir(tmp_path)  # ../shared is not beside this folder: the checkout's is found
    assert paper_corpus("poems").resolve() == poems.resolve()
