"""The paper's synthetic-data experiment (Table 1 and Figure 2): Random, MLE, SS, PG-BLEU and SeqGAN.

For each seed: an oracle (the paper's, or random N(0, 1) from the seed) draws the training set (10,000
sequences) and a held-out set; then

    Random    the untrained generator (the SeqGAN run's evaluation before training)
    MLE       the generator at the end of maximum-likelihood pre-training (the SeqGAN run's ``mle.pt``)
    SeqGAN    the full schedule: MLE, discriminator pre-training, adversarial training
    PG-BLEU   from the same MLE generator, policy gradient whose rewards are BLEU against the training data
    SS        maximum likelihood with scheduled sampling (Bengio et al. 2015) for the same number of epochs

Each model is scored by NLL-oracle (lower is better). Presets: ``paper`` is the original schedule (a GPU job);
``cpu`` fits one seed in under 30 minutes on one core of a 2-core CPU (``PRESETS`` says what it reduces);
``demo`` shows the whole pipeline in minutes and proves nothing.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from . import flops
from .checkpoint import load_bundle
from .metrics import BleuScorer, mean_sd, over_seeds
from .errors import ConfigError, InputError
from .oracle import (PAPER_SEQ_LEN, PAPER_VOCAB, load_oracle, nll_under, oracle_arrays, oracle_evaluator,
                     random_oracle, write_task)
from .runs import RunDir
from .train import TrainConfig, Trainer, resolve_d_scale, resolve_device, run_to_end, settings_differ

MODELS = ("Random", "MLE", "SS", "PG-BLEU", "SeqGAN")
PAPER_TABLE1 = {"Random": 10.310, "MLE": 9.038, "SS": 8.985, "PG-BLEU": 8.946, "SeqGAN": 8.736}
# task.json's oracle_sha256 of the paper's oracle (target_params.pkl), whose numbers PAPER_TABLE1 are
PAPER_ORACLE_SHA256 = "1095de918aba7a2668fd85b4c9e5fbcc39747ce5b70207ce4a8ec814355151a5"

# What the cpu preset reduces, and by how much, relative to the paper's schedule (TrainConfig defaults).
# d_scale: the paper's discriminator (its widths that fit) with its feature maps times the scale.
PRESETS = {
    "paper": dict(num_train=10_000),
    "demo": dict(                   # a look at every model in about three minutes; not a result
        num_train=5_000, mle_epochs=10, d_pretrain_rounds=2, num_negatives=2_000, d_scale=0.25,
        adv_iters=6, d_steps=1, eval_samples=1_000, eval_every=2,
    ),
    "cpu": dict(
        num_train=10_000,
        mle_epochs=40,              # paper 120: the original log is within 0.07 of its final MLE value by 40
        d_pretrain_rounds=10,       # paper 50
        num_negatives=5_000,        # paper 10,000 negatives (and as many positives) per discriminator round
        d_scale=0.25,               # a quarter of the paper's 1,720 feature maps
        adv_iters=40,               # paper 200 (the original log gains most of its 0.4 in the first 70)
        d_steps=1,                  # paper 5 discriminator rounds per adversarial iteration
        rollouts=16,
        eval_samples=3_000,         # paper ~10,000 generated sequences per NLL-oracle evaluation
        eval_every=5,
    ),
}


def preset_config(preset: str, seed: int, device: str = "auto", **overrides) -> tuple[TrainConfig, int]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    settings = resolve_d_scale({**PRESETS[preset], **overrides}, PAPER_SEQ_LEN)
    num_train = settings.pop("num_train")
    settings = {"vocab_size": PAPER_VOCAB, "seq_len": PAPER_SEQ_LEN, **settings}
    config = TrainConfig(seed=seed, device=device, **settings)
    return config.validate(), num_train


def bleu_reward(references: torch.Tensor, n: int):
    """PG-BLEU's reward: BLEU-n of each completion against the whole training set."""
    scorer = BleuScorer(references.tolist(), max_n=n)

    def reward(tokens: torch.Tensor) -> torch.Tensor:
        return torch.tensor(scorer.sentences(tokens.tolist(), n), dtype=torch.float32, device=tokens.device)

    return reward


