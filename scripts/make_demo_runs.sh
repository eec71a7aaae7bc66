#!/usr/bin/env bash
# Remakes the pretrained demo runs the app opens on first launch (data/demo/poems, data/demo/melodies):
# SeqGAN (and its MLE baseline) trained on the built-in corpora, exported with generator-only checkpoints.
# About 5-10 minutes on one CPU core. Usage: bash scripts/make_demo_runs.sh
# data/demo is replaced only once both runs are exported: an interrupted remake leaves it as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
work=runs/make-demo
rm -rf "$work"
# the quarter-size discriminator of the cpu presets: train.paper_discriminator(20, 0.25)
small_d="--d-filter-sizes 1 2 3 4 5 6 7 8 9 10 15 20 --d-num-filters 25 50 50 50 50 25 25 25 25 25 40 40"
schedule="--mle-epochs 20 --d-pretrain-rounds 5 --num-negatives 2000 --adv-iters 10 --d-steps 1 --eval-every 5"
# shellcheck disable=SC2086
seqgan --threads 1 train --corpus builtin:poems --vocab-size 2000 --run-dir "$work/poems" $schedule $small_d \
    --eval-samples 1000 --seed 1 --quiet
# shellcheck disable=SC2086
seqgan --threads 1 train --corpus builtin:melodies --run-dir "$work/melodies" $schedule $small_d \
    --eval-samples 1000 --seed 1 --quiet
seqgan export --run-dir "$work/poems" --out "$work/demo/poems"
seqgan export --run-dir "$work/melodies" --out "$work/demo/melodies"
rm -rf data/demo.old
if [ -d data/demo ]; then mv data/demo data/demo.old; fi
mv "$work/demo" data/demo
rm -rf data/demo.old
du -sh data/demo/*
