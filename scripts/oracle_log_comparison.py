"""NLL-oracle over the adversarial iterations (or MLE epochs) of `seqgan oracle run` seed folders, beside the
original code's log.

The original (LantaoYu/SeqGAN's save/experiment-log.txt) evaluates after training its epoch k (MLE) and before
the discriminator rounds of its iteration k (adversarial), so its epoch k follows k + 1 MLE epochs or generator
steps, as ours does after k + 1. Prints a markdown table, one column per run folder given, and each run's last
value.

    python scripts/oracle_log_comparison.py results/oracle-paper/seed1 results/oracle-paper-tf1/seed1 \
        [--phase mle] [--log ../shared/seqgan-reference/experiment-log.txt]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


PHASES = {"adversarial": ("adversarial iterations", "iterations"), "mle": ("MLE epochs", "epochs")}


def original_log(path: Path, phase: str = "adversarial") -> dict[int, float]:
    """{epoch: NLL-oracle} of the adversarial or the MLE ("pre-training") part of the original's log."""
    values, in_phase = {}, False
    for line in path.read_text().splitlines():
        if line.startswith(("adversarial", "pre-training")):
            in_phase = line.startswith("adversarial") == (phase == "adversarial")
        elif in_phase and line.startswith("epoch"):
            _, epoch, _, value = line.split()
            values[int(epoch)] = float(value)
    return values


def ours(seed_dir: Path, phase: str = "adversarial") -> dict[int, float]:
    """{adversarial iteration or MLE epoch: NLL-oracle} of a seed folder's SeqGAN run."""
    values = {}
    for line in (seed_dir / "seqgan" / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("phase") == phase and "nll_oracle" in event:
            values[event["step"]] = event["nll_oracle"]
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="seed folders of `seqgan oracle run`")
    default_log = Path(__file__).resolve().parents[2] / "shared" / "seqgan-reference" / "experiment-log.txt"
    parser.add_argument("--log", type=Path, default=default_log)
    parser.add_argument("--phase", choices=PHASES, default="adversarial")
    args = parser.parse_args()
    title, unit = PHASES[args.phase]
    log = original_log(args.log, args.phase)
    runs = {str(run): ours(run, args.phase) for run in args.runs}
    steps = sorted(set().union(*runs.values()))
    print(f"| {title} | " + " | ".join(f"`{name}`" for name in runs)
          + f" | the original code's log (epoch = {unit} − 1) |")
    print("|---" * (len(runs) + 2) + "|")
    for step in steps:
        cells = [f"{values[step]:.3f}" if step in values else "–" for values in runs.values()]
        original = f"{log[step - 1]:.3f}" if step - 1 in log else "–"
        print(f"| {step} | " + " | ".join(cells) + f" | {original} |")
    for name, values in runs.items():
        if values:
            last = max(values)
            print(f"\n{name}: {values[last]:.3f} after {last} {unit}")


if __name__ == "__main__":
    main()