SS_FINAL_OWN_TOKEN_PROB = 0.25  # scheduled sampling: feed G its own token with a chance rising 0 -> this
RUN_DIRS = {"SeqGAN": "seqgan", "PG-BLEU": "pg_bleu", "SS": "ss"}  # Random and MLE come from the SeqGAN run


def oracle_digest(oracle) -> str:
    """SHA-256 of an oracle's arrays: which oracle a task folder holds (task.json)."""
    return hashlib.sha256(b"".join(a.numpy().tobytes() for a in oracle_arrays(oracle).values())).hexdigest()


def oracle_task(out_dir: Path, seed: int, num_train: int, seq_len: int, oracle_params: str | None = None):
    """The oracle (the paper's, or random from the seed), its training set and a held-out set (at most 2,000) of
    sequences of ``seq_len``, also written into ``out_dir`` (oracle.pt, train.txt, heldout.txt). ``task.json``
    records which oracle and sizes: a folder that holds another task is refused (its runs would resume on other
    data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    oracle = load_oracle(oracle_params) if oracle_params else random_oracle(seed)
    task = {"oracle_sha256": oracle_digest(oracle), "num_train": num_train, "seq_len": seq_len}
    task_file = out_dir / "task.json"
    if task_file.exists():
        held = json.loads(task_file.read_text())
        differ = sorted(k for k in task if held.get(k) != task[k])
        if differ:
            what = ["the oracle (--oracle-params)" if k == "oracle_sha256" else k for k in differ]
            raise ConfigError(f"{out_dir} holds runs of another task ({', '.join(what)} differ); use another "
                              f"output folder or remove it")
    else:
        task_file.write_text(json.dumps(task, indent=1))
    train, heldout = write_task(oracle, out_dir, num_train, seq_len, seed)
    return oracle, train, heldout


def run_seed(preset: str, seed: int, out_dir: Path, oracle_params: str | None = None, device: str = "auto",
             models=MODELS, log=print, **overrides) -> dict:
    """Train every model for one seed into ``out_dir``; returns ``seed_summary(out_dir)``."""
    config, num_train = preset_config(preset, seed, device, **overrides)
    out_dir = Path(out_dir)
    oracle, train, heldout = oracle_task(out_dir, seed, num_train, config.seq_len, oracle_params)
    on = resolve_device(config.device)
    evaluator = oracle_evaluator(oracle.to(on), config.eval_samples, config.seq_len, heldout.to(on))

    def progress(name):
        def callback(event):
            where = f"[seed {seed}] {name:7s} {event['phase']:11s} {event['step']:4d}/{event['total']:<4d}"
            share = f", {flops.percent(event['mfu'])} of peak" if "mfu" in event else ""
            took = f" ({event['seconds']:.0f} s{share})" if "seconds" in event else ""  # the init event: untimed
            if "nll_oracle" in event:
                log(f"{where} nll_oracle={event['nll_oracle']:.4f} nll_test={event['nll_test']:.4f}{took}")
            elif event["phase"] == "d_pretrain":  # no evaluation of G in this phase, which can take an hour
                log(f"{where} d_loss={event['d_loss']:.4f} d_acc={event['d_acc']:.4f}{took}")
        return callback

    def train_model(name, config, begin=None, **kwargs):
        run = RunDir(out_dir / RUN_DIRS[name])
        trainer = Trainer(config, train, run, evaluator, progress(name), kind="oracle",
                          extra={"oracle": "../oracle.pt"}, heldout=heldout, **kwargs)
        run_to_end(trainer, begin, log, f"[seed {seed}] {name}")
        seconds = run.training_seconds()
        log(f"[seed {seed}] {name} done: {seconds:.0f} s of training")
        return seconds

    mle_only = replace(config, d_pretrain_rounds=0, adv_iters=0)
    seconds = train_model("SeqGAN", config if "SeqGAN" in models else mle_only)
    if "PG-BLEU" in models:
        mle = RunDir(out_dir / RUN_DIRS["SeqGAN"]).checkpoint("mle")
        seconds += train_model("PG-BLEU", replace(config, reward="bleu"),
                               lambda t: t.restore(load_bundle(mle), position=config.mle_epochs, weights_only=True),
                               reward_fn=bleu_reward(train, config.bleu_n))
    if "SS" in models:
        seconds += train_model("SS", replace(mle_only, scheduled_sampling=SS_FINAL_OWN_TOKEN_PROB))

    meta = {"seed": seed, "preset": preset, "config": config.to_dict(), "models": list(models),
            "oracle_self_nll": nll_under(oracle, heldout), "seconds": seconds}
    (out_dir / "seed.json").write_text(json.dumps(meta, indent=1))
    return seed_summary(out_dir)


def evaluation_points(run: RunDir, mle_epochs: int) -> list[list[float]]:
    """[x, nll_oracle, nll_test] of every evaluation; x counts MLE epochs, then adversarial iterations."""
    points = []
    for event in run.events():
        if "nll_oracle" in event:
            x = {"init": 0, "mle": event["step"]}.get(event["phase"], mle_epochs + event["step"])
            points.append([x, event["nll_oracle"], event.get("nll_test", float("nan"))])
    return points


def seed_summary(seed_dir: str | Path) -> dict:
    """One seed's curves and final values, read back from its run directories' metrics.jsonl."""
    seed_dir = Path(seed_dir)
    meta = json.loads((seed_dir / "seed.json").read_text())
    mle_epochs = meta["config"]["mle_epochs"]
    curves = {}
    seqgan = evaluation_points(RunDir(seed_dir / RUN_DIRS["SeqGAN"]), mle_epochs)
    curves["Random"] = seqgan[:1]
    curves["MLE"] = [p for p in seqgan if p[0] <= mle_epochs]
    if "SeqGAN" in meta["models"]:
        curves["SeqGAN"] = [p for p in seqgan if p[0] >= mle_epochs]
    for model in ("PG-BLEU", "SS"):
        if model in meta["models"]:
            curves[model] = evaluation_points(RunDir(seed_dir / RUN_DIRS[model]), mle_epochs)
    final = {m: {"nll_oracle": c[-1][1], "nll_test": c[-1][2]} for m, c in curves.items() if c}
    return {**meta, "curves": curves, "final": final}


def summarize(summaries: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of each model's final NLL-oracle and NLL-test."""
    table = {}
    for model in MODELS:
        rows = [s["final"][model] for s in summaries if model in s["final"]]
        if rows:
            table[model] = {}
            for metric in ("nll_oracle", "nll_test"):
                values = [r[metric] for r in rows]
                table[model][metric] = over_seeds(values)
    return table


