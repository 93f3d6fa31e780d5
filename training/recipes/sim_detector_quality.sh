#!/usr/bin/env bash
# The Detector-quality schedule (issue 13): large sim splits over many streets, closed-set training to
# convergence, fine-tuning with real negatives, export, calibration on val, evaluation with street-grouped
# intervals on two test seeds. Every step resumes or is skipped when its output exists, so the schedule can
# run in pieces: re-run this script after an interruption. Run from the repository root (make venv first).
#   Streets: train 12,000 frames x 24 per street = 500 streets (seed 11); val 1,200 x 10 = 120 streets (seed 12);
#   test A 1,200 x 10 = 120 streets (seed 13); test B the same with seed 14. Anomaly pools are disjoint by split.
set -euo pipefail
PY=${PY:-.venv/bin/python}
render() {  # out split frames seed per-street [extra render options]
  [ -f "$1/manifest.json" ] || $PY -m densehybrid_ros.sim render --out "$1" --split "$2" --frames "$3" --seed "$4" \
      --size 512x256 --frames-per-scene "$5" "${@:6}"
}
VAL_SCORES=hybrid,max_logit,energy
TEST_SCORES=hybrid,generative,discriminative,max_logit,energy,msp
export_calibrated() {  # run-dir weights-stem grid [default point]: node weights at the grid, then calibrated on val
  [ -f $2.safetensors ] || $PY -m densehybrid_training export --checkpoint $1/checkpoints/last.pt \
      --out $2.safetensors --input-size $3
  [ -f ${2}_calibrated.safetensors ] || $PY -m densehybrid_training calibrate --weights $2.safetensors \
      --dataset sim:data/sim_val_big --out ${2}_calibrated.safetensors --default-point ${4:-fpr1}
}
evaluate() {  # weights-stem dataset out scores
  [ -f $3/metrics.json ] || $PY -m densehybrid_ros.evaluation.cli --weights $1.safetensors --dataset sim:data/$2 \
      --scores $4 --out $3 --quiet
}
continued_stage() {  # NAME [default point]: config/train/sim_finetune_real_NAME.yaml, its 768x384 weights calibrated
  # on val, evaluated on val (runs/eval_val_sim_real_NAME) and both test splits (runs/eval_real_NAME_<split>)
  $PY -m densehybrid_training finetune --config config/train/sim_finetune_real_$1.yaml
  local w=runs/sim_real_$1_g768
  export_calibrated runs/sim_finetune_real_$1 $w 768x384 ${2:-fpr1}
  evaluate ${w}_calibrated sim_val_big runs/eval_val_sim_real_$1 $VAL_SCORES
  for t in sim_test_big sim_test_big_b; do
    evaluate ${w}_calibrated $t runs/eval_real_$1_$t $TEST_SCORES
  done
}
render data/sim_train_big train 12000 11 24
render data/sim_val_big val 1200 12 10
render data/sim_test_big test 1200 13 10
render data/sim_test_big_b test 1200 14 10
$PY -m densehybrid_training segmenter --config config/train/sim_segmenter_big.yaml
# Fine-tuning with real negatives, 2,400 steps: an earlier bundle; the grid and the fine-tuning length were
# chosen on val from it.
$PY -m densehybrid_training finetune --config config/train/sim_finetune_real_big.yaml --set steps=2400 \
    --set out=runs/sim_finetune_real_big_m8
# The network grid, chosen on val: the same weights exported at 1x, 1.5x and 2x the camera's 512x256, each calibrated
# and evaluated on val (densehybrid-eval on sim:data/sim_val_big). Measured: hybrid AP / FPR95 / mIoU 47.9 / 4.8 /
# 77.3 at 512x256, 55.3 / 3.1 / 77.8 at 768x384 (inside the training scale range 0.75-1.5), 53.9 / 3.3 / 72.7 at
# 1024x512. The bundled model is the 768x384 one; the test splits are evaluated for it and, for comparison, at 512x256.
for grid in 512x256 768x384 1024x512; do
  tag=$([ $grid = 512x256 ] && echo "" || echo _g${grid%x*})
  w=runs/sim_real_big_m8$tag
  export_calibrated runs/sim_finetune_real_big_m8 $w $grid
  evaluate ${w}_calibrated sim_val_big runs/eval_val_$(basename $w)_calibrated $VAL_SCORES
