"""What the Streamlit app does, as plain functions: the pages lay out widgets and call these (no streamlit here).

Where things live (all under ``seqgan.jobs.runs_root()``: ``$SEQGAN_RUNS_DIR``, else ``./runs``):

    runs/<id>/                 one training run (``seqgan.runs.RunDir``), started in the background by ``seqgan.jobs``
    runs/corpora/<name>/       corpora uploaded on the Data page, kept so that the Train page can train on them
    runs/uploaded/<name>.pt    checkpoints uploaded on the Checkpoints page (checked with ``load_bundle``)

Built-in demo runs (read-only) live in ``data/demo/<name>/`` (``$SEQGAN_DEMO_DIR`` overrides): the same layout
as a run directory, with at least ``config.json`` and ``checkpoints/mle.pt`` or ``checkpoints/seqgan.pt``.
Their ids are ``demo:<name>``.

Sections: corpora (inspect, save, list), training (presets, options, start/stop/resume, progress), runs,
models (load, sample, render melodies), comparison, checkpoints (list, upload, delete).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import shutil
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import flops, jobs
from .checkpoint import ROLES, atomic_write_bytes, load_bundle, tokenizer_bytes
from .corpus import MAX_SEQ_LEN
from .errors import ConfigError, InputError, SeqGANError
from .runs import RunDir
from .train import OPTION_HELP as TRAIN_OPTION_HELP, TrainConfig, paper_discriminator

DEMO_ENV = "SEQGAN_DEMO_DIR"
DEMO_ROOT = Path(__file__).resolve().parent.parent / "data" / "demo"
MAX_CHECKPOINT_BYTES = 200 * 1024 * 1024
ROLE_LABELS = {"mle": "MLE", "seqgan": "SeqGAN", "latest": "latest"}


def configure_torch() -> int:
    """Torch threads for the app's own work (sampling): ``$SEQGAN_THREADS``, default 1 (see the README)."""
    threads = default_threads()
    torch.set_num_threads(threads)
    return threads


def max_threads() -> int:
    """The most torch threads a job may have: twice the cores (more only make them wait for each other)."""
    return (os.cpu_count() or 1) * 2


def default_threads() -> int:
    try:
        return min(max_threads(), max(1, int(os.environ.get("SEQGAN_THREADS", "1"))))
    except ValueError:
        return 1


def demo_root() -> Path:
    return Path(os.environ.get(DEMO_ENV) or DEMO_ROOT)


def corpora_root() -> Path:
    return jobs.runs_root() / "corpora"


def uploads_root() -> Path:
    return jobs.runs_root() / "uploaded"


def _slug(text: str, limit: int = 40) -> str:
    """A name safe as a file name and in a URL: letters and digits of any script, '.', '_' and '-'."""
    slug = re.sub(r"[^\w.-]+", "-", unicodedata.normalize("NFC", text))
    return re.sub(r"-+(?=\.)", "", slug).strip("-._")[:limit] or "x"


# =============================================================================================================
# Corpora
# =============================================================================================================
BUILTIN_CORPORA = {"builtin:poems": "Built-in poems (20,000 lines of English verse)",
                   "builtin:melodies": "Built-in melodies (O'Neill's Music of Ireland, 1,838 tunes)"}
ORACLE = "oracle"


@dataclass
class CorpusChoice:
    id: str        # "builtin:poems", "builtin:melodies", "oracle", or "upload:<folder name>"
    label: str
    source: str    # what ``seqgan train --corpus`` gets ("" for the synthetic oracle)
    kind: str      # text | music | oracle


@dataclass
class CorpusView:
    """What the Data page shows of a corpus."""

    name: str
    kind: str
    train: int
    heldout: int
    seq_len: int
    vocab_size: int
    tokenizer: str                     # a short description
    notes: list[str]
    problems: list[tuple[str, str]]    # (file or tune, problem)
    length_label: str
    lengths: dict[int, int]            # histogram: length -> number of sequences
    examples: list                     # decoded: str (text) or list[int] events (melodies)
    saved_as: CorpusChoice | None = None


def corpus_choices() -> list[CorpusChoice]:
    """Everything the Train page can train on: built-in corpora, saved uploads, the synthetic oracle."""
    choices = [CorpusChoice(key, label, key, "text" if key.endswith("poems") else "music")
               for key, label in BUILTIN_CORPORA.items()]
    root = corpora_root()
    if root.is_dir():
        for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                             reverse=True):
            choice = _saved_corpus(folder)
            if choice is not None:
                choices.append(choice)
    choices.append(CorpusChoice(ORACLE, "Synthetic oracle (the paper's Table 1 task: NLL-oracle)", "", "oracle"))
    return choices


def corpus_choice(choice_id: str) -> CorpusChoice:
    for choice in corpus_choices():
        if choice.id == choice_id:
            return choice
    raise InputError(choice_id, "no such corpus (upload it again on the Data page)")


