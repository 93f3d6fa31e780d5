#!/usr/bin/env bash
# SynDenseHybrid on the Detector-quality schedule (issue 14), after sim_detector_quality.sh has trained the closed-set
# model (runs/sim_segmenter_big): DenseFlow pretraining on the large train split, joint fine-tuning with synthetic
# negatives (no real negatives), the Tab. 6.11 controls (uniform noise, inlier crops) and the Tab. 6.10 ablation
# (L_mle + L_d + L_x) on the same budget; each exported, calibrated on val and evaluated on both test splits with the
# same scores as the real-negative model, at its network grid (768x384: files and evaluations named *_g768). Every
# step resumes or is skipped when its output exists; run from the repository root (make venv first).
set -euo pipefail
PY=${PY:-.venv/bin/python}
[ -f runs/sim_segmenter_big/checkpoints/step_0016000.pt ] || { echo "closed-set run not finished" >&2; exit 1; }
$PY -m densehybrid_training flow-pretrain --config config/train/sim_flow_pretrain_big.yaml
[ -f runs/sim_flow_big_eval.json ] || $PY -m densehybrid_training flow-eval \
    --config config/train/sim_flow_pretrain_big.yaml \
    --checkpoint runs/sim_flow_big/checkpoints/last.pt --set data.root=data/sim_val_big --set data.split=val \
    --out runs/sim_flow_big_eval > runs/sim_flow_big_eval.json
# Baselines at the bundled model's network grid (768x384, chosen on val: sim_detector_quality.sh): the closed-set
# model's max-logit, energy and MSP, which SynDenseHybrid must beat.
[ -f runs/sim_closed_big_g768.safetensors ] || $PY -m densehybrid_training export \
    --checkpoint runs/sim_segmenter_big/checkpoints/step_0016000.pt --out runs/sim_closed_big_g768.safetensors \
    --input-size 768x384
for t in sim_test_big sim_test_big_b; do
  [ -f runs/eval_closed_big_g768_$t/metrics.json ] || $PY -m densehybrid_ros.evaluation.cli \
      --weights runs/sim_closed_big_g768.safetensors --dataset sim:data/$t --scores max_logit,energy,msp \
      --out runs/eval_closed_big_g768_$t --quiet
done
# Which way of drawing the flow's negatives the full runs take is chosen on val (the pilots; the configs hold the
# choice), then the SynDenseHybrid run, the Tab. 6.11 controls and the Tab. 6.10 ablation on the full budget (5,400
# steps, half the bundled real-negative model's 10,800).
training/recipes/sim_synthetic_pilots.sh
for name in sim_synthetic_big{,_uniform,_inlier_crops,_detector}; do
  $PY -m densehybrid_training finetune --config config/train/$name.yaml
  if [ -f runs/$name/joint_diagnostics.csv ]; then  # the acceptance plot: JSD-to-uniform on samples vs inliers
    $PY -m densehybrid_training joint-curves --run runs/$name --out runs/${name}_diagnostics.png
  fi
  w=runs/${name}_g768
  [ -f $w.safetensors ] || $PY -m densehybrid_training export --checkpoint runs/$name/checkpoints/last.pt \
      --out $w.safetensors --input-size 768x384
  [ -f ${w}_calibrated.safetensors ] || $PY -m densehybrid_training calibrate --weights $w.safetensors \
      --dataset sim:data/sim_val_big --out ${w}_calibrated.safetensors
  for t in sim_test_big sim_test_big_b; do
    [ -f runs/eval_${name}_g768_$t/metrics.json ] || $PY -m densehybrid_ros.evaluation.cli \
        --weights ${w}_calibrated.safetensors --dataset sim:data/$t \
        --scores hybrid,generative,discriminative,max_logit,energy,msp --out runs/eval_${name}_g768_$t --quiet
  done
done
# The bundled real-negative model on both test splits (the 60% target), then the acceptance comparisons.
for t in sim_test_big sim_test_big_b; do
  [ -f runs/eval_bundled_real_$t/metrics.json ] || $PY -m densehybrid_ros.evaluation.cli \
      --weights models/densehybrid_sim.safetensors --dataset sim:data/$t \
      --scores hybrid,generative,discriminative,max_logit,energy,msp --out runs/eval_bundled_real_$t --quiet
done
training/recipes/sim_synthetic_compare.sh
