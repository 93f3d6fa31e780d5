#!/usr/bin/env bash
# The acceptance comparisons of issue 14, after sim_synthetic_big.sh has evaluated its runs: on both test splits,
# paired bootstrap intervals (python -m densehybrid_ros.evaluation.compare: one draw of streets for both sides) of
# SynDenseHybrid's hybrid score minus
#   - the closed-set model's max-logit and energy (no negatives at all),
#   - the hybrid score of each Tab. 6.11 control (uniform noise, inlier crops) and of the Tab. 6.10 ablation
#     (L_mle + L_d + L_x instead of L_mle + L_jsd),
#   - its own components (generative, discriminative; the same evaluation on both sides),
# and the bundled real-negative model's hybrid AP beside it (the target: >= 60% of it). Tables are printed and
# written to runs/compare_<split>/*.json. Run from the repository root.
set -euo pipefail
PY=${PY:-.venv/bin/python}
syn=runs/eval_sim_synthetic_big_g768
compare() {  # split out-name A B scores
  echo "== $2: $3 vs $4"
  $PY -m densehybrid_ros.evaluation.compare "$3" "$4" --scores "$5" --json runs/compare_$1/$2.json
}
for t in sim_test_big sim_test_big_b; do
  echo "### $t"
  compare $t closed ${syn}_$t runs/eval_closed_big_g768_$t hybrid:max_logit,hybrid:energy
  for other in uniform inlier_crops detector; do
    compare $t $other ${syn}_$t runs/eval_sim_synthetic_big_${other}_g768_$t hybrid
  done
  compare $t components ${syn}_$t ${syn}_$t hybrid:generative,hybrid:discriminative
  compare $t real ${syn}_$t runs/eval_bundled_real_$t hybrid
done
