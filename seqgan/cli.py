"""The ``seqgan`` command line: train | sample | bleu | oracle nll|run|table | export | experiment poems|music |
study stability|lengths.

Every training option is a field of ``TrainConfig`` (``--mle-epochs 120``, ``--d-filter-sizes 1 2 3`` ...).
Errors about the user's input print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import os
import signal
import sys
from pathlib import Path

import torch

from .errors import ConfigError, InputError, SeqGANError, Stopped


def set_threads(threads: int | None) -> None:
    """Torch's intra-op threads. Default 1 on a CPU: on small machines, 2 threads measured up to 3x slower
    than 1 when the other core was busy (see BENCHMARKS.md). Set --threads or SEQGAN_THREADS to change it."""
    if threads is None:
        value = os.environ.get("SEQGAN_THREADS", "1")
        try:
            threads = int(value)
        except ValueError:
            raise ConfigError(f"SEQGAN_THREADS must be a whole number of threads (got {value!r})") from None
    if threads < 1:
        raise ConfigError(f"--threads (or SEQGAN_THREADS) must be at least 1 (got {threads})")
    torch.set_num_threads(threads)


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 32 MB for reuse instead of handing them back to the system.

    By default glibc maps every block over 128 KB with mmap and unmaps it when it is freed, until some large
    free happens to raise that limit. Training allocates and frees a [128, 5000] chunk of logits (2.5 MB)
    hundreds of times an epoch, and each unmapped one comes back as fresh pages the kernel must zero. An MLE
    epoch of the oracle task, one thread: 4.2 s -> 2.7 s in a process that had made no large free yet, and
    ~3.0 s -> ~2.85 s in ``seqgan train``, where loading the task had raised the limit part-way. Returns whether
    it applied (glibc only).
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if sys.platform == "linux" else None
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 64 << 20))


# Options that the experiment commands decide themselves: the seeds come from --seeds, the data from the oracle
# or corpus, and each model's reward from the experiment.
DECIDED_BY_EXPERIMENTS = ("seed", "vocab_size", "seq_len", "start_token", "reward", "bleu_n")


def add_config_options(parser: argparse.ArgumentParser, decided_here=(), presets: bool = False) -> None:
    """A flag for every TrainConfig field (``--mle-epochs``, ``--d-filter-sizes 1 2 3`` ...) but those in
    ``decided_here``, which this command sets itself. ``presets``: the command's --preset sets the values, and
    these flags override it."""
    from .train import CHOICES, OPTION_HELP, TrainConfig

    group = parser.add_argument_group("training configuration (each overrides the preset's value; the original "
                                      "code's value is shown)" if presets else
                                      "training configuration (defaults: the original SeqGAN code)")
    defaults = TrainConfig().to_dict()
    for f in dataclasses.fields(TrainConfig):
        if f.name in decided_here:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = "the paper's that fit seq_len" if f.name.startswith(("d_filter", "d_num")) else defaults[f.name]
        # the original code's values, except where a run is set up, which the original did not choose
        original = presets and f.name not in ("device", "checkpoint_seconds")
        help_text = f"{OPTION_HELP[f.name]} ({'original' if original else 'default'}: {default})"
        if f.name.startswith(("d_filter", "d_num")):
            group.add_argument(flag, dest=f.name, type=int, nargs="+", default=None, metavar="N", help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            # choices are checked by TrainConfig.validate, whose message names the option
            group.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text,
                               metavar="|".join(CHOICES[f.name]) if f.name in CHOICES else None)


def config_overrides(args) -> dict:
    from .train import TrainConfig
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if getattr(args, f.name, None) is not None}


# ----- seqgan train ---------------------------------------------------------------------------------------
def corpus_progress(quiet: bool):
    """Progress of a long corpus read (the first parse of the built-in melodies takes about a minute)."""
    if quiet:
        return None

    def show(done: int, total: int, message: str) -> None:
        if done == total or done % 100 == 0:
            print(f"reading corpus: {done}/{total} {message}", flush=True)

    return show


NUM_TRAIN, TEST_FRACTION = 10_000, 0.1  # seqgan train's defaults for a new run's data


def begin_run(args, run) -> tuple:
    """A new run: its config from the options and the data source (a corpus, a token-id file or an oracle), and
    the data written into the run directory, which every later attempt trains from. Returns (config, task)."""
    from .corpus import load_corpus, read_token_file, write_token_file
    from .oracle import load_oracle, random_oracle, write_task
    from .train import TrainConfig, resolve_device

    def refuse_an_existing_run():
        if run.config.exists():
            raise SeqGANError(f"{run.path}: already holds a run; use --resume to continue it or pick a new --run-dir")

    refuse_an_existing_run()
    overrides = config_overrides(args)
    test_fraction = TEST_FRACTION if args.test_fraction is None else args.test_fraction
    num_train = NUM_TRAIN if args.num_train is None else args.num_train
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"--test-fraction must be within [0, 1) (got {test_fraction})")
    if not (args.corpus or args.data) and num_train < 1:
        raise ConfigError(f"--num-train must be at least 1 (got {num_train})")
    corpus = None
    if args.corpus:
        corpus = load_corpus(args.corpus, args.corpus_kind, vocab_size=overrides.pop("vocab_size", None),
                             model_type=args.tokenizer_model, seq_len=overrides.pop("seq_len", None),
                             test_fraction=test_fraction, seed=overrides.get("seed", 0),
                             progress=corpus_progress(args.quiet))
        overrides.update(vocab_size=corpus.vocab_size, seq_len=corpus.seq_len, start_token=corpus.start_token)
        task = {"kind": corpus.kind, "source": str(args.corpus), "corpus": corpus.summary()}
    elif args.data:
        tokens = read_token_file(args.data)
        overrides["seq_len"] = tokens.shape[1]
        overrides.setdefault("vocab_size", int(tokens.max()) + 1)
        task = {"kind": "tokens", "source": str(args.data)}
    else:
        task = {"kind": "oracle", "oracle_params": args.oracle_params, "num_train": num_train}
        oracle = load_oracle(args.oracle_params) if args.oracle_params else None
        if oracle is not None:  # the paper's oracle decides the vocabulary, as a corpus does
            if overrides.setdefault("vocab_size", oracle.vocab_size) != oracle.vocab_size:
                raise ConfigError(f"--vocab-size {overrides['vocab_size']}: the oracle of {args.oracle_params} has "
                                  f"{oracle.vocab_size} tokens")
    config = TrainConfig(**overrides).validate()
    if args.data and int(tokens.max()) >= config.vocab_size:
        raise ConfigError(f"--vocab-size {config.vocab_size}: {args.data} has token id {int(tokens.max())}")
    resolve_device(config.device)  # a device this machine lacks is refused before the run directory exists
    run.create().claim()
    refuse_an_existing_run()  # again: another new run into this folder may have got there first
    if corpus is not None:
        for line in corpus.notes + [f"left out: {problem}" for problem in corpus.problems]:
            run.log_line(line)
            if not args.quiet:
                print(line, flush=True)
        corpus.write(run.path)
    elif args.data:
        order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(config.seed))
        n_test = int(len(tokens) * test_fraction)
        write_token_file(tokens[order[n_test:]], run.path / "train.txt")
        write_token_file(tokens[order[:n_test]], run.path / "heldout.txt")
    else:
        if oracle is None:
            oracle = random_oracle(config.seed, config.vocab_size)
        write_task(oracle, run.path, num_train, config.seq_len, config.seed)
    run.write_json(run.config, {"config": config.to_dict(), "task": task})
    return config, task


def check_resume_alone(args, run) -> None:
    """--resume continues a run with its saved settings, in one process: options that would change them are
    refused rather than ignored, and so is a second process training the same run."""
    given = sorted({f"--{name.replace('_', '-')}" for name in config_overrides(args) if name != "device"}
                   | {flag for flag, value in (("--corpus", args.corpus), ("--data", args.data),
                                               ("--oracle-params", args.oracle_params), ("--num-train", args.num_train),
                                               ("--test-fraction", args.test_fraction),
                                               ("--corpus-kind", args.corpus_kind),
                                               ("--tokenizer-model", args.tokenizer_model)) if value is not None})
    if given:
        raise ConfigError(f"--resume continues {run.path} with the settings in its config.json; {', '.join(given)} "
                          f"would change them (start a new run for other settings; --device may change)")
    if run.config.is_file():  # a folder without a run gets no .lock; reading its config.json says why
        run.claim()


def cmd_train(args) -> int:
    from . import flops
    from .checkpoint import load_bundle
    from .corpus import corpus_evaluator, read_token_file, sequence_nll, tokenizer_from_bytes
    from .oracle import load_oracle, oracle_evaluator
    from .runs import RunDir
    from .train import TrainConfig, Trainer, resolve_device, settings_differ
    from .distributed import setup_from_env

    dist = setup_from_env(args.device or "auto")  # under torchrun: join the other ranks; else one process
    if not args.resume and not dist.is_main:
        dist.barrier()  # rank 0 creates the run directory first; the other ranks then open it as a resume does
    run = RunDir(args.run_dir)
    if args.resume and dist.is_main:
        check_resume_alone(args, run)
    if args.resume or not dist.is_main:
        saved = run.read_json(run.config)
        if saved is None:
            raise SeqGANError(f"{run.config}: cannot resume, the run directory has no readable config.json")
        config = TrainConfig.from_dict(saved["config"])
        if args.device:
            config.device = args.device
        task = saved["task"]
    else:
        config, task = begin_run(args, run)
        dist.barrier()

    device = dist.device if dist.distributed else resolve_device(config.device)
    if args.resume:
        run.check_trainable()
    train = read_token_file(run.train_data, config.vocab_size)
    heldout_path = run.path / "heldout.txt"
    heldout = read_token_file(heldout_path, config.vocab_size).to(device) if heldout_path.stat().st_size else None
    tokenizer = None
    if task["kind"] == "oracle":
        oracle = load_oracle(run.path / "oracle.pt").to(device)
        evaluate = oracle_evaluator(oracle, config.eval_samples, config.seq_len, heldout)
    elif task["kind"] in ("text", "music"):
        tokenizer = tokenizer_from_bytes((run.path / "tokenizer.bin").read_bytes(), str(run.path / "tokenizer.bin"))
        evaluate = corpus_evaluator(tokenizer, heldout, config.seq_len, config.eval_samples) \
            if heldout is not None else None
    else:
        evaluate = (lambda g, rng: {"nll_test": sequence_nll(g, heldout)}) if heldout is not None else None

    def show(event):
        fields = " ".join(f"{k}={flops.percent(v)}" if k == "mfu" else f"{k}={v:.4f}" if isinstance(v, float)
                          else f"{k}={v}" for k, v in event.items() if k not in ("time", "unit"))
        run.log_line(fields)
        if not args.quiet:
            try:
                print(fields, flush=True)
            except BrokenPipeError:  # the reader of our output is gone (a `| tee` stopped): log.txt has it all
                args.quiet = True
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and the failed write drains there

    trainer = Trainer(config, train, run, evaluate, show, kind=task["kind"], extra={"task": task},
                      tokenizer=tokenizer.to_bytes() if tokenizer is not None else None, dist=dist, heldout=heldout)
    if args.resume:
        latest = run.checkpoint("latest")
        if latest.exists():
            bundle = load_bundle(latest)
            differ = settings_differ(config, bundle["config"])
            if differ:
                raise InputError(latest, f"was made with other settings than this run's config.json "
                                         f"({', '.join(differ)}): it belongs to another run")
            trainer.restore(bundle, name=str(latest))
            if dist.is_main:
                print(f"resuming at unit {trainer.unit} of {len(trainer.schedule)}", flush=True)
        elif dist.is_main:  # stopped before its first checkpoint, or latest.pt deleted: nothing to continue from
            run.truncate_events(-1)  # the earlier attempts' events go, or the curves would hold them twice
            print(f"{latest} does not exist: the run starts again from the beginning", flush=True)
    try:
        with stop_after_the_unit_on_signals():  # SIGTERM (the app's Stop) or Ctrl-C: finish the unit, save, stop
            state = trainer.run()
    except KeyboardInterrupt:  # a second Ctrl-C: at once; latest.pt stays that of the last whole unit saved
        if dist.is_main:
            run.update_status(state="stopped")
        state = "stopped"
    except Exception as exc:
        if dist.is_main:
            run.update_status(state="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    dist.close()
    if dist.is_main:
        try:
            print(f"{state}: {run.path}", flush=True)
        except BrokenPipeError:  # the reader of our output is gone; the run is saved, its status written
            pass
    if dist.distributed:
        dist.exit(0)
    return 1 if state == "stopped" else 0  # as the other long commands: `seqgan train ... && next` stops here


MAX_SAMPLES = 1_000_000  # seqgan sample -n: a typo beyond this would only fill the memory

# ----- seqgan sample --------------------------------------------------------------------------------------
def cmd_sample(args) -> int:
    """Token ids, one sequence a line; decoded text for text checkpoints; MIDI files for melodies (--midi)."""
    from .checkpoint import generator_from_bundle, load_bundle, tokenizer_bytes
    from .corpus import checkpoint_seq_len, tokenizer_from_bytes
    from .train import MAX_SEED

    if not 0 <= args.seed <= MAX_SEED:
        raise ConfigError(f"--seed must be within 0..{MAX_SEED:,} (got {args.seed:,})")
    bundle = load_bundle(args.checkpoint)
    generator = generator_from_bundle(bundle, args.checkpoint)
    data = tokenizer_bytes(bundle)
    tokenizer = tokenizer_from_bytes(data, args.checkpoint) if data else None
    rng = torch.Generator().manual_seed(args.seed)
    try:
        prefix = torch.tensor([int(x) for x in args.prefix.split()], dtype=torch.long) if args.prefix else None
    except ValueError:
        raise ConfigError(f"--prefix must be token ids separated by spaces (got {args.prefix!r})") from None
    seq_len = checkpoint_seq_len(bundle, args.checkpoint)
    if prefix is not None and len(prefix) > seq_len:
        raise ConfigError(f"--prefix has {len(prefix)} ids, more than the model's length {seq_len}")
    if args.num > MAX_SAMPLES:
        raise ConfigError(f"-n must be at most {MAX_SAMPLES:,} (got {args.num:,}); sample in parts for more")
    samples = generator.sample(args.num, seq_len, args.temperature, prefix=prefix, generator=rng).tolist()
    if args.midi:
        if tokenizer is None or tokenizer.kind != "music":
            raise SeqGANError(f"{args.checkpoint}: --midi needs a melody checkpoint")
        from .checkpoint import atomic_write_bytes
        from .music import events_to_midi

        for index, row in enumerate(samples):
            atomic_write_bytes(Path(args.midi) / f"sample-{index:03d}.mid", events_to_midi(tokenizer.decode(row)))
    for row in samples:
        if tokenizer is not None and tokenizer.kind == "text" and not args.ids:
            print(tokenizer.decode(row))
        else:
            print(" ".join(map(str, row)))
    return 0


# ----- seqgan bleu ----------------------------------------------------------------------------------------
def read_lines(path: str) -> list[list[str]]:
    from .text import split_lines

    p = Path(path)
    if not p.is_file():
        raise SeqGANError(f"{path}: no such file")
    try:
        lines = [line.split() for line in split_lines(p.read_text(encoding="utf-8")) if line.strip()]
    except UnicodeDecodeError:
        raise SeqGANError(f"{path}: not UTF-8 text") from None
    if not lines:
        raise SeqGANError(f"{path}: has no non-empty lines")
    return lines


def cmd_bleu(args) -> int:
    from .metrics import BleuScorer

    hyps = read_lines(args.hyps)
    longest = max(len(h) for h in hyps)
    if args.n > longest:
        raise ConfigError(f"-n {args.n}: the longest line of {args.hyps} has {longest} tokens, so it has no "
                          f"{args.n}-grams to compare")
    scorer = BleuScorer(read_lines(args.refs), max_n=args.n)
    print(f"{scorer.corpus(hyps, args.n):.6f}")
    return 0


# ----- seqgan oracle --------------------------------------------------------------------------------------
def cmd_oracle_nll(args) -> int:
    from .corpus import read_token_file
    from .oracle import load_oracle, nll_under

    oracle = load_oracle(args.params)
    tokens = read_token_file(args.file, oracle.vocab_size)
    print(f"{nll_under(oracle, tokens):.6f}")
    return 0


def experiment_settings(args, default_out: str) -> tuple[dict, str, Path]:
    """Config overrides (the seeds come from --seeds), device and output folder of an experiment command."""
    overrides = config_overrides(args)
    device = overrides.pop("device", "auto")
    return overrides, device, Path(args.out or default_out)


def log_line(message: str) -> None:
    print(message, flush=True)


@contextlib.contextmanager
def stop_after_the_unit_on_signals():
    """SIGTERM or Ctrl-C during a long command: the running model finishes its unit, saves latest.pt and the
    command stops with a message saying how to continue (``Stopped``). A second Ctrl-C interrupts at once."""
    from .train import STOP

    def request(signum, _frame):
        STOP.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # os.write, not print: a handler may run while the main thread is inside a print to stderr
        try:
            os.write(2, f"{signal.Signals(signum).name}: stopping after the unit in progress "
                        f"(Ctrl-C again: at once)\n".encode())
        except OSError:  # stderr gone (a pipe whose reader was stopped with us): stopping matters, not saying so
            pass

    saved = {signum: signal.signal(signum, request) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        STOP.clear()


def cmd_oracle_run(args) -> int:
    from .oracle_experiment import run_oracle_experiment

    overrides, device, out = experiment_settings(args, f"results/oracle-{args.preset}")
    with stop_after_the_unit_on_signals():
        run_oracle_experiment(args.preset, args.seeds, out, args.oracle_params, device, args.models, log=log_line,
                              **overrides)
    print((out / "table1.md").read_text())
    print(f"written: {out}/table1.md, {out}/table1.json, {out}/figure2.png")
    return 0


def cmd_oracle_table(args) -> int:
    from .oracle_experiment import write_report

    write_report(args.out, args.seeds)
    print((Path(args.out) / "table1.md").read_text())
    return 0


# ----- seqgan export ---------------------------------------------------------------------------------------
EXPORTED_FILES = ("config.json", "tokenizer.bin", "heldout.txt", "metrics.jsonl", "oracle.pt", "status.json")


def cmd_export(args) -> int:
    """A small copy of a run for sharing: its record, samples and slim MLE/SeqGAN checkpoints. The copy is a
    record, not a run to continue: its status is that of the run when exported, without the training process."""
    import shutil

    from .checkpoint import load_bundle, save_bundle, slim_bundle
    from .runs import RunDir

    source, target = RunDir(args.run_dir), Path(args.out)
    if not source.config.is_file():
        raise SeqGANError(f"{source.path}: not a run directory (no config.json)")
    if target.resolve() == source.path.resolve() or source.path.resolve() in target.resolve().parents:
        raise SeqGANError(f"--out {target}: is the run directory {source.path} or inside it; export to another folder")
    if target.is_dir() and any(target.iterdir()):
        raise SeqGANError(f"{target}: exists and is not empty")
    if target.exists() and not target.is_dir():
        raise SeqGANError(f"{target}: exists and is not a folder")
    roles = [role for role in ("mle", "seqgan") if source.checkpoint(role).is_file()]
    if not roles:
        raise SeqGANError(f"{source.path}: has no mle.pt or seqgan.pt checkpoint"
                          + ("" if source.finished() else " yet"))
    slim = {role: slim_bundle(load_bundle(source.checkpoint(role))) for role in roles}
    # Written into a hidden sibling folder and renamed into place: a failure leaves no half-made export.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name in EXPORTED_FILES:
            if (source.path / name).is_file():
                shutil.copyfile(source.path / name, staging / name)
        status = source.read_status()
        if status is not None:  # the training process is not part of the copy, nor is a state it could resume
            status.pop("pid", None)
            if status.get("state") != "finished":
                status["state"] = "stopped"
            RunDir(staging).write_json(RunDir(staging).status, status)
        if source.samples.is_dir():
            shutil.copytree(source.samples, staging / "samples")
        for role, bundle in slim.items():
            save_bundle(bundle, staging / "checkpoints" / f"{role}.pt")
        if target.is_dir():
            target.rmdir()  # empty (checked above)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"exported {', '.join(roles)} checkpoints: {target}")
    return 0


# ----- seqgan experiment ----------------------------------------------------------------------------------
def cmd_experiment(args) -> int:
    from .realdata import paper_corpus, run_experiment

    source = args.corpus or str(paper_corpus(args.task))
    if not Path(source).exists():
        raise SeqGANError(f"{source}: the paper's corpus is not there; pass --corpus PATH")
    overrides, device, out = experiment_settings(args, f"results/{args.task}-{args.preset}")
    with stop_after_the_unit_on_signals():
        run_experiment(args.task, args.preset, args.seeds, out, source, device, log=log_line, **overrides)
    print((out / "table.md").read_text())
    print(f"written: {out}/table.md, {out}/table.json")
    return 0


def cmd_study(args) -> int:
    from . import studies

    overrides, device, out = experiment_settings(args, f"results/{args.study}-{args.preset}")
    if args.report_only and args.study == "stability":
        studies.write_stability_report(out, args.preset, args.seeds, args.variants)
    elif args.report_only:
        studies.write_lengths_report(out, args.preset, args.seeds, args.lengths)
    elif args.study == "stability":
        with stop_after_the_unit_on_signals():
            studies.run_stability(args.preset, args.seeds, out, args.variants, args.oracle_params, device,
                                  log_line, **overrides)
    else:
        with stop_after_the_unit_on_signals():
            studies.run_lengths(args.preset, args.seeds, out, args.lengths, args.oracle_params, device, log_line,
                                **overrides)
    print((out / f"{args.study}.md").read_text())
    print(f"written: {out}/{args.study}.md, {out}/{args.study}.json, {out}/{args.study}.png")
    return 0


class Parser(argparse.ArgumentParser):
    """No abbreviated options: argparse would take ``--seed`` for ``--seeds`` and ``--reward`` for
    ``--reward-norm``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)