def _saved_corpus(folder: Path) -> CorpusChoice | None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        return None
    names = ", ".join(p.name for p in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    if len(files) == 1 and files[0].suffix.lower() in (".txt", ".text"):
        return CorpusChoice(f"upload:{folder.name}", f"Uploaded text: {names}", str(files[0]), "text")
    return CorpusChoice(f"upload:{folder.name}", f"Uploaded melodies: {names}", str(folder), "music")


def upload_source(files: list[tuple[str, bytes]]):
    """What ``load_corpus`` reads for uploaded files: one (name, bytes) pair for a text file, a list for melodies."""
    from .corpus import guess_kind

    if not files:
        raise InputError("upload", "no file was uploaded")
    text = [name for name, _ in files if name.lower().endswith((".txt", ".text"))]
    if text and len(files) > 1:
        raise InputError(", ".join(name for name, _ in files),
                         "a text corpus is one .txt file (one sequence a line); upload it alone, "
                         "or upload melody files (MIDI, MusicXML, ABC, kern, zip) together")
    if len(files) == 1:
        guess_kind(files[0])  # names an unknown suffix
        return files[0]
    # in the order training will read them from the saved folder, so that the held-out tunes are the same
    return [file for _, file in stored_names(files)]


def stored_names(files: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes]]]:
    """Each uploaded file with the name it is kept under in ``runs/corpora/`` (made safe, and unique: two uploads
    may share a name), sorted by that name, as a saved folder is read."""
    used, named = set(), []
    for name, data in sorted(files):  # same names: in the order of their bytes, as save_corpus_files digests them
        stored = _slug(Path(name).name, 100)
        stem, dot, suffix = stored.rpartition(".") if "." in stored else (stored, "", "")
        number = 2
        while stored.lower() in used:  # lower: a case-insensitive disk would merge Tune.mid and tune.mid
            stored, number = f"{stem}-{number}{dot}{suffix}", number + 1
        used.add(stored.lower())
        named.append((stored, (name, data)))
    return sorted(named, key=lambda pair: pair[0])


def inspect_corpus(source, *, vocab_size: int | None = None, model_type: str | None = None,
                   seq_len: int | None = None, progress=None, save_files: list[tuple[str, bytes]] | None = None,
                   examples: int = 5) -> CorpusView:
    """Read a corpus (built-in id, path, or uploaded files) as the trainer would, and summarise it.

    ``save_files``: the uploaded files, kept under ``runs/corpora/`` when they make a usable corpus.
    ``progress(done, total, message)`` is called while melodies are parsed. Problems that stop the whole
    corpus raise ``SeqGANError`` (the message names the file); problems of single files or tunes are listed.
    """
    from .corpus import load_corpus

    corpus = load_corpus(source, vocab_size=vocab_size, model_type=model_type, seq_len=seq_len, progress=progress)
    rows = torch.cat([corpus.train, corpus.heldout])
    if corpus.kind == "text":
        tok = corpus.tokenizer
        ends = (rows == tok.eos_id) | (rows == tok.pad_id)
        lengths = torch.where(ends.any(1), ends.float().argmax(1), torch.full((len(rows),), rows.shape[1]))
        label = "tokens per line (before the end token)"
        description = f"SentencePiece {tok.model_type}, {tok.vocab_size:,} ids" + \
            (" (space-separated characters)" if tok.spaced_chars else "")
    else:
        lengths = (rows >= corpus.tokenizer.first_pitch_id).sum(1)
        label = f"notes per window of {corpus.seq_len} sixteenth-note steps"
        description = (f"melody events: rest, hold and pitches {corpus.tokenizer.low}..{corpus.tokenizer.high} "
                       f"(MIDI), {corpus.vocab_size} ids")
    counts = torch.bincount(lengths.long()).tolist() if len(lengths) else []
    used = [i for i, c in enumerate(counts) if c]
    histogram = {i: int(counts[i]) for i in range(used[0], used[-1] + 1)} if used else {}
    picked = corpus.train[: max(0, examples)].tolist()
    notes = list(corpus.notes)
    batch = TrainConfig.batch_size  # the default
    if len(corpus.train) < batch:
        notes.append(f"Only {len(corpus.train):,} training sequences, fewer than one batch of {batch}: the "
                     f"generator will learn little from them.")
    view = CorpusView(corpus.name, corpus.kind, len(corpus.train), len(corpus.heldout), corpus.seq_len,
                      corpus.vocab_size, description, notes,
                      [(p.source, p.problem) for p in corpus.problems], label, histogram,
                      [corpus.decode(row) for row in picked])
    if save_files:
        view.saved_as = save_corpus_files(save_files)
    return view


def save_corpus_files(files: list[tuple[str, bytes]]) -> CorpusChoice:
    """Keep uploaded corpus files under ``runs/corpora/<first name>-<hash>/`` (the same upload twice: one copy)."""
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    folder = corpora_root() / f"{_slug(Path(files[0][0]).stem, 30)}-{digest.hexdigest()[:8]}"
    for stored, (_, data) in stored_names(files):
        target = folder / stored
        if not target.exists():  # the same upload saved before
            atomic_write_bytes(target, data)
    return _saved_corpus(folder)


# =============================================================================================================
# Training: presets, options, starting, stopping
# =============================================================================================================
# The paper's widths up to 10 (so that sequences of 10 tokens or more fit), a quarter of its feature maps.
_SMALL_D = paper_discriminator(10, 0.25)


@dataclass
class Preset:
    label: str
    description: str
    config: dict = field(default_factory=dict)   # TrainConfig overrides
    text_vocab_size: int | None = None           # SentencePiece vocabulary for text corpora (None: 8,000)


PRESETS = {
    "quick": Preset(
        "Quick CPU demo (about 3 minutes)",
        "10 MLE epochs, 3 discriminator rounds of 2,000 negatives, 10 adversarial iterations with 8 rollouts, "
        "a discriminator with a quarter of the paper's feature maps. Shows every phase; not a result.",
        dict(mle_epochs=10, d_pretrain_rounds=3, num_negatives=2000, d_epochs=2, adv_iters=10, d_steps=1,
             rollouts=8, eval_every=2, eval_samples=1000, **_SMALL_D), text_vocab_size=2000),
    "paper": Preset(
        "Paper settings (GPU; hours)",
        "The original code's schedule: 120 MLE epochs, 50 discriminator rounds of 10,000 negatives, "
        "200 adversarial iterations of 1 generator step with 16 rollouts and 5 discriminator rounds.",
        {}),
    "smoke": Preset(
        "Smoke test (seconds)",
        "One unit of each phase on a tiny discriminator: checks that data, training and checkpoints work.",
        dict(mle_epochs=1, d_pretrain_rounds=1, num_negatives=256, d_epochs=1, adv_iters=1, d_steps=1,
             rollouts=2, eval_every=1, eval_samples=200, d_filter_sizes=[1, 2, 3], d_num_filters=[10, 10, 10]),
        text_vocab_size=500),
}

