"""Beyond the paper, measured on the synthetic-oracle task: training stability and long sequences.

stability   Per seed: one MLE generator, one pre-trained discriminator, then the adversarial phase once per
            variant, every variant starting from the same state (G, D, optimizers, RNG), so the comparison is
            paired:
              plain        the paper's algorithm (reward = the classifier's P(real), no baseline)
              baseline     the batch-mean reward at each step subtracted
              norm         the rewards standardised at each step over the batch (mean 0, sd 1)
              wasserstein  a WGAN-GP critic instead of the classifier (its own discriminator pre-training from
                           the same MLE generator), its score as the reward, with the mean baseline (a critic's
                           scores have no fixed zero, so without a baseline every reward could be negative)
lengths     MLE and SeqGAN (plain) at several sequence lengths of the same oracle (an LSTM oracle generates
            any length); the MLE - SeqGAN gap in NLL-oracle at each length, and the share of MLE's excess over
            the oracle's own NLL that SeqGAN removes.

Is a gain bought by narrowing the generator? The stability report also samples each seed's MLE generator at
temperatures below 1 (``TEMPERATURES``), which trades coverage for quality with no training at all, and places
every variant on that quality-coverage plane (NLL-oracle against NLL-test): a variant on the MLE temperature
curve gained nothing that sharpening MLE would not give.

Every run is an ordinary run directory and a study is resumable: finished runs are kept, an unfinished one
continues from its latest checkpoint. Layout: ``<out>/L<length>/seed<s>/{mle, dpre-classifier, dpre-wasserstein,
<variant>}``. Evaluations of the adversarial runs carry diversity as well as quality (``oracle_evaluator``).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from .checkpoint import generator_from_bundle, load_bundle
from .corpus import read_token_file
from .errors import InputError
from .oracle_experiment import oracle_task
from .metrics import diversity, mean_sd, over_seeds
from .oracle import PAPER_SEQ_LEN, PAPER_VOCAB, load_oracle, nll_under, oracle_evaluator
from .runs import RunDir
from .train import TrainConfig, Trainer, resolve_d_scale, resolve_device, run_to_end

VARIANTS = {
    "plain": {},
    "baseline": {"baseline": "mean"},
    "norm": {"reward_norm": "std"},
    "wasserstein": {"critic": "wasserstein", "baseline": "mean"},
}
# What the cpu presets reduce, relative to the paper's schedule (TrainConfig defaults, as the ``paper`` presets).
_CPU = dict(num_train=5_000, mle_epochs=30, d_pretrain_rounds=10, num_negatives=2_000, d_steps=1,
            eval_samples=1_000, eval_every=3, d_scale=0.25)  # d_scale: the paper's widths that fit, its maps x 0.25
PRESETS = {  # preset -> study -> settings, as realdata.PRESETS (preset -> task -> settings)
    "paper": {"stability": dict(num_train=10_000), "lengths": dict(num_train=10_000)},
    "cpu": {"stability": dict(_CPU, adv_iters=30, rollouts=16), "lengths": dict(_CPU, adv_iters=20, rollouts=8)},
}
METRICS = ("nll_oracle", "nll_test", "self_bleu4", "distinct2")
TEMPERATURES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
PER_ITERATION = ("d_acc", "reward_mean")


def study_config(study: str, preset: str, seed: int, seq_len: int, device: str = "auto",
                 **overrides) -> tuple[TrainConfig, int]:
    settings = resolve_d_scale({**PRESETS[preset][study], **overrides}, seq_len)
    num_train = settings.pop("num_train")
    config = TrainConfig(vocab_size=PAPER_VOCAB, seq_len=seq_len, seed=seed, device=device, **settings)
    return config.validate(), num_train


def _train(config: TrainConfig, data, heldout, run: RunDir, evaluator, start: RunDir | None, log,
           label: str) -> None:
    """Run ``config`` into ``run`` (``run_to_end``); a new run first takes all of ``start``'s last state, so that
    the branch continues exactly."""
    trainer = Trainer(config, data, run, evaluator, kind="oracle", extra={"oracle": "../oracle.pt"}, heldout=heldout)
    run_to_end(trainer, None if start is None else lambda t: t.restore(load_bundle(start.checkpoint("latest"))),
               log, label)


def run_seed(study: str, preset: str, seed: int, seq_len: int, variants: list[str], out_dir: Path,
             oracle_params: str | None = None, device: str = "auto", log=print, **overrides) -> Path:
    """Train MLE, the discriminator(s) and every variant for one seed and length into ``out_dir/L<len>/seed<s>``."""
    config, num_train = study_config(study, preset, seed, seq_len, device, **overrides)
    seed_dir = Path(out_dir) / f"L{seq_len}" / f"seed{seed}"
    oracle, train, heldout = oracle_task(seed_dir, seed, num_train, seq_len, oracle_params)
    on = resolve_device(config.device)
    evaluator = oracle_evaluator(oracle.to(on), config.eval_samples, seq_len, heldout.to(on))
    meta = {"study": study, "preset": preset, "seed": seed, "seq_len": seq_len, "config": config.to_dict(),
            "oracle_self_nll": nll_under(oracle, heldout)}
    (seed_dir / "seed.json").write_text(json.dumps(meta, indent=1))

    label = f"[L{seq_len} seed {seed}]"
    mle = RunDir(seed_dir / "mle")
    _train(replace(config, d_pretrain_rounds=0, adv_iters=0), train, heldout, mle, evaluator, None, log, f"{label} mle")
    for variant in variants:
        settings = VARIANTS[variant]
        critic = settings.get("critic", "classifier")
        pretrained = RunDir(seed_dir / f"dpre-{critic}")
        _train(replace(config, critic=critic, adv_iters=0), train, heldout, pretrained, evaluator, mle, log,
               f"{label} discriminator ({critic})")
        _train(replace(config, **settings), train, heldout, RunDir(seed_dir / variant), evaluator, pretrained, log,
               f"{label} {variant}")
    return seed_dir


# ----- reading the runs back -----------------------------------------------------------------------------------
def adversarial_curves(seed_dir: Path, variant: str) -> dict:
    """{metric: [(adversarial iteration, value)]}; iteration 0 is the MLE generator's last evaluation."""
    mle_events = [e for e in RunDir(seed_dir / "mle").events() if "nll_oracle" in e]
    curves = {m: [(0, mle_events[-1][m])] for m in METRICS if m in mle_events[-1]}
    for e in RunDir(seed_dir / variant).events():
        if e.get("phase") != "adversarial":
            continue
        for m in METRICS + PER_ITERATION:
            if m in e:
                curves.setdefault(m, []).append((e["step"], e[m]))
    return curves