SEED_AND_DEVICE = ("seed", "device")  # what seeds of one table may differ in (a table is of one setting)


def markdown_table(table: dict, preset: str, seeds: list[int], paper_oracle: bool | None = True,
                   overrides: list[str] = ()) -> str:
    """``paper_oracle``: every seed used the paper's oracle, so the paper's column measures the same thing
    (None: the folder does not record which oracle). ``overrides``: the settings changed from the preset's."""
    oracle = {True: "the paper's oracle", None: "an oracle the folder does not record",
              False: "a random oracle per seed, not the paper's: its column is of another oracle, for orientation "
                     "only"}[paper_oracle]
    changed = f" with {', '.join(overrides)}" if overrides else ""
    lines = [f"Preset `{preset}`{changed}, seeds {', '.join(map(str, seeds))}, {oracle}: mean ± sd over seeds. "
             "NLL-oracle: the oracle's NLL of the model's samples (quality; lower is better). NLL-test: the model's "
             "NLL of held-out oracle samples (coverage; rises when the model drops modes).",
             "", f"| Model | NLL-oracle | NLL-test | paper NLL-oracle{'' if paper_oracle else ' (its oracle)'} |",
             "|---|---|---|---|"]
    for model, row in table.items():
        o, t = row["nll_oracle"], row["nll_test"]
        lines.append(f"| {model} | {mean_sd(o)} | {mean_sd(t)} "
                     f"| {PAPER_TABLE1[model]:.3f} |")
    if "MLE" in table and "SeqGAN" in table:
        gap = [m - s for m, s in zip(table["MLE"]["nll_oracle"]["values"], table["SeqGAN"]["nll_oracle"]["values"])]
        lines += ["", f"NLL-oracle, MLE − SeqGAN per seed: {', '.join(f'{g:+.3f}' for g in gap)}"]
    return "\n".join(lines) + "\n"


