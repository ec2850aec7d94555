#!/usr/bin/env bash
# D1 (plan.md): SFT budget 60 vs 600 steps x weighting none / block on tiny_mismatch, one
# single-threaded Hydra multirun. SEEDS=0,1 is the screening; SEEDS=10,11,12,13,14 the
# confirmation. D2 runs the same on EXPERIMENT=tiny_shifted (run_d2.sh). Run from the repo root.
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
PY=${PY:-.venv/bin/python}
EXPERIMENT=${EXPERIMENT:-tiny_mismatch}
OUT=${OUT:-multirun/premise/${EXPERIMENT}_seeds_${SEEDS//,/_}}
$PY -m pear_exp --multirun +experiment=$EXPERIMENT sft.steps=600 'sft.keep_steps=[60]' \
    weighting=none,block seed=${SEEDS:?} threads=1 logger=none hydra.sweep.dir=$OUT