def _band(series: list[list[tuple[int, float]]]):
    """Steps, means and sds over seeds of curves evaluated at the same steps (cut to the shortest)."""
    length = min(len(s) for s in series)
    steps = [p[0] for p in series[0][:length]]
    columns = [[s[i][1] for s in series] for i in range(length)]
    return steps, [statistics.fmean(c) for c in columns], [statistics.stdev(c) if len(c) > 1 else 0.0
                                                           for c in columns]


@torch.no_grad()
def temperature_curve(seed_dir: Path, temperatures=TEMPERATURES, num_samples: int | None = None) -> list[dict]:
    """The seed's MLE generator sampled at each temperature: NLL-oracle of its samples, NLL-test of the held-out
    set under the tempered model, Self-BLEU-4 of 500 samples (the evaluator's sizes and seed)."""
    meta = json.loads((seed_dir / "seed.json").read_text())
    config = meta["config"]
    oracle = load_oracle(str(seed_dir / "oracle.pt"))
    heldout = read_token_file(seed_dir / "heldout.txt", config["vocab_size"])
    G = generator_from_bundle(load_bundle(RunDir(seed_dir / "mle").checkpoint("mle")))
    points = []
    for temperature in temperatures:
        rng = torch.Generator().manual_seed(config["seed"])
        samples = G.sample(num_samples or config["eval_samples"], config["seq_len"], temperature=temperature,
                           generator=rng)
        points.append({"temperature": temperature, "nll_oracle": nll_under(oracle, samples),
                       "nll_test": nll_under(G, heldout, temperature=temperature),
                       "self_bleu4": diversity(samples[:500].tolist())["self_bleu4"]})
    return points


