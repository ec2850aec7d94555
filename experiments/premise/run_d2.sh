#!/usr/bin/env bash
# D2 (plan.md): as D1, with GRPO and its checks on 4-number Countdown (+experiment=tiny_shifted);
# every checkpoint evaluated on both tasks. SEEDS=0,1 screening; SEEDS=10,11,12,13,14 confirmation.
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/premise/d2_seeds_${SEEDS//,/_}}
$PY -m pear_exp --multirun +experiment=tiny_shifted sft.steps=600 'sft.keep_steps=[60]' \
    weighting=none,block seed=${SEEDS:?} threads=1 logger=none hydra.sweep.dir=$OUT
