#!/usr/bin/env bash
# D2 (plan.md): D1's sweep with GRPO and its checks on 4-number Countdown (+experiment=
# tiny_shifted); every checkpoint evaluated on both tasks. SEEDS as run_d1.sh.
EXPERIMENT=tiny_shifted exec "$(dirname "$0")/run_d1.sh"
