"""The paper's real-data experiments: Chinese quatrains (BLEU-2) and Nottingham melodies (BLEU-4, MSE).

For each seed, one SeqGAN run (MLE pre-training, discriminator pre-training, adversarial training) on the
corpus gives both models: MLE is its ``mle.pt``, SeqGAN its ``seqgan.pt``. Each seed's folder is an ordinary
run directory (the app and ``seqgan sample`` open it). The final scores use ``final_samples`` sequences from
each generator (seeded), scored against the held-out set (``corpus.SampleScorer``); "Real data" scores as
many training sequences the same way, as the paper's "real data" row does. The MLE generator is also scored
sampled at temperatures below 1 ("MLE at τ=0.8"), the cheapest way to trade diversity for BLEU.

Presets: ``paper`` is the original code's schedule (TrainConfig defaults: a GPU job); ``cpu`` fits one seed
in at most 30 minutes on one core of a 2-core CPU (``PRESETS`` says what it reduces); ``demo`` shows the
pipeline in a few minutes and proves nothing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .checkpoint import generator_from_bundle, load_bundle
from .corpus import (SampleScorer, corpus_evaluator, load_corpus, read_token_file, sequence_nll,
                     tokenizer_from_bytes)
from .errors import ConfigError, Stopped
from .metrics import mean_sd, over_seeds
from .runs import RunDir
from .train import STOP, TrainConfig, Trainer, resolve_d_scale, resolve_device, run_to_end

# The paper's numbers (Tables 2 and 4); "Real data" BLEU-2 of the quatrains is the paper's 0.746.
TASKS = {
    "poems": {"corpus": "../shared/corpora/chinese-quatrains-shi.txt", "main": "bleu2",
              "paper": {"Real data": {"bleu2": 0.746}, "MLE": {"bleu2": 0.667}, "SeqGAN": {"bleu2": 0.739}}},
    "music": {"corpus": "../shared/corpora/nottingham/midi-melody", "main": "bleu4",
              "paper": {"MLE": {"bleu4": 0.921, "mse": 22.38}, "SeqGAN": {"bleu4": 0.941, "mse": 20.62}}},
}


def paper_corpus(task: str) -> Path:
    """Where the paper's corpus of ``task`` is: ``../shared/corpora/...`` beside the working directory, else
    beside this checkout (so the default holds from any folder); the first of the two when neither has it."""
    relative = Path(TASKS[task]["corpus"])
    checkout = Path(__file__).resolve().parent.parent
    return next((p for p in (relative, checkout / relative) if p.exists()), relative)


PRESETS = {
    "paper": {"poems": dict(final_samples=10_000), "music": dict(final_samples=10_000)},
    "demo": {
        "poems": dict(mle_epochs=5, d_pretrain_rounds=2, num_negatives=1_000, adv_iters=4, d_steps=1,
                      eval_samples=500, eval_every=2, final_samples=1_000, d_scale=0.25),
        "music": dict(mle_epochs=5, d_pretrain_rounds=2, num_negatives=1_000, adv_iters=4, d_steps=1,
                      eval_samples=500, eval_every=2, final_samples=1_000, d_scale=0.25),
    },
    "cpu": {
        "poems": dict(mle_epochs=30,          # paper 120
                      d_pretrain_rounds=10,   # paper 50
                      num_negatives=5_000,    # paper 10,000
                      adv_iters=30,           # paper 200
                      d_steps=1,              # paper 5
                      eval_samples=2_000, eval_every=5, final_samples=5_000, d_scale=0.25),
        "music": dict(mle_epochs=40, d_pretrain_rounds=10, num_negatives=5_000, adv_iters=40, d_steps=1,
                      eval_samples=2_000, eval_every=5, final_samples=5_000, d_scale=0.25),
    },
}
# The MLE generator is also scored at these sampling temperatures: sharpening alone trades diversity for BLEU, so a
# SeqGAN gain that a colder MLE matches at the same Self-BLEU was bought by narrowing, not by the adversary.
MLE_TEMPERATURES = (0.9, 0.8, 0.7)
METRICS = ("bleu2", "bleu3", "bleu4", "mse", "silent", "self_bleu4", "distinct2", "nll_test")
LABELS = {"bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "mse": "MSE", "silent": "silent windows",
          "self_bleu4": "Self-BLEU-4", "distinct2": "distinct-2", "nll_test": "NLL-test"}


def load_generator(path: Path, device: torch.device):
    return generator_from_bundle(load_bundle(path)).to(device)


def run_seed(task: str, preset: str, seed: int, out_dir: Path, corpus_source: str | None = None,
             device: str = "auto", log=print, **overrides) -> dict:
    """Train one SeqGAN run (and so its MLE baseline) into ``out_dir``, score it, write and return ``final.json``.
    A run already there is resumed if unfinished (``run_to_end``) and scored (when ``final.json`` is missing)."""
    out_dir = Path(out_dir)
    if (out_dir / "final.json").exists():
        log(f"[{task} seed {seed}] already done: {out_dir}/final.json")
        return json.loads((out_dir / "final.json").read_text())
    run = RunDir(out_dir)
    settings = {**PRESETS[preset][task], **overrides}
    final_samples = settings.pop("final_samples")
    if not run.config.exists():
        if STOP.is_set():
            raise Stopped(f"{out_dir} not started; the same command run again starts it")
        source = corpus_source or paper_corpus(task)
        corpus = load_corpus(source, "text" if task == "poems" else "music", seed=0)  # one split for all seeds
        config = TrainConfig(vocab_size=corpus.vocab_size, seq_len=corpus.seq_len, start_token=corpus.start_token,
                             seed=seed, device=device, **resolve_d_scale(settings, corpus.seq_len)).validate()
        run.create()
        corpus.write(run.path)  # the run trains from these files, whether it is new or resumed
        task_info = {"kind": corpus.kind, "source": str(source), "corpus": corpus.summary(),
                     "experiment": {"task": task, "preset": preset}}
        run.write_json(run.config, {"config": config.to_dict(), "task": task_info})
    saved = run.read_json(run.config)
    # Where it trains is this call's choice: a run begun on a GPU continues or is scored on a CPU, and back.
    config = dataclasses.replace(TrainConfig.from_dict(saved["config"]), device=device)
    asked = {**resolve_d_scale(settings, config.seq_len), "seed": seed}
    differ = sorted(k for k, v in asked.items() if getattr(config, k) != (list(v) if isinstance(v, tuple) else v))
    if differ:
        raise ConfigError(f"{out_dir} holds a run with other settings ({', '.join(differ)}); use another --out "
                          f"or remove it")
    if not run.finished():
        main = TASKS[task]["main"]

        def progress(event):
            if main in event:
                log(f"[{task} seed {seed}] {event['phase']:11s} {event['step']:4d}/{event['total']:<4d} "
                    f"{main}={event[main]:.4f} self_bleu4={event['self_bleu4']:.4f} "
                    f"nll_test={event['nll_test']:.4f}")

        tokenizer_data = (run.path / "tokenizer.bin").read_bytes()
        tokenizer = tokenizer_from_bytes(tokenizer_data)
        train = read_token_file(run.train_data, config.vocab_size)
        heldout = read_token_file(run.path / "heldout.txt", config.vocab_size)
        evaluator = corpus_evaluator(tokenizer, heldout, config.seq_len, config.eval_samples)
        trainer = Trainer(config, train, run, evaluator, progress, kind=tokenizer.kind, tokenizer=tokenizer_data,
                          extra={"task": saved["task"]}, heldout=heldout)
        run_to_end(trainer, log=log, label=f"[{task} seed {seed}]")
    else:
        log(f"[{task} seed {seed}] scoring the finished run in {out_dir}")
    seconds = run.training_seconds()
    result = score_run(run, config, final_samples, seed)
    result.update(task=task, preset=preset, seconds=seconds)
    (out_dir / "final.json").write_text(json.dumps(result, indent=1))
    main = TASKS[task]["main"]
    log(f"[{task} seed {seed}] done in {seconds:.0f} s: " + ", ".join(
        f"{m} {main}={v[main]:.4f}" for m, v in result["final"].items()))
    return result


def score_run(run: RunDir, config: TrainConfig, final_samples: int, seed: int) -> dict:
    """MLE (mle.pt), SeqGAN (seqgan.pt) and real training data, scored the same way against the held-out set."""
    tokenizer = tokenizer_from_bytes((run.path / "tokenizer.bin").read_bytes())
    train = read_token_file(run.train_data, config.vocab_size)
    heldout = read_token_file(run.path / "heldout.txt", config.vocab_size)
    scorer = SampleScorer(tokenizer, heldout)
    eos = tokenizer.eos_id if tokenizer.kind == "text" else None
    device = resolve_device(config.device)
    final = {}
    models = [("MLE", "mle", 1.0), ("SeqGAN", "seqgan", 1.0)]
    models += [(f"MLE at τ={t:g}", "mle", t) for t in MLE_TEMPERATURES]
    generators = {role: load_generator(run.checkpoint(role), device) for role in ("mle", "seqgan")}
    for model, role, temperature in models:
        generator = generators[role]
        rng = torch.Generator(device=device).manual_seed(10_000 + seed)
        with torch.no_grad():
            samples = generator.sample(final_samples, config.seq_len, temperature=temperature,
                                       generator=rng).cpu().tolist()
            final[model] = {**scorer.score(samples),
                            "nll_test": sequence_nll(generator, heldout, eos, temperature=temperature)}
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:final_samples]
    final["Real data"] = scorer.score(train[order].tolist())
    summary = {"kind": tokenizer.kind, "train": len(train), "heldout": len(heldout), "seq_len": config.seq_len,
               "vocab_size": config.vocab_size}
    return {"seed": seed, "final_samples": final_samples, "corpus": summary, "config": config.to_dict(),
            "final": final}


def summarize(results: list[dict]) -> dict:
    """Mean, sd and per-seed values of every metric of every model."""
    table = {}
    models = ["Real data", "MLE", "SeqGAN"] + [m for m in results[0]["final"] if m.startswith("MLE at")]
    for model in models:
        if not all(model in r["final"] for r in results):
            continue  # scored before the temperature rows existed: remove that seed's final.json to rescore it
        table[model] = {}
        for metric in METRICS:
            values = [r["final"][model][metric] for r in results if metric in r["final"][model]]
            if values:
                table[model][metric] = over_seeds(values)
    return table


def markdown_table(task: str, table: dict, results: list[dict]) -> str:
    first = results[0]
    metrics = [m for m in METRICS if any(m in row for row in table.values())]
    paper = TASKS[task]["paper"]
    c = first["corpus"]
    lines = [f"`{task}`, preset `{first['preset']}`, seeds {', '.join(str(r['seed']) for r in results)}: mean ± sd "
             f"over seeds. {first['final_samples']:,} sequences per model scored against the {c['heldout']:,} "
             f"held-out sequences (training set {c['train']:,}, length {c['seq_len']}, vocabulary {c['vocab_size']}).",
             "", "| Model | " + " | ".join(LABELS[m] for m in metrics) + " | paper |",
             "|---|" + "---|" * (len(metrics) + 1)]
    for model, row in table.items():
        cells = [mean_sd(row[m], 4) if m in row else "–" for m in metrics]
        published = ", ".join(f"{LABELS[k]} {v}" for k, v in paper.get(model, {}).items()) or "–"
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {published} |")
    main = TASKS[task]["main"]
    gaps = [s - m for s, m in zip(table["SeqGAN"][main]["values"], table["MLE"][main]["values"])]
    lines += ["", f"{LABELS[main]}, SeqGAN − MLE per seed: {', '.join(f'{g:+.4f}' for g in gaps)}"]
    return "\n".join(lines) + "\n"


def write_report(task: str, out_dir: str | Path, seeds: list[int]) -> dict:
    out_dir = Path(out_dir)
    results = [json.loads((out_dir / f"seed{seed}" / "final.json").read_text()) for seed in seeds]
    table = summarize(results)
    (out_dir / "table.md").write_text(markdown_table(task, table, results))
    (out_dir / "table.json").write_text(json.dumps({"task": task, "seeds": seeds, "table": table}, indent=1))
    return table


def run_experiment(task: str, preset: str, seeds: list[int], out_dir: str | Path, corpus_source: str | None = None,
                   device: str = "auto", log=print, **overrides) -> dict:
    if task not in TASKS:
        raise ValueError(f"unknown experiment {task!r}; choose one of {', '.join(TASKS)}")
    out_dir = Path(out_dir)
    for seed in seeds:
        run_seed(task, preset, seed, out_dir / f"seed{seed}", corpus_source, device, log, **overrides)
    return write_report(task, out_dir, seeds)
