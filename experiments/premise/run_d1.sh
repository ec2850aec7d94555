#!/usr/bin/env bash
# D1 (plan.md): SFT budget 60 vs 600 steps x weighting none / block on tiny_mismatch, one
# single-threaded Hydra multirun. SEEDS=0,1 is the screening; SEEDS=10,11,12,13,14 the
# confirmation. Run from the repo root.
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/premise/d1_seeds_${SEEDS//,/_}}
$PY -m pear_exp --multirun +experiment=tiny_mismatch sft.steps=600 'sft.keep_steps=[60]' \
    weighting=none,block seed=${SEEDS:?} threads=1 logger=none hydra.sweep.dir=$OUT