def plot_curves(summaries: list[dict], path: Path) -> None:
    """Figure 2: NLL-oracle (and NLL-test) over the schedule for every model, mean over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for panel, (column, label) in enumerate([(1, "NLL-oracle (quality)"), (2, "NLL-test (coverage)")]):
        ax = axes[panel]
        for model in MODELS:
            series = [s["curves"][model] for s in summaries if model in s["curves"]]
            if not series or model == "Random":
                continue
            length = min(len(c) for c in series)
            steps = [series[0][i][0] for i in range(length)]
            means = [statistics.fmean(c[i][column] for c in series) for i in range(length)]
            ax.plot(steps, means, label=model, marker="." if length < 60 else None)
        ax.axvline(summaries[0]["config"]["mle_epochs"], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("MLE epochs, then adversarial iterations")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Synthetic oracle, preset {summaries[0]['preset']}, mean of {len(summaries)} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_oracle_experiment(preset: str, seeds: list[int], out_dir: str | Path, oracle_params: str | None = None,
                          device: str = "auto", models=MODELS, log=print, **overrides) -> dict:
    out_dir = Path(out_dir)
    for seed in seeds:
        run_seed(preset, seed, out_dir / f"seed{seed}", oracle_params, device, models, log, **overrides)
    return write_report(out_dir, seeds)


def write_report(out_dir: str | Path, seeds: list[int]) -> dict:
    """Table 1 (markdown + JSON) and Figure 2 from the seeds' run directories (seeds may run in parallel)."""
    out_dir = Path(out_dir)
    seeds = list(dict.fromkeys(seeds))  # a seed named twice counts once
    for seed in seeds:
        seed_dir = out_dir / f"seed{seed}"
        make = f"`seqgan oracle run --seeds {seed} --out {out_dir}` makes and finishes them"
        try:
            models = json.loads((seed_dir / "seed.json").read_text())["models"]
        except OSError:
            raise InputError(seed_dir, f"seed {seed} has not finished here ({make})") from None
        except (ValueError, KeyError, TypeError):
            raise InputError(seed_dir / "seed.json", "not what `seqgan oracle run` writes") from None
        for model in ["SeqGAN"] + [m for m in ("PG-BLEU", "SS") if m in models]:  # Random and MLE: the SeqGAN run's
            if not RunDir(seed_dir / RUN_DIRS[model]).finished():
                raise InputError(seed_dir / RUN_DIRS[model], f"the {model} run of seed {seed} has not finished "
                                                             f"({make})")
    summaries = [seed_summary(out_dir / f"seed{seed}") for seed in seeds]
    first = summaries[0]
    for other in summaries[1:]:  # a mean over seeds is of one setting
        differ = settings_differ(TrainConfig.from_dict(first["config"]), other["config"], SEED_AND_DEVICE)
        if differ or other["preset"] != first["preset"] or other["models"] != first["models"]:
            raise InputError(out_dir / f"seed{other['seed']}",
                             f"seed {other['seed']} was trained with other settings than seed {first['seed']} "
                             f"({', '.join(differ) or 'preset or models'}): one table averages one setting; keep "
                             f"each setting in its own --out folder")
    preset = first["preset"]
    changed = settings_differ(preset_config(preset, first["seed"])[0], first["config"], SEED_AND_DEVICE)
    table = summarize(summaries)
    tasks = [out_dir / f"seed{seed}" / "task.json" for seed in seeds]  # folders from before task.json have none
    paper_oracle = None if not all(t.is_file() for t in tasks) else \
        all(json.loads(t.read_text()).get("oracle_sha256") == PAPER_ORACLE_SHA256 for t in tasks)
    saved = TrainConfig.from_dict(first["config"]).to_dict()  # (a key older folders lack has its old default)
    overrides = [f"{key}={saved[key]}" for key in changed]
    (out_dir / "table1.md").write_text(markdown_table(table, preset, seeds, paper_oracle, overrides))
    (out_dir / "table1.json").write_text(json.dumps({"preset": preset, "seeds": seeds, "table": table}, indent=1))
    plot_curves(summaries, out_dir / "figure2.png")
    return table