# The advanced options: every TrainConfig field but start_token (the corpus decides it), device (a box of its
# own) and reward/bleu_n (PG-BLEU is a model of the oracle experiment, not an option of a run).
OPTION_GROUPS = {
    "Data": ["vocab_size", "seq_len", "seed"],
    "Generator (MLE pre-training)": ["g_emb_dim", "g_hidden_dim", "batch_size", "mle_epochs", "mle_lr",
                                     "mle_order", "scheduled_sampling", "grad_clip"],
    "Discriminator": ["d_emb_dim", "d_filter_sizes", "d_num_filters", "d_dropout_keep", "d_l2", "d_lr",
                      "d_batch_size", "d_pretrain_rounds", "d_epochs", "num_negatives"],
    "Adversarial training": ["adv_iters", "g_steps", "d_steps", "rollouts", "pg_lr"],  # PG-BLEU: oracle run
    "Beyond the paper (stability options, off by default)": ["baseline", "reward_norm", "critic", "gp_weight"],
    "Speed (beyond the paper, off by default)": ["d_precision"],
    "Optimizer": ["adam_epsilon"],
    "Evaluation and checkpoints": ["eval_every", "eval_samples", "checkpoint_seconds"],
}
OPTION_HELP = {  # train.OPTION_HELP, worded for the app's boxes where the corpus or an empty box matters
    **TRAIN_OPTION_HELP,
    "vocab_size": "Text: SentencePiece vocabulary (ids). Melodies: fixed by the pitch range. Oracle: 5,000.",
    "seq_len": "Tokens per sequence. Text: empty = long enough for 99% of the lines. Melodies: steps per window.",
    "d_filter_sizes": "Convolution widths, separated by spaces. Empty: the paper's that fit seq_len.",
    "d_num_filters": "Feature maps per width, separated by spaces (as many as widths).",
    "d_precision": "bf16: train and run the discriminator in bfloat16 (weights, optimizer and losses stay fp32; "
                   "G stays fp32). Meant for GPUs with bf16 tensor cores (not yet measured); on the benchmark "
                   "CPU only ~1.1x faster, with a slightly smaller SeqGAN gain (RESULTS.md).",
}


@dataclass
class OptionSpec:
    name: str
    group: str
    type: str          # int | float | str | list
    default: object    # None: decided by the corpus
    help: str
    choices: list[str] | None = None


def option_specs(preset: str, kind: str, corpus_settings: dict | None = None) -> list[OptionSpec]:
    """The advanced options with the preset's values as defaults, for a corpus of ``kind``; ``corpus_settings``
    (the ``vocab_size`` and ``seq_len`` typed on the Data page for this corpus) replace them where given (a
    melody's vocabulary is fixed)."""
    from .train import CHOICES

    p = PRESETS[preset]
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    base = TrainConfig().to_dict()
    specs = []
    for group, names in OPTION_GROUPS.items():
        for name in names:
            default = p.config.get(name, base[name])
            if name in ("d_filter_sizes", "d_num_filters") and name not in p.config:
                default = []  # the paper's widths that fit seq_len
            if kind in ("text", "music") and name == "seq_len":
                default = p.config.get("seq_len")
            if name == "vocab_size":
                default = {"text": p.text_vocab_size, "music": None}.get(kind, default)
            if (corpus_settings or {}).get(name) is not None and (name == "seq_len" or kind == "text"):
                default = corpus_settings[name]  # typed there; for "auto" the preset's value stays
            ftype = "list" if name.startswith(("d_filter", "d_num")) else str(fields[name].type)
            choices = list(CHOICES.get(name, [])) or None
            specs.append(OptionSpec(name, group, ftype, default, OPTION_HELP[name], choices))
    return specs


def parse_int_list(text: str, name: str) -> list[int]:
    try:
        return [int(x) for x in str(text).replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"{name}: expected whole numbers separated by spaces (got {text!r})") from None


def training_args(choice: CorpusChoice, options: dict, *, tokenizer_model: str | None = None) -> list[str]:
    """``seqgan train`` arguments for a corpus and option values (None = decided by the corpus)."""
    from .text import MIN_VOCAB_SIZE

    args = ["--corpus", choice.source] if choice.kind != "oracle" else []
    if choice.kind == "text" and tokenizer_model:
        args += ["--tokenizer-model", tokenizer_model]
    defaults = TrainConfig().to_dict()
    for name, value in options.items():
        if name not in defaults:
            raise ConfigError(f"unknown training option {name}")
        if value is None or value == [] or (choice.kind == "music" and name == "vocab_size"):
            continue
        if value == defaults[name] and not (name in ("vocab_size", "seq_len") and choice.kind != "oracle"):
            continue  # the trainer's default: the command stays short
        flag = "--" + name.replace("_", "-")
        args += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    probe = {k: v for k, v in options.items() if v is not None and v != []}
    if choice.kind != "oracle":  # the corpus decides these; check the rest now rather than in the job
        vocab_size = probe.pop("vocab_size", None)
        if choice.kind == "text" and vocab_size is not None and vocab_size < MIN_VOCAB_SIZE:
            raise ConfigError(f"vocab_size must be at least {MIN_VOCAB_SIZE} for a text corpus (got {vocab_size})")
        probe.setdefault("seq_len", MAX_SEQ_LEN)
        probe["start_token"] = 0
    TrainConfig(**probe).validate()
    return args


