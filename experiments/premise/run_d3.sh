#!/usr/bin/env bash
# D3 (plan.md): teacher style - the preset's mixed teacher (3 in 4 solutions with worked steps)
# against a teacher pretrained on reverse-style solutions only (goal first) - x weighting
# none / block, at the preset's 300 SFT steps; two single-threaded Hydra multiruns side by side
# (2 cores), one per teacher. SEEDS=0,1 screening; SEEDS=10,11,12,13,14 confirmation. Run from the repo root.
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/premise/d3_seeds_${SEEDS//,/_}}
COMMON=(+experiment=tiny_mismatch weighting=none,block seed=${SEEDS:?} threads=1 logger=none)
$PY -m pear_exp --multirun "${COMMON[@]}" hydra.sweep.dir=$OUT/mixed &
$PY -m pear_exp --multirun "${COMMON[@]}" teacher.name=tiny_teacher_reverse \
    teacher.tiny.alt_style=reverse teacher.tiny.alt_style_frac=1.0 hydra.sweep.dir=$OUT/reverse &
wait