THREADS_HELP = "torch CPU threads (default 1; SEQGAN_THREADS)"


def build_parser() -> argparse.ArgumentParser:
    from .oracle_experiment import MODELS, PRESETS

    parser = Parser(prog="seqgan", description="SeqGAN Studio command line")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train SeqGAN (and its MLE baseline) into a run directory")
    train.add_argument("--run-dir", required=True, help="the run's folder: created for a new run, read by --resume")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from latest.pt")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--corpus", help="text (.txt) or melodies (MIDI/MusicXML/ABC/kern file, folder or zip), "
                                         "or builtin:poems / builtin:melodies")
    source.add_argument("--data", help="token-id file: one sequence a line, ids separated by spaces")
    source.add_argument("--oracle-params", help="synthetic task with this oracle (.pkl of the paper or .pt)")
    train.add_argument("--num-train", type=int, help=f"oracle samples to train on (default {NUM_TRAIN:,})")
    train.add_argument("--test-fraction", type=float,
                       help=f"held out of --corpus/--data for NLL-test and BLEU references (default {TEST_FRACTION})")
    train.add_argument("--corpus-kind", choices=["text", "music"], help="default: guessed from the file names")
    train.add_argument("--tokenizer-model", choices=["unigram", "bpe", "char"],
                       help="SentencePiece model for text (default: char for space-separated characters, "
                            "else unigram); --vocab-size is its vocabulary")
    train.add_argument("--quiet", action="store_true", help="print nothing but errors (the run's log.txt has it all)")
    add_config_options(train, decided_here=("reward", "bleu_n"))  # PG-BLEU: oracle run's model
    train.set_defaults(func=cmd_train)

    sample = sub.add_parser("sample", help="generate sequences from a checkpoint")
    sample.add_argument("--checkpoint", required=True, help="a checkpoint (.pt) of seqgan train or the app")
    sample.add_argument("-n", "--num", type=int, default=10, help="sequences to generate (default 10)")
    sample.add_argument("--temperature", type=float, default=1.0,
                        help="below 1: safer, less varied; above 1: more varied (default 1)")
    sample.add_argument("--seed", type=int, default=0, help="random seed: the same seed, the same sequences")
    sample.add_argument("--prefix", default="", help="token ids to continue, e.g. '3 17'")
    sample.add_argument("--ids", action="store_true", help="print token ids even for a text checkpoint")
    sample.add_argument("--midi", help="melody checkpoints: also write each sample as DIR/sample-NNN.mid")
    sample.set_defaults(func=cmd_sample)

    bleu = sub.add_parser("bleu", help="BLEU-n of hypothesis lines against reference lines (last line: score)")
    bleu.add_argument("--refs", required=True, help="reference lines (a text file)")
    bleu.add_argument("--hyps", required=True, help="hypothesis lines, each scored against all references")
    bleu.add_argument("-n", type=int, default=4, help="the n-gram order: BLEU-n (default 4)")
    bleu.set_defaults(func=cmd_bleu)

    oracle = sub.add_parser("oracle", help="the synthetic-oracle experiment (paper Table 1)")
    osub = oracle.add_subparsers(dest="oracle_command", required=True)
    nll = osub.add_parser("nll", help="mean per-token NLL of FILE's sequences under an oracle (last line)")
    nll.add_argument("--params", "--oracle-params", dest="params", required=True,
                     help="oracle parameters: the paper's .pkl or our .pt")
    nll.add_argument("file", help="token ids, one sequence a line")
    nll.set_defaults(func=cmd_oracle_nll)
    run = osub.add_parser("run", help="train Random, MLE, SS, PG-BLEU and SeqGAN; write Table 1 and Figure 2")
    run.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    run.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run of every model per seed (default 1)")
    run.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: all five")
    run.add_argument("--oracle-params", help="the paper's oracle (target_params.pkl); default: random per seed")
    run.add_argument("--out", help="output folder (default results/oracle-PRESET); finished runs there are kept, "
                                   "unfinished ones resume")
    add_config_options(run, tuple(n for n in DECIDED_BY_EXPERIMENTS if n not in ("seq_len", "bleu_n")), presets=True)
    run.set_defaults(func=cmd_oracle_run)
    table = osub.add_parser("table", help="rebuild Table 1 and Figure 2 from seeds already run into --out")
    table.add_argument("--out", required=True, help="the folder oracle run wrote into (the table is written there)")
    table.add_argument("--seeds", type=int, nargs="+", required=True, help="the seeds to put in the table")
    table.set_defaults(func=cmd_oracle_table)
    export = sub.add_parser("export", help="copy a run with slim checkpoints (generator only) for sharing")
    export.add_argument("--run-dir", required=True, help="the run to copy")
    export.add_argument("--out", required=True, help="the new folder (absent or empty)")
    export.set_defaults(func=cmd_export)

    from .realdata import PRESETS as REAL_PRESETS, TASKS

    experiment = sub.add_parser("experiment", help="the paper's real-data experiments: poems (BLEU-2), "
                                                   "music (BLEU-4, MSE); MLE vs SeqGAN")
    experiment.add_argument("task", choices=sorted(TASKS))
    experiment.add_argument("--preset", choices=sorted(REAL_PRESETS), default="cpu")
    experiment.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run per seed (default 1)")
    experiment.add_argument("--corpus", help="default: the paper's corpus in ../shared/corpora (beside the "
                                                  "working directory or this checkout)")
    experiment.add_argument("--out", help="output folder (default results/TASK-PRESET)")
    add_config_options(experiment, DECIDED_BY_EXPERIMENTS, presets=True)
    experiment.set_defaults(func=cmd_experiment)

    from .studies import PRESETS as STUDY_PRESETS, VARIANTS

    study = sub.add_parser("study", help="beyond the paper, on the oracle task: stability of adversarial training "
                                         "variants; the SeqGAN - MLE gap at several sequence lengths")
    study.add_argument("study", choices=["stability", "lengths"])
    study.add_argument("--preset", choices=sorted(STUDY_PRESETS), default="cpu")
    study.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="default: 1 2 3")
    study.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                       help="stability: the adversarial variants to compare")
    study.add_argument("--lengths", type=int, nargs="+", default=[20, 40, 80], help="lengths: sequence lengths")
    study.add_argument("--oracle-params", help="the paper's oracle (target_params.pkl); default: random per seed")
    study.add_argument("--out", help="output folder (default results/STUDY-PRESET); finished runs there are kept, "
                                     "unfinished ones resume")
    study.add_argument("--report-only", action="store_true",
                       help="train nothing: write the report from the runs already in --out")
    add_config_options(study, DECIDED_BY_EXPERIMENTS, presets=True)
    study.set_defaults(func=cmd_study)

    for command in [*sub.choices.values(), *osub.choices.values()]:  # also after the command: seqgan train --threads 2
        command.add_argument("--threads", type=int, default=argparse.SUPPRESS, help=THREADS_HELP)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        set_threads(args.threads)
        keep_freed_memory()
        return args.func(args)
    except Stopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a training command
        print("interrupted", file=sys.stderr)
        return 130
    except SeqGANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad values that reached a library check
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        text = str(exc)
        if not (isinstance(exc, MemoryError) or "out of memory" in text.lower() or "can't allocate" in text):
            raise  # a bug: its traceback helps more than a line
        print(f"error: out of memory ({text.strip().splitlines()[0][:160] if text.strip() else 'MemoryError'}); "
              f"smaller sizes (--batch-size, --rollouts, --eval-samples, --num-negatives, -n) need less",
              file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be written or read: a file where a folder should be, no space ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