def new_run_id(label: str) -> str:
    """A new run's id, its folder made here so that two starts in the same second never share it."""
    root = jobs.runs_root()
    root.mkdir(parents=True, exist_ok=True)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(label, 40)}"
    run_id, n = base, 2
    while True:
        try:
            (root / run_id).mkdir()
            return run_id
        except FileExistsError:
            run_id, n = f"{base}-{n}", n + 1


def start_training(choice_id: str, preset: str, options: dict, *, threads: int = 1, device: str = "auto",
                   tokenizer_model: str | None = None) -> str:
    """Start ``seqgan train`` in the background on a free device; returns the new run's id."""
    choice = corpus_choice(choice_id)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}")
    if not 1 <= int(threads) <= max_threads():
        raise ConfigError(f"threads must be within 1..{max_threads()} (got {threads})")
    args = training_args(choice, options, tokenizer_model=tokenizer_model)
    name = choice.id.split(":", 1)[-1]
    run_id = new_run_id(f"{_slug(name, 30)}-{preset}")
    run = RunDir(jobs.runs_root() / run_id)
    try:
        jobs.start(run, args, threads=threads, device=device,
                   meta={"preset": preset, "corpus": choice.label, "corpus_id": choice.id})
    except BaseException:
        if not run.job.is_file():  # refused (the device busy) or failed to start: leave no folder behind
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    return run_id


def stop_training(run_id: str, force: bool = False) -> None:
    jobs.stop(_user_run(run_id).run, force=force)


def resume_training(run_id: str, threads: int | None = None) -> None:
    """Continue a stopped run from latest.pt, or without one start it again (its earlier events go at once, so
    the page does not show the old attempt's progress while the job prepares)."""
    info = _user_run(run_id)
    if not info.resumable:
        info.run.check_trainable()  # an exported run says why
        raise SeqGANError(f"run {run_id} is {info.state.state}: it cannot be resumed now")

    def forget_the_old_attempt():  # only once the start is certain: a refused start keeps the events
        if not info.run.checkpoint("latest").is_file():
            info.run.truncate_events(-1)

    job = jobs.read_job(info.run) or {}
    device = "cpu" if job.get("device") == "cpu" else "auto"  # a GPU run continues on any free GPU
    jobs.start(info.run, threads=threads or job.get("threads", default_threads()), device=device, resume=True,
               before=forget_the_old_attempt)


def _user_run(run_id: str) -> "RunInfo":
    info = get_run(run_id)
    if info.builtin:
        raise SeqGANError(f"{run_id} is a built-in demo run: it is read-only")
    return info


# =============================================================================================================
# Runs
# =============================================================================================================
@dataclass
class RunInfo:
    id: str
    run: RunDir
    builtin: bool
    kind: str            # text | music | oracle | tokens ("" before the trainer wrote config.json)
    source: str          # the corpus
    state: jobs.JobState
    status: dict
    config: dict         # TrainConfig fields ({} before config.json)
    meta: dict           # preset, corpus label, ... (from job.json)
    created: float

    @property
    def corpus(self) -> str:
        """What it was trained on, short: the label the app gave it, else the source's file name."""
        if self.meta.get("corpus"):
            return self.meta["corpus"]
        if self.source.startswith("builtin:") or not self.source:
            return self.source or self.kind
        return Path(self.source).name

    @property
    def label(self) -> str:
        if self.builtin:
            return f"Demo: {self.id.split(':', 1)[1]} (built-in, read-only)"
        return self.id

    @property
    def resumable(self) -> bool:
        """Stopped or interrupted after the trainer started (it wrote config.json), with the data it trains on
        (an exported run has none): resume can continue it."""
        return (not self.builtin and self.state.resumable and self.run.config.is_file()
                and self.run.train_data.is_file())

    def checkpoints(self) -> dict[str, Path]:
        return {role: self.run.checkpoint(role) for role in ROLES if self.run.checkpoint(role).is_file()}


def _run_info(run: RunDir, run_id: str, builtin: bool) -> RunInfo:
    saved = run.read_config() or {}
    task = saved.get("task", {})
    random_oracle = "random oracle" if task.get("kind") == "oracle" else ""
    source = task.get("source") or task.get("oracle_params") or random_oracle
    meta = jobs.job_meta(run)
    state = jobs.JobState("demo", False, None, None) if builtin else jobs.job_state(run)
    created = (jobs.read_job(run) or {}).get("created")
    if created is None:
        try:
            created = run.config.stat().st_mtime
        except OSError:
            created = 0.0
    return RunInfo(run_id, run, builtin, task.get("kind", ""), source or meta.get("corpus", ""), state,
                   run.read_status() or {}, saved.get("config", {}), meta, created)


def demo_runs() -> list[RunInfo]:
    root = demo_root()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        run = RunDir(path)
        if path.is_dir() and run.config.is_file():
            found.append(_run_info(run, f"demo:{path.name}", True))
    return found


def list_runs(include_demos: bool = True) -> list[RunInfo]:
    """Built-in demo runs first, then the user's runs, newest first."""
    root = jobs.runs_root()
    mine = []
    if root.is_dir():
        for path in root.iterdir():
            run = RunDir(path)
            if path.is_dir() and run.exists():
                mine.append(_run_info(run, path.name, False))
    mine.sort(key=lambda r: r.created, reverse=True)
    return (demo_runs() if include_demos else []) + mine


def get_run(run_id: str) -> RunInfo:
    if run_id.startswith("demo:"):
        path = demo_root() / run_id.split(":", 1)[1]
        builtin = True
    else:
        path = jobs.runs_root() / run_id
        builtin = False
    unsafe = "/" in run_id or ".." in run_id
    if unsafe or not RunDir(path).exists() or (builtin and not (path / "config.json").exists()):
        raise InputError(run_id, "no such run")
    return _run_info(RunDir(path), run_id, builtin)