def stability_summary(out_dir: Path, seeds: list[int], variants: list[str], seq_len: int = PAPER_SEQ_LEN) -> dict:
    """Per variant: final, best and rise (final - best) of NLL-oracle, final NLL-test and diversity, and the
    curves of every seed."""
    summary = {}
    for variant in variants:
        curves = [adversarial_curves(Path(out_dir) / f"L{seq_len}" / f"seed{s}", variant) for s in seeds]
        oracle = [[v for _, v in c["nll_oracle"]] for c in curves]
        row = {"nll_oracle": over_seeds([o[-1] for o in oracle]),
               "best": over_seeds([min(o) for o in oracle]),
               "rise": over_seeds([o[-1] - min(o) for o in oracle]),
               "gain": over_seeds([o[0] - o[-1] for o in oracle])}
        for m in ("nll_test", "self_bleu4", "distinct2"):
            if all(m in c for c in curves):
                row[m] = over_seeds([c[m][-1][1] for c in curves])
        summary[variant] = {"final": row, "curves": curves}
    return summary


def lengths_summary(out_dir: Path, seeds: list[int], lengths: list[int]) -> dict:
    """Per length: MLE's and SeqGAN's final NLL-oracle, the gap, and the share of MLE's excess removed, over the
    seeds whose run at that length has finished (lengths with none are left out)."""
    summary = {}
    for length in lengths:
        rows = []
        done = [s for s in seeds if RunDir(Path(out_dir) / f"L{length}" / f"seed{s}" / "plain").finished()]
        for seed in done:
            seed_dir = Path(out_dir) / f"L{length}" / f"seed{seed}"
            meta = json.loads((seed_dir / "seed.json").read_text())
            curves = adversarial_curves(seed_dir, "plain")
            mle, seqgan = curves["nll_oracle"][0][1], curves["nll_oracle"][-1][1]
            floor = meta["oracle_self_nll"]
            rows.append({"mle": mle, "seqgan": seqgan, "gap": mle - seqgan, "oracle": floor,
                         "share": (mle - seqgan) / (mle - floor) if mle > floor else float("nan"),
                         "nll_test_mle": curves["nll_test"][0][1], "nll_test_seqgan": curves["nll_test"][-1][1],
                         "curves": curves})
        if not rows:
            continue
        summary[length] = {key: over_seeds([r[key] for r in rows])
                           for key in ("mle", "seqgan", "gap", "oracle", "share", "nll_test_mle", "nll_test_seqgan")}
        summary[length].update(seeds=done, curves=[r["curves"] for r in rows])
    return summary


def temperature_summary(out_dir: Path, seeds: list[int], seq_len: int = PAPER_SEQ_LEN) -> list[dict]:
    """``temperature_curve`` of every seed, as mean ± sd per temperature."""
    curves = [temperature_curve(Path(out_dir) / f"L{seq_len}" / f"seed{s}") for s in seeds]
    return [{"temperature": points[0]["temperature"],
             **{m: over_seeds([p[m] for p in points]) for m in ("nll_oracle", "nll_test", "self_bleu4")}}
            for points in zip(*curves)]


def temperature_markdown(rows: list[dict]) -> str:
    lines = ["MLE generator sampled at lower temperatures (no training): quality and coverage traded against each "
             "other by sharpening alone. Each temperature's NLL-oracle is of its own fresh samples, so the row at "
             "temperature 1 differs from the MLE figure above (another draw of the same size) by sampling noise "
             "alone.", "",
             "| MLE at temperature | NLL-oracle | NLL-test | Self-BLEU-4 |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['temperature']:g} | {mean_sd(row['nll_oracle'])} | {mean_sd(row['nll_test'])} | "
                     f"{mean_sd(row['self_bleu4'])} |")
    return "\n".join(lines) + "\n"