done
# The previous bundle: the same fine-tuning for 4,800 steps (the config's default; val hybrid AP / FPR95 / mIoU
# 61.9 / 2.7 / 79.3 against 2,400 steps' 55.3 / 3.1 / 77.8), exported at the 768x384 grid chosen above.
$PY -m densehybrid_training finetune --config config/train/sim_finetune_real_big.yaml
w=runs/sim_real_big_m8_long_g768
export_calibrated runs/sim_finetune_real_big_m8_long $w 768x384
evaluate ${w}_calibrated sim_val_big runs/eval_val_$(basename $w)_calibrated $VAL_SCORES
for w in sim_real_big_m8 sim_real_big_m8_g768 sim_real_big_m8_long_g768; do
  for t in sim_test_big sim_test_big_b; do
    evaluate runs/${w}_calibrated $t runs/eval_${w#sim_}_$t $TEST_SCORES
  done
done
# The bundled model: the 4,800-step fine-tuning continued for 1,600 steps on renders whose camera passes vehicles
# parked at its own kerb as a driving camera does (`--camera-clearance path`; the same seeds and streets). The `lane`
# renders above keep such vehicles out of the 25 m ahead, and the false obstacles on the val bags sat on them.
# Chosen on the 13 val bags (seeds 21-33; detection within 30 m 0.649 vs 0.631 at 0.39 vs 0.45 false obstacles per
# frame) and val pixels (see the README). Calibrated on the same `lane` val split as before; the `path` val split
# feeds the run's validation curve and a second val measurement.
render data/sim_train_big_path train 12000 11 24 --camera-clearance path
render data/sim_val_big_path val 1200 12 10 --camera-clearance path
$PY -m densehybrid_training finetune --config config/train/sim_finetune_real_path.yaml
w=runs/sim_real_path_g768
export_calibrated runs/sim_finetune_real_path $w 768x384
for d in sim_val_big sim_val_big_path; do
  evaluate ${w}_calibrated $d runs/eval_$(basename $w)_$d $VAL_SCORES
done
for t in sim_test_big sim_test_big_b; do
  evaluate ${w}_calibrated $t runs/eval_real_path_g768_$t $TEST_SCORES
done
# A later bundle: the `path` stage continued for another 1,600 steps with seed 2. Chosen on val (hybrid AP 66.7 vs
# 61.6, FPR95 2.10 vs 2.23; 13 val bags 0.664 vs 0.649 detection within 30 m at 0.39 false obstacles per frame each).
continued_stage path2
# The previous bundle: the second `path` stage continued 1,600 steps with negatives pasted as far anomalies look (two
# per image, log-uniform sides 12-160 px, half standing on road or sidewalk; seed 3). Chosen on val (hybrid AP 71.9
# vs 66.7, FPR95 1.34 vs 2.10). Its node default is the fpr05 point (0.5% of val inlier pixels), chosen on the 13 val
# bags as the calibrated point with the most detections within 30 m at <= 0.3 false obstacles per frame: fpr05
# 0.694 at 0.19, fpr1 0.735 at 0.42 (the model before at its fpr1: 0.656 at 0.29). Calibration also chooses the class
# bias of the closed-set decision (b = -tau ln w_enet, tau by val mIoU: 0.8, mIoU 79.99 -> 82.39; the anomaly scores
# and thresholds are unchanged).
continued_stage path3_paste fpr05
# The bundled model: that stage continued 1,200 steps with repeat-factor sampling (images showing a class that fewer
# than half of the images show drawn up to 2.7x as often; rider ~1.8x; seed 4). Chosen on val against the previous
# bundle (both with their class bias): hybrid AP 78.75 vs 71.88, FPR95 1.01 vs 1.34, mIoU 83.73 vs 82.39, rider 52.1
# vs 43.9; 13 val bags at fpr05 0.722 vs 0.700 detection within 30 m at 0.29 vs 0.20 false obstacles per frame
# (still <= 0.3, so fpr05 stays the default). Class bias tau 1.0 (val mIoU 80.36 plain -> 83.73), then per-class
# offsets (calibration's default, `--class-bias auto`): fitted on either half of the val streets they raised the
# other half's mIoU by 1.10 and 0.62 points, so they were kept (val mIoU 84.66, rider 52.1 -> 60.8; the bundled model).
continued_stage path4_rfs fpr05