@dataclass
class RunProgress:
    fraction: float
    unit: int
    units: int
    phase: str
    step: int
    phase_total: int
    elapsed: float              # seconds of training measured so far
    eta_seconds: float | None   # None: not yet known
    eta_note: str               # what the estimate leaves out
    mfu: float | None = None    # the last units' mean share of the device's measured matmul peak (``flops``)


PHASE_LABELS = {"init": "evaluating the untrained generator", "mle": "MLE pre-training of the generator",
                "d_pretrain": "pre-training the discriminator", "adversarial": "adversarial training",
                "done": "done"}


def run_progress(info: RunInfo) -> RunProgress:
    """Where the run is in its schedule, and an estimate of the time left from the units' measured times."""
    try:
        return _run_progress(info)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError, OSError):
        # files edited by hand or by another version, or unreadable
        return RunProgress(0.0, 0, 0, "unknown", 0, 0, 0.0, None, "its status or events could not be read")


def _run_progress(info: RunInfo) -> RunProgress:
    events = info.run.events()
    try:
        config = TrainConfig.from_dict(info.config) if info.config else None
    except (SeqGANError, TypeError):
        config = None
    schedule = config.units() if config is not None else []
    units = len(schedule) or int(info.status.get("units", 0))
    done = max([e["unit"] + 1 for e in events if e.get("unit", -1) >= 0], default=0)
    if info.state.state == "finished":
        done = units
    if info.state.state == "finished" or (units and done >= units):  # also a schedule of no units
        phase, step, phase_total = "done", 0, 0
    elif not units:  # the job has not written its configuration (yet, or ever: stopped or failed before it)
        phase, step, phase_total = "starting" if info.state.active else "not started", 0, 0
    elif done < len(schedule):
        phase, step, phase_total = schedule[done][0], schedule[done][1], 0
    else:  # a config.json this version cannot read: the status says where the run is
        phase, step, phase_total = str(info.status.get("phase", "unknown")), info.status.get("step", 0), 0
    if phase not in ("done", "starting", "not started"):
        phase_total = sum(1 for p, _ in schedule if p == phase)
    seconds: dict[str, list[float]] = {}
    for e in events:
        if e.get("unit", -1) >= 0 and "seconds" in e:
            seconds.setdefault(e["phase"], []).append(float(e["seconds"]))
    shares = [float(e["mfu"]) for e in events if "mfu" in e][-10:]
    mfu = sum(shares) / len(shares) if shares else None
    remaining = [p for p, _ in schedule[done:]]
    untimed = [p for p in PHASE_LABELS if p in remaining and p not in seconds]
    # A phase not timed yet takes its floating-point work at the share of the peak the run has reached so far.
    peak, num_train = info.status.get("peak_flops"), info.status.get("train_sequences")
    guessed = {p: flops.unit(config, p, num_train) / (peak * mfu) for p in untimed} \
        if untimed and mfu and peak and num_train else {}
    if not schedule and done < units:  # a config.json this version cannot read: nothing to count from
        eta = None
    elif not remaining:
        eta = 0.0
    elif len(untimed) == len(set(remaining)) and not guessed:
        eta = None  # known once the first unit of the phase has run
    else:
        eta = sum(remaining.count(p) * (sum(seconds[p][-10:]) / len(seconds[p][-10:]) if p in seconds
                                        else guessed.get(p, 0.0)) for p in set(remaining))
    phases = " and ".join(PHASE_LABELS[p] for p in untimed)
    note = "" if not untimed else (f"{phases} estimated from their work" if guessed else
                                   f"not counting {phases} (not timed yet)")
    elapsed = sum(sum(v) for v in seconds.values())
    fraction = 1.0 if phase == "done" else done / units if units else 0.0
    return RunProgress(fraction, done, units, phase, step, phase_total, elapsed, eta, note, mfu)


def progress_line(progress: RunProgress) -> str:
    """The progress bar's text: the phase, the step in it, the unit of the schedule and the time left."""
    if progress.phase == "starting":
        return "starting: reading the data and setting up the schedule"
    if progress.phase == "not started":
        return "not started: the job ended before it had read its data (delete the run and start a new one)"
    if progress.phase == "done":
        return f"done: {progress.units} units in {format_seconds(progress.elapsed)}"
    where = f"{progress.step}/{progress.phase_total} · " if progress.phase_total else ""  # unknown without a schedule
    return (f"{PHASE_LABELS.get(progress.phase, progress.phase)}: {where}"
            f"unit {progress.unit} of {progress.units} · time left {format_seconds(progress.eta_seconds)}"
            + (f" ({progress.eta_note})" if progress.eta_note else "")
            + (f" · {flops.percent(progress.mfu)} of the device's matmul peak" if progress.mfu is not None else ""))


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# Two sections of charts in the run view: what training optimises, and what it buys. Quality sits beside diversity
# and coverage so that a gain bought by narrowing the generator (mode collapse) shows at a glance.
CHART_SECTIONS = {
    "Training": {
        "Generator loss (MLE: NLL per token)": ["mle_loss"],
        "Policy-gradient loss (adversarial)": ["pg_loss"],
        "Discriminator loss": ["d_loss"],
        "Discriminator accuracy": ["d_acc"],
        "Discriminator's mean reward for training positives, held-out real data and generated sequences (held-out "
        "close to generated: it has learned its training set, not the data)": ["d_train_real", "d_heldout_real",
                                                                                 "d_generated"],
        "Critic: mean score of real minus generated sequences (the Wasserstein estimate)": ["d_gap"],
    },
    "Quality against diversity": {
        "Quality: BLEU against held-out data (higher is better)": ["bleu2", "bleu3", "bleu4"],
        "Quality: NLL-oracle of samples (lower is better)": ["nll_oracle"],
        "Quality: melody MSE to the closest held-out window (lower is better)": ["mse"],
        "Diversity: Self-BLEU-4 (lower = more diverse) and distinct-2 (higher = more diverse)": ["self_bleu4",
                                                                                                "distinct2"],
        "Coverage: NLL-test of held-out data (lower is better; rises when modes are dropped)": ["nll_test"],
    },
}
CHARTS = {title: columns for section in CHART_SECTIONS.values() for title, columns in section.items()}


