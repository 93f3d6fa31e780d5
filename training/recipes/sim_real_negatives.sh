#!/usr/bin/env bash
# The sim-world DenseHybrid model with real negatives, end to end (each step resumes if re-run):
# render -> closed-set training -> fine-tuning with the train-negatives pool -> export -> calibrate on val
# -> evaluate on test. Run from the repository root with the project's venv on PATH (make venv).
set -euo pipefail
PY=${PY:-.venv/bin/python}
[ -f data/sim_train/manifest.json ] || $PY -m densehybrid_ros.sim render --out data/sim_train --split train --frames 2400 --seed 1 --size 512x256
[ -f data/sim_val/manifest.json ] || $PY -m densehybrid_ros.sim render --out data/sim_val --split val --frames 240 --seed 2 --size 512x256
[ -f data/sim_test/manifest.json ] || $PY -m densehybrid_ros.sim render --out data/sim_test --split test --frames 240 --seed 3 --size 512x256
$PY -m densehybrid_training segmenter --config config/train/sim_segmenter.yaml
$PY -m densehybrid_training finetune --config config/train/sim_finetune_real.yaml
$PY -m densehybrid_training export --checkpoint runs/sim_finetune_real/checkpoints/last.pt --out runs/sim_real.safetensors --input-size 512x256
$PY -m densehybrid_training calibrate --weights runs/sim_real.safetensors --dataset sim:data/sim_val --out runs/sim_real_calibrated.safetensors
$PY -m densehybrid_ros.evaluation.cli --weights runs/sim_real_calibrated.safetensors --dataset sim:data/sim_test \
    --scores hybrid,generative,discriminative,msp,max_logit,entropy --out runs/eval_sim_real_test --quiet
