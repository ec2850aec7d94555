#!/usr/bin/env bash
# The sweep of experiments/relatives (plan.md): 8 points x 5 seeds on +experiment=tiny_mismatch,
# as two single-threaded Hydra multiruns side by side (2 cores), after the behavior data of each
# seed is sampled once (every point then reuses it: behavior.reuse). Run from the repo root.
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/relatives}
COMMON=(+experiment=tiny_mismatch behavior.top_k=16 threads=1 logger=none)
SEEDS=0,1,2,3,4

# 1. behavior data, one dataset per seed, shared by every point (two processes, disjoint seeds)
$PY -m pear_exp --multirun "${COMMON[@]}" stages=[behavior] seed=0,1,2 hydra.sweep.dir=$OUT/behavior_a &
$PY -m pear_exp --multirun "${COMMON[@]}" stages=[behavior] seed=3,4 hydra.sweep.dir=$OUT/behavior_b &
wait
# 2. SFT -> GRPO -> evaluation for every point (two processes, disjoint points)
$PY -m pear_exp --multirun "${COMMON[@]}" weighting=none,block,sequence,dft seed=$SEEDS \
    hydra.sweep.dir=$OUT/nll_a &
( $PY -m pear_exp --multirun "${COMMON[@]}" weighting=iw_sft,asft seed=$SEEDS \
      hydra.sweep.dir=$OUT/nll_b
  $PY -m pear_exp --multirun "${COMMON[@]}" sft.base_loss=kl weighting=none,block seed=$SEEDS \
      hydra.sweep.dir=$OUT/kl ) &
wait
rm -rf $OUT/behavior_a $OUT/behavior_b  # their data is in <cache_dir>/behavior; not sweep points
$PY -m pear_exp.report $OUT --out experiments/relatives