def plot_quality_coverage(summary: dict, temperatures: list[dict], path: Path, title: str) -> None:
    """NLL-oracle (quality) against NLL-test (coverage): the MLE temperature curve and each variant's end point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    xs = [r["nll_oracle"]["mean"] for r in temperatures]
    ys = [r["nll_test"]["mean"] for r in temperatures]
    ax.plot(xs, ys, color="grey", marker="o", label="MLE at temperature τ")
    for row, x, y in zip(temperatures, xs, ys):
        ax.annotate(f"τ={row['temperature']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for variant, entry in summary.items():
        f = entry["final"]
        if "nll_test" in f:
            ax.errorbar(f["nll_oracle"]["mean"], f["nll_test"]["mean"], xerr=f["nll_oracle"]["sd"],
                        yerr=f["nll_test"]["sd"], marker="s", capsize=3, linestyle="none", label=variant)
    ax.set_xlabel("NLL-oracle (quality; lower is better)")
    ax.set_ylabel("NLL-test (coverage; lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stability_markdown(summary: dict, preset: str, seeds: list[int]) -> str:
    lines = [f"Preset `{preset}`, seeds {', '.join(map(str, seeds))}: mean ± sd over seeds, at the end of the "
             "adversarial phase. gain: MLE − final NLL-oracle (higher is better); rise: final − best NLL-oracle "
             "during the phase (0 = never got worse).", "",
             "| Variant | NLL-oracle | gain over MLE | rise from best | NLL-test | Self-BLEU-4 | distinct-2 |",
             "|---|---|---|---|---|---|---|"]
    for variant, entry in summary.items():
        f = entry["final"]
        cells = [mean_sd(f["nll_oracle"]), mean_sd(f["gain"]), mean_sd(f["rise"])]
        cells += [mean_sd(f[m]) if m in f else "–" for m in ("nll_test", "self_bleu4", "distinct2")]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def lengths_markdown(summary: dict, preset: str) -> str:
    lines = [f"Preset `{preset}`: mean ± sd over the seeds listed. NLL-oracle per token; "
             "oracle: the oracle's NLL of its own held-out samples (the floor); share: gap / (MLE − oracle).", "",
             "| Length | seeds | MLE | SeqGAN | gap MLE − SeqGAN | share of MLE's excess removed | oracle | "
             "NLL-test MLE → SeqGAN |", "|---|---|---|---|---|---|---|---|"]
    for length, row in summary.items():
        lines.append(f"| {length} | {', '.join(map(str, row['seeds']))} | {mean_sd(row['mle'])} | "
                     f"{mean_sd(row['seqgan'])} | {mean_sd(row['gap'])} | {mean_sd(row['share'], 2)} | "
                     f"{row['oracle']['mean']:.3f} | "
                     f"{row['nll_test_mle']['mean']:.3f} → {row['nll_test_seqgan']['mean']:.3f} |")
    return "\n".join(lines) + "\n"


def _plot_bands(ax, series_by_label: dict, metric: str) -> None:
    for label, series in series_by_label.items():
        series = [s[metric] for s in series if metric in s]
        if not series:
            continue
        steps, means, sds = _band(series)
        ax.plot(steps, means, label=label, marker="." if len(steps) < 40 else None)
        ax.fill_between(steps, [m - s for m, s in zip(means, sds)], [m + s for m, s in zip(means, sds)], alpha=0.2)


def plot_stability(summary: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("nll_oracle", "NLL-oracle (quality, lower is better)"),
              ("nll_test", "NLL-test (coverage, lower is better)"),
              ("self_bleu4", "Self-BLEU-4 (lower = more diverse)"), ("d_acc", "discriminator accuracy")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    by_label = {variant: entry["curves"] for variant, entry in summary.items()}
    for ax, (metric, label) in zip(axes.flat, panels):
        _plot_bands(ax, by_label, metric)
        ax.set_xlabel("adversarial iteration (0 = the MLE generator)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lengths(summary: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    lengths = list(summary)
    axes[0].errorbar(lengths, [summary[n]["gap"]["mean"] for n in lengths],
                     yerr=[summary[n]["gap"]["sd"] for n in lengths], marker="o", capsize=4)
    axes[0].axhline(0, color="grey", linewidth=1)
    axes[0].set_xticks(lengths)
    axes[0].set_xlabel("sequence length")
    axes[0].set_ylabel("NLL-oracle gap, MLE − SeqGAN (higher = SeqGAN better)")
    _plot_bands(axes[1], {f"length {n}": summary[n]["curves"] for n in lengths}, "nll_oracle")
    axes[1].set_xlabel("adversarial iteration (0 = the MLE generator)")
    axes[1].set_ylabel("NLL-oracle per token")
    axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_stability_report(out_dir: str | Path, preset: str, seeds: list[int], variants: list[str]) -> dict:
    out_dir = Path(out_dir)
    for seed in seeds:
        for run in ["mle", *variants]:
            folder = out_dir / f"L{PAPER_SEQ_LEN}" / f"seed{seed}" / run
            if not RunDir(folder).finished():
                raise InputError(folder, f"no finished run here: the report needs every variant of every seed "
                                         f"(`seqgan study stability --seeds {seed} --out {out_dir}` makes them)")
    summary = stability_summary(out_dir, seeds, variants)
    temperatures = temperature_summary(out_dir, seeds)
    (out_dir / "stability.md").write_text(stability_markdown(summary, preset, seeds) + "\n"
                                          + temperature_markdown(temperatures))
    finals = {variant: entry["final"] for variant, entry in summary.items()}
    (out_dir / "stability.json").write_text(json.dumps({"preset": preset, "seeds": seeds, "summary": finals,
                                                        "mle_temperatures": temperatures}, indent=1))
    what = f"oracle task, preset {preset}, mean ± sd of {len(seeds)} seed(s)"
    plot_stability(summary, out_dir / "stability.png", f"Adversarial training variants, {what}")
    plot_quality_coverage(summary, temperatures, out_dir / "quality-coverage.png",
                          f"Quality against coverage, {what}")
    return summary


def write_lengths_report(out_dir: str | Path, preset: str, seeds: list[int], lengths: list[int]) -> dict:
    out_dir = Path(out_dir)
    summary = lengths_summary(out_dir, seeds, lengths)
    if not summary:
        raise InputError(out_dir, f"no finished runs of lengths {', '.join(map(str, lengths))} for seeds "
                                  f"{', '.join(map(str, seeds))} (`seqgan study lengths` makes them)")
    (out_dir / "lengths.md").write_text(lengths_markdown(summary, preset))
    (out_dir / "lengths.json").write_text(json.dumps({"preset": preset, "seeds": seeds,
                                                      "summary": {n: {k: v for k, v in row.items() if k != "curves"}
                                                                  for n, row in summary.items()}}, indent=1))
    plot_lengths(summary, out_dir / "lengths.png",
                 f"SeqGAN against MLE by sequence length, preset {preset} (seeds per length: lengths.md)")
    return summary


def run_stability(preset: str, seeds: list[int], out_dir: str | Path, variants: list[str] | None = None,
                  oracle_params: str | None = None, device: str = "auto", log=print, **overrides) -> dict:
    variants = list(variants or VARIANTS)
    for seed in seeds:
        run_seed("stability", preset, seed, PAPER_SEQ_LEN, variants, Path(out_dir), oracle_params, device, log,
                 **overrides)
    return write_stability_report(out_dir, preset, seeds, variants)


def run_lengths(preset: str, seeds: list[int], out_dir: str | Path, lengths: list[int] = (20, 40, 80),
                oracle_params: str | None = None, device: str = "auto", log=print, **overrides) -> dict:
    for length in lengths:
        for seed in seeds:
            run_seed("lengths", preset, seed, length, ["plain"], Path(out_dir), oracle_params, device, log,
                     **overrides)
    return write_lengths_report(out_dir, preset, seeds, list(lengths))
