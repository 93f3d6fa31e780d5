#!/usr/bin/env bash
# SynDenseHybrid on the sim world (no real negatives), and the Tab. 6.10 ablation of the flow's objective.
# Needs the data and the closed-set checkpoint of sim_real_negatives.sh (it renders/trains them if absent).
# Each step resumes if re-run. Run from the repository root with the project's venv (make venv).
set -euo pipefail
PY=${PY:-.venv/bin/python}
[ -f runs/sim_segmenter/checkpoints/step_0002000.pt ] || PY=$PY bash training/recipes/sim_real_negatives.sh
$PY -m densehybrid_training flow-pretrain --config config/train/sim_flow_pretrain.yaml
$PY -m densehybrid_training flow-eval --config config/train/sim_flow_pretrain.yaml --checkpoint runs/sim_flow/checkpoints/last.pt \
    --set data.root=data/sim_val --set data.split=val --out runs/sim_flow_eval > runs/sim_flow_eval.json
for variant in synthetic synthetic_detector; do
    $PY -m densehybrid_training finetune --config config/train/sim_finetune_$variant.yaml
    $PY -m densehybrid_training export --checkpoint runs/sim_finetune_$variant/checkpoints/last.pt --out runs/sim_$variant.safetensors \
        --input-size 512x256
    $PY -m densehybrid_training calibrate --weights runs/sim_$variant.safetensors --dataset sim:data/sim_val \
        --out runs/sim_${variant}_calibrated.safetensors
    $PY -m densehybrid_ros.evaluation.cli --weights runs/sim_${variant}_calibrated.safetensors --dataset sim:data/sim_test \
        --scores hybrid,generative,discriminative,msp,max_logit,entropy --out runs/eval_sim_${variant}_test --quiet
done
# like-for-like baseline: real negatives with the same 200-step budget
$PY -m densehybrid_training finetune --config config/train/sim_finetune_real.yaml --set steps=200 --set out=runs/sim_finetune_real_200
$PY -m densehybrid_training export --checkpoint runs/sim_finetune_real_200/checkpoints/last.pt --out runs/sim_real_200.safetensors \
    --input-size 512x256
$PY -m densehybrid_training calibrate --weights runs/sim_real_200.safetensors --dataset sim:data/sim_val \
    --out runs/sim_real_200_calibrated.safetensors
$PY -m densehybrid_ros.evaluation.cli --weights runs/sim_real_200_calibrated.safetensors --dataset sim:data/sim_test \
    --scores hybrid,generative,discriminative,msp,max_logit,entropy --out runs/eval_sim_real_200_test --quiet