LATEST = [("mle_loss", "MLE loss"), ("pg_loss", "PG loss"), ("d_loss", "D loss"), ("d_acc", "D accuracy"),
          ("nll_test", "NLL-test"), ("nll_oracle", "NLL-oracle"), ("bleu4", "BLEU-4"), ("self_bleu4", "Self-BLEU-4"),
          ("distinct2", "distinct-2")]


def latest_metrics(frames: dict) -> list[tuple[str, str]]:
    """(label, value) of the last measurement of each metric in ``metric_frames``, for a row of numbers."""
    last = {}
    for frame in frames.values():
        for column in frame.columns:
            values = frame[column].dropna()
            if len(values):
                last[column] = float(values.iloc[-1])
    return [(label, format_metric(last[key])) for key, label in LATEST if key in last]


def format_metric(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def chart_sections(frames: dict) -> list[tuple[str, list[tuple[str, object]]]]:
    """``metric_frames`` grouped as ``CHART_SECTIONS``, sections without a chart left out."""
    sections = [(name, [(title, frames[title]) for title in charts if title in frames])
                for name, charts in CHART_SECTIONS.items()]
    return [(name, charts) for name, charts in sections if charts]


def metric_frames(info: RunInfo) -> dict:
    """One pandas DataFrame per chart (index: unit of the schedule, -1 = before training), empty ones left out."""
    import pandas as pd

    rows = []
    for e in info.run.events():
        row = {k: v for k, v in e.items() if isinstance(v, (int, float)) and k not in ("time", "step", "total")}
        if "g_loss" in row:  # metrics.jsonl written before commit 020dc45 names both losses g_loss
            row["mle_loss" if e.get("phase") == "mle" else "pg_loss"] = row.pop("g_loss")
        rows.append(row)
    if not rows:
        return {}
    frame = pd.DataFrame(rows).set_index("unit")
    frames = {}
    for title, columns in CHARTS.items():
        present = [c for c in columns if c in frame.columns]
        if present:
            part = frame[present].dropna(how="all")
            if len(part):
                frames[title] = part
    return frames


# =============================================================================================================
# Models: loading, sampling, melodies
# =============================================================================================================
@dataclass
class Model:
    label: str
    path: Path
    kind: str            # text | music | oracle | tokens
    role: str
    config: dict
    position: dict
    generator: object    # seqgan.models.Generator
    tokenizer: object | None


def load_model(path: str | Path, label: str | None = None) -> Model:
    """A checkpoint as a generator ready to sample (cached while the file is unchanged)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise InputError(path, "no such checkpoint file") from None
    model = _load_model(str(path), stat.st_mtime_ns, stat.st_size)
    return dataclasses.replace(model, label=label or model.label)


@functools.lru_cache(maxsize=16)
def _load_model(path: str, mtime_ns: int, size: int) -> Model:
    return model_from_bundle(load_bundle(path), Path(path).name, Path(path))


def model_from_bundle(bundle: dict, name: str, path: Path | None = None) -> Model:
    """Build the generator and tokenizer a bundle describes; any mismatch is an InputError naming ``name``."""
    from .checkpoint import generator_from_bundle
    from .corpus import checkpoint_seq_len, tokenizer_from_bytes

    generator = generator_from_bundle(bundle, name)
    c = bundle["config"]
    checkpoint_seq_len(bundle, name)  # checked here: Compare samples at this length
    data = tokenizer_bytes(bundle)
    tokenizer = tokenizer_from_bytes(data, name) if data else None
    kind = bundle.get("kind", "tokens")  # one of checkpoint.KINDS (``load_bundle`` checks)
    if kind in ("text", "music") and (tokenizer is None or tokenizer.kind != kind):
        raise InputError(name, f"a {kind} checkpoint without its {kind} tokenizer")
    if kind not in ("text", "music") and tokenizer is not None:
        raise InputError(name, f"a {kind} checkpoint has no tokenizer, but this one carries a {tokenizer.kind} one")
    if tokenizer is not None and tokenizer.vocab_size != generator.vocab_size:
        raise InputError(name, f"the tokenizer has {tokenizer.vocab_size} ids but the generator "
                               f"{generator.vocab_size}")
    role = bundle.get("role", "latest")
    return Model(f"{ROLE_LABELS.get(role, role)} ({name})", path or Path(name), kind, role, dict(c),
                 dict(bundle.get("position", {})), generator, tokenizer)


def generate(model: Model, num: int, temperature: float = 1.0, seed: int = 0) -> list[list[int]]:
    """``num`` sequences of token ids, reproducible for the same seed and temperature."""
    if not 0.05 <= float(temperature) <= 10:
        raise ConfigError(f"temperature must be within 0.05..10 (got {temperature})")
    if not 1 <= int(num) <= 1000:
        raise ConfigError(f"number of samples must be within 1..1000 (got {num})")
    rng = torch.Generator().manual_seed(int(seed))
    return model.generator.sample(int(num), int(model.config["seq_len"]), float(temperature), generator=rng).tolist()


def samples(model: Model, num: int, temperature: float = 1.0, seed: int = 0) -> list:
    """``num`` decoded samples: text lines, melody events, or token ids as strings (see ``decode``)."""
    return [decode(model, row) for row in generate(model, num, temperature, seed)]


def demo_model(name: str, role: str = "seqgan") -> Model | None:
    """A model of a built-in demo run (``None`` when the demo is not installed)."""
    path = demo_root() / name / "checkpoints" / f"{role}.pt"
    return load_model(path, f"{ROLE_LABELS[role]} demo ({name})") if path.is_file() else None


def decode(model: Model, ids: list[int]):
    """Text for text models, melody events (list[int]) for melodies, the ids as a string otherwise."""
    if model.tokenizer is None:
        return " ".join(map(str, ids))
    return model.tokenizer.decode(ids)


@dataclass
class MelodyMedia:
    wav: bytes
    midi: bytes
    png: bytes
    seconds: float


@functools.lru_cache(maxsize=128)
def _melody_media(events: tuple, title: str) -> MelodyMedia:
    from .music import DEFAULT_TEMPO_BPM, STEPS_PER_QUARTER, events_to_midi, events_to_wav, piano_roll_png

    seconds = len(events) * 60.0 / DEFAULT_TEMPO_BPM / STEPS_PER_QUARTER
    return MelodyMedia(events_to_wav(list(events)), events_to_midi(list(events)),
                       piano_roll_png(list(events), title=title or None), seconds)


def melody_media(events, title: str = "") -> MelodyMedia:
    """WAV (to play), MIDI (to download) and a piano-roll PNG of melody events (cached)."""
    return _melody_media(tuple(int(e) for e in events), title)


def sample_diversity(model: Model, temperature: float, seed: int, num: int = 200) -> dict:
    """Self-BLEU-4 and distinct-2 of ``num`` fresh samples at this temperature (the units BLEU counts)."""
    from .corpus import bleu_tokens
    from .metrics import diversity

    rows = generate(model, num, temperature, seed)
    units = [bleu_tokens(model.tokenizer, r) if model.tokenizer is not None else [str(i) for i in r] for r in rows]
    measured = diversity(units, len(units))
    if sum(1 for u in units if u) < 2:  # nothing to compare: shown as "no value", not as perfectly diverse
        measured["self_bleu4"] = float("nan")
    return measured


# =============================================================================================================
# Comparison
# =============================================================================================================
METRICS = [  # key, label, which way is better
    ("nll_test", "NLL-test", "lower is better"),
    ("nll_oracle", "NLL-oracle", "lower is better"),
    ("bleu2", "BLEU-2", "higher is better"),
    ("bleu3", "BLEU-3", "higher is better"),
    ("bleu4", "BLEU-4", "higher is better"),
    ("self_bleu4", "Self-BLEU-4", "lower = more diverse"),
    ("distinct2", "distinct-2", "higher = more diverse"),
    ("mse", "MSE (melody)", "lower is better"),
    ("silent", "silent windows (melody)", "lower is better"),
]


@dataclass
class ModelRef:
    """One column of the Compare page."""

    label: str
    path: Path
    metrics: dict        # measured during training (held-out set), {} when unknown
    measured: str        # when they were measured, e.g. "after MLE epoch 10"
    missing: str = ""    # why there are none, when there are none


def compare_sources() -> list[tuple[str, str]]:
    """(id, label) of everything the Compare page can show: runs with checkpoints, then uploaded checkpoints."""
    sources = [(info.id, info.label + ("" if info.builtin else f" — {info.corpus}"))
               for info in list_runs() if info.checkpoints()]
    sources += [(c.id, f"Uploaded: {c.path.name}") for c in uploaded_checkpoints()]
    return sources


def default_compare_source(sources: list[tuple[str, str]]) -> str | None:
    """The demo melodies, else the demo poems, else the first listed (newest) run."""
    ids = [s for s, _ in sources]
    for wanted in ("demo:melodies", "demo:poems"):
        if wanted in ids:
            return wanted
    return ids[0] if ids else None


def models_of(source_id: str) -> list[ModelRef]:
    """The models of a run (MLE and SeqGAN; the latest checkpoint while neither exists) or one upload."""
    if source_id.startswith("upload:"):
        info = _uploaded(source_id)
        return [ModelRef(f"{ROLE_LABELS.get(info.role, info.role)} (uploaded {info.path.name})", info.path, {},
                         "", "an uploaded checkpoint carries no training metrics")]
    info = get_run(source_id)
    found = info.checkpoints()
    roles = [r for r in ("mle", "seqgan") if r in found] or [r for r in ("latest",) if r in found]
    if not roles:
        raise InputError(source_id, "this run has no checkpoint yet")
    events = info.run.events()
    name = "demo " + source_id.split(":", 1)[1] if info.builtin else source_id
    heldout = info.run.path / "heldout.txt"
    missing = ("its corpus had nothing held out to measure them on" if heldout.is_file() and not heldout.stat().st_size
               else "not measured yet")
    refs = []
    for role in roles:
        shown = events
        if role == "latest":  # saved every few minutes, while events come every unit: only those before it count
            unit = _checkpoint_unit(found[role])
            shown = [e for e in events if unit is None or e.get("unit", -1) < unit]
        metrics, measured = _phase_metrics(shown, {"mle": "mle", "seqgan": "adversarial"}.get(role))
        refs.append(ModelRef(f"{ROLE_LABELS[role]} — {name}", found[role], metrics, measured,
                             "" if metrics else missing))
    return refs


def _checkpoint_unit(path: Path) -> int | None:
    """The number of units of the schedule a checkpoint had trained (None when it cannot be read); from the
    cached model that Compare samples from, so the file is read once."""
    try:
        return int(load_model(path).position["unit"])
    except (SeqGANError, KeyError, TypeError, ValueError):
        return None


def _phase_metrics(events: list[dict], phase: str | None) -> tuple[dict, str]:
    keys = {k for k, _, _ in METRICS}
    if phase is None:
        evaluated = [e for e in events if keys & e.keys()]
    else:
        evaluated = [e for e in events if e.get("phase") == phase and keys & e.keys()]
    if not evaluated:
        return {}, ""
    last = evaluated[-1]
    what = {"mle": "MLE epoch", "adversarial": "adversarial iteration", "init": "before training"}
    measured = f"after {what.get(last['phase'], last['phase'])} {last.get('step', '')}".strip()
    return {k: last[k] for k in keys if k in last}, measured


def comparison_table(refs: list[ModelRef]):
    """Metrics measured during training: rows = metrics (with which way is better), columns = models."""
    return _metric_table({ref.label: ref.metrics for ref in refs})


def diversity_table(measured: dict[str, dict]):
    """``sample_diversity`` of each model (label -> metrics) as rows = metrics, columns = models."""
    return _metric_table(measured)


def _metric_table(columns: dict[str, dict]):
    import pandas as pd

    rows = []
    for key, label, better in METRICS:
        values = {name: metrics.get(key) for name, metrics in columns.items()}
        if any(v is not None for v in values.values()):
            rows.append({"metric": label, "better": better, **values})
    return pd.DataFrame(rows).set_index("metric") if rows else pd.DataFrame()


# =============================================================================================================
# Checkpoints
# =============================================================================================================
@dataclass
class CheckpointInfo:
    id: str              # "<run id>/<role>" or "upload:<file name>"
    path: Path
    run_id: str | None
    role: str
    kind: str
    size: int
    modified: float
    builtin: bool
    detail: str          # vocabulary, sequence length, position in the schedule

    @property
    def deletable(self) -> bool:
        return not self.builtin


def list_checkpoints() -> list[CheckpointInfo]:
    """The user's runs' checkpoints (newest run first), then uploaded ones, then the built-in demos'."""
    found = []
    for info in list_runs(include_demos=False) + demo_runs():
        for role, path in info.checkpoints().items():
            stat = path.stat()
            c = info.config
            detail = f"vocab {c.get('vocab_size', '?')}, seq_len {c.get('seq_len', '?')}"
            found.append(CheckpointInfo(f"{info.id}/{role}", path, info.id, role, info.kind, stat.st_size,
                                        stat.st_mtime, info.builtin, detail))
    mine = [c for c in found if not c.builtin]
    return mine + uploaded_checkpoints() + [c for c in found if c.builtin]


def uploaded_checkpoints() -> list[CheckpointInfo]:
    root = uploads_root()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
        meta = RunDir(root).read_json(path.with_suffix(".json")) or {}
        stat = path.stat()
        found.append(CheckpointInfo(f"upload:{path.name}", path, None, meta.get("role", "?"), meta.get("kind", "?"),
                                    stat.st_size, stat.st_mtime, False, meta.get("detail", "")))
    return found


def _uploaded(checkpoint_id: str) -> CheckpointInfo:
    for info in uploaded_checkpoints():
        if info.id == checkpoint_id:
            return info
    raise InputError(checkpoint_id.split(":", 1)[-1], "no such uploaded checkpoint")


def get_checkpoint(checkpoint_id: str) -> CheckpointInfo:
    for info in list_checkpoints():
        if info.id == checkpoint_id:
            return info
    raise InputError(checkpoint_id, "no such checkpoint")


def import_checkpoint(name: str, data: bytes) -> CheckpointInfo:
    """Check an uploaded checkpoint (``load_bundle``: never unpickled; the generator and tokenizer must load)
    and keep it under ``runs/uploaded/``. Anything wrong is an InputError naming the file."""
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise InputError(name, f"is {len(data):,} bytes, more than the limit of {MAX_CHECKPOINT_BYTES:,} bytes")
    bundle = load_bundle(bytes(data), name)
    model = model_from_bundle(bundle, name)
    stem = _slug(Path(name).stem, 60)
    target = uploads_root() / f"{stem}.pt"
    n = 2
    while target.exists():
        target, n = uploads_root() / f"{stem}-{n}.pt", n + 1
    c = model.config
    atomic_write_bytes(target, bytes(data))
    RunDir(target.parent).write_json(target.with_suffix(".json"), {
        "original_name": name, "kind": model.kind, "role": model.role, "uploaded": time.time(),
        "detail": f"vocab {c.get('vocab_size')}, seq_len {c.get('seq_len')}"})
    return _uploaded(f"upload:{target.name}")


def download_name(info: CheckpointInfo) -> str:
    if info.run_id is None:
        return info.path.name
    return f"{_slug(info.run_id.replace(':', '-'))}-{info.role}.pt"


def deletion_loses(checkpoint_id: str) -> str:
    """What deleting this checkpoint takes with it beyond the file, as a sentence ('' when nothing)."""
    info = get_checkpoint(checkpoint_id)
    if info.role == "latest" and info.run_id is not None and get_run(info.run_id).resumable:
        return "The run cannot resume without it: Resume would start it again from the beginning."
    return ""


def still_training(info: CheckpointInfo) -> bool:
    """Whether the checkpoint's run has a job under way (its checkpoints and the run cannot be deleted)."""
    return info.run_id is not None and not info.builtin and get_run(info.run_id).state.active


def delete_checkpoint(checkpoint_id: str) -> None:
    info = get_checkpoint(checkpoint_id)
    if info.builtin:
        raise SeqGANError(f"{checkpoint_id} belongs to a built-in demo run: it is read-only")
    if still_training(info):
        raise SeqGANError(f"run {info.run_id} is still training; stop it before deleting its checkpoints")
    info.path.unlink(missing_ok=True)
    if info.run_id is None:
        info.path.with_suffix(".json").unlink(missing_ok=True)
    _load_model.cache_clear()


def delete_run(run_id: str) -> None:
    info = _user_run(run_id)
    if info.state.active:
        raise SeqGANError(f"run {run_id} is still {info.state.state}; stop it first")
    root = jobs.runs_root().resolve()
    path = info.run.path.resolve()
    if path.parent != root:
        raise SeqGANError(f"{path} is not a run under {root}")
    shutil.rmtree(path)
    _load_model.cache_clear()


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
